"""The report: bench/RESULTS.md rendered from the results (a Bench, or an earlier
run's --json file merged under this one), plus the machine and versions it ran on.

One section per measurement in a fixed order, then the targets (targets.py),
the incidents, the notes on misses, and the raw per-round figures."""
import os
import platform
import statistics
import subprocess

from engine import measure as engine_measure
import passthrough as passthrough_measure
import tensor as tensor_measure

from .constants import (GiB, HEADER, PATH_OPTS, PEER_CMDS, RANDOM_FRACTION, REGION,
                        SKIP_EVERY, TOP, TTFB_READS)
from .proc import _unescape_mountinfo, one_line
from .registry import size_name
from .targets import SUMMARY, TARGETS


def summary(values):
    """(min, median, max) of VALUES, or None."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return min(values), statistics.median(values), max(values)


def fmt3(triple, fmt="%.2f", suffix=""):
    if triple is None:
        return "—"
    return " / ".join((fmt % v) + suffix for v in triple)


def ratios(res, tool, base="blobfs", key="time"):
    """Per round: TOOL's time over BASE's time = BASE's speed over TOOL's."""
    return [rd[tool][key] / rd[base][key] for rd in res["rounds"]
            if tool in rd and base in rd and rd[base][key] > 0]


def tool_values(res, tool, key="time"):
    return [rd[tool][key] for rd in res["rounds"] if tool in rd and rd[tool].get(key) is not None]


def status_note(res, tool):
    st = res["status"][tool]
    if not st["failed"]:
        return ""
    return "failed %d×: %s" % (st["failures"], one_line(st["failed"], 240))


class MergedBench:
    """An earlier run's results (a --json file) with this run's on top."""

    def __init__(self, bench, prior):
        self.args, self.durations = bench.args, bench.durations
        self.fresh = set(bench.results)
        self.results = dict(prior["results"])
        self.results.update(bench.results)
        self.incidents = [line for line in prior.get("incidents", [])
                          if line.split(" ", 1)[0] not in bench.results] + bench.incidents


class Report:
    def __init__(self, bench, info):
        self.b, self.info = bench, info
        self.lines = []
        self.targets = []   # (id, text, measured, PASS/MISS/no data, raw)
        self.fresh = getattr(bench, "fresh", set(bench.results))   # measured in this run

    def out(self, *lines):
        self.lines.extend(lines)

    def target(self, tid, text, values, ok, fmt, raw=None, use="median"):
        """values: per-round figures; ok: predicate on the chosen statistic."""
        t = summary(values)
        if t is None:
            self.targets.append((tid, text, "no data", "NO DATA", raw))
            return
        stat = {"median": t[1], "max": t[2], "min": t[0]}[use]
        measured = "%s (%s; min / median / max %s)" % (fmt(stat), use, " / ".join(fmt(x) for x in t))
        self.targets.append((tid, text, measured, "PASS" if ok(stat) else "MISS",
                             raw if raw is not None else values))

    def judge(self, key, values, **fields):
        """Judge VALUES against the target KEY of targets.TARGETS."""
        t = TARGETS[key]
        self.target(t.tid, t.text.format(**fields), values, t.ok, t.fmt, use=t.use)

    def render(self):
        b, info = self.b, self.info
        a = b.args
        state = info.get("state", "complete")
        self.out("# blobfs benchmark results", "",
                 "Written by `bench/run` on %s (took %s). Command: `%s`." % (
                     info["date"], info.get("elapsed", "?"), info["argv"]), "")
        if state != "complete":
            self.out("**Partial results: the run was %s.**" % state, "")
        for e in info.get("earlier", []):
            kept = [m for m in e.get("measurements", []) if m not in self.fresh]
            self.out("Kept from an earlier run (`--merge`): %s, written on %s by `%s` (took "
                     "%s), blobfs %s." % (", ".join("`%s`" % m for m in kept) or "nothing",
                                         e.get("date"), e.get("argv"), e.get("elapsed"),
                                         (e.get("versions") or {}).get("blobfs", "?")), "")
        self.out(
                 "## Machine and versions", "",
                 "| | |", "|---|---|")
        for k, v in info["machine"].items():
            self.out("| %s | %s |" % (k, v))
        for k, v in info["versions"].items():
            self.out("| %s | %s |" % (k, v))
        self.out("", "Setup: Debian's docker-registry with its `redirect` storage middleware "
                 "pointing at nginx (the CDN, root = the registry's storage, `autoindex on`), "
                 "on 127.0.0.1. Profiles: **uncapped**, and **capped** = nginx `limit_rate %s` "
                 "per connection. Blobs: %s of seeded random bytes. Rounds: %d counted%s after "
                 "one warm-up round; tool order rotates per round; ratios are taken within a "
                 "round and shown as min / median / max over rounds. \"blobfs ÷ tool\" is "
                 "blobfs's speed over the tool's (> 1: blobfs is faster)." % (
                     a.rate, ", ".join(size_name(x) for x in a.size_list), a.rounds,
                     " (kept measurements: as many as their own run counted)"
                     if info.get("earlier") else ""), "")
        self.cold()
        self.warm_disk("warm")
        self.warm_disk("disk")
        self.random()
        self.loader()
        self.resources()
        self.metadata()
        from . import core   # core re-exports this module's helpers
        engine_measure.report(self, core)
        passthrough_measure.report(self, core)
        tensor_measure.report(self, core)
        self.render_targets()
        self.incidents()
        self.notes()
        self.raw()
        return "\n".join(self.lines) + "\n"

    def ran(self, name, label):
        """NAME's results that ran; a line "**LABEL(res):** failed to run" for each other."""
        for res in self.b.results[name]:
            if "error" in res:
                self.out("**%s:** failed to run: %s" % (label(res), one_line(res["error"], 600)), "")
                continue
            yield res

    def by_profile(self, name):
        """NAME's results that ran, each after its "### profile, size" heading."""
        for res in self.ran(name, lambda res: "%s, %s" % (res.get("profile"),
                                                          size_name(res.get("size", 0)))):
            prof = res["profile"] + (" (limit_rate %s per connection)" % res["rate"]
                                     if res["rate"] else "")
            self.out("### %s, %s" % (prof, size_name(res["size"])), "")
            yield res

    def section_error(self, name):
        r = self.b.results.get(name)
        if r is None:
            self.out("Not run.", "")
            return True
        if isinstance(r, dict) and "error" in r:
            self.out("**Failed to run:** %s" % one_line(r["error"], 600), "")
            return True
        return False

    def speed_table(self, res, tools, size, names=PEER_CMDS, base="blobfs", base_name=None):
        self.out("| tool | rounds | time (s) | MB/s | blobfs ÷ tool |", "|---|---|---|---|---|")
        for tool in tools:
            vals = tool_values(res, tool)
            label = base_name if tool == base else names.get(tool, tool)
            note = status_note(res, tool)
            if not vals:
                self.out("| %s | 0 | %s | | |" % (label, note or "no data"))
                continue
            mbps = [size / v / 1e6 for v in vals]
            ratio = "—" if tool == base else fmt3(summary(ratios(res, tool, base)), "%.2f", "×")
            self.out("| %s | %d | %s | %s | %s |" % (
                label + (" (%s)" % note if note else ""), len(vals), fmt3(summary(vals), "%.3f"),
                fmt3(summary(mbps), "%.0f"), ratio))
        self.out("")

    def cold(self):
        self.out("## 1. Cold sequential read (`cold`)", "",
                 "`cat FILE > /dev/null` on a fresh blobfs mount (fresh store, `blobfs pull "
                 "--lazy`, `blobfs mount -f`; the time is the cat's, and cat must read every "
                 "byte), against the same blob from the same CDN: aria2c and curl following the "
                 "registry's redirect to a file; rclone and httpdirfs mounting the blob's "
                 "directory on the CDN (fresh cache dir each round), then cat. The warm-up round "
                 "also compares every tool's bytes with the source (`cmp`).", "")
        if self.section_error("cold"):
            return
        for res in self.by_profile("cold"):
            self.speed_table(res, res["tools"], res["size"], base_name="blobfs mount + cat")
            tag = "%s, %s" % (res["profile"], size_name(res["size"]))
            self.judge("cold-aria2c", ratios(res, "aria2c"), tag=tag)
            if res["profile"] == "capped":
                self.judge("cold-rclone", ratios(res, "rclone"), tag=tag)

    def warm_disk(self, kind):
        n, title = ((2, "Warm re-read, page cache hot (`warm`)") if kind == "warm"
                    else (3, "Re-read from disk, page cache dropped (`disk`)"))
        self.out("## %d. %s" % (n, title), "")
        if kind == "warm":
            self.out("Blob complete in the store and in the page cache; each read is a new "
                     "`cat` (a new open) of the file in the mount, against `cat` of the blob "
                     "file in the store.", "")
        else:
            self.out("Blob complete in the store; `sync; echo 3 > /proc/sys/vm/drop_caches` "
                     "before each read; `cat` through the mount against `cat` of the blob file "
                     "in the store.", "")
        if self.section_error(kind):
            return
        for res in self.ran(kind, lambda res: size_name(res.get("size", 0))):
            self.out("### %s" % size_name(res["size"]), "")
            self.speed_table(res, res["tools"], res["size"], base_name="cat through the mount")
            self.judge(kind, ratios(res, "native"), size=size_name(res["size"]))

    def random(self):
        self.out("## 4. Random access on a cold blob (`random`)", "")
        if self.section_error("random"):
            return
        r = self.b.results["random"]
        size = r["size"]
        t, am = r["ttfb"], r["amp"]
        self.out("Uncapped CDN, %s blob, fresh store and mount each round. Time to first byte: "
                 "%d times per round, open + `pread` of 4 KiB at a random page-aligned offset "
                 "(bytes checked against the source). Amplification: %d `pread`s of 4 KiB at "
                 "distinct random pages (%.0f%% of the blob) through one open file, then unmount "
                 "and count the body bytes nginx sent for that blob." % (
                     size_name(size), TTFB_READS, r["nreads"], 100 * RANDOM_FRACTION), "")
        med, mx = tool_values(t, "blobfs", "median_ms"), tool_values(t, "blobfs", "max_ms")
        pooled = [x for rd in t["rounds"] if "blobfs" in rd for x in rd["blobfs"]["ms"]]
        self.out("| figure | min / median / max over rounds |", "|---|---|",
                 "| time to first byte, median of the round (ms) | %s |" % fmt3(summary(med), "%.1f"),
                 "| time to first byte, max of the round (ms) | %s |" % fmt3(summary(mx), "%.1f"),
                 "| time to first byte, all %d samples pooled: min / median / max (ms) | %s |" % (
                     len(pooled), fmt3(summary(pooled), "%.1f")))
        note = status_note(t, "blobfs")
        if note:
            self.out("| time to first byte: failures | %s |" % note)
        fr = tool_values(am, "blobfs", "ratio")
        self.out("| %d random 4 KiB reads: bytes fetched ÷ blob size | %s |" % (
            r["nreads"], fmt3(summary([100 * x for x in fr]), "%.1f", "%")),
            "| … bytes fetched ÷ bytes read | %s |" % fmt3(summary(
                [rd["blobfs"]["fetched"] / rd["blobfs"]["read"] for rd in am["rounds"]
                 if "blobfs" in rd]), "%.1f", "×"),
            "| … CDN requests for the blob | %s |" % fmt3(summary(
                tool_values(am, "blobfs", "requests")), "%.0f"),
            "| … time for all reads (s) | %s |" % fmt3(summary(tool_values(am, "blobfs")), "%.2f"))
        note = status_note(am, "blobfs")
        if note:
            self.out("| amplification: failures | %s |" % note)
        self.out("")
        self.judge("ttfb", med, size=size_name(size))
        self.judge("amplification", [100 * x for x in fr], size=size_name(size))

    def loader(self):
        self.out("## 5. GGUF-loader-like access (`loader`)", "",
                 "`mmap` the file; touch every page of the first %d MiB (the header), then of "
                 "%d MiB regions (\"tensors\") in file order, skipping one region in %d. Through "
                 "a fresh blobfs mount, against aria2c -x16 -s16 to a file followed by the same "
                 "pattern on that file (time = download + read)." % (
                     HEADER >> 20, REGION >> 20, SKIP_EVERY), "")
        if self.section_error("loader"):
            return
        for res in self.by_profile("loader"):
            self.speed_table(res, res["tools"], res["size"], base_name="blobfs mount, mmap pattern")

    def resources(self):
        self.out("## 6. Daemon resources while streaming (`resources`)", "")
        if self.section_error("resources"):
            return
        res = self.b.results["resources"]
        size = res["size"]
        self.out("The blobfs daemon while `cat` reads a cold %s blob through a fresh mount "
                 "(uncapped CDN): VmHWM and RssAnon/RssFile sampled every 50 ms from "
                 "/proc/PID/status; CPU = utime + stime from /proc/PID/stat between the start "
                 "of the cat and the blob's commit (sha256 included)." % size_name(size), "")
        hwm = [v / 1024 for v in tool_values(res, "blobfs", "hwm_kib")]
        anon = [v / 1024 for v in tool_values(res, "blobfs", "anon_kib")]
        filek = [v / 1024 for v in tool_values(res, "blobfs", "file_kib")]
        cpu = [v / (size / GiB) for v in tool_values(res, "blobfs", "cpu_s")]
        self.out("| figure | min / median / max over rounds |", "|---|---|",
                 "| peak RSS, VmHWM (MiB) | %s |" % fmt3(summary(hwm), "%.1f"),
                 "| peak RssAnon (MiB) | %s |" % fmt3(summary(anon), "%.1f"),
                 "| peak RssFile (MiB) | %s |" % fmt3(summary(filek), "%.1f"),
                 "| CPU seconds per GiB | %s |" % fmt3(summary(cpu), "%.2f"),
                 "| cat time (s) | %s |" % fmt3(summary(tool_values(res, "blobfs")), "%.2f"))
        note = status_note(res, "blobfs")
        if note:
            self.out("| failures | %s |" % note)
        self.out("")
        cold = [c for c in self.b.results.get("cold", []) if "error" not in c]
        if cold:
            self.out("Also sampled during the `cold` rounds:", "",
                     "| profile, size | peak RSS (MiB) | CPU s per GiB |", "|---|---|---|")
            for c in cold:
                self.out("| %s, %s | %s | %s |" % (
                    c["profile"], size_name(c["size"]),
                    fmt3(summary([v / 1024 for v in tool_values(c, "blobfs", "hwm_kib")]), "%.1f"),
                    fmt3(summary([v / (c["size"] / GiB) for v in tool_values(c, "blobfs", "cpu_s")]),
                         "%.2f")))
            self.out("")
        self.judge("rss", hwm, size=size_name(size))

    def metadata(self):
        self.out("## 7. Metadata (`metadata`)", "")
        if self.section_error("metadata"):
            return
        r = self.b.results["metadata"]
        ls, up = r["ls"], r["startup"]
        self.out("Manifests written straight into a store (10 tags per name; each tag: its own "
                 "config, template and params, plus a license and a %s model layer shared by "
                 "all; no blob is local). `ls -lR MOUNTPOINT > /dev/null` right after a fresh "
                 "mount (first) and again at once (repeat); the warm-up round checks the listing "
                 "shows every tag's model with its size. Start-up: from exec of `blobfs mount -f` "
                 "to the first successful `stat` of a tag directory (polled every ms). "
                 "The listing has %s entries (files and directories)." % (
                     size_name(max(self.b.args.size_list)), r.get("entries") or "?"), "")
        first = [1000 * v for v in tool_values(ls, "blobfs", "first")]
        rep = [1000 * v for v in tool_values(ls, "blobfs", "repeat")]
        st = [1000 * v for v in tool_values(up, "blobfs")]
        self.out("| figure | min / median / max over rounds |", "|---|---|",
                 "| ls -lR, %d tags, first after mount (ms) | %s |" % (r["tags"], fmt3(summary(first), "%.1f")),
                 "| ls -lR, %d tags, repeated (ms) | %s |" % (r["tags"], fmt3(summary(rep), "%.1f")),
                 "| mount start-up, %d tags (ms) | %s |" % (r["startup_tags"], fmt3(summary(st), "%.1f")))
        for res, what in ((ls, "ls -lR"), (up, "start-up")):
            note = status_note(res, "blobfs")
            if note:
                self.out("| %s: failures | %s |" % (what, note))
        self.out("")
        self.judge("ls-first", first, tags=r["tags"])
        self.judge("ls-repeat", rep, tags=r["tags"])
        self.judge("startup", st, tags=r["startup_tags"])

    def render_targets(self):
        self.out("## Targets", "",
                 "Judged on the median over rounds (peak RSS: the maximum).", "",
                 "| # | target | measured | result |", "|---|---|---|---|")
        rows = [(tid, "| %s | %s | %s | **%s** |" % (tid, text, measured, verdict))
                for tid, text, measured, verdict, _ in self.targets]
        run = set(self.b.results)
        for name, tid, text in SUMMARY:
            if name not in run:
                rows.append((tid, "| %s | %s | not run | — |" % (tid, text)))
        rows.sort(key=lambda row: int(row[0]))
        self.out(*[row for _, row in rows])
        self.out("")

    def incidents(self):
        self.out("## blobfs incidents", "")
        if not self.b.incidents:
            self.out("None: no crash, hang, wrong byte, failed commit or unclean exit was seen.", "")
            return
        self.out("Crashes, hangs, wrong bytes, failed commits or unclean exits seen during the run "
                 "(daemon logs were in the work directory):", "")
        for line in self.b.incidents:
            self.out("- " + one_line(line, 1500))
        self.out("")

    def notes(self):
        self.out("## Notes", "",
                 "Load average at start: %s; at end: %s (other work on the machine skews every "
                 "figure). Time spent: %s." % (
                     self.info.get("load_start", "?"), self.info.get("load_end", "?"),
                     ", ".join("%s %.0f s" % kv for kv in self.b.durations.items()) or "—"),
                 "")
        misses = [t for t in self.targets if t[3] != "PASS"]
        if not misses:
            self.out("Every target measured passed.", "")
        for tid, text, measured, verdict, raw in misses:
            self.out("- **%s (target %s): %s.** Measured %s. Per round: %s." % (
                verdict, tid, text, measured,
                ", ".join("%.4g" % x for x in raw) if raw else "none"),
                "  _Explanation: to be written._")
        failed = []
        for name in ("cold", "loader", "warm", "disk"):
            for res in self.b.results.get(name, []) if isinstance(self.b.results.get(name), list) else []:
                for tool in res.get("tools", []):
                    st = res["status"][tool]
                    if st["failed"] and tool != "blobfs":
                        failed.append("%s %s %s: %s failed %d× (%s)" % (
                            name, res.get("profile", ""), size_name(res["size"]), tool,
                            st["failures"], one_line(st["failed"], 400)))
        if failed:
            self.out("", "Peer tools that failed:", "")
            for f in failed:
                self.out("- " + f)
            self.out("  _Explanation: to be written._")
        self.out("")

    def raw(self):
        self.out("## Appendix: per-round figures", "",
                 "Seconds unless marked; rounds in order, warm-up excluded.", "")
        R = self.b.results

        def rows(title, res, key="time", scale=1, fmt="%.3f"):
            self.out("**%s**" % title, "", "| tool | " + " | ".join(
                "r%d" % (i + 1) for i in range(len(res["rounds"]))) + " |",
                "|---|" + "---|" * len(res["rounds"]))
            for tool in res["tools"]:
                cells = [(fmt % (rd[tool][key] * scale)) if tool in rd and rd[tool].get(key) is not None
                         else "—" for rd in res["rounds"]]
                self.out("| %s | %s |" % (tool, " | ".join(cells)))
            self.out("")

        for name in ("cold", "warm", "disk", "loader"):
            for res in R.get(name, []) if isinstance(R.get(name), list) else []:
                if "rounds" in res:
                    rows(" ".join(x for x in (name, res.get("profile"), size_name(res["size"]))
                                  if x), res)
        for title, res in engine_measure.appendix(self):
            rows(title, res)
        for title, res in passthrough_measure.appendix(self):
            rows(title, res)
            rows(title + ": Cached added (MiB)", res, "cache_added", 1 / 2**20, "%.0f")
        for title, res in tensor_measure.appendix(self):
            rows(title, res)
            rows(title + ": ls -lR (ms)", res, "ls_ms", 1, "%.1f")
        if isinstance(R.get("random"), dict) and "ttfb" in R["random"]:
            rows("random: median time to first byte (ms)", R["random"]["ttfb"], "median_ms", 1, "%.1f")
            rows("random: fetched ÷ blob size (%)", R["random"]["amp"], "ratio", 100, "%.2f")
        if isinstance(R.get("resources"), dict) and "rounds" in R["resources"]:
            rows("resources: VmHWM (MiB)", R["resources"], "hwm_kib", 1 / 1024, "%.1f")
            rows("resources: CPU seconds", R["resources"], "cpu_s", 1, "%.2f")
        if isinstance(R.get("metadata"), dict) and "ls" in R["metadata"]:
            rows("metadata: ls -lR first (ms)", R["metadata"]["ls"], "first", 1000, "%.1f")
            rows("metadata: ls -lR repeat (ms)", R["metadata"]["ls"], "repeat", 1000, "%.1f")
            rows("metadata: start-up (ms)", R["metadata"]["startup"], "time", 1000, "%.1f")


