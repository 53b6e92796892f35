"""bench/run as a package; bench/run and bench/pull-bench are its front ends.

  constants.py  units, timeouts, sizes, tool and profile names
  proc.py       processes, daemons, FUSE mounts, cat/cmp with deadlines, /proc
  probes.py     reads run in a child process (bench/run --helper NAME)
  options.py    sizes and the blobfs binary, for bench/run and bench/pull-bench
  registry.py   the registry and its CDN (tests/lib/dockerreg.py), the served blobs
  measure.py    the round engine and one Bench method per measurement
  table.py      the table of measurements (profiles, blobs) and the walk over it
  targets.py    the table of targets the report judges
  report.py     RESULTS.md from the results; machine and versions
  core.py       the namespace handed to engine/, passthrough.py, tensor.py

Flow: bench/run parses options, table.run_all walks the table (one registry per
profile, blobs pushed once), each step records into Bench.results, and after
every step report.Report renders RESULTS.md (and --json) from them.
"""
