#!/usr/bin/env python3
"""gen-manifest-flood.py - a manifest that floods strmap's hash table.

    python3 tests/fuzz/gen-manifest-flood.py [layers] > flood.json

strmap.c hashed keys with unseeded FNV-1a and probes linearly, and
manifest.c's assign_files() puts every layer's file name into two strmaps.
The low 16 bits of FNV-1a depend only on the low 16 bits of the state, so
names whose hash agrees in those bits are cheap to find (meet in the middle
below), and all of them landed in one probe chain for every table size up to
65536: inserting n names cost O(n²) strcmp()s. With the default 30000
layers the manifest is 3.7 MB (under MANIFEST_MAX_BYTES) and manifest_parse
took seconds instead of milliseconds. strmap.c now uses SipHash with a random
key, and the output (regressions/manifest/strmap-hash-flood-30000-layers.json.gz)
guards that. Deterministic output.
"""
import sys

P = 1099511628211 & 0xFFFF
PINV = pow(P, -1, 1 << 16)
OFFSET = 1469598103934665603 & 0xFFFF
ALPHA = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
DIGEST = "sha256:6b86b273ff34fce19d6b804eff5a3f5747ada4eaa22f1d49c01e52ddb7875b4b"


def step(h, c):
    return ((h ^ c) * P) & 0xFFFF


def fnv16(s):
    h = OFFSET
    for c in s:
        h = step(h, c)
    return h


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 30000
    target = fnv16(b"config.json")
    # Forward: the state after each 3-character prefix.
    fwd = {}
    for a in ALPHA:
        for b in ALPHA:
            for c in ALPHA:
                fwd.setdefault(step(step(step(OFFSET, a), b), c), []).append(bytes((a, b, c)))
    names = []
    # Backward: the state a 3-character suffix needs to end at target.
    for x in ALPHA:
        for y in ALPHA:
            for z in ALPHA:
                h = ((target * PINV) & 0xFFFF) ^ z
                h = ((h * PINV) & 0xFFFF) ^ y
                h = ((h * PINV) & 0xFFFF) ^ x
                for pre in fwd.get(h, ()):
                    names.append(pre + bytes((x, y, z)))
                    if len(names) == n:
                        break
                if len(names) == n:
                    break
            if len(names) == n:
                break
        if len(names) == n:
            break
    assert all(fnv16(s) == target for s in names)
    layers = ",".join('{"mediaType":"m","digest":"%s","size":1,"name":"%s"}' % (DIGEST, s.decode())
                      for s in names)
    sys.stdout.write('{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.'
                     'manifest.v2+json","config":{"mediaType":"c","digest":"%s","size":1},'
                     '"layers":[%s]}' % (DIGEST, layers))


main()
