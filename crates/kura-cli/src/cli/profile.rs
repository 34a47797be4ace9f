//! Profiles: the enclave, contract and key a party uses most, so that they are not typed on
//! every command. `$KURA_HOME/profiles.toml` (default `~/.kura/profiles.toml`):
//!
//! ```toml
//! [default]                       # used when no --profile is given
//! enclave = "https://enclave.example:8700"
//! contract = "contracts/c.toml"   # relative paths start at the profile file's directory
//! key = "keys/hospital-a.key"
//!
//! [staging]                       # kura --profile staging ... (or KURA_PROFILE=staging)
//! enclave = "http://127.0.0.1:8700"
//! ```
//!
//! A flag wins over its environment variable (`KURA_ENCLAVE`, `KURA_CONTRACT`, `KURA_KEY`),
//! which wins over the profile.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// One profile: each value optional (a flag or variable can always give it instead).
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub enclave: Option<String>,
    pub contract: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// The profile file's path.
pub fn path() -> Result<PathBuf> {
    Ok(crate::files::kura_home()?.join("profiles.toml"))
}

/// The profile `name` (or `default`) from `file`. A missing file or a missing `default` is an
/// empty profile; a profile asked for by name must exist.
pub fn load(file: &Path, name: Option<&str>) -> Result<Profile> {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && name.is_none() => {
            return Ok(Profile::default());
        }
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read profiles {}", file.display()));
        }
    };
    let mut all: BTreeMap<String, Profile> = toml::from_str(&text)
        .with_context(|| format!("profiles {} are invalid", file.display()))?;
    let profile = match name {
        Some(name) => match all.remove(name) {
            Some(p) => p,
            None => bail!(
                "there is no profile {name:?} in {} (it has: {})",
                file.display(),
                all.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        },
        None => all.remove("default").unwrap_or_default(),
    };
    // Paths in the file are relative to the file, wherever the command runs.
    let base = file.parent().unwrap_or(Path::new("."));
    Ok(Profile {
        contract: profile.contract.map(|p| base.join(p)),
        key: profile.key.map(|p| base.join(p)),
        ..profile
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_named_missing_and_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("profiles.toml");
        assert_eq!(load(&file, None).unwrap(), Profile::default());
        let err = load(&file, Some("prod")).unwrap_err();
        assert!(
            format!("{err:#}").contains("cannot read profiles"),
            "{err:#}"
        );

        std::fs::write(
            &file,
            "[default]\nenclave = \"http://a\"\ncontract = \"c.toml\"\n\n\
             [prod]\nkey = \"/keys/k.key\"\n",
        )
        .unwrap();
        let default = load(&file, None).unwrap();
        assert_eq!(default.enclave.as_deref(), Some("http://a"));
        assert_eq!(default.contract, Some(dir.path().join("c.toml")));
        assert_eq!(default.key, None);
        let prod = load(&file, Some("prod")).unwrap();
        assert_eq!(prod.key, Some(PathBuf::from("/keys/k.key")));
        let err = load(&file, Some("staging")).unwrap_err().to_string();
        assert!(
            err.contains("no profile \"staging\"") && err.contains("default, prod"),
            "{err}"
        );

        std::fs::write(&file, "[default]\nenclave_url = \"x\"\n").unwrap();
        let err = format!("{:#}", load(&file, None).unwrap_err());
        assert!(
            err.contains("enclave_url"),
            "an unknown key is named: {err}"
        );
    }
}
