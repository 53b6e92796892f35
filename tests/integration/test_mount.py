"""Integration tests of `blobfs mount`: a real FUSE mount of a store, read by
real programs (cat, cmp, du, getfattr, df, rm, a C mmap probe), with blobs
served by real servers on loopback: Debian's docker-registry (optionally
behind an nginx CDN, optionally rate-capped) and tests/lib/faultreg.py.

Every file operation that could block on the mount runs either in a child
process with a time limit or under a per-test watchdog that kills the daemon
(which makes any stuck system call fail), so a broken mount fails the test
instead of hanging the suite. Mounts are always taken down afterwards
(fusermount3 -u, kill, fusermount3 -uz), and the daemon's log is printed when
a test fails.
"""

import ctypes
import errno
import hashlib
import json
import mmap
import os
import random
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from blobfsmount import fuse_mounts
import children
from children import python_json, run
from models import (
    OLLAMA_LICENSE, OLLAMA_MODEL, OLLAMA_PARAMS, OLLAMA_SYSTEM, OLLAMA_TEMPLATE,
    make_model, push_model,
)
from storefiles import (
    blob_name, partial_files, quarantine_files, range_span, sha256_file, store_blob, wait_for,
)

MiB = 1 << 20
BIG = 256 * MiB          # "a big model": many chunks, many requests
MID = 128 * MiB
REPO = "library/x"
PYTHON = "/usr/bin/python3"
HERE = Path(__file__).resolve().parent


OLLAMA_PROJECTOR = "application/vnd.ollama.image.projector"


# ---------------------------------------------------------------- small helpers


def store_manifest(store, host, repo=REPO, tag="latest"):
    return Path(store) / "manifests" / host / repo / tag


def store_snapshot(store):
    """{relative path: (size, mtime_ns)} of every file in the store except
    .blobfs/ (lock files and the like), for 'nothing changed' checks."""
    snap = {}
    for p in Path(store).rglob("*"):
        rel = p.relative_to(store)
        if rel.parts and rel.parts[0] == ".blobfs":
            continue
        if p.is_file():
            st = p.stat()
            snap[str(rel)] = (st.st_size, st.st_mtime_ns)
    return snap


def model_name(reg, repo=REPO, tag="latest"):
    return f"{reg.host}/{repo}:{tag}"


def tag_dir(mnt, host, repo=REPO, tag="latest"):
    return Path(mnt) / "models" / host / repo / tag


def mount_manifest(mnt, host, repo=REPO, tag="latest"):
    return Path(mnt) / "manifests" / host / repo / tag


def source_bytes(path, offset, length):
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


# Reads a file front to back in 1 MiB pieces; reports the hash, or where it failed.
READ_ALL = r"""
import hashlib, json, os, sys, time
path = sys.argv[1]
sha, off, t0 = hashlib.sha256(), 0, time.monotonic()
out = {"ok": True}
try:
    fd = os.open(path, os.O_RDONLY)
except OSError as e:
    print(json.dumps({"ok": False, "errno": e.errno, "offset": None, "where": "open",
                      "elapsed": time.monotonic() - t0}))
    sys.exit(0)
try:
    while True:
        piece = os.read(fd, 1 << 20)
        if not piece:
            break
        sha.update(piece)
        off += len(piece)
except OSError as e:
    out = {"ok": False, "errno": e.errno, "where": "read"}
out.update({"offset": off, "sha": "sha256:" + sha.hexdigest(), "elapsed": time.monotonic() - t0})
print(json.dumps(out))
"""

# pread(fd, LENGTH, OFFSET) once; reports the bytes (hex) or the errno.
PREAD_ONE = r"""
import json, os, sys, time
path, offset, length = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
t0 = time.monotonic()
try:
    fd = os.open(path, os.O_RDONLY)
    data = os.pread(fd, length, offset)
    out = {"ok": True, "hex": data.hex()}
except OSError as e:
    out = {"ok": False, "errno": e.errno}
out["elapsed"] = time.monotonic() - t0
print(json.dumps(out))
"""

# Reads the whole file in PIECE-sized preads starting at START and wrapping
# around; compares every piece with the source file.
ROTATED_READ = r"""
import json, os, sys
path, source, start, piece = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
size = os.path.getsize(source)
fd, src = os.open(path, os.O_RDONLY), os.open(source, os.O_RDONLY)
bad, total, err = [], 0, None
offsets = list(range(start, size, piece)) + list(range(0, start, piece))
try:
    for off in offsets:
        n = min(piece, size - off, (start - off) if off < start else size)
        got = os.pread(fd, n, off)
        total += len(got)
        if got != os.pread(src, n, off):
            bad.append(off)
except OSError as e:
    err = [e.errno, off]
print(json.dumps({"bad": bad[:10], "nbad": len(bad), "total": total, "error": err}))
"""

# Python mmap of the whole file with MAP_SHARED or MAP_PRIVATE; LEN bytes at each offset.
PY_MMAP = r"""
import json, mmap, os, sys
path, kind, length = sys.argv[1], sys.argv[2], int(sys.argv[3])
offsets = [int(a) for a in sys.argv[4:]]
fd = os.open(path, os.O_RDONLY)
if kind == "shared":
    m = mmap.mmap(fd, 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
else:  # copy-on-write private mapping, written to afterwards
    m = mmap.mmap(fd, 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
out = {str(off): m[off:off + length].hex() for off in offsets}
if kind == "private":
    m[offsets[0]] = m[offsets[0]] ^ 0xFF   # stays private: the file must not change
m.close()
print(json.dumps(out))
"""


# ---------------------------------------------------------------- the mount fixture


