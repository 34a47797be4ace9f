//! The golden queries on a cluster: Ballista's scheduler and two executors (in this process,
//! over loopback with the cluster's mutual TLS), each task reading its share of the encrypted
//! files. Every answer and refusal must be the one a single node gives.

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
/// part, tested end to end) and waits until the scheduler has heard from it.
async fn executor(coordinator: &kura_cluster::Coordinator, name: &str) {
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
    let (ready, started) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let options = kura_cluster::executor::Options {
            listen: format!("127.0.0.1:{port}").parse().unwrap(),
            advertise: None,
            work_dir: work,
            slots: 1,
            memory_bytes: 1 << 30,
        };
        let _ = kura_cluster::executor::run(admission, &key, options, open(), move || {
            let _ = ready.send(());
        })
        .await;
    });
    started.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_queries_answer_on_a_cluster_as_on_one_node() {
    let coordinator = Arc::new(
        kura_cluster::Coordinator::start("127.0.0.1:0".parse().unwrap(), open())
            .await
            .unwrap(),
    );
    executor(&coordinator, "executor-1").await;
    executor(&coordinator, "executor-2").await;
    assert_eq!(coordinator.alive().await.len(), 2);
    let records = kura_engine::with_compute(
        coordinator.clone(),
        kura_engine::slt::golden_at_rest_without_dp(),
    )
    .await;
    eprintln!("{records} golden records answered on the cluster as on one node");
}
