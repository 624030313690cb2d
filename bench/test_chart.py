"""Tests of bench/chart.py's parser and charts: python -m pytest bench/test_chart.py

One handcrafted record of each results format; the parsed medians, min/max and peak RSS are
compared with numpy's figures computed from the record itself, and the SVG must hold one bar
(found by its gid) per implementation in each panel.
"""
import json
import os
import re
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import chart  # noqa: E402

MACHINE = "Test CPU x 2, 24 GiB RAM, Linux 6.18"

FLAT = {"work": "cumsum of V", "cw": [31.28, 30.72, 29.9], "dask": [38.17, 39.92], "cw_rss_mib": 226,
        "dask_rss_mib": 245, "ratio_dask_over_cw": 1.26, "cw_said": "two passes", "machine": MACHINE}
PREFIXED = {"work": "eval: E1: V*0.5 > 700; E2: sqrt(V**2)", "E1_cw": [8.03, 7.1, 8.61], "E1_dask": [13.51, 13.36, 13.04],
            "E2_cw": [23.5, 26.64, 26.26], "E2_dask": [26.75, 27.25, 27.92], "E1_cw_rss_mib": 70,
            "E1_dask_rss_mib": 222, "E2_cw_rss_mib": 114, "E2_dask_rss_mib": 165,
            "E1_ratio_dask_over_cw": 1.66, "machine": MACHINE}
SUFFIXED = {"work": "reduce --axis 0", "cw_max": [1.73, 1.94, 2.59], "dask_max": [3.45, 3.63, 3.88],
            "cw_max_rss_mib": 35, "dask_max_rss_mib": 111, "ratio_max_dask_over_cw": 1.87, "machine": MACHINE}
ROWS = {"date": "2026-11-22T01:51:02Z", "machine": MACHINE, "runs": 3, "rows": {
    "W3 chunkwise defaults": [{"seconds": 3.25, "peak_rss_mib": 866.1, "store_bytes": 1},
                              {"seconds": 3.17, "peak_rss_mib": 870.4, "store_bytes": 1},
                              {"seconds": 3.4, "peak_rss_mib": 860.0, "store_bytes": 1}],
    "W3 floor zstd3": [{"seconds": 6.29}, {"seconds": 6.25}, {"seconds": 6.31}],
    "W3 peer dask": [{"seconds": 16.56, "peak_rss_mib": 1570.0, "check": {"max_abs_err": 0.0}},
                     {"seconds": 16.34, "peak_rss_mib": 1568.0, "check": {"max_abs_err": 0.0}},
                     {"seconds": 16.9, "peak_rss_mib": 1575.5, "check": {"max_abs_err": 0.0}}],
    "W4 chunkwise defaults": [{"seconds": 1.33, "rss": 57.2}, {"seconds": 1.26, "rss": 58.9}],
    "W4 peer dask": [{"seconds": 4.94, "rss": 298.0}, {"seconds": 4.9, "rss": 301.5}]},
    "checks": {"W3": "vs dask: max |diff| 0.000732"}}
PIPES = {"date": "2026-12-02T02:04:19Z", "machine": MACHINE, "runs": 2, "versions": {"numpy": "2.4.6", "seconds": 0.1},
         "rows": {"c zstd-3 store | a[...]": [{"shape": [512, 1024, 1024], "seconds": 2.42, "wall_seconds": 3.0,
                                              "peak_rss_mib": 1076.0},
                                             {"shape": [512, 1024, 1024], "seconds": 2.07, "wall_seconds": 2.9,
                                              "peak_rss_mib": 1079.0}],
                  "c zstd-3 store | zarr-python [...]": [{"seconds": 2.52, "peak_rss_mib": 1154.0},
                                                        {"seconds": 2.61, "peak_rss_mib": 1150.0}]}}
