//! `kura attest verify`: evidence checked offline against the vendors' pinned roots.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use kura_contract::Platform;

use crate::files;

#[derive(Subcommand, Debug)]
pub enum AttestCmd {
    /// Verify evidence against the vendor's pinned root, offline unless --fetch.
    Verify(AttestArgs),
}

#[derive(clap::Args, Debug)]
pub struct AttestArgs {
    /// The platform that produced the evidence.
    #[arg(long, value_enum)]
    platform: Platform,
    /// The evidence: an SNP report, a DCAP quote, a Nitro attestation document.
    #[arg(long)]
    evidence: PathBuf,
    /// VCEK/VLEK and ASK/ARK certificates (PEM or DER); repeat for several files.
    #[arg(long)]
    certs: Vec<PathBuf>,
    /// Intel DCAP collateral in dcap-qvl's JSON layout.
    #[arg(long)]
    collateral: Option<PathBuf>,
    /// Verification time (RFC 3339); default now.
    #[arg(long)]
    at: Option<String>,
    /// Fetch a missing VCEK (AMD KDS) or DCAP collateral (Intel PCS) into $KURA_HOME/cache.
    /// Without it only the cache is consulted: no network.
    #[arg(long)]
    fetch: bool,
    /// Print one JSON object on stdout (verdict, platform, measurement, report data, debug).
    #[arg(long)]
    pub(super) json: bool,
}

pub async fn run(cmd: AttestCmd) -> Result<ExitCode> {
    let AttestCmd::Verify(a) = cmd;
    verify(a).await
}

async fn verify(a: AttestArgs) -> Result<ExitCode> {
    let platform = a.platform;
    let at =
        a.at.as_deref()
            .map(|at| {
                time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
                    .with_context(|| format!("--at {at:?} is not an RFC 3339 time"))
            })
            .transpose()?;
    let read = |p: &std::path::PathBuf| {
        std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
    };
    if platform == Platform::Simulated && (!a.certs.is_empty() || a.collateral.is_some()) {
        eprintln!("note: --certs and --collateral do not apply to simulated evidence");
    }
    let data = std::fs::read(&a.evidence)
        .with_context(|| format!("cannot read {}", a.evidence.display()))?;
    let mut evidence = kura_attestation::Evidence {
        certs: a.certs.iter().map(read).collect::<Result<_>>()?,
        collateral: a.collateral.as_ref().map(read).transpose()?,
        ..kura_attestation::Evidence::new(platform, data)
    };
    // What was not given comes from the cache (or, with --fetch, from AMD or Intel).
    let result = match files::cert_store(a.fetch)?.complete(&mut evidence).await {
        Ok(()) => {
            let options = kura_attestation::VerifyOptions {
                at,
                certs: evidence.certs.clone(),
                collateral: evidence.collateral.clone(),
            };
            kura_attestation::verifier_for(platform, &options).and_then(|v| v.verify(&evidence))
        }
        Err(e) => Err(e),
    };
    let (verdict, claims, reason) = match result {
        Ok(c) => {
            let reason = c
                .debug
                .then(|| "debug enclave: refused unless a policy allows it".to_string());
            (if c.debug { "invalid" } else { "valid" }, Some(c), reason)
        }
        Err(e) => ("invalid", None, Some(e.to_string())),
    };
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "verdict": verdict,
                "platform": platform.as_str(),
                "measurement": claims.as_ref().map(|c| hex::encode(&c.measurement)),
                "report_data": claims.as_ref().map(|c| hex::encode(&c.report_data)),
                "debug": claims.as_ref().map(|c| c.debug),
                "svns": claims.as_ref().map(|c| &c.svns),
                "registers": claims.as_ref().map(|c| &c.registers),
                "tcb_status": claims.as_ref().and_then(|c| c.tcb_status.clone()),
                "advisories": claims.as_ref().map(|c| &c.advisories),
                "signer": claims.as_ref().map(|c| c.signer.clone()),
                "reason": reason,
            })
        );
    } else {
        println!("verdict: {verdict}");
        if let Some(c) = &claims {
            println!(
                "platform: {}\nmeasurement: {}\nreport_data: {}\ndebug: {}\nsigner: {}",
                platform,
                hex::encode(&c.measurement),
                hex::encode(&c.report_data),
                c.debug,
                c.signer
            );
        }
        if let Some(r) = &reason {
            eprintln!("reason: {r}");
        }
    }
    Ok(if verdict == "valid" {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
