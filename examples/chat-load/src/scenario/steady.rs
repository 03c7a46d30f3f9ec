//! `steady`: a normal day. `--clients` connections spread over `--rooms`
//! rooms send `--rate` messages per second in total for `--duration`
//! seconds.
//!
//! Latency is end to end: from just before a message is written to the
//! moment it has reached every member of its room (each member's client is
//! in this process, so one clock times both ends). Also reported: the
//! per-delivery latency, send → ack, and throughput.
//!
//! In cluster mode a room's members are spread over the nodes (member k of
//! room r on node (r + k) mod N, so each node holds an even share), and
//! most deliveries cross nodes. A node's share
//! of the cluster budget grows with demand, a batch at a time: a client
//! turned away while it grows tries again shortly, as a real client
//! would, and the retries are reported.

use super::{
    chatter, count_lost, open_auth_join, register_users, report_tracker, Ctx, JoinError,
    ScenarioError, Tracker,
};
use crate::cli::SteadyArgs;
use crate::client::http;
use crate::report::{opt, Report};
use hyper::Method;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How often a client turned away while a node's share grows tries again
/// (cluster mode).
const BUSY_RETRIES: u64 = 30;

/// Rooms one user may own on the server (its room quota).
const ROOMS_PER_OWNER: u64 = 100;

/// Client sockets this scenario may hold at once.
pub fn planned_sockets(args: &SteadyArgs) -> u64 {
    args.clients + args.connect_concurrency + 16
}

/// The rooms of a run: `general` for one room, else `load<run>r<i>`.
pub fn room_names(run_id: &str, rooms: u64) -> Vec<String> {
    if rooms <= 1 {
        vec!["general".to_string()]
    } else {
        (0..rooms).map(|i| format!("load{run_id}r{i}")).collect()
    }
}

