"""Integration tests of a mount's figures for monitoring.

- `blobfs status --json` and `--prometheus` next to a mount that read a blob:
  the same figures in both, consistent with what the mount did (reads, the
  read latency histogram, bytes fetched, quota, the store's size), and
  `promtool check metrics` (Debian's prometheus) finds nothing to say;
- Debian's real Prometheus scraping a running mount: the command of the
  shipped blobfs-metrics@.service writes the figures into the textfile
  directory of Debian's node exporter, Prometheus scrapes the exporter, and
  one counter is read back through Prometheus's HTTP API;
- the metrics units pass systemd-analyze verify.
"""

import http.client
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest

from dockerreg import free_port
from models import OLLAMA_MODEL, make_model, push_model

MiB = 1 << 20
PYTHON = "/usr/bin/python3"
REPO = "library/metrics"
BLOB = 8 * MiB
QUOTA = 1 << 30
CONTRIB = Path(__file__).resolve().parents[2] / "contrib"
MAN_DIR = CONTRIB.parent / "man"
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
        "blobfs_opens_total": mine["opens"],
        "blobfs_opens_passthrough_total": mine["opens_passthrough"],
        "blobfs_fetched_bytes_total": mine["fetched_bytes"],
        "blobfs_http_requests_total": mine["requests"],
        "blobfs_http_retries_total": mine["retries"],
        "blobfs_http_failures_total": mine["failed_attempts"],
        "blobfs_http_hedges_total": mine["hedges"],
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


# ---------------------------------------------------------------- a real Prometheus


UNIT = CONTRIB / "blobfs-metrics@.service"
TIMER = CONTRIB / "blobfs-metrics@.timer"


def unit_command(unit, instance, path, env):
    """The unit's ExecStart as systemd runs it: specifiers and ${VARIABLES}
    expanded, the continuation line joined."""
    text = unit.read_text().replace("\\\n", " ")
    [spec] = re.findall(r"^ExecStart=(.*)$", text, re.M)
    for line in re.findall(r"^Environment=(.*)$", text, re.M):
        key, value = line.split("=", 1)
        env.setdefault(key, value)
    spec = spec.replace("%i", instance).replace("%f", str(path))
    return [re.sub(r"\$\{(\w+)\}", lambda m: env[m[1]], word) for word in shlex.split(spec)]


class Server:
    """A server process in a group of its own, answering HTTP on 127.0.0.1:port."""

    def __init__(self, argv, port, ready_path, log):
        self.port = port
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                         start_new_session=True)
        self.log = log
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.proc.poll() is None:
            if self.get(ready_path)[0] == 200:
                return
            time.sleep(0.1)
        self.stop()
        pytest.fail(f"{argv[0]} did not come up on port {port}:\n{Path(log).read_text()}")

    def get(self, path):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        except OSError:
            return None, b""
        finally:
            conn.close()

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


@pytest.fixture
def servers():
    started = []
    yield started
    for server in started:
        server.stop()


def test_prometheus_scrapes_a_running_mount(busy_mount, blobfs_bin, store, tmp_path, servers):
    prometheus = tool("prometheus", "prometheus")
    exporter = tool("prometheus-node-exporter", "prometheus-node-exporter")
    m, _, _ = busy_mount
    textfiles = tmp_path / "textfile"
    textfiles.mkdir()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "blobfs").symlink_to(blobfs_bin)
    instance = "store"

    # What the timer runs every 15 s, once.
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "TEXTFILE_DIR": str(textfiles)}
    argv = unit_command(UNIT, instance, store, env)
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(textfiles)) == [f"blobfs-{instance}.prom"]

    node_port, prom_port = free_port(), free_port()
    servers.append(Server([exporter, f"--web.listen-address=127.0.0.1:{node_port}",
                           "--collector.disable-defaults", "--collector.textfile",
                           f"--collector.textfile.directory={textfiles}"],
                          node_port, "/metrics", tmp_path / "exporter.log"))
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "node",
                            "static_configs": [{"targets": [f"127.0.0.1:{node_port}"]}]}],
    }))
    servers.append(Server([prometheus, f"--config.file={config}",
                           f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                           f"--web.listen-address=127.0.0.1:{prom_port}"],
                          prom_port, "/-/ready", tmp_path / "prometheus.log"))

    doc = json.loads(blobfs_run(blobfs_bin, store, "status", "--json"))["mounts"][0]
    query = f'blobfs_fetched_bytes_total{{mountpoint="{m.path}"}}'
    path = "/api/v1/query?" + urllib.parse.urlencode({"query": query})
    deadline, answer = time.monotonic() + 30, None
    while time.monotonic() < deadline:
        status, body = servers[-1].get(path)
        answer = json.loads(body) if status == 200 else body
        if status == 200 and answer["data"]["result"]:
            break
        time.sleep(0.5)
    assert isinstance(answer, dict) and answer["data"]["result"], \
        f"Prometheus has no {query}: {answer}\n{(tmp_path / 'prometheus.log').read_text()[-2000:]}"
    [series] = answer["data"]["result"]
    assert series["metric"]["store"] == str(store) and series["metric"]["job"] == "node"
    assert float(series["value"][1]) == doc["fetched_bytes"] > 0


@pytest.mark.parametrize("unit", [UNIT, TIMER], ids=lambda u: u.name)
def test_metrics_units_verify(unit, tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("no systemd-analyze (Debian package 'systemd')")
    for source in (UNIT, TIMER):
        shutil.copy(source, tmp_path / source.name.replace("@.", "@var-lib-blobfs."))
    manpath = tmp_path / "man"
    (manpath / "man1").mkdir(parents=True)
    shutil.copy(MAN_DIR / "blobfs.1", manpath / "man1")
    result = subprocess.run([analyze, "verify",
                             str(tmp_path / unit.name.replace("@.", "@var-lib-blobfs."))],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "MANPATH": str(manpath)})
    if result.returncode != 0 and ("Failed to initialize" in result.stderr
                                   or "Operation not permitted" in result.stderr):
        pytest.skip(f"systemd-analyze verify cannot run here: {result.stderr.strip()}")
    assert result.returncode == 0 and result.stderr == "", result.stderr
