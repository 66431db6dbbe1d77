//! The runtime-spec seccomp profile that routes devns's calls to its agent:
//! a base profile (podman's or moby's format, or a config.json's
//! `linux.seccomp`) with devns's `SCMP_ACT_NOTIFY` rules for exactly the
//! calls the agent serves (those of [`crate::seccomp::filter`]) and
//! `listenerPath` set. One builder for `devns oci profile` and the
//! runtime wrapper. Pure: JSON in, JSON out.
//!
//! How libseccomp 2.5.4 (runc 1.1.5 and crun 1.8.1 here) combines rules
//! for one syscall, measured with a listener that closes the fd it gets
//! (a trapped call then fails with `ENOSYS`) and `defaultAction` ERRNO:
//! - an unconditional `ALLOW` of `ioctl` beside conditional `NOTIFY`
//!   rules for it, in either order: the `NOTIFY` rules are lost (every
//!   ioctl allowed);
//! - the `ALLOW` conditioned on something always true of the same
//!   argument (`arg1 & 0 == 0`), of `arg0` by a mask of 0, or of a higher
//!   argument (`arg2 >= 0`): the `ALLOW` wins again;
//! - the `ALLOW` conditioned on `arg0 >= 0` (always true) and the `NOTIFY`
//!   rules on a higher argument: the `NOTIFY` rules win for their values,
//!   every other ioctl is allowed. That is what is built: a base rule
//!   that names a served call with a condition (`mknod`, `mknodat`,
//!   `ioctl`) keeps its action for the rest, made conditional on
//!   `arg0 >= 0` when it had no condition; one that has conditions of its
//!   own is kept as it is (the base then decides the order for those
//!   values). `mount` and `fsopen` are trapped whole, so the base's rules
//!   for them go.
//!
//! Requests are matched on their low 32 bits (`SCMP_CMP_MASKED_EQ`), as
//! the kernel reads them. The runtime compiles the profile at every
//! container start, and libseccomp's cost grows with the rules of a call
//! beside the others' (measured: each conditional rule of these three
//! adds about 0.2 ms to a profile of podman's size): so the device kinds
//! are one rule ([`DEVICE_KIND_MASK`]), and the loop-control requests one
//! ([`LOOP_CTL_MASK`]), which also traps `0x4C83`, no request, that the
//! agent lets through to the kernel. The agent decodes x86_64
//! calls: the rules go to every architecture the base lists (its own),
//! and the built-in base lists x86_64 with its 32-bit modes, as the
//! runtimes' default profiles do.

use crate::seccomp::{BLKPG, BLKRRPART, DEVICE_KIND_MASK, LOOP_CTL_ADD, LOOP_CTL_MASK, S_IFCHR};
use serde_json::{Map, Value, json};

/// Largest base profile read (moby's default is about 20 KiB).
pub const MAX_PROFILE_BYTES: usize = 4 * 1024 * 1024;
pub const NOTIFY: &str = "SCMP_ACT_NOTIFY";
/// The calls devns's agent serves, trapped on a condition (device kinds,
/// the mediated requests): the base keeps its rules for the rest.
pub const CONDITIONAL: [&str; 3] = ["mknod", "mknodat", "ioctl"];
/// The calls trapped whole.
pub const WHOLE: [&str; 2] = ["mount", "fsopen"];
/// Trapped whole and always let through (`CONTINUE`): a container that
/// asked for devns is brought under it at its first `execve`, where the
/// runtime's setup is done (`pivot_root`, its cgroup's device rules) and
/// none of the container's own code has run. A base that decides these
/// otherwise than `ALLOW` cannot be kept, and is refused.
pub const EXEC: [&str; 2] = ["execve", "execveat"];
pub const ALLOW: &str = "SCMP_ACT_ALLOW";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProfileError {
    #[error("seccomp profile too large: {0} bytes (at most {MAX_PROFILE_BYTES})")]
    TooLarge(usize),
    #[error("seccomp profile is not valid JSON: {0}")]
    Json(String),
    #[error("seccomp profile is not valid: {0}")]
    Shape(String),
}

fn shape<T>(why: impl Into<String>) -> Result<T, ProfileError> {
    Err(ProfileError::Shape(why.into()))
}

/// `bytes` as a base profile: a profile file (`defaultAction`, ...) or a
/// whole config.json, whose `linux.seccomp` is taken (none there: `None`,
/// the built-in base).
pub fn parse_base(bytes: &[u8]) -> Result<Option<Value>, ProfileError> {
    if bytes.len() > MAX_PROFILE_BYTES {
        return Err(ProfileError::TooLarge(bytes.len()));
    }
    let v: Value = serde_json::from_slice(bytes).map_err(|e| ProfileError::Json(e.to_string()))?;
    let Some(o) = v.as_object() else { return shape("not a JSON object") };
    if o.contains_key("defaultAction") {
        return Ok(Some(v));
    }
    match o.get("linux") {
        Some(Value::Object(l)) => Ok(l.get("seccomp").filter(|s| !s.is_null()).cloned()),
        _ => shape("neither a profile (no defaultAction) nor a config.json (no linux)"),
    }
}

/// The built-in base: everything allowed.
pub fn allow_all() -> Value {
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [],
    })
}

fn masked(index: u32, mask: u32, value: u32) -> Value {
    json!({ "index": index, "value": mask, "valueTwo": value, "op": "SCMP_CMP_MASKED_EQ" })
}

