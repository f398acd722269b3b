#!/usr/bin/env bash
# bench/attack-memory.sh — how much memory an attacker can make a server hold,
# per connection and per byte it sends: megaconn beside nginx and Go, each
# alone, one after another, in one run.
#
# For each attack MODE (bench/attack_client.py says what each one sends):
#   slowloris        a 60 KiB request head that never ends        megaconn nginx go
#   h2-stall         h2c, window 0, 250 GETs per connection        megaconn nginx go
#   h2-post          h2c, window 0, POST /echo bodies as far as
#                    the server's windows let them in              megaconn nginx go
#   h2-continuation  CONTINUATION frames, never END_HEADERS        megaconn nginx go
#   h2-hpack         an HPACK bomb (4,000-byte entry referenced
#                    byte by byte)                                 megaconn nginx go
#   h2-settings      SETTINGS + PING flood, ACKs never read        megaconn nginx go
#   ws-big           one 16 MiB WebSocket message, echo unread     megaconn megaconn-axum go
#   ws-echo          60,000-byte messages, echoes unread           megaconn megaconn-axum go
#   ws-chat          /ws/chat subscribers that never read, a
#                    publisher sending 60,000-byte messages        megaconn megaconn-axum go
# and each server (started fresh, pinned to core $SERVER_CPU, one worker /
# thread / process, defaults but for what the peers' files set), it:
#   1. answers one request (warm-up), then the baseline: RSS and PSS of the
#      server (/proc/PID/smaps_rollup, summed over its worker processes as
#      idle-memory.sh does: nginx's worker, else the process and children);
#   2. runs attack_client.py on core $LOAD_CPU: N connections (fewer when
#      N × the bytes one connection tries to send is over BUDGET) from
#      $SOURCE, each doing the attack, then holding still; the client says
#      READY once each has sent all it meant to, stalled (no progress for
#      STALL s: the server stopped reading or its windows stayed shut) or
#      was closed;
#   3. SETTLE s later, and once the server's PSS has stopped moving (less
#      than 1% of its growth in a second, at most SETTLE_MAX s): RSS and
#      PSS again, and the kernel's memory for the server's own sockets on
#      the port (`ss -tm`: Σ rmem_alloc + wmem_queued over every
#      non-listening socket with source 127.0.0.1:PORT, closing ones still
#      flushing included), how many are open and how many established;
#   4. closes the attacker's connections (RST), waits (bounded) until the
#      server has none, and reads RSS again (is the memory given back?),
#      each second until it is within 1 MiB of the baseline, at most
#      AFTER_CLOSE_MAX s.
# Per row: Δ RSS and Δ PSS per connection, the kernel bytes per connection,
# the bytes the attacker sent (those the server's kernel acknowledged,
# TCP_INFO's tcpi_bytes_acked, read right after the measurement), and
# held / sent = (Δ PSS + kernel) / sent.
#
# Servers: megaconn = `megaconn serve --workers 1 --admin off` (the demo app:
# /, /echo, /ws with 64 KiB messages, /ws/chat); megaconn-axum = the
# ws_axum_echo example (megaconn::axum_ws, the compatibility API, routes'
# default limits); nginx = bench/peers/nginx.conf.template (h2 modes:
# `listen … http2`, cleartext h2 with prior knowledge; /echo reads and
# discards the body); go = bench/peers/go-h2c (net/http + x/net h2c, the
# handlers of go-hello) for the HTTP modes, bench/peers/go-ws (gorilla) for
# the WebSocket ones. nginx serves no WebSocket of its own (it proxies them),
# so it has no ws-* rows.
#
# Needs: root, golang-go nginx-light golang-golang-x-net-dev
# golang-github-gorilla-websocket-dev jq python3 (stdlib only); cargo for
# the release build of megaconn and the ws_axum_echo example (the script
# builds them and the Go peers unless BENCH_SKIP_BUILD=1). Sets what lib.sh
# bench_tune sets (ulimit -n 20000, port range, somaxconn).
# Env: N (1000), MODES (all nine above), HTTP_SERVERS ("megaconn nginx go"),
#   WS_SERVERS ("megaconn megaconn-axum go"), SOURCE (127.0.24.1-127.0.24.8),
#   BUDGET (1073741824: bytes all of one mode's connections may try to send),
#   HEAD_BYTES (61440), H2_STREAMS (250), POST_STREAMS (8), POST_BYTES
#   (262144), FLOOD_BYTES (262144), WS_BIG_BYTES (16777216), WS_ECHO_MSGS
#   (32), CHAT_MSGS (12), MSG_BYTES (60000), STALL (3), SETTLE (2), SETTLE_MAX (15),
#   AFTER_CLOSE_MAX (25: seconds to wait for the memory to come back),
#   ATTACK_SECS (30), PORT (first free from 24100), MEGACONN (binary),
#   MEGACONN_AXUM (the example's binary), SERVER_CPU (1), LOAD_CPU (0).
# Output: bench/out/attack-memory-<stamp>/ (runs.jsonl, client and server
# logs, table.md); the table on stdout with the command under it;
# SECTION_OUT=FILE writes it as FILE's first section (later, hand-written
# sections kept). A (mode, server) asked for without a row fails the run.
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MEGACONN_ASKED="$MEGACONN_USER"
# The knobs the caller set (in the environment), for the command
# line under the table.
KNOBS="BENCH_SKIP_INSTALL BENCH_SKIP_BUILD N MODES HTTP_SERVERS WS_SERVERS BUDGET HEAD_BYTES H2_STREAMS POST_STREAMS
  POST_BYTES FLOOD_BYTES WS_BIG_BYTES WS_ECHO_MSGS CHAT_MSGS MSG_BYTES STALL SETTLE SETTLE_MAX ATTACK_SECS SOURCE
  PORT SERVER_CPU LOAD_CPU MEGACONN_SERVE_ARGS MEGACONN_AXUM"
