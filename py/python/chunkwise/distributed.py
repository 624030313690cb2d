"""Running a chunkwise job on a dask.distributed cluster (spec/SCALE.md §4).

The cluster's workers run the job's parts (``--partition I/N``) as ordinary tasks: no
scheduler of chunkwise's own, no task per chunk. A part is idempotent and resumable, so a part
lost with its worker is simply run again (by dask, or by this module's retries) and does only
what it had not finished; the last part to finish publishes the output.

>>> from dask.distributed import Client, LocalCluster           # doctest: +SKIP
>>> import chunkwise as cw, chunkwise.distributed               # doctest: +SKIP
>>> client = Client(LocalCluster(n_workers=4))                  # doctest: +SKIP
>>> job = cw.gaussian("in.zarr", "smooth.zarr", 2, defer=True)  # doctest: +SKIP
>>> smooth = chunkwise.distributed.run(client, job)             # doctest: +SKIP
"""

from __future__ import annotations

from ._job import Job
from .errors import Error, LockedError

__all__ = ["run", "Job"]


def _run_part(job, i, n, threads):
    """One part, on a worker. Returns ``(i, published)``."""
    r = job.run(part=(i, n), threads=threads)
    return i, r is not None


def run(client, job: Job, parts=None, *, retries=3, threads=None):
    """Runs ``job`` (from ``cw.gaussian(..., defer=True)``, ``cw.convert``, ``cw.map_overlap``,
    ``cw.pyramid``, ``cw.stats(..., out=...)``, ``cw.where(..., out=...)``,
    ``cw.graph(..., out=...)``) on
    ``client``'s cluster in ``parts`` parts (default: one per worker thread) and returns the
    output: the ``Array``, or for a reduction what the function returns.

    The parts are submitted with ``client.map(..., pure=False)``; a part that fails (its worker
    killed, a restart of the cluster, an I/O error) is submitted again, up to ``retries``
    times, and resumes where it stopped. ``threads`` is each part's thread count (default: the
    worker's threads). Errors the job itself raises (a bad input, a kernel refusing its data)
    are raised here once they have failed every retry.
    """
    if not isinstance(job, Job):
        raise TypeError(
            f"run() takes a chunkwise.Job (cw.gaussian(..., defer=True)), not {type(job).__name__}"
        )
    workers = client.scheduler_info().get("workers", {})
    if parts is None:
        parts = max(1, sum(int(w.get("nthreads", 1)) for w in workers.values()))
    parts = int(parts)
    if parts < 1:
        raise ValueError(f"parts={parts}: give at least 1")
    if threads is None and workers:
        threads = max(1, min(int(w.get("nthreads", 1)) for w in workers.values()))
    todo = list(range(parts))
    failures: dict[int, BaseException] = {}
    attempt = 0
    while todo:
        futures = client.map(_run_part, [job] * len(todo), todo, [parts] * len(todo),
                             [threads] * len(todo), pure=False, retries=0)
        failed = []
        unpublished = False
        for i, f in zip(todo, futures):
            try:
                f.result()
            except BaseException as e:  # a lost worker, a restart, the job's own error
                if isinstance(e, (KeyboardInterrupt, SystemExit)):
                    raise
                # A part still running elsewhere (its lock held) is not a failure of its own.
                failures[i] = e
                failed.append(i)
        if not failed and not job.published():
            # Every task returned, yet a part's work is not there (lost with its disk, or
            # removed by hand): run it again, as a failed part.
            for p in job.status().get("parts", []):
                if p["state"] == "missing":
                    i = p["part"][0]
                    failures[i] = Error(f"part {i}/{parts} returned, but its chunks are missing")
                    failed.append(i)
            if not failed:
                # Every part's chunks are there but the output is not published (what follows
                # the parts' work, as a gaussian pyramid's levels below level 0, was cut
                # short): the parts again, which find their own work done and finish it.
                for i in range(parts):
                    failures[i] = Error(f"every part returned, but {job.out} is not published")
                failed = list(range(parts))
                unpublished = True
        todo = failed
        if todo:
            attempt += 1
            if attempt > retries:
                i = todo[0]
                e = failures[i]
                raise Error(
                    f"chunkwise.distributed.run: part {i}/{parts} of {job!r} failed "
                    f"{attempt} times; last: {type(e).__name__}: {e}; the job keeps what is "
                    f"done, and run() again resumes it"
                ) from e
            if all(isinstance(failures[i], LockedError) for i in todo) or unpublished:
                # A killed task's lock is held until its process is gone: give it a moment.
                import time
                time.sleep(1.0)
    if not job.published():
        raise Error(f"chunkwise.distributed.run: every part of {job!r} finished, but "
                    f"{job.out} is not published: {job.status()}")
    return job.load()
