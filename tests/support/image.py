"""The container image, built from the Dockerfile and run with podman
(tests/image/, ``make test-image``).

No registry can be pulled from here, so the Dockerfile's two bases are made on
this machine and passed as its build arguments (their defaults stay the
official images of versions.env):

* ``PYTHON_IMAGE``: Debian's own Python of the official image's minor version
  and Debian release (``python:3.11-slim-bookworm`` → bookworm's ``python3.11``),
  a ``debootstrap --variant=minbase`` root file system turned into an image by
  ``podman import``;
* ``UV_IMAGE``: the ``uv`` and ``uvx`` binaries of UV_VERSION, from its PyPI
  wheel (the binaries ghcr.io/astral-sh/uv ships), alone in an image as there.

Both are cached, the tarballs in ~/.cache/wabot/image/ and the images in
podman's storage, under a key of what they are made of: only the first run
pays for debootstrap (about a minute). The Python base also carries this
machine's CA bundle, with SSL_CERT_FILE naming it: uv trusts only its built-in
roots otherwise, and where HTTPS to PyPI passes a proxy with its own CA (as
here) the build's ``uv sync`` needs it. The official base needs neither.

Containers run with ``--network=host`` (the harness' Redis, PostgreSQL and OTLP
sink listen on 127.0.0.1), ``--read-only``, the image's own user, their
settings passed by name from podman's environment (never on its command
line), and a label naming the test run, by which :class:`Containers` removes
every one of them at the end, whatever happened.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.deploy.files import DOCKERFILE, versions
from tests.support.stack.env import clean_env
from tests.support.stack.paths import CACHE_BIN, REPO, MissingTool
from tests.support.stack.process import Process, Ready

CONTAINERS_CONF = REPO / "tests" / "image" / "containers.conf"
CACHE_DIR = CACHE_BIN.parent / "image"
DEBIAN_MIRROR = os.environ.get("WABOT_DEBIAN_MIRROR", "http://deb.debian.org/debian")
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"  # Debian's path, on the host and in the base
# Bump when the way the bases are made changes: new cache keys, new images.
RECIPE = "1"
LABEL = "wabot.test.image"
# The image's user (the Dockerfile's USER), which the tests never override.
UID = 10001
INSTALL_HINT = (
    "scripts/bootstrap.sh (make test, make test-image) installs podman, runc, debootstrap"
)
TIMEOUT = 60  # seconds, for podman's quick subcommands
BUILD_TIMEOUT = 900
DEBOOTSTRAP_TIMEOUT = 900


class PodmanError(AssertionError):
    """A podman (or debootstrap) command failed; the message holds its output."""


def tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        raise MissingTool(f"`{name}` not found; {INSTALL_HINT}")
    return found


def podman_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """What podman runs with: the harness' clean environment, our containers.conf."""
    return clean_env(CONTAINERS_CONF=str(CONTAINERS_CONF), **(extra or {}))


def _tail(text: str, chars: int = 4000) -> str:
    return text if len(text) <= chars else "...\n" + text[-chars:]


