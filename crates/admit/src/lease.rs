//! The lease table: one slot per permit that can exist at once, plus one per
//! queued waiter. A slot is where a waiter parks its waker, where a granted
//! permit keeps its lease (start, last activity, revocation), and what the
//! watchdog scans to see every held permit.
//!
//! This module is the only code that reads or writes a slot's state word.
//! Every transition is a named method below; everything else in the crate
//! names slots by `(index, generation)` and asks.
//!
//! # Slot states
//!
//! ```text
//!            claim_waiting            grant              hold
//!   FREE ─────────────────▶ WAITING ───────▶ GRANTED ──────────▶ HELD
//!    ▲ ▲ ▲                     │ withdraw        │ give_back        │ │
//!    │ │ └─────────────────────┘                 │                  │ │ revoke
//!    │ └─────────────────────────────────────────┘                  │ ▼
//!    │        claim_held (FREE ─▶ HELD directly)           release  │ REVOKED
//!    └──────────────────────────────────────────────────────────────┘ │
//!    └────────────────────────────── release / reclaim ───────────────┘
//! ```
//!
//! * FREE — on the free list, in a thread's cache, or a shard's idle token slot.
//! * WAITING — a queued waiter parked here; the deliverer of its ticket moves
//!   it on (`grant`), or the waiter takes it back when it leaves (`withdraw`).
//! * GRANTED — the deliverer counted a permit for the waiter, which has not
//!   been polled yet. Only the waiter moves it on (`hold`, `give_back`).
//! * HELD — a live lease. Its holder's drop (`release`) and the reclaimer
//!   (`revoke` then `reclaim`) race to move it to FREE; each is one CAS from
//!   the state word it read, so exactly one of them wins and releases the
//!   count (I2).
//! * REVOKING — a live lease being revoked: the revoker took it from HELD
//!   and counts the revocation before it moves it on to REVOKED, so a holder
//!   that sees its lease revoked (and anyone it tells) finds the revocation
//!   already in `revoked_total`. To its holder and to scans it is still
//!   held; the holder's drop may free it as from HELD.
//! * REVOKED — a live lease whose holder was told to let go.
//! * OWNED — a live lease like HELD, in a slot its thread's shard owns: its
//!   drop parks it as a TOKEN instead of freeing it.
//! * TOKEN — no lease: one counted, idle unit parked in the owning shard
//!   for its thread's next admission, or for a sealer to take back (see
//!   "Tokens" in the crate's DESIGN.md).
//!
//! # Implementation notes
//!
//! * A slot's state word is `generation << 8 | status`. The generation grows
//!   each time the slot leaves the free list, and every transition compares
//!   it, so a stale holder (a permit whose slot was reclaimed and reused, a
//!   deliverer that lost a race) fails its CAS instead of touching someone
//!   else's lease. The generation has 41 bits (`GEN_BITS`), so that a
//!   permit carries slot and generation in one word. It wraps after 2^41
//!   (2.2 × 10^12) leases of one slot: some 18 hours of one thread taking
//!   and dropping permits back to back on one slot (its cache hands it the
//!   same slot every time) at 30 ns a cycle, far longer in real use. To be
//!   confused, a stale holder (a permit that ignored its revocation and was
//!   reclaimed) must still be alive then and drop while its slot holds a
//!   lease of exactly its generation; its drop then frees that lease's slot
//!   and gives back one permit's count in its place, so the count stays
//!   right (the real holder's later drop finds the slot moved on and does
//!   nothing) and only that one lease loses its bookkeeping.
//! * Slots are never deallocated, so a stale index can always be read.
//! * A slot is split in two arrays: `slots` holds what scans and the fast
//!   path read (state word and the three timestamps, 32 bytes), `cold` the
//!   free-list link and the two wakers. The watchdog's pass over a million
//!   leases then streams 32 MB instead of 88; it was the memory traffic,
//!   not the work, that made a tick slow.
//! * Free slots form a Treiber stack threaded through `next_free`. The stack
//!   head carries a 32-bit tag that changes on every push and pop, so the
//!   classic ABA problem (pop reads `next` of a slot that is popped and pushed
//!   again before its CAS) makes the CAS fail rather than corrupt the list.
//! * The table is sized so a slot is always free when one is needed: at most
//!   `max_capacity` permits exist (the state word's cap), and at most
//!   `queue window` waiters hold a slot before their grant counts in `in_use`.
//! * Each thread with a shard (`shard.rs`) keeps up to `CACHED` free slots
//!   of its own: a slot freed on the thread (a permit's drop, a waiter's
//!   place given back, a reclaim) goes there, and the thread's next claim
//!   (a permit's lease or a waiter's place) takes it back, with plain loads and stores instead of two
//!   CASes on the shared free-list head (whose cache line would otherwise
//!   move between cores on every cycle). Only the shard's owner touches its
//!   cache; a shard given back at thread exit keeps its slots for the next
//!   thread that borrows it. So cached slots are bounded by
//!   `SHARDS * CACHED` and the table is sized with that many extra slots
//!   (`LeaseTable::extra`): about 12 KiB per limiter, the price of never
//!   needing to steal from another thread's cache. A cached slot is FREE;
//!   reclaim, revoke and stale holders cannot touch it, since each of them
//!   compares against HELD or REVOKED.
//! * The last `TOKEN_SLOTS` slots are the shards' token slots (one in
//!   every `TOKEN_STRIDE`, so no two shards' are within 128 bytes): never
//!   cached, never on the free list, moved out of FREE only by their shard
//!   (DESIGN.md, Tokens). Another 22 KiB per limiter.
//! * Orderings: a transition into a state publishes (Release) the fields the
//!   next owner reads (timestamps on HELD, `revoked_at` on REVOKED); every
//!   load that decides on a state is Acquire. The free list's push is Release
//!   and its pop Acquire, so a claimer sees the slot as its last user left it.

