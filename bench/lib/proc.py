"""Processes, mounts and timing: run a command under a timeout, a daemon and a FUSE
mount that can always be torn down (and are, on the way out: cleanup_live), cat and
cmp with a deadline, /proc samplers, page-cache control.

Failed is the one exception a tool or blobfs failing raises; its message is one line."""
import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from .constants import MOUNT_TIMEOUT, UMOUNT_TIMEOUT


class Failed(Exception):
    """A tool (or blobfs) failed; the message says how, in one line."""


_libc = ctypes.CDLL(None, use_errno=True)
_LIVE = []          # daemons to stop on the way out
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _pdeathsig():
    _libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def one_line(text, limit=300):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _unescape_mountinfo(s):
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def is_mounted(path):
    """Whether PATH is a mount point, from /proc/self/mountinfo (no syscall on PATH,
    so a hung FUSE daemon cannot block the check)."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4 and _unescape_mountinfo(fields[4]) == path:
                return True
    return False


def proc_io(pid):
    try:
        with open("/proc/%d/io" % pid) as f:
            return {k: int(v) for k, v in (line.split(":") for line in f)}
    except (OSError, ValueError):
        return None


def proc_cpu(pid):
    """utime + stime of PID in seconds (all threads)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def proc_status(pid):
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            key, _, value = line.partition(":")
            if value.strip().endswith("kB"):
                out[key] = int(value.split()[0])
    return out


