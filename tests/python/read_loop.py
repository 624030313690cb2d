"""Reads a store in a loop with zarr-python while chunkwise writes it (tests/readers.rs; issue 14
item 5; spec/APPEND.md §4, spec/LIBRARY.md "write_region").

usage: read_loop.py STORE STOP_FILE REGION_JSON

Each read opens the array afresh, reads it whole and checks it against the writers' rule: every
value is f(z, y, x) = (977 z + 131 y + 17 x) mod 65536, except in REGION (the region writes'
box, [[z0, z1], [y0, y1], [x0, x1]]), where each chunk's part holds f or f ^ 0x5555 throughout
(a chunk is replaced whole, so a reader sees its old or its new content, never a mixture).
Prints "ready" after the first read, then loops until STOP_FILE exists, and prints one JSON
line: {"reads": N, "shapes": [...], "errors": [...]}.
"""
import json
import os
import sys

import numpy as np
import zarr

CHUNK = 8


def expected(shape):
    z, y, x = np.indices(shape, dtype=np.int64)
    return ((977 * z + 131 * y + 17 * x) % 65536).astype(np.uint16)


def check(a, region):
    """None if `a` is a state the writers may leave, else what is wrong."""
    f = expected(a.shape)
    (z0, z1), (y0, y1), (x0, x1) = region
    inside = np.zeros(a.shape, bool)
    inside[z0:z1, y0:y1, x0:x1] = True
    wrong = (a != f) & ~inside
    if wrong.any():
        i = tuple(int(v) for v in np.argwhere(wrong)[0])
        return "value %d at %s outside the written region, expected %d" % (a[i], i, f[i])
    for cz in range(z0 // CHUNK, (z1 - 1) // CHUNK + 1):
        for cy in range(y0 // CHUNK, (y1 - 1) // CHUNK + 1):
            for cx in range(x0 // CHUNK, (x1 - 1) // CHUNK + 1):
                s = tuple(slice(max(lo, c * CHUNK), min(hi, (c + 1) * CHUNK))
                          for c, (lo, hi) in zip((cz, cy, cx), region))
                part, old = a[s], f[s]
                if not ((part == old).all() or (part == (old ^ 0x5555)).all()):
                    return "chunk %s holds neither its old nor its new values" % ((cz, cy, cx),)
    return None


def main():
    store, stop, region = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    reads, shapes, errors = 0, set(), []
    while True:
        try:
            a = zarr.open_array(store, mode="r")[...]
            why = check(a, region)
            if why:
                errors.append("shape %s: %s" % (a.shape, why))
            shapes.add(a.shape)
        except Exception as e:  # noqa: BLE001 - every failure is reported
            errors.append("%s: %s" % (type(e).__name__, e))
        reads += 1
        if reads == 1:
            print("ready", flush=True)
        if os.path.exists(stop) or len(errors) > 20:
            break
    print(json.dumps({"reads": reads, "shapes": sorted(list(s) for s in shapes),
                      "errors": errors}), flush=True)


if __name__ == "__main__":
    main()
