//! adopt-tcp-echo: connections up to the per-address cap echo lines, the
//! next one from the same address is told BUSY and closed.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use support::{Program, PATIENCE};

fn echo(conn: &TcpStream, text: &str) -> String {
    try_echo(conn, text).unwrap()
}

fn try_echo(conn: &TcpStream, text: &str) -> std::io::Result<String> {
    (&*conn).write_all(format!("{text}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(conn).read_line(&mut line)?;
    Ok(line)
}

#[test]
fn echoes_and_caps_each_address() {
    // Plenty of global room: only the per-address cap can refuse.
    let program = Program::start(
        env!("CARGO_BIN_EXE_adopt-tcp-echo"),
        &["--capacity", "100", "--per-ip", "2"],
    );

    let held: Vec<TcpStream> = (0..2)
        .map(|i| {
            let conn = TcpStream::connect(program.addr).unwrap();
            conn.set_read_timeout(Some(PATIENCE)).unwrap();
            // An answer means the connection was admitted and holds a slot.
            assert_eq!(echo(&conn, &format!("hi {i}")), format!("hi {i}\n"));
            conn
        })
        .collect();

    let mut third = TcpStream::connect(program.addr).unwrap();
    third.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut refused = String::new();
    third.read_to_string(&mut refused).unwrap();
    assert_eq!(refused, "BUSY retry-after=5\n");

    // A slot given back is free for the next connection.
    drop(held);
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let conn = TcpStream::connect(program.addr).unwrap();
        conn.set_read_timeout(Some(PATIENCE)).unwrap();
        // Until the server has seen the hang-ups, this may still be refused.
        if try_echo(&conn, "again").is_ok_and(|line| line == "again\n") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no slot came back");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
