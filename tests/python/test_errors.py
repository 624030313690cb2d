"""Bad input (spec/PYTHON.md §6 and the refusals of §1-§4): each error is a chunkwise.Error
subclass that also derives from the builtin a Python user would catch, with a message naming
what is wrong, and nothing is changed or left behind."""
import os
import shutil

import numpy as np
import pytest

import chunkwise as cw
from conftest import chunk_boxes, chunk_named, rand, shape_named, store


def names_a_chunk(msg, shape, chunks):
    return any(chunk_named(msg, idx) for idx, _ in chunk_boxes(shape, chunks))

HIERARCHY = {
    "NotFoundError": FileNotFoundError,
    "OutputExistsError": FileExistsError,
    "InvalidOptionError": ValueError,
    "MismatchError": ValueError,
    "BadRegionError": IndexError,
    "LockedError": BlockingIOError,
    "IoError": OSError,
    "TooLargeError": ValueError,
    "StoreError": None,
    "InputError": None,
    "KernelError": None,
    "GrowError": None,
}


def test_exception_classes():
    """PYTHON §6: chunkwise.Error is the base; each subclass derives from its builtin."""
    assert issubclass(cw.Error, Exception)
    for name, builtin in HIERARCHY.items():
        cls = getattr(cw, name)
        assert issubclass(cls, cw.Error), name
        if builtin is not None:
            assert issubclass(cls, builtin), name


# --- region writes -------------------------------------------------------------------------

@pytest.mark.parametrize("store_dtype,value_dtype", [("uint8", "float64"), ("uint8", "float32"),
                                                      ("float32", "complex64"), ("int64", "float16"),
                                                      ("bool", "uint8"), ("uint16", "complex128")])
def test_write_wrong_dtype(tmp, rng, store_dtype, value_dtype):
    """PYTHON §1: x must keep its kind (bool < integers < floats): otherwise a TypeError naming
    both types, and the store is unchanged."""
    assert not np.can_cast(np.dtype(value_dtype), np.dtype(store_dtype), "same_kind")
    a = cw.create(str(tmp / "w.zarr"), (6, 5), store_dtype, chunks=(4, 4))
    with pytest.raises(TypeError) as e:
        a[1:3, 0:2] = np.ones((2, 2), value_dtype)
    msg = str(e.value)
    assert store_dtype in msg and value_dtype in msg, msg
    assert not np.asarray(a[...]).any()


def test_write_wrong_shape(tmp):
    """PYTHON §1: x that does not broadcast to the region: ValueError naming both shapes."""
    a = cw.create(str(tmp / "w.zarr"), (6, 5, 4), "int32", chunks=(4, 4, 4))
    with pytest.raises(ValueError) as e:
        a[0:3, 1:5] = np.ones((2, 7), np.int32)
    msg = str(e.value)
    assert shape_named(msg, (2, 7)) and shape_named(msg, (3, 4, 4)), msg
    with pytest.raises(ValueError):
        a[0] = np.ones((6, 5, 4), np.int32)
    assert not np.asarray(a[...]).any()


def test_write_outside_array(tmp):
    """PYTHON §1 / §6: an index outside the array is an IndexError, for writes and reads."""
    a = cw.create(str(tmp / "w.zarr"), (6, 5), "uint8", chunks=(4, 4))
    for key in [(6,), (-7,), (0, 5), (slice(None), -6)]:
        with pytest.raises(IndexError):
            a[key] = 1
        with pytest.raises(IndexError):
            a[key]
    with pytest.raises(IndexError):
        a[0, 0, 0]
    with pytest.raises(IndexError):
        a[0, 0, 0] = 1
    for region in [(6,), (slice(None), 5), (0, 0, 0)]:
        with pytest.raises(IndexError):
            cw.stats(a, region=region)
    assert not np.asarray(a[...]).any()


def test_none_and_bad_keys(tmp):
    """PYTHON §1: None (np.newaxis) is refused with IndexError; a zero step is refused as numpy
    refuses it."""
    a = cw.create(str(tmp / "w.zarr"), (6, 5), "uint8", chunks=(4, 4))
    with pytest.raises(IndexError):
        a[None]
    with pytest.raises(IndexError):
        a[:, None, 1]
    with pytest.raises(ValueError):
        a[::0]
    assert not np.asarray(a[...]).any()


