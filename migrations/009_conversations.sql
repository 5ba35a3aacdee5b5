-- Conversations (see README, "Conversations"): the bot's replies go through an
-- outbox written in the same transaction as the message row; receipts, edits
-- and deletions are recorded against the messages and replies they refer to;
-- media arrive with the webhook and are stored sealed, apart from the row;
-- a handler's per-chat state is kept beside the chat. Content in these
-- tables is sealed like the messages' (text_enc, state_enc, data_enc).

-- --- messages: handled, deleted, receipts, media ------------------------------
ALTER TABLE healthcare.whatsapp_messages
    ADD COLUMN IF NOT EXISTS deleted_at timestamptz,
    ADD COLUMN IF NOT EXISTS status text,
    ADD COLUMN IF NOT EXISTS status_at timestamptz,
    ADD COLUMN IF NOT EXISTS media_id uuid;

-- --- the reply outbox ---------------------------------------------------------------
CREATE TABLE IF NOT EXISTS healthcare.whatsapp_outbox (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_name        text NOT NULL,
    remote_jid           text NOT NULL,
    -- The stream partition of the chat: only its owner sends, in order.
    partition            integer NOT NULL,
    organization_id      uuid,
    -- The inbound message it answers (no foreign key: erasure and retention
    -- remove rows independently).
    message_row_id       bigint,
    inbound_message_id   text NOT NULL,
    -- The reply's place among the replies to that message (1, 2, ...).
    seq                  integer NOT NULL,
    text_body            text,
    text_enc             text,
    content_key_id       text,
    status               text NOT NULL DEFAULT 'pending'
                         CHECK (status IN ('pending', 'sent', 'failed')),
    attempts             integer NOT NULL DEFAULT 0,
    next_attempt_at      timestamptz NOT NULL DEFAULT now(),
    last_error           text,  -- an error type or an HTTP status, never a body
    evolution_message_id text,
    -- The inbound message's trace context: the reply's spans join its trace.
    traceparent          text,
    tracestate           text,
    accepted_at          timestamptz NOT NULL,  -- when the inbound webhook was accepted
    created_at           timestamptz NOT NULL DEFAULT now(),
    sent_at              timestamptz,
    delivered_at         timestamptz,
    read_at              timestamptz,
    content_purged_at    timestamptz
);
CREATE INDEX IF NOT EXISTS whatsapp_outbox_due_idx
    ON healthcare.whatsapp_outbox (partition, next_attempt_at, id) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS whatsapp_outbox_chat_idx
    ON healthcare.whatsapp_outbox (instance_name, remote_jid, id);
CREATE INDEX IF NOT EXISTS whatsapp_outbox_evolution_idx
    ON healthcare.whatsapp_outbox (instance_name, evolution_message_id)
    WHERE evolution_message_id IS NOT NULL;

-- --- receipts, edits -----------------------------------------------------------------
CREATE TABLE IF NOT EXISTS healthcare.whatsapp_receipts (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_name   text NOT NULL,
    remote_jid      text NOT NULL,
    from_me         boolean NOT NULL,
    message_id      text NOT NULL,
    status          text NOT NULL,
    stream_id       text NOT NULL,
    received_at     timestamptz NOT NULL,
    organization_id uuid,
    -- One row per status of a message: Evolution resends what it got no 2xx for.
    UNIQUE (instance_name, remote_jid, from_me, message_id, status)
);

CREATE TABLE IF NOT EXISTS healthcare.whatsapp_message_edits (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_name     text NOT NULL,
    remote_jid        text NOT NULL,
    from_me           boolean NOT NULL,
    message_id        text NOT NULL,
    text_body         text,
    text_enc          text,
    content_key_id    text,
    edited_at         timestamptz,
    stream_id         text NOT NULL,
    received_at       timestamptz NOT NULL,
    organization_id   uuid,
    content_purged_at timestamptz,
    -- One row per edit (a resent webhook is the same edit).
    UNIQUE NULLS NOT DISTINCT (instance_name, remote_jid, from_me, message_id, edited_at)
);

-- --- media -----------------------------------------------------------------------------
-- Written by ingest through put_media (its role has no table access), read by
-- the worker; the bytes are sealed (data_enc) unless content keys are disabled.
CREATE TABLE IF NOT EXISTS healthcare.whatsapp_media (
    id              uuid PRIMARY KEY,
    instance_name   text NOT NULL,
    remote_jid      text NOT NULL,
    message_id      text NOT NULL,
    mimetype        text,
    size_bytes      bigint NOT NULL,
    sha256          text NOT NULL,
    data            bytea,
    data_enc        bytea,
    content_key_id  text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    content_purged_at timestamptz
);
CREATE INDEX IF NOT EXISTS whatsapp_media_chat_idx
    ON healthcare.whatsapp_media (instance_name, remote_jid);

CREATE OR REPLACE FUNCTION healthcare.put_media(
    p_id uuid, p_instance text, p_remote_jid text, p_message_id text, p_mimetype text,
    p_size bigint, p_sha256 text, p_data bytea, p_data_enc bytea, p_key_id text
) RETURNS void
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, healthcare
AS $$
    INSERT INTO healthcare.whatsapp_media
        (id, instance_name, remote_jid, message_id, mimetype, size_bytes, sha256,
         data, data_enc, content_key_id)
    VALUES (p_id, p_instance, p_remote_jid, p_message_id, p_mimetype, p_size, p_sha256,
            p_data, p_data_enc, p_key_id)
    ON CONFLICT (id) DO NOTHING
