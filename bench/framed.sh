#!/usr/bin/env bash
# bench/framed.sh — framed TCP at N held connections: megaconn beside a
# classic Go goroutine-per-connection server (bench/peers/go-framed: bufio,
# a 4-byte length header then io.ReadFull) and a tokio task-per-connection
# server (bench/peers/tokio-framed: tokio-util's LengthDelimitedCodec), all
# speaking a 4-byte big-endian length header, one after the other in each
# round (order rotated), each server on one core ($SERVER_CPU, one worker /
# GOMAXPROCS=1 / a current-thread runtime), `megaconn hold` on the other.
#
# Per server and round:
#   1. idle and broadcast: `hold tcp:// --tcp-framing u32 --receive
#      --interval 600s` opens N connections (RAMP/s, from SOURCE);
#      BCAST_SETTLE s after the last one opened (all parked, for megaconn):
#        bytes per idle connection = (server RSS now − RSS before any
#          connection) / N   (VmRSS; user space only, kernel socket memory is
#          the same for all three and not in it);
#      then a publisher connection sends `PUB * <64 bytes>` whose payload
#      starts `t=<unix ns>`; every server sends the 64 bytes (in a 4-byte
#      header) to every connection:
#        time to last delivery = hold's push delivery latency max (now − t at
#          the receiving client, same clock);
#        server µs per delivered message = Δ server CPU (/proc/PID/task/*/
#          schedstat, ns) from just before the publish until hold counted N
#          pushes / N.
#   2. heartbeats: a fresh `hold --send PING --expect PONG` opens N
#      connections, each sending a heartbeat frame every INTERVAL s
#      (jittered; megaconn parks a connection after 2 s idle, so with
#      INTERVAL 3 every heartbeat wakes a parked one); SETTLE s after the last
#      opened, over WINDOW s:
#        server µs per heartbeat = Δ server CPU / (N × WINDOW / INTERVAL
#          heartbeats: each connection beats once per interval; hold's failed
#          heartbeats are reported beside it).
# Needs: root, 2 cores, go (apt-get install golang-go), jq, python3, a release
# build of megaconn (BENCH_SKIP_BUILD=1 to use target/release as is).
# Env: N (15000; one process holds at most ~19,000: 20,000 open files), INTERVAL (3),
#   RAMP (5000), SETTLE (5), WINDOW (20), BCAST_SETTLE (4), ROUNDS (2),
#   SERVERS ("megaconn go tokio"), SOURCE (127.0.21.2-127.0.21.9), PORT (21100+),
#   MEGACONN_B (another megaconn binary, e.g. a build of main: a row
#   "megaconn-b" serves with it, in the same rounds, for before/after figures),
#   PROCESSES (megaconn only: serve --processes P, for N past one process's
#   open files; the peers are single-process, so SERVERS=megaconn then).
#   Runs over 50,000 connections must run under `flock /work/bigrun.lock`.
# Output: bench/out/framed-<stamp>/ (runs.jsonl, logs, table.md) and the table on stdout.
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N="${N:-15000}"
INTERVAL="${INTERVAL:-3}"
RAMP="${RAMP:-5000}"
SETTLE="${SETTLE:-5}"
WINDOW="${WINDOW:-20}"
BCAST_SETTLE="${BCAST_SETTLE:-4}"
ROUNDS="${ROUNDS:-2}"
SERVERS="${SERVERS:-megaconn go tokio}"
SOURCE="${SOURCE:-127.0.21.2-127.0.21.9}"
GO_FRAMED="$BENCH_DIR/peers/go-framed/target/go-framed"
TOKIO_FRAMED="$BENCH_DIR/peers/tokio-framed/target/release/tokio-framed"

MEGACONN_B="${MEGACONN_B:-}"
[[ -n "$MEGACONN_B" && " $SERVERS " != *" megaconn-b "* ]] && SERVERS="$SERVERS megaconn-b"
# Hold and the servers are stopped however the script ends (SIGINT, SIGTERM too).
bench_traps

command -v go >/dev/null || apt-get install -y golang-go >/dev/null
command -v jq >/dev/null || apt-get install -y jq >/dev/null
if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
  log "building the peers and megaconn"
  (cd "$BENCH_DIR/peers/go-framed" && GOFLAGS=-mod=mod go build -o target/go-framed .)
  cargo build --release --quiet --manifest-path "$BENCH_DIR/peers/tokio-framed/Cargo.toml"
  (cd "$REPO_ROOT" && cargo build --release --quiet)
