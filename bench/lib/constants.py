"""Constants every part of bench/run shares: units, timeouts, sizes of the
measurements, and the names of the tools and CDN profiles."""
import os

# The bench/ directory and the source tree above it.
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOP = os.path.dirname(HERE)

MiB = 1 << 20
GiB = 1 << 30
PAGE = 4096
MEASUREMENTS = ("cold", "warm", "disk", "random", "loader", "resources", "metadata",
                "engine", "passthrough", "tensor")

MIN_RATE = 10 * MiB      # timeouts allow every tool at least this throughput ...
SLACK = 60               # ... plus this many seconds
MOUNT_TIMEOUT = 30       # seconds for a FUSE mount to appear
UMOUNT_TIMEOUT = 20      # seconds for fusermount3 and for a daemon to exit after it
TTFB_READS = 20          # random preads per round for time to first byte
RANDOM_FRACTION = 0.01   # share of the blob read by random preads for amplification
HEADER = 16 * MiB        # loader: header read first
REGION = 8 * MiB         # loader: size of a "tensor"
SKIP_EVERY = 10          # loader: one region in this many is not touched
LS_TAGS = 1000
STARTUP_TAGS = 10000
META_HOST = "127.0.0.1:9"  # nothing listens there: any network access fails at once

PEER_CMDS = {
    "aria2c": "aria2c -x16 -s16 (to a file)",
    "curl": "curl -L (to a file)",
    "rclone": "rclone mount --vfs-cache-mode full + cat",
    "httpdirfs": "httpdirfs --cache + cat",
    "native": "cat of the store's blob file",
    "aria2c+read": "aria2c -x16 -s16, then the pattern on the file",
    "baseline": "another blobfs build (--baseline) + cat",
}
COLD_PEERS = ("aria2c", "curl", "rclone", "httpdirfs")
# Options whose values are paths on this machine: the report shows a placeholder.
PATH_OPTS = {"--blobfs": "BLOBFS", "--baseline": "BLOBFS", "--cache-dir": "DIR",
             "--out": "FILE", "--json": "FILE", "--merge": "FILE"}
PROFILES = ("uncapped", "capped")
