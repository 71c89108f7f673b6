//! Operating a Tubes server: `tubes serve --config FILE` as a child
//! process, driven with real curl. Auth (tokens, Basic, JWT HS256, RS256
//! and ES256, signed URLs) against per-prefix rules, the limits (request
//! rate, `X-Forwarded-For` from trusted proxies, connections per address,
//! wait timeout, bytes per transfer, paths), slowloris, the metrics and
//! health checks, reload on SIGHUP, the graceful drain on SIGTERM,
//! start-up errors and JSON logs.

mod operate_common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use operate_common::{
    bytes, curl, http_get, sha256_hex, transfer, tubes, write_config, Reply, Running, Server,
    TempDir, LIMIT,
};
use serde_json::json;

const HOW: &str = "run scripts/test.sh, which installs it";

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A refusal's body: exactly one line, `[ERROR] ...`.
fn assert_one_line_error(reply: &Reply, what: &str) {
    let text = reply.text();
    assert!(
        text.starts_with("[ERROR] ") && text.ends_with('\n') && text.matches('\n').count() == 1,
        "{what}: the body is not one `[ERROR] ...` line: {text:?}"
    );
}

/// A 401: one line, and `WWW-Authenticate` asking for Bearer or Basic.
fn assert_401(reply: &Reply, what: &str) {
    assert_eq!(reply.status, 401, "{what}: {reply:?}");
    assert_one_line_error(reply, what);
    let challenge = reply
        .header("www-authenticate")
        .unwrap_or_else(|| panic!("{what}: 401 without WWW-Authenticate: {reply:?}"));
    assert!(
        challenge.contains("Bearer") && challenge.contains("Basic"),
        "{what}: WWW-Authenticate: {challenge}"
    );
}

fn assert_403(reply: &Reply, what: &str) {
    assert_eq!(reply.status, 403, "{what}: {reply:?}");
    assert_one_line_error(reply, what);
    assert!(
        reply.header("www-authenticate").is_none(),
        "{what}: a 403 asks for no other credentials: {reply:?}"
    );
}

/// A transfer that must have gone through whole.
fn assert_transferred(sender: &Reply, receiver: &Reply, data: &[u8], what: &str) {
    assert_eq!(sender.status, 200, "{what}: sender {sender:?}");
    assert!(
        sender.text().contains("[INFO] Sent successfully!"),
        "{what}: sender's log: {}",
        sender.text()
    );
    assert_eq!(
        (receiver.exit, receiver.status),
        (0, 200),
        "{what}: receiver {receiver:?}"
    );
    assert!(
        receiver.body == data,
        "{what}: the receiver got {} bytes, not the {} sent",
        receiver.body.len(),
        data.len()
    );
}

/// An RSA key made by Node's crypto (Node is a test tool already; Rust's
/// crates here cannot generate RSA keys): the public JWK and the private
/// key in PEM.
fn rsa_key() -> (serde_json::Value, String) {
    let script = "const { generateKeyPairSync } = require('node:crypto');\
        const { publicKey, privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });\
        console.log(JSON.stringify({ jwk: publicKey.export({ format: 'jwk' }),\
          pem: privateKey.export({ type: 'pkcs8', format: 'pem' }) }));";
    let out = Command::new("node")
        .args(["-e", script])
        .output()
        .unwrap_or_else(|e| panic!("the RS256 test makes its key with Node.js ({e}): {HOW}"));
    assert!(out.status.success(), "node: {out:?}");
    let made: serde_json::Value = serde_json::from_slice(&out.stdout).expect("node's JSON");
    let pem = made["pem"].as_str().expect("pem").to_owned();
    (made["jwk"].clone(), pem)
}

/// A P-256 key made with ring: its PKCS#8 document (for signing) and the
/// public point's coordinates, base64url, for the JWK.
fn ec_key() -> (Vec<u8>, String, String) {
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("P-256 key");
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .expect("parse key");
    let point = pair.public_key().as_ref();
    assert_eq!(point.len(), 65, "an uncompressed P-256 point");
    (
        pkcs8.as_ref().to_vec(),
        URL_SAFE_NO_PAD.encode(&point[1..33]),
        URL_SAFE_NO_PAD.encode(&point[33..65]),
    )
}

fn jwt(alg: Algorithm, kid: Option<&str>, claims: serde_json::Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, &claims, key).expect("encode JWT")
}

/// Changes one character in the middle of a JWT's signature (still
/// canonical base64url: only the last character has unused bits).
fn tamper_signature(token: &str) -> String {
    let dot = token.rfind('.').expect("a JWT");
    let at = dot + (token.len() - dot) / 2;
    let old = &token[at..=at];
    let new = if old == "A" { "B" } else { "A" };
    format!("{}{new}{}", &token[..at], &token[at + 1..])
}

const HS256_SECRET: &str = "a-shared-hs256-secret-of-at-least-32-bytes";
const NAMES: [&str; 6] = ["tina", "shaw", "basil", "hugo", "rosa", "ella"];

