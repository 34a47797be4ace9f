//! `kura demo --scenario aml`: three banks find money mules across banks, each bank only its
//! own accounts.
//!
//! Each bank holds its customers' outgoing transfers. Most go to merchants or to customers of
//! the same bank. A few money-laundering chains are planted: a customer of one bank pays an
//! account at another bank, which passes the money on, sometimes through a third bank. No bank
//! can see such a chain alone: it sees money leave, or money arrive and leave, but not where it
//! came from. The contract's list analysis (`mules`) joins the three banks' transfers inside
//! the enclave and names every account that receives from another bank's customer and sends
//! money on; each bank receives only the accounts it holds.
//!
//! Then bank A, which the contract lets ask ad-hoc questions, tries to talk its way around the
//! rules: other banks' accounts, a single account's transfers, a filter on a measure. Each is
//! refused with the rule that refused it, and the log records the attempt.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Result, ensure};

use super::{DemoArgs, Room};
use crate::splitmix::SplitMix;

const BANKS: [&str; 3] = ["a", "b", "c"];

/// The accounts each bank holds that the generator made mules, in bank order.
type Planted = [BTreeSet<String>; 3];

fn account(bank: usize, n: usize) -> String {
    format!("{}{n:06}", BANKS[bank].to_uppercase())
}

/// Writes `transfers_a.csv`, `transfers_b.csv` and `transfers_c.csv` into `dir`: `rows` ordinary
/// transfers per bank (nine in ten to a merchant, the rest to a customer of the same bank), and
/// one planted chain per 500 rows. Returns the mule accounts planted at each bank.
pub fn generate(dir: &Path, rows: usize, seed: u64) -> Result<Planted> {
    let mut rng = SplitMix(seed);
    let customers = (rows / 5).max(1);
    let mut csv: [String; 3] =
        std::array::from_fn(|_| String::from("from_account,to_account,amount\n"));
    for (bank, text) in csv.iter_mut().enumerate() {
        for _ in 0..rows {
            let from = account(bank, (rng.next() % customers as u64) as usize);
            let to = if rng.unit() < 0.9 {
                format!("M{:05}", rng.next() % 2_000)
            } else {
                account(bank, (rng.next() % customers as u64) as usize)
            };
            let amount = 5.0 + (rng.unit() * 50_000.0).round() / 100.0;
            writeln!(text, "{from},{to},{amount}")?;
        }
    }
    // Each chain: a customer of one bank pays a mule at another, who passes most of it on to a
    // mule at a third bank (or a merchant), who cashes it out with a merchant. The mules are new
    // accounts, numbered past the customers.
    let mut planted: Planted = Default::default();
    for chain in 0..(rows / 500).max(1) {
        let origin = chain % 3;
        let first = (origin + 1 + (rng.next() % 2) as usize) % 3;
        let mule = account(first, customers + chain);
        let amount = 9_000.0 + (rng.next() % 900) as f64;
        let payer = account(origin, (rng.next() % customers as u64) as usize);
        writeln!(csv[origin], "{payer},{mule},{amount}")?;
        planted[first].insert(mule.clone());
        if rng.unit() < 0.5 {
            let second = 3 - origin - first;
            let next = account(second, customers + chain);
            writeln!(csv[first], "{mule},{next},{}", amount - 150.0)?;
            writeln!(csv[second], "{next},M99999,{}", amount - 300.0)?;
            planted[second].insert(next);
        } else {
            writeln!(csv[first], "{mule},M99999,{}", amount - 150.0)?;
        }
    }
    for (bank, text) in BANKS.iter().zip(csv) {
        crate::files::write_private(dir.join(format!("transfers_{bank}.csv")), text)?;
    }
    Ok(planted)
}

/// What bank A tries, and what it asks for; each must be refused.
const ATTEMPTS: [(&str, &str); 3] = [
    (
        "bank B's accounts",
        "SELECT from_account, COUNT(*) AS transfers FROM transfers_b GROUP BY from_account",
    ),
    (
        "one account's transfers",
        "SELECT COUNT(*) AS transfers, SUM(amount) AS total FROM transfers_c \
         WHERE from_account = 'C000007'",
    ),
    (
        "the large transfers of other banks",
        "SELECT COUNT(*) AS transfers FROM transfers_b WHERE amount > 8000",
    ),
];

