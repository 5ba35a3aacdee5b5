"""Failures classified by cause, not by exception class.

psycopg raises ``OperationalError`` both for "the server is gone" and for
"this row is larger than the index can hold"; treating the class as the cause
once made one oversized message stop all storage, retried forever as if the
database were down. The SQLSTATE (and, for Redis and HTTP, the reply) says
which it is:

* **transient**: the dependency is unavailable or overloaded, or not yet
  migrated, and the same attempt will succeed later (connection, insufficient
  resources, operator intervention, serialization failure, deadlock, missing
  schema objects or grants, timeouts, 5xx/429);
* **permanent**: this input fails every time (data exceptions, integrity,
  syntax or undefined objects, program limits, other 4xx, bugs).

Only the type name and the code ever leave this module: a database's message
text may quote the data that failed (``CONTEXT: JSON data, line 1: ...``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Final, Literal

Kind = Literal["transient", "permanent"]

# SQLSTATE classes (first two characters) whose errors pass.
_TRANSIENT_CLASSES: Final = frozenset(
    {
        "08",  # connection exception
        "53",  # insufficient resources (disk full, out of memory, too many connections)
        "57",  # operator intervention (admin shutdown, query canceled, cannot connect now)
        "58",  # system error (I/O)
        "HV",  # foreign data wrapper (remote side)
    }
)
_TRANSIENT_CODES: Final = frozenset(
    {
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "55P03",  # lock_not_available
        # The database is older than (or set up differently from) the code: a
        # worker started before `migrate`, or grants not applied. Every message
        # fails alike, which is an outage, not poison; /health reports it.
        # Treated as permanent like the rest of their classes, they would
        # dead-letter every message.
        "3F000",  # invalid_schema_name (nothing migrated at all)
        "42P01",  # undefined_table
        "42703",  # undefined_column
        "42883",  # undefined_function (healthcare.put_media and the like)
        "42704",  # undefined_object
        "42501",  # insufficient_privilege (a role without its grants)
    }
)
# HTTP statuses worth retrying (the rest of 4xx never succeed unchanged).
_TRANSIENT_HTTP: Final = frozenset({408, 409, 425, 429})


@dataclass(frozen=True, slots=True)
class Failure:
    """What is safe to record about one failure."""

    kind: Kind
    error_type: str
    # SQLSTATE, HTTP status or Redis error prefix; never free text.
    code: str | None = None

    @property
    def transient(self) -> bool:
        return self.kind == "transient"


def sqlstate_kind(sqlstate: str) -> Kind:
    """The kind of a PostgreSQL error by its SQLSTATE."""
    if sqlstate in _TRANSIENT_CODES or sqlstate[:2] in _TRANSIENT_CLASSES:
        return "transient"
    return "permanent"


def http_status_kind(status: int) -> Kind:
    """The kind of an HTTP error answer."""
    return "transient" if status >= 500 or status in _TRANSIENT_HTTP else "permanent"


def _psycopg(exc: BaseException) -> Failure | None:
    try:
        import psycopg
        from psycopg_pool import PoolTimeout
    except ImportError:  # pragma: no cover - both services depend on psycopg
        return None
    if isinstance(exc, PoolTimeout):
        return Failure("transient", "PoolTimeout")
    if not isinstance(exc, psycopg.Error):
        return None
    sqlstate = exc.sqlstate
    if sqlstate:
        return Failure(sqlstate_kind(sqlstate), type(exc).__name__, sqlstate)
    # No SQLSTATE: the client could not talk to the server at all.
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return Failure("transient", type(exc).__name__)
    return Failure("permanent", type(exc).__name__)


def _redis(exc: BaseException) -> Failure | None:
    try:
        from redis import exceptions as rex
    except ImportError:  # pragma: no cover
        return None
    if not isinstance(exc, rex.RedisError):
        return None
    name = type(exc).__name__
    transient_types = (
        rex.ConnectionError,
        rex.TimeoutError,
        rex.BusyLoadingError,
        rex.TryAgainError,
        rex.ClusterDownError,
        rex.ReadOnlyError,
        rex.MasterDownError,
    )
    if isinstance(exc, transient_types):
        return Failure("transient", name)
    if isinstance(exc, rex.ResponseError):
        # The reply's first word is its error code (WRONGTYPE, OOM, NOGROUP ...).
        prefix = str(exc).split(" ", 1)[0][:32]
        code = prefix if prefix.isupper() and prefix.isalpha() else None
        # OOM: maxmemory reached under noeviction, which passes once consumers catch up.
        kind: Kind = "transient" if code in ("OOM", "LOADING", "BUSY", "MISCONF") else "permanent"
        return Failure(kind, name, code)
    return Failure("transient", name)


def _httpx(exc: BaseException) -> Failure | None:
    try:
        import httpx
    except ImportError:
        return None
    if isinstance(exc, httpx.HTTPStatusError):
        status = exc.response.status_code
        return Failure(http_status_kind(status), type(exc).__name__, str(status))
    if isinstance(exc, httpx.TransportError):
        return Failure("transient", type(exc).__name__)
    return None


def classify(exc: BaseException) -> Failure:
    """Classify ``exc`` by its cause."""
    for reader in (_psycopg, _redis, _httpx):
        failure = reader(exc)
        if failure is not None:
            return failure
    if type(exc).__name__ == "SchemaNotMigrated":
        return Failure("transient", "SchemaNotMigrated")  # an outage until `migrate` runs
    if isinstance(exc, TimeoutError | asyncio.TimeoutError | ConnectionError | OSError):
        return Failure("transient", type(exc).__name__)
    # Anything else is a bug or bad input: retrying the same thing will not help.
    return Failure("permanent", type(exc).__name__)
