//! Human and machine renderings of results and reports.

use kura_api::ResultTable;
use kura_client::AuditReport;
use kura_contract::ColumnType;
use serde_json::Value;

pub fn progress(total: u64, message: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr(),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(message.to_string());
    bar
}

/// The stable JSON shape of a result (DESIGN.md §5).
pub fn result_json(t: &ResultTable) -> Value {
    let mut v = serde_json::json!({
        "run_id": t.run_id,
        "analysis": t.analysis,
        "columns": t.columns,
        "rows": t.rows,
        "suppressed_groups": t.suppressed_groups,
    });
    // `types` when the enclave sent them; `dp` only for differentially private releases.
    if !t.types.is_empty() {
        v["types"] = serde_json::json!(t.types);
    }
    if let Some(dp) = &t.dp {
        v["dp"] = serde_json::json!(dp);
    }
    // A trained model's ONNX file, base64.
    if let Some(onnx) = &t.onnx {
        v["onnx"] = serde_json::json!(onnx);
    }
    v
}

/// The privacy budget, one line per account.
pub fn budget(
    dp: &kura_contract::dp::DpSettings,
    accounts: &[kura_contract::dp::Account],
) -> String {
    let mut out = format!(
        "privacy budget: ε = {}, δ = {:e} {}\n",
        dp.epsilon,
        dp.delta,
        match dp.split {
            kura_contract::dp::BudgetSplit::PerReceiver => "per receiver",
            kura_contract::dp::BudgetSplit::Shared => "shared by the collaboration",
        }
    );
    for a in accounts {
        out += &format!(
            "{:<20} spent ε = {:<10} δ = {:<10e} remaining ε = {:<10} δ = {:e} ({} release(s))\n",
            a.name,
            a.spent_epsilon,
            a.spent_delta,
            a.remaining_epsilon,
            a.remaining_delta,
            a.releases
        );
    }
    out
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.4}"),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// A result as an aligned text table (widths by displayed characters, so names and values in
/// any script line up), then what was suppressed or the DP report.
pub fn table(t: &ResultTable) -> String {
    let mut grid = comfy_table::Table::new();
    grid.load_preset(comfy_table::presets::ASCII_BORDERS_ONLY_CONDENSED)
        .set_header(&t.columns);
    for r in &t.rows {
        grid.add_row(r.iter().map(cell));
    }
    for (i, ty) in t.types.iter().enumerate() {
        if matches!(ty, ColumnType::Int64 | ColumnType::Float64)
            && let Some(column) = grid.column_mut(i)
        {
            column.set_cell_alignment(comfy_table::CellAlignment::Right);
        }
    }
    let mut out = format!("{} ({})\n{grid}\n", t.analysis, t.run_id);
    match &t.dp {
        Some(dp) => {
            out += &format!(
                "differentially private: ε = {}, δ = {}, groups {}; noise per column:\n",
                dp.epsilon,
                dp.delta,
                dp.groups.as_str()
            );
            for (name, c) in &dp.columns {
                out += &format!("  {name}: {}\n", c.describe());
            }
            // A model's terms: the noise each carries, on its own scale.
            for (term, sd) in &dp.noise_sd {
                out += &format!("  {term}: Laplace noise, standard deviation {sd:.4e}\n");
            }
        }
        None => {
            out += &format!(
                "{} group(s) suppressed (resting on fewer people, or fewer pooled datasets, than the contract requires)\n",
                t.suppressed_groups
            );
        }
    }
    out
}

/// A result as CSV (RFC 4180 quoting by the `csv` crate); nulls are empty fields.
pub fn csv(t: &ResultTable) -> anyhow::Result<String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(&t.columns)?;
    for r in &t.rows {
        w.write_record(r.iter().map(|v| match v {
            Value::Null => String::new(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }))?;
    }
    Ok(String::from_utf8(w.into_inner()?)?)
}

