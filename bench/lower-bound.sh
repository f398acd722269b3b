#!/usr/bin/env bash
# bench/lower-bound.sh — how far down can a tokio HTTP/1.1 server go (issue
# 15)? User-space instructions per keep-alive request, counted by valgrind's
# callgrind, of:
#   floor                bench/peers/floor.c (the ruler of "× floor")
#   tokio-floor LEVEL    bench/peers/tokio-floor at each level: raw (tokio's
#                        readiness I/O and a task per connection only), parse
#                        (+ httparse), request (+ an owned http::Request with
#                        its HeaderMap), full (+ an http::Response and its head
#                        encoded from it: the least any tower-style server does)
#   megaconn             `megaconn serve --workers 1 --admin off` (the demo app)
#   nginx                nginx 1.22, bench/peers/nginx.conf.template with one
#                        process (`master_process off`: valgrind follows no
#                        fork), `return 200 "Hello, World!"`: the peer to beat
# and the compute alone (no I/O): `tokio-floor compute LEVEL N`.
# Each server runs under `valgrind --tool=callgrind` on core $SERVER_CPU, gets
# one curl, then `megaconn load -t 1 -c CONNS -n N` from core $LOAD_CPU, then
# SIGTERM. Per request = (instructions with N2 requests − with N1) / (N2 −
# N1): startup, connection setup and the warm-up cancel out, and the count
# does not depend on how busy the machine is. System calls are not counted
# (callgrind sees user space only; bench/PROFILE.md has them: the same
# recv + send per request for megaconn and the floor).
# Needs: valgrind (apt-get installed when missing), gcc, cargo, a built megaconn.
# Env: N1 (2000), N2 (22000), PORT_BASE (38900), LEVELS ("raw parse
#   request full"; "" leaves tokio-floor out), MEGACONN, BENCH_SKIP_BUILD=1 (megaconn only), NGINX (1;
#   0 leaves nginx out), SIM (0; 1: callgrind also simulates the caches and
#   the branch predictors, --cache-sim=yes --branch-sim=yes, and the table
#   gets per-request misses and mispredictions beside the instructions: a
#   model of this CPU's first-level caches and a simple predictor, not its
#   counters, which this VM does not expose; it tells which server's
#   instructions are the costlier ones, not by how many cycles), RATE (unset:
#   closed loop; R: `load --rate R`, an open loop paced at R requests/s in
#   total, so that at a low R each request finds the server asleep and is
#   its own wake-up: the per-wake-up costs, counted once per request; the
#   table then says how many epoll_wait calls each request took, from
#   callgrind's call counts, which tells whether the pacing did that, and
#   how many times the parking lot woke a connection in each run; each
#   run takes N/R s, so keep N2 − N1 to a few thousand), WARMUP (paced
#   runs: 0.5 s, 0 for none; see below), DUMP_INSTR (no; yes: callgrind
#   counts per instruction too, to read against `objdump -d`; the totals
#   are the same), MEGACONN_ARGS
#   (more `megaconn serve` flags, e.g. "--idle-timeout off --park-after off"
#   to see what its timers cost), AXUM_EXAMPLE (unset: left out; the path
#   of a release build of examples/axum.rs, `cargo build --release --example
#   axum`: one more row, megaconn serving that axum `Router`'s `GET /`, what
#   a drop-in user's request costs; it listens on its own fixed
#   127.0.0.1:3000, which must be free, with one worker under `taskset`, as
#   it takes as many as the CPUs it may run on; first counted in session
#   49: 9,667 a request on main e296dc8, bench/CPU-PER-REQUEST.md),
#   SKIP_MEGACONN (0; 1 leaves the `megaconn serve` row out, so that two
#   builds of the example can be counted in turn, MEGACONN still giving
#   the `load`), HEADERS (unset: the load is `megaconn load`, one head
#   sent again and again; same, change or alternate: the load is
#   bench/head_pattern_client.py's, closed loop over the same 64
#   connections, with that pattern of header sections: one section, one
#   whose last field changes every request, two taking turns, the
#   patterns of session 52's count of what the header-section memo's
#   misses cost; the table gets a column, the memo's copies of a section
#   per request, the calls of `HeadMemo::remember`; RATE does not apply),
#   CONNS (64: the load's connections, `load -c CONNS`, or the pattern
#   client's; session 53 counted 64 against 512, issue 15's two closed
#   loops: with many connections keep N1 well above a few requests per
#   connection, e.g. N1=10000 N2=50000 at 512, so that every connection's
#   first requests, its accept and its first registration, fall in N1's
#   run and cancel out), CACHE (with SIM=1: valgrind's cache geometry
#   flags, e.g. "--I1=32768,8,64 --D1=49152,12,64 --LL=1048576,16,64", this
#   machine's L1 and, as the "last level", its per-core L2 (lscpu): the
#   LL column then counts L2 misses, what a working set that outgrows L2
#   costs; unset: valgrind's guess from the host, whose LL is the 32 MiB
#   L3, which no run here outgrows), PIPELINE (1: each connection sends
#   PIPELINE requests back to back and the next PIPELINE once all are
#   answered, `load --pipeline PIPELINE`: a closed loop that reads 16
#   heads a `recv` at 16, what a batch lets a server do once per read
#   rather than once per request; session 55. Still per request: the
#   count is divided by the requests. Not with HEADERS, whose client
#   sends one request at a time).
# Output: bench/out/lower-bound-<stamp>/ (callgrind files, table.md); the
#   table on stdout.
# The warm-up (paced runs): the start of a paced run is not the same from
#   one run to the next. The load opens its 64 connections at once and
#   sends each one's first request at its turn in the schedule (2 ms apart
#   at 500/s), while the server under valgrind accepts them one by one; a
#   connection whose first request is already there when megaconn accepts
#   it is answered bare and parked at once, then woken from the parking
#   lot by its next request, and how many do that depends on the race
#   (session 40 counted 15 to 130 lot wakes in a run, the N1 and N2 runs of
#   one measurement apart by up to 65), which does not cancel out in
#   N2 − N1 and left tens of instructions of noise in a paced count. So in a
#   paced run every count is zeroed (`callgrind_control -z`) WARMUP seconds
#   after the load's 64 connections are all open (`ss`), once each has
#   served a few requests, and the requests served after it are counted by
#   the calls of a function each server calls once per request (floor.c: `send`;
#   megaconn: the head's parse, `head::parse_from`; nginx:
#   `ngx_http_process_request`): per request = (instructions after the
#   warm-up with N2 − with N1) / (requests counted after it with N2 − with
#   N1). A paced server spends most of its time waiting, so the zero
#   nearly always lands between two requests (one cut in two would be off
#   by at most one request's instructions over the N2 − N1 counted). The
#   lot-wake column, 0 / 0 after a warm-up, shows it did its job.
#   (tokio-floor has no such function, so its paced runs are not warmed;
#   closed-loop runs are not warmed either: their connections send at
#   once, so the start is alike from run to run, and their counts repeat to
#   within ±4.)
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N1="${N1:-2000}"
N2="${N2:-22000}"
LEVELS="${LEVELS-raw parse request full}"
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

