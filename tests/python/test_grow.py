"""Growing and views (spec/PYTHON.md §4; spec/APPEND.md): append, concat, stack and the lazy
views, against numpy.concatenate / numpy.stack, read back by chunkwise and zarr-python."""
import json
import os

import numpy as np
import pytest
import scipy.ndimage as ndi
import zarr

import chunkwise as cw
from conftest import random_key, rand, store


def zarr_read(p):
    """zarr-python's view of a store (rectilinear grids enabled, APPEND §3.2)."""
    with zarr.config.set({"array.rectilinear_chunks": True}):
        return zarr.open_array(p, mode="r")[...]


def same(got, want):
    got = np.asarray(got)
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, got.dtype, want.shape, want.dtype)
    assert np.array_equal(got, want)


def test_append_numpy(tmp, rng):
    """PYTHON §4 a.append(x): returns a with its new shape; the store equals np.concatenate
    (a partial edge layer first, then a second append onto it); a row with one axis fewer."""
    x0 = rand(rng, (10, 6, 5), "uint16")
    a, p = store(tmp, x0, (4, 3, 2))
    x1 = rand(rng, (7, 6, 5), "uint16")
    r = a.append(x1)
    assert r.shape == (17, 6, 5) and a.shape == (17, 6, 5)
    want = np.concatenate([x0, x1])
    same(a[...], want)
    same(cw.open(p)[...], want)
    same(zarr_read(p), want)
    x2 = rand(rng, (6, 5), "uint16")
    a.append(x2)
    want = np.concatenate([want, x2[None]])
    assert a.shape == (18, 6, 5)
    same(a[...], want)
    same(zarr_read(p), want)
    assert cw.open(p).shape == (18, 6, 5)


def test_append_axis(tmp, rng):
    """PYTHON §4 a.append(x, axis=1)."""
    x0 = rand(rng, (5, 7, 4), "float32")
    a, p = store(tmp, x0, (2, 3, 3))
    x1 = rand(rng, (5, 4, 4), "float32")
    a.append(x1, axis=1)
    want = np.concatenate([x0, x1], axis=1)
    assert a.shape == want.shape
    same(a[...], want)
    same(zarr_read(p), want)


def test_append_array_and_paths(tmp, rng):
    """PYTHON §4 a.append(x): x an Array (a store: concat --into), a store path, a .npy path."""
    x0 = rand(rng, (9, 5, 6), "int32")
    a, p = store(tmp, x0, (4, 2, 3))
    x1 = rand(rng, (6, 5, 6), "int32")
    b, pb = store(tmp, x1, (4, 2, 3), name="b.zarr")
    a.append(b)
    want = np.concatenate([x0, x1])
    same(a[...], want)
    same(zarr_read(p), want)
    same(b[...], x1)  # the input is unchanged
    x2 = rand(rng, (3, 5, 6), "int32")
    _, pc = store(tmp, x2, (4, 2, 3), name="c.zarr")
    a.append(pc)
    want = np.concatenate([want, x2])
    same(a[...], want)
    x3 = rand(rng, (5, 5, 6), "int32")
    np.save(tmp / "d.npy", x3)
    a.append(str(tmp / "d.npy"))
    want = np.concatenate([want, x3])
    assert a.shape == want.shape
    same(a[...], want)
    same(zarr_read(p), want)


def test_append_to_empty_and_random_sizes(tmp, rng):
    """PYTHON §4: a sequence of appends of random sizes (1 to 9 rows) onto chunks of 4 equals the
    concatenation; the store stays readable by zarr-python after each."""
    a, p = store(tmp, rand(rng, (3, 4, 3), "uint8"), (4, 3, 2))
    want = a[...]
    for _ in range(6):
        x = rand(rng, (int(rng.integers(1, 10)), 4, 3), "uint8")
        a.append(x)
        want = np.concatenate([want, x])
        same(a[...], want)
        same(zarr_read(p), want)


