//! A counter that the hot path bumps without a read-modify-write.
//!
//! Counting every admission with `fetch_add` would add one locked
//! instruction to a path that is only four of them long. Instead each
//! thread writes the entry of its own shard (`shard.rs`) with a load and a
//! store; threads without a shard share one `fetch_add` counter. Reading
//! sums the shards.

use crate::loom::{AtomicU64, Ordering};
use crate::shard::{thread_index, SHARDS};

/// Pads a shard to its own pair of cache lines so threads do not share
/// one (`shard::SPACING`).
#[repr(align(128))]
struct Shard(AtomicU64);
const _: () = assert!(std::mem::align_of::<Shard>() == crate::shard::SPACING);

pub(crate) struct Counter {
    shards: Box<[Shard]>,
    shared: AtomicU64,
}

impl Counter {
    pub(crate) fn new() -> Counter {
        Counter {
            shards: (0..SHARDS).map(|_| Shard(AtomicU64::new(0))).collect(),
            shared: AtomicU64::new(0),
        }
    }

    #[inline(always)]
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

#[cfg(all(test, not(admit_loom)))]
mod tests {
    use super::*;

    #[test]
    fn threads_that_come_and_go_keep_getting_shards_and_lose_no_count() {
        let counter = std::sync::Arc::new(Counter::new());
        // Far more threads over time than there are shards, one after the
        // other: each finds a shard given back by an earlier one.
        for _ in 0..4 * SHARDS {
            let c = counter.clone();
            let index = std::thread::spawn(move || {
                c.add_one();
                c.add_one();
                thread_index()
            })
            .join()
            .unwrap();
            assert!(index < SHARDS, "a short-lived thread fell back to sharing");
        }
        assert_eq!(counter.sum(), 8 * SHARDS as u64);
        assert_eq!(counter.shared.load(Ordering::Relaxed), 0);
    }
}
