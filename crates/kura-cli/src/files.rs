//! Reading and writing the files the CLI deals with: keys, contracts, signatures.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use kura_contract::{Contract, SignedContract};
use kura_crypto::SecretIdentity;

/// Writes `DIR/NAME.key` (mode 0600, never overwritten) and `DIR/NAME.pub`.
pub fn write_identity(dir: &Path, name: &str, id: &SecretIdentity) -> Result<(PathBuf, PathBuf)> {
    // A folder it makes is its owner's alone (one that exists keeps its mode).
    private_dir(dir)?;
    let key_path = dir.join(format!("{name}.key"));
    let pub_path = dir.join(format!("{name}.pub"));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(&key_path).with_context(|| {
        format!(
            "cannot create {} (an existing key is never overwritten)",
            key_path.display()
        )
    })?;
    let written = (|| -> std::io::Result<()> {
        f.write_all(id.to_text().as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&key_path);
        return Err(e).with_context(|| format!("cannot write {}", key_path.display()));
    }
    write_atomic(&pub_path, format!("{}\n", id.public().to_text()).as_bytes())?;
    Ok((key_path, pub_path))
}

/// Writes `bytes` to `path`, readable and writable by its owner only (mode 0600 from the
/// moment it exists, before a byte is written): a party's data, keys or results.
#[cfg_attr(not(feature = "demo"), allow(dead_code))]
pub fn write_private(path: impl AsRef<Path>, bytes: impl AsRef<[u8]>) -> Result<()> {
    let (path, bytes) = (path.as_ref(), bytes.as_ref());
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    #[cfg(unix)]
    {
        // A file that existed keeps its mode through `open`: make it private too.
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot make {} private", path.display()))?;
    }
    f.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Creates the directory `path` (and its parents), the last open to its owner only (0700).
pub fn private_dir(path: &Path) -> Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(path)
        .with_context(|| format!("cannot create {}", path.display()))
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so
/// that a failure never leaves a half-written file behind.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

pub fn read_identity(path: &Path) -> Result<SecretIdentity> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .with_context(|| format!("cannot read key {}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            bail!(
                "key {} is readable by other users (mode {:o}); run chmod 600 on it",
                path.display(),
                mode & 0o777
            );
        }
    }
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read key {}", path.display()))?,
    );
    SecretIdentity::parse(&text)
        .with_context(|| format!("{} is not a kura secret key", path.display()))
}

pub use kura_contract::files::{check_signatures, signature_path};

pub fn read_contract(path: &Path) -> Result<Contract> {
    kura_contract::files::read(path).map_err(|e| contract_error(path, "is invalid", e))
}

/// Reads a contract and refuses it unless every party signed these exact bytes.
pub fn read_signed_contract(path: &Path) -> Result<SignedContract> {
    kura_contract::files::read_signed(path).map_err(|e| contract_error(path, "cannot be used", e))
}

fn contract_error(path: &Path, what: &str, e: kura_contract::ContractError) -> anyhow::Error {
    match e {
        // Already names the file.
        kura_contract::ContractError::Read { .. } => e.into(),
        e => anyhow::Error::new(e).context(format!("contract {} {what}", path.display())),
    }
}

/// Where kura keeps per-user state: `$KURA_HOME`, or `~/.kura`.
pub fn kura_home() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("KURA_HOME") {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::home_dir().context("neither KURA_HOME nor a home directory is set")?;
    Ok(home.join(".kura"))
}

/// Where fetched VCEKs and DCAP collateral are kept.
pub fn cert_cache() -> Result<PathBuf> {
    Ok(kura_home()?.join("cache"))
}

/// The certificate store for evidence verification: the cache, and the vendors' services when
/// `fetch` is set (`KURA_KDS_URL`, `KURA_PCS_URL` and `KURA_INTEL_ROOT_CRL_URL` point it at a
/// proxy or a PCCS).
pub fn cert_store(fetch: bool) -> Result<kura_client::certs::Certs> {
    let dir = cert_cache()?;
    if !fetch {
        return Ok(kura_client::certs::Certs::offline(dir));
    }
    let mut endpoints = kura_attestation::fetch::Endpoints::default();
    for (var, field) in [
        ("KURA_KDS_URL", &mut endpoints.kds),
        ("KURA_PCS_URL", &mut endpoints.pcs),
        ("KURA_INTEL_ROOT_CRL_URL", &mut endpoints.intel_root_crl),
    ] {
        if let Ok(url) = std::env::var(var) {
            *field = url;
        }
    }
    kura_client::certs::Certs::online(dir, endpoints).map_err(anyhow::Error::msg)
}

fn head_path(contract_id: &str, party: &str) -> Result<PathBuf> {
    Ok(kura_home()?
        .join("heads")
        .join(format!("{contract_id}.{party}.json")))
}

/// The last tree head this party verified for this contract, if any.
pub fn load_head(contract_id: &str, party: &str) -> Result<Option<kura_ledger::SignedTreeHead>> {
    let path = head_path(contract_id, party)?;
    match std::fs::read(&path) {
        Ok(bytes) => {
            Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                format!("{} is corrupt", path.display())
            })?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

pub fn save_head(contract_id: &str, party: &str, head: &kura_ledger::SignedTreeHead) -> Result<()> {
    let path = head_path(contract_id, party)?;
    let dir = path.parent().expect("has a parent");
    private_dir(dir)?;
    write_atomic(&path, &serde_json::to_vec(head)?)
}

#[cfg(all(test, unix))]
mod private_tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// A party's files are its owner's alone from the start, whatever was there before or the
    /// umask: a directory 0700, a file 0600.
    #[test]
    fn private_files_and_directories_are_the_owners_alone() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a").join("data");
        private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        let file = dir.join("rows.csv");
        std::fs::write(&file, "open to all").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&file, b"patient,value\n").unwrap();
        assert_eq!(mode(&file), 0o600);
        assert_eq!(std::fs::read(&file).unwrap(), b"patient,value\n");
        write_private(dir.join("new.csv"), b"x").unwrap();
        assert_eq!(mode(&dir.join("new.csv")), 0o600);
    }
}
