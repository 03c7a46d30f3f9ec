//! The HTTP listener's application: JSON API, the web client and the
//! WebSocket upgrade. Connections are admitted and served by
//! `admit_hyper` (see [`crate::Server::run`]); every request carries the
//! connection's [`admit_hyper::ConnInfo`], whose end signal the WebSocket
//! task watches.
//!
//! What every response of both HTTP listeners shares is added by
//! [`harden`]: the contract's JSON error body on every error (404 and 405
//! included, and the rejections axum makes itself), `nosniff`, and a
//! Content-Security-Policy that keeps the pages from being framed or from
//! running anything but their own files.

use crate::chat::User;
use crate::protocol::http::{
    decode_add_member, decode_credentials, decode_new_room, parse_history_query, MAX_BODY,
};
use crate::protocol::ProtoError;
use crate::session::Session;
use crate::App;
use axum::body::{Body, Bytes};
use axum::extract::{
    FromRequest, FromRequestParts, Path, Query, RawQuery, Request, State, WebSocketUpgrade,
};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// How long a client may take to send a request's headers (slowloris).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's body; past it, 408 and
/// the connection closes, so a trickling body cannot hold its slot.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest room-list page.
pub const MAX_ROOMS_LIMIT: u32 = 500;
/// Room-list page size when the client does not say.
pub const DEFAULT_ROOMS_LIMIT: u32 = 100;

/// The pages' Content-Security-Policy: their own scripts, styles and
/// connections only, and never inside a frame.
pub const CSP: &str = "default-src 'self'; frame-ancestors 'none'";

/// The web client.
const INDEX_HTML: &str = include_str!("../assets/index.html");
const INDEX_JS: &str = include_str!("../assets/index.js");
const INDEX_CSS: &str = include_str!("../assets/index.css");

/// An API error: the contract's `{"error": CODE, "message": TEXT}` body with
/// the status its code implies, and `Retry-After` when it says when.
#[derive(Debug)]
pub struct ApiError(pub ProtoError);

impl From<ProtoError> for ApiError {
    fn from(e: ProtoError) -> Self {
        ApiError(e)
    }
}

/// The HTTP status for an error code.
pub fn status_of(code: &str) -> StatusCode {
    match code {
        "bad_request" => StatusCode::BAD_REQUEST,
        "unauthorized" | "bad_credentials" => StatusCode::UNAUTHORIZED,
        "forbidden" | "quota" => StatusCode::FORBIDDEN,
        "not_found" => StatusCode::NOT_FOUND,
        "method_not_allowed" => StatusCode::METHOD_NOT_ALLOWED,
        "timeout" => StatusCode::REQUEST_TIMEOUT,
        "name_taken" | "room_exists" => StatusCode::CONFLICT,
        "too_large" => StatusCode::PAYLOAD_TOO_LARGE,
        "unsupported_media_type" => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "rate_limited" => StatusCode::TOO_MANY_REQUESTS,
        "busy" | "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The error code for a status, for errors made without one (axum's own
/// rejections, the router's 404 and 405).
fn code_of(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "timeout",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        _ => "internal",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = status_of(self.0.code);
        let body = serde_json::json!({"error": self.0.code, "message": self.0.message});
        let mut res = (status, Json(body)).into_response();
        if let Some(secs) = self.0.retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if status == StatusCode::REQUEST_TIMEOUT {
            // The body was never read to its end: the connection cannot
            // carry another request.
            res.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        res
    }
}

/// A JSON request body: `Content-Type: application/json` (else 415), at
/// most [`MAX_BODY`] bytes (else 413), all of it within [`BODY_TIMEOUT`]
/// (else 408). The bytes go to the fuzzable decoders in
/// [`crate::protocol::http`].
#[derive(Debug)]
pub struct JsonBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, ApiError> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return Err(ApiError(ProtoError::new(
                "unsupported_media_type",
                "send the body as Content-Type: application/json",
            )));
        }
        let read = axum::body::to_bytes(req.into_body(), MAX_BODY);
        match tokio::time::timeout(BODY_TIMEOUT, read).await {
            Ok(Ok(bytes)) => Ok(JsonBody(bytes)),
            Ok(Err(_)) => Err(ApiError(ProtoError::new(
                "too_large",
                "request bodies are at most 16 KiB",
            ))),
            Err(_) => Err(ApiError(ProtoError::new(
                "timeout",
                "the request body did not arrive in time",
            ))),
        }
    }
}

/// The bearer token of a request, if it has one.
pub fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Extractor for an authenticated user.
#[derive(Debug)]
pub struct Auth(pub User);

impl FromRequestParts<Arc<App>> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &Arc<App>,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)
            .ok_or_else(|| ApiError(ProtoError::new("unauthorized", "missing bearer token")))?;
        Ok(Auth(app.chat.authenticate(token).await?))
    }
}

/// What both HTTP listeners' responses share; see the module docs.
pub fn harden<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    router
        .fallback(|| async { ApiError(ProtoError::new("not_found", "no such endpoint")) })
        .layer(axum::middleware::map_response(json_errors))
        .layer(axum::middleware::map_response(security_headers))
}

/// Gives every error the contract's JSON body: handlers already do, but
/// the router's 405 and axum's own rejections come with plain text or
/// nothing.
async fn json_errors(res: Response) -> Response {
    let status = res.status();
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    let detail = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let message = match std::str::from_utf8(&detail).map(str::trim) {
        Ok(text) if !text.is_empty() => text.to_owned(),
        _ => status.canonical_reason().unwrap_or("error").to_owned(),
    };
    let body = serde_json::json!({"error": code_of(status), "message": message}).to_string();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(body))
}

