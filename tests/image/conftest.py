"""Session fixture: the image, built once per session (the bases and podman's
layer cache make later sessions fast); per test, the containers it runs, all
removed afterwards."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import image as img

# Built for the tests only; rebuilt (and the previous one removed) every session.
TAG = "localhost/wabot-test/app:build"


@pytest.fixture(scope="session")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    logs = tmp_path_factory.mktemp("image")
    started = time.monotonic()
    bases = img.bases()
    made = time.monotonic()
    img.build(TAG, bases, logs / "build.log")
    print(
        f"\nimage: bases {made - started:.1f}s, build {time.monotonic() - made:.1f}s "
        f"({bases.python}, {bases.uv})"
    )
    return TAG


@pytest.fixture
def containers(image: str, tmp_path: Path) -> Iterator[img.Containers]:
    c = img.Containers(image, tmp_path)
    try:
        yield c
    finally:
        c.remove_all()
