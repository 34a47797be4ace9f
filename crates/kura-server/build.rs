//! Hardware tests switch themselves on where the device exists: on a TEE guest with
//! configfs-tsm, `cfg(tsm_device)` compiles the tests that ask the real hardware for a report;
//! `/dev/sev-guest` and `/dev/nsm` do the same for `cfg(sev_guest_device)` and
//! `cfg(nsm_device)`.

fn main() {
    // (Not rerun when a device appears: a missing path would make cargo rerun every build.)
    println!("cargo::rerun-if-changed=build.rs");
    for (cfg, path) in [
        ("tsm_device", "/sys/kernel/config/tsm/report"),
        ("sev_guest_device", "/dev/sev-guest"),
        ("nsm_device", "/dev/nsm"),
    ] {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        if std::path::Path::new(path).exists() {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}