/// Every credential method against the rules: each principal may send on
/// `/s/` (its name is listed) and receive on `/r/` (`authenticated`), but
/// neither on `/none/`; no credentials, wrong, expired or tampered ones
/// get a 401 with a challenge.
#[test]
fn auth_matrix_every_method_allowed_and_denied() {
    let dir = TempDir::new("auth");
    let (rsa_jwk, rsa_pem) = rsa_key();
    let (ec_pkcs8, ec_x, ec_y) = ec_key();
    let mut rsa_jwk = rsa_jwk;
    rsa_jwk["kid"] = json!("rsa-1");
    rsa_jwk["alg"] = json!("RS256");
    rsa_jwk["use"] = json!("sig");
    let jwks = json!({ "keys": [
        rsa_jwk,
        { "kty": "EC", "kid": "ec-1", "crv": "P-256", "x": ec_x, "y": ec_y, "use": "sig" },
    ]});
    std::fs::write(dir.join("jwks.json"), jwks.to_string()).expect("write JWKS");
    let password_hash = bcrypt::hash("hunter2", 4).expect("bcrypt");
    let shaw_sha = sha256_hex(b"shaw-secret-token");
    let names = NAMES.map(|n| format!("\"{n}\"")).join(", ");
    // The JWKS path is relative: it is read from the settings file's folder.
    let config = write_config(
        &dir,
        &format!(
            r#"
[auth]
[[auth.tokens]]
name = "tina"
token = "tina-secret-token"
[[auth.tokens]]
name = "shaw"
token_sha256 = "{shaw_sha}"
[[auth.users]]
name = "basil"
password_bcrypt = "{password_hash}"
[auth.jwt]
hs256_secret = "{HS256_SECRET}"
jwks_file = "jwks.json"
[[auth.rules]]
prefix = "/"
send = ["authenticated"]
receive = ["authenticated"]
[[auth.rules]]
prefix = "/s/"
send = [{names}]
receive = ["anyone"]
[[auth.rules]]
prefix = "/r/"
send = ["anyone"]
receive = ["authenticated"]
[[auth.rules]]
prefix = "/tina/"
send = ["tina"]
receive = ["anyone"]
[[auth.rules]]
prefix = "/none/"
send = ["nobody"]
receive = ["nobody"]
"#
        ),
    );
    let server = Server::start_in(dir, config, &[]);
    let url = |path: &str| format!("{}{path}", server.url);

    let later = unix_now() + 600;
    let hs256 = EncodingKey::from_secret(HS256_SECRET.as_bytes());
    let rs256 = EncodingKey::from_rsa_pem(rsa_pem.as_bytes()).expect("RSA PEM");
    let es256 = EncodingKey::from_ec_der(&ec_pkcs8);
    let hugo = jwt(
        Algorithm::HS256,
        None,
        json!({"sub": "hugo", "exp": later}),
        &hs256,
    );
    let rosa = jwt(
        Algorithm::RS256,
        Some("rsa-1"),
        json!({"sub": "rosa", "exp": later}),
        &rs256,
    );
    let ella = jwt(
        Algorithm::ES256,
        Some("ec-1"),
        json!({"sub": "ella", "exp": later}),
        &es256,
    );
    let basic = format!("Basic {}", STANDARD.encode("basil:hunter2"));
    let credentials = [
        ("tina", "Bearer tina-secret-token".to_owned()),
        ("shaw", "Bearer shaw-secret-token".to_owned()),
        ("basil", basic),
        ("hugo", format!("Bearer {hugo}")),
        ("rosa", format!("Bearer {rosa}")),
        ("ella", format!("Bearer {ella}")),
    ];

    for (i, (name, authorization)) in credentials.iter().enumerate() {
        let auth = format!("Authorization: {authorization}");
        let data = bytes(1000 + i * 77, i as u64);
        // Allowed to send (listed by name); the receiver needs nothing.
        let path = format!("/s/{name}");
        let (sender, receiver) = transfer(
            &server.dir,
            &url(&path),
            &["-H", &auth],
            &url(&path),
            &[],
            &data,
        );
        assert_transferred(&sender, &receiver, &data, &format!("{name} sends"));
        // Allowed to receive (`authenticated`); the sender needs nothing.
        let path = format!("/r/{name}");
        let (sender, receiver) = transfer(
            &server.dir,
            &url(&path),
            &[],
            &url(&path),
            &["-H", &auth],
            &data,
        );
        assert_transferred(&sender, &receiver, &data, &format!("{name} receives"));
        // Denied both on /none/: 403, naming who.
        let reply = curl(&["-X", "PUT", "-d", "x", "-H", &auth, &url("/none/x")]);
        assert_403(&reply, &format!("{name} sends on /none/"));
        assert_eq!(
            reply.text(),
            format!("[ERROR] '{name}' may not send on this path.\n")
        );
        let reply = curl(&["-H", &auth, &url("/none/x")]);
        assert_403(&reply, &format!("{name} receives on /none/"));
        assert_eq!(
            reply.text(),
            format!("[ERROR] '{name}' may not receive on this path.\n")
        );
        // Where only another is listed.
        if *name != "tina" {
            let reply = curl(&["-X", "PUT", "-d", "x", "-H", &auth, &url("/tina/x")]);
            assert_403(&reply, &format!("{name} sends on /tina/"));
        }
    }
    let data = bytes(10, 1);
    let tina = "Authorization: Bearer tina-secret-token";
    let (sender, receiver) = transfer(
        &server.dir,
        &url("/tina/x"),
        &["-H", tina],
        &url("/tina/x"),
        &[],
        &data,
    );
    assert_transferred(&sender, &receiver, &data, "tina on /tina/");

    // A token in the query, for receivers that cannot set headers.
    for (name, token) in [("tina", "tina-secret-token"), ("hugo", hugo.as_str())] {
        let data = bytes(4321, 99);
        let path = format!("/r/query-{name}");
        let (sender, receiver) = transfer(
            &server.dir,
            &url(&path),
            &[],
            &format!("{}?token={token}", url(&path)),
            &[],
            &data,
        );
        assert_transferred(&sender, &receiver, &data, &format!("{name} by ?token="));
    }
    let reply = curl(&[&format!("{}?token=wrong", url("/r/q"))]);
    assert_401(&reply, "a wrong ?token=");

    // 401s: nothing, wrong, expired, tampered.
    let reply = curl(&["-X", "PUT", "-d", "x", &url("/s/x")]);
    assert_401(&reply, "no credentials");
    assert!(reply.text().contains("needs credentials"), "{reply:?}");
    let expired = jwt(
        Algorithm::HS256,
        None,
        json!({"sub": "hugo", "exp": unix_now() - 3600}),
        &hs256,
    );
    let forged_hs = jwt(
        Algorithm::HS256,
        None,
        json!({"sub": "hugo", "exp": later}),
        &EncodingKey::from_secret(b"another-secret-that-is-32-bytes-long!!"),
    );
    // A payload swapped under a valid signature.
    let swapped = {
        let parts: Vec<&str> = hugo.split('.').collect();
        let payload = URL_SAFE_NO_PAD.encode(json!({"sub": "tina", "exp": later}).to_string());
        format!("{}.{payload}.{}", parts[0], parts[2])
    };
    let no_exp = jwt(Algorithm::HS256, None, json!({"sub": "hugo"}), &hs256);
    let unknown_kid = jwt(
        Algorithm::RS256,
        Some("rsa-2"),
        json!({"sub": "rosa", "exp": later}),
        &rs256,
    );
    let alg_mismatch = jwt(
        Algorithm::RS256,
        Some("ec-1"),
        json!({"sub": "rosa", "exp": later}),
        &rs256,
    );
    let expired_es = jwt(
        Algorithm::ES256,
        Some("ec-1"),
        json!({"sub": "ella", "exp": unix_now() - 3600}),
        &es256,
    );
    let bad = [
        (
            "an unknown token",
            "Bearer nope".to_owned(),
            "unknown token",
        ),
        (
            "a wrong password",
            format!("Basic {}", STANDARD.encode("basil:hunter3")),
            "wrong password",
        ),
        (
            "an unknown user",
            format!("Basic {}", STANDARD.encode("mallory:hunter2")),
            "unknown user",
        ),
        (
            "an expired HS256 JWT",
            format!("Bearer {expired}"),
            "expired",
        ),
        (
            "an expired ES256 JWT",
            format!("Bearer {expired_es}"),
            "expired",
        ),
        (
            "an HS256 JWT with another secret",
            format!("Bearer {forged_hs}"),
            "signature",
        ),
        (
            "an HS256 JWT with a swapped payload",
            format!("Bearer {swapped}"),
            "signature",
        ),
        (
            "a tampered RS256 JWT",
            format!("Bearer {}", tamper_signature(&rosa)),
            "signature",
        ),
        (
            "a tampered ES256 JWT",
            format!("Bearer {}", tamper_signature(&ella)),
            "signature",
        ),
        ("a JWT without exp", format!("Bearer {no_exp}"), "exp"),
        ("an unknown kid", format!("Bearer {unknown_kid}"), "kid"),
        (
            "an RS256 JWT naming an EC key",
            format!("Bearer {alg_mismatch}"),
            "alg",
        ),
        ("an unknown scheme", "Digest x".to_owned(), "scheme"),
    ];
    for (what, authorization, says) in bad {
        let reply = curl(&[
            "-X",
            "PUT",
            "-d",
            "x",
            "-H",
            &format!("Authorization: {authorization}"),
            &url("/s/x"),
        ]);
        assert_401(&reply, what);
        assert!(
            reply.text().contains(says),
            "{what}: the message should say {says:?}: {}",
            reply.text()
        );
    }

    // The preflight needs no credentials and allows Authorization.
    let reply = curl(&[
        "-X",
        "OPTIONS",
        "-H",
        "Origin: http://example.test",
        "-H",
        "Access-Control-Request-Method: PUT",
        "-H",
        "Access-Control-Request-Headers: authorization",
        &url("/s/x"),
    ]);
    assert_eq!(reply.status, 200, "{reply:?}");
    let allowed = reply
        .header("access-control-allow-headers")
        .unwrap_or_else(|| panic!("no Access-Control-Allow-Headers: {reply:?}"));
    assert!(
        allowed
            .split(',')
            .any(|h| h.trim().eq_ignore_ascii_case("authorization")),
        "{allowed}"
    );
    assert_eq!(reply.header("access-control-allow-origin"), Some("*"));
}

