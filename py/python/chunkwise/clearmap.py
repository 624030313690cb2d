"""ClearMap2's parallel array processing on chunkwise.

A drop-in for ``ClearMap.ParallelProcessing.DataProcessing.ArrayProcessing`` and
``ClearMap.ParallelProcessing.BlockProcessing``: the same names, argument order and defaults, and
ClearMap's definitions of the results, so a ClearMap pipeline switches by changing an import::

    import chunkwise.clearmap as ap      # was: import ClearMap...ArrayProcessing as ap
    import chunkwise.clearmap as bp      # was: import ClearMap.ParallelProcessing.BlockProcessing as bp

Sources and sinks are numpy arrays, ``.npy`` paths, chunkwise ``Array``s or store paths (any
other path is opened with ``chunkwise.open``). A source that is not in memory (a path or an
``Array``) is computed by chunkwise's engine, chunk by chunk in parallel; a numpy source by
numpy. Both give the same values.

Results, as ClearMap returns them:

- ``sink=None``: a new in-memory array, a :class:`SourceArray` (a ``numpy.ndarray`` that also
  has ClearMap's ``.array``, so ``ap.where(x).array`` keeps working);
- a numpy sink is written in place and returned (as a ``SourceArray`` view of it);
- a ``.npy`` path is created (or, if it exists with the right shape, written into) and
  returned as a ``SourceArray`` view of its memory map (``.location`` is the path);
- a store path is created (or written into when it exists) and returned as a chunkwise
  ``Array``; an ``Array`` sink is written into and returned.

An existing sink must have the result's shape (ClearMap: ``ValueError``, as here). ClearMap also
requires its exact dtype; chunkwise casts into it under numpy's ``same_kind`` rule instead
(``correlate1d`` truncates into any dtype, as ClearMap's C cast does).

Where ClearMap's definitions differ from chunkwise's native functions:

- ``apply_lut_to_index``: ClearMap's index kernel (``Topology3d.index_kernel``) gives cell
  (i, j, k) the weight 2^(i + 3j + 9k), axis 0 the least significant; chunkwise's
  ``neighbourhood_lut`` uses 2^(9i + 3j + k). Any 3-D integer kernel and table are taken here.
- ``where`` selects values ``> 0`` (chunkwise's ``where``: ``!= 0``); 1-D gives flat indices;
  2-D and more give ClearMap's order (blocks of the last axis, see :func:`where`).
- ``neighbours`` pairs positions in an index list (chunkwise's ``graph`` pairs voxels).
- ``block_sums`` counts elements ``> 0`` in equal ranges of the flattened array.
- ``correlate1d`` pads with zeros, computes in double and truncates to
  ``numpy.result_type(source, kernel)``; chunkwise's pads by ``reflect`` and rounds.
- ``process`` runs the function on ClearMap's blocks (``split_into_blocks``: block sizes,
  overlaps and valid regions as ClearMap computes them, no padding at the array's edges), not
  on chunkwise's chunk grid: functions that are not local (block statistics, percentiles)
  therefore give ClearMap's results.

ClearMap's IO helpers (``initialize_source``, ``initialize_sink``, ``io.as_source``) are not
part of this module; ClearMap's ``processes`` (a process pool) are threads here.
"""
import concurrent.futures
import functools
import hashlib
import math
import numbers
import os
import shutil
import tempfile
import threading
import time

import numpy as np

import chunkwise as _cw

__all__ = [
    "SourceArray", "apply_lut", "apply_lut_to_index", "correlate1d", "where", "neighbours",
    "index_neighbours", "read", "write", "block_ranges", "block_sums", "process", "Block",
    "block_sizes", "block_axes", "split_into_blocks", "index_kernel",
    "default_processes", "default_blocks_per_process", "default_cutoff",
    "default_size_max", "default_size_min", "default_overlap",
]

###############################################################################
# Defaults (ArrayProcessing.py:52-71, BlockProcessing.py:87-118)
###############################################################################

default_processes = os.cpu_count() or 1
"""Default number of processes (threads here): the number of CPUs, as ClearMap's."""

default_blocks_per_process = 10
"""Blocks per process splitting a flattened array (``where``, ``block_sums``), as ClearMap's."""

default_cutoff = 20000000
"""Kept for compatibility; ClearMap's ``where`` caps its ``cutoff`` at 1, so it has no effect."""

default_size_max = None
"""Default maximal block size for :func:`process` (None: the whole axis)."""

default_size_min = None
"""Default minimal block size for :func:`process` (None: from the overlap)."""

default_overlap = None
"""Default overlap between blocks for :func:`process` (None: no overlap)."""

_INDEX_TABLE_SIZE = 1 << 27


def index_kernel(axis=None, dtype="uint32"):
    """ClearMap's 3x3x3 configuration index kernel (``Topology3d.index_kernel``).

    The 1-D kernel of axis ``d`` is ``[(2**(3**d))**k for k in range(3)]``; with ``axis=None``
    their outer product, so cell ``(i, j, k)`` has the weight ``2**(i + 3*j + 9*k)``.
    """
    kernels = [np.array([(2 ** (3 ** d)) ** k for k in range(3)], dtype=dtype) for d in range(3)]
    if axis is not None:
        return kernels[axis]
    out = np.multiply.outer(np.multiply.outer(kernels[0].astype(np.int64),
                                              kernels[1].astype(np.int64)),
                            kernels[2].astype(np.int64))
    return np.asarray(out, dtype=dtype)


###############################################################################
# Results
###############################################################################

class SourceArray(np.ndarray):
    """A numpy array as returned by this module.

    It is a plain ``numpy.ndarray`` in every respect, plus what ClearMap code uses on the
    ``Source`` objects ClearMap returns: ``.array`` and ``.as_buffer()`` (the array itself as a
    plain ndarray) and ``.location`` (the ``.npy`` path it is mapped from, else None).
    """

    def __array_finalize__(self, obj):
        self.location = None

    @property
    def array(self):
        """The data as a plain ``numpy.ndarray`` (no copy)."""
        return self.view(np.ndarray)

    def as_buffer(self):
        """The data as a plain ``numpy.ndarray`` (no copy), as ClearMap's ``Source.as_buffer``."""
        return self.view(np.ndarray)


def _wrap(x, location=None):
    if isinstance(x, np.memmap):
        x.flush()
    r = np.asarray(x).view(SourceArray) if not isinstance(x, np.memmap) else x.view(SourceArray)
    r.location = location if location is not None else getattr(x, "filename", None)
    return r


###############################################################################
# Sources and sinks
###############################################################################

def _is_path(x):
    return isinstance(x, (str, os.PathLike))


def _is_npy(p):
    return os.fspath(p).lower().endswith(".npy")


def _is_array(x):
    return isinstance(x, _cw.Array)


def _source(x):
    """A numpy array (in memory or memory-mapped) or a chunkwise Array."""
    if _is_array(x):
        return x
    if _is_path(x):
        return _cw.open(os.fspath(x))
    if isinstance(x, Block):
        return np.asarray(x)
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "array") and not hasattr(x, "__array__"):
        return np.asarray(x.array)
    return np.asarray(x)


def _memory(x):
    """x read into memory as a numpy array (tables, kernels, index lists)."""
    s = _source(x)
    return np.asarray(s) if _is_array(s) else s


def _order(x):
    if isinstance(x, np.ndarray) and x.ndim > 1 and x.flags.f_contiguous and not x.flags.c_contiguous:
        return "F"
    return "C"


def _check_shape(what, shape, want):
    if tuple(shape) != tuple(want):
        raise ValueError("Incompatible shapes %r != %r for the sink %s!" % (tuple(want), tuple(shape), what))


