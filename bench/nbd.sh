#!/usr/bin/env bash
# NBD serving speed: fio's nbd engine against ferryd, nbdkit's file plugin and
# qemu-nbd, each serving a 2 GiB file-backed disk, in one run, same jobs, same
# data; prints ferry's ratio to each, and server CPU per operation.
#   jobs: 4 KiB random read QD32, 4 KiB random write QD32,
#         1 MiB sequential read QD8, 1 MiB sequential write QD8
#   goals: ferry >= 1.0x nbdkit on all four; with 16 snapshots in the chain
#          >= 0.9x of ferry's own flat figures; server CPU per 4 KiB op <= nbdkit's
#
#   bash bench/nbd.sh                         # 3 rounds of 10 s per job and target
#   FERRY_BENCH_RUNTIME=5 FERRY_BENCH_ROUNDS=1 bash bench/nbd.sh   # quicker, noisier
# Each job runs in rounds, every target once per round, the first target
# changing from round to round; a target's figure is its median round. On the
# 2-core VM this was written on, one 10 s run of the same job on the same
# server varied by up to 15 % over minutes: single runs decide nothing.
#   FERRY_BENCH_DIR=/mnt/fast bash bench/nbd.sh
set -euo pipefail
cd "$(dirname "$0")/.."

runtime="${FERRY_BENCH_RUNTIME:-10}"
rounds="${FERRY_BENCH_ROUNDS:-3}"
base="${FERRY_BENCH_DIR:-/tmp/ferry-bench}"
size_gib=2

for tool in fio nbdkit qemu-nbd python3; do
    command -v "$tool" >/dev/null || { echo "bench/nbd.sh needs $tool (apt-get install -y fio nbdkit qemu-utils)" >&2; exit 1; }
done

# shellcheck source=bench/header.sh
source bench/header.sh
bench_header "== ferry NBD bench"
echo "peers:   $(nbdkit --version 2>&1 | head -1); $(qemu-nbd --version | head -1); $(fio --version)"

cargo build --release --locked --bin ferryd --bin ferry 2>&1 | tail -1
ferryd_bin="$PWD/target/release/ferryd"
ferry_bin="$PWD/target/release/ferry"

mkdir -p "$base"
avail_kib="$(df -Pk "$base" | awk 'NR == 2 {print $4}')"
if [ "$avail_kib" -lt $((6 * size_gib * 1048576)) ]; then
    echo "too little free disk under $base (needs ~$((6 * size_gib)) GiB); set FERRY_BENCH_DIR" >&2
    exit 1
fi
work="$(mktemp -d "$base/nbd.XXXXXX")"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

port_ferry=18809 port_nbdkit=18810 port_qemu=18811 api=127.0.0.1:18410

# --- the three servers ---
"$ferryd_bin" --data "$work/ferry" --api "$api" --nbd "127.0.0.1:$port_ferry" >"$work/ferryd.log" 2>&1 &
ferry_pid=$!
pids+=("$ferry_pid")
for _ in $(seq 100); do grep -q "NBD listening" "$work/ferryd.log" 2>/dev/null && break; sleep 0.1; done
grep -q "NBD listening" "$work/ferryd.log" || { cat "$work/ferryd.log"; exit 1; }
ferry() { FERRY_TOKEN_FILE="$work/ferry/admin.token" "$ferry_bin" --server "http://$api" "$@" >/dev/null; }
ferry volume create disk --size "${size_gib}G"
ferry export add disk --volume disk
# The same disk again, to take 16 snapshots of: measured in the same rounds
# as the flat one, so that their ratio is not the machine's drift between
# two parts of the run.
ferry volume create disk16 --size "${size_gib}G"
ferry group create bench16 --slot disk=disk16
ferry export add disk16 --volume disk16

truncate -s "${size_gib}G" "$work/nbdkit.img" "$work/qemu.img"
nbdkit --foreground --ipaddr 127.0.0.1 --port "$port_nbdkit" --exit-with-parent file "file=$work/nbdkit.img" &
nbdkit_pid=$!
pids+=("$nbdkit_pid")
qemu-nbd --persistent --shared=16 --format=raw --export-name=disk --bind=127.0.0.1 --port="$port_qemu" \
    --cache=writeback --aio=threads "$work/qemu.img" &
