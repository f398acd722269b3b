#!/usr/bin/env python3
"""bench/tls_hello_replay.py — a TLS handshake flood from one IP, for your
own server on this machine: THREADS threads each connect to HOST:PORT, send
one ClientHello (made once by Python's ssl, TLS 1.3 with an X25519 key
share, so the server does its key exchange and signs), read the server's
first flight, and close; again, for SECONDS. The sender computes nothing per
handshake: each costs the server a key exchange and a signature and the
sender a connect.

Prints one line of JSON: {"flights": answered, "refused": closed before any
answer, "seconds": ...}.

Usage: tls_hello_replay.py HOST PORT THREADS SECONDS
"""
import json
import socket
import ssl
import sys
import threading
import time


def client_hello(host):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=host)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def main():
    host, port, threads, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    hello = client_hello("localhost")
    counts = {"flights": 0, "refused": 0}
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def run():
        flights = refused = 0
        while time.monotonic() < end:
            s = None
            try:
                s = socket.create_connection((host, port), timeout=5)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
                s.sendall(hello)
                if s.recv(65536):
                    flights += 1
                else:
                    refused += 1
            except OSError:
                refused += 1
            finally:
                if s is not None:
                    s.close()
        with lock:
            counts["flights"] += flights
            counts["refused"] += refused

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    counts["seconds"] = seconds
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
