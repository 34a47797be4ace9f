//! A party's identity: an Ed25519 key that signs, and the keys that receive HPKE: X25519 for
//! the classic suite and X-Wing (ML-KEM-768 + X25519, post-quantum hybrid) for the default one.
//!
//! Text forms (stable, they appear in contracts and key files):
//! - public v2: `kura-pub-v2:` + base64(ed25519 public 32 || x25519 public 32 || X-Wing public
//!   1216 bytes); v1 (`kura-pub-v1:`, the first 64 bytes only) is still read, and can receive
//!   only where a contract pins the classic suite.
//! - secret v2: `kura-key-v2:` + base64(ed25519 seed 32 || x25519 secret 32 || X-Wing seed 32);
//!   v1 (the first 64 bytes) is still read.
//! - v3, an identity that also signs with ML-DSA-65 (FIPS 204; the enclave's, whose signatures
//!   on tree heads and results must outlast Ed25519): public `kura-pub-v3:` + base64(the v2
//!   bytes || ML-DSA-65 public key 1952 bytes), secret `kura-key-v3:` + base64(the v2 bytes ||
//!   ML-DSA seed 32). Its hybrid signatures are an Ed25519 signature and an ML-DSA-65 one over
//!   the same message, and verify only if both do ([`PublicIdentity::verify_hybrid`]).
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
const PUB_V3: &str = "kura-pub-v3:";
const KEY_V1: &str = "kura-key-v1:";
const KEY_V2: &str = "kura-key-v2:";
const KEY_V3: &str = "kura-key-v3:";
/// Length of an X-Wing public key.
const PQ_PUBLIC: usize = 1216;
/// Length of an ML-DSA-65 public key.
const MLDSA_PUBLIC: usize = 1952;

type MlDsaSigning = ml_dsa::SigningKey<ml_dsa::MlDsa65>;
type MlDsaVerifying = ml_dsa::VerifyingKey<ml_dsa::MlDsa65>;

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
    /// The ML-DSA-65 public key (encoded) of a v3 key.
    signs_pq: Option<Vec<u8>>,
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
        let (body, len) = if let Some(body) = text.strip_prefix(PUB_V2) {
            (body, 64 + PQ_PUBLIC)
        } else if let Some(body) = text.strip_prefix(PUB_V3) {
            (body, 64 + PQ_PUBLIC + MLDSA_PUBLIC)
        } else if let Some(body) = text.strip_prefix(PUB_V1) {
            (body, 64)
        } else {
            return Err(CryptoError::Encoding(
                "public key must start with kura-pub-v2: (or kura-pub-v1:, kura-pub-v3:)",
            ));
        };
        let raw = b64::decode(body)?;
        if raw.len() != len {
            return Err(CryptoError::Encoding(
                "public key has the wrong length for its version",
            ));
        }
        Self::from_bytes(&raw)
    }

    /// The binary form: 64 bytes (v1), 1280 bytes (v2, with the X-Wing key) or 3232 (v3, with
    /// the ML-DSA-65 key too).
    pub fn from_bytes(raw: &[u8]) -> Result<Self, CryptoError> {
        if ![64, 64 + PQ_PUBLIC, 64 + PQ_PUBLIC + MLDSA_PUBLIC].contains(&raw.len()) {
            return Err(CryptoError::Encoding(
                "public key must be 64, 1280 or 3232 bytes",
            ));
        }
        let sign: [u8; 32] = raw[..32].try_into().expect("32 bytes");
        let verifying = VerifyingKey::from_bytes(&sign)
            .map_err(|_| CryptoError::Encoding("not an Ed25519 public key"))?;
        if verifying.is_weak() {
            return Err(CryptoError::Encoding("weak Ed25519 public key"));
        }
        let kem = KemPublic::from_bytes(&raw[32..64])
            .map_err(|_| CryptoError::Encoding("not an X25519 public key"))?;
        let pq = match raw.get(64..(64 + PQ_PUBLIC).min(raw.len())) {
            Some(pq) if !pq.is_empty() => Some(
                PqPublic::from_bytes(pq)
                    .map_err(|_| CryptoError::Encoding("not an X-Wing public key"))?,
            ),
            _ => None,
        };
        let signs_pq = match raw.get(64 + PQ_PUBLIC..) {
            Some(key) if !key.is_empty() => {
                mldsa_key(key)?;
                Some(key.to_vec())
            }
            _ => None,
        };
        Ok(Self {
            verifying,
            kem,
            pq,
            signs_pq,
        })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + PQ_PUBLIC);
        out.extend_from_slice(self.verifying.as_bytes());
        out.extend_from_slice(&self.kem.to_bytes());
        if let Some(pq) = &self.pq {
            out.extend_from_slice(&pq.to_bytes());
        }
        if let Some(key) = &self.signs_pq {
            out.extend_from_slice(key);
        }
        out
    }

    /// The one-line text form written to `NAME.pub` and pasted into contracts.
    pub fn to_text(&self) -> String {
        let prefix = match (&self.pq, &self.signs_pq) {
            (_, Some(_)) => PUB_V3,
            (Some(_), None) => PUB_V2,
            (None, None) => PUB_V1,
        };
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

    /// Whether this key also signs with ML-DSA-65 (v3): then every hybrid signature it makes
    /// must carry both halves.
    pub fn signs_post_quantum(&self) -> bool {
        self.signs_pq.is_some()
    }

    /// Verifies an ML-DSA-65 signature made by [`SecretIdentity::sign_post_quantum`] with the
    /// same `domain`.
    pub fn verify_post_quantum(
        &self,
        domain: &str,
        payload: &[u8],
        sig: &[u8],
    ) -> Result<(), CryptoError> {
        let key = self.signs_pq.as_deref().ok_or(CryptoError::BadSignature)?;
        let key = mldsa_key(key)?;
        let sig = ml_dsa::EncodedSignature::<ml_dsa::MlDsa65>::try_from(sig)
            .ok()
            .and_then(|s| ml_dsa::Signature::decode(&s))
            .ok_or(CryptoError::BadSignature)?;
        if key.verify_with_context(&signed_message(domain, payload), &[], &sig) {
            Ok(())
        } else {
            Err(CryptoError::BadSignature)
        }
    }

    /// Verifies a hybrid signature: the Ed25519 half always, and the ML-DSA-65 half when this
    /// key signs with one ([`PublicIdentity::signs_post_quantum`]), which must then be there.
    pub fn verify_hybrid(
        &self,
        domain: &str,
        payload: &[u8],
        sig: &[u8],
        post_quantum: Option<&[u8]>,
    ) -> Result<(), CryptoError> {
        self.verify(domain, payload, sig)?;
        if self.signs_post_quantum() {
            let pq = post_quantum.ok_or(CryptoError::BadSignature)?;
            self.verify_post_quantum(domain, payload, pq)?;
        }
        Ok(())
    }

    pub(crate) fn kem(&self) -> &KemPublic {
        &self.kem
    }

    pub(crate) fn pq(&self) -> Result<&PqPublic, CryptoError> {
        self.pq.as_ref().ok_or(CryptoError::NoPqKey)
    }
}

