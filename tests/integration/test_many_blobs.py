"""Models of many small blobs (Ollama's tensor format: one blob per tensor),
against Debian's docker-registry with its nginx CDN, counted at the servers.

- `pull` keeps many blobs in flight at once (not one blob at a time), each
  small blob in one request, over connections it reuses; an explicit
  --connections still caps the total.
- A mount prefetches the rest of a tag once a loader walks it (opens one of
  its files, then another), in manifest order, and not before.
- That prefetch never goes ahead of a read of another blob: the read's
  request is the next one the network thread starts (asserted on the order
  of requests, not on time).
"""

import re
import threading
import time
from pathlib import Path

from models import (
    OLLAMA_LICENSE, OLLAMA_MODEL, OLLAMA_PARAMS, OLLAMA_TEMPLATE, make_model, push_model,
)
from storefiles import wait_for

KiB = 1 << 10
MiB = 1 << 20
TENSOR = "application/vnd.ollama.image.tensor"
REPO = "library/tensors"


def tensor_model(workdir, blob_cache, n, size, seed):
    """N tensor layers of SIZE random bytes, each named after a tensor (flat names)."""
    layers = [(TENSOR, size, seed + i) for i in range(n)]
    names = {i: f"blk.{i // 4}.{('q', 'k', 'v', 'o')[i % 4]}.weight" for i in range(n)}
    return make_model(workdir, layers, names=names, cache_dir=blob_cache)


def cdn_blob_entries(reg, model, since=0):
    """{layer index: [CDN log entries]} of the model's layers."""
    index = {reg.cdn_blob_url(x.digest)[len(reg.cdn_url):]: i for i, x in enumerate(model.layers)}
    out = {}
    for e in reg.cdn_log_entries(since=since):
        i = index.get(e["uri"].split("?")[0])
        if i is not None:
            out.setdefault(i, []).append(e)
    return out


def most_in_flight(entries):
    """The most distinct blobs the CDN was sending at one instant (start = end - request_time)."""
    events = []
    for i, es in entries.items():
        for e in es:
            events.append((e["time"] - e["request_time"], 1, i))
            events.append((e["time"], -1, i))
    events.sort(key=lambda ev: (ev[0], ev[1]))
    now, best = {}, 0
    for _, step, i in events:
        now[i] = now.get(i, 0) + step
        if now[i] == 0:
            del now[i]
        best = max(best, len(now))
    return best


def registry_blob_gets(reg, model, since=None):
    """Layer indexes in the order the registry logged their blob GETs (repeats kept)."""
    index = {x.digest: i for i, x in enumerate(model.layers)}
    out = []
    for e in reg.registry_log_entries(since=since):
        m = re.search(r"/blobs/(sha256:[0-9a-f]{64})", e["uri"])
        if e["method"] == "GET" and m and m.group(1) in index:
            out.append(index[m.group(1)])
    return out


def mount_first_gets(m, model):
    """Layer indexes in the order the mount's network thread first asked for them."""
    index = {x.digest: i for i, x in enumerate(model.layers)}
    seen, order = set(), []
    for line in m.log_lines(r"debug: GET \S+/blobs/sha256:"):
        d = re.search(r"/blobs/(sha256:[0-9a-f]{64})", line).group(1)
        if d in index and index[d] not in seen:
            seen.add(index[d])
            order.append(index[d])
    return order


def read_file(path):
    with open(path, "rb") as f:
        return f.read()


def pull(run_blobfs, *args):
    result = run_blobfs(["pull", "--quiet", *args], timeout=180)
    assert result.returncode == 0, result.stderr
    return result


