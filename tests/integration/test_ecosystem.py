"""Integration tests of how blobfs fits the world around it, through real parts:

- mirrors: Debian's docker-registry as a pull-through cache in front of another
  one, named by a configuration file, and what happens when the cache is down;
- the configuration file: where it is looked for, what overrides what, and a
  bad file refused with FILE:LINE: reason and nothing done;
- HTTP proxies (http_proxy, NO_PROXY) through a forward proxy written here;
- the cache quota (--max-cache, -o max_cache): least recently used first,
  never a blob in use;
- `blobfs status` next to a mount that is fetching, and after it is gone;
- Ollama: a store laid out by hand as Ollama does, and stores blobfs wrote,
  walked by Ollama's rules (manifests/*/*/*/*, blobs/sha256-<hex>);
- logging: syslog when detached, stderr with -f, request lines with --debug;
- contrib/: the fstab helper under mount(8), the systemd unit, the bash
  completion; and the manual pages.

Every blobfs run gets a clean environment: no proxy variables, no BLOBFS_*
from the caller, and BLOBFS_CONFIG naming an empty file unless a test says
otherwise, so that the machine's /etc/blobfs/config cannot change a result.
"""

import hashlib
import http.client
import http.server
import json
import os
import re
import shlex
import shutil
import socket
import socketserver
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

import blobfsmount
from children import READ_ALL, ok, python_json, run
from dockerreg import DockerRegistry, PullThroughCache
from models import (
    DOCKER_CONFIG, DOCKER_MANIFEST_V2, OLLAMA_LICENSE, OLLAMA_MODEL, OLLAMA_PARAMS,
    OLLAMA_TEMPLATE, make_model, push_model,
)
from servers import stopped_after
from storefiles import hex_of, service_section, sha256_file, store_blob, wait_for

MiB = 1 << 20
REPO_DIR = Path(__file__).resolve().parents[2]
CONTRIB = REPO_DIR / "contrib"
MAN_DIR = REPO_DIR / "man"
PYTHON = "/usr/bin/python3"
PROXY_VARS = {"http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy"}
OLLAMA_DEFAULT_HOST = "registry.ollama.ai"
BLOB_NAME = re.compile(r"sha256-[0-9a-f]{64}")

MOUNT_TIMEOUT = 15.0
UNMOUNT_TIMEOUT = 10.0
WATCHDOG = 120.0         # seconds a test may keep its mounts before the daemons are killed


# ================================================================ helpers


def unescape_mount_field(text):
    return re.sub(r"\\(\d{3})", lambda m: chr(int(m[1], 8)), text)


