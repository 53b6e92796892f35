"""The `blobfs mount` daemons of the suites: one Mount per daemon (log,
unmount, kill, clean-up), in the foreground (-f) or detached, in this mount
namespace or a private one; and Mounts, the body of every `mount` fixture:
every mount is taken down after the test, a watchdog kills daemons a test
holds for too long, and the logs of a failed test are printed."""

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

import children

MOUNT_TIMEOUT = 15.0     # seconds for the mountpoint to become a FUSE mount
UNMOUNT_TIMEOUT = 10.0   # seconds for the daemon to exit after fusermount3 -u
WATCHDOG = 150.0         # seconds a test may keep a mount before the daemon is killed
_TEST_STORE = object()   # Mounts.start's default store: the test's


def mount_entries(mounts_file="/proc/mounts"):
    """[(mountpoint, fstype, [options])] of MOUNTS_FILE (a /proc/PID/mounts for
    another namespace); [] if it cannot be read (that process is gone)."""
    try:
        with open(mounts_file) as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    entries = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 4:
            point = re.sub(r"\\(\d{3})", lambda m: chr(int(m[1], 8)), fields[1])
            entries.append((point, fields[2], fields[3].split(",")))
    return entries


def fuse_mounts(mounts_file="/proc/mounts"):
    """{mountpoint: fstype} of the FUSE mounts in MOUNTS_FILE."""
    return {point: fstype for point, fstype, _ in mount_entries(mounts_file)
            if fstype.startswith("fuse")}


def is_blobfs_mount(path):
    return fuse_mounts().get(str(path)) == "fuse.blobfs"


