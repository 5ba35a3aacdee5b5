"""The Dockerfile (read with dockerfile-parse) and its build context
(.dockerignore, matched with Docker's own rules from docker-py): pinned bases,
built with ``uv sync --frozen --no-dev`` from the lock file, only existing and
unignored sources copied, a non-root runtime with the migrations, console
scripts that exist in the workspace, no secrets. hadolint lints it in
`make lint`; the image versions are checked in test_versions.py.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from docker.utils.build import PatternMatcher, exclude_paths
from dockerfile_parse import DockerfileParser

from tests.deploy.files import (
    DOCKERFILE,
    DOCKERIGNORE,
    REPO,
    all_env_names,
    assert_console_script,
    image_is_pinned,
    secret_env_names,
    versions,
)
from wabot_shared.settings import MigrateSettings

# The build arguments naming the base images (their defaults: versions.env's).
BASE_ARGS = ("PYTHON_IMAGE", "UV_IMAGE")


@dataclass
class Stage:
    base: str  # with the build arguments' values substituted
    written: str  # as the FROM line has it
    alias: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parser(build_args: dict[str, str] | None = None) -> DockerfileParser:
    return DockerfileParser(path=str(DOCKERFILE), build_args=build_args or {})


def global_args() -> dict[str, str]:
    """The ARGs before the first FROM (the only ones a FROM line may use): name -> default."""
    out: dict[str, str] = {}
    for item in parser().structure:
        if item["instruction"] == "FROM":
            break
        if item["instruction"] == "ARG":
            name, _, default = item["value"].partition("=")
            out[name] = default
    return out


def stages(build_args: dict[str, str] | None = None) -> list[Stage]:
    dockerfile = parser(build_args)
    # The bases as `docker build` resolves them (ARG defaults, or ``build_args``).
    resolved = iter(dockerfile.parent_images)
    out: list[Stage] = []
    for item in dockerfile.structure:
        keyword, value = item["instruction"], item["value"]
        if keyword == "COMMENT" or (keyword == "ARG" and not out):
            continue
        if keyword == "FROM":
            words = [w for w in value.split() if not w.startswith("--platform")]
            alias = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            out.append(Stage(next(resolved), words[0], alias))
        else:
            assert out, f"{keyword} before FROM"
            out[-1].instructions.append((keyword, value))
    return out


def dockerignore_patterns() -> list[str]:
    # Read as `docker build` (docker-py's build()) reads it: comments and blank lines dropped.
    lines = (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` (or a directory above it) out of the context."""
    matcher = PatternMatcher(dockerignore_patterns())
    parts = PurePosixPath(path).parts
    return any(matcher.matches("/".join(parts[: i + 1])) for i in range(len(parts)))


def test_dockerfile_bases_are_pinned_and_the_runtime_is_python_311_slim() -> None:
    assert DOCKERFILE.read_text().startswith("#"), "a header comment says what it is for"
    all_stages = stages()
    aliases: set[str] = set()
    for stage in all_stages:
        if stage.base not in aliases:
            assert image_is_pinned(stage.base), f"FROM {stage.base} is not pinned"
        for keyword, args in stage.instructions:
            match = re.match(r"--from=(\S+)", args)
            if keyword == "COPY" and match and match.group(1) not in aliases:
                assert image_is_pinned(match.group(1)), f"COPY --from={match.group(1)}"
        if stage.alias:
            aliases.add(stage.alias)
    assert len(all_stages) >= 2, "multi-stage"
    assert parser().is_multistage
    assert all_stages[-1].base.startswith("python:3.11-slim")
    assert "$" not in all_stages[-1].base


def test_dockerfile_bases_are_build_arguments_defaulting_to_the_official_images() -> None:
    # A local build (tests/image/) swaps them; by default the official pinned images.
    args = global_args()
    pinned = versions()
    assert {name: args.get(name) for name in BASE_ARGS} == {
        name: pinned[name] for name in BASE_ARGS
    }
    all_stages = stages()
    assert {s.written for s in all_stages} == {f"${{{name}}}" for name in BASE_ARGS}
    assert [s.base for s in all_stages if s.written == "${PYTHON_IMAGE}"] == [
        pinned["PYTHON_IMAGE"]
    ] * 2, "build and runtime stages share the Python base"
    # Overridden, every stage follows (and nothing else pins a base).
    local = {"PYTHON_IMAGE": "localhost/py:test", "UV_IMAGE": "localhost/uv:test"}
    assert [s.base for s in stages(local)] == [local[s.written[2:-1]] for s in all_stages]