SET_KNOBS=()
for v in $KNOBS; do printenv "$v" >/dev/null && SET_KNOBS+=("$v"); done
N="${N:-1000}"
MODES="${MODES:-slowloris h2-stall h2-post h2-continuation h2-hpack h2-settings ws-big ws-echo ws-chat}"
HTTP_SERVERS="${HTTP_SERVERS:-megaconn nginx go}"
WS_SERVERS="${WS_SERVERS:-megaconn megaconn-axum go}"
SOURCE="${SOURCE:-127.0.24.1-127.0.24.8}"
BUDGET="${BUDGET:-1073741824}"
HEAD_BYTES="${HEAD_BYTES:-61440}"
H2_STREAMS="${H2_STREAMS:-250}"
POST_STREAMS="${POST_STREAMS:-8}"
POST_BYTES="${POST_BYTES:-262144}"
FLOOD_BYTES="${FLOOD_BYTES:-262144}"
WS_BIG_BYTES="${WS_BIG_BYTES:-16777216}"
WS_ECHO_MSGS="${WS_ECHO_MSGS:-32}"
CHAT_MSGS="${CHAT_MSGS:-12}"
MSG_BYTES="${MSG_BYTES:-60000}"
STALL="${STALL:-3}"
SETTLE="${SETTLE:-2}"
SETTLE_MAX="${SETTLE_MAX:-15}"
AFTER_CLOSE_MAX="${AFTER_CLOSE_MAX:-25}"
ATTACK_SECS="${ATTACK_SECS:-30}"
GO_H2C="$BENCH_DIR/peers/go-h2c/target/go-h2c"
GO_WS="$BENCH_DIR/peers/go-ws/target/go-ws"
MEGACONN_AXUM="${MEGACONN_AXUM:-${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/examples/ws_axum_echo}"
CLIENT="$BENCH_DIR/attack_client.py"
# megaconn serve's admin listener is off: other benchmarks may hold its port.
MEGACONN_SERVE_ARGS="${MEGACONN_SERVE_ARGS:---admin off}"
export MEGACONN_SERVE_ARGS

