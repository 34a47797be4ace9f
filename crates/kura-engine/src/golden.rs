//! Golden queries: `golden/*.sql` hold ad-hoc queries, each followed by its expected outcome.
//!
//! ```text
//! -- what the query tries (comments are kept for the failure message)
//! SELECT ...
//! => refused identifier-use          (the rule that must refuse it)
//! => ok                              (allowed: must equal plain DataFusion minus suppressed groups)
//! => ok suppressed=2                 (... and exactly this many groups suppressed, counted
//!                                     before HAVING and LIMIT)
//! => error                           (refused while planning: unknown table or function)
//! ```
//!
//! Every allowed result is compared with plain DataFusion on the same data, and no output of
//! any query may contain an identifier value.

use std::collections::HashSet;
use std::fmt::Write as _;

use kura_contract::Contract;
use kura_crypto::SecretIdentity;
use serde_json::Value;

use crate::{EngineError, Tables, UploadFormat, load, run_query};

pub(crate) fn contract() -> Contract {
    contract_with("")
}

/// The golden contract with `extra` TOML appended.
pub(crate) fn contract_with(extra: &str) -> Contract {
    Contract::parse((contract_text() + extra).as_bytes()).unwrap()
}

/// The golden contract's text (`testdata/contracts/golden.toml`), with fresh keys.
pub(crate) fn contract_text() -> String {
    kura_contract::example::fill(
        include_str!("../../../testdata/contracts/golden.toml"),
        |name| match name {
            "key:hospital" | "key:insurer" => SecretIdentity::generate().public().to_text(),
            other => panic!("golden.toml: unknown placeholder {other}"),
        },
    )
}

/// 200 patients in four regions, one of them ("isle") with only 3 people; 600 claims.
pub(crate) fn tables(c: &Contract) -> Tables {
    let mut p = String::from("patient_id,age_band,sex,region,birth_year,diabetes,bmi\n");
    let mut cl = String::from("claim_id,patient_id,kind,month,amount\n");
    let bands = ["18-39", "40-59", "60-79", "80+"];
    let regions = ["north", "south", "east"];
    for i in 0..200u64 {
        let region = if i < 3 {
            "isle"
        } else {
            regions[(i % 3) as usize]
        };
        let x = i.wrapping_mul(2654435761) % 1000;
        writeln!(
            p,
            "pat{i:04},{},{},{region},{},{},{:.1}",
            bands[(x % 4) as usize],
            if x % 2 == 0 { "f" } else { "m" },
            1930 + (x % 70),
            x % 5 == 0,
            18.0 + (x % 200) as f64 / 10.0
        )
        .unwrap();
        for k in 0..3u64 {
            let y = (x + k * 37) % 1000;
            writeln!(
                cl,
                "clm{i:04}{k},pat{i:04},{},2026-{:02}-01,{:.2}",
                ["visit", "drug", "lab"][(y % 3) as usize],
                1 + y % 12,
                10.0 + (y * 7 % 5000) as f64 / 10.0
            )
            .unwrap();
        }
    }
    load_csv(c, [("patients", p), ("claims", cl)])
}

/// Parses CSV texts into the contract's datasets of those names.
pub(crate) fn load_csv<const N: usize>(c: &Contract, files: [(&str, String); N]) -> Tables {
    files
        .into_iter()
        .map(|(name, csv)| {
            let d = c.dataset(name).unwrap();
            let batches = load::load(d, UploadFormat::Csv, csv.as_bytes()).unwrap();
            (name.to_string(), batches)
        })
        .collect()
}

struct Case {
    file: String,
    line: usize,
    comment: String,
    sql: String,
    expect: String,
}

fn cases() -> Vec<Case> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("golden");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    let mut out = vec![];
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        let (mut sql, mut comment, mut start) = (String::new(), String::new(), 0);
        for (n, line) in text.lines().enumerate() {
            let t = line.trim();
            if let Some(expect) = t.strip_prefix("=> ") {
                assert!(
                    !sql.trim().is_empty(),
                    "{file}:{}: expectation without SQL",
                    n + 1
                );
                out.push(Case {
                    file: file.clone(),
                    line: start,
                    comment: std::mem::take(&mut comment),
                    sql: std::mem::take(&mut sql),
                    expect: expect.trim().to_string(),
                });
            } else if let Some(c) = t.strip_prefix("--") {
                comment.push_str(c.trim());
                comment.push(' ');
            } else if !t.is_empty() {
                if sql.is_empty() {
                    start = n + 1;
                }
                sql.push_str(line);
                sql.push('\n');
            }
        }
        assert!(
            sql.trim().is_empty(),
            "{file}: SQL without an expectation at the end"
        );
    }
    out
}

