"""Reductions and indices (spec/PYTHON.md §3; definitions in spec/REDUCE.md): stats, histogram,
where, graph, against numpy on the whole array."""
import math
from fractions import Fraction

import numpy as np
import pytest

import chunkwise as cw
from conftest import CONNECTIVITY, graph_edges, rand, store


def exact_stats(x):
    """Integer statistics exactly, with Python ints and fractions."""
    v = [int(t) for t in np.asarray(x).ravel()]
    n = len(v)
    s = sum(v)
    ss = sum(t * t for t in v)
    var = Fraction(n * ss - s * s, n * n)
    return n, s, min(v), max(v), Fraction(s, n), math.sqrt(var)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "int32", "int64", "uint32"])
def test_stats_integers(tmp, rng, dtype):
    """PYTHON §3 / REDUCE §2: count, min, max (Python ints), the exact sum (a Python int),
    mean = sum / count, population std; nan_count 0."""
    info = np.iinfo(dtype)
    x = rand(rng, (11, 9, 13), dtype, int(info.min), int(info.max) + 1)
    a, _ = store(tmp, x, (4, 4, 5))
    s = cw.stats(a)
    n, total, mn, mx, mean, std = exact_stats(x)
    assert s["count"] == n and s["nan_count"] == 0
    assert type(s["sum"]) is int and s["sum"] == total
    assert type(s["min"]) is int and type(s["max"]) is int
    assert s["min"] == mn and s["max"] == mx
    assert s["mean"] == pytest.approx(float(mean), rel=1e-15, abs=1e-300)
    assert s["std"] == pytest.approx(std, rel=1e-12)


def test_stats_uint64_exact_sum(tmp, rng):
    """REDUCE §2: uint64 values near 2^64 sum exactly (numpy's uint64 sum wraps); mean is the
    exact sum divided once; std from the exact moments."""
    x = (np.uint64(2**64 - 1) - rng.integers(0, 2**40, (7, 8, 9), dtype=np.uint64))
    x[0, 0, :3] = [0, 1, 2**63]
    a, _ = store(tmp, x, (3, 5, 4))
    s = cw.stats(a)
    n, total, mn, mx, mean, std = exact_stats(x)
    assert total > 2**64  # numpy's x.sum() wraps around
    assert int(x.sum()) != total
    assert type(s["sum"]) is int and s["sum"] == total
    assert s["min"] == mn == 0 and s["max"] == mx and type(s["max"]) is int
    assert s["mean"] == pytest.approx(float(mean), rel=1e-15)
    assert s["std"] == pytest.approx(std, rel=1e-9)


def test_stats_int64_extremes(tmp):
    """REDUCE §2: int64 at both limits: exact sum, exact min and max."""
    x = np.array([np.iinfo(np.int64).min, np.iinfo(np.int64).max, -1, 1, 0, np.iinfo(np.int64).min + 7], np.int64)
    a, _ = store(tmp, x, (4,))
    s = cw.stats(a)
    assert s["sum"] == sum(int(v) for v in x)
    assert s["min"] == -2**63 and s["max"] == 2**63 - 1


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_stats_floats_with_nan(tmp, rng, dtype):
    """REDUCE §2: NaNs counted in nan_count and excluded from the rest (numpy's nan*)."""
    x = rand(rng, (10, 12, 7), dtype, -1e3, 1e3)
    x.flat[rng.choice(x.size, 57, replace=False)] = np.nan
    a, _ = store(tmp, x, (3, 5, 4))
    s = cw.stats(a)
    v = x[~np.isnan(x)].astype(np.float64)
    assert s["count"] == v.size and s["nan_count"] == 57
    assert s["min"] == float(v.min()) and s["max"] == float(v.max())
    assert s["sum"] == pytest.approx(math.fsum(v), rel=1e-13, abs=1e-9)
    assert s["mean"] == pytest.approx(math.fsum(v) / v.size, rel=1e-12)
    assert s["std"] == pytest.approx(float(np.std(v)), rel=1e-10)


