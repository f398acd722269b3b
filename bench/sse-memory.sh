#!/usr/bin/env bash
# bench/sse-memory.sh — what a held server-sent-event stream and a pending
# long-poll cost the server, by RSS, on one process.
#
# Starts crates/megaconn/examples/sse_hold.rs ($EXAMPLE, `--mode $MODE`,
# pinned to core 1 when there are two; MODE=native serves /sse with
# megaconn's own SseRoute, whose streams park), then from one Python process:
#   1. one /sse stream and one /poll request (warm-up), RSS0;
#   2. N more /sse streams, each opened after the last read its first
#      event (so at most one is mid-request at a time), RSS1;
#   3. N /poll requests, each sent after the last was taken by the server
#      (megaconn: its `requests` count, from the example's stats line;
#      axum: SETTLE s after the last), RSS2;
# -> per held SSE stream = (RSS1 − RSS0) / N, per pending long-poll =
#    (RSS2 − RSS1) / N, and megaconn's `buffers_checked_out` with all 2N
#    held (and, native, the streams parked after step 2). Every connection
#    stays open until the end.
# PROTO says how each request goes: h1 (HTTP/1.1, the default), tls
# (HTTP/1.1 over TLS, ALPN http/1.1), h2c (HTTP/2 with prior knowledge,
# cleartext) or h2 (HTTP/2 over TLS, ALPN h2); one request per connection
# in each, so every figure is per connection. tls and h2 start the example
# with `--tls` (megaconn and native; native over tls parks with its TLS
# session; native over h2c or h2 is not native, so not run).
# Env: N (2000), MODE (megaconn | native | axum), PROTO (h1), EXAMPLE
#   (target/release/examples/sse_hold, built if missing), PORT (a free
#   one), SETTLE (2 s: after each phase, before RSS is read), LABEL (the
#   table's build column).
# Side by side in one run: MODES, NS, PROTOS (lists) and ROUNDS run the
#   script once per combination, a fresh server each, modes innermost
#   (`MODES="native megaconn axum" NS="2000 5000" ROUNDS=2` gives native,
#   megaconn, axum at 2,000, the same at 5,000, then round 2), skipping
#   what the example cannot serve (axum: h1 only; native: h1 and tls), into one
#   table; with ROUNDS > 1 the build column says the round.
# Output: a markdown table (header, then one row a run) on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

