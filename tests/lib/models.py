"""Build Ollama-style test models (config + layer blobs + manifest) and push them
to a registry with the Registry v2 HTTP API (http.client only).

    model = make_model(tmp_path, [(OLLAMA_MODEL, 256 << 20),
                                  (OLLAMA_TEMPLATE, b"{{ .Prompt }}")],
                       cache_dir=blob_cache)
    push_model(registry, "library/tiny", "latest", model)

Big layers are seeded random bytes written to files in 1 MiB pieces and cached
by (size, seed), so tests in one session share them without regenerating.
"""

import hashlib
import http.client
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

DOCKER_MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
OCI_MANIFEST_V1 = "application/vnd.oci.image.manifest.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
# Accept header that gets either manifest form back unconverted.
MANIFEST_ACCEPT = f"{DOCKER_MANIFEST_V2}, {OCI_MANIFEST_V1}"

OLLAMA_MODEL = "application/vnd.ollama.image.model"
OLLAMA_TEMPLATE = "application/vnd.ollama.image.template"
OLLAMA_PARAMS = "application/vnd.ollama.image.params"
OLLAMA_SYSTEM = "application/vnd.ollama.image.system"
OLLAMA_LICENSE = "application/vnd.ollama.image.license"

_CONFIG_FOR = {DOCKER_MANIFEST_V2: DOCKER_CONFIG, OCI_MANIFEST_V1: OCI_CONFIG}
_PIECE = 1 << 20
_HTTP_TIMEOUT = 120  # seconds per request; a 1 GiB PUT to loopback takes a few


class RegistryError(RuntimeError):
    """The registry answered a push/delete request with an unexpected status."""


@dataclass(frozen=True)
class Blob:
    """One blob of a model: the config or a layer."""

    media_type: str
    digest: str  # "sha256:<hex>"
    size: int
    path: Path
    name: str | None = None  # optional "name" field of the layer descriptor

    @property
    def hex(self):
        return self.digest.split(":", 1)[1]

    def read_bytes(self):
        return self.path.read_bytes()

    def descriptor(self):
        desc = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.name is not None:
            desc["name"] = self.name
        return desc


@dataclass(frozen=True)
class Model:
    """A model ready to push: the exact manifest bytes and the blobs they name."""

    media_type: str
    manifest: dict
    manifest_bytes: bytes
    config: Blob
    layers: list

    @property
    def digest(self):
        """Digest of the manifest, as the registry's Docker-Content-Digest reports it."""
        return "sha256:" + hashlib.sha256(self.manifest_bytes).hexdigest()

    @property
    def blobs(self):
        """The config then the layers."""
        return [self.config, *self.layers]

    def layer(self, media_type):
        """The first layer of MEDIA_TYPE."""
        for blob in self.layers:
            if blob.media_type == media_type:
                return blob
        raise KeyError(f"model has no layer of media type {media_type}")


def random_blob(cache_dir, size, seed=0):
    """Path and digest of a file of SIZE seeded random bytes, generated once per cache_dir."""
    cache_dir = Path(cache_dir)
    path = cache_dir / f"random-{size}-{seed}.bin"
    digest_path = path.with_suffix(".sha256")
    if path.exists() and digest_path.exists():
        return path, digest_path.read_text()
    cache_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    sha = hashlib.sha256()
    partial = path.with_suffix(f".part{os.getpid()}")
    with open(partial, "wb") as f:
        remaining = size
        while remaining:
            piece = rng.randbytes(min(_PIECE, remaining))
            sha.update(piece)
            f.write(piece)
            remaining -= len(piece)
    digest = "sha256:" + sha.hexdigest()
    os.replace(partial, path)
    digest_path.write_text(digest)
    return path, digest


def _bytes_blob(workdir, data):
    """Store DATA in WORKDIR under its Ollama-style name; return (path, digest)."""
    hexdigest = hashlib.sha256(data).hexdigest()
    path = Path(workdir) / f"sha256-{hexdigest}"
    path.write_bytes(data)
    return path, "sha256:" + hexdigest


def _ollama_config(layer_digests):
    return json.dumps({
        "model_format": "gguf",
        "model_family": "llama",
        "model_families": ["llama"],
        "model_type": "0.1B",
        "file_type": "Q4_0",
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": layer_digests},
    }, separators=(",", ":")).encode()


