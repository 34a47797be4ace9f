//! Model analyses through the service: two banks train a fraud model on their pooled
//! transactions; each gets the model, sealed to it, and neither sees a row.

use std::fmt::Write as _;

use kura_client::Client;
use kura_ledger::Event;

use crate::common::*;

/// `accounts` accounts per bank, 20 transactions each. Fraud follows amount, night and foreign
/// by a fixed pattern (no randomness): a high amount at night abroad is always fraud, and a
/// low amount by day at home never is.
fn transactions(bank: &str, accounts: usize) -> String {
    let mut csv = String::from("account,amount,night,foreign,fraud\n");
    for a in 0..accounts {
        for t in 0..20 {
            let amount = 10.0 + ((a * 37 + t * 101) % 2000) as f64;
            let night = (a + t) % 3 == 0;
            let foreign = (a * 7 + t) % 5 == 0;
            let score =
                amount / 2000.0 + if night { 0.3 } else { 0.0 } + if foreign { 0.2 } else { 0.0 };
            // Some noise in the middle, so that the classes overlap and the fit is finite.
            let fraud = score > 0.9 || (score > 0.6 && (a + 3 * t) % 4 == 0);
            writeln!(csv, "{bank}{a},{amount},{night},{foreign},{fraud}").unwrap();
        }
    }
    csv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn two_banks_train_a_model_and_each_receives_only_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let (parties, contract) = signed_fixture(
        include_str!("../../../../testdata/contracts/fraud-two-banks.toml"),
        &["bank-a", "bank-b"],
    )
    .await;
    let server = start(&contract, &dir.path().join("state")).await;
    let mut clients = vec![];
    for (name, dataset, accounts) in [
        ("bank-a", "transactions_a", 150),
        ("bank-b", "transactions_b", 6),
    ] {
        let mut c = Client::new(&server.url(), contract.clone(), key_of(&parties, name)).unwrap();
        c.attest().await.unwrap();
        let path = dir.path().join(format!("{dataset}.csv"));
        std::fs::write(&path, transactions(&name[5..], accounts)).unwrap();
        c.upload(dataset, &path, |_| {}).await.unwrap();
        clients.push(c);
    }

    // Bank b's rows come from 6 accounts, under the minimum of 10: no model, and the refusal
    // says so without a count.
    let (status, reason) = refused(clients[0].run("fraud_model").await);
    assert_eq!(status, 409, "{reason}");
    assert!(reason.contains("fewer than 10 people"), "{reason}");
    assert!(clients[0].results(None).await.unwrap().is_empty());

    // With 150 accounts each, both banks receive the same model: no account weighs more than
    // a tenth of its bank's part of the fit.
    let path = dir.path().join("more_b.csv");
    std::fs::write(&path, transactions("b", 150)).unwrap();
    clients[1].set_append(true);
    clients[1]
        .upload("transactions_b", &path, |_| {})
        .await
        .unwrap();
    let run = clients[1].run("fraud_model").await.unwrap();
    let mut tables = vec![];
    for c in &mut clients {
        tables.push(c.results(Some(&run.run_id)).await.unwrap().remove(0));
    }
    assert_eq!(tables[0].rows, tables[1].rows);
    assert_eq!(tables[0].columns, ["term", "value"]);
    let value = |term: &str| {
        tables[0]
            .rows
            .iter()
            .find(|r| r[0] == term)
            .and_then(|r| r[1].as_f64())
            .unwrap_or_else(|| panic!("no {term}: {:?}", tables[0].rows))
    };
    // The pattern raises the odds of fraud with each feature.
    for feature in ["amount", "night", "foreign"] {
        assert!(value(feature) > 0.0, "{feature}: {:?}", tables[0].rows);
    }
    assert!(value("holdout_auc") > 0.8, "{:?}", tables[0].rows);
    // No row of either bank: one row per term and measure, nothing else.
    let terms: Vec<&str> = tables[0]
        .rows
        .iter()
        .map(|r| r[0].as_str().unwrap())
        .collect();
    assert_eq!(
        terms,
        [
            "intercept",
            "amount",
            "night",
            "foreign",
            "holdout_accuracy",
            "holdout_auc",
            "holdout_log_loss"
        ]
    );

    // The ONNX file released with the table is the table's model: it scores as its terms do.
    let onnx = kura_crypto::b64::decode(tables[0].onnx.as_deref().expect("an ONNX file")).unwrap();
    let scorer = kura_ml::onnx::Scorer::load(&onnx, 3).unwrap();
    let row = [1500.0, 1.0, 0.0];
    let z = value("intercept") + value("amount") * row[0] + value("night") * row[1];
    let p = scorer.score(&row).unwrap()[0];
    assert!(
        (p - 1.0 / (1.0 + (-z).exp())).abs() < 1e-5,
        "{p} against z = {z}"
    );

    // The tree on the same rows: both banks get its leaves, each a rule on the contract's cut
    // points with its rate, and an ONNX file that scores a row as the rate of its leaf.
    let run = clients[0].run("fraud_tree").await.unwrap();
    let mut trees = vec![];
    for c in &mut clients {
        trees.push(c.results(Some(&run.run_id)).await.unwrap().remove(0));
    }
    assert_eq!(trees[0].rows, trees[1].rows);
    let leaves: Vec<(&str, f64)> = trees[0]
        .rows
        .iter()
        .map(|r| (r[0].as_str().unwrap(), r[1].as_f64().unwrap()))
        .filter(|(term, _)| !term.starts_with("holdout_"))
        .collect();
    assert!(leaves.len() >= 2, "{:?}", trees[0].rows);
    let cut_points = ["100", "250", "500", "1000", "1500", "0.5"];
    for (rule, rate) in &leaves {
        assert!((0.0..=1.0).contains(rate), "{rule}: {rate}");
        for number in rule.split(' ').filter(|w| w.parse::<f64>().is_ok()) {
            assert!(cut_points.contains(&number), "{rule}");
        }
    }
    let onnx = kura_crypto::b64::decode(trees[0].onnx.as_deref().expect("an ONNX file")).unwrap();
    let scorer = kura_ml::onnx::Scorer::load(&onnx, 3).unwrap();
    let score = scorer.score(&[1900.0, 1.0, 1.0]).unwrap()[0];
    assert!(
        leaves.iter().any(|(_, rate)| (rate - score).abs() < 1e-6),
        "{score} is no leaf's rate: {leaves:?}"
    );

    // The log has the refusal and the runs, and verifies.
    let events = events_of(&mut clients[0]).await;
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::RunRefused { analysis, .. } if analysis == "fraud_model"))
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Run { analysis, .. } if analysis == "fraud_model"))
    );
}

