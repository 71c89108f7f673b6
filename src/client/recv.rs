//! `tubes recv`: receives under a code or from a path, checks and decrypts
//! on the fly, and writes a file, unpacks a folder, or streams to stdout.
//! A transfer that fails leaves no partial output behind.

use std::fs;
use std::io::{self, Read, Write};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use super::archive;
use super::code::{Code, Rendezvous};
use super::config::Connection;
use super::e2e::pake::{Cpace, Role, SHARE_LEN};
use super::e2e::seal::Opener;
use super::e2e::{self, E2eError, Header, Keys};
use super::http::{read_message, Relay, Response, Upload};
use super::meta::{safe_file_name, Kind, Meta, MAX_META};
use super::pipe::{pump, ChunkReader};
use super::progress::Feedback;
use super::ClientError;

/// What `tubes recv` was asked to do.
#[derive(Clone, Debug, Default)]
pub struct RecvOptions {
    /// A code (`4821-amber-lunar-velvet`), a path, or with `--path` the
    /// secret of an encrypted path transfer.
    pub target: Option<String>,
    pub path: Option<String>,
    /// Where to write: a file, a folder, or `-` for stdout.
    pub output: Option<PathBuf>,
    /// Number of receivers (`?n=`), as the sender said.
    pub receivers: Option<u32>,
    pub pass: Option<String>,
    /// Replace existing files.
    pub force: bool,
    pub quiet: bool,
}

/// How the incoming stream is protected.
enum Expect {
    Plain,
    Code(Keys),
    Passphrase(String),
}

/// Runs `tubes recv`.
pub async fn recv(conn: Connection, opts: RecvOptions) -> Result<(), ClientError> {
    let feedback = Feedback::new(opts.quiet);
    let relay = Relay::new(conn)?;
    let n = opts.receivers.filter(|&n| n != 1);
    let (data_path, secret) = match (&opts.path, &opts.target) {
        (Some(path), secret) => (path.clone(), secret.clone()),
        (None, Some(t)) if Code::looks_like_code(t) => {
            let code = Code::parse(t)?;
            let path = code.data_path().unwrap_or_default();
            (path, Some(code.as_str().to_owned()))
        }
        (None, Some(path)) => (path.clone(), None),
        (None, None) => {
            return Err(ClientError::Usage(
                "give the code the sender printed (or --path PATH)".into(),
            ))
        }
    };
    let expect = match (secret, &opts.pass) {
        (Some(_), Some(_)) => {
            return Err(ClientError::Usage(
                "give either a code or --pass, not both".into(),
            ))
        }
        (Some(secret), None) => {
            if n.is_some() {
                return Err(ClientError::Usage(
                    "a code joins exactly two sides: -n needs --pass".into(),
                ));
            }
            let code = Code::parse(&secret)?;
            Expect::Code(exchange(&relay, &code, &Rendezvous::new(&data_path), &feedback).await?)
        }
        (None, Some(pass)) => Expect::Passphrase(pass.clone()),
        (None, None) => Expect::Plain,
    };
    let waiting = feedback.waiting("waiting for the sender...");
    let response = relay.receive(&data_path, n).await;
    waiting.finish_and_clear();
    let response = response?;
    let (meta, reader_parts) = open(response, expect).await?;
    let transfer = feedback.transfer("received", meta.size);
    let (rx, opener, leftover) = reader_parts;
    let reader = ChunkReader::new(rx, opener, leftover, transfer.bar.clone());
    let output = opts.output.clone();
    let force = opts.force;
    let meta_for_sink = meta.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        write_out(reader, &meta_for_sink, output.as_deref(), force)
    })
    .await
    .map_err(|e| ClientError::local("the writer failed", e))?;
    match outcome {
        Ok(saved) => {
            transfer.done();
            if let Some(saved) = saved {
                feedback.say(format!("saved {saved}"));
            }
            Ok(())
        }
        Err(e) => {
            transfer.abandon();
            Err(e)
        }
    }
}

/// The receiving side of the code exchange: returns the keys once this
/// side's share and confirmation are on their way.
async fn exchange(
    relay: &Relay,
    code: &Code,
    rendezvous: &Rendezvous,
    feedback: &Feedback,
) -> Result<Keys, ClientError> {
    let waiting = feedback.waiting("waiting for the sender...");
    let offer = relay.receive(&rendezvous.sender_share, None).await;
    waiting.finish_and_clear();
    let offer = read_message(offer?, SHARE_LEN).await?;
    let cpace = Cpace::start(code.as_str(), &rendezvous.data, Role::Receiver)?;
    let mut reply = cpace.share().to_vec();
    let keys = Keys::derive(&cpace.finish(&offer)?);
    reply.extend_from_slice(&keys.confirm_receiver);
    let upload = Upload {
        length: Some(reply.len() as u64),
        ..Upload::default()
    };
    let log = relay
        .send(&rendezvous.receiver_share, reply.into(), upload)
        .await?;
    tokio::spawn(log.finish());
    Ok(keys)
}

