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

With ``tls=True`` a second nginx terminates TLS on 127.0.0.1 in front of the
registry (which stays on plain HTTP behind it), and the CDN, if any, speaks TLS
too; ``http2=True`` makes both offer HTTP/2 (ALPN h2), as real registries and
CDNs do.  The certificate is the caller's (``tls_cert``/``tls_key``, e.g. from
make_server_cert) or, by default, one made here for ``localhost`` and
127.0.0.1 by a throwaway CA whose certificate is ``reg.ca_cert``:

    with DockerRegistry(tls=True, cdn=True) as reg:
        push_model(reg.backend_url, ...)     # pushes skip the TLS front
        ...                                  # clients use reg.url (https://...)
                                             # and trust reg.ca_cert

With ``cdn_conn_rate`` an nginx ``stream`` proxy (Debian's libnginx-mod-stream)
sits in front of the CDN and caps every TCP connection at that rate
(proxy_download_rate), whatever it carries: one HTTP/1.1 request at a time or
many multiplexed HTTP/2 streams.  It opens one connection to the CDN per
client connection, so distinct ``connection`` values in the CDN's log
(``reg.cdn_connections()``) count the client's TCP connections.
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
import ssl
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
    '"host":"$http_host",'
    '"user_agent":"$http_user_agent",'
    '"connection":$connection,'
    '"connection_requests":$connection_requests,'
    '"protocol":"$server_protocol",'
    '"request_time":$request_time'
    "}'"
)

# Combined log format, which distribution writes to stdout for every request.
_ACCESS_LINE = re.compile(
    r'^(?P<remote>\S+) \S+ \S+ \[(?P<time>[^\]]+)\] '
    r'"(?P<method>\S+) (?P<uri>\S+) (?P<protocol>[^"]+)" '
    r'(?P<status>\d{3}) (?P<bytes>\d+|-) "(?P<referer>[^"]*)" "(?P<user_agent>[^"]*)"'
)

STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


class ToolMissing(RuntimeError):
    """A server binary is not installed; the message names the Debian package."""


class Finalized:
    """A server whose whole clean-up is its weakref finalizer (self._finalizer,
    run at most once): stop() runs it, and so does leaving a ``with`` block,
    garbage collection or exit."""

    def stop(self):
        """Stop the server and remove its files (idempotent)."""
        self._finalizer()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def tail(path, lines):
    """The last LINES lines of the text file PATH ("" if there is none), for a
    failure message."""
    try:
        text = Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


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


class CertAuthority:
    """A throwaway certificate authority made with the openssl CLI: cert and key
    are PEM file paths (the key unencrypted)."""

    def __init__(self, cert, key):
        self.cert = Path(cert)
        self.key = Path(key)


def _openssl(*args):
    openssl = find_tool("openssl", "openssl")
    result = subprocess.run([openssl, *map(str, args)], stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(map(str, args))} failed:\n{result.stderr}")


def make_ca(directory, name="blobfs test CA"):
    """Create DIRECTORY/ca.pem and DIRECTORY/ca.key, a self-signed CA valid for 2 days."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "ca.pem", directory / "ca.key"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return CertAuthority(cert, key)


def make_server_cert(ca, directory, dns_names=("localhost",), ip_addresses=("127.0.0.1",),
                     stem="server"):
    """A server certificate signed by CA (a CertAuthority) for the given subjectAltNames.

    Writes DIRECTORY/STEM.pem and DIRECTORY/STEM.key; returns (cert, key) paths.
    The common name is the first DNS name (or address); clients that honour
    subjectAltName ignore it.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{stem}.pem", directory / f"{stem}.key"
    csr, ext = directory / f"{stem}.csr", directory / f"{stem}.ext"
    sans = [f"DNS:{name}" for name in dns_names] + [f"IP:{addr}" for addr in ip_addresses]
    if not sans:
        raise ValueError("a server certificate needs at least one DNS name or IP address")
    common_name = (list(dns_names) + list(ip_addresses))[0]
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        f"subjectAltName={','.join(sans)}\n"
    )
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", key, "-out", csr, "-subj", f"/CN={common_name}")
    _openssl("x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey", ca.key,
             "-set_serial", "0x" + secrets.token_hex(8), "-days", "2",
             "-extfile", ext, "-out", cert)
    return cert, key


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
        return tail(self.stderr_path, lines)


