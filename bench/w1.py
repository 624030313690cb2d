#!/usr/bin/env python3
"""W1 (convert) through chunkwise and through the peers, in one run, with the ratios.

usage: python3 bench/w1.py [--data DIR] [--runs N] [--peers zarr,zarr-raw,dask,tensorstore]
                           [--big] [--out bench/results/w1.jsonl]

Runs, interleaved N times: chunkwise convert (npy stack and raw file; zstd level 3 = the peers'
codec, and chunkwise's default), the codec floor (examples/encode_floor: every chunk encoded in
memory on all cores, no I/O), and ../shared/peers/bench.py for each peer. --big adds the 4 GiB
volume (the 1 GiB one four times over) to show peak RSS does not grow with the volume.

The data is ../shared/peers/gen.py's (made here if missing, with the peers' venv from
../shared/peers/setup.sh). chunkwise times are whole-process wall clock (startup, metadata and
the final fsync included); the peers' are bench.py's timed section (imports excluded), so the
comparison favours the peers slightly. Peak RSS: /usr/bin/time's maximum resident set size for
chunkwise; bench.py's ru_maxrss (including its ~97 MiB interpreter) for the peers.
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

import chart  # bench/chart.py: the SVG beside each results file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PEERS = os.path.normpath(os.path.join(ROOT, "..", "shared", "peers"))
PEERS_VENV = os.environ.get("PEERS_VENV", "/tmp/peers-venv")
# CHUNKWISE_BIN: another build to measure (an earlier commit's, for before/after ratios).
CW = os.environ.get("CHUNKWISE_BIN") or os.path.join(ROOT, "target", "release", "chunkwise")
FLOOR = os.path.join(ROOT, "target", "release", "examples", "encode_floor")
SHAPE = "512,1024,1024"


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)


def dir_bytes(path):
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    return total


def machine():
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return "%s x %d, %.0f GiB RAM, %s %s" % (cpu, os.cpu_count(), mem, platform.system(),
                                             platform.release())


def record(path, row):
    """Appends a result row to a bench/results/*.jsonl file and prints it."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)
    chart.after_append(path)


def ensure_data(data):
    py = os.path.join(PEERS_VENV, "bin", "python")
    if not os.path.exists(py):
        print("setting up the peers' venv (%s)..." % PEERS_VENV, flush=True)
        subprocess.run(["bash", os.path.join(PEERS, "setup.sh")], check=True)
    if not os.path.exists(os.path.join(data, "volume.raw")):
        print("generating the W1 data in %s (~2 min)..." % data, flush=True)
        subprocess.run([py, os.path.join(PEERS, "gen.py"), data], check=True)
    return py


def timed(cmd):
    """Runs cmd under /usr/bin/time, after a `sync` (so that no run pays for the dirty pages
    of the one before: chunkwise syncs its output's filesystem as it finishes); returns (wall
    seconds, peak RSS MiB)."""
    os.sync()
    t = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "%M"] + cmd, text=True, capture_output=True)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit("failed: %s\n%s%s" % (" ".join(cmd), p.stdout, p.stderr))
    rss_kib = int(p.stderr.strip().splitlines()[-1])
    return wall, rss_kib / 1024


def chunkwise_run(inp, out, codec_args, extra=()):
    shutil.rmtree(out, ignore_errors=True)
    wall, rss = timed([CW, "convert", inp, "-o", out, "-q"] + list(codec_args) + list(extra))
    return {"seconds": round(wall, 3), "peak_rss_mib": round(rss, 1), "store_bytes": dir_bytes(out)}


def check_round_trip(store, raw):
    """The store must hold exactly volume.raw (chunkwise export --raw, compared in blocks)."""
    out = store + ".check.raw"
    sh([CW, "export", store, "-o", out, "--raw", "--overwrite", "-q"])
    same = True
    with open(out, "rb") as a, open(raw, "rb") as b:
        while True:
            x, y = a.read(1 << 24), b.read(1 << 24)
            if x != y:
                same = False
                break
            if not x:
                break
    os.remove(out)
    return same


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/tmp/peers-data/full")
    ap.add_argument("--work", default="/tmp/chunkwise-bench")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--peers", default="zarr,zarr-raw,dask,tensorstore")
    ap.add_argument("--big", action="store_true")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "w1.jsonl"))
    a = ap.parse_args()

    py = ensure_data(a.data)
    print("building chunkwise (release)...", flush=True)
    subprocess.run(["cargo", "build", "--release", "--bins", "--examples", "-q"], cwd=ROOT,
                   check=True)
    os.makedirs(a.work, exist_ok=True)
    npy = os.path.join(a.data, "npy")
    raw = os.path.join(a.data, "volume.raw")
    configs = {
        "chunkwise npy zstd3": (npy, ["--codec", "zstd", "--level", "3"]),
        "chunkwise npy default": (npy, []),
        "chunkwise raw zstd3": (raw, ["--codec", "zstd", "--level", "3"]),
        "chunkwise raw default": (raw, []),
    }
    floors = {"floor zstd3": ["--codec", "zstd", "--level", "3"], "floor default": []}
    peers = [p for p in a.peers.split(",") if p]
    rows = {}
    checks = {}
    big_inputs = []
    if a.big:
        big = os.path.join(a.work, "big")
        os.makedirs(big, exist_ok=True)
        big_raw = os.path.join(big, "volume4.raw")
        if not os.path.exists(big_raw) or os.path.getsize(big_raw) != 4 * os.path.getsize(raw):
            with open(big_raw, "wb") as f:
                for _ in range(4):
                    with open(raw, "rb") as g:
                        shutil.copyfileobj(g, f, 1 << 24)
            with open(os.path.join(big, "volume4.json"), "w") as f:
                json.dump({"shape": [2048, 1024, 1024], "dtype": "uint16"}, f)
        stack = os.path.join(big, "npy4")
        if not os.path.isdir(stack):
            os.makedirs(stack)
            names = sorted(os.listdir(npy))
            for k in range(4):
                for i, n in enumerate(names):
                    os.symlink(os.path.join(npy, n), os.path.join(stack, "slice_%04d.npy" % (k * 512 + i)))
        big_inputs = [("chunkwise 4GiB raw default", big_raw), ("chunkwise 4GiB npy default", stack)]
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for run in range(a.runs):
        print("run %d/%d" % (run + 1, a.runs), flush=True)
        for name, (inp, args) in configs.items():
            out = os.path.join(a.work, "w1.zarr")
            r = chunkwise_run(inp, out, args)
            if name not in checks:
                checks[name] = check_round_trip(out, raw)
            rows.setdefault(name, []).append(r)
            shutil.rmtree(out, ignore_errors=True)
        for name, args in floors.items():
            p = sh([FLOOR, raw, "--shape", SHAPE] + args)
            rec = json.loads(p.stdout)
            rows.setdefault(name, []).append({"seconds": rec["seconds"], "store_bytes": rec["bytes_out"]})
        for impl in peers:
            p = sh([py, os.path.join(PEERS, "bench.py"), a.data, "--workload", "W1", "--impl", impl,
                    "--work", a.work, "--tag", "chunkwise-bench"], cwd=PEERS)
            rec = json.loads(p.stdout.strip().splitlines()[-1])
            rows.setdefault("peer " + impl, []).append({
                "seconds": rec["seconds"], "peak_rss_mib": rec["peak_rss_mib"],
                "store_bytes": rec.get("out_store_bytes"), "check": rec.get("check")})
        for name, inp in big_inputs:
            # Warm the page cache (the 1 GiB inputs are warm from the runs above).
            subprocess.run("cat %s/* > /dev/null 2>&1 || cat %s > /dev/null" % (inp, inp), shell=True)
            out = os.path.join(a.work, "w1big.zarr")
            rows.setdefault(name, []).append(chunkwise_run(inp, out, []))
            shutil.rmtree(out, ignore_errors=True)
    # Summary.
    med = {k: statistics.median(r["seconds"] for r in v) for k, v in rows.items()}
    best_peer = min((k for k in med if k.startswith("peer ")), key=med.get, default=None)
    print("\nW1 convert, %s, %d runs, %s" % (machine(), a.runs, stamp))
    print("| config | median s | min s | peak RSS MiB | stored bytes | vs best peer | vs floor | round trip |")
    print("|---|---|---|---|---|---|---|---|")
    for k, v in rows.items():
        secs = [r["seconds"] for r in v]
        rss = max((r.get("peak_rss_mib") or 0) for r in v)
        sb = v[0].get("store_bytes")
        vs_peer = "%.2fx" % (med[best_peer] / med[k]) if best_peer and not k.startswith("floor") else ""
        floor_key = "floor zstd3" if "zstd3" in k else ("floor default" if "default" in k else None)
        vs_floor = ""
        if k.startswith("chunkwise") and floor_key in med and "4GiB" not in k:
            vs_floor = "+%.0f%%" % (100 * (med[k] / med[floor_key] - 1))
        check = checks.get(k, v[0].get("check", ""))
        if check is True:
            check = "identical"
        print("| %s | %.2f | %.2f | %s | %s | %s | %s | %s |" % (
            k, med[k], min(secs), ("%.0f" % rss) if rss else "", "{:,}".format(sb) if sb else "",
            vs_peer, vs_floor, check or ""))
    print("best peer: %s (median %.2f s)" % (best_peer, med[best_peer]) if best_peer else "")
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "a") as f:
        f.write(json.dumps({"date": stamp, "machine": machine(), "runs": a.runs, "rows": rows,
                            "round_trip": checks}) + "\n")
    chart.after_append(a.out)
    if not all(checks.values()):
        sys.exit("round trip FAILED: %s" % checks)


if __name__ == "__main__":
    main()
