"""bench/head_pattern_client.py: a keep-alive HTTP/1.1 load of `GET /`
whose header sections follow a pattern, for bench/lower-bound.sh's
HEADERS knob (what the server's header-section memo, `HeadMemo` in
crates/megaconn/src/proto/http1/head.rs, gets to see; issue 15, session 52).

    python3 bench/head_pattern_client.py PORT N CONNECTIONS PATTERN

Sends N requests in all over CONNECTIONS connections, each connection one
request at a time (a closed loop, as `megaconn load -c CONNECTIONS`), and
exits 0 once every response came whole (1 on a closed connection or a
status other than 200). Every section is the same four fields, of the same
length, the last a W3C `traceparent` (where a client that traces puts it,
after its fixed fields):

    Host: 127.0.0.1:PORT / User-Agent / Accept: */* / traceparent: 00-T-S-01

PATTERN:
  same       one section for every request (S fixed): each head after the
             first is the one held
  change     S is the request's number: every section differs from the one
             before in its last field (a client that traces every request)
  alternate  S is the connection's number modulo 2: two sections, each
             connection keeping its own (two clients on one worker; how
             their requests interleave is the server's order)

The client's own CPU is not counted (the server runs under callgrind, which
counts the server only); a client slower than the server would change how
many requests each of the server's wake-ups finds, so it is kept lean: one
`selectors` loop, the requests pre-rendered but for S.
"""

import selectors
import socket
import sys

TRACE = "0af7651916cd43dd8448eb211c80319c"


def request(port, span):
    """The request with span id `span` (16 hex digits: the same length)."""
    return (f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"User-Agent: megaconn-bench/1\r\nAccept: */*\r\n"
            f"traceparent: 00-{TRACE}-{span:016x}-01\r\n\r\n").encode()


def response_len(buf):
    """The length of the whole response at the start of `buf` (its head
    and its `content-length` body), or None while it is not whole."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buf[:end].decode("latin-1")
    if not head.startswith("HTTP/1.1 200"):
        sys.exit(f"head_pattern_client: not a 200: {head.splitlines()[0]!r}")
    length = 0
    for line in head.split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    total = end + 4 + length
    return total if len(buf) >= total else None


def main():
    port, n, conns, pattern = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    if pattern not in ("same", "change", "alternate"):
        sys.exit(f"head_pattern_client: unknown PATTERN {pattern!r}")
    fixed = request(port, 0)

    def next_request(conn, number):
        if pattern == "same":
            return fixed
        if pattern == "change":
            return request(port, number)
        return request(port, conn % 2)

    sel = selectors.DefaultSelector()
    sent = done = 0
    bufs = {}
    for i in range(min(conns, n)):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(next_request(i, sent))
        sent += 1
        bufs[s] = b""
        sel.register(s, selectors.EVENT_READ, i)
    while done < n:
        for key, _ in sel.select():
            s, i = key.fileobj, key.data
            chunk = s.recv(65536)
            if not chunk:
                sys.exit("head_pattern_client: the server closed a connection")
            buf = bufs[s] + chunk
            while (total := response_len(buf)) is not None:
                buf = buf[total:]
                done += 1
                if sent < n:
                    s.sendall(next_request(i, sent))
                    sent += 1
            bufs[s] = buf
    for s in bufs:
        s.close()


if __name__ == "__main__":
    main()
