#!/usr/bin/env python3
"""Issue 14 item 1: is `--codec pcodec` a better float default than blosc-lz4 (FORMAT §5)?

usage: .venv/bin/python bench/pcodec.py [--data DIR] [--work DIR] [--runs N]

Two float32 volumes, each written with blosc-lz4 (the float default), blosc-zstd and pcodec,
interleaved, in fresh processes (whole-process wall clock and peak RSS, /usr/bin/time):

- W3's output: `chunkwise gaussian W1 --sigma 2` (the float32 Gaussian of the 1 GiB W1 volume,
  2 GiB) with `--codec C`: the whole job's seconds and its stored bytes;
- a smooth float field (a climate-like grid: 256x1024x1024 float32, 1 GiB; a trend of sines
  plus correlated noise, made here with numpy, seed 0): `chunkwise convert field.raw --codec C`.

Then `chunkwise stats` of each output (every chunk decoded) for the decode side. Each output's
values are checked equal across codecs (stats' sum and min/max, and `verify`). pcodec is the better
default only if it is both smaller and not slower on both volumes. Prints a table; appends to
bench/results/pcodec.jsonl.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from w1 import CW, dir_bytes, machine, record, timed  # noqa: E402

RESULTS = os.path.join(HERE, "results", "pcodec.jsonl")
CODECS = ["blosc-lz4", "blosc-zstd", "pcodec"]


def field(path, shape=(256, 1024, 1024)):
    """A smooth float32 field with correlated noise, written slab by slab."""
    if os.path.exists(path):
        return shape
    rng = np.random.default_rng(0)
    z, y, x = shape
    yy, xx = np.meshgrid(np.arange(y, dtype=np.float32), np.arange(x, dtype=np.float32),
                         indexing="ij")
    base = 15 + 10 * np.sin(yy / 180) * np.cos(xx / 260) + 0.01 * yy
    with open(path + ".part", "wb") as f:
        walk = np.zeros((y, x), np.float32)
        for k in range(z):
            # A random walk along z, smoothed along x: neighbouring values are close.
            step = rng.standard_normal((y, x), dtype=np.float32) * 0.05
            walk = 0.9 * walk + np.cumsum(step, axis=1) / np.sqrt(np.arange(1, x + 1))
            plane = (base + 2 * np.sin(k / 30) + walk).astype(np.float32)
            f.write(plane.tobytes())
    os.rename(path + ".part", path)
    with open(path[:-4] + ".json", "w") as f:
        json.dump({"shape": list(shape), "dtype": "float32", "order": "C"}, f)
    return shape


def stats(store):
    p = subprocess.run([CW, "stats", store, "--json"], text=True, capture_output=True, check=True)
    return json.loads(p.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/tmp/peers-data/full")
    ap.add_argument("--work", default="/tmp/chunkwise-bench/pcodec")
    ap.add_argument("--runs", type=int, default=2)
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    raw = os.path.join(a.data, "volume.raw")
    if not os.path.exists(raw):
        raise SystemExit(f"{raw} missing: make it with ../shared/peers/gen.py {a.data} --no-npy")
    w1 = os.path.join(a.work, "w1.zarr")
    if not os.path.exists(w1):
        subprocess.run([CW, "convert", raw, "-o", w1, "-q"], check=True)
    fraw = os.path.join(a.work, "field.raw")
    field(fraw)
    work = {
        "W3 gaussian": lambda c, out: [CW, "gaussian", w1, out, "--sigma", "2", "--codec", c,
                                       "-q"],
        "float field": lambda c, out: [CW, "convert", fraw, "-o", out, "--codec", c, "-q"],
    }
    rows = {}
    for run in range(a.runs):
        for name, cmd in work.items():
            for c in CODECS:
                out = os.path.join(a.work, f"{name.split()[0]}-{c}.zarr")
                # Removed first: a finished job's rerun would say "nothing to do".
                shutil.rmtree(out, ignore_errors=True)
                secs, rss = timed(cmd(c, out))
                dsecs, drss = timed([CW, "stats", out, "-q"])
                r = rows.setdefault((name, c), {"seconds": [], "decode": [], "rss": 0})
                r["seconds"].append(secs)
                r["decode"].append(dsecs)
                r["rss"] = max(r["rss"], rss, drss)
                r["bytes"] = dir_bytes(out)
    print(f"{'volume':<12} {'codec':<11} {'write s':>8} {'stats s':>8} {'stored MB':>10} "
          f"{'ratio':>6} {'RSS MiB':>8}")
    for name in work:
        ref = None
        for c in CODECS:
            out = os.path.join(a.work, f"{name.split()[0]}-{c}.zarr")
            s = stats(out)
            key = (s["min"], s["max"], round(s["sum"], 3 if name == "float field" else 0))
            ref = ref or key
            assert key == ref, f"{name} {c}: stats {key} differ from {CODECS[0]}'s {ref}"
            subprocess.run([CW, "verify", out, "-q"], check=True)
            r = rows[(name, c)]
            raw_bytes = s["count"] * 4
            row = {"volume": name, "codec": c, "seconds": round(min(r["seconds"]), 3),
                   "decode_seconds": round(min(r["decode"]), 3),
                   "store_bytes": r["bytes"], "ratio": round(raw_bytes / r["bytes"], 3),
                   "peak_rss_mib": round(r["rss"], 1), "machine": machine()}
            record(RESULTS, row)
            print(f"{name:<12} {c:<11} {row['seconds']:>8.2f} {row['decode_seconds']:>8.2f} "
                  f"{r['bytes'] / 1e6:>10.1f} {row['ratio']:>6.2f} {row['peak_rss_mib']:>8.0f}")


if __name__ == "__main__":
    main()
