#!/usr/bin/env python3
"""Charts of the bench results: one SVG per bench/results/NAME.jsonl, as bench/charts/NAME.svg.

usage: python3 bench/chart.py [bench/results/NAME.jsonl | NAME ...]   (no argument: all of them)

Needs matplotlib (`pip install matplotlib` into the Python that runs the bench drivers). Each
chart has two horizontal bar panels: seconds (bar: median of the runs, whisker: min-max) and
peak RSS in MiB (the largest of the runs), one bar per implementation, grouped per workload.
A results file gets one line per bench run; the last line of each distinct workload is the one
drawn (at most the MAX_GROUPS most recently measured workloads of a file). Machine and date are
in the footnote.

Record formats read (one JSON object a line; whatever else a record holds is ignored):
- flat: `{"work": ..., "cw": [s, ...], "dask": [s, ...], "cw_rss_mib": m, ...}`; timing keys
  may carry a workload prefix (`E1_cw`, `E1_cw_rss_mib`) or a suffix (`cw_max`,
  `cw_max_rss_mib`); `ratio_*`, strings and other scalars are not drawn;
- rows: `{"date", "machine", "runs", "rows": {"LABEL": [{"seconds": s, "peak_rss_mib" or
  "rss": m, ...}, ...]}}`; a label `"W3 chunkwise defaults"` is workload W3, implementation
  "chunkwise defaults", and `"c floor | np.fromfile(...)"` is workload "c floor";
- nested per implementation: `{"seconds": {"impl": [s, ...]}, "peak_rss_mib": {"impl": m}}`,
  or `{"impl": {"seconds": s, "peak_rss_mib": m}, ...}`;
- `{"runs": [{"A_s": s, "B_s": s}, ...]}` (bench/write.py).
Records with nothing to draw are reported on stderr and skipped.

Bars: chunkwise in blue (an implementation label with the word "cw" or "chunkwise", or one of
CHUNKWISE_LABELS for files whose labels are chunkwise commands), floors (a label with the word
"floor", or "decode only": lower bounds, not peers) hatched, peers grey.

Drivers call `chart.after_append(path)` after appending a line: it never raises, so a missing
matplotlib costs the chart only (the results are already written).
"""
import json
import os
import re
import statistics
import sys
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
CHARTS = os.path.join(HERE, "charts")
MAX_GROUPS = 6

# Labels that name chunkwise commands though they carry no "cw"/"chunkwise" word, per file.
CHUNKWISE_LABELS = {
    "preview": {"preview", "reduce"},
    "python": {"a[...]"},
    "scale": {"one_process_2_threads", "two_parts_1_thread", "one_2threads",
              "two_parts_1thread", "s3_append", "threshold", "gaussian", "stats"},
    "write": {"write_region", "convert"},
}
# Keys whose list-of-numbers values are not timings.
NOT_TIMINGS = {"shape", "shapes", "chunks", "levels", "runs", "factors", "versions", "bytes"}
IDENTITY_KEYS = ("part", "work", "workload", "volume", "array", "server")

# What a workload token or a file stands for, in the group titles (from bench/RESULTS.md).
WORKLOADS = {
    "W1": "convert", "W2": "stats", "W3": "gaussian sigma 2", "W4": "lut", "W5": "append 64 slices",
    "W5-2nd": "append 64 slices again, onto the partial layer", "W5b": "concat 512 + 100 slices to a new store",
    "W5b-inplace": "concat in place", "W6": "where", "W7": "neighbourhood LUT",
}
FILE_WORKLOADS = {
    "w1": "W1: convert the 1 GiB volume (npy stack and raw file) to 128^3 chunks",
    "write": "Store::write_region of the W1 volume from memory against convert from .npy",
    "python": {"a": "W3 through a Python function (map_overlap of gaussian_filter)",
               "b": "cw.gaussian from Python and the CLI",
               "c": "the whole 1 GiB store read into numpy"},
}

CW_COLOUR, PEER_COLOUR, FLOOR_COLOUR = "#1f6fb4", "#9a9a9a", "#ffffff"


