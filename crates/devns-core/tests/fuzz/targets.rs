//! One entry function per parser of untrusted input: it takes any bytes,
//! runs the parser as devns runs it, and asserts its properties (a panic is
//! a crash). Shared by the bounded harness (`tests/fuzz.rs`, run in CI)
//! and the cargo-fuzz targets (`fuzz/`).

use devns_core::api::{self, MAX_REQUEST_BYTES, Request};
use devns_core::config::Config;
use devns_core::mountinfo;
use devns_core::seccomp::Creds;
use devns_core::spec::is_safe_dev_name;
use devns_core::uevent::{self, Action};
use devns_core::{Kind, nodes};
use devns_core::{hook, oci};

/// An error is a clear message: one non-empty line, of bounded length.
fn clear(e: &impl std::fmt::Display) {
    let m = e.to_string();
    assert!(!m.trim().is_empty(), "an empty error message");
    assert!(!m.contains('\n'), "a multi-line error message: {m:?}");
    // Errors may quote the input (bounded by the parsers' limits).
    assert!(m.len() <= 2 * MAX_REQUEST_BYTES + 512, "an error of {} bytes", m.len());
}

/// The API request line (the daemon's `parse_request`, after its size
/// limit). A request that parses writes back to itself.
pub fn api_request(data: &[u8]) {
    if data.len() > MAX_REQUEST_BYTES {
        return;
    }
    match api::parse_request(data) {
        Ok(r) => {
            let mut v = serde_json::to_value(&r).expect("a request serialises");
            v.as_object_mut().expect("an object").insert("v".into(), api::API_VERSION.into());
            let again = api::parse_request(&serde_json::to_vec(&v).unwrap());
            assert_eq!(again.as_ref(), Ok(&r), "round trip of {v}");
            check_names(&r);
        }
        Err(e) => clear(&e),
    }
}

/// The names a request carries are parsed again where they are used.
fn check_names(r: &Request) {
    let ns = match r {
        Request::View { ns } => ns,
        Request::Assign { to, .. } => to,
        _ => return,
    };
    if let Err(e) = api::NsRef::parse(ns) {
        clear(&e);
    }
}

/// The config file (`devns::config::load`: UTF-8 first, then parsed).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Config::parse(text, "/etc/devns/config.toml") {
        Ok(c) => {
            assert!(c.global.iter().all(|g| is_safe_dev_name(g) && g != "loop-control"), "{:?}", c.global);
        }
        Err(e) => {
            clear(&e);
            assert!(e.to_string().starts_with("bad config file /etc/devns/config.toml"), "{e}");
            if let Some((line, col)) = e.line {
                assert!(
                    line >= 1 && col >= 1 && line <= text.lines().count().max(1) + 1,
                    "{e} in {} lines",
                    text.lines().count()
                );
            }
        }
    }
}

/// A netlink uevent datagram (the daemon's `parse_netlink`), then the
/// device it describes (`device_from_sysfs`, as for an `add`). What parses
/// is safe to use, and formats back to an event that parses the same.
pub fn uevent(data: &[u8]) {
    let ev = match uevent::parse_netlink(data) {
        Ok(ev) => ev,
        Err(e) => return clear(&e),
    };
    assert!(ev.devpath.starts_with("/devices/"), "{:?}", ev.devpath);
    assert!(!ev.devpath.split('/').any(|c| c == ".." || c == "."), "{:?}", ev.devpath);
    if let Some(n) = &ev.devname {
        assert!(is_safe_dev_name(n), "{n:?}");
    }
    let kind = if ev.subsystem == "block" { Kind::Block } else { Kind::Char };
    match uevent::device_from_sysfs(kind, &ev.raw, &ev.subsystem, None) {
        Ok(Some(d)) => {
            assert!(is_safe_dev_name(&d.name) && d.mode <= 0o7777, "{d:?}");
            assert_eq!(d.diskseq, ev.diskseq);
        }
        Ok(None) => {}
        Err(e) => clear(&e),
    }
    let action = match ev.action {
        Action::Add => "add",
        Action::Remove => "remove",
        Action::Change => "change",
        Action::Other => return,
    };
    // The fields devns reads, formatted as the kernel does (what devns
    // sends a namespace), read back.
    let fields: String = ev
        .raw
        .split(['\0', '\n'])
        .filter(|f| ["MAJOR=", "MINOR=", "DEVNAME=", "DISKSEQ="].iter().any(|k| f.starts_with(k)))
        .map(|f| format!("{f}\n"))
        .collect();
    if ev.subsystem.contains(['\0', '\n']) || fields.contains('\r') || fields.len() + ev.devpath.len() > 1024 {
        return;
    }
    let again = uevent::parse_netlink(&uevent::format(action, &ev.devpath, &ev.subsystem, &fields, 1));
    let again = again.unwrap_or_else(|e| panic!("formatted back, {e}: {fields:?}"));
    assert_eq!((again.action, &again.devpath, &again.subsystem), (ev.action, &ev.devpath, &ev.subsystem));
    if ev.devname.is_some() {
        assert_eq!((again.dev, &again.devname, again.diskseq), (ev.dev, &ev.devname, ev.diskseq));
    }
}

