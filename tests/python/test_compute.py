"""Compute (spec/PYTHON.md §2; definitions in spec/COMPUTE.md): gaussian, correlate1d, lut,
threshold, neighbourhood_lut, map_overlap and map_blocks, each against numpy/scipy on the whole
array in memory. Halos are deeper than the chunks, so blocks reach beyond their neighbours."""
import functools
import os

import numpy as np
import pytest
import scipy.ndimage as ndi
import zarr

import chunkwise as cw
from conftest import (chunk_boxes, gaussian_radius, n_chunks, neighbourhood_index, rand,
                      store)

MODES = ["reflect", "nearest", "mirror", "wrap", "constant"]


def close_f32(got, want, scale):
    """COMPUTE §3: float32 output within 1e-4 x max|input| of scipy's float64 result."""
    got = np.asarray(got)
    assert got.shape == want.shape
    err = float(np.max(np.abs(got.astype(np.float64) - want)))
    assert err <= 1e-4 * scale, "max |error| %g > %g" % (err, 1e-4 * scale)


def close_f64(got, want):
    got = np.asarray(got)
    assert got.shape == want.shape and got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * max(1.0, float(np.max(np.abs(want)))))


def check_output(r, path, shape, dtype):
    """PYTHON §2: every function writes a store at out and returns it opened."""
    assert os.path.abspath(os.fspath(r.path)) == os.path.abspath(path)
    assert r.shape == shape and r.dtype == np.dtype(dtype)
    z = zarr.open_array(path, mode="r")
    assert z.shape == shape and z.dtype == np.dtype(dtype)
    return z[...]


@pytest.mark.parametrize("mode", MODES)
def test_gaussian_vs_scipy(tmp, rng, mode):
    """PYTHON §2 cw.gaussian / COMPUTE §2-§3: every boundary mode (constant with a cval), uint16
    input, float32 output, radius 6 on chunks of 3-5; vs scipy.ndimage.gaussian_filter."""
    x = rand(rng, (12, 11, 10), "uint16")
    a, _ = store(tmp, x, (5, 4, 3))
    cval = 37.5 if mode == "constant" else 0.0
    out = str(tmp / "g.zarr")
    r = cw.gaussian(a, out, 1.5, mode=mode, cval=cval)
    want = ndi.gaussian_filter(x.astype(np.float64), 1.5, truncate=4.0, mode=mode, cval=cval)
    got = check_output(r, out, x.shape, np.float32)
    close_f32(got, want, max(float(x.max()), abs(cval)))
    close_f32(r[...], want, max(float(x.max()), abs(cval)))


@pytest.mark.parametrize("mode", MODES)
def test_gaussian_per_axis_sigma_float64(tmp, rng, mode):
    """PYTHON §2 cw.gaussian: one sigma per axis (one of radius 0: left as is), truncate, dtype=
    float64 on float64 input; vs scipy within 1e-12."""
    x = rand(rng, (9, 10, 11), "float64")
    a, _ = store(tmp, x, (4, 3, 5))
    sigma = (1.2, 0.1, 2.0)
    cval = -4.25 if mode == "constant" else 0.0
    r = cw.gaussian(a, str(tmp / "g.zarr"), sigma, truncate=3.0, mode=mode, cval=cval, dtype="float64")
    want = ndi.gaussian_filter(x, sigma, truncate=3.0, mode=mode, cval=cval)
    close_f64(r[...], want)


def test_gaussian_halo_deeper_than_array(tmp, rng):
    """COMPUTE §2: halos deeper than the array continue the pattern (radius 12 on 6x5x7,
    chunks of 1 and 2 on two axes, so blocks span the whole array several times), every mode."""
    x = rand(rng, (6, 5, 7), "float32")
    a, _ = store(tmp, x, (2, 1, 7))
    for mode in MODES:
        r = cw.gaussian(a, str(tmp / ("g-%s.zarr" % mode)), 3.0, mode=mode, cval=2.0)
        want = ndi.gaussian_filter(x.astype(np.float64), 3.0, mode=mode, cval=2.0)
        close_f32(r[...], want, 100.0)


