//! The cluster section: the join + aggregate on 1, 2 and 3 executors, kura's (attested, mutual
//! TLS, encrypted data at rest, sealed shuffles) against plain Ballista (no TLS, plaintext
//! Parquet, Ballista's own shuffle files) with the same layout: the same Parquet files, the
//! same slots per executor, the same partitions per stage, the working directories in the same
//! place. Every executor is a process of its own, so its peak memory is its own; all of them
//! share this machine's cores, so the table shows the cost of the cluster, not its speed-up.

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use ballista_core::config::TaskSchedulingPolicy;
use ballista_core::extension::SessionConfigExt;
use ballista_core::serde::protobuf::scheduler_grpc_server::SchedulerGrpcServer;
use ballista_core::serde::{BallistaCodec, BallistaPhysicalExtensionCodec};
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_server::SchedulerServer;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use futures_util::TryStreamExt;
use kura_engine::datafusion::prelude::{SessionConfig, SessionContext};

use super::{
    Enclave, Files, Room, SQL, enclave_binary, generate, median, peak_memory, progress, run, secs,
    show_bytes, show_time, total_claims,
};

/// Slots (tasks at once) of every executor, kura's and Ballista's.
const SLOTS: &str = "2";

/// Where the executors keep their shuffle files: kura's default, a tmpfs.
fn work_root() -> tempfile::TempDir {
    match tempfile::tempdir_in("/dev/shm") {
        Ok(dir) => dir,
        Err(_) => tempfile::tempdir().expect("temporary directory"),
    }
}

/// A process this bench started, killed on drop.
struct Process(Child);

impl Process {
    /// Starts `command` and returns it with the first line it printed.
    fn start(mut command: Command) -> (Self, String) {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a process");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap();
        (Self(child), line.trim().to_string())
    }

    fn pid(&self) -> String {
        self.0.id().to_string()
    }

    fn peak(&self) -> u64 {
        peak_memory(&self.pid()).unwrap_or(0)
    }

