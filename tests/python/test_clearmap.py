"""chunkwise.clearmap: ClearMap2's ArrayProcessing and BlockProcessing (spec/PYTHON.md §7).

The oracle is clearmap_reference.py: plain transcriptions of ClearMap2's definitions (each
citing ClearMap's file and lines), applied to the whole array in memory; scipy where it has the
same definition. Sources are given as numpy arrays, .npy paths, chunkwise Arrays and store
paths, stores with small odd chunks that do not divide the shapes, so the engine paths cross
chunk borders and meet partial edge chunks.

File abbreviations in the citations (ClearMap2 at f284709d):
  AP  = ClearMap/ParallelProcessing/DataProcessing/ArrayProcessing.py
  APC = ClearMap/ParallelProcessing/DataProcessing/ArrayProcessingCode.pyx
  BP  = ClearMap/ParallelProcessing/BlockProcessing.py
  T3D = ClearMap/ImageProcessing/Topology/Topology3d.py
  GP  = ClearMap/Analysis/Graphs/GraphProcessing.py
"""
import os

import numpy as np
import pytest
import scipy.ndimage as ndi

import chunkwise as cw
import chunkwise.clearmap as ap
import clearmap_reference as ref
from conftest import rand, store

SOURCES = ["numpy", "npy", "array", "store"]
SINKS = ["none", "numpy", "npy-new", "npy-old", "store-new", "store-old", "array"]
CHUNKS3 = (4, 5, 3)


def as_source(kind, x, tmp, chunks, name="src"):
    """x as a source of the given kind."""
    if kind == "numpy":
        return x
    if kind == "npy":
        p = str(tmp / (name + ".npy"))
        np.save(p, x)
        return p
    chunks = tuple(min(c, max(1, n)) for c, n in zip(chunks, x.shape))
    a, p = store(tmp, x, chunks, name=name + ".zarr")
    return a if kind == "array" else p


def make_sink(kind, tmp, shape, dtype, name="out"):
    """A sink of the given kind; existing ones are filled with 7 so unwritten parts show."""
    if kind == "none":
        return None
    junk = np.full(shape, 7, dtype=dtype)
    if kind == "numpy":
        return junk
    if kind == "npy-new":
        return str(tmp / (name + ".npy"))
    if kind == "npy-old":
        p = str(tmp / (name + ".npy"))
        np.save(p, junk)
        return p
    if kind == "store-new":
        return str(tmp / (name + ".zarr"))
    chunks = tuple(max(1, min(n, c)) for n, c in zip(shape, (3, 2, 4, 2, 2)))
    a, p = store(tmp, junk, chunks, name=name + ".zarr")
    return p if kind == "store-old" else a


def check_result(res, kind, sink, want):
    """res has want's values, shape and dtype, is of the type ClearMap's result maps to, and the
    sink (if any) holds the values."""
    if kind in ("none", "numpy", "npy-new", "npy-old"):
        assert isinstance(res, ap.SourceArray), type(res)
        assert isinstance(res.array, np.ndarray) and not isinstance(res.array, ap.SourceArray)
        got = np.asarray(res)
    else:
        assert isinstance(res, cw.Array), type(res)
        got = np.asarray(res[...])
    assert got.shape == want.shape, (got.shape, want.shape)
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    assert np.array_equal(got, want, equal_nan=want.dtype.kind == "f")
    if kind == "numpy":
        assert np.shares_memory(np.asarray(res), sink)
        assert np.array_equal(sink, want)
    elif kind in ("npy-new", "npy-old"):
        assert res.location is not None and os.path.samefile(res.location, sink)
        assert np.array_equal(np.load(sink), want)
    elif kind in ("store-new", "store-old"):
        assert np.array_equal(cw.open(sink)[...], want)
    elif kind == "array":
        assert np.array_equal(cw.open(sink.path)[...], want)


def values(res):
    return np.asarray(res[...]) if isinstance(res, cw.Array) else np.asarray(res)


def test_public_functions_have_docstrings():
    """Every public name of the module is documented."""
    assert ap.__doc__ and len(ap.__doc__) > 200
    for name in ap.__all__:
        obj = getattr(ap, name)
        if callable(obj):
            assert obj.__doc__ and obj.__doc__.strip(), name


def test_signatures_match_clearmap():
    """AP:78, 113, 155, 201, 272, 307, 354, 437, 463; BP:125-131: names, order and defaults."""
    import inspect

    def sig(f):
        return [(p.name, p.default if p.default is not inspect.Parameter.empty else "<req>")
                for p in inspect.signature(f).parameters.values()
                if p.kind is not inspect.Parameter.VAR_KEYWORD]
    R = "<req>"
    assert sig(ap.apply_lut) == [("source", R), ("lut", R), ("sink", None), ("blocks", None),
                                 ("processes", None), ("verbose", False)]
    assert sig(ap.apply_lut_to_index) == [("source", R), ("kernel", R), ("lut", R),
                                          ("sink", None), ("processes", None), ("verbose", False)]
    assert sig(ap.correlate1d) == [("source", R), ("kernel", R), ("sink", None), ("axis", 0),
                                   ("processes", None), ("verbose", False)]
    assert sig(ap.where) == [("source", R), ("sink", None), ("blocks", None), ("cutoff", None),
                             ("processes", None), ("verbose", False)]
    assert sig(ap.neighbours) == [("indices", R), ("offset", R), ("processes", None),
                                  ("verbose", False)]
    assert sig(ap.block_sums) == [("source", R), ("blocks", None), ("processes", None)]
    assert sig(ap.block_ranges) == [("source", R), ("blocks", None), ("processes", None)]
    assert sig(ap.read)[:3] == [("source", R), ("sink", None), ("slicing", None)]
    assert sig(ap.write) == [("sink", R), ("source", R), ("slicing", None), ("overwrite", True),
                             ("blocks", None), ("processes", None), ("verbose", False)]
    assert sig(ap.process) == [
        ("function", R), ("source", R), ("sink", None), ("axes", None), ("size_max", None),
        ("size_min", None), ("overlap", None), ("optimization", True),
        ("optimization_fix", "all"), ("neighbours", False), ("function_type", None),
        ("as_memory", False), ("return_result", False), ("return_blocks", False),
        ("processes", None), ("verbose", False), ("workspace", None)]


