"""Acknowledgements, grouped: one XACK pipeline for every round finished meanwhile."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

from opentelemetry import trace

from wabot_shared.failures import Failure, classify
from wabot_shared.queue import StreamEntry, StreamQueue
from wabot_worker.spans import record_children, settle_attributes


@dataclass(slots=True)
class _Batch:
    entries: list[StreamEntry]
    spans: list[trace.Span]
    done: asyncio.Future[Failure | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Acker:
    """Acknowledges entries after their rows are committed; run :meth:`run`."""

    def __init__(self, queue: StreamQueue, tracer: trace.Tracer) -> None:
        self.queue = queue
        self.tracer = tracer
        self._queue: deque[_Batch] = deque()
        self._wakeup = asyncio.Event()
        self._closing = False
        self.last_ack = time.monotonic()
        self.span_name = f"ack {queue.stream}"

    async def ack(self, entries: list[StreamEntry], spans: list[trace.Span]) -> Failure | None:
        """Acknowledge ``entries``; returns the failure (entries stay pending) or None."""
        if not entries:
            return None
        batch = _Batch(entries, spans)
        self._queue.append(batch)
        self._wakeup.set()
        return await batch.done

    def close(self) -> None:
        self._closing = True
        self._wakeup.set()

    async def run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batches = list(self._queue)
            self._queue.clear()
            entries = [e for b in batches for e in b.entries]
            started = time.time_ns()
            failure: Failure | None = None
            try:
                await self.queue.ack(entries)
            except Exception as exc:
                failure = classify(exc)
            else:
                self.last_ack = time.monotonic()
            attrs = settle_attributes(self.queue.stream, self.queue.group, len(entries))
            record_children(
                self.tracer,
                (s for b in batches for s in b.spans),
                self.span_name,
                attrs,
                start_ns=started,
                end_ns=time.time_ns(),
                failure=failure,
            )
            for batch in batches:
                if not batch.done.done():
                    batch.done.set_result(failure)
