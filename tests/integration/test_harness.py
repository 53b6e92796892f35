"""Self-test of the test harness (tests/lib): push models to a real
docker-registry, read manifests and byte ranges back with urllib and curl,
follow the 307 to the nginx CDN, check the CDN's byte accounting and rate cap,
and check that stopping leaves no process or temp dir behind."""

import hashlib
import os
import subprocess
import time
import urllib.error
import urllib.request

import pytest

import dockerreg
from models import (
    DOCKER_MANIFEST_V2, MANIFEST_ACCEPT, OCI_MANIFEST_V1, OLLAMA_MODEL, OLLAMA_PARAMS,
    OLLAMA_SYSTEM, OLLAMA_TEMPLATE, delete_blob, delete_manifest, make_model, push_blob,
    push_model, random_blob,
)
from servers import start_or_skip

MiB = 1 << 20
REPO = "library/tiny"
CURL = ["curl", "--silent", "--show-error", "--noproxy", "*", "--max-time", "30", "--include"]

_urlopen = urllib.request.build_opener(urllib.request.ProxyHandler({})).open


def http_get(url, headers=None, method="GET"):
    """(status, headers, body) of a request through urllib (which follows 307s)."""
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with _urlopen(request, timeout=30) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def curl(*args):
    """Run curl; return ([(status, {lowercased header: value}) per response], body)."""
    out = subprocess.run([*CURL, *args], capture_output=True, timeout=60, check=True).stdout
    responses = []
    while out.startswith(b"HTTP/"):
        head, _, out = out.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(":", 1) for line in lines)
        headers = {name.lower(): value.strip() for name, value in headers.items()}
        responses.append((int(status_line.split()[1]), headers))
    return responses, out


def small_model(workdir, cache_dir, media_type=DOCKER_MANIFEST_V2):
    return make_model(
        workdir,
        [(OLLAMA_MODEL, MiB),
         (OLLAMA_TEMPLATE, b"{{ .System }} {{ .Prompt }}"),
         (OLLAMA_PARAMS, b'{"stop":["</s>"]}'),
         (OLLAMA_SYSTEM, b"You are a test fixture.")],
        media_type=media_type,
        names={0: "model.gguf"},
        cache_dir=cache_dir,
    )


@pytest.mark.parametrize("media_type", [DOCKER_MANIFEST_V2, OCI_MANIFEST_V1],
                         ids=["docker-v2", "oci"])
def test_push_model_and_fetch_manifest_and_blobs(registry, tmp_path, blob_cache, media_type):
    model = small_model(tmp_path, blob_cache, media_type)
    assert push_model(registry, REPO, "latest", model) == model.digest

    status, headers, body = http_get(f"{registry.url}/v2/{REPO}/manifests/latest",
                                     {"Accept": MANIFEST_ACCEPT})
    assert status == 200
    assert body == model.manifest_bytes
    assert headers["Docker-Content-Digest"] == model.digest
    assert headers["Content-Type"] == media_type
    assert model.manifest["layers"][0]["name"] == "model.gguf"

    for blob in model.blobs:
        status, _, body = http_get(f"{registry.url}/v2/{REPO}/blobs/{blob.digest}")
        assert status == 200
        assert "sha256:" + hashlib.sha256(body).hexdigest() == blob.digest
        assert len(body) == blob.size


def test_second_push_skips_uploads(registry, tmp_path, blob_cache):
    model = small_model(tmp_path, blob_cache)
    push_model(registry, REPO, "latest", model)
    mark = registry.registry_log_mark()
    push_model(registry, REPO, "v2", model)
    requests = [(e["method"], e["status"]) for e in registry.registry_log_entries(since=mark)]
    assert requests == [("HEAD", 200)] * len(model.blobs) + [("PUT", 201)]


def test_range_straight_from_registry(registry, tmp_path, blob_cache):
    layer = small_model(tmp_path, blob_cache).layer(OLLAMA_MODEL)
    digest = push_blob(registry, REPO, layer.path)
    data = layer.read_bytes()
    url = f"{registry.url}/v2/{REPO}/blobs/{digest}"

    status, headers, body = http_get(url, {"Range": "bytes=100-199"})
    assert (status, body) == (206, data[100:200])
    assert headers["Content-Range"] == f"bytes 100-199/{MiB}"

    responses, body = curl("--range", "100-199", url)
    assert [status for status, _ in responses] == [206]
    assert body == data[100:200]


def test_cdn_redirect_range_and_byte_count(cdn_registry, tmp_path, blob_cache):
    reg = cdn_registry
    model = small_model(tmp_path, blob_cache)
    push_model(reg, REPO, "latest", model)
    layer = model.layer(OLLAMA_MODEL)
    data = layer.read_bytes()
    blob_url = f"{reg.url}/v2/{REPO}/blobs/{layer.digest}"
    assert reg.blob_path(layer.digest).read_bytes() == data

    mark = reg.cdn_log_mark()
    responses, _ = curl(blob_url)
    [(status, headers)] = responses
    assert status == 307
    location = headers["location"]
    assert location == reg.cdn_blob_url(layer.digest)
    assert location.startswith(reg.cdn_url + "/")
    assert reg.cdn_log_entries(since=mark) == []

    responses, body = curl("--range", "100-199", location)
    [(status, headers)] = responses
    assert status == 206
    assert headers["content-range"] == f"bytes 100-199/{MiB}"
    assert body == data[100:200]
    [entry] = reg.cdn_log_entries(since=mark)
    assert (entry["status"], entry["range"], entry["body_bytes_sent"]) == (206, "bytes=100-199", 100)
    assert entry["uri"] == location[len(reg.cdn_url):]
    assert reg.cdn_body_bytes_sent(since=mark) == 100
    assert reg.cdn_bytes_sent(since=mark) == entry["bytes_sent"] > 100  # + headers

    # The Range header survives the redirect (curl -L), and urllib follows it.
    responses, body = curl("--location", "--range", "0-9", blob_url)
    assert [status for status, _ in responses] == [307, 206]
    assert body == data[:10]
    status, _, body = http_get(blob_url)
    assert (status, body) == (200, data)
    assert reg.cdn_body_bytes_sent(since=mark) == 100 + 10 + MiB
    assert [e["status"] for e in reg.cdn_log_entries(since=mark)] == [206, 206, 200]