# --- apply_lut ----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", SOURCES)
@pytest.mark.parametrize("dtype,lut_dtype", [("uint8", "float32"), ("uint16", "uint8"),
                                             ("int32", "int64"), ("int64", "bool"),
                                             ("bool", "uint16")])
def test_apply_lut(tmp, rng, kind, dtype, lut_dtype):
    """APC:56-64, AP:78-110: sink[i] = lut[source[i]], the table's dtype (AP:104)."""
    n = {"bool": 2, "uint8": 256}.get(dtype, 300)
    for shape in [(13, 9, 7), (29,), (6, 11)]:
        x = rand(rng, shape, dtype, 0, n) if dtype != "bool" else rand(rng, shape, "bool")
        lut = rand(rng, (n,), lut_dtype)
        want = ref.apply_lut(x, lut)
        assert want.dtype == np.dtype(lut_dtype)
        res = ap.apply_lut(as_source(kind, x, tmp, CHUNKS3[:len(shape)], "s%d" % len(shape)), lut)
        check_result(res, "none", None, want)


@pytest.mark.parametrize("kind", SINKS)
@pytest.mark.parametrize("src_kind", ["numpy", "store"])
def test_apply_lut_sinks(tmp, rng, kind, src_kind):
    """AP:104: the sink is created with the source's shape and the table's dtype, or written and
    returned when given."""
    x = rand(rng, (11, 8, 5), "uint16", 0, 50)
    lut = rand(rng, (50,), "int32")
    want = ref.apply_lut(x, lut)
    sink = make_sink(kind, tmp, x.shape, np.int32)
    res = ap.apply_lut(as_source(src_kind, x, tmp, CHUNKS3), lut, sink=sink)
    check_result(res, kind, sink, want)


def test_apply_lut_refuses(tmp, rng):
    """Values outside the table raise (ClearMap reads past it: APC:64 with wraparound=False);
    float sources are refused (APC:29-34: integer buffer types only); a sink of another shape
    is refused (ClearMap's io.initialize: ValueError)."""
    x = rand(rng, (9, 7, 5), "int16", 0, 20)
    lut = np.arange(20, dtype=np.uint8)
    x[3, 4, 2] = 20
    with pytest.raises(IndexError, match="20"):
        ap.apply_lut(x, lut)
    a, p = store(tmp, x, CHUNKS3)
    with pytest.raises((IndexError, cw.Error)):
        ap.apply_lut(a, lut)
    x[3, 4, 2] = -1
    with pytest.raises(IndexError):
        ap.apply_lut(x, lut)
    with pytest.raises(TypeError):
        ap.apply_lut(x.astype(np.float32), lut)
    x[3, 4, 2] = 0
    with pytest.raises(ValueError):
        ap.apply_lut(x, lut, sink=np.zeros((9, 7, 4), np.uint8))


# --- apply_lut_to_index ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def table27():
    """A random 2^27-entry uint8 table (the size of the standard index kernel's)."""
    return np.random.default_rng(27).integers(0, 250, 1 << 27, dtype=np.uint8)


def test_index_kernel_is_clearmaps():
    """T3D:140-149: cell (i, j, k) has the weight 2^(i + 3j + 9k); axis 0 least significant."""
    k = ap.index_kernel()
    assert k.dtype == np.uint32 and k.shape == (3, 3, 3)
    assert np.array_equal(k, ref.index_kernel())
    for i in range(3):
        for j in range(3):
            for m in range(3):
                assert k[i, j, m] == 2 ** (i + 3 * j + 9 * m)
    assert list(ap.index_kernel(axis=1)) == [1, 8, 64]


def test_table_permutation_to_chunkwise_bit_order(rng):
    """The table handed to chunkwise's neighbourhood_lut (COMPUTE §3: weight 2^(9a+3b+c)) gives
    what ClearMap's table gives for ClearMap's index (weight 2^(i+3j+9k))."""
    lut = rng.integers(0, 2 ** 31, 1 << 27, dtype=np.int64).astype(np.int32)
    t = ap._cm_to_cw_table(lut)
    from conftest import neighbourhood_index
    m = rand(rng, (9, 8, 7), "bool")
    cm_index = ndi.correlate(m.astype(np.int64), ref.index_kernel(dtype=np.int64),
                             mode="constant", cval=0)
    assert np.array_equal(t[neighbourhood_index(m)], lut[cm_index])
    # a single voxel: only one bit set; the bit positions map as (i, j, k) -> (k, j, i) digits
    for i, j, k in [(0, 0, 0), (2, 0, 0), (0, 1, 2), (1, 2, 0)]:
        n_cw = 1 << (9 * i + 3 * j + k)
        n_cm = 1 << (i + 3 * j + 9 * k)
        assert t[n_cw] == lut[n_cm]