def test_stats_infinities_and_all_nan(tmp, rng):
    """REDUCE §2: +inf makes sum and mean inf and std NaN (as numpy); +inf and -inf together make
    sum NaN; no values counted gives None for min, max, mean, std."""
    x = rand(rng, (6, 7), "float64")
    x[2, 3] = np.inf
    a, _ = store(tmp, x, (4, 4))
    s = cw.stats(a)
    assert s["sum"] == np.inf and s["mean"] == np.inf and s["max"] == np.inf
    with np.errstate(invalid="ignore"):
        assert math.isnan(s["std"]) and math.isnan(float(np.std(x)))
    x[5, 6] = -np.inf
    b, _ = store(tmp, x, (4, 4), name="b.zarr")
    s = cw.stats(b)
    assert math.isnan(s["sum"]) and s["min"] == -np.inf and s["max"] == np.inf
    n, _ = store(tmp, np.full((5, 4), np.nan, np.float32), (2, 3), name="n.zarr")
    s = cw.stats(n)
    assert s["count"] == 0 and s["nan_count"] == 20
    assert s["min"] is None and s["max"] is None and s["mean"] is None and s["std"] is None


def test_stats_region(tmp, rng):
    """PYTHON §3: stats(a, region=key) reduces a[key] (basic slicing, steps 1, ints drop axes)."""
    x = rand(rng, (12, 9, 10), "int32")
    a, _ = store(tmp, x, (5, 4, 3))
    for key in [(slice(2, 9), slice(None), 3), (slice(None), slice(-4, None)), (4,),
                (Ellipsis, slice(1, 2)), (slice(0, 12), slice(0, 9), slice(0, 10))]:
        s = cw.stats(a, region=key)
        n, total, mn, mx, mean, std = exact_stats(x[key])
        assert (s["count"], s["sum"], s["min"], s["max"]) == (n, total, mn, mx), key
        assert s["std"] == pytest.approx(std, rel=1e-12)


def test_stats_absent_chunks_are_fill(tmp):
    """REDUCE §1: an absent chunk is its fill value."""
    a = cw.create(str(tmp / "e.zarr"), (9, 8), "uint16", chunks=(4, 3), fill_value=3)
    a[0:2, 0:2] = 10
    want = np.full((9, 8), 3, np.uint16)
    want[0:2, 0:2] = 10
    s = cw.stats(a)
    assert s["sum"] == int(want.sum()) and s["min"] == 3 and s["max"] == 10 and s["count"] == 72


def test_histogram_bins_range(tmp, rng):
    """PYTHON §3 / REDUCE §3: histogram(a, bins, range) is numpy.histogram exactly; values outside
    the range and NaN are not counted."""
    x = rand(rng, (10, 11, 9), "float32", -50, 150)
    x.flat[rng.choice(x.size, 13, replace=False)] = np.nan
    a, _ = store(tmp, x, (3, 4, 5))
    for bins, rng_ in [(17, (0.0, 100.0)), (1, (-60.0, 160.0)), (64, (-13.7, 42.1))]:
        counts, edges = cw.histogram(a, bins=bins, range=rng_)
        f = x[~np.isnan(x)]
        wc, we = np.histogram(f, bins=bins, range=rng_)
        assert np.array_equal(np.asarray(counts), wc), bins
        np.testing.assert_allclose(np.asarray(edges, np.float64), we.astype(np.float64), rtol=1e-7)
    y = rand(rng, (9, 8, 7), "uint16", 0, 4000)
    b, _ = store(tmp, y, (4, 3, 2), name="y.zarr")
    counts, edges = cw.histogram(b, bins=50, range=(100, 3900))
    wc, we = np.histogram(y, bins=50, range=(100, 3900))
    assert np.array_equal(np.asarray(counts), wc)
    np.testing.assert_allclose(np.asarray(edges, np.float64), we)