command -v valgrind >/dev/null 2>&1 \
  || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends valgrind >/dev/null
NGINX="${NGINX:-1}"
[[ "$NGINX" == 1 ]] && bench_install_deps
bench_build
# (LEVELS="" leaves tokio-floor out: nothing to build.)
[[ -z "${LEVELS// /}" ]] || bench_build_tokio_floor || die "tokio-floor did not build"
[[ "$MEGACONN_LOAD_OK" == 1 ]] || die "megaconn load is not available"
# A free port is picked for every server (other programs' ephemeral ports
# may land anywhere), from PORT_BASE up: one no socket uses in any state,
# since a connection's local port (or its TIME-WAIT) keeps a server from
# binding it just as a listener does (lib.sh's free_port sees listeners
# only).
PORT_BASE="${PORT_BASE:-38900}"
unused_port() {
  local p
  for ((p = $1; p < $1 + 200; p++)); do
    [[ -z "$(ss -Htan "( sport = :$p )" 2>/dev/null)" ]] && { echo "$p"; return 0; }
  done
  die "no unused port in $1..$(($1 + 199))"
}
RES_DIR="$OUT_DIR/lower-bound-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$RES_DIR"
log "results in $RES_DIR"

RATE="${RATE:-}"
HEADERS="${HEADERS:-}"
case "$HEADERS" in
  "" | same | change | alternate) ;;
  *) die "HEADERS=$HEADERS is none of same, change, alternate" ;;
