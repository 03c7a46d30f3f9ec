//! The connections a server has handed out, upgraded ones included, so a
//! drain can wait for them and, past its deadline, revoke them.
//!
//! A plain `Mutex` is enough here: it is taken twice per connection (admit
//! and close) and once per drain, never per request or per read, and never
//! held across an await. The lock-free rule (I5) is the core crate's.

use admit::{LeaseId, Limiter};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::Notify;

/// Every live connection's lease, keyed by a serial number. Touched twice
/// per connection (admit, close), never per request.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    live: Mutex<HashMap<u64, LeaseId>>,
    next: AtomicU64,
    emptied: Notify,
}

impl Registry {
    /// Registers a connection; it stays registered until every holder of
    /// the returned entry (the connection task and its IO, which may outlive
    /// the task inside an upgraded stream) has dropped it.
    pub(crate) fn register(self: &Arc<Self>, lease: LeaseId) -> Arc<Entry> {
        // Relaxed: the number only has to be unique.
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(key, lease);
        Arc::new(Entry {
            key,
            registry: self.clone(),
            seen_request: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, LeaseId>> {
        // The map stays consistent even if a holder panicked mid-insert.
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Resolves once no connection is registered.
    pub(crate) async fn emptied(&self) {
        loop {
            let notified = self.emptied.notified();
            let mut notified = std::pin::pin!(notified);
            // Enabled before the check, so a removal in between is not missed.
            notified.as_mut().enable();
            if self.lock().is_empty() {
                return;
            }
            notified.await;
        }
    }

    /// Revokes every registered lease. Returns how many were revoked.
    pub(crate) fn revoke_all(&self, limiter: &Limiter) -> usize {
        let leases: Vec<LeaseId> = self.lock().values().copied().collect();
        leases.into_iter().filter(|&id| limiter.revoke(id)).count()
    }
}

/// One registered connection.
#[derive(Debug)]
pub(crate) struct Entry {
    key: u64,
    registry: Arc<Registry>,
    /// Set when the connection's first request reached the service.
    pub(crate) seen_request: AtomicBool,
}

impl Drop for Entry {
    fn drop(&mut self) {
        let mut live = self.registry.lock();
        live.remove(&self.key);
        if live.is_empty() {
            drop(live);
            self.registry.emptied.notify_waiters();
        }
    }
}
