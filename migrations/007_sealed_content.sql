-- Message content at rest: with MESSAGE_ENCRYPTION_KEYS set, text, push name
-- and raw payload are stored only sealed (AES-256-GCM, see
-- wabot_shared.crypto) in the *_enc columns, with the key id in
-- content_key_id; the clear columns stay NULL. content_purged_at marks rows
-- whose content the retention purge removed (their metadata is kept).
ALTER TABLE healthcare.whatsapp_messages
    ALTER COLUMN raw_payload DROP NOT NULL,
    ADD COLUMN IF NOT EXISTS text_body_enc text,
    ADD COLUMN IF NOT EXISTS push_name_enc text,
    ADD COLUMN IF NOT EXISTS raw_payload_enc text,
    ADD COLUMN IF NOT EXISTS content_key_id text,
    ADD COLUMN IF NOT EXISTS content_purged_at timestamptz;

-- The retention purge and `wabot reencrypt` walk rows by age and by key.
CREATE INDEX IF NOT EXISTS whatsapp_messages_received_idx
    ON healthcare.whatsapp_messages (received_at) WHERE content_purged_at IS NULL;
CREATE INDEX IF NOT EXISTS whatsapp_messages_key_idx
    ON healthcare.whatsapp_messages (content_key_id) WHERE content_key_id IS NOT NULL;
