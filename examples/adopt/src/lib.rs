//! Small helpers the three adoption programs share: where to listen and the
//! one-line startup notice their tests read the bound address from.
#![forbid(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms)]

use std::net::SocketAddr;

/// The address to listen on: `--addr HOST:PORT`, else `ADOPT_ADDR`, else
/// `127.0.0.1:0` (any free loopback port).
pub fn listen_addr() -> String {
    flag("--addr")
        .or_else(|| std::env::var("ADOPT_ADDR").ok())
        .unwrap_or_else(|| "127.0.0.1:0".to_owned())
}

/// A numeric setting: `--NAME N`, else the environment variable `ENV`,
/// else `default`.
///
/// # Panics
///
/// When the value given is not a number; a program's startup is the right
/// place to stop on a bad flag.
pub fn setting(name: &str, env: &str, default: u32) -> u32 {
    flag(&format!("--{name}"))
        .or_else(|| std::env::var(env).ok())
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("--{name} / {env}: not a number: {v:?}"))
        })
        .unwrap_or(default)
}

/// Prints `listening on ADDR` as the first line of stdout, so whoever
/// started the program on port 0 learns the port.
pub fn announce(addr: SocketAddr) {
    println!("listening on {addr}");
}

fn flag(name: &str) -> Option<String> {
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == name {
            return args.next();
        }
        if let Some(value) = arg.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
            return Some(value.to_owned());
        }
    }
    None
}
