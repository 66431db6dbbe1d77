//! The CDI spec devns publishes (Container Device Interface, read by
//! podman, containerd, CRI-O and Docker): one CDI device per device devns
//! can give a container, plus `loop` (loop devices through the view's
//! loop-control), each of whose `containerEdits` is devns's OCI hook with
//! the device as its argument instead of a `deviceNodes` entry (a runtime
//! in a user namespace cannot bind-mount CDI's nodes; the hook brings the
//! container under devns with the device owned by its namespace).

use serde_json::{Value, json};

/// The spec's kind (`vendor/class`): `--device devns.io/device=loop3`.
pub const KIND: &str = "devns.io/device";
/// The CDI version written: the newest podman 4.3's CDI reads.
pub const CDI_VERSION: &str = "0.5.0";
/// The CDI device that gives a container devns and its loop-control alone.
pub const LOOP: &str = "loop";
/// Where CDI readers look for generated specs, and devns writes its own.
pub const SPEC_PATH: &str = "/var/run/cdi/devns.json";

/// How the spec's hooks run devns: its path, and the global options
/// before the subcommand (`--socket` when not the default).
pub struct Hook<'a> {
    pub path: &'a str,
    pub global: &'a [String],
}

/// A device's CDI name: its `/dev` name with `/` as `-` (CDI names are
/// `[A-Za-z0-9][A-Za-z0-9_.:-]*`); `None` when nothing fits.
pub fn device_name(dev: &str) -> Option<String> {
    let name: String = dev.chars().map(|c| if c == '/' { '-' } else { c }).collect();
    let ok = name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c));
    ok.then_some(name)
}

/// Whether `kind` is a CDI kind: `vendor/class`, the vendor a domain-like
/// name (`[A-Za-z0-9][A-Za-z0-9_.-]*`, ending alphanumeric), the class
/// `[A-Za-z0-9][A-Za-z0-9_.-]*`.
pub fn is_kind(kind: &str) -> bool {
    let Some((vendor, class)) = kind.split_once('/') else { return false };
    let part = |p: &str| {
        p.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && p.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    };
    part(vendor) && vendor.chars().last().is_some_and(|c| c.is_ascii_alphanumeric()) && part(class) && kind.len() <= 253
}

/// The spec of `kind` for `devices` (their `/dev` names; those with no CDI
/// name, and a second one with the same, are left out).
pub fn spec(kind: &str, devices: &[&str], hook: &Hook<'_>) -> Value {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = vec![device(LOOP, None, hook)];
    seen.insert(LOOP.to_owned());
    for d in devices {
        if let Some(name) = device_name(d)
            && seen.insert(name.clone())
        {
            out.push(device(&name, Some(d), hook));
        }
    }
    json!({ "cdiVersion": CDI_VERSION, "kind": kind, "devices": out })
}

fn device(name: &str, dev: Option<&str>, hook: &Hook<'_>) -> Value {
    let args = |stage: &str, extra: &[&str]| {
        let mut a = vec!["devns".to_owned()];
        a.extend(hook.global.iter().cloned());
        a.extend(["hook".to_owned(), stage.to_owned()]);
        a.extend(extra.iter().map(|s| (*s).to_owned()));
        a
    };
    let create = match dev {
        Some(d) => args("createRuntime", &["--device", d]),
        None => args("createRuntime", &["--enable"]),
    };
    json!({
        "name": name,
        "containerEdits": {
            "hooks": [
                { "hookName": "createRuntime", "path": hook.path, "args": create },
                { "hookName": "poststop", "path": hook.path, "args": args("poststop", &[]) },
            ]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdi_names_are_dev_names_with_slashes_as_dashes() {
        assert_eq!(device_name("loop3").as_deref(), Some("loop3"));
        assert_eq!(device_name("net/tun").as_deref(), Some("net-tun"));
        assert_eq!(device_name("cpu/0/cpuid").as_deref(), Some("cpu-0-cpuid"));
        for bad in ["", "/x", "a b", "ä", "-x"] {
            assert_eq!(device_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn kinds_are_vendor_slash_class() {
        assert!(is_kind(KIND));
        assert!(is_kind("test-7.devns.io/device"));
        for bad in ["", "devns.io", "devns.io/", "/device", "devns.io./device", "a/b/c", "de vns.io/device"] {
            assert!(!is_kind(bad), "{bad}");
        }
    }

    #[test]
    fn each_device_is_devns_s_hook_with_it_as_the_argument() {
        let global = vec!["--socket".to_owned(), "/s".to_owned()];
        let s =
            spec(KIND, &["loop3", "net/tun", "net-tun", "bad name"], &Hook { path: "/usr/bin/devns", global: &global });
        assert_eq!(s["cdiVersion"], CDI_VERSION);
        assert_eq!(s["kind"], KIND);
        let names: Vec<&str> = s["devices"].as_array().unwrap().iter().map(|d| d["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["loop", "loop3", "net-tun"]);
        let hooks = &s["devices"][1]["containerEdits"]["hooks"];
        assert_eq!(
            hooks[0],
            json!({ "hookName": "createRuntime", "path": "/usr/bin/devns",
                    "args": ["devns", "--socket", "/s", "hook", "createRuntime", "--device", "loop3"] })
        );
        assert_eq!(hooks[1]["args"], json!(["devns", "--socket", "/s", "hook", "poststop"]));
        // No device nodes: the view gives them.
        assert!(s["devices"][1]["containerEdits"].get("deviceNodes").is_none());
        assert_eq!(s["devices"][0]["containerEdits"]["hooks"][0]["args"][5], "--enable");
    }
}
