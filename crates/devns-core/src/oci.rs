//! The runtime-spec's seccomp agent message: the container process state
//! that a runtime sends to `linux.seccomp.listenerPath` with the listener
//! fd (`SCM_RIGHTS`), then closes. Parsing and validation only (issue 12
//! serves the socket).
//!
//! The shapes, from the runtimes' own sources:
//! - runc (`sendContainerProcessState`): `json.Marshal` of the
//!   runtime-spec's `ContainerProcessState`, compact, no newline; its
//!   `ociVersion` the spec's (`1.x.y`); `state.pid` and
//!   `state.annotations` omitted when empty, `metadata` too.
//! - crun (`get_seccomp_receiver_fd_payload`): pretty-printed with a
//!   newline at the end, `ociVersion` `0.2.0` in both places; `metadata`,
//!   `state.id`, `state.bundle`, `state.annotations` only when it has them.
//!
//! Unknown fields are ignored, as the runtime-spec asks of consumers
//! (newer runtimes may add some); a field named twice is refused.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Largest message devns reads: Kubernetes bounds a pod's annotations to
/// 256 KiB in all, and the rest is small.
pub const MAX_PROCESS_STATE_BYTES: usize = 512 * 1024;
/// Longest `id`, `ociVersion`, `status` or `metadata` devns takes (runc
/// and Kubernetes ids are at most a few hundred bytes).
pub const MAX_FIELD_BYTES: usize = 4096;
/// Longest `bundle` (`PATH_MAX`).
pub const MAX_BUNDLE_BYTES: usize = 4096;
/// The name the runtime-spec gives the seccomp listener in `fds`.
pub const SECCOMP_FD_NAME: &str = "seccompFd";

/// The message as it comes (`specs.ContainerProcessState`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessState {
    #[serde(rename = "ociVersion")]
    pub oci_version: String,
    /// The names of the fds passed, in `SCM_RIGHTS` order.
    pub fds: Vec<String>,
    /// The container process, as the runtime sees it.
    pub pid: i32,
    /// `listenerMetadata` of the container's config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<String>,
    pub state: State,
}

/// The container's state (`specs.State`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    #[serde(rename = "ociVersion")]
    pub oci_version: String,
    pub id: String,
    #[serde(default)]
    pub status: String,
    /// The container's init (runc omits it while it is 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    pub bundle: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A message devns takes: its state, and where the listener is among the
/// fds that came with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub state: ProcessState,
    /// The index of `seccompFd` in `fds` (and in the `SCM_RIGHTS` array).
    pub seccomp_fd: usize,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OciError {
    #[error("container process state too large: {0} bytes (at most {MAX_PROCESS_STATE_BYTES})")]
    TooLarge(usize),
    #[error("container process state is not valid: {0}")]
    Json(String),
    #[error("container process state names no {SECCOMP_FD_NAME} in fds {0:?}")]
    NoSeccompFd(Vec<String>),
    #[error("container process state names {SECCOMP_FD_NAME} more than once in fds {0:?}")]
    TwoSeccompFds(Vec<String>),
    #[error("container process state has a bad pid {0}")]
    BadPid(i64),
    #[error("container process state has a bad {field}: {why}")]
    BadField { field: &'static str, why: &'static str },
}

/// Parses and checks a runtime's message (runc's or crun's).
pub fn parse_process_state(msg: &[u8]) -> Result<Listener, OciError> {
    if msg.len() > MAX_PROCESS_STATE_BYTES {
        return Err(OciError::TooLarge(msg.len()));
    }
    let state: ProcessState = serde_json::from_slice(msg).map_err(|e| OciError::Json(e.to_string()))?;
    let seccomp_fd = check(&state)?;
    Ok(Listener { state, seccomp_fd })
}

