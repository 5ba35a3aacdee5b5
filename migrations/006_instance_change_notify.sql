-- Workers cache instance resolution (instance → organization/clinic/status);
-- this tells them when to drop the cache: every change to the whatsapp
-- instances or integrations notifies channel `wabot_instances_changed`.
-- The heartbeat's own last_seen_at writes do not count as a change.
CREATE OR REPLACE FUNCTION healthcare.notify_instances_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('wabot_instances_changed', TG_TABLE_NAME);
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS whatsapp_instances_notify_change ON healthcare.whatsapp_instances;
CREATE TRIGGER whatsapp_instances_notify_change
    AFTER INSERT OR DELETE ON healthcare.whatsapp_instances
    FOR EACH ROW EXECUTE FUNCTION healthcare.notify_instances_changed();

DROP TRIGGER IF EXISTS whatsapp_instances_notify_update ON healthcare.whatsapp_instances;
CREATE TRIGGER whatsapp_instances_notify_update
    AFTER UPDATE ON healthcare.whatsapp_instances
    FOR EACH ROW
    WHEN (OLD.instance_name IS DISTINCT FROM NEW.instance_name
          OR OLD.organization_id IS DISTINCT FROM NEW.organization_id
          OR OLD.clinic_id IS DISTINCT FROM NEW.clinic_id
          OR OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION healthcare.notify_instances_changed();

DROP TRIGGER IF EXISTS integrations_notify_change ON healthcare.integrations;
CREATE TRIGGER integrations_notify_change
    AFTER INSERT OR UPDATE OR DELETE ON healthcare.integrations
    FOR EACH STATEMENT EXECUTE FUNCTION healthcare.notify_instances_changed();