@pytest.mark.parametrize("kind", SOURCES)
@pytest.mark.parametrize("dtype", ["bool", "uint8", "int32"])
def test_apply_lut_to_index_standard_kernel(tmp, rng, kind, dtype, table27, monkeypatch):
    """APC:67-107 with T3D:140-149: the 3x3x3 configuration index, zero outside the array
    (APC:86-93), looked up in a 2^27 table; on a binary store this runs chunkwise's native
    neighbourhood_lut with the table permuted, checked here to be called."""
    calls = []
    native = cw.neighbourhood_lut

    def spy(*a, **k):
        calls.append(1)
        return native(*a, **k)
    monkeypatch.setattr(cw, "neighbourhood_lut", spy)
    x = rand(rng, (10, 9, 7), "bool").astype(dtype)
    kernel = ap.index_kernel(dtype=int)
    want = ref.apply_lut_to_index(x, kernel, table27)
    res = ap.apply_lut_to_index(as_source(kind, x, tmp, CHUNKS3), kernel, table27)
    check_result(res, "none", None, want)
    assert want.dtype == np.uint8
    if kind in ("array", "store", "npy"):
        assert calls, "a binary input off memory with the standard kernel runs neighbourhood_lut"
    # ClearMap's default kernel dtype (uint32) is taken too
    res = ap.apply_lut_to_index(x, ap.index_kernel(), table27)
    assert np.array_equal(values(res), want)


def test_apply_lut_to_index_non_binary_standard_kernel(tmp, rng, table27):
    """APC:103: non-binary values are weighted, not binarised (the native kernel would refuse
    them): index = sum value * 2^(i+3j+9k); values up to 1 plus a 2 where the sum stays in the
    table."""
    x = rand(rng, (8, 7, 6), "bool").astype(np.uint16)
    x[0, 0, 0] = 0
    x[0, 0, 1] = 2  # its neighbours' sums gain 2 * weight: still < 2^27 only where the
    kernel = ap.index_kernel(dtype=np.int64)  # weight is small; keep the big weights' cells 0
    x[:, :, 2] = 0
    want = ref.apply_lut_to_index(x, kernel, table27)
    for kind in SOURCES:
        res = ap.apply_lut_to_index(as_source(kind, x, tmp, CHUNKS3, "s" + kind), kernel, table27)
        assert np.array_equal(values(res), want), kind


@pytest.mark.parametrize("kind", SOURCES)
def test_apply_lut_to_index_pk12_kernel(tmp, rng, kind):
    """PK12's 26-bit centre-excluded kernel (T3D:70-82, cube_base_2(center=False)) with a 2^26
    table: any kernel, any table length (APC:67-107)."""
    kernel = ref.cube_base_2(center=False)
    assert kernel.max() == 2 ** 25 and kernel[1, 1, 1] == 0
    lut = rng.integers(0, 2, 1 << 26, dtype=np.uint8).astype(bool)
    x = rand(rng, (9, 10, 8), "bool")
    want = ref.apply_lut_to_index(x, kernel, lut)
    res = ap.apply_lut_to_index(as_source(kind, x, tmp, CHUNKS3), kernel, lut)
    check_result(res, "none", None, want)
    sc = ndi.correlate(x.astype(np.int64), kernel, mode="constant", cval=0)
    assert np.array_equal(values(res), lut[sc])


@pytest.mark.parametrize("kind", SOURCES)
@pytest.mark.parametrize("kshape", [(3, 3, 3), (2, 3, 4), (1, 5, 2), (4, 1, 1)])
@pytest.mark.parametrize("dtype", ["uint8", "int16", "float32"])
def test_apply_lut_to_index_any_kernel(tmp, rng, kind, kshape, dtype):
    """APC:67-107 with even and odd kernel sizes (centre k//2, APC:72-73), integer and float
    sources (a float product is truncated term by term: <index_t>(source * kernel), APC:103)."""
    kernel = rng.integers(0, 4, kshape).astype(np.int32)
    if dtype == "float32":
        x = rng.choice(np.array([0, 0.5, 1.25, 2.75], np.float32), (9, 8, 7))
    else:
        x = rand(rng, (9, 8, 7), dtype, 0, 3)
    top = int(np.prod(kshape)) * 3 * 3 + 1
    lut = rand(rng, (top,), "int64")
    want = ref.apply_lut_to_index(x, kernel, lut)
    res = ap.apply_lut_to_index(as_source(kind, x, tmp, CHUNKS3), kernel, lut)
    check_result(res, "none", None, want)
    if dtype != "float32":  # scipy.ndimage.correlate has the same centre and zero padding
        sc = ndi.correlate(x.astype(np.int64), kernel.astype(np.int64), mode="constant", cval=0)
        assert np.array_equal(values(res), lut[sc])


@pytest.mark.parametrize("kind", SINKS)
def test_apply_lut_to_index_sinks(tmp, rng, kind, table27):
    """AP:138: sink of the source's shape and the table's dtype, created or written."""
    x = rand(rng, (7, 9, 8), "bool")
    kernel = ap.index_kernel(dtype=int)
    want = ref.apply_lut_to_index(x, kernel, table27)
    for src_kind in ("numpy", "array"):
        sink = make_sink(kind, tmp, x.shape, np.uint8, name="out" + src_kind)
        res = ap.apply_lut_to_index(as_source(src_kind, x, tmp, CHUNKS3, "s" + src_kind),
                                    kernel, table27, sink=sink)
        check_result(res, kind, sink, want)


def test_apply_lut_to_index_refuses(tmp, rng):
    """AP:141-142: only 3-D sources and kernels (NotImplementedError); an index outside the
    table raises (ClearMap reads past it)."""
    with pytest.raises(NotImplementedError):
        ap.apply_lut_to_index(np.zeros((4, 5), bool), np.ones((3, 3), int), np.zeros(10))
    with pytest.raises(NotImplementedError):
        ap.apply_lut_to_index(np.zeros((4, 5, 3), bool), np.ones((3, 3), int), np.zeros(10))
    x = np.zeros((6, 5, 7), bool)
    x[2, 2, 2] = True
    lut = np.zeros(8, np.uint8)
    kernel = np.full((3, 3, 3), 8)
    with pytest.raises(IndexError):
        ap.apply_lut_to_index(x, kernel, lut)
    a, _ = store(tmp, x, CHUNKS3)
    with pytest.raises((IndexError, cw.Error)):
        ap.apply_lut_to_index(a, kernel, lut)


