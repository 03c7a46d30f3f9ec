//! A counter that the hot path bumps without a read-modify-write.
//!
//! Counting every admission with `fetch_add` would add one locked
//! instruction to a path that is only four of them long. Instead each
//! thread that touches any limiter borrows one of `SHARDS` shards, which
//! only it writes (a load and a store), and gives it back when it exits, so
//! that programs whose threads come and go (a blocking pool, a test
//! harness) keep finding free shards. While all shards are borrowed, further
//! threads share one `fetch_add` counter. Reading sums the shards.

use crate::loom::{AtomicU64, Ordering};

const SHARDS: usize = 64;

/// Pads a shard to its own cache line so threads do not share one.
#[repr(align(64))]
struct Shard(AtomicU64);

pub(crate) struct Counter {
    shards: Box<[Shard]>,
    shared: AtomicU64,
}

/// The shard this thread writes, or `usize::MAX` for the shared counter.
#[cfg(not(admit_loom))]
fn thread_index() -> usize {
    use std::sync::atomic::AtomicU64;

    /// Bit `i` set: shard `i` is borrowed by a live thread.
    static BORROWED: AtomicU64 = AtomicU64::new(0);

    /// A borrowed shard index, given back when its thread exits.
    struct Borrowed(usize);

    impl Borrowed {
        fn take() -> Borrowed {
            let mut cur = BORROWED.load(Ordering::Relaxed);
            loop {
                if cur == u64::MAX {
                    return Borrowed(usize::MAX);
                }
                let i = (!cur).trailing_zeros() as usize;
                // Acquire: pairs with the Release of the thread that gave
                // this shard back, so its last store to the shard is what
                // this thread's first load sees.
                match BORROWED.compare_exchange_weak(
                    cur,
                    cur | 1 << i,
                    Ordering::Acquire,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return Borrowed(i),
                    Err(actual) => cur = actual,
                }
            }
        }
    }

    impl Drop for Borrowed {
        fn drop(&mut self) {
            if self.0 < SHARDS {
                BORROWED.fetch_and(!(1 << self.0), Ordering::Release);
            }
        }
    }

    thread_local! {
        static INDEX: Borrowed = Borrowed::take();
    }
    // While the thread is being torn down its index may already be gone:
    // count on the shared counter then.
    INDEX.try_with(|b| b.0).unwrap_or(usize::MAX)
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
