#!/usr/bin/env python3
"""Measurement helpers for bench/run.sh (Python 3 standard library only).

Every subcommand that measures something appends one JSON object per result
to the results file given with --out; `report` turns that file into the
table. Progress goes to stderr. Every loop and every wait is bounded.
"""

import argparse
import asyncio
import ctypes
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
GIB = 1 << 30


def log(*args):
    print("  ", *args, file=sys.stderr, flush=True)


def emit(out, **rec):
    with open(out, "a") as f:
        f.write(json.dumps(rec) + "\n")


# --------------------------------------------------------------- /proc


def proc_cpu(pid):
    """utime+stime of a live process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    rest = s[s.rfind(")") + 2:].split()
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def busy_seconds():
    """CPU seconds all processes of the machine spent in user and system
    mode (from /proc/stat; softirq time, where loopback TCP work is partly
    counted, is left out because it is not charged to any process)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal
    return (v[0] + v[1] + v[2]) / CLK_TCK


def listen_drops():
    """TcpExt ListenDrops of this network namespace (SYNs or ACKs dropped
    because a listen queue was full: the client retries after ~1 s)."""
    with open("/proc/net/netstat") as f:
        lines = f.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            d = dict(zip(names.split()[1:], values.split()[1:]))
            return int(d.get("ListenDrops", 0))
    return 0


def udp_socket_drops(port):
    """Datagrams the kernel dropped at the UDP socket bound to this local
    port (last column of /proc/net/udp: a full receive buffer), or None."""
    try:
        with open("/proc/net/udp") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return None
    total = None
    for line in lines:
        parts = line.split()
        if len(parts) > 12 and int(parts[1].split(":")[1], 16) == port:
            total = (total or 0) + int(parts[-1])
    return total


def udp_rcvbuf_errors():
    """Udp RcvbufErrors of the whole machine (all UDP sockets)."""
    with open("/proc/net/snmp") as f:
        lines = [l.split() for l in f if l.startswith("Udp:")]
    return int(dict(zip(lines[0][1:], lines[1][1:]))["RcvbufErrors"])


def proc_rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


# --------------------------------------------------------------- children

_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent():
    # PR_SET_PDEATHSIG: a child never outlives this helper.
    _libc.prctl(1, signal.SIGKILL, 0, 0, 0)


class Children:
    """Starts client processes, reaps them with wait4 (exit time and CPU of
    each), and kills whatever is left after a deadline."""

    def __init__(self):
        self.procs = {}  # pid -> name
        self.done = {}  # name -> dict(end, cpu, rc)

    def start(self, name, argv, stdin=None, stdout=subprocess.DEVNULL, stderr=None):
        if stderr is None:
            stderr = subprocess.PIPE if stdout is subprocess.PIPE else subprocess.DEVNULL
        p = subprocess.Popen(
            argv,
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            preexec_fn=_die_with_parent,
        )
        self.procs[p.pid] = (name, p)
        return p

    def kill_all(self):
        for pid, (_, p) in list(self.procs.items()):
            if pid not in [d["pid"] for d in self.done.values()]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def reap(self, names, timeout):
        """Wait (at most timeout seconds) until every child in names exited."""
        timer = threading.Timer(timeout, self.kill_all)
        timer.daemon = True
        timer.start()
        try:
            while not all(n in self.done for n in names):
                try:
                    # Peek first (the child stays a zombie) to read its I/O
                    # counters, then reap it for its rusage.
                    si = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
                except ChildProcessError:
                    break
                end = time.perf_counter()
                io = {}
                try:
                    with open(f"/proc/{si.si_pid}/io") as f:
                        for line in f:
                            k, _, v = line.partition(":")
                            io[k] = int(v)
                except OSError:
                    pass
                pid, status, ru = os.wait4(si.si_pid, 0)
                if pid in self.procs:
                    name, p = self.procs[pid]
                    p.returncode = os.waitstatus_to_exitcode(status)
                    self.done[name] = dict(
                        pid=pid,
                        end=end,
                        cpu=ru.ru_utime + ru.ru_stime,
                        utime=ru.ru_utime,
                        stime=ru.ru_stime,
                        rc=p.returncode,
                        wchar=io.get("wchar"),
                    )
        finally:
            timer.cancel()

    def cleanup(self):
        self.kill_all()
        for pid in list(self.procs):
            if all(d["pid"] != pid for d in self.done.values()):
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:
                    pass