# --- correlate1d ----------------------------------------------------------------------------

def scipy_corr(x, w, axis, dtype):
    """scipy's correlate1d with zero padding in float64, then ClearMap's <sink_t> cast."""
    x = np.asarray(x)
    r = ndi.correlate1d(x.astype(np.float64), np.asarray(w, np.float64), axis=axis,
                        mode="constant", cval=0.0)
    dtype = np.dtype(dtype)
    return np.trunc(r).astype(dtype) if dtype.kind in "iub" else r.astype(dtype)


CORR_CASES = [
    # source dtype, source range, kernel: result_type(source, kernel) (AP:183)
    ("uint8", (0, 10), np.array([1, 2, 3], np.uint8)),
    ("int16", (-50, 50), np.array([0.5, -0.25, 1.0, 0.75])),
    ("float32", None, np.array([0.2, 0.3, 0.5], np.float32)),
    ("int32", (-1000, 1000), np.array([1, -2, 0, 3, 1], np.int64)),
    ("bool", None, np.array([1, 1], np.int32)),
    ("uint16", (0, 300), np.array([2], np.int16)),
]


@pytest.mark.parametrize("kind", SOURCES)
@pytest.mark.parametrize("case", range(len(CORR_CASES)))
def test_correlate1d(tmp, rng, kind, case):
    """APC:146-281, AP:155-194: zero padding, double arithmetic in the kernel's order, result
    type numpy.result_type(source, kernel) (bool as uint8), truncation to integers, on every
    axis of 3-D and 2-D arrays."""
    dtype, rng_, w = CORR_CASES[case]
    for shape, chunks in [((11, 7, 9), CHUNKS3), ((13, 6), (5, 4))]:
        x = rand(rng, shape, dtype, *(rng_ or (None, None)))
        for axis in range(len(shape)):
            want = ref.correlate1d(x, w, axis=axis)
            src_dt = np.uint8 if dtype == "bool" else np.dtype(dtype)
            assert want.dtype == np.result_type(src_dt, w.dtype)
            res = ap.correlate1d(as_source(kind, x, tmp, chunks, "s%d%d" % (len(shape), axis)),
                                 w, axis=axis)
            check_result(res, "none", None, want)
            sc = scipy_corr(x, w, axis, want.dtype)
            if want.dtype.kind == "f":
                assert np.allclose(values(res), sc, rtol=1e-6, atol=1e-4)
            else:
                assert np.array_equal(values(res), sc)


@pytest.mark.parametrize("kind", SOURCES)
def test_correlate1d_1d_and_4d(tmp, rng, kind):
    """ClearMap's driver computes nothing on 1-D arrays (APC:233-240: no iteration axis, the new
    sink's zeros come back) and steps past each axis on 4-D (APC:189-195); chunkwise applies
    ClearMap's per-line definition (APC:146-186) to every line: scipy's result."""
    w = np.array([1, -1, 2, 0.5])
    x = rand(rng, (17,), "int32", -20, 20)
    res = ap.correlate1d(as_source(kind, x, tmp, (5,), "one"), w)
    want = ref.correlate1d(x, w, axis=0)
    check_result(res, "none", None, want)
    assert np.array_equal(want, scipy_corr(x, w, 0, np.float64))
    assert np.any(want != 0)  # not ClearMap's zeros
    x = rand(rng, (5, 4, 3, 6), "int16", -9, 9)
    for axis in range(4):
        res = ap.correlate1d(as_source(kind, x, tmp, (2, 3, 2, 4), "four%d" % axis), w, axis=axis)
        check_result(res, "none", None, ref.correlate1d(x, w, axis=axis))
    res = ap.correlate1d(x, w, axis=-1)
    assert np.array_equal(values(res), ref.correlate1d(x, w, axis=3))
    # a kernel longer than the axis (ClearMap asserts shape[axis] > len(kernel), APC:222)
    res = ap.correlate1d(x, np.arange(9.0), axis=1)
    assert np.array_equal(values(res), scipy_corr(x, np.arange(9.0), 1, np.float64))


@pytest.mark.parametrize("kind", SINKS)
def test_correlate1d_sinks(tmp, rng, kind):
    """AP:183-184: with a sink the dtype comes from it (an existing one) or from the source (a
    new one: initialize_sink(like=source)); the double result is truncated toward zero into it
    (APC:168/176/184 <sink_t>temp)."""
    x = rand(rng, (9, 8, 7), "int32", -100, 100)
    w = np.array([0.5, -0.75, 0.25])  # dyadic: every sum exact, so truncation is well defined
    new_dtype = np.int32 if kind != "none" else np.float64
    sink = make_sink(kind, tmp, x.shape, np.int32)
    for src_kind in ("numpy", "array"):
        if kind in ("npy-new", "store-new"):
            sink = make_sink(kind, tmp, x.shape, np.int32, name="out" + src_kind)
        res = ap.correlate1d(as_source(src_kind, x, tmp, CHUNKS3, "s" + src_kind), w, sink=sink,
                             axis=1)
        want = ref.correlate1d(x, w, axis=1, dtype=new_dtype)
        check_result(res, kind, sink, want)
        if kind != "none":
            f = ndi.correlate1d(x.astype(float), w, axis=1, mode="constant")
            assert np.array_equal(want, np.trunc(f).astype(np.int32))
            assert np.any(f < 0) and np.any(f != np.round(f))  # truncation really tested


# --- where ------------------------------------------------------------------------------------

WHERE_CASES = [((23,), "int16"), ((9, 13), "float32"), ((7, 6, 11), "uint8"),
               ((6, 5, 9), "bool"), ((3, 4, 2, 5), "int32"), ((5, 1, 4), "float64")]


