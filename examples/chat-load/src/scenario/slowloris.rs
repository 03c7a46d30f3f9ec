//! `slowloris`: connections that hold a slot while doing nothing useful,
//! and normal clients that must still be served.
//!
//! Kinds of slow connection (`--kind`, default an even mix):
//! - `silent`: opens an HTTP connection and sends nothing;
//! - `trickle`: sends an HTTP request header one byte every
//!   `--trickle-ms`, never finishing it;
//! - `noauth`: upgrades to WebSocket and never authenticates (the contract
//!   closes it with 4401 after 10 s);
//! - `tcp`: opens a TCP chat connection and never authenticates (closed by
//!   the idle timeout at the latest).
//!
//! Meanwhile `--normal` clients cycle connect → auth → join → send → ack →
//! quit. Reported per kind: how many the server closed and how long that
//! took; for the normal clients: cycles served, rejected and failed, and
//! their latency. The run fails when a slow connection outlives the
//! observation window (or `--expect-closed-within`) or a normal client is
//! not served.

use super::{open_auth_join, register_users, wait_closed, Ctx, JoinError, ScenarioError};
use crate::cli::{SlowKind, SlowlorisArgs};
use crate::client::proto::{Command, Event};
use crate::client::{ChatConn, Connector, OpenGuard, Opened, Target, Transport};
use crate::metrics::{AtomicHistogram, Histogram, Outcome, Timeline};
use crate::report::{opt, Report};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

const KINDS: [SlowKind; 4] = [
    SlowKind::Silent,
    SlowKind::Trickle,
    SlowKind::Noauth,
    SlowKind::Tcp,
];

/// Client sockets this scenario may hold at once.
pub fn planned_sockets(args: &SlowlorisArgs, capacity: u64) -> u64 {
    slow_count(args, capacity) + args.normal + 16
}

fn slow_count(args: &SlowlorisArgs, capacity: u64) -> u64 {
    args.slow.unwrap_or((capacity / 2).max(1))
}

fn kind_name(k: SlowKind) -> &'static str {
    match k {
        SlowKind::Silent => "silent",
        SlowKind::Trickle => "trickle",
        SlowKind::Noauth => "noauth",
        SlowKind::Tcp => "tcp",
        SlowKind::Mixed => "mixed",
    }
}

/// What became of one slow connection.
#[derive(Debug, Clone, Copy)]
enum SlowEnd {
    /// The server closed it after this long.
    Closed(Duration),
    /// Rejected or failed at open: it never held a slot.
    NotAdmitted,
    /// Still open when the observation ended.
    StillOpen,
}

/// Holds one slow connection of `kind` until the server closes it or `end`.
async fn slow_conn(
    kind: SlowKind,
    connector: Arc<Connector>,
    target: Target,
    timeline: Arc<Timeline>,
    timeout: Duration,
    trickle: Duration,
    end: CancellationToken,
) -> SlowEnd {
    let started = Instant::now();
    match kind {
        SlowKind::Silent | SlowKind::Trickle => {
            let Ok(mut stream) = connector.connect(target.http).await else {
                timeline.outcome(Outcome::Failed);
                return SlowEnd::NotAdmitted;
            };
            let _open = OpenGuard::new(connector.open_gauge());
            timeline.outcome(Outcome::Admitted);
            // A header that never ends: a request line, then one header
            // field after another, a byte at a time.
            let header = format!("GET /ws HTTP/1.1\r\nHost: {}\r\n", target.http);
            let mut bytes = header
                .into_bytes()
                .into_iter()
                .chain(std::iter::repeat(b"X-Slow: a\r\n".iter().copied()).flatten());
            let mut tick = tokio::time::interval(trickle);
            let mut buf = [0u8; 1024];
            loop {
                tokio::select! {
                    _ = end.cancelled() => return SlowEnd::StillOpen,
                    r = stream.read(&mut buf) => match r {
                        Ok(0) | Err(_) => return SlowEnd::Closed(started.elapsed()),
                        Ok(_) => {} // e.g. a 408 before the close
                    },
                    _ = tick.tick(), if kind == SlowKind::Trickle => {
                        let b = [bytes.next().unwrap_or(b'a')];
                        if stream.write_all(&b).await.is_err() {
                            return SlowEnd::Closed(started.elapsed());
                        }
                    }
                }
            }
        }
        SlowKind::Noauth | SlowKind::Tcp | SlowKind::Mixed => {
            let transport = if kind == SlowKind::Tcp {
                Transport::Tcp
            } else {
                Transport::Ws
            };
            match ChatConn::open(&connector, &target, transport, timeout).await {
                Ok(Opened::Admitted(mut conn)) => {
                    timeline.outcome(Outcome::Admitted);
                    tokio::select! {
                        _ = end.cancelled() => SlowEnd::StillOpen,
                        _ = wait_closed(&mut conn) => SlowEnd::Closed(started.elapsed()),
                    }
                }
                Ok(Opened::Rejected { .. }) => {
                    timeline.outcome(Outcome::Rejected);
                    SlowEnd::NotAdmitted
                }
                Err(_) => {
                    timeline.outcome(Outcome::Failed);
                    SlowEnd::NotAdmitted
                }
            }
        }
    }
}

