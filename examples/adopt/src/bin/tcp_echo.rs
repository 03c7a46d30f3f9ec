//! A line echo server on admit-tcp's `AdmitListener`: a global connection
//! cap and a per-address cap, refused connections told `BUSY` and closed.
//!
//! ```text
//! adopt-tcp-echo [--addr 127.0.0.1:7070] [--capacity 10000] [--per-ip 32]
//! ```

use admit_tcp::{AdmitListener, Policy};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let capacity = adopt::setting("capacity", "ADOPT_CAPACITY", 10_000);
    let per_ip = adopt::setting("per-ip", "ADOPT_PER_IP", 32);
    let limiter = admit_tcp::admit::Limiter::new(capacity);

    let mut listener = AdmitListener::builder(limiter)
        .policy(Policy::busy_default()) // "BUSY retry-after=5\n", then close
        .per_ip(per_ip)
        .bind(adopt::listen_addr())
        .await?;
    adopt::announce(listener.local_addr()?);

    loop {
        // `conn` holds its permit (and its per-address slot) until dropped.
        let (conn, _peer) = listener.accept().await?;
        tokio::spawn(async move {
            let (read, mut write) = tokio::io::split(conn);
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if write
                    .write_all(format!("{line}\n").as_bytes())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
    }
}
