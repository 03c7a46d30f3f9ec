//! HttpListener's refusals, per-address caps and bounds; serving through
//! admit-tcp's AdmitListener; per-connection services. Loopback only.

mod common;

use admit::Limiter;
use admit_hyper::{ConnInfo, HttpListener, Server};
use axum::extract::ConnectInfo;
use axum::{routing, Extension, Router};
use common::{get, http1_client, wait_until, within};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tower::Layer;

fn app() -> Router {
    Router::new().route("/", routing::get(|| async { "hello" }))
}

/// Connects from `source` (an address in 127.0.0.0/8) to `addr`.
async fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Sends one request on a fresh connection and reads until the server closes.
async fn raw_request(mut stream: TcpStream) -> String {
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    within(
        "the server answers and closes",
        stream.read_to_end(&mut out),
    )
    .await
    .unwrap();
    String::from_utf8(out).unwrap()
}

fn spawn_serve(
    listener: impl admit_hyper::Accept + 'static,
    app: Router,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    tokio::spawn(Server::new().serve(listener, app, std::future::pending()))
}

/// Binds `builder` on loopback and serves `app()` on it until aborted.
async fn serve_app(
    builder: admit_hyper::Builder,
) -> (SocketAddr, tokio::task::JoinHandle<std::io::Result<()>>) {
    let listener = builder.bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (addr, spawn_serve(listener, app()))
}

#[tokio::test]
async fn a_silent_refused_client_is_dropped_after_the_refusal_timeout_without_stalling_others() {
    let limiter = Limiter::new(1);
    let (addr, server) = serve_app(
        HttpListener::builder(limiter.clone()).refusal_timeout(Duration::from_millis(300)),
    )
    .await;

    let _holder = TcpStream::connect(addr).await.unwrap();
    wait_until("the holder is admitted", || limiter.in_use() == 1).await;

    // Refused and silent: the refusal waits for a request that never comes.
    let started = Instant::now();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    // Meanwhile a refused client that does speak is answered at once.
    let answer = raw_request(TcpStream::connect(addr).await.unwrap()).await;
    assert!(
        answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{answer}"
    );
    assert!(answer.contains("\r\nRetry-After: 5\r\n"));
    assert!(answer.contains("\r\nConnection: close\r\n"));
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "not held up by the silent one"
    );

    let mut buf = Vec::new();
    let _ = within(
        "the silent refused client is closed",
        silent.read_to_end(&mut buf),
    )
    .await;
    assert!(buf.is_empty(), "no answer without a request");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(limiter.health().snapshot().rejected_total["full"], 2);
    server.abort();
}

#[tokio::test]
async fn the_per_address_cap_answers_503_and_counts_per_ip() {
    let limiter = Limiter::new(8);
    let (addr, server) = serve_app(admit_hyper::listener(limiter.clone()).per_ip(1)).await;

    let _holder = connect_from("127.0.0.2", addr).await;
    wait_until("the first connection from 127.0.0.2 is admitted", || {
        limiter.in_use() == 1
    })
    .await;
    let answer = raw_request(connect_from("127.0.0.2", addr).await).await;
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    // Another address is still served.
    let answer = raw_request(connect_from("127.0.0.3", addr).await).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with("hello"));
    assert_eq!(limiter.health().snapshot().rejected_total["per_ip"], 1);
    server.abort();
}

#[tokio::test]
async fn beyond_max_refusals_refused_connections_are_closed_without_an_answer() {
    let limiter = Limiter::new(0);
    let (addr, server) = serve_app(HttpListener::builder(limiter.clone()).max_refusals(0)).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let mut buf = Vec::new();
    let _ = within(
        "the refused connection is closed",
        stream.read_to_end(&mut buf),
    )
    .await;
    assert!(buf.is_empty());
    server.abort();
}

#[tokio::test]
async fn an_admit_tcp_listener_can_be_served_too() {
    let limiter = Limiter::new(4);
    let listener = admit_tcp::AdmitListener::builder(limiter.clone())
        .policy(admit_tcp::Policy::Reject)
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let server = spawn_serve(listener, app());
    let (status, _, body) = get(&http1_client(), &format!("http://{addr}/"))
        .await
        .unwrap();
    assert_eq!((status, &body[..]), (http::StatusCode::OK, &b"hello"[..]));
    assert_eq!(limiter.in_use(), 1);
    server.abort();
}