@pytest.fixture(scope="session")
def mmap_probe():
    """tests/integration/mmap_probe.c compiled with gcc into a temp dir."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("no C compiler (install the Debian package 'gcc')")
    with tempfile.TemporaryDirectory(prefix="blobfs-mmap-probe-") as tmp:
        exe = Path(tmp) / "mmap_probe"
        result = run([gcc, "-O2", "-Wall", "-Werror", "-o", exe, HERE / "mmap_probe.c"],
                     timeout=60)
        assert result.returncode == 0, result.stderr
        yield exe


# ---------------------------------------------------------------- model helpers


def big_model(workdir, blob_cache, size=BIG, seed=0, extra=()):
    return make_model(workdir, [(OLLAMA_MODEL, size, seed),
                                (OLLAMA_TEMPLATE, b"{{ .System }} {{ .Prompt }}"),
                                *extra],
                      cache_dir=blob_cache)


def small_model(workdir, blob_cache, seed, size=MiB, template=b"{{ .Prompt }}"):
    return make_model(workdir, [(OLLAMA_MODEL, size, seed), (OLLAMA_TEMPLATE, template)],
                      cache_dir=blob_cache)


def pull(run_blobfs, store, *names, lazy=True, timeout=120):
    args = ["pull", "--quiet"] + (["--lazy"] if lazy else []) + list(names)
    result = run_blobfs(args, store=store, timeout=timeout)
    how = (f"was killed by {signal.Signals(-result.returncode).name}" if result.returncode < 0
           else f"exited {result.returncode}")
    assert result.returncode == 0, f"blobfs {' '.join(args)} {how}:\n{result.stderr}"
    return result


def blob_uri_entries(reg, digest, since):
    """CDN log entries for blob DIGEST after SINCE."""
    uri = reg.cdn_blob_url(digest)[len(reg.cdn_url):]
    return [e for e in reg.cdn_log_entries(since=since) if e["uri"].split("?")[0] == uri]


def mount_blob_entries(reg, digest, since, m, started_after=0.0):
    """CDN log entries for blob DIGEST that mount M asked for: those after
    SINCE that started (by the CDN's clock) at or after STARTED_AFTER, a
    time.time() value. Waits until nginx has logged every GET that M's debug
    log shows: a rate-limited request is logged when nginx next wakes for it,
    which can be after its client has gone, or has all the bytes it needs."""
    get = re.compile(r"debug: GET " + re.escape(reg.cdn_blob_url(digest)) + r" ")
    asked = sum(1 for line in m.log_text().splitlines() if get.search(line))

    def entries():
        return [e for e in blob_uri_entries(reg, digest, since)
                if e["time"] - e["request_time"] >= started_after]
    wait_for(lambda: len(entries()) >= asked, timeout=10, interval=0.2)
    found = entries()
    assert len(found) == asked, \
        f"the CDN logged {len(found)} requests for the blob where the mount sent {asked}"
    return found


def cut_slack(m):
    """(cuts, slack): how many requests mount M cut short or restarted, and
    the bytes the CDN may have sent for nothing because of them. A cut request
    wastes what was in flight past the cut: at most the rest of one request
    (16 MiB), and 2 MiB for the requests the read's end abandons."""
    cuts = len(m.log_lines(r"splitting bytes|restarting a slow range"))
    return cuts, 2 * MiB + cuts * 16 * MiB


def union_bytes(spans):
    """Bytes covered by at least one of SPANS ([start, end) pairs)."""
    total, reach = 0, 0
    for start, end in sorted(spans):
        start = max(start, reach)
        if end > start:
            total += end - start
            reach = end
    return total


def overlapping_bytes(spans):
    """Bytes covered by more than one of SPANS ([start, end) pairs)."""
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    depth, last, overlap = 0, None, 0
    for pos, delta in events:
        if depth > 1 and last is not None:
            overlap += (pos - last) * (depth - 1)
        depth += delta
        last = pos
    return overlap


def getxattr(path, name):
    return os.getxattr(path, name).decode()


# ================================================================ 1. the tree


def test_a_listing_gives_each_file_the_blocks_it_has_local(registry, run_blobfs, store, mount,
                                                           tmp_path, blob_cache):
    """READDIRPLUS answers attributes with the names (ls -l needs no GETATTR):
    the st_blocks in them is what is local, though it is worked out after the
    index lock is dropped."""
    model = small_model(tmp_path / "m", blob_cache, 131, size=3 * MiB + 5)
    push_model(registry, REPO, "latest", model)
    pull(run_blobfs, store, model_name(registry), lazy=False)
    m = mount()
    tdir = tag_dir(m.path, registry.host)
    listed = {e.name: e.stat().st_blocks for e in os.scandir(tdir)}
    for fname, blob in (("model", model.layers[0]), ("template", model.layers[1])):
        assert listed[fname] == -(-blob.size // 512), f"{fname}: {listed[fname]} blocks listed"
    out = run(["ls", "-1s", "--block-size=512", tdir], timeout=20, check=True).stdout
    sizes = dict(reversed(line.split(None, 1)) for line in out.splitlines()[1:])
    assert int(sizes["model"]) == -(-model.layers[0].size // 512), out


def test_tree_sizes_du_xattrs_links_and_manifest(registry, run_blobfs, store, mount, tmp_path,
                                                 blob_cache):
    layers = [
        (OLLAMA_MODEL, 4 * MiB, 101),
        (OLLAMA_TEMPLATE, b"{{ .System }} {{ .Prompt }}"),
        (OLLAMA_PARAMS, b'{"stop":["</s>"],"temperature":0.7}'),
        (OLLAMA_SYSTEM, b"You are a test."),
        (OLLAMA_LICENSE, b"MIT License\n"),
        (OLLAMA_LICENSE, b"Apache License 2.0\n"),
        (OLLAMA_PROJECTOR, 64 * 1024, 102),
    ]
    model = make_model(tmp_path, layers, names={6: "mmproj.gguf"}, cache_dir=blob_cache)
    push_model(registry, REPO, "latest", model)
    pull(run_blobfs, store, model_name(registry))
    host = registry.host
    expected = {
        "config.json": model.config, "model": model.layers[0], "template": model.layers[1],
        "params": model.layers[2], "system": model.layers[3], "license": model.layers[4],
        "license.1": model.layers[5], "mmproj.gguf": model.layers[6],
    }
    m = mount()
    mnt = m.path

    # ls at every level
    assert sorted(os.listdir(mnt)) == ["blobs", "manifests", "models"]
    assert os.listdir(mnt / "models") == [host]
    assert os.listdir(mnt / "models" / host) == ["library"]
    assert os.listdir(mnt / "models" / host / "library") == ["x"]
    assert os.listdir(mnt / "models" / host / "library" / "x") == ["latest"]
    tdir = tag_dir(mnt, host)
    assert sorted(os.listdir(tdir)) == sorted([*expected, "manifest.json"])
    assert sorted(os.listdir(mnt / "blobs")) == sorted(blob_name(b.digest) for b in model.blobs)
    assert os.listdir(mnt / "manifests") == [host]
    assert os.listdir(mnt / "manifests" / host / "library" / "x") == ["latest"]
    ls = run(["ls", "-lR", mnt], timeout=20, check=True)
    assert "mmproj.gguf" in ls.stdout
    # files ask for 1 MiB reads; directories for small listing buffers, which
    # the kernel allocates for every READDIRPLUS (bench/RESULTS.md, ls -lR)
    assert os.stat(tdir / "model").st_blksize == MiB
    assert [os.stat(d).st_blksize for d in (mnt, tdir, mnt / "blobs")] == [4096] * 3

    # sizes before anything is fetched; nothing local yet
    for fname, blob in expected.items():
        st = os.stat(tdir / fname)
        assert stat.S_ISREG(st.st_mode), fname
        assert st.st_size == blob.size, f"{fname}: st_size {st.st_size}, blob has {blob.size}"
    model_file = tdir / "model"
    layer = model.layers[0]
    assert os.stat(model_file).st_blocks == 0
    assert run(["du", "-B1", model_file], check=True).stdout.split()[0] == "0"
    assert not store_blob(store, layer.digest).exists()

    # xattrs, with getfattr
    out = run(["getfattr", "-d", "-m", "-", "--absolute-names", model_file], check=True).stdout
    assert f'user.blobfs.digest="{layer.digest}"' in out, out
    assert 'user.blobfs.cached="0"' in out, out
    only = run(["getfattr", "--only-values", "-n", "user.blobfs.digest", model_file], check=True)
    assert only.stdout == layer.digest

    # hard links: same inode under models/ and blobs/, and a link count that says so
    for fname, blob in expected.items():
        a, b = os.stat(tdir / fname), os.stat(mnt / "blobs" / blob_name(blob.digest))
        assert a.st_ino == b.st_ino, f"{fname} and blobs/{blob_name(blob.digest)} differ in st_ino"
        assert a.st_nlink >= 2, f"{fname} is hard-linked from blobs/ but has st_nlink {a.st_nlink}"
        assert os.path.samefile(tdir / fname, mnt / "blobs" / blob_name(blob.digest))

    # manifests/... is the stored manifest, and the same file as manifest.json
    stored = store_manifest(store, host).read_bytes()
    assert stored == model.manifest_bytes
    assert (mount_manifest(mnt, host)).read_bytes() == stored
    assert (tdir / "manifest.json").read_bytes() == stored
    assert os.stat(mount_manifest(mnt, host)).st_size == len(stored)
    assert os.stat(mount_manifest(mnt, host)).st_ino == os.stat(tdir / "manifest.json").st_ino

    # timestamps stable across two stats (past the 1 s attribute timeout)
    paths = [mnt, mnt / "models", tdir, model_file, tdir / "config.json", tdir / "manifest.json",
             mount_manifest(mnt, host), mnt / "blobs" / blob_name(layer.digest)]
    times = lambda: {str(p): (os.stat(p).st_mtime_ns, os.stat(p).st_ctime_ns,  # noqa: E731
                              os.stat(p).st_atime_ns) for p in paths}
    first = times()
    time.sleep(1.2)
    assert times() == first, "timestamps changed between two stats"

    # small files read right; the model read in full fills du and the cached count
    for fname, blob in expected.items():
        assert (tdir / fname).read_bytes() == blob.read_bytes(), f"{fname} has wrong bytes"
    time.sleep(1.1)  # attribute timeout
    st = os.stat(model_file)
    assert st.st_blocks * 512 == layer.size, \
        f"after reading all {layer.size} bytes st_blocks is {st.st_blocks}"
    assert run(["du", "-B1", model_file], check=True).stdout.split()[0] == str(layer.size)
    assert getxattr(model_file, "user.blobfs.cached") == str(layer.size)
    assert getxattr(mnt / "blobs" / blob_name(layer.digest), "user.blobfs.cached") == str(layer.size)
    after = times()
    assert {p: t[:2] for p, t in after.items()} == {p: t[:2] for p, t in first.items()}, \
        "mtime/ctime changed after reading"


# ================================================================ 2. cat a big file


@pytest.mark.slow
def test_cat_big_file_hash_and_cmp_then_blob_committed(registry, run_blobfs, store, mount,
                                                       tmp_path, blob_cache):
    model = big_model(tmp_path, blob_cache)
    layer = model.layer(OLLAMA_MODEL)
    push_model(registry, REPO, "latest", model)
    pull(run_blobfs, store, model_name(registry))
    m = mount()
    path = tag_dir(m.path, registry.host) / "model"

    cat = run(["sh", "-c", 'cat "$1" | sha256sum', "sh", path], timeout=90)
    assert cat.returncode == 0, cat.stderr
    assert "sha256:" + cat.stdout.split()[0] == layer.digest, "cat | sha256sum differs from the source"
    cmp = run(["cmp", path, layer.path], timeout=60)
    assert cmp.returncode == 0, f"cmp: {cmp.stdout}{cmp.stderr}"

    blob = store_blob(store, layer.digest)
    assert wait_for(lambda: blob.is_file() and blob.stat().st_size == layer.size
                    and partial_files(store) == [], timeout=5), \
        f"5 s after the read: blobs/{blob.name} exists={blob.exists()}, " \
        f"partial={partial_files(store)}"
    assert sha256_file(blob) == layer.digest, "the committed blob does not hash to its name"
    assert getxattr(path, "user.blobfs.cached") == str(layer.size)


# ================================================================ 3. random preads


@pytest.mark.slow
def test_random_preads_fetch_little(cdn_registry, run_blobfs, store, mount, tmp_path, blob_cache):
    reg = cdn_registry
    model = big_model(tmp_path, blob_cache)
    layer = model.layer(OLLAMA_MODEL)
    push_model(reg, REPO, "latest", model)
    pull(run_blobfs, store, model_name(reg))
    mark = reg.cdn_log_mark()
    m = mount()
    path = tag_dir(m.path, reg.host) / "model"

    rng = random.Random(2024)
    offsets = [rng.randrange(0, layer.size - 4096) for _ in range(50)]
    fd = os.open(path, os.O_RDONLY)
    try:
        with open(layer.path, "rb") as src:
            for off in offsets:
                got = os.pread(fd, 4096, off)
                src.seek(off)
                assert got == src.read(4096), f"pread of 4096 bytes at {off} returned wrong bytes"
    finally:
        os.close(fd)

    time.sleep(2)  # would-be background completion has had time to show
    cached = int(getxattr(path, "user.blobfs.cached"))
    sent = reg.cdn_bytes_sent(since=mark)
    print(f"CDN sent {sent} bytes; user.blobfs.cached {cached}")
    assert sent < layer.size // 10, \
        f"50 random 4 KiB preads made the CDN send {sent} bytes ({100 * sent / layer.size:.1f}% " \
        f"of the {layer.size} byte blob)"
    assert 50 * 4096 <= cached < layer.size // 10, f"user.blobfs.cached is {cached}"
    assert not store_blob(store, layer.digest).exists()


# ================================================================ 4. mmap


def test_mmap_shared_and_private(registry, run_blobfs, store, mount, mmap_probe, tmp_path,
                                 blob_cache):
    model = big_model(tmp_path, blob_cache, size=32 * MiB, seed=41)
    layer = model.layer(OLLAMA_MODEL)
    push_model(registry, REPO, "latest", model)
    pull(run_blobfs, store, model_name(registry))
    m = mount()
    path = tag_dir(m.path, registry.host) / "model"
    rng = random.Random(7)
    length = 64

    def expect(offsets):
        return {str(off): source_bytes(layer.path, off, length).hex() for off in offsets}

    for kind in ("shared", "private"):
        offsets = sorted(rng.randrange(0, layer.size - length) for _ in range(20))
        offsets += [0, layer.size - length]
        got = python_json(PY_MMAP, path, kind, length, *offsets, timeout=60)
        assert got == expect(offsets), f"Python mmap ({kind}) returned wrong bytes"

    offsets = sorted(rng.randrange(0, layer.size - length) for _ in range(20)) + [layer.size - length]
    result = run([mmap_probe, path, length, *offsets], timeout=60)
    assert result.returncode == 0, result.stderr
    want = expect(offsets)
    got = {}
    for line in result.stdout.splitlines():
        kind, off, hexbytes = line.split()
        got.setdefault(kind, {})[off] = hexbytes
    assert got == {"shared": want, "private": want}, "C mmap probe read wrong bytes"

    # the private mapping's write did not reach the file
    assert sha256_file(path) == layer.digest


# ================================================================ 4b. engines' reads

# mmap the whole file MAP_SHARED | MAP_POPULATE (as llama.cpp does), then
# madvise(WILLNEED); prints the mapping's sha256. A failed fault kills it (SIGBUS).
PY_POPULATE = r"""
import hashlib, json, mmap, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
t0 = time.monotonic()
m = mmap.mmap(fd, 0, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE, prot=mmap.PROT_READ)
m.madvise(mmap.MADV_WILLNEED)
print(json.dumps({"sha": "sha256:" + hashlib.sha256(m).hexdigest(),
                  "elapsed": time.monotonic() - t0}))
"""


def resident_map(path):
    """Per page of PATH: is it in the page cache?"""
    fd = os.open(path, os.O_RDONLY)
    try:
        return resident_pages(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def read_front(path, nbytes, piece=MiB):
    """read() the first NBYTES of PATH in order, as a loader reading a file would."""
    with open(path, "rb", buffering=0) as f:
        done = 0
        while done < nbytes:
            got = f.read(min(piece, nbytes - done))
            assert got, f"{path} ended after {done} bytes"
            done += len(got)


def vm_hwm_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


def test_map_populate_through_a_cold_mount_gives_the_blobs_bytes(cdn_registry, run_blobfs, store,
                                                                  mount, tmp_path, blob_cache):
    model = big_model(tmp_path, blob_cache, size=64 * MiB, seed=44)
    layer = model.layer(OLLAMA_MODEL)
    push_model(cdn_registry, REPO, "latest", model)
    pull(run_blobfs, store, model_name(cdn_registry))
    m = mount()
    path = tag_dir(m.path, cdn_registry.host) / "model"
    got = python_json(PY_POPULATE, path, timeout=120)
    assert got["sha"] == layer.digest, "MAP_POPULATE through a cold mount mapped other bytes"
    blob = store_blob(store, layer.digest)
    assert wait_for(blob.is_file, timeout=10), f"not committed; partial: {partial_files(store)}"
    # and again from the mount's page cache, now that the blob is complete
    assert python_json(PY_POPULATE, path, timeout=60)["sha"] == layer.digest


def test_reader_killed_mid_populate_leaves_the_mount_healthy(capped_cdn_registry, run_blobfs,
                                                             store, mount, tmp_path, blob_cache):
    reg = capped_cdn_registry("2m")
    model = big_model(tmp_path, blob_cache, size=MID, seed=45)
    layer = model.layer(OLLAMA_MODEL)
    push_model(reg, REPO, "latest", model)
    pull(run_blobfs, store, model_name(reg))
    m = mount()
    path = tag_dir(m.path, reg.host) / "model"
    reader = subprocess.Popen([PYTHON, "-c", PY_POPULATE, str(path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    try:
        assert wait_for(lambda: int(getxattr(path, "user.blobfs.cached")) >= 8 * MiB,
                        timeout=20, interval=0.1), "the populate fetched nothing"
        assert reader.poll() is None, \
            "the populate finished before it could be killed: the cap is too loose"
        reader.kill()
        reader.wait(10)   # a fatal signal ends a fault waiting on a READ
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait(10)
    assert m.proc.poll() is None, "the daemon died with the reader:\n" + m.log()
    assert os.listdir(tag_dir(m.path, reg.host)), "the mount stopped answering"
    r = python_json(READ_ALL, path, timeout=120)
    assert r["ok"] and r["sha"] == layer.digest, f"a read after the killed populate: {r}"
    got = python_json(PY_POPULATE, path, timeout=60)
    assert got["sha"] == layer.digest, "a second populate after the killed one mapped other bytes"


# Map the file, advise MADV_RANDOM (no read-around: a fault is one synchronous
# READ of its page, which a signal interrupts), say so, then touch OFFSET.
PY_FAULT_ONE = r"""
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
m = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
m.madvise(mmap.MADV_RANDOM)
print("mapped", flush=True)
print(m[int(sys.argv[2])], flush=True)
"""


def test_reader_killed_waiting_on_a_fault_leaves_the_mount_healthy(fault_registry, run_blobfs,
                                                                   store, mount):
    """A reader killed while the page it faulted on waits for the network dies
    at once (the daemon answers the kernel's INTERRUPT), and leaves nothing
    stuck: the page reads correctly afterwards."""
    reg = fault_registry()
    data = random.Random(1014).randbytes(8 * MiB)
    _, (digest,) = reg.add_model(REPO, "latest", [(OLLAMA_MODEL, data)])
    pull(run_blobfs, store, model_name(reg))
    where = 5 * MiB + 4096
    reg.fault("stall", digest=digest, covers=where, seconds=60)
    m = mount("background=never", "stall_timeout=4")   # the stalled request, given up later
    path = tag_dir(m.path, reg.host) / "model"
    reader = subprocess.Popen([PYTHON, "-c", PY_FAULT_ONE, str(path), str(where)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "mapped"
        assert wait_for(lambda: reg.count(digest=digest, fault="stall") >= 1, timeout=10), \
            "the fault never reached the registry"
        time.sleep(0.5)
        assert reader.poll() is None, "the faulting reader ended before it could be killed"
        reader.kill()
        try:
            reader.wait(5)
        except subprocess.TimeoutExpired:
            pytest.fail("a reader killed while its page fault waited on the network is still "
                        "alive 5 s later: its READ was never answered")
    finally:
        if reader.poll() is None:
            reader.kill()
    reg.clear_faults()
    assert m.proc.poll() is None, "the daemon died with the reader:\n" + m.log()
    r = python_json(PREAD_ONE, path, where, 4096, timeout=60)
    assert r["ok"] and bytes.fromhex(r["hex"]) == data[where:where + 4096], \
        f"the page the killed reader waited on, read again: {r}"
    got = run([PYTHON, "-c", PY_FAULT_ONE, path, where], timeout=60)
    assert got.stdout.split() == ["mapped", str(data[where])], \
        f"the page, faulted again: {got.stdout!r} (exit {got.returncode})"


def test_a_complete_blob_is_pushed_ahead_of_a_sequential_reader(registry, run_blobfs, store,
                                                                mount, tmp_path, blob_cache):
    """Once a reader of a complete blob has read a few MiB in order, the bytes
    ahead of it go into the mount's page cache before it asks (and are the
    blob's bytes); the daemon stays small while it pushes."""
    size = BIG
    model = big_model(tmp_path, blob_cache, size=size, seed=46)
    layer = model.layer(OLLAMA_MODEL)
    push_model(registry, REPO, "latest", model)
    pull(run_blobfs, store, model_name(registry), lazy=False)
    m = mount()
    path = tag_dir(m.path, registry.host) / "model"
    read_front(path, 8 * MiB)
    # Kernel read-ahead covers a few MiB past the reader; pushing goes further.
    far = 40 * MiB // os.sysconf("SC_PAGE_SIZE")

    def pushed():
        return sum(resident_map(path)[far:]) * os.sysconf("SC_PAGE_SIZE")

    assert wait_for(lambda: pushed() >= 64 * MiB, timeout=10, interval=0.1), \
        f"only {pushed()} bytes past 40 MiB are in the page cache 10 s after a reader read " \
        f"the first 8 MiB of a complete {size}-byte blob"
    got = python_json(PY_POPULATE, path, timeout=60)
    assert got["sha"] == layer.digest, "bytes pushed into the page cache are not the blob's"
    hwm = vm_hwm_kib(m.proc.pid)
    assert hwm < 64 * 1024, f"the daemon's peak RSS is {hwm} KiB after pushing {size} bytes"


def test_a_blob_not_yet_verified_is_never_pushed(fault_registry, run_blobfs, store, mount):
    """Bytes of a blob still being fetched are not pushed ahead of a reader:
    only a READ hands them out, and once the blob fails verification every
    reader, a mapping too, gets an error, never its bytes."""
    reg = fault_registry()
    size = 48 * MiB
    data = random.Random(1012).randbytes(size)
    _, (digest,) = reg.add_model(REPO, "latest", [(OLLAMA_MODEL, data)])
    pull(run_blobfs, store, model_name(reg))
    # The blob stays partial (unverified) for a while after the reader: the
    # first two requests for the bytes at 36 MiB hold back their bodies (the
    # mount gives up on each after a few seconds and asks again), the third
    # is corrupt at the end. Pushers answer a reader within milliseconds, so
    # if partial blobs were pushed, bytes past 24 MiB would be in the page
    # cache when it is looked at.
    reg.fault("stall", digest=digest, covers=36 * MiB, seconds=30, times=2)
    reg.fault("corrupt", digest=digest, offset=size - 17)
    m = mount("no_chunksums", "background=always")
    path = tag_dir(m.path, reg.host) / "model"
    page = os.sysconf("SC_PAGE_SIZE")

    def beyond():
        return sum(resident_map(path)[24 * MiB // page:]) * page

    # One reader, in file order: 4 MiB (fetched for it), then, once the
    # background fetch has brought more, on to 16 MiB: READs answered from
    # local bytes, as those of a complete blob are before it is pushed.
    with open(path, "rb", buffering=0) as f:
        assert len(f.read(4 * MiB)) == 4 * MiB
        assert wait_for(lambda: int(getxattr(path, "user.blobfs.cached")) >= 20 * MiB,
                        timeout=3, interval=0.05), "the background fetch brought nothing"
        for _ in range(12):
            assert len(f.read(MiB)) == MiB
        time.sleep(1.0)
        ahead = beyond()     # while the rest is still being fetched
        partial = not quarantine_files(store) and not store_blob(store, digest).exists()
    assert partial, "the blob was no longer partial when the page cache was looked at: " \
        f"the stalls were too short: {reg.requests(digest=digest)}"
    assert wait_for(lambda: quarantine_files(store) != [], timeout=30), \
        f"the corrupt blob was not quarantined; partial: {partial_files(store)}"
    assert ahead == 0 and beyond() == 0, \
        f"bytes past 24 MiB of a blob not yet verified are in the mount's page cache: " \
        f"{ahead} before, {beyond()} after it failed verification"
    r = python_json(READ_ALL, path, timeout=60)
    assert not r["ok"] and r["errno"] == errno.EIO, f"a read after the failure: {r}"
    # A mapping's reader dies of SIGBUS at its first page. (MAP_POPULATE gets
    # there too, after the kernel has tried, and failed, every page in turn.)
    touch = run([PYTHON, "-c", "import mmap, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); "
                 "print(mmap.mmap(fd, 0, prot=mmap.PROT_READ)[0])", path], timeout=60)
    assert touch.returncode == -signal.SIGBUS, \
        f"a mapping of a blob that failed verification gave {touch.stdout!r} " \
        f"(exit {touch.returncode})"


# ================================================================ 5. concurrent readers


@pytest.mark.slow
def test_16_concurrent_readers_one_download(cdn_registry, run_blobfs, store, mount, tmp_path,
                                            blob_cache):
    reg = cdn_registry
    model = big_model(tmp_path, blob_cache, size=MID, seed=0)
    layer = model.layer(OLLAMA_MODEL)
    push_model(reg, REPO, "latest", model)
    pull(run_blobfs, store, model_name(reg))
    mark = reg.cdn_log_mark()
    m = mount()
    path = tag_dir(m.path, reg.host) / "model"

    readers = []
    for i in range(16):
        start = (i * layer.size // 16) // 4096 * 4096 if i % 2 else 0
        readers.append(children.start([PYTHON, "-c", ROTATED_READ, path, layer.path, start, MiB]))
    results = [json.loads(children.ok(result).stdout)
               for result in children.finish_all(readers, 90, "16 concurrent readers")]
    for i, r in enumerate(results):
        assert r["error"] is None, f"reader {i} failed: errno {r['error']}"
        assert r["nbad"] == 0 and r["total"] == layer.size, f"reader {i}: {r}"

    entries = mount_blob_entries(reg, layer.digest, mark, m)
    body = sum(e["body_bytes_sent"] for e in entries)
    spans = [range_span(e["range"], layer.size) for e in entries if e["status"] in (200, 206)]
    overlap = overlapping_bytes(spans)
    # A request is cut for a reader waiting deep inside it, or restarted for
    # being slow; on a loaded machine that happens a few times.
    cuts, slack = cut_slack(m)
    print(f"{len(entries)} CDN requests, {body} body bytes, {overlap} overlapping, {cuts} cuts")
    assert cuts <= 8, f"{cuts} requests were cut or restarted for 16 readers of one blob"
    assert body <= layer.size + slack, \
        f"the CDN sent {body} body bytes for a {layer.size} byte blob read by 16 readers " \
        f"({len(entries)} requests, {overlap} bytes requested more than once, {cuts} cuts)"
    assert overlap <= slack, f"{overlap} bytes of the blob were requested more than once ({cuts} cuts)"


# ================================================================ 6. rm


def _rm_setup(registry, run_blobfs, store, tmp_path, blob_cache):
    """x:latest and x:v2 share the template; y:latest; z:a and z:b. All pulled in full."""
    models = {
        ("library/x", "latest"): small_model(tmp_path / "xl", blob_cache, 61),
        ("library/x", "v2"): small_model(tmp_path / "xv", blob_cache, 62),
        ("library/y", "latest"): small_model(tmp_path / "yl", blob_cache, 63, template=b"y"),
        ("library/z", "a"): small_model(tmp_path / "za", blob_cache, 64, template=b"za"),
        ("library/z", "b"): small_model(tmp_path / "zb", blob_cache, 65, template=b"zb"),
    }
    for (repo, tag), model in models.items():
        push_model(registry, repo, tag, model)
    pull(run_blobfs, store, *(model_name(registry, r, t) for r, t in models), lazy=False)
    for model in models.values():
        for blob in model.blobs:
            assert store_blob(store, blob.digest).is_file()
    return models


def _assert_gone(store, host, models, repo, tag, keep_digests):
    model = models[(repo, tag)]
    assert not store_manifest(store, host, repo, tag).exists(), \
        f"{repo}:{tag}'s manifest is still in the store"
    for blob in model.blobs:
        path = store_blob(store, blob.digest)
        if blob.digest in keep_digests:
            assert path.is_file(), f"blob {path.name}, still used by another tag, was removed"
        else:
            assert not path.exists(), f"blob {path.name}, used only by {repo}:{tag}, was kept"


def _digests(models, *keys):
    return {b.digest for k in keys for b in models[k].blobs}


# Each rm test runs twice: with the default mount, where a later lookup of the
# removed path must not bring the tag back (discovery is for tags the store
# never had, not for undoing a removal), and with -o nodiscover, which checks
# the removal alone. The checks right after rm use readdir (which never
# discovers); the lookups come after them, then the store is checked again.
DISCOVERY_MODES = pytest.mark.parametrize("options", [(), ("nodiscover",)],
                                          ids=["default", "nodiscover"])


def _assert_lookup_fails(path, store, host, repo, tag):
    """A lookup of removed PATH gives ENOENT and does not put the tag back in the store."""
    exists = path.exists()
    back = store_manifest(store, host, repo, tag).exists()
    assert not exists and not back, \
        f"after the removal, a lookup of {path} found it (exists={exists}) and the tag's " \
        f"manifest is {'back' if back else 'not back'} in the store"


@DISCOVERY_MODES
def test_rm_r_tag_dir_removes_the_tag(registry, run_blobfs, store, mount, tmp_path, blob_cache,
                                      options):
    models = _rm_setup(registry, run_blobfs, store, tmp_path, blob_cache)
    host = registry.host
    m = mount(*options)
    xl = models[("library/x", "latest")]
    assert xl.layers[1].digest == models[("library/x", "v2")].layers[1].digest
    xdir = m.path / "models" / host / "library" / "x"
    assert sorted(os.listdir(xdir)) == ["latest", "v2"]

    result = run(["rm", "-r", tag_dir(m.path, host)], timeout=20)
    assert result.returncode == 0, result.stderr
    assert os.listdir(xdir) == ["v2"]
    assert os.listdir(m.path / "manifests" / host / "library" / "x") == ["v2"]
    assert blob_name(xl.layers[0].digest) not in os.listdir(m.path / "blobs")
    others = [k for k in models if k != ("library/x", "latest")]
    _assert_gone(store, host, models, "library/x", "latest", _digests(models, *others))
    for repo, tag in others:
        assert store_manifest(store, host, repo, tag).is_file()

    _assert_lookup_fails(tag_dir(m.path, host), store, host, "library/x", "latest")
    _assert_lookup_fails(mount_manifest(m.path, host), store, host, "library/x", "latest")
    # the other tag still reads right, shared template included
    v2 = tag_dir(m.path, host, tag="v2")
    assert (v2 / "template").read_bytes() == xl.layers[1].read_bytes()
    assert (v2 / "model").read_bytes() == models[("library/x", "v2")].layers[0].read_bytes()
    _assert_gone(store, host, models, "library/x", "latest", _digests(models, *others))


@DISCOVERY_MODES
def test_rm_manifest_file_removes_the_tag(registry, run_blobfs, store, mount, tmp_path, blob_cache,
                                          options):
    models = _rm_setup(registry, run_blobfs, store, tmp_path, blob_cache)
    host = registry.host
    m = mount(*options)

    result = run(["rm", mount_manifest(m.path, host, "library/y")], timeout=20)
    assert result.returncode == 0, result.stderr
    # y had one tag: its directories go with it
    assert sorted(os.listdir(m.path / "models" / host / "library")) == ["x", "z"]
    assert sorted(os.listdir(m.path / "manifests" / host / "library")) == ["x", "z"]
    others = [k for k in models if k != ("library/y", "latest")]
    _assert_gone(store, host, models, "library/y", "latest", _digests(models, *others))
    for repo, tag in others:
        assert store_manifest(store, host, repo, tag).is_file()

    _assert_lookup_fails(mount_manifest(m.path, host, "library/y"), store, host, "library/y",
                         "latest")
    _assert_lookup_fails(tag_dir(m.path, host, "library/y"), store, host, "library/y", "latest")


@DISCOVERY_MODES
def test_rm_r_name_dir_removes_all_its_tags(registry, run_blobfs, store, mount, tmp_path,
                                            blob_cache, options):
    models = _rm_setup(registry, run_blobfs, store, tmp_path, blob_cache)
    host = registry.host
    m = mount(*options)
    library = m.path / "models" / host / "library"

    result = run(["rm", "-r", library / "z"], timeout=20)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(library)) == ["x", "y"]
    assert sorted(os.listdir(m.path / "manifests" / host / "library")) == ["x", "y"]
    others = [k for k in models if k[0] != "library/z"]
    for tag in ("a", "b"):
        _assert_gone(store, host, models, "library/z", tag, _digests(models, *others))
    for repo, tag in others:
        assert store_manifest(store, host, repo, tag).is_file()

    if "nodiscover" in options:  # with discovery, any name dir can be looked up (never listed)
        assert not (library / "z").exists()
    for tag in ("a", "b"):
        _assert_lookup_fails(tag_dir(m.path, host, "library/z", tag), store, host, "library/z", tag)
        _assert_lookup_fails(mount_manifest(m.path, host, "library/z", tag), store, host,
                             "library/z", tag)


# ================================================================ 7. discovery


def test_discovery_of_a_tag_pushed_after_mounting(registry, run_blobfs, store, mount, tmp_path,
                                                  blob_cache):
    m = mount()
    host = registry.host
    model = small_model(tmp_path / "n", blob_cache, 71, size=3 * MiB)
    push_model(registry, "library/newmodel", "newtag", model)

    tdir = tag_dir(m.path, host, "library/newmodel", "newtag")
    assert sorted(os.listdir(tdir)) == ["config.json", "manifest.json", "model", "template"]
    assert (tdir / "model").read_bytes() == model.layers[0].read_bytes()
    assert (tdir / "template").read_bytes() == model.layers[1].read_bytes()
    assert store_manifest(store, host, "library/newmodel", "newtag").read_bytes() \
        == model.manifest_bytes
    assert "newtag" in os.listdir(m.path / "models" / host / "library" / "newmodel")

    # through manifests/ as well
    push_model(registry, "library/newmodel", "other", model)
    assert mount_manifest(m.path, host, "library/newmodel", "other").read_bytes() \
        == model.manifest_bytes

    # a tag the registry lacks
    with pytest.raises(FileNotFoundError):
        os.stat(tag_dir(m.path, host, "library/newmodel", "nosuchtag"))
    with pytest.raises(FileNotFoundError):
        os.listdir(tag_dir(m.path, host, "library/nosuchmodel", "latest"))
    assert not store_manifest(store, host, "library/newmodel", "nosuchtag").exists()


def test_nodiscover_does_not_look_up_the_registry(registry, run_blobfs, store, mount, tmp_path,
                                                  blob_cache):
    model = small_model(tmp_path / "n", blob_cache, 72)
    push_model(registry, "library/newmodel", "newtag", model)
    m = mount("nodiscover")
    mark = registry.registry_log_mark()
    with pytest.raises(FileNotFoundError):
        os.stat(tag_dir(m.path, registry.host, "library/newmodel", "newtag"))
    with pytest.raises(FileNotFoundError):
        os.stat(mount_manifest(m.path, registry.host, "library/newmodel", "newtag"))
    assert not store_manifest(store, registry.host, "library/newmodel", "newtag").exists()
    asked = [e for e in registry.registry_log_entries(since=mark) if "/manifests/" in e["uri"]]
    assert asked == [], f"with -o nodiscover the registry was asked: {asked}"


# ================================================================ 8. another process


def test_tags_pulled_and_removed_by_another_process_show_up(registry, run_blobfs, store, mount,
                                                            tmp_path, blob_cache):
    host = registry.host
    model = small_model(tmp_path / "n", blob_cache, 81, size=2 * MiB)
    push_model(registry, REPO, "latest", model)
    # nodiscover: what appears can only come from watching the store
    m = mount("nodiscover")
    tdir = tag_dir(m.path, host)
    assert not tdir.exists()

    pull(run_blobfs, store, model_name(registry))
    t0 = time.monotonic()
    appeared = wait_for(lambda: tdir.is_dir(), timeout=5, interval=0.1)
    took = time.monotonic() - t0
    assert appeared, "a tag pulled by another process did not appear within 5 s"
    assert took <= 1.0, f"a tag pulled by another process took {took:.1f}s to appear"
    assert "latest" in os.listdir(m.path / "models" / host / "library" / "x")
    assert sorted(os.listdir(tdir)) == ["config.json", "manifest.json", "model", "template"]
    assert (tdir / "model").read_bytes() == model.layers[0].read_bytes()

    result = run_blobfs(["rm", model_name(registry)], store=store, timeout=20)
    assert result.returncode == 0, result.stderr
    t0 = time.monotonic()
    gone = wait_for(lambda: not tdir.exists() and not mount_manifest(m.path, host).exists(),
                    timeout=5, interval=0.1)
    took = time.monotonic() - t0
    assert gone, "a tag removed by another process was still there 5 s later"
    assert took <= 1.0, f"a tag removed by another process took {took:.1f}s to disappear"


def test_listings_the_kernel_keeps_follow_every_change(registry, run_blobfs, store, mount,
                                                      tmp_path, blob_cache):
    """The kernel caches listings (no opendir): each way a directory can change
    must reach it, not only the first listing after mounting."""
    host = registry.host
    model = small_model(tmp_path / "n", blob_cache, 82, size=MiB)
    for tag in ("latest", "other"):
        push_model(registry, REPO, tag, model)
    push_model(registry, "library/w", "latest", model)
    pull(run_blobfs, store, model_name(registry))
    m = mount()
    library = m.path / "models" / host / "library"
    xdir = library / "x"
    mx = m.path / "manifests" / host / "library" / "x"

    def listed(path):
        return sorted(os.listdir(path))

    def within(seconds, path, want, what):
        t0 = time.monotonic()
        ok = wait_for(lambda: listed(path) == want, timeout=5, interval=0.05)
        took = time.monotonic() - t0
        assert ok, f"{what}: {path} lists {listed(path)}, not {want}, 5 s later"
        assert took <= seconds, f"{what}: the listing of {path} took {took:.1f}s to change"

    for _ in range(2):          # the second listing of each comes from the kernel's cache
        assert listed(library) == ["x"]
        assert listed(xdir) == ["latest"]
        assert listed(mx) == ["latest"]

    # another process pulls a tag: the store is watched
    pull(run_blobfs, store, model_name(registry, tag="other"))
    within(1.0, xdir, ["latest", "other"], "a tag pulled by another process")
    within(0.5, mx, ["latest", "other"], "the same tag under manifests/")

    # discovery adds a model while looking it up
    assert (tag_dir(m.path, host, "library/w") / "model").stat().st_size == MiB
    within(0.5, library, ["w", "x"], "a discovered model")

    # removing a tag through one path changes the other at once
    os.unlink(mount_manifest(m.path, host, tag="other"))
    assert listed(xdir) == ["latest"], "rm of manifests/.../other left it in models/"
    result = run(["rm", "-r", tag_dir(m.path, host)], timeout=20)
    assert result.returncode == 0, result.stderr
    assert listed(m.path / "manifests" / host / "library") == ["w"], \
        "rm -r of models/.../x/latest left x in manifests/"
    assert listed(library) == ["w"]

    # another process removes a tag
    result = run_blobfs(["rm", model_name(registry, "library/w")], store=store, timeout=20)
    assert result.returncode == 0, result.stderr
    within(1.0, m.path / "models" / host, [], "a tag removed by another process")


# ================================================================ 9. kill -9 and resume


@pytest.mark.slow
def test_kill_9_mid_read_then_remount_resumes(capped_cdn_registry, run_blobfs, store, mount,
                                              tmp_path, blob_cache):
    reg = capped_cdn_registry("2m")
    model = big_model(tmp_path, blob_cache, size=MID, seed=0)
    layer = model.layer(OLLAMA_MODEL)
    push_model(reg, REPO, "latest", model)
    pull(run_blobfs, store, model_name(reg))
    mark = reg.cdn_log_mark()
    mapfile = Path(store) / ".blobfs" / "partial" / (blob_name(layer.digest) + ".map")

    m = mount()
    path = tag_dir(m.path, reg.host) / "model"
    reader = subprocess.Popen(["cat", str(path)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.monotonic()
        wait_for(lambda: int(getxattr(path, "user.blobfs.cached")) >= 8 * MiB, timeout=4,
                 interval=0.1)
        # let the periodic map save catch some progress
        first = mapfile.stat().st_mtime_ns if mapfile.exists() else None
        wait_for(lambda: mapfile.exists() and mapfile.stat().st_mtime_ns != first, timeout=2.5)
        time.sleep(max(0.0, 1.5 - (time.monotonic() - t0)))
        before_kill = int(getxattr(path, "user.blobfs.cached"))
        m.kill(signal.SIGKILL)
        m.proc.wait(10)
        killed_at = time.time()
    finally:
        try:
            reader.wait(10)
        except subprocess.TimeoutExpired:
            reader.kill()
            reader.wait(5)
        m.force_detach()
    assert not m.mounted()
    if before_kill >= layer.size or store_blob(store, layer.digest).exists():
        pytest.fail(f"the blob was complete before kill -9 ({before_kill} bytes): the cap "
                    "did not slow the read down enough to test resuming")
    assert mapfile.exists(), f"no chunk map in .blobfs/partial after kill -9: {partial_files(store)}"

    m2 = mount(path=m.path)
    path = tag_dir(m2.path, reg.host) / "model"
    kept = int(getxattr(path, "user.blobfs.cached"))
    r = python_json(READ_ALL, path, timeout=90)
    assert r["ok"], f"reading after remount failed: {r}"
    assert r["sha"] == layer.digest and r["offset"] == layer.size, r

    # Requests are told apart by when they started, not by where nginx logged
    # them: the killed mount's rate-limited requests can be logged after the
    # remount. What the second mount asked for is its requests' ranges; what
    # the CDN sent also counts bytes pushed into a socket past where a request
    # was cut, bounded per cut as for 16 readers.
    second = mount_blob_entries(reg, layer.digest, mark, m2, started_after=killed_at)
    first = [e for e in blob_uri_entries(reg, layer.digest, mark)
             if e["time"] - e["request_time"] < killed_at]
    asked = union_bytes(range_span(e["range"], layer.size) for e in second)
    sent_before = sum(e["body_bytes_sent"] for e in first)
    sent_after = sum(e["body_bytes_sent"] for e in second)
    info = (f"{before_kill} bytes local at kill -9, {kept} kept after remount; the CDN sent "
            f"{sent_before} before and {sent_after} after the remount ({asked} bytes asked "
            f"for), blob {layer.size}")
    print(info)
    assert kept > 0, "nothing of the interrupted read survived kill -9: " + info
    assert asked == layer.size - kept, \
        "the remounted read asked for bytes the chunk map had: " + info
    cuts, slack = cut_slack(m2)
    assert sent_after <= asked + slack, f"{cuts} requests cut after the remount: " + info
    assert sent_before + sent_after < 2 * layer.size, info
    blob = store_blob(store, layer.digest)
    assert wait_for(lambda: blob.is_file() and partial_files(store) == [], timeout=5), \
        f"after the full read: blobs/{blob.name} exists={blob.exists()}, partial={partial_files(store)}"
    assert sha256_file(blob) == layer.digest


def resident_pages(fd, length):
    """Per page of the first LENGTH bytes of open file FD: 1 if it is in the page
    cache (mincore on a mapping), else 0."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    page = os.sysconf("SC_PAGE_SIZE")
    addr = libc.mmap(None, length, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    assert addr not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
    try:
        vec = ctypes.create_string_buffer((length + page - 1) // page)
        assert libc.mincore(addr, length, vec) == 0, os.strerror(ctypes.get_errno())
        return [b & 1 for b in vec.raw]
    finally:
        libc.munmap(addr, length)


def resident_bytes(fd, length):
    """Bytes of the first LENGTH of open file FD that are in the page cache."""
    return sum(resident_pages(fd, length)) * os.sysconf("SC_PAGE_SIZE")


def test_what_readers_had_leaves_the_store_page_cache(cdn_registry, run_blobfs, store, mount,
                                                      tmp_path, blob_cache):
    """The mount's page cache holds what a reader read; the store's copy of it
    is dropped once durable, so a cold read does not fill memory twice."""
    reg = cdn_registry
    model = big_model(tmp_path, blob_cache, size=BIG, seed=0)
    layer = model.layer(OLLAMA_MODEL)
    push_model(reg, REPO, "latest", model)
    pull(run_blobfs, store, model_name(reg))
    partial = Path(store) / ".blobfs" / "partial" / blob_name(layer.digest)
    blob = store_blob(store, layer.digest)
    half = 64 * MiB             # the read-ahead window reaches at most 64 MiB further

    m = mount("background=never")
    path = tag_dir(m.path, reg.host) / "model"
    want = hashlib.sha256()
    got = hashlib.sha256()
    with open(path, "rb", buffering=0) as f, open(layer.path, "rb") as src:
        got.update(f.read(half))
        want.update(src.read(half))
        assert got.digest() == want.digest(), "the first 64 MiB read wrong"
        store_fd = os.open(partial, os.O_RDONLY)
        try:
            # Dropped after the next chunk map save (about a second), in steps
            # of 8 MiB; the read-ahead past `half` may still be cached.
            behind = half - 16 * MiB
            dropped = wait_for(lambda: resident_bytes(store_fd, behind) <= MiB, timeout=5)
            cached = resident_bytes(store_fd, behind)
            assert not blob.exists(), "the blob completed though nothing read most of it"
            assert dropped, (f"{cached} of the {behind} bytes readers had are still in the "
                             "store's page cache")
            rest = f.read()
            got.update(rest)
            want.update(src.read())
            assert got.digest() == want.digest() and len(rest) == layer.size - half
            assert wait_for(blob.is_file, timeout=10), "the blob was not committed"
            # At the commit all of it is durable: what readers had goes at once.
            gone = wait_for(lambda: resident_bytes(store_fd, layer.size) <= layer.size // 8,
                            timeout=5)
            assert gone, (f"{resident_bytes(store_fd, layer.size)} bytes of the committed "
                          f"{layer.size} byte blob are still cached after it was all read")
        finally:
            os.close(store_fd)
    # What was dropped is read back from the disk, correctly, by a second mount.
    m2 = mount()
    r = python_json(READ_ALL, tag_dir(m2.path, reg.host) / "model", timeout=60)
    assert r["ok"] and r["sha"] == layer.digest, r


# ================================================================ 10. corrupt blob


def test_corrupt_blob_gives_eio_and_is_quarantined(fault_registry, run_blobfs, store, mount):
    reg = fault_registry()
    data = random.Random(1010).randbytes(8 * MiB)
    _, (digest,) = reg.add_model(REPO, "latest", [(OLLAMA_MODEL, data)])
    pull(run_blobfs, store, model_name(reg))
    reg.fault("corrupt", digest=digest, offset=5 * MiB + 17)
    m = mount("no_chunksums")
    path = tag_dir(m.path, reg.host) / "model"

    def describe(r):
        if r["ok"]:
            return (f"read all {r['offset']} bytes without an error; they hash to {r['sha']}, "
                    f"not {digest}")
        return f"failed with {errno.errorcode.get(r['errno'], r['errno'])} at byte {r['offset']}"

    first = python_json(READ_ALL, path, timeout=60)
    print("first read:", describe(first))
    assert not first["ok"] and first["errno"] == errno.EIO, \
        "reading a blob the server corrupts (no chunksums) must fail with EIO at or before " \
        "its end; the first read " + describe(first)

    # once found corrupt, the blob stays unreadable: no one gets the bad bytes afterwards
    sent = reg.bytes_sent(digest=digest)
    again = python_json(READ_ALL, path, timeout=60)
    tail = python_json(PREAD_ONE, path, len(data) - 4096, 4096, timeout=60)
    served = (f" (the server sent {sent} bytes of the {len(data)} byte blob for the first read, "
              f"{reg.bytes_sent(digest=digest) - sent} more since)")
    assert not again["ok"] and again["errno"] == errno.EIO, \
        "a second read of the corrupt blob must fail with EIO; it " + describe(again) + served
    # ... at its first byte: what the first reader was handed (corrupt bytes
    # among them) must not stay in the mount's page cache for later readers.
    assert again["offset"] == 0, \
        f"a later reader got {again['offset']} bytes of the blob that failed verification " \
        "before its EIO"
    assert not tail["ok"] and tail["errno"] == errno.EIO, \
        f"a pread of the last 4 KiB of the corrupt blob must fail with EIO; it returned " \
        f"{len(tail.get('hex', '')) // 2} bytes" + served

    assert not store_blob(store, digest).exists(), "a corrupt blob was committed to blobs/"
    assert wait_for(lambda: quarantine_files(store) != [], timeout=5), \
        f"nothing in .blobfs/quarantine; partial: {partial_files(store)}"
    assert os.listdir(tag_dir(m.path, reg.host))  # the mount is still usable


# ================================================================ 11. read-only


def test_writes_fail_with_erofs_and_change_nothing(registry, run_blobfs, store, mount, tmp_path,
                                                   blob_cache):
    model = small_model(tmp_path / "n", blob_cache, 111)
    push_model(registry, REPO, "latest", model)
    pull(run_blobfs, store, model_name(registry), lazy=False)
    m = mount()
    host = registry.host
    tdir = tag_dir(m.path, host)
    f = tdir / "model"
    before = store_snapshot(store)
    mode_before = os.stat(f).st_mode
    listing = {str(p.relative_to(m.path)) for p in m.path.rglob("*")}
    ok_errnos = (errno.EROFS, errno.EACCES)

    def refuses(what, fn):
        with pytest.raises(OSError) as info:
            fn()
        assert info.value.errno in ok_errnos, \
            f"{what}: {os.strerror(info.value.errno)} instead of EROFS/EACCES"

    refuses("open for write", lambda: os.open(f, os.O_WRONLY))
    refuses("open read-write", lambda: os.open(f, os.O_RDWR))
    refuses("open for append", lambda: os.open(f, os.O_WRONLY | os.O_APPEND))
    refuses("open with O_TRUNC", lambda: os.open(f, os.O_RDONLY | os.O_TRUNC))
    refuses("create in a tag dir", lambda: os.open(tdir / "new", os.O_WRONLY | os.O_CREAT, 0o644))
    refuses("create in blobs/", lambda: os.open(m.path / "blobs" / "new",
                                                os.O_WRONLY | os.O_CREAT, 0o644))
    refuses("mknod", lambda: os.mknod(tdir / "fifo", 0o644 | stat.S_IFIFO))
    refuses("truncate", lambda: os.truncate(f, 0))
    refuses("chmod", lambda: os.chmod(f, 0o600))
    refuses("chown", lambda: os.chown(f, 1, 1))
    refuses("utime", lambda: os.utime(f, (0, 0)))
    refuses("rename a file", lambda: os.rename(f, tdir / "renamed"))
    refuses("rename a tag dir", lambda: os.rename(tdir, tdir.parent / "renamed"))
    refuses("mkdir in a tag dir", lambda: os.mkdir(tdir / "d"))
    refuses("mkdir at the top", lambda: os.mkdir(m.path / "d"))
    refuses("symlink", lambda: os.symlink("model", tdir / "link"))
    refuses("hard link", lambda: os.link(f, tdir / "link"))
    shell = run(["sh", "-c", 'echo x >> "$1"', "sh", f], timeout=10)
    assert shell.returncode != 0 and "Read-only file system" in shell.stderr, shell.stderr

    assert store_snapshot(store) == before, "a refused write changed the store"
    assert {str(p.relative_to(m.path)) for p in m.path.rglob("*")} == listing
    assert f.read_bytes() == model.layers[0].read_bytes()
    assert os.stat(f).st_mode == mode_before, "chmod changed the mode although it failed"


# ================================================================ 12. unsatisfiable read


@pytest.mark.parametrize("failure", ["always_500", "server_stopped"])
def test_unsatisfiable_read_fails_with_eio_promptly(fault_registry, run_blobfs, store, mount,
                                                    failure):
    reg = fault_registry()
    data = random.Random(1212).randbytes(2 * MiB)
    reg.add_model(REPO, "latest", [(OLLAMA_MODEL, data)])
    pull(run_blobfs, store, model_name(reg))
    host = reg.host
    if failure == "always_500":
        reg.fault("status", code=500)
    else:
        reg.stop()
    m = mount("read_timeout=5", global_args=["--retries", "2"])
    tdir = tag_dir(m.path, host)

    for attempt in range(2):
        r = python_json(PREAD_ONE, tdir / "model", 1000, 4096, timeout=40)
        assert not r["ok"] and r["errno"] == errno.EIO, f"read {attempt + 1}: {r}"
        assert r["elapsed"] <= 15, f"read {attempt + 1} took {r['elapsed']:.1f}s to fail"
    assert "model" in os.listdir(tdir)
    assert os.stat(tdir / "model").st_size == len(data)
    assert (tdir / "manifest.json").read_bytes() == store_manifest(store, host).read_bytes()
    assert m.proc.poll() is None, "the daemon exited"


# Reads [offset, offset + length) with O_DIRECT, so the kernel asks for
# exactly that; then the first 4 KiB again, as the kernel does after a
# read-ahead fails. Reports both outcomes and how long each took.
PREAD_THEN_FIRST_PAGE = r"""
import json, os, sys, time
path, offset, length = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
out = []
for n in (length, 4096):
    t0 = time.monotonic()
    try:
        os.pread(fd, n, offset)
        out.append({"ok": True, "elapsed": time.monotonic() - t0})
    except OSError as e:
        out.append({"ok": False, "errno": e.errno, "elapsed": time.monotonic() - t0})
print(json.dumps(out))
"""


def test_read_failed_by_part_of_its_range_fails_again_at_once(fault_registry, run_blobfs, store,
                                                               mount):
    """A read whose range is served by two requests fails when one of them
    gives up; a read of another part of that range (the page the kernel
    reads again) then fails at once, not after waiting out read_timeout for
    the request that is still stalled."""
    reg = fault_registry()
    data = random.Random(1213).randbytes(2 * MiB)
    _, (digest,) = reg.add_model(REPO, "latest", [(OLLAMA_MODEL, data)])
    pull(run_blobfs, store, model_name(reg))
    m = mount("read_timeout=8", "request_size=64K", "background=never",
              global_args=["--retries", "1"])
    path = tag_dir(m.path, reg.host) / "model"
    # A slow read far from the faults below resolves the blob's URL and keeps
    # it resolved (a blob with nothing in flight would resolve it again, one
    # request at a time), so [0, 64K) and [64K, 128K) are asked for at once.
    far = MiB + 512 * 1024
    reg.fault("trickle", rate=8192, digest=digest, covers=far)      # 64 KiB in 8 s
    slow = subprocess.Popen([PYTHON, "-c", PREAD_ONE, str(path), str(far), "4096"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: reg.count(digest=digest, fault="trickle") >= 1, timeout=10), \
            "the slow read never reached the registry"
        reg.fault("stall", seconds=60, digest=digest, covers=0)        # [0, 64K) never comes
        reg.fault("status", code=500, digest=digest, covers=64 * 1024)  # [64K, 128K) gives up
        first, again = python_json(PREAD_THEN_FIRST_PAGE, path, 0, 128 * 1024, timeout=60)
        print(f"128 KiB read: {first}; its first page again: {again}")
        assert slow.poll() is None, "the slow read ended before the test was over: it proves nothing"
    finally:
        slow.kill()
        slow.wait(10)
    assert reg.count(digest=digest, fault="stall") >= 1, "no request for [0, 64K) was stalled"
    assert reg.count(digest=digest, fault="status") >= 1, "no request for [64K, 128K) failed"
    assert not first["ok"] and first["errno"] == errno.EIO, first
    assert first["elapsed"] < 6, f"the read failed only after {first['elapsed']:.1f}s"
    assert not again["ok"] and again["errno"] == errno.EIO, again
    assert again["elapsed"] < 1, \
        (f"reading the first page again took {again['elapsed']:.1f}s to fail: it waited for "
         "the stalled request instead of failing with the read that covered it")


# ================================================================ 13. signals


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_unmounts_cleanly(registry, run_blobfs, store, mount, tmp_path, blob_cache, sig):
    model = small_model(tmp_path / "n", blob_cache, 131)
    push_model(registry, REPO, "latest", model)
    pull(run_blobfs, store, model_name(registry))
    m = mount()
    assert (tag_dir(m.path, registry.host) / "model").read_bytes() == model.layers[0].read_bytes()
    m.kill(sig)
    try:
        status = m.proc.wait(10)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the daemon did not exit within 10 s of {sig.name}")
    assert status == 0, f"the daemon exited with status {status} after {sig.name}"
    assert str(m.path) not in fuse_mounts(), f"{m.path} is still mounted after {sig.name}"
    assert not os.path.ismount(m.path)
    assert os.listdir(m.path) == []


# ================================================================ 14. df


def test_df_reports_the_store_filesystem(store, mount):
    m = mount()
    mine, theirs = os.statvfs(m.path), os.statvfs(store)
    assert mine.f_blocks == theirs.f_blocks
    assert mine.f_frsize == theirs.f_frsize
    assert mine.f_files == theirs.f_files
    assert abs(mine.f_bavail - theirs.f_bavail) * theirs.f_frsize < 256 * MiB
    df = run(["df", "-P", "-B1", m.path], timeout=10, check=True)
    line = df.stdout.splitlines()[-1].split()
    assert line[0] == "blobfs" and line[-1] == str(m.path), df.stdout
    assert int(line[1]) == theirs.f_blocks * theirs.f_frsize
