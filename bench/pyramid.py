#!/usr/bin/env python3
"""Issue 13's 4-level mean pyramid of the W1 volume, through chunkwise and its peers in one run.

usage: python3 bench/pyramid.py [--data DIR] [--runs N] [--only cw,ngff-dask,...]

Input: the W1 volume V (512x1024x1024 uint16) converted by chunkwise with its defaults (128^3
chunks, blosc-zstd 1; written once as DATA/w1_default.zarr). Output: an OME-Zarr 0.5 image of
4 levels, factor 2 on every axis (512^3 ... 64x128x128), 128^3 chunks, mean downsampling:

- chunkwise: `chunkwise pyramid V.zarr -o OUT --factors 2,2,2 --levels 4 --chunks 128,128,128`;
- ngff-zarr (`to_multiscales` + `to_ngff_zarr`, version 0.5) with its fastest mean methods,
  `ITKWASM_BIN_SHRINK` and `DASK_BIN_SHRINK`, on dask's threaded scheduler (2 workers);
- ome-zarr-py's `write_image` with `local_mean` (scale factors 2, 4, 8 on z, y, x);
- zarrs_tools' `zarrs_ome` (the Rust reference), installed with
  `cargo install zarrs_tools --features ome` when missing; mean is its default without
  `--gaussian-sigma`; `--max-levels 3` counts the levels below level 0 (ZARRS_OME=path to use another).

Whole-process wall clock of fresh processes, median of --runs, each after a `sync`; peak RSS
from /usr/bin/time.
The Python peers run in the project's venv (.venv, Python 3.12: ngff-zarr and ome-zarr need
zarr 3.4). Results go to bench/results/pyramid.jsonl and are printed, with ratios peer /
chunkwise.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from w1 import CW, machine, record, timed  # noqa: E402

RESULTS = os.path.join(HERE, "results", "pyramid.jsonl")
VENV_PY = os.path.join(ROOT, ".venv", "bin", "python")

NGFF = r'''
import sys, dask, dask.array as da, ngff_zarr as nz
src, out, method = sys.argv[1:4]
dask.config.set(scheduler="threads", num_workers=2)
arr = da.from_zarr(src)
img = nz.to_ngff_image(arr, dims=["z", "y", "x"])
ms = nz.to_multiscales(img, scale_factors=[2, 4, 8], method=getattr(nz.Methods, method),
                       chunks=128)
nz.to_ngff_zarr(out, ms, version="0.5")
'''

OMEZARR = r'''
import sys, dask, dask.array as da, zarr
from ome_zarr.writer import write_image
from ome_zarr.scale import Methods
src, out = sys.argv[1:3]
dask.config.set(scheduler="threads", num_workers=2)
arr = da.from_zarr(src)
group = zarr.open_group(out, mode="w")
write_image(arr, group, axes="zyx", method=Methods.LOCAL_MEAN,
            scale_factors=[{"z": f, "y": f, "x": f} for f in (2, 4, 8)],
            storage_options=dict(chunks=(128, 128, 128)))
'''


def zarrs_ome():
    exe = os.environ.get("ZARRS_OME") or shutil.which("zarrs_ome")
    cargo_bin = os.path.expanduser("~/.cargo/bin/zarrs_ome")
    if not exe and os.path.exists(cargo_bin):
        exe = cargo_bin
    if not exe:
        print("installing zarrs_tools (cargo install zarrs_tools --features ome) ...", flush=True)
        subprocess.run(["cargo", "install", "--locked", "zarrs_tools", "--features", "ome"],
                       check=True)
        exe = cargo_bin
    return exe


def levels_of(path):
    import json
    meta = json.load(open(os.path.join(path, "zarr.json")))
    ms = meta["attributes"]["ome"]["multiscales"][0]
    shapes = []
    for d in ms["datasets"]:
        a = json.load(open(os.path.join(path, d["path"], "zarr.json")))
        shapes.append(tuple(a["shape"]))
    return shapes


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/tmp/peers-data/full")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", default="")
    a = ap.parse_args()
    store = os.path.join(a.data, "w1_default.zarr")
    if not os.path.exists(os.path.join(store, "zarr.json")):
        subprocess.run([CW, "convert", os.path.join(a.data, "volume.raw"), "-o", store, "-q"],
                       check=True)
    work = tempfile.mkdtemp(prefix="cw-pyramid-", dir=a.data)
    scripts = {}
    for name, text in (("ngff", NGFF), ("omezarr", OMEZARR)):
        scripts[name] = os.path.join(work, name + ".py")
        with open(scripts[name], "w") as f:
            f.write(text)
    out = os.path.join(work, "out.ome.zarr")
    impls = {
        "chunkwise": [CW, "pyramid", store, "-o", out, "--factors", "2,2,2", "--levels", "4",
                      "--chunks", "128,128,128", "-q", "--overwrite"],
        "ngff-zarr ITKWASM_BIN_SHRINK": [VENV_PY, scripts["ngff"], store, out,
                                          "ITKWASM_BIN_SHRINK"],
        "ngff-zarr DASK_BIN_SHRINK": [VENV_PY, scripts["ngff"], store, out, "DASK_BIN_SHRINK"],
        "ome-zarr-py local_mean": [VENV_PY, scripts["omezarr"], store, out],
        "zarrs_ome mean": None,
    }
    only = [s for s in a.only.split(",") if s]
    if only:
        impls = {k: v for k, v in impls.items() if any(o in k for o in only)}
    if "zarrs_ome mean" in impls:
        exe = zarrs_ome()
        impls["zarrs_ome mean"] = [exe, "--max-levels", "3",
                                   "--chunk-shape", "128,128,128", store, out, "2,2,2"]
    rows = {k: [] for k in impls}
    rss = {k: [] for k in impls}
    shapes = {}
    try:
        for _ in range(a.runs):
            for impl, cmd in impls.items():
                shutil.rmtree(out, ignore_errors=True)
                # What earlier runs left dirty is written back first: chunkwise syncs its
                # output's filesystem at the end, and would wait for the peers' gigabytes.
                os.sync()
                w, m = timed(cmd)
                rows[impl].append(w)
                rss[impl].append(m)
                shapes[impl] = levels_of(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    row = {"work": "4-level mean pyramid (factor 2, 128^3 chunks) of V (w1_default.zarr)",
           "seconds": {k: [round(x, 2) for x in v] for k, v in rows.items()},
           "peak_rss_mib": {k: round(max(v)) for k, v in rss.items()},
           "levels": {k: [list(s) for s in v] for k, v in shapes.items()},
           "machine": machine()}
    if "chunkwise" in med:
        row["ratio_over_chunkwise"] = {k: round(v / med["chunkwise"], 2)
                                       for k, v in med.items() if k != "chunkwise"}
    record(RESULTS, row)


if __name__ == "__main__":
    main()
