use kura_contract::Platform;

/// Why evidence was refused. Each variant names the check that failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttestationError {
    #[error("evidence is malformed: {0}")]
    Malformed(String),
    #[error("evidence signature does not verify: {0}")]
    Signature(String),
    #[error("certificate chain refused: {0}")]
    Certificate(String),
    #[error("certificates or collateral needed for verification are not at hand: {0}")]
    Unavailable(String),
    #[error("certificate or collateral not valid at the verification time: {0}")]
    Expired(String),
    #[error("evidence and certificate disagree: {0}")]
    Mismatch(String),
    #[error("platform {0} is not listed in the contract's enclave.platforms")]
    PlatformNotAccepted(Platform),
    #[error("this build of kura cannot verify {0} evidence yet")]
    Unsupported(Platform),
    #[error("the contract pins no measurement for {0}: add an [[enclave.accept]] entry")]
    NoMeasurementPinned(Platform),
    #[error("measurement {0} is not among the contract's accepted measurements")]
    MeasurementNotAccepted(String),
    #[error("the enclave runs in debug mode, which the contract does not allow")]
    Debug,
    #[error("the platform's TCB is below the contract's minimum: {0}")]
    TcbTooLow(String),
    #[error(
        "report data does not bind this contract and these enclave keys (wrong contract, or keys substituted)"
    )]
    Binding,
}
