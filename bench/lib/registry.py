"""The registry, its CDN, and the blobs they serve.

Debian's docker-registry answers blob GETs with a 307 to an nginx "CDN" whose root
is the registry's storage (tests/lib/dockerreg.py), with autoindex on so that
rclone's and httpdirfs's http backends can list a blob's directory. A profile is
that pair with or without nginx `limit_rate` per connection. Blobs are seeded
random bytes (tests/lib/models.py), made once per size in the run's cache dir.
"""
import os
import sys
import time

from .constants import GiB, MIN_RATE, MiB, SLACK, TOP
from .proc import run_timed

sys.path.insert(0, os.path.join(TOP, "tests", "lib"))
from dockerreg import DockerRegistry  # noqa: E402
import models  # noqa: E402
from models import make_model, push_model  # noqa: E402


def registry(rate):
    """Start the registry and its CDN, capped at RATE per connection if given."""
    return DockerRegistry(cdn=True, cdn_rate=rate, cdn_autoindex=True)


def serve_sizes(bench, reg, profile, sizes):
    """Make (once per run) and push a model of each of SIZES; {size: Served}."""
    served = {}
    for size in sorted(sizes):
        t0 = time.monotonic()
        if size not in bench.models:
            bench.models[size] = make_model(
                os.path.join(bench.work, "model-%d" % size),
                [(models.OLLAMA_MODEL, size), (models.OLLAMA_PARAMS, b"{}")],
                cache_dir=bench.cache)
        push_model(reg, "library/bench-%dm" % (size >> 20), "latest", bench.models[size])
        served[size] = Served(reg, profile, size, bench.models[size])
        print("  %s blob ready and pushed in %.1fs" % (size_name(size),
                                                       time.monotonic() - t0), flush=True)
    return served




class Served:
    """One blob as served by one registry profile."""

    def __init__(self, reg, profile, size, model, repo=None):
        self.reg, self.profile, self.size = reg, profile, size
        self.label = "%dm" % (size >> 20)
        self.repo = repo or "library/bench-%s" % self.label
        self.name = "%s/%s:latest" % (reg.host, self.repo)
        self.layer = model.layer(models.OLLAMA_MODEL)
        self.digest = self.layer.digest
        self.hex = self.layer.hex
        self.source = str(self.layer.path)
        self.url = "%s/v2/%s/blobs/%s" % (reg.url, self.repo, self.digest)
        self.cdn_url = reg.cdn_blob_url(self.digest)
        self.cdn_dir = self.cdn_url.rsplit("/", 1)[0] + "/"

    def mount_path(self, mnt):
        return os.path.join(mnt, "models", self.reg.host, self.repo, "latest", "model")

    def prewarm(self):
        """Put the registry's copy in the page cache (the CDN serves from it)."""
        run_timed(["cat", str(self.reg.blob_path(self.digest))], SLACK + self.size // MIN_RATE)


def size_name(n):
    if n % GiB == 0:
        return "%d GiB" % (n // GiB)
    if n % MiB == 0:
        return "%d MiB" % (n // MiB)
    return "%d bytes" % n
