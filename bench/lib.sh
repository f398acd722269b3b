# shellcheck shell=bash
# bench/lib.sh — shared helpers for the megaconn benchmark scripts.
# Source it (`. bench/lib.sh`); it defines functions and a few variables only.
#
# What it provides:
#   bench_install_deps   apt-get install golang-go nginx-light wrk jq procps openssl
#                        util-linux time curl, only those whose command is missing
#   bench_build          builds the Go and axum peers and megaconn (cargo build
#                        --release at the repo root); sets MEGACONN_SERVE_OK,
#                        MEGACONN_LOAD_OK, MEGACONN_HOLD_OK (1/0)
#   bench_tune           raises `ulimit -n` to 20000 and sets these sysctls,
#                        printing each one it changes:
#                          net.ipv4.ip_local_port_range="1024 65535"
#                          net.core.somaxconn=65535
#                          net.ipv4.tcp_max_syn_backlog=65535
#   bench_build_floor    gcc -O2 bench/peers/floor.c -> bench/out/floor (the floor:
#                        a minimal epoll responder, the ruler for "× floor")
#   bench_build_floor_uring  gcc -O2 bench/peers/floor-uring.c -luring ->
#                        bench/out/floor-uring (the floor over io_uring: one
#                        io_uring_enter per batch instead of epoll_wait + a recv
#                        and a send per read; installs liburing-dev if missing)
#   bench_build_tokio_floor  cargo build --release of bench/peers/tokio-floor (a
#                        second ruler: tokio + httparse + http::Request/Response,
#                        nothing else; `tokio-floor` in server_start)
#   server_start NAME PORT [WORKERS]  NAME in: megaconn go nginx axum floor
#                        floor-uring tokio-floor. Starts the
#                        server pinned with `taskset -c $SERVER_CPU` (default 1),
#                        waits (bounded) until GET / answers. With
#                        SERVER_TLS_CERT and SERVER_TLS_KEY set (PEM files) it
#                        serves HTTPS with ALPN h2 + http/1.1 instead (megaconn,
#                        nginx, axum; not go). Sets SERVER_PID
#                        (the process started) and SERVER_MEASURE_PIDS (the
#                        processes whose memory is per-connection: nginx's
#                        workers, else the server and its children).
#   server_stop          SIGTERM, bounded wait, then SIGKILL
#   pid_cpu_secs PID...  utime+stime (seconds) summed over PIDs and their children
#   server_cpu_secs      pid_cpu_secs over the running server's whole tree
#   load_record SERVER SCENARIO ROUND DURATION URL [ARGS]  one measured
#                        `megaconn load` run on $LOAD_CPU: prints a JSON record
#                        (load report + server CPU per request, client and other CPU)
#   server_rss_bytes     VmRSS summed over SERVER_MEASURE_PIDS
#   kernel_slab_bytes, kernel_tcp_mem_bytes   from /proc/meminfo, /proc/net/sockstat
#   kernel_sock_slab_bytes  socket-related slab caches from /proc/slabinfo
#   established_count PORT   server-side established TCP connections on PORT
#   hb_rate LOG FROM TO, hold_clock LOG, hold_open LOG, hold_pushes LOG
#                        read `megaconn hold`'s progress lines: mean
#                        heartbeats/s over a span of its clock, its clock
#                        now, connections open now, pushes received so far
#   hold_start LOG URL ARGS, hold_down   start `megaconn hold` (HOLD_PID) and
#                        wait for N open; let it end, then stop it
#   bench_cleanup        kills every process the scripts started (used by traps):
#                        the background helpers, `megaconn hold` ($HOLD_PID,
#                        and its children) and the server
#   bench_traps          installs bench_cleanup on EXIT and makes INT/TERM exit
#                        (so EXIT runs); bench_sleep SECS sleeps so a signal
#                        interrupts it at once (a foreground `sleep` defers traps)
#   servers_without_rows RUNS ROW SERVER...  the SERVERs with no row in a table
#                        built from RUNS (a script fails on them)
#   command_line SCRIPT VAR...  `VAR=value ... bash SCRIPT` for the table's footer
#   write_first_section FILE  stdin replaces FILE's first `## ` section,
#                        keeping the (hand-written) sections after it
#   sched_ns PID         CPU ns of PID's threads and descendants (schedstat), tree_rss PID
#                        VmRSS of PID and its descendants
#   bench_defaults NAME=VALUE...  each NAME keeps its value from the environment,
#                        or takes VALUE (a script's knobs, with their defaults)
#   CARGO_TARGET         cargo's target directory: $CARGO_TARGET_DIR, else target/
#                        at the repo root (for the binaries a script runs unbuilt)
#
# Environment knobs: MEGACONN_SERVE_ARGS (extra `megaconn serve` arguments), SERVER_CPU (1), LOAD_CPU (0),
# SERVER_TLS_CERT/SERVER_TLS_KEY (serve TLS), MEGACONN (path of the binary,
# default target/release/megaconn), BENCH_SKIP_BUILD=1, BENCH_SKIP_INSTALL=1.

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$BENCH_DIR/.." && pwd)"
OUT_DIR="$BENCH_DIR/out"
RUN_DIR="$OUT_DIR/run"
MEGACONN_USER="${MEGACONN:-}"
# shellcheck disable=SC2034  # used by the scripts that source this
CARGO_TARGET="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
MEGACONN="${MEGACONN:-$REPO_ROOT/target/release/megaconn}"
GO_HELLO="$BENCH_DIR/peers/go-hello/target/go-hello"
AXUM_HELLO="$BENCH_DIR/peers/axum-hello/target/release/axum-hello"
FLOOR="$OUT_DIR/floor"  # bench/peers/floor.c, built by bench_build_floor
FLOOR_URING="$OUT_DIR/floor-uring"  # bench/peers/floor-uring.c, bench_build_floor_uring
# bench/peers/tokio-floor: the floor of a tokio server that speaks http::Request
TOKIO_FLOOR="$BENCH_DIR/peers/tokio-floor/target/release/tokio-floor"
SERVER_CPU="${SERVER_CPU:-1}"
LOAD_CPU="${LOAD_CPU:-0}"
CLK_TCK="$(getconf CLK_TCK)"
PAGE_SIZE="$(getconf PAGESIZE)"
MEGACONN_SERVE_OK=0
MEGACONN_SNAPSHOT=""  # the private copy this shell made (removed by bench_cleanup)
MEGACONN_LOAD_OK=0
MEGACONN_HOLD_OK=0
SERVER_PID=""
SERVER_NAME=""
SERVER_MEASURE_PIDS=""
BENCH_BG_PIDS=()   # background helpers (load/hold) started by the scripts

