//! The device plugin's protos as Rust (`device_plugin_protos`), and the
//! tests' opt-out: built by a user other than root with
//! `DEVNS_TEST_SKIP_PRIVILEGED=1`, the privileged integration tests are
//! compiled as ignored (`cfg(devns_skip_privileged)`), so that they report
//! as skipped, not as passed. Without the variable they are built as
//! always and, run as non-root, fail (`tests/common` `privileged()`).

fn main() {
    device_plugin_protos();
    println!("cargo::rustc-check-cfg=cfg(devns_skip_privileged)");
    println!("cargo::rerun-if-env-changed=DEVNS_TEST_SKIP_PRIVILEGED");
    let opted_out = std::env::var_os("DEVNS_TEST_SKIP_PRIVILEGED").is_some_and(|v| v == "1");
    if opted_out && !by_root() {
        println!("cargo::rustc-cfg=devns_skip_privileged");
    }
}

/// This build runs as root (effective uid 0, per `/proc/self/status`).
fn by_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|ids| ids.split_whitespace().nth(1));
    euid == Some("0")
}

/// The kubelet's device plugin API (`proto/deviceplugin.proto`) as Rust,
/// compiled by protox (pure Rust) so that no `protoc` is needed.
fn device_plugin_protos() {
    let proto = "proto/deviceplugin.proto";
    println!("cargo::rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"]).expect("the device plugin protos compile");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)
        .expect("the device plugin protos generate");
}
