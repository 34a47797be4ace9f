//! Datasets at rest: encrypted Parquet files in object storage, read by the queries that need
//! them instead of held decoded in memory.
//!
//! Each batch of a dataset (one upload) is one file, written by the enclave with Parquet
//! modular encryption (AES-256-GCM, footer and every column encrypted with the file's own key,
//! and an AAD prefix naming the file, which is not stored in it). The key never reaches the
//! store: the caller keeps it, sealed to whoever must be able to release it again. A query
//! reads only the columns it needs, but every chunk of them, whatever its filters and however
//! it stops ([`read_through`]): which parts of a file are fetched is the host's to see, and must
//! not depend on the data. What it reads is authenticated module by module, so a changed,
//! truncated or swapped file fails the query instead of answering it.
//!
//! Encryption alone does not make a file the enclave's: the Parquet reader accepts a plaintext
//! footer even when handed decryption properties, and a file's key is known to its provider.
//! So the writer records what it wrote ([`Written`]: the size, and a hash of the footer, which
//! lists a hash of every column chunk), the upload's log entry keeps it, and every read is
//! checked against it in one place, [`verified`]: the footer must be encrypted and hash to
//! the value recorded, and every column chunk read must hash to the value its footer lists.
//!
//! [`FileWriter`] writes a batch; [`StoredFile::open`] checks one (size, footer, key, AAD,
//! schema) and reads what the planner needs from its footer; [`Stored`] is a dataset's files,
//! registered in a session as a table whose every file is named, so a file the host hides
//! fails the run rather than shrinking its input; each scan reads through [`verified`]'s
//! reader, in this process or on an executor.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::Session;
use datafusion::common::config::{EncryptionFactoryOptions, TableParquetOptions};
use datafusion::common::stats::Precision;
use datafusion::common::{Statistics, not_impl_err};
use datafusion::datasource::TableProvider;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{
    FileGroup, FileScanConfig, FileScanConfigBuilder, ParquetSource,
};
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::parquet_encryption::EncryptionFactory;
use datafusion::logical_expr::{Expr, TableType};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use datafusion::parquet::encryption::decrypt::FileDecryptionProperties;
use datafusion::parquet::encryption::encrypt::FileEncryptionProperties;
use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties};
use datafusion::physical_plan::ExecutionPlan;
use kura_contract::Dataset;
use kura_crypto::DataKey;
use object_store::ObjectStore;
use object_store::path::Path;
use tokio::io::AsyncWriteExt;
use zeroize::{Zeroize, Zeroizing};

use crate::EngineError;

#[cfg(any(test, feature = "golden"))]
pub mod recording;
mod verified;
pub use verified::{Written, read_through};

/// Rows per row group of a stored file: the unit a filter can skip. Smaller groups prune
/// more finely but carry more metadata and compress less.
pub const ROW_GROUP_ROWS: usize = 128 * 1024;

/// What the writer hands the store at a time (object stores upload in parts of at least 5 MiB).
const UPLOAD_PART: usize = 8 << 20;

/// Writes one batch of a dataset as an encrypted Parquet file, from a blocking thread (it
/// waits on the store through `handle`). Nothing is visible in the store until [`finish`]
/// completes; [`abort`] (or dropping the writer) leaves nothing behind but, on a local store,
/// a staging file of ciphertext under a key that dies with the writer.
///
/// [`finish`]: FileWriter::finish
/// [`abort`]: FileWriter::abort
pub struct FileWriter {
    writer: ArrowWriter<Upload>,
    rows: u64,
    /// The row groups whose column chunks are hashed, and their hashes, in order.
    hashed: usize,
    hashes: Vec<u8>,
}

impl std::fmt::Debug for FileWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWriter")
            .field("path", &self.writer.inner().path)
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

/// The object being uploaded, fed by the Parquet writer.
struct Upload {
    handle: tokio::runtime::Handle,
    path: Path,
    sink: object_store::buffered::BufWriter,
    pending: Vec<u8>,
    written: u64,
    /// The bytes from `retained_from` on, kept until the column chunks in them are hashed.
    retained: Vec<u8>,
    retained_from: u64,
}

impl Upload {
    fn flush_pending(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let part = std::mem::take(&mut self.pending);
        self.handle.block_on(self.sink.write_all(&part))
    }
}

impl Write for Upload {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.pending.extend_from_slice(buf);
        self.retained.extend_from_slice(buf);
        self.written += buf.len() as u64;
        if self.pending.len() >= UPLOAD_PART {
            self.flush_pending()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        // Parts go out when they are full, and the rest at the end: nothing to do here.
        Ok(())
    }
}

fn storage(e: impl std::fmt::Display) -> EngineError {
    EngineError::Storage(e.to_string())
}

impl FileWriter {
    /// A new file at `path` in `store`, of record batches of `schema`, encrypted under `key`
    /// with `aad` as the AAD prefix (which a reader must supply: it is not stored).
    pub fn create(
        handle: tokio::runtime::Handle,
        store: Arc<dyn ObjectStore>,
        path: Path,
        schema: SchemaRef,
        key: &DataKey,
        aad: &[u8],
    ) -> Result<Self, EngineError> {
        let encryption = FileEncryptionProperties::builder(key.as_bytes().to_vec())
            .with_aad_prefix(aad.to_vec())
            .with_aad_prefix_storage(false)
            .build()
            .map_err(storage)?;
        // Row-group statistics are what pruning reads; page-level ones (and the page index)
        // would cost the writer more than they save a scan of row groups this small.
        let properties = WriterProperties::builder()
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .set_statistics_enabled(EnabledStatistics::Chunk)
            .set_offset_index_disabled(true)
            .with_file_encryption_properties(encryption)
            .build();
        let upload = Upload {
            handle,
            sink: object_store::buffered::BufWriter::with_capacity(
                store,
                path.clone(),
                UPLOAD_PART,
            ),
            path,
            pending: Vec::with_capacity(UPLOAD_PART),
            written: 0,
            retained: Vec::new(),
            retained_from: 0,
        };
        let writer = ArrowWriter::try_new(upload, schema, Some(properties)).map_err(storage)?;
        Ok(Self {
            writer,
            rows: 0,
            hashed: 0,
            hashes: Vec::new(),
        })
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), EngineError> {
        self.rows += batch.num_rows() as u64;
        self.writer.write(batch).map_err(storage)?;
        self.hash_flushed()
    }

