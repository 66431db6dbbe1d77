//! Dead namespaces' loop devices still open somewhere: the state
//! directory's pending set, which every keeper retries and which bounds
//! what devns makes for anybody.

use super::LoopHost;
use crate::store::{Store, StoreError};
use devns_core::loopctl::{self, LoopDev};
use rustix::io::Errno;

/// Records `loops` (dead namespaces' devices still open somewhere) in the
/// state directory's pending set, which every keeper retries
/// ([`retry_pending`]) and which bounds what devns makes for anybody
/// ([`loopctl::MAX_PENDING`]), until they are removed. The caller holds
/// the writers' lock.
pub fn pend(store: &Store, loops: &[LoopDev]) -> Result<(), StoreError> {
    let mut pending = store.read_pending()?;
    loopctl::add_pending(&mut pending, loops);
    for l in loops {
        tracing::warn!(dev = %l.dev, "a dead namespace's loop device is still open somewhere: pending removal");
    }
    store.write_pending(&pending)
}

/// One try at removing each pending device; how many are left. The caller
/// holds the writers' lock.
pub fn retry_pending(store: &Store, host: Option<&LoopHost>) -> Result<usize, StoreError> {
    let pending = store.read_pending()?;
    let Some(host) = host.filter(|_| !pending.is_empty()) else { return Ok(pending.len()) };
    let left: Vec<LoopDev> = pending
        .iter()
        .copied()
        .filter(|l| match host.remove_pending(*l) {
            Ok(()) => {
                tracing::info!(dev = %l.dev, "a dead namespace's pending loop device is removed");
                false
            }
            Err(e) => {
                if e != Errno::BUSY {
                    tracing::debug!(dev = %l.dev, error = %e, "cannot remove a pending loop device yet");
                }
                true
            }
        })
        .collect();
    if left.len() != pending.len() {
        store.write_pending(&left)?;
    }
    Ok(left.len())
}
