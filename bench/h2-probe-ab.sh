#!/usr/bin/env bash
# bench/h2-probe-ab.sh — server CPU per small message on an HTTP/2 stream
# echoed back as it comes (a bidirectional stream of small messages, as a
# gRPC bidi call's DATA frames are), for two megaconn binaries interleaved
# round by round (A then B, B then A, ...): ratios B/A, not absolute times.
#
# Made for session 54's question: what the read-time look at h2's small-DATA
# budget (`FloodBudget::h2_refuses`, `proto/http2/flood.rs`: h2's streams'
# lock once per read that holds a DATA frame under 256 bytes) costs, with A
# a build that looks and B one where the look is short-circuited.
#
# Client: bench/h2-padflood.py over h2c, mode data:<LEN>:-:echo:<AHEAD>
# (one stream to the demo's POST /echo, DATA frames of LEN bytes, at most
# AHEAD sent and not yet echoed: AHEAD 1 is a round trip per message, a read
# and a look per message, the worst case). Server CPU for the run: utime +
# stime from /proc/PID/stat (ticks) and the sum of /proc/PID/task/*/schedstat
# (ns, which the client prints), before and after. Server pinned to
# SERVER_CPU with one worker, the client to CLIENT_CPU.
#
# Env: A, B (binaries; required), ROUNDS (3), MODES ("data:20:-:echo:1
#   data:20:-:echo:16"), TOTAL (bytes of DATA a run, 2900000: 100,000
#   frames of 20 bytes), SERVER_CPU (1), CLIENT_CPU (0), PORT (38390).
# Prints one line a run and, per mode, the median µs a message of each binary
# and the median of the rounds' B/A (A and B run seconds apart in a round,
# so a machine whose load moves over the run moves both).
set -euo pipefail

A="${A:?A=binary}"
B="${B:?B=binary}"
ROUNDS="${ROUNDS:-3}"
MODES="${MODES:-data:20:-:echo:1 data:20:-:echo:16}"
TOTAL="${TOTAL:-2900000}"
SERVER_CPU="${SERVER_CPU:-1}"
CLIENT_CPU="${CLIENT_CPU:-0}"
PORT="${PORT:-38390}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TICK_US=$((1000000 / $(getconf CLK_TCK)))
RESULTS="$(mktemp)"
SERVER_PID=""

stop_server() {
  if [[ -n "$SERVER_PID" ]]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
  fi
}
trap 'stop_server; rm -f "$RESULTS"' EXIT

ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# One run: $1 label, $2 binary, $3 mode, $4 round.
run() {
  taskset -c "$SERVER_CPU" "$2" serve --listen "127.0.0.1:$PORT" --workers 1 --admin off \
    >/dev/null 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 100); do
    ss -Hltn "( sport = :$PORT )" | grep -q . && break
    sleep 0.05
  done
  local t0 line t1 frames sched
  t0="$(ticks "$SERVER_PID")"
  line="$(taskset -c "$CLIENT_CPU" python3 "$HERE/h2-padflood.py" "$SERVER_PID" "$PORT" "$3" "$TOTAL")"
  t1="$(ticks "$SERVER_PID")"
  stop_server
  frames="$(sed -E 's/.*sent ([0-9]+) frames.*/\1/' <<<"$line")"
  sched="$(sed -E 's/.* = ([0-9.]+) us\/frame.*/\1/' <<<"$line")"
  local stat
  stat="$(awk -v d=$((t1 - t0)) -v us="$TICK_US" -v n="$frames" 'BEGIN { printf "%.2f", d * us / n }')"
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$4" "$1" "$3" "$frames" "$sched" "$stat" | tee -a "$RESULTS"
  grep -q 'closed=False' <<<"$line" || echo "  (not to its end: $line)" >&2
}

printf 'round\tbinary\tmode\tmessages\tschedstat_us_per_msg\tstat_us_per_msg\n'
for round in $(seq "$ROUNDS"); do
  for mode in $MODES; do
    if ((round % 2)); then order="A B"; else order="B A"; fi
    for which in $order; do
      if [[ $which == A ]]; then run A "$A" "$mode" "$round"; else run B "$B" "$mode" "$round"; fi
    done
  done
done

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

echo
printf 'mode\tA median us/msg (schedstat, stat)\tB median us/msg (schedstat, stat)\tB/A, median of the rounds (schedstat, stat)\n'
for mode in $MODES; do
  med() { # label column
    awk -F'\t' -v m="$mode" -v l="$1" -v c="$2" '$3 == m && $2 == l { print $c }' "$RESULTS" | median
  }
  ratio() { # column: each round's B over A, their median
    awk -F'\t' -v m="$mode" -v c="$1" '$3 == m { v[$1 " " $2] = $c; r[$1] = 1 }
      END { for (k in r) if (v[k " A"] > 0) print v[k " B"] / v[k " A"] }' "$RESULTS" | median
  }
  printf '%s\t%.2f, %.2f\t%.2f, %.2f\t%.3f, %.3f\n' "$mode" "$(med A 5)" "$(med A 6)" \
    "$(med B 5)" "$(med B 6)" "$(ratio 5)" "$(ratio 6)"
done
