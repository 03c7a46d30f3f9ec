//! Stress: millions of revocations, zero-grace reclaims and drops racing on
//! real threads, with hand-offs to queued (and abandoned) waiters, capacity
//! changes, and a live watchdog checking the count against the lease table.
//!
//! Two holders take permits, keep a few, and drop them, every other one on
//! the other holder's thread (so freed slots pass through both threads'
//! caches and the shared free list). Each holder revokes by id the other's
//! newest lease, racing that holder's drop, or else some of its own. Two
//! reapers reclaim every revoked lease at once, racing the holders' drops
//! and each other; one also revokes the oldest lease and resizes. The
//! watchdog never reclaims (its grace is an hour), so every reclaim is one
//! a reaper was told of.
//!
//! What it proves: however these interleave, every count comes back exactly
//! once. The limiter ends empty with nothing repaired, `revoked_total` and
//! `reclaimed_total` equal what the callers were told, no revoked lease is
//! pending, and the full capacity, not one permit more, can be taken again
//! from distinct slots. It also checks that each race did happen.

use admit::{LeaseId, Limiter, Permit, Watchdog, WatchdogConfig};
use futures::executor::block_on;
use futures::FutureExt;
use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError::*};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The capacity at the start and the end; a reaper cycles through `SIZES`
/// (a shrink strands held permits, growth hands room to waiters).
const CAPACITY: u32 = 4;
const SIZES: [u32; 3] = [2, 6, CAPACITY];
/// Admission attempts per holder thread.
const ROUNDS: usize = 1_500_000;
/// One admission in this many waits in the queue instead of trying.
const WAIT_EVERY: usize = 4;
/// Permits a holder keeps at once, so reapers find leases still held.
const KEEP: usize = 4;
/// Longest the run may take before the test calls it stuck.
const LIMIT: Duration = Duration::from_secs(60);

/// What the callers were told, from the public API only.
#[derive(Debug, Default)]
struct Tally {
    revoke_calls: AtomicU64,
    revoked: AtomicU64,
    /// Revocations of a lease the other holder held.
    revoked_peer: AtomicU64,
    reclaimed: AtomicU64,
    dropped: AtomicU64,
    /// Drops of a permit its holder saw revoked just before.
    dropped_revoked: AtomicU64,
    /// Acquires handed a permit after queueing, and those dropped queued.
    queued: AtomicU64,
    cancelled: AtomicU64,
    resizes: AtomicU64,
}

fn count(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Relaxed);
}

struct Shared {
    limiter: Limiter,
    /// Each holder's newest lease id, for the other holder to revoke (a
    /// lock is fine in a test; the crate itself takes none).
    newest: [Mutex<Option<LeaseId>>; 2],
    holders_done: AtomicBool,
    tally: Tally,
}

impl Shared {
    fn release(&self, permit: Permit) {
        count(
            &self.tally.dropped_revoked,
            usize::from(permit.is_revoked()),
        );
        drop(permit);
        count(&self.tally.dropped, 1);
    }

    /// Holder `me`: admits, revokes the other holder's newest lease, keeps
    /// `KEEP` permits and drops the oldest, every other one on the peer.
    fn holder(&self, me: usize, to_peer: SyncSender<Permit>, from_peer: Receiver<Permit>) {
        let l = &self.limiter;
        let mut held = VecDeque::with_capacity(KEEP + 1);
        for round in 0..ROUNDS {
            let permit = if round % WAIT_EVERY == 0 {
                // Cannot be refused: the limiter is open, and at most two
                // wait with a queue limit of four.
                let mut acquire = l.acquire();
                match (&mut acquire).now_or_never() {
                    Some(granted) => Some(granted.expect("room was free")),
                    None if round % (4 * WAIT_EVERY) == 0 => {
                        // Leave the queue: a grant racing this drop must
                        // go on to the next waiter.
                        count(&self.tally.cancelled, 1);
                        None
                    }
                    None => {
                        count(&self.tally.queued, 1);
                        Some(block_on(acquire).expect("a queued acquire is granted"))
                    }
                }
            } else {
                l.try_acquire().ok()
            };
            let mut own = None;
            if let Some(p) = permit {
                p.touch();
                own = Some(p.lease_id());
                *self.newest[me].lock().unwrap() = own;
                held.push_back(p);
            }
            // Revoke the peer's newest lease, racing its drop, or else every
            // other round our own, for a reaper to reclaim while we hold it.
            // A lease already gone is refused by its generation.
            let peer = self.newest[1 - me].lock().unwrap().take();
            if let Some(id) = peer.or(own.filter(|_| round % 2 == 1)) {
                count(&self.tally.revoke_calls, 1);
                if l.revoke(id) {
                    count(&self.tally.revoked, 1);
                    count(&self.tally.revoked_peer, usize::from(peer.is_some()));
                }
            }
            if held.len() > KEEP {
                let p = held.pop_front().unwrap();
                // Every other one the peer drops, perhaps after a reaper
                // took it back.
                if round % 2 == 1 {
                    self.release(p);
                } else if let Err(Full(p) | Disconnected(p)) = to_peer.try_send(p) {
                    self.release(p);
                }
            }
            while let Ok(p) = from_peer.try_recv() {
                self.release(p);
            }
        }
        // What the peer sends after this is dropped, uncounted, with `from_peer`.
        for p in held.into_iter().chain(from_peer.try_iter()) {
            self.release(p);
        }
    }

