//! The Debian package, for real on this host: built by `dist/debian/package`
//! (cargo-deb) from this build's binary, installed with `dpkg -i`, the
//! service started as its unit starts it, a container run, purged, and
//! nothing left. It uses the real `/usr` and `/run/devns` (the nextest
//! group `default-layout`: one at a time with the tests of the default
//! layout), and refuses to run where a devns is installed already.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// Every path the package or its scripts may make, and what a purge must
/// leave of them: what was there before.
const WATCHED: [&str; 12] = [
    "/usr/bin/devns",
    "/usr/bin/devns-runtime",
    "/etc/devns",
    "/run/devns",
    "/usr/lib/systemd/system/devns.service",
    "/usr/share/containers/oci/hooks.d/devns.json",
    "/usr/share/man/man1/devns.1.gz",
    "/usr/share/doc/devns",
    "/etc/systemd/system/multi-user.target.wants/devns.service",
    "/etc/systemd/system/sockets.target.wants/devns.socket",
    "/etc/systemd/system/sockets.target.wants/devns-seccomp.socket",
    "/var/lib/systemd/deb-systemd-helper-enabled/devns.service.dsh-also",
];

fn exists(p: &str) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

fn snapshot() -> BTreeMap<&'static str, bool> {
    WATCHED.iter().map(|p| (*p, exists(p))).collect()
}

fn ok(o: &Output, what: &str) -> String {
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{what}: {}\n{text}{}", o.status, String::from_utf8_lossy(&o.stderr));
    text
}

fn mounts_below_run() -> Vec<String> {
    let text = std::fs::read("/proc/self/mountinfo").unwrap();
    devns_core::mountinfo::mounts(&text)
        .map(|m| m.mount_point.to_string_lossy().into_owned())
        .filter(|p| p == "/run/devns" || p.starts_with("/run/devns/"))
        .collect()
}

fn installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "devns"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Purges the package however the test ends.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "devns"]).stdout(Stdio::null()).status();
    }
}

/// A command with none of the tests' environment: devns's defaults.
fn defaults(mut c: Command) -> Command {
    for k in ["DEVNS_STATE_DIR", "DEVNS_SOCKET", "DEVNS_CONFIG", "DEVNS_SECCOMP_SOCKET", "DEVNS_LOG"] {
        c.env_remove(k);
    }
    c.stdin(Stdio::null());
    c
}

/// The installed devns.
fn installed_devns(args: &[&str]) -> Command {
    let mut c = Command::new("/usr/bin/devns");
    c.args(args);
    defaults(c)
}

