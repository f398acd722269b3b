#!/usr/bin/env bash
# bench/core-ab-instructions.sh — two megaconn builds side by side: user-space
# instructions per request (valgrind callgrind) over HTTP/1.1 (16 keep-alive
# connections) and h2c (16 connections × 4 streams). core-ab.sh's wall-clock
# CPU per request moves by ±5 % between rounds on this shared machine; an
# instruction count does not, so a change of 1 % shows here and not there.
#
# A = $MEGACONN (default target/release/megaconn), B = $MEGACONN_B (required).
# Per build and scenario: `serve --workers 1 --admin off` under callgrind,
# `megaconn load` (A's, so the client is the same) sends N1 requests in one
# run and N2 in another; instructions per request = (Ir(N2) − Ir(N1)) /
# (N2 − N1), so start-up, connection set-up and shutdown cancel out.
# Output: bench/out/core-ab-instructions-<stamp>/ (callgrind files) and a
# table on stdout: instructions per request and B/A.
#
# Needs valgrind (apt-get install when missing) and curl. Env: N1 (2000),
# N2 (12000), PORT, BENCH_SKIP_BUILD=1 to use target/release as it is.
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N1="${N1:-2000}"
N2="${N2:-12000}"
[[ -n "${MEGACONN_B:-}" && -x "${MEGACONN_B:-}" ]] || die "set MEGACONN_B=/path/to/the/other/megaconn"
command -v valgrind >/dev/null || { apt-get install -y -qq valgrind >/dev/null || die "valgrind is needed"; }

trap bench_cleanup EXIT
trap 'exit 130' INT TERM

bench_build
MEGACONN_A="$MEGACONN"
PORT="${PORT:-$(free_port 38900)}"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
RES_DIR="$OUT_DIR/core-ab-instructions-$STAMP"
mkdir -p "$RES_DIR"
log "A = $MEGACONN_A, B = $MEGACONN_B; results in $RES_DIR"

# Total instructions of one server run under callgrind serving $3 requests.
instructions() { # BINARY TAG REQUESTS LOAD-ARGS...
  local bin=$1 tag=$2 n=$3 pid
  shift 3
  valgrind --tool=callgrind --callgrind-out-file="$RES_DIR/$tag.out" \
    "$bin" serve --listen "127.0.0.1:$PORT" --workers 1 --admin off >/dev/null 2>"$RES_DIR/$tag.err" &
  pid=$!
  BENCH_BG_PIDS+=("$pid")
  wait_http "$PORT" 60 || die "$tag: the server under callgrind did not answer"
  "$MEGACONN_A" load "http://127.0.0.1:$PORT/" -q -n "$n" "$@" >"$RES_DIR/$tag.load" 2>&1 || die "$tag: load failed"
  kill -TERM "$pid"
  wait "$pid" || true
  awk '/^(summary|totals):/ { print $2; exit }' "$RES_DIR/$tag.out"
}

echo "| scenario | A instructions/request | B instructions/request | B / A |"
echo "|---|---:|---:|---:|"
for scenario in h1-c16 h2c-c16x4; do
  case "$scenario" in
    h1-c16) args=(-c 16) ;;
    h2c-c16x4) args=(--http2 -c 16 --streams 4) ;;
  esac
  declare -A per=()
  for build in a b; do
    bin="$MEGACONN_A"
    [[ "$build" == b ]] && bin="$MEGACONN_B"
    i1="$(instructions "$bin" "$scenario-$build-$N1" "$N1" "${args[@]}")"
    i2="$(instructions "$bin" "$scenario-$build-$N2" "$N2" "${args[@]}")"
    per[$build]=$(((i2 - i1) / (N2 - N1)))
    log "$scenario build $build: ${per[$build]} instructions per request"
  done
  echo "| $scenario | ${per[a]} | ${per[b]} | $(awk -v a="${per[a]}" -v b="${per[b]}" 'BEGIN { printf "%.4f", b / a }') |"
  unset per
done
echo
echo "callgrind, (Ir($N2 requests) − Ir($N1)) / $((N2 - N1)), $(date -u '+%Y-%m-%d %H:%M UTC'); A = $MEGACONN_A, B = $MEGACONN_B."