/// Paths under the reserved `/-/` prefix that no built-in handler takes
/// (the health check, names, the app's files) are never relayed, so no
/// one can use them to get around auth: sending there is refused as on
/// any reserved path (400), receiving finds no such page (404).
#[test]
fn paths_under_the_reserved_prefix_are_never_relayed() {
    let server = Server::start(
        "reserved-prefix",
        "[auth]\n[[auth.tokens]]\nname = \"t\"\ntoken = \"prefix-token\"\n",
    );
    let url = format!("{}/-/smuggle", server.url);
    let receiver = Running::start(&["--max-time", "5", &url]);
    let sender = curl(&[
        "--max-time",
        "5",
        "-X",
        "PUT",
        "-d",
        "anonymous bytes",
        &url,
    ]);
    let receiver = receiver.finish();
    assert!(
        sender.status == 400 && receiver.status == 404,
        "an anonymous sender and receiver on {url} with auth on: sender {} {:?}, receiver {} {:?}",
        sender.status,
        sender.text(),
        receiver.status,
        receiver.text()
    );
}

/// `max_header_bytes` (16 KiB by default) bounds an HTTP/1 request head
/// as it does an HTTP/2 header list.
#[test]
fn max_header_bytes_bounds_http1_heads() {
    let server = Server::start("header-bytes", "[limits]\nmax_header_bytes = 8192\n");
    let big = format!("X-Big: {}", "a".repeat(64 * 1024));
    let url = format!("{}/-/healthz", server.url);
    let h2 = curl(&["--http2-prior-knowledge", "-H", &big, &url]);
    let h1 = curl(&["-H", &big, &url]);
    assert!(
        h2.status != 200,
        "HTTP/2: a 64 KiB header over max_header_bytes = 8192 was served: {h2:?}"
    );
    assert_eq!(
        h1.status,
        431,
        "HTTP/1.1: a 64 KiB header over max_header_bytes = 8192: {} {:?}",
        h1.status,
        h1.text()
    );
}

/// Without `[auth]`, the preflight lists exactly the Piping protocol's
/// headers.
#[test]
fn preflight_without_auth_lists_the_piping_headers() {
    let server = Server::start("preflight", "");
    let reply = curl(&[
        "-X",
        "OPTIONS",
        "-H",
        "Origin: http://example.test",
        "-H",
        "Access-Control-Request-Method: POST",
        &format!("{}/x", server.url),
    ]);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.header("access-control-allow-headers"),
        Some("Content-Type, Content-Disposition, X-Piping")
    );
}

const SIGNING_KEY: &str = "signed-url-key-0123456789";

/// The query of a signed URL, made the way `src/policy/auth.rs` says.
fn sign(path: &str, allow: &str, exp: u64) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SIGNING_KEY.as_bytes());
    let message = format!("tubes-signed-url-v1\n{allow}\n{exp}\n{path}");
    let tag = ring::hmac::sign(&key, message.as_bytes());
    format!(
        "allow={allow}&exp={exp}&sig={}",
        URL_SAFE_NO_PAD.encode(tag.as_ref())
    )
}

fn tubes_sign(server: &Server, path: &str, allow: &str) -> String {
    let out = tubes()
        .args(["sign", path, "--ttl", "10m", "--allow", allow, "--config"])
        .arg(&server.config)
        .args(["-s", &server.url])
        .output()
        .expect("run tubes sign");
    assert!(out.status.success(), "tubes sign: {out:?}");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(text.lines().count(), 1, "one URL: {text:?}");
    text.trim().to_owned()
}

