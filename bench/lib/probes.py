"""Reads that run in a child process (`bench/run --helper NAME ...`), so that a read
that hangs in FUSE can be killed without taking the benchmark with it. Each
prints one JSON object; Bench.helper starts them and parses it."""
import json
import mmap
import os
import random
import time

from .constants import HEADER, PAGE, REGION, SKIP_EVERY


def helper_ttfb(path, source, count, seed):
    """Open PATH, pread 4 KiB at a random page, close: COUNT times, each timed."""
    count, seed = int(count), int(seed)
    size = os.path.getsize(source)
    rng = random.Random(seed)
    ms, bad = [], []
    with open(source, "rb") as src:
        for _ in range(count):
            off = rng.randrange(max(1, size // PAGE)) * PAGE
            t0 = time.perf_counter()
            fd = os.open(path, os.O_RDONLY)
            data = os.pread(fd, PAGE, off)
            t1 = time.perf_counter()
            os.close(fd)
            ms.append((t1 - t0) * 1000)
            if data != os.pread(src.fileno(), PAGE, off):
                bad.append(off)
    print(json.dumps({"ms": ms, "bad": bad}))


def helper_randread(path, source, count, seed):
    """COUNT preads of 4 KiB at distinct random pages, through one open file."""
    count, seed = int(count), int(seed)
    size = os.path.getsize(source)
    pages = random.Random(seed).sample(range(size // PAGE), min(count, size // PAGE))
    bad = []
    t0 = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    got = [os.pread(fd, PAGE, p * PAGE) for p in pages]
    os.close(fd)
    t1 = time.perf_counter()
    with open(source, "rb") as src:
        for p, data in zip(pages, got):
            if data != os.pread(src.fileno(), PAGE, p * PAGE):
                bad.append(p * PAGE)
    print(json.dumps({"seconds": t1 - t0, "reads": len(pages), "bad": bad[:20],
                      "nbad": len(bad)}))


def helper_loader(path, header=str(HEADER), region=str(REGION), skip_every=str(SKIP_EVERY)):
    """mmap PATH; touch every page of the header, then of each region in file
    order except one in SKIP_EVERY (the middle one of each ten)."""
    header, region, skip_every = int(header), int(region), int(skip_every)
    t0 = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    size = os.fstat(fd).st_size
    mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
    acc = touched = regions = skipped = 0
    end = min(header, size)
    for off in range(0, end, PAGE):
        acc += mm[off]
    touched += end
    pos = end
    while pos < size:
        stop = min(pos + region, size)
        if regions % skip_every == skip_every // 2:
            skipped += 1
        else:
            for off in range(pos, stop, PAGE):
                acc += mm[off]
            touched += stop - pos
        regions += 1
        pos = stop
    mm.close()
    os.close(fd)
    t1 = time.perf_counter()
    print(json.dumps({"seconds": t1 - t0, "touched": touched, "regions": regions,
                      "skipped": skipped, "acc": acc}))


HELPERS = {"ttfb": helper_ttfb, "randread": helper_randread, "loader": helper_loader}
