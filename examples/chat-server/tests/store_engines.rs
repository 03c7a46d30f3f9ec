//! The store's promises, checked on both engines: embedded SQLite and a
//! throw-away PostgreSQL server.

mod services;

use chat_server::store::{self, Database, IncidentRow, Posted, Store, StoreError, ROOM_QUOTA};
use std::sync::Arc;
use std::time::Duration;

async fn sqlite() -> Arc<Store> {
    let dir = std::env::temp_dir().join(format!(
        "chat-store-engines-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    store::open(&Database::Sqlite(dir), store::MAX_BATCH, "test")
        .await
        .unwrap()
}

async fn postgres(pg: &services::Postgres, node: &str) -> Arc<Store> {
    let db = Database::parse(Some(&pg.url()), std::path::Path::new("unused")).unwrap();
    store::open(&db, store::MAX_BATCH, node).await.unwrap()
}

async fn post(
    store: &Arc<Store>,
    room: i64,
    user: i64,
    text: &str,
    cid: &str,
) -> Result<Posted, StoreError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    store.post(
        room,
        user,
        text.into(),
        cid.into(),
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    rx.await.unwrap()
}

const FAR: i64 = i64::MAX / 2;

/// Everything the chat service relies on, on one store.
async fn exercise(store: Arc<Store>) {
    let kind = store.kind();
    // Accounts: names are one name whatever their case.
    let alice = store
        .register("Alice".into(), "h1".into(), "t-alice".into(), FAR)
        .await
        .unwrap();
    let taken = store
        .register("aLICE".into(), "h2".into(), "t-x".into(), FAR)
        .await;
    assert!(
        matches!(taken, Err(StoreError::Exists)),
        "{kind}: {taken:?}"
    );
    assert_eq!(
        store.credentials("alice".into()).await.unwrap(),
        Some((alice, "h1".to_owned()))
    );
    assert_eq!(store.user_id("ALICE".into()).await.unwrap(), Some(alice));
    assert_eq!(store.user_id("nobody".into()).await.unwrap(), None);
    let bob = store
        .register("bob".into(), "h3".into(), "t-bob".into(), FAR)
        .await
        .unwrap();

    // Tokens: found until they expire or are deleted.
    assert_eq!(
        store.user_by_token("t-alice".into(), 0).await.unwrap(),
        Some((alice, "Alice".to_owned()))
    );
    store.add_token(bob, "t-short".into(), 100).await.unwrap();
    assert!(store
        .user_by_token("t-short".into(), 99)
        .await
        .unwrap()
        .is_some());
    assert!(store
        .user_by_token("t-short".into(), 100)
        .await
        .unwrap()
        .is_none());
    store.purge_tokens(100).await.unwrap();
    assert!(store
        .user_by_token("t-short".into(), 0)
        .await
        .unwrap()
        .is_none());
    store.delete_token("t-bob".into()).await.unwrap();
    assert!(store
        .user_by_token("t-bob".into(), 0)
        .await
        .unwrap()
        .is_none());
    store.delete_token("never-was".into()).await.unwrap();

    // Rooms: unique names, a quota per owner, members.
    let rooms = store.load_rooms().await.unwrap();
    let general = rooms.iter().find(|r| r.name == "general").expect("general");
    assert!(!general.private && general.owner.is_none());
    let secret = store
        .create_room("secret".into(), true, alice)
        .await
        .unwrap();
    let again = store.create_room("secret".into(), false, bob).await;
    assert!(
        matches!(again, Err(StoreError::Exists)),
        "{kind}: {again:?}"
    );
    store.add_member(secret, bob).await.unwrap();
    store.add_member(secret, bob).await.unwrap();
    let row = store.load_room("secret".into()).await.unwrap().unwrap();
    assert_eq!(
        (row.id, row.private, row.owner.as_deref()),
        (secret, true, Some("Alice"))
    );
    let mut members = row.members.clone();
    members.sort_unstable();
    assert_eq!(members, vec![alice, bob]);
    assert!(store.load_room("nope".into()).await.unwrap().is_none());
    let quota = async {
        for i in 1..ROOM_QUOTA {
            store.create_room(format!("b{i}"), false, bob).await?;
        }
        store.create_room("b-last".into(), false, bob).await
    };
    quota.await.unwrap();
    let over = store.create_room("b-over".into(), false, bob).await;
    assert!(matches!(over, Err(StoreError::Quota)), "{kind}: {over:?}");

    // Messages: ids increase per room; a resend stores nothing.
    let first = post(&store, general.id, alice, "one", "c1").await.unwrap();
    let resend = post(&store, general.id, alice, "one", "c1").await.unwrap();
    assert!(!first.duplicate && resend.duplicate);
    assert_eq!(resend.id, first.id);
    let other_room = post(&store, secret, alice, "x", "c1").await.unwrap();
    assert!(
        !other_room.duplicate,
        "{kind}: same client_id, another room"
    );
    let other_user = post(&store, general.id, bob, "two", "c1").await.unwrap();
    assert!(!other_user.duplicate && other_user.id > first.id);

    // Group commit: many at once, all acked, ids in order of sending, and
    // resends within one batch stored once.
    let mut waits = Vec::new();
    for i in 0..200 {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let cid = format!("g{}", i % 150);
        store.post(
            general.id,
            bob,
            format!("m{i}"),
            cid,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        waits.push(rx);
    }
    let mut ids = Vec::new();
    for (i, w) in waits.into_iter().enumerate() {
        let p = w.await.unwrap().unwrap();
        assert_eq!(p.duplicate, i >= 150, "{kind}: message {i}");
        ids.push(p.id);
    }
    assert!(
        ids[..150].windows(2).all(|w| w[0] < w[1]),
        "{kind}: {ids:?}"
    );
    assert_eq!(ids[150..], ids[..50]);

    let page = store
        .history(general.id, "general".into(), None, 10)
        .await
        .unwrap();
    assert_eq!(page.len(), 10);
    assert_eq!(page.last().unwrap().text, "m149");
    assert!(page.windows(2).all(|w| w[0].id < w[1].id));
    let before = store
        .history(general.id, "general".into(), Some(page[0].id), 1000)
        .await
        .unwrap();
    assert_eq!(before.len(), 2 + 140);
    assert_eq!(before[0].text, "one");
    assert_eq!(before[0].from, "Alice");
    let after = store
        .history_after(general.id, "general".into(), first.id, 3)
        .await
        .unwrap();
    assert_eq!(after[0].id, other_user.id);
    assert_eq!(after.len(), 3);
    let heads = store.room_heads().await.unwrap();
    assert!(heads.contains(&(general.id, ids[149])), "{kind}: {heads:?}");

    // Incidents.
    let row = |cause: &str, started_ms| IncidentRow {
        id: 0,
        limiter: "chat".into(),
        cause: cause.into(),
        started_ms,
        ended_ms: None,
        repaired_by: None,
        summary: format!("{cause} at {started_ms}"),
    };
    let a = store
        .insert_incident(row("leaking", 1_000), 0, 100)
        .await
        .unwrap();
    let b = store
        .insert_incident(row("stalled", 2_000), 0, 100)
        .await
        .unwrap();
    assert!(b > a);
    let open: Vec<i64> = store
        .open_incidents()
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(open, vec![a, b]);
    store
        .end_incident(a, 1_500, "watchdog".into(), "done".into())
        .await
        .unwrap();
    let recent = store.recent_incidents(10).await.unwrap();
    assert_eq!(recent.iter().map(|r| r.id).collect::<Vec<_>>(), vec![b, a]);
    assert_eq!(recent[1].ended_ms, Some(1_500));
    assert_eq!(recent[1].repaired_by.as_deref(), Some("watchdog"));
    let (created, spans) = store.incident_spans(1_600).await.unwrap();
    assert!(created.is_some());
    assert_eq!(spans.iter().map(|r| r.id).collect::<Vec<_>>(), vec![b]);
    // Bounded by rows: one more with room for one drops the rest.
    let c = store
        .insert_incident(row("saturated", 3_000), 0, 1)
        .await
        .unwrap();
    let left: Vec<i64> = store
        .recent_incidents(10)
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(left, vec![c]);
    assert!(store.health().ok());
    tokio::task::spawn_blocking(move || store.shutdown())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_keeps_the_stores_promises() {
    exercise(sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keeps_the_stores_promises() {
    let Some(pg) = services::Postgres::start() else {
        return;
    };
    exercise(postgres(&pg, "a").await).await;
}

/// Two nodes posting into one room at once: ids increase strictly per
/// room with no gaps, and each node's acks come in its own sending order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_ids_are_one_sequence_per_room_across_nodes() {
    let Some(pg) = services::Postgres::start() else {
        return;
    };
    let a = postgres(&pg, "a").await;
    let b = postgres(&pg, "b").await;
    let u = a
        .register("u".into(), "h".into(), "t".into(), FAR)
        .await
        .unwrap();
    let room = a.load_room("general".into()).await.unwrap().unwrap().id;
    let other = b.create_room("other".into(), false, u).await.unwrap();
    let send = |s: Arc<Store>, tag: &'static str| async move {
        let mut waits = Vec::new();
        for i in 0..300 {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let r = if i % 3 == 0 { other } else { room };
            s.post(
                r,
                u,
                "x".into(),
                format!("{tag}{i}"),
                Box::new(move |p| {
                    let _ = tx.send((r, p));
                }),
            );
            waits.push(rx);
            if i % 50 == 0 {
                tokio::task::yield_now().await;
            }
        }
        let mut out = Vec::new();
        for w in waits {
            let (r, p) = w.await.unwrap();
            out.push((r, p.unwrap().id));
        }
        out
    };
    let (ra, rb) = tokio::join!(send(a.clone(), "a"), send(b.clone(), "b"));
    for (mine, r) in [(&ra, room), (&rb, room), (&ra, other), (&rb, other)] {
        let ids: Vec<i64> = mine
            .iter()
            .filter(|(x, _)| *x == r)
            .map(|(_, id)| *id)
            .collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "acks in sending order");
    }
    for (r, n) in [(room, 400), (other, 200)] {
        let mut all: Vec<i64> = ra
            .iter()
            .chain(&rb)
            .filter(|(x, _)| *x == r)
            .map(|(_, id)| *id)
            .collect();
        all.sort_unstable();
        assert_eq!(all, (1..=n).collect::<Vec<i64>>(), "one gap-free sequence");
    }
    // A resend on the other node finds the first copy.
    let (tx, rx) = tokio::sync::oneshot::channel();
    b.post(
        room,
        u,
        "x".into(),
        "a1".into(),
        Box::new(move |p| {
            let _ = tx.send(p);
        }),
    );
    let p = rx.await.unwrap().unwrap();
    assert!(p.duplicate);
    assert_eq!(p.id, ra[1].1);
}

/// PostgreSQL stopped: writes fail (never acked), health says so within
/// the idle check, and both recover when it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_fails_writes_and_recovers() {
    let Some(mut pg) = services::Postgres::start() else {
        return;
    };
    let s = postgres(&pg, "a").await;
    let u = s
        .register("u".into(), "h".into(), "t".into(), FAR)
        .await
        .unwrap();
    let room = s.load_room("general".into()).await.unwrap().unwrap().id;
    post(&s, room, u, "before", "1").await.unwrap();
    pg.stop();
    let r = tokio::time::timeout(Duration::from_secs(10), post(&s, room, u, "during", "2"))
        .await
        .expect("answered");
    assert!(matches!(r, Err(StoreError::Failed(_))), "{r:?}");
    assert!(!s.health().ok());
    assert!(s.health().last_error().is_some());
    pg.resume();
    let start = std::time::Instant::now();
    while !s.health().ok() {
        assert!(start.elapsed() < Duration::from_secs(10), "recovers");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let p = post(&s, room, u, "after", "3").await.unwrap();
    assert_eq!(p.id, 2, "the failed message took no id");
}
