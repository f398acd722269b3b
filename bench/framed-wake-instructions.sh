#!/usr/bin/env bash
# bench/framed-wake-instructions.sh — the server's user-space instructions
# per heartbeat on a parked framed connection (each one a wake from the
# parking lot, a take from the side table, the echo, and a put back),
# counted by callgrind: a before/after figure a busy machine cannot blur
# (bench/park-instructions.sh does the same for HTTP/1.1, which never
# touches the side table).
#
# The server is crates/megaconn/examples/framed_state_memory.rs (one worker,
# a STATE-byte state, parks after 2 s idle) under callgrind; `megaconn hold
# -c N --interval INTERVAL` (native, --tcp-framing u32, a PING frame) keeps
# its connections parked between heartbeats (INTERVAL > 2 s). Two runs per
# binary, SHORT s and LONG s held:
#   instructions per heartbeat = (Ir(LONG) − Ir(SHORT)) / (heartbeats(LONG) − heartbeats(SHORT))
# Env: SERVERS (the example's binaries, space-separated; default
#   target/release/examples/framed_state_memory), MEGACONN (hold), N (1000),
#   INTERVAL (3s), STATE (0), SHORT (8), LONG (23), PORT (41977).
# shellcheck disable=SC2153  # SERVERS, PORT: set by lib.sh's bench_defaults
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
MEGACONN="${MEGACONN_USER:-$CARGO_TARGET/release/megaconn}"
bench_defaults SERVERS="$CARGO_TARGET/release/examples/framed_state_memory" \
  N=1000 INTERVAL=3s STATE=0 SHORT=8 LONG=23 PORT=41977
OUT="$(mktemp -d /tmp/framed-wake-instructions.XXXXXX)"

SERVER_PID=""
trap '[[ -n "$SERVER_PID" ]] && kill "$SERVER_PID" 2>/dev/null; true' EXIT

held() { # BINARY SECS BASE -> "IR HEARTBEATS"
  local bin=$1 secs=$2 base=$3 i
  valgrind --tool=callgrind --dump-instr=no --callgrind-out-file="$base.callgrind" \
    "$bin" "127.0.0.1:$PORT" 1 "$STATE" >"$base.serve.log" 2>&1 &
  SERVER_PID=$!
  for ((i = 0; i < 300; i++)); do grep -q "framed echo on" "$base.serve.log" && break; sleep 0.2; done
  kill -0 "$SERVER_PID" 2>/dev/null || { echo "the server did not start: $base.serve.log" >&2; exit 1; }
  "$MEGACONN" hold "tcp://127.0.0.1:$PORT" --tcp-framing u32 --send PING -c "$N" \
    --interval "$INTERVAL" --timeout 30s -d "${secs}s" -q --json "$base.json" >"$base.hold.log" 2>&1 || true
  kill -TERM "$SERVER_PID"
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
  echo "$(awk '/^(summary|totals):/ { print $2; exit }' "$base.callgrind") $(jq .heartbeats_ok "$base.json") $(jq '.heartbeat_errors + .drops' "$base.json")"
}

echo "| server | heartbeats (difference) | instructions (difference) | instructions/heartbeat | errors + drops |"
echo "|---|---:|---:|---:|---:|"
k=0
for bin in $SERVERS; do
  k=$((k + 1))
  read -r i0 h0 e0 < <(held "$bin" "$SHORT" "$OUT/$k-short")
  read -r i1 h1 e1 < <(held "$bin" "$LONG" "$OUT/$k-long")
  awk -v n="$bin" -v i0="$i0" -v i1="$i1" -v h0="$h0" -v h1="$h1" -v bad="$((e0 + e1))" \
    'BEGIN { printf "| %s | %d | %d | **%.0f** | %d |\n", n, h1 - h0, i1 - i0, (i1 - i0) / (h1 - h0), bad }'
done
echo "Command: SERVERS=\"$SERVERS\" N=$N INTERVAL=$INTERVAL STATE=$STATE SHORT=$SHORT LONG=$LONG bash bench/framed-wake-instructions.sh; files in $OUT"
