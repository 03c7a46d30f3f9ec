//! Helpers shared by the socket tests. Every address is on 127.0.0.0/8.
#![allow(dead_code, unreachable_pub)]

use admit_tcp::{AdmitListener, Admitted};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;

/// A client connection from `127.0.0.<last>` to `addr`.
pub async fn connect_from(last: u8, addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(Ipv4Addr::new(127, 0, 0, last).into(), 0))?;
    socket.connect(addr).await
}

/// Binds `builder` on loopback, connects one client from 127.0.0.2 and
/// accepts it: the client socket and the server's admitted connection.
pub async fn accept_one(builder: admit_tcp::Builder) -> (TcpStream, Admitted<TcpStream>) {
    let mut listener = builder.bind("127.0.0.1:0").await.unwrap();
    let client = connect_from(2, listener.local_addr().unwrap())
        .await
        .unwrap();
    let (conn, _) = listener.accept().await.unwrap();
    (client, conn)
}

/// Runs the accept loop on its own task and hands every admitted
/// connection to the test.
pub fn serve(mut listener: AdmitListener) -> mpsc::UnboundedReceiver<Admitted<TcpStream>> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((conn, _)) => {
                    if tx.send(conn).is_err() {
                        return;
                    }
                }
                Err(e) => panic!("accept failed: {e}"),
            }
        }
    });
    rx
}

/// What a client saw before the server closed the connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// These bytes, then end-of-file.
    Closed(Vec<u8>),
    /// A reset (after these bytes).
    Reset(Vec<u8>),
}

/// Reads until the server closes, failing the test after `limit`.
pub async fn read_until_close(stream: &mut TcpStream, limit: Duration) -> Outcome {
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 256];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return Outcome::Closed(std::mem::take(&mut got)),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return Outcome::Reset(std::mem::take(&mut got))
                }
                Err(e) => panic!("client read failed: {e}"),
            }
        }
    };
    tokio::time::timeout(limit, read)
        .await
        .expect("the server did not close the connection in time")
}

/// Waits for `cond` to hold, checking every millisecond, for at most
/// `limit`; used only where no event exists to wait on.
pub async fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
