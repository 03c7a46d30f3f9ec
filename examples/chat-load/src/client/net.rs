//! Opening TCP connections from many loopback source addresses.
//!
//! One source address has about 28,000 ephemeral ports, and the server caps
//! connections per address (`--per-ip`). Binding each socket to one of
//! several 127.0.0.x addresses before connecting spreads a run over them.
//! Only loopback destinations are accepted: this tool never sends traffic
//! off the machine.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};

/// Opens connections, rotating over loopback source addresses.
#[derive(Debug)]
pub struct Connector {
    sources: Vec<Ipv4Addr>,
    next: AtomicUsize,
    timeout: Duration,
    open: Arc<AtomicI64>,
}

/// The source addresses used for `n` sources: 127.0.0.1, 127.0.0.2, ...
pub fn source_addrs(n: usize) -> Vec<Ipv4Addr> {
    (0..n.clamp(1, 254))
        .map(|i| Ipv4Addr::new(127, 0, 0, 1 + i as u8))
        .collect()
}

impl Connector {
    /// A connector over `sources` addresses with a connect timeout.
    pub fn new(sources: usize, timeout: Duration) -> Self {
        Connector {
            sources: source_addrs(sources),
            next: AtomicUsize::new(0),
            timeout,
            open: Arc::new(AtomicI64::new(0)),
        }
    }

    /// The source addresses in use.
    pub fn sources(&self) -> &[Ipv4Addr] {
        &self.sources
    }

    /// Connects to `dst` (which must be a loopback address) from the next
    /// source address.
    pub async fn connect(&self, dst: SocketAddr) -> io::Result<TcpStream> {
        ensure_loopback(dst)?;
        let fut = async {
            match dst.ip() {
                IpAddr::V4(_) => {
                    let i = self.next.fetch_add(1, Ordering::Relaxed) % self.sources.len();
                    let socket = TcpSocket::new_v4()?;
                    socket.bind(SocketAddr::new(IpAddr::V4(self.sources[i]), 0))?;
                    socket.connect(dst).await
                }
                IpAddr::V6(_) => TcpStream::connect(dst).await,
            }
        };
        let stream = tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// A gauge of chat connections this tool holds open; scenarios bump it
    /// through [`OpenGuard`].
    pub fn open_gauge(&self) -> Arc<AtomicI64> {
        self.open.clone()
    }

    /// Connections currently counted as open.
    pub fn open_now(&self) -> u64 {
        u64::try_from(self.open.load(Ordering::Relaxed)).unwrap_or(0)
    }
}

/// Counts one open connection until dropped.
#[derive(Debug)]
pub struct OpenGuard(Arc<AtomicI64>);

impl OpenGuard {
    /// Counts one more open connection on `gauge`.
    pub fn new(gauge: Arc<AtomicI64>) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        OpenGuard(gauge)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Refuses any destination outside the loopback range.
pub fn ensure_loopback(dst: SocketAddr) -> io::Result<()> {
    if dst.ip().is_loopback() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{dst} is not a loopback address; chat-load only targets this machine"),
        ))
    }
}

/// The soft open-file limit of this process, from `/proc/self/limits`.
pub fn open_file_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_open_file_limit(&text)
}

/// Parses the "Max open files" soft limit out of `/proc/self/limits` text.
pub fn parse_open_file_limit(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    if soft == "unlimited" {
        return Some(u64::MAX);
    }
    soft.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_loopback_and_bounded() {
        let s = source_addrs(3);
        assert_eq!(
            s,
            vec![
                Ipv4Addr::new(127, 0, 0, 1),
                Ipv4Addr::new(127, 0, 0, 2),
                Ipv4Addr::new(127, 0, 0, 3)
            ]
        );
        assert_eq!(source_addrs(0).len(), 1);
        assert_eq!(source_addrs(1000).len(), 254);
        assert!(source_addrs(254).iter().all(|a| a.is_loopback()));
    }

    #[test]
    fn only_loopback_targets() {
        assert!(ensure_loopback("127.0.0.1:80".parse().unwrap()).is_ok());
        assert!(ensure_loopback("127.9.9.9:80".parse().unwrap()).is_ok());
        assert!(ensure_loopback("[::1]:80".parse().unwrap()).is_ok());
        assert!(ensure_loopback("10.0.0.1:80".parse().unwrap()).is_err());
        assert!(ensure_loopback("192.168.1.1:80".parse().unwrap()).is_err());
    }

    #[test]
    fn parses_proc_limits() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max processes             95524                95524                processes \n\
                    Max open files            20000                40000                files     \n";
        assert_eq!(parse_open_file_limit(text), Some(20000));
        assert_eq!(
            parse_open_file_limit("Max open files unlimited unlimited files"),
            Some(u64::MAX)
        );
        assert_eq!(parse_open_file_limit("nothing here"), None);
    }
}