def proc_mounts():
    """[(source, mountpoint, fstype)] from /proc/mounts."""
    out = []
    with open("/proc/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 3:
                out.append((unescape_mount_field(fields[0]), unescape_mount_field(fields[1]),
                            fields[2]))
    return out


def blobfs_mounted(path):
    return any(point == str(path) and fstype == "fuse.blobfs"
               for _, point, fstype in proc_mounts())


def detach(path):
    if any(point == str(path) for _, point, _ in proc_mounts()):
        subprocess.run(["fusermount3", "-uz", str(path)], capture_output=True, timeout=10)


def clean_env(config, extra=None):
    """The environment for a blobfs run: the caller's without proxies and BLOBFS_*,
    with BLOBFS_CONFIG=CONFIG (None: leave it unset), plus EXTRA (None values unset)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("BLOBFS_") and k.lower() not in PROXY_VARS}
    if config is not None:
        env["BLOBFS_CONFIG"] = str(config)
    for key, value in (extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    return env


# Walks a models directory the way Ollama does (server/manifest.go, images.go):
# every manifests/*/*/*/* is a manifest; each layer and the config must be
# blobs/sha256-<hex> of the size the manifest says; READ=1 also hashes them.
OLLAMA_WALK = r"""
import glob, hashlib, json, os, sys
root, read = sys.argv[1], sys.argv[2] == "1"
out = {"manifests": [], "problems": [], "blobs_checked": 0}
for path in sorted(glob.glob(os.path.join(root, "manifests", "*", "*", "*", "*"))):
    rel = os.path.relpath(path, root)
    if not os.path.isfile(path):
        out["problems"].append(f"{rel}: not a file")
        continue
    try:
        with open(path, "rb") as f:
            m = json.load(f)
    except (OSError, ValueError) as e:
        out["problems"].append(f"{rel}: unreadable manifest: {e}")
        continue
    out["manifests"].append(rel)
    for desc in [m.get("config")] + list(m.get("layers") or []):
        if not isinstance(desc, dict) or not str(desc.get("digest", "")).startswith("sha256:"):
            out["problems"].append(f"{rel}: bad descriptor {desc!r}")
            continue
        blob = os.path.join(root, "blobs", desc["digest"].replace(":", "-"))
        try:
            st = os.stat(blob)
        except OSError as e:
            out["problems"].append(f"{rel}: {desc['digest']}: {e}")
            continue
        if st.st_size != desc["size"]:
            out["problems"].append(f"{rel}: {desc['digest']}: size {st.st_size}, "
                                   f"manifest says {desc['size']}")
            continue
        if read:
            try:
                sha = hashlib.sha256()
                with open(blob, "rb") as f:
                    for piece in iter(lambda: f.read(1 << 20), b""):
                        sha.update(piece)
            except OSError as e:
                out["problems"].append(f"{rel}: {desc['digest']}: read: {e}")
                continue
            if "sha256:" + sha.hexdigest() != desc["digest"]:
                out["problems"].append(f"{rel}: {desc['digest']}: content hashes to "
                                       f"sha256:{sha.hexdigest()}")
                continue
        out["blobs_checked"] += 1
print(json.dumps(out))
"""


def ollama_walk(root, read=True, timeout=120):
    return python_json(OLLAMA_WALK, str(root), "1" if read else "0", timeout=timeout)


def lay_ollama_model(root, host, ns, name, tag, layers):
    """Write a model into ROOT as Ollama does: each blob as blobs/sha256-<hex>, the
    manifest (Docker v2 JSON, compact, Ollama's media types) under
    manifests/HOST/NS/NAME/TAG. LAYERS: [(media_type, bytes)]. Returns
    {"manifest": dict, "blobs": {digest: bytes}}."""
    root = Path(root)
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    blobs, descriptors = {}, []

    def put(data):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        store_blob(root, digest).write_bytes(data)
        blobs[digest] = data
        return digest

    for media_type, data in layers:
        descriptors.append({"mediaType": media_type, "digest": put(data), "size": len(data)})
    config = json.dumps({
        "model_format": "gguf", "model_family": "llama", "model_families": ["llama"],
        "model_type": "1B", "file_type": "Q4_K_M", "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in descriptors]},
    }, separators=(",", ":")).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST_V2,
        "config": {"mediaType": DOCKER_CONFIG, "digest": put(config), "size": len(config)},
        "layers": descriptors,
    }
    path = root / "manifests" / host / ns / name / tag
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(json.dumps(manifest, separators=(",", ":")).encode())
    return {"manifest": manifest, "blobs": blobs}


def ls_names(stdout):
    """Model names in `blobfs ls` output."""
    return [line.split()[0] for line in stdout.splitlines()[1:] if line.strip()]


def ls_local(stdout):
    """{name: LOCAL column} of `blobfs ls` output."""
    return {line.split()[0]: line.split()[-1] for line in stdout.splitlines()[1:] if line.strip()}


# ================================================================ fixtures


@pytest.fixture
def empty_config(tmp_path):
    path = tmp_path / "empty.conf"
    path.write_text("")
    return path


@pytest.fixture
def blobfs(run_blobfs, empty_config):
    """blobfs(*ARGS, config=<empty file>, env=None, timeout=60, cwd=None) ->
    CompletedProcess of BLOBFS ARGS... (no --store), in the clean environment
    (see clean_env): conftest's run_blobfs with this file's environment policy."""

    def run_it(*args, config=empty_config, env=None, timeout=60, cwd=None):
        return run_blobfs(args, store=None, base_env=clean_env(config), env=env,
                          timeout=timeout, cwd=cwd)

    return run_it


@pytest.fixture
def mount(blobfs_bin, store, empty_config, request):
    """mount(*OPTIONS, store=<store>, global_args=(), config=<empty>, env=None,
    foreground=True, debug=False, path=None, wait=True) -> blobfsmount.Mount in
    the clean environment (see clean_env); all are taken down after the test,
    and their logs printed if it failed."""
    mounts = blobfsmount.Mounts(blobfs_bin, store, request, watchdog=WATCHDOG)

    def start(*options, config=empty_config, env=None, debug=False, **settings):
        return mounts.start(*options, base_env=clean_env(config, env), debug=debug, **settings)

    yield start
    mounts.finish()


@pytest.fixture
def docker_registries():
    """Factory: docker_registries(**DockerRegistry options) or
    docker_registries(proxy_of=URL) for a pull-through cache; all stopped after."""
    yield from stopped_after(lambda proxy_of=None, **options:
                             PullThroughCache(proxy_of, **options) if proxy_of
                             else DockerRegistry(**options))


def blobfs_requests(reg, since):
    """Entries of a DockerRegistry's access log sent by blobfs (its User-Agent)."""
    return [e for e in reg.registry_log_entries(since=since)
            if e["user_agent"].startswith("blobfs/")]


def blob_gets(entries):
    """Digests of the blob GETs among access log ENTRIES."""
    found = set()
    for e in entries:
        match = re.search(r"/blobs/(sha256:[0-9a-f]{64})", e["uri"])
        if match and e["method"] == "GET":
            found.add(match[1])
    return found


def read_through(path, expected_digest, timeout=60):
    got = python_json(READ_ALL, str(path), timeout=timeout)
    assert got["ok"], f"reading {path}: {got}"
    assert got["sha"] == expected_digest, f"{path}: wrong bytes"
    return got


def write_config(path, text):
    Path(path).write_text(text)
    return Path(path)


# ================================================================ a. mirrors


def test_pull_through_a_mirror_then_fall_back_when_it_is_down(
        docker_registries, blobfs, store, tmp_path, blob_cache):
    upstream = docker_registries()
    alpha = make_model(tmp_path / "alpha", [(OLLAMA_MODEL, 3 * MiB, 11),
                                            (OLLAMA_TEMPLATE, b"{{ .Prompt }} alpha")],
                       cache_dir=blob_cache)
    beta = make_model(tmp_path / "beta", [(OLLAMA_MODEL, 2 * MiB, 12)], cache_dir=blob_cache)
    push_model(upstream, "library/alpha", "latest", alpha)
    push_model(upstream, "library/beta", "latest", beta)
    mirror = docker_registries(proxy_of=upstream.url)
    empty = docker_registries()      # a mirror without the models: it answers 404
    config = write_config(tmp_path / "blobfs.conf",
                          f"# every pull of {upstream.host} goes through the cache first\n"
                          f"[host {upstream.host}]\n"
                          f"mirror = {empty.url}\n"
                          f"mirror = {mirror.url}\n")

    up_mark, mirror_mark = upstream.registry_log_mark(), mirror.registry_log_mark()
    empty_mark = empty.registry_log_mark()
    ok(blobfs("--store", store, "pull", "--quiet", f"{upstream.host}/library/alpha",
              config=config))
    tried_first = blobfs_requests(empty, empty_mark)
    assert tried_first and tried_first[0]["uri"] == "/v2/library/alpha/manifests/latest" \
        and tried_first[0]["status"] == 404, f"the first mirror was not tried first: {tried_first}"
    via_mirror = blobfs_requests(mirror, mirror_mark)
    assert any(e["uri"] == "/v2/library/alpha/manifests/latest" for e in via_mirror), via_mirror
    assert blob_gets(via_mirror) == {b.digest for b in alpha.blobs}, \
        "blobfs did not fetch every blob of alpha from the mirror"
    direct = blobfs_requests(upstream, up_mark)
    assert direct == [], f"blobfs went to the upstream although the mirror worked: {direct}"
    assert blob_gets(upstream.registry_log_entries(since=up_mark)) >= {alpha.layers[0].digest}, \
        "the upstream never saw the mirror fetch alpha's model (is it really a pull-through cache?)"
    for blob in alpha.blobs:
        assert sha256_file(store_blob(store, blob.digest)) == blob.digest
    manifest = store / "manifests" / upstream.host / "library" / "alpha" / "latest"
    assert manifest.read_bytes() == alpha.manifest_bytes, \
        "the manifest is stored under the registry's name, byte for byte"

    # The cache goes down: the next pull falls back to the registry itself.
    mirror.stop()
    up_mark = upstream.registry_log_mark()
    started = time.monotonic()
    result = ok(blobfs("--store", store, "pull", "--quiet", f"{upstream.host}/library/beta",
                       config=config, timeout=60))
    assert time.monotonic() - started < 20, "falling back to the registry took too long"
    assert "mirror" in result.stderr, f"no word about the failing mirror:\n{result.stderr}"
    direct = blobfs_requests(upstream, up_mark)
    assert blob_gets(direct) == {b.digest for b in beta.blobs}, direct
    for blob in beta.blobs:
        assert sha256_file(store_blob(store, blob.digest)) == blob.digest
    ok(blobfs("--store", store, "verify"))


class SlammingServer:
    """Accepts TCP connections on 127.0.0.1 and closes them at once, counting them:
    a mirror that is up but broken."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def stop(self):
        self.sock.close()


def test_a_broken_mirror_is_left_out_after_it_failed(fault_registry, blobfs, store, tmp_path):
    reg = fault_registry()
    _, digests = reg.add_model("library/m", "latest", [(OLLAMA_MODEL, os.urandom(3 * MiB)),
                                                       (OLLAMA_TEMPLATE, b"t" * 100),
                                                       (OLLAMA_PARAMS, b"{}")])
    broken = SlammingServer()
    try:
        config = write_config(tmp_path / "blobfs.conf",
                              f"[host {reg.host}]\nmirror = {broken.url}\n")
        result = ok(blobfs("--store", store, "pull", "--quiet", f"{reg.host}/library/m",
                           config=config))
        assert "mirror" in result.stderr, result.stderr
        assert 1 <= broken.connections <= 2, \
            f"the broken mirror got {broken.connections} connections (at most 2 attempts, " \
            "then left out)"
        for digest in digests:
            assert reg.count(digest=digest, listener="registry") >= 1
            assert sha256_file(store_blob(store, digest)) == digest
    finally:
        broken.stop()


def test_mount_reads_through_the_mirror(docker_registries, blobfs, store, mount, tmp_path,
                                        blob_cache):
    upstream = docker_registries()
    gamma = make_model(tmp_path / "gamma", [(OLLAMA_MODEL, 4 * MiB, 13),
                                            (OLLAMA_PARAMS, b'{"temperature":0.1}')],
                       cache_dir=blob_cache)
    push_model(upstream, "library/gamma", "v1", gamma)
    push_model(upstream, "library/gamma", "v2", gamma)
    delta = make_model(tmp_path / "delta", [(OLLAMA_MODEL, MiB, 14)], cache_dir=blob_cache)
    push_model(upstream, "library/delta", "latest", delta)
    mirror = docker_registries(proxy_of=upstream.url)
    config = write_config(tmp_path / "blobfs.conf",
                          f"[host {upstream.host}]\nmirror = {mirror.url}/\n")
    up_mark, mirror_mark = upstream.registry_log_mark(), mirror.registry_log_mark()
    ok(blobfs("--store", store, "pull", "--lazy", "--quiet",
              f"{upstream.host}/library/gamma:v1", config=config))
    m = mount(config=config)
    tag = m.path / "models" / upstream.host / "library" / "gamma" / "v1"
    read_through(tag / "model", gamma.layers[0].digest)
    read_through(tag / "params", gamma.layers[1].digest)
    via_mirror = blobfs_requests(mirror, mirror_mark)
    assert {gamma.layers[0].digest, gamma.layers[1].digest} <= blob_gets(via_mirror), via_mirror
    # Discovery of a tag the store does not have asks the mirror too.
    discovered = m.path / "models" / upstream.host / "library" / "gamma" / "v2"
    assert sorted(os.listdir(discovered)) == ["config.json", "manifest.json", "model", "params"]
    assert any(e["uri"] == "/v2/library/gamma/manifests/v2"
               for e in blobfs_requests(mirror, mirror_mark)), "discovery did not ask the mirror"
    assert blobfs_requests(upstream, up_mark) == [], \
        "the mount went to the upstream although the mirror worked"
    # The cache goes down under a running mount: discovery and reads go to the registry.
    mirror.stop()
    read_through(m.path / "models" / upstream.host / "library" / "delta" / "latest" / "model",
                 delta.layers[0].digest)
    direct = blobfs_requests(upstream, up_mark)
    assert any(e["uri"] == "/v2/library/delta/manifests/latest" for e in direct), direct
    assert delta.layers[0].digest in blob_gets(direct), direct


# ================================================================ b. configuration


def test_store_setting_precedence_and_file_locations(blobfs, mount, tmp_path):
    stores = {}
    for which in ("cfg", "user", "env", "cli"):
        stores[which] = tmp_path / f"store-{which}"
        lay_ollama_model(stores[which], OLLAMA_DEFAULT_HOST, "library", f"from-{which}",
                         "latest", [(OLLAMA_MODEL, which.encode() * 1000)])
    config = write_config(tmp_path / "only.conf", f"store = {stores['cfg']}\n")

    def listed(**kwargs):
        result = ok(blobfs("ls", **kwargs))
        return ls_names(result.stdout)

    assert listed(config=config) == ["from-cfg:latest"]
    assert listed(config=config, env={"BLOBFS_STORE": stores["env"]}) == ["from-env:latest"]
    result = ok(blobfs("--store", stores["cli"], "ls", config=config,
                       env={"BLOBFS_STORE": stores["env"]}))
    assert ls_names(result.stdout) == ["from-cli:latest"]
    result = ok(blobfs("status", config=config))
    assert result.stdout.strip() == f"no blobfs mounts of '{stores['cfg']}'", result.stdout
    # The mount option store= is the command line too: it wins over both.
    m = mount(f"store={stores['cli']}", store=None, config=config,
              env={"BLOBFS_STORE": stores["env"]})
    assert os.listdir(m.path / "models" / OLLAMA_DEFAULT_HOST / "library") == ["from-cli"]

    # Without BLOBFS_CONFIG: $XDG_CONFIG_HOME/blobfs/config, else ~/.config/blobfs/config.
    xdg = tmp_path / "xdg"
    write_config_dir = xdg / "blobfs"
    write_config_dir.mkdir(parents=True)
    write_config(write_config_dir / "config", f"store = {stores['user']}\n")
    assert listed(config=None, env={"XDG_CONFIG_HOME": xdg}) == ["from-user:latest"]
    home = tmp_path / "home"
    (home / ".config" / "blobfs").mkdir(parents=True)
    write_config(home / ".config" / "blobfs" / "config", f"store = {stores['user']}\n")
    assert listed(config=None, env={"XDG_CONFIG_HOME": None, "HOME": home}) == \
        ["from-user:latest"]
    # BLOBFS_CONFIG is the only file read when it is set.
    assert listed(config=config, env={"XDG_CONFIG_HOME": xdg}) == ["from-cfg:latest"]


def manifest_gets(reg):
    return reg.count(lambda r: r.method == "GET" and "/manifests/" in r.path)


def test_retries_from_a_host_section_and_the_command_line_wins(fault_registry, blobfs, store,
                                                                tmp_path):
    reg = fault_registry()
    reg.add_model("library/m", "latest", [(OLLAMA_MODEL, b"m" * 1000)])
    reg.fault("status", on="manifest", code=500)
    name = f"{reg.host}/library/m"

    def attempts(config, *args):
        reg.reset_log()
        result = blobfs("--store", store, "pull", "--quiet", *args, name, config=config,
                        timeout=60)
        assert result.returncode != 0, "the pull succeeded against a registry answering 500"
        assert "500" in result.stderr, result.stderr
        return manifest_gets(reg)

    host_section = write_config(tmp_path / "host.conf",
                                f"retries = 5\n\n[host {reg.host}]\nretries = 2\n")
    assert attempts(host_section) == 2, "the host section's retries = 2 was not applied"
    assert attempts(host_section, "--retries", "1") == 1, "--retries 1 did not win"
    other_host = write_config(tmp_path / "other.conf",
                              "retries = 3\n[host other.example:5000]\nretries = 9\n")
    assert attempts(other_host) == 3, "another host's section applied, or the global one did not"
    # A later section of the same host in the same file overrides an earlier one.
    twice = write_config(tmp_path / "twice.conf",
                         f"[host {reg.host}]\nretries = 4\n[global]\nretries = 7\n"
                         f"[HOST {reg.host.upper()}]\nretries = 1\n")
    assert attempts(twice) == 1


@pytest.mark.parametrize("text, line, reason", [
    ("connections = 8\n\nconections = 4\n", 3, "unknown setting 'conections'"),
    ("[host 127.0.0.1:5000]\nstore = /srv/models\n", 2,
     "'store' is for the whole store, not one host"),
    ("mirror = http://127.0.0.1:5000\n", 1, "'mirror' belongs in a [host NAME] section"),
    ("# ok\n; ok\nretries = 101\n", 3, "'retries' wants a number from 1 to 100, not '101'"),
    ("[hots 127.0.0.1]\n", 1, "unknown section '[hots 127.0.0.1]'"),
    ("[host 127.0.0.1:5000]\nmirror = ftp://cache.example\n", 2,
     "'mirror' wants an http:// or https:// URL, not 'ftp://cache.example'"),
    ("max_cache = lots\n", 1, "'max-cache' wants a size such as 200G, not 'lots'"),
    ("insecure = maybe\n", 1, "'insecure' wants yes or no, not 'maybe'"),
    ("just words\n", 1, "expected 'key = value'"),
])
def test_a_bad_configuration_file_is_refused_and_nothing_is_done(
        fault_registry, blobfs, mount, tmp_path, text, line, reason):
    reg = fault_registry()
    reg.add_model("library/m", "latest", [(OLLAMA_MODEL, b"m" * 1000)])
    config = write_config(tmp_path / "bad.conf", text)
    store = tmp_path / "not-yet"     # must not be created
    result = blobfs("--store", store, "pull", f"{reg.host}/library/m", config=config)
    assert result.returncode == 1, f"exit {result.returncode}:\n{result.stderr}"
    assert f"{config}:{line}: {reason}" in result.stderr, result.stderr
    assert reg.count() == 0, "a request went out despite the bad configuration"
    assert not store.exists(), "the store was created despite the bad configuration"
    # The mount refuses too, before mounting.
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = blobfs("--store", store, "mount", mnt, config=config, timeout=20)
    assert result.returncode == 1 and f"{config}:{line}:" in result.stderr, result.stderr
    assert not blobfs_mounted(mnt)


def test_blobfs_config_naming_a_missing_file_is_an_error(blobfs, store, tmp_path):
    missing = tmp_path / "nope.conf"
    result = blobfs("--store", store, "ls", config=missing)
    assert result.returncode == 1
    assert str(missing) in result.stderr and "No such file" in result.stderr, result.stderr


def test_values_may_be_quoted_and_keys_use_underscores(fault_registry, blobfs, tmp_path):
    reg = fault_registry()
    reg.add_model("library/m", "latest", [(OLLAMA_MODEL, b"m" * 1000)])
    reg.fault("status", on="manifest", code=503)
    store = tmp_path / "quoted store"
    config = write_config(tmp_path / "q.conf",
                          f'  store = "{store}"  \n[host {reg.host}]\n\tRETRIES\t=\t"2"\r\n'
                          f'stall_timeout = 5\n')
    result = blobfs("pull", "--quiet", f"{reg.host}/library/m", config=config)
    assert result.returncode != 0
    assert manifest_gets(reg) == 2
    assert (store / ".blobfs").is_dir(), "the quoted store path was not used"


# ================================================================ c. proxies


class ForwardProxy:
    """A small HTTP forward proxy on 127.0.0.1 that logs every request it relays
    ("GET http://host:port/path ..."), streaming bodies both ways."""

    HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "te",
           "trailers", "transfer-encoding", "upgrade"}

    def __init__(self):
        self.log = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def relay(self):
                with proxy.lock:
                    proxy.log.append((self.command, self.path))
                target = urllib.parse.urlsplit(self.path)
                if target.scheme != "http" or not target.hostname:
                    self.send_error(400, "absolute http:// URL expected")
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in proxy.HOP}
                upstream = http.client.HTTPConnection(target.hostname, target.port or 80,
                                                      timeout=30)
                try:
                    path = target.path or "/"
                    if target.query:
                        path += "?" + target.query
                    upstream.request(self.command, path, headers=headers)
                    response = upstream.getresponse()
                    body_length = response.getheader("Content-Length")
                    self.send_response(response.status, response.reason)
                    for key, value in response.getheaders():
                        if key.lower() not in proxy.HOP:
                            self.send_header(key, value)
                    if body_length is None and self.command != "HEAD":
                        data = response.read()
                        self.send_header("Content-Length", str(len(data)))
                        self.end_headers()
                        self.wfile.write(data)
                        return
                    self.end_headers()
                    if self.command != "HEAD":
                        while True:
                            piece = response.read(1 << 16)
                            if not piece:
                                break
                            self.wfile.write(piece)
                finally:
                    upstream.close()

            do_GET = relay
            do_HEAD = relay

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def requests(self):
        with self.lock:
            return list(self.log)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def forward_proxy():
    proxy = ForwardProxy()
    yield proxy
    proxy.stop()


def test_http_proxy_is_used_and_no_proxy_bypasses_it(registry, blobfs, mount, forward_proxy,
                                                      tmp_path, blob_cache):
    model = make_model(tmp_path / "m", [(OLLAMA_MODEL, 2 * MiB, 21),
                                        (OLLAMA_TEMPLATE, b"{{ .Prompt }} proxied")],
                       cache_dir=blob_cache)
    push_model(registry, "library/p", "latest", model)
    name = f"{registry.host}/library/p"
    prefix = f"http://{registry.host}/v2/library/p/"

    store1 = tmp_path / "s1"
    ok(blobfs("--store", store1, "pull", "--quiet", name,
              env={"http_proxy": forward_proxy.url}))
    seen = [path for _, path in forward_proxy.requests()]
    assert f"{prefix}manifests/latest" in seen, seen
    for blob in model.blobs:
        assert f"{prefix}blobs/{blob.digest}" in seen, f"{blob.digest} did not go through the proxy"
        assert sha256_file(store_blob(store1, blob.digest)) == blob.digest

    before = len(forward_proxy.requests())
    store2 = tmp_path / "s2"
    ok(blobfs("--store", store2, "pull", "--quiet", name,
              env={"http_proxy": forward_proxy.url, "NO_PROXY": "127.0.0.1"}))
    assert forward_proxy.requests()[before:] == [], "NO_PROXY=127.0.0.1 did not bypass the proxy"
    for blob in model.blobs:
        assert sha256_file(store_blob(store2, blob.digest)) == blob.digest

    # The mount's daemon honours them as well.
    store3 = tmp_path / "s3"
    ok(blobfs("--store", store3, "pull", "--lazy", "--quiet", name,
              env={"http_proxy": forward_proxy.url}))
    before = len(forward_proxy.requests())
    m = mount(store=store3, env={"http_proxy": forward_proxy.url})
    read_through(m.path / "models" / registry.host / "library" / "p" / "latest" / "model",
                 model.layers[0].digest)
    seen = [path for _, path in forward_proxy.requests()[before:]]
    assert f"{prefix}blobs/{model.layers[0].digest}" in seen, seen


# ================================================================ d. the cache quota


def three_models(registry, tmp_path, blob_cache, size=3 * MiB):
    models = {}
    for i, name in enumerate(("one", "two", "three")):
        models[name] = make_model(tmp_path / name, [(OLLAMA_MODEL, size, 30 + i)],
                                  cache_dir=blob_cache)
        push_model(registry, f"library/{name}", "latest", models[name])
    return models


def set_atime(path, seconds_ago):
    st = os.stat(path)
    os.utime(path, ns=(time.time_ns() - int(seconds_ago * 1e9), st.st_mtime_ns))


def test_pull_with_max_cache_evicts_the_least_recently_used(registry, blobfs, store, tmp_path,
                                                            blob_cache):
    models = three_models(registry, tmp_path, blob_cache)
    one, two = models["one"], models["two"]
    name = {k: f"{registry.host}/library/{k}:latest" for k in models}
    ok(blobfs("--store", store, "pull", "--quiet", name["one"]))
    for blob in one.blobs:
        set_atime(store_blob(store, blob.digest), 60)
    # one + two (6 MiB) do not fit in 4M: one, the least recently used, goes.
    # (The quota from the configuration file; the command line's comes next.)
    quota = write_config(tmp_path / "quota.conf", "max-cache = 4M\n")
    ok(blobfs("--store", store, "pull", "--quiet", name["two"], config=quota))
    assert not store_blob(store, one.layers[0].digest).exists(), "one's model was not evicted"
    for blob in two.blobs:
        assert sha256_file(store_blob(store, blob.digest)) == blob.digest, \
            "the model being pulled lost a blob"
    local = ls_local(ok(blobfs("--store", store, "ls")).stdout)
    assert local[name["two"]] == "100%", local
    assert local[name["one"]] != "100%", local
    # Pull one again under the same quota: now two is the least recently used.
    ok(blobfs("--store", store, "--max-cache", "4M", "pull", "--quiet", name["one"]))
    assert not store_blob(store, two.layers[0].digest).exists(), "two's model was not evicted"
    assert sha256_file(store_blob(store, one.layers[0].digest)) == one.layers[0].digest
    # gc --max-cache goes by atime: make one look unused for long, two recently used.
    ok(blobfs("--store", store, "pull", "--quiet", name["two"]))
    set_atime(store_blob(store, one.layers[0].digest), 3600)
    set_atime(store_blob(store, two.layers[0].digest), 5)
    ok(blobfs("--store", store, "--max-cache", "4M", "gc"))
    assert not store_blob(store, one.layers[0].digest).exists(), \
        "gc --max-cache evicted by something other than atime"
    assert store_blob(store, two.layers[0].digest).exists()
    # Nothing evicted is lost for good: the manifests stay, and the blobs come back.
    verify = blobfs("--store", store, "verify")
    assert "CORRUPT" not in verify.stdout
    ok(blobfs("--store", store, "pull", "--quiet", name["one"]))
    assert sha256_file(store_blob(store, one.layers[0].digest)) == one.layers[0].digest


HOLD_OPEN = r"""
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
os.read(fd, 4096)
print("open", flush=True)
sys.stdin.read()
os.close(fd)
"""


def test_mount_max_cache_evicts_lru_but_never_an_open_blob(registry, blobfs, store, mount,
                                                          tmp_path, blob_cache):
    models = three_models(registry, tmp_path, blob_cache)
    one, two, three = models["one"], models["two"], models["three"]
    host = registry.host
    for k in ("one", "two"):
        ok(blobfs("--store", store, "pull", "--quiet", f"{host}/library/{k}"))
    ok(blobfs("--store", store, "pull", "--lazy", "--quiet", f"{host}/library/three"))
    m = mount("max_cache=7M")
    tag = {k: m.path / "models" / host / "library" / k / "latest" for k in models}

    # A reader holds one's model open (say an inference server loaded it an hour ago).
    holder = subprocess.Popen([PYTHON, "-c", HOLD_OPEN, str(tag["one"] / "model")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        set_atime(store_blob(store, one.layers[0].digest), 3600)   # the oldest, but open
        set_atime(store_blob(store, two.layers[0].digest), 1800)
        mark = registry.registry_log_mark()
        # Reading three (3 MiB) takes the store to 9 MiB: over 7M.
        read_through(tag["three"] / "model", three.layers[0].digest)
        assert wait_for(lambda: not store_blob(store, two.layers[0].digest).exists(), 10), \
            "two's model, the least recently used blob not in use, was not evicted"
        assert store_blob(store, one.layers[0].digest).exists(), \
            "one's model was evicted while the mount had it open"
        assert store_blob(store, three.layers[0].digest).exists()
        # Evicted, still listed, with its size; fetched again on read.
        assert os.stat(tag["two"] / "model").st_size == two.layers[0].size
        read_through(tag["two"] / "model", two.layers[0].digest)
        assert two.layers[0].digest in blob_gets(registry.registry_log_entries(since=mark)), \
            "two's model was not fetched again"
        assert store_blob(store, one.layers[0].digest).exists(), \
            "one's model was evicted while the mount had it open"
    finally:
        holder.stdin.close()
        holder.wait(10)
    read_through(tag["one"] / "model", one.layers[0].digest)
    assert m.unmount() == 0
    # A mount that starts over its quota evicts at once.
    mount("max_cache=4M")

    def cached():
        return sum(p.stat().st_blocks * 512 for p in (store / "blobs").iterdir())

    assert wait_for(lambda: cached() <= 4 * MiB, 10), f"{cached()} bytes cached, quota 4M"


# ================================================================ e. status


def status_of(blobfs, store):
    return ok(blobfs("--store", store, "status")).stdout


def test_status_shows_a_mount_and_the_blob_it_is_fetching(fault_registry, blobfs, store, mount):
    reg = fault_registry()
    data = os.urandom(4 * MiB)
    _, (digest,) = reg.add_model("library/slow", "latest", [(OLLAMA_MODEL, data)])
    ok(blobfs("--store", store, "pull", "--lazy", "--quiet", f"{reg.host}/library/slow"))
    m = mount()
    # The mount publishes its state once its threads run, a moment after mounting.
    assert wait_for(lambda: f"mount {m.path} (pid {m.proc.pid}, up " in status_of(blobfs, store),
                    5), status_of(blobfs, store)
    out = status_of(blobfs, store)
    assert re.search(r"reads: 0,", out), out

    reg.fault("trickle", digest=digest, rate=64 * 1024)
    model = m.path / "models" / reg.host / "library" / "slow" / "latest" / "model"
    reader = subprocess.Popen(["cat", str(model)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        seen = {}

        def busy():
            out = status_of(blobfs, store)
            seen["out"] = out
            reads = re.search(r"reads: (\d+)", out)
            fetched = re.search(r"network: ([\d.]+) (\w+) fetched in (\d+) requests", out)
            return (f"fetching {digest}: " in out and reads and int(reads[1]) >= 1
                    and fetched and float(fetched[1]) > 0)

        assert wait_for(busy, 15, interval=0.3), \
            f"status never showed the read and the blob in flight:\n{seen.get('out')}"
        out = seen["out"]
        assert f"mount {m.path} (pid {m.proc.pid}" in out
        match = re.search(rf"fetching {digest}: (\d+)% of ([\d.]+ \w+)", out)
        assert match and int(match[1]) < 100 and match[2] == "4.19 MB", out
    finally:
        reader.kill()
        reader.wait(10)
    reg.clear_faults()
    assert m.unmount() == 0
    out = status_of(blobfs, store)
    assert out.strip() == f"no blobfs mounts of '{store}'", out
    assert list((store / ".blobfs" / "run").glob("*.json")) == []


def test_status_ignores_the_file_of_a_killed_daemon(blobfs, store, mount):
    lay_ollama_model(store, OLLAMA_DEFAULT_HOST, "library", "tiny", "latest",
                     [(OLLAMA_MODEL, b"t" * 5000)])
    live = mount()
    dead = mount()
    run_dir = store / ".blobfs" / "run"
    assert wait_for(lambda: all((run_dir / f"{m.proc.pid}.json").exists() for m in (live, dead)),
                    5), \
        f"no status file for a mount: {sorted(os.listdir(run_dir)) if run_dir.exists() else None}"
    dead.proc.kill()
    dead.proc.wait(10)
    detach(dead.path)
    out = status_of(blobfs, store)
    assert f"mount {live.path} (pid {live.proc.pid}" in out, out
    assert str(dead.path) not in out and f"pid {dead.proc.pid}" not in out, out
    assert not (run_dir / f"{dead.proc.pid}.json").exists(), "the stale file was left behind"
    assert live.unmount() == 0
    assert status_of(blobfs, store).strip() == f"no blobfs mounts of '{store}'"


def test_detached_mount_with_relative_paths(blobfs_bin, blobfs, tmp_path):
    """`blobfs --store models mount mnt` from a directory: the daemon goes to the
    background (and changes to /) after mounting, so relative paths must have been
    made absolute before."""
    unique = f"blobfs-eco-rel-{os.getpid()}-{time.monotonic_ns()}"
    work = tmp_path / "work"
    (work / unique / "mnt").mkdir(parents=True)
    store_rel, mnt_rel = f"{unique}/store", f"{unique}/mnt"
    model = lay_ollama_model(work / store_rel, OLLAMA_DEFAULT_HOST, "library", "tiny", "latest",
                             [(OLLAMA_MODEL, os.urandom(300000))])
    digest = model["manifest"]["layers"][0]["digest"]
    mnt = (work / mnt_rel).resolve()
    wrong = Path("/") / unique   # where a daemon that forgot its directory would write
    try:
        result = blobfs("--store", store_rel, "mount", mnt_rel, cwd=work, timeout=20)
        assert result.returncode == 0, result.stderr
        assert wait_for(lambda: blobfs_mounted(mnt), MOUNT_TIMEOUT)
        time.sleep(1.5)   # a status file is written within a second
        out = ok(blobfs("--store", store_rel, "status", cwd=work)).stdout
        got = python_json(READ_ALL, str(mnt / "models" / OLLAMA_DEFAULT_HOST / "library" /
                                       "tiny" / "latest" / "model"))
        problems = []
        if f"mount {mnt} (pid" not in out:
            problems.append(f"status does not show the mount at {mnt}:\n{out}")
        if not got["ok"] or got["sha"] != digest:
            problems.append(f"reading the model through the mount: {got}")
        if wrong.exists():
            problems.append(f"the daemon created {wrong}: "
                            f"{sorted(str(p.relative_to(wrong)) for p in wrong.rglob('*'))}")
        assert not problems, "\n".join(problems)
    finally:
        detach(mnt)
        if wrong.exists():
            shutil.rmtree(wrong, ignore_errors=True)


# ================================================================ f. Ollama


def ollama_layers(seed):
    rng = __import__("random").Random(seed)
    return [
        (OLLAMA_MODEL, rng.randbytes(MiB + 12345)),
        (OLLAMA_TEMPLATE, b"{{ if .System }}<|system|>{{ .System }}{{ end }}{{ .Prompt }}"),
        (OLLAMA_LICENSE, b"MIT License\n\nCopyright (c) test\n"),
        (OLLAMA_PARAMS, b'{"stop":["<|end|>"],"temperature":0.6}'),
    ]


def test_a_store_laid_out_by_ollama_works_without_any_server(blobfs, store, mount):
    tiny = lay_ollama_model(store, OLLAMA_DEFAULT_HOST, "library", "tiny", "latest",
                            ollama_layers(1))
    hf = lay_ollama_model(store, "hf.co", "someone", "Some-Model-GGUF", "Q4_K_M",
                          ollama_layers(2))
    # A dead proxy: any request blobfs made would fail, and be seen in the log.
    env = {"http_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    listing = ok(blobfs("--store", store, "ls", env=env)).stdout
    local = ls_local(listing)
    assert local == {"tiny:latest": "100%", "hf.co/someone/Some-Model-GGUF:Q4_K_M": "100%"}, \
        listing
    verify = ok(blobfs("--store", store, "verify", env=env)).stdout
    total = len(set(tiny["blobs"]) | set(hf["blobs"]))   # the two share some blobs
    assert f"{total} ok, 0 corrupt, 0 partial, 0 not local" in verify, verify

    m = mount(env=env, debug=True)
    for host, ns, name, tag, model in ((OLLAMA_DEFAULT_HOST, "library", "tiny", "latest", tiny),
                                       ("hf.co", "someone", "Some-Model-GGUF", "Q4_K_M", hf)):
        tag_dir = m.path / "models" / host / ns / name / tag
        files = sorted(os.listdir(tag_dir))
        assert files == ["config.json", "license", "manifest.json", "model", "params",
                         "template"], files
        by_type = {d["mediaType"]: d["digest"] for d in model["manifest"]["layers"]}
        for fname, media_type in (("model", OLLAMA_MODEL), ("template", OLLAMA_TEMPLATE),
                                  ("license", OLLAMA_LICENSE), ("params", OLLAMA_PARAMS)):
            read_through(tag_dir / fname, by_type[media_type])
        read_through(tag_dir / "config.json", model["manifest"]["config"]["digest"])
    walk = ollama_walk(m.path)
    assert walk["problems"] == [] and len(walk["manifests"]) == 2, walk
    assert " GET " not in m.log_text() and "debug: GET" not in m.log_text(), \
        f"the mount made requests although everything was local:\n{m.log()}"


def test_what_blobfs_pulls_is_valid_for_ollama_in_the_store_and_the_mount(
        registry, blobfs, mount, tmp_path, blob_cache):
    p = make_model(tmp_path / "p", [(OLLAMA_MODEL, 2 * MiB, 41),
                                    (OLLAMA_TEMPLATE, b"{{ .Prompt }} p"),
                                    (OLLAMA_LICENSE, b"license p")], cache_dir=blob_cache)
    q = make_model(tmp_path / "q", [(OLLAMA_MODEL, 3 * MiB, 42),
                                    (OLLAMA_PARAMS, b'{"num_ctx":2048}')], cache_dir=blob_cache)
    push_model(registry, "library/p", "latest", p)
    push_model(registry, "team/q", "v2", q)
    names = [f"{registry.host}/library/p", f"{registry.host}/team/q:v2"]

    full = tmp_path / "full"
    ok(blobfs("--store", full, "pull", "--quiet", *names))
    walk = ollama_walk(full)
    assert walk["problems"] == [], walk
    assert sorted(walk["manifests"]) == [f"manifests/{registry.host}/library/p/latest",
                                         f"manifests/{registry.host}/team/q/v2"]
    assert walk["blobs_checked"] == len(p.blobs) + len(q.blobs)

    # OLLAMA_MODELS=<mountpoint>: a lazy store, every blob read through the mount.
    lazy = tmp_path / "lazy"
    ok(blobfs("--store", lazy, "pull", "--lazy", "--quiet", *names))
    m = mount(store=lazy)
    walk = ollama_walk(m.path)
    assert walk["problems"] == [], walk
    assert walk["blobs_checked"] == len(p.blobs) + len(q.blobs)
    # ... after which the store itself is complete, by the same rules.
    walk = ollama_walk(lazy)
    assert walk["problems"] == [] and walk["blobs_checked"] == len(p.blobs) + len(q.blobs), walk


def test_nothing_in_blobs_that_ollama_would_prune(registry, fault_registry, blobfs, store,
                                                  blobfs_bin, empty_config, tmp_path,
                                                  blob_cache):
    p = make_model(tmp_path / "p", [(OLLAMA_MODEL, 2 * MiB, 51),
                                    (OLLAMA_TEMPLATE, b"shared template")], cache_dir=blob_cache)
    q = make_model(tmp_path / "q", [(OLLAMA_MODEL, 2 * MiB, 52),
                                    (OLLAMA_TEMPLATE, b"shared template")], cache_dir=blob_cache)
    push_model(registry, "library/p", "latest", p)
    push_model(registry, "library/q", "latest", q)
    ok(blobfs("--store", store, "pull", "--quiet", f"{registry.host}/library/p",
              f"{registry.host}/library/q"))
    ok(blobfs("--store", store, "rm", f"{registry.host}/library/p"))
    # An interrupted pull (kill -9 while bytes trickle in) leaves its partial blob.
    slow = fault_registry()
    _, (digest,) = slow.add_model("library/r", "latest", [(OLLAMA_MODEL, os.urandom(2 * MiB))])
    slow.fault("trickle", digest=digest, rate=128 * 1024)
    puller = subprocess.Popen([str(blobfs_bin), "--store", str(store), "pull", "--quiet",
                               f"{slow.host}/library/r"], env=clean_env(empty_config),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: slow.bytes_sent(digest) > 256 * 1024, 20)
    finally:
        puller.kill()
        puller.wait(10)
    ok(blobfs("--store", store, "gc"))

    referenced = set()
    for path in (store / "manifests").glob("*/*/*/*"):
        manifest = json.loads(path.read_bytes())
        for desc in [manifest["config"], *manifest["layers"]]:
            referenced.add("sha256-" + hex_of(desc["digest"]))
    problems = []
    for entry in sorted((store / "blobs").iterdir()):
        if not BLOB_NAME.fullmatch(entry.name):
            problems.append(f"{entry.name}: not a blob name (Ollama deletes it)")
        elif not entry.is_file() or entry.is_symlink():
            problems.append(f"{entry.name}: not a regular file")
        elif entry.name not in referenced:
            problems.append(f"{entry.name}: referenced by no manifest (Ollama prunes it)")
    assert not problems, "\n".join(problems)
    # Every file under manifests/ sits at the depth Ollama reads, and parses.
    stray = [str(p.relative_to(store)) for p in (store / "manifests").rglob("*")
             if p.is_file() and len(p.relative_to(store / "manifests").parts) != 4]
    assert stray == [], stray
    # What p alone used is gone; what q uses (the shared template too) stays.
    assert not store_blob(store, p.layers[0].digest).exists()
    assert store_blob(store, q.layers[1].digest).exists()


# ================================================================ g. logging


class SyslogSocket:
    """Our own /dev/log for the length of a test: collects what processes send."""

    def __init__(self, path="/dev/log"):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.ino = os.stat(path).st_ino
        self.sock.settimeout(0.1)
        self.messages = []

    def collect(self):
        while True:
            try:
                self.messages.append(self.sock.recv(65536).decode(errors="replace"))
            except (socket.timeout, BlockingIOError):
                return self.messages

    def close(self):
        self.sock.close()
        try:
            if os.stat(self.path).st_ino == self.ino:
                os.unlink(self.path)
        except FileNotFoundError:
            pass


@pytest.fixture
def syslog_socket():
    if os.path.exists("/dev/log"):
        pytest.skip("/dev/log belongs to a syslog daemon here; this test reads syslog "
                    "messages through a /dev/log of its own, which it can only make "
                    "where none exists")
    try:
        sl = SyslogSocket()
    except OSError as exc:
        pytest.skip(f"cannot make a /dev/log to receive syslog messages: {exc}")
    yield sl
    sl.close()


def broken_model(fault_registry, blobfs, store):
    """A lazily pulled model whose registry is gone: reading it fails and is logged."""
    reg = fault_registry()
    _, (digest,) = reg.add_model("library/gone", "latest", [(OLLAMA_MODEL, b"g" * 100000)])
    ok(blobfs("--store", store, "pull", "--lazy", "--quiet", f"{reg.host}/library/gone"))
    reg.stop()
    return reg.host, digest


def read_fails(path):
    got = python_json(READ_ALL, str(path), timeout=60)
    assert not got["ok"] and got["errno"] == 5, f"reading {path}: {got}"


def test_a_detached_mount_logs_to_syslog(fault_registry, blobfs, store, mount, syslog_socket):
    host, digest = broken_model(fault_registry, blobfs, store)
    m = mount("read_timeout=10", global_args=["--retries", "1"], foreground=False)
    assert m.proc.wait(20) == 0, m.log()
    read_fails(m.path / "models" / host / "library" / "gone" / "latest" / "model")
    pid = m.daemon_pid()
    assert pid, "cannot find the daemon"

    def logged():
        return [msg for msg in syslog_socket.collect() if f"blobfs[{pid}]: error: " in msg]

    assert wait_for(lambda: logged(), 5), \
        f"no error from blobfs[{pid}] reached syslog; got: {syslog_socket.collect()}"
    assert any(digest in msg or host in msg for msg in logged()), logged()
    # the daemon's LOG_DAEMON facility: <PRI> = 3 * 8 + LOG_ERR (3) = 27
    assert all(msg.startswith("<27>") for msg in logged()), logged()
    assert m.log_text() == "", f"the detached daemon wrote to the terminal:\n{m.log()}"


def test_foreground_logs_to_stderr_and_debug_adds_requests(fault_registry, registry, blobfs,
                                                           store, mount, tmp_path, blob_cache):
    host, digest = broken_model(fault_registry, blobfs, store)
    model = make_model(tmp_path / "ok", [(OLLAMA_MODEL, MiB, 61)], cache_dir=blob_cache)
    push_model(registry, "library/ok", "latest", model)
    ok(blobfs("--store", store, "pull", "--lazy", "--quiet", f"{registry.host}/library/ok"))

    quiet = mount("read_timeout=10", global_args=["--retries", "1"])
    read_fails(quiet.path / "models" / host / "library" / "gone" / "latest" / "model")
    read_through(quiet.path / "models" / registry.host / "library" / "ok" / "latest" / "model",
                 model.layers[0].digest)
    assert quiet.unmount() == 0
    log = quiet.log_text()
    assert re.search(rf"^blobfs: error: .*{re.escape(host)}", log, re.M), log
    assert "debug:" not in log, log

    ok(blobfs("--store", store, "rm", f"{registry.host}/library/ok"))
    ok(blobfs("--store", store, "pull", "--lazy", "--quiet", f"{registry.host}/library/ok"))
    loud = mount(debug=True)
    read_through(loud.path / "models" / registry.host / "library" / "ok" / "latest" / "model",
                 model.layers[0].digest)
    assert loud.unmount() == 0
    log = loud.log_text()
    url = f"http://{registry.host}/v2/library/ok/blobs/{model.layers[0].digest}"
    assert re.search(rf"^blobfs: debug: GET {re.escape(url)}", log, re.M), log


# ================================================================ contrib: fstab


HELPER = Path("/sbin/mount.fuse.blobfs")


@pytest.fixture
def fstab_helper():
    """contrib/mount.blobfs linked as /sbin/mount.fuse.blobfs for this test only."""
    if os.geteuid() != 0:
        pytest.skip("mount(8) with an fstab entry needs root here")
    if shutil.which("mount") is None:
        pytest.skip("no mount(8) (Debian package 'mount')")
    if not os.access(HELPER.parent, os.W_OK):
        pytest.skip(f"{HELPER.parent} is not writable: cannot install the helper")
    if os.path.lexists(HELPER):
        pytest.skip(f"{HELPER} exists already (an installed blobfs?); not replacing it")
    os.symlink(CONTRIB / "mount.blobfs", HELPER)
    try:
        yield HELPER
    finally:
        if os.path.islink(HELPER) and os.readlink(HELPER) == str(CONTRIB / "mount.blobfs"):
            os.unlink(HELPER)


def test_fstab_line_mounts_with_mount_a_and_umount(fstab_helper, blobfs_bin, blobfs, tmp_path):
    store = tmp_path / "store"
    model = lay_ollama_model(store, OLLAMA_DEFAULT_HOST, "library", "tiny", "latest",
                             [(OLLAMA_MODEL, os.urandom(200000))])
    digest = model["manifest"]["layers"][0]["digest"]
    mnt, other = tmp_path / "mnt", tmp_path / "other"
    mnt.mkdir()
    other.mkdir()
    fstab = tmp_path / "fstab"
    fstab.write_text(
        "# a test fstab\n"
        f"{store} {mnt} fuse.blobfs rw,nofail,_netdev,x-systemd.automount,noatime,"
        "allow_other,nodiscover,comment=test 0 0\n"
        f"{store} {other} fuse.blobfs noauto,user 0 0\n")
    # mount(8) passes its environment on to the helper (BLOBFS: which blobfs to run).
    env = clean_env(None, {"BLOBFS": blobfs_bin, "BLOBFS_CONFIG": "/dev/null"})
    try:
        result = run(["mount", "-T", fstab, "-a"], base_env=env, timeout=30)
        assert result.returncode == 0, result.stderr
        entries = [(src, fstype) for src, point, fstype in proc_mounts() if point == str(mnt)]
        assert entries == [(str(store), "fuse.blobfs")], entries
        assert not blobfs_mounted(other), "mount -a mounted a noauto line"
        read_through(mnt / "models" / OLLAMA_DEFAULT_HOST / "library" / "tiny" / "latest" /
                     "model", digest)
        # mount -a again: already mounted, nothing more.
        result = run(["mount", "-T", fstab, "-a"], base_env=env, timeout=30)
        assert result.returncode == 0, result.stderr
        assert [p for _, p, _ in proc_mounts()].count(str(mnt)) == 1
        result = run(["umount", mnt], timeout=30)
        assert result.returncode == 0, result.stderr
        assert not blobfs_mounted(mnt)
        # One line by its mount point, noauto or not.
        result = run(["mount", "-T", fstab, other], base_env=env, timeout=30)
        assert result.returncode == 0, result.stderr
        assert blobfs_mounted(other)
        assert sorted(os.listdir(other / "models" / OLLAMA_DEFAULT_HOST / "library")) == ["tiny"]
        result = run(["umount", other], timeout=30)
        assert result.returncode == 0, result.stderr
        assert not blobfs_mounted(other)
    finally:
        detach(mnt)
        detach(other)


def test_fstab_helper_passes_only_blobfs_and_fuse_options(tmp_path):
    helper = CONTRIB / "mount.blobfs"
    result = run(["sh", helper, "/srv/my,store", "/srv/models", "-n", "-f", "-v", "-t",
                  "fuse.blobfs", "-o",
                  "rw,relatime,noexec,nosuid,nodev,allow_other,max_cache=200G,nofail,_netdev,"
                  "user,users,noauto,defaults,x-systemd.automount,comment=x,background=always"],
                 env=clean_env(None, {"BLOBFS": "/opt/blobfs"}))
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == (
        "mount.fuse.blobfs: running: /opt/blobfs --store /srv/my,store mount -o "
        "rw,noexec,nosuid,nodev,allow_other,max_cache=200G,background=always,"
        r"fsname=/srv/my\,store /srv/models"), result.stderr
    result = run(["sh", helper, "none", "/srv/models", "-fv", "-o", "store=/x,fsname=models"],
                 base_env=clean_env(None, {"BLOBFS": None}))
    assert result.stderr.strip() == \
        "mount.fuse.blobfs: running: blobfs mount -o store=/x,fsname=models /srv/models"
    result = run(["sh", helper, "/srv/store"], base_env=clean_env(None))
    assert result.returncode != 0 and "usage" in result.stderr


# ================================================================ contrib: systemd


UNIT = CONTRIB / "blobfs-mount@.service"


def unit_for_test(blobfs_bin, directory, instance):
    """A copy of the template unit, named for INSTANCE, running the built blobfs."""
    text = UNIT.read_text()
    assert re.search(r"^ExecStart=blobfs mount -f ", text, re.M), "ExecStart changed: adapt"
    text = re.sub(r"^(Exec\w+=)blobfs ", rf"\g<1>{blobfs_bin} ", text, flags=re.M)
    path = Path(directory) / f"blobfs-mount@{instance}.service"
    path.write_text(text)
    return path


def test_systemd_unit_verifies(blobfs_bin, tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("no systemd-analyze (Debian package 'systemd')")
    unit = unit_for_test(blobfs_bin, tmp_path, "srv-models")
    # Documentation= names man:blobfs(1) and man:blobfs.conf(5): find ours.
    manpath = tmp_path / "man"
    for section, page in (("1", "blobfs.1"), ("5", "blobfs.conf.5")):
        (manpath / f"man{section}").mkdir(parents=True)
        shutil.copy(MAN_DIR / page, manpath / f"man{section}" / page)
    result = run([analyze, "verify", unit], base_env=clean_env(None, {"MANPATH": manpath}),
                 timeout=60)
    if result.returncode != 0 and ("Failed to initialize" in result.stderr
                                   or "Operation not permitted" in result.stderr):
        pytest.skip(f"systemd-analyze verify cannot run here: {result.stderr.strip()}")
    assert result.returncode == 0 and result.stderr == "", result.stderr


def systemd_escape_path(path):
    result = run(["systemd-escape", "--path", path])
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_systemd_unit_commands_mount_and_unmount(blobfs_bin, tmp_path):
    """Runs the unit's ExecStartPre/ExecStart/ExecStop as systemd would (specifiers
    and $VARIABLES expanded, the EnvironmentFile read) and checks the mount."""
    if shutil.which("systemd-escape") is None:
        pytest.skip("no systemd-escape (Debian package 'systemd')")
    store = tmp_path / "store"
    model = lay_ollama_model(store, OLLAMA_DEFAULT_HOST, "library", "tiny", "latest",
                             [(OLLAMA_MODEL, os.urandom(100000))])
    mnt = tmp_path / "srv-x" / "models"     # does not exist yet: ExecStartPre makes it
    instance = systemd_escape_path(mnt)
    # %f, the instance unescaped as a path, is the mount point
    assert run(["systemd-escape", "--unescape", "--path", instance]).stdout.strip() == str(mnt)
    unit = unit_for_test(blobfs_bin, tmp_path, instance).read_text()
    service = service_section(unit)

    def specifiers(text):
        return text.replace("%i", instance).replace("%f", str(mnt))

    env_file = tmp_path / "mount.env"
    env_file.write_text(f"BLOBFS_STORE={store}\nBLOBFS_ARGS=-o nodiscover --max-cache 1G\n")
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    for assignment in service.get("Environment", []):
        key, value = assignment.split("=", 1)
        env[key] = value
    files = [specifiers(path.lstrip("-")) for path in service.get("EnvironmentFile", [])]
    # the mount point's own file (the older mount-INSTANCE.env is read first)
    assert files == [f"/etc/blobfs/mount-{instance}.env", f"/etc/blobfs/mount{mnt}.env"], files
    for line in env_file.read_text().splitlines():
        key, value = line.split("=", 1)
        env[key] = value

    def command(spec):
        ignore = spec.startswith("-")
        words = []
        for word in shlex.split(specifiers(spec.lstrip("-"))):
            if re.fullmatch(r"\$[A-Za-z_][A-Za-z0-9_]*", word):
                words += env.get(word[1:], "").split()
            else:
                words.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}",
                                    lambda m: env.get(m[1], ""), word))
        return ignore, words

    for spec in service.get("ExecStartPre", []):
        ignore, argv = command(spec)
        result = run(argv, base_env=env)
        assert ignore or result.returncode == 0, result.stderr
    (spec,) = service["ExecStart"]
    _, argv = command(spec)
    assert argv == [str(blobfs_bin), "mount", "-f", "-o", "nodiscover", "--max-cache", "1G",
                    str(mnt)]
    log = tmp_path / "journal.log"
    with open(log, "wb") as out:
        daemon = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=out, start_new_session=True)
    try:
        assert wait_for(lambda: blobfs_mounted(mnt) or daemon.poll() is not None, MOUNT_TIMEOUT)
        assert blobfs_mounted(mnt), log.read_text()
        read_through(mnt / "models" / OLLAMA_DEFAULT_HOST / "library" / "tiny" / "latest" /
                     "model", model["manifest"]["layers"][0]["digest"])
        (stop,) = service["ExecStop"]
        _, stop_argv = command(stop)
        result = run(stop_argv, base_env=env, timeout=30)
        assert result.returncode == 0, result.stderr
        # The main process ends by itself, successfully: no restart, no failure.
        assert daemon.wait(UNMOUNT_TIMEOUT) == 0, log.read_text()
        assert not blobfs_mounted(mnt)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(10)
        detach(mnt)
    assert service["Restart"] == ["on-failure"]
    assert service.get("Type") == ["exec"]


# ================================================================ contrib: bash completion


COMPLETION = CONTRIB / "bash-completion" / "blobfs"


def bash_words(line):
    """COMP_WORDS and COMP_CWORD as bash makes them for LINE (cursor at the end):
    words split at blanks, and ':' and '=' (in COMP_WORDBREAKS) as words of their own."""
    words = []
    for blank_word in line.split():
        words += [p for p in re.split(r"([:=]+)", blank_word) if p != ""]
    if not line.strip() or line.endswith((" ", "\t")):
        words.append("")
    return words, len(words) - 1


@pytest.fixture
def complete(blobfs_bin, tmp_path):
    """complete(LINE, env=None) -> the completions bash offers for LINE, through
    contrib/bash-completion/blobfs, with the built blobfs first on PATH."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "blobfs").symlink_to(blobfs_bin)

    def run_completion(line, env=None):
        words, cword = bash_words(line)
        script = (f"source {shlex.quote(str(COMPLETION))} || exit 3\n"
                  f"complete -p blobfs || exit 4\n"
                  f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)})\n"
                  f"COMP_CWORD={cword}\n"
                  f"COMP_LINE={shlex.quote(line)}\n"
                  f"COMP_POINT={len(line)}\n"
                  "_blobfs blobfs \"${COMP_WORDS[COMP_CWORD]}\" \"${COMP_WORDS[COMP_CWORD-1]}\"\n"
                  "printf '%s\\n' \"${COMPREPLY[@]}\"\n")
        result = run(["bash", "--norc", "--noprofile", "-c", script], timeout=30,
                     base_env=clean_env(None, {"PATH": f"{bindir}:{os.environ['PATH']}",
                                               "XDG_DATA_HOME": tmp_path / "xdg-data",
                                               **(env or {})}))
        assert result.returncode == 0, f"{line!r}: {result.stderr}"
        out = result.stdout.splitlines()
        assert out[0] == "complete -F _blobfs blobfs", out
        assert result.stderr == "", result.stderr
        return [w for w in out[1:] if w != ""]

    return run_completion


