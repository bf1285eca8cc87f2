#!/usr/bin/env bash
# Replication between two ferryd on loopback, against rsync and a full copy of
# the same image files, in one run, on the same data:
#   1. wire efficiency: bytes on the wire / changed bytes for one cycle that
#      ships a 1 % random 4 KiB change of a 512 MiB group.
#      goals: <= 1.02 with compression off (incompressible data);
#             < 0.5 with zstd on 70 % compressible data
#             (peer: `zstd -3` of the same changed blocks as one stream)
#   2. time to replicate a 1 % random 4 KiB change of a FERRY_BENCH_GIB (8) GiB
#      group: ferry's cycle (from `replication run` until the replica lists the
#      new recovery point; and until the sender is idle again, which includes
#      the source's clean-up after the acknowledgement) against
#      `rsync --inplace --no-whole-file` of the changed image file onto a copy
#      of its old version and against a full copy (dd) of it; once with cold
#      caches, once warm.
#      goal: ferry >= 10x faster than rsync
#   3. achieved RPO (the lag: age of the latest acknowledged recovery point)
#      with a 30 s interval under a steady 20 MB/s of 64 KiB random writes for
#      FERRY_BENCH_RPO_SECS (180) s into a group of FERRY_BENCH_RPO_GIB
#      (default: part 2's size) GiB, sampled every second: max and p95.
#      goal: max <= 60 s
# Each part runs on a fresh pair of sites (its own data directories).
#
#   bash bench/repl.sh                        # 8 GiB group; ~41 GiB free disk
#   FERRY_BENCH_GIB=2 bash bench/repl.sh      # a smaller group where 8 GiB does not fit
#   FERRY_BENCH_QUICK=1 bash bench/repl.sh    # smoke run: 1 GiB group, 60 s of RPO
#   FERRY_BENCH_RPO_SECS=300 FERRY_BENCH_RPO_GIB=1 bash bench/repl.sh
#   FERRY_BENCH_DIR=/mnt/fast bash bench/repl.sh
#   FERRY_BENCH_PARTS="2 3" bash bench/repl.sh  # only some parts
#   FERRY_BENCH_KEEP=1 bash bench/repl.sh     # keep the daemons' logs
#
# Caches, per timed step of part 2 (each step starts after `sync`, so no dirty
# pages of an earlier step are written back inside it):
#   cold: every file of both ferry stores and both image files is dropped from
#         the page cache (posix_fadvise DONTNEED, no global drop_caches), so
#         ferry reads the changed blocks from disk and rsync both files;
#   warm: every one of those files is read once just before the step, so all
#         of what the step reads is cached (ferry's changed blocks, just
#         written through NBD, and the whole of src.img and dst.img).
# ferry's step ends twice: when the replica lists the point (the figure the
# goal is about), and when the sender is idle again: after the answer the
# source deletes its old base snapshot (its garbage collection copies the
# smaller side of the merge: the change). The peers start only after that,
# so it never overlaps them.
# Every timed step ends durable: ferry's replica flushes before it makes the
# point; rsync and dd are followed by an fsync of the copy, inside the timing.
set -euo pipefail
cd "$(dirname "$0")/.."

quick="${FERRY_BENCH_QUICK:-0}"
if [ "$quick" = 1 ]; then
    gib="${FERRY_BENCH_GIB:-1}" rpo_secs="${FERRY_BENCH_RPO_SECS:-60}" wire_mib=256
else
    gib="${FERRY_BENCH_GIB:-8}" rpo_secs="${FERRY_BENCH_RPO_SECS:-180}" wire_mib=512
fi
base="${FERRY_BENCH_DIR:-/tmp/ferry-bench}"
parts=" ${FERRY_BENCH_PARTS:-1 2 3} "
part() { [[ "$parts" == *" $1 "* ]]; }
rpo_gib="${FERRY_BENCH_RPO_GIB:-$gib}"
interval=30 rate=20000000 # part 3: cycle interval (s), writes (bytes/s)

