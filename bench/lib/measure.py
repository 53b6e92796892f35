"""The measurements: the round engine (rounds_of) and one method per measurement
on Bench, which records its results in bench.results under its name. The table
of which measurement runs where (profile, sizes) is table.py."""
import hashlib
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time

from .constants import (LS_TAGS, META_HOST, MIN_RATE, PAGE, RANDOM_FRACTION, SLACK,
                        STARTUP_TAGS, TTFB_READS, HERE)
from .proc import (Failed, Mount, Sampler, cat, compare, describe_rc, drop_caches, evict,
                   one_line, proc_cpu, run_timed, safe_rmtree, with_log)
from .registry import models, size_name


class Bench:
    def __init__(self, args):
        self.args = args
        self.blobfs = args.blobfs
        self.rounds = args.rounds
        self.work = args.work
        self.cache = args.cache_dir
        self.results = {}
        self.incidents = []   # blobfs misbehaving: crash, hang, wrong bytes, ...
        self.durations = {}
        self._n = 0
        self.models = {}

    # --- small utilities ---

    def tmpdir(self, kind):
        self._n += 1
        path = os.path.join(self.work, "%s-%d" % (kind, self._n))
        os.makedirs(path)
        return path

    def timeout(self, size, factor=1):
        return int(SLACK + factor * size / MIN_RATE)

    def incident(self, where, what, echo=True):
        line = "%s: %s" % (where, what)
        if line not in self.incidents:
            self.incidents.append(line)
        if echo:
            print("  !! blobfs: " + line, flush=True)

    def helper(self, name, *args, timeout, on_timeout=None):
        argv = [sys.executable, os.path.join(HERE, "run"), "--helper", name, *map(str, args)]
        _, _, out = run_timed(argv, timeout, on_timeout=on_timeout, what=name, capture=True)
        return json.loads(out)

    # --- blobfs ---

    def blobfs_mount(self, store, where, opts=(), binary=None):
        mnt = self.tmpdir("mnt")
        log = os.path.join(self.work, "blobfs-%d.log" % self._n)
        m = Mount("blobfs", [binary or self.blobfs, "--store", store, "mount", "-f", *opts, mnt],
                  mnt, log)
        m.where = where
        return m

    def blobfs_close(self, m, where):
        code = m.close()
        if code != 0 and not m.aborted:
            self.incident(where, with_log("daemon %s after unmount" % describe_rc(code), m.tail()))
        if m.unmount_problem:
            self.incident(where, m.unmount_problem)
        return code

    def blobfs_fresh(self, s, where, binary=None):
        """A fresh store with S's model pulled lazily, mounted by BINARY (default:
        the blobfs under test). Returns (store, mount)."""
        store = self.tmpdir("store")
        try:
            run_timed([self.blobfs, "--store", store, "--quiet", "pull", "--lazy", s.name],
                      60, what="blobfs pull --lazy")
        except Failed as e:
            self.incident(where, str(e))
            raise
        try:
            return store, self.blobfs_mount(store, where, binary=binary)
        except Failed as e:
            self.incident(where, str(e))
            raise

    def blobfs_done(self, store, m, s, where):
        """Wait until S's blob is committed to STORE/blobs (verified by blobfs)."""
        committed = os.path.join(store, "blobs", "sha256-" + s.hex)
        quarantine = os.path.join(store, ".blobfs", "quarantine")
        deadline = time.monotonic() + self.timeout(s.size)
        while not os.path.exists(committed):
            if os.path.isdir(quarantine) and os.listdir(quarantine):
                raise self.blobfs_failed(where, with_log(
                    "blob quarantined (sha256 mismatch): %s" % os.listdir(quarantine), m.tail()))
            if not m.alive():
                raise self.blobfs_failed(where, with_log(
                    "daemon %s before committing the blob" % describe_rc(m.popen.returncode),
                    m.tail()))
            if time.monotonic() > deadline:
                raise self.blobfs_failed(where, "blob not committed %ds after it was read" %
                                         self.timeout(s.size))
            time.sleep(0.02)
        return committed

    def blobfs_failed(self, where, what):
        self.incident(where, what, echo=False)  # rounds_of prints it
        return Failed(what)

    def blobfs_read(self, fn, m, where):
        """Run FN() (a read through mount M); a failure is a blobfs incident."""
        try:
            return fn()
        except Failed as e:
            extra = ""
            if not m.alive() and not m.aborted:
                extra = "; daemon %s" % describe_rc(m.popen.returncode)
            elif m.aborted:
                extra = "; mount aborted (daemon killed) to free the reader"
            raise self.blobfs_failed(where, with_log("%s%s" % (e, extra), m.tail()))

    def blobfs_cold_cat(self, s, rnd, where, verify, binary=None):
        """Fresh store and mount, timed cat, wait for the commit; with VERIFY also
        cmp the mount's file against the source. Also samples the daemon's memory
        and CPU. Returns a metrics dict."""
        store, m = self.blobfs_fresh(s, where, binary)
        try:
            path = s.mount_path(m.mountpoint)
            sampler = Sampler(m.pid)
            cpu0 = proc_cpu(m.pid)
            sampler.start()
            try:
                dt = self.blobfs_read(lambda: cat(path, s.size, self.timeout(s.size), m.abort),
                                      m, where)
                self.blobfs_done(store, m, s, where)
                cpu1 = proc_cpu(m.pid)
            finally:
                sampler.stop()
            if verify:
                self.blobfs_read(lambda: compare(path, s.source, s.size,
                                                 self.timeout(s.size, 2), m.abort), m, where)
            return {"time": dt, "hwm_kib": sampler.peak.get("VmHWM"),
                    "anon_kib": sampler.peak.get("RssAnon"),
                    "file_kib": sampler.peak.get("RssFile"), "cpu_s": cpu1 - cpu0}
        finally:
            self.blobfs_close(m, where)
            safe_rmtree(store)
            safe_rmtree(m.mountpoint)

    # --- peers ---

    def aria2c(self, url, out):
        return ["aria2c", "-q", "-x16", "-s16", "--file-allocation=none",
                "--allow-overwrite=true", "--auto-file-renaming=false",
                "--console-log-level=error", "-d", out, "-o", "blob", url]

    def download(self, tool, s, verify):
        out = self.tmpdir("out")
        try:
            argv = (self.aria2c(s.url, out) if tool == "aria2c"
                    else ["curl", "-sSfL", "-o", os.path.join(out, "blob"), s.url])
            dt, _, _ = run_timed(argv, self.timeout(s.size))
            got = os.path.getsize(os.path.join(out, "blob"))
            if got != s.size:
                raise Failed("%s wrote %d bytes, expected %d" % (tool, got, s.size))
            if verify:
                compare(os.path.join(out, "blob"), s.source, s.size, self.timeout(s.size, 2))
            return {"time": dt}
        finally:
            safe_rmtree(out)

    def peer_mount(self, tool, s):
        """rclone or httpdirfs mounting S's directory on the CDN, fresh cache."""
        if not shutil.which(tool):
            raise Failed("%s is not installed (apt-get install %s)" % (tool, tool))
        cache, mnt = self.tmpdir(tool + "-cache"), self.tmpdir(tool + "-mnt")
        log = os.path.join(self.work, "%s-%d.log" % (tool, self._n))
        if tool == "rclone":
            conf = os.path.join(self.work, "rclone.conf")
            open(conf, "a").close()
            env = dict(os.environ, RCLONE_CONFIG=conf)
            argv = ["rclone", "mount", ":http:", mnt, "--http-url", s.cdn_dir,
                    "--vfs-cache-mode", "full", "--cache-dir", cache,
                    "--log-level", "INFO", "--log-file", log]
            m = Mount(tool, argv, mnt, log, env=env)
        else:
            argv = ["httpdirfs", "-f", "--cache", "--no-range-check",
                    "--cache-location", cache, s.cdn_dir, mnt]
            m = Mount(tool, argv, mnt, log, noise=r"^LinkTable_print|^fs_(open|release)")
        m.cache = cache
        return m

    def peer_cat(self, tool, s, verify):
        m = self.peer_mount(tool, s)
        path = os.path.join(m.mountpoint, "data")
        try:
            try:
                dt = cat(path, s.size, self.timeout(s.size), m.abort)
                if verify:
                    compare(path, s.source, s.size, self.timeout(s.size, 2), m.abort)
            except Failed as e:
                dead = "" if m.alive() or m.aborted else "; %s %s" % (
                    tool, describe_rc(m.popen.returncode))
                raise Failed(with_log("%s%s" % (e, dead), m.tail(4, skip=m.noise)))
            if not m.alive():
                raise Failed("%s %s after the read" % (tool, describe_rc(m.popen.returncode)))
            return {"time": dt}
        finally:
            m.close()
            safe_rmtree(m.cache)
            safe_rmtree(m.mountpoint)

    # --- the round engine ---

    def rounds_of(self, title, tools, one):
        """Warm-up round, then self.rounds rounds of ONE(tool, round) -> metrics
        dict (with "time"), tools in an order that rotates each round. A peer that
        fails is recorded and left out of later rounds; blobfs is retried."""
        print("  -- %s" % title, flush=True)
        res = {t: {"failed": None, "failures": 0} for t in tools}
        rounds = []
        for r in range(self.rounds + 1):
            k = r % len(tools)
            now = {}
            for tool in tools[k:] + tools[:k]:
                if res[tool]["failures"] >= (2 if tool == "blobfs" else 1):
                    continue   # a peer gets one chance, blobfs two
                try:
                    now[tool] = one(tool, r)
                except Failed as e:
                    res[tool]["failures"] += 1
                    res[tool]["failed"] = res[tool]["failed"] or ("round %d: %s" % (r, e)
                                                                   if r else "warm-up: %s" % e)
                    print("     %s failed: %s" % (tool, one_line(e, 400)), flush=True)
            text = "  ".join("%s %s" % (t, fmt_metric(v)) for t, v in now.items()) or "no result"
            if r == 0:
                print("     warm-up: %s" % text, flush=True)
                continue
            rounds.append(now)
            print("     round %d: %s" % (r, text), flush=True)
        return {"tools": list(tools), "status": res, "rounds": rounds}

    # --- measurements ---

    def m_cold(self, s):
        where = "cold %s %s" % (s.profile, size_name(s.size))
        s.prewarm()

        def one(tool, r):
            if tool == "blobfs":
                return self.blobfs_cold_cat(s, r, where, verify=(r == 0))
            if tool == "baseline":
                return self.blobfs_cold_cat(s, r, where + " (baseline)", verify=(r == 0),
                                            binary=self.args.baseline)
            if tool in ("aria2c", "curl"):
                return self.download(tool, s, verify=(r == 0))
            return self.peer_cat(tool, s, verify=(r == 0))

        tools = ["blobfs"] + self.args.peer_list + (["baseline"] if self.args.baseline else [])
        res = self.rounds_of(where, tools, one)
        res.update(profile=s.profile, rate=self.args.rate if s.profile == "capped" else None,
                   size=s.size)
        self.results.setdefault("cold", []).append(res)

    def m_warm_disk(self, s, which):
        where = "warm/disk %s" % size_name(s.size)
        s.prewarm()
        store, m = self.blobfs_fresh(s, where)
        try:
            path = s.mount_path(m.mountpoint)
            # Fill: one cold read, the commit, and a check of every byte.
            self.blobfs_read(lambda: cat(path, s.size, self.timeout(s.size), m.abort), m, where)
            native = self.blobfs_done(store, m, s, where)
            self.blobfs_read(lambda: compare(path, s.source, s.size, self.timeout(s.size, 2),
                                             m.abort), m, where)
            subprocess.run(["sync"], timeout=self.timeout(s.size))
            # The source and the registry's copy are not read here: out of the page
            # cache with them, so that the mount's and the store's pages fit.
            for other in (s.source, str(s.reg.blob_path(s.digest))):
                evict(other)
            files = {"blobfs": path, "native": native}

            def read(tool, kind):
                if kind == "disk":
                    drop_caches()
                fn = lambda: cat(files[tool], s.size, self.timeout(s.size),  # noqa: E731
                                 m.abort if tool == "blobfs" else None)
                if tool == "blobfs":
                    return {"time": self.blobfs_read(fn, m, where + " (" + kind + ")")}
                return {"time": fn()}

            for kind in which:
                if kind == "disk" and os.geteuid() != 0:
                    self.results.setdefault(kind, []).append(
                        {"size": s.size, "error": "needs root for /proc/sys/vm/drop_caches"})
                    continue
                res = self.rounds_of("%s %s" % (kind, size_name(s.size)), ["blobfs", "native"],
                                     lambda tool, r, kind=kind: read(tool, kind))
                res.update(size=s.size)
                self.results.setdefault(kind, []).append(res)
        finally:
            self.blobfs_close(m, where)
            safe_rmtree(store)

    def m_random(self, s):
        where = "random %s" % size_name(s.size)
        s.prewarm()
        nreads = max(1, math.ceil(RANDOM_FRACTION * s.size / PAGE))

        def ttfb(tool, r):
            store, m = self.blobfs_fresh(s, where)
            try:
                out = self.blobfs_read(lambda: self.helper(
                    "ttfb", s.mount_path(m.mountpoint), s.source, TTFB_READS, 1000 + r,
                    timeout=SLACK + 2 * TTFB_READS, on_timeout=m.abort), m, where)
                if out["bad"]:
                    raise self.blobfs_failed(where, "wrong bytes at offsets %s" % out["bad"])
                return {"time": statistics.median(out["ms"]) / 1000,
                        "median_ms": statistics.median(out["ms"]), "max_ms": max(out["ms"]),
                        "ms": out["ms"]}
            finally:
                self.blobfs_close(m, where)
                safe_rmtree(store)

        def amp(tool, r):
            store, m = self.blobfs_fresh(s, where)
            try:
                mark = s.reg.cdn_log_mark()
                out = self.blobfs_read(lambda: self.helper(
                    "randread", s.mount_path(m.mountpoint), s.source, nreads, 2000 + r,
                    timeout=SLACK + nreads // 20, on_timeout=m.abort), m, where)
                if out["nbad"]:
                    raise self.blobfs_failed(where, "wrong bytes in %d of %d reads, e.g. at %s" % (
                        out["nbad"], out["reads"], out["bad"]))
            finally:
                self.blobfs_close(m, where)   # in-flight requests end before counting
                safe_rmtree(store)
            entries = [e for e in s.reg.cdn_log_entries(since=mark) if s.hex in e["uri"]]
            fetched = sum(e["body_bytes_sent"] for e in entries)
            return {"time": out["seconds"], "fetched": fetched, "ratio": fetched / s.size,
                    "requests": len(entries), "read": out["reads"] * PAGE}

        res_t = self.rounds_of("random: time to first byte, %s" % size_name(s.size),
                               ["blobfs"], ttfb)
        res_a = self.rounds_of("random: %d reads of 4 KiB (%.0f%%), %s" % (
            nreads, RANDOM_FRACTION * 100, size_name(s.size)), ["blobfs"], amp)
        self.results["random"] = {"size": s.size, "ttfb": res_t, "amp": res_a,
                                  "nreads": nreads}

    def m_loader(self, s):
        where = "loader %s %s" % (s.profile, size_name(s.size))
        s.prewarm()
        timeout = self.timeout(s.size, 2)

        def one(tool, r):
            if tool == "blobfs":
                store, m = self.blobfs_fresh(s, where)
                try:
                    path = s.mount_path(m.mountpoint)
                    out = self.blobfs_read(lambda: self.helper(
                        "loader", path, timeout=timeout, on_timeout=m.abort), m, where)
                    if r == 0:
                        self.blobfs_read(lambda: compare(path, s.source, s.size, timeout,
                                                         m.abort), m, where)
                    return {"time": out["seconds"]}
                finally:
                    self.blobfs_close(m, where)
                    safe_rmtree(store)
            out = self.tmpdir("out")
            try:
                dt, _, _ = run_timed(self.aria2c(s.url, out), self.timeout(s.size))
                blob = os.path.join(out, "blob")
                if os.path.getsize(blob) != s.size:
                    raise Failed("aria2c wrote %d bytes" % os.path.getsize(blob))
                if r == 0:
                    compare(blob, s.source, s.size, timeout)
                got = self.helper("loader", blob, timeout=timeout)
                return {"time": dt + got["seconds"], "download": dt, "read": got["seconds"]}
            finally:
                safe_rmtree(out)

        res = self.rounds_of(where, ["blobfs", "aria2c+read"], one)
        res.update(profile=s.profile, rate=self.args.rate if s.profile == "capped" else None,
                   size=s.size)
        self.results.setdefault("loader", []).append(res)

    def m_resources(self, s):
        where = "resources %s" % size_name(s.size)
        s.prewarm()
        res = self.rounds_of(where, ["blobfs"],
                             lambda tool, r: self.blobfs_cold_cat(s, r, where, verify=False))
        res.update(size=s.size)
        self.results["resources"] = res

    def m_metadata(self):
        big = max(self.args.size_list)
        ls_store = self.tmpdir("meta-store")
        make_meta_store(ls_store, LS_TAGS, big)
        up_store = self.tmpdir("meta-store")
        make_meta_store(up_store, STARTUP_TAGS, big)
        last = os.path.join("models", META_HOST, "library", "model-%04d" % (STARTUP_TAGS // 10 - 1),
                            "t9")
        entries = [None]
        res_ls = self.rounds_of("metadata: ls -lR, %d tags" % LS_TAGS, ["blobfs"],
                                lambda tool, r: self.metadata_ls(ls_store, big, r, entries))
        res_up = self.rounds_of("metadata: mount start-up, %d tags" % STARTUP_TAGS, ["blobfs"],
                                lambda tool, r: self.metadata_startup(up_store, last))
        self.results["metadata"] = {"ls": res_ls, "startup": res_up, "tags": LS_TAGS,
                                    "startup_tags": STARTUP_TAGS, "entries": entries[0]}
        safe_rmtree(ls_store)
        safe_rmtree(up_store)

    def metadata_ls(self, store, big, r, entries):
        """One round of `ls -lR` of a mounted STORE, twice; round 0 checks the listing."""
        where = "metadata"
        m = self.blobfs_mount(store, where)
        try:
            out = {}
            for key in ("first", "repeat"):
                dt, _, text = self.blobfs_read(lambda: run_timed(
                    ["ls", "-lR", m.mountpoint], 120, on_timeout=m.abort, what="ls -lR",
                    capture=(r == 0)), m, where)
                out[key] = dt
                if r == 0 and key == "first":
                    listing = text.decode("utf-8", "replace")
                    check_listing(listing, LS_TAGS, big)
                    entries[0] = len(re.findall(r"^[-dl]", listing, re.M))
            out["time"] = out["first"]
            return out
        except Failed as e:
            raise self.blobfs_failed(where, str(e))
        finally:
            self.blobfs_close(m, where)
            safe_rmtree(m.mountpoint)

    def metadata_startup(self, store, last):
        """One round: the time from starting a mount of STORE until LAST (a tag dir) stats."""
        where = "metadata"
        mnt = self.tmpdir("mnt")
        target = os.path.join(mnt, last)
        log = os.path.join(self.work, "blobfs-%d.log" % self._n)
        d = None
        hung = {}

        def watchdog():
            hung["yes"] = True
            d.abort()

        timer = threading.Timer(60, watchdog)
        timer.daemon = True
        try:
            t0 = time.monotonic()
            d = Mount("blobfs", [self.blobfs, "--store", store, "mount", "-f", mnt],
                      mnt, log, wait=False)
            timer.start()
            while True:
                try:
                    os.stat(target)
                    break
                except OSError:
                    pass
                if hung or not d.alive():
                    raise self.blobfs_failed(where, with_log("mount with %d tags: %s" % (
                        STARTUP_TAGS, "no stat of a tag dir within 60s" if hung else
                        "daemon %s" % describe_rc(d.popen.returncode)), d.tail()))
                time.sleep(0.001)
            dt = time.monotonic() - t0
            return {"time": dt}
        finally:
            timer.cancel()
            if d is not None:
                self.blobfs_close(d, where)
            safe_rmtree(mnt)


def fmt_metric(v):
    if "median_ms" in v:
        return "median %.1fms max %.1fms" % (v["median_ms"], v["max_ms"])
    if "ratio" in v:
        return "%.2fs fetched %.1f%%" % (v["time"], 100 * v["ratio"])
    if "first" in v:
        return "first %.0fms repeat %.0fms" % (1000 * v["first"], 1000 * v["repeat"])
    if "hwm_kib" in v and v.get("hwm_kib"):
        cpu = ", CPU %.2fs" % v["cpu_s"] if "cpu_s" in v else ""
        return "%.3fs (peak RSS %.0f MiB%s)" % (v["time"], v["hwm_kib"] / 1024, cpu)
    return "%.3fs" % v["time"]


def make_meta_store(root, ntags, big_size):
    """A store of NTAGS manifests (10 tags per name) written directly: each names
    its own config, template and params, a license and a model layer shared by all.
    No blob exists locally: sizes come from the manifests."""
    def digest(text):
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest()

    os.makedirs(os.path.join(root, "blobs"))
    shared_model = {"mediaType": models.OLLAMA_MODEL, "digest": digest("bench model"),
                    "size": big_size}
    shared_license = {"mediaType": models.OLLAMA_LICENSE, "digest": digest("bench license"),
                      "size": 11357}
    for i in range(ntags):
        name, tag = "model-%04d" % (i // 10), "t%d" % (i % 10)
        manifest = {
            "schemaVersion": 2,
            "mediaType": models.DOCKER_MANIFEST_V2,
            "config": {"mediaType": models.DOCKER_CONFIG, "digest": digest("config %d" % i),
                       "size": 400 + i % 97},
            "layers": [
                shared_model,
                {"mediaType": models.OLLAMA_TEMPLATE, "digest": digest("template %d" % i),
                 "size": 1000 + i % 89},
                {"mediaType": models.OLLAMA_PARAMS, "digest": digest("params %d" % i),
                 "size": 60 + i % 13},
                shared_license,
            ],
        }
        d = os.path.join(root, "manifests", META_HOST, "library", name)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, tag), "w") as f:
            json.dump(manifest, f, separators=(",", ":"))


def check_listing(text, ntags, big):
    """The first ls -lR must show NTAGS model files of the shared layer's size."""
    models_seen = len(re.findall(r"^\S+\s+\d+\s+\S+\s+\S+\s+%d\s.*\smodel$" % big, text, re.M))
    if models_seen != ntags:
        raise Failed("ls -lR shows %d 'model' files of %d bytes, expected %d" % (
            models_seen, big, ntags))
