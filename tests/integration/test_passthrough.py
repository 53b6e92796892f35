"""FUSE passthrough (Linux 6.9+, libfuse 3.17+, CAP_SYS_ADMIN): complete blobs
are read and mapped by the kernel from the store's file, without a request to
the daemon.

Proof that passthrough was used comes from the daemon itself: its status file
counts the opens in passthrough and the READ requests it answered, and no READ
may reach it for a file opened in passthrough.

Where passthrough is unavailable (a libfuse 3.14 build, an old kernel, no
CAP_SYS_ADMIN) every test here skips, with the daemon's own reason; under
`make check-passthrough` (BLOBFS_REQUIRE_PASSTHROUGH=1, a libfuse 3.17 build)
they fail instead.
"""

import hashlib
import json
import mmap
import os
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

import blobfsmount
from models import OLLAMA_MODEL, push_model
from children import python_json, run
from test_mount import (  # noqa: F401 (mmap_probe is a fixture)
    MiB, PY_MMAP, READ_ALL, big_model, mmap_probe, model_name, pull, source_bytes, tag_dir,
)
from test_ecosystem import blob_gets
from storefiles import store_blob, wait_for

STATUS_TIMEOUT = 5.0   # the status file is rewritten about once a second


def status(m):
    """Mount M's status file, parsed ({} while there is none)."""
    path = Path(m.store) / ".blobfs" / "run" / f"{m.proc.pid}.json"
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def wait_status(m, pred, what):
    """The first status of M for which PRED holds; fails after STATUS_TIMEOUT."""
    found = {}

    def check():
        found["st"] = status(m)
        return pred(found["st"])
    if not wait_for(check, STATUS_TIMEOUT, interval=0.1):
        pytest.fail(f"the mount's status never showed {what}: {found['st']}")
    return found["st"]


def settled_status(m):
    """M's status once it has been rewritten after everything so far."""
    before = status(m).get("updated", 0)
    return wait_status(m, lambda st: st.get("updated", 0) > before + 1, "a fresh update")


def require_passthrough(m):
    """Skip unless mount M uses passthrough, or fail under BLOBFS_REQUIRE_PASSTHROUGH."""
    state = wait_status(m, lambda st: "passthrough" in st, "its passthrough state")["passthrough"]
    if state == "on":
        return
    if os.environ.get("BLOBFS_REQUIRE_PASSTHROUGH"):
        pytest.fail(f"FUSE passthrough is {state}, but BLOBFS_REQUIRE_PASSTHROUGH is set "
                    "(make check-passthrough expects a libfuse 3.17 build, root, Linux 6.9+)")
    pytest.skip(f"FUSE passthrough is {state}")


@pytest.fixture(scope="module", autouse=True)
def passthrough_on(blobfs_bin):
    """Once, on an empty store: skip (or fail) the module unless passthrough is on."""
    with tempfile.TemporaryDirectory(prefix="blobfs-passthrough-") as tmp:
        (Path(tmp) / "mnt").mkdir()
        m = blobfsmount.Mount(blobfs_bin, Path(tmp) / "store", Path(tmp) / "mnt",
                              Path(tmp) / "log", options=("create_store",))
        try:
            m.wait_mounted()
            require_passthrough(m)
        finally:
            m.cleanup()


def sha_of_fd(fd, size):
    sha, off = hashlib.sha256(), 0
    while off < size:
        piece = os.pread(fd, MiB, off)
        assert piece, f"end of file at {off}, expected {size} bytes"
        sha.update(piece)
        off += len(piece)
    return "sha256:" + sha.hexdigest()


def blocks_of(size):
    return (size + 511) // 512


def du(path):
    return int(run(["du", "-B1", path], check=True).stdout.split()[0])


def complete_model(registry, run_blobfs, store, tmp_path, blob_cache, repo="library/x",
                   size=32 * MiB, seed=151):
    model = big_model(tmp_path / repo.replace("/", "-"), blob_cache, size=size, seed=seed)
    push_model(registry, repo, "latest", model)
    pull(run_blobfs, store, model_name(registry, repo), lazy=False)
    return model.layer(OLLAMA_MODEL)


