"""`chunkwise cumsum|cumprod|cummax|cummin` against numpy on the whole in-memory array
(spec/COMPUTE.md §10): every dtype, every axis, chunks that do not divide the shape, output
chunks other than the input's, parts, `--dtype`. numpy accumulates each lane in order in the
result type, and so does chunkwise: floats must equal numpy's bit for bit (NaN where numpy has
NaN), integers exactly (wrapping as numpy's do).

    check_cumulative.py CHUNKWISE_BINARY WORKDIR
"""
import os
import shutil
import subprocess
import sys

import numpy as np

cw, work = sys.argv[1:3]
rng = np.random.default_rng(11)
NUMPY = {"cumsum": lambda x, a, dt=None: np.cumsum(x, axis=a, dtype=dt),
         "cumprod": lambda x, a, dt=None: np.cumprod(x, axis=a, dtype=dt),
         "cummax": lambda x, a, dt=None: np.maximum.accumulate(x, axis=a, dtype=dt),
         "cummin": lambda x, a, dt=None: np.minimum.accumulate(x, axis=a, dtype=dt)}


def arrays():
    shape = (11, 9, 7)
    yield "uint8", rng.integers(0, 250, shape).astype(np.uint8)
    yield "uint16", rng.integers(0, 60000, shape).astype(np.uint16)
    yield "int16", rng.integers(-300, 300, shape).astype(np.int16)
    yield "int64", rng.integers(-2**40, 2**40, shape).astype(np.int64)
    yield "bool", rng.integers(0, 2, shape).astype(bool)
    f = rng.normal(1.0, 0.3, shape).astype(np.float32)
    f[rng.random(shape) < 0.04] = np.nan
    yield "float32", f
    yield "float64", rng.normal(0, 1e3, shape)


def load(store, tag):
    out = os.path.join(work, f"{tag}.npy")
    subprocess.run([cw, "export", store, "-o", out, "-q", "--overwrite"], check=True)
    return np.load(out)


failures, checked = [], 0
for name, x in arrays():
    src = os.path.join(work, f"{name}.npy")
    np.save(src, x)
    store = os.path.join(work, f"{name}.zarr")
    subprocess.run([cw, "convert", src, "-o", store, "--chunks", "4,3,5", "-q", "--overwrite"],
                   check=True)
    for op, f in NUMPY.items():
        for axis in range(3):
            want = f(x, axis)
            out = os.path.join(work, f"{name}-{op}-{axis}.zarr")
            extra = ["--chunks", "3,4,2"] if axis == 1 else []
            r = subprocess.run([cw, op, store, out, "--axis", str(axis), "-q", "--overwrite"]
                               + extra, capture_output=True, text=True)
            if r.returncode != 0:
                failures.append(f"{name} {op} axis {axis}: {r.stderr.strip()}")
                continue
            got = load(out, "got")
            checked += 1
            what = f"{name} {op} axis={axis}"
            if got.dtype != want.dtype or got.shape != want.shape:
                failures.append(f"{what}: {got.dtype}{got.shape}, numpy {want.dtype}{want.shape}")
            elif not np.array_equal(got, want, equal_nan=want.dtype.kind == "f"):
                bad = np.argwhere(~((got == want) | (np.isnan(got) & np.isnan(want))
                                    if want.dtype.kind == "f" else got == want))[:3]
                failures.append(f"{what}: differs at {bad.tolist()}: "
                                f"{[got[tuple(b)] for b in bad]} vs {[want[tuple(b)] for b in bad]}")
    # Parts, and --dtype.
    if name in ("uint16", "float32"):
        want = np.cumsum(x, axis=0)
        out = os.path.join(work, f"{name}-parts.zarr")
        shutil.rmtree(out, ignore_errors=True)
        for i in (2, 0, 1):
            subprocess.run([cw, "cumsum", store, out, "--axis", "0", "--partition", f"{i}/3",
                            "-q"], check=True)
        got = load(out, "parts")
        checked += 1
        if not np.array_equal(got, want, equal_nan=True):
            failures.append(f"{name} cumsum in 3 parts differs from numpy")
        out = os.path.join(work, f"{name}-f64.zarr")
        subprocess.run([cw, "cumsum", store, out, "--axis", "2", "--dtype", "float64", "-q",
                        "--overwrite"],
                       check=True)
        got = load(out, "f64")
        checked += 1
        want = np.cumsum(x, axis=2, dtype=np.float64)
        if got.dtype != np.float64 or not np.array_equal(got, want, equal_nan=True):
            failures.append(f"{name} cumsum --dtype float64 differs from numpy")

if failures:
    print("\n".join(failures))
    sys.exit(1)
print(f"cumulative: {checked} results equal numpy's")
