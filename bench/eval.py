#!/usr/bin/env python3
"""Issue 12's `eval`, through chunkwise, dask.array and numexpr in one run, with the ratios.

usage: python3 bench/eval.py [--data DIR] [--runs N]

V is the peers' W1 volume (input.zarr: 512x1024x1024 uint16, 128^3 chunks, zstd 3; volume.raw),
W a second volume from gen.py's generator with seed 54321 (w.raw; w.zarr is written here once
in the same layout, untimed). Two expressions:

    E1  V*0.5 + W*0.5 > 700      (bool result)
    E2  sqrt(V**2 + W**2)        (float32: numpy's uint16 ** 2 wraps, sqrt of uint16 is float32)

- chunkwise: `chunkwise eval E -o OUT V=input.zarr W=w.zarr --codec zstd --level 3` (the
  peers' output codec), store to store;
- dask: `da.from_zarr` both, the expression, `to_zarr` with zstd 3 (threads scheduler, 2 workers);
- numexpr: `numexpr.evaluate(E)` over `np.memmap`s of the raw files (2 threads), the result in
  memory (numexpr writes no store; its inputs need no decoding: its best case).

Whole-process wall clock of fresh processes (Python imports excluded for the peers: their timed
section starts after them), peak RSS from /usr/bin/time. Results go to bench/results/eval.jsonl.
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

RESULTS = os.path.join(HERE, "results", "eval.jsonl")
EXPRS = {"E1": "V*0.5 + W*0.5 > 700", "E2": "sqrt(V**2 + W**2)"}

MAKE_W = r'''
import sys, numpy as np, zarr
from zarr.codecs import BytesCodec, ZstdCodec
raw, out = sys.argv[1:3]
v = np.memmap(raw, dtype="<u2", mode="r", shape=(512, 1024, 1024))
z = zarr.create_array(out, shape=v.shape, chunks=(128, 128, 128), dtype="uint16",
                      serializer=BytesCodec(endian="little"),
                      compressors=[ZstdCodec(level=3, checksum=False)], fill_value=0,
                      chunk_key_encoding={"name": "default", "separator": "/"})
for z0 in range(0, 512, 128):
    z[z0:z0 + 128] = v[z0:z0 + 128]
'''

DASK = r'''
import sys, time, numpy as np, dask, dask.array as da, zarr
from zarr.codecs import BytesCodec, ZstdCodec
v_src, w_src, expr, out = sys.argv[1:5]
dask.config.set(scheduler="threads", num_workers=2)
t = time.perf_counter()
V, W = da.from_zarr(v_src), da.from_zarr(w_src)
with np.errstate(all="ignore"):
    r = eval(expr, {"sqrt": da.sqrt}, {"V": V, "W": W})
z = zarr.create_array(out, shape=r.shape, chunks=(128, 128, 128), dtype=r.dtype,
                      serializer=BytesCodec(endian="little"),
                      compressors=[ZstdCodec(level=3, checksum=False)], fill_value=0,
                      overwrite=True)
da.store(r, z, lock=False)
print(time.perf_counter() - t)
'''

NUMEXPR = r'''
import sys, time, numpy as np, numexpr as ne
v_raw, w_raw, expr = sys.argv[1:4]
ne.set_num_threads(2)
t = time.perf_counter()
V = np.memmap(v_raw, dtype="<u2", mode="r", shape=(512, 1024, 1024))
W = np.memmap(w_raw, dtype="<u2", mode="r", shape=(512, 1024, 1024))
r = ne.evaluate(expr, local_dict={"V": V, "W": W})
print(time.perf_counter() - t, r.dtype, float(r[::64, ::64, ::64].astype(float).sum()))
'''


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/tmp/peers-data/full")
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    v_zarr = os.path.join(a.data, "input.zarr")
    w_zarr = os.path.join(a.data, "w.zarr")
    v_raw, w_raw = os.path.join(a.data, "volume.raw"), os.path.join(a.data, "w.raw")
    py = os.path.join(PEERS_VENV, "bin", "python")
    work = tempfile.mkdtemp(prefix="cw-eval-")
    scripts = {}
    for name, text in (("make_w", MAKE_W), ("dask", DASK), ("numexpr", NUMEXPR)):  # not dask.py: it would shadow dask
        scripts[name] = os.path.join(work, name + "_eval.py")
        with open(scripts[name], "w") as f:
            f.write(text)
    if not os.path.exists(w_zarr):
        subprocess.run([py, scripts["make_w"], w_raw, w_zarr], check=True)
    rows, rss = {}, {}
    try:
        for _ in range(a.runs):
            for key, expr in EXPRS.items():
                out = os.path.join(work, "out.zarr")
                runs = {
                    "cw": [CW, "eval", expr, "-o", out, f"V={v_zarr}", f"W={w_zarr}", "--codec",
                           "zstd", "--level", "3", "-q", "--overwrite"],
                    "dask": [py, scripts["dask"], v_zarr, w_zarr, expr, out],
                    "numexpr": [py, scripts["numexpr"], v_raw, w_raw, expr],
                }
                for impl, cmd in runs.items():
                    w, m = timed(cmd)
                    rows.setdefault(f"{key}_{impl}", []).append(w)
                    rss.setdefault(f"{key}_{impl}", []).append(m)
                    shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    row = {"work": "eval over V, W (512x1024x1024 uint16 each): " + "; ".join(
               f"{k}: {e}" for k, e in EXPRS.items()),
           **{k: [round(x, 2) for x in v] for k, v in rows.items()},
           **{k + "_rss_mib": round(max(v)) for k, v in rss.items()}}
    for key in EXPRS:
        row[f"{key}_ratio_dask_over_cw"] = round(med[f"{key}_dask"] / med[f"{key}_cw"], 2)
        row[f"{key}_ratio_numexpr_over_cw"] = round(med[f"{key}_numexpr"] / med[f"{key}_cw"], 2)
    row["machine"] = machine()
    record(RESULTS, row)


if __name__ == "__main__":
    main()
