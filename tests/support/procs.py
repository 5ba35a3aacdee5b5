"""Old import path of the harness; import from ``tests.support.stack`` instead.

Kept only while work in progress elsewhere still imports it.
"""

from __future__ import annotations

from tests.support.stack.net import free_port, http_get, wait_for
from tests.support.stack.paths import BIN, REPO
from tests.support.stack.servers import (
    PostgresServer,
    RedisServer,
    running_postgres,
    running_redis,
    temp_dir,
)
from tests.support.stack.services import Service
from tests.support.stack.services import run_migrate as run_migrate_cmd

__all__ = [
    "BIN",
    "REPO",
    "PostgresServer",
    "RedisServer",
    "Service",
    "free_port",
    "http_get",
    "run_migrate_cmd",
    "running_postgres",
    "running_redis",
    "temp_dir",
    "wait_for",
]
