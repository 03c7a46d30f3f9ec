//! The chat protocol in both encodings (WebSocket JSON frames and TCP
//! lines), as far as this tool speaks it. Pure functions, no I/O.

use serde_json::{json, Value};

/// What a client asks of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Authenticate with a token.
    Auth(String),
    /// Join a room.
    Join(String),
    /// Leave a room.
    Leave(String),
    /// Post a message.
    Say {
        /// Room name.
        room: String,
        /// Idempotency key, 1..64 chars, no spaces.
        client_id: String,
        /// Message text.
        text: String,
    },
    /// Liveness check.
    Ping,
    /// Close politely.
    Quit,
}

/// What the server says, in either encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// TCP greeting `HELLO chat 1`.
    Hello,
    /// Authenticated.
    Ready {
        /// The user name.
        user: String,
    },
    /// Joined a room.
    Joined(String),
    /// Left a room.
    Left(String),
    /// A message was committed.
    Ack {
        /// The client id it was sent with.
        client_id: String,
        /// Its id in the room.
        id: u64,
    },
    /// A message pushed to a room member.
    Message {
        /// Room name.
        room: String,
        /// Message id.
        id: u64,
        /// Author.
        from: String,
        /// Text.
        text: String,
    },
    /// Someone came or went.
    Presence,
    /// Answer to a ping.
    Pong,
    /// An error; the connection may stay open.
    Error {
        /// Machine-readable code (`lagged`, `bad_request`, ...).
        code: String,
    },
    /// TCP `BUSY retry-after=N`: over capacity, about to close.
    Busy {
        /// Seconds to wait.
        retry_after: Option<u64>,
    },
    /// TCP `BYE`.
    Bye,
    /// The connection closed; a WebSocket close code when there was one.
    Closed(Option<u16>),
    /// Anything else (history, unknown types).
    Other,
}

/// Encodes a command as a WebSocket JSON text frame.
pub fn ws_encode(cmd: &Command) -> String {
    let v = match cmd {
        Command::Auth(token) => json!({"type": "auth", "token": token}),
        Command::Join(room) => json!({"type": "join", "room": room}),
        Command::Leave(room) => json!({"type": "leave", "room": room}),
        Command::Say {
            room,
            client_id,
            text,
        } => json!({"type": "send", "room": room, "text": text, "client_id": client_id}),
        Command::Ping | Command::Quit => json!({"type": "ping"}),
    };
    v.to_string()
}

/// Encodes a command as a TCP line, newline included.
pub fn tcp_encode(cmd: &Command) -> String {
    match cmd {
        Command::Auth(token) => format!("AUTH {token}\n"),
        Command::Join(room) => format!("JOIN {room}\n"),
        Command::Leave(room) => format!("LEAVE {room}\n"),
        Command::Say {
            room,
            client_id,
            text,
        } => format!("SAY {room} {client_id} {}\n", text.replace('\n', " ")),
        Command::Ping => "PING\n".to_string(),
        Command::Quit => "QUIT\n".to_string(),
    }
}

fn str_field(v: &Value, k: &str) -> String {
    v.get(k).and_then(Value::as_str).unwrap_or("").to_string()
}

/// Decodes a WebSocket JSON text frame from the server.
pub fn ws_decode(text: &str) -> Event {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return Event::Other;
    };
    match v.get("type").and_then(Value::as_str).unwrap_or("") {
        "ready" => Event::Ready {
            user: str_field(&v, "user"),
        },
        "joined" => Event::Joined(str_field(&v, "room")),
        "left" => Event::Left(str_field(&v, "room")),
        "ack" => Event::Ack {
            client_id: str_field(&v, "client_id"),
            id: v.get("id").and_then(Value::as_u64).unwrap_or(0),
        },
        "message" => Event::Message {
            room: str_field(&v, "room"),
            id: v.get("id").and_then(Value::as_u64).unwrap_or(0),
            from: str_field(&v, "from"),
            text: str_field(&v, "text"),
        },
        "presence" => Event::Presence,
        "pong" => Event::Pong,
        "error" => Event::Error {
            code: str_field(&v, "code"),
        },
        _ => Event::Other,
    }
}

