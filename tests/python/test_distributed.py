"""chunkwise.distributed.run on a real dask.distributed LocalCluster (spec/SCALE.md §4): the
parts of a deferred job as tasks on two worker processes, a worker killed mid-job, and the
published store equal to scipy's/numpy's result on the whole array."""
import os
import pickle
import signal
import threading
import time

import numpy as np
import pytest
import scipy.ndimage as ndi
from dask.distributed import Client, LocalCluster

import chunkwise as cw
import chunkwise.distributed
from pyramid_oracle import block_reduce


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as c:
        yield c


def test_a_kernel_job_runs_in_parts_on_the_cluster(client, tmp, rng):
    x = rng.random((37, 21, 18), dtype=np.float32)
    a = cw.from_array(x, tmp / "a.zarr", chunks=(4, 8, 16))
    job = cw.gaussian(a, tmp / "g.zarr", 1.5, defer=True)
    assert isinstance(job, cw.Job) and not job.published()
    out = chunkwise.distributed.run(client, job, parts=5)
    assert out.path == str(tmp / "g.zarr")
    np.testing.assert_allclose(out[...], ndi.gaussian_filter(x.astype(np.float64), 1.5),
                               rtol=1e-5, atol=1e-6)
    # The same bytes as one process computes.
    np.testing.assert_array_equal(out[...], cw.gaussian(a, tmp / "one.zarr", 1.5)[...])
    # Run again: already published, nothing to do.
    assert chunkwise.distributed.run(client, job, parts=5)[...].shape == x.shape


def test_convert_and_map_overlap_jobs(client, tmp, rng):
    x = rng.integers(0, 1000, (30, 17, 9)).astype(np.uint16)
    np.save(tmp / "x.npy", x)
    job = cw.convert(str(tmp / "x.npy"), tmp / "c.zarr", chunks=(4, 5, 9), defer=True)
    c = chunkwise.distributed.run(client, job)  # parts: one per worker thread
    np.testing.assert_array_equal(c[...], x)
    assert c.chunks == (4, 5, 9)
    job = cw.map_overlap(lambda b: ndi.maximum_filter(b, size=3), c, out=tmp / "m.zarr",
                         depth=1, boundary="nearest", name="max3", defer=True)
    m = chunkwise.distributed.run(client, job, parts=3)
    np.testing.assert_array_equal(m[...], ndi.maximum_filter(x, size=3, mode="nearest"))


class _SlowDouble:
    """Doubles each block slowly, leaving one byte per call in ``calls.PID`` under ``tmp``,
    so that a test sees which worker is computing."""

    def __init__(self, tmp):
        self.tmp = str(tmp)

    def __call__(self, b):
        with open(os.path.join(self.tmp, f"calls.{os.getpid()}"), "ab") as f:
            f.write(b".")
        time.sleep(0.03)
        return b * 2


def test_a_worker_killed_mid_job_and_the_job_completes(client, tmp, rng):
    x = rng.random((48, 16, 16), dtype=np.float32)
    a = cw.from_array(x, tmp / "a.zarr", chunks=(2, 16, 16))
    job = cw.map_blocks(_SlowDouble(tmp), a, out=tmp / "d.zarr", name="slow-double",
                        defer=True)
    pids = list(client.run(os.getpid).values())
    seen = {}

    def kill_a_worker_mid_part():
        # Killed once it has computed two chunks of a part (whichever worker gets there
        # first): the part is mid-way, its chunks partly written and not all logged.
        deadline = time.time() + 60
        while time.time() < deadline:
            for pid in pids:
                calls = tmp / f"calls.{pid}"
                if calls.exists() and calls.stat().st_size >= 2:
                    seen["status_at_kill"] = job.status()
                    os.kill(pid, signal.SIGKILL)
                    return
            time.sleep(0.005)

    killer = threading.Thread(target=kill_a_worker_mid_part)
    killer.start()
    out = chunkwise.distributed.run(client, job, parts=4)
    killer.join()
    s = seen["status_at_kill"]
    assert s["building"] and not s["published"], s
    np.testing.assert_array_equal(out[...], x * 2)
    client.wait_for_workers(2, timeout=60)


class _FailsOnce:
    """Doubles each block, counting calls in ``calls`` (one byte per call, from any worker),
    and raises once, on the block starting with ``poison`` (COMPUTE §6, SCALE §4)."""

    def __init__(self, tmp, poison):
        self.calls, self.raised, self.poison = str(tmp / "calls"), str(tmp / "raised"), poison

    def __call__(self, b):
        with open(self.calls, "ab") as f:
            f.write(b".")
        if b.flat[0] == self.poison:
            try:
                os.close(os.open(self.raised, os.O_CREAT | os.O_EXCL))
                raise RuntimeError("a transient failure")
            except FileExistsError:
                pass
        time.sleep(0.01)
        return b * 2


