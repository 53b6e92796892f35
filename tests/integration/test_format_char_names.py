"""Layer names holding Unicode format characters (category Cf), through a real
pull and a real mount (discovery).

A bidi override (U+202E) makes "model\u202egguf.exe" display as
"modelexe.fuggf"; zero-width characters make two names that look the same. Such
a name is refused like a control character: with a message naming the layer
and the character, the store left as it was, the daemon alive. A name with
ordinary non-ASCII letters is still a file of the tag directory.
"""

import hashlib
import json
import os

import pytest

from faultreg import DOCKER_CONFIG, DOCKER_MANIFEST

TENSOR = "application/vnd.ollama.image.tensor"
TITLE = "org.opencontainers.image.title"
PULL_TIMEOUT = 120
REPO = "library/cf"


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def serve(fault_registry, layers):
    """A registry with one manifest whose layers are (data, extra fields)."""
    config = b'{"model_format":"safetensors"}'
    reg = fault_registry()
    reg.add_blob(config)
    descs = []
    for data, fields in layers:
        reg.add_blob(data)
        descs.append({"mediaType": TENSOR, "digest": sha256(data), "size": len(data), **fields})
    doc = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
           "config": {"mediaType": DOCKER_CONFIG, "digest": sha256(config), "size": len(config)},
           "layers": descs}
    reg.add_manifest(REPO, "latest", json.dumps(doc).encode(), DOCKER_MANIFEST)
    return reg, f"{reg.host}/{REPO}:latest"


def store_state(store):
    out = {}
    for root, _, files in os.walk(store):
        for f in files:
            rel = os.path.relpath(os.path.join(root, f), store)
            if rel == ".blobfs/lock" or rel.startswith((".blobfs/run/", ".blobfs/tmp/")):
                continue
            out[rel] = os.stat(os.path.join(root, f)).st_size
    return out


REFUSED = [
    ("rlo", {"name": "model\u202egguf.exe"}, "U+202E"),
    ("lri-pdi", {"name": "a/\u2066b\u2069"}, "U+2066"),
    ("lrm", {"name": "x\u200e"}, "U+200E"),
    ("zero-width-space", {"name": "mo\u200bdel"}, "U+200B"),
    ("bom", {"name": "\ufeffmodel"}, "U+FEFF"),
    ("title-rlm", {"annotations": {TITLE: "w\u200f.bin"}}, "U+200F"),
]


@pytest.mark.parametrize("fields,says", [(f, s) for _, f, s in REFUSED],
                         ids=[i for i, _, _ in REFUSED])
def test_a_name_with_a_format_character_is_refused(fields, says, fault_registry, run_blobfs,
                                                   store, mount):
    reg, ref = serve(fault_registry, [(b"first", {"name": "ok"}), (b"second", fields)])
    before = store_state(store)
    result = run_blobfs(["pull", "--quiet", ref], store=store, timeout=PULL_TIMEOUT)
    assert result.returncode != 0, "pull took a name with a format character:\n" + result.stderr
    assert "layer 1 has an unsafe name" in result.stderr, result.stderr
    assert f"format character {says}" in result.stderr, result.stderr
    assert store_state(store) == before, "the refused pull changed the store"

    m = mount()
    assert not (m.path / "models" / reg.host / REPO / "latest").exists(), \
        "discovery showed a tag with a name that displays as another"
    assert f"format character {says}" in m.log_text()
    assert m.mounted()


def test_letters_beyond_ascii_are_still_names(fault_registry, run_blobfs, store, mount):
    names = ["mod\u00e8le", "\u6a21\u578b", "\u0645\u062f\u0644"]   # Latin, CJK, Arabic letters
    reg, ref = serve(fault_registry, [(n.encode(), {"name": n}) for n in names])
    result = run_blobfs(["pull", "--quiet", ref], store=store, timeout=PULL_TIMEOUT)
    assert result.returncode == 0, result.stderr
    m = mount()
    tag = m.path / "models" / reg.host / REPO / "latest"
    for n in names:
        assert (tag / n).read_bytes() == n.encode()