class Mount:
    """One `blobfs mount` daemon and its mountpoint.

    FOREGROUND (the default): `mount -f`, self.proc is the daemon. Otherwise
    the daemon detaches and self.proc is the process that started it.
    NAMESPACE(argv), if given, returns the command that runs argv in a private
    mount namespace (with its own /etc/hosts, say): the mount is only visible
    there, and run() enters it. ENV is laid over BASE_ENV (default: this
    process's environment), as children.environment does."""

    def __init__(self, blobfs_bin, store, path, log_path, options=(), global_args=(),
                 debug=True, env=None, base_env=None, foreground=True, namespace=None):
        self.path = Path(path)
        self.store = Path(store) if store is not None else None
        self.log_path = Path(log_path)
        self.argv = [str(blobfs_bin)]
        if store is not None:
            self.argv += ["--store", str(store)]
        self.argv += [str(a) for a in global_args]
        if debug:
            self.argv.append("--debug")
        self.argv.append("mount")
        if foreground:
            self.argv.append("-f")
        if options:
            self.argv += ["-o", ",".join(options)]
        self.argv.append(str(self.path))
        self.foreground = foreground
        self.namespaced = namespace is not None
        if self.namespaced:
            self.argv = [str(a) for a in namespace(self.argv)]
        self.killed_by_watchdog = False
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log, start_new_session=True,
                                         env=children.environment(env, base_env))

    def _here(self, argv):
        """ARGV as run where the mount is visible."""
        argv = [str(a) for a in argv]
        if self.namespaced:
            return ["nsenter", f"--target={self.proc.pid}", "--mount", "--", *argv]
        return argv

    def run(self, argv, timeout=60):
        """children.run of ARGV where the mount is visible."""
        return children.run(self._here(argv), timeout=timeout)

    def mount_entry(self):
        """(fstype, [options]) of what is mounted at self.path, or None."""
        mounts_file = f"/proc/{self.proc.pid}/mounts" if self.namespaced else "/proc/mounts"
        found = None
        for point, fstype, options in mount_entries(mounts_file):
            if point == str(self.path):
                found = (fstype, options)
        return found

    def mounted(self):
        entry = self.mount_entry()
        return entry is not None and entry[0] == "fuse.blobfs"

    def attached(self):
        """Whether a FUSE mount (live or dead) is still at self.path."""
        return str(self.path) in fuse_mounts(
            f"/proc/{self.proc.pid}/mounts" if self.namespaced else "/proc/mounts")

    def wait_mounted(self, timeout=MOUNT_TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.mounted():
                return self
            if self.foreground and self.proc.poll() is not None:
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
        """The last TAIL lines of the log, for a failure message (log_text: all of it)."""
        lines = self.log_text().splitlines()
        cut = len(lines) - tail
        return "\n".join((["... (%d lines before)" % cut] if cut > 0 else []) + lines[-tail:])

    def log_lines(self, pattern):
        return [line for line in self.log_text().splitlines() if re.search(pattern, line)]

    def daemon_pid(self):
        """The daemon's pid: the process itself with -f, else found by its mount."""
        if self.foreground:
            return self.proc.pid
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    cmdline = (entry / "cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if cmdline[:1] == [self.argv[0].encode()] and str(self.path).encode() in cmdline \
                        and int(entry.name) != self.proc.pid:
                    return int(entry.name)
        return None

    def kill(self, sig=signal.SIGKILL):
        """Send SIG to the daemon, if it runs."""
        pid = self.daemon_pid() if not self.foreground else \
            (self.proc.pid if self.proc.poll() is None else None)
        if pid is not None:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def unmount(self):
        """fusermount3 -u, then wait for the daemon to exit; returns its status (-f only)."""
        result = self.run(["fusermount3", "-u", self.path], timeout=20)
        assert result.returncode == 0, f"fusermount3 -u {self.path}: {result.stderr}"
        if self.foreground:
            return self.proc.wait(UNMOUNT_TIMEOUT)
        return None

    def force_detach(self):
        """After the daemon died: lazily detach the dead mount (a private
        namespace goes away with its last process, and its mounts with it)."""
        if not self.namespaced and self.attached():
            subprocess.run(["fusermount3", "-uz", str(self.path)], capture_output=True,
                           timeout=10)

    def cleanup(self):
        """Unmount, stop the daemon, detach whatever is left; never raises."""
        try:
            if (self.proc.poll() is None or not self.foreground) and self.mounted():
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:
                    r = subprocess.run(self._here(["fusermount3", "-u", self.path]),
                                       capture_output=True, timeout=10)
                    if r.returncode == 0 or not self.mounted():
                        break
                    time.sleep(0.2)
            if self.foreground:
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


class Mounts:
    """The mounts of one test. start() makes one (in a fresh mountpoint under
    self.base unless given a path); finish() takes them all down, prints the
    logs if the test failed, and fails it if a mount is left behind or the
    watchdog fired. The watchdog kills the daemons of a test that holds them
    for more than WATCHDOG s: a stuck mount would hang it in a system call.
    SHARED: the mountpoints are 0755, for tests in which other users look."""

    def __init__(self, blobfs_bin, store, request, watchdog=WATCHDOG, shared=False):
        self.blobfs_bin = blobfs_bin
        self.store = store
        self.request = request
        self.mounts = []
        self.shared = shared
        self.base = Path(tempfile.mkdtemp(prefix="blobfs-mnt-"))
        if shared:
            self.base.chmod(0o755)
        self.failed_before = request.session.testsfailed
        self.watchdog_seconds = watchdog
        self.watchdog = threading.Timer(watchdog, self._fire)
        self.watchdog.daemon = True
        self.watchdog.start()

    def _fire(self):
        for m in self.mounts:
            if m.daemon_pid() is None or (m.foreground and m.proc.poll() is not None):
                continue
            m.killed_by_watchdog = True
            with open(m.log_path, "a") as log:
                log.write(f"\n[test watchdog: killing the daemon after "
                          f"{self.watchdog_seconds:.0f}s]\n")
            m.kill()
            m.force_detach()

    def start(self, *options, store=_TEST_STORE, global_args=(), debug=True, path=None,
              wait=True, **settings):
        """mount(*OPTIONS, store=<the test's>, global_args=(), debug=True, path=None,
        wait=True, env=None, base_env=None, foreground=True, namespace=None) -> Mount,
        mounted and ready unless WAIT is false (SETTINGS: Mount's). STORE=None: no
        --store option."""
        index = len(self.mounts)
        if path is None:
            path = self.base / f"mnt{index}"
            path.mkdir()
            if self.shared:
                path.chmod(0o755)
        m = Mount(self.blobfs_bin, self.store if store is _TEST_STORE else store,
                  Path(os.path.realpath(path)), self.base / f"blobfs{index}.log", options,
                  global_args, debug, **settings)
        self.mounts.append(m)
        if wait:
            m.wait_mounted()
        return m

    def finish(self):
        self.watchdog.cancel()
        for m in self.mounts:
            m.cleanup()
        fired = any(m.killed_by_watchdog for m in self.mounts)
        if self.request.session.testsfailed > self.failed_before or fired:
            for m in self.mounts[-3:]:
                print(f"===== blobfs log ({' '.join(m.argv)}), exit status {m.proc.returncode}:")
                print(m.log())
        leftover = [str(m.path) for m in self.mounts if m.attached()]
        for p in sorted(self.base.glob("mnt*")):
            if str(p) not in leftover:
                try:
                    p.rmdir()
                except OSError:
                    pass
        if not leftover:
            shutil.rmtree(self.base, ignore_errors=True)
        assert not leftover, f"mounts left behind: {leftover}"
        assert not fired, \
            f"the test ran past the {self.watchdog_seconds:.0f}s watchdog, which killed the daemon"


def mounts(blobfs_bin, store, request, **settings):
    """The body of a `mount` fixture: yields Mounts(...).start, finishes after the test."""
    made = Mounts(blobfs_bin, store, request, **settings)
    yield made.start
    made.finish()
