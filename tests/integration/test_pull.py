"""Integration tests of `blobfs pull/ls/rm/gc/verify` against real servers on
loopback: Debian's docker-registry (optionally behind an nginx CDN, optionally
rate-capped) and tests/lib/faultreg.py, which misbehaves on purpose.

Every test checks the store afterwards the hard way: each file in blobs/ is
hashed again, manifests are compared byte for byte with what the registry
served, and a failed pull must leave no blob (and no wrong blob) in blobs/.
"""

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

import children
from faultreg import DOCKER_CONFIG, DOCKER_MANIFEST
from models import (
    OLLAMA_MODEL, OLLAMA_PARAMS, OLLAMA_TEMPLATE, make_model, push_model, random_blob,
)
from storefiles import (
    error_lines, files_under, hex_of, partial_files, quarantine_files, range_span, sha256_file,
    wait_for,
)

MiB = 1 << 20
BIG = 64 * MiB
REPO = "library/tiny"
# A 4 MiB layer: blobfs fetches it in 16 ranges of 256 KiB, enough to hit
# faults on a few requests while the others succeed.
LAYER = random.Random(4242).randbytes(4 * MiB)
SMALL_LAYER = random.Random(77).randbytes(1 * MiB)
LIST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.list.v2+json"

_LS_LINE = re.compile(r"^(?P<name>\S+)\s+(?P<size>.+?)\s+(?P<local>\d+)%$")
_VERIFY_LINE = re.compile(r"^sha256:(?P<hex>[0-9a-f]{64})  (?P<status>.+?)  (?P<label>.*)$")


# ---------------------------------------------------------------- helpers


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blob_file(store, digest):
    return Path(store) / "blobs" / ("sha256-" + hex_of(digest))


def blob_files(store):
    """Names of the files in blobs/."""
    blobs = Path(store) / "blobs"
    return sorted(p.name for p in blobs.iterdir()) if blobs.is_dir() else []


def manifest_file(store, host, repo, tag="latest"):
    return Path(store) / "manifests" / host / repo / tag


def assert_blob_ok(store, digest, size=None):
    """blobs/sha256-<hex> exists, has SIZE bytes and hashes to DIGEST."""
    path = blob_file(store, digest)
    assert path.is_file(), f"{path.name} is missing from blobs/ (have {blob_files(store)})"
    if size is not None:
        assert path.stat().st_size == size, f"{path.name} has {path.stat().st_size} bytes, want {size}"
    assert sha256_file(path) == digest, f"{path.name} in blobs/ does not hash to its name"


def assert_all_blobs_verify(store):
    """Every file in blobs/ is named sha256-<hex> and hashes to that hex."""
    for name in blob_files(store):
        assert re.fullmatch(r"sha256-[0-9a-f]{64}", name), f"unexpected file {name} in blobs/"
        assert sha256_file(Path(store) / "blobs" / name) == "sha256:" + name[7:], \
            f"blobs/{name} holds bytes of another digest"


def ls_table(run_blobfs, store, *names):
    """`blobfs ls` parsed into {name: local percent}."""
    result = run_blobfs(["ls", *names], store=store, timeout=20)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines and lines[0].split() == ["NAME", "SIZE", "LOCAL"], result.stdout
    table = {}
    for line in lines[1:]:
        match = _LS_LINE.match(line)
        assert match, f"unparsable ls line {line!r}"
        table[match["name"]] = int(match["local"])
    return table


def verify_lines(stdout):
    """`blobfs verify` output parsed into {hex: status}, plus the summary line."""
    statuses = {}
    lines = stdout.splitlines()
    assert lines, "verify printed nothing"
    for line in lines[:-1]:
        match = _VERIFY_LINE.match(line)
        assert match, f"unparsable verify line {line!r}"
        statuses[match["hex"]] = match["status"]
    assert re.fullmatch(r"\d+ ok, \d+ corrupt, \d+ partial, \d+ not local", lines[-1]), lines[-1]
    return statuses, lines[-1]


def range_start(header):
    """First byte of a 'bytes=a-b' Range header; 0 when absent."""
    if not header:
        return 0
    match = re.fullmatch(r"bytes=(\d+)-(\d*)", header)
    assert match, f"unexpected Range header {header!r}"
    return int(match[1])


def ollama_model(workdir, cache_dir, size=BIG, seed=0, config=None):
    return make_model(
        workdir,
        [(OLLAMA_MODEL, size, seed),
         (OLLAMA_TEMPLATE, b"{{ .System }} {{ .Prompt }}"),
         (OLLAMA_PARAMS, b'{"stop":["</s>"],"temperature":0.7}')],
        config=config,
        cache_dir=cache_dir,
    )


def assert_model_in_store(store, host, repo, tag, model):
    """The model's every blob verified in blobs/, its manifest byte-identical."""
    for blob in model.blobs:
        assert_blob_ok(store, blob.digest, blob.size)
    path = manifest_file(store, host, repo, tag)
    assert path.is_file(), f"no manifest at {path}"
    assert path.read_bytes() == model.manifest_bytes, "stored manifest differs from the pushed one"


@pytest.fixture
def freg(fault_registry):
    """A FaultRegistry serving library/f:latest (config + LAYER); .layer is its digest."""
    reg = fault_registry()
    reg.manifest, (reg.layer,) = reg.add_model("library/f", "latest", [(OLLAMA_MODEL, LAYER)])
    reg.model_name = f"{reg.host}/library/f:latest"
    return reg


def layer_requests(reg, digest, listener=None):
    criteria = {"listener": listener} if listener else {}
    return reg.requests(lambda r: r.digest == digest and "/chunksums/" not in r.path, **criteria)


def assert_pulled_layer(store, reg, digest=None, data=LAYER):
    digest = digest or reg.layer
    assert_blob_ok(store, digest, len(data))
    assert blob_file(store, digest).read_bytes() == data
    assert manifest_file(store, reg.host, "library/f").read_bytes() == reg.manifest


# ---------------------------------------------------------------- 1. docker-registry


@pytest.mark.slow
def test_pull_big_model_from_docker_registry(registry, run_blobfs, store, tmp_path, blob_cache):
    model = ollama_model(tmp_path, blob_cache)
    push_model(registry, REPO, "latest", model)
    name = f"{registry.host}/{REPO}:latest"

    result = run_blobfs(["pull", name], timeout=90)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(
        rf"pulled {re.escape(name)}: 4 blobs, \S+ \S+ \(\S+ \S+ fetched\) in [\d.]+s, \S+ \S+/s\n",
        result.stdout), result.stdout
    assert result.stderr.strip(), "no progress on stderr although it is not a TTY"

    assert_model_in_store(store, registry.host, REPO, "latest", model)
    assert blob_files(store) == sorted("sha256-" + b.hex for b in model.blobs)
    assert partial_files(store) == [], "partial downloads left after a complete pull"
    assert files_under(Path(store) / ".blobfs" / "tmp") == []
    assert ls_table(run_blobfs, store) == {f"{registry.host}/{REPO}:latest": 100}

    verified = run_blobfs(["verify", name], timeout=30)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    statuses, summary = verify_lines(verified.stdout)
    assert statuses == {b.hex: "ok" for b in model.blobs}
    assert summary == "4 ok, 0 corrupt, 0 partial, 0 not local"


