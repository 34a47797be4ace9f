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

/// Where the hardware is reached: configfs-tsm for SEV-SNP and TDX (with `/dev/sev-guest` as
/// the fallback for SEV-SNP on kernels without it), `/dev/nsm` for Nitro. Behind this struct so
/// that the choice between them is tested with emulated devices.
pub(crate) struct Devices<'a> {
    pub tsm: &'a dyn crate::tsm::TsmFs,
    pub tsm_root: &'a std::path::Path,
    pub sev_guest: &'a dyn Fn() -> std::io::Result<Box<dyn SevGuest>>,
    pub nsm: &'a dyn Fn() -> std::io::Result<Box<dyn Nsm>>,
}

/// The SEV-SNP guest device: an extended report (report and certificate table) for 64 bytes of
/// report data.
pub(crate) trait SevGuest {
    fn extended_report(&mut self, data: [u8; 64]) -> Result<(Vec<u8>, Vec<Vec<u8>>), String>;
}

/// The Nitro Secure Module: an attestation document carrying `user_data`.
pub(crate) trait Nsm {
    fn attestation(&self, user_data: &[u8]) -> Result<Vec<u8>, String>;
}

/// `/dev/sev-guest` through the `sev` crate.
struct SevGuestDevice(sev::firmware::guest::Firmware);

impl SevGuest for SevGuestDevice {
    fn extended_report(&mut self, data: [u8; 64]) -> Result<(Vec<u8>, Vec<Vec<u8>>), String> {
        use sev::firmware::host::CertType;
        let (report, table) = self
            .0
            .get_ext_report(None, Some(data), None)
            .map_err(|e| e.to_string())?;
        let certs = table
            .unwrap_or_default()
            .into_iter()
            .filter(|e| {
                matches!(
                    e.cert_type,
                    CertType::VCEK | CertType::VLEK | CertType::ASK | CertType::ARK
                )
            })
            .map(|e| e.data)
            .collect();
        Ok((report, certs))
    }
}

/// `/dev/nsm` through AWS's NSM API crate.
struct NsmDevice(i32);

impl Nsm for NsmDevice {
    fn attestation(&self, user_data: &[u8]) -> Result<Vec<u8>, String> {
        use aws_nitro_enclaves_nsm_api::api::{Request, Response};
        let request = Request::Attestation {
            user_data: Some(serde_bytes::ByteBuf::from(user_data.to_vec())),
            nonce: None,
            public_key: None,
        };
        match aws_nitro_enclaves_nsm_api::driver::nsm_process_request(self.0, request) {
            Response::Attestation { document } => Ok(document),
            Response::Error(code) => Err(format!("the NSM refused: {code:?}")),
            other => Err(format!("unexpected NSM answer {other:?}")),
        }
    }
}

impl Drop for NsmDevice {
    fn drop(&mut self) {
        aws_nitro_enclaves_nsm_api::driver::nsm_exit(self.0);
    }
}

pub(crate) const SEV_GUEST: &str = "/dev/sev-guest";
pub(crate) const NSM: &str = "/dev/nsm";

fn open_sev_guest() -> std::io::Result<Box<dyn SevGuest>> {
    Ok(Box::new(SevGuestDevice(
        sev::firmware::guest::Firmware::open()?,
    )))
}

fn open_nsm() -> std::io::Result<Box<dyn Nsm>> {
    // The crate's opener reports failure as -1 only; look first so that the error says why.
    std::fs::metadata(NSM)?;
    match aws_nitro_enclaves_nsm_api::driver::nsm_init() {
        fd if fd >= 0 => Ok(Box::new(NsmDevice(fd))),
        _ => Err(std::io::Error::other(format!("cannot open {NSM}"))),
    }
}

pub(crate) fn collect(
    platform: Platform,
    report_data: &[u8; 64],
) -> Result<Evidence, ServiceError> {
    collect_from(
        &Devices {
            tsm: &crate::tsm::ConfigFs,
            tsm_root: std::path::Path::new(crate::tsm::DEFAULT_ROOT),
            sev_guest: &open_sev_guest,
            nsm: &open_nsm,
        },
        platform,
        report_data,
    )
}

