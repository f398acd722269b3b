#!/usr/bin/env bash
# bench/idle-memory-tls.sh — memory per idle HTTPS/1.1 and HTTP/2-over-TLS
# connection: megaconn vs nginx (OpenSSL, http2) vs axum + rustls.
#
# What it measures, for each server and each protocol, on a fresh server
# process (one process, one worker/thread, pinned to core $SERVER_CPU):
#   1. baseline: server RSS (VmRSS; nginx: its worker) after one request;
#   2. idle: the `tls_hold` example (crates/megaconn/examples/tls_hold.rs,
#      pinned to core $LOAD_CPU) opens $N TLS connections, each a full
#      handshake (no resumption) offering ALPN `http/1.1` (phase https1) or
#      `h2` (phase h2), makes one GET / and keeps the connection open and
#      quiet; once all are open and every socket queue is drained, RSS again
#      -> server userspace bytes per idle connection;
#   3. after closing them all: RSS again (does the memory come back?).
#
# The certificate is a throwaway ECDSA P-256 one made with openssl for this
# run (the client does not verify it). All three servers use TLS 1.3 with it.
#
# Needs: root (sysctls), nginx-light jq curl openssl (lib.sh installs the
# first three when missing), cargo. Sets the sysctls of lib.sh's bench_tune and
# ulimit -n 20000 (so N <= ~19,000; one tls_hold process holds them all).
#
# Env: N (15000), SERVERS ("megaconn nginx axum"; megaconn-b: the build at
#   $MEGACONN_B beside this one), PROTOCOLS ("https1 h2"),
#   PORT (first free from 38443), OPEN_TIMEOUT (300 s), SETTLE (3 s),
#   CONCURRENCY (64 handshakes in flight), MEGACONN_SERVE_ARGS (extra
#   `megaconn serve` arguments), BENCH_SKIP_BUILD=1, BENCH_SKIP_INSTALL=1.
# Output: raw JSON in bench/out/idle-memory-tls-<stamp>/ (results.jsonl) and a
#   markdown table on stdout (also table.md there).
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N="${N:-15000}"
SERVERS="${SERVERS:-megaconn nginx axum}"
PROTOCOLS="${PROTOCOLS:-https1 h2}"
PORT="${PORT:-$(free_port 38443)}"
OPEN_TIMEOUT="${OPEN_TIMEOUT:-300}"
SETTLE="${SETTLE:-3}"
CONCURRENCY="${CONCURRENCY:-64}"
MEGACONN_SERVE_ARGS="${MEGACONN_SERVE_ARGS:-}"
TLS_HOLD="$REPO_ROOT/target/release/examples/tls_hold"
AXUM_TLS="$BENCH_DIR/peers/axum-tls/target/release/axum-tls"

