#!/usr/bin/env python3
"""bench/openloop-trace.py — the analysis half of bench/openloop-trace.sh.

Reads `perf script --ns -F comm,pid,tid,cpu,time,event,trace` on stdin (a
`perf record -a` of syscall tracepoints during one open-loop `megaconn load`
run) and prints one JSON object: per request, matched per TCP connection
through the --sockets file ("pid fd inode" of client and server sockets) and
--tcp (a copy of /proc/net/tcp taken at the same time),

  t0 client sendto enter, t1 server recv enter (the call that returns it),
  t2 server send exit (the response), t3 client recv exit (the call that
  returns it),

percentiles of the server noticing the request (t0 -> the return of the
server's last epoll_wait before t1, 0 if it was already awake), the queue in
its batch (the rest of t1-t0), its service time (t2-t1), the client noticing
and queueing the response (t3-t2 split the same way) and t3-t0; the mean
split of the requests whose t3-t0 is at or above its p99; the wake-up latency
of either side (the other side's first send after an epoll_wait went to
sleep -> that epoll_wait's return); epoll_wait returns, events per return,
empty returns and their timeouts (ms).

--summarize DIR: reads DIR/*-trace.json and *-plain.json and prints the
markdown tables of CPU-PER-REQUEST.md round 10. --summarize-plain DIR: the
plain runs alone (TRACE=0), with steal and run-queue delays.
"""
import argparse
import bisect
import collections
import glob
import json
import os
import re
import statistics
import sys

LINE = re.compile(r"^\s*(.+?)\s+(\d+)/(\d+)\s+\[(\d+)\]\s+(\d+\.\d+):\s+(\S+):\s*(.*)$")
RECV = {"recvfrom", "read"}
EPOLL = {"epoll_wait", "epoll_pwait"}


def pct(xs, q):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def dist(xs):
    """Percentiles in microseconds of a list of nanosecond values."""
    return {k: (None if pct(xs, q) is None else round(pct(xs, q) / 1000, 1))
            for k, q in (("p50", .5), ("p90", .9), ("p99", .99), ("p999", .999))} | {
        "n": len(xs), "mean": round(statistics.fmean(xs) / 1000, 2) if xs else None}


