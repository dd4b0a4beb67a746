"""`scripts/bench dataplane`: the relay, the replicator and the pipeline
against the machine's own limits, on the same servers, in one run.

A PostgreSQL 15 (fsync on) and a Redis 7 (no persistence) this script
starts. First the raw limits, measured with the servers' own tools:

- PostgreSQL claim-and-mark: pgbench runs the relay's work with no Redis
  in between (claim a batch of pending rows with `FOR UPDATE SKIP LOCKED`,
  mark them sent, in one statement where the relay needs two),
  one client, as one relay does, with the relay's `synchronous_commit =
  off`;
- PostgreSQL idempotent insert: pgbench inserts batches into a replica
  table with `ON CONFLICT (event_id) DO NOTHING`, one client;
- Redis XADD: redis-benchmark, one client, pipelines of the batch size;
- Redis XREADGROUP: one client reading batches of a stream through a group
  (and XACK), pipelined as above.

Then warden, each figure N over the time from the start of the flow (the
rows or entries are in) to the last row (the last entry's id in the stream,
or the last commit into the replica by its commit timestamp): the relay alone (N outbox rows, pre-filled, to a stream), the
replicator alone (N stream entries, pre-filled, to `memory_replica`), and
end to end (N outbox rows through the relay and the replicator). Each is
given as a fraction of the slower of its limits.

Last, latency, on a PostgreSQL and a Redis of its own (nothing else
running): pgbench inserts outbox rows one per transaction at 1,000
per second (`--rate`), and each row's commit-to-replica time is the
replica row's commit timestamp (`track_commit_timestamp`) minus the outbox
row's `created_at` (its transaction's start, before its own commit: the
figure errs high).

Environment: `BENCH_BATCH` (the batch of the raw limits, default 500, the
kinds' default), `BENCH_RELAY_SETTINGS` and `BENCH_REPLICATOR_SETTINGS`
(lines added to the services' tables, e.g. `batch = 500`).
"""
import os
import re
import subprocess
import tempfile
import time
import json
import urllib.error
import urllib.request

from bench_memory import PG_BIN, Postgres, free_port

BATCH = int(os.environ.get("BENCH_BATCH", "500"))
RELAY_SETTINGS = os.environ.get("BENCH_RELAY_SETTINGS", "")
REPLICATOR_SETTINGS = os.environ.get("BENCH_REPLICATOR_SETTINGS", "")


class Redis:
    def __init__(self, aof=False):
        self.dir = tempfile.mkdtemp(prefix="warden-bench-redis-")
        self.port = free_port()
        persistence = ["--appendonly", "yes", "--appendfsync", "everysec"] if aof else ["--appendonly", "no"]
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             *persistence, "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"redis://127.0.0.1:{self.port}"
        deadline = time.time() + 20
        while time.time() < deadline:
            if self.cli("PING") == "PONG":
                return
            time.sleep(0.05)
        raise SystemExit("bench dataplane: Redis did not start")

    def cli(self, *args):
        r = subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True)
        return r.stdout.strip()

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def pgbench(pg, script, seconds):
    """Transactions per second of `script` (one client) over `seconds`."""
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(script)
    os.chmod(f.name, 0o644)
    r = subprocess.run([f"{PG_BIN}/pgbench", "-n", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres",
                        "-c", "1", "-T", str(seconds), "-f", f.name, "postgres"],
                       capture_output=True, text=True, check=True)
    os.unlink(f.name)
    return float(re.search(r"tps = ([0-9.]+)", r.stdout).group(1))


def outbox_ddl(root):
    ddl = open(os.path.join(root, "sql", "outbox-relay.sql")).read()
    head, indexes = ddl.split("COMMIT;", 1)
    return [head + "COMMIT;"] + [s for s in indexes.split(";") if s.strip()]


def fill_outbox(pg, n):
    pg.sql(f"INSERT INTO message_outbox (topic, payload, headers, partition_key) "
           f"SELECT 'bench', jsonb_build_object('n', n, 'text', 'event ' || n), '{{}}', 'p' || (n % 16) "
           f"FROM generate_series(1, {n}) n")


