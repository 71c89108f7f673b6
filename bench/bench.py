#!/usr/bin/env python3
"""Measurement helpers for bench/run.sh (Python 3 standard library only).

Every subcommand that measures something appends one JSON object per result
to the results file given with --out; `report` turns that file into the
table. Progress goes to stderr. Every loop and every wait is bounded.
"""

import argparse
import asyncio
import base64
import ctypes
import hashlib
import hmac
import json
import os
import random
import select
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse

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
# ALPN http/1.1 / h2, h3 = examples/h3_client.rs over QUIC, th2tls (sender
# only) = `tubes send --http2 -k` (h2 over TLS: its client offers only h2, so
# it cannot fall back to HTTP/1.1).
TLS_PROTOS = ("h1tls", "h2tls", "h3", "th2tls")
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
    if proto == "th2tls":
        if not (upload and a.tubes):
            raise SystemExit("th2tls is a sender and needs --tubes")
        parts = urllib.parse.urlsplit(url)
        if parts.query:
            raise SystemExit("th2tls sends to one receiver only")
        return [a.tubes, "send", "--http2", "-k", "-q", "--path", parts.path, upload,
                "-s", f"{parts.scheme}://{parts.netloc}"]
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


def _connect(port=None):
    s = socket.create_connection((HOST, port or PORT), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def one_transfer(path, body, timeout=10, port=None, headers=""):
    """Sender POSTs body (waits for its 200), then a receiver GETs it.
    Returns seconds from the sender's connect until the receiver has the body.
    headers: extra header lines ("Name: value\r\n"...) for both requests."""
    deadline = time.monotonic() + timeout
    t0 = time.perf_counter()
    s = _connect(port)
    r = None
    try:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n{headers}"
                  f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        sb = _recv_until(s, b"", b"\r\n", deadline)
        if not sb.startswith(b"HTTP/1.1 200"):
            raise RuntimeError("sender got " + sb.split(b"\r\n")[0].decode(errors="replace"))
        r = _connect(port)
        r.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n".encode())
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


# --------------------------------------------------------------- services

# Local services for figures 10 and 11, each a child process of the helper
# that measures (so its CPU is its own and it never shares the measuring
# process's interpreter lock), listening on a port the OS chose (printed as
# the first line of its stdout): `sink` reads every connection to its end
# and prints "BYTES END" (END on CLOCK_MONOTONIC, which every process of the
# machine shares) as each one ends; `echo` sends every byte back and closes
# when the client half-closes.


def cmd_service(a):
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((HOST, 0))
    lsock.listen(512)
    print(lsock.getsockname()[1], flush=True)
    if a.kind == "echo":
        class Echo(asyncio.Protocol):
            def connection_made(self, transport):
                transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.transport = transport

            def data_received(self, data):
                self.transport.write(data)

            def eof_received(self):
                return False  # close once the client has half-closed

        async def serve():
            server = await asyncio.get_running_loop().create_server(Echo, sock=lsock)
            async with server:
                await server.serve_forever()

        asyncio.run(serve())
        return
    lock = threading.Lock()

    def drain(c):
        buf, n = bytearray(1 << 20), 0
        try:
            while True:
                k = c.recv_into(buf)
                if not k:
                    break
                n += k
        except OSError:
            pass
        end = time.monotonic()
        c.close()
        with lock:
            print(f"{n} {end}", flush=True)

    while True:
        c, _ = lsock.accept()
        threading.Thread(target=drain, args=(c,), daemon=True).start()


class _Lines:
    """Lines from a child's stdout, read with a deadline."""

    def __init__(self, pipe):
        self.fd, self.buf = pipe.fileno(), b""

    def get(self, timeout):
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                return None
            chunk = os.read(self.fd, 4096)
            if not chunk:
                return None
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode()


def start_service(ch, kind):
    """(process, port, its stdout lines) of a sink or echo child."""
    p = ch.start(kind, [sys.executable, os.path.abspath(__file__), "service", "--kind", kind],
                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    lines = _Lines(p.stdout)
    port = lines.get(10)
    if not port:
        raise RuntimeError(f"the {kind} service did not start")
    return p, int(port), lines


def _pct(vals, p):
    """p-th percentile (nearest rank) of a sorted list, or None."""
    if not vals:
        return None
    return vals[min(len(vals) - 1, int(round(p / 100 * (len(vals) - 1))))]


# --------------------------------------------------------------- tunnels

# Figure 10: `tubes tunnel client` (local port) -> tubes serve -> `tubes
# tunnel server` -> a local service, in plain and --mux mode, beside a
# direct loopback connection to the same service.
TUNNEL_MODES = ("direct", "plain", "mux")


def start_tunnel(ch, a, mode, service_port, name):
    """Starts a tunnel server (to service_port) and a tunnel client on a
    port of the OS's choice; returns (client pid, server pid, local port).
    Both log to LOG_DIR/tunnel-NAME-{server,client}.log."""
    base = f"http://{HOST}:{a.port}"
    path = f"bench-tunnel-{name}-{random.getrandbits(48):x}"
    mux = ["--mux"] if mode == "mux" else []
    logs = {}
    for role in ("server", "client"):
        logs[role] = os.path.join(a.log_dir, f"tunnel-{name}-{role}.log")
    with open(logs["server"], "wb") as f:
        srv = ch.start(f"tsrv-{name}", [a.tubes, "tunnel", "server", "--port", str(service_port),
                                        "--host", HOST, *mux, path, "-s", base, "-q"], stderr=f)
    with open(logs["client"], "wb") as f:
        cli = ch.start(f"tcli-{name}", [a.tubes, "tunnel", "client", "--port", "0", *mux, path,
                                        "-s", base], stderr=f)
    # The client prints "Listening on 127.0.0.1:NNNN." on stderr.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with open(logs["client"], "rb") as f:
            for line in f.read().decode(errors="replace").splitlines():
                if line.startswith("Listening on ") and line.endswith("."):
                    return cli.pid, srv.pid, int(line[len("Listening on "):-1].rsplit(":", 1)[1])
        if cli.poll() is not None or srv.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError(f"tunnel {name} did not start (see {logs['client']}, {logs['server']})")


def tunnel_transfer(a, mode, port, pids, sink_lines, size):
    """One file through `port` (the sink's own, or a tunnel client's) to the
    sink: socat -u STDIN <file -> port; MB/s = size / (sender start -> the
    sink has read to the end)."""
    cpu0 = {k: proc_cpu(p) for k, p in pids.items()}
    busy0 = busy_seconds()
    t0 = time.monotonic()
    name = "sender"
    # Children of its own: a timeout kills the sender, not the tunnels.
    ch = Children()
    try:
        with open(a.file, "rb") as f:
            ch.start(name, ["socat", "-u", "-b", "65536", "STDIN", f"TCP:{HOST}:{port}"], stdin=f)
        line = sink_lines.get(a.max_time + 5)
        ch.reap([name], 10)
    finally:
        ch.cleanup()
    busy1, t1 = busy_seconds(), time.monotonic()
    cpu = {k: proc_cpu(p) - cpu0[k] for k, p in pids.items()}
    s = ch.done.get(name, {})
    cpu["sender"] = s.get("cpu", 0)
    got, end = (int(line.split()[0]), float(line.split()[1])) if line else (0, t1)
    wall = max(end - t0, 1e-9)
    ok = got == size and s.get("rc") == 0
    rec = dict(fig="tunnel", kind="stream", server="tubes", mode=mode, ok=ok, size=size, delivered=got,
               wall=wall, mbps=got / wall / 1e6 if ok else 0, cpu=cpu, sender_rc=s.get("rc"))
    rec["other_cores"] = max(0.0, (busy1 - busy0) - sum(cpu.values())) / max(t1 - t0, 1e-9)
    emit(a.out, **rec)
    log(f"tunnel {mode:6} {'ok ' if ok else 'FAIL'} {rec['mbps']:7.1f} MB/s ({wall:.2f}s)  "
        + "  ".join(f"{k} {v:.2f}s" for k, v in cpu.items())
        + f"  (others {rec['other_cores']:.2f} cores)"
        + ("" if ok else f"  {got} of {size} bytes, sender rc {s.get('rc')}"))


def tunnel_setup(a, mode, port, count, gap=0.02, warm=5, budget=120):
    """Sequential connections to `port` (an echo service, or a tunnel to
    it): time from connect() to the first echoed byte. Each connection is
    then half-closed and read to its end (untimed), so that the next one
    does not wait for its teardown (plain mode carries one at a time)."""
    lat, errors, first_error = [], 0, None
    t_start = time.monotonic()
    for i in range(warm + count):
        if time.monotonic() - t_start > budget:
            errors += warm + count - i
            first_error = first_error or "time budget exceeded"
            break
        s = None
        try:
            t0 = time.perf_counter()
            s = socket.create_connection((HOST, port), timeout=10)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(b"x")
            b = s.recv(1)
            t1 = time.perf_counter()
            if b != b"x":
                raise RuntimeError(f"echo gave {b!r}")
            s.shutdown(socket.SHUT_WR)
            while s.recv(65536):
                pass
            if i >= warm:
                lat.append(t1 - t0)
        except Exception as e:
            if i >= warm:
                errors += 1
                first_error = first_error or repr(e)
        finally:
            if s is not None:
                s.close()
        time.sleep(gap)
    lat.sort()
    rec = dict(fig="tunnel", kind="setup", server="tubes", mode=mode, count=count, errors=errors,
               p50_ms=_pct(lat, 50) * 1000 if lat else None, p99_ms=_pct(lat, 99) * 1000 if lat else None,
               mean_ms=statistics.mean(lat) * 1000 if lat else None, first_error=first_error,
               over_100ms=sum(1 for x in lat if x > 0.1))
    emit(a.out, **rec)
    log(f"tunnel {mode:6} set-up of {count} connections: p50 {rec['p50_ms'] or 0:.3f} ms  "
        f"p99 {rec['p99_ms'] or 0:.3f} ms  over 100 ms: {rec['over_100ms']}  errors {errors}"
        + (f" ({first_error})" if first_error else ""))


def cmd_tunnel(a):
    size = os.path.getsize(a.file)
    ch = Children()
    try:
        sink, sink_port, sink_lines = start_service(ch, "sink")
        _, echo_port, _ = start_service(ch, "echo")
        to_sink, to_echo = {"direct": (sink_port, {})}, {"direct": echo_port}
        for mode in ("plain", "mux"):
            c, s, port = start_tunnel(ch, a, mode, sink_port, f"{mode}-sink")
            to_sink[mode] = (port, {"tunnel_client": c, "tunnel_server": s})
            to_echo[mode] = start_tunnel(ch, a, mode, echo_port, f"{mode}-echo")[2]
        log(f"sink on {sink_port}, echo on {echo_port}; tunnels to the sink: plain on "
            f"{to_sink['plain'][0]}, mux on {to_sink['mux'][0]}")
        for rep in range(a.reps):
            for mode in TUNNEL_MODES:
                port, pids = to_sink[mode]
                tunnel_transfer(a, mode, port, {**pids, "relay": a.pid, "sink": sink.pid},
                                sink_lines, size)
                time.sleep(0.5)
        for mode in TUNNEL_MODES:
            # Plain mode carries one connection at a time: fewer of them.
            n = max(1, a.conns // 4) if mode == "plain" else a.conns
            tunnel_setup(a, mode, to_echo[mode], n)
    finally:
        ch.cleanup()


# --------------------------------------------------------------- WebSocket

# Figure 11 (a-c): round trip of a small message between two clients in one
# thread of this process (blocking sockets, one step after the other).


class _Sock:
    """A blocking socket with a read buffer and a deadline per read."""

    def __init__(self, port, timeout=10):
        self.s = socket.create_connection((HOST, port), timeout=timeout)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def _more(self, deadline):
        self.s.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = self.s.recv(262144)
        if not chunk:
            raise ConnectionError("closed by the server")
        self.buf += chunk

    def exact(self, n, deadline):
        while len(self.buf) < n:
            self._more(deadline)
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def until(self, marker, deadline):
        while True:
            i = self.buf.find(marker)
            if i >= 0:
                out = bytes(self.buf[:i + len(marker)])
                del self.buf[:i + len(marker)]
                return out
            self._more(deadline)

    def response(self, deadline):
        """One HTTP/1.1 response: (status, lower-case headers, body)."""
        head = self.until(b"\r\n\r\n", deadline).decode(errors="replace").split("\r\n")
        status = int(head[0].split()[1])
        h = {}
        for line in head[1:]:
            k, _, v = line.partition(":")
            if k:
                h[k.strip().lower()] = v.strip()
        if "content-length" in h:
            return status, h, self.exact(int(h["content-length"]), deadline)
        body = b""
        if h.get("transfer-encoding", "").lower() == "chunked":
            while True:
                n = int(self.until(b"\r\n", deadline).split(b";")[0], 16)
                if n == 0:
                    while self.until(b"\r\n", deadline) != b"\r\n":  # trailers
                        pass
                    return status, h, body
                body += self.exact(n, deadline)
                self.exact(2, deadline)
        raise RuntimeError("a response without length")

    def close(self):
        self.s.close()


def ws_open(port, path, deadline):
    w = _Sock(port)
    key = base64.b64encode(os.urandom(16)).decode()
    w.s.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    head = w.until(b"\r\n\r\n", deadline)
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError("WebSocket refused: " + head.split(b"\r\n")[0].decode(errors="replace"))
    return w


def ws_send(w, payload, opcode=1):
    """One masked frame (a client must mask), payload under 64 KiB."""
    n = len(payload)
    mask = os.urandom(4)
    head = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big"))
    masked = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
    w.s.sendall(head + mask + masked)


def ws_recv(w, deadline):
    """The next data frame's payload (the server does not mask)."""
    while True:
        b0, b1 = w.exact(2, deadline)
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(w.exact(2, deadline), "big")
        elif n == 127:
            n = int.from_bytes(w.exact(8, deadline), "big")
        payload = w.exact(n, deadline)
        op = b0 & 0x0F
        if op in (1, 2):
            return payload
        if op == 8:
            raise ConnectionError(f"WebSocket closed: {payload[:2].hex()} {payload[2:].decode(errors='replace')}")


def cmd_wsrtt(a):
    """Round trips of a 32-byte message: (ws) A -> relay -> B -> relay -> A
    over ?ws=pair; (http) the same with one PUT + one GET per message, on
    kept-alive connections, the receivers' GETs already waiting; (tcp) a raw
    TCP echo on loopback without a relay."""
    import resource
    tag = f"{random.getrandbits(48):x}"
    ch = Children()
    res = {}
    try:
        echo, echo_port, _ = start_service(ch, "echo")
        for kind in ("ws", "http", "tcp"):
            rtt, one, first_error = [], [], None
            t_start = time.monotonic()
            # CPU of the server, the echo and this process, and of the machine.
            own = lambda: (proc_cpu(a.pid) + proc_cpu(echo.pid)
                           + sum(getattr(resource.getrusage(resource.RUSAGE_SELF), f)
                                 for f in ("ru_utime", "ru_stime")))
            own0, busy0 = own(), busy_seconds()
            conns = []
            try:
                deadline = time.monotonic() + 10
                if kind == "ws":
                    A = ws_open(a.port, f"/pair-{tag}?ws=pair", deadline)
                    B = ws_open(a.port, f"/pair-{tag}?ws=pair", deadline)
                    conns = [A, B]
                    # A message that reaches the relay while it is still
                    # joining the two is dropped ("nobody to give it to yet"):
                    # let the join settle before the first one.
                    time.sleep(0.1)
                elif kind == "http":
                    conns = [_Sock(a.port) for _ in range(4)]
                    a_put, a_get, b_put, b_get = conns
                else:
                    conns = [_Sock(echo_port)]
                for i in range(a.warm + a.count):
                    if time.monotonic() - t_start > a.max_time:
                        first_error = first_error or "time budget exceeded"
                        break
                    msg = f"m{i:09d}-".encode().ljust(32, b"x")
                    deadline = time.monotonic() + 10
                    try:
                        if kind == "ws":
                            t0 = time.perf_counter()
                            ws_send(A, msg)
                            got = ws_recv(B, deadline)
                            tm = time.perf_counter()
                            ws_send(B, got)
                            back = ws_recv(A, deadline)
                            t1 = time.perf_counter()
                        elif kind == "http":
                            ab, ba = f"/h-{tag}-{i}-ab", f"/h-{tag}-{i}-ba"
                            get = "GET {} HTTP/1.1\r\nHost: x\r\n\r\n"
                            put = ("PUT {} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
                                   "Content-Length: {}\r\n\r\n")
                            b_get.s.sendall(get.format(ab).encode())
                            a_get.s.sendall(get.format(ba).encode())
                            time.sleep(0.001)  # the receivers wait (untimed)
                            t0 = time.perf_counter()
                            a_put.s.sendall(put.format(ab, len(msg)).encode() + msg)
                            st, _, got = b_get.response(deadline)
                            tm = time.perf_counter()
                            b_put.s.sendall(put.format(ba, len(got)).encode() + got)
                            st2, _, back = a_get.response(deadline)
                            t1 = time.perf_counter()
                            # The senders' responses (their logs), untimed. A
                            # response that says `Connection: close` (Tubes
                            # closes a connection whose first request was an
                            # upload) ends its connection: open a new one.
                            for at in (0, 2):
                                st_put, h_put, _ = conns[at].response(deadline)
                                if st_put != 200:
                                    raise RuntimeError("a sender was refused")
                                if h_put.get("connection", "").lower() == "close":
                                    conns[at].close()
                                    conns[at] = _Sock(a.port)
                            a_put, a_get, b_put, b_get = conns
                            if (st, st2) != (200, 200):
                                raise RuntimeError(f"receivers got {st}, {st2}")
                        else:
                            E = conns[0]
                            t0 = time.perf_counter()
                            E.s.sendall(msg)
                            back = E.exact(len(msg), deadline)
                            t1 = tm = time.perf_counter()
                        if back != msg:
                            raise RuntimeError("message mismatch")
                        if i >= a.warm:
                            rtt.append(t1 - t0)
                            if kind != "tcp":
                                one.append(tm - t0)
                    except Exception as e:
                        first_error = first_error or repr(e)
                        if kind != "http":
                            raise
                        # A broken keep-alive connection: open fresh ones.
                        for c in conns:
                            c.close()
                        conns = [_Sock(a.port) for _ in range(4)]
                        a_put, a_get, b_put, b_get = conns
            except Exception as e:
                first_error = first_error or repr(e)
            finally:
                for c in conns:
                    c.close()
            errors = a.count - len(rtt)  # every message not measured
            other = max(0.0, (busy_seconds() - busy0) - (own() - own0)) / max(time.monotonic() - t_start, 1e-9)
            rtt.sort()
            one.sort()
            ms = lambda v: v * 1000 if v is not None else None
            res[kind] = dict(count=a.count, errors=errors, first_error=first_error,
                             rtt_p50_ms=ms(_pct(rtt, 50)), rtt_p99_ms=ms(_pct(rtt, 99)),
                             one_p50_ms=ms(_pct(one, 50)), one_p99_ms=ms(_pct(one, 99)),
                             other_cores=other)
            r = res[kind]
            log(f"{kind:4} round trip p50 {r['rtt_p50_ms'] or 0:.3f} ms  p99 {r['rtt_p99_ms'] or 0:.3f} ms"
                + (f"  one way p50 {r['one_p50_ms'] or 0:.3f} p99 {r['one_p99_ms'] or 0:.3f}" if one else "")
                + f"  errors {r['errors']}" + (f" ({first_error})" if first_error else "")
                + f"  (others {other:.2f} cores)")
    finally:
        ch.cleanup()
    emit(a.out, fig="wsrtt", server="tubes", **res,
         other_cores=max((r["other_cores"] for r in res.values()), default=0.0))


# --------------------------------------------------------------- live / SSE

# Figure 11 (d, e): one live sender, many receivers (SSE or raw bytes).
# Each line the sender writes carries its sequence number and the time it
# was written (CLOCK_REALTIME, ns); the receivers' sockets have
# SO_TIMESTAMPNS, so each read also says when its last segment reached the
# receiving socket (also CLOCK_REALTIME): "arrival" latency leaves out the
# time the single-threaded receiving client took to get to that socket.
SO_TIMESTAMPNS = 35  # Linux, <asm-generic/socket.h> (also SCM_TIMESTAMPNS)


def cmd_live_send(a):
    """The live sender (a child of cmd_live): PUT PATH?live, chunked, one
    line per chunk at a steady rate; prints the number of lines sent."""
    s = socket.create_connection((HOST, a.port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(f"PUT {a.path} HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
              "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n".encode())
    n = max(1, int(a.rate * a.seconds))
    start = time.monotonic() + 0.05
    for i in range(n):
        delay = start + i / a.rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        line = f"L{i} {time.time_ns()} ".encode().ljust(a.line_bytes - 1, b"x") + b"\n"
        s.sendall(f"{len(line):x}\r\n".encode() + line + b"\r\n")
    s.sendall(b"0\r\n\r\n")
    # The server's log to the sender, to its end (bounded).
    s.settimeout(10)
    try:
        while s.recv(65536):
            pass
    except OSError:
        pass
    print(n, flush=True)


class _LiveRecv:
    """One receiver's response, parsed as it comes: head, chunked body,
    lines (for SSE the `data:` lines), sequence numbers and latencies."""

    __slots__ = ("sock", "sse", "raw", "head", "chunk_left", "crlf", "text", "last", "got", "dups",
                 "done", "error")

    def __init__(self, sock, sse):
        self.sock, self.sse = sock, sse
        self.raw, self.text = bytearray(), bytearray()
        self.head, self.chunk_left, self.crlf = False, 0, 0
        self.last, self.got, self.dups = -1, 0, 0
        self.done, self.error = False, None

    def feed(self, data, t_arrival, t_read, lat_arrival, lat_read, per_line):
        raw = self.raw
        raw += data
        pos = 0
        if not self.head:
            i = raw.find(b"\r\n\r\n")
            if i < 0:
                return
            head = bytes(raw[:i]).lower()
            if not head.startswith(b"http/1.1 200"):
                self.error = "status " + bytes(raw[:i]).split(b"\r\n")[0].decode(errors="replace")
                self.done = True
                return
            if b"transfer-encoding: chunked" not in head:
                self.error = "not chunked"
                self.done = True
                return
            self.head, pos = True, i + 4
        n = len(raw)
        while pos < n and not self.done:
            if self.crlf:
                k = min(self.crlf, n - pos)
                self.crlf -= k
                pos += k
            elif self.chunk_left:
                k = min(self.chunk_left, n - pos)
                self.text += raw[pos:pos + k]
                self.chunk_left -= k
                pos += k
                if not self.chunk_left:
                    self.crlf = 2
            else:
                i = raw.find(b"\r\n", pos)
                if i < 0:
                    break
                size = int(bytes(raw[pos:i]).split(b";")[0], 16)
                pos = i + 2
                if size == 0:
                    self.done = True  # the end (trailers not needed)
                else:
                    self.chunk_left = size
        del raw[:pos]
        text = self.text
        j = text.rfind(b"\n")
        if j < 0:
            return
        lines = bytes(text[:j]).split(b"\n")
        del text[:j + 1]
        for line in lines:
            if self.sse:
                if line.startswith(b"data: L"):
                    line = line[6:]
                elif line.startswith(b"event: abort"):
                    self.error = "event: abort"
                    continue
                else:
                    continue
            elif not line.startswith(b"L"):
                continue
            seq_b, ts_b, _ = line.split(b" ", 2)
            seq, ts = int(seq_b[1:]), int(ts_b)
            if seq <= self.last:
                self.dups += 1
                continue
            self.last = seq
            self.got += 1
            lat_arrival.append(t_arrival - ts)
            lat_read.append(t_read - ts)
            pl = per_line.get(seq)
            if pl is None:
                per_line[seq] = [t_arrival - ts, t_arrival - ts]
            else:  # the worst and the best arrival of this line
                pl[0] = max(pl[0], t_arrival - ts)
                pl[1] = min(pl[1], t_arrival - ts)


def cmd_live(a):
    """N receivers (SSE or raw) join PATH?live first, then one sender writes
    a.rate lines per second for a.seconds; delivery latency, lost lines,
    the server's CPU and RSS."""
    import resource
    sse = a.mode == "sse"
    path = f"/news-{a.mode}-{random.getrandbits(48):x}?live"
    req = (f"GET {path} HTTP/1.1\r\nHost: x\r\n" + ("Accept: text/event-stream\r\n" if sse else "")
           + "\r\n").encode()
    time.sleep(0.5)
    rss0 = proc_rss_kb(a.pid)
    recvs, open_errors = [], 0
    t_open = time.monotonic()
    for _ in range(a.receivers):
        try:
            s = socket.create_connection((HOST, a.port), timeout=10)
            s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            s.sendall(req)
            s.setblocking(False)
            recvs.append(_LiveRecv(s, sse))
        except OSError:
            open_errors += 1
    opened = time.monotonic() - t_open
    # Wait until the server has taken every request (its RSS stops growing).
    prev, rss = -1, proc_rss_kb(a.pid)
    deadline = time.monotonic() + 20
    time.sleep(1)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        prev, rss = rss, proc_rss_kb(a.pid)
        if abs(rss - prev) <= max(64, rss // 500):
            break
    rss1 = rss
    ep = select.epoll()
    by_fd = {}
    for r in recvs:
        by_fd[r.sock.fileno()] = r
        ep.register(r.sock.fileno(), select.EPOLLIN)
    lat_arrival, lat_read, per_line = [], [], {}
    ch = Children()
    cspace = socket.CMSG_SPACE(16)
    try:
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        cpu0, busy0 = proc_cpu(a.pid), busy_seconds()
        t0 = time.monotonic()
        sender = ch.start("sender", [sys.executable, os.path.abspath(__file__), "live-send",
                                     "--port", str(a.port), "--path", path, "--rate", str(a.rate),
                                     "--seconds", str(a.seconds), "--line-bytes", str(a.line_bytes)],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        rss_peak, next_rss = rss1, 0.0
        deadline = t0 + a.seconds + 30
        left = len(recvs)
        while left and time.monotonic() < deadline:
            for fd, _ in ep.poll(0.2):
                r = by_fd[fd]
                try:
                    data, anc, _, _ = r.sock.recvmsg(262144, cspace)
                except BlockingIOError:
                    continue
                except OSError as e:
                    data, anc, r.error = b"", [], repr(e)
                t_read = time.time_ns()
                if not data:
                    if not r.done:
                        r.error = r.error or "closed before the end"
                    r.done = True
                else:
                    t_arr = t_read
                    for lvl, typ, cd in anc:
                        if lvl == socket.SOL_SOCKET and typ == SO_TIMESTAMPNS and len(cd) >= 16:
                            sec, ns = int.from_bytes(cd[:8], "little"), int.from_bytes(cd[8:16], "little")
                            t_arr = sec * 1_000_000_000 + ns
                    r.feed(data, t_arr, t_read, lat_arrival, lat_read, per_line)
                if r.done:
                    ep.unregister(fd)
                    left -= 1
            now = time.monotonic()
            if now >= next_rss:
                rss_peak, next_rss = max(rss_peak, proc_rss_kb(a.pid)), now + 0.2
        t1 = time.monotonic()
        cpu1, busy1 = proc_cpu(a.pid), busy_seconds()
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        rss_peak = max(rss_peak, proc_rss_kb(a.pid))
        ch.reap(["sender"], 15)
        out = _output(sender)
    finally:
        ch.cleanup()
        for r in recvs:
            r.sock.close()
        ep.close()
    sent = int(out[0]) if out and out[0].isdigit() else 0
    not_done = sum(1 for r in recvs if not r.done)
    failed = [r for r in recvs if r.error or not r.done]
    lost = [max(0, sent - r.got) for r in recvs]
    lat_arrival.sort()
    lat_read.sort()
    ms = lambda v: v / 1e6 if v is not None else None
    client_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    s = ch.done.get("sender", {})
    rec = dict(fig="live", server="tubes", mode=a.mode, receivers=a.receivers, opened=len(recvs),
               open_errors=open_errors, open_seconds=opened, rate=a.rate, seconds=a.seconds,
               line_bytes=a.line_bytes, sent=sent, sender_rc=s.get("rc"),
               delivered=sum(r.got for r in recvs), lost=sum(lost),
               receivers_with_loss=sum(1 for x in lost if x), dups=sum(r.dups for r in recvs),
               failed=len(failed) + open_errors, not_ended=not_done,
               errors_seen=sorted({r.error for r in failed if r.error})[:5],
               arrival_p50_ms=ms(_pct(lat_arrival, 50)), arrival_p99_ms=ms(_pct(lat_arrival, 99)),
               arrival_max_ms=ms(lat_arrival[-1] if lat_arrival else None),
               read_p50_ms=ms(_pct(lat_read, 50)), read_p99_ms=ms(_pct(lat_read, 99)),
               wall=t1 - t0, server_cpu=cpu1 - cpu0, client_cpu=client_cpu,
               sender_cpu=s.get("cpu", 0), rss_before_kb=rss0, rss_receivers_kb=rss1,
               rss_peak_kb=rss_peak,
               # The lines that took longest to reach their last receiver
               # (line number, worst and best arrival in ms): a stall of
               # the server shows as one line late at every receiver.
               worst_lines=[(q, round(v[0] / 1e6, 2), round(v[1] / 1e6, 2)) for q, v in
                            sorted(per_line.items(), key=lambda kv: -kv[1][0])[:5]])
    rec["ok"] = sent > 0 and rec["lost"] == 0 and rec["failed"] == 0
    rec["other_cores"] = max(0.0, (busy1 - busy0) - rec["server_cpu"] - client_cpu - rec["sender_cpu"]) / (t1 - t0)
    emit(a.out, **rec)
    log(f"live {a.mode:5} {len(recvs)} receivers, {sent} lines sent: arrival p50 "
        f"{rec['arrival_p50_ms'] or 0:.3f} ms p99 {rec['arrival_p99_ms'] or 0:.3f} ms; read p50 "
        f"{rec['read_p50_ms'] or 0:.3f} p99 {rec['read_p99_ms'] or 0:.3f} ms; lost {rec['lost']} "
        f"({rec['receivers_with_loss']} receivers), failed {rec['failed']} {rec['errors_seen'] or ''}; "
        f"server {rec['server_cpu']:.2f}s cpu, RSS {rss0 / 1024:.1f} -> {rss1 / 1024:.1f} "
        f"(peak {rss_peak / 1024:.1f}) MB; client {client_cpu:.2f}s, sender {rec['sender_cpu']:.2f}s "
        f"(others {rec['other_cores']:.2f} cores); slowest lines (number, worst/best ms): "
        + ", ".join(f"{q} {w}/{b}" for q, w, b in rec["worst_lines"]))


# --------------------------------------------------------------- figure 12

# (a) Many transfers at once on one server: N pairs on N distinct paths.
# Each pair's receiver connects and sends its GET, its sender connects and
# sends its POST head (Content-Length, no body yet); no sender sends a byte
# of its body until all 2 x N connections are open at the client and the
# server holds them all (its open files counted in /proc/PID/fd). Then every
# sender sends its body (distinct bytes: SHAKE-128 of the path's index) and
# every receiver hashes what it gets with SHA-256 and compares it with the
# digest of what its sender sent.

FD_SPARE = 100  # open files a process needs besides the 2 x N sockets


def proc_cpu_ns(pid):
    """CPU seconds of a live process (all its threads, those gone included),
    to the nanosecond: the process's CPU-time clock (clockid
    MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)); /proc/PID/stat's 10 ms
    ticks if that clock cannot be read."""
    try:
        return time.clock_gettime(((~pid) << 3) | 2)
    except OSError:
        return proc_cpu(pid)


def proc_status_kb(pid, key):
    """A `key: N kB` line of /proc/PID/status (VmRSS, VmHWM), or None."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def proc_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def proc_nofile(pid):
    """The soft open-file limit of a process (None: unlimited or unknown)."""
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                v = line.split()[3]
                return int(v) if v.isdigit() else None
    return None


def raise_nofile(need):
    """Raises this process's soft open-file limit towards `need`, at most to
    the hard limit; returns (soft limit now, hard limit)."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need if hard == resource.RLIM_INFINITY else min(need, hard)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        soft = want
    return soft, hard


def body12_size(i, lo, hi):
    seed = f"tubes-bench-12-{i}".encode()
    return lo + int.from_bytes(hashlib.sha256(seed).digest()[:4], "big") % (hi - lo + 1)


def body12(i, lo, hi):
    """The bytes pair i sends: lo..hi of them, from SHAKE-128 of its index."""
    return hashlib.shake_128(f"tubes-bench-12-{i}".encode()).digest(body12_size(i, lo, hi))


async def _read_hashed(reader):
    """One HTTP/1.1 response (the request said Connection: close), its body
    hashed as it comes: (status, body bytes, sha256 hex, complete). A body
    with Content-Length or chunked framing is complete when all of it came;
    one delimited by the close, when the close came."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode(errors="replace").split("\r\n")
    status = int(lines[0].split()[1])
    h = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        if k:
            h[k.strip().lower()] = v.strip()
    sha, n = hashlib.sha256(), 0
    if "content-length" in h:
        want = int(h["content-length"])
        while n < want:
            chunk = await reader.read(min(65536, want - n))
            if not chunk:
                return status, n, sha.hexdigest(), False
            sha.update(chunk)
            n += len(chunk)
        return status, n, sha.hexdigest(), True
    if h.get("transfer-encoding", "").lower() == "chunked":
        while True:
            try:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    return status, n, sha.hexdigest(), True
                data = await reader.readexactly(size + 2)
            except (asyncio.IncompleteReadError, ValueError):
                return status, n, sha.hexdigest(), False
            sha.update(data[:-2])
            n += size
    while True:
        chunk = await reader.read(65536)
        if not chunk:
            return status, n, sha.hexdigest(), True
        sha.update(chunk)
        n += len(chunk)


OPENERS = 256  # connects in flight at once (listen queues)
# The client's connections come from 16 loopback addresses (127.0.0.2-17):
# from one address, 2 x N connections to one server port take most of the
# 28,232 ephemeral ports, and the kernel's search for a free one in
# connect() grows with every port taken (at 19,900 connections the client
# spent ~16 s of system time opening them). IP_BIND_ADDRESS_NO_PORT lets
# connect() pick the port, by the whole address pair.
SOURCES = 16
IP_BIND_ADDRESS_NO_PORT = 24  # <linux/in.h>


async def _connect12(port, k):
    s = socket.socket()
    s.setblocking(False)
    try:
        try:
            s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            s.bind((f"127.0.0.{2 + k % SOURCES}", 0))
        except OSError:
            pass  # connect from the default address then
        await asyncio.get_running_loop().sock_connect(s, (HOST, port))
    except BaseException:
        s.close()
        raise
    return await asyncio.open_connection(sock=s)


async def _open12(a, i, path):
    """Pair i's two connections: the receiver's GET, then the sender's POST
    head (Content-Length, no body yet). Returns (rr, rw, sr, sw, size)."""
    size = body12_size(i, a.min_bytes, a.max_bytes)
    rr, rw = await _connect12(a.port, i)
    try:
        rw.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        await rw.drain()
        sr, sw = await _connect12(a.port, i)
    except BaseException:
        rw.close()
        raise
    try:
        sw.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
                 f"Content-Length: {size}\r\nConnection: close\r\n\r\n".encode())
        await sw.drain()
    except BaseException:
        rw.close()
        sw.close()
        raise
    return rr, rw, sr, sw, size


def _kind(e):
    if isinstance(e, asyncio.TimeoutError):
        return "timed out"
    return type(e).__name__ + (f": {e}"[:50] if str(e) else "")


async def _transfer12(a, i, conn):
    """Pair i's transfer on its open connections: (error or None, mismatch,
    time the receiver had all)."""
    rr, rw, sr, sw, size = conn
    try:
        body = body12(i, a.min_bytes, a.max_bytes)
        sent = hashlib.sha256(body).hexdigest()

        async def send():
            sw.write(body)
            await sw.drain()
            resp = await sr.read()  # the server's log to the sender, to its end
            if not resp.startswith(b"HTTP/1.1 200"):
                raise RuntimeError("sender got " + resp[:12].decode(errors="replace"))

        async def recv():
            status, n, digest, complete = await _read_hashed(rr)
            t_end = time.perf_counter()
            if status != 200:
                raise RuntimeError(f"receiver got {status}")
            if not complete:
                raise RuntimeError("receiver: body cut short")
            return n, digest, t_end

        res = await asyncio.gather(send(), recv(), return_exceptions=True)
        errs = [r for r in res if isinstance(r, BaseException)]
        if errs:
            return _kind(errs[0]), False, None
        n, digest, t_end = res[1]
        return None, n != size or digest != sent, t_end
    finally:
        rw.close()
        sw.close()


async def _concurrent(a, count):
    import resource
    pid = a.pid
    tag = f"{random.getrandbits(48):x}"
    time.sleep(0.5)
    rss0, fds0 = proc_status_kb(pid, "VmRSS"), proc_fds(pid)
    out = [None] * count  # per pair: (error or None, mismatch, end time)
    conns = [None] * count
    # RSS sampled by a thread (the event loop is busy); VmHWM gives the
    # fresh server's peak too.
    samples, stop = [], threading.Event()

    def sample():
        while not stop.is_set():
            try:
                samples.append(proc_status_kb(pid, "VmRSS"))
            except (OSError, TypeError):
                return
            stop.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    drops0 = listen_drops()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    cpu0, busy0 = proc_cpu_ns(pid), busy_seconds()
    t0 = time.perf_counter()
    sampler.start()
    deadline = time.monotonic() + a.max_time
    todo = iter(range(count))

    async def opener():
        # A fixed set of openers, each taking the next pair (a semaphore
        # with thousands of waiters costs O(waiters) per acquire in 3.11).
        for i in todo:
            try:
                conns[i] = await asyncio.wait_for(_open12(a, i, f"/c12-{tag}-{i}"),
                                                  max(0.01, deadline - time.monotonic()))
            except Exception as e:
                out[i] = ("open: " + _kind(e), False, None)

    await asyncio.gather(*(opener() for _ in range(min(OPENERS, count))))
    opened = sum(1 for c in conns if c)
    # Wait (at most 10 s) until the server holds every connection opened.
    wait_until, fds_open = time.monotonic() + 10, proc_fds(pid) - fds0
    while fds_open < 2 * opened and time.monotonic() < wait_until:
        await asyncio.sleep(0.05)
        fds_open = proc_fds(pid) - fds0
    rss_open = proc_status_kb(pid, "VmRSS")
    # Who worked how much while opening (the rest is the transfers).
    cpu_open, ru_open = proc_cpu_ns(pid) - cpu0, resource.getrusage(resource.RUSAGE_SELF)
    t_release = time.perf_counter()
    # Now every sender sends its body.
    idx = [i for i in range(count) if conns[i]]
    results = await asyncio.gather(
        *(asyncio.wait_for(_transfer12(a, i, conns[i]), max(0.01, deadline - time.monotonic()))
          for i in idx), return_exceptions=True)
    for i, r in zip(idx, results):
        out[i] = ("transfer: " + _kind(r), False, None) if isinstance(r, BaseException) else r
    conns = None
    t_all = time.perf_counter()
    cpu1, busy1 = proc_cpu_ns(pid), busy_seconds()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    stop.set()
    sampler.join(1)
    hwm = proc_status_kb(pid, "VmHWM")
    drops = listen_drops() - drops0
    kinds, mismatches, ends = {}, 0, []
    for err, mism, t_end in (o or ("lost", False, None) for o in out):
        if err:
            kinds[err] = kinds.get(err, 0) + 1
        elif mism:
            mismatches += 1
        else:
            ends.append(t_end)
    t_end = max(ends) if ends else t_all
    after = {}
    for at in (1.0, 5.0):
        time.sleep(max(0, t_all + at - time.perf_counter()))
        after[str(int(at))] = proc_status_kb(pid, "VmRSS")
    fds_after = proc_fds(pid) - fds0
    client_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    total_bytes = sum(body12_size(i, a.min_bytes, a.max_bytes) for i in range(count))
    rec = dict(fig="concurrent", server=a.server, count=count, asked=a.count, opened=opened,
               open_failed=count - opened, completed=len(ends), errors=sum(kinds.values()),
               error_kinds=kinds, mismatches=mismatches, bytes=total_bytes,
               min_bytes=a.min_bytes, max_bytes=a.max_bytes,
               wall=t_end - t0, open_seconds=t_release - t0, transfer_seconds=t_end - t_release,
               server_cpu=cpu1 - cpu0, client_cpu=client_cpu, listen_drops=drops,
               server_cpu_open=cpu_open,
               client_cpu_open=(ru_open.ru_utime - ru0.ru_utime) + (ru_open.ru_stime - ru0.ru_stime),
               server_fds_open=fds_open, server_fds_after=fds_after,
               rss_before_kb=rss0, rss_open_kb=rss_open,
               rss_peak_kb=max([x for x in samples if x] + [hwm or 0, rss_open or 0]),
               rss_hwm_kb=hwm, rss_after_kb=after)
    rec["ok"] = rec["completed"] == count and mismatches == 0
    rec["other_cores"] = max(0.0, (busy1 - busy0) - rec["server_cpu"] - client_cpu) / max(t_all - t0, 1e-9)
    emit(a.out, **rec)
    log(f"{a.server:5} {count} concurrent transfers ({total_bytes / 1e6:.0f} MB): "
        f"{len(ends)} complete, {rec['errors']} errors {kinds or ''}, {mismatches} sha256 mismatches; "
        f"wall {rec['wall']:.2f}s (opening {rec['open_seconds']:.2f}s, transfers {rec['transfer_seconds']:.2f}s); "
        f"server held {fds_open} sockets when the bodies were released; server CPU {rec['server_cpu']:.2f}s, "
        f"(opening {cpu_open:.2f}s), "
        f"RSS {rss0 / 1024:.1f} -> {rss_open / 1024:.1f} (all open) -> peak {rec['rss_peak_kb'] / 1024:.1f} MB, "
        f"after {after} KB, {fds_after} sockets left; client CPU {client_cpu:.2f}s "
        f"(opening {rec['client_cpu_open']:.2f}s); "
        f"listen queue drops {drops} (others {rec['other_cores']:.2f} cores)")


def cmd_concurrent(a):
    need = 2 * a.count + FD_SPARE
    soft, hard = raise_nofile(need)
    limits = [("this client's", soft)]
    srv = proc_nofile(a.pid)
    if srv is not None:
        limits.append((f"the {a.server} server's", srv))
    count = a.count
    for who, lim in limits:
        if 2 * count + FD_SPARE > lim:
            count = max(1, (lim - FD_SPARE) // 2)
            log(f"{who} open-file limit is {lim} (hard limit here {hard}): "
                f"{count} transfers instead of {a.count}")
    log(f"{a.server}: {count} concurrent transfers ({2 * count} connections), "
        f"{a.min_bytes}-{a.max_bytes} bytes each")
    # Python's cycle collector walks every live object each full pass, and
    # 2 x N streams make many: off for the run (all is freed by refcount).
    import gc
    gc.disable()
    try:
        asyncio.run(_concurrent(a, count))
    finally:
        gc.enable()


# (b) The cost of auth per request: figure 4's sequential transfers (POST,
# then GET on the same fresh path), both requests with the same credentials.


def bcrypt_hash(password, cost):
    """(a bcrypt hash of password, how it was made) or (None, why not):
    `htpasswd -nbBC` if it is installed, else crypt(3) of the system's
    libcrypt (libxcrypt knows bcrypt) through ctypes."""
    import shutil
    if shutil.which("htpasswd"):
        p = subprocess.run(["htpasswd", "-nbBC", str(cost), "u", password],
                           capture_output=True, text=True)
        h = p.stdout.strip().partition(":")[2]
        if p.returncode == 0 and h.startswith("$2"):
            return h, "htpasswd -nbB"
    try:
        lib = ctypes.CDLL("libcrypt.so.1")
        lib.crypt_gensalt.restype = ctypes.c_char_p
        lib.crypt_gensalt.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_int]
        lib.crypt.restype = ctypes.c_char_p
        lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        setting = lib.crypt_gensalt(b"$2b$", cost, None, 0)
        h = lib.crypt(password.encode(), setting) if setting else None
        if h and h.startswith(b"$2"):
            return h.decode(), "libcrypt crypt(3)"
        return None, "libcrypt has no bcrypt and htpasswd is not installed"
    except (OSError, AttributeError) as e:
        return None, f"no htpasswd and no libcrypt.so.1 ({e})"


def hs256_jwt(secret, claims):
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")
    part = lambda d: b64(json.dumps(d, separators=(",", ":")).encode())
    signing_input = part({"alg": "HS256", "typ": "JWT"}) + b"." + part(claims)
    sig = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + b64(sig)).decode()


AUTH_PREFIX = "/auth12/"  # credentials needed (any valid one)
OPEN_PREFIX = "/open12/"  # open to anyone, on the server with [auth] too
COLD_USERS = 3  # Basic users whose first request is timed (one bcrypt check each)


def cmd_authconfig(a):
    """Writes figure 12's settings file (DIR/auth12.toml: a token, Basic
    users, an HS256 secret, rules) and the credentials (DIR/auth12.json)."""
    token = os.urandom(16).hex()
    creds = dict(token=token, jwt_secret=os.urandom(24).hex(), cost=a.cost, users=[])
    users = [("bench", os.urandom(8).hex())] + [(f"cold{k}", os.urandom(8).hex()) for k in range(COLD_USERS)]
    lines = ["# Figure 12 (b) of bench/: written by `bench.py authconfig`.", "[auth]", "",
             "[[auth.tokens]]", 'name = "bench-token"',
             f'token_sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"', ""]
    for name, pw in users:
        h, how = bcrypt_hash(pw, a.cost)
        if h is None:
            creds["basic_skipped"] = how
            log(f"Basic auth left out: {how}")
            break
        creds["hash_how"] = how
        creds["users"].append([name, pw])
        lines += ["[[auth.users]]", f'name = "{name}"', f"password_bcrypt = '{h}'", ""]
    lines += ["[auth.jwt]", f'hs256_secret = "{creds["jwt_secret"]}"', "",
              "[[auth.rules]]", 'prefix = "/"', 'send = ["anyone"]', 'receive = ["anyone"]', "",
              "[[auth.rules]]", f'prefix = "{AUTH_PREFIX}"', 'send = ["authenticated"]',
              'receive = ["authenticated"]', ""]
    with open(os.path.join(a.dir, "auth12.toml"), "w") as f:
        f.write("\n".join(lines))
    with open(os.path.join(a.dir, "auth12.json"), "w") as f:
        json.dump(creds, f)


def _status_of(port, request, timeout=5):
    """The status code the server answers a request with (its head only)."""
    s = socket.create_connection((HOST, port), timeout=timeout)
    try:
        s.sendall(request.encode())
        head = _recv_until(s, b"", b"\r\n", time.monotonic() + timeout)
        return int(head.split()[1])
    finally:
        s.close()


def cmd_authcost(a):
    with open(a.creds) as f:
        creds = json.load(f)
    now = int(time.time())
    jwt = hs256_jwt(creds["jwt_secret"], {"sub": "bench-jwt", "iat": now, "exp": now + 3600})
    bearer = lambda t: f"Authorization: Bearer {t}\r\n"
    basic = lambda u, p: "Authorization: Basic " + base64.b64encode(f"{u}:{p}".encode()).decode() + "\r\n"
    users = creds.get("users", [])
    # name -> (port, pid, path prefix, extra headers)
    variants = {
        "none": (a.plain_port, a.plain_pid, OPEN_PREFIX, ""),
        "open": (a.auth_port, a.auth_pid, OPEN_PREFIX, ""),
        "token": (a.auth_port, a.auth_pid, AUTH_PREFIX, bearer(creds["token"])),
        "jwt": (a.auth_port, a.auth_pid, AUTH_PREFIX, bearer(jwt)),
    }
    if users:
        variants["basic"] = (a.auth_port, a.auth_pid, AUTH_PREFIX, basic(*users[0]))
    tag = f"{random.getrandbits(48):x}"
    # Auth is on: no credentials, a wrong token, a wrong password -> 401.
    get = "GET {}{}-{} HTTP/1.1\r\nHost: x\r\n{}Connection: close\r\n\r\n"
    checks = {
        "no credentials": _status_of(a.auth_port, get.format(AUTH_PREFIX, tag, "nocred", "")),
        "wrong token": _status_of(a.auth_port, get.format(AUTH_PREFIX, tag, "badtok", bearer("x" * 32))),
        "wrong JWT": _status_of(a.auth_port, get.format(
            AUTH_PREFIX, tag, "badjwt", bearer(hs256_jwt("y" * 48, {"sub": "x", "exp": now + 60})))),
    }
    if users:
        checks["wrong password"] = _status_of(a.auth_port, get.format(
            AUTH_PREFIX, tag, "badpw", basic(users[0][0], "wrong")))
    log("refusals on the auth server: " + ", ".join(f"{k} -> {v}" for k, v in checks.items()))
    res = {k: dict(lat=[], errors=0, first_error=None, server_cpu=0.0) for k in variants}
    body = b"0123456789"
    for name, (port, pid, prefix, hdr) in variants.items():  # warm-up, not counted
        for w in range(20):
            try:
                one_transfer(f"{prefix}warm-{tag}-{name}-{w}", body, port=port, headers=hdr)
            except Exception as e:
                res[name]["first_error"] = res[name]["first_error"] or f"warm-up: {e!r}"
    # The first transfer with new Basic credentials: one bcrypt check (the
    # POST's; the GET finds the credentials remembered).
    cold = []
    for name, pw in users[1:]:
        try:
            cold.append(one_transfer(f"{AUTH_PREFIX}cold-{tag}-{name}", body, port=a.auth_port,
                                     headers=basic(name, pw)) * 1000)
        except Exception as e:
            log(f"cold Basic transfer for {name} failed: {e!r}")
    # Rounds, the variants in turn (rotated), so that other load hits all alike.
    rounds = max(1, min(10, a.count // 50))
    names = list(variants)
    import resource
    t_start = time.monotonic()
    busy0, ru0 = busy_seconds(), resource.getrusage(resource.RUSAGE_SELF)
    for rnd in range(rounds):
        n = a.count // rounds + (1 if rnd < a.count % rounds else 0)
        order = names[rnd % len(names):] + names[:rnd % len(names)]
        for name in order:
            port, pid, prefix, hdr = variants[name]
            r = res[name]
            cpu0 = proc_cpu_ns(pid)
            for k in range(n):
                if time.monotonic() - t_start > a.max_time:
                    r["errors"] += 1
                    r["first_error"] = r["first_error"] or "time budget exceeded"
                    continue
                try:
                    r["lat"].append(one_transfer(f"{prefix}t-{tag}-{name}-{rnd}-{k}",
                                                 os.urandom(5).hex().encode(), port=port, headers=hdr))
                except Exception as e:
                    r["errors"] += 1
                    r["first_error"] = r["first_error"] or repr(e)
            r["server_cpu"] += proc_cpu_ns(pid) - cpu0
    wall = time.monotonic() - t_start
    out = {}
    for name, r in res.items():
        lat = sorted(r["lat"])
        requests = 2 * len(lat)
        out[name] = dict(count=a.count, done=len(lat), errors=r["errors"], first_error=r["first_error"],
                         p50_ms=_pct(lat, 50) * 1000 if lat else None,
                         p99_ms=_pct(lat, 99) * 1000 if lat else None,
                         mean_ms=statistics.mean(lat) * 1000 if lat else None,
                         server_cpu=r["server_cpu"],
                         cpu_per_1000=r["server_cpu"] / requests * 1000 if requests else None)
        o = out[name]
        log(f"auth {name:5} p50 {o['p50_ms'] or 0:.3f} ms  p99 {o['p99_ms'] or 0:.3f} ms  "
            f"server CPU {o['server_cpu']:.3f}s = {o['cpu_per_1000'] or 0:.3f}s per 1,000 requests  "
            f"errors {o['errors']}" + (f" ({o['first_error']})" if o["first_error"] else ""))
    if cold:
        log(f"first Basic transfer of new credentials (bcrypt cost {creds['cost']}): "
            + ", ".join(f"{c:.1f}" for c in cold) + " ms")
    # CPU of everything but the two servers and this client: noise.
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    ours = (sum(r["server_cpu"] for r in res.values()) + (ru1.ru_utime - ru0.ru_utime)
            + (ru1.ru_stime - ru0.ru_stime))
    emit(a.out, fig="authcost", server="tubes", variants=out, checks=checks, cold_basic_ms=cold,
         cost=creds["cost"], hash_how=creds.get("hash_how"), basic_skipped=creds.get("basic_skipped"),
         rounds=rounds, wall=wall,
         other_cores=max(0.0, busy_seconds() - busy0 - ours) / max(wall, 1e-9))


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
    row("  same, --loopback-congestion system", med("tubes", "h1-sys", "server_cpu", "size"),
        med("socat", "h1", "server_cpu", "size"), med("npm", "h1", "server_cpu", "size"), "info")
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
    row("  same, --loopback-congestion system", med("tubes", "n3-sys", "server_cpu", "delivered"), None, n,
        "info")
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
        ("tls2t", "(c'') h2+TLS, tubes send --http2 -> curl h2", "info"),
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

    # 10. tunnels (Tubes column only; the reference is a direct connection)
    fig(10)

    def trecs(kind, mode):
        return [r for r in recs if r["fig"] == "tunnel" and r["kind"] == kind and r["mode"] == mode]

    def tmed(mode, f):
        rs = trecs("stream", mode)
        good = [r for r in rs if r["ok"]]
        if not good:
            return "fail" if rs else None
        return statistics.median(f(r) for r in good)

    def slash(*vals, nd=2):
        if not any(num(v) for v in vals):
            return vals[0]
        return " / ".join(fmt(v, nd) for v in vals)

    if any(r["fig"] == "tunnel" for r in recs):
        size10 = next((r["size"] for r in recs if r["fig"] == "tunnel" and r["kind"] == "stream"), 0)
        row(f"10 tunnels: socat -> tunnel client -> tubes serve -> tunnel server -> sink "
            f"({size10 / (1 << 20):.0f} MiB)", "", "", "", "")
        direct = tmed("direct", lambda r: r["mbps"])
        gib = lambda r: r["size"] / GIB
        fig10 = (("direct", "(a) direct loopback TCP, socat -> sink"),
                 ("plain", "(b) plain tunnel (one connection at a time)"),
                 ("mux", "(c) --mux tunnel"))
        for mode, label in fig10:
            if not trecs("stream", mode):
                continue
            t = tmed(mode, lambda r: r["mbps"])
            row(f"  {label} MB/s", t, None, None, "info", nd=0)
            if mode != "direct":
                row("    / direct", ratio(t, direct), None, None, "info")
            # On 2 cores the rate follows the CPU all of them need per GiB.
            row("    CPU s/GiB, all processes (sender, sink and any between)",
                tmed(mode, lambda r: sum(r["cpu"].values()) / gib(r)), None, None, "info")
            row("    CPU s/GiB: sender / sink", slash(
                tmed(mode, lambda r: r["cpu"]["sender"] / gib(r)),
                tmed(mode, lambda r: r["cpu"]["sink"] / gib(r))), None, None, "info")
            if mode == "direct":
                continue
            row("    CPU s/GiB: tunnel client / tubes serve / tunnel server", slash(
                *(tmed(mode, lambda r, k=k: r["cpu"][k] / gib(r))
                  for k in ("tunnel_client", "relay", "tunnel_server"))), None, None, "info")
        n_fail = sum(1 for r in recs if r["fig"] == "tunnel" and r["kind"] == "stream" and not r["ok"])
        row("  transfers failed", n_fail, None, None, "0", verdict(n_fail == 0), 0)
        row("  connection set-up, connect() -> first echoed byte, p50 / p99 ms", "", "", "", "")
        sd = trecs("setup", "direct")[-1:] or [None]
        for mode, label in (("direct", "(a) direct to the echo service"),
                            ("plain", "(b) plain tunnel to it"), ("mux", "(c) --mux tunnel to it")):
            su = trecs("setup", mode)
            if not su:
                continue
            su = su[-1]
            row(f"  {label}, {su['count']} connections (over 100 ms)",
                f"{slash(su['p50_ms'], su['p99_ms'], nd=3)} ({su.get('over_100ms', '?')})", None, None, "info")
            if mode != "direct" and sd[0]:
                row("    p50 / direct p50", ratio(su["p50_ms"], sd[0]["p50_ms"]), None, None, "info", nd=1)
        errs = [r["errors"] for r in recs if r["fig"] == "tunnel" and r["kind"] == "setup"]
        row("  set-up errors (direct, plain, mux)",
            " / ".join(str(r["errors"]) for m in TUNNEL_MODES for r in trecs("setup", m)[-1:]) or None,
            None, None, "0", verdict(sum(errs) == 0) if errs else None)

    # 11. WebSocket and SSE (Tubes column only)
    fig(11)
    ws = [r for r in recs if r["fig"] == "wsrtt"]
    lives = {m: ([r for r in recs if r["fig"] == "live" and r["mode"] == m] or [None])[-1]
             for m in ("sse", "plain")}
    if ws or any(lives.values()):
        row("11 WebSocket and live/SSE (one tubes serve)", "", "", "", "")
    if ws:
        w = ws[-1]
        row(f"  round trip of a 32-byte message, p50 / p99 ms ({w['ws']['count']} round trips)",
            "", "", "", "")
        fig11 = (("ws", "(a) ws=pair: A -> relay -> B -> relay -> A"),
                 ("http", "(b) HTTP: a PUT + a GET per message, each way"),
                 ("tcp", "(c) raw TCP echo on loopback, no relay"))
        for kind, label in fig11:
            r = w[kind]
            row(f"  {label}", slash(r["rtt_p50_ms"], r["rtt_p99_ms"], nd=3), None, None, "info")
            if kind != "tcp":
                row("    one way (A -> B; for HTTP: one message's PUT + GET)",
                    slash(r["one_p50_ms"], r["one_p99_ms"], nd=3), None, None, "info")
        row("  ws / HTTP round trip p50", ratio(w["ws"]["rtt_p50_ms"], w["http"]["rtt_p50_ms"]),
            None, None, "info")
        row("  ws / raw TCP echo round trip p50", ratio(w["ws"]["rtt_p50_ms"], w["tcp"]["rtt_p50_ms"]),
            None, None, "info")
        row("  round trips failed (ws, http, tcp)",
            " / ".join(str(w[k]["errors"]) for k in ("ws", "http", "tcp")), None, None, "0",
            verdict(all(w[k]["errors"] == 0 for k in ("ws", "http", "tcp"))))
    lv = next((x for x in lives.values() if x), None)
    if lv:
        row(f"  live fan-out: {lv['receivers']} receivers, {lv['rate']:g} lines/s for {lv['seconds']:g} s, "
            f"{lv['line_bytes']}-byte lines", "", "", "", "")
    for mode, label in (("sse", "(d) SSE receivers (Accept: text/event-stream)"),
                        ("plain", "(e) plain GET ?live receivers (raw bytes)")):
        L = lives[mode]
        if not L:
            continue
        row(f"  {label}, {L['sent']} lines", "", "", "", "")
        row("    write -> arrival at the receiving socket, p50 / p99 ms",
            slash(L["arrival_p50_ms"], L["arrival_p99_ms"], nd=2), None, None, "info")
        row("    write -> read by the client, p50 / p99 ms",
            slash(L["read_p50_ms"], L["read_p99_ms"], nd=2), None, None, "info")
        row("    lines lost (receivers with a loss)", f"{L['lost']} ({L['receivers_with_loss']})",
            None, None, "0", verdict(L["lost"] == 0 and L["sent"] > 0))
        row("    receivers failed / not ended", f"{L['failed']} / {L['not_ended']}", None, None, "0",
            verdict(L["failed"] == 0 and L["not_ended"] == 0))
        row("    server CPU s (cores)", f"{fmt(L['server_cpu'])} ({fmt(L['server_cpu'] / L['wall'])})",
            None, None, "info")
        row("    server RSS KB per receiver (joined - before) / N",
            (L["rss_receivers_kb"] - L["rss_before_kb"]) / max(1, L["opened"]), None, None, "info", nd=1)
        row("    server RSS MB: before / receivers joined / peak", slash(
            L["rss_before_kb"] / 1024, L["rss_receivers_kb"] / 1024, L["rss_peak_kb"] / 1024, nd=1),
            None, None, "info")
        row("    client CPU s: receivers (one Python process) / sender",
            slash(L["client_cpu"], L["sender_cpu"]), None, None, "info")
    if lives["sse"] and lives["plain"]:
        S, Pl = lives["sse"], lives["plain"]
        row("  SSE / plain: arrival p50", ratio(S["arrival_p50_ms"], Pl["arrival_p50_ms"]), None, None, "info")
        row("  SSE / plain: server CPU", ratio(S["server_cpu"], Pl["server_cpu"]), None, None, "info")

    # 12. many transfers at once (beside npm); the cost of auth (Tubes only)
    fig(12)
    ct, cn = one("concurrent", "tubes"), one("concurrent", "npm")
    if ct or cn:
        c = ct or cn
        asked = f" ({c['asked']:,} asked)" if c["count"] != c["asked"] else ""
        row(f"12 {c['count']:,} concurrent transfers{asked}, {c['min_bytes'] >> 10}-{c['max_bytes'] >> 10} KiB, "
            f"sha256-checked", "", "", "", "")
        row(f"  {c['count'] * 2:,} connections at once, {c['bytes'] / 1e6:.0f} MB; fresh server each",
            "", "", "", "")
        row("  wall s: first connect -> last receiver done", wv(ct, lambda r: r["wall"]), None,
            wv(cn, lambda r: r["wall"]), "info", nd=2)
        row("    opening: until the server holds every connection", wv(ct, lambda r: r["open_seconds"]),
            None, wv(cn, lambda r: r["open_seconds"]), "info", nd=2)
        row("    transfers: bodies released -> last receiver done",
            wv(ct, lambda r: r["transfer_seconds"]), None, wv(cn, lambda r: r["transfer_seconds"]),
            "info", nd=2)
        row("  transfers complete and matching", wv(ct, lambda r: r["completed"] - r["mismatches"]), None,
            wv(cn, lambda r: r["completed"] - r["mismatches"]), "all",
            verdict(ct["ok"]) if ct else None, 0)
        row("  errors (either side, any kind)", wv(ct, lambda r: r["errors"]), None,
            wv(cn, lambda r: r["errors"]), "0", verdict(ct["errors"] == 0) if ct else None, 0)
        row("  sha256 mismatches", wv(ct, lambda r: r["mismatches"]), None,
            wv(cn, lambda r: r["mismatches"]), "0", verdict(ct["mismatches"] == 0) if ct else None, 0)
        row("  server sockets when the bodies were released", wv(ct, lambda r: r["server_fds_open"]), None,
            wv(cn, lambda r: r["server_fds_open"]), "info", nd=0)
        row("  server peak RSS MB", wv(ct, lambda r: r["rss_peak_kb"] / 1024), None,
            wv(cn, lambda r: r["rss_peak_kb"] / 1024), "info", nd=1)
        row("    RSS MB before / all open / 1 s / 5 s after",
            wv(ct, lambda r: slash(r["rss_before_kb"] / 1024, r["rss_open_kb"] / 1024,
                                   r["rss_after_kb"]["1"] / 1024, r["rss_after_kb"]["5"] / 1024, nd=1)),
            None,
            wv(cn, lambda r: slash(r["rss_before_kb"] / 1024, r["rss_open_kb"] / 1024,
                                   r["rss_after_kb"]["1"] / 1024, r["rss_after_kb"]["5"] / 1024, nd=1)),
            "info")
        row("    (peak - before) KB per transfer",
            wv(ct, lambda r: (r["rss_peak_kb"] - r["rss_before_kb"]) / r["count"]), None,
            wv(cn, lambda r: (r["rss_peak_kb"] - r["rss_before_kb"]) / r["count"]), "info", nd=1)
        row("  server CPU s", wv(ct, lambda r: r["server_cpu"]), None, wv(cn, lambda r: r["server_cpu"]),
            "info")
        row("    per GB relayed", wv(ct, lambda r: r["server_cpu"] / (r["bytes"] / 1e9)), None,
            wv(cn, lambda r: r["server_cpu"] / (r["bytes"] / 1e9)), "info")
        row("  client CPU s (one Python process)", wv(ct, lambda r: r["client_cpu"]), None,
            wv(cn, lambda r: r["client_cpu"]), "info")
        row("  listen queue drops (kernel)", wv(ct, lambda r: r["listen_drops"]), None,
            wv(cn, lambda r: r["listen_drops"]), "info", nd=0)
        row("  server sockets left 5 s after", wv(ct, lambda r: r["server_fds_after"]), None,
            wv(cn, lambda r: r["server_fds_after"]), "0", verdict(ct["server_fds_after"] <= 0) if ct else None, 0)
    au = one("authcost", "tubes")
    if au:
        V = au["variants"]
        base = V.get("none")
        row(f"12 cost of auth: {base['count'] if base else '?'} transfers of each kind (figure 4's)",
            "", "", "", "")
        row("  credentials on both the POST and the GET; p50 / p99 ms", "", "", "", "")
        labels = (("none", "(0) no auth (tubes serve without [auth])"),
                  ("open", "(1) [auth] on, path open to anyone"),
                  ("token", "(a) Bearer token (looked up by SHA-256)"),
                  ("jwt", "(b) Bearer HS256 JWT (verified each time)"),
                  ("basic", f"(c) Basic, bcrypt cost {au['cost']} (then remembered)"))
        for name, label in labels:
            v = V.get(name)
            if v is None:
                if name == "basic":
                    row(f"  (c) Basic: left out ({au.get('basic_skipped') or 'no users'})", "", "", "", "")
                continue
            row(f"  {label}", slash(v["p50_ms"], v["p99_ms"], nd=3), None, None, "info")
            row("    server CPU s per 1,000 requests", v["cpu_per_1000"], None, None, "info", nd=3)
            if name != "none" and base:
                row("    / no auth: p50 / p99 / CPU", slash(
                    ratio(v["p50_ms"], base["p50_ms"]), ratio(v["p99_ms"], base["p99_ms"]),
                    ratio(v["cpu_per_1000"], base["cpu_per_1000"])), None, None, "info")
        if au.get("cold_basic_ms"):
            row(f"  first transfer of a new Basic user (bcrypt), ms ({len(au['cold_basic_ms'])})",
                slash(*sorted(au["cold_basic_ms"]), nd=1), None, None, "info")
        ch12 = au.get("checks", {})
        row("  refused: " + " / ".join(k.replace("wrong", "bad") for k in ch12),
            " / ".join(str(x) for x in ch12.values()), None, None,
            "401 each", verdict(all(x == 401 for x in ch12.values())))
        row("  transfer errors (" + ", ".join(V) + ")", " / ".join(str(v["errors"]) for v in V.values()),
            None, None, "0", verdict(all(v["errors"] == 0 for v in V.values())))

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
    other = [r["other_cores"] for r in recs
             if r["fig"] in ("stream", "client", "tunnel", "live", "wsrtt", "concurrent", "authcost")
             and "other_cores" in r and r.get("tag", "big") == "big"]
    if other:
        o = statistics.median(other)
        out.append("CPU used by other processes during the stream, client, tunnel, round-trip, live,"
                   f" concurrent and auth runs: median {o:.2f}, max {max(other):.2f} cores"
                   + ("  (busy machine: throughput figures are noisy)" if o > 0.15 else ""))
    failed10 = [r for r in recs if r["fig"] == "tunnel" and r["kind"] == "stream" and not r["ok"]]
    if failed10:
        out.append("failed tunnel transfers (figure 10): " + ", ".join(
            f"{r['mode']} (sender rc {r.get('sender_rc')}, {r['delivered']} of {r['size']} bytes)"
            for r in failed10))
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
            q.add_argument("--sender", default="h1",
                           choices=sorted(CURL_PROTO_FLAGS) + ["h3", "th2tls"])
            q.add_argument("--receiver", default="h1", choices=sorted(CURL_PROTO_FLAGS) + ["h3"])
            q.add_argument("--tls-port", type=int, help="the HTTPS (TCP) and HTTP/3 (UDP) port")
            q.add_argument("--h3-client", help="path of the built examples/h3_client")
            q.add_argument("--h3-threads", type=int, default=1, help="its runtime's worker threads")
            q.add_argument("--tubes", help="path of the tubes binary (sender th2tls)")
        if name == "socat":
            q.add_argument("--buf", type=int, default=65536)
        if name in ("waiters", "latency", "pairs"):
            q.add_argument("--count", type=int, required=True)
        if name == "waiters":
            q.add_argument("--settle", type=float, default=12)
    sv = sub.add_parser("service"); sv.add_argument("--kind", required=True, choices=("sink", "echo"))
    ls = sub.add_parser("live-send")
    ls.add_argument("--port", type=int, required=True); ls.add_argument("--path", required=True)
    ls.add_argument("--rate", type=float, required=True); ls.add_argument("--seconds", type=float, required=True)
    ls.add_argument("--line-bytes", type=int, default=64)
    for name in ("tunnel", "wsrtt", "live"):
        q = sub.add_parser(name)
        q.add_argument("--out", required=True)
        q.add_argument("--port", type=int, required=True, help="tubes serve's plain HTTP port")
        q.add_argument("--pid", type=int, required=True, help="tubes serve's pid")
        q.add_argument("--max-time", type=float, default=120)
        if name == "tunnel":
            q.add_argument("--file", required=True)
            q.add_argument("--tubes", required=True, help="path of the tubes binary")
            q.add_argument("--reps", type=int, default=3)
            q.add_argument("--conns", type=int, default=200, help="set-up: connections (plain: a quarter)")
            q.add_argument("--log-dir", required=True, help="where the tunnels' logs go")
        if name == "wsrtt":
            q.add_argument("--count", type=int, default=2000)
            q.add_argument("--warm", type=int, default=20)
        if name == "live":
            q.add_argument("--mode", required=True, choices=("sse", "plain"))
            q.add_argument("--receivers", type=int, default=1000)
            q.add_argument("--rate", type=float, default=20, help="lines per second")
            q.add_argument("--seconds", type=float, default=10)
            q.add_argument("--line-bytes", type=int, default=64)
    q = sub.add_parser("concurrent")
    q.add_argument("--out", required=True)
    q.add_argument("--server", required=True)
    q.add_argument("--port", type=int, required=True)
    q.add_argument("--pid", type=int, required=True)
    q.add_argument("--count", type=int, default=10000, help="pairs (2 connections each)")
    q.add_argument("--min-bytes", type=int, default=16 << 10)
    q.add_argument("--max-bytes", type=int, default=64 << 10)
    q.add_argument("--max-time", type=float, default=120)
    q = sub.add_parser("authconfig")
    q.add_argument("--dir", required=True, help="where auth12.toml and auth12.json go")
    q.add_argument("--cost", type=int, default=10, help="bcrypt cost of the Basic users' hashes")
    q = sub.add_parser("authcost")
    q.add_argument("--out", required=True)
    q.add_argument("--creds", required=True, help="auth12.json from authconfig")
    q.add_argument("--plain-port", type=int, required=True, help="tubes serve without [auth]")
    q.add_argument("--plain-pid", type=int, required=True)
    q.add_argument("--auth-port", type=int, required=True, help="tubes serve --config auth12.toml")
    q.add_argument("--auth-pid", type=int, required=True)
    q.add_argument("--count", type=int, default=1000)
    q.add_argument("--max-time", type=float, default=120)
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
        globals()["cmd_" + a.cmd.replace("-", "_")](a)


if __name__ == "__main__":
    main()