# ---------------------------------------------------------------- 2. CDN redirect


@pytest.mark.slow
def test_pull_through_cdn_redirect(cdn_registry, run_blobfs, store, tmp_path, blob_cache):
    reg = cdn_registry
    model = ollama_model(tmp_path, blob_cache)
    push_model(reg, REPO, "latest", model)
    layer = model.layer(OLLAMA_MODEL)
    cdn_mark, reg_mark = reg.cdn_log_mark(), reg.registry_log_mark()

    result = run_blobfs(["pull", f"{reg.host}/{REPO}"], timeout=90)
    assert result.returncode == 0, result.stderr
    assert_model_in_store(store, reg.host, REPO, "latest", model)

    entries = reg.cdn_log_entries(since=cdn_mark)
    layer_uri = reg.cdn_blob_url(layer.digest)[len(reg.cdn_url):]
    layer_entries = [e for e in entries if e["uri"] == layer_uri]
    layer_body = sum(e["body_bytes_sent"] for e in layer_entries)
    assert reg.cdn_bytes_sent(since=cdn_mark) >= sum(b.size for b in model.blobs)
    assert layer.size <= layer_body <= 1.25 * layer.size, \
        f"the CDN sent {layer_body} body bytes for a {layer.size} byte layer"
    assert len(layer_entries) > 1, "the 64 MiB layer came in one request, not in ranges"
    assert all(e["status"] in (200, 206) for e in entries), entries

    blob_gets = [e for e in reg.registry_log_entries(since=reg_mark)
                 if e["method"] == "GET" and "/blobs/" in e["uri"]]
    layer_gets = [e for e in blob_gets if layer.digest in e["uri"]]
    assert all(e["status"] == 307 for e in blob_gets), blob_gets
    assert 1 <= len(layer_gets) <= 2, \
        f"the registry saw {len(layer_gets)} GETs for the layer ({len(layer_entries)} CDN ranges): " \
        "the redirect should be resolved once per blob, not per range"
    assert len(blob_gets) <= 2 * len(model.blobs)
    connections = {e["connection"] for e in layer_entries}
    assert len(connections) > 1, "the layer was fetched over a single connection"


# ---------------------------------------------------------------- 3. kill -9 and resume


@pytest.mark.slow
def test_kill_9_mid_pull_then_pull_resumes(capped_cdn_registry, run_blobfs, store,
                                           tmp_path, blob_cache):
    reg = capped_cdn_registry("2m")
    model = ollama_model(tmp_path, blob_cache)
    push_model(reg, REPO, "latest", model)
    layer = model.layer(OLLAMA_MODEL)
    name = f"{reg.host}/{REPO}"
    maps = lambda: list((Path(store) / ".blobfs" / "partial").glob("*.map"))  # noqa: E731

    def map_mtime():
        try:
            return maps()[0].stat().st_mtime_ns
        except (IndexError, FileNotFoundError):
            return None

    # 4 connections x 2 MiB/s: the 64 MiB layer would take ~8 s. The chunk map
    # appears (nearly empty) at once and is saved again about every second:
    # kill -9 just after the first periodic save.
    proc = run_blobfs.start(["pull", "--connections", "4", name])
    try:
        wait_for(lambda: maps() or proc.poll() is not None, timeout=3)
        first = map_mtime()
        wait_for(lambda: proc.poll() is not None or map_mtime() != first, timeout=3)
        time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)
    if blob_file(store, layer.digest).exists():
        pytest.skip("the layer was complete before kill -9: nothing to resume")
    assert maps(), "no chunk map in .blobfs/partial ~3 s into the pull"
    assert_all_blobs_verify(store)

    # The durable progress is visible to ls and verify.
    [local] = ls_table(run_blobfs, store).values()
    assert 0 < local < 100, f"ls shows {local}% after a kill -9 in the middle"
    verified = run_blobfs(["verify", name], timeout=30)
    statuses, _ = verify_lines(verified.stdout)
    assert re.fullmatch(r"partial \(\d+%\)", statuses[layer.hex]), statuses[layer.hex]
    done_pct = int(re.search(r"\d+", statuses[layer.hex])[0])

    mark = reg.cdn_log_mark()
    result = run_blobfs(["pull", name], timeout=90)
    assert result.returncode == 0, result.stderr
    assert_model_in_store(store, reg.host, REPO, "latest", model)
    assert partial_files(store) == []
    second = reg.cdn_body_bytes_sent(since=mark)
    assert second < layer.size, f"the second pull fetched {second} bytes of a {layer.size} byte layer"
    # Chunks the map recorded are not fetched again (2% slack for rounding).
    assert second <= layer.size * (100 - done_pct + 2) / 100, \
        f"{done_pct}% was durable, yet the second pull fetched {second} of {layer.size} bytes"


# ---------------------------------------------------------------- 4. concurrent pulls


@pytest.mark.slow
def test_two_concurrent_pulls_share_one_download(capped_cdn_registry, run_blobfs, store,
                                                  tmp_path, blob_cache):
    reg = capped_cdn_registry("2m")
    model = ollama_model(tmp_path, blob_cache)
    push_model(reg, REPO, "latest", model)
    layer = model.layer(OLLAMA_MODEL)
    name = f"{reg.host}/{REPO}"
    mark = reg.cdn_log_mark()

    procs = [run_blobfs.start(["pull", name]) for _ in range(2)]
    results = [children.finish(proc, timeout=90) for proc in procs]
    for result in results:
        assert result.returncode == 0, result.stderr
        assert f"pulled {reg.host}/{REPO}:latest: 4 blobs" in result.stdout
    assert_model_in_store(store, reg.host, REPO, "latest", model)
    assert_all_blobs_verify(store)
    assert partial_files(store) == []
    layer_uri = reg.cdn_blob_url(layer.digest)[len(reg.cdn_url):]
    layer_body = sum(e["body_bytes_sent"] for e in reg.cdn_log_entries(since=mark)
                     if e["uri"] == layer_uri)
    assert layer_body < 1.5 * layer.size, \
        f"two pulls made the CDN send {layer_body} bytes of a {layer.size} byte layer"
    assert reg.cdn_bytes_sent(since=mark) < 1.5 * sum(b.size for b in model.blobs)


