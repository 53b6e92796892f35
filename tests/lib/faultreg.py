#!/usr/bin/python3
"""faultreg: a small Docker/OCI Registry v2 server that misbehaves on purpose.

Design.  `FaultRegistry` owns all state (blobs, manifests, tokens, presigned CDN
grants, injected faults and the request log) behind one lock, and runs one or two
`_Listener`s (a registry and, optionally, a "CDN" on another port), each an
`http.server.HTTPServer` that serves every connection on its own daemon thread
with HTTP/1.1 keep-alive.  A request is routed to a small `_serve_*` method that
builds a `_Response` (status, headers, Content-Length and an iterator of body
pieces); faults are looked up once per request (`_take_fault`, first match wins,
optionally limited to `times` uses) and act at one of three places: they replace
the response (status, a redirect anywhere or in a loop, or none at all: hang), reshape its content (ignore/wrong range,
corrupt, bad JSON, huge), or steer how the body reaches the socket (`_Plan`:
reset, short, stall after N bytes or after a share of each body, trickle, extra bytes).  The body is written with raw
`socket.send` calls, so the log counts body bytes as they are handed to the
kernel; a reset first waits for the kernel's send queue to drain and then closes
with SO_LINGER 0, so the client sees an RST after exactly the bytes counted.
Every wait goes through one stop event, so `stop()` interrupts stalls and
trickles, shuts down every open connection and joins the threads within a bound.

Run `/usr/bin/python3 tests/lib/faultreg.py --help` to serve an Ollama store by hand.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import fcntl
import hashlib
import http.server
import itertools
import json
import math
import os
import re
import secrets
import signal
import socket
import struct
import termios
import threading
import time
from dataclasses import dataclass, field, fields
from typing import Callable, Iterable, Iterator
from urllib.parse import parse_qs, unquote

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OLLAMA_MODEL = "application/vnd.ollama.image.model"
SERVICE = "faultreg"
DEFAULT_CONFIG = b'{"model_format":"gguf","model_family":"llama","architecture":"amd64","os":"linux"}'

READ_SIZE = 64 * 1024
EXTRA_FILL = b"#"  # filler for the "extra" fault: never valid blob content by accident
IDLE_TIMEOUT = 60.0  # seconds a keep-alive connection may sit idle
DRAIN_TIMEOUT = 2.0  # seconds a reset waits for the client to take the bytes already sent
TRICKLE_TICKS = 20  # pieces per second when trickling
UNSATISFIABLE = "unsatisfiable"

ENDPOINTS = ("v2", "token", "manifest", "blob", "chunksums")
_DOCUMENTS = ("v2", "token", "manifest", "chunksums")
_REQUIRED = object()
# kind -> (parameters with their defaults, endpoints the kind may be set on)
FAULT_KINDS = {
    "status": ({"code": _REQUIRED, "retry_after": None}, ENDPOINTS),
    "reset": ({"after": 0}, ENDPOINTS),
    "short": ({"after": None}, ENDPOINTS),
    "stall": ({"seconds": _REQUIRED, "after": 0, "fraction": None}, ENDPOINTS),
    "trickle": ({"rate": _REQUIRED}, ENDPOINTS),
    "hang": ({}, ENDPOINTS),
    "extra": ({"count": 16, "honest": True}, ENDPOINTS),
    "ignore_range": ({}, ("blob",)),
    "wrong_range": ({"shift": 1}, ("blob",)),
    "corrupt": ({"offset": _REQUIRED, "length": 1}, ("blob",)),
    "redirect_loop": ({"via": "self"}, ("blob",)),
    "redirect": ({"location": _REQUIRED}, ("blob",)),
    "bad_json": ({}, _DOCUMENTS),
    "huge": ({"size": 64 << 20}, _DOCUMENTS),
}
_ERROR_CODES = {401: "UNAUTHORIZED", 403: "DENIED", 404: "NOT_FOUND", 429: "TOOMANYREQUESTS"}

_ROUTE = re.compile(r"/v2/(?P<repo>.+)/(?P<section>manifests|blobs|chunksums)/(?P<ref>[^/]+)")
_CDN_ROUTE = re.compile(r"/cdn/(?P<digest>sha256:[0-9a-f]{64})")
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class _Shutdown(Exception):
    """The server is stopping: abandon the response in progress."""


# ---------------------------------------------------------------- public records


@dataclass
class RequestRecord:
    """One request as seen by the server; updated in place while it is answered."""

    time: float  # time.monotonic() when the request line arrived
    listener: str  # "registry" or "cdn"
    method: str
    path: str  # as sent, query included
    range: str | None  # the Range header, verbatim
    had_auth: bool  # an Authorization header was present
    authorization: str | None  # the Authorization header, verbatim
    conn: int  # connection number within its listener (same number: keep-alive reuse)
    digest: str | None = None  # blob digest for blob, chunksums and CDN requests
    status: int | None = None
    bytes_sent: int = 0  # body bytes handed to the socket
    fault: str | None = None  # kind of the fault applied, if any


_RECORD_FIELDS = {f.name for f in fields(RequestRecord)}


@dataclass
class Fault:
    """An injected misbehaviour; `hits` counts the responses it has spoiled."""

    kind: str
    params: dict
    on: str = "blob"
    digest: str | None = None
    listener: str | None = None
    method: str | None = "GET"
    start: int | None = None
    covers: int | None = None
    times: int | None = None
    hits: int = 0

    def matches(self, target: _Target) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.on != target.endpoint:
            return False
        wanted = ((self.digest, target.digest), (self.listener, target.listener), (self.method, target.method))
        if any(want is not None and want != actual for want, actual in wanted):
            return False
        if self.kind == "corrupt" and not target.overlaps(self.params["offset"], self.params["length"]):
            return False
        if self.start is not None and (target.span is None or target.span[0] != self.start):
            return False
        return self.covers is None or target.overlaps(self.covers, 1)


# ---------------------------------------------------------------- internal state


@dataclass
class _Target:
    """What a fault is matched against: one request to one endpoint."""

    endpoint: str
    listener: str
    method: str
    digest: str | None = None
    span: tuple[int, int] | None = None  # blob bytes [start, end) the request asks for

    def overlaps(self, offset: int, length: int) -> bool:
        return self.span is not None and offset < self.span[1] and self.span[0] < offset + length


@dataclass
class _Blob:
    digest: str
    size: int
    data: bytes | None = None
    path: str | None = None
    chunk_size: int | None = None
    _chunksums: str | None = field(default=None, repr=False)

    def read(self, start: int, end: int) -> Iterator[tuple[int, bytes]]:
        """Yield (offset, bytes) pieces covering [start, end)."""
        if self.data is not None:
            for offset in range(start, end, READ_SIZE):
                yield offset, self.data[offset : min(offset + READ_SIZE, end)]
            return
        with open(self.path, "rb") as f:
            f.seek(start)
            offset = start
            while offset < end:
                piece = f.read(min(READ_SIZE, end - offset))
                if not piece:
                    raise OSError(f"{self.path} shrank while being served")
                yield offset, piece
                offset += len(piece)

    def chunksums(self) -> str:
        """Ollama chunk checksum lines, `sha256:<hex> <start>-<end>` with inclusive ends."""
        if self._chunksums is None:
            lines = []
            for start in range(0, self.size, self.chunk_size):
                end = min(start + self.chunk_size, self.size)
                h = hashlib.sha256()
                for _, piece in self.read(start, end):
                    h.update(piece)
                lines.append(f"sha256:{h.hexdigest()} {start}-{end - 1}\n")
            self._chunksums = "".join(lines)
        return self._chunksums


@dataclass
class _Manifest:
    body: bytes
    media_type: str
    digest: str


@dataclass
class _Token:
    repos: frozenset
    issued: float
    uses: int = 0
    revoked: bool = False


@dataclass
class _Grant:
    """A presigned CDN URL."""

    repo: str
    digest: str
    uses: int = 0
    revoked: bool = False


@dataclass
class _Response:
    status: int
    headers: list
    body: Iterable[bytes] = ()
    length: int = 0  # the Content-Length to announce

    @classmethod
    def of(cls, status: int, body: bytes, content_type: str, headers=()) -> _Response:
        return cls(status, [("Content-Type", content_type), *headers], [body], len(body))


@dataclass
class _Plan:
    """How a body reaches the socket: where to cut or pause, and how fast."""

    cut_at: int | None = None
    reset: bool = False  # cut with RST instead of FIN
    pause_at: int | None = None
    pause: float = 0.0
    rate: int | None = None

    @classmethod
    def for_fault(cls, fault: Fault | None, length: int) -> _Plan:
        kind, p = (fault.kind, fault.params) if fault else (None, {})
        if kind == "reset":
            return cls(cut_at=p["after"], reset=True)
        if kind == "short":
            return cls(cut_at=length // 2 if p["after"] is None else p["after"])
        if kind == "stall" and p["fraction"] is not None:
            # After that share of each response's own body, rounded up: a body
            # of one byte is sent whole, so every response delivers something.
            return cls(pause_at=math.ceil(length * p["fraction"]), pause=p["seconds"])
        if kind == "stall":
            return cls(pause_at=p["after"], pause=p["seconds"])
        if kind == "trickle":
            return cls(rate=p["rate"])
        return cls()

    def step(self, available: int, sent: int) -> int:
        """Bytes to send next; never crosses a pause or cut point."""
        step = available
        for limit in (self.pause_at, self.cut_at):
            if limit is not None:
                step = min(step, limit - sent)
        if self.rate:
            step = min(step, max(1, self.rate // TRICKLE_TICKS))
        return step


# ---------------------------------------------------------------- small helpers


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            h.update(piece)
    return "sha256:" + h.hexdigest()


def parse_range(header: str | None, size: int):
    """Return (start, end) with end exclusive, None to serve the whole blob, or UNSATISFIABLE.

    Malformed and multi-range headers are ignored (answered with the whole blob), as
    RFC 9110 allows.
    """
    m = _RANGE.fullmatch(header.strip()) if header else None
    if m is None or m.groups() == ("", ""):
        return None
    first, last = m.groups()
    if first == "":
        suffix = int(last)
        return (max(0, size - suffix), size) if suffix and size else UNSATISFIABLE
    start = int(first)
    if last != "" and int(last) < start:
        return None
    if start >= size:
        return UNSATISFIABLE
    return start, size if last == "" else min(int(last) + 1, size)


def _shifted(span: tuple[int, int], shift: int, size: int) -> tuple[int, int]:
    start = min(max(span[0] + shift, 0), size - 1)
    return start, min(start + span[1] - span[0], size)


def _flipped(pieces: Iterable[tuple[int, bytes]], offset: int, length: int):
    """Invert every byte of [offset, offset+length) in a stream of (offset, bytes)."""
    for at, data in pieces:
        lo, hi = max(offset, at), min(offset + length, at + len(data))
        if lo < hi:
            data = bytearray(data)
            for i in range(lo - at, hi - at):
                data[i] ^= 0xFF
            data = bytes(data)
        yield at, data


def _padding(size: int) -> Iterator[bytes]:
    """A syntactically valid JSON document of exactly `size` bytes (size >= 32)."""
    head, tail = b'{"schemaVersion":2,"padding":"', b'"}'
    yield head
    left = size - len(head) - len(tail)
    while left > 0:
        yield b"a" * min(left, READ_SIZE)
        left -= READ_SIZE
    yield tail


def _error(status: int, code: str, message: str, headers=()) -> _Response:
    body = json.dumps({"errors": [{"code": code, "message": message, "detail": None}]}).encode()
    return _Response.of(status, body, "application/json", headers)


def _status_response(fault: Fault) -> _Response:
    code, retry_after = fault.params["code"], fault.params["retry_after"]
    headers = [] if retry_after is None else [("Retry-After", str(retry_after))]
    return _error(code, _ERROR_CODES.get(code, "UNKNOWN"), f"injected status {code}", headers)


def _blob_response(blob: _Blob, span, fault: Fault | None) -> _Response:
    kind = fault.kind if fault else None
    headers = [
        ("Content-Type", "application/octet-stream"),
        ("Accept-Ranges", "bytes"),
        ("Docker-Content-Digest", blob.digest),
    ]
    if span == UNSATISFIABLE:
        return _Response(416, headers + [("Content-Range", f"bytes */{blob.size}")])
    if span is None or kind == "ignore_range":
        status, (start, end) = 200, (0, blob.size)
    else:
        status, (start, end) = 206, span
        if kind == "wrong_range":
            start, end = _shifted(span, fault.params["shift"], blob.size)
        headers.append(("Content-Range", f"bytes {start}-{end - 1}/{blob.size}"))
    pieces = blob.read(start, end)
    if kind == "corrupt":
        pieces = _flipped(pieces, fault.params["offset"], fault.params["length"])
    return _Response(status, headers, (data for _, data in pieces), end - start)


def _basic_matches(authorization: str | None, credentials) -> bool:
    if not authorization or not authorization.startswith("Basic "):
        return False
    try:
        given = base64.b64decode(authorization[6:].strip(), validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return False
    return given == "%s:%s" % tuple(credentials)


def _scoped_repos(scopes: list[str]) -> frozenset:
    """Repositories granted pull by `repository:<name>:<actions>` scopes."""
    repos = set()
    for scope in " ".join(scopes).split():
        parts = scope.split(":")
        if len(parts) >= 3 and parts[0] == "repository" and "pull" in parts[-1].split(","):
            repos.add(":".join(parts[1:-1]))
    return frozenset(repos)


# ---------------------------------------------------------------- the server


class FaultRegistry:
    """A registry (and optional CDN) on 127.0.0.1 whose faults tests set at any time.

    Starts serving on construction; use as a context manager or call stop().
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        cdn: bool = False,
        cdn_port: int = 0,
        redirect: bool = False,
        redirect_status: int = 307,
        auth: str | None = None,
        credentials: tuple[str, str] = ("user", "pass"),
        token_credentials: tuple[str, str] | None = None,
        token_ttl: float | None = None,
        token_max_uses: int | None = None,
        cdn_max_uses: int | None = None,
        cdn_expired_status: int = 403,
    ):
        if auth not in (None, "bearer", "basic"):
            raise ValueError(f"auth must be None, 'bearer' or 'basic', not {auth!r}")
        # Plain attributes: tests may change them at any time.
        self.redirect = redirect
        if redirect_status not in (301, 302, 303, 307, 308):
            raise ValueError(f"redirect_status must be a redirect (301, 302, 303, 307, 308), not {redirect_status}")
        self.redirect_status = redirect_status  # what blob GETs (and redirect faults) answer
        self.auth = auth
        self.credentials = credentials
        self.token_credentials = token_credentials
        self.token_ttl = token_ttl
        self.token_max_uses = token_max_uses
        self.cdn_max_uses = cdn_max_uses
        self.cdn_expired_status = cdn_expired_status
        self.token_realm = None  # the realm Bearer challenges name; None: this server's /token
        self.tokens_revoked_at = None  # time.monotonic() of the last revocation of tokens
        self.cdn_revoked_at = None     # ... of CDN URLs
        self._revoke_tokens_in = None  # blob requests until the armed revocation (expire_tokens)
        self._revoke_cdn_in = None     # CDN requests until it (expire_cdn_urls)
        self.peak_in_flight = 0  # most requests ever answered at the same time

        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._blobs: dict[str, _Blob] = {}
        self._manifests: dict[tuple[str, str], _Manifest] = {}
        self._faults: list[Fault] = []
        self._tokens: dict[str, _Token] = {}
        self._grants: dict[str, _Grant] = {}
        self._log: list[RequestRecord] = []
        self._in_flight = 0

        self._listeners = [_Listener((host, port), self, "registry")]
        self.host = f"{host}:{self._listeners[0].server_port}"
        self.url = f"http://{self.host}"
        self.cdn_host = self.cdn_url = None
        if cdn or redirect:
            self._listeners.append(_Listener((host, cdn_port), self, "cdn"))
            self.cdn_host = f"{host}:{self._listeners[1].server_port}"
            self.cdn_url = f"http://{self.cdn_host}"
        for listener in self._listeners:
            listener.start()

    def __enter__(self) -> FaultRegistry:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self, timeout: float = 5.0) -> None:
        """Close every listener and connection; join the threads within `timeout` seconds."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        deadline = time.monotonic() + timeout
        for listener in self._listeners:
            listener.close(deadline)

    # ------------------------------------------------------------ content

    def add_blob(self, content, *, chunk_size: int | None = None, digest: str | None = None) -> str:
        """Serve `content` (bytes, or a file path served from disk) and return its digest.

        `chunk_size` enables the chunksums endpoint for this blob.  `digest` overrides the
        computed digest (skips hashing a big file, or serves content that lies about itself).
        Adding the same digest again replaces the earlier entry.
        """
        if isinstance(content, (bytes, bytearray, memoryview)):
            data = bytes(content)
            blob = _Blob(digest or sha256_digest(data), len(data), data=data)
        else:
            path = os.fspath(content)
            blob = _Blob(digest or _file_digest(path), os.path.getsize(path), path=path)
        blob.chunk_size = chunk_size
        with self._lock:
            self._blobs[blob.digest] = blob
        return blob.digest

    def add_manifest(self, repo: str, tag: str, body: bytes, media_type: str = DOCKER_MANIFEST) -> str:
        """Serve `body` at /v2/<repo>/manifests/<tag> and .../<digest>; return the digest.

        The manifest is also served as a blob, as Ollama's registry does.
        """
        digest = self.add_blob(body)
        manifest = _Manifest(bytes(body), media_type, digest)
        with self._lock:
            self._manifests[(repo, tag)] = manifest
            self._manifests[(repo, digest)] = manifest
        return digest

    def add_model(
        self,
        repo: str,
        tag: str,
        layers: list,
        config: bytes = DEFAULT_CONFIG,
        oci: bool = False,
        chunk_size: int | None = None,
    ) -> tuple[bytes, list[str]]:
        """Add an Ollama-style model: blobs for config and layers plus the manifest.

        `layers` is a list of (media_type, bytes_or_path).  Returns the manifest bytes and
        the layer digests in the order given (the config digest is in the manifest).
        """
        descriptors, digests = [], []
        for media_type, content in layers:
            digest = self.add_blob(content, chunk_size=chunk_size)
            descriptors.append({"mediaType": media_type, "digest": digest, "size": self._blobs[digest].size})
            digests.append(digest)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST if oci else DOCKER_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG if oci else DOCKER_CONFIG,
                "digest": self.add_blob(config),
                "size": len(config),
            },
            "layers": descriptors,
        }
        body = json.dumps(manifest, separators=(",", ":")).encode()
        self.add_manifest(repo, tag, body, manifest["mediaType"])
        return body, digests

    # ------------------------------------------------------------ faults

    def fault(
        self,
        kind: str,
        *,
        on: str = "blob",
        digest: str | None = None,
        listener: str | None = None,
        method: str | None = "GET",
        start: int | None = None,
        covers: int | None = None,
        times: int | None = None,
        **params,
    ) -> Fault:
        """Inject a fault into matching responses from now on; see FAULT_KINDS for params."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(FAULT_KINDS)}")
        defaults, endpoints = FAULT_KINDS[kind]
        if on not in endpoints:
            raise ValueError(f"fault {kind!r} applies to {endpoints}, not {on!r}")
        if params.keys() - defaults.keys():
            raise ValueError(f"fault {kind!r} takes {sorted(defaults)}, not {sorted(params.keys() - defaults.keys())}")
        merged = {**defaults, **params}
        missing = [name for name, value in merged.items() if value is _REQUIRED]
        if missing:
            raise ValueError(f"fault {kind!r} needs {missing}")
        if kind == "stall" and merged["fraction"] is not None and not 0 < merged["fraction"] <= 1:
            raise ValueError(f"stall's fraction is a share of the body in (0, 1], not {merged['fraction']!r}")
        if listener not in (None, "registry", "cdn"):
            raise ValueError(f"listener must be None, 'registry' or 'cdn', not {listener!r}")
        fault = Fault(kind, merged, on, digest, listener, method, start, covers, times)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def expire_tokens(self, after: int = 0) -> None:
        """Revoke every bearer token issued so far; with AFTER, once that many more
        blob requests have been let in (the server itself does it then, in the
        middle of a transfer however fast or slow the machine is)."""
        with self._lock:
            if after:
                self._revoke_tokens_in = after
            else:
                self._revoke_tokens()

    def expire_cdn_urls(self, after: int = 0) -> None:
        """Revoke every CDN URL handed out so far (they then answer cdn_expired_status);
        with AFTER, once the CDN has taken that many more requests."""
        with self._lock:
            if after:
                self._revoke_cdn_in = after
            else:
                self._revoke_cdn()

    def _revoke_tokens(self) -> None:  # lock held
        for token in self._tokens.values():
            token.revoked = True
        self.tokens_revoked_at = time.monotonic()

    def _revoke_cdn(self) -> None:  # lock held
        for grant in self._grants.values():
            grant.revoked = True
        self.cdn_revoked_at = time.monotonic()

    def _count_blob_request(self) -> None:
        """A blob request got past authentication: it may be the one an armed revocation waits for."""
        with self._lock:
            if self._revoke_tokens_in is not None:
                self._revoke_tokens_in -= 1
                if self._revoke_tokens_in <= 0:
                    self._revoke_tokens_in = None
                    self._revoke_tokens()

    # ------------------------------------------------------------ the record

    def requests(self, predicate: Callable[[RequestRecord], bool] | None = None, **criteria) -> list[RequestRecord]:
        """Logged requests, oldest first, matching `predicate` and every criterion.

        Criteria are RequestRecord fields compared for equality (e.g. listener="cdn",
        status=206, fault=None), plus path_contains="...".
        """
        path_contains = criteria.pop("path_contains", None)
        unknown = criteria.keys() - _RECORD_FIELDS
        if unknown:
            raise TypeError(f"no such record fields: {sorted(unknown)}")
        with self._lock:
            records = list(self._log)
        return [
            r
            for r in records
            if (predicate is None or predicate(r))
            and (path_contains is None or path_contains in r.path)
            and all(getattr(r, name) == value for name, value in criteria.items())
        ]

    def count(self, predicate: Callable[[RequestRecord], bool] | None = None, **criteria) -> int:
        return len(self.requests(predicate, **criteria))

    def bytes_sent(self, digest: str | None = None, listener: str | None = None) -> int:
        """Body bytes written for blob requests, optionally for one digest and/or listener."""
        criteria = {name: value for name, value in (("digest", digest), ("listener", listener)) if value}
        return sum(r.bytes_sent for r in self.requests(lambda r: r.digest is not None, **criteria))

    @property
    def cdn_saw_authorization(self) -> bool:
        """True if any request to the CDN carried an Authorization header (it must not)."""
        return self.count(listener="cdn", had_auth=True) > 0

    def reset_log(self) -> None:
        with self._lock:
            self._log.clear()
            self.peak_in_flight = self._in_flight

    # ------------------------------------------------------------ used by the handler

    def _begin(self, record: RequestRecord) -> None:
        with self._lock:
            self._log.append(record)
            self._in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self._in_flight)

    def _end(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _wait(self, seconds: float) -> None:
        if seconds > 0 and self._stopping.wait(seconds):
            raise _Shutdown

    def _blob(self, digest: str) -> _Blob | None:
        with self._lock:
            return self._blobs.get(digest)

    def _manifest(self, repo: str, ref: str) -> _Manifest | None:
        with self._lock:
            return self._manifests.get((repo, ref))

    def _take_fault(self, target: _Target, kinds: tuple | None) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if (kinds is None or fault.kind in kinds) and fault.matches(target):
                    fault.hits += 1
                    return fault
        return None

    def _blob_url(self, repo: str, digest: str) -> str:
        return f"{self.url}/v2/{repo}/blobs/{digest}"

    def _mint_cdn_url(self, repo: str, digest: str) -> str:
        if self.cdn_url is None:
            raise RuntimeError("a CDN redirect needs FaultRegistry(cdn=True)")
        sig = secrets.token_hex(8)
        with self._lock:
            self._grants[sig] = _Grant(repo, digest)
        return f"{self.cdn_url}/cdn/{digest}?sig={sig}"

    def _use_grant(self, sig: str, digest: str | None) -> tuple[_Grant | None, int | None]:
        """Spend one use of a CDN URL; return (grant, None) or (None, status to refuse with)."""
        with self._lock:
            grant = self._grants.get(sig)
            if grant is None or grant.digest != digest:
                return None, 403
            grant.uses += 1
            if grant.revoked or (self.cdn_max_uses is not None and grant.uses > self.cdn_max_uses):
                return None, self.cdn_expired_status
            if self._revoke_cdn_in is not None:
                self._revoke_cdn_in -= 1
                if self._revoke_cdn_in <= 0:      # this one still goes through
                    self._revoke_cdn_in = None
                    self._revoke_cdn()
            return grant, None

    def _issue_token(self, scopes: list[str]) -> dict:
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[token] = _Token(_scoped_repos(scopes), time.monotonic())
        issued_at = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        expires_in = 3600 if self.token_ttl is None else max(1, math.ceil(self.token_ttl))
        return {"token": token, "access_token": token, "expires_in": expires_in, "issued_at": issued_at}

    def _spend_token(self, token: str, repo: str | None) -> bool:
        with self._lock:
            t = self._tokens.get(token)
            if t is None or t.revoked or (repo is not None and repo not in t.repos):
                return False
            if self.token_ttl is not None and time.monotonic() - t.issued >= self.token_ttl:
                return False
            if self.token_max_uses is not None and t.uses >= self.token_max_uses:
                return False
            t.uses += 1
            return True

    def _challenge_for(self, authorization: str | None, repo: str | None) -> str | None:
        """None if the request may proceed, else the WWW-Authenticate value for a 401."""
        if self.auth is None:
            return None
        if self.auth == "basic":
            return None if _basic_matches(authorization, self.credentials) else f'Basic realm="{SERVICE}"'
        token = authorization[7:].strip() if authorization and authorization.startswith("Bearer ") else None
        if token is not None and self._spend_token(token, repo):
            return None
        realm = self.token_realm or f"{self.url}/token"
        challenge = f'Bearer realm="{realm}",service="{SERVICE}"'
        if repo is not None:
            challenge += f',scope="repository:{repo}:pull"'
        if token is not None:
            challenge += ',error="invalid_token"'
        return challenge


class _Listener(http.server.HTTPServer):
    """One listening port; each connection gets a tracked daemon thread."""

    request_queue_size = 128

    def __init__(self, address, registry: FaultRegistry, name: str):
        super().__init__(address, _Handler)
        self.registry = registry
        self.name = name
        self.conn_ids = itertools.count(1)
        self._workers: dict[threading.Thread, socket.socket] = {}
        self._workers_lock = threading.Lock()
        self._loop = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def start(self) -> None:
        self._loop.start()

    def process_request(self, request, client_address) -> None:
        worker = threading.Thread(target=self._serve_connection, args=(request, client_address), daemon=True)
        with self._workers_lock:
            self._workers[worker] = request
        worker.start()

    def _serve_connection(self, request, client_address) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            with self._workers_lock:
                del self._workers[threading.current_thread()]

    def close(self, deadline: float) -> None:
        self.shutdown()
        self.server_close()
        with self._workers_lock:
            workers = dict(self._workers)
        for conn in workers.values():
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by the client or by a reset fault
        for thread in [self._loop, *workers]:
            thread.join(max(0.0, deadline - time.monotonic()))


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "faultreg/1"
    timeout = IDLE_TIMEOUT
    disable_nagle_algorithm = True
    server: _Listener

    def setup(self) -> None:
        super().setup()
        self.reg = self.server.registry
        self.conn_id = next(self.server.conn_ids)

    def handle(self) -> None:
        try:
            super().handle()
        except (OSError, _Shutdown):
            self.close_connection = True  # the client went away, or stop() was called

    def log_message(self, format, *args) -> None:
        pass  # the request log replaces stderr chatter

    def do_GET(self) -> None:
        self.record = RequestRecord(
            time=time.monotonic(),
            listener=self.server.name,
            method=self.command,
            path=self.path,
            range=self.headers.get("Range"),
            had_auth="Authorization" in self.headers,
            authorization=self.headers.get("Authorization"),
            conn=self.conn_id,
        )
        self.reg._begin(self.record)
        try:
            path, _, query = self.path.partition("?")
            if self.server.name == "cdn":
                self._serve_cdn(path, parse_qs(query))
            else:
                self._serve_registry(path, parse_qs(query))
        finally:
            self.reg._end()

    do_HEAD = do_GET

    # ------------------------------------------------------------ routes

    def _serve_registry(self, path: str, query: dict) -> None:
        if path == "/token":
            self._serve_token(query)
        elif path in ("/v2", "/v2/"):
            if self._authorized(None):
                self._send_document("v2", b"{}", "application/json")
        elif m := _ROUTE.fullmatch(path):
            if self._authorized(m["repo"]):
                getattr(self, "_serve_" + m["section"])(m["repo"], unquote(m["ref"]))
        else:
            self._respond(_error(404, "NAME_UNKNOWN", f"no route for {path}"))

    def _serve_token(self, query: dict) -> None:
        reg = self.reg
        if reg.auth != "bearer":
            return self._respond(_error(404, "UNSUPPORTED", "no token service without auth='bearer'"))
        if reg.token_credentials and not _basic_matches(self.headers.get("Authorization"), reg.token_credentials):
            challenge = ("WWW-Authenticate", f'Basic realm="{SERVICE}-token"')
            return self._respond(_error(401, "UNAUTHORIZED", "token service needs credentials", [challenge]))
        body = json.dumps(reg._issue_token(query.get("scope", []))).encode()
        self._send_document("token", body, "application/json")

    def _serve_manifests(self, repo: str, ref: str) -> None:
        manifest = self.reg._manifest(repo, ref)
        if manifest is None:
            return self._respond(_error(404, "MANIFEST_UNKNOWN", f"manifest unknown: {repo}:{ref}"))
        headers = [("Docker-Content-Digest", manifest.digest)]
        self._send_document("manifest", manifest.body, manifest.media_type, headers, manifest.digest)

    def _serve_chunksums(self, repo: str, digest: str) -> None:
        self.record.digest = digest
        blob = self.reg._blob(digest)
        if blob is None or blob.chunk_size is None:
            return self._respond(_error(404, "BLOB_UNKNOWN", f"no chunksums for {digest}"))
        reg = self.reg
        location = reg._mint_cdn_url(repo, digest) if reg.redirect else reg._blob_url(repo, digest)
        body = blob.chunksums().encode()
        self._send_document("chunksums", body, "text/plain; charset=utf-8", [("Content-Location", location)], digest)

    def _serve_blobs(self, repo: str, digest: str) -> None:
        self.record.digest = digest
        self.reg._count_blob_request()
        blob = self.reg._blob(digest)
        if blob is None:
            return self._respond(_error(404, "BLOB_UNKNOWN", f"blob unknown: {digest}"))
        span = parse_range(self.headers.get("Range"), blob.size)
        redirecting = self.reg.redirect and self.command == "GET"
        # A redirect carries no body, so only faults that replace the response may hit it.
        fault = self._take_fault("blob", digest, span, ("status", "redirect_loop", "redirect", "hang") if redirecting else None)
        if redirecting and fault is None:
            return self._redirect(self.reg._mint_cdn_url(repo, digest))
        self._send_blob(repo, blob, span, fault)

    def _serve_cdn(self, path: str, query: dict) -> None:
        m = _CDN_ROUTE.fullmatch(path)
        grant, refusal = self.reg._use_grant(query.get("sig", [""])[0], m and m["digest"])
        if refusal is not None:
            return self._respond(_Response.of(refusal, b"URL expired or not signed\n", "text/plain"))
        self.record.digest = grant.digest
        blob = self.reg._blob(grant.digest)
        if blob is None:
            return self._respond(_Response.of(404, b"no such object\n", "text/plain"))
        span = parse_range(self.headers.get("Range"), blob.size)
        self._send_blob(grant.repo, blob, span, self._take_fault("blob", blob.digest, span))

    # ------------------------------------------------------------ response builders

    def _authorized(self, repo: str | None) -> bool:
        challenge = self.reg._challenge_for(self.headers.get("Authorization"), repo)
        if challenge is not None:
            self._respond(_error(401, "UNAUTHORIZED", "authentication required", [("WWW-Authenticate", challenge)]))
        return challenge is None

    def _take_fault(self, endpoint: str, digest: str | None = None, span=None, kinds=None) -> Fault | None:
        span = None if span == UNSATISFIABLE else span
        target = _Target(endpoint, self.server.name, self.command, digest, span)
        fault = self.reg._take_fault(target, kinds)
        self.record.fault = fault.kind if fault else None
        return fault

    def _send_document(self, endpoint: str, body: bytes, content_type: str, headers=(), digest=None) -> None:
        fault = self._take_fault(endpoint, digest)
        kind = fault.kind if fault else None
        if kind == "hang":
            return self._hang()
        if kind == "status":
            return self._respond(_status_response(fault), fault)
        pieces, length = [body], len(body)
        if kind == "bad_json":
            pieces, length = [body[: len(body) // 2]], len(body) // 2
        elif kind == "huge":
            pieces, length = _padding(fault.params["size"]), fault.params["size"]
        self._respond(_Response(200, [("Content-Type", content_type), *headers], pieces, length), fault)

    def _send_blob(self, repo: str, blob: _Blob, span, fault: Fault | None) -> None:
        kind = fault.kind if fault else None
        if kind == "hang":
            self._hang()
        elif kind == "status":
            self._respond(_status_response(fault), fault)
        elif kind == "redirect_loop":
            self._redirect(self._loop_location(fault.params["via"], repo, blob.digest))
        elif kind == "redirect":
            self._redirect(fault.params["location"])
        else:
            self._respond(_blob_response(blob, span, fault), fault)

    def _loop_location(self, via: str, repo: str, digest: str) -> str:
        if via == "self":
            return ("http://%s:%d" % self.server.server_address) + self.path
        if self.server.name == "cdn":
            return self.reg._blob_url(repo, digest)
        return self.reg._mint_cdn_url(repo, digest)

    def _hang(self) -> None:
        """Read the request, answer nothing, hold the connection until stop()."""
        self.close_connection = True
        self.reg._stopping.wait()
        raise _Shutdown

    def _redirect(self, location: str) -> None:
        self._respond(_Response(self.reg.redirect_status, [("Location", location)]))

    # ------------------------------------------------------------ the wire

    def _respond(self, response: _Response, fault: Fault | None = None) -> None:
        body, length = response.body, response.length
        if fault and fault.kind == "extra":
            body = itertools.chain(body, [EXTRA_FILL * fault.params["count"]])
            length += fault.params["count"] if fault.params["honest"] else 0
        self.record.status = response.status
        self.send_response(response.status)
        if self.server.name == "registry":
            self.send_header("Docker-Distribution-API-Version", "registry/2.0")
        for name, value in response.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if self.command != "HEAD":
            self._deliver(body, _Plan.for_fault(fault, length))

    def _deliver(self, pieces: Iterable[bytes], plan: _Plan) -> None:
        """Write the body following `plan`."""
        sent, paced_since = 0, time.monotonic()
        for piece in pieces:
            view = memoryview(piece)
            while view:
                if plan.pause_at is not None and sent >= plan.pause_at:
                    self.reg._wait(plan.pause)
                    plan.pause_at = None
                if plan.cut_at is not None and sent >= plan.cut_at:
                    self._cut(plan.reset)
                    return
                step = plan.step(len(view), sent)
                self._send_counted(view[:step])
                sent, view = sent + step, view[step:]
                if plan.rate:
                    self.reg._wait(paced_since + sent / plan.rate - time.monotonic())
        if plan.cut_at is not None:
            self._cut(plan.reset)

    def _send_counted(self, view: memoryview) -> None:
        # Counted before send() returns, so a client that has read the bytes never
        # finds them missing from the record; corrected when fewer went out.
        while view:
            self.record.bytes_sent += len(view)
            try:
                n = self.connection.send(view)
            except OSError:
                self.record.bytes_sent -= len(view)
                raise
            self.record.bytes_sent -= len(view) - n
            view = view[n:]

    def _cut(self, reset: bool) -> None:
        """End the connection mid-body: FIN (clean close) or RST (reset)."""
        self.close_connection = True
        if reset:
            self._drain()
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()  # drop the makefile reference so close() really closes
            self.connection.close()

    def _drain(self) -> None:
        """Wait until the peer has acknowledged everything sent (an RST would discard it)."""
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while time.monotonic() < deadline:
            unacked = fcntl.ioctl(self.connection.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
            if struct.unpack("i", unacked)[0] == 0:
                return
            self.reg._wait(0.005)


# ---------------------------------------------------------------- command line


def load_store(reg: FaultRegistry, root: str, chunk_size: int | None = None) -> list[str]:
    """Serve an Ollama store (blobs/sha256-<hex>, manifests/<host>/<ns>/<name>/<tag>).

    Blob digests are taken from the file names, not recomputed.  Returns "repo:tag" names.
    """
    blobs = os.path.join(root, "blobs")
    for name in sorted(os.listdir(blobs)) if os.path.isdir(blobs) else []:
        if re.fullmatch(r"sha256-[0-9a-f]{64}", name):
            reg.add_blob(os.path.join(blobs, name), chunk_size=chunk_size, digest=name.replace("-", ":", 1))
    models = []
    manifests = os.path.join(root, "manifests")
    for dirpath, _, filenames in os.walk(manifests):
        parts = os.path.relpath(dirpath, manifests).split(os.sep)
        if len(parts) != 3:
            continue
        for tag in filenames:
            with open(os.path.join(dirpath, tag), "rb") as f:
                body = f.read()
            repo = f"{parts[1]}/{parts[2]}"
            reg.add_manifest(repo, tag, body, json.loads(body).get("mediaType", DOCKER_MANIFEST))
            models.append(f"{repo}:{tag}")
    return models


def parse_fault_spec(spec: str) -> tuple[str, dict]:
    """"reset:after=65536,times=3" -> ("reset", {"after": 65536, "times": 3})."""
    kind, _, rest = spec.partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        name, _, text = item.partition("=")
        options[name] = _literal(text)
    return kind, options


def _literal(text: str):
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A registry v2 server with injectable faults, for experiments.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="registry port (default: any free port)")
    parser.add_argument("--cdn-port", type=int, default=0, help="CDN port (default: any free port)")
    parser.add_argument("--dir", help="Ollama store to serve: blobs/sha256-<hex>, manifests/<host>/<ns>/<name>/<tag>")
    parser.add_argument("--redirect", action="store_true", help="answer blob GETs with 307 to the CDN")
    parser.add_argument("--auth", choices=("bearer", "basic"))
    parser.add_argument(
        "--credentials",
        metavar="USER:PASS",
        help="checked by --auth basic; with --auth bearer, required at the token endpoint",
    )
    parser.add_argument("--chunk-size", type=int, help="enable chunksums for every blob with this chunk size")
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="KIND[:KEY=VALUE,...]",
        help="inject a fault, e.g. reset:after=65536,times=3 (kinds: %s)" % ", ".join(FAULT_KINDS),
    )
    args = parser.parse_args(argv)
    credentials = tuple(args.credentials.split(":", 1)) if args.credentials else None
    options = dict(cdn=True, cdn_port=args.cdn_port, redirect=args.redirect, auth=args.auth)
    if args.auth == "basic" and credentials:
        options["credentials"] = credentials
    if args.auth == "bearer":
        options["token_credentials"] = credentials
    # SIGTERM ends it cleanly from the moment it may say where it listens.
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with FaultRegistry(args.host, args.port, **options) as reg:
        for model in load_store(reg, args.dir, args.chunk_size) if args.dir else []:
            print(f"model {model}", flush=True)
        for spec in args.fault:
            kind, fault_options = parse_fault_spec(spec)
            reg.fault(kind, **fault_options)
        print(f"registry {reg.url}", flush=True)
        print(f"cdn {reg.cdn_url}", flush=True)
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
