//! The cost of confidentiality, measured side by side in one run on the same data:
//!
//! - bulk AEAD (the dataset stream) against `openssl speed -evp aes-256-gcm`;
//! - encrypted upload of CSV and Parquet through the client and the enclave service, against
//!   loading the same file in plaintext into DataFusion;
//! - a two-party join + aggregate through kura end to end (encrypted uploads, the run with its
//!   minimum-group-size rule, the sealed result decrypted), against plain DataFusion and DuckDB
//!   on the same Parquet files; and the same query on data already held in memory;
//! - a model analysis (a linear model of the claim amount on the patient's age and region,
//!   trained over the join) through kura, against the same SQL on plain DataFusion and the same
//!   fit (kura-ml, on linfa) on its plaintext rows ([`model`]);
//! - a tree analysis (depth 4 on every claim, splits at the contract's cut points, each leaf
//!   over ten patients) through kura, against the same SQL on plain DataFusion and the same
//!   grower on its plaintext rows ([`model::tree`]);
//! - a scoring analysis (one party's ONNX model run on each of the other's 1M patients, the
//!   scores routed back) through kura, against the same SQL on plain DataFusion and the same
//!   model in tract on its plaintext rows ([`score`]);
//! - attestation verification per platform on the real vectors, certificates cached;
//! - with `--cluster`, the join + aggregate on 1, 2 and 3 attested executors against plain
//!   Ballista on the same files ([`cluster`]).
//!
//! ```sh
//! cargo build --release -p kura-enclave                          # the enclave the bench runs
//! cargo bench -p kura-benchmarks --bench cost                     # default: 10M rows joined to 1M
//! cargo bench -p kura-benchmarks --bench cost -- --rows 50000000  # bigger
//! cargo bench -p kura-benchmarks --bench cost -- --scale          # adds the 1M/10M/50M scaling table
//! cargo bench -p kura-benchmarks --bench cost -- --only none --cluster  # the cluster table alone
//! ```
//!
//! The enclave is the real `kura-enclave` binary (simulated platform) in its own process, so
//! its peak memory is its own. Baselines run in child processes of this binary (`--child ...`) for
//! the same reason. DuckDB is the `duckdb` Python package (`pip install duckdb`); without it
//! its rows say so and the rest still runs.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use datafusion::arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::prelude::{CsvReadOptions, ParquetReadOptions, SessionContext};
use kura_contract::{Contract, SignedContract};
use kura_crypto::{DataKey, SecretIdentity, StreamDecoder, StreamEncoder};
use kura_engine::datafusion;

#[path = "cost/cluster.rs"]
mod cluster;
#[path = "cost/model.rs"]
mod model;
#[path = "cost/score.rs"]
mod score;
#[path = "../../crates/kura-cli/src/splitmix.rs"]
#[allow(dead_code)]
mod splitmix;
#[path = "../../crates/kura-attestation/benches/vectors/mod.rs"]
mod vectors;

use splitmix::SplitMix;

