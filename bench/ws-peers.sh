#!/usr/bin/env bash
# bench/ws-peers.sh — idle WebSockets side by side: server bytes per idle
# WebSocket and server CPU per ping, megaconn's axum-compatible socket
# (megaconn::axum_ws) beside axum 0.8 + tokio-tungstenite, Go
# gorilla/websocket and Node's ws (and megaconn's native WebSocket once
# `megaconn serve` answers a WebSocket upgrade on /ws).
#
# Every server is an echo on /ws (GET / answers "ok"), one thread / process,
# pinned to core $SERVER_CPU (1): the same handler code for the two axum ones
# (bench/peers/axum-ws, crates/megaconn/examples/ws_axum_echo.rs), gorilla's
# and ws's echo examples for the others (bench/peers/go-ws, node-ws).
# `megaconn hold ws://…/ws` (core $LOAD_CPU, 0) opens N WebSockets from
# 127.0.23.x and pings each every INTERVAL s (jittered). Per run:
#   bytes per idle WebSocket = (server RSS with N open, SETTLE s after the
#     ramp − RSS before the first connection) / N  (VmRSS, /proc/PID/status:
#     user-space memory; the kernel's socket buffers are the same for all),
#   server µs per ping = Δ(utime+stime of the server) over WINDOW s / pings
#     answered in it (hold's heartbeats/s lines averaged over the window).
# Servers are interleaved over ROUNDS rounds (order rotated, fresh processes);
# the table has medians, min–max, and each server's ratio to megaconn-axum.
#
# Needs: root, golang (Debian), golang-github-gorilla-websocket-dev, nodejs +
# npm (Debian), `ws` from npm (installed into bench/out/node-ws, never
# committed), jq curl; a release build (the script builds). Sets what
# lib.sh bench_tune sets (ulimit -n 20000, port range, somaxconn).
# Env: N (15000; one server process holds at most ~19,000 with 20,000 open
#   files), INTERVAL (10), RAMP (3000/s), SETTLE (10), WINDOW (30), ROUNDS (3),
#   SERVERS ("megaconn-axum axum go node", plus megaconn-native when found),
#   SOURCE (127.0.23.1-127.0.23.8), PORT (first free from 23100).
# Runs over 50,000 connections only under `flock /work/bigrun.lock` (shared
# machine); with one process per server N stays below that anyway.
# Output: bench/out/ws-<stamp>/ (runs.jsonl, logs, table.md); the table on
# stdout; SECTION_OUT=bench/WS.md writes it as a section.
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N="${N:-15000}"
INTERVAL="${INTERVAL:-10}"
RAMP="${RAMP:-3000}"
SETTLE="${SETTLE:-10}"
WINDOW="${WINDOW:-30}"
ROUNDS="${ROUNDS:-3}"
SOURCE="${SOURCE:-127.0.23.1-127.0.23.8}"
SERVERS_GIVEN="${SERVERS:-}"
SERVERS="${SERVERS:-megaconn-axum axum go node}"
MEGACONN_AXUM="$REPO_ROOT/target/release/examples/ws_axum_echo"
AXUM_WS="$BENCH_DIR/peers/axum-ws/target/release/axum-ws"
GO_WS="$BENCH_DIR/peers/go-ws/target/go-ws"
NODE_WS_DIR="$OUT_DIR/node-ws"
((N > 50000)) && [[ -z "${WS_PEERS_LOCKED:-}" ]] && exec env WS_PEERS_LOCKED=1 flock /work/bigrun.lock "$0" "$@"

HOLD_PID=""
ws_cleanup() {
  if [[ -n "$HOLD_PID" ]]; then
    # shellcheck disable=SC2046
    kill_ours TERM hold "$HOLD_PID" $(pgrep -P "$HOLD_PID" 2>/dev/null)
    HOLD_PID=""
  fi
  bench_cleanup
}
trap ws_cleanup EXIT
trap 'exit 130' INT TERM