TLS_HOLD_COPY=""
cleanup() {
  bench_cleanup
  [[ -z "$TLS_HOLD_COPY" ]] || rm -f "$TLS_HOLD_COPY"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bench_install_deps
if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
  log "building axum-tls"
  nice -n 10 cargo build --release --quiet --manifest-path "$BENCH_DIR/peers/axum-tls/Cargo.toml" \
    || die "axum-tls build failed"
  log "building megaconn and the tls_hold example"
  (cd "$REPO_ROOT" && nice -n 10 cargo build --release --quiet \
    && nice -n 10 cargo build --release --quiet -p megaconn --example tls_hold) \
    || die "megaconn build failed"
fi
# Snapshot the megaconn binary and probe it (lib.sh), without its peer builds.
BENCH_SKIP_BUILD=1 bench_build
[[ "$MEGACONN_SERVE_OK" == 1 ]] || die "megaconn serve is not available"
[[ -x "$TLS_HOLD" ]] || die "no $TLS_HOLD (cargo build --release -p megaconn --example tls_hold)"
# A private copy of the client too: a rebuild during the run cannot swap it.
mkdir -p "$RUN_DIR"
cp -f "$TLS_HOLD" "$RUN_DIR/tls_hold.$$"
TLS_HOLD="$RUN_DIR/tls_hold.$$"
TLS_HOLD_COPY="$TLS_HOLD"
bench_tune

STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
RES_DIR="$OUT_DIR/idle-memory-tls-$STAMP"
mkdir -p "$RES_DIR"
RESULTS="$RES_DIR/results.jsonl"
: >"$RESULTS"
CERT="$RES_DIR/cert.pem"
KEY="$RES_DIR/key.pem"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout "$KEY" -out "$CERT" -days 2 -subj /CN=localhost \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" >/dev/null 2>&1 || die "openssl failed"
log "results in $RES_DIR"

# nginx-light with TLS and HTTP/2 (nginx 1.22 syntax: `listen ... ssl http2`).
nginx_tls_conf() { # dir port
  cat <<EOF
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 20000;
pid $1/nginx.pid;
error_log $1/error.log warn;
user root;
events {
    worker_connections 20000;
    multi_accept on;
    accept_mutex off;
}
http {
    access_log off;
    server_tokens off;
    default_type text/plain;
    tcp_nodelay on;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    http2_idle_timeout 300s;
    client_body_temp_path $1/client_body;
    proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fastcgi;
    uwsgi_temp_path $1/uwsgi;
    scgi_temp_path $1/scgi;
    server {
        listen 127.0.0.1:$2 ssl http2 backlog=65535;
        ssl_certificate $CERT;
        ssl_certificate_key $KEY;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {
            return 200 "Hello, World!";
        }
    }
}
EOF
}

# Starts NAME with TLS on PORT (one worker/thread, pinned); sets the variables
# lib.sh's server_stop and server_rss_bytes use.
tls_server_start() { # name port
  local name=$1 port=$2 log_file="$RUN_DIR/$1-tls-$2.log" i
  if port_listening "$port"; then
    log "port $port is already in use: $(ss -Hltnp "( sport = :$port )" | head -1)"
    return 1
  fi
  SERVER_NAME=$name
  case "$name" in
    megaconn | megaconn-b)
      local bin="$MEGACONN"
      [[ $name == megaconn-b ]] && bin="${MEGACONN_B:?set MEGACONN_B to run megaconn-b}"
      # shellcheck disable=SC2086  # MEGACONN_SERVE_ARGS is a word list
      taskset -c "$SERVER_CPU" "$bin" serve --listen "127.0.0.1:$port" --workers 1 \
        --tls-cert "$CERT" --tls-key "$KEY" --admin off --idle-timeout 300s \
        ${MEGACONN_SERVE_ARGS:-} >"$log_file" 2>&1 &
      ;;
    nginx)
      local dir="$RUN_DIR/nginx-tls-$port"
      rm -rf "$dir" && mkdir -p "$dir"
      nginx_tls_conf "$dir" "$port" >"$dir/nginx.conf"
      taskset -c "$SERVER_CPU" nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" \
        >"$log_file" 2>&1 &
      ;;
    axum)
      taskset -c "$SERVER_CPU" "$AXUM_TLS" --listen "127.0.0.1:$port" --threads 1 \
        --cert "$CERT" --key "$KEY" >"$log_file" 2>&1 &
      ;;
    *) die "unknown server $name" ;;
  esac
  SERVER_PID=$!
  for ((i = 0; i < 200; i++)); do
    curl -fsSk -o /dev/null -m 1 "https://127.0.0.1:$port/" 2>/dev/null && break
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  if ! kill -0 "$SERVER_PID" 2>/dev/null || ! curl -fsSk -o /dev/null -m 2 "https://127.0.0.1:$port/"; then
    log "server $name did not answer on https://127.0.0.1:$port; log follows"
    cat "$log_file" >&2 || true
    server_stop
    return 1
  fi
  set_measure_pids "$name"
  log "started $name with TLS on 127.0.0.1:$port (pid $SERVER_PID, measured: $SERVER_MEASURE_PIDS)"
}

wait_held() { # out_file hold_pid secs -> 0 when tls_hold reported
  local out=$1 pid=$2 secs=$3 i
  for ((i = 0; i < secs * 4; i++)); do
    grep -q '^held ' "$out" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || { log "tls_hold exited early"; return 1; }
    ((i % 40 == 0)) && log "  $(established_count "$PORT") established"
    sleep 0.25
  done
  log "timeout: tls_hold did not finish opening in ${secs}s"
  return 1
}

wait_drained() { # bounded wait until every request was read and every reply sent
  local i q=0
  for ((i = 0; i < 120; i++)); do
    q="$(server_queued "$PORT")"
    ((q == 0)) && return 0
    sleep 0.25
  done
  log "WARNING: $q bytes still queued on the server's sockets"
}

wait_closed() {
  local i
  for ((i = 0; i < 120; i++)); do
    (($(established_count "$PORT") == 0)) && return 0
    sleep 0.25
  done
  log "WARNING: $(established_count "$PORT") connections still established"
}

