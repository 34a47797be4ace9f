//! The footer-first Parquet segmenter. A real Parquet file of the input's rows and row-group
//! size, then (as the input says) left alone or changed (a byte flipped, or cut short), is
//! streamed footer first in pieces of any size: an intact file gives exactly its rows, and a
//! changed one gives what reading the same bytes whole gives (the same batches, or a refusal
//! either way), never a panic.
#![no_main]

use std::sync::Arc;

use kura_engine::datafusion::arrow::array::{BooleanArray, StringArray};
use kura_engine::datafusion::arrow::datatypes::{DataType, Field, Schema};
use kura_engine::datafusion::arrow::record_batch::RecordBatch;
use kura_engine::datafusion::parquet::arrow::ArrowWriter;
use kura_engine::datafusion::parquet::file::properties::WriterProperties;
use kura_engine::load::{Ingest, UploadFormat};

fn parquet(rows: &[u8], group: usize) -> Vec<u8> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("patient_id", DataType::Utf8, false),
        Field::new("age_band", DataType::Utf8, false),
        Field::new("diabetes", DataType::Boolean, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(
                rows.iter().enumerate().map(|(i, _)| format!("p{i}")),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|b| format!("band-{}", b % 5)),
            )),
            Arc::new(BooleanArray::from_iter(
                rows.iter().map(|b| Some(b % 2 == 0)),
            )),
        ],
    )
    .unwrap();
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(group))
        .build();
    let mut file = Vec::new();
    let mut w = ArrowWriter::try_new(&mut file, schema, Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    file
}

fn stream(file: &[u8], split: usize) -> Result<Vec<RecordBatch>, String> {
    let (head, rest) =
        kura_api::footer_first(&mut std::io::Cursor::new(file)).map_err(|e| e.to_string())?;
    let mut wire = head;
    wire.extend_from_slice(&file[..rest as usize]);
    let mut ingest = Ingest::new(kura_fuzz::ehr(), UploadFormat::ParquetFooterFirst);
    for part in wire.chunks(split) {
        ingest.push(part).map_err(|e| e.to_string())?;
    }
    ingest.finish().map_err(|e| e.to_string())
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kura_fuzz::only_uncontained_panics();
    if data.len() < 5 {
        return;
    }
    let (head, rows) = data.split_at(5);
    let group = usize::from(head[0]).max(1);
    let split = usize::from(head[1]) * 16 + 1;
    let mut file = parquet(rows, group);
    let at = usize::from(u16::from_le_bytes([head[3], head[4]])) % file.len();
    match head[2] % 3 {
        0 => {
            let got = stream(&file, split).expect("an intact file must load");
            let n: usize = got.iter().map(RecordBatch::num_rows).sum();
            assert_eq!(n, rows.len());
            return;
        }
        1 => file[at] ^= 1 << (head[2] % 8),
        _ => file.truncate(at),
    }
    let streamed = stream(&file, split);
    let whole = kura_engine::load::load(kura_fuzz::ehr(), UploadFormat::Parquet, &file);
    if let (Ok(a), Ok(b)) = (&streamed, &whole) {
        assert_eq!(
            kura_fuzz::rows(a),
            kura_fuzz::rows(b),
            "footer first and whole disagree"
        );
    }
});
