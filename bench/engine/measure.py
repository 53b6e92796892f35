"""bench/run's `engine` measurement: llama.cpp itself loading a GGUF through a mount.

The model is a llama-architecture GGUF made by gguf.py (seeded random F32
weights, 2.19 GB), pushed as an Ollama model layer. The engine is llama.cpp
from node-llama-cpp's prebuilt CPU binary (load.mjs: mmap with MAP_POPULATE
and madvise(WILLNEED), as llama.cpp does on Linux, then 16 tokens generated
greedily); the access shapes of other loaders come from shapes.c. Every
engine run must generate the tokens the local file gives, and every shape
run must read the bytes it reads from the local file.

Cases, each blobfs against its peer within a round (pairs):
  cold (both CDN profiles)  a fresh store and mount, load_ms, against aria2c
                            -x16 to a file and then load_ms on that file
  complete blob (uncapped): the blob committed in the store, a fresh mount each
  time (and, with bench/run --nopassthrough, one with -o nopassthrough too),
  against the store's own blob file (the local file):
    load, store file in page cache / every cache dropped
    load in a mount whose page cache already holds the file (filled by cat)
    4 threads pread-ing whole tensors, file order (store in page cache)
    mmap without MAP_POPULATE, pages touched in a forward pass's order
    cat, store file in page cache / every cache dropped
The daemon's peak RSS is sampled in every blobfs run.

This module keeps to itself: bench/run calls Engine(bench, core) once, then
run_profile() inside each CDN profile, and report() for its section. `core`
is bench/run's namespace (run_timed, Failed, Sampler, ...).
"""
import json
import os
import shutil
import subprocess

from . import gguf

HERE = os.path.dirname(os.path.abspath(__file__))
LOAD = os.path.join(HERE, "load.mjs")
SHAPES_C = os.path.join(HERE, "shapes.c")
TOKENS = 16
PREAD_THREADS = 4
SEED = 1
REPO = "library/bench-engine"

# (key, title, peer, target kind, limit): blobfs time ÷ peer time must be
# <= limit ("time"), or peer time ÷ blobfs time >= limit ("speed").
CASES = (
    ("cold", "cold mount, load (vs aria2c -x16 download, then load)", "aria2c+load", "time", 0.9),
    ("hot", "complete blob, fresh mount, store in page cache: load", "local", "time", 1.2),
    ("dropped", "complete blob, fresh mount, every cache dropped: load", "local", "time", 1.2),
    ("fusehot", "FUSE page cache hot: load", "local", "time", 1.1),
    ("pread", "complete blob, fresh mount: %d threads pread tensors" % PREAD_THREADS, "local",
     None, None),
    ("mmap", "complete blob, fresh mount: mmap, touched in fault order", "local", None, None),
    ("cat-hot", "complete blob, fresh mount, store in page cache: cat", "native cat", "speed",
     0.9),
    ("cat-dropped", "complete blob, fresh mount, every cache dropped: cat", "native cat",
     "speed", 0.9),
)
TITLES = {c[0]: c for c in CASES}


def missing():
    """Why the engine cannot run here, or None."""
    if not shutil.which("node"):
        return "node is not installed (contrib/setup-debian --bench)"
    if not os.path.isdir(os.path.join(HERE, "node_modules", "node-llama-cpp")):
        return ("node-llama-cpp is not installed in bench/engine "
                "(contrib/setup-debian --bench)")
    if not (shutil.which("gcc") or shutil.which("cc")):
        return "no C compiler for shapes.c"
    return None


