"""Command-line behaviour of blobfs that needs no real registry, or only a
trivial one: usage errors (exit 2, one message, nothing created), help and
version, missing models, --quiet and $BLOBFS_STORE."""

import os
import random
import subprocess
import re
from pathlib import Path

import pytest

from faultreg import OLLAMA_MODEL, FaultRegistry
from storefiles import entries_under

LAYER = random.Random(5).randbytes(300_000)


def test_help_and_version(run_blobfs):
    result = run_blobfs(["--help"], store=None, timeout=10)
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith("usage: blobfs")
    for command in ("pull", "ls", "rm", "gc", "verify"):
        assert re.search(rf"^  {command}\b", result.stdout, re.M), f"--help does not list {command}"
    result = run_blobfs(["--version"], store=None, timeout=10)
    assert result.returncode == 0
    assert re.fullmatch(r"blobfs \S+\n", result.stdout), result.stdout


@pytest.mark.parametrize("args, pattern", [
    ([], r"no command"),
    (["frobnicate"], r"unknown command 'frobnicate'"),
    (["pull"], r"which model"),
    (["rm"], r"which model"),
    (["gc", "extra"], r"gc takes no arguments"),
    (["--bogus-option", "ls"], r"unknown option '--bogus-option'"),
    (["ls", "--store"], r"option '--store' needs a value"),
    (["--connections", "0", "pull", "x"], r"--connections"),
    (["--connections", "many", "pull", "x"], r"--connections"),
    (["--retries", "0", "pull", "x"], r"--retries"),
    (["--chunk-size", "3000", "pull", "x"], r"--chunk-size"),
    (["--chunk-size", "100K", "pull", "x"], r"--chunk-size"),  # not a power of two
    (["--stall-timeout", "soon", "pull", "x"], r"--stall-timeout"),
    (["--read-timeout", "0", "pull", "x"], r"--read-timeout"),
    (["--request-size", "1", "pull", "x"], r"--request-size"),
    (["ls", "--retries", "2"], r"--retries does not apply"),
    (["verify", "--insecure"], r"--insecure does not apply"),
    (["gc", "--credentials", "/dev/null"], r"--credentials does not apply"),
    (["ls", "--lazy"], r"--lazy"),
    (["rm", "--lazy", "x"], r"--lazy"),
])
def test_usage_errors_exit_2_and_touch_nothing(run_blobfs, tmp_path, args, pattern):
    store = tmp_path / "store"
    result = run_blobfs(args, store=store, timeout=10)
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.startswith("blobfs: ")]
    assert lines and re.search(pattern, lines[0]), result.stderr
    assert "Try 'blobfs --help'." in result.stderr
    flag = next((arg for arg in args if arg.startswith("--")), None)
    assert flag is None or flag in result.stderr, f"the message does not name {flag}"
    assert not store.exists(), f"a usage error created the store: {entries_under(store)}"


@pytest.mark.parametrize("command", ["rm", "ls", "verify"])
def test_absent_model_is_reported(run_blobfs, store, command):
    result = run_blobfs([command, "nosuchmodel:v1"], timeout=10)
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("blobfs: error: ")]
    assert len(errors) == 1 and re.search(r"no model '[^']*nosuchmodel:v1' in the store", errors[0]), \
        result.stderr
    assert entries_under(Path(store) / "manifests") == [] and entries_under(Path(store) / "blobs") == []


def test_empty_store(run_blobfs, store):
    result = run_blobfs(["ls"], timeout=10)
    assert result.returncode == 0 and result.stderr == ""
    result = run_blobfs(["verify"], timeout=10)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "0 ok, 0 corrupt, 0 partial, 0 not local\n"
    result = run_blobfs(["gc"], timeout=10)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"removed 0 unreferenced blobs and 0 partial downloads, 0 B freed\n", result.stdout)


@pytest.fixture
def tiny_reg():
    with FaultRegistry() as reg:
        reg.add_model("library/tiny", "latest", [(OLLAMA_MODEL, LAYER)])
        yield reg


def test_quiet_pull_prints_nothing(tiny_reg, run_blobfs, store):
    result = run_blobfs(["pull", "--quiet", f"{tiny_reg.host}/library/tiny"], timeout=20)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""
    assert len(list((Path(store) / "blobs").iterdir())) == 2


def test_pull_reports_progress_and_summary(tiny_reg, run_blobfs, store):
    name = f"{tiny_reg.host}/library/tiny:latest"
    result = run_blobfs(["pull", name], timeout=20)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(rf"pulled {re.escape(name)}: 2 blobs, \S+ \S+ \(\S+ \S+ fetched\) in [\d.]+s, "
                        rf"\S+ \S+/s\n", result.stdout), result.stdout
    assert "\r" not in result.stderr and "\x1b" not in result.stderr, "TTY progress on a pipe"
    assert re.search(r"done", result.stderr), result.stderr
    # A second pull of a complete model fetches nothing.
    tiny_reg.reset_log()
    result = run_blobfs(["pull", name], timeout=20)
    assert result.returncode == 0, result.stderr
    assert re.search(r"\(0 B fetched\)", result.stdout), result.stdout
    assert tiny_reg.bytes_sent() == 0


def test_store_from_environment(tiny_reg, run_blobfs, tmp_path):
    store = tmp_path / "envstore"
    env = {"BLOBFS_STORE": str(store)}
    result = run_blobfs(["pull", "--quiet", f"{tiny_reg.host}/library/tiny"], store=None, env=env,
                        timeout=20)
    assert result.returncode == 0, result.stderr
    assert (store / "manifests" / tiny_reg.host / "library" / "tiny" / "latest").is_file()
    result = run_blobfs(["ls"], store=None, env=env, timeout=10)
    assert result.returncode == 0 and f"{tiny_reg.host}/library/tiny:latest" in result.stdout
    # --store wins over the environment.
    other = tmp_path / "other"
    result = run_blobfs(["ls"], store=other, env=env, timeout=10)
    assert result.returncode == 0 and "tiny" not in result.stdout


@pytest.mark.parametrize("option, pattern", [
    ("threads=0", r"-o threads wants a number from 2 to 1024, not '0'"),
    ("threads=1", r"-o threads wants a number from 2 to 1024, not '1'"),
    ("threads=1025", r"-o threads wants a number from 2 to 1024"),
    ("miss_ttl=soon", r"-o miss_ttl wants a number from 0 to 86400, not 'soon'"),
    ("background=later", r"-o background wants sequential, always or never, not 'later'"),
    ("connections=0", r"-o connections wants a number from 1 to 256, not '0'"),
    ("request_size=1", r"-o request_size wants a size from 4K to 16G, not '1'"),
    ("nodiscover,bogus_option", r"unknown option.*bogus_option"),   # libfuse does not know it
])
def test_bad_mount_options_exit_2_and_mount_nothing(run_blobfs, tmp_path, option, pattern):
    store, mnt = tmp_path / "store", tmp_path / "mnt"
    mnt.mkdir()
    result = run_blobfs(["mount", "-o", option, mnt], store=store, timeout=20)
    if os.path.ismount(mnt):     # a blobfs that took the option: do not leave it mounted
        subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True, timeout=10)
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert re.search(pattern, result.stderr), result.stderr
    assert not os.path.ismount(mnt)
    assert not store.exists(), f"a refused mount created the store: {entries_under(store)}"
