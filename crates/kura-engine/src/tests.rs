use std::fmt::Write as _;

use kura_contract::Contract;
use kura_crypto::SecretIdentity;

use super::*;

fn contract(extra_analysis_sql: Option<&str>) -> Contract {
    let h = SecretIdentity::generate();
    let f = SecretIdentity::generate();
    let mut text =
        kura_contract::example::activity_and_diabetes(&h.public().to_text(), &f.public().to_text());
    if let Some(sql) = extra_analysis_sql {
        let analysis = format!(
            "[[analyses]]\nname = \"extra\"\nsql = \"{sql}\"\nreceivers = [\"hospital-a\"]\n\n[output]"
        );
        text = text.replacen("[output]", &analysis, 1);
    }
    Contract::parse(text.as_bytes()).unwrap()
}

/// 30 people with steps band "high", 4 with "low"; in "low", 2 rows each (8 rows, 4 people).
fn tables(c: &Contract) -> Tables {
    let mut ehr = String::from("patient_id,age_band,diabetes\n");
    let mut act = String::from("steps_band,patient_id\n"); // column order differs on purpose
    for i in 0..30 {
        writeln!(
            ehr,
            "p{i},{},{}",
            if i % 2 == 0 { "young" } else { "old" },
            i % 3 == 0
        )
        .unwrap();
        writeln!(act, "high,p{i}").unwrap();
    }
    for i in 30..34 {
        writeln!(ehr, "p{i},old,true").unwrap();
        writeln!(act, "low,p{i}").unwrap();
        writeln!(act, "low,p{i}").unwrap();
    }
    let mut t = Tables::new();
    t.insert(
        "ehr".into(),
        load::load(c.dataset("ehr").unwrap(), UploadFormat::Csv, ehr.as_bytes())
            .unwrap()
            .into(),
    );
    t.insert(
        "activity".into(),
        load::load(
            c.dataset("activity").unwrap(),
            UploadFormat::Csv,
            act.as_bytes(),
        )
        .unwrap()
        .into(),
    );
    t
}

/// The same SQL on plain DataFusion, rendered the same way, without any rule.
pub(crate) use crate::golden::plain;

const JOIN: &str = "SELECT a.steps_band, COUNT(*) AS n, AVG(CAST(e.diabetes AS DOUBLE)) AS rate FROM ehr e JOIN activity a ON e.patient_id = a.patient_id GROUP BY a.steps_band ORDER BY a.steps_band";

#[tokio::test]
async fn small_groups_are_suppressed_and_the_rest_matches_plain_datafusion() {
    let c = contract(None);
    let t = tables(&c);
    let out = run_analysis(&c, JOIN, &t, None).await.unwrap();
    assert_eq!(out.columns, vec!["steps_band", "n", "rate"]);
    assert_eq!(
        out.suppressed_groups, 1,
        "the 'low' band has 4 people (8 rows)"
    );
    assert_eq!(out.datasets, vec!["activity", "ehr"]);
    let expected: Vec<_> = plain(&t, JOIN)
        .await
        .into_iter()
        .filter(|r| r[0] != "low")
        .collect();
    assert_eq!(out.rows, expected);
    assert_eq!(out.rows[0][1], serde_json::json!(30));
}

#[tokio::test]
async fn rows_count_people_not_rows() {
    // 8 rows but 4 people in "low": with min 5 it must still be suppressed.
    let c = contract(None);
    let t = tables(&c);
    let sql = "SELECT a.steps_band, COUNT(*) AS n FROM activity a GROUP BY a.steps_band HAVING COUNT(*) > 5";
    let out = run_analysis(&c, sql, &t, None).await.unwrap();
    assert_eq!(
        out.rows,
        vec![vec![serde_json::json!("high"), serde_json::json!(30)]]
    );
    assert_eq!(out.suppressed_groups, 1);
}

#[tokio::test]
async fn a_global_aggregate_and_limits_above_the_aggregate_work() {
    let c = contract(None);
    let t = tables(&c);
    let out = run_analysis(&c, "SELECT COUNT(*) AS n FROM ehr", &t, None)
        .await
        .unwrap();
    assert_eq!(out.rows, vec![vec![serde_json::json!(34)]]);
    let out = run_analysis(
        &c,
        "SELECT age_band, COUNT(*) AS n FROM ehr GROUP BY age_band ORDER BY n DESC LIMIT 1",
        &t,
        None,
    )
    .await
    .unwrap();
    assert_eq!(out.rows.len(), 1);
    // Filters run before the counts: a WHERE that narrows a group to one person suppresses it.
    let out = run_analysis(
        &c,
        "SELECT age_band, COUNT(*) FROM ehr WHERE patient_id = 'p1' GROUP BY age_band",
        &t,
        None,
    )
    .await
    .unwrap();
    assert!(out.rows.is_empty());
    assert_eq!(out.suppressed_groups, 1);
}

#[tokio::test]
async fn self_joins_count_both_sides() {
    let c = contract(None);
    let t = tables(&c);
    let sql = "SELECT x.age_band, COUNT(*) FROM ehr x JOIN ehr y ON x.age_band = y.age_band GROUP BY x.age_band";
    let guarded = {
        let ctx = session(&c, &t).unwrap();
        plan(&ctx, &c, sql).await.unwrap()
    };
    let counted = &guarded.counted[0];
    let checks = |f: fn(&threshold::Check) -> bool| counted.checks.iter().filter(|c| f(c)).count();
    assert_eq!(
        checks(|c| *c == threshold::Check::AtLeast),
        2,
        "one count per side of the self-join"
    );
    // The join repeats each side's rows once per match: each side's rows per person are
    // bounded, on their own (the join is not on the privacy unit).
    assert_eq!(checks(|c| *c == threshold::Check::AtMost(1)), 2);
    assert_eq!(
        counted.plan.schema().fields().len(),
        counted.visible + counted.checks.len()
    );
}

#[tokio::test]
async fn row_level_output_is_refused() {
    let c = contract(None);
    let t = tables(&c);
    for sql in [
        "SELECT patient_id FROM ehr",
        "SELECT * FROM ehr e JOIN activity a ON e.patient_id = a.patient_id",
        "SELECT DISTINCT age_band FROM ehr",
        "SELECT 1",
        "SELECT age_band, COUNT(*) FROM ehr GROUP BY age_band UNION ALL SELECT patient_id, 1 FROM activity",
        "SELECT patient_id, ROW_NUMBER() OVER () FROM ehr",
    ] {
        let err = run_analysis(&c, sql, &t, None).await.unwrap_err();
        assert!(
            matches!(
                err,
                EngineError::Refused {
                    rule: "min-group-size",
                    ..
                }
            ),
            "{sql}: {err}"
        );
    }
}

#[tokio::test]
async fn a_subquery_that_hides_the_privacy_unit_is_refused() {
    let c = contract(None);
    let t = tables(&c);
    let sql = "SELECT s.age_band, COUNT(*) FROM (SELECT age_band FROM ehr) s GROUP BY s.age_band";
    let err = run_analysis(&c, sql, &t, None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("privacy unit ehr.patient_id does not reach the aggregation"),
        "{err}"
    );
}

