"""`Array`: an opened input (store, files, view), read and written with numpy indexing."""

from __future__ import annotations

import builtins
import json
import operator
import os
import shutil

import numpy as np

from . import _chunkwise
from ._job import deferrable as _deferrable
from ._util import abspath, dtype_name, exact, fspath, is_url, opts, progress_fn, source
from .errors import NotFoundError, OutputExistsError, StoreError


# A recipe says how an Array's source is built, so that a pickled Array can be built again in
# another process: ("open", [paths], dtype, shape[, series]) | ("spec", json, base) | ("numpy", array) |
# ("concat"|"stack", [recipes], axis) | ("slice", recipe, starts, stops, dropped axes) | ("cast", recipe, dtype).
def _build(recipe):
    kind = recipe[0]
    if kind == "open":
        series = recipe[4] if len(recipe) > 4 else None
        return _chunkwise.open(recipe[1], recipe[2], recipe[3], series)  # absolute paths
    if kind == "spec":
        return _chunkwise.open_spec(recipe[1], recipe[2])
    if kind == "numpy":
        a = recipe[1]
        return _chunkwise.from_numpy(a, dtype_name(a.dtype))
    if kind in ("concat", "stack"):
        parts = [_build(r) for r in recipe[1]]
        f = _chunkwise.view_concat if kind == "concat" else _chunkwise.view_stack
        return f(parts, recipe[2])
    if kind == "slice":
        return _chunkwise.view_slice(_build(recipe[1]), recipe[2], recipe[3], recipe[4])
    if kind == "cast":
        return _chunkwise.view_cast(_build(recipe[1]), recipe[2])
    raise ValueError(f"unknown recipe {kind!r}")


def _reopen(recipe, shape, dtype):
    a = Array(_build(recipe), recipe)
    if a.shape != tuple(shape) or a.dtype != np.dtype(dtype):
        raise StoreError(
            f"{a._describe()}: was {tuple(shape)} {dtype} when pickled, is {a.shape} {a.dtype} now"
        )
    return a


class _Key:
    """A numpy basic-indexing key resolved against a shape: the bounding region to read, and
    the indexing of that region that gives numpy's result."""

    def __init__(self, key, shape):
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is None for k in key):
            raise IndexError("chunkwise arrays take no numpy.newaxis (None) in an index")
        n_ell = sum(1 for k in key if k is Ellipsis)
        if n_ell > 1:
            raise IndexError("an index can only have a single ellipsis ('...')")
        if n_ell:
            i = next(i for i, k in enumerate(key) if k is Ellipsis)
            fill = len(shape) - (len(key) - 1)
            if fill < 0:
                raise IndexError(
                    f"too many indices: the array is {len(shape)}-dimensional, {len(key) - 1} were indexed"
                )
            key = key[:i] + (slice(None),) * fill + key[i + 1:]
        if len(key) > len(shape):
            raise IndexError(
                f"too many indices: the array is {len(shape)}-dimensional, {len(key)} were indexed"
            )
        key = key + (slice(None),) * (len(shape) - len(key))
        self.starts, self.stops, self.post, self.shape = [], [], [], []
        self.unit_steps = True
        for axis, (k, n) in enumerate(zip(key, shape)):
            if isinstance(k, slice):
                start, stop, step = k.indices(n)
                count = len(range(start, stop, step))
                if count == 0:
                    lo = hi = min(start, n) if step > 0 else 0
                    self.post.append(slice(0, 0))
                elif step > 0:
                    lo, hi = start, start + (count - 1) * step + 1
                    self.post.append(slice(None, None, step))
                else:
                    lo, hi = start + (count - 1) * step, start + 1
                    self.post.append(slice(start - lo, None, step))
                if step != 1:
                    self.unit_steps = False
                self.shape.append(count)
            else:
                if isinstance(k, (bool, np.bool_)):
                    raise IndexError(
                        "a boolean index (numpy's mask or new axis) is not basic indexing: "
                        "chunkwise arrays take integers, slices and '...'"
                    )
                try:
                    i = operator.index(k)
                except TypeError:
                    raise IndexError(
                        f"only integers, slices and '...' are valid indices of a chunkwise array "
                        f"(basic indexing), got {type(k).__name__}"
                    ) from None
                if not -n <= i < n:
                    raise IndexError(
                        f"index {i} is out of bounds for axis {axis} with size {n}"
                    )
                i %= n
                lo, hi = i, i + 1
                self.post.append(0)
            self.starts.append(lo)
            self.stops.append(hi)
        self.post = tuple(self.post)
        self.shape = tuple(self.shape)
        self.region_shape = tuple(b - a for a, b in zip(self.starts, self.stops))


