"""An OTLP endpoint that refuses connections, or accepts them and never answers,
costs the webhooks nothing: same success, bounded latency and memory, and a
shutdown still within its budget."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tests.support.load import EvolutionLoad, percentile
from tests.support.oracle import Oracle
from tests.support.stack.net import BlackHole, closed_port, wait_for
from tests.support.stack.pipeline import Stack
from tests.support.stack.services import rss_kb, stop_all_timed

BUDGET_S = 5.0  # SHUTDOWN_TIMEOUT
# The stated bounds, relative to the baseline measured in the same test.
P99_FACTOR, P99_SLACK_S = 3.0, 0.050
RSS_GROWTH_LIMIT_KB = 40 * 1024  # per process, over one load phase
WARM_UP = 20  # first requests of a fresh process, left out of the latency figures


@dataclass
class Phase:
    name: str
    accepted: int
    sent: int
    p99_s: float
    rss_growth_kb: dict[str, int]
    exits: dict[str, tuple[int, float]]

    def line(self) -> str:
        exits = {k: (c, round(t, 2)) for k, (c, t) in self.exits.items()}
        return (
            f"{self.name}: accepted {self.accepted}/{self.sent}, p99 {self.p99_s * 1000:.1f} ms, "
            f"RSS growth {self.rss_growth_kb} kB, exits {exits}"
        )


def test_otlp_endpoint_down_or_black_holed(
    stack: Stack,
    make_load: Callable[..., EvolutionLoad],
    oracle: Oracle,
    black_hole: BlackHole,
) -> None:
    endpoints = {
        "baseline": stack.sink.endpoint,
        "refused": f"http://127.0.0.1:{closed_port()}",
        "black-holed": black_hole.endpoint,
    }
    phases: dict[str, Phase] = {}
    loads: list[EvolutionLoad] = []
    for name, endpoint in endpoints.items():
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "SHUTDOWN_TIMEOUT": str(BUDGET_S)}
        stack.env.update(env)  # for the services of this phase
        services = {"ingest": stack.start_ingest(), "worker": stack.start_worker()}
        load = make_load(rate=40, count=160).start()
        loads.append(load)
        # RSS once the load is flowing (the first requests warm caches up).
        wait_for(
            lambda load=load: load.accepted_count() >= WARM_UP,
            timeout=15,
            what=f"{WARM_UP} webhooks accepted",
        )
        rss_before = {k: rss_kb(svc) for k, svc in services.items()}
        load.finish(timeout=30)
        oracle.check(*loads)
        rss_growth = {k: rss_kb(svc) - rss_before[k] for k, svc in services.items()}
        exits = dict(zip(services, stop_all_timed(list(services.values()), BUDGET_S), strict=True))
        phases[name] = Phase(
            name,
            accepted=load.accepted_count(),
            sent=len(load.sent_ids),
            p99_s=percentile(load.latencies(skip_first=WARM_UP), 99),
            rss_growth_kb=rss_growth,
            exits=exits,
        )
        print(f"\n{phases[name].line()}")

    baseline = phases["baseline"]
    bound = P99_FACTOR * baseline.p99_s + P99_SLACK_S
    for phase in phases.values():
        assert phase.accepted == phase.sent, phase.line()
        for svc_name, (code, took) in phase.exits.items():
            assert code == 0, f"{phase.name}: {svc_name} exit code {code}"
            assert took <= BUDGET_S, f"{phase.name}: {svc_name} took {took:.2f}s > {BUDGET_S}s"
        for svc_name, growth in phase.rss_growth_kb.items():
            assert growth <= RSS_GROWTH_LIMIT_KB, f"{phase.name}: {svc_name} grew {growth} kB"
        assert phase.p99_s <= bound, (
            f"{phase.name}: p99 {phase.p99_s * 1000:.1f} ms > {bound * 1000:.1f} ms "
            f"(3 x baseline {baseline.p99_s * 1000:.1f} ms + 50 ms)"
        )
