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
