//! `kura demo`: organisations combine data through a real enclave service on loopback.
//!
//! Everything goes through the same code paths as production: key files, a signed contract,
//! attestation, encrypted upload over HTTP, the output rules, sealed results and the audit log.
//! The platform is simulated, and says so. Each scenario is a module:
//!
//! - `health` (the default): a hospital and a fitness company, statistics under the threshold;
//! - `fraud`: two banks train a fraud model on their pooled transactions, and each scores its
//!   own new transactions with it;
//! - `aml`: three banks find money mules across banks, each bank only its own accounts;
//! - `statistics`: a mobile operator provides a city with statistics only, under a published
//!   purpose; the deliverable is the transparency report and the deletion record;
//! - `ads`: a publisher and an advertiser measure audience overlap and conversion by segment
//!   under differential privacy, until the budget is spent.
//! - `supply`: a maker and four suppliers compare defect rates by process step, pooled so that
//!   no figure is one supplier's.

mod ads;
mod aml;
mod fraud;
mod health;
mod statistics;
mod supply;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use kura_api::ResultTable;
use kura_client::Client;
use kura_contract::{Platform, SignedContract};

use crate::{files, render};

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Which collaboration to run.
    #[arg(long, value_enum, default_value_t = Scenario::Health)]
    pub scenario: Scenario,
    /// Size of the synthetic data: patients in the hospital's data set (health), transactions
    /// per bank (fraud), transfers per bank (aml), visits (statistics), readers (ads), lots per
    /// supplier (supply).
    #[arg(long, default_value_t = 5000)]
    pub rows: usize,
    /// Print one JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
    /// Seed of the synthetic data generator.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Open the scenario's room in each party's console instead of running its steps: the
    /// contract is signed, the data generated and the enclave started; the parties upload,
    /// run and verify in their browsers. Prints each party's console address; Ctrl-C stops.
    #[arg(long)]
    pub console: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// A hospital and a fitness company: diabetes by activity, under the threshold.
    Health,
    /// Two banks train a fraud model on pooled transactions and score new ones.
    Fraud,
    /// Three banks find money mules across banks; each sees only its own accounts.
    Aml,
    /// A company provides statistics only to a third party, with the transparency report and
    /// the deletion record.
    Statistics,
    /// A publisher and an advertiser measure audience overlap and conversion by segment, under
    /// differential privacy.
    Ads,
    /// A maker and four suppliers compare defect rates by process step, pooled across
    /// suppliers so that no figure is one supplier's.
    Supply,
}

pub async fn run(args: DemoArgs) -> Result<ExitCode> {
    eprintln!("WARNING: {}", kura_attestation::simulated::WARNING);
    if args.console {
        return consoles(args).await;
    }
    match args.scenario {
        Scenario::Health => health::run(args).await,
        Scenario::Fraud => fraud::run(args).await,
        Scenario::Aml => aml::run(args).await,
        Scenario::Statistics => statistics::run(args).await,
        Scenario::Ads => ads::run(args).await,
        Scenario::Supply => supply::run(args).await,
    }
}

