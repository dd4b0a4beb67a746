-- The outbox relay's table, as warden creates it at start
-- when `create_schema = true` (the default) for `table = "message_outbox"`.
-- Apply it yourself with create_schema = false (psql -f). Other table
-- names get the same statements with the name replaced.
BEGIN;
SET LOCAL lock_timeout = '200ms';
SELECT pg_advisory_xact_lock(hashtext('warden outbox ' || '"message_outbox"'));
CREATE TABLE IF NOT EXISTS "message_outbox" (
    id              bigserial PRIMARY KEY,
    topic           text NOT NULL,
    partition_key   text,
    payload         jsonb NOT NULL,
    headers         jsonb NOT NULL DEFAULT '{}',
    dedupe_key      text,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'sending', 'sent', 'failed')),
    retry_count     int NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    claimed_until   timestamptz,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    published_at    timestamptz,
    event_id        uuid NOT NULL DEFAULT gen_random_uuid()
);
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                   WHERE attrelid = '"message_outbox"'::regclass AND attname = 'event_id' AND NOT attisdropped) THEN
        ALTER TABLE "message_outbox" ADD COLUMN event_id uuid;
        ALTER TABLE "message_outbox" ALTER COLUMN event_id SET DEFAULT gen_random_uuid();
    END IF;
END
$$;
CREATE OR REPLACE FUNCTION "message_outbox_notify"() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('message_outbox_inserted', '');
    RETURN NULL;
END
$$;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                   WHERE tgname = 'message_outbox_notify' AND tgrelid = '"message_outbox"'::regclass) THEN
        CREATE TRIGGER "message_outbox_notify" AFTER INSERT ON "message_outbox"
            FOR EACH STATEMENT EXECUTE FUNCTION "message_outbox_notify"();
    END IF;
END
$$;
COMMIT;
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS "message_outbox_dedupe_key" ON "message_outbox" (dedupe_key) WHERE dedupe_key IS NOT NULL;
CREATE INDEX CONCURRENTLY IF NOT EXISTS "message_outbox_pending" ON "message_outbox" (id) WHERE status = 'pending';
CREATE INDEX CONCURRENTLY IF NOT EXISTS "message_outbox_sending" ON "message_outbox" (claimed_until) WHERE status = 'sending';