def test_histogram_default_float(tmp, rng):
    """REDUCE §3: floats default to 10 bins over [min, max] of the finite values (numpy's default);
    inf and NaN not counted."""
    x = rand(rng, (8, 9, 10), "float64", -5, 5)
    x[0, 0, 0] = np.inf
    x[1, 1, 1] = np.nan
    a, _ = store(tmp, x, (3, 4, 4))
    counts, edges = cw.histogram(a)
    f = x[np.isfinite(x)]
    wc, we = np.histogram(f)
    assert np.array_equal(np.asarray(counts), wc)
    np.testing.assert_allclose(np.asarray(edges), we, rtol=1e-12)
    c, e = cw.histogram(a, bins=7)  # bins alone keeps the default range
    wc, we = np.histogram(f, bins=7)
    assert np.array_equal(np.asarray(c), wc)


def test_histogram_default_integers(tmp, rng):
    """REDUCE §3: integer arrays default to one bin per value in [min, max]."""
    x = rand(rng, (9, 10, 11), "int16", -20, 35)
    a, _ = store(tmp, x, (4, 3, 5))
    counts, edges = cw.histogram(a)
    counts = np.asarray(counts)
    mn = int(x.min())
    want = np.bincount((x.astype(np.int64) - mn).ravel())
    assert np.array_equal(counts, want)
    edges = np.asarray(edges, np.float64)
    assert len(edges) == len(counts) + 1 and np.all(np.diff(edges) > 0)
    # value v falls in bin v - min
    for i, v in enumerate(range(mn, int(x.max()) + 1)):
        assert edges[i] <= v and (v < edges[i + 1] or i == len(counts) - 1)
    assert counts.sum() == x.size


@pytest.mark.parametrize("sel", ["nonzero", "above", "below", "both"])
def test_where(tmp, rng, sel):
    """PYTHON §3 / REDUCE §4: where is numpy.argwhere of a != 0, a > above, a < below or both;
    int64 (N, ndim) in C order."""
    x = rand(rng, (11, 10, 9), "uint16", 0, 100)
    x[x < 30] = 0
    a, _ = store(tmp, x, (4, 3, 5))
    kw, m = {"nonzero": ({}, x != 0), "above": ({"above": 70}, x > 70),
             "below": ({"below": 20}, x < 20), "both": ({"above": 40, "below": 60}, (x > 40) & (x < 60))}[sel]
    got = cw.where(a, **kw)
    want = np.argwhere(m)
    assert isinstance(got, np.ndarray) and got.dtype == np.int64 and got.shape == want.shape
    assert np.array_equal(got, want)


def test_where_out_npy(tmp, rng):
    """PYTHON §3: where(out=path) streams the coordinates to a .npy and returns the path."""
    x = rand(rng, (9, 12, 10), "float32")
    x.flat[rng.choice(x.size, 9, replace=False)] = np.nan  # NaN is nonzero
    a, _ = store(tmp, x, (4, 5, 3))
    p = str(tmp / "c.npy")
    r = cw.where(a, out=p)
    assert str(r) == p
    got = np.load(p)
    assert got.dtype == np.int64 and np.array_equal(got, np.argwhere(x != 0))
    p2 = str(tmp / "c2.npy")
    cw.where(a, above=50.5, out=p2)
    assert np.array_equal(np.load(p2), np.argwhere(x > np.float32(50.5)))


