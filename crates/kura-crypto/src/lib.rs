//! Keys, signatures, the HPKE envelope and the chunked AEAD stream used everywhere in kura.
//!
//! Every primitive comes from a maintained crate (`ed25519-dalek`, `hpke`, `ring`); this crate
//! only composes them and fixes the encodings. It performs no I/O: callers read and write the
//! key files. Secrets are zeroized on drop and never appear in `Debug` output or errors.

pub mod channel;
mod envelope;
mod error;
mod identity;
mod stream;

pub use envelope::{Sealed, open, seal};
pub use error::CryptoError;
pub use identity::{Kem, PublicIdentity, SecretIdentity, Signature};
pub use stream::{
    DEFAULT_CHUNK_SIZE, DataKey, MAX_CHUNK_SIZE, StreamDecoder, StreamEncoder, TAG_LEN,
};

/// Appends `more` to `buf` without leaving a copy of what `buf` held in freed memory: when it
/// must grow, the old allocation is zeroized after the move. For buffers that hold plaintext.
pub fn extend_zeroizing(buf: &mut Vec<u8>, more: &[u8]) {
    if buf.capacity() - buf.len() < more.len() {
        let mut bigger = Vec::with_capacity((buf.len() + more.len()).max(buf.capacity() * 2));
        bigger.extend_from_slice(buf);
        let mut old = std::mem::replace(buf, bigger);
        zeroize::Zeroize::zeroize(&mut old);
    }
    buf.extend_from_slice(more);
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// Fills `buf` from the operating system's CSPRNG.
///
/// # Panics
/// If the operating system cannot provide randomness; continuing without it would be unsafe.
pub fn random_bytes(buf: &mut [u8]) {
    getrandom::fill(buf).expect("the operating system's random number generator failed");
}

/// Standard base64 (with padding), the one text encoding of binary values in kura's formats.
pub mod b64 {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;

    pub fn encode(bytes: impl AsRef<[u8]>) -> String {
        STANDARD.encode(bytes)
    }

    pub fn decode(text: &str) -> Result<Vec<u8>, crate::CryptoError> {
        STANDARD
            .decode(text.trim())
            .map_err(|_| crate::CryptoError::Encoding("invalid base64"))
    }

    /// Serde helper: `#[serde(with = "kura_crypto::b64::serde_bytes")]` on a `Vec<u8>`.
    pub mod serde_bytes {
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(&super::encode(bytes))
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
            let text = String::deserialize(d)?;
            super::decode(&text).map_err(serde::de::Error::custom)
        }
    }

    /// `Option<Vec<u8>>` as an optional base64 string.
    pub mod serde_opt_bytes {
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
            match bytes {
                Some(b) => s.serialize_some(&super::encode(b)),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
            Option::<String>::deserialize(d)?
                .map(|t| super::decode(&t).map_err(serde::de::Error::custom))
                .transpose()
        }
    }
}
