"""The benchmark's own arithmetic (``make bench``): what it parses from wrk,
the collector and py-spy, and how it turns a run into targets. No target is
asserted here: the benchmark measures, it does not pass or fail."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from bench import wrk
from bench.measure import Sampler, rotations, spread
from bench.phases import (
    DRAIN_ARQ,
    DRAIN_CELERY,
    DRAIN_MANY,
    DRAIN_ONE,
    INGEST_CONTRIB,
    INGEST_OURS,
    INGEST_STOCK,
)
from bench.profile import parse, summarize
from bench.report import markdown, targets
from bench.telemetry import Accounted, parse_prometheus

EXPOSITION = """\
# HELP traces_span_metrics_calls_total
# TYPE traces_span_metrics_calls_total counter
traces_span_metrics_calls_total{deployment_environment_name="bench-x",service_name="ingest",\
span_kind="SPAN_KIND_SERVER",span_name="POST /webhooks/evolution",status_code="STATUS_CODE_UNSET"} \
41 # {trace_id="0af7651916cd43dd8448eb211c80319c"} 1.0 1.7e9
traces_span_metrics_calls_total{deployment_environment_name="bench-x",service_name="ingest",\
span_kind="SPAN_KIND_PRODUCER",span_name="send a \\"quoted\\", stream"} 41
otelcol_receiver_accepted_spans_total{receiver="otlp",transport="http"} 82
"""


def test_prometheus_exposition_is_parsed_with_exemplars_and_escapes() -> None:
    samples = list(parse_prometheus(EXPOSITION))
    assert [(n, v) for n, _, v in samples] == [
        ("traces_span_metrics_calls_total", 41.0),
        ("traces_span_metrics_calls_total", 41.0),
        ("otelcol_receiver_accepted_spans_total", 82.0),
    ]
    assert samples[1][1]["span_name"] == 'send a "quoted", stream'
    assert samples[0][1]["span_kind"] == "SPAN_KIND_SERVER"


def test_lost_telemetry_counts_only_what_is_missing() -> None:
    acc = Accounted("worker", "t", {"CONSUMER": 10}, 12, {"CONSUMER": 9, "CLIENT": 20}, 12)
    assert (acc.lost_spans, acc.lost_logs) == (1, 0)
    acc.received_spans["CONSUMER"] = 11  # more than expected is not "lost"
    assert acc.lost_spans == 0


def test_wrk_script_posts_unique_ids_over_chats(tmp_path: Path) -> None:
    sample = {"event": "messages.upsert", "instance": "i", "data": {"key": {"id": "x"}}}
    text = wrk.script(tmp_path, sample, "s3cret", chats=7, limit=100).read_text()
    assert "__ID__" in text
    assert "__CHAT__" in text
    assert "local limit = 100" in text
    assert "sent > limit + 1" in text
    assert "wrk.thread:stop()" in text  # only with a limit
    assert "wrk.thread:stop()" not in wrk.script(tmp_path, sample, "s").read_text()


@pytest.mark.parametrize(
    ("line", "ms"),
    [("    99%  612.00us", 0.612), ("     99%   12.34ms", 12.34), ("     99%    1.50s", 1500.0)],
)
def test_wrk_latency_units(line: str, ms: float) -> None:
    assert wrk._ms(f"  Latency Distribution\n{line}\n", "99") == pytest.approx(ms)


def test_rounds_rotate_and_spread_ignores_nan() -> None:
    assert rotations(["a", "b", "c"], 4) == [
        ["a", "b", "c"],
        ["b", "c", "a"],
        ["c", "a", "b"],
        ["a", "b", "c"],
    ]
    s = spread([3.0, float("nan"), 1.0, 2.0])
    assert (s["median"], s["min"], s["max"]) == (2.0, 1.0, 3.0)
    assert math.isnan(spread([])["median"])


def test_sampler_rate_runs_from_first_progress() -> None:
    sampler = Sampler(lambda: 0, 10, timeout=1)
    sampler.samples = [(0.0, 0), (1.0, 0), (2.0, 2), (3.0, 6), (4.0, 10)]
    sampler.cpu = [0.0, 0.1, 0.2, 0.5, 0.8]
    sampler.pid = 1
    rate = sampler.rate()
    assert rate["per_s"] == pytest.approx(4.0)  # (10 - 2) / (4 - 2)
    assert rate["cpu_ms_per_item"] == pytest.approx(75.0)  # 0.6 s / 8


def test_py_spy_raw_stacks_are_summarised(tmp_path: Path) -> None:
    raw = tmp_path / "p.txt"
    raw.write_text(
        "thread (11): MainThread;main (/v/site-packages/wabot_ingest/main.py:1);"
        "_enqueue (/v/site-packages/wabot_ingest/webhook.py:9);"
        "encode (/v/site-packages/opentelemetry/exporter/x.py:3) 30\n"
        "thread (12): OtelBatchSpanRecordProcessor;"
        "_encode_span (/v/site-packages/opentelemetry/exporter/otlp/y.py:5) 10\n"
    )
    stacks = parse(raw)
    assert [s.thread for s in stacks] == ["MainThread", "OtelBatchSpanRecordProcessor"]
    summary = summarize(raw, seconds=1.0)
    assert summary["samples"] == 40
    assert dict(summary["threads"]) == {"MainThread": 75.0, "OtelBatchSpanRecordProcessor": 25.0}
    assert dict(summary["areas"]) == {"OTLP exporters (encoding, HTTP)": 100.0}
    assert dict(summary["inclusive_wabot"])["_enqueue (wabot_ingest/webhook.py)"] == 75.0
    assert "main (wabot_ingest/main.py)" not in dict(summary["inclusive"])  # entry frame


def _spread(x: float) -> dict[str, Any]:
    return {"median": x, "min": x * 0.9, "max": x * 1.1, "values": [x]}


def test_report_shows_every_target_with_its_figure() -> None:
    results: dict[str, Any] = {
        "machine": {
            "cpu_model": "cpu",
            "cpus_usable": 2,
            "memory_gib": 8,
            "kernel": "6",
            "python": "3.11",
            "load_average_at_start": (1.0, 1.0, 1.0),
        },
        "config": {"name": "quick"},
        "started": "now",
        "ingest": {
            "ratio_ours_over_stock": 1.1,
            "ratio_ours_over_stock_per_round": _spread(1.1),
            "ratio_contrib_over_stock": 0.4,
            "cpu_ratio_ours_over_stock": 1.2,
            "rps": {k: _spread(1000) for k in (INGEST_OURS, INGEST_STOCK, INGEST_CONTRIB)},
            "cpu_us_per_request": {
                k: _spread(500) for k in (INGEST_OURS, INGEST_STOCK, INGEST_CONTRIB)
            },
        },
        "drain": {
            "messages": 100,
            "chats": 10,
            "ratio_ours_over_celery": 2.5,
            "ratio_ours_over_celery_per_round": _spread(2.5),
            "ratio_one_chat_over_many": 0.5,
            "ratio_ours_over_arq": 1.5,
            "cpu_ratio_ours_over_celery": 3.0,
            "per_s": {k: _spread(100) for k in (DRAIN_MANY, DRAIN_ONE, DRAIN_CELERY, DRAIN_ARQ)},
            "cpu_ms_per_message": {
                k: _spread(1) for k in (DRAIN_MANY, DRAIN_ONE, DRAIN_CELERY, DRAIN_ARQ)
            },
        },
        "latency": {
            "200": {"p50_ms": 5, "p90_ms": 9, "p99_ms": 25.0, "max_ms": 30, "rows": 10},
            "50": {"p50_ms": 2, "p90_ms": 4, "p99_ms": 8.0, "max_ms": 9, "rows": 10},
        },
        "memory": {
            "messages": 1000,
            "rss_mb_after": {"ingest": 90.0, "worker": 130.0},
            "peak_rss_mb": {"ingest": 95.0, "worker": 131.0},
            "end_to_end_msgs_per_s": 500.0,
            "ingest_rps": 900.0,
        },
        "telemetry": {
            "processes": [{}],
            "expected_spans": 10,
            "received_expected_kinds": 10,
            "received_spans_all_kinds": 30,
            "lost_spans": 0,
            "expected_logs": 5,
            "received_logs": 4,
            "lost_logs": 1,
        },
    }
    rows = {row["target"][:3]: row for row in targets(results)}
    assert rows["(a)"]["verdict"] == "met"
    assert rows["(a)"]["measured"].startswith("1.10x")
    assert rows["(b)"]["verdict"] == "MISSED by 50 %"
    assert [r["verdict"] for r in targets(results) if r["target"].startswith("(c)")] == [
        "MISSED by 5.0 ms",
        "met",
    ]
    assert rows["(d)"]["verdict"] == "MISSED by 10 MB"
    assert rows["(e)"]["verdict"].startswith("MISSED")
    assert "1 log records lost" in rows["(e)"]["verdict"]
    table = markdown(results)
    assert table.count("\n| (") == 6
    assert "cost of ordering" in table
