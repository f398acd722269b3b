#!/usr/bin/env bash
# bench/run-all.sh — runs bench/throughput.sh and bench/idle-memory.sh and
# writes bench/RESULTS.md (date, machine, tool versions, the exact commands,
# the tables, each script's run time).
#
# Needs: root, 2+ cores, cargo; lib.sh installs golang-go nginx-light wrk jq
# procps util-linux time curl when missing and builds the peers and megaconn.
# Sets sysctls (via lib.sh): net.ipv4.ip_local_port_range="1024 65535",
#   net.core.somaxconn=65535, net.ipv4.tcp_max_syn_backlog=65535; ulimit -n 20000.
# Takes about 9 minutes with the defaults (plus the first build): five servers
# (megaconn, Go, nginx, axum and the floor) × four scenarios × 3 rounds.
# Includes the committed section files listed in SECTIONS below (DIGEST.md,
# FLOOR.md, HEARTBEAT.md, MILLION.md, ALLOCATORS.md, METRICS.md, OTEL.md, H2TLS.md,
# IDLE-TLS.md, ATTACK-MEMORY.md, FILES.md), each written by its own script or by hand from its runs
# (section_origin says which); run those scripts on their own.
# Env: everything throughput.sh and idle-memory.sh read (ROUNDS, DURATION, RATE,
#   N, RAMP, SERVERS...), RESULTS (output file, default bench/RESULTS.md),
#   REASSEMBLE=1 (measure nothing: keep RESULTS.md's measured part and copy the
#   section files in again).
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RESULTS="${RESULTS:-$BENCH_DIR/RESULTS.md}"
trap bench_cleanup EXIT
trap 'exit 130' INT TERM

# Sections written by the longer or special-purpose scripts, each run on its
# own, copied verbatim after a marker line; each says where it comes from
# (the script and run that wrote it, or "hand-written" and from which runs).
# REASSEMBLE=1: run nothing; keep RESULTS.md's measured part (everything above
# the marker) and copy the sections in again.
SECTIONS="DIGEST.md FLOOR.md HEARTBEAT.md MILLION.md ALLOCATORS.md METRICS.md OTEL.md H2TLS.md IDLE-TLS.md ATTACK-MEMORY.md FILES.md"
SECTION_MARKER="<!-- Sections below are copied by bench/run-all.sh from bench/*.md files written by other scripts (or by hand where a section says so); edit those files, not this one. -->"
section_origin() { # file -> one line saying how it was written
  case "$1" in
    DIGEST.md) echo "hand-written: figures from bench files not copied here whole (SSE.md, CPU-PER-REQUEST.md) and the latest H2TLS.md section, each with its command and run" ;;
    FLOOR.md) echo "bench/throughput.sh runs (SECTION_OUT) put together by hand: the first section opens with a hand-written paragraph, and some headings are hand-written" ;;
    HEARTBEAT.md) echo "its first section by bench/heartbeat-cpu.sh with SECTION_OUT, the later ones hand-written from the runs named in them" ;;
    MILLION.md) echo "hand-written from bench/million.sh runs named in it (its tables are million.sh output)" ;;
    ALLOCATORS.md) echo "hand-written from bench/idle-memory.sh runs (megaconn only, three allocator builds), 2026-11-24 08:37 UTC" ;;
    METRICS.md) echo "bench/metrics-overhead.sh output with a hand-written header" ;;
    OTEL.md) echo "bench/otel.sh output with a hand-written header" ;;
    H2TLS.md) echo "bench/h2-tls.sh output with a hand-written header, then hand-written sections from the runs named in them" ;;
    IDLE-TLS.md) echo "hand-written from bench/idle-memory-tls.sh runs named in it" ;;
    FILES.md) echo "hand-written from the runs named in it (session 57's slow downloads and CPU per GiB, beside nginx)" ;;
    ATTACK-MEMORY.md) echo "its first section by bench/attack-memory.sh with SECTION_OUT, the later ones hand-written from the runs named in them" ;;
    *) echo "see the section" ;;
  esac
}
include_sections() {
  local section
  echo
  echo "$SECTION_MARKER"
  for section in $SECTIONS; do
    if [[ -s "$BENCH_DIR/$section" ]]; then
      echo
      echo "_Next section copied from \`bench/$section\`: $(section_origin "$section")._"
      cat "$BENCH_DIR/$section"
    fi
  done
}
if [[ "${REASSEMBLE:-0}" == 1 ]]; then
  grep -qF -- "$SECTION_MARKER" "$RESULTS" || die "$RESULTS has no section marker; run run-all.sh in full"
  tmp="$(mktemp)"
  {
    # The measured part: every line above the marker, trailing blank lines dropped.
    awk -v m="$SECTION_MARKER" '$0 == m { exit } { print }' "$RESULTS" | sed -e :a -e '/^\n*$/{$d;N;ba' -e '}'
    include_sections
  } >"$tmp"
  mv "$tmp" "$RESULTS"
  log "reassembled $RESULTS (measured part kept, sections copied again)"
  exit 0