esac
[[ -n "$HEADERS" && -n "$RATE" ]] && die "HEADERS and RATE do not go together (the pattern client is a closed loop)"
# Paced runs only: the warm-up, in seconds (see the header).
WARMUP="${WARMUP-0.5}"
if [[ -n "$RATE" && "$WARMUP" != 0 ]]; then
  command -v callgrind_control >/dev/null || die "callgrind_control (valgrind's) is missing"
  awk -v w="$WARMUP" -v n="$N1" -v r="$RATE" 'BEGIN { exit !(w * r <= n / 2) }' \
    || die "WARMUP=$WARMUP s is not within the first half of the N1=$N1 requests at RATE=$RATE"
fi
rate=()
[[ -n "$RATE" ]] && rate=(--rate "$RATE")
SIM="${SIM:-0}"
DUMP_INSTR="${DUMP_INSTR:-no}"
sim=()
# shellcheck disable=SC2206  # CACHE: valgrind flags, as on a command line
[[ "$SIM" == 1 ]] && sim=(--cache-sim=yes --branch-sim=yes ${CACHE:-})
CONNS="${CONNS:-64}"
[[ "$CONNS" =~ ^[1-9][0-9]*$ ]] || die "CONNS=$CONNS is not a count of connections"
PIPELINE="${PIPELINE:-1}"
[[ "$PIPELINE" =~ ^[1-9][0-9]*$ ]] || die "PIPELINE=$PIPELINE is not a depth (1 or more)"
[[ -n "$HEADERS" && "$PIPELINE" != 1 ]] && die "HEADERS and PIPELINE do not go together (the pattern client sends one request at a time)"
# total FILE [FN]: the counts of a finished callgrind run, space separated:
# Ir (the instructions), and with SIM also I1mr D1mr D1mw ILmr DLmr DLmw Bc
# Bcm Bi Bim, found by name in its "events:" line; then the calls of
# epoll_wait (libc's wrapper; with RATE, wake-ups per request), of the
# parking lot's wake (megaconn) and of FN (requests, if FN is given), summed
# (and before them the calls of the header-section memo's `remember`),
# from the file's "cfn=" / "calls=" lines (names are compressed: "(id) name"
# the first time, "(id)" after).
total() {
  awk -v sim="$SIM" -v fn="${2:-}" '/^events:/ { for (i = 2; i <= NF; i++) at[$i] = i }
    /^c?fn=\([0-9]+\) / { id = $1; sub(/^c?fn=/, "", id); name[id] = $2 }
    /^cfn=/ { id = $1; sub(/^cfn=/, "", id); callee = name[id] }
    /^calls=/ && callee == "epoll_wait" { sub(/^calls=/, "", $1); waits += $1 }
    /^calls=/ && callee == "megaconn::conn::park::ParkingLot::wake" { sub(/^calls=/, "", $1); lot += $1 }
    /^calls=/ && fn != "" && callee == fn { sub(/^calls=/, "", $1); reqs += $1 }
    /^calls=/ && callee == "megaconn::proto::http1::head::HeadMemo::remember" { sub(/^calls=/, "", $1); copies += $1 }
    /^(summary|totals):/ {
      n = split(sim == 1 ? "Ir I1mr D1mr D1mw ILmr DLmr DLmw Bc Bcm Bi Bim" : "Ir", names, " ")
      line = ""
      for (i = 1; i <= n; i++) line = line (i > 1 ? " " : "") (names[i] in at ? $at[names[i]] : 0)
    }
    END { print line, copies + 0, waits + 0, lot + 0, reqs + 0 }' "$1"
}

