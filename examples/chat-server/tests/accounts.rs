//! Accounts and tokens, hardened: names unique whatever their case,
//! failed-login limits checked before any hashing, password hashing
//! admitted by its own limiter, logout that reaches live connections, and
//! expired tokens deleted.

mod common;
use common::*;
use serde_json::json;
use std::net::IpAddr;
use std::time::{Duration, Instant};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_one_name_whatever_their_case() {
    let srv = InProc::start(config("case")).await;
    let a = srv.addrs;
    register(a.http, "Alice").await;
    for other in ["alice", "ALICE", "aLiCe"] {
        let r = post_json(
            a.http,
            "/api/register",
            None,
            json!({"name": other, "password": "another password"}),
        )
        .await;
        assert_eq!(r.status, 409, "{other}");
        assert_eq!(r.json()["error"], "name_taken");
    }
    // Login takes any case; the name keeps the case it was registered with.
    let r = login(a.http, "ALICE", "correct horse").await;
    assert_eq!(r.status, 200);
    let token = r.json()["token"].as_str().unwrap().to_owned();
    let mut ws = Ws::connect(a.http).await;
    ws.send(json!({"type":"auth","token":token})).await;
    assert_eq!(ws.recv().await, json!({"type":"ready","user":"Alice"}));
    // Members are found whatever the case too.
    let owner = register(a.http, "owner").await;
    let r = post_json(
        a.http,
        "/api/rooms",
        Some(&owner),
        json!({"name":"club","private":true}),
    )
    .await;
    assert_eq!(r.status, 201);
    let r = post_json(
        a.http,
        "/api/rooms/club/members",
        Some(&owner),
        json!({"user":"aLICE"}),
    )
    .await;
    assert_eq!(r.status, 204);
    ws.send(json!({"type":"join","room":"club"})).await;
    assert_eq!(ws.recv().await, json!({"type":"joined","room":"club"}));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_limited_per_account_and_per_address() {
    let srv = InProc::start(config("throttle")).await;
    let a = srv.addrs;
    register(a.http, "victim").await;

    // Ten failures for one account (from one address) ...
    let from = ip("127.0.0.21");
    let attempt = |password: &'static str, src: IpAddr, name: &'static str| async move {
        post_json_from(
            src,
            a.http,
            "/api/login",
            json!({"name": name, "password": password}),
        )
        .await
    };
    for _ in 0..10 {
        assert_eq!(attempt("wrong password", from, "victim").await.status, 401);
    }
    // ... and the eleventh is refused before any hashing, even with the
    // right password, from any address and in any case.
    let hashed_before = hashing_admitted(a.status).await;
    for (src, name) in [(from, "victim"), (ip("127.0.0.22"), "VICTIM")] {
        let r = attempt("correct horse", src, name).await;
        assert_eq!(r.status, 429, "{name}");
        assert_eq!(r.json()["error"], "rate_limited");
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
    }
    assert_eq!(
        hashing_admitted(a.status).await,
        hashed_before,
        "no hash was run"
    );
    // Another account is not affected.
    register(a.http, "bystander").await;
    assert_eq!(
        attempt("correct horse", from, "bystander").await.status,
        200
    );

    // Thirty failures from one address, each for another account ...
    let from = ip("127.0.0.23");
    let names: Vec<&'static str> = (0..31)
        .map(|i| &*Box::leak(format!("nobody{i}").into_boxed_str()))
        .collect();
    for name in &names[..30] {
        assert_eq!(
            attempt("wrong password", from, name).await.status,
            401,
            "{name}"
        );
    }
    // ... and that address is refused, for any account; others are not.
    let r = attempt("correct horse", from, "bystander").await;
    assert_eq!(r.status, 429);
    assert!(r.header("retry-after").is_some());
    assert_eq!(
        attempt("correct horse", ip("127.0.0.24"), "bystander")
            .await
            .status,
        200
    );
    srv.stop().await;
}

async fn hashing_admitted(status: std::net::SocketAddr) -> u64 {
    let (_, h) = health(status).await;
    h["limiters"]["hashing"]["admitted_total"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_hashing_is_admitted_work() {
    // One hash at a time (a queue of four) and a hash slow enough to pile
    // up behind: a burst of sign-ups must be refused `busy`, never run at
    // once.
    let srv = InProc::start(chat_server::Config {
        max_hashes: 1,
        argon2_m_cost: 16 * 1024,
        ..config("hashing")
    })
    .await;
    let a = srv.addrs;
    let burst: Vec<_> = (0..24)
        .map(|i| {
            tokio::spawn(async move {
                post_json(
                    a.http,
                    "/api/register",
                    None,
                    json!({"name": format!("hasher{i}"), "password":"correct horse"}),
                )
                .await
            })
        })
        .collect();
    let mut ok = 0;
    let mut busy = 0;
    for r in burst {
        let r = r.await.unwrap();
        match r.status {
            201 => ok += 1,
            503 => {
                assert_eq!(r.json()["error"], "busy");
                assert!(r.header("retry-after").is_some());
                busy += 1;
            }
            other => panic!("unexpected {other}: {:?}", r.json()),
        }
    }
    assert!(ok >= 1 && busy >= 1, "ok {ok}, busy {busy}");
    let (_, h) = health(a.status).await;
    let hashing = &h["limiters"]["hashing"];
    assert_eq!(hashing["capacity"], 1);
    assert!(
        hashing["rejected_total"]
            .as_object()
            .unwrap()
            .values()
            .any(|v| v.as_u64() > Some(0)),
        "{hashing}"
    );
    srv.stop().await;
}

/// The contract's figure, on the real binary with the real argon2id cost
/// (19 MiB a hash): 100 concurrent logins keep the process under 400 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_logins_keep_memory_bounded() {
    let dir = scratch("login-rss");
    let srv = Proc::start(&dir, &[]);
    let a = srv.addrs;
    // A hundred accounts, so that no failed-login limit stops a login
    // before its hash: this is about the hashing limiter alone.
    for i in 0..100 {
        let r = post_json(
            a.http,
            "/api/register",
            None,
            json!({"name": format!("many{i}"),"password":"correct horse"}),
        )
        .await;
        assert_eq!(r.status, 201);
    }
    let logins: Vec<_> = (0..100)
        .map(|i| {
            tokio::spawn(async move {
                // Spread over addresses, as 100 real clients would be, and
                // wrong passwords, as an attacker's would be.
                let src = ip(&format!("127.0.2.{}", i + 1));
                let body =
                    json!({"name": format!("many{i}"), "password": format!("guess number {i}")});
                post_json_from(src, a.http, "/api/login", body).await.status
            })
        })
        .collect();
    for l in logins {
        let status = l.await.unwrap();
        assert!([401, 503].contains(&status), "{status}");
    }
    let peak_kib = peak_rss_kib(srv.child.id());
    assert!(peak_kib <= 400 * 1024, "peak RSS {peak_kib} KiB");
}

/// The process's peak resident set (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_ends_the_token_everywhere() {
    let srv = InProc::start(config("logout")).await;
    let a = srv.addrs;
    let token = register(a.http, "leaver").await;
    let other = login(a.http, "leaver", "correct horse").await.json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut ws = Ws::login(a.http, &token).await;
    let mut tcp = Tcp::login(a.tcp, &token, "leaver").await;
    let mut ws_other = Ws::login(a.http, &other).await;

    let r = http(a.http, "POST", "/api/logout", Some(&token), None).await;
    assert_eq!(r.status, 204);
    let started = Instant::now();
    assert_eq!(ws.close_code().await, Some(4401));
    assert!(tcp.line().await.unwrap().starts_with("ERR unauthorized"));
    assert_eq!(tcp.line().await, None, "closed after the error");
    assert!(started.elapsed() < Duration::from_secs(2));

    // The token works nowhere any more.
    let r = http(a.http, "GET", "/api/rooms", Some(&token), None).await;
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (401, Some("unauthorized"))
    );
    let mut t = Tcp::hello(a.tcp).await;
    t.send(&format!("AUTH {token}")).await;
    assert!(t.line().await.unwrap().starts_with("ERR unauthorized"));
    let r = http(a.http, "POST", "/api/logout", Some(&token), None).await;
    assert_eq!(r.status, 401);
    // The user's other token is untouched.
    ws_other.send(json!({"type":"ping"})).await;
    assert_eq!(ws_other.recv().await, json!({"type":"pong"}));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_tokens_are_deleted() {
    let cfg = chat_server::Config {
        // Expiry is kept in whole seconds: a 2 s token lives 1 to 2 s.
        token_ttl: Duration::from_secs(2),
        token_purge_every: Duration::from_millis(100),
        ..config("expiry")
    };
    let db = cfg.data.join("chat.db");
    let srv = InProc::start(cfg).await;
    let a = srv.addrs;
    let token = register(a.http, "brief").await;
    assert_eq!(token_rows(&db), 1);
    let start = Instant::now();
    while token_rows(&db) > 0 {
        assert!(start.elapsed() < DEADLINE, "expired token still stored");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "deleted before it expired"
    );
    let r = http(a.http, "GET", "/api/rooms", Some(&token), None).await;
    assert_eq!(r.status, 401);
    srv.stop().await;
}

fn token_rows(db: &std::path::Path) -> i64 {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.query_row("SELECT COUNT(*) FROM tokens", [], |r| r.get(0))
        .unwrap()
}