def test_integer_writes_must_fit(tmp):
    """PYTHON §1: integers must fit the array's type: int64 values that fit a uint16 store are
    written; values outside its range are a ValueError naming them, and nothing is written."""
    a = cw.create(str(tmp / "w.zarr"), (4, 5), "uint16", chunks=(3, 3))
    a[1] = np.arange(5, dtype=np.int64) * 1000
    m = np.zeros((4, 5), np.uint16)
    m[1] = np.arange(5) * 1000
    assert np.array_equal(a[...], m)
    for bad in (np.array([-1, 2, 3, 4, 5]), np.array([0, 0, 70000, 0, 0], np.int64)):
        with pytest.raises(ValueError) as e:
            a[2] = bad
        assert str(int(bad.min() if bad.min() < 0 else bad.max())) in str(e.value)
    assert np.array_equal(a[...], m)


# --- func results --------------------------------------------------------------------------

def test_func_wrong_shape(tmp, rng):
    """PYTHON §2: func returning the wrong shape: ValueError naming the chunk, the expected and
    the received shape; nothing at the output."""
    x = rand(rng, (8, 6, 6), "float32")
    a, _ = store(tmp, x, (4, 6, 6))
    out = str(tmp / "o.zarr")
    with pytest.raises(ValueError) as e:
        cw.map_blocks(lambda b: b[:-1], a, out=out)
    msg = str(e.value) + "\n" + "\n".join(getattr(e.value, "__notes__", []))
    assert shape_named(msg, (4, 6, 6)) and shape_named(msg, (3, 6, 6)), msg
    assert names_a_chunk(msg, (8, 6, 6), (4, 6, 6)), msg
    assert not os.path.exists(out)
    with pytest.raises(ValueError) as e:
        cw.map_overlap(lambda b: b[1:-1, 1:-1, 1:-1], a, out=out, depth=1)
    msg = str(e.value)
    assert shape_named(msg, (6, 8, 8)) and shape_named(msg, (4, 6, 6)), msg
    assert names_a_chunk(msg, (8, 6, 6), (4, 6, 6)), msg
    assert not os.path.exists(out)
    with pytest.raises(ValueError):
        cw.map_overlap(lambda b: b, a, out=out, depth=1, trim=False)


def test_func_wrong_dtype(tmp, rng):
    """PYTHON §2: func returning a dtype that does not cast to the output's under same_kind:
    TypeError naming the chunk and both types."""
    x = rand(rng, (8, 6, 6), "uint8")
    a, _ = store(tmp, x, (4, 3, 6))
    out = str(tmp / "o.zarr")
    with pytest.raises(TypeError) as e:
        cw.map_blocks(lambda b: b * 0.5, a, out=out)  # float64 into uint8
    msg = str(e.value)
    assert "float64" in msg and "uint8" in msg, msg
    assert names_a_chunk(msg, (8, 6, 6), (4, 3, 6)), msg
    assert not os.path.exists(out)
    with pytest.raises(TypeError) as e:
        cw.map_blocks(lambda b: b.astype(np.complex64), a, out=out, dtype=np.float32)
    assert "complex64" in str(e.value) and "float32" in str(e.value)
    with pytest.raises(TypeError):
        cw.map_blocks(lambda b: "not an array", a, out=out)
    assert not os.path.exists(out)


def test_func_not_callable(tmp, rng):
    """PYTHON §2: a func that is not callable is a TypeError, before anything is written."""
    a, _ = store(tmp, rand(rng, (4, 4), "uint8"), (2, 2))
    out = str(tmp / "o.zarr")
    for f in (42, "gaussian_filter", None, np.zeros(3)):
        with pytest.raises(TypeError):
            cw.map_overlap(f, a, out=out, depth=1)
        with pytest.raises(TypeError):
            cw.map_blocks(f, a, out=out)
    assert not os.path.exists(out)
    assert not [n for n in os.listdir(tmp) if n.startswith(".o.zarr")]


# --- options ---------------------------------------------------------------------------------

