"""Prometheus and Alertmanager, natively, from rendered copies of prometheus/
(see :mod:`.configs`): Prometheus scrapes the collector and alerts to
Alertmanager, which posts notifications to a webhook URL."""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support.stack import configs
from tests.support.stack.backend import Collector, backend_process
from tests.support.stack.configs import COMMITTED_TIMINGS, METRICS_RETENTION, Timings
from tests.support.stack.net import free_port, http_get, http_json, wait_for
from tests.support.stack.paths import alertmanager_binary, prometheus_binary


class Alertmanager:
    """Alertmanager with a rendered copy of prometheus/alertmanager.yml, clustering off."""

    def __init__(
        self,
        root: Path,
        webhook_url: str,
        *,
        port: int | None = None,
        timings: Timings = COMMITTED_TIMINGS,
        new_session: bool = False,
    ) -> None:
        self.port = port or free_port()
        home = root / "alertmanager"
        config = configs.write_alertmanager_config(home / "alertmanager.yml", webhook_url, timings)
        self.process = backend_process(
            "alertmanager",
            [
                alertmanager_binary(),
                f"--config.file={config}",
                f"--storage.path={home / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                # Empty = no gossip listener (it would bind 0.0.0.0:9094).
                "--cluster.listen-address=",
            ],
            root,
            f"http://{self.target}/-/ready",
            new_session=new_session,
        )

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def alerts(self) -> list[dict[str, Any]]:
        return list(http_json(f"http://{self.target}/api/v2/alerts"))


class Prometheus:
    """Prometheus scraping ``collector`` (and the Redis and PostgreSQL exporters
    at ``redis_exporter`` / ``postgres_exporter``, when given), alerting to
    ``alertmanager``, rules copied."""

    def __init__(
        self,
        root: Path,
        collector: Collector,
        alertmanager: Alertmanager,
        *,
        port: int | None = None,
        timings: Timings = COMMITTED_TIMINGS,
        retention: str = METRICS_RETENTION,
        redis_exporter: str | None = None,
        postgres_exporter: str | None = None,
        new_session: bool = False,
    ) -> None:
        self.port = port or free_port()
        self.config_dir = root / "prometheus"
        config = configs.write_prometheus_dir(
            self.config_dir,
            exporter=collector.exporter_target,
            self_metrics=collector.self_metrics_target,
            alertmanager=alertmanager.target,
            timings=timings,
            redis_exporter=redis_exporter,
            postgres_exporter=postgres_exporter,
        )
        self.process = backend_process(
            "prometheus",
            [
                prometheus_binary(),
                f"--config.file={config}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                f"--storage.tsdb.path={self.config_dir / 'data'}",
                f"--storage.tsdb.retention.time={retention}",
                # Keeps the collector's trace-id exemplars (query_exemplars API).
                "--enable-feature=exemplar-storage",
            ],
            root,
            f"{self.url}/-/ready",
            new_session=new_session,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api(self) -> str:
        return f"{self.url}/api/v1"

    def get(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; the ``data`` of a successful answer."""
        url = f"{self.api}/{path}?{urllib.parse.urlencode(params)}"
        status, body = http_get(url, timeout=5)
        answer = json.loads(body)
        assert status == 200, f"{url}: {status} {answer}"
        assert answer["status"] == "success", f"{url}: {answer}"
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; the result's series (a scalar counts as one)."""
        data = self.get("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def exemplars(self, expr: str, window: float = 600) -> list[dict[str, Any]]:
        now = time.time()
        return list(
            self.get("query_exemplars", query=expr, start=str(now - window), end=str(now + 60))
        )

    def wait_scraping(self, jobs: set[str], timeout: float = 30) -> None:
        """Until every job in ``jobs`` has been scraped successfully."""

        def up() -> bool:
            targets = self.get("targets", state="active")["activeTargets"]
            return jobs <= {t["labels"]["job"] for t in targets if t["health"] == "up"}

        wait_for(up, timeout=timeout, what=f"Prometheus to scrape {sorted(jobs)}", interval=0.2)

    def alert_states(self, alertname: str) -> set[str]:
        """States (pending/firing) of the alert's active instances; empty when inactive."""
        alerts = self.get("alerts")["alerts"]
        return {a["state"] for a in alerts if a["labels"]["alertname"] == alertname}

    def rules(self) -> Iterator[dict[str, Any]]:
        for group in self.get("rules")["groups"]:
            yield from group["rules"]
