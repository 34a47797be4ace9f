//! `kura demo --scenario health` (the default): a hospital and a fitness company combine data.
//!
//! A hospital holds diagnoses, a fitness company holds step counts, for partly overlapping
//! people. The generator plants a relationship (more activity, less diabetes) that only the
//! joined data shows. Everything goes through the same code paths as production: key files,
//! a signed contract, attestation, encrypted upload over HTTP, the threshold rule, sealed
//! results, deletion and the audit log. The platform is simulated, and says so.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, ensure};
use kura_contract::example::ANALYSIS;

use super::{DemoArgs, Room};
use crate::render;
use crate::splitmix::SplitMix;

const STEPS_BANDS: [&str; 5] = [
    "1 sedentary (<4k)",
    "2 low (4k-8k)",
    "3 moderate (8k-12k)",
    "4 active (12k-25k)",
    "5 extreme (25k+)",
];
/// Relative diabetes risk per steps band: the planted relationship.
const RISK: [f64; 5] = [1.8, 1.2, 0.8, 0.5, 0.4];
const AGE_BANDS: [&str; 3] = ["18-39", "40-59", "60+"];
const AGE_BASE_RATE: [f64; 3] = [0.05, 0.12, 0.22];

/// Writes `ehr.csv` and `activity.csv` into `dir`.
pub fn generate(dir: &Path, people: usize, seed: u64) -> Result<()> {
    let mut rng = SplitMix(seed);
    let mut ehr = String::from("patient_id,age_band,diabetes\n");
    let mut activity = String::from("patient_id,steps_band\n");
    for i in 0..people {
        let id = format!("P{i:07}");
        let age = (rng.next() % 3) as usize;
        // A few extreme walkers, too few to be shown: they exercise the threshold.
        let band = if rng.unit() < 0.001 {
            4
        } else {
            (rng.next() % 4) as usize
        };
        let diabetic = rng.unit() < (AGE_BASE_RATE[age] * RISK[band]).min(1.0);
        writeln!(ehr, "{id},{},{diabetic}", AGE_BANDS[age])?;
        // 85 % of the hospital's patients use the fitness app.
        if rng.unit() < 0.85 {
            writeln!(activity, "{id},{}", STEPS_BANDS[band])?;
        }
    }
    // App users who are not the hospital's patients.
    for i in 0..people / 10 {
        let band = (rng.next() % 4) as usize;
        writeln!(activity, "F{i:07},{}", STEPS_BANDS[band])?;
    }
    crate::files::write_private(dir.join("ehr.csv"), ehr)?;
    crate::files::write_private(dir.join("activity.csv"), activity)?;
    Ok(())
}

/// The room, its signed contract and its parties' generated data (`kura demo --console` opens
/// the same room in the parties' consoles).
pub(super) fn setup(args: &DemoArgs) -> Result<(Room, kura_contract::SignedContract)> {
    ensure!(args.rows >= 1, "--rows must be at least 1");
    let room = Room::new(
        args.json,
        "kura demo: a hospital and a fitness company combine data",
    )?;

    // 1. Identities and the contract, signed by both.
    let contract = room.sign(&["hospital-a", "fitness-b"], |keys| {
        kura_contract::example::activity_and_diabetes(&keys[0], &keys[1])
    })?;

    // 2. Each party's data stays on its side until it is encrypted.
    let data = room.data()?;
    generate(&data, args.rows, args.seed)?;
    Ok((room, contract))
}

pub async fn run(args: DemoArgs) -> Result<ExitCode> {
    let (room, contract) = setup(&args)?;
    let data = room.data()?;

    // 3. The enclave service, on loopback, attested by both.
    let (running, mut clients, measurement) = room
        .enclave(&contract, &["hospital-a", "fitness-b"])
        .await?;
    let url = running.url();
    let [mut h, mut f] = <[_; 2]>::try_from(std::mem::take(&mut clients))
        .map_err(|_| anyhow::anyhow!("two parties"))?;

    // 4. Encrypted uploads.
    room.upload(&mut h, "ehr", &data.join("ehr.csv")).await?;
    room.upload(&mut f, "activity", &data.join("activity.csv"))
        .await?;

    // 5. The run, and both receivers' results.
    let run = h.run(ANALYSIS).await?;
    let mine = h
        .results(Some(&run.run_id))
        .await?
        .pop()
        .context("no result for hospital-a")?;
    let theirs = f
        .results(Some(&run.run_id))
        .await?
        .pop()
        .context("no result for fitness-b")?;
    ensure!(mine == theirs, "the two receivers got different results");
    room.say(format!("\n{}", render::table(&mine)));
    room.say("both receivers decrypted the same enclave-signed result".into());

    // 6. Deletion and the audit log.
    let report = room.audit(&mut h).await?;
    let deletions: Vec<_> = report
        .entries
        .iter()
        .filter_map(|e| e.parse_body().ok())
        .filter(|b| matches!(b.event, kura_ledger::Event::Deletion { .. }))
        .collect();
    for d in &deletions {
        room.say(format!(
            "deletion record #{} at {}: {}",
            d.seq,
            d.time,
            render::describe(&d.event)
        ));
    }
    running.shutdown().await?;

    room.summary(
        "health",
        &contract,
        &measurement,
        &report,
        serde_json::json!({
            "enclave": url,
            "result": render::result_json(&mine),
            "receivers_agree": true,
            "deleted": run.deleted,
            "deletions": deletions,
        }),
    );
    Ok(ExitCode::SUCCESS)
}
