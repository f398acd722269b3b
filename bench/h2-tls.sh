#!/usr/bin/env bash
# bench/h2-tls.sh — HTTP/2 and TLS side by side: megaconn, nginx and axum, each
# alone on core $SERVER_CPU with one worker/thread, `megaconn load -t 1` on core
# $LOAD_CPU, peers interleaved over ROUNDS rounds in one run, medians, ratios to
# megaconn.
#
#   (a) h2 requests/s and server CPU µs/request: h2 over TLS (ALPN h2) for all
#       three; h2c (prior knowledge, cleartext) for megaconn and axum.
#   (b) TLS handshakes/s and server CPU µs/handshake with
#       `--new-connection-per-request` (HTTP/1.1, `Connection: close`): full
#       handshakes (`--no-tls-resume`) and resumed ones (client session cache).
#
# The certificate is a throwaway ECDSA P-256 one made with openssl in a temp
# dir and served by all three. Writes the markdown table to bench/H2TLS.md
# (RESULTS.md includes it via run-all.sh) and raw JSON to bench/out/.
#
# Needs root (apt, sysctls via lib.sh: ip_local_port_range, somaxconn,
# tcp_max_syn_backlog; ulimit -n 20000). Takes about 3 minutes with the
# defaults plus builds.
# Env: ROUNDS (3), DURATION (3s), SERVERS ("megaconn nginx axum"), H2_CONNS
#   (16), H2_STREAMS (4), HS_CONNS (32), QUIET_WAIT (20), QUIET_WAIT_EACH (5),
#   OUT (bench/H2TLS.md), MEGACONN_B (another megaconn binary, e.g. an older
#   build: a row "megaconn-b" serves with it in the same rounds, for
#   before/after figures), and lib.sh's knobs.
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-3s}"
SERVERS="${SERVERS:-megaconn nginx axum}"
MEGACONN_B="${MEGACONN_B:-}"
[[ -n "$MEGACONN_B" && " $SERVERS " != *" megaconn-b "* ]] && SERVERS="$SERVERS megaconn-b"
H2_CONNS="${H2_CONNS:-16}"
H2_STREAMS="${H2_STREAMS:-4}"
HS_CONNS="${HS_CONNS:-32}"
OUT="${OUT:-$BENCH_DIR/H2TLS.md}"
PORT="${PORT:-$(free_port 38180)}"
# The admin listener is not measured; off, so no other run's port can clash.
export MEGACONN_SERVE_ARGS="${MEGACONN_SERVE_ARGS:---admin off}"

CERT_DIR="$(mktemp -d)"
trap 'bench_cleanup; rm -rf "$CERT_DIR"' EXIT
trap 'exit 130' INT TERM

bench_install_deps
bench_build
bench_tune
[[ "$MEGACONN_LOAD_OK" == 1 ]] || die "megaconn load is not available ($MEGACONN load --help failed)"
"$MEGACONN" load --help | grep -q -- --new-connection-per-request ||
  die "this megaconn load has no --http2/--new-connection-per-request; rebuild"

log "making a throwaway certificate in $CERT_DIR"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$CERT_DIR/key.pem" -out "$CERT_DIR/cert.pem" 2>/dev/null
chmod 644 "$CERT_DIR/key.pem" # nginx workers read it as root anyway; no secret

read -r -a servers <<<"$SERVERS"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
RES_DIR="$OUT_DIR/h2tls-$STAMP"
mkdir -p "$RES_DIR"
RUNS="$RES_DIR/runs.jsonl"
: >"$RUNS"
log "results in $RES_DIR"

H2_ARGS=(--http2 -c "$H2_CONNS" --streams "$H2_STREAMS")
HS_ARGS=(--new-connection-per-request -c "$HS_CONNS")

# Starts $1 with TLS (SERVER_TLS_* set) or cleartext ($2 = tls | plain). On
# this shared machine another program's client socket can hold $PORT for a
# moment (ip_local_port_range starts at 1024): then move to the next free port.
start() {
  local attempt cert="" key=""
  [[ $2 == tls ]] && cert="$CERT_DIR/cert.pem" key="$CERT_DIR/key.pem"
  for attempt in 1 2 3; do
    SERVER_TLS_CERT="$cert" SERVER_TLS_KEY="$key" server_start "$1" "$PORT" 1 && return 0
    PORT="$(free_port $((PORT + 1)))"
    log "retrying $1 on port $PORT (attempt $((attempt + 1)))"
  done
  return 1
}

# The target URL for the running server: $1 = https | http.
url() { echo "$1://127.0.0.1:$PORT/"; }

