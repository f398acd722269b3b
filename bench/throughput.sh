#!/usr/bin/env bash
# bench/throughput.sh — requests per core: megaconn vs Go net/http, nginx, axum,
# each against the floor.
#
# What it measures: each server runs alone, pinned to core $SERVER_CPU (1) with
# one worker/thread (megaconn --workers 1, GOMAXPROCS=1, nginx 1 worker, axum on
# a current-thread runtime; the floor, bench/peers/floor.c, is single-threaded).
# The floor is a ruler, not a server: one epoll_wait per batch, one recv and one
# send per read, no parsing, a fixed keep-alive response (a pipelined batch is
# answered with one send); "× floor" = a server's CPU µs/request over the
# floor's in the same scenario of the same run. The load, `megaconn load -t 1`, is pinned to core
# $LOAD_CPU (0). Scenarios: closed loop with 64 and 512 connections, 64
# connections each with $PIPELINE requests pipelined (`--pipeline $PIPELINE`;
# PIPELINE=0 drops the row), and an open loop at a fixed rate ($RATE req/s
# over $RATE_CONNS connections; RATE=half-nginx sets it to half of nginx's
# closed-loop maximum at 64 connections, measured in this run before the
# rounds: the median of $CALIBRATE_RUNS runs, so that every server is asked
# for the same rate and the p99/p99.9 compare). Servers are
# interleaved over $ROUNDS rounds (order rotated each round, fresh process per
# round, 1 s warm-up); the table has medians. Per run: req/s, latency
# p50/p99/p99.9, server CPU µs per request = (utime+stime after - before,
# from /proc/PID/stat, whole process tree) / requests, its user-space part
# (utime alone), and "other CPU": the whole machine's busy time (ncpu × wall −
# idle from /proc/stat, in a window enclosing the server's and the client's)
# minus server and client. Then one cross-check
# round with wrk (`wrk -t1 -c64 -d$WRK_DURATION`) and `megaconn load` with the
# same settings, each timed with /usr/bin/time, giving requests per client
# CPU-second for both load generators.
#
# Needs: root (apt installs, sysctls), 2+ cores, golang-go nginx-light wrk jq
# (installed by lib.sh when missing), cargo; builds the peers and megaconn.
# Sets sysctls: net.ipv4.ip_local_port_range="1024 65535",
#   net.core.somaxconn=65535, net.ipv4.tcp_max_syn_backlog=65535; ulimit -n 20000.
#
# Env: ROUNDS (3), DURATION (5s), PIPELINE (16), RATE (20000, or half-nginx), CALIBRATE_RUNS (3),
#   RATE_CONNS (64), PORT (first free from 38080),
#   SERVERS ("megaconn go nginx axum floor"; the floor is always added; also
#   tokio-floor: bench/peers/tokio-floor's `full` level, the least a tokio
#   server that speaks http::Request/Response spends; floor-uring:
#   bench/peers/floor-uring.c, the floor's work over io_uring, one
#   io_uring_enter per batch), WRK_DURATION (5s), WRK=0 to skip wrk,
#   QUIET_WAIT (60 s at the start) / QUIET_WAIT_EACH (10 s before each server):
#   longest waits for other processes on the machine to go quiet.
# Output: raw JSON in bench/out/throughput-<stamp>/ (runs.jsonl, wrk.jsonl,
#   summary.json) and the markdown tables on stdout (also table.md there).
#   SECTION_OUT=bench/FLOOR.md also writes them as a section that run-all.sh
#   copies into RESULTS.md (titled $SECTION_TITLE, with the date, machine,
#   load average, the exact command and a note that the machine was shared).
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-5s}"
RATE="${RATE:-20000}"
RATE_CONNS="${RATE_CONNS:-64}"
PORT="${PORT:-$(free_port 38080)}"
SERVERS="${SERVERS:-megaconn go nginx axum floor}"
[[ " $SERVERS " == *" floor "* ]] || SERVERS="$SERVERS floor"
PIPELINE="${PIPELINE:-16}"
WRK_DURATION="${WRK_DURATION:-5s}"
WRK="${WRK:-1}"
URL="http://127.0.0.1:$PORT/"
CALIBRATE_RUNS="${CALIBRATE_RUNS:-3}"
RATE_ASKED="$RATE"
[[ "$RATE" == half-nginx || "$RATE" =~ ^[0-9]+$ ]] || die "RATE is a number of req/s or half-nginx, not '$RATE'"

