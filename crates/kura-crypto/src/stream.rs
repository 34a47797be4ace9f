//! The chunked AEAD stream that carries bulk data (datasets) from a provider to the enclave.
//!
//! AES-256-GCM (from `ring`) under a fresh, single-use 256-bit data key, in the STREAM
//! construction (Hoang, Reyhanitabar, Rogaway, Vizár, "Online Authenticated-Encryption and its
//! Nonce-Reuse Misuse-Resistance", CRYPTO 2015): chunk `i` is sealed with nonce
//! `0x000000 || i (u64, big endian) || last`, where `last` is 1 only on the final chunk. So:
//! - reordering or dropping chunks changes the nonce a chunk is opened with, and fails;
//! - truncating the stream leaves it without a chunk sealed as final, which the decoder
//!   refuses at the end;
//! - chunks from another stream fail because every stream has its own key, and every chunk
//!   also authenticates a caller-supplied context (contract, dataset, enclave key).
//!
//! Wire frame: `flag (u8: 0 more, 1 last) || length (u32 BE, ciphertext + tag) || ciphertext`.
//! The flag is a hint for framing only; the authenticated copy lives in the nonce.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use zeroize::Zeroizing;

use crate::CryptoError;

/// Plaintext bytes per chunk unless the caller chooses otherwise.
pub const DEFAULT_CHUNK_SIZE: usize = 1 << 20;
/// The decoder refuses frames larger than this, so a hostile sender cannot make it allocate
/// without bound.
pub const MAX_CHUNK_SIZE: usize = 16 << 20;
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;
const FRAME_HEADER: usize = 5;

/// A single-use 256-bit data key. Zeroized on drop.
///
/// Not `Clone`: a [`StreamEncoder`] takes its key, so that one key can never start two streams
/// whose chunk counters (the AEAD nonces) would repeat.
pub struct DataKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(<secret>)")
    }
}

impl DataKey {
    pub fn generate() -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        crate::random_bytes(key.as_mut());
        Self(key)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| CryptoError::Encoding("data key must be 32 bytes"))?;
        Ok(Self(Zeroizing::new(arr)))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn aead(&self) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, self.0.as_ref()).expect("32-byte key"))
    }
}

fn nonce(counter: u64, last: bool) -> Nonce {
    let mut n = [0u8; 12];
    n[3..11].copy_from_slice(&counter.to_be_bytes());
    n[11] = u8::from(last);
    Nonce::assume_unique_for_key(n)
}

/// The frame header at the start of `buf`, checked: `(last, ciphertext length)`, or `None` if
/// fewer than its 5 bytes have arrived. A length is refused before anything is allocated for it.
fn header(buf: &[u8]) -> Result<Option<(bool, usize)>, CryptoError> {
    if buf.len() < FRAME_HEADER {
        return Ok(None);
    }
    let last = match buf[0] {
        0 => false,
        1 => true,
        _ => return Err(CryptoError::Stream("bad frame flag")),
    };
    let len = u32::from_be_bytes(buf[1..5].try_into().expect("4 bytes")) as usize;
    if !(TAG_LEN..=MAX_CHUNK_SIZE + TAG_LEN).contains(&len) {
        return Err(CryptoError::Stream("bad frame length"));
    }
    Ok(Some((last, len)))
}

/// Seals plaintext chunks into wire frames.
pub struct StreamEncoder {
    key: LessSafeKey,
    context: Vec<u8>,
    counter: u64,
    finished: bool,
}

impl std::fmt::Debug for StreamEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamEncoder")
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

impl StreamEncoder {
    /// The one encoder of `key`, which it consumes.
    pub fn new(key: DataKey, context: &[u8]) -> Self {
        Self {
            key: key.aead(),
            context: context.to_vec(),
            counter: 0,
            finished: false,
        }
    }