def first_line(argv, stderr=False):
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        text = (r.stderr if stderr else r.stdout) or r.stdout or r.stderr
        return text.strip().splitlines()[0].strip() if text.strip() else "?"
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return "not installed"


def system_info(blobfs, work):
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) * 1024
    try:
        os_name = [ln.split("=", 1)[1].strip().strip('"') for ln in open("/etc/os-release")
                   if ln.startswith("PRETTY_NAME=")][0]
    except (OSError, IndexError):
        os_name = "?"
    # The tree the sources come from: dirty only if the code differs from it.
    git = first_line(["git", "-C", TOP, "rev-parse", "--short", "HEAD"])
    if first_line(["git", "-C", TOP, "status", "--porcelain", "--", "src", "configure.ac",
                   "Makefile.am"]) not in ("?", "not installed"):
        git += "-dirty"
    inside = os.path.realpath(blobfs).startswith(os.path.realpath(TOP) + os.sep)
    built = os.path.relpath(blobfs, TOP) if inside else "an out-of-tree build"
    return {
        "machine": {"nproc": os.cpu_count(), "CPU": cpu, "RAM": "%.1f GiB" % (mem / GiB),
                    "kernel": platform.release(), "OS": os_name,
                    "work dir": "%s (%s)" % (os.path.dirname(work), fs_type(work))},
        "versions": {
            "blobfs": "%s (%s of tree %s)" % (first_line([blobfs, "--version"]), built, git),
            "aria2c": first_line(["aria2c", "--version"]),
            "curl": " ".join(first_line(["curl", "--version"]).split()[:4]),
            "rclone": first_line(["rclone", "version"]),
            "httpdirfs": first_line(["httpdirfs", "--version"], stderr=True),
            "nginx": first_line(["/usr/sbin/nginx", "-v"], stderr=True),
            "docker-registry": first_line(["docker-registry", "--version"]),
            "fuse": first_line(["fusermount3", "--version"]),
            "python": platform.python_version(),
        },
    }


def fs_type(path):
    best, kind = "", "?"
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            mp = _unescape_mountinfo(left.split()[4])
            if (path == mp or path.startswith(mp.rstrip("/") + "/")) and len(mp) > len(best):
                best, kind = mp, right.split()[0]
    return kind


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


# --------------------------------------------------------------------------


def public_argv(argv):
    """The command line as the report shows it: paths of this machine left out."""
    out, hide = ["bench/run"], None
    for a in argv:
        if hide:
            out.append(hide)
            hide = None
            continue
        opt, eq, _ = a.partition("=")
        if opt in PATH_OPTS:
            if eq:
                a = opt + "=" + PATH_OPTS[opt]
            else:
                hide = PATH_OPTS[opt]
        out.append(a)
    return " ".join(out)