    /// Hashes the column chunks of the row groups written since the last call, and lets go of
    /// their bytes.
    fn hash_flushed(&mut self) -> Result<(), EngineError> {
        if self.writer.flushed_row_groups().len() == self.hashed {
            return Ok(());
        }
        // The row groups' bytes pass through the writer's own buffer first.
        self.writer.sync().map_err(storage)?;
        let groups = &self.writer.flushed_row_groups()[self.hashed..];
        let upload = self.writer.inner();
        let end = verified::hash_chunks(
            groups,
            &upload.retained,
            upload.retained_from,
            &mut self.hashes,
        )
        .map_err(storage)?;
        self.hashed += groups.len();
        let upload = self.writer.inner_mut();
        let done = usize::try_from(end - upload.retained_from).map_err(storage)?;
        upload.retained.drain(..done);
        upload.retained_from = end;
        Ok(())
    }

    /// Writes the footer, which lists the column chunks' hashes, and completes the object.
    /// Returns what was written: the size, and the footer's hash.
    pub fn finish(mut self) -> Result<Written, EngineError> {
        self.writer.flush().map_err(storage)?;
        self.hash_flushed()?;
        self.writer
            .append_key_value_metadata(verified::chunks_entry(&self.hashes));
        let mut upload = self.writer.into_inner().map_err(storage)?;
        upload.flush_pending().map_err(storage)?;
        let footer_sha256 = verified::footer_hash(&upload.retained).map_err(storage)?;
        let Upload {
            handle,
            mut sink,
            written,
            ..
        } = upload;
        handle.block_on(sink.shutdown()).map_err(storage)?;
        Ok(Written {
            bytes: written,
            footer_sha256,
        })
    }

    /// Gives the file up: the object is never completed.
    pub fn abort(self) {
        if let Ok(upload) = self.writer.into_inner() {
            let Upload {
                handle, mut sink, ..
            } = upload;
            let _ = handle.block_on(sink.abort());
        }
    }
}

/// One stored file of a dataset, checked against its key: what a query needs to read it.
pub struct StoredFile {
    pub path: Path,
    pub rows: u64,
    file: FileKey,
    /// The columns of the file (the dataset's kept columns), each marked nullable only if the
    /// file holds a null in it.
    schema: SchemaRef,
}

impl std::fmt::Debug for StoredFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredFile")
            .field("path", &self.path)
            .field("size", &self.file.written.bytes)
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

fn decryption(key: &DataKey, aad: &[u8]) -> Result<Arc<FileDecryptionProperties>, EngineError> {
    FileDecryptionProperties::builder(key.as_bytes().to_vec())
        .with_aad_prefix(aad.to_vec())
        .build()
        .map_err(storage)
}

impl StoredFile {
    /// Reads and authenticates the footer of the file at `path` with `key` and `aad`, checks
    /// it against what was `written` ([`verified`]), and checks that it holds columns of
    /// `dataset` in their declared types. A wrong key, a file of another batch or a plaintext
    /// one, a changed, truncated, extended or missing object are refused here.
    pub async fn open(
        store: Arc<dyn ObjectStore>,
        path: Path,
        written: Written,
        key: DataKey,
        aad: Vec<u8>,
        dataset: &Dataset,
    ) -> Result<Self, EngineError> {
        let refused = |e: &dyn std::fmt::Display| {
            EngineError::Storage(format!(
                "stored file {path} of dataset {:?} could not be read and opened with its key: {e}",
                dataset.name
            ))
        };
        let file = FileKey {
            key: Arc::new(key),
            aad,
            written,
        };
        let (parquet, _) = verified::open(store.as_ref(), &path, &file)
            .await
            .map_err(|e| refused(&e))?;
        let metadata = ArrowReaderMetadata::try_new(
            parquet,
            ArrowReaderOptions::new().with_skip_arrow_metadata(true),
        )
        .map_err(|e| refused(&e))?;
        let declared = crate::load::arrow_schema(dataset);
        let parquet = metadata.metadata();
        let mut fields = Vec::new();
        for (i, field) in metadata.schema().fields().iter().enumerate() {
            let wanted = declared.field_with_name(field.name()).map_err(|_| {
                EngineError::Storage(format!(
                    "stored file {path} has a column the dataset {:?} does not declare",
                    dataset.name
                ))
            })?;
            let declared_type = dataset
                .column(field.name())
                .map(|c| c.ty)
                .expect("the field is declared");
            if !crate::load::compatible(field.data_type(), declared_type) {
                return Err(EngineError::Storage(format!(
                    "stored file {path}: column {:?} is not of its declared type",
                    field.name()
                )));
            }
            let nulls = parquet.row_groups().iter().try_fold(0u64, |n, rg| {
                rg.column(i)
                    .statistics()
                    .and_then(|s| s.null_count_opt())
                    .map(|c| n + c)
            });
            fields.push(Field::new(
                field.name(),
                wanted.data_type().clone(),
                nulls != Some(0),
            ));
        }
        Ok(Self {
            path,
            rows: u64::try_from(parquet.file_metadata().num_rows()).unwrap_or(0),
            file,
            schema: Arc::new(Schema::new(fields)),
        })
    }
}

