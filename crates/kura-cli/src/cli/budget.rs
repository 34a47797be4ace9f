//! `kura budget`: the differential-privacy budget spent and left, replayed from the verified
//! log.

use std::process::ExitCode;

use anyhow::{Result, bail};
use kura_contract::dp::{Account, DpSettings};

use super::{Party, attested, save_head};
use crate::render;

#[derive(clap::Args, Debug)]
pub struct BudgetArgs {
    #[command(flatten)]
    party: Party,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub(super) json: bool,
}

pub async fn run(a: BudgetArgs) -> Result<ExitCode> {
    let mut client = attested(&a.party).await?;
    let report = client.audit().await?;
    save_head(&client)?;
    let Some((dp, accounts)) = accounts(client.contract(), &report)? else {
        bail!("the contract has no [privacy.dp] section: there is no privacy budget");
    };
    if a.json {
        println!("{}", json(&dp, &accounts));
    } else {
        print!("{}", render::budget(&dp, &accounts));
    }
    Ok(ExitCode::SUCCESS)
}

/// The contract's DP settings and each budget account, replayed from the verified log; `None`
/// when the contract has no `[privacy.dp]`.
pub(crate) fn accounts(
    contract: &kura_contract::Contract,
    report: &kura_client::AuditReport,
) -> Result<Option<(DpSettings, Vec<Account>)>> {
    let bodies = report
        .entries
        .iter()
        .map(|e| e.parse_body())
        .collect::<Result<Vec<_>, _>>()?;
    let (Some(budget), Some(dp)) = (
        kura_client::audit::budget(contract, &bodies),
        contract.privacy.dp.clone(),
    ) else {
        return Ok(None);
    };
    Ok(Some((dp, budget.accounts_report())))
}

/// The JSON of `kura budget --json`.
pub(crate) fn json(dp: &DpSettings, accounts: &[Account]) -> serde_json::Value {
    serde_json::json!({
        "epsilon": dp.epsilon,
        "delta": dp.delta,
        "split": dp.split,
        "accounts": accounts,
    })
}
