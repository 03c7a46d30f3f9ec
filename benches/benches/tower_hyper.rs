//! admit-tower and admit-hyper against their peers, in the same run.
//!
//! * `keepalive_requests`: requests per second on 8 keep-alive HTTP/1.1
//!   connections, each sending its requests one after another, to the same
//!   plain hyper server whose service is a tiny handler with no limit,
//!   behind tower's `ConcurrencyLimitLayer`, behind `AdmitLayer`, and behind
//!   `HttpAdmitLayer` (which also carries the permit in the response body).
//!   Every limit is set far above the load, so only the cost of admission is
//!   measured. Target: `AdmitLayer` within 3 % of no limit.
//! * `http_connections`: connections per second, each connecting, sending
//!   one `Connection: close` request and reading the answer, 32 in flight:
//!   a plain hyper-util accept loop (auto builder, upgrades on) against
//!   `admit_hyper::Server` on an `HttpListener`. The auto builder tells
//!   HTTP/1.1 from HTTP/2 by the first bytes, so the like-for-like variant
//!   (`admit_hyper_serve`) turns on both protocols with
//!   `Server::http1_and_http2`, which does the same; the server's default,
//!   HTTP/1.1 only (no sniffing), the header timeout off, and TCP
//!   keepalive off (four `setsockopt` calls a connection; the plain loop
//!   sets none) are measured beside it. Target: `admit_hyper_serve` ≥ 0.95× the plain loop.
//!
//! * `service_call`: the same four stacks called in-process (clone and
//!   `oneshot`, as hyper-util's tower adapter does per request), no sockets:
//!   the middleware's own cost per request, which the socket groups above
//!   can only show as a share of a much larger number. At the end they are
//!   timed once more by the thread's own CPU time (Linux schedstat), which
//!   time spent preempted by other processes does not inflate, and the
//!   added nanoseconds per request are printed.
//!
//! After the criterion groups, the socket variants are run again
//! interleaved (each variant in turn, in rotating order, for several
//! rounds) and the median per-round ratio is printed: on a shared machine a
//! background load that comes and goes would otherwise land on whichever
//! variant criterion happened to be measuring.
//!
//! Client and server share one two-thread runtime; all traffic is on
//! 127.0.0.1. Absolute numbers are noisy on shared machines; the ratios
//! printed at the end are what counts.

use admit::Limiter;
use admit_benches::{criterion, in_flight, interleaved, runtime};
use admit_tower::{AdmitLayer, HttpAdmitLayer};
use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput};
use futures::stream::{FuturesUnordered, StreamExt};
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::runtime::Runtime;
use tower::limit::ConcurrencyLimitLayer;
use tower::{Layer, Service};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const KEEPALIVE_CONNS: usize = 8;
const PLENTY: u32 = 100_000;

async fn hello(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"hello"))))
}

/// A plain hyper HTTP/1.1 server (the same for every keep-alive variant)
/// serving `service`.
async fn keepalive_server<S, B>(service: S) -> SocketAddr
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// `KEEPALIVE_CONNS` client connections to `addr`.
async fn keepalive_clients(addr: SocketAddr) -> Vec<SendRequest<Empty<Bytes>>> {
    let mut senders = Vec::new();
    for _ in 0..KEEPALIVE_CONNS {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        senders.push(sender);
    }
    senders
}

/// Sends `n` requests spread over the connections, each connection one at
/// a time, and times them.
async fn keepalive_requests(senders: &Mutex<Vec<SendRequest<Empty<Bytes>>>>, n: u64) -> Duration {
    let mut conns = std::mem::take(&mut *senders.lock().unwrap());
    let per_conn = n.div_ceil(conns.len() as u64);
    let start = Instant::now();
    let mut work: FuturesUnordered<_> = conns
        .iter_mut()
        .map(|sender| async move {
            for _ in 0..per_conn {
                sender.ready().await.unwrap();
                let req = Request::get("/")
                    .header(http::header::HOST, "bench")
                    .body(Empty::new())
                    .unwrap();
                let res = sender.send_request(req).await.unwrap();
                assert!(res.status().is_success());
                res.into_body().collect().await.unwrap();
            }
        })
        .collect();
    while work.next().await.is_some() {}
    drop(work);
    let elapsed = start.elapsed();
    *senders.lock().unwrap() = conns;
    elapsed.mul_f64(n as f64 / (per_conn * KEEPALIVE_CONNS as u64) as f64)
}

