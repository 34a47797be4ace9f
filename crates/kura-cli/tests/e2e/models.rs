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
        ("bank-a", "transactions_a", 60),
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

    // With 60 accounts each, both banks receive the same model.
    let path = dir.path().join("more_b.csv");
    std::fs::write(&path, transactions("b", 60)).unwrap();
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

    // The log has the refusal and the run, and verifies.
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
