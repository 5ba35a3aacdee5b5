"""The deploy harness itself: the HAProxy config it renders is one haproxy
accepts and binds only 127.0.0.1, the canary weight gives the share asked,
and the client figures count what the load recorded (tests/support/deploys.py)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.support.deploys import canary_weight, client_figures
from tests.support.load import Delivery, EvolutionLoad
from tests.support.stack.proxy import HealthCheck, Slot, haproxy_binary, render_haproxy_config


def test_rendered_haproxy_config_is_valid_and_local(tmp_path: Path) -> None:
    text = render_haproxy_config(
        frontend_port=18080,
        admin_port=18081,
        slots=[Slot("blue-1", 18082), Slot("green-1")],
        check=HealthCheck(path="/ready"),
    )
    config = tmp_path / "haproxy.cfg"
    config.write_text(text)
    result = subprocess.run(
        [haproxy_binary(), "-c", "-f", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    addresses = re.findall(r"(?:bind|server \S+|ipv4@)\s*(\d+\.\d+\.\d+\.\d+):\d+", text)
    assert len(addresses) == 4
    assert set(addresses) == {"127.0.0.1"}
    assert "option httpchk GET /ready" in text
    assert re.search(r"server green-1 127\.0\.0\.1:\d+ check weight \d+ disabled", text)


def test_canary_weight_gives_the_share_asked() -> None:
    for live in ([100, 100], [100], [45, 45, 10]):
        weight = canary_weight(live, 10)
        assert abs(weight / (weight + sum(live)) - 0.10) < 0.01, (live, weight)


def test_client_figures_count_the_attempts_in_the_window() -> None:
    load = EvolutionLoad("http://127.0.0.1:9/", {}, secret="x", count=0)
    base = 1000.0
    load.deliveries = {
        "a": Delivery(
            "a",
            attempts=2,
            outcomes=["503", "202"],
            accepted=True,
            latency_s=0.010,
            attempt_at=[base + 1.0, base + 1.2],
            accepted_at=base + 1.21,
        ),
        "b": Delivery(
            "b",
            attempts=1,
            outcomes=["202"],
            accepted=True,
            latency_s=0.020,
            attempt_at=[base + 3.0],
            accepted_at=base + 3.02,
        ),
        "outside": Delivery(
            "outside", attempts=1, outcomes=["ConnectError"], attempt_at=[base + 9.0]
        ),
    }
    figures = client_figures(load, base, base + 5.0)
    assert figures.attempts == 3
    assert figures.accepted == 2
    assert figures.non_2xx == 1
    assert figures.non_2xx_by_outcome == {"503": 1}
    assert figures.retries == 1
    # Edges count: the last acceptance (3.02) to the window's end (5.0).
    assert abs(figures.longest_gap_s - 1.98) < 1e-6
    assert figures.p99_latency_ms == 20.0
    assert figures.p99_delivery_ms == 210.0
