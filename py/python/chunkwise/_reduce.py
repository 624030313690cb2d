"""One pass over the chunks: statistics, histograms, coordinates, graphs."""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from . import _chunkwise
from ._array import Array, _Key
from ._job import deferrable
from ._util import exact, fspath, opts, parse_bytes, source
from .errors import InvalidOptionError, OutputExistsError


def _region(a_src, region):
    """``region`` (a numpy key with unit steps, or a string as the CLI's ``--region``) as
    starts and stops."""
    if region is None:
        return None, None
    if isinstance(region, str):
        parts = []
        for p in region.split(","):
            p = p.strip()
            if ":" in p:
                bits = [int(b) if b.strip() else None for b in p.split(":")]
                parts.append(slice(*bits))
            elif p in ("...", "…"):
                parts.append(Ellipsis)
            else:
                parts.append(int(p))
        region = tuple(parts)
    k = _Key(region, tuple(a_src.shape))
    if not k.unit_steps:
        raise IndexError("a reduction region takes steps of 1 only")
    return k.starts, k.stops


def _number(v):
    if isinstance(v, str):
        try:
            return int(v)
        except ValueError:
            return float(v)
    return v


def _load_stats(path):
    with open(path) as f:
        return {k: _number(v) for k, v in json.load(f).items()}


def _load_path(path):
    return path


@deferrable("out", _load_stats)
def stats(a, region=None, *, out=None, overwrite=False, partition=None, progress=None,
          threads=None, memory=None) -> dict:
    """``count``, ``nan_count``, ``min``, ``max``, ``sum``, ``mean``, ``std`` of the array (or
    of ``region``) in one pass: integer sums exact (Python ints), NaNs counted apart. ``out=``
    also writes them to a ``.json`` file. ``partition="I/N"`` (needs ``out``) does part I of N
    (spec/SCALE.md §2): the last part to finish writes ``out`` and returns the dict, the others
    None; ``defer=True`` returns a :class:`chunkwise.Job`."""
    from ._compute import _partition
    src = source(a)
    starts, stops = _region(src, region)
    part = _partition(partition)
    if part is not None and out is None:
        raise InvalidOptionError("stats in parts: give out= (a .json file; the parts meet beside it)")
    if out is not None and part is None:
        part = (0, 1)  # one part: the file is written whole, never over another without overwrite
    d, close = opts(progress, threads, memory)
    try:
        if part is not None:
            text = _chunkwise.stats_part(src, fspath(out), part, starts, stops, bool(overwrite), d)
            if text is None:
                return None
            s = json.loads(text)
        else:
            s = json.loads(_chunkwise.stats(src, starts, stops, d))
    finally:
        close()
    return {k: _number(v) for k, v in s.items()}


def _load_histogram(path):
    with open(path) as f:
        h = json.load(f)
    return np.asarray(h["counts"], dtype=np.int64), np.asarray(h["edges"], dtype=np.float64)


@deferrable("out", _load_histogram)
def histogram(a, bins=None, range=None, *, out=None, overwrite=False, partition=None,  # noqa: A002
              progress=None, threads=None, memory=None):
    """``(counts, edges)`` as ``numpy.histogram(a, bins, range)`` (the last bin includes its
    right edge; edges and binning in float64). ``bins=None``: for integer arrays one bin per
    value (up to 2^24 values; else give bins), for floats 10 bins as numpy; ``range=None``: the
    data's finite range (a single value v: v-0.5..v+0.5, as numpy). ``out=`` also writes
    ``{"edges", "counts"}`` to a ``.json`` file; ``partition="I/N"`` (needs ``out``; a float
    array needs ``range``) does part I of N, the last part returning the result, the others
    None."""
    from ._compute import _partition
    src = source(a)
    part = _partition(partition)
    if part is not None and out is None:
        raise InvalidOptionError("histogram in parts: give out= (a .json file)")
    if out is not None and part is None:
        part = (0, 1)
    if bins is not None and (np.ndim(bins) != 0 or int(bins) < 1):
        raise ValueError(f"bins must be a positive int, got {bins!r}")
    rng = None
    if range is not None:
        lo, hi = (float(v) for v in range)
        if lo == hi:  # numpy widens an empty range
            lo, hi = lo - 0.5, hi + 0.5
        rng = (lo, hi)
        if bins is None:
            bins = 10
    d, close = opts(progress, threads, memory)
    try:
        if part is not None:
            r = _chunkwise.histogram_part(src, fspath(out), part,
                                          None if bins is None else int(bins), rng,
                                          bool(overwrite), d)
            if r is None:
                return None
            counts, edges = r
        else:
            counts, edges = _chunkwise.histogram(src, None if bins is None else int(bins), rng, d)
    finally:
        close()
    return np.asarray(counts, dtype=np.int64), np.asarray(edges, dtype=np.float64)


