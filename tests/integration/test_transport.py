"""How blobfs uses TCP connections, counted at the server.

The registry (Debian's docker-registry behind an nginx TLS front) redirects
blob GETs to an nginx CDN over TLS, as Ollama's registry does.  With
``http2=True`` both offer HTTP/2 through ALPN, as real CDNs do; libcurl's
default would then multiplex every range request of a blob over one TCP
connection, and one connection's throughput is what a real path limits.
blobfs's policy (blobfs(1), CONNECTIONS): range requests for blob bytes go over
as many TCP connections as --connections says, one request at a time on each;
every request, small ones too, uses HTTP/1.1.

nginx logs each request with its connection's serial number ($connection) and
protocol, so the tests check that no connection ever carried two range
requests at once, and count the requests (hence connections) in flight at
once, and for a pull the distinct connections.  The same runs against a
CDN that speaks HTTP/1.1 only, through a CONNECT proxy (HTTPS_PROXY), and for
a cold read through the mount.  The CDN caps each request (limit_rate) so that
the ranges of a blob are in flight together.
"""

import subprocess

import pytest

import dockerreg
from connectproxy import ConnectProxy
from models import OLLAMA_MODEL, OLLAMA_TEMPLATE, make_model, push_model, random_blob
from storefiles import sha256_file

MiB = 1 << 20
REPO = "library/t"
CONNECTIONS = 4
DEMAND_RESERVE = 4          # extra range requests a blocked reader may start (blobfs(1))
LAYER_SIZE = 24 * MiB
REQUEST_SIZE = "2M"         # 12 ranges: three rounds over 4 connections
CDN_RATE = "6m"             # per request: a 2 MiB range takes ~1/3 s


@pytest.fixture
def transport_registry(blob_cache, tmp_path):
    """Factory: transport_registry(http2, push=True, **DockerRegistry arguments)
    -> DockerRegistry over TLS with a CDN, holding REPO:latest (a LAYER_SIZE
    layer and a template) unless push is false; .layer is the layer's Blob."""
    started = []
    model = make_model(tmp_path / "model", [(OLLAMA_MODEL, LAYER_SIZE, 18),
                                            (OLLAMA_TEMPLATE, b"{{ .Prompt }}")],
                       cache_dir=blob_cache)

    def start(http2, push=True, **kw):
        """kw: DockerRegistry's (a certificate, no CDN)."""
        kw = {"cdn": True, "cdn_rate": CDN_RATE, **kw}
        try:
            reg = dockerreg.DockerRegistry(tls=True, http2=http2, **kw)
        except dockerreg.ToolMissing as missing:
            pytest.skip(str(missing))
        started.append(reg)
        if push:
            push_model(reg.backend_url, REPO, "latest", model)
        reg.layer = model.layer(OLLAMA_MODEL)
        # A name with https:// on a loopback host (which would get plain HTTP).
        reg.name = f"{reg.url}/{REPO}:latest"
        return reg

    yield start
    for reg in started:
        reg.stop()


def net_args(reg):
    return ["--cacert", reg.ca_cert, "--connections", CONNECTIONS,
            "--request-size", REQUEST_SIZE]


def range_requests(reg, since):
    """The CDN's log entries of the layer's range requests since offset SINCE."""
    path = str(reg.blob_path(reg.layer.digest).relative_to(reg.rootdir))
    return [e for e in reg.cdn_log_entries(since)
            if e["uri"].endswith(path) and e["status"] in (200, 206)]


def most_at_once(spans):
    """The most of SPANS ([start, end) pairs) in progress at one moment.
    Timestamps have millisecond resolution: a millisecond is shaved off
    either end, and an end sorts before a start at the same time."""
    events = sorted([(start + 0.001, 1) for start, end in spans if end - start > 0.002] +
                    [(end - 0.001, -1) for start, end in spans if end - start > 0.002])
    now = peak = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


def span(entry):
    """An entry ends at its log time and started request_time before."""
    return entry["time"] - entry["request_time"], entry["time"]


def describe(entries):
    rows = sorted((e["connection"], e["protocol"], e["range"], e["request_time"])
                  for e in entries)
    return "\n".join("conn %d %s %s %.3fs" % row for row in rows)


