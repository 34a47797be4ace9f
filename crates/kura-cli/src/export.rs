//! A result as a typed Arrow record batch, written as Parquet or Arrow IPC for the receiver's
//! own tools. The column types travel inside the enclave-signed result; the run, the analysis,
//! the suppressed-group count and any DP report go into the file's schema metadata, so that a
//! file keeps saying what it is after it leaves kura.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use kura_api::ResultTable;
use kura_contract::ColumnType;
use serde_json::Value;

/// The result's rows as one record batch of its declared types (inferred from the values for
/// results that predate typed results).
pub fn record_batch(t: &ResultTable) -> Result<RecordBatch> {
    let types: Vec<ColumnType> = if t.types.len() == t.columns.len() {
        t.types.clone()
    } else {
        (0..t.columns.len()).map(|i| inferred(t, i)).collect()
    };
    let mut fields = Vec::with_capacity(t.columns.len());
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(t.columns.len());
    for (i, (name, ty)) in t.columns.iter().zip(&types).enumerate() {
        let values = || t.rows.iter().map(move |r| r.get(i).unwrap_or(&Value::Null));
        let array: ArrayRef = match ty {
            ColumnType::Int64 => {
                Arc::new(Int64Array::from(typed(values(), Value::as_i64, name, *ty)?))
            }
            ColumnType::Float64 => Arc::new(Float64Array::from(typed(
                values(),
                Value::as_f64,
                name,
                *ty,
            )?)),
            ColumnType::Boolean => Arc::new(BooleanArray::from(typed(
                values(),
                Value::as_bool,
                name,
                *ty,
            )?)),
            ColumnType::Utf8 | ColumnType::Date => {
                let text: StringArray = values().map(text).collect();
                if *ty == ColumnType::Date {
                    arrow::compute::cast(&text, &DataType::Date32)
                        .with_context(|| format!("column {name:?} is declared date"))?
                } else {
                    Arc::new(text)
                }
            }
        };
        fields.push(Field::new(name, array.data_type().clone(), true));
        arrays.push(array);
    }
    let schema = Schema::new(fields).with_metadata(metadata(t));
    RecordBatch::try_new(Arc::new(schema), arrays).context("building the result's record batch")
}

/// Each value as the declared type `ty` (nulls stay null), or which column holds what.
fn typed<'a, T>(
    values: impl Iterator<Item = &'a Value>,
    get: fn(&Value) -> Option<T>,
    name: &str,
    ty: ColumnType,
) -> Result<Vec<Option<T>>> {
    values
        .map(|v| match v {
            Value::Null => Ok(None),
            v => get(v).map(Some).with_context(|| {
                format!("column {name:?} is declared {} but holds {v}", ty.as_str())
            }),
        })
        .collect()
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// A column's type from its values: integers, numbers, booleans, or text.
fn inferred(t: &ResultTable, i: usize) -> ColumnType {
    let values = || {
        t.rows
            .iter()
            .filter_map(|r| r.get(i))
            .filter(|v| !v.is_null())
    };
    if values().all(|v| v.is_i64()) {
        ColumnType::Int64
    } else if values().all(Value::is_number) {
        ColumnType::Float64
    } else if values().all(Value::is_boolean) {
        ColumnType::Boolean
    } else {
        ColumnType::Utf8
    }
}

fn metadata(t: &ResultTable) -> HashMap<String, String> {
    let mut m = HashMap::from([
        ("kura.run_id".to_string(), t.run_id.clone()),
        ("kura.analysis".to_string(), t.analysis.clone()),
        (
            "kura.suppressed_groups".to_string(),
            t.suppressed_groups.to_string(),
        ),
    ]);
    if let Some(dp) = &t.dp {
        m.insert("kura.dp".to_string(), serde_json::json!(dp).to_string());
    }
    m
}

/// The result as a Parquet file.
pub fn parquet(t: &ResultTable) -> Result<Vec<u8>> {
    let batch = record_batch(t)?;
    let mut out = Vec::new();
    let mut writer = parquet::arrow::ArrowWriter::try_new(&mut out, batch.schema(), None)?;
    writer.write(&batch)?;
    writer.close()?;
    Ok(out)
}

/// The result as an Arrow IPC file.
pub fn arrow_ipc(t: &ResultTable) -> Result<Vec<u8>> {
    let batch = record_batch(t)?;
    let mut out = Vec::new();
    let mut writer = arrow::ipc::writer::FileWriter::try_new(&mut out, &batch.schema())?;
    writer.write(&batch)?;
    writer.finish()?;
    drop(writer);
    Ok(out)
}

/// One result for a binary format: several cannot share one file.
pub fn single(tables: &[ResultTable]) -> Result<&ResultTable> {
    match tables {
        [one] => Ok(one),
        _ => bail!(
            "{} results are sealed to you: choose one with --run (a Parquet or Arrow file holds one table)",
            tables.len()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    fn table() -> ResultTable {
        serde_json::from_value(serde_json::json!({
            "run_id": "run-1", "analysis": "by_band",
            "columns": ["band", "day", "people", "rate", "flag"],
            "types": ["utf8", "date", "int64", "float64", "boolean"],
            "rows": [["högh", "2026-01-31", 40, 0.25, true], [null, null, null, null, null]],
            "suppressed_groups": 2
        }))
        .unwrap()
    }

    #[test]
    fn parquet_and_arrow_carry_the_types_and_the_provenance() {
        let t = table();
        let bytes = bytes::Bytes::from(parquet(&t).unwrap());
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap();
        let schema = reader.schema().clone();
        let types: Vec<&DataType> = schema.fields().iter().map(|f| f.data_type()).collect();
        assert_eq!(
            types,
            [
                &DataType::Utf8,
                &DataType::Date32,
                &DataType::Int64,
                &DataType::Float64,
                &DataType::Boolean
            ]
        );
        assert_eq!(schema.metadata()["kura.run_id"], "run-1");
        assert_eq!(schema.metadata()["kura.suppressed_groups"], "2");
        let batch = reader.build().unwrap().next().unwrap().unwrap();
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.column(1).null_count(), 1);
        let back = arrow::util::display::array_value_to_string(batch.column(1), 0).unwrap();
        assert_eq!(back, "2026-01-31");

        let ipc = arrow_ipc(&t).unwrap();
        let reader =
            arrow::ipc::reader::FileReader::try_new(std::io::Cursor::new(ipc), None).unwrap();
        assert_eq!(reader.schema().field(2).data_type(), &DataType::Int64);
    }

    #[test]
    fn a_value_against_its_declared_type_is_refused_and_old_results_are_inferred() {
        let mut t = table();
        t.rows[0][2] = serde_json::json!("forty");
        let err = format!("{:#}", record_batch(&t).unwrap_err());
        assert!(err.contains("\"people\" is declared int64"), "{err}");

        let mut old = table();
        old.types.clear();
        let batch = record_batch(&old).unwrap();
        let types: Vec<DataType> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        assert_eq!(
            types,
            [
                DataType::Utf8,
                DataType::Utf8,
                DataType::Int64,
                DataType::Float64,
                DataType::Boolean
            ]
        );
    }
}
