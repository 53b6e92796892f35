"""Integration tests of a fleet: several blobfs mounts, each on a store of its
own, reading one cold blob through the shipped fleet cache
(contrib/fleet-cache/start: nginx with slice + proxy_cache + proxy_cache_lock)
in front of a registry whose blob GETs redirect to a CDN.

What the origin sent is counted where it leaves: the CDN nginx's access log
($bytes_sent, headers and bodies) and the registry's own log. The CDN log's
User-Agent tells the cache's requests (none) from a mount's (blobfs/...),
which only appear when a mount falls back to the registry.

- N mounts reading at once, and with staggered starts, over plain HTTP and
  over TLS: every node gets the blob's bytes, the origin sends it once
  (at most 1.1x);
- the cache restarted mid-transfer: every node still gets the right bytes,
  and no range leaves the origin whole twice;
- the cache down: the mounts fall back to the registry;
- wrong bytes in the cache: the mount refuses them (EIO, quarantine);
- a registry with bearer tokens and Ollama's chunk checksums behind the
  cache: the token flow passes, the blob is fetched once, and a client
  without a token gets a 401, not the cached blob;
- the start script's arguments, and the systemd unit that runs it.
"""

import hashlib
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

import children
from dockerreg import DockerRegistry, free_port
from faultreg import OLLAMA_MODEL as FAULTREG_MODEL
from fleetcache import START, FleetCache
from models import OLLAMA_MODEL, OLLAMA_TEMPLATE, make_model, push_model
from servers import start_or_skip, stopped_after
from storefiles import service_section

MiB = 1 << 20
PYTHON = "/usr/bin/python3"
REPO = "library/fleet"
NODES = 4
BLOB = 40 * MiB                # five of the cache's 8 MiB slices
ORIGIN_RATE = "8m"             # per request at the CDN: a slice takes about a second
MAX_ORIGIN_RATIO = 1.1
READ_TIMEOUT = 120

# Waits for GO (sys.argv[2], a file) to exist, sleeps DELAY (sys.argv[3]), then
# is children.READ_ALL of sys.argv[1]: prints the hash and how long the read took
# (elapsed), or the errno that stopped it.
NODE_READ = r"""
import os, sys, time
while not os.path.exists(sys.argv[2]):
    time.sleep(0.005)
time.sleep(float(sys.argv[3]))
""" + children.READ_ALL


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def fleet_cache():
    """Factory: fleet_cache(upstream_url, extra_args=()) -> FleetCache, stopped after."""
    yield from stopped_after(FleetCache)


@pytest.fixture
def origin():
    """Factory: origin(**DockerRegistry options) -> a registry whose blob GETs
    redirect to an nginx CDN capped at ORIGIN_RATE per request; stopped after."""
    yield from stopped_after(lambda cdn_rate=ORIGIN_RATE, **options:
                             DockerRegistry(cdn=True, cdn_rate=cdn_rate, **options))


@pytest.fixture
def stores():
    """Factory: stores() -> a new empty store directory; all removed after the test."""
    made = []

    def make():
        made.append(Path(tempfile.mkdtemp(prefix="blobfs-fleet-store-")))
        return made[-1]

    yield make
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------- helpers


class Node:
    """One machine of the fleet: a store of its own and a mount of it."""

    def __init__(self, store, mount, env):
        self.store = store
        self.mount = mount
        self.env = env

    def model_file(self, host, repo=REPO, tag="latest"):
        return self.mount.path / "models" / host / repo / tag / "model"


def fleet_config(path, registry_host, cache_url, cacert=None):
    """A blobfs configuration naming the cache as the registry's mirror."""
    text = f"[host {registry_host}]\nmirror = {cache_url}\n"
    if cacert:
        text = f"cacert = {cacert}\n" + text
    path.write_text(text)
    return path


