/// Why a cryptographic operation failed. Never carries secret material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CryptoError {
    #[error("malformed encoding: {0}")]
    Encoding(&'static str),
    #[error("signature does not verify")]
    BadSignature,
    #[error("decryption failed: the ciphertext was altered, or is not for this key or context")]
    Decrypt,
    #[error("encryption failed")]
    Encrypt,
    #[error(
        "the key has no post-quantum (X-Wing) part: it is a kura-pub-v1 key; make a new one with \
         `kura keys new`, or pin the classic suite with [crypto] kem = \"x25519\""
    )]
    NoPqKey,
    #[error("encrypted stream is malformed: {0}")]
    Stream(&'static str),
    #[error("encrypted stream ended before its final chunk: the upload was truncated or cut short")]
    Truncated,
}
