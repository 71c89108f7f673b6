//! Child processes for the tests that run the real `tubes` binary and
//! real tools beside it (`tests/tunnel.rs`, `tests/expose.rs`): temp
//! folders, tools that must be installed, clean environments, process
//! groups killed when dropped, and stderr collected to wait on.
//!
//! Each test file includes it with `mod children;`; not every file uses
//! every item.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Bound for anything waited on here.
const LIMIT: Duration = Duration::from_secs(30);

/// A temporary folder with a random name, removed when dropped. Holds an
/// empty config folder for the children (`XDG_CONFIG_HOME`).
pub struct Tmp(PathBuf);

impl Tmp {
    pub fn new(tag: &str) -> Tmp {
        let dir =
            std::env::temp_dir().join(format!("tubes-test-{tag}-{:016x}", rand::random::<u64>()));
        std::fs::create_dir(&dir).expect("create a temp dir");
        std::fs::create_dir(dir.join("config")).expect("create the config folder");
        Tmp(dir)
    }

    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.0.join(rel)
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The path of `program` (a path, or a name looked up in `PATH`); a
/// missing tool fails the test with the Debian package that has it.
pub fn need(program: &str, package: &str) -> PathBuf {
    let found = if program.contains('/') {
        Some(PathBuf::from(program)).filter(|p| p.is_file())
    } else {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(program))
                .find(|p| p.is_file())
        })
    };
    found.unwrap_or_else(|| {
        panic!(
            "`{program}` is missing: install the Debian package `{package}` \
             (scripts/test.sh installs it)"
        )
    })
}

/// A command with a clean environment: no relay, config file, log filter
/// or proxy from the user; stdin and stdout empty, stderr captured.
pub fn command(program: impl AsRef<std::ffi::OsStr>, tmp: &Tmp) -> Command {
    let mut cmd = Command::new(program);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TUBES_") {
            cmd.env_remove(&name);
        }
    }
    for var in [
        "RUST_LOG",
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ] {
        cmd.env_remove(var);
    }
    // `TEST_CHILD_LOG=tubes=debug` puts the children's debug logs into
    // the failure messages.
    if let Some(filter) = std::env::var_os("TEST_CHILD_LOG") {
        cmd.env("RUST_LOG", filter);
    }
    cmd.env("NO_COLOR", "1")
        .env("XDG_CONFIG_HOME", tmp.join("config"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// `tubes ARGS...`.
pub fn tubes(tmp: &Tmp, args: &[&str]) -> Command {
    let mut cmd = command(env!("CARGO_BIN_EXE_tubes"), tmp);
    cmd.args(args);
    cmd
}

/// Kills a process group when dropped: a child started as the leader of
/// its own group and everything it started (the curls of a pipeline,
/// socat's EXEC children, ssh's ProxyCommand), none left behind.
pub struct Group(u32);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-s", "KILL", "--", &format!("-{}", self.0)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Starts `cmd` as the leader of a new process group.
pub fn spawn_group(cmd: &mut Command, name: &str) -> (Child, Group) {
    cmd.process_group(0).kill_on_drop(true);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    let group = Group(child.id().expect("a running child"));
    (child, group)
}

/// A task aborted when dropped.
pub struct Task(pub JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Default)]
pub struct Log {
    text: String,
    /// Stderr reached its end: the process (and its group) is gone.
    closed: bool,
}

/// A long-running child (a tunnel side, a relay, a pipeline) whose stderr
/// is collected as it comes, to wait for a line and to show on failure.
pub struct Proc {
    name: String,
    child: Child,
    log: watch::Receiver<Log>,
    _group: Group,
}

impl Proc {
    pub fn start(mut cmd: Command, name: &str) -> Proc {
        cmd.stderr(Stdio::piped());
        let (mut child, group) = spawn_group(&mut cmd, name);
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, log) = watch::channel(Log::default());
        tokio::spawn(async move {
            let mut stderr = BufReader::new(stderr);
            let mut line = Vec::new();
            // Ends at the end of stderr: when the process group is gone.
            while matches!(stderr.read_until(b'\n', &mut line).await, Ok(n) if n > 0) {
                tx.send_modify(|log| log.text.push_str(&String::from_utf8_lossy(&line)));
                line.clear();
            }
            tx.send_modify(|log| log.closed = true);
        });
        Proc {
            name: name.to_owned(),
            child,
            log,
            _group: group,
        }
    }

    pub fn log(&self) -> String {
        format!("--- {} stderr:\n{}", self.name, self.log.borrow().text)
    }

    /// Waits for a line of stderr that `pick` accepts; `None` if stderr
    /// ended first (the process stopped). Fails the test after [`LIMIT`].
    pub async fn line<T>(&self, what: &str, pick: impl Fn(&str) -> Option<T>) -> Option<T> {
        let mut log = self.log.clone();
        let found = |log: &Log| log.text.lines().find_map(&pick);
        let waited = tokio::time::timeout(
            LIMIT,
            log.wait_for(|log| log.closed || found(log).is_some()),
        )
        .await;
        match waited {
            Ok(Ok(log)) => found(&log),
            Ok(Err(_)) => found(&self.log.borrow()),
            Err(_) => panic!("no {what} within {LIMIT:?}\n{}", self.log()),
        }
    }

    /// The first line of stderr that `pick` accepts; fails the test if
    /// the process stops first.
    pub async fn expect_line<T>(&self, what: &str, pick: impl Fn(&str) -> Option<T>) -> T {
        self.line(what, pick)
            .await
            .unwrap_or_else(|| panic!("stopped before printing {what}\n{}", self.log()))
    }

    /// The address of the `Listening on 127.0.0.1:PORT.` line.
    pub async fn listening(&self) -> SocketAddr {
        let addr = self
            .line("`Listening on` line", |line| {
                line.strip_prefix("Listening on ")?
                    .strip_suffix('.')?
                    .parse()
                    .ok()
            })
            .await;
        addr.unwrap_or_else(|| panic!("stopped before listening\n{}", self.log()))
    }

    /// The first line of stderr that contains `needle`, trimmed.
    pub async fn line_with(&self, needle: &str) -> String {
        self.line(&format!("line with {needle:?}"), |line| {
            line.contains(needle).then(|| line.trim().to_owned())
        })
        .await
        .unwrap_or_else(|| panic!("stopped before printing {needle:?}\n{}", self.log()))
    }

    /// Waits for the process to end on its own.
    pub async fn exit(&mut self, limit: Duration) -> ExitStatus {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.expect("wait for a child"),
            Err(_) => panic!("{} did not end within {limit:?}\n{}", self.name, self.log()),
        }
    }

    /// Kills the process (SIGKILL) and waits until it is gone.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        self.exit(LIMIT).await;
    }
}

/// The stderr of several processes, for a failure message.
pub fn logs(procs: &[&Proc]) -> String {
    procs.iter().map(|p| p.log()).collect::<Vec<_>>().join("\n")
}

/// Runs a command to its end in a process group of its own, stdout and
/// stderr captured; `Err` if it is still running after `limit` (it is
/// then killed, with everything it started).
pub async fn run(mut cmd: Command, limit: Duration) -> Result<Output, String> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let name = format!("{:?}", cmd.as_std());
    let (child, _group) = spawn_group(&mut cmd, &name);
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(out) => out.map_err(|e| format!("waiting for it: {e}")),
        Err(_) => Err(format!("still running after {limit:?}")),
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Quotes a word for `sh`.
pub fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}
