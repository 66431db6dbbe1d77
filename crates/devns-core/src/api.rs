//! The daemon's socket API (version 1): newline-delimited JSON requests and
//! replies. Types and parsing only; see docs/API.md.

use serde::{Deserialize, Serialize};

pub const API_VERSION: u32 = 1;
/// Largest request line the daemon reads, its newline not counted; a
/// longer one is refused (however it ends) and the connection closed.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Every variant has braces, also those without fields: serde refuses
/// unknown fields of an internally tagged enum only in struct variants
/// (a unit variant takes any).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Devices with owner and global flag.
    Ls {},
    /// Namespaces under devns.
    NsLs {},
    /// The tree of a namespace's view.
    View {
        ns: String,
    },
    Assign {
        device: String,
        to: String,
    },
    Release {
        device: String,
    },
    Global {
        device: String,
        on: bool,
    },
    /// Bring the user namespace of `pid` under devns and mount its view.
    Attach {
        pid: i32,
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        at: Option<String>,
        /// A directory resolved inside the process's root (a container's
        /// rootfs before `pivot_root`), in which `at` is then resolved.
        #[serde(default)]
        root: Option<String>,
        /// Device specs assigned to the namespace.
        #[serde(default)]
        devices: Vec<String>,
        /// An OCI runtime's container (its hook): the runtime's mounts below
        /// the old `at` are carried onto the view, and the runtime's own
        /// device controller defers to devns's program.
        #[serde(default)]
        runtime: bool,
        /// The OCI container id, recorded so that only its `detach` lets
        /// the namespace go.
        #[serde(default)]
        container: Option<String>,
    },
    /// Let go of the namespace named `name` that an `attach` with this
    /// `container` brought in (an OCI poststop hook); any other is left
    /// alone.
    Detach {
        name: String,
        container: String,
    },
    /// From host root's `lxc.hook.pre-start` (`devns hook lxc`): the LXC
    /// container `name` will join from its autodev hook; the caller's
    /// parent, LXC's monitor, is the one whose container may
    /// ([`crate::expect`]).
    Expect {
        name: String,
        container: String,
        #[serde(default)]
        devices: Vec<String>,
    },
    /// From an LXC container's `lxc.hook.autodev` (its root, in its
    /// namespaces): bring this container in as its monitor's `expect` said,
    /// the view at `/dev` of `root` (`LXC_ROOTFS_MOUNT`).
    Join {
        name: String,
        root: String,
    },
    /// Stream events on this connection.
    Events {},
    /// Answer the trapped calls of a seccomp listener passed with the
    /// request (SCM_RIGHTS): from `devns run`, or a runtime's agent socket.
    Listen {},
    /// From `devns run`: provision the namespace of the process whose pidfd
    /// comes with the request (SCM_RIGHTS); the reply carries the view.
    Run {
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        devices: Vec<String>,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("request is not valid JSON: {0}")]
    Json(String),
    #[error("unsupported API version {0} (this daemon speaks {API_VERSION})")]
    Version(u64),
    #[error("bad request: {0}")]
    Bad(String),
}

/// A request's object, every key in it once: a request that names a field
/// twice is refused rather than read as one of them.
struct Fields(serde_json::Map<String, serde_json::Value>);

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Fields, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Fields;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(self, mut m: M) -> Result<Fields, M::Error> {
                let mut fields = serde_json::Map::new();
                while let Some((k, v)) = m.next_entry::<String, serde_json::Value>()? {
                    if fields.contains_key(&k) {
                        return Err(serde::de::Error::custom(format_args!("duplicate field `{k}`")));
                    }
                    fields.insert(k, v);
                }
                Ok(Fields(fields))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// Parses one request line: `{"v":1,"op":...}`.
pub fn parse_request(line: &[u8]) -> Result<Request, RequestError> {
    let Fields(mut obj) = serde_json::from_slice(line).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => RequestError::Bad(e.to_string()),
        _ => RequestError::Json(e.to_string()),
    })?;
    match obj.remove("v").map(|v| v.as_u64()) {
        Some(Some(n)) if n == API_VERSION as u64 => {}
        Some(Some(n)) => return Err(RequestError::Version(n)),
        Some(None) => return Err(RequestError::Bad("\"v\" must be a number".into())),
        None => return Err(RequestError::Bad("missing \"v\" (API version)".into())),
    }
    serde_json::from_value(serde_json::Value::Object(obj)).map_err(|e| RequestError::Bad(e.to_string()))
}

