//! The golden queries on a cluster: Ballista's scheduler and two executors (in this process,
//! over loopback with the cluster's mutual TLS), each task reading its share of the encrypted
//! files. Every answer and refusal must be the one a single node gives, and after each job the
//! executors delete what it left on them (its sealed shuffle files and their keys).

use std::sync::Arc;

use kura_cluster::codec::OpenStore;
use kura_cluster::join::Admission;
use kura_cluster::tls::NodeKey;
use kura_engine::datafusion::error::DataFusionError;

/// A store from the origin the golden tables record: the directory of their files.
fn open() -> OpenStore {
    Arc::new(|origin: &str| {
        let store = object_store::local::LocalFileSystem::new_with_prefix(origin)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        Ok(Arc::new(store) as Arc<dyn object_store::ObjectStore>)
    })
}

/// Starts an executor admitted by `coordinator` (without attestation: that is the service's
/// part, tested end to end) and waits until the scheduler has heard from it; returns its
/// working directory.
async fn executor(coordinator: &kura_cluster::Coordinator, name: &str) -> std::path::PathBuf {
    executor_with(coordinator, name, open()).await
}

/// [`executor`], opening stores with `open`.
async fn executor_with(
    coordinator: &kura_cluster::Coordinator,
    name: &str,
    open: OpenStore,
) -> std::path::PathBuf {
    let key = NodeKey::generate().unwrap();
    let admission = Admission {
        executor: name.to_string(),
        scheduler: coordinator.addr().to_string(),
        authority: coordinator.authority().to_string(),
        certificate: coordinator.admit(&key.public_pem(), name).unwrap(),
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let work = tempfile::tempdir().unwrap().keep();
    let dir = work.clone();
    let (ready, started) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let options = kura_cluster::executor::Options {
            listen: format!("127.0.0.1:{port}").parse().unwrap(),
            advertise: None,
            work_dir: work,
            slots: 1,
            memory_bytes: 1 << 30,
        };
        let _ = kura_cluster::executor::run(admission, &key, options, open, move || {
            let _ = ready.send(());
        })
        .await;
    });
    started.await.unwrap();
    dir
}

/// Every file under `dir`.
fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_queries_answer_on_a_cluster_as_on_one_node() {
    let coordinator = Arc::new(
        kura_cluster::Coordinator::start("127.0.0.1:0".parse().unwrap(), open())
            .await
            .unwrap(),
    );
    let work = [
        executor(&coordinator, "executor-1").await,
        executor(&coordinator, "executor-2").await,
    ];
    assert_eq!(coordinator.alive().await.len(), 2);
    let records =
        kura_engine::with_compute(coordinator.clone(), kura_engine::slt::golden_at_rest()).await;
    eprintln!("{records} golden records answered on the cluster as on one node");

    // After each job the coordinator had both executors delete what it left: they held sealed
    // files, and nothing is left.
    let deletions = coordinator.take_deletions();
    assert_eq!(deletions.len(), 2, "{deletions:?}");
    for (executor, outcome) in &deletions {
        match outcome {
            kura_cluster::coordinator::Deletion::Deleted(d) => {
                assert!(d.files > 0, "{executor} held nothing: {d:?}");
                eprintln!("{executor} deleted {} sealed files", d.files);
            }
            other => panic!("{executor}: {other:?}"),
        }
    }
    let left: Vec<_> = work.iter().flat_map(|dir| files(dir)).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    for dir in work {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// What the executors fetch of the stored files does not depend on the data: a join whose
/// build side is empty reads its probe side's files all the same, on each executor, as one
/// whose build side is full (every stage reads its scans to their end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_executors_fetch_does_not_depend_on_where_a_join_stopped() {
    use kura_engine::stored::recording::Recording;
    let reads: Arc<std::sync::Mutex<Vec<Arc<Recording>>>> = Arc::default();
    let stores = reads.clone();
    let recording: OpenStore = Arc::new(move |origin: &str| {
        let store = object_store::local::LocalFileSystem::new_with_prefix(origin)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let store = Arc::new(Recording::new(Arc::new(store)));
        stores.lock().unwrap().push(store.clone());
        Ok(store as Arc<dyn object_store::ObjectStore>)
    });
    let coordinator = Arc::new(
        kura_cluster::Coordinator::start("127.0.0.1:0".parse().unwrap(), recording.clone())
            .await
            .unwrap(),
    );
    let mut work = vec![];
    for name in ["executor-1", "executor-2"] {
        work.push(executor_with(&coordinator, name, recording.clone()).await);
    }
    let fetched = || {
        let mut all: Vec<String> = reads
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| r.take())
            .collect();
        all.sort();
        all
    };
    let golden = kura_engine::slt::AtRest::new().await;
    for (template, values) in [
        (
            "SELECT p.region, COUNT(c.claim_id) AS n FROM patients p JOIN claims c \
             ON p.patient_id = c.patient_id WHERE p.birth_year < {x} GROUP BY p.region",
            ["0", "3000"],
        ),
        (
            "SELECT p.region, SUM(c.amount) AS n FROM claims c JOIN patients p \
             ON p.patient_id = c.patient_id WHERE c.kind {x} 'none' GROUP BY p.region",
            ["=", "<>"],
        ),
    ] {
        let mut seen = vec![];
        for x in values {
            let sql = template.replace("{x}", x);
            fetched();
            let rows = kura_engine::with_compute(coordinator.clone(), golden.query(&sql)).await;
            assert!(rows.is_ok(), "{sql}: {rows:?}");
            seen.push((rows, fetched()));
        }
        assert_eq!(
            seen[0].0,
            Ok(0),
            "{template}: the empty side releases nothing"
        );
        assert_ne!(
            seen[1].0,
            Ok(0),
            "{template}: the full side releases groups"
        );
        assert!(
            seen[0].1.iter().any(|r| r.contains("claims")),
            "{:?}",
            seen[0].1
        );
        assert_eq!(seen[0].1, seen[1].1, "{template}");
    }
    for dir in work {
        let _ = std::fs::remove_dir_all(dir);
    }
}
