#!/usr/bin/env python3
"""A TCP proxy that delays every byte by DELAY seconds each way (a long
path's latency, no bandwidth limit), for hosts without `tc netem`
(bench/h2-upload-rtt.sh). Usage: delay_proxy.py LISTEN_PORT UPSTREAM_PORT DELAY_S"""
import asyncio
import sys


async def pump(reader, writer, delay):
    queue = asyncio.Queue()

    async def send():
        loop = asyncio.get_running_loop()
        while True:
            at, data = await queue.get()
            wait = at + delay - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                writer.close()
                return
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(send())
    loop = asyncio.get_running_loop()
    while True:
        data = await reader.read(1 << 16)
        queue.put_nowait((loop.time(), data))
        if not data:
            break
    await sender


async def main():
    listen, upstream, delay = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])

    async def handle(creader, cwriter):
        sreader, swriter = await asyncio.open_connection("127.0.0.1", upstream)
        await asyncio.gather(pump(creader, swriter, delay), pump(sreader, cwriter, delay),
                             return_exceptions=True)

    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()


asyncio.run(main())
