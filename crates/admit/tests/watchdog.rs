//! The watchdog and the health handle, on real time with small settings:
//! each fault a limiter meets in the field is injected, and the watchdog
//! must notice it, say so, and repair it by itself.

use admit::{Cause, HealthState, Limiter, Watchdog, WatchdogConfig};
use futures::StreamExt;
use std::time::{Duration, Instant};

const TICK: Duration = Duration::from_millis(20);

/// Polls `cond` until it holds or `limit` passes; returns the time it took.
fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

#[test]
fn leaked_permits_are_reclaimed_without_a_restart() {
    let l = Limiter::new(8);
    let max_idle = Duration::from_millis(200);
    let grace = Duration::from_millis(100);
    let _dog = Watchdog::spawn(
        l.clone(),
        WatchdogConfig::default()
            .interval(TICK)
            .max_idle(max_idle)
            .grace(grace),
    )
    .unwrap();
    assert_eq!(l.faults().leak(8), 8);
    let leaked_at = Instant::now();
    assert!(l.try_acquire().is_err(), "every permit leaked");
    let mut degraded = false;
    let bound = max_idle + grace + TICK * 2;
    let took = wait_for(Duration::from_secs(5), || {
        degraded |= l.health().state() == HealthState::Degraded(Cause::Leaking);
        l.try_acquire().is_ok()
    })
    .expect("acquires never succeeded again");
    let since_leak = leaked_at.elapsed();
    assert!(
        since_leak <= bound + Duration::from_millis(150),
        "recovered after {since_leak:?} (took {took:?}), bound {bound:?}"
    );
    assert!(degraded, "health never reported the leak");
    let snap = l.health().snapshot();
    assert_eq!(snap.reclaimed_total, 8);
    assert!(snap.revoked_total >= 8);
    assert_eq!(snap.in_use, 0);
    wait_for(Duration::from_secs(2), || {
        l.health().state() == HealthState::Healthy
    })
    .expect("state back to healthy");
}

#[test]
fn lost_wakeups_are_noticed_and_redriven() {
    let l = Limiter::builder()
        .capacity(1)
        .queue_limit(4)
        .build()
        .unwrap();
    let stall_after = Duration::from_millis(100);
    let _dog = Watchdog::spawn(
        l.clone(),
        WatchdogConfig::default()
            .interval(TICK)
            .stall_after(stall_after),
    )
    .unwrap();
    let mut changes = l.health().changes();
    let held = l.try_acquire().unwrap();
    // Polled once here, so the waiter is parked (ticket, slot and waker)
    // before the release: a waiter still parking when the hand-off is lost
    // finds the free permit itself, and there would be nothing to repair.
    let mut waiter = Box::pin(l.acquire());
    assert!(futures::executor::block_on(async { futures::poll!(&mut waiter) }).is_pending());
    assert_eq!(l.waiting(), 1);
    l.faults().stall(1);
    let released = Instant::now();
    drop(held);
    // Only the watchdog's re-drive can wake it now.
    drop(futures::executor::block_on(waiter).expect("waiter granted"));
    let took = released.elapsed();
    // The first tick that sees the stall starts its clock, so the bound is
    // stall_after plus up to two ticks, and slack for the watchdog and
    // waiter threads being scheduled late on a busy machine.
    assert!(
        took <= stall_after + TICK * 2 + Duration::from_millis(400),
        "waiter granted after {took:?}"
    );
    let snap = l.health().snapshot();
    assert!(snap.repairs.stalls >= 1, "{:?}", snap.repairs);
    assert_eq!(
        (snap.repairs.drift, snap.repairs.underflows),
        (0, 0),
        "{snap:?}"
    );
    let seen: Vec<_> = futures::executor::block_on(async {
        let mut v = Vec::new();
        while let Some(t) = changes.next().await {
            v.push(t.to);
            if t.to == HealthState::Degraded(Cause::Stalled) {
                break;
            }
        }
        v
    });
    assert!(
        seen.contains(&HealthState::Degraded(Cause::Stalled)),
        "{seen:?}"
    );
}