# ---------------------------------------------------------------- 5. rm


def test_rm_frees_only_unshared_blobs(registry, run_blobfs, store, tmp_path, blob_cache):
    config = b'{"model_format":"gguf","model_family":"llama","architecture":"amd64","os":"linux"}'
    one = ollama_model(tmp_path / "one", blob_cache, size=MiB, seed=11, config=config)
    two = ollama_model(tmp_path / "two", blob_cache, size=2 * MiB, seed=12, config=config)
    assert one.config.digest == two.config.digest
    push_model(registry, "library/alpha", "one", one)
    push_model(registry, "library/alpha", "two", two)
    push_model(registry, "library/beta", "latest", one)
    names = [f"{registry.host}/library/alpha:one", f"{registry.host}/library/alpha:two",
             f"{registry.host}/library/beta:latest"]
    result = run_blobfs(["pull", *names], timeout=60)
    assert result.returncode == 0, result.stderr
    assert len(blob_files(store)) == 5  # config, template, params, two model layers
    unique_one = one.layer(OLLAMA_MODEL)

    # alpha:one shares everything with beta:latest: nothing is freed.
    result = run_blobfs(["rm", names[0]], timeout=20)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(rf"removed {re.escape(names[0])} \(0 blobs, 0 B freed\)\n", result.stdout), \
        result.stdout
    assert not manifest_file(store, registry.host, "library/alpha", "one").exists()
    assert manifest_file(store, registry.host, "library/alpha", "two").exists()
    assert len(blob_files(store)) == 5

    # beta:latest was the last user of the 1 MiB layer.
    result = run_blobfs(["rm", names[2]], timeout=20)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(rf"removed {re.escape(names[2])} \(1 blobs, \S+ \S+ freed\)\n", result.stdout), \
        result.stdout
    assert not blob_file(store, unique_one.digest).exists()
    for blob in two.blobs:
        assert_blob_ok(store, blob.digest, blob.size)
    assert not (Path(store) / "manifests" / registry.host / "library" / "beta").exists(), \
        "the empty manifests/<host>/library/beta directory was not pruned"
    assert ls_table(run_blobfs, store) == {f"{registry.host}/library/alpha:two": 100}
    verified = run_blobfs(["verify", names[1]], timeout=20)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verify_lines(verified.stdout)[0] == {b.hex: "ok" for b in two.blobs}

    # The last tag: every blob goes, and the manifests tree is pruned to its root.
    result = run_blobfs(["rm", names[1]], timeout=20)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(rf"removed {re.escape(names[1])} \(4 blobs, \S+ \S+ freed\)\n", result.stdout), \
        result.stdout
    assert blob_files(store) == []
    assert not (Path(store) / "manifests" / registry.host).exists(), \
        f"empty directories left under manifests/: {list((Path(store) / 'manifests').rglob('*'))}"

    absent = run_blobfs(["rm", names[1]], timeout=20)
    assert absent.returncode != 0
    assert re.search(r"no model '[^']*alpha:two' in the store", error_lines(absent.stderr)), absent.stderr


# ---------------------------------------------------------------- 6. verify


def test_verify_quarantines_corrupt_blob_and_pull_repairs_it(freg, run_blobfs, store):
    result = run_blobfs(["pull", freg.model_name], timeout=30)
    assert result.returncode == 0, result.stderr
    path = blob_file(store, freg.layer)
    with open(path, "r+b") as f:
        f.seek(123_456)
        byte = f.read(1)
        f.seek(123_456)
        f.write(bytes([byte[0] ^ 0x01]))

    verified = run_blobfs(["verify", freg.model_name], timeout=30)
    assert verified.returncode == 1, verified.stdout + verified.stderr
    statuses, summary = verify_lines(verified.stdout)
    assert statuses[hex_of(freg.layer)].startswith("CORRUPT ("), statuses
    assert [s for h, s in statuses.items() if h != hex_of(freg.layer)] == ["ok"]
    assert summary == "1 ok, 1 corrupt, 0 partial, 0 not local"
    assert not path.exists(), "the corrupt blob is still in blobs/"
    assert any(hex_of(freg.layer) in name for name in quarantine_files(store)), quarantine_files(store)
    assert ls_table(run_blobfs, store)[f"{freg.host}/library/f:latest"] < 100

    freg.reset_log()
    result = run_blobfs(["pull", freg.model_name], timeout=30)
    assert result.returncode == 0, result.stderr
    assert_pulled_layer(store, freg)
    assert freg.bytes_sent(freg.layer) >= len(LAYER), "the layer was not fetched again"
    verified = run_blobfs(["verify"], timeout=30)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert set(verify_lines(verified.stdout)[0].values()) == {"ok"}


# ---------------------------------------------------------------- 7. refusals


@pytest.mark.parametrize("name, part", [
    ("..", "name"),
    ("a/b/c/d", "parts?"),
    ("bad name", "name"),
    ("x" * 81, "name"),
    ("../../../../tmp/escape", "parts?"),
    ("library/..:latest", "name"),
    ("ok:../../x", "namespace"),
    ("library/x:bad/tag", "namespace"),
    ("library/x:-tag", "tag"),
    ("http://evil\x01host/library/x", "host"),
])
def test_invalid_names_are_refused(run_blobfs, tmp_path, name, part):
    store = tmp_path / "store"
    work = tmp_path / "cwd"
    work.mkdir()
    for command in (["pull", name], ["rm", name], ["verify", name], ["ls", name]):
        result = run_blobfs(command, store=store, cwd=work, timeout=10)
        assert result.returncode != 0, f"{command}: {result.stdout}"
        message = error_lines(result.stderr)
        assert "invalid model name" in message, message
        reason = message.split("': ", 1)[-1]  # after the quoted input
        assert re.search(rf"\b{part}\b", reason), f"the reason does not name the {part}: {message}"
    assert files_under(store / "manifests") == [] and files_under(store / "blobs") == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "store"]
    assert list(work.iterdir()) == []


def _descriptor(digest, size, media_type=OLLAMA_MODEL, **extra):
    return {"mediaType": media_type, "digest": digest, "size": size, **extra}


