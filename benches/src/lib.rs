//! Criterion benches for the admit workspace live in `benches/benches/`; this library is empty.
