//! Hardware tests switch themselves on where the device exists: on a TEE guest with
//! configfs-tsm, `cfg(tsm_device)` compiles the tests that ask the real hardware for a report.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(tsm_device)");
    if std::path::Path::new("/sys/kernel/config/tsm/report").is_dir() {
        println!("cargo::rustc-cfg=tsm_device");
    }
}
