//! Argument parsing and the commands themselves.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use kura_client::Client;
use kura_contract::{Platform, SignatureStatus};
use kura_crypto::SecretIdentity;

use crate::{files, render};

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
                ContractCmd::Verify { json, .. } | ContractCmd::Describe { json, .. },
            ) => *json,
            Command::Run(a) => a.json,
            Command::Query(a) => a.json,
            Command::Budget(a) => a.json,
            Command::Audit(AuditCmd::Verify { json, .. }) => *json,
            Command::Audit(AuditCmd::Report { json, format, .. }) => {
                *json || *format == ReportFormat::Json
            }
            Command::Attest(AttestCmd::Verify(a)) => a.json,
            Command::Demo(a) => a.json,
            Command::Results(a) => a.json || a.format == Format::Json,
            _ => false,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create identities.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Sign and verify contracts.
    #[command(subcommand)]
    Contract(ContractCmd),
    /// Run the enclave service.
    Serve(ServeArgs),
    /// Encrypt a dataset on this machine and upload it to the enclave.
    Upload(UploadArgs),
    /// Run an analysis of the contract.
    Run(RunArgs),
    /// Run an ad-hoc query under the contract's analysis rules.
    Query(QueryArgs),
    /// Fetch, decrypt and verify your results.
    Results(ResultsArgs),
    /// Show the differential-privacy budget spent and remaining, from the verified log.
    Budget(BudgetArgs),
    /// Verify the enclave's audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Verify attestation evidence offline.
    #[command(subcommand)]
    Attest(AttestCmd),
    /// Run a complete two-party collaboration on synthetic data, on loopback.
    Demo(DemoArgs),
    /// Print a shell completion script (e.g. `kura completions bash > /etc/bash_completion.d/kura`).
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `kura man | man -l -`.
    Man,
}

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

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PlatformArg {
    Simulated,
    #[value(name = "sev-snp")]
    SevSnp,
    Tdx,
    Sgx,
    Nitro,
}

