#!/usr/bin/env bash
# bench/tls-cost.sh — the server's CPU per TLS handshake with an RSA-2048
# certificate against an ECDSA P-256 one, and per request for HTTP/2 over TLS
# against HTTP/1.1 over TLS. Ratios from one run: the scenarios alternate
# over ROUNDS rounds on the same (shared, busy) machine; absolute figures
# move with the machine's load, the ratios much less.
#
# Server CPU is read from /proc/PID/task/*/schedstat (the first field, ns on
# a CPU, summed over the process's threads) before and after each load run:
# no perf counters needed. Each run is a fixed count (-n), so the figure is
# (CPU after - CPU before) / count. Every server runs one worker on core
# $SERVER_CPU (`taskset`), `megaconn load -t 1` on core $LOAD_CPU.
#
#   handshakes: `--new-connection-per-request --no-tls-resume` (a full
#     TLS 1.3 handshake with X25519, one HTTP/1.1 GET with Connection: close,
#     the close), -c 8, HS_N each run; one server with each certificate.
#   requests: keep-alive GETs on the ECDSA server, -c 16: HTTP/1.1, HTTP/2
#     one stream per connection (same requests in flight), HTTP/2 4 x 4;
#     and on a cleartext server, HTTP/1.1 and h2c 16 x 1, to tell what
#     HTTP/2 costs from what it costs over TLS.
#
# Env: MEGACONN (binary; default target/release/megaconn), ROUNDS (2), HS_N
# (3000), REQ_N (60000), SERVER_CPU (1), LOAD_CPU (0), PORT (38431; uses
# PORT to PORT+2). Prints a markdown table on stdout.
set -euo pipefail

MEGACONN="${MEGACONN:-target/release/megaconn}"
ROUNDS="${ROUNDS:-2}"
HS_N="${HS_N:-3000}"
REQ_N="${REQ_N:-60000}"
SERVER_CPU="${SERVER_CPU:-1}"
LOAD_CPU="${LOAD_CPU:-0}"
PORT="${PORT:-38431}"

DIR="$(mktemp -d)"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$DIR/ec-key.pem" -out "$DIR/ec-cert.pem" -days 1 -subj /CN=localhost 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes \
    -keyout "$DIR/rsa-key.pem" -out "$DIR/rsa-cert.pem" -days 1 -subj /CN=localhost 2>/dev/null

# serve NAME PORT: a one-worker server with NAME's certificate (none for
# "clear").
serve() {
    local tls=()
    [[ $1 != clear ]] && tls=(--tls-cert "$DIR/$1-cert.pem" --tls-key "$DIR/$1-key.pem")
    taskset -c "$SERVER_CPU" "$MEGACONN" serve --listen "127.0.0.1:$2" --workers 1 --admin off \
        "${tls[@]}" >"$DIR/$1.log" 2>&1 &
    PIDS+=("$!")
    for _ in $(seq 100); do
        grep -q "serving on" "$DIR/$1.log" && return
        sleep 0.1
    done
    echo "server $1 did not start" >&2
    exit 1
}

# cpu_ns PID: ns the process's threads spent on a CPU.
cpu_ns() {
    local all
    all=$(cat /proc/"$1"/task/*/schedstat) || { echo "server $1 is gone" >&2; exit 1; }
    awk '{ s += $1 } END { printf "%.0f\n", s }' <<<"$all"
}

# measure PID N LOAD-ARGS...: µs of server CPU per request over N requests.
measure() {
    local pid=$1 n=$2
    shift 2
    local before after
    before=$(cpu_ns "$pid")
    taskset -c "$LOAD_CPU" "$MEGACONN" load -k -t 1 -q -n "$n" "$@" --json "$DIR/run.json" >/dev/null
    after=$(cpu_ns "$pid")
    [[ -n "${DEBUG:-}" ]] && echo "pid $pid before $before after $after: $*" >&2
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "server $pid is gone; its logs:" >&2
        cat "$DIR"/*.log >&2
        exit 1
    fi
    python3 - "$DIR/run.json" "$n" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
assert d["requests"] == int(sys.argv[2]) and d["errors_total"] == 0, d
EOF
    echo "scale=2; ($after - $before) / 1000 / $n" | bc
}

serve ec "$PORT"
EC_PID=${PIDS[0]}
serve rsa "$((PORT + 1))"
RSA_PID=${PIDS[1]}
serve clear "$((PORT + 2))"
CLEAR_PID=${PIDS[2]}
EC="https://127.0.0.1:$PORT/"
RSA="https://127.0.0.1:$((PORT + 1))/"
CLEAR="http://127.0.0.1:$((PORT + 2))/"
HS=(--new-connection-per-request --no-tls-resume -c 8)

echo "date: $(date -u '+%F %T UTC'); load average: $(cut -d' ' -f1-3 /proc/loadavg); $("$MEGACONN" --version 2>/dev/null || echo megaconn)"
echo
echo "| round | ECDSA P-256 µs/handshake | RSA-2048 µs/handshake | RSA / ECDSA | h1 TLS µs/req | h2 TLS 16×1 µs/req | h2 TLS 4×4 µs/req | h2 16×1 / h1, TLS | h2 4×4 / h1, TLS | h1 clear µs/req | h2c 16×1 µs/req | h2c 16×1 / h1, clear |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for round in $(seq "$ROUNDS"); do
    # Warm-up (first round only): the pools and caches, not measured.
    if [[ $round == 1 ]]; then
        measure "$EC_PID" 200 "$EC" "${HS[@]}" >/dev/null
        measure "$RSA_PID" 200 "$RSA" "${HS[@]}" >/dev/null
        measure "$EC_PID" 2000 "$EC" -c 16 >/dev/null
        measure "$EC_PID" 2000 "$EC" -c 16 --http2 >/dev/null
        measure "$CLEAR_PID" 2000 "$CLEAR" -c 16 >/dev/null
        measure "$CLEAR_PID" 2000 "$CLEAR" -c 16 --http2 >/dev/null
    fi
    ec=$(measure "$EC_PID" "$HS_N" "$EC" "${HS[@]}")
    rsa=$(measure "$RSA_PID" "$HS_N" "$RSA" "${HS[@]}")
    h1=$(measure "$EC_PID" "$REQ_N" "$EC" -c 16)
    h2=$(measure "$EC_PID" "$REQ_N" "$EC" -c 16 --http2 --streams 1)
    h2s=$(measure "$EC_PID" "$REQ_N" "$EC" -c 4 --http2 --streams 4)
    c1=$(measure "$CLEAR_PID" "$REQ_N" "$CLEAR" -c 16)
    c2=$(measure "$CLEAR_PID" "$REQ_N" "$CLEAR" -c 16 --http2 --streams 1)
    echo "| $round | $ec | $rsa | $(echo "scale=2; $rsa / $ec" | bc) | $h1 | $h2 | $h2s | $(echo "scale=2; $h2 / $h1" | bc) | $(echo "scale=2; $h2s / $h1" | bc) | $c1 | $c2 | $(echo "scale=2; $c2 / $c1" | bc) |"
done
echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