trap bench_cleanup EXIT
trap 'exit 130' INT TERM

bench_install_deps
bench_build
bench_tune
[[ "$MEGACONN_LOAD_OK" == 1 ]] || die "megaconn load is not available ($MEGACONN load --help failed)"

read -r -a servers <<<"$SERVERS"
if [[ "$MEGACONN_SERVE_OK" != 1 ]]; then
  log "megaconn serve is not available: measuring the peers only"
  tmp=()
  for s in "${servers[@]}"; do [[ "$s" == megaconn ]] || tmp+=("$s"); done
  servers=("${tmp[@]}")
fi

STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
RES_DIR="$OUT_DIR/throughput-$STAMP"
mkdir -p "$RES_DIR"
RUNS="$RES_DIR/runs.jsonl"
WRK_RUNS="$RES_DIR/wrk.jsonl"
: >"$RUNS"
: >"$WRK_RUNS"
log "results in $RES_DIR"

scenario_args() { # scenario -> megaconn load arguments
  case "$1" in
    c64) echo "-c 64" ;;
    c512) echo "-c 512" ;;
    p*) echo "-c 64 --pipeline ${1#p}" ;;
    rate*) echo "-c $RATE_CONNS --rate $RATE" ;;
  esac
}

# One measured `megaconn load` run against $URL (bench/lib.sh load_record).
# $1 server $2 scenario $3 round $4 duration; the rest are extra load arguments.
run_load() { load_record "$1" "$2" "$3" "$4" "$URL" "${@:5}"; }

warmup() { "$MEGACONN" load "$URL" -c 64 -t 1 -d 1s >/dev/null 2>&1 || true; }

# ---- RATE=half-nginx: the open-loop rate from nginx's maximum -----------------
RATE_NOTE=""
if [[ "$RATE" == half-nginx ]]; then
  bench_wait_quiet "${QUIET_WAIT:-60}"
  server_start nginx "$PORT" 1 || die "could not start nginx to measure its maximum"
  warmup
  for ((i = 1; i <= CALIBRATE_RUNS; i++)); do
    run_load nginx calibrate "$i" "$DURATION" -c 64 >>"$RES_DIR/calibration.jsonl" ||
      die "the calibration run against nginx failed"
  done
  server_stop
  nginx_max="$(jq -s "$BENCH_JQ_DEFS"'map(.rps) | median | floor' "$RES_DIR/calibration.jsonl")"
  RATE=$((nginx_max / 2))
  RATE_NOTE="RATE=half-nginx: nginx's closed-loop maximum at 64 connections in this run was $nginx_max req/s (median of $CALIBRATE_RUNS runs × $DURATION, $(jq -s -r 'map(.rps | floor | tostring) | join(", ")' "$RES_DIR/calibration.jsonl") req/s, before the rounds), so the open loop asks every server for $RATE req/s."
  log "$RATE_NOTE"
fi
SCENARIOS=(c64 c512)
((PIPELINE > 1)) && SCENARIOS+=("p$PIPELINE")
SCENARIOS+=("rate$RATE")

