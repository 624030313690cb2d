"""`chunkwise reduce --axis A --op OP` against numpy on the whole in-memory array (spec/REDUCE.md
§7): every op, every axis and pair of axes, every dtype, NaNs and infinities in floats, chunks
that do not divide the shape; the result's dtype must be numpy's, integers and booleans equal
exactly, floats within the rounding of a differently ordered sum (stated below).

    check_reduce_axes.py CHUNKWISE_BINARY WORKDIR
"""
import itertools
import os
import subprocess
import sys

import numpy as np
import zarr

cw, work = sys.argv[1:3]
rng = np.random.default_rng(7)
OPS = ["sum", "mean", "std", "var", "min", "max", "argmin", "argmax", "count_nonzero", "any",
       "all", "nansum", "nanmean", "nanstd", "nanmin", "nanmax"]
# float32 results: chunkwise accumulates in float64 and rounds once; numpy sums float32
# pairwise in float32, so the two differ by numpy's rounding (a few ulps of the sum).
RTOL = {np.dtype("float32"): 2e-5, np.dtype("float64"): 1e-11}


def numpy_op(x, op, axis, ddof):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if op == "count_nonzero":
            return np.asarray(np.count_nonzero(x, axis=axis))
        if op in ("argmin", "argmax"):
            return getattr(np, op)(x, axis=axis[0])
        f = getattr(np, op)
        if op in ("std", "var", "nanstd"):
            return f(x, axis=axis, ddof=ddof)
        return f(x, axis=axis)


def arrays():
    shape = (13, 10, 7)
    yield "uint8", rng.integers(0, 4, shape).astype(np.uint8)
    yield "uint16", rng.integers(0, 60000, shape).astype(np.uint16)
    yield "int16", rng.integers(-30000, 30000, shape).astype(np.int16)
    # The types' own extremes, which min and max alone fold in the array's type.
    i8 = rng.integers(-128, 128, shape).astype(np.int8)
    i8[2, 3, :] = -128
    i8[5, :, 2] = 127
    yield "int8", i8
    u32 = rng.integers(0, 2**32, shape, dtype=np.uint64).astype(np.uint32)
    u32[:, 4, 4] = 2**32 - 1
    u32[7, 1, :] = 0
    yield "uint32", u32
    i32 = rng.integers(-2**31, 2**31, shape).astype(np.int32)
    i32[0, :, 0] = -2**31
    yield "int32", i32
    yield "int64", rng.integers(-2**62, 2**62, shape).astype(np.int64)
    yield "uint64", rng.integers(2**62, 2**64 - 1, shape, dtype=np.uint64)
    yield "bool", rng.integers(0, 2, shape).astype(bool)
    f = rng.normal(100, 30, shape).astype(np.float32)
    f[rng.random(shape) < 0.05] = np.nan
    f[0, 0, :] = np.nan          # a whole lane of NaN: nanmin/nanmean give NaN
    f[1, 2, 3] = np.inf
    yield "float32", f
    d = rng.normal(0, 1e6, shape)
    d[rng.random(shape) < 0.03] = np.nan
    d[4, :, 1] = 0.0             # ties: argmin/argmax take the first
    yield "float64", d


