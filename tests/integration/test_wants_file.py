"""The wants file of a shared partial blob stays small, through a real mount
and a real `blobfs pull`.

A process that waits on a blob another process fetches appends the ranges of
its parked reads to the blob's wants file (.blobfs/partial/<blob>.want, 24
bytes a range), and the holder fetches those first (blob_io.c). A reader
that waits again and again, here reads that time out on a blob whose
registry never answers, must not grow that file without bound: the holder
drops what is older than its read timeout, and the file has a hard limit.
"""

import hashlib
import json
import subprocess
import time
from pathlib import Path

from models import OLLAMA_MODEL
from storefiles import wait_for

MiB = 1 << 20
REPO = "library/wants"
PYTHON = "/usr/bin/python3"
LAYER = 8 * MiB
RECORD = 24                 # bytes of one range in the wants file
THREADS = 8
MOUNT_TIMEOUT = 1           # the mount's read timeout: each read waits this long
PULL_TIMEOUT = 2            # the holder's: what it keeps of the wants
RUN = 15                    # seconds of reading


# THREADS threads each read 4 KiB at its own offset over and over for RUN seconds;
# every read waits MOUNT_TIMEOUT and fails. Prints how many reads were made.
READ_AGAIN = r"""
import json, os, sys, threading, time
path, threads, run = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
fd = os.open(path, os.O_RDONLY)
end, counts = time.monotonic() + run, [0] * threads
def read(i):
    off = (1 + 3 * i) * 65536
    while time.monotonic() < end:
        try:
            os.pread(fd, 4096, off)
        except OSError:
            pass
        counts[i] += 1
ts = [threading.Thread(target=read, args=(i,)) for i in range(threads)]
for t in ts: t.start()
for t in ts: t.join()
print(json.dumps({"reads": sum(counts)}))
"""


def test_a_reader_that_waits_many_times_does_not_grow_the_wants_file(fault_registry, run_blobfs,
                                                                     blobfs_bin, store, mount):
    reg = fault_registry()
    data = hashlib.sha256(b"wants").digest() * (LAYER // 32)
    _, (layer,) = reg.add_model(REPO, "latest", [(OLLAMA_MODEL, data)])
    name = f"{reg.host}/{REPO}"
    assert run_blobfs(["pull", "--lazy", "--quiet", name]).returncode == 0
    reg.fault("hang", digest=layer)
    # The pull holds the blob and never gets a byte of it.
    pull = subprocess.Popen([str(blobfs_bin), "--store", str(store), "--read-timeout",
                             str(PULL_TIMEOUT), "pull", "--quiet", name],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    wants = Path(store) / ".blobfs" / "partial" / (layer.replace(":", "-") + ".want")
    try:
        assert wait_for(lambda: reg.requests(lambda r: r.digest == layer), 15), "the pull never asked"
        m = mount("background=never", f"read_timeout={MOUNT_TIMEOUT}")
        model = Path(m.path) / "models" / reg.host / REPO / "latest" / "model"
        reader = subprocess.Popen([PYTHON, "-c", READ_AGAIN, str(model), str(THREADS), str(RUN)],
                                  stdout=subprocess.PIPE, text=True)
        biggest = 0
        while reader.poll() is None:
            biggest = max(biggest, wants.stat().st_size if wants.exists() else 0)
            time.sleep(0.1)
        reads = json.loads(reader.communicate(timeout=30)[0])["reads"]
        biggest = max(biggest, wants.stat().st_size if wants.exists() else 0)
        assert pull.poll() is None, "the pull ended: " + pull.communicate()[1]
    finally:
        if pull.poll() is None:
            pull.kill()
        pull.communicate(timeout=10)
    told = m.log_lines(r"is being fetched by another blobfs process")
    print(f"{reads} reads waited; the wants file was at most {biggest} bytes "
          f"({biggest // RECORD} ranges)")
    assert told, f"the mount never saw the pull's blob as another's:\n{m.log()}"
    assert reads >= THREADS * RUN // MOUNT_TIMEOUT * 2 // 3, f"only {reads} reads: the test did not wait"
    assert biggest > 0, "the mount never told the pull what it waits for"
    # What the holder keeps: the ranges of its read timeout, and one tick more.
    bound = RECORD * THREADS * (PULL_TIMEOUT + 2) // MOUNT_TIMEOUT
    assert biggest <= bound, \
        f"{reads} reads that waited made a wants file of {biggest} bytes, over {bound}"
