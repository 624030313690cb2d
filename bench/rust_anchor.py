#!/usr/bin/env python3
"""Issue 16: chunkwise against the Rust reference, zarrs_tools 0.8.1, on the same stores in one
run, interleaved.

usage: .venv/bin/python bench/rust_anchor.py [--data DIR] [--work DIR] [--runs N]
                                             [--only decode,copy,reencode,rechunk,gaussian]

DIR holds the W1 data (`../shared/peers/gen.py DIR`: volume.raw, 512x1024x1024 uint16); the
input store (chunkwise's default: 128^3 chunks, blosc-zstd 1) is written once in WORK, untimed.
zarrs_tools is found on PATH, in ~/.cargo/bin or in WORK/zarrs_tools/bin, else installed there
with `cargo install zarrs_tools --version 0.8.1 --features filter,ome,benchmark --locked`.

Rows (each tool a fresh process, timed whole with /usr/bin/time; best of N interleaved runs,
peak RSS the largest seen):

- decode: every chunk decoded. `zarrs_benchmark_read_sync` against `chunkwise stats`.
- copy: store to store, same codec and chunks. `zarrs_reencode IN OUT` (which decodes and
  encodes again) against `chunkwise convert IN -o OUT` (which copies the encoded chunks).
- reencode: same chunks, another codec (blosc-lz4 5, chunkwise's float default, given to
  zarrs_reencode as the codec metadata chunkwise writes): both decode and encode every chunk.
- rechunk: to 64x256x256, same codec: `zarrs_reencode --chunk-shape 64,256,256 --shard-shape
  64,256,256` (0.8.1 ignores --chunk-shape without --shard-shape: it rewrites the input's
  chunks) against `convert --chunks 64,256,256`.
- gaussian: sigma 2, radius 8, float32 out: `zarrs_filter gaussian` against `chunkwise
  gaussian`, unconstrained and at `--memory 256MiB` / `128MiB` (a refusal is reported as such).

chunkwise runs with `--no-sync` (zarrs_tools does not fsync; rows with fsync are printed too).
Every output is checked once, untimed: copy/reencode/rechunk outputs decode to the input's
values (`chunkwise verify --against`), gaussian outputs against each other (max |diff|, which
is large at the edges: zarrs_filter clips its halo at the array border). Appends one row per
workload to bench/results/rust_anchor.jsonl.
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from w1 import CW, machine, record, timed  # noqa: E402

RESULTS = os.path.join(HERE, "results", "rust_anchor.jsonl")
ZT_VERSION = "0.8.1"
ZT_BINS = ["zarrs_reencode", "zarrs_filter", "zarrs_benchmark_read_sync"]


def zarrs_tools(work):
    """The directory holding zarrs_tools' binaries, installing them if none is found."""
    places = [os.path.join(work, "zarrs_tools", "bin"), os.path.expanduser("~/.cargo/bin"),
              "/opt/zarrs_tools/bin"] + os.environ.get("PATH", "").split(os.pathsep)
    for d in places:
        if all(os.path.exists(os.path.join(d, b)) for b in ZT_BINS):
            return d
    root = os.path.join(work, "zarrs_tools")
    print("installing zarrs_tools %s into %s (several minutes) ..." % (ZT_VERSION, root), flush=True)
    subprocess.run(["cargo", "install", "zarrs_tools", "--version", ZT_VERSION, "--features",
                    "filter,ome,benchmark", "--locked", "--root", root], check=True)
    return os.path.join(root, "bin")


def dir_bytes(path):
    n = 0
    for d, _, files in os.walk(path):
        for f in files:
            n += os.path.getsize(os.path.join(d, f))
    return n


def run(cmd, out=None):
    if out:
        shutil.rmtree(out, ignore_errors=True)
    return timed(cmd)


def codec_of(store, i=1):
    return json.load(open(os.path.join(store, "zarr.json")))["codecs"][i]


