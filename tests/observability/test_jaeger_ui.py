"""The real Jaeger UI, natively: a message's trace page, opened in headless
Chromium, shows the spans of both services (ingest's server and send spans,
worker's process and database spans), and the screenshot is kept
(.artifacts/jaeger-trace.png). tests/test_make_run.py makes the same check
against `make run`'s stack.

The UI is jaeger-ui's production build (JAEGER_UI_ASSETS, by default
../shared/jaeger-ui): the Jaeger binary built with `go install` has none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.observability.test_traces import INSERT_SPAN, SERVER_SPAN, wait_whole_trace
from tests.support.browser import open_trace
from tests.support.stack.backend import Jaeger, ObsStack
from tests.support.stack.paths import DEFAULT_JAEGER_UI_ASSETS, MissingTool, jaeger_ui_assets
from tests.support.stack.runconfig import jaeger_line


def trace_span_names(stream: str) -> dict[str, set[str]]:
    """What the trace page must show, by service."""
    return {
        "ingest": {SERVER_SPAN, f"send {stream}"},
        "worker": {f"process {stream}", INSERT_SPAN},
    }


def test_jaeger_ui_shows_a_messages_trace_with_ingest_and_worker_spans(
    obs_stack: ObsStack, samples: dict[str, dict[str, Any]], jaeger: Jaeger, tmp_path: Path
) -> None:
    assert jaeger.ui_assets is not None, (
        f"no Jaeger UI build: set JAEGER_UI_ASSETS or provide {DEFAULT_JAEGER_UI_ASSETS} "
        "(without one the native Jaeger is API-only)"
    )
    obs_stack.start_ingest()
    obs_stack.start_worker()
    trace_id = obs_stack.post_message(samples["messages-upsert-text"])
    obs_stack.wait_rows(1)
    wait_whole_trace(jaeger, trace_id, obs_stack.stream)

    text = open_trace(
        jaeger.query_url,
        trace_id,
        trace_span_names(obs_stack.stream),
        tmp_path / "jaeger-trace.png",
        tmp_path / "chromium.log",
    )
    # The real UI, not the placeholder page of a `go install` build.
    assert "Trace Start" in text, text[:500]


def test_without_a_ui_build_make_run_says_jaeger_is_api_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """JAEGER_UI_ASSETS must hold a build; without any, the banner says the
    native Jaeger answers its API only and where the UI is."""
    monkeypatch.setenv("JAEGER_UI_ASSETS", str(tmp_path))
    with pytest.raises(MissingTool, match=r"holds no index\.html"):
        jaeger_ui_assets()
    (tmp_path / "index.html").write_text("<html></html>")
    assert jaeger_ui_assets() == tmp_path.resolve()
    line = jaeger_line("http://127.0.0.1:16686", None)
    assert "API only" in line
    assert "JAEGER_UI_ASSETS" in line
    assert "compose" in line
    assert "API only" not in jaeger_line("http://127.0.0.1:16686", tmp_path)