const PARTIES: [&str; 3] = ["bank-a", "bank-b", "bank-c"];

/// The room, its signed contract and its parties' generated data (`kura demo --console` opens
/// the same room in the parties' consoles).
pub(super) fn setup(args: &DemoArgs) -> Result<(Room, kura_contract::SignedContract, Planted)> {
    ensure!(
        args.rows >= 500,
        "--rows must be at least 500 (transfers per bank)"
    );
    let room = Room::new(
        args.json,
        "kura demo: three banks look for money mules across banks",
    )?;
    let parties = PARTIES;
    let contract = room.sign_named(&parties, |named| {
        kura_contract::example::aml_three_banks(named)
    })?;
    let data = room.data()?;
    let planted = generate(&data, args.rows, args.seed)?;
    Ok((room, contract, planted))
}

pub async fn run(args: DemoArgs) -> Result<ExitCode> {
    let (room, contract, planted) = setup(&args)?;
    let data = room.data()?;
    let parties = PARTIES;

    let (running, mut clients, measurement) = room.enclave(&contract, &parties).await?;
    for (client, bank) in clients.iter_mut().zip(BANKS) {
        let dataset = format!("transfers_{bank}");
        room.upload(client, &dataset, &data.join(format!("{dataset}.csv")))
            .await?;
    }

    let run = clients[1].run("mules").await?;
    let lists = Room::results(&mut clients, &run.run_id).await?;
    let mut received = Vec::new();
    for ((table, bank), planted) in lists.iter().zip(parties).zip(&planted) {
        let accounts: BTreeSet<String> = table
            .rows
            .iter()
            .filter_map(|r| r[0].as_str().map(str::to_string))
            .collect();
        let own = bank[5..].to_uppercase();
        ensure!(
            accounts.iter().all(|a| a.starts_with(&own)),
            "{bank} received another bank's account"
        );
        ensure!(
            &accounts == planted,
            "{bank} received {accounts:?}, the generator planted {planted:?}"
        );
        room.say(format!(
            "{bank} received {} of its own accounts that pass on money from another bank's \
             customers ({}), every one planted, none of another bank",
            accounts.len(),
            accounts
                .iter()
                .take(4)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
                + if accounts.len() > 4 { ", …" } else { "" }
        ));
        received.push(serde_json::json!({
            "bank": bank,
            "accounts": accounts,
            "planted": planted.len(),
        }));
    }

    // Bank A may ask ad-hoc questions: statistics of its own data pass, its attempts to see
    // other banks' customers do not.
    let own = clients[0]
        .query(
            "SELECT COUNT(*) AS transfers, SUM(amount) AS total FROM transfers_a",
            None,
        )
        .await?;
    let own = clients[0].results(Some(&own.run_id)).await?;
    let cell = |i: usize| {
        own.first()
            .and_then(|t| t.rows.first())
            .and_then(|r| r.get(i))
            .and_then(serde_json::Value::as_f64)
            .unwrap_or_default()
    };
    room.say(format!(
        "bank-a asked about its own transfers: {} transfers, {:.2} in all",
        cell(0),
        cell(1)
    ));
    let mut refusals = Vec::new();
    for (what, sql) in ATTEMPTS {
        match clients[0].query(sql, None).await {
            Err(kura_client::ClientError::Refused { reason, rule, .. }) => {
                room.say(format!("bank-a asked for {what}: refused, {reason}"));
                refusals.push(serde_json::json!({
                    "attempt": what, "sql": sql, "rule": rule, "reason": reason,
                }));
            }
            Ok(_) => anyhow::bail!("the enclave answered bank-a's question for {what}"),
            Err(e) => return Err(e.into()),
        }
    }

    let report = room.audit(&mut clients[0]).await?;
    running.shutdown().await?;
    room.summary(
        "aml",
        &contract,
        &measurement,
        &report,
        serde_json::json!({
            "received": received,
            "refusals": refusals,
        }),
    );
    Ok(ExitCode::SUCCESS)
}
