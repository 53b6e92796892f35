"""Hostile layer names, as a registry could serve them, through a real pull and a
real mount (discovery).

A layer's name (Ollama's "name" field, the OCI title annotation, ModelPack's
file path annotation) becomes a path under the tag directory. Each name below
must either be refused with a message naming the layer, leaving the store as it
was and the daemon alive, or be shown under the tag directory and nowhere else.
The fault registry serves each manifest as it is, byte for byte.
"""

import hashlib
import json
import os
import subprocess
import time
import unicodedata

import pytest

from faultreg import DOCKER_CONFIG, DOCKER_MANIFEST
from storefiles import tree

TENSOR = "application/vnd.ollama.image.tensor"
PULL_TIMEOUT = 120


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def manifest(layers, config=b'{"model_format":"safetensors"}'):
    """(manifest bytes, {digest: data}) for LAYERS: a list of (data, fields)."""
    blobs = {sha256(config): config}
    descs = []
    for data, fields in layers:
        blobs[sha256(data)] = data
        descs.append({"mediaType": fields.pop("mediaType", TENSOR), "digest": sha256(data),
                      "size": len(data), **fields})
    doc = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
           "config": {"mediaType": DOCKER_CONFIG, "digest": sha256(config), "size": len(config)},
           "layers": descs}
    return json.dumps(doc, separators=(",", ":")).encode(), blobs


def serve(fault_registry, layers, repo="library/evil", tag="latest", raw=None):
    reg = fault_registry()
    body, blobs = manifest(layers)
    for data in blobs.values():
        reg.add_blob(data)
    reg.add_manifest(repo, tag, raw if raw is not None else body, DOCKER_MANIFEST)
    return reg, f"{reg.host}/{repo}:{tag}"


def store_state(store):
    out = {}
    for root, dirs, files in os.walk(store):
        for f in files:
            p = os.path.join(root, f)
            rel = os.path.relpath(p, store)
            if rel == ".blobfs/lock" or rel.startswith((".blobfs/run/", ".blobfs/tmp/")):
                continue   # the lock, and the live mount's record (written via tmp/)
            out[rel] = os.stat(p).st_size
    return out


def named(name, **extra):
    return (b"w:" + name.encode("utf-8", "surrogateescape"), {"name": name, **extra})


# Names that must be refused: (id, layers, what the message must say)
LONG_COMPONENT = "a" * 256
LONG_PATH = "/".join(["d" * 200] * 6)                 # 1,205 bytes, each part fine
DEEP = "/".join(["a"] * 4000)                         # thousands of levels
REFUSED = [
    ("dotdot", [named("..")], "'..' component"),
    ("dotdot-inside", [named("a/../b")], "'..' component"),
    ("dot", [named("./a")], "'.' component"),
    ("double-slash", [named("a//b")], "empty component"),
    ("trailing-slash", [named("a/")], "empty component"),
    ("absolute", [named("/etc/passwd")], "absolute path"),
    ("long-component", [named(LONG_COMPONENT)], "NAME_MAX"),
    ("long-path", [named(LONG_PATH)], "over the limit"),
    ("deep", [named(DEEP)], "over the limit"),
    ("file-and-dir", [named("a"), named("a/b")], "both a file and a directory"),
    ("dir-and-file", [named("a/b"), named("a")], "both a file and a directory"),
    ("manifest-as-dir", [named("manifest.json/x")], "the tag's own file"),
    ("control", [named("a\x01b")], "control character"),
    ("newline", [named("x\n/../y")], "control character"),
    ("escape", [named("\x1b[31mred")], "control character"),
    ("c1-control", [named("a\u009bb")], "control character"),
    ("title-dotdot", [(b"t", {"annotations": {"org.opencontainers.image.title": "../../x"}})],
     "'..' component"),
    ("filepath-absolute", [(b"f", {"mediaType": "application/vnd.cncf.model.weight.v1.raw",
                                   "annotations": {"org.cncf.model.filepath": "/root/x"}})],
     "absolute path"),
    ("title-c1", [(b"t", {"annotations": {"org.opencontainers.image.title": "a\u0085b"}})],
     "control character"),
]


@pytest.mark.parametrize("layers,says", [(l, s) for _, l, s in REFUSED],
                         ids=[i for i, _, _ in REFUSED])