def _probe(port, path, timeout=1.0, tls=False):
    """The response to GET http[s]://127.0.0.1:PORT/PATH, or None if nothing answers.

    With TLS the certificate is not checked: the instance token header is."""
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=context)
    else:
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


def _start_on_free_port(name, launch, ready_path, ready_status, token, timeout, tls=False):
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
            response = _probe(port, ready_path, tls=tls)
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


class _Nginxes(Finalized):
    """Server processes (nginx instances, mostly) sharing one temp dir and
    stopped together: on stop(), on leaving the ``with`` block, on garbage
    collection or at exit."""

    def __init__(self, prefix, http2=False):
        self.workdir = Path(tempfile.mkdtemp(prefix=prefix))
        self.http2 = http2
        self._servers = []
        self._token = secrets.token_hex(8)  # tells our servers from strangers
        self._finalizer = weakref.finalize(self, _shutdown, self._servers, self.workdir)

    def _nginx_listen(self, port, tls):
        if tls is None:
            return f"        listen 127.0.0.1:{port};\n"
        cert, key = tls
        return (
            f"        listen 127.0.0.1:{port} ssl{' http2' if self.http2 else ''};\n"
            f"        ssl_certificate {cert};\n"
            f"        ssl_certificate_key {key};\n"
        )

    def _nginx_main(self, prefix, access_log, http_body, comment):
        user = "user root;\n" if os.geteuid() == 0 else ""
        temp = "".join(
            f"    {kind}_temp_path {prefix}/tmp/{kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        return (
            f"{comment}"
            f"{user}"
            f"worker_processes 1;\n"
            f"pid {prefix}/nginx.pid;\n"
            f"error_log {prefix}/error.log info;\n"
            f"events {{ worker_connections 1024; }}\n"
            f"http {{\n"
            f"    log_format cdn {_CDN_LOG_FORMAT};\n"
            f"    access_log {access_log} cdn;\n"
            f"{temp}"
            f"{http_body}"
            f"}}\n"
        )

    def _tls_front_config(self, prefix, port, backend_port, access_log, tls, ready=False):
        """nginx terminating TLS (cert, key) and passing requests to a plain HTTP
        backend; READY: it answers the readiness probe itself."""
        probe = (
            f"        location = {_CDN_READY_PATH} {{\n"
            f"            access_log off;\n"
            f"            add_header {_TOKEN_HEADER} {self._token};\n"
            f"            return 204;\n"
            f"        }}\n"
        ) if ready else ""
        return self._nginx_main(prefix, access_log, (
            f"    server {{\n"
            f"{self._nginx_listen(port, tls)}"
            f"        client_max_body_size 0;\n"
            f"{probe}"
            f"        location / {{\n"
            f"            proxy_pass http://127.0.0.1:{backend_port};\n"
            f"            proxy_http_version 1.1;\n"
            f"            proxy_set_header Host $http_host;\n"
            f"            proxy_set_header X-Forwarded-Proto https;\n"
            f"            proxy_set_header Connection \"\";\n"
            f"            proxy_buffering off;\n"
            f"            proxy_request_buffering off;\n"
            f"            proxy_read_timeout 300s;\n"
            f"        }}\n"
            f"    }}\n"
        ), "# TLS front.\n")

    def _start_nginx(self, nginx_bin, name, prefix, make_config, ready_path, ready_status,
                     timeout, tls):
        (prefix / "tmp").mkdir(parents=True)
        conf = prefix / "nginx.conf"

        def launch(port):
            conf.write_text(make_config(port))
            return _Server(
                name,
                [nginx_bin, "-p", f"{prefix}/", "-c", str(conf),
                 "-e", str(prefix / "error.log"), "-g", "daemon off;"],
                prefix / "stdout.log",
                prefix / "error.log",
            )

        server, port = _start_on_free_port(
            name, launch, ready_path, ready_status, self._token, timeout, tls=tls)
        self._servers.append(server)
        return port

    def log_tail(self, lines=20):
        """Last lines of the servers' error logs, for failure messages."""
        return "\n".join(server.name + ":\n" + server.log_tail(lines) for server in self._servers)


