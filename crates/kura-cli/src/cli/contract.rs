//! `kura contract`: sign, describe and verify a contract on this machine.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use kura_contract::SignatureStatus;

use crate::files;

#[derive(Subcommand, Debug)]
pub enum ContractCmd {
    /// Sign the contract's exact bytes; writes FILE.<party>.sig.
    Sign {
        /// The contract (TOML) to sign, byte for byte.
        #[arg(long)]
        contract: PathBuf,
        /// Your secret key file; its party must be in the contract.
        #[arg(long)]
        key: PathBuf,
    },
    /// What the contract lets each party do: datasets and column roles, analyses, ad-hoc
    /// rules and aggregates, the minimum group size, the privacy budget, retention.
    Describe {
        /// The contract (TOML).
        #[arg(long)]
        contract: PathBuf,
        /// Print one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Check the contract and that every party signed these exact bytes.
    Verify {
        /// The contract (TOML); its .sig files sit beside it.
        #[arg(long)]
        contract: PathBuf,
        /// Print one JSON object on stdout (validity, signatures, warnings).
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cmd: ContractCmd) -> Result<ExitCode> {
    match cmd {
        ContractCmd::Sign { contract, key } => {
            let c = files::read_contract(&contract)?;
            kura_engine::check_analyses(&c)
                .await
                .context("the contract's analyses are invalid")?;
            for w in kura_engine::analysis_warnings(&c).await {
                eprintln!("warning: {w}");
            }
            let id = files::read_identity(&key)?;
            let (party, text) = kura_contract::sign(&c, &id)?;
            let path = files::signature_path(&contract, &party);
            files::write_atomic(&path, text.as_bytes())?;
            println!("signed contract {} as {party}: {}", c.id(), path.display());
            Ok(ExitCode::SUCCESS)
        }
        ContractCmd::Describe { contract, json } => {
            let c = files::read_contract(&contract)?;
            if json {
                println!("{}", crate::describe::json(&c));
            } else {
                print!("{}", crate::describe::text(&c));
            }
            Ok(ExitCode::SUCCESS)
        }
        ContractCmd::Verify { contract, json } => verify_contract(&contract, json).await,
    }
}

async fn verify_contract(path: &Path, json: bool) -> Result<ExitCode> {
    let contract = files::read_contract(path)?;
    let analyses = kura_engine::check_analyses(&contract)
        .await
        .map_err(|e| e.to_string());
    let checks = files::check_signatures(&contract, path);
    let signed = checks.iter().all(|c| c.status == SignatureStatus::Valid);
    let valid = signed && analyses.is_ok();
    let mut warnings = contract.warnings();
    warnings.extend(kura_engine::analysis_warnings(&contract).await);
    let reason = match (&analyses, signed) {
        (Err(e), _) => Some(format!("the contract's analyses are invalid: {e}")),
        (Ok(()), false) => Some(
            checks
                .iter()
                .filter_map(|c| c.reason.clone())
                .collect::<Vec<_>>()
                .join("; "),
        ),
        _ => None,
    };
    if json {
        println!(
            "{}",
            serde_json::json!({"valid": valid, "contract_id": contract.id(), "name": contract.name, "signatures": checks, "reason": reason, "warnings": warnings})
        );
    } else {
        println!("contract {} ({})", contract.name, contract.id());
        for c in &checks {
            let status = match c.status {
                SignatureStatus::Valid => "signed",
                SignatureStatus::Missing => "NOT SIGNED",
                SignatureStatus::Invalid => "INVALID SIGNATURE",
            };
            println!("  {:<24} {status}", c.party);
        }
        for w in &warnings {
            eprintln!("warning: {w}");
        }
    }
    if valid {
        Ok(ExitCode::SUCCESS)
    } else {
        if let Some(r) = reason {
            eprintln!("error: {r}");
        }
        Ok(ExitCode::from(1))
    }
}
