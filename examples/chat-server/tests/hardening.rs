//! The v2 hardening of the HTTP API and both chat protocols: content types,
//! security headers and JSON errors everywhere, room quota and paging,
//! `client_id` per room, one text limit, WebSocket close codes for protocol
//! violations, deadlines for authentication and request bodies, and
//! HTTP/1.1 only.

mod common;
use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_bodies_need_their_content_type() {
    let srv = InProc::start(config("ctype")).await;
    let a = srv.addrs;
    for ctype in ["text/plain", "application/x-www-form-urlencoded", ""] {
        let body = r#"{"name":"csrf","password":"correct horse"}"#;
        let mut req = format!(
            "POST /api/register HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        if !ctype.is_empty() {
            req.push_str(&format!("Content-Type: {ctype}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        let r =
            parse_response(&raw_from("127.0.0.1".parse().unwrap(), a.http, req.as_bytes()).await);
        assert_eq!(r.status, 415, "{ctype:?}");
        assert_eq!(r.json()["error"], "unsupported_media_type");
    }
    // Nothing was registered: the name is still free.
    register(a.http, "csrf").await;
    // A charset parameter is fine.
    let body = r#"{"name":"csrf","password":"correct horse"}"#;
    let req = format!("POST /api/login HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    let r = parse_response(&raw_from("127.0.0.1".parse().unwrap(), a.http, req.as_bytes()).await);
    assert_eq!(r.status, 200);
    // Admin bodies too.
    let req = "POST /admin/capacity HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer admin-secret\r\nContent-Type: text/plain\r\nContent-Length: 16\r\n\r\n{\"capacity\":10}\n";
    let r = parse_response(&raw_from("127.0.0.1".parse().unwrap(), a.status, req.as_bytes()).await);
    assert_eq!(r.status, 415);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_are_locked_down_and_every_error_is_json() {
    let srv = InProc::start(config("headers")).await;
    let a = srv.addrs;
    for (addr, path) in [(a.http, "/"), (a.status, "/status")] {
        let r = http(addr, "GET", path, None, None).await;
        assert_eq!(r.status, 200);
        let csp = r.header("content-security-policy").expect("CSP");
        assert!(csp.contains("default-src 'self'"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
        // No inline script or style: the policy would block it.
        let page = String::from_utf8_lossy(&r.body);
        assert!(
            !page.contains("<script>") && !page.contains("<style>") && !page.contains("style="),
            "{path}"
        );
    }
    for asset in ["/assets/index.js", "/assets/index.css"] {
        assert_eq!(
            http(a.http, "GET", asset, None, None).await.status,
            200,
            "{asset}"
        );
    }
    for asset in ["/status.js", "/status.css"] {
        assert_eq!(
            http(a.status, "GET", asset, None, None).await.status,
            200,
            "{asset}"
        );
    }
    let token = register(a.http, "errors").await;
    for (addr, method, path, status) in [
        (a.http, "GET", "/nope", 404),
        (a.http, "DELETE", "/api/rooms", 405),
        (a.http, "GET", "/api/register", 405),
        (a.http, "GET", "/api/rooms?limit=abc", 400),
        (a.status, "GET", "/nope", 404),
        (a.status, "PUT", "/health", 405),
        (a.status, "GET", "/admin/drain", 405),
    ] {
        let r = http(addr, method, path, Some(&token), None).await;
        assert_eq!(r.status, status, "{method} {path}");
        assert!(
            r.header("content-type")
                .unwrap()
                .starts_with("application/json"),
            "{method} {path}"
        );
        let body = r.json();
        assert!(
            body["error"].is_string() && body["message"].is_string(),
            "{method} {path}: {body}"
        );
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_quota_and_paging() {
    let srv = InProc::start(config("rooms")).await;
    let a = srv.addrs;
    let token = register(a.http, "builder").await;
    for i in 0..100 {
        let r = post_json(
            a.http,
            "/api/rooms",
            Some(&token),
            json!({"name": format!("r{i:03}")}),
        )
        .await;
        assert_eq!(r.status, 201, "room {i}");
    }
    let r = post_json(
        a.http,
        "/api/rooms",
        Some(&token),
        json!({"name": "one-too-many"}),
    )
    .await;
    assert_eq!((r.status, r.json()["error"].as_str()), (403, Some("quota")));
    // Someone else still may.
    let other = register(a.http, "other").await;
    let r = post_json(
        a.http,
        "/api/rooms",
        Some(&other),
        json!({"name": "theirs"}),
    )
    .await;
    assert_eq!(r.status, 201);

    // 102 rooms (general, r000..r099, theirs), 100 to a page by default.
    let page = |q: &'static str| {
        let token = token.clone();
        async move {
            let r = http(a.http, "GET", &format!("/api/rooms{q}"), Some(&token), None).await;
            assert_eq!(r.status, 200, "{q}");
            r.json()
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["name"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    let first = page("").await;
    assert_eq!(first.len(), 100);
    assert_eq!(first[0], "general");
    let mut sorted = first.clone();
    sorted.sort();
    assert_eq!(first, sorted, "by name");
    let rest = page("?after=r098").await;
    assert_eq!(rest, ["r099", "theirs"]);
    assert_eq!(page("?limit=2&after=general").await, ["r000", "r001"]);
    assert_eq!(page("?limit=500").await.len(), 102);
    for bad in ["?limit=0", "?limit=501", "?limit=-1"] {
        let r = http(
            a.http,
            "GET",
            &format!("/api/rooms{bad}"),
            Some(&token),
            None,
        )
        .await;
        assert_eq!(
            (r.status, r.json()["error"].as_str()),
            (400, Some("bad_request")),
            "{bad}"
        );
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ids_are_per_room() {
    let srv = InProc::start(config("client-id")).await;
    let a = srv.addrs;
    let token = register(a.http, "sender").await;
    let r = post_json(a.http, "/api/rooms", Some(&token), json!({"name":"second"})).await;
    assert_eq!(r.status, 201);
    let mut ws = Ws::login(a.http, &token).await;
    let first = send_same(&mut ws, "general", "in general").await;
    let second = send_same(&mut ws, "second", "in second").await;
    assert_ne!(first, second, "another room, another message");
    // The resend in each room is still idempotent.
    assert_eq!(send_same(&mut ws, "general", "again").await, first);
    assert_eq!(send_same(&mut ws, "second", "again").await, second);
    for (room, text) in [("general", "in general"), ("second", "in second")] {
        let r = http(
            a.http,
            "GET",
            &format!("/api/rooms/{room}/messages"),
            Some(&token),
            None,
        )
        .await;
        let msgs = r.json()["messages"].as_array().unwrap().clone();
        assert_eq!(msgs.len(), 1, "{room}");
        assert_eq!(msgs[0]["text"], text);
    }
    srv.stop().await;
}

/// Sends `text` to `room` with the client id `same`; returns the acked id.
async fn send_same(ws: &mut Ws, room: &str, text: &str) -> i64 {
    ws.send(json!({"type":"send","room":room,"text":text,"client_id":"same"}))
        .await;
    ws.recv_type("ack").await["id"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_text_limit_on_both_protocols() {
    let srv = InProc::start(config("text-limit")).await;
    let a = srv.addrs;
    let token = register(a.http, "writer").await;
    // 4000 characters of four bytes each: a 16 KiB line on TCP.
    let longest = "😀".repeat(4000);
    let too_long = "😀".repeat(4001);
    let mut tcp = Tcp::login(a.tcp, &token, "writer").await;
    tcp.send(&format!("SAY general t1 {longest}")).await;
    assert!(tcp
        .line_starting("OK ack t1 ")
        .await
        .starts_with("OK ack t1 "));
    tcp.send(&format!("SAY general t2 {too_long}")).await;
    assert!(tcp
        .line_starting("ERR")
        .await
        .starts_with("ERR bad_request"));
    // Over 16 KiB is too long a line; the connection carries on.
    tcp.send(&format!("SAY general t3 {}", "x".repeat(16 * 1024)))
        .await;
    assert!(tcp.line_starting("ERR").await.starts_with("ERR too_long"));
    tcp.send("PING").await;
    assert_eq!(tcp.line_starting("PONG").await, "PONG");

    let mut ws = Ws::login(a.http, &token).await;
    ws.send(json!({"type":"send","room":"general","text":"é".repeat(4000),"client_id":"w1"}))
        .await;
    assert_eq!(ws.recv_type("ack").await["client_id"], "w1");
    ws.send(json!({"type":"send","room":"general","text":"é".repeat(4001),"client_id":"w2"}))
        .await;
    assert_eq!(ws.recv_type("error").await["code"], "bad_request");
    srv.stop().await;
}

/// A raw data frame, as a misbehaving client would send it.
fn frame(opcode: OpCode, payload: &[u8], rsv1: bool) -> Message {
    let mut f = Frame::message(payload.to_vec(), opcode, true);
    *f.header_mut() = FrameHeader {
        rsv1,
        ..f.header().clone()
    };
    Message::Frame(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_protocol_violations_get_a_close_code() {
    let srv = InProc::start(config("ws-violations")).await;
    let a = srv.addrs;
    let token = register(a.http, "violator").await;
    let cases = [
        (
            frame(OpCode::Data(Data::Text), b"{\"type\":\"ping\"\xff}", false),
            1007,
        ),
        (
            frame(OpCode::Data(Data::Text), b"{\"type\":\"ping\"}", true),
            1002,
        ),
        (frame(OpCode::Data(Data::Reserved(3)), b"x", false), 1002),
    ];
    for (bad, code) in cases {
        let mut ws = Ws::login(a.http, &token).await;
        ws.ws.send(bad).await.unwrap();
        assert_eq!(ws.close_code().await, Some(code));
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_must_authenticate_within_ten_seconds() {
    let srv = InProc::start(config("tcp-auth")).await;
    let a = srv.addrs;
    let mut t = Tcp::hello(a.tcp).await;
    let start = Instant::now();
    // Whatever else it sends, it is closed at the deadline.
    loop {
        t.send("PING").await;
        match t.line().await.as_deref() {
            Some("PONG") => tokio::time::sleep(Duration::from_millis(500)).await,
            Some(last) => {
                assert_eq!(last, "ERR unauthorized auth timeout");
                break;
            }
            None => panic!("closed without a word"),
        }
        assert!(start.elapsed() < Duration::from_secs(12), "still open");
    }
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(9500),
        "closed after {waited:?}"
    );
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, t.r.read_to_end(&mut rest)).await;
    assert!(rest.iter().all(|b| b"PONG\n".contains(b)), "then closed");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_body_gets_408_and_the_connection_closes() {
    let srv = InProc::start(config("body-timeout")).await;
    let a = srv.addrs;
    let mut s = tokio::net::TcpStream::connect(a.http).await.unwrap();
    s.write_all(b"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"name\":")
        .await
        .unwrap();
    let start = Instant::now();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut raw))
        .await
        .expect("answered and closed")
        .unwrap();
    let waited = start.elapsed();
    assert!(
        (Duration::from_millis(9500)..Duration::from_secs(13)).contains(&waited),
        "{waited:?}"
    );
    let r = parse_response(&raw);
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (408, Some("timeout"))
    );
    assert_eq!(r.header("connection"), Some("close"));
    srv.stop().await;
}

/// The HTTP/2 connection preface with an empty SETTINGS frame: what an h2c
/// prior-knowledge client opens with.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_is_refused() {
    let srv = InProc::start(config("h2c")).await;
    let a = srv.addrs;
    for addr in [a.http, a.status] {
        let raw = raw_from("127.0.0.1".parse().unwrap(), addr, H2_PREFACE).await;
        // An HTTP/2 server's first frame would be its SETTINGS (type 4);
        // an HTTP/1 server answers in HTTP/1 or closes.
        assert!(
            raw.is_empty() || raw.starts_with(b"HTTP/1.1 4"),
            "{addr}: {:?}",
            String::from_utf8_lossy(&raw[..raw.len().min(64)])
        );
        assert!(
            !(raw.len() >= 9 && raw[3] == 4 && raw[4] == 0),
            "{addr}: an HTTP/2 SETTINGS frame"
        );
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logged_out_websocket_reader_also_stops_receiving() {
    // Logout reaches a connection that is only reading, too.
    let srv = InProc::start(config("logout-reader")).await;
    let a = srv.addrs;
    let token = register(a.http, "reader").await;
    let mut ws = Ws::login(a.http, &token).await;
    ws.send(json!({"type":"join","room":"general"})).await;
    ws.recv_type("joined").await;
    let r = http(a.http, "POST", "/api/logout", Some(&token), None).await;
    assert_eq!(r.status, 204);
    let e = ws.recv().await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("unauthorized"))
    );
    assert_eq!(ws.close_code().await, Some(4401));
    let _ = ws.ws.next().await;
    srv.stop().await;
}
