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

BIN, DIR = Path(sys.argv[1]), Path(sys.argv[2])
BINDIR = Path(sys.executable).parent


def cw(*args):
    r = subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"chunkwise {' '.join(map(str, args))} failed:\n{r.stderr}")
    return r.stdout


def block_reduce(a, f, method):
    """numpy's reduction of every block of `f` (edge blocks partial): the definition."""
    if method == "nearest":
        return a[tuple(slice(None, None, k) for k in f)]
    starts = [np.arange(0, n, k) for n, k in zip(a.shape, f)]
    if method in ("min", "max"):
        ufunc = np.minimum if method == "min" else np.maximum
        out = a
        for ax, s in enumerate(starts):
            out = ufunc.reduceat(out, s, axis=ax)
        return out
    if method == "mean":
        total = a.astype(np.float64)
        count = np.ones(a.shape, dtype=np.float64)
        for ax, s in enumerate(starts):
            total = np.add.reduceat(total, s, axis=ax)
            count = np.add.reduceat(count, s, axis=ax)
        m = total / count
        if np.issubdtype(a.dtype, np.integer):
            info = np.iinfo(a.dtype)
            return np.clip(np.rint(m), info.min, info.max).astype(a.dtype)
        return m.astype(a.dtype)
    if method == "mode":
        out_shape = tuple(-(-n // k) for n, k in zip(a.shape, f))
        out = np.empty(out_shape, dtype=a.dtype)
        for o in np.ndindex(out_shape):
            block = a[tuple(slice(i * k, (i + 1) * k) for i, k in zip(o, f))].ravel()
            vals, counts = np.unique(block, return_counts=True)  # sorted: ties -> smallest
            out[o] = vals[np.argmax(counts)]
        return out
    raise ValueError(method)


def check(image, source, method, centred=True, axes=None):
    """Every level of `image` against numpy from `source`; metadata; three readers."""
    meta = json.loads((image / "zarr.json").read_text())
    ms = meta["attributes"]["ome"]["multiscales"][0]
    assert meta["attributes"]["ome"]["version"] == "0.5", meta
    assert ms["type"] == method, ms["type"]
    names = [a["name"] for a in ms["axes"]]
    if axes is not None:
        assert names == axes, (names, axes)
    ref = source
    prev_scale, prev_tr = None, None
    levels = []
    for i, d in enumerate(ms["datasets"]):
        assert d["path"] == str(i), d
        ts = d["coordinateTransformations"]
        assert ts[0]["type"] == "scale" and len([t for t in ts if t["type"] == "scale"]) == 1, ts
        scale = np.array(ts[0]["scale"])
        tr = np.array(ts[1]["translation"]) if len(ts) > 1 else np.zeros(len(scale))
        arr = zarr.open_array(str(image / d["path"]), mode="r")
        assert list(arr.metadata.dimension_names) == names, arr.metadata.dimension_names
        got = arr[...]
        if i > 0:
            f = np.rint(scale / prev_scale).astype(int)
            assert np.allclose(f * prev_scale, scale), (scale, prev_scale)
            ref = block_reduce(ref, f, method)
            want_tr = prev_tr + ((f - 1) / 2 * prev_scale if centred else 0)
            assert np.allclose(tr, want_tr), (i, tr, want_tr)
            if not centred:
                assert len(ts) == 1, ts
        assert got.dtype == source.dtype, (got.dtype, source.dtype)
        assert got.shape == ref.shape, (i, got.shape, ref.shape)
        if not np.array_equal(got, ref, equal_nan=got.dtype.kind == "f"):
            bad = np.argwhere(got != ref)[:5]
            raise SystemExit(
                f"{image} level {i} ({method}) differs from numpy at {bad.tolist()}: "
                f"{got[tuple(bad[0])]} vs {ref[tuple(bad[0])]}"
            )
        levels.append((got.shape, scale.tolist(), tr.tolist()))
        prev_scale, prev_tr = scale, tr
    # The readers.
    r = subprocess.run(
        [str(BINDIR / "ome-zarr-models"), "validate", str(image)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and "Valid" in r.stdout, (r.stdout, r.stderr)
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    node = list(Reader(parse_url(str(image)))())[0]
    assert [tuple(x.shape) for x in node.data] == [s for s, _, _ in levels], node.data
    cts = node.metadata["coordinateTransformations"]
    assert [c[0]["scale"] for c in cts] == [sc for _, sc, _ in levels], cts
    import ngff_zarr

    m = ngff_zarr.from_ngff_zarr(str(image))
    assert [tuple(x.data.shape) for x in m.images] == [s for s, _, _ in levels]
    for x, (_, sc, tr) in zip(m.images, levels):
        assert [x.scale[n] for n in names] == sc, (x.scale, sc)
        assert np.allclose([x.translation[n] for n in names], tr), (x.translation, tr)
    return len(levels)


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
