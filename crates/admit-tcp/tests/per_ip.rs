//! The per-address cap, per source address on loopback.

mod common;

use admit::Limiter;
use admit_tcp::{AdmitListener, PerIpLimit, Policy, DEFAULT_BUSY};
use common::{connect_from, read_until_close, serve, Outcome};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_cap_is_enforced_per_source_address() {
    let limiter = Limiter::new(100);
    let listener = AdmitListener::builder(limiter.clone())
        .policy(Policy::busy_default())
        .per_ip(3)
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let table = listener.per_ip_limit().unwrap().clone();
    let mut admitted = serve(listener);

    // Three from 127.0.0.2 are admitted.
    let mut clients_a = Vec::new();
    let mut conns_a = Vec::new();
    for _ in 0..3 {
        clients_a.push(connect_from(2, addr).await.unwrap());
        let conn = admitted.recv().await.unwrap();
        assert_eq!(conn.peer_addr().ip(), ip(2));
        conns_a.push(conn);
    }
    assert_eq!(table.count(ip(2)), 3);

    // The fourth from 127.0.0.2 is refused with the busy message...
    let mut fourth = connect_from(2, addr).await.unwrap();
    let outcome = read_until_close(&mut fourth, Duration::from_secs(5)).await;
    assert_eq!(outcome, Outcome::Closed(DEFAULT_BUSY.to_vec()));
    assert_eq!(limiter.health().snapshot().rejected_total["per_ip"], 1);

    // ...while 127.0.0.3 and 127.0.0.4 are unaffected.
    let mut others = Vec::new();
    for source in [3, 3, 3, 4] {
        let client = connect_from(source, addr).await.unwrap();
        let conn = admitted.recv().await.unwrap();
        assert_eq!(conn.peer_addr().ip(), ip(source));
        others.push((client, conn));
    }
    assert_eq!(table.count(ip(3)), 3);
    assert_eq!(table.count(ip(4)), 1);
    assert_eq!(limiter.in_use(), 7);

    // Dropping one admitted stream releases its address's count, and the
    // address is admitted again.
    drop(conns_a.pop());
    assert_eq!(table.count(ip(2)), 2);
    let _again = connect_from(2, addr).await.unwrap();
    let conn = admitted.recv().await.unwrap();
    assert_eq!(conn.peer_addr().ip(), ip(2));
    assert_eq!(table.count(ip(2)), 3);

    let snap = limiter.health().snapshot();
    assert_eq!(snap.rejected_total["per_ip"], 1);
    assert_eq!(snap.rejected_total["full"], 0);
    drop((conn, conns_a, others));
    assert_eq!(limiter.in_use(), 0);
    assert_eq!(table.tracked(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_table_caps_an_address_across_listeners() {
    let limiter = Limiter::new(100);
    let table = PerIpLimit::new(2);
    let mut addrs = Vec::new();
    let mut rxs = Vec::new();
    for _ in 0..2 {
        let listener = AdmitListener::builder(limiter.clone())
            .policy(Policy::Reject)
            .per_ip_limit(table.clone())
            .bind("127.0.0.1:0")
            .await
            .unwrap();
        addrs.push(listener.local_addr().unwrap());
        rxs.push(serve(listener));
    }
    let _c1 = connect_from(5, addrs[0]).await.unwrap();
    let s1 = rxs[0].recv().await.unwrap();
    let _c2 = connect_from(5, addrs[1]).await.unwrap();
    let s2 = rxs[1].recv().await.unwrap();
    // The third, on either listener, is over the address's cap.
    let mut c3 = connect_from(5, addrs[1]).await.unwrap();
    let outcome = read_until_close(&mut c3, Duration::from_secs(5)).await;
    assert!(matches!(outcome, Outcome::Closed(b) | Outcome::Reset(b) if b.is_empty()));
    assert_eq!(limiter.health().snapshot().rejected_total["per_ip"], 1);
    assert_eq!(table.count(ip(5)), 2);
    drop((s1, s2));
    assert_eq!(table.count(ip(5)), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_table_refuses_new_addresses_and_counts_them() {
    // A table of 64 slots (the smallest), filled by hand, refuses a new
    // address rather than admitting one it cannot count.
    let limiter = Limiter::new(100);
    let table = PerIpLimit::with_slots(4, 64);
    let fillers: Vec<_> = (0..10_000u32)
        .filter_map(|i| {
            table
                .try_acquire(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)))
                .ok()
        })
        .collect();
    assert_eq!(fillers.len(), 64);
    let listener = AdmitListener::builder(limiter.clone())
        .policy(Policy::busy_default())
        .per_ip_limit(table.clone())
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let _rx = serve(listener);
    let mut client = connect_from(7, addr).await.unwrap();
    let outcome = read_until_close(&mut client, Duration::from_secs(5)).await;
    assert_eq!(outcome, Outcome::Closed(DEFAULT_BUSY.to_vec()));
    assert_eq!(limiter.health().snapshot().rejected_total["per_ip"], 1);
    assert!(table.table_full_total() > 0);
    assert_eq!(limiter.in_use(), 0);
    drop(fillers);
}
