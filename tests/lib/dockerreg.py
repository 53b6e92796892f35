"""Run Debian's docker-registry (CNCF distribution 2.8) and, optionally, an nginx
"CDN" in front of its storage, both on 127.0.0.1, for tests.

With ``cdn=True`` the registry's ``redirect`` storage middleware makes every blob
GET/HEAD answer ``307 Temporary Redirect`` to nginx, which serves the registry's
storage directory as static files (byte ranges included) -- the way Ollama's
registry hands blob downloads to its CDN.  nginx logs one JSON line per request,
so tests can count exactly what the CDN sent.

    with DockerRegistry(cdn=True, cdn_rate="40m") as reg:
        mark = reg.cdn_log_mark()
        ...                                  # download through reg.url
        assert reg.cdn_bytes_sent(since=mark) < limit
"""

import ctypes
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from pathlib import Path

START_ATTEMPTS = 5  # new free port after an "address already in use" race
STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL
# nginx writes a request's log line only after the last byte went out, so a
# client can finish reading before the line exists: logs are read once they
# stayed unchanged for LOG_SETTLE seconds (or after LOG_SETTLE_MAX).
LOG_SETTLE = 0.1
LOG_SETTLE_MAX = 5.0

# Readiness probes expect this header with a per-instance token, so a server
# that won a port race is never mistaken for ours.
_TOKEN_HEADER = "X-Blobfs-Test-Instance"
_CDN_READY_PATH = "/.blobfs-test-ready"

_CDN_LOG_FORMAT = (
    "escape=json '{"
    '"time":$msec,'
    '"request":"$request",'
    '"method":"$request_method",'
    '"uri":"$request_uri",'
    '"status":$status,'
    '"bytes_sent":$bytes_sent,'
    '"body_bytes_sent":$body_bytes_sent,'
    '"range":"$http_range",'
    '"connection":$connection,'
    '"connection_requests":$connection_requests,'
    '"request_time":$request_time'
    "}'"
)

# Combined log format, which distribution writes to stdout for every request.
_ACCESS_LINE = re.compile(
    r'^(?P<remote>\S+) \S+ \S+ \[(?P<time>[^\]]+)\] '
    r'"(?P<method>\S+) (?P<uri>\S+) (?P<protocol>[^"]+)" '
    r'(?P<status>\d{3}) (?P<bytes>\d+|-) "(?P<referer>[^"]*)" "(?P<user_agent>[^"]*)"'
)

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


class ToolMissing(RuntimeError):
    """A server binary is not installed; the message names the Debian package."""


