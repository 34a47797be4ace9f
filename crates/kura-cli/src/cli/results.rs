//! `kura results`: fetch, open and check the results sealed to this party.

use std::path::PathBuf;
use std::process::ExitCode;

use std::io::{IsTerminal, Write};

use anyhow::{Context, Result, bail};
use clap::ValueEnum;

use super::{Party, attested};
use crate::{export, files, render};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned text for people.
    Table,
    /// CSV with a header line.
    Csv,
    /// The stable JSON shape (the same as --json).
    Json,
    /// A Parquet file of the result's column types (needs --out, or a pipe).
    Parquet,
    /// An Arrow IPC file of the result's column types (needs --out, or a pipe).
    Arrow,
}

#[derive(clap::Args, Debug)]
pub struct ResultsArgs {
    #[command(flatten)]
    party: Party,
    /// Only this run's result (default: every result sealed to you).
    #[arg(long)]
    run: Option<String>,
    /// How to print the result: table, csv, json (the same as --json), or typed parquet and
    /// arrow files.
    #[arg(long, value_enum, default_value = "table")]
    pub(super) format: Format,
    /// Print one JSON object on stdout (same as --format json).
    #[arg(long)]
    pub(super) json: bool,
    /// Write to this file instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also write the ONNX file of a model analysis's result here (the model the table
    /// describes, ready for any ONNX runtime, or to upload as a `[[models]]` entry).
    #[arg(long, value_name = "FILE")]
    onnx: Option<PathBuf>,
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
    if let Some(path) = &a.onnx {
        let mut models = tables.iter().filter_map(|t| t.onnx.as_deref());
        let (Some(model), None) = (models.next(), models.next()) else {
            bail!("--onnx needs exactly one result with a model file: choose it with --run");
        };
        let bytes = kura_crypto::b64::decode(model).context("the result's model file")?;
        files::write_atomic(path, &bytes)?;
    }
    let format = if a.json { Format::Json } else { a.format };
    let bytes = match format {
        Format::Table => tables.iter().map(render::table).collect::<String>().into(),
        Format::Csv => tables
            .iter()
            .map(render::csv)
            .collect::<Result<String>>()?
            .into(),
        Format::Json if tables.len() == 1 => {
            format!("{}\n", render::result_json(&tables[0])).into()
        }
        Format::Json => format!("{}\n", serde_json::to_string(&tables)?).into(),
        Format::Parquet => export::parquet(export::single(&tables)?)?,
        Format::Arrow => export::arrow_ipc(export::single(&tables)?)?,
    };
    let binary = matches!(format, Format::Parquet | Format::Arrow);
    match a.out {
        Some(path) => files::write_atomic(&path, &bytes)?,
        None if binary && std::io::stdout().is_terminal() => {
            bail!("a {format:?} file is binary: write it with --out FILE or into a pipe")
        }
        None => std::io::stdout()
            .write_all(&bytes)
            .context("writing to standard output")?,
    }
    Ok(ExitCode::SUCCESS)
}
