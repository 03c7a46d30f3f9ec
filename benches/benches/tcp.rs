//! admit-tcp against a bare tokio accept loop, in the same run.
//!
//! * `tcp_accept`: connections per second through a server that accepts and
//!   closes at once — a bare `TcpListener::accept` loop, `AdmitListener`
//!   with its defaults (which also sets `TCP_NODELAY` and TCP keepalive, four
//!   `setsockopt` calls a connection), and `AdmitListener` with those socket
//!   options off, to show the cost of admission alone. Target: admit ≥ 0.95×
//!   the bare loop.
//! * `tcp_reject`: the cost of one refused connection under `Policy::Reject`
//!   and `Policy::Busy`, next to the bare accept-and-close as the baseline.
//!
//! Every variant is driven by the same client: 32 connections in flight,
//! each connecting, reading until the server closes, and closing with a RST
//! (`SO_LINGER` 0) so no `TIME_WAIT` state piles up. Client and server share
//! one two-thread runtime. All traffic is on 127.0.0.1. Absolute numbers are
//! noisy on shared machines; the ratios printed at the end are what counts.

use admit::Limiter;
use admit_tcp::{AdmitListener, Policy};
use criterion::{BenchmarkId, Criterion, Throughput};
use futures::stream::{FuturesUnordered, StreamExt};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpSocket};
use tokio::runtime::Runtime;

const IN_FLIGHT: usize = 32;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// One client connection: connect, read until the server closes, reset.
async fn one_connection(addr: SocketAddr) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_zero_linger().unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let mut buf = [0u8; 64];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

/// Runs `n` connections, `IN_FLIGHT` at a time, and times them.
async fn clients(addr: SocketAddr, n: u64) -> Duration {
    let start = Instant::now();
    let mut inflight = FuturesUnordered::new();
    let mut started = 0;
    while started < n && inflight.len() < IN_FLIGHT {
        inflight.push(one_connection(addr));
        started += 1;
    }
    while inflight.next().await.is_some() {
        if started < n {
            inflight.push(one_connection(addr));
            started += 1;
        }
    }
    start.elapsed()
}

async fn bare_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            if let Ok((stream, _)) = listener.accept().await {
                drop(stream);
            }
        }
    });
    addr
}

async fn admit_server(limiter: Limiter, policy: Policy, socket_options: bool) -> SocketAddr {
    let mut builder = AdmitListener::builder(limiter).policy(policy);
    if !socket_options {
        builder = builder.nodelay(false).keepalive(None);
    }
    let mut listener = builder.bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            if let Ok((conn, _)) = listener.accept().await {
                drop(conn);
            }
        }
    });
    addr
}

fn accept_throughput(c: &mut Criterion, rt: &Runtime) {
    let mut group = c.benchmark_group("tcp_accept");
    group.throughput(Throughput::Elements(1));
    let limiter = Limiter::new(100_000);
    let servers = [
        ("tokio_bare", rt.block_on(bare_server())),
        (
            "admit_listener",
            rt.block_on(admit_server(limiter.clone(), Policy::busy_default(), true)),
        ),
        (
            "admit_listener_no_socket_options",
            rt.block_on(admit_server(limiter.clone(), Policy::busy_default(), false)),
        ),
    ];
    for (name, addr) in servers {
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.to_async(rt).iter_custom(|iters| clients(addr, iters))
        });
    }
    group.finish();
    assert_eq!(limiter.in_use(), 0);
}

fn rejection_cost(c: &mut Criterion, rt: &Runtime) {
    let mut group = c.benchmark_group("tcp_reject");
    group.throughput(Throughput::Elements(1));
    // A limiter whose only permit is held: every connection is refused.
    let limiter = Limiter::new(1);
    let _held = limiter.try_acquire().unwrap();
    let servers = [
        ("tokio_bare_accept_close", rt.block_on(bare_server())),
        (
            "admit_reject",
            rt.block_on(admit_server(limiter.clone(), Policy::Reject, true)),
        ),
        (
            "admit_busy",
            rt.block_on(admit_server(limiter.clone(), Policy::busy_default(), true)),
        ),
    ];
    for (name, addr) in servers {
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.to_async(rt).iter_custom(|iters| clients(addr, iters))
        });
    }
    group.finish();
    assert!(limiter.health().snapshot().rejected_total["full"] > 0);
}

/// The time per connection criterion recorded for `group/id`, read
/// back from its report directory (best effort).
fn mean_ns(group: &str, id: &str) -> Option<f64> {
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let candidates = [
        format!("{target}/criterion/{group}/{id}/new/estimates.json"),
        format!("../target/criterion/{group}/{id}/new/estimates.json"),
    ];
    let text = candidates
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())?;
    // The slope (what criterion prints for linear sampling), else the mean.
    let start = text.find("\"slope\":{").or_else(|| text.find("\"mean\""))?;
    let section = &text[start..];
    let at = section.find("\"point_estimate\":")? + "\"point_estimate\":".len();
    let rest = &section[at..];
    let end = rest.find([',', '}'])?;
    rest[..end].trim().parse().ok()
}

fn print_ratio(label: &str, group: &str, ours: &str, peer: &str) {
    match (mean_ns(group, ours), mean_ns(group, peer)) {
        (Some(o), Some(p)) => println!(
            "{label}: {ours} {:.1} µs/conn, {peer} {:.1} µs/conn; throughput ratio {ours}/{peer} = {:.3}",
            o / 1000.0,
            p / 1000.0,
            p / o
        ),
        _ => println!("{label}: estimates not found"),
    }
}

fn main() {
    let rt = runtime();
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    accept_throughput(&mut c, &rt);
    rejection_cost(&mut c, &rt);
    c.final_summary();
    println!();
    print_ratio("accept", "tcp_accept", "admit_listener", "tokio_bare");
    print_ratio(
        "accept",
        "tcp_accept",
        "admit_listener_no_socket_options",
        "tokio_bare",
    );
    print_ratio(
        "reject",
        "tcp_reject",
        "admit_reject",
        "tokio_bare_accept_close",
    );
    print_ratio(
        "busy",
        "tcp_reject",
        "admit_busy",
        "tokio_bare_accept_close",
    );
}
