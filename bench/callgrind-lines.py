#!/usr/bin/env python3
"""bench/callgrind-lines.py: the self cost per source line, or per
instruction, of a callgrind measurement made of two runs (bench/lower-bound.sh's
N1 and N2 files, recorded with DUMP_INSTR=yes), differenced and divided by
the requests between them (issue 15, session 57: which loads of a request
miss the cache, to read against `objdump -d` of the same binary).

    python3 bench/callgrind-lines.py [--events DLm,Ir] [--by line|addr] \
        [--match TEXT] [--top 40] N1.callgrind N2.callgrind N

N: requests between the two runs (N2 - N1). Events: callgrind's names and
the sums D1m, DLm (DLmr + DLmw), LLm (ILmr + DLmr + DLmw). `--by addr`: one
row per instruction (its address, in the binary's own numbering: objdump
`--start-address`), else one per (function, file, line), the file being the
inlined one where callgrind says (`fi=`/`fe=`). Rows sorted by the first
event. Session 57's use: a load that misses ~1.0 a request is one line of
per-connection state; its base register and offset, read at that address
(and the register's value under gdb, `bench/CPU-PER-REQUEST.md`), tell
which field of which object it is.
"""

import argparse, re, sys
from collections import defaultdict
SUMS = {"D1m": ("D1mr", "D1mw"), "LLm": ("ILmr", "DLmr", "DLmw"), "DLm": ("DLmr", "DLmw")}
name_re = re.compile(r"^\((\d+)\)(?: (.*))?$")

def parse(path, by):
    names = {"fl": {}, "fn": {}}
    events = []
    costs = defaultdict(lambda: None)
    fn = fl = fi = None
    skip = False
    addr = 0
    line_no = 0
    def res(kind, v):
        m = name_re.match(v)
        if not m:
            return v
        if m.group(2) is not None:
            names[kind][m.group(1)] = m.group(2)
        return names[kind].get(m.group(1), v)
    def pos(tok, prev, hexa):
        if tok == "*":
            return prev
        if tok[0] in "+-":
            return prev + int(tok, 0)
        return int(tok, 16) if hexa else int(tok)
    with open(path, errors="replace") as f:
        for l in f:
            c = l[0] if l else ""
            if l.startswith("events:"):
                events = l.split()[1:]; continue
            if c.isdigit() or c in "+-*" or l.startswith("0x"):
                parts = l.split()
                a = pos(parts[0], addr, True); ln = pos(parts[1], line_no, False)
                addr, line_no = a, ln
                if skip:
                    skip = False; continue
                vals = [int(v) for v in parts[2:]]
                key = (fn, fi or fl, ln) if by == "line" else (fn, hex(a), fi or fl, ln)
                acc = costs[key]
                if acc is None:
                    acc = [0] * len(events); costs[key] = acc
                for i, v in enumerate(vals):
                    acc[i] += v
                continue
            if l.startswith("fl="):
                fl = res("fl", l[3:].strip()); fi = None; continue
            if l.startswith("fi=") or l.startswith("fe="):
                fi = res("fl", l[3:].strip()); continue
            if l.startswith("fn="):
                fn = res("fn", l[3:].strip()); fi = None; continue
            if l.startswith("cfn="):
                res("fn", l[4:].strip()); continue
            if l.startswith("cfi=") or l.startswith("cfl="):
                res("fl", l[4:].strip()); continue
            if l.startswith("calls="):
                skip = True
                # the calls line's next line has positions too: handled by skip after parsing pos
                continue
    return events, costs

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", default="DLm,Ir")
    ap.add_argument("--by", default="line")
    ap.add_argument("--match", default="")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("args", nargs=3)
    a = ap.parse_args()
    ev, c1 = parse(a.args[0], a.by)
    ev2, c2 = parse(a.args[1], a.by)
    n = float(a.args[2])
    evs = a.events.split(",")
    def val(v, e):
        if v is None: return 0
        if e in SUMS: return sum(v[ev.index(x)] for x in SUMS[e] if x in ev)
        return v[ev.index(e)]
    rows = []
    for k in set(c1) | set(c2):
        if a.match and a.match not in str(k): continue
        rows.append((k, [(val(c2.get(k), e) - val(c1.get(k), e)) / n for e in evs]))
    rows.sort(key=lambda r: -r[1][0])
    tot = [sum(r[1][i] for r in rows) for i in range(len(evs))]
    print("total", " ".join(f"{e}={t:.2f}" for e, t in zip(evs, tot)))
    for k, v in rows[: a.top]:
        fn = (k[0] or "")[:70]
        rest = k[1:]
        print(" ".join(f"{x:8.2f}" for x in v), fn, *[str(r).split("/")[-1] if isinstance(r, str) else r for r in rest])
main()
