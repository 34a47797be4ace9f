//! The model section: a model analysis through kura against the same work on plaintext.
//!
//! kura: the release `kura-enclave` with both datasets uploaded once (not timed), then the
//! analysis run end to end (request, the training set's coverage check, the join, the fit, the
//! model sealed, fetched and opened), `runs` times, data read from the encrypted store.
//! Baseline: the same SQL on plain DataFusion over the plaintext Parquet files, its rows put in
//! a matrix, and the same fit (`kura_ml::train`, linfa underneath) in this process.

use std::time::Instant;

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::Float64Type;
use datafusion::prelude::SessionContext;

use super::*;

const MODEL: &str = "claims_model";
const MODEL_SQL: &str = "SELECT CAST(p.age_band = '80+' AS DOUBLE) AS oldest, \
                         CAST(p.region = 'north' AS DOUBLE) AS north, c.amount \
                         FROM claims c JOIN patients p ON c.patient_id = p.patient_id";
const MODEL_SPEC: &str = "kind = \"model\"\n[analyses.model]\nfamily = \"linear\"\n\
                          features = [\"oldest\", \"north\"]\nlabel = \"amount\"\nholdout = 0.2\n";

pub(super) fn model(rt: &tokio::runtime::Runtime, table: &mut Table, files: &Files, runs: usize) {
    let room = Room::with_analysis(MODEL, MODEL_SQL, MODEL_SPEC);
    let enclave = Enclave::start(&room);
    let mut hospital = rt.block_on(async {
        let mut hospital = room.client(&enclave.url, &room.hospital).await;
        let mut insurer = room.client(&enclave.url, &room.insurer).await;
        let (p, c) = tokio::join!(
            hospital.upload("patients", &files.patients_parquet, |_| {}),
            insurer.upload("claims", &files.claims_parquet, |_| {}),
        );
        p.expect("upload patients");
        c.expect("upload claims");
        hospital
    });
    let dir = files.claims_parquet.parent().unwrap();
    let (mut kura, mut plain) = (vec![], vec![]);
    for run in 1..=runs {
        progress(format!("model, run {run}/{runs}"));
        let start = Instant::now();
        let model = rt.block_on(async {
            let run = hospital.run(MODEL).await.expect("the model analysis");
            hospital
                .results(Some(&run.run_id))
                .await
                .expect("the model")
                .remove(0)
        });
        kura.push(secs(start.elapsed()));
        assert_eq!(model.rows.len(), 5, "intercept, two coefficients, R², RMSE");

        let start = Instant::now();
        let reference = rt.block_on(fit_plaintext(dir));
        plain.push(secs(start.elapsed()));
        // Both fit the same rows, each holding out its own random fifth. The amounts are
        // random, so the coefficients are noise of the split (about ±1 at 10M rows); the
        // intercept, the mean amount, agrees closely.
        let kura_intercept = model.rows[0][1].as_f64().unwrap();
        assert!(
            (kura_intercept - reference.intercept).abs() < 0.01 * reference.intercept.abs(),
            "kura {kura_intercept}, plaintext {}",
            reference.intercept
        );
    }
    table.time(
        &format!("model analysis (linear, {} rows, end to end)", files.rows),
        median(kura),
        Some(("DataFusion + the same fit on plaintext", median(plain))),
        Goal::MaxRatio(1.2),
    );
}

/// The model's SQL on plain DataFusion over the plaintext Parquet files, and the same fit.
async fn fit_plaintext(dir: &Path) -> kura_ml::Model {
    let ctx = SessionContext::new();
    register_parquet(&ctx, dir).await;
    let batches = ctx.sql(MODEL_SQL).await.unwrap().collect().await.unwrap();
    let mut values = Vec::new();
    for b in &batches {
        let columns: Vec<_> = (0..3)
            .map(|i| b.column(i).as_primitive::<Float64Type>())
            .collect();
        for row in 0..b.num_rows() {
            values.extend(columns.iter().map(|c| c.value(row)));
        }
    }
    let all = ndarray::Array2::from_shape_vec((values.len() / 3, 3), values).unwrap();
    let set = kura_ml::TrainingSet {
        features: vec!["oldest".into(), "north".into()],
        x: all.select(ndarray::Axis(1), &[0, 1]),
        y: all.column(2).to_owned(),
    };
    kura_ml::train(
        &set,
        &kura_ml::Settings {
            family: kura_ml::Family::Linear,
            holdout: 0.2,
            l2: 1.0,
            max_iterations: 100,
        },
    )
    .expect("the plaintext fit")
}
