"""Security tests of blobfs against real servers on loopback: TLS with a test CA
(Debian's docker-registry behind an nginx TLS front, blobs redirected to an
nginx CDN that speaks TLS too), secrets kept out of --debug logs (bearer
tokens, Basic credentials, presigned CDN URLs from tests/lib/faultreg.py), the
mode of the store's state directory, who may enter a mount, when plain
HTTP is used, and which credentials go where (a registry behind an nginx TLS
front naming a token realm elsewhere, netrc's `default` entry).

Certificates are made with the openssl CLI in a temp dir (dockerreg.make_ca,
dockerreg.make_server_cert).  Names that must not count as loopback use the
host REGISTRY_NAME, which resolves to 127.0.0.1 only inside a private mount
namespace whose /etc/hosts is a bind-mounted test file (unshare --mount);
blobfs runs inside it, and a mount made there is reached with nsenter.  When
the namespace's last process exits its mounts go with it.

Every child runs with a time limit, every server and mount is stopped after
its test, and a failing test prints the daemon's log.
"""

import base64
import errno
import functools
import json
import os
import re
import secrets
import shutil
import socket
import stat
import subprocess
import threading
from pathlib import Path

import pytest

import blobfsmount
import children
from children import READ_ALL
import dockerreg
from faultreg import FaultRegistry, _Grant
from models import OLLAMA_MODEL, OLLAMA_TEMPLATE, make_model, push_model
from servers import start_or_skip, stopped_after
from storefiles import error_lines, files_under, sha256_file

MiB = 1 << 20
REPO = "library/x"
PYTHON = "/usr/bin/python3"
REGISTRY_NAME = "registry.blobfs.test"  # not loopback by name; 127.0.0.1 in the test namespace
REALM_NAME = "realm.blobfs.test"        # likewise: a token realm on another host
NOBODY = 65534
USER = "alice"
PASSWORD = "s3cr3t-PASS"
REALM_USER = "bob"
REALM_PASSWORD = "r3alm-PASS"
DEFAULT_USER = "carol"
DEFAULT_PASSWORD = "d3fault-PASS"
SIG_MARK = "TOPSECRET"
MOUNT_TIMEOUT = 15.0
CHILD_TIMEOUT = 40.0

CERT_PROBLEM = re.compile(r"certificate|\bCA\b|\bSSL\b|\bTLS\b", re.I)


# ---------------------------------------------------------------- small helpers


def blob_files(store):
    blobs = Path(store) / "blobs"
    return sorted(p.name for p in blobs.iterdir()) if blobs.is_dir() else []


def assert_store_holds(store, host, model, repo=REPO):
    """Every blob of MODEL is in blobs/ and hashes to its name; the manifest is byte-exact."""
    for blob in model.blobs:
        path = Path(store) / "blobs" / ("sha256-" + blob.hex)
        assert path.is_file(), f"{path.name} missing from blobs/ (have {blob_files(store)})"
        assert sha256_file(path) == blob.digest, f"{path.name} does not hash to its name"
    manifest = Path(store) / "manifests" / host / repo / "latest"
    assert manifest.read_bytes() == model.manifest_bytes


def assert_nothing_stored(store):
    assert blob_files(store) == [], f"blobs/ holds {blob_files(store)} after a refused pull"
    assert files_under(Path(store) / "manifests") == [], \
        f"manifests/ holds {files_under(Path(store) / 'manifests')} after a refused pull"


def debug_lines(text):
    return [line for line in text.splitlines() if line.startswith("blobfs: debug: ")]


# Every child of this file gets CHILD_TIMEOUT s unless the test says otherwise.
run = functools.partial(children.run, timeout=CHILD_TIMEOUT)


def in_hosts_namespace(argv, hosts_file):
    """ARGV run in a private mount namespace where /etc/hosts is HOSTS_FILE."""
    return ["unshare", "--mount", "--propagation", "private", "--",
            "/bin/sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts_file),
            *map(str, argv)]


