//! A process-wide memory of certificate signatures that verified, keyed by the SHA-256 of the
//! exact certificates involved. A chain seen before then costs a hash instead of several RSA or
//! ECDSA verifications. Only successful signature checks are remembered; validity windows,
//! bindings and policy are checked on every call. Bounded: cleared when full.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

use sha2::Digest;

const CAPACITY: usize = 4096;

fn store() -> &'static Mutex<HashSet<[u8; 32]>> {
    static STORE: OnceLock<Mutex<HashSet<[u8; 32]>>> = OnceLock::new();
    STORE.get_or_init(|| Mutex::new(HashSet::new()))
}

/// Key for a set of certificates (DER), under a label naming what was checked.
pub(crate) fn key(label: &str, parts: &[&[u8]]) -> [u8; 32] {
    let mut h = sha2::Sha256::new();
    h.update(label.as_bytes());
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    h.finalize().into()
}

/// Runs `check` unless the same `key` passed before; remembers a pass.
pub(crate) fn verified<E>(key: [u8; 32], check: impl FnOnce() -> Result<(), E>) -> Result<(), E> {
    if store().lock().map(|s| s.contains(&key)).unwrap_or(false) {
        return Ok(());
    }
    check()?;
    if let Ok(mut s) = store().lock() {
        if s.len() >= CAPACITY {
            s.clear();
        }
        s.insert(key);
    }
    Ok(())
}