ws_install_deps() {
  [[ "${BENCH_SKIP_INSTALL:-0}" == 1 ]] && return 0
  local missing=()
  command -v node >/dev/null 2>&1 || missing+=(nodejs)
  command -v npm >/dev/null 2>&1 || missing+=(npm)
  [[ -d /usr/share/gocode/src/github.com/gorilla/websocket ]] || missing+=(golang-github-gorilla-websocket-dev)
  if ((${#missing[@]})); then
    log "installing: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  if [[ ! -d "$NODE_WS_DIR/node_modules/ws" ]]; then
    log "installing ws from npm into $NODE_WS_DIR"
    mkdir -p "$NODE_WS_DIR"
    (cd "$NODE_WS_DIR" && npm install --silent --no-audit --no-fund ws@8 >/dev/null)
  fi
}

ws_build() {
  [[ "${BENCH_SKIP_BUILD:-0}" == 1 ]] && return 0
  log "building go-ws (gorilla/websocket from Debian, GOPATH mode)"
  (cd "$BENCH_DIR/peers/go-ws" && GO111MODULE=off GOPATH=/usr/share/gocode go build -o target/go-ws .) \
    || die "go-ws build failed"
  log "building axum-ws"
  cargo build --release --quiet --manifest-path "$BENCH_DIR/peers/axum-ws/Cargo.toml" \
    || die "axum-ws build failed"
  log "building megaconn's ws_axum_echo example"
  (cd "$REPO_ROOT" && cargo build --release --quiet -p megaconn --example ws_axum_echo) \
    || die "ws_axum_echo build failed"
}

# Starts server NAME on PORT (echo on /ws), pinned; sets SERVER_PID and
# SERVER_MEASURE_PIDS (lib.sh's), waits until GET / answers.
ws_server_start() { # NAME PORT
  local name=$1 port=$2 log_file="$RUN_DIR/ws-$1-$2.log"
  mkdir -p "$RUN_DIR"
  SERVER_NAME=$name
  case "$name" in
    megaconn-axum) taskset -c "$SERVER_CPU" "$MEGACONN_AXUM" --listen "127.0.0.1:$port" --workers 1 >"$log_file" 2>&1 & ;;
    megaconn-native) taskset -c "$SERVER_CPU" "$MEGACONN" serve --listen "127.0.0.1:$port" --workers 1 >"$log_file" 2>&1 & ;;
    axum) taskset -c "$SERVER_CPU" "$AXUM_WS" --listen "127.0.0.1:$port" --threads 1 >"$log_file" 2>&1 & ;;
    go) GOMAXPROCS=1 taskset -c "$SERVER_CPU" "$GO_WS" -listen "127.0.0.1:$port" >"$log_file" 2>&1 & ;;
    node) NODE_PATH="$NODE_WS_DIR/node_modules" taskset -c "$SERVER_CPU" node "$BENCH_DIR/peers/node-ws/server.js" "127.0.0.1:$port" >"$log_file" 2>&1 & ;;
    *) die "unknown server $name" ;;
  esac
  SERVER_PID=$!
  if ! wait_http "$port" 20 || ! kill -0 "$SERVER_PID" 2>/dev/null; then
    log "server $name did not answer on :$port; log follows"
    cat "$log_file" >&2 || true
    server_stop
    return 1
  fi
  set_measure_pids "$name"
  log "started $name on 127.0.0.1:$port (pid $SERVER_PID)"
}

# Whether a server answers a WebSocket upgrade on /ws with 101.
answers_ws() { # PORT
  local code
  code="$(curl -s -o /dev/null -m 2 -w '%{http_code}' -H 'Connection: Upgrade' -H 'Upgrade: websocket' \
    -H 'Sec-WebSocket-Version: 13' -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' \
    "http://127.0.0.1:$1/ws" 2>/dev/null || true)"
  [[ "$code" == 101 ]]
}

bench_install_deps
ws_install_deps
bench_build
ws_build
bench_tune
[[ "$MEGACONN_HOLD_OK" == 1 ]] || die "megaconn hold is not available"
PORT="${PORT:-$(free_port 23100)}"