#[tokio::test]
async fn statements_other_than_queries_are_refused() {
    let c = contract(None);
    let t = tables(&c);
    for sql in [
        "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'",
        "SET datafusion.execution.batch_size = 1",
        "INSERT INTO ehr VALUES ('x', 'y', true)",
    ] {
        let err = run_analysis(&c, sql, &t, None).await.unwrap_err();
        assert!(
            matches!(err, EngineError::Refused { .. } | EngineError::Sql(_)),
            "{sql}: {err}"
        );
    }
}

#[tokio::test]
async fn missing_data_is_named() {
    let c = contract(None);
    let mut t = tables(&c);
    t.remove("activity");
    match run_analysis(&c, JOIN, &t, None).await.unwrap_err() {
        EngineError::MissingData(m) => assert_eq!(m, vec!["activity"]),
        other => panic!("{other}"),
    }
}

#[tokio::test]
async fn contract_analyses_are_checked_against_the_schemas() {
    check_analyses(&contract(Some(
        "SELECT age_band, COUNT(*) FROM ehr GROUP BY age_band",
    )))
    .await
    .unwrap();
    let err = check_analyses(&contract(Some("SELECT COUNT(*) FROM claims")))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("analysis \"extra\"") && err.contains("claims"),
        "{err}"
    );
    let err = check_analyses(&contract(Some(
        "SELECT bmi, COUNT(*) FROM ehr GROUP BY bmi",
    )))
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("bmi"), "{err}");
    let err = check_analyses(&contract(Some("SELECT patient_id FROM ehr")))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("only aggregated statistics"), "{err}");
}

