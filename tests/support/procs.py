"""Real dependency processes (redis-server, postgres) and our services, for tests.

Everything binds to 127.0.0.1 on free ports in temporary directories and is
stopped by the session fixtures that start it. Waiting is always polling with a
deadline and a message saying what did not happen.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PG_BIN_CANDIDATES = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], *, timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``predicate`` until it returns a truthy value or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # the predicate may fail until the thing is up
            last_exc = exc
        if time.monotonic() >= deadline:
            suffix = f" (last error: {last_exc!r})" if last_exc else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{suffix}")
        time.sleep(interval)  # polling interval, not synchronisation


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _pg_tool(name: str) -> str:
    for directory in PG_BIN_CANDIDATES:
        if (directory / name).exists():
            return str(directory / name)
    found = shutil.which(name)
    if not found:
        raise AssertionError(f"{name} not found: run `make test` (it installs postgresql)")
    return found


@dataclass
class RedisServer:
    """A redis-server process with its own dir; stop/start keep its data (AOF)."""

    port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise AssertionError("redis-server not found: run `make test` (it installs it)")
        log = open(self.dir / "redis.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.dir),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--protected-mode",
                "no",
                "--daemonize",
                "no",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_for(self.ping, timeout=20, what=f"redis-server on port {self.port}")

    def ping(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)


def _as_postgres_user() -> dict[str, Any]:
    # PostgreSQL refuses to run as root, and CI runs as root. Popen's user/group
    # make postgres itself our child, so signals reach it directly.
    return {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}


@dataclass
class PostgresServer:
    """A postgres cluster in a temp dir, trust auth on 127.0.0.1."""

    port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = None

    def dsn(self, dbname: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"

    def init(self) -> None:
        data = self.dir / "data"
        if os.geteuid() == 0:
            pg = pwd.getpwnam("postgres")
            os.chown(self.dir, pg.pw_uid, pg.pw_gid)
        subprocess.run(
            [
                _pg_tool("initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            **_as_postgres_user(),
        )

    def start(self) -> None:
        log = open(self.dir / "postgres.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                _pg_tool("postgres"),
                "-D",
                str(self.dir / "data"),
                "-p",
                str(self.port),
                "-k",
                str(self.dir),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=300",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            **_as_postgres_user(),
        )
        wait_for(self.ready, timeout=30, what=f"postgres on port {self.port}")

    def ready(self) -> bool:
        import psycopg

        with psycopg.connect(self.dsn(), connect_timeout=1) as conn:
            conn.execute("SELECT 1")
        return True

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            # SIGINT = fast shutdown.
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout=30)


@dataclass
class Service:
    """One of our services (``ingest`` or ``worker``) as a real process."""

    name: str
    env: dict[str, str]
    log_path: Path
    args: list[str] = field(default_factory=list)
    health_url: str = ""
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        log = open(self.log_path, "ab")  # noqa: SIM115
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        full_env.update(self.env)
        self.proc = subprocess.Popen(
            [str(BIN / self.name), *self.args],
            env=full_env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError(
                f"{self.name} did not exit within {timeout}s of signal {sig}"
            ) from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log_lines(self) -> list[str]:
        return (
            self.log_path.read_text(errors="replace").splitlines() if self.log_path.exists() else []
        )

    def json_logs(self) -> list[dict[str, Any]]:
        import json

        out = []
        for line in self.log_lines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    out.append(record)
        return out


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


def run_migrate_cmd(dsn: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the real ``migrate`` console script against ``dsn``."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    full.update({"DATABASE_URL": dsn, "MIGRATIONS_DIR": str(REPO / "migrations"), **env})
    return subprocess.run(
        [str(BIN / "migrate")], env=full, capture_output=True, text=True, timeout=120, check=False
    )


def service_env(base: Mapping[str, str], **overrides: str) -> dict[str, str]:
    env = dict(base)
    env.update(overrides)
    return env
