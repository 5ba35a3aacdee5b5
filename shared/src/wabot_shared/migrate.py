"""``migrate``: apply ``migrations/*.sql`` in order, once each.

Each file runs in its own transaction while this process holds a PostgreSQL
advisory lock, so two ``migrate`` processes started together apply every file
exactly once. Applied files are recorded with a SHA-256 checksum; a file whose
content changed after it was applied is refused rather than silently skipped.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import psycopg

from wabot_shared.logs import configure_logging
from wabot_shared.settings import MigrateSettings, load_settings

log = logging.getLogger("wabot.migrate")

# Any constant works; it only has to be the same for every migrate process.
ADVISORY_LOCK_KEY = 0x7761626F74  # "wabot"
LOCK_TIMEOUT_S = 120

_CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS public.schema_migrations (
    filename   text PRIMARY KEY,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(RuntimeError):
    """A migration cannot be applied (changed after applying, or failed)."""


@dataclass(frozen=True)
class Migration:
    """One SQL file."""

    filename: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(directory: Path) -> list[Migration]:
    """The ``*.sql`` files of ``directory`` in lexical order."""
    if not directory.is_dir():
        raise MigrationError(f"migrations directory not found: {directory}")
    return [
        Migration(p.name, p.read_text(encoding="utf-8")) for p in sorted(directory.glob("*.sql"))
    ]


def apply_all(
    conn: psycopg.Connection[tuple[object, ...]], migrations: list[Migration]
) -> list[str]:
    """Apply pending migrations on ``conn`` (autocommit); returns the applied names."""
    applied_now: list[str] = []
    conn.execute(f"SET lock_timeout = '{LOCK_TIMEOUT_S}s'")
    conn.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
    try:
        conn.execute(_CREATE_LEDGER)
        rows = conn.execute("SELECT filename, checksum FROM public.schema_migrations").fetchall()
        done = {str(name): str(checksum) for name, checksum in rows}
        for migration in migrations:
            recorded = done.get(migration.filename)
            if recorded is not None:
                if recorded != migration.checksum:
                    raise MigrationError(
                        f"{migration.filename} was changed after it was applied "
                        f"(recorded checksum {recorded[:12]}, file {migration.checksum[:12]}); "
                        "add a new migration instead of editing an applied one"
                    )
                continue
            log.info("applying migration", extra={"migration": migration.filename})
            try:
                with conn.transaction():
                    conn.execute(migration.sql.encode())
                    conn.execute(
                        "INSERT INTO public.schema_migrations (filename, checksum) VALUES (%s, %s)",
                        (migration.filename, migration.checksum),
                    )
            except psycopg.Error as exc:
                raise MigrationError(
                    f"{migration.filename} failed: {type(exc).__name__}: {exc}"
                ) from exc
            applied_now.append(migration.filename)
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))
    return applied_now


def main() -> None:
    """Console entry point of ``migrate``."""
    settings = load_settings(MigrateSettings, "migrate")
    configure_logging("migrate", settings.log_level)
    try:
        migrations = discover(settings.migrations_dir)
        with psycopg.connect(settings.database_url.get_secret_value(), autocommit=True) as conn:
            applied = apply_all(conn, migrations)
    except (MigrationError, psycopg.OperationalError) as exc:
        log.error("migration failed: %s", exc)
        print(f"migrate: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    log.info(
        "migrations up to date",
        extra={
            "applied": applied,
            "total": len(migrations),
            "already_applied": len(migrations) - len(applied),
        },
    )
