"""Our services wired to one Redis stream and one database: :class:`Stack`.

Tests get one per test (its own stream and database, so they never share
state), ``bench/`` one per run, ``make run`` one with the documented ports.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import subprocess
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg.rows import dict_row

from tests.support.otlp import OtlpSink, cumulative
from tests.support.stack.env import pipeline_env
from tests.support.stack.net import free_port, http_get, wait_for
from tests.support.stack.process import Echo, stop_together
from tests.support.stack.queue import QueueView
from tests.support.stack.servers import RedisServer
from tests.support.stack.services import Service, run_cli
from wabot_shared.content import open_row
from wabot_shared.crypto import Keyring, keyring_from_setting

WEBHOOK_SECRET = "test-" + secrets.token_hex(16)


def fast_settings(run_id: str) -> dict[str, str]:
    """What tests change from the defaults: seconds instead of minutes, and a
    resource attribute that picks this stack's telemetry out of a shared sink."""
    return {
        "LOG_LEVEL": "INFO",
        "SHUTDOWN_TIMEOUT": "10",
        "SHUTDOWN_DRAIN_DELAY": "0.2",
        "OTEL_RESOURCE_ATTRIBUTES": f"test.run.id={run_id}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_BLRP_SCHEDULE_DELAY": "100",
        "WORKER_BLOCK_MS": "200",
        "WORKER_STATS_INTERVAL": "0.5",
        # A dead worker's partitions are taken over after 2 s, not 10.
        "WORKER_PARTITION_LEASE_MS": "2000",
        "RETRY_BACKOFF_INITIAL": "0.1",
        "RETRY_BACKOFF_MAX": "1",
    }


def wait_worker_up(svc: Service) -> None:
    """Until the worker's /health answers (200 or 503) or the worker is gone."""

    def up_or_dead() -> bool:
        if not svc.alive():
            return True
        with contextlib.suppress(OSError):
            return http_get(svc.health_url)[0] in (200, 503)
        return False

    wait_for(up_or_dead, timeout=30, what=f"worker {svc.env['WORKER_CONSUMER_NAME']} /health")


