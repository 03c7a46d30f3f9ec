//! The outage, replayed at small scale against the real binary.
//!
//! 1. Overrun: with `--max-connections 20`, 200 connection attempts never
//!    open more than 20; refused WebSocket clients get 503 + Retry-After,
//!    refused TCP clients `BUSY`; `/health` answers throughout and says
//!    `saturated`; admitted clients keep chatting.
//! 2. Lock-up: with `--fault-injection --idle-timeout 2`, leaking every
//!    permit blocks new connections, and the server recovers by itself
//!    within 5 s, with `/health` showing the repair.

mod common;
use common::*;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite;

enum Attempt {
    Ws(Box<Ws>),
    Tcp(Tcp),
    Refused,
}

/// One connection attempt; refusals are checked for the contract's form.
async fn attempt(addrs: chat_server::Addrs, ws: bool) -> Attempt {
    if ws {
        match tokio_tungstenite::connect_async(format!("ws://{}/ws", addrs.http)).await {
            Ok((ws, _)) => Attempt::Ws(Box::new(Ws { ws })),
            Err(tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 503);
                let retry = resp.headers().get("retry-after").expect("Retry-After");
                assert!(retry.to_str().unwrap().parse::<u32>().unwrap() >= 1);
                assert_eq!(resp.headers().get("connection").unwrap(), "close");
                Attempt::Refused
            }
            Err(e) => panic!("websocket attempt failed oddly: {e}"),
        }
    } else {
        let mut t = Tcp::connect(addrs.tcp).await;
        let first = t.line().await.expect("greeting or BUSY");
        if first == "HELLO chat 1" {
            Attempt::Tcp(t)
        } else {
            assert!(first.starts_with("BUSY retry-after="), "{first}");
            assert_eq!(t.line().await, None, "closed after BUSY");
            Attempt::Refused
        }
    }
}

