//! An `admit-tcp` listener given the node's local limiter admits within the
//! node's share, and its share follows the listener's demand.

mod common;

use admit_redis::ClusterLimiter;
use admit_tcp::{AdmitListener, Policy};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connects and waits for the server's greeting: `Some(stream)` when
/// admitted, `None` when the listener refused (closed) the connection.
async fn connect(addr: SocketAddr) -> Option<TcpStream> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let mut b = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(1), s.read(&mut b)).await {
        Ok(Ok(1)) if b[0] == b'+' => Some(s),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_admits_within_the_share_and_the_share_follows_it() {
    let Some(r) = common::redis() else { return };
    const BUDGET: u32 = 4;
    let other = ClusterLimiter::builder(r.client(), "tcp", BUDGET)
        .node_id("other")
        .min_batch(1)
        .max_share(3)
        .start()
        .await
        .unwrap();
    let mut held = Vec::new();
    common::eventually(Duration::from_secs(3), async || {
        while let Ok(p) = other.try_acquire() {
            held.push(p);
        }
        held.len() == 3
    })
    .await
    .expect("the other node never got 3 permits");

    let node = ClusterLimiter::builder(r.client(), "tcp", BUDGET)
        .node_id("edge")
        .min_batch(1)
        .start()
        .await
        .unwrap();
    assert_eq!(node.status().share, 1, "{:?}", node.status());
    let mut listener = AdmitListener::builder(node.limiter().clone())
        .policy(Policy::Reject)
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((mut c, _)) = listener.accept().await {
            let _ = c.write_all(b"+").await;
            conns.push(c);
        }
    });

    // One permit in the share: one client in, the next refused.
    let first = connect(addr).await.expect("first client refused");
    assert!(connect(addr).await.is_none(), "admitted beyond the share");
    assert_eq!(node.limiter().in_use(), 1);

    // The other node leaves; clients that retry get in as the share grows
    // with the listener's demand, up to the whole budget and never past it.
    other.leave().await.unwrap();
    drop(held);
    let mut clients = vec![first];
    let took = common::eventually(Duration::from_secs(3), async || {
        if let Some(c) = connect(addr).await {
            clients.push(c);
        }
        assert!(node.limiter().in_use() <= BUDGET);
        clients.len() == BUDGET as usize
    })
    .await;
    assert!(
        took.is_some(),
        "stuck at {} clients: {:?}",
        clients.len(),
        node.status()
    );
    assert!(connect(addr).await.is_none(), "admitted beyond the budget");
    assert_eq!(node.status().share, BUDGET);
}
