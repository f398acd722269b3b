#!/usr/bin/env bash
# bench/user-time-ab.sh — two megaconn binaries' server CPU per keep-alive
# request, user and system time apart, A/B interleaved round by round (issue
# 15, session 53: the user time a request at 64 against 512 connections).
#
# Each round, for each connection count, serves the demo's `GET /` with A
# then B (B then A in every other round), each a fresh
# `megaconn serve --workers 1 --admin off` on core $SERVER_CPU, loaded by A's
# `megaconn load -t 1 -c CONNS` on core $LOAD_CPU for $WARMUP (not counted)
# and then $DURATION, counted: utime and stime of the server process
# (/proc/PID/stat, every thread) over the counted run, per request. The
# table: medians over the rounds, each binary's user, system and total µs
# a request, and B's over A's for each: the median of the rounds' paired
# ratios (both binaries measured within seconds of each other, so a
# machine whose load moves over the run moves both), and in how many
# rounds B was the lower.
# Not bench/throughput.sh: that runs one megaconn binary against its peers;
# this runs two builds of megaconn against each other, nothing else.
#
# Env: A, B (the binaries; required), CONNS ("64 512"), ROUNDS (10),
#   DURATION (3s), WARMUP (1s), SERVER_CPU (1), LOAD_CPU (0), PORT (43900:
#   the first of the ports tried), OUT (bench/out/user-time-ab-<stamp>),
#   AUTOGROUP_NICE (below), PIPELINE (1: the load's `--pipeline`, each
#   connection sending that many requests back to back and the next as
#   many once all are answered; session 55, the pipelined path).
# Output: the table on stdout; raw rows (round, conns, binary, requests,
#   user and system ticks) in $OUT/runs.tsv.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
A="${A:?A=the first megaconn binary}"
B="${B:?B=the second megaconn binary}"
CONNS="${CONNS:-64 512}"
ROUNDS="${ROUNDS:-10}"
DURATION="${DURATION:-3s}"
WARMUP="${WARMUP:-1s}"
SERVER_CPU="${SERVER_CPU:-1}"
LOAD_CPU="${LOAD_CPU:-0}"
PORT="${PORT:-43900}"
PIPELINE="${PIPELINE:-1}"
OUT="${OUT:-$here/out/user-time-ab-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"
TICK=$(getconf CLK_TCK)
server_pid=""
cleanup() { [[ -n "$server_pid" ]] && kill -TERM "$server_pid" 2>/dev/null || true; }
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_autogroup_nice
trap 'cleanup; autogroup_back' EXIT
trap 'exit 130' INT TERM

# A port no socket uses in any state, from PORT up.
free_port() {
  local p
  for ((p = PORT; p < PORT + 200; p++)); do
    [[ -z "$(ss -Htan "( sport = :$p )" 2>/dev/null)" ]] && { echo "$p"; return 0; }
  done
  echo "no free port from $PORT" >&2
  exit 1
}

# utime and stime of PID, in ticks (fields 14 and 15, after the name's ")").
ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12, $13 }'; }

# one ROUND CONNS LABEL BINARY: one counted run, a row in runs.tsv.
one() {
  local round=$1 conns=$2 label=$3 bin=$4 port before after requests i
  port=$(free_port)
  taskset -c "$SERVER_CPU" "$bin" serve --listen "127.0.0.1:$port" --workers 1 --admin off \
    >"$OUT/server-$label-$conns-$round.log" 2>&1 &
  server_pid=$!
  for ((i = 0; i < 200; i++)); do
    curl -fs "http://127.0.0.1:$port/" >/dev/null 2>&1 && break
    sleep 0.05
  done
  taskset -c "$LOAD_CPU" "$A" load "http://127.0.0.1:$port/" -t 1 -q -c "$conns" --pipeline "$PIPELINE" -d "$WARMUP" >/dev/null 2>&1
  before=$(ticks "$server_pid")
  taskset -c "$LOAD_CPU" "$A" load "http://127.0.0.1:$port/" -t 1 -q -c "$conns" --pipeline "$PIPELINE" -d "$DURATION" \
    --json "$OUT/load-$label-$conns-$round.json" >/dev/null 2>&1
  after=$(ticks "$server_pid")
  kill -TERM "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
  requests=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["requests"])' "$OUT/load-$label-$conns-$round.json")
  read -r u0 s0 <<<"$before"
  read -r u1 s1 <<<"$after"
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$conns" "$label" "$requests" "$((u1 - u0))" "$((s1 - s0))" >>"$OUT/runs.tsv"
}

: >"$OUT/runs.tsv"
for ((r = 1; r <= ROUNDS; r++)); do
  for c in $CONNS; do
    if ((r % 2)); then one "$r" "$c" A "$A"; one "$r" "$c" B "$B"
    else one "$r" "$c" B "$B"; one "$r" "$c" A "$A"; fi
  done
  echo "[$(date -u +%T)] round $r of $ROUNDS done (load average $(cut -d' ' -f1-3 /proc/loadavg))" >&2
done

python3 - "$OUT/runs.tsv" "$TICK" "$A" "$B" "$PIPELINE" <<'EOF'
import sys, statistics as st
from collections import defaultdict
rows = [l.split("\t") for l in open(sys.argv[1]).read().split("\n") if l]
tick_us = 1e6 / int(sys.argv[2])
per = defaultdict(dict)
for r, c, label, n, u, s in rows:
    n = int(n)
    # user, system, total µs a request; requests
    per[(int(c), label)][int(r)] = (int(u) * tick_us / n, int(s) * tick_us / n, (int(u) + int(s)) * tick_us / n, n)
print(f"A = {sys.argv[3]}, B = {sys.argv[4]}; pipeline {sys.argv[5]}; medians of {len(per[next(iter(per))])} rounds; B/A: the median of the rounds' paired ratios (rounds where B was lower)")
print()
print("| connections | A user µs/req | B user | B/A user | A system µs/req | B system | B/A system | A total µs/req | B total | B/A total | A requests a run | B |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for c in sorted({k[0] for k in per}):
    a, b = per[(c, "A")], per[(c, "B")]
    common = sorted(set(a) & set(b))
    def ratio(i):
        rs = [b[r][i] / a[r][i] for r in common if a[r][i] > 0]
        lower = sum(1 for r in common if b[r][i] < a[r][i])
        return f"{st.median(rs):.3f} ({lower} of {len(common)})" if rs else "—"
    med = lambda d, i: st.median(v[i] for v in d.values())
    print(f"| {c} | {med(a,0):.3f} | {med(b,0):.3f} | {ratio(0)} | {med(a,1):.2f} | {med(b,1):.2f} | {ratio(1)} | {med(a,2):.2f} | {med(b,2):.2f} | {ratio(2)} | {med(a,3):.0f} | {med(b,3):.0f} |")
EOF