#[derive(Debug, Default)]
struct Normal {
    ok: AtomicU64,
    rejected: AtomicU64,
    failed: AtomicU64,
    cycle: AtomicHistogram,
}

/// One normal client: connect, auth, join, send, wait for the ack, quit;
/// again and again until `end`.
async fn normal_client(
    ctx_parts: (Arc<Connector>, Target, Arc<Timeline>, Duration),
    token: String,
    run_id: String,
    stats: Arc<Normal>,
    end: CancellationToken,
) {
    let (connector, target, timeline, timeout) = ctx_parts;
    let mut n = 0u64;
    while !end.is_cancelled() {
        let t0 = Instant::now();
        let cycle = async {
            let mut conn = open_auth_join(
                &connector,
                &target,
                &timeline,
                timeout,
                &token,
                "general",
                Transport::Ws,
            )
            .await?;
            let client_id = format!("{run_id}-n{}-{n}", rand::random::<u32>());
            conn.send(&Command::Say {
                room: "general".into(),
                client_id: client_id.clone(),
                text: format!("normal {run_id} {n}"),
            })
            .await?;
            conn.expect(
                timeout,
                |e| matches!(e, Event::Ack { client_id: c, .. } if *c == client_id),
            )
            .await?;
            conn.close().await;
            Ok::<_, JoinError>(())
        };
        let r = tokio::select! {
            r = cycle => Some(r),
            _ = end.cancelled() => None,
        };
        match r {
            Some(Ok(())) => {
                stats.ok.fetch_add(1, Ordering::Relaxed);
                stats.cycle.record_duration(t0.elapsed());
                timeline.latency(t0.elapsed());
            }
            Some(Err(JoinError::Rejected)) => {
                stats.rejected.fetch_add(1, Ordering::Relaxed);
            }
            Some(Err(JoinError::Client(_))) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
            }
            None => break,
        }
        n += 1;
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = end.cancelled() => {}
        }
    }
}