/// An ML-DSA-65 public key from its encoding.
fn mldsa_key(bytes: &[u8]) -> Result<MlDsaVerifying, CryptoError> {
    let encoded = ml_dsa::EncodedVerifyingKey::<ml_dsa::MlDsa65>::try_from(bytes)
        .map_err(|_| CryptoError::Encoding("not an ML-DSA-65 public key"))?;
    Ok(MlDsaVerifying::decode(&encoded))
}

fn hex_prefix(bytes: &[u8], n: usize) -> String {
    bytes[..n].iter().map(|b| format!("{b:02x}")).collect()
}

/// A private identity. Its key material is zeroized when dropped and never printed.
pub struct SecretIdentity {
    signing: SigningKey,
    kem: KemPrivate,
    pq: Option<PqPrivate>,
    /// A v3 identity's ML-DSA-65 key, and the seed it comes from.
    signs_pq: Option<(Box<MlDsaSigning>, Zeroizing<[u8; 32]>)>,
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

    /// A fresh identity that also signs with ML-DSA-65 (v3): the enclave's.
    pub fn generate_post_quantum() -> Self {
        let fresh = Self::generate();
        let mut raw = Zeroizing::new(Vec::with_capacity(128));
        raw.extend_from_slice(fresh.signing.as_bytes());
        raw.extend_from_slice(&fresh.kem.to_bytes());
        raw.extend_from_slice(&fresh.pq.as_ref().expect("v2").to_bytes());
        let mut seed = Zeroizing::new([0u8; 32]);
        crate::random_bytes(seed.as_mut());
        raw.extend_from_slice(seed.as_ref());
        Self::from_raw(&raw).expect("a freshly drawn key is well formed")
    }

