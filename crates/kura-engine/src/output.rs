//! Applies the threshold to executed batches and renders what may leave as JSON values.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray};
use datafusion::arrow::compute::{cast, filter};
use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use serde_json::Value;

use crate::EngineError;
use crate::threshold::{Check, Counted};

/// A rule-checked result.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
    /// Groups removed by the threshold (how many, never which).
    pub suppressed_groups: u64,
    /// Datasets the query read.
    pub datasets: Vec<String>,
    /// For a differentially private release: ε and δ spent, and each statistic's noise.
    pub dp: Option<Value>,
}

/// The groups of a counted aggregation that may be released: its own columns (named `c0`,
/// `c1`, ... for [`crate::threshold::substitute`]) of the rows whose every hidden count passes
/// its check, and how many rows were dropped.
pub(crate) fn release(
    batches: &[RecordBatch],
    counted: &Counted,
    min_group_size: u64,
) -> Result<(SchemaRef, Vec<RecordBatch>, u64), EngineError> {
    let own = counted.plan.schema().as_arrow().fields()[..counted.visible]
        .iter()
        .enumerate()
        .map(|(i, f)| Field::new(format!("c{i}"), f.data_type().clone(), true))
        .collect::<Vec<_>>();
    let schema = Arc::new(Schema::new(own));
    let mut kept = Vec::new();
    let mut suppressed = 0u64;
    for batch in batches {
        if batch.num_columns() != counted.visible + counted.checks.len() {
            return Err(EngineError::Execution(
                "threshold counts missing from the plan output".into(),
            ));
        }
        let counts: Vec<_> = (counted.visible..batch.num_columns())
            .map(|i| cast(batch.column(i), &DataType::Int64))
            .collect::<Result<_, _>>()
            .map_err(|e| EngineError::Execution(e.to_string()))?;
        let keep: BooleanArray = (0..batch.num_rows())
            .map(|row| {
                let pass = counts.iter().zip(&counted.checks).all(|(c, check)| {
                    let c = c.as_primitive::<Int64Type>();
                    if c.is_null(row) {
                        return false;
                    }
                    let n = c.value(row).max(0) as u64;
                    match check {
                        Check::AtLeast => n >= min_group_size,
                        Check::ZeroOrAtLeast => n == 0 || n >= min_group_size,
                    }
                });
                Some(pass)
            })
            .collect();
        suppressed += (batch.num_rows() - keep.true_count()) as u64;
        let columns = batch.columns()[..counted.visible]
            .iter()
            .map(|c| filter(c, &keep))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| EngineError::Execution(e.to_string()))?;
        kept.push(
            RecordBatch::try_new(schema.clone(), columns)
                .map_err(|e| EngineError::Execution(e.to_string()))?,
        );
    }
    Ok((schema, kept, suppressed))
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
    Ok(match array.data_type() {
        DataType::Boolean => Value::Bool(array.as_boolean().value(row)),
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32 => {
            let a = cast(&array.slice(row, 1), &DataType::Int64).map_err(err)?;
            Value::from(a.as_primitive::<Int64Type>().value(0))
        }
        DataType::UInt64 => Value::from(
            array
                .as_primitive::<datafusion::arrow::datatypes::UInt64Type>()
                .value(row),
        ),
        DataType::Float16 | DataType::Float32 | DataType::Float64 => {
            let a = cast(&array.slice(row, 1), &DataType::Float64).map_err(err)?;
            serde_json::Number::from_f64(a.as_primitive::<Float64Type>().value(0))
                .map_or(Value::Null, Value::Number)
        }
        _ => {
            let options = FormatOptions::default();
            let f = ArrayFormatter::try_new(array.as_ref(), &options).map_err(err)?;
            Value::String(f.value(row).to_string())
        }
    })
}