def test_cdn_autoindex_lists_a_blobs_directory(cdn_registry, blob_cache):
    """cdn_autoindex: the CDN lists directories, so that rclone's and httpdirfs's
    http backends can browse to a blob; without it nginx refuses the listing."""
    path, digest = random_blob(blob_cache, MiB)
    with dockerreg.DockerRegistry(cdn_autoindex=True) as reg:
        push_blob(reg, REPO, path)
        directory = reg.cdn_blob_url(digest).rsplit("/", 1)[0] + "/"
        status, _, body = http_get(directory)
        assert status == 200
        assert b'href="data"' in body
        status, _, body = http_get(directory + "data")
        assert status == 200 and "sha256:" + hashlib.sha256(body).hexdigest() == digest
    push_blob(cdn_registry, REPO, path)
    status, _, _ = http_get(cdn_registry.cdn_blob_url(digest).rsplit("/", 1)[0] + "/")
    assert status == 403


def test_delete_manifest_and_blob(registry, tmp_path, blob_cache):
    model = small_model(tmp_path, blob_cache)
    push_model(registry, REPO, "latest", model)
    delete_manifest(registry, REPO, "latest")
    status, _, _ = http_get(f"{registry.url}/v2/{REPO}/manifests/latest",
                            {"Accept": MANIFEST_ACCEPT})
    assert status == 404
    delete_blob(registry, REPO, model.config.digest)
    status, _, _ = http_get(f"{registry.url}/v2/{REPO}/blobs/{model.config.digest}",
                            method="HEAD")
    assert status == 404


def test_stop_leaves_no_process_or_dir(cdn_registry):
    pids = cdn_registry.pids
    assert len(pids) == 2  # nginx master (with its worker in its group) and registry
    cdn_registry.stop()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
    assert not cdn_registry.workdir.exists()


@pytest.mark.timing
def test_cdn_rate_cap(capped_cdn_registry, blob_cache):
    reg = capped_cdn_registry("1m")
    path, digest = random_blob(blob_cache, 4 * MiB)
    push_blob(reg, REPO, path)
    started = time.monotonic()
    responses, body = curl("--location", f"{reg.url}/v2/{REPO}/blobs/{digest}")
    elapsed = time.monotonic() - started
    assert [status for status, _ in responses] == [307, 200]
    assert "sha256:" + hashlib.sha256(body).hexdigest() == digest
    # nginx lets the first second's worth through at once: ~3 s, not 4.
    assert 2.5 <= elapsed < 20.0, f"4 MiB at 1 MiB/s took {elapsed:.1f}s"


@pytest.mark.timing
def test_http2_cdn_behind_a_per_connection_cap(blob_cache):
    """http2: the TLS listeners offer h2; cdn_conn_rate: a stream proxy caps each
    TCP connection, however many streams it carries; the CDN's log names every
    request's connection and protocol."""
    with start_or_skip(dockerreg.DockerRegistry, tls=True, cdn=True, http2=True,
                       cdn_conn_rate="2m") as reg:
        path, digest = random_blob(blob_cache, 4 * MiB)
        push_blob(reg.backend_url, REPO, path)
        url = f"{reg.url}/v2/{REPO}/blobs/{digest}"
        started = time.monotonic()
        # Two transfers multiplexed on one connection share its cap.
        out = subprocess.run([*CURL, "--http2", "--cacert", str(reg.ca_cert), "--location",
                              "--parallel", "-o", "/dev/null", url,
                              "-o", "/dev/null", url],
                             capture_output=True, timeout=60)
        elapsed = time.monotonic() - started
        assert out.returncode == 0, out.stderr
        entries = reg.cdn_log_entries()
        assert [e["protocol"] for e in entries] == ["HTTP/2.0"] * 2, entries
        assert len(reg.cdn_connections()) == 1, entries
        # 8 MiB through one 2 MiB/s connection (nginx lets a burst through first).
        assert elapsed >= 2.5, f"8 MiB over one capped connection took {elapsed:.1f}s"


def test_tls_front_before_any_backend(fault_registry, tmp_path):
    ca = dockerreg.make_ca(tmp_path)
    cert, key = dockerreg.make_server_cert(ca, tmp_path)
    reg = fault_registry()
    reg.add_blob(b"hello")
    with dockerreg.TlsFront(int(reg.host.rsplit(":", 1)[1]), cert, key, http2=True) as front:
        responses, body = curl("--cacert", str(ca.cert), f"{front.url}/v2/")
        assert responses[0][0] == 200 and body == b"{}"
        [entry] = front.log_entries()
        assert entry["protocol"] == "HTTP/2.0" and entry["uri"] == "/v2/"