_KIND_LEVEL = {"b": 0, "u": 1, "i": 1, "f": 2}



def _castable(value, dt):
    """``value`` as an array that numpy would write into a ``dt`` array without changing its
    kind: bool < integers < floats, integers only where they fit (numpy's same_kind rule, with
    signed and unsigned integers one kind as long as the values fit)."""
    value = np.asarray(value)
    vk, tk = value.dtype.kind, dt.kind
    if value.size == 0:
        return value.astype(dt)
    if vk not in _KIND_LEVEL or _KIND_LEVEL[vk] > _KIND_LEVEL[tk] or (tk == "b" and vk != "b"):
        raise TypeError(
            f"cannot write {value.dtype} values into a {dt} array (that would change their "
            f"kind; cast them first)"
        )
    if vk in "iu" and tk in "iu" and value.size:
        info = np.iinfo(dt)
        lo, hi = int(value.min()), int(value.max())
        if lo < int(info.min) or hi > int(info.max):
            raise ValueError(
                f"values {lo}..{hi} do not fit a {dt} array (range {info.min}..{info.max})"
            )
    return value


class Array:
    """An array chunkwise reads: a Zarr store, ``.npy``/raw/TIFF files, or a lazy view.

    Open one with :func:`chunkwise.open`; index it as numpy does (basic indexing) to read,
    assign to a region of a store to write. See spec/PYTHON.md §1.
    """

    __slots__ = ("_src", "_recipe", "__weakref__")

    def __init__(self, src, recipe):
        self._src = src
        self._recipe = recipe

    # -- what it is ------------------------------------------------------------------------
    def _source(self):
        if self._src is None:
            raise ValueError("operation on a closed chunkwise Array")
        return self._src

    def _describe(self):
        return self._source().describe()

    @property
    def shape(self) -> tuple:
        """The array's shape."""
        return tuple(self._source().shape)

    @property
    def dtype(self) -> np.dtype:
        """The element type, as a numpy dtype."""
        return np.dtype(self._source().dtype)

    @property
    def chunks(self) -> tuple:
        """The chunk shape (a store's; the blocks other inputs are read by)."""
        return tuple(self._source().chunks)

    @property
    def ndim(self) -> int:
        """The number of axes."""
        return len(self.shape)

    @property
    def size(self) -> int:
        """The number of elements."""
        return int(np.prod(self.shape, dtype=object))

    @property
    def nbytes(self) -> int:
        """The size in bytes, decoded."""
        return self.size * self.dtype.itemsize

    @property
    def path(self) -> str | None:
        """The path it was opened from, or None for views built in Python and numpy copies."""
        if self._recipe[0] == "open":
            return self._recipe[1][0]
        return None

    def is_store(self) -> bool:
        """Whether this is a Zarr store (which can be written and grown)."""
        return self._source().is_store()

    @property
    def voxel_size(self) -> tuple | None:
        """The physical size of a voxel per axis, if the array records one (an OME-TIFF's
        physical sizes, ``convert(..., voxel_size=...)``; spec/FORMAT.md §2), else None."""
        v = self._source().voxel_size()
        return None if v is None else tuple(v[0])

    @property
    def units(self) -> tuple | None:
        """The UDUNITS-2 unit of each axis beside :attr:`voxel_size` (None for an axis without
        one), or None when the array records no voxel size."""
        v = self._source().voxel_size()
        return None if v is None else tuple(v[1])

    def info(self) -> dict:
        """``chunkwise info --json``: shape, type, chunks, codecs, stored bytes, ..."""
        return json.loads(self._source().info())

    def __len__(self):
        if not self.shape:
            raise TypeError("len() of a 0-dimensional array")
        return self.shape[0]

    def __repr__(self):
        if self._src is None:
            return "<chunkwise.Array (closed)>"
        return (
            f"<chunkwise.Array {self._describe()}: shape={self.shape}, dtype={self.dtype}, "
            f"chunks={self.chunks}>"
        )

    def close(self):
        """Releases the array; using it afterwards raises ValueError."""
        self._src = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- reading and writing ---------------------------------------------------------------
    def read(self, key=(), threads=None):
        """``a[key]`` with a thread count: a new numpy array (a numpy scalar when every axis is
        indexed by an integer, as numpy gives)."""
        src = self._source()
        k = _Key(key, self.shape)
        block = self._read_region(src, k.starts, k.stops, threads)
        out = block[k.post]
        if isinstance(out, np.ndarray) and not k.unit_steps:
            out = np.ascontiguousarray(out)
        return out

    def _read_region(self, src, starts, stops, threads=None):
        dt = self.dtype
        shape = tuple(b - a for a, b in zip(starts, stops))
        # numpy allocates (a failed allocation is its MemoryError); chunkwise fills it.
        buf = np.empty(shape, np.uint8 if dt == np.bool_ else dt)
        src.read_into(starts, stops, buf, threads)
        return buf.view(np.bool_) if dt == np.bool_ else buf

    def __getitem__(self, key) -> np.ndarray:
        return self.read(key)

    def __array__(self, dtype=None, copy=None):
        if copy is False:
            raise ValueError("a chunkwise Array is read into a new numpy array: copy=False is impossible")
        a = np.asarray(self.read(()))
        return a if dtype is None else a.astype(dtype, copy=False)

    def write(self, key, value, threads=None):
        """``a[key] = value`` with a thread count (see :meth:`__setitem__`)."""
        src = self._source()
        if not src.is_store():
            raise TypeError(f"{self._describe()} is not a store: only stores are written")
        k = _Key(key, self.shape)
        dt = self.dtype
        value = _castable(value, dt)
        # numpy accepts values with extra leading axes of length 1.
        while value.ndim > len(k.shape) and value.shape[0] == 1:
            value = value[0]
        try:
            value = np.broadcast_to(value, k.shape)
        except ValueError:
            raise ValueError(
                f"could not broadcast values of shape {value.shape} into the region of shape "
                f"{k.shape} of the {self.shape} array"
            ) from None
        if 0 in k.region_shape:
            return
        if not k.unit_steps:
            # Steps: the bounding region is read, the selected elements set, and written back.
            data = self._read_region(src, k.starts, k.stops, threads)
            data[k.post] = value
            self._write_region(src, k.starts, k.stops, data, threads)
            return
        value = value.reshape(k.region_shape)
        # One layer of chunks along axis 0 at a time: memory is a layer, whatever the region
        # (a broadcast scalar stays a view until its layer is made contiguous).
        step = self.chunks[0]
        lo, hi = k.starts[0], k.stops[0]
        cuts = [lo] + list(range((lo // step + 1) * step, hi, step)) + [hi]
        for a, b in zip(cuts, cuts[1:]):
            starts, stops = list(k.starts), list(k.stops)
            starts[0], stops[0] = a, b
            self._write_region(src, starts, stops, value[a - lo:b - lo], threads)

    def _write_region(self, src, starts, stops, values, threads):
        dt = self.dtype
        data = np.ascontiguousarray(values, dtype=dt)
        if dt == np.bool_:
            data = data.view(np.uint8)
        src.write(starts, stops, data, threads)

    def __setitem__(self, key, value):
        """Writes ``value`` (broadcast as numpy does) into the region ``key`` of the store.

        The value must keep its kind (bool < integers < floats: no floats into an integer
        array), and integers must fit the array's type. Chunks the region covers whole are encoded from the data alone, the
        others read, modified and rewritten, each replaced by one rename (spec/LIBRARY.md §3).
        """
        self.write(key, value)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    # -- growing ---------------------------------------------------------------------------
    def append(self, x, axis=0, *, layout="auto", cast=False, again=False, wait=False,
               progress=None, threads=None, memory=None, partition=None, labels=None):
        """Appends ``x`` (a numpy array, an Array or a path) along ``axis``; returns ``self``.

        Only the new chunks and at most one edge layer are written (``chunkwise append``).
        ``partition=(i, n)`` does part ``i`` of ``n`` of the new layers (``--partition I/N``):
        the array grows when the last part finishes; until then it keeps its old shape.
        An Array opened from an OME-Zarr image grows the whole pyramid; ``labels`` maps each
        of its label images (``labels/NAME``) to its new slices (spec/PYRAMID.md §6).
        """
        src = self._source()
        if not src.is_store():
            raise TypeError(f"{self._describe()} is not a store: only stores are appended to")
        extra = {}
        if partition is not None:
            i, n = partition
            extra["partition"] = (int(i), int(n))
        d, close = opts(progress, threads, memory, axis=int(axis), layout=layout, cast=cast,
                        again=again, wait=wait, **extra)
        named = [(str(k), source(v)) for k, v in (labels or {}).items()]
        try:
            _chunkwise.append(self.path, [source(x)], d, named)
        finally:
            close()
        self._src = _build(self._recipe)
        return self

    # -- pickling --------------------------------------------------------------------------
    def __reduce__(self):
        return (_reopen, (self._recipe, self.shape, self.dtype.str))


def _as_recipe(x):
    """An Array's recipe; a path or spec opened."""
    return x._recipe if isinstance(x, Array) else open(x)._recipe


def open(source_, *, dtype=None, shape=None, series=None) -> Array:  # noqa: A001 (numpy's name)
    """Opens anything chunkwise reads as an :class:`Array` (spec/PYTHON.md §1).

    ``source_``: a Zarr v3/v2 store, a ``.npy`` file, a directory or glob of ``.npy`` slices,
    a TIFF, a JSON view-spec file, a raw file (with ``dtype`` and ``shape``, or a ``.json``
    sidecar), an HDF5 dataset ``"file.h5:/path/to/dataset"`` (a package built with the
    ``hdf5`` feature), a list of files taken as slices in that order, or a view spec as a
    ``dict`` (relative paths in it are relative to the current directory). An OME-TIFF opens
    as one series (``series``, default 0), its axes t, c, z, y, x without those of length one
    (spec/CLI.md "TIFF inputs"; :func:`convert` stores them as dimension names).

    >>> a = chunkwise.open("volume.zarr")
    >>> plane = a[100]           # a numpy array
    """
    if isinstance(source_, Array):
        return source_
    if isinstance(source_, dict):
        recipe = ("spec", json.dumps(source_), os.getcwd())
    else:
        paths = [fspath(p) for p in source_] if isinstance(source_, (list, tuple)) else [fspath(source_)]
        # Absolute, so that a pickled Array opens the same files from another directory.
        paths = [p if "*" in p or "?" in p else abspath(p) for p in paths]
        if not paths:
            raise ValueError("no paths given")
        recipe = ("open", paths, None if dtype is None else dtype_name(dtype),
                  None if shape is None else [int(n) for n in shape],
                  None if series is None else int(series))
    return Array(_build(recipe), recipe)


def _clear(path, overwrite):
    if os.path.lexists(path):
        if not overwrite:
            raise OutputExistsError(f"output {path} exists: pass overwrite=True to replace it")
        if not _chunkwise.is_store(path):
            raise OutputExistsError(
                f"{path} exists and is not a Zarr array: chunkwise replaces arrays only"
            )
        shutil.rmtree(path)


def create(path, shape, dtype, chunks=None, codec=None, fill_value=0, overwrite=False, *,
           level=None, checksum=False, shard=None, axis_names=None, voxel_size=None,
           units=None) -> Array:
    """Creates an empty store (every chunk absent, reading as ``fill_value``) and opens it.
    ``voxel_size`` and ``units`` (one per axis) are recorded as :func:`convert` records them.

    ``codec``: ``zstd``, ``blosc-zstd``, ``blosc-lz4`` or ``pcodec`` as the command line's ``--codec``
    takes it (None or ``"default"``: the type's default); ``chunks`` defaults to chunkwise's default chunking.
    """
    path = abspath(fspath(path))
    args = ([int(n) for n in shape], dtype_name(dtype),
            None if chunks is None else [int(c) for c in chunks], codec, level,
            None if fill_value is None else exact(fill_value), bool(checksum),
            None if shard is None else [int(c) for c in shard], axis_names,
            None if voxel_size is None else [float(v) for v in voxel_size],
            None if units is None else ["" if u is None else str(u) for u in units])
    if is_url(path) or not os.path.lexists(path):
        # On object storage, an existing array is refused (without overwrite) by the writer.
        src = _chunkwise.create(path, *args)
        return Array(src, ("open", [path], None, None))
    if not overwrite:
        raise OutputExistsError(f"output {path} exists: pass overwrite=True to replace it")
    if not _chunkwise.is_store(path):
        raise OutputExistsError(f"{path} exists and is not a Zarr array: chunkwise replaces arrays only")
    # The new array is made beside the old one (so bad arguments lose nothing), then swapped in.
    aside = f"{os.path.join(os.path.dirname(path), '.' + os.path.basename(path))}.chunkwise-new-{os.getpid()}"
    if os.path.lexists(aside):
        shutil.rmtree(aside)
    _chunkwise.create(aside, *args)
    old = f"{aside}-old"
    os.rename(path, old)
    os.rename(aside, path)
    shutil.rmtree(old)
    return open(path)


@_deferrable(1)
def convert(inputs, path, chunks=None, codec=None, level=None, *, checksum=False, shard=None,
            axis_names=None, voxel_size=None, units=None, dtype=None, shape=None, series=None,
            overwrite=False, partition=None, progress=None, threads=None, memory=None) -> Array:
    """``chunkwise convert``: any input (paths as :func:`open` takes them, an Array, a numpy
    array) written as a chunked store at ``path``, streaming; returns the store opened.
    ``voxel_size`` (one per axis) and ``units`` (UDUNITS-2 names, "" or None for none) are
    recorded in its attributes (default: the input's, an OME-TIFF's physical sizes).
    ``partition="I/N"`` writes one part of N sharing one job; a part that leaves the
    publishing to another returns None. ``defer=True`` returns a :class:`chunkwise.Job`."""
    from ._compute import _partition
    if isinstance(inputs, (str, os.PathLike, list, tuple, dict)) and not isinstance(inputs, Array):
        src = open(inputs, dtype=dtype, shape=shape, series=series)._source()
    else:
        src = source(inputs)
    d, close = opts(progress, threads, memory, chunks=chunks, codec=codec, level=level,
                    checksum=checksum, shard=None if shard is None else [int(c) for c in shard],
                    axis_names=axis_names,
                    voxel_size=None if voxel_size is None else [float(v) for v in voxel_size],
                    units=None if units is None else ["" if u is None else str(u) for u in units],
                    overwrite=overwrite, partition=_partition(partition))
    try:
        report = json.loads(_chunkwise.convert(src, fspath(path), d))
    finally:
        close()
    return None if report.get("waiting") else open(path)


def _load_pyramid(path) -> list:
    """The levels of the published image at ``path``, finest first."""
    path = fspath(path)
    if is_url(path):
        # chunkwise's pyramids name their levels 0, 1, ...: the first that is not an array
        # ends them (level 0 must be one).
        levels = [open(f"{path.rstrip('/')}/0")]
        while True:
            try:
                levels.append(open(f"{path.rstrip('/')}/{len(levels)}"))
            except (NotFoundError, StoreError):
                return levels
    with builtins.open(os.path.join(path, "zarr.json")) as f:
        ms = json.load(f)["attributes"]["ome"]["multiscales"][0]
    return [open(os.path.join(path, d["path"])) for d in ms["datasets"]]


@_deferrable(1, _load_pyramid)
def pyramid(input, path, *, method="mean", levels=None, factors=None, factors_per_level=None,
            axis_names=None, axis_types=None, units=None, voxel_size=None, chunks=None,
            codec=None, level=None, name=None, labels=None, overwrite=False, partition=None,
            progress=None, threads=None, memory=None) -> list:
    """``chunkwise pyramid``: an OME-Zarr 0.5 multiscale image of ``input`` (paths as
    :func:`open` takes them, an Array, a numpy array) at ``path``, every level from one read
    of the input (spec/PYRAMID.md). ``method`` is mean, mode (labels), gaussian, nearest, min or
    max;
    ``factors`` (one per axis) applies to every level, ``factors_per_level`` gives a list per
    level after the first. ``labels`` maps names to label volumes (integers, the input's
    shape; anything ``input`` may be), written as ``path/labels/NAME``: mode pyramids of the
    image's own levels (spec/PYRAMID.md §1.1). Returns the levels opened, finest first: napari
    takes the list as a multiscale image (``viewer.add_image(levels, multiscale=True)``).
    A killed pyramid resumes when called again; ``partition="I/N"`` builds one part of N
    sharing one build, and a part that leaves the publishing to another returns None;
    ``defer=True`` returns a :class:`chunkwise.Job` (for ``chunkwise.distributed.run``)."""
    from ._compute import _partition
    def as_source(x):
        if isinstance(x, (str, os.PathLike, list, tuple, dict)) and not isinstance(x, Array):
            return open(x)._source()
        return source(x)

    src = as_source(input)
    named = [(str(k), as_source(v)) for k, v in (labels or {}).items()]
    if factors is not None and factors_per_level is not None:
        raise ValueError("give factors (every level) or factors_per_level, not both")
    per_level = None
    if factors is not None:
        per_level = [[int(f) for f in factors]]
    elif factors_per_level is not None:
        per_level = [[int(f) for f in fs] for fs in factors_per_level]
    d, close = opts(progress, threads, memory, method=method, levels=levels, factors=per_level,
                    axis_names=None if axis_names is None else list(axis_names),
                    axis_types=None if axis_types is None else list(axis_types),
                    units=None if units is None else list(units),
                    voxel_size=None if voxel_size is None else [float(v) for v in voxel_size],
                    chunks=chunks, codec=codec, level=level, name=name, overwrite=overwrite,
                    partition=_partition(partition))
    try:
        report = json.loads(_chunkwise.pyramid(src, fspath(path), d, named))
    finally:
        close()
    if report.get("waiting"):
        return None
    return [open(os.path.join(fspath(path), lv["path"])) for lv in report["levels"]]


def from_array(x, path, chunks=None, codec=None, level=None, *, overwrite=False, progress=None,
               threads=None, memory=None, checksum=False, shard=None, axis_names=None,
               voxel_size=None, units=None) -> Array:
    """Writes a numpy array (or anything ``numpy.asarray`` takes) as a new store at ``path``
    (``checksum``, ``shard``, ``axis_names``, ``voxel_size`` and ``units`` as :func:`create`
    takes them)."""
    a = np.asarray(x)
    if a.ndim == 0:
        raise ValueError("0-dimensional arrays are not supported: give at least one axis")
    dtype_name(a.dtype)
    out = create(path, a.shape, a.dtype, chunks=chunks, codec=codec, level=level,
                 overwrite=overwrite, checksum=checksum, shard=shard, axis_names=axis_names,
                 voxel_size=voxel_size, units=units)
    # Written one layer of chunks at a time from the caller's array (a memmap too): no copy of
    # the whole array is made.
    cb, close = progress_fn(progress)
    try:
        step = out.chunks[0]
        n = a.shape[0]
        for i, lo in enumerate(range(0, n, step)):
            out.write(slice(lo, min(n, lo + step)), a[lo:lo + step], threads)
            if cb:
                cb(min(n, lo + step), n, "from_array", "plane")
    finally:
        close()
    return out