def podman(
    *args: str, timeout: float = TIMEOUT, check: bool = True, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``podman <args>`` to completion (raises :class:`PodmanError` on failure with ``check``)."""
    proc = subprocess.run(
        [tool("podman"), *args],
        env=podman_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise PodmanError(
            f"podman {' '.join(args)} exited with {proc.returncode}:\n"
            f"{_tail(proc.stdout)}{_tail(proc.stderr)}"
        )
    return proc


def image_id(tag: str) -> str | None:
    proc = podman("image", "inspect", "--format", "{{.Id}}", tag, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def image_user(tag: str) -> str:
    return podman("image", "inspect", "--format", "{{.Config.User}}", tag).stdout.strip()


# ------------------------------------------------------------- the bases ---
@dataclass(frozen=True)
class Bases:
    """Local stand-ins for the Dockerfile's PYTHON_IMAGE and UV_IMAGE."""

    python: str
    uv: str

    def build_args(self) -> list[str]:
        return [f"--build-arg=PYTHON_IMAGE={self.python}", f"--build-arg=UV_IMAGE={self.uv}"]


def python_release() -> tuple[str, str]:
    """The Python minor version and Debian release of the official PYTHON_IMAGE."""
    image = versions()["PYTHON_IMAGE"]
    match = re.fullmatch(r"python:(\d+\.\d+)-slim-([a-z]+)", image)
    assert match, f"PYTHON_IMAGE={image}: expected python:<major.minor>-slim-<Debian release>"
    return match.group(1), match.group(2)


def _key(*parts: str | bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()[:12]


@contextlib.contextmanager
def _cache_lock() -> Iterator[None]:
    """One maker of bases at a time on this machine (concurrent test runs wait)."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with (CACHE_DIR / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _unmount_under(path: Path) -> None:
    """Unmount whatever an interrupted debootstrap left mounted below ``path``
    (deepest first), so that removing the directory never reaches the host's
    /proc or /dev."""
    prefix = str(path.resolve()) + "/"
    mounts = [
        line.split()[1].replace("\\040", " ")
        for line in Path("/proc/self/mounts").read_text().splitlines()
    ]
    for target in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", target], check=False, timeout=TIMEOUT)


def _ensure_image(
    tag: str, tarball: Path, make: Callable[[Path, Path], None], changes: list[str]
) -> str:
    """``tag``, imported from ``tarball``, which ``make(workdir, out)`` writes if
    it is not cached. Nothing is left behind in the cache but the tarball."""
    with _cache_lock():
        if image_id(tag) is not None:
            return tag
        if not tarball.is_file():
            work = Path(tempfile.mkdtemp(prefix="tmp-", dir=CACHE_DIR))
            try:
                part = work / "image.tar"
                make(work, part)
                part.replace(tarball)  # whole or not at all
            finally:
                _unmount_under(work)
                shutil.rmtree(work, ignore_errors=True)
        podman("import", *(f"--change={c}" for c in changes), str(tarball), tag, timeout=300)
    return tag


def _run_bounded(cmd: list[str], timeout: float, log: Path) -> None:
    """Run ``cmd`` (its own session, output in ``log``); past ``timeout`` it gets
    SIGTERM (debootstrap unmounts on it), then SIGKILL."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            code = proc.wait(timeout=timeout)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            raise
    if code != 0:
        text = log.read_text(errors="replace")
        raise PodmanError(f"{' '.join(cmd)} exited with {code}:\n{_tail(text)}")


def python_base() -> str:
    """PYTHON_IMAGE's stand-in: Debian ``minbase`` of the official image's release
    with its ``python3.X``, ca-certificates and this machine's CA bundle."""
    minor, release = python_release()
    packages = [f"python{minor}", "python3", "ca-certificates"]
    host_ca = Path(CA_BUNDLE).read_bytes() if Path(CA_BUNDLE).is_file() else b""
    key = _key(RECIPE, release, *packages, host_ca)
    tag = f"localhost/wabot-test/python:{minor}-{release}-{key}"
    tarball = CACHE_DIR / f"python-{minor}-{release}-{platform.machine()}-{key}.tar"

    def make(work: Path, out: Path) -> None:
        if os.geteuid() != 0:
            raise MissingTool("debootstrap needs root to make the base image (run as root)")
        rootfs = work / "rootfs"
        _run_bounded(
            [
                tool("debootstrap"),
                "--variant=minbase",
                f"--include={','.join(packages)}",
                release,
                str(rootfs),
                DEBIAN_MIRROR,
            ],
            DEBOOTSTRAP_TIMEOUT,
            work / "debootstrap.log",
        )
        _unmount_under(rootfs)
        python = rootfs / "usr" / "bin" / f"python{minor}"
        assert python.is_file(), f"debootstrap installed no {python}"
        # What the official slim image leaves out too: downloaded packages and indexes.
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (rootfs / cache).glob("*"):
                if entry.is_file():
                    entry.unlink()
        if host_ca:
            (rootfs / CA_BUNDLE.lstrip("/")).write_bytes(host_ca)
        subprocess.run(
            ["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(out), "."],
            check=True,
            timeout=300,
        )

    changes = [
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "ENV LANG=C.UTF-8",
        *([f"ENV SSL_CERT_FILE={CA_BUNDLE}"] if host_ca else []),
        'CMD ["python3"]',
    ]
    return _ensure_image(tag, tarball, make, changes)


def _uv_command() -> list[str]:
    """The uv running this session (``uv run`` says which), else uv from PATH,
    else the module bootstrap installs."""
    found = os.environ.get("UV") or shutil.which("uv")
    return [found] if found else [tool("python3"), "-m", "uv"]


def uv_base() -> str:
    """UV_IMAGE's stand-in: /uv and /uvx of UV_VERSION, from its PyPI wheel (the
    binaries the official image holds, at the same paths)."""
    version = versions()["UV_VERSION"]
    tag = f"localhost/wabot-test/uv:{version}-{_key(RECIPE)}"
    tarball = CACHE_DIR / f"uv-{version}-{platform.machine()}-{_key(RECIPE)}.tar"

    def make(work: Path, out: Path) -> None:
        target = work / "uv"
        # uv's own wheel, installed by uv (the client this project runs under).
        subprocess.run(
            [
                *_uv_command(),
                *("pip", "install", "--quiet", "--no-deps", f"--python={sys.executable}"),
                *(f"--target={target}", f"uv=={version}"),
            ],
            check=True,
            timeout=300,
            env=clean_env(),
        )
        with tarfile.open(out, "w") as tar:
            for name in ("uv", "uvx"):
                data = (target / "bin" / name).read_bytes()
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.uid, info.gid = len(data), 0o755, 0, 0
                tar.addfile(info, io.BytesIO(data))

    return _ensure_image(tag, tarball, make, ['ENTRYPOINT ["/uv"]'])


def bases() -> Bases:
    return Bases(python=python_base(), uv=uv_base())


# ------------------------------------------------------------- the build ---
def build(tag: str, bases: Bases, log: Path) -> None:
    """``podman build`` of the Dockerfile with the local bases (layers cached
    between runs); the image it replaces under ``tag`` is removed."""
    before = image_id(tag)
    proc = podman(
        "build",
        "--pull=never",
        "--network=host",  # uv sync downloads the locked wheels from PyPI
        "--layers",
        *bases.build_args(),
        f"--tag={tag}",
        f"--file={DOCKERFILE}",
        str(REPO),
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise PodmanError(
            f"podman build exited with {proc.returncode} (whole log: {log}):\n"
            f"{_tail(proc.stdout + proc.stderr)}"
        )
    after = image_id(tag)
    if before is not None and before != after:
        podman("rmi", before, check=False)  # untagged now; still in use is fine


# -------------------------------------------------------- the containers ---
class Containers:
    """The containers of one test, from ``image``: one-shot commands, services
    (as harness :class:`Process`es) and ``exec`` into them; :meth:`remove_all`
    removes every container it started, running or not."""

    def __init__(self, image: str, log_dir: Path) -> None:
        self.image = image
        self.log_dir = log_dir
        self.run_id = uuid.uuid4().hex[:12]

    def container_name(self, name: str) -> str:
        return f"wabot-test-{self.run_id}-{name}"

    def _run_cmd(self, name: str, args: tuple[str, ...], env: Mapping[str, str]) -> list[str]:
        return [
            tool("podman"),
            "run",
            "--rm",
            f"--name={self.container_name(name)}",
            f"--label={LABEL}={self.run_id}",
            "--pull=never",
            "--network=host",
            "--read-only",
            # By name only: the values come from podman's environment.
            *(f"--env={key}" for key in sorted(env)),
            self.image,
            *args,
        ]

    def run(
        self, name: str, *args: str, env: Mapping[str, str], timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run ``args`` in a new container to completion."""
        return subprocess.run(
            self._run_cmd(name, args, env),
            env=podman_env(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(
        self,
        name: str,
        *args: str,
        env: Mapping[str, str],
        ready: Ready,
        ready_timeout: float = 90,
    ) -> Process:
        """A long-running container, ready when ``ready`` passes; stopping the
        :class:`Process` sends SIGTERM, which ``podman run`` forwards to the
        container's PID 1 (exit code = the service's)."""
        return Process(
            name,
            self._run_cmd(name, args, env),
            env=podman_env(env),
            log_path=self.log_dir / f"{name}.log",
            ready=ready,
            ready_timeout=ready_timeout,
            ready_interval=0.2,
        ).start()

    def exec(self, name: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``args`` inside the running container ``name`` (as a health check runs)."""
        return podman("exec", self.container_name(name), *args, timeout=timeout, check=False)

    def host_ids(self, name: str) -> tuple[int, int]:
        """The real uid and gid of the container's PID 1, as the host sees them."""
        pid = podman("inspect", "--format", "{{.State.Pid}}", self.container_name(name))
        status = Path(f"/proc/{pid.stdout.strip()}/status").read_text()
        ids = {
            line.split(":")[0]: int(line.split()[1])
            for line in status.splitlines()
            if line.startswith(("Uid:", "Gid:"))
        }
        return ids["Uid"], ids["Gid"]

    def ids(self) -> list[str]:
        proc = podman("ps", "--all", "--quiet", f"--filter=label={LABEL}={self.run_id}")
        return proc.stdout.split()

    def remove_all(self) -> None:
        """Remove every container of this run (killing those still running)."""
        left = self.ids()
        if left:
            podman("rm", "--force", "--time=0", *left, timeout=120)
        assert not self.ids(), f"containers of run {self.run_id} left behind"
