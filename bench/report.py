"""The targets of issue 11, each with its measured ratio or figure, printed and
as a Markdown table (the README's benchmark section is pasted from it)."""

from __future__ import annotations

import math
from typing import Any

from bench.phases import (
    DRAIN_ARQ,
    DRAIN_CELERY,
    DRAIN_MANY,
    DRAIN_ONE,
    INGEST_CONTRIB,
    INGEST_OURS,
    INGEST_STOCK,
)

RSS_LIMIT_MB = 120.0


def _n(x: float, digits: int = 0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:,.{digits}f}"


def _range(s: dict[str, Any], digits: int = 0, unit: str = "") -> str:
    return f"{_n(s['median'], digits)}{unit} ({_n(s['min'], digits)}-{_n(s['max'], digits)})"


def _verdict(ok: bool | None, miss: str = "") -> str:
    if ok is None:
        return "not measured"
    return "met" if ok else f"MISSED{(' ' + miss) if miss else ''}"


def targets(results: dict[str, Any]) -> list[dict[str, str]]:
    """One row per target: what, measured, target, verdict, peers/details."""
    rows: list[dict[str, str]] = []
    a = results.get("ingest")
    if a:
        ratio = a["ratio_ours_over_stock"]
        rps = a["rps"]
        cpu = a["cpu_us_per_request"]
        rows.append(
            {
                "target": "(a) ingest, every request traced, metrics and logs exported "
                "/ stock FastAPI + XADD without telemetry",
                "measured": f"{ratio:.2f}x (per round "
                f"{_range(a['ratio_ours_over_stock_per_round'], 2)})",
                "goal": "≥ 1.0x",
                "verdict": _verdict(ratio >= 1.0, f"by {(1 - ratio) * 100:.0f} %"),
                "details": (
                    f"by CPU per request {a.get('cpu_ratio_ours_over_stock', math.nan):.2f}x; "
                    f"wabot ingest {_range(rps[INGEST_OURS])} req/s, "
                    f"{_n(cpu[INGEST_OURS]['median'])} µs CPU/req; "
                    f"stock {_range(rps[INGEST_STOCK])} req/s, "
                    f"{_n(cpu[INGEST_STOCK]['median'])} µs CPU/req; "
                    f"contrib OTel {_range(rps[INGEST_CONTRIB])} req/s "
                    f"({a['ratio_contrib_over_stock']:.2f}x stock), "
                    f"{_n(cpu[INGEST_CONTRIB]['median'])} µs CPU/req"
                ),
            }
        )
    b = results.get("drain")
    if b:
        ratio = b["ratio_ours_over_celery"]
        rate = b["per_s"]
        cpu = b["cpu_ms_per_message"]
        incomplete = ", ".join(
            f"{v} {n} of {len(b['rounds'][v])}" for v, n in b.get("incomplete", {}).items() if n
        )
        if incomplete:
            incomplete = f"; INCOMPLETE drains (stalled or timed out): {incomplete}"
        arq = (
            f"; arq tuned {_range(rate[DRAIN_ARQ])} msg/s "
            f"(wabot/arq {b['ratio_ours_over_arq']:.2f}x)"
            if DRAIN_ARQ in rate
            else ""
        )
        rows.append(
            {
                "target": f"(b) worker draining {b['messages']:,} preloaded messages into "
                "PostgreSQL (per-message spans, content sealed) / Celery 5 solo + OTel",
                "measured": f"{ratio:.2f}x (per round "
                f"{_range(b['ratio_ours_over_celery_per_round'], 2)})",
                "goal": "≥ 5x",
                "verdict": _verdict(ratio >= 5.0, f"by {(1 - ratio / 5) * 100:.0f} %"),
                "details": (
                    f"by CPU per message {b.get('cpu_ratio_ours_over_celery', math.nan):.2f}x; "
                    f"wabot worker {_range(rate[DRAIN_MANY])} msg/s over {b['chats']} chats, "
                    f"{_n(cpu[DRAIN_MANY]['median'], 2)} ms CPU/msg; "
                    f"Celery {_range(rate[DRAIN_CELERY])} msg/s, "
                    f"{_n(cpu[DRAIN_CELERY]['median'], 2)} ms CPU/msg" + arq + incomplete
                ),
            }
        )
        rows.append(
            {
                "target": "cost of ordering: worker drain, all messages in one chat "
                "/ spread over many",
                "measured": f"{b['ratio_one_chat_over_many']:.2f}x",
                "goal": "(reported)",
                "verdict": "",
                "details": f"one chat {_range(rate[DRAIN_ONE])} msg/s, "
                f"{_n(cpu[DRAIN_ONE]['median'], 2)} ms CPU/msg",
            }
        )
    c = results.get("latency")
    if c:
        for key, limit in (("200", 20.0), ("50", 10.0)):
            if key not in c:
                continue
            res = c[key]
            p99 = res["p99_ms"]
            rows.append(
                {
                    "target": f"(c) end-to-end p99, accepted → committed, at {key} msg/s offered",
                    "measured": f"{_n(p99, 1)} ms",
                    "goal": f"≤ {limit:g} ms",
                    "verdict": _verdict(
                        None if math.isnan(p99) else p99 <= limit, f"by {_n(p99 - limit, 1)} ms"
                    ),
                    "details": f"p50 {_n(res['p50_ms'], 1)} ms, p90 {_n(res['p90_ms'], 1)} ms, "
                    f"max {_n(res['max_ms'], 1)} ms, {res['rows']:,} messages",
                }
            )
    d = results.get("memory")
    if d:
        after = d["rss_mb_after"]
        worst = max(after.values())
        rows.append(
            {
                "target": f"(d) RSS per service after {d['messages']:,} messages",
                "measured": f"ingest {after['ingest']:.0f} MB, worker {after['worker']:.0f} MB",
                "goal": f"≤ {RSS_LIMIT_MB:.0f} MB",
                "verdict": _verdict(worst <= RSS_LIMIT_MB, f"by {worst - RSS_LIMIT_MB:.0f} MB"),
                "details": f"peak ingest {d['peak_rss_mb']['ingest']:.0f} MB, "
                f"worker {d['peak_rss_mb']['worker']:.0f} MB; pipeline "
                f"{_n(d['end_to_end_msgs_per_s'])} msg/s end to end "
                f"(ingest {_n(d['ingest_rps'])} req/s)",
            }
        )
    e = results.get("telemetry")
    if e and e["processes"]:
        lost = e["lost_spans"] + e["lost_logs"]
        rows.append(
            {
                "target": "(e) telemetry received = expected (spans and log records)",
                "measured": f"spans {e['received_expected_kinds']:,}/{e['expected_spans']:,}, "
                f"log records {e['received_logs']:,}/{e['expected_logs']:,}",
                "goal": "0 lost",
                "verdict": _verdict(
                    lost == 0, f"({e['lost_spans']:,} spans, {e['lost_logs']:,} log records lost)"
                ),
                "details": f"{len(e['processes'])} processes accounted; "
                f"{e['received_spans_all_kinds']:,} spans of all kinds arrived",
            }
        )
    return rows


