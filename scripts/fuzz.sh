#!/usr/bin/env bash
# A short libFuzzer run of every target in fuzz/ (cargo-fuzz, nightly), as the
# test command runs it; installs cargo-fuzz when missing. A crash fails the
# run and leaves its input in fuzz/artifacts/TARGET/.
#
#   bash scripts/fuzz.sh          # 15 s per target
#   bash scripts/fuzz.sh 600      # a longer soak
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-15}"

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzzing needs the nightly toolchain (rustup toolchain install nightly)" >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install cargo-fuzz --locked --quiet
fi
cargo +nightly fuzz build
for target in $(cargo +nightly fuzz list); do
    echo "-- $target (${seconds} s)"
    # -rss_limit_mb keeps a memory blow-up a finding, not a machine problem
    log="$(mktemp)"
    if ! cargo +nightly fuzz run "$target" -- -max_total_time="$seconds" -rss_limit_mb=2048 >"$log" 2>&1; then
        tail -40 "$log" >&2
        rm -f "$log"
        echo "fuzz target $target failed; the input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
    grep -E '^Done' "$log" || true
    rm -f "$log"
done
