//! `admit_hyper::Builder::reserve_for`: when every ordinary permit is held, a
//! request for a reserved path is still served, on the limiter's reserve,
//! and its connection closes after that one request; other requests are
//! refused as usual.

mod common;
use common::*;

use admit::Limiter;
use admit_hyper::Server;
use axum::{routing::get, Router};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// Sends one HTTP/1.1 request (keep-alive) and reads until the server
/// closes or a second passes; returns what arrived and whether it closed.
async fn request(addr: std::net::SocketAddr, path: &str) -> (String, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(1), s.read_to_end(&mut raw))
        .await
        .is_ok();
    (String::from_utf8_lossy(&raw).into_owned(), closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_paths_are_served_when_the_rest_is_taken() {
    // Three permits, one of them reserved: two ordinary connections fill it.
    let limiter = Limiter::builder()
        .capacity(3)
        .reserve(1)
        .name("status")
        .build()
        .unwrap();
    let listener = admit_hyper::listener(limiter.clone())
        .reserve_for(|path| path == "/health")
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/other", get(|| async { "other" }));
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(Server::new().serve(listener, app, async {
        let _ = stopped.await;
    }));

    let _held: Vec<TcpStream> = futures_util::future::join_all(
        (0..2).map(|_| async { TcpStream::connect(addr).await.unwrap() }),
    )
    .await;
    wait_until("both ordinary permits are held", || limiter.in_use() == 2).await;

    // Not reserved: refused.
    let (answer, closed) = request(addr, "/other").await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(closed);
    // Reserved: served, and closed after the one request, so the reserve
    // is free again for the next one. The socket closes before its permit
    // goes back (so open sockets never outnumber permits): the next
    // request waits for the permit, not just for the close.
    for _ in 0..3 {
        let (answer, closed) = request(addr, "/health?verbose=1").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("ok"), "{answer}");
        assert!(closed, "a reserved connection must not stay open");
        wait_until("the reserved permit went back", || limiter.in_use() == 2).await;
    }
    assert!(limiter.in_use() <= limiter.capacity());

    drop(_held);
    let _ = stop.send(());
    within("server drains", server).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_reserve_for_the_reserve_is_not_used() {
    let limiter = Limiter::builder().capacity(2).reserve(1).build().unwrap();
    let listener = admit_hyper::listener(limiter.clone())
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route("/health", get(|| async { "ok" }));
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(Server::new().serve(listener, app, async {
        let _ = stopped.await;
    }));
    let _held = TcpStream::connect(addr).await.unwrap();
    wait_until("the ordinary permit is held", || limiter.in_use() == 1).await;
    let (answer, _) = request(addr, "/health").await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    drop(_held);
    let _ = stop.send(());
    within("server drains", server).await.unwrap().unwrap();
}
