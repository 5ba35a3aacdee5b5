"""Every ops file starts with a comment saying what it is for (after the
shebang, for scripts). The dashboards are JSON, which has no comments: their
`description` is checked in tests/observability/test_ops_configs.py, and
grafana/generate.py says in its docstring that it generates them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from tests.support.stack.paths import REPO

CONFIG_DIRS = ("otel-collector", "jaeger", "prometheus", "grafana/provisioning", "fly")
ROOT_FILES = (
    "docker-compose.yml",
    "Dockerfile",
    ".dockerignore",
    "versions.env",
    ".shellcheckrc",
    "Makefile",
    "tests/image/containers.conf",  # podman's, for the image test
)
SCRIPT_DIRS = ("scripts", ".ci")


def ops_files() -> list[Path]:
    files = [REPO / name for name in ROOT_FILES]
    for directory in CONFIG_DIRS:
        files += [
            p
            for p in sorted((REPO / directory).rglob("*"))
            if p.suffix in {".yml", ".yaml", ".toml"}
        ]
    return files


def scripts() -> list[Path]:
    return [
        p
        for directory in SCRIPT_DIRS
        for p in sorted((REPO / directory).iterdir())
        if p.is_file() and p.read_text().startswith("#!")
    ]


def test_the_lists_find_the_files() -> None:
    names = {str(p.relative_to(REPO)) for p in ops_files() + scripts()}
    assert {
        "prometheus/alerts.yml",
        "grafana/provisioning/datasources/datasources.yaml",
        "fly/worker.toml",
        "scripts/bootstrap.sh",
        ".ci/run",
    } <= names


@pytest.mark.parametrize("path", ops_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_ops_file_starts_with_a_header_comment(path: Path) -> None:
    text = path.read_text()
    assert text.startswith("# "), f"{path.name} must start with a `#` comment saying what it is for"
    if path.suffix in {".yml", ".yaml"}:
        yaml.safe_load(text)


@pytest.mark.parametrize("path", scripts(), ids=lambda p: str(p.relative_to(REPO)))
def test_script_says_what_it_is_for_after_its_shebang(path: Path) -> None:
    lines = path.read_text().splitlines()
    assert lines[0] in {"#!/usr/bin/env bash", "#!/bin/sh", "#!/usr/bin/env sh"}, lines[0]
    assert lines[1].startswith("# "), f"{path.name}: line 2 must say what the script is for"


def test_dashboard_generator_says_what_it_is() -> None:
    doc = ast.get_docstring(ast.parse((REPO / "grafana" / "generate.py").read_text()))
    assert doc, "grafana/generate.py needs a docstring"
    assert "grafana/dashboards/" in doc.splitlines()[0]