@pytest.mark.parametrize("layout", ["auto", "regular", "rectilinear"])
def test_concat_out(tmp, rng, layout):
    """PYTHON §4 cw.concat(arrays, out=, layout=): a new store equal to np.concatenate (inputs
    as Arrays and as paths, partial edge layers in the middle); the inputs unchanged."""
    xs = [rand(rng, (n, 6, 7), "uint16") for n in (10, 7, 5)]
    arrs = [store(tmp, x, (4, 3, 3), name="%d.zarr" % i) for i, x in enumerate(xs)]
    out = str(tmp / "o.zarr")
    r = cw.concat([arrs[0][0], arrs[1][1], arrs[2][0]], out=out, layout=layout)
    want = np.concatenate(xs)
    assert r.shape == want.shape
    same(r[...], want)
    same(cw.open(out)[...], want)
    same(zarr_read(out), want)
    for (a, _), x in zip(arrs, xs):
        same(a[...], x)
    if layout == "regular":
        meta = json.load(open(os.path.join(out, "zarr.json")))
        assert meta["chunk_grid"]["name"] == "regular"


def test_concat_axis(tmp, rng):
    """PYTHON §4 cw.concat(axis=2)."""
    xs = [rand(rng, (5, 4, n), "float64") for n in (6, 3)]
    arrs = [store(tmp, x, (2, 3, 3), name="%d.zarr" % i)[0] for i, x in enumerate(xs)]
    r = cw.concat(arrs, out=str(tmp / "o.zarr"), axis=2)
    same(r[...], np.concatenate(xs, axis=2))


def test_concat_into(tmp, rng):
    """PYTHON §4 cw.concat(arrays, into=A): A grows in place to np.concatenate([A, *arrays])."""
    x0 = rand(rng, (10, 5, 4), "int16")
    x1 = rand(rng, (6, 5, 4), "int16")
    x2 = rand(rng, (8, 5, 4), "int16")
    a, pa = store(tmp, x0, (4, 5, 3))
    _, p1 = store(tmp, x1, (4, 5, 3), name="b.zarr")
    b2, _ = store(tmp, x2, (4, 5, 3), name="c.zarr")
    cw.concat([p1, b2], into=a)
    want = np.concatenate([x0, x1, x2])
    same(cw.open(pa)[...], want)
    same(zarr_read(pa), want)
    same(cw.open(p1)[...], x1)


def test_concat_move(tmp, rng):
    """PYTHON §4 cw.concat(move=True): the inputs are removed after the commit."""
    xs = [rand(rng, (8, 4, 4), "uint8") for _ in range(2)]
    ps = [store(tmp, x, (4, 4, 4), name="%d.zarr" % i)[1] for i, x in enumerate(xs)]
    out = str(tmp / "o.zarr")
    cw.concat(ps, out=out, move=True)
    same(cw.open(out)[...], np.concatenate(xs))
    assert not any(os.path.exists(p) for p in ps)


def test_stack(tmp, rng):
    """PYTHON §4 cw.stack(arrays, out): np.stack, chunk length 1 along the new axis."""
    xs = [rand(rng, (7, 5, 6), "float32") for _ in range(3)]
    arrs = [store(tmp, x, (3, 2, 4), name="%d.zarr" % i) for i, x in enumerate(xs)]
    out = str(tmp / "s.zarr")
    r = cw.stack([arrs[0][0], arrs[1][1], arrs[2][0]], out)
    want = np.stack(xs)
    assert r.shape == (3, 7, 5, 6) and tuple(r.chunks) == (1, 3, 2, 4)
    same(r[...], want)
    same(zarr_read(out), want)