/// `/proc/TID/status` as the agent reads it: credentials, then the ids and
/// dumpability its path walk reads.
pub fn status(data: &[u8]) {
    if let Some(c) = Creds::parse_status_bytes(data) {
        assert!((0..64).all(|cap| c.has_cap(cap) == (c.cap_eff >> cap & 1 == 1)));
        // What the text says, read another way, agrees: the fourth id of
        // the first such line (the filesystem id).
        let fs = |key: &[u8]| {
            let line = data.split(|b| *b == b'\n').find_map(|l| l.strip_prefix(key))?;
            let f = line.split(|b| *b == b' ' || *b == b'\t').filter(|f| !f.is_empty()).nth(3)?;
            std::str::from_utf8(f).ok()?.parse::<u32>().ok()
        };
        assert_eq!(fs(b"Uid:"), Some(c.fsuid));
        assert_eq!(fs(b"Gid:"), Some(c.fsgid));
    }
    for depth in 0..3 {
        let _ = nodes::ids_in_pid_ns(data, depth);
    }
    let _ = nodes::ids_match(data, 0, 0);
    let _ = nodes::dumpable(data, 0, 0);
}

/// `/proc/PID/mountinfo`. Every line parses or says which line and why; a
/// mount point written back with the kernel's escapes reads the same.
pub fn mountinfo(data: &[u8]) {
    for r in mountinfo::parse(data) {
        match r {
            Ok(m) => {
                use std::os::unix::ffi::OsStrExt;
                let p = m.mount_point.as_os_str().as_bytes();
                assert_eq!(mountinfo::unescape(&mountinfo::escape(p)), p);
                let line = [b"1 1 0:1 / ".as_slice(), &mountinfo::escape(p), b" rw - t s o"].concat();
                assert_eq!(mountinfo::parse_line(&line, 1).map(|x| x.mount_point), Ok(m.mount_point));
            }
            Err(e) => {
                clear(&e);
                assert!(e.to_string().starts_with("mountinfo line "), "{e}");
            }
        }
    }
}

/// The runtime-spec seccomp agent message (runc's, crun's). What parses
/// names its listener, a live pid and an absolute bundle, and writes back
/// (compact, as runc does, and pretty, as crun does) to the same. The
/// agent socket, which decides a message once it is whole
/// (`agentsock::whole`), decides one that parses when it has come, and
/// never on less of it than the same message.
pub fn oci_state(data: &[u8]) {
    match oci::parse_process_state(data) {
        Ok(l) => {
            assert!(devns_core::agentsock::whole(data));
            for cut in [1, data.len() / 3, data.len() / 2, data.len().saturating_sub(1)] {
                let part = &data[..cut.min(data.len())];
                if devns_core::agentsock::whole(part) {
                    assert_eq!(oci::parse_process_state(part).as_ref(), Ok(&l), "decided at {cut} bytes");
                }
            }
            assert_eq!(l.state.fds.get(l.seccomp_fd).map(String::as_str), Some(oci::SECCOMP_FD_NAME));
            assert!(l.state.pid > 0 && l.state.state.pid.is_none_or(|p| p > 0));
            assert!(l.state.state.bundle.starts_with('/') && !l.state.state.id.is_empty());
            for back in [serde_json::to_vec(&l.state).unwrap(), serde_json::to_vec_pretty(&l.state).unwrap()] {
                assert_eq!(oci::parse_process_state(&back).as_ref(), Ok(&l));
            }
        }
        Err(e) => {
            clear(&e);
            assert!(e.to_string().starts_with("container process state "), "{e}");
        }
    }
}

