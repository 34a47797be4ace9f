//! `kura release`: give a restarted (or upgraded) enclave instance the keys of your stored
//! datasets, after verifying its evidence and the whole log, so that it reads them from
//! storage again instead of asking for a new upload.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use super::{Party, attested, save_head, storage};

#[derive(clap::Args, Debug)]
pub struct ReleaseArgs {
    #[command(flatten)]
    party: Party,
    /// Only this dataset (repeatable). Default: every stored dataset you provide that this
    /// enclave instance does not hold yet. A deleted dataset's keys are never released.
    #[arg(long)]
    dataset: Vec<String>,
    /// Your bucket's location and credentials (TOML: url, endpoint, region, access_key_id,
    /// secret_access_key, allow_http), for datasets kept there.
    #[arg(long, env = "KURA_STORAGE")]
    storage: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(a: ReleaseArgs) -> Result<ExitCode> {
    let mut client = attested(&a.party)
        .await?
        .with_storage(storage(a.storage.as_deref())?);
    let released = client.release(&a.dataset).await?;
    save_head(&client)?;
    if a.json {
        let rows: Vec<_> = released
            .iter()
            .map(|r| {
                serde_json::json!({
                    "dataset": r.dataset,
                    "batches": r.batches,
                    "rows": r.rows,
                    "receipt": r.receipt.entry.hash(),
                })
            })
            .collect();
        println!("{}", serde_json::json!({ "released": rows }));
    } else if released.is_empty() {
        println!(
            "nothing to release: this enclave instance holds every stored dataset you provide"
        );
    } else {
        for r in &released {
            println!(
                "released {}: {} batch(es), {} rows; receipt {}",
                r.dataset,
                r.batches,
                r.rows,
                r.receipt.entry.hash()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
