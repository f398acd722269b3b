#!/usr/bin/env bash
# bench/connect-cpu.sh — the server's CPU per NEW connection (issue 15):
# accepting it, answering its opening request and (megaconn) parking it once
# idle; then, when the client hangs up, closing it. Side by side with nginx,
# interleaved rounds.
#
# Why: the million's whole-run heartbeat tail comes from its ramp, where
# 3,000 connections a second open while heartbeats flow (bench/MILLION.md:
# server and hold near 200 % of the machine in the ramp's second half, p99
# after the ramp 31–36 ms, over the whole run 91 ms). A reconnect storm after
# a deploy or a network blip is the same load in production.
#
# What it does, per server and round: `serve` (one worker, core $SERVER_CPU)
# and `megaconn hold -c N --ramp RAMP --interval 3600s` (core $LOAD_CPU):
# every connection makes its opening GET / and then stays silent (N/3600
# heartbeats a second, a few). Windows:
#   open  = from before hold starts until all N are open and PARK_WAIT s more
#           (megaconn parks after --park-after, 2 s by default);
#   close = from then until hold has exited and the server holds none of them
#           (hold closes all N at its end; the idle seconds in between cost a
#           parked server nothing measurable).
#   µs per connection = the server's CPU (utime+stime, /proc/PID/stat, its
#   whole process tree) in the window / N; "user" = utime alone.
#   hold µs/connect = hold's CPU in the open window / N (the client's side).
#
# Needs: root, nginx (lib.sh installs it), jq, a built megaconn.
# Env: N (18000), RAMP (1500), PARK_WAIT (4), ROUNDS (3), SERVERS
#   ("megaconn nginx"), MEGACONN_B (adds megaconn-b: another build), SOURCE
#   (127.0.0.2-127.0.0.9), PORT, BENCH_SKIP_BUILD=1, MEGACONN.
# Output: the table on stdout and in bench/out/connect-<stamp>/table.md.
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N="${N:-18000}"
RAMP="${RAMP:-1500}"
PARK_WAIT="${PARK_WAIT:-4}"
ROUNDS="${ROUNDS:-3}"
SERVERS="${SERVERS:-megaconn nginx}"
SOURCE="${SOURCE:-127.0.0.2-127.0.0.9}"
MEGACONN_B="${MEGACONN_B:-}"
[[ -n "$MEGACONN_B" && " $SERVERS " != *" megaconn-b "* ]] && SERVERS="$SERVERS megaconn-b"
((N <= 19000)) || die "N=$N: one process of hold and of the server each, so N <= 19,000 (open-file cap)"

bench_traps
bench_install_deps
bench_build
bench_tune
[[ "$MEGACONN_HOLD_OK" == 1 ]] || die "megaconn hold is not available"
PORT="${PORT:-$(free_port 38900)}"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
RES_DIR="$OUT_DIR/connect-$STAMP"
RUNS="$RES_DIR/runs.jsonl"
mkdir -p "$RES_DIR" && : >"$RUNS"
log "results in $RES_DIR"

