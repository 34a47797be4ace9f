//! List analyses routed to their owners: three banks.

use kura_client::Client;
use kura_ledger::Event;

use crate::common::*;

/// Three banks, each with its own transfers; chains planted across banks. The list analysis
/// names the accounts that receive from another bank and pass money on, and each bank gets only
/// its own accounts. Ad-hoc queries run under the rules, refusals name the rule and are logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn three_banks_get_only_their_own_accounts_from_a_cross_bank_list() {
    let dir = tempfile::tempdir().unwrap();
    let banks = ["bank-a", "bank-b", "bank-c"];
    let (parties, contract) = signed_fixture(
        include_str!("../../../../testdata/contracts/aml-three-banks.toml"),
        &banks,
    )
    .await;
    let server = start(&contract, &dir.path().join("state")).await;
    // Planted chains: a001 -> b001 -> c001 -> a002 -> a999 and c050 -> b050 -> b051;
    // noise inside each bank (a1xx -> a1xx) is not cross-bank and must not be listed.
    let data = [
        (
            "a",
            "a001,b001,9000\na002,a999,8800\na100,a101,50\na101,a102,40\na103,a104,10\n",
        ),
        (
            "b",
            "b001,c001,8900\nb050,b051,700\nb100,b101,30\nb101,b102,20\n",
        ),
        ("c", "c001,a002,8850\nc050,b050,720\nc100,c101,60\n"),
    ];
    let mut clients = vec![];
    for name in banks {
        let mut c = Client::new(&server.url(), contract.clone(), key_of(&parties, name)).unwrap();
        c.attest().await.unwrap();
        clients.push(c);
    }
    for ((b, rows), c) in data.into_iter().zip(&mut clients) {
        let path = dir.path().join(format!("transfers_{b}.csv"));
        std::fs::write(&path, format!("from_account,to_account,amount\n{rows}")).unwrap();
        c.upload(&format!("transfers_{b}"), &path, |_| {})
            .await
            .unwrap();
    }
    let run = clients[1].run("mules").await.unwrap();
    let expected = [vec!["a002"], vec!["b001", "b050"], vec!["c001"]];
    for (c, want) in clients.iter_mut().zip(expected) {
        let table = c.results(Some(&run.run_id)).await.unwrap().remove(0);
        let got: Vec<&str> = table.rows.iter().map(|r| r[0].as_str().unwrap()).collect();
        assert_eq!(got, want, "{}", c.party());
    }

    // Ad-hoc: bank-a may ask for statistics; identifiers and other banks' rows never come out.
    let (a, rest) = clients.split_at_mut(1);
    let a = &mut a[0];
    let ok = a
        .query(
            "SELECT COUNT(*) AS n, SUM(amount) AS total FROM transfers_a",
            None,
        )
        .await
        .unwrap();
    let table = a.results(Some(&ok.run_id)).await.unwrap().remove(0);
    assert_eq!(
        table.rows,
        vec![vec![serde_json::json!(5), serde_json::json!(17900.0)]]
    );
    let (status, reason) = refused(
        a.query(
            "SELECT from_account, COUNT(*) FROM transfers_b GROUP BY from_account",
            None,
        )
        .await,
    );
    assert_eq!(status, 409, "{reason}");
    assert!(
        reason.contains("identifier-use") && reason.contains("transfers_b.from_account"),
        "{reason}"
    );
    let (_, reason) = refused(
        a.query("SELECT COUNT(*) FROM transfers_b WHERE amount > 8000", None)
            .await,
    );
    assert!(reason.contains("measure-use"), "{reason}");
    // bank-b is not an [adhoc] analyst.
    let (status, _) = refused(
        rest[0]
            .query("SELECT COUNT(*) FROM transfers_b", None)
            .await,
    );
    assert_eq!(status, 403);

    // The log shows the query and the refusals, and verifies against the contract.
    let report = a.audit().await.unwrap();
    let events: Vec<Event> = report
        .entries
        .iter()
        .map(|e| e.parse_body().unwrap().event)
        .collect();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Run { sql: Some(s), .. } if s.contains("SUM(amount)")))
    );
    // Refused queries are logged with their SQL, like answered ones.
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::RunRefused { analysis, sql: Some(_), .. } if analysis == kura_contract::ADHOC_ANALYSIS))
            .count(),
        3
    );
    // No entry tells anyone the size of a result: its receivers have it, sealed.
    assert!(events.iter().all(|e| !matches!(
        e,
        Event::Run { rows: Some(_), .. }
            | Event::Run {
                suppressed_groups: Some(_),
                ..
            }
    )));
}
