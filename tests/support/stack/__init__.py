"""The one harness that starts wabot natively: for the tests, ``bench/`` and ``make run``.

* :mod:`.paths` — the repository, its console scripts, sample webhooks, tools;
* :mod:`.net` — polling with a deadline, free ports, tiny HTTP helpers;
* :mod:`.env` — the one environment builder for every child process;
* :mod:`.process` — :class:`~.process.Process`, which never leaves a child behind;
* :mod:`.servers` — redis-server and PostgreSQL, databases and migrations;
* :mod:`.services` — ingest, worker and their command-line modes;
* :mod:`.pipeline` — :class:`~.pipeline.Stack`: the services wired to one stream;
* :mod:`.queue` — the stream and its consumer group, seen from outside;
* :mod:`.configs` — the ops configs rendered for a native run (local ports);
* :mod:`.backend` — the collector and Jaeger (and :class:`~.backend.ObsStack`, a Stack
  exporting to them); :mod:`.alerting` — Prometheus and Alertmanager;
* :mod:`.run` — ``make run``.
"""