def test_pull_keeps_many_blobs_in_flight(capped_cdn_registry, run_blobfs, store, tmp_path,
                                         blob_cache):
    # 128 KiB/s per connection: a 512 KiB blob takes about three seconds, long
    # enough for the CDN's log to show how many blobs overlap.
    reg = capped_cdn_registry("128k")
    model = tensor_model(tmp_path / "m", blob_cache, 100, 512 * KiB, seed=5000)
    push_model(reg, REPO, "latest", model)
    mark = reg.cdn_log_mark()
    pull(run_blobfs, f"{reg.host}/{REPO}:latest")

    for x in model.blobs:
        assert (store / "blobs" / f"sha256-{x.hex}").read_bytes() == x.read_bytes()
    got = cdn_blob_entries(reg, model, since=mark)
    assert sorted(got) == list(range(len(model.layers)))
    # Each small blob in one request, whole: no range split.
    split = {i: [e["range"] for e in es] for i, es in got.items() if len(es) != 1}
    assert not split, f"small blobs fetched in more than one request: {split}"
    # Many blobs at once, far more than one blob's 16 ranges ...
    flight = most_in_flight(got)
    assert flight >= 40, f"at most {flight} blobs were in flight at once"
    # ... over connections kept and reused for the next blob.
    conns = {e["connection"] for es in got.values() for e in es}
    assert len(conns) <= 72, f"{len(conns)} CDN connections for {len(got)} blobs"

    # An explicit --connections still caps the total.
    few = tensor_model(tmp_path / "few", blob_cache, 12, 512 * KiB, seed=5500)
    push_model(reg, REPO, "few", few)
    mark = reg.cdn_log_mark()
    pull(run_blobfs, "--connections", "4", f"{reg.host}/{REPO}:few")
    flight = most_in_flight(cdn_blob_entries(reg, few, since=mark))
    assert 2 <= flight <= 4, f"{flight} blobs in flight with --connections 4"


def walk_setup(capped_cdn_registry, run_blobfs, tmp_path, blob_cache, rate, n, size, seed):
    reg = capped_cdn_registry(rate)
    model = tensor_model(tmp_path / "m", blob_cache, n, size, seed=seed)
    push_model(reg, REPO, "latest", model)
    pull(run_blobfs, "--lazy", f"{reg.host}/{REPO}:latest")
    return reg, model


def test_a_walked_tag_is_prefetched_in_manifest_order(capped_cdn_registry, run_blobfs, store,
                                                      mount, tmp_path, blob_cache):
    reg, model = walk_setup(capped_cdn_registry, run_blobfs, tmp_path, blob_cache, "4m",
                            n=24, size=256 * KiB, seed=6000)
    m = mount("connections=2")
    tag = Path(m.path) / "models" / reg.host / REPO / "latest"
    files = [tag / x.name for x in model.layers]
    since = reg.registry_log_mark()

    # One file read is not a walk: nothing else is fetched.
    assert read_file(files[0]) == model.layers[0].read_bytes()
    time.sleep(1.0)
    assert set(registry_blob_gets(reg, model, since)) == {0}

    # A second file is: the rest of the tag arrives with no further reads.
    assert read_file(files[1]) == model.layers[1].read_bytes()
    committed = [store / "blobs" / f"sha256-{x.hex}" for x in model.layers]
    assert wait_for(lambda: all(p.exists() for p in committed), timeout=60), \
        f"not prefetched: {[i for i, p in enumerate(committed) if not p.exists()]}"
    for p, x in zip(committed, model.layers):
        assert p.read_bytes() == x.read_bytes()
    # Counted at the registry: every layer asked for, each of the rest once.
    gets = registry_blob_gets(reg, model, since)
    assert sorted(set(gets)) == list(range(len(model.layers)))
    # In manifest order, as the network thread started them.
    order = mount_first_gets(m, model)
    assert order[:2] == [0, 1] and order[2:] == sorted(order[2:]), order


def test_reading_a_tags_text_files_prefetches_nothing(capped_cdn_registry, run_blobfs, store,
                                                     mount, tmp_path, blob_cache):
    """Someone who reads a tag's template, params and license has not started a
    load: the weights are not downloaded behind their back. Opening the
    weights next is a walk, and the prefetch starts."""
    reg = capped_cdn_registry("4m")
    layers = [(OLLAMA_MODEL, 2 * MiB, 6100), (OLLAMA_TEMPLATE, b"{{ .Prompt }}"),
              (OLLAMA_PARAMS, b'{"stop": ["<|eot|>"]}'), (OLLAMA_LICENSE, 20 * KiB, 6101)]
    model = make_model(tmp_path / "m", layers, cache_dir=blob_cache)
    push_model(reg, "library/classic", "latest", model)
    pull(run_blobfs, "--lazy", f"{reg.host}/library/classic:latest")
    m = mount()
    tag = Path(m.path) / "models" / reg.host / "library" / "classic" / "latest"
    since = reg.registry_log_mark()

    files = ["model", "template", "params", "license"]      # the layers' files, in order
    for i in (1, 2, 3):
        assert read_file(tag / files[i]) == model.layers[i].read_bytes()
    time.sleep(1.5)
    assert 0 not in registry_blob_gets(reg, model, since), \
        "reading the text files of a tag downloaded its weights"

    with open(tag / files[0], "rb") as f:
        assert f.read(4096) == model.layers[0].read_bytes()[:4096]
        weights = store / "blobs" / f"sha256-{model.layers[0].hex}"
        assert wait_for(weights.exists, timeout=30), \
            "opening the weights after the text files started no prefetch"
    assert weights.read_bytes() == model.layers[0].read_bytes()