def _to_npy(run, out, overwrite):
    """Runs ``run(path)`` writing a .npy; returns the path, or the array when ``out`` is None."""
    if out is not None:
        run(fspath(out), overwrite)
        return fspath(out)
    with tempfile.TemporaryDirectory(prefix="chunkwise-") as d:
        p = os.path.join(d, "out.npy")
        run(p, False)
        return np.load(p)


def _parts(partition, out, what):
    from ._compute import _partition
    part = _partition(partition)
    if part is not None and out is None:
        raise InvalidOptionError(f"{what} in parts: give out= (a .npy file; the parts meet beside it)")
    return part


@deferrable("out", _load_path)
def where(a, above=None, below=None, out=None, *, overwrite=False, partition=None, progress=None,
          threads=None, memory=None):
    """``numpy.argwhere`` of ``a != 0`` (or ``a > above``, ``a < below``, both): an int64
    ``(N, ndim)`` array, or with ``out=`` a ``.npy`` file written by streaming (its path).
    ``partition="I/N"`` (needs ``out``): part I of N; the last part writes ``out`` and returns
    its path, the others None (spec/SCALE.md §2)."""
    src = source(a)
    part = _parts(partition, out, "where")
    d, close = opts(progress, threads, memory)
    ab = None if above is None else exact(above)
    be = None if below is None else exact(below)
    try:
        if part is not None:
            n = _chunkwise.where_(src, fspath(out), ab, be, bool(overwrite), d, part)
            return None if n is None else fspath(out)
        return _to_npy(lambda p, ow: _chunkwise.where_(src, p, ab, be, ow, d), out, overwrite)
    finally:
        close()


@deferrable("out", _load_path)
def graph(a, connectivity=None, above=None, below=None, coords=False, out=None, *,
          overwrite=False, partition=None, progress=None, threads=None, memory=None):
    """Edges between adjacent selected voxels (``a != 0``, or by ``above``/``below``): an
    int64 ``(E, 2)`` array of C-order flat indices ``(p, q)`` with ``p < q``, or with
    ``coords=True`` ``(E, 2*ndim)`` coordinates; ``connectivity`` defaults to the full
    neighbourhood (26 in 3-D). With ``out=``, a ``.npy`` file (its path)."""
    src = source(a)
    part = _parts(partition, out, "graph")
    d, close = opts(progress, threads, memory)
    ab = None if above is None else exact(above)
    be = None if below is None else exact(below)
    conn = None if connectivity is None else int(connectivity)
    try:
        if part is not None:
            n = _chunkwise.graph(src, fspath(out), conn, bool(coords), ab, be, bool(overwrite), d,
                                 part)
            return None if n is None else fspath(out)
        return _to_npy(
            lambda p, ow: _chunkwise.graph(src, p, conn, bool(coords), ab, be, ow, d), out,
            overwrite)
    finally:
        close()




# -- reductions along axes (numpy semantics) -------------------------------------------------

