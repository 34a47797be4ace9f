//! Runs: a named analysis, an ad-hoc query or a list, under the contract's output rules; the
//! result signed and sealed to each receiver, the run logged, and retention applied.

use kura_api::{Action, ResultTable, RunResponse, SignedRequest};
use kura_contract::{ADHOC_ANALYSIS, AnalysisKind, DeleteAfter};
use kura_engine::Tables;
use kura_ledger::Event;

use super::Service;
use crate::ServiceError;

/// What a run executes: an ad-hoc query, a fixed aggregate analysis, a list, a model, a
/// scoring, or either kind of query under differential privacy (with its ε, if it names one).
enum Job<'a> {
    Query(&'a str),
    Dp(&'a str, Option<f64>),
    Aggregate(&'a str),
    List(&'a kura_contract::Analysis),
    Model(&'a kura_contract::Analysis),
    Score(&'a kura_contract::Analysis),
}

/// A differentially private run's charge: what it spends, from whom, and how its refusal is
/// logged if it fails after reading data.
struct Charge<'a> {
    analysis: &'a str,
    party: &'a str,
    sql: Option<&'a str>,
    receivers: &'a [String],
    spend: kura_contract::dp::Spend,
}

impl Charge<'_> {
    /// The spend, if every receiver's budget allows it.
    fn priced(&self, state: &super::State) -> Result<kura_contract::dp::Spend, ServiceError> {
        if let Some(budget) = &state.budget {
            budget
                .check(self.receivers, self.spend)
                .map_err(ServiceError::Refused)?;
        }
        Ok(self.spend)
    }
}

impl Service {
    /// The outcome of a DP run. One refused before it read a row (not all data is there)
    /// spends nothing. One that failed after is charged in full and its refusal logged with the
    /// charge, before the state lock is released (`logged`): failures would otherwise be free
    /// probes of the data.
    async fn settle(
        &self,
        state: &mut super::State,
        output: Result<kura_engine::Output, kura_engine::EngineError>,
        charge: Charge<'_>,
        logged: &mut bool,
    ) -> Result<Result<kura_engine::Output, kura_engine::EngineError>, ServiceError> {
        let e = match output {
            Err(e) if !matches!(e, kura_engine::EngineError::MissingData(_)) => e,
            other => return Ok(other),
        };
        let error = ServiceError::from(e);
        if let Some(budget) = &mut state.budget {
            budget.record(charge.receivers, charge.spend);
        }
        self.log(Event::RunRefused {
            analysis: charge.analysis.to_string(),
            party: charge.party.to_string(),
            reason: error.to_string(),
            sql: charge.sql.map(str::to_string),
            dp: Some(charge.spend),
        })
        .await?;
        *logged = true;
        Err(error)
    }

    /// Runs an analysis of the contract for `party`.
    pub(crate) async fn run(
        &self,
        req: SignedRequest,
        request: &str,
    ) -> Result<RunResponse, ServiceError> {
        let (party, body) = self.authenticate(&req).await?;
        let (analysis, sql) = match &body.action {
            Action::Run { analysis } => (analysis.clone(), None),
            Action::Query { sql, .. } => (ADHOC_ANALYSIS.to_string(), Some(sql.as_str())),
            _ => {
                return Err(ServiceError::BadRequest(
                    "run needs a run or query action".into(),
                ));
            }
        };
        let epsilon = match &body.action {
            Action::Query { epsilon, .. } => *epsilon,
            _ => None,
        };
        let party = party.name.clone();
        let mut logged = false;
        let result = self
            .run_checked(&party, &analysis, sql, epsilon, request, &mut logged)
            .await;
        if let Err(e) = &result
            && !logged
            && !matches!(e, ServiceError::Internal(_))
        {
            self.log(Event::RunRefused {
                analysis,
                party,
                reason: e.to_string(),
                sql: sql.map(str::to_string),
                dp: None,
            })
            .await?;
        }
        result
    }

    /// Runs a named analysis, or (with `sql`) an ad-hoc query.
    async fn run_checked(
        &self,
        party: &str,
        analysis_name: &str,
        sql: Option<&str>,
        epsilon: Option<f64>,
        request: &str,
        logged: &mut bool,
    ) -> Result<RunResponse, ServiceError> {
        let (job, receivers) = match sql {
            Some(sql) => {
                // Without an [adhoc] section the engine's refusal says so.
                kura_engine::roles::Rules::of(&self.contract).map_err(ServiceError::from)?;
                let receivers = self
                    .contract
                    .receivers_of(ADHOC_ANALYSIS)
                    .unwrap_or_default();
                // Under [privacy.dp] every ad-hoc query is differentially private.
                let job = if self.contract.privacy.dp.is_some() {
                    Job::Dp(sql, epsilon)
                } else {
                    Job::Query(sql)
                };
                (job, receivers.to_vec())
            }
            None => {
                let analysis = self.contract.analysis(analysis_name).ok_or_else(|| {
                    ServiceError::NotFound(format!(
                        "analysis {analysis_name:?} is not in the contract"
                    ))
                })?;
                let job = match analysis.kind {
                    AnalysisKind::List => Job::List(analysis),
                    AnalysisKind::Model => Job::Model(analysis),
                    AnalysisKind::Score => Job::Score(analysis),
                    AnalysisKind::Aggregate if analysis.dp => {
                        Job::Dp(&analysis.sql, analysis.epsilon)
                    }
                    AnalysisKind::Aggregate => Job::Aggregate(&analysis.sql),
                };
                (job, analysis.receivers.clone())
            }
        };
        if !self.contract.may_start(party, analysis_name) {
            return Err(ServiceError::Forbidden(format!(
                "party {party:?} may not start {}",
                if sql.is_some() {
                    "ad-hoc queries (not among [adhoc] analysts)".to_string()
                } else {
                    format!("analysis {analysis_name:?}")
                }
            )));
        }
        // Hold the state lock for the whole run: retention deletes what the run used, and no
        // upload or second run may interleave with that.
        let mut state = self.state.lock().await;
        let tables: Tables = state
            .datasets
            .iter()
            .filter_map(|(name, held)| Some((name.clone(), held.table()?)))
            .collect();
        let same_for_all =
            |o: kura_engine::Output| receivers.iter().map(|r| (r.clone(), o.clone())).collect();
        // A DP run is planned and priced, and checked against the budget, before it touches
        // data. The state lock is held until its spend is logged and recorded, so concurrent
        // runs cannot overspend. A run refused before it reads data spends nothing; one that
        // fails after is charged in full, its refusal and charge logged before the lock is
        // released (`logged`), or failures would be free probes of the data.
        let mut spent = None;
        let mut executors = Vec::new();
        let adhoc = matches!(job, Job::Query(_));
        let executed = match job {
            Job::Dp(dp_sql, epsilon) => {
                // Planned and run with one choice of executors: the plan's session knows how
                // the cluster reads stored datasets only if it was made for the cluster.
                let on = self.executors().await;
                let prepared = self
                    .engine(
                        &on,
                        kura_engine::dp::prepare(&self.contract, dp_sql, epsilon, &tables),
                    )
                    .await?
                    .map_err(ServiceError::from)?;
                let charge = Charge {
                    analysis: analysis_name,
                    party,
                    sql,
                    receivers: &receivers,
                    spend: prepared.spend(),
                };
                spent = Some(charge.priced(&state)?);
                let output = self.engine(&on, prepared.run(&tables)).await?;
                let output = self.settle(&mut state, output, charge, logged).await?;
                if output.is_ok() {
                    executors = on;
                }
                output.map(same_for_all)
            }
            Job::Model(analysis) if analysis.dp => {
                // Priced and checked against the budget before it reads a row, like a DP query.
                let charge = Charge {
                    analysis: analysis_name,
                    party,
                    sql,
                    receivers: &receivers,
                    spend: kura_engine::model::private::spend(&self.contract, analysis)
                        .map_err(ServiceError::from)?,
                };
                spent = Some(charge.priced(&state)?);
                let output;
                (output, executors) = self
                    .on_cluster(kura_engine::model::train(&self.contract, analysis, &tables))
                    .await?;
                self.settle(&mut state, output, charge, logged)
                    .await?
                    .map(same_for_all)
            }
            Job::Query(sql) | Job::Aggregate(sql) => {
                let overlap = state.overlap.as_mut();
                let output;
                (output, executors) = self
                    .on_cluster(async {
                        if adhoc {
                            kura_engine::run_query(&self.contract, sql, &tables, overlap).await
                        } else {
                            kura_engine::run_analysis(&self.contract, sql, &tables, overlap).await
                        }
                    })
                    .await?;
                output.map(same_for_all)
            }
            Job::List(analysis) => {
                let output;
                (output, executors) = self
                    .on_cluster(kura_engine::list::run_list(
                        &self.contract,
                        analysis,
                        &tables,
                    ))
                    .await?;
                output.map(|m| m.into_iter().collect())
            }
            Job::Model(analysis) => {
                let output;
                (output, executors) = self
                    .on_cluster(kura_engine::model::train(&self.contract, analysis, &tables))
                    .await?;
                output.map(same_for_all)
            }
            Job::Score(analysis) => {
                let model = analysis
                    .score
                    .as_ref()
                    .map_or_else(String::new, |s| s.model.clone());
                match state.models.get(&model).cloned() {
                    Some(scorer) => {
                        let output;
                        (output, executors) = self
                            .on_cluster(kura_engine::score::score(
                                &self.contract,
                                analysis,
                                &tables,
                                &scorer,
                            ))
                            .await?;
                        output.map(|m| m.into_iter().collect())
                    }
                    None => Err(kura_engine::EngineError::MissingData(vec![model])),
                }
            }
        };
        let outputs: Vec<(String, kura_engine::Output)> = match executed {
            Ok(o) => o,
            Err(kura_engine::EngineError::MissingData(missing)) => {
                let gone: Vec<_> = missing
                    .iter()
                    .filter(|m| state.deleted.contains_key(*m))
                    .collect();
                let sealed: Vec<_> = missing
                    .iter()
                    .filter(|m| state.datasets.contains_key(*m))
                    .collect();
                return Err(ServiceError::Refused(if !sealed.is_empty() {
                    format!(
                        "dataset(s) {sealed:?} are stored but await their provider's key release \
                         to this enclave instance (`kura release`)"
                    )
                } else if gone.is_empty() {
                    format!(
                        "not all data is present: waiting for dataset(s) {}",
                        missing.join(", ")
                    )
                } else {
                    let why: Vec<&str> = gone
                        .iter()
                        .filter_map(|g| state.deleted.get(*g).map(String::as_str))
                        .collect();
                    format!("dataset(s) {gone:?} were deleted ({})", why.join("; "))
                }));
            }
            Err(e) => return Err(e.into()),
        };
        drop(tables);

        state.runs += 1;
        let run_id = format!("run-{}-{}", state.runs, &kura_api::nonce()[..8]);
        let datasets = outputs
            .first()
            .map(|(_, o)| o.datasets.clone())
            .unwrap_or_default();
        let mut sealed_to = Vec::new();
        // Each receiver's table is signed and sealed on its own (a list gives each its rows).
        for (receiver, output) in outputs {
            let table = ResultTable {
                run_id: run_id.clone(),
                analysis: analysis_name.to_string(),
                sql: sql.map(str::to_string),
                request: Some(request.to_string()),
                columns: output.columns,
                types: output.types,
                rows: output.rows,
                suppressed_groups: output.suppressed_groups,
                dp: output.dp,
                onnx: output.onnx.map(kura_crypto::b64::encode),
            };
            let key = &self
                .contract
                .party(&receiver)
                .expect("validated receiver")
                .public_key;
            let s = kura_api::seal_result(
                &self.identity,
                self.contract.crypto.kem,
                self.contract.id().as_str(),
                &table,
                &receiver,
                key,
            )
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
            sealed_to.push((receiver, s));
        }

        let receipt = self
            .log(Event::Run {
                run_id: run_id.clone(),
                analysis: analysis_name.to_string(),
                by: party.to_string(),
                datasets: datasets.clone(),
                rows: None,
                suppressed_groups: None,
                sql: sql.map(str::to_string),
                dp: spent,
                request: Some(request.to_string()),
                executors,
            })
            .await?;
        if let (Some(budget), Some(spend)) = (&mut state.budget, spent) {
            budget.record(&receivers, spend);
        }
        let mut sealed = Vec::new();
        for (receiver, s) in sealed_to {
            let receipt = self
                .log(Event::Release {
                    run_id: run_id.clone(),
                    receiver: receiver.clone(),
                    result_sha256: hex::encode(kura_crypto::sha256(&s.ct)),
                })
                .await?;
            sealed.push(super::kept::Kept {
                run_id: run_id.clone(),
                analysis: analysis_name.to_string(),
                receiver,
                sealed: s,
                release: receipt.index,
                signer: self.identity.public().to_text(),
            });
        }
        // Kept on the state directory too (it is sealed), so that a restart loses no result;
        // if that fails, the result is still served until then.
        if let Err(e) = super::kept::save(&self.state_dir, &run_id, &sealed) {
            tracing::error!(error = %e, "cannot keep sealed results in the state directory");
        }
        state.results.insert(run_id.clone(), sealed);

        let mut deleted = Vec::new();
        let mut deletions = Vec::new();
        if self.contract.retention.delete_after == DeleteAfter::Run {
            for name in &datasets {
                deletions.push(
                    self.delete(
                        &mut state,
                        name,
                        "delete_after = \"run\": used by ".to_string() + &run_id,
                    )
                    .await?,
                );
                deleted.push(name.clone());
            }
        }
        Ok(RunResponse {
            run_id,
            analysis: analysis_name.to_string(),
            receivers,
            deleted,
            receipt,
            deletions,
        })
    }
}
