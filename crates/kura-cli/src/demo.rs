//! `kura demo`: two organisations combine data through a real enclave service on loopback.
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
use kura_client::Client;
use kura_contract::Platform;

use crate::splitmix::SplitMix;
use crate::{files, render};

use kura_contract::example::ANALYSIS;

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Patients in the hospital's data set.
    #[arg(long, default_value_t = 5000)]
    pub rows: usize,
    /// Print one JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
    /// Seed of the synthetic data generator.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

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
    std::fs::write(dir.join("ehr.csv"), ehr)?;
    std::fs::write(dir.join("activity.csv"), activity)?;
    Ok(())
}

pub async fn run(args: DemoArgs) -> Result<ExitCode> {
    ensure!(args.rows >= 1, "--rows must be at least 1");
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let root = dir.path();
    let say = |line: String| {
        if !args.json {
            println!("{line}");
        }
    };
    eprintln!("WARNING: {}", kura_attestation::simulated::WARNING);
    say(format!(
        "kura demo: a hospital and a fitness company combine data in {}",
        root.display()
    ));

    // 1. Identities and the contract, signed by both.
    let keys = root.join("keys");
    let hospital = kura_crypto::SecretIdentity::generate();
    let fitness = kura_crypto::SecretIdentity::generate();
    files::write_identity(&keys, "hospital-a", &hospital)?;
    files::write_identity(&keys, "fitness-b", &fitness)?;
    let contract_path = root.join("contract.toml");
    std::fs::write(
        &contract_path,
        kura_contract::example::activity_and_diabetes(
            &hospital.public().to_text(),
            &fitness.public().to_text(),
        ),
    )?;
    for key in ["hospital-a", "fitness-b"] {
        let c = files::read_contract(&contract_path)?;
        let id = files::read_identity(&keys.join(format!("{key}.key")))?;
        let (party, text) = kura_contract::sign(&c, &id)?;
        std::fs::write(files::signature_path(&contract_path, &party), text)?;
    }
    let contract = files::read_signed_contract(&contract_path)?;
    say(format!(
        "contract {} signed by hospital-a and fitness-b\n  id {}",
        contract.name,
        contract.id()
    ));

    // 2. Each party's data stays on its side until it is encrypted.
    let data = root.join("data");
    std::fs::create_dir_all(&data)?;
    generate(&data, args.rows, args.seed)?;

    // 3. The enclave service, on loopback.
    let running = kura_server::start(kura_server::Config {
        contract: contract.clone(),
        platform: Platform::Simulated,
        listen: "127.0.0.1:0".parse().expect("loopback address"),
        state_dir: root.join("enclave-state"),
        max_upload_bytes: kura_server::Config::DEFAULT_MAX_UPLOAD,
        query_memory_bytes: kura_server::Config::DEFAULT_QUERY_MEMORY,
        evidence_certs: vec![],
        evidence_collateral: None,
        store_dir: None,
        cluster: None,
    })
    .await?;
    let url = running.url();

    let mut h = Client::new(
        &url,
        contract.clone(),
        files::read_identity(&keys.join("hospital-a.key"))?,
    )?;
    let mut f = Client::new(
        &url,
        contract.clone(),
        files::read_identity(&keys.join("fitness-b.key"))?,
    )?;
    let measurement = hex::encode(&h.attest().await?.claims.measurement);
    f.attest().await?;
    say(format!(
        "enclave {url} attested by both parties (platform simulated, measurement {}…)",
        &measurement[..16]
    ));

    // 4. Encrypted uploads.
    for (client, dataset, file) in [
        (&mut h, "ehr", "ehr.csv"),
        (&mut f, "activity", "activity.csv"),
    ] {
        let path = data.join(file);
        let size = std::fs::metadata(&path)?.len();
        let bar = if args.json {
            indicatif::ProgressBar::hidden()
        } else {
            render::progress(size, &format!("uploading {dataset}"))
        };
        let b = bar.clone();
        let resp = client
            .upload(dataset, &path, move |n| b.set_position(n))
            .await;
        bar.finish_and_clear();
        let resp = resp?;
        say(format!(
            "{} uploaded {}: {} rows as {} encrypted bytes",
            client.party(),
            resp.dataset,
            resp.rows,
            resp.ciphertext_bytes
        ));
    }

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
    say(format!("\n{}", render::table(&mine)));
    say("both receivers decrypted the same enclave-signed result".into());

    // 6. Deletion and the audit log.
    let report = h.audit().await?;
    let deletions: Vec<_> = report
        .entries
        .iter()
        .filter_map(|e| e.parse_body().ok())
        .filter(|b| matches!(b.event, kura_ledger::Event::Deletion { .. }))
        .collect();
    for d in &deletions {
        say(format!(
            "deletion record #{} at {}: {}",
            d.seq,
            d.time,
            render::describe(&d.event)
        ));
    }
    say(format!(
        "audit log verified: {} entries, chained and signed by the attested enclave key, head {}",
        report.chain.entries, report.chain.head
    ));
    running.shutdown().await?;

    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "platform": "simulated",
                "warning": kura_attestation::simulated::WARNING,
                "contract_id": contract.id(),
                "enclave": url,
                "measurement": measurement,
                "result": render::result_json(&mine),
                "receivers_agree": true,
                "deleted": run.deleted,
                "deletions": deletions,
                "audit": {"valid": true, "entries": report.chain.entries, "head": report.chain.head},
            })
        );
    }
    Ok(ExitCode::SUCCESS)
}
