//! A party's identity: an Ed25519 key that signs, and the keys that receive HPKE: X25519 for
//! the classic suite and X-Wing (ML-KEM-768 + X25519, post-quantum hybrid) for the default one.
//!
//! Text forms (stable, they appear in contracts and key files):
//! - public v2: `kura-pub-v2:` + base64(ed25519 public 32 || x25519 public 32 || X-Wing public
//!   1216 bytes); v1 (`kura-pub-v1:`, the first 64 bytes only) is still read, and can receive
//!   only where a contract pins the classic suite.
//! - secret v2: `kura-key-v2:` + base64(ed25519 seed 32 || x25519 secret 32 || X-Wing seed 32);
//!   v1 (the first 64 bytes) is still read.
//!
//! Every signature is domain-separated: the signed message is `kura:` + domain + `\0` + payload,
//! so a signature made for one purpose (a contract) can never be replayed as another (a request).

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use hpke::{Deserializable, Kem as _, Serializable};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::{CryptoError, b64};

pub(crate) type ClassicKem = hpke::kem::X25519HkdfSha256;
pub(crate) type KemPublic = <ClassicKem as hpke::Kem>::PublicKey;
pub(crate) type KemPrivate = <ClassicKem as hpke::Kem>::PrivateKey;
pub(crate) type PqKem = hpke::kem::XWing;
pub(crate) type PqPublic = <PqKem as hpke::Kem>::PublicKey;
pub(crate) type PqPrivate = <PqKem as hpke::Kem>::PrivateKey;

const PUB_V1: &str = "kura-pub-v1:";
const PUB_V2: &str = "kura-pub-v2:";
const KEY_V1: &str = "kura-key-v1:";
const KEY_V2: &str = "kura-key-v2:";
/// Length of an X-Wing public key.
const PQ_PUBLIC: usize = 1216;

/// The HPKE KEM that every seal of a contract uses. The post-quantum hybrid is the default; the
/// classic suite only where a contract pins it. There is no negotiation: both sides use the
/// contract's, so nothing on the way can steer either to the other.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kem {
    /// X-Wing (ML-KEM-768 + X25519), draft-ietf-hpke-pq, with HKDF-SHA256 and
    /// ChaCha20-Poly1305.
    #[default]
    #[serde(rename = "x-wing")]
    XWing,
    /// DHKEM(X25519, HKDF-SHA256), RFC 9180, with HKDF-SHA256 and ChaCha20-Poly1305.
    #[serde(rename = "x25519")]
    X25519,
}

impl Kem {
    /// The name contracts use.
    pub fn name(self) -> &'static str {
        match self {
            Kem::XWing => "x-wing",
            Kem::X25519 => "x25519",
        }
    }
}

impl std::fmt::Display for Kem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An Ed25519 signature (64 bytes).
pub type Signature = [u8; 64];

fn signed_message(domain: &str, payload: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(6 + domain.len() + payload.len());
    msg.extend_from_slice(b"kura:");
    msg.extend_from_slice(domain.as_bytes());
    msg.push(0);
    msg.extend_from_slice(payload);
    msg
}

/// The public half of an identity: verifies signatures, receives encrypted data.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicIdentity {
    verifying: VerifyingKey,
    kem: KemPublic,
    /// Absent in v1 keys.
    pq: Option<PqPublic>,
}

impl std::fmt::Debug for PublicIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicIdentity({})", self.fingerprint())
    }
}

impl PublicIdentity {
    /// Parses the one-line text form (surrounding white space is ignored).
    pub fn parse(text: &str) -> Result<Self, CryptoError> {
        let text = text.trim();
        let (body, pq) = if let Some(body) = text.strip_prefix(PUB_V2) {
            (body, true)
        } else if let Some(body) = text.strip_prefix(PUB_V1) {
            (body, false)
        } else {
            return Err(CryptoError::Encoding(
                "public key must start with kura-pub-v2: (or kura-pub-v1:)",
            ));
        };
        let raw = b64::decode(body)?;
        if raw.len() != if pq { 64 + PQ_PUBLIC } else { 64 } {
            return Err(CryptoError::Encoding(
                "public key has the wrong length for its version",
            ));
        }
        Self::from_bytes(&raw)
    }

