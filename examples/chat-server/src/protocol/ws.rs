//! WebSocket frames: JSON text, one object per frame, tagged by `"type"`.

use super::{check_client_id, check_limit, check_room, check_text, Command, ProtoError};
use serde::{Deserialize, Serialize};

/// Largest frame the server accepts; a bigger one closes the socket with 1009.
pub const MAX_FRAME: usize = 16 * 1024;

/// The wire form, before validation.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Raw {
    Auth {
        token: String,
    },
    Join {
        room: String,
    },
    Leave {
        room: String,
    },
    Send {
        room: String,
        text: String,
        client_id: String,
    },
    History {
        room: String,
        before: Option<i64>,
        limit: Option<i64>,
    },
    Ping,
}

/// Decodes one text frame's payload into a validated command.
///
/// Never panics. Any input that is not a valid command — not UTF-8, not
/// JSON, an unknown `type`, a missing field, a value out of range — is a
/// `bad_request` [`ProtoError`].
pub fn decode(frame: &[u8]) -> Result<Command, ProtoError> {
    if frame.len() > MAX_FRAME {
        return Err(ProtoError::new("too_long", "frame exceeds 16 KiB"));
    }
    let raw: Raw = serde_json::from_slice(frame)
        .map_err(|e| ProtoError::bad_request(format!("not a valid command: {e}")))?;
    Ok(match raw {
        Raw::Auth { token } => Command::Auth { token },
        Raw::Join { room } => {
            check_room(&room)?;
            Command::Join { room }
        }
        Raw::Leave { room } => {
            check_room(&room)?;
            Command::Leave { room }
        }
        Raw::Send {
            room,
            text,
            client_id,
        } => {
            check_room(&room)?;
            check_text(&text)?;
            check_client_id(&client_id)?;
            Command::Send {
                room,
                text,
                client_id,
            }
        }
        Raw::History {
            room,
            before,
            limit,
        } => {
            check_room(&room)?;
            Command::History {
                room,
                before,
                limit: check_limit(limit)?,
            }
        }
        Raw::Ping => Command::Ping,
    })
}

/// A stored message as clients see it (`MSG` in the contract).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Msg {
    /// Id, strictly increasing within a room.
    pub id: i64,
    /// Room name.
    pub room: String,
    /// Author's user name.
    pub from: String,
    /// The text.
    pub text: String,
    /// Commit time, RFC 3339 UTC.
    pub ts: String,
}

/// A frame the server sends.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    /// Authenticated.
    Ready {
        /// The user name.
        user: &'a str,
    },
    /// Joined a room.
    Joined {
        /// The room.
        room: &'a str,
    },
    /// Left a room.
    Left {
        /// The room.
        room: &'a str,
    },
    /// Someone came or went.
    Presence {
        /// The room.
        room: &'a str,
        /// Who.
        user: &'a str,
        /// `online` or `offline`.
        state: &'a str,
    },
    /// A message was committed.
    Ack {
        /// The client's id for it.
        client_id: &'a str,
        /// Its id.
        id: i64,
    },
    /// A message in a joined room.
    Message {
        /// The room.
        room: &'a str,
        /// Its id.
        id: i64,
        /// Author.
        from: &'a str,
        /// Text.
        text: &'a str,
        /// Commit time.
        ts: &'a str,
    },
    /// A page of history.
    History {
        /// The room.
        room: &'a str,
        /// Messages, ascending by id.
        messages: &'a [Msg],
    },
    /// Reply to ping.
    Pong,
    /// Something went wrong; the connection stays unless said otherwise.
    Error {
        /// Stable code.
        code: &'a str,
        /// Explanation.
        message: &'a str,
    },
}

impl ServerFrame<'_> {
    /// The frame as JSON text.
    pub fn encode(&self) -> String {
        // Serialising these plain structs cannot fail; fall back to a
        // generic error frame rather than unwrap anyway.
        serde_json::to_string(self)
            .unwrap_or_else(|_| r#"{"type":"error","code":"internal","message":"encode"}"#.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_commands() {
        assert_eq!(decode(br#"{"type":"ping"}"#), Ok(Command::Ping));
        assert_eq!(
            decode(br#"{"type":"history","room":"general"}"#),
            Ok(Command::History {
                room: "general".into(),
                before: None,
                limit: 50
            })
        );
        for bad in [
            &b"{"[..],
            b"\xff\xfe",
            br#"{"type":"nope"}"#,
            br#"{"type":"join","room":"UPPER"}"#,
            br#"{"type":"send","room":"general","text":"","client_id":"a"}"#,
            br#"{"type":"history","room":"general","limit":201}"#,
            br#"[1,2,3]"#,
        ] {
            assert_eq!(decode(bad).unwrap_err().code, "bad_request");
        }
    }
}
