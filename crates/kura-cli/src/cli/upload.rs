//! `kura upload`: encrypt a dataset on this machine and stream it to the enclave.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

use super::{Party, attested, save_head, storage};
use crate::render;

#[derive(clap::Args, Debug)]
pub struct UploadArgs {
    #[command(flatten)]
    party: Party,
    /// The contract's name of the dataset (or `[[models]]` entry) you provide.
    #[arg(long)]
    dataset: String,
    /// CSV (with a header line) or Parquet (.parquet); for a model, its ONNX file (the one whose
    /// SHA-256 the contract pins). Repeat to upload several files, each a batch of the dataset.
    #[arg(long, required = true)]
    file: Vec<PathBuf>,
    /// Add to a dataset already uploaded, as a new batch (without it, a dataset takes one
    /// upload).
    #[arg(long)]
    append: bool,
    /// Keep the dataset in your own bucket (TOML: url, endpoint, region, access_key_id,
    /// secret_access_key, allow_http) instead of the service's store.
    #[arg(long, env = "KURA_STORAGE")]
    storage: Option<PathBuf>,
}

pub async fn run(a: UploadArgs) -> Result<ExitCode> {
    let mut client = attested(&a.party)
        .await?
        .with_storage(storage(a.storage.as_deref())?);
    client.set_append(a.append);
    for file in &a.file {
        let size = std::fs::metadata(file)
            .with_context(|| format!("cannot read {}", file.display()))?
            .len();
        let bar = render::progress(size, &format!("encrypting and uploading {}", a.dataset));
        let b = bar.clone();
        let resp = client
            .upload(&a.dataset, file, move |n| b.set_position(n))
            .await;
        bar.finish_and_clear();
        let resp = resp?;
        // The log now holds this upload: a later view without it is a rollback.
        save_head(&client)?;
        let what = match client.contract().model(&a.dataset) {
            Some(_) => "the model file".to_string(),
            None => format!("{} rows", resp.rows),
        };
        println!(
            "uploaded {}: {what}, {} encrypted bytes; receipt {}",
            resp.dataset,
            resp.ciphertext_bytes,
            resp.receipt.entry.hash()
        );
        // The files after the first are batches of the same dataset.
        client.set_append(true);
    }
    Ok(ExitCode::SUCCESS)
}
