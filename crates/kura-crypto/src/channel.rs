//! The encrypted channel between a party and the attested enclave.
//!
//! A request is HPKE-sealed to the enclave key ([`seal_request`]); the enclave opens it
//! ([`open_request`]). Both sides then hold the same [`AnswerKey`], exported from the HPKE
//! context (RFC 9180 §5.3), under which the enclave encrypts its answers: only the holder of the
//! attested key can read the request, and only the party that sent it can read the answer. The
//! host between them sees sizes and timing, nothing else: every plaintext is padded to a bucket
//! ([`padded_len`]) so that a refusal and a small answer, or two result sizes within a bucket,
//! look the same.
//!
//! Wire forms: a request is `enc || ct` (the KEM's fixed-size encapsulation, then the AEAD
//! ciphertext); an answer is the AEAD ciphertext alone. An answer key encrypts a fixed, small
//! number of answers, each under its own sequence number as nonce (an upload's ticket is 0, its
//! receipt 1): an answer moved to another position does not open.

use hpke::{Deserializable, OpModeR, OpModeS, Serializable};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use zeroize::Zeroizing;

use crate::envelope::{Aead, Kdf};
use crate::identity::{ClassicKem, Kem, PqKem};
use crate::{CryptoError, PublicIdentity, SecretIdentity};

/// Exporter context of the answer key.
const ANSWER_LABEL: &[u8] = b"kura-answer-v1";
/// Smallest padded plaintext.
const MIN_BUCKET: usize = 1024;
/// Above this, plaintexts are padded to a multiple of it rather than to a power of two.
const LINEAR_BUCKET: usize = 1 << 20;

/// The length a plaintext of `len` bytes is padded to (4 bytes of length included): powers of
/// two from 1 KiB to 1 MiB, then multiples of 1 MiB. At most twice the size below 1 MiB, at most
/// 1 MiB more above.
pub fn padded_len(len: usize) -> usize {
    let need = len.saturating_add(4);
    if need <= LINEAR_BUCKET {
        need.max(MIN_BUCKET).next_power_of_two()
    } else {
        need.div_ceil(LINEAR_BUCKET).saturating_mul(LINEAR_BUCKET)
    }
}

/// The longest sealed request with at most `plaintext` bytes: the padded plaintext, the largest
/// encapsulation of the KEMs kura uses, and the tag.
pub fn max_request_len(plaintext: usize) -> usize {
    let enc = <PqKem as hpke::Kem>::EncappedKey::size()
        .max(<ClassicKem as hpke::Kem>::EncappedKey::size());
    padded_len(plaintext) + enc + 16
}

fn pad(plaintext: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let len = u32::try_from(plaintext.len()).map_err(|_| CryptoError::Encrypt)?;
    let mut out = Zeroizing::new(Vec::with_capacity(padded_len(plaintext.len())));
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(plaintext);
    out.resize(padded_len(plaintext.len()), 0);
    Ok(out)
}

fn unpad(mut padded: Zeroizing<Vec<u8>>) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let len = padded
        .get(..4)
        .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize)
        .ok_or(CryptoError::Decrypt)?;
    if padded.len() < 4 + len {
        return Err(CryptoError::Decrypt);
    }
    padded.copy_within(4..4 + len, 0);
    padded.truncate(len);
    Ok(padded)
}

/// The key the enclave's answers to one request are encrypted under. Zeroized on drop.
pub struct AnswerKey(LessSafeKey);

impl std::fmt::Debug for AnswerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AnswerKey(<secret>)")
    }
}

impl AnswerKey {
    fn exported(export: impl FnOnce(&mut [u8]) -> Result<(), hpke::HpkeError>) -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        export(key.as_mut()).expect("32 bytes is within HPKE's export limit");
        Self(LessSafeKey::new(
            UnboundKey::new(&CHACHA20_POLY1305, key.as_ref()).expect("32-byte key"),
        ))
    }

    fn nonce(seq: u64) -> Nonce {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&seq.to_be_bytes());
        Nonce::assume_unique_for_key(n)
    }

    /// The enclave's half: answer number `seq` to this request, padded and encrypted. Each `seq`
    /// must be used once.
    pub fn seal(&self, seq: u64, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut buf = pad(plaintext)?.to_vec();
        self.0
            .seal_in_place_append_tag(Self::nonce(seq), Aad::empty(), &mut buf)
            .map_err(|_| CryptoError::Encrypt)?;
        Ok(buf)
    }

    /// The party's half: opens answer number `seq`.
    pub fn open(&self, seq: u64, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let mut buf = Zeroizing::new(ciphertext.to_vec());
        let len = self
            .0
            .open_in_place(Self::nonce(seq), Aad::empty(), &mut buf)
            .map_err(|_| CryptoError::Decrypt)?
            .len();
        buf.truncate(len);
        unpad(buf)
    }
}

/// The party's half: `plaintext` padded and sealed to `enclave` with `kem` under `info`; returns
/// the message to send and the key the answers will come under.
pub fn seal_request(
    enclave: &PublicIdentity,
    kem: Kem,
    info: &[u8],
    plaintext: &[u8],
) -> Result<(Vec<u8>, AnswerKey), CryptoError> {
    fn with<K: hpke::Kem>(
        pk: &K::PublicKey,
        info: &[u8],
        padded: &[u8],
    ) -> Result<(Vec<u8>, AnswerKey), CryptoError> {
        let (enc, mut ctx) = hpke::setup_sender::<Aead, Kdf, K>(&OpModeS::Base, pk, info)
            .map_err(|_| CryptoError::Encrypt)?;
        let ct = ctx.seal(padded, b"").map_err(|_| CryptoError::Encrypt)?;
        let mut message = enc.to_bytes().to_vec();
        message.extend_from_slice(&ct);
        Ok((
            message,
            AnswerKey::exported(|k| ctx.export(ANSWER_LABEL, k)),
        ))
    }
    let padded = pad(plaintext)?;
    match kem {
        Kem::XWing => with::<PqKem>(enclave.pq()?, info, &padded),
        Kem::X25519 => with::<ClassicKem>(enclave.kem(), info, &padded),
    }
}

