//! The `tubes` binary as users run it: flags and environment variables,
//! real curl clients moving a large file, and a clean stop on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sha2::{Digest, Sha256};

const LIMIT: Duration = Duration::from_secs(60);

/// A `tubes serve` child process, killed if the test fails.
struct Serve {
    child: Option<Child>,
    url: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `tubes serve` on port 0 (from the environment, as users may set
/// it) and reads the bound address from its log.
fn serve() -> Serve {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tubes"))
        .arg("serve")
        .env("TUBES_HOST", "127.0.0.1")
        .env("TUBES_HTTP_PORT", "0")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tubes");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let address = loop {
        let line = lines
            .next()
            .expect("tubes printed its address before exiting")
            .expect("read log");
        if let Some(rest) = line.split("address=").nth(1) {
            break rest.split_whitespace().next().expect("address").to_string();
        }
    };
    // Keep draining the log so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Serve {
        child: Some(child),
        url: format!("http://{address}"),
    }
}

fn curl() -> Command {
    let mut c = Command::new("curl");
    c.args(["-sS", "--fail", "--max-time", "60"]);
    c
}

fn run(mut c: Command) -> std::process::Output {
    c.output()
        .expect("curl must be installed: run scripts/test.sh, which installs it")
}

#[test]
fn version_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_tubes"))
        .arg("--version")
        .output()
        .expect("run tubes");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("tubes {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn bad_flag_values_are_refused_clearly() {
    let out = Command::new(env!("CARGO_BIN_EXE_tubes"))
        .args(["serve", "--http-port", "99999"])
        .output()
        .expect("run tubes");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--http-port"));
}

#[test]
fn large_file_through_curl_and_clean_stop() {
    let server = serve();
    let dir = std::env::temp_dir().join(format!("tubes-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let input = dir.join("in.bin");
    let output = dir.join("out.bin");
    let mut data = vec![0u8; 100 << 20];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(&input, &data).expect("write input");
    let url = format!("{}/large", server.url);

    let mut receiver = curl();
    receiver.arg("-o").arg(&output).arg(&url);
    let receiver = receiver.spawn().expect("curl");
    let mut sender = curl();
    sender.arg("-T").arg(&input).arg(&url);
    let sent = run(sender);
    assert!(sent.status.success(), "{sent:?}");
    let log = String::from_utf8_lossy(&sent.stdout);
    assert!(
        log.contains("[INFO] Start sending to 1 receiver(s)!"),
        "{log}"
    );
    let received = receiver.wait_with_output().expect("receiver");
    assert!(received.status.success());
    let got = std::fs::read(&output).expect("output");
    assert_eq!(Sha256::digest(&got), Sha256::digest(&data));
    let _ = std::fs::remove_dir_all(&dir);

    // SIGTERM: the server stops on its own, with success.
    let mut server = server;
    let mut child = server.child.take().expect("running");
    let pid = child.id();
    let killed = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = rx.recv_timeout(LIMIT);
    if status.is_err() {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    let status = status.expect("tubes stops on SIGTERM").expect("wait");
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_missing_or_bad_certificate_stops_the_start_with_the_file_named() {
    let dir = std::env::temp_dir().join(format!("tubes-cli-cert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "not PEM at all").expect("write");
    let missing = dir.join("missing.pem");
    for (cert, key, expected) in [
        (&missing, &missing, "missing.pem"),
        (&junk, &junk, "no PEM certificate in"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_tubes"))
            .args(["serve", "--host", "127.0.0.1", "--http-port", "0"])
            .args(["--enable-https", "--https-port", "0"])
            .arg("--crt-path")
            .arg(cert)
            .arg("--key-path")
            .arg(key)
            .output()
            .expect("run tubes");
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_tubes"))
        .args(["serve", "--enable-https"])
        .output()
        .expect("run tubes");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--crt-path"));
    let _ = std::fs::remove_dir_all(&dir);
}