#[test]
fn a_dead_watchdog_is_reported() {
    let l = Limiter::new(4);
    let dog = Watchdog::spawn(l.clone(), WatchdogConfig::default().interval(TICK)).unwrap();
    wait_for(Duration::from_secs(2), || {
        l.health().snapshot().watchdog.ticks > 2
    })
    .expect("watchdog ticking");
    assert!(l.health().snapshot().watchdog.alive);
    dog.kill();
    let took = wait_for(Duration::from_secs(3), || {
        l.health().state() == HealthState::Degraded(Cause::WatchdogSilent)
    })
    .expect("silence never reported");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    let snap = l.health().snapshot();
    assert!(!snap.watchdog.alive);
    assert!(snap.watchdog.last_tick_ms >= 250);
    // Stopping a watchdog on purpose is not an outage.
    let l2 = Limiter::new(1);
    drop(Watchdog::spawn(l2.clone(), WatchdogConfig::default().interval(TICK)).unwrap());
    assert_eq!(l2.health().state(), HealthState::Healthy);
}

#[test]
fn count_drift_is_corrected() {
    let l = Limiter::new(4);
    let _held = l.try_acquire().unwrap();
    assert_eq!(l.faults().drift(3), 3);
    assert_eq!(l.in_use(), 4);
    let mut dog = Watchdog::new(l.clone(), WatchdogConfig::default().drift_ticks(3));
    assert_eq!(dog.tick().drift_repaired, 0);
    assert_eq!(dog.tick().drift_repaired, 0);
    assert_eq!(dog.tick().drift_repaired, 3);
    assert_eq!(l.in_use(), 1, "only the real permit remains counted");
    let snap = l.health().snapshot();
    assert_eq!(snap.repaired_total, 1);
    assert_eq!(
        (
            snap.repairs.drift,
            snap.repairs.stalls,
            snap.repairs.underflows
        ),
        (1, 0, 0)
    );
    assert!(l.try_acquire().is_ok());
}

#[test]
fn idle_leases_are_revoked_then_reclaimed_by_ticks() {
    let l = Limiter::new(3);
    let idle = l.try_acquire().unwrap();
    let busy = l.try_acquire().unwrap();
    let mut dog = Watchdog::new(
        l.clone(),
        WatchdogConfig::default()
            .max_idle(Duration::from_secs(10))
            .grace(Duration::from_secs(1)),
    );
    l.faults().advance_clock(6_000);
    busy.touch();
    l.faults().advance_clock(6_000);
    let r = dog.tick();
    assert_eq!(r.revoked, 1, "only the idle lease is revoked");
    assert!(idle.is_revoked());
    assert!(!busy.is_revoked());
    assert_eq!(l.health().state(), HealthState::Degraded(Cause::Leaking));
    l.faults().advance_clock(1_500);
    let r = dog.tick();
    assert_eq!(r.reclaimed, 1);
    assert_eq!(l.in_use(), 1);
    // The reclaimed holder's drop is a no-op.
    drop(idle);
    assert_eq!(l.in_use(), 1);
    assert_eq!(l.health().snapshot().repaired_total, 0);
    dog.tick();
    assert_eq!(l.health().state(), HealthState::Healthy);
    drop(busy);
}

#[test]
fn revoke_by_age_and_id() {
    let l = Limiter::new(4);
    let a = l.try_acquire().unwrap();
    l.faults().advance_clock(100);
    let b = l.try_acquire().unwrap();
    l.faults().advance_clock(100);
    let c = l.try_acquire().unwrap();
    assert_eq!(l.revoke_oldest(2), 2);
    assert!(a.is_revoked() && b.is_revoked() && !c.is_revoked());
    assert!(l.revoke(c.lease_id()));
    assert!(!l.revoke(c.lease_id()), "already revoked");
    assert_eq!(l.health().snapshot().revoked_total, 3);
    let id = a.lease_id();
    drop(a);
    assert!(!l.revoke(id), "a dropped lease cannot be revoked");
    drop((b, c));
    assert_eq!(l.revoke_idle(Duration::ZERO), 0);
}

