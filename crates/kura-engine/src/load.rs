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
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ProjectionMask;
use datafusion::parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use datafusion::parquet::errors::{ParquetError, Result as ParquetResult};
use datafusion::parquet::file::metadata::ParquetMetaDataReader;
use datafusion::parquet::file::reader::{ChunkReader, Length};
use kura_contract::{ColumnType, Dataset};
use kura_crypto::extend_zeroizing;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::EngineError;

/// Rows per record batch when parsing CSV.
pub(crate) const BATCH_ROWS: usize = 64 * 1024;
/// CSV plaintext handed to one parsing thread at a time: large enough that a block's fixed
/// costs vanish, small enough that every core gets work and little plaintext waits in memory.
const CSV_BLOCK: usize = 4 << 20;
/// A CSV block's buffer: a block, plus room for the decrypted chunk (1 MiB from kura's client)
/// that crosses its end, so that the buffer seldom has to grow.
const CSV_BUFFER: usize = CSV_BLOCK + CSV_BLOCK / 2;
/// A header line longer than this is refused rather than buffered without bound.
const MAX_HEADER: usize = 1 << 20;
/// The lengths that open a footer-first Parquet stream.
const FOOTER_FIRST_PREFIX: usize = 16;
/// A Parquet footer longer than this is refused rather than buffered without bound.
const MAX_FOOTER: u64 = 64 << 20;
/// A row group's buffer is reserved whole up to this size (the size comes from the file's
/// metadata, so it is not trusted further); a bigger row group grows its buffer.
const MAX_RESERVE: u64 = 256 << 20;
/// Reserved past a row group's bytes: a chunk as kura's client sends them (1 MiB), twice.
const SEGMENT_SLACK: usize = 2 << 20;
const PARQUET_MAGIC: &[u8; 4] = b"PAR1";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    Csv,
    /// A Parquet file as it is: its metadata comes last, so it is gathered whole, then decoded.
    Parquet,
    /// A Parquet file sent metadata first, so that each row group is decoded as soon as its
    /// bytes have arrived and the file is never held whole. The stream is: the file's length
    /// and the footer's length (u64, little-endian, 8 bytes each); the footer (the file's last
    /// bytes: its metadata, the metadata's 4-byte length, `PAR1`); then the rest of the file
    /// from its first byte. kura's client sends Parquet files this way.
    #[serde(rename = "parquet-footer-first")]
    ParquetFooterFirst,
}