type Clients = Mutex<Vec<SendRequest<Empty<Bytes>>>>;

fn keepalive_bench(c: &mut Criterion, rt: &Runtime) -> Vec<(&'static str, Clients)> {
    let mut group = c.benchmark_group("keepalive_requests");
    group.throughput(Throughput::Elements(1));
    let admit_limiter = Limiter::new(PLENTY);
    let http_limiter = Limiter::new(PLENTY);
    let base = tower::service_fn(hello);
    let servers = [
        ("no_limit", rt.block_on(keepalive_server(base))),
        (
            "tower_concurrency_limit",
            rt.block_on(keepalive_server(
                ConcurrencyLimitLayer::new(PLENTY as usize).layer(base),
            )),
        ),
        (
            "admit_layer",
            rt.block_on(keepalive_server(
                AdmitLayer::new(admit_limiter.clone()).layer(base),
            )),
        ),
        (
            "http_admit_layer",
            rt.block_on(keepalive_server(
                HttpAdmitLayer::new(http_limiter.clone()).layer(base),
            )),
        ),
    ];
    let mut clients = Vec::new();
    for (name, addr) in servers {
        let senders = Mutex::new(rt.block_on(keepalive_clients(addr)));
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.to_async(rt)
                .iter_custom(|iters| keepalive_requests(&senders, iters))
        });
        clients.push((name, senders));
    }
    group.finish();
    let admitted = admit_limiter.health().snapshot().admitted_total;
    assert!(admitted > 0 && admit_limiter.in_use() == 0);
    assert!(http_limiter.health().snapshot().admitted_total > 0);
    clients
}

async fn plain_hyper_util_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let builder = builder.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(hello);
                let _ = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

async fn admit_hyper_server(
    limiter: Limiter,
    header_timeout: bool,
    both: bool,
    keepalive: bool,
) -> SocketAddr {
    let mut listener = admit_hyper::listener(limiter);
    if !keepalive {
        listener = listener.keepalive(None);
    }
    let listener = listener.bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut server = admit_hyper::Server::new();
    if both {
        server = server.http1_and_http2();
    }
    if !header_timeout {
        server = server.header_timeout(None);
    }
    tokio::spawn(server.serve(listener, tower::service_fn(hello), std::future::pending()));
    addr
}

/// One client connection: connect, one request, read until the server
/// closes, reset (so no `TIME_WAIT` piles up).
async fn one_connection(addr: SocketAddr) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_zero_linger().unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let mut got = 0;
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
        got += n;
    }
    assert!(got > 0, "no answer");
}

/// Runs `n` connections, `IN_FLIGHT` at a time, and times them.
async fn connections(addr: SocketAddr, n: u64) -> Duration {
    in_flight(n, || one_connection(addr)).await
}

