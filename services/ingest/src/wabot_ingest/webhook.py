"""``POST /webhooks/evolution``: authenticate, validate, enqueue, answer.

A ``messages.upsert`` webhook is answered 202 only after its XADD succeeded,
so a 2xx always means the message is in Redis. Everything Evolution should
retry (Redis down, draining, too busy, a body too slow) gets 503 or 408, with
``Retry-After``; only what can never succeed gets a 4xx that Evolution drops:
bad credentials (401) and bodies that are not JSON or whose message has no
usable identity (400/422). See :mod:`wabot_shared.message`.

Trace context from the request is continued only once the caller has
authenticated; an anonymous caller cannot graft its spans onto our traces.
Baggage is never taken over.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.semconv._incubating.attributes import messaging_attributes as msg
from opentelemetry.semconv.attributes import error_attributes
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from wabot_ingest.asgi import BodyError, Receive, Scope, Send, header, read_body, send_json
from wabot_ingest.auth import SECRET_HEADER, Forbidden, Principal, Unauthorized, WebhookAuth
from wabot_ingest.enqueue import Coalescer
from wabot_ingest.media import LARGE_BODY_BYTES, MediaStore, MediaUnavailable, base64_of
from wabot_ingest.settings import IngestSettings
from wabot_ingest.telemetry import IngestTelemetry
from wabot_shared import names
from wabot_shared.entry import entry_fields
from wabot_shared.failures import classify
from wabot_shared.message import (
    KNOWN_EVENTS,
    Envelope,
    Message,
    WebhookError,
    parse_webhook,
    read_event,
    read_message,
)
from wabot_shared.propagation import inject_into_fields
from wabot_shared.telemetry import trace_id_hex

log = logging.getLogger("wabot.ingest")

WEBHOOK_PATH = "/webhooks/evolution"
# Evolution's "webhook by events" mode appends the event, kebab-cased.
EVENT_SUFFIXES = frozenset(e.replace(".", "-") for e in KNOWN_EVENTS)
_TRACE_CONTEXT: TextMapPropagator = TraceContextTextMapPropagator()


@dataclass(frozen=True, slots=True)
class Route:
    """A matched webhook path: its template (what telemetry may show) and the
    path-secret candidate, if the path carries one."""

    template: str
    secret: str | None = None


def match(path: str, path_mode: bool) -> Route | None:
    """Match ``/webhooks/evolution``, ``.../<event>``, ``.../<secret>[/<event>]``."""
    if path in (WEBHOOK_PATH, WEBHOOK_PATH + "/"):
        return Route(WEBHOOK_PATH)
    if not path.startswith(WEBHOOK_PATH + "/"):
        return None
    parts = path[len(WEBHOOK_PATH) + 1 :].rstrip("/").split("/")
    if len(parts) == 1:
        if not path_mode or parts[0] in EVENT_SUFFIXES:
            return Route(WEBHOOK_PATH + "/{event}")
        return Route(WEBHOOK_PATH + "/{secret}", parts[0])
    if len(parts) == 2 and path_mode:
        return Route(WEBHOOK_PATH + "/{secret}/{event}", parts[0])
    return None


def _trace_headers(scope: Scope) -> dict[str, str]:
    """Only the W3C trace-context headers of a request, as a carrier."""
    return {
        key.decode(): value.decode("latin-1")
        for key, value in scope["headers"]
        if key in (b"traceparent", b"tracestate")
    }


class _Slot:
    """A large-body slot held for one request, released once."""

    def __init__(self, media: MediaStore) -> None:
        self.media = media
        self.held = False

    async def acquire(self) -> bool:
        self.held = await self.media.acquire()
        return self.held

    def release(self) -> None:
        if self.held:
            self.held = False
            self.media.release()


class WebhookHandler:
    """The webhook endpoint as a raw ASGI application."""

    def __init__(
        self,
        settings: IngestSettings,
        *,
        auth: WebhookAuth,
        coalescer: Coalescer,
        telemetry: IngestTelemetry,
        server_attributes: dict[str, str | int],
        media: MediaStore,
    ) -> None:
        self.settings = settings
        self.auth = auth
        self.coalescer = coalescer
        self.telemetry = telemetry
        self.server_attributes = server_attributes
        self.partitions = settings.stream_partitions
        self.keyring = settings.keyring()
        self.media = media
        self.draining = False
        self.in_flight = 0
        self._retry_after = [(b"retry-after", str(settings.retry_after_seconds).encode())]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        route = match(scope["path"], "path" in self.auth.modes)
        if route is None:
            await send_json(send, 404, {"error": "not_found", "detail": "no such webhook path"})
            return
        if scope["method"] != "POST":
            await send_json(
                send,
                405,
                {"error": "method_not_allowed", "detail": "use POST"},
                [(b"allow", b"POST")],
            )
            return
        if self.draining:
            await self._unavailable(send, "shutting down")
            return
        if self.in_flight >= self.settings.max_concurrency:
            self.telemetry.event("unknown", "throttled")
            await self._unavailable(send, "too many concurrent webhooks")
            return
        self.in_flight += 1
        try:
            await self._handle(scope, receive, send, route, started)
        finally:
            self.in_flight -= 1

    async def _unavailable(self, send: Send, detail: str) -> int:
        await send_json(send, 503, {"error": "unavailable", "detail": detail}, self._retry_after)
        return 503

    async def _handle(
        self, scope: Scope, receive: Receive, send: Send, route: Route, started: float
    ) -> None:
        authenticated = True
        failure: str | None = None
        principal = None
        try:
            path_ok = route.secret is not None and self.auth.path_secret_matches(route.secret)
            if route.secret is not None and not path_ok:
                raise Unauthorized("invalid path secret")
            principal = self.auth.check(
                header(scope, SECRET_HEADER.encode()), header(scope, b"authorization"), path_ok
            )
        except Unauthorized as exc:
            authenticated = False
            failure = str(exc)
        parent = (
            _TRACE_CONTEXT.extract(_trace_headers(scope))
            if authenticated
            else otel_context.Context()
        )
        scheme = str(scope.get("scheme", "http"))
        span = self.telemetry.server_span(
            route.template, parent, scheme, str(scope.get("http_version", "1.1"))
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        status = 500
        try:
            if failure is not None:
                self.telemetry.event("unknown", "rejected")
                log.warning(
                    "webhook rejected: %s", failure, extra={"http.response.status_code": 401}
                )
                status = 401
                await send_json(send, 401, {"error": "unauthorized", "detail": failure})
            else:
                assert principal is not None
                status = await self._accept(scope, receive, send, principal)
        finally:
            otel_context.detach(token)
            self.telemetry.end_request(
                span, route.template, scheme, status, time.perf_counter() - started
            )

    async def _accept(
        self, scope: Scope, receive: Receive, send: Send, principal: Principal
    ) -> int:
        content_type = (header(scope, b"content-type") or "").split(";")[0].strip().lower()
        # A missing type is tolerated (some senders omit it); a wrong one is not.
        if content_type and not content_type.endswith("json"):
            self.telemetry.event("unknown", "rejected")
            await send_json(
                send,
                415,
                {"error": "unsupported_media_type", "detail": "expected application/json"},
            )
            return 415
        slot = _Slot(self.media)
        try:
            return await self._read_and_enqueue(scope, receive, send, principal, slot)
        finally:
            slot.release()

    async def _read_and_enqueue(
        self, scope: Scope, receive: Receive, send: Send, principal: Principal, slot: _Slot
    ) -> int:
        settings = self.settings
        limit = max(settings.max_body_bytes, settings.max_media_body_bytes)
        try:
            body = await read_body(
                scope,
                receive,
                limit,
                settings.body_timeout,
                large=max(settings.max_body_bytes, LARGE_BODY_BYTES),
                on_large=slot.acquire,
            )
            envelope = parse_webhook(body)
            self.auth.authorize(principal, envelope.instance)
            event = read_event(envelope)
            if envelope.is_message and not isinstance(event, Message):
                event = read_message(envelope)  # raises the 422 that says why
            if len(body) > settings.max_body_bytes and base64_of(envelope.body) is None:
                raise BodyError(
                    413,
                    "body_too_large",
                    f"body exceeds {settings.max_body_bytes} bytes (only media may be larger)",
                )
            del body
        except (BodyError, WebhookError) as exc:
            return await self._refuse(send, exc)
        except Forbidden as exc:
            self.telemetry.event(envelope.metric_event, "forbidden")
            log.warning(
                "webhook refused: %s",
                exc,
                extra={"http.response.status_code": 403, names.ATTR_INSTANCE: envelope.instance},
            )
            await send_json(send, 403, {"error": "forbidden", "detail": str(exc)})
            return 403
        if event is None:
            self.telemetry.event(envelope.metric_event, "ignored")
            await send_json(send, 202, {"status": "ignored", "event": envelope.metric_event})
            return 202
        if isinstance(event, Message) and event.media is not None:
            try:
                stored = await self.media.store(envelope.body, event)
            except ValueError as exc:
                return await self._refuse(send, BodyError(422, "invalid_media", str(exc)))
            except MediaUnavailable as exc:
                log.error(
                    "could not store media: %s", exc, extra={"error.type": "MediaUnavailable"}
                )
                self.telemetry.event(envelope.event, "unavailable")
                return await self._unavailable(send, "media store unavailable")
            envelope = dataclasses.replace(envelope, body=stored)
        partition = names.partition_of(event.instance, event.remote_jid, self.partitions)
        fields = entry_fields(
            envelope,
            event,
            partition,
            self.keyring,
            keep_media_keys=self.settings.store_media_keys,
        )
        issues = event.issues if isinstance(event, Message) else frozenset()
        return await self._enqueue(send, envelope, fields, issues, partition)

    async def _refuse(self, send: Send, exc: BodyError | WebhookError) -> int:
        self.telemetry.event("unknown", "rejected")
        extra: dict[str, Any] = {"error.type": exc.code, "http.response.status_code": exc.status}
        log.warning("webhook rejected: %s", exc.detail, extra=extra)
        body: dict[str, Any] = {"error": exc.code, "detail": exc.detail}
        if isinstance(exc, WebhookError) and exc.errors:
            body["errors"] = exc.errors
        if exc.status == 408:
            await send_json(send, 408, body, self._retry_after, close=True)
        else:
            await send_json(send, exc.status, body)
        return exc.status

    async def _enqueue(
        self,
        send: Send,
        envelope: Envelope,
        fields: dict[str, str],
        issues: frozenset[str],
        partition: int,
    ) -> int:
        if issues:
            self.telemetry.issues(issues)
        tel = self.telemetry
        with tel.tracer.start_as_current_span(
            tel.send_span_name,
            kind=SpanKind.PRODUCER,
            attributes={
                msg.MESSAGING_SYSTEM: names.MESSAGING_SYSTEM,
                msg.MESSAGING_OPERATION_NAME: names.OP_SEND,
                msg.MESSAGING_OPERATION_TYPE: msg.MessagingOperationTypeValues.SEND.value,
                msg.MESSAGING_DESTINATION_NAME: tel.stream,
                msg.MESSAGING_DESTINATION_PARTITION_ID: str(partition),
                names.ATTR_INSTANCE: envelope.instance,
                **self.server_attributes,
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            inject_into_fields(fields, propagator=_TRACE_CONTEXT)
            try:
                stream_id = await self.coalescer.add(partition, fields)
            except Exception as exc:
                failure = classify(exc)
                span.set_status(StatusCode.ERROR, "XADD failed")
                span.set_attribute(error_attributes.ERROR_TYPE, failure.error_type)
                tel.sent(failure.error_type)
                tel.event(envelope.event, "unavailable")
                log.error(
                    "could not enqueue webhook: %s",
                    failure.error_type,
                    extra={"error.type": failure.error_type},
                )
                return await self._unavailable(send, "queue unavailable")
            span.set_attribute(msg.MESSAGING_MESSAGE_ID, stream_id)
            tel.sent()
            tel.event(envelope.event, "queued")
            trace_id = trace_id_hex(span)
        log.info(
            "webhook queued",
            extra={"messaging.message.id": stream_id, names.ATTR_INSTANCE: envelope.instance},
        )
        await send_json(
            send, 202, {"status": "queued", "stream_id": stream_id, "trace_id": trace_id}
        )
        return 202
