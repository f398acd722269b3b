"""Server CPU per attacker byte for HTTP/2 DATA and padding shapes, raw frames
over h2c (bench/H2TLS.md, "Padding and DATA nobody reads").

usage: h2-padflood.py SERVER_PID PORT MODE TOTAL_BYTES
  MODE data:<data bytes>:<padding bytes or ->[:echo]
         one POST stream, never ended, of DATA frames of that shape; to `/`
         (the demo answers at once and drops the body: DATA nobody reads) or
         with `:echo` to `/echo` (read and sent back; the client takes it)
       headers:<padding bytes or ->
         GET / requests, one HEADERS frame each, padded or not
Server CPU is the sum of /proc/PID/task/*/schedstat before and after, as in
session 38's CPU audit. Flow control is honoured (a stall ends the run)."""
import os, socket, struct, sys, threading, time

pid, port, mode, total = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])

def cpu_ns(pid):
    t = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            t += int(open(f"/proc/{pid}/task/{tid}/schedstat").read().split()[0])
        except OSError:
            pass
    return t

def frame(kind, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload

DATA, HEADERS, SETTINGS, WU = 0, 1, 4, 8
END_STREAM, END_HEADERS, PADDED, ACK = 1, 4, 8, 1
# HPACK: :method POST (0x83), :scheme http (0x86), :path / (0x84), :authority a
POST_ROOT = bytes([0x83, 0x86, 0x84, 0x01, 1, ord('a')])
GET_ROOT = bytes([0x82, 0x86, 0x84, 0x01, 1, ord('a')])

s = socket.create_connection(("127.0.0.1", port))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
# A big stream window from the server's point of view is its business; ours:
# SETTINGS_INITIAL_WINDOW_SIZE large so responses never stall.
s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(SETTINGS, 0, 0, struct.pack(">HI", 4, 2**31 - 1)))

lock = threading.Condition()
state = {"conn": 65535, "streams": {}, "init": 65535, "closed": False, "goaway": None, "rst": 0, "frames_in": 0}

def reader():
    buf = b""
    while True:
        try:
            d = s.recv(1 << 16)
        except OSError:
            d = b""
        if not d:
            with lock:
                state["closed"] = True
                lock.notify_all()
            return
        buf += d
        while len(buf) >= 9:
            ln = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + ln:
                break
            kind, flags = buf[3], buf[4]
            sid = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
            p = buf[9:9 + ln]
            buf = buf[9 + ln:]
            with lock:
                state["frames_in"] += 1
                if kind == SETTINGS and not flags & ACK:
                    i = 0
                    while i + 6 <= len(p):
                        k, v = struct.unpack(">HI", p[i:i + 6])
                        if k == 4:
                            state["init"] = v
                        i += 6
                    try:
                        s.sendall(frame(SETTINGS, ACK, 0, b""))
                    except OSError:
                        pass
                elif kind == WU:
                    inc = int.from_bytes(p[:4], "big") & 0x7FFFFFFF
                    if sid == 0:
                        state["conn"] += inc
                    else:
                        state["streams"][sid] = state["streams"].get(sid, state["init"]) + inc
                elif kind == DATA and ln:
                    # Take what the server sends: give its window back.
                    try:
                        s.sendall(frame(WU, 0, 0, struct.pack(">I", ln)) + frame(WU, 0, sid, struct.pack(">I", ln)))
                    except OSError:
                        pass
                elif kind == HEADERS:
                    state["answers"] = state.get("answers", 0) + 1
                elif kind == 7:
                    state["goaway"] = int.from_bytes(p[4:8], "big")
                elif kind == 3:
                    state["rst"] += 1
                lock.notify_all()

threading.Thread(target=reader, daemon=True).start()

def send_data(sid, data_len, pad):
    """One DATA frame on sid: data_len bytes of data, pad bytes of padding (PADDED if pad is not None)."""
    if pad is None:
        payload, flags = b"x" * data_len, 0
    else:
        payload, flags = bytes([pad]) + b"x" * data_len + b"\0" * pad, PADDED
    n = len(payload)
    with lock:
        while not state["closed"] and (state["conn"] < n or state["streams"].get(sid, state["init"]) < n):
            if not lock.wait(5):
                return None  # stalled: flow control holds it
        if state["closed"]:
            return None
        state["conn"] -= n
        state["streams"][sid] = state["streams"].get(sid, state["init"]) - n
    f = frame(DATA, flags, sid, payload)
    try:
        s.sendall(f)
    except OSError:
        return None
    return len(f)

time.sleep(0.2)
before = cpu_ns(pid)
t0 = time.time()
sent = 0
stalled = False
if mode.startswith("data"):
    # data:<data_len>:<pad or -> [:read]  one POST stream, never ended
    _, dl, pad, path = (mode.split(":") + ["unread"])[:4]
    dl = int(dl); pad = None if pad == "-" else int(pad)
    hdr = POST_ROOT if path == "unread" else bytes([0x83, 0x86, 0x04, 5]) + b"/echo" + bytes([0x01, 1, ord('a')])
    s.sendall(frame(HEADERS, END_HEADERS, 1, hdr))
    sent += 9 + len(hdr)
    while sent < total:
        n = send_data(1, dl, pad)
        if n is None:
            stalled = not state["closed"]
            break
        sent += n
elif mode.startswith("headers"):
    # headers:<pad or ->  a GET / per stream, padded or not
    pad = mode.split(":")[1]
    pad = None if pad == "-" else int(pad)
    sid = 1
    while sent < total and not state["closed"]:
        if pad is None:
            f = frame(HEADERS, END_HEADERS | END_STREAM, sid, GET_ROOT)
        else:
            f = frame(HEADERS, END_HEADERS | END_STREAM | PADDED, sid, bytes([pad]) + GET_ROOT + b"\0" * pad)
        try:
            s.sendall(f)
        except OSError:
            break
        sent += len(f)
        sid += 2
        # stay under the concurrent-stream limit: wait for answers every 64
        if sid % 64 == 1:
            with lock:
                lock.wait_for(lambda: state.get("answers", 0) >= (sid // 2) or state["closed"], 5)
time.sleep(0.3)
after = cpu_ns(pid)
el = time.time() - t0
cpu_us = (after - before) / 1000
print(f"{mode}: sent {sent} B in {el:.2f}s, server CPU {cpu_us/1000:.1f} ms = {cpu_us/(sent/1024):.2f} us/KiB; closed={state['closed']} goaway={state['goaway']} rst={state['rst']} stalled={stalled}")
