"""A systemd of a test's own, running as PID 1 of new pid, mount, UTS and
cgroup namespaces, with nothing but the units the test gives it.

It is the real service manager, so a unit started in it runs as it would at
boot (its sandboxing, its restart policy, ExecStop), and what it mounts
shows in systemd's mount namespace as it would on the host. It must not
touch the machine, which other tests share:

- the unit path is only the test's directory (SYSTEMD_UNIT_PATH), with stub
  targets: no sysinit.target units, so no tmpfiles (which would empty
  /tmp), sysctl, udev, journald or getty;
- /etc and /var are overlays, /run and /sys/fs/cgroup tmpfs of its own;
- its cgroups are a subtree made for it (the cgroup namespace is rooted
  there, the hierarchies are mounted again inside), removed afterwards;
- the hostname is its own (UTS namespace); mounts propagate into it, never
  out (slave);
- close() kills it with SIGKILL: as PID 1 of its namespace, that ends every
  process in it, and its mounts go with the namespace.
"""

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

OUTER = r"""
set -eu
cg=blobfs-test-$$
for h in $(awk '$3 == "cgroup" || $3 == "cgroup2" { print $2 }' /proc/self/mounts); do
	mkdir "$h/$cg"
	for f in cpuset.cpus cpuset.mems; do
		if [ -f "$h/$cg/$f" ]; then cat "$h/$f" > "$h/$cg/$f"; fi
	done
	echo $$ > "$h/$cg/cgroup.procs"
done
echo "$cg" > "$1/cgroup-name"
exec unshare --cgroup --pid --fork --mount --uts --propagation slave --mount-proc \
	sh -c "$INNER" sh "$@"
"""

INNER = r"""
set -eu
state=$1 units=$2
hierarchies=$(awk '$3 == "cgroup" { n = split($4, o, ","); print $2 " " o[n] }' /proc/self/mounts)
if [ -z "$hierarchies" ]; then
	mount -t cgroup2 cgroup2 /sys/fs/cgroup          # the unified hierarchy alone
else
	mount -t tmpfs -o mode=755 tmpfs /sys/fs/cgroup
	echo "$hierarchies" | while read -r dir opt; do
		mkdir -p "$dir"
		mount -t cgroup -o "$opt" cgroup "$dir"
	done
	mkdir -p /sys/fs/cgroup/unified
	mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified
fi
for d in etc var; do
	mkdir -p "$state/$d-upper" "$state/$d-work"
	mount -t overlay overlay -o "lowerdir=/$d,upperdir=$state/$d-upper,workdir=$state/$d-work" "/$d"
done
mount -t tmpfs -o mode=755 tmpfs /run
exec env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
	SYSTEMD_UNIT_PATH="$units" container=blobfs-test /lib/systemd/systemd --system \
	--unit=blobfs-test.target --log-target=console --log-level=info
"""

STUB_TARGETS = ("blobfs-test", "sysinit", "basic", "network", "network-online", "local-fs",
                "remote-fs", "multi-user", "shutdown", "umount", "swap")


class Unavailable(Exception):
    """systemd cannot be run this way here; the message says why."""


def why_not():
    """None if a SystemdNamespace can be tried here, else the reason."""
    if os.geteuid() != 0:
        return "running systemd in namespaces needs root"
    if not os.path.exists("/lib/systemd/systemd"):
        return "no /lib/systemd/systemd (Debian package 'systemd')"
    for tool in ("unshare", "nsenter", "systemctl"):
        if shutil.which(tool) is None:
            return f"no {tool}"
    with open("/proc/self/mounts") as f:
        if not any(line.split()[2] in ("cgroup", "cgroup2") for line in f):
            return "no cgroup hierarchy is mounted"
    return None


