//! `kura audit`: verify the enclave's log, and the transparency report built from it.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Subcommand, ValueEnum};

use super::{Party, attested, save_head};
use crate::render;

#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// Fetch the log and verify chain, signatures, enclave evidence, the signed Merkle root,
    /// consistency with what you saw before, and that every event was allowed by the contract.
    Verify {
        #[command(flatten)]
        party: Party,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// The transparency report: who provided and received what, for which purpose, which
    /// analyses ran when, and when the data was deleted; built from the verified log.
    Report {
        #[command(flatten)]
        party: Party,
        /// Markdown for people, JSON for tools.
        #[arg(long, value_enum, default_value = "md")]
        format: ReportFormat,
        /// Print one JSON object on stdout (same as --format json).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Md,
    Json,
}

pub async fn run(cmd: AuditCmd) -> Result<ExitCode> {
    match cmd {
        AuditCmd::Report {
            party,
            format,
            json,
        } => {
            let format = if json { ReportFormat::Json } else { format };
            let mut client = attested(&party).await?;
            let report = client.audit().await?;
            save_head(&client)?;
            let transparency = crate::report::build(client.contract(), &report)?;
            match format {
                ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&transparency)?),
                ReportFormat::Md => print!("{}", crate::report::markdown(&transparency)),
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCmd::Verify { party, json } => {
            let mut client = attested(&party).await?;
            let report = client.audit().await?;
            save_head(&client)?;
            if json {
                let events: Vec<_> = report
                    .entries
                    .iter()
                    .filter_map(|e| e.parse_body().ok())
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({"valid": true, "entries": report.chain.entries, "enclave_starts": report.chain.enclave_starts, "head": report.chain.head, "root": report.chain.root, "events": events})
                );
            } else {
                print!("{}", render::audit(&report));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
