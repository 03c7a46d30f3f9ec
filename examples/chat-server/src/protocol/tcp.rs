//! The raw TCP line protocol: UTF-8 lines ending in `\n`, at most 16 KiB each.
//!
//! Two pure pieces a fuzzer can drive without a socket: [`LineFramer`], a
//! `tokio_util` [`Decoder`] that cuts a byte stream into lines (and refuses
//! over-long ones without buffering them), and [`parse_line`], which turns
//! one line into a [`Command`].
//!
//! `tokio_util`'s own `LinesCodec` is close, but it reports an over-long
//! line or invalid UTF-8 as a decoder error, and a `FramedRead` ends its
//! stream after the first error: one bad line would end the connection,
//! where the protocol answers `ERR` and carries on.

pub use super::MAX_LINE;
use super::{check_client_id, check_limit, check_room, check_text, Command, ProtoError};
use bytes::BytesMut;
use tokio_util::codec::Decoder;

/// The greeting the server sends first.
pub const GREETING: &str = "HELLO chat 1";

/// Parses one line (without its `\n`; a trailing `\r` is ignored).
///
/// Never panics. Errors carry the contract's codes: `too_long` for lines
/// over [`MAX_LINE`], `bad_request` for everything else that is not a
/// command (including bytes that are not UTF-8).
pub fn parse_line(line: &[u8]) -> Result<Command, ProtoError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() > MAX_LINE {
        return Err(too_long());
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
        "AUTH" => Ok(Command::Auth {
            token: arg("<token>")?,
        }),
        "JOIN" => {
            let room = arg("<room>")?;
            check_room(&room)?;
            Ok(Command::Join { room })
        }
        "LEAVE" => {
            let room = arg("<room>")?;
            check_room(&room)?;
            Ok(Command::Leave { room })
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
            Ok(Command::Send {
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
                before: None,
                limit: check_limit(limit)?,
            })
        }
        "PING" => no_args(Command::Ping),
        "QUIT" => no_args(Command::Quit),
        "" => Err(ProtoError::bad_request("empty line")),
        _ => Err(ProtoError::bad_request("unknown command")),
    }
}

/// The refusal for a line over [`MAX_LINE`].
pub fn too_long() -> ProtoError {
    ProtoError::new("too_long", "lines are at most 16384 bytes")
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
    /// A complete line, without its `\n` (nor a `\r` before it).
    Line(Vec<u8>),
    /// A line longer than [`MAX_LINE`]; its bytes were dropped up to the
    /// next `\n`.
    TooLong,
}

/// Cuts a byte stream into lines with bounded memory: an over-long line is
/// reported once and then skipped, never buffered whole.
#[derive(Debug, Default)]
pub struct LineFramer {
    /// Bytes at the front of the buffer already known to hold no `\n`.
    scanned: usize,
    /// Inside an over-long line already reported: drop up to the next `\n`.
    discarding: bool,
}

impl LineFramer {
    /// A framer at the start of a stream.
    pub fn new() -> LineFramer {
        LineFramer::default()
    }
}

impl Decoder for LineFramer {
    type Item = Frame;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, std::io::Error> {
        loop {
            if let Some(pos) = buf[self.scanned..].iter().position(|&b| b == b'\n') {
                let end = self.scanned + pos;
                let mut line = buf.split_to(end + 1);
                self.scanned = 0;
                if self.discarding {
                    self.discarding = false;
                    continue;
                }
                line.truncate(end);
                if line.last() == Some(&b'\r') {
                    line.truncate(end - 1);
                }
                if line.len() > MAX_LINE {
                    return Ok(Some(Frame::TooLong));
                }
                return Ok(Some(Frame::Line(line.to_vec())));
            }
            self.scanned = buf.len();
            // One byte of slack for a `\r` that may precede the `\n`.
            if buf.len() > MAX_LINE + 1 {
                buf.clear();
                self.scanned = 0;
                if !self.discarding {
                    self.discarding = true;
                    return Ok(Some(Frame::TooLong));
                }
            }
            return Ok(None);
        }
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
            Ok(Command::Send {
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
        let mut buf = BytesMut::new();
        let mut next = |buf: &mut BytesMut, data: &[u8]| {
            buf.extend_from_slice(data);
            f.decode(buf).unwrap()
        };
        assert_eq!(next(&mut buf, b"PI"), None);
        assert_eq!(
            next(&mut buf, b"NG\r\n"),
            Some(Frame::Line(b"PING".to_vec()))
        );
        let full = vec![b'a'; MAX_LINE];
        assert_eq!(next(&mut buf, &full), None);
        assert_eq!(next(&mut buf, b"\n"), Some(Frame::Line(full.clone())));
        assert_eq!(
            next(&mut buf, &vec![b'a'; MAX_LINE + 5]),
            Some(Frame::TooLong)
        );
        assert_eq!(next(&mut buf, &vec![b'a'; MAX_LINE + 5]), None);
        assert_eq!(
            next(&mut buf, b"tail\nQUIT\n"),
            Some(Frame::Line(b"QUIT".to_vec()))
        );
        assert!(buf.is_empty());
    }
}