#[test]
fn uploads_must_match_the_declared_schema() {
    let c = contract(None);
    let ehr = c.dataset("ehr").unwrap();
    let cases = [
        (
            "patient_id,age_band\np1,x\n",
            "column \"diabetes\" is missing",
        ),
        (
            "patient_id,age_band,diabetes,ssn\np1,x,true,123\n",
            "column 4 of the file is not declared in the contract (declared: patient_id, age_band, diabetes)",
        ),
        (
            // No header line: the first record is never quoted back.
            "p1,x,true\np2,y,false\n",
            "column 1 of the file is not declared in the contract",
        ),
        (
            "patient_id,age_band,diabetes\np1,x,maybe\n",
            "line 2, column \"diabetes\": the value is not a valid Boolean",
        ),
        (
            "patient_id,age_band,diabetes\np1,x,true\np2,y\n",
            "line 3: the record does not have 3 fields",
        ),
        (
            "patient_id,patient_id,diabetes\n",
            "column \"patient_id\" appears more than once",
        ),
        ("", "no header line"),
    ];
    for (csv, expected) in cases {
        let err = load::load(ehr, UploadFormat::Csv, csv.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{csv:?}: {err}");
        // Never a value of the file: not the bad one, not the row's identifier.
        for value in ["maybe", "p1", "p2", "123"] {
            assert!(!err.contains(value), "{csv:?}: {err}");
        }
    }
    let err = load::load(ehr, UploadFormat::Parquet, b"PAR1 not really")
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a readable Parquet file"), "{err}");
}

/// A two-row ehr Parquet file (columns in another order than the contract's) whose `age_band`
/// is `age`, in `age`'s type.
fn ehr_parquet_with_age_band(age: datafusion::arrow::array::ArrayRef) -> Vec<u8> {
    use datafusion::arrow::array::{BooleanArray, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    let schema = Arc::new(Schema::new(vec![
        Field::new("diabetes", DataType::Boolean, true),
        Field::new("patient_id", DataType::Utf8, true),
        Field::new("age_band", age.data_type().clone(), true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(BooleanArray::from(vec![true, false])),
            Arc::new(StringArray::from(vec!["p1", "p2"])),
            age,
        ],
    )
    .unwrap();
    let mut file = Vec::new();
    let mut w = datafusion::parquet::arrow::ArrowWriter::try_new(&mut file, schema, None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    file
}

#[test]
fn parquet_uploads_load_and_are_type_checked() {
    use datafusion::arrow::array::{Int32Array, StringArray};
    use std::sync::Arc;

    let c = contract(None);
    let ehr = c.dataset("ehr").unwrap();
    let good = ehr_parquet_with_age_band(Arc::new(StringArray::from(vec!["a", "b"])));
    let batches = load::load(ehr, UploadFormat::Parquet, &good).unwrap();
    assert_eq!(batches[0].schema(), arrow_schema(ehr));
    assert_eq!(batches[0].num_rows(), 2);
    let bad = ehr_parquet_with_age_band(Arc::new(Int32Array::from(vec![1, 2])));
    let err = load::load(ehr, UploadFormat::Parquet, &bad)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(
            "column \"age_band\" has type Int32 in the file, but the contract declares utf8"
        ),
        "{err}"
    );
}

/// The analyzer rule is not only a second opinion: on its own (without the check on the plan as
/// written) it stops a plan that breaks the rules, and DataFusion cannot skip it.
#[tokio::test]
async fn the_analyzer_rule_refuses_on_its_own() {
    let c = crate::golden::contract();
    let t = crate::golden::tables(&c);
    let rules = Arc::new(roles::Rules::of(&c).unwrap());
    let ctx = session(&c, &t).unwrap();
    ctx.add_analyzer_rule(Arc::new(roles::RulesAnalyzer(rules)));
    for (sql, rule) in [
        ("SELECT MIN(patient_id) FROM patients", "identifier-use"),
        (
            "SELECT age_band, COUNT(*) FROM patients WHERE bmi > 39 GROUP BY age_band",
            "measure-use",
        ),
    ] {
        let written = written_plan(&ctx, sql).await.unwrap();
        let guarded = threshold::guard(written, &c, None).unwrap();
        let err = ctx
            .state()
            .create_physical_plan(&guarded.counted[0].plan)
            .await
            .unwrap_err();
        match unwrap_refusal(err) {
            EngineError::Refused { rule: got, .. } => assert_eq!(got, rule, "{sql}"),
            other => panic!("{sql}: {other}"),
        }
    }
    // Without the rule registered the same plan would run: the refusal above is the rule's.
    let plain_ctx = session(&c, &t).unwrap();
    let written = written_plan(&plain_ctx, "SELECT MIN(patient_id) FROM patients")
        .await
        .unwrap();
    let guarded = threshold::guard(written, &c, None).unwrap();
    assert!(
        plain_ctx
            .state()
            .create_physical_plan(&guarded.counted[0].plan)
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn contracts_without_adhoc_refuse_every_query() {
    let c = contract(None);
    let err = run_query(&c, "SELECT COUNT(*) FROM ehr", &tables(&c), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, EngineError::Refused { rule: "adhoc", .. }),
        "{err}"
    );
}

/// The physical check refuses a plan that lost the threshold counts or computes windows.
#[tokio::test]
async fn the_physical_check_refuses_plans_without_counts_or_with_windows() {
    let c = crate::golden::contract();
    let t = crate::golden::tables(&c);
    let ctx = session(&c, &t).unwrap();
    for (sql, why) in [
        (
            "SELECT COUNT(*) FROM patients",
            "lost the minimum-group-size counts",
        ),
        (
            "SELECT COUNT(*) OVER () AS n, COUNT(DISTINCT patient_id) OVER () AS __kura_units_0 FROM patients",
            "per-row windows",
        ),
    ] {
        let plan = written_plan(&ctx, sql).await.unwrap();
        let physical = ctx.state().create_physical_plan(&plan).await.unwrap();
        let err = check_physical(physical.as_ref(), 1).unwrap_err();
        let EngineError::Refused { rule, reason } = &err else {
            panic!("{sql}: {err}");
        };
        assert_eq!(*rule, "physical-plan", "{sql}");
        assert!(reason.contains(why), "{sql}: {reason}");
    }
    // A guarded plan passes.
    let guarded = threshold::guard(
        written_plan(&ctx, "SELECT COUNT(*) FROM patients")
            .await
            .unwrap(),
        &c,
        None,
    )
    .unwrap();
    let physical = ctx
        .state()
        .create_physical_plan(&guarded.counted[0].plan)
        .await
        .unwrap();
    check_physical(physical.as_ref(), guarded.counted[0].visible).unwrap();
}

/// A CSV of `rows` ehr records, some with quoted fields holding commas, quotes and newlines,
/// and the column order of the file differing from the contract's.
fn big_csv(rows: usize) -> String {
    let mut csv = String::from("age_band,patient_id,diabetes\r\n");
    for i in 0..rows {
        let band = match i % 7 {
            0 => "\"multi\nline, with \"\"quotes\"\"\"".to_string(),
            1 => "\"a,b\"".to_string(),
            _ => format!("band{}", i % 5),
        };
        writeln!(csv, "{band},p{i:08},{}", i % 3 == 0).unwrap();
    }
    csv
}

/// The reference: Arrow's own reader on the whole file at once.
fn arrow_reads(ehr: &kura_contract::Dataset, csv: &str) -> Vec<RecordBatch> {
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    let schema = std::sync::Arc::new(Schema::new(vec![
        Field::new("age_band", DataType::Utf8, true),
        Field::new("patient_id", DataType::Utf8, true),
        Field::new("diabetes", DataType::Boolean, true),
    ]));
    let batches = datafusion::arrow::csv::ReaderBuilder::new(schema)
        .with_header(true)
        .build(std::io::Cursor::new(csv.as_bytes()))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let batch = datafusion::arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
    let order = ["patient_id", "age_band", "diabetes"].map(|n| batch.schema().index_of(n).unwrap());
    vec![
        RecordBatch::try_new(
            arrow_schema(ehr),
            order
                .iter()
                .zip(arrow_schema(ehr).fields())
                .map(|(i, f)| {
                    datafusion::arrow::compute::cast(batch.column(*i), f.data_type()).unwrap()
                })
                .collect(),
        )
        .unwrap(),
    ]
}

fn concat(batches: &[RecordBatch]) -> RecordBatch {
    datafusion::arrow::compute::concat_batches(&batches[0].schema(), batches).unwrap()
}

#[test]
fn csv_is_parsed_in_parallel_blocks_exactly_as_one_reader_would() {
    let c = contract(None);
    let ehr = c.dataset("ehr").unwrap();
    // About 15 MiB: several blocks, with quoted newlines near every cut.
    let csv = big_csv(400_000);
    let expected = concat(&arrow_reads(ehr, &csv));
    assert_eq!(expected.num_rows(), 400_000);
    // Whole, byte by byte for the header, and in odd-sized pieces as decryption delivers them.
    for piece in [csv.len(), 65_537, 1_000_003] {
        let mut ingest = load::Ingest::new(ehr, UploadFormat::Csv);
        for (i, p) in csv.as_bytes().chunks(piece).enumerate() {
            if i == 0 {
                for b in p.chunks(1) {
                    ingest.push(b).unwrap();
                }
            } else {
                ingest.push(p).unwrap();
            }
        }
        let got = ingest.finish().unwrap();
        // One reader would give ceil(rows / BATCH_ROWS) batches; every block cut ends in a
        // short batch of its own.
        assert!(
            got.len() > 400_000_usize.div_ceil(load::BATCH_ROWS),
            "{} batches: the file was not cut into blocks",
            got.len()
        );
        assert_eq!(concat(&got), expected, "pieces of {piece} bytes");
    }
}

/// The enclave's path: `file` sealed in chunks of `chunk` bytes, received in pieces of `piece`
/// bytes, each decrypted straight into the ingest's buffer.
fn decrypted_into(
    dataset: &kura_contract::Dataset,
    format: UploadFormat,
    file: &[u8],
    (chunk, piece): (usize, usize),
) -> Result<Vec<RecordBatch>, String> {
    use kura_crypto::{DataKey, StreamDecoder, StreamEncoder};
    let key = DataKey::generate();
    let mut encoder = StreamEncoder::new(DataKey::from_bytes(key.as_bytes()).unwrap(), b"ctx");
    let mut wire = Vec::new();
    let chunks: Vec<&[u8]> = file.chunks(chunk).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        encoder
            .seal_chunk(chunk, i + 1 == chunks.len(), &mut wire)
            .unwrap();
    }
    let mut decoder = StreamDecoder::new(&key, b"ctx");
    let mut ingest = load::Ingest::new(dataset, format);
    for p in wire.chunks(piece) {
        ingest
            .push_with(|buf| decoder.push(p, buf))
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("decryption: {e}"))?;
    }
    decoder.finish().unwrap();
    ingest.finish().map_err(|e| e.to_string())
}

#[test]
fn plaintext_decrypted_straight_into_the_ingest_gives_the_same_table() {
    let c = contract(None);
    let ehr = c.dataset("ehr").unwrap();
    // Several CSV blocks, so that block buffers are given back and reused.
    let csv = big_csv(400_000);
    let expected = concat(&arrow_reads(ehr, &csv));
    let (file, parquet) = ehr_parquet(ehr, 100_000);
    let (stream, _) = footer_first(&file);
    for piece in [7_001, 65_536, 3 << 20] {
        let got = decrypted_into(ehr, UploadFormat::Csv, csv.as_bytes(), (1 << 20, piece));
        assert_eq!(
            concat(&got.unwrap()),
            expected,
            "CSV in pieces of {piece} bytes"
        );
        // Chunks smaller than a row group, so that several land in one row group's buffer,
        // and larger, so that one crosses several row groups.
        for chunk in [4_096, 1 << 20] {
            let got = decrypted_into(
                ehr,
                UploadFormat::ParquetFooterFirst,
                &stream,
                (chunk, piece),
            );
            assert_eq!(concat(&got.unwrap()), parquet, "Parquet, {chunk}, {piece}");
        }
    }
    // A chunk that fails to decrypt stops the upload with the decoder's reason.
    let mut ingest = load::Ingest::new(ehr, UploadFormat::Csv);
    let failed = ingest
        .push_with(|buf| {
            buf.extend_from_slice(b"patient_id,age_band,diabetes\n");
            Err("tampered chunk")
        })
        .unwrap();
    assert_eq!(failed, Err("tampered chunk"));
    // A refusal of the plaintext comes back as the ingest's.
    let mut ingest = load::Ingest::new(ehr, UploadFormat::Csv);
    let err = ingest
        .push_with(|buf| {
            buf.extend_from_slice(b"patient_id,age_band,height\n");
            Ok::<(), ()>(())
        })
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("column 3 of the file is not declared"),
        "{err}"
    );
}

#[test]
fn a_bad_value_deep_in_a_large_csv_is_refused_with_its_place() {
    let c = contract(None);
    let ehr = c.dataset("ehr").unwrap();
    let mut csv = big_csv(300_000);
    csv.push_str("x,p1,maybe\n");
    csv.push_str(big_csv(10).split_once('\n').unwrap().1);
    let err = load::load(ehr, UploadFormat::Csv, csv.as_bytes())
        .unwrap_err()
        .to_string();
    // The file line, counted with the quoted newlines of the records before it.
    let line = 2 + csv
        .split_once("x,p1,maybe")
        .unwrap()
        .0
        .matches('\n')
        .count()
        - 1;
    assert!(
        err.contains(&format!(
            "line {line}, column \"diabetes\": the value is not a valid Boolean"
        )),
        "{err}"
    );
    assert!(!err.contains("maybe") && !err.contains("p1"), "{err}");
    // A file without a newline in its first MiB has no usable header.
    let err = load::load(ehr, UploadFormat::Csv, &vec![b'a'; (1 << 20) + 10])
        .unwrap_err()
        .to_string();
    assert!(err.contains("header line is longer than 1 MiB"), "{err}");
}

/// A Parquet file of `rows` ehr records in row groups of 7,000 rows (text written as plain
/// `Utf8`, as most writers do), and the batch it holds, in the contract's schema.
fn ehr_parquet(ehr: &kura_contract::Dataset, rows: usize) -> (Vec<u8>, RecordBatch) {
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::parquet::arrow::ArrowWriter;
    use datafusion::parquet::file::properties::WriterProperties;

    let expected = concat(&arrow_reads(ehr, &big_csv(rows)));
    let plain = std::sync::Arc::new(Schema::new(
        expected
            .schema()
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                DataType::Utf8View => Field::new(f.name(), DataType::Utf8, true),
                _ => f.as_ref().clone(),
            })
            .collect::<Vec<_>>(),
    ));
    let columns = expected
        .columns()
        .iter()
        .zip(plain.fields())
        .map(|(c, f)| datafusion::arrow::compute::cast(c, f.data_type()).unwrap())
        .collect();
    let batch = RecordBatch::try_new(plain.clone(), columns).unwrap();
    let mut file = Vec::new();
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(7_000))
        .build();
    let mut w = ArrowWriter::try_new(&mut file, plain, Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    (file, expected)
}

