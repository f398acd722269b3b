#!/usr/bin/env bash
# bench/hold-instructions.sh — `megaconn hold`'s user-space instructions per
# heartbeat, counted by callgrind: independent of the machine's load, so a
# before/after figure that a busy shared machine cannot blur.
#
# What it measures: `megaconn serve` (native, pinned to core $SERVER_CPU)
# and `megaconn hold -c N --interval INTERVAL` under valgrind's callgrind,
# twice: held SHORT s and LONG s after the ramp, for each protocol in PROTOS:
#   http    `hold http://…/`, a `GET /` per heartbeat;
#   ws      `hold ws://…/ws` (serve's native WebSocket echo), a ping per
#           heartbeat answered by a pong;
#   framed  `hold tcp://… --tcp-framing u32 --send PING --expect PONG`
#           (serve's framed TCP demo on --tcp-listen), a PING frame per
#           heartbeat answered PONG;
#   https   `hold https://…/ --insecure` (serve's --tls-listen with
#           --self-signed), a `GET /` per heartbeat on a TLS connection's
#           own task. Not in the default PROTOS: its setup varies between
#           runs by tens of millions of instructions (handshakes resume or
#           not, as tickets allow), more than 10 s of 500 connections'
#           heartbeats cost, so its table row is noise; compare instead
#           `hold_conn::session`'s inclusive instructions per heartbeat
#           (`callgrind_annotate --inclusive=yes`, bench/HOLD-CPU.md). Setup (start-up, ramp,
# opening requests, shutdown) is the same in both runs, so
#   instructions per heartbeat = (Ir(LONG) − Ir(SHORT)) / (heartbeats(LONG) − heartbeats(SHORT))
# with the heartbeats from hold's own --json report. Kernel time is not
# counted (callgrind sees user space only): bench/heartbeat-cpu.sh has the
# CPU µs, kernel included.
#
# With MEGACONN_B=/path/to/older/megaconn its hold is counted too (against
# the same server build), for before/after figures.
#
# Needs: valgrind (installed if missing), jq, curl, a built megaconn (release).
# Env: N (2000), INTERVAL (1s), SHORT (4), LONG (14), PROTOS ("http ws
# framed"; also "https"), PORT (HTTP and WebSocket; framed TCP and TLS on
# the next free ports).
# Output: the table on stdout; callgrind files in bench/out/hold-instructions-<stamp>/
# (`callgrind_annotate --inclusive=yes FILE` shows where the instructions go).
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N="${N:-2000}"
INTERVAL="${INTERVAL:-1s}"
SHORT="${SHORT:-4}"
LONG="${LONG:-14}"
MEGACONN_B="${MEGACONN_B:-}"
PROTOS="${PROTOS:-http ws framed}"

trap bench_cleanup EXIT
trap 'exit 130' INT TERM
bench_install_deps
if ! command -v valgrind >/dev/null 2>&1; then
  log "installing: valgrind"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends valgrind >/dev/null
fi
bench_build
bench_tune
[[ "$MEGACONN_HOLD_OK" == 1 ]] || die "megaconn hold is not available"
PORT="${PORT:-$(free_port 38900)}"
TCP_PORT="$(free_port $((PORT + 1)))"
TLS_PORT="$(free_port $((TCP_PORT + 1)))"
RES_DIR="$OUT_DIR/hold-instructions-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$RES_DIR"

# One server for every protocol: HTTP and /ws on $PORT, the framed demo
# (u32 length header) on $TCP_PORT, HTTPS on $TLS_PORT if asked for.
MEGACONN_SERVE_ARGS="${MEGACONN_SERVE_ARGS:-} --tcp-listen 127.0.0.1:$TCP_PORT --tcp-framing u32"
if [[ " $PROTOS " == *" https "* ]]; then
  MEGACONN_SERVE_ARGS+=" --tls-listen 127.0.0.1:$TLS_PORT --self-signed"
fi
server_start megaconn "$PORT" 1 || die "megaconn serve did not start"

target() { # PROTO -> hold's target and protocol arguments, one a line
  case "$1" in
    http) echo "http://127.0.0.1:$PORT/" ;;
    ws) printf '%s\n' "ws://127.0.0.1:$PORT/ws" --ws-heartbeat ping ;;
    framed) printf '%s\n' "tcp://127.0.0.1:$TCP_PORT" --tcp-framing u32 --send PING --expect PONG ;;
    https) printf '%s\n' "https://127.0.0.1:$TLS_PORT/" --insecure ;;
    *) die "PROTOS: unknown protocol $1 (use http, ws, framed, https)" ;;
  esac
}

count() { # NAME BINARY PROTO -> one table row
  local name=$1 bin=$2 proto=$3 d ir=() hb=() bad=0 tgt
  mapfile -t tgt < <(target "$proto")
  for d in "$SHORT" "$LONG"; do
    local base="$RES_DIR/$name-$proto-$d"
    valgrind --tool=callgrind --callgrind-out-file="$base.callgrind" \
      "$bin" hold "${tgt[@]}" -c "$N" --ramp 5000 --interval "$INTERVAL" --timeout 10s \
      -d "${d}s" -q --json "$base.json" >"$base.log" 2>&1 || die "hold under callgrind failed: $base.log"
    ir+=("$(awk '/^summary:/ { print $2; exit }' "$base.callgrind")")
    hb+=("$(jq .heartbeats_ok "$base.json")")
    bad=$((bad + $(jq '.heartbeat_errors + .drops' "$base.json")))
  done
  awk -v n="$name" -v p="$proto" -v i0="${ir[0]}" -v i1="${ir[1]}" -v h0="${hb[0]}" -v h1="${hb[1]}" -v bad="$bad" \
    'BEGIN { printf "| %s | %s | %d | %d | %.0f | %d |\n", p, n, h1 - h0, i1 - i0, (i1 - i0) / (h1 - h0), bad }'
}

{
  echo "### hold: user-space instructions per heartbeat (callgrind; $N connections, a heartbeat each every $INTERVAL, ${SHORT} s vs ${LONG} s held)"
  echo
  echo "| protocol | hold | heartbeats (difference) | instructions (difference) | instructions/heartbeat | errors + drops |"
  echo "|---|---|---:|---:|---:|---:|"
  for proto in $PROTOS; do
    count megaconn "$MEGACONN" "$proto"
    if [[ -n "$MEGACONN_B" ]]; then count megaconn-b "$MEGACONN_B" "$proto"; fi
  done
  echo
  echo "Command: \`N=$N INTERVAL=$INTERVAL SHORT=$SHORT LONG=$LONG PROTOS=\"$PROTOS\"${MEGACONN_B:+ MEGACONN_B=$MEGACONN_B} bash bench/hold-instructions.sh\`; server: megaconn $(cat "$MEGACONN.version" 2>/dev/null || echo '?'), native, one worker."
} | tee "$RES_DIR/table.md"