def test_unknown_mode(tmp, rng):
    """PYTHON §2 / §6: an unknown boundary mode is a ValueError (InvalidOptionError) naming it."""
    a, _ = store(tmp, rand(rng, (6, 6), "float32"), (3, 3))
    out = str(tmp / "o.zarr")
    calls = [
        lambda: cw.gaussian(a, out, 1.0, mode="bogus"),
        lambda: cw.correlate1d(a, out, [1.0, 2.0, 1.0], mode="bogus"),
        lambda: cw.map_overlap(lambda b: b, a, out=out, depth=1, boundary="bogus"),
    ]
    for c in calls:
        with pytest.raises(ValueError) as e:
            c()
        assert isinstance(e.value, cw.Error) and "bogus" in str(e.value), e.value
    assert not os.path.exists(out)


def test_bad_kernel_options(tmp, rng):
    """COMPUTE §9: sigma <= 0, an axis out of range, an origin outside the filter, an impossible
    memory budget, a bad connectivity, a histogram range with lo > hi: ValueError (chunkwise
    errors), nothing written. (lo == hi is widened by 0.5 each way, as numpy does:
    test_reduce.py.)"""
    a, _ = store(tmp, rand(rng, (6, 6, 6), "float32"), (3, 3, 3))
    out = str(tmp / "o.zarr")
    bad = [
        lambda: cw.gaussian(a, out, 0.0),
        lambda: cw.gaussian(a, out, -1.0),
        lambda: cw.correlate1d(a, out, [1.0, 1.0, 1.0], axis=3),
        lambda: cw.correlate1d(a, out, [1.0, 1.0, 1.0], origin=2),
        lambda: cw.gaussian(a, out, 1.0, memory=1000),
        lambda: cw.graph(a, connectivity=7),
        lambda: cw.histogram(a, bins=4, range=(6.0, 5.0)),
    ]
    for i, c in enumerate(bad):
        with pytest.raises(ValueError) as e:
            c()
        assert isinstance(e.value, cw.Error), (i, type(e.value))
    assert not os.path.exists(out)


def test_inputs_of_different_shapes(tmp, rng):
    """COMPUTE §9: map_overlap inputs of different shapes: MismatchError (ValueError) naming the
    axis and both sizes."""
    a, _ = store(tmp, rand(rng, (6, 5, 4), "float32"), (3, 3, 3))
    b, _ = store(tmp, rand(rng, (6, 7, 4), "float32"), (3, 3, 3), name="b.zarr")
    with pytest.raises(ValueError) as e:
        cw.map_overlap(np.add, a, b, out=str(tmp / "o.zarr"), depth=1)
    assert isinstance(e.value, cw.Error)
    assert "5" in str(e.value) and "7" in str(e.value)


def test_lut_value_outside_table(tmp, rng):
    """COMPUTE §9: a value outside the LUT names the value; nothing at the output."""
    x = rand(rng, (5, 6, 7), "uint16", 0, 100)
    x[3, 2, 1] = 4321
    a, _ = store(tmp, x, (2, 3, 4))
    out = str(tmp / "l.zarr")
    with pytest.raises(cw.Error) as e:
        cw.lut(a, out, np.arange(100, dtype=np.uint8))
    assert "4321" in str(e.value)
    assert not os.path.exists(out)
    with pytest.raises(cw.Error):
        cw.lut(cw.view.cast(a, "float32"), out, np.arange(5000, dtype=np.uint8))  # lut on floats


def test_neighbourhood_lut_refusals(tmp, rng):
    """COMPUTE §9: a table that is not 2^27 long, a non-binary input: chunkwise errors."""
    x = rand(rng, (4, 5, 6), "uint8", 0, 2)
    x[1, 2, 3] = 7
    a, _ = store(tmp, x, (2, 2, 2))
    out = str(tmp / "n.zarr")
    with pytest.raises(cw.Error):
        cw.neighbourhood_lut(a, out, np.zeros(1000, np.uint8))
    with pytest.raises(cw.Error) as e:
        cw.neighbourhood_lut(a, out, np.zeros(2**27, np.uint8))
    assert "7" in str(e.value)
    assert not os.path.exists(out)


# --- missing and existing paths --------------------------------------------------------------

