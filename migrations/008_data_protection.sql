-- Data protection in the database (see README, "Data protection"):
--   * an append-only audit log of erase, redrive, reencrypt and purge runs;
--   * the worker role reads only the columns it uses, never other
--     integrations' configuration (whatsapp ones through a function);
--   * content purges and chat erasure through functions, so the worker role
--     itself can neither UPDATE nor DELETE messages;
--   * an ingest role without any table access;
--   * row-level security by organization on the message table, for readers
--     outside the pipeline (dashboards, per-clinic APIs).
-- Roles are cluster-wide: each is created only if absent.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'wabot_ingest') THEN
        CREATE ROLE wabot_ingest NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'wabot_org_reader') THEN
        CREATE ROLE wabot_org_reader NOLOGIN;
    END IF;
END
$$;

-- --- audit ----------------------------------------------------------------
CREATE TABLE IF NOT EXISTS healthcare.audit_log (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at       timestamptz NOT NULL DEFAULT now(),
    action   text NOT NULL
             CHECK (action IN ('erase', 'redrive', 'redrive_replies', 'reencrypt', 'purge')),
    -- Who ran it: the operator's name from the environment, or the service.
    operator text NOT NULL,
    -- Counts and parameters only, never message content or phone numbers.
    details  jsonb NOT NULL DEFAULT '{}'::jsonb
);

CREATE OR REPLACE FUNCTION healthcare.audit_log_is_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'healthcare.audit_log is append-only' USING ERRCODE = '42501';
END;
$$;

DROP TRIGGER IF EXISTS audit_log_no_change ON healthcare.audit_log;
CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON healthcare.audit_log
    FOR EACH ROW EXECUTE FUNCTION healthcare.audit_log_is_append_only();
DROP TRIGGER IF EXISTS audit_log_no_truncate ON healthcare.audit_log;
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON healthcare.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION healthcare.audit_log_is_append_only();

GRANT INSERT (action, operator, details) ON healthcare.audit_log TO wabot_app;

-- --- whatsapp integrations only ----------------------------------------------
-- The legacy integrations table holds every integration's configuration
-- (other vendors' secrets too); the worker only needs the organization and
-- clinic of a whatsapp instance.
CREATE OR REPLACE FUNCTION healthcare.whatsapp_integration(p_instance text)
RETURNS TABLE (organization_id uuid, clinic_id uuid)
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, healthcare
AS $$
    SELECT i.organization_id, i.clinic_id
      FROM healthcare.integrations AS i
     WHERE i.type = 'whatsapp' AND i.config ->> 'instance_name' = p_instance
     ORDER BY i.created_at, i.id
     LIMIT 1
$$;
REVOKE ALL ON FUNCTION healthcare.whatsapp_integration(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION healthcare.whatsapp_integration(text) TO wabot_app;

-- --- column-level grants for the worker role --------------------------------
REVOKE SELECT ON healthcare.integrations FROM wabot_app;
REVOKE SELECT ON healthcare.whatsapp_instances FROM wabot_app;
GRANT SELECT (id, instance_name, organization_id, clinic_id, status)
    ON healthcare.whatsapp_instances TO wabot_app;
REVOKE SELECT, INSERT ON healthcare.whatsapp_messages FROM wabot_app;
GRANT INSERT (
    instance_name, remote_jid, from_me, message_id, participant, push_name,
    message_type, text_body, raw_payload, message_timestamp, resolution,
    resolved_instance, instance_id, organization_id, clinic_id, trace_id,
    stream_id, received_at, parse_issues, text_body_enc, push_name_enc,
    raw_payload_enc, content_key_id
) ON healthcare.whatsapp_messages TO wabot_app;
-- INSERT .. ON CONFLICT .. RETURNING id reads the conflict target and id.
GRANT SELECT (id, instance_name, remote_jid, from_me, message_id)
    ON healthcare.whatsapp_messages TO wabot_app;

-- --- retention and erasure -----------------------------------------------------
-- Content older than p_before is removed (metadata kept), at most p_limit
-- rows per call so each call is a short transaction. Returns rows purged.
CREATE OR REPLACE FUNCTION healthcare.purge_message_content(p_before timestamptz, p_limit integer)
RETURNS integer
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, healthcare
AS $$
    WITH batch AS (
        SELECT id FROM healthcare.whatsapp_messages
         WHERE received_at < p_before AND content_purged_at IS NULL
         ORDER BY received_at
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED
    ), purged AS (
        UPDATE healthcare.whatsapp_messages AS m
           SET text_body = NULL, push_name = NULL, raw_payload = NULL,
               text_body_enc = NULL, push_name_enc = NULL, raw_payload_enc = NULL,
               content_key_id = NULL, content_purged_at = now()
          FROM batch WHERE m.id = batch.id
        RETURNING 1
    )
    SELECT count(*)::integer FROM purged
$$;
REVOKE ALL ON FUNCTION healthcare.purge_message_content(timestamptz, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION healthcare.purge_message_content(timestamptz, integer) TO wabot_app;

-- Every stored message of one chat (of one instance, or of every instance).
CREATE OR REPLACE FUNCTION healthcare.erase_chat(p_remote_jid text, p_instance text)
RETURNS integer
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, healthcare
AS $$
    WITH gone AS (
        DELETE FROM healthcare.whatsapp_messages
         WHERE remote_jid = p_remote_jid
           AND (p_instance IS NULL OR instance_name = p_instance)
        RETURNING 1
    )
    SELECT count(*)::integer FROM gone
$$;
REVOKE ALL ON FUNCTION healthcare.erase_chat(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION healthcare.erase_chat(text, text) TO wabot_app;

-- --- row-level security by organization ------------------------------------------
-- The pipeline (wabot_app) writes every organization's messages; any other
-- reader sees only the rows of the organization its session names:
--   SET wabot.organization_id = '<uuid>';
-- The owning role (migrations, operators) is not subject to it.
ALTER TABLE healthcare.whatsapp_messages ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS pipeline_all ON healthcare.whatsapp_messages;
CREATE POLICY pipeline_all ON healthcare.whatsapp_messages
    TO wabot_app USING (true) WITH CHECK (true);
DROP POLICY IF EXISTS organization_rows ON healthcare.whatsapp_messages;
CREATE POLICY organization_rows ON healthcare.whatsapp_messages FOR SELECT
    TO wabot_org_reader
    USING (organization_id = NULLIF(current_setting('wabot.organization_id', true), '')::uuid);
GRANT USAGE ON SCHEMA healthcare TO wabot_org_reader;
GRANT SELECT ON healthcare.whatsapp_messages TO wabot_org_reader;