@pytest.mark.parametrize("kind", SOURCES)
@pytest.mark.parametrize("case", range(len(WHERE_CASES)))
def test_where(tmp, rng, kind, case):
    """APC:398-481, AP:201-269: values > 0 (negatives and NaN are not selected); 1-D: flat
    indices; else coordinates block by block over the last axis (ClearMap's order), dtype int
    (AP:258). The 2-D case is where_2d's definition (APC:425-450): ClearMap's own 2-D where fails
    (AP:250 calls the misspelled code.block_sums21d); 4-D follows the same rule (ClearMap
    raises, AP:229-231)."""
    shape, dtype = WHERE_CASES[case]
    x = rand(rng, shape, dtype)
    if x.dtype.kind == "f":
        x.flat[::7] = np.nan
        x.flat[3::11] = 0
    if x.dtype.kind in "iu":
        x.flat[::3] = 0
    src = as_source(kind, x, tmp, (3, 4, 5, 2)[:len(shape)])
    for blocks, processes in [(None, None), (None, 3), (1, None), (3, None), (7, 2), (1000, None)]:
        b = blocks if blocks is not None else (processes or ap.default_processes) * 10
        want = ref.where(x, b)
        res = ap.where(src, blocks=blocks, processes=processes)
        check_result(res, "none", None, want.astype(np.int64))
        assert res.array.dtype == np.int64
    if len(shape) == 1:
        assert np.array_equal(values(ap.where(src)), np.flatnonzero(x > 0))
    else:
        got = values(ap.where(src, blocks=1))
        assert np.array_equal(got, np.argwhere(x > 0))  # one block: C order
        if shape[-1] > 1:
            got = values(ap.where(src, blocks=shape[-1]))  # one block per last index
            assert np.array_equal(got, np.argwhere(np.moveaxis(x, -1, 0) > 0)[
                :, list(range(1, len(shape))) + [0]])


@pytest.mark.parametrize("kind", SINKS)
def test_where_sinks(tmp, rng, kind):
    """AP:254-258: the sink has shape (N, ndim) and dtype int."""
    x = rand(rng, (8, 7, 9), "int16")
    want = ref.where(x, 4).astype(np.int64)
    n = len(want)
    for src_kind in ("numpy", "store"):
        sink = make_sink(kind, tmp, (n, 3), np.int64, name="o" + src_kind)
        res = ap.where(as_source(src_kind, x, tmp, CHUNKS3, "s" + src_kind), sink=sink, blocks=4)
        check_result(res, kind, sink, want)
    with pytest.raises(ValueError):
        ap.where(x, sink=np.zeros((n + 1, 3), np.int64), blocks=4)


# --- neighbours ------------------------------------------------------------------------------

def test_neighbours_of_a_skeleton(rng):
    """APC:349-391 with GP:81-101: flat indices of a skeleton (where of the flattened array)
    and the flat offsets of the 13 orientations: the pairs (p, q) with
    indices[q] == indices[p] + offset, ordered by p, int (s, 2)."""
    skel = rng.random((9, 10, 11)) < 0.3
    points = values(ap.where(skel.reshape(-1, order="A")))
    assert np.array_equal(points, np.flatnonzero(skel))
    for o in np.ndindex(3, 3, 3):
        offset = int(np.sum((np.array(o) - 1) * skel.strides))
        if offset <= 0:
            continue
        want = ref.neighbours(points, offset)
        got = ap.neighbours(points, offset)
        assert got.dtype == np.int64 and got.shape == want.shape
        assert np.array_equal(got, want)
        assert np.all(points[got[:, 1]] == points[got[:, 0]] + offset)
    for offset in (-1, -13, 0, 2):
        assert np.array_equal(ap.neighbours(points, offset), ref.neighbours(points, offset))
        assert np.array_equal(ap.index_neighbours(points, offset), ref.neighbours(points, offset))


def test_neighbours_unsorted_and_empty(rng):
    """ClearMap's windowed search (APC:358-375) is exact only on strictly increasing indices;
    on others chunkwise returns every pair with indices[q] == indices[p] + offset (ordered by
    p, then q), a superset of ClearMap's."""
    idx = rng.integers(0, 30, 40)
    for offset in (1, 3, -2, 0):
        got = ap.neighbours(idx, offset)
        want = [[p, q] for p in range(len(idx)) for q in range(len(idx))
                if idx[q] == idx[p] + offset]
        assert got.tolist() == want
        cm = {tuple(r) for r in ref.neighbours(idx, offset)}
        assert cm <= set(map(tuple, want))
    assert ap.neighbours(np.array([1, 5, 9]), 2).shape == (0, 2)
    assert ap.neighbours(np.zeros(0, np.int64), 2).shape == (0, 2)


# --- block sums and ranges --------------------------------------------------------------------

@pytest.mark.parametrize("kind", SOURCES)
def test_block_sums(tmp, rng, kind):
    """APC:289-304, AP:463-486: counts of elements > 0 in min(size, blocks) linspace ranges of
    the flattened array (memory order for numpy, AP:613-614)."""
    x = rand(rng, (9, 8, 7), "int16", -3, 3)
    src = as_source(kind, x, tmp, CHUNKS3)
    for blocks, processes in [(None, None), (None, 2), (1, None), (5, None), (13, 3), (10 ** 4, None)]:
        b = blocks if blocks is not None else (processes or ap.default_processes) * 10
        got = ap.block_sums(src, blocks=blocks, processes=processes)
        want = ref.block_sums(x, b)
        assert np.asarray(got).dtype == np.int64
        assert np.array_equal(got, want)
        assert int(np.sum(got)) == int(np.sum(x > 0))
    if kind in ("numpy", "npy"):  # a Fortran-ordered array or file: its memory order
        f = np.asfortranarray(x)
        got = ap.block_sums(as_source(kind, f, tmp, CHUNKS3, "fortran"), blocks=6)
        assert np.array_equal(got, ref.block_sums(f, 6))
        assert not np.array_equal(ref.block_sums(f, 6), ref.block_sums(x, 6))


