"""Fixtures of the fault-injection acceptance tests: an Evolution-like load
(tests/support/load.py), the oracle of the end state (tests/support/oracle.py),
and servers a test may stop and restart (``own_redis`` / ``own_postgres``; the
session-wide servers are never stopped)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.load import EvolutionLoad
from tests.support.oracle import Oracle
from tests.support.stack.net import BlackHole
from tests.support.stack.pipeline import Stack
from tests.support.stack.queue import QueueView
from tests.support.stack.servers import (
    PostgresServer,
    RedisServer,
    running_postgres,
    running_redis,
)


@pytest.fixture
def template(samples: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return samples["messages-upsert-text"]


@pytest.fixture
def make_load(stack: Stack, template: dict[str, Any]) -> Iterator[Callable[..., EvolutionLoad]]:
    """``make_load(rate=..., count=...)``: an unstarted load aimed at the stack's ingest."""
    loads: list[EvolutionLoad] = []

    def make(**kwargs: Any) -> EvolutionLoad:
        load = EvolutionLoad(
            stack.url("/webhooks/evolution"), template, secret=stack.secret, **kwargs
        )
        loads.append(load)
        return load

    try:
        yield make
    finally:
        for load in loads:
            load.abort()


@pytest.fixture
def oracle(stack: Stack, record_property: Callable[[str, object], None]) -> Oracle:
    return Oracle(stack, record_property)


@pytest.fixture
def queue(stack: Stack) -> QueueView:
    return stack.queue


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server (AOF on) only this test uses; it may stop and restart it."""
    with running_redis("wabot-rel-redis-") as server:
        yield server


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster only this test uses; it may stop and restart it."""
    with running_postgres("wabot-rel-pg-") as server:
        yield server


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    """An OTLP endpoint that accepts connections and never answers."""
    hole = BlackHole().start()
    try:
        yield hole
    finally:
        hole.stop()
