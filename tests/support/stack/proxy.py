"""HAProxy in front of ingest instances, standing in for Fly's proxy.

:class:`Proxy` renders an HAProxy config (one frontend on 127.0.0.1, one
backend whose servers are health-checked on ingest's ``/ready``), runs
``haproxy`` through the harness' :class:`~.process.Process`, and drives it
through its runtime API (a TCP admin socket on 127.0.0.1): point a server slot
at an instance's port, change its weight (0 = drain: no new requests), put it
in maintenance, and read its counters (``show stat``), which is what a deploy
controller looks at.

Server slots are named in the config and start in maintenance ("no machine
here yet") unless given a port; a deploy points one at a new instance, lets
the health check bring it UP at weight 0, and only then gives it traffic.

Two choices, both so that what a test measures is ingest's behaviour rather
than an artefact of this stand-in:

* ``option http-server-close``: one request per server connection. ingest
  closes idle keep-alive connections after 5 s (uvicorn's
  ``timeout_keep_alive``); a proxy that reuses an idle connection at the
  moment ingest closes it answers 502 for a request ingest never saw. A
  production proxy must keep its idle timeout towards ingest below 5 s.
* ``retries`` with ``option redispatch``: a refused connection is retried on
  another server, as Fly's proxy does. A 5xx answer is *not* retried: Fly's
  proxy does not, so those reach the client (Evolution), which retries.
"""

from __future__ import annotations

import csv
import os
import shutil
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.stack.env import clean_env
from tests.support.stack.net import free_port, listening, wait_for
from tests.support.stack.paths import find_binary
from tests.support.stack.process import Process

HAPROXY_HINT = "install it with `apt-get install -y haproxy` (scripts/bootstrap.sh does)"
BACKEND = "ingest"
FRONTEND = "webhooks"
# Where a slot points while it is in maintenance (never connected to).
PARKED_PORT = 1
DEBIAN_HAPROXY = "/usr/sbin/haproxy"


def haproxy_binary() -> str:
    """$HAPROXY_BIN, PATH, or Debian's /usr/sbin/haproxy (not on a user's PATH)."""
    debian = os.access(DEBIAN_HAPROXY, os.X_OK) and shutil.which("haproxy") is None
    if debian and not os.environ.get("HAPROXY_BIN"):
        return DEBIAN_HAPROXY
    return find_binary("haproxy", HAPROXY_HINT, env_var="HAPROXY_BIN")


@dataclass(frozen=True)
class HealthCheck:
    """The routing check: ``GET path`` every ``interval_ms``; ``rise`` passes
    bring a server UP, ``fall`` failures take it DOWN."""

    path: str = "/ready"
    interval_ms: int = 250
    timeout_ms: int = 1000
    rise: int = 2
    fall: int = 2


@dataclass(frozen=True)
class Slot:
    """A ``server`` line: ``port`` None starts it in maintenance."""

    name: str
    port: int | None = None
    weight: int = 100


def render_haproxy_config(
    *, frontend_port: int, admin_port: int, slots: Sequence[Slot], check: HealthCheck
) -> str:
    """An HAProxy config: a frontend on 127.0.0.1:``frontend_port``, the backend
    ``ingest`` with ``slots``, the admin socket on 127.0.0.1:``admin_port``, and
    one log line per request on stdout (server, status, total time)."""
    servers = []
    for slot in slots:
        port = slot.port if slot.port is not None else PARKED_PORT
        line = f"    server {slot.name} 127.0.0.1:{port} check weight {slot.weight}"
        if slot.port is None:
            line += " disabled"
        servers.append(line)
    return "\n".join(
        [
            "global",
            "    maxconn 2000",
            f"    stats socket ipv4@127.0.0.1:{admin_port} level admin",
            "    stats timeout 10s",
            "    log stdout format raw local0 info",
            "",
            "defaults",
            "    mode http",
            "    log global",
            "    option dontlognull",
            '    log-format "%s %ST %Tt %HM %HU"',
            "    option http-server-close",
            "    option redispatch 1",
            "    retries 2",
            "    timeout connect 1s",
            "    timeout client 30s",
            "    timeout server 10s",
            "    timeout http-request 10s",
            "    timeout http-keep-alive 10s",
            f"    timeout check {check.timeout_ms}ms",
            "",
            f"frontend {FRONTEND}",
            f"    bind 127.0.0.1:{frontend_port}",
            f"    default_backend {BACKEND}",
            "",
            f"backend {BACKEND}",
            "    balance roundrobin",
            f"    option httpchk GET {check.path}",
            "    http-check expect status 200",
            f"    default-server inter {check.interval_ms}ms fastinter {check.interval_ms}ms"
            f" downinter {check.interval_ms}ms rise {check.rise} fall {check.fall}",
            *servers,
            "",
        ]
    )


