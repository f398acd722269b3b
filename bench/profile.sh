#!/usr/bin/env bash
# bench/profile.sh — where megaconn's CPU per request goes (issue 15): the raw
# material of bench/PROFILE.md. HTTP/1.1 keep-alive, GET /, 64 connections,
# `megaconn serve --workers 1 --admin off` on core $SERVER_CPU (1), `megaconn
# load -t 1` on core $LOAD_CPU (0). Four measurements, each bounded:
#   1. perf: `perf record -e cpu-clock -F $PERF_FREQ --call-graph dwarf` of the
#      server for $PERF_SECS s under `load -c 64`; reports self time by
#      kernel/user, by DSO and by symbol, and the user-space time by symbol.
#      (No hardware counters in this VM: cpu-clock sampling. Samples land only
#      while the server runs, so the shares hold on a busy machine.)
#   2. strace -c -f: syscalls per request of megaconn and of the floor
#      (bench/peers/floor.c) under `load -c 64 -n $STRACE_REQS`; and (step
#      hbstrace) syscalls per heartbeat of megaconn and nginx with $HB_N
#      parked connections, a heartbeat each every $HB_INTERVAL s.
#   3. valgrind --tool=dhat: heap blocks and bytes per request = (run with
#      $VG_N2 requests − run with $VG_N1) / ($VG_N2 − $VG_N1): startup and
#      connection setup cancel out.
#   4. valgrind --tool=callgrind: user-space instructions per request, same
#      differencing, inclusive and self by function (callgrind_annotate).
# Needs: root, linux-perf, strace, valgrind (apt-get install when missing), gcc,
# jq, a built megaconn (target/release, debug=1 line tables). Sets no sysctls
# (ulimit -n 20000 via bench_tune, which also raises ip_local_port_range,
# somaxconn and tcp_max_syn_backlog as lib.sh says).
# Env: PERF_SECS (10), PERF_FREQ (2999), STRACE_REQS (200000), VG_N1 (2000),
#   VG_N2 (22000), HB_N (15000), HB_INTERVAL (3), HB_SETTLE (8), HB_SECS (10),
#   PORT, STEPS ("perf strace hbstrace dhat callgrind").
# Output: bench/out/profile-<stamp>/ (perf.data, reports, strace and valgrind
# outputs, summary.md); summary.md on stdout.
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PERF_SECS="${PERF_SECS:-10}"
PERF_FREQ="${PERF_FREQ:-2999}"
STRACE_REQS="${STRACE_REQS:-200000}"
VG_N1="${VG_N1:-2000}"
VG_N2="${VG_N2:-22000}"
STEPS="${STEPS:-perf strace hbstrace dhat callgrind}"
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

for c in perf strace valgrind; do
  command -v "$c" >/dev/null 2>&1 || {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "$([[ $c == perf ]] && echo linux-perf || echo "$c")" >/dev/null
  }
done
bench_install_deps
bench_build
bench_tune
PORT="${PORT:-$(free_port 38800)}"
URL="http://127.0.0.1:$PORT/"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
RES_DIR="$OUT_DIR/profile-$STAMP"
mkdir -p "$RES_DIR"
log "results in $RES_DIR"
# shellcheck disable=SC2034  # read by lib.sh's server_start
MEGACONN_SERVE_ARGS="--admin off"
SUM="$RES_DIR/summary.md"
: >"$SUM"

load() { taskset -c "$LOAD_CPU" "$MEGACONN" load "$URL" -t 1 -q "$@"; }

