//! Revocation and idle timeouts really close the socket.

mod common;

use admit::{Limiter, Watchdog, WatchdogConfig};
use admit_tcp::{AdmitListener, Ended};
use common::{accept_one, connect_from, read_until_close, serve, Outcome};
use std::io;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

const LONG: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_revoking_an_idle_lease_closes_the_connection() {
    let limiter = Limiter::new(4);
    let max_idle = Duration::from_millis(200);
    let _watchdog = Watchdog::spawn(
        limiter.clone(),
        WatchdogConfig::default()
            .interval(Duration::from_millis(20))
            .max_idle(max_idle)
            .grace(Duration::from_secs(10)),
    )
    .unwrap();
    let listener = AdmitListener::bind("127.0.0.1:0", limiter.clone())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let mut rx = serve(listener);

    let mut client = connect_from(2, addr).await.unwrap();
    let start = Instant::now();
    let mut conn = rx.recv().await.unwrap();
    // The server waits on a read that the silent client never satisfies;
    // the revocation wakes it with end-of-file.
    let (done_tx, done_rx) = oneshot::channel();
    tokio::spawn(async move {
        let mut buf = [0u8; 16];
        let n = conn.read(&mut buf).await.unwrap();
        let ended = conn.ended();
        let write = conn.write_all(b"late\n").await;
        drop(conn);
        let _ = done_tx.send((n, ended, write));
    });

    // The client sees the close.
    assert_eq!(
        read_until_close(&mut client, LONG).await,
        Outcome::Closed(Vec::new())
    );
    assert!(start.elapsed() >= max_idle - Duration::from_millis(20));
    let (n, ended, write) = done_rx.await.unwrap();
    assert_eq!(n, 0);
    assert_eq!(ended, Some(Ended::Revoked));
    assert_eq!(write.unwrap_err().kind(), io::ErrorKind::ConnectionAborted);
    let snap = limiter.health().snapshot();
    assert_eq!(snap.revoked_total, 1);
    // The holder let go by itself; nothing had to be reclaimed.
    assert_eq!(snap.reclaimed_total, 0);
    assert_eq!(snap.in_use, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_connection_is_not_revoked() {
    let limiter = Limiter::new(4);
    let _watchdog = Watchdog::spawn(
        limiter.clone(),
        WatchdogConfig::default()
            .interval(Duration::from_millis(10))
            .max_idle(Duration::from_millis(200)),
    )
    .unwrap();
    let listener = AdmitListener::bind("127.0.0.1:0", limiter.clone())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let mut rx = serve(listener);
    let mut client = connect_from(2, addr).await.unwrap();
    let mut conn = rx.recv().await.unwrap();
    let echo = tokio::spawn(async move {
        let mut buf = [0u8; 16];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return conn.ended(),
                Ok(n) => {
                    if conn.write_all(&buf[..n]).await.is_err() {
                        return conn.ended();
                    }
                }
            }
        }
    });
    // Traffic every 40 ms for three times max_idle keeps the lease alive.
    let mut buf = [0u8; 5];
    for _ in 0..15 {
        client.write_all(b"ping\n").await.unwrap();
        client.read_exact(&mut buf).await.unwrap();
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    assert_eq!(limiter.health().snapshot().revoked_total, 0);
    drop(client);
    assert_eq!(echo.await.unwrap(), None);
    assert_eq!(limiter.in_use(), 0);
}

#[tokio::test]
async fn revoking_by_hand_fails_writes_and_closes() {
    let limiter = Limiter::new(4);
    let mut listener = AdmitListener::bind("127.0.0.1:0", limiter.clone())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let mut client = connect_from(2, addr).await.unwrap();
    let (mut conn, peer) = listener.accept().await.unwrap();
    assert_eq!(peer, client.local_addr().unwrap());
    conn.write_all(b"hello\n").await.unwrap();
    assert!(limiter.revoke(conn.permit().lease_id()));
    assert!(conn.is_revoked());
    let err = conn.write_all(b"more\n").await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
    // The write side was shut down: the client reads the greeting, then EOF,
    // while the server still holds the stream.
    assert_eq!(
        read_until_close(&mut client, LONG).await,
        Outcome::Closed(b"hello\n".to_vec())
    );
    assert_eq!(limiter.in_use(), 1);
    drop(conn);
    assert_eq!(limiter.in_use(), 0);
}

#[tokio::test]
async fn the_idle_timeout_closes_a_silent_connection() {
    let limiter = Limiter::new(4);
    let idle = Duration::from_millis(100);
    let (mut client, mut conn) =
        accept_one(AdmitListener::builder(limiter.clone()).idle_timeout(idle)).await;
    assert_eq!(conn.idle_timeout(), Some(idle));
    let start = Instant::now();
    // Traffic first: the timeout counts from the last byte.
    client.write_all(b"x").await.unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(conn.read(&mut buf).await.unwrap(), 1);
    let after_io = Instant::now();
    assert_eq!(conn.read(&mut buf).await.unwrap(), 0);
    assert!(after_io.elapsed() >= idle - Duration::from_millis(5));
    assert_eq!(conn.ended(), Some(Ended::IdleTimeout));
    assert_eq!(
        conn.write_all(b"y").await.unwrap_err().kind(),
        io::ErrorKind::TimedOut
    );
    assert_eq!(
        read_until_close(&mut client, LONG).await,
        Outcome::Closed(Vec::new())
    );
    assert!(start.elapsed() < LONG);
    drop(conn);
    assert_eq!(limiter.in_use(), 0);
}

#[tokio::test]
async fn admitted_reports_its_lease() {
    let limiter = Limiter::new(4);
    let mut listener = AdmitListener::bind("127.0.0.1:0", limiter.clone())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let client = connect_from(3, addr).await.unwrap();
    let (conn, _) = listener.accept().await.unwrap();
    assert_eq!(conn.peer_addr(), client.local_addr().unwrap());
    assert!(!conn.is_revoked());
    assert!(conn.lease_age() < Duration::from_secs(5));
    assert_eq!(
        limiter.health().snapshot().oldest_lease_ms,
        conn.lease_age().as_millis() as u64
    );
    assert_eq!(conn.ended(), None);
}
