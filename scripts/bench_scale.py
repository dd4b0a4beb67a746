"""`scripts/bench scale`: warden with thousands of services.

N `external` services (a random DAG, about 3 dependencies each on recent
services, every one critical) whose `ready` and `health` probes connect to
a TCP listener this script runs. warden runs with a NOTIFY_SOCKET this
script reads and a 100 ms watchdog (WATCHDOG_USEC=200000: a ping every
100 ms), so that every figure comes from what warden itself says, without
polling its API:

- start: spawn to READY=1 (every critical service ready), and warden's CPU
  (all threads) by then, per service and per state change (each service
  changes state twice on the way: pending, starting, ready);
- reload: SIGHUP with the same file rewritten (every service unchanged):
  the time until warden takes it, by the watchdog's pings;
- shutdown: SIGTERM to exit, and the CPU it cost per state change (ready,
  stopping, stopped);
- the watchdog: the largest gap between two WATCHDOG=1 over the whole run,
  minus the 100 ms it should be (its lateness), overall and during the
  shutdown;
- shutdown_timeout: the same registry plus one process that ignores
  SIGTERM, with shutdown_timeout = 1s and a 60 s stop timeout: SIGTERM to
  exit minus the second it should take (how late the deadline was kept
  while thousands of services stopped).

WARDEN_BASELINE=PATH (WARDEN_BASELINE_NAME=label) runs another warden
binary, such as an earlier commit's release build, on the same registries
at BENCH_SCALE_BASELINE_SIZES (default 1000,4000: an earlier build may
take minutes beyond that), for a before/after table in the same run.
BENCH_SCALE_SIZES=a,b replaces the sizes of this build.
"""
import os
import random
import signal
import socket
import subprocess
import threading
import time

WATCHDOG_USEC = 200_000  # a ping every 100 ms
PING_S = WATCHDOG_USEC / 2 / 1e6


def write_registry(path, n, port, api_port, stubborn=False, seed=7):
    rng = random.Random(seed)
    lines = [
        "[warden]",
        'shutdown_timeout = "1s"' if stubborn else 'shutdown_timeout = "60s"',
        "",
        "[api]",
        f'listen = "127.0.0.1:{api_port}"',
        "",
    ]
    for i in range(n):
        lines.append(f"[services.e{i}]")
        lines.append('kind = "external"')
        lines.append("critical = true")
        lines.append(f'ready = {{ tcp = "127.0.0.1:{port}", interval = "100ms" }}')
        if i > 0:
            deps = sorted({rng.randrange(max(0, i - 50), i) for _ in range(min(i, 3))})
            lines.append("depends_on = [" + ", ".join(f'"e{d}"' for d in deps) + "]")
        lines.append("")
    if stubborn:
        lines += [
            "[services.stubborn]",
            'kind = "process"',
            "command = [\"sh\", \"-c\", \"trap '' TERM; while :; do sleep 1; done\"]",
            'stop = { timeout = "60s" }',
            "",
        ]
    with open(path, "w") as f:
        f.write("\n".join(lines))


