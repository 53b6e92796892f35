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

import errno
import functools
import itertools
import json
import os
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

import children
from blobfsmount import fuse_mounts, is_blobfs_mount
from models import OLLAMA_MODEL
from storefiles import files_under, wait_for

REPO = "library/x"
PYTHON = "/usr/bin/python3"
NOBODY = 65534
LAYER = bytes(range(256)) * 2400          # 600 KiB


# ---------------------------------------------------------------- helpers


# Every child of this file gets 30 s unless the test says otherwise.
run = functools.partial(children.run, timeout=30)


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


# ================================================================ 1. other users


def test_allow_other_applies_default_permissions(shared_mount):
    m = shared_mount("allow_other")
    options = mount_options(m.path)
    assert "allow_other" in options and "default_permissions" in options, options
    assert m.log_lines(r"allow_other.*default_permissions"), \
        f"the log does not say that allow_other brings default_permissions:\n{m.log()}"
    # without allow_other nobody else gets in, and nothing is added
    m2 = shared_mount()
    assert "default_permissions" not in mount_options(m2.path)


def _removal_attempts(mnt, host):
    return [["rm", "-r", tag_dir(mnt, host)],
            ["rm", "-r", Path(mnt) / "models" / host / REPO],
            ["rm", mount_manifest(mnt, host, tag="v2")],
            ["rm", tag_dir(mnt, host, tag="v2") / "model"]]


def test_other_users_cannot_remove_tags(reg, blobfs_bin, store, shared_mount):
    for tag in ("latest", "v2"):
        pull(blobfs_bin, store, f"{reg.host}/{REPO}:{tag}", lazy=False)
    before = store_files(store)
    m = shared_mount("allow_other")
    listing = sorted(os.listdir(tag_dir(m.path, reg.host)))

    for argv in _removal_attempts(m.path, reg.host):
        result = run(as_nobody(argv))
        assert result.returncode != 0, f"uid {NOBODY} could run {argv}"
        assert "Permission denied" in result.stderr or "not permitted" in result.stderr, \
            result.stderr
    assert store_files(store) == before, "a refused removal changed the store"
    for tag in ("latest", "v2"):
        assert sorted(os.listdir(tag_dir(m.path, reg.host, tag=tag))) == listing, \
            "a refused removal hid files"
    assert sorted(os.listdir(m.path / "manifests" / reg.host / REPO)) == ["latest", "v2"]

    # the owner still may
    result = run(["rm", "-r", tag_dir(m.path, reg.host)])
    assert result.returncode == 0, result.stderr
    assert not store_manifest(store, reg.host).exists()


def test_allow_other_remove_lets_other_users_remove(reg, blobfs_bin, store, shared_mount):
    pull(blobfs_bin, store, f"{reg.host}/{REPO}:latest")
    m = shared_mount("allow_other", "allow_other_remove")
    result = run(as_nobody(["rm", "-r", tag_dir(m.path, reg.host)]))
    assert result.returncode == 0, result.stderr
    assert not store_manifest(store, reg.host).exists()


def test_allow_other_remove_and_discover_need_allow_other(blobfs_bin, store, base):
    for option in ("allow_other_remove", "allow_other_discover"):
        mnt = base / option
        mnt.mkdir()
        result = run([blobfs_bin, "--store", store, "mount", "-f", "-o", option, mnt],
                     timeout=20)
        assert result.returncode == 2, f"-o {option} alone: exit {result.returncode}"
        assert f"-o {option} is for other users, and needs -o allow_other" in result.stderr, \
            result.stderr
        assert not is_blobfs_mount(mnt)


def test_other_users_cannot_discover(reg, store, shared_mount):
    m = shared_mount("allow_other")
    host = reg.host
    for path in (tag_dir(m.path, host), mount_manifest(m.path, host),
                 Path(m.path) / "models" / host):
        assert stat_errno(path, "nobody") == errno.ENOENT, path
    # mkdir where only discovery makes names exist: refused, not "exists"
    result = run(as_nobody(["mkdir", Path(m.path) / "models" / "newhost"]))
    assert result.returncode != 0 and "File exists" not in result.stderr, result.stderr
    assert manifest_requests(reg) == 0, "another user's lookup reached the registry"
    assert files_under(Path(store) / "manifests") == []

    # the owner discovers
    assert "model" in os.listdir(tag_dir(m.path, host))
    assert manifest_requests(reg) >= 1
    assert store_manifest(store, host).is_file()