/// A dataset's stored files, all in one store.
#[derive(Debug, Clone)]
pub struct Stored {
    pub store: Arc<dyn ObjectStore>,
    pub files: Vec<Arc<StoredFile>>,
    /// How another process of this contract (a cluster's executor) reaches the store: the
    /// service's description, opaque here, which may hold a provider's credentials. `None`:
    /// the files can be read in this process only.
    pub origin: Option<Arc<Zeroizing<String>>>,
}

impl Stored {
    /// The table's schema: the files' columns, nullable where any file holds a null.
    pub(crate) fn schema(&self) -> Option<SchemaRef> {
        let first = self.files.first()?;
        let fields = first
            .schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let nullable = self
                    .files
                    .iter()
                    .any(|file| file.schema.fields().get(i).is_none_or(|g| g.is_nullable()));
                Arc::new(f.as_ref().clone().with_nullable(nullable))
            })
            .collect::<Vec<_>>();
        Some(Arc::new(Schema::new(fields)))
    }

    /// The table of this dataset, reading through `url` (the session registers `store` under
    /// it). Every file of the dataset must have the same columns.
    pub(crate) fn table(
        &self,
        url: ObjectStoreUrl,
        dataset: &Dataset,
    ) -> Result<Arc<dyn TableProvider>, EngineError> {
        let schema = self
            .schema()
            .ok_or_else(|| EngineError::MissingData(vec![dataset.name.clone()]))?;
        if let Some(odd) = self.files.iter().find(|f| {
            f.schema.fields().len() != schema.fields().len()
                || f.schema
                    .fields()
                    .iter()
                    .zip(schema.fields())
                    .any(|(a, b)| a.name() != b.name())
        }) {
            return Err(EngineError::Storage(format!(
                "stored file {} of dataset {:?} has other columns than the rest",
                odd.path, dataset.name
            )));
        }
        Ok(Arc::new(StoredTable {
            schema,
            url,
            files: self.files.clone(),
            keys: self.keys(),
        }))
    }

    fn keys(&self) -> Arc<Keys> {
        Arc::new(Keys(
            self.files
                .iter()
                .map(|f| (f.path.to_string(), f.file.clone()))
                .collect(),
        ))
    }

    /// What another process needs to read this dataset's files, if it can: where they are and
    /// each file's key. It must travel only to an attested enclave of this contract, over a
    /// channel bound to its evidence.
    pub fn access(&self) -> Option<Access> {
        let origin = self.origin.clone()?;
        Some(Access {
            origin,
            keys: self.keys(),
        })
    }
}

/// The key and AAD of one stored file, and what the enclave wrote there.
#[derive(Clone)]
struct FileKey {
    key: Arc<DataKey>,
    aad: Vec<u8>,
    written: Written,
}

/// The decryption keys of one table's files, by path, handed to the Parquet reader.
struct Keys(HashMap<String, FileKey>);

/// What a process needs to read a stored dataset: the store's origin (see [`Stored::origin`])
/// and each file's key. Its wire form ([`Access::to_wire`]) is secret.
#[derive(Clone)]
pub struct Access {
    pub origin: Arc<Zeroizing<String>>,
    keys: Arc<Keys>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("files", &self.keys.0.len())
            .finish_non_exhaustive()
    }
}

/// [`Access`] on the wire (by path: the hex key and AAD, the size and the footer's hash).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AccessWire {
    origin: String,
    files: Vec<(String, String, String, u64, String)>,
}

impl Drop for AccessWire {
    fn drop(&mut self) {
        self.origin.zeroize();
        for (_, key, ..) in &mut self.files {
            key.zeroize();
        }
    }
}

impl Access {
    /// The secret wire form, zeroized when dropped.
    pub fn to_wire(&self) -> Zeroizing<Vec<u8>> {
        let wire = AccessWire {
            origin: self.origin.as_str().to_owned(),
            files: self
                .keys
                .0
                .iter()
                .map(|(path, k)| {
                    (
                        path.clone(),
                        hex::encode(k.key.as_bytes()),
                        hex::encode(&k.aad),
                        k.written.bytes,
                        hex::encode(k.written.footer_sha256),
                    )
                })
                .collect(),
        };
        Zeroizing::new(serde_json::to_vec(&wire).expect("strings serialize"))
    }

    pub fn from_wire(bytes: &[u8]) -> Result<Self, EngineError> {
        let bad = || EngineError::Storage("the keys of a stored dataset arrived malformed".into());
        let wire: AccessWire = serde_json::from_slice(bytes).map_err(|_| bad())?;
        let mut files = HashMap::new();
        for (path, key, aad, bytes, footer) in &wire.files {
            let key = Zeroizing::new(hex::decode(key).map_err(|_| bad())?);
            let key = DataKey::from_bytes(&key).map_err(|_| bad())?;
            let aad = hex::decode(aad).map_err(|_| bad())?;
            let footer_sha256 = hex::decode(footer)
                .ok()
                .and_then(|h| <[u8; 32]>::try_from(h).ok())
                .ok_or_else(bad)?;
            files.insert(
                path.clone(),
                FileKey {
                    key: Arc::new(key),
                    aad,
                    written: Written {
                        bytes: *bytes,
                        footer_sha256,
                    },
                },
            );
        }
        Ok(Self {
            origin: Arc::new(Zeroizing::new(wire.origin.clone())),
            keys: Arc::new(Keys(files)),
        })
    }

