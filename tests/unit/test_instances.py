"""Instance resolution against a real PostgreSQL: the lookup order, the cache,
and its invalidation by the tables' change notifications."""

from __future__ import annotations

import asyncio
import time

import psycopg

from tests.support.telemetry import InMemoryTelemetry
from wabot_shared import db
from wabot_worker.instances import InstanceResolver, listen_for_changes


def register(dsn: str, name: str, table: str = "whatsapp_instances") -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        [org] = (
            conn.execute(
                "INSERT INTO core.organizations (name) VALUES ('O') RETURNING id"
            ).fetchone()
            or []
        )
        if table == "whatsapp_instances":
            conn.execute(
                "INSERT INTO healthcare.whatsapp_instances (instance_name, organization_id)"
                " VALUES (%s, %s)",
                (name, org),
            )
        else:
            conn.execute(
                "INSERT INTO healthcare.integrations (organization_id, type, config)"
                " VALUES (%s, 'whatsapp', jsonb_build_object('instance_name', %s::text))",
                (org, name),
            )
    return str(org)


def test_lookup_order_and_fallbacks(db_dsn: str, telemetry: InMemoryTelemetry) -> None:
    register(db_dsn, "own")
    register(db_dsn, "legacy", table="integrations")
    register(db_dsn, "fallback-target")

    async def main() -> None:
        pool = await db.open_pool(db_dsn, max_size=2, name="t")
        resolver = InstanceResolver(pool, "fallback-target", cache_seconds=0)
        assert (await resolver.resolve("own")).source == "instance"
        assert (await resolver.resolve("legacy")).source == "integration"
        default = await resolver.resolve("nobody")
        assert (default.source, default.instance_name) == ("default", "fallback-target")
        assert default.organization_id is not None
        resolver.default_instance = None
        for _ in range(3):
            assert (await resolver.resolve("nobody")).source == "unresolved"
        await pool.close()

    asyncio.run(main())
    # One warning per instance and interval, not one per message.
    warnings = [r for r in telemetry.log_records() if "unresolved" in str(r.body)]
    assert len(warnings) == 1


def test_cached_results_are_dropped_when_the_tables_change(db_dsn: str) -> None:
    async def main() -> None:
        pool = await db.open_pool(db_dsn, max_size=2, name="t")
        resolver = InstanceResolver(pool, None, cache_seconds=3600)
        stop = asyncio.Event()
        listener = asyncio.create_task(listen_for_changes(db_dsn, resolver, stop))
        assert (await resolver.resolve("late")).source == "unresolved"  # cached for an hour
        register(db_dsn, "late")
        deadline = time.monotonic() + 10
        while (await resolver.resolve("late")).source != "instance":
            assert time.monotonic() < deadline, "the registration never reached the cache"
            await asyncio.sleep(0.05)
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            conn.execute(
                "UPDATE healthcare.whatsapp_instances SET status = 'suspended'"
                " WHERE instance_name = 'late'"
            )
        while (await resolver.resolve("late")).status != "suspended":
            assert time.monotonic() < deadline, "the suspension never reached the cache"
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(listener, 5)
        await pool.close()

    asyncio.run(main())


def test_missing_tables_fall_back_without_failing(empty_db: str) -> None:
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA healthcare")

    async def main() -> None:
        pool = await db.open_pool(empty_db, max_size=1, name="t")
        resolver = InstanceResolver(pool, None, cache_seconds=0)
        assert (await resolver.resolve("x")).source == "unresolved"
        await pool.close()

    asyncio.run(main())
