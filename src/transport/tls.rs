//! TLS for the HTTPS listener (and, with ALPN `h3`, for QUIC): the
//! certificate in use, loaded from PEM files or made at start-up for
//! localhost, swapped without a restart when its files change.
//!
//! Every handshake asks [`Certs`] for the current certificate, so a swap
//! takes effect for new connections at once while live ones keep theirs.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

/// ALPN protocol names.
pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP11: &[u8] = b"http/1.1";
pub const ALPN_H3: &[u8] = b"h3";

/// How often certificate files are checked for a change.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// A certificate or key that cannot be used, with the file it came from.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} file {path}: {error}")]
    Read {
        what: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("no PEM certificate in {0}")]
    NoCertificate(PathBuf),
    #[error("no PEM private key (PKCS#8, PKCS#1 or SEC1) in {0}")]
    NoKey(PathBuf),
    #[error("the private key in {path} cannot be used: {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error("cannot make a self-signed certificate: {0}")]
    SelfSigned(String),
}

/// Where the certificate comes from.
#[derive(Debug, Clone)]
pub enum Source {
    Files { cert: PathBuf, key: PathBuf },
    SelfSigned,
}

/// The certificate in use, shared by every listener that does TLS.
pub struct Certs {
    current: RwLock<Arc<CertifiedKey>>,
    source: Source,
    /// Modification times of the files when last loaded.
    stamps: RwLock<Option<(SystemTime, SystemTime)>>,
}

impl fmt::Debug for Certs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certs")
            .field("source", &self.source)
            .finish()
    }
}

impl Certs {
    /// Loads the certificate, failing with a message that names the file.
    pub fn load(source: Source) -> Result<Arc<Certs>, TlsError> {
        let (key, stamps) = match &source {
            Source::Files { cert, key } => (load_files(cert, key)?, stamps(cert, key)),
            Source::SelfSigned => (self_signed()?, None),
        };
        Ok(Arc::new(Certs {
            current: RwLock::new(Arc::new(key)),
            source,
            stamps: RwLock::new(stamps),
        }))
    }

    /// The SHA-256 fingerprint of the certificate in use, as
    /// colon-separated hex (the form browsers show).
    pub fn fingerprint(&self) -> String {
        let current = self.current();
        let Some(cert) = current.cert.first() else {
            return String::new();
        };
        Sha256::digest(cert.as_ref())
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    /// The certificate chain in use (for clients in tests to trust).
    pub fn chain(&self) -> Vec<rustls::pki_types::CertificateDer<'static>> {
        self.current().cert.clone()
    }

    fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Reloads the files if they changed since the last load. A pair that
    /// does not load (say, the certificate is written before the key) is
    /// skipped and tried again next time; the old one stays in use.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let Source::Files { cert, key } = &self.source else {
            return Ok(false);
        };
        let now = stamps(cert, key);
        if now.is_none() || now == *self.stamps.read().unwrap_or_else(|e| e.into_inner()) {
            return Ok(false);
        }
        let loaded = load_files(cert, key)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(loaded);
        *self.stamps.write().unwrap_or_else(|e| e.into_inner()) = now;
        Ok(true)
    }

    /// Checks the files every [`RELOAD_INTERVAL`] until dropped; for a
    /// self-signed certificate there is nothing to watch.
    pub async fn watch(self: Arc<Self>) {
        if matches!(self.source, Source::SelfSigned) {
            return;
        }
        let mut tick = tokio::time::interval(RELOAD_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self.reload_if_changed() {
                Ok(true) => {
                    tracing::info!(fingerprint = %self.fingerprint(), "certificate reloaded")
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(%error, "certificate files changed but do not load; keeping the old one")
                }
            }
        }
    }

    /// A rustls server configuration that uses this certificate and offers
    /// the given ALPN protocols, in order of preference.
    pub fn server_config(self: &Arc<Self>, alpn: &[&[u8]]) -> rustls::ServerConfig {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map(|b| b.with_no_client_auth())
        .unwrap_or_else(|_| {
            // The ring provider supports the default versions; this branch
            // only keeps a library upgrade from turning into a panic.
            rustls::ServerConfig::builder().with_no_client_auth()
        })
        .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn stamps(cert: &Path, key: &Path) -> Option<(SystemTime, SystemTime)> {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((modified(cert)?, modified(key)?))
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        what,
        path: path.to_path_buf(),
        error,
    })
}

