#!/usr/bin/env python3
"""bench/kernel-profile.py — the tables of bench/kernel-profile.sh's run.

Usage: kernel-profile.py OUT_DIR [--top N] [--base floor]

Reads OUT_DIR/<server>-<conns>-r<round>.perf.data (through `perf script`),
.json (the load's report: its request count), .count.json, .stat (`perf
stat -x,`), .nstat and .ticks, and prints, per connection count, one
column per server (rounds summed: samples over requests), in µs a request
(samples × the sampling period ÷ requests):

- the totals: CPU from the samples (user, kernel), the same from
  /proc/PID/stat's ticks in the counting run, system calls, context
  switches and TCP segments a request;
- kernel time by system call (the `__x64_sys_*` frame of each sample's
  chain, inclusive), then by path (inclusive, each sample counted under
  the first of the paths its chain passes through, from the leaf up:
  what the kernel does for the server's own socket against what it does
  for the client's, which a loopback send delivers on the sender's core);
- the kernel symbols (self time), those that differ most from the base
  server's (the floor) first.
"""

import collections
import glob
import json
import os
import re
import subprocess
import sys

ARGS = sys.argv[1:]
if not ARGS:
    sys.exit(__doc__)
OUT = ARGS[0]
TOP = int(ARGS[ARGS.index("--top") + 1]) if "--top" in ARGS else 30
BASE = ARGS[ARGS.index("--base") + 1] if "--base" in ARGS else "floor"

# Paths, tried from the leaf up: the first frame of a sample's chain that
# matches one of these patterns names its path (so a wake-up done inside
# the loopback delivery counts as a wake-up, and the delivery's own TCP
# work as delivery).
PATHS = [
    ("copy to/from user space", re.compile(r"^(_copy_to_iter|_copy_from_iter|copy_user_|rep_movs_alternative|__copy_user|copyout|copyin|skb_copy_datagram_iter|simple_copy_to_iter)")),
    ("waking a task (try_to_wake_up)", re.compile(r"^(try_to_wake_up|ttwu_|select_task_rq)")),
    ("epoll callback (ep_poll_callback)", re.compile(r"^ep_poll_callback$")),
    ("sleeping/switching (schedule)", re.compile(r"^(__schedule|schedule|schedule_hrtimeout_range|finish_task_switch)")),
    ("timers (hrtimer, tick)", re.compile(r"^(hrtimer_|__hrtimer|tick_|update_process_times|sched_tick)")),
    ("epoll_wait's own (ep_poll, ep_send_events)", re.compile(r"^(ep_poll$|ep_send_events|ep_item_poll|ep_done_scan|ep_start_scan)")),
    ("delivery into the peer's socket (softirq receive)", re.compile(r"^(__netif_receive_skb|netif_receive_skb|process_backlog|net_rx_action|ip_rcv|ip_local_deliver|tcp_v4_rcv|tcp_rcv_established|tcp_v4_do_rcv)")),
    ("sending an ACK alone (tcp_send_ack)", re.compile(r"^(__tcp_send_ack|tcp_send_ack|tcp_send_delayed_ack)")),
    ("own send (tcp_sendmsg → ip/loopback xmit)", re.compile(r"^(tcp_sendmsg|tcp_push|__tcp_push_pending_frames|tcp_write_xmit|__tcp_transmit_skb|ip_queue_xmit|__ip_queue_xmit|ip_finish_output|__dev_queue_xmit|loopback_xmit)")),
    ("own receive (tcp_recvmsg)", re.compile(r"^(tcp_recvmsg|tcp_recvmsg_locked|tcp_cleanup_rbuf|tcp_rcv_space_adjust)")),
    ("socket layer (sock_*, fd lookup, security)", re.compile(r"^(__sys_sendto|__sys_recvfrom|sock_sendmsg|sock_recvmsg|__sock_sendmsg|sockfd_lookup_light|__fget_light|fdget|security_socket|apparmor_|selinux_|inet_sendmsg|inet_recvmsg|lock_sock|release_sock|__release_sock)")),
    ("syscall entry/exit", re.compile(r"^(entry_SYSCALL|do_syscall_64|syscall_exit|exit_to_user_mode|syscall_return|__x64_sys|x64_sys_call|fpregs_|switch_fpu|arch_exit_to_user_mode)")),
]


