//! A per-thread stash of references to one limiter's core, so that taking
//! and dropping a permit does not touch the `Arc`'s shared count.
//!
//! Every permit holds an `Arc<Inner>`: its drop needs the limiter, and the
//! permit may outlive every `Limiter` handle. Cloning and dropping that
//! `Arc` are two locked read-modify-writes on one cache line that every
//! thread using the limiter writes — as much as the admission itself. So a
//! permit's drop puts its `Arc` into its thread's stash instead, and the
//! thread's next admission on the same limiter takes it from there.
//!
//! The stash holds one reference: the one the thread's last dropped permit
//! held. So the steady cycle of a thread that takes and drops permits of
//! one limiter — uncontended, or one thread of many hammering it — touches
//! the count only when permits pile up (a second permit held at once clones)
//! or move between threads.
//!
//! What it keeps alive: each thread keeps at most one limiter's core (its
//! lease table) alive after the program has dropped every handle and
//! permit of it, until the thread drops a permit of another limiter, takes
//! one from another limiter, or exits. Nothing else of a stashed limiter
//! goes on: no thread runs for it (a watchdog stops with its own handle).
//!
//! The stash is a thread-local without a destructor of its own (reading
//! one with a destructor checks, on every access, whether it has been
//! registered yet). The thread's shard (`shard.rs`) empties it when it is
//! given back at thread exit; a thread without a shard, or past that point,
//! drops the reference rather than stashing it.
//!
//! Under loom the stash is off (every permit clones), so the models stay
//! about the limiter.

use crate::inner::Inner;
use crate::loom::Arc;

#[cfg(not(admit_loom))]
mod imp {
    use super::{Arc, Inner};
    use crate::shard::{thread_index, SHARDS};
    use std::cell::Cell;
    use std::mem::ManuallyDrop;

    std::thread_local! {
        /// `ManuallyDrop`, so the thread-local has no destructor of its own:
        /// reading it is a plain load, with no check whether its destructor
        /// is registered yet (a call, and an unwinding path that keeps the
        /// reference in memory). The thread's shard empties it instead when
        /// the thread exits (`clear`), so only a thread with a shard stashes.
        static STASH: Cell<ManuallyDrop<Option<Arc<Inner>>>> =
            const { Cell::new(ManuallyDrop::new(None)) };
    }

    /// A reference to `inner` for a new permit: the stashed one if it is
    /// `inner`'s, else a clone.
    #[inline(always)]
    pub(crate) fn clone(inner: &Arc<Inner>) -> Arc<Inner> {
        match ManuallyDrop::into_inner(STASH.take()) {
            Some(arc) if Arc::ptr_eq(&arc, inner) => arc,
            // Another limiter's (dropped here: this thread moved on), or
            // none.
            other => clone_slow(inner, other),
        }
    }

    #[cold]
    #[inline(never)]
    fn clone_slow(inner: &Arc<Inner>, stashed: Option<Arc<Inner>>) -> Arc<Inner> {
        drop(stashed);
        inner.clone()
    }

    /// Takes back a dropped permit's reference; the one it displaces, if
    /// any, is dropped. A thread without a shard, or whose shard is gone
    /// (it is exiting), drops the reference instead: nothing would empty
    /// its stash.
    #[inline(always)]
    pub(crate) fn give_back(arc: Arc<Inner>) {
        if thread_index() >= SHARDS {
            drop_slow(arc);
            return;
        }
        let displaced = STASH.replace(ManuallyDrop::new(Some(arc)));
        if let Some(displaced) = ManuallyDrop::into_inner(displaced) {
            drop_slow(displaced);
        }
    }

    /// Out of line, so that the usual drop (nothing displaced) stays small.
    #[cold]
    #[inline(never)]
    fn drop_slow(arc: Arc<Inner>) {
        drop(arc);
    }

    /// Drops the stashed reference: the thread's shard calls this as it is
    /// given back at thread exit, after which `give_back` stashes nothing.
    pub(crate) fn clear() {
        drop(ManuallyDrop::into_inner(STASH.take()));
    }
}

#[cfg(admit_loom)]
mod imp {
    use super::{Arc, Inner};

    pub(crate) fn clone(inner: &Arc<Inner>) -> Arc<Inner> {
        inner.clone()
    }

    pub(crate) fn give_back(arc: Arc<Inner>) {
        drop(arc);
    }
}

#[cfg(not(admit_loom))]
pub(crate) use imp::clear;
pub(crate) use imp::{clone, give_back};

#[cfg(all(test, not(admit_loom)))]
mod tests {
    use crate::Limiter;
    use std::sync::Arc;

    #[test]
    fn a_dropped_permit_leaves_its_reference_for_the_next_and_moving_on_lets_go() {
        let a = Limiter::new(4);
        let b = Limiter::new(4);
        let (a2, b2) = (a.clone(), b.clone());
        // A fresh thread, so nothing stashed before interferes; `join`
        // returns once its thread-locals are gone.
        std::thread::spawn(move || {
            // Two handles: `a` and `a2`.
            drop(a2.try_acquire().unwrap());
            // The handles and the stash.
            assert_eq!(Arc::strong_count(&a2.inner), 3);
            let p = a2.try_acquire().unwrap();
            // The permit took the stashed reference: no clone.
            assert_eq!(Arc::strong_count(&a2.inner), 3);
            // A second permit held at once clones.
            let q = a2.try_acquire().unwrap();
            assert_eq!(Arc::strong_count(&a2.inner), 4);
            drop(p);
            drop(q); // the stash is full: this one is dropped
            assert_eq!(Arc::strong_count(&a2.inner), 3);
            // Moving on to another limiter lets go of the first.
            drop(b2.try_acquire().unwrap());
            assert_eq!(Arc::strong_count(&a2.inner), 2);
            assert_eq!(Arc::strong_count(&b2.inner), 3);
        })
        .join()
        .unwrap();
        // The thread exited: its stash is gone too.
        assert_eq!(Arc::strong_count(&b.inner), 1);
        assert_eq!(Arc::strong_count(&a.inner), 1);
        assert_eq!(a.in_use() + b.in_use(), 0);
    }

    #[test]
    fn a_permit_dropped_as_its_thread_exits_leaves_no_reference_behind() {
        use std::cell::RefCell;
        std::thread_local! {
            static HELD: RefCell<Option<crate::Permit>> = const { RefCell::new(None) };
        }
        let l = Limiter::new(4);
        // Thread-local destructors run in an order of the platform's
        // choosing: the permit's may run before the thread's shard is given
        // back (the reference is stashed, then dropped with the shard) or
        // after (it is not stashed at all). Each thread below arranges one
        // order on the usual platforms; both must leave no reference.
        for shard_first in [false, true] {
            let l2 = l.clone();
            std::thread::spawn(move || {
                if shard_first {
                    drop(l2.try_acquire().unwrap());
                }
                HELD.with(|held| *held.borrow_mut() = Some(l2.try_acquire().unwrap()));
            })
            .join()
            .unwrap();
            assert_eq!(Arc::strong_count(&l.inner), 1, "shard first: {shard_first}");
            assert_eq!(l.in_use(), 0);
        }
    }

    #[test]
    fn a_permit_dropped_on_another_thread_is_released_there() {
        let l = Limiter::new(1);
        let p = l.try_acquire().unwrap();
        std::thread::spawn(move || drop(p)).join().unwrap();
        assert_eq!(l.in_use(), 0);
        // The other thread stashed the reference and exited.
        assert_eq!(Arc::strong_count(&l.inner), 1);
        drop(l.try_acquire().unwrap());
    }
}
