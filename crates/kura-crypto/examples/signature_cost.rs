//! What the enclave's hybrid signatures cost: time to sign and verify a tree head and a result
//! table with Ed25519 alone and with Ed25519 + ML-DSA-65, and the bytes each adds.
//!
//! `cargo run --release -p kura-crypto --example signature_cost` (docs/performance.md).

use std::time::Instant;

use kura_crypto::SecretIdentity;

/// Median of `runs` timings of `f`, in microseconds.
fn median_us(runs: usize, mut f: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[runs / 2]
}

fn main() {
    let runs = 200;
    let id = SecretIdentity::generate_post_quantum();
    let public = id.public();
    // A tree head's JSON names the enclave key: about 4.6 KB with a v3 key; a result table
    // runs from a few hundred bytes to megabytes (a model's ONNX file): 64 KiB stands for a
    // mid-sized one.
    let head = 250 + public.to_text().len();
    for (what, payload) in [
        ("tree head", vec![b'h'; head]),
        ("result", vec![b'r'; 64 << 10]),
    ] {
        let ed = id.sign("cost", &payload);
        let pq = id.sign_post_quantum("cost", &payload).expect("a v3 key");
        let ed_sign = median_us(runs, || {
            std::hint::black_box(id.sign("cost", &payload));
        });
        let pq_sign = median_us(runs, || {
            std::hint::black_box(id.sign_post_quantum("cost", &payload));
        });
        let ed_verify = median_us(runs, || {
            public.verify("cost", &payload, &ed).expect("verifies");
        });
        let hybrid_verify = median_us(runs, || {
            public
                .verify_hybrid("cost", &payload, &ed, Some(&pq))
                .expect("verifies");
        });
        println!(
            "{what} ({} bytes): sign Ed25519 {ed_sign:.0} µs, + ML-DSA-65 {pq_sign:.0} µs; \
             verify Ed25519 {ed_verify:.0} µs, hybrid {hybrid_verify:.0} µs",
            payload.len()
        );
    }
    let ed = id.sign("cost", b"x");
    let pq = id.sign_post_quantum("cost", b"x").expect("a v3 key");
    println!(
        "sizes: Ed25519 signature {} bytes, ML-DSA-65 {} bytes ({} in base64); enclave key text \
         {} characters (v3) against {} (v2)",
        ed.len(),
        pq.len(),
        kura_crypto::b64::encode(&pq).len(),
        public.to_text().len(),
        SecretIdentity::generate().public().to_text().len(),
    );
}
