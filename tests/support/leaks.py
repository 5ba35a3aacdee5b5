"""The privacy scan: every exported OTLP byte and every log line, searched for
the names, texts, phone numbers and secrets a test sent."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from tests.support.stack.pipeline import Stack

SENSITIVE_KEYS = {"pushName", "conversation", "caption", "profileName", "apikey", "text"}
JID = re.compile(r"^(\d{6,})(?:[-:]\d+)?@")


def sensitive_values(node: Any, out: set[str] | None = None) -> set[str]:
    """Names, texts, keys and every phone number found anywhere in a body."""
    found = set() if out is None else out
    if isinstance(node, dict):
        for key, value in node.items():
            if key in SENSITIVE_KEYS and isinstance(value, str) and len(value) >= 4:
                found.add(value)
            sensitive_values(value, found)
    elif isinstance(node, list):
        for value in node:
            sensitive_values(value, found)
    elif isinstance(node, str):
        match = JID.match(node)
        if match:
            found.add(match.group(1))  # the bare phone number covers the JID too
    return found


def assert_no_leaks(stack: Stack, needles: Iterable[str]) -> None:
    """Stop the services (they flush), then search their telemetry and stdout."""
    wanted = {n for n in needles if n}
    assert wanted, "the scan must look for something"
    stack.stop_all()  # flushes telemetry as the last step of shutdown
    assert stack.sink is not None, "the scan needs the OTLP sink"
    exported = b"".join(stack.sink.raw)
    assert exported, "nothing was exported"
    logs = "\n".join(stack.all_logs())
    assert logs, "nothing was logged"
    leaks = [n for n in wanted if n.encode() in exported]
    assert not leaks, f"exported telemetry contains sensitive values: {leaks}"
    leaks = [n for n in wanted if n in logs or n.encode("unicode_escape").decode() in logs]
    assert not leaks, f"log lines contain sensitive values: {leaks}"