def _killpg(pid):
    """SIGKILL the process group PID leads, if it is still there."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _spawn(argv, out, err, env, what):
    """Start ARGV in a session of its own (so its group can be killed); Failed if it cannot."""
    try:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                env=env, start_new_session=True)
    except OSError as e:
        raise Failed("cannot run %s: %s" % (what, e))


def _wait_exited(p, timer):
    """Wait until P has exited, without reaping it; its time. Its group dies if we are stopped."""
    try:
        os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)
        return time.monotonic()
    except BaseException:
        _killpg(p.pid)
        raise
    finally:
        timer.cancel()


def _check_exit(what, timeout, rc, errtext, expired):
    """Raise Failed if the child timed out (EXPIRED) or exited non-zero (RC)."""
    if "io" in expired:
        done = ""
        if what.startswith("cat") and expired["io"]:
            done = " (had read %d bytes)" % expired["io"]["wchar"]
        raise Failed("%s timed out after %ds%s%s" % (
            what, timeout, done, ": " + one_line(errtext) if errtext.strip() else ""))
    if rc != 0:
        raise Failed("%s %s: %s" % (what, describe_rc(rc),
                                    one_line(errtext[-2000:] or "(no message)")))


def run_timed(argv, timeout, *, env=None, on_timeout=None, what=None, capture=False):
    """Run ARGV (stdout to /dev/null unless CAPTURE) and return (seconds, io, stdout).

    io is the child's /proc/PID/io read after it exited and before it is reaped
    (wchar = bytes it wrote, which for `cat F > /dev/null` is the bytes it read from
    F). Raises Failed on a non-zero exit or on timeout; on timeout the process group
    is killed and ON_TIMEOUT (e.g. aborting a FUSE mount) is called.
    """
    what = what or os.path.basename(argv[0])
    err = tempfile.TemporaryFile()
    out = tempfile.TemporaryFile() if capture else subprocess.DEVNULL
    expired = {}

    def expire():
        expired["io"] = proc_io(p.pid)
        if on_timeout:      # first, so that a reader stuck in FUSE can die
            on_timeout()
        _killpg(p.pid)

    t0 = time.monotonic()
    p = _spawn(argv, out, err, env, what)
    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    timer.start()
    t1 = _wait_exited(p, timer)
    if expired:
        timer.join()        # expire() has finished (the mount is aborted)
    io = proc_io(p.pid)
    rc = p.wait()
    err.seek(0)
    errtext = err.read().decode("utf-8", "replace")
    stdout = b""
    if capture:
        out.seek(0)
        stdout = out.read()
    _check_exit(what, timeout, rc, errtext, expired)
    return t1 - t0, io, stdout


def describe_rc(rc):
    if rc is None:
        return "still running"
    if rc < 0:
        try:
            return "killed by %s" % signal.Signals(-rc).name
        except ValueError:
            return "killed by signal %d" % -rc
    return "exited %d" % rc


def with_log(text, tail):
    return "%s; log: %s" % (text, one_line(tail)) if tail.strip() else text


def cat(path, size, timeout, on_timeout=None, what="cat"):
    """Time `cat PATH > /dev/null`; fail unless it read exactly SIZE bytes."""
    dt, io, _ = run_timed(["cat", path], timeout, on_timeout=on_timeout, what=what)
    if io is not None and io["wchar"] != size:
        raise Failed("%s read %d bytes, expected %d" % (what, io["wchar"], size))
    return dt


def compare(path, source, size, timeout, on_timeout=None):
    """cmp PATH against SOURCE (untimed); Failed("wrong bytes: ...") on a difference."""
    try:
        run_timed(["cmp", path, source], timeout, on_timeout=on_timeout, what="cmp",
                  capture=True)
    except Failed as e:
        msg = str(e)
        if "exited 1" in msg or "differ" in msg or "EOF" in msg:
            raise Failed("wrong bytes: " + msg)
        raise


class Daemon:
    """A background process in its own process group, output to LOG."""

    def __init__(self, name, argv, log, env=None):
        self.name, self.log, self.argv = name, log, argv
        with open(log, "ab") as f:
            try:
                self.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f,
                                              stderr=subprocess.STDOUT, env=env,
                                              start_new_session=True,
                                              preexec_fn=_pdeathsig)
            except OSError as e:
                raise Failed("cannot run %s: %s" % (name, e))
        _LIVE.append(self)

    @property
    def pid(self):
        return self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def tail(self, lines=8, skip=None):
        try:
            with open(self.log, errors="replace") as f:
                text = f.read().splitlines()
        except OSError:
            return ""
        if skip:
            text = [t for t in text if not re.search(skip, t)]
        return " | ".join(text[-lines:])

    def stop(self, grace=UMOUNT_TIMEOUT):
        """Wait up to GRACE for an exit, then SIGTERM, then SIGKILL. Returns the code."""
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(self.pid, sig)
                except ProcessLookupError:
                    pass
                try:
                    self.popen.wait(5)
                    break
                except subprocess.TimeoutExpired:
                    continue
        try:  # whatever else of the group is left (children of the daemon)
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self in _LIVE:
            _LIVE.remove(self)
        return self.popen.returncode


def fusermount_u(mountpoint, lazy=False):
    argv = ["fusermount3", "-uz" if lazy else "-u", mountpoint]
    try:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=UMOUNT_TIMEOUT)
        return r.returncode == 0, r.stderr.strip()
    except subprocess.TimeoutExpired:
        return False, "fusermount3 timed out"


class Mount(Daemon):
    """A FUSE daemon run in the foreground, ready once MOUNTPOINT is mounted."""

    def __init__(self, name, argv, mountpoint, log, env=None, noise=None, wait=True):
        self.mountpoint, self.noise = mountpoint, noise
        self.exit_code = None
        self.unmount_problem = None
        self.aborted = False
        super().__init__(name, argv, log, env)
        if not wait:
            return
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not is_mounted(mountpoint):
            if not self.alive():
                self.stop(grace=0)
                raise Failed(with_log("%s %s before mounting" % (
                    name, describe_rc(self.popen.returncode)), self.tail(skip=noise)))
            if time.monotonic() > deadline:
                self.abort()
                self.stop(grace=0)
                raise Failed(with_log("%s did not mount within %ds" % (name, MOUNT_TIMEOUT),
                                      self.tail(skip=noise)))
            time.sleep(0.005)

    def abort(self):
        """Kill the daemon and detach the mount: unblocks every reader."""
        self.aborted = True
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        fusermount_u(self.mountpoint, lazy=True)

    def close(self):
        """Unmount (fusermount3 -u, -uz as a fallback) and reap the daemon.
        Returns its exit code (negative: killed by that signal)."""
        if self.exit_code is not None:
            return self.exit_code
        grace = UMOUNT_TIMEOUT
        if self.aborted:
            grace = 2
        elif is_mounted(self.mountpoint):
            ok, why = fusermount_u(self.mountpoint)
            if not ok:
                self.unmount_problem = "fusermount3 -u failed (%s)" % why
                self.abort()
                grace = 2
        self.exit_code = self.stop(grace)
        if is_mounted(self.mountpoint):
            fusermount_u(self.mountpoint, lazy=True)
        return self.exit_code


def mounts_under(path):
    prefix = path.rstrip("/") + "/"
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = _unescape_mountinfo(line.split()[4])
            if mp == path or mp.startswith(prefix):
                found.append(mp)
    return found


def safe_rmtree(path):
    """shutil.rmtree that never descends into a mount (rm -r in a blobfs mount
    removes tags from its store): what is mounted under PATH is detached first,
    and PATH is left alone if that fails."""
    for mp in mounts_under(path):
        fusermount_u(mp, lazy=True)
    if mounts_under(path):
        print("bench/run: not removing %s: something is still mounted there" % path,
              file=sys.stderr)
        return
    shutil.rmtree(path, ignore_errors=True)


def cleanup_live():
    for d in list(_LIVE):
        try:
            if isinstance(d, Mount):
                d.close()
            else:
                d.stop(grace=0)
        except Exception:  # noqa: BLE001 -- best effort on the way out
            pass


class Sampler(threading.Thread):
    """Samples /proc/PID/status every INTERVAL, keeping each field's maximum."""

    def __init__(self, pid, interval=0.05):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak = {}
        self._stop_ev = threading.Event()

    def sample(self):
        try:
            for k, v in proc_status(self.pid).items():
                if v > self.peak.get(k, -1):
                    self.peak[k] = v
        except OSError:
            pass

    def run(self):
        while not self._stop_ev.is_set():
            self.sample()
            self._stop_ev.wait(self.interval)

    def stop(self):
        self._stop_ev.set()
        self.join()
        self.sample()


def evict(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")
