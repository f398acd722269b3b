#!/usr/bin/env bash
# What metrics cost: server CPU per request of `megaconn serve` built with the
# per-request metrics (default) and without them (the `metrics` cargo feature
# off), interleaved over ROUNDS rounds; server pinned to core 1, `megaconn load`
# to core 0. Prints a markdown table. Needs: cargo, taskset, python3. Sets no
# sysctls. Run from anywhere; takes ~3 minutes plus two release builds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-5}"
DURATION="${DURATION:-4s}"
PORT="${PORT:-38600}"
work="$(mktemp -d)"
trap 'kill "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
server=""

echo "building with metrics (default) ..." >&2
cargo build --release --quiet --bin megaconn
cp target/release/megaconn "$work/on"
echo "building without metrics ..." >&2
# The root package enables megaconn's default features; the "off" variant is
# built from a copy of the manifest with them disabled (restored right after).
sed 's|^megaconn = { path = "crates/megaconn" }|megaconn = { path = "crates/megaconn", default-features = false }|' Cargo.toml >"$work/Cargo.toml.off"
cp Cargo.toml "$work/Cargo.toml.orig"
cp Cargo.lock "$work/Cargo.lock.orig"
cp "$work/Cargo.toml.off" Cargo.toml
trap 'cp "$work/Cargo.toml.orig" Cargo.toml; cp "$work/Cargo.lock.orig" Cargo.lock; kill "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
CARGO_TARGET_DIR="$work/target-off" cargo build --release --quiet --bin megaconn
cp "$work/target-off/release/megaconn" "$work/off"
cp "$work/Cargo.toml.orig" Cargo.toml
cp "$work/Cargo.lock.orig" Cargo.lock

ticks=$(getconf CLK_TCK)
declare -A results
for round in $(seq 1 "$ROUNDS"); do
  for variant in on off; do
    taskset -c 1 "$work/$variant" serve --listen "127.0.0.1:$PORT" --workers 1 --admin off >/dev/null 2>&1 &
    server=$!
    for _ in $(seq 1 50); do curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.1; done
    before=$(awk '{print $14+$15}' "/proc/$server/stat")
    taskset -c 0 "$work/on" load "http://127.0.0.1:$PORT/" -c 64 -t 1 -d "$DURATION" -q --json "$work/r.json" >/dev/null
    after=$(awk '{print $14+$15}' "/proc/$server/stat")
    kill "$server"; wait "$server" 2>/dev/null || true; server=""
    line=$(python3 -c "import json,sys; r=json.load(open('$work/r.json')); print(r['requests'], round(r['rps']), round(($after-$before)/$ticks*1e6/r['requests'],3))")
    results[$variant]+="$line;"
    echo "round $round $variant: $line" >&2
  done
done
python3 - "${results[on]}" "${results[off]}" <<'PY'
import statistics, sys
def parse(s):
    rows = [r.split() for r in s.strip(';').split(';')]
    return [float(r[1]) for r in rows], [float(r[2]) for r in rows]
on_rps, on_cpu = parse(sys.argv[1]); off_rps, off_cpu = parse(sys.argv[2])
mon, moff = statistics.median(on_cpu), statistics.median(off_cpu)
print("| build | req/s (median) | server CPU µs/request (median) |")
print("|---|---:|---:|")
print(f"| metrics on (default) | {statistics.median(on_rps):.0f} | {mon:.3f} |")
print(f"| metrics off | {statistics.median(off_rps):.0f} | {moff:.3f} |")
print(f"\nOverhead of metrics: {100*(mon-moff)/moff:+.1f}% server CPU per request.")
PY
