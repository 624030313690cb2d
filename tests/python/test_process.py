"""Processes: pickling, dask (threaded and distributed), fork safety, exceptions from func,
Ctrl-C and resuming, a job killed from outside and resumed, progress (spec/PYTHON.md §1, §2, §5;
resuming: spec/COMPUTE.md §6)."""
import glob
import importlib.util
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import warnings

import dask
import dask.array as da
import numpy as np
import pytest
import scipy.ndimage as ndi

import chunkwise as cw
from conftest import chunk_named, n_chunks, note_text, rand, store

CHILD_TIMEOUT = 90


# --- pickling ------------------------------------------------------------------------------

def test_pickle_round_trip(tmp, rng):
    """PYTHON §1: pickling keeps the source, shape and dtype; the copy reads the same data."""
    x = rand(rng, (9, 8, 7), "int16")
    a, p = store(tmp, x, (4, 3, 5))
    b = pickle.loads(pickle.dumps(a))
    assert b.shape == a.shape and b.dtype == a.dtype and tuple(b.chunks) == (4, 3, 5)
    assert os.path.abspath(os.fspath(b.path)) == os.path.abspath(p)
    assert np.array_equal(b[...], x) and np.array_equal(b[2:5, ::-1, 3], x[2:5, ::-1, 3])
    np.save(tmp / "x.npy", x)
    c = pickle.loads(pickle.dumps(cw.open(str(tmp / "x.npy"))))
    assert np.array_equal(c[...], x)


def test_unpickle_refuses_changed_store(tmp, rng):
    """PYTHON §1: unpickling refuses (chunkwise.StoreError) an array that changed shape or type
    after pickling; an unchanged one still unpickles."""
    x = rand(rng, (6, 5, 4), "uint16")
    a, p = store(tmp, x, (2, 2, 2))
    blob = pickle.dumps(a)
    pickle.loads(blob)
    a.append(rand(rng, (3, 5, 4), "uint16"))
    with pytest.raises(cw.StoreError):
        pickle.loads(blob)
    blob = pickle.dumps(cw.open(p))
    assert pickle.loads(blob).shape == (9, 5, 4)
    cw.from_array(np.zeros((9, 5, 4), np.float32), p, overwrite=True)
    with pytest.raises(cw.StoreError):
        pickle.loads(blob)


# --- dask ----------------------------------------------------------------------------------

def test_dask_threaded(tmp, rng):
    """PYTHON §1: dask.array.from_array(a, chunks=a.chunks) works on dask's threaded scheduler:
    sum, mean, a slice with steps, a map_overlap."""
    x = rand(rng, (13, 11, 9), "uint16")
    a, _ = store(tmp, x, (4, 3, 5))
    d = da.from_array(a, chunks=a.chunks)
    with dask.config.set(scheduler="threads", num_workers=2):
        assert int(d.sum().compute()) == int(x.sum(dtype=np.uint64))
        assert float(d.mean().compute()) == pytest.approx(float(x.mean()), rel=1e-12)
        assert np.array_equal(d[1:12:2, ::-1, 4].compute(), x[1:12:2, ::-1, 4])
        y = d.astype(np.float64).map_overlap(lambda b: ndi.uniform_filter(b, 3, mode="reflect"),
                                             depth=1, boundary="reflect").compute()
    np.testing.assert_allclose(y, ndi.uniform_filter(x.astype(np.float64), 3, mode="reflect"),
                               rtol=1e-12)


def test_dask_distributed_processes(tmp, rng):
    """PYTHON §1: on a distributed.LocalCluster with worker processes the Array is pickled to
    the workers, which open it again and read their chunks."""
    from distributed import Client, LocalCluster

    x = rand(rng, (12, 10, 11), "int32")
    a, _ = store(tmp, x, (5, 4, 3))
    d = da.from_array(a, chunks=a.chunks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                          dashboard_address=":0", silence_logs=40) as cluster, Client(cluster) as client:
            pids = set(client.run(os.getpid).values())
            assert len(pids) == 2 and os.getpid() not in pids
            got = client.compute(d.sum()).result(timeout=120)
            assert int(got) == int(x.sum(dtype=np.int64))
            part = client.compute(d[3:11, 2:9:3, ::-2]).result(timeout=120)
            assert np.array_equal(part, x[3:11, 2:9:3, ::-2])
            # the computation ran in the workers
            where = client.compute(d.map_blocks(lambda b: np.full(b.shape, os.getpid(), np.int64),
                                                dtype=np.int64)).result(timeout=120)
            assert set(np.unique(where)) <= pids


