//! The command line, as a party runs it: real `kura` processes against a served enclave.

use std::path::{Path, PathBuf};

use kura_client::{Client, ClientError};
use kura_crypto::SecretIdentity;

use crate::common::*;

/// A private KURA_HOME for this test process, so tests never touch the user's ~/.kura.
pub(crate) fn kura_home() -> &'static Path {
    static HOME: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    HOME.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

pub(crate) fn kura(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_kura"))
        .env("KURA_HOME", kura_home())
        .args(args)
        .output()
        .unwrap()
}

#[test]
pub(crate) fn cli_keys_contract_sign_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ds = d.to_str().unwrap();
    for name in ["hospital-a", "fitness-b"] {
        let out = kura(&["keys", "new", "--name", name, "--out", ds]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.join("hospital-a.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // A second `keys new` never overwrites a key.
    assert_eq!(
        kura(&["keys", "new", "--name", "hospital-a", "--out", ds])
            .status
            .code(),
        Some(1)
    );

    let public = |n: &str| {
        std::fs::read_to_string(d.join(format!("{n}.pub")))
            .unwrap()
            .trim()
            .to_string()
    };
    let hospital = key_at(d, "hospital-a");
    assert_eq!(hospital.public().to_text(), public("hospital-a"));
    let text = contract_text(
        &[
            Party {
                name: "hospital-a",
                key: hospital,
            },
            Party {
                name: "fitness-b",
                key: key_at(d, "fitness-b"),
            },
        ],
        false,
        "[\"hospital-a\"]",
    );
    let contract = d.join("contract.toml");
    std::fs::write(&contract, &text).unwrap();
    let c = contract.to_str().unwrap();

    let out = kura(&["contract", "verify", "--contract", c, "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], false);
    assert!(v["reason"].as_str().unwrap().contains("has not signed"));

    // Serving an unsigned contract is refused.
    let state = d.join("state");
    let out = kura(&[
        "serve",
        "--contract",
        c,
        "--platform",
        "simulated",
        "--listen",
        "127.0.0.1:0",
        "--state",
        state.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not signed by all parties"));
    assert!(
        !state.exists(),
        "nothing may be created for an unsigned contract"
    );

    for name in ["hospital-a", "fitness-b"] {
        let key = d.join(format!("{name}.key"));
        let out = kura(&[
            "contract",
            "sign",
            "--contract",
            c,
            "--key",
            key.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = kura(&["contract", "verify", "--contract", c, "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["valid"],
        true
    );

    // Change one byte: every signature is void.
    std::fs::write(
        &contract,
        text.replace("min_group_size = 10", "min_group_size = 2"),
    )
    .unwrap();
    let out = kura(&["contract", "verify", "--contract", c]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("INVALID SIGNATURE"));

    // Usage errors exit with 2.
    assert_eq!(kura(&["contract", "verify"]).status.code(), Some(2));
}

#[test]
pub(crate) fn cli_prints_completions_and_a_manual_page() {
    let out = kura(&["completions", "bash"]);
    assert!(out.status.success());
    let script = String::from_utf8(out.stdout).unwrap();
    assert!(
        script.contains("_kura()") && script.contains("--sql-file"),
        "{script}"
    );
    let out = kura(&["man"]);
    assert!(out.status.success());
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(page.contains(".TH kura 1"), "{page}");
}

/// `kura demo ARGS --json`: its summary, after checking it ran and said it was simulated.
fn demo_json(args: &[&str]) -> serde_json::Value {
    let out = kura(&[&["demo", "--json"][..], args].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("SIMULATED PLATFORM"));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
pub(crate) fn cli_demo_json() {
    let v = demo_json(&["--rows", "3000"]);
    let rows = v["result"]["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 4, "{v}");
    // The planted relationship shows: diabetes falls as activity rises.
    let rates: Vec<f64> = rows.iter().map(|r| r[2].as_f64().unwrap()).collect();
    assert!(rates.windows(2).all(|w| w[0] > w[1]), "{rates:?}");
    assert_eq!(v["result"]["suppressed_groups"], 1);
    assert_eq!(v["deleted"], serde_json::json!(["activity", "ehr"]));
    assert_eq!(v["audit"]["valid"], true);
}

/// The fraud scenario: two banks' model comes back close to the pattern planted in their data,
/// the same for both, and each bank scores its own new transactions with it.
#[test]
pub(crate) fn cli_demo_fraud_trains_a_model_both_banks_receive() {
    let v = demo_json(&["--scenario", "fraud", "--rows", "4000"]);
    assert_eq!(v["receivers_agree"], true);
    assert_eq!(v["audit"]["valid"], true);
    let rows = v["model"]["rows"].as_array().unwrap();
    let term = |name: &str| {
        rows.iter()
            .find(|r| r[0] == name)
            .and_then(|r| r[1].as_f64())
            .unwrap_or_else(|| panic!("no {name} in {v}"))
    };
    let planted: Vec<f64> = v["planted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_f64().unwrap())
        .collect();
    for ((name, want), tolerance) in ["intercept", "amount", "night", "foreign"]
        .iter()
        .zip(planted)
        .zip([1.0, 0.0008, 0.6, 0.6])
    {
        let got = term(name);
        assert!(
            (got - want).abs() <= tolerance,
            "{name}: {got} against {want}"
        );
    }
    assert!(term("holdout_auc") > 0.7, "{v}");
    // The tree: its riskiest leaf is the largest amounts abroad, its safest among smaller
    // amounts, far apart, as planted.
    let mut leaves: Vec<(&str, f64)> = v["tree"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r[0].as_str().unwrap(), r[1].as_f64().unwrap()))
        .filter(|(rule, _)| !rule.starts_with("holdout_"))
        .collect();
    leaves.sort_by(|a, b| a.1.total_cmp(&b.1));
    let ((safest, low), (riskiest, high)) = (leaves[0], leaves[leaves.len() - 1]);
    assert!(
        riskiest.contains("amount >= 1500") && riskiest.contains("foreign >= 0.5"),
        "{leaves:?}"
    );
    assert!(safest.contains("amount <"), "{leaves:?}");
    assert!(high - low > 0.3, "{leaves:?}");
    assert_eq!(v["scored"].as_array().unwrap().len(), 6);
    // The second room: the model file scored banks C's and D's 800 new transactions each; the
    // consortium got only the distribution, which accounts for them, less its suppressed cells.
    let scoring = &v["scoring"];
    assert_eq!(scoring["audit"]["valid"], true);
    assert_eq!(scoring["rows"]["bank-c"], 800);
    assert_eq!(scoring["rows"]["bank-d"], 800);
    let distribution = &scoring["distribution"];
    assert_eq!(
        distribution["columns"],
        serde_json::json!(["channel", "score_from", "score_to", "rows"])
    );
    let counted: u64 = distribution["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[3].as_u64().unwrap())
        .sum();
    assert!(counted <= 1600 && counted > 1000, "{distribution}");
}

/// The statistics-provision scenario: the city gets the table, with the night-time hillside
/// group (too few subscribers) suppressed; the records are deleted by the run, a second run is
/// refused for it, and the transparency report built from the auditor's verified log names the
/// purpose, the run and the deletion.
#[test]
pub(crate) fn cli_demo_statistics_delivers_the_table_the_deletion_and_the_report() {
    let v = demo_json(&["--scenario", "statistics", "--rows", "20000"]);
    assert_eq!(v["audit"]["valid"], true);
    let rows = v["result"]["rows"].as_array().unwrap();
    assert!(!rows.is_empty(), "{v}");
    assert!(
        rows.iter()
            .all(|r| r[2].as_u64().unwrap() >= 20 && r[1] != "4 night"),
        "{rows:?}"
    );
    assert!(
        v["result"]["suppressed_groups"].as_u64().unwrap() >= 1,
        "{v}"
    );
    assert_eq!(v["deleted"], serde_json::json!(["visits"]));
    assert!(
        v["second_run_refused"]
            .as_str()
            .unwrap()
            .contains("were deleted"),
        "{v}"
    );
    assert_eq!(v["deletions"].as_array().unwrap().len(), 1);
    let t = &v["transparency"];
    assert!(
        t["contract"]["purpose"]
            .as_str()
            .unwrap()
            .contains("bus network")
    );
    let dataset = &t["datasets"][0];
    assert_eq!(dataset["name"], "visits");
    assert!(dataset["deleted"].is_object(), "{dataset}");
    assert_eq!(t["analyses"][0]["runs"].as_array().unwrap().len(), 1, "{t}");
    assert_eq!(t["refused_runs"], 1);
}

/// The supply scenario: the steps pooled over at least three suppliers are released to all
/// five parties alike, heat treatment (two suppliers) and plating (one) are not, the planted
/// problem step comes out worst, and everyone's records are deleted.
#[test]
pub(crate) fn cli_demo_supply_pools_suppliers_and_releases_no_suppliers_own_figure() {
    let v = demo_json(&["--scenario", "supply", "--rows", "2000"]);
    assert_eq!(v["audit"]["valid"], true);
    assert_eq!(v["receivers_agree"], true);
    let rows = v["result"]["rows"].as_array().unwrap();
    let steps: Vec<&str> = rows.iter().map(|r| r[0].as_str().unwrap()).collect();
    assert_eq!(steps, ["1 casting", "2 machining", "4 coating"], "{v}");
    assert_eq!(v["result"]["suppressed_groups"], 2, "{v}");
    assert_eq!(v["worst_step"], "4 coating", "{v}");
    assert_eq!(v["deleted"].as_array().unwrap().len(), 5, "{v}");
}

/// The ads scenario: three differentially private releases, each with every segment of the
/// public list and shared counts near the truth (the noise's 95 % interval at ε = 1/3 per
/// column is ±10; ±40 cannot fail by chance in practice), no two alike; a fourth run is refused
/// by the budget, which the verified log shows spent.
#[test]
pub(crate) fn cli_demo_ads_releases_noisy_segments_until_the_budget_is_spent() {
    let v = demo_json(&["--scenario", "ads", "--rows", "4000"]);
    assert_eq!(v["audit"]["valid"], true);
    let releases = v["releases"].as_array().unwrap();
    assert_eq!(releases.len(), 3);
    for release in releases {
        let rows = release["rows"].as_array().unwrap();
        let segments: Vec<&str> = rows.iter().map(|r| r[0].as_str().unwrap()).collect();
        assert_eq!(segments.len(), 5, "{release}");
        for row in rows {
            let truth = v["truth"][row[0].as_str().unwrap()][0].as_f64().unwrap();
            let shared = row[1].as_f64().unwrap();
            assert!((shared - truth).abs() <= 40.0, "{row:?} against {truth}");
        }
        assert_eq!(release["dp"]["epsilon"], 1.0, "{release}");
    }
    assert_ne!(releases[0]["rows"], releases[1]["rows"]);
    assert!(
        v["fourth_run_refused"]
            .as_str()
            .unwrap()
            .contains("privacy budget"),
        "{v}"
    );
    for account in v["budget"].as_array().unwrap() {
        assert_eq!(account["spent_epsilon"], 3.0, "{account}");
    }
}

/// The AML scenario: each bank receives exactly the mule accounts planted at it (the demo
/// checks that, and fails otherwise), none of another bank's; bank A's three attempts to see
/// other banks' customers are refused by a named rule; the log verifies.
#[test]
pub(crate) fn cli_demo_aml_gives_each_bank_its_own_mules_and_refuses_the_detours() {
    let v = demo_json(&["--scenario", "aml", "--rows", "2000"]);
    assert_eq!(v["audit"]["valid"], true);
    let received = v["received"].as_array().unwrap();
    assert_eq!(received.len(), 3);
    let mut total = 0;
    for (entry, prefix) in received.iter().zip(["A", "B", "C"]) {
        let accounts = entry["accounts"].as_array().unwrap();
        assert_eq!(accounts.len() as u64, entry["planted"].as_u64().unwrap());
        assert!(
            accounts
                .iter()
                .all(|a| a.as_str().unwrap().starts_with(prefix)),
            "{entry}"
        );
        total += accounts.len();
    }
    assert!(total >= 4, "{v}");
    let rules: Vec<&str> = v["refusals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule"].as_str().unwrap())
        .collect();
    assert_eq!(rules, ["identifier-use", "identifier-use", "measure-use"]);
}

#[test]
pub(crate) fn cli_attest_verify_simulated_evidence() {
    let dir = tempfile::tempdir().unwrap();
    let hw = kura_attestation::simulated::SimulatedHardware::new();
    // Writes evidence to a file and runs `kura attest verify --json` on it.
    let verify = |name: &str, data: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, data).unwrap();
        let out = kura(&[
            "attest",
            "verify",
            "--platform",
            "simulated",
            "--evidence",
            path.to_str().unwrap(),
            "--json",
        ]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (out.status.code(), v)
    };
    let good = hw.issue(&[1; 48], &[2; 64], false).data;
    let (code, v) = verify("good.json", &good);
    assert_eq!(code, Some(0));
    assert_eq!(v["verdict"], "valid");
    assert_eq!(v["measurement"], "01".repeat(48));
    assert_eq!(v["report_data"], "02".repeat(64));
    assert_eq!(v["debug"], false);
    assert!(v["reason"].is_null());

    let (code, v) = verify("debug.json", &hw.issue(&[1; 48], &[2; 64], true).data);
    assert_eq!((code, v["verdict"].as_str()), (Some(1), Some("invalid")));

    // Real hardware evidence, from kura-attestation's testdata: an SGX quote whose TCB needs configuration and
    // software hardening is valid as evidence; the status and advisories are reported.
    let vectors = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../kura-attestation/testdata/sgx/dcap-qvl");
    let (quote, collateral) = (
        vectors.join("sgx_quote"),
        vectors.join("sgx_quote_collateral.json"),
    );
    let sgx = |at: &[&str]| {
        let mut args = vec![
            "attest",
            "verify",
            "--platform",
            "sgx",
            "--evidence",
            quote.to_str().unwrap(),
            "--collateral",
            collateral.to_str().unwrap(),
            "--json",
        ];
        args.extend_from_slice(at);
        kura(&args)
    };
    let out = sgx(&["--at", "2025-06-19T11:56:00Z"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (out.status.code(), v["verdict"].as_str()),
        (Some(0), Some("valid")),
        "{v}"
    );
    assert_eq!(
        v["measurement"],
        "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
    );
    assert_eq!(v["tcb_status"], "ConfigurationAndSWHardeningNeeded");
    assert_eq!(
        v["advisories"],
        serde_json::json!(["INTEL-SA-00289", "INTEL-SA-00615"])
    );
    // Without a pinned time the collateral has expired.
    let out = sgx(&[]);
    assert_eq!(out.status.code(), Some(1));

    // One bit of the signed report changed (the measurement's first digit).
    let mut flipped = good.clone();
    let at = good.windows(4).position(|w| w == b"0101").unwrap() + 1;
    flipped[at] ^= 1;
    let (code, v) = verify("flipped.json", &flipped);
    assert_eq!((code, v["verdict"].as_str()), (Some(1), Some("invalid")));
}

/// A stand-in for AMD's KDS on loopback: answers every GET under `/vcek/v1/Milan/` with the
/// vector's VCEK, counts requests, and stops when dropped.
pub(crate) struct FakeKds {
    pub(crate) url: String,
    pub(crate) hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub(crate) stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FakeKds {
    pub(crate) fn start(vcek: Vec<u8>) -> Self {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (h, st) = (hits.clone(), stop.clone());
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
            while !st.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                };
                conn.set_nonblocking(false).unwrap();
                let mut buf = [0u8; 4096];
                let n = conn.read(&mut buf).unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]);
                h.fetch_add(1, Ordering::Relaxed);
                let (status, body) = if request.starts_with("GET /vcek/v1/Milan/") {
                    ("200 OK", vcek.as_slice())
                } else {
                    ("404 Not Found", &[][..])
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes());
                let _ = conn.write_all(body);
            }
        });
        Self { url, hits, stop }
    }

    pub(crate) fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for FakeKds {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[test]
pub(crate) fn cli_attest_fetches_a_missing_vcek_once_and_then_verifies_offline() {
    let home = tempfile::tempdir().unwrap();
    let snp = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../kura-attestation/testdata/sev-snp/virtee-sev");
    let report = snp.join("report_milan.hex");
    let kds = FakeKds::start(std::fs::read(snp.join("vcek_milan.der")).unwrap());
    let attest = |fetch: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kura"));
        cmd.env("KURA_HOME", home.path())
            .env("KURA_KDS_URL", &kds.url)
            .args(["attest", "verify", "--platform", "sev-snp", "--evidence"])
            .arg(&report)
            .args(["--at", "2025-01-01T00:00:00Z", "--json"]);
        if fetch {
            cmd.arg("--fetch");
        }
        let out = cmd.output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (out.status.code(), v)
    };
    // Offline by default: the VCEK is not in the cache, and the network is not touched.
    let (code, v) = attest(false);
    assert_eq!((code, v["verdict"].as_str()), (Some(1), Some("invalid")));
    let reason = v["reason"].as_str().unwrap();
    assert!(
        reason.contains("Milan VCEK") && reason.contains("--fetch"),
        "{reason}"
    );
    assert_eq!(kds.hits(), 0);
    // With --fetch: asked once, verified, cached.
    let (code, v) = attest(true);
    assert_eq!(
        (code, v["verdict"].as_str()),
        (Some(0), Some("valid")),
        "{v}"
    );
    assert_eq!(kds.hits(), 1);
    assert!(v["signer"].as_str().unwrap().contains("VCEK"));
    // From then on the cache serves, online or not.
    assert_eq!(attest(false).0, Some(0));
    assert_eq!(attest(true).0, Some(0));
    assert_eq!(kds.hits(), 1);
}

/// A `kura serve` child process, killed when dropped.
pub(crate) struct Served(pub(crate) std::process::Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Keys and a contract signed through the command line, and the data files, in `d`.
/// Keys for two parties, a contract both signed (with `extra` appended), and the data files.
pub(crate) fn cli_setup(d: &Path, extra: &str) -> PathBuf {
    cli_setup_with(d, extra, |t| t)
}

/// [`cli_setup`], with the contract's text changed by `edit` before the parties sign it.
pub(crate) fn cli_setup_with(d: &Path, extra: &str, edit: impl Fn(String) -> String) -> PathBuf {
    let ds = d.to_str().unwrap();
    for name in ["hospital-a", "fitness-b"] {
        assert!(
            kura(&["keys", "new", "--name", name, "--out", ds])
                .status
                .success()
        );
    }
    let key = |n: &str| {
        SecretIdentity::parse(&std::fs::read_to_string(d.join(format!("{n}.key"))).unwrap())
            .unwrap()
    };
    let parties = [
        Party {
            name: "hospital-a",
            key: key("hospital-a"),
        },
        Party {
            name: "fitness-b",
            key: key("fitness-b"),
        },
    ];
    let contract = d.join("contract.toml");
    std::fs::write(
        &contract,
        // hospital-a (the first party) is also the analyst when `extra` opens ad-hoc queries.
        edit(
            contract_text(&parties, false, "[\"hospital-a\"]").replacen(
                "[\"provider\", \"receiver\"]",
                "[\"provider\", \"receiver\", \"analyst\"]",
                usize::from(!extra.is_empty()),
            ) + extra,
        ),
    )
    .unwrap();
    for name in ["hospital-a", "fitness-b"] {
        let k = d.join(format!("{name}.key"));
        let out = kura(&[
            "contract",
            "sign",
            "--contract",
            contract.to_str().unwrap(),
            "--key",
            k.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    write_data(d);
    contract
}

/// Starts `kura serve` on a port chosen at run time; returns the child and its URL.
pub(crate) fn serve(d: &Path, contract: &Path) -> (Served, String) {
    serve_with(d, contract, &[], &[])
}

/// [`serve`] with further arguments and environment.
pub(crate) fn serve_with(
    d: &Path,
    contract: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Served, String) {
    use std::io::BufRead;

    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kura"))
        .env("KURA_HOME", kura_home())
        .args([
            "serve",
            "--platform",
            "simulated",
            "--listen",
            "127.0.0.1:0",
            "--contract",
        ])
        .arg(contract)
        .arg("--state")
        .arg(d.join("state"))
        .args(extra)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(
            std::fs::File::options()
                .create(true)
                .append(true)
                .open(d.join("serve.log"))
                .unwrap(),
        )
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let served = Served(child);
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap();
    let url = line.trim().rsplit(' ').next().unwrap().to_string();
    assert!(
        url.starts_with("http://127.0.0.1:"),
        "{line:?}: {}",
        std::fs::read_to_string(d.join("serve.log")).unwrap_or_default()
    );
    (served, url)
}

/// Runs `kura <args>` as party `name` (key `d/<name>.key`) against the enclave at `url`:
/// exit code, stdout, stderr.
pub(crate) fn as_party(d: &Path, url: &str, contract: &str, name: &str, args: &[&str]) -> Printed {
    let k = d.join(format!("{name}.key"));
    let words = args.iter().take_while(|a| !a.starts_with("--")).count();
    let mut all = args[..words].to_vec();
    all.extend_from_slice(&[
        "--enclave",
        url,
        "--contract",
        contract,
        "--key",
        k.to_str().unwrap(),
    ]);
    all.extend_from_slice(&args[words..]);
    let out = kura(&all);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
pub(crate) fn cli_drives_a_served_enclave() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let contract = cli_setup(d, "");
    let c = contract.to_str().unwrap();
    let (served, url) = serve(d, &contract);

    let as_party = |name: &str, args: &[&str]| as_party(d, &url, c, name, args);

    let ehr = d.join("ehr.csv");
    let (code, out, err) = as_party(
        "hospital-a",
        &[
            "upload",
            "--dataset",
            "ehr",
            "--file",
            ehr.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("uploaded ehr: 68 rows"), "{out}");
    assert!(err.contains("SIMULATED PLATFORM"), "{err}");

    // Before all data is present: refused, with the reason in JSON.
    let (code, out, _) = as_party(
        "hospital-a",
        &["run", "--analysis", "by_activity", "--json"],
    );
    assert_eq!(code, Some(1));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["refused"], true);
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("waiting for dataset(s) activity"),
        "{v}"
    );

    let act = d.join("activity.csv");
    assert_eq!(
        as_party(
            "fitness-b",
            &[
                "upload",
                "--dataset",
                "activity",
                "--file",
                act.to_str().unwrap()
            ]
        )
        .0,
        Some(0)
    );

    // Ad-hoc queries are refused: this contract has no [adhoc] section.
    let (code, out, _) = as_party(
        "hospital-a",
        &["query", "--sql", "SELECT COUNT(*) FROM ehr", "--json"],
    );
    assert_eq!(code, Some(1));
    let v = serde_json::from_str::<serde_json::Value>(&out).unwrap();
    assert_eq!(v["refused"], true);
    assert!(
        v["reason"].as_str().unwrap().contains("[adhoc]"),
        "the reason names the missing section: {v}"
    );

    // The receiver runs and gets the result in the stable JSON shape.
    let (code, out, err) = as_party(
        "hospital-a",
        &["run", "--analysis", "by_activity", "--json"],
    );
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["columns"],
        serde_json::json!(["steps_band", "people", "rate"])
    );
    assert_eq!(v["types"], serde_json::json!(["utf8", "int64", "float64"]));
    assert_eq!(v["rows"].as_array().unwrap().len(), 2);
    assert_eq!(v["suppressed_groups"], 1);
    let run_id = v["run_id"].as_str().unwrap().to_string();

    let csv = d.join("out.csv");
    let (code, _, err) = as_party(
        "hospital-a",
        &[
            "results",
            "--run",
            &run_id,
            "--format",
            "csv",
            "--out",
            csv.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(0), "{err}");
    let text = std::fs::read_to_string(&csv).unwrap();
    assert!(
        text.starts_with("steps_band,people,rate\nhigh,40,0.25\nmid,25,"),
        "{text}"
    );

    // The same result as typed Parquet: the types the enclave signed, and the run it answers.
    let parquet = d.join("out.parquet");
    let (code, _, err) = as_party(
        "hospital-a",
        &["results", "--run", &run_id, "--format", "parquet", "--out"]
            .into_iter()
            .chain([parquet.to_str().unwrap()])
            .collect::<Vec<_>>(),
    );
    assert_eq!(code, Some(0), "{err}");
    let file = bytes::Bytes::from(std::fs::read(&parquet).unwrap());
    let reader =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    let schema = reader.schema().clone();
    let types: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| f.data_type().to_string())
        .collect();
    assert_eq!(types, ["Utf8", "Int64", "Float64"]);
    assert_eq!(schema.metadata()["kura.run_id"], run_id);
    let rows: usize = reader.build().unwrap().map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(rows, 2);

    // fitness-b is not a receiver of this analysis.
    let (code, _, err) = as_party("fitness-b", &["results", "--run", &run_id]);
    assert_eq!(code, Some(1));
    assert!(err.contains("is not a receiver of analysis"), "{err}");

    let (code, out, err) = as_party("fitness-b", &["audit", "verify", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["valid"], true);
    let kinds: Vec<&str> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "enclave_started",
            "upload",
            "run_refused",
            "upload",
            // the ad-hoc query refused for want of an [adhoc] section
            "run_refused",
            "run",
            "release",
            "deletion",
            "deletion"
        ]
    );

    // The transparency report, from the verified log.
    let (code, out, err) = as_party("fitness-b", &["audit", "report", "--format", "json"]);
    assert_eq!(code, Some(0), "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["contract"]["purpose"], "tests");
    assert_eq!(r["log"]["entries"], 9);
    let ehr = &r["datasets"][0];
    assert_eq!(
        (ehr["name"].as_str(), ehr["provider"].as_str()),
        (Some("ehr"), Some("hospital-a"))
    );
    assert_eq!(ehr["uploads"][0]["value"], 68);
    assert!(ehr["deleted"]["value"].as_str().unwrap().contains(&run_id));
    let run = &r["analyses"][0]["runs"][0];
    assert_eq!(run["run_id"], run_id.as_str());
    assert_eq!(run["by"], "hospital-a");
    assert_eq!(run["released_to"], serde_json::json!(["hospital-a"]));
    // fitness-b receives nothing from this run, so the log tells it nothing of the result.
    assert!(
        run.get("suppressed_groups").is_none() && run.get("rows").is_none(),
        "{run}"
    );
    assert_eq!(r["refused_runs"], 2);
    assert_eq!(r["enclave_starts"][0]["platform"], "simulated");
    let (code, md, _) = as_party("hospital-a", &["audit", "report"]);
    assert_eq!(code, Some(0));
    assert!(md.starts_with("# Transparency report: e2e"), "{md}");
    assert!(
        md.contains("The simulated platform offers no protection"),
        "{md}"
    );

    // The three flags every party command takes can come from the environment instead.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kura"))
        .env("KURA_HOME", kura_home())
        .env("KURA_ENCLAVE", &url)
        .env("KURA_CONTRACT", c)
        .env("KURA_KEY", d.join("fitness-b.key"))
        .args(["audit", "verify", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // SIGTERM stops the service as Ctrl-C does: an orderly exit, status 0.
    let mut served = served;
    // The shell's own `kill`: no package beyond a POSIX shell needed.
    let killed = std::process::Command::new("sh")
        .args(["-c", &format!("kill -TERM {}", served.0.id())])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = served.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        std::fs::read_to_string(d.join("serve.log"))
            .unwrap()
            .contains("shutting down")
    );

    // Everything the parties' commands wrote (keys, signatures, results, tree heads) is their
    // owner's alone, and so is a key folder `kura keys new` makes.
    let new_keys = d.join("new-keys");
    let out = kura(&[
        "keys",
        "new",
        "--name",
        "spare",
        "--out",
        new_keys.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs = |p: &Path| {
        // The test's own inputs, and the service's directory and log (the host's side).
        ![
            "contract.toml",
            "ehr.csv",
            "activity.csv",
            "claims.csv",
            "serve.log",
            "state",
        ]
        .iter()
        .any(|own| p.strip_prefix(d).is_ok_and(|r| r.starts_with(own)))
    };
    let written = private_modes(d, &theirs);
    for want in [
        "hospital-a.key",
        "fitness-b.pub",
        "out.csv",
        "out.parquet",
        "new-keys",
    ] {
        assert!(
            written.iter().any(|p| p.ends_with(want)),
            "{want}: {written:?}"
        );
    }
    // Beside the vendors' public certificates that evidence checks cache.
    let cache = kura_home().join("cache");
    let heads = private_modes(kura_home(), &|p| !p.starts_with(&cache));
    assert!(heads.iter().any(|p| p.ends_with("heads")), "{heads:?}");
}

/// Walks `root` and checks that every file `written` says the commands wrote (and every folder
/// among them) is open to its owner alone (mode 0600 / 0700); returns what it checked.
#[cfg(unix)]
fn private_modes(root: &Path, written: &dyn Fn(&Path) -> bool) -> Vec<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let checked: Vec<PathBuf> = entries(root).into_iter().filter(|p| written(p)).collect();
    for path in &checked {
        let mode = std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode & 0o077, 0, "{} is mode {mode:o}", path.display());
    }
    checked
}

/// What `kura` printed: exit code, stdout, stderr.
pub(crate) type Printed = (Option<i32>, String, String);

/// Uploads `ehr` as hospital-a and `activity` as fitness-b through the command line.
pub(crate) fn upload_both(as_party: &dyn Fn(&str, &[&str]) -> Printed, d: &Path) {
    for (party, dataset) in [("hospital-a", "ehr"), ("fitness-b", "activity")] {
        let file = d.join(format!("{dataset}.csv"));
        let (code, _, err) = as_party(
            party,
            &[
                "upload",
                "--dataset",
                dataset,
                "--file",
                file.to_str().unwrap(),
            ],
        );
        assert_eq!(code, Some(0), "{err}");
    }
}

#[test]
pub(crate) fn cli_ad_hoc_query_gives_statistics_in_json_and_the_report_shows_its_sql() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let contract = cli_setup(
        d,
        "\n[adhoc]\nanalysts = [\"hospital-a\"]\nreceivers = [\"hospital-a\"]\n",
    );
    let c = contract.to_str().unwrap();
    // Valid, but its signatories are told what a threshold-only [adhoc] allows.
    let verified = kura(&["contract", "verify", "--contract", c, "--json"]);
    assert!(verified.status.success());
    let v: serde_json::Value = serde_json::from_slice(&verified.stdout).unwrap();
    assert!(
        v["warnings"][0]
            .as_str()
            .unwrap()
            .contains("[adhoc] without [privacy.dp]"),
        "{v}"
    );
    // describe: who may do what, from the contract alone.
    let described = kura(&["contract", "describe", "--contract", c, "--json"]);
    assert!(described.status.success());
    let v: serde_json::Value = serde_json::from_slice(&described.stdout).unwrap();
    assert_eq!(
        v["adhoc"]["analysts"],
        serde_json::json!(["hospital-a"]),
        "{v}"
    );
    assert_eq!(v["adhoc"]["differentially_private"], false);
    assert_eq!(v["min_group_size"], 10);
    assert_eq!(v["datasets"][0]["columns"][0]["role"], "identifier");
    let text = kura(&["contract", "describe", "--contract", c]);
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("measure: only inside aggregates"), "{text}");
    assert!(
        text.contains("warning: [adhoc] without [privacy.dp]"),
        "{text}"
    );
    let (served, url) = serve(d, &contract);
    let as_party = |name: &str, args: &[&str]| as_party(d, &url, c, name, args);
    upload_both(&as_party, d);

    // An ad-hoc query that would show identifiers: refused, with the rule, in JSON.
    let (code, out, _) = as_party(
        "hospital-a",
        &["query", "--sql", "SELECT patient_id FROM ehr", "--json"],
    );
    assert_eq!(code, Some(1));
    let v = serde_json::from_str::<serde_json::Value>(&out).unwrap();
    assert_eq!(v["refused"], true);
    assert!(
        v["reason"].as_str().unwrap().contains("identifier-use"),
        "the reason names the rule: {v}"
    );
    assert_eq!(v["rule"], "identifier-use", "and so does its own field");
    // A conditional aggregate, which would take one person's value from a large group.
    let conditional = "SELECT a.steps_band, SUM(CASE WHEN e.age_band = 'old' THEN 1 ELSE 0 \
                       END) FROM ehr e JOIN activity a ON e.patient_id = a.patient_id \
                       GROUP BY a.steps_band";
    // --explain gives the same verdict on this machine, with no enclave and no key.
    let explain = |sql: &str| {
        let out = kura(&[
            "query",
            "--explain",
            "--contract",
            c,
            "--sql",
            sql,
            "--json",
        ]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (out.status.code(), v)
    };
    let (code, v) = explain(conditional);
    assert_eq!(code, Some(1));
    assert_eq!(
        (v["allowed"].as_bool(), v["rule"].as_str()),
        (Some(false), Some("aggregate-argument")),
        "{v}"
    );
    let (code, v) = explain(
        "SELECT a.steps_band, COUNT(*) FROM ehr e JOIN activity a \
         ON e.patient_id = a.patient_id GROUP BY a.steps_band",
    );
    assert_eq!(code, Some(0));
    assert_eq!(
        (v["allowed"].as_bool(), v["min_group_size"].as_u64()),
        (Some(true), Some(10)),
        "{v}"
    );

    // Read from a file, as long queries are.
    let file = d.join("conditional.sql");
    std::fs::write(&file, conditional).unwrap();
    let (code, out, _) = as_party(
        "hospital-a",
        &["query", "--sql-file", file.to_str().unwrap(), "--json"],
    );
    assert_eq!(code, Some(1));
    let v = serde_json::from_str::<serde_json::Value>(&out).unwrap();
    assert_eq!(v["rule"], "aggregate-argument", "{v}");
    // ... or from standard input.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kura"))
        .env("KURA_HOME", kura_home())
        .env("KURA_ENCLAVE", &url)
        .env("KURA_CONTRACT", c)
        .env("KURA_KEY", d.join("hospital-a.key"))
        .args(["query", "--sql", "-", "--json"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), conditional.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let v = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap();
    assert_eq!(v["rule"], "aggregate-argument", "{v}");

    // A compliant one: statistics in the same JSON shape as `kura results`.
    let sql = "SELECT a.steps_band, COUNT(*) AS people FROM ehr e JOIN activity a \
               ON e.patient_id = a.patient_id GROUP BY a.steps_band ORDER BY a.steps_band";
    let (code, out, err) = as_party("hospital-a", &["query", "--sql", sql, "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["columns"], serde_json::json!(["steps_band", "people"]));
    assert_eq!(
        v["rows"],
        serde_json::json!([["high", 40], ["mid", 25]]),
        "the 3-person group is suppressed"
    );
    assert_eq!(v["suppressed_groups"], 1);
    assert_eq!(v["analysis"], kura_contract::ADHOC_ANALYSIS);
    let query_run = v["run_id"].as_str().unwrap().to_string();

    // fitness-b is neither an analyst nor an ad-hoc receiver.
    let (code, _, err) = as_party("fitness-b", &["query", "--sql", sql]);
    assert_eq!(code, Some(1));
    assert!(err.contains("analyst"), "{err}");

    // The transparency report names the query and its receiver.
    let (code, out, err) = as_party("fitness-b", &["audit", "report", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    // The identifier query, the conditional one (twice) and fitness-b's attempt.
    assert_eq!(r["refused_runs"], 4);
    let adhoc = &r["analyses"][1];
    assert_eq!(adhoc["name"], kura_contract::ADHOC_ANALYSIS);
    assert_eq!(adhoc["runs"][0]["run_id"], query_run.as_str());
    assert_eq!(
        adhoc["runs"][0]["sql"], sql,
        "the report discloses the ad-hoc SQL"
    );
    assert_eq!(
        adhoc["runs"][0]["released_to"],
        serde_json::json!(["hospital-a"])
    );
    let (code, md, _) = as_party("hospital-a", &["audit", "report"]);
    assert_eq!(code, Some(0));
    assert!(md.contains(&format!("query: `{sql}`")), "{md}");
    drop(served);
}

/// `party`'s key as `cli_setup` wrote it into `d`.
pub(crate) fn key_at(d: &Path, party: &str) -> SecretIdentity {
    SecretIdentity::parse(&std::fs::read_to_string(d.join(format!("{party}.key"))).unwrap())
        .unwrap()
}

#[test]
pub(crate) fn a_killed_service_restarts_with_a_log_that_verifies_and_loses_no_acknowledged_entry() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let path = cli_setup(d, "");
    let contract = kura_contract::files::read_signed(&path).unwrap();
    let key = || key_at(d, "hospital-a");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let acknowledged = Arc::new(AtomicU64::new(0));
    for round in 0..4u64 {
        let (mut served, url) = serve(d, &path);
        rt.block_on(async {
            let mut hammers = vec![];
            for _ in 0..2 {
                let mut client = Client::new(&url, contract.clone(), key()).unwrap();
                client.attest().await.unwrap();
                let acked = acknowledged.clone();
                hammers.push(tokio::spawn(async move {
                    // Each refused run appends a `run_refused` entry before it is answered.
                    while let Err(ClientError::Refused { status: 404, .. }) =
                        client.run("no-such-analysis").await
                    {
                        acked.fetch_add(1, Ordering::SeqCst);
                    }
                }));
            }
            tokio::time::sleep(std::time::Duration::from_millis(150 + 70 * round)).await;
            served.0.kill().unwrap(); // SIGKILL, in the middle of appends
            for h in hammers {
                h.await.unwrap();
            }
        });
        drop(served);
    }
    let acked = acknowledged.load(Ordering::SeqCst);
    assert!(
        acked > 20,
        "the service acknowledged only {acked} entries before being killed"
    );

    let (_served, url) = serve(d, &path);
    let report = rt.block_on(async {
        let mut client = Client::new(&url, contract.clone(), key()).unwrap();
        client.audit().await.unwrap()
    });
    let kinds: Vec<String> = report
        .entries
        .iter()
        .map(|e| e.parse_body().unwrap().event.kind().to_string())
        .collect();
    assert_eq!(kinds.iter().filter(|k| *k == "enclave_started").count(), 5);
    let refused = kinds.iter().filter(|k| *k == "run_refused").count() as u64;
    assert!(
        refused >= acked,
        "{acked} acknowledged, {refused} in the log"
    );
    eprintln!(
        "killed 4 times: {acked} acknowledged appends, {refused} in the restarted log, which verifies"
    );
}

/// A file on which the Parquet decoder panics (found by fuzzing, `testdata/uploads`) is refused,
/// the service goes on, and its log says where it panicked but not the panic's message (which
/// may quote data: the log is the host's).
#[test]
pub(crate) fn a_decoder_panic_refuses_the_file_and_the_log_withholds_its_message() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let path = cli_setup(d, "");
    let contract = kura_contract::files::read_signed(&path).unwrap();
    let key = key_at(d, "hospital-a");
    let bad = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/uploads/dictionary-missing.parquet");
    let (served, url) = serve(d, &path);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut client = Client::new(&url, contract.clone(), key).unwrap();
        match client.upload("ehr", &bad, |_| {}).await {
            Err(ClientError::Refused { reason, .. }) => {
                assert!(reason.contains("could not be decoded"), "{reason}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        // The service still answers.
        client.audit().await.unwrap();
    });
    drop(served);
    let log = std::fs::read_to_string(d.join("serve.log")).unwrap();
    assert!(log.contains("a thread panicked at"), "{log}");
    assert!(!log.contains("Decoder for dict"), "{log}");
}

/// A fixed analysis runs as its parties signed it, but `kura contract verify` (and `sign`)
/// warn when an ad-hoc query of the same shape would be refused, naming the rule: here a
/// measure computed in a derived table before it is aggregated.
#[test]
pub(crate) fn cli_contract_verify_warns_of_a_fixed_analysis_the_rules_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let contract = cli_setup_with(d, "", |text| {
        text.replace(
            "AVG(CAST(e.diabetes AS DOUBLE)) AS rate FROM ehr e JOIN activity a ON e.patient_id",
            "AVG(e.v) AS rate FROM (SELECT patient_id, CASE WHEN age_band = 'old' THEN \
             CAST(diabetes AS DOUBLE) ELSE 0 END AS v FROM ehr) e JOIN activity a ON e.patient_id",
        )
    });
    let c = contract.to_str().unwrap();
    let verified = kura(&["contract", "verify", "--contract", c, "--json"]);
    assert!(verified.status.success());
    let v: serde_json::Value = serde_json::from_slice(&verified.stdout).unwrap();
    assert_eq!(v["valid"], true, "{v}");
    let warnings = v["warnings"].as_array().unwrap();
    assert!(
        warnings.iter().any(|w| {
            let w = w.as_str().unwrap();
            w.contains("\"by_activity\"") && w.contains("rule measure-use")
        }),
        "{v}"
    );
    let text = kura(&["contract", "verify", "--contract", c]);
    let err = String::from_utf8(text.stderr).unwrap();
    assert!(err.contains("warning: analysis \"by_activity\""), "{err}");
}
