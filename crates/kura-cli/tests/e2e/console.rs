//! The console in a real browser: each scenario's room opened in its parties' consoles
//! (`kura demo --console`) and a `kura console` the enclave must refuse, all driven by Debian's
//! headless Chromium through playwright-core (`tests/browser/console.mjs`, which holds the
//! checks). Screenshots and downloaded results are kept in the target directory.

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::cli::{Served, kura_home};

/// `kura ARGS` left running (killed when dropped), and the first line it printed.
fn started(args: &[&str]) -> (Served, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kura"))
        .env("KURA_HOME", kura_home())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(!line.is_empty(), "kura {args:?} printed nothing");
    (Served(child), line.trim().to_string())
}

/// A scenario's room with a console per party, and its plan with what the browser should see.
fn room(scenario: &str, rows: &str, expect: Value) -> (Served, Value) {
    let (served, line) = started(&[
        "demo",
        "--scenario",
        scenario,
        "--console",
        "--json",
        "--rows",
        rows,
    ]);
    let mut plan: Value = serde_json::from_str(&line).unwrap();
    for (k, v) in expect.as_object().unwrap() {
        plan[k] = v.clone();
    }
    plan["purpose_fragment"] = plan["purpose"].clone();
    (served, plan)
}

/// Playwright's core from npm (no browser download: it drives Debian's chromium).
fn driver() -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if !dir.join("node_modules/playwright-core").exists() {
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .output()
            .expect("the console test needs node and npm (apt-get install nodejs npm; .ci/run does)");
        assert!(
            out.status.success(),
            "npm ci in {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    dir.join("console.mjs")
}

#[test]
fn console_in_chromium() {
    let chromium = std::env::var("KURA_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "the console test drives Debian's chromium at {chromium} (apt-get install chromium; \
         .ci/run does), or the browser KURA_CHROMIUM names"
    );
    let script = driver();
    let rooms = [
        // "1 sedentary (<4k)" must show as text: markup in a result is never markup.
        room(
            "health",
            "1500",
            json!({ "expect_text": "(<4k)", "expect_chart": true }),
        ),
        room("statistics", "20000", json!({ "expect_deletion": true })),
        room("ads", "4000", json!({ "dp": true })),
        room(
            "aml",
            "2000",
            json!({ "adhoc": {
                "party": "bank-a",
                "refused": "SELECT from_account, COUNT(*) AS transfers FROM transfers_b GROUP BY from_account",
                "rule": "identifier-use",
                "allowed": "SELECT COUNT(*) AS transfers, SUM(amount) AS total FROM transfers_a",
            }}),
        ),
        room("fraud", "4000", json!({})),
    ];
    // The ads room's contract and key, against the health room's enclave: refused.
    let (health, ads) = (&rooms[0].1, &rooms[2].1);
    let (_wrong, url) = started(&[
        "console",
        "--enclave",
        health["enclave"].as_str().unwrap(),
        "--contract",
        ads["contract"].as_str().unwrap(),
        "--key",
        ads["parties"][0]["key"].as_str().unwrap(),
    ]);
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");

    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.json");
    let scenarios: Vec<&Value> = rooms.iter().map(|(_, plan)| plan).collect();
    std::fs::write(
        &plan,
        json!({
            "scenarios": scenarios,
            "refused": { "console": url, "check": "serves this contract" },
        })
        .to_string(),
    )
    .unwrap();
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    let out = Command::new("node")
        .arg(&script)
        .arg(&plan)
        .arg(&shots)
        .env("KURA_CHROMIUM", &chromium)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    assert!(said.contains("all checks passed"), "{said}");
    println!("{said}");
}
