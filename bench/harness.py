#!/usr/bin/env python3
"""Measurement loops for scripts/bench-vs-openssh and scripts/bench-issuance.

The bash scripts set the services up (drawbridge, OpenSSH sshd, keys, configs) and call
this helper with a JSON parameter file; it measures, writes a JSON result file, and
renders the results table into bench/RESULTS.md. Standard library only.

Every wait here is bounded, and every process it starts is ended before it returns.
"""

import argparse
import json
import math
import os
import re
import selectors
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

MiB = 1024 * 1024


# ---------------------------------------------------------------------------------------
# Small helpers


def pct(xs, q):
    """Nearest-rank percentile (q in 0..1) of a non-empty list."""
    s = sorted(xs)
    if not s:
        return float("nan")
    k = min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))
    return s[k]


def log(msg):
    print(f"   {msg}", file=sys.stderr, flush=True)


def tree_pids(root):
    """`root` and all its descendants, from /proc."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: split after the last ')'.
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def memory_kb(root):
    """(PSS, RSS, process count) in kB of `root` and its descendants (smaps_rollup)."""
    pss = rss = n = 0
    for p in tree_pids(root):
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                text = f.read()
        except OSError:
            continue
        n += 1
        for line in text.splitlines():
            if line.startswith("Pss:"):
                pss += int(line.split()[1])
            elif line.startswith("Rss:"):
                rss += int(line.split()[1])
    return pss, rss, n


def tree_cpu_seconds(root):
    """CPU seconds (user + system) used so far by `root` and its descendants, including
    descendants that have exited: a process's own time is in its /proc/PID/stat while it
    lives (or is a zombie), and moves into its parent's cutime/cstime once reaped, so the
    sum of utime+stime+cutime+cstime over the live tree counts every process exactly once.
    For OpenSSH that is the listening sshd, its per-connection monitors and their
    unprivileged children; for drawbridge the one process."""
    total = 0
    for p in tree_pids(root):
        try:
            with open(f"/proc/{p}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += sum(int(x) for x in fields[11:15])
    return total / os.sysconf("SC_CLK_TCK")


def measured_cpu_seconds(pid, cgroup=""):
    """CPU seconds used so far by a measured process tree: from its cpuacct cgroup when
    the script could make one (nanoseconds; exited and orphaned processes included),
    else from /proc (`tree_cpu_seconds`)."""
    if cgroup:
        with open(os.path.join(cgroup, "cpuacct.usage")) as f:
            return int(f.read()) / 1e9
    return tree_cpu_seconds(pid)


def measured_user_sys(side):
    """(user, system) CPU seconds of a side measured in a cgroup, or None: how much of its
    time was its own code and how much the kernel's (socket copies, loopback delivery,
    wake-ups). Counted by clock ticks: use them as shares of `measured_cpu_seconds`."""
    cg = side.get("cgroup")
    if not cg:
        return None
    with open(os.path.join(cg, "cpuacct.usage_user")) as f:
        user = int(f.read())
    with open(os.path.join(cg, "cpuacct.usage_sys")) as f:
        sys_ = int(f.read())
    return user / 1e9, sys_ / 1e9


def machine_busy_ticks():
    """(busy, total) clock ticks of all CPUs so far, from the first line of /proc/stat:
    idle and iowait are the idle part."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    total = sum(ticks[:8])  # guest time is already inside user and nice
    return total - ticks[3] - ticks[4], total


def reap(procs, grace=5.0):
    """Terminates every process in `procs` and waits for them, bounded."""
    for p in procs:
        if p.poll() is None:
            try:
                p.terminate()
            except OSError:
                pass
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)
        for s in (p.stdin, p.stdout):
            if s:
                try:
                    s.close()
                except OSError:
                    pass


# ---------------------------------------------------------------------------------------
# Loopback servers: a sink (reads and discards, says "+" first) and a source (sends N
# bytes). Thread per connection: simple, and the GIL is released in the socket calls.


class Servers:
    """Runs in its own process (`harness.py servers`), so that moving bytes here never
    competes for the measuring process's interpreter lock. Each finished transfer is one
    line `sink|source BYTES SECONDS` in the stats file."""

    def __init__(self, sink_port, source_port, source_bytes, stats):
        self.source_bytes = source_bytes
        self.lock = threading.Lock()
        self.stats = open(stats, "a", buffering=1)
        self.listeners = []
        for port, handler in ((sink_port, self._sink), (source_port, self._source)):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            s.listen(4096)
            self.listeners.append(s)
            threading.Thread(target=self._accept, args=(s, handler), daemon=True).start()

    def _accept(self, s, handler):
        while True:
            try:
                c, _ = s.accept()
            except OSError:
                return
            threading.Thread(target=handler, args=(c,), daemon=True).start()

    def _record(self, kind, total, secs):
        with self.lock:
            self.stats.write(f"{kind} {total} {secs:.6f}\n")

    def _sink(self, c):
        buf = bytearray(1 * MiB)
        total, first = 0, None
        try:
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c.sendall(b"+")
            while True:
                n = c.recv_into(buf)
                if n == 0:
                    break
                if first is None:
                    first = time.perf_counter()
                total += n
            self._record("sink", total, (time.perf_counter() - first) if first else 0.0)
        except OSError:
            pass
        finally:
            c.close()

    def _source(self, c):
        chunk = memoryview(bytes(1 * MiB))
        left = self.source_bytes
        try:
            t = time.perf_counter()
            while left > 0:
                n = min(left, len(chunk))
                c.sendall(chunk[:n])
                left -= n
            c.shutdown(socket.SHUT_WR)
            c.settimeout(30)
            while c.recv(65536):  # the client's EOF: it has read everything
                pass
            self._record("source", self.source_bytes, time.perf_counter() - t)
        except OSError:
            pass
        finally:
            c.close()


