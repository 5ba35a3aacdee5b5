"""The services run as a role with only the privileges they use (no DDL)."""

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


def app_login_role(server: PostgresServer) -> str:
    """What a deployer does once: a login role that is a member of wabot_app."""
    name = "svc_" + secrets.token_hex(4)
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {name} LOGIN IN ROLE wabot_app")
    return name


def test_pipeline_runs_as_the_app_role_which_cannot_change_the_schema(
    stack: Stack, postgres_server: PostgresServer, samples: dict[str, dict[str, Any]]
) -> None:
    role = app_login_role(postgres_server)
    dbname = stack.dsn.rsplit("/", 1)[1]
    app_dsn = postgres_server.dsn(dbname, user=role)
    stack.register_instance("clinic-sao-paulo")  # as the owner
    stack.start_ingest(DATABASE_URL=app_dsn)
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
        ):
            with pytest.raises(errors.InsufficientPrivilege):
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
