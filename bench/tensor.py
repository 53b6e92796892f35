"""bench/run's `tensor` measurement: a model of many small blobs, the shape of
Ollama's tensor-format models (one blob per tensor, media type
application/vnd.ollama.image.tensor, the tensor's name in the layer's "name",
here a path: blk.N/attn_q.weight, one directory per block).

The model: LAYERS layers, all but BIG_LAYERS of them "tensors" of 256 KiB to
about 2 MiB (seeded sizes, about 1 MiB on average), and BIG_LAYERS of 32 MiB,
shuffled into the manifest (seeded), plus the config. Each round, in rotating
order, on the uncapped CDN:
  blobfs   `blobfs pull` into a fresh store (the manifest fetch included)
  aria2c   `aria2c -j64` of every blob's registry URL (the same URLs blobfs
           asks first, redirects followed), from an input file, into a
           fresh directory
  mount    a fresh store, `blobfs pull --lazy` and a mount (not timed), then
           `cat` of every file of the tag in manifest order, one process: a
           loader walking the tag. Its ratio is against the pull of the same round.
  ls       before the cat, `ls -lR` of the tag directory in that fresh mount
           (nothing fetched yet), timed alone.

bench/run calls measure(bench, core) with its namespace as `core`, and
report()/appendix() for its section.
"""
import os
import random
import time

LAYERS = 1000
BIG_LAYERS = 4
BIG = 32 << 20
SMALL_MIN = 256 << 10
SMALL_MAX = 2 << 20
SEED = 13
ARIA2_JOBS = 64
TOOLS = ("blobfs", "aria2c", "mount")
TENSOR = "application/vnd.ollama.image.tensor"
PULL_TARGET = 1.2
MOUNT_TARGET = 0.9
LS_TARGET_MS = 50
REPO = "library/bench-tensor"


def layer_specs(n=LAYERS):
    """(media type, size, seed) per layer, and the tensor name of each."""
    rng = random.Random(SEED)
    sizes = [rng.randrange(SMALL_MIN, SMALL_MAX, 4096) + rng.randrange(4096)
             for _ in range(n - BIG_LAYERS)] + [BIG] * BIG_LAYERS
    rng.shuffle(sizes)
    specs = [(TENSOR, size, 1000 + i) for i, size in enumerate(sizes)]
    names = {i: "blk.%d/%s.weight" % (i // 8, ("attn_q", "attn_k", "attn_v", "attn_output",
                                               "ffn_gate", "ffn_up", "ffn_down", "norm")[i % 8])
             for i in range(n)}
    return specs, names


class Tensor:
    def __init__(self, bench, core, reg, model):
        self.b, self.c, self.reg, self.model = bench, core, reg, model
        self.name = "%s/%s:latest" % (reg.host, REPO)
        self.size = sum(x.size for x in model.blobs)
        self.urls = ["%s/v2/%s/blobs/%s" % (reg.url, REPO, x.digest) for x in model.blobs]
        self.timeout = bench.timeout(self.size, 2)
        self.ls_ms = []

    def pull(self, where):
        store = self.b.tmpdir("store")
        try:
            dt, _, _ = self.c.run_timed([self.b.blobfs, "--store", store, "--quiet", "pull",
                                         self.name], self.timeout, what="blobfs pull")
            for x in self.model.blobs:
                got = os.path.join(store, "blobs", "sha256-" + x.hex)
                if os.path.getsize(got) != x.size:
                    raise self.b.blobfs_failed(where, "%s has %d bytes, expected %d" % (
                        got, os.path.getsize(got), x.size))
            return {"time": dt}
        except self.c.Failed as e:
            self.b.incident(where, str(e))
            raise
        finally:
            self.c.safe_rmtree(store)

    def aria2c(self):
        out = self.b.tmpdir("out")
        listing = os.path.join(out, "urls.txt")
        with open(listing, "w") as f:
            for url, x in zip(self.urls, self.model.blobs):
                f.write("%s\n  out=%s\n" % (url, x.hex))
        try:
            dt, _, _ = self.c.run_timed(
                ["aria2c", "-q", "-j%d" % ARIA2_JOBS, "--file-allocation=none",
                 "--allow-overwrite=true", "--auto-file-renaming=false",
                 "--console-log-level=error", "-d", out, "-i", listing],
                self.timeout, what="aria2c")
            for x in self.model.blobs:
                got = os.path.getsize(os.path.join(out, x.hex))
                if got != x.size:
                    raise self.c.Failed("aria2c wrote %d bytes of %s, expected %d" % (
                        got, x.hex, x.size))
            return {"time": dt}
        finally:
            self.c.safe_rmtree(out)

    def files(self, mnt):
        tag = os.path.join(mnt, "models", self.reg.host, REPO, "latest")
        return tag, [os.path.join(tag, x.name) for x in self.model.layers]

    def mount(self, where, verify):
        store = self.b.tmpdir("store")
        self.c.run_timed([self.b.blobfs, "--store", store, "--quiet", "pull", "--lazy",
                          self.name], 60, what="blobfs pull --lazy")
        m = self.b.blobfs_mount(store, where)
        try:
            tag, paths = self.files(m.mountpoint)
            dt, _, text = self.b.blobfs_read(lambda: self.c.run_timed(
                ["ls", "-lR", tag], 60, on_timeout=m.abort, what="ls -lR", capture=True),
                m, where)
            listed = sum(1 for line in text.decode("utf-8", "replace").splitlines()
                         if line.startswith("-"))
            if listed < len(paths):
                raise self.b.blobfs_failed(where, "ls -lR listed %d files, expected at least %d"
                                           % (listed, len(paths)))
            ls_s = dt
            total = sum(x.size for x in self.model.layers)
            dt, io, _ = self.b.blobfs_read(lambda: self.c.run_timed(
                ["cat", *paths], self.timeout, on_timeout=m.abort, what="cat"), m, where)
            if io is not None and io["wchar"] != total:
                raise self.b.blobfs_failed(where, "cat read %d bytes, expected %d" % (
                    io["wchar"], total))
            if verify:
                for path, x in zip(paths, self.model.layers):
                    self.b.blobfs_read(lambda: self.c.compare(
                        path, str(x.path), x.size, self.timeout, m.abort), m, where)
            return {"time": dt, "ls_ms": ls_s * 1000}
        finally:
            self.b.blobfs_close(m, where)
            self.c.safe_rmtree(store)
            self.c.safe_rmtree(m.mountpoint)

    def one(self, tool, r):
        where = "tensor %d layers" % len(self.model.layers)
        if tool == "blobfs":
            return self.pull(where)
        if tool == "aria2c":
            return self.aria2c()
        return self.mount(where + " (mount)", verify=(r == 0))

    def run(self):
        res = self.b.rounds_of("tensor: %d layers, %s" % (
            len(self.model.layers), self.c.size_name(self.size)), list(TOOLS), self.one)
        res.update(layers=len(self.model.layers), size=self.size)
        self.b.results["tensor"] = res