# megaconn's native WebSocket joins when `megaconn serve` upgrades /ws.
if [[ -z "$SERVERS_GIVEN" && "$MEGACONN_SERVE_OK" == 1 ]]; then
  if ws_server_start megaconn-native "$PORT" && answers_ws "$PORT"; then
    SERVERS="$SERVERS megaconn-native"
  else
    log "megaconn serve does not upgrade /ws (native WebSocket not in this build): not measured"
  fi
  server_stop
fi

STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
RES_DIR="$OUT_DIR/ws-$STAMP"
mkdir -p "$RES_DIR"
RUNS="$RES_DIR/runs.jsonl"
: >"$RUNS"
log "results in $RES_DIR; servers: $SERVERS"

run_one() { # server round
  local server=$1 round=$2 base="$RES_DIR/$1-r$2"
  bench_wait_quiet "${QUIET_WAIT_EACH:-10}"
  ws_server_start "$server" "$PORT" || return 1
  local rss0 rss1 ramp_s dur i t_open=""
  rss0="$(server_rss_bytes)"
  ramp_s=$(((N + RAMP - 1) / RAMP))
  dur=$((SETTLE + WINDOW + 10))
  taskset -c "$LOAD_CPU" "$MEGACONN" hold "ws://127.0.0.1:$PORT/ws" -c "$N" --ramp "$RAMP" \
    --source "$SOURCE" --interval "${INTERVAL}s" -d "${dur}s" --json "$base.hold.json" \
    >"$base.hold.log" 2>&1 &
  HOLD_PID=$!
  for ((i = 0; i < (ramp_s + 30) * 5; i++)); do
    kill -0 "$HOLD_PID" 2>/dev/null || break
    if (($(hold_open "$base.hold.log") >= N)); then t_open="$(hold_clock "$base.hold.log")"; break; fi
    sleep 0.2
  done
  if [[ -z "$t_open" ]]; then
    log "WARNING: $server round $round: hold did not open $N WebSockets (see $base.hold.log)"
    kill_ours TERM hold "$HOLD_PID"; wait "$HOLD_PID" 2>/dev/null || true; HOLD_PID=""
    server_stop
    return 1
  fi
  sleep "$SETTLE"
  rss1="$(server_rss_bytes)"
  local s0 s1 m0 m1 hc0 hc1 rate
  m0="$(machine_idle_snapshot)"
  read -r _ s0 < <(server_cpu_split)
  hc0="$(hold_clock "$base.hold.log")"
  sleep "$WINDOW"
  read -r _ s1 < <(server_cpu_split)
  m1="$(machine_idle_snapshot)"
  hc1="$(hold_clock "$base.hold.log")"
  for ((i = 0; i < 300; i++)); do kill -0 "$HOLD_PID" 2>/dev/null || break; sleep 0.1; done
  kill_ours TERM hold "$HOLD_PID"
  wait "$HOLD_PID" 2>/dev/null || true
  HOLD_PID=""
  server_stop
  rate="$(hb_rate "$base.hold.log" "$hc0" "$hc1")"
  jq -cn --arg server "$server" --argjson round "$round" --argjson n "$N" \
    --argjson rss0 "$rss0" --argjson rss1 "$rss1" --argjson rate "$rate" \
    --argjson s "$(awk -v a="$s0" -v b="$s1" 'BEGIN { printf "%.4f", b - a }')" \
    --argjson wall "$(awk -v a="$m0" -v b="$m1" 'BEGIN { split(a, x, " "); split(b, y, " "); printf "%.3f", y[1] - x[1] }')" \
    --slurpfile hold <(jq -c . "$base.hold.json" 2>/dev/null || echo null) \
    '{server: $server, round: $round, connections: $n, rss_before: $rss0, rss_open: $rss1,
      bytes_per_ws: (($rss1 - $rss0) / $n), window_secs: $wall, pings_per_sec: $rate,
      server_cpu_secs: $s,
      server_us_per_ping: (if $rate == null or $rate == 0 then null else $s * 1e6 / ($rate * $wall) end),
      heartbeat_errors: $hold[0].heartbeat_errors, drops: $hold[0].drops,
      ping_p50_us: $hold[0].heartbeat_latency_us.p50, ping_p99_us: $hold[0].heartbeat_latency_us.p99}' >>"$RUNS"
  log "$(tail -1 "$RUNS" | jq -r '"round \(.round) \(.server): \(.bytes_per_ws | round) B/ws, \(.pings_per_sec) pings/s, \(.server_us_per_ping * 100 | round / 100) us/ping"')"
}