def fill_stream(redis, n):
    # XADDs pipelined through redis-benchmark's random fields are not the
    # relay's; a Lua loop writes the relay's own fields.
    redis.cli("EVAL", "for i=1,tonumber(ARGV[1]) do redis.call('XADD', KEYS[1], '*', 'payload', "
              "'{\"n\": ' .. i .. '}', 'headers', '{}', 'outbox_id', tostring(i), 'dedupe_key', '', "
              "'partition_key', 'p') end return 1", "1", "bench", str(n))


def limits(pg, redis, root, quick):
    secs = 2 if quick else 10
    out = {}
    for s in outbox_ddl(root):
        pg.sql(s)
    fill_outbox(pg, 20_000 if quick else 2_000_000)
    # With the relay's own commit setting (its statements do not wait for
    # the WAL flush; see docs/data-plane.md).
    claim = f"""SET synchronous_commit = off;
BEGIN;
WITH c AS (SELECT id FROM message_outbox WHERE status = 'pending' AND next_attempt_at <= now()
           ORDER BY id LIMIT {BATCH} FOR UPDATE SKIP LOCKED)
UPDATE message_outbox o SET status = 'sent', published_at = now(), claimed_until = NULL
FROM c WHERE o.id = c.id;
COMMIT;
"""
    out["pg_claim"] = pgbench(pg, claim, secs) * BATCH
    pg.sql("CREATE TABLE bench_replica (event_id text PRIMARY KEY, stream text NOT NULL, partition_key text, "
           "payload jsonb NOT NULL, headers jsonb NOT NULL DEFAULT '{}', event_ts timestamptz, "
           "replicated_at timestamptz NOT NULL DEFAULT now())")
    insert = f"""\\set base random(1, 1000000000)
INSERT INTO bench_replica (event_id, stream, partition_key, payload, headers, event_ts)
SELECT (:base::bigint * 1000 + n)::text, 'bench', 'p', '{{"n": 1}}', '{{}}', now()
FROM generate_series(1, {BATCH}) n ON CONFLICT (event_id) DO NOTHING;
"""
    out["pg_insert"] = pgbench(pg, insert, secs) * BATCH
    n = 20_000 if quick else 200_000
    r = subprocess.run(["redis-benchmark", "-p", str(redis.port), "-c", "1", "-P", str(BATCH), "-n", str(n), "-q",
                        "XADD", "rawbench", "*", "payload", '{"n": 1}', "headers", "{}", "outbox_id", "1"],
                       capture_output=True, text=True, check=True)
    out["redis_xadd"] = float(re.search(r"([0-9.]+) requests per second", r.stdout).group(1))
    redis.cli("XGROUP", "CREATE", "rawbench", "g", "0")
    # XREADGROUP of a batch, then XACK of it: one client, in a Lua loop
    # (the reading and acknowledging itself, without a network per batch).
    t = time.perf_counter()
    redis.cli("EVAL", f"""local n = 0
while true do
  local r = redis.call('XREADGROUP', 'GROUP', 'g', 'c', 'COUNT', {BATCH}, 'STREAMS', KEYS[1], '>')
  if not r then break end
  local ids = {{}}
  for _, e in ipairs(r[1][2]) do ids[#ids + 1] = e[1] end
  if #ids == 0 then break end
  redis.call('XACK', KEYS[1], 'g', unpack(ids))
  n = n + #ids
end
return n""", "1", "rawbench")
    out["redis_read"] = n / (time.perf_counter() - t)
    return out