for tool in fio rsync qemu-img nbdcopy jq zstd python3; do
    command -v "$tool" >/dev/null ||
        { echo "bench/repl.sh needs $tool (apt-get install -y fio rsync qemu-utils libnbd-bin jq zstd)" >&2; exit 1; }
done

# shellcheck source=bench/header.sh
source bench/header.sh
bench_header "== ferry replication bench"
echo "peers:   $(rsync --version | head -1); $(fio --version); $(zstd --version)"
echo "sizes:   part 1 ${wire_mib} MiB per group, part 2 ${gib} GiB, part 3 ${rpo_gib} GiB for ${rpo_secs} s"

cargo build --release --locked --bin ferryd --bin ferry 2>&1 | tail -1
ferryd_bin="$PWD/target/release/ferryd"
ferry_bin="$PWD/target/release/ferry"

# Disk, per part (each part's sites are removed before the next): a group
# takes its size at the replica and up to twice that at the source while a
# merge after a cycle runs; part 2 adds two image files; in part 3 each side
# keeps the retained points' changes (at most the writes of the run) on top.
mkdir -p "$base"
p1_mib=$((6 * wire_mib + 512))
p2_mib=$((5 * gib * 1024))
p3_mib=$((3 * rpo_gib * 1024 + rate * rpo_secs / 1000000 + rate * interval / 1000000))
need_mib=0
part 1 && [ "$p1_mib" -gt "$need_mib" ] && need_mib=$p1_mib
part 2 && [ "$p2_mib" -gt "$need_mib" ] && need_mib=$p2_mib
part 3 && [ "$p3_mib" -gt "$need_mib" ] && need_mib=$p3_mib
need_mib=$((need_mib + 1024))
avail_kib="$(df -Pk "$base" | awk 'NR == 2 {print $4}')"
if [ "$avail_kib" -lt $((need_mib * 1024)) ]; then
    echo "too little free disk under $base: a ${gib} GiB run needs ~$((need_mib / 1024 + 1)) GiB," \
        "$((avail_kib / 1048576)) GiB free; set FERRY_BENCH_GIB (e.g. 2) or FERRY_BENCH_DIR" >&2
    exit 1
fi
work="$(mktemp -d "$base/repl.XXXXXX")"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ "${FERRY_BENCH_KEEP:-0}" = 1 ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

api_a=127.0.0.1:18440 nbd_a=127.0.0.1:18840 partner_a=127.0.0.1:18441
api_b=127.0.0.1:18450 nbd_b=127.0.0.1:18850 partner_b=127.0.0.1:18451