def as_nobody(argv):
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
            *map(str, argv)]


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A test CA, a server certificate it signed for localhost, REGISTRY_NAME and
    127.0.0.1, and one it signed for example.com only."""
    base = tmp_path_factory.mktemp("pki")
    ca = start_or_skip(dockerreg.make_ca, base)
    cert, key = dockerreg.make_server_cert(ca, base, ("localhost", REGISTRY_NAME), ("127.0.0.1",))
    wrong_cert, wrong_key = dockerreg.make_server_cert(ca, base, ("example.com",), (),
                                                       stem="example")
    return {"ca": ca.cert, "cert": cert, "key": key,
            "wrong_cert": wrong_cert, "wrong_key": wrong_key}


@pytest.fixture(scope="module")
def hosts_file(tmp_path_factory):
    """An /etc/hosts for the test namespace; skips if such a namespace cannot be made."""
    path = tmp_path_factory.mktemp("hosts") / "hosts"
    path.write_text(f"127.0.0.1 localhost\n127.0.0.1 {REGISTRY_NAME}\n127.0.0.1 {REALM_NAME}\n")
    path.chmod(0o644)
    if not all(shutil.which(tool) for tool in ("unshare", "nsenter")):
        pytest.skip("unshare/nsenter (util-linux) are needed for the name tests")
    probe = subprocess.run(in_hosts_namespace(["getent", "hosts", REGISTRY_NAME], path),
                           capture_output=True, text=True, timeout=20)
    if probe.returncode != 0 or not probe.stdout.startswith("127.0.0.1"):
        pytest.skip(f"cannot bind-mount a test /etc/hosts in a private mount namespace "
                    f"(needs root): {probe.stderr.strip()}")
    return path


@pytest.fixture
def home(tmp_path):
    """An empty HOME, so that no ~/.netrc of the machine's is read."""
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def blobfs(run_blobfs, store, home):
    """blobfs(args, *, store=<store>, hosts=None, env=None, umask=None, timeout=60)
    -> CompletedProcess: conftest's run_blobfs with HOME=<home>.  HOSTS: run in
    the test namespace with that /etc/hosts."""
    default_store = store

    def call(args, *, store=default_store, hosts=None, env=None, umask=None, timeout=60):
        wrap = (lambda argv: in_hosts_namespace(argv, hosts)) if hosts is not None else None
        return run_blobfs(args, store=store, env={"HOME": str(home), **(env or {})},
                          wrap=wrap, umask=umask, timeout=timeout)

    return call


@pytest.fixture
def small_model(tmp_path, blob_cache):
    """A model of a 1 MiB random layer and a template."""
    return make_model(tmp_path / "model", [(OLLAMA_MODEL, MiB, 11),
                                           (OLLAMA_TEMPLATE, b"{{ .Prompt }}")],
                      cache_dir=blob_cache)


@pytest.fixture
def tls_registry(pki, small_model):
    """Factory: tls_registry(**options) -> DockerRegistry(tls=True, cdn=True) with
    the test certificate (overridable) and small_model pushed as REPO:latest."""
    def push(reg):
        push_model(reg.backend_url, REPO, "latest", small_model)
        reg.model = small_model

    yield from stopped_after(
        lambda **options: dockerreg.DockerRegistry(**{
            "tls": True, "cdn": True, "tls_cert": pki["cert"], "tls_key": pki["key"],
            **options}),
        then=push)


class PresignedRegistry(FaultRegistry):
    """A FaultRegistry whose CDN signatures all start with SIG_MARK, so that any
    trace of one in a log is easy to find."""

    def _mint_cdn_url(self, repo, digest):
        if self.cdn_url is None:
            raise RuntimeError("a CDN redirect needs cdn=True")
        sig = SIG_MARK + secrets.token_hex(12)
        with self._lock:
            self._grants[sig] = _Grant(repo, digest)
        return f"{self.cdn_url}/cdn/{digest}?sig={sig}"

    def secrets_issued(self):
        """Every bearer token and CDN signature handed out so far."""
        with self._lock:
            return list(self._tokens) + list(self._grants)


@pytest.fixture
def fault_registry():
    """Factory for (Presigned)FaultRegistry instances, all stopped after the test."""
    def add(reg):
        reg.manifest, (reg.layer,) = reg.add_model("library/f", "latest",
                                                    [(OLLAMA_MODEL, os.urandom(600_000))])

    yield from stopped_after(PresignedRegistry, then=add)


def read_through(m, relpath, timeout=CHILD_TIMEOUT):
    """READ_ALL of RELPATH in blobfsmount.Mount M, where M is visible."""
    result = m.run([PYTHON, "-c", READ_ALL, m.path / relpath], timeout=timeout)
    assert result.returncode == 0, f"reader failed: {result.stderr}"
    return json.loads(result.stdout)


@pytest.fixture
def mount(blobfs_bin, store, home, request):
    """Factory: mount(*OPTIONS, store=<store>, hosts=None) -> blobfsmount.Mount of
    `blobfs --debug mount -f` with HOME=<home>, mounted. HOSTS: in the test
    namespace with that /etc/hosts (the mount is only visible there, and
    m.run() enters it). Mountpoints live in a 0755 directory (mount.base) so
    that other users can reach them."""
    mounts = blobfsmount.Mounts(blobfs_bin, store, request, shared=True)

    def start(*options, store=store, hosts=None):
        namespace = (lambda argv: in_hosts_namespace(argv, hosts)) if hosts is not None else None
        return mounts.start(*options, store=store, env={"HOME": str(home)}, namespace=namespace)

    start.base = mounts.base
    yield start
    mounts.finish()


