#!/usr/bin/env python3
"""Holds N idle connections to the demo server (bench/framed-tls-idle.sh),
one kind per run, the same client for every kind so that only the server
differs between them:

  framed      tcp, one u32 length-prefixed PING answered PONG
  framed-tls  the same over TLS (the server's certificate is not checked)
  ws          a WebSocket on /ws (a raw RFC 6455 handshake)
  wss         the same over TLS

Opens the connections (from source addresses 127.0.23.1-8 in turn, at most
RAMP a second), prints "ready N" once every one is open and answered, then
stays silent (answering the server's WebSocket pings, if any) until stdin
closes, when it closes them all. Standard library only.

Usage: framed_tls_idle_client.py HOST PORT KIND N [RAMP]
"""
import asyncio
import os
import ssl
import struct
import sys

HANDSHAKE = (
    "GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)


def tls_context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def hold(host, port, kind, source, opened, stop, ctx):
    tls = ctx if kind.endswith("tls") or kind == "wss" else None
    reader, writer = await asyncio.open_connection(
        host, port, local_addr=(source, 0), ssl=tls, server_hostname=host if tls else None
    )
    if kind.startswith("framed"):
        writer.write(struct.pack(">I", 4) + b"PING")
        (n,) = struct.unpack(">I", await reader.readexactly(4))
        reply = await reader.readexactly(n)
        if reply != b"PONG":
            raise RuntimeError(reply)
        opened.append(1)
        await stop.wait()
        writer.close()
        return
    writer.write(HANDSHAKE.format(host=host).encode())
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101 "):
        raise RuntimeError(head.decode(errors="replace"))
    opened.append(1)

    async def pong():
        # Server frames: unmasked, pings of at most 125 bytes.
        while True:
            first, second = await reader.readexactly(2)
            payload = await reader.readexactly(second & 0x7F)
            if first & 0x0F == 0x9:
                mask = os.urandom(4)
                masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
                writer.write(bytes([0x8A, 0x80 | len(payload)]) + mask + masked)

    task = asyncio.create_task(pong())
    await stop.wait()
    task.cancel()
    writer.close()


async def main():
    host, port, kind, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    ramp = int(sys.argv[5]) if len(sys.argv) > 5 else 1000
    sources = [f"127.0.23.{i}" for i in range(1, 9)]
    ctx = tls_context()
    opened, stop = [], asyncio.Event()
    tasks = []
    for i in range(n):
        tasks.append(
            asyncio.create_task(hold(host, port, kind, sources[i % 8], opened, stop, ctx))
        )
        if i % 100 == 99:
            await asyncio.sleep(100 / ramp)
    while len(opened) < n:
        failed = [t for t in tasks if t.done() and t.exception()]
        if failed:
            raise failed[0].exception()
        await asyncio.sleep(0.2)
    print(f"ready {n}", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)


asyncio.run(main())
