//! A cluster of real processes on loopback: the coordinator (`kura serve --cluster`) and
//! executors (`kura executor`), each attesting to the other before anything moves.

use std::io::BufRead;
use std::path::Path;

use kura_client::Client;
use kura_ledger::Event;

use super::cli::{Served, cli_setup_with, key_at, kura_home, serve_with};
use super::storage::{by_activity, forge_ehr, never_deleted};

/// What the host asks the cluster's processes to log: everything Ballista and DataFusion say,
/// which they must not.
const VERBOSE: (&str, &str) = ("KURA_LOG", "info,ballista=trace,datafusion=trace");

/// Starts `kura executor` for the coordinator at `url` with `contract`; returns it once admitted,
/// or its error output if it stopped.
/// Its working directory is `NAME-work` in `d`.
fn executor(d: &Path, url: &str, contract: &Path, name: &str) -> Result<Served, String> {
    let log = d.join(format!("{name}.log"));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kura"))
        .env("KURA_HOME", kura_home())
        .args(["executor", "--coordinator", url, "--platform", "simulated"])
        .args(["--listen", "127.0.0.1:0", "--slots", "1", "--contract"])
        .env(VERBOSE.0, VERBOSE.1)
        .arg(contract)
        .arg("--work-dir")
        .arg(d.join(format!("{name}-work")))
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

/// A coordinator (`kura serve --cluster`, a real process) under the e2e contract with nothing
/// deleted after runs, its parties' keys and data files in a directory of its own.
struct Coordinated {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    contract: kura_contract::SignedContract,
    _coordinator: Served,
    url: String,
    rt: tokio::runtime::Runtime,
}

impl Coordinated {
    /// Starts it after `prepare` wrote any further files into the directory.
    fn start(prepare: impl FnOnce(&Path)) -> Self {
        Self::start_with("", prepare)
    }

    /// With `extra` appended to the contract (which makes the hospital an analyst).
    fn start_with(extra: &str, prepare: impl FnOnce(&Path)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = cli_setup_with(dir.path(), extra, never_deleted);
        prepare(dir.path());
        let contract = kura_contract::files::read_signed(&path).unwrap();
        let (coordinator, url) =
            serve_with(dir.path(), &path, &["--cluster", "127.0.0.1:0"], &[VERBOSE]);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        Coordinated {
            _dir: dir,
            path,
            contract,
            _coordinator: coordinator,
            url,
            rt,
        }
    }

    fn dir(&self) -> &Path {
        self._dir.path()
    }

    fn client(&self, party: &str) -> Client {
        Client::new(&self.url, self.contract.clone(), key_at(self.dir(), party)).unwrap()
    }

    /// Each (party, dataset, file, append) uploaded in turn.
    fn upload(&self, uploads: &[(&str, &str, &str, bool)]) {
        self.rt.block_on(async {
            for (party, dataset, file, append) in uploads {
                let mut c = self.client(party);
                c.attest().await.unwrap();
                c.set_append(*append);
                c.upload(dataset, &self.dir().join(file), |_| {})
                    .await
                    .unwrap();
            }
        });
    }

    /// The hospital's run of `by_activity` and its rows.
    fn by_activity(&self) -> Vec<Vec<serde_json::Value>> {
        self.rt.block_on(async {
            let mut h = self.client("hospital-a");
            h.attest().await.unwrap();
            by_activity(&mut h).await
        })
    }

    /// The events of the verified log.
    fn events(&self) -> Vec<Event> {
        self.rt.block_on(async {
            let mut h = self.client("hospital-a");
            h.attest().await.unwrap();
            super::common::events_of(&mut h).await
        })
    }

    fn executor(&self, name: &str) -> Result<Served, String> {
        executor(self.dir(), &self.url, &self.path, name)
    }
}

const BOTH: [(&str, &str, &str, bool); 2] = [
    ("hospital-a", "ehr", "ehr.csv", false),
    ("fitness-b", "activity", "activity.csv", false),
];

/// Two attested executors run the analysis and give the answer the coordinator gave alone; the
/// log names them, both at their admission and in the run.
#[test]
pub(crate) fn attested_executors_answer_as_one_node_would() {
    let cluster = Coordinated::start(|_| {});
    cluster.upload(&BOTH);
    let alone = cluster.by_activity();
    let _executors: Vec<Served> = ["e1", "e2"]
        .iter()
        .map(|name| cluster.executor(name).unwrap())
        .collect();
    assert_eq!(cluster.by_activity(), alone);
    let events = cluster.events();
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
    // Before the cluster run's entry, both executors' deletion of what it left on them; and
    // nothing is left in their working directories.
    let at = events
        .iter()
        .rposition(|e| matches!(e, Event::Run { .. }))
        .unwrap();
    match &events[at - 1] {
        Event::ShuffleDeleted {
            executors,
            unreachable,
        } => {
            assert_eq!(executors.iter().collect::<Vec<_>>(), joined);
            assert!(unreachable.is_empty());
        }
        other => panic!("the run's entry follows {other:?}"),
    }
    for name in ["e1", "e2"] {
        let work = cluster.dir().join(format!("{name}-work"));
        let left: Vec<_> = super::common::files(&work);
        assert!(left.is_empty(), "{name} kept {left:?}");
    }
    // Asked for everything, the processes still log no line of Ballista's or DataFusion's:
    // those quote plans (the scheduler logs each job's plan at info) and data values.
    for log in ["serve.log", "e1.log", "e2.log"] {
        let text = std::fs::read_to_string(cluster.dir().join(log)).unwrap();
        assert!(
            text.contains("INFO"),
            "{log} is empty: KURA_LOG was not read"
        );
        for quoted in [
            "ballista",
            "datafusion",
            "AggregateExec",
            "kura_units_at_least",
        ] {
            assert!(!text.contains(quoted), "{log} quotes {quoted}:\n{text}");
        }
    }
}

/// The executors read stored files only as the enclave wrote them: after the host puts a
/// plaintext file of its own rows, of the same size, where the hospital's batch was, the
/// cluster's run fails in the fixed words instead of answering from them, and is logged; with
/// the file back, the answer is the one before.
#[test]
pub(crate) fn executors_never_read_a_file_the_enclave_did_not_write() {
    let cluster = Coordinated::start(|_| {});
    cluster.upload(&BOTH);
    let _executors: Vec<Served> = ["e1", "e2"]
        .iter()
        .map(|name| cluster.executor(name).unwrap())
        .collect();
    let (ehr, original) = forge_ehr(&cluster.dir().join("state"), cluster.contract.contract());
    let (status, reason) = cluster.rt.block_on(async {
        let mut h = cluster.client("hospital-a");
        h.attest().await.unwrap();
        super::common::refused(h.run("by_activity").await)
    });
    assert_eq!(status, 409, "{reason}");
    assert!(
        reason.contains(kura_engine::error::STORED_FILE_FAILED),
        "{reason}"
    );
    let events = cluster.events();
    assert!(
        events.iter().any(|e| matches!(e, Event::RunRefused { .. })),
        "{events:?}"
    );
    std::fs::write(&ehr, &original).unwrap();
    let after = cluster.by_activity();
    assert_eq!(after.len(), 2, "{after:?}");
}

/// A differentially private query on a cluster: planned and bounded on the coordinator, its
/// rows capped per person and aggregated by the executors, its noise drawn on the coordinator;
/// the run names the executor, which deleted what the run left.
#[test]
pub(crate) fn a_differentially_private_query_runs_on_the_executors() {
    let cluster = Coordinated::start_with(
        "\n[adhoc]\nanalysts = [\"hospital-a\"]\nreceivers = [\"hospital-a\"]\n\
         \n[privacy.dp]\nepsilon = 2.0\nquery_epsilon = 0.5\n\
         domains = { \"activity.steps_band\" = [\"high\", \"mid\", \"low\"] }\n",
        |_| {},
    );
    cluster.upload(&BOTH);
    let _executor = cluster.executor("e1").unwrap();
    let table = cluster.rt.block_on(async {
        let mut h = cluster.client("hospital-a");
        h.attest().await.unwrap();
        let run = h.query(super::dp::DP_SQL, Some(0.5)).await.unwrap();
        h.results(Some(&run.run_id)).await.unwrap().remove(0)
    });
    assert!(table.dp.is_some(), "a DP release says so");
    let bands: Vec<&str> = table.rows.iter().map(|r| r[0].as_str().unwrap()).collect();
    assert_eq!(bands, ["high", "low", "mid"]);
    let events = cluster.events();
    let at = events
        .iter()
        .rposition(|e| matches!(e, Event::Run { .. }))
        .unwrap();
    let Event::Run { executors, dp, .. } = &events[at] else {
        unreachable!()
    };
    assert!(dp.is_some());
    assert_eq!(executors.len(), 1, "the run names its executor");
    match &events[at - 1] {
        Event::ShuffleDeleted {
            executors: deleted,
            unreachable,
        } => {
            assert_eq!(deleted, executors);
            assert!(unreachable.is_empty());
        }
        other => panic!("the run's entry follows {other:?}"),
    }
    assert!(super::common::files(&cluster.dir().join("e1-work")).is_empty());
}

/// A list analysis on a cluster: the executors join the datasets and read each party's privacy
/// units; the coordinator routes each row to the party whose unit it names, as on one node.
#[test]
pub(crate) fn a_list_analysis_runs_on_the_executors_and_routes_rows_to_their_owners() {
    let cluster = Coordinated::start_with(
        "\n[[analyses]]\nname = \"unmatched\"\nkind = \"list\"\nlist_column = \"patient_id\"\n\
         receivers = [\"hospital-a\", \"fitness-b\"]\n\
         sql = \"SELECT COALESCE(e.patient_id, a.patient_id) AS patient_id FROM ehr e \
         FULL JOIN activity a ON e.patient_id = a.patient_id \
         WHERE e.patient_id IS NULL OR a.patient_id IS NULL ORDER BY 1\"\n",
        |d| {
            // People only one side knows: the hospital's q…, the fitness company's r….
            let append = |file: &str, rows: &str| {
                let mut text = std::fs::read_to_string(d.join(file)).unwrap();
                text.push_str(rows);
                std::fs::write(d.join(file), text).unwrap();
            };
            append("ehr.csv", "q1,old,true\nq2,young,false\n");
            append("activity.csv", "r1,high\n");
        },
    );
    cluster.upload(&BOTH);
    let _executors: Vec<Served> = ["e1", "e2"]
        .iter()
        .map(|name| cluster.executor(name).unwrap())
        .collect();
    let rows = |party: &str, run_id: &str| -> Vec<String> {
        cluster.rt.block_on(async {
            let mut c = cluster.client(party);
            c.attest().await.unwrap();
            let table = c.results(Some(run_id)).await.unwrap().remove(0);
            table
                .rows
                .iter()
                .map(|r| r[0].as_str().unwrap().to_string())
                .collect()
        })
    };
    let run = cluster.rt.block_on(async {
        let mut h = cluster.client("hospital-a");
        h.attest().await.unwrap();
        h.run("unmatched").await.unwrap()
    });
    assert_eq!(rows("hospital-a", &run.run_id), ["q1", "q2"]);
    assert_eq!(rows("fitness-b", &run.run_id), ["r1"]);
    ran_on(&cluster.events(), 2);
}

/// A model analysis on a cluster: the executors join the datasets and count the training
/// rows' people; the coordinator fits the model, the same as it fits alone.
#[test]
pub(crate) fn a_model_is_trained_on_rows_the_executors_read() {
    let cluster = Coordinated::start_with(
        "\n[[analyses]]\nname = \"diabetes_model\"\nkind = \"model\"\n\
         receivers = [\"hospital-a\"]\n\
         sql = \"SELECT CAST(a.steps_band = 'high' AS DOUBLE) AS active, \
         CAST(e.age_band = 'old' AS DOUBLE) AS old, e.diabetes FROM ehr e \
         JOIN activity a ON e.patient_id = a.patient_id\"\n\
         [analyses.model]\nfamily = \"logistic\"\nfeatures = [\"active\", \"old\"]\n\
         label = \"diabetes\"\nholdout = 0.0\n",
        |_| {},
    );
    cluster.upload(&BOTH);
    let model = || -> Vec<(String, f64)> {
        cluster.rt.block_on(async {
            let mut h = cluster.client("hospital-a");
            h.attest().await.unwrap();
            let run = h.run("diabetes_model").await.unwrap();
            let table = h.results(Some(&run.run_id)).await.unwrap().remove(0);
            table
                .rows
                .iter()
                .map(|r| (r[0].as_str().unwrap().to_string(), r[1].as_f64().unwrap()))
                .collect()
        })
    };
    let alone = model();
    let _executors: Vec<Served> = ["e1", "e2"]
        .iter()
        .map(|name| cluster.executor(name).unwrap())
        .collect();
    let clustered = model();
    assert_eq!(alone.len(), 3, "{alone:?}");
    for ((term, a), (other, c)) in alone.iter().zip(&clustered) {
        assert_eq!(term, other);
        // The rows may arrive in another order; the fit is the same to rounding.
        assert!(
            (a - c).abs() <= 1e-6 * a.abs().max(1.0),
            "{term}: {a} alone, {c} on the cluster"
        );
    }
    ran_on(&cluster.events(), 2);
}

/// Checks that the last run's entry names `count` executors, and follows their deletion of what
/// the run left on them.
fn ran_on(events: &[Event], count: usize) {
    let at = events
        .iter()
        .rposition(|e| matches!(e, Event::Run { .. }))
        .unwrap();
    let Event::Run { executors, .. } = &events[at] else {
        unreachable!()
    };
    assert_eq!(executors.len(), count, "the run names its executors");
    assert!(
        matches!(&events[at - 1], Event::ShuffleDeleted { executors: deleted, unreachable } if deleted == executors && unreachable.is_empty()),
        "the run's entry follows {:?}",
        events[at - 1]
    );
}

/// SHA-384 of this test binary: the simulated measurement of a service started in this process.
fn own_measurement() -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha384::digest(std::fs::read(std::env::current_exe().unwrap()).unwrap()).to_vec()
}

