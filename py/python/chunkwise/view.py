"""Lazy views (biggus' LinearMosaic and ArrayStack): joins, slices and casts read on demand,
usable anywhere an :class:`~chunkwise.Array` is, never written."""

from __future__ import annotations

from ._array import Array, _Key, _as_recipe, _build
from ._util import dtype_name


def _make(recipe):
    return Array(_build(recipe), recipe)


def concat(arrays, axis=0) -> Array:
    """The arrays joined along ``axis`` (``numpy.concatenate``), lazily."""
    return _make(("concat", [_as_recipe(a) for a in arrays], int(axis)))


def stack(arrays, axis=0) -> Array:
    """The arrays stacked along a new axis ``axis`` (``numpy.stack``), lazily."""
    return _make(("stack", [_as_recipe(a) for a in arrays], int(axis)))


def slice(a, key) -> Array:  # noqa: A001 (the view's name)
    """``a[key]`` as a lazy view, with numpy's basic-indexing semantics (an integer removes its
    axis); slices take steps of 1 only."""
    recipe = _as_recipe(a)
    k = _Key(key, tuple(_build(recipe).shape))
    if not k.unit_steps:
        raise IndexError("a view slice takes steps of 1 only (read it, then step with numpy)")
    drop = [i for i, p in enumerate(k.post) if isinstance(p, int)]
    return _make(("slice", recipe, k.starts, k.stops, drop))


def cast(a, dtype) -> Array:
    """``a`` read as ``dtype`` (numpy's safe casts only), lazily."""
    return _make(("cast", _as_recipe(a), dtype_name(dtype)))


__all__ = ["concat", "stack", "slice", "cast"]