def test_a_part_whose_function_raises_is_retried_and_the_others_keep_their_work(client, tmp, rng):
    x = rng.random((48, 8, 8), dtype=np.float32)
    a = cw.from_array(x, tmp / "a.zarr", chunks=(2, 8, 8))
    f = _FailsOnce(tmp, x[40, 0, 0])  # in the last of 4 parts, which starts after others end
    job = cw.map_blocks(f, a, out=tmp / "f.zarr", name="fails-once", defer=True)
    out = chunkwise.distributed.run(client, job, parts=4)
    np.testing.assert_array_equal(out[...], x * 2)
    assert os.path.exists(f.raised)
    # Only the failed part's chunks were computed again: 24 chunks, 6 per part.
    assert 24 < os.path.getsize(f.calls) <= 24 + 6


def test_a_restarted_cluster_mid_job_and_the_job_completes(client, tmp, rng):
    x = rng.random((40, 16, 16), dtype=np.float32)
    a = cw.from_array(x, tmp / "a.zarr", chunks=(2, 16, 16))
    job = cw.map_blocks(_SlowDouble(tmp), a, out=tmp / "r.zarr", name="slow-double",
                        defer=True)

    seen = {}

    def restart_mid_job():
        deadline = time.time() + 60
        while time.time() < deadline:
            if sum(p.stat().st_size for p in tmp.glob("calls.*")) >= 2:
                seen["status_at_restart"] = job.status()
                client.restart()
                return
            time.sleep(0.005)

    t = threading.Thread(target=restart_mid_job)
    t.start()
    out = chunkwise.distributed.run(client, job, parts=4)
    t.join()
    s = seen["status_at_restart"]
    assert s["building"] and not s["published"], s
    np.testing.assert_array_equal(out[...], x * 2)


def test_jobs_pickle_and_run_part_by_part_here(tmp, rng):
    x = rng.random((20, 9, 9), dtype=np.float32)
    a = cw.from_array(x, tmp / "a.zarr", chunks=(3, 9, 9))
    job = pickle.loads(pickle.dumps(cw.threshold(a, tmp / "t.zarr", 0.5, defer=True)))
    assert [job.run(part=(i, 3)) is None for i in (2, 0)] == [True, True]
    st = job.status()
    assert [p["state"] for p in st["parts"]] == ["done", "missing", "done"]
    out = job.run(part=(1, 3))
    np.testing.assert_array_equal(out[...], (x > 0.5).astype(np.uint8))


def test_bad_jobs_are_refused(client, tmp, rng):
    a = cw.from_array(rng.random((8, 8), dtype=np.float32), tmp / "a.zarr", chunks=(4, 8))
    with pytest.raises(cw.InvalidOptionError, match="progress"):
        cw.gaussian(a, tmp / "g.zarr", 1, defer=True, progress=True)
    with pytest.raises(cw.InvalidOptionError, match="job.run"):
        cw.gaussian(a, tmp / "g.zarr", 1, defer=True, partition="0/2")
    with pytest.raises(TypeError, match="Job"):
        chunkwise.distributed.run(client, "g.zarr")
    with pytest.raises(ValueError, match="parts"):
        chunkwise.distributed.run(client, cw.gaussian(a, tmp / "g.zarr", 1, defer=True), parts=0)
    # A job whose every part fails (the input is gone) fails with the part named, and leaves
    # nothing at the output.
    job = cw.gaussian(str(tmp / "a.zarr"), tmp / "h.zarr", 1, defer=True)
    import shutil
    shutil.rmtree(tmp / "a.zarr")
    with pytest.raises(cw.Error, match=r"part \d/2 .* failed"):
        chunkwise.distributed.run(client, job, parts=2, retries=1)
    assert not (tmp / "h.zarr").exists()


def test_reductions_in_parts_here_and_on_the_cluster(client, tmp, rng):
    x = rng.integers(0, 3000, (30, 14, 11)).astype(np.uint16)
    x[5:12] = 0
    a = cw.from_array(x, tmp / "a.zarr", chunks=(4, 7, 11))
    one = cw.stats(a)
    assert (one["sum"], one["max"]) == (int(x.sum()), int(x.max()))
    # Parts here, in any order: the last writes the file and returns what one process gives.
    got = [cw.stats(a, out=tmp / "s.json", partition=(i, 3)) for i in (2, 0, 1)]
    assert got[:2] == [None, None] and got[2] == one
    # The same jobs on the cluster.
    s = chunkwise.distributed.run(client, cw.stats(a, out=tmp / "s2.json", defer=True), parts=4)
    assert s == one
    p = chunkwise.distributed.run(client, cw.where(a, above=2000, out=tmp / "w.npy", defer=True),
                                  parts=3)
    np.testing.assert_array_equal(np.load(p), np.argwhere(x > 2000))
    p = chunkwise.distributed.run(client, cw.graph(a, connectivity=6, out=tmp / "g.npy",
                                                   defer=True), parts=5)
    single = cw.graph(a, connectivity=6, out=tmp / "g1.npy")
    assert open(p, "rb").read() == open(single, "rb").read()
    # Histograms in parts: one bin per value for integers, or the given bins; as numpy.
    got = [cw.histogram(a, out=tmp / "h.json", partition=(i, 2)) for i in (1, 0)]
    assert got[0] is None
    counts, edges = got[1]
    want = np.histogram(x, bins=int(x.max()) - int(x.min()) + 1,
                        range=(int(x.min()), int(x.max()) + 1))
    np.testing.assert_array_equal(counts, want[0])
    np.testing.assert_array_equal(edges, want[1])
    job = cw.histogram(a, bins=7, range=(0, 3000), out=tmp / "h7.json", defer=True)
    counts, edges = chunkwise.distributed.run(client, job, parts=3)
    want = np.histogram(x, bins=7, range=(0, 3000))
    np.testing.assert_array_equal(counts, want[0])
    np.testing.assert_allclose(edges, want[1])
    f = cw.from_array(x.astype(np.float32), tmp / "f.zarr", chunks=(4, 7, 11))
    with pytest.raises(cw.InvalidOptionError, match="range"):
        cw.histogram(f, out=tmp / "hf.json", partition="0/2")
    with pytest.raises(cw.InvalidOptionError, match="out="):
        cw.where(a, partition="0/2")
    # out= without parts: written whole, never over a file without overwrite.
    assert cw.stats(a, out=tmp / "one.json") == one
    with pytest.raises(cw.OutputExistsError):
        cw.stats(a, out=tmp / "one.json")


