#!/usr/bin/env python3
"""W5 (append), W5-2nd and W5b (concat, new store and in place) through chunkwise and the peers.

usage: python3 bench/grow.py [--data DIR] [--runs N] [--peers ...] [--work DIR]

W5: `chunkwise append COPY append.raw` onto an untimed copy of the peers' input.zarr (512 -> 576);
W5-2nd: the same append once more (`--again`) onto a copy that already had one (576 -> 640, onto
the partial edge layer); W5 4x: the same append onto a 2048-slice store (input.zarr four times,
joined by `chunkwise concat`, untimed), to show that time and bytes written do not depend on the
existing size. W5b: `chunkwise concat input.zarr concat_b.zarr -o OUT` (links chunks) and
W5b-inplace: `chunkwise concat --into COPY concat_b.zarr`. Peers: ../shared/peers/bench.py's
W5/W5-2nd (zarr, tensorstore), W5b (dask, zarr-copy-append) and W5b-inplace (zarr).

Times: chunkwise whole-process wall clock (its final fsync included; the peers do not fsync);
peers bench.py's timed section. Before every timed run the setup's writeback is settled with
os.sync(): for chunkwise here, for the peers inside bench.py's process between its (untimed)
setup and its timed section (bench.py's setup function is wrapped; bench.py is not modified).
Bytes written: chunkwise's own report (`bytes_written`), and independently the bytes of files
under the store whose (dev, inode, mtime) did not exist before the command in the store or in its
input stores (so hard links to existing chunks count 0); the peers' figure is bench.py's
bytes_written (sizes of files under the output that are new or changed, by path).
Checks (run 0): the chunkwise results read back with zarr-python around the seams, compared
with volume.raw / append.raw / concat_b.raw.
"""
import argparse
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
from w1 import PEERS, CW, ensure_data, machine, sh, dir_bytes  # noqa: E402
import chart  # noqa: E402

WORKLOADS = ["W5", "W5-2nd", "W5b", "W5b-inplace"]
PEER_IMPLS = {"W5": ["zarr", "tensorstore"], "W5-2nd": ["zarr", "tensorstore"],
              "W5b": ["dask", "zarr-copy-append"], "W5b-inplace": ["zarr"]}

# bench.py, with an os.sync() between its untimed setup and its timed section.
PEER_WRAPPER = r"""
import os, sys
peers = os.getcwd()
sys.path.insert(0, peers)
sys.argv = [os.path.join(peers, "bench.py")] + sys.argv[1:]
import bench
w = sys.argv[sys.argv.index("--workload") + 1]
setup, impls, verify = bench.W[w]
def synced(ctx, _setup=setup):
    s = _setup(ctx)
    os.sync()
    return s
bench.W[w] = (synced, impls, verify)
bench.main()
"""

# Reads store[z0:z1] with zarr-python and compares it with the raw files' slices, in order.
CHECK = r"""
import json, sys
import numpy as np, zarr
a = json.loads(sys.argv[1])
o = zarr.open_array(a["store"], mode="r")
res = {"shape": list(o.shape)}
if res["shape"] != a["shape"]:
    print(json.dumps(res)); sys.exit()
def raw(name):
    m = json.load(open(a["data"] + "/" + name + ".json"))
    return np.memmap(a["data"] + "/" + name + ".raw", dtype="<u2", mode="r", shape=tuple(m["shape"]))
bad = 0
for z0, z1, parts in a["ranges"]:
    ref = np.concatenate([np.asarray(raw(n)[p0:p1]) for n, p0, p1 in parts], axis=0)
    got = o[z0:z1]
    bad += int(np.count_nonzero(got != ref)) if got.shape == ref.shape else got.size + ref.size
res["mismatched"] = bad
print(json.dumps(res))
"""


class Failed(Exception):
    pass


def timed(cmd):
    """Whole-process wall clock, peak RSS MiB (/usr/bin/time), stdout; after a `sync`, so that
    no run pays for the dirty pages of the one before."""
    os.sync()
    t = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "%M"] + cmd, text=True, capture_output=True)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise Failed("`%s` exited %d:\n%s%s" % (" ".join(cmd), p.returncode, p.stdout, p.stderr))
    return wall, int(p.stderr.strip().splitlines()[-1]) / 1024, p.stdout


def inodes(paths):
    """{(dev, inode, mtime_ns): size} of every file below paths. mtime is part of the key so
    that an inode number freed and reused during the command does not pass for an old file."""
    seen = {}
    for path in paths:
        for root, _dirs, files in os.walk(path):
            for f in files:
                st = os.lstat(os.path.join(root, f))
                seen[(st.st_dev, st.st_ino, st.st_mtime_ns)] = st.st_size
    return seen


def copy(src, dst, link=False):
    shutil.rmtree(dst, ignore_errors=True)
    if link:
        sh(["cp", "-al", src, dst])
    else:
        shutil.copytree(src, dst)


