//! The cost of differential privacy: the same grouped statistics over a two-dataset join,
//! run by plain DataFusion, under kura's minimum-group-size rule, and under DP (contribution
//! bounding after the join, then exact discrete Laplace noise). Prints one table with ratios
//! to plain DataFusion, measured in the same run on the same data.
//!
//! `cargo bench -p kura-engine --bench dp [-- --rows N]` (default 1,000,000 people).

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use kura_contract::Contract;
use kura_crypto::SecretIdentity;
use kura_engine::{Tables, UploadFormat, load};

fn contract() -> Contract {
    let text = kura_contract::example::fill(
        include_str!("../../../testdata/contracts/bench-dp.toml"),
        |_| SecretIdentity::generate().public().to_text(),
    );
    Contract::parse(text.as_bytes()).unwrap()
}

fn tables(c: &Contract, people: usize) -> Tables {
    let mut p = String::from("patient_id,age_band\n");
    let mut cl = String::from("patient_id,amount\n");
    let bands = ["18-39", "40-59", "60-79", "80+"];
    for i in 0..people {
        writeln!(p, "p{i},{}", bands[i % 4]).unwrap();
        for k in 0..(i % 3 + 1) {
            writeln!(cl, "p{i},{}.5", (i * 7 + k * 13) % 1200).unwrap();
        }
    }
    let mut t = Tables::new();
    for (name, csv) in [("patients", p), ("claims", cl)] {
        let d = c.dataset(name).unwrap();
        t.insert(
            name.into(),
            load::load(d, UploadFormat::Csv, csv.as_bytes())
                .unwrap()
                .into(),
        );
    }
    t
}

const SQL: &str = "SELECT p.age_band, COUNT(*) AS n, SUM(c.amount) AS total, AVG(c.amount) AS mean \
                   FROM patients p JOIN claims c ON p.patient_id = c.patient_id \
                   GROUP BY p.age_band ORDER BY p.age_band";

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let people = args
        .iter()
        .position(|a| a == "--rows")
        .and_then(|i| args.get(i + 1))
        .map_or(1_000_000, |n| n.parse().expect("--rows N"));
    let runs = 5;
    let c = contract();
    let t = tables(&c, people);
    let rt = tokio::runtime::Runtime::new().unwrap();

    let mut results: Vec<(&str, Duration)> = Vec::new();
    let time = |f: &dyn Fn()| {
        median(
            (0..runs)
                .map(|_| {
                    let s = Instant::now();
                    f();
                    s.elapsed()
                })
                .collect(),
        )
    };
    let plain = time(&|| {
        rt.block_on(async {
            let ctx = datafusion::prelude::SessionContext::new();
            for (name, table) in &t {
                let kura_engine::Table::Held(batches) = table else {
                    unreachable!("the bench holds its tables")
                };
                let schema = batches[0].schema();
                let table =
                    datafusion::datasource::MemTable::try_new(schema, vec![batches.clone()])
                        .unwrap();
                ctx.register_table(name.as_str(), std::sync::Arc::new(table))
                    .unwrap();
            }
            ctx.sql(SQL).await.unwrap().collect().await.unwrap();
        })
    });
    results.push(("plain DataFusion", plain));
    results.push((
        "kura, minimum group size",
        time(&|| {
            rt.block_on(kura_engine::run_query(&c, SQL, &t, None))
                .unwrap();
        }),
    ));
    results.push((
        "kura, differential privacy",
        time(&|| {
            rt.block_on(kura_engine::dp::run(&c, SQL, None, &t))
                .unwrap();
        }),
    ));

    println!("DP overhead: {people} people, their claims joined, 4 groups; median of {runs} runs");
    println!("{:<28} {:>12} {:>10}", "engine", "time (ms)", "ratio");
    for (name, d) in &results {
        println!(
            "{:<28} {:>12.1} {:>9.2}x",
            name,
            d.as_secs_f64() * 1e3,
            d.as_secs_f64() / plain.as_secs_f64()
        );
    }
}
