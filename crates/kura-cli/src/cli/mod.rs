//! Argument parsing, and one module per command.

mod attest;
mod audit;
mod budget;
pub(crate) mod console;
mod contract;
mod keys;
mod profile;
mod query;
mod release;
mod results;
mod serve;
mod upload;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use kura_client::Client;

use crate::files;

#[derive(Parser, Debug)]
#[command(
    name = "kura",
    version,
    about = "Confidential data clean rooms on trusted execution environments"
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

impl Args {
    pub fn json_output(&self) -> bool {
        match &self.command {
            Command::Contract(
                contract::ContractCmd::Verify { json, .. }
                | contract::ContractCmd::Describe { json, .. },
            ) => *json,
            Command::Run(a) => a.json,
            Command::Query(a) => a.json,
            Command::Budget(a) => a.json,
            Command::Release(a) => a.json,
            Command::Audit(audit::AuditCmd::Verify { json, .. }) => *json,
            Command::Audit(audit::AuditCmd::Report { json, format, .. }) => {
                *json || *format == audit::ReportFormat::Json
            }
            Command::Attest(attest::AttestCmd::Verify(a)) => a.json,
            #[cfg(feature = "demo")]
            Command::Demo(a) => a.json,
            Command::Results(a) => a.json || a.format == results::Format::Json,
            _ => false,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create identities.
    #[command(subcommand)]
    Keys(keys::KeysCmd),
    /// Sign and verify contracts.
    #[command(subcommand)]
    Contract(contract::ContractCmd),
    /// Run the enclave service.
    Serve(serve::ServeArgs),
    /// Run a cluster executor (an enclave of its own) for a coordinator's service.
    Executor(serve::ExecutorArgs),
    /// Encrypt a dataset on this machine and upload it to the enclave.
    Upload(upload::UploadArgs),
    /// Release your stored datasets' keys to a restarted or upgraded enclave instance.
    Release(release::ReleaseArgs),
    /// Run an analysis of the contract.
    Run(query::RunArgs),
    /// Run an ad-hoc query under the contract's analysis rules.
    Query(query::QueryArgs),
    /// Fetch, decrypt and verify your results.
    Results(results::ResultsArgs),
    /// Serve this party's console: the clean room in a browser, on 127.0.0.1 only.
    Console(console::ConsoleArgs),
    /// Show the differential-privacy budget spent and remaining, from the verified log.
    Budget(budget::BudgetArgs),
    /// Verify the enclave's audit log.
    #[command(subcommand)]
    Audit(audit::AuditCmd),
    /// Verify attestation evidence offline.
    #[command(subcommand)]
    Attest(attest::AttestCmd),
    /// Run a complete two-party collaboration on synthetic data, on loopback.
    #[cfg(feature = "demo")]
    Demo(crate::demo::DemoArgs),
    /// Print a shell completion script (e.g. `kura completions bash > /etc/bash_completion.d/kura`).
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `kura man | man -l -`.
    Man,
}

/// Where the enclave is, and who this party is: from flags, environment variables, or the
/// profile file (see [`profile`]).
#[derive(clap::Args, Clone, Debug)]
pub struct Party {
    /// Base URL of the enclave service, e.g. http://127.0.0.1:8700 (or `enclave` in the
    /// profile).
    #[arg(long, env = "KURA_ENCLAVE")]
    enclave: Option<String>,
    /// The signed contract (TOML); its .sig files sit beside it (or `contract` in the profile).
    #[arg(long, env = "KURA_CONTRACT")]
    contract: Option<PathBuf>,
    /// Your secret key file (or `key` in the profile).
    #[arg(long, env = "KURA_KEY")]
    key: Option<PathBuf>,
    /// The profile in $KURA_HOME/profiles.toml to take the three values above from when they
    /// are not given (default: the profile named `default`, if any).
    #[arg(long, env = "KURA_PROFILE")]
    profile: Option<String>,
    /// Fetch a VCEK or DCAP collateral the enclave did not send from AMD's or Intel's service
    /// (cached in $KURA_HOME/cache). Without it only the cache is used: no network.
    #[arg(long)]
    fetch: bool,
}

impl Party {
    /// Fills what flags and variables left out from the profile file.
    fn resolved(&self) -> Result<Party> {
        self.resolved_from(&profile::path()?)
    }

    /// [`Party::resolved`] with the profiles in `file`. A profile asked for by name must exist
    /// even when the flags leave nothing for it to fill.
    fn resolved_from(&self, file: &std::path::Path) -> Result<Party> {
        let complete = self.enclave.is_some() && self.contract.is_some() && self.key.is_some();
        if complete && self.profile.is_none() {
            return Ok(self.clone());
        }
        let profile = profile::load(file, self.profile.as_deref())?;
        Ok(Party {
            enclave: self.enclave.clone().or(profile.enclave),
            contract: self.contract.clone().or(profile.contract),
            key: self.key.clone().or(profile.key),
            profile: self.profile.clone(),
            fetch: self.fetch,
        })
    }

    /// The contract's path, wherever it was given.
    fn contract(&self) -> Result<PathBuf> {
        self.resolved()?
            .contract
            .with_context(|| missing("contract", "KURA_CONTRACT"))
    }

    fn client(&self) -> Result<Client> {
        let p = self.resolved()?;
        let enclave = p
            .enclave
            .with_context(|| missing("enclave", "KURA_ENCLAVE"))?;
        let contract = p
            .contract
            .with_context(|| missing("contract", "KURA_CONTRACT"))?;
        let key = p.key.with_context(|| missing("key", "KURA_KEY"))?;
        let contract = files::read_signed_contract(&contract)?;
        let key = files::read_identity(&key)?;
        Ok(Client::new(&enclave, contract, key)?.with_certs(files::cert_store(self.fetch)?))
    }
}

/// The refusal when neither a flag, its variable nor the profile gives a value.
fn missing(flag: &str, var: &str) -> String {
    format!("--{flag} (or {var}, or `{flag}` in a profile) is required")
}

/// Attests, checks that the log extends the tree head this party saw last time, and warns
/// loudly when the platform is simulated.
async fn attested(party: &Party) -> Result<Client> {
    let client = party.client()?;
    let known = files::load_head(client.contract().id().as_str(), client.party())?;
    let mut client = client.with_known_head(known);
    let enclave = client.attest().await?;
    if enclave.is_simulated() {
        eprintln!("WARNING: {}", kura_attestation::simulated::WARNING);
    }
    save_head(&client)?;
    Ok(client)
}

/// A provider's bucket settings and credentials, from a TOML file (keep it like a key file).
fn storage(path: Option<&std::path::Path>) -> Result<Option<kura_api::Storage>> {
    let Some(path) = path else { return Ok(None) };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the storage file {}", path.display()))?;
    // The parser's message could quote a credential: name only the file.
    let storage = toml::from_str(&text).map_err(|_| {
        anyhow::anyhow!(
            "{} is not a storage file (url, access_key_id, secret_access_key; optionally \
             endpoint, region, session_token, allow_http)",
            path.display()
        )
    })?;
    Ok(Some(storage))
}

fn save_head(client: &Client) -> Result<()> {
    match client.known_head() {
        Some(head) => files::save_head(client.contract().id().as_str(), client.party(), head),
        None => Ok(()),
    }
}

pub async fn dispatch(args: Args) -> Result<ExitCode> {
    match args.command {
        Command::Keys(cmd) => keys::run(cmd),
        Command::Contract(cmd) => contract::run(cmd).await,
        Command::Serve(a) => serve::run(a),
        Command::Executor(a) => serve::executor(a),
        Command::Upload(a) => upload::run(a).await,
        Command::Release(a) => release::run(a).await,
        Command::Run(a) => query::run(a).await,
        Command::Query(a) => query::query(a).await,
        Command::Budget(a) => budget::run(a).await,
        Command::Console(a) => console::run(a).await,
        Command::Results(a) => results::run(a).await,
        Command::Audit(cmd) => audit::run(cmd).await,
        Command::Attest(cmd) => attest::run(cmd).await,
        #[cfg(feature = "demo")]
        Command::Demo(a) => crate::demo::run(a).await,
        Command::Completions { shell } => {
            let mut cmd = <Args as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "kura", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            let cmd = <Args as clap::CommandFactory>::command();
            clap_mangen::Man::new(cmd)
                .render(&mut std::io::stdout())
                .context("writing the manual page")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// A flag wins over the profile, the profile fills what flags leave out, and a profile
    /// asked for by name must exist.
    #[test]
    fn flags_win_and_the_profile_fills_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("profiles.toml");
        std::fs::write(
            &file,
            "[default]\nenclave = \"http://profile\"\nkey = \"k.key\"\n",
        )
        .unwrap();
        let party = |enclave: Option<&str>, profile: Option<&str>| super::Party {
            enclave: enclave.map(str::to_string),
            contract: Some("c.toml".into()),
            key: None,
            profile: profile.map(str::to_string),
            fetch: false,
        };
        let p = party(None, None).resolved_from(&file).unwrap();
        assert_eq!(p.enclave.as_deref(), Some("http://profile"));
        assert_eq!(p.key, Some(dir.path().join("k.key")));
        assert_eq!(p.contract, Some("c.toml".into()));
        let p = party(Some("http://flag"), None)
            .resolved_from(&file)
            .unwrap();
        assert_eq!(p.enclave.as_deref(), Some("http://flag"));
        let mut complete = party(Some("http://flag"), Some("prod"));
        complete.key = Some("mine.key".into());
        let err = format!("{:#}", complete.resolved_from(&file).unwrap_err());
        assert!(err.contains("no profile \"prod\""), "{err}");
    }

    /// Every command and every flag says what it is for in `--help`.
    #[test]
    fn every_command_and_flag_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            if cmd.get_about().is_none() && path != "kura" {
                missing.push(format!("{path}: the command"));
            }
            for arg in cmd.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && !arg.is_hide_set() && arg.get_help().is_none() {
                    missing.push(format!("{path}: --{}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Args::command(), "", &mut missing);
        assert!(missing.is_empty(), "without help:\n{}", missing.join("\n"));
    }
}
