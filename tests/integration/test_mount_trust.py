"""Trust and liveness of a mount (issue 11): what other users of an
`allow_other` mount may do, mountpoints the daemon itself reads through,
discovery against a registry that never answers, when a removed tag is
discovered again, mkdir, and interrupts of reads that wait for the network.

Other users are uid 65534 (nobody), run through setpriv; their mountpoints
live in a 0755 directory so they can reach them.  Registries are
tests/lib/faultreg.py, whose request log tells whether the mount asked them
anything.  Every child that touches a mount runs in its own process group with
a time limit, so a mount that hangs fails the test instead of the suite.
"""

import itertools
import os
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from models import OLLAMA_MODEL

REPO = "library/x"
PYTHON = "/usr/bin/python3"
NOBODY = 65534
LAYER = bytes(range(256)) * 2400          # 600 KiB


# ---------------------------------------------------------------- helpers


def run(argv, timeout=30, env=None):
    """Run ARGV in its own process group with captured text output; past
    TIMEOUT the group is killed and the test fails."""
    argv = [str(a) for a in argv]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, **(env or {})})
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            out = err = "(unavailable: the process is stuck in the kernel)"
        pytest.fail(f"{' '.join(argv)} did not finish within {timeout}s\n"
                    f"stdout:\n{out}\nstderr:\n{err}")
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def as_nobody(argv):
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
            *map(str, argv)]


# Prints the errno of os.stat(path), 0 if it succeeds.
STAT_ERRNO = ("import os, sys\n"
              "try:\n    os.stat(sys.argv[1]); print(0)\n"
              "except OSError as e:\n    print(e.errno)")


def stat_errno(path, user=None, timeout=30):
    argv = [PYTHON, "-c", STAT_ERRNO, path]
    result = run(as_nobody(argv) if user == "nobody" else argv, timeout=timeout)
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


def files_under(path):
    path = Path(path)
    if not path.exists():
        return []
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


def store_files(store):
    """Every file of the store but its state directory, with its size."""
    return {f: (Path(store) / f).stat().st_size
            for f in files_under(store) if not f.startswith(".blobfs/")}


def tag_dir(mnt, host, repo=REPO, tag="latest"):
    return Path(mnt) / "models" / host / repo / tag


def mount_manifest(mnt, host, repo=REPO, tag="latest"):
    return Path(mnt) / "manifests" / host / repo / tag


def store_manifest(store, host, repo=REPO, tag="latest"):
    return Path(store) / "manifests" / host / repo / tag


def manifest_requests(reg):
    return reg.count(path_contains="/manifests/")


def wait_for(predicate, timeout, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def mount_options(path):
    with open("/proc/mounts") as f:
        for line in f:
            fields = line.split()
            if fields[1] == str(path):
                return fields[3].split(",")
    return []


def pull(blobfs_bin, store, name, lazy=True):
    argv = [blobfs_bin, "--store", store, "pull", "--quiet", *(["--lazy"] if lazy else []), name]
    result = run(argv, timeout=60)
    assert result.returncode == 0, f"pull of {name} failed:\n{result.stderr}"


@pytest.fixture
def base():
    """A 0755 directory for mountpoints that other users can reach. Only empty
    directories are removed afterwards: never anything through a mount."""
    path = Path(tempfile.mkdtemp(prefix="blobfs-trust-"))
    path.chmod(0o755)
    yield path
    for p in list(path.iterdir()) + [path]:
        try:
            p.rmdir()
        except OSError:
            pass


@pytest.fixture
def shared_mount(base, mount):
    """mount(), on a mountpoint other users can reach (torn down before base)."""
    count = itertools.count()

    def start(*options, **kwargs):
        path = base / f"mnt{next(count)}"
        path.mkdir()
        path.chmod(0o755)
        return mount(*options, path=path, **kwargs)

    return start


@pytest.fixture
def reg(fault_registry):
    """A fault registry serving library/x:latest (and :v2, the same layer)."""
    r = fault_registry()
    r.add_model(REPO, "latest", [(OLLAMA_MODEL, LAYER)])
    r.add_model(REPO, "v2", [(OLLAMA_MODEL, LAYER)])
    return r


# ================================================================ 5. interrupts


# Maps a file with MADV_RANDOM, so that touching a page sends the daemon one
# synchronous READ of it (the kernel's readahead, whose requests cannot be
# interrupted, is off); says "ready", touches the page at argv[2] when told.
MMAP_TOUCHER = r"""
import mmap, os, signal, sys
signal.signal(signal.SIGUSR1, lambda *a: None)
fd = os.open(sys.argv[1], os.O_RDONLY)
m = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
m.madvise(mmap.MADV_RANDOM)
print("ready", flush=True)
sys.stdin.readline()
m[int(sys.argv[2])]
"""

def _read_line(proc, timeout):
    box = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return box[0] if box else None


def _child(code, *args):
    proc = subprocess.Popen([PYTHON, "-c", code, *map(str, args)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert _read_line(proc, 15) == "ready\n"
    return proc


def _go(proc):
    proc.stdin.write("go\n")
    proc.stdin.flush()


def _interrupt_before_it_waits(daemon, proc):
    """Stop the daemon, let PROC start its request and signal it (SIGUSR1)
    while the request still queues in the kernel, then let the daemon go on:
    it gets the request and its interrupt together."""
    daemon.kill(signal.SIGSTOP)
    try:
        _go(proc)
        time.sleep(0.2)
        os.kill(proc.pid, signal.SIGUSR1)
        time.sleep(0.1)
    finally:
        daemon.kill(signal.SIGCONT)


ATTEMPTS = 10


def test_an_interrupt_that_comes_before_a_read_waits_is_not_lost(reg, blobfs_bin, store,
                                                                 mount):
    """A cold read of bytes the registry does not send, interrupted as it
    reaches the daemon: the interrupt is honoured (the kernel then retries the
    read, which waits again), so a kill right after ends the reader at once
    instead of after read_timeout, when the lost read would have failed.
    The race is narrow; each attempt gives it a fresh page."""
    big = bytes(range(256)) * (32 * 1024)          # 8 MiB: pages enough for every attempt
    reg.add_model("library/big", "latest", [(OLLAMA_MODEL, big)])
    pull(blobfs_bin, store, f"{reg.host}/library/big:latest")
    reg.fault("stall", seconds=3600)
    m = mount("read_timeout=5")
    path = tag_dir(m.path, reg.host, "library/big") / "model"
    slow = []
    for i in range(ATTEMPTS):
        proc = _child(MMAP_TOUCHER, path, 4096 * (7 * i + 3))
        try:
            _interrupt_before_it_waits(m, proc)
            time.sleep(0.3)
            os.killpg(proc.pid, signal.SIGKILL)
            t0 = time.monotonic()
            proc.wait(30)
            took = time.monotonic() - t0
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        if took > 1.5:
            slow.append(f"attempt {i}: {took:.1f}s")
    assert not slow, f"killed readers outlived their kill (a lost interrupt): {slow}"
