//! Two clients, one on WebSocket and one on the TCP line protocol, chat in
//! `general`: presence, acks, order, history, idempotent resends; plus the
//! HTTP API for rooms and private membership.

mod common;
use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_and_tcp_clients_chat() {
    let srv = InProc::start(config("chat")).await;
    let a = srv.addrs;
    let alice = register(a.http, "alice").await;
    // Logging in issues a second, independent token.
    let r = post_json(
        a.http,
        "/api/login",
        None,
        json!({"name":"alice","password":"correct horse"}),
    )
    .await;
    assert_eq!(r.status, 200);
    let alice2 = r.json()["token"].as_str().unwrap().to_owned();
    assert_ne!(alice, alice2);
    let bob = register(a.http, "bob").await;

    let mut ws = Ws::login(a.http, &alice2).await;
    ws.send(json!({"type":"join","room":"general"})).await;
    assert_eq!(ws.recv().await, json!({"type":"joined","room":"general"}));

    let mut tcp = Tcp::login(a.tcp, &bob, "bob").await;
    tcp.send("JOIN general").await;
    assert_eq!(tcp.line().await.unwrap(), "OK joined general");
    // The WebSocket client sees bob arrive.
    assert_eq!(
        ws.recv().await,
        json!({"type":"presence","room":"general","user":"bob","state":"online"})
    );

    // Alice sends three messages; she gets acks then her own messages, bob
    // gets them in id order.
    for i in 0..3 {
        ws.send(json!({"type":"send","room":"general","text":format!("hi {i}"),"client_id":format!("a{i}")}))
            .await;
    }
    let mut ids = Vec::new();
    let mut acked = Vec::new();
    while ids.len() < 3 || acked.len() < 3 {
        let v = ws.recv().await;
        match v["type"].as_str().unwrap() {
            "ack" => acked.push(v["id"].as_i64().unwrap()),
            "message" => {
                assert_eq!(v["from"], "alice");
                assert!(v["ts"].as_str().unwrap().ends_with('Z'));
                // An ack always precedes the message it acknowledges.
                assert!(acked.contains(&v["id"].as_i64().unwrap()));
                ids.push(v["id"].as_i64().unwrap());
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids ascend: {ids:?}");
    assert_eq!(acked, ids);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            tcp.line().await.unwrap(),
            format!("MSG general {id} alice hi {i}")
        );
    }

    // Bob answers over TCP.
    tcp.send("SAY general b1 hello alice").await;
    let ack = tcp.line().await.unwrap();
    let bid: i64 = ack.strip_prefix("OK ack b1 ").unwrap().parse().unwrap();
    assert_eq!(
        tcp.line().await.unwrap(),
        format!("MSG general {bid} bob hello alice")
    );
    let m = ws.recv_type("message").await;
    assert_eq!(m["id"], bid);
    assert_eq!(m["text"], "hello alice");

    // Resending the same client_id returns the same id and stores nothing.
    tcp.send("SAY general b1 hello alice").await;
    assert_eq!(tcp.line().await.unwrap(), format!("OK ack b1 {bid}"));
    ws.send(json!({"type":"send","room":"general","text":"hi 0","client_id":"a0"}))
        .await;
    assert_eq!(
        ws.recv().await,
        json!({"type":"ack","client_id":"a0","id":ids[0]})
    );

    // History: WS, TCP and HTTP agree.
    ws.send(json!({"type":"history","room":"general"})).await;
    let h = ws.recv().await;
    let msgs = h["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 4);
    assert_eq!(msgs[3]["text"], "hello alice");
    ws.send(json!({"type":"history","room":"general","before":bid,"limit":2}))
        .await;
    let h = ws.recv().await;
    let page: Vec<i64> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_i64().unwrap())
        .collect();
    assert_eq!(page, vec![ids[1], ids[2]]);

    tcp.send("HISTORY general 2").await;
    assert_eq!(tcp.line().await.unwrap(), "HISTORY general 2");
    assert_eq!(
        tcp.line().await.unwrap(),
        format!("MSG general {} alice hi 2", ids[2])
    );
    assert_eq!(
        tcp.line().await.unwrap(),
        format!("MSG general {bid} bob hello alice")
    );

    let r = http(
        a.http,
        "GET",
        "/api/rooms/general/messages?limit=10",
        Some(&bob),
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["messages"].as_array().unwrap().len(), 4);

    // Ping on both.
    ws.send(json!({"type":"ping"})).await;
    assert_eq!(ws.recv().await, json!({"type":"pong"}));
    tcp.send("PING").await;
    assert_eq!(tcp.line().await.unwrap(), "PONG");

    // Bob leaves: alice sees him go offline.
    tcp.send("QUIT").await;
    assert_eq!(tcp.line().await.unwrap(), "BYE");
    assert_eq!(tcp.line().await, None);
    assert_eq!(
        ws.recv().await,
        json!({"type":"presence","room":"general","user":"bob","state":"offline"})
    );
    ws.send(json!({"type":"leave","room":"general"})).await;
    assert_eq!(ws.recv().await, json!({"type":"left","room":"general"}));

    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_and_private_membership() {
    let srv = InProc::start(config("rooms")).await;
    let a = srv.addrs;
    let owner = register(a.http, "owner").await;
    let guest = register(a.http, "guest").await;

    let r = http(a.http, "GET", "/api/rooms", Some(&owner), None).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!([{"name":"general","private":false,"owner":null}])
    );

    let r = post_json(
        a.http,
        "/api/rooms",
        Some(&owner),
        json!({"name":"secret","private":true}),
    )
    .await;
    assert_eq!(r.status, 201);
    assert_eq!(
        r.json(),
        json!({"name":"secret","private":true,"owner":"owner"})
    );
    let r = post_json(
        a.http,
        "/api/rooms",
        Some(&owner),
        json!({"name":"secret","private":false}),
    )
    .await;
    assert_eq!(r.status, 409);
    let r = post_json(
        a.http,
        "/api/rooms",
        Some(&guest),
        json!({"name":"open","private":false}),
    )
    .await;
    assert_eq!(r.status, 201);

    // The guest cannot see, read or join the private room yet.
    let r = http(a.http, "GET", "/api/rooms", Some(&guest), None).await;
    let names: Vec<String> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, vec!["general", "open"]);
    let r = http(
        a.http,
        "GET",
        "/api/rooms/secret/messages",
        Some(&guest),
        None,
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "forbidden");
    let mut ws = Ws::login(a.http, &guest).await;
    ws.send(json!({"type":"join","room":"secret"})).await;
    let e = ws.recv().await;
    assert_eq!(e["type"], "error");
    assert_eq!(e["code"], "forbidden");
    let mut tcp = Tcp::login(a.tcp, &guest, "guest").await;
    tcp.send("JOIN secret").await;
    assert!(tcp.line().await.unwrap().starts_with("ERR forbidden "));
    tcp.send("SAY secret x1 hi").await;
    assert!(tcp.line().await.unwrap().starts_with("ERR forbidden "));
    tcp.send("JOIN nowhere").await;
    assert!(tcp.line().await.unwrap().starts_with("ERR not_found "));

    // Only the owner adds members; unknown rooms and users are 404.
    for (room, by, user, status) in [
        ("secret", &guest, "guest", 403),
        ("nowhere", &owner, "guest", 404),
        ("secret", &owner, "nobody", 404),
        ("secret", &owner, "guest", 204),
    ] {
        let path = format!("/api/rooms/{room}/members");
        let r = post_json(a.http, &path, Some(by), json!({ "user": user })).await;
        assert_eq!(r.status, status, "{path} adding {user}");
    }

    ws.send(json!({"type":"join","room":"secret"})).await;
    assert_eq!(ws.recv().await, json!({"type":"joined","room":"secret"}));
    let r = http(
        a.http,
        "GET",
        "/api/rooms/secret/messages",
        Some(&guest),
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    let r = http(
        a.http,
        "GET",
        "/api/rooms/nowhere/messages",
        Some(&guest),
        None,
    )
    .await;
    assert_eq!(r.status, 404);

    // Duplicate names and bad logins.
    let r = post_json(
        a.http,
        "/api/register",
        None,
        json!({"name":"owner","password":"whatever1"}),
    )
    .await;
    assert_eq!(r.status, 409);
    assert_eq!(r.json()["error"], "name_taken");
    let r = post_json(
        a.http,
        "/api/login",
        None,
        json!({"name":"owner","password":"wrong-password"}),
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "bad_credentials");
    let r = post_json(
        a.http,
        "/api/login",
        None,
        json!({"name":"ghost","password":"wrong-password"}),
    )
    .await;
    assert_eq!(r.status, 401);

    // The web client is served at `/`.
    let r = http(a.http, "GET", "/", None, None).await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));

    srv.stop().await;
}
