#!/usr/bin/env bash
# bench/ws-peers.sh — WebSockets side by side: server bytes per idle
# WebSocket, server CPU per ping, and a broadcast of one message to every
# connection, for megaconn's native WebSocket (`megaconn serve`'s /ws, parked
# when idle), megaconn's axum-compatible socket (megaconn::axum_ws), axum 0.8
# + tokio-tungstenite, Go gorilla/websocket and Node's ws.
#
# Every server serves an echo on /ws and a chat on /ws/chat (a text message
# from one goes to every /ws/chat connection; GET / answers "ok"), one thread
# / process, pinned to core $SERVER_CPU (1): megaconn-native is `megaconn
# serve --workers 1` (the demo's WsEcho and WsChat: a topic every chat
# client joins), the two axum ones the same handler code
# (bench/peers/axum-ws, crates/megaconn/examples/ws_axum_echo.rs; the chat a
# tokio broadcast channel), gorilla's and ws's echo and chat recipes for the
# others (bench/peers/go-ws, node-ws). `megaconn hold ws://…` runs on core
# $LOAD_CPU (0) from 127.0.23.x. Per server and round:
#   1. idle: hold opens N WebSockets to /ws and pings each every INTERVAL s
#      (jittered):
#        bytes per idle WebSocket = (server RSS with N open, SETTLE s after
#          the ramp − RSS before the first connection) / N  (VmRSS,
#          /proc/PID/status: user-space memory; the kernel's socket buffers
#          are the same for all),
#        server µs per ping = Δ(utime+stime of the server) over WINDOW s /
#          pings answered in it (hold's heartbeats/s lines averaged).
#   2. broadcast: a fresh hold opens N WebSockets to /ws/chat with --receive
#      (no pings to speak of); BCAST_SETTLE s after the last opened (megaconn's
#      parked), a publisher connection sends one text message of 64 bytes
#      starting `t=<unix ns>`, which every server sends to all N (and the
#      publisher):
#        time to last delivery = hold's push delivery latency max (same clock),
#        server µs per delivered message = Δ server CPU (schedstat) from just
#          before the publish until hold counted N pushes / N.
# Servers are interleaved over ROUNDS rounds (order rotated, fresh processes);
# the table has medians, min–max, and each server's ratio to megaconn-native.
#
# Needs: root, golang (Debian), golang-github-gorilla-websocket-dev, nodejs +
# npm (Debian), `ws` from npm (installed into bench/out/node-ws, never
# committed), jq curl python3; a release build (the script builds). Sets what
# lib.sh bench_tune sets (ulimit -n 20000, port range, somaxconn).
# Env: N (15000; one server process holds at most ~19,000 with 20,000 open
#   files), INTERVAL (10), RAMP (3000/s), SETTLE (10), WINDOW (20),
#   BCAST_SETTLE (4), ROUNDS (2), SERVERS ("megaconn-native megaconn-axum axum
#   go node"), SOURCE (127.0.23.1-127.0.23.8), PORT (first free from 23100).
# Runs over 50,000 connections only under `flock /work/bigrun.lock` (shared
# machine); with one process per server N stays below that anyway.
# Output: bench/out/ws-<stamp>/ (runs.jsonl, logs, table.md); the table on
# stdout, with the command that reproduces the run under it;
# SECTION_OUT=FILE writes it as a section (the whole FILE: bench/WS.md is
# written by hand, so not there). A server in SERVERS with no row
# (it did not start, or none of its rounds measured) fails the run (exit 1,
# the table marked incomplete, SECTION_OUT not written).
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# The binary asked for (MEGACONN), for the command line under the table:
# bench_build later points MEGACONN_USER at its private copy.
MEGACONN_ASKED="$MEGACONN_USER"
N="${N:-15000}"
INTERVAL="${INTERVAL:-10}"
RAMP="${RAMP:-3000}"
SETTLE="${SETTLE:-10}"
WINDOW="${WINDOW:-20}"
BCAST_SETTLE="${BCAST_SETTLE:-4}"
ROUNDS="${ROUNDS:-2}"
SOURCE="${SOURCE:-127.0.23.1-127.0.23.8}"
SERVERS="${SERVERS:-megaconn-native megaconn-axum axum go node}"
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
    # The chat charges a message by the room's size (--publish-fanout):
    # to a room over 20,000 it is dropped unless the budget is off (a
    # binary from before it has no such flag).
    megaconn-native)
      local unbudgeted=()
      [[ "$("$MEGACONN" serve --help 2>/dev/null)" == *--publish-fanout* ]] && unbudgeted=(--publish-rate off)
      taskset -c "$SERVER_CPU" "$MEGACONN" serve --listen "127.0.0.1:$port" --workers 1 \
      --admin off "${unbudgeted[@]}" >"$log_file" 2>&1 & ;;
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