/// A base seccomp profile (`devns oci profile --base`, a container's
/// `linux.seccomp` in the runtime wrapper). What builds ends in devns's
/// rules, has the listener, sends nothing else to it, and builds again to
/// itself.
pub fn seccomp_profile(data: &[u8]) {
    use devns_core::ociprofile::{self, NOTIFY};
    let built = ociprofile::parse_base(data).and_then(|b| ociprofile::build(b, "/run/devns/seccomp.sock", None));
    match built {
        Ok(p) => {
            assert_eq!(p["listenerPath"], "/run/devns/seccomp.sock");
            let rules = p["syscalls"].as_array().expect("syscalls");
            let ours = ociprofile::notify_rules();
            assert!(rules.ends_with(&ours));
            assert!(rules[..rules.len() - ours.len()].iter().all(|r| r["action"] != NOTIFY));
            assert_eq!(ociprofile::build(Some(p.clone()), "/run/devns/seccomp.sock", None).as_ref(), Ok(&p));
        }
        Err(e) => clear(&e),
    }
}

/// A bundle's config.json in the runtime wrapper. Only one that asks is
/// edited, into JSON that still asks, with devns's poststop hook and listener.
pub fn oci_config(data: &[u8]) {
    use devns_core::ociruntime::{self, Edit};
    let e = Edit::DEFAULT;
    match ociruntime::edit(data, &e) {
        Ok(None) => {
            let v: Option<serde_json::Value> = serde_json::from_slice(data).ok();
            assert!(!v.is_some_and(|v| v.is_object() && ociruntime::asks_for_devns(&v)));
        }
        Ok(Some(out)) => {
            let v: serde_json::Value = serde_json::from_slice(&out).expect("the edit is JSON");
            assert!(ociruntime::asks_for_devns(&v));
            assert_eq!(v["linux"]["seccomp"]["listenerPath"], "/run/devns/seccomp.sock");
            assert!(v["hooks"]["poststop"].as_array().is_some_and(|h| !h.is_empty()));
            assert_eq!(
                ociruntime::edit(&out, &e).map(|o| o.map(|o| serde_json::from_slice::<serde_json::Value>(&o).unwrap())),
                Ok(Some(v))
            );
        }
        Err(e) => clear(&e),
    }
}

/// The state a runtime gives an OCI hook on stdin (`oci::parse_state`),
/// then what it asks of devns (`hook::wanted`), and the same bytes as a
/// bundle's `config.json` (`hook::root_path`).
pub fn oci_hook(data: &[u8]) {
    match oci::parse_state(data) {
        Ok(s) => {
            assert!(s.bundle.starts_with('/') && !s.id.is_empty() && s.pid.is_none_or(|p| p > 0));
            assert_eq!(oci::parse_state(&serde_json::to_vec(&s).unwrap()).as_ref(), Ok(&s));
            match hook::wanted(&s) {
                Ok(Some(w)) => {
                    assert!(hook::is_name(&w.name), "{:?}", w.name);
                    assert!(w.devices.iter().all(|d| !d.is_empty() && d.trim() == d), "{:?}", w.devices);
                }
                Ok(None) => assert_ne!(s.annotations.get(hook::ENABLE).map(String::as_str), Some("true")),
                Err(e) => clear(&e),
            }
        }
        Err(e) => clear(&e),
    }
    match hook::root_path(data, "/run/b") {
        Ok(p) => assert!(p.starts_with('/') && !p.contains('\0'), "{p:?}"),
        Err(e) => clear(&e),
    }
}