/// `--console`: the scenario's room, with one console per party and nothing done yet.
async fn consoles(args: DemoArgs) -> Result<ExitCode> {
    let (room, contract) = match args.scenario {
        Scenario::Health => health::setup(&args)?,
        Scenario::Fraud => fraud::setup(&args)?,
        Scenario::Aml => aml::setup(&args).map(|(room, contract, _)| (room, contract))?,
        Scenario::Statistics => statistics::setup(&args)?,
        Scenario::Ads => ads::setup(&args).map(|(room, contract, _)| (room, contract))?,
        Scenario::Supply => supply::setup(&args)?,
    };
    let parties: Vec<&str> = contract.parties.iter().map(|p| p.name.as_str()).collect();
    let (running, _, _) = room.enclave(&contract, &parties).await?;
    let data = room.data()?;
    let mut plan = Vec::new();
    for party in &parties {
        let key = room.keys().join(format!("{party}.key"));
        let console = crate::cli::console::start(
            crate::cli::console::Setup {
                enclave: running.url(),
                contract: room.root().join("contract.toml"),
                key: files::read_identity(&key)?,
                certs: None,
                storage: None,
                persist_heads: false,
            },
            0,
        )
        .await?;
        let mut uploads = Vec::new();
        for d in contract.datasets.iter().filter(|d| d.provider == *party) {
            let file = data.join(format!("{}.csv", d.name));
            anyhow::ensure!(file.exists(), "the generator wrote no {}", file.display());
            uploads.push(serde_json::json!({ "dataset": d.name, "file": file }));
        }
        room.say(format!("{party}'s console: {}", console.url));
        for u in &uploads {
            room.say(format!("  uploads {} from {}", u["dataset"], u["file"]));
        }
        plan.push(serde_json::json!({
            "party": party,
            "console": console.url,
            "key": key,
            "uploads": uploads,
        }));
    }
    let analyses: Vec<_> = contract
        .analyses
        .iter()
        .map(|a| serde_json::json!({ "name": a.name, "receivers": a.receivers }))
        .collect();
    if args.json {
        let scenario =
            clap::ValueEnum::to_possible_value(&args.scenario).map(|v| v.get_name().to_string());
        println!(
            "{}",
            serde_json::json!({
                "scenario": scenario,
                "platform": "simulated",
                "warning": kura_attestation::simulated::WARNING,
                "contract": room.root().join("contract.toml"),
                "contract_id": contract.id(),
                "purpose": contract.purpose,
                "enclave": running.url(),
                "parties": plan,
                "analyses": analyses,
            })
        );
    } else {
        room.say("open each party's address in a browser; Ctrl-C stops the room".into());
    }
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    running.shutdown().await?;
    Ok(ExitCode::SUCCESS)
}

/// A demo's working directory, its parties' keys, and how it speaks.
struct Room {
    dir: tempfile::TempDir,
    json: bool,
}