def _bad_manifests(reg):
    """name -> (body bytes, media type, pattern its error must match)."""
    config = reg.add_blob(b'{"model_format":"gguf"}')
    layer = reg.add_blob(SMALL_LAYER)
    cfg = _descriptor(config, 23, DOCKER_CONFIG)

    def manifest(layers, **top):
        return json.dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
                           "config": cfg, "layers": layers, **top}).encode()

    good_child = manifest([_descriptor(layer, len(SMALL_LAYER))])
    child_digest = reg.add_manifest("library/child", "latest", good_child)
    return {
        "list": (json.dumps({
            "schemaVersion": 2, "mediaType": LIST_MEDIA_TYPE,
            "manifests": [{"mediaType": DOCKER_MANIFEST, "digest": child_digest, "size": len(good_child),
                           "platform": {"architecture": "amd64", "os": "linux"}}],
        }).encode(), LIST_MEDIA_TYPE, r"manifest list|index"),
        "negative": (manifest([_descriptor(layer, -1)]), DOCKER_MANIFEST, r"negative|size"),
        "evil": (manifest([_descriptor(layer, len(SMALL_LAYER), name="../evil")]), DOCKER_MANIFEST,
                 r"unsafe name|\.\./evil"),
        "digest": (manifest([_descriptor("sha256:" + "Z" * 64, 10)]), DOCKER_MANIFEST, r"digest"),
        "md5": (manifest([_descriptor("md5:" + "0" * 32, 10)]), DOCKER_MANIFEST, r"digest"),
        "notjson": (b"<html>this is not a manifest</html>", DOCKER_MANIFEST, r"JSON"),
        "truncated": (manifest([_descriptor(layer, len(SMALL_LAYER))])[:-10], DOCKER_MANIFEST, r"JSON"),
    }


@pytest.mark.parametrize("kind", ["list", "negative", "evil", "digest", "md5", "notjson", "truncated"])
def test_bad_manifest_is_refused(fault_registry, run_blobfs, tmp_path, kind):
    reg = fault_registry()
    body, media_type, pattern = _bad_manifests(reg)[kind]
    reg.add_manifest("library/bad", "latest", body, media_type)
    store = tmp_path / "store"

    result = run_blobfs(["pull", f"{reg.host}/library/bad"], store=store, timeout=20)
    assert result.returncode != 0, result.stdout
    message = error_lines(result.stderr)
    assert "library/bad" in message and re.search(pattern, message), message
    assert files_under(store / "manifests") == [], "a refused manifest was stored"
    assert blob_files(store) == []
    assert reg.count(lambda r: "/blobs/" in r.path) == 0, "blobs were fetched for a refused manifest"
    assert not any("evil" in str(p) for p in tmp_path.rglob("*"))


# ---------------------------------------------------------------- 8. faults


def test_reset_mid_body_is_retried(freg, run_blobfs, store):
    fault = freg.fault("reset", after=100_000, digest=freg.layer, times=3)
    result = run_blobfs(["pull", freg.model_name], timeout=30)
    assert result.returncode == 0, result.stderr
    assert_pulled_layer(store, freg)
    assert fault.hits == 3
    reset = freg.requests(fault="reset")
    assert len(reset) == 3 and all(r.bytes_sent == 100_000 for r in reset)
    healthy = [r for r in layer_requests(freg, freg.layer) if r.fault is None]
    # Each reset range was asked for again and then answered completely.
    for r in reset:
        start = range_start(r.range)
        assert any(range_span(h.range, len(LAYER))[0] <= start + 100_000 < range_span(h.range, len(LAYER))[1]
                   and h.time > r.time for h in healthy), f"the range of {r.range} was never retried"


def test_503_then_success(freg, run_blobfs, store):
    freg.fault("status", code=503, digest=freg.layer, times=2)
    result = run_blobfs(["pull", freg.model_name], timeout=30)
    assert result.returncode == 0, result.stderr
    assert_pulled_layer(store, freg)
    assert freg.count(status=503) == 2


@pytest.mark.timing
def test_429_retry_after_is_honoured(freg, run_blobfs, store):
    freg.fault("status", code=429, retry_after=1, digest=freg.layer, times=1)
    result = run_blobfs(["pull", freg.model_name], timeout=30)
    assert result.returncode == 0, result.stderr
    assert_pulled_layer(store, freg)
    [limited] = freg.requests(status=429)
    start = range_start(limited.range)
    retries = [r for r in layer_requests(freg, freg.layer)
               if r.time > limited.time and r.status in (200, 206)
               and range_span(r.range, len(LAYER))[0] <= start < range_span(r.range, len(LAYER))[1]]
    assert retries, f"the range {limited.range} answered 429 was never fetched again"
    waited = retries[0].time - limited.time
    assert waited >= 0.9, f"retried {waited:.2f}s after a 429 with Retry-After: 1"


@pytest.mark.timing
def test_stalled_response_is_retried_after_stall_timeout(freg, run_blobfs, store):
    freg.fault("stall", seconds=30, after=1000, digest=freg.layer, times=1)
    began = time.monotonic()
    result = run_blobfs(["pull", "--stall-timeout", "2", freg.model_name], timeout=25)
    took = time.monotonic() - began
    assert result.returncode == 0, result.stderr
    assert_pulled_layer(store, freg)
    assert took < 15, f"a 2 s stall timeout still took {took:.1f}s"
    assert freg.count(fault="stall") == 1


def test_server_ignoring_range_still_gives_right_bytes(freg, run_blobfs, store):
    freg.fault("ignore_range", digest=freg.layer)  # every time: 200 with the whole blob
    result = run_blobfs(["pull", freg.model_name], timeout=30)
    assert result.returncode == 0, result.stderr
    assert_pulled_layer(store, freg)
    assert freg.count(fault="ignore_range") >= 1


def test_wrong_content_range_is_not_written(freg, run_blobfs, store):
    freg.fault("wrong_range", shift=4096, digest=freg.layer, times=2)
    result = run_blobfs(["pull", freg.model_name], timeout=30)
    assert result.returncode == 0, result.stderr
    assert_pulled_layer(store, freg)
    assert freg.count(fault="wrong_range") == 2
    assert quarantine_files(store) == [], "a wrong range was written and caught only by the final hash"


def test_always_corrupt_blob_fails_and_is_quarantined(freg, run_blobfs, store):
    freg.fault("corrupt", offset=1_000_000, digest=freg.layer)
    result = run_blobfs(["pull", "--retries", "2", freg.model_name], timeout=60)
    assert result.returncode == 1, result.stdout
    assert hex_of(freg.layer) in error_lines(result.stderr)
    assert not blob_file(store, freg.layer).exists(), "a corrupt blob reached blobs/"
    assert_all_blobs_verify(store)
    assert any(hex_of(freg.layer) in name for name in quarantine_files(store)), quarantine_files(store)
    assert "pulled" not in result.stdout


def test_server_down_fails_promptly(fault_registry, run_blobfs, store):
    reg = fault_registry()
    host = reg.host
    reg.stop()
    began = time.monotonic()
    result = run_blobfs(["pull", "--retries", "2", f"{host}/library/f"], timeout=30)
    assert time.monotonic() - began < 20
    assert result.returncode == 1
    message = error_lines(result.stderr)
    assert host in message, message
    assert files_under(Path(store) / "manifests") == [] and blob_files(store) == []


