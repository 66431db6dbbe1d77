//! Requests and uevents: each decides from the registry, saves, then runs
//! the reconcile step on the views it touched.

use super::Daemon;
use super::conn::Reply;
use anyhow::{Result, anyhow, bail};
use devns_core::DevId;
use devns_core::api::{self, DeviceRow, Event, NsRef, NsRow, Request, ViewRow};
use devns_core::registry::{NsId, Owner};
use devns_core::uevent::Action;
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
            Request::Attach { pid, name, at } => self.attach(pid, name.as_deref(), at.as_deref().unwrap_or("/dev")),
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
                let token = self.watch(l.fd(), super::Target::Agent(0));
                self.targets.insert(token, super::Target::Agent(token));
                self.listeners.insert(token, l);
                Ok(json!("listening"))
            }
            Request::Run { name, devices } => {
                let Some(c) = self.conns.get_mut(&conn) else { return Reply::err("gone") };
                if c.fds.is_empty() {
                    return Reply::err("bad request: run needs the process's pidfd passed with the request");
                }
                let pidfd = c.fds.remove(0);
                return match self.provision(pidfd, name.as_deref(), &devices) {
                    Ok((v, fds)) => Reply { fds, ..Reply::ok(v) },
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

    fn ls(&self, ns: Option<NsId>, admin: bool) -> Value {
        let rows: Vec<DeviceRow> = self
            .registry
            .devices()
            .filter(|d| admin || ns.is_some_and(|n| self.registry.owner(d.id) == Owner::Ns(n)))
            .map(|d| DeviceRow {
                name: d.name.clone(),
                kind: d.id.kind.letter(),
                major: d.id.major,
                minor: d.id.minor,
                owner: self.registry.owner(d.id).to_string(),
                global: self.registry.is_global(d.id),
            })
            .collect();
        json!(rows)
    }

    fn ns_ls(&self, ns: Option<NsId>, admin: bool) -> Value {
        let rows: Vec<NsRow> = self
            .state
            .namespaces
            .iter()
            .filter_map(|r| Some((r, r.id?)))
            .filter(|(_, id)| admin || ns == Some(*id))
            .map(|(r, id)| NsRow {
                id: id.to_string(),
                name: r.name.clone(),
                pids: r.members.iter().map(|m| m.pid).chain(r.keeper.map(|k| k.pid)).collect(),
                devices: self
                    .registry
                    .view_devices(id)
                    .iter()
                    .filter(|d| !self.registry.is_global(d.id))
                    .map(|d| d.name.clone())
                    .collect(),
            })
            .collect();
        json!(rows)
    }

    /// A namespace by what a user typed; it must be under devns.
    fn find_ns(&self, text: &str) -> Result<NsId> {
        let id = match NsRef::parse(text)? {
            NsRef::Id(n) => NsId(n),
            NsRef::Pid(p) => crate::host::user_ns_of(p).map_err(|e| anyhow!("no process {p}: {e}"))?,
            NsRef::Name(n) => self
                .state
                .namespaces
                .iter()
                .find(|r| r.name.as_deref() == Some(n.as_str()))
                .and_then(|r| r.id)
                .ok_or_else(|| anyhow!("unknown namespace {n:?}"))?,
        };
        if self.state.by_id(id).is_none() {
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
            .nss
            .get(&id)
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
        let id = crate::discover::resolve(&self.registry, text)?;
        Ok((id, self.registry.device(id).map(|d| d.name.clone()).unwrap_or_default()))
    }

    /// Saves after a change the views already show; on failure undoes it
    /// (the caller gets an error, nothing was acknowledged).
    pub(super) fn commit(&mut self, ids: &[NsId], undo: impl FnOnce(&mut Self)) -> Result<()> {
        if let Err(e) = self.save_ns(ids) {
            undo(self);
            return Err(e);
        }
        Ok(())
    }

    // Each change below: check, apply to the registry, reconcile the views
    // (the node is usable from here on), save, and only then acknowledge.
    fn assign(&mut self, device: &str, to: &str) -> Result<Value> {
        let (dev, name) = self.device(device)?;
        let ns = self.find_ns(to)?;
        self.state.assign(dev, ns, &self.registry)?;
        self.registry.assign(dev, ns)?;
        let undo = move |d: &mut Self| {
            let _ = d.state.release(dev, &d.registry);
            d.registry.release(dev);
            d.reconcile(ns);
        };
        if let Err(e) = self.reconcile_newly_visible(ns, dev) {
            undo(self);
            return Err(e.context(format!("cannot give {name} to {ns}")));
        }
        self.commit(&[ns], undo)?;
        self.announce_device(ns, dev, "add");
        self.emit(Event::device("assign", &name, dev, Some(ns.to_string())));
        Ok(json!({ "device": dev.to_string(), "owner": ns.to_string() }))
    }

    fn release(&mut self, device: &str) -> Result<Value> {
        let (dev, name) = self.device(device)?;
        let ns = self.state.release(dev, &self.registry)?;
        self.registry.release(dev);
        let undo = move |d: &mut Self| {
            let _ = d.state.assign(dev, ns, &d.registry);
            let _ = d.registry.assign(dev, ns);
            d.reconcile(ns);
        };
        if let Err(e) = self.reconcile_checked(ns) {
            undo(self);
            return Err(e.context(format!("cannot take {name} from {ns}")));
        }
        self.commit(&[ns], undo)?;
        self.announce_device(ns, dev, "remove");
        self.emit(Event::device("release", &name, dev, Some(ns.to_string())));
        Ok(json!({ "device": dev.to_string(), "owner": "host" }))
    }

    fn global(&mut self, device: &str, on: bool) -> Result<Value> {
        let (dev, name) = self.device(device)?;
        if on && name == "loop-control" {
            bail!(
                "loop-control cannot be global: without devns mediating its ioctls it lets any container remove other namespaces' loop devices"
            );
        }
        let was = self.registry.is_global(dev);
        let had = self.state.global.insert(dev, on);
        self.registry.set_global(dev, on);
        self.reconcile_all();
        self.commit(&[], |d| {
            match had {
                Some(h) => d.state.global.insert(dev, h),
                None => d.state.global.remove(&dev),
            };
            d.registry.set_global(dev, was);
            d.reconcile_all();
        })?;
        self.emit(Event {
            event: "global".into(),
            device: Some(name),
            dev: Some(dev.to_string()),
            ns: None,
            global: Some(on),
        });
        Ok(json!({ "device": dev.to_string(), "global": on }))
    }

    /// A kernel uevent: the device joins or leaves the registry, and the
    /// views that hold it (or should) are reconciled.
    pub(super) fn on_uevent(&mut self, buf: &[u8]) {
        let ev = match devns_core::uevent::parse_netlink(buf) {
            Ok(ev) => ev,
            Err(e) => {
                tracing::debug!(error = %e, "ignoring a uevent");
                return;
            }
        };
        let Some(dev) = ev.dev else { return };
        let kind = dev.kind;
        // Sorted (a BTreeMap's keys), as `holders` wants.
        let all: Vec<NsId> = self.nss.keys().copied().collect();
        match ev.action {
            Action::Add | Action::Change => {
                let reg = &self.registry;
                let disk_named = |n: &str| {
                    reg.devices().find(|d| d.name == n && d.id.kind == kind && !d.is_partition()).map(|d| d.id)
                };
                let dev_root = std::path::Path::new("/dev");
                let Some(d) = crate::discover::device_from_event(&ev, kind, dev_root, disk_named) else { return };
                if d.id != dev {
                    return;
                }
                // A late event of an older disk with these numbers (removed
                // and made again since, maybe for another namespace) must not
                // describe the newer one: its `remove` would then take it.
                let known_seq = self.registry.device(dev).and_then(|k| k.diskseq);
                if !devns_core::device::removes_known(known_seq, d.diskseq) {
                    return;
                }
                let name = d.name.clone();
                let known = self.registry.device(dev).is_some();
                self.registry.add_device(d, &self.cfg.global);
                if let Some(on) = self.state.global.get(&dev).copied() {
                    self.registry.set_global(dev, on);
                }
                // Visible now (or still) at its path: nothing else in those
                // views can have changed with it.
                let holders = self.registry.holders(dev, &all);
                for ns in &holders {
                    let _ = self.reconcile_in(*ns, crate::bpf::Scope::Paths(&[name.as_str()]));
                }
                // The owner hears of its own device, as it would on a host:
                // the kernel's event as it came (global devices: nobody's).
                if let Owner::Ns(n) = self.registry.owner(dev)
                    && !self.registry.is_global(dev)
                {
                    self.announce(n, buf);
                }
                if !known {
                    let owner = self.registry.owner(dev);
                    self.emit(Event::device("add", &name, dev, owner.ns().map(|n| n.to_string())));
                }
            }
            Action::Remove => {
                if let Some(ns) = self.departed.remove(&dev) {
                    self.announce(ns, buf);
                }
                // The disk the registry knows by these numbers may be a newer
                // one than the event's (a loop device removed and made again
                // for another namespace before its `remove` came): that one
                // stays. Anything else is what the event says is gone, even
                // if the host made a new device with its numbers meanwhile:
                // that one is the host's, with an `add` of its own to come.
                let known = self.registry.device(dev).and_then(|d| d.diskseq);
                if !devns_core::device::removes_known(known, ev.diskseq) {
                    tracing::debug!(dev = %dev, "a late remove event: a newer disk has its numbers");
                    return;
                }
                let Some(name) = self.registry.device(dev).map(|d| d.name.clone()) else { return };
                let holders = self.registry.holders(dev, &all);
                let owner = self.registry.owner(dev);
                let was_global = self.registry.is_global(dev);
                self.registry.remove_device(dev);
                if self.state.namespaces.iter().any(|r| r.devices.contains(&dev))
                    || self.state.global.contains_key(&dev)
                {
                    self.state.forget_device(dev);
                    let _ = self.save();
                }
                // As the kernel does: its node goes, then the event. The node
                // at its own path goes first; the owner hears; then the sweep
                // of the rest of each view (for nodes a container made of it
                // elsewhere), which is the larger part.
                for ns in &holders {
                    let _ = self.reconcile_in(*ns, crate::bpf::Scope::Paths(&[name.as_str()]));
                }
                if let Owner::Ns(n) = owner
                    && !was_global
                {
                    self.announce(n, buf);
                }
                for ns in &holders {
                    self.reconcile(*ns);
                }
                self.emit(Event::device("remove", &name, dev, owner.ns().map(|n| n.to_string())));
            }
            Action::Other => {}
        }
    }
}

/// What a caller other than host root hears of a namespace that is not
/// its own.
fn no_such_ns(text: &str) -> anyhow::Error {
    anyhow!("no such namespace {text:?}")
}