/// `tubes sign` URLs open their path for what they allow, and nothing
/// else: not another path, not with a changed signature, not after they
/// expire, not for the other direction.
#[test]
fn signed_urls() {
    let server = Server::start(
        "signed",
        &format!(
            r#"
[auth]
signing_key = "{SIGNING_KEY}"
[[auth.tokens]]
name = "tina"
token = "tina-secret-token"
[[auth.rules]]
prefix = "/p/"
send = ["tina"]
receive = ["tina"]
"#
        ),
    );
    let auth = "Authorization: Bearer tina-secret-token";
    let url = tubes_sign(&server, "/p/doc", "receive");
    let prefix = format!("{}/p/doc?", server.url);
    assert!(url.starts_with(&prefix), "{url}");
    let query = &url[prefix.len()..];
    // The CLI signs as the server checks (same message and key).
    let exp: u64 = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("exp="))
        .and_then(|e| e.parse().ok())
        .unwrap_or_else(|| panic!("no exp in {url}"));
    assert!(
        (unix_now() + 590..=unix_now() + 610).contains(&exp),
        "--ttl 10m: {exp}"
    );
    assert_eq!(query, sign("/p/doc", "receive", exp));

    let data = bytes(70_000, 5);
    let (sender, receiver) = transfer(
        &server.dir,
        &format!("{}/p/doc", server.url),
        &["-H", auth],
        &url,
        &[],
        &data,
    );
    assert_transferred(&sender, &receiver, &data, "receiving by a signed URL");

    let reply = curl(&[&format!("{}/p/other?{query}", server.url)]);
    assert_401(&reply, "a signed URL on another path");
    assert!(reply.text().contains("does not match"), "{reply:?}");
    let tampered = {
        let mut q = query.to_owned();
        let last = q.pop().expect("sig");
        q.push(if last == 'A' { 'B' } else { 'A' });
        q
    };
    let reply = curl(&[&format!("{}/p/doc?{tampered}", server.url)]);
    assert_401(&reply, "a tampered signature");
    let reply = curl(&[&format!(
        "{}/p/doc?{}",
        server.url,
        sign("/p/doc", "receive", unix_now() - 60)
    )]);
    assert_401(&reply, "an expired signed URL");
    assert!(reply.text().contains("expired"), "{reply:?}");
    let later = query.replace(&format!("exp={exp}"), &format!("exp={}", exp + 3600));
    let reply = curl(&[&format!("{}/p/doc?{later}", server.url)]);
    assert_401(&reply, "a signed URL with a later exp");
    // A receive URL does not send.
    let reply = curl(&["-X", "PUT", "-d", "x", &url]);
    assert_403(&reply, "sending with a receive URL");
    assert_eq!(
        reply.text(),
        "[ERROR] This signed URL may not send on this path.\n"
    );

    // A send URL for an uploader without a token.
    let url = tubes_sign(&server, "/p/up", "send");
    let data = bytes(3000, 6);
    let (sender, receiver) = transfer(
        &server.dir,
        &url,
        &[],
        &format!("{}/p/up", server.url),
        &["-H", auth],
        &data,
    );
    assert_transferred(&sender, &receiver, &data, "sending by a signed URL");
}

/// `[limits] requests_per_second = 1, request_burst = 3`: the 4th quick
/// request is a 429 with `Retry-After`, and counted.
#[test]
fn request_rate_limit() {
    let server = Server::start(
        "rate",
        "[limits]\nrequests_per_second = 1\nrequest_burst = 3\n",
    );
    let health = format!("{}/-/healthz", server.url);
    // Three on one connection, at once.
    let out = Command::new("curl")
        .args(["-sS", "-w", "%{http_code}\n", "-o", "/dev/null", "-o"])
        .args(["/dev/null", "-o", "/dev/null", &health, &health, &health])
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200\n200\n200\n");
    let reply = curl(&[&health]);
    assert_eq!(reply.status, 429, "{reply:?}");
    assert_one_line_error(&reply, "rate limited");
    let retry: u64 = reply
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no integer Retry-After: {reply:?}"));
    assert!((1..=2).contains(&retry), "Retry-After: {retry}");
    assert_eq!(
        reply.text(),
        format!("[ERROR] Too many requests; try again in {retry} s.\n")
    );
    let scrape = server.scrape();
    assert_eq!(
        scrape.get("tubes_rejections_total", &[("reason", "rate_limited")]),
        1.0
    );
}

/// `X-Forwarded-For` from a trusted proxy names the client (a bucket per
/// address); from anyone else it is ignored.
#[test]
fn forwarded_for_only_from_trusted_proxies() {
    let limits = "[limits]\nrequests_per_second = 1\nrequest_burst = 1\n";
    let trusted = Server::start(
        "xff-trusted",
        &format!("{limits}trusted_proxies = [\"127.0.0.1/32\"]\n"),
    );
    let health = |server: &Server, xff: &str| {
        curl(&[
            "-H",
            &format!("X-Forwarded-For: {xff}"),
            &format!("{}/-/healthz", server.url),
        ])
        .status
    };
    assert_eq!(health(&trusted, "10.0.0.1"), 200);
    assert_eq!(health(&trusted, "10.0.0.1"), 429, "10.0.0.1's bucket");
    assert_eq!(health(&trusted, "10.0.0.2"), 200, "10.0.0.2 has its own");
    // The last untrusted hop is the client.
    assert_eq!(health(&trusted, "10.0.0.1, 10.0.0.3"), 200);
    assert_eq!(health(&trusted, "10.0.0.9, 10.0.0.3"), 429);

    let untrusted = Server::start("xff-untrusted", limits);
    assert_eq!(health(&untrusted, "10.0.0.1"), 200);
    assert_eq!(
        health(&untrusted, "10.0.0.2"),
        429,
        "an untrusted peer's X-Forwarded-For must be ignored"
    );
}

/// `connections_per_ip = 3`: the 4th connection gets a 429 and is closed;
/// one closing makes room again.
#[test]
fn connections_per_ip() {
    let server = Server::start("conns", "[limits]\nconnections_per_ip = 3\n");
    let open: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(server.addr).expect("connect"))
        .collect();
    server.wait_metric("tubes_connections_open", &[], 3.0);
    let mut fourth = TcpStream::connect(server.addr).expect("connect");
    fourth.set_read_timeout(Some(LIMIT)).expect("timeout");
    let mut answer = String::new();
    fourth
        .read_to_string(&mut answer)
        .expect("the 4th connection is answered and closed");
    assert!(
        answer.starts_with("HTTP/1.1 429 ")
            && answer.ends_with("\r\n\r\n[ERROR] Too many open connections from your address.\n"),
        "{answer:?}"
    );
    // curl, which sends its request at once.
    let reply = curl(&[&format!("{}/-/healthz", server.url)]);
    assert_eq!(reply.status, 429, "curl over the limit: {reply:?}");
    assert_eq!(
        reply.text(),
        "[ERROR] Too many open connections from your address.\n"
    );
    drop(open);
    server.wait_metric("tubes_connections_open", &[], 0.0);
    let reply = curl(&[&format!("{}/-/healthz", server.url)]);
    assert_eq!(reply.status, 200, "room again: {reply:?}");
    let scrape = server.scrape();
    assert_eq!(
        scrape.get(
            "tubes_rejections_total",
            &[("reason", "too_many_connections")]
        ),
        2.0
    );
}

