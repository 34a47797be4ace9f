//! The console in a real browser: each of the six scenarios' rooms opened in its parties' consoles
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
    started_in(args, &std::env::temp_dir())
}

/// [`started`], with `tmp` as the process's temporary directory.
fn started_in(args: &[&str], tmp: &Path) -> (Served, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kura"))
        .env("KURA_HOME", kura_home())
        .env("TMPDIR", tmp)
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
    (served, plan)
}

/// The browser and its driver: Debian's chromium (or the one `KURA_CHROMIUM` names), node, and
/// Playwright's core from npm (no browser download). `.ci/setup` installs them (`.ci/run` runs it
/// first); a test never installs anything, so without them this one fails and says so.
fn browser() -> (String, std::path::PathBuf) {
    let chromium = std::env::var("KURA_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let node = Command::new("node").arg("--version").output().is_ok();
    assert!(
        Path::new(&chromium).exists() && node && dir.join("node_modules/playwright-core").exists(),
        "the console test drives {chromium} through node and playwright-core \
         (tests/browser/node_modules): run .ci/setup (as root) to install them"
    );
    (chromium, dir.join("console.mjs"))
}

#[test]
fn console_in_chromium() {
    let (chromium, script) = browser();
    let rooms = [
        // "1 sedentary (<4k)" must show as text: markup in a result is never markup.
        room(
            "health",
            "1500",
            json!({ "expect_text": "(<4k)", "expect_chart": true }),
        ),
        room("statistics", "20000", json!({ "expect_deletion": true })),
        room(
            "ads",
            "4000",
            json!({ "dp": true, "adhoc": {
                "party": "advertiser",
                "refused": "SELECT email_hash, SUM(spend) FROM customers GROUP BY email_hash",
                "rule": "identifier-use",
                "allowed": "SELECT r.segment, SUM(c.spend) AS spend FROM readers r JOIN customers c \
                            ON r.email_hash = c.email_hash GROUP BY r.segment",
                "costs": "ε = 1",
            }}),
        ),
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
        room("supply", "600", json!({ "expect_deletion": true })),
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

/// The console answers only its own loopback address and only with its token; it takes only
/// the file formats kura reads, keeps no plaintext once an upload ends, refused or not, and
/// acts on no contract that a party has not signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_refuses_other_hosts_missing_tokens_stray_files_and_unsigned_contracts() {
    let tmp = tempfile::tempdir().unwrap();
    let (_room, line) = started_in(
        &["demo", "--console", "--json", "--rows", "300"],
        tmp.path(),
    );
    let plan: Value = serde_json::from_str(&line).unwrap();
    let url = plan["parties"][0]["console"].as_str().unwrap();
    let (base, token) = url.split_once("/#token=").unwrap();
    let host = base.strip_prefix("http://").unwrap();
    kura_client::install_crypto_provider();
    let http = reqwest::Client::new();
    let status = |path: &str, host: &str, token: Option<&str>| {
        let mut req = http
            .get(format!("{base}{path}"))
            .header(reqwest::header::HOST, host);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status("/api/session", host, Some(token)).await, 200);
    let port = host.rsplit_once(':').unwrap().1;
    assert_eq!(
        status("/api/session", &format!("localhost:{port}"), Some(token)).await,
        200
    );
    // DNS rebinding: a page of another name that resolves to 127.0.0.1 is not this console.
    for other in [
        "evil.example".to_string(),
        format!("evil.example:{port}"),
        format!("127.0.0.1:{}", port.parse::<u16>().unwrap() ^ 1),
        format!("localhost.evil.example:{port}"),
    ] {
        assert_eq!(status("/", &other, None).await, 421, "{other}");
        assert_eq!(
            status("/api/session", &other, Some(token)).await,
            421,
            "{other}"
        );
    }
    // Every token but the one: no access (each of its characters changed in turn, one cut
    // short, one too long, none).
    let mut wrong: Vec<String> = (0..token.len())
        .map(|i| {
            let mut t = token.as_bytes().to_vec();
            t[i] = if t[i] == b'0' { b'1' } else { b'0' };
            String::from_utf8(t).unwrap()
        })
        .collect();
    wrong.extend([token[1..].to_string(), format!("{token}0"), String::new()]);
    for t in &wrong {
        assert_eq!(status("/api/contract", host, Some(t)).await, 401, "{t}");
    }
    assert_eq!(status("/api/contract", host, None).await, 401);
    // The page itself holds no secret, and may load nothing from elsewhere.
    let page = http.get(format!("{base}/")).send().await.unwrap();
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );

    let upload = |name: &str, dataset: &str, body: &'static str| {
        let req = http
            .post(format!("{base}/api/upload?dataset={dataset}&name={name}"))
            .bearer_auth(token)
            .body(body);
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap())
        }
    };
    let (code, v) = upload("rows.exe", "ehr", "patient_id\n").await;
    assert_eq!(code, 400, "{v}");
    assert!(
        v["error"]["reason"].as_str().unwrap().contains("CSV"),
        "{v}"
    );
    // hospital-a's console, fitness-b's dataset: refused before the file is taken.
    let (code, v) = upload("activity.csv", "activity", "patient_id,steps_band\nP1,x\n").await;
    assert_eq!(code, 400, "{v}");
    assert!(
        v["error"]["reason"]
            .as_str()
            .unwrap()
            .contains("not the provider"),
        "{v}"
    );
    // hospital-a's dataset with the wrong columns: taken, sent, refused by the enclave.
    let (code, v) = upload("ehr.csv", "ehr", "wrong,columns\n1,2\n").await;
    assert!(code >= 400, "{v}");
    assert!(
        v["error"]["reason"].as_str().unwrap().contains("column"),
        "{v}"
    );
    // A contract fitness-b has not signed: the console shows it and who signed, and acts on
    // nothing.
    let unsigned = tempfile::tempdir().unwrap();
    let contract = Path::new(plan["contract"].as_str().unwrap());
    let copy = unsigned.path().join("contract.toml");
    std::fs::copy(contract, &copy).unwrap();
    let sig = |dir: &Path| dir.join("contract.toml.hospital-a.sig");
    std::fs::copy(sig(contract.parent().unwrap()), sig(unsigned.path())).unwrap();
    let (_console, url) = started(&[
        "console",
        "--enclave",
        plan["enclave"].as_str().unwrap(),
        "--contract",
        copy.to_str().unwrap(),
        "--key",
        plan["parties"][0]["key"].as_str().unwrap(),
    ]);
    let (base, token) = url.split_once("/#token=").unwrap();
    let get = |path: &str| {
        let req = http.get(format!("{base}{path}")).bearer_auth(token);
        async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let session = get("/api/session").await;
    assert_eq!(session["signed"], false, "{session}");
    assert!(
        session["unsigned_reason"]
            .as_str()
            .unwrap()
            .contains("fitness-b"),
        "{session}"
    );
    let signatures = &get("/api/contract").await["signatures"];
    assert_eq!(signatures[0]["status"], "valid", "{signatures}");
    assert_eq!(signatures[1]["status"], "missing", "{signatures}");
    let run = http
        .post(format!("{base}/api/run"))
        .bearer_auth(token)
        .json(&json!({ "analysis": "diabetes_by_activity" }))
        .send()
        .await
        .unwrap();
    assert_eq!(run.status().as_u16(), 409);
    let v: Value = run.json().await.unwrap();
    assert!(
        v["error"]["reason"]
            .as_str()
            .unwrap()
            .contains("every party signed"),
        "{v}"
    );

    // The scratch directory is empty again.
    let scratch: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("kura-console-")
        })
        .collect();
    assert!(!scratch.is_empty());
    for dir in scratch {
        // Open to its owner only: an upload's plaintext waits there.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", dir.display());
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "{}",
            dir.display()
        );
    }
}