def test_where_empty_and_bounds_exact(tmp):
    """REDUCE §4: no selection gives (0, ndim); integer bounds are exact for uint64; decimal bounds
    on integers compare as numpy does."""
    x = np.array([2**53, 2**53 + 1, 2**53 + 2, 2**64 - 1, 2**64 - 2, 2**63, 5, 0], np.uint64)
    a, _ = store(tmp, x, (3,))
    assert len(cw.where(a, above=2**53 + 1)) == 4
    assert len(cw.where(a, below=2**53 + 1)) == 3
    assert np.array_equal(cw.where(a, above=2**53 + 1), np.argwhere(x > 2**53 + 1))
    y = np.arange(24, dtype=np.int16).reshape(2, 3, 4) - 12
    b, _ = store(tmp, y, (1, 2, 3), name="b.zarr")
    assert np.array_equal(cw.where(b, above=2.5), np.argwhere(y > 2.5))
    assert np.array_equal(cw.where(b, below=-3.5), np.argwhere(y < -3.5))
    e = cw.where(b, above=100)
    assert e.shape == (0, 3) and e.dtype == np.int64


@pytest.mark.parametrize("nd,shape,chunks", [(3, (7, 8, 6), (3, 3, 4)), (2, (13, 11), (4, 5)),
                                             (1, (30,), (7,)), (4, (4, 5, 3, 6), (2, 3, 2, 4))])
def test_graph_every_connectivity(tmp, rng, nd, shape, chunks):
    """PYTHON §3 / REDUCE §5: edges (i, j), i < j, of flat indices between adjacent selected
    voxels, for each connectivity of the rank and the default (full), across chunk borders."""
    m = rng.random(shape) < 0.45
    x = (m * rng.integers(1, 9, shape)).astype(np.uint8)
    a, _ = store(tmp, x, chunks)
    got = cw.graph(a)
    want = graph_edges(m)
    assert isinstance(got, np.ndarray) and got.dtype == np.int64 and got.shape == want.shape
    assert np.array_equal(got, want)
    for conn, k in CONNECTIVITY[nd].items():
        got = cw.graph(a, connectivity=conn)
        assert np.array_equal(got, graph_edges(m, k)), conn


def test_graph_coords_above_out(tmp, rng):
    """PYTHON §3 / REDUCE §5: coords=True gives (E, 2*ndim), the two voxels' coordinates;
    above= selects x > above; out= writes a .npy and returns its path."""
    x = rand(rng, (8, 7, 9), "uint16", 0, 1000)
    a, _ = store(tmp, x, (3, 4, 4))
    m = x > 600
    got = cw.graph(a, above=600, connectivity=6, coords=True)
    assert got.dtype == np.int64
    assert np.array_equal(got, graph_edges(m, 1, coords=True))
    p = str(tmp / "e.npy")
    r = cw.graph(a, above=600, out=p)
    assert str(r) == p
    assert np.array_equal(np.load(p), graph_edges(m))


def test_reductions_accept_paths(tmp, rng):
    """PYTHON §3: a path is an input like an opened Array."""
    x = rand(rng, (6, 7, 8), "uint8", 0, 3)
    _, p = store(tmp, x, (4, 4, 4))
    assert cw.stats(p)["sum"] == int(x.sum())
    assert np.array_equal(cw.where(p), np.argwhere(x))
    assert np.array_equal(cw.graph(p, connectivity=18), graph_edges(x != 0, 2))
    assert np.array_equal(np.asarray(cw.histogram(p)[0]), np.bincount(x.ravel() - x.min()))


REDUCE_OPS = ["sum", "mean", "std", "var", "min", "max", "count_nonzero", "any", "all", "argmin",
              "argmax", "nansum", "nanmean", "nanstd", "nanvar", "nanmin", "nanmax"]


def numpy_reduce(x, op, axis, ddof):
    f = getattr(np, op)
    kw = {"ddof": ddof} if op in ("std", "var", "nanstd", "nanvar") else {}
    with np.errstate(all="ignore"):
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.asarray(f(x, axis=axis, **kw))