    /// `scan` (a scan of this dataset's files, decoded without its keys) reading them from
    /// `store` with their keys.
    pub fn attach(
        &self,
        scan: &DataSourceExec,
        store: Arc<dyn ObjectStore>,
    ) -> Result<Arc<dyn ExecutionPlan>, EngineError> {
        let config = scan
            .data_source()
            .downcast_ref::<FileScanConfig>()
            .ok_or_else(|| EngineError::Execution("not a scan of stored files".into()))?;
        let source = config
            .file_source()
            .downcast_ref::<ParquetSource>()
            .ok_or_else(|| EngineError::Execution("not a scan of stored files".into()))?
            .clone()
            .with_parquet_file_reader_factory(Arc::new(verified::Factory))
            .with_encryption_factory(self.keys.clone());
        // One record of what is read per file, shared by the byte ranges it is split into.
        let mut served: HashMap<Path, Arc<verified::Served>> = HashMap::new();
        let mut groups = Vec::with_capacity(config.file_groups.len());
        for group in &config.file_groups {
            let mut files = Vec::with_capacity(group.len());
            for file in group.iter() {
                let path = file.object_meta.location.clone();
                let key = self.keys.0.get(path.as_ref()).ok_or_else(|| {
                    EngineError::Execution(format!("no key for stored file {path}"))
                })?;
                let record = served
                    .entry(path.clone())
                    .or_insert_with(|| verified::Served::new(store.clone(), path, key.clone()))
                    .clone();
                files.push(file.clone().with_extension(record));
            }
            groups.push(FileGroup::new(files));
        }
        let config = FileScanConfigBuilder::from(config.clone())
            .with_source(Arc::new(source))
            .with_file_groups(groups)
            .build();
        Ok(DataSourceExec::from_data_source(config))
    }
}

/// The stored datasets a session reads, by the URL of their store (a config extension of the
/// session, for a cluster to find each scan's [`Access`]).
#[derive(Debug, Default)]
pub struct Scans(pub HashMap<String, Access>);

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("files", &self.0.len())
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl EncryptionFactory for Keys {
    async fn get_file_encryption_properties(
        &self,
        _config: &EncryptionFactoryOptions,
        _schema: &SchemaRef,
        _file_path: &Path,
    ) -> datafusion::error::Result<Option<Arc<FileEncryptionProperties>>> {
        not_impl_err!("queries do not write files")
    }

    async fn get_file_decryption_properties(
        &self,
        _config: &EncryptionFactoryOptions,
        file_path: &Path,
    ) -> datafusion::error::Result<Option<Arc<FileDecryptionProperties>>> {
        let file = self.0.get(file_path.as_ref()).ok_or_else(|| {
            datafusion::error::DataFusionError::Execution(format!(
                "no key for stored file {file_path}"
            ))
        })?;
        decryption(&file.key, &file.aad)
            .map(Some)
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))
    }
}

/// A stored dataset as a table: a scan of exactly its files (never a listing of the store,
/// which the host controls).
#[derive(Debug)]
struct StoredTable {
    schema: SchemaRef,
    url: ObjectStoreUrl,
    files: Vec<Arc<StoredFile>>,
    keys: Arc<Keys>,
}

#[async_trait::async_trait]
impl TableProvider for StoredTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let options = TableParquetOptions {
            global: state.config_options().execution.parquet.clone(),
            ..TableParquetOptions::default()
        };
        let store = state.runtime_env().object_store(&self.url)?;
        let source = ParquetSource::new(self.schema.clone())
            .with_table_parquet_options(options)
            .with_parquet_file_reader_factory(Arc::new(verified::Factory))
            .with_encryption_factory(self.keys.clone());
        // Files are spread over the partitions; DataFusion's planner may split a large one
        // further by byte range (`repartition_file_scans`, files over 10 MiB by default).
        let partitions = state.config().target_partitions().max(1);
        let mut groups = vec![Vec::new(); partitions.min(self.files.len()).max(1)];
        let n = groups.len();
        for (i, f) in self.files.iter().enumerate() {
            let served = verified::Served::new(store.clone(), f.path.clone(), f.file.clone());
            groups[i % n].push(
                PartitionedFile::new(f.path.to_string(), f.file.written.bytes)
                    .with_extension(served),
            );
        }
        let rows: u64 = self.files.iter().map(|f| f.rows).sum();
        let statistics = Statistics::new_unknown(&self.schema).with_num_rows(Precision::Inexact(
            usize::try_from(rows).unwrap_or(usize::MAX),
        ));
        let config = FileScanConfigBuilder::new(self.url.clone(), Arc::new(source))
            .with_file_groups(groups.into_iter().map(FileGroup::new).collect())
            .with_statistics(statistics)
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            .build();
        Ok(DataSourceExec::from_data_source(config))
    }
}

/// The URL under which a session registers the store of its `index`th stored dataset. Queries
/// cannot name URLs (no DDL), and the physical plan check admits file scans under this scheme
/// only.
pub const SCHEME: &str = "kura-stored";

pub(crate) fn url(index: usize) -> Result<ObjectStoreUrl, EngineError> {
    Ok(ObjectStoreUrl::parse(format!("{SCHEME}://d{index}"))?)
}

