#!/usr/bin/env python3
"""Issue 12's rechunk in bounded memory, through chunkwise and rechunker in one run, with the ratio.

usage: python3 bench/rechunk.py [--data DIR] [--runs N] [--memory MIB]

The W1 volume V (512x1024x1024 uint16, volume.raw) as a Zarr v2 array of (1, 1024, 1024)
slabs (zstd 3; rechunker 0.5 reads and writes zarr-python 2 arrays, and chunkwise reads v2),
rechunked to (512, 32, 32) columns and back, under one budget (default 512 MiB):

- chunkwise: `chunkwise convert SLABS -o OUT --chunks 512,32,32 --codec zstd --level 3
  --memory 512MiB` (FORMAT §8.1: two passes through an intermediate array when the budget
  cannot hold a source-target overlap);
- rechunker 0.5 (pip `rechunker`, in its own venv with zarr 2: RK_VENV, default
  /tmp/rk-venv), dask's threaded executor on 2 workers: `rechunk(source, (512, 32, 32),
  max_mem=budget/2, target_store, temp_store)` (max_mem is per task; two tasks run at once,
  so the process's budget is the same), target zstd 3, intermediate blosc-lz4 1 (what
  chunkwise's intermediate uses).

The reverse direction reads rechunker's (512, 32, 32) output with both. Whole-process wall
clock of fresh processes, peak RSS from /usr/bin/time; each output is checked against V.
Results go to bench/results/rechunk.jsonl and are printed.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from w1 import CW, PEERS_VENV, machine, record, timed  # noqa: E402

RESULTS = os.path.join(HERE, "results", "rechunk.jsonl")
RK_VENV = os.environ.get("RK_VENV", "/tmp/rk-venv")

PREPARE = r'''
import sys, numpy as np, zarr, numcodecs
raw, out = sys.argv[1:3]
v = np.memmap(raw, dtype="<u2", mode="r", shape=(512, 1024, 1024))
z = zarr.open_array(out, mode="w", shape=v.shape, chunks=(1, 1024, 1024), dtype="<u2",
                    compressor=numcodecs.Zstd(level=3), fill_value=0)
for i in range(0, 512, 32):
    z[i:i + 32] = v[i:i + 32]
'''

RECHUNK = r'''
import sys, time, dask, zarr, numcodecs
from rechunker import rechunk
src, out, tmp, chunks, mem = sys.argv[1:6]
chunks = tuple(int(c) for c in chunks.split(","))
dask.config.set(scheduler="threads", num_workers=2)
t = time.perf_counter()
plan = rechunk(zarr.open_array(src, mode="r"), chunks, int(mem), out, temp_store=tmp,
               target_options={"compressor": numcodecs.Zstd(level=3)},
               temp_options={"compressor": numcodecs.Blosc("lz4", 1, numcodecs.Blosc.SHUFFLE)})
plan.execute()
print(time.perf_counter() - t)
'''

CHECK = r'''
import sys, numpy as np, zarr
raw, store = sys.argv[1:3]
v = np.memmap(raw, dtype="<u2", mode="r", shape=(512, 1024, 1024))
z = zarr.open_array(store, mode="r")
rng = np.random.default_rng(0)
for _ in range(8):
    a, b, c = (int(rng.integers(0, n - 64)) for n in v.shape)
    if not np.array_equal(z[a:a + 64, b:b + 64, c:c + 64], v[a:a + 64, b:b + 64, c:c + 64]):
        sys.exit("%s differs from V at %d,%d,%d" % (store, a, b, c))
'''


def timed_said(cmd):
    """timed(), with the command's stdout."""
    log = tempfile.mktemp(prefix="cw-rss-")
    t = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", log] + cmd, text=True,
                       capture_output=True)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit("failed: %s\n%s%s" % (" ".join(cmd), p.stdout, p.stderr))
    with open(log) as f:
        rss = int(f.read().split()[-1]) / 1024
    os.unlink(log)
    return wall, rss, p.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/tmp/peers-data/full")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--memory", type=int, default=512, help="MiB")
    a = ap.parse_args()
    raw = os.path.join(a.data, "volume.raw")
    py = os.path.join(RK_VENV, "bin", "python")
    if not os.path.exists(py):
        sys.exit("no rechunker venv at %s: python3 -m venv %s && %s/bin/pip install rechunker "
                 "'dask[array]' 'zarr<3'" % (RK_VENV, RK_VENV, RK_VENV))
    work = tempfile.mkdtemp(prefix="cw-rechunk-", dir=os.environ.get("BENCH_TMP"))
    scripts = {}
    for name, text in (("prepare", PREPARE), ("rechunk", RECHUNK), ("check", CHECK)):
        scripts[name] = os.path.join(work, name + ".py")
        with open(scripts[name], "w") as f:
            f.write(text)
    slabs = os.path.join(a.data, "slabs_v2.zarr")
    if not os.path.exists(os.path.join(slabs, ".zarray")):
        print("writing %s (V in (1, 1024, 1024) slabs, zarr v2)..." % slabs, flush=True)
        subprocess.run([py, scripts["prepare"], raw, slabs], check=True)
    budget = a.memory << 20
    cols_rk = os.path.join(work, "cols_rk.zarr")
    try:
        for direction, src, chunks in (("slabs->columns", slabs, "512,32,32"),
                                       ("columns->slabs", cols_rk, "1,1024,1024")):
            rows = {"cw": [], "rechunker": []}
            rss = {"cw": [], "rechunker": []}
            for run in range(a.runs):
                out_cw = os.path.join(work, "out_cw.zarr")
                out_rk = cols_rk if direction == "slabs->columns" else os.path.join(work, "out_rk.zarr")
                tmp = os.path.join(work, "tmp_rk.zarr")
                for p in (out_cw, out_rk, tmp):
                    shutil.rmtree(p, ignore_errors=True)
                w, m = timed([py, scripts["rechunk"], src, out_rk, tmp, chunks, str(budget // 2)])
                rows["rechunker"].append(w)
                rss["rechunker"].append(m)
                cmd = [CW, "convert", src, "-o", out_cw, "--chunks", chunks, "--codec", "zstd",
                       "--level", "3", "--memory", "%dMiB" % a.memory, "--overwrite"]
                w, m, said = timed_said(cmd)
                rows["cw"].append(w)
                rss["cw"].append(m)
                if run == 0:
                    for store in (out_cw, out_rk):
                        subprocess.run([os.path.join(PEERS_VENV, "bin", "python"),
                                        scripts["check"], raw, store], check=True)
                shutil.rmtree(tmp, ignore_errors=True)
            med = {k: statistics.median(v) for k, v in rows.items()}
            row = {"work": "rechunk V %s (%s), --memory %d MiB" % (direction, chunks, a.memory),
                   **{k: [round(x, 2) for x in v] for k, v in rows.items()},
                   **{k + "_rss_mib": round(max(v)) for k, v in rss.items()},
                   "ratio_rechunker_over_cw": round(med["rechunker"] / med["cw"], 2),
                   "cw_said": said.strip().splitlines()[-1].strip() if said.strip() else "",
                   "machine": machine()}
            record(RESULTS, row)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
