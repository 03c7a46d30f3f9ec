//! `ws_frame`: the WebSocket JSON frame decoder on arbitrary bytes, and the
//! server's frame encoder on arbitrary strings.
//!
//! * The input as a frame payload: `decode` must not panic; an error is
//!   `bad_request` (or `too_long` past 16 KiB); a command obeys the
//!   contract's rules and survives a re-encode/decode round trip.
//! * The input cut into fields of a well-formed command of every type: the
//!   decoder must accept exactly what the contract allows.
//! * The input as strings in server frames: the encoded JSON must parse back
//!   to the same strings.
//!
//! The connection's dispatcher (`chat_server::ws`'s per-connection handler)
//! needs a live socket and a database, so it is not reachable here; every
//! frame it sees goes through `decode` first.

use crate::contract::{client_id_ok, fields, limit_ok, room_name_ok, text_ok};
use chat_server::protocol::ws::{decode, Msg, ServerFrame, MAX_FRAME};
use chat_server::protocol::Command;
use serde_json::{json, Value};

/// Runs one input.
pub fn run(data: &[u8]) {
    check_frame(data);
    structured(data);
    server_frames(data);
}

/// The canonical JSON of a command.
fn encode(cmd: &Command) -> Value {
    match cmd {
        Command::Auth { token } => json!({"type": "auth", "token": token}),
        Command::Join { room } => json!({"type": "join", "room": room}),
        Command::Leave { room } => json!({"type": "leave", "room": room}),
        Command::Send {
            room,
            text,
            client_id,
        } => json!({"type": "send", "room": room, "text": text, "client_id": client_id}),
        Command::History {
            room,
            before,
            limit,
        } => json!({"type": "history", "room": room, "before": before, "limit": limit}),
        Command::Ping => json!({"type": "ping"}),
        // Not part of the WebSocket protocol: `check_frame` never lets one
        // through to be encoded.
        Command::Quit => json!({"type": "quit"}),
    }
}

/// Decodes a frame and checks whatever came out. Returns the command.
fn check_frame(frame: &[u8]) -> Option<Command> {
    let result = decode(frame);
    if frame.len() > MAX_FRAME {
        let e = result.expect_err("a frame over 16 KiB was decoded");
        assert_eq!(e.code, "too_long");
        return None;
    }
    let cmd = match result {
        Ok(cmd) => cmd,
        Err(e) => {
            assert_eq!(e.code, "bad_request", "{e}");
            assert!(!e.message.is_empty());
            return None;
        }
    };
    match &cmd {
        Command::Auth { .. } | Command::Ping => {}
        Command::Quit => panic!("the WebSocket decoder made a QUIT"),
        Command::Join { room } | Command::Leave { room } => {
            assert!(room_name_ok(room), "bad room {room:?} accepted");
        }
        Command::Send {
            room,
            text,
            client_id,
        } => {
            assert!(room_name_ok(room), "bad room {room:?} accepted");
            assert!(
                text_ok(text),
                "bad text of {} chars accepted",
                text.chars().count()
            );
            assert!(
                client_id_ok(client_id),
                "bad client_id {client_id:?} accepted"
            );
        }
        Command::History { room, limit, .. } => {
            assert!(room_name_ok(room), "bad room {room:?} accepted");
            assert!(limit_ok(*limit), "limit {limit} accepted");
        }
    }
    // What was decoded is what the frame said.
    if let Ok(Value::Object(sent)) = serde_json::from_slice::<Value>(frame) {
        let canonical = encode(&cmd);
        for (k, v) in canonical.as_object().expect("an object") {
            match (k.as_str(), sent.get(k)) {
                // Omitted or null optional fields come back as their default.
                ("before" | "limit", None | Some(Value::Null)) => {}
                // The tag was matched by the decoder itself; with a repeated
                // "type" key, which one counts is the parser's choice.
                ("type", _) => {}
                (_, Some(s)) => assert_eq!(s, v, "field {k}"),
                (_, None) => panic!("field {k} decoded but absent from {sent:?}"),
            }
        }
    }
    let again = serde_json::to_vec(&encode(&cmd)).expect("JSON encodes");
    assert_eq!(decode(&again).as_ref(), Ok(&cmd), "round trip of {cmd:?}");
    Some(cmd)
}

