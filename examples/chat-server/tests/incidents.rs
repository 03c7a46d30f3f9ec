//! Incidents on the status listener: a leak and a stall each become one
//! incident with the right cause, duration and repair; they survive a
//! restart, and one open at a `kill -9` is closed as ended by the restart.

mod common;
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

async fn incidents(status: std::net::SocketAddr) -> Vec<Value> {
    let r = http(status, "GET", "/incidents?limit=50", None, None).await;
    assert_eq!(r.status, 200);
    r.json()["incidents"].as_array().unwrap().clone()
}

/// Waits until an incident matching `pred` is listed; returns it.
async fn wait_incident(
    status: std::net::SocketAddr,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        if let Some(i) = incidents(status).await.into_iter().find(|i| pred(i)) {
            return i;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no incident: {what}: {:?}",
            incidents(status).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn closed(i: &Value, cause: &str) -> bool {
    i["cause"] == cause && !i["ended"].is_null()
}

/// Starts a real server with faults enabled.
fn server(data: &std::path::Path, idle: &str) -> Proc {
    Proc::start(
        data,
        &[
            "--max-connections",
            "2",
            "--queue",
            "4",
            "--fault-injection",
            "--admin-token",
            "t0k",
            "--idle-timeout",
            idle,
        ],
    )
}

async fn leak(status: std::net::SocketAddr, permits: u32) {
    let r = post_json(
        status,
        "/admin/faults",
        Some("t0k"),
        json!({"kind":"leak","permits":permits}),
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leak_and_a_stall_are_incidents_that_survive_restarts() {
    let data = scratch("incidents");
    let mut srv = server(&data, "1");
    let a = srv.addrs;
    assert!(incidents(a.status).await.is_empty());

    // A leak: two permits taken and never given back. They are never
    // touched, so they idle out after 1 s and are reclaimed 1 s later.
    leak(a.status, 2).await;
    let leak_incident = wait_incident(a.status, "leak repaired", |i| closed(i, "leaking")).await;
    assert_eq!(leak_incident["limiter"], "chat");
    assert_eq!(leak_incident["repaired_by"], "watchdog_reclaim");
    let ms = leak_incident["duration_ms"].as_u64().unwrap();
    assert!((200..6000).contains(&ms), "{leak_incident}");
    let summary = leak_incident["summary"].as_str().unwrap();
    assert!(
        summary.contains("2 connections had gone silent") && summary.contains("reclaimed"),
        "{summary}"
    );

    // A stall: the limiter loses its next wake-ups while one connection
    // waits in the queue beside a permit that frees.
    let first = Tcp::hello(a.tcp).await;
    let second = Tcp::hello(a.tcp).await;
    let r = post_json(
        a.status,
        "/admin/faults",
        Some("t0k"),
        json!({"kind":"stall"}),
    )
    .await;
    assert_eq!(r.status, 200);
    let waiter = tokio::spawn(async move { Tcp::hello(a.tcp).await });
    wait_health(a.status, DEADLINE, |_, h| {
        h["limiters"]["chat"]["waiting"] == 1
    })
    .await;
    drop(first);
    let stall = wait_incident(a.status, "stall repaired", |i| closed(i, "stalled")).await;
    assert_eq!(stall["repaired_by"], "stall_redrive");
    assert!(
        stall["summary"]
            .as_str()
            .unwrap()
            .contains("woke them again"),
        "{stall}"
    );
    let _waiter = tokio::time::timeout(DEADLINE, waiter)
        .await
        .unwrap()
        .unwrap();
    drop(second);

    // Exactly one incident each, newest first.
    let list = incidents(a.status).await;
    let causes: Vec<&str> = list.iter().map(|i| i["cause"].as_str().unwrap()).collect();
    assert_eq!(
        causes.iter().filter(|c| **c == "leaking").count(),
        1,
        "{list:?}"
    );
    assert_eq!(
        causes.iter().filter(|c| **c == "stalled").count(),
        1,
        "{list:?}"
    );
    assert!(list[0]["id"].as_i64() > list[list.len() - 1]["id"].as_i64());

    // A graceful restart keeps them.
    srv.signal("-TERM");
    assert_eq!(srv.wait_exit(Duration::from_secs(10)), Some(0));
    let mut srv = server(&data, "3");
    let a = srv.addrs;
    let after = incidents(a.status).await;
    assert_eq!(after.len(), list.len(), "{after:?}");
    assert_eq!(after[0]["summary"], list[0]["summary"]);

    // One open at a kill -9 is closed as ended by the restart. With a 3 s
    // idle timeout the leak is revoked at ~3 s and reclaimed 1 s later:
    // kill while it is open.
    leak(a.status, 1).await;
    wait_incident(a.status, "a leak open", |i| {
        i["cause"] == "leaking" && i["ended"].is_null()
    })
    .await;
    srv.signal("-KILL");
    srv.wait_exit(Duration::from_secs(5));
    let srv = server(&data, "3");
    let a = srv.addrs;
    let ended = wait_incident(a.status, "closed by the restart", |i| {
        i["repaired_by"] == "restart"
    })
    .await;
    assert_eq!(ended["cause"], "leaking");
    assert!(!ended["ended"].is_null());
    assert!(
        ended["summary"].as_str().unwrap().contains("restarted"),
        "{ended}"
    );

    // Uptime: today has a record and is not fully up.
    let r = http(a.status, "GET", "/uptime", None, None).await;
    let days = r.json()["days"].as_array().unwrap().clone();
    assert_eq!(days.len(), 90);
    let today = &days[89];
    assert!(today["incidents"].as_u64().unwrap() >= 3, "{today}");
    let up = today["up"].as_f64().unwrap();
    assert!(up < 1.0 && up > 0.0, "{today}");
    assert!(
        days[0]["up"].is_null(),
        "no record before the database existed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_revoked_is_not_an_incident() {
    // The watchdog revoking a live idle client is it doing its job.
    let data = scratch("incidents-idle");
    let srv = server(&data, "1");
    let a = srv.addrs;
    let mut idle = Tcp::hello(a.tcp).await;
    // Its reads end when it is revoked.
    while idle.line().await.is_some() {}
    wait_health(a.status, DEADLINE, |_, h| {
        h["limiters"]["chat"]["revoked_total"].as_u64() >= Some(1)
    })
    .await;
    // Give the recorder its notice period and more.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        incidents(a.status).await.is_empty(),
        "{:?}",
        incidents(a.status).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_saturation_is_an_incident_and_short_is_not() {
    let srv = InProc::start(chat_server::Config {
        max_connections: 1,
        incident_saturated_after: Duration::from_millis(800),
        ..config("incidents-full")
    })
    .await;
    let a = srv.addrs;
    // Full for a moment: nothing recorded.
    let brief = Tcp::hello(a.tcp).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(brief);
    wait_health(a.status, DEADLINE, |_, h| {
        h["limiters"]["chat"]["in_use"] == 0
    })
    .await;
    // Full for longer than the notice: one incident, from when it filled.
    let held = Tcp::hello(a.tcp).await;
    let open = wait_incident(a.status, "saturation", |i| i["cause"] == "saturated").await;
    assert!(open["ended"].is_null());
    assert!(open["duration_ms"].as_u64().unwrap() >= 800, "{open}");
    drop(held);
    let done = wait_incident(a.status, "saturation over", |i| closed(i, "saturated")).await;
    assert_eq!(done["repaired_by"], "load_fell");
    assert_eq!(incidents(a.status).await.len(), 1);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_table_is_bounded() {
    let cfg = chat_server::Config {
        max_connections: 1,
        incident_saturated_after: Duration::ZERO,
        incident_max_rows: 3,
        ..config("incidents-bound")
    };
    let db = cfg.data.join("chat.db");
    let srv = InProc::start(cfg).await;
    let a = srv.addrs;
    // Each time the one place is taken and given back is an incident.
    for n in 1..=6 {
        let held = Tcp::hello(a.tcp).await;
        wait_incident(a.status, "saturated", |i| {
            i["cause"] == "saturated" && i["ended"].is_null()
        })
        .await;
        drop(held);
        let start = Instant::now();
        while incidents(a.status)
            .await
            .iter()
            .any(|i| i["ended"].is_null())
        {
            assert!(start.elapsed() < DEADLINE, "incident {n} not closed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let conn =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let (rows, newest): (i64, i64) = conn
        .query_row("SELECT COUNT(*), MAX(id) FROM incidents", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert!(rows <= 3, "{rows} rows kept");
    assert_eq!(newest, 6, "the newest are the ones kept");
    srv.stop().await;
}
