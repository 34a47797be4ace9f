//! `kura demo --scenario fraud`: two banks train a fraud model on their pooled transactions.
//!
//! Each bank holds its own customers' card transactions: amount, whether at night, whether
//! abroad, and whether it turned out to be fraud. Fraud is rare and follows a planted logistic
//! pattern; either bank alone has few fraud cases, together they have more. The enclave trains
//! a logistic model on both banks' rows (the contract's `fraud_model`), and each bank receives
//! the coefficients and the model's quality on held-out rows, never a row of the other bank.
//! It also grows a tree on the same rows (`fraud_tree`): its splits fall only on the contract's
//! public cut points, and each leaf's fraud rate covers at least `min_group_size` accounts of
//! each bank in it. Each bank then scores its own new transactions with the model, on its own
//! side.
//!
//! Then the model leaves the banks as what the enclave released with it: an ONNX file. In a
//! second room, under a contract that pins that file's SHA-256, the consortium of the two
//! banks has it score two other banks' new transactions. Each of those banks gets its own
//! transactions' fraud scores and never sees the model; the consortium gets only how the
//! scores are distributed, by channel, and never a transaction.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, ensure};

use super::{DemoArgs, Room};
use crate::render;
use crate::splitmix::SplitMix;

/// The analyses the banks run: a logistic model, and a tree on the same rows.
const ANALYSIS: &str = "fraud_model";
const TREE: &str = "fraud_tree";

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
        crate::files::write_private(dir.join(format!("transactions_{bank}.csv")), csv)?;
    }
    Ok(())
}

const BANKS: [&str; 2] = ["bank-a", "bank-b"];

/// The room, its signed contract and its parties' generated data (`kura demo --console` opens
/// the same room in the parties' consoles).
pub(super) fn setup(args: &DemoArgs) -> Result<(Room, kura_contract::SignedContract)> {
    ensure!(
        args.rows >= 200,
        "--rows must be at least 200 (transactions per bank) for a model"
    );
    let room = Room::new(
        args.json,
        "kura demo: two banks train a fraud model on pooled transactions",
    )?;
    let banks = BANKS;
    let contract = room.sign(&banks, |keys| {
        kura_contract::example::fraud_two_banks(&keys[0], &keys[1])
    })?;
    let data = room.data()?;
    generate(&data, args.rows, args.seed)?;
    Ok((room, contract))
}

