//! Decoding and encoding of everything that crosses the network.
//!
//! Every decoder here is a plain function from bytes to a typed command or a
//! typed error, with no I/O and no server state, so that a fuzzer (or a unit
//! test) can reach it directly. None of them may panic, whatever the input:
//! they are the first code that sees bytes an attacker chose.
//!
//! * [`ws`] — WebSocket JSON text frames.
//! * [`tcp`] — the raw TCP line protocol.
//! * [`http`] — HTTP API request bodies and query strings.
//!
//! The WebSocket and TCP decoders both yield one [`Command`] type, which the
//! session layer ([`crate::session`]) carries out the same way for both.

pub mod http;
pub mod tcp;
pub mod ws;

/// Longest message text, in characters.
pub const MAX_TEXT_CHARS: usize = 4000;
/// Longest client-chosen message id, in characters.
pub const MAX_CLIENT_ID_CHARS: usize = 64;
/// Largest history page.
pub const MAX_HISTORY_LIMIT: u32 = 200;
/// History page size when the client does not say.
pub const DEFAULT_HISTORY_LIMIT: u32 = 50;

/// Longest TCP line, in bytes, not counting the `\n` (nor a `\r` before it).
/// Text is limited to [`MAX_TEXT_CHARS`] characters on both protocols; a
/// line has room for that much text in any script (up to 4 bytes a
/// character) plus the command around it.
pub const MAX_LINE: usize = 16 * 1024;

/// A chat command from a WebSocket or TCP client, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `{"type":"auth","token":T}` / `AUTH <token>`
    Auth {
        /// The bearer token.
        token: String,
    },
    /// `{"type":"join","room":R}` / `JOIN <room>`
    Join {
        /// Room to join.
        room: String,
    },
    /// `{"type":"leave","room":R}` / `LEAVE <room>`
    Leave {
        /// Room to leave.
        room: String,
    },
    /// `{"type":"send",…}` / `SAY <room> <client_id> <text…>`
    Send {
        /// Target room.
        room: String,
        /// Message text, 1..=4000 characters.
        text: String,
        /// Client-chosen idempotence key, 1..=64 characters.
        client_id: String,
    },
    /// `{"type":"history",…}` / `HISTORY <room> [limit]`
    History {
        /// Room to read.
        room: String,
        /// Only messages with a smaller id.
        before: Option<i64>,
        /// Page size, 1..=200.
        limit: u32,
    },
    /// `{"type":"ping"}` / `PING`
    Ping,
    /// `QUIT` (TCP only)
    Quit,
}

impl Command {
    /// Whether the command is allowed before authenticating.
    pub fn allowed_before_auth(&self) -> bool {
        matches!(self, Command::Auth { .. } | Command::Ping | Command::Quit)
    }
}

/// A protocol-level refusal: a stable machine-readable code and a sentence
/// for people. Shared by all three front ends so they say the same thing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtoError {
    /// Stable code (`bad_request`, `unauthorized`, `forbidden`, …).
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
    /// When the client may try again, in seconds, for refusals that pass
    /// (`busy`, `rate_limited`): HTTP sends it as `Retry-After`.
    pub retry_after: Option<u32>,
}

impl ProtoError {
    /// A `bad_request` error.
    pub fn bad_request(message: impl Into<String>) -> ProtoError {
        ProtoError::new("bad_request", message)
    }

    /// An error with any code.
    pub fn new(code: &'static str, message: impl Into<String>) -> ProtoError {
        ProtoError {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The same error, saying when to retry (whole seconds, at least 1).
    pub fn retry_after(mut self, after: std::time::Duration) -> ProtoError {
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        self.retry_after = Some(secs.clamp(1, u32::MAX.into()) as u32);
        self
    }
}

impl std::fmt::Display for ProtoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ProtoError {}

/// Whether `name` is a valid user name: `[A-Za-z0-9_-]{1,32}`.
pub fn valid_user_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Whether `name` is a valid room name: `[a-z0-9_-]{1,32}`.
pub fn valid_room_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Checks a room name, saying what is wrong with it.
pub fn check_room(room: &str) -> Result<(), ProtoError> {
    if valid_room_name(room) {
        Ok(())
    } else {
        Err(ProtoError::bad_request(
            "room names are 1 to 32 characters of a-z, 0-9, _ and -",
        ))
    }
}

/// Checks message text: 1..=4000 characters.
pub fn check_text(text: &str) -> Result<(), ProtoError> {
    let n = text.chars().count();
    if n == 0 || n > MAX_TEXT_CHARS {
        Err(ProtoError::bad_request("text must be 1 to 4000 characters"))
    } else {
        Ok(())
    }
}

/// Checks a client id: 1..=64 characters.
pub fn check_client_id(id: &str) -> Result<(), ProtoError> {
    let n = id.chars().count();
    if n == 0 || n > MAX_CLIENT_ID_CHARS {
        Err(ProtoError::bad_request(
            "client_id must be 1 to 64 characters",
        ))
    } else {
        Ok(())
    }
}

/// Checks a history page size.
pub fn check_limit(limit: Option<i64>) -> Result<u32, ProtoError> {
    match limit {
        None => Ok(DEFAULT_HISTORY_LIMIT),
        Some(n) if (1..=MAX_HISTORY_LIMIT as i64).contains(&n) => Ok(n as u32),
        Some(_) => Err(ProtoError::bad_request("limit must be 1 to 200")),
    }
}