def measure(bench, core, reg):
    t0 = time.monotonic()
    specs, names = layer_specs()
    model = core.make_model(os.path.join(bench.work, "model-tensor"), specs, names=names,
                            cache_dir=bench.cache)
    core.models.push_model(reg, REPO, "latest", model)
    print("  tensor model (%d layers) ready and pushed in %.1fs" % (
        len(model.layers), time.monotonic() - t0), flush=True)
    for x in model.blobs:
        core.run_timed(["cat", str(reg.blob_path(x.digest))], 60)   # the CDN's page cache
    Tensor(bench, core, reg, model).run()


# --------------------------------------------------------------------------
# Report

def report(rep, core):
    c = core
    rep.out("## 10. A model of many small blobs (`tensor`)", "",
            "The shape of Ollama's tensor-format models: %d layers of media type `%s`, each "
            "named after a tensor by a path (`blk.N/attn_q.weight`: a directory per "
            "block); all but %d are 256 KiB to 2 MiB (seeded sizes), %d are "
            "32 MiB, in a seeded shuffle; uncapped CDN. Each round, in rotating order: "
            "**blobfs** `blobfs pull` into a fresh store (manifest included); **aria2c** "
            "`aria2c -j%d` of every blob's registry URL from an input file; **mount** a fresh "
            "store, `pull --lazy` and a mount (not timed), `ls -lR` of the tag directory "
            "(timed alone), then one `cat` of every file of the tag in manifest order (timed). "
            "The mount's ratio is against the pull of the same round; the warm-up round "
            "compares every file read through the mount with its source." % (
                LAYERS, TENSOR, BIG_LAYERS, BIG_LAYERS, ARIA2_JOBS), "")
    if rep.section_error("tensor"):
        return
    res = rep.b.results["tensor"]
    size = res["size"]
    names = {"blobfs": "blobfs pull", "aria2c": "aria2c -j%d (to files)" % ARIA2_JOBS,
             "mount": "cold mount, cat of every file in manifest order"}
    rep.out("| tool | rounds | time (s) | MB/s | speed ratio |", "|---|---|---|---|---|")
    for tool in res["tools"]:
        vals = c.tool_values(res, tool)
        note = c.status_note(res, tool)
        if not vals:
            rep.out("| %s | 0 | %s | | |" % (names[tool], note or "no data"))
            continue
        if tool == "blobfs":
            ratio = "—"
        elif tool == "aria2c":
            ratio = "pull ÷ aria2c: " + c.fmt3(c.summary(c.ratios(res, tool)), "%.2f", "×")
        else:
            ratio = "mount ÷ pull: " + c.fmt3(c.summary(c.ratios(res, "blobfs", tool)),
                                              "%.2f", "×")
        rep.out("| %s | %d | %s | %s | %s |" % (
            names[tool] + (" (%s)" % note if note else ""), len(vals), c.fmt3(c.summary(vals)),
            c.fmt3(c.summary([size / v / 1e6 for v in vals]), "%.0f"), ratio))
    ls = c.tool_values(res, "mount", "ls_ms")
    rep.out("| `ls -lR` of the tag, fresh mount (ms) | %d | %s | | |" % (
        len(ls), c.fmt3(c.summary(ls), "%.1f")), "")
    rep.target("10", "pull of %d layers ≥ %.1f× aria2c -j%d" % (res["layers"], PULL_TARGET,
                                                                ARIA2_JOBS),
               c.ratios(res, "aria2c"), lambda x: x >= PULL_TARGET, lambda x: "%.2f×" % x)
    rep.target("10", "cold mount, every file in manifest order ≥ %.1f× the pull" % MOUNT_TARGET,
               c.ratios(res, "blobfs", "mount"),
               lambda x: x >= MOUNT_TARGET, lambda x: "%.2f×" % x)
    rep.target("10", "ls -lR of the tag ≤ %d ms" % LS_TARGET_MS, ls,
               lambda x: x <= LS_TARGET_MS, lambda x: "%.1f ms" % x)


def appendix(rep):
    res = rep.b.results.get("tensor")
    if res and "rounds" in res:
        yield "tensor %d layers" % res["layers"], res
