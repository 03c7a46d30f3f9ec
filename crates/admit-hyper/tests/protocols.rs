//! Which protocols a `Server` speaks, and what bounds the requests an HTTP/2
//! connection carries: raw HTTP/2 prefaces against an HTTP/1-only server,
//! and hyper's own HTTP/2 client opening many streams on one connection
//! against a handler that waits until the test lets it answer.

mod common;

use admit::Limiter;
use admit_hyper::{HttpAdmitLayer, Server, DEFAULT_MAX_CONCURRENT_STREAMS};
use axum::{routing, Router};
use bytes::Bytes;
use common::{get, http1_client, start, wait_until, within};
use futures::stream::{FuturesUnordered, StreamExt};
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// The client's HTTP/2 preface, an empty SETTINGS frame, and a HEADERS
/// frame (stream 1, END_STREAM | END_HEADERS) for `GET /` over `http`,
/// in HPACK's static table: `:method GET`, `:scheme http`, `:path /`.
const H2_GET: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\
    \x00\x00\x00\x04\x00\x00\x00\x00\x00\
    \x00\x00\x03\x01\x05\x00\x00\x00\x01\x82\x86\x84";

/// Counts the requests inside the `/` handler, now and at most, and makes
/// each wait for a permit the test hands out. `/quick` answers at once and
/// is not counted.
#[derive(Clone)]
struct Gate {
    calls: Arc<AtomicUsize>,
    active: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    open: Arc<Semaphore>,
}

impl Gate {
    fn new() -> Gate {
        Gate {
            calls: Arc::default(),
            active: Arc::default(),
            peak: Arc::default(),
            open: Arc::new(Semaphore::new(0)),
        }
    }

    fn app(&self) -> Router {
        let gate = self.clone();
        Router::new()
            .route(
                "/",
                routing::get(move || {
                    let gate = gate.clone();
                    async move {
                        gate.calls.fetch_add(1, Ordering::SeqCst);
                        let now = gate.active.fetch_add(1, Ordering::SeqCst) + 1;
                        gate.peak.fetch_max(now, Ordering::SeqCst);
                        gate.open.acquire().await.unwrap().forget();
                        gate.active.fetch_sub(1, Ordering::SeqCst);
                        "done"
                    }
                }),
            )
            .route("/quick", routing::get(|| async { "quick" }))
    }

    fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Lets the handlers answer one request at a time, `total` in all, each
    /// time first waiting until as many requests are inside as `bound`
    /// allows, and checking that never more were.
    async fn release_one_by_one(&self, total: usize, bound: usize) {
        for released in 0..total {
            let expected = bound.min(total - released);
            wait_until(&format!("{expected} requests reach the handler"), || {
                self.active() >= expected
            })
            .await;
            assert!(
                self.peak() <= bound,
                "{} requests ran at once; the bound is {bound}",
                self.peak()
            );
            self.open.add_permits(1);
        }
    }
}

/// An HTTP/2 (prior knowledge) connection with hyper's client, whose
/// SETTINGS (the stream bound among them) the server has acknowledged
/// and the client has received: one request has been answered on it.
async fn h2_connect(addr: SocketAddr) -> SendRequest<Empty<Bytes>> {
    h2_connection(addr).await.0
}

/// [`h2_connect`], and the client's connection task, which ends when the
/// connection closes.
async fn h2_connection(
    addr: SocketAddr,
) -> (SendRequest<Empty<Bytes>>, JoinHandle<hyper::Result<()>>) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let res = sender.send_request(request(addr, "/quick")).await.unwrap();
    assert_eq!(res.status(), 200);
    (sender, conn)
}

fn request(addr: SocketAddr, path: &str) -> http::Request<Empty<Bytes>> {
    http::Request::get(format!("http://{addr}{path}"))
        .body(Empty::new())
        .unwrap()
}

/// Sends `n` requests for `/` on `sender` at once; each task yields the
/// status and the `Retry-After` header, if any.
fn send_many(
    sender: &SendRequest<Empty<Bytes>>,
    addr: SocketAddr,
    n: usize,
) -> Vec<JoinHandle<(http::StatusCode, Option<String>)>> {
    (0..n)
        .map(|_| {
            let mut sender = sender.clone();
            tokio::spawn(async move {
                let res = sender.send_request(request(addr, "/")).await.unwrap();
                let retry_after = res
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_owned());
                (res.status(), retry_after)
            })
        })
        .collect()
}

