//! `flood`: the first outage. More clients than the server can hold arrive
//! within seconds while some admitted clients keep chatting.
//!
//! The run: connect the chatters and let them chat (`--baseline`), then
//! spread `--attempts` (default `--factor` × capacity) connection attempts
//! over `--ramp` seconds. An attempt that is admitted authenticates and
//! stays until the flood ends (`--hold` after the ramp), so the server sits
//! at its cap; an attempt that is rejected is timed from its connect to the
//! server's answer (HTTP 503 or `BUSY`). Then the flood leaves and the run
//! watches the server return to healthy (`--after`).
//!
//! What must hold: `/health` never shows `in_use` above `capacity` (checked
//! for every scenario), and every rejected client gets an answer: an
//! attempt that is reset, refused or times out counts as unanswered.
//!
//! In cluster mode the chatters and the attempts go to the nodes in turn,
//! the default attempts are `--factor` × the cluster budget, and the run
//! checks the budget held across the nodes (see [`crate::cluster`]).

use super::{
    chatter, hold, open_auth_join, register_users, report_tracker, Ctx, ScenarioError, Tracker,
};
use crate::cli::FloodArgs;
use crate::client::{timed_open, ClientError, Opened};
use crate::metrics::{AtomicHistogram, Outcome};
use crate::report::{opt, Report};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How often a held flood connection pings, so the server's idle timeout
/// does not free its slot before the flood ends.
const PING_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct Counts {
    admitted: AtomicU64,
    rejected: AtomicU64,
    timed_out: AtomicU64,
    reset: AtomicU64,
    other: AtomicU64,
    holders_lost: AtomicU64,
    answered: AtomicU64,
}

/// Client sockets this scenario may hold at once.
pub fn planned_sockets(args: &FloodArgs, capacity: u64) -> u64 {
    chatters(args, capacity) + capacity + args.concurrency + 16
}

fn chatters(args: &FloodArgs, capacity: u64) -> u64 {
    args.chatters
        .unwrap_or((capacity / 5).clamp(1, 50))
        .min(capacity.saturating_sub(1).max(1))
}