CLIENT_PID=""
attack_cleanup() {
  if [[ -n "$CLIENT_PID" ]]; then
    kill_ours KILL attack_client "$CLIENT_PID"
    wait "$CLIENT_PID" 2>/dev/null || true
    CLIENT_PID=""
  fi
  bench_cleanup
}
trap attack_cleanup EXIT
trap 'exit 130' INT TERM

attack_install_deps() { # Debian's packages whose file is missing
  [[ "${BENCH_SKIP_INSTALL:-0}" == 1 ]] && return 0
  local need=() pair
  for pair in /usr/share/gocode/src/github.com/gorilla/websocket:golang-github-gorilla-websocket-dev \
    /usr/share/gocode/src/golang.org/x/net/http2/h2c:golang-golang-x-net-dev /usr/bin/python3:python3; do
    [[ -e ${pair%%:*} ]] || need+=("${pair#*:}")
  done
  ((${#need[@]})) || return 0
  log "installing: ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

attack_build() {
  if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
    local d
    for d in go-h2c go-ws; do
      log "building $d (GOPATH mode, Debian's Go packages)"
      (cd "$BENCH_DIR/peers/$d" && GO111MODULE=off GOPATH=/usr/share/gocode go build -o "target/$d" .) \
        || die "$d build failed"
    done
    if [[ -z "$MEGACONN_USER" ]]; then
      log "building megaconn and the ws_axum_echo example (cargo build --release)"
      (cd "$REPO_ROOT" && cargo build --release --quiet && cargo build --release --quiet -p megaconn --example ws_axum_echo) \
        || die "megaconn build failed"
    fi
  fi
  # lib.sh's snapshot of the binary (a private copy), the floor, the probes.
  BENCH_SKIP_BUILD=1 bench_build
}

# lib.sh's wait_http asks with HTTP/1.1; nginx's `listen … http2` in
# cleartext (1.22) takes only HTTP/2 with prior knowledge. H2C_WAIT=1 asks
# that way (every server here speaks it on its h2 runs).
eval "lib_$(declare -f wait_http)"
wait_http() {
  [[ "${H2C_WAIT:-0} " == "1 " ]] || { lib_wait_http "$@"; return; }
  local port=$1 secs=${2:-15} i
  for ((i = 0; i < secs * 10; i++)); do
    curl -fsS --http2-prior-knowledge -o /dev/null -m 1 "http://127.0.0.1:$port/" 2>/dev/null && return 0
    if [[ -n "$SERVER_PID" ]] && ! kill -0 "$SERVER_PID" 2>/dev/null; then return 1; fi
    sleep 0.1
  done
  return 1
}

# attack_server_start NAME MODE: a fresh server for one mode, answering on PORT.
attack_server_start() {
  local name=$1 mode=$2 log_file
  H2C_WAIT=0
  [[ $mode == h2-* ]] && H2C_WAIT=1
  case "$name" in
    megaconn) server_start megaconn "$PORT" 1 ;;
    nginx) NGINX_LISTEN_OPTS="$([[ $mode == h2-* ]] && echo " http2")" server_start nginx "$PORT" 1 ;;
    go)
      if [[ $mode == ws-* ]]; then
        # go-ws: lib.sh's server_start knows go-hello only; GO_HELLO is its path.
        GO_HELLO="$GO_WS" server_start go "$PORT" 1
      else
        GO_HELLO="$GO_H2C" server_start go "$PORT" 1
      fi
      ;;
    megaconn-axum)
      log_file="$RUN_DIR/megaconn-axum-$PORT.log"
      mkdir -p "$RUN_DIR"
      SERVER_NAME=$name
      taskset -c "$SERVER_CPU" "$MEGACONN_AXUM" --listen "127.0.0.1:$PORT" --workers 1 >"$log_file" 2>&1 &
      SERVER_PID=$!
      if ! wait_http "$PORT" 20; then
        cat "$log_file" >&2 || true
        server_stop
        return 1
      fi
      set_measure_pids "$name"
      ;;
    *) die "unknown server $name" ;;
  esac
}