@pytest.mark.parametrize("kind", SOURCES)
def test_block_ranges(tmp, rng, kind):
    """AP:437-460: linspace(0, size, min(blocks, size) + 1) as int."""
    x = rand(rng, (5, 3, 7), "uint8")
    src = as_source(kind, x, tmp, CHUNKS3)
    for blocks in (1, 4, 7, 105, 1000):
        got = ap.block_ranges(src, blocks=blocks)
        assert np.array_equal(got, ref.block_ranges(105, blocks))
        assert got[0] == 0 and got[-1] == 105
    assert np.array_equal(ap.block_ranges(x, processes=2), ref.block_ranges(105, 20))
    assert np.array_equal(ap.block_ranges(x), ref.block_ranges(105, ap.default_processes * 10))


# --- read and write ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", SOURCES)
def test_read(tmp, rng, kind):
    """AP:307-351: the source (or a slice of it) read into memory; or into a given sink."""
    x = rand(rng, (10, 7, 9), "uint16")
    src = as_source(kind, x, tmp, CHUNKS3)
    check_result(ap.read(src), "none", None, x)
    key = (slice(2, 9), slice(None), slice(1, 8, 2))
    check_result(ap.read(src, slicing=key), "none", None, x[key])
    sink = np.zeros(x[key].shape, x.dtype)
    check_result(ap.read(src, sink=sink, slicing=key), "numpy", sink, x[key])
    res = ap.read(src)
    if kind == "numpy":
        assert not np.shares_memory(np.asarray(res), x)  # a copy in memory


def test_write(tmp, rng):
    """AP:354-430: write to .npy files and stores: create; write into a matching file; replace a
    mismatching one with overwrite=True, ValueError without; slicing needs an existing sink."""
    x = rand(rng, (8, 6, 5), "int32")
    a, _ = store(tmp, x, CHUNKS3, name="src.zarr")
    for name in ("w.npy", "w.zarr"):
        p = str(tmp / name)
        for src in (x, a):
            if os.path.exists(p):
                if name.endswith(".npy"):
                    os.remove(p)
                else:
                    import shutil
                    shutil.rmtree(p)
            with pytest.raises(ValueError):
                ap.write(p, x[:2], slicing=(slice(0, 2),))
            res = ap.write(p, src)
            assert np.array_equal(values(res), x)
            assert np.array_equal(values(cw.open(p)), x)
            y = x[1:3] * 2
            ap.write(p, y, slicing=(slice(1, 3),))
            want = x.copy()
            want[1:3] = y
            assert np.array_equal(values(cw.open(p)), want)
            ap.write(p, src)  # matching: written into
            assert np.array_equal(values(cw.open(p)), x)
            with pytest.raises(ValueError):
                ap.write(p, x.astype(np.float32), overwrite=False)
            res = ap.write(p, x.astype(np.float32))
            got = values(cw.open(p))
            assert got.dtype == np.float32 and np.array_equal(got, x.astype(np.float32))
    s = np.zeros_like(x)
    res = ap.write(s, a)
    assert np.array_equal(s, x) and isinstance(res, ap.SourceArray)


# --- BlockProcessing --------------------------------------------------------------------------

def test_split_into_blocks_docstring_example():
    """BP:16-33: the documented split of a (50, 100, 200) Fortran array along axis 2 with
    processes=10, size_min=30, size_max=50, overlap=20."""
    source = np.asfortranarray(np.zeros((50, 100, 200)))
    blocks = ap.split_into_blocks(source, processes=10, axes=[2], size_min=30, size_max=50,
                                  overlap=20)
    assert len(blocks) == 10
    b = blocks[0]
    assert b.shape == (50, 100, 38)
    assert b.info() == "0/10<(0, 0, 0)/(1, 1, 10)> (50, 100, 38)@(50, 100, 200)[(:,:,0:38)]"
    assert b.valid.shape == (50, 100, 28)
    assert [s.indices(n)[:2] for s, n in zip(b.valid.base_slicing, source.shape)] == \
        [(0, 50), (0, 100), (0, 28)]
    assert b.iteration == 0 and blocks[5].iteration == 5
    assert ap.block_axes(source) == [2] and ap.block_axes(np.zeros((3, 4))) == [0]


def test_block_sizes_match_clearmap():
    """BP:367-559 over a grid of sizes and settings (including 'fixed' and the three
    optimization_fix values): the same blocks and valid ranges as the transcription; the valid
    ranges tile the axis and lie inside their blocks."""
    n_cases = 0
    for size in (1, 2, 5, 17, 40, 101):
        for size_max in (None, 1, 4, 9, 30):
            for overlap in (None, 0, 1, 3):
                for size_min in (None, 2, 5, "fixed"):
                    for processes in (1, 3, 4, "serial"):
                        for fix in ("all", "decrease", "increase", None):
                            args = (size, processes, size_max, size_min, overlap, True, fix)
                            try:
                                want = ref.block_sizes(*args, cpu_count=ap.default_processes)
                            except (ValueError, RuntimeError, ZeroDivisionError) as e:
                                with pytest.raises(type(e)):
                                    ap.block_sizes(*args)
                                continue
                            got = ap.block_sizes(*args)
                            assert got == want, args
                            n, br, vr = got
                            assert len(br) == len(vr) == n
                            assert vr[0][0] == 0 and vr[-1][1] == size
                            assert all(a[1] == b[0] for a, b in zip(vr, vr[1:]))
                            assert all(b0 <= v0 <= v1 <= b1 for (b0, b1), (v0, v1) in zip(br, vr))
                            n_cases += 1
    assert n_cases > 500


def sum_and_difference(source1, source2, sink1=None, sink2=None):
    """BP:800-808."""
    if sink1 is None:
        sink1 = np.zeros(source1.shape)
    if sink2 is None:
        sink2 = np.zeros(source2.shape)
    sink1[:] = source1[:] + source2[:]
    sink2[:] = source1[:] - source2[:]
    return sink1, sink2