def start_nodes(n, *, blobfs_bin, mount, stores, config, name):
    """N nodes, each with its own store holding NAME's manifest (pulled lazily
    through the cache), mounted with CONFIG."""
    env = {"BLOBFS_CONFIG": str(config)}
    nodes = []
    for _ in range(n):
        store = stores()
        pull = children.run([blobfs_bin, "--store", store, "pull", "--quiet", "--lazy", name],
                            env=env)
        assert pull.returncode == 0, f"pull --lazy {name}: {pull.stderr}"
        nodes.append(Node(store, mount(store=store, env=env), env))
    return nodes


def read_on_nodes(paths, delays):
    """Read every path in a child of its own, started together (each after its
    delay); returns their results in order."""
    with tempfile.TemporaryDirectory(prefix="blobfs-fleet-go-") as tmp:
        go = Path(tmp) / "go"
        procs = [children.start([PYTHON, "-c", NODE_READ, path, go, delay])
                 for path, delay in zip(paths, delays)]
        time.sleep(0.3)     # every child is waiting for the file
        go.touch()
        done = children.finish_all(procs, READ_TIMEOUT, "the nodes' reads of the blob")
    return [json.loads(children.ok(result).stdout) for result in done]


def assert_every_node_has(results, layer):
    for i, r in enumerate(results):
        assert r["ok"], f"node {i} could not read the blob: {r}"
        assert r["bytes"] == layer.size and r["sha"] == layer.digest, f"node {i}: wrong bytes {r}"


class OriginMeter:
    """What the origin (CDN and registry) sent from now on."""

    def __init__(self, reg):
        self.reg = reg
        self.cdn_mark = reg.cdn_log_mark()
        self.reg_mark = reg.tls_log_mark() if reg.tls else reg.registry_log_mark()

    def cdn_entries(self):
        return self.reg.cdn_log_entries(since=self.cdn_mark)

    def registry_bytes(self):
        if self.reg.tls:
            return sum(e["bytes_sent"] for e in self.reg.tls_log_entries(since=self.reg_mark))
        return sum(e["bytes"] for e in self.reg.registry_log_entries(since=self.reg_mark))

    def sent(self):
        """(bytes the origin sent, the CDN's requests)."""
        entries = self.cdn_entries()
        return sum(e["bytes_sent"] for e in entries) + self.registry_bytes(), entries


def from_blobfs(entries):
    return [e for e in entries if e["user_agent"].startswith("blobfs/")]


def assert_through_the_cache(nodes):
    for i, node in enumerate(nodes):
        fell_back = node.mount.log_lines(r"mirror '.*' failed")
        assert not fell_back, f"node {i} left the cache: {fell_back}"


def push_blob(reg, tmp_path, blob_cache, size=BLOB, seed=14):
    model = make_model(tmp_path / "model", [(OLLAMA_MODEL, size, seed),
                                            (OLLAMA_TEMPLATE, b"{{ .Prompt }}")],
                       cache_dir=blob_cache)
    push_model(reg.backend_url, REPO, "latest", model)   # pushes skip a TLS front
    return model.layer(OLLAMA_MODEL)


def fleet_of(n, reg, cache, tmp_path, blobfs_bin, mount, stores, cacert=None):
    config = fleet_config(tmp_path / "blobfs.conf", reg.host, cache.url, cacert)
    return start_nodes(n, blobfs_bin=blobfs_bin, mount=mount, stores=stores, config=config,
                       name=f"{reg.host}/{REPO}")


def check_cold_read(reg, nodes, layer, delays):
    meter = OriginMeter(reg)
    results = read_on_nodes([node.model_file(reg.host) for node in nodes], delays)
    assert_every_node_has(results, layer)
    sent, entries = meter.sent()
    seconds = [round(r["elapsed"], 2) for r in results]
    print(f"{len(nodes)} nodes, delays {delays}: origin sent {sent} bytes for a "
          f"{layer.size} byte blob ({sent / layer.size:.3f}x) in {len(entries)} CDN "
          f"requests; read times {seconds} s")
    assert_through_the_cache(nodes)
    assert not from_blobfs(entries), "a node went to the CDN itself"
    assert {e["host"] for e in entries} == {reg.cdn_host}, "the cache named the CDN wrongly"
    assert sent <= MAX_ORIGIN_RATIO * layer.size, \
        f"the origin sent {sent / layer.size:.2f}x the blob to {len(nodes)} nodes " \
        f"({len(entries)} CDN requests: {[(e['range'], e['body_bytes_sent']) for e in entries]})"


