//! `kura demo --scenario supply`: a maker and four suppliers compare defect rates by process
//! step, pooled across suppliers, without any supplier's own figures.
//!
//! The maker inspects every lot it receives and records whether it was defective. Each
//! supplier knows which process step each of its lots went through (casting, machining, heat
//! treatment, coating, plating), and keeps that to itself: a supplier's defect rate at a step
//! is what its customers bargain over. Together they want to know which steps cause defects.
//!
//! The contract pools the four suppliers' step records with `UNION ALL` and joins the maker's
//! inspections. Every step's row must rest on at least 10 lots of every supplier with lots
//! there, and on lots of at least three suppliers (`min_pooled_datasets = 3`), so no figure is
//! one supplier's. Two suppliers do heat treatment and one does plating: those rows are
//! suppressed. Everyone receives the same table, and the records are deleted after the run.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Result, ensure};

use super::{DemoArgs, Room};
use crate::render;
use crate::splitmix::SplitMix;

const STEPS: [&str; 5] = [
    "1 casting",
    "2 machining",
    "3 heat treatment",
    "4 coating",
    "5 plating",
];
/// The defect rate the generator plants per step: coating is the problem.
const DEFECT_RATE: [f64; 5] = [0.02, 0.03, 0.04, 0.09, 0.05];
/// Which steps each supplier does: heat treatment by two suppliers, plating by one.
const DOES: [&[usize]; 4] = [&[0, 1, 2, 3], &[0, 1, 2, 3], &[0, 1, 3], &[0, 1, 3, 4]];
const SUPPLIERS: [&str; 4] = ["a", "b", "c", "d"];

/// Writes `steps_a.csv` … `steps_d.csv` (each supplier's `lots` lots and the step each went
/// through) and `inspections.csv` (the maker's verdict on every lot), into `dir`.
pub fn generate(dir: &Path, lots: usize, seed: u64) -> Result<()> {
    let mut rng = SplitMix(seed);
    let mut inspections = String::from("lot,defect\n");
    for (s, does) in SUPPLIERS.iter().zip(DOES) {
        let mut steps = String::from("lot,step\n");
        for i in 0..lots {
            let step = does[(rng.next() % does.len() as u64) as usize];
            let lot = format!("L{}{i:07}", s.to_uppercase());
            // Supplier c's coating is worse: a fact the pooled figure must not give away.
            let rate = DEFECT_RATE[step] * if *s == "c" && step == 3 { 1.5 } else { 1.0 };
            writeln!(steps, "{lot},{}", STEPS[step])?;
            writeln!(inspections, "{lot},{}", rng.unit() < rate)?;
        }
        crate::files::write_private(dir.join(format!("steps_{s}.csv")), steps)?;
    }
    // Lots the maker made itself: inspected, in no supplier's records.
    for i in 0..lots / 10 {
        writeln!(inspections, "LM{i:07},{}", rng.unit() < 0.03)?;
    }
    crate::files::write_private(dir.join("inspections.csv"), inspections)?;
    Ok(())
}

const PARTIES: [&str; 5] = [
    "maker",
    "supplier-a",
    "supplier-b",
    "supplier-c",
    "supplier-d",
];

/// The room, its signed contract and its parties' generated data (`kura demo --console` opens
/// the same room in the parties' consoles).
pub(super) fn setup(args: &DemoArgs) -> Result<(Room, kura_contract::SignedContract)> {
    ensure!(
        args.rows >= 100,
        "--rows must be at least 100 (lots per supplier)"
    );
    let room = Room::new(
        args.json,
        "kura demo: a maker and four suppliers compare defect rates by process step",
    )?;
    let contract = room.sign_named(&PARTIES, kura_contract::example::supply_defects)?;
    let data = room.data()?;
    generate(&data, args.rows, args.seed)?;
    Ok((room, contract))
}

pub async fn run(args: DemoArgs) -> Result<ExitCode> {
    let (room, contract) = setup(&args)?;
    let data = room.data()?;
    let (running, mut clients, measurement) = room.enclave(&contract, &PARTIES).await?;
    room.upload(
        &mut clients[0],
        "inspections",
        &data.join("inspections.csv"),
    )
    .await?;
    for (client, s) in clients[1..].iter_mut().zip(SUPPLIERS) {
        let dataset = format!("steps_{s}");
        room.upload(client, &dataset, &data.join(format!("{dataset}.csv")))
            .await?;
    }

    // The maker runs the one analysis; all five receive the same table.
    let run = clients[0].run("defects_by_step").await?;
    let tables = Room::results(&mut clients, &run.run_id).await?;
    ensure!(
        tables.iter().all(|t| *t == tables[0]),
        "the receivers got different results"
    );
    let table = &tables[0];
    room.say(format!("\n{}", render::table(table)));
    let steps: Vec<&str> = table.rows.iter().filter_map(|r| r[0].as_str()).collect();
    ensure!(
        steps == [STEPS[0], STEPS[1], STEPS[3]],
        "expected casting, machining and coating, pooled over at least three suppliers each: {steps:?}"
    );
    ensure!(
        table.suppressed_groups == 2,
        "heat treatment (two suppliers) and plating (one) must be suppressed"
    );
    let rate = |step: &str| {
        table
            .rows
            .iter()
            .find(|r| r[0] == step)
            .and_then(|r| r[2].as_f64())
    };
    let worst = steps
        .iter()
        .copied()
        .max_by(|a, b| rate(a).partial_cmp(&rate(b)).expect("rates are numbers"))
        .expect("steps were released");
    room.say(format!(
        "all five received the same table; the step to look at: {worst}. Heat treatment (two \
         suppliers) and plating (one) were suppressed: their figures would be one or two \
         suppliers' own"
    ));
    ensure!(
        run.deleted.len() == 5,
        "every party's records are deleted after the run"
    );
    let report = room.audit(&mut clients[0]).await?;
    running.shutdown().await?;

    room.summary(
        "supply",
        &contract,
        &measurement,
        &report,
        serde_json::json!({
            "result": render::result_json(table),
            "receivers_agree": true,
            "worst_step": worst,
            "deleted": run.deleted,
        }),
    );
    Ok(ExitCode::SUCCESS)
}
