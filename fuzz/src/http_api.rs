//! `http_api`: every HTTP API request decoder on arbitrary bytes — register
//! and login credentials, new rooms, members, the history query string and
//! the admin bodies (capacity, revoke, faults) — plus the bearer-token
//! header reader.
//!
//! * The input as each body: no panic; errors are `bad_request`, or
//!   `too_large` past 16 KiB, and map to a 4xx status; accepted bodies obey
//!   the contract's rules and survive a re-encode/decode round trip.
//! * The input cut into fields of well-formed bodies: the decoders must
//!   accept exactly what the contract allows.

use crate::contract::{fields, limit_ok, password_ok, room_name_ok, string_of, user_name_ok};
use chat_server::api::{bearer, status_of};
use chat_server::protocol::http::{
    decode_add_member, decode_capacity, decode_credentials, decode_fault, decode_new_room,
    decode_revoke, parse_history_query, AddMember, Credentials, Fault, HistoryQuery, NewRoom,
    Revoke, SetCapacity, MAX_BODY,
};
use chat_server::protocol::ProtoError;
use serde_json::{json, Value};

/// Runs one input.
pub fn run(data: &[u8]) {
    bodies(data);
    query(data);
    header(data);
    structured(data);
}

/// Checks a decoder's refusal: the right code, and a 4xx status.
fn refused(body: &[u8], e: &ProtoError) {
    let expect = if body.len() > MAX_BODY {
        "too_large"
    } else {
        "bad_request"
    };
    assert_eq!(e.code, expect, "{e}");
    assert!(!e.message.is_empty());
    let status = status_of(e.code);
    assert!(status.is_client_error(), "{} answers {status}", e.code);
}

/// Decodes `body` with `decode`; on success checks `valid` and that the
/// canonical JSON of the result decodes to the same value.
fn check<T: PartialEq + std::fmt::Debug>(
    body: &[u8],
    decode: fn(&[u8]) -> Result<T, ProtoError>,
    valid: impl Fn(&T) -> bool,
    encode: impl Fn(&T) -> Value,
) -> Option<T> {
    match decode(body) {
        Ok(v) => {
            assert!(body.len() <= MAX_BODY, "a body over 16 KiB was decoded");
            assert!(valid(&v), "accepted {v:?}");
            let again = serde_json::to_vec(&encode(&v)).expect("JSON encodes");
            assert_eq!(decode(&again).as_ref(), Ok(&v), "round trip");
            Some(v)
        }
        Err(e) => {
            refused(body, &e);
            None
        }
    }
}

fn credentials(c: &Credentials) -> Value {
    json!({"name": c.name, "password": c.password})
}

fn new_room(r: &NewRoom) -> Value {
    json!({"name": r.name, "private": r.private})
}

fn add_member(m: &AddMember) -> Value {
    json!({"user": m.user})
}

fn fault(f: &Fault) -> Value {
    match f {
        Fault::Leak { permits } => json!({"kind": "leak", "permits": permits}),
        Fault::Stall { wakeups } => json!({"kind": "stall", "wakeups": wakeups}),
    }
}

fn bodies(body: &[u8]) {
    check(
        body,
        decode_credentials,
        |c| user_name_ok(&c.name) && password_ok(&c.password),
        credentials,
    );
    check(body, decode_new_room, |r| room_name_ok(&r.name), new_room);
    check(
        body,
        decode_add_member,
        |m| user_name_ok(&m.user),
        add_member,
    );
    check(
        body,
        decode_capacity,
        |_| true,
        |c: &SetCapacity| json!({"capacity": c.capacity}),
    );
    check(
        body,
        decode_revoke,
        |_| true,
        |r: &Revoke| json!({"idle_ms": r.idle_ms}),
    );
    if let Some(Fault::Stall { wakeups }) = check(body, decode_fault, |_| true, fault) {
        // An omitted count means the default of 1000. (serde also takes
        // the fields in order from an array, `["stall", 5]`; only objects
        // can omit one.)
        if let Ok(Value::Object(v)) = serde_json::from_slice::<Value>(body) {
            if !v.contains_key("wakeups") {
                assert_eq!(wakeups, 1000);
            }
        }
    }
}

