//! adopt-axum-listener: an admitted connection is served with its peer
//! address, and one connection over the cap is answered 503 by the listener.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use support::{Program, PATIENCE};

#[test]
fn serves_with_connect_info_and_refuses_over_the_cap() {
    let program = Program::start(
        env!("CARGO_BIN_EXE_adopt-axum-listener"),
        &["--capacity", "1"],
    );

    // A keep-alive connection: admitted, answered, and still holding the
    // only permit after its response.
    let first = TcpStream::connect(program.addr).unwrap();
    first.set_read_timeout(Some(PATIENCE)).unwrap();
    (&first)
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut reader = BufReader::new(&first);
    let mut head = String::new();
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if let Some(n) = line.to_ascii_lowercase().strip_prefix("content-length: ") {
            length = n.trim().parse().unwrap();
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    assert_eq!(String::from_utf8(body).unwrap(), "hello 127.0.0.1\n");

    let mut second = TcpStream::connect(program.addr).unwrap();
    second.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut refused = String::new();
    second.read_to_string(&mut refused).unwrap();
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused:?}");
    assert!(refused.contains("retry-after: 5\r\n"), "{refused:?}");
}