class Listener:
    """Accepts and closes connections (what the probes check)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4096)
        self.port = self.sock.getsockname()[1]
        self.stop = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while not self.stop:
            try:
                c, _ = self.sock.accept()
                c.close()
            except OSError:
                return

    def close(self):
        self.stop = True
        self.sock.close()


class Notify:
    """The NOTIFY_SOCKET warden speaks to: every message with its time."""

    def __init__(self, path):
        if os.path.exists(path):
            os.unlink(path)
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.5)
        self.events = []  # (time, line)
        self.lock = threading.Lock()
        self.done = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while not self.done:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            t = time.perf_counter()
            with self.lock:
                for line in data.decode(errors="replace").splitlines():
                    self.events.append((t, line))

    def first(self, prefix, after=0.0, timeout=600.0):
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            with self.lock:
                for t, line in self.events:
                    if t >= after and line.startswith(prefix):
                        return t
            time.sleep(0.002)
        return None

    def pings(self, since=0.0, until=float("inf")):
        with self.lock:
            return [t for t, l in self.events if l == "WATCHDOG=1" and since <= t <= until]

    def close(self):
        self.done = True
        self.sock.close()


def cpu_ns(pid):
    """CPU of every thread of pid (ns), from /proc/PID/task/*/schedstat."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    except OSError:
        pass
    return total


def max_gap(times):
    gaps = [b - a for a, b in zip(times, times[1:])]
    return max(gaps) if gaps else float("nan")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def run_one(warden, out, n, listener, stubborn=False):
    """One warden run over n services; returns its figures."""
    reg = os.path.join(out, f"scale-{n}{'-stubborn' if stubborn else ''}.toml")
    write_registry(reg, n, listener.port, free_port(), stubborn)
    notify = Notify(os.path.join(out, "notify.sock"))
    env = dict(os.environ, NOTIFY_SOCKET=notify.path, WATCHDOG_USEC=str(WATCHDOG_USEC))
    env.pop("WATCHDOG_PID", None)
    log = open(os.path.join(out, f"scale-{n}.log"), "w")
    t0 = time.perf_counter()
    proc = subprocess.Popen([warden, "run", "-c", reg], stdout=log, stderr=log, env=env)
    try:
        ready = notify.first("READY=1", timeout=600)
        if ready is None:
            raise SystemExit(f"bench scale: {n} services never all ready (see {log.name})")
        cpu_ready = cpu_ns(proc.pid)
        r = {"n": n, "start_s": ready - t0, "start_cpu_s": cpu_ready / 1e9}
        if not stubborn:
            # Settle, then a reload of the unchanged file.
            time.sleep(1.0)
            os.utime(reg)
            t_hup = time.perf_counter()
            proc.send_signal(signal.SIGHUP)
            time.sleep(max(1.0, n / 10000))
            r["reload_gap_s"] = max_gap(notify.pings(t_hup - PING_S * 2, time.perf_counter()))
            time.sleep(0.5)
        cpu_before = cpu_ns(proc.pid)
        t_term = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        # wait4's rusage holds every thread's CPU to the very end (and that
        # of the children warden reaped: none here but the stubborn one).
        _, status, ru = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        t_exit = time.perf_counter()
        r["stop_s"] = t_exit - t_term
        r["stop_cpu_s"] = max(0.0, ru.ru_utime + ru.ru_stime - cpu_before / 1e9)
        r["code"] = proc.returncode
        pings = notify.pings(t0)
        r["watchdog_late_s"] = max_gap([p for p in pings if p >= ready] + [t_exit]) - PING_S
        stop_pings = [p for p in pings if p >= t_term]
        r["watchdog_stop_late_s"] = max_gap([t_term] + stop_pings + [t_exit]) - PING_S \
            if stop_pings else (t_exit - t_term) - PING_S
        r["watchdog_stop_late_s"] = max(0.0, r["watchdog_stop_late_s"])
        r["watchdog_late_s"] = max(0.0, r["watchdog_late_s"])
        return r
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()
        log.close()


def scenario(warden, out, quick):
    sizes = [200, 500] if quick else [1000, 10000, 20000]
    if os.environ.get("BENCH_SCALE_SIZES"):
        sizes = [int(x) for x in os.environ["BENCH_SCALE_SIZES"].split(",")]
    listener = Listener()
    rows, stub = [], []
    try:
        for n in sizes:
            rows.append(run_one(warden, out, n, listener))
            stub.append(run_one(warden, out, n, listener, stubborn=True))
    finally:
        listener.close()
    print("### Thousands of services: start, reload, shutdown, and the deadlines\n")
    print("`external` services (random DAG, ~3 dependencies each, all critical), each")
    print("probed over TCP; figures from warden's own sd_notify messages (READY=1, a")
    print("watchdog ping every 100 ms). CPU is warden's, all threads. A state change is")
    print("one of the two each service makes on the way up (pending → starting → ready)")
    print("or down (ready → stopping → stopped); the per-change figures should stay flat")
    print("as the count grows.\n")
    print("| services | start to all ready | CPU until all ready | CPU per state change | reload: longest watchdog gap | SIGTERM to exit | shutdown CPU per state change | watchdog lateness (whole run) | watchdog lateness (shutdown) | exit code |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    base = None
    for r in rows:
        per = r["start_cpu_s"] / (2 * r["n"])
        stop_per = r["stop_cpu_s"] / (2 * r["n"])
        base = base or (per, stop_per)
        print(f"| {r['n']:,} | {r['start_s']*1000:.0f} ms | {r['start_cpu_s']*1000:.0f} ms | "
              f"{per*1e6:.1f} µs ({per/base[0]:.2f}×) | {r['reload_gap_s']*1000:.0f} ms | "
              f"{r['stop_s']*1000:.0f} ms | {stop_per*1e6:.1f} µs ({stop_per/base[1]:.2f}×) | "
              f"{r['watchdog_late_s']*1000:.0f} ms | {r['watchdog_stop_late_s']*1000:.0f} ms | {r['code']} |")
    print()
    baseline = os.environ.get("WARDEN_BASELINE")
    if baseline and not quick:
        name = os.environ.get("WARDEN_BASELINE_NAME", "baseline")
        bsizes = [int(x) for x in os.environ.get("BENCH_SCALE_BASELINE_SIZES", "1000,4000").split(",")]
        listener = Listener()
        try:
            pairs = []
            for n in bsizes:
                mine = run_one(warden, out, n, listener)
                theirs = run_one(baseline, out, n, listener)
                pairs.append((n, mine, theirs))
        finally:
            listener.close()
        print(f"Before and after, same registries, same run: `{name}` against this build.\n")
        print(f"| services | CPU until all ready: {name} | this build | ratio | SIGTERM to exit: {name} | this build | ratio | watchdog lateness: {name} | this build |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for n, m, t in pairs:
            print(f"| {n:,} | {t['start_cpu_s']*1000:.0f} ms | {m['start_cpu_s']*1000:.0f} ms | "
                  f"{m['start_cpu_s']/t['start_cpu_s']:.2f} | {t['stop_s']*1000:.0f} ms | "
                  f"{m['stop_s']*1000:.0f} ms | {m['stop_s']/t['stop_s']:.2f} | "
                  f"{t['watchdog_late_s']*1000:.0f} ms | {m['watchdog_late_s']*1000:.0f} ms |")
        print()
    print("With one more service, a process that ignores SIGTERM (60 s stop timeout),")
    print("and `shutdown_timeout = \"1s\"`: how late the deadline is kept while the other")
    print("services stop (goal: within 100 ms, whatever the number of services).\n")
    print("| services | SIGTERM to exit | past the 1 s deadline | watchdog lateness (shutdown) | exit code |")
    print("|---:|---:|---:|---:|---:|")
    for r in stub:
        print(f"| {r['n']:,} + 1 | {r['stop_s']*1000:.0f} ms | {(r['stop_s']-1)*1000:.0f} ms | "
              f"{r['watchdog_stop_late_s']*1000:.0f} ms | {r['code']} |")
    print()
