//! Stored files read only as the enclave wrote them.
//!
//! Parquet's modular encryption authenticates each module under the file's key, but two
//! things escape it. The Parquet reader accepts a file whose footer is plaintext even when it
//! is handed decryption properties, so a host that writes an ordinary Parquet file where a
//! batch was is read as if it were the batch. And whoever holds a file's key (its provider,
//! who must be able to release it to a later start) can write other modules that authenticate
//! under it. So the enclave records what it wrote, and every read is checked against that:
//!
//! - **The footer.** When it writes a file, the writer hashes each column chunk as it leaves
//!   (SHA-256), puts the list in the footer's key-value metadata, and hashes the footer's last
//!   bytes (the encrypted footer, its length and the `PARE` magic): [`Written`]. The upload's
//!   log entry records that hash and the file's size. A reader fetches the footer with the
//!   object's size, and goes on only if the size is the one written, the footer is encrypted
//!   (`PARE`), its bytes hash to the recorded value, it decrypts with the batch's key and AAD,
//!   and every column chunk is encrypted.
//! - **Every column chunk.** A read of the file's data is served only in whole column chunks
//!   whose bytes hash to the value the footer lists for them; a range that is not within one
//!   column chunk is refused.
//!
//! [`open`] does the first for [`super::StoredFile::open`]; [`Reader`] is the file reader every
//! scan of a stored table uses, in this process or on an executor ([`Factory`]).

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::physical_plan::parquet::ParquetFileReaderFactory;
use datafusion::datasource::source::DataSourceExec;
use datafusion::parquet::arrow::arrow_reader::ArrowReaderOptions;
use datafusion::parquet::arrow::async_reader::AsyncFileReader;
use datafusion::parquet::errors::ParquetError;
use datafusion::parquet::file::metadata::{KeyValue, ParquetMetaData, ParquetMetaDataReader};
use datafusion::physical_expr::utils::collect_columns;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use futures_util::future::{BoxFuture, Shared};
use futures_util::{FutureExt, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};

use super::FileKey;

/// The key under which the footer lists its column chunks' hashes.
pub(super) const CHUNKS_KEY: &str = "kura.chunk_sha256";

/// What the enclave recorded of a stored file when it wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Written {
    /// The file's size in bytes.
    pub bytes: u64,
    /// SHA-256 of its footer's last bytes: the encrypted footer, its length and the magic.
    pub footer_sha256: [u8; 32],
}

/// How much of the end of a file the first read fetches: most footers fit.
const FOOTER_HINT: u64 = 64 << 10;

/// The fixed words of a refusal: a file that is not what the enclave wrote.
fn not_written(path: &Path, what: &str) -> ParquetError {
    ParquetError::General(format!(
        "stored file {path} is not the file the enclave wrote: {what}"
    ))
}

/// The hashes the footer lists, by the offset of each column chunk: (length, hash).
pub(super) type Chunks = BTreeMap<u64, (u64, [u8; 32])>;