def test_gaussian_options(tmp, rng):
    """PYTHON §2 common keywords: chunks=, codec=, level=, threads=, memory= give the same
    values; the output has the chunks asked for."""
    x = rand(rng, (10, 12, 9), "int16")
    a, _ = store(tmp, x, (3, 5, 4))
    want = ndi.gaussian_filter(x.astype(np.float64), 1.0)
    r = cw.gaussian(a, str(tmp / "g1.zarr"), 1.0, chunks=(4, 4, 4), codec="zstd", level=5,
                    threads=1, memory="64MiB")
    assert tuple(r.chunks) == (4, 4, 4)
    close_f32(r[...], want, 500)
    r2 = cw.gaussian(str(tmp / "a.zarr"), str(tmp / "g2.zarr"), 1.0, threads=2, memory=1 << 26)
    assert tuple(r2.chunks) == (3, 5, 4)
    assert np.array_equal(r2[...], r[...])  # bit-identical whatever the chunking (COMPUTE §1)


def _gauss(sigma, mode, cval=0.0):
    return functools.partial(ndi.gaussian_filter, sigma=sigma, truncate=4.0, mode=mode, cval=cval)


@pytest.mark.parametrize("mode", MODES)
def test_map_overlap_scipy_gaussian(tmp, rng, mode):
    """PYTHON §2 map_overlap: scipy.ndimage.gaussian_filter on blocks grown by its radius
    (int(truncate*sigma+0.5)) with the same boundary equals gaussian_filter on the whole array,
    for every mode (a number for constant)."""
    x = rand(rng, (12, 10, 11), "float64")
    a, _ = store(tmp, x, (5, 3, 4))
    sigma = 1.3
    depth = gaussian_radius(sigma)
    boundary = 2.5 if mode == "constant" else mode
    cval = 2.5 if mode == "constant" else 0.0
    out = str(tmp / "m.zarr")
    r = cw.map_overlap(_gauss(sigma, mode, cval), a, out=out, depth=depth, boundary=boundary)
    want = ndi.gaussian_filter(x, sigma, mode=mode, cval=cval)
    got = check_output(r, out, x.shape, np.float64)
    close_f64(got, want)


def test_map_overlap_constant_zero_and_per_axis_depth(tmp, rng):
    """PYTHON §2 map_overlap: boundary="constant" is 0; depth one per axis (0 on an axis the
    filter does not touch)."""
    x = rand(rng, (9, 12, 10), "float32")
    a, _ = store(tmp, x, (4, 5, 3))
    sigma = (1.0, 0.0, 0.6)
    depth = tuple(gaussian_radius(s) for s in sigma)
    assert depth == (4, 0, 2)
    f = functools.partial(ndi.gaussian_filter, sigma=sigma, mode="constant", cval=0.0)
    r = cw.map_overlap(f, a, out=str(tmp / "m.zarr"), depth=depth, boundary="constant")
    assert r.dtype == np.float32
    want = ndi.gaussian_filter(x, sigma, mode="constant", cval=0.0)
    np.testing.assert_allclose(r[...], want, rtol=1e-5, atol=1e-4)


def test_map_overlap_trim_false(tmp, rng):
    """PYTHON §2 map_overlap trim=False: func returns the output chunk itself."""
    x = rand(rng, (11, 9, 10), "float64")
    a, _ = store(tmp, x, (4, 4, 3))
    d = 3

    def f(b):
        return ndi.uniform_filter(b, size=2 * d + 1, mode="nearest")[d:-d, d:-d, d:-d]

    r = cw.map_overlap(f, a, out=str(tmp / "t.zarr"), depth=d, boundary="nearest", trim=False)
    close_f64(r[...], ndi.uniform_filter(x, size=2 * d + 1, mode="nearest"))


def test_map_overlap_dtype_and_cast(tmp, rng):
    """PYTHON §2: dtype= sets the output type; a float64 result is cast to float32 (same_kind)."""
    x = rand(rng, (8, 9, 7), "uint16")
    a, _ = store(tmp, x, (3, 4, 3))
    f = _gauss(1.0, "mirror")
    r = cw.map_overlap(lambda b: f(b.astype(np.float64)), a, out=str(tmp / "m.zarr"),
                       depth=4, boundary="mirror", dtype=np.float32)
    assert r.dtype == np.float32
    close_f32(r[...], ndi.gaussian_filter(x.astype(np.float64), 1.0, mode="mirror"), float(x.max()))


