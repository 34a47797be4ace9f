//! Applies the threshold to executed batches and renders what may leave as JSON values.

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use serde_json::Value;

use crate::EngineError;

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

pub(crate) fn suppress_and_render(
    batches: &[RecordBatch],
    visible: usize,
    min_group_size: u64,
    datasets: Vec<String>,
) -> Result<Output, EngineError> {
    let mut columns = Vec::new();
    let mut rows = Vec::new();
    let mut suppressed = 0u64;
    for batch in batches {
        let schema = batch.schema();
        if columns.is_empty() {
            columns = schema.fields()[..visible]
                .iter()
                .map(|f| f.name().clone())
                .collect();
        }
        let counts: Vec<_> = (visible..batch.num_columns())
            .map(|i| cast(batch.column(i), &DataType::Int64))
            .collect::<Result<_, _>>()
            .map_err(|e| EngineError::Execution(e.to_string()))?;
        if counts.is_empty() && min_group_size > 0 {
            return Err(EngineError::Execution(
                "threshold counts missing from the plan output".into(),
            ));
        }
        for row in 0..batch.num_rows() {
            let small = counts.iter().any(|c| {
                let c = c.as_primitive::<Int64Type>();
                c.is_null(row) || (c.value(row) as u64) < min_group_size
            });
            if small {
                suppressed += 1;
                continue;
            }
            let values = (0..visible)
                .map(|i| value(batch.column(i), row))
                .collect::<Result<Vec<_>, _>>()?;
            rows.push(values);
        }
    }
    Ok(Output {
        columns,
        rows,
        suppressed_groups: suppressed,
        datasets,
        dp: None,
    })
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