fn connections_bench(c: &mut Criterion, rt: &Runtime) -> Vec<(&'static str, SocketAddr)> {
    let mut group = c.benchmark_group("http_connections");
    group.throughput(Throughput::Elements(1));
    let limiter = Limiter::new(PLENTY);
    let servers = [
        ("hyper_util_plain", rt.block_on(plain_hyper_util_server())),
        (
            "admit_hyper_serve",
            rt.block_on(admit_hyper_server(limiter.clone(), true, true, true)),
        ),
        (
            "admit_hyper_serve_http1_only",
            rt.block_on(admit_hyper_server(limiter.clone(), true, false, true)),
        ),
        (
            "admit_hyper_serve_no_header_timeout",
            rt.block_on(admit_hyper_server(limiter.clone(), false, true, true)),
        ),
        (
            "admit_hyper_serve_no_keepalive",
            rt.block_on(admit_hyper_server(limiter.clone(), true, true, false)),
        ),
    ];
    for (name, addr) in servers {
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.to_async(rt).iter_custom(|iters| connections(addr, iters))
        });
    }
    group.finish();
    assert!(limiter.health().snapshot().admitted_total > 0);
    servers.to_vec()
}

async fn hello_unit(_req: Request<()>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"hello"))))
}

/// One request through `svc` in-process: clone, ready, call, read the body.
async fn call_once<S, B>(svc: &S)
where
    S: Service<Request<()>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: Body,
    B::Error: std::fmt::Debug,
{
    use tower::ServiceExt;
    let res = svc.clone().oneshot(Request::new(())).await.unwrap();
    assert!(res.status().is_success());
    res.into_body().collect().await.unwrap();
}

fn service_call_bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("service_call");
    group.throughput(Throughput::Elements(1));
    let base = tower::service_fn(hello_unit);
    let limiter = Limiter::new(PLENTY);
    group.bench_function(BenchmarkId::from_parameter("no_limit"), |b| {
        b.to_async(&rt).iter(|| call_once(&base))
    });
    let svc = ConcurrencyLimitLayer::new(PLENTY as usize).layer(base);
    group.bench_function(
        BenchmarkId::from_parameter("tower_concurrency_limit"),
        |b| b.to_async(&rt).iter(|| call_once(&svc)),
    );
    let svc = AdmitLayer::new(limiter.clone()).layer(base);
    group.bench_function(BenchmarkId::from_parameter("admit_layer"), |b| {
        b.to_async(&rt).iter(|| call_once(&svc))
    });
    let svc = HttpAdmitLayer::new(limiter.clone()).layer(base);
    group.bench_function(BenchmarkId::from_parameter("http_admit_layer"), |b| {
        b.to_async(&rt).iter(|| call_once(&svc))
    });
    group.finish();
    assert_eq!(limiter.in_use(), 0);
}

/// Runs a stack `n` times.
type Runner<'a> = Box<dyn FnMut(u64) + 'a>;

/// Nanoseconds the calling thread has spent on a CPU (Linux schedstat).
fn thread_cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    stat.split_whitespace().next()?.parse().ok()
}

/// The in-process stacks again, timed by the thread's own CPU time rather
/// than the wall clock, so time spent preempted by other processes does not
/// count: the middleware's cost per request in nanoseconds, as a median over
/// interleaved rounds.
fn service_cpu_cost() {
    let Some(_) = thread_cpu_ns() else {
        println!("service_call on-CPU: /proc/thread-self/schedstat not available");
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let base = tower::service_fn(hello_unit);
    let limiter = Limiter::new(PLENTY);
    let concurrency = ConcurrencyLimitLayer::new(PLENTY as usize).layer(base);
    let admit = AdmitLayer::new(limiter.clone()).layer(base);
    let http_admit = HttpAdmitLayer::new(limiter.clone()).layer(base);
    let mut variants: Vec<(&str, Runner<'_>)> = vec![
        (
            "no_limit",
            Box::new(|n| {
                rt.block_on(async {
                    for _ in 0..n {
                        call_once(&base).await
                    }
                })
            }),
        ),
        (
            "tower_concurrency_limit",
            Box::new(|n| {
                rt.block_on(async {
                    for _ in 0..n {
                        call_once(&concurrency).await
                    }
                })
            }),
        ),
        (
            "admit_layer",
            Box::new(|n| {
                rt.block_on(async {
                    for _ in 0..n {
                        call_once(&admit).await
                    }
                })
            }),
        ),
        (
            "http_admit_layer",
            Box::new(|n| {
                rt.block_on(async {
                    for _ in 0..n {
                        call_once(&http_admit).await
                    }
                })
            }),
        ),
    ];
    const ROUNDS: usize = 9;
    const CALLS: u64 = 50_000;
    let mut per_call = vec![Vec::with_capacity(ROUNDS); variants.len()];
    for round in 0..ROUNDS {
        for k in 0..variants.len() {
            let i = (k + round) % variants.len();
            let before = thread_cpu_ns().unwrap_or(0);
            (variants[i].1)(CALLS);
            let after = thread_cpu_ns().unwrap_or(0);
            per_call[i].push(after.saturating_sub(before) as f64 / CALLS as f64);
        }
    }
    let medians: Vec<f64> = per_call
        .iter_mut()
        .map(|v| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        })
        .collect();
    for (i, (name, _)) in variants.iter().enumerate().skip(1) {
        println!(
            "service_call (on-CPU, {ROUNDS} rounds of {CALLS}): {name} {:.0} ns/call, no_limit {:.0} ns/call: {:+.0} ns per request, throughput ratio {:.3}",
            medians[i],
            medians[0],
            medians[i] - medians[0],
            medians[0] / medians[i]
        );
    }
    assert_eq!(limiter.in_use(), 0);
}

