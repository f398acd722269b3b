#!/usr/bin/env bash
# bench/bolt.sh — what code layout is worth to megaconn (issue 15): the same
# build laid out by BOLT (llvm-bolt, Debian's bolt-16) from a profile of
# keep-alive requests, against itself as the linker laid it out.
#
# Why: megaconn now does fewer user-space instructions per keep-alive request
# than nginx, yet spends about as much user time: valgrind's cache model
# (`SIM=1 bench/lower-bound.sh`) gives it ~1.3–1.4 × nginx's first-level
# instruction-cache misses per request. Layout is what changes that, not the
# instructions; BOLT measures by how much.
#
# Steps:
#   1. `cargo build --release` with `-C link-arg=-Wl,--emit-relocs` (BOLT moves
#      whole functions only in a binary that keeps its relocations) into
#      target/bolt/ (a full build: ~8 minutes on 2 cores);
#   2. instruments it (`llvm-bolt -instrument`), serves `load -c 64 -n
#      $PROFILE_REQUESTS` keep-alive requests with it (one worker, cores as
#      below), stops it with SIGTERM (the profile is written at exit);
#   3. lays it out from that profile (basic blocks by ext-tsp, functions by
#      hfsort+, hot and cold parts split) -> target/bolt/megaconn-bolt, beside
#      the unchanged target/bolt/megaconn-relocs;
#   4. unless MEASURE=0: `bench/lower-bound.sh` with SIM=1 on each (instructions,
#      cache misses and mispredictions per request, callgrind's models) and
#      one `bench/throughput.sh` run with both side by side (MEGACONN = BOLT,
#      MEGACONN_B = the same build without it) and nginx and the floor.
# Needs: root (apt-get installs bolt-16 when missing), cargo, 2+ cores.
# Env: PROFILE_REQUESTS (200000), MEASURE (1), ROUNDS (5), PORT (29700),
#   and what lower-bound.sh and throughput.sh read.
# Output: the two binaries in target/bolt/, the tables on stdout, raw data
#   in bench/out/ (each script's own directory).
set -euo pipefail
# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PROFILE_REQUESTS="${PROFILE_REQUESTS:-200000}"
MEASURE="${MEASURE:-1}"
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

command -v llvm-bolt-16 >/dev/null 2>&1 \
  || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends bolt-16 >/dev/null
command -v llvm-bolt-16 >/dev/null 2>&1 || die "llvm-bolt-16 is not available (apt-get install bolt-16)"

ROOT="$(cd "$BENCH_DIR/.." && pwd)"
DIR="$ROOT/target/bolt"
mkdir -p "$DIR"
log "building with relocations into $DIR (a full release build)"
(cd "$ROOT" && RUSTFLAGS="-C link-arg=-Wl,--emit-relocs" cargo build --release --locked \
  --target-dir "$DIR/target" >"$DIR/build.log" 2>&1) || die "the build failed (see $DIR/build.log)"
version="$(cd "$ROOT" && git describe --always --dirty 2>/dev/null || echo '?')"
cp -f "$DIR/target/release/megaconn" "$DIR/megaconn-relocs"
echo "$version, linked with --emit-relocs" >"$DIR/megaconn-relocs.version"

# Debian's llvm-bolt-16 looks for its runtime under /usr/lib/ + the name given.
log "instrumenting"
rm -f "$DIR/profile.fdata"
llvm-bolt-16 "$DIR/megaconn-relocs" -instrument -o "$DIR/megaconn-instr" \
  -instrumentation-file="$DIR/profile.fdata" \
  -runtime-instrumentation-lib=llvm-16/lib/libbolt_rt_instr.a >"$DIR/instrument.log" 2>&1 \
  || die "llvm-bolt -instrument failed (see $DIR/instrument.log)"

port="$(free_port "${PORT:-29700}")"
log "profiling: $PROFILE_REQUESTS keep-alive requests at -c 64 on port $port"
taskset -c "$SERVER_CPU" "$DIR/megaconn-instr" serve --listen "127.0.0.1:$port" --workers 1 \
  --admin off >"$DIR/profile-serve.log" 2>&1 &
# shellcheck disable=SC2034  # SERVER_NAME: read by lib.sh's server_stop
SERVER_PID=$! SERVER_NAME=megaconn-instr
wait_http "$port" 60 || die "the instrumented server did not answer (see $DIR/profile-serve.log)"
taskset -c "$LOAD_CPU" "$DIR/megaconn-relocs" load "http://127.0.0.1:$port/" -t 1 -q -c 64 \
  -n "$PROFILE_REQUESTS" >/dev/null
kill -TERM "$SERVER_PID"
wait "$SERVER_PID" || true
SERVER_PID=""
[[ -s "$DIR/profile.fdata" ]] || die "no profile written (see $DIR/profile-serve.log)"

log "laying out"
llvm-bolt-16 "$DIR/megaconn-relocs" -o "$DIR/megaconn-bolt" -data="$DIR/profile.fdata" \
  -reorder-blocks=ext-tsp -reorder-functions=hfsort+ -split-functions -split-all-cold \
  -split-eh -icf=1 -use-gnu-stack -dyno-stats >"$DIR/optimize.log" 2>&1 \
  || die "llvm-bolt failed (see $DIR/optimize.log)"
echo "$version, linked with --emit-relocs, laid out by BOLT from $PROFILE_REQUESTS keep-alive requests" \
  >"$DIR/megaconn-bolt.version"
grep -E 'have non-empty execution profile|splitting separates' "$DIR/optimize.log" | sed 's/^/  /' || true
log "binaries: $DIR/megaconn-bolt (laid out), $DIR/megaconn-relocs (as linked)"

[[ "$MEASURE" == 1 ]] || exit 0
for b in relocs bolt; do
  MEGACONN="$DIR/megaconn-$b" BENCH_SKIP_BUILD=1 LEVELS="" NGINX=0 SIM=1 bash "$BENCH_DIR/lower-bound.sh" | grep '^| megaconn'
done
MEGACONN="$DIR/megaconn-bolt" MEGACONN_B="$DIR/megaconn-relocs" BENCH_SKIP_BUILD=1 \
  SERVERS="megaconn megaconn-b nginx floor" ROUNDS="${ROUNDS:-5}" DURATION="${DURATION:-3s}" \
  PIPELINE="${PIPELINE:-16}" RATE="${RATE:-20000}" WRK=0 bash "$BENCH_DIR/throughput.sh"
