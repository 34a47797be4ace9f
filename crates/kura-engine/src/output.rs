//! Applies the threshold to executed batches and renders what may leave as JSON values.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray};
use datafusion::arrow::compute::{cast, filter};
use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use kura_contract::ColumnType;
use serde_json::Value;

use crate::EngineError;
use crate::overlap::Overlap;
use crate::threshold::{Check, Counted};

/// A rule-checked result.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    pub columns: Vec<String>,
    /// Each column's type, so that receivers can write typed files (Parquet, Arrow IPC).
    /// Types without a contract name (timestamps, intervals, ...) travel as `utf8` text.
    pub types: Vec<ColumnType>,
    pub rows: Vec<Vec<Value>>,
    /// Groups removed by the threshold (how many, never which).
    pub suppressed_groups: u64,
    /// Datasets the query read.
    pub datasets: Vec<String>,
    /// For a differentially private release: ε and δ spent, and each statistic's noise.
    pub dp: Option<kura_contract::dp::DpReport>,
    /// A trained model's ONNX file, released with its table.
    pub onnx: Option<Vec<u8>>,
}

/// The released groups of one aggregation.
pub(crate) struct Released {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub suppressed: u64,
}

/// The groups of a counted aggregation that may be released: its own columns (named `c0`,
/// `c1`, ... for [`crate::threshold::substitute`]) of the rows whose every hidden count passes
/// its check and, under overlap control, whose every cell passes [`Overlap::check`] against
/// what was released before and the answer's `cells` so far (which the kept rows' join).
pub(crate) fn release(
    batches: &[RecordBatch],
    counted: &Counted,
    min_group_size: u64,
    overlap: Option<&Overlap>,
    cells: &mut Vec<crate::overlap::Cell>,
) -> Result<Released, EngineError> {
    let own = counted.plan.schema().as_arrow().fields()[..counted.visible]
        .iter()
        .enumerate()
        .map(|(i, f)| Field::new(format!("c{i}"), f.data_type().clone(), true))
        .collect::<Vec<_>>();
    let schema = Arc::new(Schema::new(own));
    let mut released = Released {
        schema: schema.clone(),
        batches: Vec::new(),
        suppressed: 0,
    };
    let failed = |e: datafusion::arrow::error::ArrowError| EngineError::Execution(e.to_string());
    for batch in batches {
        if batch.num_columns() != counted.visible + counted.checks.len() {
            return Err(EngineError::Execution(
                "threshold counts missing from the plan output".into(),
            ));
        }
        let mut keep = vec![true; batch.num_rows()];
        let (mut keys, mut sets) = (Vec::new(), Vec::new());
        for (i, check) in counted.checks.iter().enumerate() {
            let column = batch.column(counted.visible + i);
            let bound = match check {
                Check::Cell(key) => {
                    keys.push(key.clone());
                    sets.push(crate::overlap::sets(column)?);
                    continue;
                }
                Check::AtLeast => |n: u64, min: u64| n >= min,
                Check::ZeroOrAtLeast => |n: u64, min: u64| n == 0 || n >= min,
                Check::AtMost(most) => {
                    let most = *most;
                    let counts = cast(column, &DataType::Int64).map_err(failed)?;
                    let counts = counts.as_primitive::<Int64Type>();
                    for (row, keep) in keep.iter_mut().enumerate() {
                        *keep &= counts.is_valid(row) && counts.value(row).max(0) as u64 <= most;
                    }
                    continue;
                }
            };
            let counts = cast(column, &DataType::Int64).map_err(failed)?;
            let counts = counts.as_primitive::<Int64Type>();
            for (row, keep) in keep.iter_mut().enumerate() {
                *keep &=
                    counts.is_valid(row) && bound(counts.value(row).max(0) as u64, min_group_size);
            }
        }
        // Pooled groups: rows of enough of the pool's datasets (their group counts above zero).
        for (min, of) in &counted.pooled {
            let mut present = vec![0u64; batch.num_rows()];
            for &i in of {
                let counts =
                    cast(batch.column(counted.visible + i), &DataType::Int64).map_err(failed)?;
                let counts = counts.as_primitive::<Int64Type>();
                for (row, n) in present.iter_mut().enumerate() {
                    *n += u64::from(counts.is_valid(row) && counts.value(row) > 0);
                }
            }
            for (keep, n) in keep.iter_mut().zip(present) {
                *keep &= n >= *min;
            }
        }
        if !keys.is_empty() {
            let overlap = overlap.ok_or_else(|| {
                EngineError::Execution("contributor sets without overlap control".into())
            })?;
            overlap.check(&keys, &sets, &mut keep, min_group_size, cells);
        }
        let keep = BooleanArray::from(keep);
        released.suppressed += (batch.num_rows() - keep.true_count()) as u64;
        let columns = batch.columns()[..counted.visible]
            .iter()
            .map(|c| filter(c, &keep))
            .collect::<Result<Vec<_>, _>>()
            .map_err(failed)?;
        released
            .batches
            .push(RecordBatch::try_new(schema.clone(), columns).map_err(failed)?);
    }
    Ok(released)
}

