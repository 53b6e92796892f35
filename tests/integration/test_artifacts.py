"""Integration tests of model artifacts other than Ollama's classic GGUF layout,
each pushed to Debian's docker-registry with the exact manifest shape its own
tools produce, then pulled and mounted:

- Ollama's tensor format (one safetensors blob per tensor, layer names that are
  paths such as text_encoder/config.json), through `pull` and through the mount
  (ls -R, cat, du, xattrs, rm -r, discovery);
- a model of more than 1,000 layers;
- ORAS (the OCI title annotation), CNCF ModelPack as modctl pushes it
  (org.cncf.model.filepath), Docker Model Runner (`docker model package`),
  and Hugging Face's Ollama-compatible endpoint (hf.co/<user>/<repo>:<quant>);
- every redirect status a registry may send to its CDN (301, 302, 303, 307,
  308), through the fault registry.

Each convention's file names are the ones its own tools give (blobfs(1),
ARTIFACT CONVENTIONS).
"""

import base64
import hashlib
import json
import os
import random
import time
from pathlib import Path

import pytest

from children import run
from models import DOCKER_CONFIG, DOCKER_MANIFEST_V2, OCI_MANIFEST_V1, push_blob, push_manifest
from storefiles import blob_name, tree

MiB = 1 << 20
PULL_TIMEOUT = 120
OLLAMA_TENSOR = "application/vnd.ollama.image.tensor"
OLLAMA_JSON = "application/vnd.ollama.image.json"


# ---------------------------------------------------------------- helpers


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def pull(run_blobfs, store, name, lazy=False, timeout=PULL_TIMEOUT):
    args = ["pull", "--quiet"] + (["--lazy"] if lazy else []) + [name]
    result = run_blobfs(args, store=store, timeout=timeout)
    assert result.returncode == 0, f"blobfs {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
    return result


class Artifact:
    """A manifest with its blobs, as some tool would push it."""

    def __init__(self, media_type, config_media_type, config_bytes, top=None, config_extra=None):
        self.media_type = media_type
        self.blobs = {}                   # digest -> bytes
        self.files = {}                   # expected path in the tag directory -> bytes
        self.layers = []
        config_digest = self._blob(config_bytes)
        self.config = {"mediaType": config_media_type, "digest": config_digest,
                       "size": len(config_bytes), **(config_extra or {})}
        self.top = top or {}
        self.config_bytes = config_bytes

    def _blob(self, data):
        digest = sha256(data)
        self.blobs[digest] = data
        return digest

    def layer(self, media_type, data, expect, **fields):
        """Add a layer; EXPECT is the path its tools give it (None: not checked)."""
        self.layers.append({"mediaType": media_type, "digest": self._blob(data), "size": len(data),
                            **fields})
        if expect is not None:
            self.files[expect] = data

    def manifest_bytes(self):
        doc = {"schemaVersion": 2, "mediaType": self.media_type, **self.top,
               "config": self.config, "layers": self.layers}
        return json.dumps(doc, separators=(",", ":")).encode()

    def push(self, registry, repo, tag):
        for data in self.blobs.values():
            push_blob(registry, repo, data)
        return push_manifest(registry, repo, tag, self.manifest_bytes(), self.media_type)


def expected_tree(files, config_name="config.json"):
    out = {config_name: "file", "manifest.json": "file"}
    for path in files:
        out[path] = "file"
        parts = path.split("/")
        for i in range(1, len(parts)):
            out["/".join(parts[:i])] = None
    return out