/// How a contract type is held in memory, and parsed from CSV. Text is held as string views:
/// grouping and joining on short strings then compares inline bytes instead of following offsets
/// (on the benchmark's join, the query takes half the time).
fn arrow_type(ty: ColumnType) -> DataType {
    match ty {
        ColumnType::Utf8 => DataType::Utf8View,
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
    // An undeclared name is not quoted: a file without its header line would put its first
    // record (identifiers and all) here, and the refusal goes to the log every party reads.
    if let Some(i) = found.iter().position(|name| dataset.column(name).is_none()) {
        return Err(EngineError::schema(
            &dataset.name,
            format!(
                "column {} of the file is not declared in the contract (declared: {}); is the \
                 header line missing?",
                i + 1,
                dataset
                    .columns
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
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

/// The columns of `dataset` (the kept ones) taken from `batch` (which has them, in file order),
/// in the contract's order and types.
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
                // The cast's own error quotes the value: say only which column.
                cast(col, &arrow_type(c.ty)).map_err(|_| {
                    EngineError::schema(
                        &dataset.name,
                        format!(
                            "column {:?}: a value does not convert to {}",
                            c.name,
                            arrow_type(c.ty)
                        ),
                    )
                })
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema, columns).map_err(|_| {
        EngineError::schema(
            &dataset.name,
            "the columns do not fit the contract's schema",
        )
    })
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
    shape: Arc<Shape>,
    format: Format,
    /// Where [`Ingest::push_with`] has plaintext appended for formats that copy it anyway.
    scratch: Zeroizing<Vec<u8>>,
}

/// A dataset as the contract declares it (what the file must carry), and the part of it the
/// enclave keeps.
#[derive(Debug)]
struct Shape {
    declared: Dataset,
    kept: Dataset,
}

#[derive(Debug)]
enum Format {
    Csv(Box<CsvIngest>),
    /// Parquet's footer comes last: the file is gathered, then decoded by row group.
    Parquet(Zeroizing<Vec<u8>>),
    ParquetFooterFirst(Box<FooterFirst>),
}

impl Ingest {
    /// An upload of `dataset` whose every column is kept.
    pub fn new(dataset: &Dataset, format: InputFormat) -> Self {
        Self::keeping(dataset, format, |_| true)
    }

    /// An upload of `dataset` that keeps only the columns `keep` accepts (by name). The file
    /// must still carry every declared column in a declared type, and every CSV value is still
    /// parsed, but the other columns are dropped as soon as they are parsed (CSV) or never
    /// decoded at all (Parquet).
    pub fn keeping(dataset: &Dataset, format: InputFormat, keep: impl Fn(&str) -> bool) -> Self {
        let mut kept = dataset.clone();
        kept.columns.retain(|c| keep(&c.name));
        Self {
            shape: Arc::new(Shape {
                declared: dataset.clone(),
                kept,
            }),
            format: match format {
                InputFormat::Csv => Format::Csv(Box::default()),
                InputFormat::Parquet => Format::Parquet(Zeroizing::new(Vec::new())),
                InputFormat::ParquetFooterFirst => Format::ParquetFooterFirst(Box::default()),
            },
            scratch: Zeroizing::default(),
        }
    }

    /// Takes the next plaintext bytes of the file.
    pub fn push(&mut self, plaintext: &[u8]) -> Result<(), EngineError> {
        match &mut self.format {
            Format::Csv(csv) => {
                for piece in plaintext.chunks(CSV_BLOCK) {
                    extend_zeroizing(&mut csv.pending, piece);
                    csv.advance(&self.shape)?;
                }
                Ok(())
            }
            Format::Parquet(file) => {
                extend_zeroizing(file, plaintext);
                Ok(())
            }
            Format::ParquetFooterFirst(parquet) => parquet.push(&self.shape, plaintext),
        }
    }

    /// Takes the next plaintext bytes of the file from `fill`, which appends them to the buffer
    /// it is given. For CSV that is the block being gathered, which spares copying every byte
    /// once more. `fill` must only append, and must not leave plaintext in memory it frees
    /// (as `kura_crypto::StreamDecoder::push` does not). Its error comes back inside `Ok`.
    pub fn push_with<E>(
        &mut self,
        fill: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<Result<(), E>, EngineError> {
        match &mut self.format {
            Format::Csv(csv) => {
                if let Err(e) = fill(&mut csv.pending) {
                    return Ok(Err(e));
                }
                csv.advance(&self.shape).map(Ok)
            }
            Format::ParquetFooterFirst(parquet)
                if parquet.body.as_ref().is_some_and(|b| b.in_row_group()) =>
            {
                let body = parquet.body.as_mut().expect("checked");
                let start = body.current.len();
                if let Err(e) = fill(&mut body.current) {
                    return Ok(Err(e));
                }
                body.appended(&self.shape, start).map(Ok)
            }
            _ => {
                let mut plaintext = std::mem::take(&mut self.scratch);
                let filled = fill(&mut plaintext);
                let pushed = match filled {
                    Ok(()) => self.push(&plaintext).map(Ok),
                    Err(e) => Ok(Err(e)),
                };
                plaintext.as_mut_slice().zeroize();
                plaintext.clear();
                self.scratch = plaintext;
                pushed
            }
        }
    }

    /// The whole file has arrived: the record batches, in file order, in the contract's column
    /// order.
    pub fn finish(self) -> Result<Vec<RecordBatch>, EngineError> {
        match self.format {
            Format::Csv(csv) => csv.finish(&self.shape),
            Format::Parquet(file) => load_parquet(&self.shape, file),
            Format::ParquetFooterFirst(parquet) => parquet.finish(&self.shape),
        }
    }
}

#[cfg(test)]
impl Ingest {
    /// Pieces of the file handed to the parsing threads so far.
    pub(crate) fn pieces_handed_out(&self) -> usize {
        match &self.format {
            Format::Csv(csv) => csv.parallel.sent,
            Format::Parquet(_) => 0,
            Format::ParquetFooterFirst(p) => p.body.as_ref().map_or(0, |b| b.parallel.sent),
        }
    }
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
    parallel: Parallel,
    spares: Spares,
}

/// Block buffers the parsing threads are done with, zeroized, for the blocks to come. Reusing
/// them spares the kernel faulting in and clearing fresh pages for every block, which the
/// profile of a CSV upload found to cost as much as copying the plaintext into them.
#[derive(Debug, Default, Clone)]
struct Spares(Arc<Mutex<Vec<Zeroizing<Vec<u8>>>>>);

impl Spares {
    /// An empty buffer with room for a block.
    fn take(&self) -> Zeroizing<Vec<u8>> {
        let spare = self.0.lock().expect("spares lock").pop();
        let mut buf = spare.unwrap_or_else(|| Zeroizing::new(Vec::with_capacity(CSV_BUFFER)));
        buf.clear();
        buf
    }

    /// Zeroizes `buf` and keeps it for a later block. Its spare capacity needs no zeroizing:
    /// whoever shortens a buffer zeroizes what it cuts off (`CsvIngest::cut`), so plaintext
    /// only ever sits in its first `len` bytes. A buffer not kept is zeroized whole on drop.
    fn give(&self, mut buf: Zeroizing<Vec<u8>>) {
        buf.as_mut_slice().zeroize();
        let mut spares = self.0.lock().expect("spares lock");
        // Never more than the blocks in flight at once; more would only hold memory.
        if spares.len() < 4 * crate::cores() {
            spares.push(buf);
        }
    }
}

/// A block of whole CSV records.
struct Block {
    first_line: u64,
    bytes: Zeroizing<Vec<u8>>,
}

/// Parses one piece of a file (a CSV block, Parquet row groups) into record batches.
type Job = Box<dyn FnOnce() -> Result<Vec<RecordBatch>, EngineError> + Send>;
type Parsed = (usize, Result<Vec<RecordBatch>, EngineError>);

/// Parses the pieces of one file on every core and gives their batches back in file order.
/// The threads start with the first piece.
#[derive(Debug, Default)]
struct Parallel {
    pool: Option<Pool>,
    /// Pieces handed out, and parsed pieces received back (by piece number).
    sent: usize,
    parsed: Vec<Option<Vec<RecordBatch>>>,
}

impl Parallel {
    /// Hands `job` to a thread, waiting while every thread already has two pieces queued (a
    /// fast sender waits rather than piling up plaintext). Collects what is done, and stops at
    /// the first refusal.
    fn submit(&mut self, job: Job) -> Result<(), EngineError> {
        let pool = self.pool.get_or_insert_with(Pool::start);
        pool.jobs
            .as_ref()
            .expect("pool open")
            .send((self.sent, job))
            .map_err(|_| stopped())?;
        self.sent += 1;
        while let Ok(parsed) = pool.parsed.try_recv() {
            receive(&mut self.parsed, parsed)?;
        }
        Ok(())
    }

    /// Waits for every piece: the batches of all of them, in file order.
    fn finish(mut self) -> Result<Vec<RecordBatch>, EngineError> {
        if let Some(mut pool) = self.pool.take() {
            pool.jobs = None;
            for _ in self.parsed.iter().flatten().count()..self.sent {
                let parsed = pool.parsed.recv().map_err(|_| stopped())?;
                receive(&mut self.parsed, parsed)?;
            }
        }
        Ok(self.parsed.into_iter().flatten().flatten().collect())
    }
}

fn stopped() -> EngineError {
    EngineError::Execution("a parsing thread stopped".into())
}

/// One thread per core, taking jobs from a shared queue.
struct Pool {
    jobs: Option<SyncSender<(usize, Job)>>,
    parsed: Receiver<Parsed>,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("threads", &self.workers.len())
            .finish()
    }
}

impl Pool {
    fn start() -> Self {
        let n = crate::cores();
        let (jobs, queue) = std::sync::mpsc::sync_channel::<(usize, Job)>(2 * n);
        let (done, parsed) = std::sync::mpsc::channel();
        let queue = Arc::new(Mutex::new(queue));
        let workers = (0..n)
            .map(|_| {
                let (queue, done) = (queue.clone(), done.clone());
                std::thread::spawn(move || {
                    loop {
                        let job = queue.lock().expect("queue lock").recv();
                        let Ok((index, job)) = job else { break };
                        if done.send((index, job())).is_err() {
                            break;
                        }
                    }
                })
            })
            .collect();
        Self {
            jobs: Some(jobs),
            parsed,
            workers,
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// Where a CSV value failed to parse, and why, in words that never quote the file: arrow's
/// messages carry the value and the whole row (identifiers included), which must not reach the
/// refusal, the audit log or the wire. Only numbers are taken from them; anything else becomes
/// a fixed sentence. `line_of` gives the file line of the block's record (counted from 0).
fn csv_problem(e: &ArrowError, line_of: impl Fn(u64) -> u64, schema: &SchemaRef) -> String {
    let text = e.to_string();
    // The number that follows `marker` in `text`.
    let number_after = |marker: &str| -> Option<u64> {
        let rest = &text[text.find(marker)? + marker.len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    let column = |i: u64| {
        schema.fields().get(i as usize).map_or_else(
            || format!("number {}", i + 1),
            |f| format!("{:?}", f.name()),
        )
    };
    let type_of = |i: u64| {
        schema
            .fields()
            .get(i as usize)
            .map_or_else(|| "its declared type".into(), |f| f.data_type().to_string())
    };
    // Value errors count records from 0 within the block; record errors from 1.
    if let (Some(c), Some(l)) = (number_after("for column "), number_after(" at line ")) {
        return format!(
            "line {}, column {}: the value is not a valid {}",
            line_of(l),
            column(c),
            type_of(c)
        );
    }
    if let (Some(c), Some(l)) = (
        number_after("Error parsing column "),
        number_after(" at line "),
    ) {
        return format!(
            "line {}, column {}: the value is not a valid {}",
            line_of(l),
            column(c),
            type_of(c)
        );
    }
    if let Some(l) = number_after("incorrect number of fields for line ") {
        return format!(
            "line {}: the record does not have {} fields",
            line_of(l.saturating_sub(1)),
            schema.fields().len()
        );
    }
    if let (Some(l), Some(f)) = (
        number_after("UTF-8 data for line "),
        number_after(" and field "),
    ) {
        return format!(
            "line {}, column {}: the value is not valid UTF-8",
            line_of(l.saturating_sub(1)),
            column(f.saturating_sub(1))
        );
    }
    format!(
        "a CSV record at or after line {} could not be read (details are withheld: they may \
         quote the data)",
        line_of(0)
    )
}

/// The file line on which record `record` (from 0) of `block` starts: newlines inside quoted
/// fields are part of their record.
fn line_of_record(block: &Block, record: u64) -> u64 {
    let (mut line, mut records, mut quoted) = (block.first_line, 0, false);
    for &b in block.bytes.iter() {
        if records == record {
            break;
        }
        match b {
            b'"' => quoted = !quoted,
            b'\n' => {
                line += 1;
                if !quoted {
                    records += 1;
                }
            }
            _ => {}
        }
    }
    line
}

fn parse_block(
    shape: &Shape,
    schema: &SchemaRef,
    block: &Block,
) -> Result<Vec<RecordBatch>, EngineError> {
    let bad = |e: &ArrowError| {
        EngineError::schema(
            &shape.declared.name,
            csv_problem(e, |record| line_of_record(block, record), schema),
        )
    };
    // The block is in memory already: read it in place rather than through a `BufReader`.
    let reader = ReaderBuilder::new(schema.clone())
        .with_header(false)
        .with_batch_size(BATCH_ROWS)
        .build_buffered(Cursor::new(&block.bytes[..]))
        .map_err(|e| bad(&e))?;
    reader
        .map(|batch| to_contract_order(&shape.kept, batch.map_err(|e| bad(&e))?))
        .collect()
}

impl CsvIngest {
    /// Reads what was appended to `pending`: the header line first, then record boundaries;
    /// hands a block to the pool once enough has gathered.
    fn advance(&mut self, shape: &Arc<Shape>) -> Result<(), EngineError> {
        let dataset = &shape.declared;
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
            self.cut(shape)?;
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
                .map(|n| Field::new(*n, arrow_type(dataset.column(n).expect("checked").ty), true))
                .collect::<Vec<_>>(),
        )));
        let rest = (end + 1).min(self.pending.len());
        let mut tail = self.spares.take();
        extend_zeroizing(&mut tail, &self.pending[rest..]);
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
    fn cut(&mut self, shape: &Arc<Shape>) -> Result<(), EngineError> {
        let mut rest = self.spares.take();
        extend_zeroizing(&mut rest, &self.pending[self.boundary..]);
        let mut bytes = std::mem::replace(&mut self.pending, rest);
        // The tail was copied to `rest`; it must not linger in the block's spare capacity.
        bytes[self.boundary..].zeroize();
        bytes.truncate(self.boundary);
        let block = Block {
            first_line: self.line,
            bytes,
        };
        self.scanned -= self.boundary;
        self.newlines -= self.newlines_at_boundary;
        self.line += self.newlines_at_boundary;
        self.boundary = 0;
        self.newlines_at_boundary = 0;
        let (shape, schema) = (shape.clone(), self.schema.clone().expect("header read"));
        let spares = self.spares.clone();
        self.parallel.submit(Box::new(move || {
            let parsed = parse_block(&shape, &schema, &block);
            spares.give(block.bytes);
            parsed
        }))
    }

    fn finish(mut self, shape: &Arc<Shape>) -> Result<Vec<RecordBatch>, EngineError> {
        if self.schema.is_none() {
            let end = memchr::memchr(b'\n', &self.pending).unwrap_or(self.pending.len());
            self.header(&shape.declared, end)?;
        }
        let schema = self.schema.clone().expect("header read");
        let last = Block {
            first_line: self.line,
            bytes: std::mem::take(&mut self.pending),
        };
        if self.parallel.sent == 0 {
            // Everything fit in one block: no threads needed.
            return parse_block(shape, &schema, &last);
        }
        let shape = shape.clone();
        self.parallel
            .submit(Box::new(move || parse_block(&shape, &schema, &last)))?;
        self.parallel.finish()
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
    shape: &Arc<Shape>,
    mut file: Zeroizing<Vec<u8>>,
) -> Result<Vec<RecordBatch>, EngineError> {
    // The reader wants `Bytes`: take the buffer over without a copy.
    let bytes = bytes::Bytes::from(std::mem::take(&mut *file));
    let parsed = decode_parquet(shape, &bytes);
    zeroize_unless_shared(bytes);
    parsed
}

/// Zeroizes plaintext the decoder is done with, unless a batch still points into it (then it
/// is part of the held data).
fn zeroize_unless_shared(bytes: bytes::Bytes) {
    if let Ok(mut owned) = bytes.try_into_mut() {
        owned.zeroize();
    }
}

/// A Parquet file kura's own checks refuse, with kura's reason.
fn unreadable(dataset: &Dataset, why: impl std::fmt::Display) -> EngineError {
    EngineError::schema(&dataset.name, format!("not a readable Parquet file: {why}"))
}

/// A Parquet decoding error, without the decoder's words (which may quote a value).
fn undecodable(dataset: &Dataset) -> EngineError {
    unreadable(
        dataset,
        "its metadata or a column chunk could not be decoded",
    )
}

/// Decodes a whole Parquet file, one row group per job on the parsing pool, in file order.
/// When this returns, no job holds `bytes` any more.
fn decode_parquet(
    shape: &Arc<Shape>,
    bytes: &bytes::Bytes,
) -> Result<Vec<RecordBatch>, EngineError> {
    let dataset = &shape.declared;
    let meta = ArrowReaderMetadata::load(bytes, ArrowReaderOptions::default())
        .map_err(|_| undecodable(dataset))?;
    check_parquet_schema(dataset, &meta)?;
    let meta = with_string_views(dataset, meta)?;
    let mut parallel = Parallel::default();
    for group in 0..meta.metadata().num_row_groups() {
        let (shape, bytes, meta) = (shape.clone(), bytes.clone(), meta.clone());
        parallel.submit(Box::new(move || {
            decode_row_groups(&shape, bytes, meta, vec![group])
        }))?;
    }
    parallel.finish()
}

/// The file must carry the contract's columns, each in a type that converts losslessly.
fn check_parquet_schema(dataset: &Dataset, meta: &ArrowReaderMetadata) -> Result<(), EngineError> {
    let schema = meta.schema();
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
    Ok(())
}

/// The reader's metadata, set to decode text straight into string views (the type text is held
/// as), which spares a copy of every string.
fn with_string_views(
    dataset: &Dataset,
    meta: ArrowReaderMetadata,
) -> Result<ArrowReaderMetadata, EngineError> {
    let fields: Vec<Field> = meta
        .schema()
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Utf8 | DataType::LargeUtf8 => {
                f.as_ref().clone().with_data_type(DataType::Utf8View)
            }
            _ => f.as_ref().clone(),
        })
        .collect();
    let options = ArrowReaderOptions::new().with_schema(Arc::new(Schema::new(fields)));
    ArrowReaderMetadata::try_new(meta.metadata().clone(), options).map_err(|_| undecodable(dataset))
}

/// Decodes `row_groups`, only the kept columns of them.
fn decode_row_groups<R: ChunkReader + 'static>(
    shape: &Shape,
    reader: R,
    meta: ArrowReaderMetadata,
    row_groups: Vec<usize>,
) -> Result<Vec<RecordBatch>, EngineError> {
    let dataset = &shape.declared;
    // The file's columns are flat (checked against the contract), so roots are columns.
    let kept = meta
        .schema()
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| shape.kept.column(f.name()).is_some())
        .map(|(i, _)| i);
    let mask = ProjectionMask::roots(meta.parquet_schema(), kept);
    ParquetRecordBatchReaderBuilder::new_with_metadata(reader, meta)
        .with_projection(mask)
        .with_row_groups(row_groups)
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(|_| undecodable(dataset))?
        .map(|batch| {
            let batch = to_contract_order(&shape.kept, batch.map_err(|_| undecodable(dataset))?)?;
            Ok(own_strings(batch))
        })
        .collect()
}

/// String views decoded from Parquet point into the file's pages. Held data gets buffers of its
/// own (none at all when every string is short enough to sit inline in its view, as codes and
/// categories are), so that the file's plaintext can be zeroized and freed after decoding.
fn own_strings(batch: RecordBatch) -> RecordBatch {
    use datafusion::arrow::array::{Array, AsArray};
    let columns = batch
        .columns()
        .iter()
        .map(|c| match c.data_type() {
            DataType::Utf8View => Arc::new(c.as_string_view().gc()) as Arc<dyn Array>,
            _ => c.clone(),
        })
        .collect();
    RecordBatch::try_new(batch.schema(), columns).expect("same schema")
}

/// A Parquet file arriving footer first ([`InputFormat::ParquetFooterFirst`]): the prefix and
/// footer are gathered and checked against the contract before any data arrives; then each row
/// group's bytes are gathered in a buffer of their own and decoded on the pool as soon as they
/// are complete. Bytes outside row groups (the leading magic, page indexes) are not kept.
#[derive(Debug, Default)]
struct FooterFirst {
    /// The prefix and the footer, until both are complete.
    head: Zeroizing<Vec<u8>>,
    body: Option<Box<ParquetBody>>,
}

#[derive(Debug)]
struct ParquetBody {
    meta: ArrowReaderMetadata,
    file_len: u64,
    /// The file without its footer: the bytes that follow the footer in the stream.
    body_len: u64,
    received: u64,
    /// The body's byte ranges that hold row groups, in file order.
    segments: Vec<Segment>,
    /// The segment being gathered, and its bytes so far.
    next: usize,
    current: Zeroizing<Vec<u8>>,
    parallel: Parallel,
}

/// Row groups whose column chunks all lie in `start..end`.
#[derive(Debug)]
struct Segment {
    start: u64,
    end: u64,
    row_groups: Vec<usize>,
}

impl FooterFirst {
    fn push(&mut self, shape: &Arc<Shape>, mut piece: &[u8]) -> Result<(), EngineError> {
        let dataset = &shape.declared;
        while self.body.is_none() && !piece.is_empty() {
            let wanted = if self.head.len() < FOOTER_FIRST_PREFIX {
                FOOTER_FIRST_PREFIX
            } else {
                FOOTER_FIRST_PREFIX + self.footer_len(dataset)? as usize
            };
            let take = (wanted - self.head.len()).min(piece.len());
            extend_zeroizing(&mut self.head, &piece[..take]);
            piece = &piece[take..];
            if self.head.len() == wanted && wanted > FOOTER_FIRST_PREFIX {
                self.body = Some(Box::new(ParquetBody::start(dataset, &self.head)?));
                self.head = Zeroizing::default();
            }
        }
        match &mut self.body {
            Some(body) => body.push(shape, piece),
            None => Ok(()),
        }
    }

    /// The footer's length, from the prefix, checked against the file's length and the limit.
    fn footer_len(&self, dataset: &Dataset) -> Result<u64, EngineError> {
        let (file_len, footer_len) = prefix(&self.head);
        let refuse = |why: String| Err(unreadable(dataset, why));
        if footer_len > MAX_FOOTER {
            return refuse(format!(
                "its footer of {footer_len} bytes exceeds the limit of {} MiB",
                MAX_FOOTER >> 20
            ));
        }
        if footer_len < 8 || footer_len + 4 > file_len {
            return refuse(format!(
                "a footer of {footer_len} bytes does not fit a file of {file_len} bytes"
            ));
        }
        Ok(footer_len)
    }

    fn finish(self, shape: &Arc<Shape>) -> Result<Vec<RecordBatch>, EngineError> {
        let Some(body) = self.body else {
            return Err(unreadable(
                &shape.declared,
                "the upload ended before the file's footer was complete",
            ));
        };
        body.finish(shape)
    }
}

/// The file's length and its footer's length, from the first 16 bytes of `head`.
fn prefix(head: &[u8]) -> (u64, u64) {
    let word = |at: usize| u64::from_le_bytes(head[at..at + 8].try_into().expect("8 bytes"));
    (word(0), word(8))
}

impl ParquetBody {
    /// Reads the footer at the end of `head` (after the prefix) and checks the file's schema
    /// and layout.
    fn start(dataset: &Dataset, head: &[u8]) -> Result<Self, EngineError> {
        let (file_len, footer_len) = prefix(head);
        let footer = &head[FOOTER_FIRST_PREFIX..];
        let refuse = |why: &str| unreadable(dataset, why);
        let (metadata, tail) = footer.split_at(footer.len() - 8);
        if &tail[4..] != PARQUET_MAGIC {
            return Err(refuse("its footer does not end with PAR1"));
        }
        let metadata_len = u32::from_le_bytes(tail[..4].try_into().expect("4 bytes"));
        if u64::from(metadata_len) + 8 != footer_len {
            return Err(refuse("the footer's length does not match its metadata's"));
        }
        let metadata =
            ParquetMetaDataReader::decode_metadata(metadata).map_err(|_| undecodable(dataset))?;
        let meta = ArrowReaderMetadata::try_new(Arc::new(metadata), ArrowReaderOptions::default())
            .map_err(|_| undecodable(dataset))?;
        check_parquet_schema(dataset, &meta)?;
        let meta = with_string_views(dataset, meta)?;
        let body_len = file_len - footer_len;
        let segments = segments(dataset, &meta, body_len)?;
        Ok(Self {
            meta,
            file_len,
            body_len,
            received: 0,
            segments,
            next: 0,
            current: Zeroizing::default(),
            parallel: Parallel::default(),
        })
    }

    fn push(&mut self, shape: &Arc<Shape>, mut piece: &[u8]) -> Result<(), EngineError> {
        let dataset = &shape.declared;
        if self.received + piece.len() as u64 > self.body_len {
            return Err(unreadable(
                dataset,
                format!(
                    "the upload is longer than the {} bytes the file declares",
                    self.file_len
                ),
            ));
        }
        while !piece.is_empty() {
            let at = self.received;
            let (take, keep) = match self.segments.get(self.next) {
                None => (piece.len() as u64, false),
                Some(s) if at < s.start => ((s.start - at).min(piece.len() as u64), false),
                Some(s) => ((s.end - at).min(piece.len() as u64), true),
            };
            let (now, rest) = piece.split_at(take as usize);
            if at < PARQUET_MAGIC.len() as u64 {
                let expected = &PARQUET_MAGIC[at as usize..];
                let n = expected.len().min(now.len());
                if now[..n] != expected[..n] {
                    return Err(unreadable(dataset, "the file does not start with PAR1"));
                }
            }
            if keep {
                if self.current.capacity() == 0 {
                    let s = &self.segments[self.next];
                    // Room for the decrypted chunk that crosses the segment's end too, so
                    // that appending it in place does not make the buffer grow.
                    self.current = Zeroizing::new(Vec::with_capacity(
                        (s.end - s.start).min(MAX_RESERVE) as usize + SEGMENT_SLACK,
                    ));
                }
                extend_zeroizing(&mut self.current, now);
            }
            self.received += take;
            piece = rest;
            self.dispatch_complete(shape)?;
        }
        Ok(())
    }

    /// Whether the next bytes belong to a row group's segment, so can be appended to its
    /// buffer directly ([`Ingest::push_with`]).
    fn in_row_group(&self) -> bool {
        self.segments
            .get(self.next)
            .is_some_and(|s| (s.start..s.end).contains(&self.received))
            && self.current.capacity() > 0
    }

    /// Takes in what was appended to the current segment's buffer from `start` on: what falls
    /// past the segment's end is taken out and pushed as any other bytes.
    fn appended(&mut self, shape: &Arc<Shape>, start: usize) -> Result<(), EngineError> {
        let room = self.segments[self.next].end - self.received;
        let added = (self.current.len() - start) as u64;
        if added <= room {
            self.received += added;
            return self.dispatch_complete(shape);
        }
        let end = start + room as usize;
        let past = Zeroizing::new(self.current[end..].to_vec());
        self.current[end..].zeroize();
        self.current.truncate(end);
        self.received += room;
        self.dispatch_complete(shape)?;
        self.push(shape, &past)
    }

    /// Hands every segment whose bytes have all arrived to the pool.
    fn dispatch_complete(&mut self, shape: &Arc<Shape>) -> Result<(), EngineError> {
        while let Some(s) = self.segments.get(self.next) {
            if self.received < s.end {
                return Ok(());
            }
            let chunk = RowGroupBytes {
                start: s.start,
                file_len: self.file_len,
                bytes: bytes::Bytes::from(std::mem::take(&mut *self.current)),
            };
            let (shape, meta, row_groups) =
                (shape.clone(), self.meta.clone(), s.row_groups.clone());
            self.parallel.submit(Box::new(move || {
                let bytes = chunk.bytes.clone();
                let parsed = decode_row_groups(&shape, chunk, meta, row_groups);
                zeroize_unless_shared(bytes);
                parsed
            }))?;
            self.next += 1;
        }
        Ok(())
    }

    fn finish(mut self, shape: &Arc<Shape>) -> Result<Vec<RecordBatch>, EngineError> {
        if self.received != self.body_len {
            return Err(unreadable(
                &shape.declared,
                format!(
                    "the upload ended {} bytes before the end of the file",
                    self.body_len - self.received
                ),
            ));
        }
        self.dispatch_complete(shape)?;
        self.parallel.finish()
    }
}

/// Where the row groups lie in the body. Each is decoded once its bytes have arrived, which
/// needs them laid out in file order without overlap, as writers do; a file laid out otherwise
/// is decoded in one piece at the end.
fn segments(
    dataset: &Dataset,
    meta: &ArrowReaderMetadata,
    body_len: u64,
) -> Result<Vec<Segment>, EngineError> {
    let mut segments = Vec::new();
    for (i, group) in meta.metadata().row_groups().iter().enumerate() {
        let mut range: Option<(u64, u64)> = None;
        for column in group.columns() {
            let start = column
                .dictionary_page_offset()
                .unwrap_or(column.data_page_offset());
            let (start, len) = (
                u64::try_from(start),
                u64::try_from(column.compressed_size()),
            );
            let (Ok(start), Ok(len)) = (start, len) else {
                return Err(unreadable(dataset, "a column chunk has a negative offset"));
            };
            let end = start.saturating_add(len);
            if start < PARQUET_MAGIC.len() as u64 || end > body_len {
                return Err(unreadable(
                    dataset,
                    format!("row group {i} has a column chunk outside the file's data"),
                ));
            }
            range = Some(range.map_or((start, end), |(s, e)| (s.min(start), e.max(end))));
        }
        if let Some((start, end)) = range {
            segments.push(Segment {
                start,
                end,
                row_groups: vec![i],
            });
        }
    }
    if segments.windows(2).all(|w| w[0].end <= w[1].start) {
        return Ok(segments);
    }
    let start = segments.iter().map(|s| s.start).min().unwrap_or(0);
    let end = segments.iter().map(|s| s.end).max().unwrap_or(0);
    Ok(vec![Segment {
        start,
        end,
        row_groups: segments.into_iter().flat_map(|s| s.row_groups).collect(),
    }])
}

/// Some of a Parquet file's bytes, read at the file's offsets; reading outside them is an
/// error (the metadata said the row group lies within them).
struct RowGroupBytes {
    start: u64,
    file_len: u64,
    bytes: bytes::Bytes,
}

impl Length for RowGroupBytes {
    fn len(&self) -> u64 {
        self.file_len
    }
}

impl ChunkReader for RowGroupBytes {
    type T = bytes::buf::Reader<bytes::Bytes>;

    fn get_read(&self, start: u64) -> ParquetResult<Self::T> {
        let to_end = (self.start + self.bytes.len() as u64).saturating_sub(start);
        Ok(bytes::Buf::reader(self.get_bytes(start, to_end as usize)?))
    }

    fn get_bytes(&self, start: u64, length: usize) -> ParquetResult<bytes::Bytes> {
        start
            .checked_sub(self.start)
            .and_then(|from| {
                let to = from.checked_add(length as u64)?;
                (to <= self.bytes.len() as u64)
                    .then(|| self.bytes.slice(from as usize..to as usize))
            })
            .ok_or_else(|| {
                ParquetError::General(format!(
                    "{length} bytes at offset {start} lie outside the row group"
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_buffer_is_zeroized_before_it_is_reused() {
        let spares = Spares::default();
        let mut buf = spares.take();
        assert!(buf.is_empty() && buf.capacity() >= CSV_BUFFER);
        buf.extend_from_slice(&[0xAB; 3000]);
        let at = buf.as_ptr();
        spares.give(buf);
        // Kept zeroized: every byte that held plaintext is zero.
        let kept = spares.0.lock().unwrap();
        assert_eq!(kept.len(), 1);
        assert!(kept[0].len() == 3000 && kept[0].iter().all(|b| *b == 0));
        drop(kept);
        // Handed out again: the same allocation, empty.
        let again = spares.take();
        assert_eq!(again.as_ptr(), at);
        assert!(again.is_empty());
    }
}