def test_blob_always_500_fails_promptly(freg, run_blobfs, store):
    freg.fault("status", code=500, digest=freg.layer)
    began = time.monotonic()
    result = run_blobfs(["pull", "--retries", "2", freg.model_name], timeout=30)
    assert time.monotonic() - began < 20
    assert result.returncode == 1
    assert hex_of(freg.layer) in error_lines(result.stderr)
    assert not blob_file(store, freg.layer).exists()
    assert_all_blobs_verify(store)
    # --retries 2: at most two attempts at each range.
    ranges = {}
    for r in layer_requests(freg, freg.layer):
        ranges[r.range] = ranges.get(r.range, 0) + 1
    assert ranges and max(ranges.values()) <= 2, ranges


def test_bearer_auth(fault_registry, run_blobfs, store):
    reg = fault_registry(auth="bearer")
    reg.manifest, (reg.layer,) = reg.add_model("library/f", "latest", [(OLLAMA_MODEL, LAYER)])
    result = run_blobfs(["pull", f"{reg.host}/library/f"], timeout=30)
    assert result.returncode == 0, result.stderr
    assert_pulled_layer(store, reg)
    tokens = reg.count(path_contains="/token")
    assert 1 <= tokens <= 3, f"the token endpoint was asked {tokens} times for one pull"
    assert reg.count(status=401) <= 3


@pytest.mark.timing
def test_bearer_token_expiring_during_slow_transfer_is_refreshed(fault_registry, run_blobfs, store):
    reg = fault_registry(auth="bearer", token_ttl=1)
    reg.manifest, (reg.layer,) = reg.add_model("library/f", "latest", [(OLLAMA_MODEL, SMALL_LAYER)])
    reg.fault("trickle", rate=200_000, digest=reg.layer)
    # 2 connections, 64 KiB requests at 200 kB/s: ~3 s in all, the token lasts 1 s.
    proc = run_blobfs.start(["pull", "--connections", "2", "--request-size", "64K",
                             f"{reg.host}/library/f"])
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=5)
    if proc.returncode == -signal.SIGKILL:
        pytest.fail(f"pull with 1 s bearer tokens did not finish in 20 s; the token endpoint was "
                    f"asked {reg.count(path_contains='/token')} times, {len(layer_requests(reg, reg.layer))} "
                    f"blob requests were made\nstderr tail:\n{err[-600:]}")
    assert proc.returncode == 0, err
    assert_pulled_layer(store, reg, data=SMALL_LAYER)
    tokens = reg.count(path_contains="/token")
    assert tokens >= 2, "the token outlived its 1 s lifetime?"
    assert tokens <= 20, f"{tokens} token requests for a ~3 s transfer"


def test_bearer_token_revoked_mid_transfer_is_refreshed(fault_registry, run_blobfs, store):
    reg = fault_registry(auth="bearer")
    reg.manifest, (reg.layer,) = reg.add_model("library/f", "latest", [(OLLAMA_MODEL, LAYER)])
    # 64 ranges of 64 KiB, 4 at a time, each at 1 MB/s: new requests start for ~1 s.
    reg.fault("trickle", rate=1_000_000, digest=reg.layer)
    proc = run_blobfs.start(["pull", "--connections", "4", "--request-size", "64K",
                             f"{reg.host}/library/f"])
    try:
        assert wait_for(lambda: layer_requests(reg, reg.layer) or proc.poll() is not None, timeout=10)
        reg.expire_tokens()
        revoked_at = time.monotonic()
    finally:
        result = children.finish(proc, timeout=30)
    assert result.returncode == 0, result.stderr
    assert_pulled_layer(store, reg)
    # (a 401 is answered before the route is parsed, so its record has no digest)
    refused = [r for r in reg.requests(status=401, path_contains=f"/blobs/{reg.layer}")
               if r.time >= revoked_at]
    assert refused, "no blob request met the revoked token: the test proves nothing"
    tokens = reg.count(path_contains="/token")
    assert 2 <= tokens <= 6, f"{tokens} token requests for one revocation"
    assert not reg.cdn_saw_authorization


def test_basic_auth_with_credentials_file(fault_registry, run_blobfs, store, tmp_path):
    reg = fault_registry(auth="basic", credentials=("u", "p"))
    reg.manifest, (reg.layer,) = reg.add_model("library/f", "latest", [(OLLAMA_MODEL, LAYER)])
    name = f"{reg.host}/library/f"
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home)}

    refused = run_blobfs(["pull", "--no-netrc", name], timeout=20, env=env)
    assert refused.returncode == 1
    assert re.search(r"login|credential", error_lines(refused.stderr), re.I), refused.stderr
    assert blob_files(store) == [] and files_under(Path(store) / "manifests") == []

    netrc = tmp_path / "creds"
    netrc.write_text("machine 127.0.0.1 login u password p\n")
    netrc.chmod(0o600)
    result = run_blobfs(["pull", "--credentials", netrc, name], timeout=30, env=env)
    assert result.returncode == 0, result.stderr
    assert_pulled_layer(store, reg)

    wrong = tmp_path / "wrong"
    wrong.write_text("machine 127.0.0.1 login u password nope\n")
    wrong.chmod(0o600)
    result = run_blobfs(["pull", "--credentials", wrong, f"{reg.host}/library/f"],
                        store=tmp_path / "other", timeout=20, env=env)
    assert result.returncode == 1
    assert re.search(r"login|credential|password|denied|unauthori", error_lines(result.stderr), re.I)