def machine_line(m: dict[str, Any]) -> str:
    commit = m.get("postgres_commit_ms")
    return (
        f"{m['cpu_model']}, {m['cpus_usable']} cores usable, {m['memory_gib']} GiB, "
        f"Linux {m['kernel']}, Python {m['python']}, load average "
        f"{m['load_average_at_start'][0]:.1f} at start"
        + (f", {m['load_average_at_end'][0]:.1f} at end" if "load_average_at_end" in m else "")
        + (f"; a PostgreSQL commit takes {commit['median']:.1f} ms" if commit else "")
    )


def busy(results: dict[str, Any]) -> str:
    """A warning when other work loaded the machine during the run."""
    loads = [
        r["load_average"]
        for phase in ("ingest", "drain")
        for rounds in results.get(phase, {}).get("rounds", {}).values()
        for r in rounds
        if "load_average" in r
    ]
    cores = results["machine"].get("cpus_usable") or 1
    if not loads or max(loads) <= cores:
        return ""
    return (
        f"the machine was busy: load average {min(loads):.1f}-{max(loads):.1f} during the "
        f"rounds on {cores} cores; the throughput figures are noisy, the ratios of rounds "
        f"side by side and the CPU per message less so"
    )


def print_report(results: dict[str, Any]) -> None:
    print()
    print(f"machine: {machine_line(results['machine'])}")
    if busy(results):
        print(f"warning: {busy(results)}")
    code = results.get("code", {})
    dirty = " + uncommitted changes" if code.get("uncommitted") else ""
    print(
        f"run: {results['config']['name']} ({results['started']}, {results['seconds']:.0f} s), "
        f"code {code.get('commit', '?')}{dirty}"
    )
    for row in targets(results):
        print()
        verdict = f"  [{row['verdict']}]" if row["verdict"] else ""
        print(f"{row['target']}")
        print(f"    {row['measured']}   target {row['goal']}{verdict}")
        print(f"    {row['details']}")


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"Machine: {machine_line(results['machine'])}; run `{results['config']['name']}` "
        f"of {results['started']}, code {results.get('code', {}).get('commit', '?')}"
        + (" + uncommitted changes" if results.get("code", {}).get("uncommitted") else "")
        + "."
        + (f" Note: {busy(results)}." if busy(results) else ""),
        "",
        "| target | measured (median, range over rounds) | goal | |",
        "| --- | --- | --- | --- |",
    ]
    for row in targets(results):
        cells = (row["target"], f"{row['measured']}; {row['details']}", row["goal"], row["verdict"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """``python -m bench.report bench/results/bench-<time>.json``: the report and
    the Markdown table of an earlier run, again."""
    import json
    import sys
    from pathlib import Path

    results = json.loads(Path(sys.argv[1]).read_text())
    print_report(results)
    print()
    print(markdown(results))


if __name__ == "__main__":
    main()