$$;
REVOKE ALL ON FUNCTION healthcare.put_media(uuid, text, text, text, text, bigint, text, bytea, bytea, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION healthcare.put_media(uuid, text, text, text, text, bigint, text, bytea, bytea, text) TO wabot_ingest;

-- --- a handler's per-chat state --------------------------------------------------------
CREATE TABLE IF NOT EXISTS healthcare.chat_state (
    instance_name   text NOT NULL,
    remote_jid      text NOT NULL,
    state           jsonb,
    state_enc       text,
    content_key_id  text,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instance_name, remote_jid)
);

-- --- privileges of the worker role -----------------------------------------------------
GRANT INSERT (media_id) ON healthcare.whatsapp_messages TO wabot_app;
GRANT UPDATE (deleted_at, status, status_at) ON healthcare.whatsapp_messages TO wabot_app;
GRANT SELECT (deleted_at, status, media_id) ON healthcare.whatsapp_messages TO wabot_app;
GRANT SELECT, INSERT, UPDATE ON healthcare.whatsapp_outbox TO wabot_app;
GRANT SELECT, INSERT ON healthcare.whatsapp_receipts, healthcare.whatsapp_message_edits TO wabot_app;
GRANT SELECT (id, instance_name, remote_jid, message_id, mimetype, size_bytes, sha256, data, data_enc, content_key_id)
    ON healthcare.whatsapp_media TO wabot_app;
GRANT SELECT, INSERT, UPDATE ON healthcare.chat_state TO wabot_app;

-- --- retention and erasure cover the new tables --------------------------------------------
CREATE OR REPLACE FUNCTION healthcare.purge_message_content(p_before timestamptz, p_limit integer)
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, healthcare
AS $$
DECLARE
    purged integer;
BEGIN
    WITH batch AS (
        SELECT id FROM healthcare.whatsapp_messages
         WHERE received_at < p_before AND content_purged_at IS NULL
         ORDER BY received_at
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED
    ), done AS (
        UPDATE healthcare.whatsapp_messages AS m
           SET text_body = NULL, push_name = NULL, raw_payload = NULL,
               text_body_enc = NULL, push_name_enc = NULL, raw_payload_enc = NULL,
               content_key_id = NULL, content_purged_at = now()
          FROM batch WHERE m.id = batch.id
        RETURNING m.media_id
    ), media AS (
        UPDATE healthcare.whatsapp_media AS d
           SET data = NULL, data_enc = NULL, content_key_id = NULL, content_purged_at = now()
          FROM done WHERE d.id = done.media_id
        RETURNING 1
    )
    SELECT count(*)::integer INTO purged FROM done;
    UPDATE healthcare.whatsapp_outbox
       SET text_body = NULL, text_enc = NULL, content_key_id = NULL, content_purged_at = now()
     WHERE accepted_at < p_before AND content_purged_at IS NULL AND status <> 'pending';
    UPDATE healthcare.whatsapp_message_edits
       SET text_body = NULL, text_enc = NULL, content_key_id = NULL, content_purged_at = now()
     WHERE received_at < p_before AND content_purged_at IS NULL;
    -- Media whose webhook never became a row (a crash between ingest and worker).
    UPDATE healthcare.whatsapp_media
       SET data = NULL, data_enc = NULL, content_key_id = NULL, content_purged_at = now()
     WHERE created_at < p_before AND content_purged_at IS NULL;
    RETURN purged;
END;
$$;

CREATE OR REPLACE FUNCTION healthcare.erase_chat(p_remote_jid text, p_instance text)
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, healthcare
AS $$
DECLARE
    gone integer;
BEGIN
    DELETE FROM healthcare.whatsapp_messages
     WHERE remote_jid = p_remote_jid AND (p_instance IS NULL OR instance_name = p_instance);
    GET DIAGNOSTICS gone = ROW_COUNT;
    DELETE FROM healthcare.whatsapp_outbox
     WHERE remote_jid = p_remote_jid AND (p_instance IS NULL OR instance_name = p_instance);
    DELETE FROM healthcare.whatsapp_receipts
     WHERE remote_jid = p_remote_jid AND (p_instance IS NULL OR instance_name = p_instance);
    DELETE FROM healthcare.whatsapp_message_edits
     WHERE remote_jid = p_remote_jid AND (p_instance IS NULL OR instance_name = p_instance);
    DELETE FROM healthcare.whatsapp_media
     WHERE remote_jid = p_remote_jid AND (p_instance IS NULL OR instance_name = p_instance);
    DELETE FROM healthcare.chat_state
     WHERE remote_jid = p_remote_jid AND (p_instance IS NULL OR instance_name = p_instance);
    RETURN gone;
END;
$$;

-- --- row-level security by organization on the new message tables ------------------------
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['whatsapp_outbox', 'whatsapp_receipts', 'whatsapp_message_edits']
    LOOP
        EXECUTE format('ALTER TABLE healthcare.%I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('DROP POLICY IF EXISTS pipeline_all ON healthcare.%I', t);
        EXECUTE format(
            'CREATE POLICY pipeline_all ON healthcare.%I TO wabot_app USING (true) WITH CHECK (true)', t);
        EXECUTE format('DROP POLICY IF EXISTS organization_rows ON healthcare.%I', t);
        EXECUTE format(
            'CREATE POLICY organization_rows ON healthcare.%I FOR SELECT TO wabot_org_reader'
            ' USING (organization_id = NULLIF(current_setting(''wabot.organization_id'', true), '''')::uuid)', t);
        EXECUTE format('GRANT SELECT ON healthcare.%I TO wabot_org_reader', t);
    END LOOP;
END
$$;
