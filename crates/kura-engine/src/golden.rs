//! The golden contract and data, which the sqllogictest files ([`crate::slt`]), the hunt and
//! the DP tests query.

use std::fmt::Write as _;

use kura_contract::Contract;
use kura_crypto::SecretIdentity;

use crate::{Tables, UploadFormat, load};

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
            (name.to_string(), batches.into())
        })
        .collect()
}

/// What plain DataFusion answers to `sql` over the held tables `t`.
pub(crate) async fn plain(t: &Tables, sql: &str) -> Vec<Vec<serde_json::Value>> {
    let ctx = datafusion::execution::context::SessionContext::new();
    // The same total casts and divisions as kura's sessions (a cast that does not fit is NULL).
    ctx.add_analyzer_rule(std::sync::Arc::new(crate::total::Total));
    for (name, table) in t {
        let batches = table.batches();
        ctx.register_batch(
            name,
            datafusion::arrow::compute::concat_batches(&batches[0].schema(), batches).unwrap(),
        )
        .unwrap();
    }
    let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
    crate::output::rows(&batches).unwrap()
}
