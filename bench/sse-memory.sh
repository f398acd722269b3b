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
# Env: N (2000), MODE (megaconn | native | axum), EXAMPLE
#   (target/release/examples/sse_hold, built if missing), PORT (23180),
#   SETTLE (2 s: after each phase, before RSS is read), LABEL (the table's
#   build column).
# Output: one markdown table row on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

N="${N:-2000}"
MODE="${MODE:-megaconn}"
PORT="${PORT:-23180}"
SETTLE="${SETTLE:-2}"
TARGET="${CARGO_TARGET_DIR:-target}"
EXAMPLE="${EXAMPLE:-$TARGET/release/examples/sse_hold}"
LABEL="${LABEL:-$(basename "$EXAMPLE")}"
[[ -x "$EXAMPLE" ]] || cargo build --release --locked -p megaconn --example sse_hold
CPU=()
[[ "$(nproc)" -ge 2 ]] && CPU=(taskset -c 1)
ulimit -n $((2 * N + 512))

OUT="$(mktemp -d)"
"${CPU[@]}" "$EXAMPLE" --listen "127.0.0.1:$PORT" --mode "$MODE" >"$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null; wait "$SERVER" 2>/dev/null; rm -rf "$OUT"' EXIT

python3 - "$N" "$PORT" "$SERVER" "$OUT/server.log" "$SETTLE" "$MODE" "$LABEL" <<'EOF'
import socket, sys, time

n, port, pid, log, settle, mode, label = (int(sys.argv[1]), int(sys.argv[2]),
    sys.argv[3], sys.argv[4], float(sys.argv[5]), sys.argv[6], sys.argv[7])

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
def sse():
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /sse HTTP/1.1\r\nHost: t\r\n\r\n")
    got = b""
    s.settimeout(20)
    while b"data: hello\n\n" not in got:
        chunk = s.recv(4096)
        assert chunk, "closed before the first event"
        got += chunk
    held.append(s)

def poll():
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /poll HTTP/1.1\r\nHost: t\r\n\r\n")
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
print("| build | mode | N | per held SSE stream | per pending long-poll | buffers out with 2N+2 held | parked with N+1 streams |")
print("|---|---|---|---|---|---|---|")
print(f"| {label} | {mode} | {n:,} | {(r1 - r0) / n:,.0f} B | {(r2 - r1) / n:,.0f} B | {buffers} | {parked} |")
EOF