/// `file` laid out as kura's client sends Parquet (the client's half of the framing, from
/// kura-api); and where the rest of the file starts.
fn footer_first(file: &[u8]) -> (Vec<u8>, usize) {
    let (mut out, rest) = kura_api::footer_first(&mut std::io::Cursor::new(file)).unwrap();
    let head = out.len();
    out.extend_from_slice(&file[..rest as usize]);
    (out, head)
}

#[test]
fn parquet_sent_footer_first_is_decoded_row_group_by_row_group_as_it_arrives() {
    let c = contract(None);
    let ehr = c.dataset("ehr").unwrap();
    let (file, expected) = ehr_parquet(ehr, 100_000);
    let (stream, head) = footer_first(&file);
    for piece in [1, 1_000, 65_536, stream.len()] {
        let mut ingest = load::Ingest::new(ehr, UploadFormat::ParquetFooterFirst);
        // The prefix and the footer byte by byte, then the rest in pieces.
        let footer_end = head + 64;
        for b in &stream[..footer_end] {
            ingest.push(std::slice::from_ref(b)).unwrap();
        }
        let rest = &stream[footer_end..];
        for p in rest[..rest.len() - 1].chunks(piece) {
            ingest.push(p).unwrap();
        }
        // All row groups but the last are on their way before the upload has ended.
        assert!(ingest.pieces_handed_out() >= 14, "piece size {piece}");
        // What is parsed can be taken (and written on) before the upload has ended.
        let mut early = Vec::new();
        while early.is_empty() {
            std::thread::yield_now();
            early = ingest.take_ready().unwrap();
        }
        ingest.push(&rest[rest.len() - 1..]).unwrap();
        early.extend(ingest.finish().unwrap());
        assert_eq!(concat(&early), expected, "piece size {piece}");
    }
    // The same file sent as it is gives the same table.
    let whole = load::load(ehr, UploadFormat::Parquet, &file).unwrap();
    assert_eq!(concat(&whole), expected);
}

#[test]
fn a_bad_footer_first_parquet_upload_is_refused_with_a_reason() {
    let c = contract(None);
    let ehr = c.dataset("ehr").unwrap();
    let (file, _) = ehr_parquet(ehr, 20_000);
    let (stream, head) = footer_first(&file);
    let refused = |stream: &[u8]| -> String {
        let mut ingest = load::Ingest::new(ehr, UploadFormat::ParquetFooterFirst);
        match ingest.push(stream) {
            Err(e) => e.to_string(),
            Ok(()) => ingest.finish().unwrap_err().to_string(),
        }
    };
    let with = |at: usize, bytes: &[u8]| {
        let mut s = stream.clone();
        s[at..at + bytes.len()].copy_from_slice(bytes);
        s
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            stream[..head - 3].to_vec(),
            "ended before the file's footer was complete",
        ),
        (
            stream[..stream.len() - 10].to_vec(),
            "ended 10 bytes before the end of the file",
        ),
        ([&stream[..], b"x"].concat(), "longer than the"),
        (with(head, b"PAR2"), "does not start with PAR1"),
        (with(head - 1, b"2"), "does not end with PAR1"),
        (
            with(8, &(1u64 << 40).to_le_bytes()),
            "exceeds the limit of 64 MiB",
        ),
        (with(8, &4u64.to_le_bytes()), "does not fit a file"),
        (
            with(0, &(file.len() as u64 - 5_000).to_le_bytes()),
            "has a column chunk outside the file's data",
        ),
    ];
    for (stream, expected) in cases {
        let err = refused(&stream);
        assert!(err.contains("not a readable Parquet file"), "{err}");
        assert!(err.contains(expected), "{expected}: {err}");
    }
}

#[test]
fn a_footer_first_parquet_file_of_the_wrong_schema_is_refused_before_its_data_arrives() {
    use datafusion::arrow::array::Int32Array;

    let c = contract(None);
    let ehr = c.dataset("ehr").unwrap();
    let file = ehr_parquet_with_age_band(std::sync::Arc::new(Int32Array::from(vec![1, 2])));
    let (stream, head) = footer_first(&file);
    let mut ingest = load::Ingest::new(ehr, UploadFormat::ParquetFooterFirst);
    let err = ingest.push(&stream[..head]).unwrap_err().to_string();
    assert!(err.contains("column \"age_band\" has type Int32"), "{err}");
}

#[test]
fn parquet_row_groups_are_decoded_in_parallel_in_file_order() {
    use datafusion::parquet::arrow::ArrowWriter;
    use datafusion::parquet::file::properties::WriterProperties;

    let c = contract(None);
    let ehr = c.dataset("ehr").unwrap();
    let csv = big_csv(100_000);
    let expected = concat(&arrow_reads(ehr, &csv));
    let mut file = Vec::new();
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(7_000))
        .build();
    let mut w = ArrowWriter::try_new(&mut file, expected.schema(), Some(props)).unwrap();
    w.write(&expected).unwrap();
    w.close().unwrap();
    let mut ingest = load::Ingest::new(ehr, UploadFormat::Parquet);
    for p in file.chunks(10_000) {
        ingest.push(p).unwrap();
    }
    assert_eq!(concat(&ingest.finish().unwrap()), expected);
}

