//! Reject, Busy, Wait and Pause, each over real loopback sockets.

mod common;

use admit::Limiter;
use admit_tcp::{AdmitListener, Policy, DEFAULT_BUSY};
use common::{connect_from, eventually, read_until_close, serve, Outcome};
use futures::StreamExt;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

const LONG: Duration = Duration::from_secs(5);

#[tokio::test]
async fn reject_closes_at_once() {
    let limiter = Limiter::new(1);
    let listener = AdmitListener::builder(limiter.clone())
        .policy(Policy::Reject)
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let mut rx = serve(listener);
    let _c1 = connect_from(2, addr).await.unwrap();
    let _s1 = rx.recv().await.unwrap();
    let mut c2 = connect_from(2, addr).await.unwrap();
    assert_eq!(
        read_until_close(&mut c2, LONG).await,
        Outcome::Closed(Vec::new())
    );
    assert_eq!(limiter.health().snapshot().rejected_total["full"], 1);
}

#[tokio::test]
async fn reject_with_reset_sends_rst() {
    let limiter = Limiter::new(1);
    let listener = AdmitListener::builder(limiter.clone())
        .policy(Policy::Reject)
        .reset_rejected(true)
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let mut rx = serve(listener);
    let _c1 = connect_from(2, addr).await.unwrap();
    let _s1 = rx.recv().await.unwrap();
    let mut c2 = connect_from(2, addr).await.unwrap();
    assert_eq!(
        read_until_close(&mut c2, LONG).await,
        Outcome::Reset(Vec::new())
    );
    assert_eq!(limiter.health().snapshot().rejected_total["full"], 1);
}

#[tokio::test]
async fn busy_sends_its_message_then_closes() {
    let limiter = Limiter::new(1);
    let listener = AdmitListener::builder(limiter.clone())
        .policy(Policy::busy(&b"BUSY retry-after=9\n"[..]))
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let mut rx = serve(listener);
    let _c1 = connect_from(2, addr).await.unwrap();
    let _s1 = rx.recv().await.unwrap();
    let mut c2 = connect_from(3, addr).await.unwrap();
    assert_eq!(
        read_until_close(&mut c2, LONG).await,
        Outcome::Closed(b"BUSY retry-after=9\n".to_vec())
    );
    assert_eq!(limiter.health().snapshot().rejected_total["full"], 1);
}