/// Executors whose evidence the contract does not accept (another measurement, debug, bound to
/// another contract or to a coordinator's key, not bound to the key they present or to the
/// challenge they answer) are refused with the reason and get no certificate; so is a join
/// whose challenge this start never handed out, a join captured and sent again, and a TLS key
/// already admitted. Refusals are logged at a bounded rate (the rest counted), one that passes
/// is admitted and logged, and the log still verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
pub(crate) async fn executors_the_contract_does_not_accept_are_refused_and_logged() {
    use kura_attestation::simulated::SimulatedHardware;
    use kura_attestation::{executor_report_data, report_data_for};
    use kura_cluster::join::{JoinError, JoinRequest, Joining};

    let measurement = own_measurement();
    let pin = format!(
        "\n[[enclave.accept]]\nplatform = \"simulated\"\nmeasurements = [\"{}\"]\n",
        hex::encode(&measurement)
    );
    let room = super::common::room_custom(
        &["hospital-a", "fitness-b"],
        false,
        "[\"hospital-a\"]",
        |t| t + &pin,
    )
    .await;
    let other = super::common::room_custom(
        &["hospital-a", "fitness-b"],
        false,
        "[\"fitness-b\"]",
        |t| t + &pin,
    )
    .await;
    let server = kura_server::start(kura_server::Config {
        cluster: Some("127.0.0.1:0".parse().unwrap()),
        ..super::common::config(&room.contract, &room.dir.join("clustered"))
    })
    .await
    .unwrap();
    let url = server.url();
    let contract = room.contract.contract();
    let id = contract.id();
    let tls = kura_cluster::tls::NodeKey::generate().unwrap().public_pem();
    let hardware = SimulatedHardware::new();
    let joining = Joining::verify(&url, contract).await.unwrap();
    let request = |challenge: &str, evidence| JoinRequest {
        contract_id: id.to_string(),
        tls_key: tls.clone(),
        challenge: challenge.to_string(),
        evidence,
    };
    let refused = |what: &str, answer: Result<_, JoinError>, expected: &str| match answer {
        Err(JoinError::Refused(reason)) => {
            assert!(reason.to_lowercase().contains(expected), "{what}: {reason}")
        }
        other => panic!("{what}: {other:?}"),
    };
    // Each case: what the evidence binds, given the challenge handed out, and its refusal.
    type Binding<'a> = Box<dyn Fn(&str) -> ([u8; 64], Vec<u8>, bool) + 'a>;
    let cases: Vec<(&str, Binding, &str)> = vec![
        (
            "another measurement",
            Box::new(|c| (executor_report_data(id, &tls, c), vec![0xab; 48], false)),
            "measurement",
        ),
        (
            "a debug enclave",
            Box::new(|c| (executor_report_data(id, &tls, c), measurement.clone(), true)),
            "debug",
        ),
        (
            "another contract",
            Box::new(|c| {
                let other = other.contract.contract().id();
                (
                    executor_report_data(other, &tls, c),
                    measurement.clone(),
                    false,
                )
            }),
            "does not bind",
        ),
        (
            "another TLS key",
            Box::new(|c| {
                let key = kura_cluster::tls::NodeKey::generate().unwrap().public_pem();
                (
                    executor_report_data(id, &key, c),
                    measurement.clone(),
                    false,
                )
            }),
            "does not bind",
        ),
        (
            "another challenge",
            Box::new(|_| {
                (
                    executor_report_data(id, &tls, &"0".repeat(64)),
                    measurement.clone(),
                    false,
                )
            }),
            "does not bind",
        ),
        (
            "a coordinator's binding",
            Box::new(|_| {
                let bound = report_data_for(id, room.key("hospital-a").public());
                (bound, measurement.clone(), false)
            }),
            "does not bind",
        ),
    ];
    for (what, binding, expected) in &cases {
        let challenge = joining.challenge().await.unwrap();
        let (bound, measured, debug) = binding(&challenge);
        let evidence = hardware.issue(&measured, &bound, debug);
        refused(
            what,
            joining.request(&request(&challenge, evidence)).await,
            expected,
        );
    }
    // A challenge this start never handed out.
    let made_up = "1".repeat(64);
    let evidence = hardware.issue(
        &measurement,
        &executor_report_data(id, &tls, &made_up),
        false,
    );
    refused(
        "a made-up challenge",
        joining.request(&request(&made_up, evidence)).await,
        "challenge",
    );

    let challenge = joining.challenge().await.unwrap();
    let evidence = hardware.issue(
        &measurement,
        &executor_report_data(id, &tls, &challenge),
        false,
    );
    let good = request(&challenge, evidence);
    let admission = joining.request(&good).await.unwrap();
    assert_eq!(
        joining.coordinator.key.to_text(),
        super::common::raw_info(&url).await.enclave_key
    );
    assert!(admission.certificate.contains("BEGIN CERTIFICATE"));
    // The same join again (captured on the wire): its challenge is spent.
    refused("a replayed join", joining.request(&good).await, "challenge");
    // The same key again, on a fresh challenge with evidence that binds it.
    let again = kura_cluster::join::join(&url, contract, &tls, |bound| {
        Ok(hardware.issue(&measurement, bound, false))
    })
    .await
    .map(|(_, admission)| admission);
    refused("a key already admitted", again, "already admitted");

    // An executor for another contract refuses this coordinator before it sends anything.
    let refused_coordinator =
        kura_cluster::join::join(&url, other.contract.contract(), &tls, |_| {
            panic!("no evidence is made for a coordinator of another contract")
        })
        .await
        .unwrap_err();
    assert!(
        matches!(refused_coordinator, JoinError::Coordinator(ref r) if r.contains("another contract")),
        "{refused_coordinator}"
    );

    let mut h = Client::new(&url, room.contract.clone(), room.key("hospital-a")).unwrap();
    h.attest().await.unwrap();
    let events = super::common::events_of(&mut h).await;
    let refusals: Vec<(&String, u64)> = events
        .iter()
        .filter_map(|e| match e {
            Event::ExecutorRefused {
                reason,
                unlogged_before,
                ..
            } => Some((reason, *unlogged_before)),
            _ => None,
        })
        .collect();
    // Nine refusals, five logged at once (a sixth only if a minute went by); the rest wait to
    // be counted in the next refusal logged.
    let attempts = cases.len() + 3;
    assert!(
        (5..=6).contains(&refusals.len()) && refusals.len() < attempts,
        "{refusals:?}"
    );
    let joined = events
        .iter()
        .filter(|e| matches!(e, Event::ExecutorJoined { executor, challenge: Some(c), .. } if *executor == admission.executor && *c == challenge))
        .count();
    assert_eq!(joined, 1);
    server.shutdown().await.unwrap();
}

