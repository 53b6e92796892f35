"""The store as shared ground: tests of what other users and other processes
can do to a store that a root blobfs uses, through the real paths - a root
`pull` and a root mount with allow_other against tests/lib/faultreg.py, with
a real second uid (nobody, through setpriv) planting links in a store it
owns, a real `blobfs rm` in a second process while a mount fetches, and a
real small tmpfs for the quota.

1. Nothing under the store is followed as a link, and only regular files
   count; a store others may write to is refused unless trusted.
4. A manifest that gives a verified blob another size never costs that blob.
5. `blobfs rm` stops a mount's fetch of what it removed, and nothing that no
   manifest names is committed.
6. The cache quota makes room before a fetch needs it, and gc says what it
   evicted.
"""

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from children import READ_ALL, ok, run
from faultreg import OLLAMA_MODEL
from storefiles import hex_of, sha256_file, store_blob, wait_for

MiB = 1 << 20
REPO = "library/f"
PYTHON = "/usr/bin/python3"
NOBODY = 65534


# ---------------------------------------------------------------- helpers


def sha256_bytes(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def partial_path(store, digest, suffix=""):
    return Path(store) / ".blobfs" / "partial" / ("sha256-" + hex_of(digest) + suffix)


def as_nobody(argv):
    """ARGV as uid nobody, with a HOME of its own (root's is not readable)."""
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
            "env", "HOME=/nonexistent", *map(str, argv)]


def nobody(*argv):
    """Run ARGV as uid nobody; it must succeed."""
    return run(as_nobody(argv), check=True)


def read_all(path, user=None):
    argv = [PYTHON, "-c", READ_ALL, path]
    result = ok(run(as_nobody(argv) if user == NOBODY else argv))
    return json.loads(result.stdout)


@pytest.fixture
def victim(tmp_path):
    """Factory: victim(content) -> a root-only file (0600) outside the store, and
    a check that it still holds exactly that content."""
    made = []

    def make(content, name="victim"):
        path = tmp_path / name
        path.write_bytes(content)
        path.chmod(0o600)
        made.append((path, content, path.stat().st_mtime_ns))
        return path

    yield make


def assert_untouched(path, content):
    assert path.read_bytes() == content, f"{path} was written through a link in the store"


@pytest.fixture
def owned_store(store):
    """The store directory, owned by nobody as Ollama's store is owned by the
    ollama user, reachable by nobody (0755)."""
    os.chown(store, NOBODY, NOBODY)
    store.chmod(0o755)
    return store


