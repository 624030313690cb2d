#!/usr/bin/env python3
"""Issue 13 item 3: growing an OME-Zarr pyramid by `chunkwise append`, against rebuilding it.

usage: python3 bench/pyramid_append.py [--data DIR] [--runs N]

Bases: the W1 volume V (512x1024x1024 uint16, chunkwise's defaults: 128^3 chunks, blosc-zstd 1)
and V four times over (2048 slices, appended to a linked copy: chunks linked), each made into a 4-level mean pyramid
(factor 2, 128^3 chunks) once, untimed. Each run copies the base pyramid by hard links
(`cp -al`: an append never writes a file in place) and times, in fresh processes:

- `chunkwise append BASE.ome.zarr append.raw` (W5's 64 new slices, a raw file with its
  sidecar): level 0 grows by 64 slices, levels 1-3 recompute their tails;
- rebuilding instead: `chunkwise pyramid GROWN.zarr -o OUT` (the same pyramid of the grown
  volume from scratch, the fastest rebuild we have);
- with `--peers`, the peers' rebuilds of the grown volume in the same run (bench/pyramid.py's
  scripts: ngff-zarr's ITKWASM_BIN_SHRINK and DASK_BIN_SHRINK, ome-zarr-py's local_mean, in the
  project's venv), --runs times at 1x and `--peer-runs-4x` times (default 1) at 4x: their time
  and peak RSS on the 4 GiB grown volume is issue 13's memory comparison.

Reports seconds, peak RSS and bytes written (the append's `--json`), for 1x and 4x the base,
and checks that the appended pyramid's levels have the rebuilt one's shapes. Results go to
bench/results/pyramid_append.jsonl.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from w1 import CW, machine, record, timed  # noqa: E402
from pyramid import NGFF, OMEZARR, VENV_PY, levels_of  # noqa: E402

RESULTS = os.path.join(HERE, "results", "pyramid_append.jsonl")
PYR = ["--factors", "2,2,2", "--levels", "4", "--chunks", "128,128,128", "-q"]


def timed_clean(cmd):
    """`timed`, after writing back what earlier runs left dirty (an append's commit syncs its
    filesystem, and would otherwise wait for the peers' gigabytes)."""
    os.sync()
    return timed(cmd)


def sh(*cmd):
    subprocess.run(list(cmd), check=True)


def link_copy(src, dst):
    """`cp -al` without the writers' lock files (a linked lock file is the same lock)."""
    sh("cp", "-al", src, dst)
    sh("find", dst, "-name", ".chunkwise.lock", "-delete")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/tmp/peers-data/full")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--peers", action="store_true", help="time the peers' rebuilds too")
    ap.add_argument("--peer-runs-4x", type=int, default=1)
    a = ap.parse_args()
    v = os.path.join(a.data, "w1_default.zarr")
    if not os.path.exists(os.path.join(v, "zarr.json")):
        sh(CW, "convert", os.path.join(a.data, "volume.raw"), "-o", v, "-q")
    new = os.path.join(a.data, "append.raw")  # with its sidecar append.json
    if not os.path.exists(new):
        raise SystemExit(f"{new} missing: run ../shared/peers/gen.py {a.data}")
    work = tempfile.mkdtemp(prefix="cw-pyrappend-", dir=a.data)
    out = {}
    scripts = {}
    for name, text in (("ngff", NGFF), ("omezarr", OMEZARR)):
        scripts[name] = os.path.join(work, name + ".py")
        with open(scripts[name], "w") as f:
            f.write(text)

    def peers(grown, out):
        return {
            "ngff-zarr ITKWASM_BIN_SHRINK": [VENV_PY, scripts["ngff"], grown, out,
                                              "ITKWASM_BIN_SHRINK"],
            "ngff-zarr DASK_BIN_SHRINK": [VENV_PY, scripts["ngff"], grown, out,
                                           "DASK_BIN_SHRINK"],
            "ome-zarr-py local_mean": [VENV_PY, scripts["omezarr"], grown, out],
        } if a.peers else {}

    try:
        newz = _new(work, new)
        for scale in (1, 4):
            base = v if scale == 1 else os.path.join(work, "v4.zarr")
            if scale == 4:  # V linked four times over (an append never writes in place)
                link_copy(v, base)
                sh(CW, "append", base, v, v, v, "-q")
            img = os.path.join(work, f"base{scale}.ome.zarr")
            sh(CW, "pyramid", base, "-o", img, *PYR)
            grown = os.path.join(work, f"grown{scale}.zarr")
            sh(CW, "concat", base, newz, "-o", grown, "-q")
            rebuilt = os.path.join(work, "rebuilt.ome.zarr")
            others = peers(grown, rebuilt)
            rows = {"append": [], "rebuild": [], **{k: [] for k in others}}
            rss = {"append": [], "rebuild": [], **{k: [] for k in others}}
            said = None
            for run in range(a.runs):
                copy = os.path.join(work, "copy.ome.zarr")
                shutil.rmtree(copy, ignore_errors=True)
                link_copy(img, copy)
                w, m = timed_clean([CW, "append", copy, new, "--json", "-q"])
                rows["append"].append(w)
                rss["append"].append(m)
                said = json.loads(subprocess.run([CW, "append", copy, new, "--json"],
                                                 capture_output=True, text=True).stdout)
                appended_levels = levels_of(copy)
                rebuilt = os.path.join(work, "rebuilt.ome.zarr")
                shutil.rmtree(rebuilt, ignore_errors=True)
                w, m = timed_clean([CW, "pyramid", grown, "-o", rebuilt, *PYR])
                rows["rebuild"].append(w)
                rss["rebuild"].append(m)
                if appended_levels != levels_of(rebuilt):
                    raise SystemExit(f"levels differ: {appended_levels} vs {levels_of(rebuilt)}")
                if scale == 4 and run >= a.peer_runs_4x:
                    continue
                for impl, cmd in others.items():
                    shutil.rmtree(rebuilt, ignore_errors=True)
                    w, m = timed_clean(cmd)
                    rows[impl].append(w)
                    rss[impl].append(m)
                    if levels_of(rebuilt) != appended_levels:
                        raise SystemExit(f"{impl}: levels {levels_of(rebuilt)}, "
                                         f"not {appended_levels}")
            appended = _bytes_of_append(copy, img, new, work)
            rows = {k: x for k, x in rows.items() if x}
            rss = {k: x for k, x in rss.items() if x}
            others = {k: v for k, v in others.items() if k in rows}
            med = {k: statistics.median(x) for k, x in rows.items()}
            out[f"{scale}x"] = {
                "base_slices": 512 * scale,
                "seconds": {k: [round(x, 3) for x in xs] for k, xs in rows.items()},
                "peak_rss_mib": {k: round(max(xs)) for k, xs in rss.items()},
                "bytes_written": appended,
                "levels": [list(s) for s in appended_levels],
                "ratio_rebuild_over_append": round(med["rebuild"] / med["append"], 2),
                "ratio_peer_rebuild_over_append": {
                    k: round(med[k] / med["append"], 2) for k in others},
                "rerun_said_already_done": bool(said and said.get("already_done")),
            }
            shutil.rmtree(img, ignore_errors=True)
            shutil.rmtree(grown, ignore_errors=True)
            if scale == 4:
                shutil.rmtree(base, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    one, four = out["1x"], out["4x"]
    row = {"work": "append 64 slices (W5) to a 4-level mean pyramid of 512 and 2048 slices, "
                   "against rebuilding it",
           **{f"cw_{k}_{s}": out[s]["seconds"][k] for s in ("1x", "4x")
              for k in ("append", "rebuild")},
           **{f"cw_{k}_{s}_rss_mib": out[s]["peak_rss_mib"][k] for s in ("1x", "4x")
              for k in ("append", "rebuild")},
           "bytes_written_1x": one["bytes_written"], "bytes_written_4x": four["bytes_written"],
           "ratio_rebuild_over_append_1x": one["ratio_rebuild_over_append"],
           "ratio_rebuild_over_append_4x": four["ratio_rebuild_over_append"],
           "peers": {s: {k: {"seconds": [round(x, 3) for x in out[s]["seconds"][k]],
                             "peak_rss_mib": out[s]["peak_rss_mib"][k],
                             "ratio_over_append": out[s]["ratio_peer_rebuild_over_append"][k]}
                         for k in out[s]["ratio_peer_rebuild_over_append"]}
                     for s in ("1x", "4x")},
           "append_4x_over_1x": round(statistics.median(four["seconds"]["append"])
                                      / statistics.median(one["seconds"]["append"]), 2),
           "levels_1x": one["levels"], "levels_4x": four["levels"],
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": machine()}
    record(RESULTS, row)


def _new(work, new):
    """The 64 new slices as a store (for the grown volume the rebuild reads)."""
    path = os.path.join(work, "new.zarr")
    sh(CW, "convert", new, "-o", path, "-q")
    return path


def _bytes_of_append(copy, img, new, work):
    """Bytes one append writes, from its --json (a fresh copy of the base)."""
    shutil.rmtree(copy, ignore_errors=True)
    link_copy(img, copy)
    r = subprocess.run([CW, "append", copy, new, "--json", "-q"], capture_output=True, text=True,
                       check=True)
    return json.loads(r.stdout)["bytes_written"]


if __name__ == "__main__":
    main()
