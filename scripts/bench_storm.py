"""`scripts/bench storm`: warden's memory and descriptors in a crash storm.

100 `process` services that each print about 4 KiB (a few short lines and
one long one) and exit 1 at once, restarted without end (policy always,
backoff from 50 ms to 250 ms): several hundred restarts a second. Meanwhile
two `wrk` clients ask the API over keep-alive connections for
`/v1/health` and for a crashing service's output. The storm lasts
STORM_SECONDS (600 by default; 8 with --quick), after a first storm of 60 s
with `log_memory` at its least (64 KiB): the storm's own working set.

Every 10 s: warden's resident set (VmRSS), its open descriptors
(/proc/PID/fd) and the restarts so far. What must hold: RSS flat under the
bound (`[warden] log_memory`, 16 MiB by default, over the storm's own
working set), descriptors flat, every `wrk` request answered with a 2xx
(no socket error, no timeout). The script fails when a request was not.
"""
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request

from bench_memory import free_port

SERVICES = 100
PRINT = (
    "echo starting; echo a short line; echo another one >&2; "
    "printf '%03000d\\n' 0; echo dying >&2; exit 1"
)


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise SystemExit(f"bench storm: no {key} for pid {pid}")


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def get_json(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def restarts(api):
    services = get_json(api + "/v1/health")["services"]
    return sum(s.get("restarts", 0) for s in services.values())


def parse_wrk(text):
    """Requests done, and the lines that say some were not answered."""
    done, bad = 0, []
    for line in text.splitlines():
        parts = line.split()
        if "requests in" in line:
            done = int(parts[0])
        elif "Non-2xx" in line or "Socket errors" in line:
            bad.append(line.strip())
    return done, bad


def storm(warden, out, seconds, every, warden_settings=""):
    """One storm; returns (RSS at rest, samples, VmHWM, wrk results)."""
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    tmp = tempfile.mkdtemp(prefix="warden-bench-storm-")
    lines = [f'[warden]\n{warden_settings}\n[api]\nlisten = "127.0.0.1:{port}"\n']
    for i in range(SERVICES):
        lines.append(
            f"[services.crash{i}]\nkind = \"process\"\n"
            f"command = [\"sh\", \"-c\", {json.dumps(PRINT)}]\n"
            "restart = { policy = \"always\", max_restarts = 1000000, window = \"1s\", "
            "backoff = { initial = \"50ms\", max = \"250ms\" } }\n"
        )
    with open(os.path.join(tmp, "services.toml"), "w") as f:
        f.write("\n".join(lines))
    log = open(os.path.join(out, "storm.log"), "w")
    w = subprocess.Popen([warden, "run", "-c", "services.toml", "--log-format", "json"], cwd=tmp,
                         env=dict(os.environ, WARDEN_LOG="warn"), stdout=log, stderr=log)
    clients = []
    try:
        deadline = time.time() + 30
        while True:
            try:
                if urllib.request.urlopen(api + "/readyz", timeout=1).status == 200:
                    break
            except Exception:
                pass
            if time.time() > deadline or w.poll() is not None:
                raise SystemExit(f"bench storm: the API never became ready; see {log.name}")
            time.sleep(0.1)
        at_rest = status_kib(w.pid, "VmRSS")
        for route, conns in (("/v1/health", 8), ("/v1/services/crash0/logs?tail=200", 4)):
            clients.append((route, subprocess.Popen(
                ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "5s", api + route],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
        samples = []
        began = time.time()
        while True:
            elapsed = time.time() - began
            if w.poll() is not None:
                raise SystemExit(f"bench storm: warden ended during the storm; see {log.name}")
            samples.append((elapsed, status_kib(w.pid, "VmRSS"), fds(w.pid), restarts(api)))
            if elapsed >= seconds:
                break
            time.sleep(min(every, seconds - elapsed + 0.05))
        peak = status_kib(w.pid, "VmHWM")
        answered = []
        for route, c in clients:
            stdout, stderr = c.communicate(timeout=60)
            if c.returncode != 0:
                raise SystemExit(f"bench storm: wrk failed on {route}: {stderr}")
            answered.append((route, *parse_wrk(stdout)))
    finally:
        for _, c in clients:
            if c.poll() is None:
                c.kill()
        w.terminate()
        try:
            w.wait(timeout=60)
        except subprocess.TimeoutExpired:
            w.kill()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return at_rest, samples, peak, answered


def scenario(warden, root, out, quick):
    seconds = 8 if quick else int(os.environ.get("STORM_SECONDS", "600"))
    every = 2 if quick else 10
    # The storm's own working set (children's pipes, restarts in flight,
    # the clients' requests), with the rings as small as they can be.
    floor_for = 4 if quick else 60
    _, floor_samples, floor_peak, _ = storm(warden, out, floor_for, every, 'log_memory = "64KiB"')
    at_rest, samples, peak, answered = storm(warden, out, seconds, every)
    bound = floor_peak + 16 * 1024
    settled_at = min(60, seconds / 2)
    last = samples[-1]
    print("### A crash storm: 100 services restarting without end, the API under `wrk`\n")
    print(f"{SERVICES} services that print about 4 KiB and exit 1, restarted with a 50-250 ms backoff, "
          f"for {seconds} s; meanwhile `wrk` on /v1/health (8 connections) and on a crashing "
          f"service's logs (4 connections). warden at rest (ready, before the clients): {at_rest:,} KiB. "
          f"The same storm for {floor_for} s with `log_memory = \"64KiB\"` (rings as small as they go) "
          f"peaks at {floor_peak:,} KiB: the storm's own working set. The bound: that plus the default "
          f"`log_memory` of 16 MiB = {bound:,} KiB.\n")
    print("| time | restarts so far | VmRSS | open fds |")
    print("|---:|---:|---:|---:|")
    step = max(1, len(samples) // 12)
    shown = samples[::step]
    if shown[-1] is not last:
        shown.append(last)
    for t, rss, fd, n in shown:
        print(f"| {t:.0f} s | {n:,} | {rss:,} KiB | {fd} |")
    print()
    settled = [s for s in samples if s[0] >= settled_at] or samples
    rss_after = [s[1] for s in settled]
    fd_all = [s[2] for s in samples]
    print(f"- RSS from {settled[0][0]:.0f} s to the end: {min(rss_after):,} to {max(rss_after):,} KiB "
          f"(change {last[1] - settled[0][1]:+,} KiB); peak (VmHWM) {peak:,} KiB; "
          f"{'within' if peak <= bound else 'OVER'} the bound of {bound:,} KiB.")
    print(f"- open fds: {min(fd_all)} to {max(fd_all)} (the clients' connections and the children's "
          "pipes come and go).")
    print(f"- restarts: {last[3]:,} in {last[0]:.0f} s ({last[3] / max(last[0], 1):,.0f}/s).")
    failed = False
    for route, done, bad in answered:
        print(f"- wrk {route}: {done:,} requests, "
              f"{'every one answered with a 2xx' if not bad else 'NOT ALL ANSWERED: ' + '; '.join(bad)}.")
        failed |= bool(bad)
    print()
    if failed:
        raise SystemExit("bench storm: some requests were not answered")
