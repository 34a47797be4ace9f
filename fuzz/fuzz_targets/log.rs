//! Log entries and whole logs from an untrusted service: parsing and chain verification never
//! panic, and a log whose starts cannot be attested never verifies.
#![no_main]

use kura_ledger::{LogEntry, verify_chain};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(entries) = serde_json::from_slice::<Vec<LogEntry>>(data) {
        let result = verify_chain(&entries, |_| Err("no evidence accepted".into()));
        assert!(entries.is_empty() || result.is_err());
        for e in &entries {
            let _ = e.parse_body();
        }
    }
});