def test_a_complete_blob_is_read_and_mapped_by_the_kernel(registry, run_blobfs, store, mount,
                                                           mmap_probe, tmp_path, blob_cache):
    layer = complete_model(registry, run_blobfs, store, tmp_path, blob_cache)
    m = mount()
    require_passthrough(m)
    path = tag_dir(m.path, registry.host) / "model"
    assert os.stat(path).st_blocks == blocks_of(layer.size)
    assert du(path) == layer.size

    r = python_json(READ_ALL, path)
    assert r["ok"] and r["sha"] == layer.digest, r
    cmp = run(["cmp", path, layer.path])
    assert cmp.returncode == 0, f"cmp: {cmp.stdout}{cmp.stderr}"
    offsets = [0, 4096, 5 * MiB + 17, layer.size - 64]
    want = {str(off): source_bytes(layer.path, off, 64).hex() for off in offsets}
    for kind in ("shared", "private"):
        assert python_json(PY_MMAP, path, kind, 64, *offsets) == want, f"mmap ({kind}) read wrong bytes"
    probe = run([mmap_probe, path, 64, *offsets], check=True)
    got = {}
    for line in probe.stdout.splitlines():
        kind, off, hexbytes = line.split()
        got.setdefault(kind, {})[off] = hexbytes
    assert got == {"shared": want, "private": want}, "the C mmap probe read wrong bytes"

    # Five opens (the reader, cmp, two Python maps, the probe), all in
    # passthrough, and not one READ reached the daemon.
    st = wait_status(m, lambda st: st.get("opens", 0) >= 5, "five opens")
    st = settled_status(m)
    assert st["opens"] == 5 and st["opens_passthrough"] == 5, st
    assert st["reads"] == 0, f"{st['reads']} READ requests reached the daemon: {st}"
    out = run_blobfs(["status"]).stdout
    assert "opens: 5, 5 in passthrough" in out, out
    # du and st_blocks still say the whole blob is local
    time.sleep(0.6)  # the blob's attribute timeout
    assert os.stat(path).st_blocks == blocks_of(layer.size)
    assert du(path) == layer.size

    # The same reads with -o nopassthrough do reach the daemon, and are counted.
    m2 = mount("nopassthrough")
    r = python_json(READ_ALL, tag_dir(m2.path, registry.host) / "model")
    assert r["ok"] and r["sha"] == layer.digest, r
    st2 = wait_status(m2, lambda st: st.get("reads", 0) > 0 and st.get("opens", 0) >= 1,
                      "the daemon's READs")
    assert st2["opens_passthrough"] == 0 and st2["passthrough"].startswith("off: "), st2
    assert f"opens: 1 (passthrough {st2['passthrough']})" in run_blobfs(["status"]).stdout
    assert len(m2.log_lines(r"FUSE passthrough")) == 1, m2.log()


REMOVALS = pytest.mark.parametrize("how", ["blobfs-rm", "rm-r", "evicted"])


@REMOVALS
def test_a_blob_removed_while_open_keeps_its_bytes(how, registry, run_blobfs, store, mount,
                                                   tmp_path, blob_cache):
    layer = complete_model(registry, run_blobfs, store, tmp_path, blob_cache, "library/a",
                           16 * MiB, 152)
    m = mount("nodiscover")   # a removed tag is not looked up again
    require_passthrough(m)
    path = tag_dir(m.path, registry.host, "library/a") / "model"
    fd = os.open(path, os.O_RDONLY)
    mapped = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
    try:
        assert os.pread(fd, MiB, 0) == source_bytes(layer.path, 0, MiB)
        mark = registry.registry_log_mark()
        if how == "blobfs-rm":
            assert run_blobfs(["rm", model_name(registry, "library/a")]).returncode == 0
        elif how == "rm-r":
            run(["rm", "-r", tag_dir(m.path, registry.host, "library/a")], check=True)
        else:   # another process's quota: b (16 MiB) and a do not fit in 20M
            b = big_model(tmp_path / "b", blob_cache, size=16 * MiB, seed=153)
            push_model(registry, "library/b", "latest", b)
            result = run_blobfs(["--max-cache", "20M", "pull", "--quiet",
                                 model_name(registry, "library/b")])
            assert result.returncode == 0, result.stderr
        assert not store_blob(store, layer.digest).exists(), \
            f"{how} left the blob in the store: nothing was removed under the open file"
        assert sha_of_fd(fd, layer.size) == layer.digest, "the open file lost bytes"
        assert "sha256:" + hashlib.sha256(mapped[:]).hexdigest() == layer.digest, \
            "the mapping lost bytes"
        assert layer.digest not in blob_gets(registry.registry_log_entries(since=mark)), \
            "the blob was fetched again: the open file did not keep it"
        st = settled_status(m)
        assert st["opens_passthrough"] == 1 and st["reads"] == 0, st
    finally:
        mapped.close()
        os.close(fd)
    if how == "evicted":
        # The tag stays; once the file is closed nothing of the blob is local.
        assert wait_for(lambda: os.stat(path).st_blocks == 0, STATUS_TIMEOUT), \
            f"st_blocks {os.stat(path).st_blocks} for an evicted blob nobody has open"
        assert du(path) == 0
    else:
        assert wait_for(lambda: not path.exists(), STATUS_TIMEOUT), "the tag is still there"