/// The checks beyond the shape; the index of `seccompFd`.
fn check(s: &ProcessState) -> Result<usize, OciError> {
    let mut named = s.fds.iter().enumerate().filter(|(_, n)| *n == SECCOMP_FD_NAME).map(|(i, _)| i);
    let index = named.next().ok_or_else(|| OciError::NoSeccompFd(s.fds.clone()))?;
    if named.next().is_some() {
        return Err(OciError::TwoSeccompFds(s.fds.clone()));
    }
    let exec = crun_exec(s);
    if s.pid < 0 || (s.pid == 0 && !exec) {
        return Err(OciError::BadPid(s.pid.into()));
    }
    text("ociVersion", &s.oci_version, MAX_FIELD_BYTES, false)?;
    if let Some(m) = &s.metadata {
        text("metadata", m, MAX_FIELD_BYTES, true)?;
    }
    check_state(&s.state, exec)?;
    Ok(index)
}

/// Whether a message is what crun 1.8.1 sends for a process `crun exec`
/// starts in a running container: no pid at all (0 in both places) and
/// bundle `.`. Its listener can be told only by the container's id.
pub fn crun_exec(s: &ProcessState) -> bool {
    s.pid == 0 && s.state.status == "running" && s.state.pid.is_none_or(|p| p == 0) && s.state.bundle == "."
}

/// The checks of a container's state beyond its shape (its fields named
/// `state.*`, as in the agent's message); `crun_exec`: crun's exec shape.
fn check_state(s: &State, crun_exec: bool) -> Result<(), OciError> {
    if let Some(pid) = s.pid.filter(|p| *p < 0 || (*p == 0 && !crun_exec)) {
        return Err(OciError::BadPid(pid.into()));
    }
    text("state.ociVersion", &s.oci_version, MAX_FIELD_BYTES, false)?;
    text("state.id", &s.id, MAX_FIELD_BYTES, false)?;
    text("state.status", &s.status, MAX_FIELD_BYTES, true)?;
    text("state.bundle", &s.bundle, MAX_BUNDLE_BYTES, false)?;
    if !s.bundle.starts_with('/') && !crun_exec {
        return Err(OciError::BadField { field: "state.bundle", why: "not an absolute path" });
    }
    for (k, v) in &s.annotations {
        if k.is_empty() || k.contains('\0') || v.contains('\0') {
            return Err(OciError::BadField { field: "state.annotations", why: "an empty key or a NUL byte" });
        }
    }
    Ok(())
}

/// Parses and checks the state a runtime gives an OCI hook on its stdin
/// (the runtime-spec's `State`: `ociVersion`, `id`, `status`, `pid`,
/// `bundle`, `annotations`), bounded as the agent's message is.
pub fn parse_state(msg: &[u8]) -> Result<State, OciError> {
    if msg.len() > MAX_PROCESS_STATE_BYTES {
        return Err(OciError::TooLarge(msg.len()));
    }
    let state: State = serde_json::from_slice(msg).map_err(|e| OciError::Json(e.to_string()))?;
    check_state(&state, false)?;
    Ok(state)
}

