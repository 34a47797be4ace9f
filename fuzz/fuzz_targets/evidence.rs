//! Every platform's evidence parser and verifier, on arbitrary bytes: no panic, and nothing
//! verifies (there is no valid signature to find). The first byte picks the platform.
#![no_main]

use kura_attestation::{Evidence, VerifyOptions, verifier_for};
use kura_contract::Platform;

const PLATFORMS: [Platform; 5] = [
    Platform::Simulated,
    Platform::SevSnp,
    Platform::Tdx,
    Platform::Sgx,
    Platform::Nitro,
];

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((first, rest)) = data.split_first() else {
        return;
    };
    let platform = PLATFORMS[usize::from(*first) % PLATFORMS.len()];
    let options = VerifyOptions {
        certs: vec![rest.to_vec()],
        collateral: Some(rest.to_vec()),
        ..Default::default()
    };
    if let Ok(verifier) = verifier_for(platform, &options) {
        let result = verifier.verify(&Evidence::new(platform, rest.to_vec()));
        // Simulated evidence is self-signed, so a well-formed input may verify; no real one can.
        assert!(platform == Platform::Simulated || result.is_err());
    }
});
