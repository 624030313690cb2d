#!/usr/bin/env python3
"""Region writes (issue 9): Store::write_region of the 1 GiB W1 volume from memory, against
chunkwise convert of the same array from an .npy file, in one run, with the ratio.

usage: python3 bench/write.py [--data DIR] [--runs N] [--out bench/results/write.jsonl]

Both write a new store with the default chunks (128^3) and codec (blosc-zstd 1), synced; the
write_region time includes creating the store; the array is in memory before the clock starts
(examples/write_region.rs). The .npy is volume.raw of ../shared/peers/gen.py with an .npy
header (made here if missing). Target: write_region within 15% of convert.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from w1 import ensure_data, machine  # noqa: E402
import chart  # noqa: E402

EXAMPLE = os.path.join(ROOT, "target", "release", "examples", "write_region")


def npy_of(raw, npy):
    """volume.raw (512x1024x1024 little-endian uint16) with an .npy header."""
    if os.path.exists(npy) and os.path.getsize(npy) > os.path.getsize(raw):
        return
    d = "{'descr': '<u2', 'fortran_order': False, 'shape': (512, 1024, 1024), }"
    pad = 64 - (10 + len(d) + 1) % 64
    header = b"\x93NUMPY\x01\x00" + (len(d) + pad + 1).to_bytes(2, "little") + d.encode() + b" " * pad + b"\n"
    with open(npy, "wb") as f, open(raw, "rb") as r:
        f.write(header)
        while True:
            b = r.read(64 << 20)
            if not b:
                break
            f.write(b)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/tmp/peers-data/full")
    ap.add_argument("--work", default="/tmp/chunkwise-write")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "write.jsonl"))
    a = ap.parse_args()
    ensure_data(a.data)
    subprocess.run(["cargo", "build", "--release", "--examples", "-q"], cwd=ROOT, check=True)
    npy = os.path.join(a.data, "volume.npy")
    npy_of(os.path.join(a.data, "volume.raw"), npy)
    p = subprocess.run([EXAMPLE, npy, a.work, str(a.runs)], check=True, text=True,
                       capture_output=True)
    runs = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    w = statistics.median(r["write_region_s"] for r in runs)
    c = statistics.median(r["convert_s"] for r in runs)
    row = {"machine": machine(), "runs": runs, "write_region_median_s": w,
           "convert_median_s": c, "ratio": round(w / c, 3)}
    with open(a.out, "a") as f:
        f.write(json.dumps(row) + "\n")
    print("write_region %.2f s, convert %.2f s (medians of %d): write_region / convert = %.2f"
          % (w, c, len(runs), w / c))
    chart.after_append(a.out)


if __name__ == "__main__":
    main()