/// `wait_timeout = "1s"`: a lone receiver gets a 408, a lone sender's log
/// ends with the reason.
#[test]
fn wait_timeout() {
    let server = Server::start("wait", "[limits]\nwait_timeout = \"1s\"\n");
    let started = Instant::now();
    let file = server.dir.join("x");
    std::fs::write(&file, "x").expect("write");
    let receiver = Running::start(&[&format!("{}/lonely-receiver", server.url)]);
    let sender = curl(&[
        "-T",
        file.to_str().expect("path"),
        &format!("{}/lonely-sender", server.url),
    ]);
    let receiver = receiver.finish();
    let elapsed = started.elapsed();
    assert_eq!(receiver.status, 408, "{receiver:?}");
    assert_eq!(receiver.text(), "[ERROR] No sender came within 1s.\n");
    assert_eq!(sender.status, 200, "{sender:?}");
    assert!(
        sender
            .text()
            .ends_with("[ERROR] No receiver came within 1s.\n"),
        "the sender's log: {:?}",
        sender.text()
    );
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(10),
        "{elapsed:?}"
    );
    let scrape = server.scrape();
    assert_eq!(
        scrape.get("tubes_rejections_total", &[("reason", "wait_timeout")]),
        1.0
    );
    assert_eq!(scrape.get("tubes_paths", &[]), 0.0);
}

/// `max_transfer_bytes = 1000`: a longer Content-Length is refused at
/// once; a chunked body that goes over is cut, and its receiver sees a cut
/// transfer.
#[test]
fn max_transfer_bytes() {
    let server = Server::start("maxbytes", "[limits]\nmax_transfer_bytes = 1000\n");
    let file = server.dir.join("big");
    std::fs::write(&file, bytes(5000, 1)).expect("write");
    let file = file.to_str().expect("path");
    let reply = curl(&["-T", file, &format!("{}/too-long", server.url)]);
    assert_eq!(reply.status, 413, "{reply:?}");
    assert_eq!(
        reply.text(),
        "[ERROR] A transfer may carry at most 1000 bytes on this server.\n"
    );

    let receiver = Running::start(&[&format!("{}/chunked", server.url)]);
    server.wait_metric("tubes_waiting", &[("kind", "receiver")], 1.0);
    let sender = curl(&[
        "-T",
        file,
        "-H",
        "Transfer-Encoding: chunked",
        &format!("{}/chunked", server.url),
    ]);
    let receiver = receiver.finish();
    assert!(
        sender.text().lines().last()
            == Some(
                "[ERROR] A transfer may carry at most 1000 bytes on this server; every receiver was aborted."
            ),
        "the sender's log: {sender:?}"
    );
    assert_ne!(
        receiver.exit, 0,
        "the receiver's transfer must look cut: {receiver:?}"
    );
    assert!(receiver.body.len() <= 1000, "{}", receiver.body.len());

    // Under the limit, chunked: whole.
    let data = bytes(1000, 2);
    let (sender, receiver) = transfer(
        &server.dir,
        &format!("{}/small", server.url),
        &["-H", "Transfer-Encoding: chunked"],
        &format!("{}/small", server.url),
        &[],
        &data,
    );
    assert_transferred(&sender, &receiver, &data, "1000 bytes chunked");
    let scrape = server.scrape();
    assert_eq!(
        scrape.get("tubes_rejections_total", &[("reason", "too_large")]),
        1.0
    );
}

/// `max_paths = 2`: a third path with a waiting peer gets a 503; peers on
/// the paths in use still meet.
#[test]
fn max_paths() {
    let server = Server::start("maxpaths", "[limits]\nmax_paths = 2\n");
    let a = Running::start(&[&format!("{}/mp-a", server.url)]);
    let b = Running::start(&[&format!("{}/mp-b", server.url)]);
    server.wait_metric("tubes_paths", &[], 2.0);
    let reply = curl(&[&format!("{}/mp-c", server.url)]);
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(
        reply.text(),
        "[ERROR] The server is busy: too many paths are in use. Try again later.\n"
    );
    let file = server.dir.join("data");
    std::fs::write(&file, "to a\n").expect("write");
    let file = file.to_str().expect("path");
    for path in ["mp-a", "mp-b"] {
        let sender = curl(&["-T", file, &format!("{}/{path}", server.url)]);
        assert_eq!(sender.status, 200, "{sender:?}");
    }
    for receiver in [a, b] {
        let receiver = receiver.finish();
        assert_eq!(receiver.text(), "to a\n", "{receiver:?}");
    }
    let scrape = server.scrape();
    assert_eq!(
        scrape.get("tubes_rejections_total", &[("reason", "too_many_paths")]),
        1.0
    );
}

/// The soft limit on open files (`Max open files` in /proc/self/limits).
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// A thousand connections that send half a request head and then nothing
/// hold up nobody, and are closed after `header_read_timeout`.
#[test]
fn slowloris_is_harmless_and_timed_out() {
    const WANTED: usize = 1000;
    let limit = open_files_limit().unwrap_or(1024);
    // The test holds one end of each connection and the server (which
    // inherits the limit) the other.
    let count = if limit < 2100 {
        let fit = usize::try_from(limit.saturating_sub(100) / 2).unwrap_or(0);
        eprintln!("the open-files limit is {limit}: {fit} slow connections instead of {WANTED}");
        fit
    } else {
        WANTED
    };
    assert!(
        count >= 100,
        "open-files limit {limit} too low for this test"
    );
    let server = Server::start("slowloris", "[limits]\nheader_read_timeout = \"2s\"\n");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let addr = server.addr;
    let opened = Instant::now();
    let streams = runtime.block_on(async move {
        use tokio::io::AsyncWriteExt;
        let mut streams = Vec::with_capacity(count);
        for _ in 0..count {
            let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            stream
                .write_all(b"GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                .await
                .expect("write");
            streams.push(stream);
        }
        streams
    });
    // Every one is in (or being read by) the server.
    server.wait_metric("tubes_connections_open", &[], count as f64);
    let connected = opened.elapsed();

    let started = Instant::now();
    let data = bytes(200_000, 3);
    let (sender, receiver) = transfer(
        &server.dir,
        &format!("{}/normal", server.url),
        &[],
        &format!("{}/normal", server.url),
        &[],
        &data,
    );
    let took = started.elapsed();
    assert_transferred(&sender, &receiver, &data, "beside the slow connections");
    assert!(
        took < Duration::from_secs(5),
        "the transfer took {took:?} beside {count} slow connections"
    );

    // Each is closed by the server: EOF (or a reset) within the timeout
    // and a margin.
    let closed = runtime.block_on(async move {
        use tokio::io::AsyncReadExt;
        let mut tasks = tokio::task::JoinSet::new();
        for mut stream in streams {
            tasks.spawn(async move {
                let mut buf = [0u8; 1024];
                let deadline = Duration::from_secs(10);
                tokio::time::timeout(deadline, async {
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        }
                    }
                })
                .await
                .is_ok()
            });
        }
        let mut closed = 0;
        while let Some(done) = tasks.join_next().await {
            closed += usize::from(done.expect("task"));
        }
        closed
    });
    let all_closed = opened.elapsed();
    assert_eq!(
        closed, count,
        "connections the server closed within 10 s (opened in {connected:?})"
    );
    assert!(
        all_closed >= Duration::from_millis(1900),
        "closed before the 2 s header timeout: {all_closed:?}"
    );
    server.wait_metric("tubes_connections_open", &[], 0.0);
}

