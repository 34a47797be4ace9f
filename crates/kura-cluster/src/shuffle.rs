//! Shuffle output sealed with keys that live only in the executor's memory.
//!
//! Ballista's own writers put each stage's output in its working directory as plaintext Arrow
//! IPC, and its readers open a neighbour's files straight from that directory. An executor of
//! kura's replaces both ends:
//!
//! - [`Engine`] runs each stage and writes its output through [`Writer`]: every file is sealed
//!   (AES-256-GCM, the dataset stream's framing) with a key of its own, drawn when the file is
//!   created and kept in [`Keys`], in memory. Hash-partitioned stages are split with DataFusion's
//!   own partitioner, so both sides of a join agree on where a key goes.
//! - A stage reads what its own executor wrote directly, opening the sealed files with the keys
//!   in memory ([`LocalFirst`]). What other executors wrote it fetches from them through
//!   Ballista's reader, over the cluster's mutual TLS, and their [`Service`] (the Flight
//!   service) opens the file with its key. Ballista never opens a file itself: the cluster
//!   forces its reader to fetch remotely, and it is left only other executors' locations.
//!
//! A file's key never leaves its executor, so a file copied off the host's disk is noise, and
//! once the executor forgets a job's keys the files are noise to everyone. It forgets them when
//! the coordinator deletes a run's files ([`DELETE_SESSION`], answered with what was deleted,
//! which the coordinator logs), when Ballista has cleaned a job's directory, and when it stops.
//! Refused: plans whose output Ballista would lay out otherwise (range shuffles), and fetches
//! of byte ranges or index files.

use std::collections::HashMap;
use std::fmt;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use ballista_core::JobId;
use ballista_core::execution_plans::sort_shuffle::SortShuffleWriterExec;
use ballista_core::execution_plans::{ShuffleReaderExec, ShuffleWriterExec};
use ballista_core::extension::SessionConfigExt;
use ballista_core::serde::protobuf::ShuffleWritePartition;
use ballista_core::serde::scheduler::Action as BallistaAction;
use ballista_executor::execution_engine::{ExecutionEngine, QueryStageExecutor};
use futures_util::{StreamExt, TryStreamExt};
use kura_crypto::{DataKey, StreamDecoder, StreamEncoder};
use kura_engine::RecordBatch;
use kura_engine::datafusion::arrow::datatypes::SchemaRef;
use kura_engine::datafusion::arrow::ipc::reader::StreamReader;
use kura_engine::datafusion::arrow::ipc::writer::StreamWriter;
use kura_engine::datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use kura_engine::datafusion::error::{DataFusionError, Result};
use kura_engine::datafusion::execution::TaskContext;
use kura_engine::datafusion::physical_expr::PhysicalExpr;
use kura_engine::datafusion::physical_plan::metrics::{MetricsSet, Time};
use kura_engine::datafusion::physical_plan::repartition::BatchPartitioner;
use kura_engine::datafusion::physical_plan::{ExecutionPlan, Partitioning};
use kura_engine::datafusion::prelude::SessionConfig;
use tonic::{Request, Response, Status, Streaming};
use zeroize::Zeroizing;

/// Plaintext sealed per frame: small, since a hash stage keeps one open file per partition.
const CHUNK: usize = 256 << 10;

/// Where one sealed file sits in a job's output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FileId {
    stage: usize,
    partition: usize,
    file: u64,
}

impl FileId {
    /// The file's path under the working directory. `job` is checked by [`job_dir`].
    fn path(&self, job_dir: &Path) -> PathBuf {
        job_dir
            .join(self.stage.to_string())
            .join(self.partition.to_string())
            .join(format!("{}.sealed", self.file))
    }

    /// What the file's frames are bound to, so that no file passes for another.
    fn context(&self, job: &str) -> Vec<u8> {
        format!(
            "kura-shuffle-v1\0{job}\0{}\0{}\0{}",
            self.stage, self.partition, self.file
        )
        .into_bytes()
    }
}

/// A job's directory: job ids are the scheduler's, and only letters, digits, `-` and `_` may
/// become part of a path.
fn job_dir(work_dir: &Path, job: &str) -> Result<PathBuf> {
    let plain = !job.is_empty()
        && job.len() <= 64
        && job
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !plain {
        return Err(DataFusionError::Execution("no such shuffle output".into()));
    }
    Ok(work_dir.join(job))
}

/// The Flight action by which the coordinator has an executor delete everything a session (one
/// query's jobs) left: its body is the session id, its one result [`Deleted`] as JSON.
pub const DELETE_SESSION: &str = "kura-delete-session";

/// What an executor deleted of one session: its sealed files and their keys.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Deleted {
    /// Sealed files it had written (some Ballista may have removed already; their keys went now).
    pub files: u64,
}

/// One job's sealed files on an executor.
#[derive(Default)]
struct Job {
    /// The session (the coordinator's query) the job belongs to.
    session: String,
    keys: HashMap<FileId, DataKey>,
}

/// The keys of every sealed file an executor holds, by job. Memory only.
#[derive(Default)]
pub struct Keys {
    jobs: Mutex<HashMap<String, Job>>,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keys").finish_non_exhaustive()
    }
}

