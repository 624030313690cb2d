"""Deferred jobs: a chunkwise call captured with its arguments, to run in parts elsewhere
(a dask cluster, a pool of processes; spec/SCALE.md §4)."""

from __future__ import annotations

import functools
import json
import os

from . import _chunkwise
from ._util import abspath
from .errors import InvalidOptionError


class Job:
    """A chunkwise computation not yet run: ``cw.gaussian(a, "out.zarr", 2, defer=True)``.

    ``job.run(part=(i, n))`` runs part ``i`` of ``n`` here (the parts of one job may run in
    any order, at the same time, in other processes or on other machines sharing the
    filesystem; the last to finish publishes ``job.out``) and returns the output ``Array``
    when this call published it or it was already published, else None. ``job.run()`` runs it
    whole. A Job pickles (its arrays by their paths), so that dask can ship it to workers.

    >>> job = cw.gaussian(a, "smooth.zarr", 2, defer=True)       # doctest: +SKIP
    >>> for i in range(4): job.run(part=(i, 4))                   # doctest: +SKIP
    """

    def __init__(self, func, args, kwargs, out, loader=None):
        if kwargs.get("progress") is not None:
            raise InvalidOptionError(
                "a deferred job runs elsewhere: its progress is chunkwise.status(out), not a "
                "callback; leave progress= out"
            )
        if kwargs.get("partition") is not None:
            raise InvalidOptionError(
                "a deferred job is split when it runs: give job.run(part=(i, n)) or "
                "chunkwise.distributed.run(client, job, parts=n), not partition="
            )
        self.func = func
        self.loader = loader
        self.args = tuple(args)
        self.kwargs = dict(kwargs)
        # Workers may run in another directory: the output by its absolute path.
        self.out = abspath(os.fspath(out))

    @property
    def name(self) -> str:
        return self.func.__name__

    def run(self, part=None, *, threads=None):
        """Runs part ``part`` (``(i, n)`` or ``"i/n"``; None: the whole job) in this process."""
        kw = dict(self.kwargs)
        if threads is not None:
            kw["threads"] = threads
        result = self.func(*self.args, partition=part, **kw)
        if result is None and self.published():
            return self.load()
        return result

    def load(self):
        """The published output: the ``Array`` of a store, or what the function returns for a
        file (``stats``: the dict; ``where``/``graph``: the path)."""
        if self.loader is not None:
            return self.loader(self.out)
        from ._array import open as open_
        return open_(self.out)

    def published(self) -> bool:
        """Whether the output is published (every part done)."""
        from .errors import NotFoundError
        try:
            return bool(self.status()["published"])
        except NotFoundError:
            return False

    def status(self) -> dict:
        """``chunkwise status OUT --json``: the parts done, running or missing."""
        return json.loads(_chunkwise.job_status(self.out))

    def __repr__(self):
        return f"<chunkwise.Job {self.name} -> {self.out}>"


def deferrable(out_arg, loader=None):
    """Gives a chunkwise function ``defer=True``: the call returns a :class:`Job`. ``out_arg``
    is the position of the function's output argument (or its keyword name); ``loader(out)``
    reads a published file output (default: the store opened)."""

    def wrap(func):
        @functools.wraps(func)
        def call(*args, defer=False, **kwargs):
            if not defer:
                return func(*args, **kwargs)
            if isinstance(out_arg, int) and len(args) > out_arg:
                out = args[out_arg]
            elif isinstance(out_arg, str) and out_arg in kwargs:
                out = kwargs[out_arg]
            else:
                name = {1: "out", "out": "out"}.get(out_arg, out_arg)
                raise TypeError(f"{func.__name__}(..., defer=True) needs its output ({name})")
            args = list(args)
            if isinstance(out_arg, int) and len(args) > out_arg:
                args[out_arg] = abspath(os.fspath(out))
            elif isinstance(out_arg, str):
                kwargs[out_arg] = abspath(os.fspath(out))
            return Job(call, args, kwargs, out, loader)

        return call

    return wrap
