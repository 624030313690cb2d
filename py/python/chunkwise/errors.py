"""The exceptions chunkwise raises (spec/PYTHON.md §6).

Every error of the library is a :class:`Error`; each kind also derives from the builtin
exception a Python user would catch for it, so ``except FileNotFoundError`` works as well as
``except chunkwise.NotFoundError``. Messages are the command line's.
"""


class Error(Exception):
    """Base class of every chunkwise error."""


class StoreError(Error):
    """An array on disk that cannot be used as it is (bad metadata, a corrupt chunk, changed since opened)."""


class InputError(Error, ValueError):
    """An input file or view that cannot be read as given (bad header, sizes, types, shapes)."""


class KernelError(Error):
    """A kernel refused a chunk (a value outside a table, ...), naming the chunk."""


class GrowError(Error, ValueError):
    """Arrays that cannot be joined (append, concat, stack), naming what differs."""


class IoError(Error, OSError):
    """An operating-system error on a named file."""


class NotFoundError(Error, FileNotFoundError):
    """A path that does not exist (or an array deleted since it was opened)."""


class InvalidOptionError(Error, ValueError):
    """A setting with a value the operation does not take."""


class BadRegionError(Error, IndexError):
    """A region that does not parse or lies outside the array."""


class OutputExistsError(Error, FileExistsError):
    """The output exists: pass ``overwrite=True`` to replace it."""


class LockedError(Error, BlockingIOError):
    """Another process is writing the array (its pid is in the message)."""


class TooLargeError(Error, ValueError):
    """A size beyond what chunkwise accepts (spec/FORMAT.md §10)."""


class MismatchError(Error, ValueError):
    """Arrays whose shapes or types do not match for the operation."""


class CancelledError(Error):
    """The operation was cancelled between chunks; calling it again resumes it."""


class InternalError(Error, RuntimeError):
    """A bug in chunkwise: please report it with the message."""


__all__ = [name for name, v in globals().items() if isinstance(v, type) and issubclass(v, Error)]
