//! The sealed record stream: AES-256-GCM records with a counter nonce and
//! a final-record mark (the STREAM construction), so that tampering,
//! reordering, replay and truncation are all errors.
//!
//! Record: `u32 BE header | ciphertext | 16-byte tag`, where the header's
//! top bit is the final flag and the other 31 bits the length of
//! ciphertext plus tag; nonce = `u64 BE counter | u32 BE final flag (0 or
//! 1)`, so a flipped flag fails authentication. See `docs/encryption.md`.

use bytes::{Buf, Bytes, BytesMut};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

use super::E2eError;

/// Bytes of the length prefix of a record.
pub const LEN_PREFIX: usize = 4;
/// The final-record bit of the length prefix.
const FINAL_BIT: u32 = 1 << 31;
/// Bytes of the authentication tag of a record.
pub const TAG_LEN: usize = 16;
/// The largest plaintext a record may carry; a longer length is refused
/// before anything is buffered, which bounds a receiver's memory.
pub const MAX_RECORD: usize = 1 << 20;
/// The plaintext size a sender puts in each record.
pub const RECORD_SIZE: usize = 256 * 1024;

fn nonce(counter: u64, last: bool) -> Nonce {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&counter.to_be_bytes());
    n[8..].copy_from_slice(&u32::from(last).to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

fn key(bytes: &[u8; 32]) -> LessSafeKey {
    // A 32-byte key is always a valid AES-256 key.
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).unwrap_or_else(|_| unreachable!()))
}

/// Seals plaintext into records, counting them.
pub struct Sealer {
    key: LessSafeKey,
    counter: u64,
    finished: bool,
}

impl Sealer {
    pub fn new(data_key: &[u8; 32]) -> Self {
        Self {
            key: key(data_key),
            counter: 0,
            finished: false,
        }
    }

    /// Seals one record (at most [`MAX_RECORD`] bytes of plaintext); `last`
    /// marks the end of the stream, after which nothing may be sealed.
    pub fn seal(&mut self, plaintext: &[u8], last: bool) -> Result<Bytes, E2eError> {
        if self.finished || plaintext.len() > MAX_RECORD {
            return Err(E2eError::Misuse);
        }
        let mut out = Vec::with_capacity(LEN_PREFIX + plaintext.len() + TAG_LEN);
        let len = (plaintext.len() + TAG_LEN) as u32 | if last { FINAL_BIT } else { 0 };
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(plaintext);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                nonce(self.counter, last),
                Aad::empty(),
                &mut out[LEN_PREFIX..],
            )
            .map_err(|_| E2eError::Misuse)?;
        out.extend_from_slice(tag.as_ref());
        self.counter += 1;
        self.finished = last;
        Ok(out.into())
    }
}

/// Opens records from a byte stream fed in pieces of any size.
pub struct Opener {
    key: LessSafeKey,
    counter: u64,
    finished: bool,
    buf: BytesMut,
}

impl Opener {
    pub fn new(data_key: &[u8; 32]) -> Self {
        Self {
            key: key(data_key),
            counter: 0,
            finished: false,
            buf: BytesMut::new(),
        }
    }