/// An executor killed (SIGKILL) in the middle of runs: each run either answers exactly as one
/// node does (its tasks ran again on the other executor) or is refused; never a partial answer.
/// The service goes on, runs on the survivor, and its log verifies.
#[test]
pub(crate) fn an_executor_killed_mid_run_never_yields_a_partial_answer() {
    use std::fmt::Write as _;

    let cluster = Coordinated::start(|d| {
        let mut big = String::from("patient_id,steps_band\n");
        for i in 0..300_000 {
            writeln!(big, "x{i:07},high").unwrap();
        }
        std::fs::write(d.join("big.csv"), big).unwrap();
    });
    cluster.upload(&BOTH);
    cluster.upload(&[("fitness-b", "activity", "big.csv", true)]);
    let alone = cluster.by_activity();
    let _survivor = cluster.executor("survivor").unwrap();
    assert_eq!(
        cluster.by_activity(),
        alone,
        "one executor, a dataset in two batches"
    );
    let (mut answered, mut refused) = (0, 0);
    for round in 0..3u64 {
        let mut victim = cluster.executor(&format!("victim{round}")).unwrap();
        let outcome = cluster.rt.block_on(async {
            let mut h = cluster.client("hospital-a");
            h.attest().await.unwrap();
            let running = tokio::spawn(async move {
                let run = h.run("by_activity").await?;
                let mut tables = h.results(Some(&run.run_id)).await?;
                Ok::<_, kura_client::ClientError>(tables.remove(0).rows)
            });
            tokio::time::sleep(std::time::Duration::from_millis(10 + 60 * round)).await;
            victim.0.kill().unwrap();
            running.await.unwrap()
        });
        match outcome {
            Ok(rows) => {
                assert_eq!(rows, alone, "round {round}: a different answer");
                answered += 1;
            }
            Err(kura_client::ClientError::Refused { reason, .. }) => {
                assert!(reason.contains("cluster"), "round {round}: {reason}");
                refused += 1;
            }
            Err(e) => panic!("round {round}: {e}"),
        }
    }
    eprintln!("after a kill: {answered} run(s) answered in full, {refused} refused");
    // Past the scheduler's timeout, the last victim is given up for good.
    std::thread::sleep(
        kura_cluster::coordinator::EXECUTOR_TIMEOUT + std::time::Duration::from_secs(1),
    );
    assert_eq!(cluster.by_activity(), alone);
    let last = cluster
        .events()
        .iter()
        .rev()
        .find_map(|e| match e {
            Event::Run { executors, .. } => Some(executors.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(last.len(), 1, "only the survivor is alive: {last:?}");
    // Each cluster run was followed by deletions: always on the survivor, and a victim killed
    // before it could be asked is named as unreachable.
    let deletions: Vec<(Vec<String>, Vec<String>)> = cluster
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::ShuffleDeleted {
                executors,
                unreachable,
            } => Some((executors, unreachable)),
            _ => None,
        })
        .collect();
    assert!(deletions.len() >= 4, "{deletions:?}");
    for (deleted, unreachable) in &deletions {
        assert!(deleted.contains(&last[0]), "{deleted:?}");
        assert!(!unreachable.contains(&last[0]), "{unreachable:?}");
    }
    assert!(
        deletions
            .iter()
            .any(|(_, unreachable)| !unreachable.is_empty()),
        "no victim named as unreachable: {deletions:?}"
    );
}