impl Keys {
    /// A fresh key for a new file of `session`'s `job`; it replaces any key the same file had.
    fn create(&self, session: &str, job: &str, id: FileId) -> DataKey {
        let key = DataKey::generate();
        let copy = DataKey::from_bytes(key.as_bytes()).expect("32 bytes");
        let mut jobs = self.lock();
        let entry = jobs.entry(job.to_string()).or_default();
        if entry.session.is_empty() {
            entry.session = session.to_string();
        }
        entry.keys.insert(id, copy);
        key
    }

    fn get(&self, job: &str, id: FileId) -> Option<DataKey> {
        let jobs = self.lock();
        let key = jobs.get(job)?.keys.get(&id)?;
        Some(DataKey::from_bytes(key.as_bytes()).expect("32 bytes"))
    }

    /// Deletes every job of `session`: forgets its keys, then removes its directory.
    pub fn delete_session(&self, work_dir: &Path, session: &str) -> Deleted {
        let gone: Vec<(String, Job)> = {
            let mut jobs = self.lock();
            let names: Vec<String> = jobs
                .iter()
                .filter(|(_, j)| j.session == session)
                .map(|(name, _)| name.clone())
                .collect();
            names
                .into_iter()
                .filter_map(|name| jobs.remove_entry(&name))
                .collect()
        };
        let mut deleted = Deleted::default();
        for (name, job) in gone {
            deleted.files += job.keys.len() as u64;
            drop(job);
            if let Ok(dir) = job_dir(work_dir, &name)
                && let Err(e) = std::fs::remove_dir_all(&dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                // The keys are gone: what stays is noise, but say so.
                tracing::warn!(error = %e.kind(), "a job's sealed files could not be removed");
            }
        }
        deleted
    }

    /// Forgets the keys of jobs whose directory is gone (Ballista cleans them up): their
    /// files, wherever copies of them went, can no longer be opened by anyone.
    pub fn forget_gone(&self, work_dir: &Path) {
        self.lock().retain(|job, _| work_dir.join(job).exists());
    }