def test_bash_completion_of_commands_and_options(complete):
    assert sorted(complete("blobfs ")) == sorted(
        ["pull", "ls", "rm", "gc", "verify", "status", "mount", "umount"])
    assert complete("blobfs mo") == ["mount"]
    assert complete("blobfs --debug ve") == ["verify"]
    pull = set(complete("blobfs pull --"))
    assert {"--lazy", "--max-cache", "--insecure", "--connections", "--store",
            "--quiet"} <= pull
    assert not {"--foreground", "--option"} & pull
    mount_opts = set(complete("blobfs mount --"))
    assert {"--foreground", "--option", "--max-cache", "--read-timeout"} <= mount_opts
    assert "--lazy" not in mount_opts
    ls = set(complete("blobfs ls --"))
    assert {"--store", "--debug"} <= ls and not {"--lazy", "--insecure", "--max-cache"} & ls
    gc = set(complete("blobfs gc --"))
    assert "--max-cache" in gc and "--insecure" not in gc
    assert complete("blobfs --store /nonexistent-dir pull --la") == ["--lazy"]
    # The value of an option is not an option or a command.
    assert complete("blobfs pull --connections ") == []


def test_bash_completion_of_mount_options(complete, tmp_path):
    opts = set(complete("blobfs mount -o "))
    assert {"nodiscover", "background=", "max_cache=", "store=", "read_timeout=",
            "allow_other", "default_permissions"} <= opts
    assert complete("blobfs mount -o allow_other,backg") == ["allow_other,background="]
    assert sorted(complete("blobfs mount -o background=")) == ["always", "never", "sequential"]
    assert complete("blobfs mount -o nodiscover,background=se") == ["sequential"]
    assert complete("blobfs mount --option=nodis") == ["nodiscover"]
    (tmp_path / "models-dir").mkdir()
    assert complete(f"blobfs mount -o store={tmp_path}/models-d") == [f"{tmp_path}/models-dir/"]


