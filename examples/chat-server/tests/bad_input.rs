//! Bad input and abuse: each case gets the contract's error, and the server
//! keeps serving everyone else (a bystander keeps chatting throughout).

mod common;
use common::*;
use serde_json::json;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

async fn bystander(srv: &InProc) -> Ws {
    let t = register(srv.addrs.http, "bystander").await;
    let mut ws = Ws::login(srv.addrs.http, &t).await;
    ws.send(json!({"type":"join","room":"general"})).await;
    assert_eq!(ws.recv().await["type"], "joined");
    ws
}

async fn still_serving(ws: &mut Ws, n: u32) {
    let cid = format!("still-{n}");
    ws.send(json!({"type":"send","room":"general","text":"still here","client_id":cid}))
        .await;
    assert_eq!(ws.recv_type("ack").await["client_id"], cid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_abuse() {
    let srv = InProc::start(config("bad-ws")).await;
    let a = srv.addrs;
    let mut by = bystander(&srv).await;
    let tok = register(a.http, "mallory").await;

    // Malformed JSON, unknown type, out-of-range fields, binary frames: a
    // bad_request each, and the connection stays.
    let mut ws = Ws::login(a.http, &tok).await;
    for bad in [
        Message::Text("{not json".into()),
        Message::Text(r#"{"type":"launch"}"#.into()),
        Message::Text(r#"{"type":"send","room":"general","text":"","client_id":"x"}"#.into()),
        Message::Binary(vec![0xff, 0x00].into()),
    ] {
        ws.send_raw(bad).await;
        let e = ws.recv().await;
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str()),
            (Some("error"), Some("bad_request")),
            "{e}"
        );
    }
    ws.send(json!({"type":"ping"})).await;
    assert_eq!(ws.recv().await, json!({"type":"pong"}));
    // Five in a row: closed with 4400.
    for _ in 0..5 {
        ws.send_raw(Message::Text("[]".into())).await;
    }
    assert_eq!(ws.close_code().await, Some(4400));
    still_serving(&mut by, 1).await;

    // A frame over 16 KiB: closed with 1009 — just over the limit, and far over.
    for size in [16 * 1024 + 1, 200 * 1024] {
        let mut ws = Ws::login(a.http, &tok).await;
        let text = "x".repeat(size);
        let _ = futures::SinkExt::send(&mut ws.ws, Message::Text(text.into())).await;
        assert_eq!(ws.close_code().await, Some(1009), "frame of {size} bytes");
    }
    still_serving(&mut by, 2).await;

    // The first frame must be auth: anything else, or a wrong token, is 4401.
    let mut ws = Ws::connect(a.http).await;
    ws.send(json!({"type":"ping"})).await;
    assert_eq!(ws.close_code().await, Some(4401));
    let mut ws = Ws::connect(a.http).await;
    ws.send(json!({"type":"auth","token":"not-a-token"})).await;
    let e = ws.recv().await;
    assert_eq!(e["code"], "unauthorized");
    assert_eq!(ws.close_code().await, Some(4401));
    still_serving(&mut by, 3).await;

    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_auth_timeout() {
    let srv = InProc::start(config("bad-ws-timeout")).await;
    let mut ws = Ws::connect(srv.addrs.http).await;
    let start = std::time::Instant::now();
    // Say nothing: the server closes with 4401 after 10 s.
    assert_eq!(ws.close_code().await, Some(4401));
    assert!(start.elapsed() >= Duration::from_secs(9));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_tokens_are_refused() {
    // Tokens that expire the moment they are issued.
    let srv = InProc::start(chat_server::Config {
        token_ttl: Duration::ZERO,
        ..config("expired")
    })
    .await;
    let a = srv.addrs;
    let tok = register(a.http, "late").await;
    let r = http(a.http, "GET", "/api/rooms", Some(&tok), None).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "unauthorized");
    let mut t = Tcp::hello(a.tcp).await;
    t.send(&format!("AUTH {tok}")).await;
    assert!(t.line().await.unwrap().starts_with("ERR unauthorized"));
    let mut ws = Ws::connect(a.http).await;
    ws.send(json!({"type":"auth","token":tok})).await;
    assert_eq!(ws.recv().await["code"], "unauthorized");
    assert_eq!(ws.close_code().await, Some(4401));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_abuse() {
    let srv = InProc::start(config("bad-tcp")).await;
    let a = srv.addrs;
    let mut by = bystander(&srv).await;
    let tok = register(a.http, "mallory").await;
    let mut t = Tcp::hello(a.tcp).await;

    // Commands other than AUTH, PING and QUIT before AUTH.
    for cmd in [
        "JOIN general",
        "SAY general c1 hi",
        "HISTORY general",
        "LEAVE general",
    ] {
        t.send(cmd).await;
        assert!(
            t.line().await.unwrap().starts_with("ERR unauthorized "),
            "{cmd}"
        );
    }
    t.send("PING").await;
    assert_eq!(t.line().await.unwrap(), "PONG");
    // A wrong token.
    t.send("AUTH 0123456789abcdef").await;
    assert!(t.line().await.unwrap().starts_with("ERR unauthorized "));
    t.send(&format!("AUTH {tok}")).await;
    assert_eq!(t.line().await.unwrap(), "OK ready mallory");

    // Over-long line: too_long, and the connection carries on.
    t.send_bytes(&vec![b'A'; 20_000]).await;
    t.send_bytes(b"\n").await;
    assert!(t.line().await.unwrap().starts_with("ERR too_long "));
    // Non-UTF-8.
    t.send_bytes(b"SAY general c1 \xff\xfe\n").await;
    assert!(t.line().await.unwrap().starts_with("ERR bad_request "));
    // Unknown commands, missing arguments, bad room names, limits.
    for cmd in [
        "DANCE",
        "JOIN",
        "JOIN Bad!Room",
        "SAY general",
        "HISTORY general 999",
        "",
    ] {
        t.send(cmd).await;
        assert!(
            t.line().await.unwrap().starts_with("ERR bad_request "),
            "{cmd:?}"
        );
    }
    // Text too long for a message (but within a line).
    t.send(&format!("SAY general c2 {}", "y".repeat(4050)))
        .await;
    assert!(t.line().await.unwrap().starts_with("ERR "));
    t.send("PING").await;
    assert_eq!(t.line().await.unwrap(), "PONG");
    still_serving(&mut by, 1).await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_abuse() {
    let srv = InProc::start(config("bad-http")).await;
    let a = srv.addrs;
    let mut by = bystander(&srv).await;
    let tok = register(a.http, "mallory").await;

    // Malformed JSON and fields out of range: 400 with the error body.
    for body in [
        &b"{nope"[..],
        br#"{"name":"x"}"#,
        br#"{"name":"has space","password":"long enough"}"#,
        br#"{"name":"ok","password":"short"}"#,
        br#"{"name":"ok","password":12345678}"#,
    ] {
        let r = http(a.http, "POST", "/api/register", None, Some(body)).await;
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(body));
        assert_eq!(r.json()["error"], "bad_request");
        assert!(r.json()["message"].is_string());
    }
    let r = http(a.http, "POST", "/api/login", None, Some(b"{nope")).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "bad_request");
    let r = post_json(
        a.http,
        "/api/rooms",
        Some(&tok),
        json!({"name":"UPPER","private":false}),
    )
    .await;
    assert_eq!(r.status, 400);
    let r = http(
        a.http,
        "GET",
        "/api/rooms/general/messages?limit=500",
        Some(&tok),
        None,
    )
    .await;
    assert_eq!(r.status, 400);
    let r = http(
        a.http,
        "GET",
        "/api/rooms/general/messages?before=abc",
        Some(&tok),
        None,
    )
    .await;
    assert_eq!(r.status, 400);

    // A body over 16 KiB: 413.
    let big = format!(r#"{{"name":"big","password":"{}"}}"#, "p".repeat(17 * 1024));
    let r = http(a.http, "POST", "/api/register", None, Some(big.as_bytes())).await;
    assert_eq!(r.status, 413);

    // Missing or bad token: 401 unauthorized.
    for t in [None, Some("garbage")] {
        let r = http(a.http, "GET", "/api/rooms", t, None).await;
        assert_eq!(r.status, 401);
        assert_eq!(r.json()["error"], "unauthorized");
    }

    // Admin without (or with a wrong) token: 401.
    for t in [None, Some("wrong")] {
        let r = http(a.status, "POST", "/admin/drain", t, Some(b"")).await;
        assert_eq!(r.status, 401);
        let r = post_json(a.status, "/admin/capacity", t, json!({"capacity":5})).await;
        assert_eq!(r.status, 401);
    }
    // Fault injection without the flag: 404 even with the token.
    let r = post_json(
        a.status,
        "/admin/faults",
        Some("admin-secret"),
        json!({"kind":"leak","permits":1}),
    )
    .await;
    assert_eq!(r.status, 404);
    // Admin with the token works.
    let r = post_json(
        a.status,
        "/admin/revoke",
        Some("admin-secret"),
        json!({"idle_ms": 3_600_000}),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"revoked": 0}));
    let r = post_json(
        a.status,
        "/admin/capacity",
        Some("admin-secret"),
        json!({"capacity":150}),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["capacity"], 150);
    let r = post_json(
        a.status,
        "/admin/capacity",
        Some("admin-secret"),
        json!({"capacity":"many"}),
    )
    .await;
    assert_eq!(r.status, 400);

    // Garbage that is not HTTP at all does not hurt anyone.
    let mut s = tokio::net::TcpStream::connect(a.http).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut s, b"\x00\x01\x02 GARBAGE\r\n\r\n")
        .await
        .unwrap();
    drop(s);

    still_serving(&mut by, 1).await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_disabled_without_token() {
    let srv = InProc::start(chat_server::Config {
        admin_token: None,
        ..config("no-admin")
    })
    .await;
    for path in [
        "/admin/drain",
        "/admin/capacity",
        "/admin/revoke",
        "/admin/faults",
    ] {
        let r = http(
            srv.addrs.status,
            "POST",
            path,
            Some("anything"),
            Some(b"{}"),
        )
        .await;
        assert_eq!(r.status, 404, "{path}");
    }
    srv.stop().await;
}
