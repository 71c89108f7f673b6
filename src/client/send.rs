//! `tubes send`: a file, a folder, several of them, or stdin, to a path or
//! under a fresh code, encrypted end to end unless sent plainly to a path.

use std::fs;
use std::io::{self, IsTerminal};
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use rand::RngCore;

use super::archive;
use super::code::{Code, Rendezvous};
use super::config::Connection;
use super::e2e::pake::{Cpace, Role, SHARE_LEN};
use super::e2e::seal::Sealer;
use super::e2e::{self, E2eError, Header, Keys};
use super::http::{read_message, Body, Relay, Upload};
use super::meta::{Kind, Meta};
use super::pipe::ChunkWriter;
use super::progress::{always, Feedback};
use super::ClientError;

/// How many fresh codes to try when a nameplate is taken on the relay.
const CODE_ATTEMPTS: usize = 5;

/// What `tubes send` was asked to do.
#[derive(Clone, Debug, Default)]
pub struct SendOptions {
    /// Files and folders; empty or `-` for stdin.
    pub inputs: Vec<PathBuf>,
    /// Send to this path instead of under a code.
    pub path: Option<String>,
    /// Number of receivers (`?n=`).
    pub receivers: Option<u32>,
    /// Encrypt a `--path` transfer with a code exchange.
    pub encrypt: bool,
    /// Encrypt with a passphrase (works with several receivers).
    pub pass: Option<String>,
    pub quiet: bool,
}

/// Where the bytes come from.
enum Source {
    Stdin,
    File(PathBuf),
    Tar(Vec<PathBuf>),
}

fn describe(inputs: &[PathBuf]) -> Result<(Source, Meta), ClientError> {
    if inputs.is_empty() && io::stdin().is_terminal() {
        return Err(ClientError::Usage(
            "nothing to send: name files or folders, or pipe data in (`-` reads a terminal)".into(),
        ));
    }
    let stdin = inputs.is_empty() || inputs.len() == 1 && inputs[0].as_os_str() == "-";
    if stdin {
        return Ok((Source::Stdin, Meta::stream()));
    }
    for p in inputs {
        fs::symlink_metadata(p)
            .map_err(|e| ClientError::local(format!("cannot read {}", p.display()), e))?;
    }
    let first = &inputs[0];
    let meta = fs::metadata(first)
        .map_err(|e| ClientError::local(format!("cannot read {}", first.display()), e))?;
    let name = first
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .or_else(|| {
            first
                .canonicalize()
                .ok()
                .and_then(|c| c.file_name().map(|n| n.to_string_lossy().into_owned()))
        });
    if inputs.len() == 1 && meta.is_file() {
        #[cfg(unix)]
        let mode = {
            use std::os::unix::fs::PermissionsExt;
            Some(meta.permissions().mode() & 0o7777)
        };
        #[cfg(not(unix))]
        let mode = None;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs() as i64);
        let meta = Meta {
            kind: Kind::File,
            name,
            size: Some(meta.len()),
            mode,
            mtime,
        };
        return Ok((Source::File(first.clone()), meta));
    }
    let meta = Meta {
        kind: Kind::Tar,
        name: if inputs.len() == 1 { name } else { None },
        size: Some(archive::payload_size(inputs)),
        mode: None,
        mtime: None,
    };
    Ok((Source::Tar(inputs.to_vec()), meta))
}

impl Source {
    fn write_to(&self, w: &mut ChunkWriter) -> io::Result<()> {
        match self {
            Source::Stdin => w.fill_from(&mut io::stdin().lock()).map(drop),
            Source::File(p) => w.fill_from(&mut fs::File::open(p)?).map(drop),
            Source::Tar(paths) => archive::pack(paths, w),
        }
    }
}

/// How the data stream is protected.
enum Protection {
    Plain,
    Sealed { header: Header, keys: Keys },
}

/// The command for the other side, printed for the user to pass on.
fn recv_command(conn: &Connection, args: &str) -> String {
    let mut cmd = format!(
        "tubes recv {args} --server {}",
        conn.server.as_str().trim_end_matches('/')
    );
    if conn.insecure {
        cmd.push_str(" -k");
    }
    cmd
}

