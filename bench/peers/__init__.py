"""The peers the services are measured against, side by side in the same run.

Each is started by the benchmark as its own process on 127.0.0.1:

* :mod:`bench.peers.fastapi_xadd`: stock FastAPI + redis-py ``XADD``, with no
  telemetry, or with the contrib OpenTelemetry instrumentation (``--otel``);
* :mod:`bench.peers.celery_noop`: Celery 5, solo pool, contrib OpenTelemetry
  instrumentation with a no-op exporter, a no-op task plus ``INCR``;
* :mod:`bench.peers.arq_noop`: arq, tuned, a no-op task plus ``INCR`` (in its
  own environment: arq pins redis < 6).
"""
