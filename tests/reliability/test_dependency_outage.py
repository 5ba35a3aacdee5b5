"""Redis or PostgreSQL going away (and coming back) loses nothing."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import psycopg

from tests.support.load import EvolutionLoad
from tests.support.oracle import Oracle
from tests.support.stack.net import http_get, wait_for
from tests.support.stack.pipeline import Stack
from tests.support.stack.queue import QueueView
from tests.support.stack.servers import PostgresServer, RedisServer, create_database
from tests.support.stack.services import health, messages, run_migrate, worker_check


def failing_checks(body: dict[str, Any]) -> set[str]:
    return {name for name, c in body.get("checks", {}).items() if c.get("status") != "pass"}


def test_redis_stopped_and_restarted(
    own_redis: RedisServer,  # first: torn down after the services
    stack: Stack,
    make_load: Callable[..., EvolutionLoad],
    oracle: Oracle,
    template: dict[str, Any],
) -> None:
    stack.use_redis(own_redis)
    stack.start_ingest()
    worker = stack.start_worker()
    load = make_load(rate=30, count=210).start()
    wait_for(lambda: len(stack.rows()) >= 30, timeout=20, what="30 rows before the outage")

    own_redis.stop()
    wait_for(
        lambda: http_get(stack.url("/ready"))[0] == 503, timeout=10, what="/ready 503 without Redis"
    )
    # A webhook that cannot be stored is never answered 2xx.
    probes = [f"PROBE-{i}-{load.prefix}" for i in range(3)]
    for message_id in probes:
        body = json.loads(json.dumps(template))
        body["data"]["key"]["id"] = message_id
        resp = stack.post(body)
        assert resp.status_code == 503, resp.text
        assert resp.headers.get("retry-after"), "503 without Retry-After"
    unavailable = load.outcomes()["503"]
    wait_for(
        lambda: load.outcomes()["503"] >= unavailable + 10,
        timeout=10,
        what="Evolution to get (and retry) 503s while Redis is down",
    )
    status, body = health(worker)
    assert status == 503
    assert "redis" in failing_checks(body)

    own_redis.start()  # same port, same AOF: nothing acknowledged is lost
    wait_for(lambda: http_get(stack.url("/ready"))[0] == 200, timeout=15, what="/ready 200 again")
    load.finish(timeout=40)
    oracle.check(load, extra_sent=set(probes))
    assert not stack.rows("message_id = ANY(%s)", (probes,)), "a 503'd probe was stored"
    wait_for(lambda: health(worker)[0] == 200, timeout=15, what="worker /health 200 again")
    assert worker.alive()
    print(f"\nload: {load.summary()}")


def test_postgres_stopped_and_restarted(
    own_postgres: PostgresServer,  # first: torn down after the services
    stack: Stack,
    make_load: Callable[..., EvolutionLoad],
    oracle: Oracle,
    queue: QueueView,
) -> None:
    stack.use_database(create_database(own_postgres, migrated=True))
    stack.start_ingest()
    worker = stack.start_worker()
    wait_for(lambda: health(worker)[0] == 200, timeout=15, what="worker /health 200")
    load = make_load(rate=30, count=240).start()
    wait_for(lambda: len(stack.rows()) >= 30, timeout=20, what="30 rows before the outage")

    own_postgres.stop()
    wait_for(
        lambda: health(worker)[0] == 503, timeout=15, what="worker /health 503 without PostgreSQL"
    )
    assert "postgres" in failing_checks(health(worker)[1])
    acked = queue.acked()
    backlog = queue.unacknowledged()
    # Nothing is acknowledged while nothing can be stored: the backlog grows (as
    # pending entries the worker retries, and as entries it has not read yet).
    wait_for(
        lambda: queue.unacknowledged() >= backlog + 30,
        timeout=15,
        what=f"the unacknowledged backlog to grow beyond {backlog} + 30 while PostgreSQL is down",
    )
    assert queue.acked() == acked, "entries acknowledged while PostgreSQL was down"
    assert queue.pending() >= 1, "the worker holds nothing: is it still reading?"
    assert not queue.dead_letters(), "an outage dead-lettered a message"
    assert worker.alive()
    # A round waits out the pool's connection timeout before it fails, so the
    # first retry may come well after the backlog grew (found: a fast run got here first).
    wait_for(lambda: messages(worker, "retrying it in"), timeout=40, what="the worker backing off")
    print(f"\nduring the outage: acked={acked} backlog {backlog} -> {queue.unacknowledged()}")

    own_postgres.start()
    wait_for(lambda: health(worker)[0] == 200, timeout=30, what="worker /health 200 again")
    load.finish(timeout=40)
    oracle.check(load, timeout=40)


def instances_table(dsn: str, *, present: bool) -> None:
    """Take the instances table away (a database where it was dropped, or a
    migration that has not reached it) or give it back."""
    old, new = ("whatsapp_instances_away", "whatsapp_instances")
    if not present:
        old, new = new, old
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE healthcare.{old} RENAME TO {new}")


def test_worker_starts_with_postgres_down_then_schema_and_instances_table_missing(
    own_postgres: PostgresServer,  # first: torn down after the services
    stack: Stack,
    make_load: Callable[..., EvolutionLoad],
    oracle: Oracle,
    queue: QueueView,
) -> None:
    dsn = create_database(own_postgres, migrated=False)  # no tables at all
    stack.use_database(dsn)
    own_postgres.stop()

    # 1. PostgreSQL down at start-up: the worker starts and says it is unhealthy.
    stack.start_ingest()
    worker = stack.start_worker()
    assert worker.alive(), "worker exited at start-up:\n" + "\n".join(worker.log_lines()[-20:])
    status, body = health(worker)
    assert status == 503
    assert "postgres" in failing_checks(body)
    assert worker_check(worker) == 1
    load = make_load(rate=20, count=80).start()
    wait_for(lambda: queue.length() >= 10, timeout=15, what="10 messages queued")

    # 2. PostgreSQL back, nothing migrated: still unhealthy (it cannot store
    #    anything); messages wait, none is acknowledged or dead-lettered.
    own_postgres.start()
    wait_for(
        lambda: health(worker)[1]["checks"]["postgres"].get("error") == "SchemaNotMigrated",
        timeout=30,
        what="the worker to reconnect and report the missing table",
    )
    assert health(worker)[0] == 503
    assert worker_check(worker) == 1
    wait_for(
        # No schema at all: the first statement of a message names a function
        # or a table of a schema that does not exist yet.
        lambda: any(
            r.get("error.type") in {"UndefinedTable", "InvalidSchemaName"}
            for r in worker.json_logs()
        ),
        timeout=15,
        what="the worker to retry messages while the tables are missing",
    )
    # Failing more often than MAX_DELIVERIES (5) each is still not poison:
    # every message fails alike, which is the schema's fault, not theirs.
    wait_for(
        lambda: len(messages(worker, "retrying it in")) >= 10 * 6,
        timeout=30,
        what="ten messages to fail six times each while nothing is migrated",
    )
    assert queue.acked() == 0, "a message was acknowledged before it could be stored"
    assert not queue.dead_letters(), "a missing schema dead-lettered messages"

    # 3. Migrated but for the instances table: stored, resolution falls back.
    result = run_migrate(dsn)
    assert result.returncode == 0, result.stderr + result.stdout
    instances_table(dsn, present=False)
    rows = stack.wait_rows(10, timeout=30)
    assert {r["resolution"] for r in rows} == {"unresolved"}
    assert messages(worker, "healthcare.whatsapp_instances is missing"), "fallback not logged"
    wait_for(lambda: worker_check(worker) == 0, timeout=15, what="`worker --check` to exit 0")
    assert worker.alive()

    # 4. The instances table is back: used from then on.
    instances_table(dsn, present=True)
    load.finish(timeout=30)
    stack.register_instance(load.template["instance"])
    later = make_load(rate=20, count=10).start().finish(timeout=30)
    oracle.check(load, later, timeout=30)
    resolutions = {
        r["resolution"] for r in stack.rows() if r["message_id"].startswith(later.prefix)
    }
    assert resolutions == {"instance"}
    assert worker_check(worker) == 0
    status, body = health(worker)
    assert status == 200, body
