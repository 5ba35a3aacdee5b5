"""The infrastructure exporters Prometheus scrapes: Debian's
prometheus-redis-exporter and prometheus-postgres-exporter (the same releases
as the images docker-compose.yml runs), each watching one server and
listening on 127.0.0.1.

Redis: memory (used, maxmemory, the host's total as a fallback ratio),
evictions, clients, AOF and RDB status. PostgreSQL: connections by state and
the limit, deadlocks, database sizes, replication lag
(prometheus/postgres-exporter-queries.yaml).
"""

from __future__ import annotations

from pathlib import Path

from tests.support.stack.backend import backend_process
from tests.support.stack.net import free_port
from tests.support.stack.paths import (
    PROM_DIR,
    postgres_exporter_binary,
    redis_exporter_binary,
)

POSTGRES_QUERIES = PROM_DIR / "postgres-exporter-queries.yaml"


class RedisExporter:
    def __init__(
        self, root: Path, redis_url: str, *, port: int | None = None, new_session: bool = False
    ) -> None:
        self.port = port or free_port()
        self.process = backend_process(
            "redis-exporter",
            [
                redis_exporter_binary(),
                f"-redis.addr={redis_url}",
                f"-web.listen-address={self.target}",
                # redis_total_system_memory_bytes: the memory ratio of a Redis
                # without maxmemory (see RedisMemoryHigh).
                "-include-system-metrics",
            ],
            root,
            f"http://{self.target}/metrics",
            new_session=new_session,
        )

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


class PostgresExporter:
    def __init__(
        self, root: Path, dsn: str, *, port: int | None = None, new_session: bool = False
    ) -> None:
        self.port = port or free_port()
        separator = "&" if "?" in dsn else "?"
        self.process = backend_process(
            "postgres-exporter",
            [
                postgres_exporter_binary(),
                f"--web.listen-address={self.target}",
                f"--extend.query-path={POSTGRES_QUERIES}",
            ],
            root,
            f"http://{self.target}/metrics",
            # The DSN is read from the environment only (a flag would show it in ps).
            env={"DATA_SOURCE_NAME": f"{dsn}{separator}sslmode=disable"},
            new_session=new_session,
        )

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"