def _sink_target(sink, shape, dtype, order="C"):
    """Resolve a sink: None, a numpy array (maybe a memmap), a chunkwise Array, or ("new", path)
    for a store to be created. A new .npy file is created here."""
    if sink is None:
        return None
    if _is_array(sink):
        _check_shape(sink.path, sink.shape, shape)
        return sink
    if isinstance(sink, np.ndarray):
        _check_shape("array", sink.shape, shape)
        return sink
    if _is_path(sink):
        p = os.fspath(sink)
        if _is_npy(p):
            if os.path.exists(p):
                mm = np.load(p, mmap_mode="r+")
                _check_shape(p, mm.shape, shape)
                return mm
            return np.lib.format.open_memmap(p, mode="w+", dtype=np.dtype(dtype), shape=tuple(shape),
                                             fortran_order=(order == "F"))
        if os.path.exists(p):
            a = _cw.open(p)
            _check_shape(p, a.shape, shape)
            return a
        return ("new", p)
    raise TypeError("sink must be None, a numpy array, a chunkwise Array or a path, not %r"
                    % type(sink).__name__)


def _slab_rows(shape, itemsize, step):
    row = itemsize * int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else itemsize
    rows = max(1, (64 << 20) // max(1, row))
    return max(step, rows // step * step)


def _copy(src, dst):
    """Copy src (numpy or Array) into dst (numpy or Array) slab by slab along axis 0."""
    shape = tuple(src.shape)
    if len(shape) == 0 or shape[0] == 0:
        dst[...] = np.asarray(src[...])
        return
    step = int(dst.chunks[0]) if _is_array(dst) else (int(src.chunks[0]) if _is_array(src) else 1)
    rows = _slab_rows(shape, np.dtype(src.dtype).itemsize, max(1, step))
    for i in range(0, shape[0], rows):
        part = np.asarray(src[i:i + rows])
        if _is_array(dst):
            dst[i:i + rows] = part
        else:
            np.copyto(dst[i:i + rows], part, casting="same_kind")


def _deliver(result, target):
    """Put an in-memory result into a resolved sink and return what ClearMap returns."""
    if target is None:
        return _wrap(result)
    if isinstance(target, tuple):
        return _cw.from_array(result, target[1])
    if _is_array(target):
        target[...] = result
        return target
    np.copyto(target, result, casting="same_kind")
    return _wrap(target)


def _engine(run, target, sink):
    """run(out) computes into a new store at path out and returns it; deliver it to target."""
    if isinstance(target, tuple):
        return run(target[1])
    near = None
    if _is_path(sink):
        near = os.path.dirname(os.path.abspath(os.fspath(sink)))
    elif _is_array(target) and target.path is not None:
        near = os.path.dirname(os.path.abspath(os.fspath(target.path)))
    tmp = tempfile.mkdtemp(prefix=".chunkwise-clearmap-", dir=near)
    try:
        res = run(os.path.join(tmp, "out.zarr"))
        if target is None:
            return _wrap(np.asarray(res[...]))
        _copy(res, target)
        return target if _is_array(target) else _wrap(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _threads(processes):
    if processes is None:
        return None
    if processes == "serial":
        return 1
    return int(processes)


def _processes(processes):
    """ArrayProcessing.py:529-532: None -> default_processes, 'serial' -> 1."""
    if processes is None:
        return default_processes
    if processes == "serial":
        return 1
    return processes


def _engine_kw(processes, verbose):
    kw = {}
    t = _threads(processes)
    if t is not None:
        kw["threads"] = t
    if verbose:
        kw["progress"] = True
    return kw


def _digest(*parts):
    h = hashlib.blake2b(digest_size=12)
    for p in parts:
        if isinstance(p, np.ndarray):
            a = np.ascontiguousarray(p)
            h.update(str((a.dtype.str, a.shape)).encode())
            h.update(a.view(np.uint8).reshape(-1).data if a.size else b"")
        else:
            h.update(repr(p).encode())
        h.update(b"|")
    return h.hexdigest()


class _Timer:
    def __init__(self, name, verbose):
        self.name, self.verbose, self.t0 = name, verbose, time.time()
        if verbose:
            print("%s: initialized!" % name)

    def done(self):
        if self.verbose:
            print("%s: elapsed time: %.3fs" % (self.name, time.time() - self.t0))


def _lookup(lut, idx, what):
    """lut[idx] for an int64 index array, refusing indices outside the table (ClearMap reads
    whatever memory lies there)."""
    n = lut.shape[0]
    if idx.size:
        bad = (idx < 0) | (idx >= n)
        if bad.any():
            pos = tuple(int(v) for v in np.argwhere(bad)[0])
            raise IndexError("%s: index %d at %r is outside the table of %d entries"
                             % (what, int(idx[pos]), pos, n))
    return lut[idx]


def _integer_view(x):
    return x.view(np.uint8) if x.dtype == np.bool_ else x


###############################################################################
# Lookup tables
###############################################################################

def apply_lut(source, lut, sink=None, blocks=None, processes=None, verbose=False):
    """Transform the source by a lookup table: ``sink[...] = lut[source[...]]``.

    ClearMap: ArrayProcessing.apply_lut (ArrayProcessing.py:78-110,
    ArrayProcessingCode.pyx:56-64). The result has the source's shape and the table's dtype.

    Arguments
    ---------
    source : integer or bool array, ``.npy`` path, chunkwise Array or store path
        The values to look up (bool counts as 0/1).
    lut : 1-D array or ``.npy`` path
        The lookup table.
    sink : None, array, ``.npy`` path, Array or store path
        Where to write the result; if None a new array is returned.
    blocks : int or None
        Accepted for compatibility (ClearMap's work split); no effect on the result.
    processes : int, 'serial' or None
        Threads to use (None: one per core).
    verbose : bool
        Print progress information.

    Returns
    -------
    sink : SourceArray or Array
        The transformed source.

    Every value must index the table: a value outside it raises (``IndexError`` in memory, a
    ``chunkwise.Error`` naming the value and chunk from the engine) where ClearMap reads
    whatever lies in memory there. Float sources are refused (``TypeError``), as ClearMap's
    integer-only buffer types refuse them.
    """
    timer = _Timer("apply_lut", verbose)
    lut = _memory(lut)
    if lut.ndim != 1:
        raise ValueError("apply_lut: the lookup table must be 1-D, not of shape %r" % (lut.shape,))
    src = _source(source)
    if np.dtype(src.dtype).kind not in "iub":
        raise TypeError("apply_lut: the source must be integer or bool, not %s" % src.dtype)
    target = _sink_target(sink, src.shape, lut.dtype, _order(src))
    if _is_array(src):
        kw = _engine_kw(processes, verbose)

        def run(out):
            return _cw.lut(src, out, lut, **kw)
        res = _engine(run, target, sink)
    else:
        x = _integer_view(src)
        if x.size:
            lo, hi = x.min(), x.max()
            if lo < 0 or hi >= lut.shape[0]:
                bad = np.argwhere((x < 0) | (x >= lut.shape[0]))[0]
                raise IndexError("apply_lut: value %d at %r is outside the table of %d entries"
                                 % (int(x[tuple(bad)]), tuple(int(v) for v in bad), lut.shape[0]))
        out = np.empty(x.shape, dtype=lut.dtype, order=_order(src))
        np.take(lut, x, out=out)
        res = _deliver(out, target)
    timer.done()
    return res


def _index_sums(g, w, shape):
    """sum over the kernel cells t of <int64>(g[x + t] * w[t]) for x in the box `shape`."""
    out = np.zeros(shape, np.int64)
    g = _integer_view(g)
    isf = g.dtype.kind == "f"
    for t in zip(*np.nonzero(w)):
        wt = int(w[t])
        v = g[tuple(slice(int(ti), int(ti) + n) for ti, n in zip(t, shape))]
        if isf:  # C: float * long is a float product, then cast to long (truncation)
            out += np.trunc(v * v.dtype.type(wt)).astype(np.int64)
        else:
            out += v.astype(np.int64) * np.int64(wt)
    return out


def _cm_to_cw_table(lut):
    """The 2^27 table for chunkwise's bit order (weight 2^(9i+3j+k)) equivalent to ``lut`` for
    ClearMap's (2^(i+3j+9k)). A cw index n is three 9-bit planes g_i (bit 3j+k = cell (i,j,k));
    its ClearMap index is sum_i P[g_i] << i with P[g] = sum_{j,k} bit_{3j+k}(g) << (3j+9k)."""
    g = np.arange(512, dtype=np.int64)
    P = np.zeros(512, np.int64)
    for j in range(3):
        for k in range(3):
            P |= ((g >> (3 * j + k)) & 1) << (3 * j + 9 * k)
    Q = ((P[:, None] << 1) | P[None, :]).reshape(-1)  # planes i=1 (rows) and i=0 (columns)
    out = np.empty(_INDEX_TABLE_SIZE, dtype=lut.dtype)
    for g2 in range(512):
        out[g2 << 18:(g2 + 1) << 18] = lut[(P[g2] << 2) | Q]
    return out


_table_cache = {}
_table_lock = threading.Lock()


def _cw_table(lut):
    key = _digest(lut)
    with _table_lock:
        t = _table_cache.get(key)
        if t is None:
            t = _cm_to_cw_table(lut)
            _table_cache.clear()
            _table_cache[key] = t
    return t


def _is_binary(src, processes):
    if src.dtype == np.bool_:
        return True
    if np.dtype(src.dtype).kind not in "iu":
        return False
    s = _cw.stats(src)
    return s["count"] == 0 or (s["min"] >= 0 and s["max"] <= 1)


def apply_lut_to_index(source, kernel, lut, sink=None, processes=None, verbose=False):
    """Correlate the source with an index kernel and look the sums up in a table.

    ClearMap: ArrayProcessing.apply_lut_to_index (ArrayProcessing.py:113-148,
    ArrayProcessingCode.pyx:67-107): for every voxel ``x``,
    ``index = sum_t int(source[x + t - k//2] * kernel[t])`` over the kernel's cells ``t``
    (centre ``k//2`` per axis, any size), cells outside the array counting 0, and
    ``sink[x] = lut[index]``. With ``kernel = index_kernel()`` (weight ``2**(i+3j+9k)`` for
    cell ``(i, j, k)``: axis 0 is the least significant bit, the reverse of chunkwise's
    ``neighbourhood_lut``) and a binary source this is the 3x3x3 configuration lookup; any 3-D
    integer kernel and any table length are taken (PK12's 26-bit kernel
    ``cube_base_2(center=False)`` with a 2^26 table).

    Arguments
    ---------
    source : 3-D array, ``.npy`` path, chunkwise Array or store path
        Usually binary; integer and float values are weighted as ClearMap weights them (float
        products truncated to integers term by term).
    kernel : 3-D integer array
        The correlation kernel.
    lut : 1-D array or ``.npy`` path
        The lookup table; the result has its dtype.
    sink : None, array, ``.npy`` path, Array or store path
        Where to write the result; if None a new array is returned.
    processes : int, 'serial' or None
        Threads to use (None: one per core).
    verbose : bool
        Print progress information.

    Returns
    -------
    sink : SourceArray or Array
        The looked-up values.

    Sources and kernels that are not 3-D raise ``NotImplementedError`` (as ClearMap). An index
    outside the table raises (ClearMap reads past its table). Out of memory, the standard
    kernel with a 2^27 table on a binary source runs chunkwise's native ``neighbourhood_lut``
    with the table permuted to its bit order; any other case a chunkwise ``map_overlap``.
    """
    timer = _Timer("apply_lut_to_index", verbose)
    src = _source(source)
    kernel = _memory(kernel)
    lut = _memory(lut)
    if src.ndim != 3 or kernel.ndim != 3:
        raise NotImplementedError("apply_lut_index not implemented for non 3d sources, found %d "
                                  "dimensions!" % (src.ndim if src.ndim != 3 else kernel.ndim))
    if kernel.dtype.kind not in "iub":
        raise TypeError("apply_lut_to_index: the kernel must be integer, not %s" % kernel.dtype)
    if np.dtype(src.dtype).kind not in "iubf":
        raise TypeError("apply_lut_to_index: unsupported source dtype %s" % src.dtype)
    if lut.ndim != 1:
        raise ValueError("apply_lut_to_index: the lookup table must be 1-D, not of shape %r"
                         % (lut.shape,))
    w = kernel.astype(np.int64)
    before = [k // 2 for k in w.shape]
    target = _sink_target(sink, src.shape, lut.dtype, _order(src))
    if _is_array(src):
        kw = _engine_kw(processes, verbose)
        native = (w.shape == (3, 3, 3) and np.array_equal(w, index_kernel(dtype=np.int64))
                  and lut.shape[0] == _INDEX_TABLE_SIZE and _is_binary(src, processes))
        if native:
            table = _cw_table(lut)

            def run(out):
                return _cw.neighbourhood_lut(src, out, table, **kw)
        else:
            table = lut
            depth = tuple(before)

            def index_lookup(g):
                shape = tuple(n - 2 * d for n, d in zip(g.shape, depth))
                return _lookup(table, _index_sums(g, w, shape), "apply_lut_to_index")

            def run(out):
                return _cw.map_overlap(index_lookup, src, out=out, depth=depth,
                                       boundary="constant", dtype=lut.dtype, trim=False,
                                       name="chunkwise.clearmap.apply_lut_to_index "
                                       + _digest(w, lut), **kw)
        res = _engine(run, target, sink)
    else:
        pad = [(b, k - b - 1) for b, k in zip(before, w.shape)]
        g = np.pad(_integer_view(src), pad)
        res = _deliver(_lookup(lut, _index_sums(g, w, src.shape), "apply_lut_to_index"), target)
    timer.done()
    return res


###############################################################################
# Correlation
###############################################################################

def _correlate_valid(g, w, axis, n):
    """out[x] = sum_t g[x + t] * w[t] along axis for x in [0, n), in float64, summed in the
    order of t (ClearMap's order)."""
    shape = list(g.shape)
    shape[axis] = n
    out = np.zeros(shape, np.float64)
    for t, wt in enumerate(w):
        sl = [slice(None)] * g.ndim
        sl[axis] = slice(t, t + n)
        out += g[tuple(sl)] * wt
    return out


def _cast(r, dtype):
    """ClearMap's <sink_t>temp: truncation toward zero for integer sinks, rounding for floats."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return np.trunc(r) != 0
    if dtype.kind in "iu":
        with np.errstate(invalid="ignore"):
            return np.trunc(r).astype(dtype)
    return r.astype(dtype)


def correlate1d(source, kernel, sink=None, axis=0, processes=None, verbose=False):
    """Correlate the source along an axis with a 1-D kernel, ClearMap's way.

    ClearMap: ArrayProcessing.correlate1d (ArrayProcessing.py:155-194,
    ArrayProcessingCode.pyx:146-281): ``out[j] = sum_m source[j + m] * kernel[k//2 + m]``
    along ``axis`` for ``m`` in ``[-k//2, k - k//2)``, zero outside the array (scipy's
    ``correlate1d`` with ``mode="constant", cval=0``), computed in double in the order of ``m``
    and cast to the output dtype by truncation toward zero (integers) or rounding (floats).

    The output dtype: with ``sink=None`` ``numpy.result_type(source, kernel)`` (a bool source
    counting as uint8); a sink that does not exist yet is created with the source's dtype and
    an existing sink keeps its own (ClearMap's ``initialize_sink(like=source)``). Integer
    results outside the output type are undefined (a C cast), as in ClearMap.

    Arguments
    ---------
    source : array, ``.npy`` path, chunkwise Array or store path
        The data.
    kernel : 1-D array
        The weights.
    sink : None, array, ``.npy`` path, Array or store path
        Where to write the result; if None a new array is returned.
    axis : int
        The axis to correlate along (negative counts from the end).
    processes : int, 'serial' or None
        Threads to use (None: one per core).
    verbose : bool
        Print progress information.

    Returns
    -------
    sink : SourceArray or Array
        The correlated source.

    ClearMap's own driver is only right for 2-D and 3-D arrays: on a 1-D array it computes
    nothing (ArrayProcessingCode.pyx:233-240 never picks an iteration axis, so the zeros of
    the new sink are returned), on 4-D and more its line iterator runs one line past each axis
    (pyx:189-195), and it asserts ``shape[axis] > len(kernel)`` (pyx:222). chunkwise applies
    the per-line definition above to every line of any array, whatever its length.
    """
    timer = _Timer("correlate1d", verbose)
    src = _source(source)
    w = _memory(kernel)
    if w.ndim != 1 or w.shape[0] == 0:
        raise ValueError("correlate1d: the kernel must be a non-empty 1-D array, not of shape %r"
                         % (w.shape,))
    ndim = src.ndim
    if not -ndim <= axis < ndim:
        raise ValueError("correlate1d: axis %d out of range for %d dimensions" % (axis, ndim))
    axis = axis % ndim
    sdt = np.dtype(np.uint8) if src.dtype == np.bool_ else np.dtype(src.dtype)
    if sink is None:
        dtype = np.result_type(sdt, w.dtype)
    elif _is_array(sink) or isinstance(sink, np.ndarray):
        dtype = np.dtype(sink.dtype)
    elif _is_path(sink) and os.path.exists(os.fspath(sink)):
        dtype = None  # the existing sink's
    else:
        dtype = np.dtype(src.dtype)
    if dtype is None:
        target = _sink_target(sink, src.shape, src.dtype, _order(src))
        dtype = np.dtype(target.dtype)
    else:
        target = _sink_target(sink, src.shape, dtype, _order(src))
    weights = [float(v) for v in w.astype(np.float64)]
    k = len(weights)
    k1 = k // 2
    if _is_array(src):
        kw = _engine_kw(processes, verbose)
        depth = tuple(k1 if d == axis else 0 for d in range(ndim))

        def corr(g):
            n = g.shape[axis] - 2 * k1
            return _cast(_correlate_valid(_integer_view(g).astype(np.float64), weights, axis, n),
                         dtype)

        def run(out):
            return _cw.map_overlap(corr, src, out=out, depth=depth, boundary="constant",
                                   dtype=dtype, trim=False,
                                   name="chunkwise.clearmap.correlate1d "
                                   + _digest(np.asarray(weights), axis, dtype.str), **kw)
        res = _engine(run, target, sink)
    else:
        pad = [(0, 0)] * ndim
        pad[axis] = (k1, k - k1 - 1)
        g = np.pad(_integer_view(src).astype(np.float64), pad)
        res = _deliver(_cast(_correlate_valid(g, weights, axis, src.shape[axis]), dtype), target)
    timer.done()
    return res


###############################################################################
# Where, neighbours, block sums
###############################################################################

def _flat_ranges(size, blocks):
    """ArrayProcessingCode.pyx:58-59: min(size, blocks) ranges, np.linspace(0, size, n+1) as int."""
    n = min(size, blocks)
    return np.array(np.linspace(0, size, n + 1), dtype=int)


def where(source, sink=None, blocks=None, cutoff=None, processes=None, verbose=False):
    """The positions of the elements ``> 0``, in ClearMap's order.

    ClearMap: ArrayProcessing.where (ArrayProcessing.py:201-269, ArrayProcessingCode.pyx:
    398-481). Selected are the values ``> 0`` (not ``!= 0``: negative values and NaN are not
    selected). A 1-D source gives the flat indices, an int64 ``(N,)`` array; a source of
    ``ndim >= 2`` an int64 ``(N, ndim)`` array of coordinates, ordered as ClearMap finds them:
    the last axis is split into ``min(shape[-1], blocks)`` ranges
    (``np.linspace(0, shape[-1], n + 1)`` as int), each range scanned in C order, the ranges in
    order. With ``shape[-1] <= 1`` or ``blocks=1`` that is C order (``numpy.argwhere``).

    Arguments
    ---------
    source : array, ``.npy`` path, chunkwise Array or store path
        The array to search (at least 1-D).
    sink : None, array, ``.npy`` path, Array or store path
        Where to write the positions; if None a new array is returned.
    blocks : int or None
        The number of ranges (default ``processes * default_blocks_per_process``, processes
        defaulting to the number of CPUs), as ClearMap's; it decides the order.
    cutoff : int or None
        Accepted for compatibility: ClearMap caps it at 1 (ArrayProcessing.py:235-237).
    processes : int, 'serial' or None
        Threads to use; also sets the default ``blocks``.
    verbose : bool
        Print progress information.

    Returns
    -------
    where : SourceArray or Array
        The positions (``.array`` gives the numpy array, as on ClearMap's result).

    Where ClearMap fails, chunkwise goes on with the same definition: ClearMap's 2-D ``where``
    raises ``AttributeError`` (ArrayProcessing.py:250 calls the misspelled
    ``code.block_sums21d``), here it is ``where_2d``'s definition (pyx:425-450: ranges of axis 1,
    each scanned in C order); 4-D and more (ClearMap raises, AP:229-231) follow the same rule.
    Sources of at most one element, which ClearMap hands to ``numpy.where`` (non-zero values,
    always ``(N, ndim)``), follow the rule above too. A 0-d source raises ``ValueError``.
    """
    timer = _Timer("where", verbose)
    src = _source(source)
    if src.ndim == 0:
        raise ValueError("where: the source must have at least one dimension")
    procs = _processes(processes)
    if blocks is None:
        blocks = procs * default_blocks_per_process
    if blocks < 1:
        raise ValueError("where: blocks must be at least 1, not %r" % (blocks,))
    if _is_array(src):
        kw = {}
        t = _threads(processes)
        if t is not None:
            kw["threads"] = t
        coords = np.asarray(_cw.where(src, above=0, **kw), dtype=np.int64).reshape(-1, src.ndim)
    else:
        coords = np.argwhere(src > 0).astype(np.int64, copy=False)
    if src.ndim == 1:
        res = np.ascontiguousarray(coords[:, 0])
    else:
        r = _flat_ranges(src.shape[-1], blocks)
        if len(r) > 2 and len(coords):
            block = np.searchsorted(r, coords[:, -1], side="right") - 1
            coords = coords[np.argsort(block, kind="stable")]
        res = coords
    out = _deliver(res, _sink_target(sink, res.shape, np.int64))
    timer.done()
    return out


def neighbours(indices, offset, processes=None, verbose=False):
    """All pairs of positions in an index list whose indices are ``offset`` apart.

    ClearMap: ArrayProcessing.neighbours (ArrayProcessing.py:272-301,
    ArrayProcessingCode.pyx:349-391): an int64 ``(s, 2)`` array of the pairs ``(p, q)`` of
    positions in ``indices`` with ``indices[q] == indices[p] + offset``, ordered by ``p`` (then
    ``q``). ClearMap's graph construction calls it with the flat indices of a skeleton
    (``where`` of the flattened array: strictly increasing) and the flat offset of each
    neighbour direction.

    Arguments
    ---------
    indices : 1-D integer array
        The index list.
    offset : int
        The offset to search for.
    processes : int, 'serial' or None
        Accepted for compatibility.
    verbose : bool
        Print progress information.

    Returns
    -------
    neighbours : SourceArray
        The pairs of positions.

    ClearMap searches only ``|offset|`` positions around ``p`` and keeps one ``q``, which is
    the rule above for strictly increasing indices (its use); on unsorted or repeated indices
    ClearMap misses pairs, chunkwise returns all of them.
    """
    timer = _Timer("neighbours", verbose)
    idx = _memory(indices)
    if idx.ndim != 1:
        raise ValueError("neighbours: the indices must be 1-D, not of shape %r" % (idx.shape,))
    if idx.dtype.kind not in "iu":
        raise TypeError("neighbours: the indices must be integers, not %s" % idx.dtype)
    idx = idx.astype(np.int64, copy=False)
    order = np.argsort(idx, kind="stable")
    sidx = idx[order]
    target = idx + np.int64(offset)
    lo = np.searchsorted(sidx, target, side="left")
    hi = np.searchsorted(sidx, target, side="right")
    counts = hi - lo
    total = int(counts.sum())
    p = np.repeat(np.arange(len(idx), dtype=np.int64), counts)
    start = np.repeat(lo - (np.cumsum(counts) - counts), counts)
    q = order[np.arange(total, dtype=np.int64) + start] if total else np.zeros(0, np.int64)
    res = _wrap(np.stack([p, q.astype(np.int64)], axis=1).reshape(-1, 2))
    timer.done()
    return res


def index_neighbours(indices, offset, processes=None):
    """ClearMap's ``index_neighbours`` (ArrayProcessing.py:489-503) is :func:`neighbours`.

    ClearMap's own calls ``code.index_neighbours``, which its Cython module does not define
    (an ``AttributeError``); here it is :func:`neighbours`.
    """
    return neighbours(indices, offset, processes=processes)


def _flat_slabs(src):
    """(start, flat values) slabs of the flattened source: memory order for numpy (ClearMap's
    reshape(-1, order='A')), C order for Arrays (read along axis 0)."""
    if not _is_array(src):
        yield 0, _integer_view(src).reshape(-1, order="A")
        return
    shape = tuple(src.shape)
    if len(shape) == 0:
        yield 0, np.asarray(src[...]).reshape(-1)
        return
    rows = _slab_rows(shape, np.dtype(src.dtype).itemsize, max(1, int(src.chunks[0])))
    per_row = int(np.prod(shape[1:], dtype=np.int64))
    for i in range(0, shape[0], rows):
        yield i * per_row, _integer_view(np.asarray(src[i:i + rows])).reshape(-1)


def block_sums(source, blocks=None, processes=None):
    """The number of elements ``> 0`` in each of ``blocks`` equal ranges of the flattened array.

    ClearMap: ArrayProcessing.block_sums (ArrayProcessing.py:463-486,
    ArrayProcessingCode.pyx:289-304): the flattened source (memory order for numpy arrays and
    ``.npy`` files, as ClearMap's ``reshape(-1, order='A')``; C order for chunkwise arrays and
    stores) is cut at
    ``np.linspace(0, size, n + 1)`` (as int) with ``n = min(size, blocks)``; each range's count
    of elements ``> 0`` (despite the name: not a sum of values).

    Arguments
    ---------
    source : array, ``.npy`` path, chunkwise Array or store path
        The data.
    blocks : int or None
        The number of ranges (default ``processes * default_blocks_per_process``).
    processes : int, 'serial' or None
        Sets the default ``blocks`` (None: the number of CPUs).

    Returns
    -------
    block_sums : numpy.ndarray
        int64 counts, one per range (ClearMap returns a Cython memoryview of them).
    """
    procs = _processes(processes)
    if blocks is None:
        blocks = procs * default_blocks_per_process
    if _is_path(source) and _is_npy(source):
        src = np.load(os.fspath(source), mmap_mode="r")  # its memory order, as ClearMap's memmap
    else:
        src = _source(source)
    r = _flat_ranges(int(src.size), blocks)
    sums = np.zeros(max(0, len(r) - 1), np.int64)
    if len(sums) == 0:
        return sums
    for start, v in _flat_slabs(src):
        pos = np.flatnonzero(v > 0) + start
        b = np.searchsorted(r, pos, side="right") - 1
        sums += np.bincount(b, minlength=len(sums))[:len(sums)]
    return sums


def block_ranges(source, blocks=None, processes=None):
    """The boundaries of ``blocks`` equal ranges of the flattened array.

    ClearMap: ArrayProcessing.block_ranges (ArrayProcessing.py:437-460):
    ``np.array(np.linspace(0, size, min(blocks, size) + 1), dtype=int)``, an array of
    ``blocks + 1`` boundaries from 0 to ``size``.

    Arguments
    ---------
    source : array, ``.npy`` path, chunkwise Array or store path
        The data (only its size is used).
    blocks : int or None
        The number of ranges (default ``processes * default_blocks_per_process``).
    processes : int, 'serial' or None
        Sets the default ``blocks`` (None: the number of CPUs).

    Returns
    -------
    block_ranges : numpy.ndarray
        The range boundaries (int64).
    """
    procs = _processes(processes)
    if blocks is None:
        blocks = procs * default_blocks_per_process
    size = int(_source(source).size)
    blocks = min(blocks, size)
    return np.array(np.linspace(0, size, blocks + 1), dtype=int)


###############################################################################
# IO
###############################################################################

def read(source, sink=None, slicing=None, memory=None, blocks=None, processes=None,
         verbose=False, **kwargs):
    """Read an array (or a region of it) into memory, in parallel.

    ClearMap: ArrayProcessing.read (ArrayProcessing.py:307-351). chunkwise reads any source
    ``chunkwise.open`` reads (stores, ``.npy``, TIFF, ...), decoding chunks on all cores.

    Arguments
    ---------
    source : path, chunkwise Array or array
        The source to read.
    sink : None, array, ``.npy`` path, Array or store path
        Where to put the data; if None a new in-memory array is returned.
    slicing : slice, tuple or None
        Optional region (numpy basic indexing).
    memory : 'shared' or None
        Accepted for compatibility (the result is an ordinary numpy array).
    blocks, processes, verbose, kwargs
        Accepted for compatibility; ``verbose`` prints timing.

    Returns
    -------
    sink : SourceArray or Array
        The data read.
    """
    timer = _Timer("read", verbose)
    src = _source(source)
    key = slicing if slicing is not None else Ellipsis
    if _is_array(src):
        data = np.asarray(src[key])
    else:
        data = np.array(src[key])
    res = _deliver(data, _sink_target(sink, data.shape, data.dtype, _order(data)))
    timer.done()
    return res


def write(sink, source, slicing=None, overwrite=True, blocks=None, processes=None, verbose=False):
    """Write an array to a file or store (or into a region of one).

    ClearMap: ArrayProcessing.write (ArrayProcessing.py:354-430).

    Arguments
    ---------
    sink : ``.npy`` path, store path, chunkwise Array or numpy array
        Where to write.
    source : array, path or chunkwise Array
        The data.
    slicing : slice, tuple or None
        Write into this region of an existing sink (numpy basic indexing; a sink that does not
        exist is an error, as in ClearMap).
    overwrite : bool
        Without ``slicing``, an existing sink of another shape or dtype is replaced if True,
        else ``ValueError`` (as ClearMap).
    blocks, processes
        Accepted for compatibility.
    verbose : bool
        Print timing.

    Returns
    -------
    sink : SourceArray or Array
        The sink written (a ``.npy`` file as a memory-mapped ``SourceArray``, a store as an
        ``Array``).
    """
    timer = _Timer("write", verbose)
    src = _source(source)
    shape, dtype = tuple(src.shape), np.dtype(src.dtype)

    def region_data():
        return np.asarray(src[...]) if _is_array(src) else src

    if _is_path(sink):
        p = os.fspath(sink)
        exists = os.path.exists(p)
        if slicing is not None and not exists:
            raise ValueError("Cannot write a slice to a non-existent sink %s!" % p)
        if _is_npy(p):
            if slicing is not None:
                mm = np.load(p, mmap_mode="r+")
                mm[slicing] = region_data()
            else:
                mm = np.load(p, mmap_mode="r+") if exists else None
                if mm is not None and (mm.shape != shape or mm.dtype != dtype):
                    if not overwrite:
                        raise ValueError("Sink file %s exists but does not match source!" % p)
                    del mm
                    mm = None
                if mm is None:
                    mm = np.lib.format.open_memmap(p, mode="w+", dtype=dtype, shape=shape,
                                                   fortran_order=(_order(src) == "F"))
                _copy(src, mm)
            res = _wrap(mm, location=p)
        else:
            if slicing is not None:
                a = _cw.open(p)
                a[slicing] = region_data()
            else:
                a = _cw.open(p) if exists else None
                if a is not None and (tuple(a.shape) != shape or np.dtype(a.dtype) != dtype):
                    if not overwrite:
                        raise ValueError("Sink file %s exists but does not match source!" % p)
                    a = None
                if a is None:
                    chunks = tuple(src.chunks) if _is_array(src) else None
                    a = _cw.create(p, shape, dtype, chunks=chunks, overwrite=exists)
                _copy(src, a)
            res = a
    elif _is_array(sink):
        sink[slicing if slicing is not None else Ellipsis] = region_data()
        res = sink
    elif isinstance(sink, np.ndarray):
        sink[slicing if slicing is not None else Ellipsis] = region_data()
        res = _wrap(sink)
    else:
        raise ValueError("Sink is not a valid writable sink specification!")
    timer.done()
    return res


###############################################################################
# Block processing
###############################################################################

def _norm_slices(slicing, shape):
    """A block's slicing as absolute (start, stop) per axis."""
    return [sl.indices(n)[:2] for sl, n in zip(slicing, shape)]


def _compose(bounds, key):
    """A basic-indexing key relative to the box `bounds` [(start, stop)...] as a key into the
    base array."""
    if not isinstance(key, tuple):
        key = (key,)
    nd = len(bounds)
    if any(k is None for k in key):
        raise IndexError("newaxis is not supported in a block's index")
    n_ell = sum(1 for k in key if k is Ellipsis)
    if n_ell > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    if n_ell:
        i = next(j for j, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (slice(None),) * (nd - len(key) + 1) + key[i + 1:]
    if len(key) > nd:
        raise IndexError("too many indices for a block of %d dimensions" % nd)
    key = key + (slice(None),) * (nd - len(key))
    out = []
    for k, (s, e) in zip(key, bounds):
        n = e - s
        if isinstance(k, slice):
            a, b, st = k.indices(n)
            if st > 0:
                out.append(slice(s + a, s + max(a, b), st))
            elif a < 0 or b >= a:
                out.append(slice(s, s))
            else:
                stop = s + b
                out.append(slice(s + a, stop if stop >= 0 else None, st))
        elif isinstance(k, numbers.Integral) and not isinstance(k, bool):
            k = int(k)
            if not -n <= k < n:
                raise IndexError("index %d is out of bounds for a block axis of size %d" % (k, n))
            out.append(s + (k % n))
        else:
            raise IndexError("only basic indexing (ints, slices, ...) is supported in a block")
    return tuple(out)


def _slicing_str(bounds_or_slicing):
    parts = []
    for s in bounds_or_slicing:
        if s.start is None and s.stop is None and s.step is None:
            parts.append(":")
        else:
            txt = "%s:%s" % ("" if s.start is None else "%d" % s.start,
                             "" if s.stop is None else "%d" % s.stop)
            if s.step is not None:
                txt += ":%d" % s.step
            parts.append(txt)
    return "(" + ",".join(parts) + ")"


class _Region:
    """A box of a base array, read and written through it (ClearMap's Slice)."""

    def __init__(self, base, bounds, lock):
        self._base = base
        self._bounds = [tuple(b) for b in bounds]
        self._lock = lock

    @property
    def shape(self):
        """The region's shape."""
        return tuple(e - s for s, e in self._bounds)

    @property
    def ndim(self):
        """The number of dimensions."""
        return len(self._bounds)

    @property
    def dtype(self):
        """The data type."""
        return np.dtype(self._base.dtype)

    @property
    def base(self):
        """The array the region is part of."""
        return self._base

    @property
    def base_shape(self):
        """The shape of the array the region is part of."""
        return tuple(self._base.shape)

    @property
    def base_slicing(self):
        """The region as slices of the base array."""
        return tuple(slice(s, e) for s, e in self._bounds)

    @property
    def base_lower(self):
        """The region's first index per axis in the base array."""
        return tuple(s for s, _ in self._bounds)

    @property
    def base_upper(self):
        """The region's end index per axis in the base array."""
        return tuple(e for _, e in self._bounds)

    @property
    def array(self):
        """The region's data as a numpy array (a view for numpy bases)."""
        return self[...]

    def as_buffer(self):
        """The region's data as a numpy array."""
        return self.array

    def as_memory(self):
        """A copy of the region's data in memory."""
        return np.array(self.array)

    def __array__(self, dtype=None, copy=None):
        a = np.asarray(self.array)
        if dtype is not None:
            a = a.astype(dtype, copy=False)
        return np.array(a, copy=True) if copy else a

    def __getitem__(self, key):
        k = _compose(self._bounds, key)
        return np.asarray(self._base[k]) if _is_array(self._base) else self._base[k]

    def __setitem__(self, key, value):
        k = _compose(self._bounds, key)
        if _is_array(self._base):  # cast as numpy assignment does (ClearMap's sinks are numpy)
            value = np.asarray(value)
            if value.dtype != self._base.dtype:
                value = value.astype(self._base.dtype)
        if self._lock is not None:
            with self._lock:
                self._base[k] = value
        else:
            self._base[k] = value


class _Valid(_Region):
    """The valid region of a block (ClearMap's ``block.valid``)."""

    def __init__(self, block, slicing):
        self.block = block
        self._slicing = slicing
        rel = [sl.indices(n)[:2] for sl, n in zip(slicing, block.shape)]
        bounds = [(b0 + s, b0 + e) for (s, e), (b0, _) in zip(rel, block._bounds)]
        super().__init__(block._base, bounds, block._lock)
        self._rel = rel

    @property
    def slicing(self):
        """The valid region as slices of the block (ClearMap's ``valid.slicing``)."""
        return self._slicing

    @property
    def source(self):
        """The block."""
        return self.block

    @property
    def lower(self):
        """The valid region's first index per axis in the block."""
        return tuple(s for s, _ in self._rel)

    @property
    def upper(self):
        """The valid region's end index per axis in the block."""
        return tuple(e for _, e in self._rel)

    position = lower


class Block(_Region):
    """A block of a source for :func:`process` (ClearMap's ``ParallelProcessing.Block``).

    ``slicing`` is the block in the source (ClearMap's form: ``slice(None)`` on axes that are
    not split), ``valid`` the part of it the block is responsible for (``valid.slicing``
    relative to the block, ``valid.base_slicing`` in the source, ``valid.lower``/``upper``
    relative to the block), ``lower``/``upper`` the block's corners in the source, ``index`` its
    position in the grid of ``blocks_shape`` blocks, ``iteration`` its number in C order.
    Indexing a block (``block[...]``, ``block.valid[...] = x``) reads and writes the source.
    """

    def __init__(self, source=None, slicing=None, valid_slicing=None, index=None,
                 blocks_shape=None, iteration=None, neighbours=None, lock=None):
        shape = tuple(source.shape)
        if slicing is None:
            slicing = tuple(slice(None) for _ in shape)
        self.slicing = tuple(slicing)
        super().__init__(source, _norm_slices(self.slicing, shape), lock)
        if valid_slicing is None:
            valid_slicing = tuple(slice(None) for _ in shape)
        self._valid = _Valid(self, tuple(valid_slicing))
        self._index = index
        self._iteration = iteration
        self._blocks_shape = blocks_shape
        self._neighbours = neighbours

    @property
    def source(self):
        """The source the block is part of."""
        return self._base

    @property
    def valid(self):
        """The valid region of the block."""
        return self._valid

    @property
    def lower(self):
        """The block's first index per axis in the source."""
        return self.base_lower

    @property
    def upper(self):
        """The block's end index per axis in the source."""
        return self.base_upper

    position = lower

    @property
    def index(self):
        """The block's multi-index in the grid of blocks."""
        return self._index

    @property
    def blocks_shape(self):
        """The shape of the grid of blocks."""
        return self._blocks_shape

    @property
    def iteration(self):
        """The block's number among all blocks (C order of the grid)."""
        if self._iteration is None and self._index is not None and self._blocks_shape is not None:
            return int(np.ravel_multi_index(self._index, self._blocks_shape))
        return self._iteration

    @property
    def n_iterations(self):
        """The number of blocks in the grid."""
        if self._blocks_shape is not None:
            return int(np.prod(self._blocks_shape))
        return None

    @property
    def neighbours(self):
        """The neighbouring blocks as {index: block} (with ``neighbours=True``), else None."""
        return self._neighbours

    def as_virtual(self):
        """The block itself (ClearMap: a handle without cached data)."""
        return self

    def as_real(self):
        """The block itself."""
        return self

    def as_memory_block(self):
        """A block over an in-memory copy of this block's data, with the same valid region."""
        return Block(source=np.array(self.array), valid_slicing=self._valid.slicing,
                     index=self._index, blocks_shape=self._blocks_shape,
                     neighbours=self._neighbours)

    def iteration_info(self):
        """'iteration/n<index/blocks_shape>' as ClearMap prints it."""
        info = ""
        if self.iteration is not None:
            info += "%d/%d" % (self.iteration, self.n_iterations)
        if self._index is not None:
            if info:
                info += "<"
            info += "%r" % (tuple(self._index),)
            if self._blocks_shape is not None:
                info += "/%r" % (tuple(self._blocks_shape),)
            if info:
                info += ">"
        return info

    def info(self, short=True):
        """ClearMap's block description, e.g. '0/10<(0, 0, 0)/(1, 1, 10)> (50, 100, 38)@(50,
        100, 200)[(:,:,0:38)]'."""
        info = self.iteration_info()
        if info:
            info += " "
        return info + "%r@%r[%s]" % (self.shape, tuple(self._base.shape), _slicing_str(self.slicing))

    def __repr__(self):
        return "Block(%s)" % self.info()


def block_sizes(size, processes=None, size_max=None, size_min=None, overlap=None,
                optimization=True, optimization_fix="all", verbose=False):
    """Block ranges along one axis, as ClearMap computes them.

    ClearMap: BlockProcessing.block_sizes (BlockProcessing.py:367-559). ``size_max`` (None: the
    whole axis) bounds the block size, ``size_min`` (None: ``min(size_max, overlap + 1)``;
    ``'fixed'``: blocks of exactly ``size_max``) and ``overlap`` (None: 0) the rest; with
    ``optimization`` the number of blocks is adjusted to a multiple of ``processes`` (None:
    the number of CPUs; not an int: 1). As ClearMap's, ``optimization_fix='increase'`` changes
    nothing (its branch tests 'decrease', BlockProcessing.py:481).

    Returns
    -------
    n_blocks : int
        The number of blocks.
    block_ranges : list of (int, int)
        The blocks' ranges ``[lo, hi)``.
    valid_ranges : list of (int, int)
        The ranges each block is responsible for (they tile ``[0, size)``).
    """
    if processes is None:
        processes = default_processes
    if not isinstance(processes, int):
        processes = 1
    if processes <= 0:
        processes = 1
    if size_max is None or size_max > size:
        size_max = size
    if overlap is None:
        overlap = 0
    if overlap >= size:
        overlap = size - 1
    fixed = False
    if size_min == "fixed":
        size_min = size_max
        fixed = True
        optimization = False
    elif size_min is None:
        size_min = min(size_max, overlap + 1)
    if size_min > size:
        size_min = size
    if size_min > size_max:
        raise RuntimeError("Minimal block size larger than maximal block size %d > %d !"
                           % (size_min, size_max))
    if overlap >= size_max:
        raise ValueError("Overlap is larger than maximal block size: %d >= %d!" % (overlap, size_max))
    if overlap >= size_min:
        raise ValueError("Overlap is larger than minimal block size: %d >= %d!" % (overlap, size_min))
    block_size = size_max
    n_blocks = int(math.ceil(float(size - block_size) / (block_size - overlap) + 1))
    if n_blocks <= 0:
        n_blocks = 1
    if not fixed:
        block_size = float(size + (n_blocks - 1) * overlap) / n_blocks
    if verbose:
        print("Estimated block size %d in %d blocks!" % (block_size, n_blocks))
    if n_blocks == 1:
        return 1, [(0, size)], [(0, size)]
    if optimization:
        n_add = n_blocks % processes
        if n_add != 0:
            if optimization_fix in (None, "all", all):
                optimization_fix = "increase" if n_add < processes / 2.0 else "decrease"
            if optimization_fix == "decrease":
                n_blocks = n_blocks - n_add + processes
                block_size = float(size + (n_blocks - 1) * overlap) / n_blocks
                if verbose:
                    print("Optimized block size decreased to %d in %d blocks!" % (block_size, n_blocks))
    whole = int(math.floor(block_size))
    rest = block_size - whole
    block_size = whole
    ranges = [(0, block_size)]
    valid_ranges = []
    valid_prev = 0
    acc = rest
    hi = block_size
    n = 1
    while n < n_blocks:
        n += 1
        hi_prev = hi
        lo = hi - overlap
        hi = lo + block_size
        acc += rest
        if acc >= 1:
            acc -= 1
            hi += 1
        if n == n_blocks:
            hi = size
            if fixed:
                lo = hi - block_size
        ranges.append((lo, hi))
        valid = int(round((hi_prev - lo) / 2.0 + lo))
        if valid > size:
            valid = size
        valid_ranges.append((valid_prev, valid))
        valid_prev = valid
    valid_ranges.append((valid_prev, size))
    if verbose:
        print("Final blocks : %d" % n_blocks)
    return n_blocks, ranges, valid_ranges


def block_axes(source, axes=None):
    """The axes to split a source along (ClearMap: BlockProcessing.block_axes,
    BlockProcessing.py:562-602).

    ``'all'``: every axis; a list (or an int) is checked and returned; None: the last axis for
    a Fortran-ordered numpy array, else axis 0.
    """
    ndim = len(source.shape)
    if isinstance(axes, str) and axes == "all" or axes is all:
        return list(range(ndim))
    if axes is not None:
        axes = [axes] if isinstance(axes, numbers.Integral) else list(axes)
        if max(axes) >= ndim or min(axes) < 0:
            raise ValueError("Axes specification %r for source with dimension %d not valid!"
                             % (axes, ndim))
        return axes
    if _order(source) == "F":
        return [ndim - 1]
    return [0]


def _unpack(values, n):
    if not isinstance(values, (list, tuple)):
        values = [values] * n
    if len(values) != n:
        raise ValueError("Dimension %d does not match data dimensions %d" % (len(values), n))
    return list(values)


def split_into_blocks(source, processes=None, axes=None, size_max=None, size_min=None,
                      overlap=None, optimization=True, optimization_fix="all", neighbours=False,
                      verbose=False, **kwargs):
    """Split a source into ClearMap's blocks (BlockProcessing.split_into_blocks,
    BlockProcessing.py:605-707).

    Each axis in ``axes`` (see :func:`block_axes`) is cut by :func:`block_sizes`; the blocks are
    the grid's cells in C order. With ``neighbours=True`` each block knows its face neighbours.

    Returns
    -------
    blocks : list of Block
    """
    src = source if isinstance(source, (np.ndarray, _cw.Array)) else _process_source(source)
    lock = kwargs.get("lock")
    shape = tuple(src.shape)
    ndim = len(shape)
    axes = block_axes(src, axes=axes)
    n_axes = len(axes)
    size_max = _unpack(size_max, n_axes)
    size_min = _unpack(size_min, n_axes)
    overlap = _unpack(overlap, n_axes)
    optimization = _unpack(optimization, n_axes)
    optimization_fix = _unpack(optimization_fix, n_axes)
    grid, per_axis = [], []
    a = 0
    for d in range(ndim):
        if d in axes:
            n, br, vr = block_sizes(shape[d], processes=processes, size_max=size_max[a],
                                    size_min=size_min[a], overlap=overlap[a],
                                    optimization=optimization[a],
                                    optimization_fix=optimization_fix[a], verbose=verbose)
            a += 1
            per_axis.append([(slice(b[0], b[1]),
                              slice(v[0] - b[0] if v[0] - b[0] != 0 else None,
                                    -(b[1] - v[1]) if b[1] - v[1] != 0 else None))
                             for b, v in zip(br, vr)])
        else:
            n = 1
            per_axis.append([(slice(None), slice(None))])
        grid.append(n)
    grid = tuple(grid)
    blocks = []
    by_index = {}
    for i in range(int(np.prod(grid))):
        index = tuple(int(v) for v in np.unravel_index(i, grid))
        cells = [per_axis[d][index[d]] for d in range(ndim)]
        b = Block(source=src, slicing=tuple(c[0] for c in cells),
                  valid_slicing=tuple(c[1] for c in cells), index=index, blocks_shape=grid,
                  lock=lock)
        blocks.append(b)
        by_index[index] = b
    if neighbours:
        for b in blocks:
            nbs = {}
            for d, i in enumerate(b.index):
                for j in (i - 1, i + 1):
                    if 0 <= j < grid[d]:
                        ii = list(b.index)
                        ii[d] = j
                        nbs[tuple(ii)] = by_index[tuple(ii)]
            b._neighbours = nbs
    return blocks


def _process_source(s):
    if _is_array(s) or isinstance(s, np.ndarray):
        return s
    if isinstance(s, Block):
        return s.as_memory()
    if _is_path(s):
        p = os.fspath(s)
        if _is_npy(p):
            return np.load(p, mmap_mode="r")
        return _cw.open(p)
    return np.asarray(s)


def _process_sink(s, hint):
    """BlockProcessing.py:211: io.initialize(sink, hint=sources[0]): a sink that does not exist
    is created with the first source's shape and dtype."""
    if _is_array(s) or isinstance(s, np.ndarray):
        return s
    if _is_path(s):
        p = os.fspath(s)
        if _is_npy(p):
            if os.path.exists(p):
                return np.load(p, mmap_mode="r+")
            return np.lib.format.open_memmap(p, mode="w+", dtype=np.dtype(hint.dtype),
                                             shape=tuple(hint.shape),
                                             fortran_order=(_order(hint) == "F"))
        if os.path.exists(p):
            return _cw.open(p)
        chunks = tuple(hint.chunks) if _is_array(hint) else None
        return _cw.create(p, tuple(hint.shape), np.dtype(hint.dtype), chunks=chunks)
    raise ValueError("Source specification %r not a valid location, array or Source class!" % (s,))


def _run_block_source(sources, sinks, function, as_memory, as_array, kwargs):
    """BlockProcessing.py:281-321: call the function on the blocks' data, write the valid part of
    each result into its sink."""
    if as_array:
        args = [np.array(s.array) if as_memory else s.array for s in sources]
    else:
        args = [s.as_memory() for s in sources] if as_memory else list(sources)
    results = function(*args, **kwargs)
    if not isinstance(results, (list, tuple)):
        results = [results]
    srcs = list(sources)
    if len(srcs) < len(sinks):
        srcs = srcs + [srcs[0]] * (len(sinks) - len(srcs))
    for sink, src, result in zip(sinks, srcs, results):
        sink.valid[...] = np.asarray(result)[src.valid.slicing]
    return None


def _run_block_block(sources, sinks, function, as_memory, return_result, kwargs):
    """BlockProcessing.py:324-360: the function gets the source and sink blocks and writes
    itself; with as_memory it gets in-memory copies and the sinks' valid parts are copied back."""
    if as_memory:
        sinks_memory = [s.as_memory_block() for s in sinks]
        args = [s.as_memory_block() for s in sources] + sinks_memory
    else:
        args = list(sources) + list(sinks)
    result = function(*args, **kwargs)
    if as_memory:
        for sink, mem in zip(sinks, sinks_memory):
            sink.valid[...] = mem.valid[...]
    return result if return_result else None


def process(function, source, sink=None, axes=None, size_max=None, size_min=None, overlap=None,
            optimization=True, optimization_fix="all", neighbours=False, function_type=None,
            as_memory=False, return_result=False, return_blocks=False, processes=None,
            verbose=False, workspace=None, **kwargs):
    """Split sources into blocks and process a function on them in parallel.

    ClearMap: BlockProcessing.process (BlockProcessing.py:125-274), with its arguments and
    defaults. The first source is split by :func:`split_into_blocks` (``axes``, ``size_max``,
    ``size_min``, ``overlap``, ``optimization``, ``optimization_fix``, ``processes``); every
    other source and every sink is split the same way. Blocks at the array's edges are not
    padded: a block is just that part of the array, with up to ``overlap`` neighbouring
    elements beyond its valid region.

    Arguments
    ---------
    function : callable
        Called once per block, with ``**kwargs``.
    source : source or list of sources
        numpy arrays, ``.npy`` paths, chunkwise Arrays or store paths (same shape).
    sink : None, sink or list of sinks
        numpy arrays, ``.npy`` paths, Arrays or store paths; a path that does not exist is
        created with the first source's shape and dtype (ClearMap's ``hint``).
    function_type : 'array', 'source', 'block' or None
        ``'array'`` (None): the function gets the blocks' numpy arrays and returns an array per
        sink (a tuple/list for several), of the block's shape; its valid part is written to
        the sink. ``'source'``: the same with :class:`Block` objects (numpy copies with
        ``as_memory``). ``'block'``: the function gets the source blocks then the sink blocks
        and writes into the sinks itself (``sink_block[...] = ...``, ``block.valid``), and may
        return a per-block result.
    as_memory : bool
        Hand the function in-memory copies of the blocks.
    return_result : bool
        Return the list of per-block results (in block order) instead of the sink; as in
        ClearMap only ``'block'`` functions' results are kept (the others give None).
    return_blocks : bool
        Also return ``[source_blocks, sink_blocks]`` (per block, a list over sources / sinks).
    processes : int, 'serial' or None
        The number of worker threads (None: one per CPU; 'serial': in this thread). It also
        enters the block split, as in ClearMap.
    neighbours : bool
        Give each block its neighbours (``block.neighbours``).
    verbose : bool
        Print progress information.
    workspace : object or None
        As in ClearMap, ``workspace.executor`` is set to the executor while it runs.

    Returns
    -------
    The ``sink`` argument as given (None when it was None), or the per-block results with
    ``return_result``; with ``return_blocks`` a pair ``(that, [source_blocks, sink_blocks])``.

    Results are cast into the sinks as numpy assignment casts (ClearMap's sinks are numpy
    arrays), stores included. ClearMap runs the blocks in a process pool; here they run on
    threads (numpy and scipy functions release the GIL), so the function need not be
    picklable. Writes into chunkwise Arrays are serialised by a lock. An exception in the
    function is re-raised as itself.
    """
    sources = source if isinstance(source, list) else [source]
    sources = [_process_source(s) for s in sources]
    if isinstance(sink, list):
        sinks = sink
    elif sink is None:
        sinks = []
    else:
        sinks = [sink]
    sinks = [_process_sink(s, sources[0]) for s in sinks]
    axes = block_axes(sources[0], axes=axes)
    locks = {}

    def lock_for(s):
        if not _is_array(s):
            return None
        return locks.setdefault(id(s), threading.Lock())

    split = functools.partial(split_into_blocks, processes=processes, axes=axes,
                              size_max=size_max, size_min=size_min, overlap=overlap,
                              optimization=optimization, optimization_fix=optimization_fix,
                              neighbours=neighbours, verbose=False)
    source_blocks = [split(s, lock=lock_for(s)) for s in sources]
    sink_blocks = [split(s, lock=lock_for(s)) for s in sinks]
    n_blocks = len(source_blocks[0])
    source_blocks = [[blocks[i] for blocks in source_blocks] for i in range(n_blocks)]
    sink_blocks = [[blocks[i] for blocks in sink_blocks] for i in range(n_blocks)]

    if function_type is None:
        function_type = "array"
    if function_type == "block":
        func = functools.partial(_run_block_block, function=function, as_memory=as_memory,
                                 return_result=return_result, kwargs=kwargs)
    elif function_type in ("source", "array"):
        func = functools.partial(_run_block_source, function=function, as_memory=as_memory,
                                 as_array=(function_type == "array"), kwargs=kwargs)
    else:
        raise ValueError("function type %r not 'array', 'source', 'block' or None!" % (function_type,))

    if not isinstance(processes, int) and processes != "serial":
        processes = default_processes
    name = getattr(function, "__name__", repr(function))
    if verbose:
        t0 = time.time()
        print("Processing %d blocks with function %r." % (n_blocks, name))
    if isinstance(processes, int):
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, processes)) as executor:
            if workspace is not None:
                workspace.executor = executor
            try:
                futures = [executor.submit(func, *args) for args in zip(source_blocks, sink_blocks)]
                try:
                    result = [f.result() for f in futures]
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
            finally:
                if workspace is not None:
                    workspace.executor = None
    else:
        result = [func(*args) for args in zip(source_blocks, sink_blocks)]
    if verbose:
        print("Processed %d blocks with function %r: elapsed time: %.3fs"
              % (n_blocks, name, time.time() - t0))
    ret = result if return_result else sink
    if return_blocks:
        ret = (ret, [source_blocks, sink_blocks])
    return ret
