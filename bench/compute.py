#!/usr/bin/env python3
"""W3 (gaussian), W4 (lut) and W7 (neighbourhood LUT) through chunkwise and the peers, in one
run, with the ratios.

usage: python3 bench/compute.py [--data DIR] [--runs N] [--workloads W3,W4,W7]
                                [--peers dask,scipy-whole,zarr-loop] [--big]

Per workload, interleaved N times:
- chunkwise on the peers' own input store (zstd 3) writing zstd 3, and the compute floor on the
  same store (examples/exec_floor.rs: every chunk read, decoded, filtered on a block of the real
  size and encoded, serially per chunk on all cores, no window and no writing): the executor's
  overhead;
- chunkwise with its defaults (input and output in the default codec);
- the peers of ../shared/peers/bench.py.
The first run of each chunkwise default output is compared with dask's output (kept for the
purpose): W3 max |difference|, W4/W7 mismatching voxels. --big adds W3 on the 4 GiB volume (the
1 GiB one four times over) for peak RSS. Data and peer stores are made if missing
(gen.py, bench.py --prepare). Times: chunkwise whole-process wall clock; peers bench.py's timed
section. Peak RSS: /usr/bin/time for chunkwise, ru_maxrss for the peers.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from w1 import PEERS, CW, dir_bytes, ensure_data, machine, sh, timed  # noqa: E402
import chart  # noqa: E402

FLOOR = os.path.join(ROOT, "target", "release", "examples", "exec_floor")
PEER_IMPLS = {"W3": ["dask", "scipy-whole"], "W4": ["dask", "zarr-loop"], "W7": ["dask", "scipy-whole"]}


def kernel_args(w, work):
    return {
        "W3": ["gaussian", "--sigma", "2"],
        "W4": ["lut", "--table", os.path.join(work, "lut_u16_u8.npy")],
        "W7": ["neighbourhood-lut", "--table", os.path.join(work, "lut27.npy"), "--above", "700"],
    }[w]


def floor_args(w, work):
    return {
        "W3": ["gaussian"],
        "W4": ["lut", "--table", os.path.join(work, "lut_u16_u8.npy")],
        "W7": ["nlut", "--table", os.path.join(work, "lut27.npy")],
    }[w]


def cw_job(w, work, inp, out, extra=()):
    shutil.rmtree(out, ignore_errors=True)
    args = kernel_args(w, work)
    cmd = [CW, args[0], inp, out] + args[1:] + list(extra)
    t = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "%M"] + cmd, text=True, capture_output=True)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit("failed: %s\n%s%s" % (" ".join(cmd), p.stdout, p.stderr))
    m = re.search(r"(\d+) input chunks decoded for (\d+) needed", p.stdout)
    return {"seconds": round(wall, 3), "peak_rss_mib": round(int(p.stderr.strip().splitlines()[-1]) / 1024, 1),
            "store_bytes": dir_bytes(out), "decodes": int(m.group(1)), "needed": int(m.group(2))}


COMPARE = r'''
import sys, numpy as np, zarr
w, a, b = sys.argv[1:4]
x = zarr.open_array(a, mode="r"); y = zarr.open_array(b, mode="r")
assert x.shape == y.shape, (x.shape, y.shape)
worst = 0.0; bad = 0
for z0 in range(0, x.shape[0], 128):
    p, q = x[z0:z0 + 128], y[z0:z0 + 128]
    if w == "W3":
        worst = max(worst, float(np.abs(p.astype(np.float64) - q.astype(np.float64)).max()))
    else:
        bad += int(np.count_nonzero(p != q))
print("max |diff| %.3g" % worst if w == "W3" else "mismatches %d" % bad)
'''


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/tmp/peers-data/full")
    ap.add_argument("--work", default="/tmp/chunkwise-bench")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--workloads", default="W3,W4,W7")
    ap.add_argument("--peers", default="dask,scipy-whole,zarr-loop")
    ap.add_argument("--big", action="store_true")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "compute.jsonl"))
    a = ap.parse_args()
    py = ensure_data(a.data)
    os.makedirs(a.work, exist_ok=True)
    if not os.path.isdir(os.path.join(a.data, "input.zarr")):
        subprocess.run([py, os.path.join(PEERS, "bench.py"), a.data, "--prepare"], check=True, cwd=PEERS)
    subprocess.run(["cargo", "build", "--release", "--bins", "--examples", "-q"], cwd=ROOT, check=True)
    # Tables as .npy, and the input in chunkwise's default codec (untimed).
    lut = os.path.join(a.work, "lut_u16_u8.npy")
    lut27 = os.path.join(a.work, "lut27.npy")
    if not (os.path.exists(lut) and os.path.exists(lut27)):
        subprocess.run([py, "-c", "import numpy as np, common as C; "
                        "np.save(%r, np.fromfile(%r, dtype=np.uint8)); np.save(%r, C.lut27())"
                        % (lut, os.path.join(a.data, "lut_u16_u8.raw"), lut27)], check=True, cwd=PEERS)
    peers_in = os.path.join(a.data, "input.zarr")
    cw_in = os.path.join(a.work, "input-default.zarr")
    if not os.path.isdir(cw_in):
        sh([CW, "convert", os.path.join(a.data, "volume.raw"), "-o", cw_in, "-q"])
    big_in = os.path.join(a.work, "input4-default.zarr")
    if a.big and not os.path.isdir(big_in):
        big_raw = os.path.join(a.work, "big", "volume4.raw")
        if not os.path.exists(big_raw):
            raise SystemExit("run bench/w1.py --big first (it makes %s)" % big_raw)
        sh([CW, "convert", big_raw, "-o", big_in, "-q"])

    workloads = [w for w in a.workloads.split(",") if w]
    rows = {}
    checks = {}
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out = os.path.join(a.work, "job.zarr")
    for run in range(a.runs):
        print("run %d/%d" % (run + 1, a.runs), flush=True)
        for w in workloads:
            rows.setdefault((w, "chunkwise zstd3 in/out"), []).append(
                cw_job(w, a.work, peers_in, out, ["--codec", "zstd", "--level", "3"]))
            p = sh([FLOOR, peers_in] + floor_args(w, a.work) + ["--codec", "zstd", "--level", "3"])
            rows.setdefault((w, "floor zstd3"), []).append({"seconds": json.loads(p.stdout)["seconds"]})
            rows.setdefault((w, "chunkwise defaults"), []).append(cw_job(w, a.work, cw_in, out))
            keep_dir = os.path.join(a.work, "peers")
            for impl in [i for i in PEER_IMPLS[w] if i in a.peers.split(",")]:
                keep = run == 0 and impl == "dask"
                cmd = [py, os.path.join(PEERS, "bench.py"), a.data, "--workload", w, "--impl", impl,
                       "--work", keep_dir, "--tag", "chunkwise-bench"] + (["--keep"] if keep else [])
                p = sh(cmd, cwd=PEERS)
                rec = json.loads(p.stdout.strip().splitlines()[-1])
                rows.setdefault((w, "peer " + impl), []).append({
                    "seconds": rec["seconds"], "peak_rss_mib": rec["peak_rss_mib"],
                    "store_bytes": rec.get("out_store_bytes"), "check": rec.get("check")})
                if keep:
                    theirs = os.path.join(keep_dir, "%s-dask" % w, "out.zarr")
                    if not os.path.isdir(theirs):
                        cands = [os.path.join(r, d) for r, ds, _ in os.walk(os.path.join(keep_dir, "%s-dask" % w))
                                 for d in ds if d.endswith(".zarr")]
                        theirs = cands[0] if cands else theirs
                    p = sh([py, "-c", COMPARE, w, out, theirs])
                    checks[w] = "vs dask: " + p.stdout.strip()
                    shutil.rmtree(os.path.join(keep_dir, "%s-dask" % w), ignore_errors=True)
            if a.big and w == "W3":
                rows.setdefault((w, "chunkwise defaults, 4 GiB"), []).append(cw_job(w, a.work, big_in, out))
        shutil.rmtree(out, ignore_errors=True)

    print("\nW3/W4/W7, %s, %d runs, %s" % (machine(), a.runs, stamp))
    print("| workload | config | median s | min s | peak RSS MiB | stored bytes | decodes / chunks | vs dask | over floor |")
    print("|---|---|---|---|---|---|---|---|---|")
    for w in workloads:
        med = {k[1]: statistics.median(r["seconds"] for r in v) for k, v in rows.items() if k[0] == w}
        for (ww, name), v in rows.items():
            if ww != w:
                continue
            rss = max((r.get("peak_rss_mib") or 0) for r in v)
            sb = v[0].get("store_bytes")
            dec = "%d / %d" % (v[0]["decodes"], v[0]["needed"]) if "decodes" in v[0] else ""
            vs = "%.2fx" % (med["peer dask"] / med[name]) if "peer dask" in med and not name.startswith("floor") else ""
            over = ""
            if name == "chunkwise zstd3 in/out" and "floor zstd3" in med:
                over = "+%.0f%%" % (100 * (med[name] / med["floor zstd3"] - 1))
            print("| %s | %s | %.2f | %.2f | %s | %s | %s | %s | %s |" % (
                w, name, med[name], min(r["seconds"] for r in v), ("%.0f" % rss) if rss else "",
                "{:,}".format(sb) if sb else "", dec, vs, over))
        if w in checks:
            print("| %s | check | %s |||||||" % (w, checks[w]))
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "a") as f:
        f.write(json.dumps({"date": stamp, "machine": machine(), "runs": a.runs,
                            "rows": {"%s %s" % k: v for k, v in rows.items()}, "checks": checks}) + "\n")
    chart.after_append(a.out)


if __name__ == "__main__":
    main()
