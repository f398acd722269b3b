"""Server CPU per attacker frame and byte for HTTP/2 frame shapes, raw frames
over h2c (bench/H2TLS.md, "Padding and DATA nobody reads", "Session 41").

usage: h2-padflood.py SERVER_PID PORT MODE TOTAL_BYTES
  MODE data:<data bytes>:<padding bytes or ->[:echo[:<ahead>]|:sleep]
         one stream, never ended, of DATA frames of that shape: a POST to
         `/` (the demo answers at once and drops the body: DATA nobody
         reads); with `:echo` to `/echo` (read and sent back; the client
         takes it; with <ahead>, never more than that many frames sent and
         not yet echoed: a sender at the handler's pace); with `:sleep` a
         GET /sleep?ms=10000 with a body (the handler never reads it and
         the stream stays open 10 s)
       headers:<padding bytes or ->
         GET / requests, one HEADERS frame each, padded or not
       cont:<n>
         GET / requests, each a HEADERS frame and n CONTINUATION frames
       rst:<path>
         HEADERS (GET <path>, END_STREAM) then RST_STREAM(CANCEL), churned
       ping[:paced]
         PINGs (the control-frame guard's case, for reference), 64 a
         write; paced: one at a time, each after the last one's answer
       wu<N>[:paced]
         a POST /echo of 1 MiB (64 KiB frames of 16 KiB) with our stream
         window 0, then WINDOW_UPDATE(stream, N) one after another: each
         lets the server send one N-byte DATA frame of the echo (wu1: the
         one-byte drip; paced: each after the last one's bytes came)
Server CPU is the sum of /proc/PID/task/*/schedstat before and after, as in
session 38's CPU audit. Flow control is honoured (a stall ends the run).
Prints one line: frames and bytes sent, server CPU, us a frame, us a KiB,
how the connection ended."""
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

DATA, HEADERS, RST, SETTINGS, PING, GOAWAY, WU, CONT = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, END_HEADERS, PADDED, ACK = 1, 4, 8, 1
# HPACK: :method POST (0x83), :scheme http (0x86), :path / (0x84), :authority a
POST_ROOT = bytes([0x83, 0x86, 0x84, 0x01, 1, ord('a')])
GET_ROOT = bytes([0x82, 0x86, 0x84, 0x01, 1, ord('a')])

def get(path):
    """GET path, literal :path without indexing (HPACK 0x04)."""
    p = path.encode()
    return bytes([0x82, 0x86, 0x04, len(p)]) + p + bytes([0x01, 1, ord('a')])

def post(path):
    p = path.encode()
    return bytes([0x83, 0x86, 0x04, len(p)]) + p + bytes([0x01, 1, ord('a')])

s = socket.create_connection(("127.0.0.1", port))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
# SETTINGS_INITIAL_WINDOW_SIZE large so responses never stall (0 for wu1:
# every byte of the echo waits for our WINDOW_UPDATE).
init = 0 if mode.startswith("wu") else 2**31 - 1
s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(SETTINGS, 0, 0, struct.pack(">HI", 4, init)))
if mode.startswith("wu"):
    # Our connection window: plenty, once (an honest client's first frame).
    s.sendall(frame(WU, 0, 0, struct.pack(">I", 2**31 - 1 - 65535)))

lock = threading.Condition()
state = {"conn": 65535, "streams": {}, "init": 65535, "closed": False, "goaway": None,
         "rst": 0, "frames_in": 0, "data_in": 0, "data_frames_in": 0, "answers": 0, "pongs": 0}

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
                    state["data_in"] += ln
                    state["data_frames_in"] += 1
                    # Take what the server sends: give its window back
                    # (wu1 gives it back one byte at a time, on its own).
                    if not mode.startswith("wu"):
                        try:
                            s.sendall(frame(WU, 0, 0, struct.pack(">I", ln)) + frame(WU, 0, sid, struct.pack(">I", ln)))
                        except OSError:
                            pass
                elif kind == HEADERS:
                    state["answers"] += 1
                elif kind == PING and flags & ACK:
                    state["pongs"] += 1
                elif kind == GOAWAY:
                    state["goaway"] = int.from_bytes(p[4:8], "big")
                elif kind == RST:
                    state["rst"] += 1
                lock.notify_all()

threading.Thread(target=reader, daemon=True).start()

def send_data(sid, data_len, pad, end=False):
    """One DATA frame on sid: data_len bytes of data, pad bytes of padding (PADDED if pad is not None)."""
    if pad is None:
        payload, flags = b"x" * data_len, 0
    else:
        payload, flags = bytes([pad]) + b"x" * data_len + b"\0" * pad, PADDED
    if end:
        flags |= END_STREAM
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

def send(b):
    try:
        s.sendall(b)
        return True
    except OSError:
        return False

def wait_answers(n):
    """Stays under the concurrent-stream limit: waits for n answers."""
    with lock:
        lock.wait_for(lambda: state["answers"] >= n or state["closed"], 5)