/// The enclave's half: opens a request sealed with `kem` under `info`; returns its plaintext
/// and the key to encrypt the answers under.
pub fn open_request(
    me: &SecretIdentity,
    kem: Kem,
    info: &[u8],
    message: &[u8],
) -> Result<(Zeroizing<Vec<u8>>, AnswerKey), CryptoError> {
    fn with<K: hpke::Kem>(
        sk: &K::PrivateKey,
        info: &[u8],
        message: &[u8],
    ) -> Result<(Zeroizing<Vec<u8>>, AnswerKey), CryptoError> {
        let n = K::EncappedKey::size();
        if message.len() < n {
            return Err(CryptoError::Decrypt);
        }
        let (enc, ct) = message.split_at(n);
        let enc = K::EncappedKey::from_bytes(enc).map_err(|_| CryptoError::Decrypt)?;
        let mut ctx = hpke::setup_receiver::<Aead, Kdf, K>(&OpModeR::Base, sk, &enc, info)
            .map_err(|_| CryptoError::Decrypt)?;
        let padded = Zeroizing::new(ctx.open(ct, b"").map_err(|_| CryptoError::Decrypt)?);
        let key = AnswerKey::exported(|k| ctx.export(ANSWER_LABEL, k));
        Ok((unpad(padded)?, key))
    }
    match kem {
        Kem::XWing => with::<PqKem>(me.pq()?, info, message),
        Kem::X25519 => with::<ClassicKem>(me.kem(), info, message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_request_and_its_answers_open_only_at_their_ends_and_places() {
        let enclave = SecretIdentity::generate();
        let eve = SecretIdentity::generate();
        for kem in [Kem::XWing, Kem::X25519] {
            let (message, party_key) =
                seal_request(enclave.public(), kem, b"ctx", b"SELECT 1").unwrap();
            let (plain, enclave_key) = open_request(&enclave, kem, b"ctx", &message).unwrap();
            assert_eq!(plain.as_slice(), b"SELECT 1");
            // Another key, another context, the other KEM, or one flipped bit: nothing opens.
            assert!(open_request(&eve, kem, b"ctx", &message).is_err());
            assert!(open_request(&enclave, kem, b"other", &message).is_err());
            let other = if kem == Kem::XWing {
                Kem::X25519
            } else {
                Kem::XWing
            };
            assert!(open_request(&enclave, other, b"ctx", &message).is_err());
            let mut bad = message.clone();
            *bad.last_mut().unwrap() ^= 1;
            assert!(open_request(&enclave, kem, b"ctx", &bad).is_err());

            let answer = enclave_key.seal(0, b"{\"ok\":1}").unwrap();
            assert_eq!(
                party_key.open(0, &answer).unwrap().as_slice(),
                b"{\"ok\":1}"
            );
            // An answer moved to another position, or to another request, does not open.
            assert!(party_key.open(1, &answer).is_err());
            let (_, other_request) = seal_request(enclave.public(), kem, b"ctx", b"x").unwrap();
            assert!(other_request.open(0, &answer).is_err());
        }
    }

    #[test]
    fn sizes_show_only_the_bucket() {
        let enclave = SecretIdentity::generate();
        let (_, key) = seal_request(enclave.public(), Kem::XWing, b"", b"").unwrap();
        let refusal = key.seal(0, b"{\"refused\":\"min-group-size\"}").unwrap();
        let answer = key.seal(1, &[b'x'; 900]).unwrap();
        assert_eq!(refusal.len(), answer.len());
        let (small, _) = seal_request(enclave.public(), Kem::XWing, b"", b"a").unwrap();
        let (large, _) = seal_request(enclave.public(), Kem::XWing, b"", &[b'a'; 1000]).unwrap();
        assert_eq!(small.len(), large.len());
        // The bound the enclave reads calls up to is exact for the post-quantum KEM.
        assert_eq!(large.len(), max_request_len(1000));
        let (classic, _) = seal_request(enclave.public(), Kem::X25519, b"", &[b'a'; 1000]).unwrap();
        assert!(classic.len() < max_request_len(1000));
    }

    proptest! {
        #[test]
        fn padding_round_trips_and_stays_within_its_bound(len in 0usize..3 << 20) {
            let plain = vec![7u8; len];
            let padded = pad(&plain).unwrap();
            prop_assert_eq!(padded.len(), padded_len(len));
            prop_assert!(padded.len() >= len + 4);
            prop_assert!(padded.len() <= (2 * (len + 4)).max(MIN_BUCKET).max(len + 4 + LINEAR_BUCKET));
            let back = unpad(padded).unwrap();
            prop_assert_eq!(back.as_slice(), plain.as_slice());
        }

        #[test]
        fn a_forged_length_never_reads_past_the_buffer(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(out) = unpad(Zeroizing::new(bytes.clone())) {
                prop_assert!(out.len() + 4 <= bytes.len());
            }
        }
    }
}