t_start=$SECONDS
read -r -a servers <<<"$SERVERS"
n=${#servers[@]}
bench_wait_quiet "${QUIET_WAIT:-30}"
for ((round = 1; round <= ROUNDS; round++)); do
  for ((k = 0; k < n; k++)); do
    run_one "${servers[$(((k + round - 1) % n))]}" "$round" || true
  done
done
elapsed=$((SECONDS - t_start))

{
  echo "### Idle WebSockets: $N held, a ping on each every ${INTERVAL} s (medians of $ROUNDS rounds, min–max in brackets)"
  echo
  echo "| server | bytes per idle WebSocket (RSS) | × megaconn-axum | server µs per ping | × megaconn-axum | pings/s | ping p99 µs | failed pings / drops |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|"
  jq -rs "$BENCH_JQ_DEFS"'
    def mm(f): (map(f) | median | f0) + " (" + (map(f) | min | f0) + "–" + (map(f) | max | f0) + ")";
    def mm2(f): (map(f) | median | f2) + " (" + (map(f) | min | f2) + "–" + (map(f) | max | f2) + ")";
    map(select(.server_us_per_ping != null)) | group_by(.server)
    | (map(select(.[0].server == "megaconn-axum")) | .[0] // null) as $m
    | ($m | if . == null then null else map(.bytes_per_ws) | median end) as $mb
    | ($m | if . == null then null else map(.server_us_per_ping) | median end) as $mc
    | sort_by(map(.bytes_per_ws) | median) | .[]
    | "| \(.[0].server) | \(mm(.bytes_per_ws)) | "
      + (if $mb == null or $mb <= 0 then "—" else ((map(.bytes_per_ws) | median) / $mb | f2) + "×" end)
      + " | \(mm2(.server_us_per_ping)) | "
      + (if $mc == null then "—" else ((map(.server_us_per_ping) | median) / $mc | f2) + "×" end)
      + " | \(map(.pings_per_sec) | median | f0) | \(map(.ping_p99_us) | median | f0) | \(map(.heartbeat_errors // 0) | add) / \(map(.drops // 0) | add) |"' "$RUNS"
  echo
  echo "Each server one thread / process pinned to core $SERVER_CPU, an echo on /ws; \`megaconn hold ws://\` on core $LOAD_CPU from $SOURCE. Bytes per idle WebSocket: server VmRSS with all $N open ($SETTLE s after the ramp) minus before the first, / $N (user space only). µs per ping: server utime+stime over a $WINDOW s window / pings answered in it. The machine is shared with other people's builds: trust the ratios from these interleaved rounds over the absolute figures."
  echo
  echo "_ws-peers.sh: N=$N INTERVAL=$INTERVAL RAMP=$RAMP SETTLE=$SETTLE WINDOW=$WINDOW ROUNDS=$ROUNDS SERVERS=\"$SERVERS\"; megaconn $(cat "$MEGACONN.version" 2>/dev/null || echo '?'); run time ${elapsed}s; raw JSON: bench/out/ws-$STAMP/_"
  echo
  echo "Command: \`N=$N INTERVAL=$INTERVAL WINDOW=$WINDOW ROUNDS=$ROUNDS bash bench/ws-peers.sh\`"
} | tee "$RES_DIR/table.md"

if [[ -n "${SECTION_OUT:-}" ]]; then
  {
    echo "## Idle WebSockets beside the peers"
    echo
    echo "Written by \`bench/ws-peers.sh\` (SECTION_OUT=$SECTION_OUT) on $(date -u '+%Y-%m-%d %H:%M UTC'); load average at the end $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores."
    echo
    sed 's/^### /#### /' "$RES_DIR/table.md"
  } >"$SECTION_OUT"
  log "wrote $SECTION_OUT"
fi