class Sniffer:
    """A TCP listener on 127.0.0.1 that records the first bytes each client sends
    and hangs up: tells a TLS ClientHello (0x16 0x03 ...) from plain HTTP."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.host = f"127.0.0.1:{self.port}"
        self.first_bytes = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            with conn:
                conn.settimeout(3)
                try:
                    self.first_bytes.append(conn.recv(16))
                except OSError:
                    self.first_bytes.append(b"")

    def stop(self):
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def sniffer():
    s = Sniffer()
    yield s
    s.stop()


def assert_only_tls_hellos(sniffer):
    assert sniffer.first_bytes, "blobfs never connected: the test proves nothing"
    plain = [b for b in sniffer.first_bytes if not b.startswith(b"\x16\x03")]
    assert not plain, (f"blobfs sent something other than a TLS ClientHello: "
                       f"{[b[:16] for b in plain]}")


# ================================================================ 1. TLS


def test_tls_pull_without_cacert_is_refused_clearly(tls_registry, blobfs, store):
    reg = tls_registry()
    result = blobfs(["pull", f"{reg.url}/{REPO}"], timeout=30)
    assert result.returncode == 1, f"exit {result.returncode}:\n{result.stderr}"
    message = error_lines(result.stderr)
    assert re.search(r"certificate|\bCA\b", message, re.I), \
        f"the error does not say the certificate/CA is the problem: {message}"
    assert_nothing_stored(store)
    assert reg.tls_log_entries() == [], "a request went through an unverified TLS connection"


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_tls_pull_with_cacert_verifies_and_stores(tls_registry, pki, blobfs, store, host):
    reg = tls_registry()
    hostport = f"{host}:{reg.host.rsplit(':', 1)[1]}"
    result = blobfs(["pull", "--cacert", pki["ca"], f"https://{hostport}/{REPO}"], timeout=30)
    assert result.returncode == 0, result.stderr
    assert_store_holds(store, hostport, reg.model)
    # The manifest came through the TLS front and the blobs from the TLS CDN.
    assert any("/manifests/latest" in e["uri"] for e in reg.tls_log_entries())
    served = {e["uri"].rsplit("/", 2)[-2] for e in reg.cdn_log_entries() if e["status"] in (200, 206)}
    assert {b.hex for b in reg.model.blobs} <= served, "blobs did not come from the TLS CDN"
    verify = blobfs(["verify"], timeout=30)
    summary = f"{len(reg.model.blobs)} ok, 0 corrupt, 0 partial, 0 not local"
    assert verify.returncode == 0 and summary in verify.stdout, verify.stdout


def test_tls_insecure_does_not_turn_off_verification(tls_registry, blobfs, store):
    """--insecure is about plain HTTP for names without a scheme; an https:// name
    must still have its certificate checked."""
    reg = tls_registry()
    result = blobfs(["--insecure", "pull", f"{reg.url}/{REPO}"], timeout=30)
    assert result.returncode == 1, f"exit {result.returncode}:\n{result.stderr}"
    assert re.search(r"certificate|\bCA\b", error_lines(result.stderr), re.I), result.stderr
    assert_nothing_stored(store)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_tls_certificate_for_another_host_is_refused(tls_registry, pki, blobfs, store, host):
    """A certificate the trusted CA issued for example.com only is no good for
    127.0.0.1 or localhost."""
    reg = tls_registry(tls_cert=pki["wrong_cert"], tls_key=pki["wrong_key"])
    port = reg.host.rsplit(":", 1)[1]
    result = blobfs(["pull", "--cacert", pki["ca"], f"https://{host}:{port}/{REPO}"], timeout=30)
    assert result.returncode == 1, f"exit {result.returncode}:\n{result.stderr}"
    assert CERT_PROBLEM.search(error_lines(result.stderr)), result.stderr
    assert_nothing_stored(store)
    assert reg.tls_log_entries() == [], "a request went through to a host with the wrong name"


def test_tls_cdn_certificate_for_another_host_is_refused(tls_registry, pki, blobfs, store):
    """The registry's certificate is right but the CDN it redirects to shows one
    for example.com: no blob may come from there."""
    reg = tls_registry(cdn_tls_cert=pki["wrong_cert"], cdn_tls_key=pki["wrong_key"])
    result = blobfs(["pull", "--retries", "2", "--cacert", pki["ca"], f"{reg.url}/{REPO}"],
                    timeout=40)
    assert result.returncode == 1, f"exit {result.returncode}:\n{result.stderr}"
    assert CERT_PROBLEM.search(error_lines(result.stderr)), result.stderr
    assert blob_files(store) == [], f"blobs/ holds {blob_files(store)}"
    assert reg.cdn_log_entries() == [], "the CDN with the wrong certificate served requests"
    assert any(e["status"] == 307 for e in reg.tls_log_entries()), \
        "blobfs never got the redirect to the CDN: the test proves nothing"


def lazy_pull_by_name(tls_registry, pki, blobfs, hosts_file):
    """Start a TLS registry and pull its model --lazy as REGISTRY_NAME:PORT/REPO (a
    name that is not loopback, so HTTPS); returns (registry, path of the layer
    below a mountpoint)."""
    reg = tls_registry()
    host = f"{REGISTRY_NAME}:{reg.host.rsplit(':', 1)[1]}"
    refused = blobfs(["pull", "--lazy", f"{host}/{REPO}"], hosts=hosts_file, timeout=30)
    assert refused.returncode == 1, \
        f"a lazy pull of a non-loopback name without the CA did not fail:\n{refused.stderr}"
    result = blobfs(["pull", "--lazy", "--quiet", "--cacert", pki["ca"], f"{host}/{REPO}"],
                    hosts=hosts_file, timeout=30)
    assert result.returncode == 0, result.stderr
    return reg, Path("models") / host / REPO / "latest" / "model"


def test_mount_without_cacert_read_fails_with_eio(tls_registry, pki, blobfs, mount, hosts_file):
    """Reading a lazily pulled layer of an HTTPS registry whose CA the mount was
    not given fails with EIO (not a hang), and the log says why."""
    reg, relpath = lazy_pull_by_name(tls_registry, pki, blobfs, hosts_file)
    m = mount("read_timeout=20", hosts=hosts_file)
    got = read_through(m, relpath)
    assert not got["ok"], f"read without the CA succeeded: {got}"
    assert re.search(r"certificate|\bCA\b", m.log_text(), re.I), \
        f"the mount's log does not explain the failed read:\n{m.log()[-3000:]}"
    assert got["errno"] == errno.EIO, (
        f"the read failed with {errno.errorcode.get(got['errno'])} ({got['error']}), not EIO; "
        f"log:\n{m.log()[-1500:]}")
    assert reg.cdn_log_entries() == []


def test_mount_with_cacert_option_reads(tls_registry, pki, blobfs, mount, hosts_file):
    reg, relpath = lazy_pull_by_name(tls_registry, pki, blobfs, hosts_file)
    m = mount(f"cacert={pki['ca']}", hosts=hosts_file)
    got = read_through(m, relpath)
    assert got["ok"], f"read with -o cacert failed: {got}\nlog:\n{m.log()[-3000:]}"
    layer = reg.model.layer(OLLAMA_MODEL)
    assert (got["bytes"], got["sha"]) == (layer.size, layer.digest)
    assert any(e["status"] in (200, 206) for e in reg.cdn_log_entries()), \
        "the layer did not come from the TLS CDN"


def test_mount_keeps_https_for_a_model_pulled_with_https(tls_registry, pki, blobfs, store, mount):
    """`pull --lazy https://127.0.0.1:PORT/...` asked for HTTPS; reading the model
    through a mount later must use HTTPS too, not plain HTTP to the TLS port."""
    reg = tls_registry()
    result = blobfs(["pull", "--lazy", "--quiet", "--cacert", pki["ca"], f"{reg.url}/{REPO}"],
                    timeout=30)
    assert result.returncode == 0, result.stderr
    layer = reg.model.layer(OLLAMA_MODEL)
    m = mount(f"cacert={pki['ca']}", "read_timeout=20")
    got = read_through(m, Path("models") / reg.host / REPO / "latest" / "model")
    plain = [line for line in m.log_text().splitlines() if f"http://{reg.host}/" in line]
    assert got["ok"] and got["sha"] == layer.digest, (
        f"read through the mount: {got}; plain-HTTP requests to the TLS port: {plain[:3]}\n"
        f"log:\n{m.log()[-2000:]}")


# ================================================================ 2. secrets


def forbidden_strings(reg, extra=()):
    """Secrets that must never appear in a log, plus markers of them."""
    userpass = f"{USER}:{PASSWORD}".encode()
    found = [PASSWORD, base64.b64encode(userpass).decode(), "Authorization", "sig=", SIG_MARK,
             *extra]
    return found + reg.secrets_issued()


def assert_no_secrets(text, reg, what):
    leaks = [s for s in forbidden_strings(reg) if s in text]
    assert not leaks, f"{what} contains secrets {leaks}:\n" + "\n".join(
        line for line in text.splitlines() if any(s in line for s in leaks))[:3000]


def netrc(path, host="127.0.0.1", password=PASSWORD):
    path.write_text(f"machine {host} login {USER} password {password}\n")
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("setup", ["bearer-netrc", "basic-credentials", "bearer-redirect",
                                   "bearer-redirect-expiring"])
def test_debug_log_of_pull_has_no_secrets(fault_registry, blobfs, store, home, tmp_path, setup):
    """bearer-redirect-expiring: tokens good for 3 uses and CDN URLs for 2, so the
    refresh and re-resolve paths (and their log lines) run many times."""
    expiring = setup.endswith("-expiring")
    if setup == "bearer-netrc":
        reg = fault_registry(auth="bearer", token_credentials=(USER, PASSWORD))
        netrc(home / ".netrc")
        args = []
    elif setup == "basic-credentials":
        reg = fault_registry(auth="basic", credentials=(USER, PASSWORD))
        args = ["--credentials", netrc(tmp_path / "creds")]
    else:
        reg = fault_registry(auth="bearer", token_credentials=(USER, PASSWORD), redirect=True,
                             token_max_uses=3 if expiring else None,
                             cdn_max_uses=2 if expiring else None)
        args = ["--credentials", netrc(tmp_path / "creds")]
        if expiring:
            args += ["--request-size", "64K", "--connections", "2"]
    result = blobfs(["--debug", "pull", *args, f"{reg.host}/library/f"], timeout=40)
    assert result.returncode == 0, result.stderr
    assert (Path(store) / "blobs" / ("sha256-" + reg.layer.split(":")[1])).is_file()

    # Not vacuous: requests were logged, and the secrets were really used.
    logged = [line for line in debug_lines(result.stderr) if "GET " in line]
    assert any("/v2/library/f/manifests/latest" in line for line in logged), result.stderr
    assert len(logged) >= 3, result.stderr
    assert reg.count(had_auth=True) >= 2, "no request carried credentials"
    if setup.startswith("bearer"):
        assert reg.secrets_issued(), "no token was issued"
    if "redirect" in setup:
        assert reg.count(listener="cdn", status=206) + reg.count(listener="cdn", status=200) >= 1
        assert any(s.startswith(SIG_MARK) for s in reg.secrets_issued())
        assert not reg.cdn_saw_authorization, "credentials were sent to the CDN"
    if expiring:
        assert reg.count(listener="cdn", status=403) >= 1, "no CDN URL expired"
        assert reg.count(path_contains="/token") >= 2, "no token was refreshed"
        # The re-resolve path names the expired CDN URL: it must be cut at the '?'.
        cdn_lines = [line for line in debug_lines(result.stderr) if f"{reg.cdn_url}/cdn/" in line]
        assert cdn_lines, "no --debug line names a CDN URL: the redaction is not exercised"
    assert_no_secrets(result.stderr + result.stdout, reg, "pull --debug output")


@pytest.mark.parametrize("auth", ["bearer", "basic"])
def test_debug_log_of_refused_pull_has_no_secrets(fault_registry, blobfs, store, tmp_path, auth):
    """Wrong credentials: the error paths must not print what was sent either."""
    wrong = "s3cr3t-WRONG"
    if auth == "bearer":
        reg = fault_registry(auth="bearer", token_credentials=(USER, PASSWORD))
    else:
        reg = fault_registry(auth="basic", credentials=(USER, PASSWORD))
    creds = netrc(tmp_path / "creds", password=wrong)
    result = blobfs(["--debug", "pull", "--retries", "2", "--credentials", creds,
                     f"{reg.host}/library/f"], timeout=30)
    assert result.returncode == 1, result.stderr
    assert reg.count(had_auth=True) >= 1, "the wrong credentials were never sent"
    assert debug_lines(result.stderr), result.stderr
    leaked = [s for s in (wrong, base64.b64encode(f"{USER}:{wrong}".encode()).decode())
              if s in result.stderr]
    assert not leaked, f"the log shows the credentials sent: {leaked}\n{result.stderr}"
    assert_no_secrets(result.stderr, reg, "pull --debug output")


def test_debug_log_of_mount_has_no_secrets(fault_registry, blobfs, store, mount, tmp_path):
    reg = fault_registry(auth="bearer", token_credentials=(USER, PASSWORD), redirect=True)
    creds = netrc(tmp_path / "creds")
    pulled = blobfs(["--debug", "pull", "--lazy", "--credentials", creds, f"{reg.host}/library/f"],
                    timeout=30)
    assert pulled.returncode == 0, pulled.stderr
    tokens_before = len(reg.secrets_issued())
    m = mount(f"credentials={creds}")
    got = read_through(m, Path("models") / reg.host / "library/f/latest/model")
    assert got["ok"] and got["sha"] == reg.layer, f"{got}\n{m.log()[-3000:]}"
    m.cleanup()
    log = m.log_text()
    assert any("GET " in line for line in debug_lines(log)), f"no request in the mount's log:\n{log}"
    assert len(reg.secrets_issued()) > tokens_before, "the mount used no new token or CDN URL"
    assert reg.count(listener="cdn", status=206) + reg.count(listener="cdn", status=200) >= 1
    assert not reg.cdn_saw_authorization, "credentials were sent to the CDN"
    assert_no_secrets(pulled.stderr, reg, "pull --lazy --debug output")
    assert_no_secrets(log, reg, "the mount's --debug log")


def test_debug_log_names_cdn_requests_without_their_query(fault_registry, blobfs, store):
    """The man page: --debug logs every request, URLs without their query string.
    The presigned CDN URL must show up, cut at the '?'."""
    reg = fault_registry(redirect=True)
    result = blobfs(["--debug", "pull", f"{reg.host}/library/f"], timeout=30)
    assert result.returncode == 0, result.stderr
    cdn_path = f"{reg.cdn_url}/cdn/{reg.layer}"
    lines = [line for line in debug_lines(result.stderr) if cdn_path in line]
    assert lines, (f"no --debug line names the CDN URL {cdn_path} that served the layer; "
                   f"the request lines are:\n" +
                   "\n".join(line for line in debug_lines(result.stderr) if "GET" in line))
    assert all(line.split(cdn_path, 1)[1][:1] in ("", " ") for line in lines), lines
    assert_no_secrets(result.stderr, reg, "pull --debug output")


# ================================================================ 3. the state directory


def state_mode(store):
    return stat.S_IMODE((Path(store) / ".blobfs").stat().st_mode)


@pytest.mark.parametrize("how", ["pull", "mount"])
@pytest.mark.parametrize("before", ["absent", "0755"])
def test_state_dir_is_0700(fault_registry, blobfs, store, mount, how, before):
    """<store>/.blobfs is 0700 after a pull or a mount: made so under umask 000,
    and narrowed when it existed with 0755."""
    reg = fault_registry()
    if before == "0755":
        (Path(store) / ".blobfs").mkdir()
        (Path(store) / ".blobfs").chmod(0o755)
    if how == "pull":
        result = blobfs(["pull", "--quiet", f"{reg.host}/library/f"], umask=0, timeout=30)
        assert result.returncode == 0, result.stderr
    else:
        old = os.umask(0)
        try:
            mount()
        finally:
            os.umask(old)
    mode = state_mode(store)
    assert mode == 0o700, f"{store}/.blobfs has mode {mode:04o} after {how} (it was {before})"


# ================================================================ 4. who may enter the mount


def test_mount_is_private_to_its_user_by_default(mount):
    probe = run(as_nobody(["ls", mount.base]), timeout=20)
    assert probe.returncode == 0, f"uid {NOBODY} cannot reach the mountpoints at all: {probe.stderr}"
    m = mount()
    fstype, options = m.mount_entry()
    assert "allow_other" not in options, f"mounted with {options} without -o allow_other"
    mine = m.run(["ls", m.path], timeout=CHILD_TIMEOUT)
    assert mine.returncode == 0 and "models" in mine.stdout.split(), mine
    theirs = run(as_nobody(["ls", m.path]), timeout=20)
    assert theirs.returncode != 0, f"uid {NOBODY} listed the mount: {theirs.stdout!r}"
    assert "Permission denied" in theirs.stderr, theirs.stderr
    stat_probe = run(as_nobody([PYTHON, "-c",
                                "import os, sys\n"
                                "try:\n    os.stat(sys.argv[1]); print(0)\n"
                                "except OSError as e:\n    print(e.errno)", m.path]), timeout=20)
    assert stat_probe.stdout.strip() == str(errno.EACCES), stat_probe


def test_allow_other_lets_other_users_in(mount):
    m = mount("allow_other")
    fstype, options = m.mount_entry()
    assert "allow_other" in options, options
    theirs = run(as_nobody(["ls", m.path]), timeout=20)
    assert theirs.returncode == 0, theirs.stderr
    assert {"blobs", "manifests", "models"} <= set(theirs.stdout.split()), theirs.stdout


# ================================================================ 5. plain HTTP


def test_non_loopback_name_is_not_fetched_over_plain_http(sniffer, blobfs, store, hosts_file):
    """REGISTRY_NAME:PORT resolves to 127.0.0.1 but is not loopback by name:
    blobfs opens TLS (a ClientHello), never a plain-HTTP request."""
    port = sniffer.port
    result = blobfs(["pull", "--retries", "1", f"{REGISTRY_NAME}:{port}/library/f"],
                    hosts=hosts_file, timeout=30)
    assert result.returncode == 1, f"exit {result.returncode}:\n{result.stderr}"
    assert_only_tls_hellos(sniffer)
    assert re.search(r"SSL|TLS|https", error_lines(result.stderr), re.I), result.stderr
    assert_nothing_stored(store)


def test_https_scheme_forces_tls_on_loopback(sniffer, blobfs, store):
    result = blobfs(["pull", "--retries", "1", f"https://{sniffer.host}/library/f"], timeout=30)
    assert result.returncode == 1, f"exit {result.returncode}:\n{result.stderr}"
    assert_only_tls_hellos(sniffer)
    assert_nothing_stored(store)


@pytest.mark.parametrize("how", ["--insecure", "http://"])
def test_plain_http_to_non_loopback_name_when_asked(fault_registry, blobfs, store, hosts_file,
                                                    how):
    reg = fault_registry()
    port = reg.host.rsplit(":", 1)[1]
    name = f"{REGISTRY_NAME}:{port}/library/f"
    args = ["--insecure", "pull", name] if how == "--insecure" else ["pull", "http://" + name]
    result = blobfs(["--quiet", *args], hosts=hosts_file, timeout=30)
    assert result.returncode == 0, result.stderr
    assert reg.count(path_contains="/v2/library/f/manifests/latest", status=200) >= 1
    blob = Path(store) / "blobs" / ("sha256-" + reg.layer.split(":")[1])
    assert blob.is_file() and sha256_file(blob) == reg.layer


def test_http_pull_of_a_host_warns_that_it_stays_on_plain_http(fault_registry, blobfs, store,
                                                              hosts_file):
    """blobfs(1): a name written with http:// is recorded for its host, so later
    names without a scheme (and mounts) reach it over plain HTTP too. That
    switch is never silent."""
    reg = fault_registry()
    host = f"{REGISTRY_NAME}:{reg.host.rsplit(':', 1)[1]}"
    first = blobfs(["--quiet", "pull", f"http://{host}/library/f"], hosts=hosts_file, timeout=30)
    assert first.returncode == 0, first.stderr
    warnings = [line for line in first.stderr.splitlines() if line.startswith("blobfs: warning: ")]
    assert any(host in line and "plain HTTP" in line for line in warnings), \
        f"no warning that {host} is now reached over plain HTTP:\n{first.stderr}"
    again = blobfs(["--quiet", "pull", f"{host}/library/f"], hosts=hosts_file, timeout=30)
    assert again.returncode == 0, again.stderr
    assert reg.count(path_contains="/v2/library/f/manifests/latest", status=200) == 2


# ================================================================ 6. where credentials go


def basic_user(authorization):
    """The user of a Basic Authorization header; None without one."""
    if authorization is None:
        return None
    assert authorization.startswith("Basic "), authorization
    return base64.b64decode(authorization[6:]).decode().split(":", 1)[0]


def write_netrc(path, text):
    path.write_text(text)
    path.chmod(0o600)
    return path


@pytest.fixture
def tls_front(pki):
    """Factory: tls_front(reg, http2=False) -> dockerreg.TlsFront terminating TLS
    (the test certificate) before the FaultRegistry REG."""
    yield from stopped_after(
        lambda reg, http2=False: dockerreg.TlsFront(int(reg.host.rsplit(":", 1)[1]), pki["cert"],
                                                    pki["key"], http2=http2))


def test_credentials_never_go_to_a_plain_http_token_realm(fault_registry, tls_front, pki, blobfs,
                                                          store, home, tmp_path, hosts_file):
    """A registry reached over verified HTTPS names a token realm on another,
    non-loopback host over plain HTTP: neither the registry's credentials nor
    the realm's own go there in cleartext, and the refusal says why."""
    reg = fault_registry(auth="bearer", token_credentials=(REALM_USER, REALM_PASSWORD))
    port = reg.host.rsplit(":", 1)[1]
    reg.token_realm = f"http://{REALM_NAME}:{port}/token"
    front = tls_front(reg)
    host = f"{REGISTRY_NAME}:{front.host.rsplit(':', 1)[1]}"
    creds = write_netrc(tmp_path / "creds",
                        f"machine {host} login {USER} password {PASSWORD}\n"
                        f"machine {REALM_NAME} login {REALM_USER} password {REALM_PASSWORD}\n")
    write_netrc(home / ".netrc", f"default login {DEFAULT_USER} password {DEFAULT_PASSWORD}\n")
    result = blobfs(["--cacert", pki["ca"], "--credentials", creds, "pull", f"{host}/library/f"],
                    hosts=hosts_file, timeout=40)
    tokens = reg.requests(path_contains="/token")
    assert tokens, f"no token request reached the realm: the test proves nothing\n{result.stderr}"
    assert reg.requests(path_contains="/manifests/", had_auth=False), \
        "the registry was not reached through the TLS front"
    sent = [r.authorization for r in tokens if r.authorization]
    assert not sent, f"credentials went to http://{REALM_NAME} in cleartext: {sent}"
    assert result.returncode == 1, result.stderr
    message = error_lines(result.stderr)
    assert REALM_NAME in message and "plain HTTP" in message, message
    assert message.count("\n") == 0, f"the error is printed more than once:\n{message}"
    assert_nothing_stored(store)


