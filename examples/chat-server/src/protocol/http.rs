//! HTTP API request bodies and query strings.
//!
//! Each body decoder takes the raw bytes (already capped at
//! [`MAX_BODY`] by the server) and returns a validated request or a
//! `bad_request` [`ProtoError`], never panicking.

use super::{check_limit, valid_room_name, valid_user_name, ProtoError};
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// Largest request body; larger ones get 413.
pub const MAX_BODY: usize = 16 * 1024;

fn json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ProtoError> {
    if body.len() > MAX_BODY {
        return Err(ProtoError::new(
            "too_large",
            "request bodies are at most 16 KiB",
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| ProtoError::bad_request(format!("malformed JSON: {e}")))
}

/// `{"name","password"}` for register and login.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Credentials {
    /// User name, `[A-Za-z0-9_-]{1,32}`.
    pub name: String,
    /// Password, 8..=128 characters.
    pub password: String,
}

/// Decodes and validates a register or login body.
pub fn decode_credentials(body: &[u8]) -> Result<Credentials, ProtoError> {
    let c: Credentials = json(body)?;
    if !valid_user_name(&c.name) {
        return Err(ProtoError::bad_request(
            "names are 1 to 32 characters of A-Z, a-z, 0-9, _ and -",
        ));
    }
    let n = c.password.chars().count();
    if !(8..=128).contains(&n) {
        return Err(ProtoError::bad_request("passwords are 8 to 128 characters"));
    }
    Ok(c)
}

/// `{"name","private"}` to create a room.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct NewRoom {
    /// Room name, `[a-z0-9_-]{1,32}`.
    pub name: String,
    /// Whether only members may read and write it.
    #[serde(default)]
    pub private: bool,
}

/// Decodes and validates a create-room body.
pub fn decode_new_room(body: &[u8]) -> Result<NewRoom, ProtoError> {
    let r: NewRoom = json(body)?;
    if !valid_room_name(&r.name) {
        return Err(ProtoError::bad_request(
            "room names are 1 to 32 characters of a-z, 0-9, _ and -",
        ));
    }
    Ok(r)
}

/// `{"user"}` to add a member.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AddMember {
    /// The user to add.
    pub user: String,
}

/// Decodes and validates an add-member body.
pub fn decode_add_member(body: &[u8]) -> Result<AddMember, ProtoError> {
    let m: AddMember = json(body)?;
    if !valid_user_name(&m.user) {
        return Err(ProtoError::bad_request("not a valid user name"));
    }
    Ok(m)
}

/// `?before=ID&limit=N` on the history endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Only messages with a smaller id.
    pub before: Option<i64>,
    /// Page size, 1..=200, default 50.
    pub limit: u32,
}

/// Parses the history query string (without the `?`). Unknown keys are
/// ignored; a `before` or `limit` that is not an integer in range is a
/// `bad_request`.
pub fn parse_history_query(query: Option<&str>) -> Result<HistoryQuery, ProtoError> {
    let mut before = None;
    let mut limit = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let n = || {
            v.parse::<i64>()
                .map_err(|_| ProtoError::bad_request(format!("{k} must be an integer")))
        };
        match k {
            "before" => before = Some(n()?),
            "limit" => limit = Some(n()?),
            _ => {}
        }
    }
    Ok(HistoryQuery {
        before,
        limit: check_limit(limit)?,
    })
}

/// `{"capacity":N}` for `POST /admin/capacity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct SetCapacity {
    /// The new capacity.
    pub capacity: u32,
}

/// Decodes an admin capacity body.
pub fn decode_capacity(body: &[u8]) -> Result<SetCapacity, ProtoError> {
    json(body)
}

/// `{"idle_ms":N}` for `POST /admin/revoke`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Revoke {
    /// Revoke leases idle at least this long.
    pub idle_ms: u64,
}

/// Decodes an admin revoke body.
pub fn decode_revoke(body: &[u8]) -> Result<Revoke, ProtoError> {
    json(body)
}

/// A fault to inject, for `POST /admin/faults`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// Take `permits` permits and forget them.
    Leak {
        /// How many.
        permits: u32,
    },
    /// Lose the next `wakeups` hand-offs (default 1000).
    Stall {
        /// How many.
        #[serde(default = "default_stall")]
        wakeups: u32,
    },
}

fn default_stall() -> u32 {
    1000
}

/// Decodes an admin fault body.
pub fn decode_fault(body: &[u8]) -> Result<Fault, ProtoError> {
    json(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes() {
        assert!(decode_credentials(br#"{"name":"al","password":"12345678"}"#).is_ok());
        assert!(decode_credentials(br#"{"name":"a l","password":"12345678"}"#).is_err());
        assert!(decode_credentials(br#"{"name":"al","password":"short"}"#).is_err());
        assert_eq!(
            parse_history_query(Some("before=10&limit=5")),
            Ok(HistoryQuery {
                before: Some(10),
                limit: 5
            })
        );
        assert!(parse_history_query(Some("limit=0")).is_err());
        assert_eq!(
            decode_fault(br#"{"kind":"leak","permits":3}"#),
            Ok(Fault::Leak { permits: 3 })
        );
        assert!(decode_fault(br#"{"kind":"boom"}"#).is_err());
    }
}
