//! `cargo fuzz run ws_frame`: see `admit_fuzz::ws_frame`. Built without `--cfg fuzzing`
//! (plain `cargo build`), it replays the files named on its command line.
#![cfg_attr(fuzzing, no_main)]

#[cfg(fuzzing)]
libfuzzer_sys::fuzz_target!(|data: &[u8]| admit_fuzz::ws_frame(data));

#[cfg(not(fuzzing))]
fn main() {
    admit_fuzz::replay_args(admit_fuzz::ws_frame);
}
