//! `kura demo --scenario statistics`: a company provides statistics, and nothing else, to a
//! third party under a published purpose.
//!
//! A mobile operator holds its subscribers' visits (district, time of day, minutes stayed). A
//! city wants to know where and when people go, to plan its bus network; the law lets the
//! operator provide statistics for a stated purpose, never the records. The contract states the
//! purpose, the one analysis the city may run, the minimum group (20 subscribers), and that the
//! records are deleted after that run. An auditor signs too, and reads the log.
//!
//! The deliverable is not only the table. It is the proof of what happened: the transparency
//! report (who provided and who received what, for which purpose, which analysis ran and when,
//! when the data was deleted), generated from the verified log, and the deletion record itself,
//! signed by the attested enclave.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, ensure};

use super::{DemoArgs, Room};
use crate::render;
use crate::splitmix::SplitMix;

const DISTRICTS: [&str; 6] = [
    "harbour",
    "old-town",
    "station",
    "university",
    "riverside",
    "hillside",
];
const PERIODS: [&str; 4] = ["1 morning", "2 midday", "3 evening", "4 night"];

/// Writes `visits.csv` into `dir`: `rows` visits by about a fifth as many subscribers. Most go
/// to the station in the morning and evening; eight subscribers go to the hillside at night,
/// too few to be shown.
pub fn generate(dir: &Path, rows: usize, seed: u64) -> Result<()> {
    let mut rng = SplitMix(seed);
    let subscribers = (rows / 5).max(1);
    let mut csv = String::from("subscriber,district,period,minutes\n");
    for _ in 0..rows {
        let mut subscriber = rng.next() % subscribers as u64;
        let (district, period) = if rng.unit() < 0.002 {
            // The same eight night owls, however large the data.
            subscriber %= 8;
            (5, 3)
        } else {
            let period = (rng.next() % 3) as usize;
            let district = if period != 1 && rng.unit() < 0.4 {
                2
            } else {
                (rng.next() % 5) as usize
            };
            (district, period)
        };
        let minutes = 5 + rng.next() % 120;
        writeln!(
            csv,
            "S{subscriber:07},{},{},{minutes}",
            DISTRICTS[district], PERIODS[period]
        )?;
    }
    crate::files::write_private(dir.join("visits.csv"), csv)?;
    Ok(())
}

const PARTIES: [&str; 3] = ["telco", "city", "auditor"];

/// The room, its signed contract and its parties' generated data (`kura demo --console` opens
/// the same room in the parties' consoles).
pub(super) fn setup(args: &DemoArgs) -> Result<(Room, kura_contract::SignedContract)> {
    ensure!(args.rows >= 1, "--rows must be at least 1");
    let room = Room::new(
        args.json,
        "kura demo: a mobile operator provides a city with statistics only",
    )?;
    let parties = PARTIES;
    let contract = room.sign_named(&parties, |named| {
        kura_contract::example::statistics_provision(named)
    })?;
    room.say(format!("published purpose: {}", contract.purpose));
    let data = room.data()?;
    generate(&data, args.rows, args.seed)?;
    Ok((room, contract))
}

pub async fn run(args: DemoArgs) -> Result<ExitCode> {
    let (room, contract) = setup(&args)?;
    let data = room.data()?;
    let parties = PARTIES;

    let (running, mut clients, measurement) = room.enclave(&contract, &parties).await?;
    room.upload(&mut clients[0], "visits", &data.join("visits.csv"))
        .await?;

    // The city runs the one analysis the contract allows, and receives the table.
    let run = clients[1].run("footfall").await?;
    let table = clients[1]
        .results(Some(&run.run_id))
        .await?
        .pop()
        .context("no result for the city")?;
    room.say(format!("\n{}", render::table(&table)));
    ensure!(
        run.deleted.iter().any(|d| d == "visits"),
        "the records were not deleted after the run"
    );
    room.say("the operator's records were deleted inside the enclave right after the run".into());

    // A second run finds nothing to read: the deletion is real, and refused in words.
    let again = clients[1].run("footfall").await;
    let refusal = match again {
        Err(kura_client::ClientError::Refused { reason, .. }) => reason,
        Ok(_) => anyhow::bail!("the analysis ran again on deleted records"),
        Err(e) => return Err(e.into()),
    };
    room.say(format!(
        "the city tried to run it again: refused, {refusal}"
    ));

    // The auditor verifies the log, and the transparency report is written from it.
    let report = room.audit(&mut clients[2]).await?;
    let deletions: Vec<_> = report
        .entries
        .iter()
        .filter_map(|e| e.parse_body().ok())
        .filter(|b| matches!(b.event, kura_ledger::Event::Deletion { .. }))
        .collect();
    ensure!(!deletions.is_empty(), "the log has no deletion record");
    for d in &deletions {
        room.say(format!(
            "deletion record #{} at {}: {}",
            d.seq,
            d.time,
            render::describe(&d.event)
        ));
    }
    let transparency = crate::report::build(clients[2].contract(), &report)?;
    let path = room.root().join("transparency.md");
    crate::files::write_private(&path, crate::report::markdown(&transparency))?;
    room.say(format!(
        "the transparency report, from the log the auditor verified: {}\n\n{}",
        path.display(),
        crate::report::markdown(&transparency)
    ));
    running.shutdown().await?;

    room.summary(
        "statistics",
        &contract,
        &measurement,
        &report,
        serde_json::json!({
            "result": render::result_json(&table),
            "deleted": run.deleted,
            "second_run_refused": refusal,
            "deletions": deletions,
            "transparency": transparency,
        }),
    );
    Ok(ExitCode::SUCCESS)
}