/// Waits (up to 30 s) until every node lists the run's rooms: a room made
/// on one node is known to the others once its note has gone round.
async fn rooms_known_everywhere(
    ctx: &Ctx,
    token: &str,
    rooms: &[String],
) -> Result<(), ScenarioError> {
    let want = rooms.iter().filter(|r| *r != "general").count();
    let Some(prefix) = rooms.first().and_then(|r| r.strip_suffix("r0")) else {
        return Ok(());
    };
    let prefix = format!("{prefix}r");
    let start = Instant::now();
    for node in &ctx.nodes {
        loop {
            // Names sort, so the run's rooms are one range after `prefix`.
            let mut after = prefix.clone();
            let mut seen = 0;
            loop {
                let resp = http::request(
                    &ctx.connector,
                    node.http,
                    Method::GET,
                    &format!("/api/rooms?limit=500&after={after}"),
                    Some(token),
                    None,
                    ctx.timeout(),
                )
                .await?;
                let page: Vec<serde_json::Value> =
                    serde_json::from_slice(&resp.body).unwrap_or_default();
                let names: Vec<&str> = page
                    .iter()
                    .filter_map(|r| r["name"].as_str())
                    .take_while(|n| n.starts_with(&prefix))
                    .collect();
                seen += names.len();
                match names.last() {
                    Some(last) if names.len() == 500 => after = (*last).to_string(),
                    _ => break,
                }
            }
            if seen >= want {
                break;
            }
            if start.elapsed() > Duration::from_secs(30) {
                return Err(ScenarioError::Setup(format!(
                    "node {} knows {seen} of {want} rooms after 30 s",
                    node.http
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Runs the scenario.
pub async fn run(ctx: &Ctx, args: &SteadyArgs) -> Result<Report, ScenarioError> {
    let mut report = Report::new("steady");
    let rooms = room_names(&ctx.run_id, args.rooms);
    // Enough users to own every room within the server's room quota.
    let owners = (rooms.len() as u64).div_ceil(ROOMS_PER_OWNER);
    let users = args.users.clamp(1, args.clients.max(1)).max(owners);
    let tokens = register_users(ctx, users).await?;
    for (i, room) in rooms.iter().enumerate().filter(|(_, r)| *r != "general") {
        let owner = &tokens[(i as u64 / ROOMS_PER_OWNER % users) as usize];
        let resp = http::request(
            &ctx.connector,
            ctx.target.http,
            Method::POST,
            "/api/rooms",
            Some(owner),
            Some(&json!({"name": room, "private": false})),
            ctx.timeout(),
        )
        .await?;
        if resp.status != 201 && resp.status != 409 {
            return Err(ScenarioError::Setup(format!(
                "creating room {room}: HTTP {} {}",
                resp.status,
                String::from_utf8_lossy(&resp.body)
            )));
        }
    }

    if ctx.nodes.len() > 1 {
        rooms_known_everywhere(ctx, &tokens[0], &rooms).await?;
    }

    // Connect everyone, a batch at a time.
    let tracker = Arc::new(Tracker::new(&ctx.run_id, rooms.len()));
    let stop = CancellationToken::new();
    let period = Duration::from_secs_f64(args.clients.max(1) as f64 / args.rate.max(0.001));
    let bar = ctx.bar(args.clients, "connecting clients");
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1) as usize));
    let mut connecting = JoinSet::new();
    let connect_started = Instant::now();
    for i in 0..args.clients {
        let Ok(permit) = gate.clone().acquire_owned().await else {
            break;
        };
        let token = tokens[(i % users) as usize].clone();
        let room_idx = (i % rooms.len() as u64) as usize;
        let room = rooms[room_idx].clone();
        let transport = ctx.transport();
        let bar = bar.clone();
        // The spawned task owns clones of what it needs from the context.
        let connector = ctx.connector.clone();
        // Member k of room r on node (r + k) mod N.
        let target = ctx.node(room_idx as u64 + i / rooms.len() as u64).clone();
        let timeline = ctx.timeline.clone();
        let timeout = ctx.timeout();
        let retry_busy = ctx.cluster_capacity.is_some();
        connecting.spawn(async move {
            let mut busy = 0u64;
            let r = loop {
                let r = open_auth_join(
                    &connector, &target, &timeline, timeout, &token, &room, transport,
                )
                .await;
                match r {
                    Err(JoinError::Rejected) if retry_busy && busy < BUSY_RETRIES => {
                        busy += 1;
                        tokio::time::sleep(Duration::from_millis(50 * busy.min(10))).await;
                    }
                    r => break r,
                }
            };
            drop(permit);
            bar.inc(1);
            (r, room, room_idx, busy)
        });
        if ctx.stop.is_cancelled() {
            break;
        }
    }
    let mut chat_tasks = JoinSet::new();
    let (mut rejected, mut failed, mut retried) = (0u64, 0u64, 0u64);
    while let Some(res) = connecting.join_next().await {
        let Ok((r, room, room_idx, busy)) = res else {
            failed += 1;
            continue;
        };
        retried += busy;
        match r {
            Ok(conn) => {
                chat_tasks.spawn(chatter(
                    conn,
                    room,
                    room_idx,
                    period,
                    tracker.clone(),
                    ctx.timeline.clone(),
                    stop.clone(),
                ));
            }
            Err(JoinError::Rejected) => rejected += 1,
            Err(JoinError::Client(_)) => failed += 1,
        }
    }
    bar.finish_and_clear();
    let connect_secs = connect_started.elapsed().as_secs_f64();
    let connected = chat_tasks.len() as u64;
    ctx.event("all connected");
    // Let joins and presence settle before the clock starts.
    tokio::time::sleep(Duration::from_secs(1)).await;

    ctx.event("sending");
    let send_started = Instant::now();
    tracker.sending.store(true, Ordering::Relaxed);
    ctx.phase(args.duration, "steady: chatting").await;
    tracker.sending.store(false, Ordering::Relaxed);
    let send_secs = send_started.elapsed().as_secs_f64();
    ctx.event("sending stops");
    let drain_end = Instant::now() + Duration::from_secs_f64(args.drain.max(0.0));
    while Instant::now() < drain_end
        && !ctx.stop.is_cancelled()
        && tracker.completed.load(Ordering::Relaxed) < tracker.sent.load(Ordering::Relaxed)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ctx.event("drained");
    stop.cancel();
    let mut ends = Vec::new();
    while let Some(e) = chat_tasks.join_next().await {
        if let Ok(e) = e {
            ends.push(e);
        }
    }

    report.figure("clients", args.clients, "");
    report.figure("rooms", rooms.len() as u64, "");
    report.figure("connected", connected, "");
    report.figure("rejected at connect", rejected, "");
    report.figure("failed to connect", failed, "");
    if ctx.cluster_capacity.is_some() {
        report.figure(
            "connects retried after busy (a node's share growing)",
            retried,
            "",
        );
    }
    report.number("time to connect all", Some(connect_secs), "s");
    report.number("target rate", Some(args.rate), "msg/s");
    report_tracker(&mut report, &tracker, send_secs);
    report.number(
        "deliveries per second",
        Some(tracker.delivered.load(Ordering::Relaxed) as f64 / send_secs.max(1e-9)),
        "/s",
    );
    let full = tracker.full.snapshot().summary_ms();
    report.latency("latency to every member", &full);
    report.latency(
        "latency per delivery",
        &tracker.delivery.snapshot().summary_ms(),
    );
    report.latency("latency to ack", &tracker.ack.snapshot().summary_ms());
    report.figure("clients disconnected by the server", count_lost(&ends), "");

    report.check(
        "every client connected",
        connected == args.clients,
        format!(
            "{connected} of {} ({rejected} rejected, {failed} failed)",
            args.clients
        ),
    );
    let sent = tracker.sent.load(Ordering::Relaxed);
    let completed = tracker.completed.load(Ordering::Relaxed);
    report.check(
        "every message reached every member",
        completed == sent,
        format!("{completed} of {sent} messages fully delivered"),
    );
    if let Some(limit) = args.expect_p99_ms {
        report.check(
            "latency p99 within target",
            full.p99_ms.is_some_and(|p| p <= limit),
            format!("p99 {}, target {limit} ms", opt(full.p99_ms, "ms")),
        );
    }
    Ok(report)
}