use crate::loom::{AtomicU32, AtomicU64, AtomicWaker, Ordering};
use crate::shard::{thread_index, SHARDS, SPACING};
use std::task::Waker;

/// Slot status, in the low byte of a slot's state word.
mod status {
    pub(super) const FREE: u8 = 0;
    pub(super) const WAITING: u8 = 1;
    pub(super) const GRANTED: u8 = 2;
    pub(super) const HELD: u8 = 3;
    pub(super) const REVOKED: u8 = 4;
    /// HELD on its way to REVOKED: the revoker has taken the lease and is
    /// counting the revocation before the holder may see it.
    pub(super) const REVOKING: u8 = 5;
    /// A live lease like HELD whose slot belongs to a shard: its drop parks
    /// it as a TOKEN instead of freeing it and releasing the count.
    pub(super) const OWNED: u8 = 6;
    /// No lease: one unit of `in_use`, counted and idle, parked in the
    /// shard that owns the slot, for that shard's thread to take again.
    pub(super) const TOKEN: u8 = 7;
}

#[inline]
fn pack(gen: u64, status: u8) -> u64 {
    (gen << 8) | status as u64
}
#[inline]
fn gen_of(word: u64) -> u64 {
    word >> 8
}
#[inline]
fn status_of(word: u64) -> u8 {
    (word & 0xff) as u8
}

const NIL: u32 = u32::MAX;

/// Bits of a lease's generation. A permit keeps its slot and generation in
/// one word (`slot << GEN_BITS | gen`, the slot in the remaining 23 bits,
/// enough for every slot a mailbox can name), which makes a permit two
/// words, returned in registers.
pub(crate) const GEN_BITS: u32 = 41;
const GEN_MASK: u64 = (1 << GEN_BITS) - 1;
const _: () = assert!(crate::queue::MAX_SLOTS as u64 <= 1 << (64 - GEN_BITS));

/// What a scan reads of a slot, and all the fast path touches: 32 bytes,
/// two slots a cache line, so the watchdog's pass over a million leases
/// streams 32 MB rather than the whole slot. Aligned to its size, so a
/// slot never straddles two lines and shares one with one neighbour only
/// (which is what keeps a shard's token slot on a line of its own).
#[repr(align(32))]
struct Slot {
    /// `generation << 8 | status`.
    state: AtomicU64,
    /// Coarse-clock millisecond when the permit was granted.
    started: AtomicU64,
    /// Coarse-clock millisecond of the last `touch()`.
    last_active: AtomicU64,
    /// Coarse-clock millisecond when the lease was revoked.
    revoked_at: AtomicU64,
}

/// The rest of a slot, kept apart from what scans read: the free-list link
/// and the wakers (which the scan never reads).
struct Cold {
    next_free: AtomicU32,
    /// The parked waiter's waker.
    wait_waker: AtomicWaker,
    /// Wakes `Permit::revoked()` futures.
    revoke_waker: AtomicWaker,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            state: AtomicU64::new(pack(0, status::FREE)),
            started: AtomicU64::new(0),
            last_active: AtomicU64::new(0),
            revoked_at: AtomicU64::new(0),
        }
    }

    #[inline]
    fn word(&self) -> u64 {
        self.state.load(Ordering::Acquire)
    }
}

