//! A cluster of real processes on loopback: the coordinator (`kura serve --cluster`) and
//! executors (`kura executor`), each attesting to the other before anything moves.

use std::io::BufRead;
use std::path::Path;

use kura_ledger::Event;

use super::cli::{Served, cli_setup_with, key_at, kura_home, serve_with};
use super::storage::{by_activity, never_deleted};

/// Starts `kura executor` for the coordinator at `url` with `contract`; returns it once admitted,
/// or its error output if it stopped.
fn executor(d: &Path, url: &str, contract: &Path, name: &str) -> Result<Served, String> {
    let log = d.join(format!("{name}.log"));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kura"))
        .env("KURA_HOME", kura_home())
        .args(["executor", "--coordinator", url, "--platform", "simulated"])
        .args(["--listen", "127.0.0.1:0", "--slots", "1", "--contract"])
        .arg(contract)
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut served = Served(child);
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap();
    if line.starts_with("kura executor ") {
        Ok(served)
    } else {
        let _ = served.0.wait();
        Err(std::fs::read_to_string(&log).unwrap_or_default())
    }
}

/// Two attested executors run the analysis and give the answer the coordinator gave alone; the
/// log names them, both at their admission and in the run.
#[test]
pub(crate) fn attested_executors_answer_as_one_node_would() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let path = cli_setup_with(d, "", never_deleted);
    let contract = kura_contract::files::read_signed(&path).unwrap();
    let (_coordinator, url) = serve_with(d, &path, &["--cluster", "127.0.0.1:0"]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client =
        |party: &str| kura_client::Client::new(&url, contract.clone(), key_at(d, party)).unwrap();
    let alone = rt.block_on(async {
        for (party, dataset) in [("hospital-a", "ehr"), ("fitness-b", "activity")] {
            let mut c = client(party);
            c.attest().await.unwrap();
            c.upload(dataset, &d.join(format!("{dataset}.csv")), |_| {})
                .await
                .unwrap();
        }
        let mut h = client("hospital-a");
        h.attest().await.unwrap();
        by_activity(&mut h).await
    });
    let _executors: Vec<Served> = ["e1", "e2"]
        .iter()
        .map(|name| executor(d, &url, &path, name).unwrap())
        .collect();
    let (clustered, events) = rt.block_on(async {
        let mut h = client("hospital-a");
        h.attest().await.unwrap();
        let rows = by_activity(&mut h).await;
        let events: Vec<Event> = h
            .audit()
            .await
            .unwrap()
            .entries
            .iter()
            .map(|e| e.parse_body().unwrap().event)
            .collect();
        (rows, events)
    });
    assert_eq!(clustered, alone);
    let joined: Vec<&String> = events
        .iter()
        .filter_map(|e| match e {
            Event::ExecutorJoined { executor, .. } => Some(executor),
            _ => None,
        })
        .collect();
    assert_eq!(joined.len(), 2, "{events:?}");
    let runs: Vec<&Vec<String>> = events
        .iter()
        .filter_map(|e| match e {
            Event::Run { executors, .. } => Some(executors),
            _ => None,
        })
        .collect();
    assert_eq!(runs.len(), 2);
    assert!(runs[0].is_empty(), "the first run had no executor");
    assert_eq!(runs[1].iter().collect::<Vec<_>>(), joined);
}