/// Reads the footer of the file at `path`, checks it against `file` as the module says, and
/// gives its metadata (decrypted with the file's key) and its column chunks' hashes.
pub(super) async fn open(
    store: &dyn ObjectStore,
    path: &Path,
    file: &FileKey,
) -> Result<(Arc<ParquetMetaData>, Arc<Chunks>), ParquetError> {
    let size = file.written.bytes;
    let fetch = |range: Range<u64>| async move {
        let got = store
            .get_opts(
                path,
                GetOptions {
                    range: Some(GetRange::Bounded(range)),
                    ..GetOptions::default()
                },
            )
            .await
            .map_err(|e| ParquetError::External(Box::new(e)))?;
        let object = got.meta.size;
        let bytes = got
            .bytes()
            .await
            .map_err(|e| ParquetError::External(Box::new(e)))?;
        Ok::<_, ParquetError>((object, bytes))
    };
    if size < 12 {
        return Err(not_written(path, "it is too small"));
    }
    let hint = size - size.min(FOOTER_HINT)..size;
    let (object, mut tail) = fetch(hint.clone()).await?;
    if object != size || tail.len() as u64 != hint.end - hint.start {
        return Err(not_written(path, "its size is not the size written"));
    }
    let end = &tail[tail.len() - 8..];
    if &end[4..] != b"PARE" {
        return Err(not_written(path, "its footer is not encrypted"));
    }
    let footer = u64::from(u32::from_le_bytes(end[..4].try_into().expect("4 bytes"))) + 8;
    if footer + 4 > size {
        return Err(not_written(path, "its footer's length is impossible"));
    }
    if footer > tail.len() as u64 {
        let (object, bytes) = fetch(size - footer..size).await?;
        if object != size || bytes.len() as u64 != footer {
            return Err(not_written(path, "its size is not the size written"));
        }
        tail = bytes;
    }
    let footer_bytes = tail.slice(tail.len() - footer as usize..);
    let hash = kura_crypto::sha256(&footer_bytes);
    if hash != file.written.footer_sha256 {
        return Err(not_written(path, "its footer is not the one written"));
    }
    let mut reader = ParquetMetaDataReader::new().with_decryption_properties(Some(
        super::decryption(&file.key, &file.aad)
            .map_err(|e| ParquetError::General(e.to_string()))?,
    ));
    reader.try_parse_sized(&footer_bytes, size)?;
    let metadata = reader.finish()?;
    let chunks = chunk_hashes(path, &metadata)?;
    Ok((Arc::new(metadata), Arc::new(chunks)))
}

/// The column chunks of `metadata` and the hashes its footer lists for them, in the order
/// written (row group by row group, column by column); every chunk must be encrypted.
fn chunk_hashes(path: &Path, metadata: &ParquetMetaData) -> Result<Chunks, ParquetError> {
    let listed = metadata
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|k| k.key == CHUNKS_KEY))
        .and_then(|k| k.value.as_deref())
        .and_then(|v| hex::decode(v).ok())
        .ok_or_else(|| not_written(path, "its footer lists no column chunk hashes"))?;
    let mut hashes = listed.chunks_exact(32);
    let mut chunks = Chunks::new();
    for group in metadata.row_groups() {
        for column in group.columns() {
            if column.crypto_metadata().is_none() {
                return Err(not_written(path, "a column chunk is not encrypted"));
            }
            let hash = hashes
                .next()
                .ok_or_else(|| not_written(path, "a column chunk has no hash"))?;
            let (start, len) = column.byte_range();
            chunks.insert(start, (len, hash.try_into().expect("32 bytes")));
        }
    }
    if hashes.next().is_some() || listed.len() % 32 != 0 {
        return Err(not_written(path, "its footer lists other column chunks"));
    }
    Ok(chunks)
}

/// The hashes of a file's column chunks, for its footer: of the bytes `from` (the file's
/// bytes from `offset` on) of each column chunk of `groups`.
pub(super) fn hash_chunks(
    groups: &[datafusion::parquet::file::metadata::RowGroupMetaData],
    bytes: &[u8],
    offset: u64,
    out: &mut Vec<u8>,
) -> Result<u64, ParquetError> {
    let mut end = offset;
    for group in groups {
        for column in group.columns() {
            let (start, len) = column.byte_range();
            let at = start
                .checked_sub(offset)
                .and_then(|s| usize::try_from(s).ok())
                .filter(|s| s + len as usize <= bytes.len())
                .ok_or_else(|| ParquetError::General("a column chunk was not retained".into()))?;
            out.extend_from_slice(&kura_crypto::sha256(&bytes[at..at + len as usize]));
            end = end.max(start + len);
        }
    }
    Ok(end)
}

