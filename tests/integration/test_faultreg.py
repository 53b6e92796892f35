"""Self-test of tests/lib/faultreg.py: every behaviour checked with real HTTP requests."""

import hashlib
import http.client
import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time

import pytest

LIB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lib")
sys.path.insert(0, LIB)

from faultreg import DOCKER_CONFIG, DOCKER_MANIFEST, OCI_MANIFEST, OLLAMA_MODEL  # noqa: E402

REPO = "library/tiny"
BLOB = random.Random(1234).randbytes(1 << 20)
SMALL = random.Random(99).randbytes(10_000)


# ---------------------------------------------------------------- client helpers


def split_url(url):
    """http://host:port/path?q -> ("host:port", "/path?q")."""
    m = re.fullmatch(r"http://([^/]+)(/.*)", url)
    return m[1], m[2]


def request(host, path, method="GET", headers=None, timeout=10):
    """One request on a fresh http.client connection; returns (response, body)."""
    name, port = host.rsplit(":", 1)
    conn = http.client.HTTPConnection(name, int(port), timeout=timeout)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response, response.read() if method != "HEAD" else b""
    finally:
        conn.close()


def get(url, headers=None):
    return request(*split_url(url), headers=headers)


def raw_get(host, path, headers=(), timeout=10):
    """GET with Connection: close over a bare socket, reading until EOF or error.

    Returns (status, headers, body, error) where error is the exception that ended
    the read (None for a clean EOF) and body is everything after the header block.
    """
    name, port = host.rsplit(":", 1)
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Connection: close", *headers, "", ""]
    received, error = b"", None
    with socket.create_connection((name, int(port)), timeout=timeout) as sock:
        sock.sendall("\r\n".join(lines).encode())
        while True:
            try:
                piece = sock.recv(65536)
            except OSError as exc:
                error = exc
                break
            if not piece:
                break
            received += piece
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    parsed = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), {k.lower(): v for k, v in parsed.items()}, body, error


def blob_path(digest, repo=REPO):
    return f"/v2/{repo}/blobs/{digest}"


def challenge_params(header):
    return dict(re.findall(r'(\w+)="([^"]*)"', header))


def fetch_token(reg, scope=f"repository:{REPO}:pull", headers=None):
    response, body = request(reg.host, f"/token?service=faultreg&scope={scope}", headers=headers)
    assert response.status == 200, body
    return json.loads(body)


@pytest.fixture
def reg(fault_registry):
    reg = fault_registry()
    reg.digest = reg.add_blob(BLOB)
    return reg


# ---------------------------------------------------------------- protocol


def test_base_endpoint(reg):
    response, body = request(reg.host, "/v2/")
    assert response.status == 200
    assert response.getheader("Docker-Distribution-API-Version") == "registry/2.0"
    assert json.loads(body) == {}
    assert request(reg.host, "/nope")[0].status == 404


def test_add_model_builds_docker_manifest_served_by_tag_and_digest(reg):
    manifest, digests = reg.add_model(REPO, "latest", [(OLLAMA_MODEL, BLOB), ("application/vnd.ollama.image.license", b"MIT")])
    parsed = json.loads(manifest)
    assert parsed["schemaVersion"] == 2 and parsed["mediaType"] == DOCKER_MANIFEST
    assert parsed["config"]["mediaType"] == DOCKER_CONFIG
    assert [(layer["digest"], layer["size"]) for layer in parsed["layers"]] == [(digests[0], len(BLOB)), (digests[1], 3)]
    assert digests[0] == "sha256:" + hashlib.sha256(BLOB).hexdigest()

    response, body = request(reg.host, f"/v2/{REPO}/manifests/latest")
    digest = response.getheader("Docker-Content-Digest")
    assert response.status == 200 and body == manifest
    assert response.getheader("Content-Type") == DOCKER_MANIFEST
    assert digest == "sha256:" + hashlib.sha256(manifest).hexdigest()
    assert request(reg.host, f"/v2/{REPO}/manifests/{digest}")[1] == manifest
    head, _ = request(reg.host, f"/v2/{REPO}/manifests/latest", method="HEAD")
    assert head.status == 200 and int(head.getheader("Content-Length")) == len(manifest)
    config, _ = request(reg.host, blob_path(parsed["config"]["digest"]))
    assert config.status == 200


