//! Fuzz targets for `admit`, `admit-tcp`'s per-IP table and the chat
//! server's network decoders.
//!
//! Each target is a plain function from bytes to `()` that panics on any
//! disagreement with its reference model or any broken invariant. The
//! `fuzz_targets/*.rs` binaries hand them to libFuzzer; `tests/replay.rs`
//! runs the committed corpus through the very same functions on stable.

pub mod contract;
pub mod http_api;
pub mod keyed_table;
pub mod limiter_ops;
pub mod tcp_line;
pub mod ws_frame;

pub use http_api::run as http_api;
pub use keyed_table::run as keyed_table;
pub use limiter_ops::run as limiter_ops;
pub use tcp_line::run as tcp_line;
pub use ws_frame::run as ws_frame;

/// A fuzz target: one input in, a panic on any failure.
pub type Target = fn(&[u8]);

/// Every target by name, as `cargo fuzz` and the corpus directories name them.
pub const TARGETS: &[(&str, Target)] = &[
    ("limiter_ops", limiter_ops),
    ("keyed_table", keyed_table),
    ("ws_frame", ws_frame),
    ("tcp_line", tcp_line),
    ("http_api", http_api),
];

/// Runs `target` on every file named on the command line (directories are
/// walked one level deep): a way to replay a crash without libFuzzer.
pub fn replay_args(target: Target) {
    let mut n = 0;
    for arg in std::env::args_os().skip(1) {
        let path = std::path::PathBuf::from(arg);
        let files: Vec<_> = if path.is_dir() {
            let mut v: Vec<_> = std::fs::read_dir(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect();
            v.sort();
            v
        } else {
            vec![path]
        };
        for file in files {
            let data = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            eprintln!("replaying {}", file.display());
            target(&data);
            n += 1;
        }
    }
    eprintln!("{n} inputs replayed without a failure");
}
