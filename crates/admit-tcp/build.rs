//! Names the platform features the accept loop relies on, so each list of
//! operating systems is written once, here, and the code asks for the
//! feature (`#[cfg(admit_accept4)]`) instead of repeating the list.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(admit_accept4)");
    println!("cargo::rustc-check-cfg=cfg(admit_keepalive_interval)");
    println!("cargo::rustc-check-cfg=cfg(admit_keepalive_retries)");
    println!("cargo::rustc-check-cfg=cfg(admit_inherited_sockopts)");
    println!("cargo::rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let os = os.as_str();
    // `accept4` (a non-blocking, close-on-exec socket in one call) and
    // `MSG_NOSIGNAL` on `send`: Linux and the BSDs that have both.
    if matches!(
        os,
        "linux" | "android" | "freebsd" | "netbsd" | "openbsd" | "dragonfly" | "illumos"
    ) {
        println!("cargo::rustc-cfg=admit_accept4");
    }
    // Where socket2 can set the keepalive probe interval and count.
    if matches!(
        os,
        "linux" | "android" | "freebsd" | "macos" | "ios" | "netbsd" | "windows"
    ) {
        println!("cargo::rustc-cfg=admit_keepalive_interval");
    }
    if matches!(
        os,
        "linux" | "android" | "freebsd" | "macos" | "ios" | "netbsd"
    ) {
        println!("cargo::rustc-cfg=admit_keepalive_retries");
    }
    // An accepted socket starts with the listening socket's TCP_NODELAY
    // and keepalive settings (tests/policies.rs checks it), so they can be
    // set once on the listener instead of once per connection.
    if matches!(os, "linux" | "android") {
        println!("cargo::rustc-cfg=admit_inherited_sockopts");
    }
}