#[cfg(any(test, feature = "golden"))]
#[cfg_attr(not(test), allow(dead_code, unused_imports))]
pub(crate) mod tests {
    use super::*;
    use crate::{Table, Tables};
    use datafusion::arrow::compute::concat_batches;
    use kura_contract::Contract;

    /// The physical plan of `sql` in `ctx`.
    async fn physical(
        ctx: &datafusion::prelude::SessionContext,
        sql: &str,
    ) -> Arc<dyn ExecutionPlan> {
        ctx.sql(sql)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap()
    }

    /// One encrypted file of `batch` at `path` in `store`, opened again with its key.
    async fn write(
        store: &Arc<dyn ObjectStore>,
        path: &str,
        batch: RecordBatch,
        dataset: &Dataset,
    ) -> StoredFile {
        let key = DataKey::generate();
        let again = DataKey::from_bytes(key.as_bytes()).unwrap();
        let (s, p, aad) = (store.clone(), Path::from(path), path.as_bytes().to_vec());
        let written = tokio::task::spawn_blocking(move || {
            let handle = tokio::runtime::Handle::current();
            let mut w = FileWriter::create(handle, s, p, batch.schema(), &key, &aad)?;
            w.write(&batch)?;
            w.finish()
        })
        .await
        .unwrap()
        .unwrap();
        let aad = path.as_bytes().to_vec();
        StoredFile::open(
            store.clone(),
            Path::from(path),
            written,
            again,
            aad,
            dataset,
        )
        .await
        .unwrap()
    }