def serve(args):
    Servers(args.sink_port, args.source_port, args.bytes, args.stats)
    deadline = time.monotonic() + args.max_seconds
    while time.monotonic() < deadline:
        time.sleep(1)


class ServersProcess:
    """The measuring side: starts `harness.py servers` and reads its stats file."""

    def __init__(self, p):
        self.stats = os.path.join(p["work"], "servers.stats")
        open(self.stats, "w").close()
        self.offset = 0
        self.proc = subprocess.Popen([
            sys.executable, os.path.abspath(__file__), "servers",
            "--sink-port", str(p["sink_port"]), "--source-port", str(p["source_port"]),
            "--bytes", str(p["bytes"]), "--stats", self.stats, "--max-seconds", "3600"])
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", p["sink_port"]), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        time.sleep(0.5)
        self.take_done()  # the probe above

    def take_done(self, kind=None):
        with open(self.stats) as f:
            f.seek(self.offset)
            text = f.read()
        # only whole lines
        cut = text.rfind("\n") + 1
        self.offset += len(text[:cut].encode())
        out = []
        for line in text[:cut].splitlines():
            k, b, t = line.split()
            if kind is None or k == kind:
                out.append((int(b), float(t)))
        return out

    def close(self):
        reap([self.proc])


# ---------------------------------------------------------------------------------------
# vs-openssh


