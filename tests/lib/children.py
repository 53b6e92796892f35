"""Children a test runs and waits for: blobfs itself (conftest's run_blobfs),
fusermount3, ls, a Python reader as another user. One runner for all of them,
so that every suite has the same rules:

- each child starts in a session (and process group) of its own, stdin is
  /dev/null unless the test gives input, output is captured as text;
- past the test's time limit the whole group is killed, the child's own
  children too, and the test fails with whatever output there was;
- after that kill the output is collected for a bounded time only (REAP_TIMEOUT):
  a daemon that left the group may hold the pipes, and a process stuck in a FUSE
  request stays until the mount's teardown frees it, which comes after the test.

start() and finish() are the two halves of run(), for a test that has children
running side by side (finish_all() waits for a group of them); python_json()
runs a Python snippet that answers in JSON, READ_ALL is one that reads a file;
preload_shim() builds a C file into a library a child loads with LD_PRELOAD."""

import json
import os
import shutil
import signal
import subprocess
import time

import pytest

REAP_TIMEOUT = 10  # seconds to collect the output of a killed group
PYTHON = "/usr/bin/python3"


# A Python child that reads a file (sys.argv[1]) front to back in 1 MiB reads and
# prints JSON: ok, bytes, sha, elapsed; errno and error if a read failed.
READ_ALL = r"""
import hashlib, json, os, sys, time
t0 = time.monotonic()
sha, n, out = hashlib.sha256(), 0, {"ok": True}
try:
    with open(sys.argv[1], "rb", buffering=0) as f:
        while True:
            piece = f.read(1 << 20)
            if not piece:
                break
            sha.update(piece)
            n += len(piece)
except OSError as e:
    out = {"ok": False, "errno": e.errno, "error": str(e)}
out.update({"bytes": n, "sha": "sha256:" + sha.hexdigest(), "elapsed": time.monotonic() - t0})
print(json.dumps(out))
"""


def environment(env=None, base_env=None):
    """BASE_ENV (default: this process's) with ENV laid over it; a None value in
    ENV unsets that variable, other values are made strings."""
    environ = dict(os.environ if base_env is None else base_env)
    for key, value in (env or {}).items():
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value if isinstance(value, (str, bytes)) else str(value)
    return environ


def start(argv, *, env=None, base_env=None, stdin=False, text=True, cwd=None, umask=None):
    """Popen ARGV (each made a string) in a new session with captured output.
    STDIN: a pipe for finish()'s input, else /dev/null. UMASK is set in the child."""
    return subprocess.Popen(
        [str(arg) for arg in argv],
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=environment(env, base_env),
        cwd=cwd,
        preexec_fn=(lambda: os.umask(umask)) if umask is not None else None,
        text=text,
        start_new_session=True,
    )


def finish(proc, timeout, input=None, what=None):
    """Wait for PROC (from start()) with a bound -> CompletedProcess. Past TIMEOUT
    seconds its group is killed and the test fails; WHAT names it in the message."""
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            out, err = proc.communicate(timeout=REAP_TIMEOUT)
        except subprocess.TimeoutExpired:
            out = err = "(unavailable: a daemon outside the group holds the pipes, " \
                        "or the process is stuck in the kernel)"
        pytest.fail(f"{what or ' '.join(proc.args)} did not finish within {timeout}s\n"
                    f"stdout:\n{out}\nstderr:\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def finish_all(procs, timeout, what):
    """finish() PROCS (from start(), running side by side) within one TIMEOUT for
    them all -> [CompletedProcess]. Past it every one's group is killed and the
    test fails; WHAT names them in the message."""
    deadline = time.monotonic() + timeout
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for other in procs:
                try:
                    os.killpg(other.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            pytest.fail(f"{what} did not finish within {timeout}s")
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def ok(result):
    """RESULT (a CompletedProcess), after asserting that it exited 0."""
    assert result.returncode == 0, (f"{' '.join(map(str, result.args))} exited "
                                    f"{result.returncode}:\nstdout:\n{result.stdout}\n"
                                    f"stderr:\n{result.stderr}")
    return result


def run(argv, timeout=60, check=False, input=None, **options):
    """start(ARGV, **OPTIONS) and finish() it -> CompletedProcess; CHECK: it must
    exit 0. OPTIONS are start()'s: env, base_env, text, cwd, umask."""
    proc = start(argv, stdin=input is not None, **options)
    result = finish(proc, timeout, input)
    return ok(result) if check else result


def python_json(code, *args, timeout=60):
    """Run Python CODE in a child (sys.argv[1:] = ARGS) -> its stdout parsed as
    JSON; the child must exit 0."""
    result = run([PYTHON, "-c", code, *args], timeout=timeout)
    assert result.returncode == 0, f"child exited {result.returncode}:\n{result.stderr}"
    return json.loads(result.stdout)


def preload_shim(src, out_dir):
    """SRC (a C file) built as an LD_PRELOAD shim in OUT_DIR; skips without gcc.
    Returns what a child's environment needs to load it: LD_PRELOAD, and ASan
    told that its runtime need not come first (the tests' builds may use it)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip(f"gcc is needed to build {os.path.basename(src)}")
    out = os.path.join(out_dir, os.path.splitext(os.path.basename(src))[0] + ".so")
    result = subprocess.run([gcc, "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o", out,
                             str(src), "-ldl"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return {"LD_PRELOAD": out,
            "ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + ":verify_asan_link_order=0"}
