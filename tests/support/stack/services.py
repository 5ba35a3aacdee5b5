"""Our own programs: ``ingest`` and ``worker`` as long-running processes, and
the console scripts' one-shot modes (``migrate``, ``worker --check``,
``worker redrive``)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.support.stack.env import clean_env
from tests.support.stack.net import http_get, wait_for
from tests.support.stack.paths import BIN, MIGRATIONS, REPO
from tests.support.stack.process import Echo, Process


class Service(Process):
    """``ingest`` or ``worker`` (a console script of this virtualenv) as a process.

    ``env`` holds the settings to set on top of :func:`clean_env`; ``health_url``
    is where the service answers its health check (the worker's /health).
    """

    def __init__(
        self,
        name: str,
        env: Mapping[str, str],
        log_path: Path,
        args: Sequence[str] = (),
        health_url: str = "",
        *,
        base_env: Mapping[str, str] | None = None,
        echo: Echo | None = None,
        new_session: bool = False,
    ) -> None:
        full = dict(clean_env() if base_env is None else base_env)
        full.update(env)
        super().__init__(
            name,
            [str(BIN / name), *args],
            env=full,
            log_path=log_path,
            echo=echo,
            new_session=new_session,
        )
        self.health_url = health_url

    def start(self, *, wait: bool = False) -> Service:  # callers wait for their own condition
        super().start(wait=wait)
        return self


def run_cli(
    program: str,
    *args: str,
    env: Mapping[str, str],
    drop: Sequence[str] = (),
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run a console script to completion with ``env`` over :func:`clean_env`
    (without the variables in ``drop``)."""
    return subprocess.run(
        [str(BIN / program), *args],
        env=clean_env(*drop, **env),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_migrate(dsn: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The real ``migrate`` against ``dsn`` (the repository's migrations unless
    ``MIGRATIONS_DIR`` is given)."""
    return run_cli("migrate", env={"DATABASE_URL": dsn, "MIGRATIONS_DIR": str(MIGRATIONS), **env})


def health(svc: Service) -> tuple[int, dict[str, Any]]:
    """The worker's /health status and body."""
    status, body = http_get(svc.health_url, timeout=5)
    return status, json.loads(body or b"{}")


def health_port(svc: Service) -> int:
    return int(svc.env["WORKER_HEALTH_PORT"])


def worker_check(svc: Service) -> int:
    """Exit code of ``worker --check`` run against ``svc``'s health port."""
    result = run_cli(
        "worker", "--check", env={"WORKER_HEALTH_PORT": str(health_port(svc))}, timeout=30
    )
    return result.returncode


def messages(svc: Process, text: str) -> list[dict[str, Any]]:
    """``svc``'s JSON log records whose message contains ``text``."""
    return [r for r in svc.json_logs() if text in str(r.get("message", ""))]


def rss_kb(svc: Process) -> int:
    return svc.rss_kb()


def stop_timed(svc: Process, timeout: float) -> tuple[int, float]:
    """SIGTERM ``svc``; returns its exit code and how long it took to exit."""
    return stop_all_timed([svc], timeout)[0]


def stop_all_timed(services: Sequence[Process], timeout: float) -> list[tuple[int, float]]:
    """SIGTERM all of ``services`` at once; each one's exit code and time to exit.
    Those still running ``timeout`` + 10 s later are killed and the call fails."""
    started = time.monotonic()
    for svc in services:
        assert svc.proc is not None, f"{svc.name} was never started"
        svc.proc.send_signal(signal.SIGTERM)
    exited: dict[int, float] = {}

    def all_exited() -> bool:
        for i, svc in enumerate(services):
            if i not in exited and svc.returncode is not None:
                exited[i] = time.monotonic() - started
        return len(exited) == len(services)

    try:
        wait_for(all_exited, timeout=timeout + 10, what="SIGTERMed services to exit", interval=0.02)
    finally:
        for svc in services:
            svc.kill()  # only the ones still running (then the wait above failed)
    codes = [svc.returncode for svc in services]
    return [(int(code), exited[i]) for i, code in enumerate(codes) if code is not None]
