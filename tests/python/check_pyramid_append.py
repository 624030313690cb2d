"""`chunkwise append` onto an OME-Zarr image (spec/PYRAMID.md §6), run by tests/pyramid.rs.

Usage: check_pyramid_append.py CHUNKWISE DIR

The oracle: numpy on the whole grown volume (pyramid_oracle.block_reduce, level by level, edge
blocks partial), and the same pyramid built from scratch by `chunkwise pyramid` on the grown
volume, which every level of the appended image must equal bit for bit. Then: the image in
three readers (pyramid_oracle.check), a rerun that says "already done", `--again`, a kill at
every step of the commit (the image is the old pyramid or the new one, whole, and a rerun
completes it), and bad input refused with the image unchanged. Prints "appended pyramids equal
numpy's" when every case passes.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import zarr

sys.path.insert(0, str(Path(__file__).parent))
from pyramid_oracle import block_reduce, check  # noqa: E402

BIN, DIR = Path(sys.argv[1]), Path(sys.argv[2])
DIR.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(11)
checked = 0


def run(*args, env=None):
    return subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def cw(*args):
    r = run(*args)
    if r.returncode != 0:
        raise SystemExit(f"chunkwise {' '.join(map(str, args))} failed:\n{r.stderr}")
    return r.stdout


def levels_of(image):
    meta = json.loads((image / "zarr.json").read_text())
    paths = [d["path"] for d in meta["attributes"]["ome"]["multiscales"][0]["datasets"]]
    return [zarr.open_array(str(image / p), mode="r")[...] for p in paths]


def same_levels(image, other, what):
    """Every level of `image` equals `other`'s (an image, or a list of arrays)."""
    global checked
    got = levels_of(image)
    want = levels_of(other) if isinstance(other, Path) else other
    assert len(got) == len(want), (what, len(got), len(want))
    for i, (g, w) in enumerate(zip(got, want)):
        checked += 1
        assert g.shape == w.shape, f"{what}: level {i} is {g.shape}, expected {w.shape}"
        if not np.array_equal(g, w, equal_nan=g.dtype.kind == "f"):
            bad = np.argwhere(g != w)[:3].tolist()
            raise SystemExit(f"{what}: level {i} differs at {bad}")


