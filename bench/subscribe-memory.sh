#!/usr/bin/env bash
# bench/subscribe-memory.sh — what a topic subscription costs the server.
#
# Starts `megaconn serve --workers 1 --tcp-listen` (the framed line demo, on
# core 1 when there are two) and opens one connection to it, which sends N
# `SUB topic-i` lines (N distinct topics) and reads every `subscribed:`
# reply, then `PING` → `PONG`. Reports the server's RSS before the SUBs and
# after (Δ RSS / N: the bytes one subscription holds, its topic's name and
# its entries in the worker's maps), the server's CPU seconds over the SUBs
# (utime + stime from /proc/PID/stat) and the wall time, then closes the
# connection and reads RSS again.
#
# Env: N (20000), MAX (--max-subscriptions; "" for a binary without the
#   flag, e.g. one from before it existed), PORT (23700), MEGACONN
#   (target/release/megaconn, built if missing), LABEL (the table's build
#   column; the binary's name by default), ROUNDS (1: fresh server each
#   round).
# Output: one markdown table row per round on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

N="${N:-20000}"
MAX="${MAX-$N}"
PORT="${PORT:-23700}"
ROUNDS="${ROUNDS:-1}"
MEGACONN="${MEGACONN:-target/release/megaconn}"
[[ -x "$MEGACONN" ]] || cargo build --release --locked --bin megaconn
CPU=()
[[ "$(nproc)" -ge 2 ]] && CPU=(taskset -c 1)

rss() { awk '/^VmRSS:/ { print $2 * 1024 }' "/proc/$1/status"; }
cpu_secs() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f\n", ($14 + $15) / hz }' "/proc/$1/stat"; }

server=
cleanup() {
  if [[ -n "$server" ]]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
}
trap cleanup EXIT

# The client: SUBs when told (a line on stdin), then closes when told.
CLIENT_PY=$(cat <<'PY'
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port))
f = s.makefile("rb")
def ask(line):
    s.sendall(line + b"\n")
    return f.readline()
assert ask(b"PING") == b"PONG\n"
print("open", flush=True)
sys.stdin.readline()
t = time.monotonic()
batch = 500
for start in range(0, n, batch):
    end = min(n, start + batch)
    s.sendall(b"".join(b"SUB topic-%07d\n" % i for i in range(start, end)))
    for i in range(start, end):
        reply = f.readline()
        if reply != b"subscribed: topic-%07d\n" % i:
            sys.exit(f"SUB {i}: {reply!r}")
assert ask(b"PING") == b"PONG\n"
print("done %.2f" % (time.monotonic() - t), flush=True)
sys.stdin.readline()
s.close()
print("closed", flush=True)
PY
)

echo "| build | subscriptions | RSS before | RSS after | Δ RSS per subscription | server CPU for the SUBs | wall | RSS after the close |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
for round in $(seq "$ROUNDS"); do
  args=(serve --workers 1 --admin off --tcp-listen "127.0.0.1:$PORT")
  [[ -n "$MAX" ]] && args+=(--max-subscriptions "$MAX")
  "${CPU[@]}" "$MEGACONN" "${args[@]}" >/dev/null 2>&1 &
  server=$!
  for _ in $(seq 100); do
    [[ -n "$(ss -Hltn "( sport = :$PORT )" 2>/dev/null)" ]] && break
    sleep 0.1
  done
  coproc CLIENT { python3 -c "$CLIENT_PY" "$PORT" "$N"; }
  read -r line <&"${CLIENT[0]}"
  [[ "$line" == open ]] || { echo "client: $line" >&2; exit 1; }
  sleep 1
  before=$(rss "$server") cpu0=$(cpu_secs "$server")
  echo go >&"${CLIENT[1]}"
  read -r done wall <&"${CLIENT[0]}"
  [[ "$done" == done ]] || { echo "client: $done $wall" >&2; exit 1; }
  sleep 1
  after=$(rss "$server") cpu1=$(cpu_secs "$server")
  echo close >&"${CLIENT[1]}"
  read -r line <&"${CLIENT[0]}"
  sleep 2
  closed=$(rss "$server")
  awk -v b="${LABEL:-$(basename "$MEGACONN")}" -v n="$N" -v r0="$before" -v r1="$after" -v c0="$cpu0" -v c1="$cpu1" -v w="$wall" -v rc="$closed" \
    'BEGIN { printf "| %s | %d | %.1f MiB | %.1f MiB | %.0f B | %.2f s | %s s | %.1f MiB |\n",
             b, n, r0 / 1048576, r1 / 1048576, (r1 - r0) / n, c1 - c0, w, rc / 1048576 }'
  cleanup
  server=
done