@pytest.mark.parametrize("dtype", ["uint16", "int32", "float32", "float64", "bool"])
@pytest.mark.parametrize("axis", [0, 1, -1, (0, 2), (1, 2), None])
def test_reduce_vs_numpy(tmp, rng, dtype, axis):
    """PYTHON §3 cw.reduce: every op along an axis, a tuple of axes or all, in one pass, equal to
    numpy's (values, result types, shapes); NaNs as numpy treats them (nan* ops skip them,
    argmin/argmax take the first NaN)."""
    x = rand(rng, (9, 8, 7), dtype)
    if x.dtype.kind == "f":
        x.flat[rng.choice(x.size, 25, replace=False)] = np.nan
        x[3, :, 2] = np.nan  # an all-NaN line for the nan* ops
    a, _ = store(tmp, x, (4, 3, 5))
    ops = [o for o in REDUCE_OPS if not (o in ("argmin", "argmax") and not isinstance(axis, int))]
    if x.dtype == np.bool_:
        ops = [o for o in ops if o not in ("std", "var", "nanstd", "nanvar", "mean", "nanmean")]
    for ddof in (0, 1):
        got = cw.reduce(a, ops, axis=axis, ddof=ddof)
        assert set(got) == set(ops)
        for op in ops:
            want = numpy_reduce(x, op, axis, ddof)
            g = np.asarray(got[op])
            assert g.shape == want.shape, (op, g.shape, want.shape)
            assert g.dtype == want.dtype, (op, g.dtype, want.dtype)
            if want.dtype.kind == "f":
                tol = 1e-5 if want.dtype == np.float32 else 1e-11
                np.testing.assert_allclose(g, want, rtol=tol, atol=tol * 100, equal_nan=True, err_msg=op)
            else:
                assert np.array_equal(g, want), op


def test_reduce_exact_integer_sum_and_paths(tmp, rng):
    """PYTHON §3 cw.reduce: integer sums exact (int64 near its limits, as numpy's uint64/int64
    result where it does not overflow); a path is an input."""
    x = rng.integers(2**40, 2**41, (6, 5, 4), dtype=np.int64)
    _, p = store(tmp, x, (2, 2, 3))
    r = cw.reduce(p, ("sum", "max", "mean"), axis=(0, 1))
    assert np.array_equal(r["sum"], x.sum(axis=(0, 1)))
    assert np.array_equal(r["max"], x.max(axis=(0, 1)))
    want = np.array([float(sum(int(v) for v in x[:, :, k].ravel())) / 30 for k in range(4)])
    np.testing.assert_allclose(r["mean"], want, rtol=1e-15)


def test_histogram_of_an_empty_range_is_widened_as_numpy_does(tmp, rng):
    """PYTHON §3: range=(v, v) is numpy's v-0.5..v+0.5."""
    x = rng.integers(3, 8, (9, 7, 5)).astype(np.uint16)
    a = cw.from_array(x, str(tmp / "h.zarr"), chunks=(4, 4, 4))
    counts, edges = cw.histogram(a, bins=4, range=(5, 5))
    want_c, want_e = np.histogram(x, bins=4, range=(5, 5))
    assert np.array_equal(counts, want_c) and np.allclose(edges, want_e)


def test_reduce_runs_the_native_pass(tmp, rng, monkeypatch):
    """REDUCE §7: cw.reduce hands the ops chunkwise's own pass has to it (one read of every
    chunk, tiles in parallel); nanvar and a memory= budget keep the layer-by-layer pass."""
    import chunkwise._reduce as r
    calls = []
    native = r._chunkwise.reduce_axes

    def spy(*a, **k):
        calls.append(a[2])
        return native(*a, **k)
    monkeypatch.setattr(r._chunkwise, "reduce_axes", spy)
    x = rand(rng, (9, 8, 7), "uint16")
    a, _ = store(tmp, x, (4, 3, 5))
    got = cw.reduce(a, ("max", "mean"), axis=0)
    assert calls == [["max", "mean"]]
    assert np.array_equal(got["max"], x.max(axis=0))
    got = cw.reduce(a, ("nanvar",), axis=0)
    assert len(calls) == 1
    np.testing.assert_allclose(got["nanvar"], np.nanvar(x, axis=0), rtol=1e-12)
