//! Who is asking: bearer tokens, Basic users, JWTs and signed URLs, and
//! the per-prefix rules that say who may send and receive where.
//!
//! Nothing here reads a socket: [`Auth::authorize`] gets the path, what
//! the request wants to do and the credentials the transport found.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::settings::{AuthSettings, JwtSettings};

/// What a request wants to do on its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Send,
    Receive,
    /// Both at once (a pair, a room): needs both rights.
    Both,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Send => "send",
            Action::Receive => "receive",
            Action::Both => "both",
        }
    }

    fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "send" => Action::Send,
            "receive" => Action::Receive,
            "both" => Action::Both,
            _ => return None,
        })
    }

    /// Whether a grant for `self` covers `wanted`.
    fn covers(self, wanted: Action) -> bool {
        self == Action::Both || self == wanted
    }
}

/// The credentials a request carries, as the transport found them.
#[derive(Debug, Default, Clone, Copy)]
pub struct Credentials<'a> {
    /// The `Authorization` header.
    pub authorization: Option<&'a [u8]>,
    /// `?token=` (for EventSource and WebSocket, which cannot set headers).
    pub query_token: Option<&'a str>,
    /// `?allow=&exp=&sig=` of a signed URL.
    pub signed: Option<Signed<'a>>,
}

/// The parameters of a signed URL.
#[derive(Debug, Clone, Copy)]
pub struct Signed<'a> {
    pub allow: &'a str,
    pub exp: &'a str,
    pub sig: &'a str,
}

