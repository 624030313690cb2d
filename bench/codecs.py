#!/usr/bin/env python3
"""Issue 14 performance: W2 stats (min, max, sum, mean, std in one pass) on the W1 volume stored
by zarr-python as Zarr v2 with zlib, lz4 and bz2 (numcodecs), read by chunkwise, zarr-python
and tensorstore in the same run.

usage: .venv/bin/python bench/codecs.py [--data DIR] [--runs N] [--codecs zlib,lz4,bz2]

DIR holds the W1 data (`../shared/peers/gen.py DIR`: volume.raw); the stores (128^3 chunks,
zlib level 1, lz4 acceleration 1, bz2 level 1) are written once beside it, untimed. Each run,
interleaved, in fresh processes:

- `chunkwise stats STORE`;
- zarr-python: the peers' W2 loop (`w2_zarr_loop`: one 128-slice slab at a time, numpy
  reductions), zarr's default threading;
- tensorstore: the same loop through tensorstore's `zarr` (v2) driver (it has no lz4).

Every tool's min/max/sum is checked against the volume's own (volume.json). Prints seconds and
peak RSS and the ratio to the faster peer; appends to bench/results/codecs.jsonl.
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
from w1 import CW, machine, record, timed  # noqa: E402

RESULTS = os.path.join(HERE, "results", "codecs.jsonl")

PEER = r'''
import json, sys, numpy as np
tool, path = sys.argv[1], sys.argv[2]
if tool == "zarr":
    import zarr
    a = zarr.open_array(path, mode="r")
    read = lambda z0, z1: a[z0:z1]
    Z = a.shape[0]
else:
    import tensorstore as ts
    t = ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": path}}).result()
    read = lambda z0, z1: t[z0:z1].read().result()
    Z = t.shape[0]
acc = [65535, 0, 0, 0]
for z0 in range(0, Z, 128):
    v = read(z0, min(Z, z0 + 128))
    acc[0] = min(acc[0], int(v.min())); acc[1] = max(acc[1], int(v.max()))
    for k in range(v.shape[0]):
        f = v[k].astype(np.float64).ravel()
        acc[2] += int(f.sum()); acc[3] += int(np.dot(f, f))
print(json.dumps({"min": acc[0], "max": acc[1], "sum": acc[2]}))
'''


def make(data, codec):
    import numcodecs
    import zarr
    path = os.path.join(data, "w2_v2_%s.zarr" % codec)
    if os.path.exists(os.path.join(path, ".zarray")):
        return path
    meta = json.load(open(os.path.join(data, "volume.json")))
    shape = tuple(meta["shape"])
    comp = {"zlib": numcodecs.Zlib(level=1), "lz4": numcodecs.LZ4(acceleration=1),
            "bz2": numcodecs.BZ2(level=1)}[codec]
    print("writing %s with zarr-python ..." % path, flush=True)
    raw = np.memmap(os.path.join(data, "volume.raw"), dtype="<u2", mode="r", shape=shape)
    z = zarr.create_array(store=path + ".tmp", shape=shape, chunks=(128, 128, 128), dtype="uint16",
                          zarr_format=2, compressors=comp, fill_value=0)
    for z0 in range(0, shape[0], 128):
        z[z0:z0 + 128] = raw[z0:z0 + 128]
    os.rename(path + ".tmp", path)
    return path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/tmp/peers-data/full")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--codecs", default="zlib,lz4,bz2")
    a = ap.parse_args()
    meta = json.load(open(os.path.join(a.data, "volume.json")))
    want = (meta["stats"]["min"], meta["stats"]["max"], meta["stats"]["sum"])
    peer = os.path.join(a.data, "w2_peer.py")
    with open(peer, "w") as f:
        f.write(PEER)
    for codec in a.codecs.split(","):
        store = make(a.data, codec)
        tools = {"chunkwise": [CW, "stats", store, "--json"],
                 "zarr-python": [sys.executable, peer, "zarr", store]}
        if codec != "lz4":
            tools["tensorstore"] = [sys.executable, peer, "ts", store]
        best, rss = {}, {}
        for _ in range(a.runs):
            for name, cmd in tools.items():
                wall, peak = timed(cmd)
                best[name] = min(best.get(name, 1e9), wall)
                rss[name] = max(rss.get(name, 0), peak)
        # The answers, checked once outside the timing.
        for name, cmd in tools.items():
            out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            got = (out["min"], out["max"], int(out["sum"]))
            if got != tuple(want):
                raise SystemExit("%s on %s: %s, expected %s" % (name, codec, got, want))
        peers = {k: v for k, v in best.items() if k != "chunkwise"}
        fastest = min(peers, key=peers.get)
        record(RESULTS, {
            "bench": "w2_stats_by_codec", "codec": codec, "format": "zarr v2 (zarr-python)",
            "machine": machine(), "seconds": {k: round(v, 3) for k, v in best.items()},
            "peak_rss_mib": {k: round(v, 1) for k, v in rss.items()},
            "faster_peer": fastest, "ratio": round(peers[fastest] / best["chunkwise"], 2),
            "tensorstore": "reads no lz4" if codec == "lz4" else "read",
        })


if __name__ == "__main__":
    main()
