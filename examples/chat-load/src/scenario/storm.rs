//! `storm`: every client drops at once (a deploy, a network blip) and
//! reconnects, first all at the same instant, then with full jitter.
//!
//! Round "plain": every client reconnects immediately and, when turned
//! away, retries after a fixed `--backoff-ms`. Round "jitter": each client
//! first waits a random time in `[0, --window-ms)` and, when turned away,
//! waits a random time in `[0, min(cap, base × 2^n))` (AWS's "full
//! jitter"). For each round: the peak admission rate (over 100 ms windows),
//! rejections, unanswered attempts, clients that gave up, and the time until
//! everyone was back.

use super::{register_users, Ctx, ScenarioError};
use crate::cli::StormArgs;
use crate::client::{timed_open, ChatConn, Opened};
use crate::metrics::Outcome;
use crate::report::Report;
use rand::Rng;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Client sockets this scenario may hold at once.
pub fn planned_sockets(args: &StormArgs, capacity: u64) -> u64 {
    clients(args, capacity) * 2 + 16
}

fn clients(args: &StormArgs, capacity: u64) -> u64 {
    args.clients.unwrap_or((capacity * 4 / 5).max(1))
}

/// The wait before attempt `n` (0-based) of a client.
pub fn backoff(args: &StormArgs, jitter: bool, attempt: u32, rng: &mut impl Rng) -> Duration {
    if !jitter {
        return if attempt == 0 {
            Duration::ZERO
        } else {
            Duration::from_millis(args.backoff_ms)
        };
    }
    let ceiling_ms = if attempt == 0 {
        args.window_ms
    } else {
        let exp = args
            .backoff_ms
            .saturating_mul(1u64 << (attempt - 1).min(20));
        exp.min(args.backoff_cap_ms)
    };
    Duration::from_millis(rng.gen_range(0..ceiling_ms.max(1)))
}

#[derive(Debug, Default)]
struct Round {
    admitted_at: Vec<Instant>,
    rejected: u64,
    failed: u64,
    gave_up: u64,
}

/// A connected, authenticated client that waits to be dropped.
fn hold(set: &mut JoinSet<()>, mut conn: ChatConn, end: CancellationToken) {
    set.spawn(async move {
        super::hold(&mut conn, &end, Duration::from_secs(1)).await;
        // Dropped without a goodbye, like a client whose network went away.
        drop(conn);
    });
}

