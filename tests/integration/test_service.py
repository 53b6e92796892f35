"""blobfs as a machine's service, tried as an administrator would: the
configuration in /etc/blobfs/config under a user's file and the environment,
fstab lines under `mount -a`, the systemd unit under systemd-analyze and
under a running systemd, contrib/setup-debian killed half-way, the bash
completion in a real interactive bash, and the small things an
administrator trips over (a FIFO as configuration file, a byte-order mark,
conflicting store options).

The machine's own /etc is never touched: a test that needs
/etc/blobfs/config runs blobfs in a mount namespace of its own, where /etc
is an overlay holding the test's files over the real /etc.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from faultreg import OLLAMA_MODEL, FaultRegistry  # noqa: F401  (fixtures use it)

REPO_DIR = Path(__file__).resolve().parents[2]
CONTRIB = REPO_DIR / "contrib"
PROXY_VARS = {"http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy"}


def run(argv, timeout=60, env=None, **kwargs):
    """subprocess.run with text output captured; fails the test past TIMEOUT."""
    argv = [str(a) for a in argv]
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env,
                              stdin=kwargs.pop("stdin", subprocess.DEVNULL), **kwargs)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(argv)} did not finish within {timeout}s: {exc.stderr}")


def clean_env(home, extra=None):
    """The caller's environment without proxies and BLOBFS_*, with HOME=home and no
    XDG_CONFIG_HOME (so the user's file is HOME/.config/blobfs/config); plus EXTRA."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BLOBFS_", "XDG_")) and k.lower() not in PROXY_VARS}
    env["HOME"] = str(home)
    env.update({k: str(v) for k, v in (extra or {}).items()})
    return env


@pytest.fixture
def private_etc(tmp_path):
    """private_etc(FILES) -> an argv prefix that runs a command in a mount namespace
    of its own, where /etc is an overlay holding FILES ({"blobfs/config": text})
    over the machine's /etc. Skips where that cannot be done."""
    if os.geteuid() != 0:
        pytest.skip("a private /etc needs root (a mount namespace and overlayfs)")
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) (Debian package 'util-linux')")
    count = [0]

    def prefix(files):
        count[0] += 1
        upper, work = tmp_path / f"etc-upper{count[0]}", tmp_path / f"etc-work{count[0]}"
        work.mkdir(parents=True)
        upper.mkdir(parents=True)
        for rel, text in files.items():
            (upper / rel).parent.mkdir(parents=True, exist_ok=True)
            (upper / rel).write_text(text)
        script = ('mount -t overlay overlay -o "lowerdir=/etc,upperdir=$1,workdir=$2" /etc '
                  '|| exit 97; shift 2; exec "$@"')
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                str(upper), str(work)]
        probe = run(argv + ["cat", f"/etc/{next(iter(files))}"] if files else argv + ["true"])
        if probe.returncode != 0:
            pytest.skip(f"cannot lay an overlay over /etc here: {probe.stderr.strip()}")
        return argv

    return prefix


def registry_with(model_name, payload):
    reg = FaultRegistry()
    reg.add_model(model_name, "latest", [(OLLAMA_MODEL, payload)])
    return reg


# ================================================================ 1. layering


def test_a_user_section_without_mirrors_keeps_the_system_files_mirrors(
        blobfs_bin, private_etc, tmp_path):
    """The system file names a mirror for a host; the user's file has a section
    for that host with other settings only. Pulls must still go to the mirror."""
    payload = os.urandom(50000)
    with registry_with("library/m", payload) as upstream, \
            registry_with("library/m", payload) as mirror:
        prefix = private_etc({"blobfs/config": f"[host {upstream.host}]\n"
                                               f"mirror = {mirror.url}\n"})
        home = tmp_path / "home"
        (home / ".config" / "blobfs").mkdir(parents=True)
        (home / ".config" / "blobfs" / "config").write_text(
            f"[host {upstream.host}]\nconnections = 4\n")
        result = run(prefix + [blobfs_bin, "--store", tmp_path / "store", "pull", "--quiet",
                               f"{upstream.host}/library/m"], env=clean_env(home))
        assert result.returncode == 0, result.stderr
        assert mirror.count() > 0, "the mirror of /etc/blobfs/config was not asked"
        assert upstream.count() == 0, \
            f"the user's [host] section dropped the system file's mirror: " \
            f"{[r.path for r in upstream.requests()]}"
