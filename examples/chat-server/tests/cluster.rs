//! Cluster mode with real processes: nodes of the real binary on one
//! throw-away PostgreSQL and one throw-away Redis.

mod common;
mod services;

use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// A node: `--max-connections` is its own cap, `budget` the cluster's.
fn node(
    pg: &services::Postgres,
    redis: &services::Redis,
    name: &str,
    cap: u32,
    budget: u32,
) -> Proc {
    Proc::start(
        &scratch(name),
        &[
            "--database",
            &pg.url(),
            "--redis",
            &redis.url(),
            "--node-id",
            name,
            "--max-connections",
            &cap.to_string(),
            "--cluster-max-connections",
            &budget.to_string(),
        ],
    )
}

fn services() -> Option<(services::Postgres, services::Redis)> {
    let pg = services::Postgres::start()?;
    let redis = services::Redis::start()?;
    Some((pg, redis))
}

/// Waits until every node says it is in a cluster of `n` nodes.
async fn wait_cluster(nodes: &[&Proc], n: usize, within: Duration) {
    for p in nodes {
        wait_health(p.addrs.status, within, |_, h| {
            h["cluster"]["mode"] == "cluster"
                && h["cluster"]["nodes"].as_array().map(Vec::len) == Some(n)
        })
        .await;
    }
}

/// Reads `n` messages, skipping other frames; returns (id, text).
async fn messages(ws: &mut Ws, n: usize) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    while out.len() < n {
        let m = ws.recv_type("message").await;
        out.push((
            m["id"].as_i64().unwrap(),
            m["text"].as_str().unwrap().to_owned(),
        ));
    }
    out
}

