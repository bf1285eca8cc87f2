#!/usr/bin/env bash
# ferry's whole test suite, as CI runs it: installs what the tests need
# (idempotently), then checks formatting and lints and runs every test.
#
#   bash scripts/test.sh            # the full suite
#   FERRY_SOAK=1 bash scripts/test.sh   # plus long soaks (more crash rounds, more cases)
set -euo pipefail
cd "$(dirname "$0")/.."

# --- system packages the tests drive (real clients, no mocks) ---
packages=()
need() { command -v "$1" >/dev/null 2>&1 || packages+=("$2"); }
# the NBD interop suite (crates/ferry/tests/nbd_*.rs, against ferryd; nbdsh also in crates/ferry-nbd/tests) drives these real clients
need qemu-img qemu-utils
need qemu-io qemu-utils
need qemu-storage-daemon qemu-utils
need nbdinfo libnbd-bin
need nbdcopy libnbd-bin
need nbdsh libnbd-bin
need nbdkit nbdkit
need fio fio
need fuse2fs fuse2fs
need mkfs.ext4 e2fsprogs
# replication over a bad link (crates/ferry/tests/replication_faults.rs): two
# network namespaces joined by a veth; the test needs root and fails without
need ip iproute2
# libnbd's Python binding for Debian's python, as nbdsh uses it
[ -e /usr/lib/python3/dist-packages/nbd.py ] || packages+=(python3-libnbd)
if [ ${#packages[@]} -gt 0 ]; then
    echo "installing: ${packages[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # one package may be named twice above; apt takes each once
    apt-get install -y -qq $(printf '%s\n' "${packages[@]}" | sort -u)
fi

# --- how hard the randomized tests push ---
export PROPTEST_CASES="${PROPTEST_CASES:-10000}"
export FERRY_CRASH_ROUNDS="${FERRY_CRASH_ROUNDS:-50}"
if [ "${FERRY_SOAK:-}" = 1 ]; then
    export PROPTEST_CASES=100000 FERRY_CRASH_ROUNDS=1000
fi

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== build (the end-to-end tests run the real binaries)"
cargo build --workspace --bins --locked
echo "== tests (PROPTEST_CASES=$PROPTEST_CASES FERRY_CRASH_ROUNDS=$FERRY_CRASH_ROUNDS)"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast
    cargo test --workspace --locked --doc
else
    cargo test --workspace --locked
fi
echo "== fuzz: a short run of every target (FERRY_FUZZ_SECONDS=${FERRY_FUZZ_SECONDS:=15} each)"
bash scripts/fuzz.sh "$FERRY_FUZZ_SECONDS"
echo "== schemathesis against docs/openapi.json and a live ferryd"
bash scripts/schemathesis.sh
echo "== all tests passed"