/// The consortium's model: the logistic pattern [`transactions`] follows, roughly.
fn consortium_model() -> kura_ml::Model {
    kura_ml::Model {
        family: kura_ml::Family::Logistic,
        intercept: -6.0,
        coefficients: vec![
            ("amount".into(), 0.004),
            ("night".into(), 1.5),
            ("foreign".into(), 1.0),
        ],
        metrics: Vec::new(),
    }
}

/// `accounts` accounts of 5 new transactions each, of `bank`, with their features.
fn new_transactions(bank: &str, accounts: usize) -> (String, Vec<(String, [f64; 3])>) {
    let mut csv = String::from("account,txn,channel,amount,night,foreign\n");
    let mut rows = Vec::new();
    for a in 0..accounts {
        for t in 0..5 {
            let amount = 20.0 + ((a * 53 + t * 211) % 1800) as f64;
            let (night, foreign) = ((a + t) % 4 == 0, (a * 3 + t) % 7 == 0);
            let channel = if t % 2 == 0 { "card" } else { "online" };
            let txn = format!("{bank}-{a}-{t}");
            writeln!(csv, "{bank}{a},{txn},{channel},{amount},{night},{foreign}").unwrap();
            let flag = |b: bool| f64::from(u8::from(b));
            rows.push((txn, [amount, flag(night), flag(foreign)]));
        }
    }
    (csv, rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn a_model_scores_each_banks_rows_for_that_bank_only() {
    let dir = tempfile::tempdir().unwrap();
    let model = consortium_model();
    let onnx = kura_ml::onnx::export(&model);
    let pinned = hex::encode(kura_crypto::sha256(&onnx));
    let (parties, contract) = signed_fixture_with(
        include_str!("../../../../testdata/contracts/fraud-scoring.toml"),
        &["consortium", "bank-c", "bank-d"],
        |name| {
            assert_eq!(name, "sha256:fraud_model");
            pinned.clone()
        },
    )
    .await;
    let server = start(&contract, &dir.path().join("state")).await;
    let client = |name| {
        let mut c = Client::new(&server.url(), contract.clone(), key_of(&parties, name)).unwrap();
        async move {
            c.attest().await.unwrap();
            c
        }
    };
    let mut consortium = client("consortium").await;

    // Another file under the model's name is refused inside the enclave (the client's own
    // check is passed by), and so is a model from a party that does not provide it.
    let mut other = consortium_model();
    other.intercept = 3.0;
    let (status, reason) = refused(
        consortium
            .upload_reader(
                "fraud_model",
                kura_api::UploadFormat::Onnx,
                std::io::Cursor::new(kura_ml::onnx::export(&other)),
                |_| {},
            )
            .await,
    );
    assert_eq!(status, 409, "{reason}");
    assert!(
        reason.contains("not the model the contract pins"),
        "{reason}"
    );
    let model_path = dir.path().join("model.onnx");
    std::fs::write(&model_path, &onnx).unwrap();
    let mut bank_c = client("bank-c").await;
    let local = bank_c.upload("fraud_model", &model_path, |_| {}).await;
    assert!(
        format!("{local:?}").contains("not the provider"),
        "{local:?}"
    );

    consortium
        .upload("fraud_model", &model_path, |_| {})
        .await
        .unwrap();
    let (status, reason) = refused(consortium.upload("fraud_model", &model_path, |_| {}).await);
    assert_eq!(
        (status, reason.contains("already uploaded")),
        (409, true),
        "{reason}"
    );

    let mut bank_d = client("bank-d").await;
    let mut plain = std::collections::HashMap::new();
    for (c, bank, dataset, accounts) in [
        (&mut bank_c, "c", "new_c", 30),
        (&mut bank_d, "d", "new_d", 20),
    ] {
        let (csv, rows) = new_transactions(bank, accounts);
        let path = dir.path().join(format!("{dataset}.csv"));
        std::fs::write(&path, csv).unwrap();
        c.upload(dataset, &path, |_| {}).await.unwrap();
        plain.extend(rows);
    }

    let run = bank_c.run("score_new").await.unwrap();
    // Each bank gets its own transactions, each with the model's score, and no features.
    for (c, bank, count) in [(&mut bank_c, "c", 150), (&mut bank_d, "d", 100)] {
        let table = c.results(Some(&run.run_id)).await.unwrap().remove(0);
        assert_eq!(table.columns, ["account", "txn", "channel", "score"]);
        assert_eq!(table.rows.len(), count);
        for row in &table.rows {
            assert!(row[0].as_str().unwrap().starts_with(bank), "{row:?}");
            let features = plain[row[1].as_str().unwrap()];
            let score = row[3].as_f64().unwrap();
            let expected = model.predict(&features);
            assert!(
                (score - expected).abs() < 1e-5,
                "{score} against {expected}"
            );
        }
    }
    // The consortium gets the scores' distribution by channel, never a row: every released
    // cell rests on at least 10 accounts of each bank in it, and the cells account for every
    // transaction but those of withheld cells, which are not counted for the model's provider.
    let table = consortium
        .results(Some(&run.run_id))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(table.columns, ["channel", "score_from", "score_to", "rows"]);
    let released: u64 = table.rows.iter().map(|r| r[3].as_u64().unwrap()).sum();
    assert!(!table.rows.is_empty());
    assert!(released <= 250);
    assert_eq!(table.suppressed_groups, 0, "{table:?}");
    let mut expected = std::collections::BTreeMap::new();
    for (txn, features) in &plain {
        let channel = if txn.ends_with(['0', '2', '4']) {
            "card"
        } else {
            "online"
        };
        let bucket = (model.predict(features) * 10.0).floor().min(9.0) as i64;
        *expected.entry((channel, bucket)).or_insert(0u64) += 1;
    }
    for row in &table.rows {
        let bucket = row[1].as_f64().map_or(0, |f| (f * 10.0).round() as i64);
        let cell = (row[0].as_str().unwrap(), bucket);
        assert_eq!(
            Some(&row[3].as_u64().unwrap()),
            expected.get(&cell),
            "{row:?}"
        );
    }

    // The log records the model's upload (held in memory, never at rest) and verifies.
    let events = events_of(&mut consortium).await;
    assert!(events.iter().any(|e| matches!(e,
        Event::Upload { dataset, stored: None, .. } if dataset == "fraud_model")));
    assert!(events.iter().any(|e| matches!(e,
        Event::UploadRefused { dataset, .. } if dataset == "fraud_model")));

    // The model lived in that instance's memory only: after a restart the log records its
    // deletion, the datasets at rest are still there, and scoring is refused.
    drop((consortium, bank_c, bank_d));
    server.shutdown().await.unwrap();
    let again = start(&contract, &dir.path().join("state")).await;
    let mut c = Client::new(&again.url(), contract.clone(), key_of(&parties, "bank-c")).unwrap();
    c.attest().await.unwrap();
    let events = events_of(&mut c).await;
    assert!(events.iter().any(|e| matches!(e,
        Event::Deletion { dataset, reason } if dataset == "fraud_model"
            && reason.contains("restarted"))));
    let (status, reason) = refused(c.run("score_new").await);
    assert_eq!(status, 409, "{reason}");
    assert!(
        reason.contains("\"fraud_model\"") && reason.contains("deleted"),
        "{reason}"
    );
    again.shutdown().await.unwrap();
}

/// A model trained with differential privacy spends exactly its ε from each receiver's
/// budget, every run on the record, and no run past the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn a_private_model_is_charged_to_the_budget_exactly_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    // The fixture's tree goes: under [privacy.dp] every model must be private, and a tree
    // cannot be.
    let fixture = include_str!("../../../../testdata/contracts/fraud-two-banks.toml");
    let (head, tree) = fixture.split_at(fixture.find("# A tree on the same rows").unwrap());
    let template = format!("{head}{}", &tree[tree.find("[output]").unwrap()..])
        .replacen(
            "kind = \"model\"\n",
            "kind = \"model\"\ndp = true\nepsilon = 0.75\n",
            1,
        )
        .replacen(
            "holdout = 0.2",
            "holdout = 0.0\nbounds = { amount = [0.0, 2100.0], night = [0.0, 1.0], foreign = [0.0, 1.0] }",
            1,
        )
        .replace(
            "[output]",
            "[privacy.dp]\nepsilon = 2.0\nquery_epsilon = 1.0\nmax_contributions = 5\n\n[output]",
        );
    let (parties, contract) = signed_fixture(&template, &["bank-a", "bank-b"]).await;
    let server = start(&contract, &dir.path().join("state")).await;
    let mut clients = vec![];
    for (name, dataset) in [("bank-a", "transactions_a"), ("bank-b", "transactions_b")] {
        let mut c = Client::new(&server.url(), contract.clone(), key_of(&parties, name)).unwrap();
        c.attest().await.unwrap();
        let path = dir.path().join(format!("{dataset}.csv"));
        std::fs::write(&path, transactions(&name[5..], 60)).unwrap();
        c.upload(dataset, &path, |_| {}).await.unwrap();
        clients.push(c);
    }
    for _ in 0..2 {
        let run = clients[0].run("fraud_model").await.unwrap();
        let table = clients[1]
            .results(Some(&run.run_id))
            .await
            .unwrap()
            .remove(0);
        let dp = table.dp.as_ref().expect("a DP report");
        assert_eq!((dp.epsilon, dp.delta, dp.max_contributions), (0.75, 0.0, 5));
        assert_eq!(table.rows.len(), 4, "the terms, no held-out measures");
        assert!(table.onnx.is_some());
    }
    // 1.5 of 2.0 spent: a third run would need 0.75 more.
    let (status, reason) = refused(clients[1].run("fraud_model").await);
    assert_eq!(status, 409, "{reason}");
    assert!(reason.contains("would be exceeded"), "{reason}");

    let report = clients[0].audit().await.unwrap();
    let bodies: Vec<_> = report
        .entries
        .iter()
        .map(|e| e.parse_body().unwrap())
        .collect();
    let events: Vec<_> = bodies.iter().map(|b| b.event.clone()).collect();
    let spends: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Run { analysis, dp, .. } if analysis == "fraud_model" => Some(*dp),
            _ => None,
        })
        .collect();
    let charge = kura_contract::dp::Spend {
        epsilon: 0.75,
        delta: 0.0,
    };
    assert_eq!(spends, [Some(charge), Some(charge)]);
    let budget = kura_client::audit::budget(&contract, &bodies).expect("a budget");
    for account in &budget.accounts_report() {
        assert_eq!(
            (account.spent_epsilon, account.releases),
            (1.5, 2),
            "{account:?}"
        );
    }
}