# Whether the example serves MODE over PROTO: axum::serve over h1 only, a
# native stream over HTTP/1.1 only (in the clear or over TLS: over HTTP/2
# the route is not native and this example gives it no fallback).
serves() { # MODE PROTO
  case "$1/$2" in
    megaconn/*|native/h1|native/tls|axum/h1) return 0 ;;
    *) return 1 ;;
  esac
}

if [[ -n "${MODES:-}${NS:-}${PROTOS:-}${ROUNDS:-}" ]]; then
  rounds="${ROUNDS:-1}"
  label="${LABEL:-$(basename "${EXAMPLE:-sse_hold}")}"
  header=1
  for ((round = 1; round <= rounds; round++)); do
    for proto in ${PROTOS:-${PROTO:-h1}}; do
      for n in ${NS:-${N:-2000}}; do
        for mode in ${MODES:-${MODE:-megaconn}}; do
          if ! serves "$mode" "$proto"; then
            echo "skipped MODE=$mode PROTO=$proto: the example does not serve it" >&2
            continue
          fi
          row_label="$label"
          if ((rounds > 1)); then row_label="$label, round $round"; fi
          MODES= NS= PROTOS= ROUNDS= HEADER="$header" MODE="$mode" N="$n" PROTO="$proto" \
            LABEL="$row_label" bash "$0"
          header=0
        done
      done
    done
  done
  exit 0
fi

N="${N:-2000}"
MODE="${MODE:-megaconn}"
PROTO="${PROTO:-h1}"
TLS=()
case "$PROTO" in
  h1|h2c) ;;
  tls|h2) TLS=(--tls) ;;
  *) echo "PROTO: h1, tls, h2c or h2, not $PROTO" >&2; exit 2 ;;
esac
serves "$MODE" "$PROTO" || { echo "MODE=$MODE does not serve PROTO=$PROTO (axum: h1; native: h1, tls)" >&2; exit 2; }
# A free port unless told (another run or helper may hold any fixed one).
PORT="${PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
SETTLE="${SETTLE:-2}"
TARGET="${CARGO_TARGET_DIR:-target}"
EXAMPLE="${EXAMPLE:-$TARGET/release/examples/sse_hold}"
LABEL="${LABEL:-$(basename "$EXAMPLE")}"
[[ -x "$EXAMPLE" ]] || cargo build --release --locked -p megaconn --example sse_hold
CPU=()
[[ "$(nproc)" -ge 2 ]] && CPU=(taskset -c 1)
ulimit -n $((2 * N + 512))

OUT="$(mktemp -d)"
"${CPU[@]}" "$EXAMPLE" --listen "127.0.0.1:$PORT" --mode "$MODE" "${TLS[@]}" >"$OUT/server.log" 2>&1 &
SERVER=$!
# `|| true`: under `set -e` the killed server's status (143) ended the
# trap before its `rm` and became the script's, which stopped a driver
# loop (MODES, …) after its first run.
trap 'rc=$?; kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null || true; rm -rf "$OUT"; exit "$rc"' EXIT

python3 - "$N" "$PORT" "$SERVER" "$OUT/server.log" "$SETTLE" "$MODE" "$LABEL" "$PROTO" "${HEADER:-1}" <<'EOF'
import socket, ssl, struct, sys, time

n, port, pid, log, settle, mode, label, proto, header = (int(sys.argv[1]), int(sys.argv[2]),
    sys.argv[3], sys.argv[4], float(sys.argv[5]), sys.argv[6], sys.argv[7], sys.argv[8],
    sys.argv[9] == "1")

def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

def stats():
    """The example's last stats line: (buffers, requests, parked), or None."""
    last = None
    for line in open(log):
        if line.startswith("stats "):
            f = dict(kv.split("=") for kv in line.split()[1:])
            last = (int(f["buffers"]), int(f["requests"]), int(f.get("parked", 0)))
    return last

deadline = time.time() + 20
while True:
    try:
        socket.create_connection(("127.0.0.1", port)).close()
        break
    except OSError:
        assert time.time() < deadline, "server did not start"
        time.sleep(0.05)

held = []
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
SETTINGS_ACK = b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"
if proto in ("tls", "h2"):
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE
    tls.set_alpn_protocols(["h2" if proto == "h2" else "http/1.1"])

def connect():
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(20)
    if proto in ("tls", "h2"):
        s = tls.wrap_socket(s, server_hostname="localhost")
    return s

def send_request(s, path):
    """GET `path`: HTTP/1.1, or stream 1 of a new HTTP/2 connection (the
    preface, empty SETTINGS, then HEADERS with END_STREAM; HPACK by hand:
    :method GET, :scheme, :path and :authority as literals), after which
    the server's SETTINGS are read and acknowledged (as a client must)."""
    if proto in ("h1", "tls"):
        s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: t\r\n\r\n")
        return b""
    scheme = b"\x87" if proto == "h2" else b"\x86"
    block = b"\x82" + scheme + b"\x04" + bytes([len(path)]) + path + b"\x01\x01t"
    headers = struct.pack(">I", len(block))[1:] + b"\x01\x05" + struct.pack(">I", 1) + block
    s.sendall(PREFACE + SETTINGS + headers)
    got = b""
    while len(got) < 9:
        chunk = s.recv(4096)
        assert chunk, "closed before the server's SETTINGS"
        got += chunk
    assert got[3] == 4, f"the server's first frame is SETTINGS: {got[:9]!r}"
    s.sendall(SETTINGS_ACK)
    return got

def sse():
    s = connect()
    got = send_request(s, b"/sse")
    while b"data: hello\n\n" not in got:
        chunk = s.recv(4096)
        assert chunk, "closed before the first event"
        got += chunk
    held.append(s)

def poll():
    s = connect()
    send_request(s, b"/poll")
    held.append(s)

def wait_requests(count):
    # megaconn: until the server took them all (its stats line, every second).
    if mode == "axum":
        return
    deadline = time.time() + 60
    while (stats() or (0, 0, 0))[1] < count:
        assert time.time() < deadline, f"requests: {stats()} < {count}"
        time.sleep(0.2)

sse(); poll()
wait_requests(2)
time.sleep(settle + 1)
r0 = rss()
for _ in range(n):
    sse()
if mode == "native":
    # The streams park once idle for park_idle_after: until all N+1 did.
    deadline = time.time() + 60
    while (stats() or (0, 0, 0))[2] < n + 1:
        assert time.time() < deadline, f"parked: {stats()} < {n + 1}"
        time.sleep(0.2)
time.sleep(settle)
r1 = rss()
parked = stats()[2] if mode != "axum" else "-"
for _ in range(n):
    poll()
wait_requests(2 * n + 2)
time.sleep(settle + 1)
r2 = rss()
buffers = stats()[0] if mode != "axum" else "-"
if header:
    print("| build | mode | protocol | N | per held SSE stream | per pending long-poll | buffers out with 2N+2 held | parked with N+1 streams |")
    print("|---|---|---|---|---|---|---|---|")
print(f"| {label} | {mode} | {proto} | {n:,} | {(r1 - r0) / n:,.0f} B | {(r2 - r1) / n:,.0f} B | {buffers} | {parked} |")
EOF
