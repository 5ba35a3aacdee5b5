"""The ingest ASGI app: authenticate, validate, enqueue, answer.

A ``messages.upsert`` webhook is answered 202 only after its XADD succeeded, so
a 2xx always means the message is in Redis. Everything Evolution should retry
(Redis down, draining) gets 503 with ``Retry-After``; everything it must not
retry (bad auth, malformed body) gets 400/401/422.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from opentelemetry.semconv._incubating.attributes import messaging_attributes as msg
from opentelemetry.semconv.attributes import error_attributes, server_attributes
from opentelemetry.trace import SpanKind, StatusCode
from psycopg import AsyncConnection
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool
from redis.exceptions import RedisError

from wabot_ingest.auth import SECRET_HEADER, Unauthorized, WebhookAuth
from wabot_ingest.envelope import BodyError, UpsertEnvelope, metric_event, normalize_event, parse
from wabot_ingest.telemetry import IngestTelemetry
from wabot_shared import db, names
from wabot_shared import queue as q
from wabot_shared.health import Check, run_checks
from wabot_shared.propagation import inject_into_fields
from wabot_shared.settings import IngestSettings
from wabot_shared.telemetry import trace_id_hex

log = logging.getLogger("wabot.ingest")

WEBHOOK_PATH = "/webhooks/evolution"
UNTRACED_PATHS = frozenset({"/health", "/ready", "/docs", "/openapi.json"})

_BODY_SCHEMA: dict[str, Any] = {
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["event", "instance"],
                "properties": {
                    "event": {"type": "string", "example": "messages.upsert"},
                    "instance": {"type": "string"},
                    "data": {"type": "object"},
                },
            }
        }
    },
    "required": True,
}


def _error(status: int, code: str, detail: str, **extra: Any) -> JSONResponse:
    headers = {}
    if status in (429, 503):
        headers["Retry-After"] = str(extra.pop("retry_after", 5))
    return JSONResponse(
        {"error": code, "detail": detail, **extra}, status_code=status, headers=headers
    )


async def read_body(request: Request, limit: int) -> bytes:
    """Read the body, refusing (413) as soon as it exceeds ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise BodyError(413, "body_too_large", f"body exceeds {limit} bytes")
        except ValueError:
            raise BodyError(400, "bad_content_length", "invalid Content-Length") from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyError(413, "body_too_large", f"body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class Ingest:
    """Request handling with its resources; owned by the app's lifespan."""

    def __init__(self, settings: IngestSettings, version: str) -> None:
        self.settings = settings
        self.auth = WebhookAuth(settings.webhook_secret, settings.webhook_jwt_key)
        self.telemetry = IngestTelemetry(settings.stream_name, version)
        self.redis = q.connect(
            settings.redis_url.get_secret_value(),
            socket_connect_timeout=2.0,
            socket_timeout=5.0,
            health_check_interval=30,
        )
        self.queue = q.StreamQueue(self.redis, settings.stream_name, settings.consumer_group)
        kwargs = self.redis.connection_pool.connection_kwargs
        self._server_attrs: dict[str, str | int] = {
            server_attributes.SERVER_ADDRESS: str(kwargs.get("host", "")),
            server_attributes.SERVER_PORT: int(kwargs.get("port", 6379)),
        }
        self.draining = False
        self.pool: AsyncConnectionPool[AsyncConnection[TupleRow]] | None = None

    def start_draining(self, reason: str) -> None:
        """Stop accepting: /ready and new webhooks answer 503 from now on."""
        if not self.draining:
            self.draining = True
            log.info("%s received: draining (new requests get 503)", reason)

    async def start(self) -> None:
        """Create the consumer group so no entry predates it; Redis may be down."""
        if self.settings.database_url is not None:
            self.pool = await db.open_pool(
                self.settings.database_url.get_secret_value(),
                max_size=2,
                name="wabot-ingest",
                traced=False,
            )
        try:
            await self.queue.ensure_group()
        except RedisError as exc:
            log.warning(
                "redis not reachable at start-up; will answer 503 until it is: %s",
                type(exc).__name__,
            )

    async def close(self) -> None:
        """Release the Redis and PostgreSQL pools."""
        await self.redis.aclose()
        if self.pool is not None:
            await self.pool.close(timeout=2.0)

    def _unavailable(self, detail: str) -> JSONResponse:
        return _error(503, "unavailable", detail, retry_after=self.settings.retry_after_seconds)

    async def handle_webhook(self, request: Request) -> JSONResponse:
        """Authenticate, validate and enqueue one webhook."""
        if self.draining:
            return self._unavailable("shutting down")
        try:
            self.auth.check(
                request.headers.get(SECRET_HEADER), request.headers.get("authorization")
            )
        except Unauthorized as exc:
            self.telemetry.event("unknown", "rejected")
            log.warning("webhook rejected: %s", exc, extra={"http.response.status_code": 401})
            return _error(401, "unauthorized", str(exc))
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        # A missing type is tolerated (some senders omit it); a wrong one is not.
        if content_type and not content_type.endswith("json"):
            self.telemetry.event("unknown", "rejected")
            return _error(415, "unsupported_media_type", "expected application/json")
        try:
            body = await read_body(request, self.settings.max_body_bytes)
            envelope = parse(body)
        except BodyError as exc:
            self.telemetry.event("unknown", "rejected")
            log.warning(
                "webhook rejected: %s",
                exc.detail,
                extra={"error.type": exc.code, "http.response.status_code": exc.status},
            )
            extra = {"errors": exc.errors} if exc.errors else {}
            return _error(exc.status, exc.code, exc.detail, **extra)

        event = normalize_event(envelope.event)
        if not isinstance(envelope, UpsertEnvelope):
            self.telemetry.event(metric_event(event), "ignored")
            return JSONResponse(
                {"status": "ignored", "event": metric_event(event)}, status_code=202
            )
        return await self._enqueue(body, envelope)

    async def _enqueue(self, body: bytes, envelope: UpsertEnvelope) -> JSONResponse:
        fields = {
            names.FIELD_PAYLOAD: body.decode("utf-8"),
            names.FIELD_EVENT: names.EVENT_MESSAGES_UPSERT,
            names.FIELD_INSTANCE: envelope.instance,
            names.FIELD_MESSAGE_ID: envelope.data.key.id,
        }
        tel = self.telemetry
        with tel.tracer.start_as_current_span(
            tel.send_span_name,
            kind=SpanKind.PRODUCER,
            attributes={
                msg.MESSAGING_SYSTEM: names.MESSAGING_SYSTEM,
                msg.MESSAGING_OPERATION_NAME: names.OP_SEND,
                msg.MESSAGING_OPERATION_TYPE: msg.MessagingOperationTypeValues.SEND.value,
                msg.MESSAGING_DESTINATION_NAME: tel.stream,
                names.ATTR_INSTANCE: envelope.instance,
                **self._server_attrs,
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            inject_into_fields(fields)
            try:
                stream_id = await self.queue.add(fields)
            except (TimeoutError, RedisError, OSError) as exc:
                error_type = type(exc).__name__
                span.set_status(StatusCode.ERROR, "XADD failed")
                span.set_attribute(error_attributes.ERROR_TYPE, error_type)
                tel.sent(error_type)
                tel.event(names.EVENT_MESSAGES_UPSERT, "unavailable")
                log.error(
                    "could not enqueue webhook: %s", error_type, extra={"error.type": error_type}
                )
                return self._unavailable("queue unavailable")
            span.set_attribute(msg.MESSAGING_MESSAGE_ID, stream_id)
            tel.sent()
            tel.event(names.EVENT_MESSAGES_UPSERT, "queued")
            trace_id = trace_id_hex(span)
        log.info(
            "webhook queued",
            extra={"messaging.message.id": stream_id, names.ATTR_INSTANCE: envelope.instance},
        )
        return JSONResponse(
            {"status": "queued", "stream_id": stream_id, "trace_id": trace_id}, status_code=202
        )

    async def ready(self) -> tuple[bool, dict[str, Any]]:
        """Ready = not draining and able to enqueue (Redis answers PING)."""
        if self.draining:
            return False, {"status": "fail", "checks": {"draining": {"status": "fail"}}}
        return await run_checks({"redis": self.redis.ping})

    async def health(self) -> tuple[bool, dict[str, Any]]:
        """Health = Redis answers, PostgreSQL answers (when configured), and at
        least one worker has a live heartbeat (its key's TTL has not run out)."""
        checks: dict[str, Check] = {"redis": self.redis.ping, "workers": self._workers_alive}
        if self.pool is not None:
            pool = self.pool
            checks["postgres"] = lambda: db.ping(pool, timeout=2.0)
        return await run_checks(checks)

    async def _workers_alive(self) -> dict[str, Any]:
        workers = await self.queue.live_workers()
        return {"status": "pass" if workers else "fail", "live": len(workers)}


def _untraced(scope: MutableMapping[str, Any]) -> bool:
    # Probes every few seconds would drown the traces that matter.
    return scope.get("path") in UNTRACED_PATHS


def create_app(settings: IngestSettings, version: str) -> FastAPI:
    """Build the FastAPI app; resources open and close with its lifespan."""
    ingest = Ingest(settings, version)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await ingest.start()
        log.info("ingest started", extra={"port": settings.ingest_port})
        try:
            yield
        finally:
            ingest.start_draining("shutdown")
            await ingest.close()
            log.info("ingest stopped")

    app = FastAPI(
        title="wabot ingest",
        version=version,
        lifespan=lifespan,
        # FastAPI's own OpenTelemetry support: one SERVER span and the
        # http.server.* metrics per request. Operation sub-spans are left out
        # (they multiply the spans per webhook and cost throughput), and so are
        # its log records, which may quote request values.
        telemetry={"operation_spans": False, "logs": False, "exclude": _untraced},
    )
    app.state.ingest = ingest

    async def webhook(request: Request) -> JSONResponse:
        return await ingest.handle_webhook(request)

    responses: dict[int | str, dict[str, Any]] = {
        202: {"description": "queued or ignored"},
        400: {"description": "malformed JSON"},
        401: {"description": "bad credentials"},
        413: {"description": "body too large"},
        415: {"description": "not JSON"},
        422: {"description": "invalid envelope"},
        503: {"description": "queue unavailable or draining; retry later"},
    }
    app.add_api_route(
        WEBHOOK_PATH,
        webhook,
        methods=["POST"],
        status_code=202,
        responses=responses,
        openapi_extra={"requestBody": _BODY_SCHEMA},
    )
    # Evolution's "webhook by events" mode appends the event to the URL path.
    app.add_api_route(
        WEBHOOK_PATH + "/{event_path}",
        webhook,
        methods=["POST"],
        status_code=202,
        responses=responses,
        openapi_extra={"requestBody": _BODY_SCHEMA},
    )

    @app.get("/health")
    async def health() -> JSONResponse:
        ok, body = await ingest.health()
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/ready")
    async def ready() -> JSONResponse:
        ok, body = await ingest.ready()
        return JSONResponse(body, status_code=200 if ok else 503)

    return app
