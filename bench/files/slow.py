"""N slow readers, each GETting PATH and reading RATE bytes/s for DUR seconds.
usage: slow.py PORT PATH N RATE DUR [RCVBUF]
Prints, at the end: clients that got a 200 head, bytes read, clients cut
(EOF or error before DUR), elapsed."""
import asyncio, socket, sys, time

port, path, n, rate, dur = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
rcvbuf = int(sys.argv[6]) if len(sys.argv) > 6 else 0
TICK = 0.4
stats = {"ok": 0, "bytes": 0, "cut": 0, "err": 0, "connected": 0}

async def read_paced(s, take):
    """Reads RATE bytes a second off s for DUR seconds, handing each piece
    to take(piece), which says whether to go on (False: the stream was
    cut); counts the bytes and a cut."""
    loop = asyncio.get_running_loop()
    end = time.monotonic() + dur
    per = int(rate * TICK)
    while time.monotonic() < end:
        got = 0
        while got < per:
            d = await loop.sock_recv(s, per - got)
            if not d or not await take(d):
                stats["cut"] += 1
                return
            got += len(d)
        stats["bytes"] += got
        await asyncio.sleep(TICK)

async def one(i, s):
    loop = asyncio.get_running_loop()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    await loop.sock_connect(s, ("127.0.0.1", port))
    stats["connected"] += 1
    await loop.sock_sendall(s, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    first = [True]
    async def take(d):
        if first[0]:
            first[0] = False
            if d.startswith(b"HTTP/1.1 200"):
                stats["ok"] += 1
        return True
    await read_paced(s, take)

async def guarded(one, i):
    """Runs one(i, s) on a fresh non-blocking socket s; counts its error."""
    s = socket.socket()
    s.setblocking(False)
    try:
        await one(i, s)
    except Exception as e:
        stats["err"] += 1
        if stats["err"] < 5:
            print("error", repr(e), file=sys.stderr)
    finally:
        s.close()

async def main(one):
    t0 = time.monotonic()
    tasks = []
    for i in range(n):
        tasks.append(asyncio.create_task(guarded(one, i)))
        if i % 100 == 99:
            await asyncio.sleep(0.05)
    await asyncio.gather(*tasks)
    print(f"n={n} connected={stats['connected']} ok200={stats['ok']} bytes={stats['bytes']} cut={stats['cut']} err={stats['err']} elapsed={time.monotonic()-t0:.1f}s", flush=True)

if __name__ == "__main__":
    asyncio.run(main(one))
