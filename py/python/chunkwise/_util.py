"""What the public modules share: dtypes, numbers, keyword options, progress, inputs."""

from __future__ import annotations

import os
import re
import sys
import threading

import numpy as np

from . import _chunkwise
from .errors import InvalidOptionError

#: The types chunkwise stores, by numpy name.
DTYPES = (
    "bool",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "int8",
    "int16",
    "int32",
    "int64",
    "float32",
    "float64",
)


def dtype_name(dtype) -> str:
    """The chunkwise name of a numpy dtype (or anything ``numpy.dtype`` takes), or TypeError."""
    dt = np.dtype(dtype)
    if dt.name not in DTYPES:
        raise TypeError(
            f"dtype {dt} is not supported by chunkwise; supported: {', '.join(DTYPES)}"
        )
    return dt.name


def native(x: np.ndarray) -> np.ndarray:
    """``x`` as a C-contiguous array in native byte order, of a supported type."""
    if x.ndim == 0:
        raise ValueError("0-dimensional arrays are not supported: give at least one axis")
    dtype_name(x.dtype)
    if not x.dtype.isnative:
        x = x.astype(x.dtype.newbyteorder("="))
    return np.ascontiguousarray(x)


def exact(value) -> str:
    """A number as a string chunkwise parses exactly (integers beyond 2^53 included)."""
    if isinstance(value, (bool, np.bool_)):
        return "1" if value else "0"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if v != v:
            return "nan"
        if v in (float("inf"), float("-inf")):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    raise TypeError(f"expected a number, got {value!r} ({type(value).__name__})")


_UNITS = {"": 1, "b": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12,
          "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(value) -> int | None:
    """A memory budget: an int of bytes or a string such as ``"2GiB"``, ``"512MB"``."""
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if value <= 0:
            raise InvalidOptionError(f"invalid memory: {value}: must be positive")
        return int(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", value)
        if m and m.group(2).lower() in _UNITS:
            n = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
            if n > 0:
                return n
    raise InvalidOptionError(
        f"invalid memory: {value!r}: give bytes as an int or a size such as '2GiB', '512MB'"
    )


class _Bar:
    """Progress as a tqdm bar when tqdm is installed, a plain stderr line otherwise."""

    def __init__(self):
        self.lock = threading.Lock()
        self.bar = None
        self.stage = None
        self.last = -1.0

    def __call__(self, done, total, stage, unit="chunk"):
        with self.lock:
            if self.bar is None or stage != self.stage:
                self.close()
                self.stage = stage
                try:
                    from tqdm.auto import tqdm
                except ImportError:
                    self.bar = False
                else:
                    # Bytes as KiB, MiB, ... per second; chunks and planes as counted.
                    scaled = dict(unit="B", unit_scale=True, unit_divisor=1024)
                    self.bar = tqdm(total=total, desc=stage, leave=False,
                                    **(scaled if unit == "bytes" else dict(unit=unit)))
            if self.bar is False:
                pct = 100.0 * done / total if total else 100.0
                if pct - self.last >= 1 or done == total:
                    self.last = pct
                    end = "\n" if done == total else ""
                    sys.stderr.write(f"\r{stage}: {done}/{total} ({pct:.0f}%){end}")
                    sys.stderr.flush()
            else:
                self.bar.n = done
                self.bar.refresh()

    def close(self):
        if self.bar:
            self.bar.close()
        self.bar = None
        self.last = -1.0


def progress_fn(progress):
    """The callback the binding calls with ``(done, total, stage, unit)`` (unit ``"bytes"``
    or ``"chunk"``), and a closer."""
    if progress is None or progress is False:
        return None, lambda: None
    if progress is True:
        bar = _Bar()
        return bar, bar.close
    if not callable(progress):
        raise TypeError(f"progress must be True, False, None or a callable (done, total), got {progress!r}")
    return (lambda done, total, stage, unit="chunk": progress(done, total)), (lambda: None)


def opts(progress=None, threads=None, memory=None, **more):
    """The keyword dict the binding reads, and the closer of its progress bar."""
    if threads is not None and (not isinstance(threads, (int, np.integer)) or threads < 1):
        raise InvalidOptionError(f"invalid threads: {threads!r}: give a positive int")
    cb, close = progress_fn(progress)
    d = {"threads": None if threads is None else int(threads), "memory": parse_bytes(memory),
         "progress": cb}
    for k, v in more.items():
        if v is not None:
            d[k] = v
    if d.get("chunks") is not None:
        d["chunks"] = [int(c) for c in d["chunks"]]
    return d, close


def is_url(p) -> bool:
    """Whether a path is an object-storage URL (``s3://bucket/prefix``)."""
    return isinstance(p, str) and "://" in p


def abspath(p: str) -> str:
    """A path made absolute (so that a pickled Array or Job opens it from anywhere); URLs are
    left as they are."""
    return p if is_url(p) else os.path.abspath(p)


def fspath(p) -> str:
    """A path argument as a string (str or os.PathLike)."""
    if isinstance(p, (str, os.PathLike)):
        return os.fspath(p)
    raise TypeError(f"expected a path (str or os.PathLike), got {p!r} ({type(p).__name__})")


def source(x):
    """The binding's Source for an Array, a path, a dict view spec or a numpy array."""
    from ._array import Array, open as open_

    if isinstance(x, Array):
        return x._source()
    if isinstance(x, (str, os.PathLike, dict)):
        return open_(x)._source()
    if isinstance(x, np.ndarray) or hasattr(x, "__array__"):
        a = native(np.asarray(x))
        return _chunkwise.from_numpy(a, dtype_name(a.dtype))
    raise TypeError(
        f"expected a chunkwise Array, a path, a view spec or a numpy array, got {type(x).__name__}"
    )
