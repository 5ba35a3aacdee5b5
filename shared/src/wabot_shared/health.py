"""Health checks that check something real, reported as JSON.

A check is an async callable that raises (or returns a message) when its
dependency is unhealthy; each one runs with its own timeout so one hung
dependency cannot hide the others.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

Check = Callable[[], Awaitable[object]]


async def _run_one(check: Check, timeout: float) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        detail = await asyncio.wait_for(check(), timeout)
    except TimeoutError:
        return {"status": "fail", "error": f"timed out after {timeout:.1f}s"}
    except Exception as exc:
        # The type is enough to act on, and cannot leak a secret or payload.
        return {"status": "fail", "error": type(exc).__name__}
    result: dict[str, Any] = {
        "status": "pass",
        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
    }
    if isinstance(detail, Mapping):
        result.update(detail)
        if detail.get("status") == "fail":
            result["status"] = "fail"
    return result


async def run_checks(
    checks: Mapping[str, Check], timeout: float = 2.0
) -> tuple[bool, dict[str, Any]]:
    """Run all checks concurrently; returns (healthy, JSON body)."""
    names = list(checks)
    results = await asyncio.gather(*(_run_one(checks[n], timeout) for n in names))
    body = dict(zip(names, results, strict=True))
    healthy = all(r["status"] == "pass" for r in results)
    return healthy, {"status": "pass" if healthy else "fail", "checks": body}