/// Why a request is turned away.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("[ERROR] This path needs credentials (Authorization: Bearer or Basic, ?token=, or a signed URL).\n")]
    Missing,
    #[error("[ERROR] Invalid credentials: {0}.\n")]
    Invalid(&'static str),
    #[error("[ERROR] {0} may not {1} on this path.\n")]
    Forbidden(String, &'static str),
    #[error("[ERROR] Too many password checks at once; try again in a second.\n")]
    Busy,
}

impl Denied {
    /// 401 asks for credentials; 403 says these are not enough; 429 asks
    /// to come back.
    pub fn status(&self) -> u16 {
        match self {
            Denied::Forbidden(..) => 403,
            Denied::Busy => 429,
            _ => 401,
        }
    }
}

/// What [`Auth::authorize`] found.
#[derive(Debug)]
pub enum Verdict {
    Allowed,
    /// A Basic password not seen before: checking it is slow on purpose
    /// (bcrypt), so it is done off the request's thread by
    /// [`Auth::check_password`].
    Password(PasswordCheck),
}

/// A Basic password to check against its user's bcrypt hash.
pub struct PasswordCheck {
    user: String,
    password: String,
    hash: String,
    /// The cache key of these credentials.
    key: [u8; 32],
    /// Whether the rule lets this user in, once the password is right.
    admitted: bool,
    action: Action,
}

impl std::fmt::Debug for PasswordCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordCheck")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// Who the credentials name, or the password check that will tell.
enum Identity {
    Known(String),
    Password(PasswordCheck),
}

/// Who a rule lets in.
#[derive(Debug, Clone)]
enum Who {
    Anyone,
    Authenticated,
    Names(Vec<String>),
}

impl Who {
    fn from_list(list: &[String]) -> Who {
        if list.iter().any(|w| w == "anyone") {
            Who::Anyone
        } else if list.iter().any(|w| w == "authenticated") {
            Who::Authenticated
        } else {
            Who::Names(list.to_vec())
        }
    }

    fn admits(&self, principal: &str) -> bool {
        match self {
            Who::Anyone | Who::Authenticated => true,
            Who::Names(names) => names.iter().any(|n| n == principal),
        }
    }
}

#[derive(Debug, Clone)]
struct Rule {
    prefix: String,
    send: Who,
    receive: Who,
}

/// The checked, ready form of `[auth]`.
pub struct Auth {
    /// Longest prefix first.
    rules: Vec<Rule>,
    /// SHA-256 of each token, to its name.
    tokens: HashMap<[u8; 32], String>,
    /// User name to bcrypt hash.
    users: HashMap<String, String>,
    /// SHA-256 of `user:password` pairs already checked (bcrypt is slow
    /// on purpose; a client sends its password on every request).
    verified: Mutex<HashMap<[u8; 32], String>>,
    jwt: Option<Jwt>,
    signing_key: Option<ring::hmac::Key>,
    /// One bcrypt check at a time, on the blocking pool: wrong passwords
    /// cannot take the workers that relay everyone else's bytes.
    password_slot: tokio::sync::Semaphore,
    /// Checks waiting for the slot.
    password_queue: std::sync::atomic::AtomicUsize,
}

/// How many Basic credentials are remembered as checked.
const VERIFIED_CACHE: usize = 1024;

/// Password checks that may wait for the slot; more are told to retry.
const PASSWORD_QUEUE: usize = 16;

struct Jwt {
    hs256: Option<jsonwebtoken::DecodingKey>,
    /// Keys of the JWKS file by `kid`, with their algorithm.
    keys: HashMap<String, (jsonwebtoken::Algorithm, jsonwebtoken::DecodingKey)>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: u64,
}

#[derive(serde::Deserialize)]
struct Claims {
    sub: Option<String>,
}

/// Bytes a signing key must have at least.
pub const MIN_SIGNING_KEY: usize = 16;

impl Auth {
    /// Checks `[auth]` and loads its keys; errors are one line.
    pub fn from_settings(settings: &AuthSettings) -> Result<Auth, String> {
        let mut tokens = HashMap::new();
        for entry in &settings.tokens {
            let digest = match (&entry.token, &entry.token_sha256) {
                (Some(token), None) => sha256(token.as_bytes()),
                (None, Some(hex)) => parse_hex32(hex).ok_or_else(|| {
                    format!("token {:?}: token_sha256 is not 64 hex digits", entry.name)
                })?,
                _ => {
                    return Err(format!(
                        "token {:?}: give exactly one of token and token_sha256",
                        entry.name
                    ))
                }
            };
            tokens.insert(digest, entry.name.clone());
        }
        let mut users = HashMap::new();
        for user in &settings.users {
            if !user.password_bcrypt.starts_with("$2") {
                return Err(format!(
                    "user {:?}: password_bcrypt is not a bcrypt hash (make one with `htpasswd -nbB user password`)",
                    user.name
                ));
            }
            users.insert(user.name.clone(), user.password_bcrypt.clone());
        }
        let jwt = settings.jwt.as_ref().map(Jwt::from_settings).transpose()?;
        let signing_key = match &settings.signing_key {
            Some(key) if key.len() < MIN_SIGNING_KEY => {
                return Err(format!(
                    "signing_key must have at least {MIN_SIGNING_KEY} bytes"
                ))
            }
            Some(key) => Some(signing_key(key)),
            None => None,
        };
        let mut rules: Vec<Rule> = settings
            .rules
            .iter()
            .map(|rule| {
                if !rule.prefix.starts_with('/') {
                    return Err(format!("rule prefix {:?} must start with /", rule.prefix));
                }
                Ok(Rule {
                    prefix: rule.prefix.clone(),
                    send: Who::from_list(&rule.send),
                    receive: Who::from_list(&rule.receive),
                })
            })
            .collect::<Result<_, String>>()?;
        if rules.is_empty() {
            rules.push(Rule {
                prefix: "/".into(),
                send: Who::Authenticated,
                receive: Who::Authenticated,
            });
        }
        rules.sort_by_key(|rule| std::cmp::Reverse(rule.prefix.len()));
        Ok(Auth {
            rules,
            tokens,
            users,
            verified: Mutex::new(HashMap::new()),
            jwt,
            signing_key,
            password_slot: tokio::sync::Semaphore::new(1),
            password_queue: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Decides whether a request may do `action` on `path`, except for a
    /// Basic password not checked before, which it hands back.
    pub fn authorize(
        &self,
        path: &str,
        action: Action,
        credentials: &Credentials<'_>,
    ) -> Result<Verdict, Denied> {
        let Some(rule) = self.rules.iter().find(|r| path.starts_with(&r.prefix)) else {
            return Ok(Verdict::Allowed);
        };
        let needed: &[&Who] = match action {
            Action::Send => &[&rule.send],
            Action::Receive => &[&rule.receive],
            Action::Both => &[&rule.send, &rule.receive],
        };
        if needed.iter().all(|who| matches!(who, Who::Anyone)) {
            return Ok(Verdict::Allowed);
        }
        if let Some(signed) = &credentials.signed {
            // A signed URL is a capability of its own: it grants what it
            // says on its exact path, whoever holds it.
            let allow = self.check_signed(path, signed, unix_now())?;
            return if allow.covers(action) {
                Ok(Verdict::Allowed)
            } else {
                Err(Denied::Forbidden("This signed URL".into(), action.as_str()))
            };
        }
        let principal = match self.identify(credentials)? {
            Identity::Known(principal) => principal,
            Identity::Password(mut check) => {
                check.admitted = needed.iter().all(|who| who.admits(&check.user));
                check.action = action;
                return Ok(Verdict::Password(check));
            }
        };
        if needed.iter().all(|who| who.admits(&principal)) {
            Ok(Verdict::Allowed)
        } else {
            Err(Denied::Forbidden(format!("'{principal}'"), action.as_str()))
        }
    }

    /// Checks a Basic password on the blocking pool, one at a time; a
    /// right one is remembered for the next requests.
    pub async fn check_password(&self, check: PasswordCheck) -> Result<(), Denied> {
        use std::sync::atomic::Ordering;
        struct Queued<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Queued<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let queued = Queued(&self.password_queue);
        if self.password_queue.fetch_add(1, Ordering::Relaxed) >= PASSWORD_QUEUE {
            return Err(Denied::Busy);
        }
        let Ok(_slot) = self.password_slot.acquire().await else {
            return Err(Denied::Busy);
        };
        let (password, hash) = (check.password.clone(), check.hash.clone());
        let right = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .is_ok_and(|verified| verified.unwrap_or(false));
        drop(queued);
        if !right {
            return Err(Denied::Invalid("unknown user or wrong password"));
        }
        let mut verified = lock(&self.verified);
        if verified.len() >= VERIFIED_CACHE {
            verified.clear();
        }
        verified.insert(check.key, check.user.clone());
        drop(verified);
        if check.admitted {
            Ok(())
        } else {
            Err(Denied::Forbidden(
                format!("'{}'", check.user),
                check.action.as_str(),
            ))
        }
    }

    /// The name behind the request's credentials.
    fn identify(&self, credentials: &Credentials<'_>) -> Result<Identity, Denied> {
        if let Some(value) = credentials.authorization {
            let value = std::str::from_utf8(value)
                .map_err(|_| Denied::Invalid("the Authorization header is not text"))?;
            let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
            let rest = rest.trim();
            if scheme.eq_ignore_ascii_case("bearer") {
                return self.bearer(rest).map(Identity::Known);
            }
            if scheme.eq_ignore_ascii_case("basic") {
                return self.basic(rest);
            }
            return Err(Denied::Invalid("unknown Authorization scheme"));
        }
        match credentials.query_token {
            Some(token) => self.bearer(token).map(Identity::Known),
            None => Err(Denied::Missing),
        }
    }

    /// A token: one of the configured ones, or a JWT.
    fn bearer(&self, token: &str) -> Result<String, Denied> {
        if let Some(name) = self.tokens.get(&sha256(token.as_bytes())) {
            return Ok(name.clone());
        }
        match &self.jwt {
            Some(jwt) if token.split('.').count() == 3 => jwt.verify(token),
            _ => Err(Denied::Invalid("unknown token")),
        }
    }

    fn basic(&self, encoded: &str) -> Result<Identity, Denied> {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| Denied::Invalid("Basic credentials are not base64"))?;
        let text = String::from_utf8(decoded)
            .map_err(|_| Denied::Invalid("Basic credentials are not text"))?;
        let (user, password) = text
            .split_once(':')
            .ok_or(Denied::Invalid("Basic credentials have no ':'"))?;
        let key = sha256(text.as_bytes());
        if let Some(name) = lock(&self.verified).get(&key) {
            return Ok(Identity::Known(name.clone()));
        }
        let hash = self
            .users
            .get(user)
            .ok_or(Denied::Invalid("unknown user or wrong password"))?;
        Ok(Identity::Password(PasswordCheck {
            user: user.to_owned(),
            password: password.to_owned(),
            hash: hash.clone(),
            key,
            admitted: false,
            action: Action::Send,
        }))
    }

    fn check_signed(&self, path: &str, signed: &Signed<'_>, now: u64) -> Result<Action, Denied> {
        let key = self
            .signing_key
            .as_ref()
            .ok_or(Denied::Invalid("this server does not accept signed URLs"))?;
        let allow = Action::parse(signed.allow)
            .ok_or(Denied::Invalid("allow= is not send, receive or both"))?;
        let exp: u64 = signed
            .exp
            .parse()
            .map_err(|_| Denied::Invalid("exp= is not a time"))?;
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(signed.sig)
            .map_err(|_| Denied::Invalid("the signature is not base64url"))?;
        ring::hmac::verify(key, signed_message(path, allow, exp).as_bytes(), &sig)
            .map_err(|_| Denied::Invalid("the signature does not match"))?;
        if exp < now {
            return Err(Denied::Invalid("the signed URL has expired"));
        }
        Ok(allow)
    }
}

impl Jwt {
    fn from_settings(settings: &JwtSettings) -> Result<Jwt, String> {
        use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, KeyAlgorithm};
        use jsonwebtoken::{Algorithm, DecodingKey};
        let hs256 = settings
            .hs256_secret
            .as_ref()
            .map(|secret| {
                if secret.len() < 32 {
                    Err("jwt.hs256_secret must have at least 32 bytes".to_string())
                } else {
                    Ok(DecodingKey::from_secret(secret.as_bytes()))
                }
            })
            .transpose()?;
        let mut keys = HashMap::new();
        if let Some(path) = &settings.jwks_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let set: JwkSet = serde_json::from_str(&text)
                .map_err(|e| format!("{}: not a JWKS: {e}", path.display()))?;
            for jwk in &set.keys {
                let kid = jwk
                    .common
                    .key_id
                    .clone()
                    .ok_or_else(|| format!("{}: every key needs a \"kid\"", path.display()))?;
                let algorithm = match (&jwk.algorithm, jwk.common.key_algorithm) {
                    (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => {
                        Algorithm::RS256
                    }
                    (AlgorithmParameters::EllipticCurve(_), None | Some(KeyAlgorithm::ES256)) => {
                        Algorithm::ES256
                    }
                    _ => {
                        return Err(format!(
                            "{}: key {kid:?} is neither RS256 nor ES256",
                            path.display()
                        ))
                    }
                };
                let key = DecodingKey::from_jwk(jwk)
                    .map_err(|e| format!("{}: key {kid:?}: {e}", path.display()))?;
                keys.insert(kid, (algorithm, key));
            }
        }
        if hs256.is_none() && keys.is_empty() {
            return Err("[auth.jwt] needs hs256_secret or jwks_file".into());
        }
        Ok(Jwt {
            hs256,
            keys,
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            leeway: settings.leeway,
        })
    }

    fn verify(&self, token: &str) -> Result<String, Denied> {
        use jsonwebtoken::{errors::ErrorKind, Algorithm, Validation};
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| Denied::Invalid("malformed JWT"))?;
        let (algorithm, key) = match header.alg {
            Algorithm::HS256 => (
                Algorithm::HS256,
                self.hs256
                    .as_ref()
                    .ok_or(Denied::Invalid("HS256 tokens are not accepted"))?,
            ),
            Algorithm::RS256 | Algorithm::ES256 => {
                let kid = header
                    .kid
                    .as_deref()
                    .ok_or(Denied::Invalid("the JWT has no kid"))?;
                let (algorithm, key) = self
                    .keys
                    .get(kid)
                    .ok_or(Denied::Invalid("the JWT's kid is unknown"))?;
                if *algorithm != header.alg {
                    return Err(Denied::Invalid("the JWT's alg does not match its key"));
                }
                (*algorithm, key)
            }
            _ => return Err(Denied::Invalid("JWT algorithm not accepted")),
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        match &self.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
        }
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| {
            Denied::Invalid(match e.kind() {
                ErrorKind::ExpiredSignature => "the JWT has expired",
                ErrorKind::ImmatureSignature => "the JWT is not valid yet",
                ErrorKind::InvalidSignature => "the JWT's signature does not match",
                ErrorKind::InvalidIssuer => "the JWT's issuer is not accepted",
                ErrorKind::InvalidAudience => "the JWT's audience is not accepted",
                ErrorKind::MissingRequiredClaim(_) => "the JWT lacks a required claim (exp)",
                _ => "the JWT cannot be verified",
            })
        })?;
        data.claims.sub.ok_or(Denied::Invalid("the JWT has no sub"))
    }
}