def safetensors(name, shape, seed):
    """A small but real safetensors file holding one BF16 tensor."""
    count = 1
    for n in shape:
        count *= n
    data = random.Random(seed).randbytes(2 * count)
    header = json.dumps({name: {"dtype": "BF16", "shape": shape, "data_offsets": [0, len(data)]}},
                        separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + data


# ---------------------------------------------------------------- Ollama's tensor format


def tensor_model(big_tensor=True):
    """An image-generation model as Ollama's x/create writes it: the Ollama model
    config as the manifest's config, one layer per tensor named by its path, and
    the model's own JSON files (config.json among them) as named layers."""
    config = json.dumps({"model_format": "safetensors", "file_type": "bf16",
                         "capabilities": ["image"], "requires": "0.14.0"}).encode()
    art = Artifact(DOCKER_MANIFEST_V2, DOCKER_CONFIG, config)
    tensors = [
        ("text_encoder/model.layers.0.mlp.down_proj.weight", [64, 96]),
        ("text_encoder/model.layers.0.self_attn.q_proj.weight", [64, 64]),
        ("text_encoder/model.embed_tokens.weight", [1024, 1024] if big_tensor else [32, 64]),
        ("transformer/transformer_blocks.0.attn.to_q.weight", [48, 48]),
        ("vae/decoder.conv_in.weight", [16, 16]),
    ]
    for i, (name, shape) in enumerate(tensors):
        data = safetensors(name.split("/", 1)[1], shape, seed=i)
        art.layer(OLLAMA_TENSOR, data, name, name=name, dtype="BF16", shape=shape)
    for name, data in [
        ("model_index.json", b'{"_class_name":"ZImagePipeline"}'),
        ("config.json", b'{"architectures":["ZImage"]}'),
        ("text_encoder/config.json", b'{"model_type":"qwen3","hidden_size":64}'),
        ("tokenizer/vocab.json", b'{"a":0,"b":1}'),
        ("tokenizer/tokenizer_config.json", b'{"model_max_length":512}'),
        ("scheduler/scheduler_config.json", b'{"num_train_timesteps":1000}'),
    ]:
        art.layer(OLLAMA_JSON, data, name, name=name)
    return art


def test_tensor_model_through_pull_and_mount(registry, run_blobfs, store, mount):
    art = tensor_model()
    art.push(registry, "library/zimage", "pulled")
    art.push(registry, "library/zimage", "lazy")
    host = registry.host

    # pull: everything, verified
    pull(run_blobfs, store, f"{host}/library/zimage:pulled")
    for digest, data in art.blobs.items():
        assert (store / "blobs" / blob_name(digest)).read_bytes() == data
    ls = run_blobfs(["ls"], store=store)
    assert ls.returncode == 0 and "zimage:pulled" in ls.stdout, ls.stdout + ls.stderr

    m = mount()
    want = expected_tree(art.files, config_name="config.json.1")
    pulled = m.path / "models" / host / "library" / "zimage" / "pulled"
    assert tree(pulled) == want
    lsr = run(["ls", "-lR", pulled], check=True).stdout
    assert "model.layers.0.mlp.down_proj.weight" in lsr and "text_encoder:" in lsr, lsr
    for path, data in art.files.items():
        assert (pulled / path).read_bytes() == data, path
    # the model's own config.json keeps its name; the manifest's config steps aside
    assert (pulled / "config.json").read_bytes() == b'{"architectures":["ZImage"]}'
    assert (pulled / "config.json.1").read_bytes() == art.config_bytes
    nested = pulled / "text_encoder" / "model.embed_tokens.weight"
    digest = sha256(art.files["text_encoder/model.embed_tokens.weight"])
    assert os.getxattr(nested, "user.blobfs.digest").decode() == digest
    assert os.getxattr(nested, "user.blobfs.cached").decode() == str(os.stat(nested).st_size)
    assert os.stat(nested).st_ino == os.stat(m.path / "blobs" / blob_name(digest)).st_ino
    # du counts every blob once, at its full size: all of it is local
    local = sum((len(d) + 511) // 512 * 512 for d in art.blobs.values())
    local += (len(art.manifest_bytes()) + 511) // 512 * 512
    assert run(["du", "-s", "-B1", pulled], check=True).stdout.split()[0] == str(local)
    assert run(["du", "-s", "-B1", pulled / "tokenizer"], check=True).stdout.split()[0] == \
        str(sum((len(art.files[f]) + 511) // 512 * 512
                for f in ("tokenizer/vocab.json", "tokenizer/tokenizer_config.json")))

    # the mount: a tag nobody pulled is discovered, and read lazily
    lazy = m.path / "models" / host / "library" / "zimage" / "lazy"
    assert tree(lazy) == want
    assert (lazy / "text_encoder" / "config.json").read_bytes() == art.files["text_encoder/config.json"]
    assert (lazy / "transformer" / "transformer_blocks.0.attn.to_q.weight").read_bytes() == \
        art.files["transformer/transformer_blocks.0.attn.to_q.weight"]

    # rm -r at any depth: a subdirectory goes from view, then the whole tag
    result = run(["rm", "-r", pulled / "tokenizer"])
    assert result.returncode == 0, result.stderr
    assert "tokenizer" not in os.listdir(pulled)
    assert (store / "manifests" / host / "library" / "zimage" / "pulled").is_file()
    result = run(["rm", "-r", pulled])
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(m.path / "models" / host / "library" / "zimage")) == ["lazy"]
    assert not (store / "manifests" / host / "library" / "zimage" / "pulled").exists()
    # blobs the other tag shares stay
    for digest in art.blobs:
        assert (store / "blobs" / blob_name(digest)).exists() or \
            (m.path / "blobs" / blob_name(digest)).exists()
    result = run(["rm", "-r", lazy])
    assert result.returncode == 0, result.stderr
    assert not (store / "manifests" / host / "library" / "zimage").exists() or \
        os.listdir(store / "manifests" / host / "library" / "zimage") == []
    assert [p for p in (store / "blobs").iterdir()] == []


@pytest.mark.slow
def test_many_layers_pull_and_list(fault_registry, run_blobfs, store, mount):
    """A tensor model of 1,100 layers: pull it all, list and read it through the mount.
    The fault registry serves it (pushing 1,100 blobs to docker-registry takes a minute)."""
    registry = fault_registry()
    config = b'{"model_format":"safetensors","file_type":"bf16"}'
    art = Artifact(DOCKER_MANIFEST_V2, DOCKER_CONFIG, config)
    n = 1100
    for i in range(n):
        block, kind = divmod(i, 11)
        part = "text_encoder" if block % 2 else "transformer"
        name = f"{part}/layers.{block}.{['q', 'k', 'v', 'o', 'up', 'down', 'gate', 'n1', 'n2', 'b', 's'][kind]}.weight"
        art.layer(OLLAMA_TENSOR, b"%d:" % i + random.Random(i).randbytes(200), name, name=name)
    for name in ("config.json", "tokenizer.json", "generation_config.json"):
        art.layer(OLLAMA_JSON, b'{"name":"%s"}' % name.encode(), name, name=name)
    for data in art.blobs.values():
        registry.add_blob(data)
    registry.add_manifest("library/many", "latest", art.manifest_bytes(), DOCKER_MANIFEST_V2)
    host = registry.host

    began = time.monotonic()
    pull(run_blobfs, store, f"{host}/library/many")
    took = time.monotonic() - began
    blobs = os.listdir(store / "blobs")
    assert len(blobs) == n + 4, f"{len(blobs)} blobs in the store"
    print(f"pull of {n + 3} layers: {took:.1f}s")

    m = mount()
    tdir = m.path / "models" / host / "library" / "many" / "latest"
    lsr = run(["ls", "-lR", tdir], check=True).stdout
    assert tree(tdir) == expected_tree(art.files, "config.json.1")
    assert lsr.count(".weight") == n
    assert len(os.listdir(tdir / "text_encoder")) == n // 2
    for path in ("transformer/layers.0.q.weight", "text_encoder/layers.99.s.weight",
                 "tokenizer.json", "config.json"):
        assert (tdir / path).read_bytes() == art.files[path]


# ---------------------------------------------------------------- conventions


def oras_artifact():
    """`oras push reg/repo:tag sub/hello.txt model.gguf weights/` (ORAS 1.2): an OCI
    manifest with artifactType, the empty config, one layer per file titled by its
    path, and a directory packed as tar+gzip that ORAS unpacks on pull."""
    art = Artifact(OCI_MANIFEST_V1, "application/vnd.oci.empty.v1+json", b"{}",
                   top={"artifactType": "application/vnd.unknown.artifact.v1",
                        "annotations": {"org.opencontainers.image.created": "2026-12-01T10:00:00Z"}},
                   config_extra={"data": base64.b64encode(b"{}").decode()})
    art.layer("application/vnd.oci.image.layer.v1.tar", b"hello\n", "sub/hello.txt",
              annotations={"org.opencontainers.image.title": "sub/hello.txt"})
    art.layer("application/vnd.oci.image.layer.v1.tar", b"GGUF" + bytes(60), "model.gguf",
              annotations={"org.opencontainers.image.title": "model.gguf"})
    tgz = b"\x1f\x8b" + random.Random(5).randbytes(300)
    art.layer("application/vnd.oci.image.layer.v1.tar+gzip", tgz, "weights.tar.gz",
              annotations={"io.deis.oras.content.digest": sha256(b"the tar"),
                           "io.deis.oras.content.unpack": "true",
                           "org.opencontainers.image.title": "weights"})
    return art


def modelpack_artifact():
    """`modctl build` + `modctl push` (raw layers, its default): the ModelPack
    config, every file a layer with org.cncf.model.filepath and its metadata."""
    def meta(name, size):
        return json.dumps({"name": name, "mode": 420, "uid": 0, "gid": 0, "size": size,
                           "mtime": "2026-11-30T08:00:00Z", "typeflag": 48}, separators=(",", ":"))
    files = [
        ("application/vnd.cncf.model.weight.config.v1.raw", "config.json", b'{"model_type":"qwen2"}'),
        ("application/vnd.cncf.model.weight.config.v1.raw", "tokenizer.json", b'{"version":"1.0"}'),
        ("application/vnd.cncf.model.weight.v1.raw", "model-00001-of-00002.safetensors",
         safetensors("a", [32, 32], 1)),
        ("application/vnd.cncf.model.weight.v1.raw", "model-00002-of-00002.safetensors",
         safetensors("b", [32, 32], 2)),
        ("application/vnd.cncf.model.doc.v1.raw", "README.md", b"# qwen\n"),
        ("application/vnd.cncf.model.code.v1.raw", "scripts/convert.py", b"print(1)\n"),
    ]
    diff_ids = [sha256(data) for _, _, data in files]
    config = json.dumps({
        "descriptor": {"createdAt": "2026-11-30T08:00:00Z", "family": "qwen2", "name": "qwen2-0.5b"},
        "config": {"paramSize": "0.5b", "format": "safetensors"},
        "modelfs": {"type": "layers", "diffIds": diff_ids}}).encode()
    art = Artifact(OCI_MANIFEST_V1, "application/vnd.cncf.model.config.v1+json", config,
                   top={"artifactType": "application/vnd.cncf.model.manifest.v1+json"})
    for mt, path, data in files:
        art.layer(mt, data, path, annotations={
            "org.cncf.model.file.metadata+json": meta(os.path.basename(path), len(data)),
            "org.cncf.model.file.mediatype.untested": "false",
            "org.cncf.model.filepath": path})
    return art


def dmr_artifact(shards=1):
    """`docker model package --gguf --license --mmproj --chat-template --push`:
    config v0.1, every layer annotated with its file's own name, which Docker
    Model Runner ignores: it unpacks model.gguf (or numbered shards),
    model.mmproj and template.jinja."""
    config = json.dumps({"config": {"format": "gguf", "quantization": "Q4_K_M",
                                    "parameters": "1.24 B", "architecture": "llama",
                                    "size": "770.28 MiB"},
                         "descriptor": {"created": "2026-11-30T08:00:00Z"},
                         "rootfs": {"type": "rootfs", "diff_ids": []}}).encode()
    art = Artifact(OCI_MANIFEST_V1, "application/vnd.docker.ai.model.config.v0.1+json", config)

    def ann(name):
        return {"org.cncf.model.filepath": name,
                "org.cncf.model.file.metadata+json": json.dumps({"name": name, "mode": 420}),
                "org.cncf.model.file.mediatype.untested": "false"}
    for i in range(shards):
        src = "Llama-3.2-1B-Q4_K_M.gguf" if shards == 1 else f"llama-{i + 1:05d}-of-{shards:05d}.gguf"
        want = "model.gguf" if shards == 1 else f"model-{i + 1:05d}-of-{shards:05d}.gguf"
        art.layer("application/vnd.docker.ai.gguf.v3", b"GGUF" + random.Random(i).randbytes(500),
                  want, annotations=ann(src))
    art.layer("application/vnd.docker.ai.license", b"Apache License\n", "LICENSE",
              annotations=ann("LICENSE"))
    art.layer("application/vnd.docker.ai.mmproj", b"GGUF-mmproj", "model.mmproj",
              annotations=ann("mmproj-model-f16.gguf"))
    art.layer("application/vnd.docker.ai.chat.template.jinja", b"{{ messages }}", "template.jinja",
              annotations=ann("chat_template.jinja"))
    return art


def hf_artifact():
    """What hf.co's Ollama-compatible endpoint serves for <user>/<repo>:<quant>:
    an Ollama manifest (Docker v2), the GGUF as the model layer, template and
    params from the repository, a projector for vision models."""
    config = json.dumps({"model_format": "gguf", "model_family": "llama", "file_type": "Q4_K_M",
                         "architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    art = Artifact(DOCKER_MANIFEST_V2, DOCKER_CONFIG, config)
    art.layer("application/vnd.ollama.image.model", b"GGUF" + random.Random(9).randbytes(700), "model")
    art.layer("application/vnd.ollama.image.projector", b"GGUF-clip", "projector")
    art.layer("application/vnd.ollama.image.template", b"{{ .Prompt }}", "template")
    art.layer("application/vnd.ollama.image.params", b'{"stop":["<|eot_id|>"]}', "params")
    return art


CONVENTIONS = {
    "oras": (oras_artifact, "example/hello", "v1", "config.json"),
    "modelpack": (modelpack_artifact, "qwen/qwen2-0.5b", "v1", "config.json.1"),
    "docker-model-runner": (dmr_artifact, "ai/llama3.2", "1B-Q4_K_M", "config.json"),
    "docker-model-runner-shards": (lambda: dmr_artifact(shards=3), "ai/big", "latest", "config.json"),
    # hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M, on a registry that, unlike
    # Hugging Face, takes only lowercase repository names
    "hugging-face": (hf_artifact, "bartowski/llama-3.2-1b-instruct-gguf", "Q4_K_M", "config.json"),
}


@pytest.mark.parametrize("convention", sorted(CONVENTIONS))
def test_convention_names_files_as_its_tools_do(convention, registry, run_blobfs, store, mount):
    make, repo, tag, config_name = CONVENTIONS[convention]
    art = make()
    art.push(registry, repo, tag)
    host = registry.host
    pull(run_blobfs, store, f"{host}/{repo}:{tag}")
    stored = store / "manifests" / host / repo / tag
    assert stored.read_bytes() == art.manifest_bytes()

    m = mount()
    tdir = m.path / "models" / host / repo / tag
    assert tree(tdir) == expected_tree(art.files, config_name)
    for path, data in art.files.items():
        assert (tdir / path).read_bytes() == data, path
    assert (tdir / config_name).read_bytes() == art.config_bytes


def test_hugging_face_names_keep_their_case(fault_registry, run_blobfs, store, mount):
    """hf.co names are mixed case (user, repository, quantization): Ollama keeps
    them as given, in manifests/<host>/<user>/<repo>/<quant>, and so does blobfs."""
    reg = fault_registry(redirect=True, redirect_status=302)   # Hugging Face answers 302
    art = hf_artifact()
    for data in art.blobs.values():
        reg.add_blob(data)
    repo = "bartowski/Llama-3.2-1B-Instruct-GGUF"
    reg.add_manifest(repo, "Q4_K_M", art.manifest_bytes(), DOCKER_MANIFEST_V2)
    pull(run_blobfs, store, f"{reg.host}/{repo}:Q4_K_M")
    assert (store / "manifests" / reg.host / "bartowski" / "Llama-3.2-1B-Instruct-GGUF" / "Q4_K_M").is_file()
    m = mount()
    tdir = m.path / "models" / reg.host / "bartowski" / "Llama-3.2-1B-Instruct-GGUF" / "Q4_K_M"
    assert tree(tdir) == expected_tree(art.files)
    assert (tdir / "model").read_bytes() == art.files["model"]


# ---------------------------------------------------------------- redirects to the CDN


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_every_redirect_status_to_the_cdn_works(status, fault_registry, run_blobfs, store, mount):
    reg = fault_registry(redirect=True, redirect_status=status)
    big = random.Random(status).randbytes(3 * MiB)      # several range requests
    small = b"template " * 10
    cfg = b'{"model_format":"gguf"}'
    layers = []
    for mt, data in (("application/vnd.ollama.image.model", big),
                     ("application/vnd.ollama.image.template", small)):
        layers.append({"mediaType": mt, "digest": reg.add_blob(data), "size": len(data)})
    manifest = json.dumps({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST_V2,
                           "config": {"mediaType": DOCKER_CONFIG, "digest": reg.add_blob(cfg),
                                      "size": len(cfg)},
                           "layers": layers}).encode()
    reg.add_manifest("library/r", "pulled", manifest, DOCKER_MANIFEST_V2)
    reg.add_manifest("library/r", "mounted", manifest, DOCKER_MANIFEST_V2)

    pull(run_blobfs, store, f"{reg.host}/library/r:pulled")
    assert (store / "blobs" / blob_name(sha256(big))).read_bytes() == big
    redirected = reg.count(lambda r: "/blobs/" in r.path and r.status == status)
    assert redirected >= 1, f"the registry never answered {status}"
    assert reg.count(lambda r: r.listener == "cdn") >= 1, "nothing came from the CDN"

    # the mount reads a second copy of the store's blobs lazily through the same redirects
    run_blobfs(["rm", f"{reg.host}/library/r:pulled"], store=store)
    assert not (store / "blobs" / blob_name(sha256(big))).exists()
    reg.reset_log()
    m = mount()
    tdir = m.path / "models" / reg.host / "library" / "r" / "mounted"
    assert (tdir / "model").read_bytes() == big
    assert (tdir / "template").read_bytes() == small
    assert reg.count(lambda r: "/blobs/" in r.path and r.status == status) >= 1
