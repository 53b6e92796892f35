"""Option helpers bench/run and bench/pull-bench share: sizes and the blobfs binary."""
import os
import sys

from .constants import TOP


def parse_size(s):
    """"1G", "40m", "4096" -> bytes (k, m, g are powers of 1024; a trailing b/ib is ignored)."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    s = s.strip().lower().rstrip("b").rstrip("i")
    return int(float(s[:-1]) * units[s[-1]]) if s[-1] in units else int(s)


def find_blobfs(arg, missing):
    """ARG, else $BLOBFS, else src/blobfs: the first executable, as an absolute path;
    exit with MISSING if none is."""
    for cand in (arg, os.environ.get("BLOBFS"), os.path.join(TOP, "src", "blobfs")):
        if cand and os.access(cand, os.X_OK):
            return os.path.abspath(cand)
    sys.exit(missing)