# ---- interleaved rounds ------------------------------------------------------
t_start=$SECONDS
bench_wait_quiet "${QUIET_WAIT:-60}"
n=${#servers[@]}
for ((round = 1; round <= ROUNDS; round++)); do
  for ((k = 0; k < n; k++)); do
    server="${servers[$(((k + round - 1) % n))]}"
    bench_wait_quiet "${QUIET_WAIT_EACH:-10}"
    server_start "$server" "$PORT" 1 || die "could not start $server"
    warmup
    for scenario in "${SCENARIOS[@]}"; do
      # shellcheck disable=SC2046  # scenario_args is a word list
      if rec="$(run_load "$server" "$scenario" "$round" "$DURATION" $(scenario_args "$scenario"))"; then
        echo "$rec" >>"$RUNS"
        log "$(jq -r '"round \(.round) \(.server) \(.scenario): \(.rps|floor) req/s p99 \(.latency_us.p99 // "—")us server \(.server_cpu_us_per_req*100|round/100) us/req"' <<<"$rec")"
      fi
    done
    server_stop
  done
done

# ---- wrk cross-check ---------------------------------------------------------
if [[ "$WRK" == 1 ]]; then
  for server in "${servers[@]}"; do
    server_start "$server" "$PORT" 1 || die "could not start $server"
    warmup
    base="$RES_DIR/$server-wrk"
    cpu0="$(server_cpu_secs)"
    taskset -c "$LOAD_CPU" /usr/bin/time -f '%U %S' -o "$base.time" \
      wrk -t1 -c64 -d"$WRK_DURATION" -s "$BENCH_DIR/wrk-json.lua" "$URL" >"$base.log" 2>&1
    cpu1="$(server_cpu_secs)"
    read -r tu ts <"$base.time"
    grep '^WRKJSON ' "$base.log" | sed 's/^WRKJSON //' |
      jq -c --arg server "$server" --argjson cpu0 "$cpu0" --argjson cpu1 "$cpu1" \
        --argjson tu "$tu" --argjson ts "$ts" \
        '{server: $server, tool: "wrk"} + . + {
           server_cpu_us_per_req: (($cpu1 - $cpu0) * 1e6 / .requests),
           client_time_cpu_secs: ($tu + $ts)}' >>"$WRK_RUNS"
    if rec="$(run_load "$server" c64-xcheck 0 "$WRK_DURATION" -c 64)"; then
      jq -c '. + {tool: "megaconn-load"}' <<<"$rec" >>"$WRK_RUNS"
    fi
    server_stop
  done
fi
elapsed=$((SECONDS - t_start))

# ---- summary -----------------------------------------------------------------
jq -s --argjson rounds "$ROUNDS" --arg duration "$DURATION" "$BENCH_JQ_DEFS"'
  group_by([.server, .scenario]) | map({
    server: .[0].server, scenario: .[0].scenario, runs: length,
    rps: (map(.rps) | median),
    p50: (map(.latency_us.p50) | median_or_null),
    p99: (map(.latency_us.p99) | median_or_null),
    p999: (map(.latency_us.p999) | median_or_null),
    cpu_us_per_req: (map(.server_cpu_us_per_req) | median),
    cpu_us_per_req_min: (map(.server_cpu_us_per_req) | min),
    cpu_us_per_req_max: (map(.server_cpu_us_per_req) | max),
    user_us_per_req: (map(.server_user_us_per_req) | median),
    server_cpu_util: (map(.server_cpu_secs / .duration_secs) | median),
    client_cpu_util: (map(.client_time_cpu_secs / .duration_secs) | median),
    other_cpu_util: (map(.other_cpu_secs / (.machine_window_secs // .duration_secs)) | median),
    errors: (map(.errors | to_entries | map(.value) | add // 0) | add)
  })' "$RUNS" >"$RES_DIR/summary.json"

{
  echo "### Throughput (medians of $ROUNDS rounds × $DURATION; server on core $SERVER_CPU, load on core $LOAD_CPU)"
  echo
  echo "| server | connections / mode | req/s | p50 µs | p99 µs | p99.9 µs | server CPU µs/req (min–max) | of which user | × floor | server CPU | client CPU | other CPU | req/s vs megaconn | CPU/req vs megaconn | errors |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  jq -r --arg rate "$RATE" --arg rconns "$RATE_CONNS" "$BENCH_JQ_DEFS"'
    def mode: if . == "c64" then "64 conns, closed loop"
      elif . == "c512" then "512 conns, closed loop"
      elif startswith("p") then "64 conns × \(.[1:]) pipelined"
      else "open loop \($rate) req/s, \($rconns) conns" end;
    def order: if . == "c64" then 0 elif . == "c512" then 1 elif startswith("p") then 2 else 3 end;
    . as $all
    | [.[].scenario] | unique | sort_by(order)[] as $sc
    | ($all | map(select(.scenario == $sc and .server == "megaconn")) | .[0]) as $m
    | ($all | map(select(.scenario == $sc and .server == "floor")) | .[0]) as $fl
    | ["megaconn", "megaconn-b", "go", "nginx", "axum", "tokio-floor", "floor-uring", "floor"][] as $srv
    | $all[] | select(.scenario == $sc and .server == $srv)
    | "| \(.server) | \($sc | mode) | \(.rps | f0) | \(.p50 | f0) | \(.p99 | f0) | \(.p999 | f0) | \(.cpu_us_per_req | f2) (\(.cpu_us_per_req_min | f2)–\(.cpu_us_per_req_max | f2)) | \(.user_us_per_req | f2) | "
      + (if $fl == null or $fl.cpu_us_per_req == null or .cpu_us_per_req == null then "—" else "**" + ((.cpu_us_per_req / $fl.cpu_us_per_req) | f2) + "×**" end)
      + " | \(.server_cpu_util | pct) | \(.client_cpu_util | pct) | \(.other_cpu_util | pct) | "
      + (if $m == null then "—" else ((.rps / $m.rps) | f2) + "×" end) + " | "
      + (if $m == null then "—" else ((.cpu_us_per_req / $m.cpu_us_per_req) | f2) + "×" end)
      + " | \(.errors) |"' "$RES_DIR/summary.json"
  echo
  echo "server CPU / client CPU = CPU seconds used per wall-clock second of the run (100% = one core busy). A server below ~100% while the client is at ~100% means the load generator, not the server, set the req/s; server CPU µs/req is the figure that does not depend on that (median of the rounds, min–max across them; \"of which user\": utime alone, the server's own user-space work). × floor = server CPU µs/req ÷ the floor's in the same scenario and run (bench/peers/floor.c: one epoll_wait per batch, one recv and one send per read, no parsing; most of its cost is the kernel's loopback TCP path, which every server pays). other CPU = busy time of the whole machine (2 × wall − idle, /proc/stat) minus server and client, over a window enclosing both: other processes competing for the 2 cores (noise; near 0% on a quiet machine). Timings are CPU-seconds per request, so they hold up better than req/s on a busy machine, but only ratios measured side by side in one run mean much."
  if [[ -s "$WRK_RUNS" ]]; then
    echo
    echo "### Load-generator cross-check (one run each, 64 connections, $WRK_DURATION, 1 client thread on core $LOAD_CPU)"
    echo
    echo "| server | tool | req/s | p50 µs | p99 µs | p99.9 µs | server CPU µs/req | client CPU s (/usr/bin/time) | client_cpu_secs field | requests per client CPU-second |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    jq -r "$BENCH_JQ_DEFS"'
      "| \(.server) | \(.tool) | \(.rps | f0) | \(.latency_us.p50 | f0) | \(.latency_us.p99 | f0) | \(.latency_us.p999 | f0) | \(.server_cpu_us_per_req | f2) | \(.client_time_cpu_secs | f2) | \(.client_cpu_secs | f2) | \(if .client_time_cpu_secs > 0 then (.requests / .client_time_cpu_secs | f0) else "—" end) |"' "$WRK_RUNS"
  fi
  echo
  [[ -n "$RATE_NOTE" ]] && { echo "$RATE_NOTE"; echo; }
  echo "_throughput.sh: servers: ${servers[*]}; ROUNDS=$ROUNDS DURATION=$DURATION RATE=$RATE; run time ${elapsed}s; raw JSON: bench/out/throughput-$STAMP/_"
} | tee "$RES_DIR/table.md"

if [[ -n "${SECTION_OUT:-}" ]]; then
  {
    echo "## ${SECTION_TITLE:-HTTP/1.1 throughput against the floor}"
    echo
    echo "Written by \`bench/throughput.sh\` (SECTION_OUT=$SECTION_OUT) on $(date -u '+%Y-%m-%d %H:%M UTC'), megaconn $(cat "$MEGACONN.version" 2>/dev/null || echo '?'); load average at the end $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores. **This machine is often shared with other people's builds** (the \"other CPU\" column says how much was, near 0% when nothing else ran): absolute req/s, latency and µs are noise-laden; the ratios measured side by side in this one run (× floor, vs megaconn) are the figures to read."
    echo
    echo '```'
    echo "SECTION_OUT=$SECTION_OUT SERVERS=\"${servers[*]}\" ROUNDS=$ROUNDS DURATION=$DURATION PIPELINE=$PIPELINE RATE=${RATE_ASKED} WRK=$WRK bash bench/throughput.sh"
    echo '```'
    echo
    sed 's/^### /#### /' "$RES_DIR/table.md"
  } >"$SECTION_OUT"
  log "wrote $SECTION_OUT"
fi
