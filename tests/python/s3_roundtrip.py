"""zarr-python (through s3fs) on the S3 server of tests/s3.rs: reads the array chunkwise wrote
and compares it with the .npy it came from; writes one for chunkwise to read.

    s3_roundtrip.py read s3://bucket/prefix expected.npy
    s3_roundtrip.py write s3://bucket/prefix source.npy

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
else:
    src = np.load(npy)
    a = zarr.create_array(url, shape=src.shape, chunks=(5, 7, 9), dtype=src.dtype,
                          zarr_format=3, overwrite=True)
    a[...] = src
    print("zarr-python wrote", url)
