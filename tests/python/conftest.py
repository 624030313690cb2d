"""Shared fixtures and oracles for the Python package's tests (spec/PYTHON.md).

Every test compares chunkwise with numpy/scipy applied to the whole array in memory. Data is
random with a seed derived from the test's id, so a failure reproduces. Arrays are small (the
tests run against a debug build too) with small odd chunk shapes, so that every operation
crosses many chunk borders and meets partial edge chunks.

A missing dependency is a failure, never a skip: the imports below raise with the command that
installs the pinned set.
"""
import faulthandler
import itertools
import os
import re
import sys
import zlib

import pytest

_REQ = os.path.join(os.path.dirname(os.path.abspath(__file__)), "requirements.txt")
for _mod in ("numpy", "scipy", "zarr", "dask", "distributed", "tqdm", "tensorstore"):
    try:
        __import__(_mod)
    except ImportError as e:  # a failure, not a skip
        raise ImportError("tests/python need %s: %s -m pip install -r %s (%s)"
                          % (_mod, sys.executable, _REQ, e)) from e
try:
    import chunkwise  # noqa: F401
except ImportError as e:
    raise ImportError("tests/python need the chunkwise package built and installed into this "
                      "interpreter (%s): pip install . at the repository root (%s)"
                      % (sys.executable, e)) from e

import numpy as np  # noqa: E402

import chunkwise as cw  # noqa: E402

# One hung test (a deadlock after fork, a job that never returns) must not hang the suite:
# dump every thread's stack and exit.
TEST_TIMEOUT = float(os.environ.get("CW_TEST_TIMEOUT", "180"))


