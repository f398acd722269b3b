"""bench/benchlib.py: what the Python benchmark scripts share (bench/lib.sh's
counterpart): a free port, and a WebSocket client's opening handshake over a
plain socket. The scripts import it from their own folder (`python3
bench/SCRIPT.py` puts bench/ first on the module path)."""

import socket

# The client's handshake key of RFC 6455 §1.3's example (any will do: these
# clients do not check the server's accept value).
_WS_HEADERS = (b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               b"Sec-WebSocket-Version: 13\r\n\r\n")


def free_port():
    """A port of 127.0.0.1 nothing listens on (as the kernel gave it out
    a moment ago: the server started on it must bind it soon)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def ws_connect(port, path, rcvbuf=None, nodelay=False):
    """A WebSocket client of ws://127.0.0.1:PORT/PATH, past its handshake:
    the socket, with nothing of the server's read beyond the 101's head (it
    is read a byte at a time). `rcvbuf` sets SO_RCVBUF before it connects
    (a small one makes a slow reader), `nodelay` TCP_NODELAY. Exits the
    script if the server closes or refuses."""
    s = socket.socket()
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", port))
    if nodelay:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + _WS_HEADERS)
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        chunk = s.recv(1)
        if not chunk:
            raise SystemExit("closed during the handshake")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise SystemExit(f"refused: {head[:100]!r}")
    return s
