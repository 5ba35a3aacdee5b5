"""wrk as the webhook sender: one thread, keep-alive connections, the Evolution
sample with a unique message id per request, spread over ``chats`` chats.

With ``limit``, that many webhooks are accepted (2xx) and wrk stops (requests
past the limit go to a path that enqueues nothing); otherwise wrk runs for
its duration. wrk builds one request at start-up that it never sends (wrk.c,
``script_verify_request`` on the first thread's script), hence the cut-off
at ``limit + 1`` built requests: exactly ``limit`` are sent by wrk 4.x, and
never more than ``limit + 1``. Callers count what arrived (the stream) anyway.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.peers.payloads import CHAT_BASE, chat_jid

WEBHOOK_PATH = "/webhooks/evolution"
_SCRIPT = """
local template = [==[{template}]==]
local headers = {{["Content-Type"] = "application/json", ["X-Webhook-Secret"] = "{secret}"}}
local limit = {limit}
local chats = {chats}
local sent = 0
local accepted = 0
request = function()
  sent = sent + 1
  if limit > 0 and sent > limit + 1 then
    return wrk.format("GET", "/bench-limit-reached")
  end
  local id = string.format("W{prefix}%09d", sent)
  local chat = string.format("%09d", {chat_base} + (sent % chats))
  local body = template:gsub("__ID__", id, 1):gsub("__CHAT__", chat, 1)
  return wrk.format("POST", "{path}", headers, body)
end
"""
_COUNT_ACCEPTED = """
response = function(status, headers, body)
  if status >= 200 and status < 300 then
    accepted = accepted + 1
    if accepted >= limit then wrk.thread:stop() end
  end
end
"""


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def script(
    tmp: Path,
    sample: dict[str, Any],
    secret: str,
    *,
    chats: int = 1000,
    limit: int = 0,
    instance: str | None = None,
) -> Path:
    """A wrk script posting ``sample`` (with a fresh id and a chat per request)."""
    body = json.loads(json.dumps(sample))
    body["data"]["key"]["id"] = "__ID__"
    body["data"]["key"]["remoteJid"] = chat_jid(0).replace(f"{CHAT_BASE}", "__CHAT__", 1)
    if instance is not None:
        body["instance"] = instance
    text = _SCRIPT.format(
        template=json.dumps(body),
        secret=secret,
        limit=limit,
        chats=max(1, chats),
        prefix=uuid.uuid4().hex[:10].upper(),
        chat_base=CHAT_BASE,
        path=WEBHOOK_PATH,
    )
    if limit:
        text += _COUNT_ACCEPTED
    path = tmp / f"wrk-{uuid.uuid4().hex[:8]}.lua"
    path.write_text(text)
    return path


def _ms(out: str, pct: str) -> float:
    m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    if not m:
        return float("nan")
    return float(m[1]) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m[2]]


def run(
    port: int,
    seconds: float,
    connections: int,
    lua: Path,
    *,
    until: Callable[[], bool] | None = None,
) -> WrkResult:
    """Run wrk against 127.0.0.1:``port`` for ``seconds``, or until ``until()``
    is true (then wrk is interrupted, and reports what it did so far)."""
    proc = subprocess.Popen(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "--latency",
            "-s",
            str(lua),
            f"http://127.0.0.1:{port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + seconds + 60
        while until is not None and proc.poll() is None and time.monotonic() < deadline:
            if until():
                proc.send_signal(signal.SIGINT)  # wrk stops and prints its summary
                break
            time.sleep(0.05)  # polling interval, not synchronisation
        out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode not in (0, -signal.SIGINT):
        raise AssertionError(f"wrk exited with {proc.returncode}:\n{out}{err}")
    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    if total is None:
        raise AssertionError(f"unexpected wrk output:\n{out}")
    unit = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[total[3]]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return WrkResult(
        requests=int(total[1]),
        seconds=float(total[2]) * unit,
        rps=float(rps[1]) if rps else 0.0,
        p50_ms=_ms(out, "50"),
        p99_ms=_ms(out, "99"),
        non_2xx=int(non2xx[1]) if non2xx else 0,
        socket_errors=sum(int(x) for x in errors.groups()) if errors else 0,
    )
