#!/usr/bin/env bash
# bench/hot-order.sh — a link order that puts the code a keep-alive request
# runs together (issue 15, session 58).
#
# Why: a pipelined request runs ~3,200 user-space instructions, as many as
# tokio-floor's (bench/lower-bound.sh), but from 356 distinct 64-byte lines
# of code scattered over the 80 MB binary, where tokio-floor's come from 246;
# with the per-read path, 522 lines: more than a 32 KiB L1i holds, and
# callgrind's 8-way model of it misses 96 lines a request (tokio-floor 2.3),
# most of them in sets that more than eight hot lines share by where the
# linker happened to put their functions. Linked hottest first, the same
# code misses 37, and 28 with `-C llvm-args=-hot-cold-split=true` besides
# (LLVM's cold blocks moved out of their functions); on the machine that
# leaned −4 to −7 % of the user time a request in some A/B runs and not in
# others (bench/CPU-PER-REQUEST.md, "Session 58: pipelined"): not the
# build's default.
#
# What it does: runs bench/lower-bound.sh (callgrind, DUMP_INSTR=yes) on
# $MEGACONN at each depth of $PIPELINES, then bench/hot-order.py, which maps
# every instruction run in the steady state to its symbol and writes the
# symbols hottest first, the first depth's first, to $OUT. Build with it:
#   cargo rustc --release --locked -p megaconn-cli --bin megaconn -- \
#     -C link-arg=-Wl,--symbol-ordering-file=$OUT -C link-arg=-Wl,--no-warn-symbol-ordering
# (`cargo rustc`: the flags reach the final crate only, where fat LTO makes
# all the code, so the dependencies stay built.) Needs LLD, rustc's default
# linker for x86_64-unknown-linux-gnu (`readelf -p .comment BINARY` names
# it); GNU ld 2.40 has no such option. The names are mangled ones; a build
# whose code moved keeps most (a function's hash is its crate's and path's),
# and the linker skips those it does not find.
#
# Env: MEGACONN (a release build whose symbols the order names: the one to
#   be relinked, or one of the same code; required), PIPELINES ("16 1"),
#   OUT (bench/out/hot-symbols.txt), PORT_BASE (49100), and
#   bench/lower-bound.sh's N1, N2, CONNS.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MEGACONN="${MEGACONN:?MEGACONN=the release build to profile}"
PIPELINES="${PIPELINES:-16 1}"
OUT="${OUT:-$here/out/hot-symbols.txt}"
PORT_BASE="${PORT_BASE:-49100}"
N1="${N1:-2000}"
N2="${N2:-22000}"
args=()
for p in $PIPELINES; do
  log=$(mktemp)
  PIPELINE=$p N1=$N1 N2=$N2 DUMP_INSTR=yes BENCH_SKIP_INSTALL=1 BENCH_SKIP_BUILD=1 MEGACONN="$MEGACONN" \
    LEVELS="" NGINX=0 PORT_BASE="$PORT_BASE" bash "$here/lower-bound.sh" >"$log" 2>&1 \
    || { cat "$log" >&2; exit 1; }
  dir=$(sed -n 's/.*results in //p' "$log" | head -1)
  rm -f "$log"
  [[ -f "$dir/megaconn-$N2.callgrind" ]] || { echo "no callgrind files in $dir" >&2; exit 1; }
  args+=("$dir/megaconn-$N1.callgrind" "$dir/megaconn-$N2.callgrind" "$((N2 - N1))")
done
mkdir -p "$(dirname "$OUT")"
python3 "$here/hot-order.py" "$MEGACONN" "$OUT" "${args[@]}"
