//! `--idle-timeout`: a connection with no traffic is revoked by the
//! watchdog and closed (WebSocket: close 1013), its slot freed; one that
//! keeps talking stays.

mod common;
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_their_slots_freed() {
    let srv = InProc::start(chat_server::Config {
        idle_timeout: Duration::from_secs(1),
        ..config("idle")
    })
    .await;
    let a = srv.addrs;
    let token = register(a.http, "sleepy").await;
    let mut idle_ws = Ws::login(a.http, &token).await;
    let mut idle_tcp = Tcp::login(a.tcp, &token, "sleepy").await;
    let mut busy = Tcp::login(a.tcp, &token, "sleepy").await;

    let start = Instant::now();
    let closed = tokio::spawn(async move { idle_ws.close_code().await });
    // The busy client talks every 200 ms while the idle ones are revoked.
    while !closed.is_finished() {
        busy.send("PING").await;
        assert_eq!(busy.line().await.as_deref(), Some("PONG"));
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "idle WebSocket not closed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(closed.await.unwrap(), Some(1013));
    // The idle TCP connection is closed too (its reads end).
    loop {
        match idle_tcp.line().await {
            None => break,
            Some(l) => assert!(l == "BYE" || l.starts_with("ERR"), "{l}"),
        }
    }
    let h = wait_health(a.status, DEADLINE, |_, h| {
        h["limiters"]["chat"]["in_use"] == 1
    })
    .await;
    assert!(
        h["limiters"]["chat"]["revoked_total"].as_u64().unwrap() >= 2,
        "{h}"
    );
    busy.send("PING").await;
    assert_eq!(busy.line().await.as_deref(), Some("PONG"));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_revoke_closes_idle_connections() {
    let srv = InProc::start(config("revoke")).await;
    let a = srv.addrs;
    let token = register(a.http, "target").await;
    let mut ws = Ws::login(a.http, &token).await;
    ws.send(json!({"type":"ping"})).await;
    assert_eq!(ws.recv().await["type"], "pong");
    // Revoke leases idle for 200 ms, asking again until the connection's
    // lease has been quiet long enough to qualify.
    let start = std::time::Instant::now();
    loop {
        let r = post_json(
            a.status,
            "/admin/revoke",
            Some("admin-secret"),
            json!({"idle_ms": 200}),
        )
        .await;
        assert_eq!(r.status, 200);
        if r.json()["revoked"] == 1 {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "never revoked");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ws.close_code().await, Some(1013));
    srv.stop().await;
}
