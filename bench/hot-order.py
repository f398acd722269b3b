#!/usr/bin/env python3
"""bench/hot-order.py: the symbols a keep-alive request runs, hottest first,
for the linker's `--symbol-ordering-file` (issue 15, session 58: the code a
pipelined request runs is spread over the binary, and a 32 KiB 8-way L1i
model misses 96 lines a request where tokio-floor's misses 2;
bench/CPU-PER-REQUEST.md).

    python3 bench/hot-order.py BINARY OUT N1.callgrind N2.callgrind N [N1 N2 N ...]

Each (N1, N2, N) is a bench/lower-bound.sh measurement recorded with
DUMP_INSTR=yes (callgrind counts per instruction) of BINARY, the steady
state being the difference of the two runs over the N requests between
them. Every instruction run there is mapped to the symbol that holds it
(`nm` of BINARY; an instruction of a shared library, memcpy's or the
clock's, whose callgrind function is not that symbol, is left out), and
the symbols are written to OUT, one a line, by how often their most-run
instruction runs a request, the first measurement's symbols first (the
pipelined path, then what only another measurement runs). Mangled names:
the linker matches them as they are, and a name a later build no longer
has is skipped (`--no-warn-symbol-ordering`).
"""

import bisect
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path


def load_parser():
    """bench/callgrind-lines.py's `parse`, without running its main."""
    src = (Path(__file__).parent / "callgrind-lines.py").read_text()
    ns = {}
    exec(compile(src.replace("\nmain()", "\n"), "callgrind-lines.py", "exec"), ns)
    return ns["parse"]


def symbols(binary):
    """Sorted (address, mangled name, demangled name) of BINARY's code.

    One `nm`, and each of its names demangled by `c++filt -i` (binutils',
    the demangler `nm -C` uses; `-i` prints v0 names as `nm -C` does,
    without their crates' hashes), one name a line in and out. (This paired the
    lines of `nm -n` and `nm -n -C` instead: where names share an address,
    each run lists them in the order of its own spelling, so an alias got
    another's demangled name.)"""
    raw = subprocess.run(["nm", "--defined-only", "-n", binary], capture_output=True, text=True, check=True).stdout
    code = []
    for line in raw.splitlines():
        p = line.split()
        if len(p) == 3 and p[1] in "tTwW":
            code.append((int(p[0], 16), p[2]))
    names = "".join(name + "\n" for _, name in code)
    dem = subprocess.run(["c++filt", "-i"], input=names, capture_output=True, text=True, check=True).stdout.splitlines()
    if len(dem) != len(code):
        sys.exit(f"c++filt gave {len(dem)} names for {len(code)}")
    out = [(a, m, d) for (a, m), d in zip(code, dem)]
    out.sort()
    return out


def same_function(demangled, callgrind_name):
    """Whether callgrind's function name is this symbol's (its hash left out)."""
    norm = lambda s: re.sub(r"::h[0-9a-f]{16}$", "", s or "").replace(" ", "")
    return norm(demangled)[:40] == norm(callgrind_name)[:40]


def heat(parse, syms, n1, n2, n):
    """{mangled symbol: runs a request of its most-run instruction}."""
    events, c1 = parse(n1, "addr")
    _, c2 = parse(n2, "addr")
    ir = events.index("Ir")
    addrs = [s[0] for s in syms]
    hot = defaultdict(float)
    for key, v2 in c2.items():
        v1 = c1.get(key)
        runs = (v2[ir] - (v1[ir] if v1 else 0)) / n
        if runs <= 0:
            continue
        i = bisect.bisect_right(addrs, int(key[1], 16)) - 1
        if i < 0 or not same_function(syms[i][2], key[0]):
            continue
        hot[syms[i][1]] = max(hot[syms[i][1]], runs)
    return hot


def main():
    if len(sys.argv) < 6 or (len(sys.argv) - 3) % 3:
        sys.exit(__doc__)
    binary, out = sys.argv[1], sys.argv[2]
    parse = load_parser()
    syms = symbols(binary)
    order, seen = [], set()
    for i in range(3, len(sys.argv), 3):
        hot = heat(parse, syms, sys.argv[i], sys.argv[i + 1], float(sys.argv[i + 2]))
        for s in sorted(hot, key=lambda s: -hot[s]):
            if s not in seen:
                seen.add(s)
                order.append(s)
        print(f"{sys.argv[i + 1]}: {len(hot)} symbols run in the steady state", file=sys.stderr)
    Path(out).write_text("".join(s + "\n" for s in order))
    print(f"{out}: {len(order)} symbols", file=sys.stderr)


main()