    /// `held` as the service's store would keep it, in a local store over `dir`: each dataset
    /// in two encrypted files (two batches), opened again with their keys.
    pub(crate) async fn at_rest(
        contract: &Contract,
        held: &Tables,
        dir: &std::path::Path,
    ) -> Tables {
        let store: Arc<dyn ObjectStore> =
            Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir).unwrap());
        let mut out = Tables::new();
        for (name, table) in held {
            let dataset = contract.dataset(name).unwrap();
            let batches = table.batches();
            let all = concat_batches(&batches[0].schema(), batches).unwrap();
            let half = all.num_rows() / 2;
            let mut files = Vec::new();
            for (i, part) in [all.slice(0, half), all.slice(half, all.num_rows() - half)]
                .into_iter()
                .enumerate()
            {
                let path = format!("kura/c/{name}/{i}.parquet");
                files.push(Arc::new(write(&store, &path, part, dataset).await));
            }
            out.insert(
                name.clone(),
                Table::Stored(Stored {
                    store: store.clone(),
                    files,
                    origin: None,
                }),
            );
        }
        out
    }

    /// A stored file is ciphertext: no value of the data appears in it, and it opens only with
    /// its own key and AAD; a changed or missing file fails the query that reads it, in words
    /// that quote nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stored_file_holds_no_value_opens_only_with_its_key_and_fails_when_changed() {
        let c = crate::golden::contract();
        let held = crate::golden::tables(&c);
        let dir = tempfile::tempdir().unwrap();
        let stored = at_rest(&c, &held, dir.path()).await;
        let sql = "SELECT age_band, COUNT(*) AS n FROM patients GROUP BY age_band";
        let answer = |t: &Tables| {
            let (c, t) = (c.clone(), t.clone());
            async move {
                let mut out = crate::run_query(&c, sql, &t, None).await?;
                out.rows.sort_by_key(|r| r[0].to_string());
                Ok::<_, EngineError>(out.rows)
            }
        };
        assert_eq!(answer(&stored).await.unwrap(), answer(&held).await.unwrap());

        let file = dir.path().join("kura/c/patients/0.parquet");
        let bytes = std::fs::read(&file).unwrap();
        for planted in ["pat0001", "north", "18-39"] {
            assert!(
                !bytes
                    .windows(planted.len())
                    .any(|w| w == planted.as_bytes()),
                "{planted} in the clear"
            );
        }
        let store: Arc<dyn ObjectStore> =
            Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        let path = Path::from("kura/c/patients/0.parquet");
        let patients = c.dataset("patients").unwrap();
        let Table::Stored(s) = &stored["patients"] else {
            unreachable!()
        };
        let written = s.files[0].file.written;
        let open = |key: DataKey, aad: &str| {
            StoredFile::open(
                store.clone(),
                path.clone(),
                written,
                key,
                aad.as_bytes().to_vec(),
                patients,
            )
        };
        let err = open(DataKey::generate(), path.as_ref()).await.unwrap_err();
        assert!(matches!(err, EngineError::Storage(_)), "{err}");
        let key = DataKey::from_bytes(s.files[0].file.key.as_bytes()).unwrap();
        // The right key, but the AAD of another batch: the file was swapped.
        let err = open(key, "kura/c/patients/1.parquet").await.unwrap_err();
        assert!(matches!(err, EngineError::Storage(_)), "{err}");

        // Bytes changed in the pages of the first columns (a column the query does not read is
        // not read, so not checked): the query fails, quoting nothing.
        let mut changed = bytes.clone();
        for i in (8..bytes.len() / 2).step_by(64) {
            changed[i] ^= 1;
        }
        std::fs::write(&file, &changed).unwrap();
        let err = answer(&stored).await.unwrap_err();
        assert!(
            matches!(err, EngineError::Runtime(m) if m.contains("a stored file")),
            "{err}"
        );
        // The file removed: the query fails rather than answer from the other batch alone.
        std::fs::remove_file(&file).unwrap();
        let err = answer(&stored).await.unwrap_err();
        assert!(
            matches!(err, EngineError::Runtime(m) if m.contains("a stored file")),
            "{err}"
        );
    }

    /// `bytes` (a stored file) with the first module of `column`'s first chunk decrypted and
    /// sealed again under the file's key, with the AAD Parquet gives it and a new nonce: the
    /// same length, and the same page once decrypted. The file's unique AAD part (8 bytes in the
    /// plaintext crypto metadata ahead of the footer) is found by trying each place it could be.
    #[cfg(test)]
    fn reencrypt_first_module(bytes: &[u8], file: &FileKey, column: &str) -> Vec<u8> {
        use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
        let mut reader = datafusion::parquet::file::metadata::ParquetMetaDataReader::new()
            .with_decryption_properties(Some(decryption(&file.key, &file.aad).unwrap()));
        reader
            .try_parse(&bytes::Bytes::copy_from_slice(bytes))
            .unwrap();
        let metadata = reader.finish().unwrap();
        let (j, chunk) = metadata.row_groups()[0]
            .columns()
            .iter()
            .enumerate()
            .find(|(_, c)| c.column_path().string() == column)
            .unwrap();
        let start = chunk.byte_range().0 as usize;
        let len = u32::from_le_bytes(bytes[start..start + 4].try_into().unwrap()) as usize;
        let module = &bytes[start + 4..start + 4 + len];
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, file.key.as_bytes()).unwrap());
        let footer = bytes.len()
            - 8
            - u32::from_le_bytes(bytes[bytes.len() - 8..bytes.len() - 4].try_into().unwrap())
                as usize;
        for unique in bytes[footer..].windows(8).take(200) {
            // A dictionary page header (module 5), or a data page header (4) with page 0.
            for suffix in [
                vec![5u8, 0, 0, j as u8, 0],
                vec![4u8, 0, 0, j as u8, 0, 0, 0],
            ] {
                let aad = [file.aad.as_slice(), unique, &suffix].concat();
                let mut sealed = module[12..].to_vec();
                let nonce = Nonce::try_assume_unique_for_key(&module[..12]).unwrap();
                let Ok(plain) = key.open_in_place(nonce, Aad::from(&aad), &mut sealed) else {
                    continue;
                };
                let mut plain = plain.to_vec();
                let mut fresh = [0u8; 12];
                fresh.copy_from_slice(&module[..12]);
                fresh[0] ^= 0xff;
                key.seal_in_place_append_tag(
                    Nonce::assume_unique_for_key(fresh),
                    Aad::from(&aad),
                    &mut plain,
                )
                .unwrap();
                let mut out = bytes.to_vec();
                out[start + 4..start + 16].copy_from_slice(&fresh);
                out[start + 16..start + 4 + len].copy_from_slice(&plain);
                assert_ne!(out, bytes);
                return out;
            }
        }
        panic!("the module's AAD was not found");
    }

    /// A plaintext Parquet file of `batch`, padded (in its footer's key-value metadata) to
    /// exactly `size` bytes: what a host that knows the columns can put where a batch was.
    #[cfg(test)]
    fn plaintext_of_size(batch: &RecordBatch, size: u64) -> Vec<u8> {
        use datafusion::parquet::file::metadata::KeyValue;
        let mut pad = 0usize;
        for _ in 0..20 {
            let mut out = Vec::new();
            let mut w = ArrowWriter::try_new(&mut out, batch.schema(), None).unwrap();
            w.write(batch).unwrap();
            w.append_key_value_metadata(KeyValue::new("pad".into(), "x".repeat(pad)));
            w.close().unwrap();
            match (out.len() as u64).cmp(&size) {
                std::cmp::Ordering::Equal => return out,
                std::cmp::Ordering::Less => pad += (size - out.len() as u64) as usize,
                std::cmp::Ordering::Greater => {
                    pad -= (out.len() as u64 - size).min(pad as u64) as usize
                }
            }
        }
        panic!("no plaintext file of {size} bytes");
    }

    /// What a host (or a provider, who holds the key) may put where a stored batch was is
    /// refused, both when the file is opened (at upload, or when its key is released after a
    /// restart) and when a query reads it: a plaintext file of the same columns and size; the
    /// file of another batch; the file truncated or extended; the file written again under the
    /// same key and AAD with other rows; and the first module of a column chunk decrypted and
    /// sealed again under the file's key and AAD (as its provider, who holds the key, could),
    /// which Parquet's own authentication accepts: only the chunk's hash in the footer tells.
    /// Every query fails in the fixed words.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_the_file_the_enclave_wrote_is_read() {
        let c = crate::golden::contract();
        let held = crate::golden::tables(&c);
        let dir = tempfile::tempdir().unwrap();
        let stored = at_rest(&c, &held, dir.path()).await;
        let sql = "SELECT age_band, COUNT(*) AS n FROM patients GROUP BY age_band";
        let answer = || {
            let (c, t) = (c.clone(), stored.clone());
            async move { crate::run_query(&c, sql, &t, None).await.map(|o| o.rows) }
        };
        answer().await.unwrap();
        let Table::Stored(s) = &stored["patients"] else {
            unreachable!()
        };
        let original = &s.files[0];
        let file = dir.path().join("kura/c/patients/0.parquet");
        let bytes = std::fs::read(&file).unwrap();
        let patients = c.dataset("patients").unwrap();
        let open = || {
            StoredFile::open(
                s.store.clone(),
                original.path.clone(),
                original.file.written,
                DataKey::from_bytes(original.file.key.as_bytes()).unwrap(),
                original.file.aad.clone(),
                patients,
            )
        };
        open().await.unwrap();

        let table = held["patients"].batches();
        let rows = concat_batches(&table[0].schema(), table).unwrap();
        let half = rows.slice(0, rows.num_rows() / 2);
        let other_batch = std::fs::read(dir.path().join("kura/c/patients/1.parquet")).unwrap();
        let mut extended = bytes.clone();
        extended.extend_from_slice(b"more");
        // The same rows but one, written again under the file's own key and AAD.
        let mut values: Vec<Option<i64>> = half
            .column_by_name("birth_year")
            .unwrap()
            .as_any()
            .downcast_ref::<datafusion::arrow::array::Int64Array>()
            .unwrap()
            .iter()
            .collect();
        values[3] = values[4];
        let mut columns = half.columns().to_vec();
        let at = half.schema().index_of("birth_year").unwrap();
        columns[at] = Arc::new(datafusion::arrow::array::Int64Array::from(values));
        let forged = RecordBatch::try_new(half.schema(), columns).unwrap();
        let rewritten = {
            let scratch = tempfile::tempdir().unwrap();
            let local: Arc<dyn ObjectStore> = Arc::new(
                object_store::local::LocalFileSystem::new_with_prefix(scratch.path()).unwrap(),
            );
            let key = DataKey::from_bytes(original.file.key.as_bytes()).unwrap();
            let aad = original.file.aad.clone();
            let forged = forged.clone();
            let l = local.clone();
            tokio::task::spawn_blocking(move || {
                let handle = tokio::runtime::Handle::current();
                let mut w = FileWriter::create(
                    handle,
                    l,
                    Path::from("f.parquet"),
                    forged.schema(),
                    &key,
                    &aad,
                )?;
                w.write(&forged)?;
                w.finish()
            })
            .await
            .unwrap()
            .unwrap();
            std::fs::read(scratch.path().join("f.parquet")).unwrap()
        };
        let reencrypted = reencrypt_first_module(&bytes, &original.file, "age_band");
        // The reader serves whole column chunks only: the writer keeps no page index, column
        // index or bloom filter, which a reader would fetch from outside them.
        let mut reader = datafusion::parquet::file::metadata::ParquetMetaDataReader::new()
            .with_decryption_properties(Some(
                decryption(&original.file.key, &original.file.aad).unwrap(),
            ));
        reader
            .try_parse(&bytes::Bytes::copy_from_slice(&bytes))
            .unwrap();
        for group in reader.finish().unwrap().row_groups() {
            for column in group.columns() {
                assert!(column.column_index_offset().is_none(), "{column:?}");
                assert!(column.offset_index_offset().is_none(), "{column:?}");
                assert!(column.bloom_filter_offset().is_none(), "{column:?}");
            }
        }
        for (what, forged) in [
            ("plaintext", plaintext_of_size(&half, bytes.len() as u64)),
            ("another batch's file", other_batch),
            ("truncated", bytes[..bytes.len() - 100].to_vec()),
            ("extended", extended),
            ("rewritten under its key", rewritten),
            ("a module sealed again under its key", reencrypted),
        ] {
            std::fs::write(&file, &forged).unwrap();
            let err = answer().await.unwrap_err();
            assert!(
                matches!(err, EngineError::Runtime(m) if m == crate::error::STORED_FILE_FAILED),
                "{what}: {err}"
            );
            if what != "a module sealed again under its key" {
                let refused = open().await.map(|_| ()).unwrap_err().to_string();
                assert!(
                    refused.contains("is not the file the enclave wrote"),
                    "{what}: {refused}"
                );
            }
        }
        std::fs::write(&file, &bytes).unwrap();
        answer().await.unwrap();
    }

    /// What a query fetches of a stored file does not depend on the data: a filter that only
    /// the last of three row groups can meet, and one that only the first can, read the same
    /// row groups (all of them) and the same number of bytes. Skipping row groups by their
    /// statistics would show the host, by which ranges were fetched, where the values lie.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_a_filter_reads_says_nothing_of_the_values() {
        use std::fmt::Write as _;
        let c = crate::golden::contract();
        let patients = c.dataset("patients").unwrap();
        let rows = 3 * ROW_GROUP_ROWS;
        let mut csv = String::from("patient_id,age_band,sex,region,birth_year,diabetes,bmi\n");
        for i in 0..rows {
            // `birth_year` rises with the row, so each row group holds a range of its own.
            writeln!(csv, "p{i},18-39,f,north,{i},false,20.5").unwrap();
        }
        let batches =
            crate::load::load(patients, crate::UploadFormat::Csv, csv.as_bytes()).unwrap();
        let all = concat_batches(&batches[0].schema(), &batches).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        let file = write(&store, "kura/c/patients/0.parquet", all, patients).await;
        let tables = Tables::from([(
            "patients".to_string(),
            Table::Stored(Stored {
                store,
                files: vec![Arc::new(file)],
                origin: None,
            }),
        )]);
        let ctx = crate::session(&c, &tables).unwrap();
        fn scanned(plan: &Arc<dyn ExecutionPlan>) -> (usize, usize) {
            if plan.name() == "DataSourceExec" {
                let m = plan.metrics().unwrap();
                return (
                    m.output_rows().unwrap(),
                    m.sum_by_name("bytes_scanned").unwrap().as_usize(),
                );
            }
            plan.children()
                .into_iter()
                .map(scanned)
                .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
        }
        let mut read = Vec::new();
        for (filter, want) in [
            (
                format!("birth_year >= {}", 2 * ROW_GROUP_ROWS),
                ROW_GROUP_ROWS,
            ),
            (format!("birth_year < {}", ROW_GROUP_ROWS), ROW_GROUP_ROWS),
            ("birth_year < 0".to_string(), 0),
        ] {
            let sql = format!("SELECT COUNT(*) AS n FROM patients WHERE {filter}");
            let plan = physical(&ctx, &sql).await;
            let out = datafusion::physical_plan::collect(plan.clone(), ctx.task_ctx())
                .await
                .unwrap();
            let n = out[0]
                .column(0)
                .as_any()
                .downcast_ref::<datafusion::arrow::array::Int64Array>()
                .unwrap()
                .value(0);
            assert_eq!(n as usize, want, "{filter}");
            read.push(scanned(&plan));
        }
        assert_eq!(read[0].0, rows, "rows the scan read");
        assert!(read[0].1 > 0);
        assert!(read.iter().all(|r| *r == read[0]), "{read:?}");
    }

    /// What a run fetches of the stored files is the same whether its join's build side is
    /// empty or not, whether its `LIMIT` is met at once or never, and whether it fails on a
    /// value or not: every scan is read to its end, whatever stops its consumer. (Before, an
    /// empty build side left the probe side's files unread, and a met limit stopped a scan.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_a_run_fetches_does_not_depend_on_where_it_stopped() {
        let c = crate::golden::contract();
        let held = crate::golden::tables(&c);
        let dir = tempfile::tempdir().unwrap();
        let mut tables = at_rest(&c, &held, dir.path()).await;
        // Once as the store answers, once with every request held back on its way (a host that
        // slows the store so that a run stops while requests are in flight).
        for delay in [0, 30] {
            let recording = Arc::new(recording::Recording::slow(
                Arc::new(
                    object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap(),
                ),
                std::time::Duration::from_millis(delay),
            ));
            fetches_do_not_depend_on_where_a_run_stopped(&c, &mut tables, recording).await;
        }
    }

    async fn fetches_do_not_depend_on_where_a_run_stopped(
        c: &Contract,
        tables: &mut Tables,
        recording: Arc<recording::Recording>,
    ) {
        for table in tables.values_mut() {
            if let Table::Stored(s) = table {
                s.store = recording.clone();
            }
        }
        let ctx = crate::session(c, tables).unwrap();
        // Each pair: the same plan, over rows that stop it early and rows that do not.
        let pairs = [
            (
                "SELECT COUNT(*) FROM patients p JOIN claims c ON p.patient_id = c.patient_id \
                 WHERE p.birth_year < {x}",
                ["0", "3000"],
            ),
            (
                "SELECT COUNT(*) FROM claims c JOIN patients p ON p.patient_id = c.patient_id \
                 WHERE c.amount < {x}",
                ["0", "100000"],
            ),
            (
                "SELECT p.region FROM patients p WHERE p.birth_year > {x} LIMIT 1",
                ["0", "3000"],
            ),
            (
                "SELECT c.kind FROM claims c JOIN patients p ON p.patient_id = c.patient_id \
                 WHERE p.bmi > {x} LIMIT 2",
                ["0", "1000"],
            ),
        ];
        for (template, values) in pairs {
            let mut fetched = Vec::new();
            for x in values {
                let sql = template.replace("{x}", x);
                let plan = physical(&ctx, &sql).await;
                recording.take();
                crate::collect_counted(plan, &ctx).await.unwrap();
                fetched.push(recording.take());
            }
            assert!(!fetched[0].is_empty(), "{template}");
            assert_eq!(fetched[0], fetched[1], "{template}");
        }
    }

    /// A scan decoded without its keys reads, once they are attached again, exactly what the
    /// original reads: every file once, in the same partitions.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn attached_keys_read_each_file_once() {
        use datafusion::common::tree_node::{Transformed, TreeNode};
        let c = crate::golden::contract();
        let held = crate::golden::tables(&c);
        let dir = tempfile::tempdir().unwrap();
        let mut tables = at_rest(&c, &held, dir.path()).await;
        for table in tables.values_mut() {
            if let Table::Stored(s) = table {
                s.origin = Some(Arc::new(Zeroizing::new("test".into())));
            }
        }
        let ctx = crate::session(&c, &tables).unwrap();
        let sql = "SELECT COUNT(*) FROM patients p JOIN claims c ON p.patient_id = c.patient_id";
        let plan = physical(&ctx, sql).await;
        let scans: HashMap<String, Access> = c
            .datasets
            .iter()
            .enumerate()
            .filter_map(|(i, d)| match tables.get(&d.name) {
                Some(Table::Stored(s)) => Some((url(i).unwrap().to_string(), s.access().unwrap())),
                _ => None,
            })
            .collect();
        let attached = plan
            .clone()
            .transform_up(|node| {
                let Some(exec) = node.downcast_ref::<DataSourceExec>() else {
                    return Ok(Transformed::no(node));
                };
                let Some(config) = exec.data_source().downcast_ref::<FileScanConfig>() else {
                    return Ok(Transformed::no(node));
                };
                let access = &scans[config.object_store_url.as_str()];
                let wire = access.to_wire();
                let store = ctx
                    .runtime_env()
                    .object_store(&config.object_store_url)
                    .unwrap();
                let attached = Access::from_wire(&wire)
                    .unwrap()
                    .attach(exec, store)
                    .unwrap();
                Ok(Transformed::yes(attached))
            })
            .unwrap()
            .data;
        let count = |plan| async {
            let out = datafusion::physical_plan::collect(plan, ctx.task_ctx())
                .await
                .unwrap();
            datafusion::arrow::util::pretty::pretty_format_batches(&out)
                .unwrap()
                .to_string()
        };
        assert_eq!(count(attached).await, count(plan).await);
    }
}
