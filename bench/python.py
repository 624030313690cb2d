#!/usr/bin/env python3
"""The Python package (spec/PYTHON.md) against its peers on the W3 volume, in one run, with the
ratios.

usage: python3 bench/python.py [--python PY] [--data DIR] [--runs N] [--threads T]
                               [--parts a,b,c] [--out bench/results/python.jsonl]

Parts, interleaved N times, every measurement in a process of its own:
(a) W3 through a Python function: cw.map_overlap(scipy.ndimage.gaussian_filter, ...) vs
    dask.array.map_overlap with the same function (sigma 2, truncate 4, reflect, float32
    output), depth 8 and boundary, on the peers' store (input.zarr, zstd 3), both writing
    zstd 3 in 128^3 chunks with T threads (dask: threaded scheduler, num_workers=T).
(b) cw.gaussian called from Python vs the CLI (target/release/chunkwise --threads T gaussian
    --sigma 2) on the same store, both with their default output codec.
(c) a whole 1 GiB store read into numpy: a[...] vs zarr-python zarr.open_array(p)[...] and
    tensorstore ts.open(...).result().read().result(), on the peers' zstd-3 store and on a
    chunkwise default store (converted from volume.raw by the CLI first, untimed); each
    reader with its default threading. Floor: np.fromfile of volume.raw (page cache warm).

Times are the child's timed section (imports, opening the interpreter and verification
excluded); the CLI's is its whole-process wall clock. Peak RSS is /usr/bin/time's maximum
resident set size of the whole child process. Checks (first run): (a) max |cw - dask|, (b)
mismatching voxels between the Python and CLI outputs, (c) sha256 of the array read against
volume.json's. The Python children run with --python (default: the repository's .venv, which
needs the release build of the package); the data is ../shared/peers' (made if missing, as
bench/compute.py does). Prints a table; appends one JSON line to --out.
"""
import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from w1 import CW, PEERS, dir_bytes, ensure_data, machine  # noqa: E402
import chart  # noqa: E402

DEFAULT_PY = os.path.join(ROOT, ".venv", "bin", "python")
SIGMA, TRUNCATE = 2.0, 4.0
DEPTH = int(TRUNCATE * SIGMA + 0.5)  # 8: scipy's radius, as the peers' W3

# One child per measurement: argv[1] is a JSON object {"mode": ..., ...}; the last stdout line
# is a JSON object with the timed seconds (and whatever the mode reports).
CHILD = r'''
import json, sys, time
cfg = json.loads(sys.argv[1])
mode = cfg["mode"]
import numpy as np

def report(seconds, **kw):
    kw["seconds"] = round(seconds, 4)
    print(json.dumps(kw), flush=True)

def sha(x):
    x = np.ascontiguousarray(x)
    return hashlib.sha256(memoryview(x).cast("B")).hexdigest()

import hashlib
if mode in ("cw-map-overlap", "dask-map-overlap"):
    import functools
    import scipy.ndimage as ndi
    gauss = functools.partial(ndi.gaussian_filter, sigma=cfg["sigma"], truncate=cfg["truncate"],
                              mode="reflect", output=np.float32)
if mode == "cw-map-overlap":
    import chunkwise as cw
    a = cw.open(cfg["inp"])
    t = time.perf_counter()
    cw.map_overlap(gauss, a, out=cfg["out"], depth=cfg["depth"], boundary="reflect",
                   dtype=np.float32, codec="zstd", level=3, threads=cfg["threads"])
    report(time.perf_counter() - t)
elif mode == "dask-map-overlap":
    import dask, dask.array as da, zarr
    from zarr.codecs import BytesCodec, ZstdCodec
    dask.config.set(scheduler="threads", num_workers=cfg["threads"])
    t = time.perf_counter()
    x = da.from_zarr(cfg["inp"])
    y = x.map_overlap(gauss, depth=cfg["depth"], boundary="reflect", dtype=np.float32)
    z = zarr.create_array(store=cfg["out"], shape=x.shape, chunks=(128, 128, 128), dtype="float32",
                          fill_value=0, zarr_format=3, overwrite=True,
                          serializer=BytesCodec(endian="little"),
                          compressors=(ZstdCodec(level=3, checksum=False),), filters=())
    da.to_zarr(y.rechunk((128, 128, 128)), z)
    report(time.perf_counter() - t)
elif mode == "cw-gaussian":
    import chunkwise as cw
    a = cw.open(cfg["inp"])
    t = time.perf_counter()
    cw.gaussian(a, cfg["out"], cfg["sigma"], truncate=cfg["truncate"], threads=cfg["threads"])
    report(time.perf_counter() - t)
elif mode.startswith("read-"):
    p = cfg["inp"]
    if mode == "read-cw":
        import chunkwise as cw
        t = time.perf_counter()
        v = cw.open(p)[...]
        s = time.perf_counter() - t
    elif mode == "read-zarr":
        import zarr
        t = time.perf_counter()
        v = zarr.open_array(p, mode="r")[...]
        s = time.perf_counter() - t
    elif mode == "read-ts":
        import tensorstore as ts
        t = time.perf_counter()
        v = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": p}, "open": True}).result().read().result()
        s = time.perf_counter() - t
    elif mode == "read-raw":
        t = time.perf_counter()
        v = np.fromfile(p, dtype="<u2").reshape(cfg["shape"])
        s = time.perf_counter() - t
    extra = {"shape": list(v.shape), "dtype": str(v.dtype)}
    if cfg.get("verify"):
        extra["sha256"] = sha(v)  # in place: no second copy, so the peak RSS stays the read's
    report(s, **extra)
elif mode == "compare":
    # (a) max |difference|, (b) mismatching voxels, slab by slab
    import zarr
    x = zarr.open_array(cfg["a"], mode="r"); y = zarr.open_array(cfg["b"], mode="r")
    assert x.shape == y.shape and x.dtype == y.dtype, (x.shape, y.shape, x.dtype, y.dtype)
    worst, bad = 0.0, 0
    for z0 in range(0, x.shape[0], 128):
        p, q = x[z0:z0 + 128], y[z0:z0 + 128]
        worst = max(worst, float(np.abs(p.astype(np.float64) - q.astype(np.float64)).max()))
        bad += int(np.count_nonzero(p != q))
    report(0.0, max_abs_diff=worst, mismatches=bad)
elif mode == "version":
    import chunkwise as cw
    import scipy, dask, zarr, tensorstore
    report(0.0, chunkwise=getattr(cw, "__version__", "?"), chunkwise_file=cw.__file__,
           numpy=np.__version__, scipy=scipy.__version__, dask=dask.__version__,
           zarr=zarr.__version__, tensorstore=getattr(tensorstore, "__version__", None) or __import__("importlib.metadata").metadata.version("tensorstore"),
           python=sys.version.split()[0])
else:
    raise SystemExit("unknown mode " + mode)
'''