/// Writes `bytes` and reads until the server closes, or until it sent an
/// HTTP/2 SETTINGS frame (a server speaking HTTP/2 keeps the connection
/// open); what it answered.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    within("the server to answer and close", async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
            if answer.len() >= 9 && answer[3] == 0x04 && !answer.starts_with(b"HTTP/") {
                return;
            }
        }
    })
    .await;
    answer
}

#[tokio::test]
async fn an_http1_only_server_refuses_the_http2_preface() {
    for server in [Server::new(), Server::new().http1_and_http2().http1_only()] {
        let gate = Gate::new();
        gate.open.add_permits(100);
        let server = start(server, gate.app(), 4).await;

        // A raw HTTP/2 request: the connection is closed and nothing of
        // HTTP/2 comes back (a served one starts with the server's
        // SETTINGS frame).
        let answer = within("the raw preface", exchange(server.addr, H2_GET)).await;
        assert!(
            answer.is_empty() || answer.starts_with(b"HTTP/1.1 "),
            "HTTP/2 was served: {answer:?}"
        );

        // hyper's HTTP/2 client gets no answer either.
        let stream = TcpStream::connect(server.addr).await.unwrap();
        let handshake =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream));
        if let Ok((mut sender, conn)) = handshake.await {
            tokio::spawn(conn);
            let sent = within(
                "the HTTP/2 request fails",
                sender.send_request(request(server.addr, "/")),
            )
            .await;
            assert!(sent.is_err(), "HTTP/2 was served: {sent:?}");
        }
        assert_eq!(gate.calls(), 0, "no request reached the handler");

        // HTTP/1.1 is served as ever, and the refused connections' permits
        // are back.
        let (status, _, body) = get(&http1_client(), &server.url("/")).await.unwrap();
        assert_eq!((status, &body[..]), (http::StatusCode::OK, &b"done"[..]));
        let limiter = server.limiter.clone();
        wait_until("the refused connections' permits are released", || {
            limiter.in_use() == 0
        })
        .await;
    }
}

#[tokio::test]
async fn with_both_protocols_the_same_raw_preface_is_served() {
    // The control for the test above: the bytes it sends are a request an
    // HTTP/2 server answers.
    let gate = Gate::new();
    gate.open.add_permits(1);
    let server = start(Server::new().http1_and_http2(), gate.app(), 4).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(H2_GET).await.unwrap();
    let mut frame_header = [0u8; 9];
    within(
        "the server's first frame",
        stream.read_exact(&mut frame_header),
    )
    .await
    .unwrap();
    assert_eq!(frame_header[3], 0x04, "a SETTINGS frame: {frame_header:?}");
    wait_until("the request reaches the handler", || gate.calls() == 1).await;
}

#[tokio::test]
async fn one_http2_connection_runs_no_more_streams_at_once_than_its_bound() {
    let gate = Gate::new();
    let server = start(
        Server::new().http1_and_http2().max_concurrent_streams(4),
        gate.app(),
        4,
    )
    .await;
    let sender = h2_connect(server.addr).await;
    let requests = send_many(&sender, server.addr, 60);

    gate.release_one_by_one(60, 4).await;
    for request in requests {
        let (status, _) = within("a request completes", request).await.unwrap();
        assert_eq!(status, 200, "queued by the client, not refused");
    }
    assert_eq!((gate.calls(), gate.peak()), (60, 4));
    assert_eq!(server.limiter.in_use(), 1, "all on one connection");
}

#[tokio::test]
async fn the_default_stream_bound_is_small() {
    let gate = Gate::new();
    let server = start(Server::new().http1_and_http2(), gate.app(), 4).await;
    let sender = h2_connect(server.addr).await;
    let requests = send_many(&sender, server.addr, 30);

    let bound = DEFAULT_MAX_CONCURRENT_STREAMS as usize;
    gate.release_one_by_one(30, bound).await;
    for request in requests {
        assert_eq!(within("a request completes", request).await.unwrap().0, 200);
    }
    assert_eq!(gate.peak(), bound);
}