    /// Parses the secret text form (the content of a `.key` file).
    pub fn parse(text: &str) -> Result<Self, CryptoError> {
        let text = text.trim();
        let (body, len) = if let Some(body) = text.strip_prefix(KEY_V2) {
            (body, 96)
        } else if let Some(body) = text.strip_prefix(KEY_V3) {
            (body, 128)
        } else if let Some(body) = text.strip_prefix(KEY_V1) {
            (body, 64)
        } else {
            return Err(CryptoError::Encoding(
                "secret key must start with kura-key-v2: (or kura-key-v1:, kura-key-v3:)",
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

    /// 64 bytes (v1), 96 (v2) or 128 (v3): Ed25519 seed, X25519 secret, the X-Wing seed and
    /// the ML-DSA-65 seed.
    fn from_raw(raw: &[u8]) -> Result<Self, CryptoError> {
        let sign_seed: &[u8; 32] = raw[..32].try_into().expect("32 bytes");
        let signing = SigningKey::from_bytes(sign_seed);
        let kem = KemPrivate::from_bytes(&raw[32..64])
            .map_err(|_| CryptoError::Encoding("not an X25519 secret key"))?;
        let pq = match raw.get(64..raw.len().min(96)) {
            Some(seed) if !seed.is_empty() => Some(
                PqPrivate::from_bytes(seed)
                    .map_err(|_| CryptoError::Encoding("not an X-Wing seed"))?,
            ),
            _ => None,
        };
        let signs_pq = match raw.get(96..) {
            Some(seed) if !seed.is_empty() => {
                let seed: [u8; 32] = seed
                    .try_into()
                    .map_err(|_| CryptoError::Encoding("not an ML-DSA seed"))?;
                let seed = Zeroizing::new(seed);
                let key = MlDsaSigning::from_seed(&ml_dsa::Seed::from(*seed));
                Some((Box::new(key), seed))
            }
            _ => None,
        };
        let public = PublicIdentity {
            verifying: signing.verifying_key(),
            kem: ClassicKem::sk_to_pk(&kem),
            pq: pq.as_ref().map(PqKem::sk_to_pk),
            signs_pq: signs_pq.as_ref().map(|(key, _)| {
                ml_dsa::Keypair::verifying_key(key.as_ref())
                    .encode()
                    .to_vec()
            }),
        };
        Ok(Self {
            signing,
            kem,
            pq,
            signs_pq,
            public,
        })
    }

    /// The secret text form. The caller must write it to a file only it can read.
    pub fn to_text(&self) -> Zeroizing<String> {
        // Room for the longest form, so that no copy of the secrets is left by a reallocation.
        let mut raw = Zeroizing::new(Vec::with_capacity(128));
        raw.extend_from_slice(self.signing.as_bytes());
        raw.extend_from_slice(&self.kem.to_bytes());
        let mut prefix = match &self.pq {
            Some(pq) => {
                raw.extend_from_slice(&pq.to_bytes());
                KEY_V2
            }
            None => KEY_V1,
        };
        if let Some((_, seed)) = &self.signs_pq {
            raw.extend_from_slice(seed.as_ref());
            prefix = KEY_V3;
        }
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

    /// Signs `payload` for `domain` with ML-DSA-65 (deterministic variant, FIPS 204), if this
    /// identity has such a key (v3): the second half of a hybrid signature.
    pub fn sign_post_quantum(&self, domain: &str, payload: &[u8]) -> Option<Vec<u8>> {
        let (key, _) = self.signs_pq.as_ref()?;
        let sig = key
            .expanded_key()
            .sign_deterministic(&signed_message(domain, payload), &[])
            .expect("an empty context is within bounds, and signing succeeds");
        Some(sig.encode().to_vec())
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

    /// A v3 identity (the enclave's) round-trips through its text forms, and its hybrid
    /// signatures verify only with both halves, for their own domain and payload; a v2 key
    /// needs only the Ed25519 half.
    #[test]
    fn hybrid_signatures_need_both_halves() {
        let id = SecretIdentity::generate_post_quantum();
        assert!(id.to_text().starts_with(KEY_V3));
        assert!(id.public().to_text().starts_with(PUB_V3));
        let back = SecretIdentity::parse(&id.to_text()).unwrap();
        assert_eq!(back.public(), id.public());
        let public = PublicIdentity::parse(&id.public().to_text()).unwrap();
        assert_eq!(&public, id.public());
        assert!(public.signs_post_quantum() && public.receives(Kem::XWing));

        let ed = id.sign("tree-head", b"head");
        let pq = id.sign_post_quantum("tree-head", b"head").unwrap();
        assert_eq!(pq.len(), 3309, "ML-DSA-65 signatures are 3309 bytes");
        assert_eq!(back.sign_post_quantum("tree-head", b"head").unwrap(), pq);
        public
            .verify_hybrid("tree-head", b"head", &ed, Some(&pq))
            .unwrap();
        let refused = |pq: Option<&[u8]>, domain: &str, payload: &[u8]| {
            public.verify_hybrid(domain, payload, &ed, pq).unwrap_err()
        };
        assert_eq!(
            refused(None, "tree-head", b"head"),
            CryptoError::BadSignature
        );
        assert_eq!(
            refused(Some(&pq), "result", b"head"),
            CryptoError::BadSignature
        );
        assert_eq!(
            refused(Some(&pq), "tree-head", b"heat"),
            CryptoError::BadSignature
        );
        let mut flipped = pq.clone();
        flipped[100] ^= 1;
        assert_eq!(
            refused(Some(&flipped), "tree-head", b"head"),
            CryptoError::BadSignature
        );
        assert_eq!(
            refused(Some(&pq[..3000]), "tree-head", b"head"),
            CryptoError::BadSignature
        );
        let other = SecretIdentity::generate_post_quantum();
        let theirs = other.sign_post_quantum("tree-head", b"head").unwrap();
        assert_eq!(
            refused(Some(&theirs), "tree-head", b"head"),
            CryptoError::BadSignature
        );

        let v2 = SecretIdentity::generate();
        assert!(v2.sign_post_quantum("tree-head", b"head").is_none());
        let sig = v2.sign("tree-head", b"head");
        v2.public()
            .verify_hybrid("tree-head", b"head", &sig, None)
            .unwrap();
        assert!(!v2.public().signs_post_quantum());
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