class Engine:
    def __init__(self, bench, core):
        self.b, self.c = bench, core
        why = missing()
        if why:
            raise core.Failed(why)
        self.model_path, self.digest = self.make_model()
        self.size = os.path.getsize(self.model_path)
        self.shapes = os.path.join(bench.work, "shapes")
        cc = shutil.which("gcc") or shutil.which("cc")
        r = subprocess.run([cc, "-O2", "-Wall", "-o", self.shapes, SHAPES_C, "-lpthread"],
                           capture_output=True, text=True, timeout=120)
        if r.returncode:
            raise core.Failed("cannot build shapes.c: " + core.one_line(r.stderr))
        by = {name: (off, n) for name, off, n in gguf.layout()}
        self.file_ranges = self.ranges_file("file", [by[name] for name, _, _ in gguf.layout()])
        head = gguf.layout()[0][1]
        self.fault_ranges = self.ranges_file(
            "fault", [(0, head)] + [by[name] for name in gguf.compute_order(by)])
        self.model = None
        self.ref = {}           # what the local file gives: tokens, shape sums
        self.timeout = core.SLACK + 3 * self.size // core.MIN_RATE

    # --- set-up ---

    def make_model(self):
        cache = self.b.cache
        path = os.path.join(cache, "engine-llama-%d.gguf" % SEED)
        sha = path + ".sha256"
        if not (os.path.exists(path) and os.path.exists(sha)):
            print("  generating the engine model (%s)" % os.path.basename(path), flush=True)
            with open(sha, "w") as f:
                f.write("sha256:" + gguf.write(path, SEED))
        with open(sha) as f:
            return path, f.read().strip()

    def ranges_file(self, name, ranges):
        path = os.path.join(self.b.work, "%s.ranges" % name)
        with open(path, "w") as f:
            f.writelines("%d %d\n" % r for r in ranges)
        return path

    def served(self, reg, profile):
        c = self.c
        if self.model is None:
            self.model = c.make_model(os.path.join(self.b.work, "engine-model"),
                                      [(c.models.OLLAMA_MODEL, self.model_path),
                                       (c.models.OLLAMA_PARAMS, b"{}")])
        c.push_model(reg, REPO, "latest", self.model)
        return c.Served(reg, profile, self.size, self.model, repo=REPO)

    # --- the engine and the shapes ---

    def load(self, path, m=None):
        """Run llama.cpp on PATH; returns its JSON (load_ms, tokens, ...)."""
        _, _, out = self.c.run_timed(["node", LOAD, path, "--tokens", str(TOKENS)],
                                     self.timeout, on_timeout=m.abort if m else None,
                                     what="llama.cpp (node load.mjs)", capture=True)
        got = json.loads(out.decode().strip().splitlines()[-1])
        ref = self.ref.setdefault("tokens", got["tokens"])
        if got["tokens"] != ref:
            raise self.c.Failed("llama.cpp generated tokens %s, the local file gives %s" % (
                got["tokens"], ref))
        return got

    def shape(self, kind, path, m=None):
        argv = ([self.shapes, "pread", path, str(PREAD_THREADS), self.file_ranges]
                if kind == "pread" else [self.shapes, "mmap", path, self.fault_ranges])
        _, _, out = self.c.run_timed(argv, self.timeout, on_timeout=m.abort if m else None,
                                     what="shapes " + kind, capture=True)
        got = json.loads(out)
        ref = self.ref.setdefault(kind, got["sum"])
        if got["sum"] != ref:
            raise self.c.Failed("shapes %s read other bytes than from the local file "
                                "(sum %s, expected %s)" % (kind, got["sum"], ref))
        return got

    def through(self, m, where, fn):
        """FN() (a read through mount M), sampling the daemon; a blobfs incident if
        it fails. Returns FN's result with the daemon's peak RSS."""
        sampler = self.c.Sampler(m.pid)
        sampler.start()
        try:
            got = self.b.blobfs_read(fn, m, where)
        finally:
            sampler.stop()
        got["hwm_kib"] = sampler.peak.get("VmHWM")
        return got

    # --- the cases ---

    def run_profile(self, reg, profile):
        s = self.served(reg, profile)
        s.prewarm()
        self.pair(s, "cold", profile)
        if profile == "uncapped":
            self.complete(s)

    def mounts(self, key):
        """The blobfs mounts of KEY's rounds: (tool, (binary or None, mount options))."""
        out = [("blobfs", (None, ()))]
        if self.b.args.baseline:
            out.append(("baseline", (self.b.args.baseline, ())))
        if self.b.args.nopassthrough and key != "cold":   # complete blobs only
            out.append(("nopassthrough", (None, ("-o", "nopassthrough"))))
        return out

    def pair(self, s, key, profile, setup=None):
        """Rounds of KEY: every blobfs mount against the peer."""
        title = "engine %s: %s" % (profile, TITLES[key][1])
        peer = TITLES[key][2]
        tools = [t for t, _ in self.mounts(key)] + [peer]
        how = dict(self.mounts(key))
        one = getattr(self, "case_" + key.replace("-", "_"))
        res = self.b.rounds_of(title, tools, lambda tool, r: one(
            s, tool if tool == peer else "blobfs", how.get(tool), title))
        res.update(case=key, profile=profile, peer=peer)
        self.b.results.setdefault("engine", []).append(res)

    def case_cold(self, s, tool, how, where):
        b, c = self.b, self.c
        if tool == "blobfs":
            store, m = b.blobfs_fresh(s, where, how[0])
            try:
                path = s.mount_path(m.mountpoint)
                got = self.through(m, where, lambda: self.load(path, m))
                b.blobfs_done(store, m, s, where)
                return {"time": got["load_ms"] / 1000, "hwm_kib": got["hwm_kib"]}
            finally:
                b.blobfs_close(m, where)
                c.safe_rmtree(store)
                c.safe_rmtree(m.mountpoint)
        out = b.tmpdir("out")
        try:
            dt, _, _ = c.run_timed(b.aria2c(s.url, out), b.timeout(s.size))
            got = self.load(os.path.join(out, "blob"))
            return {"time": dt + got["load_ms"] / 1000, "download": dt,
                    "load": got["load_ms"] / 1000}
        finally:
            c.safe_rmtree(out)

    def complete(self, s):
        """The complete-blob cases: one store holding the committed blob."""
        b, c = self.b, self.c
        where = "engine: complete blob"
        self.store = b.tmpdir("store")
        try:
            c.run_timed([b.blobfs, "--store", self.store, "--quiet", "pull", s.name],
                        b.timeout(s.size), what="blobfs pull")
        except c.Failed as e:
            b.incident(where, str(e))
            raise
        self.local = os.path.join(self.store, "blobs", "sha256-" + s.hex)
        for other in (s.source, str(s.reg.blob_path(s.digest))):
            c.evict(other)
        try:
            for key in ("hot", "dropped", "fusehot", "pread", "mmap", "cat-hot", "cat-dropped"):
                self.pair(s, key, "uncapped")
        finally:
            c.safe_rmtree(self.store)

    def prepare(self, dropped):
        if dropped:
            self.c.drop_caches()
        else:
            self.c.run_timed(["cat", self.local], self.b.timeout(self.size))

    def on_mount(self, s, how, where, dropped, fn):
        """Prepare the caches, mount the store afresh and run FN(path, mount)."""
        self.prepare(dropped)
        m = self.b.blobfs_mount(self.store, where, opts=how[1], binary=how[0])
        try:
            return fn(s.mount_path(m.mountpoint), m)
        finally:
            self.b.blobfs_close(m, where)
            self.c.safe_rmtree(m.mountpoint)

    def engine_case(self, s, tool, how, where, dropped, fill=False):
        if tool == "local":
            self.prepare(dropped)
            return {"time": self.load(self.local)["load_ms"] / 1000}

        def run(path, m):
            if fill:
                self.b.blobfs_read(lambda: self.c.cat(path, s.size, self.b.timeout(s.size),
                                                      m.abort), m, where)
            got = self.through(m, where, lambda: self.load(path, m))
            return {"time": got["load_ms"] / 1000, "hwm_kib": got["hwm_kib"]}
        return self.on_mount(s, how, where, dropped, run)

    def case_hot(self, s, tool, how, where):
        return self.engine_case(s, tool, how, where, dropped=False)

    def case_dropped(self, s, tool, how, where):
        return self.engine_case(s, tool, how, where, dropped=True)

    def case_fusehot(self, s, tool, how, where):
        return self.engine_case(s, tool, how, where, dropped=False, fill=True)

    def shape_case(self, kind, s, tool, how, where):
        if tool == "local":
            self.prepare(False)
            return {"time": self.shape(kind, self.local)["seconds"]}

        def run(path, m):
            got = self.through(m, where, lambda: self.shape(kind, path, m))
            return {"time": got["seconds"], "hwm_kib": got["hwm_kib"]}
        return self.on_mount(s, how, where, False, run)

    def case_pread(self, s, tool, how, where):
        return self.shape_case("pread", s, tool, how, where)

    def case_mmap(self, s, tool, how, where):
        return self.shape_case("mmap", s, tool, how, where)

    def cat_case(self, s, tool, how, where, dropped):
        c = self.c
        if tool == "native cat":
            self.prepare(dropped)
            return {"time": c.cat(self.local, s.size, self.b.timeout(s.size))}

        def run(path, m):
            dt = self.through(m, where, lambda: {"time": c.cat(
                path, s.size, self.b.timeout(s.size), m.abort)})
            return dt
        return self.on_mount(s, how, where, dropped, run)

    def case_cat_hot(self, s, tool, how, where):
        return self.cat_case(s, tool, how, where, dropped=False)

    def case_cat_dropped(self, s, tool, how, where):
        return self.cat_case(s, tool, how, where, dropped=True)


