//! Ad-hoc queries under differential privacy and their budget.

use crate::cli::{as_party, cli_setup_with, kura, serve, upload_both};
use crate::common::*;

/// The two-party room with ad-hoc queries under differential privacy: ε = 2 per receiver,
/// steps bands as the public domain, one row per person.
pub(crate) async fn dp_room() -> Room {
    adhoc_room(
        "\n[privacy.dp]\nepsilon = 2.0\nquery_epsilon = 0.5\n\
         domains = { \"activity.steps_band\" = [\"high\", \"mid\", \"low\"] }\n",
    )
    .await
}

pub(crate) const DP_SQL: &str = "SELECT a.steps_band, COUNT(*) AS people FROM ehr e JOIN activity a \
                      ON e.patient_id = a.patient_id GROUP BY a.steps_band ORDER BY a.steps_band";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn dp_queries_spread_as_declared_and_cannot_overspend_the_budget() {
    let room = dp_room().await;
    room.upload("hospital-a", "ehr").await.unwrap();
    room.upload("fitness-b", "activity").await.unwrap();
    let mut a = room.client("hospital-a").await;
    let truth = [("high", 40i64), ("low", 3), ("mid", 25)];

    // 90 queries at ε = 0.02: each count gets discrete Laplace noise of scale 1/0.02 = 50.
    let mut errors = Vec::new();
    for _ in 0..90 {
        let run = a.query(DP_SQL, Some(0.02)).await.unwrap();
        let table = a.results(Some(&run.run_id)).await.unwrap().remove(0);
        let dp = table.dp.as_ref().expect("a DP release says so");
        assert_eq!(dp.columns["people"].scale(), 50.0);
        assert_eq!(table.suppressed_groups, 0);
        // All three public values, even the 3-person band, with noise instead of suppression.
        for (row, (band, n)) in table.rows.iter().zip(truth) {
            assert_eq!(row[0], band);
            errors.push((row[1].as_i64().unwrap() - n) as f64);
        }
    }
    let p = (-1.0f64 / 50.0).exp();
    let declared = 2.0 * p / (1.0 - p).powi(2);
    let n = errors.len() as f64;
    let mean = errors.iter().sum::<f64>() / n;
    let var = errors.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / (n - 1.0);
    assert!(
        (var / declared - 1.0).abs() < 0.45,
        "observed variance {var:.0}, declared {declared:.0}"
    );
    assert!(
        mean.abs() < 5.0 * (declared / n).sqrt(),
        "mean error {mean}"
    );

    // 0.2 of the budget is left: of 20 concurrent queries at 0.02, exactly 10 are answered.
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(room.client("hospital-a").await);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for mut c in clients {
        tasks.spawn(async move { c.query(DP_SQL, Some(0.02)).await });
    }
    let answers = tasks.join_all().await;
    let ok = answers.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 10, "{answers:?}");
    for r in answers.into_iter().filter(|r| r.is_err()) {
        let (status, reason) = refused(r);
        assert_eq!(status, 409);
        assert!(
            reason.contains("privacy budget of hospital-a would be exceeded"),
            "{reason}"
        );
    }

    // The log holds every spend; replaying it gives the whole budget spent and verifies.
    let report = a.audit().await.unwrap();
    let bodies: Vec<_> = report
        .entries
        .iter()
        .map(|e| e.parse_body().unwrap())
        .collect();
    let budget = kura_client::audit::budget(room.contract.contract(), &bodies).unwrap();
    let account = budget
        .accounts_report()
        .into_iter()
        .find(|x| x.name == "hospital-a")
        .unwrap();
    assert_eq!((account.spent_epsilon, account.releases), (2.0, 100));
    assert_eq!(account.remaining_epsilon, 0.0);

    // A restarted enclave rebuilds the spent budget from the log: still refused.
    let stopped = room.stop().await;
    let server = start(&stopped.contract, &stopped.state()).await;
    let mut c = stopped.client(&server.url(), "hospital-a");
    c.attest().await.unwrap();
    let (status, reason) = refused(c.query(DP_SQL, Some(0.01)).await);
    assert_eq!(status, 409);
    assert!(reason.contains("would be exceeded"), "{reason}");
    server.shutdown().await.unwrap();
}

#[test]
pub(crate) fn cli_budget_shows_what_dp_queries_spent() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let contract = cli_setup_with(
        d,
        "\n[adhoc]\nanalysts = [\"hospital-a\"]\nreceivers = [\"hospital-a\"]\n\
         \n[privacy.dp]\nepsilon = 1.0\nquery_epsilon = 0.25\nsplit = \"shared\"\n\
         domains = { \"activity.steps_band\" = [\"high\", \"mid\", \"low\"] }\n",
        // Kept at rest, where the host can damage a stored file (below).
        crate::storage::never_deleted,
    );
    let c = contract.to_str().unwrap();
    let (served, url) = serve(d, &contract);
    let as_party = |name: &str, args: &[&str]| as_party(d, &url, c, name, args);
    // Before the data is there, a query is refused without reading anything: not charged
    // (the budget below counts only the query after the uploads).
    let (code, _, err) = as_party("hospital-a", &["query", "--sql", DP_SQL]);
    assert_eq!(code, Some(1));
    assert!(err.contains("waiting for dataset"), "{err}");
    upload_both(&as_party, d);

    // --explain prices the query without sending it: nothing is spent.
    let explained = kura(&[
        "query",
        "--explain",
        "--contract",
        c,
        "--sql",
        DP_SQL,
        "--json",
    ]);
    assert_eq!(explained.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&explained.stdout).unwrap();
    assert_eq!(v["dp"]["epsilon"], 0.25, "{v}");

    let (code, out, err) = as_party("hospital-a", &["query", "--sql", DP_SQL, "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["dp"]["epsilon"], 0.25);
    assert_eq!(v["rows"].as_array().unwrap().len(), 3);

    let (code, out, err) = as_party("fitness-b", &["budget", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["split"], "shared");
    assert_eq!(v["accounts"][0]["name"], "(collaboration)");
    assert_eq!(v["accounts"][0]["spent_epsilon"], 0.25);

    // A query that fails while it runs is charged in full: whether it fails could depend on
    // the data. No operator fails on a value any more (a cast that does not fit gives NULL:
    // kura_engine::total), so the failure here is the host's: a byte of every stored file is
    // changed, and its pages no longer decrypt.
    let store = d.join("state").join("store");
    let mut damaged = 0;
    for entry in files(&store) {
        if entry.extension().is_some_and(|e| e == "parquet") {
            let mut bytes = std::fs::read(&entry).unwrap();
            let middle = bytes.len() / 3;
            bytes[middle] ^= 0x5a;
            std::fs::write(&entry, bytes).unwrap();
            damaged += 1;
        }
    }
    assert_eq!(damaged, 2);
    let (code, _, err) = as_party("hospital-a", &["query", "--sql", DP_SQL]);
    assert_eq!(code, Some(1), "{err}");
    let (code, out, err) = as_party("fitness-b", &["budget", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["accounts"][0]["spent_epsilon"], 0.5, "{v}");
    assert_eq!(v["accounts"][0]["remaining_epsilon"], 0.5);
    let (code, text, _) = as_party("hospital-a", &["budget"]);
    assert_eq!(code, Some(0));
    assert!(text.contains("remaining ε = 0.5"), "{text}");
    let (code, _, err) = as_party("fitness-b", &["audit", "verify"]);
    assert_eq!(code, Some(0), "{err}");

    drop(served);
}
