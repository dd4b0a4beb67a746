"""The `stats` scenario of scripts/bench: what a data service's backlog and
lag statistics cost as the backlog grows.

The statistics run on a session of the service's pool, on a timer of their
own: an exact count of the pending rows (on the pending rows' index) and
the age of the lowest pending id (one index probe). The next reading waits
twenty times as long as the count took, at least a second, so counting
never takes more than a twentieth of a session's time. This scenario makes
an outbox table as the relay makes it (sql/outbox-relay.sql), with a
million rows already sent and a growing backlog, and times the statement
the timer runs (services::data::Leased::stats, for message_outbox) with
psql's \\timing, best of three.
"""

import os
import re
import subprocess

from bench_memory import PG_BIN, Postgres

# The statement of Leased::stats() for "message_outbox".
STATS = """SELECT (SELECT count(*) FROM "message_outbox" WHERE status = 'pending')
     + (SELECT count(*) FROM "message_outbox" WHERE status = 'sending'),
       greatest(0, COALESCE(EXTRACT(EPOCH FROM now() - LEAST(
           (SELECT created_at FROM "message_outbox" WHERE status = 'pending' ORDER BY id LIMIT 1),
           (SELECT min(created_at) FROM "message_outbox" WHERE status = 'sending'))), 0))::float8"""


def timed(pg, query):
    r = subprocess.run([f"{PG_BIN}/psql", "-X", "-q", "-A", "-t", "-h", "127.0.0.1", "-p", str(pg.port),
                        "-U", "postgres", "-d", "postgres", "-c", "\\timing on", "-c", query],
                       check=True, capture_output=True, text=True)
    return float(re.search(r"Time: ([0-9.]+) ms", r.stdout).group(1))


def scenario(warden, root, quick):
    sent = 100_000 if quick else 1_000_000
    backlogs = [10_000, 100_000] if quick else [10_000, 1_000_000, 5_000_000]
    pg = Postgres()
    try:
        ddl = open(os.path.join(root, "sql", "outbox-relay.sql")).read()
        head, indexes = ddl.split("COMMIT;", 1)
        pg.sql(head + "COMMIT;")
        for stmt in indexes.split(";"):
            if stmt.strip():
                pg.sql(stmt)
        pg.sql(f"INSERT INTO message_outbox (topic, payload, status, published_at) "
               f"SELECT 't', '{{}}', 'sent', now() FROM generate_series(1, {sent})")
        print("### Backlog statistics on a deep backlog\n")
        print(f"An outbox with {sent:,} sent rows and a backlog of pending rows after them; the "
              "statement of the statistics timer, best of three (psql's `\\timing`), after "
              "`VACUUM ANALYZE`; the next reading waits 20× the count (at least 1 s).\n")
        print("| pending rows | count and lag | next reading after | share of one session |")
        print("|---:|---:|---:|---:|")
        have = 0
        for n in backlogs:
            pg.sql(f"INSERT INTO message_outbox (topic, payload) SELECT 't', '{{}}' "
                   f"FROM generate_series(1, {n - have})")
            have = n
            pg.sql("VACUUM ANALYZE message_outbox")
            ms = min(timed(pg, STATS) for _ in range(3))
            every = max(1000.0, 20 * ms)
            print(f"| {n:,} | {ms:.1f} ms | {every / 1000:.1f} s | {100 * ms / every:.1f}% |")
        print()
    finally:
        pg.stop()