/// The HMAC key of signed URLs.
pub fn signing_key(key: &str) -> ring::hmac::Key {
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_bytes())
}

/// What a signed URL's signature covers.
fn signed_message(path: &str, allow: Action, exp: u64) -> String {
    format!("tubes-signed-url-v1\n{}\n{exp}\n{path}", allow.as_str())
}

/// The query of a signed URL for `path`: `allow=..&exp=..&sig=..`.
pub fn sign(key: &ring::hmac::Key, path: &str, allow: Action, exp: u64) -> String {
    let tag = ring::hmac::sign(key, signed_message(path, allow, exp).as_bytes());
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref());
    format!("allow={}&exp={exp}&sig={sig}", allow.as_str())
}

/// Parses `send`, `receive` or `both`.
pub fn parse_action(s: &str) -> Option<Action> {
    Action::parse(s)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn parse_hex32(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Settings;

    /// `authorize`, with any password check run to its end.
    fn decide(
        auth: &Auth,
        path: &str,
        action: Action,
        credentials: &Credentials<'_>,
    ) -> Result<(), Denied> {
        match auth.authorize(path, action, credentials)? {
            Verdict::Allowed => Ok(()),
            Verdict::Password(check) => tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime")
                .block_on(auth.check_password(check)),
        }
    }

    fn auth(toml: &str) -> Auth {
        let settings = Settings::parse(toml).expect("toml");
        Auth::from_settings(&settings.auth.expect("[auth]")).expect("auth")
    }

    fn bearer(token: &str) -> String {
        format!("Bearer {token}")
    }

    fn with_header(value: &str) -> Credentials<'_> {
        Credentials {
            authorization: Some(value.as_bytes()),
            ..Credentials::default()
        }
    }

    const RULES: &str = r#"
        [auth]
        signing_key = "0123456789abcdef-key"
        [[auth.tokens]]
        name = "ci"
        token = "ci-token"
        [[auth.tokens]]
        name = "ops"
        token_sha256 = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
        [[auth.rules]]
        prefix = "/"
        send = ["anyone"]
        receive = ["anyone"]
        [[auth.rules]]
        prefix = "/ci/"
        send = ["ci"]
        receive = ["authenticated"]
    "#;

    #[test]
    fn rules_pick_the_longest_prefix() {
        let auth = auth(RULES);
        let none = Credentials::default();
        assert_eq!(decide(&auth, "/open", Action::Send, &none), Ok(()));
        assert_eq!(
            decide(&auth, "/ci/x", Action::Send, &none),
            Err(Denied::Missing)
        );
        let ci = bearer("ci-token");
        assert_eq!(
            decide(&auth, "/ci/x", Action::Send, &with_header(&ci)),
            Ok(())
        );
        // sha256("password")
        let ops = bearer("password");
        assert!(matches!(
            decide(&auth, "/ci/x", Action::Send, &with_header(&ops)),
            Err(Denied::Forbidden(..))
        ));
        assert_eq!(
            decide(&auth, "/ci/x", Action::Receive, &with_header(&ops)),
            Ok(())
        );
        let wrong = bearer("nope");
        assert_eq!(
            decide(&auth, "/ci/x", Action::Receive, &with_header(&wrong)),
            Err(Denied::Invalid("unknown token"))
        );
        let query = Credentials {
            query_token: Some("ci-token"),
            ..Credentials::default()
        };
        assert_eq!(decide(&auth, "/ci/x", Action::Both, &query), Ok(()));
    }

    #[test]
    fn no_rules_means_credentials_everywhere() {
        let auth = auth("[auth]\n[[auth.tokens]]\nname = \"a\"\ntoken = \"t\"\n");
        assert_eq!(
            decide(&auth, "/x", Action::Receive, &Credentials::default()),
            Err(Denied::Missing)
        );
        assert_eq!(
            decide(&auth, "/x", Action::Receive, &with_header("bearer t")),
            Ok(())
        );
    }

    #[test]
    fn signed_urls_grant_their_path_and_mode_until_they_expire() {
        let auth = auth(RULES);
        let key = signing_key("0123456789abcdef-key");
        let query = sign(&key, "/ci/x", Action::Receive, u64::MAX / 2);
        let params: HashMap<_, _> = form_urlencoded::parse(query.as_bytes()).collect();
        let signed = Signed {
            allow: &params["allow"],
            exp: &params["exp"],
            sig: &params["sig"],
        };
        let creds = Credentials {
            signed: Some(signed),
            ..Credentials::default()
        };
        assert_eq!(decide(&auth, "/ci/x", Action::Receive, &creds), Ok(()));
        assert!(matches!(
            decide(&auth, "/ci/x", Action::Send, &creds),
            Err(Denied::Forbidden(..))
        ));
        assert_eq!(
            decide(&auth, "/ci/y", Action::Receive, &creds),
            Err(Denied::Invalid("the signature does not match"))
        );
        let old = sign(&key, "/ci/x", Action::Both, 1000);
        let params: HashMap<_, _> = form_urlencoded::parse(old.as_bytes()).collect();
        let expired = Signed {
            allow: &params["allow"],
            exp: &params["exp"],
            sig: &params["sig"],
        };
        assert_eq!(
            auth.check_signed("/ci/x", &expired, 2000),
            Err(Denied::Invalid("the signed URL has expired"))
        );
        assert_eq!(auth.check_signed("/ci/x", &expired, 999), Ok(Action::Both));
    }

    #[test]
    fn basic_users_are_checked_with_bcrypt() {
        let hash = bcrypt::hash("secret", 4).expect("hash");
        let auth = auth(&format!(
            "[auth]\n[[auth.users]]\nname = \"alice\"\npassword_bcrypt = \"{hash}\"\n"
        ));
        let good = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("alice:secret")
        );
        let bad = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("alice:guess")
        );
        for _ in 0..2 {
            assert_eq!(
                decide(&auth, "/p", Action::Send, &with_header(&good)),
                Ok(())
            );
            assert!(matches!(
                decide(&auth, "/p", Action::Send, &with_header(&bad)),
                Err(Denied::Invalid(_))
            ));
        }
    }

    #[test]
    fn jwts_are_verified() {
        use jsonwebtoken::{encode, EncodingKey, Header};
        let secret = "a-very-long-shared-secret-of-32-bytes!";
        let auth = auth(&format!(
            "[auth]\n[auth.jwt]\nhs256_secret = \"{secret}\"\nissuer = \"me\"\n"
        ));
        let token = |claims: serde_json::Value, key: &str| {
            encode(
                &Header::default(),
                &claims,
                &EncodingKey::from_secret(key.as_bytes()),
            )
            .expect("encode")
        };
        let later = unix_now() + 600;
        let good = token(
            serde_json::json!({"sub": "bob", "exp": later, "iss": "me"}),
            secret,
        );
        assert_eq!(
            decide(&auth, "/p", Action::Send, &with_header(&bearer(&good))),
            Ok(())
        );
        let expired = token(
            serde_json::json!({"sub": "bob", "exp": 1000, "iss": "me"}),
            secret,
        );
        assert_eq!(
            decide(&auth, "/p", Action::Send, &with_header(&bearer(&expired))),
            Err(Denied::Invalid("the JWT has expired"))
        );
        let forged = token(
            serde_json::json!({"sub": "bob", "exp": later, "iss": "me"}),
            "another-secret-that-is-long-enough!!",
        );
        assert_eq!(
            decide(&auth, "/p", Action::Send, &with_header(&bearer(&forged))),
            Err(Denied::Invalid("the JWT's signature does not match"))
        );
        let other_issuer = token(
            serde_json::json!({"sub": "bob", "exp": later, "iss": "you"}),
            secret,
        );
        assert_eq!(
            decide(
                &auth,
                "/p",
                Action::Send,
                &with_header(&bearer(&other_issuer))
            ),
            Err(Denied::Invalid("the JWT's issuer is not accepted"))
        );
    }

    #[test]
    fn bad_settings_are_refused() {
        for (toml, part) in [
            ("[auth]\nsigning_key = \"short\"", "signing_key"),
            ("[auth]\n[[auth.tokens]]\nname = \"a\"", "exactly one"),
            (
                "[auth]\n[[auth.users]]\nname = \"a\"\npassword_bcrypt = \"plain\"",
                "bcrypt",
            ),
            ("[auth]\n[[auth.rules]]\nprefix = \"x\"", "start with /"),
            ("[auth]\n[auth.jwt]\nhs256_secret = \"short\"", "32 bytes"),
            (
                "[auth]\n[auth.jwt]\njwks_file = \"/nonexistent.json\"",
                "cannot read",
            ),
        ] {
            let settings = Settings::parse(toml).expect("toml");
            let error = Auth::from_settings(&settings.auth.expect("auth"))
                .err()
                .expect(toml);
            assert!(error.contains(part), "{toml}: {error}");
        }
    }
}