# --- fork ----------------------------------------------------------------------------------

def _child_gaussian(args):
    inp, out, sigma = args
    r = cw.gaussian(cw.open(inp), out, sigma, threads=2)
    return np.asarray(r)


def _child_read(args):
    inp, key = args
    return cw.open(inp)[key]


def _run_pool(jobs):
    ctx = multiprocessing.get_context("fork")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads: that is the test
        pool = ctx.Pool(2)
    try:
        results = [pool.apply_async(f, (arg,)) for f, arg in jobs]
        out = []
        for r in results:
            try:
                out.append(r.get(timeout=CHILD_TIMEOUT))
            except multiprocessing.TimeoutError:
                pytest.fail("a forked child did not finish in %d s (deadlock after fork?)" % CHILD_TIMEOUT)
        pool.close()
        pool.join()
        return out
    finally:
        pool.terminate()


def test_fork_after_use(tmp, rng):
    """PYTHON §5: after the parent used reads and a compute (its pools exist), children of
    multiprocessing's fork start method compute cw.gaussian and a[...] and finish."""
    x = rand(rng, (10, 9, 8), "float32")
    a, p = store(tmp, x, (3, 4, 3))
    assert np.array_equal(a[...], x)
    cw.gaussian(a, str(tmp / "parent.zarr"), 1.0, threads=2)
    want = ndi.gaussian_filter(x.astype(np.float64), 1.0)
    jobs = [(_child_gaussian, (p, str(tmp / ("c%d.zarr" % i)), 1.0)) for i in range(3)]
    jobs += [(_child_read, (p, (slice(2, 9), slice(None, None, -2)))) for _ in range(3)]
    res = _run_pool(jobs)
    for g in res[:3]:
        assert np.abs(g - want).max() <= 1e-4 * np.abs(x).max()
    for r in res[3:]:
        assert np.array_equal(r, x[2:9, ::-2])


def _slow_identity(b):
    time.sleep(0.01)
    return b


def test_fork_while_parent_job_runs(tmp, rng):
    """PYTHON §5: forking while a parent thread is inside a chunkwise job (its pool busy, its
    locks held) still gives children that compute and finish."""
    x = rand(rng, (12, 12, 12), "float32")
    a, p = store(tmp, x, (2, 2, 2))
    done = []

    def parent_job():
        done.append(cw.map_blocks(_slow_identity, a, out=str(tmp / "bg.zarr"), threads=2))

    t = threading.Thread(target=parent_job)
    t.start()
    time.sleep(0.3)
    try:
        assert t.is_alive(), "the background job finished before the fork: make it longer"
        res = _run_pool([(_child_gaussian, (p, str(tmp / "c.zarr"), 1.0)),
                         (_child_read, (p, (Ellipsis, 3)))])
    finally:
        t.join(CHILD_TIMEOUT)
    assert not t.is_alive()
    assert np.array_equal(done[0][...], x)
    assert np.abs(res[0] - ndi.gaussian_filter(x.astype(np.float64), 1.0)).max() <= 1e-2
    assert np.array_equal(res[1], x[..., 3])