# "RSS PSS" bytes summed over SERVER_MEASURE_PIDS (smaps_rollup).
server_rss_pss() {
  local files=() p
  for p in $SERVER_MEASURE_PIDS; do [[ -r /proc/$p/smaps_rollup ]] && files+=("/proc/$p/smaps_rollup"); done
  ((${#files[@]})) || { echo "0 0"; return; }
  awk '$1 == "Rss:" { r += $2 } $1 == "Pss:" { p += $2 } END { printf "%.0f %.0f\n", r * 1024, p * 1024 }' "${files[@]}"
}

# "SOCKETS ESTABLISHED BYTES" of the server's side of the port: every
# non-listening TCP socket with source 127.0.0.1:PORT (closed ones still
# holding data to flush included), and Σ rmem_alloc + wmem_queued (ss -m).
server_sockets() {
  ss -Htmn state connected "( src 127.0.0.1:$PORT )" 2>/dev/null | awk '
    /^[A-Z]/ { n++; if ($1 == "ESTAB") e++ }
    match($0, /skmem:\([^)]*\)/) {
      k = split(substr($0, RSTART + 7, RLENGTH - 8), a, ",")
      for (i = 1; i <= k; i++) {
        if (a[i] ~ /^r[0-9]/) b += substr(a[i], 2)
        if (a[i] ~ /^w[0-9]/) b += substr(a[i], 2)
      }
    }
    END { printf "%d %d %.0f\n", n, e, b }'
}

# The client arguments and the bytes one connection tries to send, per mode.
mode_args() { # MODE -> "PER_CONN_BYTES ARGS..."
  case "$1" in
    slowloris) echo "$HEAD_BYTES --head-bytes $HEAD_BYTES" ;;
    h2-stall) echo "$((H2_STREAMS * 16 + 100)) --streams $H2_STREAMS" ;;
    h2-post) echo "$((POST_STREAMS * POST_BYTES)) --streams $POST_STREAMS --body-bytes $POST_BYTES" ;;
    h2-continuation | h2-hpack | h2-settings) echo "$FLOOD_BYTES --flood-bytes $FLOOD_BYTES" ;;
    ws-big) echo "$WS_BIG_BYTES --body-bytes $WS_BIG_BYTES" ;;
    ws-echo) echo "$((WS_ECHO_MSGS * MSG_BYTES)) --messages $WS_ECHO_MSGS --msg-bytes $MSG_BYTES" ;;
    ws-chat) echo "200 --messages $CHAT_MSGS --msg-bytes $MSG_BYTES" ;;
    *) die "unknown mode $1" ;;
  esac
}

# Connections for MODE: N, or fewer so that they try to send at most BUDGET.
mode_n() { # PER_CONN_BYTES
  local n=$((BUDGET / $1))
  ((n > N)) && n=$N
  ((n < 1)) && n=1
  echo "$n"
}

wait_no_sockets() { # bounded (5 s): the server has no socket left on the port
  local i
  for ((i = 0; i < 50; i++)); do
    read -r s _ _ < <(server_sockets)
    ((s == 0)) && return 0
    sleep 0.1
  done
  return 1
}

