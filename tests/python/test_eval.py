"""COMPUTE §11: ``eval`` against numpy evaluating the same expression on the whole arrays.

Integer, bool and comparison results are bit-equal, and so are float results of + - * / // %
and of sqrt, floor, ceil, abs, minimum, maximum, where and clip (IEEE operations done in the
same types, in the same order); the other float functions (exp, log, sin, ..., **) are within
8 units in the last place of numpy's (numpy's SIMD implementations and the C library differ by
a few ulp). Where numpy gives float16 (a float function of a bool or 8-bit integer) chunkwise
gives float32, and the oracle is numpy on the input cast to float32 (COMPUTE §11.2).
"""

import os
import subprocess

import numpy as np
import pytest

import chunkwise as cw

DTYPES = ["bool", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64",
          "float32", "float64"]
SHAPE, CHUNKS = (9, 20, 30), (4, 16, 16)  # edge chunks, and chunks of two tiles

EXACT_FUNCS = {"sqrt", "floor", "ceil", "abs"}
FUNCS = ["abs", "sqrt", "exp", "log", "log10", "log1p", "expm1", "sin", "cos", "tan", "arcsin",
         "arccos", "arctan", "sinh", "cosh", "tanh", "floor", "ceil"]
NS = {f: getattr(np, f) for f in FUNCS + ["arctan2", "minimum", "maximum", "clip", "where"]}


def values(rng, dtype, small=False):
    """Values of every kind the type holds: its extremes, zero, and for floats NaN and inf."""
    dt = np.dtype(dtype)
    n = int(np.prod(SHAPE))
    if dt == np.bool_:
        return rng.integers(0, 2, SHAPE).astype(bool)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        if small:
            return rng.integers(0, 4, SHAPE).astype(dt)
        v = rng.integers(info.min, int(info.max) + 1, n, dtype=dt)
        v[: n // 2] = rng.integers(max(info.min, -50), 50, n // 2).astype(dt)
        v[:6] = [info.min, info.max, 0, 1, info.max - 1, info.min + (1 if info.min else 0)]
        return rng.permutation(v).reshape(SHAPE)
    if small:
        return rng.uniform(-3, 3, SHAPE).astype(dt)
    v = (rng.standard_normal(n) * 10).astype(dt)
    v[:8] = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 0.5]
    return rng.permutation(v).reshape(SHAPE)


def numpy_result(expr, arrays):
    with np.errstate(all="ignore"):
        r = eval(expr, {"__builtins__": {}}, {**NS, **arrays})  # noqa: S307 - the oracle
    return np.asarray(r)


def widen_float16(arrays, expr_funcs):
    """numpy's float16 results come out float32 in chunkwise: the oracle on float32 inputs."""
    return {k: (v.astype(np.float32) if v.dtype in (np.bool_, np.uint8, np.int8) else v)
            for k, v in arrays.items()} if expr_funcs else arrays


def ulps(a, b):
    """Units in the last place between float arrays of one type (NaN equal to NaN)."""
    it = {4: np.int32, 8: np.int64}[a.itemsize]

    def ordered(x):  # the float's rank among floats, as an integer
        i = x.view(it).astype(np.int64)
        return np.where(i < 0, np.int64(np.iinfo(it).min) - i, i)

    oa, ob = ordered(a), ordered(b)
    ua, ub = oa.astype(np.uint64), ob.astype(np.uint64)  # differences wrap exactly in uint64
    d = np.where(oa >= ob, ua - ub, ub - ua)
    return np.where(np.isnan(a) & np.isnan(b), 0, d)


def check(got, want, exact, what):
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype}, numpy {want.dtype}"
    assert got.shape == want.shape
    if want.dtype.kind != "f" or exact:
        np.testing.assert_array_equal(got, want, err_msg=what, strict=True)
        return
    assert np.array_equal(np.isnan(got), np.isnan(want)), f"{what}: NaN in other places"
    u = ulps(got, want)
    bad = u > 8
    if bad.any():
        i = np.argwhere(bad)[0]
        raise AssertionError(f"{what}: {u.max()} ulp at {tuple(i)}: {got[tuple(i)]!r} vs {want[tuple(i)]!r}")


def stores(tmp_path, arrays):
    out = {}
    for k, v in arrays.items():
        out[k] = cw.from_array(v, str(tmp_path / f"{k}.zarr"), chunks=CHUNKS)
    return out