@pytest.mark.parametrize("realm_entry", [True, False], ids=["realm-entry", "no-realm-entry"])
def test_a_token_realm_on_another_host_gets_only_its_own_credentials(
        fault_registry, tls_front, pki, blobfs, store, home, tmp_path, realm_entry):
    """The realm (on loopback, where plain HTTP may carry credentials) is another
    host than the registry: it gets the credentials configured for it, never
    the registry's, and never netrc's `default` entry."""
    reg = fault_registry(auth="bearer", token_credentials=(REALM_USER, REALM_PASSWORD))
    port = reg.host.rsplit(":", 1)[1]
    realm_host = f"localhost:{port}"
    reg.token_realm = f"http://{realm_host}/token"
    front = tls_front(reg)
    text = f"machine {front.host} login {USER} password {PASSWORD}\n"
    if realm_entry:
        text += f"machine {realm_host} login {REALM_USER} password {REALM_PASSWORD}\n"
    creds = write_netrc(tmp_path / "creds", text)
    write_netrc(home / ".netrc", f"default login {DEFAULT_USER} password {DEFAULT_PASSWORD}\n")
    result = blobfs(["--cacert", pki["ca"], "--credentials", creds, "pull",
                     f"https://{front.host}/library/f"], timeout=40)
    tokens = reg.requests(path_contains="/token")
    assert tokens, f"no token request reached the realm: the test proves nothing\n{result.stderr}"
    users = {basic_user(r.authorization) for r in tokens}
    if realm_entry:
        assert users == {REALM_USER}, f"the realm got the credentials of {users}"
        assert result.returncode == 0, result.stderr
        assert (Path(store) / "blobs" / ("sha256-" + reg.layer.split(":")[1])).is_file()
    else:
        assert users == {None}, f"the realm got the credentials of {users}"
        assert result.returncode == 1, result.stderr
        assert realm_host in error_lines(result.stderr), result.stderr


