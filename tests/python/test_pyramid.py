"""``cw.pyramid`` and OME-Zarr images as inputs in the Python package (spec/PYRAMID.md). The
oracle is numpy on the whole array: level l + 1 is the block reduction of level l (edge blocks
reducing the voxels present)."""
import json
import os

import numpy as np
import pytest

import chunkwise as cw
from pyramid_oracle import block_reduce


def block_mean(a, f):
    return block_reduce(a, f, "mean")


def test_pyramid_levels_equal_numpy_block_means(tmp, rng):
    a = rng.integers(0, 5000, (19, 45, 38)).astype(np.uint16)
    out = os.path.join(tmp, "a.ome.zarr")
    levels = cw.pyramid(a, out, factors=(1, 2, 2), levels=3, chunks=(8, 8, 8),
                        voxel_size=(2.0, 0.5, 0.5), units=["micrometer"] * 3, threads=2)
    assert len(levels) == 3
    want = a
    for i, lv in enumerate(levels):
        if i:
            want = block_mean(want, (1, 2, 2))
        np.testing.assert_array_equal(lv[...], want)
    meta = json.load(open(os.path.join(out, "zarr.json")))
    ms = meta["attributes"]["ome"]["multiscales"][0]
    assert [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]] == [
        [2.0, 0.5, 0.5], [2.0, 1.0, 1.0], [2.0, 2.0, 2.0]]
    # The image opens as its level 0; IMAGE/N as level N.
    np.testing.assert_array_equal(cw.open(out)[...], a)
    np.testing.assert_array_equal(cw.open(out + "/2")[...], want)


def test_pyramid_mode_of_labels_and_factors_per_level(tmp, rng):
    lab = rng.integers(0, 3, (16, 20)).astype(np.int32)
    out = os.path.join(tmp, "l.ome.zarr")
    levels = cw.pyramid(lab, out, method="mode", factors_per_level=[(2, 2), (1, 2)],
                        chunks=(4, 4))
    assert [lv.shape for lv in levels] == [(16, 20), (8, 10), (8, 5)]
    b = lab.reshape(8, 2, 10, 2).transpose(0, 2, 1, 3).reshape(8, 10, 4)
    want = np.empty((8, 10), np.int32)
    for i in range(8):
        for j in range(10):
            vals, counts = np.unique(b[i, j], return_counts=True)
            want[i, j] = vals[np.argmax(counts)]
    np.testing.assert_array_equal(levels[1][...], want)


def test_label_images_are_mode_pyramids_of_the_image_levels(tmp, rng):
    """``labels=`` writes ``labels/NAME`` (spec/PYRAMID.md §1.1): the image's factors level by
    level, each level the block mode (ties to the smallest value) of the one above."""
    a = rng.integers(0, 5000, (16, 20)).astype(np.uint16)
    lab = rng.integers(0, 3, (16, 20)).astype(np.int32)
    out = os.path.join(tmp, "i.ome.zarr")
    levels = cw.pyramid(a, out, factors_per_level=[(2, 2), (1, 2)], chunks=(4, 4),
                        labels={"cells": lab})
    got = cw.open(os.path.join(out, "labels", "cells", "1"))
    assert got.shape == levels[1].shape == (8, 10)
    b = lab.reshape(8, 2, 10, 2).transpose(0, 2, 1, 3).reshape(8, 10, 4)
    want = np.empty((8, 10), np.int32)
    for i in range(8):
        for j in range(10):
            vals, counts = np.unique(b[i, j], return_counts=True)
            want[i, j] = vals[np.argmax(counts)]
    np.testing.assert_array_equal(got[...], want)
    assert cw.open(os.path.join(out, "labels", "cells", "2")).shape == levels[2].shape
    meta = json.load(open(os.path.join(out, "labels", "zarr.json")))
    assert meta["attributes"]["ome"]["labels"] == ["cells"]
    with pytest.raises(cw.InvalidOptionError, match="label images are integers"):
        cw.pyramid(a, os.path.join(tmp, "f.ome.zarr"), labels={"f": lab.astype(np.float32)})
    assert not os.path.exists(os.path.join(tmp, "f.ome.zarr"))


def test_bad_pyramids_raise_invalid_option_and_write_nothing(tmp):
    a = np.zeros((8, 8, 8), np.uint8)
    out = os.path.join(tmp, "bad.ome.zarr")
    with pytest.raises(cw.InvalidOptionError, match="the factor on axis 2 is 0"):
        cw.pyramid(a, out, factors=(2, 2, 0))
    with pytest.raises(cw.InvalidOptionError, match="not one of OME-Zarr's UDUNITS"):
        cw.pyramid(a, out, units=["microns"] * 3)
    with pytest.raises(cw.InvalidOptionError, match="give mean, mode, gaussian, nearest, min or max"):
        cw.pyramid(a, out, method="median")
    assert not os.path.exists(out)


def test_appending_to_an_image_grows_every_level(tmp, rng):
    """``Array.append`` on an opened OME-Zarr image grows the pyramid (spec/PYRAMID.md §6):
    every level equals the block means of the grown volume; one level alone is refused."""
    a = rng.integers(0, 5000, (19, 45, 38)).astype(np.uint16)
    b = rng.integers(0, 5000, (6, 45, 38)).astype(np.uint16)
    out = os.path.join(tmp, "g.ome.zarr")
    cw.pyramid(a, out, factors=(2, 2, 2), levels=3, chunks=(8, 8, 8))
    img = cw.open(out)
    img.append(b)
    assert img.shape == (25, 45, 38)
    want = np.concatenate([a, b])
    for i in range(3):
        if i:
            want = block_mean(want, (2, 2, 2))
        np.testing.assert_array_equal(cw.open(f"{out}/{i}")[...], want)
    with pytest.raises(cw.errors.InvalidOptionError, match="is level 1 of the OME-Zarr image"):
        cw.open(os.path.join(out, "1")).append(b[:, ::2, ::2])