impl Room {
    /// A fresh room, announced by `title` and where it lives.
    fn new(json: bool, title: &str) -> Result<Self> {
        let room = Self {
            dir: tempfile::tempdir().context("cannot create a temporary directory")?,
            json,
        };
        room.say(format!("{title}, in {}", room.root().display()));
        Ok(room)
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn keys(&self) -> PathBuf {
        self.root().join("keys")
    }

    /// A line for the reader; nothing with `--json`, whose summary is all of stdout.
    fn say(&self, line: String) {
        if !self.json {
            println!("{line}");
        }
    }

    /// Makes each party's key, writes the contract `text(public keys)` and has every party
    /// sign its exact bytes.
    fn sign(
        &self,
        parties: &[&str],
        text: impl FnOnce(&[String]) -> String,
    ) -> Result<SignedContract> {
        let mut public = Vec::new();
        for party in parties {
            let key = kura_crypto::SecretIdentity::generate();
            files::write_identity(&self.keys(), party, &key)?;
            public.push(key.public().to_text());
        }
        let path = self.root().join("contract.toml");
        crate::files::write_private(&path, text(&public))?;
        for party in parties {
            let c = files::read_contract(&path)?;
            let id = files::read_identity(&self.keys().join(format!("{party}.key")))?;
            let (party, text) = kura_contract::sign(&c, &id)?;
            crate::files::write_private(files::signature_path(&path, &party), text)?;
        }
        let contract = files::read_signed_contract(&path)?;
        self.say(format!(
            "contract {} signed by {}\n  id {}",
            contract.name,
            parties.join(" and "),
            contract.id()
        ));
        Ok(contract)
    }

    /// [`Room::sign`] for a contract whose keys go by party name: `text` gets each of `parties`
    /// with its public key.
    fn sign_named(
        &self,
        parties: &[&str],
        text: impl FnOnce(&[(&str, &str)]) -> String,
    ) -> Result<SignedContract> {
        self.sign(parties, |keys| {
            let named: Vec<(&str, &str)> = parties
                .iter()
                .copied()
                .zip(keys.iter().map(String::as_str))
                .collect();
            text(&named)
        })
    }

    /// The folder where the parties' plaintext files are generated.
    fn data(&self) -> Result<PathBuf> {
        let data = self.root().join("data");
        files::private_dir(&data)?;
        Ok(data)
    }

    /// The enclave service on loopback, and a client for each of `parties` that attested it.
    /// Returns the measurement they verified (hex).
    async fn enclave(
        &self,
        contract: &SignedContract,
        parties: &[&str],
    ) -> Result<(kura_server::Running, Vec<Client>, String)> {
        let running = kura_server::start(kura_server::Config {
            contract: contract.clone(),
            platform: Platform::Simulated,
            listen: "127.0.0.1:0".parse().expect("loopback address"),
            state_dir: self.root().join("enclave-state"),
            max_upload_bytes: kura_server::Config::DEFAULT_MAX_UPLOAD,
            query_memory_bytes: kura_server::Config::DEFAULT_QUERY_MEMORY,
            evidence_certs: vec![],
            evidence_collateral: None,
            store_dir: None,
            cluster: None,
        })
        .await?;
        let url = running.url();
        let mut clients = Vec::new();
        let mut measurement = String::new();
        for party in parties {
            let mut client = Client::new(
                &url,
                contract.clone(),
                files::read_identity(&self.keys().join(format!("{party}.key")))?,
            )?;
            measurement = hex::encode(&client.attest().await?.claims.measurement);
            clients.push(client);
        }
        self.say(format!(
            "enclave {url} attested by {} (platform simulated, measurement {}…)",
            parties.join(" and "),
            &measurement[..16]
        ));
        Ok((running, clients, measurement))
    }

    /// What each of `clients` received from run `run_id`, in the clients' order.
    async fn results(clients: &mut [Client], run_id: &str) -> Result<Vec<ResultTable>> {
        let mut tables = Vec::new();
        for client in clients {
            tables.push(
                client
                    .results(Some(run_id))
                    .await?
                    .pop()
                    .with_context(|| format!("no result for {}", client.party()))?,
            );
        }
        Ok(tables)
    }

    /// Verifies the audit log as `client` and says so.
    async fn audit(&self, client: &mut Client) -> Result<kura_client::AuditReport> {
        let report = client.audit().await?;
        self.say(format!(
            "audit log verified: {} entries, chained and signed by the attested enclave key, head {}",
            report.chain.entries, report.chain.head
        ));
        Ok(report)
    }

    /// With `--json`, prints the scenario's summary: what every scenario reports (the
    /// simulated platform, the contract, the measurement its parties verified, the verified
    /// log) and its own `fields`.
    fn summary(
        &self,
        scenario: &str,
        contract: &SignedContract,
        measurement: &str,
        report: &kura_client::AuditReport,
        fields: serde_json::Value,
    ) {
        if !self.json {
            return;
        }
        let mut out = serde_json::json!({
            "scenario": scenario,
            "platform": "simulated",
            "warning": kura_attestation::simulated::WARNING,
            "contract_id": contract.id(),
            "measurement": measurement,
            "audit": {"valid": true, "entries": report.chain.entries, "head": report.chain.head},
        });
        if let serde_json::Value::Object(fields) = fields {
            for (k, v) in fields {
                out[k] = v;
            }
        }
        println!("{out}");
    }

    /// `client` encrypts `path` on its side and uploads it as `dataset`, with a progress bar.
    async fn upload(&self, client: &mut Client, dataset: &str, path: &Path) -> Result<()> {
        let size = std::fs::metadata(path)?.len();
        let bar = if self.json {
            indicatif::ProgressBar::hidden()
        } else {
            render::progress(size, &format!("uploading {dataset}"))
        };
        let b = bar.clone();
        let resp = client
            .upload(dataset, path, move |n| b.set_position(n))
            .await;
        bar.finish_and_clear();
        let resp = resp?;
        let what = match client.contract().model(dataset) {
            Some(_) => "its model file".to_string(),
            None => format!("{} rows", resp.rows),
        };
        self.say(format!(
            "{} uploaded {}: {what} as {} encrypted bytes",
            client.party(),
            resp.dataset,
            resp.ciphertext_bytes
        ));
        Ok(())
    }
}