def test_map_overlap_several_inputs(tmp, rng):
    """PYTHON §2 map_overlap(func, *inputs): func(*blocks) gets one block per input (inputs with
    different chunkings and types), the output typed like the first input."""
    x = rand(rng, (10, 11, 9), "float64")
    m = rand(rng, (10, 11, 9), "uint8", 0, 2)
    y = rand(rng, (10, 11, 9), "int32")
    a, _ = store(tmp, x, (4, 3, 5), name="x.zarr")
    b, _ = store(tmp, m, (3, 5, 2), name="m.zarr")
    c, _ = store(tmp, y, (10, 11, 9), name="y.zarr")
    seen = []

    def f(p, q, s):
        seen.append((p.dtype, q.dtype, s.dtype, p.shape == q.shape == s.shape))
        return ndi.uniform_filter(p, 3, mode="wrap") * q + s

    r = cw.map_overlap(f, a, b, c, out=str(tmp / "o.zarr"), depth=1, boundary="wrap")
    assert r.dtype == np.float64
    assert seen and all(t == (np.float64, np.uint8, np.int32, True) for t in seen)
    close_f64(r[...], ndi.uniform_filter(x, 3, mode="wrap") * m + y)


def test_map_overlap_blocks_are_grown_chunks(tmp, rng):
    """PYTHON §2: func gets numpy blocks, each an output chunk grown by depth on both sides,
    one call per chunk."""
    shape, chunks, d = (10, 7, 9), (4, 3, 5), 2
    x = rand(rng, shape, "int32")
    a, _ = store(tmp, x, chunks)
    shapes = []

    def f(b):
        assert isinstance(b, np.ndarray) and b.dtype == np.int32
        shapes.append(b.shape)
        return b

    r = cw.map_overlap(f, a, out=str(tmp / "o.zarr"), depth=d, boundary="reflect", threads=1)
    assert np.array_equal(r[...], x)
    want = sorted(tuple(s.stop - s.start + 2 * d for s in box) for _, box in chunk_boxes(shape, chunks))
    assert sorted(shapes) == want


