"""Arrays: attributes, reading by numpy basic indexing, region writes, create / from_array /
convert (spec/PYTHON.md §1). The oracle is numpy on the same data in memory, and zarr-python
reading the stores chunkwise wrote."""
import json
import os

import numpy as np
import pytest
import zarr

import chunkwise as cw
from conftest import chunk_boxes, n_chunks, rand, random_key, store

DTYPES = ["uint8", "uint16", "int32", "int64", "uint64", "float32", "float64", "bool"]


def same(got, want):
    got = np.asarray(got)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    assert np.array_equal(got, want, equal_nan=want.dtype.kind == "f")


def test_attributes_and_info(tmp, rng):
    """PYTHON §1: .shape .ndim .size .nbytes len() .dtype (a numpy.dtype) .chunks .path .info()
    (chunkwise info --json: shape, dtype, chunk_shape, grid_shape, chunks_total, ...)."""
    x = rand(rng, (13, 17, 11), "uint16")
    x[:4, :5, :3] = 0  # chunk (0, 0, 0) all fill value: not stored
    a, p = store(tmp, x, (4, 5, 3))
    for arr in (a, cw.open(p)):
        assert arr.shape == (13, 17, 11) and isinstance(arr.shape, tuple)
        assert arr.ndim == 3 and arr.size == x.size and arr.nbytes == x.nbytes and len(arr) == 13
        assert isinstance(arr.dtype, np.dtype) and arr.dtype == np.uint16
        assert tuple(arr.chunks) == (4, 5, 3)
        assert os.path.abspath(os.fspath(arr.path)) == os.path.abspath(p)
        info = arr.info()
        assert isinstance(info, dict)
        assert list(info["shape"]) == [13, 17, 11]
        assert info["dtype"] == "uint16"
        assert list(info["chunk_shape"]) == [4, 5, 3]
        assert list(info["grid_shape"]) == [4, 4, 4]
        assert info["chunks_total"] == 64
        assert info["chunks_present"] == 63  # FORMAT §4: an all-fill chunk is not written
        assert info["logical_bytes"] == x.nbytes
        assert info["zarr_format"] == 3
        assert info["fill_value"] == 0
        assert info["stored_bytes"] > 0


