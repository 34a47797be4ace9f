//! The transparency report: the disclosure a statistics-only provision asks for (who provided
//! and who received what, for which purpose, which analyses ran and when, when the data was
//! deleted), generated only from a log that has just been verified.

use std::fmt::Write as _;

use anyhow::Result;
use kura_client::AuditReport;
use kura_contract::{Contract, DeleteAfter};
use kura_ledger::Event;
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Transparency {
    pub contract: ContractInfo,
    pub log: LogInfo,
    pub parties: Vec<PartyInfo>,
    pub datasets: Vec<DatasetInfo>,
    pub analyses: Vec<AnalysisInfo>,
    pub enclave_starts: Vec<StartInfo>,
    /// The cluster's executors, each admitted on its evidence (none: one enclave did all).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub executors: Vec<ExecutorInfo>,
    /// Executors that asked to join and were refused.
    #[serde(skip_serializing_if = "is_zero")]
    pub refused_executors: u64,
    pub refused_uploads: u64,
    pub refused_runs: u64,
    /// Spent and remaining differential-privacy budget, per account (with `[privacy.dp]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub privacy_budget: Option<Vec<kura_contract::dp::Account>>,
}

#[derive(Debug, Serialize)]
pub struct ContractInfo {
    pub name: String,
    pub id: String,
    pub purpose: String,
    pub min_group_size: u64,
    pub retention: String,
}

#[derive(Debug, Serialize)]
pub struct LogInfo {
    pub entries: u64,
    pub merkle_root: String,
    pub signed_at: String,
}

#[derive(Debug, Serialize)]
pub struct PartyInfo {
    pub name: String,
    pub roles: Vec<&'static str>,
}

#[derive(Debug, Serialize)]
pub struct DatasetInfo {
    pub name: String,
    pub provider: String,
    pub columns: Vec<String>,
    /// Rows of each upload (each batch, with `--append`).
    pub uploads: Vec<Dated<u64>>,
    /// Where the dataset rests (`local`: the service's store; or the provider's bucket).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stored_at: Option<String>,
    /// Each release of its keys to a new enclave instance, by its provider.
    pub key_releases: Vec<Dated<String>>,
    pub deleted: Option<Dated<String>>,
}

#[derive(Debug, Serialize)]
pub struct Dated<T> {
    pub time: String,
    pub value: T,
}

#[derive(Debug, Serialize)]
pub struct AnalysisInfo {
    pub name: String,
    pub receivers: Vec<String>,
    pub runs: Vec<RunInfo>,
}