class TlsFront(_Nginxes):
    """nginx terminating TLS on 127.0.0.1 in front of any plain HTTP server on
    127.0.0.1:BACKEND_PORT (a FaultRegistry, say), with the caller's
    certificate; http2 offers HTTP/2 too.  Attributes: host, url
    ("https://127.0.0.1:PORT"), access_log (one JSON line per request, as the
    CDN's; see log_entries)."""

    def __init__(self, backend_port, cert, key, http2=False, start_timeout=15.0):
        nginx_bin = find_tool("nginx", "nginx-light")
        super().__init__("blobfs-tls-front-", http2)
        prefix = self.workdir / "tls"
        self.access_log = prefix / "access.log"
        try:
            port = self._start_nginx(
                nginx_bin, "nginx-tls", prefix,
                lambda port: self._tls_front_config(prefix, port, backend_port,
                                                    self.access_log, (cert, key), ready=True),
                _CDN_READY_PATH, 204, start_timeout, True)
        except BaseException:
            self.stop()
            raise
        self.host = f"127.0.0.1:{port}"
        self.url = f"https://{self.host}"

    def log_mark(self):
        return _read_log(self.access_log, 0)[1]

    def log_entries(self, since=0):
        """Requests answered after offset SINCE, oldest first; dicts as
        DockerRegistry.cdn_log_entries gives."""
        return [json.loads(line) for line in _read_log(self.access_log, since)[0]]


