#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    #[error("log storage failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("log database failed: {0}")]
    Db(String),
    #[error("log entry is malformed: {0}")]
    Malformed(String),
    #[error("log entry {seq}: {reason}")]
    Broken { seq: u64, reason: String },
    #[error("proof refused: {0}")]
    Proof(String),
}

macro_rules! db_error {
    ($($t:ty),*) => {$(
        impl From<$t> for LedgerError {
            fn from(e: $t) -> Self {
                LedgerError::Db(e.to_string())
            }
        }
    )*};
}

db_error!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