/// The hash a reader checks of a file whose last bytes are `tail` (at least the footer, its
/// length and the magic).
pub(super) fn footer_hash(tail: &[u8]) -> Result<[u8; 32], ParquetError> {
    let short = || ParquetError::General("the footer was not retained".into());
    let end = tail.len().checked_sub(8).ok_or_else(short)?;
    let length = u32::from_le_bytes(tail[end..end + 4].try_into().expect("4 bytes")) as usize;
    let start = end.checked_sub(length).ok_or_else(short)?;
    Ok(kura_crypto::sha256(&tail[start..]))
}

/// The footer entry listing `hashes`.
pub(super) fn chunks_entry(hashes: &[u8]) -> KeyValue {
    KeyValue::new(CHUNKS_KEY.to_string(), hex::encode(hashes))
}

/// What one scan has read of one stored file, and what it needs to read the rest.
///
/// Which parts of a file a scan fetches is the host's to see, so it must not depend on the
/// data. Pruning is off and nothing is pushed into a scan at run time, but a scan's consumer
/// can still stop early: a hash join whose build side is empty never polls its probe side,
/// a `LIMIT` stops once it has its rows, an error stops everything. So each scan records the
/// column chunks it served here (one record per file, shared by the readers of its byte
/// ranges, attached to the scan's [`PartitionedFile`]), and once its run ends, whatever the
/// end, [`read_through`] fetches and checks the rest: every run reads every projected column
/// chunk of every file its plan names, each checked against its hash.
pub(super) struct Served {
    store: Arc<dyn ObjectStore>,
    path: Path,
    file: FileKey,
    state: Mutex<ServedState>,
    /// Told whenever a chunk request settles.
    settled: tokio::sync::Notify,
}

type Opened = (Arc<ParquetMetaData>, Arc<Chunks>);

/// The footer's reading, spawned so that a reader dropped mid-way does not cut it short (and
/// no one asks for it again).
type Opening = Shared<BoxFuture<'static, Result<Opened, Arc<ParquetError>>>>;

#[derive(Default)]
struct ServedState {
    opening: Option<Opening>,
    /// The offsets of the column chunks asked for.
    asked: HashSet<u64>,
    /// Whether the run is over: from then on only [`read_through`] reads, and a reader still
    /// alive (a dropped scan's task) asks for nothing.
    ended: bool,
    /// Chunk requests under way, and the first that failed its check.
    inflight: usize,
    failed: Option<String>,
}

