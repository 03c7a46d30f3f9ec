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

/// A protocol-level refusal: a stable machine-readable code and a sentence
/// for people. Shared by all three front ends so they say the same thing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtoError {
    /// Stable code (`bad_request`, `unauthorized`, `forbidden`, …).
    pub code: &'static str,
    /// Human-readable explanation.
    pub message: String,
}

impl ProtoError {
    /// A `bad_request` error.
    pub fn bad_request(message: impl Into<String>) -> ProtoError {
        ProtoError {
            code: "bad_request",
            message: message.into(),
        }
    }

    /// An error with any code.
    pub fn new(code: &'static str, message: impl Into<String>) -> ProtoError {
        ProtoError {
            code,
            message: message.into(),
        }
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