fn same(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y || (x - y).abs() <= 1e-9 * x.abs().max(y.abs()),
        _ => a == b,
    }
}

/// Takes `row` out of `pool` if an equal row (floats to 1e-9) is there.
fn take(pool: &mut Vec<Vec<Value>>, row: &[Value]) -> bool {
    match pool
        .iter()
        .position(|p| p.len() == row.len() && p.iter().zip(row).all(|(a, b)| same(a, b)))
    {
        Some(i) => {
            pool.swap_remove(i);
            true
        }
        None => false,
    }
}

#[tokio::test]
async fn golden_queries_get_their_expected_verdicts() {
    let c = contract();
    let t = tables(&c);
    let identifiers: HashSet<String> = (0..200)
        .map(|i| format!("pat{i:04}"))
        .chain((0..600).map(|i| format!("clm{:04}{}", i / 3, i % 3)))
        .collect();
    let all = cases();
    let mut failures = vec![];
    let (mut refused, mut allowed) = (0, 0);
    for case in &all {
        let at = format!("{}:{} ({})", case.file, case.line, case.comment.trim());
        let result = run_query(&c, &case.sql, &t, None).await;
        if let Ok(out) = &result {
            for cell in out.rows.iter().flatten() {
                if let Value::String(s) = cell
                    && identifiers.contains(s)
                {
                    failures.push(format!("{at}: IDENTIFIER {s} IN THE OUTPUT"));
                }
            }
        }
        let words: Vec<&str> = case.expect.split_whitespace().collect();
        match (words.as_slice(), &result) {
            (["refused", rule], Err(EngineError::Refused { rule: got, .. })) if rule == got => {
                refused += 1;
            }
            // Refused before planning completes (unknown table or function).
            (["error"], Err(EngineError::Sql(_))) => refused += 1,
            (["ok", rest @ ..], Ok(out)) => {
                allowed += 1;
                let mut pool = crate::tests::plain(&t, &case.sql).await;
                let total = pool.len();
                for row in &out.rows {
                    if !take(&mut pool, row) {
                        failures.push(format!(
                            "{at}: row {row:?} is not in plain DataFusion's result"
                        ));
                    }
                }
                // Groups are suppressed before HAVING and LIMIT, which may drop some of them
                // in plain DataFusion too: with either, none may vanish uncounted; without,
                // the released and the suppressed groups are exactly plain DataFusion's.
                let upper = case.sql.to_ascii_uppercase();
                let narrowed = upper.contains("HAVING") || upper.contains("LIMIT");
                let accounted = out.rows.len() + out.suppressed_groups as usize;
                if accounted < total || (!narrowed && accounted != total) {
                    failures.push(format!(
                        "{at}: {} rows + {} suppressed, against {total} rows of plain DataFusion",
                        out.rows.len(),
                        out.suppressed_groups
                    ));
                }
                if let Some(n) = rest.iter().find_map(|w| w.strip_prefix("suppressed="))
                    && n.parse::<u64>().unwrap() != out.suppressed_groups
                {
                    {
                        failures.push(format!(
                            "{at}: expected {n} suppressed groups, got {}",
                            out.suppressed_groups
                        ));
                    }
                }
            }
            (_, got) => failures.push(format!(
                "{at}: expected {}, got {}",
                case.expect,
                match got {
                    Ok(o) => format!(
                        "ok ({} rows, {} suppressed)",
                        o.rows.len(),
                        o.suppressed_groups
                    ),
                    Err(e) => format!("{e}"),
                }
            )),
        }
    }
    eprintln!(
        "{} golden queries: {refused} refused as expected, {allowed} allowed",
        all.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(all.len() >= 150, "only {} golden queries", all.len());
    assert!(refused >= 100, "only {refused} refusals");
}