#[tokio::test]
async fn the_request_limiter_caps_requests_across_http2_connections_with_503() {
    let gate = Gate::new();
    let requests = Limiter::builder()
        .capacity(5)
        .name("requests")
        .build()
        .unwrap();
    let server = start(
        Server::new().http1_and_http2().admit_requests(
            HttpAdmitLayer::new(requests.clone()).retry_after(Duration::from_secs(2)),
        ),
        gate.app(),
        4,
    )
    .await;

    // Three connections, each allowed 8 streams: 24 could run at once.
    let mut sent = Vec::new();
    for _ in 0..3 {
        let sender = h2_connect(server.addr).await;
        sent.extend(send_many(&sender, server.addr, 20));
    }
    // Five are admitted and wait in the handler; the other 55 are turned
    // away at once, without reaching it.
    let mut pending: FuturesUnordered<_> = sent.into_iter().collect();
    for _ in 0..55 {
        let (status, retry_after) = within("a request is shed", pending.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status, 503);
        assert_eq!(retry_after.as_deref(), Some("2"));
    }
    assert_eq!((gate.active(), gate.peak(), gate.calls()), (5, 5, 5));
    assert_eq!(requests.in_use(), 5);

    // HTTP/1.1 requests go through the same limiter.
    let (status, headers, _) = get(&http1_client(), &server.url("/")).await.unwrap();
    assert_eq!(status, 503);
    assert_eq!(headers["retry-after"], "2");

    gate.open.add_permits(5);
    while let Some(done) = within("an admitted request completes", pending.next()).await {
        assert_eq!(done.unwrap().0, 200);
    }
    assert_eq!(gate.calls(), 5);
    wait_until("the request permits are back", || requests.in_use() == 0).await;
}

#[tokio::test]
async fn with_a_queue_the_request_limiter_runs_every_request_in_turn() {
    let gate = Gate::new();
    let requests = Limiter::builder()
        .capacity(3)
        .queue_limit(64)
        .name("requests")
        .build()
        .unwrap();
    let server = start(
        Server::new()
            .http1_and_http2()
            .admit_requests(HttpAdmitLayer::new(requests.clone()).queue()),
        gate.app(),
        4,
    )
    .await;
    let mut sent = Vec::new();
    for _ in 0..2 {
        let sender = h2_connect(server.addr).await;
        sent.extend(send_many(&sender, server.addr, 10));
    }
    gate.release_one_by_one(20, 3).await;
    for request in sent {
        assert_eq!(within("a request completes", request).await.unwrap().0, 200);
    }
    assert_eq!((gate.calls(), gate.peak()), (20, 3));
}

#[tokio::test]
async fn hyper_services_are_admitted_through_the_request_limiter_too() {
    let limiter = Limiter::new(4);
    let listener = admit_hyper::listener(limiter)
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let service = hyper::service::service_fn(|_req| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
            Bytes::from("hyper"),
        )))
    });
    // A request limiter that admits nothing.
    let server = Server::new().admit_requests(HttpAdmitLayer::new(Limiter::new(0)));
    tokio::spawn(server.serve_hyper(listener, service, std::future::pending()));
    let (status, headers, _) = get(&http1_client(), &format!("http://{addr}/"))
        .await
        .unwrap();
    assert_eq!(status, 503);
    assert_eq!(headers["retry-after"], "5");
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_by_the_watchdogs_max_idle() {
    // The header timeout covers an HTTP/2 connection's first request only;
    // after that, an idle one gives its slot back when its idle lease is
    // revoked (every read and write touches it).
    let gate = Gate::new();
    let server = start(Server::new().http1_and_http2(), gate.app(), 4).await;
    let limiter = server.limiter.clone();
    let _watchdog = admit::Watchdog::spawn(
        limiter.clone(),
        admit::WatchdogConfig::default()
            .interval(Duration::from_millis(10))
            .max_idle(Duration::from_millis(300))
            .grace(Duration::from_secs(5)),
    )
    .unwrap();
    let (_sender, conn) = h2_connection(server.addr).await;
    let quiet = Instant::now();
    let _ = within("the idle HTTP/2 connection is closed", conn).await;
    assert!(quiet.elapsed() >= Duration::from_millis(250));
    wait_until("the permit is released", || limiter.in_use() == 0).await;
    // The watchdog wakes the holder before it counts the revocation, so the
    // connection can close first.
    wait_until("the revocation is counted", || {
        limiter.health().snapshot().revoked_total == 1
    })
    .await;
}