/// The mean time per element criterion recorded for `group/id` (best effort).
fn mean_ns(group: &str, id: &str) -> Option<f64> {
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let text = [
        format!("{target}/criterion/{group}/{id}/new/estimates.json"),
        format!("../target/criterion/{group}/{id}/new/estimates.json"),
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok())?;
    let mean = &text[text.find("\"mean\"")?..];
    let at = mean.find("\"point_estimate\":")? + "\"point_estimate\":".len();
    let rest = &mean[at..];
    let end = rest.find([',', '}'])?;
    rest[..end].trim().parse().ok()
}

fn print_ratio(group: &str, ours: &str, peer: &str, unit: &str) {
    match (mean_ns(group, ours), mean_ns(group, peer)) {
        (Some(o), Some(p)) => println!(
            "{group}: {ours} {:.2} µs/{unit}, {peer} {:.2} µs/{unit}; throughput ratio {ours}/{peer} = {:.3}",
            o / 1000.0,
            p / 1000.0,
            p / o
        ),
        _ => println!("{group}: estimates for {ours} or {peer} not found"),
    }
}

fn main() {
    let rt = runtime();
    let mut c = criterion();
    let clients = keepalive_bench(&mut c, &rt);
    let servers = connections_bench(&mut c, &rt);
    service_call_bench(&mut c);
    c.final_summary();
    println!();
    let names: Vec<&str> = clients.iter().map(|(name, _)| *name).collect();
    interleaved("keepalive_requests", &names, 15, 1_000, |i, n| {
        rt.block_on(keepalive_requests(&clients[i].1, n))
    });
    let names: Vec<&str> = servers.iter().map(|(name, _)| *name).collect();
    interleaved("http_connections", &names, 15, 200, |i, n| {
        rt.block_on(connections(servers[i].1, n))
    });
    service_cpu_cost();
    println!();
    for ours in ["admit_layer", "http_admit_layer", "tower_concurrency_limit"] {
        print_ratio("keepalive_requests", ours, "no_limit", "request");
    }
    print_ratio(
        "keepalive_requests",
        "admit_layer",
        "tower_concurrency_limit",
        "request",
    );
    for ours in [
        "admit_hyper_serve",
        "admit_hyper_serve_http1_only",
        "admit_hyper_serve_no_header_timeout",
        "admit_hyper_serve_no_keepalive",
    ] {
        print_ratio("http_connections", ours, "hyper_util_plain", "connection");
    }
    for ours in ["admit_layer", "http_admit_layer", "tower_concurrency_limit"] {
        print_ratio("service_call", ours, "no_limit", "call");
    }
}