def test_bash_completion_of_model_names_in_the_store(complete, blobfs, mount, tmp_path):
    store = tmp_path / "store"
    lay_ollama_model(store, OLLAMA_DEFAULT_HOST, "library", "tiny", "latest",
                     [(OLLAMA_MODEL, b"x" * 100)])
    lay_ollama_model(store, OLLAMA_DEFAULT_HOST, "library", "tiny", "q8",
                     [(OLLAMA_MODEL, b"y" * 100)])
    lay_ollama_model(store, "127.0.0.1:5000", "team", "other", "v1",
                     [(OLLAMA_MODEL, b"z" * 100)])
    names = ls_names(ok(blobfs("--store", store, "ls")).stdout)
    assert sorted(names) == ["127.0.0.1:5000/team/other:v1", "tiny:latest", "tiny:q8"]
    for line in (f"blobfs --store {store} rm ", f"blobfs -s {store} verify ",
                 f"blobfs --store={store} ls ", f"blobfs pull --store {store} "):
        assert sorted(complete(line)) == sorted(names), line
    assert sorted(complete("blobfs rm ", env={"BLOBFS_STORE": store})) == sorted(names)
    assert complete(f"blobfs --store {store} rm ti") == ["tiny:latest", "tiny:q8"]
    # bash splits the word at ':' and replaces only what follows the last one
    assert complete(f"blobfs --store {store} rm tiny:") == ["latest", "q8"]
    assert complete(f"blobfs --store {store} rm tiny:l") == ["latest"]
    assert complete(f"blobfs --store {store} rm 127.0.0.1:5000/te") == ["5000/team/other:v1"]
    # no store there: no names, and no error
    assert complete(f"blobfs --store {tmp_path}/none rm ") == []
    # every name offered is one blobfs takes back
    for name in names:
        assert ls_names(ok(blobfs("--store", store, "ls", name)).stdout) == [name]
    # umount offers blobfs mount points; mount offers directories
    m = mount(store=store)
    assert str(m.path) in complete(f"blobfs umount {m.path.parent}/")
    (tmp_path / "mnt-here").mkdir()
    assert complete(f"blobfs mount {tmp_path}/mnt-h") == [f"{tmp_path}/mnt-here"]
    assert complete(f"blobfs --store {tmp_path}/sto") == [f"{tmp_path}/store"]


