"""The one table of settings and options (src/settings.def, and the option
tables of main.c and cmd_mount.c), as the built blobfs reports it with
--completion-helper, against everything a user reads or types:

- blobfs.conf(5) lists every setting with its scope, its range, its default
  and its options;
- blobfs(1) lists every option, with the default of a setting, and every
  mount option;
- --help lists every option, with the same defaults;
- the bash completion offers every option of a command and every mount
  option, and a value's kind decides what it completes.

The table is read from the binary, so a setting added to settings.def and
left out of a manual page fails here.
"""

import functools
import os
import re
import shutil
from pathlib import Path

import pytest

import children

REPO_DIR = Path(__file__).resolve().parents[2]
MAN_DIR = REPO_DIR / "man"
COMPLETION = REPO_DIR / "contrib" / "bash-completion" / "blobfs"


# Every child of this file gets 30 s.
run = functools.partial(children.run, timeout=30)


def helper(blobfs_bin):
    """The --completion-helper records: {kind: [fields...]}."""
    result = run([blobfs_bin, "--completion-helper"])
    assert result.returncode == 0 and result.stderr == "", result.stderr
    records = {}
    for line in result.stdout.splitlines():
        kind, *fields = line.split("\t")
        records.setdefault(kind, []).append(fields)
    return records


def settings(blobfs_bin):
    """[{key, type, scope, default, range, option, mount}] in the table's order."""
    names = ("key", "type", "scope", "default", "range", "option", "mount")
    return [dict(zip(names, fields)) for fields in helper(blobfs_bin)["setting"]]


def render(page):
    """The text of a manual page as man renders it: no overstriking, no
    hyphenation, ASCII hyphens, one long line per paragraph."""
    if shutil.which("man") is None:
        pytest.skip("no man (Debian package 'man-db')")
    env = {"PATH": os.environ["PATH"], "MANWIDTH": "1000", "MANROFFOPT": "-rHY=0",
           "LANG": "C.UTF-8"}
    result = run(["man", "-l", MAN_DIR / page], base_env=env)
    assert result.returncode == 0, result.stderr
    text = re.sub(r".\x08", "", result.stdout)
    return text.replace("\u2010", "-").replace("\u2212", "-")


def section(text, name):
    match = re.search(rf"^{re.escape(name)}\n(.*?)(?=^[A-Z][A-Z ]+\n|\Z)", text, re.M | re.S)
    assert match, f"no section {name}"
    return match[1]


def entries(text):
    """[(tag, body)] of the tagged paragraphs (.TP) of a rendered section:
    tags indented 7 columns, their bodies 14; blanks collapsed."""
    found = []
    after_tag = False
    for line in text.splitlines():
        if re.match(r"^ {7}\S", line):
            if after_tag:                           # .TQ: another tag of one entry
                found[-1][0] += " " + line.strip()
            else:
                found.append([line.strip(), ""])
            after_tag = True
            continue
        if re.match(r"^ {14}\S", line) and found:
            found[-1][1] += " " + line.strip()
        after_tag = False
    return [(tag, re.sub(r"\s+", " ", body).strip()) for tag, body in found]


def entry_for(entries_, pattern):
    hits = [(tag, body) for tag, body in entries_ if re.search(pattern, tag)]
    return hits[0] if hits else (None, None)


def test_every_setting_is_in_blobfs_conf_5_with_scope_range_and_default(blobfs_bin):
    table = settings(blobfs_bin)
    assert len(table) >= 15, table
    conf5 = entries(section(render("blobfs.conf.5"), "SETTINGS"))
    for s in table:
        tag, body = entry_for(conf5, rf"^{re.escape(s['key'])}\b")
        assert tag, f"setting '{s['key']}' is not in blobfs.conf(5)"
        assert tag.split()[1:2] == [s["type"]] or s["type"] == "scheme", \
            f"{s['key']}: blobfs.conf(5) gives its type as {tag!r}, not {s['type']}"
        scope = {"global": "(global)", "host": "(host"}.get(s["scope"])
        if scope:
            assert body.startswith(scope), f"{s['key']}: blobfs.conf(5) does not say {scope}"
        else:
            assert not body.startswith(("(global)", "(host")), f"{s['key']} is in any section"
        if s["range"]:
            assert s["range"] in body, f"{s['key']}: the range {s['range']} is not in: {body}"
        if s["default"]:
            assert re.search(rf"\bdefault:? {re.escape(s['default'])}(?=[ ;.,)]|$)", body, re.I), \
                f"{s['key']}: the default {s['default']!r} is not in: {body}"
        for kind in ("option", "mount"):
            if s[kind]:
                assert re.search(rf"(?<![\w-]){re.escape(s[kind])}\b", body), \
                    f"{s['key']}: its {kind} {s[kind]} is not named in: {body}"