def test_open_other_inputs(tmp, rng):
    """PYTHON §1: cw.open reads a .npy, a directory of .npy slices, a raw file with dtype= and
    shape=, a raw file with a .json sidecar, a view spec dict (.path None)."""
    x = rand(rng, (6, 7, 5), "int32")
    np.save(tmp / "v.npy", x)
    a = cw.open(str(tmp / "v.npy"))
    assert a.shape == x.shape and a.dtype == x.dtype
    same(a[...], x)
    same(a[1:5, ::-2, -1], x[1:5, ::-2, -1])
    os.mkdir(tmp / "slices")
    for i in range(6):
        np.save(tmp / "slices" / ("s_%d.npy" % i), x[i])
    same(cw.open(str(tmp / "slices"))[...], x)
    x.tofile(tmp / "v.raw")
    same(cw.open(str(tmp / "v.raw"), dtype="int32", shape=x.shape)[...], x)
    x.tofile(tmp / "w.bin")
    with open(tmp / "w.json", "w") as f:
        json.dump({"shape": list(x.shape), "dtype": "int32"}, f)
    same(cw.open(str(tmp / "w.bin"))[...], x)
    v = cw.open({"concat": [str(tmp / "v.npy"), str(tmp / "w.bin")], "axis": 1})
    assert v.path is None
    same(v[...], np.concatenate([x, x], axis=1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_basic_indexing_random_keys(tmp, rng, dtype):
    """PYTHON §1: a[key] is numpy basic indexing (ints, negative ints, slices with positive or
    negative steps and out-of-range bounds, ..., omitted trailing axes), compared with x[key] for
    300 seeded random keys on a store with small odd chunks."""
    x = rand(rng, (11, 9, 7), dtype)
    a, _ = store(tmp, x, (3, 4, 2))
    for _ in range(300):
        key = random_key(rng, x.shape)
        want = x[key]
        got = a[key]
        assert np.asarray(got).shape == np.shape(want), key
        assert np.asarray(got).dtype == x.dtype, key
        assert np.array_equal(np.asarray(got), want), key


@pytest.mark.parametrize("shape,chunks", [((23,), (5,)), ((9, 13), (4, 3)), ((3, 5, 4, 6), (2, 2, 3, 5))])
def test_basic_indexing_other_ranks(tmp, rng, shape, chunks):
    """PYTHON §1: basic indexing on 1-D, 2-D and 4-D stores."""
    x = rand(rng, shape, "float32")
    a, _ = store(tmp, x, chunks)
    for _ in range(150):
        key = random_key(rng, shape)
        assert np.array_equal(np.asarray(a[key]), x[key]), key


def test_scalar_and_empty_results(tmp, rng):
    """PYTHON §1: all-int keys give one value; empty slices give empty arrays of numpy's shape."""
    x = rand(rng, (7, 6, 5), "int64")
    a, _ = store(tmp, x, (3, 4, 2))
    for key in [(0, 0, 0), (-1, -1, -1), (3, -2, 4), (6, 5, 4)]:
        got = np.asarray(a[key])
        assert got.shape == () and got == x[key]
    for key in [(slice(4, 2),), (slice(None), slice(5, 5)), (slice(None, None, -1), 2, slice(9, 20))]:
        same(a[key], x[key])


def test_asarray(tmp, rng):
    """PYTHON §1: np.asarray(a) reads everything (also with a dtype, as numpy casts)."""
    x = rand(rng, (10, 7, 9), "uint16")
    a, _ = store(tmp, x, (3, 3, 4))
    same(np.asarray(a), x)
    same(np.array(a), x)
    same(np.asarray(a, dtype=np.float64), x.astype(np.float64))
    assert float(np.sum(np.asarray(a), dtype=np.float64)) == float(x.sum(dtype=np.float64))


def test_region_writes_broadcast(tmp, rng):
    """PYTHON §1: a[key] = x broadcasts x to the region (scalars, rows, planes), with integers of
    other widths that fit (int16 and int64 into int32, Python ints); read back by chunkwise and
    by zarr-python."""
    shape = (9, 8, 7)
    a = cw.create(str(tmp / "w.zarr"), shape, "int32", chunks=(4, 3, 5))
    model = np.zeros(shape, np.int32)
    writes = [
        ((slice(2, 7), slice(None), 3), 5),
        ((0, slice(1, 5)), np.arange(7, dtype=np.int16)),
        ((Ellipsis, -1), np.arange(8, dtype=np.int64) * -3),
        ((slice(5, 9), slice(2, 4), slice(None)), rand(rng, (4, 1, 7), "int32")),
        ((-1,), rand(rng, (8, 7), "int32")),
        ((slice(None), -3, slice(-2, None)), np.int64(-7)),
        ((1, 2, 3), 1234567),
    ]
    for key, val in writes:
        a[key] = val
        model[key] = val
        same(a[...], model)
    same(zarr.open_array(str(tmp / "w.zarr"), mode="r")[...], model)
    same(cw.open(str(tmp / "w.zarr"))[...], model)


def test_strided_writes(tmp, rng):
    """PYTHON §1: writes with steps (negative too; the bounding region is read, modified and
    written back) equal numpy's."""
    shape = (9, 8, 7)
    a = cw.create(str(tmp / "s.zarr"), shape, "int16", chunks=(4, 3, 5))
    model = np.zeros(shape, np.int16)
    for _ in range(30):
        key = random_key(rng, shape, allow_ints=True)
        val = rand(rng, model[key].shape, "int16")
        a[key] = val
        model[key] = val
    same(a[...], model)
    same(zarr.open_array(str(tmp / "s.zarr"), mode="r")[...], model)


def test_python_scalars_write_as_numpy(tmp):
    """PYTHON §1: a Python int or float is written as numpy writes it (a uint8 store takes
    a[...] = 5, a float32 store takes 2.5)."""
    u = cw.create(str(tmp / "u.zarr"), (5, 4), "uint8", chunks=(2, 3))
    u[1:3] = 5
    m = np.zeros((5, 4), np.uint8)
    m[1:3] = 5
    same(u[...], m)
    f = cw.create(str(tmp / "f.zarr"), (5, 4), "float32", chunks=(2, 3))
    f[:, 2] = 2.5
    g = np.zeros((5, 4), np.float32)
    g[:, 2] = 2.5
    same(f[...], g)


@pytest.mark.parametrize("dtype", ["uint16", "float32", "int8"])
def test_region_writes_random_order(tmp, rng, dtype):
    """PYTHON §1: 40 writes of random boxes (not chunk-aligned, overlapping) in random order
    against a numpy model; then the store is read by zarr-python."""
    shape = (13, 10, 9)
    p = str(tmp / "r.zarr")
    a = cw.create(p, shape, dtype, chunks=(4, 3, 5))
    model = np.zeros(shape, dtype)
    for _ in range(40):
        lo = [int(rng.integers(0, n)) for n in shape]
        hi = [int(rng.integers(l + 1, n + 1)) for l, n in zip(lo, shape)]
        key = tuple(slice(l, h) for l, h in zip(lo, hi))
        val = rand(rng, tuple(h - l for l, h in zip(lo, hi)), dtype)
        a[key] = val
        model[key] = val
    same(a[...], model)
    same(zarr.open_array(p, mode="r")[...], model)


def test_region_writes_cover_every_chunk_in_random_order(tmp, rng):
    """PYTHON §1: a store filled chunk by chunk in random order equals the data (zarr-python)."""
    x = rand(rng, (11, 7, 10), "float64")
    p = str(tmp / "c.zarr")
    a = cw.create(p, x.shape, "float64", chunks=(3, 4, 4))
    boxes = [b for _, b in chunk_boxes(x.shape, (3, 4, 4))]
    for i in rng.permutation(len(boxes)):
        a[boxes[i]] = x[boxes[i]]
    same(zarr.open_array(p, mode="r")[...], x)


@pytest.mark.parametrize("dtype,fill", [("float32", 1.5), ("uint16", 7), ("int16", -3)])
def test_create_fill_value(tmp, dtype, fill):
    """PYTHON §1: cw.create makes an empty array: every chunk absent, reading the fill value
    (chunkwise, zarr-python); a partial write keeps the fill value around it."""
    p = str(tmp / "e.zarr")
    a = cw.create(p, (7, 6, 5), dtype, chunks=(3, 4, 2), fill_value=fill)
    assert a.shape == (7, 6, 5) and a.dtype == np.dtype(dtype) and tuple(a.chunks) == (3, 4, 2)
    want = np.full((7, 6, 5), fill, dtype)
    same(a[...], want)
    info = a.info()
    assert info["chunks_present"] == 0 and info["chunks_total"] == n_chunks((7, 6, 5), (3, 4, 2))
    assert info["fill_value"] == fill
    same(zarr.open_array(p, mode="r")[...], want)
    a[2:4, 1, :] = 0
    want[2:4, 1, :] = 0
    same(zarr.open_array(p, mode="r")[...], want)
    assert zarr.open_array(p, mode="r").fill_value == fill


@pytest.mark.parametrize("codec", [None, "zstd", "blosc-zstd", "blosc-lz4"])
def test_from_array_codecs(tmp, rng, codec):
    """PYTHON §1 / FORMAT §3: cw.from_array with each codec name the CLI takes (and None, the
    default); read back by zarr-python."""
    x = rand(rng, (9, 10, 11), "uint16")
    p = str(tmp / "f.zarr")
    a = cw.from_array(x, p, chunks=(4, 4, 4), codec=codec)
    assert a.shape == x.shape and tuple(a.chunks) == (4, 4, 4)
    same(a[...], x)
    same(zarr.open_array(p, mode="r")[...], x)


@pytest.mark.parametrize("dtype", ["uint16", "int32", "uint64", "float32", "float64"])
@pytest.mark.parametrize("checksum,shard", [(False, None), (True, None), (False, (2, 4, 4))])
def test_pcodec_stores_read_back_and_in_zarr_python(tmp, rng, dtype, checksum, shard):
    """FORMAT §3: codec="pcodec" writes [numcodecs.pcodec] (no bytes codec) at level 8, with a
    checksum and inside shards too; chunkwise and zarr-python (numcodecs' PCodec) read it back
    exactly, NaN and infinities included; level= changes its level."""
    x = rand(rng, (9, 10, 11), dtype)
    if x.dtype.kind == "f":
        x.flat[[0, 7, 100]] = [np.nan, np.inf, -np.inf]
    p = str(tmp / "p.zarr")
    a = cw.from_array(x, p, chunks=(4, 8, 8), codec="pcodec", checksum=checksum, shard=shard)
    same(a[...], x)
    same(zarr.open_array(p, mode="r")[...], x)
    codecs = json.load(open(os.path.join(p, "zarr.json")))["codecs"]
    inner = codecs[0]["configuration"]["codecs"] if shard else codecs
    assert inner[0] == {"name": "numcodecs.pcodec", "configuration": {"level": 8}}, codecs
    assert [c["name"] for c in inner[1:]] == (["crc32c"] if checksum else []), codecs
    q = str(tmp / "q.zarr")
    cw.from_array(x, q, chunks=(4, 8, 8), codec="pcodec", level=3)
    assert '"level": 3' in open(os.path.join(q, "zarr.json")).read()
    same(zarr.open_array(q, mode="r")[...], x)


@pytest.mark.parametrize("dtype", ["uint8", "int8", "bool"])
def test_pcodec_refuses_one_byte_types(tmp, dtype):
    """FORMAT §3: pcodec takes 16-, 32- and 64-bit types; a 1-byte type is refused by name,
    and nothing is written."""
    p = tmp / "b.zarr"
    with pytest.raises(ValueError, match=f"pcodec compresses 16-, 32- and 64-bit numbers, not {dtype}"):
        cw.from_array(np.zeros((4, 4), dtype), str(p), codec="pcodec")
    assert not p.exists()
    with pytest.raises(ValueError, match="pcodec levels are 0..=12, got 13"):
        cw.from_array(np.zeros((4, 4), "float32"), str(p), codec="pcodec", level=13)


def test_from_array_level_and_array_like(tmp, rng):
    """PYTHON §1: level= sets the level; anything np.asarray takes (a nested list, a Fortran-order
    array, a non-contiguous view) is written as numpy sees it."""
    x = rand(rng, (8, 9, 10), "int16")
    p = str(tmp / "l.zarr")
    cw.from_array(x, p, chunks=(3, 3, 3), codec="zstd", level=7)
    same(zarr.open_array(p, mode="r")[...], x)
    meta = json.load(open(os.path.join(p, "zarr.json")))
    assert '"level": 7' in json.dumps(meta["codecs"])
    lst = x[0].tolist()
    same(cw.from_array(lst, str(tmp / "list.zarr"))[...], np.asarray(lst))
    fx = np.asfortranarray(x)
    same(cw.from_array(fx, str(tmp / "fort.zarr"), chunks=(5, 2, 7))[...], x)
    v = x[::2, ::-1, 3:]
    same(cw.from_array(v, str(tmp / "view.zarr"), chunks=(2, 2, 2))[...], v)


def test_from_array_overwrite(tmp, rng):
    """PYTHON §1: overwrite=True replaces an existing array."""
    x = rand(rng, (5, 6), "uint8")
    y = rand(rng, (3, 4), "float32")
    p = str(tmp / "o.zarr")
    cw.from_array(x, p)
    b = cw.from_array(y, p, overwrite=True)
    same(b[...], y)
    same(zarr.open_array(p, mode="r")[...], y)


def test_convert_npy(tmp, rng):
    """PYTHON §1: cw.convert of one .npy file (C and Fortran order) with chunks and codec."""
    x = rand(rng, (10, 9, 8), "float32")
    np.save(tmp / "x.npy", x)
    np.save(tmp / "xf.npy", np.asfortranarray(x))
    for src in ("x.npy", "xf.npy"):
        p = str(tmp / (src + ".zarr"))
        cw.convert(str(tmp / src), p, chunks=(3, 4, 5), codec="zstd", level=3)
        b = cw.open(p)
        assert tuple(b.chunks) == (3, 4, 5)
        same(b[...], x)
        same(zarr.open_array(p, mode="r")[...], x)


def test_convert_rechunks_a_store_within_memory(tmp, rng):
    """FORMAT §8.1: a store of slabs rechunked to columns and back under a budget that cannot
    hold a slab-column overlap (two passes through an intermediate array) holds the values, the
    asked chunks, and leaves no intermediate behind; a budget too small says how much is needed."""
    x = rand(rng, (16, 64, 64), "uint16")
    slabs = str(tmp / "slabs.zarr")
    cw.from_array(x, slabs, chunks=(1, 64, 64))
    cols = str(tmp / "cols.zarr")
    cw.convert(slabs, cols, chunks=(16, 8, 8), memory=120 << 10, threads=2)
    assert tuple(cw.open(cols).chunks) == (16, 8, 8)
    same(zarr.open_array(cols, mode="r")[...], x)
    back = str(tmp / "back.zarr")
    cw.convert(cols, back, chunks=(1, 64, 64), memory=120 << 10, threads=2)
    same(cw.open(back)[...], x)
    assert not [n for n in os.listdir(tmp) if "rechunk" in n]
    with pytest.raises(cw.InvalidOptionError, match="at least"):
        cw.convert(slabs, str(tmp / "no.zarr"), chunks=(16, 8, 8), memory=20 << 10, threads=2)
    assert not os.path.exists(tmp / "no.zarr")


def test_convert_slices_directory(tmp, rng):
    """PYTHON §1 / CLI convert: a directory of .npy slices is stacked in natural order (slice_2
    before slice_10); axis_names are stored as dimension_names."""
    x = rand(rng, (12, 7, 6), "uint16")
    d = tmp / "slices"
    os.mkdir(d)
    for i in range(12):
        np.save(d / ("slice_%d.npy" % i), x[i])
    p = str(tmp / "s.zarr")
    cw.convert(str(d), p, chunks=(5, 3, 4), axis_names=["z", "y", "x"])
    same(cw.open(p)[...], x)
    same(zarr.open_array(p, mode="r")[...], x)
    assert list(cw.open(p).info()["dimension_names"]) == ["z", "y", "x"]


def test_convert_list_of_files(tmp, rng):
    """PYTHON §1: cw.convert of several .npy files given as a list stacks them in natural order."""
    x = rand(rng, (4, 5, 6), "int32")
    names = []
    for i in range(4):
        n = str(tmp / ("p%d.npy" % i))
        np.save(n, x[i])
        names.append(n)
    p = str(tmp / "l.zarr")
    cw.convert(names, p)
    same(cw.open(p)[...], x)


def test_convert_raw(tmp, rng):
    """PYTHON §1: cw.convert of a raw file with dtype= and shape=, with checksum and shards;
    read back by zarr-python."""
    x = rand(rng, (8, 12, 10), "uint16")
    x.tofile(tmp / "v.raw")
    p = str(tmp / "raw.zarr")
    cw.convert(str(tmp / "v.raw"), p, dtype="uint16", shape=(8, 12, 10), chunks=(4, 6, 5))
    same(cw.open(p)[...], x)
    same(zarr.open_array(p, mode="r")[...], x)
    q = str(tmp / "raw2.zarr")
    cw.convert(str(tmp / "v.raw"), q, dtype="uint16", shape=(8, 12, 10), chunks=(4, 6, 5),
               checksum=True, shard=(2, 3, 5))
    same(zarr.open_array(q, mode="r")[...], x)


def test_convert_in_parts(tmp, rng):
    """PYTHON §1 / COMPUTE §7: convert(partition="I/N"): parts that do not publish return None,
    the last returns the array a single convert writes."""
    x = rng.integers(0, 1000, (9, 8, 7)).astype(np.uint16)
    np.save(tmp / "x.npy", x)
    out = str(tmp / "p.zarr")
    assert cw.convert(str(tmp / "x.npy"), out, chunks=(2, 3, 4), partition="1/2") is None
    a = cw.convert(str(tmp / "x.npy"), out, chunks=(2, 3, 4), partition=(0, 2))
    assert a.chunks == (2, 3, 4) and np.array_equal(a[...], x)


def test_ome_tiff_series_and_axes(tmp):
    """An OME-TIFF opens as one series in the order t, c, z, y, x (spec/CLI.md "TIFF
    inputs"); the oracle is tifffile's reading of the fixture (fixtures/tiff/)."""
    import json
    root = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "tiff")
    two = os.path.join(root, "two_series.ome.tif")
    np.testing.assert_array_equal(cw.open(two)[...], np.load(os.path.join(root, "two_series_s0.npy")))
    s1 = cw.open(two, series=1)
    np.testing.assert_array_equal(s1[...], np.load(os.path.join(root, "two_series_s1.npy")))
    # A pickled series reopens the same series.
    import pickle
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(s1))[...], s1[...])
    out = os.path.join(tmp, "t.zarr")
    cw.convert(os.path.join(root, "tczyx.ome.tif"), out)
    meta = json.load(open(os.path.join(out, "zarr.json")))
    assert meta["dimension_names"] == ["t", "c", "z", "y", "x"]
    np.testing.assert_array_equal(cw.open(out)[...], np.load(os.path.join(root, "tczyx.npy")))
    with pytest.raises(cw.errors.InvalidOptionError, match="series 3 asked for"):
        cw.open(two, series=3)