/// What a live slot holds, as a scan sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A parked token: counted in use, but no lease and no connection.
    Token,
    /// Granted to a waiter that has not been polled yet (counted in use).
    Granted,
    /// A live lease.
    Held,
    /// A live lease that was revoked and not yet returned.
    Revoked,
}

/// One live slot, read by [`LeaseTable::scan`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct LeaseView {
    pub(crate) slot: u32,
    pub(crate) gen: u64,
    pub(crate) kind: Kind,
    pub(crate) started: u64,
    pub(crate) last_active: u64,
    pub(crate) revoked_at: u64,
}

/// Free slots one thread keeps for itself.
const CACHED: usize = 2;

/// Slots between two shards' token slots: `SPACING` bytes, so the slot a
/// shard's thread CASes twice a cycle shares its pair of cache lines with
/// unused slots only.
const TOKEN_STRIDE: usize = {
    // Under loom a slot is larger than 128 bytes; one apart is enough there.
    let stride = SPACING / std::mem::size_of::<Slot>();
    if stride == 0 {
        1
    } else {
        stride
    }
};
#[cfg(not(admit_loom))]
const _: () = assert!(std::mem::size_of::<Slot>() == 32 && TOKEN_STRIDE == 4);

/// Slots set aside at the end of the table for the shards' tokens: each
/// shard's own, and unused ones between them.
const TOKEN_SLOTS: usize = TOKEN_STRIDE * SHARDS;

/// One shard's cache of free slots and its owned slot, `SPACING` bytes
/// from the next shard's. Only the thread that borrowed the shard reads or
/// writes `len` and `slots`; flushers also CAS `own` to seal the shard
/// (DESIGN.md, Tokens).
#[repr(align(128))]
struct SlotCache {
    len: AtomicU32,
    slots: [AtomicU32; CACHED],
    /// `slot << 32 | epoch << 2 | spare << 1 | open`: the slot this shard
    /// owns (`NIL` if none; never one while sealed), a count of seals,
    /// whether an untracked token is parked here (a limiter without leases
    /// has no slot to park one in), and whether the shard may own a slot
    /// and park a token.
    own: AtomicU64,
}
const _: () = assert!(std::mem::align_of::<SlotCache>() == SPACING);

/// The `own` bit of a parked untracked token.
const SPARE: u64 = 2;

/// A sealed shard's `own` word with `epoch`.
fn sealed(epoch: u64) -> u64 {
    (u64::from(NIL) << 32) | ((epoch << 2) & 0xffff_fffc)
}
fn own_slot(word: u64) -> u32 {
    (word >> 32) as u32
}
fn own_open(word: u64) -> bool {
    word & 1 == 1
}
fn own_spare(word: u64) -> bool {
    word & SPARE != 0
}
fn own_epoch(word: u64) -> u64 {
    (word & 0xffff_fffc) >> 2
}

/// What a permit's drop did to its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Released {
    /// The lease was reclaimed first: its count is released already.
    Gone,
    /// Freed; its count is the caller's to release. `revoked`: the lease had
    /// been revoked.
    Freed { revoked: bool },
}

pub(crate) struct LeaseTable {
    /// `tag << 32 | index` of the first free slot.
    free: AtomicU64,
    slots: Box<[Slot]>,
    /// `cold[i]` is the rest of `slots[i]`.
    cold: Box<[Cold]>,
    caches: Box<[SlotCache]>,
    /// How many shards are open (may own a slot and park a token).
    open: AtomicU32,
    /// The first of the token slots at the end of the table: shard `i` may
    /// own only slot `token_slots + TOKEN_STRIDE * i` (see `token_slot`).
    token_slots: u32,
}

impl LeaseTable {
    /// Slots the table needs beyond its leases and waiters: what the
    /// threads' caches may hold, and the shards' token slots (with unused
    /// slots between them, so that no two shards' token slots are near).
    pub(crate) const fn extra() -> usize {
        SHARDS * CACHED + TOKEN_SLOTS
    }