/// The metrics after known traffic, and both health checks.
#[test]
fn metrics_and_health() {
    let server = Server::start(
        "metrics",
        r#"
[limits]
requests_per_second = 1
request_burst = 20
trusted_proxies = ["127.0.0.1/32"]
[auth]
[[auth.tokens]]
name = "m"
token = "metrics-token"
"#,
    );
    let auth = "Authorization: Bearer metrics-token";
    let url = |path: &str| format!("{}{path}", server.url);
    let sizes = [1234usize, 65_543, 300_000];
    for (i, size) in sizes.iter().enumerate() {
        let data = bytes(*size, i as u64 + 10);
        let path = format!("/m{i}");
        let (sender, receiver) = transfer(
            &server.dir,
            &url(&path),
            &["-H", auth],
            &url(&path),
            &["-H", auth],
            &data,
        );
        assert_transferred(&sender, &receiver, &data, &path);
    }
    let reply = curl(&[&url("/no-token")]);
    assert_eq!(reply.status, 401, "{reply:?}");
    // 21 requests (preflights: no credentials needed) from one client
    // behind the trusted proxy: the 21st is over the burst.
    let any = url("/any");
    let mut hammer = Command::new("curl");
    hammer.args([
        "-sS",
        "-X",
        "OPTIONS",
        "-w",
        "%{http_code}\n",
        "-H",
        "X-Forwarded-For: 10.1.1.1",
    ]);
    for _ in 0..21 {
        hammer.args(["-o", "/dev/null", &any]);
    }
    let out = hammer.output().expect("curl");
    let codes = String::from_utf8_lossy(&out.stdout).into_owned();
    let codes: Vec<&str> = codes.lines().collect();
    assert_eq!(
        codes,
        [["200"; 20].as_slice(), &["429"]].concat(),
        "exactly the 21st is limited"
    );
    let waiting = Running::start(&["-H", auth, &url("/waiting")]);
    server.wait_metric("tubes_waiting", &[("kind", "receiver")], 1.0);
    let (status, body) = http_get(server.metrics.expect("metrics"), "/healthz");
    assert_eq!(status, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).expect("JSON health");
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["paths"], 1, "{health}");

    let scrape = server.scrape();
    let expect = [
        // 3 transfers (6), the 401, 21 preflights, the waiting receiver.
        ("tubes_requests_total", vec![], 29.0),
        ("tubes_transfers_total", vec![("outcome", "completed")], 3.0),
        ("tubes_transfers_total", vec![("outcome", "aborted")], 0.0),
        (
            "tubes_relayed_bytes_total",
            vec![],
            sizes.iter().sum::<usize>() as f64,
        ),
        (
            "tubes_rejections_total",
            vec![("reason", "unauthorized")],
            1.0,
        ),
        (
            "tubes_rejections_total",
            vec![("reason", "rate_limited")],
            1.0,
        ),
        ("tubes_receiver_wait_seconds_count", vec![], 3.0),
        ("tubes_waiting", vec![("kind", "receiver")], 1.0),
        ("tubes_waiting", vec![("kind", "sender")], 0.0),
        ("tubes_paths", vec![], 1.0),
        ("tubes_transfers_active", vec![], 0.0),
    ];
    let mut wrong = Vec::new();
    for (name, labels, value) in expect {
        let got = scrape.value(name, &labels);
        if got != Some(value) {
            wrong.push(format!("{name}{labels:?}: {got:?}, expected {value}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{}\nthe scrape:\n{}",
        wrong.join("\n"),
        scrape.text
    );
    drop(waiting);
}

/// The relay port's health check is for load balancers, which carry no
/// credentials: it answers without them, with auth on.
#[test]
fn relay_health_check_needs_no_credentials() {
    let server = Server::start(
        "health-auth",
        "[auth]\n[[auth.tokens]]\nname = \"t\"\ntoken = \"health-token\"\n",
    );
    let reply = curl(&[&format!("{}/-/healthz", server.url)]);
    assert_eq!(
        reply.status,
        200,
        "GET /-/healthz with auth on: {}",
        reply.text()
    );
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let health: serde_json::Value = serde_json::from_slice(&reply.body).expect("JSON health");
    assert_eq!(health["status"], "ok", "{health}");
}

/// A sender or receiver whose body is read by the test as it comes.
struct Piped {
    child: Child,
}

impl Piped {
    /// `curl -sS URL` with its body counted: `progress` gets the bytes
    /// received so far on every read; the thread returns the whole body.
    fn receiver(url: &str) -> (Piped, mpsc::Receiver<usize>, thread::JoinHandle<Vec<u8>>) {
        let mut child = Command::new("curl")
            .args(["-sS", "-N", "--max-time", "30", url])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("curl");
        let mut stdout = child.stdout.take().expect("stdout");
        let (tx, progress) = mpsc::channel();
        let body = thread::spawn(move || {
            let mut body = Vec::new();
            let mut buf = [0u8; 64 * 1024];
            loop {
                match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        body.extend_from_slice(&buf[..n]);
                        let _ = tx.send(body.len());
                    }
                }
            }
            body
        });
        (Piped { child }, progress, body)
    }

    /// `curl -sS -T - URL` (chunked, from the test's writes; curl reads
    /// its stdin 64 KiB at a time, so write multiples of that).
    fn sender(url: &str, args: &[&str]) -> Piped {
        let child = Command::new("curl")
            .args(["-sS", "--max-time", "30", "-T", "-"])
            .args(args)
            .arg(url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("curl");
        Piped { child }
    }

    fn write(&mut self, data: &[u8]) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin.write_all(data).expect("write to curl");
        stdin.flush().expect("flush");
    }

    /// Ends the upload; the sender's exit code and log.
    fn finish(mut self) -> (i32, String) {
        drop(self.child.stdin.take());
        let mut log = String::new();
        if let Some(mut stdout) = self.child.stdout.take() {
            let _ = stdout.read_to_string(&mut log);
        }
        let status = self.child.wait().expect("wait");
        (status.code().unwrap_or(-1), log)
    }

    fn exit(mut self) -> i32 {
        self.child.wait().expect("wait").code().unwrap_or(-1)
    }
}