def test_ome_tiff_physical_sizes_reach_the_store_and_the_pyramid(tmp):
    """An OME-TIFF's physical sizes and time increment become the array's voxel size
    (spec/FORMAT.md §2) and its pyramid's scale, as ome-zarr-py reads it; the oracle is the
    fixture's manifest (what make_tiff_fixtures.py wrote through tifffile)."""
    import json
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    root = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "tiff")
    entry = next(e for e in json.load(open(os.path.join(root, "manifest.json")))["files"]
                 if e["file"] == "tzyx_physical.ome.tif")
    tif = os.path.join(root, "tzyx_physical.ome.tif")
    assert cw.open(tif).voxel_size == tuple(entry["voxel_size"])
    a = cw.convert(tif, os.path.join(tmp, "t.zarr"))
    assert (a.voxel_size, a.units) == (tuple(entry["voxel_size"]), tuple(entry["units"]))
    assert a.info()["voxel_size"] == entry["voxel_size"]
    cw.pyramid(a, os.path.join(tmp, "t.ome.zarr"))
    node = list(Reader(parse_url(os.path.join(tmp, "t.ome.zarr")))())[0]
    ms = node.metadata
    assert [x["name"] for x in ms["axes"]] == entry["axes"]
    assert [x.get("unit") for x in ms["axes"]] == entry["units"]
    assert ms["coordinateTransformations"][0][0]["scale"] == entry["voxel_size"]
    # Given: they win; a plain numpy input records them too.
    b = cw.convert(np.zeros((2, 3, 4), np.uint8), os.path.join(tmp, "b.zarr"),
                   voxel_size=(2, 0.5, 0.5), units=("micrometer", None, "micrometer"))
    assert (b.voxel_size, b.units) == ((2.0, 0.5, 0.5), ("micrometer", None, "micrometer"))
    assert cw.from_array(np.zeros((2, 3)), os.path.join(tmp, "c.zarr")).voxel_size is None
    c = cw.from_array(np.zeros((2, 3)), os.path.join(tmp, "c2.zarr"), voxel_size=(4, 1),
                      units=("second", ""))
    assert (c.voxel_size, c.units) == ((4.0, 1.0), ("second", None))
    e = cw.create(os.path.join(tmp, "e.zarr"), (5, 6), "uint8", voxel_size=(1, 2))
    assert (e.voxel_size, e.units) == ((1.0, 2.0), (None, None))
    with pytest.raises(cw.errors.InvalidOptionError, match="not a positive size"):
        cw.convert(np.zeros((2, 3)), os.path.join(tmp, "d.zarr"), voxel_size=(1, -1))
    assert not os.path.exists(os.path.join(tmp, "d.zarr"))