PYRAMID = {"work": "4-level mean pyramid", "seconds": {"chunkwise": [5.82, 2.05, 1.72], "zarrs_ome mean": [12.13, 11.83, 11.52]},
           "peak_rss_mib": {"chunkwise": 67, "zarrs_ome mean": 197},
           "levels": {"chunkwise": [[512, 1024, 1024], [256, 512, 512]]}, "machine": MACHINE,
           "ratio_over_chunkwise": {"zarrs_ome mean": 5.77}}
NESTED = {"part": "c", "array": "8192x16384x16384 uint8", "threshold": {"seconds": 1.5, "us_per_chunk": 1.43, "peak_rss_mib": 31.7},
          "stats": {"seconds": 0.89, "us_per_chunk": 0.85, "peak_rss_mib": 19.6}, "machine": MACHINE}
WRITE = {"machine": MACHINE, "runs": [{"write_region_s": 1.05, "convert_s": 0.96, "bytes": 450074697},
                                      {"write_region_s": 1.11, "convert_s": 0.91, "bytes": 450074697},
                                      {"write_region_s": 1.02, "convert_s": 0.99, "bytes": 450074697}],
         "write_region_median_s": 1.05, "convert_median_s": 0.96, "ratio": 1.094}


def expected_flat(rec, prefix=""):
    """{label: (median, min, max, rss)} from a flat record, by numpy."""
    out = {}
    for k, v in rec.items():
        if isinstance(v, list) and k.startswith(prefix) and not k.startswith("ratio"):
            label = k[len(prefix):]
            rss = rec.get(k + "_rss_mib")
            out[label] = (np.median(v), np.min(v), np.max(v), None if rss is None else float(rss))
    return out


def expected_rows(rec, group):
    out = {}
    for k, runs in rec["rows"].items():
        g, impl = (k.split(" | ", 1) if " | " in k else k.split(" ", 1))
        if g != group:
            continue
        s = [r["seconds"] for r in runs]
        rss = [r.get("peak_rss_mib", r.get("rss")) for r in runs if ("peak_rss_mib" in r or "rss" in r)]
        out[impl] = (np.median(s), np.min(s), np.max(s), float(np.max(rss)) if rss else None)
    return out


def got(bars):
    return {b.label: (b.median, b.lo, b.hi, b.rss) for b in bars}


def same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        for x, y in zip(a[k], b[k]):
            assert (x is None and y is None) or x == pytest.approx(y, abs=1e-12), (k, a[k], b[k])


def test_flat():
    [(key, title, bars)] = chart.parse_record(FLAT, "cumulative")
    assert title == "cumsum of V"
    same(got(bars), expected_flat(FLAT))


def test_flat_prefixed_is_one_group_per_prefix():
    groups = chart.parse_record(PREFIXED, "eval")
    assert [t for _, t, _ in groups] == ["E1: V*0.5 > 700", "E2: sqrt(V**2)"]
    for (_, _, bars), p in zip(groups, ("E1_", "E2_")):
        same(got(bars), expected_flat(PREFIXED, p))


def test_flat_suffixed():
    [(_, _, bars)] = chart.parse_record(SUFFIXED, "project")
    same(got(bars), expected_flat(SUFFIXED))
    assert [chart.kind(b, "project") for b in bars] == ["cw", "peer"]


def test_rows_split_by_workload():
    groups = chart.parse_record(ROWS, "compute")
    assert [k[1] for k, _, _ in groups] == ["W3", "W4"]
    for (k, _, bars) in groups:
        same(got(bars), expected_rows(ROWS, k[1]))
    w3 = groups[0][2]
    assert [chart.kind(b, "compute") for b in w3] == ["cw", "floor", "peer"]
    assert w3[1].rss is None


def test_rows_with_pipes():
    [(key, _, bars)] = chart.parse_record(PIPES, "python")
    assert key[1] == "c zstd-3 store"
    same(got(bars), expected_rows(PIPES, "c zstd-3 store"))
    assert [chart.kind(b, "python") for b in bars] == ["cw", "peer"]