def analyse(args):
    server_pids = {int(p) for p in args.server_pids.split()}
    ports = {}  # inode -> (local port, remote port)
    for line in list(open(args.tcp))[1:]:
        f = line.split()
        ports[int(f[9])] = (int(f[1].split(":")[1], 16), int(f[2].split(":")[1], 16))
    conn_of = {}  # (pid, fd) -> (side, key port)
    client_pid = None
    for line in open(args.sockets):
        pid, fd, ino = map(int, line.split())
        if ino not in ports:
            continue
        lport, rport = ports[ino]
        if pid in server_pids and lport == args.port:
            conn_of[(pid, fd)] = ("s", rport)
        elif pid not in server_pids and rport == args.port:
            conn_of[(pid, fd)] = ("c", lport)
            client_pid = pid
    pending = {}  # tid -> (syscall, fd, enter ns, timeout)
    ev = collections.defaultdict(lambda: collections.defaultdict(list))  # port -> kind -> [(enter, exit)]
    epolls = {"s": [], "c": []}  # (enter, exit, events returned, timeout ms)
    sends = {"s": [], "c": []}  # enter times of every send on a matched connection
    first = last = None
    for raw in sys.stdin:
        m = LINE.match(raw)
        if not m:
            continue
        comm, pid, tid, cpu, t, event, rest = m.groups()
        pid, tid = int(pid), int(tid)
        if pid not in server_pids and pid != client_pid:
            continue
        ns = int(t.replace(".", ""))
        first = first if first is not None else ns
        last = ns
        if event.startswith("syscalls:sys_enter_"):
            name = event[len("syscalls:sys_enter_"):]
            fm = re.search(r"(?:ep)?fd: 0x([0-9a-f]+)", rest)
            tm = re.search(r"timeout: 0x([0-9a-f]+)", rest)
            timeout = int(tm.group(1), 16) if tm else None
            if timeout is not None and timeout >= 1 << 31:
                timeout -= 1 << 32
            pending[tid] = (name, int(fm.group(1), 16) if fm else -1, ns, timeout)
        elif event.startswith("syscalls:sys_exit_"):
            name = event[len("syscalls:sys_exit_"):]
            p = pending.pop(tid, None)
            if p is None or p[0] != name:
                continue
            ret = int(rest.split()[-1], 16) if rest else 0
            if ret >= 1 << 63:
                ret -= 1 << 64
            side = "s" if pid in server_pids else "c"
            if name in EPOLL:
                epolls[side].append((p[2], ns, ret, p[3]))
                continue
            c = conn_of.get((pid, p[1]))
            if c is None or ret <= 0:
                continue
            kind = c[0] + ("recv" if name in RECV else "send")
            ev[c[1]][kind].append((p[2], ns))
            if kind.endswith("send"):
                sends[c[0]].append(p[2])
    for v in sends.values():
        v.sort()
    for v in epolls.values():
        v.sort()
    ep_exit = {k: [e[1] for e in v] for k, v in epolls.items()}

    def last_epoll_exit(side, t):
        i = bisect.bisect_right(ep_exit[side], t) - 1
        return ep_exit[side][i] if i >= 0 else None

    # Wake-up latency: an epoll_wait that slept and returned events, from the
    # first send by the other side after it went to sleep to its return.
    def wakes(side, other):
        out, empty = [], 0
        for enter, exit_, ret, _ in epolls[side]:
            if ret == 0:
                empty += 1
                continue
            i = bisect.bisect_left(sends[other], enter)
            if i < len(sends[other]) and sends[other][i] < exit_:
                out.append(exit_ - sends[other][i])
        return out, empty
    s_wake, s_empty = wakes("s", "c")
    c_wake, _ = wakes("c", "s")
    # Match requests per connection.
    names = ["srv_notice", "srv_queue", "service", "cli_notice", "cli_queue", "to_server", "back", "total"]
    parts = {k: [] for k in names}
    rows = []
    for port, k in ev.items():
        cs, cr, sr, ss = k["csend"], k["crecv"], k["srecv"], k["ssend"]
        i1 = i2 = i3 = 0
        for (t0, _) in cs:
            while i1 < len(sr) and sr[i1][0] <= t0:
                i1 += 1
            if i1 >= len(sr):
                break
            t1 = sr[i1][0]
            while i2 < len(ss) and ss[i2][0] < t1:
                i2 += 1
            if i2 >= len(ss):
                break
            t2 = ss[i2][1]
            while i3 < len(cr) and cr[i3][1] <= t2:
                i3 += 1
            if i3 >= len(cr):
                break
            t3 = cr[i3][1]
            se = last_epoll_exit("s", t1) or t0
            ce = last_epoll_exit("c", t3) or t2
            sn = max(0, se - t0)
            cn = max(0, ce - t2)
            rows.append((sn, t1 - t0 - sn, t2 - t1, cn, t3 - t2 - cn, t1 - t0, t3 - t2, t3 - t0))
    for r in rows:
        for name, v in zip(names, r):
            parts[name].append(v)
    tail = {}
    if rows:
        cut = pct(parts["total"], .99)
        tr = [r for r in rows if r[-1] >= cut]
        tail = {name: round(statistics.fmean(r[i] for r in tr) / 1000, 1) for i, name in enumerate(names)}
    sb = [e[2] for e in epolls["s"]]
    timeouts = collections.Counter(e[3] for e in epolls["s"])
    out = {
        "server": args.server, "round": args.round, "requests_matched": len(rows),
        "connections": len(ev), "client_pid": client_pid,
        **{k: dist(v) for k, v in parts.items()},
        "tail_split_us": tail,
        "server_wake_us": dist(s_wake), "client_wake_us": dist(c_wake),
        "server_epoll_returns": len(sb), "server_epoll_empty": s_empty,
        "server_epoll_events_mean": round(statistics.fmean(sb), 2) if sb else None,
        "server_epoll_timeouts_ms": {str(k): v for k, v in timeouts.most_common(8)},
        "client_epoll_returns": len(epolls["c"]),
        "trace_secs": round((last - first) / 1e9, 2) if first else 0,
    }
    out["line"] = (f"srv notice p99 {out['srv_notice']['p99']} queue p99 {out['srv_queue']['p99']} "
                   f"service p99 {out['service']['p99']} back p99 {out['back']['p99']} total p99 {out['total']['p99']} us; "
                   f"server wake p50/p99 {out['server_wake_us']['p50']}/{out['server_wake_us']['p99']} us")
    json.dump(out, sys.stdout)
    print()