def run_cw(cmd, store, inputs=()):
    """Times one chunkwise command that writes `store`; returns the row and its JSON report."""
    before = inodes([store] + list(inputs))
    os.sync()
    wall, rss, out = timed(cmd)
    after = inodes([store])
    rep = json.loads(out)
    new = {k: v for k, v in after.items() if k not in before}
    return {"seconds": wall, "rss": rss, "cw_seconds": rep.get("seconds"),
            "bytes_reported": rep.get("bytes_written"), "bytes_new": sum(new.values()),
            "files_new": len(new), "chunks_encoded": rep.get("chunks_encoded"),
            "chunks_linked": rep.get("chunks_linked"), "layers_reencoded": rep.get("layers_reencoded"),
            "shape": rep.get("shape"), "already_done": rep.get("already_done"),
            "store_bytes": dir_bytes(store)}, rep


def check(py, data, store, shape, ranges):
    """ranges: [(z0, z1, [(raw name, p0, p1), ...])] -> 'exact' or a MISMATCH description."""
    arg = json.dumps({"store": store, "data": data, "shape": shape, "ranges": ranges})
    try:
        res = json.loads(sh([py, "-c", CHECK, arg]).stdout.strip().splitlines()[-1])
    except subprocess.CalledProcessError as e:
        return "MISMATCH (reading failed: %s)" % e.stderr.strip().splitlines()[-1:]
    where = ", ".join("[%d, %d)" % (r[0], r[1]) for r in ranges)
    if res["shape"] != shape:
        return "MISMATCH: shape %s, expected %s" % (res["shape"], shape)
    if res["mismatched"]:
        return "MISMATCH: %d voxels differ in z %s" % (res["mismatched"], where)
    return "exact (shape %s, z %s)" % ("x".join(map(str, shape)), where)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/tmp/peers-data/full")
    ap.add_argument("--work", default="/tmp/chunkwise-grow")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--peers", default="zarr,tensorstore,dask,zarr-copy-append")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "grow.jsonl"))
    a = ap.parse_args()
    py = ensure_data(a.data)
    if not os.path.isdir(os.path.join(a.data, "concat_b.zarr")):
        subprocess.run([py, os.path.join(PEERS, "bench.py"), a.data, "--prepare"], check=True, cwd=PEERS)
    print("building chunkwise (release)...", flush=True)
    subprocess.run(["cargo", "build", "--release", "--bins", "-q"], cwd=ROOT, check=True)
    shutil.rmtree(a.work, ignore_errors=True)
    os.makedirs(a.work)
    D = a.data
    A_in = os.path.join(D, "input.zarr")
    B_in = os.path.join(D, "concat_b.zarr")
    app = os.path.join(D, "append.raw")
    Z = json.load(open(os.path.join(D, "volume.json")))["shape"]
    Zb = json.load(open(os.path.join(D, "concat_b.json")))["shape"][0]
    Za = json.load(open(os.path.join(D, "append.json")))["shape"][0]
    Z, Y, X = Z
    w = lambda name: os.path.join(a.work, name)  # noqa: E731

    # The 4x store (untimed): one real copy of input.zarr, three hard-linked copies of that
    # (concat refuses the same store twice), joined by concat (which links the chunks).
    print("building the 4x store...", flush=True)
    copy(A_in, w("q1.zarr"))
    for k in (2, 3, 4):
        copy(w("q1.zarr"), w("q%d.zarr" % k), link=True)
    sh([CW, "concat"] + [w("q%d.zarr" % k) for k in (1, 2, 3, 4)] + ["-o", w("big.zarr"), "-q"])
    big_meta = json.load(open(w("big.zarr/zarr.json")))
    assert big_meta["shape"] == [4 * Z, Y, X], big_meta["shape"]

    rows, checks, problems = {}, {}, []
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def cw(key, cmd, store, inputs=(), verify=None):
        try:
            r, rep = run_cw(cmd, store, inputs)
        except Failed as e:
            problems.append(str(e))
            print("FAILED: %s" % e, flush=True)
            return
        if rep.get("already_done"):
            problems.append("`%s` reported already_done" % " ".join(cmd))
        rows.setdefault(key, []).append(r)
        if verify and key not in checks:
            checks[key] = check(py, D, store, *verify)
            print("check %s %s: %s" % (key + (checks[key],)), flush=True)

    for run in range(a.runs):
        print("run %d/%d" % (run + 1, a.runs), flush=True)
        v = run == 0
        # W5: 512 -> 576.
        s = w("w5.zarr")
        copy(A_in, s)
        cw(("W5", "chunkwise append"), [CW, "append", s, app, "-q", "--json"], s,
           verify=v and ([Z + Za, Y, X], [(Z - 64, Z + Za, [("volume", Z - 64, Z), ("append", 0, Za)])]))
        # W5-2nd: 576 -> 640, onto the partial edge layer.
        shutil.rmtree(s)
        copy(A_in, s)
        sh([CW, "append", s, app, "-q"])
        cw(("W5-2nd", "chunkwise append --again"), [CW, "append", s, app, "--again", "-q", "--json"], s,
           verify=v and ([Z + 2 * Za, Y, X], [(Z - 64, Z + 2 * Za, [("volume", Z - 64, Z), ("append", 0, Za),
                                                                   ("append", 0, Za)])]))
        shutil.rmtree(s)
        # W5 onto the 4x store: 2048 -> 2112.
        s = w("big-run.zarr")
        copy(w("big.zarr"), s, link=True)
        cw(("W5", "chunkwise append, 4x store (%d slices)" % (4 * Z)), [CW, "append", s, app, "-q", "--json"], s,
           verify=v and ([4 * Z + Za, Y, X], [(0, 64, [("volume", 0, 64)]),
                                              (4 * Z - 64, 4 * Z + Za, [("volume", Z - 64, Z), ("append", 0, Za)])]))
        shutil.rmtree(s)
        if json.load(open(w("big.zarr/zarr.json")))["shape"] != [4 * Z, Y, X]:
            problems.append("appending to a hard-linked copy of big.zarr changed big.zarr's zarr.json")
        # W5b: A + B -> new store.
        s = w("w5b.zarr")
        shutil.rmtree(s, ignore_errors=True)
        join = [(Z - 128, Z + Zb, [("volume", Z - 128, Z), ("concat_b", 0, Zb)])]
        cw(("W5b", "chunkwise concat -o"), [CW, "concat", A_in, B_in, "-o", s, "-q", "--json"], s,
           inputs=[A_in, B_in], verify=v and ([Z + Zb, Y, X], join))
        shutil.rmtree(s, ignore_errors=True)
        # W5b-inplace: B onto a copy of A.
        copy(A_in, s)
        cw(("W5b-inplace", "chunkwise concat --into"), [CW, "concat", "--into", s, B_in, "-q", "--json"], s,
           inputs=[B_in], verify=v and ([Z + Zb, Y, X], join))
        shutil.rmtree(s, ignore_errors=True)
        # Peers.
        for wl in WORKLOADS:
            for impl in [i for i in PEER_IMPLS[wl] if i in a.peers.split(",")]:
                os.sync()
                cmd = [py, "-c", PEER_WRAPPER, D, "--workload", wl, "--impl", impl,
                       "--work", w("peers"), "--tag", "chunkwise-bench"] + ([] if v else ["--no-verify"])
                try:
                    p = sh(cmd, cwd=PEERS)
                except subprocess.CalledProcessError as e:
                    problems.append("peer %s %s failed: %s" % (wl, impl, e.stderr[-2000:]))
                    continue
                rec = json.loads(p.stdout.strip().splitlines()[-1])
                rows.setdefault((wl, "peer " + impl), []).append({
                    "seconds": rec["seconds"], "rss": rec["peak_rss_mib"],
                    "bytes_reported": rec.get("bytes_written"), "files_new": rec.get("files_new"),
                    "files_rewritten": rec.get("files_rewritten")})
                if v and "check" in rec:
                    c = rec["check"]
                    checks[(wl, "peer " + impl)] = ("exact" if c.get("mismatched_voxels") == 0 and c.get("shape_ok", True)
                                                   else "MISMATCH %s" % c)
    shutil.rmtree(a.work, ignore_errors=True)

    print("\nW5/W5b, %s, %d runs, %s" % (machine(), a.runs, stamp))
    print("| workload | config | median s | min s | bytes written (reported) | new bytes on disk "
          "| peak RSS MiB | vs best peer |")
    print("|---|---|---|---|---|---|---|---|")
    fmt = lambda n: "" if n is None else "{:,}".format(n)  # noqa: E731
    for wl in WORKLOADS:
        med = {k[1]: statistics.median(r["seconds"] for r in v) for k, v in rows.items() if k[0] == wl}
        best = min((k for k in med if k.startswith("peer ")), key=med.get, default=None)
        for (ww, name), v in rows.items():
            if ww != wl:
                continue
            vs = "%.1fx" % (med[best] / med[name]) if best and not name.startswith("peer") else ""
            print("| %s | %s | %.2f | %.2f | %s | %s | %.0f | %s |" % (
                wl, name, med[name], min(r["seconds"] for r in v), fmt(v[0].get("bytes_reported")),
                fmt(v[0].get("bytes_new")), max(r["rss"] for r in v), vs))
        if best:
            print("best peer for %s: %s (median %.2f s)" % (wl, best, med[best]))
    for (wl, name), v in rows.items():
        if not name.startswith("peer"):
            r = v[0]
            print("%s %s: shape %s, chunks encoded %s, linked %s, layers re-encoded %s, new files %s, "
                  "chunkwise's own seconds %.3f" % (wl, name, "x".join(map(str, r["shape"] or [])), r["chunks_encoded"],
                                                    r["chunks_linked"], r["layers_reencoded"], r["files_new"],
                                                    r["cw_seconds"] or 0))
    for k, c in checks.items():
        print("check %s %s: %s" % (k + (c,)))
    for p in problems:
        print("PROBLEM: %s" % p)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "a") as f:
        f.write(json.dumps({"date": stamp, "machine": machine(), "runs": a.runs,
                            "rows": {"%s %s" % k: v for k, v in rows.items()},
                            "checks": {"%s %s" % k: v for k, v in checks.items()},
                            "problems": problems}) + "\n")
    chart.after_append(a.out)


if __name__ == "__main__":
    main()
