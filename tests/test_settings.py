"""Start-up configuration: missing or unsafe settings fail fast with one clear line."""

from __future__ import annotations

import subprocess

import pytest

from tests.support.stack.env import CONTENT_KEYS
from tests.support.stack.services import run_cli

REQUIRED = ("REDIS_URL", "DATABASE_URL", "WEBHOOK_SECRET", "MESSAGE_ENCRYPTION_KEYS")


def run(
    program: str, env: dict[str, str], *, keys: bool = True
) -> subprocess.CompletedProcess[str]:
    """``program`` with only ``env`` of the required settings (and the content
    keys unless ``keys`` is False)."""
    extra = {"MESSAGE_ENCRYPTION_KEYS": CONTENT_KEYS} if keys else {}
    return run_cli(program, env={**extra, **env}, drop=REQUIRED, timeout=60)


@pytest.mark.parametrize(
    ("program", "env", "names"),
    [
        ("ingest", {}, ["REDIS_URL"]),
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


def test_ingest_without_any_webhook_authentication_fails_naming_the_setting() -> None:
    result = run("ingest", {"REDIS_URL": "redis://127.0.0.1:1/0"})
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("ingest: configuration error: invalid setting(s)")
    assert "no webhook authentication configured: set WEBHOOK_SECRET" in line


@pytest.mark.parametrize("program", ["ingest", "worker"])
def test_without_content_keys_outside_development_fails_naming_the_setting(program: str) -> None:
    env = {
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "DATABASE_URL": "postgresql://127.0.0.1:1/x",
        "WEBHOOK_SECRET": "s" * 32,
        "APP_ENV": "production",
    }
    result = run(program, env, keys=False)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"{program}: configuration error: invalid setting(s)"), line
    assert "MESSAGE_ENCRYPTION_KEYS is required outside development" in line


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WEBHOOK_AUTH_MODES": "jwt"}, "WEBHOOK_AUTH_MODES includes jwt but WEBHOOK_JWT_KEY"),
        ({"WEBHOOK_AUTH_MODES": "header,carrier-pigeon"}, "WEBHOOK_AUTH_MODES"),
    ],
)
def test_auth_modes_must_match_configured_secrets(env: dict[str, str], message: str) -> None:
    result = run(
        "ingest",
        {"REDIS_URL": "redis://127.0.0.1:1/0", "WEBHOOK_SECRET": "s" * 32, **env},
    )
    assert result.returncode == 2
    assert message in result.stderr


@pytest.mark.parametrize("secret", ["changeme", "CHANGEME", "shortvalue42"])
def test_placeholder_secrets_are_refused_outside_development(secret: str) -> None:
    result = run("ingest", {"REDIS_URL": "redis://127.0.0.1:1/0", "WEBHOOK_SECRET": secret})
    assert result.returncode == 2
    assert "WEBHOOK_SECRET" in result.stderr
    assert "placeholder" in result.stderr
    assert secret not in result.stderr.replace("WEBHOOK_SECRET", "")  # never echo the value


@pytest.mark.parametrize("app_env", ["production", "prod", "staging", ""])
def test_fault_injection_is_refused_outside_test_and_development(app_env: str) -> None:
    result = run(
        "worker",
        {
            "APP_ENV": app_env,
            "REDIS_URL": "redis://127.0.0.1:1/0",
            "DATABASE_URL": "postgresql://x@127.0.0.1:1/x",
            "FAULT_INJECTION": "crash_before_ack",
        },
    )
    assert result.returncode == 2
    assert "FAULT_INJECTION" in result.stderr
