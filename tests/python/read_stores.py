#!/usr/bin/env python3
"""Reads stores chunkwise wrote with zarr-python and tensorstore and compares each with the
array numpy wrote (the oracle). usage: read_stores.py MANIFEST, one "STORE<TAB>EXPECTED.npy"
per line. Prints one line per store and "K of N stores match"; exits 1 on any mismatch."""
import sys

import numpy as np
import tensorstore as ts
import zarr


def check(store, expected):
    want = np.load(expected)
    z = zarr.open_array(store, mode="r")
    got = z[...]
    problems = []
    if got.dtype != want.dtype or got.shape != want.shape:
        problems.append("zarr-python: %s %s, expected %s %s" % (got.dtype, got.shape, want.dtype, want.shape))
    elif not np.array_equal(got, want, equal_nan=want.dtype.kind == "f"):
        problems.append("zarr-python: %d values differ" % int(np.count_nonzero(got != want)))
    t = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": store}, "open": True}).result()
    got = t.read().result()
    if got.dtype != want.dtype or got.shape != want.shape:
        problems.append("tensorstore: %s %s" % (got.dtype, got.shape))
    elif not np.array_equal(got, want, equal_nan=want.dtype.kind == "f"):
        problems.append("tensorstore: %d values differ" % int(np.count_nonzero(got != want)))
    return problems


def main():
    lines = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
    ok = 0
    for store, expected in lines:
        try:
            problems = check(store, expected)
        except Exception as e:  # a reader refusing the store is a failure, reported as such
            problems = ["%s: %s" % (type(e).__name__, e)]
        print("%s %s%s" % ("ok  " if not problems else "FAIL", store, "" if not problems else ": " + "; ".join(problems)))
        ok += not problems
    print("%d of %d stores match (zarr %s, tensorstore, numpy %s)" % (ok, len(lines), zarr.__version__, np.__version__))
    sys.exit(0 if ok == len(lines) else 1)


if __name__ == "__main__":
    main()