#[tokio::test]
async fn busy_reaches_a_client_that_already_sent_data() {
    let limiter = Limiter::new(1);
    let listener = AdmitListener::builder(limiter.clone())
        .policy(Policy::busy_default())
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let _s1 = limiter.try_acquire().unwrap();
    let mut c = connect_from(2, addr).await.unwrap();
    // The request is in the server's receive buffer before it is refused.
    tokio::io::AsyncWriteExt::write_all(&mut c, b"GET / HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let _rx = serve(listener);
    assert_eq!(
        read_until_close(&mut c, LONG).await,
        Outcome::Closed(DEFAULT_BUSY.to_vec())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_admits_when_a_permit_frees_in_time() {
    let limiter = Limiter::builder()
        .capacity(1)
        .queue_limit(4)
        .build()
        .unwrap();
    let listener = AdmitListener::builder(limiter.clone())
        .policy(Policy::Wait(LONG))
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = listener.stats();
    let mut rx = serve(listener);
    let _c1 = connect_from(2, addr).await.unwrap();
    let s1 = rx.recv().await.unwrap();
    let _c2 = connect_from(3, addr).await.unwrap();
    // The limiter counts the waiter as it parks, the listener's stats a
    // moment later (once the accept loop has set the wait aside): wait
    // for both.
    eventually(LONG, "the second connection queues", || {
        limiter.waiting() == 1 && stats.waiting() == 1
    })
    .await;
    drop(s1);
    let s2 = rx.recv().await.unwrap();
    assert_eq!(s2.peer_addr().ip().to_string(), "127.0.0.3");
    assert_eq!(stats.waiting(), 0);
    let snap = limiter.health().snapshot();
    assert_eq!(snap.rejected_sum(), 0);
    assert_eq!(snap.admitted_total, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_times_out_with_the_busy_message() {
    let limiter = Limiter::builder()
        .capacity(1)
        .queue_limit(4)
        .build()
        .unwrap();
    let timeout = Duration::from_millis(150);
    let listener = AdmitListener::builder(limiter.clone())
        .policy(Policy::Wait(timeout))
        .busy_message(&b"BUSY retry-after=1\n"[..])
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let mut rx = serve(listener);
    let _c1 = connect_from(2, addr).await.unwrap();
    let _s1 = rx.recv().await.unwrap();
    let mut c2 = connect_from(3, addr).await.unwrap();
    let start = Instant::now();
    assert_eq!(
        read_until_close(&mut c2, LONG).await,
        Outcome::Closed(b"BUSY retry-after=1\n".to_vec())
    );
    assert!(start.elapsed() >= timeout - Duration::from_millis(20));
    let snap = limiter.health().snapshot();
    assert_eq!(snap.rejected_total["timeout"], 1);
    assert_eq!(snap.waiting, 0);
    assert_eq!(snap.in_use, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_connections_do_not_block_the_accept_loop() {
    // One permit, one queue place: the second client waits, the third finds
    // the queue full and is answered at once while the second still waits.
    let limiter = Limiter::builder()
        .capacity(1)
        .queue_limit(1)
        .build()
        .unwrap();
    let listener = AdmitListener::builder(limiter.clone())
        .policy(Policy::Wait(LONG))
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let mut rx = serve(listener);
    let _c1 = connect_from(2, addr).await.unwrap();
    let s1 = rx.recv().await.unwrap();
    let _c2 = connect_from(3, addr).await.unwrap();
    eventually(LONG, "the second connection queues", || {
        limiter.waiting() == 1
    })
    .await;
    let mut c3 = connect_from(4, addr).await.unwrap();
    let start = Instant::now();
    assert_eq!(
        read_until_close(&mut c3, LONG).await,
        Outcome::Closed(DEFAULT_BUSY.to_vec())
    );
    assert!(start.elapsed() < Duration::from_millis(500));
    assert_eq!(limiter.waiting(), 1);
    assert_eq!(limiter.health().snapshot().rejected_total["queue_full"], 1);
    drop(s1);
    let s2 = rx.recv().await.unwrap();
    assert_eq!(s2.peer_addr().ip().to_string(), "127.0.0.3");
}

#[tokio::test]
async fn wait_without_a_queue_is_busy_at_once() {
    let limiter = Limiter::builder()
        .capacity(1)
        .queue_limit(0)
        .build()
        .unwrap();
    let listener = AdmitListener::builder(limiter.clone())
        .policy(Policy::Wait(LONG))
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let _held = limiter.try_acquire().unwrap();
    let _rx = serve(listener);
    let mut c = connect_from(2, addr).await.unwrap();
    let start = Instant::now();
    assert_eq!(
        read_until_close(&mut c, LONG).await,
        Outcome::Closed(DEFAULT_BUSY.to_vec())
    );
    assert!(start.elapsed() < Duration::from_millis(500));
    assert_eq!(limiter.health().snapshot().rejected_total["full"], 1);
}

/// Pause: with the limiter full, the next client is neither admitted nor
/// refused; it is admitted when a permit is released.
async fn pause_resumes_on_release(queue_limit: u32) {
    let limiter = Limiter::builder()
        .capacity(1)
        .queue_limit(queue_limit)
        .build()
        .unwrap();
    let listener = AdmitListener::builder(limiter.clone())
        .policy(Policy::Pause)
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = listener.stats();
    let mut rx = serve(listener);
    let _c1 = connect_from(2, addr).await.unwrap();
    let s1 = rx.recv().await.unwrap();
    assert!(!stats.paused());
    let mut c2 = connect_from(3, addr).await.unwrap();
    let _c3 = connect_from(4, addr).await.unwrap();
    eventually(LONG, "the listener pauses", || stats.paused()).await;
    // Nothing comes while full: no admission, no close.
    let mut byte = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(100), c2.read(&mut byte))
            .await
            .is_err(),
        "a paused client must not be closed"
    );
    assert!(rx.try_recv().is_err());
    drop(s1);
    let s2 = tokio::time::timeout(LONG, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s2.peer_addr().ip().to_string(), "127.0.0.3");
    eventually(LONG, "the listener pauses again", || stats.paused()).await;
    assert!(rx.try_recv().is_err());
    drop(s2);
    let s3 = tokio::time::timeout(LONG, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s3.peer_addr().ip().to_string(), "127.0.0.4");
    assert_eq!(limiter.health().snapshot().rejected_sum(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_with_a_queue_resumes_on_release() {
    pause_resumes_on_release(4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_without_a_queue_resumes_on_release() {
    pause_resumes_on_release(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_sees_releases_made_outside_the_listener() {
    let limiter = Limiter::new(1);
    let listener = AdmitListener::builder(limiter.clone())
        .policy(Policy::Pause)
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = listener.stats();
    let held = limiter.try_acquire().unwrap();
    let mut rx = serve(listener);
    let _c = connect_from(2, addr).await.unwrap();
    eventually(LONG, "the listener pauses", || stats.paused()).await;
    assert!(rx.is_empty());
    drop(held);
    let s = tokio::time::timeout(LONG, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.peer_addr().ip().to_string(), "127.0.0.2");
    assert!(!stats.paused());
    assert_eq!(limiter.health().snapshot().rejected_sum(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_is_cancel_safe() {
    // A waiting connection survives many cancelled accept() calls.
    let limiter = Limiter::builder()
        .capacity(1)
        .queue_limit(4)
        .build()
        .unwrap();
    let mut listener = AdmitListener::builder(limiter.clone())
        .policy(Policy::Wait(LONG))
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let held = limiter.try_acquire().unwrap();
    let _c = connect_from(2, addr).await.unwrap();
    let mut cancelled = 0;
    while limiter.waiting() == 0 || cancelled < 20 {
        let r = tokio::time::timeout(Duration::from_millis(1), listener.accept()).await;
        assert!(
            r.is_err(),
            "nothing can be admitted while the permit is held"
        );
        cancelled += 1;
        assert!(cancelled < 5000, "the connection never queued");
    }
    drop(held);
    let (conn, peer) = tokio::time::timeout(LONG, listener.accept())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(conn.peer_addr(), peer);
    assert_eq!(limiter.health().snapshot().rejected_sum(), 0);
}

#[tokio::test]
async fn the_listener_is_a_stream() {
    let limiter = Limiter::new(2);
    let mut listener = AdmitListener::builder(limiter.clone())
        .policy(Policy::Reject)
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let _a = connect_from(2, addr).await.unwrap();
    let _b = connect_from(3, addr).await.unwrap();
    let first: Vec<_> = (&mut listener).take(2).collect().await;
    assert_eq!(first.len(), 2);
    assert!(first.iter().all(|r| r.is_ok()));
    assert_eq!(limiter.in_use(), 2);
    assert_eq!(listener.stats().admitted(), 2);
}

#[tokio::test]
async fn admitted_connections_get_nodelay_and_keepalive() {
    let limiter = Limiter::new(2);
    let mut listener = AdmitListener::bind("127.0.0.1:0", limiter).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _c = connect_from(2, addr).await.unwrap();
    let (conn, _) = listener.accept().await.unwrap();
    assert!(conn.get_ref().nodelay().unwrap());
    let sock = socket2::SockRef::from(conn.get_ref());
    assert!(sock.keepalive().unwrap());
    assert_eq!(sock.keepalive_time().unwrap(), Duration::from_secs(60));
    #[cfg(target_os = "linux")]
    {
        assert_eq!(sock.keepalive_interval().unwrap(), Duration::from_secs(10));
        assert_eq!(sock.keepalive_retries().unwrap(), 5);
    }
}

#[tokio::test]
async fn socket_options_follow_the_builder() {
    // Where accepted sockets inherit the listener's options, the listener
    // sets them once; either way each connection must end up with them.
    let limiter = Limiter::new(2);
    let mut listener = AdmitListener::builder(limiter.clone())
        .nodelay(false)
        .keepalive(Some(admit_tcp::Keepalive {
            idle: Duration::from_secs(30),
            ..admit_tcp::Keepalive::default()
        }))
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let _c = connect_from(2, listener.local_addr().unwrap())
        .await
        .unwrap();
    let (conn, _) = listener.accept().await.unwrap();
    assert!(!conn.get_ref().nodelay().unwrap());
    let sock = socket2::SockRef::from(conn.get_ref());
    assert!(sock.keepalive().unwrap());
    assert_eq!(sock.keepalive_time().unwrap(), Duration::from_secs(30));

    let mut plain = AdmitListener::builder(limiter)
        .keepalive(None)
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let _d = connect_from(3, plain.local_addr().unwrap()).await.unwrap();
    let (conn, _) = plain.accept().await.unwrap();
    assert!(conn.get_ref().nodelay().unwrap());
    assert!(!socket2::SockRef::from(conn.get_ref()).keepalive().unwrap());
}