def assert_connection_use(entries, low, high, distinct=None):
    """One range request at a time on each TCP connection, HTTP/1.1, and from
    LOW to HIGH of them in flight at once: that many connections at once.
    DISTINCT: how many connections there must be in all. (A request cut
    short, as the mount's scheduler does for a reader, ends its HTTP/1.1
    connection, and a new one takes its place.)"""
    info = describe(entries)
    assert entries, "no range request reached the CDN"
    by_connection = {}
    for e in entries:
        by_connection.setdefault(e["connection"], []).append(span(e))
    assert max(most_at_once(spans) for spans in by_connection.values()) == 1, \
        f"a connection carried more than one range request at a time:\n{info}"
    assert {e["protocol"] for e in entries} == {"HTTP/1.1"}, \
        f"range requests must use HTTP/1.1, one per connection:\n{info}"
    peak = most_at_once([span(e) for e in entries])
    assert low <= peak <= high, \
        f"at most {peak} TCP connections carried ranges at once, want {low}..{high}:\n{info}"
    if distinct is not None:
        assert len(by_connection) == distinct, \
            f"{len(by_connection)} TCP connections carried the ranges, want {distinct}:\n{info}"


@pytest.mark.parametrize("http2", [True, False], ids=["h2-cdn", "h1-cdn"])
def test_pull_uses_as_many_connections_as_configured(http2, transport_registry, run_blobfs,
                                                     store):
    reg = transport_registry(http2)
    mark = reg.cdn_log_mark()
    result = run_blobfs([*net_args(reg), "pull", reg.name], timeout=90)
    assert result.returncode == 0, result.stderr
    assert sha256_file(store / "blobs" / ("sha256-" + reg.layer.hex)) == reg.layer.digest
    assert_connection_use(range_requests(reg, mark), CONNECTIONS, CONNECTIONS, CONNECTIONS)


@pytest.mark.parametrize("http2", [True, False], ids=["h2-cdn", "h1-cdn"])
def test_cold_read_through_the_mount_uses_as_many_connections_as_configured(
        http2, transport_registry, run_blobfs, store, mount):
    reg = transport_registry(http2)
    result = run_blobfs(["--cacert", reg.ca_cert, "pull", "--lazy", reg.name], timeout=30)
    assert result.returncode == 0, result.stderr
    m = mount(global_args=net_args(reg))
    mark = reg.cdn_log_mark()
    model = m.path / "models" / reg.host / REPO / "latest" / "model"
    read = subprocess.run(["sha256sum", str(model)], capture_output=True, text=True, timeout=90)
    assert read.returncode == 0, read.stderr + m.log()
    assert read.stdout.split()[0] == reg.layer.hex
    # A blocked reader may use the demand reserve on top of --connections.
    assert_connection_use(range_requests(reg, mark), CONNECTIONS, CONNECTIONS + DEMAND_RESERVE)


def test_pull_through_an_https_proxy_uses_as_many_connections_as_configured(
        transport_registry, run_blobfs, store):
    """Through HTTPS_PROXY the TLS session (and its ALPN) runs inside a CONNECT
    tunnel, one per connection: the CDN still sees one HTTP/1.1 range request
    at a time on each of --connections connections."""
    reg = transport_registry(True)
    env = {"HTTPS_PROXY": None, "https_proxy": None, "NO_PROXY": "", "no_proxy": ""}
    with ConnectProxy() as proxy:
        env["HTTPS_PROXY"] = env["https_proxy"] = proxy.url
        mark = reg.cdn_log_mark()
        result = run_blobfs([*net_args(reg), "pull", reg.name], timeout=90,
                            env={k: v for k, v in env.items() if v is not None})
        tunnels = list(proxy.tunnels)
    assert result.returncode == 0, result.stderr
    assert reg.cdn_host in tunnels and reg.host in tunnels, \
        f"blobfs did not go through the proxy: tunnels {tunnels}"
    assert_connection_use(range_requests(reg, mark), CONNECTIONS, CONNECTIONS, CONNECTIONS)


def test_pull_through_a_mirror_uses_as_many_connections_as_configured(
        transport_registry, run_blobfs, store, tmp_path):
    """A mirror (a registry holding copies, its blobs on an HTTP/2 CDN) gets the
    same policy as the registry: the model comes from the mirror alone, since
    the registry lacks it, over --connections HTTP/1.1 connections."""
    ca = dockerreg.make_ca(tmp_path / "pki")
    cert = dict(zip(("tls_cert", "tls_key"), dockerreg.make_server_cert(ca, tmp_path / "pki")))
    registry = transport_registry(True, push=False, cdn=False, cdn_rate=None, **cert)
    mirror = transport_registry(True, **cert)
    config = tmp_path / "blobfs.conf"
    config.write_text(f"[host {registry.host}]\nmirror = {mirror.url}\n")
    mark = mirror.cdn_log_mark()
    result = run_blobfs(["--cacert", ca.cert, "--connections", CONNECTIONS, "--request-size",
                         REQUEST_SIZE, "pull", f"{registry.url}/{REPO}:latest"],
                        env={"BLOBFS_CONFIG": str(config)}, timeout=90)
    assert result.returncode == 0, result.stderr
    assert sha256_file(store / "blobs" / ("sha256-" + mirror.layer.hex)) == mirror.layer.digest
    assert_connection_use(range_requests(mirror, mark), CONNECTIONS, CONNECTIONS, CONNECTIONS)