@pytest.fixture(autouse=True)
def _hang_guard():
    faulthandler.dump_traceback_later(TEST_TIMEOUT, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture
def rng(request):
    """A generator seeded by the test's id (stable across runs and machines)."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def tmp(tmp_path):
    return tmp_path


@pytest.fixture
def chunkwise_bin():
    """The command-line tool: $CHUNKWISE_BIN, else the debug build `cargo test` leaves in
    target/ (.ci/run builds it before the Python tests). Missing is a failure, not a skip."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    p = os.environ.get("CHUNKWISE_BIN") or os.path.join(root, "target", "debug", "chunkwise")
    if not os.access(p, os.X_OK):
        pytest.fail(f"{p}: no chunkwise binary; run `cargo build` (or set CHUNKWISE_BIN)")
    return p


def store(tmp, x, chunks, name="a.zarr", **kw):
    """x written with cw.from_array at tmp/name; returns (Array, path as str)."""
    p = str(tmp / name)
    a = cw.from_array(x, p, chunks=chunks, **kw)
    return a, p


def rand(rng, shape, dtype, lo=None, hi=None):
    """Random values of dtype: integers in [lo, hi) (default: 0..1000 or the type's range if
    smaller), floats in [lo, hi) (default [-100, 100))."""
    dt = np.dtype(dtype)
    if dt == np.bool_:
        return rng.integers(0, 2, shape).astype(bool)
    if dt.kind in "ui":
        info = np.iinfo(dt)
        lo = max(info.min, -500 if dt.kind == "i" else 0) if lo is None else lo
        hi = min(int(info.max) + 1, 1000) if hi is None else hi
        return rng.integers(lo, hi, shape, dtype=dt)
    lo = -100.0 if lo is None else lo
    hi = 100.0 if hi is None else hi
    return rng.uniform(lo, hi, shape).astype(dt)


def chunk_boxes(shape, chunks):
    """The chunk grid's regions (tuples of slices, clipped to the array) in C order."""
    ranges = [range(0, n, c) for n, c in zip(shape, chunks)]
    for starts in itertools.product(*ranges):
        idx = tuple(s // c for s, c in zip(starts, chunks))
        yield idx, tuple(slice(s, min(s + c, n)) for s, c, n in zip(starts, chunks, shape))


def n_chunks(shape, chunks):
    out = 1
    for n, c in zip(shape, chunks):
        out *= -(-n // c)
    return out


def shape_named(msg, shape):
    """True when msg names the shape in one of the usual spellings: (3, 4), [3, 4], 3x4."""
    shape = tuple(int(s) for s in shape)
    forms = [str(shape), str(list(shape)), "x".join(map(str, shape)), ", ".join(map(str, shape))]
    if len(shape) == 1:
        forms.append("(%d,)" % shape[0])
    return any(f in msg for f in forms)


def chunk_named(msg, idx):
    """True when msg names the chunk at grid index idx (c/1/2/0, 1/2/0, (1, 2, 0), [1, 2, 0])."""
    idx = tuple(int(i) for i in idx)
    forms = ["/".join(map(str, idx)), str(idx), str(list(idx)), ".".join(map(str, idx)),
             ",".join(map(str, idx))]
    return any(re.search(r"(?<![\d.])" + re.escape(f) + r"(?![\d.])", msg) for f in forms)


def note_text(exc):
    return "\n".join(getattr(exc, "__notes__", []) or [])


def gaussian_radius(sigma, truncate=4.0):
    return int(truncate * float(sigma) + 0.5)


# --- oracles for the kernels scipy does not have ------------------------------------------

def neighbourhood_index(m):
    """COMPUTE §3 neighbourhood-lut: index = sum in[z+a-1, y+b-1, x+c-1] * 2^(9a+3b+c), a, b, c
    in 0..3, zero outside the array."""
    m = np.asarray(m).astype(np.int64)
    Z, Y, X = m.shape
    p = np.pad(m, 1)
    idx = np.zeros(m.shape, np.int64)
    for a in range(3):
        for b in range(3):
            for c in range(3):
                idx += p[a:a + Z, b:b + Y, c:c + X] << (9 * a + 3 * b + c)
    return idx


# REDUCE §5: the connectivities by rank, as the largest number of coordinates that may differ.
CONNECTIVITY = {1: {2: 1}, 2: {4: 1, 8: 2}, 3: {6: 1, 18: 2, 26: 3}, 4: {8: 1, 32: 2, 64: 3, 80: 4}}


def graph_edges(mask, k=None, coords=False):
    """REDUCE §5: edges (i, j), i < j, between selected voxels whose coordinates differ by one in
    at most k axes, flat C-order indices, sorted by i then j."""
    mask = np.asarray(mask, bool)
    nd = mask.ndim
    k = nd if k is None else k
    shape = mask.shape
    ii, jj = [], []
    for d in itertools.product((-1, 0, 1), repeat=nd):
        nz = [v for v in d if v]
        if not nz or len(nz) > k or nz[0] < 0:
            continue  # each undirected edge once: the lexicographically positive offset
        src = tuple(slice(1, None) if v < 0 else slice(0, n - 1) if v > 0 else slice(None)
                    for v, n in zip(d, shape))
        dst = tuple(slice(0, n - 1) if v < 0 else slice(1, None) if v > 0 else slice(None)
                    for v, n in zip(d, shape))
        both = mask[src] & mask[dst]
        pts = np.argwhere(both)
        base = np.array([s.start or 0 for s in src], np.int64)
        a = pts + base
        b = a + np.array(d, np.int64)
        ii.append(np.ravel_multi_index(a.T, shape) if len(a) else np.zeros(0, np.int64))
        jj.append(np.ravel_multi_index(b.T, shape) if len(b) else np.zeros(0, np.int64))
    i = np.concatenate(ii).astype(np.int64) if ii else np.zeros(0, np.int64)
    j = np.concatenate(jj).astype(np.int64) if jj else np.zeros(0, np.int64)
    order = np.lexsort((j, i))
    i, j = i[order], j[order]
    assert np.all(i < j)
    if not coords:
        return np.stack([i, j], axis=1).reshape(-1, 2)
    ci = np.stack(np.unravel_index(i, shape), axis=1) if len(i) else np.zeros((0, nd), np.int64)
    cj = np.stack(np.unravel_index(j, shape), axis=1) if len(j) else np.zeros((0, nd), np.int64)
    return np.concatenate([ci, cj], axis=1).astype(np.int64).reshape(-1, 2 * nd)


def random_key(rng, shape, allow_neg_steps=True, allow_ints=True, allow_ellipsis=True):
    """A random numpy basic-indexing key for shape: ints (negative too), slices with random
    (possibly out-of-range, negative or None) bounds and steps, and at most one Ellipsis."""
    nd = len(shape)
    items = []
    for n in shape:
        r = rng.random()
        if allow_ints and r < 0.2:
            items.append(int(rng.integers(-n, n)))
            continue
        def bound():
            u = rng.random()
            if u < 0.2:
                return None
            if u < 0.3:  # out of range: numpy clamps
                return int(rng.choice([rng.integers(-n - 3, -n), rng.integers(n, n + 4)]))
            return int(rng.integers(-n, n))
        if allow_neg_steps:
            step = [1, 1, 2, 3, -1, -2, -3, None][int(rng.integers(0, 8))]
        else:
            step = None if rng.random() < 0.5 else 1
        lo, hi = bound(), bound()
        if lo is not None and hi is not None and rng.random() < 0.85:
            # mostly non-empty: bounds in the step's direction
            pos = lambda v: min(max(v + n if v < 0 else v, -1), n)  # noqa: E731
            lo, hi = sorted((lo, hi), key=pos, reverse=step is not None and step < 0)
        items.append(slice(lo, hi, step))
    if rng.random() < 0.15 and items:
        items = items[: int(rng.integers(0, len(items) + 1))]  # trailing axes omitted
    elif allow_ellipsis and nd and rng.random() < 0.3:
        # replace a run of items by ..., keeping what comes before and after
        i = int(rng.integers(0, nd + 1))
        j = int(rng.integers(i, nd + 1))
        items = items[:i] + [Ellipsis] + items[j:]
    if len(items) == 1 and rng.random() < 0.5:
        return items[0]
    return tuple(items)
