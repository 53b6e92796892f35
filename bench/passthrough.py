"""bench/run's `passthrough` measurement: a fresh mount over a complete store,
FUSE passthrough on and off in the same rounds, against the store's own file.

The blob is pulled whole into one store. Each round, in rotating order:
  blobfs         a fresh `blobfs mount -f` (passthrough on where it can be:
                 the status file must show the open in passthrough and no READ
                 reaching the daemon, else the round fails), then a timed cat
  nopassthrough  the same with `-o nopassthrough`: every read through the daemon
  native         cat of the blob file in the store
each in two cases: `hot`, the store's file read once first, so that it is in
the page cache; `dropped`, `sync; echo 3 > drop_caches` first.

Memory: /proc/meminfo's Cached before and right after the timed cat (the
page cache the read added, or took away), and how much of the store's file is
resident afterwards (mincore). With passthrough the store's page cache is the
only copy; without it, the mount's page cache holds the bytes read and the
daemon advises the store's copy out as it goes (src/blob.c, drop_behind), so
the next fresh mount reads them from the disk again.

This module keeps to itself: bench/run calls measure(bench, core, served)
inside the uncapped profile, and report()/appendix() for its section. `core`
is bench/run's namespace (run_timed, Failed, cat, drop_caches, ...).
"""
import ctypes
import json
import mmap
import os
import time

TOOLS = ("blobfs", "nopassthrough", "native")
CASES = (("hot", "store file in the page cache"), ("dropped", "every cache dropped"))
TARGET = 0.95
PAGE = 4096


def cached_bytes():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Cached:"):
                return int(line.split()[1]) * 1024
    return 0


def resident_bytes(path):
    """Bytes of PATH in the page cache (mincore over a shared mapping)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap")
        try:
            vec = ctypes.create_string_buffer((size + PAGE - 1) // PAGE)
            if libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore")
            return sum(b & 1 for b in vec.raw) * PAGE
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)


def mount_status(store, m):
    path = os.path.join(store, ".blobfs", "run", "%d.json" % m.pid)
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def settled_status(store, m, opens, timeout=5):
    """M's status once it counts OPENS opens (it is rewritten about once a second)."""
    deadline = time.monotonic() + timeout
    st = mount_status(store, m)
    while st.get("opens", 0) < opens and time.monotonic() < deadline:
        time.sleep(0.1)
        st = mount_status(store, m)
    return st


class Passthrough:
    def __init__(self, bench, core, s):
        self.b, self.c, self.s = bench, core, s
        self.store = bench.tmpdir("store")
        core.run_timed([bench.blobfs, "--store", self.store, "--quiet", "pull", s.name],
                       bench.timeout(s.size), what="blobfs pull")
        self.local = os.path.join(self.store, "blobs", "sha256-" + s.hex)
        for other in (s.source, str(s.reg.blob_path(s.digest))):
            core.evict(other)

    def prepare(self, case):
        if case == "dropped":
            self.c.drop_caches()
        else:
            self.c.run_timed(["cat", self.local], self.b.timeout(self.s.size))

    def timed_cat(self, path, m=None):
        before = cached_bytes()
        dt = self.c.cat(path, self.s.size, self.b.timeout(self.s.size), m.abort if m else None)
        added = cached_bytes() - before
        return {"time": dt, "cache_added": added, "store_resident": resident_bytes(self.local)}

    def one(self, case, tool, where):
        self.prepare(case)
        if tool == "native":
            return self.timed_cat(self.local)
        opts = ("-o", "nopassthrough") if tool == "nopassthrough" else ()
        m = self.b.blobfs_mount(self.store, where, opts=opts)
        try:
            path = self.s.mount_path(m.mountpoint)
            got = self.b.blobfs_read(lambda: self.timed_cat(path, m), m, where)
            st = settled_status(self.store, m, 1)
            got.update(opens_passthrough=st.get("opens_passthrough"), reads=st.get("reads"))
            if tool == "blobfs" and (st.get("opens_passthrough") != 1 or st.get("reads")):
                raise self.c.Failed("the read was not by passthrough (passthrough %s; %s opens "
                                    "in passthrough, %s READs reached the daemon)" % (
                                        st.get("passthrough"), st.get("opens_passthrough"),
                                        st.get("reads")))
            return got
        finally:
            self.b.blobfs_close(m, where)
            self.c.safe_rmtree(m.mountpoint)

    def run(self):
        try:
            for case, text in CASES:
                where = "passthrough %s %s" % (case, self.c.size_name(self.s.size))
                res = self.b.rounds_of("%s: %s" % (where, text), list(TOOLS),
                                       lambda tool, r, case=case, where=where:
                                       self.one(case, tool, where))
                res.update(case=case, size=self.s.size)
                self.b.results.setdefault("passthrough", []).append(res)
        finally:
            self.c.safe_rmtree(self.store)


def measure(bench, core, s):
    Passthrough(bench, core, s).run()


# --------------------------------------------------------------------------
# Report

def report(rep, core):
    c = core
    rep.out("## 9. FUSE passthrough, on and off (`passthrough`)", "",
            "A fresh mount over a store holding the complete blob, each round: `cat` through a "
            "mount with passthrough (**blobfs**; the daemon's status must count the open in "
            "passthrough and no READ), through a mount with `-o nopassthrough`, and `cat` of "
            "the blob file in the store (**native**), in rotating order; with the store's file "
            "in the page cache (hot) and with every cache dropped. Page cache: the change in "
            "`/proc/meminfo` Cached over the cat (other work on the machine moves it too), and "
            "how much of the store's file is resident after it (mincore).", "")
    if rep.section_error("passthrough"):
        return
    for res in rep.ran("passthrough", lambda res: c.size_name(res.get("size", 0))):
        size = res["size"]
        rep.out("### %s, %s" % (dict(CASES)[res["case"]], c.size_name(size)), "",
                "| tool | rounds | time (s) | MB/s | speed ÷ native | Cached added (MiB) | "
                "store file resident after (MiB) |", "|---|---|---|---|---|---|---|")
        for tool in res["tools"]:
            vals = c.tool_values(res, tool)
            note = c.status_note(res, tool)
            if not vals:
                rep.out("| %s | 0 | %s | | | | |" % (tool, note or "no data"))
                continue
            ratio = "—" if tool == "native" else c.fmt3(c.summary(
                c.ratios(res, "native", tool)), "%.2f", "×")
            added = c.summary([rd[tool]["cache_added"] / 2**20 for rd in res["rounds"]
                               if tool in rd])
            resident = c.summary([rd[tool]["store_resident"] / 2**20 for rd in res["rounds"]
                                  if tool in rd])
            rep.out("| %s | %d | %s | %s | %s | %s | %s |" % (
                tool + (" (%s)" % note if note else ""), len(vals), c.fmt3(c.summary(vals)),
                c.fmt3(c.summary([size / v / 1e6 for v in vals]), "%.0f"), ratio,
                c.fmt3(added, "%.0f"), c.fmt3(resident, "%.0f")))
        rep.out("")
        rep.target("9", "fresh mount, %s: cat with passthrough ≥ %.2f× native, %s" % (
            res["case"], TARGET, c.size_name(size)), c.ratios(res, "native", "blobfs"),
            lambda x: x >= TARGET, lambda x: "%.2f×" % x)


def appendix(rep):
    for res in rep.b.results.get("passthrough", []):
        if "rounds" in res:
            yield "passthrough %s %d MiB" % (res["case"], res["size"] >> 20), res
