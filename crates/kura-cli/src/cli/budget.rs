//! `kura budget`: the differential-privacy budget spent and left, replayed from the verified
//! log.

use std::process::ExitCode;

use anyhow::{Result, bail};

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
    let bodies = report
        .entries
        .iter()
        .map(|e| e.parse_body())
        .collect::<Result<Vec<_>, _>>()?;
    let Some(budget) = kura_client::audit::budget(client.contract(), &bodies) else {
        bail!("the contract has no [privacy.dp] section: there is no privacy budget");
    };
    let dp = client
        .contract()
        .privacy
        .dp
        .clone()
        .expect("budget implies dp");
    let accounts = budget.accounts_report();
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "epsilon": dp.epsilon,
                "delta": dp.delta,
                "split": dp.split,
                "accounts": accounts,
            })
        );
    } else {
        print!("{}", render::budget(&dp, &accounts));
    }
    Ok(ExitCode::SUCCESS)
}
