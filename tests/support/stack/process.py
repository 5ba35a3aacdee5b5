"""One way to run a child process, which never leaves it behind.

:class:`Process` starts a command with a given environment and log file, waits
until it is ready (an URL answering 200, or a predicate), and kills it if that
never happens, including when waiting is interrupted: whoever called
``start()`` never gets to stop a process whose start failed. Anything still
running when the interpreter exits is killed as well.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Self

from tests.support.stack.net import http_ok, wait_for
from tests.support.stack.paths import REPO

# A readiness check: an URL that must answer 200, or a predicate.
Ready = str | Callable[[], bool]
# Receives each line a process writes when it is echoed (see Process.echo).
Echo = Callable[[bytes], None]

_running: set[Process] = set()


@atexit.register
def _kill_leftovers() -> None:
    for process in list(_running):
        process.kill()


class StartError(AssertionError):
    """A process exited or never became ready at start-up; it has been killed."""


class Process:
    """A child process: start (and wait until ready), signal, stop, read its log.

    ``stop()`` and ``start()`` again reuse the same command, ports and data.
    With ``echo``, the output goes to the log file and, line by line, to
    ``echo`` too (``make run`` shows the services' logs that way).
    """

    def __init__(
        self,
        name: str,
        cmd: Sequence[str],
        *,
        env: Mapping[str, str],
        log_path: Path,
        ready: Ready | None = None,
        ready_timeout: float = 30,
        ready_interval: float = 0.05,
        stop_signal: int = signal.SIGTERM,
        cwd: Path = REPO,
        new_session: bool = False,
        echo: Echo | None = None,
        popen_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.cmd = list(cmd)
        self.env = dict(env)
        self.log_path = log_path
        self.ready = ready
        self.ready_timeout = ready_timeout
        self.ready_interval = ready_interval
        self.stop_signal = stop_signal
        self.cwd = cwd
        self.new_session = new_session
        self.echo = echo
        self.popen_kwargs = dict(popen_kwargs or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self._pump: threading.Thread | None = None

    # -- starting ------------------------------------------------------------
    def start(self, *, wait: bool = True) -> Self:
        """Start the command; with ``wait``, return once it is ready (see ``wait_ready``)."""
        if self.alive():
            raise StartError(f"{self.name} is already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                self.cmd,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if self.echo else log,
                stderr=subprocess.STDOUT,
                start_new_session=self.new_session,
                **self.popen_kwargs,
            )
        except BaseException:
            log.close()
            raise
        _running.add(self)
        if self.echo and self.proc.stdout is not None:
            self._pump = threading.Thread(
                target=self._copy_output, args=(self.proc.stdout, log), daemon=True
            )
            self._pump.start()
        else:
            log.close()  # the child has its own descriptor
        if wait:
            self.wait_ready()
        return self

    def __enter__(self) -> Self:
        """Started (and ready) for the ``with`` block, stopped after it."""
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Until the readiness check passes; kills the process (and raises
        :class:`StartError` with its log's tail) if it exits or time runs out."""
        if self.ready is None:
            return
        ready = self.ready
        check: Callable[[], bool] = (lambda: http_ok(ready)) if isinstance(ready, str) else ready
        where = f" at {ready}" if isinstance(ready, str) else ""
        try:
            wait_for(
                lambda: not self.alive() or check(),
                timeout=timeout or self.ready_timeout,
                what=f"{self.name} to be ready{where}",
                interval=self.ready_interval,
            )
        except BaseException as exc:  # also Ctrl-C: nobody else would stop it
            self.kill()
            if isinstance(exc, AssertionError):
                raise StartError(f"{exc}\n{self.log_tail()}") from None
            raise
        if not self.alive():
            raise StartError(
                f"{self.name} exited with {self.returncode} at start-up:\n{self.log_tail()}"
            )

    def _copy_output(self, stream: IO[bytes], log: IO[bytes]) -> None:
        echo = self.echo
        with log, stream:
            for line in stream:  # until the child closes its output
                log.write(line)
                log.flush()
                if echo is not None:
                    try:
                        echo(line)
                    except OSError:  # e.g. a closed terminal pipe: the log file still gets it
                        echo = None

    # -- state -----------------------------------------------------------------
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def rss_kb(self) -> int:
        """Resident set size, from /proc/<pid>/status."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError(f"VmRSS of {self.name} not found")

    # -- stopping --------------------------------------------------------------
    def send_signal(self, sig: int) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """Until the process exits (its exit code); TimeoutExpired otherwise."""
        assert self.proc is not None, f"{self.name} was never started"
        code = self.proc.wait(timeout=timeout)
        self._exited()
        return code

    def terminate(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Send ``sig`` and wait for the exit code; a process still running after
        ``timeout`` is killed and the call fails."""
        assert self.proc is not None, f"{self.name} was never started"
        self.send_signal(sig)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"{self.name} did not exit within {timeout}s of signal {sig}"
            ) from None

    def stop(self, timeout: float = 20) -> int | None:
        """Stop it the way it wants to be stopped (``stop_signal``) if it runs."""
        if not self.alive():
            self._exited()
            return self.returncode
        return self.terminate(self.stop_signal, timeout)

    def kill(self) -> None:
        """SIGKILL it if it still runs: its whole session when it has its own, so
        nothing it started outlives it either."""
        if self.alive():
            assert self.proc is not None
            if self.new_session:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
            else:
                self.proc.kill()
            self.proc.wait(timeout=10)
        self._exited()

    def _exited(self) -> None:
        if not self.alive():
            _running.discard(self)
            if self._pump is not None:
                self._pump.join(timeout=5)  # the rest of its output

    # -- output ----------------------------------------------------------------
    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_lines(self) -> list[str]:
        return self.log_text().splitlines()

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_lines()[-lines:])

    def json_logs(self) -> list[dict[str, Any]]:
        """The log lines that are JSON objects (our services' log records)."""
        out = []
        for line in self.log_lines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                out.append(record)
        return out


def stop_together(processes: Sequence[Process], timeout: float) -> list[Process]:
    """Signal every running one of ``processes`` (its ``stop_signal``) at once and
    wait for them all; those still running after ``timeout`` are killed and
    returned."""
    running = [p for p in processes if p.alive()]
    for process in running:
        process.send_signal(process.stop_signal)
    deadline = time.monotonic() + timeout
    stuck = []
    for process in running:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            stuck.append(process)
    return stuck