def test_allow_other_discover_lets_other_users_discover(reg, store, shared_mount):
    m = shared_mount("allow_other", "allow_other_discover")
    result = run(as_nobody(["ls", tag_dir(m.path, reg.host)]))
    assert result.returncode == 0, result.stderr
    assert "model" in result.stdout.split()
    assert store_manifest(store, reg.host).is_file()


# ================================================================ 2. what the daemon reads


def _take_down(path):
    """A mount that a refusal test made after all: abort its connection (a
    forced unmount does that for FUSE, even when it then says busy), detach it."""
    if str(path) in fuse_mounts():
        subprocess.run(["umount", "-f", str(path)], capture_output=True, timeout=10)
        subprocess.run(["fusermount3", "-uz", str(path)], capture_output=True, timeout=10)


def _mount_refused(blobfs_bin, store, mountpoint, real, timeout=10):
    """Run `blobfs mount -f` on MOUNTPOINT (REAL: its real path, found before)
    and return its CompletedProcess. If it mounts instead of refusing, the
    mount is aborted and the test fails. Nothing here looks at the mountpoint
    itself: a mount that reads through itself would hang the looker."""
    proc = subprocess.Popen([str(blobfs_bin), "--store", str(store), "mount", "-f",
                             str(mountpoint)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline and real not in fuse_mounts():
        time.sleep(0.05)
    mounted = real in fuse_mounts()
    if proc.poll() is None or mounted:
        _take_down(real)
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        out, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        out = err = "(unavailable: the daemon is stuck in the kernel)"
    assert not mounted, f"blobfs mounted on {mountpoint}, over what it reads:\n{err}"
    assert proc.returncode is not None and proc.returncode >= 0, \
        f"blobfs mount on {mountpoint} neither mounted nor exited within {timeout}s:\n{err}"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("where", ["store", "inside", "state", "parent", "symlink", "bind"])
def test_mountpoint_the_daemon_reads_through_is_refused(blobfs_bin, tmp_path, where):
    """Mounting on the store, in it (its state directory too), above it, or on
    another name for it (a symlink, a bind mount) would have the daemon read
    through its own mount and hang; it is refused, before anything is mounted."""
    top = tmp_path / "top"
    store = top / "store"
    for d in (store / "manifests", store / "blobs", store / ".blobfs"):
        d.mkdir(parents=True)
    (store / ".blobfs").chmod(0o700)
    mountpoint = {"store": store, "inside": store / "manifests", "state": store / ".blobfs",
                  "parent": top, "symlink": tmp_path / "link", "bind": tmp_path / "bind"}[where]
    if where == "symlink":
        mountpoint.symlink_to(store)
    if where == "bind":
        mountpoint.mkdir()
        bound = subprocess.run(["mount", "--bind", store, mountpoint], capture_output=True,
                               text=True, timeout=10)
        if bound.returncode != 0:
            pytest.skip(f"cannot bind-mount (needs root): {bound.stderr.strip()}")
    real = os.path.realpath(mountpoint)
    try:
        result = _mount_refused(blobfs_bin, store, mountpoint, real)
    finally:
        if where == "bind":
            subprocess.run(["umount", "-l", mountpoint], capture_output=True, timeout=10)
    assert result.returncode == 1, f"exit {result.returncode}:\n{result.stderr}"
    errors = [line for line in result.stderr.splitlines() if line.startswith("blobfs: error: ")]
    assert len(errors) == 1 and "store" in errors[0] and str(mountpoint) in errors[0], \
        result.stderr


def test_mountpoint_beside_the_store_is_fine(blobfs_bin, tmp_path, mount):
    """The check compares directories, not names: a sibling whose name starts
    like the store's is no problem."""
    store = tmp_path / "store"
    store.mkdir()
    beside = tmp_path / "store-mnt"
    beside.mkdir()
    m = mount(store=store, path=beside)
    assert sorted(os.listdir(m.path)) == ["blobs", "manifests", "models"]


# ================================================================ 3. discovery that hangs


HANGING = 20          # more lookups than the mount has worker threads (16)
BUDGET = 6            # -o read_timeout: how long a lookup may wait for discovery
PER_HOST = 4          # discoveries that talk to one registry host at a time (blobfs(1))


def test_discoveries_that_hang_leave_the_mount_responsive(fault_registry, blobfs_bin, store,
                                                          mount):
    good = fault_registry()
    good.add_model(REPO, "latest", [(OLLAMA_MODEL, LAYER)])
    good.add_model("library/y", "latest", [(OLLAMA_MODEL, LAYER[::-1])])
    pull(blobfs_bin, store, f"{good.host}/{REPO}:latest", lazy=False)
    hang = fault_registry()
    for i in range(HANGING):
        hang.add_model(f"library/m{i}", "latest", [(OLLAMA_MODEL, LAYER)])
    hang.fault("stall", on="manifest", seconds=3600)
    m = mount(f"read_timeout={BUDGET}")

    t_start = time.monotonic()
    lookups = [subprocess.Popen([PYTHON, "-c", STAT_ERRNO,
                                 tag_dir(m.path, hang.host, f"library/m{i}")],
                                stdout=subprocess.PIPE, text=True, start_new_session=True)
               for i in range(HANGING)]
    try:
        assert wait_for(lambda: manifest_requests(hang) >= 1, 10), "no lookup reached the registry"
        time.sleep(1.5)   # every lookup is in the daemon by now

        def timed(argv):
            t0 = time.monotonic()
            result = run(argv, timeout=15)
            return result, time.monotonic() - t0

        ls, took = timed(["ls", m.path])
        assert ls.returncode == 0 and "models" in ls.stdout.split(), ls.stderr
        assert took < 2, f"ls of the mount root took {took:.1f}s while discoveries hang"
        local = tag_dir(m.path, good.host) / "model"
        cat, took = timed([PYTHON, "-c", "import sys; sys.stdout.write(open(sys.argv[1], 'rb')"
                           ".read().hex())", local])
        assert cat.returncode == 0 and bytes.fromhex(cat.stdout) == LAYER, cat.stderr
        assert took < 2, f"a read of a local file took {took:.1f}s while discoveries hang"
        other, took = timed(["ls", tag_dir(m.path, good.host, "library/y")])
        assert other.returncode == 0 and "model" in other.stdout.split(), other.stderr
        assert took < 5, f"discovery on another registry took {took:.1f}s"

        # the hanging lookups end within their budget, not found
        for p in lookups:
            out, _ = p.communicate(timeout=BUDGET + 20)
            assert int(out) == errno.ENOENT, out
        took = time.monotonic() - t_start
        assert took < BUDGET + 4, f"the hanging lookups took {took:.1f}s (budget {BUDGET}s)"
    finally:
        for p in lookups:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    # A request the mount gives up on (after its budget, BUDGET s) stays open at
    # the registry, which never notices; so count what arrived before any could
    # have been given up: at most PER_HOST, the rest waited their turn.
    times = sorted(r.time for r in hang.requests(path_contains="/manifests/"))
    early = [t for t in times if t < times[0] + BUDGET - 1]
    assert len(early) <= PER_HOST, \
        f"{len(early)} manifest requests at once on one registry (at most {PER_HOST})"
    assert files_under(Path(store) / "manifests" / hang.host) == []
    # a tag that timed out is remembered as missing: no new request
    asked = manifest_requests(hang)
    assert stat_errno(tag_dir(m.path, hang.host, "library/m0")) == errno.ENOENT
    assert manifest_requests(hang) == asked


FIFO_BUDGET = 4


def test_queued_discoveries_start_in_the_order_they_were_asked(fault_registry, mount):
    """With every slot of a host busy, discoveries queue; a slot that frees
    goes to the oldest. Four hanging discoveries take the slots; six more queue,
    one after another. When the four are given up (their budget), the next four
    are the four oldest, and the two youngest time out in the queue, unasked.
    (Before, the youngest went first and the oldest timed out unasked.)"""
    hang = fault_registry()
    tags = [f"library/q{i}" for i in range(PER_HOST + 6)]
    for repo in tags:
        hang.add_model(repo, "latest", [(OLLAMA_MODEL, LAYER)])
    hang.fault("stall", on="manifest", seconds=3600)
    m = mount(f"read_timeout={FIFO_BUDGET}")

    def lookup(repo):
        return subprocess.Popen([PYTHON, "-c", STAT_ERRNO, tag_dir(m.path, hang.host, repo)],
                                stdout=subprocess.PIPE, text=True, start_new_session=True)

    def queued(repo):
        return bool(m.log_lines(rf"discovery: '{hang.host}/{repo}:latest' queued"))

    first, waiting = tags[:PER_HOST], tags[PER_HOST:]
    procs = [lookup(repo) for repo in first]
    try:
        assert wait_for(lambda: manifest_requests(hang) == PER_HOST, 10), \
            f"{manifest_requests(hang)} manifest requests, not {PER_HOST}"
        for repo in waiting:       # each one in the queue before the next is asked
            procs.append(lookup(repo))
            assert wait_for(lambda: queued(repo), 10), f"no lookup of {repo} reached the queue"
        assert manifest_requests(hang) == PER_HOST, "a queued discovery went past the limit"
        for p in procs:
            out, _ = p.communicate(timeout=3 * FIFO_BUDGET + 20)
            assert int(out) == errno.ENOENT, out
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    asked = [r.path.split("/")[3] for r in hang.requests(path_contains="/manifests/")]
    second = [t.split("/")[1] for t in waiting[:PER_HOST]]
    assert sorted(asked[PER_HOST:]) == sorted(second), \
        f"after the first {PER_HOST}, the registry was asked for {asked[PER_HOST:]}, " \
        f"not the oldest in the queue, {second}"


# ================================================================ 4. removed tags, mkdir


MISS_TTL = 3


@pytest.mark.parametrize("how", ["mount", "cli"])
def test_a_removed_tag_is_discovered_again_after_miss_ttl(reg, blobfs_bin, store, mount, how):
    """Whichever way a tag is removed, a lookup does not bring it back for
    miss_ttl seconds; after that it is discovered like any tag the store lacks."""
    for tag in ("latest", "v2"):
        pull(blobfs_bin, store, f"{reg.host}/{REPO}:{tag}")
    m = mount(f"miss_ttl={MISS_TTL}")
    tdir = tag_dir(m.path, reg.host)
    model_dir = m.path / "models" / reg.host / REPO
    assert tdir.is_dir()
    if how == "mount":
        result = run(["rm", "-r", tdir])
    else:
        result = run([blobfs_bin, "--store", store, "rm", f"{reg.host}/{REPO}:latest"])
    assert result.returncode == 0, result.stderr
    asked = manifest_requests(reg)
    assert wait_for(lambda: os.listdir(model_dir) == ["v2"], 5), os.listdir(model_dir)
    gone_at = time.monotonic()

    # (a dentry the kernel keeps may answer for up to half a second)
    assert wait_for(lambda: stat_errno(tdir) == errno.ENOENT, 2)
    assert stat_errno(mount_manifest(m.path, reg.host)) == errno.ENOENT
    assert manifest_requests(reg) == asked, "a lookup right after the removal asked the registry"
    assert not store_manifest(store, reg.host).exists()

    time.sleep(max(0.0, gone_at + MISS_TTL + 1 - time.monotonic()))
    assert stat_errno(tdir) == 0, f"{MISS_TTL + 1}s after the removal, the tag was not discovered"
    assert store_manifest(store, reg.host).is_file()
    assert manifest_requests(reg) > asked


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

# Stats a path when told; a SIGUSR1 ends the stat (the handler raises).
STATTER = r"""
import json, os, signal, sys, time
class Interrupted(Exception):
    pass
def on_usr1(sig, frame):
    raise Interrupted
signal.signal(signal.SIGUSR1, on_usr1)
print("ready", flush=True)
sys.stdin.readline()
t0 = time.monotonic()
try:
    os.stat(sys.argv[1])
    out = {"found": True}
except Interrupted:
    out = {"interrupted": True}
except OSError as e:
    out = {"errno": e.errno}
out["elapsed"] = time.monotonic() - t0
print(json.dumps(out), flush=True)
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


@pytest.mark.parametrize("when", ["waiting", "before it waits"])
def test_an_interrupted_lookup_waiting_for_discovery_returns_promptly(fault_registry, mount,
                                                                      when):
    hang = fault_registry()
    hang.add_model(REPO, "latest", [(OLLAMA_MODEL, LAYER)])
    hang.fault("stall", on="manifest", seconds=3600)
    m = mount("read_timeout=30")
    proc = _child(STATTER, tag_dir(m.path, hang.host))
    try:
        if when == "waiting":
            _go(proc)
            assert wait_for(lambda: manifest_requests(hang) >= 1, 10)
            time.sleep(0.3)
            os.kill(proc.pid, signal.SIGUSR1)
        else:
            _interrupt_before_it_waits(m, proc)
        t0 = time.monotonic()
        line = _read_line(proc, 40)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert line, "the lookup never finished"
    out = json.loads(line)
    assert out.get("interrupted"), f"the lookup was not interrupted: {out}"
    assert took < 3, f"the interrupted lookup returned {took:.1f}s after the signal"
    # the discovery itself goes on for others; nothing was stored
    assert files_under(m.store / "manifests") == []


# Each change another user might try through an allow_other mount: (argv, path
# relative to the mount, with {tag} for the tag directory).
_CHANGES = [
    ["touch", "{tag}/new"],
    ["mkdir", "{tag}/newdir"],
    ["mv", "{tag}/model", "{tag}/moved"],
    ["mv", "{tag}", "{tag}.moved"],
    ["ln", "{tag}/model", "{tag}/hard"],
    ["ln", "-s", "/etc/shadow", "{tag}/soft"],
    ["chmod", "0777", "{tag}/model"],
    ["chmod", "0777", "{tag}"],
    ["chown", f"{NOBODY}", "{tag}/model"],
    ["touch", "-d", "2000-01-01", "{tag}/model"],
    ["truncate", "-s", "0", "{tag}/model"],
    ["setfattr", "-n", "user.x", "-v", "1", "{tag}/model"],
    ["setfattr", "-n", "user.blobfs.cached", "-v", "0", "{tag}/model"],
    ["setfattr", "-x", "user.blobfs.digest", "{tag}/model"],
    ["sh", "-c", "echo x >> \"$1\"", "sh", "{tag}/model"],
    ["mknod", "{tag}/fifo", "p"],
    ["rmdir", "{tag}"],
]


DENIED = ("Permission denied", "not permitted", "Read-only file system")


def test_other_users_change_nothing_through_the_mount(reg, blobfs_bin, store, shared_mount):
    """Another user of an allow_other mount (default_permissions, the kernel
    checks modes first, then blobfs) cannot change anything through it, and
    the daemon, the owner's view and the store stay as they were."""
    pull(blobfs_bin, store, f"{reg.host}/{REPO}:latest", lazy=False)
    before = store_files(store)
    m = shared_mount("allow_other")
    tag = tag_dir(m.path, reg.host)
    listing = sorted(os.listdir(tag))
    attrs = {f: os.stat(tag / f) for f in listing}
    for change in _CHANGES:
        argv = [a.replace("{tag}", str(tag)) for a in change]
        result = run(as_nobody(argv))
        assert result.returncode != 0, f"uid {NOBODY} could run {argv}"
        assert any(e in result.stderr for e in DENIED), f"{argv}: {result.stderr}"
        assert m.mounted(), f"{argv} took the mount down:\n{m.log()}"
    # The kernel checked the modes (EACCES) before blobfs could answer (EROFS).
    result = run(as_nobody(["touch", tag / "new"]))
    assert "Permission denied" in result.stderr, result.stderr
    result = run(["touch", tag / "new"])
    assert "Read-only file system" in result.stderr, result.stderr
    assert sorted(os.listdir(tag)) == listing
    for f in listing:
        st = os.stat(tag / f)
        assert (st.st_mode, st.st_uid, st.st_size, st.st_mtime_ns) == \
            (attrs[f].st_mode, attrs[f].st_uid, attrs[f].st_size, attrs[f].st_mtime_ns), f
    assert (tag / "model").read_bytes() == LAYER
    assert store_files(store) == before, "another user's change reached the store"
    assert not any(p.name.startswith(("hard", "soft", "new", "moved", "fifo"))
                   for p in Path(store).rglob("*"))