    /// Reclaims every revoked lease at once; the `resizer` also revokes
    /// the oldest lease and now and then changes the capacity.
    fn reaper(&self, resizer: bool) {
        let l = &self.limiter;
        for turn in 1.. {
            if self.holders_done.load(Relaxed) {
                break;
            }
            count(&self.tally.reclaimed, l.reclaim_revoked(Duration::ZERO));
            if resizer {
                count(&self.tally.revoke_calls, 1);
                count(&self.tally.revoked, l.revoke_oldest(1));
                if turn % 512 == 0 {
                    l.set_capacity(SIZES[turn / 512 % SIZES.len()]).unwrap();
                    count(&self.tally.resizes, 1);
                }
            }
        }
    }
}

#[test]
fn revokes_and_reclaims_racing_drops_release_every_count_exactly_once() {
    let limiter = Limiter::builder()
        .capacity(CAPACITY)
        .max_capacity(6)
        .queue_limit(4)
        .build()
        .unwrap();
    let config = WatchdogConfig::default().interval(Duration::from_millis(10));
    let config = config.grace(Duration::from_secs(3600));
    let watchdog = Watchdog::spawn(limiter.clone(), config).unwrap();
    let s = Arc::new(Shared {
        limiter: limiter.clone(),
        newest: Default::default(),
        holders_done: AtomicBool::new(false),
        tally: Tally::default(),
    });
    let start = Instant::now();
    // A holder stuck for `LIMIT` means a waiter was never granted: fail
    // rather than hang. (A holder that panics drops its `finished`.)
    let (finished, holders_finished) = mpsc::channel();
    let (to_b, from_a) = mpsc::sync_channel(2);
    let (to_a, from_b) = mpsc::sync_channel(2);
    let holders = [(0, to_b, from_b), (1, to_a, from_a)].map(|(me, tx, rx)| {
        let (s, finished) = (s.clone(), finished.clone());
        std::thread::spawn(move || {
            s.holder(me, tx, rx);
            finished.send(()).unwrap();
        })
    });
    drop(finished);
    let reapers = [false, true].map(|resizer| {
        let s = s.clone();
        std::thread::spawn(move || s.reaper(resizer))
    });
    for _ in 0..2 {
        if let Err(RecvTimeoutError::Timeout) = holders_finished.recv_timeout(LIMIT) {
            panic!("stuck after {LIMIT:?}: {:#?}", limiter.health().snapshot());
        }
    }
    s.holders_done.store(true, Relaxed);
    for thread in holders.into_iter().chain(reapers) {
        thread.join().unwrap();
    }
    limiter.set_capacity(CAPACITY).unwrap();
    let elapsed = start.elapsed();
    let snap = limiter.health().snapshot();
    drop(watchdog);
    let t = &s.tally;
    let get = |n: &AtomicU64| n.load(Relaxed);
    let (revoked, reclaimed, dropped) = (get(&t.revoked), get(&t.reclaimed), get(&t.dropped));
    println!(
        "{elapsed:?}: revokes + reclaims + drops = {}, {} admitted, {} watchdog ticks, {t:#?}",
        revoked + reclaimed + dropped,
        snap.admitted_total,
        snap.watchdog.ticks,
    );

    assert_eq!(snap.in_use, 0, "a count was lost or released twice");
    assert_eq!(snap.repaired_total, 0, "the watchdog repaired");
    assert_eq!(snap.revoked_total, revoked, "revocations miscounted");
    assert_eq!(snap.reclaimed_total, reclaimed, "reclaims miscounted");
    assert_eq!(snap.revoked_pending, 0, "a revoked lease is pending");
    // Each drop seen revoked is a distinct revoked lease.
    assert!(get(&t.dropped_revoked) <= revoked);
    assert!(snap.watchdog.ticks > 0, "the watchdog never scanned");
    // The races happened, each way round: reclaims took leases from live
    // holders, holders' drops released revoked leases no reclaim took,
    // waiters were handed permits and left the queue, a peer revoked.
    assert!(reclaimed > 0 && revoked > reclaimed);
    assert!(get(&t.dropped_revoked) > 0 && get(&t.revoked_peer) > 0);
    assert!(get(&t.queued) > 0 && get(&t.cancelled) > 0);
    assert!(get(&t.resizes) > 0);

    // The full capacity, no more, is free again, each permit in its own slot.
    let all: Vec<_> = (0..CAPACITY).map(|_| limiter.try_acquire()).collect();
    assert!(all.iter().all(Result::is_ok), "capacity lost");
    assert!(limiter.try_acquire().is_err(), "above capacity");
    let slots: BTreeSet<_> = all.iter().flatten().map(|p| p.lease_id().slot).collect();
    assert_eq!(slots.len(), CAPACITY as usize, "a slot given out twice");
    drop(all);
    assert_eq!(limiter.in_use(), 0);
}