# ---------------------------------------------------------------- the cache at work


@pytest.mark.slow
def test_nodes_reading_one_cold_blob_at_once_get_it_from_the_origin_once(
        origin, fleet_cache, stores, blobfs_bin, mount, tmp_path, blob_cache):
    reg = origin()
    layer = push_blob(reg, tmp_path, blob_cache)
    cache = fleet_cache(reg.url)
    nodes = fleet_of(NODES, reg, cache, tmp_path, blobfs_bin, mount, stores)
    check_cold_read(reg, nodes, layer, [0.0] * NODES)


@pytest.mark.slow
def test_staggered_nodes_get_the_blob_from_the_origin_once(
        origin, fleet_cache, stores, blobfs_bin, mount, tmp_path, blob_cache):
    """The nodes start 0.3 s apart, so later ones ask for slices in flight or cached."""
    reg = origin()
    layer = push_blob(reg, tmp_path, blob_cache, seed=15)
    cache = fleet_cache(reg.url)
    nodes = fleet_of(NODES, reg, cache, tmp_path, blobfs_bin, mount, stores)
    check_cold_read(reg, nodes, layer, [0.3 * i for i in range(NODES)])


@pytest.mark.slow
def test_an_https_registry_that_serves_blobs_itself(
        fleet_cache, stores, blobfs_bin, mount, tmp_path, blob_cache):
    """No CDN: the registry answers blob GETs with the bytes, over TLS that the
    cache checks against the test CA (by name: nginx does not match addresses
    in certificates). Its bytes are cached by digest all the same."""
    reg = start_or_skip(DockerRegistry, tls=True)
    try:
        layer = push_blob(reg, tmp_path, blob_cache, size=24 * MiB, seed=20)
        cache = fleet_cache(f"https://localhost:{reg.host.rsplit(':', 1)[1]}",
                            ["--cacert", reg.ca_cert])
        nodes = fleet_of(NODES, reg, cache, tmp_path, blobfs_bin, mount, stores, reg.ca_cert)
        mark = reg.tls_log_mark()
        results = read_on_nodes([node.model_file(reg.host) for node in nodes], [0.0] * NODES)
        assert_every_node_has(results, layer)
        assert_through_the_cache(nodes)
        entries = reg.tls_log_entries(since=mark)
        sent = sum(e["bytes_sent"] for e in entries)
        hosts = {e["host"] for e in entries}
        assert hosts == {f"localhost:{reg.host.rsplit(':', 1)[1]}"}, \
            f"the cache named the registry {hosts} in its requests"
        print(f"the registry sent {sent / layer.size:.3f}x the blob to {NODES} nodes")
        assert sent <= MAX_ORIGIN_RATIO * layer.size
    finally:
        reg.stop()


SLICE = 8 * MiB                # the cache's default slice


def slice_ranges(size):
    return [f"bytes={lo}-{lo + SLICE - 1}" for lo in range(0, size, SLICE)]


def slice_file_name(digest, byte_range):
    """The name of the cache's file for a slice: the md5 of its key ($blob_digest$slice_range)."""
    return hashlib.md5(f"{digest}{byte_range}".encode()).hexdigest()


def whole_fetches(entries, size, since=0.0):
    """{range: times} of the slices the cache fetched whole from the CDN in
    requests that started at or after SINCE (a time.time())."""
    whole = {}
    for e in entries:
        if e["user_agent"].startswith("blobfs/") or e["status"] != 206 \
                or e["time"] - e["request_time"] < since:
            continue
        lo, hi = map(int, e["range"].removeprefix("bytes=").split("-"))
        if e["body_bytes_sent"] == min(hi, size - 1) - lo + 1:
            whole[e["range"]] = whole.get(e["range"], 0) + 1
    return whole