# Sends one text message to /ws/chat on PORT: 64 bytes starting
# `t=<unix ns> ` (hold --receive times its delivery), as a client does
# (masked), then waits a little for it to go out before closing.
publish() { # PORT
  python3 - "$1" <<'PY'
import os, socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"GET /ws/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
          b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
          b"Sec-WebSocket-Version: 13\r\n\r\n")
head = b""
while b"\r\n\r\n" not in head:
    chunk = s.recv(4096)
    if not chunk:
        sys.exit("publisher: the server closed during the handshake")
    head += chunk
if not head.startswith(b"HTTP/1.1 101"):
    sys.exit("publisher: no 101: %r" % head[:200])
body = ("t=%d " % time.time_ns()).encode().ljust(64, b".")
mask = os.urandom(4)
s.sendall(bytes([0x81, 0x80 | len(body)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(body)))
time.sleep(0.5)
s.close()
PY
}

# Starts hold on PATH (args after it) and waits (bounded) for N open.
hold_up() { # LOG PATH ARGS...
  local log_file=$1 path=$2
  shift 2
  hold_start "$log_file" "ws://127.0.0.1:$PORT$path" "$@"
}

bench_install_deps
ws_install_deps
bench_build
ws_build
bench_tune
[[ "$MEGACONN_HOLD_OK" == 1 ]] || die "megaconn hold is not available"
PORT="${PORT:-$(free_port 23100)}"

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
  local rss0 rss1 rss2 rss3 dur i
  rss0="$(server_rss_bytes)"
  dur=$((SETTLE + WINDOW + 10))
  # 1. Idle WebSockets on /ws, pinged.
  if ! hold_up "$base.hold.log" /ws --interval "${INTERVAL}s" -d "${dur}s" --json "$base.hold.json"; then
    log "WARNING: $server round $round: hold did not open $N WebSockets (see $base.hold.log)"
    hold_down; server_stop; return 1
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
  hold_down
  rate="$(hb_rate "$base.hold.log" "$hc0" "$hc1")"
  # 2. A broadcast to N fresh WebSockets on /ws/chat.
  rss2="$(server_rss_bytes)"
  local b0 b1 t0 t1 pushes=0
  if ! hold_up "$base.bc.log" /ws/chat --receive --interval 600s -d "$((BCAST_SETTLE + 40))s" \
    --json "$base.bc.json"; then
    log "WARNING: $server round $round: chat hold did not open $N WebSockets (see $base.bc.log)"
    hold_down; server_stop; return 1
  fi
  sleep "$BCAST_SETTLE"
  rss3="$(server_rss_bytes)"
  b0="$(sched_ns "$SERVER_PID")"
  t0=$SECONDS
  publish "$PORT" || log "WARNING: $server round $round: the publisher failed"
  for ((i = 0; i < 300; i++)); do
    pushes="$(hold_pushes "$base.bc.log")"
    ((pushes >= N)) && break
    sleep 0.1
  done
  b1="$(sched_ns "$SERVER_PID")"
  t1=$SECONDS
  kill_ours INT hold "$HOLD_PID" # on SIGINT hold reports what it measured
  hold_down
  server_stop
  jq -cn --arg server "$server" --argjson round "$round" --argjson n "$N" \
    --argjson rss0 "$rss0" --argjson rss1 "$rss1" --argjson rss2 "$rss2" --argjson rss3 "$rss3" \
    --argjson rate "$rate" --argjson b "$((b1 - b0))" --argjson bwait "$((t1 - t0))" \
    --argjson s "$(awk -v a="$s0" -v b="$s1" 'BEGIN { printf "%.4f", b - a }')" \
    --argjson wall "$(awk -v a="$m0" -v b="$m1" 'BEGIN { split(a, x, " "); split(b, y, " "); printf "%.3f", y[1] - x[1] }')" \
    --slurpfile hold <(jq -c . "$base.hold.json" 2>/dev/null || echo null) \
    --slurpfile bc <(jq -c . "$base.bc.json" 2>/dev/null || echo null) \
    '{server: $server, round: $round, connections: $n, rss_before: $rss0, rss_open: $rss1,
      bytes_per_ws: (($rss1 - $rss0) / $n), window_secs: $wall, pings_per_sec: $rate,
      server_cpu_secs: $s,
      server_us_per_ping: (if $rate == null or $rate == 0 then null else $s * 1e6 / ($rate * $wall) end),
      heartbeat_errors: $hold[0].heartbeat_errors, drops: $hold[0].drops,
      ping_p50_us: $hold[0].heartbeat_latency_us.p50, ping_p99_us: $hold[0].heartbeat_latency_us.p99,
      chat_bytes_per_ws: (($rss3 - $rss2) / $n),
      pushes_received: $bc[0].pushes_received,
      last_delivery_ms: (if $bc[0].push_latency_us.max == null then null else $bc[0].push_latency_us.max / 1000 end),
      p50_delivery_ms: (if $bc[0].push_latency_us.p50 == null then null else $bc[0].push_latency_us.p50 / 1000 end),
      server_us_per_delivery: ($b / 1000 / $n), broadcast_wait_secs: $bwait,
      bc_drops: $bc[0].drops}' >>"$RUNS"
  log "$(tail -1 "$RUNS" | jq -r '"round \(.round) \(.server): \(.bytes_per_ws | round) B/ws, \(.pings_per_sec) pings/s, \(.server_us_per_ping // 0 | . * 100 | round / 100) us/ping; broadcast \(.pushes_received)/\(.connections) in \(.last_delivery_ms) ms, \(.server_us_per_delivery * 100 | round / 100) us each"')"
}