class VsOpenssh:
    def __init__(self, p):
        self.p = p
        self.sides = p["sides"]  # [{"name", "label", "jump", "jump_gcm", "pid"}]
        self.err = open(os.path.join(p["work"], "ssh-client.err"), "ab")
        self.servers = ServersProcess(p)
        self.sink = f"127.0.0.1:{p['sink_port']}"
        self.source = f"127.0.0.1:{p['source_port']}"

    def ssh(self, cfg, *args):
        return ["ssh", "-F", cfg, *args]

    # -- connection latency --------------------------------------------------------------
    def connect_once(self, cfg, jump):
        t = time.perf_counter()
        r = subprocess.run(
            self.ssh(cfg, "-J", jump, "target", "true"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.err,
            timeout=30,
        )
        return time.perf_counter() - t, r.returncode == 0

    def direct_once(self, cfg):
        """`ssh target true` without a jump host: what the hop is compared with."""
        t = time.perf_counter()
        r = subprocess.run(self.ssh(cfg, "target", "true"), stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=self.err, timeout=30)
        return time.perf_counter() - t, r.returncode == 0

    def connection(self, cfg_key):
        cfg = self.p["ssh_config"][cfg_key]
        sides = self.sides + [{"name": "direct", "jump": None}]
        times = {s["name"]: [] for s in sides}
        fails = {s["name"]: 0 for s in sides}
        once = lambda s: self.direct_once(cfg) if s["jump"] is None else self.connect_once(cfg, s["jump"])
        for s in sides:  # warm-up, not counted
            once(s)
        for i in range(self.p["runs"]):
            order = sides if i % 2 == 0 else sides[::-1]
            for s in order:
                dt, ok = once(s)
                if ok:
                    times[s["name"]].append(dt)
                else:
                    fails[s["name"]] += 1
        out = {}
        for s in sides:
            t = times[s["name"]]
            out[s["name"]] = {
                "median_ms": pct(t, 0.5) * 1000 if t else None,
                "p90_ms": pct(t, 0.9) * 1000 if t else None,
                "runs": len(t),
                "failed": fails[s["name"]],
            }
        return out

    # -- throughput -----------------------------------------------------------------------
    def transfer(self, kind, jump):
        """MB/s of one transfer of `bytes`, as the loopback server timed it: the sink
        from its first byte to EOF (upload), the source from its first byte to the
        client's EOF after the last (download). `jump` None: raw TCP, no SSH."""
        n, port = self.p["bytes"], self.p[f"{kind}_port"]
        self.servers.take_done()
        if jump is None and kind == "sink":
            # read the sink's "+" first, so closing does not reset the connection
            cmd = (f"exec 3<>/dev/tcp/127.0.0.1/{port}; head -c 1 <&3 >/dev/null; "
                   f"head -c {n} /dev/zero >&3; exec 3>&-; sleep 0.2")
        elif jump is None:
            cmd = f"cat < /dev/tcp/127.0.0.1/{port} > /dev/null"
        else:
            target = self.sink if kind == "sink" else self.source
            ssh = " ".join(self.ssh(self.p["ssh_config"]["default"], "-W", target, jump))
            if kind == "sink":
                cmd = f"head -c {n} /dev/zero | {ssh} > /dev/null"
            else:
                cmd = f"{ssh} < /dev/null > /dev/null"
        proc = subprocess.Popen(["bash", "-c", cmd], stderr=self.err, start_new_session=True)
        try:
            proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            done = self.servers.take_done(kind)
            if done:
                total, secs = done[-1]
                if total != n or secs <= 0:
                    return None
                return total / secs / 1e6
            time.sleep(0.05)
        return None

    def upload(self, jump):
        return self.transfer("sink", jump)

    def download(self, jump):
        return self.transfer("source", jump)

    def throughput(self):
        out = {}
        reps = self.p["throughput_reps"]
        for direction, fn in (("up", self.upload), ("down", self.download)):
            raw = [fn(None) for _ in range(reps)]
            out[f"{direction}_tcp"] = max(x for x in raw if x) if any(raw) else None
            for cipher, key in (("chacha", "jump"), ("gcm", "jump_gcm")):
                res = {s["name"]: [] for s in self.sides}
                for i in range(reps):
                    order = self.sides if i % 2 == 0 else self.sides[::-1]
                    for s in order:
                        v = fn(s[key])
                        if v:
                            res[s["name"]].append(v)
                # tcp again, so the share is against the same moment's loopback
                out[f"{direction}_{cipher}"] = {
                    k: (sorted(v)[len(v) // 2] if v else None) for k, v in res.items()
                }
                log(f"throughput {direction} {cipher}: " + ", ".join(
                    f"{k} {v and round(sorted(v)[len(v)//2])} MB/s" for k, v in res.items()))
        return out

    # -- the user's path: `ssh -J JUMP target`, bytes from/to a command on the target -----
    # The receiving end counts from its first byte to its last: `dd` takes exactly one
    # byte, the clock starts, `wc -c` reads the rest to EOF, the clock stops.
    RECEIVE = ('dd bs=1 count=1 of=/dev/null status=none; s=$(date +%s%N); n=$(wc -c); '
               'e=$(date +%s%N); echo "$s $e $n"')

    def jump_transfer(self, direction, cipher, side):
        """One `ssh -J` transfer of `jump_bytes`; returns a dict with MB/s and the CPU
        seconds the jump host, the target's sshd and the client side used, or None."""
        n = self.p["jump_bytes"]
        names = {"chacha": "chacha20-poly1305@openssh.com", "gcm": "aes128-gcm@openssh.com"}
        # -o applies to the target hop only; the jump hop's cipher comes from the config
        # (drawbridge / drawbridge-gcm): both hops use the same cipher.
        if "proxy" in side:
            # the floor: no SSH on the hop, a plain TCP relay reached by ProxyCommand
            hop = ("-o", f"ProxyCommand={side['proxy']}")
        else:
            hop = ("-J", side["jump" if cipher == "chacha" else "jump_gcm"])
        ssh = " ".join(shlex.quote(a) for a in self.ssh(self.p["ssh_config"]["default"], "-o",
                                                         f"Ciphers={names[cipher]}", *hop, "target"))
        if direction == "down":
            cmd = f"{ssh} 'head -c {n} /dev/zero' | {{ {self.RECEIVE}; }}"
        else:
            cmd = f"head -c {n} /dev/zero | {ssh} '{self.RECEIVE}'"
        target = (self.p["target_pid"], self.p.get("target_cgroup", ""))
        client_cg = self.p.get("client_cgroup", "")
        jump0, target0 = measured_cpu_seconds(side["pid"], side.get("cgroup", "")), measured_cpu_seconds(*target)
        client0 = measured_cpu_seconds(0, client_cg) if client_cg else None
        split0 = measured_user_sys(side)
        # /proc/stat sampled every 20 ms, so that how busy the machine was can be read
        # over the transfer itself (first byte to last), without the two handshakes
        samples, stop = [], threading.Event()

        def sample():
            while not stop.is_set():
                samples.append((time.time_ns(), machine_busy_ticks()))
                stop.wait(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        ru0 = os.times()
        # the client side (its `ssh` processes, `head`/`wc`) in the client cgroup: bash
        # puts itself there before it starts them
        if client_cg:
            cmd = f"echo $$ > {shlex.quote(client_cg)}/cgroup.procs || exit 1; {cmd}"
        proc = subprocess.Popen(["bash", "-c", cmd], stdout=subprocess.PIPE, stderr=self.err,
                                start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return None
        ru1 = os.times()
        stop.set()
        sampler.join()
        # the jump host's and the target's per-connection processes end just after the client
        time.sleep(0.3)
        jump1, target1 = measured_cpu_seconds(side["pid"], side.get("cgroup", "")), measured_cpu_seconds(*target)
        client1 = measured_cpu_seconds(0, client_cg) if client_cg else None
        split1 = measured_user_sys(side)
        try:
            t0, t1, got = (int(x) for x in out.split()[-3:])
        except ValueError:
            return None
        if got + 1 != n or t1 <= t0:
            return None
        gib = n / (1024 * MiB)
        share = None
        if split0 and split1:
            ticks = [split1[i] - split0[i] for i in (0, 1)]
            if sum(ticks) > 0:
                share = lambda i: ticks[i] / sum(ticks)
        inside = [b for t, b in samples if t0 <= t <= t1]
        busy = ((inside[-1][0] - inside[0][0]) / max(1, inside[-1][1] - inside[0][1])
                if len(inside) >= 2 else None)
        return {
            "mb_s": n / ((t1 - t0) / 1e9) / 1e6,
            "jump_cpu_s_gib": (jump1 - jump0) / gib,
            "target_cpu_s_gib": (target1 - target0) / gib,
            "client_cpu_s_gib": (((ru1.children_user - ru0.children_user)
                                  + (ru1.children_system - ru0.children_system)) / gib
                                 if not client_cg else (client1 - client0) / gib),
            # the jump host's CPU split into its own code (user) and the kernel's (system)
            # (the kernel splits by clock ticks: the shares, applied to the precise total)
            "jump_user_s_gib": share(0) * (jump1 - jump0) / gib if share else None,
            "jump_sys_s_gib": share(1) * (jump1 - jump0) / gib if share else None,
            # how busy the whole machine was while the transfer ran (1.0: no core idle)
            "machine_busy": busy,
        }

    def jump_throughput(self):
        out = {}
        reps = self.p["jump_reps"]
        # the relay (when the script could start one) is measured beside the jump hosts:
        # what moving the bytes costs with no SSH on the hop at all
        sides = self.sides + ([self.p["relay"]] if self.p.get("relay") else [])
        for direction in ("down", "up"):
            for cipher in ("chacha", "gcm"):
                res = {s["name"]: [] for s in sides}
                for i in range(reps):
                    order = sides if i % 2 == 0 else sides[::-1]
                    for s in order:
                        v = self.jump_transfer(direction, cipher, s)
                        if v:
                            res[s["name"]].append(v)
                cell = {}
                for name, v in res.items():
                    if not v:
                        cell[name] = None
                        continue
                    def med(k):
                        xs = sorted(x[k] for x in v if x[k] is not None)
                        return xs[len(xs) // 2] if xs else None

                    cell[name] = {k: med(k) for k in v[0]}
                    cell[name]["runs"] = len(v)
                    cell[name]["all_mb_s"] = [round(x["mb_s"]) for x in v]
                    cell[name]["all_jump_cpu"] = [round(x["jump_cpu_s_gib"], 2) for x in v]
                    cell[name]["all_busy"] = [x["machine_busy"] and round(x["machine_busy"], 2) for x in v]
                out[f"{direction}_{cipher}"] = cell
                log(f"ssh -J {direction} {cipher}: " + ", ".join(
                    f"{k} {v and round(v['mb_s'])} MB/s, {v and round(v['jump_cpu_s_gib'], 2)} CPU-s/GiB"
                    + (f" = user {v['jump_user_s_gib']:.2f} + sys {v['jump_sys_s_gib']:.2f}"
                       if v and v.get("jump_user_s_gib") is not None else "")
                    + f" (machine {v and v['machine_busy'] and round(100 * v['machine_busy'])} % busy)"
                    for k, v in cell.items()))
        return out

    # -- held connections and bursts -----------------------------------------------------
    def open_many(self, jump, count, concurrency, timeout):
        """Starts `count` `ssh -W sink jump`, at most `concurrency` not yet through at once.
        Returns (live procs that got the sink's "+", failed count, seconds)."""
        sel = selectors.DefaultSelector()
        pending, live, failed, started = {}, [], 0, 0
        t0 = time.monotonic()
        deadline = t0 + timeout
        while (started < count or pending) and time.monotonic() < deadline:
            while started < count and len(pending) < concurrency:
                p = subprocess.Popen(
                    self.ssh(self.p["ssh_config"]["default"], "-W", self.sink, jump),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=self.err,
                )
                os.set_blocking(p.stdout.fileno(), False)
                sel.register(p.stdout.fileno(), selectors.EVENT_READ, p)
                pending[p.stdout.fileno()] = p
                started += 1
            for key, _ in sel.select(timeout=0.5):
                p = key.data
                try:
                    b = os.read(key.fd, 1)
                except BlockingIOError:
                    continue
                except OSError:
                    b = b""
                sel.unregister(key.fd)
                del pending[key.fd]
                if b == b"+":
                    live.append(p)
                else:
                    failed += 1
                    reap([p])
        elapsed = time.monotonic() - t0
        failed += len(pending) + (count - started)
        reap(list(pending.values()))
        sel.close()
        return live, failed, elapsed

    def held(self):
        n, conc = self.p["held"], self.p["held_concurrency"]
        out = {}
        for s in self.sides:
            time.sleep(0.5)
            base = memory_kb(s["pid"])
            live, failed, secs = self.open_many(s["jump"], n, conc, self.p["held_timeout"])
            time.sleep(1.0)
            full = memory_kb(s["pid"])
            reap(live, grace=10)
            per = lambda i: (full[i] - base[i]) / max(1, len(live))
            out[s["name"]] = {
                "ok": len(live),
                "failed": failed,
                "pss_base_kb": base[0],
                "pss_full_kb": full[0],
                "rss_full_kb": full[1],
                "procs": full[2],
                "pss_per_conn_kb": per(0),
                "rss_per_conn_kb": per(1),
                "open_seconds": secs,
            }
            log(f"held {s['name']}: {len(live)} ok, {failed} failed, "
                f"PSS {per(0):.0f} kB/conn, RSS {per(1):.0f} kB/conn, {full[2]} processes")
            time.sleep(1.0)
        return out

    def burst(self):
        n = self.p["burst"]
        out = {}
        for s in self.sides:
            time.sleep(1.0)
            live, failed, secs = self.open_many(s["jump"], n, n, self.p["burst_timeout"])
            reap(live, grace=10)
            out[s["name"]] = {"ok": len(live), "refused": failed, "seconds": secs}
            log(f"burst {s['name']}: {len(live)} ok, {failed} refused or failed")
        return out

    # -- connection rate -----------------------------------------------------------------
    def rate(self):
        cfg = self.p["ssh_config"]["default"]
        clients, window, windows = self.p["rate_clients"], self.p["rate_seconds"], self.p["rate_windows"]
        res = {s["name"]: {"ok": 0, "failed": 0, "seconds": 0.0} for s in self.sides}
        for w in range(windows):
            order = self.sides if w % 2 == 0 else self.sides[::-1]
            for s in order:
                time.sleep(0.5)
                ok = [0] * clients
                bad = [0] * clients
                stop = time.monotonic() + window

                def worker(i, jump=s["jump"]):
                    while time.monotonic() < stop:
                        try:
                            _, good = self.connect_once(cfg, jump)
                        except subprocess.TimeoutExpired:
                            good = False
                        if good:
                            ok[i] += 1
                        else:
                            bad[i] += 1

                t0 = time.monotonic()
                ts = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
                for t in ts:
                    t.start()
                for t in ts:
                    t.join()
                r = res[s["name"]]
                r["ok"] += sum(ok)
                r["failed"] += sum(bad)
                r["seconds"] += time.monotonic() - t0
        for s in self.sides:
            r = res[s["name"]]
            r["per_second"] = r["ok"] / r["seconds"]
            log(f"rate {s['name']}: {r['per_second']:.1f}/s, {r['failed']} failed")
        return res

    def run(self):
        r = {}
        # --held-only / --jump-only: one measurement and nothing else.
        only = {
            "held_only": ("held", self.held),
            "jump_only": ("jump_throughput", self.jump_throughput),
        }
        for flag, (key, measure) in only.items():
            if self.p.get(flag):
                try:
                    log(f"{key} (only)")
                    r[key] = measure()
                finally:
                    self.servers.close()
                return r
        try:
            log("held connections")
            r["held"] = self.held()
            log("burst")
            r["burst"] = self.burst()
            log("connection time, default key exchange")
            r["connect_default"] = self.connection("default")
            log("connection time, curve25519-sha256 forced")
            r["connect_c25519"] = self.connection("c25519")
            log("throughput through ssh -J")
            r["jump_throughput"] = self.jump_throughput()
            log("throughput")
            r["throughput"] = self.throughput()
            log("connection rate")
            r["rate"] = self.rate()
        finally:
            self.servers.close()
        return r


# ---------------------------------------------------------------------------------------
# Tables


def fmt(v, unit="", digits=0):
    if v is None:
        return "—"
    if isinstance(v, float) and math.isnan(v):
        return "—"
    return f"{v:,.{digits}f}{unit}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def met(ok):
    if ok is None:
        return "—"
    return "yes" if ok else "**no**"


def vs_openssh_rows(r, p):
    rows = []
    d, o = "drawbridge", "openssh"
    for key, label in (("connect_default", "default KEX"), ("connect_c25519", "curve25519-sha256 forced")):
        c = r[key]
        for stat, name in (("median_ms", "median"), ("p90_ms", "p90")):
            a, b = c[d][stat], c[o][stat]
            q = ratio(a, b)
            goal = "≤ 0.90" if stat == "median_ms" else "(≤ 0.90)"
            rows.append([
                f"`ssh -J` connect, {label}, {name} ({c[d]['runs']}+{c[o]['runs']} runs, "
                f"{c[d]['failed']}+{c[o]['failed']} failed)",
                fmt(a, " ms", 1), fmt(b, " ms", 1), fmt(q, "×", 2), goal,
                met(q is not None and q <= 0.90) if stat == "median_ms" else met(q is not None and q <= 0.90),
            ])
    c = r["connect_c25519"]
    direct = c.get("direct", {}).get("median_ms")
    if direct is not None:
        adds = {x: (c[x]["median_ms"] - direct if c[x]["median_ms"] is not None else None) for x in (d, o)}
        rows.append([f"the hop: `ssh -J` connect minus a direct `ssh target true` ({fmt(direct, ' ms', 1)}), "
                     f"curve25519-sha256, medians ({c['direct']['runs']} direct runs)",
                     fmt(adds[d], " ms", 1), fmt(adds[o], " ms", 1),
                     fmt(ratio(adds[d], adds[o]), "×", 2), "≤ 15 ms",
                     met(adds[d] is not None and adds[d] <= 15)])
    jt = r.get("jump_throughput")
    if jt:
        jsize = f"{p['jump_bytes'] // MiB} MiB"
        for direction, dname in (("down", "download (`head -c` on the target)"),
                                 ("up", "upload (`wc -c` on the target)")):
            for cipher, cname in (("chacha", "chacha20-poly1305"), ("gcm", "aes128-gcm")):
                x = jt[f"{direction}_{cipher}"]
                a, b = x[d], x[o]
                get = lambda v, k: v[k] if v else None
                q = ratio(get(a, "mb_s"), get(b, "mb_s"))
                runs = lambda v: f" [{', '.join(str(m) for m in v['all_mb_s'])}]" if v else ""
                rows.append([f"`ssh -J` {dname}, {cname}, {jsize}, median of {p['jump_reps']}",
                             fmt(get(a, "mb_s"), " MB/s") + runs(a), fmt(get(b, "mb_s"), " MB/s") + runs(b),
                             fmt(q, "×", 2), "≥ 1.1", met(q is not None and q >= 1.1)])
                q = ratio(get(a, "jump_cpu_s_gib"), get(b, "jump_cpu_s_gib"))
                cpu = lambda v: ((f"{v['jump_cpu_s_gib']:.2f} s"
                                  + (f" = {v['jump_user_s_gib']:.2f} user + {v['jump_sys_s_gib']:.2f} kernel"
                                     if v.get("jump_user_s_gib") is not None else ""))
                                 if v else "—")
                side = lambda v: (f" (target sshd {v['target_cpu_s_gib']:.2f}, client {v['client_cpu_s_gib']:.2f})"
                                  if v else "")
                rows.append([f"jump host CPU-seconds per GiB, `ssh -J` {direction}, {cname} "
                             f"(in brackets: the same transfer's target sshd and client side)",
                             cpu(a) + side(a), cpu(b) + side(b),
                             fmt(q, "×", 2), "≤ 0.70", met(q is not None and q <= 0.70)])
                busy = lambda v: f"{100 * v['machine_busy']:.0f} %" if v and v["machine_busy"] is not None else "—"
                rows.append([f"both cores busy during that `ssh -J` {direction}, {cname} (/proc/stat)",
                             busy(a), busy(b), "", "", ""])
                f = x.get("relay")
                if f:
                    rows.append([f"the floor: a plain TCP relay (`socat`, no SSH on the hop) carrying the "
                                 f"same {direction}load, {cname} end to end: its CPU-seconds per GiB, "
                                 f"and the jump host's CPU that is above it",
                                 f"{f['jump_cpu_s_gib']:.2f} s; above it: "
                                 + (f"{a['jump_cpu_s_gib'] - f['jump_cpu_s_gib']:.2f} s" if a else "—"),
                                 f"{f['jump_cpu_s_gib']:.2f} s; above it: "
                                 + (f"{b['jump_cpu_s_gib'] - f['jump_cpu_s_gib']:.2f} s" if b else "—"),
                                 fmt(ratio(f["jump_cpu_s_gib"], get(b, "jump_cpu_s_gib")), "×", 2)
                                 + " of OpenSSH's", "", ""])
    t = r["throughput"]
    size = f"{p['bytes'] // MiB} MiB"
    for direction, dname in (("up", "upload (client→target)"), ("down", "download (target→client)")):
        tcp = t[f"{direction}_tcp"]
        rows.append([f"raw loopback TCP, {dname}, {size}", fmt(tcp, " MB/s"), fmt(tcp, " MB/s"), "", "", ""])
        for cipher, cname in (("chacha", "chacha20-poly1305"), ("gcm", "aes128-gcm")):
            x = t[f"{direction}_{cipher}"]
            a, b = x[d], x[o]
            share = lambda v: f" ({100 * v / tcp:.0f} % of TCP)" if v and tcp else ""
            q = ratio(a, b)
            rows.append([f"throughput {dname}, {cipher}, {size}",
                         fmt(a, " MB/s") + share(a), fmt(b, " MB/s") + share(b),
                         fmt(q, "×", 2), "≥ 1.0", met(q is not None and q >= 1.0)])
    h = r["held"]
    q = ratio(h[d]["pss_per_conn_kb"], h[o]["pss_per_conn_kb"])
    n = p["held"]
    rows.append([f"{n} held forwards: PSS per connection (jump host, all processes)",
                 fmt(h[d]["pss_per_conn_kb"], " kB"), fmt(h[o]["pss_per_conn_kb"], " kB"),
                 fmt(q, "×", 3), "≤ 0.10", met(q is not None and q <= 0.10)])
    rows.append([f"{n} held forwards: RSS per connection",
                 fmt(h[d]["rss_per_conn_kb"], " kB"), fmt(h[o]["rss_per_conn_kb"], " kB"),
                 fmt(ratio(h[d]["rss_per_conn_kb"], h[o]["rss_per_conn_kb"]), "×", 3), "", ""])
    rows.append([f"{n} held forwards: jump host total PSS (processes)",
                 f"{fmt(h[d]['pss_full_kb'] / 1024, ' MiB', 1)} ({h[d]['procs']})",
                 f"{fmt(h[o]['pss_full_kb'] / 1024, ' MiB', 1)} ({h[o]['procs']})", "", "", ""])
    rows.append([f"{n} held forwards: failed", str(h[d]["failed"]), str(h[o]["failed"]), "",
                 "0", met(h[d]["failed"] == 0)])
    b = r["burst"]
    rows.append([f"{p['burst']} connections at once: refused or failed", str(b[d]["refused"]),
                 str(b[o]["refused"]), "", "0", met(b[d]["refused"] == 0)])
    rt = r["rate"]
    q = ratio(rt[d]["per_second"], rt[o]["per_second"])
    rows.append([f"`ssh -J` connections/s, {p['rate_clients']} clients "
                 f"({rt[d]['failed']}+{rt[o]['failed']} failed)",
                 fmt(rt[d]["per_second"], "/s", 1), fmt(rt[o]["per_second"], "/s", 1),
                 fmt(q, "×", 2), "≥ 1.5", met(q is not None and q >= 1.5)])
    return rows


def issuance_rows(r, p):
    rows = []
    keygen = r["ssh_keygen_per_s"]
    for c in p["concurrency"]:
        x = r["load"][str(c)]
        goal, ok = "", ""
        if c == max(p["concurrency"]):
            goal = "≥ 5,000/s, p99 < 25 ms"
            ok = met(x["per_s"] >= 5000 and x["p99_ms"] < 25 and x["bad"] == 0)
        rows.append([f"certs/s, {c} client{'s' if c > 1 else ''} (p50 / p99; non-200)",
                     f"{fmt(x['per_s'], '/s')} ({fmt(x['p50_ms'], '', 2)} / {fmt(x['p99_ms'], ' ms', 2)}; {x['bad'] + x['socket_errors']})",
                     f"{fmt(keygen, '/s')} (`ssh-keygen -s`, one process per cert)",
                     fmt(ratio(x["per_s"], keygen), "×", 1), goal, ok])
    top = r["load"][str(max(p["concurrency"]))]
    cpu = top.get("cpu_us_per_ok")
    if cpu:
        rows.append([f"drawbridge CPU per certificate at {max(p['concurrency'])} clients "
                     f"(cores it got); certs/s if it had both cores",
                     f"{cpu:,.0f} µs ({top['cpu_cores']:.2f} cores); {2e6 / cpu:,.0f}/s",
                     "", "", "", ""])
    rows.append(["Ed25519 certificate signing in process, one core (ceiling)",
                 fmt(r.get("sign_ceiling_per_s"), "/s"), "", "", "", ""])
    m = r.get("mixed")
    if m:
        alone, storm = m["alone"], m["storm"]
        q = ratio(storm["per_s"], alone["per_s"])
        rows.append([f"certs/s, {m['clients']} clients, alone → during a storm of {m['login_clients']} "
                     f"password logins (p99)",
                     f"{fmt(alone['per_s'], '/s')} ({fmt(alone['p99_ms'], ' ms', 1)}) → "
                     f"{fmt(storm['per_s'], '/s')} ({fmt(storm['p99_ms'], ' ms', 1)})", "",
                     fmt(q, "×", 2), "≥ 0.5× alone, p99 < 25 ms, 0 errors",
                     met(q is not None and q >= 0.5 and storm["p99_ms"] < 25
                         and storm["bad"] + storm["socket_errors"] == 0)])
        lg = m["logins"]
        rows.append(["password logins during the storm: ok/s; 429 (pool full); other",
                     f"{fmt(lg['ok_per_s'], '/s', 1)}; {lg['s429']}; {lg['other']}", "", "", "", ""])
    a = r.get("audit")
    if a:
        rows.append(["audit: `cert.issued` records vs 200 responses; `audit verify`",
                     f"{a['issued_records']:,} vs {a['ok_responses']:,}; {a['verify']}", "", "",
                     "records ≥ responses, ok",
                     met(a["issued_records"] >= a["ok_responses"] and a["verify"].startswith("ok"))])
    return rows


def soak_rows(r, p):
    """Rows of `scripts/soak` (docs/threats.md F12): figure, value, goal, met?"""
    MiB_kb = 1024
    fmt = lambda x: "—" if x is None else f"{x:.2f}"
    mem = r["memory_kb"]
    opened, n = r["opened"], r["forwards"]
    t, d, add = r["through"], r["direct"], r["added"]
    held = r["hold_seconds"]
    per_fwd = (mem["peak_pss"] - mem["start_pss"]) / max(1, opened)
    audit = r["audit"]
    rows = [
        ["forwards opened (SSH connections × forwards each; open time)",
         f"{opened:,} of {n:,} ({r['connections']} × {r['per_connection']}; {r['open_seconds']:.1f} s)",
         f"{n:,}", opened == n],
        [f"forwards dropped during the {held:.0f} s hold (closed, error, timeout, wrong bytes)",
         f"{r['dropped']:,}" + (f" (first: {r['drop_reasons'][0]})" if r["drop_reasons"] else ""),
         "0", r["dropped"] == 0 and r["alive_at_end"] == opened],
        ["round trips timed: through the bastion / direct (every forward every "
         f"{r['interval_s']:g} s, {r['payload_bytes']} B)",
         f"{t['count']:,} / {d['count']:,} (direct dropped: {r['direct_dropped']})", "", None],
        ["bastion memory peak, RSS (PSS), all drawbridge processes",
         f"{mem['peak_rss'] / MiB_kb:.1f} MiB ({mem['peak_pss'] / MiB_kb:.1f} MiB)",
         "< 1 GiB", mem["peak_rss"] < 1024 * MiB_kb],
        ["bastion RSS: idle → all open → end of hold → 2 s after close",
         " → ".join(f"{mem[k] / MiB_kb:.1f}" for k in
                    ("start_rss", "open_rss", "end_rss", "after_close_rss")) + " MiB",
         "", None],
        ["bastion PSS per held forward (peak − idle) / opened", f"{per_fwd:.0f} kB", "", None],
        ["bastion CPU during the hold (share of one core)",
         f"{r['hold_cpu_seconds']:.1f} s ({100 * r['hold_cpu_seconds'] / held:.1f} %)", "", None],
        ["round trip through the bastion, p50 / p90 / p99 / max",
         " / ".join(fmt(t[k]) for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")) + " ms", "", None],
        ["round trip direct to the echo server, p50 / p90 / p99 / max",
         " / ".join(fmt(d[k]) for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")) + " ms", "", None],
        ["added latency p50 / p90 (through − direct, same percentile)",
         f"{fmt(add['p50_ms'])} / {fmt(add['p90_ms'])} ms", "", None],
        ["**added latency p99** (through − direct)", f"{fmt(add['p99_ms'])} ms", "< 10 ms",
         add["p99_ms"] is not None and add["p99_ms"] < 10],
        ["forwards closed cleanly at the end (EOF answered by close)",
         f"{r['alive_at_end'] - r['close_failed']:,} of {r['alive_at_end']:,}", "", None],
        ["bastion after the close: forwards / SSH connections still active (`/metrics`)",
         f"{r['after_close']['forwards_active']} / {r['after_close']['connections_active']}",
         "0 / 0", r["after_close"] == {"forwards_active": "0", "connections_active": "0"}],
        ["audit: `forward.opened` / `forward.closed` records; `audit verify`",
         f"{audit['opened']:,} / {audit['closed']:,}; {audit['verify']}",
         "= forwards opened, ok",
         audit["opened"] == opened and audit["closed"] == opened
         and audit["verify"].startswith("ok")],
    ]
    return [[a, b, c, "" if m is None else met(m)] for a, b, c, m in rows]


def table(rows, second="OpenSSH"):
    head = ["figure", "drawbridge", second, "ratio", "goal", "met?"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def update_results(path, section, text, heading="# Benchmarks: drawbridge beside OpenSSH"):
    start, end = f"<!-- {section}:start -->", f"<!-- {section}:end -->"
    try:
        with open(path) as f:
            doc = f.read()
    except FileNotFoundError:
        doc = heading + "\n\n"
    block = f"{start}\n{text}\n{end}"
    if start in doc and end in doc:
        doc = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, doc, flags=re.S)
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(doc)
    os.replace(tmp, path)


def report(args):
    with open(args.params) as f:
        p = json.load(f)
    with open(args.results) as f:
        r = json.load(f)
    for extra in args.extra or []:
        with open(extra) as f:
            r.update(json.load(f))
    if args.kind == "soak":
        rows = soak_rows(r, p)
        title = "## `scripts/soak`" + (" --quick" if p.get("quick") else f" --duration {p['duration']}")
        head = ["figure", "value", "goal", "met?"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        text = "\n".join(lines)
    elif args.kind == "vs-openssh":
        rows = vs_openssh_rows(r, p)
        title = "## `scripts/bench-vs-openssh`" + (" --quick" if p.get("quick") else "")
        text = table(rows)
    else:
        rows = issuance_rows(r, p)
        title = "## `scripts/bench-issuance`" + (" --quick" if p.get("quick") else "")
        text = table(rows, second="reference")
    notes = p.get("notes", "")
    body = f"{title}\n\n{p['machine']}\n\n{text}\n\n{notes}".rstrip() + "\n"
    print(body)
    if args.out and args.kind == "soak":
        update_results(args.out, args.kind, body, heading="# Soak: forwards held through the bastion")
    elif args.out:
        update_results(args.out, args.kind, body)
    if args.kind == "soak" and any(row[-1] == "**no**" for row in rows):
        sys.exit(3)  # a goal missed; scripts/soak passes it on


# ---------------------------------------------------------------------------------------
# issuance (wrk)


def cpu_seconds(pid):
    """User + system CPU time of `pid` so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(p, script, clients, seconds, env_extra):
    env = dict(os.environ, **env_extra)
    cpu0 = cpu_seconds(p["pid"])
    threads = max(1, min(clients, p["wrk_threads"]))
    cmd = ["wrk", "-t", str(threads), "-c", str(clients), "-d", f"{seconds}s", "--timeout", "10s",
           "-s", script, p["url"]]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60)
    m = re.search(r"^JSON (\{.*\})$", r.stdout, re.M)
    if not m:
        raise RuntimeError(f"wrk printed no result:\n{r.stdout}\n{r.stderr}")
    x = json.loads(m.group(1))
    secs = x["duration_us"] / 1e6
    cpu = cpu_seconds(p["pid"]) - cpu0
    return {
        "cpu_us_per_ok": cpu * 1e6 / x["ok"] if x["ok"] else None,
        "cpu_cores": cpu / secs,
        "per_s": x["ok"] / secs,
        "ok": x["ok"],
        "bad": x["bad"],
        "s429": x.get("s429", 0),
        "socket_errors": x["socket_errors"],
        "p50_ms": x["p50_us"] / 1000,
        "p99_ms": x["p99_us"] / 1000,
        "seconds": secs,
    }


def issuance(args):
    with open(args.params) as f:
        p = json.load(f)
    certs_env = {"WRK_PATH": "/v1/certs", "WRK_BODY_FILE": p["pubkey"],
                 "WRK_AUTH": f"Bearer {p['token']}"}
    out = {"load": {}}
    for c in p["concurrency"]:
        x = wrk(p, p["wrk_script"], c, p["seconds"], certs_env)
        out["load"][str(c)] = x
        log(f"{c} clients: {x['per_s']:.0f} certs/s, {x['cpu_us_per_ok']:.0f} µs CPU each "
            f"({x['cpu_cores']:.2f} cores), p50 {x['p50_ms']:.2f} ms, "
            f"p99 {x['p99_ms']:.2f} ms, {x['bad']} non-200, {x['socket_errors']} socket errors")

    # Issuance alone, then the same with a storm of password logins beside it.
    mc, lc = p["mixed_clients"], p["login_clients"]
    alone = wrk(p, p["wrk_script"], mc, p["seconds"], certs_env)
    login_env = {"WRK_PATH": "/v1/login", "WRK_BODY_FILE": "", "WRK_AUTH": f"Basic {p['basic']}"}
    holder = {}

    def storm():
        holder["logins"] = wrk(p, p["wrk_script"], lc, p["seconds"] + 2, login_env)

    t = threading.Thread(target=storm)
    t.start()
    time.sleep(1.0)  # let the storm fill the hash pool first
    during = wrk(p, p["wrk_script"], mc, p["seconds"], certs_env)
    t.join(timeout=p["seconds"] + 90)
    lg = holder.get("logins", {})
    out["mixed"] = {
        "clients": mc,
        "login_clients": lc,
        "alone": alone,
        "storm": during,
        "logins": {
            "ok_per_s": lg.get("per_s", 0.0),
            "s429": lg.get("s429", 0),
            "other": lg.get("bad", 0) - lg.get("s429", 0) + lg.get("socket_errors", 0),
        },
    }
    log(f"mixed: alone {alone['per_s']:.0f}/s p99 {alone['p99_ms']:.1f} ms; during logins "
        f"{during['per_s']:.0f}/s p99 {during['p99_ms']:.1f} ms; logins {lg.get('per_s', 0):.1f}/s ok, "
        f"{lg.get('s429', 0)} × 429")
    out["ok_responses"] = sum(x["ok"] for x in out["load"].values()) + alone["ok"] + during["ok"]
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)


def vs_openssh(args):
    with open(args.params) as f:
        p = json.load(f)
    r = VsOpenssh(p).run()
    with open(args.out, "w") as f:
        json.dump(r, f, indent=1)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("vs-openssh")
    a.add_argument("--params", required=True)
    a.add_argument("--out", required=True)
    a = sub.add_parser("issuance")
    a.add_argument("--params", required=True)
    a.add_argument("--out", required=True)
    a = sub.add_parser("report")
    a.add_argument("kind", choices=["vs-openssh", "issuance", "soak"])
    a.add_argument("--params", required=True)
    a.add_argument("--results", required=True)
    a.add_argument("--extra", action="append", help="a JSON object merged into the results")
    a.add_argument("--out")
    a = sub.add_parser("servers")
    a.add_argument("--sink-port", type=int, required=True)
    a.add_argument("--source-port", type=int, required=True)
    a.add_argument("--bytes", type=int, required=True)
    a.add_argument("--stats", required=True)
    a.add_argument("--max-seconds", type=float, default=3600)
    a = sub.add_parser("memory")
    a.add_argument("pid", type=int)
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.cmd == "vs-openssh":
        vs_openssh(args)
    elif args.cmd == "issuance":
        issuance(args)
    elif args.cmd == "report":
        report(args)
    elif args.cmd == "servers":
        serve(args)
    elif args.cmd == "memory":
        print(*memory_kb(args.pid))


if __name__ == "__main__":
    main()