@pytest.mark.slow
def test_a_cache_restart_mid_transfer(origin, fleet_cache, stores, blobfs_bin, mount, tmp_path,
                                      blob_cache):
    """nginx stops and starts again while the nodes read. The nodes retry, and
    leave the cache for the registry if it stays away longer than their
    retries (blobfs's mirror rule), but every one of them ends up with the
    blob's bytes. What the cache had stays cached: no slice it held leaves the
    origin again, and no slice leaves it twice after the restart, however many
    nodes ask for it later. (A slice in flight at the restart may leave it
    twice: the origin may have sent it all, the cache not yet stored it.)"""
    reg = origin(cdn_rate="4m")
    layer = push_blob(reg, tmp_path, blob_cache, seed=16)
    cache = fleet_cache(reg.url)
    nodes = fleet_of(NODES, reg, cache, tmp_path, blobfs_bin, mount, stores)
    meter = OriginMeter(reg)
    outcome = {}

    def read():
        try:
            outcome["results"] = read_on_nodes([n.model_file(reg.host) for n in nodes],
                                               [0.0] * NODES)
        except BaseException as exc:  # noqa: BLE001 - raised again below
            outcome["error"] = exc

    reader = threading.Thread(target=read)
    reader.start()
    try:
        deadline = time.monotonic() + 30
        while not cache.cached_files() and time.monotonic() < deadline and reader.is_alive():
            time.sleep(0.02)
        before = {p.name for p in cache.cached_files()}
        assert before, "the cache kept nothing in 30 s"
        assert reader.is_alive(), "the nodes finished before the restart"
        cache.restart()
        restarted = time.time()
    finally:
        reader.join(READ_TIMEOUT + 10)
    if "error" in outcome:
        raise outcome["error"]
    assert_every_node_has(outcome["results"], layer)
    assert before <= {p.name for p in cache.cached_files()}, "the restart lost cached slices"
    fell_back = sum(e["body_bytes_sent"] for e in from_blobfs(meter.cdn_entries()))
    print(f"{len(before)} slices cached before the restart; the nodes fetched {fell_back} "
          f"bytes from the CDN themselves; read times "
          f"{[round(r['elapsed'], 1) for r in outcome['results']]} s")

    # A node that comes later reads it all through the cache, which fetches
    # what it lacks.
    later = fleet_of(1, reg, cache, tmp_path, blobfs_bin, mount, stores)
    assert_every_node_has(read_on_nodes([later[0].model_file(reg.host)], [0.0]), layer)
    assert_through_the_cache(later)
    held = {r for r in slice_ranges(layer.size) if slice_file_name(layer.digest, r) in before}
    assert len(held) == len(before), "cache files that are no slice of the blob"
    after = whole_fetches(meter.cdn_entries(), layer.size, since=restarted)
    print(f"held before the restart: {sorted(held)}; fetched whole after it: {after}")
    assert not held & set(after), f"the cache fetched slices it held again: {after}"
    assert all(n == 1 for n in after.values()), f"slices fetched twice after the restart: {after}"
    assert set(whole_fetches(meter.cdn_entries(), layer.size)) == set(slice_ranges(layer.size))
    assert {slice_file_name(layer.digest, r) for r in slice_ranges(layer.size)} \
        <= {p.name for p in cache.cached_files()}, "the cache does not hold every slice"


