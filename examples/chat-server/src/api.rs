//! The HTTP listener's application: JSON API, the web client and the
//! WebSocket upgrade. Connections are admitted and served by
//! `admit_hyper` (see [`crate::Server::run`]); every request carries the
//! connection's [`admit_hyper::ConnInfo`], whose end signal the WebSocket
//! task watches.

use crate::chat::Session;
use crate::protocol::http::{
    decode_add_member, decode_credentials, decode_new_room, parse_history_query, MAX_BODY,
};
use crate::protocol::ProtoError;
use crate::App;
use axum::body::Body;
use axum::extract::{FromRequestParts, Path, RawQuery, State, WebSocketUpgrade};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use std::sync::Arc;
use std::time::Duration;

/// How long a client may take to send a request's headers (slowloris).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The web client.
const INDEX_HTML: &str = include_str!("../assets/index.html");

/// An API error: the contract's `{"error": CODE, "message": TEXT}` body with
/// the status its code implies.
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
        "forbidden" => StatusCode::FORBIDDEN,
        "not_found" => StatusCode::NOT_FOUND,
        "name_taken" | "room_exists" => StatusCode::CONFLICT,
        "too_large" => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": self.0.code, "message": self.0.message});
        (status_of(self.0.code), Json(body)).into_response()
    }
}

/// Reads a request body of at most [`MAX_BODY`] bytes; larger gets 413.
pub async fn body_bytes(body: Body) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        ApiError(ProtoError::new(
            "too_large",
            "request bodies are at most 16 KiB",
        ))
    })
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
pub struct Auth(pub Session);

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

/// The HTTP API router.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(|| async { Html(INDEX_HTML) }))
        .route("/ws", get(ws_upgrade))
        .route("/api/register", post(register))
        .route("/api/login", post(login))
        .route("/api/rooms", get(list_rooms).post(create_room))
        .route("/api/rooms/{room}/members", post(add_member))
        .route("/api/rooms/{room}/messages", get(messages))
        .fallback(|| async { ApiError(ProtoError::new("not_found", "no such endpoint")) })
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
    if app.draining.load(std::sync::atomic::Ordering::Acquire)
        && res.status() != StatusCode::SWITCHING_PROTOCOLS
    {
        res.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    res
}

async fn register(State(app): State<Arc<App>>, body: Body) -> Result<Response, ApiError> {
    let c = decode_credentials(&body_bytes(body).await?)?;
    let token = app.chat.register(c.name, c.password).await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "token": token })),
    )
        .into_response())
}

async fn login(State(app): State<Arc<App>>, body: Body) -> Result<Response, ApiError> {
    // Malformed bodies and out-of-range fields are 400 here too, as the
    // contract says for every endpoint; only a well-formed but wrong pair
    // of name and password is 401.
    let c = decode_credentials(&body_bytes(body).await?)?;
    let token = app.chat.login(c.name, c.password).await?;
    Ok(Json(serde_json::json!({ "token": token })).into_response())
}

async fn list_rooms(State(app): State<Arc<App>>, Auth(s): Auth) -> Response {
    Json(app.chat.hub.list(s.user_id)).into_response()
}

async fn create_room(
    State(app): State<Arc<App>>,
    Auth(s): Auth,
    body: Body,
) -> Result<Response, ApiError> {
    let r = decode_new_room(&body_bytes(body).await?)?;
    app.chat.create_room(&s, r.name.clone(), r.private).await?;
    let body = serde_json::json!({"name": r.name, "private": r.private, "owner": &*s.name});
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn add_member(
    State(app): State<Arc<App>>,
    Auth(s): Auth,
    Path(room): Path<String>,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let m = decode_add_member(&body_bytes(body).await?)?;
    app.chat.add_member(&s, &room, m.user).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn messages(
    State(app): State<Arc<App>>,
    Auth(s): Auth,
    Path(room): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let q = parse_history_query(q.as_deref())?;
    let messages = app.chat.history(&s, &room, q.before, q.limit).await?;
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
    let goodbye = app.goodbye.subscribe();
    let chat = app.chat.clone();
    ws.read_buffer_size(1024)
        .write_buffer_size(0)
        .max_write_buffer_size(256 * 1024)
        // Frames between 16 KiB and 64 KiB are read and refused with 1009
        // by the connection itself; beyond that the WebSocket layer refuses
        // them before buffering them.
        .max_message_size(64 * 1024)
        .max_frame_size(64 * 1024)
        .on_upgrade(move |socket| crate::ws::run(socket, conn.ending, chat, goodbye))
}
