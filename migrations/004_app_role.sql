-- The role the services run as: only the privileges they use, no DDL. The
-- migrations run as the owning role; a login role for the services is created
-- by the deployer (see README, "Database roles") as a member of wabot_app.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'wabot_app') THEN
        CREATE ROLE wabot_app NOLOGIN;
    END IF;
END
$$;

GRANT USAGE ON SCHEMA core, healthcare TO wabot_app;
-- Instance resolution reads both tables; the heartbeat touches last_seen_at only.
GRANT SELECT ON healthcare.whatsapp_instances, healthcare.integrations TO wabot_app;
GRANT UPDATE (last_seen_at) ON healthcare.whatsapp_instances TO wabot_app;
-- INSERT .. ON CONFLICT .. RETURNING needs SELECT on the conflict target and id.
GRANT SELECT, INSERT ON healthcare.whatsapp_messages TO wabot_app;