/// Polls `/health` until stopped: every answer must be 200, in_use never
/// above 20. Returns (polls, max in_use, saw saturated).
fn watch_health(
    status: SocketAddr,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, u64, bool)> {
    tokio::spawn(async move {
        let (mut polls, mut max, mut saturated) = (0, 0, false);
        while !stop.load(Ordering::Relaxed) {
            let (code, h) = health(status).await;
            assert_eq!(code, 200, "health must answer 200 while chat is full: {h}");
            let in_use = h["limiters"]["chat"]["in_use"].as_u64().unwrap();
            assert!(in_use <= 20, "in_use {in_use} > 20");
            max = max.max(in_use);
            saturated |= h["status"] == "saturated";
            polls += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (polls, max, saturated)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrun_is_capped_and_health_answers() {
    let data = scratch("overrun");
    let srv = Proc::start(&data, &["--max-connections", "20"]);
    let a = srv.addrs;
    let token = register(a.http, "crowd").await;

    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_health(a.status, stop.clone());

    // 200 attempts at once, half WebSocket, half TCP.
    let tasks: Vec<_> = (0..200)
        .map(|i| tokio::spawn(attempt(a, i % 2 == 0)))
        .collect();
    let mut admitted = Vec::new();
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            Attempt::Refused => refused += 1,
            ok => admitted.push(ok),
        }
    }
    assert!(admitted.len() <= 20, "{} admitted", admitted.len());
    assert_eq!(admitted.len() + refused, 200);
    assert_eq!(admitted.len(), 20, "the cap is reached, not undershot");

    // At the cap: /health says saturated, and more attempts are refused.
    let h = wait_health(a.status, DEADLINE, |c, h| {
        c == 200 && h["status"] == "saturated"
    })
    .await;
    assert_eq!(h["limiters"]["chat"]["in_use"], 20);
    for ws in [true, false] {
        assert!(matches!(attempt(a, ws).await, Attempt::Refused));
    }

    // The admitted clients keep chatting.
    let mut n = 0;
    for c in &mut admitted {
        n += 1;
        match c {
            Attempt::Ws(ws) => {
                ws.send(json!({"type":"auth","token":token})).await;
                assert_eq!(ws.recv().await["type"], "ready");
                ws.send(json!({"type":"send","room":"general","text":"still up","client_id":format!("w{n}")})).await;
                assert_eq!(ws.recv_type("ack").await["client_id"], format!("w{n}"));
            }
            Attempt::Tcp(t) => {
                t.send(&format!("AUTH {token}")).await;
                assert_eq!(t.line().await.unwrap(), "OK ready crowd");
                t.send(&format!("SAY general t{n} still up")).await;
                assert!(t
                    .line()
                    .await
                    .unwrap()
                    .starts_with(&format!("OK ack t{n} ")));
            }
            Attempt::Refused => unreachable!(),
        }
    }

    stop.store(true, Ordering::Relaxed);
    let (polls, max, saturated) = watcher.await.unwrap();
    assert!(
        polls > 0 && max <= 20 && saturated,
        "polls={polls} max={max} saturated={saturated}"
    );
    let (_, h) = health(a.status).await;
    let rejected = h["limiters"]["chat"]["rejected_total"]["full"]
        .as_u64()
        .unwrap();
    assert!(rejected >= 182, "rejections counted: {rejected}");

    // Once clients leave, room comes back.
    drop(admitted);
    wait_health(a.status, DEADLINE, |c, h| {
        c == 200 && h["limiters"]["chat"]["in_use"] == 0
    })
    .await;
    assert!(matches!(attempt(a, false).await, Attempt::Tcp(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaked_permits_are_reclaimed_by_the_watchdog() {
    let data = scratch("leak");
    let srv = Proc::start(
        &data,
        &[
            "--max-connections",
            "20",
            "--fault-injection",
            "--idle-timeout",
            "2",
            "--admin-token",
            "t0k",
        ],
    );
    let a = srv.addrs;

    // A healthy client that keeps talking is not mistaken for a leak.
    let token = register(a.http, "steady").await;
    let mut steady = Tcp::login(a.tcp, &token, "steady").await;

    // Leak every remaining permit, as the buggy library did.
    let r = post_json(
        a.status,
        "/admin/faults",
        Some("t0k"),
        json!({"kind":"leak","permits":20}),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["leaked"], 19);
    let leaked_at = Instant::now();

    // New connections are refused; health still answers.
    assert!(matches!(attempt(a, true).await, Attempt::Refused));
    assert!(matches!(attempt(a, false).await, Attempt::Refused));
    let (code, h) = health(a.status).await;
    assert_eq!(h["limiters"]["chat"]["in_use"], 20, "{code} {h}");

    // Nobody intervenes. Within 5 s a new connection gets in.
    let pings = AtomicU64::new(0);
    let recovered = loop {
        assert!(
            leaked_at.elapsed() < Duration::from_secs(5),
            "no recovery within 5 s"
        );
        // Traffic keeps the steady client's lease fresh.
        steady.send("PING").await;
        assert_eq!(steady.line().await.unwrap(), "PONG");
        pings.fetch_add(1, Ordering::Relaxed);
        let mut s = tokio::net::TcpStream::connect(a.tcp).await.unwrap();
        let mut buf = [0u8; 32];
        let n = s.read(&mut buf).await.unwrap();
        if buf[..n].starts_with(b"HELLO chat 1") {
            break leaked_at.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("recovered {recovered:?} after the leak");

    // /health shows the repair: the leaked leases were revoked and reclaimed.
    let h = wait_health(a.status, DEADLINE, |c, h| {
        c == 200 && h["limiters"]["chat"]["reclaimed_total"].as_u64().unwrap() >= 19
    })
    .await;
    assert!(
        h["limiters"]["chat"]["revoked_total"].as_u64().unwrap() >= 19,
        "{h}"
    );
    assert_eq!(h["watchdog"]["alive"], true);
    assert_eq!(h["status"], "healthy");
    // The steady client was never cut off.
    steady.send("PING").await;
    assert_eq!(steady.line().await.unwrap(), "PONG");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_wakeups_are_repaired() {
    let data = scratch("stall");
    let srv = Proc::start(
        &data,
        &[
            "--max-connections",
            "1",
            "--queue",
            "4",
            "--fault-injection",
            "--admin-token",
            "t0k",
        ],
    );
    let a = srv.addrs;
    let first = Tcp::hello(a.tcp).await;
    // The limiter will lose its next wake-ups.
    let r = post_json(
        a.status,
        "/admin/faults",
        Some("t0k"),
        json!({"kind":"stall"}),
    )
    .await;
    assert_eq!(r.status, 200);
    // A second connection waits in the queue...
    let second = tokio::spawn(async move { Tcp::hello(a.tcp).await });
    wait_health(a.status, DEADLINE, |_, h| {
        h["limiters"]["chat"]["waiting"] == 1
    })
    .await;
    // ...and when the first leaves, its wake-up is lost. The watchdog sees a
    // waiter beside a free permit and re-drives the hand-off.
    drop(first);
    let second = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("the waiter is admitted after the repair")
        .unwrap();
    let h = wait_health(a.status, DEADLINE, |_, h| {
        h["limiters"]["chat"]["repaired_total"].as_u64().unwrap() >= 1
    })
    .await;
    assert_eq!(h["limiters"]["chat"]["in_use"], 1);
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_cap_is_shared_by_http_and_tcp() {
    let srv = InProc::start(chat_server::Config {
        per_ip: 2,
        ..config("per-ip")
    })
    .await;
    let a = srv.addrs;
    // Two connections from 127.0.0.1, one of each kind, use its budget.
    let _ws = Ws::connect(a.http).await;
    let _tcp = Tcp::hello(a.tcp).await;
    assert!(matches!(attempt(a, true).await, Attempt::Refused));
    assert!(matches!(attempt(a, false).await, Attempt::Refused));
    // Another address still gets in.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut s = sock.connect(a.tcp).await.unwrap();
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HELLO chat 1"));
    let (_, h) = health(a.status).await;
    assert!(
        h["limiters"]["chat"]["rejected_total"]["per_ip"]
            .as_u64()
            .unwrap()
            >= 2,
        "{h}"
    );
    srv.stop().await;
}
