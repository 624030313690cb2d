"""The numpy oracle of OME-Zarr pyramids (spec/PYRAMID.md), shared by check_pyramid.py and
check_pyramid_append.py: `block_reduce` is the definition of a level from the level above
(edge blocks reduce the voxels present), `check` reads every level of an image and compares
it with numpy from the source, checks the metadata against the spec, and opens the image in
three readers (`ome-zarr-models validate`, ome-zarr-py's `ome_zarr.reader`, ngff-zarr's
`from_ngff_zarr`), each listing the same levels, scales and shapes.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import zarr

BINDIR = Path(sys.executable).parent


def gaussian_matrix(n, f):
    """The gaussian level along one axis of length `n` as a matrix (spec/PYRAMID.md §2): row i
    the Gaussian of sigma f / 3 centred on block i's centre i f + (f - 1) / 2, over the voxels
    within scipy's radius int(4 sigma + 0.5), reflected at the edges (scipy's `reflect`),
    normalised. Factor 1 is the identity."""
    if f == 1:
        return np.eye(n)
    sigma, out = f / 3, -(-n // f)
    radius = np.floor(4 * sigma + 0.5)
    m = np.zeros((out, n))
    for i in range(out):
        c = i * f + (f - 1) / 2
        for j in range(int(np.ceil(c - radius)), int(np.floor(c + radius)) + 1):
            k = j % (2 * n)
            m[i, 2 * n - 1 - k if k >= n else k] += np.exp(-0.5 * ((j - c) / sigma) ** 2)
        m[i] /= m[i].sum()
    return m


def gaussian_level(a, f):
    """The gaussian level of `a` (float64), the axes' matrices applied in order; for odd
    factors it is checked against scipy.ndimage.gaussian_filter sampled at the block centres
    (scipy has no half-voxel centres for even ones)."""
    x = a.astype(np.float64)
    for ax, k in enumerate(f):
        x = np.moveaxis(np.tensordot(gaussian_matrix(x.shape[ax], k), np.moveaxis(x, ax, 0),
                                     axes=(1, 0)), 0, ax)
    if all(k % 2 == 1 for k in f):
        from scipy import ndimage
        sc = ndimage.gaussian_filter(a.astype(np.float64), sigma=[k / 3 if k > 1 else 0 for k in f],
                                     mode="reflect", truncate=4.0)
        sc = sc[tuple(slice((k - 1) // 2, None, k) for k in f)]
        inner = tuple(slice(0, n) for n in sc.shape)
        assert np.allclose(x[inner], sc, rtol=0, atol=1e-9 * max(1, np.abs(sc).max())), \
            "the gaussian oracle disagrees with scipy"
    return x


def block_reduce(a, f, method):
    """numpy's reduction of every block of `f` (edge blocks partial): the definition."""
    if method == "gaussian":
        g = gaussian_level(a, f)
        if np.issubdtype(a.dtype, np.integer):
            info = np.iinfo(a.dtype)
            return np.clip(np.rint(g), info.min, info.max).astype(a.dtype)
        return g.astype(a.dtype)
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