fi

t0=$SECONDS
bench_install_deps
bench_build
build_secs=$((SECONDS - t0))
export MEGACONN  # both scripts use the same snapshot of the binary
mkdir -p "$OUT_DIR"

run_script() { # name -> runs bench/NAME.sh, output in $OUT_DIR/NAME.last.md
  local name=$1 start=$SECONDS rc=0 load0
  load0="$(cut -d' ' -f1-3 /proc/loadavg)"
  log "running bench/$name.sh"
  BENCH_SKIP_INSTALL=1 BENCH_SKIP_BUILD=1 bash "$BENCH_DIR/$name.sh" >"$OUT_DIR/$name.last.md" \
    2> >(tee "$OUT_DIR/$name.last.log" >&2) || rc=$?
  printf -v "${name//-/_}_secs" '%s' "$((SECONDS - start))"
  printf -v "${name//-/_}_rc" '%s' "$rc"
  printf -v "${name//-/_}_load" '%s' "load average $load0 at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
  ((rc == 0)) || log "WARNING: bench/$name.sh exited with $rc (see bench/out/$name.last.log)"
}

throughput_secs=0 throughput_rc=0 idle_memory_secs=0 idle_memory_rc=0
throughput_load="" idle_memory_load=""
run_script throughput
run_script idle-memory

status_line() { # rc secs
  if [[ $1 == 0 ]]; then echo "took $2 s"; else echo "**failed (exit $1)** after $2 s; see bench/out/"; fi
}