def ready(url):
    """Every service of the registry is ready (from /v1/health)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            services = json.loads(r.read())["services"]
    except Exception as e:
        if isinstance(e, urllib.error.HTTPError):
            try:
                services = json.loads(e.read())["services"]
            except Exception:
                return False
        else:
            return False
    return all(s.get("ready") for s in services.values())


def run_warden(warden, out, name, services, until, timeout=600):
    aport = free_port()
    reg = os.path.join(out, f"dataplane-{name}.toml")
    with open(reg, "w") as f:
        f.write(f"[api]\nlisten = \"127.0.0.1:{aport}\"\n{services}")
    log = open(os.path.join(out, f"dataplane-{name}.log"), "w")
    w = subprocess.Popen([warden, "run", "-c", reg], stdout=log, stderr=log)
    WARDEN[:] = [w.pid]
    try:
        deadline = time.time() + 60
        while not ready(f"http://127.0.0.1:{aport}/v1/health"):
            if time.time() > deadline or w.poll() is not None:
                raise SystemExit(f"bench dataplane: warden ({name}) not ready; see {log.name}")
            time.sleep(0.05)
        return until(aport, timeout)
    finally:
        w.terminate()
        try:
            w.wait(timeout=30)
        except subprocess.TimeoutExpired:
            w.kill()
        log.close()


def timed_until(cond, what, timeout):
    """Waits for `cond`, checking 4 times a second (each check is a client
    process: checking more often would take the CPU the flow needs)."""
    t0 = time.perf_counter()
    while not cond():
        if time.perf_counter() - t0 > timeout:
            raise SystemExit(f"bench dataplane: {what} did not happen within {timeout} s")
        time.sleep(0.25)


def stream_done(redis, stream, since):
    """Seconds from `since` (wall clock) to the last entry of `stream`
    (its id is the time Redis added it, in ms)."""
    last = redis.cli("XREVRANGE", stream, "+", "-", "COUNT", "1").splitlines()[0]
    return int(last.split("-")[0]) / 1000 - since


def table_done(pg, table, since):
    """Seconds from `since` (wall clock) to the last commit that wrote
    `table` (`track_commit_timestamp`)."""
    return float(pg.sql(f"SELECT EXTRACT(EPOCH FROM max(pg_xact_commit_timestamp(xmin))) FROM {table}")) - since


def latency(warden, out, quick, relay, replicator):
    """Commit-to-replica latency at 1,000 events/s, on servers of its own
    (nothing else running: the tables of the throughput figures would
    keep autovacuum and checkpoints busy)."""
    pg, redis = Postgres(settings=("track_commit_timestamp=on",)), Redis()
    try:
        lat_secs = 2 if quick else 20
        latency = (relay + replicator).replace('table = "relay_bench"', 'table = "lat_outbox"').replace(
            'table = "replica_bench"', 'table = "lat_replica"').replace(
            'streams = ["bench"]', 'streams = ["lat"]')

        def latency_until(aport, timeout):
            with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
                f.write("INSERT INTO lat_outbox (topic, payload, headers, partition_key) "
                        "VALUES ('lat', '{\"n\": 1}', '{}', 'p');\n")
            os.chmod(f.name, 0o644)
            r = subprocess.run([f"{PG_BIN}/pgbench", "-n", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres",
                                "-c", "1", "-R", "1000", "-T", str(lat_secs), "-f", f.name, "postgres"],
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise SystemExit(f"bench dataplane: pgbench failed: {r.stderr}")
            os.unlink(f.name)
            total = int(pg.sql("SELECT count(*) FROM lat_outbox"))
            timed_until(lambda: int(pg.sql("SELECT count(*) FROM lat_replica")) >= total,
                        "the paced pipeline", timeout)
            return total
        lat_n = run_warden(warden, out, "latency", latency_for(latency, pg, redis), latency_until)
        p50, p99, pmax = (float(x) * 1000 for x in pg.sql(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY d), percentile_cont(0.99) WITHIN GROUP (ORDER BY d), "
            "max(d) FROM (SELECT EXTRACT(EPOCH FROM pg_xact_commit_timestamp(r.xmin) - o.created_at) AS d "
            "FROM lat_replica r JOIN lat_outbox o ON o.event_id::text = r.event_id) x").split("|"))
        return lat_n, p50, p99, pmax
    finally:
        redis.stop()
        pg.stop()


LIVE_TOPICS = 8
LIVE_CLIENTS = 4


def producers(pg, seconds, rate=None, table="message_outbox", stamp=False):
    """pgbench producers on their own connections (LIVE_CLIENTS, each
    insert its own transaction, `synchronous_commit` on as the server
    says): 1 KB events over LIVE_TOPICS topics into `table`. With `stamp`,
    each transaction also inserts the row's event id into `live_commit`, a row
    nothing updates: its `xmin`'s commit timestamp is the event's commit
    (the outbox row's own `xmin` is the relay's once it is marked).
    Answers inserts/s."""
    insert = (f"INSERT INTO {table} (topic, payload, headers) "
              "VALUES ('live' || :t, jsonb_build_object('pad', repeat('x', 1000)), '{}')")
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(f"\\set t random(0, {LIVE_TOPICS - 1})\n")
        if stamp:
            f.write(f"BEGIN;\n{insert} RETURNING id \\gset\n"
                    f"INSERT INTO live_commit (event_id) SELECT event_id::text FROM {table} WHERE id = :id;\nEND;\n")
        else:
            f.write(f"{insert};\n")
    os.chmod(f.name, 0o644)
    argv = [f"{PG_BIN}/pgbench", "-n", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres",
            "-c", str(LIVE_CLIENTS), "-j", "2", "-T", str(seconds), "-f", f.name]
    if rate:
        argv += ["-R", str(int(rate))]
    r = subprocess.run(argv + ["postgres"], capture_output=True, text=True)
    os.unlink(f.name)
    if r.returncode != 0:
        raise SystemExit(f"bench dataplane: pgbench failed: {r.stderr}")
    return float(re.search(r"tps = ([0-9.]+)", r.stdout).group(1))


def cpu(pg, redis):
    """CPU seconds spent so far by warden, by `pg` (its postmaster, its live
    processes and the backends the postmaster has reaped) and by `redis`:
    what an event costs each, a figure the disk's drift does not move."""
    tick = os.sysconf("SC_CLK_TCK")
    procs = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        # ppid, own time (user + system), reaped children's time
        procs[int(pid)] = (int(fields[1]), int(fields[11]) + int(fields[12]),
                           int(fields[13]) + int(fields[14]))

    def tree(root):
        """`root` and its live descendants, each with its reaped children."""
        used, level = 0, {root} & procs.keys()
        while level:
            used += sum(procs[p][1] + procs[p][2] for p in level)
            level = {p for p, (pp, _, _) in procs.items() if pp in level}
        return used
    return {"warden": tree(WARDEN[0]) / tick if WARDEN else 0.0,
            "postgres": tree(pg.proc.pid) / tick, "redis": tree(redis.proc.pid) / tick}


