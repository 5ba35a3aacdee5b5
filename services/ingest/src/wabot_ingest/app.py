"""The ingest ASGI app: the webhook fast path in front of a small FastAPI app.

``/webhooks/evolution...`` is served by :class:`~wabot_ingest.webhook.WebhookHandler`
directly; everything else (``/health``, ``/ready`` and, in development only,
``/docs``) goes to FastAPI. Resources open and close with the app's lifespan.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool
from redis.exceptions import RedisError

from wabot_ingest.asgi import Receive, Scope, Send
from wabot_ingest.auth import SECRET_HEADER, Unauthorized, WebhookAuth
from wabot_ingest.enqueue import Coalescer
from wabot_ingest.media import MediaStore
from wabot_ingest.settings import IngestSettings
from wabot_ingest.telemetry import IngestTelemetry
from wabot_ingest.webhook import WEBHOOK_PATH, WebhookHandler
from wabot_shared import db
from wabot_shared import queue as q
from wabot_shared.health import Check, run_checks
from wabot_shared.leases import Leases
from wabot_shared.redis_policy import health_check
from wabot_shared.settings import warn_if_content_in_clear

log = logging.getLogger("wabot.ingest")


class Ingest:
    """The service's resources; owned by the app's lifespan."""

    def __init__(self, settings: IngestSettings, version: str) -> None:
        self.settings = settings
        self.auth = WebhookAuth(settings)
        self.telemetry = IngestTelemetry(settings.stream_name, version)
        self.redis = q.connect(
            settings.redis_url.get_secret_value(),
            socket_connect_timeout=2.0,
            socket_timeout=5.0,
            health_check_interval=30,
        )
        self.queue = q.StreamQueue(
            self.redis, settings.stream_name, settings.consumer_group, settings.stream_partitions
        )
        self.leases = Leases(self.redis, settings.stream_name)
        kwargs = self.redis.connection_pool.connection_kwargs
        self.media = MediaStore(None, settings.keyring(), settings.max_large_bodies)
        self.webhook = WebhookHandler(
            settings,
            auth=self.auth,
            coalescer=Coalescer(self.queue),
            telemetry=self.telemetry,
            server_attributes={
                "server.address": str(kwargs.get("host", "")),
                "server.port": int(kwargs.get("port", 6379)),
            },
            media=self.media,
        )
        self.pool: AsyncConnectionPool[AsyncConnection[TupleRow]] | None = None

    @property
    def draining(self) -> bool:
        return self.webhook.draining

    def start_draining(self, reason: str) -> None:
        """Stop accepting: /ready and new webhooks answer 503 from now on."""
        if not self.webhook.draining:
            self.webhook.draining = True
            log.info("%s received: draining (new requests get 503)", reason)

    async def start(self) -> None:
        """Create the consumer groups so no entry predates them; Redis may be down."""
        warn_if_content_in_clear(self.settings, log)
        if self.settings.database_url is not None:
            # Its health check, and webhook media (healthcare.put_media).
            self.pool = await db.open_pool(
                self.settings.database_url.get_secret_value(),
                max_size=self.settings.max_large_bodies + 1,
                name="wabot-ingest",
            )
            self.media.pool = self.pool
        try:
            await self.queue.ensure_groups()
        except (RedisError, OSError) as exc:
            log.warning(
                "redis not reachable at start-up; will answer 503 until it is: %s",
                type(exc).__name__,
            )

    async def close(self) -> None:
        """Release the Redis and PostgreSQL pools."""
        await self.redis.aclose()
        if self.pool is not None:
            await self.pool.close(timeout=2.0)

    async def ready(self) -> tuple[bool, dict[str, Any]]:
        """Ready = not draining and able to enqueue (Redis answers PING)."""
        if self.draining:
            return False, {"status": "fail", "checks": {"draining": {"status": "fail"}}}
        return await run_checks({"redis": self.redis.ping})

    async def health(self) -> tuple[bool, dict[str, Any]]:
        """Health = Redis answers, PostgreSQL answers (when configured), and at
        least one worker has a live heartbeat (its key's TTL has not run out)."""
        allow = self.settings.redis_allow_eviction
        checks: dict[str, Check] = {
            "redis": lambda: health_check(self.redis, allow),
            "workers": self._workers_alive,
        }
        if self.pool is not None:
            pool = self.pool
            checks["postgres"] = lambda: db.ping(pool, timeout=2.0)
        return await run_checks(checks)

    async def _workers_alive(self) -> dict[str, Any]:
        workers = await self.leases.live_workers()
        return {"status": "pass" if workers else "fail", "live": len(workers)}

    def may_see_details(self, secret: str | None, authorization: str | None) -> bool:
        """Whether a /health caller may see what is checked (not just pass/fail)."""
        if self.settings.health_details:
            return True
        if secret is None and authorization is None:
            return False
        try:
            self.auth.check(secret, authorization)
        except Unauthorized:
            return False
        return True


class IngestApp:
    """The ASGI entry point: the webhook path directly, the rest through FastAPI."""

    def __init__(self, ingest: Ingest, app: FastAPI) -> None:
        self.ingest = ingest
        self.app = app
        self.state = app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(WEBHOOK_PATH):
            await self.ingest.webhook(scope, receive, send)
            return
        await self.app(scope, receive, send)


def create_app(settings: IngestSettings, version: str) -> IngestApp:
    """Build the app; resources open and close with its lifespan."""
    ingest = Ingest(settings, version)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await ingest.start()
        log.info("ingest started", extra={"server.port": settings.port})
        try:
            yield
        finally:
            ingest.start_draining("shutdown")
            await ingest.close()
            log.info("ingest stopped")

    dev = settings.is_development
    app = FastAPI(
        title="wabot ingest",
        version=version,
        lifespan=lifespan,
        # The API description names every route and setting; only for local use.
        docs_url="/docs" if dev else None,
        redoc_url="/redoc" if dev else None,
        openapi_url="/openapi.json" if dev else None,
        # Probes every few seconds would drown the traces that matter; the
        # webhook path writes its own spans and metrics.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.ingest = ingest

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        ok, body = await ingest.health()
        status = 200 if ok else 503
        if not ingest.may_see_details(
            request.headers.get(SECRET_HEADER), request.headers.get("authorization")
        ):
            body = {"status": body["status"]}
        return JSONResponse(body, status_code=status)

    @app.get("/ready")
    async def ready() -> JSONResponse:
        ok, body = await ingest.ready()
        return JSONResponse({"status": body["status"]}, status_code=200 if ok else 503)

    return IngestApp(ingest, app)
