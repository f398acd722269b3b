#!/usr/bin/env python3
"""bench/callgrind-diff.py: the self cost per function, per request, of a
callgrind measurement made of two runs (bench/lower-bound.sh's N1 and N2
files), differenced and divided by the requests between them; optionally
two such measurements side by side (issue 15, session 53: what a request
costs at 64 connections against 512, and where the difference is).

    python3 bench/callgrind-diff.py [--events Ir,D1m,LLm] [--top 30] \\
        A_N1.callgrind A_N2.callgrind N [B_N1.callgrind B_N2.callgrind N]

N: requests between the two runs (N2 - N1). Events: callgrind's own names
(Ir, I1mr, D1mr, D1mw, ILmr, DLmr, DLmw, Bc, Bcm, Bi, Bim) and three sums,
D1m = D1mr + D1mw, LLm = ILmr + DLmr + DLmw (with bench/lower-bound.sh's
CACHE flags the "LL" is the machine's L2), I1m = I1mr. Rows are functions
(by name, every object and file merged), sorted by the largest difference
B - A of the first event when B is given, else by A; the self cost only
(a call's inclusive cost, the line after `calls=`, is skipped). The
totals row is the sum over every function, i.e. the whole program's.
"""

import argparse
import re
import sys
from collections import defaultdict

SUMS = {"D1m": ("D1mr", "D1mw"), "LLm": ("ILmr", "DLmr", "DLmw"), "I1m": ("I1mr",)}


def self_costs(path):
    """{function name: [cost per event]} and the event names of `path`."""
    names = {}
    events = []
    costs = defaultdict(lambda: None)
    fn = None
    skip_next = False
    positions = 1
    name_re = re.compile(r"^\((\d+)\)(?: (.*))?$")

    def resolve(value):
        m = name_re.match(value)
        if not m:
            return value
        if m.group(2) is not None:
            names[m.group(1)] = m.group(2)
        return names.get(m.group(1), value)

    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("events:"):
                events = line.split()[1:]
                continue
            c = line[0] if line else ""
            if c.isdigit() or c in "+-*":
                if skip_next:
                    skip_next = False
                    continue
                if fn is None:
                    continue
                parts = line.split()
                # The first field is the position (a line, or an address
                # and a line with --dump-instr=yes): the costs follow.
                vals = [int(v) for v in parts[positions:]]
                acc = costs[fn]
                if acc is None:
                    acc = [0] * len(events)
                    costs[fn] = acc
                for i, v in enumerate(vals):
                    acc[i] += v
                continue
            if line.startswith("positions:"):
                positions = len(line.split()) - 1
                continue
            if line.startswith("fn="):
                fn = resolve(line[3:].strip())
                continue
            if line.startswith("cfn=") or line.startswith("cfi=") or line.startswith("cfl="):
                if line.startswith("cfn="):
                    resolve(line[4:].strip())
                continue
            if line.startswith("calls="):
                skip_next = True
                continue
    return events, dict(costs)


def per_request(n1, n2, n):
    ev1, c1 = self_costs(n1)
    ev2, c2 = self_costs(n2)
    assert ev1 == ev2, f"events differ: {ev1} / {ev2}"
    out = {}
    for name in set(c1) | set(c2):
        a = c1.get(name) or [0] * len(ev1)
        b = c2.get(name) or [0] * len(ev1)
        out[name] = {e: (b[i] - a[i]) / n for i, e in enumerate(ev1)}
    return ev1, out


def value(row, event):
    if event in SUMS:
        return sum(row.get(e, 0.0) for e in SUMS[event])
    return row.get(event, 0.0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", default="Ir")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--match", default="", help="only functions whose name contains this")
    ap.add_argument("args", nargs="+")
    a = ap.parse_args()
    if len(a.args) not in (3, 6):
        sys.exit("give A_N1 A_N2 N [B_N1 B_N2 N]")
    events = a.events.split(",")
    _, ra = per_request(a.args[0], a.args[1], float(a.args[2]))
    rb = None
    if len(a.args) == 6:
        _, rb = per_request(a.args[3], a.args[4], float(a.args[5]))
    names = set(ra) | set(rb or {})
    zero = {}

    def key(name):
        x = value(ra.get(name, zero), events[0])
        if rb is None:
            return -abs(x)
        return -abs(value(rb.get(name, zero), events[0]) - x)

    rows = sorted((n for n in names if a.match in n), key=key)[: a.top]
    head = ["function"]
    for e in events:
        head += [f"{e} A"] + ([f"{e} B", f"{e} B-A"] if rb is not None else [])
    print("| " + " | ".join(head) + " |")
    print("|---|" + "---:|" * (len(head) - 1))

    def cells(pick):
        out = []
        for e in events:
            x = pick(ra, e)
            out.append(f"{x:.1f}")
            if rb is not None:
                y = pick(rb, e)
                out += [f"{y:.1f}", f"{y - x:+.1f}"]
        return out

    for n in rows:
        short = n if len(n) < 90 else n[:87] + "..."
        print("| `" + short.replace("|", "\\|") + "` | " + " | ".join(cells(lambda r, e: value(r.get(n, zero), e))) + " |")
    print("| **total** | " + " | ".join(cells(lambda r, e: sum(value(v, e) for v in r.values()))) + " |")


if __name__ == "__main__":
    main()
