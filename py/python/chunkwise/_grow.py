"""Joining stores: concatenate and stack by linking chunk files, not copying."""

from __future__ import annotations

import os

from . import _chunkwise
from ._array import Array, open as open_
from ._util import fspath, opts


def _store_path(x) -> str:
    if isinstance(x, Array):
        if not x.is_store() or x.path is None:
            raise TypeError(f"{x._describe()} is not a store: joins link stores' chunk files "
                            f"(use chunkwise.view.concat for a lazy join of anything)")
        return x.path
    return fspath(x)


def concat(arrays, out=None, axis=0, *, into=None, layout="auto", move=False, overwrite=False,
           progress=None, threads=None, memory=None) -> Array:
    """``numpy.concatenate`` of stores along ``axis`` into the new store ``out``, or onto
    ``into`` in place; chunk files are hard-linked (moved with ``move=True``) and only the
    minimal edge layer is re-encoded. Returns the result opened."""
    if (out is None) == (into is None):
        raise TypeError("concat takes exactly one of out= (a new store) and into= (in place)")
    paths = [_store_path(a) for a in arrays]
    d, close = opts(progress, threads, memory, axis=int(axis), layout=layout, move=move,
                    overwrite=overwrite)
    try:
        if into is not None:
            target = _store_path(into)
            _chunkwise.join("into", paths, target, d)
            result = target
        else:
            _chunkwise.join("concat", paths, fspath(out), d)
            result = fspath(out)
    finally:
        close()
    if isinstance(into, Array):
        into._src = open_(result)._source()
        return into
    return open_(result)


def stack(arrays, out, *, overwrite=False, progress=None, threads=None, memory=None) -> Array:
    """``numpy.stack`` of equal stores along a new leading axis, into the new store ``out``."""
    paths = [_store_path(a) for a in arrays]
    d, close = opts(progress, threads, memory, overwrite=overwrite)
    try:
        _chunkwise.join("stack", paths, fspath(out), d)
    finally:
        close()
    return open_(out)
