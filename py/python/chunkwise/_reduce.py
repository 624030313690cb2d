"""One pass over the chunks: statistics, histograms, coordinates, graphs."""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from . import _chunkwise
from ._array import Array, _Key
from ._util import exact, fspath, opts, source


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


def stats(a, region=None, *, progress=None, threads=None, memory=None) -> dict:
    """``count``, ``nan_count``, ``min``, ``max``, ``sum``, ``mean``, ``std`` of the array (or
    of ``region``) in one pass: integer sums exact (Python ints), NaNs counted apart."""
    src = source(a)
    starts, stops = _region(src, region)
    d, close = opts(progress, threads, memory)
    try:
        s = json.loads(_chunkwise.stats(src, starts, stops, d))
    finally:
        close()
    return {k: _number(v) for k, v in s.items()}


def histogram(a, bins=None, range=None, *, progress=None, threads=None, memory=None):  # noqa: A002
    """``(counts, edges)`` as ``numpy.histogram(a, bins, range)`` (the last bin includes its
    right edge). ``bins=None``: one bin per value for small integer ranges, else 256 over the
    data's range; ``range=None``: the data's (finite) range."""
    src = source(a)
    if bins is not None and (np.ndim(bins) != 0 or int(bins) < 1):
        raise ValueError(f"bins must be a positive int, got {bins!r}")
    rng = None
    if range is not None:
        lo, hi = (float(v) for v in range)
        rng = (lo, hi)
        if bins is None:
            bins = 10
    d, close = opts(progress, threads, memory)
    try:
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


def where(a, above=None, below=None, out=None, *, overwrite=False, progress=None, threads=None,
          memory=None):
    """``numpy.argwhere`` of ``a != 0`` (or ``a > above``, ``a < below``, both): an int64
    ``(N, ndim)`` array, or with ``out=`` a ``.npy`` file written by streaming (its path)."""
    src = source(a)
    d, close = opts(progress, threads, memory)
    ab = None if above is None else exact(above)
    be = None if below is None else exact(below)
    try:
        return _to_npy(lambda p, ow: _chunkwise.where_(src, p, ab, be, ow, d), out, overwrite)
    finally:
        close()


def graph(a, connectivity=None, above=None, below=None, coords=False, out=None, *,
          overwrite=False, progress=None, threads=None, memory=None):
    """Edges between adjacent selected voxels (``a != 0``, or by ``above``/``below``): an
    int64 ``(E, 2)`` array of C-order flat indices ``(p, q)`` with ``p < q``, or with
    ``coords=True`` ``(E, 2*ndim)`` coordinates; ``connectivity`` defaults to the full
    neighbourhood (26 in 3-D). With ``out=``, a ``.npy`` file (its path)."""
    src = source(a)
    d, close = opts(progress, threads, memory)
    ab = None if above is None else exact(above)
    be = None if below is None else exact(below)
    conn = None if connectivity is None else int(connectivity)
    try:
        return _to_npy(
            lambda p, ow: _chunkwise.graph(src, p, conn, bool(coords), ab, be, ow, d), out,
            overwrite)
    finally:
        close()


__all__ = ["stats", "histogram", "where", "graph", "Array"]
