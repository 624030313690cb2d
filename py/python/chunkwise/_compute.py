"""Block-by-block computation: the built-in kernels, and Python functions over blocks."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile

import numpy as np

from . import _chunkwise
from ._array import Array, open as open_
from ._util import dtype_name, exact, fspath, native, opts, source
from ._job import deferrable
from .errors import InvalidOptionError

_MODES = ("reflect", "mirror", "nearest", "wrap", "constant", "grid-mirror", "grid-wrap",
          "grid-constant")


def _mode(mode):
    if not isinstance(mode, str) or mode not in _MODES:
        raise InvalidOptionError(
            f"unknown mode {mode!r}; expected one of reflect, mirror, nearest, wrap, constant"
        )
    return mode


def _run(kind, a, out, params, progress, threads, memory, **kw):
    d, close = opts(progress, threads, memory, **kw)
    src = a if isinstance(a, _chunkwise.Source) else source(a)
    try:
        report = _chunkwise.kernel(kind, [src], fspath(out), params, d)
    finally:
        close()
    return _result(report, out)


def _common(chunks, codec, level, overwrite, restart, checksum, partition=None):
    return dict(chunks=chunks, codec=codec, level=level, overwrite=overwrite, restart=restart,
                checksum=checksum, partition=_partition(partition))


def _partition(p):
    """``"I/N"`` or ``(I, N)`` as the binding's (I, N), or None."""
    if p is None:
        return None
    if isinstance(p, str):
        try:
            i, n = (int(v) for v in p.split("/"))
        except ValueError:
            raise InvalidOptionError(f"invalid partition: {p!r}: give 'I/N' or (I, N)") from None
    else:
        i, n = (int(v) for v in p)
    if not 0 <= i < n:
        raise InvalidOptionError(f"invalid partition: {i}/{n}: need 0 <= I < N")
    return (i, n)


def _result(report, out):
    """The output opened, or None for a part that left the publishing to another."""
    if json.loads(report)["status"].startswith("waiting"):
        return None
    return open_(out)


@deferrable(1)
def gaussian(a, out, sigma, truncate=4.0, mode="reflect", cval=0.0, dtype=None, *, chunks=None,
             codec=None, level=None, overwrite=False, restart=False, checksum=False,
             partition=None, progress=None, threads=None, memory=None) -> Array:
    """``scipy.ndimage.gaussian_filter(a, sigma, mode=mode, cval=cval, truncate=truncate)``,
    chunk by chunk into the store ``out`` (``float32`` unless ``dtype``; spec/COMPUTE.md)."""
    sig = [float(s) for s in np.atleast_1d(sigma)]
    params = dict(sigma=sig, truncate=float(truncate), mode=_mode(mode), cval=float(cval),
                  dtype=None if dtype is None else dtype_name(dtype))
    return _run("gaussian", a, out, params, progress, threads, memory,
                **_common(chunks, codec, level, overwrite, restart, checksum, partition))


@deferrable(1)
def correlate1d(a, out, weights, axis=-1, mode="reflect", cval=0.0, origin=0, dtype=None, *,
                chunks=None, codec=None, level=None, overwrite=False, restart=False,
                checksum=False, partition=None, progress=None, threads=None, memory=None) -> Array:
    """``scipy.ndimage.correlate1d(a, weights, axis, mode=mode, cval=cval, origin=origin)``,
    chunk by chunk into the store ``out``."""
    src = source(a)
    ndim = len(src.shape)
    ax = int(axis)
    if not -ndim <= ax < ndim:
        raise InvalidOptionError(f"axis {axis} is out of range for a {ndim}-dimensional array")
    params = dict(weights=[float(w) for w in np.asarray(weights, dtype=float).ravel()],
                  axis=ax % ndim, origin=int(origin), mode=_mode(mode), cval=float(cval),
                  dtype=None if dtype is None else dtype_name(dtype))
    return _run("correlate1d", src, out, params, progress, threads, memory,
                **_common(chunks, codec, level, overwrite, restart, checksum, partition))