fi
BENCH_SKIP_BUILD=1 bench_build
bench_tune
[[ "$MEGACONN_HOLD_OK" == 1 ]] || die "megaconn hold is not available"
PORT="${PORT:-$(free_port 21100)}"
TARGET="tcp://127.0.0.1:$PORT"

STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
RES_DIR="$OUT_DIR/framed-$STAMP"
mkdir -p "$RES_DIR"
RUNS="$RES_DIR/runs.jsonl"
: >"$RUNS"
log "results in $RES_DIR"

framed_start() { # NAME
  local log_file="$RES_DIR/$1-server.log"
  SERVER_NAME=$1
  case "$1" in
    megaconn | megaconn-b)
      local bin="$MEGACONN"
      [[ "$1" == megaconn-b ]] && bin="$MEGACONN_B"
      # The demo charges a PUB by its audience (--publish-fanout): a
      # `PUB *` to more than 20,000 connections is refused unless the
      # budget is off (a binary from before it has no such flag).
      local unbudgeted=()
      [[ "$("$bin" serve --help 2>/dev/null)" == *--publish-fanout* ]] && unbudgeted=(--publish-rate off)
      taskset -c "$SERVER_CPU" "$bin" serve --workers 1 --admin off "${unbudgeted[@]}" \
      ${PROCESSES:+--processes "$PROCESSES"} \
      --tcp-listen "127.0.0.1:$PORT" --tcp-framing u32 >"$log_file" 2>&1 & ;;
    go) GOMAXPROCS=1 taskset -c "$SERVER_CPU" "$GO_FRAMED" -listen "127.0.0.1:$PORT" >"$log_file" 2>&1 & ;;
    tokio) taskset -c "$SERVER_CPU" "$TOKIO_FRAMED" --listen "127.0.0.1:$PORT" >"$log_file" 2>&1 & ;;
    *) die "unknown server $1" ;;
  esac
  SERVER_PID=$!
  local i
  for ((i = 0; i < 100; i++)); do port_listening "$PORT" && return 0; sleep 0.1; done
  log "$1 did not listen on :$PORT"; cat "$log_file" >&2; server_stop; return 1
}

# Starts hold (args after the log name) and waits (bounded) for N open.
hold_up() { # LOG ARGS...
  local log_file=$1
  shift
  hold_start "$log_file" "$TARGET" --tcp-framing u32 "$@"
}

publish() { # sends `PUB * <64 bytes starting t=<unix ns>>` in a 4-byte frame
  python3 - "$PORT" <<'PY'
import socket, struct, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
body = b"PUB * " + ("t=%d " % time.time_ns()).encode().ljust(64, b".")
s.sendall(struct.pack(">I", len(body)) + body)
time.sleep(0.5)
s.close()
PY
}