    /// Adds bytes received from the relay.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// True once the final record has been opened.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// The next complete record's plaintext, or `None` when more bytes are
    /// needed. Data after the final record is an error.
    pub fn next_record(&mut self) -> Result<Option<Bytes>, E2eError> {
        if self.finished {
            return if self.buf.is_empty() {
                Ok(None)
            } else {
                Err(E2eError::Tampered)
            };
        }
        if self.buf.len() < LEN_PREFIX {
            return Ok(None);
        }
        let prefix = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        let last = prefix & FINAL_BIT != 0;
        let len = (prefix & !FINAL_BIT) as usize;
        if !(TAG_LEN..=MAX_RECORD + TAG_LEN).contains(&len) {
            return Err(E2eError::Tampered);
        }
        if self.buf.len() < LEN_PREFIX + len {
            self.buf.reserve(LEN_PREFIX + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(LEN_PREFIX);
        let mut record = self.buf.split_to(len);
        self.key
            .open_in_place(nonce(self.counter, last), Aad::empty(), &mut record)
            .map_err(|_| E2eError::Tampered)?;
        record.truncate(len - TAG_LEN);
        self.counter += 1;
        self.finished = last;
        Ok(Some(record.freeze()))
    }

    /// Called when the input ends: an error unless the final record came.
    pub fn end(&self) -> Result<(), E2eError> {
        if self.finished && self.buf.is_empty() {
            Ok(())
        } else {
            Err(E2eError::Truncated)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: [u8; 32] = [7; 32];

    fn sealed(parts: &[(&[u8], bool)]) -> Vec<u8> {
        let mut s = Sealer::new(&K);
        parts
            .iter()
            .flat_map(|(p, last)| s.seal(p, *last).unwrap().to_vec())
            .collect()
    }

    fn open_all(bytes: &[u8], piece: usize) -> Result<Vec<Vec<u8>>, E2eError> {
        let mut o = Opener::new(&K);
        let mut out = Vec::new();
        for chunk in bytes.chunks(piece.max(1)) {
            o.push(chunk);
            while let Some(r) = o.next_record()? {
                out.push(r.to_vec());
            }
        }
        o.end()?;
        Ok(out)
    }

    #[test]
    fn round_trip_in_any_pieces() {
        let wire = sealed(&[(b"meta", false), (&[1; 70000], false), (b"", true)]);
        for piece in [1, 3, 4096, wire.len()] {
            let got = open_all(&wire, piece).unwrap();
            assert_eq!(got, vec![b"meta".to_vec(), vec![1; 70000], vec![]]);
        }
    }

    #[test]
    fn flipped_bit_is_tampering() {
        let wire = sealed(&[(b"hello", false), (b"world", true)]);
        for i in 0..wire.len() {
            let mut bad = wire.clone();
            bad[i] ^= 0x10;
            assert!(open_all(&bad, 7).is_err(), "flip at {i} went unnoticed");
        }
    }

    #[test]
    fn truncation_is_an_error() {
        let wire = sealed(&[(b"hello", false), (b"world", true)]);
        let first_record = LEN_PREFIX + 5 + TAG_LEN;
        for cut in [0, 2, first_record, wire.len() - 1] {
            assert!(matches!(
                open_all(&wire[..cut], 5),
                Err(E2eError::Truncated)
            ));
        }
    }

    #[test]
    fn reordering_and_trailing_data_are_errors() {
        let mut s = Sealer::new(&K);
        let a = s.seal(b"a", false).unwrap();
        let b = s.seal(b"b", false).unwrap();
        let c = s.seal(b"c", true).unwrap();
        let swapped = [b.clone(), a.clone(), c.clone()].concat();
        assert!(matches!(open_all(&swapped, 64), Err(E2eError::Tampered)));
        let replayed = [a.clone(), b.clone(), c.clone(), c].concat();
        assert!(matches!(open_all(&replayed, 64), Err(E2eError::Tampered)));
        let dropped_last_flag = [a, b].concat();
        assert!(matches!(
            open_all(&dropped_last_flag, 64),
            Err(E2eError::Truncated)
        ));
    }

    #[test]
    fn oversized_length_refused_before_buffering() {
        let mut o = Opener::new(&K);
        o.push(&u32::MAX.to_be_bytes());
        assert!(matches!(o.next_record(), Err(E2eError::Tampered)));
    }

    #[test]
    fn wrong_key_fails() {
        let wire = sealed(&[(b"x", true)]);
        let mut o = Opener::new(&[8; 32]);
        o.push(&wire);
        assert!(matches!(o.next_record(), Err(E2eError::Tampered)));
    }
}