@pytest.mark.parametrize("src_kind", SOURCES)
@pytest.mark.parametrize("sink_kind", ["numpy", "npy-new", "store-new", "array"])
def test_process_several_sources_and_sinks(tmp, rng, src_kind, sink_kind):
    """BP:794-817 (ClearMap's own test): sum and difference of two sources into two sinks, split
    along axes 1 and 2 with overlap; a sink path that does not exist is created with the first
    source's shape and dtype (BP:211)."""
    shape = (2, 50, 30)
    x1, x2 = rng.random(shape), rng.random(shape)
    s1 = as_source(src_kind, x1, tmp, (2, 7, 4), "a")
    s2 = as_source(src_kind, x2, tmp, (2, 7, 4), "b")
    if sink_kind == "numpy":
        k1, k2 = np.zeros(shape), np.zeros(shape)
    else:
        k1 = make_sink(sink_kind, tmp, shape, np.float64, "k1")
        k2 = make_sink(sink_kind, tmp, shape, np.float64, "k2")
    ret = ap.process(sum_and_difference, [s1, s2], [k1, k2], processes=4, size_max=10,
                     size_min=5, overlap=3, axes=[1, 2], optimization=True)
    assert ret == [k1, k2] if not isinstance(k1, np.ndarray) else ret[0] is k1
    for k, want in ((k1, x1 + x2), (k2, x1 - x2)):
        got = np.load(k) if sink_kind == "npy-new" else values(cw.open(k) if isinstance(k, str) else k)
        assert got.dtype == np.float64
        assert np.array_equal(got, want)


@pytest.mark.parametrize("src_kind", SOURCES)
def test_process_block_dependent_function(tmp, rng, src_kind):
    """BP:281-321 with BP:605-707: each block's function result is cut to its valid region; a
    function of the whole block (its mean) shows the blocks are ClearMap's (the transcription's
    split), including no padding at the array's edges."""
    x = rand(rng, (17, 12, 9), "float64")

    def minus_block_mean(b):
        return b - b.mean()
    kw = dict(axes=[0, 2], size_max=[7, 5], size_min=[4, 3], overlap=[2, 1], processes=3)
    blocks = ref.split(x.shape, [0, 2], processes=3, size_max=[7, 5], size_min=[4, 3],
                       overlap=[2, 1], cpu_count=ap.default_processes)
    want = ref.process_array(minus_block_mean, [x], 1, blocks)[0]
    sink = np.full(x.shape, np.nan)
    ap.process(minus_block_mean, as_source(src_kind, x, tmp, CHUNKS3), sink, **kw)
    assert np.array_equal(sink, want)
    assert not np.allclose(sink, x - x.mean())  # the blocks matter
    # processes enters the split (BP:216, 410-415: 'serial' counts as 1 process)
    blocks = ref.split(x.shape, [0, 2], processes="serial", size_max=[7, 5], size_min=[4, 3],
                       overlap=[2, 1], cpu_count=ap.default_processes)
    want2 = ref.process_array(minus_block_mean, [x], 1, blocks)[0]
    sink2 = np.full(x.shape, np.nan)
    ap.process(minus_block_mean, as_source(src_kind, x, tmp, CHUNKS3, "again"), sink2,
               processes="serial", **{k: v for k, v in kw.items() if k != "processes"})
    assert np.array_equal(sink2, want2)
    assert not np.array_equal(want2, want)


def test_process_local_filter_with_overlap(tmp, rng):
    """BP:539 valid borders in the middle of the overlap: a local filter of radius 1 with an
    overlap of 3 gives the whole array's result (the function's own boundary at the edges)."""
    x = rand(rng, (15, 14, 13), "int64", -50, 50)
    k = rng.integers(-2, 3, (3, 3, 3))

    def filt(b):
        return ndi.correlate(b, k, mode="reflect")
    want = filt(x)
    for src_kind in SOURCES:
        out = str(tmp / ("f%s.zarr" % src_kind))
        ap.process(filt, as_source(src_kind, x, tmp, CHUNKS3, "s" + src_kind), out,
                   axes="all", size_max=6, overlap=3, processes=2)
        assert np.array_equal(cw.open(out)[...], want), src_kind


@pytest.mark.parametrize("src_kind", ["numpy", "store"])
def test_process_block_function_results(tmp, rng, src_kind):
    """BP:324-360, BP:268-274: function_type='block' gets Block objects (source then sink
    blocks), writes into the sink itself and returns per-block results, in block order;
    return_blocks gives the blocks. As ClearMap's cell detection (Experts/Cells.py:304-395):
    maxima in each block, kept in its valid region, shifted by the block's corner."""
    x = rand(rng, (16, 11, 10), "int16", -5, 5)
    blocks = ref.split(x.shape, [0, 1], processes=2, size_max=6, overlap=2,
                       cpu_count=ap.default_processes)

    def detect(source, sink):
        pts = ap.where(source.array, blocks=1).array
        lo, hi = np.array(source.valid.lower), np.array(source.valid.upper)
        keep = np.all((pts >= lo) & (pts < hi), axis=1)
        sink[source.valid.slicing] = 2 * source.valid.array
        return (tuple(source.index), source.lower, source.upper, source.valid.base_lower,
                source.valid.base_upper, pts[keep] + np.array(source.lower))
    sink = np.zeros(x.shape, x.dtype)
    res, (src_blocks, sink_blocks) = ap.process(
        detect, as_source(src_kind, x, tmp, CHUNKS3), sink, function_type="block",
        return_result=True, return_blocks=True, axes=[0, 1], size_max=6, overlap=2,
        processes=2)
    assert len(res) == len(blocks) == len(src_blocks) == len(sink_blocks)
    for r, b in zip(res, blocks):
        assert r[0] == b["index"]
        assert r[1] == tuple(lo for lo, _ in b["range"]) and r[2] == tuple(hi for _, hi in b["range"])
        assert r[3] == tuple(lo for lo, _ in b["valid"]) and r[4] == tuple(hi for _, hi in b["valid"])
    pts = np.concatenate([r[5] for r in res])
    want = np.argwhere(x > 0)
    assert len(pts) == len(want)
    assert set(map(tuple, pts)) == set(map(tuple, want))
    assert np.array_equal(sink, 2 * x)


