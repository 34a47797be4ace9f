//! The upload stream decoder on streams whose frames authenticate: a real stream of the input's
//! plaintext, cut into chunks of the input's size, then (as the input says) left alone or
//! attacked: one bit flipped, cut short, two frames swapped, one dropped or repeated. Split
//! anywhere, an intact stream decodes to exactly its plaintext; an attacked one never decodes.
#![no_main]

use kura_crypto::{DataKey, StreamDecoder, StreamEncoder};

const KEY: [u8; 32] = [7; 32];

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let (head, plain) = data.split_at(5);
    let chunk = 1 + usize::from(head[0]) * 8;
    let at = usize::from(u16::from_le_bytes([head[2], head[3]]));
    let split = usize::from(head[4]).max(1);

    let mut encoder = StreamEncoder::new(DataKey::from_bytes(&KEY).unwrap(), b"fuzz");
    let pieces: Vec<&[u8]> = if plain.is_empty() {
        vec![&[]]
    } else {
        plain.chunks(chunk).collect()
    };
    let mut frames: Vec<Vec<u8>> = pieces
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut f = Vec::new();
            encoder
                .seal_chunk(p, i + 1 == pieces.len(), &mut f)
                .unwrap();
            f
        })
        .collect();
    let n = frames.len();
    let mut wire: Vec<u8>;
    let attacked = match head[1] % 6 {
        0 => {
            wire = frames.concat();
            false
        }
        1 => {
            wire = frames.concat();
            let i = at % wire.len();
            wire[i] ^= 1 << (head[4] % 8);
            true
        }
        2 => {
            wire = frames.concat();
            wire.truncate(at % wire.len());
            true
        }
        3 if n > 1 => {
            let (i, j) = (at % n, (at / n + 1 + at % n) % n);
            if i == j {
                return;
            }
            frames.swap(i, j);
            wire = frames.concat();
            true
        }
        4 if n > 1 => {
            frames.remove(at % n);
            wire = frames.concat();
            true
        }
        5 => {
            let i = at % n;
            frames.insert(i, frames[i].clone());
            wire = frames.concat();
            true
        }
        _ => return,
    };

    let key = DataKey::from_bytes(&KEY).unwrap();
    let mut decoder = StreamDecoder::new(&key, b"fuzz");
    let mut out = Vec::new();
    let mut result = Ok(());
    for part in wire.chunks(split) {
        result = decoder.push(part, &mut out);
        if result.is_err() {
            break;
        }
    }
    let result = result.and_then(|()| decoder.finish());
    if attacked {
        assert!(result.is_err(), "an attacked stream decoded");
    } else {
        result.expect("an intact stream must decode");
        assert_eq!(out, plain, "an intact stream decoded to other bytes");
    }
});
