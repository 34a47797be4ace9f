//! A contract on disk: the TOML file, and one `FILE.<party>.sig` beside it per party. The one
//! place that knows this layout, for the party's command line and the enclave alike.

use std::path::{Path, PathBuf};

use crate::{Contract, ContractError, SignatureCheck, SignedContract, verify_all};

/// Where `party`'s signature of the contract at `contract` is kept: `FILE.<party>.sig`.
pub fn signature_path(contract: &Path, party: &str) -> PathBuf {
    let mut name = contract.as_os_str().to_owned();
    name.push(format!(".{party}.sig"));
    PathBuf::from(name)
}

/// Reads and validates the contract at `path` (its signatures are not looked at).
pub fn read(path: &Path) -> Result<Contract, ContractError> {
    let bytes = std::fs::read(path).map_err(|e| ContractError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    Contract::parse(&bytes)
}

/// Each party's signature state for the contract read from `path`.
pub fn check_signatures(contract: &Contract, path: &Path) -> Vec<SignatureCheck> {
    verify_all(contract, |party| {
        std::fs::read_to_string(signature_path(path, party)).ok()
    })
}

/// Reads the contract at `path` and refuses it unless every party signed these exact bytes.
pub fn read_signed(path: &Path) -> Result<SignedContract, ContractError> {
    SignedContract::verify(read(path)?, |party| {
        std::fs::read_to_string(signature_path(path, party)).ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_file_is_named_and_an_unsigned_contract_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let err = read(&path).unwrap_err();
        assert!(matches!(err, ContractError::Read { .. }), "{err}");
        assert!(err.to_string().contains("c.toml"), "{err}");

        let key = |_| kura_crypto::SecretIdentity::generate().public().to_text();
        let text = crate::example::activity_and_diabetes(&key(0), &key(1));
        std::fs::write(&path, text).unwrap();
        assert!(read(&path).is_ok());
        let err = read_signed(&path).unwrap_err();
        assert!(matches!(err, ContractError::Unsigned(_)), "{err}");
        assert_eq!(
            signature_path(&path, "hospital-a"),
            dir.path().join("c.toml.hospital-a.sig")
        );
    }
}