def test_oci_model_and_unknown_manifest(reg):
    manifest, _ = reg.add_model("solo", "v1", [(OLLAMA_MODEL, SMALL)], oci=True)
    response, body = request(reg.host, "/v2/solo/manifests/v1")
    assert body == manifest and response.getheader("Content-Type") == OCI_MANIFEST
    response, body = request(reg.host, f"/v2/{REPO}/manifests/missing")
    assert response.status == 404
    assert json.loads(body)["errors"][0]["code"] == "MANIFEST_UNKNOWN"


@pytest.mark.parametrize(
    "range_header, status, start, end",
    [
        (None, 200, 0, len(BLOB)),
        ("bytes=10-19", 206, 10, 20),
        ("bytes=1000000-", 206, 1000000, len(BLOB)),
        ("bytes=-5", 206, len(BLOB) - 5, len(BLOB)),
        ("bytes=100-99999999", 206, 100, len(BLOB)),
        ("bytes=9-2", 200, 0, len(BLOB)),  # invalid: ignored
        ("bytes=0-1,5-6", 200, 0, len(BLOB)),  # multi-range: ignored
    ],
)
def test_blob_ranges(reg, range_header, status, start, end):
    headers = {"Range": range_header} if range_header else {}
    response, body = request(reg.host, blob_path(reg.digest), headers=headers)
    assert response.status == status
    assert body == BLOB[start:end]
    assert response.getheader("Accept-Ranges") == "bytes"
    assert int(response.getheader("Content-Length")) == end - start
    if status == 206:
        assert response.getheader("Content-Range") == f"bytes {start}-{end - 1}/{len(BLOB)}"


@pytest.mark.parametrize("range_header", [f"bytes={len(BLOB)}-", "bytes=-0"])
def test_unsatisfiable_range_is_416(reg, range_header):
    response, body = request(reg.host, blob_path(reg.digest), headers={"Range": range_header})
    assert response.status == 416 and body == b""
    assert response.getheader("Content-Range") == f"bytes */{len(BLOB)}"


def test_blob_head_and_unknown_blob(reg):
    response, _ = request(reg.host, blob_path(reg.digest), method="HEAD")
    assert response.status == 200 and int(response.getheader("Content-Length")) == len(BLOB)
    assert response.getheader("Docker-Content-Digest") == reg.digest
    response, body = request(reg.host, blob_path("sha256:" + "0" * 64))
    assert response.status == 404 and json.loads(body)["errors"][0]["code"] == "BLOB_UNKNOWN"