#[derive(Parser, Debug)]
#[command(about = "kura's cost of confidentiality, against baselines measured in the same run")]
struct Opts {
    /// Rows of the large dataset (claims); the small one (patients) has a tenth as many.
    #[arg(long, default_value_t = 10_000_000)]
    rows: usize,
    /// Runs per measurement; the table shows the median.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Also print the scaling table (1M, 10M and 50M rows: time and peak memory).
    #[arg(long)]
    scale: bool,
    /// Rows of the scaling table, instead of 1M, 10M, 50M.
    #[arg(long, value_delimiter = ',')]
    scale_rows: Vec<usize>,
    /// Run only these sections (aead, ingest, join, model, tree, score, attestation; none); all of
    /// them by default.
    #[arg(long, value_delimiter = ',', value_parser = ["aead", "ingest", "join", "model", "tree", "score", "attestation", "none"])]
    only: Vec<String>,
    /// Also print the cluster table (kura's attested executors against plain Ballista).
    #[arg(long)]
    cluster: bool,
    /// Rows of the cluster table, instead of 10M, 50M.
    #[arg(long, value_delimiter = ',')]
    cluster_rows: Vec<usize>,
    /// Executor counts of the cluster table, instead of 1, 2, 3.
    #[arg(long, value_delimiter = ',')]
    cluster_executors: Vec<usize>,
    /// Internal: run one baseline measurement and print it as JSON.
    #[arg(long, hide = true, num_args = 2, value_names = ["MODE", "PATH"])]
    child: Vec<String>,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

/// The baselines run in this binary's child processes, with the allocator the enclave uses, so
/// that a difference in the table is never just a difference of allocators.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

// `COUNT(c.amount)`, not `COUNT(*)`: the claims are counted, each once; `COUNT(*)` would count
// the join's rows, the patients' among them, each repeated once per claim (docs/privacy.md).
const SQL: &str = "SELECT p.age_band, p.region, COUNT(c.amount) AS claims, SUM(c.amount) AS total, \
                   AVG(c.amount) AS mean \
                   FROM claims c JOIN patients p ON c.patient_id = p.patient_id \
                   GROUP BY p.age_band, p.region ORDER BY p.age_band, p.region";
const ANALYSIS: &str = "claims_by_age_and_region";
const AGE_BANDS: [&str; 4] = ["18-39", "40-59", "60-79", "80+"];
const REGIONS: [&str; 5] = ["north", "south", "east", "west", "centre"];
const CATEGORIES: [&str; 8] = [
    "consult", "lab", "imaging", "pharmacy", "surgery", "therapy", "dental", "other",
];
const GB: f64 = 1e9;
const MIB: usize = 1 << 20;

fn main() {
    let opts = Opts::parse();
    match opts.child.as_slice() {
        [mode, _] if mode == "ballista-scheduler" => return cluster::scheduler(),
        [mode, arg] if mode == "ballista-executor" => return cluster::executor(arg),
        [mode, path] => return child(mode, Path::new(path)),
        _ => {}
    }
    assert!(opts.rows >= 10, "--rows must be at least 10");
    assert!(opts.runs >= 1, "--runs must be at least 1");
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let mut table = Table::default();

    let data = tempfile::tempdir().expect("temporary directory");
    progress(format!(
        "generating {} claims and {} patients",
        opts.rows,
        opts.rows / 10
    ));
    let files = generate(data.path(), opts.rows, true);

    // The bench's contract fixes its one analysis, so the enclave keeps only the columns that
    // analysis reads, as DataFusion reads only them from Parquet. The same contract with an
    // `[adhoc]` section keeps every column: ingest is measured with it, against DataFusion
    // loading every column.
    let room = Room::new(false);
    let room_adhoc = Room::new(true);

    let wanted = |section: &str| opts.only.is_empty() || opts.only.iter().any(|s| s == section);
    if wanted("aead") {
        aead(&mut table, opts.runs);
    }
    if wanted("ingest") {
        ingest(&rt, &mut table, &room_adhoc, &files, opts.runs);
    }
    if wanted("join") {
        join(&rt, &mut table, [&room, &room_adhoc], &files, opts.runs);
    }
    if wanted("model") {
        model::model(&rt, &mut table, &files, opts.runs);
    }
    if wanted("tree") {
        model::tree(&rt, &mut table, &files, opts.runs);
    }
    if wanted("score") {
        score::score(&rt, &mut table, &files, opts.runs);
    }
    if wanted("attestation") {
        attestation(&mut table);
    }

    println!();
    println!(
        "kura cost of confidentiality: {} claims joined to {} patients, median of {} runs",
        opts.rows,
        opts.rows / 10,
        opts.runs
    );
    println!("{}", machine());
    table.print();

    if opts.scale || !opts.scale_rows.is_empty() {
        let sizes = if opts.scale_rows.is_empty() {
            vec![1_000_000, 10_000_000, 50_000_000]
        } else {
            opts.scale_rows.clone()
        };
        scaling(&rt, &room, &sizes);
    }
    if opts.cluster || !opts.cluster_rows.is_empty() || !opts.cluster_executors.is_empty() {
        let or = |given: &[usize], default: &[usize]| {
            if given.is_empty() {
                default.to_vec()
            } else {
                given.to_vec()
            }
        };
        cluster::cluster(
            &rt,
            &room,
            &or(&opts.cluster_rows, &[10_000_000, 50_000_000]),
            &or(&opts.cluster_executors, &[1, 2, 3]),
            opts.runs.min(3),
        );
    }
}

fn progress(line: impl AsRef<str>) {
    eprintln!("[bench] {}", line.as_ref());
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

// ---------------------------------------------------------------------------------------------
// The table

#[derive(Default)]
struct Table {
    rows: Vec<[String; 6]>,
}

enum Goal {
    /// At least this throughput, in bytes per second.
    MinRate(f64),
    /// At least this fraction of the baseline's throughput.
    MinShare(f64),
    /// At most this multiple of the baseline's time.
    MaxRatio(f64),
    /// At most this time, in seconds.
    MaxTime(f64),
    None,
}

impl Table {
    /// A throughput row: `bytes` processed in `kura` seconds, against `base` seconds.
    fn rate(&mut self, what: &str, bytes: f64, kura: f64, base: Option<(&str, f64)>, goal: Goal) {
        let rate = bytes / kura;
        let (base_text, ratio) = match base {
            Some((name, b)) => (format!("{name} {:.2} GB/s", bytes / b / GB), Some(b / kura)),
            None => ("not available".into(), None),
        };
        let (goal_text, met) = match goal {
            Goal::MinRate(r) => (format!(">= {:.1} GB/s", r / GB), Some(rate >= r)),
            Goal::MinShare(s) => (format!(">= {:.0} %", s * 100.0), ratio.map(|x| x >= s)),
            _ => (String::new(), None),
        };
        self.push(
            what,
            format!("{:.2} GB/s", rate / GB),
            base_text,
            ratio.map_or("-".into(), |r| format!("{:.0} %", r * 100.0)),
            goal_text,
            met,
        );
    }

    /// A time row: kura took `kura` seconds, the baseline `base`.
    fn time(&mut self, what: &str, kura: f64, base: Option<(&str, f64)>, goal: Goal) {
        let ratio = base.map(|(_, b)| kura / b);
        let (goal_text, met) = match goal {
            Goal::MaxRatio(r) => (format!("<= {r:.2}x"), ratio.map(|x| x <= r)),
            Goal::MaxTime(t) => (format!("<= {}", show_time(t)), Some(kura <= t)),
            _ => (String::new(), None),
        };
        self.push(
            what,
            show_time(kura),
            base.map_or("not available".into(), |(name, b)| {
                format!("{name} {}", show_time(b))
            }),
            ratio.map_or("-".into(), |r| format!("{r:.2}x")),
            goal_text,
            met,
        );
    }

    fn push(
        &mut self,
        what: &str,
        kura: String,
        base: String,
        ratio: String,
        goal: String,
        met: Option<bool>,
    ) {
        let met = match met {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "",
        };
        self.rows
            .push([what.into(), kura, base, ratio, goal, met.into()]);
    }

    fn print(&self) {
        let header = [
            "measure",
            "kura",
            "baseline (same run)",
            "ratio",
            "goal",
            "met",
        ];
        let mut width = header.map(str::len);
        for row in &self.rows {
            for (w, cell) in width.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: [&str; 6]| {
            let mut s = String::from("|");
            for (cell, w) in cells.iter().zip(width) {
                s.push_str(&format!(" {cell:<w$} |"));
            }
            println!("{s}");
        };
        line(header);
        let rule = width.map(|w| "-".repeat(w));
        line(rule.each_ref().map(String::as_str));
        for row in &self.rows {
            line(row.each_ref().map(String::as_str));
        }
    }
}

fn show_time(s: f64) -> String {
    if s < 0.01 {
        format!("{:.3} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or("?".into(), |kib| {
            format!("{:.0} GiB", kib / (1 << 20) as f64)
        });
    let openssl = Command::new("openssl")
        .arg("version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "no openssl".into());
    let duckdb = Command::new("python3")
        .args(["-c", "import duckdb; print(duckdb.__version__)"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| format!("DuckDB {}", String::from_utf8_lossy(&o.stdout).trim()))
        .unwrap_or_else(|| "no DuckDB".into());
    format!("machine: {cpu}, {cores} cores, {mem}; {openssl}; {duckdb}")
}

/// CPU time (user and system) a process has used so far, in seconds.
fn cpu_secs(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name: state is the 3rd field overall, utime the 14th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // Linux reports these in USER_HZ, which is 100 on every architecture it exports to users.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// Peak resident memory (VmHWM) of a process, in bytes.
fn peak_memory(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

fn show_bytes(b: u64) -> String {
    format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
}

// ---------------------------------------------------------------------------------------------
// Synthetic data: patients (the small side) and their claims (the large side)

struct Files {
    rows: usize,
    patients_parquet: PathBuf,
    claims_parquet: PathBuf,
    claims_csv: Option<PathBuf>,
}

fn patients_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("patient_id", DataType::Int64, true),
        Field::new("age_band", DataType::Utf8, true),
        Field::new("region", DataType::Utf8, true),
    ]))
}

fn claims_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("patient_id", DataType::Int64, true),
        Field::new("amount", DataType::Float64, true),
        Field::new("category", DataType::Utf8, true),
    ]))
}