/// An always-true condition on `arg0`, which libseccomp orders after
/// the conditions on higher arguments (see the module's comment).
pub fn arg0_any() -> Value {
    json!({ "index": 0, "value": 0, "op": "SCMP_CMP_GE" })
}

/// devns's rules: what [`crate::seccomp::filter`] traps, and the
/// `ioctl` `0x4C83` (see the module's comment).
pub fn notify_rules() -> Vec<Value> {
    let rule = |name: &str, args: Vec<Value>| json!({ "names": [name], "action": NOTIFY, "args": args });
    let mut rules = Vec::new();
    for (name, mode_arg) in [("mknod", 1), ("mknodat", 2)] {
        rules.push(rule(name, vec![masked(mode_arg, DEVICE_KIND_MASK, S_IFCHR)]));
    }
    rules.extend(WHOLE.iter().chain(EXEC.iter()).map(|n| rule(n, vec![])));
    rules.push(rule("ioctl", vec![masked(1, LOOP_CTL_MASK, LOOP_CTL_ADD)]));
    rules.extend([BLKRRPART, BLKPG].iter().map(|req| rule("ioctl", vec![masked(1, u32::MAX, *req)])));
    rules
}

/// `base` (or [`allow_all`]) with devns's rules and `listenerPath`, and
/// `listenerMetadata` when given (else the base's). Refused: a base that
/// already sends calls devns does not serve to a listener (they would
/// reach devns's agent), or that is malformed.
pub fn build(base: Option<Value>, listener: &str, metadata: Option<&str>) -> Result<Value, ProfileError> {
    let mut p = base.unwrap_or_else(allow_all);
    let Some(o) = p.as_object_mut() else { return shape("not a JSON object") };
    match o.get("defaultAction") {
        Some(Value::String(a)) if a == NOTIFY => {
            return shape("defaultAction SCMP_ACT_NOTIFY would send every call to devns");
        }
        Some(Value::String(_)) => {}
        _ => return shape("defaultAction is missing or not a string"),
    }
    let rules = match o.remove("syscalls") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(r)) => r,
        Some(_) => return shape("syscalls is not an array"),
    };
    let mut out = Vec::with_capacity(rules.len() + 16);
    for (i, r) in rules.into_iter().enumerate() {
        rewrite(r, &mut out).map_err(|why| ProfileError::Shape(format!("syscalls[{i}]: {why}")))?;
    }
    out.extend(notify_rules());
    o.insert("syscalls".into(), Value::Array(out));
    o.insert("listenerPath".into(), listener.into());
    if let Some(m) = metadata {
        o.insert("listenerMetadata".into(), m.into());
    }
    Ok(p)
}

/// One base rule, without devns's calls (a copy of it per conditional
/// one, for the values devns does not serve).
fn rewrite(rule: Value, out: &mut Vec<Value>) -> Result<(), String> {
    let Value::Object(mut r) = rule else { return Err("not an object".into()) };
    let original = r.clone();
    let mut names: Vec<String> = Vec::new();
    for key in ["names", "name"] {
        match r.remove(key) {
            None => {}
            Some(Value::String(n)) if key == "name" => names.push(n),
            Some(Value::Array(ns)) if key == "names" => {
                for n in ns {
                    let Value::String(n) = n else { return Err("a name that is not a string".into()) };
                    names.push(n);
                }
            }
            Some(_) => return Err(format!("{key} of the wrong type")),
        }
    }
    let (notify, allow) = match r.get("action") {
        Some(Value::String(a)) => (a == NOTIFY, a == ALLOW),
        _ => return Err("action is missing or not a string".into()),
    };
    if let Some(n) = names.iter().find(|n| !notify && !allow && EXEC.contains(&n.as_str())) {
        return Err(format!(
            "{n:?} is decided by the base ({}), but devns lets every {n} of its containers through (it attaches them at their first)",
            r["action"].as_str().unwrap_or_default()
        ));
    }
    let served = |n: &str| CONDITIONAL.contains(&n) || WHOLE.contains(&n) || EXEC.contains(&n);
    if let Some(n) = names.iter().find(|n| notify && !served(n)) {
        let n: String = n.chars().take(64).collect();
        return Err(format!("{n:?} goes to a listener, which would be devns's: devns does not serve it"));
    }
    let has_args = match r.get("args") {
        None | Some(Value::Null) => false,
        Some(Value::Array(a)) => !a.is_empty(),
        Some(_) => return Err("args is not an array".into()),
    };
    if names.is_empty() {
        // It traps nothing; kept as it is but for a NOTIFY of nothing.
        if !notify {
            out.push(Value::Object(original));
        }
        return Ok(());
    }
    let rest: Vec<Value> = names.iter().filter(|n| !served(n)).map(|n| n.as_str().into()).collect();
    if !rest.is_empty() {
        let mut kept = r.clone();
        kept.insert("names".into(), Value::Array(rest));
        out.push(Value::Object(kept));
    }
    // A base's NOTIFY for a served call is devns's own (built before):
    // replaced by the rules added after.
    for n in names.iter().filter(|n| !notify && CONDITIONAL.contains(&n.as_str())) {
        let mut one: Map<String, Value> = r.clone();
        one.insert("names".into(), json!([n]));
        if !has_args {
            one.insert("args".into(), json!([arg0_any()]));
        }
        out.push(Value::Object(one));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
