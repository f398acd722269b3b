#!/usr/bin/env bash
# bench/core-ab-instructions.sh — two megaconn builds side by side: user-space
# instructions per request (valgrind callgrind) over HTTP/1.1 (16 keep-alive
# connections) and h2c (16 connections × 4 streams), and on request, uploads
# over TLS. core-ab.sh's wall-clock
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
# SCENARIOS picks them (default "h1-c16 h2c-c16x4"); h2tls-c16x4 is h2c-c16x4
# over TLS (GET /, N1/N2 requests). The upload scenarios
# h1tls-up64k, h2tls-up64k, h1tls-up1m, h2tls-up1m send one connection's
# (h2: one stream's) back-to-back `POST /echo` of a 64 KiB or 1 MiB body
# over TLS (a throwaway ECDSA P-256 certificate; the server echoes the body,
# so its instructions include encrypting as much as it decrypts), with
# their own request counts (UP64K_N1/N2: 200/2200, UP1M_N1/N2: 10/210).
#
# Needs valgrind (apt-get install when missing), curl and openssl. Env: N1
# (2000), N2 (12000), PORT, BENCH_SKIP_BUILD=1 to use target/release as it is.
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N1="${N1:-2000}"
N2="${N2:-12000}"
SCENARIOS="${SCENARIOS:-h1-c16 h2c-c16x4}"
UP64K_N1="${UP64K_N1:-200}"
UP64K_N2="${UP64K_N2:-2200}"
UP1M_N1="${UP1M_N1:-10}"
UP1M_N2="${UP1M_N2:-210}"
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
if [[ " $SCENARIOS " == *tls* ]]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$RES_DIR/key.pem" -out "$RES_DIR/cert.pem" 2>/dev/null
  head -c 65536 /dev/urandom >"$RES_DIR/body-64k.bin"
  head -c 1048576 /dev/urandom >"$RES_DIR/body-1m.bin"
fi

# Total instructions of one server run under callgrind serving $3 requests
# (over TLS when SERVER_TLS_CERT/KEY are set) sent to URL $4.
instructions() { # BINARY TAG REQUESTS URL LOAD-ARGS...
  local bin=$1 tag=$2 n=$3 url=$4 pid tls=()
  shift 4
  server_tls && tls=(--tls-cert "$SERVER_TLS_CERT" --tls-key "$SERVER_TLS_KEY")
  valgrind --tool=callgrind --callgrind-out-file="$RES_DIR/$tag.out" \
    "$bin" serve --listen "127.0.0.1:$PORT" --workers 1 --admin off "${tls[@]}" >/dev/null 2>"$RES_DIR/$tag.err" &
  pid=$!
  BENCH_BG_PIDS+=("$pid")
  wait_http "$PORT" 60 || die "$tag: the server under callgrind did not answer"
  "$MEGACONN_A" load "$url" -q -n "$n" "$@" >"$RES_DIR/$tag.load" 2>&1 || die "$tag: load failed"
  kill -TERM "$pid"
  wait "$pid" || true
  awk '/^(summary|totals):/ { print $2; exit }' "$RES_DIR/$tag.out"
}

echo "| scenario | A instructions/request | B instructions/request | B / A | A per MiB uploaded | B per MiB uploaded |"
echo "|---|---:|---:|---:|---:|---:|"
for scenario in $SCENARIOS; do
  n1=$N1 n2=$N2 url="http://127.0.0.1:$PORT/" mib=""
  SERVER_TLS_CERT="" SERVER_TLS_KEY=""
  case "$scenario" in
    h1-c16) args=(-c 16) ;;
    h2c-c16x4) args=(--http2 -c 16 --streams 4) ;;
    h2tls-c16x4)
      SERVER_TLS_CERT="$RES_DIR/cert.pem" SERVER_TLS_KEY="$RES_DIR/key.pem"
      url="https://127.0.0.1:$PORT/" args=(-k --http2 -c 16 --streams 4)
      ;;
    h[12]tls-up64k | h[12]tls-up1m)
      SERVER_TLS_CERT="$RES_DIR/cert.pem" SERVER_TLS_KEY="$RES_DIR/key.pem"
      url="https://127.0.0.1:$PORT/echo"
      args=(-k -c 1 -m POST)
      [[ "$scenario" == h2* ]] && args+=(--http2 --streams 1)
      if [[ "$scenario" == *up64k ]]; then
        n1=$UP64K_N1 n2=$UP64K_N2 mib=0.0625 args+=(--body "@$RES_DIR/body-64k.bin")
      else
        n1=$UP1M_N1 n2=$UP1M_N2 mib=1 args+=(--body "@$RES_DIR/body-1m.bin")
      fi
      ;;
    *) die "unknown scenario $scenario" ;;
  esac
  declare -A per=()
  for build in a b; do
    bin="$MEGACONN_A"
    [[ "$build" == b ]] && bin="$MEGACONN_B"
    i1="$(instructions "$bin" "$scenario-$build-$n1" "$n1" "$url" "${args[@]}")"
    i2="$(instructions "$bin" "$scenario-$build-$n2" "$n2" "$url" "${args[@]}")"
    per[$build]=$(((i2 - i1) / (n2 - n1)))
    log "$scenario build $build: ${per[$build]} instructions per request"
  done
  awk -v s="$scenario" -v a="${per[a]}" -v b="${per[b]}" -v mib="$mib" 'BEGIN {
    printf "| %s | %d | %d | %.4f | %s | %s |\n", s, a, b, b / a,
      mib == "" ? "—" : sprintf("%.0f", a / mib), mib == "" ? "—" : sprintf("%.0f", b / mib) }'
  unset per
done
echo
echo "callgrind, (Ir(N2 requests) − Ir(N1)) / (N2 − N1) (N1/N2: $N1/$N2; uploads of 64 KiB $UP64K_N1/$UP64K_N2, of 1 MiB $UP1M_N1/$UP1M_N2), $(date -u '+%Y-%m-%d %H:%M UTC'); A = $MEGACONN_A, B = $MEGACONN_B."