/// How a value of `data_type` travels in a result (see [`Output::types`]); the same
/// classification [`value`] renders with.
pub(crate) fn column_type(data_type: &DataType) -> ColumnType {
    match data_type {
        DataType::Boolean => ColumnType::Boolean,
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => ColumnType::Int64,
        DataType::Float16 | DataType::Float32 | DataType::Float64 => ColumnType::Float64,
        DataType::Date32 | DataType::Date64 => ColumnType::Date,
        _ => ColumnType::Utf8,
    }
}

/// The result types of `plan`'s output columns.
pub(crate) fn column_types(plan: &datafusion::logical_expr::LogicalPlan) -> Vec<ColumnType> {
    plan.schema()
        .fields()
        .iter()
        .map(|f| column_type(f.data_type()))
        .collect()
}

/// The names of `plan`'s output columns.
pub(crate) fn column_names(plan: &datafusion::logical_expr::LogicalPlan) -> Vec<String> {
    plan.schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect()
}

/// Every row of `batches` as JSON values.
pub(crate) fn rows(batches: &[RecordBatch]) -> Result<Vec<Vec<Value>>, EngineError> {
    let mut rows = Vec::new();
    for batch in batches {
        for row in 0..batch.num_rows() {
            rows.push(
                batch
                    .columns()
                    .iter()
                    .map(|c| value(c, row))
                    .collect::<Result<Vec<_>, _>>()?,
            );
        }
    }
    Ok(rows)
}

pub(crate) fn value(array: &ArrayRef, row: usize) -> Result<Value, EngineError> {
    if array.is_null(row) {
        return Ok(Value::Null);
    }
    let err = |e: datafusion::arrow::error::ArrowError| EngineError::Execution(e.to_string());
    Ok(match column_type(array.data_type()) {
        ColumnType::Boolean => Value::Bool(array.as_boolean().value(row)),
        // Beyond i64: read as it is rather than cast.
        ColumnType::Int64 if *array.data_type() == DataType::UInt64 => Value::from(
            array
                .as_primitive::<datafusion::arrow::datatypes::UInt64Type>()
                .value(row),
        ),
        ColumnType::Int64 => {
            let a = cast(&array.slice(row, 1), &DataType::Int64).map_err(err)?;
            Value::from(a.as_primitive::<Int64Type>().value(0))
        }
        ColumnType::Float64 => {
            let a = cast(&array.slice(row, 1), &DataType::Float64).map_err(err)?;
            serde_json::Number::from_f64(a.as_primitive::<Float64Type>().value(0))
                .map_or(Value::Null, Value::Number)
        }
        ColumnType::Utf8 | ColumnType::Date => {
            let options = FormatOptions::default();
            let f = ArrayFormatter::try_new(array.as_ref(), &options).map_err(err)?;
            Value::String(f.value(row).to_string())
        }
    })
}
