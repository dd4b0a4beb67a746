"""`scripts/bench demo`: warden's resident set while it runs the whole demo
(the root `services.toml`: its own PostgreSQL and Redis, the memory backend,
memory-sync, the relay, the replicator, the producer, the crashing worker
and the API), in a scratch copy on free ports. Once events reach the
replica, VmRSS of the warden process is sampled every 0.5 s for the
window; the peak (VmHWM) is reported too. Goal: under 16 MiB.
"""
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request

from bench_memory import PG_BIN, backend_binary, free_port


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise SystemExit(f"bench demo: no {key} for pid {pid}")


def scenario(warden, root, out, quick):
    window = 5 if quick else 30
    backend = backend_binary(root)
    tmp = tempfile.mkdtemp(prefix="warden-bench-demo-")
    os.chmod(tmp, 0o755)
    shutil.copy(os.path.join(root, "services.toml"), tmp)
    api, pg, redis, memory = free_port(), free_port(), free_port(), free_port()
    env = dict(os.environ, WARDEN_API_LISTEN=f"127.0.0.1:{api}", DEMO_PG_PORT=str(pg),
               DEMO_REDIS_PORT=str(redis), DEMO_MEMORY_PORT=str(memory), DEMO_MEMORY_BACKEND=backend,
               WARDEN_LOG="info")
    log = open(os.path.join(out, "demo.log"), "w")
    w = subprocess.Popen([warden, "run", "--log-format", "json"], cwd=tmp, env=env, stdout=log, stderr=log)

    def replicated():
        r = subprocess.run([f"{PG_BIN}/psql", "-X", "-A", "-t", "-h", "127.0.0.1", "-p", str(pg), "-U", "postgres",
                            "-c", "SELECT count(*) FROM memory_replica"], capture_output=True, text=True)
        return int(r.stdout.strip()) if r.returncode == 0 and r.stdout.strip().isdigit() else 0

    try:
        deadline = time.time() + 120
        while replicated() < 5:
            if time.time() > deadline or w.poll() is not None:
                raise SystemExit(f"bench demo: no events reached the replica; see {log.name}")
            time.sleep(0.5)
        samples = []
        first = replicated()
        t_end = time.time() + window
        while time.time() < t_end:
            samples.append(status_kib(w.pid, "VmRSS"))
            time.sleep(0.5)
        peak = status_kib(w.pid, "VmHWM")
        moved = replicated() - first
        with urllib.request.urlopen(f"http://127.0.0.1:{api}/v1/health", timeout=5) as r:
            services = json.loads(r.read())["services"]
    finally:
        w.terminate()
        try:
            w.wait(timeout=60)
        except subprocess.TimeoutExpired:
            w.kill()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)
    samples.sort()
    print("### warden's memory with the whole demo running\n")
    print(f"`warden run` on the root services.toml ({len(services)} services, "
          f"{moved} events replicated during the {window} s window), VmRSS of the warden process every 0.5 s:\n")
    print("| median | max | peak since start (VmHWM) | goal |")
    print("|---:|---:|---:|---:|")
    print(f"| {samples[len(samples) // 2]:,} KiB | {samples[-1]:,} KiB | {peak:,} KiB | under 16 MiB (16,384 KiB) |")
    print()