fn text(field: &'static str, v: &str, max: usize, empty_ok: bool) -> Result<(), OciError> {
    let why = if v.is_empty() && !empty_ok {
        "empty"
    } else if v.len() > max {
        "too long"
    } else if v.contains('\0') {
        "a NUL byte"
    } else {
        return Ok(());
    };
    Err(OciError::BadField { field, why })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What runc 1.1.5 sent for `runc run` (compact), as received.
    const RUNC: &[u8] = include_bytes!("../tests/corpus/oci/runc-1.1.5-run.json");
    /// What crun 1.8.1 sent (pretty-printed, `0.2.0`), as received.
    const CRUN: &[u8] = include_bytes!("../tests/corpus/oci/crun-1.8.1-run.json");

    #[test]
    fn runc_s_compact_message_is_read() {
        let l = parse_process_state(RUNC).unwrap();
        assert_eq!((l.seccomp_fd, l.state.oci_version.as_str()), (0, "1.0.2-dev"));
        assert_eq!((l.state.pid, l.state.metadata.as_deref()), (2585, Some("devns")));
        let s = &l.state.state;
        assert_eq!((s.id.as_str(), s.bundle.as_str(), s.pid), ("devnsfuzz", "/tmp/fz/ctr", Some(2585)));
        assert_eq!((s.status.as_str(), s.annotations["devns.io/enable"].as_str()), ("creating", "true"));
    }

    #[test]
    fn crun_s_pretty_printed_message_is_read() {
        assert!(CRUN.starts_with(b"{\n    \"ociVersion\": \"0.2.0\",\n"), "pretty-printed");
        let l = parse_process_state(CRUN).unwrap();
        assert_eq!((l.seccomp_fd, l.state.pid, l.state.oci_version.as_str()), (0, 2740, "0.2.0"));
        assert_eq!((l.state.metadata.as_deref(), l.state.state.oci_version.as_str()), (Some("devns"), "0.2.0"));
        let s = &l.state.state;
        assert_eq!((s.id.as_str(), s.bundle.as_str(), s.pid), ("devnsfuzz2", "/tmp/fz/ctr", Some(2740)));
        assert_eq!(s.annotations.len(), 2);
    }

    #[test]
    fn runc_s_omitted_fields_and_runc_exec_s_message_are_read() {
        // `runc exec`: the exec'd process, the init's pid in the state; no
        // annotations, no metadata (omitempty).
        let exec = br#"{"ociVersion":"1.3.0","fds":["seccompFd"],"pid":900,"state":{"ociVersion":"1.3.0","id":"web","status":"running","pid":41234,"bundle":"/b"}}"#;
        let l = parse_process_state(exec).unwrap();
        assert_eq!((l.state.pid, l.state.state.pid), (900, Some(41234)));
        // The state's pid 0 is omitted by runc.
        let no_pid = br#"{"ociVersion":"1.3.0","fds":["x","seccompFd"],"pid":900,"state":{"ociVersion":"1.3.0","id":"w","status":"creating","bundle":"/b"}}"#;
        assert_eq!(parse_process_state(no_pid).unwrap().seccomp_fd, 1);
        // `crun exec` (1.8.1): no pid anywhere, bundle ".".
        let crun = br#"{"ociVersion":"0.2.0","fds":["seccompFd"],"pid":0,"state":{"ociVersion":"0.2.0","id":"web","status":"running","pid":0,"bundle":".","annotations":{}}}"#;
        let l = parse_process_state(crun).unwrap();
        assert!(crun_exec(&l.state));
        // That shape only: pid 0 or a relative bundle otherwise are refused.
        for bad in [
            r#""status":"creating","pid":0,"bundle":".""#,
            r#""status":"running","pid":0,"bundle":"b""#,
            r#""status":"running","pid":7,"bundle":".""#,
        ] {
            let m = String::from_utf8_lossy(crun).replace(r#""status":"running","pid":0,"bundle":".""#, bad);
            assert!(parse_process_state(m.as_bytes()).is_err(), "{m}");
        }
    }

    #[test]
    fn bad_messages_are_refused_with_the_reason() {
        let with = |from: &str, to: &str| String::from_utf8_lossy(RUNC).replacen(from, to, 1);
        let cases = [
            (with(r#"["seccompFd"]"#, "[]"), "names no seccompFd"),
            (with(r#"["seccompFd"]"#, r#"["seccompFd","seccompFd"]"#), "more than once"),
            (with(r#""pid":2585,"m"#, r#""pid":0,"m"#), "bad pid 0"),
            (with(r#""pid":2585,"m"#, r#""pid":-1,"m"#), "bad pid -1"),
            (with(r#""pid":2585,"b"#, r#""pid":-5,"b"#), "bad pid -5"),
            (with(r#""id":"devnsfuzz""#, r#""id":"""#), "bad state.id: empty"),
            (with(r#""id":"devnsfuzz","#, ""), "missing field `id`"),
            (with(r#""bundle":"/tmp/fz/ctr""#, r#""bundle":"rel""#), "not an absolute path"),
            (with(r#""bundle":"/tmp"#, r#""bundle":"/t\u0000mp"#), "a NUL byte"),
            (with(r#""id":"devnsfuzz""#, r#""id":"devnsfuzz","id":"x""#), "duplicate field `id`"),
            (with(r#""pid":2585,"m"#, r#""pid":"2585","m"#), "invalid type"),
            (with(r#""pid":2585,"m"#, r#""pid":99999999999,"m"#), "invalid value"),
            (with(r#""fds":["seccompFd"],"#, ""), "missing field `fds`"),
            (with(r#"}}"#, "}"), "EOF"),
            ("[]".into(), "expected struct ProcessState"),
            ("\"x\"".into(), "invalid type"),
            (String::new(), "EOF"),
        ];
        for (msg, want) in cases {
            let e = parse_process_state(msg.as_bytes()).unwrap_err().to_string();
            assert!(e.starts_with("container process state ") && e.contains(want), "{msg}: {e}");
        }
        let big = vec![b' '; MAX_PROCESS_STATE_BYTES + 1];
        assert_eq!(parse_process_state(&big), Err(OciError::TooLarge(MAX_PROCESS_STATE_BYTES + 1)));
        // Newer runtimes' fields are ignored.
        assert!(parse_process_state(with(r#""pid":2585,"m"#, r#""pid":2585,"future":[1],"m"#).as_bytes()).is_ok());
    }

    /// What runc 1.1.5 gave its createRuntime and poststop hooks on stdin.
    const RUNC_HOOK: &[u8] = br#"{"ociVersion":"1.0.2-dev","id":"hk1","status":"creating","pid":15491,"bundle":"/tmp/hk/b","annotations":{"devns.io/enable":"true"}}"#;
    const RUNC_POSTSTOP: &[u8] =
        br#"{"ociVersion":"1.0.2-dev","id":"hk1","status":"stopped","bundle":"/tmp/hk/b","annotations":{"devns.io/enable":"true"}}"#;

    #[test]
    fn a_hook_s_state_is_read_with_the_agent_s_checks() {
        let s = parse_state(RUNC_HOOK).unwrap();
        assert_eq!(
            (s.id.as_str(), s.status.as_str(), s.pid, s.bundle.as_str()),
            ("hk1", "creating", Some(15491), "/tmp/hk/b")
        );
        assert_eq!(s.annotations["devns.io/enable"], "true");
        let s = parse_state(RUNC_POSTSTOP).unwrap();
        assert_eq!((s.status.as_str(), s.pid), ("stopped", None));
        let with = |from: &str, to: &str| String::from_utf8_lossy(RUNC_HOOK).replacen(from, to, 1);
        let cases = [
            (with(r#""pid":15491"#, r#""pid":0"#), "bad pid 0"),
            (with(r#""id":"hk1""#, r#""id":"""#), "bad state.id: empty"),
            (with(r#""bundle":"/tmp/hk/b""#, r#""bundle":"b""#), "not an absolute path"),
            (with(r#""id":"hk1""#, r#""id":"hk1","id":"x""#), "duplicate field `id`"),
            (with(r#""devns.io/enable""#, r#""""#), "an empty key"),
            (with(r#"}}"#, "}"), "EOF"),
            (String::new(), "EOF"),
        ];
        for (msg, want) in cases {
            let e = parse_state(msg.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(want), "{msg}: {e}");
        }
        let big = vec![b' '; MAX_PROCESS_STATE_BYTES + 1];
        assert_eq!(parse_state(&big), Err(OciError::TooLarge(MAX_PROCESS_STATE_BYTES + 1)));
    }

    #[test]
    fn what_is_read_writes_back_to_the_same() {
        for msg in [RUNC, CRUN] {
            let l = parse_process_state(msg).unwrap();
            let again = parse_process_state(&serde_json::to_vec(&l.state).unwrap()).unwrap();
            assert_eq!(again, l);
        }
        // runc's compact form is what serde writes, byte for byte.
        assert_eq!(serde_json::to_vec(&parse_process_state(RUNC).unwrap().state).unwrap(), RUNC);
    }
}
