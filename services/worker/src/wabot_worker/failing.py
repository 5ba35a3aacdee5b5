"""What happens to an entry that failed: counted, retried later, or dead-lettered.

Whether a failure counts towards ``MAX_DELIVERIES`` depends on its cause: a
permanent one always counts; a transient one counts only when the
dependencies are evidently up (something else was stored since this entry
last failed, or PostgreSQL and Redis answer a probe), so the entry itself is
the problem. A real outage, where the probes fail too, never dead-letters
anything. A sealed entry no key opens counts only while other entries open.
"""

from __future__ import annotations

import logging
import time

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.semconv.attributes import error_attributes
from opentelemetry.trace import StatusCode

from wabot_shared import names
from wabot_shared.failures import Failure, classify
from wabot_shared.queue import StreamQueue
from wabot_worker.scheduler import RoundResult, Work
from wabot_worker.settings import WorkerSettings
from wabot_worker.store import MessageStore
from wabot_worker.telemetry import WorkerTelemetry

log = logging.getLogger("wabot.worker")


class Failing:
    """Failure bookkeeping shared by every round of this worker."""

    def __init__(
        self,
        settings: WorkerSettings,
        *,
        queue: StreamQueue,
        store: MessageStore,
        telemetry: WorkerTelemetry,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.store = store
        self.telemetry = telemetry
        # When an entry last opened: a sealed entry that no key opens counts
        # as failing only while others open.
        self.last_opened = 0.0

    async def failed(
        self, work: Work, span: trace.Span, failure: Failure, started: float, done: int = 0
    ) -> RoundResult:
        """Record a failure of ``work`` (the round's ``done``-th entry)."""
        now = time.monotonic()
        if failure.error_type == "DecryptError":
            counts = work.last_failed_at is not None and self.last_opened > work.last_failed_at
        else:
            counts = failure.kind == "permanent" or await self._dependencies_up(work)
        work.last_failed_at = now
        if work.first_failed_at is None:
            work.first_failed_at = now
        span.set_status(StatusCode.ERROR, failure.error_type)
        span.set_attribute(error_attributes.ERROR_TYPE, failure.code or failure.error_type)
        failures = 0
        if counts:
            try:
                failures = await self.queue.count_failure(work.entry)
            except Exception as exc:
                counts = False
                failure = classify(exc)
            span.set_attribute("whatsapp.message.failures", failures)
        if counts and failures >= self.settings.max_deliveries:
            reason = f"failed {failures} times"
            if await self.dead_letter(
                work,
                span,
                failure.error_type,
                reason,
                started=started,
                deliveries=failures,
                code=failure.code,
            ):
                return RoundResult(done + 1)
            return RoundResult(done, self.retry_later(work))
        retry_at = self.retry_later(work)
        self.telemetry.processed("failed", time.perf_counter() - started, failure.error_type)
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            log.warning(
                "message processing failed (%s); retrying it in %.1fs, its chat waits",
                failure.error_type,
                work.backoff,
                extra={
                    "messaging.message.id": work.entry.id,
                    "error.type": failure.error_type,
                    "db.response.status_code": failure.code,
                    "transient": failure.transient,
                    "counted": counts,
                },
            )
        finally:
            otel_context.detach(token)
        span.end()
        return RoundResult(done, retry_at)

    async def _dependencies_up(self, work: Work) -> bool:
        if work.last_failed_at is not None and self.store.last_commit > work.last_failed_at:
            return True
        if not await self.store.probe():
            return False
        try:
            await self.queue.client.ping()
        except Exception:
            return False
        return True

    async def dead_letter(
        self,
        work: Work,
        span: trace.Span,
        error_type: str,
        reason: str,
        *,
        started: float,
        deliveries: int = 1,
        code: str | None = None,
    ) -> bool:
        """Move ``work`` to the dead-letter stream; False if Redis refused
        (the entry then stays pending and is tried again)."""
        span.set_status(StatusCode.ERROR, error_type)
        span.set_attribute(error_attributes.ERROR_TYPE, code or error_type)
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            dead_id = await self.queue.dead_letter(
                work.entry,
                {
                    names.FIELD_ERROR_TYPE: error_type if code is None else f"{error_type} {code}",
                    names.FIELD_DELIVERIES: str(deliveries),
                    names.FIELD_ORIGINAL_ID: work.entry.id,
                    names.FIELD_ERROR_MESSAGE: reason,
                },
            )
        except Exception as exc:
            failure = classify(exc)
            log.warning(
                "could not dead-letter (%s); the entry stays pending",
                failure.error_type,
                extra={"messaging.message.id": work.entry.id, "error.type": failure.error_type},
            )
            return False
        else:
            self.telemetry.processed("dead_lettered", time.perf_counter() - started, error_type)
            log.error(
                "message dead-lettered: %s",
                reason,
                extra={
                    "messaging.message.id": work.entry.id,
                    "error.type": error_type,
                    "dead_letter_id": dead_id,
                },
            )
            return True
        finally:
            otel_context.detach(token)
            span.end()

    def retry_later(self, work: Work) -> float:
        work.backoff = min(
            self.settings.retry_backoff_max,
            work.backoff * 2 if work.backoff else self.settings.retry_backoff_initial,
        )
        return time.monotonic() + work.backoff