/// A namespace as a user names it: `id:N`, `pid:N`, or its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NsRef {
    Id(u64),
    Pid(i32),
    Name(String),
}

impl NsRef {
    pub fn parse(s: &str) -> Result<NsRef, RequestError> {
        let bad = || RequestError::Bad(format!("invalid namespace {s:?}: expected a name, pid:N or id:N"));
        if let Some(n) = s.strip_prefix("id:") {
            return n.parse().map(NsRef::Id).map_err(|_| bad());
        }
        if let Some(n) = s.strip_prefix("pid:") {
            return n.parse().ok().filter(|p: &i32| *p > 0).map(NsRef::Pid).ok_or_else(bad);
        }
        if s.is_empty() || s.len() > 64 || s.contains(':') {
            return Err(bad());
        }
        Ok(NsRef::Name(s.to_owned()))
    }
}

/// A device row of `ls`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRow {
    pub name: String,
    pub kind: char,
    pub major: u32,
    pub minor: u32,
    pub owner: String,
    pub global: bool,
}

/// A namespace row of `ns ls`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NsRow {
    pub id: String,
    pub name: Option<String>,
    pub pids: Vec<i32>,
    pub devices: Vec<String>,
    /// Its mounts of its own block devices (`crate::blockmount`).
    #[serde(default)]
    pub mounts: Vec<MountRow>,
}

/// A namespace's mount of one of its own block devices.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRow {
    pub device: String,
    /// Where, as the namespace's processes see it.
    pub target: String,
    pub fstype: String,
    /// `kernel` or `fuse`.
    pub way: String,
    pub read_only: bool,
}

/// One entry of `view`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewRow {
    pub path: String,
    /// `dir`, `char`, `block`, `symlink`, `file`, `other`
    pub kind: String,
    pub dev: Option<String>,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub target: Option<String>,
}

/// What `events` streams.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// `assign`, `release`, `global`, `add`, `remove`, `ns-new`, `ns-gone`
    pub event: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub device: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub dev: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ns: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub global: Option<bool>,
}

impl Event {
    /// A namespace's event (`ns-new`, `ns-gone`).
    pub fn ns(event: &str, ns: impl std::fmt::Display) -> Event {
        Event { event: event.into(), device: None, dev: None, ns: Some(ns.to_string()), global: None }
    }