def test_every_option_is_in_blobfs_1_with_its_default(blobfs_bin):
    page = render("blobfs.1")
    options = entries(section(page, "OPTIONS"))
    # a boolean's option is the one that changes its default
    defaults = {s["option"]: s["default"] for s in settings(blobfs_bin)
                if s["option"] and s["type"] != "boolean"}
    names = {fields[0] for fields in helper(blobfs_bin)["option"]}
    assert {"--store", "-s", "--connections", "--lazy", "--option"} <= names, names
    for name in sorted(names):
        tag, body = entry_for(options, rf"(?<![\w-]){re.escape(name)}(?![\w-])")
        assert tag, f"option {name} has no entry under OPTIONS in blobfs(1)"
        default = defaults.get(name, "")
        if default and name != "--store":
            assert re.search(rf"\(default:? {re.escape(default)}\)", body), \
                f"{name}: blobfs(1) does not give its default ({default}): {body}"


def test_every_mount_option_is_in_blobfs_1(blobfs_bin):
    mount_options = entries(section(render("blobfs.1"), "MOUNT OPTIONS"))
    tags = " ".join(tag for tag, _ in mount_options)
    records = helper(blobfs_bin)["mount-option"]
    assert {"store", "request_size", "no_netrc", "threads"} <= {r[0] for r in records}
    for name, value, *default in records:
        assert re.search(rf"(?<![\w-]){re.escape(name)}\b", tags), \
            f"mount option {name} is not under MOUNT OPTIONS in blobfs(1)"
        if "|" in value:
            assert f"{name}={{{value}}}" in tags, f"{name}: its values {value} are not listed"
        if default:
            tag, body = entry_for(mount_options, rf"\b{re.escape(name)}=")
            assert f"(default {default[0]})" in body, f"{name}: default {default[0]}: {body}"


def test_help_lists_every_option_with_its_default(blobfs_bin):
    result = run([blobfs_bin, "--help"])
    assert result.returncode == 0, result.stderr
    text = re.sub(r"\s+", " ", result.stdout)
    for s in settings(blobfs_bin):
        if not s["option"]:
            continue
        assert re.search(rf"(?<![\w-]){re.escape(s['option'])}\b", text), s["option"]
        if s["default"] and s["type"] != "boolean":
            assert re.search(rf"{re.escape(s['option'])} .*?\(default:? "
                             rf"{re.escape(s['default'])}\)", text), s
    for name, _, _ in helper(blobfs_bin)["option"]:
        assert re.search(rf"(?<![\w-]){re.escape(name)}\b", result.stdout), name


def bash_complete(blobfs_bin, tmp_path, words):
    """COMPREPLY of the completion for WORDS (the cursor in the last one)."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    if not (bindir / "blobfs").exists():
        (bindir / "blobfs").symlink_to(blobfs_bin)
    line = " ".join(words)
    script = (f'source "$COMPLETION"\n'
              f'COMP_WORDS=({" ".join(_shell_quote(w) for w in words)})\n'
              f'COMP_CWORD={len(words) - 1}\nCOMP_LINE={_shell_quote(line)}\n'
              f'COMP_POINT={len(line)}\n_blobfs blobfs\n'
              'printf "%s\\n" "${COMPREPLY[@]}"\n')
    env = {"PATH": f"{bindir}:{os.environ['PATH']}", "COMPLETION": str(COMPLETION),
           "HOME": str(tmp_path), "BLOBFS_CONFIG": "/dev/null"}
    result = run(["bash", "--norc", "--noprofile", "-c", script], base_env=env)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return [w for w in result.stdout.splitlines() if w]


def _shell_quote(word):
    return "'" + word.replace("'", "'\\''") + "'"


def test_completion_offers_what_the_table_has(blobfs_bin, tmp_path):
    records = helper(blobfs_bin)
    for name, _, cmds in records["option"]:
        if not name.startswith("--"):
            continue
        for cmd in (["pull", "mount", "ls", "gc"] if cmds == "*" else cmds.split(",")):
            assert name in bash_complete(blobfs_bin, tmp_path, ["blobfs", cmd, "--"]), \
                f"blobfs {cmd} --<TAB> does not offer {name}"
    offered = bash_complete(blobfs_bin, tmp_path, ["blobfs", "mount", "-o", ""])
    for name, value, *_ in records["mount-option"]:
        assert (name + "=" if value else name) in offered, f"-o {name} is not offered"
    assert bash_complete(blobfs_bin, tmp_path, ["blobfs", "mount", "-o", "request_"]) == \
        ["request_size="]
    assert sorted(bash_complete(blobfs_bin, tmp_path, ["blobfs", "pull", "--"])) == sorted(
        name for name, _, cmds in records["option"]
        if name.startswith("--") and (cmds == "*" or "pull" in cmds.split(",")))
