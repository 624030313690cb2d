"""Oracle for `chunkwise pyramid` (spec/PYRAMID.md), run by tests/pyramid.rs.

Usage: check_pyramid.py CHUNKWISE DIR

Makes inputs with numpy, runs `chunkwise pyramid` on them, and checks every level against
numpy on the whole array (level l + 1 = the block reduction of level l over its factor, edge
blocks reducing the voxels present), the metadata against the spec (scales, translations,
dimension names), and the image live in three readers: `ome-zarr-models validate`,
ome-zarr-py's `ome_zarr.reader` and ngff-zarr's `from_ngff_zarr`, each listing the same levels,
scales and shapes. Prints "pyramids equal numpy's" when every case passes.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import zarr

sys.path.insert(0, str(Path(__file__).parent))
from pyramid_oracle import check  # noqa: E402

BIN, DIR = Path(sys.argv[1]), Path(sys.argv[2])


def cw(*args):
    r = subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"chunkwise {' '.join(map(str, args))} failed:\n{r.stderr}")
    return r.stdout


rng = np.random.default_rng(7)
DIR.mkdir(parents=True, exist_ok=True)
done = []

# 1. uint16, odd sizes (edge blocks partial), anisotropic voxels, default factors and levels.
a = rng.integers(0, 4000, (37, 70, 90), dtype=np.uint16)
np.save(DIR / "a.npy", a)
cw("pyramid", DIR / "a.npy", "-o", DIR / "a.ome.zarr", "--chunks", "16,16,16",
   "--voxel-size", "2,0.5,0.5", "--units", "micrometer,micrometer,micrometer")
n = check(DIR / "a.ome.zarr", a, "mean", axes=["z", "y", "x"])
assert n == 4, n
meta = json.loads((DIR / "a.ome.zarr" / "zarr.json").read_text())
factors = meta["attributes"]["ome"]["multiscales"][0]["metadata"]["factors"]
# z (2 um) is coarser than y, x (0.5 um): it keeps factor 1 until they catch up.
assert factors[0] == [1, 2, 2] and factors[1] == [1, 2, 2], factors
done.append("uint16 mean, default factors")

# 2. float32 from a store whose chunks differ from the pyramid's, on one thread and on two.
b = (rng.integers(-800, 800, (20, 33, 47)) / 8).astype(np.float32)
np.save(DIR / "b.npy", b)
cw("convert", DIR / "b.npy", "-o", DIR / "b.zarr", "--chunks", "10,10,10")
for threads in ("1", "2"):
    out = DIR / f"b{threads}.ome.zarr"
    cw("--threads", threads, "pyramid", DIR / "b.zarr", "-o", out, "--chunks", "8,8,8",
       "--factors", "2,2,2", "--levels", "3")
    check(out, b, "mean")
done.append("float32 mean from a store, 1 and 2 threads")

# 2b. A store encoded as level 0 would be: its chunk files become level 0 by hard links.
cw("convert", DIR / "b.npy", "-o", DIR / "b8.zarr", "--chunks", "8,8,8")
cw("pyramid", DIR / "b8.zarr", "-o", DIR / "b8.ome.zarr", "--chunks", "8,8,8",
   "--factors", "2,2,2", "--levels", "3")
check(DIR / "b8.ome.zarr", b, "mean")
linked = DIR / "b8.ome.zarr" / "0" / "c" / "0" / "0" / "0"
assert os.stat(linked).st_nlink == 2, os.stat(linked)
assert os.path.samefile(linked, DIR / "b8.zarr" / "c" / "0" / "0" / "0")
done.append("level 0 linked from a same-encoded store")

# 3. labels: mode, ties broken by the smallest value.
labels = rng.integers(0, 4, (30, 40, 50)).astype(np.int32) * 1000
np.save(DIR / "l.npy", labels)
cw("pyramid", DIR / "l.npy", "-o", DIR / "l.ome.zarr", "--method", "mode",
   "--chunks", "8,8,8", "--factors", "2,2,2", "--levels", "3")
check(DIR / "l.ome.zarr", labels, "mode")
done.append("int32 mode")

# 4. 2-D, the other methods, factors per level.
c = rng.integers(0, 255, (65, 77), dtype=np.uint8)
np.save(DIR / "c.npy", c)
for method in ("nearest", "min", "max"):
    out = DIR / f"c-{method}.ome.zarr"
    cw("pyramid", DIR / "c.npy", "-o", out, "--method", method, "--chunks", "16,16",
       "--factors-per-level", "2,2 1,2 2,2")
    check(out, c, method, centred=method != "nearest", axes=["y", "x"])
done.append("uint8 nearest/min/max, factors per level")

# 4b. gaussian: a blur of sigma f / 3 sampled at each block's centre, from the level above
#     with a halo across chunks (partial edge blocks, reflected edges), odd and even factors,
#     integers rounded and floats; the odd case is also scipy's gaussian_filter.
g = rng.normal(0, 300, (23, 31, 29)).astype(np.float32)
np.save(DIR / "g.npy", g)
np.save(DIR / "g16.npy", (np.abs(g) * 20).astype(np.uint16))
for src, fs in (("g.npy", "3,3,3"), ("g16.npy", "2,2,2"), ("g.npy", "1,2,2")):
    out = DIR / f"g-{src}-{fs}.ome.zarr"
    cw("pyramid", DIR / src, "-o", out, "--method", "gaussian", "--factors", fs, "--levels", "3",
       "--chunks", "6,6,6")
    check(out, np.load(DIR / src), "gaussian")
# In a budget that holds a slab of 3 of a chunk's 6 planes per worker (2 workers; the box
# above plus the halo), the same levels bit for bit; a budget below one plane is refused.
ref = DIR / "g-g.npy-1,2,2.ome.zarr"
small = DIR / "g-small.ome.zarr"
cw("--threads", "2", "pyramid", DIR / "g.npy", "-o", small, "--method", "gaussian", "--factors",
   "1,2,2", "--levels", "3", "--chunks", "6,6,6", "--memory", "100KiB")
for lv in range(3):
    assert np.array_equal(zarr.open_array(str(small / str(lv)))[...],
                          zarr.open_array(str(ref / str(lv)))[...]), lv
r = subprocess.run([str(BIN), "--threads", "2", "pyramid", str(DIR / "g.npy"), "-o",
                    str(DIR / "g-tiny.ome.zarr"), "--method", "gaussian", "--factors", "1,2,2",
                    "--levels", "3", "--chunks", "6,6,6", "--memory", "30KiB"],
                   capture_output=True, text=True)
assert r.returncode == 2 and "gaussian level 1" in r.stderr and "at least" in r.stderr, r.stderr
assert not (DIR / "g-tiny.ome.zarr").exists()
done.append("float32 and uint16 gaussian, odd and even factors, in slabs")

# 5. 4-D c,z,y,x: the channel axis is never downsampled.
d = rng.integers(0, 60000, (2, 20, 64, 64), dtype=np.uint16)
np.save(DIR / "d.npy", d)
cw("pyramid", DIR / "d.npy", "-o", DIR / "d.ome.zarr", "--chunks", "1,8,16,16")
n = check(DIR / "d.ome.zarr", d, "mean", axes=["c", "z", "y", "x"])
assert n >= 2
assert zarr.open_array(str(DIR / "d.ome.zarr" / str(n - 1)), mode="r").shape[0] == 2
done.append("4-D with a channel axis")

# 6. An OME-Zarr level as input (IMAGE/N), and the image itself as level 0.
lvl1 = zarr.open_array(str(DIR / "a.ome.zarr" / "1"), mode="r")[...]
cw("export", DIR / "a.ome.zarr", "-o", DIR / "a0.npy")
assert np.array_equal(np.load(DIR / "a0.npy"), a)
os.rename(DIR / "a.ome.zarr" / "1", DIR / "a.ome.zarr" / "s1")
meta["attributes"]["ome"]["multiscales"][0]["datasets"][1]["path"] = "s1"
(DIR / "a.ome.zarr" / "zarr.json").write_text(json.dumps(meta))
cw("export", DIR / "a.ome.zarr/1", "-o", DIR / "a1.npy")
assert np.array_equal(np.load(DIR / "a1.npy"), lvl1)
done.append("OME-Zarr levels as inputs")

print(f"pyramids equal numpy's ({'; '.join(done)})")