/// Writes patients and claims as Parquet (and claims as CSV when `csv`) into `dir`. One claim
/// in eleven names a patient the hospital does not have, so the join drops rows.
fn generate(dir: &Path, rows: usize, csv: bool) -> Files {
    use datafusion::parquet::arrow::ArrowWriter;

    const BATCH: usize = 1 << 20;
    let patients = (rows / 10).max(1);
    let mut rng = SplitMix(7);
    let pick = |rng: &mut SplitMix, values: &[&'static str], n: usize| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(
            (0..n).map(|_| values[(rng.next() % values.len() as u64) as usize]),
        ))
    };

    let files = Files {
        rows,
        patients_parquet: dir.join("patients.parquet"),
        claims_parquet: dir.join("claims.parquet"),
        claims_csv: csv.then(|| dir.join("claims.csv")),
    };
    let create = |p: &Path| std::fs::File::create(p).expect("create a data file");

    let mut w = ArrowWriter::try_new(create(&files.patients_parquet), patients_schema(), None)
        .expect("parquet writer");
    for start in (0..patients).step_by(BATCH) {
        let n = BATCH.min(patients - start);
        let batch = RecordBatch::try_new(
            patients_schema(),
            vec![
                Arc::new(Int64Array::from_iter_values(
                    (start..start + n).map(|i| i as i64),
                )),
                pick(&mut rng, &AGE_BANDS, n),
                pick(&mut rng, &REGIONS, n),
            ],
        )
        .expect("patients batch");
        w.write(&batch).expect("write patients");
    }
    w.close().expect("close patients");

    let mut pq = ArrowWriter::try_new(create(&files.claims_parquet), claims_schema(), None)
        .expect("parquet writer");
    let mut csv_writer = files
        .claims_csv
        .as_deref()
        .map(|p| datafusion::arrow::csv::Writer::new(std::io::BufWriter::new(create(p))));
    let ids = (patients as u64 * 11).div_ceil(10);
    for start in (0..rows).step_by(BATCH) {
        let n = BATCH.min(rows - start);
        let batch = RecordBatch::try_new(
            claims_schema(),
            vec![
                Arc::new(Int64Array::from_iter_values(
                    (0..n).map(|_| (rng.next() % ids) as i64),
                )),
                Arc::new(Float64Array::from_iter_values(
                    (0..n).map(|_| (rng.next() % 500_000) as f64 / 100.0),
                )),
                pick(&mut rng, &CATEGORIES, n),
            ],
        )
        .expect("claims batch");
        pq.write(&batch).expect("write claims");
        if let Some(w) = &mut csv_writer {
            w.write(&batch).expect("write claims CSV");
        }
    }
    pq.close().expect("close claims");
    drop(csv_writer);
    files
}

fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).expect("data file").len()
}

// ---------------------------------------------------------------------------------------------
// Baselines, each in a child process of this binary

#[derive(serde::Deserialize)]
struct Measured {
    secs: f64,
    /// CPU time of the measured work (user and system, all threads); DuckDB's is not measured.
    #[serde(default)]
    cpu_secs: f64,
    peak_bytes: u64,
    /// Rows loaded, or the query's total claim count: checked against kura's.
    rows: u64,
}

/// Runs one baseline in a child process (own memory, own allocator state).
fn baseline(mode: &str, path: &Path) -> Measured {
    let out = Command::new(std::env::current_exe().expect("own path"))
        .args(["--child", mode])
        .arg(path)
        .stderr(Stdio::inherit())
        .output()
        .expect("run a baseline");
    assert!(out.status.success(), "baseline {mode} failed");
    serde_json::from_slice(&out.stdout).expect("baseline output")
}

fn child(mode: &str, path: &Path) {
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let ctx = SessionContext::new();
    let cpu_before = cpu_secs("self");
    let (secs, rows) = rt.block_on(async {
        match mode {
            // Plaintext ingest: the file into memory as record batches.
            "load-csv" | "load-parquet" => {
                let start = Instant::now();
                let df = read_claims(&ctx, mode == "load-csv", path).await;
                let batches = df.collect().await.expect("load");
                let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
                (secs(start.elapsed()), rows as u64)
            }
            // Plaintext ingest into storage: the file read and written again as Parquet, as
            // the enclave now writes each upload (without encryption).
            "store-csv" | "store-parquet" => {
                let out = tempfile::tempdir().expect("temporary directory");
                let start = Instant::now();
                let df = read_claims(&ctx, mode == "store-csv", path).await;
                let target = out.path().join("copy.parquet");
                let written = df
                    .write_parquet(
                        target.to_str().unwrap(),
                        datafusion::dataframe::DataFrameWriteOptions::new()
                            .with_single_file_output(true),
                        None,
                    )
                    .await
                    .expect("write");
                let rows = total_count(&written);
                (secs(start.elapsed()), rows)
            }
            // The join + aggregate over the Parquet files.
            "join" => {
                let start = Instant::now();
                register_parquet(&ctx, path).await;
                let rows = total_claims(&ctx.sql(SQL).await.unwrap().collect().await.unwrap());
                (secs(start.elapsed()), rows)
            }
            // The same query on data already in memory.
            "join-resident" => {
                for name in ["patients", "claims"] {
                    let file = path.join(format!("{name}.parquet"));
                    let df = ctx
                        .read_parquet(file.to_str().unwrap(), ParquetReadOptions::default())
                        .await
                        .unwrap();
                    let schema = Arc::new(df.schema().as_arrow().clone());
                    let batches = df.collect().await.unwrap();
                    let table =
                        datafusion::datasource::MemTable::try_new(schema, vec![batches]).unwrap();
                    ctx.register_table(name, Arc::new(table)).unwrap();
                }
                let start = Instant::now();
                let rows = total_claims(&ctx.sql(SQL).await.unwrap().collect().await.unwrap());
                (secs(start.elapsed()), rows)
            }
            other => panic!("unknown child mode {other:?}"),
        }
    });
    let cpu_secs = cpu_secs("self") - cpu_before;
    let peak_bytes = peak_memory("self").unwrap_or(0);
    println!(
        r#"{{"secs": {secs}, "cpu_secs": {cpu_secs}, "peak_bytes": {peak_bytes}, "rows": {rows}}}"#
    );
}

/// The claims file as a DataFrame, from CSV (with the bench's schema) or Parquet.
async fn read_claims(
    ctx: &SessionContext,
    csv: bool,
    path: &Path,
) -> datafusion::dataframe::DataFrame {
    let file = path.to_str().unwrap();
    if csv {
        let schema = claims_schema();
        let options = CsvReadOptions::new().has_header(true).schema(&schema);
        ctx.read_csv(file, options).await
    } else {
        ctx.read_parquet(file, ParquetReadOptions::default()).await
    }
    .expect("read")
}

async fn register_parquet(ctx: &SessionContext, dir: &Path) {
    for name in ["patients", "claims"] {
        let file = dir.join(format!("{name}.parquet"));
        ctx.register_parquet(name, file.to_str().unwrap(), ParquetReadOptions::default())
            .await
            .unwrap();
    }
}

/// The row count a DataFusion write reports.
fn total_count(batches: &[RecordBatch]) -> u64 {
    batches
        .iter()
        .map(|b| {
            let col = b.column(0);
            let col = col
                .as_any()
                .downcast_ref::<datafusion::arrow::array::UInt64Array>()
                .expect("a write's count is UInt64");
            col.values().iter().sum::<u64>()
        })
        .sum()
}

