#!/usr/bin/env bash
# bench/hold-memory.sh — the `megaconn hold` CLIENT's memory per idle held
# connection (https://, or http:// for comparison), to know whether a million
# connections fit on one machine with the server beside them.
#
# What it measures, for each hold build in $HOLDS (the binary at $MEGACONN,
# i.e. this tree's release build; `b`: the one at $MEGACONN_B beside it):
#   1. a megaconn server (`serve --workers 1`, https: a throwaway ECDSA
#      P-256 certificate, pinned to core
#      $SERVER_CPU; the same server for every row) on 127.0.0.1:$PORT;
#   2. baseline: `hold $SCHEME://… -c 1` (one process, pinned to core
#      $LOAD_CPU): once its connection is open and $SETTLE s have passed, the
#      RSS and PSS (smaps_rollup) of hold's processes;
#   3. `hold $SCHEME://… -c $N` the same way: once hold reports $N open, and
#      $SETTLE s later, RSS and PSS again;
#   -> client bytes per held connection = (RSS(N) − RSS(1)) / (N − 1), and
#      the same for PSS. Heartbeats every $INTERVAL (default 30 s, as in
#      bench/million.sh), so most connections are idle when sampled.
#
# Needs: root is not needed; ulimit -n must allow N + a few (one hold process
# holds N <= ~19,000 here). Env: N (15000), SCHEME (https), HOLDS ("a"),
# PORT (first free from 23443), RAMP (2000/s), SETTLE (5 s), INTERVAL (30s),
# HOLD_ARGS (extra hold arguments), BENCH_SKIP_BUILD=1.
# Output: a markdown table on stdout (also table.md in
# bench/out/hold-memory-<stamp>/, with hold's logs).
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N="${N:-15000}"
SCHEME="${SCHEME:-https}"
HOLDS="${HOLDS:-a}"
PORT="${PORT:-$(free_port 23443)}"
RAMP="${RAMP:-2000}"
SETTLE="${SETTLE:-5}"
INTERVAL="${INTERVAL:-30s}"
HOLD_ARGS="${HOLD_ARGS:-}"

trap bench_cleanup EXIT
trap 'exit 130' INT TERM

bench_build_floor() { :; }
if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
  (cd "$REPO_ROOT" && nice -n 10 cargo build --release --quiet --bin megaconn) \
    || die "megaconn build failed"
fi
BENCH_SKIP_BUILD=1 bench_build
[[ "$MEGACONN_HOLD_OK" == 1 ]] || die "megaconn hold is not available"
ulimit -n 20000 2>/dev/null || true

STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
RES_DIR="$OUT_DIR/hold-memory-$STAMP"
mkdir -p "$RES_DIR"

if [[ $SCHEME == https ]]; then
  # A throwaway ECDSA P-256 certificate, as bench/idle-memory-tls.sh makes.
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$RES_DIR/key.pem" -out "$RES_DIR/cert.pem" -days 2 -subj /CN=localhost 2>/dev/null \
    || die "openssl could not make a certificate"
  export SERVER_TLS_CERT="$RES_DIR/cert.pem" SERVER_TLS_KEY="$RES_DIR/key.pem" # for lib.sh
fi
MEGACONN_SERVE_ARGS="--admin off --idle-timeout 600s" server_start megaconn "$PORT" 1 \
  || die "server did not start"

pss_bytes() { # PID... (Pss from smaps_rollup, summed; gone processes count 0)
  local p files=()
  for p in "$@"; do [[ -r /proc/$p/smaps_rollup ]] && files+=("/proc/$p/smaps_rollup"); done
  awk '/^Pss:/ { s += $2 } END { printf "%.0f\n", s * 1024 }' "${files[@]}" /dev/null
}

# hold_sample BIN COUNT -> "RSS PSS" of hold's processes with COUNT held.
hold_sample() {
  local bin=$1 count=$2 log_file pid i pids flag=()
  log_file="$RES_DIR/hold-$(basename "$1")-$2.log"
  [[ $SCHEME == https ]] && flag=(-k)
  # shellcheck disable=SC2086  # HOLD_ARGS is a word list
  taskset -c "$LOAD_CPU" "$bin" hold "$SCHEME://127.0.0.1:$PORT/" "${flag[@]}" -c "$count" \
    --ramp "$RAMP" --interval "$INTERVAL" --timeout 30s -d 3600s $HOLD_ARGS >"$log_file" 2>&1 &
  pid=$!
  for ((i = 0; i < 1200; i++)); do
    kill -0 "$pid" 2>/dev/null || { cat "$log_file" >&2; die "hold exited early"; }
    (($(hold_open "$log_file") >= count)) && break
    sleep 0.5
  done
  (($(hold_open "$log_file") >= count)) || die "hold did not open $count connections"
  sleep "$SETTLE"
  pids="$pid $(pid_descendants "$pid" | tr '\n' ' ')"
  # shellcheck disable=SC2086
  echo "$(pid_rss_bytes $pids) $(pss_bytes $pids)"
  kill -INT "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

TABLE="$RES_DIR/table.md"
{
  echo "| hold build | scheme | connections | hold RSS | client bytes/conn (Δ RSS) | client bytes/conn (Δ PSS) |"
  echo "|---|---|---:|---:|---:|---:|"
} >"$TABLE"
for h in $HOLDS; do
  bin="$MEGACONN"
  [[ $h == b ]] && bin="${MEGACONN_B:?set MEGACONN_B for HOLDS=b}"
  read -r rss1 pss1 < <(hold_sample "$bin" 1)
  read -r rssn pssn < <(hold_sample "$bin" "$N")
  printf '| %s | %s | %d | %.1f MiB | %.0f | %.0f |\n' "$h" "$SCHEME" "$N" \
    "$(echo "$rssn / 1048576" | bc -l)" "$(echo "($rssn - $rss1) / ($N - 1)" | bc -l)" \
    "$(echo "($pssn - $pss1) / ($N - 1)" | bc -l)" >>"$TABLE"
  log "$h: RSS $rss1 -> $rssn, PSS $pss1 -> $pssn"
done
server_stop
cat "$TABLE"
