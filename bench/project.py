#!/usr/bin/env python3
"""Issue 12's `reduce` along an axis, through chunkwise and dask in one run, with the ratio.

usage: python3 bench/project.py [--data DIR] [--runs N]

On the peers' W1 store (input.zarr: 512x1024x1024 uint16, 128^3 chunks, zstd 3):
`chunkwise reduce input.zarr --axis 0 --op max -o mip.npy` against dask's
`da.from_zarr(V).max(axis=0).compute()`, and `--op mean,std` against
`da.compute(V.mean(0), V.std(0))`; both whole-process wall clock of a fresh process (dask's
imports excluded: the timed section starts after them), peak RSS from /usr/bin/time. Results
go to bench/results/project.jsonl and are printed.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from w1 import CW, PEERS, PEERS_VENV, machine, record, timed  # noqa: E402

RESULTS = os.path.join(HERE, "results", "project.jsonl")

DASK = r'''
import sys, time, numpy as np, dask, dask.array as da
src, what = sys.argv[1:3]
dask.config.set(scheduler="threads", num_workers=2)
t = time.perf_counter()
v = da.from_zarr(src)
if what == "max":
    r = v.max(axis=0).compute()
else:
    m, s = da.compute(v.mean(axis=0), v.std(axis=0))
print(time.perf_counter() - t)
'''


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/tmp/peers-data/full")
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    src = os.path.join(a.data, "input.zarr")
    py = os.path.join(PEERS_VENV, "bin", "python")
    if not os.path.isdir(src):  # the peers' W1 store (zstd 3), written once
        subprocess.run([py, os.path.join(PEERS, "bench.py"), a.data, "--prepare"], check=True,
                       cwd=PEERS)
    work = tempfile.mkdtemp(prefix="cw-project-")
    script = os.path.join(work, "dask_reduce.py")
    with open(script, "w") as f:
        f.write(DASK)
    rows = {k: [] for k in ("cw_max", "dask_max", "cw_mean_std", "dask_mean_std")}
    rss = {k: [] for k in rows}
    for _ in range(a.runs):
        for op, key in (("max", "max"), ("mean,std", "mean_std")):
            out = os.path.join(work, "out")
            w, m = timed([CW, "reduce", src, "--axis", "0", "--op", op, "-o",
                          out + (".npy" if op == "max" else ""), "-q", "--overwrite"])
            rows["cw_" + key].append(w)
            rss["cw_" + key].append(m)
            w, m = timed([py, script, src, "max" if op == "max" else "mean_std"])
            rows["dask_" + key].append(w)
            rss["dask_" + key].append(m)
    med = {k: statistics.median(v) for k, v in rows.items()}
    row = {"work": "reduce --axis 0 of input.zarr (512x1024x1024 uint16)",
           **{k: [round(x, 2) for x in v] for k, v in rows.items()},
           **{k + "_rss_mib": round(max(v)) for k, v in rss.items()},
           "ratio_max_dask_over_cw": round(med["dask_max"] / med["cw_max"], 2),
           "ratio_mean_std_dask_over_cw": round(med["dask_mean_std"] / med["cw_mean_std"], 2),
           "machine": machine()}
    record(RESULTS, row)


if __name__ == "__main__":
    main()