def run(tmp_path, expr, arrays, dtype=None):
    out = tmp_path / f"out-{abs(hash((expr, dtype, tuple(v.dtype.str for v in arrays.values()))))}.zarr"
    r = cw.eval(expr, out=str(out), dtype=dtype, inputs=stores(tmp_path, arrays))
    return r[...]


def expect_float16_widened(want):
    return want.astype(np.float32) if want.dtype == np.float16 else want


BINARY = ["a + b", "a - b", "a * b", "a / b", "a // b", "a % b", "a < b", "a >= b", "a == b",
          "a != b", "a & b", "a | b", "a ^ b", "minimum(a, b)", "maximum(a, b)",
          "where(a > b, a, b)", "arctan2(a, b)", "a ** b"]


@pytest.mark.parametrize("ta", DTYPES)
def test_every_dtype_pair_and_operator(tmp_path, ta):
    """Every operator over every pair of input types (121 pairs x 18 operators): numpy's result
    type and values; where numpy refuses (bool - bool, & of floats), eval refuses too, before
    writing anything."""
    rng = np.random.default_rng(DTYPES.index(ta))
    for tb in DTYPES:
        a = values(rng, ta)
        for expr in BINARY:
            b = values(rng, tb, small=expr == "a ** b")
            arrays = {"a": a, "b": b}
            try:
                want = numpy_result(expr, arrays)
            except (TypeError, ValueError) as e:
                out = tmp_path / "refused.zarr"
                with pytest.raises((cw.InvalidOptionError, cw.KernelError)):
                    cw.eval(expr, out=str(out), a=a, b=b)
                assert not out.exists(), f"{expr} ({ta}, {tb}): numpy refuses ({e}); output left"
                continue
            exact = "arctan2" not in expr and "**" not in expr
            if "arctan2" in expr:
                want = expect_float16_widened(numpy_result(expr, widen_float16(arrays, True)))
            got = cw.eval(expr, out=str(tmp_path / f"{ta}-{tb}-{BINARY.index(expr)}.zarr"),
                          a=a, b=b)[...]
            check(got, want, exact, f"{expr} with a {ta}, b {tb}")


@pytest.mark.parametrize("t", DTYPES)
def test_functions_and_literals(tmp_path, t):
    """Every function on every type, unary operators, and Python literals, which are weak
    (NEP 50: uint8 + 1 is uint8, an integer array times 0.5 is float64)."""
    rng = np.random.default_rng(100 + DTYPES.index(t))
    a = values(rng, t)
    src = cw.from_array(a, str(tmp_path / "a.zarr"), chunks=CHUNKS)
    exprs = [f"{f}(a)" for f in FUNCS] + [
        "a + 1", "a * 0.5", "2 * a - 3", "a > 300", "a < -1", "a == 7", "-a", "~a", "+a",
        "a ** 2", "clip(a, 1, 5)", "where(a > 2, 1, 0)", "where(a > 2, a, 0.5)", "a * sqrt(2)",
        "a * (2 + 3) // 4", "a - 1.5e1", "(a != 0) & (a < 40)", "maximum(a, 3)", "a % 7",
        "a / 4", "True & (a > 1)", "where(a, 10, 20)",
    ]
    for i, expr in enumerate(exprs):
        out = tmp_path / f"f{i}.zarr"
        funcs = any(expr.startswith(f + "(") for f in FUNCS if f not in ("abs", "floor", "ceil"))
        try:
            want = numpy_result(expr, {"a": widen_float16({"a": a}, funcs)["a"]})
        except (TypeError, ValueError, OverflowError) as e:
            with pytest.raises((cw.InvalidOptionError, cw.KernelError)):
                cw.eval(expr, out=str(out), a=src)
            assert not out.exists(), f"{expr} ({t}): numpy refuses ({e}); output left"
            continue
        want = expect_float16_widened(want)
        exact = not funcs or expr.startswith("sqrt(")
        exact = exact and "**" not in expr
        got = cw.eval(expr, out=str(out), a=src)[...]
        check(got, want, exact, f"{expr} with a {t}")