def test_blob_served_from_file(reg, tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(BLOB[::-1])
    digest = reg.add_blob(path)
    assert digest == "sha256:" + hashlib.sha256(BLOB[::-1]).hexdigest()
    response, body = request(reg.host, blob_path(digest), headers={"Range": "bytes=70000-200000"})
    assert response.status == 206 and body == BLOB[::-1][70000:200001]


def test_keep_alive_reuses_one_connection(reg):
    name, port = reg.host.split(":")
    conn = http.client.HTTPConnection(name, int(port), timeout=5)
    for i in range(3):
        conn.request("GET", blob_path(reg.digest), headers={"Range": f"bytes={i}-{i}"})
        assert conn.getresponse().read() == BLOB[i : i + 1]
    conn.close()
    assert {r.conn for r in reg.requests()} == {1}


@pytest.mark.timing
def test_forty_concurrent_connections(reg):
    reg.fault("stall", seconds=1.0)  # holds every response open so all overlap
    results = {}

    def fetch(i):
        results[i] = request(reg.host, blob_path(reg.digest), headers={"Range": f"bytes={i * 100}-{i * 100 + 99}"})[1]

    began = time.monotonic()
    threads = [threading.Thread(target=fetch, args=(i,)) for i in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert time.monotonic() - began < 5
    assert all(results[i] == BLOB[i * 100 : i * 100 + 100] for i in range(40))
    assert reg.peak_in_flight >= 40


# ---------------------------------------------------------------- chunksums, CDN


def parse_chunksums(body):
    chunks = []
    for line in body.decode().splitlines():
        m = re.fullmatch(r"(sha256:[0-9a-f]{64}) (\d+)-(\d+)", line)
        assert m, line
        chunks.append((m[1], int(m[2]), int(m[3])))
    return chunks


@pytest.mark.parametrize("redirect", [False, True])
def test_chunksums_cover_the_blob_and_verify(fault_registry, redirect):
    reg = fault_registry(redirect=redirect)
    digest = reg.add_blob(SMALL, chunk_size=4096)
    response, body = request(reg.host, f"/v2/{REPO}/chunksums/{digest}")
    assert response.status == 200
    location = response.getheader("Content-Location")
    assert location.startswith(reg.cdn_url + "/cdn/" if redirect else reg.url + blob_path(digest))
    chunks = parse_chunksums(body)
    assert [(start, end) for _, start, end in chunks] == [(0, 4095), (4096, 8191), (8192, 9999)]
    for chunk_digest, start, end in chunks:
        response, data = get(location, headers={"Range": f"bytes={start}-{end}"})
        assert response.status == 206
        assert chunk_digest == "sha256:" + hashlib.sha256(data).hexdigest()


def test_chunksums_404_when_not_enabled(reg):
    assert request(reg.host, f"/v2/{REPO}/chunksums/{reg.digest}")[0].status == 404


def test_redirect_to_cdn_serves_ranges(fault_registry):
    reg = fault_registry(redirect=True)
    digest = reg.add_blob(BLOB)
    response, body = request(reg.host, blob_path(digest), headers={"Range": "bytes=0-0"})
    assert response.status == 307 and body == b""
    location = response.getheader("Location")
    assert re.fullmatch(re.escape(f"{reg.cdn_url}/cdn/{digest}") + r"\?sig=\w+", location)
    response, body = get(location, headers={"Range": "bytes=500-999"})
    assert response.status == 206 and body == BLOB[500:1000]
    assert response.getheader("Content-Range") == f"bytes 500-999/{len(BLOB)}"
    head, _ = request(reg.host, blob_path(digest), method="HEAD")
    assert head.status == 200 and int(head.getheader("Content-Length")) == len(BLOB)
    assert get(f"{reg.cdn_url}/cdn/{digest}?sig=forged")[0].status == 403
    assert reg.bytes_sent(digest, listener="cdn") == 500


@pytest.mark.parametrize("expired_status", [403, 410])
def test_cdn_url_expires_after_uses(fault_registry, expired_status):
    reg = fault_registry(redirect=True, cdn_max_uses=2, cdn_expired_status=expired_status)
    digest = reg.add_blob(BLOB)
    location = request(reg.host, blob_path(digest))[0].getheader("Location")
    assert [get(location)[0].status for _ in range(3)] == [200, 200, expired_status]
    fresh = request(reg.host, blob_path(digest))[0].getheader("Location")
    assert get(fresh)[0].status == 200
    reg.expire_cdn_urls()
    assert get(fresh)[0].status == expired_status


def test_cdn_urls_revoked_after_so_many_requests(fault_registry):
    reg = fault_registry(redirect=True)
    digest = reg.add_blob(BLOB)
    location = request(reg.host, blob_path(digest))[0].getheader("Location")
    reg.expire_cdn_urls(after=2)
    assert reg.cdn_revoked_at is None
    assert [get(location)[0].status for _ in range(3)] == [200, 200, 403]
    assert reg.cdn_revoked_at is not None
    fresh = request(reg.host, blob_path(digest))[0].getheader("Location")
    assert [get(fresh)[0].status for _ in range(3)] == [200, 200, 200], "it struck twice"


# ---------------------------------------------------------------- auth


def test_bearer_challenge_token_and_scope(fault_registry):
    reg = fault_registry(auth="bearer")
    reg.add_model(REPO, "latest", [(OLLAMA_MODEL, SMALL)])
    response, _ = request(reg.host, "/v2/")
    assert response.status == 401
    challenge = response.getheader("WWW-Authenticate")
    assert challenge == f'Bearer realm="{reg.url}/token",service="faultreg"'
    response, body = request(reg.host, f"/v2/{REPO}/manifests/latest")
    assert response.status == 401 and json.loads(body)["errors"][0]["code"] == "UNAUTHORIZED"
    params = challenge_params(response.getheader("WWW-Authenticate"))
    assert params == {"realm": f"{reg.url}/token", "service": "faultreg", "scope": f"repository:{REPO}:pull"}

    grant = fetch_token(reg, params["scope"])
    assert grant["token"] == grant["access_token"] and grant["expires_in"] > 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", grant["issued_at"])
    bearer = {"Authorization": f"Bearer {grant['token']}"}
    assert request(reg.host, f"/v2/{REPO}/manifests/latest", headers=bearer)[0].status == 200
    assert request(reg.host, "/v2/", headers=bearer)[0].status == 200
    other = fetch_token(reg, "repository:library/other:pull")
    response, _ = request(reg.host, f"/v2/{REPO}/manifests/latest", headers={"Authorization": f"Bearer {other['token']}"})
    assert response.status == 401 and 'error="invalid_token"' in response.getheader("WWW-Authenticate")


def test_token_endpoint_requires_credentials(fault_registry):
    reg = fault_registry(auth="bearer", token_credentials=("alice", "s3cret"))
    response, _ = request(reg.host, f"/token?service=faultreg&scope=repository:{REPO}:pull")
    assert response.status == 401 and response.getheader("WWW-Authenticate").startswith("Basic ")
    fetch_token(reg, headers={"Authorization": "Basic YWxpY2U6czNjcmV0"})  # alice:s3cret


def test_token_use_limit_makes_client_refresh_once(fault_registry):
    reg = fault_registry(auth="bearer", token_max_uses=3)
    digest = reg.add_blob(BLOB)
    token, statuses = fetch_token(reg)["token"], []
    for i in range(6):  # a client that refreshes its token once on a 401
        headers = {"Authorization": f"Bearer {token}", "Range": f"bytes={i}-{i}"}
        response, body = request(reg.host, blob_path(digest), headers=headers)
        statuses.append(response.status)
        if response.status == 401:
            token = fetch_token(reg)["token"]
            response, body = request(reg.host, blob_path(digest), headers={**headers, "Authorization": f"Bearer {token}"})
        assert body == BLOB[i : i + 1]
    assert statuses == [206, 206, 206, 401, 206, 206]
    assert reg.count(path_contains="/token") == 2 and reg.count(status=401) == 1


@pytest.mark.timing
def test_token_ttl_and_revocation(fault_registry):
    reg = fault_registry(auth="bearer", token_ttl=0.3)
    digest = reg.add_blob(SMALL)
    grant = fetch_token(reg)
    assert grant["expires_in"] == 1
    bearer = {"Authorization": f"Bearer {grant['token']}"}
    assert request(reg.host, blob_path(digest), headers=bearer)[0].status == 200
    time.sleep(0.4)
    assert request(reg.host, blob_path(digest), headers=bearer)[0].status == 401
    reg.token_ttl = None
    bearer = {"Authorization": f"Bearer {fetch_token(reg)['token']}"}
    assert request(reg.host, blob_path(digest), headers=bearer)[0].status == 200
    reg.expire_tokens()
    assert request(reg.host, blob_path(digest), headers=bearer)[0].status == 401


def test_tokens_revoked_after_so_many_blob_requests(fault_registry):
    reg = fault_registry(auth="bearer")
    digest = reg.add_blob(SMALL)
    bearer = {"Authorization": f"Bearer {fetch_token(reg)['token']}"}
    reg.expire_tokens(after=2)
    assert request(reg.host, f"/v2/{REPO}/manifests/latest", headers=bearer)[0].status in (200, 404)
    statuses = [request(reg.host, blob_path(digest), headers=bearer)[0].status for _ in range(3)]
    assert statuses == [200, 200, 401], "only blob requests count, the revoking one goes through"
    assert reg.tokens_revoked_at is not None
    bearer = {"Authorization": f"Bearer {fetch_token(reg)['token']}"}
    assert request(reg.host, blob_path(digest), headers=bearer)[0].status == 200


def test_basic_auth(fault_registry):
    reg = fault_registry(auth="basic", credentials=("bob", "pw"))
    response, _ = request(reg.host, "/v2/")
    assert response.status == 401 and response.getheader("WWW-Authenticate") == 'Basic realm="faultreg"'
    assert request(reg.host, "/v2/", headers={"Authorization": "Basic Ym9iOm5v"})[0].status == 401  # bob:no
    assert request(reg.host, "/v2/", headers={"Authorization": "Basic Ym9iOnB3"})[0].status == 200  # bob:pw


def test_authorization_never_reaches_cdn_and_is_recorded_if_it_does(fault_registry):
    reg = fault_registry(auth="bearer", redirect=True)
    digest = reg.add_blob(SMALL)
    token = fetch_token(reg)["token"]
    curl = subprocess.run(
        ["curl", "-sS", "-f", "-L", "-H", f"Authorization: Bearer {token}", reg.url + blob_path(digest)],
        capture_output=True,
        timeout=10,
    )
    assert curl.returncode == 0, curl.stderr
    assert curl.stdout == SMALL
    assert reg.count(listener="cdn", status=200) == 1
    assert not reg.cdn_saw_authorization
    location = request(reg.host, blob_path(digest), headers={"Authorization": f"Bearer {token}"})[0].getheader("Location")
    assert get(location, headers={"Authorization": f"Bearer {token}"})[0].status == 200  # CDN ignores it...
    assert reg.cdn_saw_authorization  # ...but the record tells


# ---------------------------------------------------------------- faults


def test_reset_after_exact_byte_count(reg):
    reg.fault("reset", after=65536, digest=reg.digest, times=1)
    status, headers, body, error = raw_get(reg.host, blob_path(reg.digest))
    assert status == 200 and int(headers["content-length"]) == len(BLOB)
    assert isinstance(error, ConnectionResetError)
    assert body == BLOB[:65536]
    assert reg.bytes_sent(reg.digest) == 65536
    [record] = reg.requests()
    assert record.fault == "reset"
    assert raw_get(reg.host, blob_path(reg.digest))[2] == BLOB  # times=1: healthy again


def test_reset_seen_by_curl(reg):
    reg.fault("reset", after=1000)
    curl = subprocess.run(["curl", "-sS", "-o", "/dev/null", reg.url + blob_path(reg.digest)], capture_output=True, timeout=10)
    assert curl.returncode == 56, curl.stderr  # CURLE_RECV_ERROR
    assert b"reset" in curl.stderr.lower()


@pytest.mark.timing
@pytest.mark.parametrize("after", [0, 1000])
def test_stall_then_resume(reg, after):
    name, port = reg.host.split(":")
    reg.fault("stall", seconds=1.0, after=after)
    conn = http.client.HTTPConnection(name, int(port), timeout=5)
    began = time.monotonic()
    conn.request("GET", blob_path(reg.digest), headers={"Range": "bytes=0-9999"})
    response = conn.getresponse()
    head = response.read(after) if after else b""
    early = time.monotonic() - began
    rest = response.read()
    assert early < 0.5
    assert time.monotonic() - began >= 0.9
    assert response.status == 206 and head + rest == BLOB[:10000]
    conn.close()


@pytest.mark.timing
@pytest.mark.parametrize("length", [10000, 9999, 2, 1])
def test_stall_after_a_share_of_each_body(reg, length):
    """fraction=0.5 stalls every response after its first half (rounded up):
    each request, however small, delivers something before it stalls."""
    name, port = reg.host.split(":")
    reg.fault("stall", seconds=1.0, fraction=0.5)
    for start in (0, 5000):
        conn = http.client.HTTPConnection(name, int(port), timeout=5)
        began = time.monotonic()
        conn.request("GET", blob_path(reg.digest),
                     headers={"Range": f"bytes={start}-{start + length - 1}"})
        response = conn.getresponse()
        first = -(-length // 2)
        head = response.read(first)
        early = time.monotonic() - began
        rest = response.read()
        conn.close()
        assert early < 0.5 and head == BLOB[start:start + first]
        assert response.status == 206 and head + rest == BLOB[start:start + length]
        if first < length:
            assert time.monotonic() - began >= 0.9, "the second half came without a stall"
        else:
            assert time.monotonic() - began < 0.5, "a one-byte body was stalled"
    assert reg.count(fault="stall") == 2
    with pytest.raises(ValueError, match="fraction"):
        reg.fault("stall", seconds=1.0, fraction=1.5)


def test_status_fault_limited_by_times(reg):
    reg.fault("status", code=503, times=2)
    statuses = [request(reg.host, blob_path(reg.digest), headers={"Range": "bytes=0-9"})[0].status for _ in range(3)]
    assert statuses == [503, 503, 206]
    assert [r.fault for r in reg.requests()] == ["status", "status", None]


def test_429_carries_retry_after(reg):
    reg.fault("status", code=429, retry_after=2)
    response, body = request(reg.host, blob_path(reg.digest))
    assert response.status == 429 and response.getheader("Retry-After") == "2"
    assert json.loads(body)["errors"][0]["code"] == "TOOMANYREQUESTS"


def test_short_body_then_clean_close(reg):
    reg.fault("short", after=3000)
    status, headers, body, error = raw_get(reg.host, blob_path(reg.digest), ["Range: bytes=0-9999"])
    assert status == 206 and headers["content-length"] == "10000"
    assert error is None and body == BLOB[:3000]
    with pytest.raises(http.client.IncompleteRead):
        request(reg.host, blob_path(reg.digest), headers={"Range": "bytes=0-9999"})
    assert reg.bytes_sent() == 6000


def test_extra_bytes_with_honest_content_length(reg):
    reg.fault("extra", count=10)
    response, body = request(reg.host, blob_path(reg.digest), headers={"Range": "bytes=0-99"})
    assert response.getheader("Content-Range") == f"bytes 0-99/{len(BLOB)}"
    assert int(response.getheader("Content-Length")) == 110
    assert body == BLOB[:100] + b"#" * 10


def test_extra_bytes_beyond_content_length(reg):
    reg.fault("extra", count=10, honest=False)
    status, headers, body, _ = raw_get(reg.host, blob_path(reg.digest), ["Range: bytes=0-99"])
    assert headers["content-length"] == "100"
    assert body == BLOB[:100] + b"#" * 10
    assert reg.bytes_sent() == 110


def test_ignore_range_sends_whole_blob(reg):
    reg.fault("ignore_range")
    response, body = request(reg.host, blob_path(reg.digest), headers={"Range": "bytes=10-19"})
    assert response.status == 200 and response.getheader("Content-Range") is None
    assert body == BLOB


def test_wrong_content_range(reg):
    reg.fault("wrong_range", shift=100)
    response, body = request(reg.host, blob_path(reg.digest), headers={"Range": "bytes=10-19"})
    assert response.status == 206
    assert response.getheader("Content-Range") == f"bytes 110-119/{len(BLOB)}"
    assert body == BLOB[110:120]


def test_corrupt_hits_only_responses_covering_the_offset(fault_registry):
    reg = fault_registry(redirect=True)
    digest = reg.add_blob(BLOB)
    fault = reg.fault("corrupt", offset=5000, length=2)
    location = request(reg.host, blob_path(digest))[0].getheader("Location")
    assert get(location, headers={"Range": "bytes=6000-6999"})[1] == BLOB[6000:7000]
    body = get(location, headers={"Range": "bytes=4000-5999"})[1]
    differing = [i for i in range(len(body)) if body[i] != BLOB[4000 + i]]
    assert differing == [1000, 1001] and body[1000] == BLOB[5000] ^ 0xFF
    assert fault.hits == 1


def test_redirect_loop_to_self_defeats_curl(fault_registry):
    reg = fault_registry()
    digest = reg.add_blob(SMALL)
    reg.fault("redirect_loop")
    curl = subprocess.run(["curl", "-sS", "-L", "--max-redirs", "5", reg.url + blob_path(digest)], capture_output=True, timeout=10)
    assert curl.returncode == 47, curl.stderr  # CURLE_TOO_MANY_REDIRECTS
    assert reg.count(status=307, path_contains=blob_path(digest)) == 6


def test_redirect_loop_between_registry_and_cdn(fault_registry):
    reg = fault_registry(redirect=True)
    digest = reg.add_blob(SMALL)
    reg.fault("redirect_loop", via="cdn")
    url, hosts = reg.url + blob_path(digest), []
    for _ in range(4):
        response, _ = get(url)
        assert response.status == 307
        url = response.getheader("Location")
        hosts.append(split_url(url)[0])
    assert hosts == [reg.cdn_host, reg.host, reg.cdn_host, reg.host]


def test_redirect_to_any_location(fault_registry):
    reg = fault_registry()
    digest = reg.add_blob(SMALL)
    reg.fault("redirect", location="http://[::1")
    response, _ = get(reg.url + blob_path(digest))
    assert response.status == 307 and response.getheader("Location") == "http://[::1"


@pytest.mark.parametrize("on", ["manifest", "token", "blob"])
def test_hang_answers_nothing_until_stop(fault_registry, on):
    reg = fault_registry(auth="bearer" if on == "token" else None)
    reg.add_model(REPO, "latest", [(OLLAMA_MODEL, SMALL)])
    digest = reg.add_blob(BLOB)
    reg.fault("hang", on=on)
    path = {"manifest": f"/v2/{REPO}/manifests/latest", "token": "/token?scope=x",
            "blob": blob_path(digest)}[on]
    with pytest.raises(socket.timeout):
        request(reg.host, path, timeout=1)
    [record] = reg.requests(path_contains=path.split("?")[0])
    assert record.fault == "hang" and record.status is None and record.bytes_sent == 0
    began = time.monotonic()
    reg.stop()
    assert time.monotonic() - began < 2


def test_token_realm_and_authorization_are_recorded(fault_registry):
    reg = fault_registry(auth="bearer", token_credentials=("u", "p"))
    reg.add_model(REPO, "latest", [(OLLAMA_MODEL, SMALL)])
    reg.token_realm = "http://realm.example:1234/token"
    response, _ = request(reg.host, f"/v2/{REPO}/manifests/latest")
    assert challenge_params(response.getheader("WWW-Authenticate"))["realm"] == reg.token_realm
    request(reg.host, "/token?scope=x", headers={"Authorization": "Basic dTpw"})
    assert [r.authorization for r in reg.requests()] == [None, "Basic dTpw"]


@pytest.mark.timing
def test_trickle_limits_rate(reg):
    reg.fault("trickle", rate=100_000)
    began = time.monotonic()
    response, body = request(reg.host, blob_path(reg.digest), headers={"Range": "bytes=0-299999"})
    elapsed = time.monotonic() - began
    assert body == BLOB[:300_000]
    assert 2.5 <= elapsed < 6


def test_fault_filters(fault_registry):
    reg = fault_registry(redirect=True)
    first, second = reg.add_blob(BLOB), reg.add_blob(SMALL)
    reg.fault("status", code=500, start=1000)
    reg.fault("status", code=502, covers=50_000, digest=first)
    reg.fault("status", code=504, listener="cdn", digest=second)
    reg.fault("status", code=503, method="HEAD")
    location = request(reg.host, blob_path(first))[0].getheader("Location")

    def status(range_header, url=location):
        return get(url, headers={"Range": range_header})[0].status

    assert status("bytes=1000-1999") == 500
    assert status("bytes=0-1999") == 206
    assert status("bytes=49000-50000") == 502
    assert status("bytes=50001-60000") == 206
    assert request(reg.host, blob_path(second))[0].status == 307  # registry side untouched
    assert get(request(reg.host, blob_path(second))[0].getheader("Location"))[0].status == 504
    assert request(reg.host, blob_path(first), method="HEAD")[0].status == 503


def test_manifest_faults(reg):
    manifest, _ = reg.add_model(REPO, "latest", [(OLLAMA_MODEL, SMALL)])
    path = f"/v2/{REPO}/manifests/latest"
    reg.fault("status", on="manifest", code=500, times=1)
    reg.fault("bad_json", on="manifest", times=1)
    reg.fault("huge", on="manifest", size=1 << 20, times=1)
    assert request(reg.host, path)[0].status == 500
    response, body = request(reg.host, path)
    assert int(response.getheader("Content-Length")) == len(body) == len(manifest) // 2
    with pytest.raises(json.JSONDecodeError):
        json.loads(body)
    response, body = request(reg.host, path)
    assert len(body) == 1 << 20 and json.loads(body)["schemaVersion"] == 2
    assert request(reg.host, path)[1] == manifest


def test_token_endpoint_fault(fault_registry):
    reg = fault_registry(auth="bearer")
    reg.fault("status", on="token", code=503, times=1)
    assert request(reg.host, f"/token?scope=repository:{REPO}:pull")[0].status == 503
    fetch_token(reg)


@pytest.mark.parametrize(
    "kind, options",
    [
        ("teleport", {}),
        ("reset", {"afterr": 1}),
        ("stall", {}),
        ("corrupt", {"offset": 1, "on": "manifest"}),
        ("bad_json", {}),
        ("reset", {"listener": "edge"}),
    ],
)
def test_fault_validation(reg, kind, options):
    with pytest.raises(ValueError):
        reg.fault(kind, **options)


# ---------------------------------------------------------------- record, lifecycle, CLI


def test_record_and_helpers(fault_registry):
    reg = fault_registry(redirect=True)
    digest = reg.add_blob(BLOB)
    location = request(reg.host, blob_path(digest), headers={"Authorization": "Bearer x"})[0].getheader("Location")
    get(location, headers={"Range": "bytes=0-99"})
    get(location, headers={"Range": "bytes=100-299"})
    registry_hit, *cdn_hits = reg.requests()
    assert (registry_hit.listener, registry_hit.status, registry_hit.had_auth, registry_hit.bytes_sent) == ("registry", 307, True, 0)
    assert [(r.listener, r.method, r.range, r.status, r.bytes_sent, r.fault) for r in cdn_hits] == [
        ("cdn", "GET", "bytes=0-99", 206, 100, None),
        ("cdn", "GET", "bytes=100-299", 206, 200, None),
    ]
    assert reg.bytes_sent(digest) == reg.bytes_sent(listener="cdn") == 300
    assert reg.count(path_contains="/cdn/", status=206) == 2
    assert len(reg.requests(lambda r: r.bytes_sent > 150)) == 1
    assert cdn_hits[0].time <= cdn_hits[1].time
    reg.reset_log()
    assert reg.requests() == [] and reg.bytes_sent() == 0


@pytest.mark.timing
def test_stop_is_prompt_with_stalled_and_idle_connections(fault_registry):
    reg = fault_registry()
    digest = reg.add_blob(BLOB)
    reg.fault("stall", seconds=60, after=100)
    outcome = []

    def stalled_client():
        try:
            request(reg.host, blob_path(digest), timeout=30)
        except (OSError, http.client.HTTPException) as exc:
            outcome.append(exc)

    client = threading.Thread(target=stalled_client)
    client.start()
    name, port = reg.host.split(":")
    idle = http.client.HTTPConnection(name, int(port), timeout=5)
    idle.request("GET", "/v2/")
    assert idle.getresponse().read() == b"{}"  # now idle in keep-alive
    while reg.bytes_sent() < 100:
        time.sleep(0.01)
    began = time.monotonic()
    reg.stop()
    assert time.monotonic() - began < 2
    client.join(5)
    assert not client.is_alive() and outcome
    assert idle.sock.recv(1) == b""  # closed by the server
    idle.close()


def test_cli_serves_an_ollama_store(tmp_path):
    digest = "sha256:" + hashlib.sha256(SMALL).hexdigest()
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / digest.replace(":", "-")).write_bytes(SMALL)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "layers": [{"digest": digest}]}).encode()
    tag_dir = tmp_path / "manifests" / "registry.ollama.ai" / "library" / "tiny"
    tag_dir.mkdir(parents=True)
    (tag_dir / "latest").write_bytes(manifest)
    command = [sys.executable, os.path.join(LIB, "faultreg.py"), "--dir", str(tmp_path), "--chunk-size", "4096"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as proc:
        try:
            lines = [proc.stdout.readline().split() for _ in range(3)]
            assert lines[0] == ["model", "library/tiny:latest"] and lines[1][0] == "registry"
            host = split_url(lines[1][1] + "/")[0]
            assert request(host, "/v2/library/tiny/manifests/latest")[1] == manifest
            assert request(host, blob_path(digest, "library/tiny"))[1] == SMALL
            assert len(parse_chunksums(request(host, f"/v2/library/tiny/chunksums/{digest}")[1])) == 3
        finally:
            proc.terminate()
        assert proc.wait(5) == 0