def test_expiring_cdn_urls_are_resolved_again(fault_registry, run_blobfs, store):
    """Presigned CDN URLs good for 3 uses: every expiry costs one more redirect."""
    reg = fault_registry(redirect=True, cdn_max_uses=3)
    reg.manifest, (reg.layer,) = reg.add_model("library/f", "latest", [(OLLAMA_MODEL, LAYER)])
    result = run_blobfs(["--request-size", "256K", "pull", f"{reg.host}/library/f"], timeout=30)
    assert result.returncode == 0, result.stderr
    assert_pulled_layer(store, reg)
    assert reg.count(listener="cdn", status=403) >= 1, "no CDN URL expired: the test proves nothing"
    resolves = len(layer_requests(reg, reg.layer, listener="registry"))
    served = len([r for r in layer_requests(reg, reg.layer, listener="cdn") if r.status == 206])
    assert served >= 16, f"only {served} CDN ranges for 4 MiB asked for in 256K requests"
    assert resolves >= -(-served // 3), \
        f"{served} CDN ranges with 3 uses per URL, yet {resolves} redirects"
    assert reg.bytes_sent(reg.layer) < 1.5 * len(LAYER)


def test_cdn_url_expiring_mid_download_is_resolved_again(fault_registry, run_blobfs, store):
    """The presigned URL expires once, part way through a 64-range download on 16
    connections (as a time-limited URL does): requests already sent with it get 403,
    one new redirect fixes all of them."""
    reg = fault_registry(redirect=True)
    reg.manifest, (reg.layer,) = reg.add_model("library/f", "latest", [(OLLAMA_MODEL, LAYER)])
    reg.fault("trickle", rate=500_000, digest=reg.layer, listener="cdn")
    proc = run_blobfs.start(["pull", "--request-size", "64K", f"{reg.host}/library/f"])
    try:
        assert wait_for(lambda: reg.count(listener="cdn", status=206) >= 20 or proc.poll() is not None,
                        timeout=15)
        reg.expire_cdn_urls()
    finally:
        result = children.finish(proc, timeout=40)
    expired = reg.count(listener="cdn", status=403)
    assert result.returncode == 0, f"{expired} requests met the expired URL; stderr:\n{result.stderr}"
    assert expired >= 1, "no request met the expired URL: the test proves nothing"
    assert_pulled_layer(store, reg)


def test_redirect_loop_fails_clearly(fault_registry, run_blobfs, store):
    reg = fault_registry(redirect=True)
    reg.manifest, (reg.layer,) = reg.add_model("library/f", "latest", [(OLLAMA_MODEL, LAYER)])
    reg.fault("redirect_loop", via="cdn", digest=reg.layer)
    began = time.monotonic()
    result = run_blobfs(["pull", "--retries", "2", f"{reg.host}/library/f"], timeout=30)
    assert time.monotonic() - began < 20
    assert result.returncode == 1
    assert re.search(r"redirect", error_lines(result.stderr), re.I), result.stderr
    assert not blob_file(store, reg.layer).exists()
    assert reg.count(status=307) < 500


CHUNK = 4 * MiB


@pytest.fixture
def chunked_reg(fault_registry, blob_cache):
    """A FaultRegistry serving a 64 MiB layer with chunksums (4 MiB chunks);
    blobfs asks for chunksums only for blobs of 64 MiB and more."""
    path, _ = random_blob(blob_cache, BIG, seed=0)
    reg = fault_registry()
    reg.manifest, (reg.layer,) = reg.add_model("library/f", "latest", [(OLLAMA_MODEL, path)],
                                               chunk_size=CHUNK)
    reg.layer_path = path
    return reg


@pytest.mark.slow
def test_chunksums_are_used(chunked_reg, run_blobfs, store):
    reg = chunked_reg
    result = run_blobfs(["pull", f"{reg.host}/library/f"], timeout=60)
    assert result.returncode == 0, result.stderr
    assert_pulled_layer(store, reg, data=reg.layer_path.read_bytes())
    assert reg.count(path_contains=f"/chunksums/{reg.layer}", status=200) == 1


@pytest.mark.slow
def test_no_chunksums_option(chunked_reg, run_blobfs, store):
    reg = chunked_reg
    result = run_blobfs(["pull", "--no-chunksums", f"{reg.host}/library/f"], timeout=60)
    assert result.returncode == 0, result.stderr
    assert_blob_ok(store, reg.layer, BIG)
    assert reg.count(path_contains="/chunksums/") == 0


@pytest.mark.slow
def test_chunksums_catch_a_corrupt_chunk_and_refetch_only_it(chunked_reg, run_blobfs, store):
    reg = chunked_reg
    offset = 5 * CHUNK + 1234
    fault = reg.fault("corrupt", offset=offset, digest=reg.layer, times=1)
    result = run_blobfs(["pull", f"{reg.host}/library/f"], timeout=60)
    assert result.returncode == 0, result.stderr
    assert_blob_ok(store, reg.layer, BIG)
    assert fault.hits == 1
    [bad] = reg.requests(fault="corrupt")
    again = [r for r in layer_requests(reg, reg.layer) if r.time > bad.time and r.status in (200, 206)
             and range_span(r.range, BIG)[0] <= offset < range_span(r.range, BIG)[1]]
    assert again, "the corrupt chunk was never fetched again"
    sent = reg.bytes_sent(reg.layer)
    assert sent <= BIG + 2 * CHUNK, \
        f"{sent} bytes sent for a {BIG} byte layer: more than the bad chunk was fetched again"
    assert quarantine_files(store) == [], "a chunk the chunksums caught still spoiled the whole blob"


# ---------------------------------------------------------------- interrupt, gc


@pytest.mark.timing
@pytest.mark.parametrize("sig,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_a_signal_ends_a_pull_promptly_and_pull_resumes(freg, run_blobfs, store, sig,
                                                        status):
    freg.fault("trickle", rate=1_000_000, digest=freg.layer)  # with 1 connection: ~4 s
    proc = run_blobfs.start(["pull", "--connections", "1", freg.model_name])
    partial = Path(store) / ".blobfs" / "partial"
    try:
        assert wait_for(lambda: list(partial.glob("*.map")) or proc.poll() is not None, timeout=5)
        time.sleep(0.2)
        proc.send_signal(sig)
        signalled = time.monotonic()
    finally:
        result = children.finish(proc, timeout=15)
    assert time.monotonic() - signalled < 3, "the pull did not end promptly"
    assert result.returncode == status, result.stderr
    assert "interrupted" in result.stderr
    assert not blob_file(store, freg.layer).exists()
    [local] = ls_table(run_blobfs, store).values()
    assert local > 0, "an interrupted pull left no durable progress"

    freg.clear_faults()
    freg.reset_log()
    result = run_blobfs(["pull", freg.model_name], timeout=30)
    assert result.returncode == 0, result.stderr
    assert_pulled_layer(store, freg)
    assert freg.bytes_sent(freg.layer) <= len(LAYER) * (100 - local + 2) / 100


def test_gc_removes_unreferenced_blobs_and_stale_partials(fault_registry, run_blobfs,
                                                          store):
    reg = fault_registry()
    keep, (keep_layer,) = reg.add_model("library/keep", "latest", [(OLLAMA_MODEL, SMALL_LAYER)])
    _, (gone_layer,) = reg.add_model("library/gone", "latest", [(OLLAMA_MODEL, LAYER)])
    result = run_blobfs(["pull", f"{reg.host}/library/keep"], timeout=30)
    assert result.returncode == 0, result.stderr

    # An interrupted pull of library/gone leaves a partial download...
    reg.fault("stall", seconds=60, after=65536, digest=gone_layer)
    proc = run_blobfs.start(["pull", f"{reg.host}/library/gone"])
    partial = Path(store) / ".blobfs" / "partial"
    try:
        wait_for(lambda: list(partial.glob(f"*{hex_of(gone_layer)}.map")) or proc.poll() is not None,
                 timeout=5)
        proc.send_signal(signal.SIGINT)
    finally:
        children.finish(proc, timeout=15)
    assert any(hex_of(gone_layer) in name for name in partial_files(store)), partial_files(store)
    # ...then its manifest goes (as another tool sharing the store would remove it),
    manifest_file(store, reg.host, "library/gone").unlink()
    # ...and a stray complete blob nothing references.
    stray = b"nothing references me"
    blob_file(store, sha256(stray)).write_bytes(stray)

    result = run_blobfs(["gc"], timeout=20)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"removed 1 unreferenced blobs and 1 partial downloads, \S+ \S+ freed\n",
                        result.stdout), result.stdout
    assert not blob_file(store, sha256(stray)).exists()
    assert not any(hex_of(gone_layer) in name for name in partial_files(store)), partial_files(store)
    assert_blob_ok(store, keep_layer, len(SMALL_LAYER))
    assert len(blob_files(store)) == 2  # library/keep: config and layer
    assert manifest_file(store, reg.host, "library/keep").read_bytes() == keep
    verified = run_blobfs(["verify", f"{reg.host}/library/keep"], timeout=20)
    assert verified.returncode == 0, verified.stdout


