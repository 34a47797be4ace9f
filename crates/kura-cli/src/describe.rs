//! `kura contract describe`: what a contract lets each party do, read from the contract alone.

use std::fmt::Write as _;

use kura_contract::{Adhoc, ColumnRole, Contract, DeleteAfter, ONE_PERSON_AGGREGATES};
use serde_json::{Value, json};

fn retention(c: &Contract) -> String {
    match &c.retention.delete_after {
        DeleteAfter::Run => "after the first run that reads each dataset".into(),
        DeleteAfter::Deadline(t) => format!("at {t}"),
        DeleteAfter::Never => "never (while the service runs)".into(),
    }
}

fn role(r: ColumnRole) -> &'static str {
    match r {
        ColumnRole::Identifier => "identifier: joined and counted, never output",
        ColumnRole::Dimension => "dimension: grouped, filtered and output",
        ColumnRole::Measure => "measure: only inside aggregates",
    }
}

/// The aggregates the contract lists that kura answers.
fn answered(adhoc: &Adhoc) -> Vec<&str> {
    adhoc
        .aggregates
        .iter()
        .map(String::as_str)
        .filter(|x| !ONE_PERSON_AGGREGATES.contains(x))
        .collect()
}

/// The description as one JSON object.
pub fn json(c: &Contract) -> Value {
    let adhoc = c.adhoc.as_ref().map(|a| {
        json!({
            "analysts": a.analysts,
            "receivers": a.receivers,
            "aggregates": answered(a),
            "column_aggregates": a.column_aggregates,
            "dimension_functions": a.dimension_functions,
            "differentially_private": c.privacy.dp.is_some(),
            "overlap_control": a.overlap_control,
        })
    });
    json!({
        "name": c.name,
        "id": c.id(),
        "purpose": c.purpose,
        "parties": c.parties.iter().map(|p| json!({
            "name": p.name,
            "roles": p.roles,
            "fingerprint": p.public_key.fingerprint(),
        })).collect::<Vec<_>>(),
        "datasets": c.datasets,
        "analyses": c.analyses.iter().map(|a| json!({
            "name": a.name,
            "kind": a.kind,
            "receivers": a.receivers,
            "differentially_private": a.dp,
            "sql": a.sql,
            "list_column": a.list_column,
            "model": a.model,
            "score": a.score,
        })).collect::<Vec<_>>(),
        "models": c.models,
        "adhoc": adhoc,
        "min_group_size": c.output.min_group_size,
        "min_pooled_datasets": c.output.min_pooled_datasets,
        "privacy_dp": c.privacy.dp,
        "retention": retention(c),
        "platforms": c.enclave.platforms,
        "warnings": c.warnings(),
    })
}

/// The description for people.
pub fn text(c: &Contract) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "contract {} ({})\n  {}\n", c.name, c.id(), c.purpose);
    let _ = writeln!(o, "parties");
    for p in &c.parties {
        let roles: Vec<&str> = p.roles.iter().map(|r| r.as_str()).collect();
        let _ = writeln!(o, "  {:<20} {}", p.name, roles.join(", "));
    }
    for d in &c.datasets {
        let _ = writeln!(
            o,
            "\ndataset {} (from {}; one person = one {})",
            d.name, d.provider, d.privacy_unit
        );
        for col in &d.columns {
            let _ = writeln!(
                o,
                "  {:<20} {:<8} {}",
                col.name,
                col.ty.as_str(),
                role(col.role)
            );
        }
    }
    if !c.analyses.is_empty() {
        let _ = writeln!(o, "\nanalyses");
        for a in &c.analyses {
            let _ = writeln!(
                o,
                "  {:<20} to {}{}",
                a.name,
                a.receivers.join(", "),
                if a.dp {
                    " (differentially private)"
                } else {
                    ""
                }
            );
            if let Some(m) = &a.model {
                let released = match m.family {
                    kura_contract::ModelFamily::Tree => format!(
                        "splits only at the contract's cut points, at most {} deep, each leaf's \
                         rate over at least {} people",
                        m.max_depth
                            .unwrap_or(kura_contract::ModelSpec::DEFAULT_MAX_DEPTH),
                        c.output.min_group_size
                    ),
                    _ => "its terms".to_string(),
                };
                let _ = writeln!(
                    o,
                    "  {:<20} trains a {} model of {} on {}; releases {released}, its ONNX file \
                     and its quality on {:.0}% held-out rows",
                    "",
                    m.family.as_str(),
                    m.label,
                    m.features.join(", "),
                    m.holdout * 100.0
                );
            }
            if let (Some(s), Some(model)) =
                (&a.score, a.score.as_ref().and_then(|s| c.model(&s.model)))
            {
                let _ = writeln!(
                    o,
                    "  {:<20} scores {} with model {}: each row's score only to the owner of its \
                     {}, to {} only how the scores are distributed{}",
                    "",
                    s.features.join(", "),
                    s.model,
                    a.list_column.as_deref().unwrap_or_default(),
                    model.provider,
                    s.group_by
                        .as_deref()
                        .map(|g| format!(" by {g}"))
                        .unwrap_or_default()
                );
            }
        }
    }
    for m in &c.models {
        let _ = writeln!(
            o,
            "\nmodel {} (from {}; only the ONNX file with SHA-256 {} is run, and no other party \
             sees it)",
            m.name, m.provider, m.sha256
        );
    }
    match &c.adhoc {
        None => {
            let _ = writeln!(o, "\nad-hoc queries: none (only the analyses above run)");
        }
        Some(a) => {
            let _ = writeln!(
                o,
                "\nad-hoc queries by {}, results to {}",
                a.analysts.join(", "),
                a.receivers.join(", ")
            );
            let _ = writeln!(o, "  aggregates: {}", answered(a).join(", "));
            for (column, list) in &a.column_aggregates {
                let _ = writeln!(o, "  aggregates of {column}: {}", list.join(", "));
            }
            for (column, list) in &a.dimension_functions {
                let _ = writeln!(o, "  functions on {column}: {}", list.join(", "));
            }
            let _ = writeln!(
                o,
                "  answered {}{}",
                if c.privacy.dp.is_some() {
                    "with differential privacy".to_string()
                } else {
                    format!(
                        "exactly, every value resting on at least {} people",
                        c.output.min_group_size
                    )
                },
                if a.overlap_control {
                    "; overlap control on"
                } else {
                    ""
                }
            );
        }
    }
    let _ = writeln!(o, "\nminimum group size: {}", c.output.min_group_size);
    if c.output.min_pooled_datasets > 1 {
        let _ = writeln!(
            o,
            "datasets pooled by UNION ALL: every group rests on rows of at least {} of them",
            c.output.min_pooled_datasets
        );
    }
    let _ = writeln!(o, "data deleted: {}", retention(c));
    if let Some(dp) = &c.privacy.dp {
        let _ = writeln!(
            o,
            "privacy budget: ε = {}, δ = {:e}, {:?}; a query spends ε = {} unless it names one",
            dp.epsilon, dp.delta, dp.split, dp.query_epsilon
        );
    }
    let platforms: Vec<&str> = c.enclave.platforms.iter().map(|p| p.as_str()).collect();
    let _ = writeln!(o, "accepted platforms: {}", platforms.join(", "));
    for w in c.warnings() {
        let _ = writeln!(o, "\nwarning: {w}");
    }
    o
}
