//! `kura serve`: runs `kura-enclave`, the enclave binary that contracts measure, with the same
//! arguments. The service lives in its own binary so that a change to the parties' commands or
//! rendering never changes the measurement a contract pins; this command only finds and runs it.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

#[derive(clap::Args, Debug)]
#[command(disable_help_flag = true)]
pub struct ServeArgs {
    /// kura-enclave's arguments: --contract FILE --platform NAME --listen ADDR --state DIR
    /// (`kura serve --help` prints kura-enclave's own help).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    args: Vec<OsString>,
}

/// `kura executor`: runs `kura-enclave --join URL`, a cluster executor of the coordinator at URL.
#[derive(clap::Args, Debug)]
pub struct ExecutorArgs {
    /// The coordinator's service URL (what `kura serve --cluster ADDR` printed); the executor
    /// and the coordinator verify each other's evidence against the contract before anything
    /// else.
    #[arg(long, value_name = "URL")]
    coordinator: String,
    /// kura-enclave's arguments: --contract FILE --platform NAME [--listen ADDR] [--work-dir
    /// DIR] [--slots N] [--query-memory-bytes N].
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    args: Vec<OsString>,
}

pub fn executor(a: ExecutorArgs) -> Result<ExitCode> {
    let mut args = vec![OsString::from("--join"), OsString::from(a.coordinator)];
    args.extend(a.args);
    run(ServeArgs { args })
}

/// The name of the enclave binary, installed beside `kura`.
pub const ENCLAVE_BINARY: &str = "kura-enclave";

pub fn run(a: ServeArgs) -> Result<ExitCode> {
    let exe = enclave_binary()?;
    let mut command = std::process::Command::new(&exe);
    command.args(&a.args);
    #[cfg(unix)]
    {
        // Replace this process: signals, exit status and standard streams are the service's.
        let err = std::os::unix::process::CommandExt::exec(&mut command);
        Err(err).with_context(|| format!("cannot run {}", exe.display()))
    }
    #[cfg(not(unix))]
    {
        let status = command
            .status()
            .with_context(|| format!("cannot run {}", exe.display()))?;
        Ok(ExitCode::from(
            status.code().unwrap_or(1).clamp(0, 255) as u8
        ))
    }
}

/// `kura-enclave` beside this executable.
fn enclave_binary() -> Result<PathBuf> {
    let me = std::env::current_exe().context("cannot locate the kura executable")?;
    let path = me
        .with_file_name(ENCLAVE_BINARY)
        .with_extension(std::env::consts::EXE_EXTENSION);
    if !path.is_file() {
        bail!(
            "{ENCLAVE_BINARY}, the enclave service, is not installed beside {}: build it with \
             `cargo build -p kura-enclave` (or install both binaries)",
            me.display()
        );
    }
    Ok(path)
}
