"""The `blobfs mount -f` daemons of the mount and fault suites: one Mount per
daemon (log, unmount, kill, clean-up), and mounts(), the body of their `mount`
fixture: every mount is taken down after the test, a watchdog kills daemons a
test holds for too long, and the logs of a failed test are printed."""

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

MOUNT_TIMEOUT = 15.0     # seconds for the mountpoint to become a FUSE mount
UNMOUNT_TIMEOUT = 10.0   # seconds for the daemon to exit after fusermount3 -u
WATCHDOG = 150.0         # seconds a test may keep a mount before the daemon is killed


def fuse_mounts():
    """{mountpoint: fstype} of the FUSE mounts in /proc/mounts."""
    mounts = {}
    with open("/proc/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 3 and fields[2].startswith("fuse"):
                point = re.sub(r"\\(\d{3})", lambda m: chr(int(m[1], 8)), fields[1])
                mounts[point] = fields[2]
    return mounts


def is_blobfs_mount(path):
    return fuse_mounts().get(str(path)) == "fuse.blobfs"


class Mount:
    """One `blobfs mount -f` daemon and its mountpoint."""

    def __init__(self, blobfs_bin, store, path, log_path, options=(), global_args=(),
                 debug=True, env=None):
        self.path = Path(path)
        self.store = Path(store)
        self.log_path = Path(log_path)
        self.argv = [str(blobfs_bin), "--store", str(store), *map(str, global_args)]
        if debug:
            self.argv.append("--debug")
        self.argv += ["mount", "-f"]
        if options:
            self.argv += ["-o", ",".join(options)]
        self.argv.append(str(self.path))
        self.killed_by_watchdog = False
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log, start_new_session=True,
                                         env=None if env is None else {**os.environ, **env})

    def wait_mounted(self, timeout=MOUNT_TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if is_blobfs_mount(self.path):
                return
            if self.proc.poll() is not None:
                pytest.fail(f"blobfs mount exited with status {self.proc.returncode} before "
                            f"mounting:\n{self.log()}")
            time.sleep(0.05)
        pytest.fail(f"{self.path} is not a fuse.blobfs mount {timeout:.0f}s after starting "
                    f"{' '.join(self.argv)}:\n{self.log()}")

    def log_text(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log(self, tail=200):
        lines = self.log_text().splitlines()
        cut = len(lines) - tail
        return "\n".join((["... (%d lines before)" % cut] if cut > 0 else []) + lines[-tail:])

    def log_lines(self, pattern):
        return [line for line in self.log_text().splitlines() if re.search(pattern, line)]

    def mounted(self):
        return is_blobfs_mount(self.path)

    def kill(self, sig=signal.SIGKILL):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def force_detach(self):
        """After the daemon died: lazily detach the dead mount."""
        if str(self.path) in fuse_mounts():
            subprocess.run(["fusermount3", "-uz", str(self.path)], capture_output=True,
                           timeout=10)

    def cleanup(self):
        """Unmount, stop the daemon, detach whatever is left; never raises."""
        try:
            if self.proc.poll() is None and self.mounted():
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:
                    r = subprocess.run(["fusermount3", "-u", str(self.path)],
                                       capture_output=True, timeout=10)
                    if r.returncode == 0 or not self.mounted():
                        break
                    time.sleep(0.2)
            try:
                self.proc.wait(UNMOUNT_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        except Exception as exc:  # noqa: BLE001 - cleanup goes on regardless
            print(f"cleanup of {self.path}: {exc!r}", file=sys.stderr)
            if self.proc.poll() is None:
                self.proc.kill()
        finally:
            try:
                self.force_detach()
            except Exception:  # noqa: BLE001
                pass


def mounts(blobfs_bin, store, request):
    """Factory: mount(*OPTIONS, store=<store>, global_args=(), debug=True, path=None,
    env=None) -> Mount, mounted and ready (ENV: variables added to the daemon's).
    Every mount is taken down after the test, and a watchdog kills the daemons
    if the test holds them for more than WATCHDOG s."""
    mounts = []
    tmp = Path(tempfile.mkdtemp(prefix="blobfs-mnt-"))
    failed_before = request.session.testsfailed

    def fire():
        for m in mounts:
            if m.proc.poll() is None:
                m.killed_by_watchdog = True
                with open(m.log_path, "a") as log:
                    log.write(f"\n[test watchdog: killing the daemon after {WATCHDOG:.0f}s]\n")
                m.kill()
                m.force_detach()

    watchdog = threading.Timer(WATCHDOG, fire)
    watchdog.daemon = True
    watchdog.start()

    def start(*options, store=store, global_args=(), debug=True, path=None, wait=True,
              env=None):
        index = len(mounts)
        if path is None:
            path = tmp / f"mnt{index}"
            path.mkdir()
        m = Mount(blobfs_bin, store, Path(os.path.realpath(path)), tmp / f"blobfs{index}.log",
                  options, global_args, debug, env)
        mounts.append(m)
        if wait:
            m.wait_mounted()
        return m

    yield start

    watchdog.cancel()
    for m in mounts:
        m.cleanup()
    if request.session.testsfailed > failed_before or any(m.killed_by_watchdog for m in mounts):
        for m in mounts[-3:]:
            print(f"===== blobfs log ({' '.join(m.argv)}), exit status {m.proc.returncode}:")
            print(m.log())
    leftover = [str(m.path) for m in mounts if str(m.path) in fuse_mounts()]
    for p in sorted(tmp.glob("mnt*")):
        if str(p) not in leftover:
            try:
                p.rmdir()
            except OSError:
                pass
    if not leftover:
        shutil.rmtree(tmp, ignore_errors=True)
    assert not leftover, f"mounts left behind: {leftover}"
    assert not any(m.killed_by_watchdog for m in mounts), \
        f"the test ran past the {WATCHDOG:.0f}s watchdog, which killed the daemon"
