# Sourced by the bench scripts: prints what a figure needs beside it (the
# machine, the commit and whether the work tree had changes, the date).
# Usage: bench_header "== title"
bench_header() {
    echo "$1"
    local cpu mem dirty=""
    cpu="$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2 | sed 's/^ *//' || true)"
    mem="$(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo 2>/dev/null || true)"
    echo "machine: $(nproc) cores${cpu:+ ($cpu)}, ${mem:-? GiB} RAM, $(uname -sr)"
    git diff --quiet HEAD -- crates Cargo.toml Cargo.lock 2>/dev/null || dirty=" + uncommitted changes in the work tree"
    echo "commit:  $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$dirty"
    echo "date:    $(date -u +%Y-%m-%dT%H:%M:%SZ)"
}
