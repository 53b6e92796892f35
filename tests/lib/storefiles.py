"""Small helpers the integration tests share: files of a store (its blobs,
partial and quarantined files), a directory tree as a dict, digests of files,
polling, the error lines of blobfs's stderr, the span of a Range header and
the [Service] section of a systemd unit. Defined once here, imported by each
test file."""

import hashlib
import os
import re
import time
from pathlib import Path


def hex_of(digest):
    """The hex part of "sha256:<hex>"."""
    return digest.split(":", 1)[1]


def sha256_file(path):
    """The "sha256:<hex>" digest of the file at path."""
    with open(path, "rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


def files_under(path):
    """Every regular file below path (relative paths, sorted), for 'nothing was created' checks."""
    path = Path(path)
    if not path.exists():
        return []
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


def entries_under(path):
    """Every entry below path, directories included (relative paths, sorted)."""
    path = Path(path)
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def tree(path, contents=False):
    """{relative path: None for a directory, "file" for a file (CONTENTS: its
    bytes)} of everything under PATH."""
    out = {}
    for root, dirs, files in os.walk(path):
        for d in dirs:
            out[os.path.relpath(os.path.join(root, d), path)] = None
        for f in files:
            name = os.path.join(root, f)
            if contents:
                with open(name, "rb") as fh:
                    out[os.path.relpath(name, path)] = fh.read()
            else:
                out[os.path.relpath(name, path)] = "file"
    return out


def range_span(header, size):
    """[start, end) of a Range header of a request for SIZE bytes (the whole
    blob when absent)."""
    if not header:
        return 0, size
    match = re.fullmatch(r"bytes=(\d+)-(\d*)", header)
    assert match, f"unexpected Range header {header!r}"
    return int(match[1]), (int(match[2]) + 1 if match[2] else size)


def service_section(unit_text):
    """{key: [values]} of the [Service] section of a systemd unit's text."""
    service, section = {}, None
    for line in unit_text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith(("#", ";")):
            key, value = line.split("=", 1)
            service.setdefault(key, []).append(value)
    return service


def store_blob(store, digest):
    """The path of a complete blob in a store: blobs/sha256-<hex>."""
    return Path(store) / "blobs" / blob_name(digest)


def partial_files(store):
    return files_under(Path(store) / ".blobfs" / "partial")


def quarantine_files(store):
    return files_under(Path(store) / ".blobfs" / "quarantine")


def wait_for(predicate, timeout, interval=0.05):
    """Poll predicate until it is true or timeout seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def error_lines(stderr):
    """The `blobfs: error: ...` lines of stderr; fails if there are none."""
    errors = [line for line in stderr.splitlines() if line.startswith("blobfs: error: ")]
    assert errors, f"no 'blobfs: error: ...' line on stderr:\n{stderr}"
    return "\n".join(errors)


def blob_name(digest):
    """The file name of a blob in a store: sha256-<hex>."""
    return "sha256-" + hex_of(digest)
