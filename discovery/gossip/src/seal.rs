//! The gossip packet envelope: a magic byte, a kind byte, and either the plain body or
//! AES-GCM over it (random 96-bit nonce, the two header bytes as associated data), as
//! memberlist seals its packets with Consul's `-encrypt` key.

use aes_gcm::aead::consts::U12;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::aes::Aes192;
use aes_gcm::{Aes128Gcm, Aes256Gcm, AesGcm, Nonce};
use base64::Engine;
use sha2::{Digest, Sha256};

const MAGIC: u8 = 0x57;
const SEALED: u8 = 0x80;
const NONCE_LEN: usize = 12;

/// What a packet carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A SWIM message for foca.
    Swim = 1,
    /// A member announcing that it leaves (or, for `force-leave`, that it left).
    Leave = 2,
    /// Why a packet was refused, sent back to its sender in the clear.
    Refusal = 3,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Swim),
            2 => Some(Kind::Leave),
            3 => Some(Kind::Refusal),
            _ => None,
        }
    }
}

/// The cluster's gossip key.
#[derive(Clone)]
pub struct Key(Cipher);

#[derive(Clone)]
enum Cipher {
    A128(Aes128Gcm),
    A192(AesGcm<Aes192, U12>),
    A256(Aes256Gcm),
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// The key from a cluster key string: `wharf keygen`'s base64 of 16, 24 or 32 bytes is
    /// used as is (Consul's `-encrypt`); any other non-empty string (`--cluster-key`) through
    /// SHA-256. `None` for the empty string: an unauthenticated cluster.
    pub fn from_cluster_key(key: &str) -> Option<Key> {
        if key.is_empty() {
            return None;
        }
        let bytes = base64::engine::general_purpose::STANDARD.decode(key).ok();
        let cipher = match bytes.as_deref() {
            Some(b) if b.len() == 16 => Aes128Gcm::new_from_slice(b).ok().map(Cipher::A128),
            Some(b) if b.len() == 24 => AesGcm::<Aes192, U12>::new_from_slice(b).ok().map(Cipher::A192),
            Some(b) if b.len() == 32 => Aes256Gcm::new_from_slice(b).ok().map(Cipher::A256),
            _ => None,
        };
        Some(Key(cipher.unwrap_or_else(|| {
            let digest = Sha256::new().chain_update(b"wharf gossip key\0").chain_update(key.as_bytes()).finalize();
            Cipher::A256(Aes256Gcm::new(&digest))
        })))
    }
}

/// Why a packet was not accepted.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("not a wharf gossip packet")]
    NotGossip,
    #[error("the packet is not encrypted, but this agent requires the cluster's -encrypt key")]
    Unsealed,
    #[error("the packet is encrypted, but this agent has no -encrypt key")]
    NoKey,
    #[error("the packet failed authentication: it was sealed with a different -encrypt key, or altered")]
    BadSeal,
}

