//! `axum::serve` over an [`AdmitListener`] (feature `axum`).

use crate::{AdmitListener, Admitted};
use std::io;
use std::net::SocketAddr;
use tokio::net::TcpStream;

/// Lets `axum::serve(listener, app)` serve admitted connections: each
/// connection is an [`Admitted`] stream that holds its permit until axum
/// (hyper, or an upgraded WebSocket) drops it, touches its lease on every
/// read and write, and ends when the lease is revoked.
///
/// axum's `Listener::accept` cannot fail, so errors of the listening
/// socket itself (rare: the listener's back-off already absorbs running out
/// of descriptors) are logged and the accept is retried after the back-off
/// the listener arms for them, never in a spin.
///
/// ```
/// use axum::{routing::get, Router};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let limiter = admit::Limiter::new(1_000);
/// let listener = admit_tcp::AdmitListener::builder(limiter.clone())
///     .per_ip(64)
///     .bind("127.0.0.1:0")
///     .await?;
/// let app = Router::new().route("/", get(|| async { "hello" }));
/// let server = tokio::spawn(async move { axum::serve(listener, app).await });
/// # server.abort();
/// # Ok(()) }
/// ```
impl axum::serve::Listener for AdmitListener {
    type Io = Admitted<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match AdmitListener::accept(self).await {
                Ok(conn) => return conn,
                // The next accept waits out the back-off armed for this.
                Err(e) => tracing::error!(error = %e, "accept() failed; retrying after a back-off"),
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        AdmitListener::local_addr(self)
    }
}

/// An [`AdmitListener`] that `axum::serve` accepts together with
/// `into_make_service_with_connect_info::<SocketAddr>()`: see
/// [`AdmitListener::with_connect_info`].
pub type ConnectInfoListener = axum::serve::TapIo<AdmitListener, fn(&mut Admitted<TcpStream>)>;

impl AdmitListener {
    /// This listener, ready for an axum app that extracts
    /// `ConnectInfo<SocketAddr>`.
    ///
    /// axum provides the peer address as connect info for its own listener
    /// types only, and Rust's coherence rules keep a crate other than axum
    /// from adding that for a listener of its own; axum's `tap_io` wrapper
    /// does have it for any listener, so this wraps the listener in it
    /// (doing nothing to the streams).
    ///
    /// ```
    /// use axum::{extract::ConnectInfo, routing::get, Router};
    /// use std::net::SocketAddr;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// let listener = admit_tcp::AdmitListener::bind("127.0.0.1:0", admit::Limiter::new(100)).await?;
    /// let app = Router::new().route(
    ///     "/",
    ///     get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
    /// );
    /// let server = tokio::spawn(async move {
    ///     axum::serve(
    ///         listener.with_connect_info(),
    ///         app.into_make_service_with_connect_info::<SocketAddr>(),
    ///     )
    ///     .await
    /// });
    /// # server.abort();
    /// # Ok(()) }
    /// ```
    pub fn with_connect_info(self) -> ConnectInfoListener {
        fn untouched(_: &mut Admitted<TcpStream>) {}
        axum::serve::ListenerExt::tap_io(self, untouched as fn(&mut Admitted<TcpStream>))
    }
}
