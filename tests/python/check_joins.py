#!/usr/bin/env python3
"""Checks arrays chunkwise grew (append, concat, stack) against numpy.concatenate / numpy.stack
of the inputs, reading them with zarr-python (rectilinear chunk grids enabled) and, for regular
grids, tensorstore. usage: check_joins.py MANIFEST, one JSON object per line:
{"store": PATH, "op": "concatenate"|"stack", "axis": A, "inputs": [NPY, ...]}.
Prints one line per store and "K of N joins match"; exits 1 on any mismatch."""
import json
import sys

import numpy as np
import tensorstore as ts
import zarr

zarr.config.set({"array.rectilinear_chunks": True})


def check(job):
    parts = [np.load(p) for p in job["inputs"]]
    want = getattr(np, job["op"])(parts, axis=job["axis"])
    z = zarr.open_array(job["store"], mode="r")
    got = z[...]
    problems = []
    if got.shape != want.shape or got.dtype != want.dtype:
        problems.append("zarr-python: %s %s, numpy %s %s" % (got.dtype, got.shape, want.dtype, want.shape))
    elif not np.array_equal(got, want):
        problems.append("zarr-python: %d values differ" % int(np.count_nonzero(got != want)))
    grid = json.load(open(job["store"] + "/zarr.json"))["chunk_grid"]["name"]
    if grid == "regular":
        t = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": job["store"]}, "open": True}).result()
        got = t.read().result()
        if got.shape != want.shape or not np.array_equal(got, want):
            problems.append("tensorstore differs")
    return grid, problems


def main():
    jobs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
    ok = 0
    for job in jobs:
        try:
            grid, problems = check(job)
        except Exception as e:  # a reader refusing the store is a failure, reported as such
            grid, problems = "?", ["%s: %s" % (type(e).__name__, e)]
        print("%s %s (%s grid)%s" % ("ok  " if not problems else "FAIL", job["store"], grid,
                                      "" if not problems else ": " + "; ".join(problems)))
        ok += not problems
    print("%d of %d joins match (zarr %s, numpy %s)" % (ok, len(jobs), zarr.__version__, np.__version__))
    sys.exit(0 if ok == len(jobs) else 1)


if __name__ == "__main__":
    main()
