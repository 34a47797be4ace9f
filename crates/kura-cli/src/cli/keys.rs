//! `kura keys`: a party's identity.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Subcommand;
use kura_crypto::SecretIdentity;

use crate::files;

#[derive(Subcommand, Debug)]
pub enum KeysCmd {
    /// Make a signing key and an encryption key: DIR/NAME.key (0600) and DIR/NAME.pub.
    New {
        /// The party's name as the contract will name it (a-z, 0-9, '-').
        #[arg(long)]
        name: String,
        /// Directory for NAME.key and NAME.pub (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(cmd: KeysCmd) -> Result<ExitCode> {
    let KeysCmd::New { name, out } = cmd;
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        || name.is_empty()
    {
        bail!("name {name:?} is invalid: use a-z, 0-9 and '-' (it becomes the party name)");
    }
    let id = SecretIdentity::generate();
    let (key, public) = files::write_identity(&out, &name, &id)?;
    println!(
        "wrote {} (secret, mode 0600) and {}",
        key.display(),
        public.display()
    );
    println!("fingerprint {}", id.public().fingerprint());
    Ok(ExitCode::SUCCESS)
}
