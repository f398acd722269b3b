#!/usr/bin/env python3
"""bench/H2TLS.md, "The per-IP rate table under a flood of addresses":
a flood of connections from N distinct loopback sources (127.1.0.0 + i),
each connected then reset at once (SO_LINGER 0: no TIME_WAIT kept), one at
a time: a bounded loop. Usage: ip-flood.py PORT N"""
import socket, struct, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
base = (127 << 24) | (1 << 16)
fails = 0
for i in range(n):
    src = socket.inet_ntoa(struct.pack("!I", base + i + 1))
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    try:
        s.bind((src, 0))
        s.connect(("127.0.0.1", port))
    except OSError:
        fails += 1
    s.close()
print(f"{n} sources, {fails} failed")
