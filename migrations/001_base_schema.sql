-- The pre-existing (Supabase) schema the app depends on. Every object is
-- created only if absent, so this runs harmlessly against a real database that
-- already has these tables with more columns.
-- gen_random_uuid() is built into PostgreSQL 13+, so no extension is needed.

CREATE SCHEMA IF NOT EXISTS core;
CREATE SCHEMA IF NOT EXISTS healthcare;

CREATE TABLE IF NOT EXISTS core.organizations (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS healthcare.clinics (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL REFERENCES core.organizations (id) ON DELETE CASCADE,
    name            text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS healthcare.integrations (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL REFERENCES core.organizations (id) ON DELETE CASCADE,
    clinic_id       uuid REFERENCES healthcare.clinics (id) ON DELETE SET NULL,
    type            text NOT NULL,
    config          jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS integrations_whatsapp_instance_idx
    ON healthcare.integrations ((config ->> 'instance_name'))
    WHERE type = 'whatsapp';