def test_every_request_uses_http1_where_http2_is_offered(transport_registry, run_blobfs, store):
    """At a registry that offers HTTP/2, the manifest goes over HTTP/1.1 too,
    so a blob GET that follows it can reuse its connection: over HTTP/2 the
    manifest's connection could carry none of the range requests, and a pull
    held one connection more (bench/RESULTS.md, connections-bench --small)."""
    reg = transport_registry(True)
    mark = reg.tls_log_mark()
    result = run_blobfs([*net_args(reg), "pull", reg.name], timeout=90)
    assert result.returncode == 0, result.stderr
    entries = reg.tls_log_entries(mark)
    info = "\n".join("conn %d %s %s %s" % (e["connection"], e["protocol"], e["method"],
                                           e["uri"]) for e in entries)
    manifests = [e for e in entries if "/manifests/" in e["uri"]]
    blobs = [e for e in entries if "/blobs/" in e["uri"]]
    assert manifests and blobs, f"no manifest or blob request reached the registry:\n{info}"
    assert {e["protocol"] for e in entries} == {"HTTP/1.1"}, \
        f"a request went over HTTP/2:\n{info}"
    assert {e["connection"] for e in manifests} & {e["connection"] for e in blobs}, \
        f"no blob GET reused the manifest's connection:\n{info}"


@pytest.mark.timing
def test_a_slow_range_is_restarted_on_a_new_connection_at_an_http2_server(
        fault_registry, run_blobfs, store, blob_cache, tmp_path):
    """The registry serves blobs itself behind a TLS front that offers HTTP/2
    (as a pull-through cache would). One range trickles; blobfs restarts the
    rest of it "on a fresh connection", and the front's log shows that this is
    a TCP connection that carried nothing before, speaking HTTP/1.1, not a
    stream of a connection already open. (test_pull's straggler test checks
    the same at a plain HTTP server; the thresholds are explained there.)"""
    reg = fault_registry()
    path, _ = random_blob(blob_cache, 64 * MiB, seed=7)
    data = path.read_bytes()
    _, (digest,) = reg.add_model("library/f", "latest", [(OLLAMA_MODEL, data)])
    fault = reg.fault("trickle", rate=30_000, digest=digest, covers=40 * MiB, times=1)
    ca = dockerreg.make_ca(tmp_path / "pki")
    cert, key = dockerreg.make_server_cert(ca, tmp_path / "pki")
    with dockerreg.TlsFront(int(reg.host.rsplit(":", 1)[1]), cert, key, http2=True) as front:
        result = run_blobfs(["--cacert", ca.cert, "--request-size", "8M", "pull",
                             f"{front.url}/library/f:latest"], timeout=60)
        entries = front.log_entries()
    assert result.returncode == 0, result.stderr
    assert fault.hits == 1
    [slow] = reg.requests(fault="trickle")
    info = "\n".join("conn %d %s %s %s %s" % (e["connection"], e["protocol"], e["method"],
                                              e["uri"], e["range"]) for e in entries)
    ranges = [e for e in entries if "/blobs/" in e["uri"] and e["range"]]
    [slow_entry] = [e for e in ranges if e["range"] == slow.range]
    lo, hi = (int(x) for x in slow.range.removeprefix("bytes=").split("-"))
    restarted = [e for e in ranges if e is not slow_entry and lo < int(
        e["range"].removeprefix("bytes=").split("-")[0]) <= hi and span(e)[0] > span(slow_entry)[0]]
    assert restarted, f"the rest of the slow range {slow.range} was never asked for again:\n{info}"
    first = min(restarted, key=lambda e: span(e)[0])
    earlier = {e["connection"] for e in entries if span(e)[0] < span(first)[0] - 0.001}
    assert first["connection"] not in earlier, \
        f"the slow range was restarted on a connection already open:\n{info}"
    assert {e["protocol"] for e in ranges} == {"HTTP/1.1"}, \
        f"range requests must use HTTP/1.1, one per connection:\n{info}"