{
  echo "# megaconn benchmark results"
  echo
  echo "Written by \`bench/run-all.sh\`. Do not edit by hand; rerun it. Its sections after the marker near the end are copied from bench/*.md files (each says whether a script or a person wrote it, and from which run); \`REASSEMBLE=1 bash bench/run-all.sh\` copies them in again without measuring."
  echo
  echo "## Machine"
  echo
  bench_machine_info
  echo "- sysctls: net.ipv4.ip_local_port_range=\"$(sysctl -n net.ipv4.ip_local_port_range | xargs)\", net.core.somaxconn=$(sysctl -n net.core.somaxconn), net.ipv4.tcp_max_syn_backlog=$(sysctl -n net.ipv4.tcp_max_syn_backlog); ulimit -n $(ulimit -n)"
  echo
  if [[ "$MEGACONN_SERVE_OK" != 1 ]]; then
    echo "> **megaconn is pending**: \`megaconn serve\` was not available in this build, so the tables below have the peers only."
    echo
  fi
  echo "## Run time"
  echo
  echo "- build (peers + megaconn): ${build_secs} s"
  echo "- bench/throughput.sh: $(status_line "$throughput_rc" "$throughput_secs"); $throughput_load"
  echo "- bench/idle-memory.sh: $(status_line "$idle_memory_rc" "$idle_memory_secs"); $idle_memory_load"
  echo
  echo "This machine has 2 cores and is shared with other work (builds, other benchmarks). When the load average is well above 2, or the throughput table's \"other CPU\" column is far from 0%, req/s and latency are those of a contended machine; server CPU µs/request and userspace bytes/connection (per-process figures) hold up best. The kernel socket bytes/connection figure counts every TCP socket on the machine, so other programs opening or closing connections during the run distort it."
  echo
  echo "## Commands"
  echo
  echo "Servers, each alone, pinned to core $SERVER_CPU with one worker/thread (PORT: the first free port from 38080 for throughput, from 38090 for idle memory):"
  echo
  echo '```'
  echo "taskset -c $SERVER_CPU target/release/megaconn serve --listen 127.0.0.1:PORT --workers 1"
  echo "GOMAXPROCS=1 taskset -c $SERVER_CPU bench/peers/go-hello/target/go-hello -listen 127.0.0.1:PORT"
  echo "taskset -c $SERVER_CPU nginx -p RUN -c RUN/nginx.conf   # bench/peers/nginx.conf.template, worker_processes 1"
  echo "taskset -c $SERVER_CPU bench/peers/axum-hello/target/release/axum-hello --listen 127.0.0.1:PORT --threads 1"
  echo "taskset -c $SERVER_CPU bench/out/floor 127.0.0.1 PORT   # the floor: gcc -O2 bench/peers/floor.c"
  echo '```'
  echo
  echo "Load (throughput.sh), pinned to core $LOAD_CPU, after a 1 s warm-up; ${ROUNDS:-3} interleaved rounds of each:"
  echo
  echo '```'
  echo "taskset -c $LOAD_CPU megaconn load http://127.0.0.1:PORT/ -t 1 -d ${DURATION:-5s} -c 64 --json F"
  echo "taskset -c $LOAD_CPU megaconn load http://127.0.0.1:PORT/ -t 1 -d ${DURATION:-5s} -c 512 --json F"
  echo "taskset -c $LOAD_CPU megaconn load http://127.0.0.1:PORT/ -t 1 -d ${DURATION:-5s} -c 64 --pipeline ${PIPELINE:-16} --json F"
  echo "taskset -c $LOAD_CPU megaconn load http://127.0.0.1:PORT/ -t 1 -d ${DURATION:-5s} -c ${RATE_CONNS:-64} --rate ${RATE:-20000} --json F"
  echo "taskset -c $LOAD_CPU /usr/bin/time wrk -t1 -c64 -d${WRK_DURATION:-5s} -s bench/wrk-json.lua http://127.0.0.1:PORT/   # cross-check"
  echo '```'
  echo
  echo "Idle connections (idle-memory.sh):"
  echo
  echo '```'
  echo "taskset -c $LOAD_CPU megaconn hold http://127.0.0.1:PORT/ -c ${N:-15000} --ramp ${RAMP:-5000} --source ${SOURCE:-127.0.0.2-127.0.0.9} --interval 3600s --duration D --json F"
  echo "taskset -c $LOAD_CPU megaconn hold http://127.0.0.1:PORT/echo -c ${N:-15000} --ramp ${RAMP:-5000} --source ${SOURCE:-127.0.0.2-127.0.0.9} --interval 3600s --duration D -m POST --body @4KiB-file --json F"
  echo '```'
  echo
  echo "## Throughput"
  echo
  if [[ -s "$OUT_DIR/throughput.last.md" ]]; then cat "$OUT_DIR/throughput.last.md"; else echo "_no results_"; fi
  echo
  echo "## Idle-connection memory"
  echo
  if [[ -s "$OUT_DIR/idle-memory.last.md" ]]; then cat "$OUT_DIR/idle-memory.last.md"; else echo "_no results_"; fi
  include_sections
} >"$RESULTS"

log "wrote $RESULTS (total $((SECONDS - t0)) s)"
cat "$RESULTS"
