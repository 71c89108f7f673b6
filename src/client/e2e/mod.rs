//! End-to-end encryption between `tubes send` and `tubes recv` (and the web
//! page, which implements the same format with WebCrypto): the relay only
//! ever sees ciphertext. The format is written down in
//! `docs/encryption.md`; this module is its reference implementation.
//!
//! - [`pake`]: CPace on ristretto255 turns a short code into a strong key.
//! - [`seal`]: AES-256-GCM records with counters and a final mark.
//!
//! A passphrase mode (PBKDF2) replaces the exchange for streams with several
//! receivers, where a two-party exchange cannot work.

pub mod pake;
pub mod seal;

use std::num::NonZeroU32;

use ring::{hkdf, pbkdf2};
use subtle::ConstantTimeEq;

/// The first bytes of every encrypted stream.
pub const MAGIC: &[u8; 8] = b"TUBES/1\n";
/// Bytes of a confirmation tag.
pub const TAG: usize = 32;
/// Bytes of the passphrase salt.
pub const SALT_LEN: usize = 16;
/// PBKDF2 iterations a sender uses for a passphrase.
pub const PBKDF2_ITERATIONS: u32 = 600_000;
/// The most PBKDF2 iterations a receiver accepts (a hostile header must
/// not make it spin for minutes).
pub const PBKDF2_MAX_ITERATIONS: u32 = 10_000_000;

/// What can go wrong in the encryption layer.
#[derive(Debug, thiserror::Error)]
pub enum E2eError {
    #[error("the system random number generator failed")]
    Random,
    #[error("the other side sent a malformed key-exchange message")]
    BadShare,
    #[error("wrong code: the other side used a different code (or someone else tried to join)")]
    WrongCode,
    #[error("wrong passphrase, or the stream was altered")]
    WrongPassphrase,
    #[error("the data was altered on the way (authentication failed)")]
    Tampered,
    #[error("the stream was cut short before its final record")]
    Truncated,
    #[error("not a Tubes encrypted stream (bad header)")]
    BadHeader,
    #[error("internal error: record sealed after the final one")]
    Misuse,
}

/// The keys both sides derive from one shared secret.
pub struct Keys {
    /// AES-256-GCM key of the data records.
    pub data: [u8; 32],
    /// Sent by the sender at the start of the stream.
    pub confirm_sender: [u8; TAG],
    /// Sent by the receiver with its key-exchange share.
    pub confirm_receiver: [u8; TAG],
}

struct Len32;

impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

fn expand(prk: &hkdf::Prk, info: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    // Expanding 32 bytes from SHA-256 never exceeds HKDF's limit.
    if let Ok(okm) = prk.expand(&[info], Len32) {
        let _ = okm.fill(&mut out);
    }
    out
}

impl Keys {
    /// HKDF-SHA256 over `secret` with the magic as salt.
    pub fn derive(secret: &[u8]) -> Self {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, MAGIC).extract(secret);
        Self {
            data: expand(&prk, b"tubes/1 data key"),
            confirm_sender: expand(&prk, b"tubes/1 sender confirms"),
            confirm_receiver: expand(&prk, b"tubes/1 receiver confirms"),
        }
    }

    /// Keys from a passphrase: PBKDF2-HMAC-SHA256, then [`Keys::derive`].
    pub fn from_passphrase(pass: &str, salt: &[u8], iterations: NonZeroU32) -> Self {
        let mut secret = [0u8; 32];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            iterations,
            salt,
            pass.as_bytes(),
            &mut secret,
        );
        Self::derive(&secret)
    }
}

/// Compares two tags in constant time.
pub fn tags_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// The clear header of an encrypted stream, after [`MAGIC`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Header {
    /// Mode 1: keys from a code exchange; carries the sender's
    /// confirmation tag (all zeros when the sender saw a wrong code).
    Code { confirm: [u8; TAG] },
    /// Mode 2: keys from a passphrase with this salt and iteration count.
    Passphrase {
        salt: [u8; SALT_LEN],
        iterations: u32,
    },
}