def make_model(workdir, layers, *, config=None, media_type=DOCKER_MANIFEST_V2,
               names=None, cache_dir=None):
    """Build a Model from layer specs.

    layers: (media_type, content) or (media_type, size, seed) tuples; content is
      bytes, an existing file (a path, used in place), or an int size of random
      bytes (seed defaults to the layer's index, so equal specs give equal blobs
      across tests).
    config: config blob bytes; default an Ollama-like gguf config listing the layers.
    media_type: DOCKER_MANIFEST_V2 (what Ollama's registry serves) or OCI_MANIFEST_V1.
    names: {layer index: value of an extra "name" field in that layer's descriptor}.
    cache_dir: where random layers are cached (default WORKDIR).
    """
    if media_type not in _CONFIG_FOR:
        raise ValueError(f"unsupported manifest media type {media_type}")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    names = names or {}
    blobs = []
    for index, spec in enumerate(layers):
        layer_type, content, *rest = spec
        if isinstance(content, int):
            seed = rest[0] if rest else index
            path, digest = random_blob(cache_dir or workdir, content, seed)
        elif isinstance(content, (str, os.PathLike)):
            path = Path(content)
            with open(path, "rb") as f:
                digest = "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
        else:
            path, digest = _bytes_blob(workdir, content)
        blobs.append(Blob(layer_type, digest, path.stat().st_size, path, names.get(index)))
    if config is None:
        config = _ollama_config([blob.digest for blob in blobs])
    config_path, config_digest = _bytes_blob(workdir, config)
    config_blob = Blob(_CONFIG_FOR[media_type], config_digest, len(config), config_path)
    manifest = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": config_blob.descriptor(),
        "layers": [blob.descriptor() for blob in blobs],
    }
    manifest_bytes = json.dumps(manifest, separators=(",", ":")).encode()
    return Model(media_type, manifest, manifest_bytes, config_blob, blobs)


# --- Registry v2 push API ------------------------------------------------

def _base_url(registry):
    """Accept a DockerRegistry or a base URL."""
    return getattr(registry, "url", registry).rstrip("/")


def _request(method, url, body=None, headers=None):
    """One HTTP request; returns (status, headers, body bytes). Streams file bodies."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port,
                                      timeout=_HTTP_TIMEOUT, blocksize=_PIECE)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, target, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def _expect(expected, method, url, status, body):
    if status != expected:
        raise RegistryError(
            f"{method} {url} answered {status}, expected {expected}: "
            f"{body[:500].decode('utf-8', 'replace')}"
        )


def push_blob(registry, repo, data):
    """Upload DATA (bytes or a file path) to REPO unless already there; return its digest.

    Monolithic upload: POST /v2/REPO/blobs/uploads/ then PUT <Location>&digest=...
    """
    base = _base_url(registry)
    if isinstance(data, (bytes, bytearray)):
        digest, size = "sha256:" + hashlib.sha256(data).hexdigest(), len(data)
    else:
        with open(data, "rb") as f:
            digest = "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
        size = os.path.getsize(data)
    blob_url = f"{base}/v2/{repo}/blobs/{digest}"
    status, _, _ = _request("HEAD", blob_url)
    if status == 200:
        return digest

    start_url = f"{base}/v2/{repo}/blobs/uploads/"
    status, headers, body = _request("POST", start_url)
    _expect(202, "POST", start_url, status, body)
    location = urljoin(start_url, headers["Location"])
    put_url = location + ("&" if "?" in location else "?") + f"digest={digest}"
    put_headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
    if isinstance(data, (bytes, bytearray)):
        status, _, body = _request("PUT", put_url, bytes(data), put_headers)
    else:
        with open(data, "rb") as f:
            status, _, body = _request("PUT", put_url, f, put_headers)
    _expect(201, "PUT", put_url, status, body)
    return digest


def push_manifest(registry, repo, tag, manifest_bytes, media_type):
    """PUT a manifest under TAG; return the digest the registry reports."""
    url = f"{_base_url(registry)}/v2/{repo}/manifests/{tag}"
    status, headers, body = _request("PUT", url, manifest_bytes, {"Content-Type": media_type})
    _expect(201, "PUT", url, status, body)
    return headers["Docker-Content-Digest"]


def push_model(registry, repo, tag, model):
    """Push every blob of MODEL, then its manifest as REPO:TAG; return the manifest digest."""
    for blob in model.blobs:
        push_blob(registry, repo, blob.path)
    return push_manifest(registry, repo, tag, model.manifest_bytes, model.media_type)


def delete_manifest(registry, repo, reference):
    """Delete a manifest by tag or digest (the registry only deletes by digest,
    so a tag is resolved first; this removes every tag pointing at it)."""
    base = _base_url(registry)
    if not reference.startswith("sha256:"):
        url = f"{base}/v2/{repo}/manifests/{reference}"
        status, headers, body = _request("HEAD", url, headers={"Accept": MANIFEST_ACCEPT})
        _expect(200, "HEAD", url, status, body)
        reference = headers["Docker-Content-Digest"]
    url = f"{base}/v2/{repo}/manifests/{reference}"
    status, _, body = _request("DELETE", url)
    _expect(202, "DELETE", url, status, body)


def delete_blob(registry, repo, digest):
    """Unlink blob DIGEST from REPO: the registry then answers 404 for it (its
    file stays in storage, so a CDN URL obtained earlier keeps working)."""
    url = f"{_base_url(registry)}/v2/{repo}/blobs/{digest}"
    status, _, body = _request("DELETE", url)
    _expect(202, "DELETE", url, status, body)