def run_timed(cmd, env=None):
    """cmd under /usr/bin/time: (whole-process wall seconds, peak RSS MiB, stdout)."""
    t = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "%M"] + cmd, text=True, capture_output=True, env=env)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit("failed (%d): %s\n%s%s" % (p.returncode, " ".join(cmd)[:400], p.stdout, p.stderr))
    rss_kib = int(p.stderr.strip().splitlines()[-1])
    return wall, rss_kib / 1024, p.stdout


def child(py, cfg, timed=True):
    cmd = [py, "-c", CHILD, json.dumps(cfg)]
    if not timed:
        p = subprocess.run(cmd, text=True, capture_output=True)
        if p.returncode != 0:
            raise SystemExit("failed: %s\n%s%s" % (cfg, p.stdout, p.stderr))
        return json.loads(p.stdout.strip().splitlines()[-1])
    wall, rss, out = run_timed(cmd)
    rec = json.loads(out.strip().splitlines()[-1])
    rec["wall_seconds"] = round(wall, 3)
    rec["peak_rss_mib"] = round(rss, 1)
    return rec


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--python", default=DEFAULT_PY, help="the interpreter with chunkwise (release build)")
    ap.add_argument("--data", default="/tmp/peers-data/full")
    ap.add_argument("--work", default="/tmp/chunkwise-bench")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parts", default="a,b,c")
    ap.add_argument("--cli", default=CW, help="the chunkwise CLI (release build) for part (b)")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "python.jsonl"))
    a = ap.parse_args()
    parts = [p for p in a.parts.split(",") if p]
    py = os.path.abspath(a.python) if os.sep in a.python else shutil.which(a.python) or a.python
    if not os.path.exists(a.cli):
        raise SystemExit("%s not found: build the CLI first (cargo build --release)" % a.cli)
    versions = child(py, {"mode": "version"}, timed=False)
    print("chunkwise %s from %s; python %s, numpy %s, scipy %s, dask %s, zarr %s, tensorstore %s"
          % (versions["chunkwise"], versions["chunkwise_file"], versions["python"], versions["numpy"],
             versions["scipy"], versions["dask"], versions["zarr"], versions["tensorstore"]), flush=True)

    peers_py = ensure_data(a.data)
    peers_in = os.path.join(a.data, "input.zarr")
    if not os.path.isdir(peers_in):
        subprocess.run([peers_py, os.path.join(PEERS, "bench.py"), a.data, "--prepare"], check=True, cwd=PEERS)
    meta = json.load(open(os.path.join(a.data, "volume.json")))
    raw = os.path.join(a.data, meta.get("file", "volume.raw"))
    os.makedirs(a.work, exist_ok=True)
    tag = hashlib.sha256(os.path.abspath(a.data).encode()).hexdigest()[:8]
    cw_in = os.path.join(a.work, "python-input-default-%s.zarr" % tag)
    if "c" in parts and not os.path.isdir(cw_in):
        print("converting %s to %s (untimed)..." % (raw, cw_in), flush=True)
        subprocess.run([a.cli, "convert", raw, "-o", cw_in, "-q"], check=True)
    out_a_cw = os.path.join(a.work, "py-a-cw.zarr")
    out_a_dask = os.path.join(a.work, "py-a-dask.zarr")
    out_b_py = os.path.join(a.work, "py-b-py.zarr")
    out_b_cli = os.path.join(a.work, "py-b-cli.zarr")
    common = {"sigma": SIGMA, "truncate": TRUNCATE, "depth": DEPTH, "threads": a.threads}
    rows, checks = {}, {}
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def add(part, name, rec):
        rows.setdefault((part, name), []).append(rec)

    for run in range(a.runs):
        print("run %d/%d" % (run + 1, a.runs), flush=True)
        first = run == 0
        if "a" in parts:
            for out in (out_a_cw, out_a_dask):
                shutil.rmtree(out, ignore_errors=True)
            rec = child(py, dict(common, mode="cw-map-overlap", inp=peers_in, out=out_a_cw))
            rec["store_bytes"] = dir_bytes(out_a_cw)
            add("a", "cw.map_overlap(gaussian_filter)", rec)
            rec = child(py, dict(common, mode="dask-map-overlap", inp=peers_in, out=out_a_dask))
            rec["store_bytes"] = dir_bytes(out_a_dask)
            add("a", "dask map_overlap(gaussian_filter)", rec)
            if first:
                c = child(py, {"mode": "compare", "a": out_a_cw, "b": out_a_dask}, timed=False)
                checks["a"] = "max |cw - dask| %.3g (%d voxels differ)" % (c["max_abs_diff"], c["mismatches"])
            for out in (out_a_cw, out_a_dask):
                shutil.rmtree(out, ignore_errors=True)
        if "b" in parts:
            for out in (out_b_py, out_b_cli):
                shutil.rmtree(out, ignore_errors=True)
            rec = child(py, dict(common, mode="cw-gaussian", inp=peers_in, out=out_b_py))
            add("b", "cw.gaussian (Python)", rec)
            wall, rss, _ = run_timed([a.cli, "--threads", str(a.threads), "-q", "gaussian", peers_in, out_b_cli,
                                      "--sigma", str(SIGMA), "--truncate", str(TRUNCATE)])
            add("b", "chunkwise gaussian (CLI)", {"seconds": round(wall, 4), "wall_seconds": round(wall, 3),
                                                  "peak_rss_mib": round(rss, 1)})
            if first:
                c = child(py, {"mode": "compare", "a": out_b_py, "b": out_b_cli}, timed=False)
                checks["b"] = "Python vs CLI: %d voxels differ (max |diff| %.3g)" % (c["mismatches"], c["max_abs_diff"])
            for out in (out_b_py, out_b_cli):
                shutil.rmtree(out, ignore_errors=True)
        if "c" in parts:
            for store_name, p in (("zstd-3 store", peers_in), ("chunkwise default store", cw_in)):
                for mode, who in (("read-cw", "a[...]"), ("read-zarr", "zarr-python [...]"),
                                  ("read-ts", "tensorstore read()")):
                    rec = child(py, {"mode": mode, "inp": p, "verify": first})
                    if first:
                        ok = rec.get("sha256") == meta.get("sha256")
                        checks["c %s %s" % (store_name, who)] = "sha256 %s" % ("matches volume.json" if ok else
                                                                              "DIFFERS: %s" % rec.get("sha256"))
                    rec.pop("sha256", None)
                    add("c " + store_name, who, rec)
            rec = child(py, {"mode": "read-raw", "inp": raw, "shape": meta["shape"], "verify": False})
            add("c floor", "np.fromfile(volume.raw)", rec)

    print("\nPython package vs peers, %s, %d runs, %d threads, %s" % (machine(), a.runs, a.threads, stamp))
    print("| part | config | median s | min s | peak RSS MiB | time / chunkwise's | stored bytes |")
    print("|---|---|---|---|---|---|---|")
    refs = {"a": "cw.map_overlap(gaussian_filter)", "b": "cw.gaussian (Python)",
            "c zstd-3 store": "a[...]", "c chunkwise default store": "a[...]", "c floor": None}
    med = {k: statistics.median(r["seconds"] for r in v) for k, v in rows.items()}
    for (part, name), v in rows.items():
        ref = refs.get(part)
        if part == "c floor":
            ref_key = ("c zstd-3 store", "a[...]")
        else:
            ref_key = (part, ref)
        ratio = "%.2fx" % (med[(part, name)] / med[ref_key]) if ref_key in med and med[ref_key] > 0 else ""
        rss = max((r.get("peak_rss_mib") or 0) for r in v)
        sb = v[0].get("store_bytes")
        print("| %s | %s | %.3f | %.3f | %.0f | %s | %s |" % (
            part, name, med[(part, name)], min(r["seconds"] for r in v), rss, ratio,
            "{:,}".format(sb) if sb else ""))
    for k, c in checks.items():
        print("check %s: %s" % (k, c))
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "a") as f:
        f.write(json.dumps({"date": stamp, "machine": machine(), "runs": a.runs, "threads": a.threads,
                            "data": os.path.abspath(a.data), "versions": versions,
                            "rows": {"%s | %s" % k: v for k, v in rows.items()}, "checks": checks}) + "\n")
    chart.after_append(a.out)


if __name__ == "__main__":
    main()