# A run makes a row when it measured both the pings and the broadcast.
ROW='.server_us_per_ping != null and .last_delivery_ms != null'

t_start=$SECONDS
read -r -a servers <<<"$SERVERS"
bench_wait_quiet "${QUIET_WAIT:-30}"
interleaved_rounds "${ROUNDS}" run_one "${servers[@]}"
elapsed=$((SECONDS - t_start))

{
  echo "### WebSockets: $N idle (a ping on each every ${INTERVAL} s), then a broadcast to $N (medians of $ROUNDS rounds, min–max in brackets)"
  echo
  echo "| server | bytes per idle WebSocket (RSS) | × native | server µs per ping | × native | ping p99 µs | broadcast of 64 B to $N: last delivery ms | server µs per delivered message | × native | bytes per chat WebSocket | pushes received / N | failed pings / drops |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  jq -rs "$BENCH_JQ_DEFS"'
    def mm(f): (map(f) | median | f0) + " (" + (map(f) | min | f0) + "–" + (map(f) | max | f0) + ")";
    def mm2(f): (map(f) | median_or_null | f2) + " (" + (map(f) | min | f2) + "–" + (map(f) | max | f2) + ")";
    def ratio(f; base): if base == null or base <= 0 then "—" else ((map(f) | median) / base | f2) + "×" end;
    map(select('"$ROW"')) | group_by(.server)
    | (map(select(.[0].server == "megaconn-native")) | .[0] // null) as $m
    | ($m | if . == null then null else map(.bytes_per_ws) | median end) as $mb
    | ($m | if . == null then null else map(.server_us_per_ping) | median end) as $mc
    | ($m | if . == null then null else map(.server_us_per_delivery) | median end) as $md
    | sort_by(map(.bytes_per_ws) | median) | .[]
    | "| \(.[0].server) | \(mm(.bytes_per_ws)) | \(ratio(.bytes_per_ws; $mb)) | \(mm2(.server_us_per_ping)) | "
      + "\(ratio(.server_us_per_ping; $mc)) | \(map(.ping_p99_us) | median_or_null | f0) | \(mm2(.last_delivery_ms)) | "
      + "\(mm2(.server_us_per_delivery)) | \(ratio(.server_us_per_delivery; $md)) | \(mm(.chat_bytes_per_ws)) | "
      + "\(map(.pushes_received // 0) | min)/\(.[0].connections) | \(map(.heartbeat_errors // 0) | add) / \(map((.drops // 0) + (.bc_drops // 0)) | add) |"' "$RUNS"
  echo
  echo "Each server one thread / process pinned to core $SERVER_CPU; \`megaconn hold ws://\` on core $LOAD_CPU from $SOURCE. Bytes per idle WebSocket: server VmRSS with all $N open on /ws ($SETTLE s after the ramp: megaconn-native's parked) minus before the first, / $N (user space only). µs per ping: server utime+stime over a $WINDOW s window / pings answered in it. Broadcast: $N fresh WebSockets on /ws/chat ($BCAST_SETTLE s after the last opened), one 64-byte text message from another connection, sent by every server to all of them; last delivery from hold's receive mode (the message carries its send time); server CPU (schedstat) from the publish to the N-th delivery / $N. Bytes per chat WebSocket: RSS growth over the chat connections / $N (after phase 1: allocator reuse makes it a lower bound). The machine is shared with other people's builds: trust the ratios from these interleaved rounds over the absolute figures."
  echo
  echo "_ws-peers.sh: N=$N INTERVAL=$INTERVAL RAMP=$RAMP SETTLE=$SETTLE WINDOW=$WINDOW BCAST_SETTLE=$BCAST_SETTLE ROUNDS=$ROUNDS SERVERS=\"$SERVERS\"; megaconn $(cat "$MEGACONN.version" 2>/dev/null || echo '?'); run time ${elapsed}s; load average at the end $(cut -d' ' -f1-3 /proc/loadavg); raw JSON: bench/out/ws-$STAMP/_"
  echo
  echo "Command: \`${MEGACONN_ASKED:+MEGACONN=$MEGACONN_ASKED }$(command_line bench/ws-peers.sh BENCH_SKIP_BUILD N INTERVAL \
    RAMP SETTLE WINDOW BCAST_SETTLE ROUNDS SERVERS SOURCE PORT SERVER_CPU LOAD_CPU QUIET_WAIT QUIET_WAIT_EACH)\`"
} | tee "$RES_DIR/table.md"

# A server asked for but missing from the table (it did not start, or no
# round of it measured) fails the run, said in the table and on stderr: a
# table short of a server is not the comparison that was asked for.
missing="$(servers_without_rows "$RUNS" "$ROW" "${servers[@]}")"
if [[ -n "$missing" ]]; then
  printf '\n**Incomplete: no row for %s** (asked for: %s; see the log above and bench/out/ws-%s/).\n' \
    "$missing" "$SERVERS" "$STAMP" | tee -a "$RES_DIR/table.md"
  die "no row for $missing: every round of it failed (not started, or hold did not open $N); the table is in $RES_DIR/table.md, SECTION_OUT not written"
fi

if [[ -n "${SECTION_OUT:-}" ]]; then
  {
    echo "## WebSockets beside the peers"
    echo
    echo "Written by \`bench/ws-peers.sh\` (SECTION_OUT=$SECTION_OUT) on $(date -u '+%Y-%m-%d %H:%M UTC'); load average at the end $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores."
    echo
    sed 's/^### /#### /' "$RES_DIR/table.md"
  } >"$SECTION_OUT"
  log "wrote $SECTION_OUT"
fi