/// Well-formed commands with fields taken from the input: the decoder must
/// accept exactly what the contract allows.
fn structured(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let f = fields(rest, 3);
    let num = |s: &str| -> Value {
        match s.trim().parse::<i64>() {
            Ok(n) => json!(n),
            Err(_) => Value::Null,
        }
    };
    let (frame, valid) = match sel % 6 {
        0 => (json!({"type": "auth", "token": f[0]}), true),
        1 => (json!({"type": "join", "room": f[0]}), room_name_ok(&f[0])),
        2 => (json!({"type": "leave", "room": f[0]}), room_name_ok(&f[0])),
        3 => (
            json!({"type": "send", "room": f[0], "text": f[1], "client_id": f[2]}),
            room_name_ok(&f[0]) && text_ok(&f[1]) && client_id_ok(&f[2]),
        ),
        4 => {
            let limit = num(&f[2]);
            let limit_valid = match &limit {
                Value::Null => true,
                v => v
                    .as_i64()
                    .is_some_and(|n| u32::try_from(n).is_ok_and(limit_ok)),
            };
            (
                json!({"type": "history", "room": f[0], "before": num(&f[1]), "limit": limit}),
                room_name_ok(&f[0]) && limit_valid,
            )
        }
        _ => (json!({"type": "ping", "extra": f[0]}), true),
    };
    let bytes = serde_json::to_vec(&frame).expect("JSON encodes");
    let decoded = check_frame(&bytes);
    if bytes.len() <= MAX_FRAME {
        assert_eq!(
            decoded.is_some(),
            valid,
            "contract says {} for {frame}",
            if valid { "valid" } else { "invalid" }
        );
    }
}

/// Strings from the input in every server frame that carries one: the JSON
/// must parse back to the same strings.
fn server_frames(data: &[u8]) {
    let f = fields(data, 3);
    let (a, b, c) = (f[0].as_str(), f[1].as_str(), f[2].as_str());
    let check = |frame: ServerFrame<'_>, expect: Value| {
        let text = frame.encode();
        let parsed: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("server frame is not JSON ({e}): {text}"));
        assert_eq!(parsed, expect, "{text}");
    };
    check(
        ServerFrame::Error {
            code: "bad_request",
            message: a,
        },
        json!({"type": "error", "code": "bad_request", "message": a}),
    );
    check(
        ServerFrame::Message {
            room: b,
            id: 7,
            from: c,
            text: a,
            ts: "2026-01-01T00:00:00Z",
        },
        json!({"type": "message", "room": b, "id": 7, "from": c, "text": a,
               "ts": "2026-01-01T00:00:00Z"}),
    );
    check(
        ServerFrame::Presence {
            room: a,
            user: b,
            state: "online",
        },
        json!({"type": "presence", "room": a, "user": b, "state": "online"}),
    );
    check(
        ServerFrame::Ack {
            client_id: c,
            id: -1,
        },
        json!({"type": "ack", "client_id": c, "id": -1}),
    );
    let msgs = [Msg {
        id: i64::MAX,
        room: a.to_owned(),
        from: b.to_owned(),
        text: c.to_owned(),
        ts: String::new(),
    }];
    let text = ServerFrame::History {
        room: a,
        messages: &msgs,
    }
    .encode();
    let parsed: Value = serde_json::from_str(&text).expect("history frame is JSON");
    let back: Vec<Msg> =
        serde_json::from_value(parsed["messages"].clone()).expect("messages decode");
    assert_eq!(back, msgs);
}
