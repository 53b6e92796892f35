"""Run the shipped fleet cache (contrib/fleet-cache/start: nginx with slice +
proxy_cache) on 127.0.0.1 for tests, in front of one registry.

    with FleetCache(reg.url) as cache:
        ...                        # mounts with "mirror = cache.url" read through it
        cache.restart()            # stop nginx, start it again on the same port and dir

The cache keeps its files in a temp dir (removed on stop()), unless dir= names
one. It is started exactly as a user starts it, so the test exercises the
configuration that ships.
"""

import http.client
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from pathlib import Path

from dockerreg import Finalized, ToolMissing, find_tool, free_port, tail

REPO_DIR = Path(__file__).resolve().parents[2]
START = REPO_DIR / "contrib" / "fleet-cache" / "start"
HEALTH_PATH = "/.fleet-cache/health"
START_ATTEMPTS = 5
STOP_TIMEOUT = 10.0


def _healthy(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
    try:
        conn.request("GET", HEALTH_PATH)
        return conn.getresponse().status == 204
    except OSError:
        return False
    finally:
        conn.close()


def _stop(state):
    proc = state.get("proc")
    if proc is not None and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(STOP_TIMEOUT)
    state["proc"] = None


def _cleanup(state, workdir):
    _stop(state)
    if workdir is not None:
        shutil.rmtree(workdir, ignore_errors=True)


class FleetCache(Finalized):
    """contrib/fleet-cache/start --upstream UPSTREAM --listen 127.0.0.1:PORT --dir DIR.

    Attributes: url, host ("127.0.0.1:PORT"), port, dir (the cache's DIR),
    log_path (nginx's stderr), access_log (one line per request the fleet made).
    extra_args go to start as they are (e.g. ["--cacert", ca]).
    """

    def __init__(self, upstream, extra_args=(), start_timeout=15.0):
        find_tool("nginx", "nginx")
        if not START.is_file():
            raise ToolMissing(f"{START} is missing")
        self.upstream = upstream
        self.extra_args = [str(a) for a in extra_args]
        self.workdir = Path(tempfile.mkdtemp(prefix="blobfs-fleet-cache-"))
        self.dir = self.workdir / "cache"
        self.log_path = self.workdir / "nginx.log"
        self.access_log = self.workdir / "access.log"
        self.port = None
        self.start_timeout = start_timeout
        self._state = {"proc": None}
        self._finalizer = weakref.finalize(self, _cleanup, self._state, self.workdir)
        try:
            self._start_on_free_port()
        except BaseException:
            self.stop()
            raise
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.host}"

    def _launch(self, port):
        argv = [str(START), "--upstream", self.upstream, "--listen", f"127.0.0.1:{port}",
                "--dir", str(self.dir), "--access-log", str(self.access_log),
                *self.extra_args]
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True)
        self._state["proc"] = proc
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if _healthy(port):
                return True
            time.sleep(0.05)
        _stop(self._state)
        if "address already in use" in self.log_tail().lower():
            return False
        raise RuntimeError(f"the fleet cache did not start on 127.0.0.1:{port}:\n"
                           f"{self.log_tail()}")

    def _start_on_free_port(self):
        for _ in range(START_ATTEMPTS):
            port = free_port()
            if self._launch(port):
                self.port = port
                return
        raise RuntimeError(f"the fleet cache found no free port in {START_ATTEMPTS} attempts")

    @property
    def pid(self):
        proc = self._state["proc"]
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def pids(self):
        """[the nginx master's pid] while it runs: it leads the process group of its workers."""
        return [self.pid] if self.alive() else []

    def alive(self):
        return self.pid is not None

    def kill(self):
        """Stop nginx (SIGTERM to its process group), keeping the cache's files."""
        _stop(self._state)

    def start(self):
        """Start nginx again on the same port and directory."""
        if self.alive():
            raise RuntimeError("the fleet cache is running")
        if not self._launch(self.port):
            raise RuntimeError(f"port {self.port} was taken while the fleet cache was down")

    def restart(self):
        self.kill()
        self.start()

    def log_tail(self, lines=30):
        return tail(self.log_path, lines)

    def cached_files(self):
        """The cache's complete files, one per slice (nginx names them by the md5
        of their key; a slice being fetched is a temporary file with a suffix)."""
        root = self.dir / "cache"
        return sorted(p for p in root.rglob("*")
                      if p.is_file() and re.fullmatch(r"[0-9a-f]{32}", p.name))