def test_integer_overflow_wraps_and_dtype_casts(tmp_path):
    """Integer arithmetic wraps as numpy's does; --dtype is numpy's astype of the result."""
    a = np.arange(np.prod(SHAPE), dtype=np.uint8).reshape(SHAPE)
    b = (a[::-1] * 3).astype(np.uint8)
    with np.errstate(all="ignore"):
        want = a * b + a ** 3 - b
    got = cw.eval("a * b + a ** 3 - b", out=str(tmp_path / "w.zarr"), a=a, b=b)[...]
    check(got, want, True, "uint8 wrapping")
    i = np.arange(-60, -60 + np.prod(SHAPE), dtype=np.int16).reshape(SHAPE) * 300
    got = cw.eval("i * 7 // 3", out=str(tmp_path / "i.zarr"), i=i)[...]
    with np.errstate(all="ignore"):
        check(got, i * 7 // 3, True, "int16 wrapping")
    f = np.linspace(-3.7, 300.2, np.prod(SHAPE)).reshape(SHAPE).astype(np.float32)
    got = cw.eval("f * 2", out=str(tmp_path / "c.zarr"), dtype="int16", f=f)[...]
    check(got, (f * 2).astype(np.int16), True, "--dtype int16")
    got = cw.eval("f - 10", out=str(tmp_path / "b.zarr"), dtype="bool", f=f)[...]
    check(got, (f - 10).astype(bool), True, "--dtype bool")


def test_bad_input_names_the_problem_and_writes_nothing(tmp_path):
    a = np.zeros(SHAPE, np.uint16)
    out = tmp_path / "never.zarr"
    cases = [
        ("a + * 2", {"a": a}, "column 5"),
        ("sqrt(a", {"a": a}, "column 7"),
        ("a + c", {"a": a}, 'unknown name "c"; the inputs are a'),
        ("foo(a)", {"a": a}, 'unknown function "foo"'),
        ("a < a < a", {"a": a}, "chained comparisons"),
        ("a + 70000", {"a": a}, "70000 is out of bounds for uint16"),
        ("a + b", {"a": a, "b": np.zeros((9, 20, 31), np.uint16)}, "differ on axis 2: 30 vs 31"),
        ("a ** b", {"a": a.astype(np.int8), "b": a.astype(np.int8) - 1}, "negative integer power"),
        ("(a > 1) - (a > 2)", {"a": a}, "'-' between booleans"),
    ]
    for expr, arrays, msg in cases:
        with pytest.raises(cw.Error) as e:
            cw.eval(expr, out=str(out), **arrays)
        assert msg in str(e.value), f"{expr}: {e.value}"
        assert not out.exists(), f"{expr}: output left behind"
    with pytest.raises(cw.InvalidOptionError, match="no inputs"):
        cw.eval("1 + 2", out=str(out))


def test_cli_eval_matches_numpy_on_files_of_every_kind(tmp_path, chunkwise_bin):
    """The command: inputs given as NAME=PATH (a store and an .npy file), and its errors."""
    rng = np.random.default_rng(7)
    v = rng.integers(0, 1000, SHAPE).astype(np.uint16)
    w = rng.integers(0, 1000, SHAPE).astype(np.uint16)
    cw.from_array(v, str(tmp_path / "v.zarr"), chunks=CHUNKS)
    np.save(tmp_path / "w.npy", w)
    for expr in ["V*0.5 + W*0.5 > 700", "sqrt(V**2 + W**2)"]:
        out = tmp_path / "o.zarr"
        subprocess.run([chunkwise_bin, "eval", expr, "-o", str(out), "V=v.zarr", "W=w.npy",
                        "--overwrite", "-q"], cwd=tmp_path, check=True)
        with np.errstate(all="ignore"):
            want = eval(expr, {"sqrt": np.sqrt}, {"V": v, "W": w})  # noqa: S307 - the oracle
        check(cw.open(str(out))[...], want, True, f"CLI {expr}")
    p = subprocess.run([chunkwise_bin, "eval", "V +", "-o", "x.zarr", "V=v.zarr"], cwd=tmp_path,
                       capture_output=True, text=True)
    assert p.returncode != 0 and "column 4" in p.stderr and "V +" in p.stderr, p.stderr
    p = subprocess.run([chunkwise_bin, "eval", "V", "-o", "x.zarr", "V"], cwd=tmp_path,
                       capture_output=True, text=True)
    assert p.returncode != 0 and "NAME=INPUT" in p.stderr, p.stderr
    assert not os.path.exists(tmp_path / "x.zarr")
