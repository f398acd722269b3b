#!/usr/bin/env bash
# bench/heartbeat-cpu.sh — CPU per heartbeat on parked keep-alive connections:
# megaconn beside nginx (and the Go peer if asked) in one run.
#
# What it measures: N keep-alive connections, each sending one GET / and then
# a heartbeat GET / every INTERVAL s (jittered by hold), held by `megaconn
# hold` (pinned to core $LOAD_CPU, default 0) against each server in turn (one
# worker/process, pinned to core $SERVER_CPU, default 1; megaconn with its
# default --park-after 2s, so with INTERVAL > 2 s every heartbeat wakes a
# parked connection). After the ramp and SETTLE s more, a window of WINDOW s:
#   server CPU per heartbeat = Δ(utime+stime of the server's processes, from
#     /proc/PID/stat) / heartbeats in the window,
#   hold's CPU per heartbeat  = the same for hold (and its children),
#   heartbeats in the window  = mean of hold's own "heartbeats/s" progress lines
#     over the window × the window (hold prints them about once a second),
#   machine other CPU = 2 × wall − idle (/proc/stat) − server − hold.
# Servers are interleaved over ROUNDS rounds (order rotated, fresh processes);
# the table has the median and the min–max of the rounds.
#
# With MEGACONN_B=/path/to/older/megaconn a row "megaconn-b" measures that
# binary too (its serve AND its hold), for before/after figures;
# MEGACONN_B_SERVE_ARGS adds `serve` arguments to that row only (the same
# binary with and without a flag: MEGACONN_B=$MEGACONN
# MEGACONN_B_SERVE_ARGS="--park-wake-batch 20ms"); MEGACONN_B_HOLD_ARGS does
# the same for that row's `hold` (MEGACONN_B=$MEGACONN
# MEGACONN_B_HOLD_ARGS=--wake-per-reply: hold woken by each reply, as before
# session 27, against replies read on its tick).
#
# Needs: root, 2 cores, nginx-light jq curl (lib.sh installs them), a built
# megaconn (cargo build --release; BENCH_SKIP_BUILD=1 to use target/ as is).
# Sets (via lib.sh bench_tune, printed when changed, not restored):
#   net.ipv4.ip_local_port_range="1024 65535", net.core.somaxconn=65535,
#   net.ipv4.tcp_max_syn_backlog=65535; ulimit -n 20000.
# Env: N (15000, max ~19,000: one server process, 20,000 open files), INTERVAL
#   (3), RAMP (5000/s), SETTLE (10 s after the ramp), WINDOW (30 s), ROUNDS (3),
#   SERVERS ("megaconn nginx"; also go), SOURCE (127.0.0.2-127.0.0.9), PORT.
#   PERF=1 also records a call-graph profile of the server over each window
#   (perf record -g -F PERF_FREQ, 2000): <server>-r<round>.perf.txt beside the
#   JSON, by DSO and symbol (the sampling adds its own CPU: compare the
#   profiles of a PERF=1 run, take the µs from a run without it).
#   TCP segments/hb: /proc/net/snmp OutSegs over the window (machine-wide:
#   both ends on loopback, data and pure ACKs) / heartbeats.
#   "of which user": the utime share of the server's CPU, in µs/heartbeat.
#   PROCESSES (1): server processes, megaconn `serve --workers 1 --processes
#   P` (a supervisor and P worker processes) against nginx with P workers, so
#   each process holds N/P connections (N up to ~19,000 × P).
#   Wake-ups: voluntary context switches of every thread of the server's
#   processes over the window (/proc/PID/task/*/status), per second and per
#   heartbeat: how often a server leaves the CPU to wait, its own timers'
#   wake-ups included. INTERVAL=3600 measures an almost idle server (N/3600
#   heartbeats a second): the second table then has its CPU and wake-ups per
#   second with N connections open.
#   HOLD_PROCESSES (hold's default: N / ~19,500): hold's processes. Each sends
#   its due beats once per grid tick (INTERVAL/300), so more hold processes
#   means more, smaller bursts: at the million 52 hold processes send ~1 beat
#   per tick to each of 54 server processes, and a server wakes for nearly
#   every heartbeat. HOLD_PROCESSES=30 with N=60000 PROCESSES=4 gives each
#   server process about the million's rate and burst size (N=76000 would
#   be closer, but overfills some of nginx's 19,000-connection workers).
# Output: bench/out/heartbeat-<stamp>/ (runs.jsonl, hold logs and JSON,
#   table.md) and the markdown table on stdout; SECTION_OUT=bench/HEARTBEAT.md
#   also writes it as that file's first section, which run-all.sh copies into
#   RESULTS.md (the hand-written sections after it stay).
#   FROM_RUNS=bench/out/heartbeat-<stamp>/runs.jsonl writes the tables of an
#   earlier run again without measuring (give the run's settings too).
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N="${N:-15000}"
INTERVAL="${INTERVAL:-3}"
RAMP="${RAMP:-5000}"
SETTLE="${SETTLE:-10}"
WINDOW="${WINDOW:-30}"
ROUNDS="${ROUNDS:-3}"
SERVERS="${SERVERS:-megaconn nginx}"
SOURCE="${SOURCE:-127.0.0.2-127.0.0.9}"
MEGACONN_B="${MEGACONN_B:-}"
PROCESSES="${PROCESSES:-1}"
PERF="${PERF:-0}"
PERF_FREQ="${PERF_FREQ:-2000}"
HOLD_PROCESSES="${HOLD_PROCESSES:-}"
[[ -n "$MEGACONN_B" && " $SERVERS " != *" megaconn-b "* ]] && SERVERS="$SERVERS megaconn-b"

