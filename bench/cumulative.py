#!/usr/bin/env python3
"""Issue 12's cumulative operations, through chunkwise and dask in one run, with the ratio.

usage: python3 bench/cumulative.py [--data DIR] [--runs N]

On the peers' W1 store (input.zarr: 512x1024x1024 uint16, 128^3 chunks, zstd 3):
`chunkwise cumsum input.zarr OUT --axis 0 --codec zstd --level 3` against dask's
`da.from_zarr(V).cumsum(axis=0)` stored with `to_zarr`-equivalent `da.store` into a zstd-3
store of the same chunks (uint64 result: numpy's default for a uint16 sum, 4 GiB). Whole-process
wall clock of fresh processes (dask's imports excluded), peak RSS from /usr/bin/time. Results go
to bench/results/cumulative.jsonl and are printed.
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from w1 import CW, PEERS_VENV, machine, record, timed  # noqa: E402

RESULTS = os.path.join(HERE, "results", "cumulative.jsonl")

DASK = r'''
import sys, time, numpy as np, dask, dask.array as da, zarr
from zarr.codecs import BytesCodec, ZstdCodec
src, out = sys.argv[1:3]
dask.config.set(scheduler="threads", num_workers=2)
t = time.perf_counter()
r = da.from_zarr(src).cumsum(axis=0)
z = zarr.create_array(out, shape=r.shape, chunks=(128, 128, 128), dtype=r.dtype,
                      serializer=BytesCodec(endian="little"),
                      compressors=[ZstdCodec(level=3, checksum=False)], fill_value=0,
                      overwrite=True)
da.store(r, z, lock=False)
print(time.perf_counter() - t)
'''


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/tmp/peers-data/full")
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    src = os.path.join(a.data, "input.zarr")
    work = tempfile.mkdtemp(prefix="cw-cum-")
    py = os.path.join(PEERS_VENV, "bin", "python")
    script = os.path.join(work, "dask_cumsum.py")
    with open(script, "w") as f:
        f.write(DASK)
    rows = {"cw": [], "dask": []}
    rss = {"cw": [], "dask": []}
    out = os.path.join(work, "out.zarr")
    try:
        for _ in range(a.runs):
            for impl, cmd in (("cw", [CW, "cumsum", src, out, "--axis", "0", "--codec", "zstd",
                                      "--level", "3", "-q", "--overwrite"]),
                              ("dask", [py, script, src, out])):
                w, m = timed(cmd)
                rows[impl].append(w)
                rss[impl].append(m)
                shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    row = {"work": "cumsum --axis 0 of input.zarr (512x1024x1024 uint16 -> uint64, zstd 3)",
           **{k: [round(x, 2) for x in v] for k, v in rows.items()},
           **{k + "_rss_mib": round(max(v)) for k, v in rss.items()},
           "ratio_dask_over_cw": round(med["dask"] / med["cw"], 2), "machine": machine()}
    record(RESULTS, row)


if __name__ == "__main__":
    main()
