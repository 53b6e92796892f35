"""The fault suite ("Fault tolerance and hostile input"): blobfs against servers
that misbehave, daemons that die, disks that fill up, stores that cannot be
written and registries that send hostile manifests.

1. Every kind of network fault tests/lib/faultreg.py can inject, each through
   both ways bytes reach the store: `blobfs pull`, and a real mount read cold
   (random preads from 4 threads, then the whole file front to back).  The
   reader must get the right bytes after recovery, or (for faults that never
   stop) EIO / a clean exit 1 with a message, within a bound; retries and
   refetched bytes are bounded, checked on the server's own record; and no file
   in blobs/ ever fails its digest, nor does any chunk map claim a chunk whose
   bytes are wrong.  Each case adds a row to a table printed at the end of the
   session (run with -s; or set BLOBFS_FAULTS_TABLE=FILE to have it written
   there; tests/integration/faults_table.py does both).
2. Crash consistency: kill -9 the daemon at 20+ random moments of a cold read.
3. A full disk (a small tmpfs as the store) for the mount and for pull.
4. A read-only store.
5. Hostile names (through the mount's discovery and pull) and hostile manifests.

Every test is marked `faults`.  The blobs are small (4 MiB) except where size
matters (chunk checksums are asked for from 64 MiB; the disk-full tests need a
blob larger than the disk).
"""

import hashlib
import json
import os
import random
import re
import signal
import struct
import subprocess
import time
from pathlib import Path

import pytest

from faultreg import DOCKER_CONFIG, DOCKER_MANIFEST, OCI_MANIFEST
from blobfsmount import is_blobfs_mount
import children
from models import OLLAMA_MODEL, random_blob
from storefiles import (
    blob_name, error_lines, files_under, hex_of, partial_files, quarantine_files, range_span,
    sha256_file, store_blob, wait_for,
)

pytestmark = pytest.mark.faults

MiB = 1 << 20
REPO = "library/x"
PYTHON = "/usr/bin/python3"
LAYER_SIZE = 4 * MiB
LAYER = random.Random(0xFA17).randbytes(LAYER_SIZE)
CHUNKSUMS_SIZE = 64 * MiB   # blobfs asks for chunk checksums from this size on
CHUNKSUMS_CHUNK = 4 * MiB


# Bounds for the fault matrix.  READ_TIMEOUT is the mount's read_timeout; a read
# that cannot be satisfied must fail within it (plus scheduling slack).
READ_TIMEOUT = 10
RETRIES = 3
STALL_TIMEOUT = 2
FAIL_SLACK = 2.5


# ---------------------------------------------------------------- small helpers


def manifest_files(store):
    return files_under(Path(store) / "manifests")


def tree_snapshot(root, skip=None):
    """{relative path: (kind, size)} of everything below ROOT except the subtree SKIP."""
    snap = {}
    root = Path(root)
    for dirpath, dirnames, filenames in os.walk(root):
        if skip is not None:
            dirnames[:] = [d for d in dirnames if Path(dirpath, d) != Path(skip)]
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            snap[str(p.relative_to(root))] = ("d" if p.is_dir() else "f", 0 if p.is_dir() else st.st_size)
    return snap


def mounted_at(path):
    """The fstype mounted at PATH, or None."""
    with open("/proc/mounts") as f:
        for line in f:
            fields = line.split()
            point = re.sub(r"\\(\d{3})", lambda m: chr(int(m[1], 8)), fields[1])
            if point == str(path):
                return fields[2]
    return None


def lazy_pull(run_blobfs, store, name, args=()):
    result = run_blobfs([*args, "pull", "--quiet", "--lazy", name], store=store, timeout=30)
    assert result.returncode == 0, f"blobfs pull --lazy {name} exited {result.returncode}:\n{result.stderr}"


def model_name(reg, repo=REPO, tag="latest"):
    return f"{reg.host}/{repo}:{tag}"


def tag_dir(mnt, host, repo=REPO, tag="latest"):
    return Path(mnt) / "models" / host / repo / tag


def layer_requests(reg, digest):
    """Blob requests for DIGEST (registry and CDN), chunksums excluded."""
    return reg.requests(lambda r: r.digest == digest and "/chunksums/" not in r.path)


def fmt_bytes(n):
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit, scale in (("MiB", MiB), ("KiB", 1024)):
        if n >= scale:
            return f"{sign}{n / scale:.1f} {unit}"
    return f"{sign}{n} B"


# ---------------------------------------------------------------- store consistency


_MAP_MAGIC = b"BLOBFSM1"
_MAP_HEADER = 8 + 8 + 8 + 4 + 4 + 32


