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
-- The size (dead letters not replayed) is read every second, and replayed
-- ones are deleted after `dlq_keep_replayed`: each from an index, not the
-- whole table.
CREATE INDEX IF NOT EXISTS warden_dlq_unreplayed ON warden_dlq (service) WHERE replayed_at IS NULL;
CREATE INDEX IF NOT EXISTS warden_dlq_replayed ON warden_dlq (service, replayed_at) WHERE replayed_at IS NOT NULL;
COMMIT;