    /// A table of `n` slots, `extra()` of which may sit in caches or serve
    /// as token slots.
    pub(crate) fn new(n: usize) -> LeaseTable {
        assert!(n < NIL as usize && n >= TOKEN_SLOTS);
        // The token slots come last and are never on the free list.
        let listed = n - TOKEN_SLOTS;
        let slots: Box<[Slot]> = (0..n).map(|_| Slot::new()).collect();
        let cold: Box<[Cold]> = (0..n)
            .map(|i| Cold {
                next_free: AtomicU32::new(if i + 1 < listed { i as u32 + 1 } else { NIL }),
                wait_waker: AtomicWaker::new(),
                revoke_waker: AtomicWaker::new(),
            })
            .collect();
        let first = if listed == 0 { NIL } else { 0 };
        LeaseTable {
            slots,
            cold,
            free: AtomicU64::new(first as u64),
            caches: (0..SHARDS)
                .map(|_| SlotCache {
                    len: AtomicU32::new(0),
                    slots: std::array::from_fn(|_| AtomicU32::new(NIL)),
                    own: AtomicU64::new(sealed(0)),
                })
                .collect(),
            open: AtomicU32::new(0),
            token_slots: listed as u32,
        }
    }

    /// The slot this thread's shard may own, if the thread has a shard.
    #[inline(always)]
    fn token_slot(&self) -> Option<(&SlotCache, u32)> {
        let shard = thread_index();
        let cache = self.caches.get(shard)?;
        Some((cache, self.token_slots + (TOKEN_STRIDE * shard) as u32))
    }

    /// Whether `index` is a token slot, which belongs to its shard and
    /// never goes to a cache or the free list: freed, it stays FREE until
    /// its shard owns it again.
    #[inline(always)]
    fn is_token_slot(&self, index: u32) -> bool {
        index >= self.token_slots
    }

    #[inline]
    fn get(&self, index: u32) -> &Slot {
        &self.slots[index as usize]
    }

    #[inline]
    fn cold(&self, index: u32) -> &Cold {
        &self.cold[index as usize]
    }

    /// FREE -> HELD: a new lease for a permit already counted in use.
    pub(crate) fn claim_held(&self, now: u64) -> Option<(u32, u64)> {
        self.claim(status::HELD, now)
    }

    /// Takes a slot from this thread's cache.
    #[inline]
    fn pop_cached(&self) -> Option<u32> {
        let cache = self.caches.get(thread_index())?;
        // Relaxed: only this thread writes its cache (see `shard.rs` for the
        // hand-over between threads).
        let len = cache.len.load(Ordering::Relaxed);
        if len == 0 {
            return None;
        }
        let index = cache.slots[len as usize - 1].load(Ordering::Relaxed);
        cache.len.store(len - 1, Ordering::Relaxed);
        Some(index)
    }

    /// Puts a FREE slot in this thread's cache, or on the free list if the
    /// cache is full or the thread has no shard.
    #[inline]
    fn free_slot(&self, index: u32) {
        if self.is_token_slot(index) {
            return;
        }
        if let Some(cache) = self.caches.get(thread_index()) {
            let len = cache.len.load(Ordering::Relaxed);
            if (len as usize) < CACHED {
                cache.slots[len as usize].store(index, Ordering::Relaxed);
                cache.len.store(len + 1, Ordering::Relaxed);
                return;
            }
        }
        self.push_free(index);
    }

    /// Moves a FREE slot the caller took to `status` with a new generation.
    fn start(&self, index: u32, status: u8, now: u64) -> (u32, u64) {
        let slot = self.get(index);
        let gen = (gen_of(slot.state.load(Ordering::Relaxed)) + 1) & GEN_MASK;
        slot.started.store(now, Ordering::Relaxed);
        slot.last_active.store(now, Ordering::Relaxed);
        // Release: a watchdog or deliverer that sees the new generation also
        // sees the timestamps above.
        slot.state.store(pack(gen, status), Ordering::Release);
        (index, gen)
    }

    /// FREE -> WAITING: a place for a queued waiter to park.
    pub(crate) fn claim_waiting(&self, now: u64) -> Option<(u32, u64)> {
        self.claim(status::WAITING, now)
    }

    /// Takes a free slot (from this thread's cache, else the free list)
    /// and moves it to `status` with a new generation.
    fn claim(&self, status: u8, now: u64) -> Option<(u32, u64)> {
        if let Some(index) = self.pop_cached() {
            return Some(self.start(index, status, now));
        }
        // Acquire: the `next_free` we read, and the slot's previous contents,
        // were published by the Release push that put this slot on the list.
        let mut head = self.free.load(Ordering::Acquire);
        loop {
            let index = head as u32;
            if index == NIL {
                return None;
            }
            let next = self.cold(index).next_free.load(Ordering::Relaxed);
            let tag = (head >> 32).wrapping_add(1);
            let new = (tag << 32) | next as u64;
            match self
                .free
                .compare_exchange_weak(head, new, Ordering::Acquire, Ordering::Acquire)
            {
                Ok(_) => return Some(self.start(index, status, now)),
                Err(actual) => head = actual,
            }
        }
    }