def parse_chunk_map(data):
    """A .map file (src/chunkmap.c) -> (size, [(index, start, end)] of chunks marked
    durable, per-chunk sha256 list or None, digest bytes); AssertionError if malformed."""
    assert len(data) >= _MAP_HEADER + 32 and data[:8] == _MAP_MAGIC, "not a chunk map"
    size, chunk, n, flags = struct.unpack_from("<QQII", data, 8)
    digest = data[32:64]
    p = _MAP_HEADER
    if chunk:
        bounds = [min(i * chunk, size) for i in range(n + 1)]
    else:
        bounds = list(struct.unpack_from(f"<{n + 1}Q", data, p))
        p += 8 * (n + 1)
    sums = None
    if flags & 1:
        sums = [data[p + 32 * i:p + 32 * (i + 1)] for i in range(n)]
        p += 32 * n
    bits = data[p:p + (n + 7) // 8]
    p += (n + 7) // 8
    assert len(data) == p + 32, f"chunk map length {len(data)}, expected {p + 32}"
    assert hashlib.sha256(data[:p]).digest() == data[p:], "chunk map checksum mismatch"
    present = [(i, bounds[i], bounds[i + 1]) for i in range(n) if bits[i >> 3] & (1 << (i & 7))]
    return size, present, sums, digest


def assert_store_consistent(store, sources=None):
    """Every file in blobs/ is named sha256-<hex> and hashes to it; every chunk
    map in .blobfs/partial/ is well formed and each chunk it marks durable holds
    the right bytes (checked against SOURCES {digest: bytes or path} or the
    map's own chunk checksums).  Returns the number of chunk maps checked."""
    sources = sources or {}
    blobs = Path(store) / "blobs"
    for p in sorted(blobs.iterdir()) if blobs.is_dir() else []:
        assert re.fullmatch(r"sha256-[0-9a-f]{64}", p.name), f"unexpected file blobs/{p.name}"
        assert p.is_file(), f"blobs/{p.name} is not a regular file"
        assert sha256_file(p) == "sha256:" + p.name[7:], \
            f"blobs/{p.name} holds bytes of another digest: a blob that fails its digest is in blobs/"
    checked = 0
    partial = Path(store) / ".blobfs" / "partial"
    for mp in sorted(partial.glob("sha256-*.map")) if partial.is_dir() else []:
        name = mp.name[:-4]
        digest = "sha256:" + name[7:]
        try:
            raw = mp.read_bytes()
        except FileNotFoundError:
            continue  # committed meanwhile
        size, present, sums, map_digest = parse_chunk_map(raw)
        assert map_digest.hex() == name[7:], f"{mp.name} names another blob"
        data_path = partial / name
        if not present:
            continue
        assert data_path.is_file(), f"{mp.name} marks chunks durable but {name} is missing"
        source = sources.get(digest)
        if isinstance(source, (str, Path)):
            source = Path(source).read_bytes()
        with open(data_path, "rb") as f:
            for i, start, end in present:
                f.seek(start)
                got = f.read(end - start)
                if source is not None:
                    ok = got == source[start:end]
                elif sums is not None:
                    ok = hashlib.sha256(got).digest() == sums[i]
                else:
                    continue
                assert ok, (f"{mp.name} marks bytes {start}-{end - 1} durable but the partial "
                            f"file holds other bytes there")
        checked += 1
    return checked


# ---------------------------------------------------------------- child readers


# Random preads from 4 threads (each compared with the source file), then the
# whole file front to back in 1 MiB pieces (each compared too).
MOUNT_READER = r"""
import errno, hashlib, json, os, random, sys, threading, time
path, source, seed, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
size = os.path.getsize(source)
src = os.open(source, os.O_RDONLY)
rng = random.Random(seed)
jobs = [(rng.randrange(size), rng.choice([1, 4096, 65536, 300000])) for _ in range(count)]
pre = {"ok": 0, "wrong": 0, "errnos": {}, "max_wait": 0.0}
lock = threading.Lock()
t0 = time.monotonic()
def worker(mine):
    fd = os.open(path, os.O_RDONLY)
    for off, n in mine:
        t = time.monotonic()
        try:
            got = os.pread(fd, n, off)
            res = "ok" if got == os.pread(src, n, off) else "wrong"
        except OSError as e:
            res = errno.errorcode.get(e.errno, str(e.errno))
        with lock:
            pre["max_wait"] = max(pre["max_wait"], time.monotonic() - t)
            if res in ("ok", "wrong"):
                pre[res] += 1
            else:
                pre["errnos"][res] = pre["errnos"].get(res, 0) + 1
    os.close(fd)
threads = [threading.Thread(target=worker, args=(jobs[i::4],)) for i in range(4)]
for t in threads: t.start()
for t in threads: t.join()
pre["elapsed"] = time.monotonic() - t0
full = {"ok": True, "errno": None, "wrong": 0}
sha, off, t1, fd = hashlib.sha256(), 0, time.monotonic(), os.open(path, os.O_RDONLY)
try:
    while True:
        piece = os.read(fd, 1 << 20)
        if not piece:
            break
        if piece != os.pread(src, len(piece), off):
            full["wrong"] += 1
        sha.update(piece)
        off += len(piece)
except OSError as e:
    full.update(ok=False, errno=errno.errorcode.get(e.errno, str(e.errno)))
full.update(offset=off, sha="sha256:" + sha.hexdigest(), elapsed=time.monotonic() - t1)
print(json.dumps({"preads": pre, "full": full}))
"""

# Reads a file front to back in 1 MiB pieces, comparing each with the source.
READ_ALL = r"""
import errno, hashlib, json, os, sys, time
path, source = sys.argv[1], sys.argv[2]
src = os.open(source, os.O_RDONLY)
sha, off, wrong, t0 = hashlib.sha256(), 0, 0, time.monotonic()
out = {"ok": True, "errno": None}
try:
    fd = os.open(path, os.O_RDONLY)
    while True:
        piece = os.read(fd, 1 << 20)
        if not piece:
            break
        if piece != os.pread(src, len(piece), off):
            wrong += 1
        sha.update(piece)
        off += len(piece)
except OSError as e:
    out = {"ok": False, "errno": errno.errorcode.get(e.errno, str(e.errno))}
out.update(offset=off, wrong=wrong, sha="sha256:" + sha.hexdigest(), elapsed=time.monotonic() - t0)
print(json.dumps(out))
"""

# os.stat of each path; prints {path: "ok" | errno name}.
STAT_PATHS = r"""
import errno, json, os, sys
out = {}
for p in sys.argv[1:]:
    try:
        os.stat(p)
        out[p] = "ok"
    except OSError as e:
        out[p] = errno.errorcode.get(e.errno, str(e.errno))
print(json.dumps(out))
"""


def child_json(proc, timeout, what):
    result = children.finish(proc, timeout, what=what)
    assert result.returncode == 0, f"{what} exited {result.returncode}:\n{result.stderr}"
    return json.loads(result.stdout)


def start_child(code, *args):
    return children.start([PYTHON, "-c", code, *args])


# ---------------------------------------------------------------- the mount fixture


# ---------------------------------------------------------------- the table


_TABLE = []


@pytest.fixture(scope="session")
def fault_table():
    """Rows (fault, path, what the reader saw, bytes refetched, requests) collected
    by the fault matrix; printed as a Markdown table when the session ends."""
    yield _TABLE
    if not _TABLE:
        return
    lines = ["", "| fault | path | what the reader saw | bytes refetched | requests |",
             "|---|---|---|---|---|"]
    for row in sorted(_TABLE, key=lambda r: (r["order"], r["path"])):
        lines.append(f"| {row['fault']} | {row['path']} | {row['saw']} | {row['refetched']} "
                     f"| {row['requests']} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = os.environ.get("BLOBFS_FAULTS_TABLE")
    if out:
        Path(out).write_text(text)


# ================================================================ 1. the fault matrix


class Case:
    """One fault scenario of the matrix.

    faults: [(kind, params)] set on the layer's blob requests before the read.
    expect: "ok" (the reader ends with the right bytes) or "fail" (EIO / exit 1
    within a bound, nothing committed); then="retry": afterwards, with the fault
    spent, a fresh attempt (pull again / remount) must give the right bytes.
    Bounds, all checked on the server's record: max_requests (blob requests,
    registry and CDN); max_refetch, the body bytes sent beyond one copy of the
    blob ("spans": what the spoiled responses were asked to carry, plus the
    request after each on the same connection, plus REFETCH_SLACK); max_seconds
    for the whole operation; quiet_after: once the readers of a mount have given
    up, no blob request may start more than this many seconds later.
    arm(reg) runs before the transfer starts, to have the server change
    something in the middle of it (after so many requests, counted by the
    server, not by the clock of a test that may be descheduled).
    """

    def __init__(self, id, label, faults=(), expect="ok", reg=None, args=(), size=LAYER_SIZE,
                 chunk_size=None, arm=None, max_requests=None, max_refetch="spans", max_seconds=20,
                 then=None, check=None, message=None, read_timeout=READ_TIMEOUT, quiet_after=None):
        self.id, self.label, self.faults, self.expect = id, label, list(faults), expect
        self.reg = reg or {}
        self.args = list(args)
        self.size, self.chunk_size, self.arm = size, chunk_size, arm
        self.max_requests, self.max_refetch, self.max_seconds = max_requests, max_refetch, max_seconds
        self.then, self.check, self.message = then, check, message
        self.read_timeout, self.quiet_after = read_timeout, quiet_after


REFETCH_SLACK = 512 * 1024   # healthy responses overlapping (a split tail, a slow restart)
MOUNT_FAIL_CAP = 300         # blob requests a mount may make for 4 preads and a full read that all fail


def _spoiled_spans(reg, requests, size):
    """What the spoiled responses (and the request after each on the same
    connection, which a broken response can spoil too) were asked to carry."""
    total, by_conn = 0, {}
    for r in requests:
        by_conn.setdefault((r.listener, r.conn), []).append(r)
    for r in requests:
        if r.fault is None:
            continue
        start, end = range_span(r.range, size)
        total += end - start
        same = by_conn[(r.listener, r.conn)]
        following = same[same.index(r) + 1:same.index(r) + 2]
        for n in following:
            s, e = range_span(n.range, size)
            total += e - s
    return total


def _check_hits(times):
    def check(reg, ctx):
        hits = [f.hits for f in ctx["faults"]]
        assert all(h == times for h in hits), \
            f"the fault was applied {hits} times, not {times}: the case proves nothing"
    return check


def _check_retry_after(reg, ctx):
    _check_hits(1)(reg, ctx)
    [limited] = [r for r in layer_requests(reg, ctx["digest"]) if r.status == 429]
    start = range_span(limited.range, ctx["size"])[0]
    later = [r for r in layer_requests(reg, ctx["digest"])
             if r.time > limited.time and r.status in (200, 206)
             and range_span(r.range, ctx["size"])[0] <= start < range_span(r.range, ctx["size"])[1]]
    assert later, f"the range {limited.range} answered 429 was never fetched again"
    waited = later[0].time - limited.time
    assert waited >= 0.9, f"the range answered 429 with Retry-After: 1 was asked again after {waited:.2f}s"


def _check_no_quarantine(reg, ctx):
    _check_hits(2)(reg, ctx)
    assert quarantine_files(ctx["store"]) == [], \
        f"bytes of a wrong Content-Range reached the blob and were caught only by its hash: " \
        f"{quarantine_files(ctx['store'])}"


def _check_stall(after):
    """The stalled range is asked for again within stall_timeout (+ backoff and
    slack) of the last byte the stalled response delivered."""
    def check(reg, ctx):
        _check_hits(1)(reg, ctx)
        [stalled] = [r for r in layer_requests(reg, ctx["digest"]) if r.fault == "stall"]
        start, _ = range_span(stalled.range, ctx["size"])
        again = [r for r in layer_requests(reg, ctx["digest"]) if r.time > stalled.time
                 and range_span(r.range, ctx["size"])[0] <= start + after < range_span(r.range, ctx["size"])[1]]
        assert again, f"the stalled range {stalled.range} was never asked for again"
        waited = again[0].time - stalled.time
        ctx["note"] = f"retried after {waited:.1f} s"
        assert waited <= STALL_TIMEOUT + 2.5, \
            (f"a response that stalled after {after} bytes was retried only {waited:.1f}s later, "
             f"with --stall-timeout {STALL_TIMEOUT} (documented: 'a request that receives no byte "
             f"for this long is cancelled and retried')")
    return check


def _check_quarantined(reg, ctx):
    assert any(hex_of(ctx["digest"]) in name for name in quarantine_files(ctx["store"])), \
        f"the corrupt blob is not in .blobfs/quarantine: {quarantine_files(ctx['store'])}"


def _check_chunksums_used(reg, ctx):
    _check_hits(1)(reg, ctx)
    assert reg.count(path_contains=f"/chunksums/{ctx['digest']}", status=200) == 1, \
        "blobfs did not fetch the chunk checksums: the case proves nothing"
    assert quarantine_files(ctx["store"]) == [], "a chunk the chunksums caught spoiled the whole blob"


def _check_chunksums_give_up(reg, ctx):
    assert reg.count(path_contains=f"/chunksums/{ctx['digest']}", status=200) == 1, \
        "blobfs did not fetch the chunk checksums: the case proves nothing"
    bad = 5 * CHUNKSUMS_CHUNK + 1234
    fetched = [r for r in layer_requests(reg, ctx["digest"]) if r.status in (200, 206)
               and range_span(r.range, ctx["size"])[0] <= bad < range_span(r.range, ctx["size"])[1]]
    ctx["note"] = f"the bad chunk was fetched {len(fetched)} times"
    assert len(fetched) <= RETRIES + 1, \
        (f"a chunk that fails its checksum every time was fetched {len(fetched)} times with "
         f"--retries {RETRIES}")


def _check_redirects(reg, ctx):
    assert reg.count(status=307) >= 2, "no redirect was followed: the case proves nothing"


def _check_cdn_expiry(reg, ctx):
    expired = reg.count(listener="cdn", status=403)
    assert expired >= 1, "no CDN URL expired: the case proves nothing"
    served = [r for r in layer_requests(reg, ctx["digest"]) if r.listener == "cdn" and r.status in (200, 206)]
    resolves = [r for r in layer_requests(reg, ctx["digest"]) if r.listener == "registry"]
    assert len(resolves) <= len(served) + expired + 4, \
        f"{len(resolves)} redirects from the registry for {len(served)} CDN ranges and {expired} expiries"


def _check_cdn_revoked(reg, ctx):
    assert reg.cdn_revoked_at is not None, "the CDN URLs were never revoked: the case proves nothing"
    expired = reg.count(listener="cdn", status=403)
    assert expired >= 1, "no request met the expired CDN URL: the case proves nothing"
    assert not reg.cdn_saw_authorization, "the CDN was sent an Authorization header"


def _check_tokens_ttl(reg, ctx):
    tokens = reg.count(path_contains="/token")
    assert tokens >= 2, "no token outlived its 1 s lifetime: the case proves nothing"
    assert tokens <= 25, f"{tokens} token requests for a transfer of a few seconds"


def _check_tokens_revoked(reg, ctx):
    assert reg.tokens_revoked_at is not None, "the tokens were never revoked: the case proves nothing"
    refused = [r for r in reg.requests(status=401, path_contains=f"/blobs/{ctx['digest']}")
               if r.time >= reg.tokens_revoked_at]
    assert refused, "no blob request met the revoked token: the case proves nothing"
    tokens = reg.count(path_contains="/token")
    assert tokens <= 8, f"{tokens} token requests for one revocation"


def _check_trickle(reg, ctx):
    restarts = len(ctx["log_lines"](r"restarting a slow range"))
    assert restarts <= 4, f"{restarts} slow-range restarts while every range was equally slow"


def _expire_tokens(reg):
    reg.expire_tokens(after=4)     # a few ranges get in with the token first


def _expire_cdn_urls(reg):
    reg.expire_cdn_urls(after=4)   # as a time-limited URL would expire, a few ranges in


STALL = ["--stall-timeout", STALL_TIMEOUT]

CASES = [
    Case("reset", "reset mid-body (3 times, after 100 kB)", [("reset", dict(after=100_000, times=3))],
         check=_check_hits(3), max_requests=40),
    Case("reset_forever", "reset before any body byte (every time)", [("reset", dict(after=0))],
         expect="fail", max_requests=40, quiet_after=2),
    Case("stall", "stall 30 s after 1000 bytes (once; stall_timeout 2)",
         [("stall", dict(seconds=30, after=1000, times=1))], args=STALL, check=_check_stall(1000),
         max_requests=40),
    Case("stall_at_0", "stall 30 s before any body byte (once; stall_timeout 2)",
         [("stall", dict(seconds=30, after=0, times=1))], args=STALL, check=_check_stall(0),
         max_requests=40),
    # read_timeout 5, shorter than the 3 attempts of 2 s: the read's own deadline decides
    Case("stall_forever", "stall before any body byte (every time; stall_timeout 2, read_timeout 5)",
         [("stall", dict(seconds=60, after=0))], args=STALL, expect="fail", max_requests=40,
         read_timeout=5, max_seconds=25),
    Case("500", "HTTP 500 (twice)", [("status", dict(code=500, times=2))], check=_check_hits(2),
         max_requests=40),
    Case("502", "HTTP 502 (twice)", [("status", dict(code=502, times=2))], check=_check_hits(2),
         max_requests=40),
    Case("503", "HTTP 503 (twice)", [("status", dict(code=503, times=2))], check=_check_hits(2),
         max_requests=40),
    Case("500_forever", "HTTP 500 (every time)", [("status", dict(code=500))], expect="fail",
         max_requests=40, quiet_after=2),
    Case("404_forever", "HTTP 404 for the blob (every time)", [("status", dict(code=404))], expect="fail",
         max_requests=40, quiet_after=2, message=r"404"),
    Case("429", "HTTP 429 with Retry-After: 1 (once)", [("status", dict(code=429, retry_after=1, times=1))],
         check=_check_retry_after, max_requests=40),
    Case("short", "short body: FIN at half the Content-Length (3 times)", [("short", dict(times=3))],
         check=_check_hits(3), max_requests=40),
    Case("extra_honest", "16 extra bytes, counted in Content-Length (twice)",
         [("extra", dict(honest=True, times=2))], check=_check_hits(2), max_requests=40),
    Case("extra_dishonest", "16 extra bytes past Content-Length (twice)",
         [("extra", dict(honest=False, times=2))], check=_check_hits(2), max_requests=40),
    # Each response is the whole blob; what matters is that blobfs, once it has seen
    # that, fetches the blob whole and in order instead of once per read.
    # One stream from offset 0 fills every missing chunk it passes: the blob once, plus slack.
    Case("ignore_range", "200 with the whole blob to every Range request", [("ignore_range", {})],
         max_requests=40, max_refetch=REFETCH_SLACK),
    Case("wrong_range", "Content-Range shifted by 4096 (twice)", [("wrong_range", dict(shift=4096, times=2))],
         check=_check_no_quarantine, max_requests=40),
    Case("corrupt_once", "one flipped byte, no chunksums (once)",
         [("corrupt", dict(offset=LAYER_SIZE // 2 + 17, times=1))], expect="fail", then="retry",
         check=_check_quarantined, max_requests=60, max_refetch=REFETCH_SLACK,
         message=r"verification|digest|Input/output"),
    Case("corrupt_forever", "one flipped byte, no chunksums (every time)",
         [("corrupt", dict(offset=LAYER_SIZE // 2 + 17))], expect="fail", check=_check_quarantined,
         max_requests=40, max_refetch=REFETCH_SLACK, message=r"verification|digest|Input/output"),
    Case("corrupt_chunksums", "one flipped byte, chunksums offered (once; 64 MiB blob, 4 MiB chunks)",
         [("corrupt", dict(offset=5 * CHUNKSUMS_CHUNK + 1234, times=1))], size=CHUNKSUMS_SIZE,
         chunk_size=CHUNKSUMS_CHUNK, check=_check_chunksums_used, max_requests=120,
         max_refetch=2 * CHUNKSUMS_CHUNK, max_seconds=40),
    Case("corrupt_chunksums_forever", "one flipped byte, chunksums offered (every time; 64 MiB blob)",
         [("corrupt", dict(offset=5 * CHUNKSUMS_CHUNK + 1234))], size=CHUNKSUMS_SIZE,
         chunk_size=CHUNKSUMS_CHUNK, expect="fail", check=_check_chunksums_give_up, max_requests=120,
         max_refetch=(RETRIES + 1) * CHUNKSUMS_CHUNK, max_seconds=40, message=r"checksum|Input/output"),
    Case("redirect_loop", "redirect loop registry <-> CDN (every time)", [("redirect_loop", dict(via="cdn"))],
         reg=dict(redirect=True), expect="fail", check=_check_redirects, max_requests=60, quiet_after=2,
         message=r"redirect"),
    Case("cdn_max_uses", "CDN URLs good for 3 uses (redirect mode)", reg=dict(redirect=True, cdn_max_uses=3),
         args=["--request-size", "256K"], check=_check_cdn_expiry, max_requests=120),
    Case("cdn_revoked", "CDN URLs revoked mid-transfer (trickle 300 kB/s, 64K requests)",
         [("trickle", dict(rate=300_000, listener="cdn"))], reg=dict(redirect=True),
         args=["--request-size", "64K"], arm=_expire_cdn_urls, check=_check_cdn_revoked, max_requests=250),
    Case("token_ttl", "bearer tokens valid 1 s (trickle 300 kB/s)", [("trickle", dict(rate=300_000))],
         reg=dict(auth="bearer", token_ttl=1), check=_check_tokens_ttl, max_requests=80),
    Case("token_revoked", "bearer tokens revoked mid-transfer (trickle 500 kB/s, 64K requests)",
         [("trickle", dict(rate=500_000))], reg=dict(auth="bearer"), args=["--request-size", "64K"],
         arm=_expire_tokens, check=_check_tokens_revoked, max_requests=150),
    Case("trickle", "trickle: every response at 300 kB/s", [("trickle", dict(rate=300_000))],
         check=_check_trickle, max_requests=60),
]


def _layer_source(case, tmp_path, blob_cache):
    """(bytes or None, path) of the case's layer."""
    if case.size == LAYER_SIZE:
        path = tmp_path / "layer.bin"
        path.write_bytes(LAYER)
        return LAYER, path
    path, _ = random_blob(blob_cache, case.size, seed=7)
    return None, path


def _describe_pull(result, elapsed):
    if result.returncode == 0:
        return f"exit 0, right bytes ({elapsed:.1f} s)"
    errors = [line[len("blobfs: error: "):] for line in result.stderr.splitlines()
              if line.startswith("blobfs: error: ")]
    # the first error line says why; the last one only which blob the pull gave up on
    why = errors[0] if errors else (result.stderr.strip().splitlines() or ["(nothing on stderr)"])[-1]
    why = re.sub(r"sha256[:-][0-9a-f]{64}", "sha256:…", why)
    why = re.sub(r"127\.0\.0\.1:\d+", "HOST", why)
    return f"exit {result.returncode} after {elapsed:.1f} s: “{why[:110]}”"


def _describe_mount(r):
    pre, full = r["preads"], r["full"]
    errs = ", ".join(f"{n}×{e}" for e, n in sorted(pre["errnos"].items()))
    parts = [f"preads: {pre['ok']} right" + (f", {pre['wrong']} WRONG" if pre["wrong"] else "")
             + (f", {errs}" if errs else "") + f" (slowest {pre['max_wait']:.1f} s)"]
    if full["ok"]:
        parts.append(f"full read: right bytes ({full['elapsed']:.1f} s)" if full["wrong"] == 0
                     else f"full read: {full['wrong']} WRONG pieces")
    else:
        parts.append(f"full read: {full['errno']} at byte {full['offset']} after {full['elapsed']:.1f} s"
                     + (f" ({full['wrong']} wrong pieces before)" if full["wrong"] else ""))
    return "; ".join(parts)


@pytest.mark.parametrize("path", ["pull", "mount"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_fault(case, path, fault_registry, run_blobfs, store, mount, tmp_path, blob_cache,
               fault_table):
    reg = fault_registry(**case.reg)
    data, source = _layer_source(case, tmp_path, blob_cache)
    _, (digest,) = reg.add_model(REPO, "latest", [(OLLAMA_MODEL, data if data is not None else source)],
                                 chunk_size=case.chunk_size)
    name = model_name(reg)
    global_args = ["--retries", RETRIES, "--read-timeout", case.read_timeout, *case.args]
    # Without chunk checksums a corrupt chunk can only be caught by the whole
    # blob's hash: bytes read before that may be wrong; the end of the blob may not.
    unverifiable = case.chunk_size is None and any(k == "corrupt" for k, _ in case.faults)
    npreads = 16 if case.expect == "ok" else 4
    if path == "mount":
        lazy_pull(run_blobfs, store, name)
    reg.reset_log()
    faults = [reg.fault(kind, digest=digest, **params) for kind, params in case.faults]
    ctx = {"faults": faults, "digest": digest, "size": case.size, "store": store}
    if case.arm:
        case.arm(reg)

    began = time.monotonic()
    if path == "pull":
        proc = run_blobfs.start([*global_args, "--debug", "pull", name])
    else:
        m = mount(global_args=global_args)
        proc = start_child(MOUNT_READER, tag_dir(m.path, reg.host) / "model", source, 1234, npreads)
    hard = case.max_seconds + 30
    if path == "pull":
        result = children.finish(proc, hard, what=f"blobfs pull with fault {case.id}")
        elapsed = time.monotonic() - began
        ctx["log_lines"] = lambda pattern: [l for l in result.stderr.splitlines() if re.search(pattern, l)]
        saw = _describe_pull(result, elapsed)
    else:
        r = child_json(proc, hard, f"the reader of a mount with fault {case.id}")
        elapsed = time.monotonic() - began
        ctx["log_lines"] = m.log_lines
        saw = _describe_mount(r)
    ctx["elapsed"] = elapsed
    readers_done = time.monotonic()
    print(f"{case.id}/{path}: {saw}")

    requests = layer_requests(reg, digest)
    sent = sum(x.bytes_sent for x in requests)
    spoiled = _spoiled_spans(reg, requests, case.size)
    refetch_bound = spoiled + REFETCH_SLACK if case.max_refetch == "spans" else case.max_refetch
    row = {"order": CASES.index(case), "fault": case.label, "path": path, "saw": saw,
           "refetched": fmt_bytes(sent - case.size) if sent >= case.size
           else f"0 (sent {fmt_bytes(sent)} of {fmt_bytes(case.size)})",
           "requests": f"{len(requests)}" + (f" (+{reg.count(status=401)} 401, "
                                             f"{reg.count(path_contains='/token')} token)"
                                             if case.reg.get("auth") else "")}
    fault_table.append(row)

    blob = store_blob(store, digest)
    try:
        if case.expect == "ok":
            if path == "pull":
                assert result.returncode == 0, \
                    f"pull with fault '{case.label}' failed:\n{result.stderr[-3000:]}"
                assert blob.is_file() and sha256_file(blob) == digest, "the pulled blob is missing or wrong"
            else:
                pre, full = r["preads"], r["full"]
                assert pre["wrong"] == 0 and full["wrong"] == 0, f"the mount returned WRONG bytes: {saw}"
                assert not pre["errnos"] and pre["ok"] == npreads, \
                    f"preads failed with fault '{case.label}': {saw}"
                assert full["ok"] and full["offset"] == case.size and full["sha"] == digest, \
                    f"the full read with fault '{case.label}' did not return the blob: {saw}"
                assert wait_for(lambda: blob.is_file(), timeout=10), \
                    f"the blob was read whole but not committed to blobs/: partial {partial_files(store)}"
                assert sha256_file(blob) == digest
            assert elapsed <= case.max_seconds, f"recovering from '{case.label}' took {elapsed:.1f}s"
        else:
            if path == "pull":
                assert result.returncode == 1, \
                    (f"pull with permanent fault '{case.label}' exited {result.returncode}:\n"
                     f"{result.stderr[-3000:]}")
                message = error_lines(result.stderr)
                assert re.search(case.message or "$^", message) or \
                    (case.message is None and hex_of(digest) in message), \
                    f"the error does not say what went wrong ({case.message or 'the blob'}): {message}"
            else:
                pre, full = r["preads"], r["full"]
                assert pre["wrong"] == 0 or unverifiable, f"the mount returned WRONG bytes: {saw}"
                assert full["wrong"] == 0 or unverifiable, f"the mount returned WRONG bytes: {saw}"
                assert not full["ok"] and full["errno"] == "EIO", \
                    f"reading a blob under permanent fault '{case.label}' must end in EIO: {saw}"
                assert set(pre["errnos"]) <= {"EIO"}, \
                    f"reads under permanent fault '{case.label}' failed with other errors than EIO: {saw}"
                bound = case.read_timeout + FAIL_SLACK
                assert pre["max_wait"] <= bound and full["elapsed"] <= bound, \
                    (f"a read(2) under permanent fault '{case.label}' took longer than read_timeout "
                     f"{case.read_timeout}s (+{FAIL_SLACK}s) to fail: {saw}")
                assert m.proc.poll() is None, f"the daemon exited ({m.proc.returncode})"
            assert elapsed <= case.max_seconds, \
                f"failing under permanent fault '{case.label}' took {elapsed:.1f}s (bound {case.max_seconds}s)"
            assert not blob.exists(), f"blobs/{blob.name} exists although the fault is permanent"

        if case.check:
            case.check(reg, ctx)
        max_requests = case.max_requests
        if path == "mount" and case.expect == "fail":
            max_requests = MOUNT_FAIL_CAP  # every read that misses tries again, by design
        assert max_requests is None or len(requests) <= max_requests, \
            f"{len(requests)} blob requests under fault '{case.label}' (bound {max_requests})"
        assert sent <= case.size + refetch_bound, \
            (f"{sent} bytes sent for a {case.size} byte blob under '{case.label}': "
             f"{sent - case.size} refetched, bound {refetch_bound} (the spoiled responses were asked "
             f"for {spoiled})")
        if path == "mount" and case.quiet_after is not None:
            time.sleep(max(0.0, case.quiet_after + 1 - (time.monotonic() - readers_done)))
            late = [x for x in layer_requests(reg, digest) if x.time > readers_done + case.quiet_after]
            assert not late, \
                (f"{len(late)} blob requests more than {case.quiet_after}s after every reader had "
                 f"given up: the mount keeps retrying on its own")
    finally:
        if ctx.get("note"):
            row["saw"] += f" [{ctx['note']}]"
    if path == "mount":
        m.cleanup()
    assert_store_consistent(store, {digest: data if data is not None else source})

    if case.then == "retry":
        # The fault is spent: a fresh attempt must now give the right bytes.
        if path == "pull":
            again = run_blobfs([*global_args, "pull", name], timeout=60)
            assert again.returncode == 0, f"pull after the fault was spent failed:\n{again.stderr}"
            row["saw"] += "; pull again: right bytes"
        else:
            m2 = mount(global_args=global_args)
            r2 = child_json(start_child(READ_ALL, tag_dir(m2.path, reg.host) / "model", source), 60,
                            "reading after remount")
            assert r2["ok"] and r2["sha"] == digest and r2["wrong"] == 0, \
                f"reading after a remount, with the fault spent, failed: {r2}"
            row["saw"] += "; after remount: right bytes"
            m2.cleanup()
        assert wait_for(lambda: blob.is_file(), timeout=10) and sha256_file(blob) == digest
        sent2 = sum(x.bytes_sent for x in layer_requests(reg, digest))
        row["refetched"] = fmt_bytes(sent2 - case.size) + " (incl. the retry)"
        assert sent2 <= 2 * case.size + refetch_bound, \
            f"{sent2} bytes for two attempts at a {case.size} byte blob"
        assert_store_consistent(store, {digest: data if data is not None else source})


# ================================================================ 2. crash consistency


CRASH_SIZE = 64 * MiB
CRASH_RATE = 256 * 1024      # bytes/s per response (trickle), so a cold read takes long
CRASH_KILLS = 22
SAVE_INTERVAL = 1.0          # the chunk map is saved about every second (blob_opts.sync_interval_ms)


def _map_present(store, digest):
    """Chunks (start, end) the blob's chunk map marks durable; empty if no map."""
    mp = Path(store) / ".blobfs" / "partial" / (blob_name(digest) + ".map")
    try:
        _, present, _, _ = parse_chunk_map(mp.read_bytes())
    except FileNotFoundError:
        return set()
    return {(s, e) for _, s, e in present}


@pytest.mark.slow
def test_kill_9_at_random_moments_of_a_cold_read(fault_registry, run_blobfs, store, mount, blob_cache):
    source, digest = random_blob(blob_cache, CRASH_SIZE, seed=7)
    reg = fault_registry()
    reg.add_model(REPO, "latest", [(OLLAMA_MODEL, source)])
    lazy_pull(run_blobfs, store, model_name(reg))
    reg.reset_log()
    reg.fault("trickle", rate=CRASH_RATE, digest=digest)
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    print(f"kill moments seeded with {seed}")
    sources = {digest: source}
    path = None
    kept_before = set()
    history = []
    for kill in range(CRASH_KILLS):
        m = mount("background=always", path=path)
        path = m.path
        reader = start_child(READ_ALL, tag_dir(m.path, reg.host) / "model", source)
        delay = rng.uniform(0.1, 1.5)
        time.sleep(delay)
        assert m.proc.poll() is None, f"the daemon died on its own before kill {kill + 1}:\n{m.log()}"
        assert not store_blob(store, digest).exists(), \
            f"the blob was complete after {kill} kills: the trickle did not slow the read enough"
        m.kill(signal.SIGKILL)
        m.proc.wait(10)
        try:
            reader.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            reader.kill()
            m.force_detach()
            reader.communicate(timeout=15)
        m.force_detach()
        assert not m.mounted(), f"{m.path} is still mounted after kill -9 and fusermount3 -uz"
        # What the map says is durable must be right, and must not shrink.
        assert_store_consistent(store, sources)
        kept = _map_present(store, digest)
        lost = kept_before - kept
        assert not lost, f"kill {kill + 1}: {len(lost)} chunks the chunk map had marked durable are gone"
        history.append((round(delay, 2), sum(e - s for s, e in kept)))
        kept_before = kept
    print("kills (delay s, bytes the map marks durable):", history)
    sent_during_kills = reg.bytes_sent(digest=digest)
    peak = reg.peak_in_flight

    # With the faults gone, one more mount reads the whole file: the right bytes.
    reg.clear_faults()
    m = mount(path=path)
    r = child_json(start_child(READ_ALL, tag_dir(m.path, reg.host) / "model", source), 120,
                   "the final read")
    assert r["ok"] and r["wrong"] == 0 and r["sha"] == digest and r["offset"] == CRASH_SIZE, \
        f"the final read after {CRASH_KILLS} kills did not return the blob: {r}"
    blob = store_blob(store, digest)
    assert wait_for(lambda: blob.is_file(), timeout=10), \
        f"the blob was read whole but not committed: partial {partial_files(store)}"
    m.cleanup()
    assert_store_consistent(store, sources)
    assert sha256_file(blob) == digest

    # The bound on what the kills may cost.  At a kill, what was fetched but is
    # not in the saved map is lost: the map is saved about every SAVE_INTERVAL, so
    # up to ~1 s of fetching (1.5 s allowing for the fdatasync and the worker's
    # wake-up) at the aggregate rate peak × CRASH_RATE, plus, for each request in
    # flight, the chunk it had started but not finished.  The bytes the server had
    # handed to the kernel but blobfs had not read yet are at most one trickle
    # step per request (CRASH_RATE / 20 every 50 ms), covered by the 1.5 s.
    chunk = 16 * 1024  # blobfs's default chunk for a 64 MiB blob
    per_kill = int(peak * CRASH_RATE * (SAVE_INTERVAL + 0.5) + peak * chunk)
    total = reg.bytes_sent(digest=digest)
    info = (f"{CRASH_KILLS} kills, up to {peak} requests in flight at {CRASH_RATE} B/s each: the server "
            f"sent {total} bytes ({sent_during_kills} while killing) for a {CRASH_SIZE} byte blob; "
            f"bound {CRASH_SIZE} + {CRASH_KILLS} x {per_kill}")
    print(info)
    assert sent_during_kills > 4 * MiB, "hardly anything was fetched between the kills: " + info
    assert total <= CRASH_SIZE + CRASH_KILLS * per_kill, info


# ================================================================ 3. disk full


DISK_SIZE = 32 * MiB
BIG_LAYER = 64 * MiB


def _disk_free(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_disk_full_mount_read_fails_cleanly_then_resumes(fault_registry, run_blobfs, mount, tmpfs,
                                                         blob_cache):
    disk = tmpfs(DISK_SIZE)
    store = disk / "store"
    source, digest = random_blob(blob_cache, BIG_LAYER, seed=7)
    reg = fault_registry()
    reg.add_model(REPO, "latest", [(OLLAMA_MODEL, source)])
    lazy_pull(run_blobfs, store, model_name(reg))
    m = mount(store=store, global_args=["--read-timeout", READ_TIMEOUT])
    model = tag_dir(m.path, reg.host) / "model"

    first = child_json(start_child(READ_ALL, model, source), READ_TIMEOUT + 30, "reading on a full disk")
    print("on a full disk:", first, "free:", _disk_free(disk))
    assert first["wrong"] == 0, f"the read returned WRONG bytes before failing: {first}"
    assert not first["ok"], \
        f"a {BIG_LAYER} byte blob was read whole from a store on a {DISK_SIZE} byte disk: {first}"
    assert first["errno"] in ("ENOSPC", "EIO"), f"the read failed with {first['errno']}, not ENOSPC/EIO"
    assert first["elapsed"] <= READ_TIMEOUT + FAIL_SLACK, f"the read took {first['elapsed']:.1f}s to fail"
    assert m.log_lines(r"No space left on device"), \
        f"the daemon's log does not say the disk is full:\n{m.log()}"
    assert not store_blob(store, digest).exists(), "a blob that cannot fit was committed"
    assert m.proc.poll() is None, "the daemon exited when the disk filled up"
    assert_store_consistent(store, {digest: source})
    sent_full = reg.bytes_sent(digest=digest)
    asked_full = len(reg.requests(lambda r: r.digest is not None, digest=digest))
    kept = int(os.getxattr(model, "user.blobfs.cached"))

    tmpfs.resize(disk, 3 * BIG_LAYER)
    second = child_json(start_child(READ_ALL, model, source), 60, "reading after space was freed")
    assert second["ok"] and second["wrong"] == 0 and second["sha"] == digest, \
        f"once space was freed, reading the file still failed: {second}"
    blob = store_blob(store, digest)
    assert wait_for(lambda: blob.is_file(), timeout=10), f"not committed: {partial_files(store)}"
    assert sha256_file(blob) == digest
    m.cleanup()
    assert_store_consistent(store, {digest: source})
    # Lost at the failure is what the requests then in flight had received but
    # not written, and whatever the server had pushed into their sockets: that
    # depends on timing. What the second read asks for must be what was lost
    # and nothing that was kept.
    refetched = sum(r.bytes_sent for r in
                    reg.requests(lambda r: r.digest is not None, digest=digest)[asked_full:])
    info = (f"the server sent {sent_full} bytes until the disk was full, {kept} of them kept, "
            f"and {refetched} after, for a {BIG_LAYER} byte blob on a {DISK_SIZE} byte disk")
    print(info)
    assert 0 < kept <= DISK_SIZE, info
    assert refetched <= BIG_LAYER - kept + REFETCH_SLACK, info


def test_disk_full_pull_fails_cleanly_then_resumes(fault_registry, run_blobfs, mount, tmpfs, blob_cache):
    disk = tmpfs(DISK_SIZE)
    store = disk / "store"
    source, digest = random_blob(blob_cache, BIG_LAYER, seed=7)
    reg = fault_registry()
    reg.add_model(REPO, "latest", [(OLLAMA_MODEL, source)])
    name = model_name(reg)

    # A pull that cannot fit fails at once, before fetching the blob.
    began = time.monotonic()
    result = run_blobfs(["pull", name], store=store, timeout=60)
    took = time.monotonic() - began
    assert result.returncode == 1, f"pull onto a full disk exited {result.returncode}:\n{result.stderr}"
    assert "No space left on device" in error_lines(result.stderr), result.stderr
    assert took < 20, f"pull onto a full disk took {took:.1f}s to fail"
    assert not store_blob(store, digest).exists()
    assert_store_consistent(store, {digest: source})
    assert reg.bytes_sent(digest=digest) <= 4 * MiB, \
        f"{reg.bytes_sent(digest=digest)} bytes of a blob that cannot fit were fetched"

    # Leave a partial blob: a mount reads (slowly, so the map is saved) until the disk is full.
    reg.fault("trickle", rate=1 * MiB, digest=digest)
    m = mount(store=store, global_args=["--read-timeout", 30])
    r = child_json(start_child(READ_ALL, tag_dir(m.path, reg.host) / "model", source), 60,
                   "reading until the disk is full")
    assert not r["ok"] and r["wrong"] == 0, r
    m.cleanup()
    reg.clear_faults()
    kept = sum(e - s for s, e in _map_present(store, digest))
    assert kept > 8 * MiB, f"only {kept} bytes of the partial blob survived the unmount"
    assert_store_consistent(store, {digest: source})

    # Still full: pull refuses with the reason, and changes nothing durable.
    result = run_blobfs(["pull", name], store=store, timeout=60)
    assert result.returncode == 1 and "No space left on device" in error_lines(result.stderr), \
        f"pull with the disk still full exited {result.returncode}:\n{result.stderr}"
    assert sum(e - s for s, e in _map_present(store, digest)) >= kept, "the failed pull lost progress"
    assert_store_consistent(store, {digest: source})

    # With room again, pull finishes and fetches only what was missing.
    tmpfs.resize(disk, 3 * BIG_LAYER)
    mark = reg.bytes_sent(digest=digest)
    result = run_blobfs(["pull", name], store=store, timeout=60)
    assert result.returncode == 0, f"pull after space was freed failed:\n{result.stderr}"
    assert sha256_file(store_blob(store, digest)) == digest
    assert_store_consistent(store, {digest: source})
    fetched = reg.bytes_sent(digest=digest) - mark
    print(f"kept {kept} of {BIG_LAYER} bytes; the resumed pull fetched {fetched}")
    assert fetched <= BIG_LAYER - kept + 2 * MiB, \
        f"the resumed pull fetched {fetched} bytes although {kept} of {BIG_LAYER} were kept"


# ================================================================ 4. a read-only store


@pytest.mark.parametrize("kind", ["populated", "empty"])
@pytest.mark.parametrize("foreground", [False, True], ids=["daemon", "foreground"])
def test_read_only_store_is_refused_by_mount(kind, foreground, fault_registry, run_blobfs, tmp_path,
                                            ro_bind):
    src = tmp_path / "store"
    src.mkdir()
    if kind == "populated":
        reg = fault_registry()
        reg.add_model(REPO, "latest", [(OLLAMA_MODEL, LAYER)])
        result = run_blobfs(["pull", "--quiet", model_name(reg)], store=src, timeout=30)
        assert result.returncode == 0, result.stderr
    before = tree_snapshot(src)
    ro = ro_bind(src)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        result = run_blobfs(["mount", *(["-f"] if foreground else []), mnt], store=ro, timeout=20)
        time.sleep(0.3)
        mounted = mounted_at(mnt)
    finally:
        if is_blobfs_mount(mnt):
            children.run(["fusermount3", "-u", mnt])
            wait_for(lambda: not is_blobfs_mount(mnt), timeout=5)
            if is_blobfs_mount(mnt):
                children.run(["fusermount3", "-uz", mnt])
    assert result.returncode != 0, \
        f"blobfs mount of a read-only store exited 0 (mounted: {mounted}); stderr:\n{result.stderr}"
    assert mounted is None, f"{mnt} has a {mounted} mount after a refused mount"
    message = error_lines(result.stderr)
    assert str(ro) in message, f"the error does not name the store {ro}: {message}"
    assert re.search(r"read-only|not writable", message, re.I), \
        f"the error does not say the store cannot be written: {message}"
    assert tree_snapshot(src) == before


# ================================================================ 5. hostile input


LIST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def _hostile_manifests(reg):
    """id -> (body bytes, Content-Type, pattern the refusal must match, fault to set or None).

    Every one of them must be refused before anything is stored or fetched."""
    config = reg.add_blob(b'{"model_format":"gguf"}')
    layer = reg.add_blob(LAYER[:100_000])
    cfg = {"mediaType": DOCKER_CONFIG, "digest": config, "size": 23}

    def desc(size=100_000, digest=layer, media_type=OLLAMA_MODEL, **extra):
        return {"mediaType": media_type, "digest": digest, "size": size, **extra}

    def manifest(layers, media_type=DOCKER_MANIFEST, **top):
        doc = {"schemaVersion": 2, "mediaType": media_type, "config": cfg, "layers": layers, **top}
        return json.dumps({k: v for k, v in doc.items() if v is not None}).encode()

    good = manifest([desc()])
    child_digest = reg.add_manifest("library/child", "latest", good)
    padding = "a" * (10 * 1000 * 1000)
    return {
        "size_huge": (manifest([desc(size=1 << 50)]), DOCKER_MANIFEST, r"absurd size", None),
        "size_over_limit": (manifest([desc(size=(1 << 42) + 1)]), DOCKER_MANIFEST, r"absurd size", None),
        "size_negative": (manifest([desc(size=-1)]), DOCKER_MANIFEST, r"negative size", None),
        "size_fraction": (manifest([desc(size=1.5)]), DOCKER_MANIFEST, r"whole number", None),
        "size_string": (manifest([desc(size="100000")]), DOCKER_MANIFEST, r"no size", None),
        "size_exponent": (b'{"schemaVersion":2,"mediaType":"%s","config":%s,"layers":[{"mediaType":"%s",'
                          b'"digest":"%s","size":1e400}]}' % (DOCKER_MANIFEST.encode(), json.dumps(cfg).encode(),
                                                              OLLAMA_MODEL.encode(), layer.encode()),
                          DOCKER_MANIFEST, r"whole number|absurd|size", None),
        "duplicate_layers": (manifest([desc(), desc()]), DOCKER_MANIFEST, r"repeats layer", None),
        "duplicate_two_sizes": (manifest([desc(), desc(size=99, media_type="application/vnd.ollama.image.license")]),
                                DOCKER_MANIFEST, r"twice with different sizes", None),
        "name_dotdot_path": (manifest([desc(name="../../x")]), DOCKER_MANIFEST, r"unsafe name", None),
        "name_absolute": (manifest([desc(name="/etc/passwd")]), DOCKER_MANIFEST, r"unsafe name", None),
        # names are paths (Ollama's tensor format), but only safe relative ones
        "name_empty_component": (manifest([desc(name="a//b")]), DOCKER_MANIFEST,
                                 r"layer 0 has an unsafe name 'a//b'.*empty component", None),
        "name_trailing_slash": (manifest([desc(name="a/")]), DOCKER_MANIFEST,
                                r"layer 0 has an unsafe name.*empty component", None),
        "name_dot_component": (manifest([desc(name="a/./b")]), DOCKER_MANIFEST,
                               r"layer 0 has an unsafe name.*'\.' component", None),
        "name_dotdot_inside": (manifest([desc(name="text_encoder/../../x")]), DOCKER_MANIFEST,
                               r"layer 0 has an unsafe name.*'\.\.' component", None),
        "name_control_in_dir": (manifest([desc(name="a\x1b/b")]), DOCKER_MANIFEST,
                                r"layer 0 has an unsafe name.*control character 0x1b", None),
        "name_component_long": (manifest([desc(name="a/" + "c" * 256)]), DOCKER_MANIFEST,
                                r"layer 0 has an unsafe name.*over NAME_MAX", None),
        "name_too_deep": (manifest([desc(name="d/" * 33 + "f")]), DOCKER_MANIFEST,
                          r"layer 0 has an unsafe name.*nested more than 32", None),
        "name_path_too_long": (manifest([desc(name=("p" * 200 + "/") * 5 + "p" * 30)]), DOCKER_MANIFEST,
                               r"layer 0 has an unsafe name.*over the limit of 1024", None),
        "name_file_and_dir": (manifest([desc(name="text_encoder"),
                                        desc(name="text_encoder/config.json")]), DOCKER_MANIFEST,
                              r"layer 0 has the name 'text_encoder', which is both a file and a "
                              r"directory \(layer 1", None),
        "name_under_config": (manifest([desc(name="config.json/x")]), DOCKER_MANIFEST,
                              r"layer 0 has the name 'config.json/x', which needs 'config.json' "
                              r"as a directory", None),
        "filepath_escape": (manifest([desc(annotations={"org.cncf.model.filepath": "../../x"})],
                                     media_type=OCI_MANIFEST), OCI_MANIFEST,
                            r"layer 0 has an unsafe name '../../x' \(org.cncf.model.filepath\)", None),
        "filepath_absolute": (manifest([desc(annotations={"org.cncf.model.filepath": "/etc/x"})],
                                       media_type=OCI_MANIFEST), OCI_MANIFEST,
                              r"layer 0 has an unsafe name.*absolute", None),
        "name_dotdot": (manifest([desc(name="..")]), DOCKER_MANIFEST, r"unsafe name", None),
        "name_control": (manifest([desc(name="x\x01y")]), DOCKER_MANIFEST, r"unsafe name", None),
        "name_empty": (manifest([desc(name="")]), DOCKER_MANIFEST, r"unsafe name", None),
        "name_not_string": (manifest([desc(name=["x"])]), DOCKER_MANIFEST, r"name that is not a string", None),
        "title_escape": (manifest([desc(annotations={"org.opencontainers.image.title": "../../x"})],
                                  media_type=OCI_MANIFEST), OCI_MANIFEST, r"unsafe name", None),
        "digest_garbage": (manifest([desc(digest="sha256:" + "Z" * 64)]), DOCKER_MANIFEST, r"invalid digest", None),
        "digest_path": (manifest([desc(digest="sha256:../../../../etc/passwd")]), DOCKER_MANIFEST,
                        r"invalid digest", None),
        "digest_upper": (manifest([desc(digest="sha256:" + hex_of(layer).upper())]), DOCKER_MANIFEST,
                         r"invalid digest", None),
        "digest_md5": (manifest([desc(digest="md5:" + "0" * 32)]), DOCKER_MANIFEST, r"invalid digest", None),
        "digest_short": (manifest([desc(digest="sha256:abc")]), DOCKER_MANIFEST, r"invalid digest", None),
        "manifest_10MB": (manifest([desc()], annotations={"padding": padding}), DOCKER_MANIFEST,
                          r"larger than|over the .* limit", None),
        "manifest_64MiB_in_transit": (good, DOCKER_MANIFEST, r"larger than|over the .* limit", ("huge", {})),
        "truncated_in_transit": (good, DOCKER_MANIFEST, r"does not match the digest|JSON", ("bad_json", {})),
        "not_json": (b"<html><body>502 Bad Gateway</body></html>", "text/html", r"not valid JSON", None),
        "json_array": (b"[]", DOCKER_MANIFEST, r"not a JSON object", None),
        "nul_byte": (manifest([desc(name="x\u0000y")]), DOCKER_MANIFEST, r"NUL|unsafe", None),
        "manifest_list": (json.dumps({"schemaVersion": 2, "mediaType": LIST_MEDIA_TYPE, "manifests": [
            {"mediaType": DOCKER_MANIFEST, "digest": child_digest, "size": len(good),
             "platform": {"architecture": "amd64", "os": "linux"}}]}).encode(),
            LIST_MEDIA_TYPE, r"manifest list", None),
        "oci_index": (json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": child_digest, "size": len(good)}]}).encode(),
            OCI_INDEX, r"manifest list", None),
        "index_without_media_type": (json.dumps({"schemaVersion": 2, "manifests": []}).encode(),
                                     "application/json", r"index|list of manifests", None),
        "media_type_config": (manifest([desc()], media_type=DOCKER_CONFIG), DOCKER_CONFIG,
                              r"unsupported manifest media type", None),
        "media_type_html": (manifest([desc()], media_type="text/html"), "text/html",
                            r"unsupported manifest media type", None),
        "schema_v1": (manifest([desc()], schemaVersion=1), DOCKER_MANIFEST, r"schemaVersion", None),
        "no_layers": (manifest([]), DOCKER_MANIFEST, r"no layers", None),
        "layer_not_object": (manifest(["sha256:" + "0" * 64]), DOCKER_MANIFEST, r"not an object", None),
        "no_config": (json.dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
                                  "layers": [desc()]}).encode(), DOCKER_MANIFEST, r"no config", None),
    }


HOSTILE_IDS = sorted([
    "size_huge", "size_over_limit", "size_negative", "size_fraction", "size_string", "size_exponent",
    "duplicate_layers", "duplicate_two_sizes", "name_dotdot_path", "name_absolute",
    "name_dotdot", "name_control", "name_empty", "name_not_string", "title_escape", "digest_garbage",
    "name_empty_component", "name_trailing_slash", "name_dot_component", "name_dotdot_inside",
    "name_control_in_dir", "name_component_long", "name_too_deep", "name_path_too_long",
    "name_file_and_dir", "name_under_config", "filepath_escape", "filepath_absolute",
    "digest_path", "digest_upper", "digest_md5", "digest_short", "manifest_10MB",
    "manifest_64MiB_in_transit", "truncated_in_transit", "not_json", "json_array", "nul_byte",
    "manifest_list", "oci_index", "index_without_media_type", "media_type_config", "media_type_html",
    "schema_v1", "no_layers", "layer_not_object", "no_config"])


def _serve_hostile(reg, kinds):
    """Serve each hostile manifest as library/<kind>:latest; returns {kind: pattern}."""
    table = _hostile_manifests(reg)
    assert sorted(table) == HOSTILE_IDS
    patterns = {}
    for kind in kinds:
        body, content_type, pattern, fault = table[kind]
        repo = f"library/{kind.replace('_', '-')}"
        reg.add_manifest(repo, "latest", body, content_type)
        if fault:
            reg.fault(fault[0], on="manifest", digest=None, **fault[1])
        patterns[kind] = (repo, pattern)
    return patterns


def _outside(root, store):
    return tree_snapshot(root, skip=store)


@pytest.mark.parametrize("kind", HOSTILE_IDS)
def test_hostile_manifest_is_refused_by_pull(kind, fault_registry, run_blobfs, tmp_path):
    reg = fault_registry()
    [(repo, pattern)] = _serve_hostile(reg, [kind]).values()
    outer = tmp_path / "outer"
    store = outer / "store"
    store.mkdir(parents=True)
    before = _outside(tmp_path, store)
    reg.reset_log()
    result = run_blobfs(["pull", f"{reg.host}/{repo}"], store=store, timeout=30)
    assert result.returncode == 1, f"pull of a hostile manifest ({kind}) exited {result.returncode}:\n" \
                                   f"{result.stdout}\n{result.stderr}"
    message = error_lines(result.stderr)
    assert repo in message, f"the error does not name the model: {message}"
    assert re.search(pattern, message), f"the error does not say what is wrong ({pattern}): {message}"
    assert manifest_files(store) == [], f"a refused manifest was stored: {manifest_files(store)}"
    assert files_under(store / "blobs") == [] and partial_files(store) == []
    assert reg.count(lambda r: "/blobs/" in r.path or "/chunksums/" in r.path) == 0, \
        "blobs were fetched for a refused manifest"
    assert _outside(tmp_path, store) == before, "something was written outside the store"


def test_hostile_manifests_are_refused_by_discovery(fault_registry, blobfs_bin, mount, tmp_path):
    reg = fault_registry()
    patterns = _serve_hostile(reg, [k for k in HOSTILE_IDS if k not in
                                    ("manifest_64MiB_in_transit", "truncated_in_transit")])
    # the faults in transit need their own registry: they apply to every manifest
    transit = fault_registry()
    transit_patterns = _serve_hostile(transit, ["manifest_64MiB_in_transit"])
    transit2 = fault_registry()
    transit2_patterns = _serve_hostile(transit2, ["truncated_in_transit"])
    outer = tmp_path / "outer"
    store = outer / "store"
    store.mkdir(parents=True)
    before = _outside(tmp_path, store)
    m = mount(store=store)
    lookups = []
    for registry, table in ((reg, patterns), (transit, transit_patterns), (transit2, transit2_patterns)):
        for kind, (repo, pattern) in table.items():
            lookups.append((kind, registry, repo, pattern))
    paths = []
    for kind, registry, repo, pattern in lookups:
        paths.append(m.path / "models" / registry.host / repo / "latest")
        paths.append(m.path / "manifests" / registry.host / repo / "latest")
    began = time.monotonic()
    seen = child_json(start_child(STAT_PATHS, *paths), 120, "looking up hostile tags")
    took = time.monotonic() - began
    wrong = {str(p.relative_to(m.path)): seen[str(p)] for p in paths if seen[str(p)] != "ENOENT"}
    assert not wrong, f"lookups of tags with hostile manifests did not fail with ENOENT: {wrong}"
    assert took < 60, f"{len(paths)} lookups took {took:.1f}s"
    missing_reason = []
    for kind, registry, repo, pattern in lookups:
        lines = m.log_lines(re.escape(f"{registry.host}/{repo}") + r".*failed")
        if not any(re.search(pattern, line) for line in lines):
            missing_reason.append(f"{kind}: {lines or 'no log line'}")
    assert not missing_reason, "the log does not say why discovery refused:\n" + "\n".join(missing_reason)
    assert manifest_files(store) == [], f"refused manifests were stored: {manifest_files(store)}"
    assert files_under(store / "blobs") == []
    for registry in (reg, transit, transit2):
        assert registry.count(lambda r: "/blobs/" in r.path) == 0, "blobs were fetched for refused manifests"
    assert m.proc.poll() is None, "the daemon exited"
    m.cleanup()
    assert _outside(tmp_path, store) == before, "something was written outside the store"


# Names that must never reach the registry or the store.  (A '..' component never
# reaches blobfs: the kernel resolves it; that case is checked separately.)
BAD_PARTS = {
    "tag_control": ("library", "x", "la\x01test"),
    "tag_newline": ("library", "x", "latest\n"),
    "tag_long": ("library", "x", "t" * 81),
    "tag_dot": ("library", "x", ".hidden"),
    "tag_dash": ("library", "x", "-x"),
    "tag_dots": ("library", "x", "..."),
    "tag_space": ("library", "x", "la test"),
    "tag_percent": ("library", "x", "%2e%2e"),
    "model_long": ("library", "m" * 81, "latest"),
    "model_control": ("library", "x\x7f", "latest"),
    "model_dots": ("library", "...", "latest"),
    "ns_long": ("n" * 81, "x", "latest"),
    "ns_dot": ("library.", "x", "latest"),
    "ns_colon": ("lib:rary", "x", "latest"),
    "ns_backslash": ("lib\\rary", "x", "latest"),
    "ns_unicode": ("librаry", "x", "latest"),   # a Cyrillic 'а'
}


def test_hostile_names_through_discovery(fault_registry, blobfs_bin, mount, tmp_path):
    reg = fault_registry()
    manifest, _ = reg.add_model(REPO, "latest", [(OLLAMA_MODEL, LAYER[:100_000])])
    # a registry that ignores case (as Ollama's does) serves the same manifest in capitals
    reg.add_manifest("LIBRARY/X", "LATEST", manifest)
    outer = tmp_path / "outer"
    store = outer / "store"
    store.mkdir(parents=True)
    before = _outside(tmp_path, store)
    m = mount(store=store)
    host = reg.host
    paths = {}
    for kind, (ns, name, tag) in BAD_PARTS.items():
        paths[kind] = m.path / "models" / host / ns / name / tag
        paths[kind + "/manifests"] = m.path / "manifests" / host / ns / name / tag
    paths["host_bad"] = m.path / "models" / "evil host" / "library" / "x" / "latest"
    paths["host_unreachable"] = m.path / "models" / "127.0.0.1:1" / "library" / "x" / "latest"
    paths["dotdot"] = m.path / "models" / host / "library" / ".." / "x" / "latest" / "latest"
    seen = child_json(start_child(STAT_PATHS, *paths.values()), 60, "looking up hostile names")
    got = {kind: seen[str(p)] for kind, p in paths.items()}
    wrong = {kind: v for kind, v in got.items() if v not in ("ENOENT", "ENAMETOOLONG")}
    assert not wrong, f"hostile names did not fail with ENOENT: {wrong}"
    asked = [r.path for r in reg.requests(path_contains="/manifests/")]
    # (library/../x/latest/latest is x/latest:latest once the kernel has resolved '..': a valid name)
    bad_asked = [p for p in asked if p.split("?")[0] not in ("/v2/library/x/manifests/latest",
                                                             "/v2/x/latest/manifests/latest")]
    assert not bad_asked, f"the registry was asked for invalid names: {bad_asked}"
    assert manifest_files(store) == [], f"manifests were stored for hostile names: {manifest_files(store)}"

    # The valid tag is discovered; its capitalised twin must not become a second copy.
    good = m.path / "models" / host / "library" / "x" / "latest"
    caps = m.path / "models" / host / "LIBRARY" / "X" / "LATEST"
    seen = child_json(start_child(STAT_PATHS, good, caps), 30, "looking up the valid tag")
    print("valid and capitalised lookups:", seen, "registry asked:",
          [r.path for r in reg.requests(path_contains="/manifests/")])
    assert seen[str(good)] == "ok", f"discovery of the valid tag failed: {seen}"
    stored = manifest_files(store)
    assert stored == [f"{host}/library/x/latest"], \
        (f"looking up {caps.relative_to(m.path)} ({seen[str(caps)]}) when {host}/library/x:latest is "
         f"stored left the manifests {stored}: the casing already stored must win")
    assert m.proc.poll() is None, "the daemon exited"
    m.cleanup()
    assert _outside(tmp_path, store) == before, "something was written outside the store"


@pytest.mark.parametrize("name", [
    "library/x:la\x01test", "library/x:latest\n", "library/" + "m" * 81, "../../../../tmp/x",
    "library/x:../../../../tmp/x", "library/%2e%2e:latest", "LIBRARY/../../x", "library/x:" + "t" * 81,
    "evil host/library/x", "library/x@sha256:" + "0" * 64 + "/../../x",
], ids=["tag_control", "tag_newline", "model_long", "dotdot", "tag_dotdot", "percent", "caps_dotdot",
        "tag_long", "host_space", "digest_suffix"])
def test_hostile_names_are_refused_by_pull(name, fault_registry, run_blobfs, tmp_path):
    reg = fault_registry()
    reg.add_model(REPO, "latest", [(OLLAMA_MODEL, LAYER[:100_000])])
    outer = tmp_path / "outer"
    store = outer / "store"
    store.mkdir(parents=True)
    before = _outside(tmp_path, store)
    full = name if name.startswith("evil") else f"{reg.host}/{name}"
    result = run_blobfs(["pull", full], store=store, cwd=outer, timeout=20)
    assert result.returncode != 0, f"pull {name!r} succeeded:\n{result.stdout}"
    assert "invalid model name" in error_lines(result.stderr), result.stderr
    assert reg.count(path_contains="/manifests/") == 0, "the registry was asked for an invalid name"
    assert manifest_files(store) == [] and files_under(store / "blobs") == []
    assert _outside(tmp_path, store) == before, "something was written outside the store"
