//! `kura results`: fetch, open and check the results sealed to this party.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::ValueEnum;

use super::{Party, attested};
use crate::{files, render};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

#[derive(clap::Args, Debug)]
pub struct ResultsArgs {
    #[command(flatten)]
    party: Party,
    /// Only this run's result (default: every result sealed to you).
    #[arg(long)]
    run: Option<String>,
    /// How to print the result; `json` is the same as --json.
    #[arg(long, value_enum, default_value = "table")]
    pub(super) format: Format,
    /// Print one JSON object on stdout (same as --format json).
    #[arg(long)]
    pub(super) json: bool,
    /// Write to this file instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub async fn run(a: ResultsArgs) -> Result<ExitCode> {
    let mut client = attested(&a.party).await?;
    let tables = client.results(a.run.as_deref()).await?;
    if tables.is_empty() {
        bail!(
            "there are no results for party {} on this enclave instance",
            client.party()
        );
    }
    let format = if a.json { Format::Json } else { a.format };
    let text = match format {
        Format::Table => tables.iter().map(render::table).collect::<String>(),
        Format::Csv => tables.iter().map(render::csv).collect::<String>(),
        Format::Json if tables.len() == 1 => {
            format!("{}\n", render::result_json(&tables[0]))
        }
        Format::Json => format!("{}\n", serde_json::to_string(&tables)?),
    };
    match a.out {
        Some(path) => files::write_atomic(&path, text.as_bytes())?,
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}