/// Waits for an incident `pred` accepts in `GET /incidents`.
async fn wait_incident(
    status: std::net::SocketAddr,
    within: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        let r = http(status, "GET", "/incidents?limit=20", None, None).await;
        assert_eq!(r.status, 200);
        let list = r.json()["incidents"].as_array().unwrap().clone();
        if let Some(i) = list.into_iter().find(|i| pred(i)) {
            return i;
        }
        assert!(
            start.elapsed() < within,
            "no such incident within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn consecutive(ids: &[i64]) -> bool {
    ids.windows(2).all(|w| w[1] == w[0] + 1)
}

/// Sends `texts` (client id = text) and waits for every ack.
async fn send_all(ws: &mut Ws, texts: &[String]) -> Vec<i64> {
    send_seeing(ws, texts, &mut Vec::new()).await
}

/// [`send_all`], keeping the messages that arrive meanwhile.
async fn send_seeing(ws: &mut Ws, texts: &[String], seen: &mut Vec<(i64, String)>) -> Vec<i64> {
    for t in texts {
        ws.send(json!({"type":"send","room":"general","text":t,"client_id":t}))
            .await;
    }
    let mut ids = Vec::new();
    while ids.len() < texts.len() {
        let v = ws.recv().await;
        match v["type"].as_str() {
            Some("ack") => ids.push(v["id"].as_i64().unwrap()),
            Some("message") => seen.push((
                v["id"].as_i64().unwrap(),
                v["text"].as_str().unwrap().to_owned(),
            )),
            Some("error") => panic!("not stored: {v}"),
            _ => {}
        }
    }
    ids
}

/// Every message of `general`, oldest first, through `addr`'s HTTP API.
async fn history(addr: std::net::SocketAddr, token: &str) -> Vec<(i64, String)> {
    let mut out: Vec<(i64, String)> = Vec::new();
    let mut before = String::new();
    loop {
        let r = http(
            addr,
            "GET",
            &format!("/api/rooms/general/messages?limit=200{before}"),
            Some(token),
            None,
        )
        .await;
        assert_eq!(r.status, 200);
        let page: Vec<(i64, String)> = r.json()["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["id"].as_i64().unwrap(),
                    m["text"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let Some(first) = page.first() else {
            break;
        };
        before = format!("&before={}", first.0);
        let mut page = page;
        page.extend(out);
        out = page;
    }
    out
}

/// Opens WebSocket connections to `addrs` in turn for `for_`, keeping
/// those admitted; answers how many were admitted per address.
async fn flood(
    addrs: &[std::net::SocketAddr],
    for_: Duration,
    held: &mut Vec<WsStream>,
) -> Vec<u32> {
    let mut admitted = vec![0u32; addrs.len()];
    let start = Instant::now();
    while start.elapsed() < for_ {
        for (i, a) in addrs.iter().enumerate() {
            let c = tokio::time::timeout(
                Duration::from_secs(2),
                tokio_tungstenite::connect_async(format!("ws://{a}/ws")),
            )
            .await;
            if let Ok(Ok((ws, _))) = c {
                admitted[i] += 1;
                held.push(ws);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    admitted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_share_tokens_messages_order_and_the_cap() {
    let Some((pg, redis)) = services() else {
        return;
    };
    let a = node(&pg, &redis, "a", 20, 30);
    let b = node(&pg, &redis, "b", 20, 30);
    let mut c = node(&pg, &redis, "c", 20, 30);
    wait_cluster(&[&a, &b, &c], 3, Duration::from_secs(10)).await;
    // Every node's health and metrics show the whole cluster.
    let h = health(b.addrs.status).await.1;
    let mut names: Vec<&str> = h["cluster"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["a", "b", "c"], "{h}");
    assert_eq!(h["cluster"]["node"], "b");
    assert_eq!(h["cluster"]["redis"], "ok");
    let m = http(a.addrs.status, "GET", "/metrics", None, None).await;
    let m = String::from_utf8_lossy(&m.body);
    assert!(m.contains(r#"chat_cluster_node_in_use{node="c"}"#), "{m}");
    assert!(m.contains("admit_cluster_budget"), "{m}");

    // A token from A works on B and C.
    let alice = register(a.addrs.http, "alice").await;
    let bob = register(b.addrs.http, "bob").await;
    let carol = register(c.addrs.http, "carol").await;
    let mut alice_on_b = Ws::login(b.addrs.http, &alice).await;
    let mut alice_ws = Ws::login(a.addrs.http, &alice).await;
    let mut bob_ws = Ws::login(b.addrs.http, &bob).await;
    let mut carol_ws = Ws::login(c.addrs.http, &carol).await;
    for ws in [&mut alice_ws, &mut bob_ws, &mut carol_ws] {
        ws.send(json!({"type":"join","room":"general"})).await;
        ws.recv_type("joined").await;
    }

    // Sent on A: reaches B and C, in order.
    let texts: Vec<String> = (0..30).map(|i| format!("a{i}")).collect();
    let acked = send_all(&mut alice_ws, &texts).await;
    for ws in [&mut bob_ws, &mut carol_ws] {
        let got = messages(ws, 30).await;
        assert_eq!(got.iter().map(|m| m.0).collect::<Vec<_>>(), acked);
        assert_eq!(got.iter().map(|m| m.1.clone()).collect::<Vec<_>>(), texts);
    }
    assert!(consecutive(&acked), "{acked:?}");

    // Sent on A and B at the same time: C sees one gap-free sequence.
    let ta: Vec<String> = (0..40).map(|i| format!("x{i}")).collect();
    let tb: Vec<String> = (0..40).map(|i| format!("y{i}")).collect();
    let (ia, ib) = tokio::join!(send_all(&mut alice_ws, &ta), send_all(&mut bob_ws, &tb));
    let seen = messages(&mut carol_ws, 80).await;
    let ids: Vec<i64> = seen.iter().map(|m| m.0).collect();
    assert!(consecutive(&ids), "in order, no gap: {ids:?}");
    let by_id: HashMap<i64, &str> = seen.iter().map(|(i, t)| (*i, t.as_str())).collect();
    for (id, t) in ia.iter().zip(&ta).chain(ib.iter().zip(&tb)) {
        assert_eq!(by_id[id], t);
    }

    // Logout on A ends the same token's connection on B.
    let r = post_json(a.addrs.http, "/api/logout", Some(&alice), json!({})).await;
    assert!(r.status < 300, "logout: {}", r.status);
    tokio::time::timeout(Duration::from_secs(5), alice_on_b.close_code())
        .await
        .expect("the connection on B ends within 5 s");
    drop((alice_ws, bob_ws));

    // Flooding all three: never more than the cluster's 30.
    let mut held = Vec::new();
    let addrs = [a.addrs.http, b.addrs.http, c.addrs.http];
    let admitted = flood(&addrs, Duration::from_secs(3), &mut held).await;
    let total: u32 = admitted.iter().sum::<u32>() + 1; // + carol
    assert!(total <= 30, "cluster cap: {admitted:?}");
    assert!(total >= 24, "the budget is used: {admitted:?}");
    let h = health(a.addrs.status).await.1;
    assert!(h["cluster"]["in_use"].as_u64().unwrap() <= 30, "{h}");
    assert_eq!(h["cluster"]["capacity"], 30, "{h}");

    // SIGKILL C while carol sends on it: C's share is back within 3 s,
    // carol resends on A by client id, and nothing acked is lost or stored
    // twice.
    let sender = tokio::spawn(async move {
        let mut sent = 0u32;
        let mut acked = Vec::new();
        loop {
            let t = format!("k{sent}");
            let frame = json!({"type":"send","room":"general","text":t,"client_id":t});
            if carol_ws
                .ws
                .send(Message::Text(frame.to_string().into()))
                .await
                .is_err()
            {
                break;
            }
            sent += 1;
            let ack = loop {
                match tokio::time::timeout(Duration::from_secs(5), carol_ws.ws.next()).await {
                    Ok(Some(Ok(Message::Text(t)))) => {
                        let v: Value = serde_json::from_str(&t).unwrap();
                        if v["type"] == "ack" {
                            break Some(v["client_id"].as_str().unwrap().to_owned());
                        }
                    }
                    Ok(Some(Ok(_))) => {}
                    _ => break None,
                }
            };
            match ack {
                Some(cid) => acked.push(cid),
                None => break,
            }
        }
        (sent, acked)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.signal("-KILL");
    let killed = Instant::now();
    let _ = c.wait_exit(Duration::from_secs(5));
    wait_health(a.addrs.status, Duration::from_secs(4), |_, h| {
        h["cluster"]["nodes"].as_array().map(Vec::len) == Some(2)
    })
    .await;
    let back = killed.elapsed();
    eprintln!("figure: a SIGKILLed node's share was back after {back:?}");
    // The view is read from Redis every 0.5 s: the lease ended before.
    assert!(
        back < Duration::from_millis(3500),
        "share back after {back:?}"
    );
    let (sent, acked_k) = sender.await.unwrap();
    assert!(acked_k.len() > 5, "carol was sending: {}", acked_k.len());
    drop(held);
    let mut carol_a = Ws::login(a.addrs.http, &carol).await;
    let resend: Vec<String> = (0..sent).map(|i| format!("k{i}")).collect();
    send_all(&mut carol_a, &resend).await;
    let all = history(a.addrs.http, &carol).await;
    let ids: Vec<i64> = all.iter().map(|m| m.0).collect();
    assert!(consecutive(&ids) && ids[0] == 1, "{ids:?}");
    for t in &resend {
        let n = all.iter().filter(|m| &m.1 == t).count();
        assert_eq!(n, 1, "{t} stored {n} times");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_outage_keeps_nodes_serving_and_members_catch_up() {
    let Some((pg, mut redis)) = services() else {
        return;
    };
    let a = node(&pg, &redis, "a", 20, 30);
    let b = node(&pg, &redis, "b", 20, 30);
    wait_cluster(&[&a, &b], 2, Duration::from_secs(10)).await;
    let alice = register(a.addrs.http, "alice").await;
    let bob = register(b.addrs.http, "bob").await;
    let mut alice_ws = Ws::login(a.addrs.http, &alice).await;
    let mut bob_ws = Ws::login(b.addrs.http, &bob).await;
    for ws in [&mut alice_ws, &mut bob_ws] {
        ws.send(json!({"type":"join","room":"general"})).await;
        ws.recv_type("joined").await;
    }
    let first = send_all(&mut alice_ws, &["before".to_owned()]).await;
    assert_eq!(messages(&mut bob_ws, 1).await[0].0, first[0]);

    redis.stop();
    let down = Instant::now();
    let mut shares = Vec::new();
    for p in [&a, &b] {
        let h = wait_health(p.addrs.status, Duration::from_secs(5), |_, h| {
            h["cluster"]["mode"] == "degraded"
        })
        .await;
        assert_eq!(h["cause"], "cluster", "{h}");
        assert_eq!(h["cluster"]["redis"], "down", "{h}");
        shares.push(h["limiters"]["chat"]["capacity"].as_u64().unwrap());
    }
    assert!(
        shares.iter().sum::<u64>() <= 30,
        "within the budget: {shares:?}"
    );
    // Being cut off is an incident on each node, told in words, once it
    // has lasted its notice.
    for p in [&a, &b] {
        let i = wait_incident(p.addrs.status, Duration::from_secs(5), |i| {
            i["cause"] == "cluster" && i["ended"].is_null()
        })
        .await;
        assert_eq!(i["limiter"], "cluster", "{i}");
        let words = i["summary"].as_str().unwrap();
        assert!(
            words.contains("cut off from the rest of the cluster"),
            "{i}"
        );
    }
    // Both keep serving: sends are acked and local members get them.
    // (Gaps are filled from the database even now: a member on B sees
    // A's messages when B's own come after them.)
    let mut texts = Vec::new();
    let (mut seen_a, mut seen_b) = (Vec::new(), Vec::new());
    let mut i = 0;
    while down.elapsed() < Duration::from_secs(10) {
        let t = vec![format!("alice{i}")];
        send_seeing(&mut alice_ws, &t, &mut seen_a).await;
        texts.extend(t);
        let t = vec![format!("bob{i}")];
        send_seeing(&mut bob_ws, &t, &mut seen_b).await;
        texts.extend(t);
        i += 1;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert!(
        seen_a.iter().any(|m| m.1 == "alice0"),
        "local delivery on A"
    );
    assert!(seen_b.iter().any(|m| m.1 == "bob0"), "local delivery on B");
    // New connections are still admitted, within the node's share.
    let mut extra = Ws::login(b.addrs.http, &bob).await;
    // Never beyond it: a flood of B while cut off is admitted only up to
    // the share it had (its share cannot grow without Redis).
    let mut held = Vec::new();
    let admitted = flood(&[b.addrs.http], Duration::from_secs(1), &mut held).await[0];
    let h = health(b.addrs.status).await.1;
    let (in_use, share) = (
        h["limiters"]["chat"]["in_use"].as_u64().unwrap(),
        h["limiters"]["chat"]["capacity"].as_u64().unwrap(),
    );
    assert!(
        share <= shares[1] && in_use <= share,
        "B within its share of {}: {admitted} more admitted, {in_use} in use of {share}",
        shares[1]
    );
    drop(held);
    // A room made on A meanwhile: B hears of it only after Redis returns.
    let r = post_json(
        a.addrs.http,
        "/api/rooms",
        Some(&alice),
        json!({"name":"during","private":false}),
    )
    .await;
    assert_eq!(r.status, 201);

    redis.resume();
    let up = Instant::now();
    wait_cluster(&[&a, &b], 2, Duration::from_secs(5)).await;
    eprintln!("figure: rejoined {:?} after Redis returned", up.elapsed());
    assert!(
        up.elapsed() < Duration::from_secs(5),
        "rejoined in {:?}",
        up.elapsed()
    );
    for p in [&a, &b] {
        let i = wait_incident(p.addrs.status, Duration::from_secs(5), |i| {
            i["cause"] == "cluster" && !i["ended"].is_null()
        })
        .await;
        assert_eq!(i["repaired_by"], "rejoined", "{i}");
        assert!(i["duration_ms"].as_u64().unwrap() >= 9_000, "{i}");
    }
    extra.send(json!({"type":"join","room":"during"})).await;
    assert_eq!(
        extra.recv().await["type"],
        "joined",
        "B knows the room made during the outage"
    );
    // Every member has every message, in order and with no gap, once.
    for (ws, seen) in [(&mut alice_ws, &mut seen_a), (&mut bob_ws, &mut seen_b)] {
        // Alice's own "before" may have come after its ack.
        seen.retain(|m| m.0 > first[0]);
        let more = messages(ws, texts.len() - seen.len()).await;
        seen.extend(more);
        let ids: Vec<i64> = seen.iter().map(|m| m.0).collect();
        assert!(consecutive(&ids) && ids[0] == first[0] + 1, "{ids:?}");
        let mut got: Vec<String> = seen.iter().map(|m| m.1.clone()).collect();
        let mut want = texts.clone();
        got.sort();
        want.sort();
        assert_eq!(got, want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stops_hands_its_share_back_at_once() {
    let Some((pg, redis)) = services() else {
        return;
    };
    let a = node(&pg, &redis, "a", 20, 30);
    let mut b = node(&pg, &redis, "b", 20, 30);
    wait_cluster(&[&a, &b], 2, Duration::from_secs(10)).await;
    b.signal("-TERM");
    let stopped = Instant::now();
    assert_eq!(b.wait_exit(Duration::from_secs(10)), Some(0));
    // Gone from Redis at the exit, not a lease later; the view on A is
    // read every 0.5 s.
    wait_health(a.addrs.status, Duration::from_secs(2), |_, h| {
        h["cluster"]["nodes"].as_array().map(Vec::len) == Some(1)
    })
    .await;
    eprintln!(
        "figure: a stopped node's share was back after {:?}",
        stopped.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_answers_sends_with_errors_and_recovers() {
    let Some(mut pg) = services::Postgres::start() else {
        return;
    };
    let a = Proc::start(&scratch("pg-outage"), &["--database", &pg.url()]);
    // Without --redis a node is a cluster of one.
    let h = health(a.addrs.status).await.1;
    assert_eq!(h["cluster"]["mode"], "single", "{h}");
    let alice = register(a.addrs.http, "alice").await;
    let mut ws = Ws::login(a.addrs.http, &alice).await;
    ws.send(json!({"type":"join","room":"general"})).await;
    ws.recv_type("joined").await;
    send_all(&mut ws, &["before".to_owned()]).await;

    pg.stop();
    ws.send(json!({"type":"send","room":"general","text":"lost","client_id":"lost"}))
        .await;
    loop {
        let v = ws.recv().await;
        match v["type"].as_str() {
            Some("error") => break,
            Some("ack") => panic!("acked while the database is down: {v}"),
            _ => {}
        }
    }
    let h = wait_health(a.addrs.status, Duration::from_secs(5), |_, h| {
        h["store"]["ok"] == false
    })
    .await;
    assert_eq!(
        (h["status"].as_str(), h["cause"].as_str()),
        (Some("degraded"), Some("store"))
    );

    pg.resume();
    wait_health(a.addrs.status, Duration::from_secs(10), |code, h| {
        code == 200 && h["store"]["ok"] == true
    })
    .await;
    let ids = send_all(&mut ws, &["after".to_owned()]).await;
    assert_eq!(ids, vec![2], "the refused message took no id");
}

/// Delivery latency to every member, each room's members spread over the
/// nodes, against one node at the same load. A measurement, not a check:
/// `cargo test -p chat-server --release --test cluster -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore]
async fn delivery_latency_across_nodes() {
    let Some((pg, redis)) = services() else {
        return;
    };
    let nodes = [
        node(&pg, &redis, "a", 500, 1500),
        node(&pg, &redis, "b", 500, 1500),
        node(&pg, &redis, "c", 500, 1500),
    ];
    wait_cluster(
        &nodes.iter().collect::<Vec<_>>(),
        3,
        Duration::from_secs(10),
    )
    .await;
    let spread: Vec<_> = nodes.iter().map(|n| n.addrs.http).collect();
    let cross = latency(&spread, "spread").await;
    let single = Proc::start(&scratch("latency-single"), &[]);
    let alone = latency(&[single.addrs.http], "single").await;
    for (what, l) in [("3 nodes", cross), ("1 node", alone)] {
        eprintln!(
            "figure: {what}: {} deliveries, p50 {:?}, p99 {:?}, max {:?}",
            l.len(),
            pct(&l, 0.5),
            pct(&l, 0.99),
            l.last().unwrap()
        );
    }
}

const ROOMS: usize = 10;
const MEMBERS: usize = 9;
const PER_ROOM_PER_S: u64 = 10;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

/// Rooms of [`MEMBERS`] connections spread round-robin over `addrs`; one
/// sender per room sends [`PER_ROOM_PER_S`] messages a second for 5 s.
/// Answers every member's delivery latency, sorted.
async fn latency(addrs: &[std::net::SocketAddr], tag: &str) -> Vec<Duration> {
    let token = register(addrs[0], &format!("lat-{tag}")).await;
    let base = Instant::now();
    let mut readers = Vec::new();
    let mut senders = Vec::new();
    let mut idle_senders = Vec::new();
    for r in 0..ROOMS {
        let room = format!("{tag}-{r}");
        let made = post_json(
            addrs[0],
            "/api/rooms",
            Some(&token),
            json!({"name":room,"private":false}),
        )
        .await;
        assert_eq!(made.status, 201);
        for m in 0..MEMBERS {
            let addr = addrs[(r + m) % addrs.len()];
            // A room made on one node is known to the others once its
            // note arrives.
            let mut ws = loop {
                let mut ws = Ws::login(addr, &token).await;
                ws.send(json!({"type":"join","room":room})).await;
                if ws.recv().await["type"] == "joined" {
                    break ws;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            if m == 0 {
                idle_senders.push((room.clone(), ws));
            } else {
                readers.push(tokio::spawn(async move {
                    let mut got = Vec::new();
                    while got.len() < (5 * PER_ROOM_PER_S) as usize {
                        let v = ws.recv_type("message").await;
                        let sent: u64 = v["text"].as_str().unwrap().parse().unwrap();
                        got.push(base.elapsed() - Duration::from_micros(sent));
                    }
                    got
                }));
            }
        }
    }
    // Every member is in before anyone sends.
    for (room, mut ws) in idle_senders {
        senders.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1000 / PER_ROOM_PER_S));
            // Acks and its own messages are read and dropped, so the
            // sender is never lagged.
            let mut i = 0;
            while i < 5 * PER_ROOM_PER_S {
                tokio::select! {
                    _ = tick.tick() => {
                        let sent = base.elapsed().as_micros().to_string();
                        ws.send(json!({"type":"send","room":room,"text":sent,"client_id":format!("{i}")}))
                            .await;
                        i += 1;
                    }
                    _ = ws.ws.next() => {}
                }
            }
            ws
        }));
    }
    let mut all = Vec::new();
    for r in readers {
        all.extend(r.await.unwrap());
    }
    for s in senders {
        drop(s.await.unwrap());
    }
    all.sort_unstable();
    all
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// An authenticated, idle WebSocket from 127.0.0.`src`, with small buffers
/// on this side (the test holds thousands). A node's share grows with
/// demand: turned away (503) while it grows, the client tries again.
async fn idle_ws(http: std::net::SocketAddr, src: u8, token: &str) -> WsStream {
    use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
    let mut busy = 0;
    let mut ws = loop {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind((std::net::Ipv4Addr::new(127, 0, 0, src), 0).into())
            .unwrap();
        let stream = sock.connect(http).await.unwrap();
        let config = WebSocketConfig::default()
            .read_buffer_size(512)
            .write_buffer_size(0);
        match tokio_tungstenite::client_async_with_config(
            format!("ws://{http}/ws"),
            tokio_tungstenite::MaybeTlsStream::Plain(stream),
            Some(config),
        )
        .await
        {
            Ok((ws, _)) => break ws,
            Err(tokio_tungstenite::tungstenite::Error::Http(r))
                if r.status() == 503 && busy < 100 =>
            {
                busy += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("connect: {e}"),
        }
    };
    let auth = json!({"type":"auth","token":token}).to_string();
    ws.send(Message::Text(auth.into())).await.unwrap();
    match ws.next().await {
        Some(Ok(Message::Text(t))) => assert!(t.contains("ready"), "{t}"),
        other => panic!("no ready: {other:?}"),
    }
    ws
}

/// `n` idle connections to `http`, 200 at a time, over 127.0.0.2–51.
async fn idle_many(http: std::net::SocketAddr, token: &str, n: usize) -> Vec<WsStream> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let batch: Vec<_> = (out.len()..n.min(out.len() + 200))
            .map(|i| {
                let token = token.to_owned();
                tokio::spawn(async move { idle_ws(http, 2 + (i % 50) as u8, &token).await })
            })
            .collect();
        for t in batch {
            out.push(t.await.unwrap());
        }
    }
    out
}

/// Server memory per idle authenticated WebSocket in cluster mode: 3 nodes,
/// `CHAT_MEASURE_CONNS` connections (default 9,000) spread evenly, each
/// node's RSS growth divided by its connections. A measurement, not a
/// check: `cargo test -p chat-server --release --test cluster --
/// --ignored --nocapture memory`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn memory_per_idle_websocket_in_cluster_mode() {
    let Some((pg, redis)) = services() else {
        return;
    };
    let n: usize = std::env::var("CHAT_MEASURE_CONNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(9_000);
    let per_node = n / 3;
    let cap = (per_node + 500) as u32;
    let nodes = [
        node(&pg, &redis, "a", cap, 3 * cap),
        node(&pg, &redis, "b", cap, 3 * cap),
        node(&pg, &redis, "c", cap, 3 * cap),
    ];
    wait_cluster(
        &nodes.iter().collect::<Vec<_>>(),
        3,
        Duration::from_secs(10),
    )
    .await;
    let token = register(nodes[0].addrs.http, "idler").await;
    // A round of connections first, so the baseline is a node that has
    // served some (allocator and runtime warmed up).
    for p in &nodes {
        drop(idle_many(p.addrs.http, &token, 300).await);
    }
    for p in &nodes {
        wait_health(p.addrs.status, Duration::from_secs(30), |_, h| {
            h["limiters"]["chat"]["in_use"] == 0
        })
        .await;
    }
    let before: Vec<u64> = nodes.iter().map(|p| rss_kib(p.child.id())).collect();
    let mut held = Vec::new();
    for p in &nodes {
        held.push(idle_many(p.addrs.http, &token, per_node).await);
    }
    for p in &nodes {
        wait_health(p.addrs.status, Duration::from_secs(30), |_, h| {
            h["limiters"]["chat"]["in_use"].as_u64() == Some(per_node as u64)
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (p, b) in nodes.iter().zip(&before) {
        let after = rss_kib(p.child.id());
        let per = after.saturating_sub(*b) as f64 / per_node as f64;
        eprintln!(
            "figure: cluster mode, {per_node} idle WebSockets on one node: RSS {b} -> {after} KiB, {per:.2} KiB per connection"
        );
    }
    drop(held);
}