#[derive(Debug, Serialize)]
pub struct RunInfo {
    pub run_id: String,
    pub time: String,
    pub by: String,
    pub datasets: Vec<String>,
    /// Only in logs written before kura stopped logging result sizes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suppressed_groups: Option<u64>,
    pub released_to: Vec<String>,
    /// The SQL of an ad-hoc query.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
    /// The privacy budget a differentially private run spent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dp: Option<kura_contract::dp::Spend>,
    /// The cluster's executors that could run its tasks (none: the coordinator alone).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub executors: Vec<String>,
    /// Executors that deleted what the run left on them (its sealed shuffle files and keys).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shuffles_deleted_on: Vec<String>,
    /// Executors that could not be asked to (lost: their keys went with their memory).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shuffles_unreachable: Vec<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Serialize)]
pub struct ExecutorInfo {
    pub time: String,
    pub name: String,
    pub platform: String,
    pub measurement: String,
}

#[derive(Debug, Serialize)]
pub struct StartInfo {
    pub time: String,
    pub platform: String,
    pub measurement: String,
}

pub fn build(contract: &Contract, audit: &AuditReport) -> Result<Transparency> {
    let bodies = audit
        .entries
        .iter()
        .map(|e| e.parse_body())
        .collect::<Result<Vec<_>, _>>()?;
    let mut datasets: Vec<DatasetInfo> = contract
        .datasets
        .iter()
        .map(|d| DatasetInfo {
            name: d.name.clone(),
            provider: d.provider.clone(),
            columns: d
                .columns
                .iter()
                .map(|c| format!("{} ({:?})", c.name, c.role).to_lowercase())
                .collect(),
            uploads: vec![],
            stored_at: None,
            key_releases: vec![],
            deleted: None,
        })
        .collect();
    let mut analyses: Vec<AnalysisInfo> = contract
        .analyses
        .iter()
        .map(|a| AnalysisInfo {
            name: a.name.clone(),
            receivers: a.receivers.clone(),
            runs: vec![],
        })
        .chain(contract.adhoc.iter().map(|a| AnalysisInfo {
            name: kura_contract::ADHOC_ANALYSIS.to_string(),
            receivers: a.receivers.clone(),
            runs: vec![],
        }))
        .collect();
    let mut starts = vec![];
    let mut executors = vec![];
    let (mut refused_uploads, mut refused_runs, mut refused_executors) = (0, 0, 0);
    // A cluster run's shuffle deletion, logged just before the run's own entry.
    let mut shuffle_deleted: Option<(Vec<String>, Vec<String>)> = None;
    for b in &bodies {
        let time = b.time.clone();
        match &b.event {
            Event::EnclaveStarted { evidence, .. } => {
                let measurement = evidence
                    .claims()
                    .map(|c| hex::encode(c.measurement))
                    .unwrap_or_default();
                starts.push(StartInfo {
                    time,
                    platform: evidence.platform.to_string(),
                    measurement,
                });
            }
            Event::ExecutorJoined {
                executor, evidence, ..
            } => executors.push(ExecutorInfo {
                time,
                name: executor.clone(),
                platform: evidence.platform.to_string(),
                measurement: evidence
                    .claims()
                    .map(|c| hex::encode(c.measurement))
                    .unwrap_or_default(),
            }),
            Event::ExecutorRefused {
                unlogged_before, ..
            } => refused_executors += 1 + unlogged_before,
            Event::ShuffleDeleted {
                executors,
                unreachable,
            } => shuffle_deleted = Some((executors.clone(), unreachable.clone())),
            Event::Upload {
                dataset,
                rows,
                stored,
                ..
            } => {
                if let Some(d) = datasets.iter_mut().find(|d| &d.name == dataset) {
                    d.uploads.push(Dated { time, value: *rows });
                    if let Some(s) = stored {
                        d.stored_at = Some(s.location.clone());
                    }
                }
            }
            Event::KeysReleased { dataset, party, .. } => {
                if let Some(d) = datasets.iter_mut().find(|d| &d.name == dataset) {
                    d.key_releases.push(Dated {
                        time,
                        value: party.clone(),
                    });
                }
            }
            Event::Deletion { dataset, reason } => {
                if let Some(d) = datasets.iter_mut().find(|d| &d.name == dataset) {
                    d.deleted.get_or_insert(Dated {
                        time,
                        value: reason.clone(),
                    });
                }
            }
            Event::Run {
                run_id,
                analysis,
                by,
                datasets,
                rows,
                suppressed_groups,
                sql,
                dp,
                request: _,
                executors,
            } => {
                let (deleted_on, unreachable) = shuffle_deleted.take().unwrap_or_default();
                if let Some(a) = analyses.iter_mut().find(|a| &a.name == analysis) {
                    a.runs.push(RunInfo {
                        run_id: run_id.clone(),
                        time,
                        by: by.clone(),
                        datasets: datasets.clone(),
                        rows: *rows,
                        suppressed_groups: *suppressed_groups,
                        released_to: vec![],
                        sql: sql.clone(),
                        dp: *dp,
                        executors: executors.clone(),
                        shuffles_deleted_on: deleted_on,
                        shuffles_unreachable: unreachable,
                    });
                }
            }
            Event::Release {
                run_id, receiver, ..
            } => {
                if let Some(r) = analyses
                    .iter_mut()
                    .flat_map(|a| a.runs.iter_mut())
                    .find(|r| &r.run_id == run_id)
                {
                    r.released_to.push(receiver.clone());
                }
            }
            Event::UploadRefused { .. } => refused_uploads += 1,
            // In the log for every party; the report counts runs and uploads.
            Event::BatchRefused { .. } => {}
            Event::RunRefused { .. } => {
                refused_runs += 1;
                shuffle_deleted = None;
            }
        }
    }
    Ok(Transparency {
        contract: ContractInfo {
            name: contract.name.clone(),
            id: contract.id().to_string(),
            purpose: contract.purpose.clone(),
            min_group_size: contract.output.min_group_size,
            retention: match &contract.retention.delete_after {
                DeleteAfter::Run => "deleted after the run that uses it".into(),
                DeleteAfter::Never => "kept while the service runs".into(),
                DeleteAfter::Deadline(t) => format!("deleted at {t}"),
            },
        },
        log: LogInfo {
            entries: audit.chain.entries,
            merkle_root: audit.chain.root.clone(),
            signed_at: audit.head.time.clone(),
        },
        parties: contract
            .parties
            .iter()
            .map(|p| PartyInfo {
                name: p.name.clone(),
                roles: p.roles.iter().map(|r| r.as_str()).collect(),
            })
            .collect(),
        datasets,
        analyses,
        enclave_starts: starts,
        executors,
        refused_executors,
        refused_uploads,
        refused_runs,
        privacy_budget: kura_client::audit::budget(contract, &bodies).map(|b| b.accounts_report()),
    })
}

pub fn markdown(t: &Transparency) -> String {
    let mut o = String::new();
    let c = &t.contract;
    let _ = writeln!(o, "# Transparency report: {}\n", c.name);
    let _ = writeln!(
        o,
        "- Purpose: {}",
        if c.purpose.is_empty() {
            "(not stated)"
        } else {
            &c.purpose
        }
    );
    let _ = writeln!(o, "- Contract id: `{}`", c.id);
    let _ = writeln!(
        o,
        "- Output rule: every released group covers at least {} distinct people",
        c.min_group_size
    );
    let _ = writeln!(o, "- Retention: {}", c.retention);
    let _ = writeln!(
        o,
        "- Verified log: {} entries, Merkle root `{}`, head signed at {}\n",
        t.log.entries, t.log.merkle_root, t.log.signed_at
    );
    let _ = writeln!(o, "## Parties\n\n| party | roles |\n| --- | --- |");
    for p in &t.parties {
        let _ = writeln!(o, "| {} | {} |", p.name, p.roles.join(", "));
    }
    let _ = writeln!(
        o,
        "\n## Data provided\n\n| dataset | provider | uploaded | rows | stored at | key releases | deleted | reason |\n| --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for d in &t.datasets {
        let (up, rows) =
            d.uploads
                .last()
                .map_or(("not uploaded".to_string(), String::new()), |u| {
                    let rows: u64 = d.uploads.iter().map(|u| u.value).sum();
                    (u.time.clone(), rows.to_string())
                });
        let stored = d.stored_at.as_deref().unwrap_or("");
        let (del, why) = d
            .deleted
            .as_ref()
            .map_or(("no".to_string(), String::new()), |x| {
                (x.time.clone(), x.value.clone())
            });
        let _ = writeln!(
            o,
            "| {} | {} | {up} | {rows} | {stored} | {} | {del} | {why} |",
            d.name,
            d.provider,
            d.key_releases.len()
        );
    }
    let _ = writeln!(o, "\n## Analyses and recipients\n");
    for a in &t.analyses {
        let _ = writeln!(
            o,
            "### {}\n\nReceivers: {}\n",
            a.name,
            a.receivers.join(", ")
        );
        if a.runs.is_empty() {
            let _ = writeln!(o, "Not run.\n");
            continue;
        }
        let _ = writeln!(
            o,
            "| run | time | started by | datasets | released to |\n| --- | --- | --- | --- | --- |"
        );
        for r in &a.runs {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} |",
                r.run_id,
                r.time,
                r.by,
                r.datasets.join(", "),
                r.released_to.join(", ")
            );
            if let Some(sql) = &r.sql {
                let _ = writeln!(o, "|  | query: `{}` |  |  |  |", sql.replace('|', "\\|"));
            }
            if let Some(dp) = &r.dp {
                let _ = writeln!(
                    o,
                    "|  | differentially private: ε = {}, δ = {:e} |  |  |  |",
                    dp.epsilon, dp.delta
                );
            }
            if !r.executors.is_empty() {
                let mut line = format!("on the cluster: {}", r.executors.join(", "));
                if !r.shuffles_deleted_on.is_empty() {
                    line += &format!(
                        "; its shuffle files deleted on {}",
                        r.shuffles_deleted_on.join(", ")
                    );
                }
                if !r.shuffles_unreachable.is_empty() {
                    line += &format!(
                        "; unreachable (keys lost with them): {}",
                        r.shuffles_unreachable.join(", ")
                    );
                }
                let _ = writeln!(o, "|  | {line} |  |  |  |");
            }
        }
        o.push('\n');
    }
    let _ = writeln!(
        o,
        "## Enclave\n\n| started | platform | measurement |\n| --- | --- | --- |"
    );
    for s in &t.enclave_starts {
        let _ = writeln!(o, "| {} | {} | `{}` |", s.time, s.platform, s.measurement);
    }
    if t.enclave_starts.iter().any(|s| s.platform == "simulated") {
        let _ = writeln!(
            o,
            "\n**The simulated platform offers no protection; this collaboration ran without a TEE.**"
        );
    }
    if !t.executors.is_empty() || t.refused_executors > 0 {
        let _ = writeln!(
            o,
            "\n### Cluster executors\n\n| joined | executor | platform | measurement |\n| --- | --- | --- | --- |"
        );
        for e in &t.executors {
            let _ = writeln!(
                o,
                "| {} | {} | {} | `{}` |",
                e.time, e.name, e.platform, e.measurement
            );
        }
        let _ = writeln!(o, "\nRefused executors: {}.", t.refused_executors);
    }
    let _ = writeln!(
        o,
        "\nRefused requests: {} upload(s), {} run(s).",
        t.refused_uploads, t.refused_runs
    );
    if let Some(accounts) = &t.privacy_budget {
        let _ = writeln!(
            o,
            "\n## Privacy budget\n\n| account | spent ε | spent δ | remaining ε | remaining δ | releases |\n| --- | --- | --- | --- | --- | --- |"
        );
        for a in accounts {
            let _ = writeln!(
                o,
                "| {} | {} | {:e} | {} | {:e} | {} |",
                a.name,
                a.spent_epsilon,
                a.spent_delta,
                a.remaining_epsilon,
                a.remaining_delta,
                a.releases
            );
        }
    }
    o
}