# Symbol groups (self time) that differ between servers by construction,
# not by the caches' state: a row each in the "by construction" table.
GROUPS = [
    ("fd lookup, shared descriptor table (fdget, fput, __fget_files)", re.compile(r"^(fdget|fput|__fget_files|__fget_light|fget|file_ref_put|fdput|__fput_sync)$")),
    ("the socket call's own body (__sys_sendto, __sys_recvfrom, do_writev)", re.compile(r"^(__sys_sendto|__sys_recvfrom|do_writev|vfs_writev|do_iter_readv_writev)$")),
    ("level-triggered re-poll (ep_item_poll, sock_poll, tcp_poll)", re.compile(r"^(ep_item_poll|sock_poll|tcp_poll)")),
    ("receive window growth (tcp_grow_window)", re.compile(r"^tcp_grow_window$")),
    ("epoll_wait's timeout (hrtimer, schedule_hrtimeout)", re.compile(r"^(hrtimer_|__hrtimer|schedule_hrtimeout)")),
    ("wake-ups (try_to_wake_up, futex, eventfd)", re.compile(r"^(try_to_wake_up|ttwu_|futex_|eventfd_)")),
]


def perf_script(path):
    """Yields (is_kernel_leaf, [frames leaf first]) per sample."""
    cmd = ["perf", "script", "-i", path, "-F", "comm,tid,ip,sym,dso", "--no-inline"]
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    frames, started = [], False
    for line in p.stdout.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            if started:
                yield frames
            frames, started = [], True
            continue
        m = re.match(r"\s*([0-9a-f]+)\s+(.*?)\s+\((.*)\)\s*$", line)
        if m:
            frames.append((m.group(2) or "[unknown]", m.group(3)))
    if started:
        yield frames


def is_kernel(dso):
    return "kernel" in dso or dso.startswith("[") and dso not in ("[unknown]", "[vdso]")


# A system call's own function where its `__x64_sys_*` frame is not in the
# chain (entered through `x64_sys_call`'s jump table, the wrapper inlined).
SYSCALL_BODIES = {
    "do_writev": "writev", "do_readv": "readv", "ksys_write": "write", "ksys_read": "read",
    "__sys_sendto": "sendto", "__sys_recvfrom": "recvfrom", "__sys_sendmsg": "sendmsg",
    "__sys_recvmsg": "recvmsg", "do_epoll_wait": "epoll_wait", "do_epoll_pwait": "epoll_pwait",
    "do_epoll_ctl": "epoll_ctl", "do_futex": "futex", "__sys_accept4": "accept4",
}


def syscall_of(frames):
    for sym, dso in frames:
        m = re.match(r"^__(?:x64|ia32|se|do)_sys_(\w+)", sym)
        if m:
            return m.group(1)
    for sym, dso in frames:
        if sym in SYSCALL_BODIES:
            return SYSCALL_BODIES[sym]
    for sym, _ in frames:
        if sym.startswith("asm_sysvec") or sym.startswith("asm_common_interrupt") or sym.startswith("sysvec_"):
            return "(interrupt)"
    return "(other kernel)"


def path_of(frames):
    for sym, dso in frames:
        if not is_kernel(dso):
            break
        for name, pat in PATHS:
            if pat.match(sym):
                return name
    return "(other)"


def period_of(out):
    """The sampling period the run used (ns), as kernel-profile.sh wrote it."""
    path = os.path.join(out, "period_ns")
    return int(open(path).read()) if os.path.exists(path) else 100000


def stat_counts(path):
    out = {}
    if not os.path.exists(path):
        return out
    for line in open(path):
        parts = line.strip().split(",")
        if len(parts) < 3 or line.startswith("#"):
            continue
        try:
            out[parts[2]] = float(parts[0])
        except ValueError:
            pass
    return out


