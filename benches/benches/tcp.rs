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
//! noisy on shared machines, and so are ratios of groups run one after the
//! other; the ratios printed at the end, measured in interleaved rounds, are
//! the ones to record.

use admit::Limiter;
use admit_benches::{criterion, in_flight, interleaved, runtime};
use admit_tcp::{AdmitListener, Policy};
use criterion::{BenchmarkId, Criterion, Throughput};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpSocket};
use tokio::runtime::Runtime;

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
    in_flight(n, || one_connection(addr)).await
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

/// The ratios to record: every variant against the bare loop, in
/// interleaved rounds (see [`interleaved`]).
fn print_ratios(rt: &Runtime) {
    let busy_limiter = Limiter::new(1);
    let _held = busy_limiter.try_acquire().unwrap();
    let open_limiter = Limiter::new(100_000);
    let servers = [
        ("tokio_bare", rt.block_on(bare_server())),
        (
            "admit_listener",
            rt.block_on(admit_server(
                open_limiter.clone(),
                Policy::busy_default(),
                true,
            )),
        ),
        (
            "admit_listener_no_socket_options",
            rt.block_on(admit_server(open_limiter, Policy::busy_default(), false)),
        ),
        (
            "admit_reject (every connection refused)",
            rt.block_on(admit_server(busy_limiter.clone(), Policy::Reject, true)),
        ),
        (
            "admit_busy (every connection refused)",
            rt.block_on(admit_server(busy_limiter, Policy::busy_default(), true)),
        ),
    ];
    let names: Vec<&str> = servers.iter().map(|(name, _)| *name).collect();
    interleaved("tcp", &names, 15, 300, |i, n| {
        rt.block_on(clients(servers[i].1, n))
    });
}

fn main() {
    let rt = runtime();
    let mut c = criterion();
    accept_throughput(&mut c, &rt);
    rejection_cost(&mut c, &rt);
    c.final_summary();
    println!();
    print_ratios(&rt);
}
