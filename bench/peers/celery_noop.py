"""Peer of ``worker``: Celery 5, solo pool, with the contrib OpenTelemetry
instrumentation (``CeleryInstrumentor``; the SDK's batch span processor in
front of a no-op exporter), draining a preloaded queue of no-op tasks that
each ``INCR`` a Redis counter. The task's argument is the Evolution webhook
the services receive, so the broker carries the same payload.

Stock settings but for what a no-op task needs: no result backend
(``task_ignore_result``), and no mingle/gossip at start.

Worker: ``celery -A bench.peers.celery_noop worker -P solo -Q <queue> ...``
with ``PEER_REDIS_URL`` (broker and counter) and ``PEER_COUNTER`` set; the
benchmark preloads the queue with :func:`preload`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from bench.peers.payloads import webhooks

REDIS_URL = os.environ.get("PEER_REDIS_URL", "redis://127.0.0.1:6379/0")
COUNTER = os.environ.get("PEER_COUNTER", "peer:celery:done")

app = Celery("bench_peer", broker=REDIS_URL)
app.conf.update(
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
_counter = redis.Redis.from_url(REDIS_URL)


class NoopExporter(SpanExporter):
    """Takes the spans and drops them (the SDK does all of its work before this)."""

    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def setup_otel() -> None:
    from opentelemetry import trace
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "peer-celery"}))
    provider.add_span_processor(BatchSpanProcessor(NoopExporter()))
    trace.set_tracer_provider(provider)
    CeleryInstrumentor().instrument()


if os.environ.get("PEER_OTEL", "1") == "1":
    setup_otel()


@app.task(name="bench.noop_incr")
def noop_incr(webhook: dict[str, Any]) -> None:
    _counter.incr(COUNTER)


def preload(queue: str, webhooks: Iterable[dict[str, Any]]) -> int:
    """Publish one task per webhook onto ``queue`` (one connection); how many."""
    n = 0
    with app.producer_or_acquire() as producer:
        for webhook in webhooks:
            noop_incr.apply_async(args=(webhook,), queue=queue, producer=producer)
            n += 1
    return n


def main() -> None:
    """``python -m bench.peers.celery_noop <queue> <count> <chats> <sample.json>``:
    preload ``count`` tasks (the publisher is instrumented too, so each task
    carries its trace context, as a stream entry does)."""
    queue, count, chats, sample = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    template = json.loads(Path(sample).read_text())
    print(preload(queue, webhooks(template, count, chats, prefix="C")))


if __name__ == "__main__":
    main()
