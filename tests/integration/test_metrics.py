"""Integration tests of a mount's figures for monitoring.

- `blobfs status --json` and `--prometheus` next to a mount that read a blob:
  the same figures in both, consistent with what the mount did (reads, the
  read latency histogram, bytes fetched, quota, the store's size), and
  `promtool check metrics` (Debian's prometheus) finds nothing to say.
"""

import json
import re
import shutil
import subprocess
import time

import pytest

from models import OLLAMA_MODEL, make_model, push_model

MiB = 1 << 20
PYTHON = "/usr/bin/python3"
REPO = "library/metrics"
BLOB = 8 * MiB
QUOTA = 1 << 30
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def tool(name, package):
    path = shutil.which(name, path="/usr/bin:/usr/sbin:/bin:/sbin")
    if path is None:
        pytest.skip(f"'{name}' is not installed: install the Debian package '{package}'")
    return path


def blobfs_run(blobfs_bin, store, *args, timeout=60):
    result = subprocess.run([str(blobfs_bin), "--store", str(store), *map(str, args)],
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"blobfs {' '.join(map(str, args))}: {result.stderr}"
    return result.stdout


def status_json(blobfs_bin, store):
    return json.loads(blobfs_run(blobfs_bin, store, "status", "--json"))


def parse_prometheus(text):
    """{(name, frozenset(labels)): value} of the samples in TEXT, plus {name: type}."""
    samples, types = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
        elif line and not line.startswith("#"):
            match = SAMPLE.match(line)
            assert match, f"not a sample line: {line!r}"
            labels = frozenset(LABEL.findall(match[2] or ""))
            samples[(match[1], labels)] = float(match[3])
    return samples, types


def read_file(path):
    code = ("import hashlib,sys; h=hashlib.sha256(); f=open(sys.argv[1],'rb');"
            "[h.update(b) for b in iter(lambda: f.read(1<<20), b'')]; print(h.hexdigest())")
    result = subprocess.run([PYTHON, "-c", code, str(path)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return "sha256:" + result.stdout.strip()


@pytest.fixture
def busy_mount(cdn_registry, blobfs_bin, store, mount, tmp_path, blob_cache):
    """A mount (quota 1 GiB) that has read a blob of BLOB bytes from the network,
    its figures published: (mount, layer, the status document of the mount)."""
    model = make_model(tmp_path / "model", [(OLLAMA_MODEL, BLOB, 31)], cache_dir=blob_cache)
    layer = model.layer(OLLAMA_MODEL)
    push_model(cdn_registry, REPO, "latest", model)
    blobfs_run(blobfs_bin, store, "pull", "--lazy", "--quiet", f"{cdn_registry.host}/{REPO}")
    m = mount(f"max_cache={QUOTA}")
    path = m.path / "models" / cdn_registry.host / REPO / "latest" / "model"
    assert read_file(path) == layer.digest

    def settled():
        docs = status_json(blobfs_bin, store)["mounts"]
        if len(docs) == 1 and docs[0]["blobs_in_flight"] == 0 and docs[0]["reads"] > 0 \
                and sum(docs[0]["read_latency"]["counts"]) == docs[0]["reads"]:
            return docs[0]
        return None

    deadline = time.monotonic() + 10
    while (doc := settled()) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert doc, f"the mount's figures never settled: {status_json(blobfs_bin, store)}"
    return m, layer, doc


def test_status_json_and_prometheus_give_the_same_figures(busy_mount, blobfs_bin, store):
    m, layer, _ = busy_mount
    text = blobfs_run(blobfs_bin, store, "status", "--prometheus")
    doc = status_json(blobfs_bin, store)
    [mine] = doc["mounts"]
    assert doc["store"] == str(store) and doc["store_bytes"] >= layer.size
    assert mine["mountpoint"] == str(m.path) and mine["pid"] == m.proc.pid
    assert mine["fetched_bytes"] >= layer.size and mine["requests"] >= 1
    assert mine["reads"] == mine["reads_local"] + mine["reads_waited"] > 0
    assert mine["reads_waited"] > 0, "no read waited for the network on a cold blob"
    assert mine["read_errors"] == 0 and mine["max_cache"] == QUOTA

    samples, types = parse_prometheus(text)
    who = frozenset({("store", str(store)), ("mountpoint", str(m.path))})
    expect = {
        "blobfs_reads_total": mine["reads"], "blobfs_reads_local_total": mine["reads_local"],
        "blobfs_reads_waited_total": mine["reads_waited"],
        "blobfs_read_errors_total": mine["read_errors"],
        "blobfs_fetched_bytes_total": mine["fetched_bytes"],
        "blobfs_http_requests_total": mine["requests"],
        "blobfs_http_retries_total": mine["retries"],
        "blobfs_http_failures_total": mine["failed_attempts"],
        "blobfs_range_requests_in_flight": mine["requests_in_flight"],
        "blobfs_blobs_in_flight": 0, "blobfs_store_quota_bytes": QUOTA,
        "blobfs_start_time_seconds": mine["started"],
    }
    for name, value in expect.items():
        assert samples.get((name, who)) == value, (name, samples.get((name, who)), value)
        assert name.startswith("blobfs_")
        assert types[name] == ("counter" if name.endswith("_total") else "gauge"), name
    assert samples[("blobfs_store_bytes", frozenset({("store", str(store))}))] \
        == doc["store_bytes"]

    # The histogram: cumulative buckets, +Inf = count = every read, a sum in seconds.
    hist = "blobfs_read_duration_seconds"
    assert types[hist] == "histogram"
    buckets = sorted(((float(dict(labels)["le"]), value) for (name, labels), value
                      in samples.items() if name == hist + "_bucket"))
    assert len(buckets) == len(mine["read_latency"]["counts"])
    assert [v for _, v in buckets] == sorted(v for _, v in buckets), buckets
    assert buckets[-1] == (float("inf"), mine["reads"])
    assert samples[(hist + "_count", who)] == mine["reads"]
    assert 0 < samples[(hist + "_sum", who)] == pytest.approx(
        mine["read_latency"]["sum_seconds"], rel=1e-6)


def test_promtool_finds_nothing_to_say(busy_mount, blobfs_bin, store):
    promtool = tool("promtool", "prometheus")
    m = busy_mount[0]
    for what in ("a mount", "no mount"):
        text = blobfs_run(blobfs_bin, store, "status", "--prometheus")
        result = subprocess.run([promtool, "check", "metrics"], input=text,
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0 and result.stdout + result.stderr == "", \
            f"promtool on the figures of {what}:\n{result.stdout}{result.stderr}\n{text}"
        m.cleanup()   # unmounts
    assert "blobfs_reads_total" not in text and "blobfs_store_bytes{" in text, text


def test_status_options_apply_to_status_only(blobfs_bin, store):
    for args, message in ((["ls", "--json"], "--json does not apply to 'ls' (only to status)"),
                          (["status", "--json", "--prometheus"], "not both")):
        result = subprocess.run([str(blobfs_bin), "--store", str(store), *args],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 2 and message in result.stderr, result.stderr