# jq helpers for the scripts' summaries: median of an array, and cell
# formatting (f0 integer, f1/f2/f3 one to three decimals, pct a fraction as percent; "—" for null).
# median_or_null: null if any value is (a latency percentile of a run that
# timed nothing is null, and a median over it is not known; median alone
# would sort the null first and add it as 0).
# shellcheck disable=SC2016,SC2034  # jq code, used by the scripts that source this
BENCH_JQ_DEFS='
  def median: sort | if length == 0 then null
    elif length % 2 == 1 then .[length / 2 | floor]
    else (.[length / 2 - 1] + .[length / 2]) / 2 end;
  def median_or_null: if any(. == null) then null else median end;
  def f0: if . == null then "—" else (. | round | tostring) end;
  def f1: if . == null then "—" else ((. * 10 | round) / 10 | tostring) end;
  def f2: if . == null then "—" else ((. * 100 | round) / 100 | tostring) end;
  def f3: if . == null then "—" else ((. * 1000 | round) / 1000 | tostring) end;
  def pct: if . == null then "—" else ((. * 100 | round | tostring) + "%") end;
'

# bench_defaults NAME=VALUE...: sets each NAME the environment left unset
# or empty to VALUE, as NAME="${NAME:-VALUE}" would (not exported either).
bench_defaults() {
  local _kv _name
  for _kv in "$@"; do
    _name=${_kv%%=*}
    [[ -n "${!_name:-}" ]] || printf -v "$_name" '%s' "${_kv#*=}"
  done
}

# AUTOGROUP_NICE (e.g. -15): this kernel gives each session's processes (an
# autogroup) an equal share of a core, so a plain `nice` does not reach the
# other sessions' processes on a shared machine; bench_autogroup_nice sets the
# session's group's nice for the run (/proc/self/autogroup) and autogroup_back
# (call it from the script's EXIT trap) puts it back. Unset: neither does
# anything. It takes CPU from everyone else's sessions while it runs.
AUTOGROUP_WAS=""
bench_autogroup_nice() {
  [[ -n "${AUTOGROUP_NICE:-}" ]] || return 0
  AUTOGROUP_WAS="$(awk '{ print $3 }' /proc/self/autogroup)"
  echo "$AUTOGROUP_NICE" >/proc/self/autogroup
}
autogroup_back() { [[ -z "$AUTOGROUP_WAS" ]] || echo "$AUTOGROUP_WAS" >/proc/self/autogroup; }

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

