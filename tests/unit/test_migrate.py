"""``apply_all`` in-process against a real PostgreSQL: every file once, in order,
idempotent, edited files refused, a failing file rolled back."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from tests.support.stack.paths import MIGRATIONS
from wabot_shared.migrate import Migration, MigrationError, apply_all, discover


def test_every_migration_applies_once_and_in_order(empty_db: str) -> None:
    migrations = discover(MIGRATIONS)
    assert [m.filename for m in migrations] == sorted(p.name for p in MIGRATIONS.glob("*.sql"))
    with psycopg.connect(empty_db, autocommit=True) as conn:
        assert apply_all(conn, migrations) == [m.filename for m in migrations]
        assert apply_all(conn, migrations) == []  # idempotent
        rows = conn.execute(
            "SELECT filename, checksum FROM public.schema_migrations ORDER BY 1"
        ).fetchall()
    assert rows == [(m.filename, m.checksum) for m in migrations]


def test_an_edited_migration_is_refused(empty_db: str) -> None:
    migrations = discover(MIGRATIONS)
    with psycopg.connect(empty_db, autocommit=True) as conn:
        apply_all(conn, migrations)
        edited = [*migrations[:-1], Migration(migrations[-1].filename, migrations[-1].sql + "\n")]
        with pytest.raises(MigrationError, match="was changed after it was applied"):
            apply_all(conn, edited)


def test_a_failing_migration_rolls_back_and_names_its_file(empty_db: str, tmp_path: Path) -> None:
    bad = [
        Migration("001_ok.sql", "CREATE TABLE public.t1 (id int)"),
        Migration("002_bad.sql", "CREATE TABLE public.t2 (id int); SELECT 1/0"),
    ]
    with psycopg.connect(empty_db, autocommit=True) as conn:
        with pytest.raises(MigrationError, match=r"002_bad\.sql failed: DivisionByZero"):
            apply_all(conn, bad)
        assert conn.execute("SELECT to_regclass('public.t1')").fetchone() == ("t1",)
        assert conn.execute("SELECT to_regclass('public.t2')").fetchone() == (None,)
        applied = conn.execute("SELECT filename FROM public.schema_migrations").fetchall()
    assert applied == [("001_ok.sql",)]
    with pytest.raises(MigrationError, match="not found"):
        discover(tmp_path / "missing")
