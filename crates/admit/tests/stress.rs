//! Stress: revocations and forced reclaims racing holders' drops on real
//! threads, with permits moving between threads (so freed lease slots go
//! through the threads' slot caches and the shared free list alike). Every
//! count must come back exactly once: the limiter ends empty, with nothing
//! to repair, and every slot is still usable.

use admit::Limiter;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

const CAPACITY: u32 = 8;
const CYCLES: usize = 200_000;

#[test]
fn reclaims_racing_drops_release_every_count_exactly_once() {
    let l = Limiter::new(CAPACITY);
    let done = std::sync::Arc::new(AtomicBool::new(false));

    // Holders: take permits, hand half of them to the other holder, drop.
    let (to_b, from_a) = mpsc::sync_channel::<admit::Permit>(4);
    let holder_a = {
        let l = l.clone();
        std::thread::spawn(move || {
            let mut granted = 0u64;
            for i in 0..CYCLES {
                if let Ok(p) = l.try_acquire() {
                    granted += 1;
                    p.touch();
                    if i % 2 == 0 {
                        // The other thread drops it: its slot lands in
                        // that thread's cache.
                        if to_b.send(p).is_err() {
                            break;
                        }
                    }
                }
            }
            granted
        })
    };
    let holder_b = {
        let l = l.clone();
        std::thread::spawn(move || {
            let mut granted = 0u64;
            loop {
                match from_a.recv_timeout(Duration::from_millis(1)) {
                    Ok(p) => drop(p),
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                }
                if let Ok(p) = l.try_acquire() {
                    granted += 1;
                    drop(p);
                }
            }
            granted
        })
    };
    // The reaper: revokes everything it sees and reclaims at once.
    let reaper = {
        let l = l.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            let mut reclaimed = 0;
            while !done.load(Ordering::Acquire) {
                l.revoke_oldest(CAPACITY as usize);
                reclaimed += l.reclaim_revoked(Duration::ZERO);
            }
            reclaimed
        })
    };

    let granted = holder_a.join().unwrap() + holder_b.join().unwrap();
    done.store(true, Ordering::Release);
    let reclaimed = reaper.join().unwrap();

    let snap = l.health().snapshot();
    assert_eq!(snap.in_use, 0, "a count was lost or released twice");
    assert_eq!(snap.repaired_total, 0, "a count was released twice");
    assert_eq!(snap.reclaimed_total, reclaimed as u64);
    assert_eq!(snap.revoked_pending, 0);
    assert!(granted > 0);
    // Every slot is free and distinct: the full capacity can be taken.
    let all: Vec<_> = (0..CAPACITY).map(|_| l.try_acquire().unwrap()).collect();
    let mut slots: Vec<_> = all.iter().map(|p| p.lease_id().slot).collect();
    slots.sort_unstable();
    slots.dedup();
    assert_eq!(slots.len(), CAPACITY as usize);
    drop(all);
    assert_eq!(l.in_use(), 0);
    println!("{granted} permits granted, {reclaimed} reclaimed while held");
}