/// Runs `tubes send`.
pub async fn send(conn: Connection, opts: SendOptions) -> Result<(), ClientError> {
    let feedback = Feedback::new(opts.quiet);
    let (source, meta) = describe(&opts.inputs)?;
    let relay = Relay::new(conn.clone())?;
    let n = opts.receivers.filter(|&n| n != 1);
    if n.is_some() && opts.pass.is_none() && (opts.path.is_none() || opts.encrypt) {
        return Err(ClientError::Usage(
            "a code joins exactly two sides: for several receivers use --path with --pass (or no encryption)".into(),
        ));
    }
    let (data_path, protection) = match (&opts.path, &opts.pass) {
        (path, Some(pass)) => {
            let path = match path {
                Some(p) => p.clone(),
                None => Code::generate_secret().as_str().to_owned(),
            };
            let mut salt = [0u8; e2e::SALT_LEN];
            rand::thread_rng().fill_bytes(&mut salt);
            let iterations = e2e::PBKDF2_ITERATIONS;
            let pass = pass.clone();
            let keys = tokio::task::spawn_blocking(move || {
                Keys::from_passphrase(
                    &pass,
                    &salt,
                    iterations.try_into().unwrap_or(std::num::NonZeroU32::MIN),
                )
            })
            .await
            .map_err(|e| ClientError::local("key derivation failed", e))?;
            let extra = n.map(|n| format!(" -n {n}")).unwrap_or_default();
            let line = format!(
                "On the other side, run:\n  {}",
                recv_command(&conn, &format!("--path {path} --pass PASSPHRASE{extra}"))
            );
            // A generated path must reach the user even with --quiet.
            if opts.path.is_none() {
                always(line);
            } else {
                feedback.say(line);
            }
            (
                path,
                Protection::Sealed {
                    header: Header::Passphrase { salt, iterations },
                    keys,
                },
            )
        }
        (Some(path), None) if !opts.encrypt => {
            let extra = n.map(|n| format!(" -n {n}")).unwrap_or_default();
            feedback.say(format!(
                "On the other side, run:\n  {}\nor:\n  curl '{}' > FILE",
                recv_command(&conn, &format!("--path {path}{extra}")),
                relay.url(path, n)
            ));
            (path.clone(), Protection::Plain)
        }
        (path, None) => {
            let (code, rendezvous) = match path {
                Some(p) => (Code::generate_secret(), Rendezvous::new(p)),
                None => (Code::generate(), Rendezvous::new("")),
            };
            let (code, rendezvous, cpace) = offer(&relay, code, rendezvous, path.is_none()).await?;
            let args = match path {
                Some(p) => format!("--path {p} {}", code.as_str()),
                None => code.as_str().to_owned(),
            };
            always(format!(
                "Code: {}\nOn the other side, run:\n  {}",
                code.as_str(),
                recv_command(&conn, &args)
            ));
            let waiting = feedback.waiting("waiting for the other side...");
            let reply = relay.receive(&rendezvous.receiver_share, None).await;
            waiting.finish_and_clear();
            let reply = read_message(reply?, SHARE_LEN + e2e::TAG).await?;
            let keys = cpace
                .finish(&reply[..SHARE_LEN])
                .map(|isk| Keys::derive(&isk));
            let confirmed = keys
                .as_ref()
                .is_ok_and(|k| e2e::tags_equal(&reply[SHARE_LEN..], &k.confirm_receiver));
            if !confirmed {
                // Tell the other side at once: a header with no valid tag.
                let refusal = Header::Code {
                    confirm: [0; e2e::TAG],
                }
                .encode();
                if let Ok(log) = relay
                    .send(
                        &rendezvous.data,
                        refusal.clone().into(),
                        Upload::default().with_len(refusal.len() as u64),
                    )
                    .await
                {
                    let _ = log.finish().await;
                }
                return Err(match keys {
                    Err(e) => e.into(),
                    Ok(_) => E2eError::WrongCode.into(),
                });
            }
            let keys = keys?;
            (
                rendezvous.data,
                Protection::Sealed {
                    header: Header::Code {
                        confirm: keys.confirm_sender,
                    },
                    keys,
                },
            )
        }
    };
    stream(&relay, &data_path, n, source, meta, protection, &feedback).await
}

