//! A counter that the hot path bumps without a read-modify-write.
//!
//! Counting every admission with `fetch_add` would add one locked
//! instruction to a path that is only four of them long. Instead each of
//! the first `SHARDS` threads to touch any limiter gets a shard of its own,
//! which only it writes (a load and a store); later threads share one
//! `fetch_add` counter. Reading sums the shards.

use crate::loom::{AtomicU64, Ordering};

const SHARDS: usize = 64;

/// Pads a shard to its own cache line so threads do not share one.
#[repr(align(64))]
struct Shard(AtomicU64);

pub(crate) struct Counter {
    shards: Box<[Shard]>,
    shared: AtomicU64,
}

#[cfg(not(admit_loom))]
fn thread_index() -> usize {
    use std::cell::Cell;
    use std::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        // A const initialiser keeps the access to a plain TLS load.
        static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    INDEX.with(|i| {
        let mut index = i.get();
        if index == usize::MAX {
            index = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Past usize::MAX - 1 threads, everyone shares (never in practice).
            i.set(index.min(usize::MAX - 1));
        }
        index
    })
}

#[cfg(admit_loom)]
fn thread_index() -> usize {
    // Under loom every thread takes the shared path, which loom can check.
    usize::MAX
}

impl Counter {
    pub(crate) fn new() -> Counter {
        Counter {
            shards: (0..SHARDS).map(|_| Shard(AtomicU64::new(0))).collect(),
            shared: AtomicU64::new(0),
        }
    }

    pub(crate) fn add_one(&self) {
        match self.shards.get(thread_index()) {
            // Only this thread writes this shard, so a load and a store
            // cannot lose an update; readers may see it a moment late.
            Some(Shard(n)) => n.store(n.load(Ordering::Relaxed) + 1, Ordering::Relaxed),
            None => {
                self.shared.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub(crate) fn sum(&self) -> u64 {
        self.shards
            .iter()
            .map(|Shard(n)| n.load(Ordering::Relaxed))
            .sum::<u64>()
            + self.shared.load(Ordering::Relaxed)
    }
}