    /// The binary form: 64 bytes (v1) or 1280 bytes (v2, with the X-Wing key).
    pub fn from_bytes(raw: &[u8]) -> Result<Self, CryptoError> {
        if raw.len() != 64 && raw.len() != 64 + PQ_PUBLIC {
            return Err(CryptoError::Encoding("public key must be 64 or 1280 bytes"));
        }
        let sign: [u8; 32] = raw[..32].try_into().expect("32 bytes");
        let verifying = VerifyingKey::from_bytes(&sign)
            .map_err(|_| CryptoError::Encoding("not an Ed25519 public key"))?;
        if verifying.is_weak() {
            return Err(CryptoError::Encoding("weak Ed25519 public key"));
        }
        let kem = KemPublic::from_bytes(&raw[32..64])
            .map_err(|_| CryptoError::Encoding("not an X25519 public key"))?;
        let pq = match raw.get(64..) {
            Some(pq) if !pq.is_empty() => Some(
                PqPublic::from_bytes(pq)
                    .map_err(|_| CryptoError::Encoding("not an X-Wing public key"))?,
            ),
            _ => None,
        };
        Ok(Self { verifying, kem, pq })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + PQ_PUBLIC);
        out.extend_from_slice(self.verifying.as_bytes());
        out.extend_from_slice(&self.kem.to_bytes());
        if let Some(pq) = &self.pq {
            out.extend_from_slice(&pq.to_bytes());
        }
        out
    }

    /// The one-line text form written to `NAME.pub` and pasted into contracts.
    pub fn to_text(&self) -> String {
        let prefix = if self.pq.is_some() { PUB_V2 } else { PUB_V1 };
        format!("{prefix}{}", b64::encode(self.to_bytes()))
    }

    /// Whether this key can receive what is sealed with `kem`.
    pub fn receives(&self, kem: Kem) -> bool {
        match kem {
            Kem::XWing => self.pq.is_some(),
            Kem::X25519 => true,
        }
    }

    /// A short, stable, human-comparable fingerprint (hex of the first 8 bytes of SHA-256).
    pub fn fingerprint(&self) -> String {
        hex_prefix(&crate::sha256(&self.to_bytes()), 8)
    }

    /// Verifies a signature made by [`SecretIdentity::sign`] with the same `domain`.
    pub fn verify(&self, domain: &str, payload: &[u8], sig: &[u8]) -> Result<(), CryptoError> {
        let sig: &[u8; 64] = sig.try_into().map_err(|_| CryptoError::BadSignature)?;
        let sig = ed25519_dalek::Signature::from_bytes(sig);
        self.verifying
            .verify_strict(&signed_message(domain, payload), &sig)
            .map_err(|_| CryptoError::BadSignature)
    }

    pub(crate) fn kem(&self) -> &KemPublic {
        &self.kem
    }

    pub(crate) fn pq(&self) -> Result<&PqPublic, CryptoError> {
        self.pq.as_ref().ok_or(CryptoError::NoPqKey)
    }
}

fn hex_prefix(bytes: &[u8], n: usize) -> String {
    bytes[..n].iter().map(|b| format!("{b:02x}")).collect()
}

/// A private identity. Its key material is zeroized when dropped and never printed.
pub struct SecretIdentity {
    signing: SigningKey,
    kem: KemPrivate,
    pq: Option<PqPrivate>,
    public: PublicIdentity,
}

impl std::fmt::Debug for SecretIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretIdentity({}, <secret>)", self.public.fingerprint())
    }
}

