#!/usr/bin/env python3
"""Issue 15's max-projection preview, through chunkwise and dask + matplotlib in one run.

usage: python3 bench/preview.py [--data DIR] [--runs N]

On the W1 volume V (512x1024x1024 uint16) converted by chunkwise with its defaults (128^3
chunks, blosc-zstd 1; written once as DATA/w1_default.zarr):

- `chunkwise preview V.zarr -o mip.png` (the max along axis 0, auto contrast, 1024x1024);
- `chunkwise reduce V.zarr --axis 0 --op max -o mip.npy` (the same projection, no picture);
- dask: `da.from_zarr(V).max(axis=0).compute()`, the 0.1/99.9 percentiles, and matplotlib's
  `imsave` with vmin/vmax (2 threads).

Whole-process wall clock of fresh processes, peak RSS from /usr/bin/time. Results go to
bench/results/preview.jsonl and are printed.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from w1 import CW, PEERS_VENV, machine, record, timed  # noqa: E402

RESULTS = os.path.join(HERE, "results", "preview.jsonl")

DASK = r'''
import sys, dask, dask.array as da, numpy as np, matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
src, out = sys.argv[1:3]
dask.config.set(scheduler="threads", num_workers=2)
mip = da.from_zarr(src).max(axis=0).compute()
lo, hi = np.percentile(mip, [0.1, 99.9])
plt.imsave(out, mip, cmap="gray", vmin=lo, vmax=hi)
'''


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/tmp/peers-data/full")
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    store = os.path.join(a.data, "w1_default.zarr")
    if not os.path.exists(os.path.join(store, "zarr.json")):
        subprocess.run([CW, "convert", os.path.join(a.data, "volume.raw"), "-o", store, "-q"],
                       check=True)
    work = tempfile.mkdtemp(prefix="cw-preview-")
    script = os.path.join(work, "dask_mip.py")
    with open(script, "w") as f:
        f.write(DASK)
    py = os.path.join(PEERS_VENV, "bin", "python")
    # The peers' setup.sh does not install matplotlib (the dask peer's imsave).
    if subprocess.run([py, "-c", "import matplotlib"], capture_output=True).returncode != 0:
        print(f"installing matplotlib into {PEERS_VENV} ...", flush=True)
        subprocess.run([py, "-m", "pip", "install", "-q", "matplotlib==3.11.2"], check=True)
    rows = {"preview": [], "reduce": [], "dask": []}
    rss = {k: [] for k in rows}
    try:
        for _ in range(a.runs):
            for impl, cmd in (
                    ("preview", [CW, "preview", store, "-o", os.path.join(work, "mip.png"), "-q",
                                 "--overwrite"]),
                    ("reduce", [CW, "reduce", store, "--axis", "0", "--op", "max", "-o",
                                os.path.join(work, "mip.npy"), "-q", "--overwrite"]),
                    ("dask", [py, script, store, os.path.join(work, "dask.png")])):
                w, m = timed(cmd)
                rows[impl].append(w)
                rss[impl].append(m)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    row = {"work": "max-projection preview of V (w1_default.zarr) to a 1024x1024 PNG",
           **{k: [round(x, 2) for x in v] for k, v in rows.items()},
           **{k + "_rss_mib": round(max(v)) for k, v in rss.items()},
           "preview_over_reduce": round(med["preview"] / med["reduce"], 2),
           "ratio_dask_over_preview": round(med["dask"] / med["preview"], 2),
           "machine": machine()}
    record(RESULTS, row)


if __name__ == "__main__":
    main()