# One phase: open N connections with protocol $2, measure, close, measure.
hold_phase() { # server protocol
  local server=$1 proto=$2 base="$RES_DIR/$1-$2" hold_pid ok=true
  local rss0 rss1 rss2 est held failed t0 open_secs
  local -a extra=()
  [[ "$proto" == h2 ]] && extra+=(--h2)
  rss0="$(server_rss_bytes)"
  t0=$SECONDS
  taskset -c "$LOAD_CPU" "$TLS_HOLD" --connect "127.0.0.1:$PORT" -n "$N" \
    --concurrency "$CONCURRENCY" "${extra[@]}" >"$base.hold.out" 2>"$base.hold.log" &
  hold_pid=$!
  BENCH_BG_PIDS=("$hold_pid")
  wait_held "$base.hold.out" "$hold_pid" "$OPEN_TIMEOUT" || ok=false
  open_secs=$((SECONDS - t0))
  wait_drained
  sleep "$SETTLE"
  est="$(established_count "$PORT")"
  rss1="$(server_rss_bytes)"
  read -r _ held _ failed <"$base.hold.out" || { held=0; failed="$N"; }
  log "  $server $proto: $held held ($failed failed), $est established, RSS $((rss1 / 1024)) KiB (was $((rss0 / 1024)) KiB)"
  kill -TERM "$hold_pid" 2>/dev/null || true
  wait "$hold_pid" 2>/dev/null || true
  BENCH_BG_PIDS=()
  wait_closed
  sleep "$SETTLE"
  rss2="$(server_rss_bytes)"
  jq -n --arg server "$server" --arg proto "$proto" --argjson ok "$ok" --argjson n "$N" \
    --argjson est "$est" --argjson held "${held:-0}" --argjson failed "${failed:-0}" \
    --argjson open_secs "$open_secs" \
    --argjson rss0 "$rss0" --argjson rss1 "$rss1" --argjson rss2 "$rss2" \
    '{server: $server, protocol: $proto, all_open: $ok, target: $n, established: $est,
      held: $held, failed: $failed, open_secs: $open_secs,
      rss_before: $rss0, rss_open: $rss1, rss_after_close: $rss2,
      rss_per_conn: (if $est > 0 then ($rss1 - $rss0) / $est else null end)}' \
    | tee -a "$RESULTS" >"$base.json"
}

t_start=$SECONDS
bench_wait_quiet "${QUIET_WAIT:-30}"
read -r -a servers <<<"$SERVERS"
read -r -a protocols <<<"$PROTOCOLS"
for server in "${servers[@]}"; do
  for proto in "${protocols[@]}"; do
    log "== $server $proto"
    bench_wait_quiet "${QUIET_WAIT_EACH:-10}"
    tls_server_start "$server" "$PORT" || die "could not start $server"
    if [[ "$proto" == h2 ]]; then
      curl -fsSk --http2 -o /dev/null "https://127.0.0.1:$PORT/"
    else
      curl -fsSk --http1.1 -o /dev/null "https://127.0.0.1:$PORT/"
    fi
    sleep 1
    hold_phase "$server" "$proto"
    server_stop
  done
done
elapsed=$((SECONDS - t_start))

{
  echo "### Idle TLS connections: memory ($N connections per run, one server process, one worker, server on core $SERVER_CPU)"
  echo
  echo "| server | protocol | connections open | baseline RSS | RSS open | **bytes/conn (userspace)** | RSS after close |"
  echo "|---|---|---:|---:|---:|---:|---:|"
  jq -r -s '
    def mib: if . == null then "—" else ((. / 1048576 * 10 | round) / 10 | tostring) + " MiB" end;
    def f0: if . == null then "—" else (. | round | tostring) end;
    .[] | "| \(.server) | \(if .protocol == "h2" then "h2 (TLS)" else "HTTPS/1.1" end) | \(.established)\(if .failed > 0 then " (\(.failed) failed)" else "" end) | \(.rss_before | mib) | \(.rss_open | mib) | \(.rss_per_conn | f0) | \(.rss_after_close | mib) |"' "$RESULTS"
  echo
  echo "bytes/conn = (server RSS with the connections open − RSS just before opening them) / connections established; each row is a fresh server process (started, served one request, then measured). Each connection: a full TLS 1.3 handshake (ECDSA P-256, no resumption), ALPN http/1.1 or h2, one GET /, then idle. nginx: its worker's RSS (OpenSSL with SSL_MODE_RELEASE_BUFFERS; its connection table for 20000 worker_connections is preallocated, so part of its per-connection cost is in the baseline)."
  echo
  echo "_idle-memory-tls.sh: servers: ${servers[*]}; protocols: ${protocols[*]}; N=$N CONCURRENCY=$CONCURRENCY; run time ${elapsed}s; raw JSON: bench/out/idle-memory-tls-$STAMP/_"
} | tee "$RES_DIR/table.md"
