//! adopt-axum-layer: a request is served, one over the cap gets the layer's
//! 503, and /health reports the limiter while it is full.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use support::{Program, PATIENCE};

fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    conn.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn serves_sheds_over_the_cap_and_reports_health() {
    let program = Program::start(env!("CARGO_BIN_EXE_adopt-axum-layer"), &["--capacity", "1"]);

    let hello = get(program.addr, "/");
    assert!(hello.starts_with("HTTP/1.1 200"), "{hello}");
    assert!(hello.ends_with("hello\n"), "{hello}");

    // A streaming response holds the only permit until its body ends.
    let mut stream = TcpStream::connect(program.addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(stream, "GET /ticks HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    while !line.starts_with("tick 0") {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "stream ended early"
        );
    }

    let busy = get(program.addr, "/");
    assert!(busy.starts_with("HTTP/1.1 503"), "{busy}");
    assert!(
        busy.to_ascii_lowercase().contains("retry-after: 2\r\n"),
        "{busy}"
    );

    let health = get(program.addr, "/health");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.contains(r#""in_use":1"#), "{health}");
    assert!(health.contains(r#""state":"saturated""#), "{health}");

    // Hanging up ends the body and gives the permit back.
    drop(reader);
    stream.shutdown(std::net::Shutdown::Both).unwrap();
    drop(stream);
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let health = get(program.addr, "/health");
        if health.contains(r#""in_use":0"#) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "permit never returned: {health}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(get(program.addr, "/").starts_with("HTTP/1.1 200"));
}
