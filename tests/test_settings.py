"""Start-up configuration: missing or unsafe settings fail fast with one clear line."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.support.procs import BIN, REPO


def run(program: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("OTEL_") and k not in {"REDIS_URL", "DATABASE_URL", "WEBHOOK_SECRET"}
    }
    return subprocess.run(
        [str(BIN / program)],
        env={**base, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("program", "env", "names"),
    [
        ("ingest", {}, ["REDIS_URL", "WEBHOOK_SECRET"]),
        ("ingest", {"REDIS_URL": "redis://127.0.0.1:1/0"}, ["WEBHOOK_SECRET"]),
        ("worker", {"REDIS_URL": "redis://127.0.0.1:1/0"}, ["DATABASE_URL"]),
        ("migrate", {}, ["DATABASE_URL"]),
    ],
)
def test_missing_required_setting_fails_with_one_line_naming_it(
    program: str, env: dict[str, str], names: list[str]
) -> None:
    result = run(program, env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{program}: configuration error: missing required setting(s)")
    for name in names:
        assert name in lines[0]


@pytest.mark.parametrize("secret", ["changeme", "CHANGEME", "shortvalue42"])
def test_placeholder_secrets_are_refused_outside_development(secret: str) -> None:
    result = run("ingest", {"REDIS_URL": "redis://127.0.0.1:1/0", "WEBHOOK_SECRET": secret})
    assert result.returncode == 2
    assert "WEBHOOK_SECRET" in result.stderr
    assert "placeholder" in result.stderr
    assert secret not in result.stderr.replace("WEBHOOK_SECRET", "")  # never echo the value


def test_fault_injection_is_refused_in_production() -> None:
    result = run(
        "worker",
        {
            "REDIS_URL": "redis://127.0.0.1:1/0",
            "DATABASE_URL": "postgresql://x@127.0.0.1:1/x",
            "FAULT_INJECTION": "crash_before_ack",
        },
    )
    assert result.returncode == 2
    assert "FAULT_INJECTION" in result.stderr
