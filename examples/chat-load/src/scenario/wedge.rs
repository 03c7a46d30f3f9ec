//! `wedge`: the second outage. The limiter stops admitting while the
//! process stays up; the watchdog must notice and repair it by itself.
//!
//! Needs a server with `--fault-injection` and an admin token (a spawned
//! server has both).
//!
//! - `--fault leak` takes every permit and forgets it, as the buggy
//!   library did. New clients are rejected until the watchdog reclaims the
//!   leaked permits, which it may only do once they have been idle for the
//!   idle timeout (plus a grace period). Probes connect every
//!   `--probe-interval-ms` throughout.
//! - `--fault stall` makes the limiter lose its next wake-ups. That only
//!   shows with a wait queue: the run fills the server, queues `--waiters`
//!   connections, then frees every slot; the queued clients stay stuck
//!   beside free permits until the watchdog notices and wakes them.
//!
//! Reported: when the server noticed (first `/health` sample that is
//! degraded or shows a repair counter moving) and when new clients got in
//! again. The run fails when recovery takes longer than
//! `--expect-recovery-within`, when it never shows a detection, or when the
//! fault had no visible effect at all.
//!
//! In cluster mode the fault is injected on the first node; probes go to
//! every other node too, and the run checks they kept admitting
//! throughout (one node's leak must not take the others down).

use super::{register_users, wait_closed, Ctx, ScenarioError};
use crate::cli::{FaultKind, WedgeArgs};
use crate::client::status::{admin_post, repairs, HealthSample};
use crate::client::{timed_open, Connector, Opened, Target, Transport};
use crate::metrics::{Outcome, Timeline};
use crate::report::{opt, Report};
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Client sockets this scenario may hold at once.
pub fn planned_sockets(args: &WedgeArgs, capacity: u64) -> u64 {
    capacity + args.waiters + 80
}

/// The default recovery bound: idle timeout + 2 s for a leak, 2 s for a
/// stall (from the moment the permits are freed).
pub fn default_recovery_bound(fault: FaultKind, idle_timeout: Option<u64>) -> f64 {
    match fault {
        FaultKind::Leak => idle_timeout.unwrap_or(300) as f64 + 2.0,
        FaultKind::Stall => 2.0,
    }
}

fn noticed(s: &HealthSample, repairs_before: u64) -> bool {
    s.health.is_degraded() || repairs(&s.health.limiters.chat) > repairs_before
}

#[derive(Debug, Clone, Copy)]
struct Probe {
    started: Instant,
    outcome: Outcome,
    /// The node probed (0: the one with the fault).
    node: usize,
}

/// Runs the scenario.
pub async fn run(ctx: &Ctx, args: &WedgeArgs) -> Result<Report, ScenarioError> {
    if ctx.target.admin_token.is_none() {
        return Err(ScenarioError::Setup(
            "wedge needs the server's --admin-token (or let chat-load spawn the server)".into(),
        ));
    }
    let bound = args
        .expect_recovery_within
        .unwrap_or_else(|| default_recovery_bound(args.fault, ctx.idle_timeout));
    match args.fault {
        FaultKind::Leak => leak(ctx, args, bound).await,
        FaultKind::Stall => stall(ctx, args, bound).await,
    }
}

/// Connects one probe and closes it at once; reports the outcome.
async fn probe(
    connector: &Connector,
    target: &Target,
    transport: Transport,
    timeout: Duration,
    timeline: &Timeline,
) -> Probe {
    let started = Instant::now();
    let r = timed_open(connector, target, transport, timeout).await;
    let outcome = match r.result {
        Ok(Opened::Admitted(conn)) => {
            conn.close().await;
            Outcome::Admitted
        }
        Ok(Opened::Rejected { .. }) => Outcome::Rejected,
        Err(_) => Outcome::Failed,
    };
    timeline.outcome(outcome);
    timeline.latency(r.elapsed);
    Probe {
        started,
        outcome,
        node: 0,
    }
}