def test_a_hostile_name_is_refused_by_pull_and_mount(layers, says, fault_registry, run_blobfs,
                                                     store, mount):
    reg, ref = serve(fault_registry, [(d, dict(f)) for d, f in layers])
    before = store_state(store)
    result = run_blobfs(["pull", "--quiet", ref], store=store, timeout=PULL_TIMEOUT)
    assert result.returncode != 0, "pull took a hostile name:\n" + result.stderr
    assert "layer " in result.stderr and says in result.stderr, result.stderr
    assert store_state(store) == before, "the refused pull changed the store"

    m = mount()
    tag = m.path / "models" / reg.host / "library" / "evil" / "latest"
    assert not tag.exists(), "discovery showed a tag with a hostile name"
    assert says in m.log_text()
    assert os.listdir(m.path / "models") is not None   # the daemon is alive
    assert m.mounted()
    assert store_state(store) == before, "the refused discovery changed the store"


def test_odd_but_safe_names_stay_in_the_tag_directory(fault_registry, run_blobfs, store, mount):
    """Names that are legal paths, however odd, are files of the tag directory and
    nothing else: repeats and names taken by the tag's own files get ".k", names
    differing only in case or Unicode normalisation are different files."""
    nfc = unicodedata.normalize("NFC", "caf\u00e9")
    nfd = unicodedata.normalize("NFD", "caf\u00e9")
    layers = [named("w"), (b"w again", {"name": "w"}), named("W"), named(nfc), named(nfd),
              named("manifest.json"), named("config.json"), named("model"), named("params"),
              named("100%"), named("%2e%2e"), named("%2F"), named("a\\b"), named("..."),
              named(".hidden"), named("-rf"), named(" sp "), named("sub/x"),
              (b"title", {"annotations": {"org.opencontainers.image.title": "sub/y"}})]
    want = {"w": b"w:w", "w.1": b"w again", "W": b"w:W", nfc: b"w:" + nfc.encode(),
            nfd: b"w:" + nfd.encode(), "manifest.json.1": b"w:manifest.json",
            "config.json": b"w:config.json", "model": b"w:model", "params": b"w:params",
            "100%": b"w:100%", "%2e%2e": b"w:%2e%2e", "%2F": b"w:%2F", "a\\b": b"w:a\\b",
            "...": b"w:...", ".hidden": b"w:.hidden", "-rf": b"w:-rf", " sp ": b"w: sp ",
            "sub": None, "sub/x": b"w:sub/x", "sub/y": b"title"}
    reg, ref = serve(fault_registry, layers)
    result = run_blobfs(["pull", "--quiet", ref], store=store, timeout=PULL_TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert all(f.startswith(("blobs/", "manifests/", ".blobfs/")) for f in store_state(store)), \
        "pull wrote a file under a layer's name"
    m = mount()
    repo = m.path / "models" / reg.host / "library"
    got = tree(repo / "evil" / "latest", contents=True)
    got.pop("config.json.1")        # the manifest's own config steps aside
    manifest_bytes = got.pop("manifest.json")
    assert json.loads(manifest_bytes)["layers"][0]["name"] == "w"
    assert got == want
    assert os.listdir(repo) == ["evil"]
    assert sorted(os.listdir(m.path)) == ["blobs", "manifests", "models"]


def many_names(names, repo, reg):
    """Serve one manifest whose layers (one shared 1-byte blob) have NAMES."""
    data = b"x"
    config = b"{}"
    reg.add_blob(data)
    reg.add_blob(config)
    doc = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
           "config": {"mediaType": DOCKER_CONFIG, "digest": sha256(config), "size": len(config)},
           "layers": [{"mediaType": "x/y", "digest": sha256(data), "size": 1, "name": n}
                      for n in names]}
    body = json.dumps(doc, separators=(",", ":")).encode()
    reg.add_manifest(repo, "latest", body, DOCKER_MANIFEST)
    return len(body)


def discover(m, reg, repo):
    """Seconds until the mount has discovered REPO:latest and listed it."""
    began = time.monotonic()
    entries = os.listdir(m.path / "models" / reg.host / repo / "latest")
    return time.monotonic() - began, entries


@pytest.mark.slow
def test_a_manifest_in_reverse_order_costs_what_one_in_order_does(fault_registry, store, mount):
    """30,000 names (a 4 MiB manifest holds no more) in one directory: each was
    inserted in manifest order into a sorted array, so names in reverse order
    moved the whole array each time, under the index's write lock. Compared
    with the same names in order, in the same run."""
    reg = fault_registry()
    n = 30000
    many_names(["%06d" % i for i in range(n)], "library/inorder", reg)
    many_names(["%06d" % (n - i) for i in range(n)], "library/reverse", reg)
    m = mount()
    inorder, entries = discover(m, reg, "library/inorder")
    assert len(entries) == n + 2
    reverse, entries = discover(m, reg, "library/reverse")
    assert len(entries) == n + 2
    print(f"discovery of {n} names: in order {inorder:.2f}s, reversed {reverse:.2f}s")
    assert reverse < 3 * inorder + 0.5, \
        f"reversed names took {reverse:.2f}s, in order {inorder:.2f}s"


