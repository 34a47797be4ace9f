//! The upload stream decoder, fed arbitrary bytes split arbitrarily, never panics and never
//! yields plaintext that was not sealed under its key.
#![no_main]

use kura_crypto::{DataKey, StreamDecoder};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let key = DataKey::from_bytes(&[7u8; 32]).unwrap();
    let mut decoder = StreamDecoder::new(&key, b"fuzz");
    let mut out = Vec::new();
    let split = data.first().map_or(1, |b| usize::from(*b).max(1));
    for part in data.chunks(split) {
        if decoder.push(part, &mut out).is_err() {
            return;
        }
    }
    let _ = decoder.finish();
    assert!(out.is_empty(), "random bytes decrypted under a fixed key");
});
