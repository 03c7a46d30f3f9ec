//! Shared helpers: start a server on 127.0.0.1, HTTP clients, waiting for a
//! condition that has no signal of its own.
#![allow(dead_code)]

use admit::Limiter;
use admit_hyper::Server;
use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct Running {
    pub addr: SocketAddr,
    pub limiter: Limiter,
    stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Asks the server to shut down (it then drains).
    pub fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

/// Starts `server` serving `app` on an ephemeral port of 127.0.0.1, with a
/// limiter of `capacity` connections and the HTTP 503 listener defaults.
pub async fn start(server: Server, app: Router, capacity: u32) -> Running {
    let limiter = Limiter::builder()
        .capacity(capacity)
        .name("http")
        .build()
        .unwrap();
    let listener = admit_hyper::listener(limiter.clone())
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(listener, app, async {
        let _ = stopped.await;
    }));
    Running {
        addr,
        limiter,
        stop: Some(stop),
        task,
    }
}

pub type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// An HTTP/1.1 client (hyper-util's pooled client).
pub fn http1_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 prior-knowledge client.
pub fn http2_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// GET `url`; the status, headers and body.
pub async fn get(
    client: &HttpClient,
    url: &str,
) -> Result<(http::StatusCode, http::HeaderMap, Bytes), hyper_util::client::legacy::Error> {
    let res = client.get(url.parse().unwrap()).await?;
    let (parts, body) = res.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Ok((parts.status, parts.headers, body))
}

/// Waits until `cond` holds, checking every few milliseconds, for at most
/// five seconds. For conditions with no signal of their own (the server has
/// accepted a connection; a closed socket's permit went back).
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Awaits `fut`, failing the test if it takes more than five seconds.
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}