run_one() { # server round
  local server=$1 round=$2 base="$RES_DIR/$1-r$2"
  bench_wait_quiet "${QUIET_WAIT_EACH:-10}"
  framed_start "$server" || return 1
  sleep 1
  local rss0 rss1 c0 c1 b0 b1 t0 t1 pushes i
  rss0="$(tree_rss "$SERVER_PID")"
  # 1. Idle connections (no heartbeats to speak of), then a broadcast.
  if ! hold_up "$base.bc.log" --interval 600s --receive -d "$((BCAST_SETTLE + 40))s" \
    --json "$base.bc.json"; then
    log "WARNING: $server round $round: hold did not open $N (see $base.bc.log)"
    hold_down; server_stop; return 1
  fi
  bench_sleep "$BCAST_SETTLE"
  rss1="$(tree_rss "$SERVER_PID")"
  b0="$(sched_ns "$SERVER_PID")"
  t0=$SECONDS
  publish
  for ((i = 0; i < 300; i++)); do
    pushes="$(hold_pushes "$base.bc.log")"
    ((pushes >= N)) && break
    sleep 0.1
  done
  b1="$(sched_ns "$SERVER_PID")"
  t1=$SECONDS
  kill_ours INT hold "$HOLD_PID" # report now (on SIGINT hold reports what it measured)
  hold_down
  # 2. Heartbeats on fresh connections.
  if ! hold_up "$base.hb.log" --interval "${INTERVAL}s" --send 'PING\n' --expect PONG \
    -d "$((SETTLE + WINDOW + 5))s" --json "$base.hb.json"; then
    log "WARNING: $server round $round: heartbeat hold did not open $N (see $base.hb.log)"
    hold_down; server_stop; return 1
  fi
  bench_sleep "$SETTLE"
  c0="$(sched_ns "$SERVER_PID")"
  bench_sleep "$WINDOW"
  c1="$(sched_ns "$SERVER_PID")"
  hold_down
  server_stop
  jq -cn --arg server "$server" --argjson round "$round" --argjson n "$N" \
    --argjson interval "$INTERVAL" --argjson window "$WINDOW" \
    --argjson rss0 "$rss0" --argjson rss1 "$rss1" --argjson c "$((c1 - c0))" --argjson b "$((b1 - b0))" \
    --argjson bwait "$((t1 - t0))" \
    --slurpfile hb <(jq -c . "$base.hb.json" 2>/dev/null || echo null) \
    --slurpfile bc <(jq -c . "$base.bc.json" 2>/dev/null || echo null) \
    '{server: $server, round: $round, connections: $n,
      bytes_per_conn: (($rss1 - $rss0) / $n),
      heartbeats: ($n * $window / $interval),
      server_us_per_hb: ($c / 1000 / ($n * $window / $interval)),
      hb_failed: $hb[0].heartbeat_errors, hb_drops: $hb[0].drops,
      pushes_received: $bc[0].pushes_received,
      last_delivery_ms: ($bc[0].push_latency_us.max // null | if . == null then null else . / 1000 end),
      p50_delivery_ms: ($bc[0].push_latency_us.p50 // null | if . == null then null else . / 1000 end),
      server_us_per_delivery: ($b / 1000 / $n), broadcast_wait_secs: $bwait,
      bc_drops: $bc[0].drops}' >>"$RUNS"
  log "$(tail -1 "$RUNS")"
}

t_start=$SECONDS
read -r -a servers <<<"$SERVERS"
interleaved_rounds "${ROUNDS}" run_one "${servers[@]}"
elapsed=$((SECONDS - t_start))

{
  echo "### Framed TCP, $N connections, 4-byte length header (medians of $ROUNDS rounds, min–max in brackets)"
  echo
  echo "| server | bytes per idle connection | server µs / heartbeat | vs megaconn | broadcast of 64 B: last delivery ms | server µs / delivered message | vs megaconn | pushes received / N | failed heartbeats / drops |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
  jq -rs "$BENCH_JQ_DEFS"'
    def mm(f): (map(f) | median_or_null | f2) + " (" + (map(f) | min | f2) + "–" + (map(f) | max | f2) + ")";
    group_by(.server) | (map(select(.[0].server == "megaconn")) | .[0] // null) as $m
    | ($m | if . == null then null else [(map(.server_us_per_hb) | median), (map(.server_us_per_delivery) | median)] end) as $mm
    | .[]
    | "| \(.[0].server) | \(map(.bytes_per_conn) | median | f0) (\(map(.bytes_per_conn) | min | f0)–\(map(.bytes_per_conn) | max | f0)) | \(mm(.server_us_per_hb)) | "
      + (if $mm == null then "—" else ((map(.server_us_per_hb) | median) / $mm[0] | f2) + "×" end)
      + " | \(mm(.last_delivery_ms)) | \(mm(.server_us_per_delivery)) | "
      + (if $mm == null then "—" else ((map(.server_us_per_delivery) | median) / $mm[1] | f2) + "×" end)
      + " | \(map(.pushes_received // 0) | min)/\(.[0].connections) | \(map(.hb_failed // 0) | add) / \(map((.hb_drops // 0) + (.bc_drops // 0)) | add) |"' "$RUNS"
  echo
  echo "Each server on core $SERVER_CPU (megaconn \`serve --workers 1 --tcp-framing u32 --publish-rate off\`, parking idle connections after 2 s; go-framed with GOMAXPROCS=1; tokio-framed on a current-thread runtime), \`megaconn hold\` on core $LOAD_CPU, one after the other in each round. Bytes = VmRSS growth / N with every connection idle ($BCAST_SETTLE s after the last opened: megaconn's parked). Heartbeat every $INTERVAL s per connection on fresh connections; CPU from /proc/PID/task/*/schedstat over $WINDOW s. Broadcast: one \`PUB * <64 B>\` frame from a separate connection; time to last delivery from hold's receive mode (the payload carries its send time)."
  echo
  echo "_framed.sh: N=$N INTERVAL=$INTERVAL WINDOW=$WINDOW ROUNDS=$ROUNDS SERVERS=\"$SERVERS\"; megaconn $(cat "$MEGACONN.version" 2>/dev/null || echo '?'); run time ${elapsed}s; load average at the end $(cut -d' ' -f1-3 /proc/loadavg); raw JSON: bench/out/framed-$STAMP/_"
  echo
  echo "Command: \`N=$N ROUNDS=$ROUNDS bash bench/framed.sh\`"
} | tee "$RES_DIR/table.md"