def wait_port(port, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def free_port(udp_too=False):
    """A free TCP port (and, with udp_too, free over UDP as well)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
            if not udp_too:
                return port
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                    u.bind((HOST, port))
                return port
            except OSError:
                continue
    raise RuntimeError("no port free over both TCP and UDP")


# --------------------------------------------------------------- streams


# Client protocols of figure 8 (and 1, 6, 7): h1 = plain HTTP/1.1, h2c =
# cleartext HTTP/2 (prior knowledge), h1tls / h2tls = curl -k over TLS with
# ALPN http/1.1 / h2, h3 = examples/h3_client.rs over QUIC.
TLS_PROTOS = ("h1tls", "h2tls", "h3")
CURL_PROTO_FLAGS = {"h1": [], "h2c": ["--http2-prior-knowledge"],
                    "h1tls": ["-k", "--http1.1"], "h2tls": ["-k", "--http2"]}


def stream_url(a, proto, path):
    if proto in TLS_PROTOS:
        return f"https://{HOST}:{a.tls_port}{path}"
    return f"http://{HOST}:{a.port}{path}"


def client_argv(a, proto, url, upload=None):
    """A sender (upload=file) or receiver for one protocol. Each prints
    'STATUS BYTES ...' (bytes received; for the h3 sender, bytes sent) and,
    for curl, the HTTP version it spoke."""
    if proto == "h3":
        if not a.h3_client:
            raise SystemExit("h3 needs --h3-client")
        return [a.h3_client, "--threads", str(a.h3_threads), "--max-time", str(a.max_time),
                *(["send", url, upload] if upload else ["recv", url])]
    argv = ["curl", "-sS", *CURL_PROTO_FLAGS[proto], "-o", "/dev/null",
            "--max-time", str(a.max_time),
            "-w", "%{http_code} %{size_download} %{http_version}"]
    if upload:
        if a.no_expect:
            argv[1:1] = ["-H", "Expect:"]
        argv += ["-T", upload]
    return argv + [url]


def _output(p):
    try:
        return p.stdout.read().decode(errors="replace").split()
    except Exception:
        return []


def cmd_stream(a):
    """One sender -> server -> a.n receivers, each speaking its protocol."""
    size = os.path.getsize(a.file)
    sender_proto = "h2c" if a.h2c else a.sender
    q = f"?n={a.n}" if a.n != 1 else ""
    path = f"/bench-{a.tag}-{random.getrandbits(48):x}{q}"
    quic = "h3" in (sender_proto, a.receiver)
    ch = Children()
    try:
        if quic:
            drops0, rcvbuf0 = udp_socket_drops(a.tls_port), udp_rcvbuf_errors()
        cpu0 = proc_cpu(a.pid)
        busy0 = busy_seconds()
        recv = [ch.start(f"r{i}", client_argv(a, a.receiver, stream_url(a, a.receiver, path)),
                         stdout=subprocess.PIPE)
                for i in range(a.n)]
        time.sleep(0.3)  # let the receivers register
        send_argv = client_argv(a, sender_proto, stream_url(a, sender_proto, path), upload=a.file)
        t0 = time.perf_counter()
        sender = ch.start("s", send_argv, stdout=subprocess.PIPE)
        names = ["s"] + [f"r{i}" for i in range(a.n)]
        # If the sender fails at once (e.g. h2c refused), the receivers wait
        # forever: give them a short grace period after the sender ends.
        ch.reap(["s"], a.max_time + 5)
        if ch.done.get("s", {}).get("rc", 1) != 0:
            ch.reap(names, 2)
        else:
            ch.reap(names, a.max_time + 5)
        time.sleep(0.05)
        cpu1 = proc_cpu(a.pid)
        busy1 = busy_seconds()
        if quic:
            drops1, rcvbuf1 = udp_socket_drops(a.tls_port), udp_rcvbuf_errors()
    finally:
        ch.cleanup()
    got, versions = [], []
    for p in recv:
        outs = _output(p)
        try:
            got.append(int(outs[1]) if len(outs) > 1 and outs[0] == "200" else 0)
        except ValueError:
            got.append(0)
        versions.append(outs[2] if len(outs) > 2 and a.receiver != "h3" else a.receiver)
    souts = _output(sender)
    sender_version = (souts[2] if len(souts) > 2 else "?") if sender_proto != "h3" else "h3"
    s = ch.done.get("s", {})
    rs = [ch.done.get(f"r{i}", {}) for i in range(a.n)]
    t_end = max((r.get("end", t0) for r in rs), default=t0)
    wall = max(t_end - t0, 1e-9)
    ok = s.get("rc") == 0 and all(r.get("rc") == 0 for r in rs) and all(g == size for g in got)
    # curl over TLS falls back to HTTP/1.1 if ALPN says so: that would not be h2.
    want = {"h2tls": "2", "h2c": "2"}
    if a.receiver in want and any(v != want[a.receiver] for v in versions):
        ok = False
    if sender_proto in want and s.get("rc") == 0 and sender_version != want[sender_proto]:
        ok = False
    delivered = sum(got)
    rec = dict(
        fig="stream", server=a.server, mode=a.mode, ok=ok,
        sender=sender_proto, receiver=a.receiver,
        sender_version=sender_version, receiver_version=versions,
        sender_rc=s.get("rc"), receiver_rc=[r.get("rc") for r in rs],
        size=size, delivered=delivered, wall=wall,
        mbps=(min(got) if got else 0) / wall / 1e6,
        server_cpu=cpu1 - cpu0,
        sender_cpu=s.get("cpu", 0), receiver_cpu=sum(r.get("cpu", 0) for r in rs) / max(a.n, 1),
    )
    if quic:
        # Datagrams lost to a full socket receive buffer: at the server's
        # socket, and on the whole machine (so mostly the clients' sockets).
        rec["server_udp_drops"] = drops1 - drops0 if None not in (drops0, drops1) else None
        rec["udp_rcvbuf_errors"] = rcvbuf1 - rcvbuf0
    # CPU used by everything else on the machine meanwhile (noise).
    ours = rec["server_cpu"] + s.get("cpu", 0) + sum(r.get("cpu", 0) for r in rs)
    rec["other_cores"] = max(0.0, (busy1 - busy0) - ours) / (time.perf_counter() - t0)
    emit(a.out, **rec)
    log(f"{a.server:5} {a.mode:7} {'ok ' if ok else 'FAIL'} {rec['mbps']:7.1f} MB/s  "
        f"server {rec['server_cpu']:.2f}s cpu  sender {rec['sender_cpu']:.2f}s  "
        f"receiver {rec['receiver_cpu']:.2f}s  ({wall:.2f}s, others {rec['other_cores']:.2f} cores)"
        + (f"  UDP drops: server socket {rec['server_udp_drops']}, all {rec['udp_rcvbuf_errors']}"
           if quic else ""))


def cmd_socat(a):
    """Raw TCP 2-hop relay: socat sender -> socat relay -> socat receiver."""
    size = os.path.getsize(a.file)
    pr, pa = free_port(), free_port()
    b = ["-b", str(a.buf)]
    ch = Children()
    try:
        ch.start("r", ["socat", "-u", *b, f"TCP-LISTEN:{pr},bind={HOST},reuseaddr",
                       "OPEN:/dev/null,wronly"])
        ch.start("relay", ["socat", *b, f"TCP-LISTEN:{pa},bind={HOST},reuseaddr",
                           f"TCP:{HOST}:{pr}"])
        # The listeners accept one connection each, so do not probe them:
        # wait for the listening sockets to show in /proc/net/tcp.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not _listening({pr, pa}):
            time.sleep(0.02)
        busy0 = busy_seconds()
        t0 = time.perf_counter()
        with open(a.file, "rb") as f:
            ch.start("s", ["socat", "-u", *b, "STDIN", f"TCP:{HOST}:{pa}"], stdin=f)
        ch.reap(["s", "r", "relay"], a.max_time + 5)
        busy1, t1 = busy_seconds(), time.perf_counter()
    finally:
        ch.cleanup()
    # Bytes the receiver wrote to /dev/null, read from its /proc/PID/io.
    got = ch.done.get("r", {}).get("wchar") or 0
    d = ch.done
    wall = max(d.get("r", {}).get("end", t0) - t0, 1e-9)
    ok = got == size and all(d.get(n, {}).get("rc") == 0 for n in ("s", "r", "relay"))
    rec = dict(fig="stream", server="socat", mode="h1", ok=ok, size=size, delivered=got,
               wall=wall, mbps=got / wall / 1e6, server_cpu=d.get("relay", {}).get("cpu", 0),
               sender_cpu=d.get("s", {}).get("cpu", 0), receiver_cpu=d.get("r", {}).get("cpu", 0))
    ours = sum(d.get(n, {}).get("cpu", 0) for n in ("s", "r", "relay"))
    rec["other_cores"] = max(0.0, (busy1 - busy0) - ours) / (t1 - t0)
    emit(a.out, **rec)
    log(f"socat  tcp    {'ok ' if ok else 'FAIL'} {rec['mbps']:7.1f} MB/s  "
        f"relay {rec['server_cpu']:.2f}s cpu  sender {rec['sender_cpu']:.2f}s  "
        f"receiver {rec['receiver_cpu']:.2f}s  ({wall:.2f}s, others {rec['other_cores']:.2f} cores)")


def _listening(ports):
    found = set()
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if parts[3] == "0A":  # LISTEN
                found.add(int(parts[1].split(":")[1], 16))
    return ports <= found


# --------------------------------------------------------------- client

# Figure 9: the `tubes send` / `tubes recv` client beside curl, one pair at a
# time through the same `tubes serve`. Modes: curl (figure 1's clients),
# plain (--path), code (encrypted under a code the sender prints), pass
# (--path with --pass on both sides: PBKDF2 on each).
CLIENT_MODES = ("curl", "plain", "code", "pass")


class _Drain(threading.Thread):
    """Reads a child's stderr line by line (so the pipe never fills up);
    the first `Code: X` line is handed over through an Event."""

    def __init__(self, pipe):
        super().__init__(daemon=True)
        self.pipe, self.lines, self.code = pipe, [], None
        self.got_code = threading.Event()

    def run(self):
        try:
            for raw in iter(self.pipe.readline, b""):
                line = raw.decode(errors="replace").rstrip("\n")
                self.lines.append(line)
                if self.code is None and line.startswith("Code: "):
                    self.code = line.split(None, 1)[1].strip()
                    self.got_code.set()
        finally:
            self.got_code.set()  # EOF without a code: stop waiting


def client_pair_argv(a, mode, base, path):
    """(sender argv, receiver argv or None for the code mode)."""
    if mode == "curl":
        url = base + path
        return client_argv(a, "h1", url, upload=a.file), client_argv(a, "h1", url)
    t = [a.tubes]
    # The receiver writes to stdout (-o -), which is /dev/null here: `-o
    # /dev/null` would make tubes recv write a partial file next to the
    # target (in /dev) and rename it over /dev/null.
    out = ["-o", "-", "-s", base, "-q"]
    if mode == "plain":
        return (t + ["send", "--path", path, a.file, "-s", base, "-q"],
                t + ["recv", "--path", path] + out)
    if mode == "pass":
        pw = ["--pass", a.passphrase]
        return (t + ["send", "--path", path, *pw, a.file, "-s", base, "-q"],
                t + ["recv", "--path", path, *pw] + out)
    if mode == "code":
        return t + ["send", a.file, "-s", base, "-q"], None
    raise SystemExit(f"unknown client mode {mode}")


def cmd_client(a):
    """One transfer of figure 9: sender -> tubes serve -> receiver. Wall time
    from the sender's start to both clients' exit; CPU of each client from
    wait4 (user and system apart)."""
    if not os.path.exists(f"/proc/{a.pid}/stat"):
        raise SystemExit(f"tubes serve (pid {a.pid}) is gone")
    size = os.path.getsize(a.file)
    base = f"http://{HOST}:{a.port}"
    path = f"/bench-client-{a.mode}-{random.getrandbits(48):x}"
    a.no_expect = False  # curl keeps Expect: 100-continue, as in figure 1
    send_argv, recv_argv = client_pair_argv(a, a.mode, base, path)
    ch = Children()
    drains = {}
    t_code = None
    try:
        cpu0 = proc_cpu(a.pid)
        busy0 = busy_seconds()
        curl = a.mode == "curl"
        pipe = subprocess.PIPE
        if recv_argv is not None:  # receiver first, as in figure 1
            r = ch.start("r", recv_argv, stdout=pipe if curl else subprocess.DEVNULL, stderr=pipe)
            time.sleep(0.3)
        t0 = time.perf_counter()
        s = ch.start("s", send_argv, stdout=pipe if curl else subprocess.DEVNULL, stderr=pipe)
        drains["s"] = _Drain(s.stderr)
        drains["s"].start()
        if recv_argv is None:  # code mode: the receiver needs the printed code
            drains["s"].got_code.wait(min(30, a.max_time))
            t_code = time.perf_counter() - t0
            if drains["s"].code is None:
                raise RuntimeError("the sender printed no code: "
                                   + " | ".join(drains["s"].lines[-3:]))
            recv_argv = [a.tubes, "recv", drains["s"].code, "-o", "-", "-s", base, "-q"]
            r = ch.start("r", recv_argv, stderr=pipe)
        drains["r"] = _Drain(r.stderr)
        drains["r"].start()
        ch.reap(["s"], a.max_time + 5)
        ch.reap(["s", "r"], (a.max_time + 5) if ch.done.get("s", {}).get("rc") == 0 else 2)
        time.sleep(0.05)
        try:
            cpu1 = proc_cpu(a.pid)
        except FileNotFoundError:
            raise SystemExit(f"tubes serve (pid {a.pid}) went away during the transfer")
        busy1 = busy_seconds()
    finally:
        ch.cleanup()
    for d in drains.values():
        d.join(2)
    d_s, d_r = ch.done.get("s", {}), ch.done.get("r", {})
    if curl:
        outs = _output(r)
        try:
            got = int(outs[1]) if len(outs) > 1 and outs[0] == "200" else 0
        except ValueError:
            got = 0
    else:
        # Bytes the receiver wrote, from its /proc/PID/io just before
        # reaping: the file (to /dev/null) plus its requests and the 8-byte
        # eventfd wake-ups of its runtime (tens of KB per GiB).
        got = d_r.get("wchar") or 0
    wall = max(d_r.get("end", t0) - t0, d_s.get("end", t0) - t0, 1e-9)
    ok = (d_s.get("rc") == 0 and d_r.get("rc") == 0
          and (got == size if curl else size <= got <= size + max(1 << 20, size // 100)))
    rec = dict(fig="client", server="tubes", mode=a.mode, tag=a.tag, ok=ok, size=size,
               delivered=got, wall=wall, mbps=size / wall / 1e6 if ok else 0,
               sender_rc=d_s.get("rc"), receiver_rc=d_r.get("rc"),
               sender_cpu=d_s.get("cpu", 0), receiver_cpu=d_r.get("cpu", 0),
               sender_user=d_s.get("utime", 0), sender_sys=d_s.get("stime", 0),
               receiver_user=d_r.get("utime", 0), receiver_sys=d_r.get("stime", 0),
               sender_wall=d_s.get("end", t0) - t0, receiver_wall=d_r.get("end", t0) - t0,
               server_cpu=cpu1 - cpu0, t_code=t_code)
    if not ok:
        rec["stderr"] = {k: d.lines[-3:] for k, d in drains.items()}
    ours = rec["server_cpu"] + rec["sender_cpu"] + rec["receiver_cpu"]
    rec["other_cores"] = max(0.0, (busy1 - busy0) - ours) / (time.perf_counter() - t0)
    emit(a.out, **rec)
    log(f"client {a.mode:5} {a.tag:4} {'ok ' if ok else 'FAIL'} {size / wall / 1e6:7.1f} MB/s "
        f"({wall:.3f}s)  sender {rec['sender_user']:.2f}u+{rec['sender_sys']:.2f}s  "
        f"receiver {rec['receiver_user']:.2f}u+{rec['receiver_sys']:.2f}s  "
        f"server {rec['server_cpu']:.2f}s"
        + (f"  code after {t_code:.3f}s" if t_code is not None else "")
        + f"  (others {rec['other_cores']:.2f} cores)"
        + ("" if ok else f"  rc {rec['sender_rc']}/{rec['receiver_rc']}, {got} of {size} bytes, "
           f"stderr {rec.get('stderr')}"))


# --------------------------------------------------------------- waiters


async def _waiters(a):
    pid, n = a.pid, a.count
    time.sleep(0.5)
    rss0 = proc_rss_kb(pid)
    sem = asyncio.Semaphore(256)
    conns, failures = [], 0

    async def open_one(i):
        nonlocal failures
        async with sem:
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection(HOST, a.port), 30)
                w.write(f"GET /wait-{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                await w.drain()
                conns.append((r, w))
            except Exception:
                failures += 1

    t0 = time.monotonic()
    await asyncio.gather(*(open_one(i) for i in range(n)))
    opened = time.monotonic() - t0
    # Watch every connection: a response (or a close) while waiting is an error.
    watchers = [asyncio.ensure_future(r.read(1)) for r, _ in conns]
    # Wait until the server's RSS stops growing (all requests parsed).
    prev, rss = -1, proc_rss_kb(pid)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        prev, rss = rss, proc_rss_kb(pid)
        if abs(rss - prev) <= max(64, rss // 500):
            break
    rss_peak = rss
    answered = sum(1 for t in watchers if t.done())
    for t in watchers:
        t.cancel()
    for _, w in conns:
        w.close()
    await asyncio.sleep(0)
    for _, w in conns:
        try:
            await asyncio.wait_for(w.wait_closed(), 5)
        except Exception:
            pass
    t_close = time.monotonic()
    after = {}
    for at in sorted({1.0, float(a.settle)}):
        await asyncio.sleep(max(0, t_close + at - time.monotonic()))
        after[str(int(at))] = proc_rss_kb(pid)
    rec = dict(fig="waiters", server=a.server, count=n, opened=len(conns), failures=failures,
               answered=answered, rss_before_kb=rss0, rss_peak_kb=rss_peak,
               rss_after_kb=after, per_waiter_kb=(rss_peak - rss0) / max(len(conns), 1),
               open_seconds=opened)
    emit(a.out, **rec)
    log(f"{a.server:5} {len(conns)} waiting ({failures} failed to open, {answered} answered early) "
        f"in {opened:.1f}s: RSS {rss0/1024:.1f} -> {rss_peak/1024:.1f} MB "
        f"= {rec['per_waiter_kb']:.2f} KB each; after close {after} KB")


def cmd_waiters(a):
    asyncio.run(_waiters(a))


# --------------------------------------------------------------- latency


def _recv_until(sock, buf, marker, deadline):
    while marker not in buf:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before " + repr(marker))
        buf += chunk
    return buf


def _connect():
    s = socket.create_connection((HOST, PORT), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def one_transfer(path, body, timeout=10):
    """Sender POSTs body (waits for its 200), then a receiver GETs it.
    Returns seconds from the sender's connect until the receiver has the body."""
    deadline = time.monotonic() + timeout
    t0 = time.perf_counter()
    s = _connect()
    r = None
    try:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
                  f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        sb = _recv_until(s, b"", b"\r\n", deadline)
        if not sb.startswith(b"HTTP/1.1 200"):
            raise RuntimeError("sender got " + sb.split(b"\r\n")[0].decode(errors="replace"))
        r = _connect()
        r.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        rb = _recv_until(r, b"", b"\r\n\r\n", deadline)
        head, _, rest = rb.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError("receiver got " + head.split(b"\r\n")[0].decode(errors="replace"))
        clen = None
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                clen = int(v)
        if clen is None:
            raise RuntimeError("no Content-Length")
        while len(rest) < clen:
            r.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = r.recv(65536)
            if not chunk:
                break
            rest += chunk
        t1 = time.perf_counter()
        if rest[:clen] != body:
            raise RuntimeError("body mismatch")
        # Let the sender's log finish (not timed), so paths and tasks are freed.
        while time.monotonic() < deadline:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            if not s.recv(65536):
                break
        return t1 - t0
    finally:
        s.close()
        if r is not None:
            r.close()


def cmd_latency(a):
    global PORT
    PORT = a.port
    lat, errors, first_error = [], 0, None
    tag = f"{random.getrandbits(48):x}"
    for _ in range(20):  # warm-up, not counted
        try:
            one_transfer(f"/warm-{tag}-{_}", b"0123456789")
        except Exception:
            pass
    t0 = time.monotonic()
    for i in range(a.count):
        if time.monotonic() - t0 > a.max_time:
            errors += a.count - i
            first_error = first_error or "time budget exceeded"
            break
        try:
            lat.append(one_transfer(f"/lat-{tag}-{i}", os.urandom(5).hex().encode()))
        except Exception as e:
            errors += 1
            first_error = first_error or repr(e)
    lat.sort()

    def pct(p):
        return lat[min(len(lat) - 1, int(round(p / 100 * (len(lat) - 1))))] * 1000 if lat else float("nan")

    rec = dict(fig="latency", server=a.server, count=a.count, errors=errors,
               p50_ms=pct(50), p99_ms=pct(99), mean_ms=statistics.mean(lat) * 1000 if lat else None,
               first_error=first_error)
    emit(a.out, **rec)
    log(f"{a.server:5} latency p50 {rec['p50_ms']:.3f} ms  p99 {rec['p99_ms']:.3f} ms  "
        f"errors {errors}" + (f" ({first_error})" if first_error else ""))


# --------------------------------------------------------------- pairs


async def _read_all(reader, timeout):
    return await asyncio.wait_for(reader.read(), timeout)


async def _pair(port, path, body, timeout):
    async def sender():
        r, w = await asyncio.open_connection(HOST, port)
        try:
            w.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
            await w.drain()
            data = await _read_all(r, timeout)
            if not data.startswith(b"HTTP/1.1 200"):
                raise RuntimeError("sender status " + data[:40].decode(errors="replace"))
        finally:
            w.close()

    async def receiver():
        r, w = await asyncio.open_connection(HOST, port)
        try:
            w.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            await w.drain()
            data = await _read_all(r, timeout)
            head, _, rest = data.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError("receiver status " + head[:40].decode(errors="replace"))
            if rest != body:
                raise RuntimeError("body mismatch")
        finally:
            w.close()

    res = await asyncio.gather(asyncio.wait_for(sender(), timeout),
                               asyncio.wait_for(receiver(), timeout), return_exceptions=True)
    return [x for x in res if isinstance(x, BaseException)]


async def _pairs(a):
    tag = f"{random.getrandbits(48):x}"
    rnd = random.Random(42)
    bodies = [os.urandom(rnd.randint(10, 100)) for _ in range(a.count)]
    drops0 = listen_drops()
    t0 = time.perf_counter()
    results = await asyncio.gather(*(_pair(a.port, f"/pair-{tag}-{i}", bodies[i], a.max_time)
                                     for i in range(a.count)))
    wall = time.perf_counter() - t0
    errs = [e for r in results for e in r]
    kinds = {}
    for e in errs:
        k = type(e).__name__ + (": " + str(e)[:60] if str(e) else "")
        kinds[k] = kinds.get(k, 0) + 1
    drops = listen_drops() - drops0
    rec = dict(fig="pairs", server=a.server, count=a.count, wall=wall, listen_drops=drops,
               errors=len(errs), failed_pairs=sum(1 for r in results if r), error_kinds=kinds)
    emit(a.out, **rec)
    log(f"{a.server:5} {a.count} pairs in {wall:.3f}s, {len(errs)} errors {kinds if kinds else ''}"
        f" (listen queue drops: {drops})")


def cmd_pairs(a):
    asyncio.run(_pairs(a))


# --------------------------------------------------------------- report


def fmt(v, nd=2):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if v != v:  # nan
        return "n/a"
    return f"{v:.{nd}f}"


def ratio(x, y):
    if x is None or y is None or isinstance(x, str) or isinstance(y, str) or not y:
        return None
    return x / y


def cmd_report(a):
    recs = []
    with open(a.out) as f:
        for line in f:
            if line.strip():
                recs.append(json.loads(line))
    meta = {}
    if a.meta:
        with open(a.meta) as f:
            meta = json.load(f)

    def streams(server, mode):
        return [r for r in recs if r["fig"] == "stream" and r["server"] == server and r["mode"] == mode]

    def med(server, mode, key, per_gib_of=None):
        rs = [r for r in streams(server, mode) if r["ok"]]
        if not rs:
            return "fail" if streams(server, mode) else None
        if per_gib_of == "size":
            vals = [r[key] / (r["size"] / GIB) for r in rs]
        elif per_gib_of == "delivered":
            vals = [r[key] / (r["delivered"] / GIB) for r in rs]
        elif per_gib_of == "cores":
            vals = [r[key] / r["wall"] for r in rs]
        else:
            vals = [r[key] for r in rs]
        return statistics.median(vals)

    def one(fig, server):
        rs = [r for r in recs if r["fig"] == fig and r["server"] == server]
        return rs[-1] if rs else None

    rows = []  # (label, tubes, socat, npm, lower_is_better, target_text, verdict, nd)
    # BENCH_ONLY: print only the figures that were asked for.
    only = {f.strip() for f in (a.only or "").split(",") if f.strip()}
    cur = ["1"]  # the figure whose rows are being added

    def fig(n):
        cur[0] = str(n)

    def row(label, t, s, n, target="", verdict=None, nd=2):
        if only and cur[0] not in only:
            return
        rows.append((label, t, s, n, target, verdict, nd))

    def verdict(ok):
        if ok is None:
            return "?"
        return "ok" if ok else "MISS"

    def num(x):
        return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x

    # 1. single stream
    t = med("tubes", "h1", "mbps"); s = med("socat", "h1", "mbps"); n = med("npm", "h1", "mbps")
    row("1 single stream MB/s (median)", t, s, n, ">= socat",
        verdict(t >= s) if num(t) and num(s) else None, 0)
    for key, label in (("sender_cpu", "  sender client, cores"), ("receiver_cpu", "  receiver client, cores"),
                       ("server_cpu", "  server/relay, cores")):
        row(label, med("tubes", "h1", key, "cores"), med("socat", "h1", key, "cores"),
            med("npm", "h1", key, "cores"), "info")
    row("  same, curl -H 'Expect:' (no 100-continue)", med("tubes", "noexp", "mbps"), None,
        med("npm", "noexp", "mbps"), "info", nd=0)
    # 2. CPU per GiB
    fig(2)
    t = med("tubes", "h1", "server_cpu", "size")
    row("2 server CPU s/GiB relayed", t, med("socat", "h1", "server_cpu", "size"),
        med("npm", "h1", "server_cpu", "size"), "<= 0.35", verdict(t <= 0.35) if num(t) else None)
    # 3. waiters
    fig(3)
    wt, wn = one("waiters", "tubes"), one("waiters", "npm")

    def wv(w, f):
        return f(w) if w else None

    t = wv(wt, lambda w: w["per_waiter_kb"])
    cnt = wt["count"] if wt else (wn["count"] if wn else 0)
    row(f"3 RSS KB per waiting receiver ({cnt})", t, None, wv(wn, lambda w: w["per_waiter_kb"]),
        "<= 6", verdict(t <= 6 and wt["opened"] == wt["count"] and wt["answered"] == 0) if num(t) else None)
    row("  RSS MB before", wv(wt, lambda w: w["rss_before_kb"] / 1024), None,
        wv(wn, lambda w: w["rss_before_kb"] / 1024), "info", nd=1)
    row("  RSS MB with all waiting", wv(wt, lambda w: w["rss_peak_kb"] / 1024), None,
        wv(wn, lambda w: w["rss_peak_kb"] / 1024), "info", nd=1)
    for key in (wt or wn or {}).get("rss_after_kb", {}):
        row(f"  RSS MB {key}s after all left", wv(wt, lambda w: w["rss_after_kb"][key] / 1024), None,
            wv(wn, lambda w: w["rss_after_kb"][key] / 1024), "info", nd=1)
        row(f"  % of growth returned at {key}s",
            wv(wt, lambda w: 100 * (w["rss_peak_kb"] - w["rss_after_kb"][key]) / max(1, w["rss_peak_kb"] - w["rss_before_kb"])),
            None,
            wv(wn, lambda w: 100 * (w["rss_peak_kb"] - w["rss_after_kb"][key]) / max(1, w["rss_peak_kb"] - w["rss_before_kb"])),
            "info", nd=0)
    row("  waiters not opened / answered early",
        wv(wt, lambda w: f"{w['count'] - w['opened']}/{w['answered']}"), None,
        wv(wn, lambda w: f"{w['count'] - w['opened']}/{w['answered']}"), "0/0",
        verdict(wt["count"] == wt["opened"] and wt["answered"] == 0) if wt else None)
    # 4. latency
    fig(4)
    lt, ln = one("latency", "tubes"), one("latency", "npm")
    for key, label in (("p50_ms", "p50"), ("p99_ms", "p99")):
        t, n = wv(lt, lambda r: r[key]), wv(ln, lambda r: r[key])
        row(f"4 latency {label} ms, 10-byte transfer", t, None, n, "< npm",
            verdict(t < n) if num(t) and num(n) else None, 3)
    row("  latency errors", wv(lt, lambda r: r["errors"]), None, wv(ln, lambda r: r["errors"]), "0",
        verdict(lt["errors"] == 0) if lt else None, 0)
    # 5. pairs
    fig(5)
    pt, pn = one("pairs", "tubes"), one("pairs", "npm")
    t, n = wv(pt, lambda r: r["wall"]), wv(pn, lambda r: r["wall"])
    row(f"5 {pt['count'] if pt else ''} simultaneous pairs, wall s", t, None, n, "< npm",
        verdict(t < n) if num(t) and num(n) else None, 3)
    row("  listen queue drops (kernel)", wv(pt, lambda r: r.get("listen_drops")), None,
        wv(pn, lambda r: r.get("listen_drops")), "info", nd=0)
    row("  pair errors", wv(pt, lambda r: r["errors"]), None, wv(pn, lambda r: r["errors"]), "0",
        verdict(pt["errors"] == 0) if pt else None, 0)
    # 6. fan-out
    fig(6)
    row("6 n=3 fan-out MB/s per receiver", med("tubes", "n3", "mbps"), None, med("npm", "n3", "mbps"),
        "info", nd=0)
    t, n = med("tubes", "n3", "server_cpu", "delivered"), med("npm", "n3", "server_cpu", "delivered")
    row("  n=3 server CPU s/GiB delivered", t, None, n, "<= npm/4",
        verdict(t <= n / 4) if num(t) and num(n) else None)
    # 7. h2c
    fig(7)
    t2, n2 = med("tubes", "h2c", "mbps"), med("npm", "h2c", "mbps")
    row("7 h2c upload MB/s (receiver h1)", t2, None, n2, "info", nd=0)
    row("  h1 upload MB/s (figure 1)", med("tubes", "h1", "mbps"), None, med("npm", "h1", "mbps"), "info", nd=0)
    rt = ratio(t2, med("tubes", "h1", "mbps"))
    rn = ratio(n2, med("npm", "h1", "mbps")) if num(n2) else ("unsupported" if n2 == "fail" else None)
    row("  h2c / h1 upload", rt, None, rn, ">= 0.70", verdict(rt >= 0.70) if num(rt) else None)
    rt2 = ratio(t2, med("tubes", "noexp", "mbps"))
    rn2 = ratio(n2, med("npm", "noexp", "mbps")) if num(n2) else ("unsupported" if n2 == "fail" else None)
    row("  h2c / h1 upload without Expect", rt2, None, rn2, "info")
    row("  h2c server CPU s/GiB", med("tubes", "h2c", "server_cpu", "size"), None,
        med("npm", "h2c", "server_cpu", "size"), "info")
    # 8. TLS and HTTP/3 (Tubes only: the npm server has no TLS here, so '-')
    fig(8)
    tls = med("tubes", "tls11", "mbps")

    def cores(mode):
        vals = [med("tubes", mode, k, "cores") for k in ("sender_cpu", "receiver_cpu", "server_cpu")]
        if not any(num(v) for v in vals):
            return vals[0]
        return " / ".join(fmt(v) for v in vals)

    def drops(mode):
        rs = [r for r in streams("tubes", mode) if r["ok"] and "udp_rcvbuf_errors" in r]
        if not rs:
            return None
        srv = [r["server_udp_drops"] for r in rs if r.get("server_udp_drops") is not None]
        return (fmt(statistics.median(srv), 0) if srv else "?") + " / " + \
            fmt(statistics.median(r["udp_rcvbuf_errors"] for r in rs), 0)

    row("8 one stream over TLS / QUIC (npm: no TLS here)", "", "", "", "")
    fig8 = (
        ("h1", "(a) HTTP/1.1 plain (figure 1)", "info"),
        ("tls11", "(b) HTTP/1.1+TLS", "info"),
        ("tls2", "(c) h2+TLS -> h2+TLS", ">= 0.70"),
        ("tls2h1", "(c') h2+TLS -> HTTP/1.1+TLS", "info"),
        ("h3", "(d) h3 -> h3", ">= 0.70"),
        ("h3h1", "(d') h3 -> HTTP/1.1+TLS", "info"),
    )
    for mode, label, target in fig8:
        if mode != "h1" and not streams("tubes", mode):
            continue
        t = med("tubes", mode, "mbps")
        row(f"  {label} MB/s", t, None, med("npm", "h1", "mbps") if mode == "h1" else None,
            "info", nd=0)
        if mode != "tls11":
            r = ratio(t, tls)
            row("    / HTTP/1.1+TLS", r, None, None,
                target,
                verdict(r >= 0.70) if target == ">= 0.70" and num(r) else None)
        cpu = med("tubes", mode, "server_cpu", "size")
        if mode == "tls11":
            row("    server CPU s/GiB", cpu, None, None, "<= 1.5 (Rust ref ~3.4)",
                verdict(cpu <= 1.5) if num(cpu) else None)
        else:
            row("    server CPU s/GiB", cpu, None,
                med("npm", "h1", "server_cpu", "size") if mode == "h1" else None, "info")
        row("    cores: sender / receiver / server", cores(mode), None, None, "info")
        if mode in ("h3", "h3h1"):
            row("    UDP datagrams dropped: server socket / all",
                drops(mode), None, None, "info")

    # 9. the tubes client beside curl (Tubes column only; one tubes serve)
    fig(9)

    def crecs(mode, tag="big"):
        return [r for r in recs if r["fig"] == "client" and r["mode"] == mode and r.get("tag", "big") == tag]

    def cmed(mode, key, tag="big", per_gib=False):
        rs = crecs(mode, tag)
        good = [r for r in rs if r["ok"]]
        if not good:
            return "fail" if rs else None
        v = key if callable(key) else (lambda r: r[key])
        f = (lambda r: v(r) / (r["size"] / GIB)) if per_gib else v
        return statistics.median(f(r) for r in good)

    def cpair(mode, k1, k2, per_gib=True, nd=2):
        x, y = cmed(mode, k1, per_gib=per_gib), cmed(mode, k2, per_gib=per_gib)
        if not (num(x) or num(y)):
            return x
        return f"{fmt(x, nd)} / {fmt(y, nd)}"

    if any(r["fig"] == "client" for r in recs):
        size9 = next((r["size"] for r in recs if r["fig"] == "client" and r.get("tag", "big") == "big"), 0)
        row(f"9 client: tubes send/recv beside curl ({size9 / (1 << 20):.0f} MiB, one tubes serve)",
            "", "", "", "")
        plain9 = cmed("plain", "mbps")
        fig9 = (
            ("curl", "(a) curl -T -> curl (figure 1's clients)", None, "info"),
            ("plain", "(b) tubes send --path -> recv, plain", "curl", "info"),
            ("code", "(c) tubes send (code) -> recv CODE, encrypted", "plain", ">= 0.75"),
            ("pass", "(d) tubes --path --pass, encrypted, 2 x PBKDF2", "plain", ">= 0.75"),
        )
        for mode, label, versus, target in fig9:
            if not crecs(mode):
                continue
            t = cmed(mode, "mbps")
            row(f"  {label} MB/s", t, None, None, "info", nd=0)
            if versus:
                r9 = ratio(t, cmed(versus, "mbps")) if num(t) else None
                v9 = verdict(r9 >= 0.75) if target == ">= 0.75" and num(r9) else None
                # Other load during these runs (as in the footer): the
                # MB/s ratio is not to be trusted then.
                noise = [cmed(m, "other_cores") for m in (mode, versus)]
                if v9 and any(num(x) and x > 0.15 for x in noise):
                    v9 += " (noisy: see CPU ratio)"
                row(f"    / {versus}", r9, None, None, target, v9)
                if versus == "plain":
                    # The same with each mode's fixed cost (the 1 KiB
                    # transfer's wall time) left out, for where the time goes.
                    w, wt = cmed(mode, "wall"), cmed(mode, "wall", "tiny")
                    pw, pwt = cmed("plain", "wall"), cmed("plain", "wall", "tiny")
                    r9b = None
                    if all(num(v) for v in (w, wt, pw, pwt)) and w > wt and pw > pwt:
                        r9b = (pw - pwt) / (w - wt)
                    row("    / plain, each 1 KiB transfer's wall time left out", r9b, None, None, "info")
                    # On 2 busy cores the rate follows the CPU the three
                    # processes need per GiB; this ratio holds up when other
                    # load makes the MB/s noisy.
                    allcpu = lambda r: r["sender_cpu"] + r["receiver_cpu"] + r["server_cpu"]
                    row("    plain CPU s/GiB / this CPU s/GiB (sender+receiver+server)",
                        ratio(cmed("plain", allcpu, per_gib=True), cmed(mode, allcpu, per_gib=True)),
                        None, None, "info")
            row("    client CPU s/GiB, sender + receiver",
                cmed(mode, lambda r: r["sender_cpu"] + r["receiver_cpu"], per_gib=True), None, None, "info")
            row("      sender user / sys", cpair(mode, "sender_user", "sender_sys"), None, None, "info")
            row("      receiver user / sys", cpair(mode, "receiver_user", "receiver_sys"), None, None, "info")
            row("    server CPU s/GiB", cmed(mode, "server_cpu", per_gib=True), None, None, "info")
            if crecs(mode, "tiny"):
                row("    1 KiB transfer, wall s (fixed cost)", cmed(mode, "wall", "tiny"), None, None,
                    "info", nd=3)
            if mode == "code":
                row("    code printed after, s", cmed(mode, "t_code"), None, None, "info", nd=3)

    # print
    head = ("figure", "Tubes", "socat", "npm", "T/socat", "T/npm", "target", "")
    table = [head]
    for label, t, s, n, target, v, nd in rows:
        if t == s == n == "":  # a heading
            table.append((label, "", "", "", "", "", target, ""))
            continue
        table.append((label, fmt(t, nd), fmt(s, nd), fmt(n, nd),
                      fmt(ratio(t, s)), fmt(ratio(t, n)), target, v or ""))
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    out = []
    if meta:
        out.append("Tubes benchmark: " + ", ".join(f"{k}={v}" for k, v in meta.items()))
    for i, r in enumerate(table):
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:6], widths[1:6])] + \
                [r[6].ljust(widths[6]), r[7]]
        out.append("  ".join(cells).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths).rstrip())
    # (figure 9's 1 KiB transfers last ~20 ms, too short for /proc/stat's
    # 10 ms ticks: left out)
    other = [r["other_cores"] for r in recs if r["fig"] in ("stream", "client") and "other_cores" in r
             and r.get("tag", "big") == "big"]
    if other:
        o = statistics.median(other)
        out.append(f"CPU used by other processes during the stream and client runs: median {o:.2f}, max {max(other):.2f} cores"
                   + ("  (busy machine: throughput figures are noisy)" if o > 0.15 else ""))
    failed = [r for r in recs if r["fig"] == "stream" and not r["ok"]]
    failed9 = [r for r in recs if r["fig"] == "client" and not r["ok"]]
    if failed9:
        out.append("failed client runs (figure 9): " + ", ".join(
            f"{r['mode']}/{r.get('tag')} (sender rc {r.get('sender_rc')}, receiver rc {r.get('receiver_rc')}, "
            f"{r['delivered']} of {r['size']} bytes)" for r in failed9))
    if failed:
        out.append("failed stream runs: " + ", ".join(
            f"{r['server']}/{r['mode']} (sender rc {r.get('sender_rc')}, receivers {r.get('receiver_rc')}, "
            f"{r['delivered']} of {r['size'] * max(1, len(r.get('receiver_rc') or [1]))} bytes)" for r in failed))
    out.append("MB = 10^6 bytes; 'cores' = CPU seconds / wall seconds of that process during the transfer;"
               " T/x = Tubes divided by x; socat = raw TCP 2-hop relay with socat clients.")
    print("\n".join(out))