time.sleep(0.2)
before = cpu_ns(pid)
t0 = time.time()
sent = 0
frames = 0
stalled = False
if mode.startswith("data"):
    # data:<data_len>:<pad or -> [:echo|:sleep]  one stream, never ended
    parts = mode.split(":")
    _, dl, pad = parts[:3]
    path = parts[3] if len(parts) > 3 else "unread"
    ahead = int(parts[4]) if len(parts) > 4 else None
    dl = int(dl); pad = None if pad == "-" else int(pad)
    hdr = {"unread": POST_ROOT, "echo": post("/echo"), "sleep": get("/sleep?ms=10000")}[path]
    s.sendall(frame(HEADERS, END_HEADERS, 1, hdr))
    sent += 9 + len(hdr)
    while sent < total:
        if ahead is not None and frames >= ahead:
            with lock:
                lock.wait_for(lambda: state["data_in"] >= (frames - ahead + 1) * dl or state["closed"], 5)
        n = send_data(1, dl, pad)
        if n is None:
            stalled = not state["closed"]
            break
        sent += n
        frames += 1
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
        if not send(f):
            break
        sent += len(f)
        frames += 1
        sid += 2
        if sid % 64 == 1:
            wait_answers(sid // 2)
elif mode.startswith("cont"):
    # cont:<n>  GET / as HEADERS + n CONTINUATIONs of one header byte each
    # (the block is GET_ROOT cut into n + 1 pieces).
    n = int(mode.split(":")[1])
    assert n + 1 <= len(GET_ROOT)
    cuts = [GET_ROOT[:len(GET_ROOT) - n]] + [GET_ROOT[len(GET_ROOT) - n + i:len(GET_ROOT) - n + i + 1] for i in range(n)]
    sid = 1
    while sent < total and not state["closed"]:
        f = frame(HEADERS, END_STREAM, sid, cuts[0])
        for i, c in enumerate(cuts[1:]):
            f += frame(CONT, END_HEADERS if i == n - 1 else 0, sid, c)
        if not send(f):
            break
        sent += len(f)
        frames += n + 1
        sid += 2
        if sid % 64 == 1:
            wait_answers(sid // 2)
elif mode.startswith("rst"):
    # rst:<path>  HEADERS then RST_STREAM(CANCEL) at once, stream after stream
    path = mode.split(":", 1)[1]
    hdr = get(path)
    sid = 1
    while sent < total and not state["closed"]:
        f = frame(HEADERS, END_HEADERS | END_STREAM, sid, hdr) + frame(RST, 0, sid, struct.pack(">I", 8))
        if not send(f):
            break
        sent += len(f)
        frames += 2
        sid += 2
elif mode == "ping:paced":
    # One PING at a time, each after the last one's answer: a round trip
    # and a wake-up each, where the batched flood's 64 share them.
    f = frame(PING, 0, 0, b"12345678")
    while sent < total and not state["closed"]:
        if not send(f):
            break
        sent += len(f)
        frames += 1
        with lock:
            lock.wait_for(lambda: state["pongs"] >= frames or state["closed"], 5)
elif mode == "ping":
    while sent < total and not state["closed"]:
        f = frame(PING, 0, 0, b"12345678") * 64
        if not send(f):
            break
        sent += len(f)
        frames += 64
elif mode.startswith("wu"):
    paced = mode.endswith(":paced")
    inc = int(mode[2:].split(":")[0])
    body = 1 << 20
    hdr = post("/echo")
    s.sendall(frame(HEADERS, END_HEADERS, 1, hdr))
    sent += 9 + len(hdr)
    # The upload is honest (16 KiB frames); it is not what we measure.
    up = 0
    while up < body:
        n = send_data(1, 16384, None, end=up + 16384 >= body)
        if n is None:
            break
        up += 16384
    # The echo has what was uploaded before the stall (our window 0 holds
    # its response, so the server stops reading the upload after its
    # windows' worth): the drip stops short of that. The clock and the CPU
    # count start here, with the drip.
    body = up
    before = cpu_ns(pid)
    t0 = time.time()
    sent = 0
    # WINDOW_UPDATEs of inc, 64 in a write, each answered by an inc-byte
    # DATA frame; stop short of the body's end (the stream would end).
    wu = frame(WU, 0, 1, struct.pack(">I", inc))
    while paced and sent < total and not state["closed"] and (frames + 1) * inc < body:
        # One at a time, each after the last one's byte came: a DATA frame
        # for every WINDOW_UPDATE (batched ones are coalesced by h2).
        if not send(wu):
            break
        sent += len(wu)
        frames += 1
        with lock:
            lock.wait_for(lambda: state["data_in"] >= frames * inc or state["closed"], 5)
    while not paced and sent < total and not state["closed"] and (frames + 64) * inc < body:
        if not send(wu * 64):
            break
        sent += 64 * len(wu)
        frames += 64
        # Keep no more than 4,096 outstanding: each must be answered.
        with lock:
            lock.wait_for(lambda: state["data_in"] + 4096 * inc >= frames * inc or state["closed"], 5)
    with lock:
        lock.wait_for(lambda: state["data_in"] >= frames * inc or state["closed"], 5)
time.sleep(0.3)
after = cpu_ns(pid)
el = time.time() - t0
cpu_us = (after - before) / 1000
frames = max(frames, 1)
print(f"{mode}: sent {frames} frames, {sent} B in {el:.2f}s; server CPU {cpu_us/1000:.2f} ms = "
      f"{cpu_us/frames:.2f} us/frame = {cpu_us/(sent/1024):.1f} us/KiB; answers={state['answers']} "
      f"data_in={state['data_in']} in {state['data_frames_in']} frames; pongs={state['pongs']} "
      f"closed={state['closed']} goaway={state['goaway']} rst={state['rst']} stalled={stalled}")
