"""Liveness: a mount or a pull never waits on something that cannot come.

1. A blob named by tags from two registries is fetched from either: one of
   two Debian docker-registry instances is stopped.

Every reader runs in a child process with a time limit, and every mount
under the watchdog of the mount fixture, so a hang fails the test.
"""

import json
import subprocess
from pathlib import Path

import pytest

import dockerreg
from models import OLLAMA_MODEL, make_model, push_model

MiB = 1 << 20
REPO = "library/x"
PYTHON = "/usr/bin/python3"


# ---------------------------------------------------------------- helpers


def model_file(mnt, host, repo=REPO, tag="latest"):
    return Path(mnt) / "models" / host / repo / tag / "model"


# Reads a whole file front to back in 1 MiB pieces; its sha256, or where it failed.
READ_ALL = r"""
import hashlib, json, os, sys, time
sha, off, t0 = hashlib.sha256(), 0, time.monotonic()
fd = os.open(sys.argv[1], os.O_RDONLY)
try:
    while piece := os.read(fd, 1 << 20):
        sha.update(piece)
        off += len(piece)
    out = {"ok": True, "digest": "sha256:" + sha.hexdigest()}
except OSError as e:
    out = {"ok": False, "errno": e.errno, "offset": off}
out["elapsed"] = time.monotonic() - t0
print(json.dumps(out))
"""


def child(code, *args, timeout):
    """Run Python CODE in a child; its stdout as JSON. Fails the test past TIMEOUT."""
    try:
        r = subprocess.run([PYTHON, "-c", code, *map(str, args)], capture_output=True,
                           text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail(f"a reader did not finish within {timeout}s")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def pull_lazy(run_blobfs, store, name):
    r = run_blobfs(["pull", "--quiet", "--lazy", name], store=store)
    assert r.returncode == 0, r.stderr


# ================================================================ 1. every source that names the digest


@pytest.fixture
def second_registry():
    try:
        reg = dockerreg.DockerRegistry()
    except dockerreg.ToolMissing as missing:
        pytest.skip(str(missing))
    yield reg
    reg.stop()


def test_a_blob_comes_from_any_registry_that_names_it(registry, second_registry, run_blobfs,
                                                      store, mount, tmp_path, blob_cache):
    """One model in two registries: with the registry whose tag the mount
    lists first stopped, reads through the other registry's tag work."""
    model = make_model(tmp_path, [(OLLAMA_MODEL, 4 * MiB)], cache_dir=blob_cache)
    regs = sorted([registry, second_registry], key=lambda r: r.host)
    for reg in regs:
        push_model(reg, REPO, "latest", model)
        pull_lazy(run_blobfs, store, f"{reg.host}/{REPO}")
    m = mount("read_timeout=30")
    first, other = regs
    first.stop()
    got = child(READ_ALL, model_file(m.path, other.host), timeout=60)
    print(f"read through the second registry's tag: {got}")
    assert got["ok"], f"the read failed with errno {got['errno']} at {got['offset']}"
    assert got["digest"] == model.layers[0].digest
    assert got["elapsed"] < 15, f"the read took {got['elapsed']:.1f}s"


