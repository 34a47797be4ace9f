//! `kura upload`: encrypt a dataset on this machine and stream it to the enclave.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

use super::{Party, attested, save_head};
use crate::render;

#[derive(clap::Args, Debug)]
pub struct UploadArgs {
    #[command(flatten)]
    party: Party,
    /// The contract's name of the dataset you provide.
    #[arg(long)]
    dataset: String,
    /// CSV (with a header line) or Parquet (.parquet).
    #[arg(long)]
    file: PathBuf,
}

pub async fn run(a: UploadArgs) -> Result<ExitCode> {
    let mut client = attested(&a.party).await?;
    let size = std::fs::metadata(&a.file)
        .with_context(|| format!("cannot read {}", a.file.display()))?
        .len();
    let bar = render::progress(size, &format!("encrypting and uploading {}", a.dataset));
    let b = bar.clone();
    let resp = client
        .upload(&a.dataset, &a.file, move |n| b.set_position(n))
        .await;
    bar.finish_and_clear();
    let resp = resp?;
    // The log now holds this upload: a later view without it is a rollback.
    save_head(&client)?;
    println!(
        "uploaded {}: {} rows, {} encrypted bytes; receipt {}",
        resp.dataset,
        resp.rows,
        resp.ciphertext_bytes,
        resp.receipt.entry.hash()
    );
    Ok(ExitCode::SUCCESS)
}
