//! The kernel's uevents, taken in by the engine: a device joins or leaves
//! the model, and the views that hold it (or should) follow.

use super::Engine;
use devns_core::model::Change;
use devns_core::uevent::Action;
use rustix::fd::OwnedFd;

impl Engine {
    /// Reads every queued event of `sock`; a lost one means a rescan.
    pub fn drain_uevents(&mut self, sock: &OwnedFd) {
        loop {
            match crate::uevents::drain(sock, |buf| self.on_uevent(buf)) {
                crate::uevents::Drained::Empty => return,
                crate::uevents::Drained::Lost => {
                    tracing::error!("uevent queue overflowed: rescanning sysfs");
                    self.rescan();
                }
            }
        }
    }

    /// One kernel uevent.
    pub fn on_uevent(&mut self, buf: &[u8]) {
        let ev = match devns_core::uevent::parse_netlink(buf) {
            Ok(ev) => ev,
            Err(e) => {
                tracing::debug!(error = %e, "ignoring a uevent");
                return;
            }
        };
        let Some(dev) = ev.dev else { return };
        let kind = dev.kind;
        match ev.action {
            Action::Add | Action::Change => {
                let reg = self.model.registry();
                let disk_named = |n: &str| {
                    reg.devices().find(|d| d.name == n && d.id.kind == kind && !d.is_partition()).map(|d| d.id)
                };
                let dev_root = std::path::Path::new("/dev");
                let Some(d) = crate::discover::device_from_event(&ev, kind, dev_root, disk_named) else { return };
                if d.id != dev {
                    return;
                }
                self.observe(Change::DeviceAdd { dev: d }, Some(buf));
            }
            Action::Remove => self.observe(Change::DeviceRemove { dev, diskseq: ev.diskseq }, Some(buf)),
            Action::Other => {}
        }
    }

    /// After lost uevents: the model's devices from sysfs again, all views
    /// reconciled.
    pub fn rescan(&mut self) {
        match crate::discover::host_devices() {
            Ok(devices) => self.observe(Change::Rescan { devices }, None),
            Err(e) => tracing::error!(error = %e, "rescan failed"),
        }
    }
}