def test_views_read_as_numpy(tmp, rng):
    """PYTHON §4 cw.view.concat / stack / slice / cast: lazy arrays (path None) whose reads,
    random basic-indexing keys included, equal numpy's on the same data; a .npy part too."""
    x0 = rand(rng, (7, 6, 5), "uint16")
    x1 = rand(rng, (4, 6, 5), "uint16")
    a, _ = store(tmp, x0, (3, 4, 2))
    np.save(tmp / "b.npy", x1)
    b = cw.open(str(tmp / "b.npy"))
    c = cw.view.concat([a, b], axis=0)
    assert c.path is None and c.shape == (11, 6, 5) and c.dtype == np.uint16
    cat = np.concatenate([x0, x1])
    same(c[...], cat)
    same(np.asarray(c), cat)
    for _ in range(100):
        key = random_key(rng, cat.shape)
        assert np.array_equal(np.asarray(c[key]), cat[key]), key
    s = cw.view.stack([a, cw.view.slice(c, (slice(2, 9),))], axis=1)
    st = np.stack([x0, cat[2:9]], axis=1)
    assert s.shape == st.shape
    same(s[...], st)
    sl = cw.view.slice(c, (slice(1, 10), 2, slice(-3, None)))
    same(sl[...], cat[1:10, 2, -3:])
    f = cw.view.cast(sl, "float32")
    assert f.dtype == np.float32
    same(f[...], cat[1:10, 2, -3:].astype(np.float32))
    same(cw.view.concat([x for x in (a, a, b)], axis=0)[...], np.concatenate([x0, x0, x1]))
    same(cw.view.concat([a, cw.view.cast(b, "uint16")], axis=0)[2:9, ::2], cat[2:9, ::2])


def test_views_as_compute_inputs(tmp, rng):
    """PYTHON §4: views are inputs anywhere: gaussian, map_overlap, stats, where, histogram and
    the sources of a store (convert / from_array of np.asarray)."""
    x0 = rand(rng, (6, 9, 8), "uint16")
    x1 = rand(rng, (5, 9, 8), "uint16")
    a, _ = store(tmp, x0, (4, 4, 3))
    b, _ = store(tmp, x1, (3, 5, 4), name="b.zarr")
    v = cw.view.concat([a, b])
    cat = np.concatenate([x0, x1]).astype(np.float64)
    g = cw.gaussian(v, str(tmp / "g.zarr"), 1.2, mode="wrap")
    err = np.abs(g[...] - ndi.gaussian_filter(cat, 1.2, mode="wrap")).max()
    assert err <= 1e-4 * cat.max()
    f = cw.view.cast(v, "float64")
    m = cw.map_overlap(lambda blk: ndi.uniform_filter(blk, 3, mode="mirror"), f,
                       out=str(tmp / "m.zarr"), depth=1, boundary="mirror")
    np.testing.assert_allclose(m[...], ndi.uniform_filter(cat, 3, mode="mirror"), rtol=1e-12)
    s = cw.stats(v)
    assert s["sum"] == int(x0.sum(dtype=np.int64)) + int(x1.sum(dtype=np.int64))
    assert np.array_equal(cw.where(v, above=900), np.argwhere(cat > 900))
    sl = cw.view.slice(v, (slice(3, 9), slice(1, 8)))
    assert np.array_equal(cw.where(sl, above=500), np.argwhere(cat[3:9, 1:8] > 500))


def test_view_is_not_written(tmp, rng):
    """PYTHON §1 and §4: views are never written: a write is refused and the parts are unchanged."""
    x = rand(rng, (5, 4, 3), "uint8")
    a, _ = store(tmp, x, (2, 2, 2))
    v = cw.view.concat([a, a])
    with pytest.raises((cw.Error, TypeError, ValueError)):
        v[0:2] = 1
    same(a[...], x)


def test_append_in_parts(tmp, rng):
    """SCALE §1 a.append(path, partition=(i, n)): the array keeps its shape and values until
    the last part, then equals np.concatenate (and zarr-python reads it); along axis 1 too."""
    for axis in (0, 1):
        x0 = rand(rng, (10, 9, 5), "uint16")
        a, p = store(tmp, x0, (4, 4, 5), name=f"a{axis}.zarr")
        x1 = rand(rng, (13, 9, 5) if axis == 0 else (10, 11, 5), "uint16")
        src = os.path.join(tmp, f"new{axis}.npy")
        np.save(src, x1)
        for i in (2, 0):
            a.append(src, axis=axis, partition=(i, 3))
            assert cw.open(p).shape == x0.shape
            same(cw.open(p)[...], x0)
        a.append(src, axis=axis, partition=(1, 3))
        want = np.concatenate([x0, x1], axis=axis)
        assert a.shape == want.shape
        same(cw.open(p)[...], want)
        same(zarr_read(p), want)
        with pytest.raises(cw.InvalidOptionError, match="partition"):
            a.append(src, axis=axis, partition=(3, 3))
