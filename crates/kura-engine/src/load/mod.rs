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

mod csv;
mod pages;
mod parquet;
mod pool;

use std::sync::Arc;

use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use kura_contract::{ColumnType, Dataset};
use kura_crypto::extend_zeroizing;
use zeroize::{Zeroize, Zeroizing};

pub use kura_api::UploadFormat;

use crate::EngineError;
use csv::{CSV_BLOCK, CsvIngest};
use parquet::{FooterFirst, load_parquet};

/// Rows per record batch when parsing CSV.
pub(crate) const BATCH_ROWS: usize = 64 * 1024;

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
    format: UploadFormat,
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
pub(crate) fn compatible(found: &DataType, wanted: ColumnType) -> bool {
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
    /// A model file: not a dataset, refused at its first byte.
    Model,
}

impl Ingest {
    /// An upload of `dataset` whose every column is kept.
    pub fn new(dataset: &Dataset, format: UploadFormat) -> Self {
        Self::keeping(dataset, format, |_| true)
    }

    /// An upload of `dataset` that keeps only the columns `keep` accepts (by name). The file
    /// must still carry every declared column in a declared type, and every CSV value is still
    /// parsed, but the other columns are dropped as soon as they are parsed (CSV) or never
    /// decoded at all (Parquet).
    pub fn keeping(dataset: &Dataset, format: UploadFormat, keep: impl Fn(&str) -> bool) -> Self {
        let mut kept = dataset.clone();
        kept.columns.retain(|c| keep(&c.name));
        Self {
            shape: Arc::new(Shape {
                declared: dataset.clone(),
                kept,
            }),
            format: match format {
                UploadFormat::Csv => Format::Csv(Box::default()),
                UploadFormat::Parquet => Format::Parquet(Zeroizing::new(Vec::new())),
                UploadFormat::ParquetFooterFirst => Format::ParquetFooterFirst(Box::default()),
                UploadFormat::Onnx => Format::Model,
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
            Format::Model => Err(not_a_dataset(&self.shape)),
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

    /// The record batches parsed so far that [`Ingest::take_ready`] has not yet given out, in
    /// file order: a caller can write them on while the file is still arriving, so that an
    /// upload is never held decoded whole. What comes back here is still subject to the
    /// file's end: a later refusal refuses the whole upload. A piece that failed to parse
    /// refuses the upload here already.
    pub fn take_ready(&mut self) -> Result<Vec<RecordBatch>, EngineError> {
        match &mut self.format {
            Format::Csv(csv) => csv.parallel.ready(),
            Format::ParquetFooterFirst(p) => match p.body.as_mut() {
                Some(body) => body.parallel.ready(),
                None => Ok(Vec::new()),
            },
            Format::Parquet(_) | Format::Model => Ok(Vec::new()),
        }
    }

    /// The whole file has arrived: the record batches not yet taken, in file order, in the
    /// contract's column order.
    pub fn finish(self) -> Result<Vec<RecordBatch>, EngineError> {
        match self.format {
            Format::Csv(csv) => csv.finish(&self.shape),
            Format::Parquet(file) => load_parquet(&self.shape, file),
            Format::ParquetFooterFirst(parquet) => parquet.finish(&self.shape),
            Format::Model => Err(not_a_dataset(&self.shape)),
        }
    }
}

fn not_a_dataset(shape: &Shape) -> EngineError {
    EngineError::schema(
        &shape.declared.name,
        "an ONNX file is a model: a dataset is uploaded as CSV or Parquet",
    )
}

#[cfg(test)]
impl Ingest {
    /// Pieces of the file handed to the parsing threads so far.
    pub(crate) fn pieces_handed_out(&self) -> usize {
        match &self.format {
            Format::Csv(csv) => csv.parallel.sent,
            Format::Parquet(_) | Format::Model => 0,
            Format::ParquetFooterFirst(p) => p.body.as_ref().map_or(0, |b| b.parallel.sent),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::csv::{CSV_BUFFER, Spares};

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