run_one() { # MODE SERVER
  local mode=$1 server=$2 base="$RES_DIR/$1-$2" spec per n i
  spec="$(mode_args "$mode")"
  per="${spec%% *}"
  n="$(mode_n "$per")"
  local -a cargs
  read -r -a cargs <<<"${spec#* }"
  attack_server_start "$server" "$mode" || { log "WARNING: $server did not start for $mode"; return 1; }
  if [[ $mode == h2-* ]]; then
    curl -fsS --http2-prior-knowledge -o /dev/null "http://127.0.0.1:$PORT/" || true
  else
    curl -fsS -o /dev/null "http://127.0.0.1:$PORT/" || true
  fi
  sleep 1
  local rss0 pss0 rss1 pss1 rss2 pss2 socks est kbytes t0 ready=false
  read -r rss0 pss0 < <(server_rss_pss)
  t0=$SECONDS
  taskset -c "$LOAD_CPU" python3 "$CLIENT" "$mode" 127.0.0.1 "$PORT" --n "$n" --source "$SOURCE" \
    --stall "$STALL" --attack-secs "$ATTACK_SECS" --hold 600 "${cargs[@]}" >"$base.client.out" 2>"$base.client.err" &
  CLIENT_PID=$!
  for ((i = 0; i < (ATTACK_SECS + 60) * 10; i++)); do
    grep -q '^READY ' "$base.client.out" 2>/dev/null && { ready=true; break; }
    kill -0 "$CLIENT_PID" 2>/dev/null || break
    sleep 0.1
  done
  if ! $ready; then
    log "WARNING: $mode $server: the client never said READY (see $base.client.err)"
    kill_ours KILL attack_client "$CLIENT_PID"; wait "$CLIENT_PID" 2>/dev/null || true; CLIENT_PID=""
    server_stop
    return 1
  fi
  # SETTLE s, then until the server's PSS moves less than 1% of its growth
  # (at least 256 KiB) in a second, at most SETTLE_MAX s: a server still
  # working through what it was sent (Go's goroutines on a busy machine) is
  # measured once it is done.
  bench_sleep "$SETTLE"
  local prev settled=$SETTLE
  read -r rss1 pss1 < <(server_rss_pss)
  for ((i = 0; i < SETTLE_MAX - SETTLE; i++)); do
    prev=$pss1
    bench_sleep 1
    settled=$((settled + 1))
    read -r rss1 pss1 < <(server_rss_pss)
    awk -v a="$prev" -v b="$pss1" -v z="$pss0" 'BEGIN { d = b - a; if (d < 0) d = -d; g = (b - z) / 100; if (g < 0) g = -g;
      exit !(d <= (g > 262144 ? g : 262144)) }' && break
  done
  read -r socks est kbytes < <(server_sockets)
  kill_ours TERM attack_client "$CLIENT_PID"
  wait "$CLIENT_PID" 2>/dev/null || true
  CLIENT_PID=""
  wait_no_sockets || log "WARNING: $mode $server: sockets left on the port after the client closed"
  # The memory a server gives back comes later than its sockets go: megaconn's
  # parking lot trims the heap at its second quiet sweep (up to ~20 s after a
  # burst: conn/park.rs QUIET_SWEEP). Every server gets the same bounded wait,
  # ended early once its RSS is back within 1 MiB of the baseline.
  local waited=0
  while :; do
    read -r rss2 pss2 < <(server_rss_pss)
    ((rss2 - rss0 > 1048576 && waited < AFTER_CLOSE_MAX)) || break
    bench_sleep 1
    waited=$((waited + 1))
  done
  server_stop
  jq -cn --arg mode "$mode" --arg server "$server" --argjson n "$n" \
    --argjson rss0 "$rss0" --argjson pss0 "$pss0" --argjson rss1 "$rss1" --argjson pss1 "$pss1" \
    --argjson rss2 "$rss2" --argjson pss2 "$pss2" --argjson socks "$socks" --argjson est "$est" \
    --argjson kbytes "$kbytes" --argjson secs "$((SECONDS - t0))" --argjson settled "$settled" \
    --argjson c "$(sed -n 's/^DONE //p' "$base.client.out" | grep . || echo '{"opened": 0, "sent_bytes_at_end": 0}')" \
    '($c.opened) as $o | ($c.sent_bytes_at_end) as $sent
     | {mode: $mode, server: $server, n: $n, opened: $o, client: $c, secs: $secs, settle_secs: $settled,
        rss_before: $rss0, pss_before: $pss0, rss_held: $rss1, pss_held: $pss1,
        rss_after_close: $rss2, pss_after_close: $pss2,
        server_sockets: $socks, established: $est, kernel_bytes: $kbytes,
        sent_bytes: $sent,
        rss_per_conn: (if $o > 0 then ($rss1 - $rss0) / $o else null end),
        pss_per_conn: (if $o > 0 then ($pss1 - $pss0) / $o else null end),
        kernel_per_conn: (if $o > 0 then $kbytes / $o else null end),
        sent_per_conn: (if $o > 0 then $sent / $o else null end),
        held_per_sent: (if $sent > 0 then (($pss1 - $pss0) + $kbytes) / $sent else null end),
        rss_after_close_per_conn: (if $o > 0 then ($rss2 - $rss0) / $o else null end)}' >>"$RUNS"
  log "$(tail -1 "$RUNS" | jq -r '"\(.mode) \(.server): \(.opened) open, \(.rss_per_conn | round) B RSS / \(.pss_per_conn | round) B PSS / \(.kernel_per_conn | round) B kernel per conn, sent \(.sent_per_conn | round) B per conn, \(.server_sockets) server sockets (\(.established) established), measured after \(.settle_secs) s"')"
}

