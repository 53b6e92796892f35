"""The targets the report judges, as a table.

Each target has the number of the section it belongs to, its text (with
{fields} the report fills in: size, tag, tags), a predicate on the chosen
statistic of the per-round values, how to print a value, and which statistic
(the median, or the maximum for peak RSS) it is judged on. SUMMARY is the row
the Targets table shows for a measurement that did not run. The engine,
passthrough and tensor modules judge their own targets (Report.target).
"""
from collections import namedtuple

Target = namedtuple("Target", "tid text ok fmt use", defaults=("median",))


def _times(x):
    return "%.2f×" % x


def _ms(x):
    return "%.1f ms" % x


TARGETS = {
    "cold-aria2c": Target("1", "cold cat ≥ 0.9× aria2c throughput, {tag}",
                          lambda x: x >= 0.9, _times),
    "cold-rclone": Target("1", "cold cat ≥ 10× rclone throughput, {tag}",   # capped only
                          lambda x: x >= 10, _times),
    "warm": Target("2", "warm read ≥ 0.9× native, {size}", lambda x: x >= 0.9, _times),
    "disk": Target("3", "disk read ≥ 0.8× native, {size}", lambda x: x >= 0.8, _times),
    "ttfb": Target("4", "median time to first byte ≤ 50 ms ({size}, cold)",
                   lambda x: x <= 50, _ms),
    "amplification": Target("4", "1% random 4 KiB reads fetch ≤ 5% of the blob ({size})",
                            lambda x: x <= 5, lambda x: "%.1f%%" % x),
    "rss": Target("6", "peak RSS ≤ 64 MiB ({size} streamed)", lambda x: x <= 64,
                  lambda x: "%.1f MiB" % x, use="max"),
    "ls-first": Target("7", "ls -lR of {tags} tags ≤ 100 ms (first after mount)",
                       lambda x: x <= 100, _ms),
    "ls-repeat": Target("7", "ls -lR of {tags} tags ≤ 100 ms (repeated)", lambda x: x <= 100, _ms),
    "startup": Target("7", "mount start-up with {tags} tags ≤ 1 s", lambda x: x <= 1000,
                      lambda x: "%.0f ms" % x),
}

# measurement: (section number, what its targets say), for the "not run" rows.
SUMMARY = (
    ("cold", "1", "cold cat vs aria2c / rclone"),
    ("warm", "2", "warm read ≥ 0.9× native"),
    ("disk", "3", "disk read ≥ 0.8× native"),
    ("random", "4", "first byte ≤ 50 ms; 1% random reads ≤ 5%"),
    ("resources", "6", "peak RSS ≤ 64 MiB"),
    ("metadata", "7", "ls -lR ≤ 100 ms; start-up ≤ 1 s"),
    ("engine", "8", "llama.cpp loads vs aria2c + load and local"),
    ("passthrough", "9", "fresh mount, passthrough ≥ 0.95× native"),
    ("tensor", "10", "1,000-blob pull ≥ 1.2× aria2c -j64; mount ≥ 0.9× pull; ls -lR ≤ 50 ms"),
)