# ---- 1. perf -------------------------------------------------------------------
if [[ " $STEPS " == *" perf "* ]]; then
  server_start megaconn "$PORT" 1
  load -c 64 -d 1s >/dev/null 2>&1 || true
  load -c 64 -d "$((PERF_SECS + 2))s" --json "$RES_DIR/perf-load.json" >/dev/null 2>&1 &
  lp=$!
  sleep 1
  perf record -e cpu-clock -F "$PERF_FREQ" --call-graph dwarf,16384 -p "$SERVER_PID" \
    -o "$RES_DIR/perf.data" -- sleep "$PERF_SECS" 2>"$RES_DIR/perf-record.log" || true
  wait "$lp" || true
  server_stop
  perf report -i "$RES_DIR/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null \
    | grep -v '^$' >"$RES_DIR/perf-dso.txt" || true
  perf report -i "$RES_DIR/perf.data" --no-children --sort sym --stdio -g none --percent-limit 0.3 2>/dev/null \
    | grep -v '^$' >"$RES_DIR/perf-sym.txt" || true
  perf report -i "$RES_DIR/perf.data" --no-children --sort sym --stdio -g none --percent-limit 0.2 \
    --dsos "$(basename "$MEGACONN")" 2>/dev/null | grep -v '^$' >"$RES_DIR/perf-user-sym.txt" || true
  perf report -i "$RES_DIR/perf.data" --children --sort sym --stdio -g none --percent-limit 1 \
    --dsos "$(basename "$MEGACONN")" 2>/dev/null | grep -v '^$' >"$RES_DIR/perf-user-children.txt" || true
  {
    echo "### perf: server self time by DSO ($PERF_SECS s, cpu-clock at $PERF_FREQ Hz, load -c 64)"
    echo; echo '```'; grep -v '^#' "$RES_DIR/perf-dso.txt" | sed -n 1,12p; echo '```'; echo
    echo "### perf: top symbols, self time (all DSOs)"
    echo; echo '```'; grep -v '^#' "$RES_DIR/perf-sym.txt" | sed -n 1,40p; echo '```'; echo
  } >>"$SUM"
fi

# ---- 2. strace -c -f -----------------------------------------------------------
strace_one() { # server
  server_start "$1" "$PORT" 1
  load -c 64 -d 1s >/dev/null 2>&1 || true
  # -f: every thread; -c: counts only. Attach to the running server.
  strace -c -f -p "$SERVER_PID" -o "$RES_DIR/strace-$1.txt" &
  local sp=$!
  sleep 1
  load -c 64 -n "$STRACE_REQS" --json "$RES_DIR/strace-$1-load.json" >/dev/null 2>&1 || true
  sleep 0.5
  kill -INT "$sp" 2>/dev/null || true
  wait "$sp" 2>/dev/null || true
  server_stop
  {
    echo "#### $1: syscalls per request (strace -c -f, $STRACE_REQS requests at -c 64; a few hundred calls of connection setup and teardown included)"
    echo
    echo "| syscall | calls | per request | errors |"
    echo "|---|---:|---:|---:|"
    awk -v n="$STRACE_REQS" '$1 ~ /^[0-9.]+$/ && NF >= 5 {
        name = $NF; calls = $4; err = (NF == 6) ? $5 : 0
        printf "| %s | %d | %.4f | %d |\n", name, calls, calls / n, err }' "$RES_DIR/strace-$1.txt" | sort -t'|' -k3 -nr | sed -n 1,12p
    echo
  } >>"$SUM"
}
if [[ " $STEPS " == *" strace "* ]]; then
  echo "### strace -c -f: syscalls per request" >>"$SUM"; echo >>"$SUM"
  strace_one megaconn
  strace_one floor
fi