@pytest.fixture
def shared_mnt():
    """A 0755 directory for mountpoints that nobody can reach."""
    base = Path(tempfile.mkdtemp(prefix="blobfs-trust-mnt-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def one_layer_registry(fault_registry, size=600_000, seed=b"x"):
    reg = fault_registry()
    data = (hashlib.sha256(seed).digest() * (size // 32 + 1))[:size]
    reg.manifest, (reg.layer,) = reg.add_model(REPO, "latest", [(OLLAMA_MODEL, data)])
    reg.data = data
    return reg


def assert_blob_stored(store, digest):
    path = store_blob(store, digest)
    st = os.lstat(path)
    assert stat.S_ISREG(st.st_mode), f"{path} is not a regular file ({stat.filemode(st.st_mode)})"
    assert sha256_file(path) == digest


# ================================================================ 1. links in the store


def test_pull_does_not_write_through_a_partial_file_link(fault_registry, run_blobfs, owned_store,
                                                         victim):
    """The store's owner plants a link where root's pull will write the blob:
    the pull must not write through it, nor move the link into blobs/."""
    reg = one_layer_registry(fault_registry)
    target = victim(b"root's precious file\n")
    made = owned_store / "made-by-root"
    partial = partial_path(owned_store, reg.layer)
    nobody("mkdir", "-m", "0700", "-p", partial.parent)
    nobody("ln", "-s", target, partial)
    nobody("ln", "-s", made, partial_path(owned_store, reg.layer, ".lock"))
    nobody("ln", "-s", target, partial_path(owned_store, reg.layer, ".map"))

    ok(run_blobfs(["pull", "--quiet", f"{reg.host}/{REPO}"], store=owned_store))
    assert_untouched(target, b"root's precious file\n")
    assert not made.exists() and not made.is_symlink(), "the pull created a file through a link"
    assert_blob_stored(owned_store, reg.layer)


def test_pull_does_not_take_a_linked_blob_as_complete(fault_registry, run_blobfs, owned_store,
                                                      victim):
    reg = one_layer_registry(fault_registry)
    secret = b"S" * len(reg.data)          # the size the manifest says: only the link is wrong
    target = victim(secret)
    nobody("mkdir", "-p", owned_store / "blobs")
    nobody("ln", "-s", target, store_blob(owned_store, reg.layer))

    ok(run_blobfs(["pull", "--quiet", f"{reg.host}/{REPO}"], store=owned_store))
    assert_untouched(target, secret)
    assert_blob_stored(owned_store, reg.layer)


@pytest.mark.parametrize("where", ["blobs", "partial"])
def test_allow_other_mount_never_serves_a_linked_file(fault_registry, run_blobfs, mount,
                                                     owned_store, shared_mnt, victim, where):
    """A root mount with allow_other: another user reads the model and must get
    the registry's bytes, never those of the root-only file a link points to;
    and the file itself stays as it was."""
    reg = one_layer_registry(fault_registry)
    secret = b"S" * len(reg.data)
    target = victim(secret)
    link = store_blob(owned_store, reg.layer) if where == "blobs" else \
        partial_path(owned_store, reg.layer)
    nobody("mkdir", "-m", "0700", "-p", owned_store / ".blobfs" / "partial")
    nobody("mkdir", "-p", owned_store / "blobs")
    nobody("ln", "-s", target, link)
    ok(run_blobfs(["pull", "--lazy", "--quiet", f"{reg.host}/{REPO}"], store=owned_store))
    mnt = shared_mnt / "mnt"
    mnt.mkdir()
    m = mount("allow_other", store=owned_store, path=mnt)

    got = read_all(m.path / "blobs" / ("sha256-" + hex_of(reg.layer)), user=NOBODY)
    assert got["sha"] != sha256_bytes(secret), "the mount served a root-only file to another user"
    assert got["ok"] and got["sha"] == reg.layer, got
    assert_untouched(target, secret)


# ================================================================ 1. who may write to the store


def refused_for_trust(result, *words):
    assert result.returncode == 1, f"exit {result.returncode}:\n{result.stdout}\n{result.stderr}"
    lines = [line for line in result.stderr.splitlines() if "--trust-store" in line]
    assert lines, f"the refusal does not name --trust-store:\n{result.stderr}"
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    return lines[0]


@pytest.mark.parametrize("where", ["", "blobs", "manifests", ".blobfs"])
def test_store_writable_by_others_is_refused_unless_trusted(fault_registry, run_blobfs, store,
                                                           tmp_path, where):
    reg = one_layer_registry(fault_registry)
    name = f"{reg.host}/{REPO}"
    for sub in ("blobs", "manifests", ".blobfs"):
        (store / sub).mkdir(mode=0o700 if sub == ".blobfs" else 0o755)
    (store / where).chmod(0o777 if where != ".blobfs" else 0o770)
    mode = "0777" if where != ".blobfs" else "0770"
    path = str(store / where).rstrip("/")

    line = refused_for_trust(run_blobfs(["pull", "--quiet", name]),
                             f"'{path}'", "writable by other users", f"mode {mode}",
                             f"chmod go-w {path}")
    print(line)
    assert not list((store / "blobs").iterdir()) and not list((store / "manifests").iterdir())
    assert not (store / ".blobfs" / "lock").exists(), "a refused store was written to"
    refused_for_trust(run_blobfs(["ls"]), f"'{path}'")

    # The three ways to say "trust it anyway": option, configuration key, and -o (below).
    ok(run_blobfs(["--trust-store", "pull", "--quiet", name]))
    assert_blob_stored(store, reg.layer)
    conf = tmp_path / "trust.conf"
    conf.write_text("trust-store = yes\n")
    ok(run_blobfs(["ls"], env={"BLOBFS_CONFIG": str(conf)}))


def test_mount_of_a_store_writable_by_others(fault_registry, run_blobfs, mount, blobfs_bin,
                                             store, tmp_path):
    reg = one_layer_registry(fault_registry)
    ok(run_blobfs(["pull", "--lazy", "--quiet", f"{reg.host}/{REPO}"]))
    (store / "manifests").chmod(0o777)
    point = tmp_path / "refused"
    point.mkdir()
    try:
        refused = run([blobfs_bin, "--store", store, "mount", "-f", point], timeout=30)
    finally:
        if os.path.ismount(point):       # a build without the check mounted it
            run(["fusermount3", "-uz", point])
    refused_for_trust(refused, f"'{store}/manifests'", "writable by other users")
    m = mount("trust_store")
    got = read_all(m.path / "blobs" / ("sha256-" + hex_of(reg.layer)))
    assert got["sha"] == reg.layer, got


def test_sticky_store_root_is_accepted(fault_registry, run_blobfs, store):
    """A 1777 root (like /tmp): others may add entries but not replace ours."""
    reg = one_layer_registry(fault_registry)
    store.chmod(0o1777)
    ok(run_blobfs(["pull", "--quiet", f"{reg.host}/{REPO}"]))
    assert_blob_stored(store, reg.layer)


@pytest.fixture
def nobody_runs(blobfs_bin):
    """Skip unless uid nobody can run the blobfs binary (it must reach the build tree)."""
    probe = run(as_nobody([blobfs_bin, "--version"]))
    if probe.returncode != 0:
        pytest.skip(f"uid {NOBODY} cannot run {blobfs_bin}: {probe.stderr.strip()}")


def test_store_of_another_user_is_refused_unless_trusted(fault_registry, run_blobfs, blobfs_bin,
                                                         store, nobody_runs):
    """nobody reading a store that belongs to a third user (not root): refused;
    the same store owned by root is fine to read."""
    reg = one_layer_registry(fault_registry)
    ok(run_blobfs(["pull", "--quiet", f"{reg.host}/{REPO}"]))
    store.chmod(0o755)
    ls = [blobfs_bin, "--store", store, "ls"]
    ok(run(as_nobody(ls)))                              # root's store: trusted
    for path in [store, *store.rglob("*")]:
        os.lchown(path, 4242, 4242)
    refused_for_trust(run(as_nobody(ls)), f"'{store}'", "uid 4242", "not to you or root")
    listed = ok(run(as_nobody([blobfs_bin, "--store", store, "--trust-store", "ls"])))
    assert f"{reg.host}/{REPO}" in listed.stdout.replace(":latest", ""), listed.stdout


def test_directory_of_a_third_user_inside_the_store_is_refused(fault_registry, run_blobfs,
                                                              store):
    reg = one_layer_registry(fault_registry)
    ok(run_blobfs(["pull", "--quiet", f"{reg.host}/{REPO}"]))
    os.chown(store / "blobs", 4242, 4242)
    refused_for_trust(run_blobfs(["ls"]), f"'{store}/blobs'", "uid 4242",
                      "not to the store's owner")


# ================================================================ 4. a manifest's size never blames a verified blob


def manifest_naming(reg, digest, size):
    """A model manifest whose one layer names DIGEST with SIZE bytes."""
    config = b'{"model_format":"gguf"}'
    return json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "digest": reg.add_blob(config), "size": len(config)},
        "layers": [{"mediaType": OLLAMA_MODEL, "digest": digest, "size": size}],
    }, separators=(",", ":")).encode()


def store_files(store):
    """{relative path: sha256} of every file in the store but the lock files and run/."""
    out = {}
    for p in sorted(Path(store).rglob("*")):
        rel = str(p.relative_to(store))
        if p.is_file() and not p.name.endswith(".lock") and "/run/" not in rel \
                and rel != ".blobfs/lock":
            out[rel] = sha256_file(p)
    return out


@pytest.fixture
def good_and_hostile(fault_registry, run_blobfs, store):
    """Model A pulled (its layer verified in blobs/), and a second registry whose
    model B names A's layer with one byte less."""
    good = one_layer_registry(fault_registry)
    ok(run_blobfs(["pull", "--quiet", f"{good.host}/{REPO}"]))
    hostile = fault_registry()
    hostile.add_manifest("library/b", "latest",
                         manifest_naming(hostile, good.layer, len(good.data) - 1))
    return good, hostile


def test_pull_of_a_manifest_with_another_size_for_a_verified_blob_is_refused(
        good_and_hostile, run_blobfs, store):
    good, hostile = good_and_hostile
    before = store_files(store)
    result = run_blobfs(["pull", "--quiet", f"{hostile.host}/library/b"])
    print(result.stderr)
    assert result.returncode == 1, f"exit {result.returncode}:\n{result.stderr}"
    assert good.layer in result.stderr and str(len(good.data)) in result.stderr \
        and str(len(good.data) - 1) in result.stderr, \
        f"the error does not name the digest and both sizes:\n{result.stderr}"
    assert store_files(store) == before, "the refused pull changed the store"
    # The layer of A survives everything that follows, gc included.
    ok(run_blobfs(["gc"]))
    assert_blob_stored(store, good.layer)
    verify = ok(run_blobfs(["verify", f"{good.host}/{REPO}"]))
    assert "1 ok, 0 corrupt" in verify.stdout.replace("2 ok", "1 ok"), verify.stdout


def test_mount_and_verify_never_blame_a_verified_blob_for_a_manifest(good_and_hostile, run_blobfs,
                                                                     mount, store):
    """B's manifest already in the store (written by another tool, or before the
    blob was verified): the mount does not show B, A reads, verify B does not
    quarantine, and nothing is lost to gc."""
    good, hostile = good_and_hostile
    bad = store / "manifests" / hostile.host / "library" / "b" / "latest"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(manifest_naming(hostile, good.layer, len(good.data) - 1))

    verify = run_blobfs(["verify", f"{hostile.host}/library/b"])
    assert "CORRUPT" not in verify.stdout and "moved to quarantine" not in verify.stdout, \
        verify.stdout
    assert verify.returncode == 1, "verify said nothing is wrong with B's manifest"
    assert_blob_stored(store, good.layer)

    m = mount()
    a_file = m.path / "models" / good.host / REPO / "latest" / "model"
    assert read_all(a_file)["sha"] == good.layer
    # B's layer: refused (not shown), whatever a reader tries.
    b_dir = m.path / "models" / hostile.host / "library" / "b" / "latest"
    b_read = json.loads(ok(run([PYTHON, "-c", READ_ALL, b_dir / "model"])).stdout)
    assert not b_read["ok"], b_read
    assert read_all(m.path / "blobs" / ("sha256-" + hex_of(good.layer)))["sha"] == good.layer
    m.cleanup()
    assert not list((store / ".blobfs" / "quarantine").iterdir())
    ok(run_blobfs(["gc"]))
    assert_blob_stored(store, good.layer)


def test_discovery_of_a_manifest_with_another_size_changes_nothing(good_and_hostile, mount,
                                                                   run_blobfs, store):
    good, hostile = good_and_hostile
    m = mount()
    b_dir = m.path / "models" / hostile.host / "library" / "b" / "latest"
    b_read = json.loads(ok(run([PYTHON, "-c", READ_ALL, b_dir / "model"])).stdout)
    assert not b_read["ok"], b_read
    assert read_all(m.path / "models" / good.host / REPO / "latest" / "model")["sha"] == good.layer
    m.cleanup()
    assert not (store / "manifests" / hostile.host).exists(), "the refused manifest was stored"
    assert not list((store / ".blobfs" / "quarantine").iterdir())
    assert_blob_stored(store, good.layer)


# ================================================================ 5. removal stops the fetch


TRICKLE = 1 * MiB           # bytes/s per response
CONNECTIONS = 4             # so the whole blob takes LAYER / (4 * TRICKLE) = 8 s
LAYER = 32 * MiB


def big_layer(seed):
    return (hashlib.sha256(seed).digest() * (LAYER // 32))[:LAYER]


def slow_registry(fault_registry):
    reg = fault_registry()
    reg.data = big_layer(b"slow")
    reg.manifest, (reg.layer,) = reg.add_model(REPO, "latest", [(OLLAMA_MODEL, reg.data)])
    reg.fault("trickle", rate=TRICKLE, digest=reg.layer)
    return reg


def settled(read, timeout=8.0, quiet=1.0):
    """Wait until read() stays the same for QUIET seconds; its value then, or None."""
    deadline = time.monotonic() + timeout
    last, since = read(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return now
    return None


def start_background_fetch(m, reg):
    """Read the first 4 KiB of the model through the mount (background=always
    then fetches the rest): the registry is sending it."""
    model = m.path / "models" / reg.host / REPO / "latest" / "model"
    ok(run([PYTHON, "-c", "import sys; open(sys.argv[1], 'rb').read(4096)", model], timeout=30))
    assert reg.bytes_sent(reg.layer) < LAYER // 2, "the fetch is too far on to be stopped"


def assert_fetch_stopped_and_nothing_kept(reg, store, m, before):
    """BEFORE: what the registry had sent when the blob was dropped. What it sends
    after must level off well short of the rest of the blob."""
    stopped = settled(lambda: reg.bytes_sent(reg.layer))
    print(f"the registry sent {before} bytes of the {LAYER} byte blob before it was dropped, "
          f"{stopped} in all")
    assert stopped is not None, \
        f"the registry still sends the dropped blob ({reg.bytes_sent(reg.layer)} bytes)\n{m.log()}"
    assert stopped - before < (LAYER - before) // 2, \
        f"{stopped - before} more bytes were fetched after the blob was dropped"
    # Long past the time the whole blob takes: still nothing in blobs/, nothing left over.
    time.sleep(LAYER / (CONNECTIONS * TRICKLE) + 1)
    assert not store_blob(store, reg.layer).exists(), "a blob no manifest names was committed"
    assert wait_for(lambda: not partial_path(store, reg.layer).exists(), 10), \
        "the removed blob's partial download was left behind"
    assert reg.bytes_sent(reg.layer) <= stopped + 64 * 1024


def test_cli_rm_stops_the_mounts_fetch(fault_registry, run_blobfs, mount, store):
    reg = slow_registry(fault_registry)
    name = f"{reg.host}/{REPO}"
    ok(run_blobfs(["pull", "--lazy", "--quiet", name]))
    m = mount("background=always", global_args=["--connections", CONNECTIONS])
    start_background_fetch(m, reg)
    before = reg.bytes_sent(reg.layer)
    ok(run_blobfs(["rm", name]))
    assert_fetch_stopped_and_nothing_kept(reg, store, m, before)
    assert m.proc.poll() is None


def test_tag_moved_to_new_content_stops_the_mounts_fetch_of_the_old(fault_registry, run_blobfs,
                                                                    mount, store):
    reg = slow_registry(fault_registry)
    name = f"{reg.host}/{REPO}"
    ok(run_blobfs(["pull", "--lazy", "--quiet", name]))
    m = mount("background=always", global_args=["--connections", CONNECTIONS])
    start_background_fetch(m, reg)
    _, (new_layer,) = reg.add_model(REPO, "latest", [(OLLAMA_MODEL, b"new content " * 1000)])
    before = reg.bytes_sent(reg.layer)
    ok(run_blobfs(["pull", "--quiet", name]))
    assert_blob_stored(store, new_layer)
    assert_fetch_stopped_and_nothing_kept(reg, store, m, before)
    new = m.path / "models" / reg.host / REPO / "latest" / "model"
    assert wait_for(lambda: os.path.getsize(new) == 12000, 5)
    assert read_all(new)["sha"] == new_layer


def test_rm_during_a_pull_commits_nothing(fault_registry, run_blobfs, blobfs_bin, store):
    """No watcher in a pull: the commit itself checks, under the index lock,
    that a manifest still names the blob."""
    reg = slow_registry(fault_registry)
    name = f"{reg.host}/{REPO}"
    pull = subprocess.Popen([str(blobfs_bin), "--store", str(store), "--connections",
                             str(CONNECTIONS), "pull", "--quiet", name],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: reg.bytes_sent(reg.layer) > 0, 15)
        ok(run_blobfs(["rm", name]))
        out, err = pull.communicate(timeout=60)
    finally:
        if pull.poll() is None:
            pull.kill()
            pull.wait()
    print(err)
    assert not store_blob(store, reg.layer).exists(), "the pull committed a blob no manifest names"
    assert not partial_path(store, reg.layer).exists()
    assert not partial_path(store, reg.layer, ".map").exists()
    ok(run_blobfs(["gc"]))


# ================================================================ 6. the quota makes room


DISK = 32 * MiB
MODEL = 12 * MiB        # two fit on the disk, a third only if one goes


def patterned(name, size):
    return (hashlib.sha256(name.encode()).digest() * (size // 32 + 1))[:size]


@pytest.fixture
def full_disk(fault_registry, run_blobfs, tmpfs):
    """A 32 MiB disk holding a store with models one and two (12 MiB each, one the
    least recently used) and the manifest of three: no room for three's 12 MiB."""
    disk = tmpfs(DISK)
    store = disk / "store"
    reg = fault_registry()
    reg.layers = {}
    for k in ("one", "two", "three"):
        _, (reg.layers[k],) = reg.add_model(f"library/{k}", "latest",
                                            [(OLLAMA_MODEL, patterned(k, MODEL))])
    for k in ("one", "two"):
        ok(run_blobfs(["pull", "--quiet", f"{reg.host}/library/{k}"], store=store))
    ok(run_blobfs(["pull", "--lazy", "--quiet", f"{reg.host}/library/three"], store=store))
    long_ago = time.time() - 3600
    os.utime(store_blob(store, reg.layers["one"]), (long_ago, long_ago))
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    assert free < MODEL, f"{free} bytes free: the disk is not full enough for the test"
    return reg, disk, store


def assert_made_room(reg, disk, store):
    assert_blob_stored(store, reg.layers["three"])
    assert not store_blob(store, reg.layers["one"]).exists(), \
        "the least recently used blob was not evicted"
    assert_blob_stored(store, reg.layers["two"])
    st = os.statvfs(disk)
    assert st.f_bavail * st.f_frsize > 0, "the disk was left full"


def test_pull_with_a_quota_makes_room_on_a_full_disk(full_disk, run_blobfs):
    reg, disk, store = full_disk
    result = run_blobfs(["--max-cache", "1G", "pull", f"{reg.host}/library/three"], store=store)
    assert result.returncode == 0, f"exit {result.returncode}:\n{result.stderr}"
    assert_made_room(reg, disk, store)


def test_mount_with_a_quota_makes_room_on_a_full_disk(full_disk, mount):
    reg, disk, store = full_disk
    m = mount("max_cache=1G", store=store)
    got = read_all(m.path / "models" / reg.host / "library" / "three" / "latest" / "model")
    assert got["ok"] and got["sha"] == reg.layers["three"], f"{got}\n{m.log()}"
    m.cleanup()
    assert_made_room(reg, disk, store)


def blob_usage(store):
    return sum(p.stat().st_blocks * 512 for p in (store / "blobs").iterdir())


def test_gc_with_a_quota_reports_what_it_evicted(fault_registry, run_blobfs, store):
    reg = fault_registry()
    layers = {}
    for k in ("one", "two"):
        _, (layers[k],) = reg.add_model(f"library/{k}", "latest",
                                        [(OLLAMA_MODEL, patterned(k, 3 * MiB))])
        ok(run_blobfs(["pull", "--quiet", f"{reg.host}/library/{k}"]))
    long_ago = time.time() - 3600
    os.utime(store_blob(store, layers["one"]), (long_ago, long_ago))
    before = blob_usage(store)
    out = ok(run_blobfs(["--max-cache", "4M", "gc"])).stdout
    freed = before - blob_usage(store)
    assert not store_blob(store, layers["one"]).exists() and freed >= 3 * MiB
    m = re.fullmatch(r"removed 0 unreferenced blobs and 0 partial downloads, evicted 1 least "
                     r"recently used blobs, ([\d.]+) MB freed\n", out)
    assert m, f"gc's report: {out!r} ({freed} bytes were freed)"
    assert abs(float(m[1]) * 1e6 - freed) < 0.01 * freed, f"gc said {m[1]} MB, freed {freed} B"


# ================================================================ du right after a read


def test_du_and_cached_right_after_a_full_read(fault_registry, run_blobfs, mount):
    """As the README's demo does: du (nothing local), read the whole file, du
    again at once: the bytes that are local now, not the count from before."""
    reg = one_layer_registry(fault_registry, size=3 * MiB)
    ok(run_blobfs(["pull", "--lazy", "--quiet", f"{reg.host}/{REPO}"]))
    m = mount()
    model = m.path / "models" / reg.host / REPO / "latest" / "model"
    du = ["du", "--block-size=1", model]
    assert ok(run(du)).stdout.split()[0] == "0"
    assert os.getxattr(model, "user.blobfs.cached") == b"0"
    assert read_all(model)["sha"] == reg.layer
    cached = int(os.getxattr(model, "user.blobfs.cached"))
    used = int(ok(run(du)).stdout.split()[0])
    assert cached == len(reg.data), f"user.blobfs.cached is {cached} right after a full read"
    assert used >= len(reg.data), f"du says {used} right after a full read"
