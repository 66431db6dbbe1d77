//! The runtime-spec seccomp agent socket (`linux.seccomp.listenerPath`),
//! as decisions: who may connect, how much a connection may send and for
//! how long, and whether the listener it passed is taken. The message
//! itself is parsed by `crate::oci`.

use crate::hook;
use crate::oci::{self, MAX_PROCESS_STATE_BYTES};
use std::collections::BTreeMap;
use std::time::Duration;

/// Connections that have not finished their message, at most: runtimes
/// connect once per container start, and each closes at once.
pub const MAX_PENDING: usize = 64;
/// Fds one connection may pass over all its message's parts (runc and
/// crun pass one).
pub const MAX_FDS: usize = 8;
/// How long a connection may take from accept to its end of file: the
/// API's request deadline.
pub const DEADLINE: Duration = crate::clients::REQUEST_DEADLINE;
/// Listeners of one user namespace, at most: its container's init's and
/// those of the processes `runc exec` starts in it while they run.
pub const MAX_PER_NAMESPACE: usize = 64;
/// Bytes read of a connection, at most: one more than a message may have.
pub const MAX_READ: usize = MAX_PROCESS_STATE_BYTES + 1;

/// Why a connection or its listener is refused (each one log line).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the peer is not host root (uid {uid}{})", if *.host_ns { "" } else { " in another user namespace" })]
    NotHostRoot { uid: u32, host_ns: bool },
    #[error("too many connections are unfinished (at most {MAX_PENDING})")]
    TooManyPending,
    #[error("it passed more than {MAX_FDS} fds")]
    TooManyFds,
    #[error("it sent more than {MAX_PROCESS_STATE_BYTES} bytes")]
    TooLarge,
    #[error("it did not send its whole message and close in time")]
    TooSlow,
    #[error("{0}")]
    Message(#[from] oci::OciError),
    #[error("it passed {fds} fds, so none is its seccompFd (fds[{index}])")]
    NoFd { index: usize, fds: usize },
    #[error("its seccompFd is not a seccomp listener")]
    NotListener,
    #[error("no process {0}")]
    NoProcess(i32),
    #[error("process {0} is in the host's user namespace")]
    HostNamespace(i32),
    #[error("a listener of its user namespace {0} is served already")]
    NamespaceServed(u64),
    #[error("a listener of container {0:?} is served already")]
    ContainerServed(String),
    #[error("it names no pid, as crun's exec does, and no served container is {0:?}")]
    UnknownExec(String),
    #[error("its user namespace {0} has {MAX_PER_NAMESPACE} listeners served already")]
    TooManyListeners(u64),
    #[error("{0}")]
    Asked(#[from] hook::HookError),
}

/// Whether what a connection sent so far is to be decided now: a whole
/// JSON value (maybe a bad one), or something that cannot become one. runc
/// sends its message and keeps the connection open while `runc run` lasts
/// (it never closes it), so a message is taken when it is whole, not at
/// the end of file; crun's ends with a newline and the close.
pub fn whole(buf: &[u8]) -> bool {
    match serde_json::from_slice::<serde::de::IgnoredAny>(buf) {
        Ok(_) => true,
        Err(e) => !e.is_eof(),
    }
}

/// Whether a connection is kept: its peer (`SO_PEERCRED` uid, and
/// whether it is in the host's user namespace: `None` when that cannot be
/// asked any more, the peer having exited since it connected, as `runc
/// create` may before the daemon accepts) and the connections unfinished.
/// A peer gone is judged by its uid alone: the socket's mode let in only
/// processes with host root's file access.
pub fn admit(uid: u32, host_ns: Option<bool>, pending: usize) -> Result<(), Refusal> {
    if uid != 0 || host_ns == Some(false) {
        return Err(Refusal::NotHostRoot { uid, host_ns: host_ns.unwrap_or(true) });
    }
    if pending >= MAX_PENDING {
        return Err(Refusal::TooManyPending);
    }
    Ok(())
}

/// What the daemon serves already: the user namespaces its listeners are
/// tagged with (and how many each), and the containers that passed them
/// (with their namespace).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Served {
    pub namespaces: BTreeMap<u64, usize>,
    pub containers: BTreeMap<String, u64>,
}

