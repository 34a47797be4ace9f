//! `kura run` and `kura query`: a contract analysis, or an ad-hoc query under the contract's
//! rules (or only the rules' verdict on it, with `--explain`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use kura_client::Client;

use super::{Party, attested, save_head};
use crate::{files, render};

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    party: Party,
    /// The contract's name of the analysis to run.
    #[arg(long)]
    analysis: String,
    /// Print one JSON object on stdout (the result, when you are a receiver).
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("query").required(true).args(["sql", "sql_file"])))]
pub struct QueryArgs {
    #[command(flatten)]
    party: Party,
    /// Say whether the contract's rules would answer the query, which rule would refuse it,
    /// and what it would cost under differential privacy, on this machine: nothing is sent
    /// and no data is read.
    #[arg(long)]
    explain: bool,
    /// The query (SQL); `-` reads it from standard input.
    #[arg(long)]
    sql: Option<String>,
    /// A file holding the query.
    #[arg(long)]
    sql_file: Option<PathBuf>,
    /// Under [privacy.dp]: the ε this query spends (default: the contract's query_epsilon).
    #[arg(long)]
    epsilon: Option<f64>,
    /// Print one JSON object on stdout (the result, when you are a receiver).
    #[arg(long)]
    pub(super) json: bool,
}

pub async fn run(a: RunArgs) -> Result<ExitCode> {
    let mut client = attested(&a.party).await?;
    let resp = client.run(&a.analysis).await?;
    save_head(&client)?;
    show_run(&mut client, resp, a.json).await
}

pub async fn query(a: QueryArgs) -> Result<ExitCode> {
    let sql = match (&a.sql, &a.sql_file) {
        (Some(dash), _) if dash == "-" => std::io::read_to_string(std::io::stdin())
            .context("reading the query from standard input")?,
        (Some(sql), _) => sql.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?,
        (None, None) => unreachable!("clap requires one of --sql and --sql-file"),
    };
    if a.explain {
        return explain(&a.party.contract()?, &sql, a.epsilon, a.json).await;
    }
    let mut client = attested(&a.party).await?;
    let resp = client.query(&sql, a.epsilon).await?;
    save_head(&client)?;
    show_run(&mut client, resp, a.json).await
}

/// Prints a run's result when this party receives it, otherwise where it went.
async fn show_run(
    client: &mut Client,
    resp: kura_api::RunResponse,
    json: bool,
) -> Result<ExitCode> {
    let receiver = resp.receivers.iter().any(|r| r == client.party());
    if receiver {
        let table = client
            .results(Some(&resp.run_id))
            .await?
            .into_iter()
            .next()
            .context("the enclave returned no result for this run")?;
        if json {
            println!("{}", render::result_json(&table));
        } else {
            print!("{}", render::table(&table));
        }
    } else if json {
        println!("{}", serde_json::to_string(&resp)?);
    } else {
        println!(
            "run {} started; results go to {}",
            resp.run_id,
            resp.receivers.join(", ")
        );
    }
    if !json && !resp.deleted.is_empty() {
        eprintln!("deleted after the run: {}", resp.deleted.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

/// The rules' verdict on an ad-hoc query, read from the contract alone (nothing is sent and
/// no data is read): whether it would be answered, which rule would refuse it and why, and its
/// cost under differential privacy. The JSON of `kura query --explain --json`, which the console
/// shows too.
pub(crate) async fn verdict(
    contract: &kura_contract::Contract,
    sql: &str,
    epsilon: Option<f64>,
) -> serde_json::Value {
    let verdict = kura_engine::check_query(contract, sql, epsilon).await;
    let mut out = match &verdict {
        Ok(_) => serde_json::json!({ "allowed": true, "reason": null }),
        Err(kura_engine::EngineError::Refused { rule, reason }) => {
            serde_json::json!({ "allowed": false, "rule": rule, "reason": reason })
        }
        Err(e) => serde_json::json!({ "allowed": false, "reason": e.to_string() }),
    };
    match verdict {
        Ok(Some(s)) => out["dp"] = serde_json::json!({ "epsilon": s.epsilon, "delta": s.delta }),
        Ok(None) => out["min_group_size"] = contract.output.min_group_size.into(),
        Err(_) => {}
    }
    out
}

/// `--explain`: says whether the rules would answer, or which rule would refuse it.
async fn explain(contract: &Path, sql: &str, epsilon: Option<f64>, json: bool) -> Result<ExitCode> {
    let contract = files::read_contract(contract)?;
    let out = verdict(&contract, sql, epsilon).await;
    let allowed = out["allowed"] == true;
    if json {
        println!("{out}");
    } else if let Some(dp) = out.get("dp") {
        println!(
            "would be answered under differential privacy, spending ε = {} and δ = {:e} of each \
             receiver's budget",
            dp["epsilon"].as_f64().unwrap_or_default(),
            dp["delta"].as_f64().unwrap_or_default()
        );
    } else if allowed {
        println!(
            "would be answered: groups and aggregates resting on fewer than {} people are \
             suppressed before HAVING, and only their number is reported",
            out["min_group_size"]
        );
    } else {
        eprintln!(
            "error: would be refused{}: {}",
            out["rule"]
                .as_str()
                .map(|r| format!(" by rule {r}"))
                .unwrap_or_default(),
            out["reason"].as_str().unwrap_or_default()
        );
    }
    Ok(if allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