# ---- 2b. strace -c -f per heartbeat on parked connections ---------------------
# HB_N connections (megaconn hold, 127.0.0.2-9), a heartbeat each every
# HB_INTERVAL s; after HB_SETTLE s, strace -c -f on the server for HB_SECS s;
# heartbeats counted from hold's own heartbeats/s lines over that window.
hb_strace_one() { # server
  local hb_log="$RES_DIR/hb-$1.hold.log" t0 t1 rate
  server_start "$1" "$PORT" 1
  taskset -c "$LOAD_CPU" "$MEGACONN" hold "$URL" -c "$HB_N" --ramp 5000 --source 127.0.0.2-127.0.0.9 \
    --interval "${HB_INTERVAL}s" -d "$((HB_SETTLE + HB_SECS + 5))s" >"$hb_log" 2>&1 &
  local hp=$!
  sleep "$((HB_N / 5000 + 2 + HB_SETTLE))"
  t0="$(tail -c 2000 "$hb_log" | awk 'match($0, /^\[ *[0-9.]+s\]/) { t = substr($0, 2, RLENGTH - 3) + 0 } END { print t + 0 }')"
  local p pargs=()
  for p in $SERVER_MEASURE_PIDS; do pargs+=(-p "$p"); done # nginx: its workers
  timeout -s INT "$HB_SECS" strace -c -f "${pargs[@]}" -o "$RES_DIR/strace-hb-$1.txt" || true
  t1="$(tail -c 2000 "$hb_log" | awk 'match($0, /^\[ *[0-9.]+s\]/) { t = substr($0, 2, RLENGTH - 3) + 0 } END { print t + 0 }')"
  rate="$(awk -v a="$t0" -v b="$t1" 'match($0, /^\[ *[0-9.]+s\]/) { t = substr($0, 2, RLENGTH - 3) + 0; if (t < a || t > b) next
      for (i = 2; i <= NF; i++) if ($i == "heartbeats/s,") { s += $(i - 1); k++ } } END { printf "%.0f", k ? s / k : 0 }' "$hb_log")"
  kill_ours TERM hold "$hp"; wait "$hp" 2>/dev/null || true
  server_stop
  {
    echo "#### $1: syscalls per heartbeat ($HB_N connections, one heartbeat each every $HB_INTERVAL s; strace -c -f for $HB_SECS s; hold saw $rate heartbeats/s meanwhile, slowed by strace)"
    echo
    echo "Per heartbeat = calls / the most-called of sendto, writev, sendmsg, write (one response written per heartbeat: megaconn uses sendto, nginx writev)."
    echo
    echo "| syscall | calls | per heartbeat | errors |"
    echo "|---|---:|---:|---:|"
    awk -v n="$(awk '$NF ~ /^(sendto|writev|sendmsg|write)$/ && $4 > m { m = $4 } END { print m + 0 }' "$RES_DIR/strace-hb-$1.txt")" '$1 ~ /^[0-9.]+$/ && NF >= 5 && n > 0 {
        name = $NF; calls = $4; err = (NF == 6) ? $5 : 0
        printf "| %s | %d | %.3f | %d |\n", name, calls, calls / n, err }' "$RES_DIR/strace-hb-$1.txt" | sort -t'|' -k3 -nr | sed -n 1,12p
    echo
  } >>"$SUM"
}
HB_N="${HB_N:-15000}"; HB_INTERVAL="${HB_INTERVAL:-3}"; HB_SETTLE="${HB_SETTLE:-8}"; HB_SECS="${HB_SECS:-10}"
if [[ " $STEPS " == *" hbstrace "* ]]; then
  echo "### strace -c -f: syscalls per heartbeat on parked connections" >>"$SUM"; echo >>"$SUM"
  hb_strace_one megaconn
  hb_strace_one nginx
fi

