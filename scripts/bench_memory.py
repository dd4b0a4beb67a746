"""`scripts/bench memory`: memory-sync's delivery rate.

A PostgreSQL 15 this script starts (initdb in a temporary directory, as the
`postgres` user when run as root; fsync on, as in production), the small
keep-alive backend of `examples/memory_backend.rs`, and warden running one
`memory-sync` service with its default settings (batch 50, timeout 10 s,
lease 30 s). N rows are inserted in one statement once the service is
ready; the figure is N over the time until the last is marked sent. The
backend counts the requests and connections it saw: a pooled, kept-alive
client uses a handful of connections for all N.

WARDEN_BASELINE=PATH (WARDEN_BASELINE_NAME=label) adds one run of another
warden binary and one of this build, 20,000 rows each, side by side.
"""
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request

PG_BIN = "/usr/lib/postgresql/15/bin"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def as_postgres(argv):
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--"] + argv
    return argv


class Postgres:
    def __init__(self, settings=()):
        if not os.path.exists(os.path.join(PG_BIN, "initdb")):
            raise SystemExit(f"bench memory: PostgreSQL 15 is missing ({PG_BIN}); run scripts/install-deps")
        self.dir = tempfile.mkdtemp(prefix="warden-bench-pg-")
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        data = os.path.join(self.dir, "data")
        subprocess.run(as_postgres([f"{PG_BIN}/initdb", "-D", data, "-U", "postgres", "-A", "trust", "--no-sync"]),
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env=dict(os.environ, LC_ALL="C"), cwd=self.dir)
        self.port = free_port()
        self.log = open(os.path.join(self.dir, "postgres.log"), "w")
        if os.geteuid() == 0:
            shutil.chown(self.log.name, "postgres", "postgres")
        self.proc = subprocess.Popen(
            as_postgres([f"{PG_BIN}/postgres", "-D", data, "-p", str(self.port), "-k", self.dir,
                         "-c", "listen_addresses=127.0.0.1", *[a for kv in settings for a in ("-c", kv)]]),
            stdout=self.log, stderr=self.log, cwd=self.dir)
        self.dsn = f"postgres://postgres@127.0.0.1:{self.port}/postgres"
        deadline = time.time() + 30
        while time.time() < deadline:
            r = subprocess.run([f"{PG_BIN}/pg_isready", "-q", "-h", "127.0.0.1", "-p", str(self.port),
                                "-U", "postgres"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if r.returncode == 0:
                return
            time.sleep(0.1)
        raise SystemExit("bench memory: PostgreSQL did not start")

    def sql(self, query):
        r = subprocess.run([f"{PG_BIN}/psql", "-X", "-q", "-A", "-t", "-h", "127.0.0.1", "-p", str(self.port),
                            "-U", "postgres", "-d", "postgres", "-c", query],
                           check=True, capture_output=True, text=True)
        return r.stdout.strip()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def backend_binary(root):
    subprocess.run(["cargo", "build", "--release", "--quiet", "--example", "memory_backend"], cwd=root, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(root, "target"))
    return os.path.join(target, "release", "examples", "memory_backend")


def get_json(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def wait(pred, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if pred():
                return
        except Exception:
            pass
        time.sleep(0.05)
    raise SystemExit(f"bench memory: {what} did not happen within {timeout} s")


def run_once(warden, backend_bin, out, rows):
    pg = Postgres()
    bport, aport = free_port(), free_port()
    backend = subprocess.Popen([backend_bin, f"127.0.0.1:{bport}"], stderr=subprocess.DEVNULL)
    reg = os.path.join(out, "memory-bench.toml")
    with open(reg, "w") as f:
        f.write(f"""[api]
listen = "127.0.0.1:{aport}"

[services.memory]
kind = "memory-sync"
postgres = "{pg.dsn}"
endpoint = "http://127.0.0.1:{bport}/v1/memories"
{os.environ.get("BENCH_MEMORY_SETTINGS", "")}
""")
    log = open(os.path.join(out, "memory-bench.log"), "w")
    w = subprocess.Popen([warden, "run", "-c", reg], stdout=log, stderr=log)
    try:
        wait(lambda: get_json(f"http://127.0.0.1:{aport}/v1/services/memory")["state"] == "ready", 60,
             "memory-sync ready")
        wait(lambda: get_json(f"http://127.0.0.1:{bport}/stats") is not None, 10, "the backend")
        t0 = time.perf_counter()
        pg.sql(f"INSERT INTO memory_write_outbox (tenant, session_id, payload) "
               f"SELECT 't', 's' || (n % 100), jsonb_build_object('text', 'memory ' || n) "
               f"FROM generate_series(1, {rows}) n")
        t_inserted = time.perf_counter()
        wait(lambda: int(pg.sql("SELECT count(*) FROM memory_write_outbox WHERE status = 'sent'")) == rows,
             600, f"{rows} rows sent")
        took = time.perf_counter() - t0
        stats = get_json(f"http://127.0.0.1:{bport}/stats")
        return {"rows": rows, "took": took, "insert": t_inserted - t0, "rate": rows / took,
                "requests": stats["requests"], "connections": stats["connections"]}
    finally:
        w.terminate()
        try:
            w.wait(timeout=30)
        except subprocess.TimeoutExpired:
            w.kill()
        backend.terminate()
        backend.wait()
        log.close()
        pg.stop()


def scenario(warden, root, out, quick):
    backend_bin = backend_binary(root)
    rows = 2000 if quick else 50000
    runs = 1 if quick else 3
    results = [run_once(warden, backend_bin, out, rows) for _ in range(runs)]
    print("### memory-sync delivery rate\n")
    print("One `memory-sync` service with its default settings (batch 50, timeout 10 s, lease")
    print(f"30 s), {rows:,} rows inserted at once, PostgreSQL 15 with fsync on, the keep-alive")
    print("backend of `examples/memory_backend.rs`. Goal: at least 5,000 rows/s.\n")
    print("| run | rows | until all sent | rows/s | POSTs seen | connections |")
    print("|---:|---:|---:|---:|---:|---:|")
    for i, r in enumerate(results, 1):
        print(f"| {i} | {r['rows']:,} | {r['took']*1000:.0f} ms | {r['rate']:,.0f} | {r['requests']:,} | {r['connections']} |")
    print()
    baseline = os.environ.get("WARDEN_BASELINE")
    if baseline and not quick:
        name = os.environ.get("WARDEN_BASELINE_NAME", "baseline")
        pair = [(name, run_once(baseline, backend_bin, out, 20000)),
                ("this build", run_once(warden, backend_bin, out, 20000))]
        print(f"Same run, 20,000 rows each: `{name}` against this build.\n")
        print("| build | until all sent | rows/s | ratio | POSTs seen | connections |")
        print("|---|---:|---:|---:|---:|---:|")
        base = pair[0][1]["rate"]
        for label, r in pair:
            print(f"| {label} | {r['took']*1000:.0f} ms | {r['rate']:,.0f} | {r['rate']/base:.1f}× | {r['requests']:,} | {r['connections']:,} |")
        print()
