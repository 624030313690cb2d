"""Reproductions of what a review of the Python package found (hangs, collisions, numpy
differences), each a test of the behaviour spec/PYTHON.md promises."""
import multiprocessing as mp
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import chunkwise as cw
from conftest import rand, store


def test_chunkwise_called_inside_func_does_not_deadlock(tmp, rng):
    """PYTHON §2: a function on blocks may call chunkwise itself (it runs on the same pool)."""
    x = rand(rng, (12, 10, 8), "uint16", 0, 1000)
    a, _ = store(tmp, x, (6, 5, 4))
    r = cw.map_blocks(lambda b: np.full(b.shape, cw.stats(b)["max"], b.dtype), a,
                      out=str(tmp / "o.zarr"))
    want = np.empty_like(x)
    for i in range(0, 12, 6):
        for j in range(0, 10, 5):
            for k in range(0, 8, 4):
                want[i:i + 6, j:j + 5, k:k + 4] = x[i:i + 6, j:j + 5, k:k + 4].max()
    assert np.array_equal(r[...], want)


def _info_in_child(p, q):
    q.put(cw.open(p).info()["shape"])


def test_info_in_a_forked_child(tmp, rng):
    """PYTHON §5: after fork, the child builds its own pools (info() used rayon's global one)."""
    x = rand(rng, (6, 5, 4), "uint8", 0, 9)
    a, p = store(tmp, x, (3, 3, 3))
    a.info()  # the parent has used every pool
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    child = ctx.Process(target=_info_in_child, args=(p, q))
    child.start()
    child.join(60)
    assert child.exitcode == 0, "the child hung or failed"
    assert q.get(timeout=5) == [6, 5, 4]


def test_closures_over_other_values_are_other_jobs(tmp, rng):
    """PYTHON §2: the default name covers closure values: make(2) after make(1) into the same
    output is another job (refused without overwrite), never the stale result."""
    x = rand(rng, (6, 5, 4), "float64")
    a, _ = store(tmp, x, (3, 3, 3))

    def make(s):
        return lambda b: b * s

    out = str(tmp / "o.zarr")
    cw.map_blocks(make(1.0), a, out=out)
    with pytest.raises(cw.Error):
        cw.map_blocks(make(2.0), a, out=out)
    assert np.array_equal(cw.map_blocks(make(2.0), a, out=out, overwrite=True)[...], x * 2)


def test_default_name_is_the_same_in_another_process(tmp, rng):
    """PYTHON §2: a function with nested code objects (a generator expression) has the same
    default name in a new process, so the rerun is "already done" (it resumes after a kill)."""
    x = rand(rng, (6, 5, 4), "float64")
    _, p = store(tmp, x, (3, 3, 3))
    script = textwrap.dedent(f"""
        import numpy as np, chunkwise as cw
        CALLS = []
        def f(b):
            CALLS.append(1)
            return b * sum(v for v in (1.0, 2.0))
        r = cw.map_blocks(f, cw.open({p!r}), out={str(tmp / "o.zarr")!r})
        print(len(CALLS))
    """)
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           env=dict(os.environ, PYTHONHASHSEED=str(seed)))
            for seed in (1, 2)]
    assert runs[0].returncode == 0 and runs[1].returncode == 0, [r.stderr for r in runs]
    assert int(runs[0].stdout) == 8 and int(runs[1].stdout) == 0, [r.stdout for r in runs]


def test_a_bool_index_is_refused(tmp, rng):
    """PYTHON §1: a Python bool is not an integer index (numpy takes it as a mask)."""
    a, _ = store(tmp, rand(rng, (4, 5, 6), "uint8", 0, 9), (3, 3, 3))
    with pytest.raises(IndexError):
        a[True]
    with pytest.raises(IndexError):
        a[True] = 7