def test_dockerfile_builds_from_the_lock_file_with_uv() -> None:
    all_stages = stages()
    instructions = [i for s in all_stages for i in s.instructions]
    syncs = [args for kw, args in instructions if kw == "RUN" and "uv sync" in args]
    assert syncs
    for args in syncs:
        assert "uv sync --frozen --no-dev" in args
    # Every workspace member's pyproject.toml, the root one and uv.lock are in
    # the image before the first sync (a workspace sync needs all of them).
    first_sync = next(
        i for i, (kw, args) in enumerate(instructions) if kw == "RUN" and "uv sync" in args
    )
    copied: set[str] = set()
    for keyword, args in instructions[:first_sync]:
        if keyword == "COPY" and not args.startswith("--from"):
            *sources, dest = shlex.split(args)
            for src in sources:
                target = PurePosixPath(dest) / PurePosixPath(src).name
                copied.add(str(target if dest.endswith("/") else PurePosixPath(dest)))
    root = tomllib.loads((REPO / "pyproject.toml").read_text())
    members = root["tool"]["uv"]["workspace"]["members"]
    needed = {"pyproject.toml", "uv.lock"} | {f"{member}/pyproject.toml" for member in members}
    assert needed <= copied, copied
    # uv itself comes from its pinned image.
    uv_refs = {s.alias for s in all_stages if s.base.startswith("ghcr.io/astral-sh/uv:")}
    uv_refs |= {s.base for s in all_stages if s.base.startswith("ghcr.io/astral-sh/uv:")}
    copy_from = [
        re.match(r"--from=(\S+)\s+/uv\s", args) for kw, args in instructions if kw == "COPY"
    ]
    assert [m.group(1) for m in copy_from if m and m.group(1) in uv_refs], (
        "uv is copied from the pinned ghcr.io/astral-sh/uv image"
    )


def test_dockerfile_copies_only_existing_unignored_sources() -> None:
    sources = [
        src
        for stage in stages()
        for keyword, args in stage.instructions
        if keyword in {"COPY", "ADD"} and not args.startswith("--from")
        for src in shlex.split(args)[:-1]
    ]
    assert sources
    # What `docker build .` sends: every path .dockerignore does not exclude.
    context = exclude_paths(str(REPO), dockerignore_patterns(), dockerfile="Dockerfile")
    for src in sources:
        assert (REPO / src).exists(), f"COPY {src}: missing"
        assert src in context, f"COPY {src}: excluded by .dockerignore"
    for kept in (
        "shared/src/wabot_shared/settings.py",
        "migrations/001_base_schema.sql",
        "uv.lock",
    ):
        assert kept in context, kept
        assert not dockerignored(kept), kept
    assert not any(p.startswith(("tests/", ".venv/", ".git/")) for p in context), sorted(context)
    for dropped in (
        ".venv/bin/python",
        ".run/logs/ingest.log",
        "tests/deploy/test_dockerfile.py",
        "bench/results/pipeline.json",
        "shared/src/wabot_shared/__pycache__/settings.cpython-311.pyc",
        ".mypy_cache/3.11/x.json",
        ".ruff_cache/x",
        ".pytest_cache/v/x",
        ".git/HEAD",
        "services/worker/.env",
    ):
        assert dockerignored(dropped), f".dockerignore lets {dropped} into the build context"


def test_dockerfile_runtime_stage_user_workdir_migrations_and_cmd() -> None:
    final = stages()[-1].instructions
    users = [args for kw, args in final if kw == "USER"]
    assert users, "the runtime stage sets USER"
    uid, _, gid = users[-1].partition(":")
    # Numeric, so runtimes can verify "non-root" without reading /etc/passwd.
    assert uid.isdigit(), f"USER {users[-1]}: use a numeric uid"
    assert int(uid) != 0, f"runs as {users[-1]}"
    assert gid == "" or (gid.isdigit() and int(gid) != 0), f"group {gid}"
    runs = " ".join(args for kw, args in final if kw == "RUN")
    assert re.search(rf"useradd\b.*--uid {uid}\b", runs), "the user exists in the image"
    workdirs = [args for kw, args in final if kw == "WORKDIR"]
    assert workdirs
    assert workdirs[-1] == "/app"
    env = parser().envs  # the final stage's environment
    assert env["MIGRATIONS_DIR"] == "/app/migrations"
    assert "MIGRATIONS_DIR" in all_env_names(MigrateSettings)
    assert "/app/.venv/bin" in env["PATH"].split(":")
    copies = [shlex.split(args) for kw, args in final if kw == "COPY"]
    assert ["migrations", "/app/migrations"] in copies
    assert ["--from=build", "/app/.venv", "/app/.venv"] in copies
    # The last USER comes before CMD, and CMD is exec form naming a console script.
    keywords = [kw for kw, _ in final]
    assert keywords.index("CMD") > len(keywords) - 1 - keywords[::-1].index("USER")
    cmd = json.loads(next(args for kw, args in reversed(final) if kw == "CMD"))
    assert cmd == ["ingest"]
    for script in ("ingest", "worker", "migrate"):
        assert_console_script(script)


def test_dockerfile_holds_no_secrets() -> None:
    secrets = secret_env_names() | {"DATABASE_URL", "REDIS_URL"}
    for stage in stages():
        for keyword, args in stage.instructions:
            if keyword in {"ENV", "ARG"}:
                for token in shlex.split(args):
                    key = token.split("=", 1)[0]
                    assert key not in secrets, f"{keyword} {key} in the Dockerfile"
                    assert not re.search(r"SECRET|PASSWORD|TOKEN|API_KEY", key), key
            # No credentials in URLs or assignments anywhere in the instructions.
            assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", args), f"{keyword} {args}"
            assert not re.search(r"(?i)(password|secret|api_key|token)\s*=", args), args