class Stack:
    """ingest and worker processes sharing ``env``: one stream, one database.

    ``settings`` replaces :func:`fast_settings` (bench and ``make run`` bring
    their own); ``sink``, when given, receives their OTLP and backs
    :meth:`metric_points`; ``otlp_endpoint`` overrides where they export.
    """

    def __init__(
        self,
        tmp: Path,
        redis: RedisServer,
        dsn: str,
        sink: OtlpSink | None,
        *,
        secret: str = WEBHOOK_SECRET,
        app_env: str = "test",
        stream: str | None = None,
        settings: Mapping[str, str] | None = None,
        otlp_endpoint: str | None = None,
        base_env: Mapping[str, str] | None = None,
        echo: Echo | None = None,
        new_session: bool = False,
    ) -> None:
        self.tmp = tmp
        self.redis = redis
        self.dsn = dsn
        self.sink = sink
        self.secret = secret
        self.stream = stream or "test:" + uuid.uuid4().hex[:10]
        self.run_id = uuid.uuid4().hex
        self.services: list[Service] = []
        self.ingest_port: int | None = None
        self.base_env = base_env
        self.echo = echo
        self.new_session = new_session
        self.env = pipeline_env(
            redis_url=redis.url,
            database_url=dsn,
            webhook_secret=secret,
            app_env=app_env,
            otlp_endpoint=otlp_endpoint or (sink.endpoint if sink else None),
            extra={
                "STREAM_NAME": self.stream,
                **(fast_settings(self.run_id) if settings is None else settings),
            },
        )

    # -- processes -------------------------------------------------------------
    def _service(self, name: str, env: Mapping[str, str], health_url: str = "") -> Service:
        earlier = sum(1 for s in self.services if s.name == name)
        log = self.tmp / (f"{name}.log" if not earlier else f"{name}-{earlier}.log")
        svc = Service(
            name,
            {**self.env, **env},
            log,
            health_url=health_url,
            base_env=self.base_env,
            echo=self.echo,
            new_session=self.new_session,
        )
        self.services.append(svc)
        return svc.start()

    def start_ingest(self, port: int | None = None, *, ready: bool = True, **env: str) -> Service:
        """Start ingest (on ``port``, e.g. to restart on the same one) and wait for
        /ready to answer 200 (``ready=False``: to answer at all, e.g. 503 for an
        ingest that cannot reach Redis; it is killed if it never answers)."""
        svc = self.spawn_ingest(port, ready=ready, **env)
        svc.wait_ready()
        return svc

    def spawn_ingest(self, port: int | None = None, *, ready: bool = True, **env: str) -> Service:
        """:meth:`start_ingest` without the wait: the caller calls ``wait_ready()``
        (to start several at once)."""
        self.ingest_port = port or free_port()
        svc = self._service(
            "ingest", {"INGEST_HOST": "127.0.0.1", "INGEST_PORT": str(self.ingest_port), **env}
        )
        url = self.url("/ready")
        if ready:
            svc.ready = url
        else:

            def answers() -> bool:
                with contextlib.suppress(OSError):
                    return http_get(url)[0] in (200, 503)
                return False

            svc.ready = answers
        return svc

    def start_worker(
        self,
        name: str | None = None,
        *,
        wait: bool = True,
        must_live: bool = True,
        healthy: bool = False,
        port: int | None = None,
        **env: str,
    ) -> Service:
        """Start a worker (health on ``port``, else a free one); with ``wait``, until its
        /health answers (200 or 503) or it died (``must_live=False`` for
        fault-injected workers that kill themselves); with ``healthy``, until
        /health answers 200."""
        port = port or free_port()
        consumer = name or self.env.get("WORKER_CONSUMER_NAME") or f"w-{uuid.uuid4().hex[:6]}"
        svc = self._service(
            "worker",
            {
                "WORKER_HEALTH_HOST": "127.0.0.1",
                "WORKER_HEALTH_PORT": str(port),
                "WORKER_CONSUMER_NAME": consumer,
                **env,
            },
            health_url=f"http://127.0.0.1:{port}/health",
        )
        if not wait:
            return svc
        try:
            wait_worker_up(svc)
        except BaseException:
            svc.kill()  # started here, never handed out
            raise
        if must_live:
            assert svc.alive(), f"worker exited at start-up:\n{svc.log_tail(20)}"
        if healthy:
            svc.ready = svc.health_url
            svc.wait_ready()
        return svc

    def run_worker_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``worker <args>`` (e.g. ``redrive``) with the stack's settings, no telemetry."""
        return run_cli("worker", *args, env={**self.env, "OTEL_SDK_DISABLED": "true"}, timeout=60)

    def stop_all(self, timeout: float = 20) -> list[Service]:
        """SIGTERM every service still running, all at once (they drain and flush);
        those still running after ``timeout`` are killed and returned."""
        stuck = stop_together(self.services, timeout)
        return [svc for svc in self.services if svc in stuck]

    def all_logs(self) -> list[str]:
        return [line for svc in self.services for line in svc.log_lines()]

    # -- re-pointing -------------------------------------------------------------
    def use_redis(self, server: RedisServer) -> None:
        """Point the services started from now on, and the helpers, at ``server``."""
        self.redis = server
        self.env["REDIS_URL"] = server.url

    def use_database(self, dsn: str) -> None:
        """Point the services started from now on, and the helpers, at ``dsn``."""
        self.dsn = dsn
        self.env["DATABASE_URL"] = dsn

    # -- HTTP ----------------------------------------------------------------------
    def url(self, path: str) -> str:
        assert self.ingest_port is not None, "ingest was never started"
        return f"http://127.0.0.1:{self.ingest_port}{path}"

    def post(
        self,
        body: Any,
        *,
        path: str = "/webhooks/evolution",
        headers: dict[str, str] | None = None,
        auth: bool = True,
        raw: bytes | None = None,
    ) -> httpx.Response:
        """POST a webhook to ingest, with the stack's secret unless ``auth=False``."""
        hdrs = {"content-type": "application/json"}
        if auth:
            hdrs["x-webhook-secret"] = self.secret
        hdrs.update(headers or {})
        content = raw if raw is not None else json.dumps(body).encode()
        return httpx.post(self.url(path), content=content, headers=hdrs, timeout=10)

    # -- PostgreSQL ----------------------------------------------------------------
    def sql(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cur = conn.execute(query, params)
            return list(cur.fetchall()) if cur.description else []

    def register_instance(self, name: str, table: str = "whatsapp_instances") -> str:
        """Create an organization and register ``name`` in ``table``; returns the org id."""
        [(org,)] = self.sql("INSERT INTO core.organizations (name) VALUES ('Org') RETURNING id")
        if table == "whatsapp_instances":
            self.sql(
                "INSERT INTO healthcare.whatsapp_instances (instance_name, organization_id) "
                "VALUES (%s, %s)",
                (name, org),
            )
        else:
            self.sql(
                "INSERT INTO healthcare.integrations (organization_id, type, config) "
                "VALUES (%s, 'whatsapp', jsonb_build_object('instance_name', %s::text))",
                (org, name),
            )
        return str(org)

    @property
    def keyring(self) -> Keyring | None:
        """The content keys the services were given (None: content in clear)."""
        return keyring_from_setting(self.env.get("MESSAGE_ENCRYPTION_KEYS"))

    def rows(
        self, where: str = "TRUE", params: tuple[Any, ...] = (), *, sealed: bool = False
    ) -> list[dict[str, Any]]:
        """Message rows, oldest first, with their content opened (``sealed``:
        as stored)."""
        with psycopg.connect(self.dsn, row_factory=dict_row) as conn:
            rows = list(
                conn.execute(
                    f"SELECT * FROM healthcare.whatsapp_messages WHERE {where} ORDER BY id", params
                ).fetchall()
            )
        if sealed:
            return rows
        keyring = self.keyring
        return [open_row(keyring, row) for row in rows]

    def wait_rows(
        self, n: int, timeout: float = 20, where: str = "TRUE", params: tuple[Any, ...] = ()
    ) -> list[dict[str, Any]]:
        wait_for(
            lambda: len(self.rows(where, params)) >= n,
            timeout=timeout,
            what=f"{n} row(s) in whatsapp_messages where {where}",
        )
        return self.rows(where, params)

    # -- Redis and telemetry ---------------------------------------------------------
    @property
    def queue(self) -> QueueView:
        """The stream and consumer group, from outside."""
        return QueueView(self)

    def xadd(self, fields: dict[str, str]) -> str:
        """Append an entry to this stack's stream directly (bypassing ingest)."""
        return self.queue.xadd(fields)

    def metric_points(self, name: str, service: str | None = None) -> list[dict[str, Any]]:
        """This stack's exported points of metric ``name``."""
        assert self.sink is not None, "this stack exports to no sink"
        return [
            p
            for p in self.sink.metric_points(name, service)
            if p["resource"].get("test.run.id") == self.run_id
        ]

    def cumulative(self, name: str, service: str, **attrs: Any) -> float:
        """The total of counter ``name`` over this stack's processes (see :func:`cumulative`)."""
        return cumulative(self.metric_points(name, service), **attrs)