def test_create_overwrite_with_bad_arguments_keeps_the_old_array(tmp, rng):
    """PYTHON §1: overwrite=True replaces the array only once the new one is made."""
    x = rand(rng, (6, 5), "uint16", 0, 100)
    a, p = store(tmp, x, (3, 3))
    with pytest.raises(TypeError):
        cw.create(p, (10,), "complex64", overwrite=True)
    with pytest.raises(ValueError):
        cw.create(p, (10,), "uint8", fill_value=300, overwrite=True)
    assert np.array_equal(cw.open(p)[...], x)
    b = cw.create(p, (10,), "uint8", fill_value=3, overwrite=True)
    assert np.array_equal(b[...], np.full(10, 3, np.uint8))


def test_stats_of_uint64_values_past_2_63(tmp):
    """PYTHON §3: min and max are exact for every uint64."""
    x = np.array([2**63 + 9, 2**63 + 5, 2**64 - 1], np.uint64)
    a = cw.from_array(x, str(tmp / "u.zarr"), chunks=(2,))
    s = cw.stats(a)
    assert (s["min"], s["max"], s["sum"]) == (2**63 + 5, 2**64 - 1, sum(int(v) for v in x))


def test_a_read_too_big_for_memory_is_a_memory_error(tmp):
    """PYTHON §1: numpy allocates the result, so a region too big is its MemoryError, never a
    crash or a Rust panic."""
    a = cw.create(str(tmp / "big.zarr"), (2**28, 2**28), "uint8", chunks=(2**15, 2**15))
    with pytest.raises(MemoryError):
        a[...]
    assert a[5, 7:9].tolist() == [0, 0]


def test_zero_dimensional_arrays_are_refused(tmp):
    """PYTHON §1: stores have at least one axis; a 0-d numpy array is an error, not (1,)."""
    with pytest.raises(ValueError):
        cw.from_array(np.array(5), str(tmp / "z.zarr"))
    assert not os.path.exists(tmp / "z.zarr")


def test_writes_take_what_numpy_takes(tmp, rng):
    """PYTHON §1: values with extra leading axes of length 1, and empty regions, as numpy."""
    x = rand(rng, (4, 5, 6), "uint8", 0, 9)
    a, _ = store(tmp, x, (3, 3, 3))
    a[0] = np.ones((1, 5, 6), np.uint8)
    x[0] = np.ones((1, 5, 6), np.uint8)
    a[1:1] = np.empty((0, 5, 6), np.float64)  # empty: no kind to check, nothing to write
    x[1:1] = np.empty((0, 5, 6), np.float64)
    for target in (a, x):  # an empty list does not broadcast to (0, 5, 6), for numpy either
        with pytest.raises(ValueError):
            target[1:1] = []
    assert np.array_equal(a[...], x)


def test_a_large_write_goes_one_chunk_layer_at_a_time(tmp, rng):
    """PYTHON §1: a[...] = scalar on a store is written layer by layer, equal to numpy's."""
    x = rand(rng, (10, 7, 6), "float32")
    a, _ = store(tmp, x, (3, 4, 4))
    a[1:9, 2:] = 2.5
    x[1:9, 2:] = 2.5
    assert np.array_equal(a[...], x)


def test_pickled_arrays_open_from_another_directory(tmp, rng, monkeypatch):
    """PYTHON §1: pickles hold absolute paths (a worker's directory is not the client's)."""
    x = rand(rng, (6, 5), "uint16", 0, 100)
    monkeypatch.chdir(tmp)
    cw.from_array(x, "rel.zarr", chunks=(3, 3))
    blob = pickle.dumps(cw.open("rel.zarr"))
    os.mkdir(tmp / "elsewhere")
    monkeypatch.chdir(tmp / "elsewhere")
    assert np.array_equal(pickle.loads(blob)[...], x)


def test_an_int_on_every_axis_gives_a_numpy_scalar(tmp, rng):
    """PYTHON §1: as numpy's a[i, j]."""
    x = rand(rng, (4, 5), "int16", -9, 9)
    a, _ = store(tmp, x, (3, 3))
    v = a[2, -1]
    assert isinstance(v, np.int16) and v == x[2, -1]