attack_install_deps
bench_install_deps
attack_build
bench_tune
[[ "$MEGACONN_SERVE_OK" == 1 ]] || die "megaconn serve is not available ($MEGACONN)"
PORT="${PORT:-$(free_port 24100)}"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
RES_DIR="$OUT_DIR/attack-memory-$STAMP"
mkdir -p "$RES_DIR"
RUNS="$RES_DIR/runs.jsonl"
: >"$RUNS"
# The build: lib.sh's snapshot records git describe of the tree it built;
# a binary given in MEGACONN is named by its path; both by a hash prefix.
VERSION="$(cat "$MEGACONN.version" 2>/dev/null || echo "$MEGACONN_ASKED")"
sha12() { { sha256sum "$1" 2>/dev/null || echo "(none)"; } | cut -c1-12; }
VERSION+=" (sha256 $(sha12 "$MEGACONN"); ws_axum_echo sha256 $(sha12 "$MEGACONN_AXUM"))"
log "results in $RES_DIR; modes: $MODES"

t_start=$SECONDS
expected=()
for mode in $MODES; do
  mode_servers="$HTTP_SERVERS"
  [[ $mode == ws-* ]] && mode_servers="$WS_SERVERS"
  for server in $mode_servers; do
    [[ $server == nginx && $mode == ws-* ]] && continue
    expected+=("$mode/$server")
    log "== $mode: $server"
    run_one "$mode" "$server" || true
  done
done
elapsed=$((SECONDS - t_start))