def test_a_partial_blob_completing_while_open_stays_with_the_daemon(registry, run_blobfs,
                                                                     store, mount, tmp_path,
                                                                     blob_cache):
    model = big_model(tmp_path, blob_cache, size=32 * MiB, seed=154)
    layer = model.layer(OLLAMA_MODEL)
    push_model(registry, "library/x", "latest", model)
    pull(run_blobfs, store, model_name(registry))           # lazily: nothing local
    m = mount("background=always")
    require_passthrough(m)
    path = tag_dir(m.path, registry.host) / "model"
    blob = store_blob(store, layer.digest)
    half = layer.size // 2

    first = os.open(path, os.O_RDONLY)                      # partial: the daemon's
    try:
        assert os.pread(first, MiB, 0) == source_bytes(layer.path, 0, MiB)
        assert wait_for(blob.is_file, 30), "the background fetch did not complete the blob"
        reads = settled_status(m)["reads"]
        # Complete now, but an open of it is the daemon's: so is this one (the
        # kernel fails an open with EIO if one inode mixes the two).
        second = os.open(path, os.O_RDONLY)
        try:
            assert os.pread(first, layer.size - half, half) == \
                source_bytes(layer.path, half, layer.size - half), "the first open read wrong"
            assert sha_of_fd(second, layer.size) == layer.digest, "the second open read wrong"
            with mmap.mmap(second, 0, prot=mmap.PROT_READ) as mapped:
                assert mapped[half:half + 4096] == source_bytes(layer.path, half, 4096)
        finally:
            os.close(second)
        st = settled_status(m)
        assert st["opens"] == 2 and st["opens_passthrough"] == 0, st
        assert st["reads"] > reads, "the first open's reads after the commit bypassed the daemon"
    finally:
        os.close(first)
    # Both closed: the next open is in passthrough, and reads nothing through the daemon.
    reads = settled_status(m)["reads"]
    r = python_json(READ_ALL, path)
    assert r["ok"] and r["sha"] == layer.digest, r
    st = wait_status(m, lambda st: st.get("opens", 0) >= 3, "a third open")
    st = settled_status(m)
    assert st["opens_passthrough"] == 1 and st["reads"] == reads, st


def test_a_store_passthrough_cannot_use_falls_back_once(registry, run_blobfs, mount, tmp_path,
                                                        blob_cache):
    """A store on overlayfs (a stacked filesystem): the kernel refuses its files
    as backing files, so the mount serves them itself, and says so once."""
    layers = tempfile.mkdtemp(prefix="blobfs-overlay-")
    lower, upper, work, merged = (Path(layers) / d for d in ("lower", "upper", "work", "merged"))
    for d in (lower, upper, work, merged):
        d.mkdir()
    mounted = subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                              f"lowerdir={lower},upperdir={upper},workdir={work}", merged],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount overlayfs here: {mounted.stderr.strip()}")
    m = None
    try:
        layer = complete_model(registry, run_blobfs, merged, tmp_path, blob_cache, seed=155,
                               size=8 * MiB)
        m = mount(store=merged)
        require_passthrough(m)
        path = tag_dir(m.path, registry.host) / "model"
        for _ in range(3):
            r = python_json(READ_ALL, path)
            assert r["ok"] and r["sha"] == layer.digest, r
        st = wait_status(m, lambda st: st.get("opens", 0) >= 3, "three opens")
        assert st["opens_passthrough"] == 0 and st["reads"] > 0, st
        assert st["passthrough"].startswith("off: the kernel refused"), st
        assert len(m.log_lines(r"FUSE passthrough off")) == 1, m.log()
    finally:
        if m:
            m.cleanup()     # before the overlay goes
        subprocess.run(["umount", merged], capture_output=True)
        subprocess.run(["rm", "-rf", "--one-file-system", layers], capture_output=True)
