#!/usr/bin/env bash
# bench/framed-memory.sh — where the bytes of an idle connection go, at the
# per-process scale of the million (one process of `serve --processes 1
# --workers 1`, ~18,500 connections: a million-connection run is 54 such
# processes). Framed TCP (u32 length header, the demo protocol) and HTTP/1.1
# side by side; two binaries (MEGACONN and MEGACONN_B, e.g. this branch and
# main) interleaved in each round, order rotated.
#
# Per binary, protocol and round (server on $SERVER_CPU, hold on $LOAD_CPU):
#   1. start the server, one GET / (the million's baseline is "at rest after
#      one request"), 3 s; snapshot A of the worker process;
#   2. `hold` (its own copy of the binary, so no code pages are shared with
#      the server) opens N connections at RAMP/s, heartbeats every INTERVAL
#      s (jittered; framed: a PING frame answered PONG, HTTP: GET /);
#      SETTLE s after all opened (they park after 2 s idle; the lot's sweep
#      decays the buffer pool and trims the heap), snapshot B;
#   3. per connection, (B − A) / N of: RSS and PSS (smaps_rollup), anonymous
#      memory, file pages (the binary's code paged in by the connection
#      path), and — with GDB=1 — glibc's heap: "system bytes" (what the
#      arenas hold from the OS) and "in use bytes" (live allocations), from
#      `malloc_stats()` called in the worker through gdb (it prints to the
#      worker's stderr, the server log). The difference of those two is heap
#      the allocator keeps free; RSS beyond "system" is mmapped chunks,
#      stacks and code.
# Env: N (18500), RAMP (5000), INTERVAL (600: idle; 30 is the million's),
#   SETTLE (8), ROUNDS (2), PROTOS ("framed http"), GDB (1), PORT (21300+),
#   SOURCE (127.0.21.2-127.0.21.9), MEGACONN (default target/release/megaconn),
#   MEGACONN_B (optional second binary, a row "b" each round).
# Output: bench/out/framed-memory-<stamp>/ (runs.jsonl, logs) and a table.
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N="${N:-18500}"
RAMP="${RAMP:-5000}"
INTERVAL="${INTERVAL:-600}"
SETTLE="${SETTLE:-8}"
ROUNDS="${ROUNDS:-2}"
PROTOS="${PROTOS:-framed http}"
GDB="${GDB:-1}"
SOURCE="${SOURCE:-127.0.21.2-127.0.21.9}"
MEGACONN_B="${MEGACONN_B:-}"

bench_traps
command -v jq >/dev/null || apt-get install -y jq >/dev/null
if [[ "$GDB" == 1 ]]; then command -v gdb >/dev/null || apt-get install -y gdb >/dev/null; fi
BENCH_SKIP_BUILD=1 bench_build # build first: cargo build --release
bench_tune
[[ "$MEGACONN_HOLD_OK" == 1 ]] || die "megaconn hold is not available"
PORT="${PORT:-$(free_port 21300)}"
HTTP_PORT="$(free_port $((PORT + 1)))"

STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
RES_DIR="$OUT_DIR/framed-memory-$STAMP"
mkdir -p "$RES_DIR"
RUNS="$RES_DIR/runs.jsonl"
: >"$RUNS"
log "results in $RES_DIR"
HOLD_BIN="$RES_DIR/megaconn-hold"
cp -f "$MEGACONN" "$HOLD_BIN"
declare -A BINS=([a]="$MEGACONN")
labels=(a)
if [[ -n "$MEGACONN_B" ]]; then
  B_COPY="$RES_DIR/megaconn-b"
  cp -f "$MEGACONN_B" "$B_COPY"
  BINS[b]="$B_COPY"
  labels+=(b)
fi

# "RSS PSS ANON FILE" bytes of one process (smaps_rollup; file = RSS − anon).
# %.0f, not %d: mawk's %d stops at 2^31 - 1.
snap_mem() {
  awk '$1 == "Rss:" { r = $2 } $1 == "Pss:" { p = $2 } $1 == "Anonymous:" { a = $2 }
       END { printf "%.0f %.0f %.0f %.0f\n", r * 1024, p * 1024, a * 1024, (r - a) * 1024 }' "/proc/$1/smaps_rollup"
}

# "SYSTEM INUSE BINS MMAP" bytes: glibc's heap as the process itself prints
# it (to its stderr, LOG) when gdb calls malloc_info() and malloc_stats():
# what the arenas hold from the OS (mmapped chunks included), live
# allocations, free chunks in the bins (fast + rest: what malloc_trim can
# give back page by page), mmapped chunks now. Free memory not in the bins is
# the arenas' top chunks; "0 0 0 0" without GDB.
snap_heap() { # PID LOG
  [[ "$GDB" == 1 ]] || { echo "0 0 0 0"; return; }
  local before
  before="$(wc -l <"$2")"
  gdb -q -p "$1" -batch -ex 'call (int) malloc_info(0, *(void **) &stderr)' \
    -ex 'call (void) malloc_stats()' >/dev/null 2>&1 || true
  tail -n +"$((before + 1))" "$2" | awk '
    /^<\/heap>/ { inheap = 0 } /^<heap / { inheap = 1 }
    !inheap && /<total type="(fast|rest)"/ { match($0, /size="[0-9]+"/); bins += substr($0, RSTART + 6, RLENGTH - 7) }
    !inheap && /<total type="mmap"/ { match($0, /size="[0-9]+"/); mm = substr($0, RSTART + 6, RLENGTH - 7) }
    /^Total \(incl. mmap\):/ { t = 1; next }
    t && /system bytes/ { s = $NF } t && /in use bytes/ { u = $NF }
    END { printf "%.0f %.0f %.0f %.0f\n", s, u, bins, mm }'
}