/// Runs the scenario.
pub async fn run(ctx: &Ctx, args: &SlowlorisArgs) -> Result<Report, ScenarioError> {
    let mut report = Report::new("slowloris");
    report.latency_label = "normal client cycle (connect → auth → join → send → ack)".into();
    let slow = slow_count(args, ctx.capacity);
    let observe = args
        .observe
        .unwrap_or(ctx.idle_timeout.unwrap_or(300).min(60) as f64 + 15.0);
    let token = register_users(ctx, 1).await?.remove(0);
    let kinds: Vec<SlowKind> = (0..slow)
        .map(|i| {
            if args.kind == SlowKind::Mixed {
                KINDS[(i % 4) as usize]
            } else {
                args.kind
            }
        })
        .collect();

    // Normal clients first, so they are running when the slow ones arrive.
    let normal_end = CancellationToken::new();
    let stats = Arc::new(Normal::default());
    let mut normals = JoinSet::new();
    for _ in 0..args.normal {
        normals.spawn(normal_client(
            (
                ctx.connector.clone(),
                ctx.target.clone(),
                ctx.timeline.clone(),
                ctx.timeout(),
            ),
            token.clone(),
            ctx.run_id.clone(),
            stats.clone(),
            normal_end.clone(),
        ));
    }

    ctx.phase(1.0, "slowloris: normal clients warming up").await;
    ctx.event("slow clients arrive");
    let slow_end = CancellationToken::new();
    let mut slows = JoinSet::new();
    for (i, kind) in kinds.iter().copied().enumerate() {
        let fut = slow_conn(
            kind,
            ctx.connector.clone(),
            ctx.target.clone(),
            ctx.timeline.clone(),
            ctx.timeout(),
            Duration::from_millis(args.trickle_ms.max(1)),
            slow_end.clone(),
        );
        slows.spawn(async move { (i, fut.await) });
    }
    let arrived = Instant::now();
    let bar = ctx.bar(slow, "slowloris: waiting for the server to close them");
    let mut ends: Vec<Option<SlowEnd>> = vec![None; slow as usize];
    let deadline = tokio::time::sleep(Duration::from_secs_f64(observe));
    tokio::pin!(deadline);
    let mut cancelled = false;
    loop {
        tokio::select! {
            r = slows.join_next() => match r {
                Some(Ok((i, e))) => { ends[i] = Some(e); bar.inc(1); }
                Some(Err(_)) => bar.inc(1),
                None => break,
            },
            _ = &mut deadline, if !cancelled => {
                slow_end.cancel();
                cancelled = true;
            }
        }
    }
    bar.finish_and_clear();
    let last_closed = ends
        .iter()
        .flatten()
        .filter_map(|e| match e {
            SlowEnd::Closed(d) => Some(*d),
            _ => None,
        })
        .max();
    if let Some(d) = last_closed {
        ctx.event_at(ctx.t_of(arrived + d), "last slow client closed");
    }
    ctx.phase(1.0, "slowloris: normal clients after").await;
    normal_end.cancel();
    while normals.join_next().await.is_some() {}

    report.figure("slow connections", slow, "");
    report.number("observation window", Some(observe), "s");
    let mut all_closed = true;
    let mut slowest: Option<Duration> = None;
    for kind in KINDS {
        let of_kind: Vec<SlowEnd> = kinds
            .iter()
            .zip(&ends)
            .filter(|(k, _)| **k == kind)
            .filter_map(|(_, e)| *e)
            .collect();
        if of_kind.is_empty() {
            continue;
        }
        let name = kind_name(kind);
        let mut closed = Histogram::default();
        let mut open = 0u64;
        let mut not_admitted = 0u64;
        for e in &of_kind {
            match e {
                SlowEnd::Closed(d) => {
                    closed.record(d.as_micros() as u64);
                    slowest = slowest.max(Some(*d));
                }
                SlowEnd::StillOpen => open += 1,
                SlowEnd::NotAdmitted => not_admitted += 1,
            }
        }
        all_closed &= open == 0;
        report.figure(&format!("{name}: connections"), of_kind.len() as u64, "");
        report.figure(&format!("{name}: closed by the server"), closed.count(), "");
        report.figure(&format!("{name}: still open at the end"), open, "");
        report.figure(&format!("{name}: not admitted"), not_admitted, "");
        let s = closed.summary_ms();
        report.number(
            &format!("{name}: closed after (median)"),
            s.p50_ms.map(|m| m / 1000.0),
            "s",
        );
        report.number(
            &format!("{name}: closed after (max)"),
            s.max_ms.map(|m| m / 1000.0),
            "s",
        );
    }
    let ok = stats.ok.load(Ordering::Relaxed);
    let rejected = stats.rejected.load(Ordering::Relaxed);
    let failed = stats.failed.load(Ordering::Relaxed);
    report.figure("normal cycles served", ok, "");
    report.figure("normal cycles rejected", rejected, "");
    report.figure("normal cycles failed", failed, "");
    report.latency("normal cycle time", &stats.cycle.snapshot().summary_ms());

    report.check(
        "slow connections closed by the server",
        all_closed,
        format!(
            "within the {observe} s window; slowest closed after {}",
            opt(slowest.map(|d| d.as_secs_f64()), "s")
        ),
    );
    if let Some(limit) = args.expect_closed_within {
        report.check(
            "slow connections closed in time",
            all_closed && slowest.is_none_or(|d| d.as_secs_f64() <= limit),
            format!(
                "slowest after {}, limit {limit} s",
                opt(slowest.map(|d| d.as_secs_f64()), "s")
            ),
        );
    }
    report.check(
        "normal clients served",
        args.normal == 0 || (ok > 0 && failed == 0),
        format!("{ok} served, {rejected} rejected, {failed} failed"),
    );
    Ok(report)
}