def test_prefetch_never_goes_ahead_of_a_read(capped_cdn_registry, run_blobfs, store, mount,
                                             tmp_path, blob_cache):
    # 2 connections, 256 KiB/s each, 512 KiB blobs: the prefetch of 28 blobs
    # takes half a minute, and always has both connections busy.
    reg, model = walk_setup(capped_cdn_registry, run_blobfs, tmp_path, blob_cache, "256k",
                            n=30, size=512 * KiB, seed=7000)
    m = mount("connections=2")
    tag = Path(m.path) / "models" / reg.host / REPO / "latest"
    files = [tag / x.name for x in model.layers]
    assert read_file(files[0]) == model.layers[0].read_bytes()
    assert read_file(files[1]) == model.layers[1].read_bytes()
    assert wait_for(lambda: len(mount_first_gets(m, model)) >= 4, timeout=20), \
        mount_first_gets(m, model)

    last = len(model.layers) - 1
    before = mount_first_gets(m, model)
    assert last not in before
    got = {}
    reader = threading.Thread(target=lambda: got.update(data=read_file(files[last])))
    reader.start()
    reader.join(timeout=60)
    assert not reader.is_alive(), "the read of the last file did not finish"
    assert got["data"] == model.layers[last].read_bytes()

    # The read's blob was the next one asked for: no prefetch went ahead of it
    # (one may have started in the instant between the snapshot and the read).
    order = mount_first_gets(m, model)
    at = order.index(last)
    assert at <= len(before) + 1, (before, order)
    # And the prefetch was still going: the read did not wait for it to pass.
    assert len(order) < len(model.layers), order


def test_a_small_cold_file_costs_one_request(cdn_registry, run_blobfs, store, mount, tmp_path,
                                             blob_cache):
    reg = cdn_registry
    model = tensor_model(tmp_path / "m", blob_cache, 2, 2048 * KiB, seed=8000)
    push_model(reg, REPO, "latest", model)
    pull(run_blobfs, "--lazy", f"{reg.host}/{REPO}:latest")
    m = mount("background=never")
    tag = Path(m.path) / "models" / reg.host / REPO / "latest"
    since, mark = reg.registry_log_mark(), reg.cdn_log_mark()
    x = model.layers[0]
    data = bytearray()
    with open(tag / x.name, "rb") as f:        # a loader's small reads, front to back
        while piece := f.read(64 * KiB):
            data += piece
    assert bytes(data) == x.read_bytes()
    # One redirect from the registry, one request to the CDN: the whole file.
    assert registry_blob_gets(reg, model, since) == [0]
    got = cdn_blob_entries(reg, model, since=mark)
    assert [e["range"] for e in got.get(0, [])] == [f"bytes=0-{x.size - 1}"], got


def test_a_model_that_cannot_fit_is_refused_before_any_fetch(cdn_registry, run_blobfs, tmpfs,
                                                             tmp_path, blob_cache):
    # Every blob fits on the disk, the model does not: blobs are reserved a
    # window at a time, so the whole is checked first.
    reg = cdn_registry
    model = tensor_model(tmp_path / "m", blob_cache, 12, 1024 * KiB, seed=9000)
    push_model(reg, REPO, "latest", model)
    store = tmpfs(8 << 20) / "store"
    mark = reg.cdn_log_mark()
    result = run_blobfs(["pull", "--quiet", f"{reg.host}/{REPO}:latest"], store=store,
                        timeout=60)
    assert result.returncode == 1, result.stderr
    assert "No space left on device" in result.stderr, result.stderr
    assert not cdn_blob_entries(reg, model, since=mark), "blobs were fetched"
    assert not list((store / "blobs").glob("sha256-*"))
