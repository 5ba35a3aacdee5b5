"""Peer of ``ingest``: stock FastAPI + redis-py ``XADD``, the way one would
write it without thinking about performance or telemetry.

``POST /webhooks/evolution`` checks the ``X-Webhook-Secret`` header in constant
time, parses the JSON body, checks it names an event, an instance and a message
id, ``XADD``s the body to one stream and answers 202 with the entry id. It
does less than ingest (no partitions, no normalisation, no minimisation, no
sealing), which is what makes it the bar.

With ``--otel`` it is "the same with the contrib OpenTelemetry
instrumentation": ``FastAPIInstrumentor`` (server span plus its ASGI
receive/send spans, ``http.server.*`` metrics) and ``RedisInstrumentor`` (a
client span per XADD), the SDK exporting traces, metrics and logs over
OTLP/HTTP (the standard ``OTEL_*`` variables), and one log record per accepted
webhook, as ingest writes.

Run: ``python -m bench.peers.fastapi_xadd --port 8000 [--otel]`` with
``REDIS_URL``, ``WEBHOOK_SECRET`` and ``PEER_STREAM`` in the environment.
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import os
import sys
from typing import Any

import redis.asyncio as aioredis
import uvicorn
from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse

log = logging.getLogger("bench.peer")


def setup_otel(service_name: str) -> None:
    """The SDK as its documentation sets it up, exporting over OTLP/HTTP."""
    from opentelemetry import metrics, trace
    from opentelemetry._logs import set_logger_provider
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.logging.handler import LoggingHandler
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": service_name})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(
        MeterProvider(
            resource=resource, metric_readers=[PeriodicExportingMetricReader(OTLPMetricExporter())]
        )
    )
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter()))
    set_logger_provider(logger_provider)
    logging.getLogger().addHandler(LoggingHandler(logger_provider=logger_provider))
    RedisInstrumentor().instrument()


def create_app(*, otel: bool) -> FastAPI:
    redis = aioredis.Redis.from_url(os.environ["REDIS_URL"])
    secret = os.environ["WEBHOOK_SECRET"].encode()
    stream = os.environ.get("PEER_STREAM", "peer:inbound")
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "pass"}

    @app.post("/webhooks/evolution", status_code=202)
    async def webhook(
        request: Request, x_webhook_secret: str | None = Header(default=None)
    ) -> JSONResponse:
        if x_webhook_secret is None or not hmac.compare_digest(x_webhook_secret.encode(), secret):
            raise HTTPException(status_code=401, detail="invalid secret")
        body = await request.body()
        try:
            payload: Any = json.loads(body)
            message_id = payload["data"]["key"]["id"]
            fields = {"event": payload["event"], "instance": payload["instance"]}
        except (ValueError, KeyError, TypeError):
            raise HTTPException(status_code=400, detail="not a webhook") from None
        entry_id = await redis.xadd(stream, {**fields, "message_id": message_id, "payload": body})
        if otel:
            log.info("webhook queued")
        return JSONResponse({"status": "queued", "stream_id": entry_id.decode()}, status_code=202)

    if otel:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(app)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--otel", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s")
    if args.otel:
        setup_otel(os.environ.get("OTEL_SERVICE_NAME", "peer-fastapi-otel"))
    app = create_app(otel=args.otel)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        server_header=False,
    )


if __name__ == "__main__":
    main()