fn names<const N: usize>(names: [&str; N]) -> std::collections::BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

/// The example contract's analysis reads `diabetes` and `steps_band` besides the privacy units,
/// never `age_band`: uploads keep exactly what its analyses read.
#[tokio::test]
async fn uploads_keep_the_columns_the_analyses_read_and_no_others() {
    let c = contract(None);
    let kept = columns_kept(&c).await.unwrap();
    assert_eq!(kept["ehr"], names(["diabetes", "patient_id"]));
    assert_eq!(kept["activity"], names(["patient_id", "steps_band"]));
    // A column read only in a filter, or only inside a subquery, is kept too.
    for sql in [
        "SELECT COUNT(*) AS n FROM ehr WHERE age_band = 'old'",
        "SELECT COUNT(*) AS n FROM ehr WHERE patient_id IN (SELECT patient_id FROM ehr WHERE age_band = 'old')",
    ] {
        let kept = columns_kept(&contract(Some(sql))).await.unwrap();
        assert_eq!(
            kept["ehr"],
            names(["age_band", "diabetes", "patient_id"]),
            "{sql}"
        );
    }
    // A contract that allows ad-hoc queries keeps every column: any may be asked for.
    let golden = crate::golden::contract();
    assert_eq!(columns_kept(&golden).await.unwrap(), all_columns(&golden));
    // An analysis that cannot be planned is named; the caller then keeps every column.
    let mut broken = contract(None);
    broken.analyses[0].sql = "SELECT nothing FROM nowhere".into();
    let err = columns_kept(&broken).await.unwrap_err().to_string();
    assert!(err.contains("diabetes_by_activity"), "{err}");
}

/// Kept columns give the analyses the same answers as the whole table; the dropped column is
/// still checked (its name and type in Parquet, its every value in CSV) but never held.
#[tokio::test]
async fn uploads_that_drop_unread_columns_answer_the_same_and_still_check_them() {
    let c = contract(None);
    let kept = columns_kept(&c).await.unwrap();
    let keep = |dataset: &str| {
        let kept = kept[dataset].clone();
        move |column: &str| kept.contains(column)
    };
    let ingest = |dataset: &str, format: UploadFormat, bytes: &[u8]| {
        let mut ingest = load::Ingest::keeping(c.dataset(dataset).unwrap(), format, keep(dataset));
        ingest.push(bytes)?;
        ingest.finish()
    };
    let ehr = c.dataset("ehr").unwrap();
    let (file, expected) = ehr_parquet(ehr, 20_000);
    let expected = expected.project(&[0, 2]).unwrap(); // patient_id, diabetes
    let (stream, _) = footer_first(&file);
    for (format, bytes) in [
        (UploadFormat::ParquetFooterFirst, &stream),
        (UploadFormat::Parquet, &file),
    ] {
        let got = concat(&ingest("ehr", format, bytes).unwrap());
        assert_eq!(got, expected, "{format:?}");
    }
    let csv = big_csv(20_000);
    assert_eq!(
        concat(&ingest("ehr", UploadFormat::Csv, csv.as_bytes()).unwrap()),
        expected
    );

    // The analyses see the same data either way.
    let full = tables(&c);
    let held: Tables = full
        .iter()
        .map(|(name, table)| {
            let dataset = c.dataset(name).unwrap();
            let mut text = Vec::new();
            let mut w = datafusion::arrow::csv::Writer::new(&mut text);
            for b in table.batches() {
                w.write(b).unwrap();
            }
            drop(w);
            (name.clone(), {
                let mut i = load::Ingest::keeping(dataset, UploadFormat::Csv, keep(name));
                i.push(&text).unwrap();
                i.finish().unwrap().into()
            })
        })
        .collect();
    assert_eq!(held["ehr"].batches()[0].num_columns(), 2);
    for analysis in &c.analyses {
        let (a, b) = (
            run_analysis(&c, &analysis.sql, &full, None).await.unwrap(),
            run_analysis(&c, &analysis.sql, &held, None).await.unwrap(),
        );
        assert_eq!(
            (a.columns, a.rows),
            (b.columns, b.rows),
            "{}",
            analysis.name
        );
    }

    // A bad value in a dropped column is refused all the same: here a contract whose only
    // analysis never reads `diabetes`.
    let mut by_age = contract(Some(
        "SELECT age_band, COUNT(*) AS n FROM ehr GROUP BY age_band",
    ));
    by_age.analyses.remove(0);
    let kept = columns_kept(&by_age).await.unwrap();
    assert_eq!(kept["ehr"], names(["age_band", "patient_id"]));
    let bad = "patient_id,age_band,diabetes\np1,old,true\np2,old,maybe\n";
    let mut upload =
        load::Ingest::keeping(by_age.dataset("ehr").unwrap(), UploadFormat::Csv, |n| {
            kept["ehr"].contains(n)
        });
    let err = upload
        .push(bad.as_bytes())
        .and_then(|()| upload.finish())
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("line 3, column \"diabetes\": the value is not a valid Boolean"),
        "{err}"
    );
    // So is a dropped column of the wrong type in a Parquet file, from its footer.
    let file =
        ehr_parquet_with_age_band(Arc::new(datafusion::arrow::array::Int64Array::from(vec![
            7, 8,
        ])));
    let err = ingest("ehr", UploadFormat::Parquet, &file).unwrap_err();
    assert!(
        err.to_string().contains("\"age_band\" has type Int64"),
        "{err}"
    );
}

/// Each aggregate counts its own contributors: in a group of 10 people, a measure recorded for
/// 3 of them is too few, and one recorded for 8 leaves 2 people whose absence
/// `COUNT(*) - COUNT(x)` would single out. Runs the golden contract over a custom table.
#[tokio::test]
async fn aggregates_count_their_own_contributors_and_how_they_differ() {
    let c = crate::golden::contract();
    let mut csv = String::from("patient_id,age_band,sex,region,birth_year,diabetes,bmi\n");
    // Region "a": 10 people, BMI for 3. Region "b": 10 people, BMI for 8. Region "c": all 10.
    for (region, recorded) in [("a", 3), ("b", 8), ("c", 10)] {
        for i in 0..10 {
            let bmi = if i < recorded { "25.0" } else { "" };
            writeln!(csv, "{region}{i},40-59,f,{region},1970,false,{bmi}").unwrap();
        }
    }
    let t = crate::golden::load_csv(&c, [("patients", csv)]);
    let run = |sql: &'static str| {
        let (c, t) = (c.clone(), t.clone());
        async move { run_query(&c, sql, &t, None).await.unwrap() }
    };
    let regions = |out: &Output| -> Vec<String> {
        out.rows
            .iter()
            .map(|r| r[0].as_str().unwrap().to_string())
            .collect()
    };
    // The count of rows alone: every region has 10 people.
    let out = run("SELECT region, COUNT(*) FROM patients GROUP BY region ORDER BY region").await;
    assert_eq!(regions(&out), ["a", "b", "c"]);
    // AVG(bmi) in "a" rests on 3 people; in "b" on 8, which is enough.
    let out = run("SELECT region, AVG(bmi) FROM patients GROUP BY region ORDER BY region").await;
    assert_eq!(regions(&out), ["b", "c"]);
    assert_eq!(out.suppressed_groups, 1);
    // Beside COUNT(*), "b" would tell that 2 people have no BMI: suppressed too.
    let out =
        run("SELECT region, COUNT(*), COUNT(bmi) FROM patients GROUP BY region ORDER BY region")
            .await;
    assert_eq!(regions(&out), ["c"]);
    assert_eq!(out.suppressed_groups, 2);
}

