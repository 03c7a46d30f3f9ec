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

/// The throughput ratio of `ours` to `peer`, measured interleaved: rounds
/// of `BATCH` connections to each in turn (alternating which goes first),
/// and the median of the per-round ratios. Load from other processes drifts
/// over seconds, so sequential criterion groups can differ by more than the
/// effect being measured; neighbouring batches see the same load.
fn interleaved_ratio(rt: &Runtime, ours: SocketAddr, peer: SocketAddr) -> (f64, f64, f64) {
    const ROUNDS: usize = 15;
    const BATCH: u64 = 300;
    let mut ratios: Vec<f64> = (0..ROUNDS)
        .map(|round| {
            let (t_ours, t_peer) = if round % 2 == 0 {
                let a = rt.block_on(clients(ours, BATCH));
                (a, rt.block_on(clients(peer, BATCH)))
            } else {
                let b = rt.block_on(clients(peer, BATCH));
                (rt.block_on(clients(ours, BATCH)), b)
            };
            t_peer.as_secs_f64() / t_ours.as_secs_f64()
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    (
        ratios[ROUNDS / 4],
        ratios[ROUNDS / 2],
        ratios[ROUNDS * 3 / 4],
    )
}

fn print_ratios(rt: &Runtime) {
    let busy_limiter = Limiter::new(1);
    let _held = busy_limiter.try_acquire().unwrap();
    let open_limiter = Limiter::new(100_000);
    let bare = rt.block_on(bare_server());
    let admit = rt.block_on(admit_server(
        open_limiter.clone(),
        Policy::busy_default(),
        true,
    ));
    let admit_plain = rt.block_on(admit_server(open_limiter, Policy::busy_default(), false));
    let reject = rt.block_on(admit_server(busy_limiter.clone(), Policy::Reject, true));
    let busy = rt.block_on(admit_server(busy_limiter, Policy::busy_default(), true));
    println!("interleaved throughput ratios against the bare tokio accept-and-close loop");
    println!("(median of 15 rounds of 300 connections each, with the quartiles):");
    for (name, addr) in [
        ("admit_listener", admit),
        ("admit_listener_no_socket_options", admit_plain),
        ("admit_reject (every connection refused)", reject),
        ("admit_busy (every connection refused)", busy),
    ] {
        let (q1, median, q3) = interleaved_ratio(rt, addr, bare);
        println!("  {name}: {median:.3} (quartiles {q1:.3} .. {q3:.3})");
    }
}

fn main() {
    let rt = runtime();
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .without_plots()
        .configure_from_args();
    accept_throughput(&mut c, &rt);
    rejection_cost(&mut c, &rt);
    c.final_summary();
    println!();
    print_ratios(&rt);
}
