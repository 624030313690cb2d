"""`chunkwise histogram --plot` against numpy (spec/REDUCE.md §3.1), run by tests/reduce.rs.

usage: python check_histogram_plot.py CHUNKWISE_BIN WORKDIR

The oracle, on the whole array in memory: numpy.histogram's counts (per value for integers,
equal bins otherwise), numpy.percentile(x, q, method="inverted_cdf") for one bin per value and
the bin rule of §3.1 for equal bins (checked to fall within one bin of numpy's too). The
pictures are read back: the SVG's bar rectangles (their heights proportional to the counts,
linear or log, their edges at the bins' edges, the percentile lines at their values) and the
PNG's pixels (Pillow: the bar colour's height in the middle column of each bar) and its
`chunkwise` text chunk.
"""
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
from PIL import Image

cw, work = sys.argv[1:3]
rng = np.random.default_rng(31)
BAR = (31, 119, 180)
MARK = "#D62728"
failures = []
checked = 0


def check(cond, what):
    global checked
    checked += 1
    if not cond:
        failures.append(what)


def run(*args):
    r = subprocess.run([cw, "histogram", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"histogram {args} failed: {r.stderr}")
    return r.stdout


def marks_said(line):
    return {float(q): float(v) for q, v in re.findall(r"p([\d.]+) = (-?[\d.e+-]+)", line)}


def equal_bin_percentile(counts, edges, q):
    """§3.1 for equal bins: the edge below plus the fraction of the bin's count still needed."""
    total = counts.sum()
    target = q / 100 * total
    before = 0
    for i, c in enumerate(counts):
        if c > 0 and before + c >= target:
            frac = min(max((target - before) / c, 0.0), 1.0)
            return edges[i] + frac * (edges[i + 1] - edges[i])
        before += c
    return None


def svg_bars(path):
    text = open(path).read()
    rects = []
    for m in re.finditer(r"<rect ([^>]*)/>", text):
        a = dict(re.findall(r'(\w[\w-]*)="([^"]*)"', m.group(1)))
        if a.get("fill", "").upper() == "#%02X%02X%02X" % BAR:
            rects.append(tuple(float(a[k]) for k in ("x", "y", "width", "height")))
    lines = []
    for m in re.finditer(r"<polyline ([^>]*)/>", text):
        a = dict(re.findall(r'(\w[\w-]*)="([^"]*)"', m.group(1)))
        if a.get("stroke", "").upper() == MARK:
            xs = {float(p.split(",")[0]) for p in a["points"].split()}
            lines.append(xs.pop())
    return rects, sorted(lines)  # the bars in the order drawn: the order of the bins


def heights_match(heights, counts, log, what):
    """Bar heights against counts: linear h/h_max = c/c_max; log from 0.5."""
    top = max(counts)
    hmax = max(heights)
    for h, c in zip(heights, counts):
        want = (c / top) if not log else (math.log(c / 0.5) / math.log(top / 0.5))
        check(abs(h - want * hmax) <= 2.0, f"{what}: bar of {c} is {h} px, want {want * hmax:.1f}")


# 1. uint16, one bin per value (the default), PNG: percentiles exact, the text chunk.
x = rng.normal(500, 100, (40, 50, 60)).clip(0, 4000).astype(np.uint16)
np.save(os.path.join(work, "u16.npy"), x)
png = os.path.join(work, "u16.png")
said = run(os.path.join(work, "u16.npy"), "--plot", png, "--percentiles", "0.1,1,50,99,99.9")
lo, hi = int(x.min()), int(x.max())
for q, v in marks_said(said).items():
    want = float(np.percentile(x, q, method="inverted_cdf"))
    check(v == want, f"u16 p{q}: said {v}, numpy {want}")
check(len(marks_said(said)) == 5, f"u16: five percentiles said: {said}")
im = Image.open(png)
check(im.size == (800, 500) and im.mode == "RGB", f"u16 png {im.size} {im.mode}")
text = im.text.get("chunkwise", "")
check(f"{hi - lo + 1} bins, {x.size} values counted, range {lo},{hi + 1}" in text, f"u16 text: {text}")
check(f"p50 = {int(np.percentile(x, 50, method='inverted_cdf'))}" in text, f"u16 text: {text}")
px = np.asarray(im)
check(int((px == BAR).all(axis=2).sum()) > 10000, "u16 png: bars drawn")

# 2. float32, 12 equal bins, SVG (linear): bars, edges, percentile lines.
f = rng.gamma(2.0, 10.0, (30, 40, 50)).astype(np.float32)
np.save(os.path.join(work, "f32.npy"), f)
svg = os.path.join(work, "f32.svg")
said = run(os.path.join(work, "f32.npy"), "--bins", "12", "--plot", svg)
counts, edges = np.histogram(f, bins=12, range=(float(f.min()), float(f.max())))
rects, lines = svg_bars(svg)
nz = [c for c in counts if c > 0]
check(len(rects) == len(nz), f"f32 svg: {len(rects)} bars for {len(nz)} non-empty bins")
heights_match([r[3] for r in rects], nz, False, "f32 svg")
x0, x1 = rects[0][0], rects[-1][0] + rects[-1][2]
px_of = lambda v: x0 + (v - edges[0]) / (edges[-1] - edges[0]) * (x1 - x0)
if counts[0] > 0 and counts[-1] > 0:
    for i, r in enumerate(rects[: len(counts)]):
        check(abs(r[0] - px_of(edges[i])) <= 1.5, f"f32 svg: bar {i} starts at {r[0]}, edge at {px_of(edges[i]):.1f}")
marks = marks_said(said)
check(sorted(marks) == [1.0, 50.0, 99.0], f"f32: default percentiles said: {said}")
for q, v in marks.items():
    want = equal_bin_percentile(counts, edges, q)
    check(abs(v - want) <= 1e-5 * max(1.0, abs(want)), f"f32 p{q}: said {v}, rule {want}")
    npv = float(np.percentile(f, q, method="inverted_cdf"))
    width = edges[1] - edges[0]
    check(abs(v - npv) <= width, f"f32 p{q}: {v} more than a bin from numpy's {npv}")
check(len(lines) == 3, f"f32 svg: {len(lines)} percentile lines")
for px_line, (q, v) in zip(lines, sorted(marks.items(), key=lambda kv: kv[1])):
    check(abs(px_line - px_of(v)) <= 1.5, f"f32 svg: p{q} line at {px_line}, value at {px_of(v):.1f}")

# 3. uint8, 16 bins, log counts, PNG: the bar colour's height in each bar's middle column.
u = np.concatenate([rng.integers(0, 256, 5000), rng.integers(100, 120, 200000)]).astype(np.uint8)
u = u.reshape(-1, 25)
np.save(os.path.join(work, "u8.npy"), u)
for log in (True, False):
    png = os.path.join(work, f"u8-{log}.png")
    args = [os.path.join(work, "u8.npy"), "--bins", "16", "--range", "0,256", "--plot", png,
            "--percentiles", "none"]
    run(*args, *(["--log"] if log else []))
    counts, edges = np.histogram(u, bins=16, range=(0, 256))
    bar = (np.asarray(Image.open(png)) == BAR).all(axis=2)
    cols = np.nonzero(bar.any(axis=0))[0]
    left, right = cols[0], cols[-1] + 1
    heights = []
    for i in range(16):
        mid = int(left + (i + 0.5) * (right - left) / 16)
        heights.append(int(bar[:, mid].sum()))
    heights_match(heights, list(counts), log, f"u8 png log={log}")

# 4. More bins than bars: 2500 bins drawn 3 to a bar, their counts summed.
svg = os.path.join(work, "many.svg")
said = run(os.path.join(work, "f32.npy"), "--bins", "2500", "--plot", svg, "--percentiles", "none")
check("834 bars of 3 bins each" in said, f"many: {said}")
counts, _ = np.histogram(f, bins=2500, range=(float(f.min()), float(f.max())))
sums = [int(counts[i:i + 3].sum()) for i in range(0, 2500, 3)]
rects, _ = svg_bars(svg)
check(len(rects) == sum(1 for s in sums if s > 0), f"many: {len(rects)} bars")
heights_match([r[3] for r in rects], [s for s in sums if s > 0], False, "many svg")
check("count per 3 bins" in open(svg).read(), "many svg: the y axis says 3 bins a bar")

# 5. -o OUT.json and --plot together: the counts written, the chart named on the line.
js = os.path.join(work, "c.json")
said = run(os.path.join(work, "u16.npy"), "-o", js, "--plot", os.path.join(work, "both.png"))
doc = json.load(open(js))
want, _ = np.histogram(x, bins=hi - lo + 1, range=(lo, hi + 1))
check(doc["counts"] == want.tolist(), "json counts")
check("chart" in said and os.path.exists(os.path.join(work, "both.png")), f"both: {said}")

if failures:
    print("\n".join(failures))
    sys.exit(1)
print(f"charts equal numpy's: {checked} checks")
