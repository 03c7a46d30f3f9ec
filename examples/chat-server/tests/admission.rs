//! How the HTTP/WebSocket listener admits and refuses: the contract's
//! `503` at capacity, waiting for a slot with `--queue`, and keep-alive
//! connections told to go away while the server drains.

mod common;
use common::*;
use serde_json::json;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_capacity_http_gets_503_with_retry_after_and_a_json_error() {
    let srv = InProc::start(chat_server::Config {
        max_connections: 1,
        ..config("busy-503")
    })
    .await;
    let a = srv.addrs;
    let token = register(a.http, "holder").await;
    // The registering connection gives its slot back once closed.
    wait_health(a.status, DEADLINE, |_, h| {
        h["limiters"]["chat"]["in_use"] == 0
    })
    .await;
    let _holder = Ws::login(a.http, &token).await;

    let r = http(a.http, "GET", "/api/rooms", Some(&token), None).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("2"));
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body = r.json();
    assert_eq!(body["error"], "unavailable");
    assert!(body["message"].is_string(), "{body}");
    let (_, h) = health(a.status).await;
    assert!(
        h["limiters"]["chat"]["rejected_total"]["full"]
            .as_u64()
            .unwrap()
            >= 1,
        "{h}"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_queue_a_websocket_waits_for_a_slot_instead_of_a_503() {
    let srv = InProc::start(chat_server::Config {
        max_connections: 1,
        queue: 4,
        ..config("queue")
    })
    .await;
    let a = srv.addrs;
    let token = register(a.http, "patient").await;
    wait_health(a.status, DEADLINE, |_, h| {
        h["limiters"]["chat"]["in_use"] == 0
    })
    .await;
    let mut holder = Ws::login(a.http, &token).await;

    // The second connection waits in the limiter's queue...
    let waiter = {
        let token = token.clone();
        tokio::spawn(async move {
            let mut ws = Ws::login(a.http, &token).await;
            ws.send(json!({"type":"ping"})).await;
            ws.recv_type("pong").await
        })
    };
    wait_health(a.status, DEADLINE, |_, h| {
        h["limiters"]["chat"]["waiting"] == 1
    })
    .await;
    assert!(!waiter.is_finished());
    // ...and is admitted as soon as the holder leaves.
    holder.send(json!({"type":"ping"})).await;
    holder.recv_type("pong").await;
    drop(holder);
    let pong = tokio::time::timeout(DEADLINE, waiter)
        .await
        .expect("the waiting client is admitted")
        .unwrap();
    assert_eq!(pong["type"], "pong");
    let (_, h) = health(a.status).await;
    let rejected = &h["limiters"]["chat"]["rejected_total"];
    assert!(
        rejected
            .as_object()
            .unwrap()
            .values()
            .all(|n| n.as_u64() == Some(0)),
        "nobody was refused: {h}"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_draining_keep_alive_answers_say_connection_close() {
    let srv = InProc::start(config("drain-keepalive")).await;
    let a = srv.addrs;
    let token = register(a.http, "keeper").await;
    let request = format!(
        "GET /api/rooms HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\r\n",
        a.http
    );
    let mut conn = TcpStream::connect(a.http).await.unwrap();

    // Before the drain: the connection is kept alive.
    conn.write_all(request.as_bytes()).await.unwrap();
    let first = read_response(&mut conn).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("connection"), None);

    let r = http(
        a.status,
        "POST",
        "/admin/drain",
        Some("admin-secret"),
        Some(b""),
    )
    .await;
    assert_eq!(r.status, 202);

    // After it: answered, then closed.
    conn.write_all(request.as_bytes()).await.unwrap();
    let second = read_response(&mut conn).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.header("connection"), Some("close"));
    let mut rest = Vec::new();
    tokio::time::timeout(DEADLINE, conn.read_to_end(&mut rest))
        .await
        .expect("the server closes the connection")
        .unwrap();
    assert!(rest.is_empty());
    // Newcomers are refused with the 503.
    let r = http(a.http, "GET", "/api/rooms", Some(&token), None).await;
    assert_eq!(r.status, 503);
    srv.stop().await;
}

/// Reads one response with a `Content-Length` body from a kept-alive
/// connection.
async fn read_response(conn: &mut TcpStream) -> Resp {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .expect("a Content-Length");
            if raw.len() >= end + 4 + len {
                return parse_response(&raw[..end + 4 + len]);
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
            .await
            .expect("a response in time")
            .unwrap();
        assert!(n > 0, "closed before a full response");
        raw.extend_from_slice(&buf[..n]);
    }
}