def test_missing_store(tmp, rng):
    """PYTHON §6: opening what does not exist: NotFoundError, a FileNotFoundError."""
    with pytest.raises(FileNotFoundError) as e:
        cw.open(str(tmp / "nothing.zarr"))
    assert isinstance(e.value, cw.NotFoundError) and "nothing.zarr" in str(e.value)
    with pytest.raises(FileNotFoundError):
        cw.gaussian(str(tmp / "nothing.zarr"), str(tmp / "o.zarr"), 1.0)
    with pytest.raises(FileNotFoundError):
        cw.stats(str(tmp / "nothing.zarr"))


def test_deleted_store(tmp, rng):
    """PYTHON §6: a store deleted after it was opened is a FileNotFoundError (NotFoundError) for
    reads, writes, computes and reductions, never fill values."""
    x = rand(rng, (6, 5, 4), "uint16", 1, 100)
    a, p = store(tmp, x, (3, 3, 3))
    shutil.rmtree(p)
    checks = [
        lambda: a[...],
        lambda: np.asarray(a),
        lambda: a.__setitem__((0,), 1),
        lambda: cw.gaussian(a, str(tmp / "g.zarr"), 1.0),
        lambda: cw.stats(a),
        lambda: cw.where(a),
        lambda: a.append(x),
    ]
    for i, c in enumerate(checks):
        with pytest.raises(FileNotFoundError) as e:
            c()
        assert isinstance(e.value, cw.NotFoundError), (i, type(e.value))
    assert not os.path.exists(p)


def test_existing_output(tmp, rng):
    """PYTHON §6: an existing output without overwrite=True: OutputExistsError (FileExistsError);
    the old array stays."""
    x = rand(rng, (5, 4), "uint8")
    a, p = store(tmp, x, (2, 2))
    cw.convert(p, p + "-copy")
    for c in (lambda: cw.from_array(x * 0, p), lambda: cw.create(p, (3, 3), "uint8"),
              lambda: cw.convert(p, p + "-copy")):
        with pytest.raises(FileExistsError) as e:
            c()
        assert isinstance(e.value, cw.OutputExistsError)
    assert np.array_equal(cw.open(p)[...], x)


def test_unpickle_missing_store(tmp, rng):
    """PYTHON §1 / §6: unpickling an Array whose store is gone fails (a chunkwise error)."""
    import pickle

    a, p = store(tmp, rand(rng, (4, 4), "uint8"), (2, 2))
    blob = pickle.dumps(a)
    shutil.rmtree(p)
    with pytest.raises(cw.Error):
        pickle.loads(blob)


# --- growing ---------------------------------------------------------------------------------

def test_append_mismatch(tmp, rng):
    """APPEND §2: an input of another shape on a non-growing axis: MismatchError (ValueError)
    naming both sizes; another type without a cast: an error; the array unchanged."""
    x = rand(rng, (6, 5, 4), "uint16")
    a, p = store(tmp, x, (3, 3, 3))
    with pytest.raises(ValueError) as e:
        a.append(np.zeros((2, 5, 3), np.uint16))
    assert isinstance(e.value, cw.Error) and "4" in str(e.value) and "3" in str(e.value)
    with pytest.raises(cw.Error):
        a.append(np.zeros((2, 5, 4), np.float64))
    assert a.shape == (6, 5, 4)
    assert np.array_equal(cw.open(p)[...], x)


def test_concat_refusals(tmp, rng):
    """APPEND §3.1: an array joined with itself, different codecs: chunkwise errors; nothing at
    the output."""
    x = rand(rng, (4, 5), "uint8")
    a, p = store(tmp, x, (2, 2))
    b, q = store(tmp, x, (2, 2), name="b.zarr", codec="zstd")
    out = str(tmp / "o.zarr")
    with pytest.raises(cw.Error):
        cw.concat([p, p], out=out)
    with pytest.raises(cw.Error):
        cw.concat([a, b], out=out)
    assert not os.path.exists(out)
    with pytest.raises(cw.Error):
        cw.stack([a, cw.from_array(np.zeros((4, 6), np.uint8), str(tmp / "c.zarr"), chunks=(2, 2))], out)
    assert not os.path.exists(out)