/// What the shell found of a parsed message's fds and process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Facts {
    /// Fds that came with the message.
    pub fds: usize,
    /// Whether its `seccompFd` is a seccomp listener (when it came).
    pub is_listener: bool,
    /// The user namespace of its `pid`; `None`: no such process.
    pub pid_ns: Option<u64>,
}

/// The listener taken: which namespace it is tagged with, and what its
/// container asked of devns when this is its init's listener and the
/// container asked (its annotations, as a hook reads them): the
/// namespace is brought under devns at the first call the listener traps
/// (the container's first `execve`, after `pivot_root`, before any of its
/// code runs), unless a hook did so before.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Taken {
    pub ns: u64,
    pub container: String,
    pub attach: Option<hook::Wanted>,
}

/// Whether the listener of message `m` is taken.
pub fn take(m: &oci::Listener, f: &Facts, host_ns: u64, served: &Served) -> Result<Taken, Refusal> {
    let pid = m.state.pid;
    if m.seccomp_fd >= f.fds {
        return Err(Refusal::NoFd { index: m.seccomp_fd, fds: f.fds });
    }
    if !f.is_listener {
        return Err(Refusal::NotListener);
    }
    let container = m.state.state.id.clone();
    if oci::crun_exec(&m.state) {
        // No pid to ask the kernel about: the container's id says which
        // namespace (one served, with its init's listener).
        let ns = *served.containers.get(&container).ok_or_else(|| Refusal::UnknownExec(container.clone()))?;
        if served.namespaces.get(&ns).is_some_and(|&n| n >= MAX_PER_NAMESPACE) {
            return Err(Refusal::TooManyListeners(ns));
        }
        return Ok(Taken { ns, container, attach: None });
    }
    let ns = f.pid_ns.ok_or(Refusal::NoProcess(pid))?;
    if ns == host_ns {
        return Err(Refusal::HostNamespace(pid));
    }
    if let Some(&n) = served.namespaces.get(&ns) {
        // `runc exec` (so `podman exec`) gives each process it starts in a
        // running container the container's filter anew, and passes that
        // listener too: one more of the same namespace (its process is in
        // it: the kernel says so), never a second one for its init.
        let s = &m.state.state;
        let exec = s.status == "running" && s.pid.is_some_and(|init| init != pid);
        if !exec || served.containers.get(&container).is_some_and(|&c| c != ns) {
            return Err(Refusal::NamespaceServed(ns));
        }
        if n >= MAX_PER_NAMESPACE {
            return Err(Refusal::TooManyListeners(ns));
        }
        return Ok(Taken { ns, container, attach: None });
    }
    if served.containers.contains_key(&container) {
        return Err(Refusal::ContainerServed(container));
    }
    let attach = hook::wanted(&m.state.state)?;
    Ok(Taken { ns, container, attach })
}

/// A directory's identity: its device and inode.
pub type DirId = (u64, u64);

/// When a listener's container that asked for devns is brought under it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    /// As its listener arrives: its process's root is its rootfs already,
    /// so its runtime has done `pivot_root`, which comes after every mount
    /// of the rootfs, `/dev`'s too (runc passes the listener after that,
    /// and after its device rules). Its first trapped call still waits for
    /// the attach, and has the runtime's device rules deferred again, in
    /// case the runtime wrote some since.
    Now,
    /// At its first trapped call (its first `execve`): its process's root
    /// is not its rootfs yet (crun may pass the listener before
    /// `pivot_root`), or either is unknown (a process gone, a bundle this
    /// daemon cannot read or whose rootfs is a mount it does not see).
    FirstCall,
}