start_site() { # NAME API NBD PARTNER
    "$ferryd_bin" --data "$work/$1" --api "$2" --nbd "$3" --partner-listen "$4" >"$work/$1.log" 2>&1 &
    pids+=("$!")
    for _ in $(seq 100); do grep -q "API listening" "$work/$1.log" 2>/dev/null && return; sleep 0.1; done
    cat "$work/$1.log" >&2
    exit 1
}
# Two fresh sites a and b, paired.
start_pair() {
    start_site a "$api_a" "$nbd_a" "$partner_a"
    pid_a=${pids[-1]}
    start_site b "$api_b" "$nbd_b" "$partner_b"
    pid_b=${pids[-1]}
    fa site init --name site-a >/dev/null
    fb site init --name site-b >/dev/null
    fb partner pair "$(fa partner token 2>/dev/null)" >/dev/null
}
# Stops both sites (cleanly) and removes their data.
stop_pair() {
    kill "$pid_a" "$pid_b"
    wait "$pid_a" "$pid_b" 2>/dev/null || true
    rm -rf "$work/a" "$work/b"
}
fa() { FERRY_TOKEN_FILE="$work/a/admin.token" "$ferry_bin" --server "http://$api_a" "$@"; }
fb() { FERRY_TOKEN_FILE="$work/b/admin.token" "$ferry_bin" --server "http://$api_b" "$@"; }
uri_a() { echo "nbd://$nbd_a/$1"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.3f", b - a}'; }

# The replica's recovery points of GROUP (0 before the first).
points() { { fb -o json recovery-point list "$1" 2>/dev/null || echo '[]'; } | jq length; }
has_points() { [ "$(points "$1")" -ge "$2" ]; }
# The source's acknowledged point of GROUP is NAME and the sender has
# finished that cycle (the clean-up after the acknowledgement included).
done_with() {
    [ "$(fa -o json replication status "$1" | jq -r '"\(.[0].last_point) \(.[0].stats.running)"')" = "$2 false" ]
}
# GROUP has a recovery point (later cycles may already have followed).
has_point() {
    [ "$(fa -o json replication status "$1" | jq -r '.[0].last_point')" != null ]
}
wait_for() { # WHAT SECONDS COMMAND... (polls every $poll s, default 0.2)
    local what=$1 limit=$2 t0=$SECONDS
    shift 2
    until "$@"; do
        if [ $((SECONDS - t0)) -gt "$limit" ]; then
            echo "timed out waiting for $what" >&2
            fa -o json replication status >&2 || true
            tail -20 "$work/a.log" "$work/b.log" >&2
            exit 1
        fi
        sleep "${poll:-0.2}"
    done
}
# "bytes_sent bytes_changed" of GROUP so far, from the sender's figures.
measure() { fa -o json replication measure "$1" | jq -r '"\(.bytes_sent) \(.bytes_changed)"'; }

# Sequential 1 MiB writes over all of a disk. fio's extra arguments choose
# the data (incompressible by default).
fill() { # URI MIB [fio args...]
    fio --output-format=terse --ioengine=nbd --uri="$1" --name=fill --rw=write --bs=1m --iodepth=8 \
        --size="$2m" --refill_buffers "${@:3}" >/dev/null
}
# A 1 % change: random 4 KiB writes, each block at most once, at offsets and
# with data that depend only on SEED and the disk's size. Queue depth 1: with
# more, fio pairs buffers with offsets in completion order and the same seed
# gives other data.
change() { # SEED MIB fio-target-args...
    local seed=$1 mib=$2
    shift 2
    fio --output-format=terse --name=change --rw=randwrite --bs=4k --iodepth=1 --size="${mib}m" \
        --io_size=$((mib * 1048576 / 100 / 4096 * 4096)) --randseed="$seed" --refill_buffers "$@" >/dev/null
}
# The data extents of a sparse file, concatenated, on stdout.
data_extents() {
    python3 - "$1" <<'EOF'
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
off, out = 0, sys.stdout.buffer
while True:
    try:
        d = os.lseek(fd, off, os.SEEK_DATA)
    except OSError:
        break
    h = os.lseek(fd, d, os.SEEK_HOLE)
    out.write(os.pread(fd, h - d, d))
    off = h
EOF
}
# Puts FILES... into the state `cold` (out of the page cache) or `warm`
# (read just now); `sync` first in both cases.
caches() { # cold|warm FILES...
    local mode=$1
    shift
    sync
    if [ "$mode" = warm ]; then
        find "$@" -type f -exec cat {} + >/dev/null
    else
        find "$@" -type f -print0 | python3 -c '
import os, sys
for p in sys.stdin.buffer.read().split(b"\0"):
    if p:
        fd = os.open(p, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
'
    fi
}

new_group() { # GROUP MIB: a group with one volume (slot disk), exported at site A
    fa volume create "$1-disk" --size "$2M" >/dev/null
    fa group create "$1" --slot disk="$1-disk" >/dev/null
    fa export add "$1-disk" --volume "$1-disk" >/dev/null
}

declare -A res

# --- 1. bytes on the wire per changed byte ---
if part 1; then
    # wire_cycle GROUP COMPRESSION [fio data args...]: sets sent, changed and z
    # (the peer's bytes) for the cycle that ships the change
    wire_cycle() {
        local g=$1 comp=$2 s0 c0 s1 c1
        shift 2
        new_group "$g" "$wire_mib"
        fill "$(uri_a "$g-disk")" "$wire_mib" "$@"
        fa replication enable "$g" --partner site-b --interval 1h --compression "$comp" >/dev/null
        wait_for "$g's initial copy" 600 done_with "$g" repl-1
        read -r s0 c0 <<<"$(measure "$g")"
        change 101 "$wire_mib" --ioengine=nbd --uri="$(uri_a "$g-disk")" "$@"
        fa replication run "$g" >/dev/null
        wait_for "$g's second point" 600 done_with "$g" repl-2
        read -r s1 c1 <<<"$(measure "$g")"
        # the peer: the same change written into a sparse file, its data
        # (exactly the changed blocks) through `zstd -3` as one stream
        truncate -s "${wire_mib}M" "$work/change.img"
        change 101 "$wire_mib" --ioengine=psync --filename="$work/change.img" "$@"
        z="$(data_extents "$work/change.img" | zstd -3 -c | wc -c)"
        rm "$work/change.img"
        sent=$((s1 - s0)) changed=$((c1 - c0))
    }
    echo "1. wire efficiency: one cycle of a 1 % random 4 KiB change of ${wire_mib} MiB ..."
    start_pair
    wire_cycle wire-raw off
    res[wire_off]="$(awk -v s="$sent" -v c="$changed" 'BEGIN {printf "%.4f", s / c}')"
    res[wire_off_z]="$(awk -v s="$z" -v c="$changed" 'BEGIN {printf "%.4f", s / c}')"
    echo "  incompressible, compression off: $sent bytes sent for $changed changed: ${res[wire_off]}" \
        "(zstd -3 of the changed blocks: ${res[wire_off_z]})"
    wire_cycle wire-zstd zstd --buffer_compress_percentage=70
    res[wire_zstd]="$(awk -v s="$sent" -v c="$changed" 'BEGIN {printf "%.4f", s / c}')"
    res[wire_zstd_z]="$(awk -v s="$z" -v c="$changed" 'BEGIN {printf "%.4f", s / c}')"
    echo "  70 % compressible, zstd: $sent bytes sent for $changed changed: ${res[wire_zstd]}" \
        "(zstd -3 of the changed blocks: ${res[wire_zstd_z]})"
    stop_pair
fi

# --- 2. time to replicate a 1 % change: ferry, rsync, full copy ---
if part 2; then
    mib=$((gib * 1024))
    src="$work/src.img" dst="$work/dst.img"
    echo "2. a 1 % change of ${gib} GiB: filling the group and the image files ..."
    start_pair
    new_group vm "$mib"
    fill "$(uri_a vm-disk)" "$mib"
    truncate -s "${gib}G" "$src"
    nbdcopy "$(uri_a vm-disk)" "$src"
    cp --sparse=never "$src" "$dst"
    sync
    t0="$(now)"
    fa replication enable vm --partner site-b --interval 1h >/dev/null
    wait_for "vm's initial copy" 3600 has_points vm 1
    res[initial]="$(since "$t0")"
    wait_for "vm's initial copy" 3600 done_with vm repl-1
    echo "  ferry's initial copy: ${res[initial]} s until the point is visible, $(since "$t0") s until the sender is idle"
    rounds=(cold warm)
    for i in "${!rounds[@]}"; do
        mode=${rounds[$i]} seed=$((201 + i)) point=$((i + 2))
        change "$seed" "$mib" --ioengine=nbd --uri="$(uri_a vm-disk)"
        change "$seed" "$mib" --ioengine=psync --filename="$src"
        qemu-img compare -q -f raw -F raw "$(uri_a vm-disk)" "$src" ||
            { echo "ferry's volume and $src differ after the same change" >&2; exit 1; }

        caches "$mode" "$work/a" "$work/b" "$src" "$dst"
        t0="$(now)"
        fa replication run vm >/dev/null
        poll=0.02 wait_for "vm's point repl-$point" 600 has_points vm "$point"
        res[ferry_$mode]="$(since "$t0")"
        # the source's clean-up after the acknowledgement must not overlap the peers
        poll=0.02 wait_for "vm's cycle $point to end" 600 done_with vm "repl-$point"
        res[idle_$mode]="$(since "$t0")"

        caches "$mode" "$src" "$dst"
        t0="$(now)"
        rsync --inplace --no-whole-file "$src" "$dst"
        sync "$dst"
        res[rsync_$mode]="$(since "$t0")"
        cmp -s "$src" "$dst" || { echo "rsync left $dst unlike $src" >&2; exit 1; }

        caches "$mode" "$src" "$dst"
        t0="$(now)"
        dd if="$src" of="$dst" bs=4M iflag=fullblock conv=notrunc,fdatasync status=none
        res[copy_$mode]="$(since "$t0")"
        echo "  $mode caches: ferry ${res[ferry_$mode]} s (sender idle after ${res[idle_$mode]} s)," \
            "rsync ${res[rsync_$mode]} s, full copy ${res[copy_$mode]} s"
    done
    fb export add vm-last --snapshot "vm@repl-$point" --slot disk >/dev/null
    qemu-img compare -q -f raw -F raw "nbd://$nbd_b/vm-last" "$src" ||
        { echo "the replica's repl-$point differs from $src" >&2; exit 1; }
    echo "  the replica's last point equals the changed image file"
    rm -f "$src" "$dst"
    stop_pair
fi

# --- 3. achieved RPO under steady writes ---
if part 3; then
    echo "3. RPO: ${interval} s interval, $((rate / 1000000)) MB/s of 64 KiB random writes for ${rpo_secs} s into ${rpo_gib} GiB ..."
    start_pair
    new_group rpo $((rpo_gib * 1024))
    fill "$(uri_a rpo-disk)" $((rpo_gib * 1024))
    fa replication enable rpo --partner site-b --interval "${interval}s" >/dev/null
    wait_for "rpo's initial copy" 3600 has_point rpo
    # and for the next point, so the first lag sample is not the initial
    # copy's age (its cycle can take longer than the interval)
    first="$(fa -o json replication status rpo | jq -r '.[0].last_point')"
    poll=1 wait_for "a point after the initial copy" 600 \
        eval '[ "$(fa -o json replication status rpo | jq -r ".[0].last_point")" != "$first" ]'
    ok_before="$(fa -o json replication status rpo | jq -r '.[0].stats.cycles_ok')"
    fio --output-format=json --ioengine=nbd --uri="$(uri_a rpo-disk)" --name=steady --rw=randwrite --bs=64k \
        --iodepth=4 --size="${rpo_gib}G" --rate="$rate" --time_based --runtime="$rpo_secs" --refill_buffers \
        >"$work/steady.json" &
    fio_pid=$!
    pids+=("$fio_pid")
    t_begin="$(now)"
    : >"$work/lag.txt"
    while kill -0 "$fio_pid" 2>/dev/null; do
        fa -o json replication status rpo |
            jq -r --arg t "$(now)" '"\($t) \(.[0].lag_seconds) \(.[0].stats.last_cycle_seconds)"' >>"$work/lag.txt"
        sleep 1
    done
    wait "$fio_pid"
    made=$(($(fa -o json replication status rpo | jq -r '.[0].stats.cycles_ok') - ok_before))
    fb -o json recovery-point list rpo >"$work/points.json"
    read -r rpo_max rpo_p95 rpo_n rpo_points rpo_ship rpo_cycle rpo_rate <<<"$(
        python3 - "$work/lag.txt" "$work/points.json" "$work/steady.json" "$t_begin" <<'EOF'
import json, math, sys
rows = [l.split() for l in open(sys.argv[1])]
lags = sorted(float(r[1]) for r in rows if r[1] != "null")
# the sender's cycles: snapshot, shipping and the clean-up after the answer
cycle = max((float(r[2]) for r in rows if r[2] != "null"), default=0.0)
points = json.load(open(sys.argv[2]))
begin = float(sys.argv[4])
# points the source took while the writes ran that retention kept; each one's time from snapshot
# to visible at the replica
during = [p for p in points if p["created"] / 1e9 >= begin]
ship = max(((p["received"] - p["created"]) / 1e9 for p in during), default=0.0)
text = open(sys.argv[3]).read()
bw = json.loads(text[text.index("{"):])["jobs"][0]["write"]["bw_bytes"] / 1e6
p95 = lags[max(0, math.ceil(0.95 * len(lags)) - 1)]
print(f"{lags[-1]:.1f} {p95:.1f} {len(lags)} {len(during)} {ship:.1f} {cycle:.1f} {bw:.1f}")
EOF
    )"
    echo "  $rpo_n samples: lag max $rpo_max s, p95 $rpo_p95 s; $made points made while writing" \
        "(longest snapshot-to-replica $rpo_ship s, longest sender cycle $rpo_cycle s); fio wrote $rpo_rate MB/s"
    stop_pair
fi

# --- the figures against their goals ---
verdict() { awk -v v="$1" -v op="$2" -v g="$3" 'BEGIN {
    ok = (op == "<=") ? v <= g : (op == "<") ? v < g : v >= g
    print ok ? "ok" : "missed" }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.1f", a / b}'; }
row() { printf '%-44s %12s %22s %10s %8s\n' "$1" "${2:-}" "${3:-}" "${4:-}" "${5:-}"; }
echo
row figure ferry peer goal
if part 1; then
    row "wire / changed, compression off" "${res[wire_off]}" "zstd -3: ${res[wire_off_z]}" "<= 1.02" \
        "$(verdict "${res[wire_off]}" "<=" 1.02)"
    row "wire / changed, zstd, 70 % compressible" "${res[wire_zstd]}" "zstd -3: ${res[wire_zstd_z]}" "< 0.5" \
        "$(verdict "${res[wire_zstd]}" "<" 0.5)"
fi
if part 2; then
    for mode in "${rounds[@]}"; do
        r="$(ratio "${res[rsync_$mode]}" "${res[ferry_$mode]}")"
        c="$(ratio "${res[copy_$mode]}" "${res[ferry_$mode]}")"
        ri="$(ratio "${res[rsync_$mode]}" "${res[idle_$mode]}")"
        ci="$(ratio "${res[copy_$mode]}" "${res[idle_$mode]}")"
        row "1 % of ${gib} GiB, $mode: point visible (s)" "${res[ferry_$mode]}" "rsync ${res[rsync_$mode]}"
        row "  rsync / ferry" "${r}x" "" ">= 10x" "$(verdict "$r" ">=" 10)"
        row "  full copy / ferry" "${c}x" "full copy ${res[copy_$mode]}"
        row "  sender idle again (s)" "${res[idle_$mode]}"
        row "  rsync / ferry, to sender idle" "${ri}x" "" ">= 10x" "$(verdict "$ri" ">=" 10)"
        row "  full copy / ferry, to sender idle" "${ci}x"
    done
fi
if part 3; then
    row "RPO, ${interval} s interval, 20 MB/s: max lag (s)" "$rpo_max" "" "<= 60" "$(verdict "$rpo_max" "<=" 60)"
    row "  p95 lag (s)" "$rpo_p95"
fi
echo
echo "wire: the sender's stream bytes (frames, headers, payload; not HTTP/TLS/TCP framing);"
echo "times: until the point is durable and visible at the replica / the copy is fsynced."
