//! The database under the server: owner-only files, databases from before
//! brought forward in place, and `/health` telling the truth when a write
//! fails or the file is deleted or replaced (and sends then get an error,
//! never an ack).

mod common;
use common::*;
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_files_are_owner_only() {
    // A fresh directory is made 0700 and the files 0600 ...
    let cfg = config("perms");
    let dir = cfg.data.join("fresh");
    let srv = InProc::start(chat_server::Config {
        data: dir.clone(),
        ..cfg.clone()
    })
    .await;
    let token = register(srv.addrs.http, "private").await;
    let mut ws = Ws::login(srv.addrs.http, &token).await;
    ws.send(json!({"type":"send","room":"general","text":"hi","client_id":"p1"}))
        .await;
    ws.recv_type("ack").await;
    assert_eq!(mode(&dir), 0o700);
    for f in ["chat.db", "chat.db-wal", "chat.db-shm"] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
    srv.stop().await;

    // ... and existing ones are narrowed at start.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(dir.join("chat.db"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let srv = InProc::start(chat_server::Config {
        data: dir.clone(),
        ..cfg
    })
    .await;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("chat.db")), 0o600);
    srv.stop().await;
}

/// The first schema, as servers before schema versions wrote it.
const FIRST_SCHEMA: &str = "
CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, pw_hash TEXT NOT NULL);
CREATE TABLE tokens (hash TEXT PRIMARY KEY, user_id INTEGER NOT NULL REFERENCES users(id), expires INTEGER NOT NULL);
CREATE TABLE rooms (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, private INTEGER NOT NULL, owner INTEGER REFERENCES users(id));
CREATE TABLE members (room_id INTEGER NOT NULL REFERENCES rooms(id), user_id INTEGER NOT NULL REFERENCES users(id), PRIMARY KEY (room_id, user_id));
CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, room_id INTEGER NOT NULL REFERENCES rooms(id),
    user_id INTEGER NOT NULL REFERENCES users(id), client_id TEXT NOT NULL, text TEXT NOT NULL, ts TEXT NOT NULL,
    UNIQUE (user_id, client_id));
CREATE INDEX messages_room ON messages(room_id, id);
INSERT INTO rooms (name, private, owner) VALUES ('general', 0, NULL);
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_from_before_is_migrated_in_place() {
    let cfg = config("migrate");
    // A user with one message (id 7) in general, and a second room.
    {
        let db = rusqlite::Connection::open(cfg.data.join("chat.db")).unwrap();
        db.execute_batch(FIRST_SCHEMA).unwrap();
        db.execute_batch(
            "INSERT INTO users (id, name, pw_hash) VALUES (1, 'old', 'x');
             INSERT INTO rooms (name, private, owner) VALUES ('second', 0, 1);
             INSERT INTO members VALUES (2, 1);
             INSERT INTO messages (id, room_id, user_id, client_id, text, ts)
                 VALUES (7, 1, 1, 'c1', 'from before', '2026-01-01T00:00:00Z');",
        )
        .unwrap();
        // A token the test knows (its SHA-256 is what is stored).
        let hash = chat_server::chat::hash_token("old-token");
        db.execute("INSERT INTO tokens VALUES (?1, 1, 4102444800)", [hash])
            .unwrap();
    }
    let srv = InProc::start(cfg).await;
    let a = srv.addrs;
    let r = http(
        a.http,
        "GET",
        "/api/rooms/general/messages",
        Some("old-token"),
        None,
    )
    .await;
    assert_eq!(r.json()["messages"][0]["id"], 7);
    assert_eq!(r.json()["messages"][0]["text"], "from before");
    let mut ws = Ws::login(a.http, "old-token").await;
    // `c1` again in general is the old message; in `second` it is new, and
    // ids go on increasing.
    ws.send(json!({"type":"send","room":"general","text":"again","client_id":"c1"}))
        .await;
    assert_eq!(ws.recv_type("ack").await["id"], 7);
    ws.send(json!({"type":"send","room":"second","text":"new","client_id":"c1"}))
        .await;
    assert!(ws.recv_type("ack").await["id"].as_i64().unwrap() > 7);
    // `OLD` is taken.
    let r = post_json(
        a.http,
        "/api/register",
        None,
        json!({"name":"OLD","password":"correct horse"}),
    )
    .await;
    assert_eq!(r.status, 409);
    srv.stop().await;
}