# served NAME N FN CMD...: callgrind's total for CMD serving one curl and N
# requests at -c 64; "{PORT}" in CMD is the port. FN: a function the server
# calls once per request ("" for none known), whose calls after the warm-up
# count the requests (see WARMUP).
served() {
  local name=$1 n=$2 fn=$3 out i port load_pid
  shift 3
  out="$RES_DIR/$name-$n.callgrind"
  # (A server with a fixed address names it: AXUM_EXAMPLE's.)
  port="${SERVED_PORT:-$(unused_port "$PORT_BASE")}"
  # nginx takes its port from its configuration file.
  [[ "$name" == nginx ]] && sed "s|{PORT}|$port|" "$ngx_dir/nginx.conf.in" >"$ngx_dir/nginx.conf"
  taskset -c "$SERVER_CPU" valgrind --tool=callgrind --dump-instr="$DUMP_INSTR" "${sim[@]}" \
    --callgrind-out-file="$out" "${@//\{PORT\}/$port}" >"$RES_DIR/$name-$n.log" 2>&1 &
  # shellcheck disable=SC2034  # SERVER_NAME: read by lib.sh's server_stop
  SERVER_PID=$! SERVER_NAME="valgrind-$name"
  wait_http "$port" 120 || die "$name did not answer under valgrind (see $RES_DIR/$name-$n.log)"
  if [[ -n "$HEADERS" ]]; then
    timeout 600 taskset -c "$LOAD_CPU" python3 "$BENCH_DIR/head_pattern_client.py" "$port" "$n" "$CONNS" "$HEADERS" \
      >"$RES_DIR/$name-$n.load.out" 2>&1 &
  else
    timeout 600 taskset -c "$LOAD_CPU" "$MEGACONN" load "http://127.0.0.1:$port/" -t 1 -q -c "$CONNS" -n "$n" "${rate[@]}" --pipeline "$PIPELINE" \
      --json "$RES_DIR/$name-$n.load.json" >"$RES_DIR/$name-$n.load.out" 2>&1 &
  fi
  load_pid=$!
  if warmed "$fn"; then
    # The warm-up runs from when all 64 connections are open (the load may
    # take a while to start on a busy machine: timed from its launch, the
    # zero once fell 50 requests in, before the last first requests); at its
    # end every count so far is forgotten (valgrind's pid is the server's).
    for ((i = 0; i < 300; i++)); do
      (($(ss -Htn state established "( sport = :$port )" 2>/dev/null | wc -l) >= CONNS)) && break
      sleep 0.1
    done
    sleep "$WARMUP"
    callgrind_control -z "$SERVER_PID" >/dev/null 2>&1 || log "WARNING: callgrind_control -z $name failed"
  fi
  wait "$load_pid" || log "WARNING: load against $name failed"
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  for ((i = 0; i < 600; i++)); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.2; done
  kill -KILL "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
  total "$out" "$(warmed "$fn" && echo "$fn")"
}

# warmed FN: whether a run of a server whose requests FN counts has a
# warm-up (paced runs only, and only where FN is known).
warmed() { [[ -n "$RATE" && "$WARMUP" != 0 && -n "$1" ]]; }

# computed LEVEL N: callgrind's total for `tokio-floor compute LEVEL N`.
computed() {
  local out="$RES_DIR/compute-$1-$2.callgrind"
  taskset -c "$SERVER_CPU" valgrind --tool=callgrind --dump-instr=no "${sim[@]}" \
    --callgrind-out-file="$out" "$TOKIO_FLOOR" compute "$1" "$2" >/dev/null 2>&1
  total "$out"
}

# per_request "EVENTS AT N1" "EVENTS AT N2": each event per request, as table
# cells ("6990" without SIM; with it, one cell per column of the table; with
# RATE, epoll_wait calls per request and the lot's wakes in each run last;
# with HEADERS, the memo's copies per request after them).
# Per request: divided by N2 − N1, or after a warm-up by the difference of
# the requests counted after it (total's last count).
per_request() {
  awk -v a="$1" -v b="$2" -v n="$((N2 - N1))" -v sim="$SIM" -v paced="${RATE:+1}" -v copies="${HEADERS:+1}" 'BEGIN {
    k = split(a, x, " "); split(b, y, " ")
    if (x[k] > 0 && y[k] > x[k]) n = y[k] - x[k]
    for (i in y) d[i] = (y[i] - x[i]) / n
    if (sim != 1) printf "%.0f", d[1]
    # Ir I1mr D1mr D1mw ILmr DLmr DLmw Bc Bcm Bi Bim (see total)
    else printf "%.0f | %.1f | %.1f | %.1f | %.0f | %.1f | %.0f | %.1f", d[1], d[2], d[3] + d[4], d[5] + d[6] + d[7], \
      d[8], d[9], d[10], d[11]
    if (paced) printf " | %.2f | %d / %d", d[k - 2], x[k - 1], y[k - 1]
    if (copies) printf " | %.3f", d[k - 3]
  }'
}

rows=()
row() { # label, cells
  rows+=("| $1 | $2 |")
  log "$1: $2 (per request)"
}
row "floor (bench/peers/floor.c)" \
  "$(per_request "$(served floor "$N1" send "$FLOOR" 127.0.0.1 "{PORT}")" "$(served floor "$N2" send "$FLOOR" 127.0.0.1 "{PORT}")")"
