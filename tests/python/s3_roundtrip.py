"""zarr-python (through s3fs) on the S3 server of tests/s3.rs: reads the array chunkwise wrote
and compares it with the .npy it came from; writes one for chunkwise to read.

    s3_roundtrip.py read s3://bucket/prefix expected.npy
    s3_roundtrip.py write s3://bucket/prefix source.npy
    s3_roundtrip.py image s3://bucket/image.ome.zarr DIR LOCAL.ome.zarr
        (DIR/0.npy, DIR/1.npy, ...: the levels; every group's zarr.json equal to LOCAL's)

The endpoint and credentials come from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ... (botocore reads
them, as chunkwise does).
"""
import sys

import numpy as np
import zarr

what, url, npy = sys.argv[1:4]
if what == "read":
    a = zarr.open_array(url, mode="r")
    want = np.load(npy)
    assert a.shape == want.shape and a.dtype == want.dtype, (a.shape, a.dtype, want.shape, want.dtype)
    np.testing.assert_array_equal(a[...], want)
    print("zarr-python read", url, a.shape, a.dtype, a.chunks)
elif what == "image":
    # An OME-Zarr 0.5 image: its multiscales' datasets, each level equal to DIR/L.npy.
    import os
    g = zarr.open_group(url, mode="r")
    ms = g.attrs["ome"]["multiscales"][0]
    paths = [d["path"] for d in ms["datasets"]]
    want = sorted(f for f in os.listdir(npy) if f.endswith(".npy"))
    assert len(paths) == len(want), (paths, want)
    for p in paths:
        np.testing.assert_array_equal(g[p][...], np.load(os.path.join(npy, p + ".npy")))
    import fsspec
    like = sys.argv[4]
    for root, dirs, files in os.walk(like):
        rel = os.path.relpath(root, like)
        if "zarr.json" in files and not os.path.basename(root).isdigit():
            key = "zarr.json" if rel == "." else f"{rel}/zarr.json"
            with fsspec.open(f"{url}/{key}", "rb") as f:
                got = f.read()
            with open(os.path.join(root, "zarr.json"), "rb") as f:
                assert got == f.read(), key
    print("zarr-python read image", url, paths)
else:
    src = np.load(npy)
    a = zarr.create_array(url, shape=src.shape, chunks=(5, 7, 9), dtype=src.dtype,
                          zarr_format=3, overwrite=True)
    a[...] = src
    print("zarr-python wrote", url)