#[tokio::test]
async fn serve_with_makes_a_service_per_connection_with_its_peer_address() {
    let limiter = Limiter::new(4);
    let listener = admit_hyper::listener(limiter.clone())
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route(
        "/",
        routing::get(
            |ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.ip().to_string() },
        ),
    );
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let server = {
        let seen = seen.clone();
        tokio::spawn(Server::new().serve_with(
            listener,
            move |conn: &ConnInfo| {
                seen.lock().unwrap().push(conn.lease);
                Extension(ConnectInfo(conn.remote_addr)).layer(app.clone())
            },
            std::future::pending(),
        ))
    };
    let answer = raw_request(connect_from("127.0.0.4", addr).await).await;
    assert!(answer.ends_with("127.0.0.4"), "{answer}");
    assert_eq!(seen.lock().unwrap().len(), 1);
    server.abort();
}

#[tokio::test]
async fn refusals_can_carry_a_body_of_their_own() {
    let limiter = Limiter::new(0);
    let (addr, server) = serve_app(
        admit_hyper::listener(limiter.clone())
            .retry_after(Duration::from_secs(2))
            .busy_body("application/json", &br#"{"error":"unavailable"}"#[..]),
    )
    .await;
    let (status, headers, body) = get(&http1_client(), &format!("http://{addr}/"))
        .await
        .unwrap();
    assert_eq!(status, 503);
    assert_eq!(headers["retry-after"], "2");
    assert_eq!(headers["connection"], "close");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(&body[..], br#"{"error":"unavailable"}"#);
    server.abort();
}

#[tokio::test]
async fn with_a_queue_timeout_a_connection_waits_for_a_slot_then_is_served() {
    let limiter = Limiter::builder()
        .capacity(1)
        .queue_limit(4)
        .build()
        .unwrap();
    let (addr, server) =
        serve_app(admit_hyper::listener(limiter.clone()).queue_timeout(Duration::from_secs(5)))
            .await;

    let holder = TcpStream::connect(addr).await.unwrap();
    wait_until("the holder is admitted", || limiter.in_use() == 1).await;
    let waiter = tokio::spawn(raw_request(TcpStream::connect(addr).await.unwrap()));
    wait_until("the second connection waits in the queue", || {
        limiter.health().snapshot().waiting == 1
    })
    .await;
    assert!(!waiter.is_finished());
    drop(holder);
    let answer = within("the waiter is served", waiter).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.ends_with("hello"));
    let snap = limiter.health().snapshot();
    assert_eq!(snap.admitted_total, 2);
    assert!(snap.rejected_total.values().all(|&n| n == 0), "{snap:?}");
    server.abort();
}

#[tokio::test]
async fn a_connection_that_waits_past_the_queue_timeout_gets_the_503() {
    let limiter = Limiter::builder()
        .capacity(1)
        .queue_limit(4)
        .build()
        .unwrap();
    let timeout = Duration::from_millis(200);
    let (addr, server) =
        serve_app(admit_hyper::listener(limiter.clone()).queue_timeout(timeout)).await;
    let _holder = TcpStream::connect(addr).await.unwrap();
    wait_until("the holder is admitted", || limiter.in_use() == 1).await;

    let started = Instant::now();
    let answer = raw_request(TcpStream::connect(addr).await.unwrap()).await;
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(started.elapsed() >= timeout - Duration::from_millis(20));
    let snap = limiter.health().snapshot();
    assert_eq!(snap.rejected_total["timeout"], 1);
    assert_eq!(snap.waiting, 0);
    server.abort();
}

#[tokio::test]
async fn one_per_address_budget_covers_an_http_and_a_tcp_listener() {
    let limiter = Limiter::new(8);
    let per_ip = admit_tcp::PerIpLimit::new(1);
    let http = admit_hyper::listener(limiter.clone())
        .per_ip_limit(per_ip.clone())
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let http_addr = http.local_addr().unwrap();
    let mut tcp = admit_tcp::AdmitListener::builder(limiter.clone())
        .per_ip_limit(per_ip.clone())
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let tcp_addr = tcp.local_addr().unwrap();
    let server = spawn_serve(http, app());

    // 127.0.0.5 takes its one share on the TCP listener...
    let _tcp_client = connect_from("127.0.0.5", tcp_addr).await;
    let (_held, _) = tcp.accept().await.unwrap();
    assert_eq!(per_ip.count("127.0.0.5".parse().unwrap()), 1);
    // ...so the HTTP listener refuses it, and serves another address.
    let answer = raw_request(connect_from("127.0.0.5", http_addr).await).await;
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    let answer = raw_request(connect_from("127.0.0.6", http_addr).await).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert_eq!(limiter.health().snapshot().rejected_total["per_ip"], 1);
    server.abort();
}
