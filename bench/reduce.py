#!/usr/bin/env python3
"""W2 (stats) and W6 (where) through chunkwise and the peers, in one run, with the ratios.

usage: python3 bench/reduce.py [--data DIR] [--runs N] [--peers ...]

W2: `chunkwise stats` on the peers' own store (zstd 3) next to `chunkwise verify` on the same
store (every chunk decoded alone: the floor), and on a store in chunkwise's default codec; the
peers' dask, zarr-python and tensorstore chunk loops and numpy on the raw file in RAM. Checked
against volume.json's exact figures. W6: `chunkwise where --above 700` (and --above 250, for
peak RSS at a much larger N) on both stores; the peers' dask and zarr-python loop. Checked:
count and per-axis coordinate sums against volume.json. Times: chunkwise whole-process wall
clock; peers bench.py's timed section.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from w1 import PEERS, CW, ensure_data, machine, sh  # noqa: E402
import chart  # noqa: E402

PEER_IMPLS = {"W2": ["dask", "zarr-loop", "tensorstore-loop", "numpy-raw"], "W6": ["dask", "zarr-loop"]}


def timed(cmd):
    """Wall clock, peak RSS MiB and stdout of `cmd`, after a `sync` (as bench/w1.py's)."""
    os.sync()
    t = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "%M"] + cmd, text=True, capture_output=True)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit("failed: %s\n%s%s" % (" ".join(cmd), p.stdout, p.stderr))
    return wall, int(p.stderr.strip().splitlines()[-1]) / 1024, p.stdout


def settle(path):
    """Before a timed W6 run: no previous output to replace, and no writeback of the last
    run's output still under way (the same for chunkwise and the peers)."""
    if path and os.path.exists(path):
        os.remove(path)
    os.sync()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/tmp/peers-data/full")
    ap.add_argument("--work", default="/tmp/chunkwise-bench")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--peers", default="dask,zarr-loop,tensorstore-loop,numpy-raw")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "reduce.jsonl"))
    a = ap.parse_args()
    py = ensure_data(a.data)
    os.makedirs(a.work, exist_ok=True)
    if not os.path.isdir(os.path.join(a.data, "input.zarr")):
        subprocess.run([py, os.path.join(PEERS, "bench.py"), a.data, "--prepare"], check=True, cwd=PEERS)
    subprocess.run(["cargo", "build", "--release", "--bins", "-q"], cwd=ROOT, check=True)
    peers_in = os.path.join(a.data, "input.zarr")
    cw_in = os.path.join(a.work, "input-default.zarr")
    if not os.path.isdir(cw_in):
        sh([CW, "convert", os.path.join(a.data, "volume.raw"), "-o", cw_in, "-q"])
    ref = json.load(open(os.path.join(a.data, "volume.json")))
    rows = {}
    checks = {}
    coords = os.path.join(a.work, "w6.npy")
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for run in range(a.runs):
        print("run %d/%d" % (run + 1, a.runs), flush=True)
        for name, store in [("zstd3 store", peers_in), ("default store", cw_in)]:
            wall, rss, out = timed([CW, "stats", store, "--json", "-q"])
            rows.setdefault(("W2", "chunkwise stats, " + name), []).append({"seconds": wall, "rss": rss})
            if run == 0:
                s = json.loads(out)
                n = ref["shape"][0] * ref["shape"][1] * ref["shape"][2]
                st = ref["stats"]
                std = ((st["sumsq"] * n - st["sum"] ** 2) ** 0.5) / n
                ok = (s["sum"] == st["sum"] and s["min"] == st["min"] and s["max"] == st["max"]
                      and abs(s["std"] - std) <= 1e-9 * std and s["count"] == n)
                checks["W2 " + name] = "exact sum/min/max, std rel err %.1e" % (abs(s["std"] - std) / std) if ok else "MISMATCH %s" % s
            wall, rss, _ = timed([CW, "verify", store, "-q"])
            rows.setdefault(("W2", "decode only (verify), " + name), []).append({"seconds": wall, "rss": rss})
            for thr in (700, 250):
                settle(coords)
                wall, rss, out = timed([CW, "where", store, "-o", coords, "--above", str(thr), "--overwrite", "-q"])
                rows.setdefault(("W6", "chunkwise where >%d, %s" % (thr, name)), []).append({"seconds": wall, "rss": rss})
                if run == 0 and thr == 700:
                    p = sh([py, "-c", "import numpy as np, json; a=np.load(%r, mmap_mode='r'); "
                            "print(json.dumps([int(a.shape[0])] + [int(a[:, k].sum()) for k in range(3)]))" % coords])
                    got = json.loads(p.stdout)
                    want = [st["count_gt_thresh"]] + st["coord_sum_gt_thresh"]
                    checks["W6 " + name] = "count and coordinate sums exact" if got == want else "MISMATCH %s vs %s" % (got, want)
                if thr == 250:
                    rows[("W6", "chunkwise where >%d, %s" % (thr, name))][-1]["n"] = os.path.getsize(coords) // 24
        os.remove(coords)
        for w in ("W2", "W6"):
            for impl in [i for i in PEER_IMPLS[w] if i in a.peers.split(",")]:
                settle(None)  # (the peers write a fresh directory each run)
                p = sh([py, os.path.join(PEERS, "bench.py"), a.data, "--workload", w, "--impl", impl,
                        "--work", os.path.join(a.work, "peers"), "--tag", "chunkwise-bench"], cwd=PEERS)
                rec = json.loads(p.stdout.strip().splitlines()[-1])
                rows.setdefault((w, "peer " + impl), []).append({"seconds": rec["seconds"], "rss": rec["peak_rss_mib"]})

    print("\nW2/W6, %s, %d runs, %s" % (machine(), a.runs, stamp))
    print("| workload | config | median s | min s | peak RSS MiB | vs best peer |")
    print("|---|---|---|---|---|---|")
    for w in ("W2", "W6"):
        med = {k[1]: statistics.median(r["seconds"] for r in v) for k, v in rows.items() if k[0] == w}
        best = min((k for k in med if k.startswith("peer ")), key=med.get, default=None)
        for (ww, name), v in rows.items():
            if ww != w:
                continue
            vs = "%.2fx" % (med[best] / med[name]) if best and not name.startswith("peer") else ""
            rss = max(r["rss"] for r in v)
            extra = " (N = %d)" % v[0]["n"] if "n" in v[0] else ""
            print("| %s | %s%s | %.2f | %.2f | %.0f | %s |" % (w, name, extra, med[name], min(r["seconds"] for r in v), rss, vs))
        print("best peer for %s: %s" % (w, best))
    for k, v in checks.items():
        print("check %s: %s" % (k, v))
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "a") as f:
        f.write(json.dumps({"date": stamp, "machine": machine(), "runs": a.runs,
                            "rows": {"%s %s" % k: v for k, v in rows.items()}, "checks": checks}) + "\n")
    chart.after_append(a.out)


if __name__ == "__main__":
    main()
