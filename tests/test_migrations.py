"""The real ``migrate`` command against a real PostgreSQL: ordering, the ledger,
concurrency, refusing edited files, rollback of failures and the data migration."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.stack.env import clean_env
from tests.support.stack.paths import BIN, MIGRATIONS
from tests.support.stack.services import run_migrate

FILES = sorted(p.name for p in MIGRATIONS.glob("*.sql"))


# --- helpers -----------------------------------------------------------------
def sql(dsn: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return list(cur.fetchall()) if cur.description else []


def ledger(dsn: str) -> list[tuple[Any, ...]]:
    return sql(
        dsn, "SELECT filename, checksum, applied_at FROM public.schema_migrations ORDER BY 1"
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def table_exists(dsn: str, qualified: str) -> bool:
    [(oid,)] = sql(dsn, "SELECT to_regclass(%s)", (qualified,))
    return oid is not None


def migrate_env(dsn: str | None, **env: str) -> dict[str, str]:
    """The environment of a ``migrate`` run: no DATABASE_URL unless ``dsn``."""
    database = {"DATABASE_URL": dsn} if dsn is not None else {}
    return clean_env(
        "DATABASE_URL", "MIGRATIONS_DIR", MIGRATIONS_DIR=str(MIGRATIONS), **database, **env
    )


def applied_by(stdout: str) -> list[str]:
    """Migration names a ``migrate`` run logged as applying (its JSON stdout)."""
    out = []
    for line in stdout.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("message") == "applying migration":
            out.append(record["migration"])
    return out


def copy_migrations(tmp_path: Path, only: list[str] | None = None) -> Path:
    target = tmp_path / "migrations"
    target.mkdir()
    for path in sorted(MIGRATIONS.glob("*.sql")):
        if only is None or path.name in only:
            shutil.copy(path, target / path.name)
    return target


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"migrate failed:\n{result.stderr}\n{result.stdout}"


# --- tests -------------------------------------------------------------------
def test_repository_has_the_expected_migrations() -> None:
    assert sorted(p.name for p in MIGRATIONS.glob("*.sql")) == FILES


def test_applies_every_file_once_with_its_checksum_then_is_a_no_op(empty_db: str) -> None:
    first = run_migrate(empty_db)
    assert_ok(first)
    assert applied_by(first.stdout) == FILES

    rows = ledger(empty_db)
    assert [(name, checksum) for name, checksum, _ in rows] == [
        (name, sha256(MIGRATIONS / name)) for name in FILES
    ]
    for qualified in (
        "core.organizations",
        "healthcare.integrations",
        "healthcare.whatsapp_instances",
        "healthcare.whatsapp_messages",
    ):
        assert table_exists(empty_db, qualified), qualified

    second = run_migrate(empty_db)
    assert_ok(second)
    assert applied_by(second.stdout) == [], second.stdout
    assert second.stderr == ""
    assert ledger(empty_db) == rows, "a second run must not re-apply or re-record anything"


# Repeated on fresh databases: one race is not always enough to catch a missing lock.
@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_two_concurrent_migrate_processes_apply_each_file_exactly_once(
    empty_db: str, attempt: int
) -> None:
    env = migrate_env(empty_db)
    procs = [
        subprocess.Popen(
            [str(BIN / "migrate")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = []
    for proc in procs:
        try:
            stdout, stderr = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        results.append((proc.returncode, stdout, stderr))

    for code, stdout, stderr in results:
        assert code == 0, f"migrate exited {code}:\n{stderr}\n{stdout}"
        assert stderr == "", stderr
        assert '"level": "ERROR"' not in stdout, stdout

    # Between them, the two processes applied each file exactly once.
    applied = sorted(name for _, stdout, _ in results for name in applied_by(stdout))
    assert applied == FILES, applied

    rows = ledger(empty_db)
    assert [name for name, _, _ in rows] == FILES
    assert [checksum for _, checksum, _ in rows] == [sha256(MIGRATIONS / n) for n in FILES]
    [(tables,)] = sql(
        empty_db,
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'healthcare' "
        "AND tablename IN ('whatsapp_instances', 'whatsapp_messages')",
    )
    assert tables == 2


def test_an_applied_file_that_was_changed_is_refused(empty_db: str, tmp_path: Path) -> None:
    migrations = copy_migrations(tmp_path)
    assert_ok(run_migrate(empty_db, MIGRATIONS_DIR=str(migrations)))
    before = ledger(empty_db)

    edited = migrations / "002_whatsapp_instances.sql"
    edited.write_text(
        edited.read_text() + "\nCREATE TABLE healthcare.edited_after_apply (id int);\n"
    )
    # A new, pending migration must not be applied either while the ledger disagrees.
    (migrations / "004_new.sql").write_text("CREATE TABLE healthcare.pending_new (id int);\n")

    result = run_migrate(empty_db, MIGRATIONS_DIR=str(migrations))
    assert result.returncode == 1, result.stderr + result.stdout
    assert "002_whatsapp_instances.sql" in result.stderr
    assert "changed" in result.stderr
    assert "Traceback" not in result.stderr

    assert ledger(empty_db) == before
    assert not table_exists(empty_db, "healthcare.edited_after_apply")
    assert not table_exists(empty_db, "healthcare.pending_new")


def test_a_failing_migration_exits_1_and_leaves_no_partial_effects(
    empty_db: str, tmp_path: Path
) -> None:
    migrations = copy_migrations(tmp_path)
    assert_ok(run_migrate(empty_db, MIGRATIONS_DIR=str(migrations)))
    before = ledger(empty_db)

    (migrations / "004_broken.sql").write_text(
        "CREATE TABLE healthcare.partial_effect (id int);\n"
        "INSERT INTO core.organizations (name) VALUES ('from broken migration');\n"
        "SELEC this is not sql;\n"
    )
    result = run_migrate(empty_db, MIGRATIONS_DIR=str(migrations))
    assert result.returncode == 1, result.stderr + result.stdout
    assert "004_broken.sql" in result.stderr
    assert "failed" in result.stderr
    assert "SyntaxError" in result.stderr
    assert "Traceback" not in result.stderr

    # Its transaction was rolled back and it was not recorded.
    assert ledger(empty_db) == before
    assert not table_exists(empty_db, "healthcare.partial_effect")
    assert sql(empty_db, "SELECT count(*) FROM core.organizations") == [(0,)]

    # Still pending: the next run tries it again (and fails the same way).
    again = run_migrate(empty_db, MIGRATIONS_DIR=str(migrations))
    assert again.returncode == 1
    assert "004_broken.sql" in again.stderr
    assert ledger(empty_db) == before


def test_data_migration_copies_each_whatsapp_instance_once(empty_db: str, tmp_path: Path) -> None:
    only_base = copy_migrations(tmp_path, only=["001_base_schema.sql"])
    assert_ok(run_migrate(empty_db, MIGRATIONS_DIR=str(only_base)))
    assert not table_exists(empty_db, "healthcare.whatsapp_instances")

    [(org_a,)] = sql(empty_db, "INSERT INTO core.organizations (name) VALUES ('A') RETURNING id")
    [(org_b,)] = sql(empty_db, "INSERT INTO core.organizations (name) VALUES ('B') RETURNING id")
    [(org_c,)] = sql(empty_db, "INSERT INTO core.organizations (name) VALUES ('C') RETURNING id")
    [(clinic_a,)] = sql(
        empty_db,
        "INSERT INTO healthcare.clinics (organization_id, name) VALUES (%s, 'A1') RETURNING id",
        (org_a,),
    )
    [(clinic_b,)] = sql(
        empty_db,
        "INSERT INTO healthcare.clinics (organization_id, name) VALUES (%s, 'B1') RETURNING id",
        (org_b,),
    )

    def integration(
        org: Any, clinic: Any, kind: str, config: dict[str, Any], created_at: str
    ) -> None:
        sql(
            empty_db,
            "INSERT INTO healthcare.integrations (organization_id, clinic_id, type, config, "
            "created_at) VALUES (%s, %s, %s, %s::jsonb, %s::timestamptz)",
            (org, clinic, kind, json.dumps(config), created_at),
        )

    # Two integrations name the same instance: the oldest wins (inserted second).
    integration(
        org_b,
        clinic_b,
        "whatsapp",
        {"instance_name": "clinic-shared", "phone_number": "5511000000002"},
        "2024-06-01T00:00:00Z",
    )
    integration(
        org_a,
        clinic_a,
        "whatsapp",
        {"instance_name": "clinic-shared", "phone_number": "5511000000001", "token": "t"},
        "2024-01-01T00:00:00Z",
    )
    integration(
        org_b,
        None,
        "whatsapp",
        {"instance_name": "clinic-solo", "phone_number": "5511000000003", "status": "inactive"},
        "2024-02-01T00:00:00Z",
    )
    # Not copied: another integration type, no instance name, an empty instance name.
    integration(
        org_c, None, "google_calendar", {"instance_name": "not-whatsapp"}, "2024-01-01T00:00:00Z"
    )
    integration(org_c, None, "whatsapp", {"phone_number": "5511000000009"}, "2024-01-01T00:00:00Z")
    integration(org_c, None, "whatsapp", {"instance_name": ""}, "2024-01-01T00:00:00Z")

    assert_ok(run_migrate(empty_db))  # the real directory: 002 and 003 are pending
    assert [name for name, _, _ in ledger(empty_db)] == FILES

    query = (
        "SELECT id, instance_name, organization_id, clinic_id, phone_number, status, config "
        "FROM healthcare.whatsapp_instances ORDER BY instance_name"
    )
    copied = sql(empty_db, query)
    assert [row[1:] for row in copied] == [
        ("clinic-shared", org_a, clinic_a, "5511000000001", "active", {"token": "t"}),
        ("clinic-solo", org_b, None, "5511000000003", "inactive", {}),
    ]

    # Re-running the copy function copies nothing twice.
    assert sql(empty_db, "SELECT healthcare.copy_whatsapp_instances_from_integrations()") == [(0,)]
    assert sql(empty_db, query) == copied

    # Neither does running the whole 002 file again.
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute((MIGRATIONS / "002_whatsapp_instances.sql").read_bytes())
    assert sql(empty_db, query) == copied

    # An integration added later is copied by the next call, and only once.
    integration(org_c, None, "whatsapp", {"instance_name": "clinic-late"}, "2025-01-01T00:00:00Z")
    assert sql(empty_db, "SELECT healthcare.copy_whatsapp_instances_from_integrations()") == [(1,)]
    assert sql(empty_db, "SELECT healthcare.copy_whatsapp_instances_from_integrations()") == [(0,)]
    names = [row[1] for row in sql(empty_db, query)]
    assert names == ["clinic-late", "clinic-shared", "clinic-solo"]


@pytest.mark.parametrize("value", [None, ""])
def test_missing_database_url_is_one_clear_line(value: str | None) -> None:
    env = migrate_env(None)
    if value is not None:
        env["DATABASE_URL"] = value
    result = subprocess.run(
        [str(BIN / "migrate")], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "DATABASE_URL" in lines[0]
