//! The API's requests: those that read answer from the engine's model; those
//! that change something are the engine's changes, acknowledged once done.

use super::Daemon;
use super::conn::{Peer, Reply};
use anyhow::{Result, anyhow, bail};
use devns_core::DevId;
use devns_core::api::{self, DeviceRow, NsRef, NsRow, Request, ViewRow};
use devns_core::model::Change;
use devns_core::registry::{NsId, Owner};
use rustix::fs::FileType;
use serde_json::{Value, json};

impl Daemon {
    pub(super) fn handle_line(&mut self, conn: u64, line: &[u8]) -> Reply {
        let req = match api::parse_request(line.trim_ascii()) {
            Ok(r) => r,
            Err(e) => return Reply::err(e),
        };
        let peer = self.conns[&conn].peer;
        let mutating = matches!(
            req,
            Request::Assign { .. }
                | Request::Release { .. }
                | Request::Global { .. }
                | Request::Attach { .. }
                | Request::Detach { .. }
                | Request::Expect { .. }
                | Request::Run { .. }
                | Request::Listen {}
        );
        if mutating && !peer.is_admin() {
            if self.conn_log.allow() {
                tracing::warn!(uid = peer.uid, pid = peer.pid, "refused a change from a caller that is not host root");
            }
            return Reply::err("permission denied: only host root may change devns's state");
        }
        let result = match req {
            Request::Ls {} => Ok(self.ls(peer.ns, peer.is_admin())),
            Request::NsLs {} => Ok(self.ns_ls(peer.ns, peer.is_admin())),
            Request::View { ns } => self.view_tree(&ns, peer.ns, peer.is_admin()),
            Request::Assign { device, to } => self.assign(&device, &to),
            Request::Release { device } => self.release(&device),
            Request::Global { device, on } => self.global(&device, on),
            Request::Attach { pid, name, at, root, devices, runtime, container } => {
                let spec = crate::engine::Attach {
                    pid,
                    name: name.as_deref(),
                    at: at.as_deref().unwrap_or("/dev"),
                    root: root.as_deref(),
                    devices: &devices,
                    runtime,
                    container: container.as_deref(),
                    ns: None,
                    keep_covered: false,
                };
                let r = self.engine.attach(&spec);
                if let Ok(v) = &r
                    && let Some(id) = v["id"].as_u64()
                {
                    self.watch_members(NsId(id));
                }
                r
            }
            Request::Detach { name, container } => {
                let r = self.engine.detach(&name, &container);
                if let Ok(v) = &r
                    && let Some(id) = v["id"].as_u64()
                {
                    self.forget_members(NsId(id));
                }
                r
            }
            Request::Expect { name, container, devices } => self.expect(peer, name, container, devices),
            Request::Join { name, root } => self.join(peer, &name, &root),
            Request::Events {} => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.subscribed = true;
                }
                Ok(json!("subscribed"))
            }
            Request::Listen {} => {
                let Some(c) = self.conns.get_mut(&conn) else { return Reply::err("gone") };
                if c.fds.is_empty() {
                    return Reply::err("bad request: listen needs a seccomp listener fd passed with the request");
                }
                let l = c.fds.remove(0);
                if !devns_sys::seccomp::is_listener(&l) {
                    return Reply::err("bad request: the fd passed with listen is not a seccomp listener");
                }
                let l = match crate::agent::Listener::new(l) {
                    Ok(l) => l,
                    Err(e) => return Reply::err(format!("cannot serve the seccomp listener: {e}")),
                };
                // Tagged with the namespace this connection ran, if any.
                let ns = c.ran;
                let _ = self.serve_listener(l, ns, None, None);
                Ok(json!("listening"))
            }
            Request::Run { name, devices } => {
                let Some(c) = self.conns.get_mut(&conn) else { return Reply::err("gone") };
                if c.fds.is_empty() {
                    return Reply::err("bad request: run needs the process's pidfd passed with the request");
                }
                let pidfd = c.fds.remove(0);
                return match self.engine.provision(pidfd, name.as_deref(), &devices) {
                    Ok((v, fds)) => {
                        if let Some(id) = v["id"].as_u64() {
                            if let Some(c) = self.conns.get_mut(&conn) {
                                c.ran = id;
                            }
                            self.watch_members(NsId(id));
                        }
                        Reply { fds, ..Reply::ok(v) }
                    }
                    Err(e) => Reply::err(format!("{e:#}")),
                };
            }
        };
        match result {
            Ok(v) => Reply::ok(v),
            Err(e) => {
                if peer.is_admin() || self.conn_log.allow() {
                    tracing::info!(uid = peer.uid, pid = peer.pid, error = %format!("{e:#}"), "request refused");
                }
                Reply::err(format!("{e:#}"))
            }
        }
    }

    /// Host root's word, from LXC's pre-start hook: the container `name`
    /// joins from its autodev hook, whose monitor is this caller's parent
    /// (LXC runs the hook as the monitor's child).
    fn expect(&mut self, peer: Peer, name: String, container: String, devices: Vec<String>) -> Result<Value> {
        if !devns_core::hook::is_name(&name) {
            bail!("{name:?} is not a namespace name (1 to 64 bytes, no ':')");
        }
        if container.is_empty() || container.len() > 256 || container.chars().any(char::is_control) {
            bail!("container {container:?}: an id is 1 to 256 printable characters");
        }
        for d in &devices {
            self.device(d)?;
        }
        let chain = crate::host::ancestry(peer.pid, 2);
        let [_, monitor] = chain.as_slice() else {
            bail!("cannot read the parent of process {} (LXC's monitor)", peer.pid);
        };
        let now = std::time::Instant::now();
        let until = now + devns_core::expect::EXPECT_FOR;
        let monitor = monitor.keeper;
        self.expecting.expect(devns_core::expect::Expected { name, container, devices, monitor, until }, now)?;
        Ok(json!({ "expected": true, "monitor": monitor.pid }))
    }

    /// An LXC container's autodev hook, as its root: taken on its
    /// monitor's word alone, and once.
    fn join(&mut self, peer: Peer, name: &str, root: &str) -> Result<Value> {
        let chain = crate::host::ancestry(peer.pid, devns_core::expect::MAX_ANCESTRY + 1);
        // The pid read is the peer's still (not another process's since):
        // in the user namespace its connection's pidfd named.
        if chain.first().map(|p| NsId(p.user_ns)) != Some(peer.ns.unwrap_or(self.host_ns)) {
            bail!("the joining process {} is gone", peer.pid);
        }
        let lineage = devns_core::expect::lineage(&chain, self.host_ns.0)?;
        let now = std::time::Instant::now();
        let word = self.expecting.take(name, lineage.monitor, now)?;
        if !crate::host::keeper_alive(&lineage.init) {
            bail!("the container's init (process {}) is gone", lineage.init.pid);
        }
        let spec = crate::engine::Attach {
            pid: lineage.init.pid,
            name: Some(&word.name),
            at: "/dev",
            root: Some(root),
            devices: &word.devices,
            runtime: true,
            container: Some(&word.container),
            ns: peer.ns,
            keep_covered: true,
        };
        let v = self.engine.attach(&spec)?;
        if let Some(id) = v["id"].as_u64() {
            self.watch_members(NsId(id));
        }
        Ok(v)
    }

    fn ls(&self, ns: Option<NsId>, admin: bool) -> Value {
        let reg = self.engine.model().registry();
        let rows: Vec<DeviceRow> = reg
            .devices()
            .filter(|d| admin || ns.is_some_and(|n| reg.owner(d.id) == Owner::Ns(n)))
            .map(|d| DeviceRow {
                name: d.name.clone(),
                kind: d.id.kind.letter(),
                major: d.id.major,
                minor: d.id.minor,
                owner: reg.owner(d.id).to_string(),
                global: reg.is_global(d.id),
            })
            .collect();
        json!(rows)
    }

    fn ns_ls(&self, ns: Option<NsId>, admin: bool) -> Value {
        let model = self.engine.model();
        let reg = model.registry();
        let rows: Vec<NsRow> = model
            .namespaces()
            .filter(|(id, _)| admin || ns == Some(*id))
            .map(|(id, n)| {
                let pids: Vec<i32> = n.members.iter().map(|m| m.pid).chain(n.keeper.map(|k| k.pid)).collect();
                let own: Vec<&devns_core::Device> =
                    model.view_devices(id).into_iter().filter(|d| !reg.is_global(d.id)).collect();
                NsRow {
                    id: id.to_string(),
                    name: n.name.clone(),
                    mounts: own_mounts(&pids, &own),
                    devices: own.iter().map(|d| d.name.clone()).collect(),
                    pids,
                }
            })
            .collect();
        json!(rows)
    }

    /// A namespace by what a user typed; it must be under devns.
    fn find_ns(&self, text: &str) -> Result<NsId> {
        let model = self.engine.model();
        let id = match NsRef::parse(text)? {
            NsRef::Id(n) => NsId(n),
            NsRef::Pid(p) => crate::host::user_ns_of(p).map_err(|e| anyhow!("no process {p}: {e}"))?,
            NsRef::Name(n) => model.by_name(&n).ok_or_else(|| anyhow!("unknown namespace {n:?}"))?,
        };
        if model.namespace(id).is_none() {
            bail!("namespace {id} is not under devns (bring it in with devns attach)");
        }
        Ok(id)
    }

    fn view_tree(&self, text: &str, peer_ns: Option<NsId>, admin: bool) -> Result<Value> {
        let id = if admin {
            self.find_ns(text)?
        } else {
            // Anyone else may name only its own namespace: whatever else it
            // names (another's name, id or process, or nothing at all) gets
            // one and the same answer, which tells it nothing.
            NsRef::parse(text)?;
            self.find_ns(text).ok().filter(|id| peer_ns == Some(*id)).ok_or_else(|| no_such_ns(text))?
        };
        let view = self
            .engine
            .kept(id)
            .and_then(|n| n.view.as_ref())
            .ok_or_else(|| anyhow!("namespace {id} has no view managed by the daemon"))?;
        let mut rows: Vec<ViewRow> = crate::view::scan(view, true)?
            .into_iter()
            // A full scan stats every entry it reports.
            .filter_map(|s| Some((s.stat?, s.actual, s.target)))
            .map(|(stat, actual, target)| {
                let ft = FileType::from_raw_mode(stat.st_mode);
                let kind = match ft {
                    FileType::Directory => "dir",
                    FileType::CharacterDevice => "char",
                    FileType::BlockDevice => "block",
                    FileType::Symlink => "symlink",
                    FileType::RegularFile => "file",
                    _ => "other",
                };
                let dev = match actual.found {
                    devns_core::view::Found::Node(d) => Some(d.to_string()),
                    _ => None,
                };
                ViewRow {
                    path: actual.path,
                    kind: kind.into(),
                    dev,
                    mode: stat.st_mode & 0o7777,
                    uid: stat.st_uid,
                    gid: stat.st_gid,
                    target,
                }
            })
            .collect();
        rows.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(json!(rows))
    }

    fn device(&self, text: &str) -> Result<(DevId, String)> {
        let id = self.engine.resolve(text)?;
        Ok((id, self.engine.model().registry().device(id).map(|d| d.name.clone()).unwrap_or_default()))
    }

    // Each change below: the engine applies it to the model, reconciles
    // the views and maps it concerns (the node is usable from here on),
    // saves, and only then is it acknowledged; else it is undone.
    fn assign(&mut self, device: &str, to: &str) -> Result<Value> {
        let (dev, name) = self.device(device)?;
        let ns = self.find_ns(to)?;
        self.engine
            .locked(|e| e.commit(Change::Assign { dev, to: ns }))
            .map_err(|e| refused_or(e, || format!("cannot give {name} to {ns}")))?;
        Ok(json!({ "device": dev.to_string(), "owner": ns.to_string() }))
    }

    fn release(&mut self, device: &str) -> Result<Value> {
        let (dev, name) = self.device(device)?;
        let owner = self.engine.model().registry().owner(dev);
        let what = || format!("cannot take {name} from {}", owner);
        self.engine.locked(|e| e.commit(Change::Release { dev })).map_err(|e| refused_or(e, what))?;
        Ok(json!({ "device": dev.to_string(), "owner": "host" }))
    }

    fn global(&mut self, device: &str, on: bool) -> Result<Value> {
        let (dev, _) = self.device(device)?;
        self.engine.locked(|e| e.commit(Change::Global { dev, on }))?;
        Ok(json!({ "device": dev.to_string(), "global": on }))
    }
}

/// A refusal of the model as it is; any other failure (a view or map that
/// could not follow) with what was being done.
fn refused_or(e: anyhow::Error, doing: impl FnOnce() -> String) -> anyhow::Error {
    if e.downcast_ref::<devns_core::state::ClaimError>().is_some() { e } else { e.context(doing()) }
}

/// What a caller other than host root hears of a namespace that is not
/// its own.
fn no_such_ns(text: &str) -> anyhow::Error {
    anyhow!("no such namespace {text:?}")
}

/// A namespace's mounts of its own block devices, as the first of its
/// processes `pids` that is still there sees them.
fn own_mounts(pids: &[i32], own: &[&devns_core::Device]) -> Vec<devns_core::api::MountRow> {
    let blocks: Vec<&devns_core::Device> =
        own.iter().copied().filter(|d| d.id.kind == devns_core::Kind::Block).collect();
    if blocks.is_empty() {
        return Vec::new();
    }
    let Some(text) = pids.iter().find_map(|p| std::fs::read(format!("/proc/{p}/mountinfo")).ok()) else {
        return Vec::new();
    };
    devns_core::blockmount::own_mounts(devns_core::mountinfo::mounts(&text), &blocks)
}