# Runs one scenario and appends its record. $1 server $2 scenario $3 round $4 URL, rest: args.
measure() {
  local rec
  if rec="$(load_record "$1" "$2" "$3" "$DURATION" "$4" "${@:5}")"; then
    echo "$rec" >>"$RUNS"
    log "$(jq -r '"round \(.round) \(.server) \(.scenario): \(.rps|floor) req/s, \(.connections_per_sec|floor) conn/s (full \(.tls.handshakes_full // 0), resumed \(.tls.handshakes_resumed // 0)), server \(.server_cpu_us_per_req // 0 | .*100|round/100) us/req, errors \(.errors_total)"' <<<"$rec")"
  fi
}

warmup() { "$MEGACONN" load "$1" -k --http2 -c 8 -t 1 -d 1s >/dev/null 2>&1 || true; }

# ---- interleaved rounds ------------------------------------------------------
t_start=$SECONDS
load0="$(cut -d' ' -f1-3 /proc/loadavg)"
bench_wait_quiet "${QUIET_WAIT:-20}"
n=${#servers[@]}
for ((round = 1; round <= ROUNDS; round++)); do
  for ((k = 0; k < n; k++)); do
    server="${servers[$(((k + round - 1) % n))]}"
    bench_wait_quiet "${QUIET_WAIT_EACH:-5}"
    start "$server" tls || die "could not start $server with TLS"
    warmup "$(url https)"
    measure "$server" h2-tls "$round" "$(url https)" -k "${H2_ARGS[@]}"
    measure "$server" hs-full "$round" "$(url https)" -k "${HS_ARGS[@]}" --no-tls-resume
    measure "$server" hs-resumed "$round" "$(url https)" -k "${HS_ARGS[@]}"
    server_stop
    # nginx serves HTTP/1.1 on its cleartext listener (h2c would need one of its own).
    if [[ $server != nginx ]]; then
      start "$server" plain || die "could not start $server"
      warmup "$(url http)"
      measure "$server" h2c "$round" "$(url http)" "${H2_ARGS[@]}"
      server_stop
    fi
  done
done
elapsed=$((SECONDS - t_start))
load1="$(cut -d' ' -f1-3 /proc/loadavg)"

# ---- summary -----------------------------------------------------------------
jq -s "$BENCH_JQ_DEFS"'
  group_by([.server, .scenario]) | map({
    server: .[0].server, scenario: .[0].scenario, runs: length,
    rps: (map(.rps) | median),
    p50: (map(.latency_us.p50) | median_or_null),
    p99: (map(.latency_us.p99) | median_or_null),
    cps: (map(.connections_per_sec) | median),
    full: (map(.tls.handshakes_full // 0) | add),
    resumed: (map(.tls.handshakes_resumed // 0) | add),
    cpu_us_per_req: (map(.server_cpu_us_per_req) | median),
    server_cpu_util: (map(.server_cpu_secs / .duration_secs) | median),
    client_cpu_util: (map(.client_time_cpu_secs / .duration_secs) | median),
    other_cpu_util: (map(.other_cpu_secs / (.machine_window_secs // .duration_secs)) | median),
    errors: (map(.errors_total) | add)
  })' "$RUNS" >"$RES_DIR/summary.json"

# shellcheck disable=SC2016  # jq code, not shell expansions
JQ_DEFS="$BENCH_JQ_DEFS"'
  def ratio($m; f): if $m == null or (($m | f) // 0) == 0 or f == null then "—"
    else ((f / ($m | f)) | f2) + "×" end;
  def scenario_name: {"h2-tls": "h2 over TLS", "h2c": "h2c (cleartext)",
    "hs-full": "full (`--no-tls-resume`)", "hs-resumed": "resumed (session cache)"}[.];'

# Prints the table rows of the scenarios in $1 (a JSON array), servers in a
# fixed order, each row formatted by the jq string $2 over a summary entry
# ($m: megaconn's entry of the same scenario, for ratios).
# shellcheck disable=SC2016
rows() {
  jq -r --argjson scs "$1" "$JQ_DEFS"'
    . as $all
    | $scs[] as $sc
    | ($all | map(select(.scenario == $sc and .server == "megaconn")) | .[0]) as $m
    | ["megaconn", "megaconn-b", "nginx", "axum"][] as $srv
    | $all[] | select(.scenario == $sc and .server == $srv)
    | '"$2" "$RES_DIR/summary.json"
}

{
  echo "## HTTP/2 and TLS"
  echo
  echo "\`bench/h2-tls.sh\`, $(date -u '+%Y-%m-%d %H:%M UTC'): medians of $ROUNDS interleaved rounds × $DURATION per scenario; each server alone on core $SERVER_CPU with one worker/thread, \`megaconn load -t 1\` on core $LOAD_CPU; run time ${elapsed} s."
  echo "**Shared machine**: $(nproc) cores shared with other engineers' builds and tests (load average $load0 at the start, $load1 at the end; \"other CPU\" below is what other processes took): absolute figures are noisy, compare the ratios, which come from the same run."
  echo
  bench_machine_info
  [[ -n "$MEGACONN_B" ]] && echo "- megaconn-b: $MEGACONN_B, built from $(cat "$MEGACONN_B.version" 2>/dev/null || echo '?')"
  echo "- TLS: one throwaway ECDSA P-256 certificate (openssl $(openssl version | awk '{ print $2 }')) for all servers; megaconn and axum on rustls (ring), nginx on OpenSSL; all offer TLS 1.2 and 1.3, and the client (rustls) prefers TLS 1.3 with X25519"
  echo
  echo "### (a) HTTP/2 requests ($H2_CONNS connections × $H2_STREAMS streams, closed loop)"
  echo
  echo "| server | protocol | req/s | p50 µs | p99 µs | server CPU µs/req | server CPU | client CPU | other CPU | req/s vs megaconn | CPU/req vs megaconn | errors |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  # shellcheck disable=SC2016
  rows '["h2-tls", "h2c"]' '"| \(.server) | \(.scenario | scenario_name) | \(.rps | f0) | \(.p50 | f0) | \(.p99 | f0) | \(.cpu_us_per_req | f2) | \(.server_cpu_util | pct) | \(.client_cpu_util | pct) | \(.other_cpu_util | pct) | \(ratio($m; .rps)) | \(ratio($m; .cpu_us_per_req)) | \(.errors) |"'
  echo
  echo "### (b) TLS handshakes (a new connection per request, $HS_CONNS concurrent, HTTP/1.1 with \`Connection: close\`)"
  echo
  echo "| server | handshakes | handshakes/s | full / resumed (all rounds) | p50 µs | p99 µs | server CPU µs/handshake | server CPU | client CPU | other CPU | handshakes/s vs megaconn | CPU/handshake vs megaconn | errors |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  # shellcheck disable=SC2016
  rows '["hs-full", "hs-resumed"]' '"| \(.server) | \(.scenario | scenario_name) | \(.cps | f0) | \(.full) / \(.resumed) | \(.p50 | f0) | \(.p99 | f0) | \(.cpu_us_per_req | f2) | \(.server_cpu_util | pct) | \(.client_cpu_util | pct) | \(.other_cpu_util | pct) | \(ratio($m; .cps)) | \(ratio($m; .cpu_us_per_req)) | \(.errors) |"'
  echo
  echo "Server CPU per handshake includes the connection's accept, its one request and the close. Latency in (b) runs from the start of the connect to the response. server/client/other CPU = CPU seconds per wall-clock second (100% = one core): a server below 100% while the client is near 100% means the load generator set the rate, and CPU µs per request/handshake is the figure to compare."
  echo
  echo "Commands (PORT = the first free port from 38180; servers as in RESULTS.md plus the TLS files):"
  echo
  echo '```'
  echo "taskset -c $SERVER_CPU megaconn serve --listen 127.0.0.1:PORT --workers 1 --tls-cert cert.pem --tls-key key.pem $MEGACONN_SERVE_ARGS"
  echo "taskset -c $SERVER_CPU nginx -p RUN -c RUN/nginx.conf   # nginx.conf.template, listen ... ssl http2, nginx-tls.conf.template"
  echo "taskset -c $SERVER_CPU axum-hello --listen 127.0.0.1:PORT --threads 1 --tls-cert cert.pem --tls-key key.pem"
  echo "taskset -c $LOAD_CPU megaconn load https://127.0.0.1:PORT/ -t 1 -d $DURATION -k ${H2_ARGS[*]} --json F"
  echo "taskset -c $LOAD_CPU megaconn load http://127.0.0.1:PORT/ -t 1 -d $DURATION ${H2_ARGS[*]} --json F      # h2c; servers without TLS flags"
  echo "taskset -c $LOAD_CPU megaconn load https://127.0.0.1:PORT/ -t 1 -d $DURATION -k ${HS_ARGS[*]} --no-tls-resume --json F"
  echo "taskset -c $LOAD_CPU megaconn load https://127.0.0.1:PORT/ -t 1 -d $DURATION -k ${HS_ARGS[*]} --json F"
  echo '```'
  echo
  echo "_Raw JSON: bench/out/h2tls-$STAMP/ (not committed). Reproduce: \`ROUNDS=$ROUNDS DURATION=$DURATION bash bench/h2-tls.sh\`._"
} >"$RES_DIR/table.md"
cp "$RES_DIR/table.md" "$OUT"
log "wrote $OUT"
cat "$OUT"