def test_pyramid_nested():
    [(_, _, bars)] = chart.parse_record(PYRAMID, "pyramid")
    exp = {k: (np.median(v), np.min(v), np.max(v), float(PYRAMID["peak_rss_mib"][k]))
           for k, v in PYRAMID["seconds"].items()}
    same(got(bars), exp)


def test_nested_single_measurements():
    [(_, title, bars)] = chart.parse_record(NESTED, "scale")
    assert title.startswith("part c: ")
    exp = {k: (NESTED[k]["seconds"],) * 3 + (NESTED[k]["peak_rss_mib"],) for k in ("threshold", "stats")}
    same(got(bars), exp)


def test_runs_of_dicts():
    [(_, _, bars)] = chart.parse_record(WRITE, "write")
    exp = {}
    for c in ("write_region", "convert"):
        v = [r[c + "_s"] for r in WRITE["runs"]]
        exp[c] = (np.median(v), np.min(v), np.max(v), None)
    same(got(bars), exp)


def test_nothing_to_chart_is_reported():
    assert chart.parse_record({"machine": MACHINE, "ratio": 1.2, "said": "x"}, "x") == []


def write_results(tmp_path, name, recs):
    d = tmp_path / "results"
    d.mkdir(exist_ok=True)
    p = d / (name + ".jsonl")
    p.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return p


def bar_ids(svg, panel):
    return re.findall(r'id="bar-%s-(\d+)-(\d+)"' % panel, svg)


@pytest.mark.parametrize("name,recs", [
    ("compute", [ROWS]), ("eval", [PREFIXED]), ("cumulative", [FLAT]), ("pyramid", [PYRAMID]),
    ("scale", [NESTED, SUFFIXED]), ("write", [WRITE]), ("python", [PIPES]),
])
def test_svg_has_one_bar_per_implementation(tmp_path, name, recs):
    p = write_results(tmp_path, name, recs)
    out = chart.render(str(p))
    assert out == str(tmp_path / "charts" / (name + ".svg"))
    groups = chart.parse_file(str(p))
    svg = open(out).read()
    n_bars = sum(len(g.bars) for g in groups)
    n_rss = sum(1 for g in groups for b in g.bars if b.rss is not None)
    assert len(bar_ids(svg, "secs")) == n_bars > 0
    assert len(bar_ids(svg, "rss")) == n_rss
    assert len(set(bar_ids(svg, "secs"))) == n_bars
    assert "<dc:date>" not in svg
    # deterministic: drawing again gives the same bytes
    first = open(out, "rb").read()
    chart.render(str(p))
    assert open(out, "rb").read() == first


def test_last_record_of_each_workload_is_drawn(tmp_path, capsys):
    old = dict(FLAT, cw=[99.0, 98.0])
    other = dict(FLAT, work="another workload", cw=[1.0, 2.0, 4.0])
    p = write_results(tmp_path, "cumulative", [old, other, {"machine": MACHINE}, FLAT, "not json"])
    p.write_text(p.read_text() + "{broken\n")
    groups = chart.parse_file(str(p))
    assert [g.title for g in groups] == ["cumsum of V", "another workload"]
    same(got(groups[0].bars), expected_flat(FLAT))
    same(got(groups[1].bars), expected_flat(other))
    err = capsys.readouterr().err
    assert "line 3 skipped: nothing to chart" in err
    assert "line 5 skipped" in err and "line 6 skipped: not JSON" in err


def test_at_most_max_groups(tmp_path):
    recs = [dict(FLAT, work="w%d" % i) for i in range(9)]
    p = write_results(tmp_path, "cumulative", recs)
    groups = chart.parse_file(str(p), max_groups=6)
    assert [g.title for g in groups] == ["w%d" % i for i in range(3, 9)]


def test_after_append_never_raises(tmp_path, capsys, monkeypatch):
    p = write_results(tmp_path, "cumulative", [FLAT])
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    chart.after_append(str(p))
    assert "pip install matplotlib" in capsys.readouterr().err
    assert not (tmp_path / "charts").exists()