class Bar:
    """One implementation in one workload: seconds of its runs and its peak RSS (or None)."""

    def __init__(self, label, seconds, rss=None, full_label=None):
        self.label = label
        self.full_label = full_label or label
        self.seconds = list(seconds)
        self.median = statistics.median(self.seconds)
        self.lo = min(self.seconds)
        self.hi = max(self.seconds)
        self.rss = None if rss is None else float(rss)

    def __repr__(self):
        return "Bar(%r, median=%g, lo=%g, hi=%g, rss=%r)" % (self.label, self.median, self.lo,
                                                              self.hi, self.rss)


class Group:
    """One workload as measured in one record."""

    def __init__(self, key, title, bars, date=None, machine=None, runs=None):
        self.key, self.title, self.bars = key, title, bars
        self.date, self.machine, self.runs = date, machine, runs


def _is_num(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _num_list(v):
    return isinstance(v, list) and v and all(_is_num(x) for x in v)


def _secs(v):
    """A timing value: a number or a non-empty list of numbers, as a list; else None."""
    if _is_num(v):
        return [v]
    if _num_list(v):
        return list(v)
    return None


def _rss_of(d):
    for k in ("peak_rss_mib", "rss_mib", "rss"):
        if _is_num(d.get(k)):
            return d[k]
    return None


def _split_row_label(label):
    """'W3 chunkwise defaults' -> ('W3', 'chunkwise defaults'); 'c floor | np...' -> ('c floor', 'np...')."""
    if " | " in label:
        g, impl = label.split(" | ", 1)
        return g.strip(), impl.strip()
    m = re.match(r"^(W\d+[A-Za-z0-9-]*)\s+(.+)$", label)
    if m:
        return m.group(1), m.group(2)
    return None, label


def _parse_rows(rec, name):
    groups = {}
    for label, runs in rec["rows"].items():
        if not isinstance(runs, list):
            continue
        runs = [r for r in runs if isinstance(r, dict)]
        secs = [r["seconds"] for r in runs if _is_num(r.get("seconds"))]
        if not secs:
            continue
        rss = [x for x in (_rss_of(r) for r in runs) if x is not None]
        g, impl = _split_row_label(label)
        groups.setdefault(g, []).append(Bar(impl, secs, max(rss) if rss else None, label))
    out = []
    for g, bars in groups.items():
        out.append(((name, g), _row_title(g, name), bars))
    return out


def _row_title(g, name):
    names = FILE_WORKLOADS.get(name)
    if g is None:
        return names if isinstance(names, str) else name
    what = WORKLOADS.get(g)
    if what is None and isinstance(names, dict):
        what = names.get(g.split()[0])
    return "%s: %s" % (g, what) if what else g


def _identity(rec):
    return tuple((k, rec[k]) for k in IDENTITY_KEYS if isinstance(rec.get(k), str))


def _title(rec, name):
    what = next((rec[k] for k in ("work", "workload", "volume", "array") if isinstance(rec.get(k), str)), None)
    t = what or (FILE_WORKLOADS.get(name) if isinstance(FILE_WORKLOADS.get(name), str) else name)
    if isinstance(rec.get("part"), str):
        t = "part %s: %s" % (rec["part"], t)
    if isinstance(rec.get("server"), str):
        t += " (%s)" % rec["server"]
    return t


def _parse_flat(rec, name):
    """Top-level lists of seconds, `{"seconds": {impl: [...]}}` and `{impl: {"seconds": ...}}`."""
    bars = []
    for k, v in rec.items():
        if k.startswith("ratio") or k.endswith("_bytes") or k == "rows":
            continue
        if _num_list(v) and not k.endswith("_rss_mib") and k not in NOT_TIMINGS:
            label = k[:-2] if k.endswith("_s") else k
            rss = next((rec[r] for r in (k + "_rss_mib", label + "_rss_mib") if _is_num(rec.get(r))), None)
            bars.append(Bar(label, v, rss))
        elif k == "seconds" and isinstance(v, dict):
            rss_d = rec.get("peak_rss_mib") if isinstance(rec.get("peak_rss_mib"), dict) else {}
            for impl, s in v.items():
                s = _secs(s)
                if s:
                    bars.append(Bar(impl, s, rss_d.get(impl) if _is_num(rss_d.get(impl)) else None))
        elif isinstance(v, dict) and _secs(v.get("seconds")):
            bars.append(Bar(k, _secs(v["seconds"]), _rss_of(v)))
        elif k == "runs" and isinstance(v, list) and v and all(isinstance(r, dict) for r in v):
            cols = {}
            for r in v:
                for kk, x in r.items():
                    if kk.endswith("_s") and _is_num(x):
                        cols.setdefault(kk[:-2], []).append(x)
            bars.extend(Bar(c, s) for c, s in cols.items())
    if not bars:
        return []
    ident, title = _identity(rec), _title(rec, name)
    # A workload prefix on every timing key ("E1_cw", "E2_dask"): one group per prefix.
    pre = [re.match(r"^([A-Z]\d+)_(.+)$", b.label) for b in bars]
    if all(pre) and len({m.group(1) for m in pre}) > 1:
        out = {}
        for b, m in zip(bars, pre):
            b.full_label, b.label = b.label, m.group(2)
            out.setdefault(m.group(1), []).append(b)
        res = []
        for p, bs in out.items():
            what = rec.get("work") if isinstance(rec.get("work"), str) else ""
            sub = re.search(r"\b%s:\s*([^;]+)" % re.escape(p), what)
            res.append(((name, ident, p), "%s: %s" % (p, sub.group(1).strip()) if sub else "%s (%s)" % (p, title), bs))
        return res
    return [((name, ident), title, bars)]


def parse_record(rec, name):
    """Groups of one record: a list of (key, title, [Bar, ...]); [] if nothing to draw."""
    if not isinstance(rec, dict):
        return []
    if isinstance(rec.get("rows"), dict):
        return _parse_rows(rec, name)
    return _parse_flat(rec, name)


def _name(path):
    return os.path.splitext(os.path.basename(path))[0]


def parse_file(path, max_groups=MAX_GROUPS, warn=None):
    """The workloads to draw from a results file: the last record of each distinct workload,
    in order of first appearance; at most max_groups of them, the most recently measured."""
    warn = warn or sys.stderr
    name = _name(path)
    latest, order, last_seen = {}, [], {}
    with open(path) as f:
        lines = f.read().splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as e:
            print("chart: %s line %d skipped: not JSON (%s)" % (path, n, e), file=warn)
            continue
        parsed = parse_record(rec, name)
        if not parsed:
            keys = ", ".join(list(rec)[:8]) if isinstance(rec, dict) else type(rec).__name__
            print("chart: %s line %d skipped: nothing to chart (keys: %s)" % (path, n, keys), file=warn)
            continue
        for key, title, bars in parsed:
            if key not in latest:
                order.append(key)
            latest[key] = Group(key, title, bars, rec.get("date"), rec.get("machine"), rec.get("runs")
                                if _is_num(rec.get("runs")) else max(len(b.seconds) for b in bars))
            last_seen[key] = n
    keep = set(sorted(order, key=lambda k: last_seen[k])[-max_groups:]) if max_groups else set(order)
    dropped = [k for k in order if k not in keep]
    if dropped:
        print("chart: %s: %d older workloads not drawn (keeping the last %d)" % (path, len(dropped), max_groups),
              file=warn)
    return [latest[k] for k in order if k in keep]


def kind(bar, name):
    """'cw', 'floor' or 'peer': the colour rule."""
    words = set(re.split(r"[^a-z0-9]+", bar.full_label.lower()))
    if "floor" in words or "decode only" in bar.full_label.lower():
        return "floor"
    impl_words = set(re.split(r"[^a-z0-9]+", bar.label.lower()))
    if impl_words & {"cw", "chunkwise"} or bar.label in CHUNKWISE_LABELS.get(name, ()):
        return "cw"
    return "peer"


def _resolve(name_or_path):
    p = name_or_path
    if not os.path.exists(p) and os.sep not in p:
        base = p if p.endswith(".jsonl") else p + ".jsonl"
        p = os.path.join(RESULTS, os.path.basename(base))
    return os.path.abspath(p)


def default_out(path):
    """bench/results/NAME.jsonl -> bench/charts/NAME.svg; elsewhere: NAME.svg beside the file."""
    d = os.path.dirname(os.path.abspath(path))
    if os.path.basename(d) == "results":
        d = os.path.join(os.path.dirname(d), "charts")
    return os.path.join(d, _name(path) + ".svg")


def _short(s, n=44):
    return s if len(s) <= n else s[: n - 1] + "\u2026"


def _fmt_s(x):
    return "%.3g s" % x if x < 10 else "%.1f s" % x


def draw(groups, out, name, source=None):
    """Writes the SVG of groups (from parse_file) to out; returns out."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    from matplotlib.transforms import blended_transform_factory

    rc = {"svg.fonttype": "none", "svg.hashsalt": "chunkwise-bench", "font.size": 8,
          "axes.titlesize": 9, "font.family": "DejaVu Sans", "path.simplify": True}
    with matplotlib.rc_context(rc):
        # Rows top-down: a title row (or two, wrapped) per group, then one row per bar.
        rows, heads = [], []
        y = 0.0
        for gi, g in enumerate(groups):
            head = g.title
            if g.date or g.runs:
                head += "  [%s]" % ", ".join(x for x in (
                    g.date,
                    "%s run%s" % (g.runs, "" if g.runs == 1 else "s") if g.runs else None) if x)
            lines = textwrap.wrap(head, 110) or [""]
            y += 1.3 + 0.75 * (len(lines) - 1)
            heads.append((y, "\n".join(lines)))
            y += 0.3
            for bi, b in enumerate(g.bars):
                y += 1.0
                rows.append((y, gi, bi, b))
            y += 0.2
        n_rows = y
        labels = [_short(b.label) for _, _, _, b in rows]
        longest = max([len(s) for s in labels] + [10])
        width = 11.0
        height = 1.15 + 0.2 * n_rows
        fig, (ax_s, ax_m) = plt.subplots(1, 2, sharey=True, figsize=(width, height),
                                         gridspec_kw={"width_ratios": [1.25, 1]})
        left = min(0.42, (longest * 0.058 + 0.25) / width)
        fig.subplots_adjust(left=left, right=0.985, top=1 - 0.3 / height, bottom=0.75 / height,
                            wspace=0.06)
        ys = [r[0] for r in rows]
        colours = {"cw": CW_COLOUR, "peer": PEER_COLOUR, "floor": FLOOR_COLOUR}
        smax = max([b.hi for *_, b in rows] + [1e-9])
        mmax = max([b.rss or 0 for *_, b in rows] + [1e-9])
        for (yy, gi, bi, b) in rows:
            k = kind(b, name)
            style = dict(color=colours[k], edgecolor="#555555" if k != "cw" else CW_COLOUR,
                         linewidth=0.6, height=0.72, hatch="////" if k == "floor" else None)
            (bar,) = ax_s.barh([yy], [b.median], **style)
            bar.set_gid("bar-secs-%d-%d" % (gi, bi))
            ax_s.errorbar([b.median], [yy], xerr=[[b.median - b.lo], [b.hi - b.median]], fmt="none",
                          ecolor="#222222", elinewidth=0.7, capsize=2, capthick=0.7)
            ax_s.text(b.hi + smax * 0.012, yy, _fmt_s(b.median), va="center", fontsize=7)
            if b.rss is not None:
                (bar,) = ax_m.barh([yy], [b.rss], **style)
                bar.set_gid("bar-rss-%d-%d" % (gi, bi))
                ax_m.text(b.rss + mmax * 0.012, yy, "%.0f MiB" % b.rss, va="center", fontsize=7)
            else:
                ax_m.text(mmax * 0.012, yy, "not measured", va="center", fontsize=7, color="#888888")
        for ax, top, lab in ((ax_s, smax, "seconds (bar: median, whisker: min\u2013max)"),
                             (ax_m, mmax, "peak RSS, MiB")):
            ax.set_xlim(0, top * 1.18 if top > 1e-9 else 1)
            if top <= 1e-9:
                ax.set_xticks([])
            ax.set_xlabel(lab)
            ax.grid(axis="x", color="#e4e4e4", linewidth=0.6)
            ax.set_axisbelow(True)
            for s in ("top", "right"):
                ax.spines[s].set_visible(False)
            ax.tick_params(axis="y", length=0)
        ax_s.set_ylim(n_rows + 0.2, 0)
        ax_s.set_yticks(ys)
        ax_s.set_yticklabels(labels)
        tr = blended_transform_factory(fig.transFigure, ax_s.transData)
        for yy, text in heads:
            fig.text(0.01, yy, text, transform=tr, fontsize=8.5, fontweight="bold", va="bottom",
                     ha="left")
        for ax in (ax_s, ax_m):
            for yy, _ in heads:
                ax.axhline(yy + 0.1, color="#cccccc", linewidth=0.5)
        machines = sorted({g.machine for g in groups if g.machine})
        dates = sorted({g.date for g in groups if g.date})
        foot = "%s; machine: %s; %s" % (
            source or "bench/results/%s.jsonl" % name, "; ".join(machines) or "not recorded",
            ("date: " + ", ".join(dates)) if dates else "date not recorded in these results")
        fig.text(0.01, 0.06 / height, "\n".join(textwrap.wrap(foot, 170)), fontsize=6.5,
                 color="#555555", va="bottom")
        handles = [Patch(facecolor=CW_COLOUR, edgecolor=CW_COLOUR, label="chunkwise"),
                   Patch(facecolor=PEER_COLOUR, edgecolor="#555555", label="peers")]
        if any(kind(b, name) == "floor" for *_, b in rows):
            handles.append(Patch(facecolor=FLOOR_COLOUR, edgecolor="#555555", hatch="////", label="floor"))
        fig.legend(handles=handles, loc="upper right", ncol=len(handles), frameon=False, fontsize=7.5,
                   bbox_to_anchor=(0.985, 1.0))
        fig.suptitle("%s: seconds and peak RSS" % name, x=0.01, y=1 - 0.06 / height, ha="left",
                     va="top", fontsize=10, fontweight="bold")
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        fmt = os.path.splitext(out)[1].lstrip(".") or "svg"
        meta = {"Date": None, "Creator": "bench/chart.py"} if fmt == "svg" else {}
        if fmt == "png":
            meta = {"Software": None}
        fig.savefig(out, format=fmt, metadata=meta, dpi=110)
        plt.close(fig)
    return out


def render(name_or_path, out=None, warn=None):
    """Draws the chart of one results file (a path or a NAME of bench/results/NAME.jsonl);
    returns the chart's path, or None when the file has nothing to draw."""
    path = _resolve(name_or_path)
    groups = parse_file(path, warn=warn)
    if not groups:
        print("chart: %s: nothing to chart" % path, file=warn or sys.stderr)
        return None
    return draw(groups, out or default_out(path), _name(path), source=_show(path))


def _show(p):
    root = os.path.dirname(HERE)
    return os.path.relpath(p, root) if os.path.abspath(p).startswith(root + os.sep) else p


def after_append(path):
    """For the drivers, after a result line was appended: draws its chart, never raises."""
    try:
        out = render(path)
        if out:
            print("chart: %s" % _show(out), flush=True)
    except ImportError as e:
        print("chart: not drawn, %s (pip install matplotlib into %s); the results are in %s"
              % (e, sys.executable, path), file=sys.stderr)
    except Exception as e:  # a chart must not lose a benchmark run
        print("chart: not drawn for %s: %s: %s" % (path, type(e).__name__, e), file=sys.stderr)


def main(argv):
    paths = argv or sorted(os.path.join(RESULTS, f) for f in os.listdir(RESULTS) if f.endswith(".jsonl"))
    bad = 0
    for p in paths:
        out = render(p)
        if out:
            print(_show(out))
        else:
            bad += 1
    return 1 if bad and argv else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