/// When a container is attached: from the root of its process and its
/// bundle's rootfs (`root.path`) as the daemon sees it.
pub fn when(container_root: Option<DirId>, rootfs: Option<DirId>) -> When {
    match (container_root, rootfs) {
        (Some(c), Some(r)) if c == r => When::Now,
        _ => When::FirstCall,
    }
}

/// The process (thread group) of a trapped call's thread, from its
/// `/proc/TID/status` (`Tgid:`): a notification names the calling
/// thread, and runc's Go init may `execve` from any of its threads.
pub fn thread_group(status: &[u8]) -> Option<i32> {
    let line = status.split(|b| *b == b'\n').find_map(|l| l.strip_prefix(b"Tgid:"))?;
    std::str::from_utf8(line).ok()?.trim().parse().ok().filter(|p| *p > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: &str, pid: i32, fds: &str) -> oci::Listener {
        let m = format!(
            r#"{{"ociVersion":"1.0.2","fds":{fds},"pid":{pid},"state":{{"ociVersion":"1.0.2","id":"{id}","status":"creating","bundle":"/b"}}}}"#
        );
        oci::parse_process_state(m.as_bytes()).unwrap()
    }

    const OK: Facts = Facts { fds: 1, is_listener: true, pid_ns: Some(7) };

    #[test]
    fn a_container_is_attached_as_its_listener_comes_only_once_its_root_is_its_rootfs() {
        let (host, rootfs) = ((8, 2), (8, 131_074));
        assert_eq!(when(Some(rootfs), Some(rootfs)), When::Now);
        // Before pivot_root its root is a copy of its runtime's.
        assert_eq!(when(Some(host), Some(rootfs)), When::FirstCall);
        // The same inode on another filesystem is another directory.
        assert_eq!(when(Some((9, 131_074)), Some(rootfs)), When::FirstCall);
        // A process gone, a rootfs not seen: nothing to compare.
        assert_eq!(when(None, Some(rootfs)), When::FirstCall);
        assert_eq!(when(Some(rootfs), None), When::FirstCall);
        assert_eq!(when(None, None), When::FirstCall);
    }

    #[test]
    fn a_message_is_decided_once_whole_or_once_it_cannot_become_whole() {
        let runc = include_bytes!("../tests/corpus/oci/runc-1.1.5-run.json");
        let crun = include_bytes!("../tests/corpus/oci/crun-1.8.1-run.json");
        for m in [&runc[..], &crun[..]] {
            assert!(whole(m));
            for cut in [0, 1, m.len() / 2, m.len() - 2] {
                assert!(!whole(&m[..cut]), "{cut} bytes of {}", m.len());
            }
        }
        assert!(!whole(b"  \n"));
        for bad in [&b"{]"[..], b"x", b"{} {}", b"\"s\" x"] {
            assert!(whole(bad), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn only_host_root_connects_and_only_so_many_at_once() {
        assert_eq!(admit(0, Some(true), 0), Ok(()));
        assert_eq!(admit(0, Some(true), MAX_PENDING - 1), Ok(()));
        assert_eq!(admit(0, Some(true), MAX_PENDING), Err(Refusal::TooManyPending));
        assert_eq!(admit(1000, Some(true), 0), Err(Refusal::NotHostRoot { uid: 1000, host_ns: true }));
        // Gone since it connected: its uid decides.
        assert_eq!(admit(0, None, 0), Ok(()));
        assert_eq!(admit(1000, None, 0), Err(Refusal::NotHostRoot { uid: 1000, host_ns: true }));
        // Root of another user namespace, mapped to host root or not.
        let e = admit(0, Some(false), 0).unwrap_err();
        assert_eq!(e.to_string(), "the peer is not host root (uid 0 in another user namespace)");
    }

    #[test]
    fn a_listener_of_a_container_in_its_own_namespace_is_taken() {
        let m = message("web", 40, r#"["seccompFd"]"#);
        let t = take(&m, &OK, 1, &Served::default()).unwrap();
        assert_eq!(t, Taken { ns: 7, container: "web".into(), attach: None });
        // Another container's, in another namespace, beside it.
        let served = Served { namespaces: [(8, 1)].into(), containers: [("db".into(), 8)].into() };
        assert!(take(&m, &OK, 1, &served).is_ok());
    }

    /// What `runc exec` passes: the exec'd process's pid, the container's
    /// init as `state.pid`, status running.
    fn exec_message(id: &str, pid: i32, init: i32) -> oci::Listener {
        let m = format!(
            r#"{{"ociVersion":"1.0.2","fds":["seccompFd"],"pid":{pid},"state":{{"ociVersion":"1.0.2","id":"{id}","status":"running","pid":{init},"bundle":"/b"}}}}"#
        );
        oci::parse_process_state(m.as_bytes()).unwrap()
    }

    #[test]
    fn the_listeners_of_processes_exec_starts_in_a_served_container_are_taken_up_to_a_bound() {
        let served = |n| Served { namespaces: [(7, n)].into(), containers: [("web".into(), 7)].into() };
        let exec = exec_message("web", 41, 40);
        assert_eq!(take(&exec, &OK, 1, &served(1)), Ok(Taken { ns: 7, container: "web".into(), attach: None }));
        // After a restart the container's id is not known: its namespace is.
        let after_restart = Served { namespaces: [(7, 1)].into(), ..Served::default() };
        assert!(take(&exec, &OK, 1, &after_restart).is_ok());
        assert_eq!(take(&exec, &OK, 1, &served(MAX_PER_NAMESPACE)), Err(Refusal::TooManyListeners(7)));
        // Its init's again, or one claiming to be it: refused.
        assert_eq!(take(&exec_message("web", 40, 40), &OK, 1, &served(1)), Err(Refusal::NamespaceServed(7)));
        assert_eq!(take(&message("web", 41, r#"["seccompFd"]"#), &OK, 1, &served(1)), Err(Refusal::NamespaceServed(7)));
        // Named as another namespace's container: refused.
        let other = Served { namespaces: [(7, 1), (8, 1)].into(), containers: [("web".into(), 8)].into() };
        assert_eq!(take(&exec, &OK, 1, &other), Err(Refusal::NamespaceServed(7)));
        // crun's exec: no pid; the container's id names the namespace.
        let crun = r#"{"ociVersion":"0.2.0","fds":["seccompFd"],"pid":0,"state":{"ociVersion":"0.2.0","id":"web","status":"running","pid":0,"bundle":"."}}"#;
        let crun = oci::parse_process_state(crun.as_bytes()).unwrap();
        let no_pid = Facts { pid_ns: None, ..OK };
        assert_eq!(take(&crun, &no_pid, 1, &served(1)), Ok(Taken { ns: 7, container: "web".into(), attach: None }));
        assert_eq!(take(&crun, &no_pid, 1, &after_restart), Err(Refusal::UnknownExec("web".into())));
        assert_eq!(take(&crun, &no_pid, 1, &served(MAX_PER_NAMESPACE)), Err(Refusal::TooManyListeners(7)));
        // A process of a namespace not served, naming a served container.
        let elsewhere = Served { namespaces: [(8, 1)].into(), containers: [("web".into(), 8)].into() };
        assert_eq!(take(&exec, &OK, 1, &elsewhere), Err(Refusal::ContainerServed("web".into())));
    }

    #[test]
    fn every_other_listener_is_refused_with_the_reason() {
        let m = message("web", 40, r#"["seccompFd"]"#);
        let second = message("web", 40, r#"["other","seccompFd"]"#);
        let host = 1;
        let none = Served::default();
        let cases = [
            (&m, Facts { fds: 0, ..OK }, &none, Refusal::NoFd { index: 0, fds: 0 }),
            (&second, OK, &none, Refusal::NoFd { index: 1, fds: 1 }),
            (&m, Facts { is_listener: false, ..OK }, &none, Refusal::NotListener),
            (&m, Facts { pid_ns: None, ..OK }, &none, Refusal::NoProcess(40)),
            (&m, Facts { pid_ns: Some(host), ..OK }, &none, Refusal::HostNamespace(40)),
        ];
        for (m, f, served, want) in cases {
            assert_eq!(take(m, &f, host, served), Err(want));
        }
        let same_ns = Served { namespaces: [(7, 1)].into(), ..Served::default() };
        assert_eq!(take(&m, &OK, host, &same_ns), Err(Refusal::NamespaceServed(7)));
        let same_id = Served { containers: [("web".into(), 9)].into(), ..Served::default() };
        let e = take(&m, &OK, host, &same_id).unwrap_err();
        assert_eq!(e.to_string(), "a listener of container \"web\" is served already");
    }

    /// A container's init's message with `annotations`.
    fn annotated(id: &str, annotations: &str) -> oci::Listener {
        let m = format!(
            r#"{{"ociVersion":"1.0.2","fds":["seccompFd"],"pid":40,"state":{{"ociVersion":"1.0.2","id":"{id}","status":"creating","pid":40,"bundle":"/b","annotations":{annotations}}}}}"#
        );
        oci::parse_process_state(m.as_bytes()).unwrap()
    }

    #[test]
    fn a_container_that_asked_for_devns_is_to_be_attached_by_its_init_s_listener_alone() {
        let none = Served::default();
        let asked = annotated("web", r#"{"devns.io/enable":"true","devns.io/devices":"loop-control,c:10:200"}"#);
        let want = hook::Wanted { name: "web".into(), devices: vec!["loop-control".into(), "c:10:200".into()] };
        assert_eq!(take(&asked, &OK, 1, &none).unwrap().attach, Some(want));
        let named = annotated("web", r#"{"devns.io/enable":"true","devns.io/name":"builder"}"#);
        assert_eq!(take(&named, &OK, 1, &none).unwrap().attach.unwrap().name, "builder");
        // Not asked (or not exactly): served, never attached.
        for a in [r#"{}"#, r#"{"devns.io/enable":"TRUE"}"#, r#"{"devns.io/enable":"1"}"#] {
            assert_eq!(take(&annotated("web", a), &OK, 1, &none).unwrap().attach, None, "{a}");
        }
        // Asked with a bad ask: refused, with the annotation's reason.
        let bad = annotated("web", r#"{"devns.io/enable":"true","devns.io/name":"a:b"}"#);
        let e = take(&bad, &OK, 1, &none).unwrap_err();
        assert!(matches!(e, Refusal::Asked(_)), "{e:?}");
        assert!(e.to_string().contains("devns.io/name"), "{e}");
        // An exec's listener never attaches: its container's init did.
        let served = Served { namespaces: [(7, 1)].into(), containers: [("web".into(), 7)].into() };
        let m = r#"{"ociVersion":"1.0.2","fds":["seccompFd"],"pid":41,"state":{"ociVersion":"1.0.2","id":"web","status":"running","pid":40,"bundle":"/b","annotations":{"devns.io/enable":"true"}}}"#;
        let exec = oci::parse_process_state(m.as_bytes()).unwrap();
        assert_eq!(take(&exec, &OK, 1, &served).unwrap().attach, None);
    }

    #[test]
    fn a_thread_s_process_is_its_tgid() {
        assert_eq!(thread_group(b"Name:\tsh\nTgid:\t900\nPid:\t901\n"), Some(900));
        assert_eq!(thread_group(b"Tgid:\t 7 \n"), Some(7));
        for bad in
            [&b""[..], b"Pid:\t901\n", b"Tgid:\t\n", b"Tgid:\tx\n", b"Tgid:\t0\n", b"Tgid:\t-1\n", b"NStgid:\t5\n"]
        {
            assert_eq!(thread_group(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_message_s_own_errors_read_as_refusals() {
        let e = oci::parse_process_state(b"{").unwrap_err();
        assert!(Refusal::from(e).to_string().starts_with("container process state is not valid"));
        assert_eq!(Refusal::TooLarge.to_string(), format!("it sent more than {MAX_PROCESS_STATE_BYTES} bytes"));
    }
}