pub fn audit(report: &AuditReport) -> String {
    let mut out = format!(
        "audit log verified: {} entries, {} attested enclave start(s), head {}\n",
        report.chain.entries, report.chain.enclave_starts, report.chain.head
    );
    for e in &report.entries {
        if let Ok(body) = e.parse_body() {
            out += &format!(
                "  #{:<4} {}  {}\n",
                body.seq,
                body.time,
                describe(&body.event)
            );
        }
    }
    out
}

/// The first 16 hex digits of SHA-256 over an evidence's JSON: how the log names it.
fn evidence_digest(evidence: &kura_attestation::Evidence) -> String {
    use sha2::Digest;
    let json = serde_json::to_vec(evidence).unwrap_or_default();
    hex::encode(sha2::Sha256::digest(json))[..16].to_string()
}

pub fn describe(event: &kura_ledger::Event) -> String {
    use kura_ledger::Event as E;
    match event {
        E::EnclaveStarted {
            evidence,
            enclave_key,
            ..
        } => format!(
            "enclave started on {} (key {})",
            evidence.platform,
            kura_crypto::PublicIdentity::parse(enclave_key)
                .map(|k| k.fingerprint())
                .unwrap_or_default()
        ),
        E::ExecutorJoined {
            executor, evidence, ..
        } => format!(
            "executor {executor} joined the cluster on {} (evidence {})",
            evidence.platform,
            evidence_digest(evidence)
        ),
        E::ExecutorRefused {
            reason,
            evidence_sha256,
            unlogged_before,
        } => format!(
            "an executor was REFUSED (evidence {}): {reason}{}",
            &evidence_sha256[..evidence_sha256.len().min(16)],
            match unlogged_before {
                0 => String::new(),
                n => format!(" ({n} more refusals before it were not logged one by one)"),
            }
        ),
        E::ShuffleDeleted {
            executors,
            unreachable,
        } => {
            let lost = if unreachable.is_empty() {
                String::new()
            } else {
                format!(
                    "; unreachable, its keys lost with it: {}",
                    unreachable.join(", ")
                )
            };
            format!(
                "the next run's shuffle files and keys deleted on {}{lost}",
                if executors.is_empty() {
                    "no executor".to_string()
                } else {
                    executors.join(", ")
                }
            )
        }
        E::Upload {
            dataset,
            provider,
            rows,
            stored,
            ..
        } => format!(
            "upload of {dataset} by {provider}: {rows} rows{}",
            stored
                .as_ref()
                .map(|s| format!(", batch {} stored at {}", s.batch, s.location))
                .unwrap_or_default()
        ),
        E::KeysReleased {
            dataset,
            party,
            batches,
        } => format!(
            "keys of {dataset} released by {party} to this instance: {} batch(es)",
            batches.len()
        ),
        E::UploadRefused {
            dataset,
            party,
            reason,
        } => format!("upload of {dataset} by {party} REFUSED: {reason}"),
        E::BatchRefused {
            dataset,
            party,
            batch,
            reason,
        } => format!("batch {batch} of {dataset} REFUSED at {party}'s key release: {reason}"),
        E::Run {
            run_id,
            analysis,
            by,
            rows,
            suppressed_groups,
            executors,
            ..
        } => {
            let on = if executors.is_empty() {
                String::new()
            } else {
                format!(" on the cluster ({})", executors.join(", "))
            };
            match (rows, suppressed_groups) {
                (Some(rows), Some(suppressed)) => format!(
                    "{run_id}: {analysis} run by {by}{on}: {rows} rows out, {suppressed} suppressed"
                ),
                _ => format!("{run_id}: {analysis} run by {by}{on}"),
            }
        }
        E::RunRefused {
            analysis,
            party,
            reason,
            dp,
            ..
        } => format!(
            "run of {analysis} by {party} REFUSED: {reason}{}",
            if dp.is_some() {
                " (it had read data: its privacy budget was charged)"
            } else {
                ""
            }
        ),
        E::Release {
            run_id, receiver, ..
        } => format!("{run_id}: result sealed to {receiver}"),
        E::Deletion { dataset, reason } => format!("deleted {dataset}: {reason}"),
    }
}
