//! `tcp_line`: the TCP line protocol on arbitrary bytes, read in arbitrary
//! pieces.
//!
//! The first byte says how the rest is read: the stream is the remaining
//! bytes repeated 1 to 4 times, pushed into a [`LineFramer`] (a tokio-util
//! `Decoder`) whole, a byte at a time, or in pseudo-random pieces. Lines
//! longer than the 16 KiB limit are reachable from short inputs in a second
//! pass that cuts the same stream with a long line of filler in front of it.
//! Checked:
//!
//! * the framer cuts exactly the lines a plain reference cutter finds in the
//!   whole stream, whatever the pieces (a line over 16 KiB is reported
//!   once as too long, a trailing `\r` is dropped);
//! * its buffer stays within one line (the memory bound) after every read;
//! * `parse_line` never panics, refuses with `bad_request` or `too_long`
//!   only, returns commands that obey the contract's rules, and re-parses a
//!   re-encoded command to the same command;
//! * `format_msg` never lets a pushed message forge a second line.

use crate::contract::{client_id_ok, limit_ok, room_name_ok, string_of, text_ok};
use bytes::BytesMut;
use chat_server::protocol::tcp::{format_msg, parse_line, Frame, LineFramer, MAX_LINE};
use chat_server::protocol::Command;
use tokio_util::codec::Decoder;

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&ctrl, rest)) = data.split_first() else {
        return;
    };
    let repeat = usize::from(ctrl >> 6) + 1;
    let stream: Vec<u8> = rest.repeat(repeat);
    let got = frame_and_check(ctrl, &stream);
    // The same stream behind an unfinished line just short of the limit:
    // whatever the input adds before its first `\n` decides whether that
    // line is too long.
    let mut padded = vec![b'p'; MAX_LINE - 8];
    padded.extend_from_slice(&stream);
    frame_and_check(ctrl, &padded);

    for frame in &got {
        if let Frame::Line(line) = frame {
            check_line(line);
        }
    }
    // The parser on its own, on bytes no framer would hand it.
    check_line(rest);
    let text = string_of(rest);
    let pushed = format_msg("general", 1, "al", &text);
    assert!(
        !pushed.contains(['\n', '\r']),
        "a pushed message forges a line: {pushed:?}"
    );
}

/// Cuts `stream` into frames in the pieces `ctrl` chooses, checks them
/// against the reference cutter and the buffer bound, and returns them.
fn frame_and_check(ctrl: u8, stream: &[u8]) -> Vec<Frame> {
    let expect = reference_frames(stream);
    let mut framer = LineFramer::new();
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    let mut pieces = Pieces::new(ctrl, stream.len());
    let mut at = 0;
    while at < stream.len() {
        let n = pieces.next().min(stream.len() - at);
        buf.extend_from_slice(&stream[at..at + n]);
        at += n;
        while let Some(frame) = framer.decode(&mut buf).expect("the framer never errs") {
            got.push(frame);
        }
        assert!(
            buf.len() <= MAX_LINE + 1,
            "framer buffers {} bytes",
            buf.len()
        );
    }
    assert_eq!(got.len(), expect.len(), "number of frames");
    for (i, (g, e)) in got.iter().zip(&expect).enumerate() {
        assert!(g == e, "frame {i} differs: got {g:?}, expected {e:?}");
    }
    got
}

/// How the stream is cut into reads.
struct Pieces {
    mode: u8,
    state: u64,
}

impl Pieces {
    fn new(ctrl: u8, len: usize) -> Pieces {
        Pieces {
            mode: ctrl & 3,
            state: (u64::from(ctrl) << 32 | len as u64) | 1,
        }
    }

    fn next(&mut self) -> usize {
        // xorshift64: deterministic, so a crash replays.
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        match self.mode {
            0 => usize::MAX,
            1 => 1,
            2 => (self.state % 16) as usize + 1,
            _ => (self.state % 8192) as usize + 1,
        }
    }
}

/// The lines of a whole stream, cut the obvious way.
fn reference_frames(stream: &[u8]) -> Vec<Frame> {
    let mut out = Vec::new();
    let mut parts: Vec<&[u8]> = stream.split(|&b| b == b'\n').collect();
    // The last part has no `\n` after it: not a line (yet).
    let tail = parts.pop().unwrap_or_default();
    for line in parts {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        out.push(if line.len() > MAX_LINE {
            Frame::TooLong
        } else {
            Frame::Line(line.to_vec())
        });
    }
    // An unfinished line is reported as too long as soon as it cannot fit,
    // `\r` included.
    if tail.len() > MAX_LINE + 1 {
        out.push(Frame::TooLong);
    }
    out
}

/// The command written back as a line, as a client would send it.
fn encode(cmd: &Command) -> String {
    match cmd {
        Command::Auth { token } => format!("AUTH {token}"),
        Command::Join { room } => format!("JOIN {room}"),
        Command::Leave { room } => format!("LEAVE {room}"),
        Command::Send {
            room,
            client_id,
            text,
        } => format!("SAY {room} {client_id} {text}"),
        Command::History { room, limit, .. } => format!("HISTORY {room} {limit}"),
        Command::Ping => "PING".to_owned(),
        Command::Quit => "QUIT".to_owned(),
    }
}

fn check_line(line: &[u8]) {
    let stripped = line.strip_suffix(b"\r").unwrap_or(line);
    let cmd = match parse_line(line) {
        Ok(cmd) => cmd,
        Err(e) => {
            if stripped.len() > MAX_LINE {
                assert_eq!(e.code, "too_long", "{e}");
            } else {
                assert_eq!(e.code, "bad_request", "{e}");
            }
            assert!(!e.message.is_empty());
            return;
        }
    };
    assert!(stripped.len() <= MAX_LINE, "a line over the limit parsed");
    match &cmd {
        Command::Auth { token: t } => {
            assert!(!t.is_empty() && !t.contains(' '), "token {t:?}");
            assert_eq!(t.trim(), t, "token keeps surrounding blanks");
        }
        Command::Join { room: r } | Command::Leave { room: r } => {
            assert!(room_name_ok(r), "room {r:?}")
        }
        Command::Send {
            room,
            client_id,
            text,
        } => {
            assert!(room_name_ok(room), "room {room:?}");
            assert!(client_id_ok(client_id), "client_id {client_id:?}");
            assert!(!client_id.contains(' '));
            assert!(text_ok(text), "text of {} chars", text.chars().count());
        }
        Command::History {
            room,
            limit,
            before,
        } => {
            assert!(room_name_ok(room), "room {room:?}");
            assert!(limit_ok(*limit), "limit {limit}");
            assert_eq!(*before, None, "the line protocol has no `before`");
        }
        Command::Ping | Command::Quit => {}
    }
    assert_eq!(
        cmd.allowed_before_auth(),
        matches!(cmd, Command::Auth { .. } | Command::Ping | Command::Quit)
    );
    // A CRLF client sends the same line with `\r` at the end; the verb is
    // case-insensitive.
    let line = encode(&cmd);
    assert_eq!(
        parse_line(format!("{line}\r").as_bytes()),
        Ok(cmd.clone()),
        "{line:?}"
    );
    if !line.ends_with('\r') {
        assert_eq!(parse_line(line.as_bytes()), Ok(cmd.clone()), "{line:?}");
    }
    let lower = match line.split_once(' ') {
        Some((verb, rest)) => format!("{} {rest}\r", verb.to_ascii_lowercase()),
        None => format!("{}\r", line.to_ascii_lowercase()),
    };
    assert_eq!(parse_line(lower.as_bytes()), Ok(cmd), "{lower:?}");
}