bench_traps

bench_install_deps
bench_build
bench_tune
[[ "$MEGACONN_HOLD_OK" == 1 ]] || die "megaconn hold is not available"
PORT="${PORT:-$(free_port 38700)}"
URL="http://127.0.0.1:$PORT/"
MEGACONN_A="$MEGACONN"

STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
RES_DIR="$OUT_DIR/heartbeat-$STAMP"
# FROM_RUNS=bench/out/heartbeat-X/runs.jsonl: measure nothing, write the
# tables of that run again (the other settings must be the run's, for the
# captions).
if [[ -n "${FROM_RUNS:-}" ]]; then
  [[ -s "$FROM_RUNS" ]] || die "FROM_RUNS: no such runs file: $FROM_RUNS"
  RES_DIR="$(dirname "$FROM_RUNS")"
  STAMP="${RES_DIR##*/heartbeat-}"
fi
mkdir -p "$RES_DIR"
RUNS="$RES_DIR/runs.jsonl"
[[ -n "${FROM_RUNS:-}" ]] || : >"$RUNS"
log "results in $RES_DIR"

# Voluntary context switches of every thread of the server's processes.
server_wakeups() {
  local p
  for p in $SERVER_PID $(pid_descendants "$SERVER_PID"); do cat /proc/"$p"/task/*/status 2>/dev/null; done |
    awk '$1 == "voluntary_ctxt_switches:" { v += $2 } END { printf "%.0f\n", v }'
}

run_one() { # server round
  local server=$1 round=$2 kind=$1 bin="$MEGACONN_A" workers=1 serve_args="${MEGACONN_SERVE_ARGS:-}"
  local base="$RES_DIR/$server-r$round" extra="" hold_extra=""
  if [[ "$server" == megaconn-b ]]; then
    kind=megaconn bin="$MEGACONN_B" extra="${MEGACONN_B_SERVE_ARGS:-}" hold_extra="${MEGACONN_B_HOLD_ARGS:-}"
  fi
  local nginx_opts="${NGINX_LISTEN_OPTS:-}"
  if ((PROCESSES > 1)); then
    # nginx's workers each get a listening socket (SO_REUSEPORT), as
    # megaconn's worker processes do.
    [[ "$kind" == nginx ]] && workers=$PROCESSES NGINX_LISTEN_OPTS="$nginx_opts reuseport"
    [[ "$kind" == megaconn ]] && MEGACONN_SERVE_ARGS="$serve_args --processes $PROCESSES"
  fi
  [[ -n "$extra" ]] && MEGACONN_SERVE_ARGS="${MEGACONN_SERVE_ARGS:-} $extra"
  MEGACONN="$bin"
  bench_wait_quiet "${QUIET_WAIT_EACH:-10}"
  server_start "$kind" "$PORT" "$workers" || {
    MEGACONN="$MEGACONN_A" MEGACONN_SERVE_ARGS="$serve_args" NGINX_LISTEN_OPTS="$nginx_opts"
    return 1
  }
  MEGACONN_SERVE_ARGS="$serve_args" NGINX_LISTEN_OPTS="$nginx_opts"
  local ramp_s=$(((N + RAMP - 1) / RAMP))
  local dur=$((SETTLE + WINDOW + 10))
  taskset -c "$LOAD_CPU" "$bin" hold "$URL" -c "$N" --ramp "$RAMP" --source "$SOURCE" \
    --interval "${INTERVAL}s" -d "${dur}s" ${HOLD_PROCESSES:+--processes "$HOLD_PROCESSES"} \
    $hold_extra --json "$base.hold.json" >"$base.hold.log" 2>&1 &
  HOLD_PID=$!
  # Wait (bounded) until hold has every connection open, then SETTLE s.
  local i t_open=""
  for ((i = 0; i < (ramp_s + 30) * 5; i++)); do
    kill -0 "$HOLD_PID" 2>/dev/null || break
    if (($(hold_open "$base.hold.log") >= N)); then t_open="$(hold_clock "$base.hold.log")"; break; fi
    sleep 0.2
  done
  if [[ -z "$t_open" ]]; then
    log "WARNING: $server round $round: hold did not open $N connections (see $base.hold.log)"
    kill_ours TERM hold "$HOLD_PID"; wait "$HOLD_PID" 2>/dev/null || true; HOLD_PID=""
    server_stop; MEGACONN="$MEGACONN_A"
    return 1
  fi
  sleep "$SETTLE"
  local s0 s1 u0 u1 g0 g1 h0 h1 m0 m1 c0 c1 hc0 hc1 busy est w0 w1 ns0 ns1
  m0="$(machine_idle_snapshot)"
  w0="$(server_wakeups)"
  ns0="$(sched_ns "$SERVER_PID")"
  read -r u0 s0 < <(server_cpu_split)
  g0="$(tcp_out_segs)"
  h0="$(pid_cpu_secs "$HOLD_PID")"
  hc0="$(hold_clock "$base.hold.log")"
  c0="$(established_count "$PORT")"
  if [[ "$PERF" == 1 ]]; then
    # A call-graph profile of every server process over the window (perf's
    # own sampling interrupts land in the CPU figures: compare profiles,
    # not µs, from a PERF=1 run).
    # shellcheck disable=SC2046
    perf record -q -g -F "$PERF_FREQ" -o "$base.perf.data" \
      -p "$(echo $SERVER_PID $(pid_descendants "$SERVER_PID") | tr ' ' ,)" -- sleep "$WINDOW" >/dev/null 2>&1 || true
    perf report -i "$base.perf.data" --no-children -g none --sort dso,symbol --percent-limit 0.3 --stdio \
      >"$base.perf.txt" 2>/dev/null || true
  else
    sleep "$WINDOW"
  fi
  read -r u1 s1 < <(server_cpu_split)
  w1="$(server_wakeups)"
  ns1="$(sched_ns "$SERVER_PID")"
  g1="$(tcp_out_segs)"
  h1="$(pid_cpu_secs "$HOLD_PID")"
  m1="$(machine_idle_snapshot)"
  hc1="$(hold_clock "$base.hold.log")"
  c1="$(established_count "$PORT")"
  busy="$(machine_busy_between "$m0" "$m1")"
  # Let hold finish on its own (bounded), then stop the server.
  for ((i = 0; i < 300; i++)); do kill -0 "$HOLD_PID" 2>/dev/null || break; sleep 0.1; done
  kill_ours TERM hold "$HOLD_PID"
  wait "$HOLD_PID" 2>/dev/null || true
  HOLD_PID=""
  server_stop
  MEGACONN="$MEGACONN_A"
  est="$(hb_rate "$base.hold.log" "$hc0" "$hc1")"
  jq -cn --arg server "$server" --argjson round "$round" --argjson n "$N" --argjson interval "$INTERVAL" \
    --argjson s "$(awk -v a="$s0" -v b="$s1" 'BEGIN { printf "%.4f", b - a }')" \
    --argjson u "$(awk -v a="$u0" -v b="$u1" 'BEGIN { printf "%.4f", b - a }')" \
    --argjson h "$(awk -v a="$h0" -v b="$h1" 'BEGIN { printf "%.4f", b - a }')" \
    --argjson wall "$(awk -v a="$m0" -v b="$m1" 'BEGIN { split(a, x, " "); split(b, y, " "); printf "%.3f", y[1] - x[1] }')" \
    --argjson segs "$((g1 - g0))" --argjson wakeups "$((w1 - w0))" --argjson sched_ns "$((ns1 - ns0))" --argjson busy "$busy" --argjson rate "$est" --argjson c0 "$c0" --argjson c1 "$c1" \
    --slurpfile hold <(jq -c . "$base.hold.json" 2>/dev/null || echo null) \
    '{server: $server, round: $round, connections: $n, interval_secs: $interval,
      established_start: $c0, established_end: $c1, window_secs: $wall,
      heartbeats_per_sec: $rate, heartbeats: (if $rate == null then null else $rate * $wall end),
      server_cpu_secs: $s, server_user_secs: $u, hold_cpu_secs: $h, server_wakeups: $wakeups,
      server_sched_secs: ($sched_ns / 1e9),
      server_wakeups_per_hb: (if $rate == null or $rate == 0 then null else $wakeups / ($rate * $wall) end),
      server_user_share: (if $s == 0 then null else $u / $s end),
      server_us_per_hb: (if $rate == null or $rate == 0 then null else $s * 1e6 / ($rate * $wall) end),
      hold_us_per_hb: (if $rate == null or $rate == 0 then null else $h * 1e6 / ($rate * $wall) end),
      other_cpu_secs: ($busy - $s - $h),
      tcp_segments_per_hb: (if $rate == null or $rate == 0 then null else $segs / ($rate * $wall) end),
      hold_report: {heartbeats_ok: $hold[0].heartbeats_ok, heartbeat_errors: $hold[0].heartbeat_errors,
        drops: $hold[0].drops, p50_us: $hold[0].heartbeat_latency_us.p50, p99_us: $hold[0].heartbeat_latency_us.p99,
        holding_p50_us: $hold[0].heartbeat_latency_holding_us.p50, holding_p99_us: $hold[0].heartbeat_latency_holding_us.p99}}' >>"$RUNS"
  log "$(tail -1 "$RUNS" | jq -r '"round \(.round) \(.server): \(.heartbeats_per_sec) hb/s, server \(.server_us_per_hb*100|round/100) us/hb, hold \(.hold_us_per_hb*100|round/100) us/hb, established \(.established_start)->\(.established_end)"')"
}

t_start=$SECONDS
read -r -a servers <<<"$SERVERS"
measure_rounds=$ROUNDS
[[ -n "${FROM_RUNS:-}" ]] && measure_rounds=0
((measure_rounds == 0)) || bench_wait_quiet "${QUIET_WAIT:-30}"
interleaved_rounds "${measure_rounds}" run_one "${servers[@]}"
elapsed=$((SECONDS - t_start))

{
  echo "### CPU per heartbeat on parked connections ($N connections, a heartbeat GET / on each every ${INTERVAL} s; medians of $ROUNDS rounds, min–max in brackets)"
  echo
  echo "| server | heartbeats/s | server CPU | server µs/heartbeat | of which user | hold µs/heartbeat | server µs/hb vs nginx | TCP segments/hb | other CPU | failed heartbeats / drops |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  jq -rs "$BENCH_JQ_DEFS"'
    def mm(f): (map(f) | median | f2) + " (" + (map(f) | min | f2) + "–" + (map(f) | max | f2) + ")";
    # A round without a hold report has unknown failures: "—", not 0.
    def total(f): map(f) | if any(. == null) then "—" else add end;
    map(select(.server_us_per_hb != null)) | group_by(.server) | (map(select(.[0].server == "nginx")) | .[0] // null) as $ng
    | ($ng | if . == null then null else map(.server_us_per_hb) | median end) as $ngm
    | .[]
    | "| \(.[0].server) | \(map(.heartbeats_per_sec) | median | f0) | \(map(.server_cpu_secs / .window_secs) | median | pct) | \(mm(.server_us_per_hb)) | \(map(.server_us_per_hb * (.server_user_share // 0)) | median | f2) | \(mm(.hold_us_per_hb)) | "
      + (if $ngm == null or $ngm == 0 then "—" else ((map(.server_us_per_hb) | median) / $ngm | f2) + "×" end)
      + " | \(map(.tcp_segments_per_hb // 0) | median | f2) | \(map(.other_cpu_secs / .window_secs) | median | pct) | \(total(.hold_report.heartbeat_errors)) / \(total(.hold_report.drops)) |"' "$RUNS"
  echo
  echo "Server pinned to core $SERVER_CPU ($PROCESSES process(es) of one worker each; megaconn parks idle connections after 2 s, so every heartbeat wakes a parked one), \`megaconn hold\` to core $LOAD_CPU. Window: $WINDOW s starting $SETTLE s after all $N were open. µs/heartbeat = CPU seconds (utime+stime, /proc/PID/stat) in the window / heartbeats in it (hold's own heartbeats/s lines averaged over the window × its length). other CPU = the machine's busy time (2 × wall − idle) minus server and hold, in % of one core: other people's work on this shared machine; ratios measured side by side in one run are the figures to trust, absolute µs move with it."
  echo
  echo "#### The servers' CPU and wake-ups per second over the window ($N connections open; medians of $ROUNDS rounds)"
  echo
  echo "| server | server CPU, µs per second | wake-ups per second | wake-ups per heartbeat | heartbeat p50 / p99 ms after the ramp |"
  echo "|---|---:|---:|---:|---:|"
  jq -rs "$BENCH_JQ_DEFS"'
    def ms(f): map(f) | if any(. == null) then "—" else median / 1000 | f2 end;
    group_by(.server) | .[]
    | "| \(.[0].server) | \(map(.server_sched_secs / .window_secs * 1e6) | median | f0) | \(map(.server_wakeups / .window_secs) | median | f1) | "
      + (map(.server_wakeups_per_hb) | if any(. == null) then "—" else median | f3 end)
      + " | \(ms(.hold_report.holding_p50_us)) / \(ms(.hold_report.holding_p99_us)) |"' "$RUNS"
  echo
  echo "CPU: nanoseconds on the CPU of every thread of the server's processes (/proc/PID/task/*/schedstat: finer than the 10 ms ticks of the table above). Wake-ups: voluntary context switches of every thread of the server's processes (megaconn's supervisor, worker processes and their threads; nginx's master and workers). Heartbeat latency: hold's, from send to response, over the heartbeats after its ramp (median of the rounds). With INTERVAL=3600 an idle server: N/3600 heartbeats a second (the first beats are spread over the interval), and its own timers."
  echo
  echo "_heartbeat-cpu.sh: N=$N INTERVAL=$INTERVAL RAMP=$RAMP SETTLE=$SETTLE WINDOW=$WINDOW ROUNDS=$ROUNDS PROCESSES=$PROCESSES${HOLD_PROCESSES:+ HOLD_PROCESSES=$HOLD_PROCESSES}${MEGACONN_B_SERVE_ARGS:+ MEGACONN_B_SERVE_ARGS=\"$MEGACONN_B_SERVE_ARGS\"}${MEGACONN_B_HOLD_ARGS:+ MEGACONN_B_HOLD_ARGS=\"$MEGACONN_B_HOLD_ARGS\"} SERVERS=\"$SERVERS\"; megaconn $(cat "$MEGACONN_A.version" 2>/dev/null || echo '?'); run time ${elapsed}s; raw JSON: bench/out/heartbeat-$STAMP/_"
  echo
  echo "Command: \`N=$N INTERVAL=$INTERVAL WINDOW=$WINDOW ROUNDS=$ROUNDS PROCESSES=$PROCESSES${HOLD_PROCESSES:+ HOLD_PROCESSES=$HOLD_PROCESSES}${MEGACONN_B_SERVE_ARGS:+ MEGACONN_B_SERVE_ARGS=\"$MEGACONN_B_SERVE_ARGS\"}${MEGACONN_B_HOLD_ARGS:+ MEGACONN_B_HOLD_ARGS=\"$MEGACONN_B_HOLD_ARGS\"} SERVERS=\"$SERVERS\" bash bench/heartbeat-cpu.sh\`"
} | tee "$RES_DIR/table.md"

if [[ -n "${SECTION_OUT:-}" ]]; then
  {
    echo "## CPU per heartbeat on parked connections"
    echo
    echo "Written by \`bench/heartbeat-cpu.sh\` (SECTION_OUT=$SECTION_OUT) on $(date -u '+%Y-%m-%d %H:%M UTC'); load average at the end $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores. **The machine was shared with other people's builds during this run**: read the ratios measured side by side, not the absolute µs."
    echo
    sed 's/^### /#### /' "$RES_DIR/table.md"
  } | write_first_section "$SECTION_OUT"
  log "wrote $SECTION_OUT (its first section; the hand-written ones after it kept)"
fi
