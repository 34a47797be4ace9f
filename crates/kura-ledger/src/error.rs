#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    #[error("log storage failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("log entry is malformed: {0}")]
    Malformed(String),
    #[error("log entry {seq}: {reason}")]
    Broken { seq: u64, reason: String },
}