async fn leak(ctx: &Ctx, args: &WedgeArgs, bound: f64) -> Result<Report, ScenarioError> {
    let mut report = Report::new("wedge");
    report.latency_label = "connection answer time (connect → admitted or rejected)".into();
    let interval = Duration::from_millis(args.probe_interval_ms.max(10));

    // Baseline: the server admits.
    let mut ok = 0;
    for _ in 0..5 {
        let p = probe(
            &ctx.connector,
            &ctx.target,
            ctx.transport(),
            ctx.timeout(),
            &ctx.timeline,
        )
        .await;
        if p.outcome == Outcome::Admitted {
            ok += 1;
        }
        tokio::time::sleep(interval).await;
    }
    if ok == 0 {
        return Err(ScenarioError::Setup(
            "the server admitted no probe before the fault".into(),
        ));
    }
    let before = ctx
        .health
        .wait_for(Duration::from_secs(2), |_| true)
        .await
        .ok_or_else(|| ScenarioError::Setup("no /health answer".into()))?;
    let repairs_before = repairs(&before.health.limiters.chat);

    // Inject.
    let fault_at = Instant::now();
    let answer = admin_post(
        &ctx.connector,
        &ctx.target,
        "/admin/faults",
        &json!({"kind": "leak", "permits": ctx.capacity}),
        ctx.timeout(),
    )
    .await?;
    let answer = if ctx.cluster_capacity.is_some() {
        fill_share(ctx, fault_at, answer).await?
    } else {
        answer
    };
    ctx.event("leak injected");
    report.figure("fault", "leak", "");
    if ctx.cluster_capacity.is_some() {
        report.figure("node's share at the start", ctx.capacity, "");
        report.figure("node's cap (--capacity)", ctx.common.capacity, "");
    } else {
        report.figure("capacity", ctx.capacity, "");
    }
    report.figure("fault answer", answer.to_string(), "");

    // Probe until recovered (three admitted in a row after a rejection) or
    // the observation window ends.
    let window = Duration::from_secs_f64(bound + 10.0);
    let bar = ctx.bar(window.as_millis() as u64 / 100, "wedge: probing");
    let (tx, mut rx) = mpsc::unbounded_channel::<Probe>();
    let mut probes: Vec<Probe> = Vec::new();
    let mut first_reject: Option<Instant> = None;
    let mut recovered: Option<Instant> = None;
    let mut streak = 0;
    let mut tick = tokio::time::interval(interval);
    let mut tasks = JoinSet::new();
    loop {
        if fault_at.elapsed() > window || ctx.stop.is_cancelled() || streak >= 3 {
            break;
        }
        tokio::select! {
            _ = tick.tick() => {
                // The faulty node, and in a cluster every other one.
                for (node, target) in ctx.nodes.iter().enumerate() {
                    if tasks.len() >= 64 * ctx.nodes.len() {
                        break;
                    }
                    let tx = tx.clone();
                    let transport = ctx.transport();
                    // Probes run on their own tasks so a slow answer does
                    // not stretch the probe interval.
                    let connector = ctx.connector.clone();
                    let target = target.clone();
                    let timeline = ctx.timeline.clone();
                    let timeout = ctx.timeout();
                    tasks.spawn(async move {
                        let mut p = probe(&connector, &target, transport, timeout, &timeline).await;
                        p.node = node;
                        let _ = tx.send(p);
                    });
                }
                bar.set_position(fault_at.elapsed().as_millis() as u64 / 100);
            }
            Some(p) = rx.recv() => {
                probes.push(p);
                if p.node != 0 {
                    continue;
                }
                match p.outcome {
                    Outcome::Admitted if first_reject.is_some_and(|r| p.started > r) => {
                        recovered.get_or_insert(p.started);
                        streak += 1;
                    }
                    Outcome::Admitted => {}
                    _ => {
                        if p.started >= fault_at {
                            first_reject.get_or_insert(p.started);
                        }
                        if recovered.is_some() { streak = 0; }
                    }
                }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    bar.finish_and_clear();
    tasks.shutdown().await;
    // Give the health log a moment to hold the latest state.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let detected = ctx
        .health
        .first_after(fault_at, |s| noticed(s, repairs_before));
    let idle = ctx.idle_timeout.map(|s| s as f64);
    let since_fault = |t: Instant| t.saturating_duration_since(fault_at).as_secs_f64();
    if let Some(r) = first_reject {
        ctx.event_at(ctx.t_of(r), "clients rejected");
    }
    if let Some(d) = &detected {
        ctx.event_at(ctx.t_of(d.at), "detected");
    }
    if let Some(r) = recovered {
        ctx.event_at(ctx.t_of(r), "clients admitted again");
    }
    let after = ctx.health.latest();
    let detect_s = detected.as_ref().map(|d| since_fault(d.at));
    let recover_s = recovered.map(since_fault);
    let (others, probes): (Vec<Probe>, Vec<Probe>) = probes.into_iter().partition(|p| p.node != 0);
    report.figure("probes", probes.len() as u64, "");
    report.figure(
        "probes rejected or unanswered after the fault",
        probes
            .iter()
            .filter(|p| p.started >= fault_at && p.outcome != Outcome::Admitted)
            .count() as u64,
        "",
    );
    if ctx.nodes.len() > 1 {
        let turned_away = others
            .iter()
            .filter(|p| p.outcome != Outcome::Admitted)
            .count();
        report.figure("probes on the other nodes", others.len() as u64, "");
        report.check(
            "other nodes unaffected (every probe admitted)",
            turned_away == 0 && !others.is_empty(),
            format!(
                "{turned_away} of {} probes on {} other nodes rejected or unanswered",
                others.len(),
                ctx.nodes.len() - 1
            ),
        );
    }
    report.number(
        "first rejected probe after the fault",
        first_reject.map(since_fault),
        "s",
    );
    report.number("detected after the fault", detect_s, "s");
    report.number(
        "detected after the leak became reclaimable (fault + idle timeout)",
        match (detect_s, idle) {
            (Some(d), Some(i)) => Some(d - i),
            _ => None,
        },
        "s",
    );
    report.number("clients admitted again after the fault", recover_s, "s");
    report.number("idle timeout", idle, "s");
    if let Some(a) = &after {
        let chat = &a.health.limiters.chat;
        report.figure("reclaimed_total at the end", chat.reclaimed_total, "");
        report.figure("repaired_total at the end", chat.repaired_total, "");
        report.figure("status at the end", a.health.status.clone(), "");
    }
    wedge_checks(
        &mut report,
        first_reject.is_some(),
        "new clients turned away after the leak",
        detect_s,
        recover_s,
        bound,
        args,
        idle,
    );
    Ok(report)
}

/// In a cluster a node's share grows with demand, and leaked permits are
/// demand: the node asks for more of the budget and admits again. So the
/// leak goes on, each turned-away probe pressing for more, until the node
/// has leaked its own cap (`--capacity`, its --max-connections) or 5 s
/// have passed. Answers the first answer with the total leaked.
async fn fill_share(
    ctx: &Ctx,
    fault_at: Instant,
    first: serde_json::Value,
) -> Result<serde_json::Value, ScenarioError> {
    let leaked = |a: &serde_json::Value| a["leaked"].as_u64().unwrap_or(0);
    let cap = ctx.common.capacity;
    let mut total = leaked(&first);
    let mut rounds = 1;
    while total < cap && fault_at.elapsed() < Duration::from_secs(5) {
        probe(
            &ctx.connector,
            &ctx.target,
            ctx.transport(),
            ctx.timeout(),
            &ctx.timeline,
        )
        .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let a = admin_post(
            &ctx.connector,
            &ctx.target,
            "/admin/faults",
            &json!({"kind": "leak", "permits": cap - total}),
            ctx.timeout(),
        )
        .await?;
        total += leaked(&a);
        rounds += 1;
    }
    Ok(
        json!({"kind": "leak", "leaked": total, "injections": rounds,
              "filled_after_s": fault_at.elapsed().as_secs_f64()}),
    )
}

#[allow(clippy::too_many_arguments)]
fn wedge_checks(
    report: &mut Report,
    fault_seen: bool,
    effect: &str,
    detect_s: Option<f64>,
    recover_s: Option<f64>,
    bound: f64,
    args: &WedgeArgs,
    visible_after: Option<f64>,
) {
    report.check(
        "fault took effect",
        fault_seen,
        if fault_seen {
            effect.to_string()
        } else {
            format!("not seen: the fault did not bite ({effect})")
        },
    );
    report.check(
        "server noticed",
        detect_s.is_some(),
        format!(
            "/health degraded or repair counters moved after {}",
            opt(detect_s, "s")
        ),
    );
    report.check(
        "recovered in time",
        recover_s.is_some_and(|r| r <= bound),
        format!(
            "new clients admitted after {}, bound {bound} s",
            opt(recover_s, "s")
        ),
    );
    if let Some(limit) = args.expect_detect_within {
        let lag = detect_s.map(|d| d - visible_after.unwrap_or(0.0));
        report.check(
            "noticed in time",
            lag.is_some_and(|l| l <= limit),
            format!(
                "noticed {} after the fault became visible, limit {limit} s",
                opt(lag, "s")
            ),
        );
    }
}

async fn stall(ctx: &Ctx, args: &WedgeArgs, bound: f64) -> Result<Report, ScenarioError> {
    let mut report = Report::new("wedge");
    report.latency_label = "connection answer time (connect → admitted or rejected)".into();
    let tokens = register_users(ctx, 1).await?;
    let token = tokens[0].clone();
    let cap = ctx.capacity;

    // Fill the server.
    let hold_end = CancellationToken::new();
    let mut holders = JoinSet::new();
    let bar = ctx.bar(cap, "stall: filling the server");
    let mut held = 0u64;
    for _ in 0..cap {
        let r = timed_open(&ctx.connector, &ctx.target, ctx.transport(), ctx.timeout()).await;
        bar.inc(1);
        if let Ok(Opened::Admitted(mut conn)) = r.result {
            ctx.timeline.outcome(Outcome::Admitted);
            let _ = conn.auth(&token, ctx.timeout()).await;
            held += 1;
            let end = hold_end.clone();
            holders.spawn(async move {
                tokio::select! {
                    _ = end.cancelled() => {}
                    _ = wait_closed(&mut conn) => {}
                }
                // Drop without a goodbye: the slot frees when the server
                // sees the close.
                drop(conn);
            });
        }
    }
    bar.finish_and_clear();
    let before = ctx
        .health
        .wait_for(Duration::from_secs(2), |_| true)
        .await
        .ok_or_else(|| ScenarioError::Setup("no /health answer".into()))?;
    let repairs_before = repairs(&before.health.limiters.chat);

    // Inject the stall, then queue waiters behind the full server.
    let answer = admin_post(
        &ctx.connector,
        &ctx.target,
        "/admin/faults",
        &json!({"kind": "stall"}),
        ctx.timeout(),
    )
    .await?;
    ctx.event("stall injected");
    let waiter_timeout = ctx.timeout() + Duration::from_secs_f64(bound + 10.0);
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Outcome)>();
    let mut waiters = JoinSet::new();
    for _ in 0..args.waiters.max(1) {
        let tx = tx.clone();
        let connector = ctx.connector.clone();
        let target = ctx.target.clone();
        let timeline = ctx.timeline.clone();
        let transport = ctx.transport();
        let end = hold_end.clone();
        waiters.spawn(async move {
            let r = timed_open(&connector, &target, transport, waiter_timeout).await;
            timeline.latency(r.elapsed);
            let outcome = match r.result {
                Ok(Opened::Admitted(mut conn)) => {
                    let _ = tx.send((Instant::now(), Outcome::Admitted));
                    timeline.outcome(Outcome::Admitted);
                    // Keep the slot until the end so the measurement is
                    // not muddied by waiters leaving.
                    tokio::select! { _ = end.cancelled() => {}, _ = wait_closed(&mut conn) => {} }
                    return;
                }
                Ok(Opened::Rejected { .. }) => Outcome::Rejected,
                Err(_) => Outcome::Failed,
            };
            timeline.outcome(outcome);
            let _ = tx.send((Instant::now(), outcome));
        });
    }
    drop(tx);
    let queued = ctx
        .health
        .wait_for(Duration::from_secs(3), |s| {
            u64::from(s.health.limiters.chat.waiting) >= args.waiters.max(1)
        })
        .await
        .or_else(|| ctx.health.latest());
    let queued_n = queued.map_or(0, |s| u64::from(s.health.limiters.chat.waiting));

    // Free every slot: the queued clients should get in at once.
    let released_at = Instant::now();
    ctx.event("holders leave");
    // Aborting a holder drops its connection without a goodbye.
    holders.abort_all();
    while holders.join_next().await.is_some() {}

    let mut admitted_times = Vec::new();
    let mut failed = 0u64;
    let deadline = released_at + Duration::from_secs_f64(bound + 10.0);
    while admitted_times.len() as u64 + failed < args.waiters.max(1) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some((t, Outcome::Admitted))) => admitted_times.push(t),
            Ok(Some(_)) => failed += 1,
            _ => break,
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    hold_end.cancel();
    waiters.shutdown().await;

    let since = |t: Instant| t.saturating_duration_since(released_at).as_secs_f64();
    let detected = ctx
        .health
        .first_after(released_at, |s| noticed(s, repairs_before));
    let detect_s = detected.as_ref().map(|d| since(d.at));
    let first_in = admitted_times.iter().min().copied().map(since);
    let all_in = (admitted_times.len() as u64 == args.waiters.max(1))
        .then(|| admitted_times.iter().max().copied().map(since))
        .flatten();
    if let Some(d) = &detected {
        ctx.event_at(ctx.t_of(d.at), "detected");
    }
    if let Some(t) = admitted_times.iter().max() {
        ctx.event_at(ctx.t_of(*t), "waiters admitted");
    }
    report.figure("fault", "stall", "");
    report.figure("capacity", cap, "");
    report.figure("fault answer", answer.to_string(), "");
    report.figure("slots held before the stall", held, "");
    report.figure("waiters queued (/health)", queued_n, "");
    report.figure("waiters admitted", admitted_times.len() as u64, "");
    report.figure("waiters rejected or failed", failed, "");
    report.number("detected after the slots were freed", detect_s, "s");
    report.number(
        "first waiter admitted after the slots were freed",
        first_in,
        "s",
    );
    report.number(
        "all waiters admitted after the slots were freed",
        all_in,
        "s",
    );
    if let Some(a) = ctx.health.latest() {
        report.figure(
            "repaired_total at the end",
            a.health.limiters.chat.repaired_total,
            "",
        );
        report.figure("status at the end", a.health.status.clone(), "");
    }
    // A stall shows as waiters left beside free permits; the waiters not
    // getting in within ~50 ms of the release is the visible effect.
    let fault_seen = queued_n > 0 && (first_in.is_none_or(|f| f > 0.05) || detect_s.is_some());
    wedge_checks(
        &mut report,
        fault_seen,
        "queued clients left waiting beside free permits",
        detect_s,
        all_in,
        bound,
        args,
        Some(0.0),
    );
    Ok(report)
}
