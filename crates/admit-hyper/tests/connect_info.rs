//! Feature `axum`: an app that extracts axum's `ConnectInfo<SocketAddr>`
//! runs under `admit_hyper::Server` unchanged.
#![cfg(feature = "axum")]

use axum::extract::ConnectInfo;
use axum::routing::get;
use axum::Router;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn handlers_extract_the_peer_as_connect_info() {
    let limiter = admit::Limiter::new(4);
    let listener = admit_hyper::listener(limiter.clone())
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route(
        "/peer",
        get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
    );
    let server =
        tokio::spawn(admit_hyper::Server::new().serve(listener, app, std::future::pending()));

    let mut client = TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"GET /peer HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), client.read_to_string(&mut response))
        .await
        .expect("an answer in time")
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    let body = response.split("\r\n\r\n").nth(1).unwrap();
    assert_eq!(body, client.local_addr().unwrap().to_string());
    server.abort();
}