# --------------------------------------------------------------------------
# Report

def report(rep, core):
    """Render the engine section into bench/run's Report REP."""
    c = core
    rep.out("## 8. An inference engine loading a model (`engine`)", "",
            "llama.cpp (node-llama-cpp's prebuilt CPU binary, `getLlama({gpu: false, build: "
            "\"never\"})`, as many threads as cores) loads a llama-architecture GGUF v3 of "
            "seeded random F32 weights (bench/engine/gguf.py) with mmap, MAP_POPULATE and "
            "madvise(WILLNEED), and generates %d tokens greedily; the time is llama.cpp's "
            "load (`loadModel`), and every run must generate the tokens the local file gives. "
            "Cold: a fresh store and mount against aria2c -x16 to a file, then the load "
            "(download + load). Complete blob: the blob committed in a store, a fresh mount "
            "for every run, against the store's own blob file; \"store in page cache\" means "
            "the store's file was read just before, \"every cache dropped\" means `echo 3 > "
            "/proc/sys/vm/drop_caches` just before. FUSE page cache hot: the file was read "
            "through that mount with cat first. The shapes (bench/engine/shapes.c): %d threads "
            "taking whole tensors in file order and `pread`ing each into a buffer; `mmap` "
            "without MAP_POPULATE, touching every page of the header and then of each tensor in "
            "the order a forward pass uses them. Ratio: blobfs's time over the peer's (< 1: "
            "blobfs is faster), except for cat, where it is blobfs's speed over native cat's. "
            "Peak RSS: the daemon's VmHWM, sampled every 50 ms during blobfs's runs." % (
                TOKENS, PREAD_THREADS), "")
    if rep.section_error("engine"):
        return
    res_list = rep.b.results["engine"]
    rep.out("| case | CDN | blobfs (s) | peer | peer (s) | ratio | target | daemon peak RSS (MiB) |",
            "|---|---|---|---|---|---|---|---|")
    for res in res_list:
        if "error" in res:
            rep.out("| %s | %s | failed to run: %s | | | | | |" % (
                res.get("case", "?"), res.get("profile", ""), c.one_line(res["error"], 300)))
            continue
        key, title, peer, kind, limit = TITLES[res["case"]]
        bt, pt = c.tool_values(res, "blobfs"), c.tool_values(res, peer)
        if kind == "speed":
            ratio = c.ratios(res, peer)          # peer time / blobfs time
        else:
            ratio = [1 / x for x in c.ratios(res, peer)]
        hwm = [v / 1024 for v in c.tool_values(res, "blobfs", "hwm_kib")]
        target = "—" if kind is None else ("≥ %.1f×" % limit if kind == "speed"
                                           else "≤ %.1f×" % limit)
        notes = "; ".join(x for x in (c.status_note(res, "blobfs"), c.status_note(res, peer)) if x)
        rep.out("| %s%s | %s | %s | %s | %s | %s | %s | %s |" % (
            title, " (%s)" % notes if notes else "", res["profile"],
            c.fmt3(c.summary(bt), "%.3f"), peer, c.fmt3(c.summary(pt), "%.3f"),
            c.fmt3(c.summary(ratio), "%.2f", "×"), target, c.fmt3(c.summary(hwm), "%.1f")))
        if "baseline" in res["tools"]:
            base = c.tool_values(res, "baseline")
            rep.out("| … the --baseline build | %s | %s | | | | | |" % (
                res["profile"], c.fmt3(c.summary(base), "%.3f")))
        if "nopassthrough" in res["tools"]:
            nopt = c.ratios(res, peer, "nopassthrough")
            rep.out("| … with -o nopassthrough | %s | %s | %s | | %s | | |" % (
                res["profile"], c.fmt3(c.summary(c.tool_values(res, "nopassthrough")), "%.3f"),
                peer, c.fmt3(c.summary(nopt if kind == "speed" else [1 / x for x in nopt]),
                             "%.2f", "×")))
        if kind == "speed":
            rep.target("8", "%s ≥ %.1f× native, %s" % (title, limit, res["profile"]), ratio,
                       lambda x, lim=limit: x >= lim, lambda x: "%.2f×" % x)
        elif kind == "time":
            rep.target("8", "%s ≤ %.1f× %s, %s" % (title, limit, peer, res["profile"]), ratio,
                       lambda x, lim=limit: x <= lim, lambda x: "%.2f×" % x)
    rep.out("")


def appendix(rep):
    for res in rep.b.results.get("engine", []):
        if "rounds" in res:
            yield "engine %s %s" % (res["profile"], res["case"]), res
