//! Startup and restart, for every keeper: the records of namespaces that
//! died meanwhile are freed (their loop devices, cgroups and records, whose
//! ever they were); the living are taken into the model; the daemon watches
//! its own again, finds their views and device policies, and reconciles
//! every view with the model.

use super::kernel::{self, adopt_from_proc, read_maps, reopen_members, uevent_sender};
use super::{Engine, Kept, Role};
use crate::store::Records;
use anyhow::Result;
use devns_core::model::{Change, Scope};
use devns_core::state::NsRecord;
use std::collections::BTreeSet;
use std::path::Path;

impl Engine {
    /// Takes in the state directory (under the writers' lock).
    pub fn recover(&mut self) -> Result<()> {
        let taken = self.holding(Engine::take_in);
        // Their records are gone already (nobody else frees them too); what
        // they hold on the host is undone outside the lock, as it may wait.
        for r in taken? {
            self.free(r);
        }
        if self.role == Role::Daemon {
            self.recover_daemon()?;
        }
        Ok(())
    }

    /// The records taken in; those of namespaces that are gone, removed.
    fn take_in(&mut self) -> Result<Vec<NsRecord>> {
        let records = self.store.read_records(false)?;
        let global = self.store.read_global()?;
        let mut live = Vec::new();
        let mut dead = Vec::new();
        for (key, r) in records {
            let own = self.role == Role::Daemon && r.keeper.is_none();
            match r.id {
                Some(id) if own => {
                    let members = reopen_members(&r.members);
                    let cgroup = r.cgroup.as_ref().map(|c| Path::new(&c.path));
                    let members = if members.is_empty() { adopt_from_proc(id, cgroup, &[]) } else { members };
                    if members.is_empty() {
                        tracing::info!(ns = %id, "namespace died while the daemon was down: releasing its devices");
                        dead.push((key, r));
                        continue;
                    }
                    let (uids, gids) = read_maps(members[0].keeper.pid)?;
                    let uevents = uevent_sender(members[0].keeper.pid);
                    self.kept.insert(
                        id,
                        Kept { view: None, tmp: None, uids, gids, members, uevents, access: None, covered: None },
                    );
                    live.push((key, r));
                }
                // A stand-alone run's, or (seen by a run) the daemon's: once
                // nothing of it is left (what outlived a run's keeper is
                // killed first), it is freed; else it stays as it is.
                _ if crate::host::may_free(&r) => dead.push((key, r)),
                // A record without an id whose keeper lives: an older
                // devns's run, still starting; it stays its own.
                None => {}
                Some(_) => live.push((key, r)),
            }
        }
        let (mine, others): (Records, Records) = live.iter().cloned().partition(|(_, r)| self.mine(r.keeper));
        (self.disk, self.others, self.others_read) = (mine, others, true);
        self.global_disk = global.clone();
        let records: Vec<NsRecord> = live.into_iter().map(|(_, r)| r).collect();
        self.observe(Change::Records { records, except: BTreeSet::new(), global: Some(global) }, None);
        let gone: Records = dead.into_iter().collect();
        self.store.write_changes(&gone, &Records::new(), |_| true)?;
        Ok(gone.into_values().collect())
    }

    /// The daemon's own namespaces after a restart: members recorded, device
    /// policies found again, views found (or made anew), all reconciled.
    fn recover_daemon(&mut self) -> Result<()> {
        let ids = self.kept_ids();
        for id in &ids {
            let members = self.kept[id].members.iter().map(|m| m.keeper).collect();
            let _ = self.model.apply(Change::Members { ns: *id, members });
            let rec = self.model.namespace(*id).and_then(|n| n.cgroup.clone());
            let access = rec.and_then(|c| self.recover_policy(*id, &c));
            self.kept.get_mut(id).expect("kept").access = access;
        }
        self.save(&ids)?;
        let views = self.views_dir.clone().expect("the daemon mounts its views");
        kernel::unmount_orphan_views(&views, &ids);
        for id in ids {
            match kernel::open_mounted_view(&views, id) {
                Some(v) => self.kept.get_mut(&id).expect("kept").view = Some(v),
                None => {
                    tracing::warn!(ns = %id, "view not mounted on the host; making a new one (the container keeps the old)");
                    if let Err(e) = self.make_view(id) {
                        tracing::error!(ns = %id, error = %e, "cannot make a view");
                    }
                }
            }
            let _ = self.reconcile(id, &Scope::All);
        }
        Ok(())
    }
}