    /// Appends the frame for `plaintext` to `out`. After a chunk with `last = true` the encoder
    /// refuses further chunks.
    pub fn seal_chunk(
        &mut self,
        plaintext: &[u8],
        last: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        if self.finished {
            return Err(CryptoError::Stream("chunk after the final chunk"));
        }
        if plaintext.len() > MAX_CHUNK_SIZE {
            return Err(CryptoError::Stream("chunk larger than the maximum"));
        }
        out.push(u8::from(last));
        out.extend_from_slice(&((plaintext.len() + TAG_LEN) as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(plaintext);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                nonce(self.counter, last),
                Aad::from(&self.context),
                &mut out[start..],
            )
            .map_err(|_| CryptoError::Encrypt)?;
        out.extend_from_slice(tag.as_ref());
        self.counter += 1;
        self.finished = last;
        Ok(())
    }
}

/// Incrementally parses and opens wire frames from arbitrarily split input.
pub struct StreamDecoder {
    key: LessSafeKey,
    context: Vec<u8>,
    counter: u64,
    finished: bool,
    pending: Vec<u8>,
}

impl std::fmt::Debug for StreamDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamDecoder")
            .field("counter", &self.counter)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl StreamDecoder {
    pub fn new(key: &DataKey, context: &[u8]) -> Self {
        Self {
            key: key.aead(),
            context: context.to_vec(),
            counter: 0,
            finished: false,
            pending: Vec::new(),
        }
    }

    /// Feeds received bytes; every complete chunk is authenticated, decrypted and appended to
    /// `plaintext`. On error nothing of the failing chunk is appended.
    ///
    /// Plaintext this call appends is never left behind in freed memory: when `plaintext` must
    /// grow, the old allocation is zeroized after the move.
    ///
    /// A frame that arrives in pieces is gathered in a buffer kept across frames and opened in
    /// place; when `plaintext` is empty and too small to hold it, the buffer itself is handed
    /// over (swapped with `plaintext`), so such a frame is copied once, not twice.
    pub fn push(&mut self, mut input: &[u8], plaintext: &mut Vec<u8>) -> Result<(), CryptoError> {
        while !input.is_empty() {
            if self.finished {
                return Err(CryptoError::Stream("data after the final chunk"));
            }
            // Fast path: whole frames straight from `input` without buffering.
            if self.pending.is_empty()
                && let Some(used) = self.try_frame(input, plaintext)?
            {
                input = &input[used..];
                continue;
            }
            let need = match header(&self.pending)? {
                Some((_, len)) => FRAME_HEADER + len,
                None => FRAME_HEADER,
            };
            let take = (need - self.pending.len()).min(input.len());
            self.pending.reserve_exact(need - self.pending.len());
            self.pending.extend_from_slice(&input[..take]);
            input = &input[take..];
            if let Some((last, len)) = header(&self.pending)?
                && self.pending.len() == FRAME_HEADER + len
            {
                self.open_pending(last, plaintext)?;
            }
        }
        Ok(())
    }

    /// Opens the complete frame gathered in `pending`.
    fn open_pending(&mut self, last: bool, plaintext: &mut Vec<u8>) -> Result<(), CryptoError> {
        let mut frame = std::mem::take(&mut self.pending);
        let opened = self.key.open_within(
            nonce(self.counter, last),
            Aad::from(&self.context),
            &mut frame,
            FRAME_HEADER..,
        );
        let n = match opened {
            Ok(pt) => pt.len(),
            Err(_) => {
                zeroize::Zeroize::zeroize(&mut frame);
                self.pending = frame;
                return Err(CryptoError::Decrypt);
            }
        };
        frame.truncate(n);
        if plaintext.is_empty() && plaintext.capacity() < n {
            // Hand the opened buffer over; keep the caller's (empty) one for the next frame. A
            // caller's buffer with room enough is filled instead: it was sized for a purpose.
            std::mem::swap(plaintext, &mut frame);
        } else {
            crate::extend_zeroizing(plaintext, &frame);
            zeroize::Zeroize::zeroize(frame.as_mut_slice());
        }
        frame.clear();
        self.pending = frame;
        self.counter += 1;
        self.finished = last;
        Ok(())
    }

    /// Opens one frame at the start of `buf` if it is complete; returns the bytes it used.
    fn try_frame(
        &mut self,
        buf: &[u8],
        plaintext: &mut Vec<u8>,
    ) -> Result<Option<usize>, CryptoError> {
        let Some((last, len)) = header(buf)? else {
            return Ok(None);
        };
        if buf.len() < FRAME_HEADER + len {
            return Ok(None);
        }
        let start = plaintext.len();
        crate::extend_zeroizing(plaintext, &buf[FRAME_HEADER..FRAME_HEADER + len]);
        let opened = self.key.open_in_place(
            nonce(self.counter, last),
            Aad::from(&self.context),
            &mut plaintext[start..],
        );
        match opened {
            Ok(pt) => {
                let pt_len = pt.len();
                plaintext.truncate(start + pt_len);
            }
            Err(_) => {
                zeroize::Zeroize::zeroize(&mut plaintext[start..]);
                plaintext.truncate(start);
                return Err(CryptoError::Decrypt);
            }
        }
        self.counter += 1;
        self.finished = last;
        Ok(Some(FRAME_HEADER + len))
    }

    /// Call at the end of input: fails unless the final chunk was seen and nothing is left over.
    pub fn finish(&self) -> Result<(), CryptoError> {
        if !self.finished || !self.pending.is_empty() {
            return Err(CryptoError::Truncated);
        }
        Ok(())
    }

    /// Number of chunks opened so far.
    pub fn chunks(&self) -> u64 {
        self.counter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(key: &DataKey, ctx: &[u8], data: &[u8], chunk: usize) -> (Vec<u8>, Vec<usize>) {
        // Tests decode what they encoded, so they keep a copy of the key.
        let mut enc = StreamEncoder::new(DataKey::from_bytes(key.as_bytes()).unwrap(), ctx);
        let mut out = Vec::new();
        let mut offsets = vec![];
        let pieces: Vec<&[u8]> = if data.is_empty() {
            vec![&[]]
        } else {
            data.chunks(chunk).collect()
        };
        for (i, piece) in pieces.iter().enumerate() {
            offsets.push(out.len());
            enc.seal_chunk(piece, i + 1 == pieces.len(), &mut out)
                .unwrap();
        }
        (out, offsets)
    }

    fn decode(
        key: &DataKey,
        ctx: &[u8],
        wire: &[u8],
        split: usize,
    ) -> Result<Vec<u8>, CryptoError> {
        let mut dec = StreamDecoder::new(key, ctx);
        let mut out = Vec::new();
        for part in wire.chunks(split.max(1)) {
            dec.push(part, &mut out)?;
        }
        dec.finish()?;
        Ok(out)
    }

    fn sample(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn round_trip_with_any_split() {
        let key = DataKey::generate();
        for len in [0, 1, 99, 100, 101, 1000] {
            let data = sample(len);
            let (wire, _) = encode(&key, b"ctx", &data, 100);
            for split in [1, 3, 7, 105, 4096] {
                assert_eq!(
                    decode(&key, b"ctx", &wire, split).unwrap(),
                    data,
                    "len {len} split {split}"
                );
                // As the enclave consumes it: the output emptied after every push, so that
                // buffered frames are handed over instead of copied.
                let mut dec = StreamDecoder::new(&key, b"ctx");
                let (mut out, mut all) = (Vec::new(), Vec::new());
                for part in wire.chunks(split) {
                    dec.push(part, &mut out).unwrap();
                    all.extend_from_slice(&out);
                    out.clear();
                }
                dec.finish().unwrap();
                assert_eq!(all, data, "drained, len {len} split {split}");
            }
        }
    }

    #[test]
    fn truncation_is_detected() {
        let key = DataKey::generate();
        let (wire, offsets) = encode(&key, b"ctx", &sample(1000), 100);
        // Cut exactly at a frame boundary: every frame opens, but the final one never came.
        let cut = &wire[..offsets[5]];
        assert_eq!(decode(&key, b"ctx", cut, 4096), Err(CryptoError::Truncated));
        // Cut inside a frame.
        assert_eq!(
            decode(&key, b"ctx", &wire[..wire.len() - 3], 4096),
            Err(CryptoError::Truncated)
        );
        assert_eq!(decode(&key, b"ctx", &[], 1), Err(CryptoError::Truncated));
    }

    #[test]
    fn reordering_and_dropping_chunks_fail() {
        let key = DataKey::generate();
        let (wire, o) = encode(&key, b"ctx", &sample(300), 100);
        let frames: Vec<&[u8]> = vec![&wire[o[0]..o[1]], &wire[o[1]..o[2]], &wire[o[2]..]];
        let swapped = [frames[1], frames[0], frames[2]].concat();
        assert_eq!(
            decode(&key, b"ctx", &swapped, 4096),
            Err(CryptoError::Decrypt)
        );
        let dropped = [frames[0], frames[2]].concat();
        assert_eq!(
            decode(&key, b"ctx", &dropped, 4096),
            Err(CryptoError::Decrypt)
        );
        // Marking a middle chunk as last (flag flip) fails: the flag is in the nonce.
        let mut flagged = frames[0].to_vec();
        flagged[0] = 1;
        assert_eq!(
            decode(&key, b"ctx", &flagged, 4096),
            Err(CryptoError::Decrypt)
        );
    }

    #[test]
    fn chunks_from_another_stream_or_context_fail() {
        let key = DataKey::generate();
        let other = DataKey::generate();
        let (a, oa) = encode(&key, b"ctx", &sample(200), 100);
        let (b, ob) = encode(&other, b"ctx", &sample(200), 100);
        let mixed = [&a[..oa[1]], &b[ob[1]..]].concat();
        assert_eq!(
            decode(&key, b"ctx", &mixed, 4096),
            Err(CryptoError::Decrypt)
        );
        assert_eq!(decode(&key, b"other", &a, 4096), Err(CryptoError::Decrypt));
    }

    #[test]
    fn bit_flips_anywhere_fail() {
        let key = DataKey::generate();
        let (wire, _) = encode(&key, b"ctx", &sample(250), 100);
        for i in 0..wire.len() {
            let mut bad = wire.clone();
            bad[i] ^= 0x20;
            assert!(
                decode(&key, b"ctx", &bad, 4096).is_err(),
                "flip at byte {i} went unnoticed"
            );
        }
    }

    #[test]
    fn trailing_data_and_huge_frames_are_refused() {
        let key = DataKey::generate();
        let (mut wire, _) = encode(&key, b"ctx", &sample(10), 100);
        wire.push(0);
        assert!(decode(&key, b"ctx", &wire, 4096).is_err());
        let mut dec = StreamDecoder::new(&key, b"ctx");
        let huge = [0u8, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(
            dec.push(&huge, &mut Vec::new()),
            Err(CryptoError::Stream("bad frame length"))
        );
    }
}
