#!/usr/bin/env python3
"""bench/push-instructions.py: user-space instructions per push on
megaconn's fan-out path: `serve --workers 1 --park-after off --publish-rate
off` under callgrind, N awake /ws/chat subscribers that read at once, and
one publisher sending M text messages of SIZE bytes. The counters are
zeroed once everyone is open (`callgrind_control -z`) and dumped once every
subscriber has every message (`-d`), so handshakes are not counted; per
push = (I(N2) - I(N1)) / ((N2 - N1) * M), the publisher's own costs
cancelling out.

PACE_MS: the publisher's gap between messages; -1: lockstep, the next
message once every subscriber has the last (one push a wake, and the
same interleaving each run: two rounds agree within ~10 instructions); 0:
all at once (subscribers take batches). Instructions, not time: a busy
machine does not move them. Needs valgrind (callgrind_control), taskset.

usage: bench/push-instructions.py BIN N1 N2 M SIZE PACE_MS [ROUNDS]
e.g.   bench/push-instructions.py target/release/megaconn 10 30 40 64 -1 2
"""
import os, selectors, socket, subprocess, sys, time

from benchlib import free_port, ws_connect

BIN, N1, N2, M, SIZE, PACE = sys.argv[1], *map(int, sys.argv[2:6]), float(sys.argv[6])
ROUNDS = int(sys.argv[7]) if len(sys.argv) > 7 else 1


class Sub:
    def __init__(self, s, rest):
        self.s, self.buf, self.frames = s, bytearray(rest), 0

    def feed(self, data):
        self.buf += data
        while len(self.buf) >= 2:
            n = self.buf[1] & 0x7F
            h = 2
            if n == 126:
                if len(self.buf) < 4:
                    return
                n, h = int.from_bytes(self.buf[2:4], "big"), 4
            elif n == 127:
                if len(self.buf) < 10:
                    return
                n, h = int.from_bytes(self.buf[2:10], "big"), 10
            if len(self.buf) < h + n:
                return
            op = self.buf[0] & 0x0F
            if op in (1, 2):
                self.frames += 1
            del self.buf[: h + n]


def frame(payload):
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes([0x81, 0x80 | n])
    elif n < 65536:
        head = bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x81, 0x80 | 127]) + n.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def run(n):
    port = free_port()
    out = f"/tmp/push-instructions-cg/{os.path.basename(BIN)}-{n}-{time.time_ns()}"
    os.makedirs("/tmp/push-instructions-cg", exist_ok=True)
    srv = subprocess.Popen(
        ["taskset", "-c", "1", "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p",
         BIN, "serve", "--listen", f"127.0.0.1:{port}", "--workers", "1",
         "--admin", "off", "--park-after", "off", "--publish-rate", "off"],
        stdout=subprocess.DEVNULL, stderr=open(out + ".log", "w"))
    try:
        for _ in range(600):
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                time.sleep(0.05)
        sel = selectors.DefaultSelector()
        subs = []
        for _ in range(n):
            # (ws_connect reads nothing beyond the handshake.)
            s = ws_connect(port, "/ws/chat", nodelay=True)
            s.setblocking(False)
            sub = Sub(s, b"")
            subs.append(sub)
            sel.register(s, selectors.EVENT_READ, sub)
        pub = ws_connect(port, "/ws/chat", nodelay=True)
        # Its own messages come back too (it is in the chat): read away.
        pub.setblocking(False)
        sel.register(pub, selectors.EVENT_READ, Sub(pub, b""))
        time.sleep(1.0)
        payload = (b"x" * SIZE)
        msgs = [frame(payload) for _ in range(M)]
        subprocess.run(["callgrind_control", "-z", str(srv.pid)], check=True,
                       stdout=subprocess.DEVNULL)
        start = [s.frames for s in subs]
        sent = 0
        next_at = time.monotonic()
        deadline = time.monotonic() + 600
        while True:
            now = time.monotonic()
            lockstep_ok = PACE >= 0 or all(s.frames - f >= sent for s, f in zip(subs, start))
            if sent < M and now >= next_at and lockstep_ok:
                pub.setblocking(True)
                pub.sendall(msgs[sent])
                pub.setblocking(False)
                sent += 1
                next_at = now + max(PACE, 0) / 1000.0
            timeout = max(0.0, next_at - time.monotonic()) if sent < M and PACE >= 0 else 0.05
            for key, _ in sel.select(timeout):
                try:
                    data = key.fileobj.recv(1 << 20)
                except BlockingIOError:
                    continue
                if not data:
                    sys.exit("a subscriber was closed: see " + out + ".log")
                key.data.feed(data)
            if sent == M and all(s.frames - f >= M for s, f in zip(subs, start)):
                break
            if time.monotonic() > deadline:
                sys.exit("timed out")
        time.sleep(0.3)
        before = set(os.listdir("/tmp/push-instructions-cg"))
        subprocess.run(["callgrind_control", "-d", str(srv.pid)], check=True,
                       stdout=subprocess.DEVNULL)
        dumps = [f for f in set(os.listdir("/tmp/push-instructions-cg")) - before
                 if f.startswith(os.path.basename(out))]
        ins = None
        for f in dumps:
            for line in open(os.path.join("/tmp/push-instructions-cg", f)):
                if line.startswith("summary:") or line.startswith("totals:"):
                    ins = int(line.split()[1])
        if ins is None:
            sys.exit("no callgrind dump: %r" % dumps)
        for s in subs:
            s.s.close()
        pub.close()
        return ins
    finally:
        srv.terminate()
        srv.wait()


for r in range(ROUNDS):
    i1 = run(N1)
    i2 = run(N2)
    per = (i2 - i1) / ((N2 - N1) * M)
    print(f"{os.path.basename(BIN)} size={SIZE} pace={PACE}ms M={M}: I({N1})={i1} I({N2})={i2} "
          f"per push={per:.0f}", flush=True)