def _table_path(table):
    """A .npy path for a lookup table: a path as given, an array saved once by its content
    (so that a rerun of the same job finds the same file and resumes)."""
    if isinstance(table, (str, os.PathLike)):
        return fspath(table)
    t = native(np.asarray(table))
    if t.ndim != 1:
        raise InvalidOptionError(f"a lookup table is 1-D, this one has shape {t.shape}")
    digest = hashlib.sha256(t.dtype.str.encode() + t.tobytes()).hexdigest()[:32]
    d = os.path.join(tempfile.gettempdir(), f"chunkwise-tables-{os.getuid()}")
    os.makedirs(d, mode=0o700, exist_ok=True)
    st = os.lstat(d)
    if not os.path.isdir(d) or os.path.islink(d) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise PermissionError(
            f"{d}: the lookup-table cache must be a directory of yours that nobody else can "
            f"write (mode 0700); remove it or give the table as an .npy path"
        )
    p = os.path.join(d, f"{digest}.npy")
    if not os.path.exists(p):
        fd, tmp = tempfile.mkstemp(dir=d, suffix=".npy.tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, t)
            os.replace(tmp, p)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    return p


@deferrable(1)
def lut(a, out, table, *, chunks=None, codec=None, level=None, overwrite=False, restart=False,
        checksum=False, partition=None, progress=None, threads=None, memory=None) -> Array:
    """``table[a]`` (a 1-D table as a numpy array or an ``.npy`` path), into the store ``out``."""
    return _run("lut", a, out, dict(table=_table_path(table)), progress, threads, memory,
                **_common(chunks, codec, level, overwrite, restart, checksum, partition))


@deferrable(1)
def threshold(a, out, above, *, chunks=None, codec=None, level=None, overwrite=False,
              restart=False, checksum=False, partition=None, progress=None, threads=None, memory=None) -> Array:
    """``a > above`` as ``uint8`` 0/1, compared exactly in the array's own type."""
    return _run("threshold", a, out, dict(above=exact(above)), progress, threads, memory,
                **_common(chunks, codec, level, overwrite, restart, checksum, partition))


@deferrable("out")
def eval(expr, out=None, *, dtype=None, inputs=None, chunks=None, codec=None, level=None,
         overwrite=False, restart=False, checksum=False, partition=None, progress=None,
         threads=None, memory=None, **named) -> Array:
    """``numexpr.evaluate(expr)`` over the named inputs (chunkwise Arrays, paths, views or numpy
    arrays of one shape), fused chunk by chunk into the store ``out``: numexpr's language,
    numpy's result types (NEP 50) unless ``dtype`` (spec/COMPUTE.md §11).

    ``cw.eval("sqrt(a**2 + b**2)", out="norm.zarr", a=x, b=y)``; an input whose name is one of
    this function's options goes in ``inputs={"dtype": ...}``."""
    if out is None:
        raise TypeError("eval(expr, out=..., name=input, ...) needs the output store (out)")
    named = {**(inputs or {}), **named}
    if not named:
        raise InvalidOptionError(
            f"eval({expr!r}): no inputs; name them: eval(expr, out=..., a=array, b='b.zarr')"
        )
    srcs = [source(v) for v in named.values()]
    params = dict(expr=str(expr), names=list(named),
                  dtype=None if dtype is None else dtype_name(dtype))
    d, close = opts(progress, threads, memory,
                    **_common(chunks, codec, level, overwrite, restart, checksum, partition))
    try:
        report = _chunkwise.kernel("eval", srcs, fspath(out), params, d)
    finally:
        close()
    return _result(report, out)


@deferrable(1)
def neighbourhood_lut(a, out, table, above=None, *, index_order="default", chunks=None,
                      codec=None, level=None, overwrite=False, restart=False, checksum=False,
                      partition=None, progress=None, threads=None, memory=None) -> Array:
    """ClearMap's 3x3x3 neighbourhood lookup (spec/COMPUTE.md): each voxel's 27-bit
    neighbourhood index (of ``a != 0``, or ``a > above``) looked up in a 2^27-entry table (or a
    2^26-entry one: the centre left out). ``index_order="clearmap"`` weighs the voxel at offset
    (a, b, c) 2^(a + 3b + 9c), as ClearMap's ``Topology3d`` does; the default 2^(9a + 3b + c)."""
    params = dict(table=_table_path(table), above=None if above is None else exact(above),
                  index_order=index_order)
    return _run("neighbourhood_lut", a, out, params, progress, threads, memory,
                **_common(chunks, codec, level, overwrite, restart, checksum, partition))


# -- Python functions over blocks ------------------------------------------------------------

def _identity(func) -> str:
    """The default job name: the function's qualified name and a hash of what it computes, the
    same in every process: its code (nested code objects included), constants, defaults,
    closure cells and the globals it names, and bound arguments (functools.partial). A value
    that cannot be hashed stably (an open file, a lock, ...) is a TypeError asking for name=."""
    h = hashlib.sha256()
    f = func
    while isinstance(f, functools.partial):
        _feed(h, f.args)
        _feed(h, sorted(f.keywords.items()))
        f = f.func
    name = f"{getattr(f, '__module__', None) or ''}.{getattr(f, '__qualname__', type(f).__qualname__)}"
    try:
        _feed(h, f)
    except _Unhashable as e:
        raise TypeError(
            f"cannot derive a job name from {name}: {e}; pass name= (a string naming what the "
            f"function computes, changed whenever its results change)"
        ) from None
    return f"python {name} {h.hexdigest()[:16]}"


class _Unhashable(Exception):
    pass


def _feed(h, v, depth=0, seen=None):
    """Feeds a stable digest of ``v`` into ``h`` (never an address, never a hash seed)."""
    import types

    if depth > 50:
        raise _Unhashable("nested too deeply")
    seen = set() if seen is None else seen
    t = type(v)
    h.update(t.__qualname__.encode() + b":")
    if v is None or isinstance(v, (bool, int, float, complex, str, bytes)):
        h.update(repr(v).encode())
    elif isinstance(v, np.ndarray):
        h.update(v.dtype.str.encode() + repr(v.shape).encode())
        h.update(hashlib.sha256(np.ascontiguousarray(v).tobytes()).digest())
    elif isinstance(v, np.generic):
        h.update(v.dtype.str.encode() + v.tobytes())
    elif isinstance(v, (list, tuple)):
        h.update(str(len(v)).encode())
        for x in v:
            _feed(h, x, depth + 1, seen)
    elif isinstance(v, (set, frozenset)):
        parts = []
        for x in v:
            hx = hashlib.sha256()
            _feed(hx, x, depth + 1, seen)
            parts.append(hx.digest())
        for d in sorted(parts):
            h.update(d)
    elif isinstance(v, dict):
        items = []
        for k, x in v.items():
            hx = hashlib.sha256()
            _feed(hx, k, depth + 1, seen)
            _feed(hx, x, depth + 1, seen)
            items.append(hx.digest())
        for d in sorted(items):
            h.update(d)
    elif isinstance(v, types.CodeType):
        h.update(v.co_code + v.co_name.encode() + repr(v.co_names).encode())
        _feed(h, v.co_consts, depth + 1, seen)
    elif isinstance(v, types.FunctionType):
        if id(v) in seen:  # recursion through globals
            h.update(v.__qualname__.encode())
            return
        seen.add(id(v))
        h.update(f"{v.__module__}.{v.__qualname__}".encode())
        _feed(h, v.__code__, depth + 1, seen)
        _feed(h, v.__defaults__, depth + 1, seen)
        _feed(h, v.__kwdefaults__ or {}, depth + 1, seen)
        cells = tuple(_global_token(c.cell_contents) for c in (v.__closure__ or ())
                      if _has_contents(c))
        _feed(h, cells, depth + 1, seen)
        names = _global_names(v.__code__)
        used = {n: v.__globals__[n] for n in names if n in v.__globals__}
        _feed(h, {n: _global_token(x) for n, x in used.items()}, depth + 1, seen)
    elif isinstance(v, functools.partial):
        _feed(h, (v.func, v.args, v.keywords), depth + 1, seen)
    elif isinstance(v, (types.BuiltinFunctionType, types.ModuleType, type, np.ufunc)):
        h.update(f"{getattr(v, '__module__', '')}.{getattr(v, '__qualname__', getattr(v, '__name__', ''))}".encode())
    elif callable(v) and hasattr(type(v), "__call__") and hasattr(v, "__dict__"):
        # A callable instance: its class and its state.
        h.update(f"{t.__module__}.{t.__qualname__}".encode())
        _feed(h, vars(v), depth + 1, seen)
    else:
        try:
            import pickle

            h.update(pickle.dumps(v, protocol=4))
        except Exception as e:  # noqa: BLE001 - any failure means "not stably hashable"
            raise _Unhashable(f"{t.__qualname__} value {v!r:.60} has no stable content") from e


def _has_contents(cell):
    try:
        cell.cell_contents
    except ValueError:
        return False
    return True


def _global_names(code):
    import types

    names = set(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            names |= _global_names(c)
    return names


def _global_token(x):
    """A global or closure value a function uses: parameters (numbers, strings, tuples of them,
    numpy arrays) and functions by content; modules and classes by name; mutable state (lists,
    dicts, other objects: counters, caches, loggers) by its type only, so that a function that
    records something is the same job on its next call."""
    import types

    if isinstance(x, types.ModuleType):
        return ("module", x.__name__)
    if isinstance(x, type):
        return ("class", f"{x.__module__}.{x.__qualname__}")
    if x is None or isinstance(x, (bool, int, float, complex, str, bytes, np.ndarray,
                                   np.generic, frozenset, types.FunctionType,
                                   types.BuiltinFunctionType, np.ufunc, functools.partial)):
        return x
    if isinstance(x, tuple):
        return tuple(_global_token(e) for e in x)
    return ("state", f"{type(x).__module__}.{type(x).__qualname__}")


def _boundary(boundary):
    """A dask boundary as (mode, cval)."""
    if isinstance(boundary, (int, float, np.number)) and not isinstance(boundary, bool):
        return "constant", float(boundary)
    aliases = {"periodic": "wrap", "symmetric": "reflect"}
    if isinstance(boundary, str):
        b = aliases.get(boundary, boundary)
        if b in _MODES:
            return b, 0.0
    raise InvalidOptionError(
        f"unknown boundary {boundary!r}; expected reflect, mirror, nearest, wrap "
        f"(or periodic), constant, or a number (a constant)"
    )


def _depth(depth, ndim):
    if isinstance(depth, dict):
        d = [0] * ndim
        for k, v in depth.items():
            d[int(k) % ndim] = int(v)
    elif np.ndim(depth) == 0:
        d = [int(depth)] * ndim
    else:
        d = [int(v) for v in depth]
        if len(d) != ndim:
            raise InvalidOptionError(f"depth {tuple(depth)} has {len(d)} values for {ndim} axes")
    if any(v < 0 for v in d):
        raise InvalidOptionError(f"depth {tuple(d)}: must not be negative")
    return d


def _caller(func, out, out_dtype, trim, what):
    """The callable the binding invokes per chunk: runs ``func``, checks and trims its result,
    and returns the output chunk's values in the stored type."""
    store_dt = np.dtype(np.uint8) if out_dtype == np.bool_ else out_dtype

    def call(key, region, valid, *blocks):
        where = f"output chunk {key} (region {','.join(f'{a}:{b}' for a, b in region)}) of {out}"
        try:
            r = func(*blocks)
        except BaseException as e:
            if isinstance(e, Exception):
                e.add_note(
                    f"chunkwise: raised by {what}'s function on {where}; this call's chunks are "
                    f"discarded (other parts of a job in parts keep theirs)"
                )
            raise
        r = np.asarray(r)
        if r.dtype.kind not in "biuf" or not np.can_cast(r.dtype, out_dtype, casting="same_kind"):
            raise TypeError(
                f"{what}: the function returned {r.dtype} for {where}, which does not cast to "
                f"the output's {out_dtype} (same_kind); pass dtype= or cast in the function"
            )
        want = blocks[0].shape if trim else tuple(b - a for a, b in region)
        if r.shape != tuple(want):
            raise ValueError(
                f"{what}: the function returned shape {r.shape} for {where}, expected "
                f"{tuple(want)} ({'the block with its halo' if trim else 'the output chunk'})"
            )
        if trim:
            r = r[tuple(slice(a, b) for a, b in valid)]
        r = np.ascontiguousarray(r, dtype=out_dtype)
        return r.view(store_dt) if store_dt != out_dtype else r

    return call


@deferrable("out")
def map_overlap(func, *inputs, out, depth, boundary="reflect", dtype=None, trim=True, name=None,
                chunks=None, codec=None, level=None, overwrite=False, restart=False,
                checksum=False, partition=None, progress=None, threads=None, memory=None, **kwargs) -> Array:
    """dask's ``map_overlap``, chunk by chunk into the store ``out`` (spec/PYTHON.md §2).

    ``func(*blocks)`` gets each input's block grown by ``depth`` (an int, one per axis, or a
    dict axis -> depth) with ``boundary`` applied, and returns the grown block (trimmed here)
    or, with ``trim=False``, the output chunk. ``dtype`` defaults to the first input's.
    ``name`` is the job's identity (default: the function's name and a hash of its code).
    Other keyword arguments are passed to ``func``, as dask does.

    >>> import scipy.ndimage as ndi
    >>> cw.map_overlap(ndi.gaussian_filter, a, out="smooth.zarr", depth=8, sigma=2)  # doctest: +SKIP
    """
    if not callable(func):
        raise TypeError(f"func must be callable, got {type(func).__name__}")
    if not inputs:
        raise TypeError("map_overlap needs at least one input array")
    if kwargs:
        func = functools.partial(func, **kwargs)
    srcs = [source(x) for x in inputs]
    ndim = len(srcs[0].shape)
    d = _depth(depth, ndim)
    mode, cval = _boundary(boundary)
    out_dtype = np.dtype(srcs[0].dtype if dtype is None else dtype_name(dtype))
    what = "map_overlap" if any(d) else "map_blocks"
    job = name if name is not None else _identity(func)
    job = f"{job} trim={bool(trim)}"
    call = _caller(func, fspath(out), out_dtype, bool(trim) or not any(d), what)
    o, close = opts(progress, threads, memory,
                    **_common(chunks, codec, level, overwrite, restart, checksum, partition))
    try:
        report = _chunkwise.map_overlap(call, srcs, fspath(out), job, out_dtype.name, d, mode,
                                        cval, o)
    finally:
        close()
    return _result(report, out)


@deferrable("out")
def map_blocks(func, *inputs, out, dtype=None, name=None, chunks=None, codec=None, level=None,
               overwrite=False, restart=False, checksum=False, partition=None, progress=None, threads=None,
               memory=None, **kwargs) -> Array:
    """dask's ``map_blocks``: ``func(*blocks, **kwargs)`` on each output chunk's region of
    every input, returning the chunk's values; into the store ``out``."""
    return map_overlap(func, *inputs, out=out, depth=0, dtype=dtype, trim=True, name=name,
                       chunks=chunks, codec=codec, level=level, overwrite=overwrite,
                       restart=restart, checksum=checksum, partition=partition,
                       progress=progress, threads=threads, memory=memory, **kwargs)