def test_map_blocks(tmp, rng):
    """PYTHON §2 map_blocks: no halo; func sees each chunk exactly (a per-block sum differs
    from any other blocking), dtype= for the result."""
    shape, chunks = (11, 8, 9), (4, 3, 5)
    x = rand(rng, shape, "uint16")
    a, _ = store(tmp, x, chunks)
    r = cw.map_blocks(lambda b: np.full(b.shape, b.sum(dtype=np.int64), np.int64), a,
                      out=str(tmp / "s.zarr"), dtype=np.int64)
    want = np.zeros(shape, np.int64)
    for _, box in chunk_boxes(shape, chunks):
        want[box] = x[box].sum(dtype=np.int64)
    assert r.dtype == np.int64
    assert np.array_equal(r[...], want)
    r2 = cw.map_blocks(np.sqrt, a, out=str(tmp / "q.zarr"), dtype=np.float32)
    np.testing.assert_allclose(r2[...], np.sqrt(x.astype(np.float32)), rtol=1e-6)
    r3 = cw.map_blocks(np.add, a, r2, out=str(tmp / "sum.zarr"), dtype=np.float64)
    np.testing.assert_allclose(r3[...], x + np.sqrt(x.astype(np.float32)).astype(np.float64), rtol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_correlate1d_vs_scipy(tmp, rng, mode):
    """PYTHON §2 cw.correlate1d / COMPUTE §3: every axis (and -1), origins, every mode; uint16
    input gives float32, dtype=float64 on float64 input matches within 1e-12."""
    x = rand(rng, (9, 10, 8), "uint16")
    a, _ = store(tmp, x, (4, 3, 3))
    xf = rand(rng, (9, 10, 8), "float64")
    af, _ = store(tmp, xf, (2, 5, 3), name="f.zarr")
    cval = 11.0 if mode == "constant" else 0.0
    for i, (axis, w, origin) in enumerate([(0, [1.0, -2.0, 0.5], 0), (1, rng.normal(size=5), -1),
                                           (2, rng.normal(size=4), 1), (-1, [0.25] * 7, 2),
                                           (0, rng.normal(size=6), -3)]):
        w = np.asarray(w, np.float64)
        r = cw.correlate1d(a, str(tmp / ("c%d.zarr" % i)), w, axis=axis, mode=mode, cval=cval,
                           origin=origin)
        assert r.dtype == np.float32
        want = ndi.correlate1d(x.astype(np.float64), w, axis=axis, mode=mode, cval=cval, origin=origin)
        close_f32(r[...], want, float(x.max()) * float(np.abs(w).sum()))
        r = cw.correlate1d(af, str(tmp / ("d%d.zarr" % i)), w, axis=axis, mode=mode, cval=cval,
                           origin=origin, dtype="float64")
        close_f64(r[...], ndi.correlate1d(xf, w, axis=axis, mode=mode, cval=cval, origin=origin))


def test_lut(tmp, rng):
    """PYTHON §2 cw.lut / COMPUTE §3: out = table[x], the table's type (uint8 and float32)."""
    x = rand(rng, (10, 9, 11), "uint16", 0, 1000)
    a, _ = store(tmp, x, (3, 4, 5))
    t8 = rand(rng, (1000,), "uint8", 0, 256)
    r = cw.lut(a, str(tmp / "l8.zarr"), t8)
    assert r.dtype == np.uint8 and np.array_equal(r[...], t8[x])
    tf = rand(rng, (1000,), "float32")
    r = cw.lut(a, str(tmp / "lf.zarr"), tf)
    assert r.dtype == np.float32 and np.array_equal(r[...], tf[x])
    assert np.array_equal(zarr.open_array(str(tmp / "lf.zarr"), mode="r")[...], tf[x])


@pytest.mark.parametrize("dtype,above", [("float32", 12.5), ("uint16", 500), ("int16", -3), ("float64", 0.0)])
def test_threshold(tmp, rng, dtype, above):
    """PYTHON §2 cw.threshold / COMPUTE §3: uint8 (x > above), NaN gives 0."""
    x = rand(rng, (8, 11, 9), dtype)
    if x.dtype.kind == "f":
        x.flat[rng.choice(x.size, 40, replace=False)] = np.nan
    a, _ = store(tmp, x, (3, 5, 4))
    r = cw.threshold(a, str(tmp / "t.zarr"), above)
    assert r.dtype == np.uint8
    with np.errstate(invalid="ignore"):
        want = (x > above).astype(np.uint8)
    assert np.array_equal(r[...], want)


def test_threshold_uint64_exact(tmp):
    """REDUCE §4 (threshold compares the same way): an integer bound is exact for uint64."""
    x = np.array([2**53, 2**53 + 1, 2**53 + 2, 2**64 - 1, 2**64 - 2, 2**63, 5, 0], np.uint64)
    a, _ = store(tmp, x, (3,))
    r = cw.threshold(a, str(tmp / "t.zarr"), 2**53 + 1)
    assert np.array_equal(r[...], (x > 2**53 + 1).astype(np.uint8))
    assert int(r[...].sum()) == 4


@pytest.fixture(scope="module")
def table27():
    return np.random.default_rng(27).integers(0, 256, 2**27, dtype=np.uint8)


def test_neighbourhood_lut(tmp, rng, table27):
    """PYTHON §2 cw.neighbourhood_lut / COMPUTE §3: index = sum in[z+a-1, y+b-1, x+c-1] *
    2^(9a+3b+c), zero outside; out = table[index]. Binary uint8 and bool input."""
    m = rand(rng, (9, 8, 10), "uint8", 0, 2)
    a, _ = store(tmp, m, (4, 3, 3))
    want = table27[neighbourhood_index(m)]
    r = cw.neighbourhood_lut(a, str(tmp / "n.zarr"), table27)
    assert r.dtype == np.uint8
    assert np.array_equal(r[...], want)
    b, _ = store(tmp, m.astype(bool), (2, 5, 4), name="b.zarr")
    assert np.array_equal(cw.neighbourhood_lut(b, str(tmp / "nb.zarr"), table27)[...], want)


def test_neighbourhood_lut_above(tmp, rng, table27):
    """PYTHON §2 cw.neighbourhood_lut(above=X): any input binarised as x > X first."""
    x = rand(rng, (7, 9, 8), "uint16", 0, 1000)
    a, _ = store(tmp, x, (3, 4, 3))
    r = cw.neighbourhood_lut(a, str(tmp / "n.zarr"), table27, above=700)
    assert np.array_equal(r[...], table27[neighbourhood_index(x > 700)])


def test_compute_on_npy_input(tmp, rng):
    """PYTHON §1-§2: a .npy path or an opened .npy is an input like a store."""
    x = rand(rng, (8, 7, 9), "float32")
    np.save(tmp / "x.npy", x)
    want = ndi.gaussian_filter(x.astype(np.float64), 1.0, mode="nearest")
    r = cw.gaussian(str(tmp / "x.npy"), str(tmp / "g.zarr"), 1.0, mode="nearest")
    close_f32(r[...], want, 100)
    r = cw.gaussian(cw.open(str(tmp / "x.npy")), str(tmp / "g2.zarr"), 1.0, mode="nearest")
    close_f32(r[...], want, 100)


def test_rerun_is_done_and_overwrite(tmp, rng):
    """PYTHON §2 / COMPUTE §6: the same call again does nothing (func not called); another func
    into the same output needs overwrite=True; restart=True recomputes every chunk."""
    x = rand(rng, (8, 6, 7), "float64")
    a, _ = store(tmp, x, (3, 3, 3))
    calls = []

    def twice(b):
        calls.append(1)
        return b * 2

    out = str(tmp / "o.zarr")
    cw.map_blocks(twice, a, out=out)
    total = n_chunks(x.shape, (3, 3, 3))
    assert len(calls) == total
    r = cw.map_blocks(twice, a, out=out)
    assert len(calls) == total
    assert np.array_equal(r[...], x * 2)
    r = cw.map_blocks(twice, a, out=out, restart=True)
    assert len(calls) == 2 * total
    with pytest.raises(cw.Error):
        cw.map_blocks(lambda b: b * 3, a, out=out)
    assert np.array_equal(cw.open(out)[...], x * 2)
    r = cw.map_blocks(lambda b: b * 3, a, out=out, overwrite=True)
    assert np.array_equal(r[...], x * 3)


def test_name_is_identity(tmp, rng):
    """PYTHON §2: name= is the job's identity: another name into an existing output is refused
    without overwrite=True; the same name is already done."""
    x = rand(rng, (6, 6, 6), "float32")
    a, _ = store(tmp, x, (4, 4, 4))
    out = str(tmp / "o.zarr")
    cw.map_blocks(lambda b: b + 1, a, out=out, name="plus one")
    calls = []
    r = cw.map_blocks(lambda b: calls.append(1) or b + 1, a, out=out, name="plus one")
    assert calls == [] and np.array_equal(r[...], x + 1)
    with pytest.raises(cw.Error) as e:
        cw.map_blocks(lambda b: b + 1, a, out=out, name="plus one, again")
    assert "overwrite" in str(e.value)
    r = cw.map_blocks(lambda b: b + 2, a, out=out, name="plus two", overwrite=True)
    assert np.array_equal(r[...], x + 2)


CALLS = []


def _counted_gauss(b, sigma):
    CALLS.append(sigma)
    return ndi.gaussian_filter(b, sigma)


def test_default_name_covers_partial_arguments(tmp, rng):
    """PYTHON §2: the default name covers what the function computes: a functools.partial with
    another argument into the same output is another job (refused without overwrite=True), never
    "already done" with the old values; the same partial again is already done."""
    x = rand(rng, (8, 9, 7), "float64")
    a, _ = store(tmp, x, (3, 4, 3))
    out = str(tmp / "o.zarr")
    cw.map_overlap(functools.partial(_counted_gauss, sigma=1.0), a, out=out, depth=8)
    with pytest.raises(cw.Error):
        cw.map_overlap(functools.partial(_counted_gauss, sigma=2.0), a, out=out, depth=8)
    close_f64(cw.open(out)[...], ndi.gaussian_filter(x, 1.0))
    r = cw.map_overlap(functools.partial(_counted_gauss, sigma=2.0), a, out=out, depth=8,
                       overwrite=True)
    close_f64(r[...], ndi.gaussian_filter(x, 2.0))
    del CALLS[:]
    r = cw.map_overlap(functools.partial(_counted_gauss, sigma=2.0), a, out=out, depth=8)
    assert CALLS == []
    close_f64(r[...], ndi.gaussian_filter(x, 2.0))


def test_partitioned_runs_share_one_job(tmp, rng):
    """PYTHON §2 / COMPUTE §7: partition="I/N" computes one part; parts that leave the
    publishing to another return None; the last publishes the single process's result."""
    x = rand(rng, (9, 6, 7), "uint16", 0, 1000)
    a, _ = store(tmp, x, (3, 3, 3))
    whole = cw.gaussian(a, str(tmp / "whole.zarr"), 1.0)
    out = str(tmp / "parts.zarr")
    assert cw.gaussian(a, out, 1.0, partition="2/3") is None
    assert cw.gaussian(a, out, 1.0, partition=(0, 3)) is None
    r = cw.gaussian(a, out, 1.0, partition="1/3")
    assert np.array_equal(r[...], whole[...])
    with pytest.raises(ValueError):
        cw.gaussian(a, out, 1.0, partition="3/3")
    f = lambda b: b + 1  # noqa: E731
    assert cw.map_blocks(f, a, out=str(tmp / "m.zarr"), partition="0/2") is None
    m = cw.map_blocks(f, a, out=str(tmp / "m.zarr"), partition="1/2")
    assert np.array_equal(m[...], x + 1)
