//! A small HTTP/1.1 client over hyper's connection API, for the JSON API,
//! `/health` and the admin endpoints.
//!
//! Each [`HttpConn`] is one keep-alive connection opened through the
//! [`Connector`] (so it has a loopback source address like every other
//! client); [`request`] opens one for a single request.

use super::net::Connector;
use super::ClientError;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{AUTHORIZATION, CONNECTION, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::Duration;

/// A response with its body read.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// `Retry-After` in seconds, when present and numeric.
    pub retry_after: Option<u64>,
    /// The body.
    pub body: Bytes,
}

impl HttpResponse {
    /// The body parsed as JSON.
    pub fn json(&self) -> Result<serde_json::Value, ClientError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| ClientError::Protocol(format!("response is not JSON: {e}")))
    }
}

/// One HTTP/1.1 keep-alive connection.
#[derive(Debug)]
pub struct HttpConn {
    addr: SocketAddr,
    sender: SendRequest<Full<Bytes>>,
    timeout: Duration,
}

impl HttpConn {
    /// Opens a connection to `addr`.
    pub async fn open(
        connector: &Connector,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let stream = connector.connect(addr).await?;
        let (sender, conn) = tokio::time::timeout(
            timeout,
            hyper::client::conn::http1::handshake(TokioIo::new(stream)),
        )
        .await
        .map_err(|_| ClientError::Timeout)?
        .map_err(|e| ClientError::Protocol(format!("HTTP handshake: {e}")))?;
        // The connection task ends when the connection closes or `sender`
        // is dropped.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(HttpConn {
            addr,
            sender,
            timeout,
        })
    }

    /// Whether the connection can take another request.
    pub fn is_open(&self) -> bool {
        !self.sender.is_closed()
    }

    /// Sends one request and reads the whole response.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<&serde_json::Value>,
        close: bool,
    ) -> Result<HttpResponse, ClientError> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.addr.to_string());
        if let Some(token) = bearer {
            req = req.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        if close {
            req = req.header(CONNECTION, "close");
        }
        let body = match body {
            Some(v) => {
                req = req.header(CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(v.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        let req = req
            .body(body)
            .map_err(|e| ClientError::Protocol(format!("building request: {e}")))?;
        let fut = async {
            self.sender
                .ready()
                .await
                .map_err(|e| ClientError::Protocol(format!("connection not ready: {e}")))?;
            let resp = self
                .sender
                .send_request(req)
                .await
                .map_err(|e| ClientError::Protocol(format!("request failed: {e}")))?;
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get(hyper::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok());
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| ClientError::Protocol(format!("reading body: {e}")))?
                .to_bytes();
            Ok(HttpResponse {
                status,
                retry_after,
                body,
            })
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| ClientError::Timeout)?
    }
}

/// Opens a connection, sends one request with `Connection: close`, and
/// returns the response.
pub async fn request(
    connector: &Connector,
    addr: SocketAddr,
    method: Method,
    path: &str,
    bearer: Option<&str>,
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> Result<HttpResponse, ClientError> {
    let mut conn = HttpConn::open(connector, addr, timeout).await?;
    conn.send(method, path, bearer, body, true).await
}
