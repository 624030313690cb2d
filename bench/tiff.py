#!/usr/bin/env python3
"""Issue 14 item 3: converting one multi-page TIFF (512 pages of 1024x1024 uint16, 1 GiB) to a
store, against tifffile + zarr-python doing the same, and against a directory of the same 512
pages as single-page TIFFs.

usage: .venv/bin/python bench/tiff.py [--data DIR] [--runs N] [--compression none|zlib]

The files are made once in DIR (default /tmp/tiff-bench), untimed: W1-like data (the peers'
generator's blobs are not needed: any 1 GiB stack decodes at the same speed). Each run, in
fresh processes, writes the same store (128^3 chunks, blosc-zstd level 1 with byte shuffle,
chunkwise's default for uint16):

- `chunkwise convert stack.tif -o OUT` (pages decoded in parallel, a decoder per worker);
- `chunkwise convert pages/ -o OUT` (512 single-page files);
- tifffile + zarr-python: `tifffile.TiffFile(...).pages[i].asarray()` for 128 pages at a time
  into a `zarr.create_array` with the same chunks and codec (`zarr.config` threads as its
  default), the straightforward way a user writes it.

Prints seconds and peak RSS per tool and the ratios; appends to bench/results/tiff.jsonl.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from w1 import CW, machine, record, timed  # noqa: E402

RESULTS = os.path.join(HERE, "results", "tiff.jsonl")
SHAPE = (512, 1024, 1024)

PEER = r'''
import sys, numpy as np, tifffile, zarr
from zarr.codecs import BloscCodec
src, out = sys.argv[1], sys.argv[2]
with tifffile.TiffFile(src) as t:
    n = len(t.pages)
    h, w = t.pages[0].shape
    z = zarr.create_array(out, shape=(n, h, w), chunks=(128, 128, 128), dtype=t.pages[0].dtype,
                          compressors=[BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")],
                          fill_value=0)
    for k in range(0, n, 128):
        z[k:k + 128] = np.stack([t.pages[i].asarray() for i in range(k, min(n, k + 128))])
'''


def make(data, compression):
    import tifffile
    os.makedirs(data, exist_ok=True)
    stack = os.path.join(data, "stack_%s.tif" % compression)
    pages = os.path.join(data, "pages_%s" % compression)
    if os.path.exists(stack) and os.path.isdir(pages):
        return stack, pages
    print("writing the 1 GiB test stack in %s ..." % data, flush=True)
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:SHAPE[1], 0:SHAPE[2]]
    base = (200 + 150 * np.sin(x / 37.0) * np.cos(y / 53.0)).astype(np.float32)
    kw = {} if compression == "none" else {"compression": "zlib", "compressionargs": {"level": 1}}
    os.makedirs(pages, exist_ok=True)
    with tifffile.TiffWriter(stack, bigtiff=True) as t:
        for i in range(SHAPE[0]):
            page = (base * (1 + i / 512) + rng.normal(0, 8, base.shape)).astype(np.uint16)
            t.write(page, photometric="minisblack", metadata=None, **kw)
            tifffile.imwrite(os.path.join(pages, "p%04d.tif" % i), page,
                             photometric="minisblack", metadata=None, **kw)
    return stack, pages


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/tmp/tiff-bench")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--compression", default="none", choices=["none", "zlib"])
    a = ap.parse_args()
    stack, pages = make(a.data, a.compression)
    out = os.path.join(a.data, "out.zarr")
    peer = os.path.join(a.data, "peer.py")
    with open(peer, "w") as f:
        f.write(PEER)
    tools = {
        "chunkwise multi-page": [CW, "convert", stack, "-o", out, "-q"],
        "chunkwise single-page dir": [CW, "convert", pages, "-o", out, "-q"],
        "tifffile + zarr-python": [sys.executable, peer, stack, out],
    }
    times = {k: [] for k in tools}
    rss = {}
    for _ in range(a.runs):
        for name, cmd in tools.items():  # interleaved
            shutil.rmtree(out, ignore_errors=True)
            subprocess.run(["sync"])
            wall, peak = timed(cmd)
            times[name].append(wall)
            rss[name] = max(rss.get(name, 0), peak)
    best = {k: min(v) for k, v in times.items()}
    row = {
        "bench": "tiff_convert", "compression": a.compression, "shape": list(SHAPE),
        "machine": machine(),
        "seconds": {k: round(v, 3) for k, v in best.items()},
        "median_seconds": {k: round(statistics.median(v), 3) for k, v in times.items()},
        "peak_rss_mib": {k: round(v, 1) for k, v in rss.items()},
        "ratio_vs_tifffile_zarr": round(best["tifffile + zarr-python"] / best["chunkwise multi-page"], 2),
        "multi_vs_dir": round(best["chunkwise multi-page"] / best["chunkwise single-page dir"], 3),
    }
    record(RESULTS, row)


if __name__ == "__main__":
    main()