def same_values(store, work, sha256):
    """Whether `store` decodes to volume.raw: its raw export hashed (untimed)."""
    raw = os.path.join(work, "check.raw")
    subprocess.run([CW, "export", store, "-o", raw, "--raw", "--overwrite", "--quiet"],
                   check=True)
    h = hashlib.sha256()
    with open(raw, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    os.remove(raw)
    return h.hexdigest() == sha256


def gaussian_diff(a, b):
    py = r'''
import sys, numpy as np, zarr
x = zarr.open_array(sys.argv[1], mode="r"); y = zarr.open_array(sys.argv[2], mode="r")
worst = inner = 0.0
for z0 in range(0, x.shape[0], 64):
    p = x[z0:z0 + 64].astype(np.float64); q = y[z0:z0 + 64].astype(np.float64)
    d = np.abs(p - q)
    worst = max(worst, float(d.max()))
    z = slice(max(0, 8 - z0), min(64, x.shape[0] - 8 - z0))
    if z.start < z.stop:
        inner = max(inner, float(d[z, 8:-8, 8:-8].max()))
print(json.dumps({"max_abs_diff": worst, "max_abs_diff_inside_8": inner}))
'''
    p = subprocess.run([sys.executable, "-c", "import json\n" + py, a, b], check=True,
                       capture_output=True, text=True)
    return json.loads(p.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/tmp/peers-data/full")
    ap.add_argument("--work", default="/tmp/chunkwise-anchor")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", default="decode,copy,reencode,rechunk,gaussian")
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    zt = zarrs_tools(a.work)
    meta = json.load(open(os.path.join(a.data, "volume.json")))
    src = os.path.join(a.work, "w1.zarr")
    if not os.path.exists(os.path.join(src, "zarr.json")):
        print("writing %s ..." % src, flush=True)
        subprocess.run([CW, "convert", os.path.join(a.data, "volume.raw"), "-o", src, "--quiet"],
                       check=True)
    out = lambda name: os.path.join(a.work, name)  # noqa: E731
    # blosc-lz4 as chunkwise writes it, for zarrs_reencode's codec options.
    probe = out("probe.zarr")
    subprocess.run([CW, "convert", src, "-o", probe, "--codec", "blosc-lz4", "--overwrite",
                    "--quiet", "--no-sync"], check=True)
    lz4 = json.dumps([codec_of(probe)])
    shutil.rmtree(probe)
    work = {
        "decode": {
            "zarrs_tools": [os.path.join(zt, "zarrs_benchmark_read_sync"), src],
            "chunkwise": [CW, "stats", src, "--json"],
        },
        "copy": {
            "zarrs_tools": [os.path.join(zt, "zarrs_reencode"), src, out("zt_copy.zarr")],
            "chunkwise": [CW, "convert", src, "-o", out("cw_copy.zarr"), "--quiet", "--no-sync"],
            "chunkwise (fsync)": [CW, "convert", src, "-o", out("cw_copy.zarr"), "--quiet"],
        },
        "reencode": {
            "zarrs_tools": [os.path.join(zt, "zarrs_reencode"), src, out("zt_lz4.zarr"),
                            "--bytes-to-bytes-codecs", lz4],
            "chunkwise": [CW, "convert", src, "-o", out("cw_lz4.zarr"), "--codec", "blosc-lz4",
                          "--quiet", "--no-sync"],
        },
        "rechunk": {
            # zarrs_reencode 0.8.1 applies --chunk-shape only with --shard-shape (without,
            # it writes the input's chunks again): one 64x256x256 chunk per shard.
            "zarrs_tools": [os.path.join(zt, "zarrs_reencode"), src, out("zt_re.zarr"),
                            "--chunk-shape", "64,256,256", "--shard-shape", "64,256,256"],
            "chunkwise": [CW, "convert", src, "-o", out("cw_re.zarr"), "--chunks", "64,256,256",
                          "--quiet", "--no-sync"],
            "chunkwise (fsync)": [CW, "convert", src, "-o", out("cw_re.zarr"), "--chunks",
                                  "64,256,256", "--quiet"],
        },
        "gaussian": {
            "zarrs_tools": [os.path.join(zt, "zarrs_filter"), "gaussian", src, out("zt_g.zarr"),
                            "2,2,2", "8,8,8", "--data-type", "float32"],
            "chunkwise": [CW, "gaussian", src, out("cw_g.zarr"), "--sigma", "2", "--quiet",
                          "--no-sync"],
            "chunkwise --memory 256MiB": [CW, "gaussian", src, out("cw_g256.zarr"), "--sigma",
                                          "2", "--memory", "256MiB", "--quiet", "--no-sync"],
            "chunkwise --memory 128MiB": [CW, "gaussian", src, out("cw_g128.zarr"), "--sigma",
                                          "2", "--memory", "128MiB", "--quiet", "--no-sync"],
        },
    }
    for name in a.only.split(","):
        tools = work[name]
        best, rss, refused = {}, {}, {}
        for _ in range(a.runs):
            for tool, cmd in tools.items():
                dest = next((c for c in cmd if c.endswith(".zarr") and c != src), None)
                if dest:
                    shutil.rmtree(dest, ignore_errors=True)
                p = subprocess.run(["/usr/bin/time", "-f", "%e %M"] + cmd, text=True,
                                   capture_output=True)
                if p.returncode != 0:
                    said = [x for x in p.stderr.splitlines() if x.startswith("chunkwise: error")]
                    refused[tool] = said[0] if said else "exit %d" % p.returncode
                    continue
                wall, kib = p.stderr.strip().splitlines()[-1].split()
                best[tool] = min(best.get(tool, 1e9), float(wall))
                rss[tool] = max(rss.get(tool, 0), int(kib) / 1024)
        checks = {}
        if name == "decode":
            got = json.loads(subprocess.run(tools["chunkwise"], check=True, capture_output=True,
                                            text=True).stdout)
            checks["chunkwise sum"] = "ok" if int(got["sum"]) == meta["stats"]["sum"] else "WRONG"
        elif name == "gaussian":
            if "chunkwise" in best and "zarrs_tools" in best:
                checks = gaussian_diff(out("cw_g.zarr"), out("zt_g.zarr"))
        else:
            for tool, cmd in tools.items():
                dest = next((c for c in cmd if c.endswith(".zarr") and c != src), None)
                if tool in best and dest and os.path.exists(dest):
                    ok = same_values(dest, a.work, meta["sha256"])
                    checks[tool] = "%s, %d bytes stored" % (
                        "identical values" if ok else "VALUES DIFFER", dir_bytes(dest))
        ratio = round(best["zarrs_tools"] / best["chunkwise"], 2) \
            if "zarrs_tools" in best and "chunkwise" in best else None
        record(RESULTS, {
            "bench": "rust_anchor", "work": name, "machine": machine(),
            "zarrs_tools": ZT_VERSION, "runs": a.runs,
            "seconds": {k: round(v, 3) for k, v in best.items()},
            "peak_rss_mib": {k: round(v, 1) for k, v in rss.items()},
            "refused": refused, "checks": checks,
            "speedup_vs_zarrs_tools": ratio,
        })


if __name__ == "__main__":
    main()