def find_tool(name, package):
    """Absolute path of NAME, searched on PATH and in /usr/sbin (where nginx lives)."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        raise ToolMissing(
            f"'{name}' is not installed: install the Debian package '{package}'"
        )
    return path


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago (callers retry on races)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent():
    """Run in the child before exec: get SIGTERM if the test process dies."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class _Server:
    """One server process in its own process group, output sent to files."""

    def __init__(self, name, argv, stdout_path, stderr_path):
        self.name = name
        self.stderr_path = Path(stderr_path)
        with open(stdout_path, "ab") as out, open(stderr_path, "ab") as err:
            self.popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def alive(self):
        return self.popen.poll() is None

    def stop(self):
        """SIGTERM the group (nginx's master ends its workers), SIGKILL after a bound."""
        if not self.alive():
            return
        os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(STOP_TIMEOUT)

    def log_tail(self, lines=20):
        try:
            text = self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _probe(port, path, timeout=1.0):
    """The response to GET http://127.0.0.1:PORT/PATH, or None if nothing answers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp
    except OSError:
        return None
    finally:
        conn.close()


def _start_on_free_port(name, launch, ready_path, ready_status, token, timeout):
    """Start a server via launch(port) -> _Server; retry on port races.

    Waits until GET READY_PATH answers READY_STATUS with TOKEN in the
    _TOKEN_HEADER header, which tells our server from one that won the port.
    Returns (server, port).
    """
    for _ in range(START_ATTEMPTS):
        port = free_port()
        server = launch(port)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and server.alive():
            response = _probe(port, ready_path)
            if (response is not None and response.status == ready_status
                    and response.getheader(_TOKEN_HEADER) == token):
                return server, port
            time.sleep(0.05)
        exited = not server.alive()
        server.stop()
        tail = server.log_tail()
        if exited and "address already in use" in tail.lower():
            continue
        what = (f"exited with status {server.popen.returncode}" if exited
                else f"did not answer GET {ready_path} within {timeout:.0f}s")
        raise RuntimeError(f"{name} on 127.0.0.1:{port} {what}; log tail:\n{tail}")
    raise RuntimeError(f"{name}: no free port after {START_ATTEMPTS} attempts")


def _read_log(path, since):
    """Complete lines of PATH from byte offset SINCE once the file stops growing.

    Returns (lines, end_offset).
    """
    deadline = time.monotonic() + LOG_SETTLE_MAX
    size = -1
    while True:
        current = path.stat().st_size if path.exists() else 0
        if current == size or time.monotonic() > deadline:
            break
        size = current
        time.sleep(LOG_SETTLE)
    if size <= since:
        return [], since
    with open(path, "rb") as f:
        f.seek(since)
        data = f.read(size - since)
    complete = data[: data.rfind(b"\n") + 1]
    return complete.decode("utf-8", "replace").splitlines(), since + len(complete)


def _shutdown(servers, workdir):
    for server in reversed(servers):
        server.stop()
    servers.clear()
    shutil.rmtree(workdir, ignore_errors=True)


class DockerRegistry:
    """A throwaway registry (no auth, deletes enabled) on 127.0.0.1.

    Attributes: url ("http://127.0.0.1:PORT"), host ("127.0.0.1:PORT"), rootdir
    (storage root), workdir (temp dir holding config, logs and storage); with a
    CDN also cdn_url and cdn_host.  Servers stop and the temp dir is removed on
    stop(), on leaving the ``with`` block, on garbage collection or at exit.
    """

    def __init__(self, cdn=False, cdn_rate=None, start_timeout=15.0):
        """cdn_rate: nginx limit_rate, which caps each request (e.g. "40m" =
        40 MiB/s), not the total; implies cdn."""
        registry_bin = find_tool("docker-registry", "docker-registry")
        nginx_bin = find_tool("nginx", "nginx-light") if cdn or cdn_rate else None
        self.workdir = Path(tempfile.mkdtemp(prefix="blobfs-registry-"))
        self.rootdir = self.workdir / "storage"
        self.rootdir.mkdir()
        self.registry_log = self.workdir / "registry.log"
        self.registry_access_log = self.workdir / "registry-access.log"
        self.cdn_url = self.cdn_host = None
        self.cdn_access_log = self.workdir / "cdn" / "access.log"
        self._servers = []
        self._token = secrets.token_hex(8)  # tells our servers from strangers
        self._finalizer = weakref.finalize(self, _shutdown, self._servers, self.workdir)
        try:
            if nginx_bin:
                cdn_port = self._start_cdn(nginx_bin, cdn_rate, start_timeout)
                self.cdn_host = f"127.0.0.1:{cdn_port}"
                self.cdn_url = f"http://{self.cdn_host}"
            port = self._start_registry(registry_bin, start_timeout)
        except BaseException:
            self.stop()
            raise
        self.host = f"127.0.0.1:{port}"
        self.url = f"http://{self.host}"
        # Log offset after the readiness probes: the default "since".
        self._registry_log_start = _read_log(self.registry_access_log, 0)[1]

    def _registry_config(self, port):
        config = {
            "version": "0.1",
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.rootdir)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {
                "addr": f"127.0.0.1:{port}",
                "secret": "blobfs-tests",
                "headers": {_TOKEN_HEADER: [self._token]},
            },
        }
        if self.cdn_url:
            config["middleware"] = {
                "storage": [{"name": "redirect", "options": {"baseurl": self.cdn_url}}]
            }
        return config

    def _start_registry(self, registry_bin, timeout):
        config_path = self.workdir / "config.yml"

        def launch(port):
            # JSON is YAML, and needs no quoting rules of its own.
            config_path.write_text(json.dumps(self._registry_config(port), indent=2))
            return _Server(
                "docker-registry",
                [registry_bin, "serve", str(config_path)],
                self.registry_access_log,
                self.registry_log,
            )

        server, port = _start_on_free_port(
            "docker-registry", launch, "/v2/", 200, self._token, timeout)
        self._servers.append(server)
        return port

    def _nginx_config(self, prefix, port, rate):
        user = "user root;\n" if os.geteuid() == 0 else ""
        limit = f"            limit_rate {rate};\n" if rate else ""
        temp = "".join(
            f"    {kind}_temp_path {prefix}/tmp/{kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        return (
            f"# Static CDN for the test registry's storage directory.\n"
            f"{user}"
            f"worker_processes 1;\n"
            f"pid {prefix}/nginx.pid;\n"
            f"error_log {prefix}/error.log info;\n"
            f"events {{ worker_connections 1024; }}\n"
            f"http {{\n"
            f"    log_format cdn {_CDN_LOG_FORMAT};\n"
            f"    access_log {self.cdn_access_log} cdn;\n"
            f"{temp}"
            f"    default_type application/octet-stream;\n"
            f"    sendfile on;\n"
            f"    server {{\n"
            f"        listen 127.0.0.1:{port};\n"
            f"        root {self.rootdir};\n"
            f"        location = {_CDN_READY_PATH} {{\n"
            f"            access_log off;\n"
            f"            add_header {_TOKEN_HEADER} {self._token};\n"
            f"            return 204;\n"
            f"        }}\n"
            f"        location / {{\n"
            f"{limit}"
            f"        }}\n"
            f"    }}\n"
            f"}}\n"
        )

    def _start_cdn(self, nginx_bin, rate, timeout):
        prefix = self.workdir / "cdn"
        (prefix / "tmp").mkdir(parents=True)
        conf = prefix / "nginx.conf"

        def launch(port):
            conf.write_text(self._nginx_config(prefix, port, rate))
            return _Server(
                "nginx",
                [nginx_bin, "-p", f"{prefix}/", "-c", str(conf),
                 "-e", str(prefix / "error.log"), "-g", "daemon off;"],
                prefix / "stdout.log",
                prefix / "error.log",
            )

        server, port = _start_on_free_port(
            "nginx", launch, _CDN_READY_PATH, 204, self._token, timeout)
        self._servers.append(server)
        return port

    def stop(self):
        """Stop nginx and the registry, remove the temp dir (idempotent)."""
        self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    @property
    def pids(self):
        """PIDs of the running servers (nginx master first when there is a CDN);
        each leads its own process group, so os.killpg(pid, sig) reaches workers."""
        return [server.popen.pid for server in self._servers if server.alive()]

    def log_tail(self, lines=20):
        """Last lines of the registry's (and nginx's) error logs, for failure messages."""
        return "\n".join(server.name + ":\n" + server.log_tail(lines) for server in self._servers)

    def blob_path(self, digest):
        """Where the registry stores blob DIGEST ("sha256:<hex>") on disk."""
        algorithm, hexdigest = digest.split(":", 1)
        return (self.rootdir / "docker/registry/v2/blobs" / algorithm
                / hexdigest[:2] / hexdigest / "data")

    def cdn_blob_url(self, digest):
        """The URL the registry redirects blob DIGEST to (requires cdn)."""
        self._require_cdn()
        return self.cdn_url + "/" + str(self.blob_path(digest).relative_to(self.rootdir))

    # --- request logs ---------------------------------------------------

    def registry_log_mark(self):
        """Offset in the registry's access log; pass as since= to count later requests."""
        return _read_log(self.registry_access_log, 0)[1]

    def registry_log_entries(self, since=None):
        """Requests the registry answered after offset SINCE (default: since it
        became ready, so the harness's own probes are not counted), oldest first.

        Each a dict: method, uri, status (int), bytes (int, body bytes),
        user_agent, remote, time.
        """
        entries = []
        if since is None:
            since = self._registry_log_start
        for line in _read_log(self.registry_access_log, since)[0]:
            match = _ACCESS_LINE.match(line)
            if match is None:
                continue  # the registry's own stdout chatter, if any
            entry = match.groupdict()
            entry["status"] = int(entry["status"])
            entry["bytes"] = 0 if entry["bytes"] == "-" else int(entry["bytes"])
            entries.append(entry)
        return entries

    def cdn_log_mark(self):
        """Offset in the CDN's access log; pass as since= to count later requests."""
        self._require_cdn()
        return _read_log(self.cdn_access_log, 0)[1]

    def cdn_log_entries(self, since=0):
        """Requests nginx finished after offset SINCE, oldest first (the
        harness's readiness probe is not logged).

        Each a dict: time, request, method, uri, status, bytes_sent (headers +
        body), body_bytes_sent, range (the Range header or ""), connection
        (nginx connection serial number), connection_requests, request_time.
        """
        self._require_cdn()
        return [json.loads(line) for line in _read_log(self.cdn_access_log, since)[0]]

    def cdn_bytes_sent(self, since=0):
        """Bytes the CDN sent (headers + bodies) after offset SINCE."""
        return sum(e["bytes_sent"] for e in self.cdn_log_entries(since))

    def cdn_body_bytes_sent(self, since=0):
        """Body bytes the CDN sent after offset SINCE."""
        return sum(e["body_bytes_sent"] for e in self.cdn_log_entries(since))

    def _require_cdn(self):
        if not self.cdn_url:
            raise RuntimeError("this DockerRegistry was started without a CDN (cdn=True)")