/// Runs the scenario.
pub async fn run(ctx: &Ctx, args: &FloodArgs) -> Result<Report, ScenarioError> {
    let mut report = Report::new("flood");
    let cap = ctx.total_capacity();
    let attempts = args
        .attempts
        .unwrap_or((args.factor * cap as f64).ceil() as u64)
        .max(1);
    let n_chatters = chatters(args, cap);
    let tokens = register_users(ctx, 2).await?;
    let room = "general".to_string();

    // The chatters: admitted before the flood, chatting throughout.
    let tracker = Arc::new(Tracker::new(&ctx.run_id, 1));
    let chat_stop = CancellationToken::new();
    let mut chat_tasks = JoinSet::new();
    let mut chatter_fail = 0u64;
    let bar = ctx.bar(n_chatters, "connecting chatters");
    for j in 0..n_chatters {
        let conn = open_auth_join(
            &ctx.connector,
            ctx.node(j),
            &ctx.timeline,
            ctx.timeout(),
            &tokens[0],
            &room,
            ctx.transport(),
        )
        .await;
        match conn {
            Ok(conn) => {
                let period = Duration::from_secs_f64(n_chatters as f64 / args.rate.max(0.01));
                chat_tasks.spawn(chatter(
                    conn,
                    room.clone(),
                    0,
                    period,
                    tracker.clone(),
                    ctx.timeline.clone(),
                    chat_stop.clone(),
                ));
            }
            Err(_) => chatter_fail += 1,
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    if chat_tasks.is_empty() {
        return Err(ScenarioError::Setup(
            "no chatter could connect before the flood".into(),
        ));
    }

    ctx.event("chatting");
    tracker.sending.store(true, Ordering::Relaxed);
    ctx.phase(args.baseline, "baseline: chatting before the flood")
        .await;

    // The flood.
    ctx.event("flood starts");
    tracker.set_phase(1);
    let health_before = ctx.health.latest();
    let counts = Arc::new(Counts::default());
    let reject_wait = Arc::new(AtomicHistogram::default());
    let admit_wait = Arc::new(AtomicHistogram::default());
    let flood_end = CancellationToken::new();
    let in_flight = Arc::new(Semaphore::new(args.concurrency.max(1) as usize));
    let mut attempt_tasks = JoinSet::new();
    let bar = ctx.bar(attempts, "flood: connection attempts");
    let flood_start = Instant::now();
    let spacing = Duration::from_secs_f64(args.ramp.max(0.0) / attempts as f64);
    for i in 0..attempts {
        if ctx.stop.is_cancelled() {
            break;
        }
        tokio::time::sleep_until((flood_start + spacing.mul_f64(i as f64)).into()).await;
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let connector = ctx.connector.clone();
        let target = ctx.node(i).clone();
        let transport = ctx.transport();
        let timeout = ctx.timeout();
        let counts = counts.clone();
        let reject_wait = reject_wait.clone();
        let admit_wait = admit_wait.clone();
        let timeline = ctx.timeline.clone();
        let flood_end = flood_end.clone();
        let token = tokens[1].clone();
        let bar = bar.clone();
        attempt_tasks.spawn(async move {
            let r = timed_open(&connector, &target, transport, timeout).await;
            drop(permit);
            counts.answered.fetch_add(1, Ordering::Relaxed);
            bar.inc(1);
            match r.result {
                Ok(Opened::Admitted(mut conn)) => {
                    timeline.outcome(Outcome::Admitted);
                    counts.admitted.fetch_add(1, Ordering::Relaxed);
                    admit_wait.record_duration(r.elapsed);
                    // Hold the slot like a real client: authenticate, then
                    // stay until the flood ends.
                    let authed = tokio::select! {
                        r = conn.auth(&token, timeout) => r.is_ok(),
                        _ = flood_end.cancelled() => true,
                    };
                    let lost = !authed || !hold(&mut conn, &flood_end, PING_EVERY).await;
                    if lost {
                        counts.holders_lost.fetch_add(1, Ordering::Relaxed);
                    }
                    conn.close().await;
                }
                Ok(Opened::Rejected { .. }) => {
                    timeline.outcome(Outcome::Rejected);
                    counts.rejected.fetch_add(1, Ordering::Relaxed);
                    reject_wait.record_duration(r.elapsed);
                }
                Err(e) => {
                    timeline.outcome(Outcome::Failed);
                    let c = match &e {
                        ClientError::Timeout => &counts.timed_out,
                        ClientError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => {
                            &counts.timed_out
                        }
                        ClientError::Io(_) | ClientError::Closed(_) => &counts.reset,
                        _ => &counts.other,
                    };
                    c.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    // Wait for every attempt to be answered (bounded by the timeouts).
    let answer_deadline = Instant::now() + ctx.timeout() * 2 + Duration::from_secs(2);
    while counts.answered.load(Ordering::Relaxed) < attempts
        && Instant::now() < answer_deadline
        && !ctx.stop.is_cancelled()
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bar.finish_and_clear();
    ctx.event("ramp done");
    ctx.phase(args.hold, "flood: holding at the cap").await;

    // The flood leaves.
    flood_end.cancel();
    let flood_over = Instant::now();
    ctx.event("flood leaves");
    tracker.set_phase(2);
    let drain = tokio::time::timeout(Duration::from_secs(10), async {
        while attempt_tasks.join_next().await.is_some() {}
    });
    let _ = drain.await;
    let healthy_wait = args
        .expect_healthy_within
        .unwrap_or(args.after)
        .max(args.after)
        .max(0.5);
    let healthy = ctx
        .health
        .wait_for(Duration::from_secs_f64(healthy_wait + 1.0), |s| {
            s.at >= flood_over && s.health.status == "healthy"
        })
        .await;
    let back_to_healthy = healthy.map(|s| s.at.duration_since(flood_over).as_secs_f64());
    if let Some(b) = back_to_healthy {
        ctx.event_at(ctx.t_of(flood_over) + b, "healthy again");
    }
    let remaining = args.after - flood_over.elapsed().as_secs_f64();
    ctx.phase(remaining, "after the flood").await;

    // Stop the chatters, letting in-flight messages arrive.
    tracker.sending.store(false, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    chat_stop.cancel();
    let mut ends = Vec::new();
    while let Some(e) = chat_tasks.join_next().await {
        if let Ok(e) = e {
            ends.push(e);
        }
    }
    let health_after = ctx.health.latest();

    // Figures.
    let admitted = counts.admitted.load(Ordering::Relaxed);
    let rejected = counts.rejected.load(Ordering::Relaxed);
    let timed_out = counts.timed_out.load(Ordering::Relaxed);
    let reset = counts.reset.load(Ordering::Relaxed);
    let other = counts.other.load(Ordering::Relaxed);
    let unanswered = timed_out + reset + other;
    report.figure("capacity", cap, "");
    report.figure("flood attempts", attempts, "");
    report.figure("chatters", ends.len() as u64, "");
    report.figure("chatters that failed to connect", chatter_fail, "");
    report.figure("flood admitted", admitted, "");
    report.figure("flood rejected (503 / BUSY)", rejected, "");
    report.figure("flood unanswered: timed out", timed_out, "");
    report.figure("flood unanswered: reset / closed", reset, "");
    report.figure("flood unanswered: other", other, "");
    report.figure(
        "admitted flood clients dropped early",
        counts.holders_lost.load(Ordering::Relaxed),
        "",
    );
    if let (Some(b), Some(a)) = (&health_before, &health_after) {
        report.figure(
            "server rejections counted (/health delta)",
            a.health
                .limiters
                .chat
                .rejected_sum()
                .saturating_sub(b.health.limiters.chat.rejected_sum()),
            "",
        );
    }
    report.latency(
        "rejected client's wait",
        &reject_wait.snapshot().summary_ms(),
    );
    report.latency(
        "admitted client's wait",
        &admit_wait.snapshot().summary_ms(),
    );
    let before = tracker.phases[0].snapshot().summary_ms();
    let during = tracker.phases[1].snapshot().summary_ms();
    let after = tracker.phases[2].snapshot().summary_ms();
    report.latency("chat latency before flood", &before);
    report.latency("chat latency during flood", &during);
    report.latency("chat latency after flood", &after);
    let ratio = match (during.p99_ms, before.p99_ms) {
        (Some(d), Some(b)) if b > 0.0 => Some(d / b),
        _ => None,
    };
    report.number("chat p99 during / before", ratio, "x");
    report.figure(
        "chatters disconnected by the server",
        super::count_lost(&ends),
        "",
    );
    report.number("back to healthy after flood left", back_to_healthy, "s");
    let secs = ctx.t();
    report_tracker(&mut report, &tracker, secs);

    // Checks.
    report.check(
        "every rejected client answered",
        unanswered == 0,
        format!(
            "{unanswered} of {attempts} attempts got no answer \
             ({timed_out} timed out, {reset} reset/closed, {other} other)"
        ),
    );
    let must_saturate = attempts + n_chatters > cap;
    report.check(
        "flood reached the cap",
        !must_saturate || rejected > 0,
        format!("{rejected} rejections for {attempts} attempts at capacity {cap}"),
    );
    if let Some(limit) = args.expect_reject_p99_ms {
        let p99 = reject_wait.snapshot().summary_ms().p99_ms;
        report.check(
            "rejection answered fast",
            p99.is_some_and(|p| p <= limit),
            format!("p99 {}, limit {limit} ms", opt(p99, "ms")),
        );
    }
    if let Some(limit) = args.expect_healthy_within {
        report.check(
            "back to healthy",
            back_to_healthy.is_some_and(|b| b <= limit),
            format!("after {}, limit {limit} s", opt(back_to_healthy, "s")),
        );
    }
    if let Some(limit) = args.expect_latency_ratio {
        report.check(
            "chatters unaffected",
            ratio.is_some_and(|r| r <= limit),
            format!("p99 during / before = {}, limit {limit}", opt(ratio, "x")),
        );
    }
    Ok(report)
}