fn load_files(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_pem = read("certificate", cert_path)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert_path.to_path_buf()));
    }
    let key_pem = read("key", key_path)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|_| TlsError::NoKey(key_path.to_path_buf()))?;
    certified(chain, key).map_err(|reason| TlsError::BadKey {
        path: key_path.to_path_buf(),
        reason,
    })
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<CertifiedKey, String> {
    let signer = any_supported_type(&key).map_err(|e| e.to_string())?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => "it does not match the certificate".to_string(),
        other => other.to_string(),
    })?;
    Ok(certified)
}

/// A certificate for `localhost`, `127.0.0.1` and `::1`, made now.
fn self_signed() -> Result<CertifiedKey, TlsError> {
    let names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let made = rcgen::generate_simple_self_signed(names)
        .map_err(|e| TlsError::SelfSigned(e.to_string()))?;
    let key = PrivateKeyDer::try_from(made.signing_key.serialize_der())
        .map_err(|e| TlsError::SelfSigned(e.to_string()))?;
    certified(vec![made.cert.der().clone()], key).map_err(TlsError::SelfSigned)
}

/// Writes a self-signed certificate and key for localhost as PEM files:
/// for tests and for trying TLS out.
pub fn write_self_signed(cert: &Path, key: &Path) -> Result<(), TlsError> {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
        .map_err(|e| TlsError::SelfSigned(e.to_string()))?;
    let write = |what, path: &Path, text: String| {
        std::fs::write(path, text).map_err(|error| TlsError::Read {
            what,
            path: path.to_path_buf(),
            error,
        })
    };
    write("certificate", cert, made.cert.pem())?;
    write("key", key, made.signing_key.serialize_pem())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tubes-tls-{}-{name}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        dir
    }

    #[test]
    fn errors_name_the_file() {
        let dir = temp("errors");
        let missing = dir.join("missing.pem");
        let error = Certs::load(Source::Files {
            cert: missing.clone(),
            key: missing.clone(),
        })
        .expect_err("missing");
        assert!(error.to_string().contains("missing.pem"), "{error}");

        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate").expect("write");
        let error = Certs::load(Source::Files {
            cert: junk.clone(),
            key: junk.clone(),
        })
        .expect_err("junk");
        assert!(error.to_string().contains("no PEM certificate"), "{error}");

        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        write_self_signed(&cert, &key).expect("write pair");
        let error = Certs::load(Source::Files {
            cert: cert.clone(),
            key: cert.clone(),
        })
        .expect_err("cert as key");
        assert!(error.to_string().contains("no PEM private key"), "{error}");

        let (other_cert, other_key) = (dir.join("other-cert.pem"), dir.join("other-key.pem"));
        write_self_signed(&other_cert, &other_key).expect("write pair");
        let error = Certs::load(Source::Files {
            cert: cert.clone(),
            key: other_key,
        })
        .expect_err("mismatch");
        assert!(error.to_string().contains("does not match"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn files_are_reloaded_when_they_change() {
        let dir = temp("reload");
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        write_self_signed(&cert, &key).expect("write");
        let certs = Certs::load(Source::Files {
            cert: cert.clone(),
            key: key.clone(),
        })
        .expect("load");
        let before = certs.fingerprint();
        assert!(!certs.reload_if_changed().expect("unchanged"));
        // A new pair, with a later modification time.
        std::thread::sleep(Duration::from_millis(20));
        write_self_signed(&cert, &key).expect("rewrite");
        let later = SystemTime::now() + Duration::from_secs(5);
        for p in [&cert, &key] {
            let f = std::fs::File::options().write(true).open(p).expect("open");
            f.set_modified(later).expect("touch");
        }
        assert!(certs.reload_if_changed().expect("changed"));
        assert_ne!(certs.fingerprint(), before);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn self_signed_has_a_fingerprint() {
        let certs = Certs::load(Source::SelfSigned).expect("self-signed");
        let fp = certs.fingerprint();
        assert_eq!(fp.len(), 32 * 3 - 1, "{fp}");
    }
}
