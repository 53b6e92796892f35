"""Sections of bench/RESULTS.md that other bench modules than bench/run write.

A module writes its part between two marker lines of its own name:

    <!-- begin bench/fleet -->
    ...
    <!-- end bench/fleet -->

splice() puts a module's part in (replacing its earlier one, else at the end);
bench/run, which rewrites the file as a whole, carries every such part over
with kept().
"""

import os
import re

_BLOCK = re.compile(r"^<!-- begin bench/(?P<name>[\w-]+) -->\n.*?^<!-- end bench/(?P=name) -->\n",
                    re.M | re.S)


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def kept(path):
    """Every module's part in the file at PATH, in its order, as one string."""
    return "".join("\n" + m[0] for m in _BLOCK.finditer(_read(path)))


def splice(path, name, body):
    """Write BODY as module NAME's part of the file at PATH (atomically)."""
    block = f"<!-- begin bench/{name} -->\n{body.rstrip()}\n<!-- end bench/{name} -->\n"
    text = _read(path)
    mine = [m for m in _BLOCK.finditer(text) if m["name"] == name]
    if mine:
        text = text[:mine[0].start()] + block + text[mine[0].end():]
    else:
        text = (text.rstrip("\n") + "\n\n" if text else "") + block
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
