//! Turns an uploaded file (already decrypted) into record batches of the contract's schema.
//!
//! The file must carry exactly the columns the contract declares for the dataset (in any
//! order): an extra column would bring data nobody agreed to share, a missing one would make
//! analyses fail later. Values must parse as the declared types.

use std::io::Cursor;
use std::sync::Arc;

use datafusion::arrow::compute::cast;
use datafusion::arrow::csv::ReaderBuilder;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use kura_contract::{ColumnType, Dataset};
use serde::{Deserialize, Serialize};

use crate::EngineError;

/// Rows per record batch when parsing CSV.
const BATCH_ROWS: usize = 64 * 1024;

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

fn arrow_type(ty: ColumnType) -> DataType {
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
    match format {
        InputFormat::Csv => load_csv(dataset, bytes),
        InputFormat::Parquet => load_parquet(dataset, bytes),
    }
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

fn load_csv(dataset: &Dataset, bytes: &[u8]) -> Result<Vec<RecordBatch>, EngineError> {
    let header_end = bytes
        .iter()
        .position(|b| *b == b'\n')
        .unwrap_or(bytes.len());
    let header = std::str::from_utf8(&bytes[..header_end])
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
    let file_schema = Arc::new(Schema::new(
        names
            .iter()
            .map(|n| Field::new(*n, arrow_type(dataset.column(n).expect("checked").ty), true))
            .collect::<Vec<_>>(),
    ));
    let reader = ReaderBuilder::new(file_schema)
        .with_header(true)
        .with_batch_size(BATCH_ROWS)
        .build(Cursor::new(bytes))
        .map_err(|e| EngineError::schema(&dataset.name, e.to_string()))?;
    reader
        .map(|batch| {
            let batch = batch
                .map_err(|e| EngineError::schema(&dataset.name, format!("bad CSV value: {e}")))?;
            to_contract_order(dataset, batch)
        })
        .collect()
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

fn load_parquet(dataset: &Dataset, bytes: &[u8]) -> Result<Vec<RecordBatch>, EngineError> {
    let bad = |e: &dyn std::fmt::Display| {
        EngineError::schema(&dataset.name, format!("not a readable Parquet file: {e}"))
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::copy_from_slice(bytes))
        .map_err(|e| bad(&e))?;
    let schema = builder.schema().clone();
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
    let reader = builder
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(|e| bad(&e))?;
    reader
        .map(|batch| to_contract_order(dataset, batch.map_err(|e| bad(&e))?))
        .collect()
}