class SystemdNamespace:
    def __init__(self, workdir, units, etc=None, boot_timeout=30):
        """Boot a systemd whose units are UNITS ({file name: text}) plus stub targets,
        and whose /etc has ETC ({path under /etc: text}) over the machine's."""
        reason = why_not()
        if reason:
            raise Unavailable(reason)
        self.dir = Path(workdir)
        self.units = self.dir / "units"
        self.state = self.dir / "state"
        self.units.mkdir(parents=True)
        self.state.mkdir()
        for name in STUB_TARGETS:
            (self.units / f"{name}.target").write_text(
                f"[Unit]\nDescription={name} (a stub of the test's systemd)\n")
        (self.units / "system.slice").write_text("[Unit]\nDescription=system\n[Slice]\n")
        for rel, text in (etc or {}).items():
            path = self.state / "etc-upper" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        for name, text in units.items():
            (self.units / name).parent.mkdir(parents=True, exist_ok=True)
            (self.units / name).write_text(text)
        self.console = open(self.dir / "console.log", "wb")
        self.proc = subprocess.Popen(
            ["sh", "-c", OUTER, "sh", str(self.state), str(self.units)],
            env={**os.environ, "INNER": INNER}, stdin=subprocess.DEVNULL,
            stdout=self.console, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = None
        try:
            self._wait_running(boot_timeout)
        except Exception:
            self.close()
            raise

    def _wait_running(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise Unavailable(f"systemd did not start: {self.console_text()[-2000:]}")
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
            try:
                pids = children.read_text().split()
            except OSError:
                pids = []
            if pids and Path(f"/proc/{pids[0]}/comm").read_text().strip() == "systemd":
                self.pid = int(pids[0])
                state = self.systemctl("is-system-running").stdout.strip()
                if state in ("running", "degraded"):
                    return
            time.sleep(0.2)
        raise Unavailable(f"systemd did not come up in {timeout}s: {self.console_text()[-2000:]}")

    def console_text(self):
        return (self.dir / "console.log").read_text(errors="replace")

    def run(self, argv, timeout=60, **kwargs):
        """Run ARGV in systemd's namespaces (as a process on its host would)."""
        return subprocess.run(["nsenter", "-t", str(self.pid), "-m", "-p", "-u", "--"] +
                              [str(a) for a in argv], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL, **kwargs)

    def systemctl(self, *args, timeout=60):
        return self.run(["systemctl", "--no-pager", *args], timeout=timeout)

    def show(self, unit, *props):
        result = self.systemctl("show", unit, *[f"-p{p}" for p in props])
        return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)

    def mounts(self):
        """[(source, mountpoint, fstype)] as systemd's mount namespace has them."""
        out = []
        with open(f"/proc/{self.pid}/mounts") as f:
            for line in f:
                source, point, fstype = line.split()[:3]
                out.append((source, point.replace("\\040", " "), fstype))
        return out

    def host_pid(self, ns_pid):
        """The PID seen from here of a process whose PID in systemd's namespace is NS_PID."""
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                status = Path(f"/proc/{entry}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("NSpid:"):
                    pids = line.split()[1:]
                    if len(pids) >= 2 and pids[-1] == str(ns_pid) and \
                            os.readlink(f"/proc/{entry}/ns/pid") == \
                            os.readlink(f"/proc/{self.pid}/ns/pid"):
                        return int(entry)
        return None

    def close(self):
        if self.pid:
            try:
                os.kill(self.pid, 9)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(10)
        self.console.close()
        self._remove_cgroups()

    def _remove_cgroups(self):
        try:
            name = (self.state / "cgroup-name").read_text().strip()
        except OSError:
            return
        with open("/proc/self/mounts") as f:
            roots = [line.split()[1] for line in f if line.split()[2] in ("cgroup", "cgroup2")]
        deadline = time.monotonic() + 10
        for root in roots:
            top = Path(root) / name
            while top.exists():
                for sub in sorted((p for p in top.rglob("*") if p.is_dir()),
                                  key=lambda p: len(p.parts), reverse=True) + [top]:
                    try:
                        sub.rmdir()
                    except OSError:
                        pass
                if top.exists():
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"cannot remove the test's cgroup {top}")
                    time.sleep(0.1)


def security_report(unit_path):
    """systemd-analyze security --offline of a unit file: (exposure 0-10, {name: set})."""
    directory, name = os.path.split(unit_path)
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", "--json=short",
                             name], cwd=directory, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise Unavailable(f"systemd-analyze security --offline: {result.stderr.strip()}")
    checks = {c["name"]: c["set"] for c in json.loads(result.stdout)}
    text = subprocess.run(["systemd-analyze", "security", "--offline=true", name],
                          cwd=directory, capture_output=True, text=True, timeout=60).stdout
    exposure = float(text.rsplit("Overall exposure level", 1)[1].split(":")[1].split()[0])
    return exposure, checks
