//! Turns an uploaded file (already decrypted) into record batches of the contract's schema.
//!
//! [`Ingest`] takes the plaintext as it is decrypted, piece by piece, so an upload is parsed
//! while it is still arriving and the file is never held whole in memory (CSV), and it parses on
//! every core: CSV in blocks cut at record boundaries, Parquet by row group. The order of rows is
//! kept.
//!
//! The file must carry exactly the columns the contract declares for the dataset (in any
//! order): an extra column would bring data nobody agreed to share, a missing one would make
//! analyses fail later. Values must parse as the declared types.

use std::io::Cursor;
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use datafusion::arrow::compute::cast;
use datafusion::arrow::csv::ReaderBuilder;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use kura_contract::{ColumnType, Dataset};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::EngineError;

/// Rows per record batch when parsing CSV.
pub(crate) const BATCH_ROWS: usize = 64 * 1024;
/// CSV plaintext handed to one parsing thread at a time: large enough that a block's fixed
/// costs vanish, small enough that every core gets work and little plaintext waits in memory.
const CSV_BLOCK: usize = 4 << 20;
/// A header line longer than this is refused rather than buffered without bound.
const MAX_HEADER: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    Csv,
    Parquet,
}

impl InputFormat {
    /// Guesses from a file name: `.parquet`/`.pq` is Parquet, anything else CSV.
    pub fn from_path(path: &std::path::Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some("parquet" | "pq") => InputFormat::Parquet,
            _ => InputFormat::Csv,
        }
    }
}

/// How a contract type is held in memory. Text is held as string views: grouping and joining
/// on short strings then compares inline bytes instead of following offsets (on the benchmark's
/// join, the query takes half the time).
fn arrow_type(ty: ColumnType) -> DataType {
    match ty {
        ColumnType::Utf8 => DataType::Utf8View,
        _ => parse_type(ty),
    }
}

/// The type a CSV column is parsed as (then cast to [`arrow_type`]).
fn parse_type(ty: ColumnType) -> DataType {
    match ty {
        ColumnType::Utf8 => DataType::Utf8,
        ColumnType::Int64 => DataType::Int64,
        ColumnType::Float64 => DataType::Float64,
        ColumnType::Boolean => DataType::Boolean,
        ColumnType::Date => DataType::Date32,
    }
}

/// The Arrow schema of a dataset as declared in the contract (every column nullable).
pub fn arrow_schema(dataset: &Dataset) -> SchemaRef {
    Arc::new(Schema::new(
        dataset
            .columns
            .iter()
            .map(|c| Field::new(&c.name, arrow_type(c.ty), true))
            .collect::<Vec<_>>(),
    ))
}

/// Parses `bytes` as `format` and checks it against `dataset`.
pub fn load(
    dataset: &Dataset,
    format: InputFormat,
    bytes: &[u8],
) -> Result<Vec<RecordBatch>, EngineError> {
    let mut ingest = Ingest::new(dataset, format);
    ingest.push(bytes)?;
    ingest.finish()
}

fn check_names<'a>(
    dataset: &Dataset,
    found: impl IntoIterator<Item = &'a str>,
) -> Result<(), EngineError> {
    let found: Vec<&str> = found.into_iter().collect();
    for name in &found {
        if dataset.column(name).is_none() {
            return Err(EngineError::schema(
                &dataset.name,
                format!("column {name:?} is not declared in the contract"),
            ));
        }
    }
    for c in &dataset.columns {
        let n = found.iter().filter(|f| **f == c.name).count();
        if n != 1 {
            let problem = if n == 0 {
                "is missing"
            } else {
                "appears more than once"
            };
            return Err(EngineError::schema(
                &dataset.name,
                format!("column {:?} {problem}", c.name),
            ));
        }
    }
    Ok(())
}