#[test]
#[cfg_attr(devns_skip_privileged, ignore = "needs root (DEVNS_TEST_SKIP_PRIVILEGED=1)")]
fn the_debian_package_installs_serves_a_container_and_purges_to_nothing() {
    if !privileged() {
        return;
    }
    assert!(!installed() && !exists("/usr/bin/devns"), "a devns is installed on this host already: not touching it");
    assert!(
        !exists("/run/devns"),
        "/run/devns is there already (a devns run or daemon of the host's): not touching it"
    );
    assert_eq!(mounts_below_run(), Vec::<String>::new(), "something is mounted below /run/devns: not touching it");
    let cargo_deb = Command::new("cargo").args(["deb", "--version"]).output();
    assert!(cargo_deb.is_ok_and(|o| o.status.success()), "cargo-deb is needed: cargo install --locked cargo-deb");
    let before = snapshot();

    // Built from this build's binary (no build of its own).
    let out = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let o = Command::new(root.join("dist/debian/package"))
        .args(["--profile", "dev", "--no-build", "-o"])
        .arg(out.path())
        .env("CARGO_TARGET_DIR", Path::new(env!("CARGO_BIN_EXE_devns")).parent().unwrap().parent().unwrap())
        .output()
        .unwrap();
    ok(&o, "dist/debian/package");
    let deb = std::fs::read_dir(out.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"));
    let deb = deb.expect("a .deb");
    let contents = ok(&Command::new("dpkg-deb").arg("-c").arg(&deb).output().unwrap(), "dpkg-deb -c");
    for want in [
        "./usr/bin/devns",
        "./usr/lib/systemd/system/devns.service",
        "./usr/lib/systemd/system/devns.socket",
        "./usr/lib/systemd/system/devns-seccomp.socket",
        "./usr/share/containers/oci/hooks.d/devns.json",
        "./etc/devns/config.toml",
        "./usr/share/man/man1/devns.1.gz",
        "./usr/share/man/man1/devns-run.1.gz",
        "./usr/share/man/man1/devns-daemon.1.gz",
        "./usr/share/bash-completion/completions/devns",
        "./usr/share/zsh/vendor-completions/_devns",
        "./usr/share/fish/vendor_completions.d/devns.fish",
    ] {
        assert!(contents.lines().any(|l| l.ends_with(&format!(" {want}"))), "{want} in the package:\n{contents}");
    }

    let purge = Purge;
    ok(&Command::new("dpkg").arg("-i").arg(&deb).output().unwrap(), "dpkg -i");
    assert!(installed());
    let conffiles =
        ok(&Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "devns"]).output().unwrap(), "dpkg-query");
    assert!(conffiles.contains("/etc/devns/config.toml"), "{conffiles}");
    assert_eq!(std::fs::read_link("/usr/bin/devns-runtime").unwrap(), Path::new("devns"));
    // Enabled as Debian enables services (without a running systemd too).
    for link in &WATCHED[8..11] {
        assert!(exists(link), "{link}");
    }
    let files = ok(&Command::new("dpkg").args(["-L", "devns"]).output().unwrap(), "dpkg -L");

    // The service as its unit starts it, told ready to a stand-in of
    // systemd's notify socket.
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let unit = std::fs::read_to_string("/usr/lib/systemd/system/devns.service").unwrap();
    let exec = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("ExecStart");
    let mut argv = exec.split_whitespace();
    let mut service = Command::new(argv.next().unwrap());
    service.args(argv);
    let mut service = defaults(service);
    service.env("NOTIFY_SOCKET", &notify_path).env("DEVNS_LOG", "info").stdout(Stdio::null());
    let env = Env::new();
    let mut daemon = Daemon::adopt(&env, service.spawn().unwrap());
    let mut buf = [0u8; 4096];
    loop {
        let n = notify.recv(&mut buf).expect("READY=1 from the service");
        if String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "READY=1") {
            break;
        }
    }
    let doctor = installed_devns(&["doctor"]).output().unwrap();
    let said = ok(&doctor, "devns doctor");
    for line in ["config", "daemon"] {
        assert!(said.lines().any(|l| l.starts_with("ok") && l.split_whitespace().nth(1) == Some(line)), "{said}");
    }
    assert!(!said.lines().any(|l| l.starts_with("missing")), "{said}");
    let run = installed_devns(&["run", "--name", "pkg", "--", "ls", "/dev"]).output().unwrap();
    let got = ok(&run, "devns run");
    for want in ["null", "fuse", "loop-control", "pts"] {
        assert!(got.lines().any(|l| l == want), "{want} in the container's /dev:\n{got}");
    }
    assert_eq!(daemon.stop(), Some(0));

    drop(purge);
    assert!(!installed());
    for f in files.lines().filter(|f| !f.is_empty()) {
        let p = Path::new(f);
        // Directories the package shares with others (/usr, /etc, ...) stay.
        if !p.is_dir() {
            assert!(!exists(f), "{f} left after the purge");
        }
    }
    assert_eq!(snapshot(), before, "the purge left the host as it was");
    assert_eq!(mounts_below_run(), Vec::<String>::new(), "the purge left mounts below /run/devns");
}

/// The package's `/etc/devns/config.toml` is devns's defaults: as shipped
/// (all commented out) and with every setting uncommented.
#[test]
fn the_shipped_config_is_the_defaults_commented_or_not() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dist/config.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let default = devns_core::config::Config::default();
    assert_eq!(devns_core::config::Config::parse(&text, "config.toml"), Ok(default.clone()));
    let settings: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# ")).filter(|l| l.contains(" = ")).collect();
    assert_eq!(settings.len(), 7, "{settings:?}");
    let uncommented = settings.join("\n");
    let mut want = default;
    want.seccomp_socket = Some("/run/devns/seccomp.sock".into());
    assert_eq!(devns_core::config::Config::parse(&uncommented, "config.toml"), Ok(want));
}
