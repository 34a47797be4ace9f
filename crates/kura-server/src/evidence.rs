//! Obtaining evidence for this instance on the platform it runs on.

use kura_attestation::{Evidence, simulated::SimulatedHardware};
use kura_contract::Platform;
use sha2::Digest;

use crate::ServiceError;

/// SHA-384 of the running executable: what the simulated platform reports as measurement.
/// (On real hardware the measurement comes from the firmware, not from the program.)
/// Computed once per process: the executable does not change while it runs.
pub(crate) fn measure_self() -> Result<Vec<u8>, ServiceError> {
    static MEASUREMENT: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    if let Some(m) = MEASUREMENT.get() {
        return Ok(m.clone());
    }
    let exe = std::env::current_exe()
        .map_err(|e| ServiceError::Start(format!("cannot locate own executable: {e}")))?;
    let bytes = std::fs::read(&exe)
        .map_err(|e| ServiceError::Start(format!("cannot read own executable: {e}")))?;
    Ok(MEASUREMENT
        .get_or_init(|| sha2::Sha384::digest(&bytes).to_vec())
        .clone())
}

pub(crate) fn collect(
    platform: Platform,
    report_data: &[u8; 64],
) -> Result<Evidence, ServiceError> {
    match platform {
        Platform::Simulated => {
            tracing::warn!("{}", kura_attestation::simulated::WARNING);
            Ok(SimulatedHardware::new().issue(&measure_self()?, report_data, false))
        }
        Platform::SevSnp | Platform::Tdx => {
            let report = crate::tsm::request(
                &crate::tsm::ConfigFs,
                std::path::Path::new(crate::tsm::DEFAULT_ROOT),
                report_data,
            )?;
            from_tsm(platform, report)
        }
        other => Err(ServiceError::Start(format!(
            "collecting {other} evidence is not supported by this build yet; \
             use --platform simulated for development"
        ))),
    }
}

/// Turns a configfs-tsm answer into evidence, checking that the provider is the platform asked
/// for. On SEV-SNP the certificates from the host's table travel with the report; they are
/// untrusted and verified by every client against the pinned roots.
pub(crate) fn from_tsm(
    platform: Platform,
    report: crate::tsm::TsmReport,
) -> Result<Evidence, ServiceError> {
    let expected = match platform {
        Platform::SevSnp => "sev_guest",
        Platform::Tdx => "tdx_guest",
        other => {
            return Err(ServiceError::Start(format!(
                "configfs-tsm does not serve {other}"
            )));
        }
    };
    if report.provider != expected {
        return Err(ServiceError::Start(format!(
            "configfs-tsm provider is {:?}, but --platform {platform} needs {expected:?}",
            report.provider
        )));
    }
    let certs = if platform == Platform::SevSnp && !report.auxblob.is_empty() {
        crate::tsm::snp_certificates(&report.auxblob)?
    } else {
        vec![]
    };
    Ok(Evidence {
        platform,
        data: report.outblob,
        certs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tsm::TsmReport;

    #[test]
    fn the_provider_must_be_the_platform_asked_for() {
        let report = TsmReport {
            provider: "tdx_guest".into(),
            outblob: vec![1, 2, 3],
            auxblob: vec![],
        };
        let err = from_tsm(Platform::SevSnp, report.clone())
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs \"sev_guest\""), "{err}");
        let ev = from_tsm(Platform::Tdx, report).unwrap();
        assert_eq!(
            (ev.platform, ev.data, ev.certs.len()),
            (Platform::Tdx, vec![1, 2, 3], 0)
        );
    }

    #[test]
    fn snp_certificates_travel_with_the_report() {
        use sev::firmware::host::{CertTableEntry, CertType};
        let table = CertTableEntry::cert_table_to_vec_bytes(&[CertTableEntry::new(
            CertType::VCEK,
            b"vcek".to_vec(),
        )])
        .unwrap();
        let report = TsmReport {
            provider: "sev_guest".into(),
            outblob: vec![0; 1184],
            auxblob: table,
        };
        let ev = from_tsm(Platform::SevSnp, report).unwrap();
        assert_eq!(ev.certs, vec![b"vcek".to_vec()]);
    }
}
