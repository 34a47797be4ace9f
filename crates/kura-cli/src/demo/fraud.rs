//! `kura demo --scenario fraud`: two banks train a fraud model on their pooled transactions.
//!
//! Each bank holds its own customers' card transactions: amount, whether at night, whether
//! abroad, and whether it turned out to be fraud. Fraud is rare and follows a planted logistic
//! pattern; either bank alone has few fraud cases, together they have more. The enclave trains
//! a logistic model on both banks' rows (the contract's `fraud_model`), and each bank receives
//! the coefficients and the model's quality on held-out rows, never a row of the other bank.
//! Each bank then scores its own new transactions with the model, on its own side.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, ensure};

use super::{DemoArgs, Room};
use crate::render;
use crate::splitmix::SplitMix;

/// The analysis the banks run.
const ANALYSIS: &str = "fraud_model";

/// The log-odds of fraud that the generator plants: intercept, per unit of amount, at night,
/// abroad.
const PLANTED: [f64; 4] = [-5.0, 0.0015, 1.2, 1.6];

/// One transaction: amount, at night, abroad.
type Transaction = (f64, bool, bool);

fn draw(rng: &mut SplitMix) -> Transaction {
    let amount = 5.0 + (rng.unit() * 300_000.0).round() / 100.0;
    (amount, rng.unit() < 0.25, rng.unit() < 0.15)
}

fn log_odds(w: &[f64; 4], (amount, night, abroad): Transaction) -> f64 {
    w[0] + w[1] * amount + w[2] * f64::from(u8::from(night)) + w[3] * f64::from(u8::from(abroad))
}

/// Writes `transactions_a.csv` and `transactions_b.csv` into `dir`: `rows` transactions per
/// bank, over one account per ten transactions.
pub fn generate(dir: &Path, rows: usize, seed: u64) -> Result<()> {
    let mut rng = SplitMix(seed);
    for bank in ["a", "b"] {
        let mut csv = String::from("account,amount,night,foreign,fraud\n");
        for i in 0..rows {
            let t = draw(&mut rng);
            let fraud = rng.unit() < 1.0 / (1.0 + (-log_odds(&PLANTED, t)).exp());
            let (amount, night, abroad) = t;
            writeln!(
                csv,
                "{}{:06},{amount},{night},{abroad},{fraud}",
                bank.to_uppercase(),
                i / 10
            )?;
        }
        std::fs::write(dir.join(format!("transactions_{bank}.csv")), csv)?;
    }
    Ok(())
}

pub async fn run(args: DemoArgs) -> Result<ExitCode> {
    ensure!(
        args.rows >= 200,
        "--rows must be at least 200 (transactions per bank) for a model"
    );
    let room = Room::new(args.json)?;
    room.say(format!(
        "kura demo: two banks train a fraud model on pooled transactions in {}",
        room.root().display()
    ));
    let banks = ["bank-a", "bank-b"];
    let contract = room.sign(&banks, |keys| {
        kura_contract::example::fraud_two_banks(&keys[0], &keys[1])
    })?;
    let data = room.root().join("data");
    std::fs::create_dir_all(&data)?;
    generate(&data, args.rows, args.seed)?;

    let (running, mut clients, measurement) = room.enclave(&contract, &banks).await?;
    for (client, bank) in clients.iter_mut().zip(["a", "b"]) {
        let dataset = format!("transactions_{bank}");
        room.upload(client, &dataset, &data.join(format!("{dataset}.csv")))
            .await?;
    }

    // Training, and both banks' copies of the model.
    let run = clients[0].run(ANALYSIS).await?;
    let mut models = Vec::new();
    for client in &mut clients {
        models.push(
            client
                .results(Some(&run.run_id))
                .await?
                .pop()
                .with_context(|| format!("no model for {}", client.party()))?,
        );
    }
    ensure!(
        models[0] == models[1],
        "the two banks received different models"
    );
    let model = &models[0];
    room.say(format!("\n{}", render::table(model)));
    room.say(
        "both banks decrypted the same enclave-signed model; neither saw a row of the other".into(),
    );
    let term = |name: &str| {
        model
            .rows
            .iter()
            .find(|r| r[0] == name)
            .and_then(|r| r[1].as_f64())
            .with_context(|| format!("the model has no {name}"))
    };
    let w = [
        term("intercept")?,
        term("amount")?,
        term("night")?,
        term("foreign")?,
    ];
    room.say(format!(
        "planted log-odds: {:+.2} {:+.4}/amount {:+.2} at night {:+.2} abroad",
        PLANTED[0], PLANTED[1], PLANTED[2], PLANTED[3]
    ));
    room.say(format!(
        "learned log-odds: {:+.2} {:+.4}/amount {:+.2} at night {:+.2} abroad",
        w[0], w[1], w[2], w[3]
    ));

    // Each bank scores its own new transactions with the model it received: on its own side,
    // with no enclave involved.
    let mut rng = SplitMix(args.seed ^ 0x5eed);
    let mut scored = Vec::new();
    for bank in banks {
        for _ in 0..3 {
            let t = draw(&mut rng);
            let p = 1.0 / (1.0 + (-log_odds(&w, t)).exp());
            room.say(format!(
                "{bank} scores a new transaction of {:>8.2} ({}, {}): fraud probability {:.3}",
                t.0,
                if t.1 { "night" } else { "day" },
                if t.2 { "abroad" } else { "home" },
                p
            ));
            scored.push(serde_json::json!({
                "bank": bank, "amount": t.0, "night": t.1, "foreign": t.2, "probability": p
            }));
        }
    }

    let report = room.audit(&mut clients[0]).await?;
    running.shutdown().await?;

    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "scenario": "fraud",
                "platform": "simulated",
                "warning": kura_attestation::simulated::WARNING,
                "contract_id": contract.id(),
                "measurement": measurement,
                "model": render::result_json(model),
                "planted": PLANTED,
                "receivers_agree": true,
                "scored": scored,
                "audit": {"valid": true, "entries": report.chain.entries, "head": report.chain.head},
            })
        );
    }
    Ok(ExitCode::SUCCESS)
}
