//! `axum::serve` over admit-tcp's `AdmitListener`: connections, not
//! requests, are admitted, and handlers see the peer's address through
//! `ConnectInfo<SocketAddr>`.
//!
//! A connection over the cap (or over the per-address cap) is answered with
//! a plain `503` and closed by the listener, before axum ever sees it.
//!
//! ```text
//! adopt-axum-listener [--addr 127.0.0.1:8080] [--capacity 10000] [--per-ip 64]
//! ```

use admit_tcp::{AdmitListener, Policy};
use axum::extract::ConnectInfo;
use axum::{routing::get, Router};
use std::net::SocketAddr;

/// What a refused connection reads: a complete HTTP response, so browsers
/// and HTTP clients show a 503 rather than a broken connection.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
retry-after: 5\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let capacity = adopt::setting("capacity", "ADOPT_CAPACITY", 10_000);
    let per_ip = adopt::setting("per-ip", "ADOPT_PER_IP", 64);
    let limiter = admit_tcp::admit::Limiter::new(capacity);

    let listener = AdmitListener::builder(limiter)
        .policy(Policy::busy(BUSY))
        .per_ip(per_ip)
        .bind(adopt::listen_addr())
        .await?;
    adopt::announce(listener.local_addr()?);

    let app = Router::new().route("/", get(hello));
    axum::serve(
        listener.with_connect_info(),
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}

async fn hello(ConnectInfo(peer): ConnectInfo<SocketAddr>) -> String {
    format!("hello {}\n", peer.ip())
}
