#!/usr/bin/env python3
"""bench/slow-reader-memory.py: what `megaconn serve` holds while awake
WebSocket subscribers that fell behind catch up, reading slowly.

N clients open the demo's `/ws` (SO_RCVBUF 4096, so what the server sends
waits on its side) and read nothing; the admin listener's `POST /broadcast`
sends each MESSAGES text messages of BYTES (all of them within
`outbound_queue`, 256, so none is closed as a slow consumer: its write is
stuck on the first ones, the rest wait in its queue, one copy shared by
all). Then every client reads, slowly (READ bytes every PAUSE seconds),
until it has all of them, while the server's RSS is sampled every 20 ms.
An awake connection took its whole queue into its write buffer once its
socket took the frame under way: up to 256 messages, a copy per
connection, where the queue held one for all; since branch `inboxcap`
(2026-12-05) it takes about 64 KiB at a time.

Prints: the server's RSS before the clients, once the broadcasts are
queued, and the peak while they read; the peak's growth per client; the
bytes each client read (all of them, or it says so) and the server's
`pushes` / `queue_drops` / slow-consumer closes from its /metrics.

Usage: python3 bench/slow-reader-memory.py --megaconn target/release/megaconn
  [--n 20] [--messages 200] [--bytes 60000] [--read 65536] [--pause 0.01]
It starts its own server (one worker, --park-after off: a parked
subscriber gets a push in one `send`, and is closed when its socket is
full) on free ports and stops it at the end. Memory, not time: it needs no
quiet machine.
"""

import argparse
import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from benchlib import free_port, ws_connect


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise SystemExit("no VmRSS")


def metrics(admin):
    conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=10)
    conn.request("GET", "/metrics")
    body = conn.getresponse().read().decode()
    conn.close()
    out = {}
    for line in body.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, value = line.rsplit(" ", 1)
        out[name] = float(value)
    return out


def subscriber(port):
    return ws_connect(port, "/ws", rcvbuf=4096)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--megaconn", required=True)
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--messages", type=int, default=200)
    p.add_argument("--bytes", type=int, default=60000)
    p.add_argument("--read", type=int, default=65536)
    p.add_argument("--pause", type=float, default=0.01)
    a = p.parse_args()
    port, admin = free_port(), free_port()
    log = open(f"/tmp/slow-reader-memory-{os.getpid()}.log", "w")
    server = subprocess.Popen(
        [a.megaconn, "serve", "--workers", "1", "--listen", f"127.0.0.1:{port}",
         "--admin", f"127.0.0.1:{admin}", "--park-after", "off"],
        stdout=log, stderr=log, start_new_session=True)
    try:
        deadline = time.time() + 30
        while True:
            try:
                metrics(admin)
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not start")
                time.sleep(0.05)
        before = rss(server.pid)
        subs = [subscriber(port) for _ in range(a.n)]
        payload = b"x" * a.bytes
        for _ in range(a.messages):
            conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=10)
            conn.request("POST", "/broadcast", body=payload)
            r = conn.getresponse()
            r.read()
            conn.close()
            if r.status != 200:
                raise SystemExit(f"/broadcast answered {r.status}")
        want_pushes = a.n * a.messages
        deadline = time.time() + 30
        while metrics(admin).get("megaconn_message_pushes_total", 0) < want_pushes:
            if time.time() > deadline:
                raise SystemExit("the broadcasts did not all reach the queues")
            time.sleep(0.05)
        time.sleep(1)
        queued = rss(server.pid)
        head = 2 if a.bytes < 126 else 4 if a.bytes < 65536 else 10
        total = a.messages * (a.bytes + head)
        got = [0] * a.n

        def read(i):
            s = subs[i]
            s.settimeout(30)
            while got[i] < total:
                try:
                    chunk = s.recv(a.read)
                except OSError:
                    return
                if not chunk:
                    return
                got[i] += len(chunk)
                time.sleep(a.pause)

        readers = [threading.Thread(target=read, args=(i,)) for i in range(a.n)]
        for t in readers:
            t.start()
        peak = queued
        while any(t.is_alive() for t in readers):
            peak = max(peak, rss(server.pid))
            time.sleep(0.02)
        m = metrics(admin)
        mib = 1 << 20
        print(f"megaconn {a.megaconn}: {a.n} subscribers, {a.messages} broadcasts of {a.bytes} B, "
              f"read {a.read} B every {a.pause} s")
        print(f"RSS before {before / mib:.1f} MiB, queued {queued / mib:.1f} MiB, "
              f"peak while reading {peak / mib:.1f} MiB: "
              f"{(peak - queued) / a.n / 1024:.0f} KiB per subscriber over queued")
        # (Beside the messages, a client may have read the server's pings.)
        whole = sum(1 for g in got if g >= total)
        print(f"read all {total} B of messages: {whole} of {a.n} subscribers "
              f"(least {min(got)} B)")
        slow = m.get('megaconn_connections_closed_total{reason="slow_consumer"}', 0)
        print(f"pushes {m.get('megaconn_message_pushes_total', 0):.0f}, "
              f"queue_drops {sum(v for k, v in m.items() if k.startswith('megaconn_message_queue_drops_total')):.0f}, "
              f"slow_consumer closes {slow:.0f}")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
        os.unlink(log.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