_OPS = ("sum", "mean", "std", "var", "min", "max", "count_nonzero", "any", "all", "argmin",
        "argmax", "nansum", "nanmean", "nanstd", "nanvar", "nanmin", "nanmax")


def reduce(a, ops=("mean",), axis=0, *, ddof=0, progress=None, threads=None,  # noqa: A001
           memory=None) -> dict:
    """numpy's reductions along ``axis`` (an int, a tuple, or None for all), every op of
    ``ops`` in one pass (biggus' ``ndarrays([mean, std])``): a dict op -> numpy array, with
    numpy's result types (``sum`` of uint16 is uint64, ``mean`` of integers float64).

    Ops: sum mean std var min max count_nonzero any all argmin argmax nansum nanmean nanstd
    nanvar nanmin nanmax (argmin/argmax take one axis). The array is read one layer of chunks
    along the first reduced axis at a time (thinner when ``memory`` is given and a layer's
    float64 temporaries, 24 bytes an element, would not fit): memory is that plus the
    accumulators (the output's size), never the whole input. Integer sums are exact (numpy's wrap-around on
    overflow of the 64-bit result aside); float sums and moments are merged layer by layer
    (Chan et al.), equal to numpy's to rounding.
    """
    from ._array import open as open_

    if isinstance(a, Array):
        arr = a
    elif isinstance(a, np.ndarray):
        arr = Array(source(a), ("numpy", np.ascontiguousarray(a)))
    else:
        arr = open_(a)
    if isinstance(ops, str):
        ops = (ops,)
    ops = tuple(ops)
    bad = [o for o in ops if o not in _OPS]
    if bad or not ops:
        raise InvalidOptionError(f"invalid ops: {bad or ops}; expected some of {', '.join(_OPS)}")
    ndim, shape, dt = arr.ndim, arr.shape, arr.dtype
    axes = tuple(range(ndim)) if axis is None else tuple(
        int(x) % ndim if -ndim <= int(x) < ndim else _axis_error(x, ndim)
        for x in np.atleast_1d(axis))
    if len(set(axes)) != len(axes):
        raise InvalidOptionError(f"invalid axis: {axis}: repeated")
    if any(o in ("argmin", "argmax") for o in ops) and len(axes) != 1:
        raise InvalidOptionError("invalid axis: argmin and argmax take exactly one axis")
    out_shape = tuple(n for i, n in enumerate(shape) if i not in axes)
    if memory is None and "nanvar" not in ops and axes:
        # The native pass (REDUCE §7): one read of every chunk, tiles folded in parallel.
        d, close = opts(progress, threads, None)
        try:
            res = _chunkwise.reduce_axes(arr._source(), list(axes), list(ops), int(ddof), d)
        finally:
            close()
        out = {}
        for op, t, sh, b in res:
            r = np.frombuffer(b, dtype=np.dtype(t).newbyteorder("<")).astype(np.dtype(t))
            r = r.reshape(tuple(sh))
            out[op] = r[()] if r.ndim == 0 else r
        return out
    ax0 = min(axes)
    step = max(1, arr.chunks[ax0])
    budget = parse_bytes(memory)
    if budget is not None and shape[ax0]:
        per_row = 24 * max(1, int(np.prod(shape, dtype=object)) // shape[ax0])
        step = max(1, min(step, budget // per_row))
    nslabs = -(-shape[ax0] // step) if shape[ax0] else 0
    cb, close = _progress_cb(progress)
    acc = _Acc(ops, dt, out_shape, ddof)
    try:
        for i in range(nslabs):
            lo, hi = i * step, min(shape[ax0], (i + 1) * step)
            key = tuple(slice(lo, hi) if k == ax0 else slice(None) for k in range(ndim))
            acc.add(arr.read(key, threads), axes, lo)
            if cb:
                cb(i + 1, nslabs)
    finally:
        close()
    return acc.result()


def _axis_error(x, ndim):
    raise InvalidOptionError(f"invalid axis: {x} is out of range for a {ndim}-d array")


def _progress_cb(progress):
    from ._util import progress_fn

    cb, close = progress_fn(progress)
    return (None if cb is None else (lambda d, t: cb(d, t, "reduce"))), close


class _Acc:
    """Running accumulators of every requested op, merged layer by layer."""

    def __init__(self, ops, dt, out_shape, ddof):
        self.ops, self.dt, self.shape, self.ddof = ops, dt, out_shape, ddof
        self.first = True
        z = np.zeros((1,), dt)
        self.sum_dt = np.sum(z).dtype
        self.flt = dt.kind == "f"
        self.n = 0  # values merged per output element (non-NaN counts kept separately)
        self.s = None  # sum in the result's type
        self.mean = self.m2 = self.cnt = None  # float64 moments (count per element for nan ops)
        self.nmean = self.nm2 = self.ncnt = self.nsum = None
        self.mn = self.mx = self.nmn = self.nmx = None
        self.nz = None
        self.arg = {}

    def add(self, block, axes, offset):
        ops = self.ops
        k = int(np.prod([block.shape[a] for a in axes], dtype=np.int64))
        if k == 0:
            return
        if {"sum", "mean"} & set(ops) or ("nansum" in ops and not self.flt):
            part = np.sum(block, axis=axes, dtype=self.sum_dt)
            self.s = part if self.s is None else self.s + part
        if {"std", "var"} & set(ops):
            f = block.astype(np.float64)
            m = f.mean(axis=axes)
            m2 = ((f - np.expand_dims(m, axes)) ** 2).sum(axis=axes)
            self.mean, self.m2, _ = _chan(self.mean, self.m2, self.n, m, m2, k)
        self.n += k
        if {"nanmean", "nanstd", "nanvar"} & set(ops) or ("nansum" in ops and self.flt):
            f = block.astype(np.float64)
            valid = ~np.isnan(f)
            c = valid.sum(axis=axes)
            s = np.where(valid, f, 0).sum(axis=axes)
            with np.errstate(invalid="ignore", divide="ignore"):
                m = np.where(c > 0, s / np.maximum(c, 1), 0.0)
            m2 = np.where(valid, (f - np.expand_dims(m, axes)) ** 2, 0).sum(axis=axes)
            self.nsum = s if self.nsum is None else self.nsum + s
            self.nmean, self.nm2, self.ncnt = _chan(self.nmean, self.nm2, self.ncnt, m, m2, c)
        if "min" in ops:
            p = np.min(block, axis=axes)
            self.mn = p if self.mn is None else np.minimum(self.mn, p)
        if "max" in ops:
            p = np.max(block, axis=axes)
            self.mx = p if self.mx is None else np.maximum(self.mx, p)
        if "nanmin" in ops or "nanmax" in ops:
            with np.errstate(invalid="ignore"), _quiet():
                if "nanmin" in ops:
                    p = np.nanmin(block, axis=axes) if self.flt else np.min(block, axis=axes)
                    self.nmn = p if self.nmn is None else np.fmin(self.nmn, p)
                if "nanmax" in ops:
                    p = np.nanmax(block, axis=axes) if self.flt else np.max(block, axis=axes)
                    self.nmx = p if self.nmx is None else np.fmax(self.nmx, p)
        if {"count_nonzero", "any", "all"} & set(ops):
            p = np.count_nonzero(block, axis=axes)
            self.nz = p if self.nz is None else self.nz + p
        for op in ("argmin", "argmax"):
            if op in ops:
                ax = axes[0]
                idx = (np.argmin if op == "argmin" else np.argmax)(block, axis=ax)
                val = np.take_along_axis(block, np.expand_dims(idx, ax), ax).squeeze(ax)
                idx = idx.astype(np.intp) + offset
                if op not in self.arg:
                    self.arg[op] = (val, idx)
                else:
                    bv, bi = self.arg[op]
                    if self.flt:  # numpy: the first NaN wins
                        better = (np.isnan(val) & ~np.isnan(bv)) | (
                            (val < bv if op == "argmin" else val > bv) & ~np.isnan(bv))
                    else:
                        better = val < bv if op == "argmin" else val > bv
                    self.arg[op] = (np.where(better, val, bv), np.where(better, idx, bi))

    def result(self):
        out = {}
        n = self.n
        rdt = np.mean(np.zeros((1,), self.dt)).dtype
        for op in self.ops:
            if op == "sum":
                r = self.s if self.s is not None else np.zeros(self.shape, self.sum_dt)
            elif op == "mean":
                with np.errstate(invalid="ignore", divide="ignore"):
                    r = (self.s.astype(np.float64) / n if self.s is not None
                         else np.full(self.shape, np.nan))
                r = r.astype(rdt)
            elif op in ("var", "std"):
                with np.errstate(invalid="ignore", divide="ignore"):
                    v = (self.m2 / (n - self.ddof) if self.m2 is not None
                         else np.full(self.shape, np.nan))
                    v = np.where(n - self.ddof > 0, v, np.nan) if self.m2 is not None else v
                r = (np.sqrt(v) if op == "std" else v).astype(rdt)
            elif op == "min":
                r = _need(self.mn, "min")
            elif op == "max":
                r = _need(self.mx, "max")
            elif op == "nanmin":
                r = _need(self.nmn, "nanmin")
            elif op == "nanmax":
                r = _need(self.nmx, "nanmax")
            elif op == "count_nonzero":
                r = (self.nz if self.nz is not None else np.zeros(self.shape, np.intp)).astype(np.intp)
            elif op == "any":
                r = (self.nz if self.nz is not None else np.zeros(self.shape, np.intp)) > 0
            elif op == "all":
                r = (self.nz if self.nz is not None else np.zeros(self.shape, np.intp)) == n
            elif op in ("argmin", "argmax"):
                if op not in self.arg:
                    raise ValueError(f"attempt to get {op} of an empty sequence")
                r = self.arg[op][1]
            elif op == "nansum":
                if self.flt:
                    r = self.nsum if self.nsum is not None else np.zeros(self.shape)
                else:
                    r = self.s if self.s is not None else np.zeros(self.shape)
                r = np.asarray(r).astype(self.sum_dt)
            elif op == "nanmean":
                with np.errstate(invalid="ignore", divide="ignore"):
                    r = np.where(self.ncnt > 0, self.nsum / np.maximum(self.ncnt, 1), np.nan)
                r = r.astype(rdt)
            else:  # nanvar, nanstd
                with np.errstate(invalid="ignore", divide="ignore"):
                    d = self.ncnt - self.ddof
                    v = np.where(d > 0, self.nm2 / np.maximum(d, 1), np.nan)
                r = (np.sqrt(v) if op == "nanstd" else v).astype(rdt)
            out[op] = np.asarray(r)[()] if np.ndim(r) == 0 else np.asarray(r)
        return out


def _need(v, op):
    if v is None:
        raise ValueError(f"zero-size array to reduction operation {op} which has no identity")
    return v


class _quiet:
    def __enter__(self):
        import warnings

        self.w = warnings.catch_warnings()
        self.w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *e):
        self.w.__exit__(*e)


def _chan(mean, m2, n, m_b, m2_b, n_b):
    """Chan et al.'s merge of (mean, M2, count) with a part's (counts may be arrays)."""
    if mean is None:
        return m_b, m2_b, n_b
    tot = n + n_b
    with np.errstate(invalid="ignore", divide="ignore"):
        delta = m_b - mean
        frac = np.where(tot > 0, n_b / np.maximum(tot, 1), 0.0)
        mean = mean + delta * frac
        m2 = m2 + m2_b + delta**2 * (n * frac)
    return mean, m2, tot