# ================================================================ manual pages


@pytest.mark.parametrize("page", ["blobfs.1", "blobfs.conf.5"])
def test_manual_page_renders_without_warnings(page):
    if shutil.which("man") is None:
        pytest.skip("no man (Debian package 'man-db')")
    result = run(["man", "--warnings", "-l", MAN_DIR / page],
                 base_env=clean_env(None, {"MANWIDTH": "80", "MAN_KEEP_FORMATTING": None}))
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr
    assert len(result.stdout) > 2000


def roff_text(page):
    """The text of a manual page as man renders it, without overstriking."""
    result = run(["man", "-l", MAN_DIR / page], base_env=clean_env(None, {"MANWIDTH": "200"}))
    assert result.returncode == 0, result.stderr
    return re.sub(r".\x08", "", result.stdout)


def test_blobfs_1_names_the_configuration_and_the_environment():
    """The settings and options themselves are checked against the table in
    test_settings.py; these are the rest of what blobfs(1) must mention."""
    if shutil.which("man") is None:
        pytest.skip("no man (Debian package 'man-db')")
    page1 = roff_text("blobfs.1").replace("\u2010", "-")
    for word in ("status", "max_cache", "BLOBFS_CONFIG", "blobfs.conf(5)", "mirror",
                 "http_proxy", "NO_PROXY"):
        assert word in page1, f"{word} is not in blobfs(1)"


def test_configuration_examples_in_the_docs_are_accepted(blobfs, tmp_path):
    """Every configuration example in blobfs.conf(5) and README.md is a file blobfs takes."""
    examples = []
    readme = (REPO_DIR / "README.md").read_text()
    examples += [block for block in re.findall(r"```ini\n(.*?)```", readme, re.S)]
    conf5 = (MAN_DIR / "blobfs.conf.5").read_text()
    for block in re.findall(r"^\.EX\n(.*?)^\.EE", conf5, re.S | re.M):
        if re.search(r"^\[host |^[a-z-]+ = ", block, re.M):
            examples.append(re.sub(r"\\(.)", r"\1", block.replace("\\-", "-").replace("\\e", "\\")))
    assert len(examples) >= 3, "expected configuration examples (```ini blocks, .EX/.EE)"
    for i, text in enumerate(examples):
        config = write_config(tmp_path / f"example{i}.conf", text)
        result = blobfs("--store", tmp_path / "store", "ls", config=config)
        assert result.returncode == 0, f"example {i}:\n{text}\n{result.stderr}"
