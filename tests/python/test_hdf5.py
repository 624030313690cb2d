"""HDF5 datasets as inputs in the Python package (spec/CLI.md "convert": ``file.h5:/dataset``;
the package built with the ``hdf5`` feature, as ``bash .ci/run`` builds it). The files are
fixtures/hdf5/, written by h5py (fixtures/make_hdf5_fixtures.py); the oracle is numpy's own copy
of each dataset beside them (NAME.npy), never read back through HDF5."""
import os

import numpy as np
import pytest
import zarr

import chunkwise as cw

H5 = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "hdf5")
VOLUME = os.path.join(H5, "volume.h5")


def oracle(name):
    return np.load(os.path.join(H5, name + ".npy"))


CASES = [("/scan/raw", "scan__raw"), ("/scan/contig", "scan__contig"), ("/lzf", "lzf"),
         ("/big_endian", "big_endian"), ("/checked", "checked"), ("/flags", "flags"),
         ("/int64", "int64"), ("/uint8", "uint8")]


@pytest.mark.parametrize("dataset,name", CASES)
def test_open_and_convert_hdf5_datasets(tmp, dataset, name):
    """cw.open reads an HDF5 dataset lazily (any slice), cw.convert streams it into a store."""
    want = oracle(name)
    a = cw.open(f"{VOLUME}:{dataset}")
    assert a.shape == want.shape and a.dtype == want.dtype
    np.testing.assert_array_equal(a[...], want)
    key = tuple(slice(1, None, 2) for _ in want.shape)
    np.testing.assert_array_equal(a[key], want[key])
    out = str(tmp / "o.zarr")
    cw.convert(f"{VOLUME}:{dataset}", out, chunks=(2,) * want.ndim)
    np.testing.assert_array_equal(zarr.open_array(out, mode="r")[...], want)


def test_eval_over_hdf5_inputs(tmp):
    """cw.eval takes HDF5 datasets like any input: uint16 + uint16 wraps as numpy's."""
    raw = f"{VOLUME}:/scan/raw"
    out = cw.eval("a + b", out=str(tmp / "s.zarr"), a=raw, b=raw)
    x = oracle("scan__raw")
    np.testing.assert_array_equal(out[...], x + x)


def test_a_file_of_one_dataset_and_bad_references(tmp):
    """A file of one dataset opens by its name alone; a missing dataset lists the ones there;
    a file that is not HDF5 says so."""
    np.testing.assert_array_equal(cw.open(os.path.join(H5, "single.h5"))[...], oracle("single"))
    with pytest.raises(cw.InputError, match=r"no dataset \"/nope\".*/scan/raw"):
        cw.open(f"{VOLUME}:/nope")
    with pytest.raises(cw.InputError, match="name one as"):
        cw.open(VOLUME)
    with pytest.raises(cw.InputError, match="not an HDF5 file"):
        cw.open(os.path.join(H5, "not_hdf5.h5") + ":/data")
