//! A party's identity: an Ed25519 key that signs, and an X25519 key that receives HPKE.
//!
//! Text forms (stable, they appear in contracts and key files):
//! - public: `kura-pub-v1:` + base64(ed25519 public 32 bytes || x25519 public 32 bytes)
//! - secret: `kura-key-v1:` + base64(ed25519 seed 32 bytes || x25519 secret 32 bytes)
//!
//! Every signature is domain-separated: the signed message is `kura:` + domain + `\0` + payload,
//! so a signature made for one purpose (a contract) can never be replayed as another (a request).

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use hpke::{Deserializable, Kem as _, Serializable};
use zeroize::Zeroizing;

use crate::{CryptoError, b64};

pub(crate) type KemSuite = hpke::kem::X25519HkdfSha256;
pub(crate) type KemPublic = <KemSuite as hpke::Kem>::PublicKey;
pub(crate) type KemPrivate = <KemSuite as hpke::Kem>::PrivateKey;

const PUB_PREFIX: &str = "kura-pub-v1:";
const KEY_PREFIX: &str = "kura-key-v1:";

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
}

impl std::fmt::Debug for PublicIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicIdentity({})", self.fingerprint())
    }
}

impl PublicIdentity {
    /// Parses the one-line text form (surrounding white space is ignored).
    pub fn parse(text: &str) -> Result<Self, CryptoError> {
        let body = text
            .trim()
            .strip_prefix(PUB_PREFIX)
            .ok_or(CryptoError::Encoding(
                "public key must start with kura-pub-v1:",
            ))?;
        let raw = b64::decode(body)?;
        Self::from_bytes(&raw)
    }

    pub fn from_bytes(raw: &[u8]) -> Result<Self, CryptoError> {
        let raw: &[u8; 64] = raw
            .try_into()
            .map_err(|_| CryptoError::Encoding("public key must be 64 bytes"))?;
        let sign: [u8; 32] = raw[..32].try_into().expect("32 bytes");
        let verifying = VerifyingKey::from_bytes(&sign)
            .map_err(|_| CryptoError::Encoding("not an Ed25519 public key"))?;
        if verifying.is_weak() {
            return Err(CryptoError::Encoding("weak Ed25519 public key"));
        }
        let kem = KemPublic::from_bytes(&raw[32..])
            .map_err(|_| CryptoError::Encoding("not an X25519 public key"))?;
        Ok(Self { verifying, kem })
    }

    pub fn to_bytes(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(self.verifying.as_bytes());
        out[32..].copy_from_slice(&self.kem.to_bytes());
        out
    }

    /// The one-line text form written to `NAME.pub` and pasted into contracts.
    pub fn to_text(&self) -> String {
        format!("{PUB_PREFIX}{}", b64::encode(self.to_bytes()))
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
}

fn hex_prefix(bytes: &[u8], n: usize) -> String {
    bytes[..n].iter().map(|b| format!("{b:02x}")).collect()
}

/// A private identity. Its key material is zeroized when dropped and never printed.
pub struct SecretIdentity {
    signing: SigningKey,
    kem: KemPrivate,
    public: PublicIdentity,
}

impl std::fmt::Debug for SecretIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretIdentity({}, <secret>)", self.public.fingerprint())
    }
}

impl SecretIdentity {
    /// A fresh identity from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut seed = Zeroizing::new([0u8; 64]);
        crate::random_bytes(seed.as_mut());
        Self::from_seed(&seed)
    }

    fn from_seed(seed: &[u8; 64]) -> Self {
        let sign_seed: &[u8; 32] = seed[..32].try_into().expect("32 bytes");
        let signing = SigningKey::from_bytes(sign_seed);
        // RFC 9180 DeriveKeyPair turns any 32 uniformly random bytes into a valid X25519 key.
        let (kem, kem_pub) = KemSuite::derive_keypair(&seed[32..]);
        let public = PublicIdentity {
            verifying: signing.verifying_key(),
            kem: kem_pub,
        };
        Self {
            signing,
            kem,
            public,
        }
    }

    /// Parses the secret text form (the content of a `.key` file).
    pub fn parse(text: &str) -> Result<Self, CryptoError> {
        let body = text
            .trim()
            .strip_prefix(KEY_PREFIX)
            .ok_or(CryptoError::Encoding(
                "secret key must start with kura-key-v1:",
            ))?;
        let raw = Zeroizing::new(b64::decode(body)?);
        let raw: &[u8; 64] = raw
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::Encoding("secret key must be 64 bytes"))?;
        let sign_seed: &[u8; 32] = raw[..32].try_into().expect("32 bytes");
        let signing = SigningKey::from_bytes(sign_seed);
        let kem = KemPrivate::from_bytes(&raw[32..])
            .map_err(|_| CryptoError::Encoding("not an X25519 secret key"))?;
        let public = PublicIdentity {
            verifying: signing.verifying_key(),
            kem: KemSuite::sk_to_pk(&kem),
        };
        Ok(Self {
            signing,
            kem,
            public,
        })
    }

    /// The secret text form. The caller must write it to a file only it can read.
    pub fn to_text(&self) -> Zeroizing<String> {
        let mut raw = Zeroizing::new([0u8; 64]);
        raw[..32].copy_from_slice(self.signing.as_bytes());
        raw[32..].copy_from_slice(&self.kem.to_bytes());
        Zeroizing::new(format!("{KEY_PREFIX}{}", b64::encode(raw.as_ref())))
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
