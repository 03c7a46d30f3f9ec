//! The end signal and the goodbye window, over loopback sockets: a revoked
//! (or idle) connection fires its signal, keeps writing for the window
//! while its reads wait, and then ends as it would without a window.

mod common;

use admit::{Limiter, Watchdog, WatchdogConfig};
use admit_tcp::{AdmitListener, Ended};
use common::{accept_one, connect_from, read_until_close, Outcome};
use std::io;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LONG: Duration = Duration::from_secs(5);

#[tokio::test]
async fn a_revoked_connection_says_goodbye_inside_its_window_then_ends() {
    let limiter = Limiter::new(4);
    let window = Duration::from_millis(300);
    let (mut client, mut conn) =
        accept_one(AdmitListener::builder(limiter.clone()).goodbye_window(window)).await;
    assert_eq!(conn.goodbye_window(), Some(window));
    let ending = conn.ending();
    assert!(!ending.is_ended());

    // The server serves: a read, with the end signal beside it. The read
    // is pending when the lease is revoked.
    let server = tokio::spawn(async move {
        let mut buf = [0u8; 64];
        let why = tokio::select! {
            r = conn.read(&mut buf) => panic!("read returned {r:?} instead of waiting"),
            why = ending.ended() => why,
        };
        let signalled = Instant::now();
        // Inside the window: writes work, and go out.
        conn.write_all(b"BYE revoked\n").await.unwrap();
        conn.flush().await.unwrap();
        // Reads wait for the window to close, then see end-of-file, even
        // though the client sent more in the meantime.
        let n = conn.read(&mut buf).await.unwrap();
        let waited = signalled.elapsed();
        let write = conn.write_all(b"late\n").await;
        (why, n, waited, write, conn.ended())
    });
    let revoked_at = Instant::now();
    assert_eq!(limiter.revoke_idle(Duration::ZERO), 1);

    // The client gets the goodbye, sends something the server will not
    // read, and then sees the close once the window has passed.
    let mut line = [0u8; 12];
    tokio::time::timeout(LONG, client.read_exact(&mut line))
        .await
        .expect("the goodbye arrives")
        .unwrap();
    assert_eq!(&line, b"BYE revoked\n");
    client.write_all(b"too late\n").await.unwrap();
    let outcome = read_until_close(&mut client, LONG).await;
    assert!(
        matches!(outcome, Outcome::Closed(ref rest) | Outcome::Reset(ref rest) if rest.is_empty()),
        "{outcome:?}"
    );
    assert!(revoked_at.elapsed() >= window - Duration::from_millis(20));

    let (why, n, waited, write, ended) = tokio::time::timeout(LONG, server)
        .await
        .expect("the server's read is woken when the window closes")
        .unwrap();
    assert_eq!(why, Ended::Revoked);
    assert_eq!(n, 0, "end-of-file after the window");
    assert!(
        waited >= window - Duration::from_millis(50),
        "the read waited for the window: {waited:?}"
    );
    assert_eq!(write.unwrap_err().kind(), io::ErrorKind::ConnectionAborted);
    assert_eq!(ended, Some(Ended::Revoked));
    assert_eq!(limiter.in_use(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_fires_the_signal_of_a_reader_blocked_on_a_silent_peer() {
    let limiter = Limiter::new(4);
    let _watchdog = Watchdog::spawn(
        limiter.clone(),
        WatchdogConfig::default()
            .interval(Duration::from_millis(20))
            .max_idle(Duration::from_millis(200))
            .grace(Duration::from_secs(10)),
    )
    .unwrap();
    let (mut client, mut conn) =
        accept_one(AdmitListener::builder(limiter.clone()).goodbye_window(Duration::from_secs(2)))
            .await;
    let ending = conn.ending();
    let server = tokio::spawn(async move {
        let mut buf = [0u8; 16];
        tokio::select! {
            r = conn.read(&mut buf) => panic!("read returned {r:?}"),
            why = ending.ended() => {
                conn.write_all(b"BYE idle\n").await.unwrap();
                // Done saying goodbye: dropping the stream closes it at
                // once, without waiting for the window.
                drop(conn);
                why
            }
        }
    });
    let start = Instant::now();
    assert_eq!(
        read_until_close(&mut client, LONG).await,
        Outcome::Closed(b"BYE idle\n".to_vec())
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "closed by the drop"
    );
    assert_eq!(server.await.unwrap(), Ended::Revoked);
    let snap = limiter.health().snapshot();
    assert_eq!((snap.revoked_total, snap.reclaimed_total), (1, 0));
    assert_eq!(snap.in_use, 0);
}

#[tokio::test]
async fn the_idle_timeout_fires_the_signal_with_its_own_reason() {
    let limiter = Limiter::new(4);
    let idle = Duration::from_millis(100);
    let (mut client, mut conn) = accept_one(
        AdmitListener::builder(limiter.clone())
            .idle_timeout(idle)
            .goodbye_window(Duration::from_millis(200)),
    )
    .await;
    let ending = conn.ending();
    let mut buf = [0u8; 16];
    let why = tokio::select! {
        r = conn.read(&mut buf) => panic!("read returned {r:?}"),
        why = ending.ended() => why,
    };
    assert_eq!(why, Ended::IdleTimeout);
    assert_eq!(ending.reason(), Some(Ended::IdleTimeout));
    conn.write_all(b"BYE idle\n").await.unwrap();
    assert_eq!(conn.read(&mut buf).await.unwrap(), 0);
    assert_eq!(
        conn.write_all(b"x").await.unwrap_err().kind(),
        io::ErrorKind::TimedOut
    );
    assert_eq!(
        read_until_close(&mut client, LONG).await,
        Outcome::Closed(b"BYE idle\n".to_vec())
    );
}

#[tokio::test]
async fn without_a_window_the_stream_ends_at_once_and_still_signals() {
    let limiter = Limiter::new(4);
    let mut listener = AdmitListener::bind("127.0.0.1:0", limiter.clone())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let mut client = connect_from(2, addr).await.unwrap();
    let (mut conn, _) = listener.accept().await.unwrap();
    assert_eq!(conn.goodbye_window(), None);
    let ending = conn.ending();
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 16];
        let n = conn.read(&mut buf).await.unwrap();
        let write = conn.write_all(b"late\n").await;
        (n, write.map_err(|e| e.kind()))
    });
    // Let the reader block in its read first (single-threaded runtime: it
    // runs while this task yields), so the revocation has to wake it.
    tokio::task::yield_now().await;
    let revoked = Instant::now();
    assert_eq!(limiter.revoke_idle(Duration::ZERO), 1);
    assert_eq!(
        tokio::time::timeout(LONG, ending.ended()).await.unwrap(),
        Ended::Revoked
    );
    let (n, write) = tokio::time::timeout(LONG, reader).await.unwrap().unwrap();
    assert_eq!(n, 0);
    assert_eq!(write, Err(io::ErrorKind::ConnectionAborted));
    assert!(revoked.elapsed() < Duration::from_secs(1));
    assert_eq!(
        read_until_close(&mut client, LONG).await,
        Outcome::Closed(Vec::new())
    );
}