def test_names_cannot_make_a_tag_of_a_million_directories(fault_registry, run_blobfs, store,
                                                          mount):
    """A 3.7 MB manifest of 20,000 layers named "<i>/a/a/.../a" made 620,000
    directories in the mount (hundreds of MB). A tag's names may need at most as
    many directories as a manifest may have layers; past that the layer is named."""
    reg = fault_registry()
    n = 20000
    many_names(["%d/" % i + "/".join(["a"] * 30) for i in range(n)], "library/wide", reg)
    ref = f"{reg.host}/library/wide"
    result = run_blobfs(["pull", "--quiet", ref], store=store, timeout=PULL_TIMEOUT)
    assert result.returncode != 0, "pull took a manifest of 600,000 directories"
    assert "directories" in result.stderr and "layer " in result.stderr, result.stderr
    assert not (store / "manifests").exists() or not any((store / "manifests").rglob("latest"))
    m = mount()
    assert not (m.path / "models" / reg.host / "library" / "wide" / "latest").exists()
    assert m.mounted()
    # a tensor model's few directories are far from the limit
    many_names(["d%d/t%d" % (i % 50, i) for i in range(n)], "library/fine", reg)
    assert len(os.listdir(m.path / "models" / reg.host / "library" / "fine" / "latest")) == 52


@pytest.mark.parametrize("layers,says", [(l, s) for _, l, s in REFUSED[:12]],
                         ids=[i for i, _, _ in REFUSED[:12]])
def test_a_hostile_manifest_already_in_the_store_is_not_shown(layers, says, store, mount):
    """The same names in a manifest that is already in the store (an older
    blobfs, another tool): the mount does not show the tag, and says why."""
    body, blobs = manifest([(d, dict(f)) for d, f in layers])
    path = store / "manifests" / "registry.example" / "library" / "evil" / "latest"
    path.parent.mkdir(parents=True)
    path.write_bytes(body)
    m = mount()
    assert os.listdir(m.path / "models") == []
    assert os.listdir(m.path / "manifests") == []
    assert "not showing 'registry.example/library/evil:latest'" in m.log_text()
    assert says in m.log_text()
    assert path.read_bytes() == body      # left for the user to look at


def test_the_deepest_and_longest_names_allowed_work(fault_registry, run_blobfs, store, mount):
    """At the limits (32 directories deep, 1,024 bytes, 255-byte components and
    a repeat of one, which takes ".1"), a name is listed, read and removed."""
    deep = "/".join(["d"] * 32) + "/leaf"
    long = "/".join(["L" * 255] * 3 + ["M" * 254, "t"])
    assert len(long) == 1024
    reg, ref = serve(fault_registry, [named(deep), named(long), (b"again", {"name": long})])
    result = run_blobfs(["pull", "--quiet", ref], store=store, timeout=PULL_TIMEOUT)
    assert result.returncode == 0, result.stderr
    m = mount()
    tag = m.path / "models" / reg.host / "library" / "evil" / "latest"
    assert (tag / deep).read_bytes() == b"w:" + deep.encode()
    assert (tag / long).read_bytes() == b"w:" + long.encode()
    repeat = [p for p in os.listdir((tag / long).parent) if p != os.path.basename(long)]
    assert len(repeat) == 1 and repeat[0].endswith(".1") and len(repeat[0]) <= 255, repeat
    assert ((tag / long).parent / repeat[0]).read_bytes() == b"again"
    result = subprocess.run(["rm", "-r", str(tag)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert not (store / "manifests" / reg.host / "library" / "evil" / "latest").exists()


def test_a_hundred_thousand_layers_are_refused(fault_registry, run_blobfs, store, mount):
    """10^5 layers do not fit the 4 MiB a manifest may have: refused before parsing."""
    reg = fault_registry()
    size = many_names(["t%d" % i for i in range(100000)], "library/huge", reg)
    assert size > 4 << 20
    result = run_blobfs(["pull", "--quiet", f"{reg.host}/library/huge"], store=store,
                        timeout=PULL_TIMEOUT)
    assert result.returncode != 0 and "larger than 4194304 bytes" in result.stderr, result.stderr
    m = mount()
    assert not (m.path / "models" / reg.host / "library" / "huge" / "latest").exists()
    assert "larger than 4194304 bytes" in m.log_text()
    assert m.mounted()