    /// Pushes a slot (already moved to FREE by the caller) on the free list.
    fn push_free(&self, index: u32) {
        let link = &self.cold(index).next_free;
        let mut head = self.free.load(Ordering::Relaxed);
        loop {
            link.store(head as u32, Ordering::Relaxed);
            let tag = (head >> 32).wrapping_add(1);
            let new = (tag << 32) | index as u64;
            // Release: publishes `next_free` and the slot's FREE state to the
            // next claimer's Acquire.
            match self
                .free
                .compare_exchange_weak(head, new, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(actual) => head = actual,
            }
        }
    }

    /// Registers the waker of the waiter parked in `index`.
    pub(crate) fn register_waiter(&self, index: u32, waker: &Waker) {
        self.cold(index).wait_waker.register(waker);
    }

    /// Wakes whoever waits in `index` (a lost wake-up's repair, `close`).
    pub(crate) fn wake_waiter(&self, index: u32) {
        self.cold(index).wait_waker.wake();
    }

    /// WAITING -> GRANTED by the deliverer of the waiter's ticket, which has
    /// already counted the permit. The mailbox keeps only the low bits of the
    /// generation (`gen_mask`). Wakes the waiter. False if the waiter left.
    pub(crate) fn grant(&self, index: u32, gen_low: u64, gen_mask: u64) -> bool {
        let slot = self.get(index);
        let word = slot.word();
        if status_of(word) != status::WAITING || gen_of(word) & gen_mask != gen_low {
            return false;
        }
        let granted = pack(gen_of(word), status::GRANTED);
        // AcqRel: the waiter's Acquire load of GRANTED sees the count this
        // deliverer made before delivering.
        if slot
            .state
            .compare_exchange(word, granted, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        self.cold(index).wait_waker.wake();
        true
    }

    /// Whether the waiter's slot was granted.
    pub(crate) fn is_granted(&self, index: u32, gen: u64) -> bool {
        self.get(index).word() == pack(gen, status::GRANTED)
    }

    /// WAITING -> FREE by a leaving waiter. False if a deliverer granted the
    /// slot first: the waiter then owns a counted permit.
    pub(crate) fn withdraw(&self, index: u32, gen: u64) -> bool {
        let ok = self
            .get(index)
            .state
            .compare_exchange(
                pack(gen, status::WAITING),
                pack(gen, status::FREE),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok();
        if ok {
            self.free_slot(index);
        }
        ok
    }

    /// WAITING or GRANTED -> FREE by the slot's owner, which no deliverer
    /// can touch any more (its ticket was settled): a waiter leaving a slot
    /// it no longer needs, or a grant taken as an untracked permit.
    pub(crate) fn give_back(&self, index: u32, gen: u64) {
        // Only the owner moves the slot now, so a store is enough.
        self.get(index)
            .state
            .store(pack(gen, status::FREE), Ordering::Release);
        self.free_slot(index);
    }

    /// GRANTED -> HELD by the waiter that was granted: the lease starts now.
    pub(crate) fn hold(&self, index: u32, gen: u64, now: u64) {
        let slot = self.get(index);
        slot.last_active.store(now, Ordering::Relaxed);
        slot.started.store(now, Ordering::Relaxed);
        // Only the owner moves a GRANTED slot on, so a store is enough.
        slot.state.store(pack(gen, status::HELD), Ordering::Release);
    }

    /// The holder's drop, when the lease is OWNED (the usual case in a
    /// token slot): OWNED -> TOKEN with one CAS from that word rather than
    /// after a load. False if the slot is not a token slot or the lease
    /// moved on (settled, revoked, reclaimed): `release` then decides.
    #[inline(always)]
    pub(crate) fn park_token(&self, index: u32, gen: u64) -> bool {
        // AcqRel: the next holder of the token synchronises with this drop.
        self.is_token_slot(index)
            && self.slots.get(index as usize).is_some_and(|slot| {
                slot.state
                    .compare_exchange(
                        pack(gen, status::OWNED),
                        pack(gen, status::TOKEN),
                        Ordering::AcqRel,
                        Ordering::Relaxed,
                    )
                    .is_ok()
            })
    }

    /// The holder's drop, when `park_token` did not park it: HELD,
    /// REVOKING or REVOKED -> FREE. `Gone` if the lease was reclaimed
    /// first.
    ///
    /// An OWNED lease is not expected here. `park_token` failed, so the
    /// word was not `(gen, OWNED)` at that moment, and it cannot become so
    /// again: every way into OWNED starts a new generation.
    pub(crate) fn release(&self, index: u32, gen: u64) -> Released {
        let slot = self.get(index);
        // The CAS starts from the state the lease most likely has here
        // (HELD) rather than from a load: a lease that was revoked
        // meanwhile costs one failed CAS, which returns the word to go on
        // from.
        let mut word = pack(gen, status::HELD);
        loop {
            if gen_of(word) != gen {
                return Released::Gone;
            }
            if !matches!(
                status_of(word),
                status::HELD | status::REVOKING | status::REVOKED
            ) {
                return Released::Gone;
            }
            // AcqRel: the next holder of the slot (or the reclaimer that
            // loses) synchronises with this drop.
            match slot.state.compare_exchange_weak(
                word,
                pack(gen, status::FREE),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => word = actual,
            }
        }
        self.free_slot(index);
        Released::Freed {
            revoked: status_of(word) != status::HELD,
        }
    }

    /// HELD -> REVOKING: takes the lease for revocation. False if it is no
    /// longer held (dropped, already revoked, or a stale id). The caller
    /// counts the revocation, then calls [`finish_revoke`](Self::finish_revoke).
    pub(crate) fn begin_revoke(&self, index: u32, gen: u64, now: u64) -> bool {
        let Some(slot) = self.slots.get(index as usize) else {
            return false;
        };
        let word = slot.word();
        if gen_of(word) != gen || !matches!(status_of(word), status::HELD | status::OWNED) {
            return false;
        }
        slot.revoked_at.store(now, Ordering::Relaxed);
        // Release: the reclaimer that reads REVOKED sees `revoked_at`. An
        // OWNED lease leaves its shard here: its drop or reclaim frees it.
        slot.state
            .compare_exchange(
                word,
                pack(gen, status::REVOKING),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// REVOKING -> REVOKED, then wakes the holder. The CAS fails only if
    /// the holder dropped its permit meanwhile; there is nobody to tell then.
    pub(crate) fn finish_revoke(&self, index: u32, gen: u64) {
        let slot = self.get(index);
        // Release: a holder whose Acquire load sees REVOKED also sees what
        // the revoker did before (the revocation counted).
        if slot
            .state
            .compare_exchange(
                pack(gen, status::REVOKING),
                pack(gen, status::REVOKED),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
        {
            self.cold(index).revoke_waker.wake();
        }
    }

    /// REVOKED -> FREE by force: the holder's later drop finds another state
    /// and does nothing. True if this call took the lease, and with it the
    /// duty to release its count.
    pub(crate) fn reclaim(&self, index: u32, gen: u64) -> bool {
        let ok = self
            .get(index)
            .state
            .compare_exchange(
                pack(gen, status::REVOKED),
                pack(gen, status::FREE),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok();
        if ok {
            self.free_slot(index);
        }
        ok
    }

    /// Marks the lease active at `now`, unless the slot has moved on to
    /// another lease. Three relaxed loads and, at most once per clock tick,
    /// a relaxed store.
    #[inline]
    pub(crate) fn touch(&self, index: u32, gen: u64, now: u64) {
        let slot = self.get(index);
        // A permit whose slot was reclaimed (and perhaps reused) must not
        // make someone else's lease look active.
        if gen_of(slot.state.load(Ordering::Relaxed)) != gen {
            return;
        }
        if slot.last_active.load(Ordering::Relaxed) != now {
            slot.last_active.store(now, Ordering::Relaxed);
        }
    }

    /// Whether the lease was revoked or is gone. A lease still REVOKING is
    /// not revoked yet for its holder: the revocation is being counted.
    pub(crate) fn is_revoked(&self, index: u32, gen: u64) -> bool {
        let word = self.get(index).word();
        gen_of(word) != gen
            || !matches!(
                status_of(word),
                status::HELD | status::OWNED | status::REVOKING
            )
    }

    /// Registers the waker of the holder waiting for revocation.
    pub(crate) fn register_revoked(&self, index: u32, waker: &Waker) {
        self.cold(index).revoke_waker.register(waker);
    }

    /// When the lease in `index` started and was last active.
    pub(crate) fn times(&self, index: u32) -> (u64, u64) {
        let slot = self.get(index);
        (
            slot.started.load(Ordering::Relaxed),
            slot.last_active.load(Ordering::Relaxed),
        )
    }

    // ----- tokens ---------------------------------------------------------

    /// TOKEN -> OWNED: takes the token parked in this thread's shard as a
    /// new lease, without touching the state word (the token is counted
    /// already). `None` if the shard has none idle.
    #[inline(always)]
    pub(crate) fn take_token(&self, now: u64) -> Option<(u32, u64)> {
        // The shard's `own` word need not be read: only a drop of this
        // shard's OWNED lease parks a TOKEN in its token slot, and a sealer
        // that races this take CASes the same slot word (and settles the
        // lease this take makes as an ordinary HELD one).
        let (_, index) = self.token_slot()?;
        let slot = self.get(index);
        let word = slot.word();
        if status_of(word) != status::TOKEN {
            return None;
        }
        let gen = (gen_of(word) + 1) & GEN_MASK;
        // Before the CAS, so a watchdog that sees the lease sees its times.
        // Should a flusher take the token first, these land on a FREE slot
        // only this shard claims. Stored only when the coarse clock moved
        // on: a store before the CAS would have to drain first.
        if slot.started.load(Ordering::Relaxed) != now {
            slot.started.store(now, Ordering::Relaxed);
        }
        if slot.last_active.load(Ordering::Relaxed) != now {
            slot.last_active.store(now, Ordering::Relaxed);
        }
        // AcqRel: pairs with the drop that parked the token, so that
        // holder's work happens before this one's admission.
        slot.state
            .compare_exchange(
                word,
                pack(gen, status::OWNED),
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .ok()?;
        Some((index, gen))
    }

    /// A new lease (for a permit already counted) in this thread's token
    /// slot, which its shard then owns: FREE -> OWNED, and the slot recorded
    /// in `own` with one CAS, which fails if a flusher sealed the shard
    /// meanwhile (then the lease is an ordinary HELD one). An ordinary
    /// lease from the free list if the shard is sealed or its token slot is
    /// in use (a lease settled as HELD, or revoked, and not yet dropped).
    pub(crate) fn claim_owned(&self, now: u64) -> Option<(u32, u64)> {
        let Some((cache, index)) = self.token_slot() else {
            return self.claim_held(now);
        };
        let own = cache.own.load(Ordering::Relaxed);
        // Only this shard moves its token slot out of FREE, so a FREE slot
        // seen here is ours to start.
        if !own_open(own) || status_of(self.get(index).word()) != status::FREE {
            return self.claim_held(now);
        }
        let (index, gen) = self.start(index, status::OWNED, now);
        // Release: a flusher that seals after this sees the slot. The
        // record may name this slot already (its last lease was revoked
        // and left the shard); the CAS still checks the shard is open.
        let recorded = cache
            .own
            .compare_exchange(
                own,
                (u64::from(index) << 32) | (own & 0xffff_ffff),
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok();
        if !recorded {
            // Not owned after all; a revoker may have moved it on already.
            let _ = self.get(index).state.compare_exchange(
                pack(gen, status::OWNED),
                pack(gen, status::HELD),
                Ordering::AcqRel,
                Ordering::Relaxed,
            );
        }
        Some((index, gen))
    }

    /// Takes the untracked token parked in this thread's shard (a limiter
    /// without leases): one CAS on the shard's `own` word, against the
    /// sealers' CAS on the same word. False if none is parked.
    #[inline(always)]
    pub(crate) fn take_spare(&self) -> bool {
        let Some((cache, _)) = self.token_slot() else {
            return false;
        };
        let own = cache.own.load(Ordering::Relaxed);
        // AcqRel: pairs with the drop that parked the token.
        own_spare(own)
            && cache
                .own
                .compare_exchange(own, own & !SPARE, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }

    /// Parks an untracked permit's unit in this thread's shard, if the
    /// shard is open and has none parked: one CAS that fails once a sealer
    /// has sealed the shard, so a sealer either takes the token back or
    /// the drop releases its count itself. False if not parked.
    #[inline(always)]
    pub(crate) fn park_spare(&self) -> bool {
        let Some((cache, _)) = self.token_slot() else {
            return false;
        };
        let own = cache.own.load(Ordering::Relaxed);
        own_open(own)
            && !own_spare(own)
            && cache
                .own
                .compare_exchange(own, own | SPARE, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }

    /// How many shards are open.
    pub(crate) fn open_shards(&self) -> u32 {
        self.open.load(Ordering::Acquire)
    }

    /// Whether this thread's shard is open (false if it has none).
    pub(crate) fn mine_open(&self) -> bool {
        self.caches
            .get(thread_index())
            .is_some_and(|cache| own_open(cache.own.load(Ordering::Relaxed)))
    }

    /// Opens this thread's shard, before the caller's state-word RMW
    /// decides whether it may stay open (DESIGN.md, Tokens). False if it
    /// was open already or the thread has no shard.
    pub(crate) fn open_mine(&self) -> bool {
        let Some(cache) = self.caches.get(thread_index()) else {
            return false;
        };
        let own = cache.own.load(Ordering::Relaxed);
        if own_open(own) {
            return false;
        }
        // Counted open before it is: a sealer that reads `open` after our
        // state-word RMW sees at least this shard.
        self.open.fetch_add(1, Ordering::AcqRel);
        let opened = cache
            .own
            .compare_exchange(own, own | 1, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok();
        if !opened {
            self.open.fetch_sub(1, Ordering::AcqRel);
        }
        opened
    }

    /// Seals this thread's shard again (the state word said no). Returns
    /// tokens taken back, which the caller must uncount.
    pub(crate) fn seal_mine(&self) -> u32 {
        match self.caches.get(thread_index()) {
            Some(cache) => self.seal(cache),
            None => 0,
        }
    }

    /// Seals every open shard: each gives up its slot (a parked token is
    /// taken back, a lease in use becomes an ordinary HELD one). Returns
    /// the tokens taken back, which the caller must uncount. Called after
    /// the caller's RMW of the state word made tokens unwelcome (closed,
    /// capacity changed, a waiter queued) or when an admission found the
    /// limiter full while tokens may be parked.
    pub(crate) fn seal_all(&self) -> u32 {
        if self.open_shards() == 0 {
            return 0;
        }
        self.caches.iter().map(|c| self.seal(c)).sum()
    }

    /// Seals one shard if it is open; returns the tokens taken back (its
    /// token slot's, or its untracked one: 0 or 1).
    fn seal(&self, cache: &SlotCache) -> u32 {
        let mut own = cache.own.load(Ordering::Acquire);
        loop {
            if !own_open(own) {
                return 0;
            }
            // Acquire: pairs with the Release of `claim_owned`, so the slot
            // recorded is the one we settle.
            match cache.own.compare_exchange_weak(
                own,
                sealed(own_epoch(own) + 1),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => own = actual,
            }
        }
        self.open.fetch_sub(1, Ordering::AcqRel);
        let parked = match own_slot(own) {
            NIL => 0,
            index => self.settle(index),
        };
        parked + u32::from(own_spare(own))
    }

    /// A sealed shard's slot: TOKEN -> FREE (returns 1: the caller uncounts
    /// it) or OWNED -> HELD (its drop will free it). Each is one CAS against
    /// the take and the drop, so a token is taken back or taken, never
    /// both.
    fn settle(&self, index: u32) -> u32 {
        let slot = self.get(index);
        let mut word = slot.word();
        loop {
            let next = match status_of(word) {
                status::TOKEN => status::FREE,
                status::OWNED => status::HELD,
                // Revoked (it left the shard then) or moved on.
                _ => return 0,
            };
            match slot.state.compare_exchange_weak(
                word,
                pack(gen_of(word), next),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => word = actual,
            }
        }
        if status_of(word) == status::TOKEN {
            self.free_slot(index);
            1
        } else {
            0
        }
    }

    /// Tokens parked now (each read at its own moment).
    pub(crate) fn tokens(&self) -> u32 {
        if self.open_shards() == 0 {
            return 0;
        }
        self.caches
            .iter()
            .filter(|c| {
                let own = c.own.load(Ordering::Acquire);
                let index = own_slot(own);
                own_spare(own) || index != NIL && status_of(self.get(index).word()) == status::TOKEN
            })
            .count() as u32
    }

    /// Every live slot (GRANTED, HELD, OWNED, REVOKED, or a TOKEN), in table order. Each is
    /// read at its own moment; a view is a hint for a later transition,
    /// which compares the generation and state again.
    pub(crate) fn scan(&self) -> impl Iterator<Item = LeaseView> + '_ {
        self.slots.iter().enumerate().filter_map(|(i, slot)| {
            let word = slot.word();
            let kind = match status_of(word) {
                status::GRANTED => Kind::Granted,
                status::HELD | status::OWNED | status::REVOKING => Kind::Held,
                status::TOKEN => Kind::Token,
                status::REVOKED => Kind::Revoked,
                _ => return None,
            };
            Some(LeaseView {
                slot: i as u32,
                gen: gen_of(word),
                kind,
                started: slot.started.load(Ordering::Relaxed),
                last_active: slot.last_active.load(Ordering::Relaxed),
                revoked_at: slot.revoked_at.load(Ordering::Relaxed),
            })
        })
    }
}
