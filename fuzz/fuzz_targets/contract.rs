//! Contract parsing and validation never panic, whatever the bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = kura_contract::Contract::parse(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = kura_crypto::PublicIdentity::parse(text);
        let _ = kura_crypto::SecretIdentity::parse(text);
    }
});
