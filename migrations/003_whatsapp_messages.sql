-- One row per inbound WhatsApp message the worker processed. The unique key is
-- WhatsApp's own message identity, so a redelivered or replayed webhook is a
-- no-op insert. Messages whose instance is unknown are stored anyway, with the
-- resolution outcome, never dropped.
CREATE TABLE IF NOT EXISTS healthcare.whatsapp_messages (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_name     text NOT NULL,
    remote_jid        text NOT NULL,
    from_me           boolean NOT NULL,
    message_id        text NOT NULL,
    participant       text,
    push_name         text,
    message_type      text,
    text_body         text,
    raw_payload       jsonb NOT NULL,
    message_timestamp timestamptz,
    -- Where the instance was found: its own table, the legacy integrations
    -- table, the WHATSAPP_DEFAULT_INSTANCE setting, or nowhere.
    resolution        text NOT NULL
                      CHECK (resolution IN ('instance', 'integration', 'default', 'unresolved')),
    resolved_instance text,
    -- No foreign key on purpose: deleting an instance must never block or fail
    -- storing a message; the row keeps what was known when it was processed.
    instance_id       uuid,
    organization_id   uuid,
    clinic_id         uuid,
    trace_id          text CHECK (trace_id ~ '^[0-9a-f]{32}$'),
    stream_id         text NOT NULL,
    received_at       timestamptz NOT NULL,
    processed_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT whatsapp_messages_identity
        UNIQUE (instance_name, remote_jid, from_me, message_id)
);

CREATE INDEX IF NOT EXISTS whatsapp_messages_trace_idx
    ON healthcare.whatsapp_messages (trace_id);
CREATE INDEX IF NOT EXISTS whatsapp_messages_chat_idx
    ON healthcare.whatsapp_messages (instance_name, remote_jid, message_timestamp DESC);