run_one() { # server round
  local server=$1 round=$2 base="$RES_DIR/$1-r$2" i
  bench_wait_quiet "${QUIET_WAIT_EACH:-10}"
  server_start "$server" "$PORT" 1 || return 1
  local ramp_s=$(((N + RAMP - 1) / RAMP))
  local u0 t0 h0 u1 t1 h1 u2 t2 open_ok=0
  read -r u0 t0 < <(server_cpu_split)
  taskset -c "$LOAD_CPU" "$MEGACONN" hold "http://127.0.0.1:$PORT/" -c "$N" --ramp "$RAMP" \
    --source "$SOURCE" --interval 3600s -d "$((ramp_s + PARK_WAIT + 8))s" >"$base.hold.log" 2>&1 &
  HOLD_PID=$!
  for ((i = 0; i < (ramp_s + 30) * 5; i++)); do
    kill -0 "$HOLD_PID" 2>/dev/null || break
    if (($(hold_open "$base.hold.log") >= N)); then open_ok=1; break; fi
    sleep 0.2
  done
  sleep "$PARK_WAIT"
  read -r u1 t1 < <(server_cpu_split)
  h1="$(pid_cpu_secs "$HOLD_PID")"
  # hold ends by itself (its -d), closing every connection; then wait
  # (bounded) until the server holds none of them.
  for ((i = 0; i < 600; i++)); do kill -0 "$HOLD_PID" 2>/dev/null || break; sleep 0.1; done
  kill_ours TERM hold "$HOLD_PID"
  wait "$HOLD_PID" 2>/dev/null || true
  HOLD_PID=""
  for ((i = 0; i < 300; i++)); do (($(established_count "$PORT") == 0)) && break; sleep 0.1; done
  sleep 1
  read -r u2 t2 < <(server_cpu_split)
  server_stop
  if ((open_ok == 0)); then
    log "WARNING: $server round $round: hold did not open $N connections (see $base.hold.log)"
    return 1
  fi
  h0=0 # hold's CPU from its start: all of it is the open window's
  jq -cn --arg server "$server" --argjson round "$round" --argjson n "$N" \
    --argjson open "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", b - a }')" \
    --argjson open_user "$(awk -v a="$u0" -v b="$u1" 'BEGIN { printf "%.4f", b - a }')" \
    --argjson close "$(awk -v a="$t1" -v b="$t2" 'BEGIN { printf "%.4f", b - a }')" \
    --argjson hold "$(awk -v a="$h0" -v b="$h1" 'BEGIN { printf "%.4f", b - a }')" \
    '{server: $server, round: $round, connections: $n,
      open_us: ($open * 1e6 / $n), open_user_us: ($open_user * 1e6 / $n),
      close_us: ($close * 1e6 / $n), hold_us: ($hold * 1e6 / $n)}' >>"$RUNS"
  log "$(tail -1 "$RUNS" | jq -r '"round \(.round) \(.server): open \(.open_us|round) us/conn (user \(.open_user_us|round)), close \(.close_us|round), hold \(.hold_us|round)"')"
}

t_start=$SECONDS
read -r -a servers <<<"$SERVERS"
interleaved_rounds "${ROUNDS}" run_one "${servers[@]}"
elapsed=$((SECONDS - t_start))

{
  echo "### Server CPU per new connection ($N connections opened at $RAMP/s, each one GET / then silent; medians of $ROUNDS rounds, min–max in brackets)"
  echo
  echo "| server | open: µs per connection | of which user | vs nginx | close: µs per connection | hold µs per connect |"
  echo "|---|---:|---:|---:|---:|---:|"
  jq -rs "$BENCH_JQ_DEFS"'
    def mm(f): (map(f) | median | f1) + " (" + (map(f) | min | f1) + "–" + (map(f) | max | f1) + ")";
    group_by(.server) | (map(select(.[0].server == "nginx")) | .[0] // null) as $ng
    | ($ng | if . == null then null else map(.open_us) | median end) as $ngm
    | .[]
    | "| \(.[0].server) | \(mm(.open_us)) | \(map(.open_user_us) | median | f1) | "
      + (if $ngm == null or $ngm == 0 then "—" else ((map(.open_us) | median) / $ngm | f2) + "×" end)
      + " | \(mm(.close_us)) | \(map(.hold_us) | median | f1) |"' "$RUNS"
  echo
  echo "open = accept, the opening request and its answer, and (megaconn) parking the idle connection $PARK_WAIT s later at most; close = the client's hang-up of all of them. CPU = utime+stime of the server's processes (10 ms ticks: ±$(awk -v n="$N" 'BEGIN { printf "%.1f", 10000 / n }') µs per connection per reading). Server on core $SERVER_CPU (one worker), hold on core $LOAD_CPU."
  echo
  echo "_connect-cpu.sh: N=$N RAMP=$RAMP PARK_WAIT=$PARK_WAIT ROUNDS=$ROUNDS SERVERS=\"$SERVERS\"; megaconn $(cat "$MEGACONN.version" 2>/dev/null || echo '?'); run time ${elapsed}s; raw JSON: bench/out/connect-$STAMP/_"
} | tee "$RES_DIR/table.md"
