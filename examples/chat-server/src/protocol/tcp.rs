//! The raw TCP line protocol: UTF-8 lines ending in `\n`, at most 4 KiB each.
//!
//! Two pure pieces a fuzzer can drive without a socket: [`LineFramer`] cuts a
//! byte stream into lines (and refuses over-long ones without buffering them),
//! and [`parse_line`] turns one line into a [`Command`].

use super::{check_client_id, check_limit, check_room, check_text, ProtoError};

/// Longest line, in bytes, not counting the `\n` (nor a `\r` before it).
pub const MAX_LINE: usize = 4096;

/// The greeting the server sends first.
pub const GREETING: &str = "HELLO chat 1";

/// A command from a TCP client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `AUTH <token>`
    Auth(String),
    /// `JOIN <room>`
    Join(String),
    /// `LEAVE <room>`
    Leave(String),
    /// `SAY <room> <client_id> <text…>`
    Say {
        /// Target room.
        room: String,
        /// Idempotence key.
        client_id: String,
        /// The rest of the line.
        text: String,
    },
    /// `HISTORY <room> [limit]`
    History {
        /// Room to read.
        room: String,
        /// Page size.
        limit: u32,
    },
    /// `PING`
    Ping,
    /// `QUIT`
    Quit,
}

impl Command {
    /// Whether the command is allowed before `AUTH`.
    pub fn allowed_before_auth(&self) -> bool {
        matches!(self, Command::Auth(_) | Command::Ping | Command::Quit)
    }
}

/// Parses one line (without its `\n`; a trailing `\r` is ignored).
///
/// Never panics. Errors carry the contract's codes: `too_long` for lines
/// over [`MAX_LINE`], `bad_request` for everything else that is not a
/// command (including bytes that are not UTF-8).
pub fn parse_line(line: &[u8]) -> Result<Command, ProtoError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() > MAX_LINE {
        return Err(ProtoError::new("too_long", "lines are at most 4096 bytes"));
    }
    let line = std::str::from_utf8(line)
        .map_err(|_| ProtoError::bad_request("line is not valid UTF-8"))?;
    let (verb, rest) = match line.split_once(' ') {
        Some((v, r)) => (v, r),
        None => (line, ""),
    };
    let arg = |what: &str| -> Result<String, ProtoError> {
        let a = rest.trim();
        if a.is_empty() || a.contains(' ') {
            Err(ProtoError::bad_request(format!(
                "usage: {} {what}",
                verb.to_ascii_uppercase()
            )))
        } else {
            Ok(a.to_owned())
        }
    };
    let no_args = |cmd: Command| -> Result<Command, ProtoError> {
        if rest.trim().is_empty() {
            Ok(cmd)
        } else {
            Err(ProtoError::bad_request(format!(
                "{} takes no arguments",
                verb.to_ascii_uppercase()
            )))
        }
    };
    match verb.to_ascii_uppercase().as_str() {
        "AUTH" => Ok(Command::Auth(arg("<token>")?)),
        "JOIN" => {
            let room = arg("<room>")?;
            check_room(&room)?;
            Ok(Command::Join(room))
        }
        "LEAVE" => {
            let room = arg("<room>")?;
            check_room(&room)?;
            Ok(Command::Leave(room))
        }
        "SAY" => {
            let mut parts = rest.splitn(3, ' ');
            let (Some(room), Some(client_id), Some(text)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(ProtoError::bad_request(
                    "usage: SAY <room> <client_id> <text>",
                ));
            };
            check_room(room)?;
            check_client_id(client_id)?;
            check_text(text)?;
            Ok(Command::Say {
                room: room.to_owned(),
                client_id: client_id.to_owned(),
                text: text.to_owned(),
            })
        }
        "HISTORY" => {
            let mut parts = rest.split(' ').filter(|s| !s.is_empty());
            let room = parts
                .next()
                .ok_or_else(|| ProtoError::bad_request("usage: HISTORY <room> [limit]"))?;
            check_room(room)?;
            let limit = match parts.next() {
                None => None,
                Some(n) => Some(
                    n.parse::<i64>()
                        .map_err(|_| ProtoError::bad_request("limit must be 1 to 200"))?,
                ),
            };
            if parts.next().is_some() {
                return Err(ProtoError::bad_request("usage: HISTORY <room> [limit]"));
            }
            Ok(Command::History {
                room: room.to_owned(),
                limit: check_limit(limit)?,
            })
        }
        "PING" => no_args(Command::Ping),
        "QUIT" => no_args(Command::Quit),
        "" => Err(ProtoError::bad_request("empty line")),
        _ => Err(ProtoError::bad_request("unknown command")),
    }
}