/// Decodes one TCP line from the server (without its newline).
pub fn tcp_decode(line: &str) -> Event {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let mut words = line.splitn(2, ' ');
    let head = words.next().unwrap_or("");
    let rest = words.next().unwrap_or("");
    match head {
        "HELLO" => Event::Hello,
        "PONG" => Event::Pong,
        "BYE" => Event::Bye,
        "BUSY" => Event::Busy {
            retry_after: rest
                .split_whitespace()
                .find_map(|w| w.strip_prefix("retry-after="))
                .and_then(|s| s.parse().ok()),
        },
        "ERR" => Event::Error {
            code: rest.split_whitespace().next().unwrap_or("").to_string(),
        },
        "OK" => {
            let w: Vec<&str> = rest.split_whitespace().collect();
            match w.as_slice() {
                ["ready", user, ..] => Event::Ready {
                    user: user.to_string(),
                },
                ["joined", room, ..] => Event::Joined(room.to_string()),
                ["left", room, ..] => Event::Left(room.to_string()),
                ["ack", client_id, id, ..] => Event::Ack {
                    client_id: client_id.to_string(),
                    id: id.parse().unwrap_or(0),
                },
                _ => Event::Other,
            }
        }
        "MSG" => {
            let mut p = rest.splitn(4, ' ');
            let room = p.next().unwrap_or("").to_string();
            let id = p.next().and_then(|s| s.parse().ok()).unwrap_or(0);
            let from = p.next().unwrap_or("").to_string();
            let text = p.next().unwrap_or("").to_string();
            Event::Message {
                room,
                id,
                from,
                text,
            }
        }
        _ => Event::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_frames_round_trip_through_the_contract_shapes() {
        let say = Command::Say {
            room: "general".into(),
            client_id: "c1".into(),
            text: "hi there".into(),
        };
        let v: Value = serde_json::from_str(&ws_encode(&say)).unwrap();
        assert_eq!(v["type"], "send");
        assert_eq!(v["client_id"], "c1");
        assert_eq!(
            ws_decode(r#"{"type":"ack","client_id":"c1","id":42}"#),
            Event::Ack {
                client_id: "c1".into(),
                id: 42
            }
        );
        assert_eq!(
            ws_decode(r#"{"type":"message","room":"r","id":7,"from":"u","text":"a b","ts":"x"}"#),
            Event::Message {
                room: "r".into(),
                id: 7,
                from: "u".into(),
                text: "a b".into()
            }
        );
        assert_eq!(
            ws_decode(r#"{"type":"error","code":"lagged"}"#),
            Event::Error {
                code: "lagged".into()
            }
        );
        assert_eq!(ws_decode("not json"), Event::Other);
    }

    #[test]
    fn tcp_lines_parse() {
        assert_eq!(tcp_decode("HELLO chat 1"), Event::Hello);
        assert_eq!(
            tcp_decode("BUSY retry-after=3\r"),
            Event::Busy {
                retry_after: Some(3)
            }
        );
        assert_eq!(
            tcp_decode("OK ready alice"),
            Event::Ready {
                user: "alice".into()
            }
        );
        assert_eq!(
            tcp_decode("OK ack c9 12"),
            Event::Ack {
                client_id: "c9".into(),
                id: 12
            }
        );
        assert_eq!(
            tcp_decode("MSG general 5 bob hello  world"),
            Event::Message {
                room: "general".into(),
                id: 5,
                from: "bob".into(),
                text: "hello  world".into()
            }
        );
        assert_eq!(
            tcp_decode("ERR unauthorized need AUTH"),
            Event::Error {
                code: "unauthorized".into()
            }
        );
        assert_eq!(
            tcp_encode(&Command::Say {
                room: "r".into(),
                client_id: "c".into(),
                text: "two\nlines".into()
            }),
            "SAY r c two lines\n"
        );
    }
}