impl Upload {
    fn with_len(mut self, len: u64) -> Self {
        self.length = Some(len);
        self
    }
}

/// Posts this side's key share under a fresh code, trying another code if
/// the nameplate is taken. Returns the code in use and the exchange state.
async fn offer(
    relay: &Relay,
    mut code: Code,
    mut rendezvous: Rendezvous,
    fresh_codes: bool,
) -> Result<(Code, Rendezvous, Cpace), ClientError> {
    for attempt in 1..=CODE_ATTEMPTS {
        if let Some(path) = code.data_path() {
            rendezvous = Rendezvous::new(&path);
        }
        let cpace = Cpace::start(code.as_str(), &rendezvous.data, Role::Sender)?;
        let body = cpace.share().to_vec();
        let upload = Upload::default().with_len(SHARE_LEN as u64);
        match relay
            .send(&rendezvous.sender_share, body.into(), upload)
            .await
        {
            Ok(log) => {
                // The log ends when the other side has the share; keep
                // reading it so the relay does not see this side leave.
                tokio::spawn(log.finish());
                return Ok((code, rendezvous, cpace));
            }
            Err(ClientError::Refused { status: 400, .. })
                if fresh_codes && attempt < CODE_ATTEMPTS =>
            {
                code = Code::generate();
            }
            Err(e) => return Err(e),
        }
    }
    unreachable!("the last attempt returns")
}

/// Streams the data (sealed or plain) and waits for the relay to confirm
/// that every receiver got it.
async fn stream(
    relay: &Relay,
    path: &str,
    n: Option<u32>,
    source: Source,
    meta: Meta,
    protection: Protection,
    feedback: &Feedback,
) -> Result<(), ClientError> {
    let transfer = feedback.transfer("sent", meta.size);
    let (upload, sealer, prelude) = match protection {
        Protection::Plain => (
            Upload {
                n,
                length: match meta.kind {
                    Kind::File => meta.size,
                    _ => None,
                },
                content_type: meta.content_type(),
                disposition: meta.content_disposition(),
            },
            None,
            None,
        ),
        Protection::Sealed { header, keys } => {
            let json = serde_json::to_vec(&meta).map_err(|e| ClientError::local("metadata", e))?;
            (
                Upload {
                    n,
                    content_type: Some("application/octet-stream".into()),
                    ..Upload::default()
                },
                Some(Sealer::new(&keys.data)),
                Some((header.encode(), json)),
            )
        }
    };
    let (mut writer, body) = ChunkWriter::new(sealer, transfer.bar.clone());
    let producer = tokio::task::spawn_blocking(move || {
        let result = (|| {
            if let Some((header, json)) = &prelude {
                writer.send_raw(header)?;
                writer.send_record(json)?;
            }
            source.write_to(&mut writer)
        })();
        match result {
            Ok(()) => writer.finish(),
            Err(e) => {
                writer.fail(&e);
                Err(e)
            }
        }
    });
    let result = async {
        let log = relay.send(path, Body::stream(body), upload).await?;
        log.finish().await
    }
    .await;
    if let Err(e) = result {
        transfer.abandon();
        // A local read error is the root cause of a broken upload; the
        // reader stops at once when the request is gone.
        if let Ok(Ok(Err(local))) = tokio::time::timeout(Duration::from_secs(1), producer).await {
            {
                if local.kind() != io::ErrorKind::BrokenPipe {
                    return Err(ClientError::local("cannot read the input", local));
                }
            }
        }
        return Err(e);
    }
    match producer.await {
        Ok(Ok(())) => {
            transfer.done();
            Ok(())
        }
        Ok(Err(e)) => Err(ClientError::local("cannot read the input", e)),
        Err(e) => Err(ClientError::local("the reader failed", e)),
    }
}