/// The reference reading of `?before=ID&limit=N`: unknown keys ignored,
/// the last of a repeated key wins, each value must be an integer.
fn reference_query(q: &str) -> Result<HistoryQuery, ()> {
    let mut before = None;
    let mut limit = None;
    for pair in q.split('&') {
        if pair.is_empty() {
            continue;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match k {
            "before" => &mut before,
            "limit" => &mut limit,
            _ => continue,
        };
        *slot = Some(v.parse::<i64>().map_err(|_| ())?);
    }
    let limit = match limit {
        None => 50,
        Some(n) => match u32::try_from(n) {
            Ok(n) if limit_ok(n) => n,
            _ => return Err(()),
        },
    };
    Ok(HistoryQuery { before, limit })
}

fn query(data: &[u8]) {
    assert_eq!(
        parse_history_query(None),
        Ok(HistoryQuery {
            before: None,
            limit: 50
        })
    );
    let q = string_of(data);
    let got = parse_history_query(Some(&q));
    match (&got, reference_query(&q)) {
        (Ok(a), Ok(b)) => assert_eq!(*a, b, "query {q:?}"),
        (Err(e), Err(())) => refused(b"", e),
        (a, b) => panic!("query {q:?}: got {a:?}, reference {b:?}"),
    }
    if let Ok(h) = got {
        let again = match h.before {
            Some(b) => format!("before={b}&limit={}", h.limit),
            None => format!("limit={}", h.limit),
        };
        assert_eq!(parse_history_query(Some(&again)), Ok(h), "{again}");
    }
}

fn header(data: &[u8]) {
    let Ok(value) = http::HeaderValue::from_bytes(data) else {
        return;
    };
    let (parts, ()) = http::Request::builder()
        .header(http::header::AUTHORIZATION, value.clone())
        .body(())
        .expect("a request with a valid header value")
        .into_parts();
    let token = bearer(&parts);
    match value.to_str().ok().and_then(|s| s.strip_prefix("Bearer ")) {
        Some(rest) => {
            let t = token.expect("a Bearer header yields a token");
            assert_eq!(t, rest.trim());
        }
        None => assert_eq!(token, None, "a token from a header that is not Bearer"),
    }
}

/// Well-formed bodies with fields from the input: accepted exactly when
/// the contract allows.
fn structured(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let f = fields(rest, 2);
    let number = |s: &str| s.trim().parse::<u64>().unwrap_or(u64::from(sel));
    let (body, valid): (Value, bool) = match sel % 6 {
        0 => (
            json!({"name": f[0], "password": f[1]}),
            user_name_ok(&f[0]) && password_ok(&f[1]),
        ),
        1 => (
            json!({"name": f[0], "private": sel & 0x80 != 0}),
            room_name_ok(&f[0]),
        ),
        2 => (json!({"user": f[0]}), user_name_ok(&f[0])),
        3 => {
            let n = number(&f[0]);
            (json!({"capacity": n}), u32::try_from(n).is_ok())
        }
        4 => (json!({"idle_ms": number(&f[0])}), true),
        _ => {
            let n = number(&f[1]);
            let fits = u32::try_from(n).is_ok();
            match f[0].as_str() {
                "leak" => (json!({"kind": "leak", "permits": n}), fits),
                "stall" => (json!({"kind": "stall", "wakeups": n}), fits),
                "" => (json!({"kind": "stall"}), true),
                other => (json!({"kind": other, "permits": n}), false),
            }
        }
    };
    let bytes = serde_json::to_vec(&body).expect("JSON encodes");
    let accepted = match sel % 6 {
        0 => check(&bytes, decode_credentials, |_| true, credentials).is_some(),
        1 => check(&bytes, decode_new_room, |_| true, new_room).is_some(),
        2 => check(&bytes, decode_add_member, |_| true, add_member).is_some(),
        3 => decode_capacity(&bytes).is_ok(),
        4 => decode_revoke(&bytes).is_ok(),
        _ => decode_fault(&bytes).is_ok(),
    };
    if bytes.len() <= MAX_BODY {
        assert_eq!(accepted, valid, "contract says valid: {valid} for {body}");
    }
}