def test_pyramids_run_in_parts_on_the_cluster(client, tmp, rng):
    """``cw.pyramid(..., defer=True)``: the levels of a mean pyramid with a label image, and of
    a gaussian pyramid, built by the cluster's workers equal what one process builds (and the
    mean levels numpy's block means, spec/PYRAMID.md §3)."""
    x = rng.integers(0, 4000, (48, 20, 20)).astype(np.uint16)
    lab = (x % 7).astype(np.uint32)
    a = cw.from_array(x, tmp / "a.zarr", chunks=(8, 8, 8))
    cells = cw.from_array(lab, tmp / "cells.zarr", chunks=(8, 8, 8))
    kw = dict(factors=(2, 2, 2), levels=3, chunks=(8, 8, 8))
    job = cw.pyramid(a, tmp / "p.ome.zarr", labels={"cells": cells}, defer=True, **kw)
    assert isinstance(job, cw.Job) and not job.published()
    levels = chunkwise.distributed.run(client, job, parts=3)
    assert len(levels) == 3
    want = x
    for i, lv in enumerate(levels):
        if i:  # each level the block means of the one above, rounded half to even
            want = block_reduce(want, (2, 2, 2), "mean")
        np.testing.assert_array_equal(lv[...], want)
    one = cw.pyramid(a, tmp / "one.ome.zarr", labels={"cells": cells}, **kw)
    for i in range(3):
        np.testing.assert_array_equal(
            cw.open(str(tmp / "p.ome.zarr" / "labels" / "cells" / str(i)))[...],
            cw.open(str(tmp / "one.ome.zarr" / "labels" / "cells" / str(i)))[...])
        np.testing.assert_array_equal(levels[i][...], one[i][...])
    job = cw.pyramid(a, tmp / "g.ome.zarr", method="gaussian", defer=True, **kw)
    g = chunkwise.distributed.run(client, job, parts=4)
    gone = cw.pyramid(a, tmp / "g1.ome.zarr", method="gaussian", **kw)
    assert [lv.shape for lv in g] == [lv.shape for lv in gone]
    for u, v in zip(g, gone):
        np.testing.assert_array_equal(u[...], v[...])


def test_a_gaussian_pyramid_whose_lower_levels_were_left_undone_completes(client, tmp, rng):
    """Every part of a gaussian pyramid returned with level 0 published but the levels below
    not made (their maker's lock held, as by a process being killed): ``run`` runs the parts
    again once the lock is free, and the pyramid is what one process builds."""
    import fcntl
    x = rng.integers(0, 4000, (48, 20, 20)).astype(np.uint16)
    a = cw.from_array(x, tmp / "a.zarr", chunks=(8, 8, 8))
    kw = dict(factors=(2, 2, 2), levels=3, chunks=(8, 8, 8), method="gaussian")
    job = cw.pyramid(a, tmp / "g.ome.zarr", defer=True, **kw)
    build = tmp / ".g.ome.zarr.chunkwise-pyramid"
    assert job.run(part=(0, 2)) is None
    with open(build / "lock.lower", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        assert job.run(part=(1, 2)) is None
        assert (build / "0" / "zarr.json").exists() and not (build / "1").exists()
        assert [p["state"] for p in job.status()["parts"]] == ["done", "done"]
        threading.Timer(0.5, fcntl.flock, (f, fcntl.LOCK_UN)).start()
        levels = chunkwise.distributed.run(client, job, parts=2, retries=5)
    one = cw.pyramid(a, tmp / "one.ome.zarr", **kw)
    assert len(levels) == 3
    for u, v in zip(levels, one):
        np.testing.assert_array_equal(u[...], v[...])
