"""Shared pytest setup for blobfs tests: puts tests/lib on sys.path and provides
fixtures for the blobfs binary, throwaway registries (optionally behind an nginx
CDN), empty stores and running the CLI with a time limit."""

import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO_DIR = TESTS_DIR.parent
sys.path.insert(0, str(TESTS_DIR / "lib"))

import blobfsmount  # noqa: E402  (these need the sys.path entry above)
import children  # noqa: E402
import dockerreg  # noqa: E402
from faultreg import FaultRegistry  # noqa: E402
from servers import start_or_skip, stopped_after  # noqa: E402

DEFAULT_BLOBFS_TIMEOUT = 60  # seconds


def _default_signal_dispositions():
    """Undo signals ignored by whoever started the suite.

    A shell starts a background job ('make check &', a CI step under nohup)
    with SIGINT, SIGQUIT or SIGHUP ignored, and an ignored signal stays
    ignored across exec: every daemon and script a test starts would
    inherit it, and tests that send those signals would fail for a reason
    that is not blobfs's. Python's own handler (SIGINT) and the default
    disposition are reset at exec, so children start as from a terminal.
    """
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
        if signal.getsignal(sig) == signal.SIG_IGN:
            signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT
                          else signal.SIG_DFL)


def pytest_configure(config):
    _default_signal_dispositions()
    config.addinivalue_line(
        "markers", "timing: asserts loose wall-clock bounds; may flake on an overloaded machine")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")
    config.addinivalue_line(
        "markers", "faults: the fault suite (make check-faults runs it alone)")


@pytest.fixture(scope="session")
def blobfs_bin():
    """Path of the blobfs binary: $BLOBFS, else <repo>/src/blobfs; skips if missing."""
    path = Path(os.environ.get("BLOBFS") or REPO_DIR / "src" / "blobfs")
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.skip(f"blobfs binary not built: no executable at {path} (set BLOBFS or build it)")
    return path


@pytest.fixture(scope="session")
def blob_cache():
    """Session-wide directory for generated random blobs (models.make_model's cache_dir)."""
    with tempfile.TemporaryDirectory(prefix="blobfs-blob-cache-") as path:
        yield Path(path)


@pytest.fixture
def registry():
    """A fresh DockerRegistry without CDN: blobs are served by the registry itself."""
    with start_or_skip(dockerreg.DockerRegistry) as reg:
        yield reg


@pytest.fixture
def cdn_registry():
    """A fresh DockerRegistry whose blob GETs redirect (307) to an nginx CDN."""
    with start_or_skip(dockerreg.DockerRegistry, cdn=True) as reg:
        yield reg


@pytest.fixture
def capped_cdn_registry():
    """Factory: capped_cdn_registry(rate) -> DockerRegistry whose CDN sends at most
    RATE (nginx syntax, e.g. "1m" = 1 MiB/s) per request. Stopped after the test."""
    yield from stopped_after(lambda rate: dockerreg.DockerRegistry(cdn_rate=rate))


@pytest.fixture
def store():
    """A fresh empty directory for a blobfs store, removed after the test (not kept
    among pytest's retained tmp dirs, since stores can hold large blobs)."""
    path = Path(tempfile.mkdtemp(prefix="blobfs-store-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def run_blobfs(blobfs_bin, store):
    """run_blobfs(args, *, store=<store fixture>, env=None, timeout=60, input=None,
    text=True, base_env=None, cwd=None, wrap=None, umask=None)
    -> CompletedProcess with captured stdout/stderr.

    Runs `blobfs --store STORE ARGS...` (no --store if store=None) by the rules of
    tests/lib/children.py: in its own process group, and past TIMEOUT seconds the
    group is killed and the test fails with whatever output there was. The
    environment is BASE_ENV (default: this process's) with ENV laid over it; a
    None value in ENV unsets that variable. WRAP(argv), if given, returns the
    command that runs argv (a namespace, another user). UMASK is set in the
    child; CWD is its directory.

    run_blobfs.start(args, **the same options but timeout and input) -> the
    running Popen, for a test that does something while blobfs runs; finish it
    with children.finish(proc, timeout).
    """
    default_store = store

    def start(args, *, store=default_store, wrap=None, **options):
        argv = [str(blobfs_bin)]
        if store is not None:
            argv += ["--store", str(store)]
        argv += [str(arg) for arg in args]
        return children.start(wrap(argv) if wrap is not None else argv, **options)

    def run(args, *, timeout=DEFAULT_BLOBFS_TIMEOUT, input=None, **options):
        return children.finish(start(args, stdin=input is not None, **options), timeout, input)

    run.start = start
    return run


@pytest.fixture
def fault_registry():
    """Factory for FaultRegistry instances, all stopped after the test."""
    yield from stopped_after(FaultRegistry)


@pytest.fixture
def mount(blobfs_bin, store, request):
    """Factory: mount(*OPTIONS, store=<store>, global_args=(), debug=True, path=None,
    wait=True, env=None, ...) -> Mount (see tests/lib/blobfsmount.py). test_ecosystem
    and test_security give it their own environment (and a namespace) by Mounts."""
    yield from blobfsmount.mounts(blobfs_bin, store, request)


@pytest.fixture
def tmpfs():
    """Factory: tmpfs(size) -> a fresh tmpfs of that size (bytes), for a store on a
    small disk; tmpfs.resize(path, size) grows or shrinks it. Unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    made = []

    def make(size):
        path = Path(tempfile.mkdtemp(prefix="blobfs-tmpfs-"))
        result = children.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755",
                              "blobfs-test", path])
        if result.returncode != 0:
            path.rmdir()
            pytest.skip(f"cannot mount a tmpfs: {result.stderr}")
        made.append(path)
        return path

    def resize(path, size):
        children.run(["mount", "-o", f"remount,size={size}", path], check=True)

    make.resize = resize
    yield make
    _take_down(made)


@pytest.fixture
def ro_bind():
    """Factory: ro_bind(src) -> a read-only bind mount of SRC; unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("bind mounts need root")
    made = []

    def make(src):
        dst = Path(tempfile.mkdtemp(prefix="blobfs-ro-"))
        if children.run(["mount", "--bind", src, dst]).returncode != 0:
            dst.rmdir()
            pytest.skip("cannot bind-mount")
        made.append(dst)
        children.run(["mount", "-o", "remount,ro,bind", dst], check=True)
        return dst

    yield make
    _take_down(made)


def _take_down(mountpoints):
    """Unmount (lazily if it is busy) and remove each of a test's scratch mounts."""
    for path in mountpoints:
        if children.run(["umount", path]).returncode != 0:
            children.run(["umount", "-l", path])
        try:
            path.rmdir()
        except OSError:
            pass
