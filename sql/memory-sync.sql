-- memory-sync's queue table, as warden creates it at start
-- when `create_schema = true` (the default) for `table =
-- "memory_write_outbox"`. The WAL events go to the outbox table, whose DDL is
-- sql/outbox-relay.sql (apply that first).
BEGIN;
SET LOCAL lock_timeout = '200ms';
SELECT pg_advisory_xact_lock(hashtext('warden memory-sync ' || '"memory_write_outbox"'));
CREATE TABLE IF NOT EXISTS "memory_write_outbox" (
    id              bigserial PRIMARY KEY,
    tenant          text,
    session_id      text,
    idempotency_key text NOT NULL DEFAULT gen_random_uuid()::text,
    payload         jsonb NOT NULL,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'sending', 'sent', 'failed')),
    retry_count     int NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    claimed_until   timestamptz,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz
);
CREATE OR REPLACE FUNCTION "memory_write_outbox_notify"() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('memory_write_outbox_inserted', '');
    RETURN NULL;
END
$$;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                   WHERE tgname = 'memory_write_outbox_notify' AND tgrelid = '"memory_write_outbox"'::regclass) THEN
        CREATE TRIGGER "memory_write_outbox_notify" AFTER INSERT ON "memory_write_outbox"
            FOR EACH STATEMENT EXECUTE FUNCTION "memory_write_outbox_notify"();
    END IF;
END
$$;
COMMIT;
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS "memory_write_outbox_idempotency_key" ON "memory_write_outbox" (idempotency_key);
CREATE INDEX CONCURRENTLY IF NOT EXISTS "memory_write_outbox_pending" ON "memory_write_outbox" (id) WHERE status = 'pending';
CREATE INDEX CONCURRENTLY IF NOT EXISTS "memory_write_outbox_sending" ON "memory_write_outbox" (claimed_until) WHERE status = 'sending';