def test_process_source_type_and_returns(tmp, rng):
    """BP:233-238, 268-274: 'source' functions get Block objects; without return_result the
    sink argument comes back (None for None); 'array' functions' results are not kept
    (process_block_source returns None, BP:321); an exception comes back as itself; a bad
    function_type is a ValueError."""
    x = rand(rng, (12, 7), "uint16")
    seen = []

    def double(b):
        assert isinstance(b, ap.Block)
        seen.append(b.shape)
        return np.asarray(b) * 2
    sink = np.zeros_like(x)
    assert ap.process(double, x, sink, function_type="source", size_max=5, processes=1) is sink
    assert np.array_equal(sink, x * 2) and len(seen) > 1
    assert ap.process(lambda b: b, x, processes="serial") is None
    res = ap.process(lambda b: b, x, size_max=4, return_result=True, processes=2)
    n = ref.block_sizes(12, 2, 4, cpu_count=ap.default_processes)[0]
    assert n == 4  # 3 blocks of 4, raised to a multiple of 2 processes (BP:461-476)
    assert res == [None] * n

    def boom(b):
        raise KeyError("boom")
    with pytest.raises(KeyError, match="boom"):
        ap.process(boom, x, np.zeros_like(x), size_max=4)
    with pytest.raises(ValueError):
        ap.process(double, x, function_type="nope")
    # results are cast into the sink's dtype as numpy assignment casts (BP:314 into numpy
    # sinks), also into stores
    for kind, dt in (("numpy", bool), ("array", bool), ("store-new", x.dtype)):
        sink = make_sink(kind, tmp, x.shape, bool, "cast" + kind)  # new store: the source's dtype
        ap.process(lambda b: (b % 3) * 1.5, x, sink, size_max=5, overlap=1, processes=2)
        got = values(cw.open(sink) if isinstance(sink, str) else sink)
        assert got.dtype == dt
        assert np.array_equal(got, ((x % 3) * 1.5).astype(dt))
    # as_memory: the function gets copies; results still land in the sink
    sink = np.zeros_like(x)
    ap.process(lambda b: b + 1, x, sink, as_memory=True, size_max=5, overlap=1)
    assert np.array_equal(sink, x + 1)
    blocks = ap.split_into_blocks(x, processes=1, axes=[0], size_max=5, overlap=1,
                                  neighbours=True)
    assert set(blocks[1].neighbours) == {(0, 0), (2, 0)}


def _base2(order, centre):
    """The weight of each 3x3x3 offset (a, b, c) in chunkwise's two index orders (COMPUTE §3),
    the centre's bit removed when `centre` is False (the bits above it move down one)."""
    k = np.zeros((3, 3, 3), dtype=np.int64)
    for a in range(3):
        for b in range(3):
            for c in range(3):
                bit = 9 * a + 3 * b + c if order == "default" else a + 3 * b + 9 * c
                if centre is False:
                    bit = -1 if bit == 13 else bit - (bit > 13)
                k[a, b, c] = 0 if bit < 0 else 2 ** bit
    return k


@pytest.mark.parametrize("chunks", [(4, 5, 3), (16, 16, 16)])
def test_neighbourhood_lut_index_order_clearmap(tmp, rng, table27, chunks):
    """COMPUTE §3 `--index-order clearmap`: the weight of offset (a, b, c) is ClearMap's
    index_kernel 2^(a+3b+9c), and a 2^26 table takes PK12's centre-excluded index
    (cube_base_2(center=False)); checked against scipy's correlation with ClearMap's own kernels
    (clearmap_reference), and the default order against its weights 2^(9a+3b+c)."""
    x = rand(rng, (11, 9, 13), "bool").astype(np.uint8)
    src = cw.from_array(x, tmp / "m.zarr", chunks=chunks)
    corr = lambda k: ndi.correlate(x.astype(np.int64), k, mode="constant", cval=0)
    assert np.array_equal(_base2("clearmap", None), ref.index_kernel(dtype=np.int64))
    assert np.array_equal(_base2("clearmap", False), ref.cube_base_2(center=False))
    t27 = tmp / "t27.npy"
    np.save(t27, table27)
    got = cw.neighbourhood_lut(src, tmp / "cm27.zarr", t27, index_order="clearmap")
    np.testing.assert_array_equal(got[...], table27[corr(ref.index_kernel(dtype=np.int64))])
    t26 = rng.integers(0, 250, 1 << 26, dtype=np.uint8)
    np.save(tmp / "t26.npy", t26)
    got = cw.neighbourhood_lut(src, tmp / "cm26.zarr", tmp / "t26.npy", index_order="clearmap")
    np.testing.assert_array_equal(got[...], t26[corr(ref.cube_base_2(center=False))])
    got = cw.neighbourhood_lut(src, tmp / "d26.zarr", tmp / "t26.npy")
    np.testing.assert_array_equal(got[...], t26[corr(_base2("default", False))])
    got = cw.neighbourhood_lut(src, tmp / "d27.zarr", t27)
    np.testing.assert_array_equal(got[...], table27[corr(_base2("default", None))])
    with pytest.raises(cw.InvalidOptionError, match="clearmap"):
        cw.neighbourhood_lut(src, tmp / "bad.zarr", t27, index_order="zyx")