    fn cpu(&self) -> f64 {
        super::cpu_secs(&self.pid())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One configuration's figures.
struct Measured {
    secs: f64,
    /// Peak resident memory of each executor.
    peaks: Vec<u64>,
    claims: u64,
}

/// The table: for each size and executor count, kura's run against plain Ballista's.
pub(super) fn cluster(
    rt: &tokio::runtime::Runtime,
    room: &Room,
    sizes: &[usize],
    counts: &[usize],
    runs: usize,
) {
    let mut lines = Vec::new();
    for &rows in sizes {
        let data = tempfile::tempdir().expect("temporary directory");
        progress(format!("cluster: generating {rows} claims"));
        let files = generate(data.path(), rows, false);
        let kura = kura(rt, room, &files, counts, runs);
        for (&n, kura) in counts.iter().zip(kura) {
            progress(format!(
                "cluster: plain Ballista, {rows} claims, {n} executors"
            ));
            let plain = ballista(rt, data.path(), n, runs);
            assert_eq!(
                kura.claims, plain.claims,
                "kura and Ballista count the same claims"
            );
            let ratio = kura.secs / plain.secs;
            let peak = |p: &[u64]| {
                p.iter()
                    .map(|&b| show_bytes(b))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            lines.push(format!(
                "| {rows:>11} | {n:>9} | {:>8} | {:<28} | {:>8} | {:<28} | {ratio:>5.2}x | {:>4} |",
                show_time(kura.secs),
                peak(&kura.peaks),
                show_time(plain.secs),
                peak(&plain.peaks),
                if ratio <= 1.2 { "yes" } else { "NO" },
            ));
        }
    }
    println!();
    println!(
        "cluster: the join + aggregate on executors of one machine (median of {runs} runs; data at \
         rest; peak = each executor's peak resident memory); goal <= 1.20x plain Ballista"
    );
    println!(
        "| claims rows | executors | kura     | kura peak per executor       | Ballista | Ballista peak per executor   | ratio | met  |"
    );
    println!(
        "|-------------|-----------|----------|------------------------------|----------|------------------------------|-------|------|"
    );
    for l in lines {
        println!("{l}");
    }
}

/// kura: a coordinator with the data uploaded once, then for each count a fresh set of
/// attested executors (so each peak is that configuration's), the analysis run `runs` times.
fn kura(
    rt: &tokio::runtime::Runtime,
    room: &Room,
    files: &Files,
    counts: &[usize],
    runs: usize,
) -> Vec<Measured> {
    let coordinator = Enclave::start_with(room, &["--cluster", "127.0.0.1:0"]);
    rt.block_on(async {
        let mut hospital = room.client(&coordinator.url, &room.hospital).await;
        let mut insurer = room.client(&coordinator.url, &room.insurer).await;
        let (p, c) = tokio::join!(
            hospital.upload("patients", &files.patients_parquet, |_| {}),
            insurer.upload("claims", &files.claims_parquet, |_| {}),
        );
        p.expect("upload patients");
        c.expect("upload claims");
    });
    let mut out = Vec::new();
    for &n in counts {
        progress(format!(
            "cluster: kura, {} claims, {n} executors",
            files.rows
        ));
        let work = work_root();
        let executors: Vec<Process> = (0..n)
            .map(|i| {
                let mut command = Command::new(enclave_binary());
                command
                    .env("KURA_HOME", room.dir.path())
                    .args(["--join", &coordinator.url, "--platform", "simulated"])
                    .args(["--listen", "127.0.0.1:0", "--slots", SLOTS])
                    .arg("--contract")
                    .arg(&room.contract_path)
                    .arg("--work-dir")
                    .arg(work.path().join(i.to_string()));
                let (process, line) = Process::start(command);
                assert!(
                    line.starts_with("kura executor "),
                    "an executor said {line:?}"
                );
                process
            })
            .collect();
        let before: Vec<f64> = executors.iter().map(Process::cpu).collect();
        let (mut times, mut claims) = (Vec::new(), 0);
        rt.block_on(async {
            let mut hospital = room.client(&coordinator.url, &room.hospital).await;
            for _ in 0..runs {
                let start = Instant::now();
                let result = run(&mut hospital).await;
                times.push(secs(start.elapsed()));
                claims = super::counts(&result).iter().sum();
            }
        });
        let worked: Vec<f64> = executors
            .iter()
            .zip(&before)
            .map(|(e, b)| e.cpu() - b)
            .collect();
        progress(format!("cluster: kura executors' CPU seconds {worked:?}"));
        assert!(
            worked.iter().all(|&w| w > 0.0),
            "an executor did not work: the runs did not go to the cluster"
        );
        out.push(Measured {
            secs: median(times),
            peaks: executors.iter().map(Process::peak).collect(),
            claims,
        });
        drop(executors);
        // The scheduler gives the killed executors up after its timeout; the next set must
        // not be sent tasks for them.
        std::thread::sleep(std::time::Duration::from_secs(7));
    }
    out
}

/// Plain Ballista: a scheduler and `n` executors, each a child process of this binary, and
/// the query planned here over the plaintext Parquet files.
fn ballista(rt: &tokio::runtime::Runtime, dir: &Path, n: usize, runs: usize) -> Measured {
    let me = std::env::current_exe().expect("own path");
    let mut command = Command::new(&me);
    command.args(["--child", "ballista-scheduler", "-"]);
    let (_scheduler, line) = Process::start(command);
    let addr = line
        .strip_prefix("scheduler on ")
        .unwrap_or_else(|| panic!("the scheduler said {line:?}"))
        .to_string();
    let work = work_root();
    let executors: Vec<Process> = (0..n)
        .map(|i| {
            let mut command = Command::new(&me);
            command.args(["--child", "ballista-executor"]).arg(format!(
                "{addr},{}",
                work.path().join(i.to_string()).display()
            ));
            let (process, line) = Process::start(command);
            assert_eq!(line, "executor ready", "a Ballista executor said {line:?}");
            process
        })
        .collect();
    let before: Vec<f64> = executors.iter().map(Process::cpu).collect();
    let (mut times, mut claims) = (Vec::new(), 0);
    rt.block_on(async {
        for _ in 0..runs {
            let start = Instant::now();
            // As kura's coordinator does: planned with DataFusion's own settings (Ballista's
            // would read text as `Utf8`, not views, and choose joins otherwise), submitted with
            // Ballista's.
            let config = same_settings(SessionConfig::new_with_ballista());
            let ctx = SessionContext::new_with_config(same_settings(
                SessionConfig::new().with_information_schema(false),
            ));
            super::register_parquet(&ctx, dir).await;
            let plan = ctx
                .sql(SQL)
                .await
                .expect("plan")
                .create_physical_plan()
                .await
                .expect("physical plan");
            let stream = ballista_core::execution_plans::execute_physical_plan::<PhysicalPlanNode>(
                format!("http://{addr}"),
                &config.ballista_config(),
                plan,
                &BallistaPhysicalExtensionCodec::default(),
                format!("bench-{}", times.len()),
                config.clone(),
            )
            .await
            .expect("submit to Ballista");
            let batches: Vec<_> = stream.try_collect().await.expect("Ballista's answer");
            times.push(secs(start.elapsed()));
            claims = total_claims(&batches);
        }
    });
    let worked: Vec<f64> = executors
        .iter()
        .zip(&before)
        .map(|(e, b)| e.cpu() - b)
        .collect();
    progress(format!(
        "cluster: Ballista executors' CPU seconds {worked:?}"
    ));
    assert!(
        worked.iter().all(|&w| w > 0.0),
        "a Ballista executor did not work"
    );
    Measured {
        secs: median(times),
        peaks: executors.iter().map(Process::peak).collect(),
        claims,
    }
}

/// kura's settings for a query on its cluster: a partition per core (kura's engine; Ballista's
/// default is 16), and the planner's settings of kura's coordinator.
fn same_settings(config: SessionConfig) -> SessionConfig {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    kura_cluster::coordinator::without_dynamic_filters(config.with_target_partitions(cores))
}

/// `--child ballista-scheduler -`: a plain scheduler (pull mode, no TLS) on a loopback port;
/// prints `scheduler on ADDR` and serves until killed.
pub(super) fn scheduler() {
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = Arc::new(
            SchedulerConfig::default()
                .with_scheduler_policy(TaskSchedulingPolicy::PullStaged)
                .with_hostname(addr.ip().to_string())
                .with_port(addr.port()),
        );
        let cluster = BallistaCluster::new_memory(
            addr.to_string(),
            Arc::new(ballista_core::utils::default_session_builder),
            Arc::new(SessionConfig::new_with_ballista),
        );
        let mut server: SchedulerServer<LogicalPlanNode, PhysicalPlanNode> = SchedulerServer::new(
            addr.to_string(),
            cluster,
            BallistaCodec::default(),
            config,
            ballista_scheduler::metrics::default_metrics_collector().unwrap(),
        );
        server.init().await.unwrap();
        let grpc = SchedulerGrpcServer::new(server)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        println!("scheduler on {addr}");
        tonic::transport::Server::builder()
            .add_service(grpc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
}

/// `--child ballista-executor SCHEDULER,WORK_DIR`: a plain executor (pull mode, no TLS) with
/// kura's slots; prints `executor ready` once the scheduler has heard from it.
pub(super) fn executor(arg: &str) {
    let (scheduler, work_dir) = arg.split_once(',').expect("SCHEDULER,WORK_DIR");
    let (host, port) = scheduler.rsplit_once(':').expect("HOST:PORT");
    let flight = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::create_dir_all(work_dir).unwrap();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    rt.block_on(async {
        let health = ballista_executor::health::ExecutorHealth::new();
        let polled = health.clone();
        tokio::spawn(async move {
            while !polled.is_ready() {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            println!("executor ready");
        });
        let config = ExecutorProcessConfig {
            bind_host: "127.0.0.1".into(),
            external_host: Some("127.0.0.1".into()),
            port: flight,
            scheduler_host: host.into(),
            scheduler_port: port.parse().unwrap(),
            vcores: SLOTS.parse().unwrap(),
            task_scheduling_policy: TaskSchedulingPolicy::PullStaged,
            work_dir: Some(work_dir.into()),
            print_thread_info: false,
            health,
            ..ExecutorProcessConfig::default()
        };
        start_executor_process(Arc::new(config)).await.unwrap();
    });
}