@pytest.mark.slow
def test_the_registry_is_asked_about_once_per_ask_ttl_however_many_ranges_wait(
        origin, fleet_cache, stores, blobfs_bin, mount, tmp_path, blob_cache):
    """The cache keeps the registry's yes for --ask-ttl (1 s here). When it
    runs out, every range the nodes have in flight needs it again at once; one
    of them asks, the others go on with the answer being renewed: for the same
    credentials (here none) the registry hears about one question per TTL,
    however many ranges and nodes there are (32 questions in 10 s before, for
    eight nodes). The nodes read a blob the cache holds, so their ranges come
    fast."""
    reg = origin(cdn_rate=None)
    layer = push_blob(reg, tmp_path, blob_cache, size=256 * MiB, seed=24)
    ttl = 1.0
    cache = fleet_cache(reg.url, ["--ask-ttl", f"{ttl:g}s"])
    [first] = fleet_of(1, reg, cache, tmp_path, blobfs_bin, mount, stores)
    assert_every_node_has(read_on_nodes([first.model_file(reg.host)], [0.0]), layer)
    nodes = fleet_of(2 * NODES, reg, cache, tmp_path, blobfs_bin, mount, stores)
    mark = reg.registry_log_mark()
    t0 = time.monotonic()
    assert_every_node_has(read_on_nodes([n.model_file(reg.host) for n in nodes],
                                        [0.0] * len(nodes)), layer)
    seconds = time.monotonic() - t0
    assert_through_the_cache(nodes)
    asked = sum(1 for e in reg.registry_log_entries(since=mark)
                if e["uri"] == f"/v2/{REPO}/blobs/{layer.digest}")
    served = sum(1 for line in cache.access_log.read_text().splitlines()
                 if f"GET /v2/{REPO}/blobs/{layer.digest} " in line)
    windows = int(seconds / ttl) + 2
    print(f"{len(nodes)} nodes made {served} blob requests in {seconds:.1f} s; the cache "
          f"asked the registry {asked} times ({windows} windows of {ttl:g} s)")
    assert asked <= 2 * windows < served, (asked, windows, served)


def test_the_cache_down_nodes_fall_back_to_the_registry(
        origin, fleet_cache, stores, blobfs_bin, mount, tmp_path, blob_cache):
    reg = origin(cdn_rate=None)
    layer = push_blob(reg, tmp_path, blob_cache, size=8 * MiB, seed=17)
    cache = fleet_cache(reg.url)
    nodes = fleet_of(2, reg, cache, tmp_path, blobfs_bin, mount, stores)
    cache.kill()
    meter = OriginMeter(reg)
    assert_every_node_has(read_on_nodes([n.model_file(reg.host) for n in nodes], [0.0, 0.0]),
                          layer)
    for i, node in enumerate(nodes):
        assert node.mount.log_lines(r"mirror '.*' failed"), \
            f"node {i} said nothing about the cache being down:\n{node.mount.log()}"
    direct = from_blobfs(meter.cdn_entries())
    assert sum(e["body_bytes_sent"] for e in direct) >= 2 * layer.size, \
        "the nodes did not fetch the blob from the registry's CDN themselves"


def test_a_registry_without_chunk_checksums_does_not_fail_the_cache(
        origin, fleet_cache, stores, blobfs_bin, mount, tmp_path, blob_cache):
    """For a blob of 64 MiB or more blobfs asks for Ollama's chunk checksums,
    which docker-registry does not have: its 404, passed on by the cache, says
    so, and is no reason to leave the cache for the registry."""
    reg = origin(cdn_rate=None)
    layer = push_blob(reg, tmp_path, blob_cache, size=64 * MiB, seed=23)
    cache = fleet_cache(reg.url)
    [node] = fleet_of(1, reg, cache, tmp_path, blobfs_bin, mount, stores)
    meter = OriginMeter(reg)
    assert_every_node_has(read_on_nodes([node.model_file(reg.host)], [0.0]), layer)
    assert node.mount.log_lines(r"/chunksums/"), "blobfs did not ask for chunk checksums"
    assert_through_the_cache([node])
    assert not from_blobfs(meter.cdn_entries()), "the node went to the CDN itself"


