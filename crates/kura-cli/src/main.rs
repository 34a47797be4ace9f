//! `kura`: the command line of the kura clean room. Thin: it parses arguments, reads and
//! writes files, and calls the library crates. See `kura --help`.

mod cli;
#[cfg(feature = "demo")]
mod demo;
mod describe;
mod export;
mod files;
mod render;
mod report;
#[cfg(feature = "demo")]
mod splitmix;

use std::process::ExitCode;

use clap::Parser;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    let json = args.json_output();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour only on a terminal, and never when NO_COLOR is set (https://no-color.org).
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KURA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
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
    match runtime.block_on(cli::dispatch(args)) {
        Ok(code) => code,
        Err(e) => {
            let reason = format!("{e:#}");
            eprintln!("error: {reason}");
            if json {
                let rule = e.chain().find_map(|c| match c.downcast_ref() {
                    Some(kura_client::ClientError::Refused { rule, .. }) => rule.clone(),
                    _ => None,
                });
                let mut out = serde_json::json!({ "refused": true, "reason": reason });
                if let Some(rule) = rule {
                    out["rule"] = rule.into();
                }
                println!("{out}");
            }
            ExitCode::from(1)
        }
    }
}
