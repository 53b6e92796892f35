"""A mount with a cache limit on a disk too small for the blob it reads,
through real mounts on a real small tmpfs.

A mount with max_cache makes room for a blob and reserves its disk space
when it takes the blob up (blob_io.c, activate_partial). When that fails,
the bytes of the blob already in the store must still be read, from the
partial file another mount left, and a read of bytes that would need the
room fails at once with ENOSPC, the reason in the log; the mount goes on
serving what it can.
"""

import errno
import hashlib
import json
import subprocess
from pathlib import Path

from models import OLLAMA_MODEL
from storefiles import partial_files, wait_for

MiB = 1 << 20
REPO = "library/room"
PYTHON = "/usr/bin/python3"
DISK = 24 * MiB
LAYER = 32 * MiB
KEPT = (0, 8 * MiB)         # where the first mount reads, leaving those bytes in the store
SPAN = 256 * 1024           # how much it reads there


def layer_data(seed, size=LAYER):
    block = hashlib.sha256(seed).digest()
    return b"".join(hashlib.sha256(block + i.to_bytes(4, "little")).digest()
                    for i in range(size // 32 + 1))[:size]


# Reads LEN bytes at OFF in a child; the bytes' sha256 or the errno, and the time taken.
READ_AT = r"""
import hashlib, json, os, sys, time
t0 = time.monotonic()
fd = os.open(sys.argv[1], os.O_RDONLY)
off, n = int(sys.argv[2]), int(sys.argv[3])
try:
    data = b""
    while len(data) < n and (piece := os.pread(fd, n - len(data), off + len(data))):
        data += piece
    out = {"ok": True, "sha": hashlib.sha256(data).hexdigest(), "len": len(data)}
except OSError as e:
    out = {"ok": False, "errno": e.errno}
out["elapsed"] = time.monotonic() - t0
print(json.dumps(out))
"""


def read_at(path, off, n):
    r = subprocess.run([PYTHON, "-c", READ_AT, str(path), str(off), str(n)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_a_failed_make_room_still_serves_what_is_local(fault_registry, run_blobfs, mount, tmpfs):
    store = tmpfs(DISK) / "store"
    reg = fault_registry()
    data = layer_data(b"room")
    _, (layer,) = reg.add_model(REPO, "latest", [(OLLAMA_MODEL, data)])
    assert run_blobfs(["pull", "--lazy", "--quiet", f"{reg.host}/{REPO}"],
                      store=store).returncode == 0

    # A mount without a cache limit reads SPAN bytes at two places and goes.
    first = mount("background=never", store=store)
    model = Path(first.path) / "models" / reg.host / REPO / "latest" / "model"
    for off in KEPT:
        got = read_at(model, off, SPAN)
        assert got["ok"] and got["sha"] == hashlib.sha256(data[off:off + SPAN]).hexdigest(), got
    first.cleanup()
    assert partial_files(store), "the first mount left no partial blob"

    # A mount with a cache limit cannot reserve the blob's 32 MiB on a 24 MiB disk.
    m = mount("background=never", "max_cache=1G", "read_timeout=20", store=store)
    model = Path(m.path) / "models" / reg.host / REPO / "latest" / "model"
    local = read_at(model, 0, 4096)
    assert local["ok"], f"a read of bytes in the store failed: {local}\n{m.log()}"
    assert local["sha"] == hashlib.sha256(data[:4096]).hexdigest()
    assert wait_for(lambda: m.log_lines(r"cannot make room for '" + layer), 5), m.log()

    missing = read_at(model, LAYER - 4 * MiB, 4096)   # beyond what the first mount's read-ahead got
    assert not missing["ok"] and missing["errno"] == errno.ENOSPC, \
        f"a read that needs room the disk does not have: {missing}\n{m.log()}"
    assert missing["elapsed"] < 10, f"it failed only after {missing['elapsed']:.1f}s"

    # What is local is still served, after the failures, at other offsets than before.
    for off in (KEPT[1], 64 * 1024, KEPT[1] + SPAN - 4096):
        again = read_at(model, off, 4096)
        assert again["ok"] and again["sha"] == hashlib.sha256(data[off:off + 4096]).hexdigest(), \
            f"after a failed make-room, a read at {off} of bytes in the store: {again}\n{m.log()}"
    assert m.proc.poll() is None
    assert not m.log_lines(r"Bad file descriptor"), m.log()