impl Drop for Piped {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `progress` reports at least `bytes`.
fn wait_received(progress: &mpsc::Receiver<usize>, bytes: usize, what: &str) {
    let deadline = Instant::now() + LIMIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match progress.recv_timeout(left) {
            Ok(n) if n >= bytes => return,
            Ok(_) => {}
            Err(e) => panic!("{what}: {bytes} bytes not received ({e})"),
        }
    }
}

/// SIGHUP puts a changed file's auth in place for new requests, leaves a
/// running transfer alone, and keeps the old settings when the file is
/// broken.
#[test]
fn sighup_reloads_settings() {
    let mut server = Server::start("reload", "# anyone may, at first\n");
    let url = format!("{}/before", server.url);
    let (receiver, progress, body) = Piped::receiver(&url);
    let mut sender = Piped::sender(&url, &[]);
    let data = bytes(4 << 20, 7);
    sender.write(&data[..1 << 20]);
    wait_received(&progress, 1 << 20, "the first MiB before the reload");

    std::fs::write(
        &server.config,
        "[auth]\n[[auth.tokens]]\nname = \"t\"\ntoken = \"reload-token\"\n",
    )
    .expect("rewrite settings");
    server.signal("-HUP");
    assert!(
        server.wait_log("settings reloaded", 1, LIMIT),
        "no reload in the log:\n{}",
        server.log()
    );
    let reply = curl(&[&format!("{}/after", server.url)]);
    assert_401(&reply, "after the reload");

    sender.write(&data[1 << 20..]);
    let (exit, log) = sender.finish();
    assert_eq!(exit, 0, "the sender across the reload: {log}");
    assert!(log.contains("[INFO] Sent successfully!"), "{log}");
    assert_eq!(receiver.exit(), 0, "the receiver across the reload");
    let got = body.join().expect("receiver");
    assert_eq!(got.len(), data.len(), "bytes across the reload");
    assert_eq!(sha256_hex(&got), sha256_hex(&data));

    // A broken file: the previous settings stay.
    std::fs::write(&server.config, "[auth\nthis is not TOML").expect("break settings");
    server.signal("-HUP");
    assert!(
        server.wait_log("NOT reloaded", 1, LIMIT),
        "no refusal in the log:\n{}",
        server.log()
    );
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("NOT reloaded"))
        .expect("line");
    assert!(
        line.contains(server.config.to_str().expect("path")),
        "the refusal names the file: {line}"
    );
    let reply = curl(&[&format!("{}/still", server.url)]);
    assert_401(&reply, "after a broken reload");
    let data = bytes(5000, 8);
    let auth = "Authorization: Bearer reload-token";
    let (sender, receiver) = transfer(
        &server.dir,
        &format!("{}/still", server.url),
        &["-H", auth],
        &format!("{}/still", server.url),
        &["-H", auth],
        &data,
    );
    assert_transferred(&sender, &receiver, &data, "with the kept token");
    assert!(server.wait_exit(Duration::ZERO).is_none(), "still running");
}

