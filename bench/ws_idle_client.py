#!/usr/bin/env python3
"""Holds N idle WebSockets open to one URL path (bench/ws-idle.sh); with
mode `http`, N idle HTTP/1.1 keep-alive connections instead (one GET each),
for comparison in the same script.

Opens the connections (a raw RFC 6455 handshake each, from source addresses
127.0.22.1-8 in turn), prints "ready N" once every one has its 101, then
answers the server's pings with pongs and otherwise stays silent until stdin
closes, when it closes them all. Standard library only.
"""
import asyncio
import os
import sys

HANDSHAKE = (
    "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)


async def hold(host, port, path, source, opened, stop, mode):
    reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
    if mode == "http":
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        opened.append(1)
        await stop.wait()
        writer.close()
        return
    writer.write(HANDSHAKE.format(path=path, host=host).encode())
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
    host, port, path, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    mode = sys.argv[5] if len(sys.argv) > 5 else "ws"
    sources = [f"127.0.22.{i}" for i in range(1, 9)]
    opened, stop = [], asyncio.Event()
    tasks = []
    for i in range(n):
        tasks.append(asyncio.create_task(hold(host, port, path, sources[i % 8], opened, stop, mode)))
        if i % 500 == 499:
            await asyncio.sleep(0.05)
    while len(opened) < n:
        failed = [t for t in tasks if t.done() and t.exception()]
        if failed:
            raise failed[0].exception()
        await asyncio.sleep(0.1)
    print(f"ready {n}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)


asyncio.run(main())