failures = []
checked = 0
for name, x in arrays():
    src = os.path.join(work, f"{name}.npy")
    np.save(src, x)
    store = os.path.join(work, f"{name}.zarr")
    subprocess.run([cw, "convert", src, "-o", store, "--chunks", "4,3,5", "-q", "--overwrite"],
                   check=True)
    axes_list = [(0,), (1,), (2,), (0, 1), (1, 2), (0, 2)]
    for axes in axes_list:
        ops = [op for op in OPS if len(axes) == 1 or op not in ("argmin", "argmax")]
        ddof = 1 if axes == (1,) else 0
        out = os.path.join(work, f"{name}-{'-'.join(map(str, axes))}")
        r = subprocess.run([cw, "reduce", store, "--axis", ",".join(map(str, axes)),
                            "--op", ",".join(ops), "-o", out, "--ddof", str(ddof), "-q",
                            "--overwrite"], capture_output=True, text=True)
        if r.returncode != 0:
            failures.append(f"{name} axes {axes}: {r.stderr.strip()}")
            continue
        # The same ops into a Zarr group, written tile by tile as the tiles are done.
        zout = out + ".zarr"
        rz = subprocess.run([cw, "reduce", store, "--axis", ",".join(map(str, axes)),
                             "--op", ",".join(ops), "-o", zout, "--ddof", str(ddof), "-q",
                             "--overwrite"], capture_output=True, text=True)
        if rz.returncode != 0:
            failures.append(f"{name} axes {axes} to a group: {rz.stderr.strip()}")
            continue
        group = zarr.open_group(zout, mode="r")
        for op, where in [(op, "npy") for op in ops] + [(op, "zarr") for op in ops]:
            got = np.load(os.path.join(out, f"{op}.npy")) if where == "npy" else group[op][...]
            want = numpy_op(x, op, axes, ddof)
            checked += 1
            what = f"{name} {op} axis={axes} ({where})"
            if got.dtype != want.dtype or got.shape != want.shape:
                failures.append(f"{what}: {got.dtype}{got.shape}, numpy {want.dtype}{want.shape}")
            elif want.dtype.kind == "f":
                if not np.allclose(got, want, rtol=RTOL[want.dtype], atol=0, equal_nan=True):
                    bad = np.argwhere(~np.isclose(got, want, rtol=RTOL[want.dtype], atol=0,
                                                  equal_nan=True))[:3]
                    failures.append(f"{what}: differs at {bad.tolist()}: "
                                    f"{[got[tuple(b)] for b in bad]} vs "
                                    f"{[want[tuple(b)] for b in bad]}")
            elif not np.array_equal(got, want):
                bad = np.argwhere(got != want)[:3]
                failures.append(f"{what}: differs at {bad.tolist()}")
    # min and max alone (and min alone): the ops that need nothing else fold in the array's
    # own type for integers (src/project.rs, Extremes); every axis and pair.
    for axes in axes_list:
        for ops in (["min", "max"], ["min"]):
            out = os.path.join(work, f"{name}-ext-{len(ops)}-{'-'.join(map(str, axes))}")
            r = subprocess.run([cw, "reduce", store, "--axis", ",".join(map(str, axes)),
                                "--op", ",".join(ops), "-o", out, "-q", "--overwrite"],
                               capture_output=True, text=True)
            if r.returncode != 0:
                failures.append(f"{name} {ops} axes {axes}: {r.stderr.strip()}")
                continue
            for op in ops:
                got = np.load(out if len(ops) == 1 else os.path.join(out, f"{op}.npy"))
                want = numpy_op(x, op, axes, 0)
                checked += 1
                if got.dtype != want.dtype or not np.array_equal(got, want, equal_nan=x.dtype.kind == "f"):
                    failures.append(f"{name} {op} alone axis={axes}: {got.dtype} differs from numpy")
    # One op to one .npy, and to a store.
    one = os.path.join(work, f"{name}-max.npy")
    subprocess.run([cw, "reduce", store, "--axis", "0", "--op", "max", "-o", one, "-q"],
                   check=True)
    if not np.array_equal(np.load(one), np.max(x, axis=0), equal_nan=x.dtype.kind == "f"):
        failures.append(f"{name}: max to one .npy differs")
    one = os.path.join(work, f"{name}-max.zarr")
    subprocess.run([cw, "reduce", store, "--axis", "2", "--op", "max", "-o", one, "-q"],
                   check=True)
    z = zarr.open_array(one, mode="r")
    if z.chunks != (4, 3) or not np.array_equal(z[...], np.max(x, axis=2),
                                                equal_nan=x.dtype.kind == "f"):
        failures.append(f"{name}: max to one store differs (chunks {z.chunks})")
    checked += 2

# Empty reduced axis: sum is 0, mean NaN, any False, all True; max has no identity.
e = np.zeros((0, 4, 3), np.uint16)
np.save(os.path.join(work, "empty.npy"), e)
es = os.path.join(work, "empty.zarr")
r = subprocess.run([cw, "convert", os.path.join(work, "empty.npy"), "-o", es, "-q"],
                   capture_output=True, text=True)
if r.returncode != 0:
    failures.append(f"an empty array does not convert: {r.stderr.strip()}")
else:
    eo = os.path.join(work, "empty-out")
    r = subprocess.run([cw, "reduce", es, "--axis", "0", "--op", "sum,mean,any,all,count_nonzero",
                        "-o", eo, "-q"], capture_output=True, text=True)
    if r.returncode != 0:
        failures.append(f"empty axis: {r.stderr.strip()}")
    else:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            for op in ["sum", "mean", "any", "all", "count_nonzero"]:
                got = np.load(os.path.join(eo, f"{op}.npy"))
                want = numpy_op(e, op, (0,), 0)
                checked += 1
                if got.dtype != want.dtype or not np.array_equal(got, want, equal_nan=True):
                    failures.append(f"empty {op}: {got} ({got.dtype}), numpy {want} ({want.dtype})")
    r = subprocess.run([cw, "reduce", es, "--axis", "0", "--op", "max", "-o",
                        os.path.join(work, "e.npy"), "-q"], capture_output=True, text=True)
    if r.returncode == 0 or "no identity" not in r.stderr:
        failures.append(f"max over an empty axis must be refused: {r.returncode} {r.stderr}")

if failures:
    print("\n".join(failures))
    sys.exit(1)
print(f"reduce: {checked} results equal numpy's")
