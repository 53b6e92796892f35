"""No request waits for another request's disk I/O.

The index's lock guards the tree that every lookup, listing, stat and
removal reads or changes. Working out how much of a blob is local (st_blocks,
user.blobfs.cached) may stat the store, and a store on a slow or stalled disk
must then slow only the request that asked, not every request behind the
lock. tests/integration/slow_stat.c, preloaded into the daemon, stalls the
store's fstatat of one blob while the test says so; meanwhile `rm -r` of
another tag, which needs the lock for writing, must finish at once.
"""
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

import children
from models import OLLAMA_MODEL, OLLAMA_TEMPLATE, make_model, push_model

MiB = 1 << 20
STALL_MS = 3000          # one stat of the store takes this long while the stall is on
QUICK = 1.5              # an rm that did not wait for the stall is done well within this


@pytest.fixture(scope="module")
def slow_stat(tmp_path_factory):
    """The environment that preloads tests/integration/slow_stat.c."""
    return children.preload_shim(Path(__file__).with_name("slow_stat.c"),
                                 tmp_path_factory.mktemp("shim"))


def _stat_uncached(path):
    """stat(1) with AT_STATX_FORCE_SYNC: the kernel asks the daemon (GETATTR)."""
    return subprocess.run(["stat", "--cached=never", "-c", "%b", path], capture_output=True,
                          text=True, timeout=60)


def _getxattr(path):
    return os.getxattr(path, "user.blobfs.cached")


# What the slow request does, after `prepare` (run before the stall is on).
ASKS = {
    "lookup": (lambda p: None, os.stat),
    "getattr": (os.stat, _stat_uncached),
    "getxattr": (os.stat, _getxattr),
}


@pytest.mark.parametrize("ask", sorted(ASKS))
def test_a_stalled_store_stat_holds_up_no_other_request(registry, run_blobfs, store, mount,
                                                         tmp_path, blob_cache, slow_stat, ask):
    slow = make_model(tmp_path / "a", [(OLLAMA_MODEL, MiB, 301), (OLLAMA_TEMPLATE, b"a")],
                      cache_dir=blob_cache)
    other = make_model(tmp_path / "b", [(OLLAMA_MODEL, MiB, 302), (OLLAMA_TEMPLATE, b"b")],
                       cache_dir=blob_cache)
    push_model(registry, "library/a", "latest", slow)
    push_model(registry, "library/b", "latest", other)
    result = run_blobfs(["pull", "--quiet", f"{registry.host}/library/a",
                         f"{registry.host}/library/b"], store=store, timeout=120)
    assert result.returncode == 0, result.stderr

    flag = tmp_path / "stall-on"
    m = mount(env={**slow_stat, "BLOBFS_TEST_SLOW_NAME": slow.layers[0].digest.split(":")[1],
                   "BLOBFS_TEST_SLOW_FLAG": str(flag), "BLOBFS_TEST_SLOW_MS": str(STALL_MS)})
    models = m.path / "models" / registry.host / "library"
    target, other_tag = models / "a" / "latest" / "model", models / "b" / "latest"
    prepare, asks = ASKS[ask]
    prepare(target)
    assert {"model", "template"} <= set(os.listdir(other_tag))

    flag.touch()
    done = {}

    def slow_request():
        began = time.monotonic()
        done["result"] = asks(target)
        done["took"] = time.monotonic() - began

    t = threading.Thread(target=slow_request)
    t.start()
    time.sleep(0.5)            # the slow request is inside the daemon, stalled on the store
    began = time.monotonic()
    rm = subprocess.run(["rm", "-r", str(other_tag)], capture_output=True, text=True, timeout=60)
    rm_took = time.monotonic() - began
    t.join(timeout=60)
    flag.unlink()

    assert "took" in done, f"the {ask} never finished"
    assert done["took"] >= STALL_MS / 1000 - 0.6, \
        f"the {ask} took {done['took']:.2f}s: the stall never struck, so the test proves nothing"
    assert rm.returncode == 0, rm.stderr
    assert not other_tag.exists()
    assert rm_took < QUICK, \
        f"rm -r of another tag took {rm_took:.2f}s: it waited for a {ask} stalled on the store"
    if ask == "getxattr":
        assert int(done["result"]) == slow.layers[0].size
    elif ask == "getattr":
        assert done["result"].returncode == 0, done["result"].stderr
        assert int(done["result"].stdout) == -(-slow.layers[0].size // 512)
    else:
        assert done["result"].st_blocks == -(-slow.layers[0].size // 512)
