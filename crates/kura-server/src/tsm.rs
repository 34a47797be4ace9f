//! Evidence from the hardware through Linux configfs-tsm (`/sys/kernel/config/tsm/report`),
//! the one interface for SEV-SNP and TDX guests: make a request directory, write the 64 bytes of
//! report data to `inblob`, read the report from `outblob`, the provider (`sev_guest`,
//! `tdx_guest`) from `provider`, and on SEV-SNP the certificate table from `auxblob`.
//! `generation` counts writes to the request; if it moved by more than our one write, another
//! process raced us and the report may not carry our data, so it is refused.
//!
//! The file operations sit behind [`TsmFs`] so that the protocol is tested against an emulated
//! kernel; the real implementation is plain `std::fs` on the configfs mount.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::ServiceError;

/// Where the kernel mounts the report interface.
pub const DEFAULT_ROOT: &str = "/sys/kernel/config/tsm/report";

/// The file operations the protocol needs.
pub trait TsmFs {
    /// Whether the report interface is mounted at `root`.
    fn exists(&self, root: &Path) -> bool;
    fn create_dir(&self, path: &Path) -> std::io::Result<()>;
    fn write(&self, path: &Path, data: &[u8]) -> std::io::Result<()>;
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>>;
    fn remove_dir(&self, path: &Path) -> std::io::Result<()>;
}

/// The real configfs.
#[derive(Debug)]
pub struct ConfigFs;

impl TsmFs for ConfigFs {
    fn exists(&self, root: &Path) -> bool {
        root.is_dir()
    }
    fn create_dir(&self, path: &Path) -> std::io::Result<()> {
        std::fs::create_dir(path)
    }
    fn write(&self, path: &Path, data: &[u8]) -> std::io::Result<()> {
        std::fs::write(path, data)
    }
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        std::fs::read(path)
    }
    fn remove_dir(&self, path: &Path) -> std::io::Result<()> {
        std::fs::remove_dir(path)
    }
}

/// What the hardware returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TsmReport {
    pub provider: String,
    pub outblob: Vec<u8>,
    pub auxblob: Vec<u8>,
}

static REQUESTS: AtomicU64 = AtomicU64::new(0);

fn generation(fs: &dyn TsmFs, entry: &Path) -> Result<u64, ServiceError> {
    let text = fs
        .read(&entry.join("generation"))
        .map_err(|e| ServiceError::Start(format!("configfs-tsm generation: {e}")))?;
    String::from_utf8_lossy(&text)
        .trim()
        .parse()
        .map_err(|_| ServiceError::Start("configfs-tsm generation is not a number".into()))
}

/// Requests a report binding `report_data` from the provider under `root`.
pub fn request(
    fs: &dyn TsmFs,
    root: &Path,
    report_data: &[u8; 64],
) -> Result<TsmReport, ServiceError> {
    let entry: PathBuf = root.join(format!(
        "kura-{}-{}",
        std::process::id(),
        REQUESTS.fetch_add(1, Ordering::Relaxed)
    ));
    fs.create_dir(&entry).map_err(|e| {
        ServiceError::Start(format!(
            "configfs-tsm is not available at {} ({e}); is this a TEE guest with a recent kernel?",
            root.display()
        ))
    })?;
    let result = (|| {
        let before = generation(fs, &entry)?;
        fs.write(&entry.join("inblob"), report_data)
            .map_err(|e| ServiceError::Start(format!("configfs-tsm inblob: {e}")))?;
        let outblob = fs
            .read(&entry.join("outblob"))
            .map_err(|e| ServiceError::Start(format!("configfs-tsm outblob: {e}")))?;
        let provider = fs
            .read(&entry.join("provider"))
            .map_err(|e| ServiceError::Start(format!("configfs-tsm provider: {e}")))?;
        let auxblob = fs.read(&entry.join("auxblob")).unwrap_or_default();
        if generation(fs, &entry)? != before + 1 {
            return Err(ServiceError::Start(
                "configfs-tsm request was changed by another process while in use; try again"
                    .into(),
            ));
        }
        Ok(TsmReport {
            provider: String::from_utf8_lossy(&provider).trim().to_string(),
            outblob,
            auxblob,
        })
    })();
    let _ = fs.remove_dir(&entry);
    result
}

