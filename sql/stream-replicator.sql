-- stream-replicator's tables, as warden creates them at start when
-- `create_schema = true` (the default) for `table = "memory_replica"`: the
-- replica (not created when `columns` maps payload keys to a table of your
-- own, which needs a unique `event_id` text column) and the dead-letter
-- table every replicator shares.
BEGIN;
SET LOCAL lock_timeout = '200ms';
SELECT pg_advisory_xact_lock(hashtext('warden stream-replicator'));
CREATE TABLE IF NOT EXISTS "memory_replica" (
    event_id      text PRIMARY KEY,
    stream        text NOT NULL,
    partition_key text,
    payload       jsonb NOT NULL,
    headers       jsonb NOT NULL DEFAULT '{}',
    event_ts      timestamptz,
    replicated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS warden_dlq (
    id          bigserial PRIMARY KEY,
    service     text NOT NULL,
    stream      text NOT NULL,
    entry_id    text NOT NULL,
    event_id    text,
    reason      text NOT NULL,
    fields      jsonb NOT NULL,
    deliveries  int NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    replayed_at timestamptz,
    UNIQUE (service, stream, entry_id)
);
COMMIT;