def test_basic_credentials_never_go_over_plain_http_to_a_non_loopback_host(
        fault_registry, blobfs, store, tmp_path, hosts_file):
    reg = fault_registry(auth="basic", credentials=(USER, PASSWORD))
    host = f"{REGISTRY_NAME}:{reg.host.rsplit(':', 1)[1]}"
    creds = write_netrc(tmp_path / "creds", f"machine {REGISTRY_NAME} login {USER} "
                                            f"password {PASSWORD}\n")
    result = blobfs(["--credentials", creds, "pull", f"http://{host}/library/f"],
                    hosts=hosts_file, timeout=30)
    assert reg.count(path_contains="/manifests/"), "the registry was never asked"
    sent = [r.authorization for r in reg.requests() if r.authorization]
    assert not sent, f"credentials went to http://{host} in cleartext: {sent}"
    assert result.returncode == 1, result.stderr
    message = error_lines(result.stderr)
    assert host in message and "plain HTTP" in message, message


def test_netrc_default_is_used_by_pull_and_never_by_a_mount(fault_registry, blobfs, store, home,
                                                            mount):
    """netrc's `default` entry goes only to the registry named on pull's command
    line. A mount never sends it: any user of the mount can make it discover,
    and so contact, a host of their choosing."""
    reg = fault_registry(auth="basic", credentials=(DEFAULT_USER, DEFAULT_PASSWORD))
    write_netrc(home / ".netrc", f"default login {DEFAULT_USER} password {DEFAULT_PASSWORD}\n")
    # Not vacuous: pull does send the default entry, and gets in with it.
    pulled = blobfs(["pull", "--lazy", f"{reg.host}/library/f"], timeout=30)
    assert pulled.returncode == 0, pulled.stderr
    assert {basic_user(r.authorization) for r in reg.requests()} >= {DEFAULT_USER}
    reg.add_model("library/g", "latest", [(OLLAMA_MODEL, os.urandom(1000))])
    reg.reset_log()
    m = mount()
    # A cold read of the pulled model, and discovery of another one.
    got = m.run([PYTHON, "-c", READ_ALL, m.path / "models" / reg.host / "library/f/latest/model"],
                timeout=CHILD_TIMEOUT)
    assert not json.loads(got.stdout)["ok"], "the mount read a blob that needs a login"
    m.run(["ls", m.path / "models" / reg.host / "library/g/latest"], timeout=CHILD_TIMEOUT)
    asked = reg.requests()
    assert any("/blobs/" in r.path for r in asked), "the mount never asked for the blob"
    assert any("/library/g/manifests/" in r.path for r in asked), "discovery never asked"
    sent = {basic_user(r.authorization) for r in asked}
    assert sent == {None}, f"the mount sent the credentials of {sent}"
