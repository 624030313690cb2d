"""`chunkwise pyramid INPUT -o OUT --labels [NAME=]PATH` (spec/PYRAMID.md §1.1), run by
tests/pyramid.rs.

Usage: check_pyramid_labels.py CHUNKWISE DIR

The oracle: numpy's block mode (ties to the smallest value, edge blocks partial:
pyramid_oracle.block_reduce) of each label volume with the image's own factors, level by level;
the OME-Zarr labels layout (`labels/zarr.json` listing the names, each label image a mode
multiscales with `image-label` pointing back to the image, the image's scales and translations);
the image and each label image validated by ome-zarr-models and read by ome-zarr-py, whose reader
must find every label image with the image's level shapes. Bad labels are refused with nothing
written. Prints "label pyramids equal numpy's" when every case passes.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import zarr

sys.path.insert(0, str(Path(__file__).parent))
from pyramid_oracle import BINDIR, block_reduce, check  # noqa: E402

BIN, DIR = Path(sys.argv[1]), Path(sys.argv[2])
DIR.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(5)
checked = 0


def run(*args):
    return subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True)


shape = (19, 37, 41)  # odd everywhere: partial edge blocks at every level
img = rng.integers(0, 4000, shape).astype(np.uint16)
# Blobs, so that modes are not just noise, and noise, so that ties happen.
zz, yy, xx = np.indices(shape)
cells = ((zz // 5) * 100 + (yy // 7) * 10 + xx // 9).astype(np.uint32)
cells[rng.random(shape) < 0.3] = 0
nuclei = rng.integers(0, 3, shape).astype(np.uint8)
np.save(DIR / "img.npy", img)
np.save(DIR / "cells.npy", cells)
np.save(DIR / "nuc.npy", nuclei)
out = DIR / "o.ome.zarr"
# Anisotropic voxels: the image's factors differ by level (1,2,2 then 2,2,2), and the labels
# must follow them.
r = run("pyramid", DIR / "img.npy", "-o", out, "--chunks", "8,8,8", "--voxel-size", "2,1,1",
        "--labels", DIR / "cells.npy", "--labels", f"nuclei={DIR / 'nuc.npy'}", "--json")
assert r.returncode == 0, r.stderr
rep = json.loads(r.stdout)
assert [lab["name"] for lab in rep["labels"]] == ["cells", "nuclei"], rep["labels"]
check(out, img, "mean")  # the image itself, as ever
meta = json.loads((out / "zarr.json").read_text())["attributes"]["ome"]["multiscales"][0]
factors = meta["metadata"]["factors"]
assert factors[0] != factors[1], factors
group = json.loads((out / "labels" / "zarr.json").read_text())
assert group["node_type"] == "group", group
assert group["attributes"]["ome"] == {"version": "0.5", "labels": ["cells", "nuclei"]}, group
for name, vol in (("cells", cells), ("nuclei", nuclei)):
    lab = out / "labels" / name
    lm = json.loads((lab / "zarr.json").read_text())["attributes"]["ome"]
    assert lm["image-label"]["source"]["image"] == "../../", lm["image-label"]
    ms = lm["multiscales"][0]
    assert ms["type"] == "mode", ms["type"]
    assert ms["axes"] == meta["axes"], (ms["axes"], meta["axes"])
    # The same geometry as the image, level by level (a viewer overlays them).
    assert [d["coordinateTransformations"] for d in ms["datasets"]] == \
        [d["coordinateTransformations"] for d in meta["datasets"]], name
    ref = vol
    for i, d in enumerate(ms["datasets"]):
        if i > 0:
            ref = block_reduce(ref, factors[i - 1], "mode")
        got = zarr.open_array(str(lab / d["path"]), mode="r")[...]
        checked += 1
        assert got.dtype == vol.dtype, (name, i, got.dtype)
        assert got.shape == ref.shape, (name, i, got.shape, ref.shape)
        if not np.array_equal(got, ref):
            raise SystemExit(f"labels {name} level {i} differs at {np.argwhere(got != ref)[:3]}")
    v = subprocess.run([str(BINDIR / "ome-zarr-models"), "validate", str(lab)],
                       capture_output=True, text=True)
    checked += 1
    assert v.returncode == 0, (name, v.stdout, v.stderr)

# `info` lists them; a label image opens as any image (its level 0, or NAME/N).
said = subprocess.run([str(BIN), "info", str(out)], capture_output=True, text=True).stdout
checked += 1
assert "labels: cells, nuclei" in said, said
info = json.loads(subprocess.run([str(BIN), "info", str(out), "--json"], capture_output=True,
                                 text=True).stdout)
assert info["image"]["labels"] == ["cells", "nuclei"], info["image"]
said = subprocess.run([str(BIN), "info", str(out / "labels" / "cells" / "2"), "--json"],
                      capture_output=True, text=True).stdout
assert json.loads(said)["shape"] == list(zarr.open_array(str(out / "2")).shape), said

from ome_zarr.io import parse_url  # noqa: E402
from ome_zarr.reader import Label, Reader  # noqa: E402

nodes = list(Reader(parse_url(str(out)))())
labels = {Path(str(n.zarr.path)).name: n for n in nodes if any(isinstance(s, Label) for s in n.specs)}
checked += 1
assert sorted(labels) == ["cells", "nuclei"], [str(n.zarr) for n in nodes]
for n in labels.values():
    assert [tuple(d.shape) for d in n.data] == [tuple(d.shape) for d in nodes[0].data], n

# Bad labels: one line, exit 2, nothing at OUT.
np.save(DIR / "float.npy", img.astype(np.float32))
np.save(DIR / "small.npy", cells[:, :5])
bad = DIR / "bad.ome.zarr"
for args, says in (
    ([DIR / "float.npy"], "label images are integers"),
    ([DIR / "small.npy"], "labels have the image's shape"),
    ([DIR / "cells.npy", f"cells={DIR / 'nuc.npy'}"], "two label images of this name"),
    ([f".hidden={DIR / 'nuc.npy'}"], "one path component"),
):
    r = run("pyramid", DIR / "img.npy", "-o", bad, "--chunks", "8,8,8",
            *[x for a in args for x in ("--labels", a)])
    checked += 1
    assert r.returncode == 2, (args, r.returncode, r.stderr)
    assert says in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
    assert not bad.exists() and not [p for p in DIR.iterdir() if p.name.startswith(".bad")], args
print(f"label pyramids equal numpy's: {checked} checks")
