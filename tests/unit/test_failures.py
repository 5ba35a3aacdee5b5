"""Failures are classified by their cause (SQLSTATE, Redis reply, HTTP status),
on errors raised by a real PostgreSQL and a real Redis."""

from __future__ import annotations

import httpx
import psycopg
import pytest
import redis

from tests.support.stack.servers import RedisServer
from wabot_shared.failures import classify, http_status_kind, sqlstate_kind


def pg_error(dsn: str, sql: str) -> psycopg.Error:
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            conn.execute(sql)
        except psycopg.Error as exc:
            return exc
    raise AssertionError(f"{sql!r} did not fail")


@pytest.mark.parametrize(
    ("sql", "kind", "code"),
    [
        # The hostile review's message: an index row over btree's limit is
        # raised as OperationalError, yet it fails every time.
        (
            "CREATE TABLE t (v text); CREATE INDEX ON t (v);"
            " INSERT INTO t SELECT string_agg(md5(g::text), '') FROM generate_series(1, 300) g",
            "permanent",
            "54000",
        ),
        ("SELECT 'x'::jsonb", "permanent", "22P02"),
        ("SELECT 1/0", "permanent", "22012"),
        ("CREATE TABLE u (v int UNIQUE); INSERT INTO u VALUES (1), (1)", "permanent", "23505"),
        ("SELECT * FROM no_such_table", "transient", "42P01"),  # not migrated yet
        ("SELECT no_such_column FROM pg_class", "transient", "42703"),  # schema behind the code
        ("SELECT * FROM no_such_schema.t", "transient", "42P01"),  # nothing migrated at all
        ("SELECT no_such_schema.f()", "transient", "3F000"),  # (a function of it)
        ("SELECT pg_catalog.no_such_function()", "transient", "42883"),  # migration missing
        ("SELECT 'x'::no_such_type", "transient", "42704"),
        (  # a role without its grants
            "CREATE ROLE r_nogrant; CREATE TABLE g (v int); SET ROLE r_nogrant; SELECT * FROM g",
            "transient",
            "42501",
        ),
        ("SELEC 1", "permanent", "42601"),
        ("DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '08006'; END $$", "transient", "08006"),
        ("DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '40001'; END $$", "transient", "40001"),
        ("DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '40P01'; END $$", "transient", "40P01"),
        ("SET statement_timeout = 1; SELECT pg_sleep(1)", "transient", "57014"),
        ("DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '53100'; END $$", "transient", "53100"),
    ],
)
def test_postgres_errors_by_sqlstate(db_dsn: str, sql: str, kind: str, code: str) -> None:
    failure = classify(pg_error(db_dsn, sql))
    assert (failure.kind, failure.code) == (kind, code)


def test_an_unreachable_database_is_transient() -> None:
    try:
        psycopg.connect("postgresql://x@127.0.0.1:1/x", connect_timeout=1)
    except psycopg.OperationalError as exc:
        failure = classify(exc)
    assert (failure.kind, failure.code) == ("transient", None)


def test_redis_errors_by_reply(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.set("wabot-test-string", "x")
    with pytest.raises(redis.ResponseError) as wrongtype:
        client.xadd("wabot-test-string", {"a": "b"})
    assert (classify(wrongtype.value).kind, classify(wrongtype.value).code) == (
        "permanent",
        "WRONGTYPE",
    )
    with pytest.raises(redis.ResponseError) as nogroup:
        client.xreadgroup("no-group", "c", {"wabot-test-stream": ">"})
    assert classify(nogroup.value).kind == "permanent"
    client.close()
    down = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    with pytest.raises(redis.ConnectionError) as refused:
        down.ping()
    assert classify(refused.value).kind == "transient"
    assert classify(redis.ResponseError("OOM command not allowed")).kind == "transient"


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (500, "transient"),
        (503, "transient"),
        (429, "transient"),
        (408, "transient"),
        (400, "permanent"),
        (401, "permanent"),
        (404, "permanent"),
        (422, "permanent"),
    ],
)
def test_http_statuses(status: int, kind: str) -> None:
    request = httpx.Request("POST", "http://127.0.0.1/x")
    error = httpx.HTTPStatusError("x", request=request, response=httpx.Response(status))
    assert classify(error).kind == kind == http_status_kind(status)
    assert classify(error).code == str(status)


def test_everything_else() -> None:
    assert classify(httpx.ConnectError("x")).kind == "transient"
    assert classify(TimeoutError()).kind == "transient"
    assert classify(KeyError("patient")).kind == "permanent"
    assert sqlstate_kind("XX000") == "permanent"
    assert sqlstate_kind("58030") == "transient"
