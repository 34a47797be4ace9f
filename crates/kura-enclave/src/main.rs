//! `kura-enclave`: the enclave service and nothing else. This is the program that runs inside
//! the TEE and whose measurement contracts pin, so it holds no client command, no rendering and
//! no demo: a change to the parties' command line never changes what the contract accepts.
//! `kura serve ARGS` runs this binary with the same arguments.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use kura_contract::Platform;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "kura-enclave",
    version,
    about = "The kura enclave service: runs inside the TEE, serves one signed contract"
)]
struct Args {
    /// The contract every party signed (its .sig files sit beside it); the service refuses to
    /// start on an unsigned one.
    #[arg(long)]
    contract: PathBuf,
    /// Where evidence comes from; `simulated` protects nothing and must be listed by the
    /// contract.
    #[arg(long, value_enum)]
    platform: Platform,
    /// Address to listen on (port 0 picks a free one; the address is printed on stdout).
    #[arg(long, default_value = "127.0.0.1:8700")]
    listen: SocketAddr,
    /// Directory of the audit log (one contract per directory). Required to serve.
    #[arg(long, required_unless_present = "join")]
    state: Option<PathBuf>,
    /// The service's store of datasets at rest: encrypted files only, whose keys the providers
    /// release to each enclave instance (default: STATE/store). A provider can name its own
    /// bucket instead.
    #[arg(long)]
    store: Option<PathBuf>,
    /// Largest accepted upload in bytes.
    #[arg(long, default_value_t = kura_server::Config::DEFAULT_MAX_UPLOAD)]
    max_upload_bytes: u64,
    /// Most memory one query's operators (joins, aggregates, sorts) may hold, in bytes; a query
    /// that needs more is refused. Nothing spills to disk.
    #[arg(long, default_value_t = kura_server::Config::DEFAULT_QUERY_MEMORY)]
    query_memory_bytes: u64,
    /// Certificates to hand out with the evidence (SEV-SNP: a VLEK from the cloud provider, or
    /// a VCEK when the host's certificate table is empty), PEM or DER.
    #[arg(long)]
    certs: Vec<PathBuf>,
    /// Intel DCAP collateral (dcap-qvl JSON) to hand out with TDX or SGX evidence, so that
    /// clients can verify offline.
    #[arg(long)]
    collateral: Option<PathBuf>,
    /// Coordinate a cluster: the address where its scheduler listens for executors (mutual TLS;
    /// only executors whose evidence the contract accepts are admitted).
    #[arg(long, conflicts_with = "join")]
    cluster: Option<SocketAddr>,
    /// Run as a cluster executor of the coordinator at this URL (its service), instead of
    /// serving: both sides verify each other's evidence against the contract first. `--listen`
    /// is then the executor's Flight address (port 0 picks a free one).
    #[arg(long, value_name = "URL")]
    join: Option<String>,
    /// An executor's working directory for shuffle files, which are not yet encrypted: keep it
    /// in the enclave's memory (default: a fresh directory in the tmpfs /dev/shm, when there is
    /// one; else in the temporary directory).
    #[arg(long, requires = "join")]
    work_dir: Option<PathBuf>,
    /// Tasks an executor runs at once (default: its cores).
    #[arg(long, requires = "join")]
    slots: Option<usize>,
    /// Log lines as text for people or as JSON objects for a log collector (stderr). Log lines
    /// name requests, routes, statuses and durations, never a data value.
    #[arg(long, value_enum, env = "KURA_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
}