def corrupt_one_slice(cache):
    """Flip the last byte of one cached slice (a body byte: the file ends with it)."""
    files = cache.cached_files()
    assert files, "the cache holds nothing"
    with open(files[0], "r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0xFF]))


def test_wrong_bytes_from_the_cache_are_refused(origin, fleet_cache, stores, blobfs_bin, mount,
                                                tmp_path, blob_cache):
    """A cache whose disk changed a byte: the node that reads through it gets
    EIO at the end of the blob, and its store keeps nothing of it."""
    reg = origin(cdn_rate=None)
    layer = push_blob(reg, tmp_path, blob_cache, size=16 * MiB, seed=18)
    cache = fleet_cache(reg.url)
    first = fleet_of(1, reg, cache, tmp_path, blobfs_bin, mount, stores)
    assert_every_node_has(read_on_nodes([first[0].model_file(reg.host)], [0.0]), layer)
    corrupt_one_slice(cache)

    second = fleet_of(1, reg, cache, tmp_path, blobfs_bin, mount, stores)[0]
    [result] = read_on_nodes([second.model_file(reg.host)], [0.0])
    assert not result["ok"] and result["errno"] == 5, \
        f"a reader got the blob through a cache that changed a byte: {result}"
    assert not (second.store / "blobs" / ("sha256-" + layer.hex)).exists(), \
        "the store committed a blob that failed verification"
    assert second.mount.log_lines("failed verification"), second.mount.log()


# ---------------------------------------------------------------- bearer tokens


def cache_get(cache, path, token=None):
    conn = http.client.HTTPConnection("127.0.0.1", cache.port, timeout=30)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


@pytest.mark.slow
def test_a_registry_with_bearer_tokens_and_chunk_checksums_behind_the_cache(
        fault_registry, fleet_cache, stores, blobfs_bin, mount, tmp_path, blob_cache):
    """Ollama's way: bearer tokens, blob GETs redirected to signed CDN URLs (a
    new one each time), per-chunk checksums whose Content-Location names the
    CDN URL. The blob is big enough (64 MiB) for blobfs to ask for checksums."""
    reg = fault_registry(auth="bearer", redirect=True)
    data = make_model(tmp_path / "m", [(OLLAMA_MODEL, 64 * MiB, 19)],
                      cache_dir=blob_cache).layer(OLLAMA_MODEL)
    _, [digest] = reg.add_model(REPO, "latest", [(FAULTREG_MODEL, str(data.path))],
                                chunk_size=MiB)
    cache = fleet_cache(reg.url)
    nodes = fleet_of(NODES, reg, cache, tmp_path, blobfs_bin, mount, stores)
    reg.reset_log()

    results = read_on_nodes([node.model_file(reg.host) for node in nodes], [0.0] * NODES)
    assert_every_node_has(results, data)
    assert_through_the_cache(nodes)
    cdn = reg.bytes_sent(digest, listener="cdn")
    print(f"the CDN sent {cdn} bytes for a {data.size} byte blob read by {NODES} nodes")
    assert cdn <= MAX_ORIGIN_RATIO * data.size, f"the CDN sent {cdn / data.size:.2f}x the blob"
    assert reg.count(listener="registry", path=f"/v2/{REPO}/chunksums/{digest}") >= 1, \
        "no node asked for the chunk checksums"
    assert not reg.cdn_saw_authorization, "a token went to the CDN"
    asked = reg.count(listener="registry", path=f"/v2/{REPO}/blobs/{digest}")
    served = sum(1 for line in cache.access_log.read_text().splitlines()
                 if f"GET /v2/{REPO}/blobs/{digest} " in line)
    print(f"the nodes made {served} blob requests; the cache asked the registry {asked} times")
    # Its yes is kept for a while per token: about once per node, not per range.
    assert NODES <= asked <= 3 * NODES < served, (asked, served)
    for i, node in enumerate(nodes):
        assert not node.mount.log_lines(reg.cdn_url), \
            f"node {i} fetched from the CDN itself, not through the cache"

    # The blob is cached, and so is the registry's yes to each node's token:
    # still, no token (or another one), no blob.
    path = f"/v2/{REPO}/blobs/{digest}"
    status, headers, body = cache_get(cache, path)
    assert status == 401 and "Bearer" in headers.get("WWW-Authenticate", ""), (status, headers)
    assert len(body) < 4096
    status, _, body = cache_get(cache, path, token="not-a-token")
    assert status == 401 and len(body) < 4096, status


def test_a_token_the_registry_refuses_gets_no_blob_once_the_ask_ttl_is_over(
        fault_registry, fleet_cache):
    """The registry's yes to a token is kept --ask-ttl (1 s here; nginx counts
    whole seconds, so up to 2 s), and renewed by one request while the others
    in flight take the old answer. Once the registry refuses the token (here
    all tokens are revoked), its no is what is kept: within the TTL and one
    renewal, no request with that token gets a byte, however many keep asking."""
    reg = fault_registry(auth="bearer", redirect=True)
    _, [digest] = reg.add_model(REPO, "latest", [(FAULTREG_MODEL, os.urandom(MiB))])
    cache = fleet_cache(reg.url, ["--ask-ttl", "1s"])
    conn = http.client.HTTPConnection(reg.host, timeout=30)
    try:
        conn.request("GET", f"/token?scope=repository:{REPO}:pull&service=x")
        token = json.loads(conn.getresponse().read())["token"]
    finally:
        conn.close()
    path = f"/v2/{REPO}/blobs/{digest}"
    assert cache_get(cache, path, token)[0] == 200

    answers, stop = [], threading.Event()

    def keep_asking():
        while not stop.is_set():
            started = time.monotonic()
            answers.append((started, cache_get(cache, path, token)[0]))

    askers = [threading.Thread(target=keep_asking) for _ in range(4)]
    for t in askers:
        t.start()
    time.sleep(1.5)
    reg.expire_tokens()
    revoked = time.monotonic()
    time.sleep(5)
    stop.set()
    for t in askers:
        t.join(30)
    before = [status for started, status in answers if started < revoked]
    late = [status for started, status in answers if started > revoked + 3]
    print(f"{len(answers)} requests; before the revocation {set(before)}, "
          f"from 3 s after it {len(late)} answered {set(late)}")
    assert before and set(before) == {200}, set(before)
    assert late and set(late) == {401}, f"a refused token still got the blob: {set(late)}"


def test_a_client_cannot_choose_where_the_cache_fetches_from(origin, fleet_cache, tmp_path,
                                                             blob_cache):
    """Where the cache fetches a blob from is the registry's word alone: headers
    a client adds (such as those an older design passed between its servers)
    change nothing."""
    reg = origin(cdn_rate=None)
    layer = push_blob(reg, tmp_path, blob_cache, size=MiB, seed=22)
    cache = fleet_cache(reg.url)
    conn = http.client.HTTPConnection("127.0.0.1", cache.port, timeout=30)
    try:
        conn.request("GET", f"/v2/{REPO}/blobs/{layer.digest}",
                     headers={"X-Fleet-Origin": "http://127.0.0.1:9/elsewhere",
                              "X-Fleet-Host": "elsewhere", "X-Fleet-Tls-Name": "elsewhere",
                              "X-Fleet-Authorization": "Bearer someone-elses"})
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    assert resp.status == 200 and body == layer.read_bytes(), (resp.status, len(body))


# ---------------------------------------------------------------- the start script


@pytest.mark.parametrize("args, message", [
    (["--listen", "127.0.0.1:1", "--dir", "/tmp/x"], "usage"),
    (["--upstream", "ftp://r", "--listen", "1", "--dir", "D"], "http:// or https://"),
    (["--upstream", "http://r/v2", "--listen", "1", "--dir", "D"], "without a path"),
    (["--upstream", "http://r", "--listen", "host", "--dir", "D"], "HOST:PORT"),
    (["--upstream", "http://r", "--listen", "1", "--dir", "D", "--slice", "8q"], "not a size"),
    (["--upstream", "http://r;x", "--listen", "1", "--dir", "D"], "cannot go into nginx.conf"),
    (["--upstream", "http://r", "--listen", "1", "--dir", "D", "--ask-ttl", "0"], "not a time"),
])
def test_start_refuses_bad_arguments(args, message):
    result = subprocess.run([str(START), *args], capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_start_check_writes_a_configuration_nginx_accepts(tmp_path):
    if not shutil.which("nginx", path="/usr/sbin:/usr/bin"):
        pytest.skip("'nginx' is not installed: install the Debian package 'nginx'")
    result = subprocess.run([str(START), "--upstream", "https://localhost:8443",
                             "--listen", "127.0.0.1:5000", "--dir", str(tmp_path / "c"),
                             "--resolver", "127.0.0.1", "--check"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    conf = (tmp_path / "c" / "nginx.conf").read_text()
    assert not re.search(r"@[A-Z_]+@", conf), "a placeholder was left in the configuration"
    assert "server localhost:8443;" in conf and "proxy_ssl_name localhost;" in conf


# ---------------------------------------------------------------- the systemd unit


UNIT_IN = START.parent / "blobfs-fleet-cache@.service.in"


def unit_for_test(directory):
    """The unit as `make install` writes it, its pkgdatadir a directory whose
    fleet-cache/ is contrib/fleet-cache."""
    share = Path(directory) / "share"
    share.mkdir()
    (share / "fleet-cache").symlink_to(START.parent)
    path = Path(directory) / "blobfs-fleet-cache@test.service"
    path.write_text(UNIT_IN.read_text().replace("@pkgdatadir@", str(share)))
    return path


def test_systemd_unit_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("no systemd-analyze (Debian package 'systemd')")
    unit = unit_for_test(tmp_path)
    manpath = tmp_path / "man" / "man1"
    manpath.mkdir(parents=True)
    shutil.copy(START.parents[2] / "man" / "blobfs.1", manpath)
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "MANPATH": str(manpath.parent)})
    if result.returncode != 0 and ("Failed to initialize" in result.stderr
                                   or "Operation not permitted" in result.stderr):
        pytest.skip(f"systemd-analyze verify cannot run here: {result.stderr.strip()}")
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_systemd_unit_command_serves_the_registry(origin, tmp_path, blob_cache):
    """Runs the unit's ExecStart as systemd would (the EnvironmentFile read,
    $VARIABLES and ${CACHE_DIRECTORY} expanded) and fetches a blob through it."""
    reg = origin(cdn_rate=None)
    layer = push_blob(reg, tmp_path, blob_cache, size=MiB, seed=21)
    service = service_section(unit_for_test(tmp_path).read_text())
    assert service["EnvironmentFile"] == ["/etc/blobfs/fleet-cache-%i.env"]
    assert service["CacheDirectory"] == ["blobfs-fleet-cache/%i"]
    port = free_port()
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CACHE_DIRECTORY": str(tmp_path / "cache")}
    for assignment in service["Environment"]:
        key, value = assignment.split("=", 1)
        env[key] = value
    env.update(UPSTREAM=reg.url, LISTEN=f"127.0.0.1:{port}", FLEET_CACHE_ARGS="--slice 1m")
    argv = []
    for word in shlex.split(service["ExecStart"][0]):
        if re.fullmatch(r"\$[A-Za-z_]+", word):
            argv += env[word[1:]].split()
        else:
            argv.append(re.sub(r"\$\{(\w+)\}", lambda m: env[m[1]], word))
    log = tmp_path / "journal.log"
    with open(log, "wb") as out:
        nginx = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=out, start_new_session=True)
    try:
        deadline = time.monotonic() + 15
        while nginx.poll() is None and time.monotonic() < deadline:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                conn.request("GET", f"/v2/{REPO}/blobs/{layer.digest}")
                resp = conn.getresponse()
                body = resp.read()
                break
            except OSError:
                time.sleep(0.05)
            finally:
                conn.close()
        assert nginx.poll() is None, log.read_text()
        assert resp.status == 200 and body == layer.read_bytes(), (resp.status, len(body))
        assert resp.getheader("X-Fleet-Cache") == "MISS"
        assert (tmp_path / "cache" / "nginx.conf").exists()
    finally:
        os.killpg(nginx.pid, signal.SIGTERM)
        nginx.wait(10)
    assert service["Restart"] == ["on-failure"] and service["DynamicUser"] == ["yes"]
