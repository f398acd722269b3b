#!/usr/bin/env bash
# What metrics cost: server CPU per request of `megaconn serve` built with the
# per-request metrics (default) and without them (the `metrics` cargo feature
# off), interleaved over ROUNDS rounds; server pinned to core 1, `megaconn load`
# to core 0. Prints a markdown table. Needs: cargo, taskset, python3. Sets no
# sysctls. Run from anywhere; takes ROUNDS × 2 × (DURATION + ~2 s) plus two
# release builds (the "off" one in target/metrics-off, kept between runs).
#
# Resolution: server CPU is the sum of the first field of
# /proc/PID/task/*/schedstat (nanoseconds on the CPU, every thread of the
# server) read before and after each load run, not utime+stime from
# /proc/PID/stat, which moves in 10 ms ticks (one tick is ~0.25% of a 4 s run,
# the size of the effect being measured). The table gives the median and the
# min–max over the rounds and the overhead with its spread (the difference of
# medians, and the range of paired on/off differences round by round): when
# that range straddles 0 the honest answer is "no measurable difference".
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-7}"
DURATION="${DURATION:-8s}"
PORT="${PORT:-38600}"
work="$(mktemp -d)"
trap 'kill "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
server=""

echo "building with metrics (default) ..." >&2
cargo build --release --quiet --bin megaconn
cp target/release/megaconn "$work/on"
echo "building without metrics ..." >&2
# The root package enables megaconn's default features; the "off" variant is
# built from a copy of the sources (target/metrics-off/src: Cargo.toml with
# them disabled, Cargo.lock, crates/) so the work tree is never modified, into
# target/metrics-off (kept between runs, so a rerun builds incrementally).
off_src="$PWD/target/metrics-off/src"
mkdir -p "$off_src"
rm -rf "$off_src/crates"
cp -a Cargo.lock crates "$off_src/"
sed 's|^megaconn = { path = "crates/megaconn" }|megaconn = { path = "crates/megaconn", default-features = false }|' Cargo.toml >"$off_src/Cargo.toml"
grep -q 'default-features = false' "$off_src/Cargo.toml" || { echo "could not disable megaconn's default features in Cargo.toml" >&2; exit 1; }
sed -i 's|^exclude = \["bench/peers"\]|exclude = []|' "$off_src/Cargo.toml"
(cd "$off_src" && CARGO_TARGET_DIR="$OLDPWD/target/metrics-off" cargo build --release --quiet --bin megaconn)
cp "target/metrics-off/release/megaconn" "$work/off"

# Nanoseconds on the CPU, all threads of PID (/proc/PID/task/*/schedstat).
cpu_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{ s += $1 } END { printf "%.0f\n", s }'; }
declare -A results
for round in $(seq 1 "$ROUNDS"); do
  for variant in on off; do
    taskset -c 1 "$work/$variant" serve --listen "127.0.0.1:$PORT" --workers 1 --admin off >/dev/null 2>&1 &
    server=$!
    for _ in $(seq 1 50); do curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.1; done
    before=$(cpu_ns "$server")
    taskset -c 0 "$work/on" load "http://127.0.0.1:$PORT/" -c 64 -t 1 -d "$DURATION" -q --json "$work/r.json" >/dev/null
    after=$(cpu_ns "$server")
    kill "$server"; wait "$server" 2>/dev/null || true; server=""
    line=$(python3 -c "import json,sys; r=json.load(open('$work/r.json')); print(r['requests'], round(r['rps']), round(($after-$before)/1e3/r['requests'],4))")
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
diffs = [100 * (a - b) / b for a, b in zip(on_cpu, off_cpu)]
print("| build | req/s (median) | server CPU µs/request: median (min–max) |")
print("|---|---:|---:|")
print(f"| metrics on (default) | {statistics.median(on_rps):.0f} | {mon:.3f} ({min(on_cpu):.3f}–{max(on_cpu):.3f}) |")
print(f"| metrics off | {statistics.median(off_rps):.0f} | {moff:.3f} ({min(off_cpu):.3f}–{max(off_cpu):.3f}) |")
verdict = ("no measurable difference" if min(diffs) < 0 < max(diffs)
           else "measurable")
print(f"\nOverhead of metrics: {100*(mon-moff)/moff:+.1f}% server CPU per request (difference of medians); "
      f"paired round-by-round differences {min(diffs):+.1f}% to {max(diffs):+.1f}% (median {statistics.median(diffs):+.1f}%): {verdict}. "
      f"{len(on_cpu)} rounds; server CPU from /proc/PID/task/*/schedstat (ns).")
PY