class DockerRegistry(_Nginxes):
    """A throwaway registry (no auth, deletes enabled) on 127.0.0.1.

    Attributes: url ("http://127.0.0.1:PORT", or "https://..." with tls), host
    ("127.0.0.1:PORT"), backend_url (the registry itself over plain HTTP: equal
    to url without tls), rootdir (storage root), workdir (temp dir holding
    config, logs and storage); with a CDN also cdn_url and cdn_host; with tls
    also ca_cert (the CA that signed the default certificate, None when the
    caller gave one), tls_cert and tls_key.  Servers stop and the temp dir is
    removed on stop(), on leaving the ``with`` block, on garbage collection or
    at exit.
    """

    def __init__(self, cdn=False, cdn_rate=None, start_timeout=15.0, tls=False,
                 tls_cert=None, tls_key=None, cdn_tls_cert=None, cdn_tls_key=None,
                 http2=False, cdn_conn_rate=None, cdn_autoindex=False):
        """cdn_rate: nginx limit_rate, which caps each request (e.g. "40m" =
        40 MiB/s), not the total; implies cdn.  cdn_autoindex: the CDN lists
        directories (nginx autoindex), for clients that browse to a blob
        (rclone's and httpdirfs's http backends); implies cdn.  cdn_conn_rate: a stream proxy
        in front of the CDN caps each TCP connection at this rate (nginx
        syntax); implies cdn.  http2: TLS listeners offer HTTP/2 too (needs
        tls).

        tls: put an nginx TLS front before the registry (url becomes https://)
        and serve the CDN over TLS.  tls_cert/tls_key: PEM files of the
        server certificate (default: made here for localhost and 127.0.0.1);
        cdn_tls_cert/cdn_tls_key: the CDN's, if different from the front's.
        """
        registry_bin = find_tool("docker-registry", "docker-registry")
        cdn = cdn or bool(cdn_rate) or bool(cdn_conn_rate) or cdn_autoindex
        nginx_bin = find_tool("nginx", "nginx") if cdn or tls else None
        if cdn_conn_rate and not os.path.exists(STREAM_MODULE):
            raise ToolMissing("nginx's stream module is not installed: install the Debian "
                              "package 'libnginx-mod-stream'")
        if http2 and not tls:
            raise ValueError("http2 needs tls=True (nginx offers HTTP/2 through ALPN)")
        if (tls_cert is None) != (tls_key is None) or (cdn_tls_cert is None) != (cdn_tls_key is None):
            raise ValueError("give a certificate and its key together")
        if not tls and (tls_cert or cdn_tls_cert):
            raise ValueError("tls_cert and cdn_tls_cert need tls=True")
        super().__init__("blobfs-registry-", http2)
        self.rootdir = self.workdir / "storage"
        self.rootdir.mkdir()
        self.registry_log = self.workdir / "registry.log"
        self.registry_access_log = self.workdir / "registry-access.log"
        self.cdn_url = self.cdn_host = None
        self.cdn_access_log = self.workdir / "cdn" / "access.log"
        self.cdn_autoindex = cdn_autoindex
        self.tls = tls
        self.ca_cert = self.tls_cert = self.tls_key = None
        self.tls_access_log = self.workdir / "tls" / "access.log"
        try:
            if tls:
                if tls_cert is None:
                    ca = make_ca(self.workdir / "pki")
                    tls_cert, tls_key = make_server_cert(ca, self.workdir / "pki")
                    self.ca_cert = ca.cert
                self.tls_cert, self.tls_key = Path(tls_cert), Path(tls_key)
                if cdn_tls_cert is None:
                    cdn_tls_cert, cdn_tls_key = tls_cert, tls_key
            if cdn:
                cdn_tls = (cdn_tls_cert, cdn_tls_key) if tls else None
                cdn_port = self._start_cdn(nginx_bin, cdn_rate, start_timeout, cdn_tls)
                if cdn_conn_rate:
                    cdn_port = self._start_stream_cap(nginx_bin, cdn_port, cdn_conn_rate,
                                                      start_timeout)
                self.cdn_host = f"127.0.0.1:{cdn_port}"
                self.cdn_url = f"{'https' if tls else 'http'}://{self.cdn_host}"
            port = self._start_registry(registry_bin, start_timeout)
            self.backend_host = f"127.0.0.1:{port}"
            self.backend_url = f"http://{self.backend_host}"
            if tls:
                port = self._start_tls_front(nginx_bin, port, start_timeout)
        except BaseException:
            self.stop()
            raise
        self.host = f"127.0.0.1:{port}"
        self.url = f"{'https' if tls else 'http'}://{self.host}"
        # Log offset after the readiness probes: the default "since".
        self._registry_log_start = _read_log(self.registry_access_log, 0)[1]
        self._tls_log_start = _read_log(self.tls_access_log, 0)[1] if tls else 0

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

    def _nginx_config(self, prefix, port, rate, tls=None):
        """The CDN's nginx.conf; TLS: (cert, key) to listen with TLS."""
        limit = f"            limit_rate {rate};\n" if rate else ""
        if self.cdn_autoindex:
            limit = "            autoindex on;\n" + limit
        return self._nginx_main(prefix, self.cdn_access_log, (
            f"    default_type application/octet-stream;\n"
            f"    sendfile on;\n"
            f"    server {{\n"
            f"{self._nginx_listen(port, tls)}"
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
        ), "# Static CDN for the test registry's storage directory.\n")

    def _start_cdn(self, nginx_bin, rate, timeout, tls=None):
        prefix = self.workdir / "cdn"
        return self._start_nginx(
            nginx_bin, "nginx", prefix, lambda port: self._nginx_config(prefix, port, rate, tls),
            _CDN_READY_PATH, 204, timeout, tls is not None)

    def _stream_cap_config(self, prefix, port, backend_port, rate):
        return (
            "# Per-TCP-connection rate cap in front of the test CDN.\n"
            f"load_module {STREAM_MODULE};\n"
            + ("user root;\n" if os.geteuid() == 0 else "")
            + "worker_processes 1;\n"
            f"pid {prefix}/nginx.pid;\n"
            f"error_log {prefix}/error.log info;\n"
            "events { worker_connections 1024; }\n"
            "stream {\n"
            "    server {\n"
            f"        listen 127.0.0.1:{port};\n"
            f"        proxy_pass 127.0.0.1:{backend_port};\n"
            f"        proxy_download_rate {rate};\n"
            "    }\n"
            "}\n"
        )

    def _start_stream_cap(self, nginx_bin, backend_port, rate, timeout):
        prefix = self.workdir / "cap"
        # The CDN's readiness probe answers through the proxy, instance header included.
        return self._start_nginx(
            nginx_bin, "nginx-cap", prefix,
            lambda port: self._stream_cap_config(prefix, port, backend_port, rate),
            _CDN_READY_PATH, 204, timeout, self.tls)

    def _start_tls_front(self, nginx_bin, backend_port, timeout):
        prefix = self.workdir / "tls"
        # The registry's /v2/ answers 200 with the instance header through the proxy.
        return self._start_nginx(
            nginx_bin, "nginx-tls", prefix,
            lambda port: self._tls_front_config(prefix, port, backend_port, self.tls_access_log,
                                                (self.tls_cert, self.tls_key)),
            "/v2/", 200, timeout, True)

    @property
    def pids(self):
        """PIDs of the running servers (CDN nginx master first when there is a
        CDN, then its stream cap's with cdn_conn_rate, then the registry, then
        the TLS front's nginx master with tls);
        each leads its own process group, so os.killpg(pid, sig) reaches workers."""
        return [server.popen.pid for server in self._servers if server.alive()]

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
        body), body_bytes_sent, range (the Range header or ""), host (the Host
        header), user_agent, connection
        (nginx connection serial number), connection_requests, request_time.
        """
        self._require_cdn()
        return [json.loads(line) for line in _read_log(self.cdn_access_log, since)[0]]

    def tls_log_mark(self):
        """Offset in the TLS front's access log (requires tls)."""
        self._require_tls()
        return _read_log(self.tls_access_log, 0)[1]

    def tls_log_entries(self, since=None):
        """Requests the TLS front answered after offset SINCE (default: since it
        became ready, so the harness's probes are not counted), oldest first;
        dicts as cdn_log_entries gives.  A client that gave up during the TLS
        handshake sent no request, so it leaves no entry."""
        self._require_tls()
        if since is None:
            since = self._tls_log_start
        return [json.loads(line) for line in _read_log(self.tls_access_log, since)[0]]

    def cdn_connections(self, since=0):
        """{connection serial: [entries]} of the CDN requests after offset SINCE:
        how many TCP connections the client opened (to the stream cap, if any),
        and what each carried."""
        by_connection = {}
        for entry in self.cdn_log_entries(since):
            by_connection.setdefault(entry["connection"], []).append(entry)
        return by_connection

    def cdn_bytes_sent(self, since=0):
        """Bytes the CDN sent (headers + bodies) after offset SINCE."""
        return sum(e["bytes_sent"] for e in self.cdn_log_entries(since))

    def cdn_body_bytes_sent(self, since=0):
        """Body bytes the CDN sent after offset SINCE."""
        return sum(e["body_bytes_sent"] for e in self.cdn_log_entries(since))

    def _require_tls(self):
        if not self.tls:
            raise RuntimeError("this DockerRegistry was started without TLS (tls=True)")

    def _require_cdn(self):
        if not self.cdn_url:
            raise RuntimeError("this DockerRegistry was started without a CDN (cdn=True)")


class PullThroughCache(DockerRegistry):
    """Debian's docker-registry in proxy mode: a pull-through cache of UPSTREAM_URL,
    the way a site runs one near its machines (distribution's `proxy: remoteurl`)."""

    def __init__(self, upstream_url, **options):
        self.upstream_url = upstream_url
        super().__init__(**options)

    def _registry_config(self, port):
        config = super()._registry_config(port)
        config["proxy"] = {"remoteurl": self.upstream_url}
        return config
