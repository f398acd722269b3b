"""Opens C connections to an h2c server, each with SETTINGS_INITIAL_WINDOW_SIZE 0
and S streams of GET /, never a WINDOW_UPDATE; holds them until stdin closes
or SIGTERM. Prints how many response HEADERS frames came back."""
import socket, struct, sys, time, selectors

host, port, C, S = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload

# SETTINGS: INITIAL_WINDOW_SIZE (0x4) = 0, MAX_CONCURRENT_STREAMS irrelevant
settings = frame(4, 0, 0, struct.pack(">HI", 4, 0))
# HPACK: :method GET (0x82), :scheme http (0x86), :path / (0x84), :authority a
block = bytes([0x82, 0x86, 0x84, 0x01, 0x01]) + b"a"
conns = []
for c in range(C):
    s = socket.create_connection((host, port))
    out = PREFACE + settings
    for i in range(S):
        out += frame(1, 0x5, 1 + 2 * i, block)
    s.sendall(out)
    s.setblocking(False)
    conns.append(s)
sel = selectors.DefaultSelector()
for s in conns:
    sel.register(s, selectors.EVENT_READ, bytearray())
heads = 0
resets = 0
deadline = time.time() + float(sys.argv[5]) if len(sys.argv) > 5 else None
acked = set()
while deadline is None or time.time() < deadline:
    for key, _ in sel.select(timeout=0.5):
        s, buf = key.fileobj, key.data
        try:
            d = s.recv(65536)
        except BlockingIOError:
            continue
        if not d:
            sel.unregister(s)
            continue
        buf += d
        while len(buf) >= 9:
            ln = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + ln:
                break
            kind, flags = buf[3], buf[4]
            del buf[: 9 + ln]
            if kind == 1:
                heads += 1
            elif kind == 3:
                resets += 1
            elif kind == 4 and not flags & 1 and s not in acked:
                acked.add(s)
                s.send(frame(4, 1, 0))
    print(f"heads={heads} resets={resets}", flush=True)