type ReaderParts = (
    mpsc::Receiver<Result<Bytes, ClientError>>,
    Option<Opener>,
    Bytes,
);

/// Reads the clear header and the metadata record (when sealed) and
/// returns what the blocking reader needs to go on.
async fn open(response: Response, expect: Expect) -> Result<(Meta, ReaderParts), ClientError> {
    let headers = response.headers().clone();
    let mut rx = pump(response.bytes_stream());
    let mut buf = BytesMut::new();
    let (keys, passphrase) = match expect {
        Expect::Plain => return Ok((Meta::from_headers(&headers), (rx, None, Bytes::new()))),
        Expect::Code(keys) => match read_header(&mut rx, &mut buf).await? {
            Header::Code { confirm } if e2e::tags_equal(&confirm, &keys.confirm_sender) => {
                (keys, false)
            }
            Header::Code { .. } => return Err(E2eError::WrongCode.into()),
            Header::Passphrase { .. } => {
                return Err(ClientError::Usage(
                    "this transfer is protected by a passphrase: use --pass".into(),
                ))
            }
        },
        Expect::Passphrase(pass) => match read_header(&mut rx, &mut buf).await? {
            Header::Passphrase { salt, iterations } => {
                let iterations = NonZeroU32::new(iterations)
                    .filter(|i| i.get() <= e2e::PBKDF2_MAX_ITERATIONS)
                    .ok_or(E2eError::BadHeader)?;
                let keys = tokio::task::spawn_blocking(move || {
                    Keys::from_passphrase(&pass, &salt, iterations)
                })
                .await
                .map_err(|e| ClientError::local("key derivation failed", e))?;
                (keys, true)
            }
            Header::Code { .. } => {
                return Err(ClientError::Usage(
                    "this transfer is protected by a code, not a passphrase".into(),
                ))
            }
        },
    };
    let mut opener = Opener::new(&keys.data);
    opener.push(&buf);
    let record = loop {
        match opener.next_record() {
            Ok(Some(record)) => break record,
            Ok(None) => {}
            Err(E2eError::Tampered) if passphrase => return Err(E2eError::WrongPassphrase.into()),
            Err(e) => return Err(e.into()),
        }
        match next_chunk(&mut rx).await? {
            Some(chunk) => opener.push(&chunk),
            None => return Err(E2eError::Truncated.into()),
        }
    };
    if opener.finished() || record.len() > MAX_META {
        return Err(E2eError::BadHeader.into());
    }
    let meta: Meta = serde_json::from_slice(&record).map_err(|_| E2eError::BadHeader)?;
    Ok((meta, (rx, Some(opener), Bytes::new())))
}

async fn next_chunk(
    rx: &mut mpsc::Receiver<Result<Bytes, ClientError>>,
) -> Result<Option<Bytes>, ClientError> {
    rx.recv().await.transpose()
}

/// Reads the clear header into `buf` and removes it from there.
async fn read_header(
    rx: &mut mpsc::Receiver<Result<Bytes, ClientError>>,
    buf: &mut BytesMut,
) -> Result<Header, ClientError> {
    loop {
        if let Some((header, used)) = Header::parse(buf)? {
            let _ = buf.split_to(used);
            return Ok(header);
        }
        match next_chunk(rx).await? {
            Some(chunk) => buf.extend_from_slice(&chunk),
            None if buf.is_empty() => {
                return Err(ClientError::CutShort("the sender sent nothing".into()))
            }
            None => return Err(E2eError::BadHeader.into()),
        }
    }
}

/// Writes what arrives where it belongs; on failure, reports the root
/// cause (a cut or tampered stream) rather than the I/O error it caused.
fn write_out(
    mut reader: ChunkReader,
    meta: &Meta,
    output: Option<&Path>,
    force: bool,
) -> Result<Option<String>, ClientError> {
    sink(&mut reader, meta, output, force).map_err(|e| reader.take_error().unwrap_or(e))
}