/// Reorders `batch` (whose columns are the contract's, in file order) to the contract's order.
fn to_contract_order(dataset: &Dataset, batch: RecordBatch) -> Result<RecordBatch, EngineError> {
    let schema = arrow_schema(dataset);
    let columns = dataset
        .columns
        .iter()
        .map(|c| {
            let i = batch.schema().index_of(&c.name).expect("names checked");
            let col = batch.column(i);
            if col.data_type() == &arrow_type(c.ty) {
                Ok(col.clone())
            } else {
                cast(col, &arrow_type(c.ty)).map_err(|e| {
                    EngineError::schema(&dataset.name, format!("column {:?}: {e}", c.name))
                })
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema, columns)
        .map_err(|e| EngineError::schema(&dataset.name, e.to_string()))
}

/// Parquet types that convert losslessly to each contract type.
fn compatible(found: &DataType, wanted: ColumnType) -> bool {
    use DataType as T;
    match wanted {
        ColumnType::Utf8 => matches!(found, T::Utf8 | T::LargeUtf8 | T::Utf8View),
        ColumnType::Int64 => matches!(
            found,
            T::Int8 | T::Int16 | T::Int32 | T::Int64 | T::UInt8 | T::UInt16 | T::UInt32
        ),
        ColumnType::Float64 => matches!(found, T::Float16 | T::Float32 | T::Float64),
        ColumnType::Boolean => matches!(found, T::Boolean),
        ColumnType::Date => matches!(found, T::Date32),
    }
}

/// An upload being parsed as its plaintext arrives. Feed it with [`Ingest::push`], then
/// [`Ingest::finish`]; a refusal can come from either (as early as the header for CSV).
/// Plaintext it buffers is zeroized when it is no longer needed.
#[derive(Debug)]
pub struct Ingest {
    dataset: Arc<Dataset>,
    format: Format,
}

#[derive(Debug)]
enum Format {
    Csv(Box<CsvIngest>),
    /// Parquet's footer comes last: the file is gathered, then decoded by row group.
    Parquet(Zeroizing<Vec<u8>>),
}

impl Ingest {
    pub fn new(dataset: &Dataset, format: InputFormat) -> Self {
        Self {
            dataset: Arc::new(dataset.clone()),
            format: match format {
                InputFormat::Csv => Format::Csv(Box::default()),
                InputFormat::Parquet => Format::Parquet(Zeroizing::new(Vec::new())),
            },
        }
    }

    /// Takes the next plaintext bytes of the file.
    pub fn push(&mut self, plaintext: &[u8]) -> Result<(), EngineError> {
        match &mut self.format {
            Format::Csv(csv) => {
                for piece in plaintext.chunks(CSV_BLOCK) {
                    csv.push(&self.dataset, piece)?;
                }
                Ok(())
            }
            Format::Parquet(file) => {
                extend_zeroizing(file, plaintext);
                Ok(())
            }
        }
    }

    /// The whole file has arrived: the record batches, in file order, in the contract's column
    /// order.
    pub fn finish(self) -> Result<Vec<RecordBatch>, EngineError> {
        match self.format {
            Format::Csv(csv) => csv.finish(&self.dataset),
            Format::Parquet(file) => load_parquet(&self.dataset, file),
        }
    }
}

/// Appends to `buf` without ever leaving a copy of its contents in freed memory: when it must
/// grow, the old allocation is zeroized after the move.
fn extend_zeroizing(buf: &mut Zeroizing<Vec<u8>>, more: &[u8]) {
    if buf.capacity() - buf.len() < more.len() {
        let mut bigger = Vec::with_capacity((buf.len() + more.len()).max(buf.capacity() * 2));
        bigger.extend_from_slice(buf);
        let old = std::mem::replace(&mut **buf, bigger);
        drop(Zeroizing::new(old));
    }
    buf.extend_from_slice(more);
}

/// CSV cut into blocks at record boundaries, each parsed by a pool thread.
///
/// A newline ends a record only outside quotes: a quoted field may hold newlines (RFC 4180,
/// which is what the Arrow reader parses). The scanner tracks quote parity from the start of
/// the file, so it never cuts inside a field.
#[derive(Debug, Default)]
struct CsvIngest {
    /// The file's columns, in file order, once the header line has arrived.
    schema: Option<SchemaRef>,
    /// Plaintext not yet handed to a parser (it starts at a record boundary).
    pending: Zeroizing<Vec<u8>>,
    /// How much of `pending` the scanner has read.
    scanned: usize,
    /// Whether the scanner is inside a quoted field.
    quoted: bool,
    /// End of the last complete record in `pending` (0: none yet).
    boundary: usize,
    /// Newlines scanned in `pending`, and those before `boundary`.
    newlines: u64,
    newlines_at_boundary: u64,
    /// Line number of the first line of `pending`.
    line: u64,
    pool: Option<Pool>,
    /// Blocks handed out, and parsed blocks received back (by block number).
    sent: usize,
    parsed: Vec<Option<Vec<RecordBatch>>>,
}

/// A block of whole CSV records.
struct Block {
    index: usize,
    first_line: u64,
    bytes: Zeroizing<Vec<u8>>,
}

type Parsed = (usize, Result<Vec<RecordBatch>, EngineError>);

#[derive(Debug)]
struct Pool {
    blocks: Option<SyncSender<Block>>,
    parsed: Receiver<Parsed>,
    workers: Vec<JoinHandle<()>>,
}

impl Pool {
    fn start(dataset: &Arc<Dataset>, schema: &SchemaRef) -> Self {
        let n = crate::cores();
        // Two blocks waiting per thread at most: a fast sender waits rather than piling up
        // plaintext.
        let (blocks, queue) = std::sync::mpsc::sync_channel::<Block>(2 * n);
        let (done, parsed) = std::sync::mpsc::channel();
        let queue = Arc::new(Mutex::new(queue));
        let workers = (0..n)
            .map(|_| {
                let (queue, done) = (queue.clone(), done.clone());
                let (dataset, schema) = (dataset.clone(), schema.clone());
                std::thread::spawn(move || {
                    loop {
                        let block = queue.lock().expect("queue lock").recv();
                        let Ok(block) = block else { break };
                        let parsed = parse_block(&dataset, &schema, &block);
                        if done.send((block.index, parsed)).is_err() {
                            break;
                        }
                    }
                })
            })
            .collect();
        Self {
            blocks: Some(blocks),
            parsed,
            workers,
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.blocks = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn parse_block(
    dataset: &Dataset,
    schema: &SchemaRef,
    block: &Block,
) -> Result<Vec<RecordBatch>, EngineError> {
    let bad = |e: &dyn std::fmt::Display| {
        EngineError::schema(
            &dataset.name,
            format!(
                "bad CSV value: {e} (line numbers count from line {} of the file)",
                block.first_line
            ),
        )
    };
    let reader = ReaderBuilder::new(schema.clone())
        .with_header(false)
        .with_batch_size(BATCH_ROWS)
        .build(Cursor::new(&block.bytes[..]))
        .map_err(|e| bad(&e))?;
    reader
        .map(|batch| to_contract_order(dataset, batch.map_err(|e| bad(&e))?))
        .collect()
}

impl CsvIngest {
    fn push(&mut self, dataset: &Arc<Dataset>, piece: &[u8]) -> Result<(), EngineError> {
        extend_zeroizing(&mut self.pending, piece);
        if self.schema.is_none() {
            let Some(end) = memchr::memchr(b'\n', &self.pending) else {
                if self.pending.len() > MAX_HEADER {
                    return Err(EngineError::schema(
                        &dataset.name,
                        "the CSV header line is longer than 1 MiB",
                    ));
                }
                return Ok(());
            };
            self.header(dataset, end)?;
        }
        self.scan();
        if self.pending.len() >= CSV_BLOCK && self.boundary > 0 {
            self.cut(dataset)?;
        }
        Ok(())
    }

    /// Reads the header line (which ends at `end`) and removes it from `pending`.
    fn header(&mut self, dataset: &Dataset, end: usize) -> Result<(), EngineError> {
        let header = std::str::from_utf8(&self.pending[..end])
            .map_err(|_| EngineError::schema(&dataset.name, "the CSV header is not UTF-8"))?
            .trim_end_matches('\r');
        if header.trim().is_empty() {
            return Err(EngineError::schema(
                &dataset.name,
                "the CSV file has no header line",
            ));
        }
        let names: Vec<&str> = header
            .split(',')
            .map(|h| h.trim().trim_matches('"'))
            .collect();
        check_names(dataset, names.iter().copied())?;
        self.schema = Some(Arc::new(Schema::new(
            names
                .iter()
                .map(|n| Field::new(*n, parse_type(dataset.column(n).expect("checked").ty), true))
                .collect::<Vec<_>>(),
        )));
        let rest = (end + 1).min(self.pending.len());
        let mut tail = Zeroizing::new(Vec::with_capacity(CSV_BLOCK + CSV_BLOCK / 4));
        tail.extend_from_slice(&self.pending[rest..]);
        self.pending = tail;
        self.line = 2;
        Ok(())
    }

    /// Finds record boundaries in the bytes not yet scanned.
    fn scan(&mut self) {
        let mut at = self.scanned;
        while let Some(found) = memchr::memchr2(b'"', b'\n', &self.pending[at..]) {
            at += found;
            if self.pending[at] == b'"' {
                self.quoted = !self.quoted;
            } else {
                self.newlines += 1;
                if !self.quoted {
                    self.boundary = at + 1;
                    self.newlines_at_boundary = self.newlines;
                }
            }
            at += 1;
        }
        self.scanned = self.pending.len();
    }

    /// Hands the complete records of `pending` to the pool.
    fn cut(&mut self, dataset: &Arc<Dataset>) -> Result<(), EngineError> {
        let mut rest = Zeroizing::new(Vec::with_capacity(CSV_BLOCK + CSV_BLOCK / 4));
        rest.extend_from_slice(&self.pending[self.boundary..]);
        let mut bytes = std::mem::replace(&mut self.pending, rest);
        bytes.truncate(self.boundary);
        let block = Block {
            index: self.sent,
            first_line: self.line,
            bytes,
        };
        self.scanned -= self.boundary;
        self.newlines -= self.newlines_at_boundary;
        self.line += self.newlines_at_boundary;
        self.boundary = 0;
        self.newlines_at_boundary = 0;
        self.sent += 1;
        let schema = self.schema.clone().expect("header read");
        let pool = self
            .pool
            .get_or_insert_with(|| Pool::start(dataset, &schema));
        pool.blocks
            .as_ref()
            .expect("pool open")
            .send(block)
            .map_err(|_| EngineError::Execution("the CSV parsing threads stopped".into()))?;
        // Collect what is done, and stop at the first refusal.
        while let Ok(parsed) = pool.parsed.try_recv() {
            receive(&mut self.parsed, parsed)?;
        }
        Ok(())
    }

    fn finish(mut self, dataset: &Arc<Dataset>) -> Result<Vec<RecordBatch>, EngineError> {
        if self.schema.is_none() {
            let end = memchr::memchr(b'\n', &self.pending).unwrap_or(self.pending.len());
            self.header(dataset, end)?;
        }
        let schema = self.schema.clone().expect("header read");
        let last = Block {
            index: self.sent,
            first_line: self.line,
            bytes: std::mem::take(&mut self.pending),
        };
        let Some(mut pool) = self.pool.take() else {
            // Everything fit in one block: no threads needed.
            return parse_block(dataset, &schema, &last);
        };
        self.sent += 1;
        pool.blocks
            .take()
            .expect("pool open")
            .send(last)
            .map_err(|_| EngineError::Execution("the CSV parsing threads stopped".into()))?;
        for _ in self.parsed.iter().flatten().count()..self.sent {
            let parsed = pool
                .parsed
                .recv()
                .map_err(|_| EngineError::Execution("a CSV parsing thread stopped".into()))?;
            receive(&mut self.parsed, parsed)?;
        }
        drop(pool);
        Ok(self.parsed.into_iter().flatten().flatten().collect())
    }
}

/// Files a parsed block under its number, or stops at a refusal.
fn receive(
    blocks: &mut Vec<Option<Vec<RecordBatch>>>,
    (index, parsed): Parsed,
) -> Result<(), EngineError> {
    if blocks.len() <= index {
        blocks.resize_with(index + 1, || None);
    }
    blocks[index] = Some(parsed?);
    Ok(())
}

fn load_parquet(
    dataset: &Dataset,
    mut file: Zeroizing<Vec<u8>>,
) -> Result<Vec<RecordBatch>, EngineError> {
    // The reader wants `Bytes`: take the buffer over without a copy, and zeroize it afterwards
    // if no batch still points into it.
    let bytes = bytes::Bytes::from(std::mem::take(&mut *file));
    let parsed = decode_parquet(dataset, &bytes);
    if let Ok(mut owned) = bytes.try_into_mut() {
        owned.zeroize();
    }
    parsed
}

/// Decodes the row groups on every core, each thread a contiguous range, in file order.
fn decode_parquet(
    dataset: &Dataset,
    bytes: &bytes::Bytes,
) -> Result<Vec<RecordBatch>, EngineError> {
    let read = |e: &dyn std::fmt::Display| {
        EngineError::schema(&dataset.name, format!("not a readable Parquet file: {e}"))
    };
    let meta =
        ArrowReaderMetadata::load(bytes, ArrowReaderOptions::default()).map_err(|e| read(&e))?;
    let schema = meta.schema().clone();
    check_names(dataset, schema.fields().iter().map(|f| f.name().as_str()))?;
    for field in schema.fields() {
        let declared = dataset.column(field.name()).expect("checked");
        if !compatible(field.data_type(), declared.ty) {
            return Err(EngineError::schema(
                &dataset.name,
                format!(
                    "column {:?} has type {} in the file, but the contract declares {}",
                    field.name(),
                    field.data_type(),
                    declared.ty.as_str()
                ),
            ));
        }
    }
    let groups = meta.metadata().num_row_groups();
    let n = crate::cores().min(groups).max(1);
    let ranges: Vec<Vec<usize>> = (0..n)
        .map(|i| (groups * i / n..groups * (i + 1) / n).collect())
        .collect();
    let decode = |row_groups: Vec<usize>| -> Result<Vec<RecordBatch>, EngineError> {
        let reader =
            ParquetRecordBatchReaderBuilder::new_with_metadata(bytes.clone(), meta.clone())
                .with_row_groups(row_groups)
                .with_batch_size(BATCH_ROWS)
                .build()
                .map_err(|e| read(&e))?;
        reader
            .map(|batch| to_contract_order(dataset, batch.map_err(|e| read(&e))?))
            .collect()
    };
    let parts: Vec<Result<Vec<RecordBatch>, EngineError>> = std::thread::scope(|s| {
        let handles: Vec<_> = ranges
            .into_iter()
            .map(|r| s.spawn(move || decode(r)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a Parquet decoding thread panicked"))
            .collect()
    });
    let mut batches = Vec::new();
    for part in parts {
        batches.extend(part?);
    }
    Ok(batches)
}