# The pid of the warden `run_warden` runs.
WARDEN = []


def backlog(pg):
    return int(pg.sql("SELECT count(*) FROM message_outbox WHERE status IN ('pending', 'sending')"))


def live(warden, root, out, quick):
    """The live scenario: producers insert while the relay and the
    replicator run, Redis with an append-only file synced every second.

    The producers' rate alone and with warden are measured in alternating
    windows of one run (alone, with, alone, with, ...): the producers are
    bound by the disk's flushes, which drift over minutes on a shared
    machine, so two figures taken minutes apart would compare the disk,
    not warden. "Alone" inserts into a twin of the outbox (the same
    columns, indexes and insert trigger, notifying a channel nobody
    listens on) while warden runs with nothing to do."""
    window = 2 if quick else int(os.environ.get("BENCH_LIVE_WINDOW", "20"))
    pairs = 1 if quick else max(1, int(os.environ.get("BENCH_LIVE_SECS", "60")) // window)
    lat_secs = 2 if quick else 20
    # The writer stays open for a whole run (60 s), as a batch job would.
    held_secs = 2 if quick else int(os.environ.get("BENCH_LIVE_SECS", "60"))
    pg, redis = Postgres(settings=("track_commit_timestamp=on",)), Redis(aof=True)
    streams = ", ".join(f'"live{i}"' for i in range(LIVE_TOPICS))
    services = f"""
[services.relay]
kind = "outbox-relay"
postgres = "{pg.dsn}"
redis = "{redis.url}"
{RELAY_SETTINGS}

[services.replicator]
kind = "stream-replicator"
postgres = "{pg.dsn}"
redis = "{redis.url}"
streams = [{streams}]
{REPLICATOR_SETTINGS}
"""
    try:
        for s in outbox_ddl(root):
            pg.sql(s)
        twin = "message_outbox_alone"
        pg.sql(f"CREATE TABLE {twin} (LIKE message_outbox INCLUDING ALL)")
        pg.sql("CREATE FUNCTION live_alone_notify() RETURNS trigger LANGUAGE plpgsql AS "
               "$$ BEGIN PERFORM pg_notify('live_alone_inserted', ''); RETURN NULL; END $$")
        pg.sql(f"CREATE TRIGGER live_alone_notify AFTER INSERT ON {twin} "
               "FOR EACH STATEMENT EXECUTE FUNCTION live_alone_notify()")
        pg.sql("CREATE TABLE live_commit (n bigserial PRIMARY KEY, event_id text NOT NULL)")
        wal = lambda: int(pg.sql("SELECT pg_current_wal_lsn() - '0/0'"))

        def with_warden(aport, timeout):
            res = {"alone": [], "with": [], "backlog_end": [], "drain": [], "wal_alone": 0, "wal_with": 0,
                   "n_alone": 0, "n_with": 0}
            drained = lambda: backlog(pg) == 0
            # What each event cost the server: WAL bytes, and the outbox's
            # row versions (updates, HOT or not).
            stats = lambda: [int(x) for x in pg.sql(
                "SELECT n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del FROM pg_stat_user_tables "
                "WHERE relname = 'message_outbox'").split("|")]
            s1 = stats()
            spent = {"alone": {}, "with": {}}

            def charge(which, before):
                for k, v in cpu(pg, redis).items():
                    spent[which][k] = spent[which].get(k, 0) + v - before[k]
            for _ in range(pairs):
                w, c = wal(), cpu(pg, redis)
                rate = producers(pg, window, table=twin)
                charge("alone", c)
                res["alone"].append(rate)
                res["wal_alone"] += wal() - w
                res["n_alone"] += rate * window
                # Unpaced: what the producers get with warden running, and
                # whether warden keeps up (the backlog at the end, and how
                # long it takes to drain).
                w, c = wal(), cpu(pg, redis)
                rate = producers(pg, window)
                res["with"].append(rate)
                res["backlog_end"].append(backlog(pg))
                t = time.perf_counter()
                timed_until(drained, "the live backlog drained", timeout)
                res["drain"].append(time.perf_counter() - t)
                charge("with", c)
                res["wal_with"] += wal() - w
                res["n_with"] += rate * window
            res["cpu"] = {w: {k: v / res[f"n_{w}"] * 1e6 for k, v in spent[w].items()} for w in spent}
            time.sleep(1)  # the statistics collector
            s2 = stats()
            res["upd"] = (s2[1] - s1[1]) / res["n_with"]
            res["hot"] = (s2[2] - s1[2]) / res["n_with"]
            res["del"] = (s2[3] - s1[3]) / res["n_with"]
            clean = sum(res["with"]) / len(res["with"])

            def latency_at(rate):
                first = int(pg.sql("SELECT COALESCE(max(n), 0) FROM live_commit"))
                producers(pg, lat_secs, rate, stamp=True)
                total = int(pg.sql(f"SELECT count(*) FROM live_commit WHERE n > {first}"))
                timed_until(lambda: int(pg.sql(
                    "SELECT count(*) FROM memory_replica r JOIN live_commit c ON c.event_id = r.event_id "
                    f"WHERE c.n > {first}")) >= total,
                    "the paced events replicated", timeout)
                return tuple(float(x) * 1000 for x in pg.sql(
                    "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY d), "
                    "percentile_cont(0.99) WITHIN GROUP (ORDER BY d) FROM ("
                    "SELECT EXTRACT(EPOCH FROM pg_xact_commit_timestamp(r.xmin) - pg_xact_commit_timestamp(c.xmin)) AS d "
                    f"FROM memory_replica r JOIN live_commit c ON c.event_id = r.event_id WHERE c.n > {first}) x"
                ).split("|"))
            res["lat_1000"] = latency_at(1000)
            res["rate_90"] = 0.9 * clean
            res["lat_90"] = latency_at(res["rate_90"])
            # A transaction that writes, then stays open for the run.
            pg.sql("CREATE TABLE IF NOT EXISTS live_hold (n int)")
            holder = subprocess.Popen(
                [f"{PG_BIN}/psql", "-X", "-q", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres",
                 "-d", "postgres", "-c", "BEGIN", "-c", "INSERT INTO live_hold VALUES (1)",
                 "-c", f"SELECT pg_sleep({held_secs + 30})"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            try:
                res["held"] = producers(pg, held_secs)
                res["held_backlog_end"] = backlog(pg)
            finally:
                pg.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE query LIKE '%pg_sleep(%' AND pid <> pg_backend_pid()")
                holder.terminate()
                holder.wait()
            timed_until(drained, "the held backlog drained", timeout)
            return res
        res = run_warden(warden, out, "live", services, with_warden)
    finally:
        redis.stop()
        pg.stop()
    alone = sum(res["alone"]) / len(res["alone"])
    clean = sum(res["with"]) / len(res["with"])
    pair = [w / a for a, w in zip(res["alone"], res["with"])]
    print("### Live: producers inserting while warden runs\n")
    print(f"pgbench producers ({LIVE_CLIENTS} clients, one insert per transaction, `synchronous_commit` on, "
          f"fsync on) insert 1 KB events over {LIVE_TOPICS} topics; Redis with "
          "`appendonly yes`, `appendfsync everysec`; the relay and the replicator with their defaults. "
          f"{pairs} pairs of {window} s windows, alternating: the producers alone (into a twin of the "
          "outbox that warden does not read), then with warden relaying and replicating.\n")
    print("| | inserts/s | ratio |")
    print("|---|---:|---:|")
    print(f"| producers alone (the machine's limit for this load) | {alone:,.0f} | 1.00 |")
    print(f"| producers with warden running | {clean:,.0f} | {clean / alone:.2f} "
          f"(pairs {min(pair):.2f}–{max(pair):.2f}) |")
    print(f"| the same, a writing transaction held open for {held_secs} s | {res['held']:,.0f} | "
          f"{res['held'] / alone:.2f} ({res['held'] / clean:.2f} of the clean live rate) |")
    print()
    print(f"Backlog when each window with warden ended: {', '.join(f'{b:,}' for b in res['backlog_end'])} rows "
          f"(drained within {max(res['drain']):.1f} s); with the writer held open: {res['held_backlog_end']:,}.\n")
    print(f"What an event costs PostgreSQL: {res['wal_alone'] / res['n_alone']:,.0f} bytes of WAL for the "
          f"producer's insert alone, {res['wal_with'] / res['n_with']:,.0f} with warden running (the relay's "
          f"writes and the replica's insert); {res['upd']:.2f} updates of the outbox row per event, "
          f"{res['hot']:.2f} of them HOT, {res['del']:.2f} deletes.\n")
    ca, cw = res["cpu"]["alone"], res["cpu"]["with"]
    print(f"CPU per event (µs, the drift of the disk does not move these): PostgreSQL {ca['postgres']:,.0f} "
          f"for the producer's insert alone, {cw['postgres']:,.0f} with warden running; warden "
          f"{cw['warden']:,.0f}; Redis {cw['redis']:,.0f}. Warden's whole cost: "
          f"{cw['postgres'] - ca['postgres'] + cw['warden'] + cw['redis'] - ca['redis'] - ca['warden']:,.0f} µs "
          "per event, on 2 cores shared with the producers.\n")
    p50, p99 = res["lat_1000"]
    q50, q99 = res["lat_90"]
    print(f"Commit-to-replica latency (the producer's commit to the replica row's, by commit timestamps): "
          f"at 1,000 events/s p50 {p50:.1f} ms, p99 {p99:.1f} ms; "
          f"at 90% of the live rate ({res['rate_90']:,.0f}/s) p50 {q50:.1f} ms, p99 {q99:.1f} ms "
          "(goals: producers with warden ≥ 0.7 of alone, p99 < 10 ms at 90%, ≥ 0.8 of the clean live rate "
          "with the writer open).\n")


def latency_for(services, pg, redis):
    """`services` pointed at `pg` and `redis`."""
    services = re.sub(r'postgres = "[^"]*"', f'postgres = "{pg.dsn}"', services)
    return re.sub(r'redis = "[^"]*"', f'redis = "{redis.url}"', services)


def scenario(warden, root, out, quick):
    n = 20_000 if quick else 200_000
    pg, redis = Postgres(settings=("track_commit_timestamp=on",)), Redis()
    try:
        lim = limits(pg, redis, root, quick)
        relay = f"""
[services.relay]
kind = "outbox-relay"
postgres = "{pg.dsn}"
redis = "{redis.url}"
table = "relay_bench"
{RELAY_SETTINGS}
"""
        replicator = f"""
[services.replicator]
kind = "stream-replicator"
postgres = "{pg.dsn}"
redis = "{redis.url}"
streams = ["bench"]
table = "replica_bench"
{REPLICATOR_SETTINGS}
"""
        # The relay alone: a full outbox, drained.
        def relay_until(aport, timeout):
            fill_rel = lambda: pg.sql(
                "INSERT INTO relay_bench (topic, payload, headers, partition_key) "
                f"SELECT 'relayed', jsonb_build_object('n', n), '{{}}', 'p' FROM generate_series(1, {n}) n")
            fill_rel()
            since = time.time()
            timed_until(lambda: int(redis.cli("XLEN", "relayed") or 0) >= n, "the relay", timeout)
            return stream_done(redis, "relayed", since)
        t_relay = run_warden(warden, out, "relay", relay, relay_until)

        # The relay again, on a table that keeps `kept` sent rows, then
        # the same while another session holds a transaction open (vacuum
        # cannot remove the row versions the claims leave behind: where
        # queue tables on PostgreSQL slow down).
        kept = 100_000 if quick else 1_000_000

        def relay_kept(table, stream, hold):
            def until(aport, timeout):
                pg.sql(f"INSERT INTO {table} (topic, payload, headers, status, published_at) "
                       f"SELECT 'old', '{{}}', '{{}}', 'sent', now() FROM generate_series(1, {kept})")
                pg.sql(f"VACUUM ANALYZE {table}")
                holder = None
                if hold:
                    holder = subprocess.Popen(
                        [f"{PG_BIN}/psql", "-X", "-q", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres",
                         "-d", "postgres", "-c", "BEGIN ISOLATION LEVEL REPEATABLE READ",
                         "-c", "SELECT count(*) FROM pg_class", "-c", "SELECT pg_sleep(3600)"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    time.sleep(0.5)
                try:
                    pg.sql(f"INSERT INTO {table} (topic, payload, headers, partition_key) "
                           f"SELECT '{stream}', jsonb_build_object('n', n), '{{}}', 'p' "
                           f"FROM generate_series(1, {n}) n")
                    since = time.time()
                    timed_until(lambda: int(redis.cli("XLEN", stream) or 0) >= n, "the relay", timeout)
                    return stream_done(redis, stream, since)
                finally:
                    if holder:
                        # The server-side transaction outlives its client
                        # until told: end it.
                        pg.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                               "WHERE query LIKE '%pg_sleep(3600)%' AND pid <> pg_backend_pid()")
                        holder.terminate()
                        holder.wait()
            return until
        t_kept = run_warden(warden, out, "relay-kept", relay.replace("relay_bench", "relay_kept"),
                            relay_kept("relay_kept", "kept", False))
        t_held = run_warden(warden, out, "relay-held", relay.replace("relay_bench", "relay_held"),
                            relay_kept("relay_held", "held", True))
        # The replicator alone: a full stream, applied.
        redis.cli("DEL", "bench")

        def replicator_until(aport, timeout):
            fill_stream(redis, n)
            since = time.time()
            timed_until(
                lambda: int(pg.sql("SELECT count(*) FROM replica_bench")) >= n, "the replicator", timeout)
            return table_done(pg, "replica_bench", since)
        t_rep = run_warden(warden, out, "replicator", replicator, replicator_until)
        # End to end: outbox rows through the relay into the stream the
        # replicator reads.
        redis.cli("DEL", "bench")
        pg.sql("TRUNCATE replica_bench")
        both = relay.replace('table = "relay_bench"', 'table = "e2e_outbox"') + replicator

        def both_until(aport, timeout):
            pg.sql("INSERT INTO e2e_outbox (topic, payload, headers, partition_key) "
                   f"SELECT 'bench', jsonb_build_object('n', n), '{{}}', 'p' FROM generate_series(1, {n}) n")
            since = time.time()
            timed_until(
                lambda: int(pg.sql("SELECT count(*) FROM replica_bench")) >= n, "the pipeline", timeout)
            return table_done(pg, "replica_bench", since)
        t_e2e = run_warden(warden, out, "e2e", both, both_until)

    finally:
        redis.stop()
        pg.stop()
    lat_n, p50, p99, pmax = latency(warden, out, quick, relay, replicator)

    print("### The data plane against the machine's limits\n")
    print(f"One PostgreSQL 15 (fsync on) and one Redis (no persistence) on this machine; batches of {BATCH}; "
          f"warden with each kind's defaults, {n:,} rows or entries per figure. Limits: one client each "
          "(pgbench, redis-benchmark -P, a Lua loop for XREADGROUP+XACK).\n")
    print("| raw limit | rows/s |")
    print("|---|---:|")
    print(f"| PostgreSQL claim and mark (batches of {BATCH}) | {lim['pg_claim']:,.0f} |")
    print(f"| PostgreSQL idempotent insert (batches of {BATCH}) | {lim['pg_insert']:,.0f} |")
    print(f"| Redis XADD (pipelines of {BATCH}) | {lim['redis_xadd']:,.0f} |")
    print(f"| Redis XREADGROUP + XACK (batches of {BATCH}, in Lua) | {lim['redis_read']:,.0f} |")
    print()
    rows = [
        ("relay alone (outbox → stream)", n / t_relay, min(lim["pg_claim"], lim["redis_xadd"])),
        (f"relay, {kept:,} sent rows kept", n / t_kept, min(lim["pg_claim"], lim["redis_xadd"])),
        (f"relay, {kept:,} kept, a transaction holding vacuum back", n / t_held,
         min(lim["pg_claim"], lim["redis_xadd"])),
        ("replicator alone (stream → table)", n / t_rep, min(lim["pg_insert"], lim["redis_read"])),
        ("end to end (outbox → stream → table)", n / t_e2e,
         min(lim["pg_claim"], lim["redis_xadd"], lim["pg_insert"], lim["redis_read"])),
    ]
    print("| warden | rows/s | limit (slowest part) | fraction |")
    print("|---|---:|---:|---:|")
    for name, rate, limit in rows:
        print(f"| {name} | {rate:,.0f} | {limit:,.0f} | {rate / limit:.2f} |")
    print()
    print(f"Against the clean relay: {n / t_kept / (n / t_relay):.2f} with {kept:,} sent rows kept, "
          f"{n / t_held / (n / t_relay):.2f} with a transaction holding vacuum back (goal: 0.8 each).\n")
    print(f"Commit-to-replica latency at 1,000 events/s (pgbench --rate, {lat_n:,} events, one per transaction): "
          f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {pmax:.1f} ms (goals: p50 under 3 ms, p99 under 10 ms).\n")
    if RELAY_SETTINGS or REPLICATOR_SETTINGS:
        print(f"Settings: relay `{RELAY_SETTINGS}`, replicator `{REPLICATOR_SETTINGS}`.\n")
    live(warden, root, out, quick)