for level in $LEVELS; do
  # (raw's "compute" would be floor.c's byte count alone: not a layer.)
  [[ "$level" == raw ]] || row "tokio-floor $level, compute only (no I/O)" \
    "$(per_request "$(computed "$level" "$N1")" "$(computed "$level" "$N2")")"
  row "tokio-floor $level, served" \
    "$(per_request "$(served "tokio-$level" "$N1" "" "$TOKIO_FLOOR" serve "127.0.0.1:{PORT}" "$level")" \
      "$(served "tokio-$level" "$N2" "" "$TOKIO_FLOOR" serve "127.0.0.1:{PORT}" "$level")")"
done
# Called once per request by megaconn (the head's parse).
mc_fn="megaconn::proto::http1::head::parse_from"
if [[ "$MEGACONN_SERVE_OK" == 1 && "${SKIP_MEGACONN:-0}" != 1 ]]; then
  # shellcheck disable=SC2206  # MEGACONN_ARGS: words, as on a command line
  mc=("$MEGACONN" serve --listen "127.0.0.1:{PORT}" --workers 1 --admin off ${MEGACONN_ARGS:-})
  row "megaconn ($(cat "$MEGACONN.version" 2>/dev/null || echo "$MEGACONN"))" \
    "$(per_request "$(served megaconn "$N1" "$mc_fn" "${mc[@]}")" "$(served megaconn "$N2" "$mc_fn" "${mc[@]}")")"
fi
if [[ -n "${AXUM_EXAMPLE:-}" ]]; then
  [[ -z "$(ss -Htan "( sport = :3000 )" 2>/dev/null)" ]] || die "AXUM_EXAMPLE listens on 3000, which is in use"
  # Called once per request, as for `megaconn serve`.
  row "megaconn + axum Router (examples/axum.rs, \`GET /\`)" \
    "$(per_request "$(SERVED_PORT=3000 served axum "$N1" "$mc_fn" "$AXUM_EXAMPLE")" \
      "$(SERVED_PORT=3000 served axum "$N2" "$mc_fn" "$AXUM_EXAMPLE")")"
fi
if [[ "$NGINX" == 1 ]]; then
  # One process, so that callgrind counts the worker that serves: with a
  # master, the worker is a fork valgrind does not follow.
  ngx_dir="$RES_DIR/nginx"
  mkdir -p "$ngx_dir"
  : >"$ngx_dir/tls.conf"
  sed -e "s|@WORKERS@|1|g" -e "s|@LISTEN@|127.0.0.1:{PORT}|g" -e "s|@RUNDIR@|$ngx_dir|g" \
    -e "s|@LISTEN_OPTS@||g" -e "s|^master_process on;|master_process off;|" \
    "$BENCH_DIR/peers/nginx.conf.template" >"$ngx_dir/nginx.conf.in"
  ngx=(nginx -p "$ngx_dir" -c "$ngx_dir/nginx.conf" -e "$ngx_dir/error.log")
  row "nginx $(nginx -v 2>&1 | sed 's|.*nginx/||') (one process)" \
    "$(per_request "$(served nginx "$N1" ngx_http_process_request "${ngx[@]}")" "$(served nginx "$N2" ngx_http_process_request "${ngx[@]}")")"
fi

{
  pipelined=""
  [[ "$PIPELINE" != 1 ]] && pipelined=" --pipeline $PIPELINE"
  load="\`load -c $CONNS${RATE:+ --rate $RATE}$pipelined\`"
  [[ -n "$HEADERS" ]] && load="\`head_pattern_client.py\` $CONNS connections, HEADERS=$HEADERS"
  echo "### User-space instructions per keep-alive request (callgrind, (N=$N2 − N=$N1) / $((N2 - N1)), $load)"
  echo
  wcol="" wsep=""
  [[ -n "$RATE" ]] && wcol=" epoll_wait calls | lot wakes (N1 / N2) |" wsep="---:|---:|"
  [[ -n "$HEADERS" ]] && wcol="$wcol memo copies |" wsep="$wsep---:|"
  if [[ "$SIM" == 1 ]]; then
    echo "Per request, with valgrind's cache and branch-predictor models (SIM=1): first-level instruction and data cache misses, last-level misses, conditional branches and their mispredictions, indirect branches (calls and jumps through a pointer) and theirs."
    echo
    echo "| server | instructions | I1 misses | D1 misses | LL misses | cond. branches | mispredicted | indirect branches | mispredicted |$wcol"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|$wsep"
  else
    echo "| server | instructions/request |$wcol"
    echo "|---|---:|$wsep"
  fi
  printf '%s\n' "${rows[@]}"
} | tee "$RES_DIR/table.md"
