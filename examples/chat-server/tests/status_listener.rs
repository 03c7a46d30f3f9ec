//! The status listener cannot be starved by anonymous clients: a few
//! connections per address, a cap on live `/events` streams, and the
//! limiter's reserve kept for `/health`, `/metrics` and `/admin`.

mod common;
use common::*;
use std::net::IpAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

async fn status_in_use(status: std::net::SocketAddr) -> u64 {
    let (_, h) = health(status).await;
    h["limiters"]["status"]["in_use"].as_u64().unwrap()
}

/// Opens `n` idle connections from `src`.
async fn hold(src: IpAddr, addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(connect_from(src, addr).await);
    }
    held
}

/// Reads an HTTP answer from a connection that asked for one.
async fn answer(s: &mut TcpStream) -> Resp {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
            .await
            .expect("answer")
            .unwrap();
        raw.extend_from_slice(&buf[..n]);
        if n == 0 || raw.windows(4).any(|w| w == b"\r\n\r\n") {
            return parse_response(&raw);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_at_most_eight() {
    let srv = InProc::start(config("status-per-ip")).await;
    let a = srv.addrs;
    let before = status_in_use(a.status).await;
    let _held = hold(ip("127.0.0.31"), a.status, 8).await;
    let start = Instant::now();
    while status_in_use(a.status).await < before + 8 {
        assert!(start.elapsed() < DEADLINE);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let raw = raw_from(
        ip("127.0.0.31"),
        a.status,
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert!(
        raw.starts_with(b"HTTP/1.1 503"),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_32_event_streams() {
    let srv = InProc::start(config("status-events")).await;
    let a = srv.addrs;
    let mut streams = Vec::new();
    for i in 0..32 {
        let src = ip(&format!("127.0.0.{}", 40 + i / 8));
        let mut s = connect_from(src, a.status).await;
        s.write_all(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let r = answer(&mut s).await;
        assert_eq!(r.status, 200, "stream {i}");
        streams.push(s);
    }
    let r = http(a.status, "GET", "/events", None, None).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "unavailable");
    assert!(r.header("retry-after").is_some());
    // One goes, one more may come.
    drop(streams.pop());
    let start = Instant::now();
    loop {
        let mut s = connect_from(ip("127.0.0.50"), a.status).await;
        s.write_all(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        if answer(&mut s).await.status == 200 {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "a stream's place was not given back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_a_fresh_address_while_everything_else_is_held() {
    let srv = InProc::start(config("status-starved")).await;
    let a = srv.addrs;
    // Anonymous clients hold every ordinary place: 56 idle connections
    // from seven addresses, eight each.
    let mut held = Vec::new();
    for i in 0..7 {
        held.extend(hold(ip(&format!("127.0.0.{}", 60 + i)), a.status, 8).await);
    }
    let start = Instant::now();
    loop {
        // The eighth address's connection is refused once all are held.
        let raw = raw_from(
            ip("127.0.0.70"),
            a.status,
            b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        if raw.starts_with(b"HTTP/1.1 503") {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the ordinary places never filled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // From an address that holds nothing, /health, /metrics and /admin
    // still answer, each within a second.
    for (path, token) in [
        ("/health", None),
        ("/metrics", None),
        ("/admin/revoke", Some("admin-secret")),
    ] {
        let started = Instant::now();
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n");
        if let Some(t) = token {
            req = format!("POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\nContent-Type: application/json\r\nContent-Length: 13\r\n");
            req.push_str("\r\n{\"idle_ms\":1}");
        } else {
            req.push_str("\r\n");
        }
        let raw = raw_from(ip("127.0.0.99"), a.status, req.as_bytes()).await;
        let r = parse_response(&raw);
        assert_eq!(r.status, 200, "{path}: {}", String::from_utf8_lossy(&raw));
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{path} took {:?}",
            started.elapsed()
        );
    }
    drop(held);
    srv.stop().await;
}