impl SecretIdentity {
    /// A fresh identity from the operating system's CSPRNG.
    /// A fresh identity (v2, with an X-Wing key) from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut seed = Zeroizing::new([0u8; 96]);
        crate::random_bytes(seed.as_mut());
        // RFC 9180 DeriveKeyPair turns any 32 uniformly random bytes into a valid X25519 key.
        let (kem, _) = ClassicKem::derive_keypair(&seed[32..64]);
        let mut raw = Zeroizing::new(Vec::with_capacity(96));
        raw.extend_from_slice(&seed[..32]);
        raw.extend_from_slice(&kem.to_bytes());
        raw.extend_from_slice(&seed[64..]);
        Self::from_raw(&raw).expect("a freshly drawn key is well formed")
    }

    /// Parses the secret text form (the content of a `.key` file).
    pub fn parse(text: &str) -> Result<Self, CryptoError> {
        let text = text.trim();
        let (body, len) = if let Some(body) = text.strip_prefix(KEY_V2) {
            (body, 96)
        } else if let Some(body) = text.strip_prefix(KEY_V1) {
            (body, 64)
        } else {
            return Err(CryptoError::Encoding(
                "secret key must start with kura-key-v2: (or kura-key-v1:)",
            ));
        };
        let raw = Zeroizing::new(b64::decode(body)?);
        if raw.len() != len {
            return Err(CryptoError::Encoding(
                "secret key has the wrong length for its version",
            ));
        }
        Self::from_raw(&raw)
    }

    /// 64 bytes (v1) or 96 (v2): Ed25519 seed, X25519 secret, and the X-Wing seed.
    fn from_raw(raw: &[u8]) -> Result<Self, CryptoError> {
        let sign_seed: &[u8; 32] = raw[..32].try_into().expect("32 bytes");
        let signing = SigningKey::from_bytes(sign_seed);
        let kem = KemPrivate::from_bytes(&raw[32..64])
            .map_err(|_| CryptoError::Encoding("not an X25519 secret key"))?;
        let pq = match raw.get(64..) {
            Some(seed) if !seed.is_empty() => Some(
                PqPrivate::from_bytes(seed)
                    .map_err(|_| CryptoError::Encoding("not an X-Wing seed"))?,
            ),
            _ => None,
        };
        let public = PublicIdentity {
            verifying: signing.verifying_key(),
            kem: ClassicKem::sk_to_pk(&kem),
            pq: pq.as_ref().map(PqKem::sk_to_pk),
        };
        Ok(Self {
            signing,
            kem,
            pq,
            public,
        })
    }

    /// The secret text form. The caller must write it to a file only it can read.
    pub fn to_text(&self) -> Zeroizing<String> {
        let mut raw = Zeroizing::new(Vec::with_capacity(96));
        raw.extend_from_slice(self.signing.as_bytes());
        raw.extend_from_slice(&self.kem.to_bytes());
        let prefix = match &self.pq {
            Some(pq) => {
                raw.extend_from_slice(&pq.to_bytes());
                KEY_V2
            }
            None => KEY_V1,
        };
        Zeroizing::new(format!("{prefix}{}", b64::encode(raw.as_slice())))
    }

    pub fn public(&self) -> &PublicIdentity {
        &self.public
    }

    /// Signs `payload` for `domain` (see the module docs on domain separation).
    pub fn sign(&self, domain: &str, payload: &[u8]) -> Signature {
        self.signing
            .sign(&signed_message(domain, payload))
            .to_bytes()
    }

    pub(crate) fn kem(&self) -> &KemPrivate {
        &self.kem
    }

    pub(crate) fn pq(&self) -> Result<&PqPrivate, CryptoError> {
        self.pq.as_ref().ok_or(CryptoError::NoPqKey)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_forms_round_trip() {
        let id = SecretIdentity::generate();
        let back = SecretIdentity::parse(&id.to_text()).unwrap();
        assert_eq!(back.public(), id.public());
        let public = PublicIdentity::parse(&id.public().to_text()).unwrap();
        assert_eq!(&public, id.public());
    }

    #[test]
    fn signatures_are_bound_to_domain_and_payload() {
        let id = SecretIdentity::generate();
        let sig = id.sign("contract", b"bytes");
        id.public().verify("contract", b"bytes", &sig).unwrap();
        assert_eq!(
            id.public().verify("request", b"bytes", &sig),
            Err(CryptoError::BadSignature)
        );
        assert_eq!(
            id.public().verify("contract", b"bytez", &sig),
            Err(CryptoError::BadSignature)
        );
        let other = SecretIdentity::generate();
        assert_eq!(
            other.public().verify("contract", b"bytes", &sig),
            Err(CryptoError::BadSignature)
        );
    }

    #[test]
    fn v1_keys_still_read_and_receive_only_the_classic_suite() {
        let v2 = SecretIdentity::generate();
        assert!(v2.to_text().starts_with(KEY_V2));
        assert!(v2.public().to_text().starts_with(PUB_V2));
        assert!(v2.public().receives(Kem::XWing) && v2.public().receives(Kem::X25519));
        // The first 64 bytes of a v2 key are its v1 form.
        let raw = b64::decode(&v2.to_text()[KEY_V2.len()..]).unwrap();
        let v1 = SecretIdentity::parse(&format!("{KEY_V1}{}", b64::encode(&raw[..64]))).unwrap();
        assert!(v1.public().to_text().starts_with(PUB_V1));
        assert!(!v1.public().receives(Kem::XWing));
        assert_eq!(v1.public().verifying, v2.public().verifying);
        let back = SecretIdentity::parse(&v1.to_text()).unwrap();
        assert_eq!(back.public(), v1.public());
        // A prefix that does not match the length is refused, either way.
        let long = format!("{PUB_V1}{}", &v2.public().to_text()[PUB_V2.len()..]);
        assert!(PublicIdentity::parse(&long).is_err());
        let short = format!("{PUB_V2}{}", &v1.public().to_text()[PUB_V1.len()..]);
        assert!(PublicIdentity::parse(&short).is_err());
    }

    #[test]
    fn malformed_keys_are_refused() {
        assert!(PublicIdentity::parse("kura-pub-v1:AAAA").is_err());
        assert!(PublicIdentity::parse("ssh-ed25519 AAAA").is_err());
        assert!(SecretIdentity::parse("kura-key-v1:!!").is_err());
        // The all-zero Ed25519 point is a weak (small-order) key.
        let zero = format!("kura-pub-v1:{}", b64::encode([0u8; 64]));
        assert!(PublicIdentity::parse(&zero).is_err());
    }

    #[test]
    fn debug_never_shows_secrets() {
        let id = SecretIdentity::generate();
        let text = id.to_text();
        let shown = format!("{id:?}");
        assert!(!shown.contains(&text[12..30]));
        assert!(shown.contains("<secret>"));
    }
}