def nstat_counts(path):
    out = {}
    if not os.path.exists(path):
        return out
    for line in open(path):
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def table(title, cols, keys, value):
    """One table, a row per key and a column per server, the second minus the first last."""
    print()
    print(title)
    print()
    two = len(cols) > 1
    print(f"| | " + " | ".join(cols) + (f" | {cols[1]} − {cols[0]} |" if two else " |"))
    print("|---|" + "---:|" * (len(cols) + two))
    for k, label in keys:
        vals = [value(s, k) for s in cols]
        if max(vals) < 0.005:
            continue
        diff = f" | {vals[1] - vals[0]:+.3f}" if two else ""
        print(f"| {label} | " + " | ".join(f"{v:.3f}" for v in vals) + diff + " |")


def main():
    period_us = period_of(OUT) / 1000.0
    runs = collections.defaultdict(lambda: {
        "req": 0, "user": 0, "kernel": 0, "sys": collections.Counter(),
        "path": collections.Counter(), "sym": collections.Counter(),
        "creq": 0, "clean_req": 0, "ns": 0, "ut": 0, "st": 0, "tick": 100,
        "stat": collections.Counter(), "nstat": collections.Counter(), "rounds": [],
        "clean_rounds": []})
    for data in sorted(glob.glob(os.path.join(OUT, "*.perf.data"))):
        base = data[: -len(".perf.data")]
        m = re.match(r"(.+)-(\d+)-r(\d+)$", os.path.basename(base))
        if not m:
            continue
        server, conns = m.group(1), int(m.group(2))
        r = runs[(server, conns)]
        req = json.load(open(base + ".json"))["requests"]
        n_user = n_kernel = 0
        for frames in perf_script(data):
            # A sample in user space has no chain (kernel chains only,
            # `--kernel-callchains`) or a user-space leaf.
            if frames and is_kernel(frames[0][1]):
                n_kernel += 1
                r["sym"][frames[0][0]] += 1
                r["sys"][syscall_of(frames)] += 1
                r["path"][path_of(frames)] += 1
            else:
                n_user += 1
        r["req"] += req
        r["user"] += n_user
        r["kernel"] += n_kernel
        r["rounds"].append((n_user + n_kernel) * period_us / max(req, 1))
        if os.path.exists(base + ".cpu"):
            creq = json.load(open(base + ".clean.json"))["requests"]
            ns0, u0, s0, ns1, u1, s1, tick = map(int, open(base + ".cpu").read().split())
            r["clean_req"] += creq
            r["ns"] += ns1 - ns0
            r["ut"] += u1 - u0
            r["st"] += s1 - s0
            r["tick"] = tick
            r["clean_rounds"].append((ns1 - ns0) / 1000 / max(creq, 1))
        if os.path.exists(base + ".count.json"):
            r["creq"] += json.load(open(base + ".count.json"))["requests"]
            for k, v in stat_counts(base + ".stat").items():
                r["stat"][k] += v
            for k, v in nstat_counts(base + ".nstat").items():
                r["nstat"][k] += v

    servers = []
    for s, _ in runs:
        if s not in servers:
            servers.append(s)
    order = [BASE] + [s for s in ["megaconn", "megaconn-b", "nginx"] if s in servers and s != BASE]
    order += [s for s in servers if s not in order]
    order = [s for s in order if s in servers]
    print(f"_{OUT}: a sample every {period_us:g} µs of a server's CPU; figures in µs a "
          "request unless said; a symbol's, a call's or a path's µs = its share of the "
          "server's samples × the server's CPU a request with nothing attached; rounds summed._")
    for conns in sorted({c for _, c in runs}):
        cols = [s for s in order if (s, conns) in runs]
        R = {s: runs[(s, conns)] for s in cols}
        sampled = lambda s, n: n * period_us / max(R[s]["req"], 1)
        clean = lambda s: R[s]["ns"] / 1000 / max(R[s]["clean_req"], 1)

        # µs a request of n samples: their share of the server's samples
        # times its CPU a request with nothing attached (run 2), so that
        # the profiler's own cost cancels; the sampled figure without run 2.
        def us(s, n):
            total = R[s]["user"] + R[s]["kernel"]
            if R[s]["clean_req"] and total:
                return n / total * clean(s)
            return sampled(s, n)

        print()
        print(f"### {conns} connections")
        print()
        print("| per request | " + " | ".join(cols) + " |")
        print("|---|" + "---:|" * len(cols))
        row = lambda label, f: print(f"| {label} | " + " | ".join(f(s) for s in cols) + " |")
        row("CPU µs, nothing attached (rounds)", lambda s: f"{clean(s):.2f} (" + ", ".join(f"{x:.2f}" for x in R[s]["clean_rounds"]) + ")")
        tick_us = lambda s: 1e6 / R[s]["tick"]
        row("  utime / stime µs (/proc/PID/stat's ticks)", lambda s: f"{R[s]['ut'] * tick_us(s) / max(R[s]['clean_req'], 1):.2f} / {R[s]['st'] * tick_us(s) / max(R[s]['clean_req'], 1):.2f}")
        row("  user / **kernel** µs (the samples' shares)", lambda s: f"{us(s, R[s]['user']):.2f} / **{us(s, R[s]['kernel']):.2f}**")
        row("CPU µs sampled, the profiler's cost in (rounds)", lambda s: f"{sampled(s, R[s]['user'] + R[s]['kernel']):.2f} (" + ", ".join(f"{x:.2f}" for x in R[s]["rounds"]) + ")")
        row("requests: profiled / timed / counted", lambda s: f"{R[s]['req']} / {R[s]['clean_req']} / {R[s]['creq']}")
        for k in sorted({k for s in cols for k in R[s]["stat"]}):
            if all(R[s]["stat"][k] == 0 for s in cols):
                continue
            name = k.replace("syscalls:sys_enter_", "")
            row(f"{name} a request", lambda s, k=k: f"{R[s]['stat'][k] / max(R[s]['creq'], 1):.3f}")
        for k in ["TcpOutSegs", "TcpExtTCPPureAcks", "TcpExtDelayedACKs", "TcpExtTCPHPAcks", "TcpExtTCPBacklogCoalesce", "TcpExtTCPAutoCorking"]:
            if any(R[s]["nstat"][k] for s in cols):
                row(f"{k} a request (both ends)", lambda s, k=k: f"{R[s]['nstat'][k] / max(R[s]['creq'], 1):.3f}")
        sys_keys = sorted({k for s in cols for k in R[s]["sys"]}, key=lambda k: -max(R[s]["sys"][k] for s in cols))
        table("Kernel µs a request by system call (inclusive):", cols,
              [(k, k) for k in sys_keys], lambda s, k: us(s, R[s]["sys"][k]))
        table("Kernel µs a request by path (inclusive; a sample counts under the first path met from its leaf up):",
              cols, [(n, n) for n, _ in PATHS] + [("(other)", "(other)")], lambda s, k: us(s, R[s]["path"][k]))
        group_us = lambda s, pat: us(s, sum(n for k, n in R[s]["sym"].items() if pat.match(k)))
        table("Kernel µs a request by construction (self time of these symbols):", cols,
              [(pat, name) for name, pat in GROUPS], group_us)
        syms = {k for s in cols for k in R[s]["sym"]}
        other = cols[1] if len(cols) > 1 else cols[0]
        ranked = sorted(syms, key=lambda k: -abs(us(other, R[other]["sym"][k]) - us(cols[0], R[cols[0]]["sym"][k])))
        table(f"Kernel symbols (self µs a request), the {TOP} furthest from {cols[0]}'s first:", cols,
              [(k, f"`{k}`") for k in ranked[:TOP]], lambda s, k: us(s, R[s]["sym"][k]))


main()
