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
        other => Err(ServiceError::Start(format!(
            "collecting {other} evidence is not supported by this build yet; \
             use --platform simulated for development"
        ))),
    }
}