/// Formats a pushed message: `MSG <room> <id> <from> <text>`.
///
/// Text typed in the web client may contain line breaks; on a line
/// protocol they would forge extra lines, so they become spaces here.
pub fn format_msg(room: &str, id: i64, from: &str, text: &str) -> String {
    let text: String = text
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect();
    format!("MSG {room} {id} {from} {text}")
}

/// One unit cut from the byte stream by [`LineFramer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A complete line, without its `\n`.
    Line(Vec<u8>),
    /// A line longer than [`MAX_LINE`]; its bytes were dropped up to the
    /// next `\n`.
    TooLong,
}

/// Cuts a byte stream into lines with bounded memory: an over-long line is
/// reported once and then skipped, never buffered whole.
#[derive(Debug, Default)]
pub struct LineFramer {
    buf: Vec<u8>,
    /// Bytes of `buf` already known to hold no `\n`.
    scanned: usize,
    /// Inside an over-long line already reported: drop up to the next `\n`.
    discarding: bool,
}

impl LineFramer {
    /// An empty framer.
    pub fn new() -> LineFramer {
        LineFramer::default()
    }

    /// Appends bytes read from the socket. Call [`next_frame`](Self::next_frame)
    /// until it returns `None` after each push, which keeps the buffer below
    /// `MAX_LINE` plus one push.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete line, if any.
    pub fn next_frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(pos) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
                let end = self.scanned + pos;
                let mut line: Vec<u8> = self.buf.drain(..=end).collect();
                self.scanned = 0;
                if self.discarding {
                    self.discarding = false;
                    continue;
                }
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if line.len() > MAX_LINE {
                    return Some(Frame::TooLong);
                }
                return Some(Frame::Line(line));
            }
            self.scanned = self.buf.len();
            // One byte of slack for a `\r` that may precede the `\n`.
            if self.buf.len() > MAX_LINE + 1 {
                self.buf.clear();
                self.scanned = 0;
                if !self.discarding {
                    self.discarding = true;
                    return Some(Frame::TooLong);
                }
            }
            return None;
        }
    }

    /// Bytes buffered (for memory accounting in tests).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!(parse_line(b"PING\r"), Ok(Command::Ping));
        assert_eq!(
            parse_line(b"SAY general c1 hello world"),
            Ok(Command::Say {
                room: "general".into(),
                client_id: "c1".into(),
                text: "hello world".into()
            })
        );
        assert_eq!(parse_line(b"\xff").unwrap_err().code, "bad_request");
        assert_eq!(
            parse_line(b"HISTORY general 0").unwrap_err().code,
            "bad_request"
        );
        assert_eq!(parse_line(b"FOO").unwrap_err().code, "bad_request");
    }

    #[test]
    fn frames_and_skips_long_lines() {
        let mut f = LineFramer::new();
        f.push(b"PI");
        assert_eq!(f.next_frame(), None);
        f.push(b"NG\r\n");
        assert_eq!(f.next_frame(), Some(Frame::Line(b"PING".to_vec())));
        f.push(&vec![b'a'; 5000]);
        assert_eq!(f.next_frame(), Some(Frame::TooLong));
        f.push(&vec![b'a'; 5000]);
        assert_eq!(f.next_frame(), None);
        f.push(b"tail\nQUIT\n");
        assert_eq!(f.next_frame(), Some(Frame::Line(b"QUIT".to_vec())));
        assert!(f.buffered() < 16);
    }
}