/// Casts are total: a cast that does not fit a value gives NULL instead of failing. A failure
/// that remains (a fixed analysis may call a function that parses text) is one generic
/// refusal, which says neither which operation failed nor on which value.
#[tokio::test]
async fn run_time_failures_are_total_or_generic() {
    let c = crate::golden::contract();
    let t = crate::golden::tables(&c);
    let out = run_query(
        &c,
        "SELECT COUNT(*) AS n FROM patients WHERE CAST(region AS INT) IS NULL",
        &t,
        None,
    )
    .await
    .unwrap();
    assert_eq!(out.rows, vec![vec![serde_json::json!(200)]]);
    const PARSING: &str =
        "SELECT sex, COUNT(*) AS n FROM patients WHERE to_date(region) IS NULL GROUP BY sex";
    let err = run_analysis(&c, PARSING, &t, None).await.unwrap_err();
    assert!(
        matches!(err, EngineError::Runtime(error::VALUE_FAILED)),
        "{err}"
    );
    for value in ["north", "south", "east", "isle", "pars", "cast"] {
        assert!(!err.to_string().contains(value), "{err}");
    }
    // The ad-hoc rules refuse the same function before anything runs.
    let err = run_query(&c, PARSING, &t, None).await.unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::Refused {
                rule: "total-functions",
                ..
            }
        ),
        "{err}"
    );
}

/// A fixed analysis that the ad-hoc rules would refuse is signed as written, but `kura
/// contract verify` warns, naming the rule.
#[tokio::test]
async fn fixed_analyses_the_rules_would_refuse_are_warned_of() {
    let c = contract(Some(
        "SELECT SUM(v) AS s FROM (SELECT patient_id, CASE WHEN age_band = 'old' THEN CAST(diabetes AS INT) ELSE 0 END AS v FROM ehr) t",
    ));
    check_analyses(&c).await.unwrap();
    let warnings = analysis_warnings(&c).await;
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("rule measure-use"), "{}", warnings[0]);
    let fine = contract(Some(
        "SELECT age_band, AVG(CAST(diabetes AS DOUBLE)) AS a FROM ehr GROUP BY age_band",
    ));
    assert!(analysis_warnings(&fine).await.is_empty());
}

/// Rows per person are counted only where a dataset with several rows per person can repeat
/// another's rows, and units an inner join makes equal share one count.
#[tokio::test]
async fn units_joined_on_the_privacy_unit_share_one_row_bound() {
    let c = crate::golden::contract();
    let t = crate::golden::tables(&c);
    let sql = "SELECT p.age_band, COUNT(*) AS n, SUM(c.amount) AS s FROM patients p \
               JOIN claims c ON p.patient_id = c.patient_id GROUP BY p.age_band";
    let ctx = session(&c, &t).unwrap();
    let guarded = plan(&ctx, &c, sql).await.unwrap();
    let mut bounds: Vec<u64> = guarded.counted[0]
        .checks
        .iter()
        .filter_map(|c| match c {
            threshold::Check::AtMost(m) => Some(*m),
            _ => None,
        })
        .collect();
    bounds.sort();
    // patients allow 1 row per person, claims 3: COUNT(*) weighs both, and the claims repeat
    // each patient's row; SUM(c.amount) weighs the claims, which the patients (one row per
    // person) do not repeat: no count for it.
    assert_eq!(bounds, [1]);
    // Joined on another column, a key of the patients no longer stands beside the claims'
    // figures: a claim could meet two patients' rows, in two groups.
    let sql = "SELECT p.age_band, COUNT(*) AS n FROM patients p \
               JOIN claims c ON p.patient_id = c.claim_id GROUP BY p.age_band";
    let refused = plan(&ctx, &c, sql).await.unwrap_err().to_string();
    assert!(refused.contains("rule group-keys"), "{refused}");
    assert!(
        refused.contains("not joined to it on their privacy units"),
        "{refused}"
    );
    // The claims grouped by their own column are counted: the patients, joined on another
    // column, could repeat them.
    let sql = "SELECT c.kind, COUNT(c.amount) AS n FROM patients p \
               JOIN claims c ON p.patient_id = c.claim_id GROUP BY c.kind";
    let guarded = plan(&ctx, &c, sql).await.unwrap();
    let bounds: Vec<u64> = guarded.counted[0]
        .checks
        .iter()
        .filter_map(|c| match c {
            threshold::Check::AtMost(m) => Some(*m),
            _ => None,
        })
        .collect();
    assert_eq!(bounds, [3]);
    // Through a left join on the units, the key is the patient's own.
    let sql = "SELECT p.age_band, SUM(c.amount) AS s FROM patients p \
               LEFT JOIN claims c ON p.patient_id = c.patient_id GROUP BY p.age_band";
    plan(&ctx, &c, sql).await.unwrap();
    // The cost bench's query (claims counted and summed by the patients' bands) needs no
    // count at all: nothing repeats the claims.
    let sql = "SELECT p.age_band, COUNT(c.amount) AS n, SUM(c.amount) AS s FROM patients p \
               JOIN claims c ON p.patient_id = c.patient_id GROUP BY p.age_band";
    let guarded = plan(&ctx, &c, sql).await.unwrap();
    assert!(
        !guarded.counted[0]
            .checks
            .iter()
            .any(|c| matches!(c, threshold::Check::AtMost(_)))
    );
}

/// `people` people, each in an age band of their own and in one of two steps bands.
fn wide_tables(c: &Contract, people: usize) -> Tables {
    let mut ehr = String::from("patient_id,age_band,diabetes\n");
    let mut act = String::from("steps_band,patient_id\n");
    for i in 0..people {
        writeln!(ehr, "p{i},band-{i},{}", i % 3 == 0).unwrap();
        writeln!(act, "{},p{i}", if i % 2 == 0 { "high" } else { "low" }).unwrap();
    }
    let load = |name: &str, text: &str| {
        load::load(c.dataset(name).unwrap(), UploadFormat::Csv, text.as_bytes()).unwrap()
    };
    Tables::from([
        ("ehr".to_string(), load("ehr", &ehr).into()),
        ("activity".to_string(), load("activity", &act).into()),
    ])
}

