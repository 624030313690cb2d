"""chunkwise: chunked, compressed Zarr v3 arrays for volumes too big for memory, computed
block by block in bounded memory (spec/PYTHON.md).

>>> import chunkwise as cw
>>> a = cw.open("volume.zarr")              # a store, .npy/raw/TIFF files or a view
>>> plane = a[100]                          # numpy, read in parallel
>>> import scipy.ndimage as ndi
>>> s = cw.map_overlap(ndi.gaussian_filter, a, out="s.zarr", depth=8, sigma=2)
"""

from . import errors, view
from ._array import Array, convert, create, from_array, open, pyramid
from ._chunkwise import __version__
from ._compute import (
    correlate1d,
    eval,
    gaussian,
    lut,
    map_blocks,
    map_overlap,
    neighbourhood_lut,
    threshold,
)
from ._grow import concat, stack
from ._job import Job
from ._reduce import graph, histogram, reduce, stats, where
from .errors import (
    BadRegionError,
    CancelledError,
    Error,
    GrowError,
    InputError,
    InternalError,
    InvalidOptionError,
    IoError,
    KernelError,
    LockedError,
    MismatchError,
    NotFoundError,
    OutputExistsError,
    StoreError,
    TooLargeError,
)

__all__ = [
    "Array", "Job", "open", "create", "from_array", "convert", "pyramid",
    "gaussian", "correlate1d", "lut", "threshold", "eval", "neighbourhood_lut", "map_overlap",
    "map_blocks", "stats", "histogram", "reduce", "where", "graph", "concat", "stack", "view", "errors",
    "Error", "StoreError", "InputError", "KernelError", "GrowError", "IoError", "NotFoundError",
    "InvalidOptionError", "BadRegionError", "OutputExistsError", "LockedError", "TooLargeError",
    "MismatchError", "CancelledError", "InternalError", "__version__",
]
