"""The Python package on S3-compatible object storage (spec/SCALE.md §6): a real S3 protocol
server on loopback (moto's moto_server, started here), arrays written and read by chunkwise,
read by zarr-python through s3fs, computed on like local ones (numpy as the oracle)."""
import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import scipy.ndimage as ndi
import zarr

import chunkwise as cw
from pyramid_oracle import block_reduce


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    server = os.path.join(os.path.dirname(sys.executable), "moto_server")
    if not os.path.exists(server):
        raise RuntimeError(f"{server} is missing: pip install -r tests/python/requirements.txt "
                           f"(moto[server])")
    port = _free_port()
    proc = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(url + "/", timeout=1)
            break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        raise RuntimeError("moto_server did not start")
    urllib.request.urlopen(urllib.request.Request(url + "/cw-py", method="PUT"))
    env = {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true",
           "CHUNKWISE_S3_RETRIES": "2"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield "s3://cw-py"
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    proc.kill()
    proc.wait()


def test_arrays_on_s3_read_write_and_compute(s3, tmp, rng):
    x = rng.integers(0, 5000, (21, 17, 13)).astype(np.uint16)
    a = cw.from_array(x, tmp / "a.zarr", chunks=(5, 8, 13))
    url = f"{s3}/{tmp.name}/v.zarr"
    b = cw.convert(a, url, chunks=(4, 6, 7))
    assert b.path == url and b.chunks == (4, 6, 7)
    np.testing.assert_array_equal(b[...], x)
    np.testing.assert_array_equal(b[3:9, ::2, -3], x[3:9, ::2, -3])
    # zarr-python (s3fs) reads what chunkwise wrote.
    np.testing.assert_array_equal(zarr.open_array(url, mode="r")[...], x)
    s = cw.stats(b)
    assert (s["count"], s["sum"], s["max"]) == (x.size, int(x.sum()), int(x.max()))
    g = cw.gaussian(b, tmp / "g.zarr", 1.5)
    np.testing.assert_allclose(g[...], ndi.gaussian_filter(x.astype(np.float32), 1.5), rtol=1e-5,
                               atol=1e-3)
    m = cw.map_overlap(lambda blk: ndi.maximum_filter(blk, size=3), b, out=tmp / "m.zarr",
                       depth=1, boundary="nearest")
    np.testing.assert_array_equal(m[...], ndi.maximum_filter(x, size=3, mode="nearest"))
    # Kernel outputs on S3 (SCALE §6): one process, and a deferred job's parts run here.
    gs = cw.gaussian(b, f"{s3}/{tmp.name}/g.zarr", 1.5)
    np.testing.assert_array_equal(gs[...], g[...])
    job = cw.gaussian(b, f"{s3}/{tmp.name}/gp.zarr", 1.5, defer=True)
    assert job.run(part=(1, 2)) is None and not job.published()
    gp = job.run(part=(0, 2))
    np.testing.assert_array_equal(gp[...], g[...])
    np.testing.assert_array_equal(zarr.open_array(f"{s3}/{tmp.name}/gp.zarr", mode="r")[...],
                                  g[...])
    ms = cw.map_overlap(lambda blk: ndi.maximum_filter(blk, size=3), b,
                        out=f"{s3}/{tmp.name}/m.zarr", depth=1, boundary="nearest")
    np.testing.assert_array_equal(ms[...], m[...])
    np.testing.assert_array_equal(cw.where(b, above=4000), np.argwhere(x > 4000))
    # Growing on S3 (APPEND §5.3): append in place, concat with server-side copies.
    y = rng.integers(0, 5000, (9, 17, 13)).astype(np.uint16)
    b.append(y)
    np.testing.assert_array_equal(b[...], np.concatenate([x, y]))
    np.testing.assert_array_equal(zarr.open_array(url, mode="r")[...], np.concatenate([x, y]))
    c = cw.concat([b, b], f"{s3}/{tmp.name}/bb.zarr")
    np.testing.assert_array_equal(c[...], np.concatenate([x, y, x, y]))
    # An array zarr-python wrote to S3, opened by chunkwise.
    zurl = f"{s3}/{tmp.name}/from-zarr.zarr"
    z = zarr.create_array(zurl, shape=x.shape, chunks=(7, 7, 7), dtype=x.dtype, zarr_format=3)
    z[...] = x
    np.testing.assert_array_equal(cw.open(zurl)[...], x)


def test_s3_errors_are_clear(s3, tmp):
    with pytest.raises(cw.StoreError, match="bucket does not exist"):
        cw.open("s3://cw-no-such-bucket/v.zarr")
    with pytest.raises(cw.StoreError, match="not a zarr array"):
        cw.open(f"{s3}/nothing-here.zarr")
    a = cw.from_array(np.ones((4, 4), np.uint8), tmp / "a.zarr")
    with pytest.raises(cw.StoreError, match="not supported yet"):
        cw.stack([a, a], f"{s3}/c.zarr")
    cw.convert(a, f"{s3}/{tmp.name}/o.zarr")
    with pytest.raises(cw.OutputExistsError):
        cw.convert(a, f"{s3}/{tmp.name}/o.zarr")


def test_a_pyramid_on_s3_in_parts_and_deferred(s3, tmp, rng):
    """``cw.pyramid`` to an S3 prefix (spec/PYRAMID.md §3): in parts (the first returns None,
    the image not there yet), the levels numpy's block means; a deferred job run part by
    part loads the levels; zarr-python opens the image group."""
    x = rng.integers(0, 4000, (40, 20, 20)).astype(np.uint16)
    kw = dict(factors=(2, 2, 2), levels=3, chunks=(8, 8, 8))
    url = f"{s3}/pyr.ome.zarr"
    assert cw.pyramid(x, url, partition="0/2", **kw) is None
    with pytest.raises(Exception):
        zarr.open_group(url, mode="r").attrs["ome"]
    levels = cw.pyramid(x, url, partition="1/2", **kw)
    want = x
    for i, lv in enumerate(levels):
        if i:
            want = block_reduce(want, (2, 2, 2), "mean")
        np.testing.assert_array_equal(lv[...], want)
    np.testing.assert_array_equal(cw.open(url)[...], x)  # the image: its level 0
    g = zarr.open_group(url, mode="r")
    assert [d["path"] for d in g.attrs["ome"]["multiscales"][0]["datasets"]] == ["0", "1", "2"]
    np.testing.assert_array_equal(g["2"][...], levels[2][...])
    job = cw.pyramid(x, f"{s3}/deferred.ome.zarr", defer=True, **kw)
    assert job.run(part=(1, 2)) is None and not job.published()
    done = job.run(part=(0, 2))
    assert [lv.shape for lv in done] == [lv.shape for lv in levels]
    for u, v in zip(done, levels):
        np.testing.assert_array_equal(u[...], v[...])
    # A part run again: nothing to do, the levels loaded from the prefix.
    again = job.run(part=(1, 2))
    assert [lv.shape for lv in again] == [lv.shape for lv in job.load()] == [lv.shape for lv in levels]