@dataclass(frozen=True)
class ServerStat:
    """One server's line of ``show stat``."""

    name: str
    status: str  # UP, DOWN, DRAIN, MAINT, "UP 1/2" (going down), "DOWN 1/2" (going up)
    weight: int
    current_sessions: int
    responses: dict[str, int]  # "2xx" -> count, also "1xx" .. "5xx", "other"
    connection_errors: int
    response_errors: int

    @property
    def requests(self) -> int:
        """Requests this server was sent: every answer, and every failed attempt."""
        return sum(self.responses.values()) + self.connection_errors + self.response_errors

    @property
    def errors(self) -> int:
        """5xx answers and requests that got no answer."""
        return self.responses.get("5xx", 0) + self.connection_errors + self.response_errors

    @property
    def up(self) -> bool:
        """Passing its health check (whatever its weight)."""
        return self.status in ("UP", "DRAIN") or self.status.startswith("UP ")


class Proxy:
    """``haproxy`` with slots ``slots`` in front of ingest; see the module doc."""

    def __init__(
        self,
        tmp: Path,
        slots: Sequence[Slot],
        *,
        check: HealthCheck | None = None,
        ready_timeout: float = 20,
    ) -> None:
        self.check = check or HealthCheck()
        self.slots = [s.name for s in slots]
        self.port = free_port()
        self.admin_port = free_port()
        self.config_path = tmp / "haproxy.cfg"
        tmp.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            render_haproxy_config(
                frontend_port=self.port,
                admin_port=self.admin_port,
                slots=slots,
                check=self.check,
            )
        )
        self.process = Process(
            "haproxy",
            [haproxy_binary(), "-db", "-f", str(self.config_path)],
            env=clean_env(),
            log_path=tmp / "haproxy.log",
            # The admin socket (the frontend is bound by then too; connecting to
            # the frontend would be logged as a bad request).
            ready=lambda: listening(self.admin_port),
            ready_timeout=ready_timeout,
        )

    def url(self, path: str = "/webhooks/evolution") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> Proxy:
        self.process.start()
        return self

    def stop(self) -> None:
        self.process.stop()

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- the runtime API --------------------------------------------------------
    def command(self, line: str) -> str:
        """One runtime API command; its answer (the socket closes after it)."""
        with socket.create_connection(("127.0.0.1", self.admin_port), timeout=5) as sock:
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):  # until haproxy closes the connection
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def _set(self, slot: str, what: str) -> None:
        assert slot in self.slots, f"no slot {slot!r} (slots: {self.slots})"
        answer = self.command(f"set server {BACKEND}/{slot} {what}").strip()
        # Success is silent, or a note that the address changed.
        assert not answer or "changed" in answer, f"set server {slot} {what}: {answer}"

    def point(self, slot: str, port: int) -> None:
        """Point ``slot`` at 127.0.0.1:``port``, still at weight 0, and start its
        health checks: it gets traffic only once :meth:`set_weight` says so."""
        self._set(slot, "weight 0")
        self._set(slot, f"addr 127.0.0.1 port {port}")
        self._set(slot, "state ready")
        # Leaving maintenance counts as UP at once; a new machine is DOWN until
        # its checks pass (``rise`` of them).
        self._set(slot, "health down")

    def set_weight(self, slot: str, weight: int) -> None:
        """0 drains ``slot`` (no new requests; the ones in flight finish)."""
        self._set(slot, f"weight {weight}")

    def park(self, slot: str) -> None:
        """Maintenance: no traffic, no health checks (the machine is gone)."""
        self._set(slot, "state maint")

    def stats(self) -> dict[str, ServerStat]:
        """The backend's servers by name, from ``show stat``."""
        text = self.command("show stat").lstrip("# ")
        out: dict[str, ServerStat] = {}
        for row in csv.DictReader(text.splitlines()):
            if row.get("pxname") != BACKEND or row.get("svname") in ("FRONTEND", "BACKEND"):
                continue
            out[row["svname"]] = ServerStat(
                name=row["svname"],
                status=row["status"],
                weight=int(row["weight"] or 0),
                current_sessions=int(row["scur"] or 0),
                responses={
                    key: int(row[f"hrsp_{key}"] or 0)
                    for key in ("1xx", "2xx", "3xx", "4xx", "5xx", "other")
                },
                connection_errors=int(row["econ"] or 0),
                response_errors=int(row["eresp"] or 0),
            )
        return out

    def stat(self, slot: str) -> ServerStat:
        return self.stats()[slot]

    def wait_up(self, slot: str, timeout: float) -> None:
        """Until ``slot`` passes its health check."""
        wait_for(
            lambda: self.stat(slot).up,
            timeout=timeout,
            what=f"haproxy to see {slot} UP (health check GET {self.check.path})",
        )

    def wait_idle(self, slot: str, timeout: float) -> None:
        """Until no request is in flight on ``slot``."""
        wait_for(
            lambda: self.stat(slot).current_sessions == 0,
            timeout=timeout,
            what=f"the requests in flight on {slot} to finish",
        )

    def serving(self) -> list[str]:
        """The slots that get new requests: UP with a weight above 0."""
        return [s.name for s in self.stats().values() if s.up and s.weight > 0]