pub async fn run(args: DemoArgs) -> Result<ExitCode> {
    let (room, contract) = setup(&args)?;
    let data = room.data()?;
    let banks = BANKS;

    let (running, mut clients, measurement) = room.enclave(&contract, &banks).await?;
    for (client, bank) in clients.iter_mut().zip(["a", "b"]) {
        let dataset = format!("transactions_{bank}");
        room.upload(client, &dataset, &data.join(format!("{dataset}.csv")))
            .await?;
    }

    // Training, and both banks' copies of the model.
    let run = clients[0].run(ANALYSIS).await?;
    let models = Room::results(&mut clients, &run.run_id).await?;
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

    // The same rows as a tree, which the banks can read as rules.
    let run = clients[1].run(TREE).await?;
    let trees = Room::results(&mut clients, &run.run_id).await?;
    ensure!(
        trees[0] == trees[1],
        "the two banks received different trees"
    );
    room.say(format!("\n{}", render::table(&trees[0])));
    room.say(format!(
        "the tree splits only at the contract's cut points, and each leaf's fraud rate is over at \
         least {} accounts of each bank in it",
        contract.output.min_group_size
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

    let onnx = model
        .onnx
        .as_deref()
        .context("the model came without its ONNX file")?;
    let scoring = score(&args, &kura_crypto::b64::decode(onnx)?).await?;

    room.summary(
        "fraud",
        &contract,
        &measurement,
        &report,
        serde_json::json!({
            "model": render::result_json(model),
            "tree": render::result_json(&trees[0]),
            "planted": PLANTED,
            "receivers_agree": true,
            "scored": scored,
            "scoring": scoring,
        }),
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes `new_c.csv` and `new_d.csv` into `dir`: `rows` new transactions per bank, five per
/// account, by card or online.
fn generate_new(dir: &Path, rows: usize, seed: u64) -> Result<()> {
    let mut rng = SplitMix(seed);
    for bank in ["c", "d"] {
        let mut csv = String::from("account,txn,channel,amount,night,foreign\n");
        for i in 0..rows {
            let (amount, night, abroad) = draw(&mut rng);
            let channel = if rng.unit() < 0.6 { "card" } else { "online" };
            let upper = bank.to_uppercase();
            writeln!(
                csv,
                "{upper}{:06},{upper}-T{i:07},{channel},{amount},{night},{abroad}",
                i / 5
            )?;
        }
        crate::files::write_private(dir.join(format!("new_{bank}.csv")), csv)?;
    }
    Ok(())
}

/// The second room: the consortium's model `onnx` scores banks C's and D's new transactions.
/// Returns the summary for `--json`.
async fn score(args: &DemoArgs, onnx: &[u8]) -> Result<serde_json::Value> {
    let room = Room::new(
        args.json,
        "\nkura demo, second room: the consortium's model scores other banks' new transactions",
    )?;
    let parties = ["consortium", "bank-c", "bank-d"];
    let sha256 = hex::encode(kura_crypto::sha256(onnx));
    let contract = room.sign_named(&parties, |named| {
        kura_contract::example::fraud_scoring(named, &sha256)
    })?;
    room.say(format!(
        "the contract pins the model file's SHA-256 {}…; banks C and D sign for it without \
         seeing it",
        &sha256[..16]
    ));
    let data = room.data()?;
    let model_path = data.join("fraud_model.onnx");
    crate::files::write_private(&model_path, onnx)?;
    generate_new(&data, (args.rows / 5).max(200), args.seed ^ 0x5c0e)?;

    let (running, mut clients, _) = room.enclave(&contract, &parties).await?;
    room.upload(&mut clients[0], "fraud_model", &model_path)
        .await?;
    for (i, bank) in ["c", "d"].into_iter().enumerate() {
        let dataset = format!("new_{bank}");
        room.upload(
            &mut clients[i + 1],
            &dataset,
            &data.join(format!("{dataset}.csv")),
        )
        .await?;
    }
    let run = clients[1].run("score_new").await?;
    let tables = Room::results(&mut clients, &run.run_id).await?;
    for (table, bank) in tables[1..].iter().zip(["bank-c", "bank-d"]) {
        let mut top: Vec<&Vec<serde_json::Value>> = table.rows.iter().collect();
        top.sort_by(|a, b| {
            b[3].as_f64()
                .partial_cmp(&a[3].as_f64())
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        room.say(format!(
            "{bank} received the scores of its own {} transactions, and no other's; its highest:",
            table.rows.len()
        ));
        for row in top.iter().take(3) {
            room.say(format!(
                "  {} ({}, account {}): fraud probability {:.3}",
                row[1].as_str().unwrap_or_default(),
                row[2].as_str().unwrap_or_default(),
                row[0].as_str().unwrap_or_default(),
                row[3].as_f64().unwrap_or_default()
            ));
        }
    }
    room.say(format!(
        "the consortium received only the distribution of the scores, each cell from at least \
         {} accounts:\n{}",
        contract.output.min_group_size,
        render::table(&tables[0])
    ));
    let report = room.audit(&mut clients[0]).await?;
    running.shutdown().await?;
    Ok(serde_json::json!({
        "contract_id": contract.id(),
        "model_sha256": sha256,
        "rows": {"bank-c": tables[1].rows.len(), "bank-d": tables[2].rows.len()},
        "distribution": render::result_json(&tables[0]),
        "audit": {"valid": true, "entries": report.chain.entries, "head": report.chain.head},
    }))
}