# ---------------------------------------------------------------- 9. lazy


def test_lazy_pull_stores_the_manifest_only(freg, run_blobfs, store):
    result = run_blobfs(["pull", "--lazy", freg.model_name], timeout=30)
    assert result.returncode == 0, result.stderr
    assert manifest_file(store, freg.host, "library/f").read_bytes() == freg.manifest
    assert not blob_file(store, freg.layer).exists()
    assert layer_requests(freg, freg.layer) == [], "a lazy pull fetched the model layer"
    config_size = json.loads(freg.manifest)["config"]["size"]
    total = config_size + len(LAYER)
    local = ls_table(run_blobfs, store)[f"{freg.host}/library/f:latest"]
    assert local <= config_size * 100 // total, f"ls shows {local}% after a lazy pull"
    assert set(blob_files(store)) <= {"sha256-" + hex_of(json.loads(freg.manifest)["config"]["digest"])}

    # A full pull afterwards completes it.
    result = run_blobfs(["pull", freg.model_name], timeout=30)
    assert result.returncode == 0, result.stderr
    assert_pulled_layer(store, freg)
    assert ls_table(run_blobfs, store)[f"{freg.host}/library/f:latest"] == 100


# ---------------------------------------------------------------- 10. Ollama store


def test_ollama_store_is_read_without_network(run_blobfs, store):
    """A store laid out by Ollama itself (no .blobfs/) is listed and verified offline."""
    layer = SMALL_LAYER
    template = b"{{ .Prompt }}"
    config = b'{"model_format":"gguf","model_family":"llama","architecture":"amd64","os":"linux"}'
    blobs = Path(store) / "blobs"
    blobs.mkdir()
    for data in (layer, template, config):
        (blobs / ("sha256-" + hashlib.sha256(data).hexdigest())).write_bytes(data)
    # Ollama's own leftovers of an unfinished download sit in blobs/ too.
    (blobs / ("sha256-" + "e" * 64 + "-partial")).write_bytes(b"x" * 100)
    (blobs / ("sha256-" + "e" * 64 + "-partial-0")).write_bytes(b'{"Offset":0}')
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
        "config": _descriptor(sha256(config), len(config), DOCKER_CONFIG),
        "layers": [_descriptor(sha256(layer), len(layer)),
                   _descriptor(sha256(template), len(template), OLLAMA_TEMPLATE)],
    }).encode()
    path = Path(store) / "manifests" / "registry.ollama.ai" / "library" / "x" / "latest"
    path.parent.mkdir(parents=True)
    path.write_bytes(manifest)
    before = {p: p.read_bytes() for p in Path(store).rglob("*") if p.is_file()}

    # A proxy that does not exist: any network access would fail.
    offline = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
               "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    assert ls_table(run_blobfs, store) == {"x:latest": 100}
    result = run_blobfs(["ls", "x"], timeout=10, env=offline)
    assert result.returncode == 0 and "x:latest" in result.stdout, result.stdout + result.stderr
    verified = run_blobfs(["verify", "x"], timeout=20, env=offline)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    statuses, summary = verify_lines(verified.stdout)
    assert statuses == {hex_of(sha256(d)): "ok" for d in (layer, template, config)}
    assert summary == "3 ok, 0 corrupt, 0 partial, 0 not local"
    assert all(p.read_bytes() == data for p, data in before.items()), "verify changed Ollama's files"

    # A blob Ollama has not got yet shows as missing, and does not fail verify.
    (blobs / ("sha256-" + hashlib.sha256(template).hexdigest())).unlink()
    verified = run_blobfs(["verify", "registry.ollama.ai/library/x:latest"], timeout=20, env=offline)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verify_lines(verified.stdout)[0][hex_of(sha256(template))] == "not local"
    assert ls_table(run_blobfs, store)["x:latest"] == 99


# ---------------------------------------------------------------- slow peers


@pytest.mark.timing
def test_a_range_far_slower_than_its_peers_is_restarted(fault_registry, run_blobfs, store,
                                                       blob_cache):
    """One range trickles at 30 KB/s while the rest of the blob arrives at
    loopback speed: blobfs restarts that range on a new connection instead of
    waiting out the trickle. Ranges shrink toward the end of a blob, and the
    trickled one is 1-2 MiB: it must stay more than SLOW_MIN_LEFT (1 MiB) from
    done for the 3-4 s a loaded machine takes to call it slow. At 100 KB/s it
    once got there first, under the full suite with ASan, and was never
    restarted."""
    reg = fault_registry()
    path, _ = random_blob(blob_cache, 64 << 20, seed=7)
    data = path.read_bytes()
    manifest, (digest,) = reg.add_model("library/f", "latest", [(OLLAMA_MODEL, data)])
    slow_at = 40 << 20
    fault = reg.fault("trickle", rate=30_000, digest=digest, covers=slow_at, times=1)
    t0 = time.monotonic()
    result = run_blobfs(["--request-size", "8M", "pull", f"{reg.host}/library/f:latest"],
                        timeout=60)
    took = time.monotonic() - t0
    assert result.returncode == 0, result.stderr
    assert_blob_ok(store, digest, len(data))
    assert fault.hits == 1
    assert took < 20, f"the pull took {took:.1f}s: the trickling range was waited out"
    [slow] = reg.requests(fault="trickle")
    lo, hi = range_span(slow.range, len(data))
    # The rest of the slow range, from where the trickle left it, on another connection.
    restarted = [r for r in layer_requests(reg, digest)
                 if r.time > slow.time and r.fault is None and r.status == 206
                 and lo < range_span(r.range, len(data))[0] < hi]
    assert restarted, f"the rest of the slow range {slow.range} was never asked for again"
    assert range_span(restarted[0].range, len(data))[0] <= lo + slow.bytes_sent, \
        "bytes the slow range never delivered were skipped"
    assert restarted[0].conn != slow.conn, "the slow range was restarted on the same connection"
    # A fresh connection: not one that carried any request before (faultreg numbers
    # connections as it accepts them).
    used = {r.conn for r in reg.requests(listener=restarted[0].listener)
            if r.time < restarted[0].time}
    assert restarted[0].conn not in used, \
        "the slow range was restarted on an idle connection, not a fresh one"