#[tokio::test]
async fn a_query_that_needs_more_memory_than_allowed_is_refused_and_the_next_one_runs() {
    const HEAVY: &str = "SELECT e.age_band, COUNT(*) AS n FROM ehr e GROUP BY e.age_band";
    const LIGHT: &str = "SELECT a.steps_band, COUNT(*) AS n FROM activity a GROUP BY a.steps_band";
    let c = contract(None);
    let t = wide_tables(&c, 200_000);
    let limit = 8 << 20;
    let heavy = with_memory_limit(limit, run_analysis(&c, HEAVY, &t, None)).await;
    let err = heavy.unwrap_err().to_string();
    assert!(
        err.contains("needed more memory than the enclave allows"),
        "{err}"
    );
    // Under the same limit a query within it runs, on the same tables.
    let light = with_memory_limit(limit, run_analysis(&c, LIGHT, &t, None))
        .await
        .unwrap();
    assert_eq!(light.rows.len(), 2);
    // And with room enough, the heavy one runs too (every band is one person: all suppressed).
    let out = run_analysis(&c, HEAVY, &t, None).await.unwrap();
    assert_eq!(out.suppressed_groups, 200_000);
}

/// The Parquet file the `parquet_footer_first` fuzz target makes of `rows` in row groups of
/// `group` rows, with bit `bit` of byte `at` (modulo the length) flipped if given.
fn fuzzed_parquet(rows: &[u8], group: usize, flip: Option<(usize, u8)>) -> Vec<u8> {
    use datafusion::arrow::array::{BooleanArray, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::parquet::arrow::ArrowWriter;
    use datafusion::parquet::file::properties::WriterProperties;

    let schema = std::sync::Arc::new(Schema::new(vec![
        Field::new("patient_id", DataType::Utf8, false),
        Field::new("age_band", DataType::Utf8, false),
        Field::new("diabetes", DataType::Boolean, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            std::sync::Arc::new(StringArray::from_iter_values(
                (0..rows.len()).map(|i| format!("p{i}")),
            )),
            std::sync::Arc::new(StringArray::from_iter_values(
                rows.iter().map(|b| format!("band-{}", b % 5)),
            )),
            std::sync::Arc::new(BooleanArray::from_iter(
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
    if let Some((at, bit)) = flip {
        let at = at % file.len();
        file[at] ^= 1 << bit;
    }
    file
}

/// Found by the `parquet_footer_first` fuzz target (inputs in `fuzz/regressions/`): one bit
/// flipped in the Arrow schema a writer embeds in the footer made arrow-ipc panic while reading
/// the metadata (the embedded schema is no longer read); one bit flipped in a column chunk's
/// offset made the decoder panic on a negative range (offsets are checked first); a page
/// claiming a dictionary that is not there makes the Parquet crate panic while decoding (the
/// parsing pool catches it and refuses the file). Whatever the verdict, there is one, whole or
/// footer first, and never a panic.
#[test]
fn corrupt_parquet_metadata_is_refused_not_panicked_on() {
    let c = contract(None);
    let ehr = c.dataset("ehr").unwrap();
    let intact = fuzzed_parquet(&[1, 2, 3], 2, None);
    let rows: usize = load::load(ehr, UploadFormat::Parquet, &intact)
        .unwrap()
        .iter()
        .map(RecordBatch::num_rows)
        .sum();
    assert_eq!(rows, 3);
    let schema = fuzzed_parquet(&[0xc8, 0x01, 0x00, 0x05, 0x19], 4, Some((0x04f7, 4)));
    let offset = fuzzed_parquet(
        b"\x0fGGGGGGG\xb9\xb9\xb9p2\xb9\xb9\xb9\xb9\xb9\xb9p57\x00p10\xff\xff\xff\xffG,-\xffG\xff",
        1,
        Some((0x3931, 0)),
    );
    // Refused for what it is, before a decoder thread meets it.
    let err = load::load(ehr, UploadFormat::Parquet, &offset)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("negative offset") || err.contains("outside the file's data"),
        "{err}"
    );
    // A page that says it is dictionary encoded where there is no dictionary: the Parquet
    // crate panics in a parsing thread ("Decoder for dict should have been set"); the pool
    // turns that into a refusal of the file.
    let mut rows = vec![0xf7];
    rows.extend([0xff; 23]);
    rows.extend(b"\xc8\x01\x00\x05/\x94\x1f \xf7!\x04\xc8\x01");
    let dictionary = fuzzed_parquet(&rows, 4, Some((0x04ff, 4)));
    let err = load::load(ehr, UploadFormat::Parquet, &dictionary)
        .unwrap_err()
        .to_string();
    assert!(err.contains("decoder failed"), "{err}");
    for file in [schema, offset, dictionary] {
        let _ = load::load(ehr, UploadFormat::Parquet, &file);
        if let Ok((head, rest)) = kura_api::footer_first(&mut std::io::Cursor::new(&file)) {
            let mut ingest = load::Ingest::new(ehr, UploadFormat::ParquetFooterFirst);
            let _ = ingest
                .push(&head)
                .and_then(|()| ingest.push(&file[..rest as usize]));
            let _ = ingest.finish();
        }
    }
}

const SUPPLIERS: [&str; 4] = ["a", "b", "c", "d"];

/// The supply contract (`testdata/contracts/supply-defects.toml`) with `min_pooled_datasets`
/// set to `min_pooled`.
fn supply_contract(min_pooled: u64) -> Contract {
    let parties = [
        "maker",
        "supplier-a",
        "supplier-b",
        "supplier-c",
        "supplier-d",
    ];
    let keys: Vec<String> = parties
        .iter()
        .map(|_| SecretIdentity::generate().public().to_text())
        .collect();
    let named: Vec<(&str, &str)> = parties
        .iter()
        .copied()
        .zip(keys.iter().map(String::as_str))
        .collect();
    let text = kura_contract::example::supply_defects(&named).replace(
        "min_pooled_datasets = 3",
        &format!("min_pooled_datasets = {min_pooled}"),
    );
    Contract::parse(text.as_bytes()).unwrap()
}

/// Each supplier's step records and the maker's inspections: `lots[s][step]` lots of supplier
/// `s` went through `step`; every third lot is defective.
fn supply_tables(c: &Contract, lots: &[Vec<(&str, usize)>]) -> Tables {
    let mut inspections = String::from("lot,defect\n");
    let mut t = Tables::new();
    let mut n = 0;
    for (s, steps) in SUPPLIERS.iter().zip(lots) {
        let mut csv = String::from("lot,step\n");
        for (step, count) in steps {
            for _ in 0..*count {
                writeln!(csv, "L{n},{step}").unwrap();
                writeln!(inspections, "L{n},{}", n % 3 == 0).unwrap();
                n += 1;
            }
        }
        let name = format!("steps_{s}");
        let table = load::load(c.dataset(&name).unwrap(), UploadFormat::Csv, csv.as_bytes());
        t.insert(name, table.unwrap().into());
    }
    let table = load::load(
        c.dataset("inspections").unwrap(),
        UploadFormat::Csv,
        inspections.as_bytes(),
    );
    t.insert("inspections".into(), table.unwrap().into());
    t
}

/// The steps the supply analysis releases, and how many it suppressed.
async fn released_steps(c: &Contract, t: &Tables) -> (Vec<String>, u64) {
    let sql = &c.analysis("defects_by_step").unwrap().sql;
    let out = run_analysis(c, sql, t, None).await.unwrap();
    let steps = out.rows.iter().map(|r| r[0].as_str().unwrap().to_string());
    (steps.collect(), out.suppressed_groups)
}

/// A step pooled by `UNION ALL` is released when each supplier's part is empty or covers the
/// minimum, and enough suppliers have a part; its figures are plain DataFusion's.
#[tokio::test]
async fn pooled_suppliers_release_a_step_only_when_enough_of_them_have_enough_lots() {
    let lots = vec![
        vec![("casting", 12), ("coating", 12), ("welding", 12)],
        vec![("casting", 12), ("coating", 12), ("welding", 12)],
        vec![("casting", 12), ("welding", 3)],
        vec![("plating", 30)],
    ];
    let expect = [
        (1, vec!["casting", "coating", "plating"]),
        (2, vec!["casting", "coating"]),
        (3, vec!["casting"]),
        (4, vec![]),
    ];
    for (min_pooled, steps) in expect {
        let c = supply_contract(min_pooled);
        let t = supply_tables(&c, &lots);
        let (released, suppressed) = released_steps(&c, &t).await;
        assert_eq!(released, steps, "min_pooled_datasets = {min_pooled}");
        // welding always falls: supplier c's part is 3 lots.
        assert_eq!(suppressed as usize, 4 - steps.len(), "{min_pooled}");
    }
    let c = supply_contract(1);
    let t = supply_tables(&c, &lots);
    let sql = &c.analysis("defects_by_step").unwrap().sql;
    let out = run_analysis(&c, sql, &t, None).await.unwrap();
    let expected: Vec<_> = plain(&t, sql)
        .await
        .into_iter()
        .filter(|r| r[0] != "welding")
        .collect();
    assert_eq!(out.rows, expected);
}

/// What the threshold cannot count through a union is refused, with its reason.
#[tokio::test]
async fn unions_the_threshold_cannot_count_through_are_refused() {
    let c = supply_contract(1);
    let t = supply_tables(&c, &[vec![("casting", 12)], vec![], vec![], vec![]]);
    for (sql, reason) in [
        (
            "SELECT u.step, COUNT(*) FROM (SELECT s.lot, s.step FROM steps_a s JOIN steps_b t \
             ON s.lot = t.lot UNION ALL SELECT lot, step FROM steps_c) u GROUP BY u.step",
            "must read exactly one dataset",
        ),
        (
            "SELECT step, COUNT(*) FROM (SELECT step, lot FROM (SELECT lot, step FROM steps_a \
             UNION ALL SELECT lot, step FROM steps_b) p GROUP BY step, lot) q GROUP BY step",
            "UNION ALL under",
        ),
        (
            "SELECT u.step, COUNT(*) FROM (SELECT lot, step FROM steps_a UNION ALL SELECT lot, \
             step FROM steps_a WHERE step = 'casting') u GROUP BY u.step",
            "two branches of the UNION ALL read \"steps_a\"",
        ),
        (
            "SELECT u.step, COUNT(*) FROM (SELECT step, 'x' AS __kura_pool_0_unit FROM steps_a \
             UNION ALL SELECT step, lot FROM steps_b) u GROUP BY u.step",
            "are reserved",
        ),
    ] {
        let err = run_analysis(&c, sql, &t, None)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(reason), "{sql}: {err}");
    }
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config { cases: 32, ..Default::default() })]
    /// For any lots per supplier and step, and any `min_pooled_datasets`, exactly the steps
    /// whose every supplier part is empty or at least 10 lots, with enough suppliers, are
    /// released.
    #[test]
    fn the_pooled_rule_releases_exactly_the_steps_it_should(
        counts in proptest::collection::vec(proptest::collection::vec(0usize..16, 3), 4),
        min_pooled in 1u64..5,
    ) {
        let steps = ["casting", "coating", "welding"];
        let lots: Vec<Vec<(&str, usize)>> = counts
            .iter()
            .map(|per| steps.iter().copied().zip(per.iter().copied()).collect())
            .collect();
        let c = supply_contract(min_pooled);
        let t = supply_tables(&c, &lots);
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let (released, suppressed) = runtime.block_on(released_steps(&c, &t));
        let mut expected = Vec::new();
        let mut present = 0;
        for (i, step) in steps.iter().enumerate() {
            let parts: Vec<usize> = counts.iter().map(|per| per[i]).filter(|n| *n > 0).collect();
            if parts.is_empty() {
                continue;
            }
            present += 1;
            if parts.iter().all(|n| *n >= 10) && parts.len() as u64 >= min_pooled {
                expected.push(step.to_string());
            }
        }
        proptest::prop_assert_eq!(&released, &expected);
        proptest::prop_assert_eq!(suppressed as usize, present - expected.len());
    }
}

/// `min_pooled_datasets` holds for every released figure, not only for pools: a query over
/// one supplier's records, or over one supplier joined to the maker, is refused, and so is a
/// pool whose other branches supply the figure's values as constants; a pool whose other
/// branches supply NULLs at run time has its figure suppressed.
#[tokio::test]
async fn every_figure_rests_on_enough_pooled_datasets() {
    let c = supply_contract(3);
    let lots = vec![vec![("casting", 12)]; 4];
    let t = supply_tables(&c, &lots);
    for sql in [
        "SELECT step, COUNT(*) AS n FROM steps_a GROUP BY step",
        "SELECT s.step, AVG(CAST(i.defect AS DOUBLE)) AS rate FROM steps_a s \
         JOIN inspections i ON i.lot = s.lot GROUP BY s.step",
        "SELECT COUNT(DISTINCT u.v) AS n FROM (SELECT lot, step AS v FROM steps_a \
         UNION ALL SELECT lot, NULL FROM steps_b UNION ALL SELECT lot, 'x' FROM steps_c \
         UNION ALL SELECT lot, upper('y') FROM steps_d) u",
    ] {
        let err = run_analysis(&c, sql, &t, None).await.unwrap_err();
        assert!(
            matches!(
                &err,
                EngineError::Refused {
                    rule: "min-pooled-datasets",
                    ..
                }
            ),
            "{sql}: {err}"
        );
    }
    // NULLs decided by the data: the other suppliers' rows contribute no value, so the figure
    // is one supplier's and is suppressed; with every supplier's values it is released.
    let padded = "SELECT u.step, COUNT(DISTINCT u.v) AS n FROM (SELECT lot, step, step AS v \
                  FROM steps_a UNION ALL SELECT lot, step, CASE WHEN step = 'zz' THEN step END \
                  FROM steps_b UNION ALL SELECT lot, step, CASE WHEN step = 'zz' THEN step END \
                  FROM steps_c UNION ALL SELECT lot, step, CASE WHEN step = 'zz' THEN step END \
                  FROM steps_d) u GROUP BY u.step";
    let out = run_analysis(&c, padded, &t, None).await.unwrap();
    assert!(out.rows.is_empty(), "{:?}", out.rows);
    assert_eq!(out.suppressed_groups, 1);
    let full = padded.replace("CASE WHEN step = 'zz' THEN step END", "concat(step, '')");
    let out = run_analysis(&c, &full, &t, None).await.unwrap();
    assert_eq!(out.rows.len(), 1, "{:?}", out.rows);
    // The contract's own analysis still runs.
    let (released, _) = released_steps(&c, &t).await;
    assert_eq!(released, ["casting"]);
}
