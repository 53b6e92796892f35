"""`blobfs status` on a blob shared between processes, through a real mount
and a real `blobfs pull`: "another blobfs has it" (waiting_for_another_process
in --json) is said while this mount waits for a blob another process is
fetching, and not of a blob the mount itself let go of because nothing here
needed more of it (blob_worker.c: a partial blob idle for a second is let go,
so that another process may take it over).
"""

import hashlib
import json
import subprocess
import time
from pathlib import Path

from models import OLLAMA_MODEL
from storefiles import wait_for

MiB = 1 << 20
REPO = "library/status"
PYTHON = "/usr/bin/python3"
LAYER = 16 * MiB


def layer_data(seed, size=LAYER):
    block = hashlib.sha256(seed).digest()
    return b"".join(hashlib.sha256(block + i.to_bytes(4, "little")).digest()
                    for i in range(size // 32 + 1))[:size]


def serve(fault_registry, seed):
    reg = fault_registry()
    reg.data = layer_data(seed)
    _, (reg.layer,) = reg.add_model(REPO, "latest", [(OLLAMA_MODEL, reg.data)])
    reg.name = f"{reg.host}/{REPO}"
    return reg


def model_file(m, reg):
    return Path(m.path) / "models" / reg.host / REPO / "latest" / "model"


def entries(blobfs_bin, store, digest):
    """The mount's `fetching` entries for DIGEST, from `blobfs status --json`."""
    r = subprocess.run([str(blobfs_bin), "--store", str(store), "status", "--json"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    mounts = json.loads(r.stdout)["mounts"]
    assert len(mounts) == 1, r.stdout
    return [b for b in mounts[0]["fetching"] if b["digest"] == digest]


def status_text(blobfs_bin, store):
    r = subprocess.run([str(blobfs_bin), "--store", str(store), "status"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_a_blob_the_mount_let_go_is_not_said_to_wait_for_another(fault_registry, run_blobfs,
                                                                 blobfs_bin, store, mount):
    reg = serve(fault_registry, b"let go")
    assert run_blobfs(["pull", "--lazy", "--quiet", reg.name]).returncode == 0
    m = mount("background=never")
    with open(model_file(m, reg), "rb", buffering=0) as f:
        assert f.read(4096) == reg.data[:4096]
        # Its read-ahead fetched, the blob has nothing to fetch: the mount lets it go.
        assert wait_for(lambda: m.log_lines(r"letting go of '" + reg.layer), 15), m.log()
        assert 0 < reg.bytes_sent(reg.layer) < LAYER
        time.sleep(2.5)   # the status file is rewritten once a second
        got = entries(blobfs_bin, store, reg.layer)
        text = status_text(blobfs_bin, store)
        assert not [b for b in got if b["waiting_for_another_process"]], \
            f"no other process has the blob, but status says one has: {got}\n{m.log()}"
        assert "another blobfs has it" not in text, text
        # The file reads on, and the mount takes the blob back for it.
        f.seek(8 * MiB)
        assert f.read(4096) == reg.data[8 * MiB:8 * MiB + 4096]


# Reads LEN bytes at OFF in a child: the test looks at status meanwhile.
READ_AT = r"""
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
off, left = int(sys.argv[2]), int(sys.argv[3])
while left and (piece := os.pread(fd, min(left, 1 << 20), off)):
    off += len(piece)
    left -= len(piece)
print(off)
"""


def test_a_blob_another_process_fetches_is_said_to_wait(fault_registry, run_blobfs, blobfs_bin,
                                                        store, mount):
    """The control: the flag is there when it is true."""
    reg = serve(fault_registry, b"another")
    reg.fault("trickle", rate=MiB // 4, digest=reg.layer)
    assert run_blobfs(["pull", "--lazy", "--quiet", reg.name]).returncode == 0
    m = mount("background=never", "read_timeout=60")
    pull = subprocess.Popen([str(blobfs_bin), "--store", str(store), "pull", "--quiet", reg.name],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert wait_for(lambda: reg.bytes_sent(reg.layer) > 0, 15)
        reader = subprocess.Popen([PYTHON, "-c", READ_AT, str(model_file(m, reg)),
                                   str(LAYER - 4 * MiB), str(4 * MiB)],
                                  stdout=subprocess.PIPE, text=True)
        seen = wait_for(lambda: [b for b in entries(blobfs_bin, store, reg.layer)
                                 if b["waiting_for_another_process"]], 20, interval=0.3)
        text = status_text(blobfs_bin, store)
        assert seen, f"the mount waits on the pull's blob; status never said so\n{m.log()}"
        assert "another blobfs has it" in text or reader.poll() is not None, text
    finally:
        pull.kill()
        pull.communicate(timeout=10)
        reader.kill()
        reader.communicate(timeout=10)