@pytest.fixture(scope="module")
def setopt_fault(tmp_path_factory):
    """The environment that preloads tests/integration/setopt_fault.c."""
    return children.preload_shim(Path(__file__).with_name("setopt_fault.c"),
                                 tmp_path_factory.mktemp("shim"))


CURLOPT_PROTOCOLS_STR = 10318   # CURLOPTTYPE_STRINGPOINT + 318


def test_a_curl_option_libcurl_refuses_fails_the_pull_clearly(freg, run_blobfs, store,
                                                              setopt_fault):
    """libcurl refusing an option (an older libcurl, say) must not be ignored:
    the request would go out without it (here: without the protocol
    restriction)."""
    env = {**setopt_fault, "BLOBFS_TEST_FAIL_SETOPT": str(CURLOPT_PROTOCOLS_STR)}
    result = run_blobfs(["pull", freg.model_name], timeout=30, env=env)
    assert result.returncode == 1, result.stderr
    assert "CURLOPT_PROTOCOLS_STR" in error_lines(result.stderr), result.stderr
    assert freg.count() == 0, "a request went out without the option"


# ---------------------------------------------------------------- error messages


def test_a_token_error_is_printed_once(fault_registry, run_blobfs, store, tmp_path):
    reg = fault_registry(auth="bearer", token_credentials=("u", "p"))
    reg.add_model("library/f", "latest", [(OLLAMA_MODEL, SMALL_LAYER)])
    result = run_blobfs(["--no-netrc", "pull", f"{reg.host}/library/f"], timeout=30)
    assert result.returncode == 1, result.stderr
    message = error_lines(result.stderr)
    assert reg.host in message, message
    assert message.count("\n") == 0, f"the error is printed more than once:\n{message}"


# ---------------------------------------------------------------- hostile registries, signals

BUDGET = 3          # --read-timeout: the time budget of one metadata request
BUDGET_SLACK = 4    # process start, sanitizers, a loaded machine


@pytest.mark.timing
@pytest.mark.parametrize("on,kind", [("manifest", "hang"), ("manifest", "trickle"),
                                     ("token", "hang"), ("token", "trickle")])
def test_a_registry_that_never_answers_fails_within_the_budget(fault_registry, run_blobfs, store,
                                                               on, kind):
    """A registry that accepts and never answers, or trickles a byte every 2 s,
    fails a pull within its metadata budget (--read-timeout), not after minutes
    of stall timeouts and retries."""
    reg = fault_registry(auth="bearer" if on == "token" else None)
    reg.add_model("library/f", "latest", [(OLLAMA_MODEL, SMALL_LAYER)])
    params = {"rate": 0.5} if kind == "trickle" else {}
    fault = reg.fault(kind, on=on, **params)
    began = time.monotonic()
    result = run_blobfs(["pull", "--read-timeout", BUDGET, f"{reg.host}/library/f"], timeout=60)
    took = time.monotonic() - began
    assert fault.hits >= 1, "the fault never struck: the test proves nothing"
    assert result.returncode == 1, result.stderr
    assert took < BUDGET + BUDGET_SLACK, f"the pull took {took:.1f}s to fail"
    message = error_lines(result.stderr)
    assert re.search(rf"within {BUDGET} s", message), message
    assert message.count("\n") == 0, f"the error is printed more than once:\n{message}"
    assert files_under(Path(store) / "manifests") == [] and blob_files(store) == []


@pytest.mark.timing
@pytest.mark.slow
def test_chunksums_that_never_come_do_not_hold_the_blob_up(chunked_reg, run_blobfs, store):
    reg = chunked_reg
    reg.fault("hang", on="chunksums")
    began = time.monotonic()
    result = run_blobfs(["pull", "--read-timeout", BUDGET, f"{reg.host}/library/f"], timeout=60)
    took = time.monotonic() - began
    assert result.returncode == 0, result.stderr
    assert_blob_ok(store, reg.layer, BIG)
    assert reg.count(path_contains="/chunksums/") >= 1
    assert took < BUDGET + 15, f"the pull took {took:.1f}s"


@pytest.mark.timing
@pytest.mark.parametrize("sig,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("on", ["manifest", "token"])
def test_a_signal_ends_a_pull_waiting_on_a_silent_registry(fault_registry, run_blobfs, store, sig,
                                                           status, on):
    reg = fault_registry(auth="bearer" if on == "token" else None)
    reg.add_model("library/f", "latest", [(OLLAMA_MODEL, SMALL_LAYER)])
    fault = reg.fault("hang", on=on)
    proc = run_blobfs.start(["pull", f"{reg.host}/library/f"])
    try:
        assert wait_for(lambda: fault.hits >= 1 or proc.poll() is not None, timeout=10)
        time.sleep(0.2)
        proc.send_signal(sig)
        signalled = time.monotonic()
        result = children.finish(proc, timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    took = time.monotonic() - signalled
    assert took < 3, f"the pull took {took:.1f}s to end after {sig.name}"
    assert result.returncode == status, result.stderr
    assert "interrupted" in result.stderr


def test_an_unparsable_location_is_reported_as_such(freg, run_blobfs, store):
    freg.fault("redirect", location="http://[::1", digest=freg.layer)
    result = run_blobfs(["pull", "--retries", "2", freg.model_name], timeout=30)
    assert result.returncode == 1, result.stderr
    message = error_lines(result.stderr)
    assert "too many redirects" not in message, message
    assert re.search(r"Location", message), message


def test_a_cdn_refusing_every_resolved_url_is_reported_with_its_answer(fault_registry, run_blobfs,
                                                                       store):
    reg = fault_registry(redirect=True, cdn_max_uses=0, cdn_expired_status=403)
    reg.manifest, (reg.layer,) = reg.add_model("library/f", "latest", [(OLLAMA_MODEL, LAYER)])
    began = time.monotonic()
    result = run_blobfs(["pull", f"{reg.host}/library/f"], timeout=30)
    assert time.monotonic() - began < 20
    assert result.returncode == 1, result.stderr
    assert reg.count(listener="cdn", status=403) >= 2
    message = error_lines(result.stderr)
    assert "too many redirects" not in message, message
    assert "403" in message and reg.cdn_host in message, message
