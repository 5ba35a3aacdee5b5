"""Instance resolution through the real pipeline (ingest → Redis → worker → PostgreSQL):
whatsapp_instances → legacy integrations → WHATSAPP_DEFAULT_INSTANCE → unresolved,
each outcome stored on the row and counted in ``whatsapp.instance.resolutions``."""

from __future__ import annotations

import copy
import uuid
from typing import Any

from tests.support.stack.net import http_get, wait_for
from tests.support.stack.pipeline import Stack
from tests.support.stack.services import Service

METRIC = "whatsapp.instance.resolutions"
ATTR = "whatsapp.resolution"
SAMPLE = "messages-upsert-text"
INSTANCE = "clinic-sao-paulo"  # the instance of the sample


def variant(sample: dict[str, Any], *, instance: str | None = None) -> dict[str, Any]:
    """A copy of ``sample`` with a fresh message id (and optionally another instance)."""
    out = copy.deepcopy(sample)
    out["data"]["key"]["id"] = "3EB0" + uuid.uuid4().hex[:16].upper()
    if instance is not None:
        out["instance"] = instance
    return out


def post_and_wait(stack: Stack, body: dict[str, Any]) -> dict[str, Any]:
    resp = stack.post(body)
    assert resp.status_code == 202, resp.text
    assert resp.json()["status"] == "queued", resp.json()
    message_id = body["data"]["key"]["id"]
    [row] = stack.wait_rows(1, where="message_id = %s", params=(message_id,))
    return row


def resolution_counts(stack: Stack) -> dict[str, float]:
    """Latest cumulative value per resolution source exported by this test's worker."""
    latest: dict[str, float] = {}
    for point in stack.metric_points(METRIC, "worker"):
        source = point["attributes"].get(ATTR)
        if source is not None:
            latest[source] = max(latest.get(source, 0), point["value"])
    return latest


def wait_counted(stack: Stack, expected: dict[str, int]) -> dict[str, float]:
    def ready() -> dict[str, float] | None:
        counts = resolution_counts(stack)
        return counts if all(counts.get(k, 0) >= n for k, n in expected.items()) else None

    counts = wait_for(ready, timeout=20, what=f"{METRIC} points with {ATTR} counts {expected}")
    assert set(counts) == set(expected), counts
    return counts


def start(stack: Stack, **worker_env: str) -> Service:
    stack.start_ingest()
    return stack.start_worker(**worker_env)


def test_registered_instance_resolves_from_its_table_and_is_touched(
    stack: Stack, samples: dict[str, dict[str, Any]]
) -> None:
    org = stack.register_instance(INSTANCE)
    [(instance_id, last_seen)] = stack.sql(
        "SELECT id, last_seen_at FROM healthcare.whatsapp_instances WHERE instance_name = %s",
        (INSTANCE,),
    )
    assert last_seen is None
    start(stack)

    row = post_and_wait(stack, variant(samples[SAMPLE]))
    assert row["resolution"] == "instance"
    assert row["resolved_instance"] == INSTANCE
    assert str(row["organization_id"]) == org
    assert row["instance_id"] == instance_id

    # Touched by the maintenance tick for every instance that got messages
    # (one UPDATE for all of them, not one per message).
    wait_for(
        lambda: (
            stack.sql(
                "SELECT last_seen_at FROM healthcare.whatsapp_instances WHERE id = %s",
                (instance_id,),
            )[0][0]
            is not None
        ),
        timeout=20,
        what="last_seen_at set once a message of the instance is stored",
    )
    wait_counted(stack, {"instance": 1})


def test_instance_only_in_integrations_resolves_from_integration(
    stack: Stack, samples: dict[str, dict[str, Any]]
) -> None:
    org = stack.register_instance(INSTANCE, table="integrations")
    assert stack.sql("SELECT count(*) FROM healthcare.whatsapp_instances") == [(0,)]
    start(stack)

    row = post_and_wait(stack, variant(samples[SAMPLE]))
    assert row["resolution"] == "integration"
    assert row["resolved_instance"] == INSTANCE
    assert str(row["organization_id"]) == org
    assert row["instance_id"] is None
    wait_counted(stack, {"integration": 1})


def test_unknown_instance_uses_the_configured_default(
    stack: Stack, samples: dict[str, dict[str, Any]]
) -> None:
    start(stack, WHATSAPP_DEFAULT_INSTANCE="fallback-clinic")

    row = post_and_wait(stack, variant(samples[SAMPLE]))
    assert row["resolution"] == "default"
    assert row["instance_name"] == INSTANCE
    assert row["resolved_instance"] == "fallback-clinic"
    assert row["organization_id"] is None
    wait_counted(stack, {"default": 1})


def test_default_instance_that_is_registered_carries_its_organization(
    stack: Stack, samples: dict[str, dict[str, Any]]
) -> None:
    org = stack.register_instance("fallback-clinic")
    start(stack, WHATSAPP_DEFAULT_INSTANCE="fallback-clinic")

    row = post_and_wait(stack, variant(samples[SAMPLE]))
    assert row["resolution"] == "default"
    assert row["resolved_instance"] == "fallback-clinic"
    assert str(row["organization_id"]) == org
    wait_counted(stack, {"default": 1})


def test_unknown_instance_without_default_is_stored_unresolved(
    stack: Stack, samples: dict[str, dict[str, Any]]
) -> None:
    start(stack)

    body = variant(samples[SAMPLE])
    row = post_and_wait(stack, body)
    assert row["resolution"] == "unresolved"
    assert row["instance_name"] == INSTANCE
    assert row["resolved_instance"] is None
    assert row["organization_id"] is None
    assert row["instance_id"] is None
    # Kept whole but for the credential ingest strips from every envelope.
    assert row["raw_payload"] == {k: v for k, v in body.items() if k != "apikey"}
    wait_counted(stack, {"unresolved": 1})


def test_missing_instances_table_falls_back_without_crashing(
    stack: Stack, samples: dict[str, dict[str, Any]]
) -> None:
    stack.sql("DROP TABLE healthcare.whatsapp_instances CASCADE")
    org = stack.register_instance(INSTANCE, table="integrations")
    worker = start(stack, WHATSAPP_DEFAULT_INSTANCE="fallback-clinic")

    row = post_and_wait(stack, variant(samples[SAMPLE]))
    assert row["resolution"] == "integration"
    assert str(row["organization_id"]) == org

    row = post_and_wait(stack, variant(samples[SAMPLE], instance="clinic-unknown"))
    assert row["resolution"] == "default"
    assert row["resolved_instance"] == "fallback-clinic"
    assert row["organization_id"] is None

    # Keeps going after the first misses (the warning is throttled, not the processing).
    row = post_and_wait(stack, variant(samples[SAMPLE]))
    assert row["resolution"] == "integration"

    assert worker.alive(), "\n".join(worker.log_lines()[-20:])
    status, body = http_get(worker.health_url)
    assert status == 200, body

    def warned() -> list[dict[str, Any]]:
        return [
            r
            for r in worker.json_logs()
            if r.get("level") == "WARNING"
            and "healthcare.whatsapp_instances" in r.get("message", "")
            and "missing" in r.get("message", "")
        ]

    warnings = wait_for(warned, timeout=10, what="a warning about the missing table")
    assert warnings[0].get("db.collection.name") == "healthcare.whatsapp_instances"
    assert not [r for r in worker.json_logs() if r.get("level") in ("ERROR", "CRITICAL")]
    assert stack.rows("resolution = 'instance'") == []

    wait_counted(stack, {"integration": 2, "default": 1})