/// Reads one HTTP/1.1 response with a Content-Length from `reader`.
fn read_response(reader: &mut BufReader<TcpStream>) -> (u16, Vec<(String, String)>, String) {
    let mut status_line = String::new();
    reader.read_line(&mut status_line).expect("status line");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line {status_line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("header");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':').expect("header line");
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .expect("content-length");
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).expect("body");
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// SIGTERM with `grace = "5s"`: waiting peers are turned away at once,
/// the health check says `draining`, a transfer that ends within the
/// grace completes, one that does not is cut at the deadline, and the
/// process exits 0.
#[test]
fn graceful_shutdown() {
    const GRACE: Duration = Duration::from_secs(5);
    let mut server = Server::start("shutdown", "[shutdown]\ngrace = \"5s\"\n");
    let url = |path: &str| format!("{}{path}", server.url);

    // A kept-alive connection for the health check during the drain.
    let health = TcpStream::connect(server.addr).expect("connect");
    health.set_read_timeout(Some(LIMIT)).expect("timeout");
    let mut health_writer = health.try_clone().expect("clone");
    let mut health = BufReader::new(health);
    let ask = b"GET /-/healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    health_writer.write_all(ask).expect("write");
    let (status, _, body) = read_response(&mut health);
    assert_eq!(status, 200, "{body}");

    // Transfer A ends within the grace; B never ends; C waits for a sender.
    const HALF: usize = 2 << 16;
    let data_a = bytes(2 * HALF, 11);
    let (recv_a, progress_a, body_a) = Piped::receiver(&url("/a"));
    let mut send_a = Piped::sender(&url("/a"), &[]);
    send_a.write(&data_a[..HALF]);
    wait_received(&progress_a, HALF, "A before SIGTERM");
    let data_b = bytes(1 << 16, 12);
    let (recv_b, progress_b, body_b) = Piped::receiver(&url("/b"));
    let mut send_b = Piped::sender(&url("/b"), &[]);
    send_b.write(&data_b);
    wait_received(&progress_b, data_b.len(), "B before SIGTERM");
    let waiting = Running::start(&[&url("/c")]);
    let lone = server.dir.join("lone");
    std::fs::write(&lone, "nobody takes this\n").expect("write");
    let lone_sender = Running::start(&["-T", lone.to_str().expect("path"), &url("/d")]);
    server.wait_metric("tubes_waiting", &[("kind", "receiver")], 1.0);
    server.wait_metric("tubes_waiting", &[("kind", "sender")], 1.0);

    server.signal("-TERM");
    let term = Instant::now();
    let waiting = waiting.finish();
    assert_eq!(waiting.status, 503, "the waiting receiver: {waiting:?}");
    assert_eq!(
        waiting.text(),
        "[ERROR] The server is shutting down; try again.\n"
    );
    let lone_sender = lone_sender.finish();
    assert!(
        lone_sender
            .text()
            .ends_with("[ERROR] The server is shutting down; try again.\n"),
        "the waiting sender's log: {lone_sender:?}"
    );
    assert!(
        term.elapsed() < Duration::from_secs(2),
        "turned away after {:?}",
        term.elapsed()
    );
    // (Judged at the end, so that the rest is checked either way.)
    health_writer.write_all(ask).expect("write");
    let (status, headers, body) = read_response(&mut health);
    let draining = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["status"].as_str().map(str::to_owned));
    let health_problem = (status != 503 || draining.as_deref() != Some("draining")).then(|| {
        format!("the health check while draining: {status} {body:?}, expected 503 with JSON \"status\":\"draining\"")
    });
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "connection" && v.eq_ignore_ascii_case("close")),
        "{headers:?}"
    );

    // A finishes within the grace: every byte, a clean end.
    send_a.write(&data_a[HALF..]);
    let (exit, log) = send_a.finish();
    assert_eq!(exit, 0, "sender A: {log}");
    let got_a = body_a.join().expect("A");
    let exit_a = recv_a.exit();
    assert_eq!(exit_a, 0, "receiver A after SIGTERM");
    assert_eq!(sha256_hex(&got_a), sha256_hex(&data_a), "A's bytes");
    assert!(term.elapsed() < GRACE, "A ended within the grace");

    // B is cut at the deadline; the server exits 0 soon after.
    let status = server
        .wait_exit(GRACE + Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no exit within the grace and 5 s:\n{}", server.log()));
    let exited = term.elapsed();
    assert!(
        status.success(),
        "exit status {status:?}:\n{}",
        server.log()
    );
    assert!(
        exited >= GRACE - Duration::from_millis(200),
        "exited after {exited:?}, before the grace was over"
    );
    let got_b = body_b.join().expect("B");
    let exit_b = recv_b.exit();
    assert_ne!(exit_b, 0, "receiver B must see a cut transfer");
    assert_eq!(got_b, data_b, "B got what was sent before the cut");
    drop(send_b);
    assert!(
        server.log().contains("grace period over"),
        "{}",
        server.log()
    );
    if let Some(problem) = health_problem {
        panic!("{problem}");
    }
}

/// Settings that cannot work stop `tubes serve` at once, with one line
/// that names the file or the key.
#[test]
fn startup_errors_are_one_line() {
    let dir = TempDir::new("startup");
    let cases = [
        (
            "unknown-key",
            "http_prot = 1\n",
            vec!["unknown-key.toml", "http_prot"],
        ),
        (
            "bad-value",
            "[limits]\nwait_timeout = \"soon\"\n",
            vec!["bad-value.toml"],
        ),
        (
            "short-key",
            "[auth]\nsigning_key = \"short\"\n",
            vec!["signing_key"],
        ),
        (
            "bad-congestion",
            "loopback_congestion = \"Fast!\"\n",
            vec!["bad-congestion.toml", "loopback_congestion", "Fast!"],
        ),
        (
            "no-jwks",
            "[auth]\n[auth.jwt]\njwks_file = \"missing-jwks.json\"\n",
            vec!["missing-jwks.json"],
        ),
    ];
    for (name, toml, says) in cases {
        let path = dir.join(&format!("{name}.toml"));
        std::fs::write(&path, toml).expect("write");
        let started = Instant::now();
        let mut child = tubes()
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .args(["--host", "127.0.0.1", "--http-port", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tubes");
        let stderr = operate_common::collect(child.stderr.take().expect("stderr"));
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if started.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{name}: tubes serve did not stop on bad settings");
            }
            thread::sleep(Duration::from_millis(20));
        };
        let stderr = String::from_utf8(stderr.join().expect("stderr")).expect("utf-8");
        assert!(!status.success(), "{name}: {status:?}");
        assert_eq!(
            stderr.lines().count(),
            1,
            "{name}: one line on stderr: {stderr:?}"
        );
        for part in says {
            assert!(
                stderr.contains(part),
                "{name}: should name {part}: {stderr}"
            );
        }
    }
}

/// A congestion control the kernel does not have is one warning at
/// start-up; the server keeps the system's and relays as usual.
#[test]
fn an_unknown_loopback_congestion_control_is_one_warning() {
    let server = Server::start_with("congestion", "", &["--loopback-congestion", "no_such_cc"]);
    for round in 0..2 {
        let data = bytes(5000, round);
        let url = format!("{}/cc{round}", server.url);
        let (sender, receiver) = transfer(&server.dir, &url, &[], &url, &[], &data);
        assert_transferred(
            &sender,
            &receiver,
            &data,
            "with the system's congestion control",
        );
    }
    let log = server.log();
    assert_eq!(
        log.matches("cannot set the loopback congestion control")
            .count(),
        1,
        "{log}"
    );
    assert!(log.contains("no_such_cc"), "{log}");
}

/// `--log-format json`: every line the server writes is a JSON object.
#[test]
fn json_logs() {
    let mut server = Server::start_with(
        "json",
        "[limits]\nwait_timeout = \"10s\"\n",
        &["--log-format", "json"],
    );
    let data = bytes(3000, 21);
    let (sender, receiver) = transfer(
        &server.dir,
        &format!("{}/j", server.url),
        &[],
        &format!("{}/j", server.url),
        &[],
        &data,
    );
    assert_transferred(&sender, &receiver, &data, "JSON logs");
    server.signal("-HUP");
    assert!(server.wait_log("settings reloaded", 1, LIMIT));
    std::fs::write(&server.config, "nonsense").expect("write");
    server.signal("-HUP");
    assert!(server.wait_log("NOT reloaded", 1, LIMIT));
    server.signal("-TERM");
    let status = server.wait_exit(LIMIT).expect("exit");
    assert!(status.success(), "{status:?}");
    assert!(server.wait_log_closed(LIMIT), "stderr closes at exit");
    let log = server.log();
    assert!(log.lines().count() >= 5, "{log}");
    for line in log.lines() {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}\nthe log:\n{log}"));
        assert!(
            value.get("level").is_some() && value.get("fields").is_some(),
            "{line}"
        );
    }
}
