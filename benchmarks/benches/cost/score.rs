//! The scoring section: a party's model run on another party's rows through kura, against the
//! same work on plaintext.
//!
//! The insurer's model (a logistic model on the patient's age and region, an ONNX file whose
//! SHA-256 the contract pins) scores each of the hospital's patients. kura: the release
//! `kura-enclave` with the model and the patients uploaded once (not timed), then the analysis
//! run end to end (request, the query, tract on every row, each score routed to its owner, the
//! distribution thresholded for the insurer, both sealed; the hospital's scores fetched and
//! opened), `runs` times, data read from the encrypted store. Baseline: the same SQL on plain
//! DataFusion over the plaintext Parquet file, and the same model run with the same library
//! (tract, through `kura_ml::onnx::Scorer`) on its rows, in this process.

use std::time::Instant;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::Float64Type;
use datafusion::prelude::SessionContext;

use super::*;

const SCORE: &str = "patient_risk";
const SCORE_SQL: &str = "SELECT patient_id, region, \
                         CAST(age_band = '80+' AS DOUBLE) AS oldest, \
                         CAST(age_band = '65-79' AS DOUBLE) AS older, \
                         CAST(region = 'north' AS DOUBLE) AS north \
                         FROM patients";
const FEATURES: [&str; 3] = ["oldest", "older", "north"];

/// The insurer's model.
fn model() -> kura_ml::Model {
    kura_ml::Model {
        family: kura_ml::Family::Logistic,
        intercept: -2.0,
        coefficients: FEATURES
            .iter()
            .map(|f| f.to_string())
            .zip([1.5, 0.8, 0.3])
            .collect(),
        metrics: Vec::new(),
    }
}

pub(super) fn score(rt: &tokio::runtime::Runtime, table: &mut Table, files: &Files, runs: usize) {
    let onnx = kura_ml::onnx::export(&model());
    let spec = format!(
        "kind = \"score\"\nlist_column = \"patient_id\"\n[analyses.score]\n\
         model = \"risk_model\"\nfeatures = [\"oldest\", \"older\", \"north\"]\n\
         group_by = \"region\"\n\n[[models]]\nname = \"risk_model\"\nprovider = \"insurer\"\n\
         sha256 = \"{}\"\n",
        hex::encode(kura_crypto::sha256(&onnx))
    );
    let room = Room::with_analysis(SCORE, SCORE_SQL, &spec);
    let enclave = Enclave::start(&room);
    let model_file = room.dir.path().join("risk_model.onnx");
    std::fs::write(&model_file, &onnx).unwrap();
    let mut hospital = rt.block_on(async {
        let mut hospital = room.client(&enclave.url, &room.hospital).await;
        let mut insurer = room.client(&enclave.url, &room.insurer).await;
        let (p, m) = tokio::join!(
            hospital.upload("patients", &files.patients_parquet, |_| {}),
            insurer.upload("risk_model", &model_file, |_| {}),
        );
        p.expect("upload patients");
        m.expect("upload the model");
        hospital
    });
    let scorer = kura_ml::onnx::Scorer::load(&onnx, FEATURES.len()).unwrap();
    let dir = files.patients_parquet.parent().unwrap();
    let patients = files.rows / 10;
    let (mut kura, mut plain) = (vec![], vec![]);
    let (mut running, mut fetching) = (vec![], vec![]);
    for run in 1..=runs {
        progress(format!("scoring, run {run}/{runs}"));
        let start = Instant::now();
        let scores = rt.block_on(async {
            let run = hospital.run(SCORE).await.expect("the scoring analysis");
            running.push(secs(start.elapsed()));
            let fetched = Instant::now();
            let scores = hospital
                .results(Some(&run.run_id))
                .await
                .expect("the scores")
                .remove(0);
            fetching.push(secs(fetched.elapsed()));
            scores
        });
        kura.push(secs(start.elapsed()));
        assert_eq!(scores.rows.len(), patients, "a score for every patient");

        let start = Instant::now();
        let reference = rt.block_on(score_plaintext(dir, &scorer));
        plain.push(secs(start.elapsed()));
        assert_eq!(reference.len(), patients);
        // The same model on the same rows: the same scores, row for row by patient.
        let by_id: std::collections::HashMap<i64, f64> = reference.into_iter().collect();
        for row in scores.rows.iter().step_by(997) {
            let id = row[0].as_i64().unwrap();
            let score = row[2].as_f64().unwrap();
            assert!((score - by_id[&id]).abs() < 1e-12, "patient {id}");
        }
    }
    table.time(
        &format!("scoring ({patients} rows, ONNX model, end to end)"),
        median(kura),
        Some((
            "DataFusion + the same model in tract on plaintext",
            median(plain),
        )),
        Goal::None,
    );
    // Where kura's time goes: the run (the query, the model on every row, the routing, each
    // receiver's table signed, sealed and kept), then fetching and opening the 1M scores.
    table.time(
        "scoring: the run, in the enclave",
        median(running),
        None,
        Goal::None,
    );
    table.time(
        "scoring: fetching and opening the scores",
        median(fetching),
        None,
        Goal::None,
    );
}

/// The scoring SQL on plain DataFusion over the plaintext Parquet file, and the same model
/// run on its rows: each patient's score.
async fn score_plaintext(dir: &Path, scorer: &kura_ml::onnx::Scorer) -> Vec<(i64, f64)> {
    let ctx = SessionContext::new();
    register_parquet(&ctx, dir).await;
    let batches = ctx.sql(SCORE_SQL).await.unwrap().collect().await.unwrap();
    let mut ids = Vec::new();
    let mut x = Vec::new();
    for b in &batches {
        let id = b
            .column(0)
            .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        let features: Vec<_> = (2..5)
            .map(|i| b.column(i).as_primitive::<Float64Type>())
            .collect();
        for row in 0..b.num_rows() {
            if features.iter().any(|f| f.is_null(row)) {
                continue;
            }
            ids.push(id.value(row));
            x.extend(features.iter().map(|f| f.value(row)));
        }
    }
    let scores = scorer.score(&x).expect("plaintext scoring");
    ids.into_iter().zip(scores).collect()
}
