"""The real dependencies: redis-server and PostgreSQL clusters, their databases.

Everything binds 127.0.0.1. Tests keep them in temporary directories (fast,
non-durable settings); ``make run`` keeps them in ``.run/`` (durable).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

from tests.support.stack.env import clean_env
from tests.support.stack.net import free_port
from tests.support.stack.paths import pg_tool, redis_binary
from tests.support.stack.process import Process
from tests.support.stack.services import run_migrate


class RedisServer:
    """A redis-server with its own directory; stop() and start() keep its data (AOF)."""

    def __init__(
        self, port: int, dir: Path, log_path: Path | None = None, *, new_session: bool = False
    ) -> None:
        self.port = port
        self.dir = dir
        self.process = Process(
            "redis-server",
            [
                redis_binary(),
                *("--port", str(port), "--bind", "127.0.0.1", "--dir", str(dir)),
                *("--save", "", "--appendonly", "yes", "--appendfsync", "everysec"),
                *("--protected-mode", "no", "--daemonize", "no"),
            ],
            env=clean_env(),
            log_path=log_path or dir / "redis.log",
            ready=self.ping,
            ready_timeout=20,
            new_session=new_session,
        )

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.process.start()
        return self

    def ping(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    def stop(self) -> None:
        self.process.stop()


def _as_postgres_user() -> dict[str, Any]:
    # PostgreSQL refuses to run as root, and CI runs as root. Popen's user/group
    # make postgres itself our child, so signals reach it directly.
    return {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}


def postgres_can_enter(path: Path) -> bool:
    """Whether the postgres user can reach ``path`` (always true unless we are root)."""
    if os.geteuid() != 0:
        return True
    result = subprocess.run(["test", "-x", str(path)], check=False, **_as_postgres_user())
    return result.returncode == 0


def postgres_home(base: Path) -> Path:
    """A directory for a cluster kept for ``base`` (e.g. ``.run``): ``base/pg``, or,
    as root when postgres cannot enter ``base`` (under /root, say), one in /var/tmp."""
    if postgres_can_enter(base):
        return base / "pg"
    key = hashlib.md5(str(base).encode(), usedforsecurity=False).hexdigest()[:12]
    parent = Path("/var/tmp") / f"wabot-{key}"
    parent.mkdir(parents=True, exist_ok=True)
    parent.chmod(0o755)
    return parent / "pg"


class PostgresServer:
    """A PostgreSQL cluster, trust auth on 127.0.0.1.

    ``dir`` must be a directory the cluster may own: its data lives in ``data``
    (default ``dir/data``). ``durable=False`` (tests) turns fsync and friends off.
    """

    def __init__(
        self,
        port: int,
        dir: Path,
        *,
        data: Path | None = None,
        log_path: Path | None = None,
        durable: bool = False,
        new_session: bool = False,
    ) -> None:
        self.port = port
        self.dir = dir
        self.data = data or dir / "data"
        self.durable = durable
        fast = [] if durable else ["fsync=off", "synchronous_commit=off", "full_page_writes=off"]
        settings = ["listen_addresses=127.0.0.1", "max_connections=300", *fast]
        self.process = Process(
            "postgres",
            [
                pg_tool("postgres"),
                *("-D", str(self.data), "-p", str(port), "-k", str(self.data)),
                *(arg for setting in settings for arg in ("-c", setting)),
            ],
            env=clean_env(),
            log_path=log_path or dir / "postgres.log",
            ready=self.ready,
            stop_signal=signal.SIGINT,  # fast shutdown
            new_session=new_session,
            popen_kwargs=_as_postgres_user(),
        )

    def dsn(self, dbname: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"

    def init(self) -> PostgresServer:
        """initdb, unless the data directory already holds a cluster."""
        if (self.data / "PG_VERSION").exists():
            return self
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            pg = pwd.getpwnam("postgres")
            for path in {self.dir, self.data}:
                os.chown(path, pg.pw_uid, pg.pw_gid)
        result = subprocess.run(
            [
                pg_tool("initdb"),
                *("-D", str(self.data), "-U", "postgres", "--auth=trust"),
                *("--encoding=UTF8", "--locale=C.UTF-8"),
                *([] if self.durable else ["--no-sync"]),
            ],
            check=False,
            capture_output=True,
            text=True,
            env=clean_env(),
            **_as_postgres_user(),
        )
        if result.returncode != 0:
            raise AssertionError(f"initdb {self.data} failed:\n{result.stdout}{result.stderr}")
        return self

    def start(self) -> PostgresServer:
        self.process.start()
        return self

    def ready(self) -> bool:
        with psycopg.connect(self.dsn(), connect_timeout=1) as conn:
            conn.execute("SELECT 1")
        return True

    def stop(self) -> None:
        self.process.stop(timeout=30)

    def ensure_database(self, name: str) -> str:
        """Create database ``name`` unless it exists; its DSN."""
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if found.fetchone() is None:
                conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)


def create_db(server: PostgresServer, template: str | None = None) -> str:
    """A new database on ``server`` (a copy of ``template`` if given); its name."""
    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        tmpl = f" TEMPLATE {template}" if template else ""
        conn.execute(f"CREATE DATABASE {name}{tmpl}")
    return name


def create_database(server: PostgresServer, *, migrated: bool) -> str:
    """A new database on ``server`` (migrated with the real ``migrate``); its DSN."""
    dsn = server.dsn(create_db(server))
    if migrated:
        result = run_migrate(dsn)
        assert result.returncode == 0, result.stderr + result.stdout
    return dsn


@contextlib.contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def running_redis(prefix: str = "wabot-redis-") -> Iterator[RedisServer]:
    """A redis-server on a free port in its own temp dir, stopped on exit."""
    with temp_dir(prefix) as d:
        server = RedisServer(port=free_port(), dir=d)
        server.start()
        try:
            yield server
        finally:
            server.stop()


@contextlib.contextmanager
def running_postgres(prefix: str = "wabot-pg-") -> Iterator[PostgresServer]:
    """A fresh PostgreSQL cluster on a free port in its own temp dir, stopped on exit."""
    with temp_dir(prefix) as d:
        server = PostgresServer(port=free_port(), dir=d)
        server.init()
        server.start()
        try:
            yield server
        finally:
            server.stop()