# --------------------------------------------------------------- main


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    fp = sub.add_parser("freeport")
    fp.add_argument("--udp", action="store_true", help="free over UDP too (HTTPS + HTTP/3)")
    w = sub.add_parser("waitport"); w.add_argument("port", type=int); w.add_argument("timeout", type=float)
    for name in ("stream", "socat", "client", "waiters", "latency", "pairs"):
        q = sub.add_parser(name)
        q.add_argument("--out", required=True)
        q.add_argument("--server", default="socat")
        q.add_argument("--port", type=int)
        q.add_argument("--pid", type=int)
        q.add_argument("--max-time", type=float, default=120)
        if name in ("stream", "socat", "client"):
            q.add_argument("--file", required=True)
        if name == "client":
            q.add_argument("--mode", required=True, choices=CLIENT_MODES)
            q.add_argument("--tag", default="big", help="big (throughput) or tiny (fixed cost)")
            q.add_argument("--tubes", required=True, help="path of the tubes binary")
            q.add_argument("--passphrase", default="bench-passphrase")
        if name == "stream":
            q.add_argument("--n", type=int, default=1)
            q.add_argument("--h2c", action="store_true")
            q.add_argument("--no-expect", action="store_true")
            q.add_argument("--mode", default="h1")
            q.add_argument("--tag", default="s")
            q.add_argument("--sender", default="h1", choices=sorted(CURL_PROTO_FLAGS) + ["h3"])
            q.add_argument("--receiver", default="h1", choices=sorted(CURL_PROTO_FLAGS) + ["h3"])
            q.add_argument("--tls-port", type=int, help="the HTTPS (TCP) and HTTP/3 (UDP) port")
            q.add_argument("--h3-client", help="path of the built examples/h3_client")
            q.add_argument("--h3-threads", type=int, default=1, help="its runtime's worker threads")
        if name == "socat":
            q.add_argument("--buf", type=int, default=65536)
        if name in ("waiters", "latency", "pairs"):
            q.add_argument("--count", type=int, required=True)
        if name == "waiters":
            q.add_argument("--settle", type=float, default=12)
    r = sub.add_parser("report"); r.add_argument("--out", required=True); r.add_argument("--meta")
    r.add_argument("--only", default="", help="comma-separated figure numbers to print (default all)")
    a = p.parse_args()
    # Die of the signal itself on Ctrl-C or SIGTERM, so that run.sh (bash)
    # sees it and stops too; children die with us (PR_SET_PDEATHSIG).
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if a.cmd == "freeport":
        print(free_port(udp_too=a.udp))
    elif a.cmd == "waitport":
        sys.exit(0 if wait_port(a.port, a.timeout) else 1)
    else:
        globals()["cmd_" + a.cmd](a)


if __name__ == "__main__":
    main()
