#!/usr/bin/env python3
"""A/B of two `tubes` binaries on the same machine hour: one sender
(`curl -T file`) to N receivers (`curl`) on `?n=N`, 1 GiB by default,
batches interleaved A, B, A, B ... so that drift hits both alike. Prints
each batch's server CPU seconds (utime+stime from /proc) and wall time,
and the medians.

    python3 bench/ab.py target-old/release/tubes target/release/tubes
    python3 bench/ab.py --n 1 --batches 5 OLD NEW
    python3 bench/ab.py --b-args="--loopback-congestion system" T T   # one build, two settings
"""

import argparse
import os
import random
import shlex
import socket
import statistics
import subprocess
import tempfile
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, limit=20.0):
    end = time.time() + limit
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"no server on port {port}")


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def transfer(port, pid, n, file, size):
    path = f"/ab-{random.getrandbits(48):x}" + (f"?n={n}" if n != 1 else "")
    url = f"http://127.0.0.1:{port}{path}"
    receivers = [subprocess.Popen(["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download}", url],
                                  stdout=subprocess.PIPE) for _ in range(n)]
    time.sleep(0.3)  # the receivers register first
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    subprocess.run(["curl", "-sS", "-o", "/dev/null", "-T", file, url], check=True)
    got = [int(r.communicate()[0] or 0) for r in receivers]
    wall = time.perf_counter() - t0
    time.sleep(0.05)
    cpu = cpu_seconds(pid) - cpu0
    if any(g != size for g in got):
        raise SystemExit(f"a receiver got {got}, not {size}")
    return cpu, wall


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--n", type=int, default=3, help="receivers (default 3)")
    ap.add_argument("--gib", type=float, default=1.0, help="file size in GiB (default 1)")
    ap.add_argument("--batches", type=int, default=3, help="batches per binary (default 3)")
    ap.add_argument("--reps", type=int, default=3, help="transfers per batch (default 3)")
    ap.add_argument("--a-args", default="", help="more `tubes serve` flags for A (one string)")
    ap.add_argument("--b-args", default="", help="more `tubes serve` flags for B (one string)")
    args = ap.parse_args()

    size = int(args.gib * (1 << 30))
    where = "/dev/shm" if os.path.isdir("/dev/shm") else None
    fd, file = tempfile.mkstemp(prefix="tubes-ab-", dir=where)
    servers = []
    try:
        with os.fdopen(fd, "wb") as f:
            chunk = os.urandom(1 << 20)
            for _ in range(size >> 20):
                f.write(chunk)
            f.write(chunk[: size & ((1 << 20) - 1)])
        for label, binary, extra in (("A", args.a, args.a_args), ("B", args.b, args.b_args)):
            port = free_port()
            proc = subprocess.Popen([binary, "serve", "--host", "127.0.0.1", "--http-port", str(port),
                                     *shlex.split(extra)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            servers.append((label, port, proc))
            wait_port(port)
            print(f"{label}: {binary} {extra}".rstrip())
        per = {label: [] for label, _, _ in servers}
        for batch in range(args.batches):
            for label, port, proc in servers:
                runs = sorted(transfer(port, proc.pid, args.n, file, size) for _ in range(args.reps))
                cpu, wall = runs[len(runs) // 2]
                per[label].append((cpu / args.gib, wall))
                print(f"batch {batch + 1} {label}: server CPU {cpu / args.gib:.2f} s per GiB sent, "
                      f"wall {wall:.2f} s (median of {', '.join(f'{c:.2f}/{w:.2f}' for c, w in runs)})",
                      flush=True)
        for label, results in per.items():
            cpu = statistics.median(c for c, _ in results)
            wall = statistics.median(w for _, w in results)
            print(f"{label}: median server CPU {cpu:.2f} s per GiB sent "
                  f"({cpu / args.n:.2f} per GiB delivered), median wall {wall:.2f} s")
    finally:
        for _, _, proc in servers:
            proc.kill()
            proc.wait()
        os.unlink(file)


if __name__ == "__main__":
    main()