/// The sum of the `claims` column of the query's result.
fn total_claims(batches: &[RecordBatch]) -> u64 {
    batches
        .iter()
        .map(|b| {
            let col = b.column_by_name("claims").expect("claims column");
            let col = col
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("COUNT is Int64");
            col.values().iter().map(|v| *v as u64).sum::<u64>()
        })
        .sum()
}

const DUCKDB: &str = r#"
import json, resource, sys, time
import duckdb
d, sql = sys.argv[1], sys.argv[2]
con = duckdb.connect()
con.execute("SET enable_progress_bar = false")
start = time.perf_counter()
con.execute(f"CREATE VIEW patients AS SELECT * FROM read_parquet('{d}/patients.parquet')")
con.execute(f"CREATE VIEW claims AS SELECT * FROM read_parquet('{d}/claims.parquet')")
rows = con.execute(sql).fetchall()
secs = time.perf_counter() - start
print(json.dumps({"secs": secs, "peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "rows": sum(r[2] for r in rows)}))
"#;

/// The join in DuckDB, or `None` when the Python package is not installed.
fn duckdb(dir: &Path) -> Option<Measured> {
    let out = Command::new("python3")
        .args(["-c", DUCKDB])
        .arg(dir)
        .arg(SQL)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let parsed = serde_json::from_slice(&out.stdout);
    if parsed.is_err() {
        progress(format!(
            "DuckDB printed something unexpected: {}",
            String::from_utf8_lossy(&out.stdout)
        ));
    }
    parsed.ok()
}

// ---------------------------------------------------------------------------------------------
// The clean room: two parties, a signed contract, and the enclave service

struct Room {
    dir: tempfile::TempDir,
    contract_path: PathBuf,
    contract: SignedContract,
    hospital: String,
    insurer: String,
}

impl Room {
    /// The bench's contract; with `adhoc`, it also allows ad-hoc queries.
    fn new(adhoc: bool) -> Self {
        let extra = if adhoc {
            "\n[adhoc]\nanalysts = [\"hospital\"]\nreceivers = [\"hospital\"]\n"
        } else {
            ""
        };
        Self::with_analysis(ANALYSIS, SQL, extra)
    }

    /// The bench's contract with another analysis, `extra` after its receivers (the rest of
    /// the analysis's table, and further sections).
    fn with_analysis(analysis: &str, sql: &str, extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (hospital, insurer) = (SecretIdentity::generate(), SecretIdentity::generate());
        let text = kura_contract::example::fill(
            include_str!("../../testdata/contracts/bench-cost.toml"),
            |name| match name {
                "key:hospital" => hospital.public().to_text(),
                "key:insurer" => insurer.public().to_text(),
                "analysis" => analysis.to_string(),
                "sql" => sql.to_string(),
                "adhoc" => extra.to_string(),
                other => panic!("bench-cost.toml: unknown placeholder {other}"),
            },
        );
        let contract = Contract::parse(text.as_bytes()).expect("bench contract");
        let contract_path = dir.path().join("contract.toml");
        std::fs::write(&contract_path, &text).unwrap();
        let mut sigs = std::collections::BTreeMap::new();
        for id in [&hospital, &insurer] {
            let (party, sig) = kura_contract::sign(&contract, id).unwrap();
            std::fs::write(dir.path().join(format!("contract.toml.{party}.sig")), &sig).unwrap();
            sigs.insert(party, sig);
        }
        let contract = SignedContract::verify(contract, |p| sigs.get(p).cloned()).unwrap();
        Self {
            dir,
            contract_path,
            contract,
            hospital: hospital.to_text().to_string(),
            insurer: insurer.to_text().to_string(),
        }
    }

    async fn client(&self, url: &str, key: &str) -> kura_client::Client {
        let id = SecretIdentity::parse(key).unwrap();
        let mut c = kura_client::Client::new(url, self.contract.clone(), id).unwrap();
        c.attest().await.expect("attestation");
        c
    }
}

/// The release `kura-enclave` beside this bench (`target/release/`), built by
/// `cargo build --release -p kura-enclave`: Cargo builds only this package's targets for a
/// bench, and the enclave is another package.
fn enclave_binary() -> PathBuf {
    let me = std::env::current_exe().expect("own path");
    let release = me
        .parent()
        .and_then(Path::parent)
        .expect("target/release/deps/cost-*");
    let path = release.join("kura-enclave");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --release -p kura-enclave` first",
        path.display()
    );
    path
}

/// `kura-enclave` on the simulated platform, in its own process; killed on drop.
struct Enclave {
    process: std::process::Child,
    url: String,
    _state: tempfile::TempDir,
}

impl Enclave {
    fn start(room: &Room) -> Self {
        Self::start_with(room, &[])
    }

    /// With further arguments (`--cluster ADDR`).
    fn start_with(room: &Room, args: &[&str]) -> Self {
        let state = tempfile::tempdir_in(room.dir.path()).unwrap();
        let mut process = Command::new(enclave_binary())
            .env("KURA_HOME", room.dir.path())
            .args(["--platform", "simulated", "--listen", "127.0.0.1:0"])
            .args(args)
            .arg("--contract")
            .arg(&room.contract_path)
            .arg("--state")
            .arg(state.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start kura-enclave");
        let mut line = String::new();
        std::io::BufReader::new(process.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line.trim().rsplit(' ').next().unwrap_or("").to_string();
        assert!(
            url.starts_with("http://127.0.0.1:"),
            "kura-enclave said {line:?}"
        );
        Self {
            process,
            url,
            _state: state,
        }
    }

    fn peak_memory(&self) -> u64 {
        peak_memory(&self.process.id().to_string()).unwrap_or(0)
    }

    fn cpu_secs(&self) -> f64 {
        cpu_secs(&self.process.id().to_string())
    }
}

impl Drop for Enclave {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// The measurements

/// The dataset stream's AEAD on one core, and OpenSSL's AES-256-GCM on the same core.
fn aead(table: &mut Table, runs: usize) {
    progress("AEAD: kura's dataset stream and openssl speed");
    // 1 GiB per run, through buffers that are reused as the client and the enclave reuse theirs
    // (so the figure is the cipher's, not the page faults of fresh memory).
    const TOTAL: usize = 1 << 30;
    const SOURCE: usize = 64 * MIB;
    let chunk = kura_crypto::DEFAULT_CHUNK_SIZE;
    let plaintext = vec![0x5a_u8; SOURCE];
    let key = DataKey::generate();
    let (mut enc, mut dec) = (Vec::new(), Vec::new());
    let mut frame = Vec::with_capacity(chunk + 64);
    // 64 MiB sealed as one stream, opened again and again by fresh decoders.
    let mut stream = Vec::with_capacity(SOURCE + SOURCE / chunk * 64);
    let copy = |key: &DataKey| DataKey::from_bytes(key.as_bytes()).expect("32 bytes");
    let mut encoder = StreamEncoder::new(copy(&key), b"bench");
    for (i, piece) in plaintext.chunks(chunk).enumerate() {
        encoder
            .seal_chunk(piece, (i + 1) * chunk >= SOURCE, &mut stream)
            .unwrap();
    }
    let mut opened = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        for _ in 0..TOTAL / SOURCE {
            // Sealing the same bytes again under the same key only measures speed.
            let mut encoder = StreamEncoder::new(copy(&key), b"bench");
            for (i, piece) in plaintext.chunks(chunk).enumerate() {
                frame.clear();
                encoder
                    .seal_chunk(piece, (i + 1) * chunk >= SOURCE, &mut frame)
                    .unwrap();
                std::hint::black_box(&frame);
            }
        }
        enc.push(secs(start.elapsed()));

        let start = Instant::now();
        let mut total = 0;
        for _ in 0..TOTAL / SOURCE {
            let mut decoder = StreamDecoder::new(&key, b"bench");
            // As the enclave receives it: in network-sized pieces, each opened and passed on.
            for piece in stream.chunks(64 * 1024) {
                decoder.push(piece, &mut opened).unwrap();
                total += std::hint::black_box(&opened).len();
                opened.clear();
            }
            decoder.finish().unwrap();
        }
        dec.push(secs(start.elapsed()));
        assert_eq!(total, TOTAL);
    }
    let name = format!("openssl {}", show_mib(chunk));
    let encrypt = openssl_speed(false);
    let decrypt = openssl_speed(true);
    let bytes = TOTAL as f64;
    table.rate(
        &format!("AEAD encrypt, 1 core ({} chunks)", show_mib(chunk)),
        bytes,
        median(enc),
        encrypt.map(|r| (name.as_str(), bytes / r)),
        Goal::MinRate(3.0 * GB),
    );
    table.rate(
        "AEAD decrypt, 1 core",
        bytes,
        median(dec),
        decrypt.map(|r| (name.as_str(), bytes / r)),
        Goal::MinRate(3.0 * GB),
    );
}

fn show_mib(bytes: usize) -> String {
    if bytes >= MIB {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{} KiB", bytes / 1024)
    }
}

/// `openssl speed -evp aes-256-gcm` on chunks of kura's size, in bytes per second.
fn openssl_speed(decrypt: bool) -> Option<f64> {
    let mut cmd = Command::new("openssl");
    cmd.arg("speed");
    if decrypt {
        cmd.arg("-decrypt");
    }
    let out = cmd
        .args(["-evp", "aes-256-gcm", "-seconds", "2", "-bytes"])
        .arg(kura_crypto::DEFAULT_CHUNK_SIZE.to_string())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    // The last line: "AES-256-GCM    3310504.23k" (thousands of bytes per second).
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().rev().find(|l| !l.trim().is_empty())?;
    let k: f64 = last
        .split_whitespace()
        .last()?
        .trim_end_matches('k')
        .parse()
        .ok()?;
    Some(k * 1000.0)
}

/// Encrypted upload of the claims file (CSV, then Parquet) against DataFusion loading it.
fn ingest(
    rt: &tokio::runtime::Runtime,
    table: &mut Table,
    room: &Room,
    files: &Files,
    runs: usize,
) {
    let cases = [
        ("CSV", "load-csv", "store-csv", files.claims_csv.as_deref()),
        (
            "Parquet",
            "load-parquet",
            "store-parquet",
            Some(files.claims_parquet.as_path()),
        ),
    ];
    for (format, mode, store_mode, path) in cases {
        let Some(path) = path else { continue };
        let size = file_size(path);
        let (mut kura, mut base, mut stored) = (Vec::new(), Vec::new(), Vec::new());
        let (mut enclave_cpu, mut client_cpu, mut base_cpu) = (Vec::new(), Vec::new(), Vec::new());
        for run in 1..=runs {
            progress(format!(
                "ingest {format} ({}), run {run}/{runs}",
                show_bytes(size)
            ));
            let enclave = Enclave::start(room);
            let took = rt.block_on(async {
                let mut insurer = room.client(&enclave.url, &room.insurer).await;
                insurer.attest().await.expect("attest");
                let cpu = (enclave.cpu_secs(), cpu_secs("self"));
                let start = Instant::now();
                let resp = insurer
                    .upload("claims", path, |_| {})
                    .await
                    .expect("upload");
                let took = secs(start.elapsed());
                enclave_cpu.push(enclave.cpu_secs() - cpu.0);
                client_cpu.push(cpu_secs("self") - cpu.1);
                assert_eq!(resp.rows, files.rows as u64);
                took
            });
            kura.push(took);
            let b = baseline(mode, path);
            assert_eq!(b.rows, files.rows as u64);
            base.push(b.secs);
            base_cpu.push(b.cpu_secs);
            let w = baseline(store_mode, path);
            assert_eq!(w.rows, files.rows as u64);
            stored.push(w.secs);
        }
        table.rate(
            &format!(
                "ingest {format}, {} rows ({})",
                files.rows,
                show_bytes(size)
            ),
            size as f64,
            median(kura.clone()),
            Some(("DataFusion, plaintext", median(base))),
            Goal::MinShare(0.85),
        );
        // Since issue 19 every upload is written to storage: the like-for-like baseline writes
        // the plaintext as Parquet too.
        table.rate(
            "  the same, against a plaintext copy written as Parquet",
            size as f64,
            median(kura),
            Some(("DataFusion, read + write Parquet", median(stored))),
            Goal::None,
        );
        cpu_row(
            table,
            median(enclave_cpu),
            median(client_cpu),
            median(base_cpu),
        );
    }
}

/// CPU time, all threads: here the clients share the two cores with the enclave, while in a
/// deployment they run on the providers' machines. The enclave's CPU time is what the work
/// costs the enclave.
fn cpu_row(table: &mut Table, enclave: f64, client: f64, datafusion: f64) {
    table.push(
        "  CPU time of the same work",
        format!(
            "enclave {} (+ client {})",
            show_time(enclave),
            show_time(client)
        ),
        format!("DataFusion {}", show_time(datafusion)),
        format!("{:.2}x", enclave / datafusion),
        String::new(),
        None,
    );
}

/// What one end-to-end run of the join through kura measured.
struct EndToEnd {
    secs: f64,
    /// CPU time of the enclave process and of this one (the clients) over `secs`.
    enclave_cpu: f64,
    client_cpu: f64,
    again_secs: f64,
    enclave_peak: u64,
    claims: u64,
}

/// Both parties upload their Parquet file at once, the hospital starts the analysis and
/// decrypts its sealed result. Then the analysis runs once more on the data now at rest in the
/// enclave's store (encrypted Parquet files on this machine's disk).
fn end_to_end(rt: &tokio::runtime::Runtime, room: &Room, files: &Files) -> EndToEnd {
    let enclave = Enclave::start(room);
    rt.block_on(async {
        let mut hospital = room.client(&enclave.url, &room.hospital).await;
        let mut insurer = room.client(&enclave.url, &room.insurer).await;
        hospital.attest().await.expect("attest");
        insurer.attest().await.expect("attest");
        let cpu = (enclave.cpu_secs(), cpu_secs("self"));
        let start = Instant::now();
        let (p, c) = tokio::join!(
            hospital.upload("patients", &files.patients_parquet, |_| {}),
            insurer.upload("claims", &files.claims_parquet, |_| {}),
        );
        p.expect("upload patients");
        c.expect("upload claims");
        let result = run(&mut hospital).await;
        let secs = secs(start.elapsed());
        let (enclave_cpu, client_cpu) = (enclave.cpu_secs() - cpu.0, cpu_secs("self") - cpu.1);

        let start = Instant::now();
        let again = run(&mut hospital).await;
        let again_secs = self::secs(start.elapsed());
        assert_eq!(result.suppressed_groups, 0);
        // Counts agree exactly; float sums only up to the order of addition.
        assert_eq!(
            counts(&result),
            counts(&again),
            "the same data, the same counts"
        );
        let claims = counts(&result).iter().sum();
        EndToEnd {
            secs,
            enclave_cpu,
            client_cpu,
            again_secs,
            enclave_peak: enclave.peak_memory(),
            claims,
        }
    })
}

/// The claims count of each group of a result.
fn counts(t: &kura_api::ResultTable) -> Vec<u64> {
    t.rows
        .iter()
        .map(|r| r[2].as_u64().expect("claims count"))
        .collect()
}

async fn run(hospital: &mut kura_client::Client) -> kura_api::ResultTable {
    let run = hospital.run(ANALYSIS).await.expect("run");
    hospital
        .results(Some(&run.run_id))
        .await
        .expect("results")
        .pop()
        .expect("a result for the hospital")
}

/// The join through kura under the bench's contract (`rooms[0]`, which keeps the columns its
/// analysis reads) and under the same contract allowing ad-hoc queries (`rooms[1]`, which keeps
/// every column), against DataFusion and DuckDB on the same Parquet files.
fn join(
    rt: &tokio::runtime::Runtime,
    table: &mut Table,
    [room, room_adhoc]: [&Room; 2],
    files: &Files,
    runs: usize,
) {
    let dir = files.claims_parquet.parent().unwrap();
    let (mut kura, mut kura_adhoc, mut again, mut df, mut df_resident, mut duck) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut enclave_cpu, mut client_cpu, mut df_cpu) = (vec![], vec![], vec![]);
    for run in 1..=runs {
        progress(format!("join + aggregate, run {run}/{runs}"));
        let e = end_to_end(rt, room, files);
        let every_column = end_to_end(rt, room_adhoc, files);
        assert_eq!(every_column.claims, e.claims, "the same claims either way");
        kura_adhoc.push(every_column.secs);
        let b = baseline("join", dir);
        assert_eq!(
            e.claims, b.rows,
            "kura and DataFusion count the same claims"
        );
        kura.push(e.secs);
        again.push(e.again_secs);
        df.push(b.secs);
        enclave_cpu.push(e.enclave_cpu);
        client_cpu.push(e.client_cpu);
        df_cpu.push(b.cpu_secs);
        df_resident.push(baseline("join-resident", dir).secs);
        if let Some(d) = duckdb(dir) {
            assert_eq!(d.rows, b.rows, "DuckDB counts the same claims");
            duck.push(d.secs);
        }
    }
    let what = format!(
        "join + aggregate, {} x {} rows",
        files.rows,
        files.rows / 10
    );
    let (kura, df) = (median(kura), median(df));
    table.time(
        &format!("{what}, end to end"),
        kura,
        Some(("DataFusion on Parquet", df)),
        Goal::MaxRatio(1.15),
    );
    let duck = (!duck.is_empty()).then(|| ("DuckDB on Parquet", median(duck)));
    table.time(&format!("{what}, end to end"), kura, duck, Goal::None);
    table.time(
        "  the same, contract allowing ad-hoc queries (keeps every column)",
        median(kura_adhoc),
        Some(("DataFusion on Parquet", df)),
        Goal::None,
    );
    cpu_row(
        table,
        median(enclave_cpu),
        median(client_cpu),
        median(df_cpu),
    );
    // The second run reads the encrypted files the uploads left in the store; DataFusion reads
    // the plaintext Parquet files from the same disk (its time here includes registering them).
    let again = median(again);
    table.time(
        "  the same query again, data read from the encrypted store",
        again,
        Some(("DataFusion on plaintext Parquet, same disk", df)),
        Goal::MaxRatio(1.2),
    );
    table.time(
        "  the same query again, data read from the encrypted store",
        again,
        Some(("DataFusion in memory", median(df_resident))),
        Goal::None,
    );
}

/// Verification of each platform's real evidence; everything it needs is in memory.
fn attestation(table: &mut Table) {
    progress("attestation verification");
    for case in vectors::cases() {
        let name = case.name;
        let times = vectors::time_verification(case, 200);
        table.time(
            &format!("attestation verify, {name}"),
            secs(times[times.len() / 2]),
            None,
            Goal::MaxTime(0.002),
        );
    }
}

/// One end-to-end run per size: time and peak memory of kura's enclave, DataFusion, DuckDB.
fn scaling(rt: &tokio::runtime::Runtime, room: &Room, sizes: &[usize]) {
    let mut lines = Vec::new();
    for &rows in sizes {
        let data = tempfile::tempdir().expect("temporary directory");
        progress(format!("scaling: generating {rows} claims"));
        let files = generate(data.path(), rows, false);
        progress(format!("scaling: {rows} claims"));
        let e = end_to_end(rt, room, &files);
        let b = baseline("join", data.path());
        assert_eq!(e.claims, b.rows);
        let d = duckdb(data.path());
        let parquet = file_size(&files.claims_parquet) + file_size(&files.patients_parquet);
        lines.push(format!(
            "| {rows:>11} | {:>9} | {:>8} | {:>10} | {:>10} | {:>11} | {:>10} | {:>11} |",
            show_bytes(parquet),
            show_time(e.secs),
            show_bytes(e.enclave_peak),
            show_time(b.secs),
            show_bytes(b.peak_bytes),
            d.as_ref().map_or("-".into(), |d| show_time(d.secs)),
            d.as_ref().map_or("-".into(), |d| show_bytes(d.peak_bytes)),
        ));
    }
    println!();
    println!(
        "scaling: the join + aggregate end to end; peak = peak resident memory of the process"
    );
    println!(
        "| claims rows | Parquet   | kura e2e | kura peak  | DataFusion | DF peak     | DuckDB     | DuckDB peak |"
    );
    println!(
        "|-------------|-----------|----------|------------|------------|-------------|------------|-------------|"
    );
    for l in lines {
        println!("{l}");
    }
}
