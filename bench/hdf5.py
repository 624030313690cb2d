#!/usr/bin/env python3
"""Converting an HDF5 dataset (gzip + shuffle, the way h5py and BigDataViewer-style files store
volumes) to a store: chunkwise against h5py + zarr-python doing the same, in one run.

usage: python bench/hdf5.py [--data DIR] [--runs N] [--chunks Z,Y,X] [--level L]
    (a Python with numpy, h5py and zarr; chunkwise built with `--features hdf5`:
    `cargo build --release --features hdf5`, or CHUNKWISE_BIN=...)

The file is made once, untimed, from the W1 volume (DIR/volume.raw of ../shared/peers/gen.py,
512x1024x1024 uint16): DIR/vol_gzip.h5, dataset /data, chunks 64x128x128 by default, gzip
level 1 with shuffle. Each run, interleaved, in fresh processes, writes the same store (128^3
chunks, blosc-zstd level 1 with byte shuffle, chunkwise's default for uint16):

- `chunkwise convert vol_gzip.h5:/data -o OUT`;
- h5py + zarr-python: 128 planes at a time read with h5py into a `zarr.create_array` of the
  same chunks and codec, the straightforward way a user writes it.

Prints seconds and peak RSS per tool and the ratio; appends to bench/results/hdf5.jsonl. The
output of every chunkwise run is checked against volume.raw, untimed.
"""
import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from w1 import CW, machine, record, timed  # noqa: E402

RESULTS = os.path.join(HERE, "results", "hdf5.jsonl")
SHAPE = (512, 1024, 1024)

PEER = r'''
import sys
import h5py, zarr
from zarr.codecs import BloscCodec
src, out = sys.argv[1], sys.argv[2]
with h5py.File(src, "r") as f:
    d = f["data"]
    n = d.shape[0]
    z = zarr.create_array(out, shape=d.shape, chunks=(128, 128, 128), dtype=d.dtype,
                          compressors=[BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")],
                          fill_value=0)
    for k in range(0, n, 128):
        z[k:k + 128] = d[k:k + 128]
'''


def make(data, chunks, level):
    import h5py
    import numpy as np
    path = os.path.join(data, "vol_gzip_%s_l%d.h5" % ("x".join(map(str, chunks)), level))
    if os.path.exists(path):
        return path
    raw = os.path.join(data, "volume.raw")
    if not os.path.exists(raw):
        raise SystemExit("no %s: make it with ../shared/peers/gen.py %s" % (raw, data))
    print("writing %s with h5py ..." % path, flush=True)
    a = np.fromfile(raw, dtype="<u2").reshape(SHAPE)
    with h5py.File(path + ".tmp", "w") as f:
        f.create_dataset("data", data=a, chunks=chunks, compression="gzip",
                         compression_opts=level, shuffle=True)
    os.replace(path + ".tmp", path)
    return path


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/tmp/peers-data/full")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--chunks", default="64,128,128")
    ap.add_argument("--level", type=int, default=1)
    a = ap.parse_args()
    chunks = tuple(int(c) for c in a.chunks.split(","))
    h5 = make(a.data, chunks, a.level)
    out = os.path.join(a.data, "hdf5-bench-out.zarr")
    peer = os.path.join(a.data, "hdf5_peer.py")
    with open(peer, "w") as f:
        f.write(PEER)
    tools = {
        "chunkwise": [CW, "convert", h5 + ":/data", "-o", out, "-q"],
        "h5py + zarr-python": [sys.executable, peer, h5, out],
    }
    want = sha256(os.path.join(a.data, "volume.raw"))
    times = {k: [] for k in tools}
    rss = {}
    for _ in range(a.runs):
        for name, cmd in tools.items():  # interleaved
            shutil.rmtree(out, ignore_errors=True)
            wall, peak = timed(cmd)
            times[name].append(wall)
            rss[name] = max(rss.get(name, 0), peak)
            if name == "chunkwise":
                back = os.path.join(a.data, "hdf5-bench-back.raw")
                subprocess.run([CW, "export", out, "-o", back, "--raw", "-q"], check=True)
                got = sha256(back)
                os.remove(back)
                if got != want:
                    raise SystemExit("chunkwise's output differs from volume.raw")
    shutil.rmtree(out, ignore_errors=True)
    best = {k: min(v) for k, v in times.items()}
    record(RESULTS, {
        "bench": "hdf5_convert", "chunks": list(chunks), "gzip_level": a.level,
        "shuffle": True, "shape": list(SHAPE), "machine": machine(),
        "seconds": {k: round(v, 3) for k, v in best.items()},
        "median_seconds": {k: round(statistics.median(v), 3) for k, v in times.items()},
        "peak_rss_mib": {k: round(v, 1) for k, v in rss.items()},
        "ratio": round(best["h5py + zarr-python"] / best["chunkwise"], 2),
    })


if __name__ == "__main__":
    main()
