//! Starts an adoption program as a child process on a free loopback port.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Bound on every read a test waits on, so a broken program fails the test
/// instead of hanging it.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A running program, killed when dropped.
pub struct Program {
    child: Child,
    pub addr: SocketAddr,
}

impl Program {
    /// Runs the binary at `exe` with `args` (plus `--addr 127.0.0.1:0`) and
    /// waits for its `listening on ADDR` line.
    pub fn start(exe: &str, args: &[&str]) -> Program {
        let mut child = Command::new(exe)
            .args(["--addr", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the program");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("read the startup line");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected startup line: {line:?}"))
            .parse()
            .expect("an address");
        Program { child, addr }
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