fn sink(
    reader: &mut ChunkReader,
    meta: &Meta,
    output: Option<&Path>,
    force: bool,
) -> Result<Option<String>, ClientError> {
    let to_stdout = output == Some(Path::new("-")) || output.is_none() && meta.kind == Kind::Stream;
    if to_stdout {
        let mut out = raw_stdout().map_err(|e| ClientError::local("cannot write to stdout", e))?;
        copy_all(reader, &mut out).map_err(|e| ClientError::local("cannot write to stdout", e))?;
        return Ok(None);
    }
    if meta.kind == Kind::Tar {
        let dir = output.unwrap_or(Path::new("."));
        let names = archive::unpack(reader, dir, force)?;
        return Ok(Some(format!("{} in {}", names.join(", "), dir.display())));
    }
    let name = || {
        meta.name
            .as_deref()
            .and_then(safe_file_name)
            .ok_or_else(|| {
                ClientError::Local(format!(
                    "the sender's file name {:?} cannot be used here: give -o FILE",
                    meta.name.as_deref().unwrap_or("")
                ))
            })
    };
    let target = match output {
        Some(p) if p.is_dir() || p.as_os_str().to_string_lossy().ends_with('/') => {
            fs::create_dir_all(p)
                .map_err(|e| ClientError::local(format!("cannot create {}", p.display()), e))?;
            p.join(name()?)
        }
        Some(p) => p.to_path_buf(),
        None => PathBuf::from(name()?),
    };
    // `-o FILE` names the file to write, as with curl; a name chosen from
    // the sender's is never written over without --force.
    let explicit_file = output.is_some_and(|p| p == target);
    if !explicit_file && !force && fs::symlink_metadata(&target).is_ok() {
        return Err(ClientError::Local(format!(
            "{} already exists (use -o to choose another name, or --force)",
            target.display()
        )));
    }
    write_file(reader, &target, meta)?;
    Ok(Some(target.display().to_string()))
}

/// Writes to a clearly named partial file beside `target`, renamed into
/// place only when everything arrived; removed on failure.
fn write_file(reader: &mut ChunkReader, target: &Path, meta: &Meta) -> Result<(), ClientError> {
    // Not a regular file (`/dev/null`, a FIFO, a terminal): write into it;
    // a partial file renamed over it would replace the device itself.
    if fs::metadata(target).is_ok_and(|m| !m.is_file() && !m.is_dir()) {
        let mut out = fs::OpenOptions::new()
            .write(true)
            .open(target)
            .map_err(|e| ClientError::local(format!("cannot open {}", target.display()), e))?;
        copy_all(reader, &mut out)
            .map_err(|e| ClientError::local(format!("cannot write {}", target.display()), e))?;
        return Ok(());
    }
    // A symlink to a file: replace the file it points to, not the link.
    let resolved;
    let target = match fs::symlink_metadata(target) {
        Ok(m) if m.file_type().is_symlink() => {
            resolved = fs::canonicalize(target).map_err(|e| {
                ClientError::local(format!("cannot follow {}", target.display()), e)
            })?;
            resolved.as_path()
        }
        _ => target,
    };
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let partial = archive::partial_path(dir);
    let result = (|| {
        let mut file = fs::File::create(&partial)
            .map_err(|e| ClientError::local(format!("cannot create {}", partial.display()), e))?;
        copy_all(reader, &mut file)
            .map_err(|e| ClientError::local(format!("cannot write {}", target.display()), e))?;
        apply_attributes(&file, meta);
        drop(file);
        fs::rename(&partial, target)
            .map_err(|e| ClientError::local(format!("cannot write {}", target.display()), e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&partial);
    }
    result
}

fn apply_attributes(file: &fs::File, meta: &Meta) {
    #[cfg(unix)]
    if let Some(mode) = meta.mode {
        use std::os::unix::fs::PermissionsExt;
        let _ = file.set_permissions(fs::Permissions::from_mode(mode & 0o777));
    }
    if let Some(t) = meta.mtime {
        let _ = file
            .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.max(0) as u64));
    }
}

/// Standard output without the standard library's line buffering (which
/// splits every large write at its last newline): a handle on the same
/// file descriptor.
#[cfg(unix)]
fn raw_stdout() -> io::Result<fs::File> {
    use std::os::fd::AsFd;
    Ok(fs::File::from(io::stdout().as_fd().try_clone_to_owned()?))
}

#[cfg(not(unix))]
fn raw_stdout() -> io::Result<io::StdoutLock<'static>> {
    Ok(io::stdout().lock())
}

/// Copies in large pieces (io::copy's 8 KiB would mean many small writes).
fn copy_all(reader: &mut impl Read, out: &mut impl Write) -> io::Result<u64> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        out.write_all(&buf[..n])?;
        total += n as u64;
    }
    out.flush()?;
    Ok(total)
}