    /// A device's event, with the namespace concerned if any.
    pub fn device(event: &str, device: &str, dev: impl std::fmt::Display, ns: Option<String>) -> Event {
        Event { event: event.into(), device: Some(device.into()), dev: Some(dev.to_string()), ns, global: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_requests() {
        assert_eq!(
            parse_request(br#"{"v":1,"op":"assign","device":"loop3","to":"web"}"#),
            Ok(Request::Assign { device: "loop3".into(), to: "web".into() })
        );
        assert_eq!(parse_request(br#"{"v":1,"op":"ns-ls"}"#), Ok(Request::NsLs {}));
        assert_eq!(
            parse_request(br#"{"v":1,"op":"attach","pid":42}"#),
            Ok(Request::Attach {
                pid: 42,
                name: None,
                at: None,
                root: None,
                devices: vec![],
                runtime: false,
                container: None
            })
        );
    }

    #[test]
    fn refuses_bad_requests_with_reasons() {
        assert!(matches!(parse_request(b"{nope"), Err(RequestError::Json(_))));
        assert_eq!(parse_request(br#"{"v":2,"op":"ls"}"#), Err(RequestError::Version(2)));
        assert!(parse_request(br#"{"op":"ls"}"#).unwrap_err().to_string().contains("missing \"v\""));
        let e = parse_request(br#"{"v":1,"op":"explode"}"#).unwrap_err().to_string();
        assert!(e.starts_with("bad request: unknown variant `explode`"), "{e}");
        let e = parse_request(br#"{"v":1,"op":"release","device":"x","extra":1}"#).unwrap_err().to_string();
        assert!(e.contains("unknown field `extra`"), "{e}");
        assert!(parse_request(br#"[1,2]"#).is_err());
    }

    /// One well-formed request of every op.
    const EVERY_OP: &[&str] = &[
        r#""op":"ls""#,
        r#""op":"ns-ls""#,
        r#""op":"view","ns":"web""#,
        r#""op":"assign","device":"loop3","to":"web""#,
        r#""op":"release","device":"loop3""#,
        r#""op":"global","device":"null","on":false"#,
        r#""op":"attach","pid":42,"name":"web","at":"/dev""#,
        r#""op":"attach","pid":42,"root":"/b/rootfs","devices":["loop3"],"runtime":true,"container":"c1""#,
        r#""op":"detach","name":"web","container":"c1""#,
        r#""op":"expect","name":"web","container":"lxc/web","devices":["loop3"]"#,
        r#""op":"join","name":"web","root":"/usr/lib/x86_64-linux-gnu/lxc/rootfs""#,
        r#""op":"events""#,
        r#""op":"listen""#,
        r#""op":"run","name":"web","devices":["loop3"]"#,
    ];

    #[test]
    fn every_op_refuses_unknown_fields() {
        for fields in EVERY_OP {
            let good = format!(r#"{{"v":1,{fields}}}"#);
            assert!(parse_request(good.as_bytes()).is_ok(), "{good}");
            for extra in [r#""extra":1"#, r#""Op":"ls""#, r#""v2":1"#, r#""":null"#] {
                let bad = format!(r#"{{"v":1,{fields},{extra}}}"#);
                let e = parse_request(bad.as_bytes()).unwrap_err();
                assert!(matches!(&e, RequestError::Bad(m) if m.contains("unknown field")), "{bad}: {e}");
            }
        }
        let variants = [
            Request::Ls {},
            Request::NsLs {},
            Request::View { ns: "web".into() },
            Request::Assign { device: "d".into(), to: "web".into() },
            Request::Release { device: "d".into() },
            Request::Global { device: "d".into(), on: true },
            Request::Attach {
                pid: 1,
                name: None,
                at: None,
                root: None,
                devices: vec![],
                runtime: false,
                container: None,
            },
            Request::Detach { name: "web".into(), container: "c1".into() },
            Request::Events {},
            Request::Listen {},
            Request::Run { name: None, devices: vec![] },
        ];
        // Every op is in the table above (a new one must be added there).
        for r in variants {
            let op = serde_json::to_value(&r).unwrap()["op"].as_str().unwrap().to_owned();
            assert!(EVERY_OP.iter().any(|f| f.starts_with(&format!(r#""op":"{op}""#))), "{op} not tested");
        }
    }

    #[test]
    fn a_field_named_twice_is_refused() {
        for line in [
            r#"{"v":1,"op":"ls","op":"assign","device":"d","to":"x"}"#,
            r#"{"v":1,"v":1,"op":"ls"}"#,
            r#"{"v":1,"op":"release","device":"a","device":"b"}"#,
        ] {
            let e = parse_request(line.as_bytes()).unwrap_err();
            assert!(matches!(&e, RequestError::Bad(m) if m.contains("duplicate field")), "{line}: {e}");
        }
    }

    #[test]
    fn namespace_refs() {
        assert_eq!(NsRef::parse("id:4026531837"), Ok(NsRef::Id(4026531837)));
        assert_eq!(NsRef::parse("pid:7"), Ok(NsRef::Pid(7)));
        assert_eq!(NsRef::parse("web"), Ok(NsRef::Name("web".into())));
        for bad in ["", "pid:0", "pid:-1", "id:x", "a:b"] {
            assert!(NsRef::parse(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_request(&b);
        }
    }
}
