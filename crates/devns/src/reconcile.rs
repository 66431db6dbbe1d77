//! The one reconcile step of a namespace, for every keeper and every
//! change: its view, then its device map, both from the same plan.
//!
//! One error policy: each failure is logged and the first returned, so that
//! a change on someone's behalf is refused and undone (see
//! `engine::Engine::commit`) rather than acknowledged half-applied; a change
//! the kernel already made is carried as far as it goes.

use crate::bpf::AccessPolicy;
use devns_core::model::Scope;
use devns_core::view::ViewPlan;
use rustix::fd::BorrowedFd;

/// Brings `ns`'s view (when it has one here, within `scope`) and its
/// device map (when it has a policy) to `plan`.
pub fn view_and_map(
    ns: devns_core::NsId,
    view: Option<BorrowedFd<'_>>,
    access: Option<&mut AccessPolicy>,
    plan: &ViewPlan,
    visible: impl Fn(devns_core::DevId) -> bool,
    scope: &Scope,
) -> anyhow::Result<()> {
    let view = view.map_or(Ok(()), |v| {
        match scope {
            Scope::All => crate::view::reconcile(v, plan, visible),
            Scope::Paths(paths) => {
                let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
                crate::view::reconcile_paths(v, plan, visible, &paths)
            }
        }
        .map(drop)
        .map_err(anyhow::Error::from)
    });
    let map = access.map_or(Ok(()), |a| a.reconcile(plan).map(drop).map_err(anyhow::Error::from));
    for e in [&view, &map].into_iter().filter_map(|r| r.as_ref().err()) {
        tracing::error!(ns = %ns, error = %format!("{e:#}"), "reconcile failed");
    }
    view.and(map)
}