impl From<PlatformArg> for Platform {
    fn from(p: PlatformArg) -> Self {
        match p {
            PlatformArg::Simulated => Platform::Simulated,
            PlatformArg::SevSnp => Platform::SevSnp,
            PlatformArg::Tdx => Platform::Tdx,
            PlatformArg::Sgx => Platform::Sgx,
            PlatformArg::Nitro => Platform::Nitro,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// The contract every party signed; the service refuses to start on an unsigned one.
    #[arg(long)]
    contract: PathBuf,
    /// Where evidence comes from; `simulated` protects nothing and must be listed by the
    /// contract.
    #[arg(long, value_enum)]
    platform: PlatformArg,
    /// Address to listen on (port 0 picks a free one; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8700")]
    listen: SocketAddr,
    /// Directory of the audit log (one contract per directory).
    #[arg(long)]
    state: PathBuf,
    /// Largest accepted upload in bytes.
    #[arg(long, default_value_t = kura_server::Config::DEFAULT_MAX_UPLOAD)]
    max_upload_bytes: u64,
    /// Certificates to hand out with the evidence (SEV-SNP: a VLEK from the cloud provider, or
    /// a VCEK when the host's certificate table is empty), PEM or DER.
    #[arg(long)]
    certs: Vec<PathBuf>,
    /// Intel DCAP collateral (dcap-qvl JSON) to hand out with TDX or SGX evidence, so that
    /// clients can verify offline.
    #[arg(long)]
    collateral: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct Party {
    /// Base URL of the enclave service, e.g. http://127.0.0.1:8700
    #[arg(long, env = "KURA_ENCLAVE")]
    enclave: String,
    /// The signed contract (TOML); its .sig files sit beside it.
    #[arg(long, env = "KURA_CONTRACT")]
    contract: PathBuf,
    /// Your secret key file.
    #[arg(long, env = "KURA_KEY")]
    key: PathBuf,
    /// Fetch a VCEK or DCAP collateral the enclave did not send from AMD's or Intel's service
    /// (cached in $KURA_HOME/cache). Without it only the cache is used: no network.
    #[arg(long)]
    fetch: bool,
}

impl Party {
    fn client(&self) -> Result<Client> {
        let contract = files::read_signed_contract(&self.contract)?;
        let key = files::read_identity(&self.key)?;
        Ok(Client::new(&self.enclave, contract, key)?.with_certs(files::cert_store(self.fetch)?))
    }
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

fn save_head(client: &Client) -> Result<()> {
    match client.known_head() {
        Some(head) => files::save_head(client.contract().id().as_str(), client.party(), head),
        None => Ok(()),
    }
}

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

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    party: Party,
    /// The contract's name of the analysis to run.
    #[arg(long)]
    analysis: String,
    /// Print one JSON object on stdout (the result, when you are a receiver).
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("query").required(true).args(["sql", "sql_file"])))]
pub struct QueryArgs {
    /// Base URL of the enclave service, e.g. http://127.0.0.1:8700 (not needed with --explain)
    #[arg(long, env = "KURA_ENCLAVE", required_unless_present = "explain")]
    enclave: Option<String>,
    /// The signed contract (TOML); its .sig files sit beside it.
    #[arg(long, env = "KURA_CONTRACT")]
    contract: PathBuf,
    /// Your secret key file (not needed with --explain).
    #[arg(long, env = "KURA_KEY", required_unless_present = "explain")]
    key: Option<PathBuf>,
    /// Fetch a VCEK or DCAP collateral the enclave did not send from AMD's or Intel's service
    /// (cached in $KURA_HOME/cache). Without it only the cache is used: no network.
    #[arg(long)]
    fetch: bool,
    /// Say whether the contract's rules would answer the query, which rule would refuse it,
    /// and what it would cost under differential privacy, on this machine: nothing is sent
    /// and no data is read.
    #[arg(long)]
    explain: bool,
    /// The query (SQL); `-` reads it from standard input.
    #[arg(long)]
    sql: Option<String>,
    /// A file holding the query.
    #[arg(long)]
    sql_file: Option<PathBuf>,
    /// Under [privacy.dp]: the ε this query spends (default: the contract's query_epsilon).
    #[arg(long)]
    epsilon: Option<f64>,
    /// Print one JSON object on stdout (the result, when you are a receiver).
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
pub struct BudgetArgs {
    #[command(flatten)]
    party: Party,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

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
    format: Format,
    /// Print one JSON object on stdout (same as --format json).
    #[arg(long)]
    json: bool,
    /// Write to this file instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
}

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

#[derive(Subcommand, Debug)]
pub enum AttestCmd {
    /// Verify evidence against the vendor's pinned root, offline unless --fetch.
    Verify(AttestArgs),
}

#[derive(clap::Args, Debug)]
pub struct AttestArgs {
    /// The platform that produced the evidence.
    #[arg(long, value_enum)]
    platform: PlatformArg,
    /// The evidence: an SNP report, a DCAP quote, a Nitro attestation document.
    #[arg(long)]
    evidence: PathBuf,
    /// VCEK/VLEK and ASK/ARK certificates (PEM or DER); repeat for several files.
    #[arg(long)]
    certs: Vec<PathBuf>,
    /// Intel DCAP collateral in dcap-qvl's JSON layout.
    #[arg(long)]
    collateral: Option<PathBuf>,
    /// Verification time (RFC 3339); default now.
    #[arg(long)]
    at: Option<String>,
    /// Fetch a missing VCEK (AMD KDS) or DCAP collateral (Intel PCS) into $KURA_HOME/cache.
    /// Without it only the cache is consulted: no network.
    #[arg(long)]
    fetch: bool,
    /// Print one JSON object on stdout (verdict, platform, measurement, report data, debug).
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Patients in the hospital's data set.
    #[arg(long, default_value_t = 5000)]
    pub rows: usize,
    /// Print one JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
    /// Seed of the synthetic data generator.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

pub async fn dispatch(args: Args) -> Result<ExitCode> {
    match args.command {
        Command::Keys(KeysCmd::New { name, out }) => {
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
        Command::Contract(ContractCmd::Sign { contract, key }) => {
            let c = files::read_contract(&contract)?;
            kura_engine::check_analyses(&c)
                .await
                .context("the contract's analyses are invalid")?;
            let id = files::read_identity(&key)?;
            let (party, text) = kura_contract::sign(&c, &id)?;
            let path = files::signature_path(&contract, &party);
            files::write_atomic(&path, text.as_bytes())?;
            println!("signed contract {} as {party}: {}", c.id(), path.display());
            Ok(ExitCode::SUCCESS)
        }
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
        Command::Contract(ContractCmd::Describe { contract, json }) => {
            let c = files::read_contract(&contract)?;
            if json {
                println!("{}", crate::describe::json(&c));
            } else {
                print!("{}", crate::describe::text(&c));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Contract(ContractCmd::Verify { contract, json }) => {
            verify_contract(&contract, json).await
        }
        Command::Serve(a) => serve(a).await,
        Command::Upload(a) => {
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
            println!(
                "uploaded {}: {} rows, {} encrypted bytes; receipt {}",
                resp.dataset,
                resp.rows,
                resp.ciphertext_bytes,
                resp.receipt.entry.hash()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(a) => {
            let mut client = attested(&a.party).await?;
            let resp = client.run(&a.analysis).await?;
            show_run(&mut client, resp, a.json).await
        }
        Command::Query(a) => {
            let sql = match (&a.sql, &a.sql_file) {
                (Some(dash), _) if dash == "-" => std::io::read_to_string(std::io::stdin())
                    .context("reading the query from standard input")?,
                (Some(sql), _) => sql.clone(),
                (None, Some(path)) => std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
                (None, None) => unreachable!("clap requires one of --sql and --sql-file"),
            };
            if a.explain {
                return explain(&a.contract, &sql, a.epsilon, a.json).await;
            }
            let party = Party {
                enclave: a
                    .enclave
                    .context("--enclave (or KURA_ENCLAVE) is required")?,
                contract: a.contract,
                key: a.key.context("--key (or KURA_KEY) is required")?,
                fetch: a.fetch,
            };
            let mut client = attested(&party).await?;
            let resp = client.query(&sql, a.epsilon).await?;
            show_run(&mut client, resp, a.json).await
        }
        Command::Budget(a) => {
            let mut client = attested(&a.party).await?;
            let report = client.audit().await?;
            save_head(&client)?;
            let bodies = report
                .entries
                .iter()
                .map(|e| e.parse_body())
                .collect::<Result<Vec<_>, _>>()?;
            let Some(budget) = kura_client::audit::budget(client.contract(), &bodies) else {
                bail!("the contract has no [privacy.dp] section: there is no privacy budget");
            };
            let dp = client
                .contract()
                .privacy
                .dp
                .clone()
                .expect("budget implies dp");
            let accounts = budget.accounts_report();
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "epsilon": dp.epsilon,
                        "delta": dp.delta,
                        "split": dp.split,
                        "accounts": accounts,
                    })
                );
            } else {
                print!("{}", render::budget(&dp, &accounts));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Results(a) => {
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
        Command::Audit(AuditCmd::Report {
            party,
            format,
            json,
        }) => {
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
        Command::Audit(AuditCmd::Verify { party, json }) => {
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
        Command::Attest(AttestCmd::Verify(a)) => attest_verify(a).await,
        Command::Demo(a) => crate::demo::run(a).await,
    }
}

/// Prints a run's result when this party receives it, otherwise where it went.
async fn show_run(
    client: &mut Client,
    resp: kura_api::RunResponse,
    json: bool,
) -> Result<ExitCode> {
    let receiver = resp.receivers.iter().any(|r| r == client.party());
    if receiver {
        let table = client
            .results(Some(&resp.run_id))
            .await?
            .into_iter()
            .next()
            .context("the enclave returned no result for this run")?;
        if json {
            println!("{}", render::result_json(&table));
        } else {
            print!("{}", render::table(&table));
        }
    } else if json {
        println!("{}", serde_json::to_string(&resp)?);
    } else {
        println!(
            "run {} started; results go to {}",
            resp.run_id,
            resp.receivers.join(", ")
        );
    }
    if !json && !resp.deleted.is_empty() {
        eprintln!("deleted after the run: {}", resp.deleted.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

async fn verify_contract(path: &std::path::Path, json: bool) -> Result<ExitCode> {
    let contract = files::read_contract(path)?;
    let analyses = kura_engine::check_analyses(&contract)
        .await
        .map_err(|e| e.to_string());
    let checks = files::check_signatures(&contract, path);
    let signed = checks.iter().all(|c| c.status == SignatureStatus::Valid);
    let valid = signed && analyses.is_ok();
    let warnings = contract.warnings();
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

async fn serve(a: ServeArgs) -> Result<ExitCode> {
    let contract = files::read_signed_contract(&a.contract)?;
    kura_engine::check_analyses(&contract)
        .await
        .context("the contract's analyses are invalid")?;
    let platform: Platform = a.platform.into();
    if !contract.enclave.allows(platform) {
        bail!(
            "the contract does not list platform {platform} in enclave.platforms; clients would refuse this enclave"
        );
    }
    if platform == Platform::Simulated {
        eprintln!("\n*** {} ***\n", kura_attestation::simulated::WARNING);
    }
    let read =
        |p: &PathBuf| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    let running = kura_server::start(kura_server::Config {
        contract,
        platform,
        listen: a.listen,
        state_dir: a.state,
        max_upload_bytes: a.max_upload_bytes,
        evidence_certs: a.certs.iter().map(read).collect::<Result<_>>()?,
        evidence_collateral: a.collateral.as_ref().map(read).transpose()?,
    })
    .await?;
    // On stdout, flushed: scripts and tests read the address (the port may be chosen at run time).
    println!("kura enclave service listening on {}", running.url());
    std::io::Write::flush(&mut std::io::stdout())?;
    tracing::info!(url = %running.url(), contract = %running.service.contract().id(), "enclave service listening");
    stopped().await?;
    tracing::info!("shutting down");
    running.shutdown().await?;
    Ok(ExitCode::SUCCESS)
}

/// `kura query --explain`: the engine's verdict on the query against the contract's declared
/// schemas, without an enclave and without data. Exit 0 when it would be answered, 1 when
/// refused (as the enclave would refuse it).
async fn explain(
    contract: &std::path::Path,
    sql: &str,
    epsilon: Option<f64>,
    json: bool,
) -> Result<ExitCode> {
    let contract = files::read_contract(contract)?;
    let verdict = kura_engine::check_query(&contract, sql, epsilon).await;
    let k = contract.output.min_group_size;
    let (allowed, rule, reason) = match &verdict {
        Ok(_) => (true, None, None),
        Err(kura_engine::EngineError::Refused { rule, reason }) => {
            (false, Some(*rule), Some(reason.clone()))
        }
        Err(e) => (false, None, Some(e.to_string())),
    };
    let spend = verdict.as_ref().ok().copied().flatten();
    if json {
        let mut out = serde_json::json!({ "allowed": allowed, "reason": reason });
        if let Some(rule) = rule {
            out["rule"] = rule.into();
        }
        match spend {
            Some(s) => out["dp"] = serde_json::json!({ "epsilon": s.epsilon, "delta": s.delta }),
            None if allowed => out["min_group_size"] = k.into(),
            None => {}
        }
        println!("{out}");
    } else if let Some(s) = spend {
        println!(
            "would be answered under differential privacy, spending ε = {} and δ = {:e} of each \
             receiver's budget",
            s.epsilon, s.delta
        );
    } else if allowed {
        println!(
            "would be answered: groups and aggregates resting on fewer than {k} people are \
             suppressed before HAVING, and only their number is reported"
        );
    } else {
        eprintln!(
            "error: would be refused{}: {}",
            rule.map(|r| format!(" by rule {r}")).unwrap_or_default(),
            reason.as_deref().unwrap_or_default()
        );
    }
    Ok(if allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Waits for Ctrl-C or SIGTERM (what service managers and container runtimes send), so that
/// either stops the service the same orderly way.
async fn stopped() -> Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("listening for SIGTERM")?;
        tokio::select! {
            c = tokio::signal::ctrl_c() => c.context("waiting for Ctrl-C"),
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")
}

async fn attest_verify(a: AttestArgs) -> Result<ExitCode> {
    let platform: Platform = a.platform.into();
    let at =
        a.at.as_deref()
            .map(|at| {
                time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
                    .with_context(|| format!("--at {at:?} is not an RFC 3339 time"))
            })
            .transpose()?;
    let read = |p: &std::path::PathBuf| {
        std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
    };
    if platform == Platform::Simulated && (!a.certs.is_empty() || a.collateral.is_some()) {
        eprintln!("note: --certs and --collateral do not apply to simulated evidence");
    }
    let data = std::fs::read(&a.evidence)
        .with_context(|| format!("cannot read {}", a.evidence.display()))?;
    let mut evidence = kura_attestation::Evidence {
        certs: a.certs.iter().map(read).collect::<Result<_>>()?,
        collateral: a.collateral.as_ref().map(read).transpose()?,
        ..kura_attestation::Evidence::new(platform, data)
    };
    // What was not given comes from the cache (or, with --fetch, from AMD or Intel).
    let result = match files::cert_store(a.fetch)?.complete(&mut evidence).await {
        Ok(()) => {
            let options = kura_attestation::VerifyOptions {
                at,
                certs: evidence.certs.clone(),
                collateral: evidence.collateral.clone(),
            };
            kura_attestation::verifier_for(platform, &options).and_then(|v| v.verify(&evidence))
        }
        Err(e) => Err(e),
    };
    let (verdict, claims, reason) = match result {
        Ok(c) => {
            let reason = c
                .debug
                .then(|| "debug enclave: refused unless a policy allows it".to_string());
            (if c.debug { "invalid" } else { "valid" }, Some(c), reason)
        }
        Err(e) => ("invalid", None, Some(e.to_string())),
    };
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "verdict": verdict,
                "platform": platform.as_str(),
                "measurement": claims.as_ref().map(|c| hex::encode(&c.measurement)),
                "report_data": claims.as_ref().map(|c| hex::encode(&c.report_data)),
                "debug": claims.as_ref().map(|c| c.debug),
                "svns": claims.as_ref().map(|c| &c.svns),
                "registers": claims.as_ref().map(|c| &c.registers),
                "tcb_status": claims.as_ref().and_then(|c| c.tcb_status.clone()),
                "advisories": claims.as_ref().map(|c| &c.advisories),
                "signer": claims.as_ref().map(|c| c.signer.clone()),
                "reason": reason,
            })
        );
    } else {
        println!("verdict: {verdict}");
        if let Some(c) = &claims {
            println!(
                "platform: {}\nmeasurement: {}\nreport_data: {}\ndebug: {}\nsigner: {}",
                platform,
                hex::encode(&c.measurement),
                hex::encode(&c.report_data),
                c.debug,
                c.signer
            );
        }
        if let Some(r) = &reason {
            eprintln!("reason: {r}");
        }
    }
    Ok(if verdict == "valid" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

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
