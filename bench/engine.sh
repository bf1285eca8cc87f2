#!/usr/bin/env bash
# The engine's speed goals, measured in one run against plain file I/O on the
# same machine and data (see bench/README.md):
#   1. snapshot / clone time of a 1 GiB vs a 1 TiB sparse volume (goal < 2x)
#   2. diff time of 1 % changed blocks on a 64 GiB volume
#   3. 4 KiB random read / write IOPS, engine vs pread/pwrite, with 0 and 32
#      snapshots in the chain (goal >= 0.8x)
#
#   bash bench/engine.sh                      # full run (~14 GiB of disk, a few minutes)
#   FERRY_BENCH_QUICK=1 bash bench/engine.sh  # smoke run with small sizes
#   FERRY_BENCH_DIR=/mnt/fast bash bench/engine.sh   # work under another directory
set -euo pipefail
cd "$(dirname "$0")/.."

quick="${FERRY_BENCH_QUICK:-0}"
base="${FERRY_BENCH_DIR:-/tmp/ferry-bench}"

# shellcheck source=bench/header.sh
source bench/header.sh
bench_header "== ferry engine bench$([ "$quick" = 1 ] && echo ' (QUICK)')"

mkdir -p "$base"
# An earlier run's files still being freed in the background would disturb
# the figures (and hold disk): finish that first.
if compgen -G "$base/.trash.*" >/dev/null; then
    echo "removing the files of an earlier run first ..."
    t0=$SECONDS
    rm -rf "$base"/.trash.* 2>/dev/null || true
    echo "  took $((SECONDS - t0)) s"
fi
if [ "$quick" = 1 ]; then need_gib=2; else need_gib=14; fi
avail_kib="$(df -Pk "$base" | awk 'NR == 2 {print $4}')"
echo "disk:    $((avail_kib / 1048576)) GiB free under $base ($(df -P "$base" | awk 'NR == 2 {print $1}')), ~$need_gib GiB needed"
if [ "$avail_kib" -lt $((need_gib * 1048576)) ]; then
    echo "too little free disk under $base: $((avail_kib / 1048576)) GiB, the bench needs ~$need_gib GiB;" \
        "set FERRY_BENCH_DIR to a roomier directory or use FERRY_BENCH_QUICK=1" >&2
    exit 1
fi
work="$(mktemp -d "$base/engine.XXXXXX")"
# Freeing the run's scattered blocks costs one discard per extent on a file
# system mounted with online discard: minutes on this machine. So the work dir
# is renamed away at once and freed in the background at idle I/O priority
# (the next run waits for it); FERRY_BENCH_CLEANUP=wait frees it before exiting.
cleanup() {
    local trash="$base/.trash.${work##*/}"
    mv "$work" "$trash" 2>/dev/null || trash="$work"
    if [ "${FERRY_BENCH_CLEANUP:-background}" = wait ]; then
        local t0=$SECONDS
        rm -rf "$trash"
        echo "work dir removed in $((SECONDS - t0)) s"
    else
        (setsid nohup ionice -c3 rm -rf "$trash" >/dev/null 2>&1 &)
        echo "work dir renamed to $trash; it is being freed in the background"
    fi
}
trap cleanup EXIT

echo "== build (release)"
cargo bench -p ferry-store --bench engine --locked --no-run 2>&1 | grep -Ev '^\s*(Compiling|Blocking)' || true
FERRY_BENCH_WORK="$work" cargo bench -p ferry-store --bench engine --locked -q
echo "script total: ${SECONDS} s (build included)"