#[test]
fn revoked_future_resolves_on_revocation() {
    let l = Limiter::new(1);
    let p = l.try_acquire().unwrap();
    let id = p.lease_id();
    let t = std::thread::spawn({
        let l = l.clone();
        move || {
            std::thread::sleep(Duration::from_millis(20));
            assert!(l.revoke(id));
        }
    });
    futures::executor::block_on(p.revoked());
    assert!(p.is_revoked());
    t.join().unwrap();
}

#[test]
fn snapshot_serialises_with_the_contract_fields() {
    let l = Limiter::builder().capacity(2).name("chat").build().unwrap();
    let _p = l.try_acquire().unwrap();
    let _q = l.try_acquire().unwrap();
    assert!(l.try_acquire().is_err());
    let v = serde_json::to_value(l.health().snapshot()).unwrap();
    for key in [
        "capacity",
        "in_use",
        "waiting",
        "admitted_total",
        "rejected_total",
        "revoked_total",
        "reclaimed_total",
        "repaired_total",
        "oldest_lease_ms",
        "state",
    ] {
        assert!(v.get(key).is_some(), "missing {key}: {v}");
    }
    assert_eq!(v["state"], "saturated");
    assert_eq!(v["rejected_total"]["full"], 1);
    assert_eq!(v["name"], "chat");
}

#[test]
fn saturation_and_recovery_are_streamed() {
    let l = Limiter::new(1);
    let mut changes = l.health().changes();
    let p = l.try_acquire().unwrap();
    assert_eq!(l.health().state(), HealthState::Saturated);
    drop(p);
    assert_eq!(l.health().state(), HealthState::Healthy);
    let (a, b) = futures::executor::block_on(async {
        (changes.next().await.unwrap(), changes.next().await.unwrap())
    });
    assert_eq!(
        (a.from, a.to),
        (HealthState::Healthy, HealthState::Saturated)
    );
    assert_eq!(
        (b.from, b.to),
        (HealthState::Saturated, HealthState::Healthy)
    );
}

/// Pending revocations are counted, not scanned for: revoked and not yet
/// dropped or reclaimed.
#[test]
fn revoked_pending_follows_revocations_drops_and_reclaims() {
    let l = Limiter::new(4);
    let health = l.health();
    let a = l.try_acquire().unwrap();
    let b = l.try_acquire().unwrap();
    assert!(l.revoke(a.lease_id()));
    assert_eq!(health.snapshot().revoked_pending, 1);
    drop(a);
    assert_eq!(health.snapshot().revoked_pending, 0);
    assert!(l.revoke(b.lease_id()));
    assert_eq!(health.snapshot().revoked_pending, 1);
    assert_eq!(l.reclaim_revoked(Duration::ZERO), 1);
    drop(b);
    let s = health.snapshot();
    assert_eq!(
        (s.revoked_pending, s.revoked_total, s.reclaimed_total),
        (0, 2, 1)
    );
    assert_eq!((s.in_use, s.repaired_total), (0, 0));
}

/// While a watchdog is alive a snapshot reads no lease table: the oldest
/// lease is the one the last tick found (0 once nothing is held). Without
/// one, the snapshot finds it itself.
#[test]
fn the_oldest_lease_comes_from_the_last_tick_while_a_watchdog_is_alive() {
    let l = Limiter::new(4);
    let health = l.health();
    let first = l.try_acquire().unwrap();
    l.faults().advance_clock(100);
    // No watchdog: the snapshot scans.
    assert_eq!(health.snapshot().oldest_lease_ms, 100);

    let mut dog = Watchdog::new(
        l.clone(),
        WatchdogConfig::default().interval(Duration::from_secs(3600)),
    );
    dog.tick();
    l.faults().advance_clock(50);
    assert_eq!(health.snapshot().oldest_lease_ms, 150);
    // A younger lease replaces the oldest one between ticks: until the next
    // tick the figure is the one the last scan found.
    let second = l.try_acquire().unwrap();
    drop(first);
    assert_eq!(health.snapshot().oldest_lease_ms, 150);
    dog.tick();
    l.faults().advance_clock(10);
    assert_eq!(health.snapshot().oldest_lease_ms, 10);
    drop(second);
    assert_eq!(health.snapshot().oldest_lease_ms, 0, "nothing held");
}