bench_install_deps() {
  [[ "${BENCH_SKIP_INSTALL:-0}" == 1 ]] && return 0
  local -A pkgs=([go]=golang-go [nginx]=nginx-light [wrk]=wrk [jq]=jq
    [ps]=procps [taskset]=util-linux [/usr/bin/time]=time [curl]=curl [ss]=iproute2
    [openssl]=openssl)
  local missing=() cmd
  for cmd in "${!pkgs[@]}"; do
    if [[ "$cmd" == /* ]]; then [[ -x "$cmd" ]] && continue
    else command -v "$cmd" >/dev/null 2>&1 && continue; fi
    missing+=("${pkgs[$cmd]}")
  done
  if ((${#missing[@]})); then
    log "installing: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # Debian's package may start the system nginx; we never use it.
    if pgrep -x nginx >/dev/null 2>&1 && [[ -f /run/nginx.pid ]]; then
      nginx -s quit >/dev/null 2>&1 || true
    fi
  fi
}

# Probe a megaconn subcommand: 1 when `megaconn SUB --help` works.
megaconn_has() { [[ -x "$MEGACONN" ]] && "$MEGACONN" "$1" --help >/dev/null 2>&1; }

# The floor (bench/peers/floor.c): built with gcc whenever the source is newer
# than the binary (even with BENCH_SKIP_BUILD=1: it takes a fraction of a second).
bench_build_floor() { bench_build_c floor.c "$FLOOR"; }

# bench_build_c SOURCE BINARY [LIBS...]: gcc -O2 bench/peers/SOURCE -> BINARY
# when the source or the floors' shared header is newer than the binary.
bench_build_c() {
  local src="$BENCH_DIR/peers/$1" bin=$2
  shift 2
  command -v gcc >/dev/null 2>&1 || { log "WARNING: no gcc; $(basename "$bin") is skipped"; return 1; }
  mkdir -p "$OUT_DIR"
  if [[ ! -x "$bin" || "$src" -nt "$bin" || "$BENCH_DIR/peers/floor.h" -nt "$bin" ]]; then
    gcc -O2 -o "$bin" "$src" "$@" || { log "WARNING: $(basename "$bin") build failed"; return 1; }
  fi
}

# The io_uring floor (bench/peers/floor-uring.c), built like the floor; its
# header comes from Debian's liburing-dev, installed when missing.
bench_build_floor_uring() {
  if [[ ! -f /usr/include/liburing.h && "${BENCH_SKIP_INSTALL:-0}" != 1 ]]; then
    log "installing: liburing-dev"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends liburing-dev >/dev/null
  fi
  bench_build_c floor-uring.c "$FLOOR_URING" -luring
}

# Built when missing (even with BENCH_SKIP_BUILD=1), else left as it is.
bench_build_tokio_floor() {
  [[ -x "$TOKIO_FLOOR" && "${BENCH_SKIP_BUILD:-0}" == 1 ]] && return 0
  log "building tokio-floor"
  cargo build --release --quiet --manifest-path "$BENCH_DIR/peers/tokio-floor/Cargo.toml" \
    || { log "WARNING: tokio-floor build failed"; return 1; }
}

bench_build() {
  bench_build_floor || true
  if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
    log "building go-hello"
    (cd "$BENCH_DIR/peers/go-hello" && GOFLAGS=-mod=mod go build -o target/go-hello .) \
      || die "go build failed"
    log "building axum-hello"
    cargo build --release --quiet --manifest-path "$BENCH_DIR/peers/axum-hello/Cargo.toml" \
      || die "axum-hello build failed"
    log "building megaconn (cargo build --release)"
    if ! (cd "$REPO_ROOT" && cargo build --release --quiet); then
      log "WARNING: megaconn build failed; megaconn runs are skipped"
    fi
  fi
  # Run a private copy, so that a rebuild of target/ during the run (other
  # people build on this machine too) cannot change the binary under test.
  if [[ -z "$MEGACONN_USER" && -x "$REPO_ROOT/target/release/megaconn" ]]; then
    mkdir -p "$RUN_DIR"
    # One copy per run (PID in the name): other scripts may snapshot too.
    MEGACONN="$RUN_DIR/megaconn.$$"
    cp -f "$REPO_ROOT/target/release/megaconn" "$MEGACONN"
    MEGACONN_USER="$MEGACONN"
    MEGACONN_SNAPSHOT="$MEGACONN"
    (cd "$REPO_ROOT" && git describe --always --dirty 2>/dev/null || echo unknown) >"$MEGACONN.version"
  fi
  megaconn_has serve && MEGACONN_SERVE_OK=1
  megaconn_has load && MEGACONN_LOAD_OK=1
  megaconn_has hold && MEGACONN_HOLD_OK=1
  log "megaconn: serve=$MEGACONN_SERVE_OK load=$MEGACONN_LOAD_OK hold=$MEGACONN_HOLD_OK"
  return 0
}

set_sysctl() { # name value
  local name=$1 want=$2 cur
  cur="$(sysctl -n "$name" 2>/dev/null | tr -s '[:space:]' ' ' | sed 's/ $//')" || cur=""
  if [[ "$cur" != "$want" ]]; then
    if sysctl -q -w "$name=$want" >/dev/null 2>&1; then
      log "sysctl $name: '$cur' -> '$want'"
    else
      log "WARNING: could not set sysctl $name=$want (is '$cur')"
    fi
  fi
}

bench_tune() {
  ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
  log "ulimit -n $(ulimit -n)"
  set_sysctl net.ipv4.ip_local_port_range "1024 65535"
  set_sysctl net.core.somaxconn 65535
  set_sysctl net.ipv4.tcp_max_syn_backlog 65535
}

# True when servers are to be started with TLS (SERVER_TLS_CERT and _KEY set).
server_tls() { [[ -n "${SERVER_TLS_CERT:-}" && -n "${SERVER_TLS_KEY:-}" ]]; }

# Wait (bounded) until http://127.0.0.1:PORT/ (https:// with TLS, any
# certificate) answers. $1 port, $2 seconds.
wait_http() {
  local port=$1 secs=${2:-15} i scheme=http
  server_tls && scheme=https
  for ((i = 0; i < secs * 10; i++)); do
    curl -kfsS -o /dev/null -m 1 "$scheme://127.0.0.1:$port/" 2>/dev/null && return 0
    if [[ -n "$SERVER_PID" ]] && ! kill -0 "$SERVER_PID" 2>/dev/null; then return 1; fi
    sleep 0.1
  done
  return 1
}

port_listening() { [[ -n "$(ss -Hltn "( sport = :$1 )" 2>/dev/null)" ]]; }

# First port at or above $1 that nothing listens on (checks 200 ports).
free_port() {
  local p
  for ((p = $1; p < $1 + 200; p++)); do
    port_listening "$p" || { echo "$p"; return 0; }
  done
  die "no free port in $1..$(($1 + 199))"
}

# All descendants of PID (children, grandchildren...), one per line.
pid_descendants() {
  local kid
  for kid in $(pgrep -P "$1" 2>/dev/null); do
    echo "$kid"
    pid_descendants "$kid"
  done
}

# SERVER_MEASURE_PIDS for the server just started as SERVER_PID: nginx's workers
# (its master does no serving), else the process and its descendants.
set_measure_pids() { # name
  if [[ "$1" == nginx ]]; then
    SERVER_MEASURE_PIDS="$(pgrep -P "$SERVER_PID" | tr '\n' ' ')"
  else
    SERVER_MEASURE_PIDS="$SERVER_PID $(pid_descendants "$SERVER_PID" | tr '\n' ' ')"
  fi
}

server_start() { # NAME PORT [WORKERS]
  local name=$1 port=$2 workers=${3:-1} log_file
  mkdir -p "$RUN_DIR"
  if port_listening "$port"; then
    log "port $port is already in use by another program: $(ss -Hltnp "( sport = :$port )" | head -1)"
    return 1
  fi
  log_file="$RUN_DIR/$name-$port.log"
  SERVER_NAME=$name
  local tls_args=()
  if server_tls; then
    tls_args=(--tls-cert "$SERVER_TLS_CERT" --tls-key "$SERVER_TLS_KEY")
  fi
  case "$name" in
    megaconn | megaconn-b)
      [[ "$MEGACONN_SERVE_OK" == 1 ]] || die "megaconn serve is not available"
      # megaconn-b: another build ($MEGACONN_B, e.g. main's) beside this one.
      local bin="$MEGACONN"
      [[ $name == megaconn-b ]] && bin="${MEGACONN_B:?set MEGACONN_B to run megaconn-b}"
      # shellcheck disable=SC2086  # MEGACONN_SERVE_ARGS is a word list
      taskset -c "$SERVER_CPU" "$bin" serve --listen "127.0.0.1:$port" \
        --workers "$workers" "${tls_args[@]}" ${MEGACONN_SERVE_ARGS:-} >"$log_file" 2>&1 &
      ;;
    go)
      server_tls && die "the go peer has no TLS mode"
      GOMAXPROCS=$workers taskset -c "$SERVER_CPU" "$GO_HELLO" -listen "127.0.0.1:$port" \
        >"$log_file" 2>&1 &
      ;;
    axum)
      taskset -c "$SERVER_CPU" "$AXUM_HELLO" --listen "127.0.0.1:$port" --threads "$workers" \
        "${tls_args[@]}" >"$log_file" 2>&1 &
      ;;
    nginx)
      local dir="$RUN_DIR/nginx-$port"
      # NGINX_LISTEN_OPTS: e.g. " reuseport", one listening socket per worker
      # (several workers: without it one worker takes most connections).
      local listen_opts="${NGINX_LISTEN_OPTS:-}"
      rm -rf "$dir" && mkdir -p "$dir"
      : >"$dir/tls.conf"
      if server_tls; then
        listen_opts+=" ssl http2"
        sed -e "s|@CERT@|$SERVER_TLS_CERT|g" -e "s|@KEY@|$SERVER_TLS_KEY|g" \
          "$BENCH_DIR/peers/nginx-tls.conf.template" >"$dir/tls.conf"
      fi
      sed -e "s|@WORKERS@|$workers|g" -e "s|@LISTEN@|127.0.0.1:$port|g" -e "s|@RUNDIR@|$dir|g" \
        -e "s|@LISTEN_OPTS@|$listen_opts|g" \
        "$BENCH_DIR/peers/nginx.conf.template" >"$dir/nginx.conf"
      taskset -c "$SERVER_CPU" nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" \
        >"$log_file" 2>&1 &
      ;;
    floor)
      server_tls && die "the floor has no TLS mode"
      [[ -x "$FLOOR" ]] || bench_build_floor || die "no floor binary"
      taskset -c "$SERVER_CPU" "$FLOOR" 127.0.0.1 "$port" >"$log_file" 2>&1 &
      ;;
    floor-uring)
      server_tls && die "floor-uring has no TLS mode"
      [[ -x "$FLOOR_URING" ]] || bench_build_floor_uring || die "no floor-uring binary"
      taskset -c "$SERVER_CPU" "$FLOOR_URING" 127.0.0.1 "$port" >"$log_file" 2>&1 &
      ;;
    tokio-floor)
      server_tls && die "tokio-floor has no TLS mode"
      [[ -x "$TOKIO_FLOOR" ]] || bench_build_tokio_floor || die "no tokio-floor binary"
      taskset -c "$SERVER_CPU" "$TOKIO_FLOOR" serve "127.0.0.1:$port" full >"$log_file" 2>&1 &
      ;;
    *) die "unknown server $name" ;;
  esac
  SERVER_PID=$!
  if ! wait_http "$port" 20 || ! kill -0 "$SERVER_PID" 2>/dev/null; then
    log "server $name did not answer on :$port; log follows"
    cat "$log_file" >&2 || true
    server_stop
    return 1
  fi
  set_measure_pids "$name"
  log "started $name on 127.0.0.1:$port (pid $SERVER_PID, measured: $SERVER_MEASURE_PIDS)"
}

server_stop() {
  [[ -n "$SERVER_PID" ]] || return 0
  local i
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$SERVER_PID" 2>/dev/null; then
    log "server $SERVER_NAME (pid $SERVER_PID) ignored SIGTERM for 10s; SIGKILL"
    # shellcheck disable=SC2046  # a list of PIDs
    kill -KILL "$SERVER_PID" $(pid_descendants "$SERVER_PID") 2>/dev/null || true
  fi
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
  SERVER_MEASURE_PIDS=""
}

# utime+stime of one PID in seconds (0 if gone). Field 14/15 of /proc/PID/stat,
# counted after the ")" closing the command name.
_pid_ticks() {
  local stat rest f
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || { echo 0; return; }
  rest="${stat##*) }"
  # rest starts at field 3 (state); utime is field 14 -> index 11, stime 12.
  read -r -a f <<<"$rest"
  echo $((f[11] + f[12]))
}

pid_cpu_secs() { # PID... (children included)
  local total=0 p
  for p in "$@" $(for q in "$@"; do pid_descendants "$q"; done); do
    total=$((total + $(_pid_ticks "$p")))
  done
  awk -v t="$total" -v hz="$CLK_TCK" 'BEGIN { printf "%.4f\n", t / hz }'
}

server_cpu_secs() { pid_cpu_secs "$SERVER_PID"; }

# "USER TOTAL" CPU seconds (utime, utime+stime) over the running server's tree.
server_cpu_split() {
  local u=0 t=0 p stat rest f
  for p in $SERVER_PID $(pid_descendants "$SERVER_PID"); do
    stat="$(cat "/proc/$p/stat" 2>/dev/null)" || continue
    rest="${stat##*) }"
    read -r -a f <<<"$rest"
    u=$((u + f[11])) t=$((t + f[11] + f[12]))
  done
  awk -v u="$u" -v t="$t" -v hz="$CLK_TCK" 'BEGIN { printf "%.4f %.4f\n", u / hz, t / hz }'
}

pid_rss_bytes() { # PID... (VmRSS summed, no children)
  local total=0 p kb
  for p in "$@"; do
    kb="$(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status" 2>/dev/null)" || kb=0
    total=$((total + ${kb:-0} * 1024))
  done
  echo "$total"
}

# shellcheck disable=SC2086  # word splitting of the PID list is intended
server_rss_bytes() { pid_rss_bytes $SERVER_MEASURE_PIDS; }

# (awk prints with %.0f: mawk's print uses %.6g for numbers past 2^31.)
kernel_slab_bytes() { awk '/^Slab:/ { printf "%.0f\n", $2 * 1024 }' /proc/meminfo; }
# Bytes in the slab caches a TCP socket uses (active objects × object size):
# the socket (TCP), its inode (sock_inode_cache), file (filp), epoll entries,
# skb heads, bind buckets, request socks. Much less noisy than the Slab total
# on a machine where builds churn dentries and page cache.
KERNEL_SOCK_CACHES="TCP TCPv6 request_sock_TCP sock_inode_cache filp eventpoll_epi eventpoll_pwq skbuff_head_cache skbuff_small_head skbuff_fclone_cache tcp_bind_bucket tcp_bind2_bucket"
kernel_sock_slab_bytes() {
  awk -v names="$KERNEL_SOCK_CACHES" '
    BEGIN { n = split(names, a, " "); for (i = 1; i <= n; i++) want[a[i]] = 1 }
    want[$1] { total += $2 * $4 }
    END { printf "%.0f\n", total }' /proc/slabinfo 2>/dev/null || echo 0
}
# TCP sockets in use in this network namespace (all programs), /proc/net/sockstat.
tcp_inuse() { awk '$1 == "TCP:" { print $3 }' /proc/net/sockstat; }
kernel_tcp_mem_bytes() {
  awk -v ps="$PAGE_SIZE" '$1 == "TCP:" { for (i = 2; i < NF; i++) if ($i == "mem") printf "%.0f\n", $(i + 1) * ps }' \
    /proc/net/sockstat
}

# CPU seconds all cores spent busy since boot (user nice system irq softirq
# steal from /proc/stat). Busy time minus the server's and the client's is what
# other processes on the machine took during a run (noise).
system_busy_secs() {
  awk -v hz="$CLK_TCK" '$1 == "cpu" { printf "%.4f\n", ($2 + $3 + $4 + $7 + $8 + $9) / hz; exit }' /proc/stat
}

# "WALL IDLE": wall-clock seconds ($EPOCHREALTIME, µs) and the seconds all cores
# spent idle (idle + iowait from /proc/stat), read back to back. Busy CPU
# seconds between two snapshots = ncpu × Δwall − Δidle. This is what the
# throughput records use for "other CPU": /proc/stat's user/system fields are
# tick samples (a tick landing while a CPU is busy), while a process's
# utime+stime in /proc/PID/stat is its exact run time (sum_exec_runtime) cut
# into 10 ms ticks. On a loopback benchmark, where the CPUs flip between busy
# and idle tens of thousands of times a second, tick samples can undercount
# busy time against the exact per-process figures: the likely cause of the
# negative "other CPU" (down to −13%, worst in the open-loop rows, where the
# CPUs idle most). With NOHZ the idle fields are exact (measured from idle
# entry/exit), so busy time derived from them is on the same footing as the
# per-process figures. (Not verified on a quiet machine: on the busy machine of
# 2026-11-30 both measures agreed within 1%, the CPUs never being idle.)
machine_idle_snapshot() {
  local now=$EPOCHREALTIME
  awk -v hz="$CLK_TCK" -v now="$now" '$1 == "cpu" { printf "%s %.4f\n", now, ($5 + $6) / hz; exit }' /proc/stat
}
NCPU="$(nproc)"
# TCP segments sent machine-wide so far (/proc/net/snmp Tcp OutSegs): on
# loopback both ends' segments, data and pure ACKs.
tcp_out_segs() {
  awk '$1 == "Tcp:" { if (!h) { for (i = 2; i <= NF; i++) if ($i == "OutSegs") c = i; h = 1 } else { print $c; exit } }' /proc/net/snmp
}
# Busy CPU seconds of the whole machine between snapshots "W0 I0" and "W1 I1".
machine_busy_between() { # "W0 I0" "W1 I1"
  awk -v a="$1" -v b="$2" -v n="$NCPU" 'BEGIN { split(a, x, " "); split(b, y, " ");
    printf "%.4f\n", n * (y[1] - x[1]) - (y[2] - x[2]) }'
}

# Wait (at most $1 s, default 60) until other processes use less than
# $QUIET_MAX (default 0.15) of a core, sampled over 1 s. Returns 0 either way.
bench_wait_quiet() {
  local max_wait=${1:-60} start=$SECONDS b0 b1 busy
  while :; do
    b0="$(system_busy_secs)"
    sleep 1
    b1="$(system_busy_secs)"
    busy="$(awk -v a="$b0" -v b="$b1" 'BEGIN { printf "%.2f", b - a }')"
    if awk -v x="$busy" -v m="${QUIET_MAX:-0.15}" 'BEGIN { exit !(x < m) }'; then
      return 0
    fi
    if ((SECONDS - start >= max_wait)); then
      log "WARNING: machine still busy (${busy} cores used by others) after ${max_wait}s; going on"
      return 0
    fi
    log "machine busy (${busy} cores used by other processes); waiting"
    sleep 2
  done
}

# Bytes queued on the server side of PORT: the listener's accept queue plus
# unread (Recv-Q) and unsent/unacked (Send-Q) bytes of its established sockets.
# 0 means every request that arrived was read and every reply delivered.
server_queued() {
  local lq eq
  lq="$(ss -Hltn "( src 127.0.0.1:$1 )" 2>/dev/null | awk '{ s += $2 } END { print s + 0 }')"
  eq="$(ss -Htn state established "( src 127.0.0.1:$1 )" 2>/dev/null | awk '{ s += $1 + $2 } END { print s + 0 }')"
  echo $((lq + eq))
}

# Servers listen on 127.0.0.1; matching the address too keeps out client
# sockets of other programs that happen to use the same port number as their
# local port on another 127.x source address.
established_count() { ss -Htn state established "( src 127.0.0.1:$1 )" 2>/dev/null | wc -l; }

# Mean of hold's "H heartbeats/s," over progress lines with FROM <= t <= TO.
hb_rate() { # LOG FROM TO
  awk -v a="$2" -v b="$3" '
    match($0, /^\[ *[0-9.]+s\]/) {
      t = substr($0, 2, RLENGTH - 3) + 0
      if (t < a || t > b) next
      for (i = 2; i <= NF; i++) if ($i == "heartbeats/s,") { s += $(i - 1); k++ }
    }
    END { if (k) printf "%.1f\n", s / k; else print "null" }' "$1"
}
# hold's own clock (s) of its last progress line.
hold_clock() { tail -c 2000 "$1" 2>/dev/null | awk 'match($0, /^\[ *[0-9.]+s\]/) { t = substr($0, 2, RLENGTH - 3) + 0 } END { print t + 0 }'; }
hold_open() { tail -c 2000 "$1" 2>/dev/null | awk '{ for (i = 1; i < NF; i++) if ($i == "open") o = $(i + 1) } END { print o + 0 }'; }
# The last "pushes received N" of a hold log (--receive).
hold_pushes() { tail -c 2000 "$1" 2>/dev/null | awk '{ for (i = 2; i <= NF; i++) if ($(i - 1) == "received") p = $i } END { print p + 0 }'; }
# hold_start LOG URL ARGS...: starts `megaconn hold URL -c $N --ramp $RAMP
# --source $SOURCE ARGS` on $LOAD_CPU (its PID in HOLD_PID, output in LOG)
# and waits, bounded, until N connections are open; false if they are not.
hold_start() {
  local log_file=$1 url=$2 i
  shift 2
  taskset -c "$LOAD_CPU" "$MEGACONN" hold "$url" -c "$N" --ramp "$RAMP" --source "$SOURCE" \
    "$@" >"$log_file" 2>&1 &
  HOLD_PID=$!
  for ((i = 0; i < (N / RAMP + 60) * 5; i++)); do
    kill -0 "$HOLD_PID" 2>/dev/null || return 1
    (($(hold_open "$log_file") >= N)) && return 0
    sleep 0.2
  done
  return 1
}

# hold_down: lets the hold of hold_start end by itself (bounded), then stops it.
hold_down() {
  local i
  for ((i = 0; i < 300; i++)); do kill -0 "$HOLD_PID" 2>/dev/null || break; sleep 0.1; done
  kill_ours TERM hold "$HOLD_PID"
  wait "$HOLD_PID" 2>/dev/null || true
  HOLD_PID=""
}

# CPU nanoseconds of every thread of PID and its descendants (schedstat:
# finer than clock ticks).
sched_ns() {
  local p
  for p in "$1" $(pid_descendants "$1"); do cat /proc/"$p"/task/*/schedstat 2>/dev/null; done |
    awk '{ s += $1 } END { printf "%.0f\n", s }'
}

# interleaved_rounds ROUNDS FN SERVER...: runs `FN SERVER ROUND` for every
# server in every round, each round starting one server later, so that no
# server is always measured first (on the coolest machine) or last; a failed
# FN is skipped (FN says why).
interleaved_rounds() {
  local rounds=$1 fn=$2 round k
  shift 2
  local servers=("$@") n=$#
  for ((round = 1; round <= rounds; round++)); do
    for ((k = 0; k < n; k++)); do
      "$fn" "${servers[$(((k + round - 1) % n))]}" "$round" || true
    done
  done
}

# servers_without_rows RUNS ROW SERVER...: prints (space-separated) each
# SERVER that has no record in RUNS (JSON lines with a .server) for which the
# jq condition ROW holds, i.e. no row in a table built from those records.
# A table missing a server it was asked for must not pass for a full run.
servers_without_rows() {
  local runs=$1 row=$2 s missing=()
  shift 2
  for s in "$@"; do
    [[ "$(jq -rs --arg s "$s" "map(select(.server == \$s and ($row))) | length" "$runs")" != 0 ]] ||
      missing+=("$s")
  done
  echo "${missing[*]}"
}

# command_line SCRIPT VAR...: the command that reproduces this run,
# `VAR=value ... bash SCRIPT`, with each VAR that is set (values holding a
# space in double quotes), for the line a table prints under itself.
command_line() {
  local script=$1 v words=()
  shift
  for v in "$@"; do
    [[ -n "${!v+set}" ]] || continue
    if [[ "${!v}" == *[[:space:]]* ]]; then words+=("$v=\"${!v}\""); else words+=("$v=${!v}"); fi
  done
  echo "${words[*]}${words[*]:+ }bash $script"
}

# write_first_section FILE: stdin (a section starting with a `## ` heading)
# becomes FILE's first section, in place of the one there; the sections
# after it (the lines from FILE's second `## ` heading on, hand-written
# follow-ups) stay. Written to a temporary file first, so a failure leaves
# FILE as it was.
write_first_section() {
  local file=$1 tmp
  tmp="$(mktemp "$file.XXXXXX")"
  {
    cat
    if [[ -s "$file" ]] && awk '/^## / && ++n == 2 { found = 1; exit } END { exit !found }' "$file"; then
      echo
      awk '/^## / { n++ } n >= 2' "$file"
    fi
  } >"$tmp" && mv "$tmp" "$file"
}

# kill_ours SIG PATTERN PID...: signal only those PIDs that still exist and
# whose command line contains PATTERN (guards against reused PIDs).
kill_ours() {
  local sig=$1 pat=$2 p
  shift 2
  for p in "$@"; do
    [[ -r "/proc/$p/cmdline" ]] || continue
    tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -qF -- "$pat" || continue
    kill "-$sig" "$p" 2>/dev/null || true
  done
}

# Run `megaconn load` pinned to the load core under /usr/bin/time and print one
# JSON record: the load JSON plus server, scenario, round, the server's CPU
# seconds during the run (and per request), its RSS, the client's CPU from
# /usr/bin/time, and the CPU other processes took meanwhile. Files go to
# $RES_DIR. $1 server $2 scenario $3 round $4 duration $5 URL; the rest are
# extra load arguments.
load_record() {
  local server=$1 scenario=$2 round=$3 dur=$4 url=$5
  shift 5
  local base="$RES_DIR/$server-$scenario-r$round"
  local cpu0 cpu1 rss time_u time_s m0 m1 busy us0 us1
  # Accounting windows, nested so that nothing the server or the client does
  # falls outside the machine's window: machine snapshot, server snapshot, the
  # load run (the client's CPU is its whole life, /usr/bin/time), server
  # snapshot, machine snapshot. The server is idle between its snapshot and the
  # load's start/end, so its window is the load's; the machine window is a few
  # ms longer (pgrep/cat forks), which can only raise "other CPU" slightly.
  m0="$(machine_idle_snapshot)"
  read -r us0 cpu0 < <(server_cpu_split)
  if ! taskset -c "$LOAD_CPU" /usr/bin/time -f '%U %S' -o "$base.time" \
    "$MEGACONN" load "$url" -t 1 -d "$dur" --json "$base.json" "$@" >"$base.log" 2>&1; then
    log "WARNING: megaconn load failed for $server $scenario round $round (see $base.log)"
    return 1
  fi
  read -r us1 cpu1 < <(server_cpu_split)
  m1="$(machine_idle_snapshot)"
  busy="$(machine_busy_between "$m0" "$m1")"
  rss="$(server_rss_bytes)"
  read -r time_u time_s <"$base.time"
  jq -c --arg server "$server" --arg scenario "$scenario" --argjson round "$round" \
    --argjson cpu0 "$cpu0" --argjson cpu1 "$cpu1" --argjson us0 "$us0" --argjson us1 "$us1" --argjson rss "$rss" \
    --argjson tu "$time_u" --argjson ts "$time_s" --argjson busy "$busy" \
    --argjson window "$(awk -v a="$m0" -v b="$m1" 'BEGIN { split(a, x, " "); split(b, y, " "); printf "%.4f", y[1] - x[1] }')" \
    '{server: $server, scenario: $scenario, round: $round} + . + {
       server_cpu_secs: ($cpu1 - $cpu0),
       server_user_secs: ($us1 - $us0),
       server_cpu_us_per_req: (if .requests > 0 then ($cpu1 - $cpu0) * 1e6 / .requests else null end),
       server_user_us_per_req: (if .requests > 0 then ($us1 - $us0) * 1e6 / .requests else null end),
       server_rss_bytes: $rss,
       client_time_cpu_secs: ($tu + $ts),
       machine_busy_secs: $busy, machine_window_secs: $window,
       other_cpu_secs: ($busy - ($cpu1 - $cpu0) - ($tu + $ts))}' "$base.json"
}

# `megaconn hold` started in the background by a script: bench_cleanup stops it.
HOLD_PID=""

# Kill background helpers, hold and the server; safe to call more than once.
bench_cleanup() {
  local p
  if [[ -n "$HOLD_PID" ]]; then
    # shellcheck disable=SC2046  # a list of PIDs
    kill_ours TERM hold "$HOLD_PID" $(pgrep -P "$HOLD_PID" 2>/dev/null)
    wait "$HOLD_PID" 2>/dev/null || true
    HOLD_PID=""
  fi
  for p in "${BENCH_BG_PIDS[@]}"; do
    # shellcheck disable=SC2046  # a list of PIDs
    kill -TERM "$p" $(pid_descendants "$p") 2>/dev/null || true
  done
  for p in "${BENCH_BG_PIDS[@]}"; do
    wait "$p" 2>/dev/null || true
  done
  BENCH_BG_PIDS=()
  server_stop
  if [[ -n "$MEGACONN_SNAPSHOT" ]]; then
    rm -f "$MEGACONN_SNAPSHOT" "$MEGACONN_SNAPSHOT.version"
    MEGACONN_SNAPSHOT=""
  fi
}

# On exit, however it comes (the end, an error, SIGINT or SIGTERM), stop
# what the script started. The INT/TERM trap only exits: EXIT does the work.
bench_traps() {
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
}

# Sleeps SECS in the background and waits for it: bash runs a trap only
# after the foreground command ends, so a long foreground `sleep` would hold
# a SIGTERM (and the cleanup) back until it is over; `wait` returns at once.
bench_sleep() {
  sleep "$1" &
  local p=$!
  wait "$p" || { kill "$p" 2>/dev/null; return 0; }
}

# VmRSS of PID and its descendants (megaconn --processes: the worker processes).
# shellcheck disable=SC2046  # a list of PIDs
tree_rss() { pid_rss_bytes "$1" $(pid_descendants "$1"); }

# The CPU's model name (the host's CPU can change between runs on this
# virtual machine, and absolute figures with it).
cpu_model() { awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo; }

# Print a few facts about the machine and the tools (markdown list).
bench_machine_info() {
  echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "- nproc: $(nproc); memory: $(free -g | awk '/^Mem:/ { print $2 " GiB total, " $7 " GiB available" }')"
  echo "- kernel: $(uname -srm)"
  echo "- CPU: $(cpu_model)"
  echo "- go: $(go version 2>/dev/null | awk '{ print $3 }'); nginx: $(nginx -v 2>&1 | sed 's|.*nginx/||'); rustc: $(rustc --version 2>/dev/null | awk '{ print $2 }'); wrk: $(wrk --version 2>&1 | awk 'NR == 1 { print $2 }')"
  echo "- megaconn: built from $(cat "$MEGACONN.version" 2>/dev/null || echo '?') (git describe --dirty of the work tree at build time)"
}
