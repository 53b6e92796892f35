"""The measurements as a table, and the walk over it.

Each row says under which CDN profiles a measurement runs, on which blobs
("each": every --sizes blob; "largest": the largest; "registry": it makes its
own, given the registry), whether its results are a list (one entry per blob or
profile), and the function that runs it. Rows that share a `group` run as one
(warm and disk read the same filled mount). Profiles run in PROFILES order;
within a profile the rows run in table order; rows under no profile (metadata)
run after every profile. A row that raises is recorded as failed to run
(record_error) and the walk goes on.
"""
import traceback
from collections import namedtuple

from engine import measure as engine_measure
import passthrough as passthrough_measure
import tensor as tensor_measure

from . import core
from .constants import MEASUREMENTS, PROFILES
from .proc import Failed, one_line
from .registry import Served, registry, serve_sizes

UNCAPPED, BOTH = ("uncapped",), ("uncapped", "capped")

Row = namedtuple("Row", "name profiles blobs many run group", defaults=(None,))

# run(ctx, *args): args are (served,) for blob rows, (reg, profile) for registry
# rows, () otherwise; ctx.bench is the Bench, ctx.which the group's selected names.
TABLE = (
    Row("cold", BOTH, "each", True, lambda c, s: c.bench.m_cold(s)),
    Row("warm", UNCAPPED, "each", True, lambda c, s: c.bench.m_warm_disk(s, c.which),
        group="warm+disk"),
    Row("disk", UNCAPPED, "each", True, None, group="warm+disk"),
    Row("passthrough", UNCAPPED, "each", True,
        lambda c, s: passthrough_measure.measure(c.bench, core, s)),
    Row("random", UNCAPPED, "largest", False, lambda c, s: c.bench.m_random(s)),
    Row("resources", UNCAPPED, "largest", False, lambda c, s: c.bench.m_resources(s)),
    Row("loader", BOTH, "each", True, lambda c, s: c.bench.m_loader(s)),
    Row("engine", BOTH, "registry", True, lambda c, reg, prof: c.engine.run_profile(reg, prof)),
    Row("tensor", UNCAPPED, "registry", False,
        lambda c, reg, prof: tensor_measure.measure(c.bench, core, reg)),
    Row("metadata", (), None, False, lambda c: c.bench.m_metadata()),
)
ROWS = {r.name: r for r in TABLE}
assert set(ROWS) == set(MEASUREMENTS), "bench/lib/table.py and MEASUREMENTS disagree"


class Context:
    def __init__(self, bench):
        self.bench, self.engine, self.which = bench, None, ()


def record_error(bench, name, fargs, msg):
    """Record NAME (parts joined by "+") as failed to run with MSG."""
    print("  !! %s failed to run: %s" % (name, one_line(msg, 600)), flush=True)
    s = fargs[0] if fargs and isinstance(fargs[0], Served) else None
    for part in name.split("+"):
        entry = {"error": msg}
        if s is not None:
            entry.update(size=s.size, profile=s.profile)
        if ROWS[part].many:
            bench.results.setdefault(part, [])
            if isinstance(bench.results[part], list):
                bench.results[part].append(entry)
        else:
            bench.results.setdefault(part, entry)


def setup_engine(ctx):
    """The engine's one-time set-up; a failure there records engine as failed."""
    print("\n== engine set-up", flush=True)
    try:
        ctx.engine = engine_measure.Engine(ctx.bench, core)
    except Failed as e:
        record_error(ctx.bench, "engine", (), str(e))
    except Exception as e:  # noqa: BLE001 -- one measurement must not sink the run
        traceback.print_exc()
        record_error(ctx.bench, "engine", (), "%s: %s" % (type(e).__name__, e))


def steps(only, prof):
    """The selected rows under PROF, groups merged: (name, row, which)."""
    seen = set()
    for row in TABLE:
        if prof not in row.profiles or row.name not in only:
            continue
        key = row.group or row.name
        if key in seen:
            continue
        seen.add(key)
        which = [r.name for r in TABLE if (r.group or r.name) == key and r.name in only]
        yield "+".join(which), ROWS[which[0]], which


def run_all(bench, args, only, guarded):
    """Run the selected measurements; GUARDED(name, fn, *args) runs one step."""
    ctx = Context(bench)
    sizes, big = args.size_list, max(args.size_list)
    if "engine" in only:
        setup_engine(ctx)
    for prof in PROFILES:
        rows = [r for r in TABLE if prof in r.profiles and r.name in only]
        if not rows or prof not in args.profile_list:
            continue
        rate = args.rate if prof == "capped" else None
        need = set()
        for r in rows:
            need |= set(sizes) if r.blobs == "each" else {big} if r.blobs == "largest" else set()
        print("\n== %s CDN%s" % (prof, ", limit_rate %s per connection" % rate if rate else ""),
              flush=True)
        try:
            reg = registry(rate)
        except Exception as e:  # noqa: BLE001
            for name in sorted(only - {"metadata"}):
                record_error(bench, name, (), "registry did not start: %s" % e)
            continue
        with reg:
            served = serve_sizes(bench, reg, prof, need)
            for name, row, which in steps(only, prof):
                ctx.which = which
                fn = (lambda *a, row=row: row.run(ctx, *a))
                if row.blobs == "each":
                    for size in sizes:
                        guarded(name, fn, served[size])
                elif row.blobs == "largest":
                    guarded(name, fn, served[big])
                elif name != "engine" or ctx.engine:
                    guarded(name, fn, reg, prof)
    for row in TABLE:
        if not row.profiles and row.name in only:
            print("\n== %s" % row.name, flush=True)
            guarded(row.name, lambda row=row: row.run(ctx))