impl std::fmt::Debug for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Served")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Served {
    pub(super) fn new(store: Arc<dyn ObjectStore>, path: Path, file: FileKey) -> Arc<Self> {
        Arc::new(Self {
            store,
            path,
            file,
            state: Mutex::default(),
            settled: tokio::sync::Notify::new(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ServedState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The file's footer, read and checked ([`open`]) once per scan.
    async fn opened(&self) -> Result<Opened, ParquetError> {
        let opening = self
            .state()
            .opening
            .get_or_insert_with(|| {
                let (store, path, file) =
                    (self.store.clone(), self.path.clone(), self.file.clone());
                let task = tokio::spawn(async move {
                    open(store.as_ref(), &path, &file).await.map_err(Arc::new)
                });
                async move {
                    task.await.unwrap_or_else(|_| {
                        Err(Arc::new(ParquetError::General(
                            "a footer read failed".into(),
                        )))
                    })
                }
                .boxed()
                .shared()
            })
            .clone();
        opening.await.map_err(|e| match e.as_ref() {
            ParquetError::General(message) => ParquetError::General(message.clone()),
            other => ParquetError::General(other.to_string()),
        })
    }

    /// Fetches the column chunk at `chunk` for a reader of the scan. Once asked for, the
    /// request runs to its end on a task of its own, whether or not the reader still waits
    /// for it (its scan dropped by a `LIMIT`, an empty join side, an error): a request cut
    /// short would show where the run stopped, by being missing or by being asked again. Once
    /// the run is over, nothing.
    async fn fetch(
        self: &Arc<Self>,
        chunks: Arc<Chunks>,
        chunk: Range<u64>,
    ) -> Result<Bytes, ParquetError> {
        {
            let mut state = self.state();
            if state.ended {
                return Err(ParquetError::General(format!(
                    "the scan of stored file {} has ended",
                    self.path
                )));
            }
            state.asked.insert(chunk.start);
            state.inflight += 1;
        }
        let (answer, answered) = tokio::sync::oneshot::channel();
        let served = self.clone();
        tokio::spawn(async move {
            let got = served.checked(&chunks, chunk).await;
            {
                let mut state = served.state();
                state.inflight -= 1;
                if let Err(e) = &got {
                    state.failed.get_or_insert_with(|| e.to_string());
                }
            }
            served.settled.notify_waiters();
            let _ = answer.send(got);
        });
        answered
            .await
            .map_err(|_| ParquetError::General("a column chunk read was lost".into()))?
    }

    /// Waits until no chunk request of a reader is under way; the first that failed its check.
    async fn settle(&self) -> Result<(), ParquetError> {
        loop {
            let settled = self.settled.notified();
            {
                let mut state = self.state();
                state.ended = true;
                if state.inflight == 0 {
                    return match &state.failed {
                        Some(e) => Err(ParquetError::General(e.clone())),
                        None => Ok(()),
                    };
                }
            }
            settled.await;
        }
    }

    /// The column chunk at `chunk`, checked for its length and hash: a store that answers
    /// with fewer (or more) bytes than asked is refused, not sliced.
    async fn checked(&self, chunks: &Chunks, chunk: Range<u64>) -> Result<Bytes, ParquetError> {
        let bytes = self
            .store
            .get_range(&self.path, chunk.clone())
            .await
            .map_err(|e| ParquetError::External(Box::new(e)))?;
        let (_, hash) = chunks[&chunk.start];
        if bytes.len() as u64 != chunk.end - chunk.start || kura_crypto::sha256(&bytes) != hash {
            return Err(not_written(
                &self.path,
                "a column chunk is not the one written",
            ));
        }
        Ok(bytes)
    }

    /// Reads what the scan has not of the leaf columns under `columns` (the file's top-level
    /// columns the scan projects or filters on), in every row group.
    async fn rest(&self, columns: &HashSet<String>) -> Result<(), ParquetError> {
        let (metadata, chunks) = self.opened().await?;
        // The readers' requests first: each is checked, even if no reader waited for it.
        self.settle().await?;
        let schema = metadata.file_metadata().schema_descr();
        let roots = schema.root_schema().get_fields();
        let leaves: Vec<usize> = (0..schema.num_columns())
            .filter(|&leaf| columns.contains(roots[schema.get_column_root_idx(leaf)].name()))
            .collect();
        let missing: Vec<Range<u64>> = {
            let mut state = self.state();
            let missing: Vec<Range<u64>> = metadata
                .row_groups()
                .iter()
                .flat_map(|group| leaves.iter().map(|&leaf| group.column(leaf).byte_range()))
                .filter(|(start, _)| !state.asked.contains(start))
                .map(|(start, len)| start..start + len)
                .collect();
            state.asked.extend(missing.iter().map(|c| c.start));
            missing
        };
        // A few at a time, each dropped once checked: the rest is read, not held.
        futures_util::stream::iter(missing)
            .map(|chunk| self.checked(&chunks, chunk))
            .buffer_unordered(4)
            .try_for_each(|_| futures_util::future::ready(Ok(())))
            .await
    }
}

/// Reads, for every scan of a stored file in `plan` (which has run, to its end or not), the
/// column chunks it did not ([`Served`]); a chunk that is not the one written fails it.
pub async fn read_through(plan: &Arc<dyn ExecutionPlan>) -> datafusion::error::Result<()> {
    let mut scans: Vec<(Arc<Served>, HashSet<String>)> = Vec::new();
    plan.apply(|node| {
        let Some(config) = node
            .downcast_ref::<DataSourceExec>()
            .and_then(|exec| exec.data_source().downcast_ref::<FileScanConfig>())
        else {
            return Ok(TreeNodeRecursion::Continue);
        };
        let fields = config.file_schema().fields();
        let source = config.file_source();
        let mut indices: Vec<usize> = match source.projection() {
            Some(projection) => projection.column_indices(),
            None => (0..fields.len()).collect(),
        };
        if let Some(filter) = source.filter() {
            indices.extend(collect_columns(&filter).iter().map(|c| c.index()));
        }
        let columns: HashSet<String> = indices
            .into_iter()
            .filter_map(|i| fields.get(i).map(|f| f.name().clone()))
            .collect();
        for file in config.file_groups.iter().flat_map(|g| g.files()) {
            if let Some(served) = file.extension::<Arc<Served>>() {
                match scans.iter_mut().find(|(s, _)| Arc::ptr_eq(s, served)) {
                    Some((_, known)) => known.extend(columns.iter().cloned()),
                    None => scans.push((served.clone(), columns.clone())),
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    for (served, columns) in &scans {
        served.rest(columns).await?;
    }
    Ok(())
}

/// The reader of one stored file in a scan.
pub(super) struct Reader {
    served: Arc<Served>,
    /// The scan's count of bytes read (`bytes_scanned`).
    scanned: datafusion::physical_plan::metrics::Count,
}

impl Reader {
    /// `ranges`, each served from the whole column chunk it lies in, whose hash is checked.
    async fn read(&mut self, ranges: Vec<Range<u64>>) -> Result<Vec<Bytes>, ParquetError> {
        let (_, chunks) = self.served.opened().await?;
        let mut wanted: Vec<Range<u64>> = Vec::new();
        let mut within = Vec::with_capacity(ranges.len());
        for range in &ranges {
            let (start, (len, _)) = chunks
                .range(..=range.start)
                .next_back()
                .filter(|(start, (len, _))| range.end <= **start + *len)
                .ok_or_else(|| {
                    not_written(&self.served.path, "a read outside its column chunks")
                })?;
            let chunk = *start..*start + *len;
            let index = match wanted.iter().position(|w| *w == chunk) {
                Some(i) => i,
                None => {
                    wanted.push(chunk);
                    wanted.len() - 1
                }
            };
            within.push((index, range.start - start, range.end - start));
        }
        // One request per chunk.
        let fetched = futures_util::future::try_join_all(
            wanted
                .iter()
                .map(|chunk| self.served.fetch(chunks.clone(), chunk.clone())),
        )
        .await?;
        for bytes in &fetched {
            self.scanned.add(bytes.len());
        }
        Ok(within
            .into_iter()
            .map(|(i, from, to)| fetched[i].slice(from as usize..to as usize))
            .collect())
    }
}

impl AsyncFileReader for Reader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, Result<Bytes, ParquetError>> {
        async move { Ok(self.read(vec![range]).await?.remove(0)) }.boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, Result<Vec<Bytes>, ParquetError>> {
        self.read(ranges).boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, Result<Arc<ParquetMetaData>, ParquetError>> {
        async move { Ok(self.served.opened().await?.0) }.boxed()
    }
}

/// Makes a [`Reader`] for each stored file a scan opens, from the file's [`Served`] record.
#[derive(Debug)]
pub(super) struct Factory;

impl ParquetFileReaderFactory for Factory {
    fn create_reader(
        &self,
        partition_index: usize,
        file: PartitionedFile,
        _metadata_size_hint: Option<usize>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> datafusion::common::Result<Box<dyn AsyncFileReader + Send>> {
        let path = file.object_meta.location.clone();
        let served = file.extension::<Arc<Served>>().cloned().ok_or_else(|| {
            datafusion::error::DataFusionError::Execution(format!("no key for stored file {path}"))
        })?;
        let scanned = datafusion::datasource::physical_plan::parquet::ParquetFileMetrics::new(
            partition_index,
            path.as_ref(),
            metrics,
        )
        .bytes_scanned;
        Ok(Box::new(Reader { served, scanned }))
    }
}
