"""The services run as roles with only the privileges they use: no DDL, no
UPDATE or DELETE of messages, no other integrations' secrets; ingest with no
table access at all; readers outside the pipeline see one organization only."""

from __future__ import annotations

import secrets
from typing import Any

import psycopg
import pytest
from psycopg import errors

from tests.support.stack.net import wait_for
from tests.support.stack.pipeline import Stack
from tests.support.stack.servers import PostgresServer, create_db
from tests.support.stack.services import run_migrate


def login_role(server: PostgresServer, group: str = "wabot_app") -> str:
    """What a deployer does once: a login role that is a member of ``group``."""
    name = "svc_" + secrets.token_hex(4)
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {name} LOGIN IN ROLE {group}")
    return name


def test_pipeline_runs_as_the_app_role_which_cannot_change_the_schema(
    stack: Stack, postgres_server: PostgresServer, samples: dict[str, dict[str, Any]]
) -> None:
    role = login_role(postgres_server)
    dbname = stack.dsn.rsplit("/", 1)[1]
    app_dsn = postgres_server.dsn(dbname, user=role)
    stack.register_instance("clinic-sao-paulo")  # as the owner
    ingest_dsn = postgres_server.dsn(dbname, user=login_role(postgres_server, "wabot_ingest"))
    stack.start_ingest(DATABASE_URL=ingest_dsn)
    stack.start_worker(DATABASE_URL=app_dsn)
    for sample in samples.values():
        assert stack.post(sample).status_code == 202
    rows = stack.wait_rows(sum(1 for s in samples.values() if s["event"] == "messages.upsert"))
    assert {r["resolution"] for r in rows} == {"instance"}
    wait_for(
        lambda: (
            stack.sql("SELECT last_seen_at IS NOT NULL FROM healthcare.whatsapp_instances")
            == [(True,)]
        ),
        timeout=20,
        what="last_seen_at touched by the maintenance tick, as the app role",
    )

    with psycopg.connect(app_dsn, autocommit=True) as conn:
        for statement in (
            "CREATE TABLE healthcare.sneaky (id int)",
            "CREATE TABLE public.sneaky (id int)",
            "DROP TABLE healthcare.whatsapp_messages",
            "ALTER TABLE healthcare.whatsapp_messages ADD COLUMN x int",
            "DELETE FROM healthcare.whatsapp_messages",
            "UPDATE healthcare.whatsapp_messages SET text_body = ''",
            "UPDATE healthcare.whatsapp_instances SET status = 'inactive'",
            "INSERT INTO core.organizations (name) VALUES ('x')",
            "SELECT * FROM public.schema_migrations",
            # Other integrations' configuration (and secrets) is out of reach;
            # message content and the audit log cannot be read or rewritten.
            "SELECT config FROM healthcare.integrations",
            "SELECT text_body_enc, raw_payload_enc FROM healthcare.whatsapp_messages",
            "SELECT config FROM healthcare.whatsapp_instances",
            "SELECT * FROM healthcare.audit_log",
            "DELETE FROM healthcare.audit_log",
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(statement)


def test_the_ingest_role_reads_no_table(postgres_server: PostgresServer, db_dsn: str) -> None:
    dbname = db_dsn.rsplit("/", 1)[1]
    dsn = postgres_server.dsn(dbname, user=login_role(postgres_server, "wabot_ingest"))
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)  # its health check
        with psycopg.connect(db_dsn) as owner:
            tables = owner.execute(
                "SELECT schemaname || '.' || tablename FROM pg_tables"
                " WHERE schemaname IN ('core', 'healthcare', 'public')"
            ).fetchall()
        assert len(tables) >= 6
        for (table,) in tables:
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(f"SELECT * FROM {table} LIMIT 1")


def test_row_level_security_keeps_each_organization_to_its_rows(
    stack: Stack, postgres_server: PostgresServer, samples: dict[str, dict[str, Any]]
) -> None:
    template = samples["messages-upsert-text"]
    org_a = stack.register_instance("clinic-a")
    org_b = stack.register_instance("clinic-b")
    stack.start_ingest()
    stack.start_worker()
    for instance in ("clinic-a", "clinic-b"):
        body = {**template, "instance": instance}
        assert stack.post(body).status_code == 202
    stack.wait_rows(2)
    dbname = stack.dsn.rsplit("/", 1)[1]
    reader = postgres_server.dsn(dbname, user=login_role(postgres_server, "wabot_org_reader"))
    with psycopg.connect(reader, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM healthcare.whatsapp_messages").fetchone() == (0,)
        for org, instance in ((org_a, "clinic-a"), (org_b, "clinic-b")):
            conn.execute("SELECT set_config('wabot.organization_id', %s, false)", (org,))
            rows = conn.execute(
                "SELECT instance_name, organization_id::text FROM healthcare.whatsapp_messages"
            ).fetchall()
            assert rows == [(instance, org)]
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("DELETE FROM healthcare.whatsapp_messages")


def test_the_audit_log_is_append_only(db_dsn: str) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as conn:  # even for the owner
        conn.execute("INSERT INTO healthcare.audit_log (action, operator) VALUES ('erase', 'dpo')")
        for statement in (
            "UPDATE healthcare.audit_log SET operator = 'someone else'",
            "DELETE FROM healthcare.audit_log",
            "TRUNCATE healthcare.audit_log",
        ):
            with pytest.raises(errors.InsufficientPrivilege, match="append-only"):
                conn.execute(statement)


def test_migrate_refuses_nothing_when_the_role_already_exists(
    postgres_server: PostgresServer, template_db: str
) -> None:
    # The template database was migrated, so the role exists cluster-wide; a
    # second database migrates cleanly (the role is created only if absent).
    dsn = postgres_server.dsn(create_db(postgres_server, None))
    result = run_migrate(dsn)
    assert result.returncode == 0, result.stderr
    with psycopg.connect(dsn) as conn:
        [(count,)] = conn.execute(
            "SELECT count(*) FROM public.schema_migrations WHERE filename = '004_app_role.sql'"
        ).fetchall()
    assert count == 1