{
  echo "### What an attacker makes each server hold ($N connections a mode, fewer where BUDGET caps them; each server alone, fresh, one worker, core $SERVER_CPU)"
  echo
  echo "| attack | server | connections | sent per conn | Δ RSS per conn | **Δ PSS per conn** | kernel per conn (server sockets) | **held / sent** | server sockets open (established) | measured after | RSS per conn after close |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  jq -rs "$BENCH_JQ_DEFS"'
    def b: if . == null then "—" elif (. | fabs) >= 1048576 then ((. / 1048576 * 100 | round) / 100 | tostring) + " MiB"
      elif (. | fabs) >= 10240 then ((. / 1024 * 10 | round) / 10 | tostring) + " KiB" else (. | round | tostring) + " B" end;
    def ratio: if . == null then "—" elif . >= 100 then (. | round | tostring) + "×" else ((. * 1000 | round) / 1000 | tostring) end;
    .[] | "| \(.mode) | \(.server) | \(.opened)/\(.n) | \(.sent_per_conn | b) | \(.rss_per_conn | b) | \(.pss_per_conn | b) | \(.kernel_per_conn | b) | \(.held_per_sent | ratio) | \(.server_sockets) (\(.established)) | \(.settle_secs) s | \(.rss_after_close_per_conn | b) |"' "$RUNS"
  echo
  echo "Per connection: (value once the server settled − value before the first connection) / connections opened; settled: $SETTLE s after the attacker said READY (each connection sent all, stalled or was closed), then once its PSS moved less than 1% of its growth (at least 256 KiB) in a second, at most $SETTLE_MAX s ("measured after"). RSS, PSS: /proc/PID/smaps_rollup summed over the server's worker processes (nginx: its worker). Kernel: Σ rmem_alloc + wmem_queued (\`ss -tm\`) over the server's own sockets on the port (closed ones still flushing included), the client's not counted (its sockets that read nothing have SO_RCVBUF 4096, so what the server sends stays on its side). Sent: bytes of the attacker's that the server's kernel acknowledged (TCP_INFO tcpi_bytes_acked summed over its connections, read just after the measurement; handshakes included; ws-chat: the subscribers' handshakes and the publisher's $CHAT_MSGS × $MSG_BYTES). held / sent = (Δ PSS + kernel) / sent (above 1: the server holds more than it was sent, e.g. one publish fanned out). Server sockets open: the server's sockets on the port not yet closed for good at the measurement (ESTAB, and closing ones: FIN-WAIT, CLOSING, LAST-ACK; nginx's lingering close keeps a refused client's for a while), of them established in brackets. RSS after close: once the attacker reset every connection and the server's sockets were gone, and its RSS was back within 1 MiB of the baseline or $AFTER_CLOSE_MAX s had passed (megaconn trims its heap at the parking lot's second quiet sweep, up to ~20 s after a burst)."
  echo
  echo "_attack-memory.sh: megaconn $VERSION; N=$N BUDGET=$BUDGET HEAD_BYTES=$HEAD_BYTES H2_STREAMS=$H2_STREAMS POST_STREAMS=$POST_STREAMS POST_BYTES=$POST_BYTES FLOOD_BYTES=$FLOOD_BYTES WS_BIG_BYTES=$WS_BIG_BYTES WS_ECHO_MSGS=$WS_ECHO_MSGS CHAT_MSGS=$CHAT_MSGS MSG_BYTES=$MSG_BYTES STALL=$STALL SETTLE=$SETTLE; run time ${elapsed}s; $(date -u '+%Y-%m-%d %H:%M UTC'); load average at the end $(cut -d' ' -f1-3 /proc/loadavg); raw JSON: bench/out/attack-memory-$STAMP/_"
  echo
  echo "Command: \`${MEGACONN_ASKED:+MEGACONN=$MEGACONN_ASKED }$(command_line bench/attack-memory.sh "${SET_KNOBS[@]}")\`"
} | tee "$RES_DIR/table.md"

missing=()
for e in "${expected[@]}"; do
  [[ "$(jq -rs --arg m "${e%%/*}" --arg s "${e#*/}" 'map(select(.mode == $m and .server == $s)) | length' "$RUNS")" != 0 ]] ||
    missing+=("$e")
done
if ((${#missing[@]})); then
  printf '\n**Incomplete: no row for %s**\n' "${missing[*]}" | tee -a "$RES_DIR/table.md"
  die "no row for ${missing[*]}; SECTION_OUT not written"
fi
if [[ -n "${SECTION_OUT:-}" ]]; then
  {
    echo "## What an attacker can make a server hold"
    echo
    echo "Written by \`bench/attack-memory.sh\` (SECTION_OUT) on $(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) cores, shared."
    echo
    sed 's/^### /#### /' "$RES_DIR/table.md"
  } | write_first_section "$SECTION_OUT"
  log "wrote $SECTION_OUT"
fi