pub(crate) fn collect_from(
    devices: &Devices<'_>,
    platform: Platform,
    report_data: &[u8; 64],
) -> Result<Evidence, ServiceError> {
    match platform {
        Platform::Simulated => {
            tracing::warn!("{}", kura_attestation::simulated::WARNING);
            Ok(SimulatedHardware::new().issue(&measure_self()?, report_data, false))
        }
        Platform::SevSnp if !devices.tsm.exists(devices.tsm_root) => {
            let mut device = (devices.sev_guest)().map_err(|e| {
                ServiceError::Start(format!(
                    "no SEV-SNP guest interface: configfs-tsm is not at {} and {SEV_GUEST} \
                     cannot be opened ({e}); is this an SEV-SNP guest?",
                    devices.tsm_root.display()
                ))
            })?;
            tracing::info!("configfs-tsm absent: asking {SEV_GUEST} for the report");
            let (report, certs) = device
                .extended_report(*report_data)
                .map_err(|e| ServiceError::Start(format!("{SEV_GUEST}: {e}")))?;
            Ok(Evidence {
                certs,
                ..Evidence::new(Platform::SevSnp, report)
            })
        }
        Platform::SevSnp | Platform::Tdx => {
            let report = crate::tsm::request(devices.tsm, devices.tsm_root, report_data)?;
            from_tsm(platform, report)
        }
        Platform::Nitro => {
            let nsm = (devices.nsm)().map_err(|e| {
                ServiceError::Start(format!(
                    "cannot open the Nitro Secure Module at {NSM} ({e}); is this a Nitro enclave?"
                ))
            })?;
            let document = nsm
                .attestation(report_data)
                .map_err(|e| ServiceError::Start(format!("{NSM}: {e}")))?;
            Ok(Evidence::new(Platform::Nitro, document))
        }
        other => Err(ServiceError::Start(format!(
            "collecting {other} evidence is not supported by this build; \
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
        certs,
        ..Evidence::new(platform, report.outblob)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tsm::TsmReport;
    use crate::tsm::tests::FakeKernel;
    use std::path::Path;
    use std::sync::{Arc, Mutex};

    /// A guest device that answers with a fixed report and table, and records what it was asked.
    struct FakeSevGuest(Arc<Mutex<Vec<[u8; 64]>>>);

    impl SevGuest for FakeSevGuest {
        fn extended_report(&mut self, data: [u8; 64]) -> Result<(Vec<u8>, Vec<Vec<u8>>), String> {
            self.0.lock().unwrap().push(data);
            Ok((data.repeat(2), vec![b"vcek".to_vec()]))
        }
    }

    struct FakeNsm(Result<Vec<u8>, String>, Arc<Mutex<Vec<Vec<u8>>>>);

    impl Nsm for FakeNsm {
        fn attestation(&self, user_data: &[u8]) -> Result<Vec<u8>, String> {
            self.1.lock().unwrap().push(user_data.to_vec());
            self.0.clone()
        }
    }

    fn no_device<T: ?Sized>() -> std::io::Result<Box<T>> {
        Err(std::io::ErrorKind::NotFound.into())
    }

    #[test]
    fn sev_snp_falls_back_to_the_guest_device_without_configfs_tsm() {
        let asked = Arc::new(Mutex::new(vec![]));
        let opener = {
            let asked = asked.clone();
            move || -> std::io::Result<Box<dyn SevGuest>> {
                Ok(Box::new(FakeSevGuest(asked.clone())))
            }
        };
        let old_kernel = FakeKernel {
            absent: true,
            ..Default::default()
        };
        let devices = Devices {
            tsm: &old_kernel,
            tsm_root: Path::new("/tsm"),
            sev_guest: &opener,
            nsm: &no_device::<dyn Nsm>,
        };
        let ev = collect_from(&devices, Platform::SevSnp, &[7; 64]).unwrap();
        assert_eq!(*asked.lock().unwrap(), vec![[7u8; 64]]);
        assert_eq!(ev.data, [7u8; 128]);
        assert_eq!(ev.certs, vec![b"vcek".to_vec()]);

        // With configfs-tsm present, it is used and the device is not touched.
        let kernel = FakeKernel {
            provider: "sev_guest",
            ..Default::default()
        };
        let devices = Devices {
            tsm: &kernel,
            ..devices
        };
        // (The emulated kernel's auxblob is not a certificate table, which shows the path taken.)
        let err = collect_from(&devices, Platform::SevSnp, &[8; 64])
            .unwrap_err()
            .to_string();
        assert!(err.contains("certificate table"), "{err}");
        assert_eq!(asked.lock().unwrap().len(), 1);

        // Neither interface: the error names both.
        let devices = Devices {
            tsm: &old_kernel,
            sev_guest: &no_device::<dyn SevGuest>,
            ..devices
        };
        let err = collect_from(&devices, Platform::SevSnp, &[8; 64])
            .unwrap_err()
            .to_string();
        assert!(err.contains("/tsm") && err.contains(SEV_GUEST), "{err}");
    }

    #[test]
    fn nitro_evidence_comes_from_the_nsm_with_our_report_data() {
        let asked = Arc::new(Mutex::new(vec![]));
        let doc = b"COSE_Sign1 document".to_vec();
        let opener = {
            let (asked, doc) = (asked.clone(), doc.clone());
            move || -> std::io::Result<Box<dyn Nsm>> {
                Ok(Box::new(FakeNsm(Ok(doc.clone()), asked.clone())))
            }
        };
        let kernel = FakeKernel::default();
        let devices = Devices {
            tsm: &kernel,
            tsm_root: Path::new("/tsm"),
            sev_guest: &no_device::<dyn SevGuest>,
            nsm: &opener,
        };
        let ev = collect_from(&devices, Platform::Nitro, &[3; 64]).unwrap();
        assert_eq!((ev.platform, ev.data), (Platform::Nitro, doc));
        assert_eq!(*asked.lock().unwrap(), vec![vec![3u8; 64]]);

        let refusing = || -> std::io::Result<Box<dyn Nsm>> {
            Ok(Box::new(FakeNsm(
                Err("the NSM refused: InvalidArgument".into()),
                Arc::default(),
            )))
        };
        let err = collect_from(
            &Devices {
                nsm: &refusing,
                ..devices
            },
            Platform::Nitro,
            &[3; 64],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("InvalidArgument"), "{err}");
        let err = collect_from(
            &Devices {
                nsm: &no_device::<dyn Nsm>,
                ..devices
            },
            Platform::Nitro,
            &[3; 64],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains(NSM) && err.contains("Nitro enclave"), "{err}");
    }

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

/// Run only inside a TEE (see build.rs): the real devices bind our report data.
#[cfg(all(test, any(sev_guest_device, nsm_device)))]
mod hardware {
    use super::*;

    #[cfg(sev_guest_device)]
    #[test]
    fn the_sev_guest_device_binds_our_report_data() {
        let data = [0x6b; 64];
        let (report, certs) = open_sev_guest().unwrap().extended_report(data).unwrap();
        // REPORT_DATA sits at 0x50 in every report version.
        assert_eq!(&report[0x50..0x90], data);
        if !certs.is_empty() {
            let claims = Evidence {
                certs,
                ..Evidence::new(Platform::SevSnp, report)
            }
            .claims()
            .unwrap();
            assert_eq!(claims.report_data, data);
        }
    }

    #[cfg(nsm_device)]
    #[test]
    fn the_nsm_binds_our_report_data() {
        let data = [0x6c; 64];
        let document = open_nsm().unwrap().attestation(&data).unwrap();
        let claims = Evidence::new(Platform::Nitro, document).claims().unwrap();
        assert_eq!(claims.report_data, data);
    }
}