def tree(image):
    """Every file under `image` (names and bytes), for "nothing changed"; the writers' lock
    files (which name their last holder) aside."""
    h = hashlib.sha256()
    for p in sorted(image.rglob("*")):
        if p.name == ".chunkwise.lock":
            continue
        h.update(str(p.relative_to(image)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def leftovers(image):
    return sorted(p.name for p in image.parent.iterdir()
                  if p.name.startswith("." + image.name))


# 1. Every method that grows, on odd sizes (partial edge blocks at every level), two appends
#    (the second from two inputs at once), against numpy and against a pyramid from scratch.
cases = [
    ("mean", rng.integers(0, 4000, (37, 20, 23)).astype(np.uint16)),
    ("mode", rng.integers(0, 5, (29, 18, 21)).astype(np.uint8)),
    ("nearest", rng.normal(0, 100, (33, 17, 19)).astype(np.float32)),
    ("min", rng.integers(-3000, 3000, (31, 16, 22)).astype(np.int16)),
    ("max", rng.integers(0, 2**31, (35, 19, 17)).astype(np.int32)),
]
for method, a in cases:
    tail = a.shape[1:]
    b = rng.permutation(a.ravel())[: 11 * tail[0] * tail[1]].reshape((11, *tail))
    c = a[:5][::-1].copy()
    d = a[:1].copy()
    for name, x in (("a", a), ("b", b), ("c", c), ("d", d)):
        np.save(DIR / f"{method}-{name}.npy", x)
    img = DIR / f"{method}.ome.zarr"
    cw("pyramid", DIR / f"{method}-a.npy", "-o", img, "--chunks", "8,8,8", "--levels", "3",
       "--method", method)
    said = cw("append", img, DIR / f"{method}-b.npy")
    assert "levels now" in said and "exchanged" in said, said
    grown = np.concatenate([a, b])
    ref = [grown]
    meta = json.loads((img / "zarr.json").read_text())
    ms = meta["attributes"]["ome"]["multiscales"][0]
    for f in ms["metadata"]["factors"]:
        ref.append(block_reduce(ref[-1], f, method))
    same_levels(img, ref, f"{method} after one append")
    # From scratch, with the same factors.
    np.save(DIR / f"{method}-ab.npy", grown)
    scratch = DIR / f"{method}-scratch.ome.zarr"
    cw("pyramid", DIR / f"{method}-ab.npy", "-o", scratch, "--chunks", "8,8,8", "--method",
       method, "--levels", "3", "--factors-per-level", ";".join(",".join(map(str, f)) for f in ms["metadata"]["factors"]))
    same_levels(img, scratch, f"{method}: appended vs from scratch")
    # The same command again: already done, nothing changes; two inputs at once.
    before = tree(img)
    said = cw("append", img, DIR / f"{method}-b.npy")
    assert "already done" in said, said
    assert tree(img) == before, f"{method}: a rerun changed the image"
    for name in ("c", "d"):  # several inputs at once are stores, joined in order
        cw("convert", DIR / f"{method}-{name}.npy", "-o", DIR / f"{method}-{name}.zarr",
           "--chunks", "4,4,4", "-q", "--overwrite")
    cw("append", img, DIR / f"{method}-c.zarr", DIR / f"{method}-d.zarr")
    grown = np.concatenate([a, b, c, d])
    ref = [grown]
    for f in ms["metadata"]["factors"]:
        ref.append(block_reduce(ref[-1], f, method))
    same_levels(img, ref, f"{method} after two appends")
    assert leftovers(img) == [], leftovers(img)
    if method == "mean":
        check(img, grown, "mean")  # metadata, ome-zarr-models, ome-zarr-py, ngff-zarr
        j = json.loads(cw("append", img, DIR / f"{method}-d.zarr", "--again", "--json"))
        assert j["levels"][0] == [len(grown) + 1, *tail], j
        assert j["exchanged"] is True and j["chunks_encoded"] > 0, j

# 2. Along another axis; a 2-D slice is one row.
a = rng.integers(0, 1000, (9, 21, 13)).astype(np.uint16)
b = rng.integers(0, 1000, (9, 21, 6)).astype(np.uint16)
np.save(DIR / "x-a.npy", a)
np.save(DIR / "x-b.npy", b)
np.save(DIR / "x-s.npy", b[:, :, 0])
img = DIR / "x.ome.zarr"
cw("pyramid", DIR / "x-a.npy", "-o", img, "--chunks", "4,4,4", "--levels", "3")
cw("append", img, DIR / "x-b.npy", "--axis", "2")
cw("append", img, DIR / "x-s.npy", "--axis", "2")
grown = np.concatenate([a, b, b[:, :, :1]], axis=2)
meta = json.loads((img / "zarr.json").read_text())
ref = [grown]
for f in meta["attributes"]["ome"]["multiscales"][0]["metadata"]["factors"]:
    ref.append(block_reduce(ref[-1], f, "mean"))
same_levels(img, ref, "along axis 2")

# 2b. --cast: uint8 data grows a uint16 image as the same values in uint16 would (numpy's
#     safe casts only); without --cast another type is refused, and a lossy one even with it.
a = rng.integers(0, 4000, (19, 12, 10)).astype(np.uint16)
b = rng.integers(0, 256, (7, 12, 10)).astype(np.uint8)
np.save(DIR / "cast-a.npy", a)
np.save(DIR / "cast-b.npy", b)
np.save(DIR / "cast-bad.npy", b.astype(np.int32))
img = DIR / "cast.ome.zarr"
cw("pyramid", DIR / "cast-a.npy", "-o", img, "--chunks", "8,8,8", "--levels", "3")
before = tree(img)
r = run("append", img, DIR / "cast-b.npy")
assert r.returncode == 2 and "--cast" in r.stderr and tree(img) == before, r.stderr
r = run("append", img, DIR / "cast-bad.npy", "--cast")
assert r.returncode == 2 and "would lose values" in r.stderr and tree(img) == before, r.stderr
cw("append", img, DIR / "cast-b.npy", "--cast")
grown = np.concatenate([a, b.astype(np.uint16)])
meta = json.loads((img / "zarr.json").read_text())
ref = [grown]
for f in meta["attributes"]["ome"]["multiscales"][0]["metadata"]["factors"]:
    ref.append(block_reduce(ref[-1], f, "mean"))
same_levels(img, ref, "appended with --cast")
assert all(x.dtype == np.uint16 for x in levels_of(img))

# 3. A kill at every step leaves the old pyramid or the new one; the rerun completes it.
a, b = cases[0][1], rng.integers(0, 4000, (13, 20, 23)).astype(np.uint16)
np.save(DIR / "k-a.npy", a)
np.save(DIR / "k-b.npy", b)
master = DIR / "k-master.ome.zarr"
cw("pyramid", DIR / "k-a.npy", "-o", master, "--chunks", "8,8,8", "--levels", "3")
old = levels_of(master)
meta = json.loads((master / "zarr.json").read_text())
new = [np.concatenate([a, b])]
for f in meta["attributes"]["ome"]["multiscales"][0]["metadata"]["factors"]:
    new.append(block_reduce(new[-1], f, "mean"))
for step in ("linked", "placing", "staged", "journaled", "committed"):
    img = DIR / "k.ome.zarr"
    shutil.rmtree(img, ignore_errors=True)
    shutil.copytree(master, img)
    r = run("append", img, DIR / "k-b.npy", env={"CHUNKWISE_CRASH_AT": step})
    assert r.returncode == -signal.SIGKILL, (step, r.returncode, r.stderr)
    same_levels(img, new if step == "committed" else old, f"killed at {step}")
    said = cw("append", img, DIR / "k-b.npy")
    assert ("already done" in said) == (step == "committed"), (step, said)
    same_levels(img, new, f"rerun after a kill at {step}")
    assert leftovers(img) == [], (step, leftovers(img))

# 3b. A stale staging file in a level (a hard link to a live chunk, as a killed writer leaves)
#     is not carried into the rebuilt image: the live chunk stays as it was until the exchange.
img = DIR / "k.ome.zarr"
shutil.rmtree(img, ignore_errors=True)
shutil.copytree(master, img)
live = img / "1" / "c" / "2" / "0" / "0"  # level 1 recomputes from index 18: this chunk
stale = img / "1" / ".chunkwise-staging"
stale.mkdir()
os.link(live, stale / "c~2~0~0")
kept = live.read_bytes()
r = run("append", img, DIR / "k-b.npy", env={"CHUNKWISE_CRASH_AT": "staged"})
assert r.returncode == -signal.SIGKILL, r.stderr
checked += 1
assert live.read_bytes() == kept, "the rewrite went through a stale link into the live level"
same_levels(img, old, "killed with a stale staging link")
cw("append", img, DIR / "k-b.npy")
same_levels(img, new, "after a stale staging link")

# 3c. A filesystem that cannot exchange directories (NFS): the old image is set aside, the
#     new one renamed in; a kill in between leaves no image, and the rerun puts the old one
#     back and completes (spec/APPEND.md §4.3). A plain array's exchange does the same.
no_exchange = {"CHUNKWISE_TEST_NO_EXCHANGE": "1"}
shutil.rmtree(img, ignore_errors=True)
shutil.copytree(master, img)
r = run("append", img, DIR / "k-b.npy", env=no_exchange)
assert r.returncode == 0, r.stderr
same_levels(img, new, "appended without exchange")
assert leftovers(img) == [], leftovers(img)
shutil.rmtree(img)
shutil.copytree(master, img)
r = run("append", img, DIR / "k-b.npy", env={**no_exchange, "CHUNKWISE_CRASH_AT": "exchanged"})
assert r.returncode == -signal.SIGKILL, r.stderr
checked += 1
assert not img.exists() and ".k.ome.zarr.chunkwise-old" in leftovers(img), leftovers(img)
said = cw("append", img, DIR / "k-b.npy")
assert "already done" not in said, said
same_levels(img, new, "rerun after a kill between the renames")
assert leftovers(img) == [], leftovers(img)
arr = DIR / "k-plain.zarr"
cw("convert", DIR / "k-a.npy", "-o", arr, "--chunks", "8,8,8", "-q", "--overwrite")
r = run("append", arr, DIR / "k-b.npy", "--layout", "rectilinear", "--json", env=no_exchange)
assert r.returncode == 0 and json.loads(r.stdout)["exchanged"], r.stderr
checked += 1
with zarr.config.set({"array.rectilinear_chunks": True}):
    assert np.array_equal(zarr.open_array(str(arr), mode="r")[...], new[0])
assert leftovers(arr) == [], leftovers(arr)

# 3d. Levels chunked to their length (a short first acquisition) take the image's chunk
#     length as they grow, like a pyramid of the grown volume, rather than small chunks.
a = rng.integers(0, 4000, (6, 20, 23)).astype(np.uint16)
b = rng.integers(0, 4000, (21, 20, 23)).astype(np.uint16)
np.save(DIR / "s-a.npy", a)
np.save(DIR / "s-b.npy", b)
img = DIR / "s.ome.zarr"
cw("pyramid", DIR / "s-a.npy", "-o", img, "--chunks", "8,8,8", "--levels", "3", "--factors", "2,2,2")
chunks = lambda: [zarr.open_array(str(img / str(l)), mode="r").chunks for l in range(3)]  # noqa: E731
assert [c[0] for c in chunks()] == [6, 3, 2], chunks()
cw("append", img, DIR / "s-b.npy")
cw("append", img, DIR / "s-b.npy", "--again")
grown = np.concatenate([a, b, b])
ref = [grown]
for f in json.loads((img / "zarr.json").read_text())["attributes"]["ome"]["multiscales"][0]["metadata"]["factors"]:
    ref.append(block_reduce(ref[-1], f, "mean"))
same_levels(img, ref, "grown from clipped chunks")
checked += 1
assert [c[0] for c in chunks()] == [8, 8, 8], chunks()

# 4. Bad input: one line, exit 2, the image unchanged.
img = DIR / "bad.ome.zarr"
shutil.rmtree(img, ignore_errors=True)
shutil.copytree(master, img)
np.save(DIR / "bad-f32.npy", b.astype(np.float32))
np.save(DIR / "bad-shape.npy", b[:, :5])


def refused(args, says, what):
    global checked
    before = tree(img)
    r = run("append", img, *args)
    checked += 1
    assert r.returncode == 2, (what, r.returncode, r.stderr)
    assert says in r.stderr and len(r.stderr.strip().splitlines()) == 1, (what, r.stderr)
    assert tree(img) == before and leftovers(img) == [], what


refused([DIR / "bad-f32.npy"], "is float32, the image", "another type")
refused([DIR / "bad-f32.npy", "--cast"], "would lose values", "a lossy cast")
refused([DIR / "bad-shape.npy"], "needs the other axes", "another shape")
refused([DIR / "k-b.npy", "--axis", "3"], "axis 3 is out of range", "an axis not there")
refused([DIR / "k-b.npy", "--partition", "0/2"], "does not split into parts", "in parts")
group = img / "zarr.json"
good = group.read_text()
for kind, says in (("gaussian", "gaussian: a blurred voxel"), ("local_mean", '"local_mean"')):
    m = json.loads(good)
    m["attributes"]["ome"]["multiscales"][0]["type"] = kind
    group.write_text(json.dumps(m))
    refused([DIR / "k-b.npy"], says, kind)
m = json.loads(good)
del m["attributes"]["ome"]["multiscales"][0]["type"]
group.write_text(json.dumps(m))
refused([DIR / "k-b.npy"], "has no `type`", "no method")
group.write_text(good)
# A level that dropped its last partial block (as iohub did before 2026).
lvl = img / "1" / "zarr.json"
lgood = lvl.read_text()
lm = json.loads(lgood)
lm["shape"][0] = a.shape[0] // 2
lvl.write_text(json.dumps(lm))
refused([DIR / "k-b.npy"], "do not keep the last partial block", "a truncated level")
lvl.write_text(lgood)

# A label image listed but not given its new slices would describe the old volume.
(img / "labels").mkdir()
(img / "labels" / "zarr.json").write_text(json.dumps(
    {"zarr_format": 3, "node_type": "group",
     "attributes": {"ome": {"version": "0.5", "labels": ["cells"]}}}))
refused([DIR / "k-b.npy"], 'its label image "cells" would describe the old volume', "labels")
refused([DIR / "k-b.npy", "--labels", f"nuclei={DIR / 'k-b.npy'}"],
        'no label image "nuclei" (it has cells)', "an unknown label image")
shutil.rmtree(img / "labels")
# A level that is a symbolic link: the rebuild would write through it into the live level.
away = DIR / "bad-level-1"
shutil.rmtree(away, ignore_errors=True)
(img / "1").rename(away)
(img / "1").symlink_to(away)
kept = tree(away)
refused([DIR / "k-b.npy"], "is a symbolic link to the directory", "a symlinked level")
assert tree(away) == kept
(img / "1").unlink()
away.rename(img / "1")

# One level alone would leave the others describing the old volume: refused, naming the image.
before = tree(img)
r = run("append", img / "0", DIR / "k-b.npy")
checked += 1
assert r.returncode == 2 and "is level 0 of the OME-Zarr image" in r.stderr, r.stderr
assert tree(img) == before

# 5. An image with a label image grows with its labels' new slices (--labels NAME=PATH), in one
#    commit: the image's levels numpy's block means, the label image's the block modes, and
#    both the pyramid from scratch of the grown volumes.
a = rng.integers(0, 4000, (27, 18, 20)).astype(np.uint16)
cells = rng.integers(0, 6, a.shape).astype(np.uint32)
b = rng.integers(0, 4000, (9, 18, 20)).astype(np.uint16)
cells_b = rng.integers(0, 6, b.shape).astype(np.uint32)
for name, x in (("la", a), ("lcells", cells), ("lb", b), ("lcells-b", cells_b),
                ("lcells-short", cells_b[:4])):
    np.save(DIR / f"{name}.npy", x)
img = DIR / "labelled.ome.zarr"
geometry = ["--chunks", "8,8,8", "--levels", "3", "--factors", "2,2,2"]
cw("pyramid", DIR / "la.npy", "-o", img, "--labels", f"cells={DIR / 'lcells.npy'}", *geometry)
refused([DIR / "lb.npy", "--labels", f"cells={DIR / 'lcells-short.npy'}"],
        "cells: 4 new slices given, the image grows by 9", "labels of another length")
said = cw("append", img, DIR / "lb.npy", "--labels", f"cells={DIR / 'lcells-b.npy'}")
assert "levels now" in said, said
grown, grown_cells = np.concatenate([a, b]), np.concatenate([cells, cells_b])
ref, lref = [grown], [grown_cells]
for _ in range(2):
    ref.append(block_reduce(ref[-1], [2, 2, 2], "mean"))
    lref.append(block_reduce(lref[-1], [2, 2, 2], "mode"))
same_levels(img, ref, "labelled image after an append")
same_levels(img / "labels" / "cells", lref, "its label image after the append")
np.save(DIR / "lab.npy", grown)
np.save(DIR / "lcells-ab.npy", grown_cells)
scratch = DIR / "labelled-scratch.ome.zarr"
cw("pyramid", DIR / "lab.npy", "-o", scratch, "--labels", f"cells={DIR / 'lcells-ab.npy'}",
   *geometry)
same_levels(img, scratch, "labelled: appended vs from scratch")
same_levels(img / "labels" / "cells", scratch / "labels" / "cells",
            "labels: appended vs from scratch")
before = tree(img)
said = cw("append", img, DIR / "lb.npy", "--labels", f"cells={DIR / 'lcells-b.npy'}")
assert "already done" in said and tree(img) == before, said
assert leftovers(img) == [], leftovers(img)

print(f"appended pyramids equal numpy's: {checked} checks")
