#!/usr/bin/env bash
# bench/core-ab.sh — two megaconn builds side by side: server CPU per request
# over HTTP/1.1 (64 keep-alive connections) and h2c (16 connections × 4
# streams), in interleaved rounds, to show a change costs nothing (or what it
# costs). For idle bytes per connection and CPU per heartbeat on parked
# connections, run idle-memory.sh with MEGACONN= each build, and
# heartbeat-cpu.sh with MEGACONN_B= (it measures both builds in one run).
#
# A = $MEGACONN (default target/release/megaconn), B = $MEGACONN_B (required).
# Each round starts each build fresh (`serve --workers 1 --admin off` on core
# $SERVER_CPU), warms up 1 s, then runs `megaconn load` (always A's, so the
# client is the same) on core $LOAD_CPU for DURATION per scenario; server CPU
# per request = Δ(utime+stime) from /proc / requests. The order of A and B
# alternates by round. Output: bench/out/core-ab-<stamp>/ (runs.jsonl,
# table.md) and the table on stdout: medians, min–max, and B/A.
#
# Needs root (bench_tune: port range, somaxconn, syn backlog; ulimit -n),
# 2 cores, jq. Env: ROUNDS (5), DURATION (4s), PORT, BENCH_SKIP_BUILD=1 to
# use target/release as it is.
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROUNDS="${ROUNDS:-5}"
DURATION="${DURATION:-4s}"
[[ -n "${MEGACONN_B:-}" && -x "${MEGACONN_B:-}" ]] || die "set MEGACONN_B=/path/to/the/other/megaconn"

trap bench_cleanup EXIT
trap 'exit 130' INT TERM

bench_install_deps
bench_build
bench_tune
MEGACONN_A="$MEGACONN"
PORT="${PORT:-$(free_port 38700)}"
URL="http://127.0.0.1:$PORT/"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
RES_DIR="$OUT_DIR/core-ab-$STAMP"
mkdir -p "$RES_DIR"
RUNS="$RES_DIR/runs.jsonl"
: >"$RUNS"
log "A = $MEGACONN_A, B = $MEGACONN_B; results in $RES_DIR"

for ((round = 1; round <= ROUNDS; round++)); do
  order=(a b)
  ((round % 2 == 0)) && order=(b a)
  for build in "${order[@]}"; do
    [[ "$build" == b ]] && MEGACONN="$MEGACONN_B"
    server_start megaconn "$PORT" 1 || die "could not start build $build"
    MEGACONN="$MEGACONN_A"
    "$MEGACONN" load "$URL" -c 64 -t 1 -d 1s >/dev/null 2>&1 || true
    for scenario in h1-c64 h2c-c16x4; do
      case "$scenario" in
        h1-c64) args=(-c 64) ;;
        h2c-c16x4) args=(--http2 -c 16 --streams 4) ;;
      esac
      if rec="$(load_record "$build" "$scenario" "$round" "$DURATION" "$URL" "${args[@]}")"; then
        echo "$rec" >>"$RUNS"
        log "$(jq -r '"round \(.round) build \(.server) \(.scenario): \(.rps|floor) req/s, server \(.server_cpu_us_per_req*100|round/100) us/req"' <<<"$rec")"
      fi
    done
    server_stop
  done
done

{
  echo "| scenario | A µs/request, median (min–max) | B µs/request, median (min–max) | B / A |"
  echo "|---|---:|---:|---:|"
  jq -rs '
    def med: sort | if length == 0 then null else .[(length - 1) / 2 | floor] end;
    def f: . * 100 | round / 100;
    group_by(.scenario)[] as $g
    | ($g | map(select(.server == "a") | .server_cpu_us_per_req)) as $a
    | ($g | map(select(.server == "b") | .server_cpu_us_per_req)) as $b
    | "| \($g[0].scenario) | \($a | med | f) (\($a | min | f)–\($a | max | f)) | \($b | med | f) (\($b | min | f)–\($b | max | f)) | \(($b | med) / ($a | med) * 1000 | round / 1000) |"
  ' "$RUNS"
  echo
  echo "$ROUNDS interleaved rounds × $DURATION per scenario, $(date -u '+%Y-%m-%d %H:%M UTC'); A = $MEGACONN_A, B = $MEGACONN_B."
} | tee "$RES_DIR/table.md"
