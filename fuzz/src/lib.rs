//! What the fuzz targets share.

use std::sync::OnceLock;

/// The `ehr` dataset of the design's example contract (its keys are drawn once).
pub fn ehr() -> &'static kura_contract::Dataset {
    static CONTRACT: OnceLock<kura_contract::Contract> = OnceLock::new();
    CONTRACT
        .get_or_init(|| {
            let key = || kura_crypto::SecretIdentity::generate().public().to_text();
            let text = kura_contract::example::activity_and_diabetes(&key(), &key());
            kura_contract::Contract::parse(text.as_bytes()).unwrap()
        })
        .dataset("ehr")
        .unwrap()
}

/// `batches` as one batch (how rows fall into batches is not part of what is compared).
pub fn rows(batches: &[kura_engine::RecordBatch]) -> Option<kura_engine::RecordBatch> {
    let first = batches.first()?;
    Some(kura_engine::datafusion::arrow::compute::concat_batches(&first.schema(), batches).unwrap())
}

/// A panic kura contains (a parsing thread's, which the pool turns into a refusal of the file)
/// is not a finding; one that reaches the target's own thread still is (libfuzzer-sys aborts on
/// it). Puts back the default hook in place of libfuzzer-sys's, which aborts on any panic.
pub fn only_uncontained_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| drop(std::panic::take_hook()));
}
