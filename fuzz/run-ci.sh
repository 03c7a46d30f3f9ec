#!/usr/bin/env bash
# Builds every fuzz target and runs each one for a short time.
#
#   fuzz/run-ci.sh                 # every target, 30 s each
#   FUZZ_SECONDS=600 fuzz/run-ci.sh limiter_ops tcp_line
#
# Installs cargo-fuzz if it is missing. A crash fails the script and prints
# the crashing input (base64 and hex) so it can be replayed from the log:
#   echo BASE64 | base64 -d > crash && cargo run --manifest-path fuzz/Cargo.toml --bin TARGET -- crash
#
# The committed corpus (corpus/<target>/) seeds each run; what the fuzzer
# finds goes to work/<target>/ (ignored by git), so runs leave the tree clean.
set -euo pipefail
cd "$(dirname "$0")"

seconds="${FUZZ_SECONDS:-30}"
# libFuzzer needs nightly flags; this toolchain is stable.
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

# The crates under test are safe Rust (`forbid(unsafe_code)`), so the runs
# look for panics, overflows and model disagreements rather than memory
# errors: no sanitizer, which keeps executions per second up. Debug
# assertions and overflow checks stay on (cargo-fuzz's default).
build_flags=(--sanitizer none)

echo "building ${targets[*]}"
for t in "${targets[@]}"; do
    cargo fuzz build "${build_flags[@]}" "$t"
done

failed=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "work/$t"
    rm -rf "artifacts/$t"
    mkdir -p "artifacts/$t"
    log="work/$t.log"
    echo "=== $t: ${seconds} s"
    if cargo fuzz run "${build_flags[@]}" "$t" "work/$t" "corpus/$t" -- \
        -max_total_time="$seconds" -timeout=20 -print_final_stats=1 \
        >"$log" 2>&1; then
        grep -E '^(#[0-9]+ +DONE|Done [0-9]+ runs|stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb))' "$log" || true
        grep -Eo 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1 || true
    else
        failed+=("$t")
        echo "!!! $t failed; the end of its log:"
        tail -n 60 "$log"
        for f in "artifacts/$t"/*; do
            [ -f "$f" ] || continue
            echo "--- crashing input $f ($(wc -c <"$f") bytes)"
            echo "base64: $(base64 -w0 "$f")"
            od -A x -t x1z -v "$f" | head -n 64
        done
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzzing found crashes in: ${failed[*]}"
    exit 1
fi
echo "fuzzing: no crashes in ${targets[*]}"
