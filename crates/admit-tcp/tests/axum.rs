//! `axum::serve` over an `AdmitListener` (feature `axum`): a real axum app on
//! loopback, the permit held for as long as the connection, refusals by the
//! listener's policy, and `ConnectInfo<SocketAddr>`.
#![cfg(feature = "axum")]

mod common;

use admit_tcp::{AdmitListener, Policy, DEFAULT_BUSY};
use axum::extract::ConnectInfo;
use axum::routing::get;
use axum::Router;
use common::{connect_from, eventually};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(5);

/// Sends one keep-alive `GET` and reads its response: status line and body.
async fn get_keep_alive(stream: &mut TcpStream, path: &str) -> (String, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let head_end = loop {
        let n = tokio::time::timeout(LIMIT, stream.read(&mut chunk))
            .await
            .expect("a response in time")
            .unwrap();
        assert!(n > 0, "the server closed before answering");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("a content-length");
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the server closed inside the body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let status = head.lines().next().unwrap().to_owned();
    let body = String::from_utf8(buf[head_end..head_end + length].to_vec()).unwrap();
    (status, body)
}

#[tokio::test]
async fn axum_serve_holds_the_permit_for_the_connections_life() {
    let limiter = admit::Limiter::new(1);
    let listener = AdmitListener::builder(limiter.clone())
        .policy(Policy::busy_default())
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route("/", get(|| async { "hello" }));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let mut client = connect_from(2, addr).await.unwrap();
    let (status, body) = get_keep_alive(&mut client, "/").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(body, "hello");
    // The response is done, the connection is not: it keeps its permit.
    assert_eq!(limiter.in_use(), 1);

    // The only permit is held, so the next connection gets the policy's answer.
    let mut second = connect_from(3, addr).await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(LIMIT, second.read_to_end(&mut reply))
        .await
        .expect("the refusal in time")
        .unwrap();
    assert_eq!(reply, DEFAULT_BUSY);
    assert_eq!(limiter.health().snapshot().rejected_total["full"], 1);

    // The client hangs up: axum drops the stream and the permit goes back.
    drop(client);
    eventually(LIMIT, "the permit is released", || limiter.in_use() == 0).await;
    let mut third = connect_from(4, addr).await.unwrap();
    let (status, _) = get_keep_alive(&mut third, "/").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    server.abort();
}

#[tokio::test]
async fn connect_info_is_the_peer_address() {
    let limiter = admit::Limiter::new(8);
    let listener = AdmitListener::builder(limiter.clone())
        .per_ip(2)
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route(
        "/peer",
        get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
    );
    let server = tokio::spawn(async move {
        axum::serve(
            listener.with_connect_info(),
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });

    let mut client = connect_from(5, addr).await.unwrap();
    let (status, body) = get_keep_alive(&mut client, "/peer").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(body, client.local_addr().unwrap().to_string());
    assert_eq!(limiter.in_use(), 1);
    drop(client);
    eventually(LIMIT, "the permit is released", || limiter.in_use() == 0).await;
    server.abort();
}