def test_os_fork_child_reads(tmp, rng):
    """PYTHON §5: a bare os.fork child (no multiprocessing) reads and computes, then exits 0."""
    x = rand(rng, (8, 7, 6), "uint16")
    a, p = store(tmp, x, (3, 3, 3))
    cw.stats(a)
    out = str(tmp / "child.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            ok = np.array_equal(cw.open(p)[...], x)
            cw.threshold(cw.open(p), out, 500)
            code = 0 if ok else 3
        finally:
            os._exit(code)
    deadline = time.time() + CHILD_TIMEOUT
    while True:
        wpid, status = os.waitpid(pid, os.WNOHANG)
        if wpid:
            break
        if time.time() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung")
        time.sleep(0.05)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert np.array_equal(cw.open(out)[...], (x > 500).astype(np.uint8))


# --- exceptions from func ------------------------------------------------------------------

class Boom(Exception):
    pass


def test_exception_in_func_is_reraised_with_note(tmp):
    """PYTHON §2: an exception in func ends the job and is re-raised as itself (the same object,
    the same type) with a note naming the chunk; nothing at the output path (COMPUTE §6)."""
    shape, chunks = (9, 10, 8), (3, 4, 3)
    x = np.arange(np.prod(shape), dtype=np.int64).reshape(shape)
    a, _ = store(tmp, x, chunks)
    raised = []

    def f(b):
        first = np.unravel_index(int(b[1, 1, 1]), shape)  # depth 1: [1, 1, 1] is the chunk's first voxel
        if tuple(int(v) // c for v, c in zip(first, chunks)) == (1, 2, 0):
            e = Boom("bad block")
            raised.append(e)
            raise e
        return b

    out = str(tmp / "o.zarr")
    with pytest.raises(Boom) as info:
        cw.map_overlap(f, a, out=out, depth=1, boundary="nearest", threads=2)
    assert raised and info.value is raised[0]
    assert chunk_named(note_text(info.value), (1, 2, 0)), note_text(info.value)
    assert not os.path.exists(out)


def test_exception_builtin_type_kept(tmp, rng):
    """PYTHON §2: a ZeroDivisionError / KeyError from func comes back as that type."""
    a, _ = store(tmp, rand(rng, (5, 5), "float32"), (2, 2))
    for exc in (ZeroDivisionError, KeyError, MemoryError):
        def f(b, exc=exc):
            raise exc("from func")
        with pytest.raises(exc) as info:
            cw.map_blocks(f, a, out=str(tmp / ("o-%s.zarr" % exc.__name__)))
        assert note_text(info.value), "no note naming the chunk"


# --- Ctrl-C --------------------------------------------------------------------------------

SIGINT_STATE = {"calls": 0, "at": None}


def _interrupting_gauss(b):
    SIGINT_STATE["calls"] += 1
    if SIGINT_STATE["calls"] == SIGINT_STATE["at"]:
        os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.002)
    return ndi.gaussian_filter(b, 1.0, mode="reflect")


@pytest.fixture
def sigint():
    """Python's own Ctrl-C handler for the test: a shell starting pytest in the background
    (`cmd &` in a script) leaves SIGINT ignored, and an ignored signal never reaches the job."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def test_keyboard_interrupt_and_resume(tmp, rng, sigint):
    """PYTHON §2: SIGINT during a job (sent by func on its 5th call) raises KeyboardInterrupt
    without finishing the job; the same call again computes only the missing chunks and equals
    scipy on the whole array."""
    shape, chunks = (12, 12, 12), (3, 3, 3)
    x = rand(rng, shape, "float64")
    a, _ = store(tmp, x, chunks)
    total = n_chunks(shape, chunks)
    out = str(tmp / "o.zarr")
    SIGINT_STATE.update(calls=0, at=5)
    with pytest.raises(KeyboardInterrupt):
        cw.map_overlap(_interrupting_gauss, a, out=out, depth=4, threads=2)
    first = SIGINT_STATE["calls"]
    assert first < total, "the job ran to the end: Ctrl-C did not stop it"
    assert not os.path.exists(out)
    SIGINT_STATE.update(calls=0, at=None)
    r = cw.map_overlap(_interrupting_gauss, a, out=out, depth=4, threads=2)
    assert SIGINT_STATE["calls"] < total, "the rerun recomputed every chunk: nothing was resumed"
    np.testing.assert_allclose(r[...], ndi.gaussian_filter(x, 1.0), rtol=1e-12, atol=1e-12)


def test_keyboard_interrupt_builtin_kernel(tmp, rng, sigint):
    """PYTHON §2: Ctrl-C stops a built-in kernel too (the signal comes from the progress
    callable at its first report short of the total); the rerun finishes and equals scipy."""
    shape, chunks = (24, 24, 24), (2, 3, 3)
    x = rand(rng, shape, "float32")
    a, _ = store(tmp, x, chunks)
    out = str(tmp / "g.zarr")
    sent = []

    def progress(done, total):
        if not sent and 0 < done < total:
            sent.append(done)
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        cw.gaussian(a, out, 1.0, progress=progress, threads=1)
    assert sent, "no progress report between 0 and the total (768 chunks)"
    assert not os.path.exists(out)
    r = cw.gaussian(a, out, 1.0)
    assert np.abs(r[...] - ndi.gaussian_filter(x.astype(np.float64), 1.0)).max() <= 1e-2


# --- killed from outside, resumed --------------------------------------------------------

SLOWJOB = '''
import os, time
import numpy as np
import scipy.ndimage as ndi

CALLS = [0]


def smooth(b):
    CALLS[0] += 1
    if os.environ.get("CW_TEST_SLOW"):
        print("call", flush=True)
        time.sleep(0.02)
    return ndi.gaussian_filter(b, 1.0, mode="nearest")
'''

RUNNER = '''
import importlib.util, sys
import chunkwise as cw
spec = importlib.util.spec_from_file_location("cw_slowjob", sys.argv[1])
m = importlib.util.module_from_spec(spec)
spec.loader.exec_module(m)
cw.map_overlap(m.smooth, cw.open(sys.argv[2]), out=sys.argv[3], depth=4, boundary="nearest", threads=2)
print("finished", flush=True)
'''


def test_killed_job_resumes(tmp, rng):
    """PYTHON §2 / COMPUTE §6: a map_overlap in another Python process, SIGKILLed mid-way (after
    its first log of done chunks), is resumed by the same call in this process (the default name
    is the same in both): only missing chunks are computed and the result equals scipy."""
    shape, chunks = (18, 18, 18), (3, 3, 3)
    x = rand(rng, shape, "float32")
    _, p = store(tmp, x, chunks)
    total = n_chunks(shape, chunks)
    assert total == 216
    mod = tmp / "cw_slowjob.py"
    mod.write_text(SLOWJOB)
    out = str(tmp / "o.zarr")
    env = dict(os.environ, CW_TEST_SLOW="1")
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, str(mod), p, out], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    calls = 0
    deadline = time.time() + 60
    try:
        while time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            calls += line.strip() == "call"
            logs = glob.glob(os.path.join(str(tmp), ".o.zarr*chunkwise-job", "done*"))
            if calls >= 80 and any(os.path.getsize(f) > 0 for f in logs):
                break
        else:
            pytest.fail("the job did not log done chunks in 60 s")
        proc.kill()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read()
    assert proc.returncode == -signal.SIGKILL, "the job ended by itself (%s): %s" % (proc.returncode, err)
    assert 0 < calls < total
    assert not os.path.exists(out)
    spec = importlib.util.spec_from_file_location("cw_slowjob", str(mod))
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    r = cw.map_overlap(m.smooth, cw.open(p), out=out, depth=4, boundary="nearest", threads=2)
    assert m.CALLS[0] <= total - 64, "resumed %d of %d chunks" % (total - m.CALLS[0], total)
    want = ndi.gaussian_filter(x, 1.0, mode="nearest")
    np.testing.assert_allclose(r[...], want, rtol=1e-5, atol=1e-4)
    assert not glob.glob(os.path.join(str(tmp), ".o.zarr*chunkwise-job"))


# --- progress ------------------------------------------------------------------------------

def test_progress_callable(tmp, rng):
    """PYTHON §5: a progress callable gets (done, total) in output chunks, done reaching total."""
    shape, chunks = (10, 9, 8), (3, 3, 3)
    x = rand(rng, shape, "uint16")
    a, _ = store(tmp, x, chunks)
    total = n_chunks(shape, chunks)
    for run in (lambda cb: cw.gaussian(a, str(tmp / "g.zarr"), 1.0, progress=cb),
                lambda cb: cw.map_overlap(lambda b: b, a, out=str(tmp / "m.zarr"), depth=1, progress=cb),
                lambda cb: cw.threshold(a, str(tmp / "t.zarr"), 300, progress=cb)):
        seen = []
        run(lambda d, t: seen.append((d, t)))
        assert seen, "progress was never called"
        assert all(t == total for _, t in seen), seen
        assert all(0 <= d <= total for d, _ in seen)
        assert max(d for d, _ in seen) == total and seen[-1][0] == total


def test_progress_true_draws_on_stderr(tmp, rng, capfd):
    """PYTHON §5: progress=True shows a bar (tqdm) on stderr; the default shows nothing."""
    a, _ = store(tmp, rand(rng, (8, 8, 8), "uint8"), (2, 2, 2))
    capfd.readouterr()
    cw.threshold(a, str(tmp / "quiet.zarr"), 100)
    quiet = capfd.readouterr()
    assert quiet.err == "" and quiet.out == ""
    cw.threshold(a, str(tmp / "bar.zarr"), 100, progress=True)
    err = capfd.readouterr().err
    assert "chunk" in err, err
    # A convert counts bytes: the bar says so (B/s, scaled), not chunks.
    cw.convert(rand(rng, (64, 64, 64), "uint16"), str(tmp / "c.zarr"), progress=True)
    err = capfd.readouterr().err
    assert "B/s" in err and "chunk" not in err, err