impl Header {
    /// The header's bytes, magic included.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        match self {
            Header::Code { confirm } => {
                out.push(1);
                out.extend_from_slice(confirm);
            }
            Header::Passphrase { salt, iterations } => {
                out.push(2);
                out.extend_from_slice(salt);
                out.extend_from_slice(&iterations.to_be_bytes());
            }
        }
        out
    }

    /// Parses a header from the start of `buf`: `Ok(None)` if more bytes
    /// are needed, else the header and how many bytes it took.
    pub fn parse(buf: &[u8]) -> Result<Option<(Header, usize)>, E2eError> {
        let head = MAGIC.len() + 1;
        if buf.len() < head {
            return if MAGIC.starts_with(&buf[..buf.len().min(MAGIC.len())]) {
                Ok(None)
            } else {
                Err(E2eError::BadHeader)
            };
        }
        if &buf[..MAGIC.len()] != MAGIC {
            return Err(E2eError::BadHeader);
        }
        let rest = &buf[head..];
        match buf[MAGIC.len()] {
            1 if rest.len() >= TAG => {
                let mut confirm = [0u8; TAG];
                confirm.copy_from_slice(&rest[..TAG]);
                Ok(Some((Header::Code { confirm }, head + TAG)))
            }
            2 if rest.len() >= SALT_LEN + 4 => {
                let mut salt = [0u8; SALT_LEN];
                salt.copy_from_slice(&rest[..SALT_LEN]);
                let it = &rest[SALT_LEN..SALT_LEN + 4];
                let iterations = u32::from_be_bytes([it[0], it[1], it[2], it[3]]);
                Ok(Some((
                    Header::Passphrase { salt, iterations },
                    head + SALT_LEN + 4,
                )))
            }
            1 | 2 => Ok(None),
            _ => Err(E2eError::BadHeader),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_need_whole_input() {
        for h in [
            Header::Code { confirm: [3; TAG] },
            Header::Passphrase {
                salt: [9; SALT_LEN],
                iterations: 1000,
            },
        ] {
            let bytes = h.encode();
            for cut in 0..bytes.len() {
                assert_eq!(Header::parse(&bytes[..cut]).unwrap(), None);
            }
            assert_eq!(
                Header::parse(&bytes).unwrap(),
                Some((h.clone(), bytes.len()))
            );
        }
    }

    #[test]
    fn foreign_bytes_are_not_a_header() {
        assert!(Header::parse(b"hello world, plain text").is_err());
        assert!(Header::parse(b"TUBES/1\n\x07").is_err());
        assert!(Header::parse(b"x").is_err());
    }

    #[test]
    fn key_schedule_separates_roles() {
        let k = Keys::derive(b"secret");
        assert_ne!(k.data, k.confirm_sender);
        assert_ne!(k.confirm_sender, k.confirm_receiver);
        let p = Keys::from_passphrase("pw", &[0; SALT_LEN], NonZeroU32::MIN);
        let q = Keys::from_passphrase("pw", &[1; SALT_LEN], NonZeroU32::MIN);
        assert_ne!(p.data, q.data);
    }
}

/// Fixed vectors, also printed in `docs/encryption.md`, so a second
/// implementation can check each step.
#[cfg(test)]
mod vectors {
    use super::seal::Sealer;
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn key_schedule_and_records() {
        let k = Keys::derive(b"tubes test secret");
        assert_eq!(
            hex(&k.data),
            "f624ccc467815ca531dc6b8ab989c8d249d15eedb3efcfe527a5567d23f4c70d"
        );
        assert_eq!(
            hex(&k.confirm_sender),
            "22b317a2222790cb02da6db28e6ff155bab550f2a0dac82bf9063d47780a6b69"
        );
        assert_eq!(
            hex(&k.confirm_receiver),
            "553380a07d9b42e9dfed113994e1b715b69a9ae3500e40f953e633761cda2bef"
        );
        let iterations = NonZeroU32::new(1000).unwrap();
        let p = Keys::from_passphrase("correct horse", &[0x11; SALT_LEN], iterations);
        assert_eq!(
            hex(&p.data),
            "e46ea057f7245a53df2ad343b5dc985244e7990433e0992690719f43cb302c0b"
        );
        let mut s = Sealer::new(&[7; 32]);
        assert_eq!(
            hex(&s.seal(b"hello", false).unwrap()),
            "0000001509bdc8de94089f9b5b053e9c291825d9c994051df6"
        );
        assert_eq!(
            hex(&s.seal(b"", true).unwrap()),
            "800000104932c4c75dbe41aa63bb36ba3b0ace0e"
        );
    }
}