/// Runs the scenario.
pub async fn run(ctx: &Ctx, args: &StormArgs) -> Result<Report, ScenarioError> {
    let mut report = Report::new("storm");
    report.latency_label = "reconnect answer time (connect → admitted or rejected)".into();
    let n = clients(args, ctx.capacity);
    let token = register_users(ctx, 1).await?.remove(0);
    report.figure("clients", n, "");
    report.figure("capacity", ctx.capacity, "");

    // First connect everyone calmly.
    let mut end = CancellationToken::new();
    let mut held = JoinSet::new();
    let bar = ctx.bar(n, "storm: connecting");
    let mut initial = 0u64;
    for _ in 0..n {
        let r = timed_open(&ctx.connector, &ctx.target, ctx.transport(), ctx.timeout()).await;
        if let Ok(Opened::Admitted(mut conn)) = r.result {
            ctx.timeline.outcome(Outcome::Admitted);
            if conn.auth(&token, ctx.timeout()).await.is_ok() {
                initial += 1;
                hold(&mut held, conn, end.clone());
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    report.figure("connected before the storm", initial, "");

    for (label, jitter) in [("plain", false), ("jitter", true)] {
        ctx.phase(1.0, "storm: settling").await;
        ctx.event(&format!("{label}: all drop"));
        end.cancel();
        while held.join_next().await.is_some() {}
        end = CancellationToken::new();
        let round = Arc::new(Mutex::new(Round::default()));
        let start = Instant::now();
        let bar = ctx.bar(n, &format!("storm ({label}): reconnecting"));
        let mut tasks = JoinSet::new();
        for _ in 0..n {
            let round = round.clone();
            let connector = ctx.connector.clone();
            let target = ctx.target.clone();
            let timeline = ctx.timeline.clone();
            let transport = ctx.transport();
            let timeout = ctx.timeout();
            let token = token.clone();
            let args = args.clone();
            let bar = bar.clone();
            tasks.spawn(async move {
                for attempt in 0..args.max_attempts.max(1) as u32 {
                    let wait = backoff(&args, jitter, attempt, &mut rand::thread_rng());
                    tokio::time::sleep(wait).await;
                    let r = timed_open(&connector, &target, transport, timeout).await;
                    timeline.latency(r.elapsed);
                    match r.result {
                        Ok(Opened::Admitted(mut conn)) => {
                            timeline.outcome(Outcome::Admitted);
                            round
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .admitted_at
                                .push(Instant::now());
                            bar.inc(1);
                            let _ = conn.auth(&token, timeout).await;
                            return Some(conn);
                        }
                        Ok(Opened::Rejected { .. }) => {
                            timeline.outcome(Outcome::Rejected);
                            round.lock().unwrap_or_else(|e| e.into_inner()).rejected += 1;
                        }
                        Err(_) => {
                            timeline.outcome(Outcome::Failed);
                            round.lock().unwrap_or_else(|e| e.into_inner()).failed += 1;
                        }
                    }
                }
                round.lock().unwrap_or_else(|e| e.into_inner()).gave_up += 1;
                bar.inc(1);
                None
            });
        }
        while let Some(r) = tasks.join_next().await {
            if let Ok(Some(conn)) = r {
                hold(&mut held, conn, end.clone());
            }
        }
        bar.finish_and_clear();
        let round = round.lock().unwrap_or_else(|e| e.into_inner());
        let back = round
            .admitted_at
            .iter()
            .max()
            .map(|t| t.duration_since(start));
        report.figure(
            &format!("{label}: reconnected"),
            round.admitted_at.len() as u64,
            "",
        );
        report.figure(&format!("{label}: rejections"), round.rejected, "");
        report.figure(&format!("{label}: unanswered attempts"), round.failed, "");
        report.figure(&format!("{label}: gave up"), round.gave_up, "");
        report.number(
            &format!("{label}: peak admission rate (100 ms windows)"),
            Some(peak_rate(
                start,
                &round.admitted_at,
                Duration::from_millis(100),
            )),
            "conn/s",
        );
        report.number(
            &format!("{label}: everyone back after"),
            back.map(|d| d.as_secs_f64()),
            "s",
        );
        report.check(
            &format!("{label}: every client got back in"),
            round.gave_up == 0,
            format!(
                "{} of {n} reconnected, {} gave up after {} attempts",
                round.admitted_at.len(),
                round.gave_up,
                args.max_attempts
            ),
        );
        ctx.event(&format!("{label}: all back"));
    }
    end.cancel();
    while held.join_next().await.is_some() {}
    Ok(report)
}

/// The highest number of events in any `window`-long bucket since
/// `start`, per second.
pub fn peak_rate(start: Instant, times: &[Instant], window: Duration) -> f64 {
    let mut buckets = std::collections::HashMap::<u128, u64>::new();
    for t in times {
        let i = t.saturating_duration_since(start).as_nanos() / window.as_nanos().max(1);
        *buckets.entry(i).or_default() += 1;
    }
    buckets.values().copied().max().unwrap_or(0) as f64 / window.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn args() -> StormArgs {
        StormArgs {
            clients: Some(10),
            window_ms: 2000,
            backoff_ms: 100,
            backoff_cap_ms: 1000,
            max_attempts: 5,
        }
    }

    #[test]
    fn plain_backoff_is_fixed() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert_eq!(backoff(&args(), false, 0, &mut rng), Duration::ZERO);
        assert_eq!(
            backoff(&args(), false, 3, &mut rng),
            Duration::from_millis(100)
        );
    }

    #[test]
    fn full_jitter_stays_under_the_capped_exponential() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..200 {
            assert!(backoff(&args(), true, 0, &mut rng) < Duration::from_millis(2000));
            assert!(backoff(&args(), true, 1, &mut rng) < Duration::from_millis(100));
            assert!(backoff(&args(), true, 3, &mut rng) < Duration::from_millis(400));
            assert!(backoff(&args(), true, 30, &mut rng) < Duration::from_millis(1000));
        }
    }

    #[test]
    fn peak_rate_counts_the_busiest_window() {
        let start = Instant::now();
        let ms = |m| start + Duration::from_millis(m);
        let times = [ms(10), ms(20), ms(30), ms(150), ms(420)];
        assert_eq!(peak_rate(start, &times, Duration::from_millis(100)), 30.0);
        assert_eq!(peak_rate(start, &[], Duration::from_millis(100)), 0.0);
    }
}
