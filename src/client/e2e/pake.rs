//! CPace over ristretto255: two sides that know the same low-entropy code
//! agree on a strong shared secret; the relay, which passes their messages,
//! learns nothing it could test a guess against offline.
//!
//! The exact construction (inputs, encodings, transcript) is in
//! `docs/encryption.md`; this file follows it line by line.

use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::IsIdentity;
use ring::digest::{Context, SHA512};
use ring::rand::{SecureRandom, SystemRandom};

use super::E2eError;

/// Length of the share each side sends (a compressed ristretto255 point).
pub const SHARE_LEN: usize = 32;

/// Domain-separation labels (see `docs/encryption.md`).
const GENERATOR_LABEL: &[u8] = b"tubes/1 cpace generator";
const ISK_LABEL: &[u8] = b"tubes/1 cpace isk";

/// Which side of the exchange this is; fixes the transcript order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The side that sends the data (its share goes first).
    Sender,
    /// The side that receives the data.
    Receiver,
}

/// One side's half-finished exchange: its secret scalar and its share.
pub struct Cpace {
    secret: Scalar,
    share: [u8; SHARE_LEN],
    channel: Vec<u8>,
    role: Role,
}

/// Appends `data` preceded by its length as a 4-byte big-endian number.
fn absorb(ctx: &mut Context, data: &[u8]) {
    // Inputs are a code, a path and 32-byte points: far below 4 GiB.
    let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    ctx.update(&len.to_be_bytes());
    ctx.update(data);
}

/// The password-dependent generator: SHA-512 of the labelled inputs mapped
/// onto ristretto255 (RFC 9496 element derivation).
fn generator(password: &[u8], channel: &[u8]) -> RistrettoPoint {
    let mut ctx = Context::new(&SHA512);
    absorb(&mut ctx, GENERATOR_LABEL);
    absorb(&mut ctx, password);
    absorb(&mut ctx, channel);
    let mut wide = [0u8; 64];
    wide.copy_from_slice(ctx.finish().as_ref());
    RistrettoPoint::from_uniform_bytes(&wide)
}

fn random_scalar() -> Result<Scalar, E2eError> {
    let mut wide = [0u8; 64];
    SystemRandom::new()
        .fill(&mut wide)
        .map_err(|_| E2eError::Random)?;
    Ok(Scalar::from_bytes_mod_order_wide(&wide))
}

impl Cpace {
    /// Starts the exchange for `password` (the code) on `channel` (the
    /// relay path both sides use); returns the state and the share to send.
    pub fn start(password: &str, channel: &str, role: Role) -> Result<Self, E2eError> {
        Ok(Self::with_secret(password, channel, role, random_scalar()?))
    }

    fn with_secret(password: &str, channel: &str, role: Role, secret: Scalar) -> Self {
        let point = generator(password.as_bytes(), channel.as_bytes()) * secret;
        Self {
            secret,
            share: point.compress().to_bytes(),
            channel: channel.as_bytes().to_vec(),
            role,
        }
    }

    /// This side's share, to send to the other side.
    pub fn share(&self) -> &[u8; SHARE_LEN] {
        &self.share
    }

    /// Finishes with the other side's share; returns the 64-byte
    /// intermediate session key. Fails on a share that is not a valid,
    /// non-identity point (a wrong code is *not* detected here: it gives a
    /// different key, caught by the confirmation tags).
    pub fn finish(self, peer: &[u8]) -> Result<[u8; 64], E2eError> {
        let bytes: [u8; SHARE_LEN] = peer.try_into().map_err(|_| E2eError::BadShare)?;
        let point = CompressedRistretto(bytes)
            .decompress()
            .ok_or(E2eError::BadShare)?;
        if point.is_identity() {
            return Err(E2eError::BadShare);
        }
        let shared = point * self.secret;
        if shared.is_identity() {
            return Err(E2eError::BadShare);
        }
        let (sender_share, receiver_share) = match self.role {
            Role::Sender => (&self.share, &bytes),
            Role::Receiver => (&bytes, &self.share),
        };
        let mut ctx = Context::new(&SHA512);
        absorb(&mut ctx, ISK_LABEL);
        absorb(&mut ctx, &self.channel);
        absorb(&mut ctx, shared.compress().as_bytes());
        absorb(&mut ctx, sender_share);
        absorb(&mut ctx, receiver_share);
        let mut isk = [0u8; 64];
        isk.copy_from_slice(ctx.finish().as_ref());
        Ok(isk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange(code_s: &str, code_r: &str) -> ([u8; 64], [u8; 64]) {
        let s = Cpace::start(code_s, "/tubes-1", Role::Sender).unwrap();
        let r = Cpace::start(code_r, "/tubes-1", Role::Receiver).unwrap();
        let (ss, rs) = (*s.share(), *r.share());
        (s.finish(&rs).unwrap(), r.finish(&ss).unwrap())
    }

    #[test]
    fn same_code_same_key() {
        let (a, b) = exchange("1-apple-river", "1-apple-river");
        assert_eq!(a, b);
    }

    #[test]
    fn wrong_code_other_key() {
        let (a, b) = exchange("1-apple-river", "1-apple-rover");
        assert_ne!(a, b);
    }

    #[test]
    fn fresh_keys_each_time() {
        let (a, _) = exchange("1-apple-river", "1-apple-river");
        let (c, _) = exchange("1-apple-river", "1-apple-river");
        assert_ne!(a, c);
    }

    #[test]
    fn bad_shares_refused() {
        let s = || Cpace::start("code", "/p", Role::Sender).unwrap();
        assert!(matches!(s().finish(&[0u8; 32]), Err(E2eError::BadShare)));
        assert!(matches!(s().finish(&[0xffu8; 32]), Err(E2eError::BadShare)));
        assert!(matches!(s().finish(&[1u8; 5]), Err(E2eError::BadShare)));
    }

    /// A fixed vector so a second implementation can check its generator.
    #[test]
    fn vectors() {
        let hex = |b: &[u8]| -> String { b.iter().map(|b| format!("{b:02x}")).collect() };
        let (code, channel) = ("1234-amber-lunar-velvet", "tubes-1234");
        let g = generator(code.as_bytes(), channel.as_bytes());
        // The same vectors are in docs/encryption.md.
        assert_eq!(
            hex(g.compress().as_bytes()),
            "bc457a36f193dc942be61b6ef31c9846f489533243836da4a33a45603184281a"
        );
        let s = Cpace::with_secret(code, channel, Role::Sender, Scalar::from(3u64));
        let r = Cpace::with_secret(code, channel, Role::Receiver, Scalar::from(5u64));
        let (ss, rs) = (*s.share(), *r.share());
        assert_eq!(
            hex(&ss),
            "18919a87cb13c764772bf3c07d17145dd8871f1d9fadf89752e431effba1820a"
        );
        assert_eq!(
            hex(&rs),
            "d6a8ec8250e49200efbdb01e08563608a6b3d385982b81316eac3dcde3fc443a"
        );
        let isk = s.finish(&rs).unwrap();
        assert_eq!(isk, r.finish(&ss).unwrap());
        assert_eq!(
            hex(&isk),
            "36ffda54e5a98df945b1af83d18817102c322d36b922406c9a9ebd5fba0828e0\
             70d1a0f2a9b03036cfd8bf667564fed22adc43fd9f406ed7fd6d189750378c30"
        );
    }
}