qemu_pid=$!
pids+=("$qemu_pid")

# A target is PORT/EXPORT.
uri() { echo "nbd://127.0.0.1:$1"; }
wait_port() { for _ in $(seq 100); do nbdinfo --size "$(uri "$1")" >/dev/null 2>&1 && return; sleep 0.1; done; echo "no server on $1" >&2; exit 1; }
flat_ferry="$port_ferry/disk" chain_ferry="$port_ferry/disk16" nbdkit_disk="$port_nbdkit/disk" qemu_disk="$port_qemu/disk"
wait_port "$flat_ferry"; wait_port "$nbdkit_disk"; wait_port "$qemu_disk"

# CPU seconds (user + system) a process has used.
cpu_s() { awk -v t="$(getconf CLK_TCK)" '{print ($14 + $15) / t}' "/proc/$1/stat"; }

# fio_run PORT/EXPORT NAME RW BS DEPTH PID [extra...] -> prints "ops/s MiB/s cpu_us_per_op"
fio_run() {
    local port=$1 name=$2 rw=$3 bs=$4 depth=$5 pid=$6
    shift 6
    local c0 c1 out
    c0="$(cpu_s "$pid")"
    out="$(fio --output-format=json --ioengine=nbd --uri="$(uri "$port")" --name="$name" --rw="$rw" \
        --bs="$bs" --iodepth="$depth" --size="${size_gib}G" --time_based --runtime="$runtime" \
        --ramp_time=2 --randrepeat=0 "$@")"
    c1="$(cpu_s "$pid")"
    python3 -c '
import json, sys
text = sys.argv[1]
j = json.loads(text[text.index("{"):])["jobs"][0]
ops = j["read"]["total_ios"] + j["write"]["total_ios"]
iops = j["read"]["iops"] + j["write"]["iops"]
mib = (j["read"]["bw_bytes"] + j["write"]["bw_bytes"]) / 1048576
cpu = float(sys.argv[3]) - float(sys.argv[2])
print(f"{iops:.0f} {mib:.1f} {cpu / ops * 1e6 if ops else 0:.2f}")
' "$out" "$c0" "$c1"
}

# Fill every disk the same way (4 KiB sequential writes: small page-cache
# folios, as the engine bench explains), so reads read data.
echo "filling each disk with ${size_gib} GiB of data ..."
for port in "$flat_ferry" "$chain_ferry" "$nbdkit_disk" "$qemu_disk"; do
    fio --output-format=terse --ioengine=nbd --uri="$(uri "$port")" --name=fill --rw=write --bs=4k \
        --iodepth=32 --size="${size_gib}G" --refill_buffers >/dev/null
done
sync