    /// How many jobs' keys are held.
    pub fn jobs(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Job>> {
        self.jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

// ---------------------------------------------------------------------------------------------
// Sealed files

/// Seals what is written to it into a file, frame by frame.
struct Sealer {
    file: BufWriter<std::fs::File>,
    encoder: StreamEncoder,
    plain: Zeroizing<Vec<u8>>,
    frame: Vec<u8>,
}

impl Sealer {
    fn create(path: &Path, key: DataKey, context: &[u8]) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        Ok(Self {
            file: BufWriter::new(std::fs::File::create(path)?),
            encoder: StreamEncoder::new(key, context),
            plain: Zeroizing::new(Vec::with_capacity(CHUNK)),
            frame: Vec::with_capacity(CHUNK + 64),
        })
    }

    fn seal(&mut self, last: bool) -> std::io::Result<()> {
        self.frame.clear();
        self.encoder
            .seal_chunk(&self.plain, last, &mut self.frame)
            .map_err(std::io::Error::other)?;
        zeroize::Zeroize::zeroize(self.plain.as_mut_slice());
        self.plain.clear();
        self.file.write_all(&self.frame)
    }

    /// Seals the rest as the final frame and closes the file.
    fn finish(mut self) -> std::io::Result<()> {
        self.seal(true)?;
        self.file.flush()
    }
}

impl Write for Sealer {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let take = (CHUNK - self.plain.len()).min(data.len());
        self.plain.extend_from_slice(&data[..take]);
        if self.plain.len() == CHUNK {
            self.seal(false)?;
        }
        Ok(take)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Opens a sealed file as it is read; fails on any change, reordering or truncation.
struct Opener {
    file: std::fs::File,
    decoder: StreamDecoder,
    plain: Zeroizing<Vec<u8>>,
    at: usize,
    sealed: Vec<u8>,
}

impl Opener {
    fn open(path: &Path, key: &DataKey, context: &[u8]) -> std::io::Result<Self> {
        Ok(Self {
            file: std::fs::File::open(path)?,
            decoder: StreamDecoder::new(key, context),
            plain: Zeroizing::new(Vec::new()),
            at: 0,
            sealed: vec![0; 64 << 10],
        })
    }
}

impl Read for Opener {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.plain.len() {
            zeroize::Zeroize::zeroize(self.plain.as_mut_slice());
            self.plain.clear();
            self.at = 0;
            let n = self.file.read(&mut self.sealed)?;
            if n == 0 {
                self.decoder.finish().map_err(std::io::Error::other)?;
                return Ok(0);
            }
            self.decoder
                .push(&self.sealed[..n], &mut self.plain)
                .map_err(std::io::Error::other)?;
        }
        let n = (self.plain.len() - self.at).min(out.len());
        out[..n].copy_from_slice(&self.plain[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// One sealed Arrow IPC stream being written, and what the scheduler is told about it.
struct Writer {
    ipc: StreamWriter<Sealer>,
    rows: u64,
    batches: u64,
    bytes: u64,
}

impl Writer {
    fn create(place: &Place, id: FileId, schema: &SchemaRef) -> Result<Self> {
        let key = place.keys.create(&place.session, &place.job, id);
        let sealer = Sealer::create(&id.path(&place.job_dir), key, &id.context(&place.job))?;
        Ok(Self {
            ipc: StreamWriter::try_new(sealer, schema)?,
            rows: 0,
            batches: 0,
            bytes: 0,
        })
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.ipc.write(batch)?;
        self.rows += batch.num_rows() as u64;
        self.batches += 1;
        self.bytes += batch.get_array_memory_size() as u64;
        Ok(())
    }

    fn finish(mut self, partition: usize, file: u64) -> Result<ShuffleWritePartition> {
        self.ipc.finish()?;
        self.ipc.into_inner()?.finish()?;
        Ok(ShuffleWritePartition {
            partition_id: partition as u64,
            num_batches: self.batches,
            num_rows: self.rows,
            num_bytes: self.bytes,
            file_id: Some(file),
            is_sort_shuffle: false,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Writing a stage's output

/// The execution engine of kura's executors: Ballista's stages, with sealed output, reading
/// their own executor's files directly ([`LocalFirst`]).
#[derive(Debug)]
pub struct Engine {
    keys: Arc<Keys>,
    /// This executor's id, as the scheduler names it in partition locations.
    executor: String,
}

impl Engine {
    pub fn new(keys: Arc<Keys>, executor: impl Into<String>) -> Self {
        Self {
            keys,
            executor: executor.into(),
        }
    }
}

impl ExecutionEngine for Engine {
    fn create_query_stage_exec(
        &self,
        job_id: JobId,
        stage_id: usize,
        _task_id: usize,
        global_output_partition_ids: Vec<usize>,
        plan: Arc<dyn ExecutionPlan>,
        work_dir: &str,
        _config: &SessionConfig,
    ) -> Result<Arc<dyn QueryStageExecutor>> {
        let work_dir = PathBuf::from(work_dir);
        self.keys.forget_gone(&work_dir);
        let plan = plan
            .transform(|p| match p.downcast_ref::<ShuffleReaderExec>() {
                Some(reader) => Ok(Transformed::yes(Arc::new(LocalFirst::new(
                    reader,
                    &self.executor,
                    &work_dir,
                    self.keys.clone(),
                ))
                    as Arc<dyn ExecutionPlan>)),
                None => Ok(Transformed::no(p)),
            })?
            .data;
        let output = if plan.downcast_ref::<ShuffleWriterExec>().is_some() {
            Output::Through(global_output_partition_ids)
        } else if let Some(writer) = plan.downcast_ref::<SortShuffleWriterExec>()
            && let Partitioning::Hash(exprs, partitions) = writer.shuffle_output_partitioning()
        {
            Output::Hash {
                exprs: exprs.clone(),
                partitions: *partitions,
            }
        } else {
            return Err(DataFusionError::Execution(
                "this plan's shuffle is not one kura's cluster runs".into(),
            ));
        };
        let [input] = plan.children()[..] else {
            return Err(DataFusionError::Execution(
                "a shuffle writer without one input".into(),
            ));
        };
        let job = job_id.as_str().to_string();
        Ok(Arc::new(Stage {
            job_dir: job_dir(&work_dir, &job)?,
            job,
            stage: stage_id,
            input: input.clone(),
            output,
            keys: self.keys.clone(),
        }))
    }
}

/// Where a task's files go: its session's job, under the working directory, keys in `keys`.
#[derive(Clone)]
struct Place {
    session: String,
    job: String,
    job_dir: PathBuf,
    keys: Arc<Keys>,
}

/// The coordinator's name for the query a task belongs to: the job name it gave (Ballista's
/// scheduler gives each job a session of its own, which the coordinator never learns).
fn session_of(context: &TaskContext) -> String {
    context
        .session_config()
        .ballista_config()
        .settings()
        .get(ballista_core::config::BALLISTA_JOB_NAME)
        .cloned()
        .unwrap_or_else(|| context.session_id())
}

/// How a stage lays out its output.
#[derive(Debug)]
enum Output {
    /// Each input partition to one output partition, numbered as the scheduler says.
    Through(Vec<usize>),
    /// Rows to the output partition their key (`exprs`) hashes to.
    Hash {
        exprs: Vec<Arc<dyn PhysicalExpr>>,
        partitions: usize,
    },
}

/// One task of a stage: runs its input partitions and seals what they produce.
struct Stage {
    job: String,
    job_dir: PathBuf,
    stage: usize,
    input: Arc<dyn ExecutionPlan>,
    output: Output,
    keys: Arc<Keys>,
}

impl fmt::Debug for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stage")
            .field("stage", &self.stage)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the plan: it may quote a sealed query's literals.
        write!(f, "sealed shuffle stage {}", self.stage)
    }
}

/// Reads a stage's stored scans through ([`kura_engine::stored::read_through`]) when dropped
/// while it still holds the stage's plan.
struct ReadThrough(Option<Arc<dyn ExecutionPlan>>);

impl Drop for ReadThrough {
    fn drop(&mut self) {
        if let Some(plan) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let _ = kura_engine::stored::read_through(&plan).await;
            });
        }
    }
}

#[async_trait::async_trait]
impl QueryStageExecutor for Stage {
    async fn execute_query_stage(
        &self,
        task_id: usize,
        context: Arc<TaskContext>,
    ) -> Result<Vec<ShuffleWritePartition>> {
        let inputs = self
            .input
            .properties()
            .output_partitioning()
            .partition_count();
        let schema = self.input.schema();
        let place = Place {
            session: session_of(&context),
            job: self.job.clone(),
            job_dir: self.job_dir.clone(),
            keys: self.keys.clone(),
        };
        // Should the stage be dropped before its end (Ballista cancels a job's running tasks
        // when one fails), its scans are read through all the same.
        let mut guard = ReadThrough(Some(self.input.clone()));
        let mut tasks = tokio::task::JoinSet::new();
        for local in 0..inputs {
            let mut stream = self.input.execute(local, context.clone())?;
            let (place, schema) = (place.clone(), schema.clone());
            let stage = self.stage;
            match &self.output {
                Output::Through(ids) => {
                    let id = FileId {
                        stage,
                        partition: ids.get(local).copied().unwrap_or(local),
                        file: task_id as u64,
                    };
                    tasks.spawn(async move {
                        let mut out = Writer::create(&place, id, &schema)?;
                        while let Some(batch) = stream.next().await {
                            out.write(&batch?)?;
                        }
                        Ok::<_, DataFusionError>(vec![out.finish(id.partition, id.file)?])
                    });
                }
                Output::Hash { exprs, partitions } => {
                    let (exprs, k) = (exprs.clone(), *partitions);
                    // One file per input partition and output partition: unique in the stage,
                    // since task ids are.
                    let file = ((task_id as u64) << 20) | local as u64;
                    tasks.spawn(async move {
                        let mut split =
                            BatchPartitioner::new_hash_partitioner(exprs, k, Time::new())?;
                        let mut outs: Vec<Option<Writer>> = (0..k).map(|_| None).collect();
                        while let Some(batch) = stream.next().await {
                            for part in split.partition_iter(batch?)? {
                                let (partition, rows) = part?;
                                let out = match &mut outs[partition] {
                                    Some(out) => out,
                                    slot => {
                                        let id = FileId {
                                            stage,
                                            partition,
                                            file,
                                        };
                                        slot.insert(Writer::create(&place, id, &schema)?)
                                    }
                                };
                                out.write(&rows)?;
                            }
                        }
                        outs.into_iter()
                            .enumerate()
                            .filter_map(|(partition, out)| Some(out?.finish(partition, file)))
                            .collect::<Result<Vec<_>>>()
                    });
                }
            }
        }
        let mut written = Vec::new();
        let mut failed = None;
        while let Some(done) = tasks.join_next().await {
            match done.map_err(|_| DataFusionError::Execution("a shuffle write failed".into())) {
                Ok(Ok(files)) => written.extend(files),
                Ok(Err(e)) | Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        // However the stage ended (a join's empty side, a limit, an error), its stored scans
        // are read to their end: what the host sees this executor fetch does not depend on
        // the data ([`kura_engine::stored::read_through`]).
        guard.0 = None;
        let through = kura_engine::stored::read_through(&self.input).await;
        if let Some(e) = failed {
            return Err(e);
        }
        through?;
        written.sort_by_key(|w| (w.partition_id, w.file_id));
        Ok(written)
    }

    fn collect_plan_metrics(&self) -> Vec<MetricsSet> {
        // None: the scheduler takes a task without metrics, and they would describe the plan.
        Vec::new()
    }
}

// ---------------------------------------------------------------------------------------------
// Serving it

/// The executor's Flight service: serves partitions of the sealed files it holds keys for.
#[derive(Debug)]
pub struct Service {
    work_dir: PathBuf,
    keys: Arc<Keys>,
}

impl Service {
    pub fn new(work_dir: impl Into<PathBuf>, keys: Arc<Keys>) -> Self {
        Self {
            work_dir: work_dir.into(),
            keys,
        }
    }

    /// The stream of a fetched partition's batches, opened with its key.
    fn open(
        &self,
        ticket: &Ticket,
    ) -> std::result::Result<(SchemaRef, StreamReader<BufReader<Opener>>), Status> {
        let missing = || Status::not_found("no such shuffle output");
        let action = ballista_core::serde::decode_protobuf(&ticket.ticket)
            .map_err(|_| Status::invalid_argument("not a shuffle fetch"))?;
        let BallistaAction::FetchPartition {
            job_id,
            stage_id,
            partition_id,
            file_id,
            file_kind,
            byte_ranges,
            ..
        } = action;
        if !byte_ranges.is_empty()
            || !matches!(
                file_kind,
                ballista_core::serde::scheduler::ShuffleFileKind::Data
            )
        {
            return Err(Status::invalid_argument(
                "only whole partitions are fetched from kura's executors",
            ));
        }
        let id = FileId {
            stage: stage_id,
            partition: partition_id,
            file: file_id.ok_or_else(missing)?,
        };
        let reader = open_sealed(&self.work_dir, &self.keys, job_id.as_str(), id)?;
        Ok((reader.schema(), reader))
    }
}

/// The batches of sealed file `id` of `job` under `work_dir`, opened with its key from `keys`:
/// NotFound without the file or its key, DataLoss if it does not open as itself.
fn open_sealed(
    work_dir: &Path,
    keys: &Keys,
    job: &str,
    id: FileId,
) -> std::result::Result<StreamReader<BufReader<Opener>>, Status> {
    let missing = || Status::not_found("no such shuffle output");
    let dir = job_dir(work_dir, job).map_err(|_| missing())?;
    let key = keys.get(job, id).ok_or_else(missing)?;
    let opener = Opener::open(&id.path(&dir), &key, &id.context(job)).map_err(|_| missing())?;
    StreamReader::try_new(BufReader::with_capacity(CHUNK, opener), None)
        .map_err(|_| Status::data_loss("a shuffle file does not open"))
}

/// A stage's read of an earlier stage's output. What this executor wrote is opened here, from
/// its own sealed files with the keys in its memory; what others wrote is fetched by Ballista's
/// reader from them, over the cluster's TLS. (Before, every read went through the Flight
/// service, so an executor sent its own files to itself over TLS, encrypting and copying again
/// every byte that stayed on one machine: at 50M claims on one executor, 1.6 times Ballista's
/// CPU; see docs/performance.md.)
#[derive(Debug)]
struct LocalFirst {
    /// Ballista's reader, left with the other executors' locations.
    remote: Arc<ShuffleReaderExec>,
    /// This executor's files, for each of the reader's partitions.
    local: Vec<Vec<(String, FileId)>>,
    work_dir: PathBuf,
    keys: Arc<Keys>,
}

impl LocalFirst {
    /// Splits `reader`'s locations between this executor (`own`) and the others.
    fn new(reader: &ShuffleReaderExec, own: &str, work_dir: &Path, keys: Arc<Keys>) -> Self {
        let mut remote = reader.with_work_dir(work_dir.display().to_string());
        let mut local = Vec::with_capacity(remote.partition.len());
        for locations in &mut remote.partition {
            let (mine, others): (Vec<_>, Vec<_>) = std::mem::take(locations)
                .into_iter()
                .partition(|l| l.executor_meta.id == own && l.file_id.is_some());
            *locations = others;
            local.push(
                mine.into_iter()
                    .filter_map(|l| {
                        let file = l.file_id?;
                        Some((
                            l.partition_id.job_id.as_str().to_string(),
                            FileId {
                                stage: l.partition_id.stage_id,
                                partition: l.partition_id.partition_id,
                                file,
                            },
                        ))
                    })
                    .collect(),
            );
        }
        Self {
            remote: Arc::new(remote),
            local,
            work_dir: work_dir.to_path_buf(),
            keys,
        }
    }
}

impl kura_engine::datafusion::physical_plan::DisplayAs for LocalFirst {
    fn fmt_as(
        &self,
        _: kura_engine::datafusion::physical_plan::DisplayFormatType,
        f: &mut fmt::Formatter,
    ) -> fmt::Result {
        write!(f, "LocalFirst: stage={}", self.remote.stage_id)
    }
}

impl ExecutionPlan for LocalFirst {
    fn name(&self) -> &str {
        "LocalFirst"
    }

    fn properties(&self) -> &Arc<kura_engine::datafusion::physical_plan::PlanProperties> {
        self.remote.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal(
                "a shuffle read has no children".into(),
            ))
        }
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<kura_engine::datafusion::execution::SendableRecordBatchStream> {
        // A broadcast read serves its one list of locations to every partition.
        let index = if self.remote.broadcast { 0 } else { partition };
        let files = self.local.get(index).cloned().unwrap_or_default();
        let remote = self.remote.execute(partition, context)?;
        let (work_dir, keys) = (self.work_dir.clone(), self.keys.clone());
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::task::spawn_blocking(move || {
            let unreadable = || DataFusionError::Execution("a shuffle file does not open".into());
            for (job, id) in files {
                let reader = match open_sealed(&work_dir, &keys, &job, id) {
                    Ok(reader) => reader,
                    Err(_) => {
                        let _ = tx.blocking_send(Err(unreadable()));
                        return;
                    }
                };
                for batch in reader {
                    let batch = batch.map_err(|_| unreadable());
                    let failed = batch.is_err();
                    if tx.blocking_send(batch).is_err() || failed {
                        return;
                    }
                }
            }
        });
        let local = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Box::pin(
            kura_engine::datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(
                self.remote.schema(),
                local.chain(remote),
            ),
        ))
    }
}

type Boxed<T> =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = std::result::Result<T, Status>> + Send>>;

fn unsupported<T>() -> std::result::Result<T, Status> {
    Err(Status::unimplemented(
        "kura's executors only serve shuffle fetches",
    ))
}

#[async_trait::async_trait]
impl FlightService for Service {
    type HandshakeStream = Boxed<HandshakeResponse>;
    type ListFlightsStream = Boxed<FlightInfo>;
    type DoGetStream = Boxed<FlightData>;
    type DoPutStream = Boxed<PutResult>;
    type DoExchangeStream = Boxed<FlightData>;
    type DoActionStream = Boxed<arrow_flight::Result>;
    type ListActionsStream = Boxed<ActionType>;

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> std::result::Result<Response<Self::DoGetStream>, Status> {
        let (schema, reader) = self.open(request.get_ref())?;
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::task::spawn_blocking(move || {
            for batch in reader {
                let batch = batch
                    .map_err(|_| FlightError::ExternalError("a shuffle file does not open".into()));
                let failed = batch.is_err();
                if tx.blocking_send(batch).is_err() || failed {
                    break;
                }
            }
        });
        let stream = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(tokio_stream::wrappers::ReceiverStream::new(rx))
            .map_err(|_| Status::data_loss("a shuffle file does not open"));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn handshake(
        &self,
        _: Request<Streaming<HandshakeRequest>>,
    ) -> std::result::Result<Response<Self::HandshakeStream>, Status> {
        unsupported()
    }

    async fn list_flights(
        &self,
        _: Request<Criteria>,
    ) -> std::result::Result<Response<Self::ListFlightsStream>, Status> {
        unsupported()
    }

    async fn get_flight_info(
        &self,
        _: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<FlightInfo>, Status> {
        unsupported()
    }

    async fn poll_flight_info(
        &self,
        _: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<PollInfo>, Status> {
        unsupported()
    }

    async fn get_schema(
        &self,
        _: Request<FlightDescriptor>,
    ) -> std::result::Result<Response<SchemaResult>, Status> {
        unsupported()
    }

    async fn do_put(
        &self,
        _: Request<Streaming<FlightData>>,
    ) -> std::result::Result<Response<Self::DoPutStream>, Status> {
        unsupported()
    }

    async fn do_exchange(
        &self,
        _: Request<Streaming<FlightData>>,
    ) -> std::result::Result<Response<Self::DoExchangeStream>, Status> {
        unsupported()
    }

    /// [`DELETE_SESSION`]: deletes what a session left here and says how much.
    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> std::result::Result<Response<Self::DoActionStream>, Status> {
        // Only the coordinator knows when a job's output has been read; any other member
        // asking for a deletion could cut a neighbour's job short.
        if !request
            .peer_certs()
            .is_some_and(|certs| crate::tls::is_coordinator(&certs))
        {
            return Err(Status::permission_denied(
                "only the coordinator may delete a job's files",
            ));
        }
        let action = request.into_inner();
        if action.r#type != DELETE_SESSION {
            return unsupported();
        }
        let session = std::str::from_utf8(&action.body)
            .map_err(|_| Status::invalid_argument("a session id is text"))?;
        let deleted = self.keys.delete_session(&self.work_dir, session);
        let body = serde_json::to_vec(&deleted).expect("counts serialise");
        let answer = arrow_flight::Result { body: body.into() };
        Ok(Response::new(Box::pin(futures_util::stream::iter([Ok(
            answer,
        )]))))
    }

    async fn list_actions(
        &self,
        _: Request<Empty>,
    ) -> std::result::Result<Response<Self::ListActionsStream>, Status> {
        unsupported()
    }
}

/// One executor's answer to [`DELETE_SESSION`] for `session`, asked over the cluster's TLS as
/// `membership` (which must be the coordinator's).
pub async fn ask_delete(
    membership: &crate::tls::Membership,
    executor: &str,
    host: &str,
    port: u16,
    session: &str,
) -> anyhow::Result<Deleted> {
    // Only `executor`'s certificate answers: the host that redirects the address to another
    // member gets a failed handshake, not a deletion record in the wrong name.
    let endpoint = tonic::transport::Endpoint::from_shared(format!("https://{host}:{port}"))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(30))
        .tls_config(membership.client_for(executor)?)?;
    let mut client = FlightServiceClient::new(endpoint.connect().await?);
    let mut answers = client
        .do_action(arrow_flight::Action {
            r#type: DELETE_SESSION.into(),
            body: session.as_bytes().to_vec().into(),
        })
        .await?
        .into_inner();
    let answer = answers
        .message()
        .await?
        .ok_or_else(|| anyhow::anyhow!("an empty answer"))?;
    Ok(serde_json::from_slice(&answer.body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(dir: &Path, keys: &Keys, id: FileId, bytes: &[u8]) -> PathBuf {
        let key = keys.create("session", "job", id);
        let path = id.path(dir);
        let mut sealer = Sealer::create(&path, key, &id.context("job")).unwrap();
        sealer.write_all(bytes).unwrap();
        sealer.finish().unwrap();
        path
    }

    fn opened(path: &Path, keys: &Keys, id: FileId) -> std::io::Result<Vec<u8>> {
        let key = keys.get("job", id).expect("a key");
        let mut out = Vec::new();
        Opener::open(path, &key, &id.context("job"))?.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn a_sealed_file_opens_only_as_itself_and_whole() {
        let dir = tempfile::tempdir().unwrap();
        let keys = Keys::default();
        let a = FileId {
            stage: 1,
            partition: 2,
            file: 3,
        };
        let b = FileId {
            stage: 1,
            partition: 3,
            file: 3,
        };
        // Three frames and a bit: the boundaries are exercised.
        let plain: Vec<u8> = (0..3 * CHUNK + 17).map(|i| (i % 251) as u8).collect();
        let path_a = sealed(dir.path(), &keys, a, &plain);
        let path_b = sealed(dir.path(), &keys, b, b"another partition");
        assert_eq!(opened(&path_a, &keys, a).unwrap(), plain);

        let on_disk = std::fs::read(&path_a).unwrap();
        assert!(
            !on_disk.windows(64).any(|w| w == &plain[1000..1064]),
            "the file on disk holds no plaintext"
        );
        // Swapped in for another partition, truncated, or changed: refused.
        std::fs::copy(&path_a, &path_b).unwrap();
        assert!(opened(&path_b, &keys, b).is_err());
        std::fs::write(&path_b, &on_disk[..on_disk.len() - 1]).unwrap();
        assert!(opened(&path_b, &keys, a).is_err());
        let mut changed = on_disk.clone();
        changed[CHUNK + 40] ^= 1;
        std::fs::write(&path_b, &changed).unwrap();
        assert!(opened(&path_b, &keys, a).is_err());
    }

    #[test]
    fn a_job_s_keys_are_forgotten_once_its_directory_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let keys = Keys::default();
        let id = FileId {
            stage: 1,
            partition: 0,
            file: 0,
        };
        sealed(&dir.path().join("job"), &keys, id, b"rows");
        keys.forget_gone(dir.path());
        assert_eq!(keys.jobs(), 1, "the job's directory is still there");
        std::fs::remove_dir_all(dir.path().join("job")).unwrap();
        keys.forget_gone(dir.path());
        assert_eq!(keys.jobs(), 0);
        assert!(keys.get("job", id).is_none());
    }

    /// A hash stage through the engine, read back through the Flight service: every row once,
    /// in the partition its key hashes to, and nothing on disk readable as Arrow.
    #[tokio::test]
    async fn a_hash_stage_is_written_sealed_and_served_whole() {
        use ballista_core::execution_plans::sort_shuffle::SortShuffleConfig;
        use ballista_core::serde::scheduler::{ShuffleFileKind, ShuffleLayout};
        use kura_engine::datafusion::arrow::array::{Int64Array, StringArray};
        use kura_engine::datafusion::arrow::datatypes::{DataType, Field, Schema};
        use kura_engine::datafusion::datasource::memory::MemorySourceConfig;
        use kura_engine::datafusion::physical_expr::expressions::col;
        use prost::Message;

        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, false),
        ]));
        let batch = |ids: std::ops::Range<i64>| {
            let names: Vec<String> = ids.clone().map(|i| format!("person-{i}")).collect();
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from_iter_values(ids)),
                    Arc::new(StringArray::from(names)),
                ],
            )
            .unwrap()
        };
        let input = MemorySourceConfig::try_new_exec(
            &[vec![batch(0..500)], vec![batch(500..700), batch(700..1000)]],
            schema.clone(),
            None,
        )
        .unwrap();
        let hash = Partitioning::Hash(vec![col("id", &schema).unwrap()], 4);
        let writer = SortShuffleWriterExec::try_new(
            JobId::from("job1".to_string()),
            3,
            input,
            String::new(),
            hash.clone(),
            SortShuffleConfig::new(true, 8192),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().to_str().unwrap();
        let keys = Arc::new(Keys::default());
        let stage = Engine::new(keys.clone(), "executor-1")
            .create_query_stage_exec(
                JobId::from("job1".to_string()),
                3,
                7,
                vec![],
                Arc::new(writer),
                work,
                &SessionConfig::new(),
            )
            .unwrap();
        let written = stage
            .execute_query_stage(7, Arc::new(TaskContext::default()))
            .await
            .unwrap();
        assert_eq!(written.iter().map(|w| w.num_rows).sum::<u64>(), 1000);

        let mut on_disk = vec![];
        let mut pending = vec![dir.path().to_path_buf()];
        while let Some(p) = pending.pop() {
            for e in std::fs::read_dir(p).unwrap() {
                let path = e.unwrap().path();
                if path.is_dir() {
                    pending.push(path);
                } else {
                    on_disk.push(std::fs::read(path).unwrap());
                }
            }
        }
        assert_eq!(on_disk.len(), written.len());
        for bytes in &on_disk {
            assert!(!bytes.windows(9).any(|w| w == b"person-42"));
            assert!(StreamReader::try_new(&bytes[..], None).is_err());
        }

        let service = Service::new(work, keys.clone());
        let mut seen = std::collections::BTreeSet::new();
        for w in &written {
            let action: ballista_core::serde::protobuf::Action = BallistaAction::FetchPartition {
                job_id: JobId::from("job1".to_string()),
                stage_id: 3,
                partition_id: w.partition_id as usize,
                host: "localhost".into(),
                port: 1,
                file_id: w.file_id,
                layout: ShuffleLayout::Passthrough,
                file_kind: ShuffleFileKind::Data,
                byte_ranges: vec![],
            }
            .try_into()
            .unwrap();
            let ticket = Ticket {
                ticket: action.encode_to_vec().into(),
            };
            let data = service
                .do_get(Request::new(ticket))
                .await
                .unwrap()
                .into_inner();
            let batches: Vec<RecordBatch> =
                arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(
                    data.map_err(FlightError::from),
                )
                .try_collect()
                .await
                .unwrap();
            let mut split = BatchPartitioner::new_hash_partitioner(
                vec![col("id", &schema).unwrap()],
                4,
                Time::new(),
            )
            .unwrap();
            for b in batches {
                for part in split.partition_iter(b.clone()).unwrap() {
                    let (p, _) = part.unwrap();
                    assert_eq!(p as u64, w.partition_id, "a row in another's partition");
                }
                let ids = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                for id in ids.values() {
                    assert!(seen.insert(*id), "row {id} served twice");
                }
            }
        }
        assert_eq!(seen.len(), 1000);

        // A later stage on this executor opens the same files here: every row once, with
        // nothing left to Ballista's remote reader. Another executor's files stay remote.
        {
            use ballista_core::serde::scheduler::{
                ExecutorMetadata, PartitionId, PartitionLocation,
            };
            let location = |w: &ShuffleWritePartition, executor: &str| PartitionLocation {
                map_partition_id: 0,
                partition_id: PartitionId::new(
                    &JobId::from("job1".to_string()),
                    3,
                    w.partition_id as usize,
                ),
                executor_meta: ExecutorMetadata {
                    id: executor.into(),
                    host: "localhost".into(),
                    port: 1,
                    grpc_port: 1,
                    specification: Default::default(),
                    os_info: Default::default(),
                },
                partition_stats: Default::default(),
                file_id: w.file_id,
                is_sort_shuffle: true,
            };
            let by_partition = |executor: &str| -> Vec<Vec<PartitionLocation>> {
                (0..4u64)
                    .map(|p| {
                        written
                            .iter()
                            .filter(|w| w.partition_id == p)
                            .map(|w| location(w, executor))
                            .collect()
                    })
                    .collect()
            };
            let reader = ShuffleReaderExec::try_new(
                3,
                by_partition("executor-1"),
                schema.clone(),
                hash.clone(),
            )
            .unwrap();
            let local = LocalFirst::new(&reader, "executor-1", dir.path(), keys.clone());
            assert!(local.remote.partition.iter().all(Vec::is_empty));
            let mut rows = 0;
            for p in 0..4 {
                let batches: Vec<RecordBatch> = local
                    .execute(p, Arc::new(TaskContext::default()))
                    .unwrap()
                    .try_collect()
                    .await
                    .unwrap();
                rows += batches.iter().map(RecordBatch::num_rows).sum::<usize>();
            }
            assert_eq!(rows, 1000);
            let theirs = ShuffleReaderExec::try_new(
                3,
                by_partition("executor-2"),
                schema.clone(),
                hash.clone(),
            )
            .unwrap();
            let split = LocalFirst::new(&theirs, "executor-1", dir.path(), keys.clone());
            assert!(split.local.iter().all(Vec::is_empty));
            assert_eq!(
                split.remote.partition.iter().map(Vec::len).sum::<usize>(),
                written.len()
            );
            // A file whose key this executor does not hold does not open.
            let stranger =
                LocalFirst::new(&reader, "executor-1", dir.path(), Arc::new(Keys::default()));
            let failed = stranger
                .execute(0, Arc::new(TaskContext::default()))
                .unwrap()
                .try_collect::<Vec<RecordBatch>>()
                .await;
            assert!(failed.is_err());
        }

        // A file of another stage, or one never written, is not there.
        let missing: ballista_core::serde::protobuf::Action = BallistaAction::FetchPartition {
            job_id: JobId::from("job1".to_string()),
            stage_id: 4,
            partition_id: 0,
            host: "localhost".into(),
            port: 1,
            file_id: written[0].file_id,
            layout: ShuffleLayout::Passthrough,
            file_kind: ShuffleFileKind::Data,
            byte_ranges: vec![],
        }
        .try_into()
        .unwrap();
        let ticket = Ticket {
            ticket: missing.encode_to_vec().into(),
        };
        let refused = service.do_get(Request::new(ticket)).await.err().unwrap();
        assert_eq!(refused.code(), tonic::Code::NotFound);

        // Deletion is the coordinator's: a request without its certificate takes nothing.
        let action = Action {
            r#type: DELETE_SESSION.into(),
            body: TaskContext::default().session_id().into_bytes().into(),
        };
        let refused = service.do_action(Request::new(action)).await.err().unwrap();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert_eq!(keys_held(&keys), written.len());

        // Over the cluster's TLS: another member is refused; the coordinator's deletion of
        // another session takes nothing, and of the task's own takes every file and key.
        let authority = crate::tls::Authority::new().unwrap();
        let node = crate::tls::NodeKey::generate().unwrap();
        let executor = crate::tls::Membership::new(
            authority.pem().to_string(),
            authority.certify(&node.public_pem(), "executor-1").unwrap(),
            &node,
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .tls_config(executor.server())
                .unwrap()
                .add_service(arrow_flight::flight_service_server::FlightServiceServer::new(service))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let session = TaskContext::default().session_id();
        let refused = ask_delete(&executor, "executor-1", "127.0.0.1", port, &session)
            .await
            .unwrap_err();
        assert!(
            refused.to_string().contains("only the coordinator"),
            "{refused}"
        );
        assert_eq!(keys_held(&keys), written.len());
        let coordinator = authority.coordinator().unwrap();
        // Only the executor named answers: an address that leads to another member (the host
        // redirecting it) fails the handshake, so no deletion is recorded in a wrong name.
        for name in ["executor-2", "Executor 1", ""] {
            let wrong = ask_delete(&coordinator, name, "127.0.0.1", port, &session).await;
            assert!(wrong.is_err(), "{name}: {wrong:?}");
        }
        assert_eq!(keys_held(&keys), written.len());
        let other = ask_delete(&coordinator, "executor-1", "127.0.0.1", port, "another")
            .await
            .unwrap();
        assert_eq!(other, Deleted::default());
        assert_eq!(keys_held(&keys), written.len());
        let deleted = ask_delete(&coordinator, "executor-1", "127.0.0.1", port, &session)
            .await
            .unwrap();
        assert_eq!(deleted.files, written.len() as u64);
        server.abort();

        assert_eq!(keys_held(&keys), 0);
        assert!(
            !dir.path().join("job1").exists(),
            "the job's files are removed"
        );
    }

    fn keys_held(keys: &Keys) -> usize {
        keys.lock().values().map(|j| j.keys.len()).sum()
    }

    #[test]
    fn only_plain_job_ids_name_a_directory() {
        let root = Path::new("/work");
        assert!(job_dir(root, "aB3_x-9").is_ok());
        for bad in ["", "..", "../etc", "a/b", "a\0b", &"x".repeat(65)] {
            assert!(job_dir(root, bad).is_err(), "{bad:?}");
        }
    }
}
