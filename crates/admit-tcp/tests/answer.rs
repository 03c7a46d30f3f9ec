//! Refusals answered on tasks of their own (`Builder::answer_refusals`): the
//! answer hears the client first, knows why it was refused, can admit the
//! connection on a reserved permit, and is bounded in number and time.

mod common;

use admit_tcp::{AdmitListener, Answer, AnswerFuture, Policy, Refused};
use common::{connect_from, eventually};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(5);

/// Reads the client's first line; a `VIP` line is admitted on the reserve,
/// anyone else is told the reason and closed.
#[derive(Debug)]
struct Greeting;

impl Answer for Greeting {
    fn answer(&self, mut refused: Refused) -> AnswerFuture {
        Box::pin(async move {
            let mut first = [0u8; 4];
            // Peeked, not read: an admitted connection still has its line.
            if refused.stream().peek(&mut first).await.is_ok() && &first == b"VIP\n" {
                if let Ok(permit) = refused.limiter().try_acquire_critical() {
                    match refused.admit(permit) {
                        Ok(()) => return,
                        Err(back) => refused = back,
                    }
                }
            }
            let reason = refused.reason();
            let mut stream = BufReader::new(refused.into_stream());
            let mut line = String::new();
            if stream.read_line(&mut line).await.is_ok() {
                let bye = format!("NO {}\n", reason.as_str());
                let _ = stream.get_mut().write_all(bye.as_bytes()).await;
            }
        })
    }
}

async fn read_all(stream: &mut TcpStream) -> String {
    let mut out = String::new();
    tokio::time::timeout(LIMIT, stream.read_to_string(&mut out))
        .await
        .expect("the answer in time")
        .unwrap();
    out
}

#[tokio::test]
async fn the_answer_hears_the_client_and_can_admit_on_the_reserve() {
    let limiter = admit::Limiter::builder()
        .capacity(2)
        .reserve(1)
        .build()
        .unwrap();
    let mut listener = AdmitListener::builder(limiter.clone())
        .policy(Policy::Reject)
        .per_ip(1)
        .answer_refusals(Greeting)
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();

    // The one ordinary permit.
    let _first = connect_from(2, addr).await.unwrap();
    let (held, _) = listener.accept().await.unwrap();
    assert!(!held.is_reserved());

    // Full: answered after the client spoke, with the reason.
    let mut plain = connect_from(3, addr).await.unwrap();
    plain.write_all(b"hello\n").await.unwrap();
    let accepting = tokio::spawn(async move {
        let conn = listener.accept().await.unwrap();
        (listener, conn)
    });
    assert_eq!(read_all(&mut plain).await, "NO full\n");

    // A VIP gets the reserved permit, and its line is still there to read.
    let mut vip = connect_from(4, addr).await.unwrap();
    vip.write_all(b"VIP\n").await.unwrap();
    let (mut listener, (mut conn, peer)) = tokio::time::timeout(LIMIT, accepting)
        .await
        .expect("the VIP admitted in time")
        .unwrap();
    assert_eq!(peer, vip.local_addr().unwrap());
    assert!(conn.is_reserved());
    assert!(conn.per_ip().is_some(), "the per-address count rides along");
    assert_eq!(limiter.in_use(), 2);
    let mut line = [0u8; 4];
    conn.read_exact(&mut line).await.unwrap();
    assert_eq!(&line, b"VIP\n");

    // Over the per-address cap (127.0.0.2 holds its one): the answer is
    // told so.
    let mut again = connect_from(2, addr).await.unwrap();
    again.write_all(b"hi\n").await.unwrap();
    let serving = tokio::spawn(async move {
        let _ = listener.accept().await;
    });
    assert_eq!(read_all(&mut again).await, "NO per_ip\n");
    assert_eq!(limiter.health().snapshot().rejected_total["per_ip"], 1);
    serving.abort();
    drop(held);
}

#[tokio::test]
async fn answers_are_bounded_in_number_and_time() {
    let limiter = admit::Limiter::new(1);
    let _held = limiter.try_acquire().unwrap();
    let listener = AdmitListener::builder(limiter.clone())
        .policy(Policy::Reject)
        .answer_refusals(Greeting)
        .max_refusals(1)
        .refusal_timeout(Duration::from_millis(300))
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = listener.stats();
    let mut rx = common::serve(listener);

    // A silent client occupies the one answer...
    let mut silent = connect_from(2, addr).await.unwrap();
    eventually(LIMIT, "one answer in progress", || stats.answering() == 1).await;
    // ...so the next refused connection is closed unanswered, at once
    // (well before the silent one's timeout).
    let started = std::time::Instant::now();
    let mut next = connect_from(3, addr).await.unwrap();
    assert_eq!(read_all(&mut next).await, "");
    assert!(started.elapsed() < Duration::from_millis(250));
    // The silent one is closed when the refusal timeout passes.
    assert_eq!(read_all(&mut silent).await, "");
    eventually(LIMIT, "no answer in progress", || stats.answering() == 0).await;
    assert_eq!(stats.refused(), 2);
    assert!(rx.try_recv().is_err(), "nothing was admitted");
}