def test_gaussian_pyramid_equals_scipy_sampled_at_block_centres(tmp, rng):
    """``method="gaussian"`` (spec/PYRAMID.md §2): for odd factors, level l + 1 is
    scipy.ndimage.gaussian_filter(level l, f / 3, mode="reflect") sampled at the block
    centres (a partial last block's centre past the end taken from the reflected level, as
    numpy's symmetric padding makes it); the translation is (f - 1) / 2 voxels of the level above."""
    from scipy import ndimage
    a = rng.random((20, 31, 29)).astype(np.float32)
    out = os.path.join(tmp, "g.ome.zarr")
    levels = cw.pyramid(a, out, method="gaussian", factors=(1, 3, 3), levels=3,
                        chunks=(8, 9, 9), threads=2)
    want = a
    for i, lv in enumerate(levels):
        if i:
            # Padded as scipy's reflect (numpy's symmetric) so that the last partial block's
            # centre, past the end, has its value; radius int(4 * 1 + 0.5) = 4.
            p = ((0, 0), (6, 6), (6, 6))
            g = ndimage.gaussian_filter(np.pad(want.astype(np.float64), p, mode="symmetric"),
                                        sigma=(0, 1, 1), mode="reflect", truncate=4.0)
            n = [-(-k // 3) for k in want.shape[1:]]
            want = g[:, 7::3, 7::3][:, :n[0], :n[1]].astype(np.float32)
        np.testing.assert_allclose(lv[...], want, rtol=1e-6, atol=1e-6)
    ms = json.load(open(os.path.join(out, "zarr.json")))["attributes"]["ome"]["multiscales"][0]
    assert ms["type"] == "gaussian"
    assert ms["datasets"][1]["coordinateTransformations"][1]["translation"] == [0.0, 1.0, 1.0]


def test_a_pyramid_in_parts_equals_numpy(tmp, rng):
    """``partition="I/N"`` (spec/PYRAMID.md §3): parts in any order; those that are not last
    return None and publish nothing; the last returns the levels, equal to numpy's block
    means."""
    a = rng.integers(0, 5000, (40, 24, 24)).astype(np.uint16)
    out = os.path.join(tmp, "p.ome.zarr")
    kw = dict(factors=(2, 2, 2), levels=3, chunks=(8, 8, 8))
    assert cw.pyramid(a, out, partition="1/2", **kw) is None
    assert not os.path.exists(out)
    levels = cw.pyramid(a, out, partition=(0, 2), **kw)
    want = a
    for i, lv in enumerate(levels):
        if i:
            want = block_mean(want, (2, 2, 2))
        np.testing.assert_array_equal(lv[...], want)
    # A gaussian pyramid in parts: the part that finishes level 0 makes the levels below.
    g = os.path.join(tmp, "g.ome.zarr")
    assert cw.pyramid(a, g, method="gaussian", partition="0/2", **kw) is None
    parts = cw.pyramid(a, g, method="gaussian", partition="1/2", **kw)
    once = cw.pyramid(a, os.path.join(tmp, "g1.ome.zarr"), method="gaussian", **kw)
    assert len(parts) == len(once) == 3
    for x, y in zip(parts, once):
        np.testing.assert_array_equal(x[...], y[...])


def test_an_image_with_labels_grows_with_its_labels(tmp, rng):
    """``Array.append(x, labels={...})`` on an OME-Zarr image (spec/PYRAMID.md §6): the image
    and its label image grow in one commit, equal to the pyramid of the grown volumes; without
    the labels' new slices the append is refused and nothing changes."""
    a = rng.integers(0, 4000, (24, 16, 16)).astype(np.uint16)
    cells = rng.integers(0, 4, a.shape).astype(np.uint32)
    b = rng.integers(0, 4000, (10, 16, 16)).astype(np.uint16)
    cells_b = rng.integers(0, 4, b.shape).astype(np.uint32)
    kw = dict(factors=(2, 2, 2), levels=3, chunks=(8, 8, 8))
    out = os.path.join(tmp, "l.ome.zarr")
    cw.pyramid(a, out, labels={"cells": cells}, **kw)
    img = cw.open(out)
    with pytest.raises(cw.errors.InvalidOptionError, match="cells"):
        img.append(b)
    assert cw.open(out).shape == a.shape
    img.append(b, labels={"cells": cells_b})
    assert img.shape == (34, 16, 16)
    want = cw.pyramid(np.concatenate([a, b]), os.path.join(tmp, "w.ome.zarr"),
                      labels={"cells": np.concatenate([cells, cells_b])}, **kw)
    for level in range(3):
        np.testing.assert_array_equal(cw.open(f"{out}/{level}")[...], want[level][...])
        np.testing.assert_array_equal(cw.open(f"{out}/labels/cells/{level}")[...],
                                      cw.open(os.path.join(tmp, "w.ome.zarr", "labels", "cells",
                                                           str(level)))[...])
