-- WhatsApp instances get their own table (they used to live in
-- healthcare.integrations as type = 'whatsapp'), plus the data migration that
-- copies them over. The copy is a function so it can be re-run safely after
-- new integrations are added: it never copies an instance twice.
CREATE TABLE IF NOT EXISTS healthcare.whatsapp_instances (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    instance_name   text NOT NULL UNIQUE,
    organization_id uuid NOT NULL REFERENCES core.organizations (id) ON DELETE CASCADE,
    clinic_id       uuid REFERENCES healthcare.clinics (id) ON DELETE SET NULL,
    phone_number    text,
    status          text NOT NULL DEFAULT 'active'
                    CHECK (status IN ('active', 'inactive', 'suspended')),
    config          jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    last_seen_at    timestamptz
);

CREATE INDEX IF NOT EXISTS whatsapp_instances_organization_idx
    ON healthcare.whatsapp_instances (organization_id);
CREATE INDEX IF NOT EXISTS whatsapp_instances_clinic_idx
    ON healthcare.whatsapp_instances (clinic_id);

CREATE OR REPLACE FUNCTION healthcare.set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

DROP TRIGGER IF EXISTS whatsapp_instances_set_updated_at ON healthcare.whatsapp_instances;
CREATE TRIGGER whatsapp_instances_set_updated_at
    BEFORE UPDATE ON healthcare.whatsapp_instances
    FOR EACH ROW
    WHEN (OLD.* IS DISTINCT FROM NEW.*
          AND OLD.last_seen_at IS NOT DISTINCT FROM NEW.last_seen_at)
    EXECUTE FUNCTION healthcare.set_updated_at();

-- Returns how many instances it copied. When several integrations name the same
-- instance, the oldest wins; an instance already in the table is left alone.
CREATE OR REPLACE FUNCTION healthcare.copy_whatsapp_instances_from_integrations()
RETURNS integer
LANGUAGE sql AS $$
    WITH copied AS (
        INSERT INTO healthcare.whatsapp_instances
            (instance_name, organization_id, clinic_id, phone_number, status, config)
        SELECT DISTINCT ON (i.config ->> 'instance_name')
               i.config ->> 'instance_name',
               i.organization_id,
               i.clinic_id,
               NULLIF(i.config ->> 'phone_number', ''),
               CASE WHEN i.config ->> 'status' IN ('active', 'inactive', 'suspended')
                    THEN i.config ->> 'status' ELSE 'active' END,
               i.config - 'instance_name' - 'phone_number' - 'status'
          FROM healthcare.integrations AS i
         WHERE i.type = 'whatsapp'
           AND COALESCE(i.config ->> 'instance_name', '') <> ''
         ORDER BY i.config ->> 'instance_name', i.created_at, i.id
        ON CONFLICT (instance_name) DO NOTHING
        RETURNING 1
    )
    SELECT count(*)::integer FROM copied;
$$;

SELECT healthcare.copy_whatsapp_instances_from_integrations();