/// Wraps `body` for the wire; sealed when there is a key.
pub fn seal(key: Option<&Key>, kind: Kind, body: &[u8]) -> Vec<u8> {
    let Some(Key(cipher)) = key else {
        let mut out = Vec::with_capacity(body.len() + 2);
        out.extend_from_slice(&[MAGIC, kind as u8]);
        out.extend_from_slice(body);
        return out;
    };
    let header = [MAGIC, kind as u8 | SEALED];
    let nonce_bytes: [u8; NONCE_LEN] = rand::random();
    let nonce = Nonce::<U12>::from_slice(&nonce_bytes);
    let payload = Payload { msg: body, aad: &header };
    let sealed = match cipher {
        Cipher::A128(c) => c.encrypt(nonce, payload),
        Cipher::A192(c) => c.encrypt(nonce, payload),
        Cipher::A256(c) => c.encrypt(nonce, payload),
    };
    // AES-GCM encryption fails only for messages over 64 GiB.
    let sealed = sealed.unwrap_or_default();
    let mut out = Vec::with_capacity(2 + NONCE_LEN + sealed.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(&nonce_bytes);
    out.extend_from_slice(&sealed);
    out
}

/// Unwraps a packet. A refusal is always accepted in the clear (it carries only a reason
/// for the log); anything else must be sealed exactly when this agent has a key.
pub fn open(key: Option<&Key>, packet: &[u8]) -> Result<(Kind, Vec<u8>), OpenError> {
    let [magic, kind_byte, rest @ ..] = packet else { return Err(OpenError::NotGossip) };
    if *magic != MAGIC {
        return Err(OpenError::NotGossip);
    }
    let kind = Kind::from_byte(kind_byte & !SEALED).ok_or(OpenError::NotGossip)?;
    let sealed = kind_byte & SEALED != 0;
    match (key, sealed) {
        (_, false) if kind == Kind::Refusal => Ok((kind, rest.to_vec())),
        (None, false) => Ok((kind, rest.to_vec())),
        (Some(_), false) => Err(OpenError::Unsealed),
        (None, true) => Err(OpenError::NoKey),
        (Some(Key(cipher)), true) => {
            if rest.len() < NONCE_LEN {
                return Err(OpenError::BadSeal);
            }
            let (nonce, body) = rest.split_at(NONCE_LEN);
            let nonce = Nonce::<U12>::from_slice(nonce);
            let header = [*magic, *kind_byte];
            let payload = Payload { msg: body, aad: &header };
            let plain = match cipher {
                Cipher::A128(c) => c.decrypt(nonce, payload),
                Cipher::A192(c) => c.decrypt(nonce, payload),
                Cipher::A256(c) => c.decrypt(nonce, payload),
            };
            plain.map(|p| (kind, p)).map_err(|_| OpenError::BadSeal)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K32: &str = "pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s=";
    const K16: &str = "AAECAwQFBgcICQoLDA0ODw==";

    fn key(s: &str) -> Key {
        Key::from_cluster_key(s).expect("a key")
    }

    #[test]
    fn sealed_packets_open_with_the_same_key_only() {
        for k in [K32, K16, "a-cluster-key-that-is-not-base64"] {
            let p = seal(Some(&key(k)), Kind::Swim, b"hello");
            assert!(!p.windows(5).any(|w| w == b"hello"), "the body is encrypted");
            assert_eq!(open(Some(&key(k)), &p), Ok((Kind::Swim, b"hello".to_vec())));
        }
        let p = seal(Some(&key(K32)), Kind::Leave, b"bye");
        assert_eq!(open(Some(&key(K16)), &p), Err(OpenError::BadSeal));
        assert_eq!(open(Some(&key("other")), &p), Err(OpenError::BadSeal));
        assert_eq!(open(None, &p), Err(OpenError::NoKey));
    }

    #[test]
    fn a_keyed_agent_refuses_plain_and_altered_packets() {
        let plain = seal(None, Kind::Swim, b"hello");
        assert_eq!(open(None, &plain), Ok((Kind::Swim, b"hello".to_vec())));
        assert_eq!(open(Some(&key(K32)), &plain), Err(OpenError::Unsealed));

        let mut p = seal(Some(&key(K32)), Kind::Swim, b"hello");
        let last = p.len() - 1;
        p[last] ^= 1;
        assert_eq!(open(Some(&key(K32)), &p), Err(OpenError::BadSeal));
        // The kind byte is authenticated too: a SWIM packet cannot be replayed as a leave.
        let mut p = seal(Some(&key(K32)), Kind::Swim, b"hello");
        p[1] = Kind::Leave as u8 | SEALED;
        assert_eq!(open(Some(&key(K32)), &p), Err(OpenError::BadSeal));
        assert_eq!(open(Some(&key(K32)), &p[..5]), Err(OpenError::BadSeal));
    }

    #[test]
    fn refusals_travel_in_the_clear_and_junk_is_not_gossip() {
        let r = seal(None, Kind::Refusal, b"why");
        assert_eq!(open(Some(&key(K32)), &r), Ok((Kind::Refusal, b"why".to_vec())));
        assert_eq!(open(None, b""), Err(OpenError::NotGossip));
        assert_eq!(open(None, b"GET / HTTP/1.1"), Err(OpenError::NotGossip));
        assert_eq!(open(None, &[MAGIC, 9, 1]), Err(OpenError::NotGossip));
        assert!(Key::from_cluster_key("").is_none());
    }
}
