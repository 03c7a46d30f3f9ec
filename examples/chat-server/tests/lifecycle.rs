//! Durability across `kill -9`, graceful shutdown on SIGTERM and SIGINT,
//! and an admin drain — all against the real binary.

mod common;
use common::*;
use serde_json::json;
use std::collections::HashMap;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_kill_9_and_resends_do_not_duplicate() {
    let data = scratch("durable");
    let mut srv = Proc::start(&data, &[]);
    let token = register(srv.addrs.http, "durable").await;

    // 50 messages, every one acknowledged.
    let mut ws = Ws::login(srv.addrs.http, &token).await;
    for i in 0..50 {
        ws.send(json!({"type":"send","room":"general","text":format!("m{i}"),"client_id":format!("c{i}")})).await;
    }
    let mut acked: HashMap<String, i64> = HashMap::new();
    while acked.len() < 50 {
        let v = ws.recv_type("ack").await;
        acked.insert(
            v["client_id"].as_str().unwrap().to_owned(),
            v["id"].as_i64().unwrap(),
        );
    }
    // 50 more sent, and the server killed as soon as the first ack of them
    // arrives: some are committed, some perhaps not, none acknowledged
    // without being committed.
    for i in 50..100 {
        ws.send(json!({"type":"send","room":"general","text":format!("m{i}"),"client_id":format!("c{i}")})).await;
    }
    let v = ws.recv_type("ack").await;
    acked.insert(
        v["client_id"].as_str().unwrap().to_owned(),
        v["id"].as_i64().unwrap(),
    );
    srv.signal("-KILL");
    srv.wait_exit(Duration::from_secs(10));
    drop(ws);

    // Restart on the same data: the token still works, every acknowledged
    // message is there, and resending everything stores nothing twice.
    let srv = Proc::start(&data, &[]);
    let mut ws = Ws::login(srv.addrs.http, &token).await;
    for i in 0..100 {
        ws.send(json!({"type":"send","room":"general","text":format!("m{i}"),"client_id":format!("c{i}")})).await;
    }
    let mut after: HashMap<String, i64> = HashMap::new();
    while after.len() < 100 {
        let v = ws.recv_type("ack").await;
        after.insert(
            v["client_id"].as_str().unwrap().to_owned(),
            v["id"].as_i64().unwrap(),
        );
    }
    for (cid, id) in &acked {
        assert_eq!(after[cid], *id, "{cid} keeps its id across the crash");
    }
    // And a second resend, for good measure.
    ws.send(json!({"type":"send","room":"general","text":"m0","client_id":"c0"}))
        .await;
    assert_eq!(ws.recv_type("ack").await["id"], acked["c0"]);

    let r = http(
        srv.addrs.http,
        "GET",
        "/api/rooms/general/messages?limit=200",
        Some(&token),
        None,
    )
    .await;
    let msgs = r.json()["messages"].as_array().unwrap().clone();
    assert_eq!(msgs.len(), 100, "exactly one copy of each message");
    let texts: std::collections::HashSet<_> = msgs
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(texts.len(), 100);
    let ids: Vec<i64> = msgs.iter().map(|m| m["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
}

async fn shutdown_on(sig: &str) {
    let data = scratch("shutdown");
    let mut srv = Proc::start(&data, &[]);
    let a = srv.addrs;
    let token = register(a.http, "leaver").await;
    let mut ws = Ws::login(a.http, &token).await;
    ws.send(json!({"type":"join","room":"general"})).await;
    assert_eq!(ws.recv().await["type"], "joined");
    let mut tcp = Tcp::login(a.tcp, &token, "leaver").await;
    tcp.send("SAY general last-words goodbye").await;
    assert!(tcp.line().await.unwrap().starts_with("OK ack last-words "));

    // A live status feed must not hold the shutdown up.
    let mut feed = tokio::net::TcpStream::connect(a.status).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut feed, b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 64];
    let n = tokio::io::AsyncReadExt::read(&mut feed, &mut first)
        .await
        .unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 200"));

    let signalled = std::time::Instant::now();
    srv.signal(sig);
    assert_eq!(
        ws.close_code().await,
        Some(1001),
        "WebSocket closed with 1001 on {sig}"
    );
    loop {
        // The TCP client may still get the pushed MSG first.
        match tcp.line().await {
            Some(l) if l == "BYE" => break,
            Some(l) if l.starts_with("MSG ") => continue,
            other => panic!("expected BYE, got {other:?}"),
        }
    }
    assert_eq!(tcp.line().await, None);
    let code = srv.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0), "exit 0 on {sig}");
    eprintln!("exited {:?} after {sig}", signalled.elapsed());
    drop(feed);

    // What was acknowledged before the signal is there after a restart.
    let srv = Proc::start(&data, &[]);
    let r = http(
        srv.addrs.http,
        "GET",
        "/api/rooms/general/messages",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(r.json()["messages"][0]["text"], "goodbye");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_clients_and_exits_0() {
    shutdown_on("-TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_closes_clients_and_exits_0() {
    shutdown_on("-INT").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_drain_says_goodbye_and_health_says_draining() {
    let srv = InProc::start(config("drain")).await;
    let a = srv.addrs;
    let token = register(a.http, "drained").await;
    let mut ws = Ws::login(a.http, &token).await;
    let mut tcp = Tcp::login(a.tcp, &token, "drained").await;

    let r = http(
        a.status,
        "POST",
        "/admin/drain",
        Some("admin-secret"),
        Some(b""),
    )
    .await;
    assert_eq!(r.status, 202);
    assert_eq!(ws.close_code().await, Some(1001));
    assert_eq!(tcp.line().await.as_deref(), Some("BYE"));
    let (code, h) = health(a.status).await;
    assert_eq!((code, h["status"].as_str()), (503, Some("draining")));
    // Newcomers are refused; the status listener still answers.
    let mut t = Tcp::connect(a.tcp).await;
    assert!(t.line().await.unwrap().starts_with("BUSY "));
    let r = http(a.status, "GET", "/metrics", None, None).await;
    assert_eq!(r.status, 200);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_listener_serves_health_metrics_page_and_events() {
    let srv = InProc::start(config("status")).await;
    let a = srv.addrs;
    let (code, h) = health(a.status).await;
    assert_eq!(code, 200);
    assert_eq!(h["status"], "healthy");
    for snap in ["chat", "status"] {
        let s = &h["limiters"][snap];
        for key in [
            "capacity",
            "in_use",
            "waiting",
            "admitted_total",
            "rejected_total",
            "revoked_total",
            "reclaimed_total",
            "repaired_total",
            "oldest_lease_ms",
            "state",
        ] {
            assert!(!s[key].is_null(), "{snap}.{key} in {h}");
        }
    }
    assert_eq!(h["watchdog"]["alive"], true);
    assert!(h["watchdog"]["last_tick_ms"].is_u64());
    assert!(h["uptime_s"].is_u64());

    let r = http(a.status, "GET", "/metrics", None, None).await;
    assert_eq!(r.status, 200);
    let text = String::from_utf8(r.body).unwrap();
    assert!(
        text.contains(r#"admit_capacity{limiter="chat"} 200"#),
        "{text}"
    );
    assert!(text.contains("admit_in_use"));
    assert!(text.contains("chat_messages_total"));

    let r = http(a.status, "GET", "/status", None, None).await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));

    // The live feed pushes the health JSON as server-sent events.
    let mut s = tokio::net::TcpStream::connect(a.status).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut s, b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.windows(2).filter(|w| w == b"\n\n").count() < 3 {
        let n = tokio::time::timeout(DEADLINE, tokio::io::AsyncReadExt::read(&mut s, &mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("text/event-stream"), "{text}");
    assert!(text.contains("event: health"), "{text}");
    assert!(text.contains(r#""status":"healthy""#), "{text}");
    drop(s);
    srv.stop().await;
}
