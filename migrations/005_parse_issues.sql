-- What ingest could not read of a message it stored anyway (a timestamp in an
-- unknown shape, a name too long, a number out of range ...): the codes, never
-- the values. A message is refused only when its identity is unusable; every
-- other oddity is kept here so it can be found and fixed.
ALTER TABLE healthcare.whatsapp_messages
    ADD COLUMN IF NOT EXISTS parse_issues text[] NOT NULL DEFAULT '{}';
