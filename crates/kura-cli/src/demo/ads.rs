//! `kura demo --scenario ads`: a publisher and an advertiser measure audience overlap and
//! conversion by segment, under differential privacy.
//!
//! The publisher knows its readers' interest segments, the advertiser its customers' orders and
//! spend; both know people by a hashed e-mail address. Together they want to know, per segment,
//! how many readers are customers and what they bought. A threshold alone would not do: the
//! same question asked twice about audiences that differ by one person tells whether that
//! person is a customer. So the contract makes the analysis differentially private: each
//! person counts at most once, every segment of the public list is released (present in the
//! data or not), each run spends ε = 1 of each party's budget of 3, and a fourth run is
//! refused.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, ensure};

use super::{DemoArgs, Room};
use crate::render;
use crate::splitmix::SplitMix;

const SEGMENTS: [&str; 5] = ["sports", "travel", "cooking", "finance", "gaming"];
/// How likely a reader of each segment is to be the advertiser's customer (a sports brand).
const CUSTOMER: [f64; 5] = [0.5, 0.2, 0.1, 0.15, 0.3];

/// The true shared readers, orders and spend of each segment, for comparison.
type Truth = BTreeMap<&'static str, [f64; 3]>;

/// Writes `readers.csv` and `customers.csv` into `dir`: `rows` readers, the customers among them
/// by segment, and as many customers again who read nothing of the publisher's. Returns the true
/// figures per segment.
pub fn generate(dir: &Path, rows: usize, seed: u64) -> Result<Truth> {
    let mut rng = SplitMix(seed);
    let mut readers = String::from("email_hash,segment\n");
    let mut customers = String::from("email_hash,orders,spend\n");
    let mut truth: Truth = SEGMENTS.iter().map(|s| (*s, [0.0; 3])).collect();
    let customer = |rng: &mut SplitMix, id: &str, csv: &mut String| -> Result<(f64, f64)> {
        let orders = 1 + rng.next() % 6;
        let spend = (orders as f64 * (20.0 + rng.unit() * 60.0) * 100.0).round() / 100.0;
        writeln!(csv, "{id},{orders},{spend}")?;
        Ok((orders as f64, spend))
    };
    for i in 0..rows {
        let segment = (rng.next() % SEGMENTS.len() as u64) as usize;
        let id = format!("{:016x}", SplitMix(seed ^ i as u64).next());
        writeln!(readers, "{id},{}", SEGMENTS[segment])?;
        if rng.unit() < CUSTOMER[segment] {
            let (orders, spend) = customer(&mut rng, &id, &mut customers)?;
            let t = truth.get_mut(SEGMENTS[segment]).expect("every segment");
            t[0] += 1.0;
            t[1] += orders;
            t[2] += spend;
        }
    }
    for i in 0..rows / 2 {
        let id = format!("{:016x}", SplitMix(!seed ^ i as u64).next());
        customer(&mut rng, &id, &mut customers)?;
    }
    crate::files::write_private(dir.join("readers.csv"), readers)?;
    crate::files::write_private(dir.join("customers.csv"), customers)?;
    Ok(truth)
}

const PARTIES: [&str; 2] = ["publisher", "advertiser"];

/// The room, its signed contract and its parties' generated data (`kura demo --console` opens
/// the same room in the parties' consoles).
pub(super) fn setup(args: &DemoArgs) -> Result<(Room, kura_contract::SignedContract, Truth)> {
    ensure!(args.rows >= 100, "--rows must be at least 100 (readers)");
    let room = Room::new(
        args.json,
        "kura demo: a publisher and an advertiser measure their shared audience under \
         differential privacy",
    )?;
    let parties = PARTIES;
    let contract = room.sign_named(&parties, |named| {
        kura_contract::example::ads_measurement(named)
    })?;
    let data = room.data()?;
    let truth = generate(&data, args.rows, args.seed)?;
    Ok((room, contract, truth))
}

pub async fn run(args: DemoArgs) -> Result<ExitCode> {
    let (room, contract, truth) = setup(&args)?;
    let data = room.data()?;
    let parties = PARTIES;

    let (running, mut clients, measurement) = room.enclave(&contract, &parties).await?;
    room.upload(&mut clients[0], "readers", &data.join("readers.csv"))
        .await?;
    room.upload(&mut clients[1], "customers", &data.join("customers.csv"))
        .await?;

    // Three runs spend each party's budget of ε = 3; each release is noised afresh.
    let mut releases = Vec::new();
    for _ in 0..3 {
        let run = clients[0].run("by_segment").await?;
        let tables = Room::results(&mut clients, &run.run_id).await?;
        ensure!(
            tables[0] == tables[1],
            "the two parties received different releases"
        );
        releases.push(tables[0].clone());
    }
    let first = &releases[0];
    room.say(format!("\n{}", render::table(first)));
    room.say("the true figures, which only the generator knows:".into());
    for (segment, [shared, orders, spend]) in &truth {
        room.say(format!(
            "  {segment:<8} shared {shared:>6}  orders {orders:>7}  spend {spend:>10.2}"
        ));
    }
    let shared = |table: &kura_api::ResultTable, segment: &str| {
        table
            .rows
            .iter()
            .find(|r| r[0] == segment)
            .and_then(|r| r[1].as_f64())
    };
    let sports: Vec<String> = releases
        .iter()
        .map(|t| shared(t, "sports").map_or("-".into(), |v| format!("{v:.0}")))
        .collect();
    room.say(format!(
        "the three releases' shared sports readers: {} (true {}): each release is noised afresh, \
         and averaging them is what the budget pays for",
        sports.join(", "),
        truth["sports"][0]
    ));

    // A fourth run would exceed the budget.
    let refusal = match clients[1].run("by_segment").await {
        Err(kura_client::ClientError::Refused { reason, .. }) => reason,
        Ok(_) => anyhow::bail!("a fourth run was answered past the budget"),
        Err(e) => return Err(e.into()),
    };
    room.say(format!("a fourth run: refused, {refusal}"));

    let report = room.audit(&mut clients[0]).await?;
    let bodies = report
        .entries
        .iter()
        .map(|e| e.parse_body())
        .collect::<Result<Vec<_>, _>>()?;
    let budget = kura_client::audit::budget(clients[0].contract(), &bodies)
        .context("the contract has a budget")?
        .accounts_report();
    let dp = contract.privacy.dp.clone().context("a DP contract")?;
    room.say(format!(
        "the budget, replayed from the verified log:\n{}",
        render::budget(&dp, &budget)
    ));
    running.shutdown().await?;

    room.summary(
        "ads",
        &contract,
        &measurement,
        &report,
        serde_json::json!({
            "releases": releases.iter().map(render::result_json).collect::<Vec<_>>(),
            "truth": truth,
            "fourth_run_refused": refusal,
            "budget": budget,
        }),
    );
    Ok(ExitCode::SUCCESS)
}
