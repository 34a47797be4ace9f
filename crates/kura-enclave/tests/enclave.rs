//! `kura-enclave` as a process: what it refuses to start on, what it logs, how it stops. (The
//! protocol itself is exercised end to end by kura-cli's tests, through `kura serve`, which runs
//! this binary.)

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use kura_crypto::SecretIdentity;

const BIN: &str = env!("CARGO_BIN_EXE_kura-enclave");

/// The example contract in `dir`, signed by both parties when `signed`.
fn contract(dir: &Path, signed: bool) -> PathBuf {
    contract_edited(dir, signed, |t| t)
}

/// [`contract`] with its text edited first.
fn contract_edited(dir: &Path, signed: bool, edit: impl Fn(String) -> String) -> PathBuf {
    let (a, b) = (SecretIdentity::generate(), SecretIdentity::generate());
    let text = edit(kura_contract::example::activity_and_diabetes(
        &a.public().to_text(),
        &b.public().to_text(),
    ));
    let path = dir.join("contract.toml");
    std::fs::write(&path, &text).unwrap();
    if signed {
        let c = kura_contract::files::read(&path).unwrap();
        for id in [&a, &b] {
            let (party, sig) = kura_contract::sign(&c, id).unwrap();
            std::fs::write(kura_contract::files::signature_path(&path, &party), sig).unwrap();
        }
    }
    path
}

fn enclave(platform: &str, contract: &Path, state: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["--platform", platform, "--listen", "127.0.0.1:0"])
        .arg("--contract")
        .arg(contract)
        .arg("--state")
        .arg(state)
        .env_remove("KURA_LOG");
    cmd
}

/// A plain HTTP/1.1 GET on loopback; the status line and body.
fn get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn help_lists_every_flag_and_platform() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--contract",
        "--platform",
        "--listen",
        "--state",
        "--max-upload-bytes",
        "--certs",
        "--collateral",
        "--log-format",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
    // Each flag's own text is checked on clap's tree (`every_flag_has_help` in main.rs).
    assert!(help.contains("sev-snp"), "platform names listed:\n{help}");
}

#[test]
fn refuses_an_unsigned_contract_and_an_unknown_platform() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let path = contract(dir.path(), false);
    let out = enclave("simulated", &path, &state).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not signed by all parties"), "{err}");
    assert!(!state.exists(), "nothing is written for a refused contract");

    let path = contract(dir.path(), true);
    let out = Command::new(BIN)
        .args(["--platform", "sgx2", "--state"])
        .arg(&state)
        .arg("--contract")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sev-snp"), "names the accepted values: {err}");

    // Signed by all, but its analysis reads a column no dataset declares: refused at start.
    let other = tempfile::tempdir().unwrap();
    let bad = contract_edited(other.path(), true, |t| t.replace("e.diabetes", "e.weight"));
    let out = enclave("simulated", &bad, &state).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the contract's analyses are invalid"), "{err}");
    assert!(!state.exists(), "nothing is written for invalid analyses");

    // The example contract lists only `simulated`: real platforms are refused before start.
    let out = enclave("tdx", &path, &state).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not list platform tdx"), "{err}");
}

/// Started on the simulated platform it warns, answers, logs one JSON line per request with
/// its route and status (and nothing of the request), and stops cleanly on SIGTERM.
#[test]
fn serves_logs_json_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let path = contract(dir.path(), true);
    let mut child = enclave("simulated", &path, &dir.path().join("state"))
        .args(["--log-format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line.trim().rsplit(' ').next().unwrap().to_string();
    let addr = url
        .strip_prefix("http://")
        .expect("an http URL")
        .to_string();
    let health = get(&addr, "/v1/health");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.ends_with(r#"{"status":"ok"}"#), "{health}");
    let ticket = "secret-ticket-0123456789";
    let missing = get(&addr, &format!("/v1/upload/{ticket}"));
    assert!(
        missing.starts_with("HTTP/1.1 405"),
        "GET on an upload: {missing}"
    );

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "stops cleanly on SIGTERM: {status}");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();

    assert!(stderr.contains("SIMULATED PLATFORM"), "{stderr}");
    let logs: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let finished: Vec<&serde_json::Value> = logs
        .iter()
        .filter(|l| l["span"]["name"] == "request" && l["fields"]["status"].is_number())
        .collect();
    assert_eq!(finished.len(), 2, "one line per request:\n{stderr}");
    assert_eq!(finished[0]["span"]["route"], "/v1/health");
    assert_eq!(finished[0]["fields"]["status"], 200);
    assert_eq!(finished[1]["span"]["route"], "/v1/upload/{ticket}");
    assert!(
        !stderr.contains(ticket),
        "the route, never the ticket:\n{stderr}"
    );
    assert!(
        logs.iter()
            .any(|l| l["fields"]["message"] == "shutting down")
    );
}
