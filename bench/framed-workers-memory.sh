#!/usr/bin/env bash
# bench/framed-workers-memory.sh — what a parked message connection costs as
# the worker count grows (session 41: the side table's slots were per
# descriptor per worker, so W workers cost W slots per connection, and the
# arrays stayed after the connections closed), and the parking lot's own
# per-descriptor slots, with plain HTTP keep-alive connections.
#
# Per row (one server process, W workers):
#   framed: crates/megaconn/examples/framed_state_memory.rs (a 4-byte
#     length-prefixed echo with a STATE-byte state, W workers, parks after
#     2 s idle); http: `megaconn serve --workers W --processes 1`.
#   1. start it, wait 2 s, RSS A (the process, /proc/PID/status VmRSS);
#   2. `megaconn hold` opens N connections (--interval 30s, -d DURATION s);
#      at SNAP s after hold started, RSS B (all parked: idle since the
#      ramp, ~3 s at 5,000/s, plus 2 s);
#   3. hold ends (its connections close); AFTER s later, RSS C.
#   Prints W, state, (B − A) / N and (C − A) / N bytes per connection.
# Env: SERVER (the example's binary; default
#   target/release/examples/framed_state_memory), MEGACONN (hold, and the
#   http server; default target/release/megaconn), WORKERS ("1 2 4 8"),
#   STATES ("0 256"), PROTOS ("framed http"), N (15000), DURATION (30),
#   SNAP (25), AFTER (15), PORT (27300).
# shellcheck disable=SC2153  # SERVER, PORT, WORKERS: set by lib.sh's bench_defaults
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
MEGACONN="${MEGACONN_USER:-$CARGO_TARGET/release/megaconn}"
bench_defaults SERVER="$CARGO_TARGET/release/examples/framed_state_memory" \
  WORKERS="1 2 4 8" STATES="0 256" PROTOS="framed http" N=15000 DURATION=30 \
  SNAP=25 AFTER=15 PORT=27300

rss() { awk '$1 == "VmRSS:" { print $2 * 1024 }' "/proc/$1/status"; }

SERVER_PID=""
HOLD_PID=""
cleanup() {
  [[ -n "$HOLD_PID" ]] && kill "$HOLD_PID" 2>/dev/null || true
  [[ -n "$SERVER_PID" ]] && kill "$SERVER_PID" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT

printf '%-7s %3s %6s %10s %10s %10s %12s %12s\n' proto W state "A (MB)" "B (MB)" "C (MB)" "open B/conn" "closed B/conn"
row() { # PROTO W STATE
  local proto=$1 w=$2 state=$3 a b c target
  if [[ "$proto" == framed ]]; then
    "$SERVER" "127.0.0.1:$PORT" "$w" "$state" >/dev/null 2>&1 &
    target=("tcp://127.0.0.1:$PORT" --tcp-framing u32 --send PING)
  else
    "$MEGACONN" serve --workers "$w" --processes 1 --admin off --listen "127.0.0.1:$PORT" >/dev/null 2>&1 &
    target=("http://127.0.0.1:$PORT/")
    state=-
  fi
  SERVER_PID=$!
  sleep 2
  kill -0 "$SERVER_PID" 2>/dev/null || { echo "the server did not start (port $PORT taken?)" >&2; exit 1; }
  a="$(rss "$SERVER_PID")"
  "$MEGACONN" hold "${target[@]}" -c "$N" --interval 30s -d "${DURATION}s" >/dev/null 2>&1 &
  HOLD_PID=$!
  sleep "$SNAP"
  b="$(rss "$SERVER_PID")"
  wait "$HOLD_PID" || true
  HOLD_PID=""
  sleep "$AFTER"
  c="$(rss "$SERVER_PID")"
  kill "$SERVER_PID"
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
  awk -v p="$proto" -v w="$w" -v s="$state" -v a="$a" -v b="$b" -v c="$c" -v n="$N" 'BEGIN {
    printf "%-7s %3s %6s %10.1f %10.1f %10.1f %12.0f %12.0f\n", p, w, s, a / 1e6, b / 1e6, c / 1e6, (b - a) / n, (c - a) / n }'
}

for proto in $PROTOS; do
  for w in $WORKERS; do
    if [[ "$proto" == framed ]]; then
      for s in $STATES; do row "$proto" "$w" "$s"; done
    else
      row "$proto" "$w" -
    fi
  done
done
