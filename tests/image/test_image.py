"""The image as deployed: hadolint passes on the Dockerfile; the built image runs
``migrate``, ``ingest`` and ``worker`` as uid 10001 (its own USER, never
overridden) on a read-only root against the harness' Redis and PostgreSQL;
``worker --check`` is its health check; a webhook becomes a row and a trace
across both containers; SIGTERM drains both to exit 0."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.deploy.files import DOCKERFILE
from tests.support.image import UID, Containers, image_user, python_release
from tests.support.messages import upsert
from tests.support.otlp import OtlpSink
from tests.support.stack.net import closed_port, free_port, wait_for
from tests.support.stack.paths import BIN, REPO
from tests.support.stack.pipeline import Stack
from tests.support.stack.servers import RedisServer

# The first session makes the base images (debootstrap) and builds cold.
pytestmark = pytest.mark.timeout(1800)


def test_hadolint_passes_on_the_dockerfile() -> None:
    proc = subprocess.run(
        [str(BIN / "hadolint"), str(DOCKERFILE.relative_to(REPO))],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"hadolint Dockerfile:\n{proc.stdout}{proc.stderr}"


def test_the_image_runs_as_uid_10001_and_holds_only_the_venv_and_migrations(
    image: str, containers: Containers
) -> None:
    assert image_user(image) == f"{UID}:{UID}"
    ids = containers.run("id", "sh", "-c", "id -u; id -g; ls -A /app", env={})
    assert ids.returncode == 0, ids.stderr
    uid, gid, *app = ids.stdout.split()
    assert (int(uid), int(gid)) == (UID, UID)
    assert sorted(app) == [".venv", "migrations"]
    # The venv's interpreter is the official image's minor version (PYTHON_IMAGE).
    minor, _release = python_release()
    python = containers.run("python", "python", "-c", "import sys; print(sys.version)", env={})
    assert python.stdout.startswith(minor + "."), python.stdout + python.stderr
    # Root owns the code and the migrations: the service user cannot change them.
    owners = containers.run(
        "owners",
        "sh",
        "-c",
        "find /app \\( ! -user 0 -o \\( -perm /022 ! -type l \\) \\) -print",
        env={},
    )
    assert owners.returncode == 0, owners.stderr
    assert owners.stdout == "", f"not root-owned or world-writable:\n{owners.stdout[:2000]}"


def _migrated_tables(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables "
            "WHERE table_schema IN ('core', 'healthcare')"
        ).fetchall()
    return {str(r[0]) for r in rows}


def test_migrate_ingest_and_worker_from_the_image_store_a_webhook_as_a_row(
    containers: Containers,
    tmp_path: Path,
    redis_server: RedisServer,
    empty_db: str,
    otlp_sink: OtlpSink,
    samples: dict[str, dict[str, Any]],
) -> None:
    stack = Stack(tmp_path, redis_server, empty_db, otlp_sink)

    # migrate: the image's migrations (MIGRATIONS_DIR=/app/migrations) on an empty database.
    migrate = containers.run(
        "migrate", "migrate", env={"APP_ENV": "test", "DATABASE_URL": empty_db}
    )
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    assert "healthcare.whatsapp_messages" in _migrated_tables(empty_db)

    ingest_port, worker_port = free_port(), free_port()
    stack.ingest_port = ingest_port
    ingest = containers.start(
        "ingest",
        "ingest",
        env={**stack.env, "INGEST_HOST": "127.0.0.1", "INGEST_PORT": str(ingest_port)},
        ready=stack.url("/ready"),
    )
    worker_env = {
        **stack.env,
        "WORKER_HEALTH_HOST": "127.0.0.1",
        "WORKER_HEALTH_PORT": str(worker_port),
        "WORKER_CONSUMER_NAME": "image-worker",
    }
    worker = containers.start(
        "worker", "worker", env=worker_env, ready=f"http://127.0.0.1:{worker_port}/health"
    )
    for name in ("ingest", "worker"):
        assert containers.host_ids(name) == (UID, UID), f"{name} does not run as {UID}"

    # The container health check, as compose and Fly run it: inside the container.
    check = containers.exec("worker", "worker", "--check")
    assert check.returncode == 0, check.stdout + check.stderr
    # ... and it is no formality: with no worker behind its port it fails.
    nothing = containers.run(
        "check", "worker", "--check", env={"WORKER_HEALTH_PORT": str(closed_port())}
    )
    assert nothing.returncode == 1, nothing.stdout + nothing.stderr

    message_id = "IMG" + uuid.uuid4().hex[:16].upper()
    body = upsert(samples["messages-upsert-text"], message_id=message_id)
    resp = stack.post(body)
    assert resp.status_code == 202, resp.text
    answer = resp.json()
    assert answer["status"] == "queued", answer

    [row] = stack.wait_rows(1, timeout=30, where="message_id = %s", params=(message_id,))
    assert row["trace_id"] == answer["trace_id"]
    assert row["text_body"] == body["data"]["message"]["conversation"]
    [sealed] = stack.rows("id = %s", (row["id"],), sealed=True)
    assert sealed["text_body"] is None, "content is sealed at rest"
    wait_for(lambda: stack.queue.pending() == 0, timeout=20, what="the entry acknowledged")

    # One trace across both containers, exported over OTLP to 127.0.0.1.
    def services_in_trace() -> bool:
        found = {s["service"] for s in otlp_sink.spans_of(answer["trace_id"])}
        return {"ingest", "worker"} <= found

    wait_for(services_in_trace, timeout=20, what="ingest and worker spans of the trace")

    # SIGTERM (forwarded by podman to PID 1): both drain and exit 0.
    assert ingest.stop(timeout=30) == 0, ingest.log_tail()
    assert worker.stop(timeout=30) == 0, worker.log_tail()