def summarize(d):
    rows = []
    for f in sorted(glob.glob(os.path.join(d, "*-trace.json"))):
        base = f[: -len("-trace.json")]
        try:
            t = json.load(open(f))
            plain = json.load(open(base + "-plain.json"))["latency_us"]
            traced = json.load(open(base + "-traced.json"))["latency_us"]
        except (OSError, ValueError, KeyError):
            continue
        rows.append((t["server"], t["round"], plain, traced, t))

    def pp(x):
        return f"{x['p50']:.0f} / {x['p99']:.0f}" if x["p99"] is not None else "—"
    print("| server | round | plain run p50 / p99 | traced run p50 / p99 (client) | t3−t0 | server notices (t0→epoll return) | queue in server batch | **service t1→t2** | back t2→t3 | server wake-up | server epoll: events/return, empty | tail split: notice/queue/service/back |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s, r, p, tr, t in sorted(rows, key=lambda x: (x[0], x[1])):
        ts = t["tail_split_us"]
        print(f"| {s} | {r} | {pp(p)} | {pp(tr)} | {pp(t['total'])} | {pp(t['srv_notice'])} | {pp(t['srv_queue'])} | "
              f"{t['service']['p50']} / {t['service']['p99']} | {pp(t['back'])} | {pp(t['server_wake_us'])} | "
              f"{t['server_epoll_events_mean']}, {t['server_epoll_empty']} of {t['server_epoll_returns']} | "
              f"{ts.get('srv_notice')}/{ts.get('srv_queue')}/{ts.get('service')}/{ts.get('back')} |")
    print()
    print("| server (median of rounds, µs) | plain p99 | traced p99 | t3−t0 p99 | notice p99 | queue p99 | service p50 | service p99 | back p99 | wake p50 | wake p99 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in sorted({x[0] for x in rows}):
        rs = [x for x in rows if x[0] == s]

        def med(f):
            v = [f(x) for x in rs if f(x) is not None]
            return round(statistics.median(v), 1) if v else None
        print(f"| {s} | {med(lambda x: x[2]['p99'])} | {med(lambda x: x[3]['p99'])} | {med(lambda x: x[4]['total']['p99'])} | "
              f"{med(lambda x: x[4]['srv_notice']['p99'])} | {med(lambda x: x[4]['srv_queue']['p99'])} | "
              f"{med(lambda x: x[4]['service']['p50'])} | {med(lambda x: x[4]['service']['p99'])} | {med(lambda x: x[4]['back']['p99'])} | "
              f"{med(lambda x: x[4]['server_wake_us']['p50'])} | {med(lambda x: x[4]['server_wake_us']['p99'])} |")
    print()
    for s, r, p, tr, t in sorted(rows, key=lambda x: (x[0], x[1])):
        print(f"- {s} r{r}: epoll_wait timeouts (ms: count) {t['server_epoll_timeouts_ms']}")


def fmt1(x):
    return "—" if x is None else f"{x:.1f}"


def summarize_plain(d):
    """Per-round and median client p50/p99 of the plain runs alone (TRACE=0)."""
    runs = collections.defaultdict(dict)
    for f in glob.glob(os.path.join(d, "*-plain.json")):
        server, r = re.match(r"(.*)-r(\d+)-plain\.json$", os.path.basename(f)).groups()
        lat = json.load(open(f))["latency_us"]
        try:
            st = list(map(int, open(f[: -len("-plain.json")] + "-steal.txt").read().split()))
            lat["steal_jiffies"] = sum(st[len(st) // 2:]) - sum(st[: len(st) // 2])
        except (OSError, ValueError):
            lat["steal_jiffies"] = None
        b = f[: -len("-plain.json")]
        try:
            before = {l.split()[0]: l.split() for l in open(b + "-sched-before.txt")}
            after = [l.split() for l in open(b + "-sched-after.txt")]
            d = [(a[1], int(a[2]) - int(before[a[0]][2]), int(a[3]) - int(before[a[0]][3]))
                 for a in after if a[0] in before]
            lat["srv_run_ms"] = sum(x[1] for x in d) / 1e6
            lat["srv_delay_ms"] = sum(x[2] for x in d) / 1e6
            lat["cli_delay_ms"] = sum(int(l.split()[3]) for l in open(b + "-sched-client.txt")) / 1e6
        except (OSError, ValueError, IndexError):
            lat["srv_run_ms"] = lat["srv_delay_ms"] = lat["cli_delay_ms"] = None
        runs[server][int(r)] = lat
    print("| server | p99 by round (µs) | median p99 | median p50 | median p99.9 | steal jiffies by round | server run-queue delay ms by round | client run-queue delay ms by round |")
    print("|---|---|---:|---:|---:|---|---|---|")
    for server, rs in sorted(runs.items()):
        p99 = [rs[r]["p99"] for r in sorted(rs)]
        print(f"| {server} | {', '.join(f'{x:.0f}' for x in p99)} | {statistics.median(p99):.0f} | "
              f"{statistics.median(x['p50'] for x in rs.values()):.0f} | "
              f"{statistics.median(x['p999'] for x in rs.values()):.0f} | "
              f"{', '.join(str(rs[r]['steal_jiffies']) for r in sorted(rs))} | "
              f"{', '.join(fmt1(rs[r].get('srv_delay_ms')) for r in sorted(rs))} | "
              f"{', '.join(fmt1(rs[r].get('cli_delay_ms')) for r in sorted(rs))} |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--summarize")
    ap.add_argument("--summarize-plain")
    ap.add_argument("--server-pids", default="")
    ap.add_argument("--sockets")
    ap.add_argument("--port", type=int)
    ap.add_argument("--tcp", help="a copy of /proc/net/tcp taken with --sockets")
    ap.add_argument("--server", default="?")
    ap.add_argument("--round", type=int, default=0)
    a = ap.parse_args()
    if a.summarize_plain:
        summarize_plain(a.summarize_plain)
    elif a.summarize:
        summarize(a.summarize)
    else:
        analyse(a)


if __name__ == "__main__":
    main()