/// GUIDs of the SEV-SNP certificate table (GHCB specification), in RFC 4122 byte order.
const VCEK_GUID: &str = "63da758d-e664-4564-adc5-f4b93be8accd";
const VLEK_GUID: &str = "a8074bc2-a25a-483e-aae6-39c045a0b8a1";
const ASK_GUID: &str = "4ab7b379-bbac-4fe4-a02f-05aef327c782";
const ARK_GUID: &str = "c0b406a4-a803-4952-9743-3fb6014cd0ae";

fn guid_text(g: &[u8]) -> String {
    let h = hex::encode(g);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// The VCEK/VLEK, ASK and ARK (DER) from an SEV-SNP certificate table. The table comes from the
/// host, so it is untrusted: bounds are checked, unknown entries skipped; the certificates are
/// then verified against the pinned roots like any others.
pub fn snp_certificates(table: &[u8]) -> Result<Vec<Vec<u8>>, ServiceError> {
    let bad = |why: &str| ServiceError::Start(format!("SEV-SNP certificate table: {why}"));
    let mut certs = Vec::new();
    for entry in table.chunks(24) {
        if entry.len() < 24 {
            return Err(bad("truncated"));
        }
        if entry[..16].iter().all(|b| *b == 0) {
            return Ok(certs);
        }
        let offset = u32::from_le_bytes(entry[16..20].try_into().expect("4 bytes")) as usize;
        let length = u32::from_le_bytes(entry[20..24].try_into().expect("4 bytes")) as usize;
        let data = table
            .get(
                offset
                    ..offset
                        .checked_add(length)
                        .ok_or_else(|| bad("bad length"))?,
            )
            .ok_or_else(|| bad("an entry points outside the table"))?;
        if [VCEK_GUID, VLEK_GUID, ASK_GUID, ARK_GUID].contains(&guid_text(&entry[..16]).as_str()) {
            certs.push(data.to_vec());
        }
    }
    Err(bad("no terminating entry"))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;

    /// An emulated kernel: `outblob` is produced from the last `inblob`, `generation` counts
    /// writes, and a "racer" may write in between.
    #[derive(Default)]
    pub(crate) struct FakeKernel {
        pub(crate) files: Mutex<HashMap<PathBuf, Vec<u8>>>,
        pub(crate) dirs: Mutex<Vec<PathBuf>>,
        pub(crate) race: bool,
        pub(crate) provider: &'static str,
        /// An older kernel, without configfs-tsm.
        pub(crate) absent: bool,
    }

    impl TsmFs for FakeKernel {
        fn exists(&self, _root: &Path) -> bool {
            !self.absent
        }
        fn create_dir(&self, path: &Path) -> std::io::Result<()> {
            if self.absent {
                return Err(std::io::ErrorKind::NotFound.into());
            }
            self.dirs.lock().unwrap().push(path.to_path_buf());
            self.files
                .lock()
                .unwrap()
                .insert(path.join("generation"), b"0\n".to_vec());
            Ok(())
        }
        fn write(&self, path: &Path, data: &[u8]) -> std::io::Result<()> {
            let dir = path.parent().unwrap();
            let mut files = self.files.lock().unwrap();
            let g: u64 = String::from_utf8_lossy(&files[&dir.join("generation")])
                .trim()
                .parse()
                .unwrap();
            let bump = if self.race { 2 } else { 1 };
            files.insert(
                dir.join("generation"),
                format!("{}\n", g + bump).into_bytes(),
            );
            files.insert(dir.join("outblob"), [b"REPORT:".as_slice(), data].concat());
            files.insert(
                dir.join("provider"),
                format!("{}\n", self.provider).into_bytes(),
            );
            files.insert(dir.join("auxblob"), b"AUX".to_vec());
            Ok(())
        }
        fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
            self.files
                .lock()
                .unwrap()
                .get(path)
                .cloned()
                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
        }
        fn remove_dir(&self, path: &Path) -> std::io::Result<()> {
            self.dirs.lock().unwrap().retain(|d| d != path);
            Ok(())
        }
    }

    #[test]
    fn a_request_returns_the_report_for_our_data_and_cleans_up() {
        let kernel = FakeKernel {
            provider: "sev_guest",
            ..Default::default()
        };
        let report = request(&kernel, Path::new("/tsm"), &[9u8; 64]).unwrap();
        assert_eq!(report.provider, "sev_guest");
        assert_eq!(report.outblob, [b"REPORT:".as_slice(), &[9u8; 64]].concat());
        assert_eq!(report.auxblob, b"AUX");
        assert!(
            kernel.dirs.lock().unwrap().is_empty(),
            "the request directory is removed"
        );
    }

    #[test]
    fn a_concurrent_writer_is_detected() {
        let kernel = FakeKernel {
            provider: "tdx_guest",
            race: true,
            ..Default::default()
        };
        let err = request(&kernel, Path::new("/tsm"), &[1u8; 64])
            .unwrap_err()
            .to_string();
        assert!(err.contains("changed by another process"), "{err}");
        assert!(kernel.dirs.lock().unwrap().is_empty());
    }

    #[test]
    fn a_machine_without_configfs_tsm_gets_a_clear_reason() {
        let dir = tempfile::tempdir().unwrap();
        let err = request(&ConfigFs, &dir.path().join("missing"), &[0u8; 64])
            .unwrap_err()
            .to_string();
        assert!(err.contains("configfs-tsm is not available"), "{err}");
    }

    #[test]
    fn certificate_tables_built_by_the_sev_crate_parse() {
        use sev::firmware::host::{CertTableEntry, CertType};
        let table = CertTableEntry::cert_table_to_vec_bytes(&[
            CertTableEntry::new(CertType::VCEK, b"vcek-der".to_vec()),
            CertTableEntry::new(CertType::CRL, b"crl".to_vec()),
            CertTableEntry::new(CertType::ASK, b"ask-der".to_vec()),
        ])
        .unwrap();
        assert_eq!(
            snp_certificates(&table).unwrap(),
            vec![b"vcek-der".to_vec(), b"ask-der".to_vec()]
        );
        // Hostile tables: truncated, pointing outside, unterminated.
        assert!(snp_certificates(&table[..30]).is_err());
        let mut outside = table.clone();
        outside[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(snp_certificates(&outside).is_err());
        assert!(snp_certificates(&table[..24]).is_err());
    }
}

/// Runs only on a TEE guest (see build.rs): the real device returns a report that carries our
/// report data and, on SEV-SNP, verifies against AMD's roots with the certificates it hands out.
#[cfg(all(test, tsm_device))]
mod hardware {
    use super::*;
    use kura_attestation::{VerifyOptions, verifier_for};
    use kura_contract::Platform;

    #[test]
    fn the_device_binds_our_report_data() {
        let data = [0x5a; 64];
        let report = request(&ConfigFs, Path::new(DEFAULT_ROOT), &data).unwrap();
        match report.provider.as_str() {
            "sev_guest" => {
                let ev = crate::evidence::from_tsm(Platform::SevSnp, report).unwrap();
                let options = VerifyOptions {
                    certs: ev.certs.clone(),
                    ..Default::default()
                };
                let claims = verifier_for(Platform::SevSnp, &options)
                    .unwrap()
                    .verify(&ev)
                    .unwrap();
                assert_eq!(claims.report_data, data);
            }
            "tdx_guest" => {
                assert!(
                    report.outblob.windows(64).any(|w| w == data),
                    "report data not in the quote"
                );
            }
            other => panic!("unknown configfs-tsm provider {other}"),
        }
    }
}
