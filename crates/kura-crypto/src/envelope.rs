//! HPKE (RFC 9180) base mode with HKDF-SHA256 and ChaCha20Poly1305, and one of two KEMs
//! ([`Kem`]): X-Wing (ML-KEM-768 + X25519, the default) or DHKEM(X25519, HKDF-SHA256).
//!
//! Used to wrap per-dataset data keys to the enclave and results to their receivers, and (in
//! [`crate::channel`]) every request to the enclave. `info` names the purpose and context
//! (contract, dataset, run), so a ciphertext made for one context cannot be opened as another.

use hpke::{Deserializable, OpModeR, OpModeS, Serializable};
use serde::{Deserialize, Serialize};

use crate::identity::{ClassicKem, Kem, PqKem};
use crate::{CryptoError, PublicIdentity, SecretIdentity};

pub(crate) type Aead = hpke::aead::ChaCha20Poly1305;
pub(crate) type Kdf = hpke::kdf::HkdfSha256;

/// An HPKE ciphertext: the encapsulated key and the AEAD ciphertext (with tag).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    #[serde(with = "crate::b64::serde_bytes")]
    pub enc: Vec<u8>,
    #[serde(with = "crate::b64::serde_bytes")]
    pub ct: Vec<u8>,
}

/// Encrypts `plaintext` to `recipient` with `kem`.
pub fn seal(
    recipient: &PublicIdentity,
    kem: Kem,
    info: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Sealed, CryptoError> {
    fn with<K: hpke::Kem>(
        pk: &K::PublicKey,
        info: &[u8],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Sealed, CryptoError> {
        let (enc, ct) =
            hpke::single_shot_seal::<Aead, Kdf, K>(&OpModeS::Base, pk, info, plaintext, aad)
                .map_err(|_| CryptoError::Encrypt)?;
        Ok(Sealed {
            enc: enc.to_bytes().to_vec(),
            ct,
        })
    }
    match kem {
        Kem::XWing => with::<PqKem>(recipient.pq()?, info, aad, plaintext),
        Kem::X25519 => with::<ClassicKem>(recipient.kem(), info, aad, plaintext),
    }
}

/// Decrypts a [`Sealed`] addressed to `me` with the same `kem`, `info` and `aad`.
pub fn open(
    me: &SecretIdentity,
    kem: Kem,
    info: &[u8],
    aad: &[u8],
    sealed: &Sealed,
) -> Result<zeroize::Zeroizing<Vec<u8>>, CryptoError> {
    match kem {
        Kem::XWing => open_raw::<PqKem>(me.pq()?, info, aad, &sealed.enc, &sealed.ct),
        Kem::X25519 => open_raw::<ClassicKem>(me.kem(), info, aad, &sealed.enc, &sealed.ct),
    }
}

fn open_raw<K: hpke::Kem>(
    sk: &K::PrivateKey,
    info: &[u8],
    aad: &[u8],
    enc: &[u8],
    ct: &[u8],
) -> Result<zeroize::Zeroizing<Vec<u8>>, CryptoError> {
    let enc = K::EncappedKey::from_bytes(enc).map_err(|_| CryptoError::Decrypt)?;
    hpke::single_shot_open::<Aead, Kdf, K>(&OpModeR::Base, sk, &enc, info, ct, aad)
        .map(zeroize::Zeroizing::new)
        .map_err(|_| CryptoError::Decrypt)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 9180 Appendix A.2.1 (base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
    /// ChaCha20Poly1305), first encryption (sequence number 0).
    #[test]
    fn rfc9180_a2_base_vector_opens() {
        let info = unhex("4f6465206f6e2061204772656369616e2055726e");
        let sk_rm = unhex("8057991eef8f1f1af18f4a9491d16a1ce333f695d4db8e38da75975c4478e0fb");
        let pk_rm = unhex("4310ee97d88cc1f088a5576c77ab0cf5c3ac797f3d95139c6c84b5429c59662a");
        let enc = unhex("1afa08d3dec047a643885163f1180476fa7ddb54c6a8029ea33f95796bf2ac4a");
        let pt = unhex("4265617574792069732074727574682c20747275746820626561757479");
        let aad = unhex("436f756e742d30");
        let ct = unhex(
            "1c5250d8034ec2b784ba2cfd69dbdb8af406cfe3ff938e131f0def8c8b\
             60b4db21993c62ce81883d2dd1b51a28",
        );

        let sk = crate::identity::KemPrivate::from_bytes(&sk_rm).unwrap();
        let pk = <ClassicKem as hpke::Kem>::sk_to_pk(&sk);
        assert_eq!(pk.to_bytes().to_vec(), pk_rm);
        let open_raw = open_raw::<ClassicKem>;
        let opened = open_raw(&sk, &info, &aad, &enc, &ct).unwrap();
        assert_eq!(opened.as_slice(), pt.as_slice());

        // One flipped bit anywhere in the ciphertext or the context must fail.
        let mut bad = ct.clone();
        bad[0] ^= 1;
        assert_eq!(
            open_raw(&sk, &info, &aad, &enc, &bad).unwrap_err(),
            CryptoError::Decrypt
        );
        assert!(open_raw(&sk, b"other info", &aad, &enc, &ct).is_err());
        assert!(open_raw(&sk, &info, b"other aad", &enc, &ct).is_err());
    }

    #[test]
    fn seal_open_round_trip_and_wrong_recipient_or_kem() {
        let alice = SecretIdentity::generate();
        let eve = SecretIdentity::generate();
        for (kem, other) in [(Kem::XWing, Kem::X25519), (Kem::X25519, Kem::XWing)] {
            let sealed = seal(alice.public(), kem, b"ctx", b"aad", b"secret").unwrap();
            assert_eq!(
                open(&alice, kem, b"ctx", b"aad", &sealed)
                    .unwrap()
                    .as_slice(),
                b"secret"
            );
            assert_eq!(
                open(&eve, kem, b"ctx", b"aad", &sealed).unwrap_err(),
                CryptoError::Decrypt
            );
            // Sealed with one KEM, never opened as the other.
            assert_eq!(
                open(&alice, other, b"ctx", b"aad", &sealed).unwrap_err(),
                CryptoError::Decrypt
            );
        }
        // The X-Wing encapsulation is the hybrid one (1120 bytes), not X25519's 32.
        let sealed = seal(alice.public(), Kem::XWing, b"", b"", b"x").unwrap();
        assert_eq!(sealed.enc.len(), 1120);
    }

    #[test]
    fn a_v1_key_cannot_receive_the_post_quantum_suite() {
        let raw = crate::b64::decode(&SecretIdentity::generate().to_text()[12..]).unwrap();
        let v1 = SecretIdentity::parse(&format!("kura-key-v1:{}", crate::b64::encode(&raw[..64])))
            .unwrap();
        assert_eq!(
            seal(v1.public(), Kem::XWing, b"", b"", b"x").unwrap_err(),
            CryptoError::NoPqKey
        );
    }
}