/// Whose log lines never reach the host's log, whatever `KURA_LOG` (which the host sets) says:
/// targets starting with these (every Ballista and DataFusion crate). They quote plans (with
/// the literals of a party's sealed query) and errors (with values of the data).
const QUIET: [&str; 2] = ["ballista", "datafusion"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let args = Args::parse();
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_env("KURA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A layer of its own, after the filter: no directive of KURA_LOG can let these through.
    let heard = tracing_subscriber::filter::filter_fn(|meta| {
        !QUIET.iter().any(|quiet| meta.target().starts_with(quiet))
    });
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    match args.log_format {
        LogFormat::Json => registry
            .with(logs.json().with_current_span(true).with_filter(heard))
            .init(),
        // Colour only on a terminal, and never when NO_COLOR is set (https://no-color.org).
        LogFormat::Text => registry
            .with(
                logs.with_ansi(
                    std::io::IsTerminal::is_terminal(&std::io::stderr())
                        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
                )
                .with_filter(heard),
            )
            .init(),
    }
    // A panic's message may quote what the code was looking at (a value of a dataset); the log
    // is the host's. Only where it happened is logged. (Decoders that panic on a bad file are
    // contained: the upload is refused and the service goes on.)
    std::panic::set_hook(Box::new(|info| {
        let at = info
            .location()
            .map_or_else(String::new, |l| format!(" at {}:{}", l.file(), l.line()));
        tracing::error!("a thread panicked{at} (its message is withheld: it may quote data)");
    }));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let task = async move {
        if args.join.is_some() {
            execute(args).await
        } else {
            serve(args).await
        }
    };
    match runtime.block_on(task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The signed contract, checked to list `platform` (loudly when it is the simulated one).
fn contract_for(a: &Args) -> Result<kura_contract::SignedContract> {
    let contract = kura_contract::files::read_signed(&a.contract)
        .with_context(|| format!("contract {} cannot be used", a.contract.display()))?;
    let platform = a.platform;
    if !contract.enclave.allows(platform) {
        bail!(
            "the contract does not list platform {platform} in enclave.platforms; clients would refuse this enclave"
        );
    }
    if platform == Platform::Simulated {
        eprintln!("\n*** {} ***\n", kura_attestation::simulated::WARNING);
    }
    Ok(contract)
}

fn read(p: &PathBuf) -> Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
}

/// Runs a cluster executor until SIGTERM or Ctrl-C.
async fn execute(a: Args) -> Result<()> {
    let contract = contract_for(&a)?;
    kura_server::run_executor(kura_server::ExecutorConfig {
        contract,
        platform: a.platform,
        coordinator: a.join.clone().expect("checked by the caller"),
        listen: a.listen,
        work_dir: a.work_dir.clone(),
        slots: a.slots,
        memory_bytes: a.query_memory_bytes,
        evidence_certs: a.certs.iter().map(read).collect::<Result<_>>()?,
    })
    .await?;
    Ok(())
}

async fn serve(a: Args) -> Result<()> {
    let contract = contract_for(&a)?;
    let platform = a.platform;
    let running = kura_server::start(kura_server::Config {
        contract,
        platform,
        listen: a.listen,
        state_dir: a.state.context("--state is required to serve")?,
        max_upload_bytes: a.max_upload_bytes,
        query_memory_bytes: a.query_memory_bytes,
        evidence_certs: a.certs.iter().map(read).collect::<Result<_>>()?,
        evidence_collateral: a.collateral.as_ref().map(read).transpose()?,
        store_dir: a.store,
        cluster: a.cluster,
    })
    .await?;
    // On stdout, flushed: scripts and tests read the address (the port may be chosen at run time).
    println!("kura enclave service listening on {}", running.url());
    std::io::Write::flush(&mut std::io::stdout())?;
    tracing::info!(url = %running.url(), contract = %running.service.contract().id(), "enclave service listening");
    stopped().await?;
    tracing::info!("shutting down");
    running.shutdown().await?;
    Ok(())
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every flag says what it is for in `--help`.
    #[test]
    fn every_flag_has_help() {
        let missing: Vec<String> = super::Args::command()
            .get_arguments()
            .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
            .filter(|a| a.get_help().is_none())
            .map(|a| a.get_id().to_string())
            .collect();
        assert!(missing.is_empty(), "without help: {missing:?}");
    }
}