# ---- 3./4. valgrind ------------------------------------------------------------
# vg_run TOOL N: the server under valgrind, one warm-up request, N requests
# at -c 64 (bounded: valgrind is ~50× slower), then SIGTERM (clean exit writes
# the tool's output).
vg_run() {
  local tool=$1 n=$2 out="$RES_DIR/$1-$2" i
  local extra=()
  [[ "$tool" == dhat ]] && extra=(--dhat-out-file="$out.dhat.json")
  [[ "$tool" == callgrind ]] && extra=(--callgrind-out-file="$out.callgrind" --dump-instr=no)
  taskset -c "$SERVER_CPU" valgrind --tool="$tool" "${extra[@]}" "$MEGACONN" serve \
    --listen "127.0.0.1:$PORT" --workers 1 --admin off >"$out.log" 2>&1 &
  # shellcheck disable=SC2034  # SERVER_NAME: read by lib.sh's server_stop
  SERVER_PID=$! SERVER_NAME="valgrind-$tool"
  for ((i = 0; i < 600; i++)); do curl -fsS -o /dev/null -m 1 "$URL" 2>/dev/null && break; sleep 0.2; done
  timeout 600 taskset -c "$LOAD_CPU" "$MEGACONN" load "$URL" -t 1 -q -c 64 -n "$n" --json "$out.load.json" >/dev/null 2>&1 || true
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  for ((i = 0; i < 600; i++)); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.2; done
  kill -KILL "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}
if [[ " $STEPS " == *" dhat "* ]]; then
  vg_run dhat "$VG_N1"
  vg_run dhat "$VG_N2"
  # dhat's log: "Total:     1,234 bytes in 56 blocks"
  tot() { awk '/Total:/ { gsub(",", ""); for (i = 1; i < NF; i++) { if ($(i+1) == "bytes") b = $i; if ($(i+1) == "blocks") k = $i } } END { print b + 0, k + 0 }' "$1"; }
  read -r b1 k1 < <(tot "$RES_DIR/dhat-$VG_N1.log")
  read -r b2 k2 < <(tot "$RES_DIR/dhat-$VG_N2.log")
  {
    echo "### valgrind --tool=dhat: heap allocations per request"
    echo
    echo "$VG_N1 requests: $k1 blocks, $b1 bytes; $VG_N2 requests: $k2 blocks, $b2 bytes (whole run, startup included)."
    awk -v b1="$b1" -v b2="$b2" -v k1="$k1" -v k2="$k2" -v n1="$VG_N1" -v n2="$VG_N2" \
      'BEGIN { printf "Per request: **%.2f allocations, %.0f bytes** ((run 2 − run 1) / %d requests).\n", (k2 - k1) / (n2 - n1), (b2 - b1) / (n2 - n1), n2 - n1 }'
    echo
    echo "Allocation sites per request (stack: first frames outside liballoc; run 2 − run 1):"
    echo
    echo '```'
    python3 - "$RES_DIR/dhat-$VG_N1.dhat.json" "$RES_DIR/dhat-$VG_N2.dhat.json" "$((VG_N2 - VG_N1))" <<'PY'
import json, re, sys
def agg(fn):
    dd = json.load(open(fn)); m = {}
    for pp in dd["pps"]:
        sig = []
        for i in pp["fs"]:
            f = dd["ftbl"][i]
            if re.search(r"library/alloc/|vgpreload|malloc|raw_vec|/alloc\.rs", f):
                continue
            f = re.sub(r"/root/.cargo/registry/src/[^/]+/|/work/[^/]+/", "", f.split(": ", 1)[-1])
            sig.append(f[:120])
            if len(sig) >= 6:
                break
        k = "\n      <- ".join(sig)
        b, n = m.get(k, (0, 0)); m[k] = (b + pp["tb"], n + pp["tbk"])
    return m
m1, m2, n = agg(sys.argv[1]), agg(sys.argv[2]), int(sys.argv[3])
rows = sorted((((v[1] - m1.get(k, (0, 0))[1]) / n, (v[0] - m1.get(k, (0, 0))[0]) / n, k) for k, v in m2.items()), reverse=True)
for blocks, size, k in rows:
    if blocks >= 0.05:
        print("%.2f allocations/request, %.0f B/request:\n      %s" % (blocks, size, k))
PY
    echo '```'
    echo
  } >>"$SUM"
fi
if [[ " $STEPS " == *" callgrind "* ]]; then
  vg_run callgrind "$VG_N1"
  vg_run callgrind "$VG_N2"
  for n in "$VG_N1" "$VG_N2"; do
    callgrind_annotate --auto=no --show-percs=no --inclusive=yes --threshold=100 "$RES_DIR/callgrind-$n.callgrind" >"$RES_DIR/callgrind-$n-incl.txt" 2>/dev/null || true
    callgrind_annotate --auto=no --show-percs=no --inclusive=no --threshold=100 "$RES_DIR/callgrind-$n.callgrind" >"$RES_DIR/callgrind-$n-self.txt" 2>/dev/null || true
  done
  # Per-function difference between the two runs / extra requests.
  for kind in self incl; do
    awk -v n="$((VG_N2 - VG_N1))" '
      function num(s) { gsub(",", "", s); return s + 0 }
      FNR == 1 { f++ }
      /^ *[0-9,]+ / && $0 !~ /PROGRAM TOTALS/ {
        v = num($1); line = $0; sub(/^ *[0-9,]+ +(\([^)]*\) +)?/, "", line)
        sub(/ \[[^]]*\]$/, "", line)
        if (f == 1) a[line] = v; else b[line] = v
      }
      /PROGRAM TOTALS/ { t[f] = num($1) }
      END {
        printf "TOTAL %.0f\n", (t[2] - t[1]) / n
        for (k in b) { d = (b[k] - a[k]) / n; if (d >= 5) printf "%.1f\t%s\n", d, k }
      }' "$RES_DIR/callgrind-$VG_N1-$kind.txt" "$RES_DIR/callgrind-$VG_N2-$kind.txt" \
      | sort -t$'\t' -k1 -nr >"$RES_DIR/callgrind-per-req-$kind.txt"
  done
  {
    echo "### valgrind --tool=callgrind: user-space instructions per request"
    echo
    echo "Total: $(awk '/^TOTAL/ { print $2 }' "$RES_DIR/callgrind-per-req-self.txt") instructions per request ((run with $VG_N2 − run with $VG_N1) / $((VG_N2 - VG_N1)))."
    echo
    echo "Self, top 40 (instructions per request, function):"
    echo; echo '```'; grep -v '^TOTAL' "$RES_DIR/callgrind-per-req-self.txt" | sed -n 1,40p | cut -c1-200; echo '```'; echo
    echo "By category (self instructions per request of each file:function, sorted into categories by bench/profile.sh's rules; rows under 5 instructions per request are left out):"
    echo
    echo '```'
    python3 - "$RES_DIR/callgrind-per-req-self.txt" <<'PY'
import re, sys
rows = []
total = None
for line in open(sys.argv[1]):
    if line.startswith("TOTAL"):
        total = float(line.split()[1]); continue
    v, k = line.rstrip("\n").split("\t", 1); rows.append((float(v), k))
def split(k):
    m = re.match(r"(.*?\.(?:rs|c|S|h)|\?\?\?):(.*)", k)
    return (m.group(1), m.group(2)) if m else ("", k)
cats = [
    ("memcpy (moves of futures, heads and requests; byte copies)", lambda f, fn: "memmove" in f or "memcpy" in fn),
    ("malloc/free", lambda f, fn: "malloc" in f or "arena.c" in f or re.search(r"__rust_(de)?alloc|__rdl_|cfree|_int_(free|malloc)|unlink_chunk", fn)),
    ("clock reads (Instant::now)", lambda f, fn: re.search(r"Timespec|Instant>::now|Instant::now|clock_gettime|elapsed|vdso", fn + f)),
    ("timers (tokio timeout/sleep registration, Timer drop)", lambda f, fn: re.search(r"tokio[^/]*/src/(time|runtime/time)/", f) or re.search(r"Timer|TimerEntry|Sleep|timeout::", fn)),
    ("parsing (head::parse, httparse, end-of-head scan)", lambda f, fn: "httparse" in f + fn or "head_may_be_complete" in fn or f.endswith("http1/head.rs") or "http1::head::" in fn or "memchr" in f + fn),
    ("http types: Request/HeaderMap/Uri build and drop (request and response)", lambda f, fn: re.search(r"/http-1\.|header_maps", f) or re.search(r"^http::|drop_in_place<http::|header_maps::|drop_in_place<\[http::|drop_in_place<alloc::vec::Vec<http::|HashMap<core::any::TypeId", fn)),
    ("response encoding + Date", lambda f, fn: re.search(r"encode|date\.rs|write_head|format_u64|put_header", f + fn)),
    ("service call (megaconn::service glue, demo app)", lambda f, fn: "demo.rs" in f or "service/mod.rs" in f or ("demo::" in fn and "Service" in fn) or fn.startswith("megaconn::service::call")),
    ("metrics + lifecycle + stats", lambda f, fn: re.search(r"metrics|lifecycle|stats\.rs|RequestRecord|LocalKey", f + fn)),
    ("shutdown watch (select! on LocalShutdown / Notify per wait)", lambda f, fn: re.search(r"shutdown|notify", f + fn)),
    ("buffers (pool, BytesMut, Bytes)", lambda f, fn: re.search(r"pool\.rs|Buffers|bytes-1\.|bytes::", f + fn)),
    ("I/O readiness + syscall wrappers (tokio io, send/recv)", lambda f, fn: re.search(r"runtime/io|net/tcp|poll_evented|registration|scheduled_io|socket|send|recv|cancel|transport|conn/io\.rs|poll_flush", f + fn)),
    ("task polling, wakers, scheduler (tokio task/scheduler, futures combinators)", lambda f, fn: re.search(r"tokio|futures|task|waker|poll_fn|future\.rs|select", f + fn)),
    ("connection/exchange state machine (http1/conn.rs, exchange.rs)", lambda f, fn: re.search(r"http1/(conn|exchange)\.rs|megaconn::http1|megaconn::proto::http1::(conn|exchange)|blocks::CachedBox", f + fn)),
]
acc = {c: 0.0 for c, _ in cats}; acc["other"] = 0.0
for v, k in rows:
    f, fn = split(k)
    # Code inlined from the standard library (ptr::drop_in_place, Option,
    # slice iterators...) is filed under the function it was inlined into.
    if "/rustc/" in f:
        f = ""
    for c, t in cats:
        if t(f, fn):
            acc[c] += v; break
    else:
        acc["other"] += v
print("%6s  %6s  %s" % ("instr", "share", "category"))
for c, v in sorted(acc.items(), key=lambda x: -x[1]):
    print("%6.0f  %5.1f%%  %s" % (v, 100 * v / total, c))
print("%6.0f  %5.1f%%  %s" % (total - sum(acc.values()), 100 * (total - sum(acc.values())) / total, "rows under 5 instr/request"))
PY
    echo '```'
    echo
    echo "Inclusive, top 60:"
    echo; echo '```'; grep -v '^TOTAL' "$RES_DIR/callgrind-per-req-incl.txt" | sed -n 1,60p | cut -c1-200; echo '```'
  } >>"$SUM"
fi
cat "$SUM"