async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    res
}

/// A static file with its content type.
pub fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// The HTTP API router.
pub fn router(app: Arc<App>) -> Router {
    harden(
        Router::new()
            .route("/", get(|| async { Html(INDEX_HTML) }))
            .route(
                "/assets/index.js",
                get(|| async { asset("text/javascript; charset=utf-8", INDEX_JS) }),
            )
            .route(
                "/assets/index.css",
                get(|| async { asset("text/css; charset=utf-8", INDEX_CSS) }),
            )
            .route("/ws", get(ws_upgrade))
            .route("/api/register", post(register))
            .route("/api/login", post(login))
            .route("/api/logout", post(logout))
            .route("/api/rooms", get(list_rooms).post(create_room))
            .route("/api/rooms/{room}/members", post(add_member))
            .route("/api/rooms/{room}/messages", get(messages)),
    )
    .layer(axum::middleware::map_response_with_state(
        app.clone(),
        close_when_draining,
    ))
    .with_state(app)
}

/// Once the server drains, every answer (but a WebSocket upgrade, whose
/// connection the WebSocket task closes with 1001) says `Connection: close`,
/// so keep-alive clients go away after their request instead of lingering.
async fn close_when_draining(State(app): State<Arc<App>>, mut res: Response) -> Response {
    if app.draining() && res.status() != StatusCode::SWITCHING_PROTOCOLS {
        res.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    res
}

async fn register(
    State(app): State<Arc<App>>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let c = decode_credentials(&body)?;
    let token = app.chat.register(c.name, c.password).await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "token": token })),
    )
        .into_response())
}

async fn login(
    State(app): State<Arc<App>>,
    Extension(conn): Extension<admit_hyper::ConnInfo>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    // Malformed bodies and out-of-range fields are 400 here too, as the
    // contract says for every endpoint; only a well-formed but wrong pair
    // of name and password is 401.
    let c = decode_credentials(&body)?;
    let token = app
        .chat
        .login(c.name, c.password, conn.remote_addr.ip())
        .await?;
    Ok(Json(serde_json::json!({ "token": token })).into_response())
}

async fn logout(State(app): State<Arc<App>>, Auth(user): Auth) -> Result<StatusCode, ApiError> {
    app.chat.logout(&user).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `?after=NAME&limit=N` on the room list.
#[derive(Debug, Deserialize)]
pub struct RoomsQuery {
    /// Only rooms whose name sorts after this one.
    pub after: Option<String>,
    /// Page size, 1..=500.
    pub limit: Option<u32>,
}

async fn list_rooms(
    State(app): State<Arc<App>>,
    Auth(user): Auth,
    query: Result<Query<RoomsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ProtoError::bad_request(e.body_text()))?;
    let limit = q.limit.unwrap_or(DEFAULT_ROOMS_LIMIT);
    if !(1..=MAX_ROOMS_LIMIT).contains(&limit) {
        return Err(ProtoError::bad_request("limit must be 1 to 500").into());
    }
    let rooms = app
        .chat
        .hub
        .list(user.user_id, q.after.as_deref(), limit as usize);
    Ok(Json(rooms).into_response())
}

async fn create_room(
    State(app): State<Arc<App>>,
    Auth(user): Auth,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let r = decode_new_room(&body)?;
    app.chat
        .create_room(&user, r.name.clone(), r.private)
        .await?;
    let body = serde_json::json!({"name": r.name, "private": r.private, "owner": &*user.name});
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn add_member(
    State(app): State<Arc<App>>,
    Auth(user): Auth,
    Path(room): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<StatusCode, ApiError> {
    let m = decode_add_member(&body)?;
    app.chat.add_member(&user, &room, m.user).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn messages(
    State(app): State<Arc<App>>,
    Auth(user): Auth,
    Path(room): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let q = parse_history_query(q.as_deref())?;
    let messages = app.chat.history(&user, &room, q.before, q.limit).await?;
    Ok(Json(serde_json::json!({ "messages": messages })).into_response())
}

/// The WebSocket upgrade. Buffers are sized for many idle connections
/// rather than for throughput: the library defaults (128 KiB read buffer,
/// 64 MiB messages) would cost far more per connection than the whole
/// budget and let one client make the server allocate megabytes.
///
/// The upgraded socket keeps the connection's admission (admit-hyper moves
/// the admitted stream into it); the connection's end signal goes along, so
/// the WebSocket task can close with 1013 when the lease is revoked.
async fn ws_upgrade(
    ws: WebSocketUpgrade,
    State(app): State<Arc<App>>,
    Extension(conn): Extension<admit_hyper::ConnInfo>,
) -> Response {
    // The session starts here, so the auth deadline counts from the
    // upgrade request.
    let session = Session::new(app.chat.clone(), app.phase.subscribe());
    ws.read_buffer_size(1024)
        .write_buffer_size(0)
        .max_write_buffer_size(256 * 1024)
        // Frames between 16 KiB and 64 KiB are read and refused with 1009
        // by the connection itself; beyond that the WebSocket layer refuses
        // them before buffering them.
        .max_message_size(64 * 1024)
        .max_frame_size(64 * 1024)
        .on_upgrade(move |socket| crate::ws::run(socket, conn.ending, session))
}
