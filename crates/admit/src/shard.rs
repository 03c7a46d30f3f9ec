//! Per-thread shards: each thread that touches any limiter borrows one of
//! `SHARDS` indices, which only it uses, and gives it back when it exits, so
//! that programs whose threads come and go (a blocking pool, a test harness)
//! keep finding free indices. A limiter keeps entries per index (a grant
//! counter, a cache of free lease slots, the slot it owns for tokens) that
//! only the borrowing thread writes, with plain loads and stores instead of
//! locked read-modify-writes (the owned slot also by sealers, with CAS; see
//! DESIGN.md, Tokens). While every index is borrowed, further threads get
//! `usize::MAX` and take the shared paths.
//!
//! Entries of different shards are `SPACING` bytes apart, not just one
//! 64-byte line: x86 cores fetch lines in adjacent pairs, so two threads
//! writing neighbouring lines still pull them from each other's caches
//! (measured: two threads cycling tokens 64 bytes apart ran at about four
//! fifths of the rate they reach 128 apart; benches/README.md).
//!
//! An index given back keeps its entries: the next thread to borrow it
//! continues where the last one stopped. The Release of the give-back pairs
//! with the Acquire of the next borrow, so the new owner sees the old
//! owner's last stores.
//!
//! Under loom the index comes from the same code, with loom's thread-locals
//! and a per-execution bitmap, so the per-thread paths are model-checked too
//! (with fewer shards, to keep the models small).

use crate::loom::{AtomicU64, Ordering};

/// Bytes between two shards' entries (see the module docs). Each per-shard
/// entry type says it again in its `repr(align(128))` (an attribute cannot
/// name a constant) and asserts that the two agree.
pub(crate) const SPACING: usize = 128;

/// How many threads at once get their own shard.
#[cfg(not(admit_loom))]
pub(crate) const SHARDS: usize = 64;
#[cfg(admit_loom)]
pub(crate) const SHARDS: usize = 4;

const ALL: u64 = if SHARDS == 64 {
    u64::MAX
} else {
    (1 << SHARDS) - 1
};

/// Bit `i` set: shard `i` is borrowed by a live thread.
#[cfg(not(admit_loom))]
type Bits = &'static AtomicU64;

#[cfg(not(admit_loom))]
fn borrowed() -> Bits {
    static BORROWED: AtomicU64 = AtomicU64::new(0);
    &BORROWED
}

// Under loom the bitmap lives for one execution. The main thread's
// thread-locals are dropped after the execution's statics, so each borrower
// keeps its own handle on the bitmap to give its shard back.
#[cfg(admit_loom)]
type Bits = crate::loom::Arc<AtomicU64>;

#[cfg(admit_loom)]
fn borrowed() -> Bits {
    loom::lazy_static! {
        static ref BORROWED: crate::loom::Arc<AtomicU64> =
            crate::loom::Arc::new(AtomicU64::new(0));
    }
    BORROWED.clone()
}

/// A borrowed shard index, given back when its thread exits.
struct Borrowed {
    index: usize,
    bits: Bits,
}

impl Borrowed {
    fn take() -> Borrowed {
        let bits = borrowed();
        let mut cur = bits.load(Ordering::Relaxed);
        let index = loop {
            if cur & ALL == ALL {
                break usize::MAX;
            }
            let i = (!cur).trailing_zeros() as usize;
            // Acquire: pairs with the Release of the thread that gave this
            // shard back, so its last stores are what this thread sees.
            match bits.compare_exchange_weak(
                cur,
                cur | 1 << i,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => break i,
                Err(actual) => cur = actual,
            }
        };
        Borrowed { index, bits }
    }
}

impl Drop for Borrowed {
    fn drop(&mut self) {
        // From now on this thread must not touch the shard, nor stash a
        // limiter's reference (nothing would drop it).
        #[cfg(not(admit_loom))]
        {
            FAST.set(usize::MAX);
            crate::stash::clear();
        }
        if self.index < SHARDS {
            self.bits.fetch_and(!(1 << self.index), Ordering::Release);
        }
    }
}

#[cfg(not(admit_loom))]
std::thread_local! {
    /// This thread's index once known: a constant-initialised cell without
    /// a destructor, the cheapest kind of thread-local to read. `UNSET`
    /// until the first call; set to `usize::MAX` when the shard is given
    /// back, so code running in later thread-exit destructors takes the
    /// shared paths instead of a shard another thread may now own.
    static FAST: std::cell::Cell<usize> = const { std::cell::Cell::new(UNSET) };
    static INDEX: Borrowed = Borrowed::take();
}

#[cfg(admit_loom)]
loom::thread_local! {
    static INDEX: Borrowed = Borrowed::take();
}

#[cfg(not(admit_loom))]
const UNSET: usize = usize::MAX - 1;

/// This thread's shard, or `usize::MAX` for the shared paths.
#[cfg(not(admit_loom))]
#[inline(always)]
pub(crate) fn thread_index() -> usize {
    match FAST.get() {
        UNSET => first_index(),
        i => i,
    }
}

#[cfg(not(admit_loom))]
#[cold]
fn first_index() -> usize {
    // While the thread is being torn down its index may already be gone:
    // take the shared paths then.
    let i = INDEX.try_with(|b| b.index).unwrap_or(usize::MAX);
    FAST.set(i);
    i
}

/// This thread's shard, or `usize::MAX` for the shared paths.
#[cfg(admit_loom)]
pub(crate) fn thread_index() -> usize {
    INDEX.try_with(|b| b.index).unwrap_or(usize::MAX)
}