jobs=("randread 4k 32" "randwrite 4k 32" "read 1m 8" "write 1m 8")
labels=("4 KiB random read QD32" "4 KiB random write QD32" "1 MiB sequential read QD8" "1 MiB sequential write QD8")
declare -A res runs
# Column-wise medians of rounds "a b c;a b c;...".
median() {
    python3 -c '
import statistics, sys
rows = [list(map(float, r.split())) for r in sys.argv[1].split(";") if r.strip()]
print(" ".join(f"{statistics.median(c):.2f}" for c in zip(*rows)))' "$1"
}
# One job at a time on every target in turn, each run starting with no dirty
# pages left by an earlier one (`sync`): whoever runs first would otherwise
# pay for the write-back of everyone's fill and earlier jobs.
measure_job() { # index tag port pid [tag port pid ...]
    local i=$1 rw bs depth round k t n r
    shift
    read -r rw bs depth <<<"${jobs[$i]}"
    local targets=("$@")
    n=$((${#targets[@]} / 3))
    for round in $(seq "$rounds"); do
        for k in $(seq 0 $((n - 1))); do
            t=$(((k + round - 1) % n * 3))
            sync
            r="$(fio_run "${targets[t + 1]}" "$rw" "$rw" "$bs" "$depth" "${targets[t + 2]}")"
            runs[${targets[t]},$i]+="$r;"
            echo "  ${targets[t]}: ${labels[$i]}, round $round: $r"
        done
    done
    for k in $(seq 0 $((n - 1))); do
        res[${targets[k * 3]},$i]="$(median "${runs[${targets[k * 3]},$i]}")"
    done
}
echo "taking 16 snapshots of disk16, 1/16 of it rewritten before each ..."
for s in $(seq 16); do
    fio --output-format=terse --ioengine=nbd --uri="$(uri "$chain_ferry")" --name=churn --rw=randwrite \
        --bs=64k --iodepth=16 --size="${size_gib}G" --io_size=$((size_gib * 1024 / 16))m --randrepeat=0 >/dev/null
    ferry snapshot create bench16 --name "s$s"
done
sync
echo "measuring (${rounds} rounds of ${runtime} s per job and target, ops/s MiB/s server-CPU-µs/op) ..."
# Reads first: a random write job's first writes into the chain's new head
# put its blocks in slots in the order they came, which a later sequential
# read would measure instead of the chain.
for i in 0 2 1 3; do
    measure_job "$i" ferry "$flat_ferry" "$ferry_pid" ferry16 "$chain_ferry" "$ferry_pid" \
        nbdkit "$nbdkit_disk" "$nbdkit_pid" qemu "$qemu_disk" "$qemu_pid"
done
# After the 4 KiB random write job, a 1 MiB read gathers up to 256 pieces
# from the head. Measured apart, since it says what random first writes cost
# a later sequential read, not what the chain costs.
measure_job 2 ferry16frag "$chain_ferry" "$ferry_pid"

echo
printf '%-28s %10s %10s %10s %9s %9s %11s   %s\n' job ferry nbdkit qemu-nbd /nbdkit /qemu-nbd "16 snaps" "CPU µs/op ferry nbdkit qemu"
for i in "${!jobs[@]}"; do
    read -r f_iops f_mib f_cpu <<<"${res[ferry,$i]}"
    read -r k_iops k_mib k_cpu <<<"${res[nbdkit,$i]}"
    read -r q_iops q_mib q_cpu <<<"${res[qemu,$i]}"
    read -r s_iops s_mib s_cpu <<<"${res[ferry16,$i]}"
    python3 - "$f_iops" "$k_iops" "$q_iops" "$s_iops" "$f_cpu" "$k_cpu" "$q_cpu" "${labels[$i]}" <<'EOF'
import sys
f, k, q, s = map(float, sys.argv[1:5])
fc, kc, qc = sys.argv[5:8]
label = sys.argv[8]
r = lambda a, b: f"{a / b:.2f}x" if b else "-"
print(f"{label:<28} {f:>10.0f} {k:>10.0f} {q:>10.0f} {r(f, k):>9} {r(f, q):>9} {r(s, f):>11}   {fc} {kc} {qc}")
EOF
done
# The 16-snapshot write jobs' first round writes blocks the new head does not
# hold yet (a new slot each); later rounds mostly overwrite what the first
# wrote, so their median says how a deep chain writes, and round 1 what the
# first writes after a snapshot cost.
first="${runs[ferry16,1]%%;*}"
read -r first_iops _ <<<"$first"
read -r flat_iops _ <<<"${res[ferry,1]}"
echo
echo "16 snapshots, 4 KiB random write, round 1 only (first writes into the new head):" \
    "$(python3 -c 'import sys; a, b = map(float, sys.argv[1:]); print(f"{a:.0f} ops/s, {a / b:.2f}x flat")' "$first_iops" "$flat_iops")"
read -r frag_iops _ <<<"${res[ferry16frag,2]}"
read -r flat_read_iops _ <<<"${res[ferry,2]}"
echo "16 snapshots, 1 MiB sequential read after the random writes (head's slots in write order):" \
    "$(python3 -c 'import sys; a, b = map(float, sys.argv[1:]); print(f"{a:.0f} ops/s, {a / b:.2f}x flat")' "$frag_iops" "$flat_read_iops")"
echo "ops/s per target (median of ${rounds} rounds); ratios are ferry / peer, and ferry with 16 snapshots / ferry flat."
echo "goals: ferry/nbdkit >= 1.0x; 16 snaps >= 0.9x; ferry CPU/op <= nbdkit's for 4 KiB jobs"