async fn store_state(status: std::net::SocketAddr) -> (u16, Value) {
    health(status).await
}

/// Waits until `/health` says the store failed, and checks how it says so.
async fn wait_store_failed(status: std::net::SocketAddr, within: Duration) -> Value {
    let h = wait_health(status, within, |_, h| h["store"]["ok"] == false).await;
    let (code, h2) = store_state(status).await;
    assert_eq!(code, 503, "{h2}");
    assert_eq!(h2["status"], "degraded");
    assert_eq!(h2["cause"], "store");
    assert!(h2["store"]["last_error"].is_string(), "{h2}");
    h
}

/// A send must be answered with an error, never an ack.
async fn send_is_refused(ws: &mut Ws, client_id: &str) {
    ws.send(json!({"type":"send","room":"general","text":"lost?","client_id":client_id}))
        .await;
    loop {
        let v = ws.recv().await;
        match v["type"].as_str() {
            Some("ack") => panic!("acked while the store is failing: {v}"),
            Some("error") => break,
            _ => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_database_file_is_noticed() {
    let cfg = config("deleted");
    let db = cfg.data.join("chat.db");
    let srv = InProc::start(cfg).await;
    let a = srv.addrs;
    let token = register(a.http, "witness").await;
    let mut ws = Ws::login(a.http, &token).await;
    let (code, h) = health(a.status).await;
    assert_eq!(
        (code, &h["store"]),
        (200, &json!({"ok": true, "last_error": null}))
    );

    std::fs::remove_file(&db).unwrap();
    // Noticed without any write: the idle writer checks every second.
    let h = wait_store_failed(a.status, Duration::from_secs(3)).await;
    assert!(
        h["store"]["last_error"].as_str().unwrap().contains("gone"),
        "{h}"
    );
    send_is_refused(&mut ws, "d1").await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_database_file_is_noticed() {
    let cfg = config("replaced");
    let db = cfg.data.join("chat.db");
    let srv = InProc::start(cfg.clone()).await;
    let a = srv.addrs;
    let token = register(a.http, "witness").await;
    let mut ws = Ws::login(a.http, &token).await;
    // Another file moved over it, as a restore gone wrong would.
    let other = cfg.data.join("other.db");
    std::fs::copy(&db, &other).unwrap();
    std::fs::rename(&other, &db).unwrap();
    send_is_refused(&mut ws, "r1").await;
    let h = wait_store_failed(a.status, Duration::from_secs(3)).await;
    assert!(
        h["store"]["last_error"]
            .as_str()
            .unwrap()
            .contains("replaced"),
        "{h}"
    );
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_write_degrades_health_until_writes_work_again() {
    let cfg = config("locked");
    let db = cfg.data.join("chat.db");
    let srv = InProc::start(cfg).await;
    let a = srv.addrs;
    let token = register(a.http, "witness").await;
    let mut ws = Ws::login(a.http, &token).await;
    // Another process holds the write lock past the writer's busy timeout:
    // the write fails, as on a full or failing disk.
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (locked_tx, locked) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
        locked_tx.send(()).unwrap();
        released.recv().unwrap();
        conn.execute_batch("ROLLBACK").unwrap();
    });
    locked.recv().unwrap();
    let started = Instant::now();
    send_is_refused(&mut ws, "l1").await;
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "waited for the lock first"
    );
    let h = wait_store_failed(a.status, Duration::from_secs(3)).await;
    assert!(
        h["store"]["last_error"]
            .as_str()
            .unwrap()
            .contains("locked"),
        "{h}"
    );
    release.send(()).unwrap();
    holder.join().unwrap();
    // The next write commits, and the store is trusted again.
    ws.send(json!({"type":"send","room":"general","text":"back","client_id":"l2"}))
        .await;
    ws.recv_type("ack").await;
    let (code, h) = health(a.status).await;
    assert_eq!((code, h["store"]["ok"].as_bool()), (200, Some(true)), "{h}");
    srv.stop().await;
}