run_one() { # LABEL PROTO ROUND
  local label=$1 proto=$2 round=$3 base="$RES_DIR/$1-$2-r$3" worker i
  local -a listen=(--listen "127.0.0.1:$HTTP_PORT") target
  if [[ "$proto" == framed ]]; then
    listen+=(--tcp-listen "127.0.0.1:$PORT" --tcp-framing u32)
    target=("tcp://127.0.0.1:$PORT" --tcp-framing u32 --send PING --expect PONG)
  else
    target=("http://127.0.0.1:$HTTP_PORT/")
  fi
  bench_wait_quiet "${QUIET_WAIT_EACH:-10}"
  taskset -c "$SERVER_CPU" "${BINS[$label]}" serve --workers 1 --processes 1 --admin off \
    "${listen[@]}" >"$base.server.log" 2>&1 &
  SERVER_PID=$!
  SERVER_NAME="$label-$proto"
  for ((i = 0; i < 100; i++)); do port_listening "$HTTP_PORT" && break; sleep 0.1; done
  curl -fsS -o /dev/null "http://127.0.0.1:$HTTP_PORT/" || true
  bench_sleep 3
  # `--processes 1` serves in the process itself (more fork worker processes).
  worker="$(pgrep -P "$SERVER_PID" | head -1)" || true
  worker="${worker:-$SERVER_PID}"
  local m0 h0 m1 h1
  m0="$(snap_mem "$worker")"
  h0="$(snap_heap "$worker" "$base.server.log")"
  if ! MEGACONN="$HOLD_BIN" hold_start "$base.hold.log" "${target[@]}" --interval "${INTERVAL}s" -d 600s; then
    log "WARNING: $label $proto round $round: hold did not open $N"
    kill_ours TERM hold "$HOLD_PID"; server_stop; return 1
  fi
  bench_sleep "$SETTLE"
  m1="$(snap_mem "$worker")"
  h1="$(snap_heap "$worker" "$base.server.log")"
  kill_ours INT hold "$HOLD_PID"
  wait "$HOLD_PID" 2>/dev/null || true
  HOLD_PID=""
  server_stop
  jq -nc --arg binary "$label" --arg proto "$proto" --argjson round "$round" --argjson n "$N" \
    --arg m0 "$m0" --arg m1 "$m1" --arg h0 "$h0" --arg h1 "$h1" '
    ($m0 | split(" ") | map(tonumber)) as $a | ($m1 | split(" ") | map(tonumber)) as $b |
    ($h0 | split(" ") | map(tonumber)) as $c | ($h1 | split(" ") | map(tonumber)) as $d |
    {label: $binary, proto: $proto, round: $round, n: $n,
     before: {rss: $a[0], pss: $a[1], anon: $a[2], file: $a[3], heap_system: $c[0], heap_in_use: $c[1], heap_bins: $c[2], mmapped: $c[3]},
     after: {rss: $b[0], pss: $b[1], anon: $b[2], file: $b[3], heap_system: $d[0], heap_in_use: $d[1], heap_bins: $d[2], mmapped: $d[3]},
     per_conn: {rss: (($b[0] - $a[0]) / $n), pss: (($b[1] - $a[1]) / $n), anon: (($b[2] - $a[2]) / $n),
       file: (($b[3] - $a[3]) / $n), heap_system: (($d[0] - $c[0]) / $n), heap_in_use: (($d[1] - $c[1]) / $n),
       heap_bins: (($d[2] - $c[2]) / $n), mmapped: (($d[3] - $c[3]) / $n),
       heap_top: ((($d[0] - $d[1] - $d[2]) - ($c[0] - $c[1] - $c[2])) / $n)}}' | tee -a "$RUNS"
}

for ((r = 1; r <= ROUNDS; r++)); do
  order=("${labels[@]}")
  ((r % 2 == 0 && ${#labels[@]} == 2)) && order=(b a)
  for label in "${order[@]}"; do
    for proto in $PROTOS; do
      run_one "$label" "$proto" "$r" || true
    done
  done
done

{
  echo "| binary | protocol | round | Δ RSS | Δ PSS | Δ anon | Δ file pages | Δ heap held (system) | Δ heap in use | of which mmapped | Δ free in bins | Δ free at arena tops |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  jq -r '"| \(.label) | \(.proto) | \(.round) | " + ([.per_conn.rss, .per_conn.pss, .per_conn.anon, .per_conn.file,
      .per_conn.heap_system, .per_conn.heap_in_use, .per_conn.mmapped, .per_conn.heap_bins, .per_conn.heap_top] | map(. * 10 | round / 10 | tostring) | join(" | ")) + " |"' "$RUNS"
  echo
  echo "Bytes per connection, N=$N, worker process of \`serve --processes 1 --workers 1\`, heartbeats every ${INTERVAL} s, snapshot ${SETTLE} s after the ramp. a = $MEGACONN ($(cat "$MEGACONN.version" 2>/dev/null || echo '?'))${MEGACONN_B:+, b = $MEGACONN_B}."
} | tee "$RES_DIR/table.md"
