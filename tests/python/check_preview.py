"""`chunkwise preview` against numpy (spec/PREVIEW.md), run by tests/preview.rs.

usage: python check_preview.py CHUNKWISE_BIN WORKDIR

The oracle, on the whole array in memory: the projection (numpy's max/mean/min over the axis)
or the plane, the block mean over blocks of FxF (edge blocks over what they hold), the window
(numpy's linear percentiles of the picture's pixels, or the one given) and the mapping
clip(rint((v - lo) / (hi - lo) * 255), 0, 255); labels by the most frequent label of each
block (the smallest among equals). PNGs are read back with Pillow.
"""
import json
import os
import re
import subprocess
import sys

import numpy as np
from PIL import Image

cw, work = sys.argv[1:3]
rng = np.random.default_rng(15)
failures = []
checked = 0


def run(*args):
    r = subprocess.run([cw, "preview", *args, "--json"], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"preview {args} failed: {r.stderr}")
    return json.loads(r.stdout)


def blocks(img, f, mode=False):
    h, w = img.shape
    out = np.zeros(((h + f - 1) // f, (w + f - 1) // f))
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            b = img[i * f:(i + 1) * f, j * f:(j + 1) * f]
            if mode:
                vals, counts = np.unique(b, return_counts=True)
                out[i, j] = vals[np.argmax(counts)]  # np.unique sorts: the smallest among equals
            else:
                out[i, j] = b.astype(np.float64).mean()
    return out


def levels(img, lo, hi):
    return np.clip(np.rint((img - lo) / (hi - lo) * 255), 0, 255).astype(np.uint8)


def check(name, png, want, exact=True):
    global checked
    got = np.asarray(Image.open(png))
    checked += 1
    if got.shape != want.shape:
        failures.append(f"{name}: shape {got.shape}, numpy {want.shape}")
        return
    diff = np.abs(got.astype(int) - want.astype(int))
    if exact and diff.max() != 0 or not exact and (diff.max() > 1 or (diff > 0).mean() > 1e-3):
        bad = np.argwhere(diff > 0)[:3].tolist()
        failures.append(f"{name}: differs at {bad} ({[got[tuple(b)] for b in bad]} vs "
                        f"{[want[tuple(b)] for b in bad]})")


x = rng.integers(0, 60000, (37, 50, 45), dtype=np.uint16)
src = os.path.join(work, "x.npy")
np.save(src, x)
store = os.path.join(work, "x.zarr")
subprocess.run([cw, "convert", src, "-o", store, "--chunks", "8,16,16", "-q"], check=True)

# Default: the max along axis 0, auto contrast (0.1, 99.9 percentiles), no downsampling.
png = os.path.join(work, "default.png")
r = run(store, "-o", png)
img = x.max(axis=0).astype(np.float64)
lo, hi = np.percentile(img, [0.1, 99.9])
if abs(r["window"][0] - lo) > 1e-9 * hi or abs(r["window"][1] - hi) > 1e-9 * hi:
    failures.append(f"auto window {r['window']}, numpy {lo, hi}")
check("max axis 0", png, levels(img, lo, hi))
text = Image.open(png).info.get("chunkwise", "")
said = re.match(r"window ([^,]+),([^;]+);", text)
if not said or [float(said[1]), float(said[2])] != r["window"]:
    failures.append(f"the PNG's text chunk does not state the window {r['window']}: {text!r}")

# A plane with a fixed window.
png = os.path.join(work, "plane.png")
run(store, "-o", png, "--plane", "0=5", "--contrast", "100,50000")
check("plane 0=5", png, levels(x[5].astype(np.float64), 100, 50000))

# The mean along axis 1, downsampled to at most 20 pixels a side (blocks of 3).
png = os.path.join(work, "mean.png")
r = run(store, "-o", png, "--project", "1", "--op", "mean", "--size", "20",
        "--contrast", "20000,40000")
if r["factor"] != 3:
    failures.append(f"mean: factor {r['factor']}, expected 3")
check("mean axis 1 blocks of 3", png, levels(blocks(x.mean(axis=1), 3), 20000, 40000),
      exact=False)

# The min along axis 2 at most 10x7 (blocks of 6), percentiles 1 and 99.
png = os.path.join(work, "min.png")
r = run(store, "-o", png, "--project", "2", "--op", "min", "--size", "10x7",
        "--contrast", "p1,p99")
img = blocks(x.min(axis=2), 6)
lo, hi = np.percentile(img, [1, 99])
check("min axis 2 blocks of 6", png, levels(img, lo, hi))

# A region of the input.
png = os.path.join(work, "region.png")
run(store, "-o", png, "--region", "3:30,10:40,5:", "--contrast", "0,65535")
check("region", png, levels(x[3:30, 10:40, 5:].max(axis=0).astype(np.float64), 0, 65535))

# A 2-D array is its own picture.
flat = os.path.join(work, "flat.npy")
np.save(flat, x[0])
png = os.path.join(work, "flat.png")
run(flat, "-o", png, "--contrast", "0,60000")
check("2-D", png, levels(x[0].astype(np.float64), 0, 60000))

# magma: the window's ends are magma's ends (#000004, #fcfdbf).
png = os.path.join(work, "magma.png")
run(store, "-o", png, "--colormap", "magma", "--contrast", "0,65535")
rgb = np.asarray(Image.open(png))
two = os.path.join(work, "two.npy")
np.save(two, np.array([[0, 65535]], dtype=np.uint16))
run(two, "-o", png, "--colormap", "magma", "--contrast", "0,65535", "--overwrite")
ends = np.asarray(Image.open(png))[0]
checked += 1
if rgb.ndim != 3 or ends[0].tolist() != [0, 0, 4] or ends[1].tolist() != [252, 253, 191]:
    failures.append(f"magma: ends {ends.tolist()}, expected [[0, 0, 4], [252, 253, 191]]")

# Labels: the most frequent label of each 2x2 block, each label its own colour, 0 black.
lab = rng.integers(0, 6, (3, 40, 30), dtype=np.uint32)
lab_npy = os.path.join(work, "labels.npy")
np.save(lab_npy, lab)
png = os.path.join(work, "labels.png")
r = run(lab_npy, "-o", png, "--plane", "0=1", "--labels", "--size", "20")
want = blocks(lab[1], 2, mode=True)
got = np.asarray(Image.open(png))
checked += 1
colours = {}
for v in np.unique(want):
    cs = {tuple(c) for c in got[want == v]}
    if len(cs) != 1:
        failures.append(f"labels: label {v} drawn in {len(cs)} colours")
    colours[int(v)] = cs.pop()
if len(set(colours.values())) != len(colours):
    failures.append(f"labels: distinct labels share a colour: {colours}")
if colours.get(0) != (0, 0, 0):
    failures.append(f"labels: label 0 is {colours.get(0)}, not black")

if failures:
    print("\n".join(failures))
    sys.exit(1)
print(f"preview: {checked} pictures equal numpy's")
