"""A real browser for UI tests: Debian's headless Chromium, driven over the
Chrome DevTools protocol (a websocket; no Playwright or puppeteer, whose
browser downloads cannot work here).

:class:`Browser` starts Chromium through the harness' :class:`Process` (so it
never outlives a test), with the flags this machine needs (no sandbox as
root, no background networking, no first-run work); :class:`Page` navigates,
evaluates JavaScript, and takes PNG screenshots. :func:`open_trace` is the
check both UI tests make: a message's trace page in the Jaeger UI shows the
spans of ingest and worker, and the screenshot is kept.

Only 127.0.0.1 is ever loaded.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from websockets.sync.client import ClientConnection, connect

from tests.support.stack.env import clean_env
from tests.support.stack.net import free_port, http_json, wait_for
from tests.support.stack.paths import REPO, chromium_binary
from tests.support.stack.process import Process

# Where the UI tests copy their screenshots (besides their own tmp dirs), so
# a person or CI can look at them after the run.
ARTIFACTS_DIR = Path(os.environ.get("WABOT_ARTIFACTS_DIR") or REPO / ".artifacts")
WINDOW = (1600, 1000)
CALL_TIMEOUT = 30.0  # seconds for one DevTools command


class Browser:
    """Headless Chromium with a fresh profile, its DevTools on a free local port."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.profile = Path(tempfile.mkdtemp(prefix="wabot-chromium-"))
        self.process = Process(
            "chromium",
            [
                chromium_binary(),
                "--headless",
                # Root (CI) cannot use Chromium's sandbox.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                # This machine reaches no network but 127.0.0.1: without these,
                # Chromium keeps trying Google's hosts (update checks, sync,
                # field trials, QUIC probes).
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-quic",
                "--disable-extensions",
                "--no-first-run",
                "--no-default-browser-check",
                "--mute-audio",
                f"--user-data-dir={self.profile}",
                f"--window-size={WINDOW[0]},{WINDOW[1]}",
                "--remote-debugging-address=127.0.0.1",
                f"--remote-debugging-port={self.port}",
                "about:blank",
            ],
            env=clean_env(),
            log_path=log_path,
            ready=f"http://127.0.0.1:{self.port}/json/version",
            ready_timeout=60,
            ready_interval=0.2,
        )

    def __enter__(self) -> Self:
        self.process.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self.process.stop()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)

    @contextmanager
    def page(self) -> Iterator[Page]:
        """The browser's first tab (about:blank at start), its viewport exactly
        :data:`WINDOW` (headless Chromium otherwise keeps room for a toolbar)."""
        targets = http_json(f"http://127.0.0.1:{self.port}/json/list")
        [tab] = [t for t in targets if t["type"] == "page"][:1]
        with connect(tab["webSocketDebuggerUrl"], max_size=None, open_timeout=10) as ws:
            page = Page(ws)
            page.call(
                "Emulation.setDeviceMetricsOverride",
                width=WINDOW[0],
                height=WINDOW[1],
                deviceScaleFactor=1,
                mobile=False,
            )
            yield page


class Page:
    """One tab, over its DevTools websocket."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command; its result (events arriving meanwhile are skipped)."""
        call_id = next(self.ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:  # ends with our answer, or recv's timeout
            message = json.loads(self.ws.recv(timeout=CALL_TIMEOUT))
            if message.get("id") != call_id:
                continue
            if "error" in message:
                raise AssertionError(f"DevTools {method}: {message['error']}")
            result: dict[str, Any] = message.get("result", {})
            return result

    def goto(self, url: str) -> None:
        assert url.startswith("http://127.0.0.1:"), f"only local pages: {url}"
        answer = self.call("Page.navigate", url=url)
        assert "errorText" not in answer, f"{url}: {answer['errorText']}"

    def evaluate(self, expression: str) -> Any:
        answer = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in answer:
            raise AssertionError(f"{expression}: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    def text(self) -> str:
        """What the page shows as text (document.body.innerText)."""
        return str(self.evaluate("document.body ? document.body.innerText : ''") or "")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


def open_trace(
    jaeger_url: str,
    trace_id: str,
    span_names: dict[str, set[str]],
    screenshot: Path,
    log_path: Path,
    timeout: float = 60,
) -> str:
    """Open ``<jaeger_url>/trace/<trace_id>`` in headless Chromium until the page
    shows every service of ``span_names`` and each of its span names; take a
    screenshot to ``screenshot`` and a copy in :data:`ARTIFACTS_DIR`. Returns
    the page's text."""
    wanted = set(span_names) | {name for names in span_names.values() for name in names}
    wanted.add(trace_id[:7])  # the UI titles a trace with the first 7 hex digits of its id
    seen = ""

    def shown(page: Page) -> str:
        nonlocal seen
        seen = page.text()
        return seen if all(word in seen for word in wanted) else ""

    with Browser(log_path) as browser, browser.page() as page:
        page.goto(f"{jaeger_url}/trace/{trace_id}")
        try:
            text = wait_for(
                lambda: shown(page),
                timeout=timeout,
                what=f"the Jaeger UI to show trace {trace_id}",
                interval=0.5,
            )
        except AssertionError as exc:
            page.screenshot(screenshot)
            missing = sorted(word for word in wanted if word not in seen)
            raise AssertionError(
                f"{exc}; missing {missing} (screenshot {screenshot}); page text:\n{seen[:2000]}"
            ) from None
        page.screenshot(screenshot)
    width, height = png_size(screenshot)
    assert (width, height) == WINDOW, f"screenshot is {width}x{height}, window {WINDOW}"
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(screenshot, ARTIFACTS_DIR / screenshot.name)
    return text
