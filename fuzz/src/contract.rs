//! The contract's rules for names and sizes, written out again here from
//! `docs/chat-contract.md` so the decoders are checked against the contract, not
//! against themselves.

/// Names: `[A-Za-z0-9_-]{1,32}`.
pub fn user_name_ok(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Room names: `[a-z0-9_-]{1,32}`.
pub fn room_name_ok(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// Message text: 1..=4000 characters.
pub fn text_ok(s: &str) -> bool {
    (1..=4000).contains(&s.chars().count())
}

/// Client ids: 1..=64 characters.
pub fn client_id_ok(s: &str) -> bool {
    (1..=64).contains(&s.chars().count())
}

/// Passwords: 8..=128 characters.
pub fn password_ok(s: &str) -> bool {
    (8..=128).contains(&s.chars().count())
}

/// History page sizes: 1..=200.
pub fn limit_ok(n: u32) -> bool {
    (1..=200).contains(&n)
}

/// Error codes the contract names.
pub const ERROR_CODES: &[&str] = &[
    "bad_request",
    "unauthorized",
    "bad_credentials",
    "forbidden",
    "not_found",
    "name_taken",
    "room_exists",
    "too_long",
    "too_large",
    "lagged",
];

/// Turns fuzz bytes into a string that keeps their variety: valid UTF-8 as
/// is, anything else lossily.
pub fn string_of(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// Splits the input into exactly `n` fields at 0xff bytes (never in
/// UTF-8), padding with empty ones: how the structured cases draw several
/// strings from one input.
pub fn fields(data: &[u8], n: usize) -> Vec<String> {
    let mut f: Vec<String> = data.splitn(n, |&b| b == 0xff).map(string_of).collect();
    f.resize(n, String::new());
    f
}
