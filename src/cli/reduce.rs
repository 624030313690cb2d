//! `stats`, `histogram`, `where`, `graph`.

use std::path::PathBuf;

use chunkwise::support::human_bytes;
use chunkwise::{
    AxisStats, ChartOptions, Histogram, IndexOptions, Input, PartialResult, PartsFinish, PerChunk,
    ReduceOptions, Select, Stats, StatsAcc, ValueCounts,
};
use serde_json::{Value, json};

use super::{CliResult, Global, Outcome, say};

#[derive(Debug, clap::Args)]
pub(crate) struct StatsArgs {
    /// The array.
    store: PathBuf,
    /// Statistics per index along this axis (an array of results).
    #[arg(long, conflicts_with = "per_chunk")]
    axis: Option<usize>,
    /// Statistics of each chunk (ClearMap's block sums): region, count, sum, min, max.
    #[arg(long)]
    per_chunk: bool,
    /// Only this region (numpy slice syntax).
    #[arg(long, allow_hyphen_values = true, value_name = "SLICES")]
    region: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Write the result to OUT: the JSON document (.json), or with --axis or --per-chunk the
    /// table as a float64 .npy.
    #[arg(short, long, value_name = "OUT")]
    output: Option<PathBuf>,
    /// Replace an existing OUT.
    #[arg(long)]
    overwrite: bool,
    /// Do only part I of N (0 <= I < N) of the chunks; the last part to finish writes OUT
    /// (needs -o).
    #[arg(long, value_parser = super::job::parse_partition, value_name = "I/N")]
    partition: Option<(u32, u32)>,
}

fn opts(g: &Global, store: &Input, region: Option<&str>) -> chunkwise::Result<ReduceOptions> {
    Ok(ReduceOptions::default()
        .region(chunkwise::support::region_of(store, region)?)
        .threads(g.threads)
        .cancel(g.cancel.clone())
        .progress(g.progress()))
}

fn stat_row(s: &StatsAcc) -> Vec<f64> {
    let nan = f64::NAN;
    vec![
        s.count as f64,
        s.min().unwrap_or(nan),
        s.max().unwrap_or(nan),
        s.sum(),
        s.mean().unwrap_or(nan),
        s.std().unwrap_or(nan),
    ]
}

fn check_output(path: &std::path::Path, overwrite: bool) -> chunkwise::Result<()> {
    if path.exists() && !overwrite {
        return Err(chunkwise::Error::OutputExists(path.to_path_buf()));
    }
    Ok(())
}

/// What a reduction's result becomes: the JSON document, the table (for `.npy`), and the
/// line saying what was written.
struct Rendered {
    doc: Value,
    table: Option<Vec<Vec<f64>>>,
    what: String,
}

/// Runs reduction `r` whole or as a part (`--partition`), then writes its rendering to `out`
/// (or prints it).
#[allow(clippy::too_many_arguments)]
fn run_reduction<R: PartialResult>(
    store: &Input,
    r: &R,
    o: &ReduceOptions,
    out: Option<&std::path::Path>,
    overwrite: bool,
    partition: Option<(u32, u32)>,
    g: &Global,
    render: impl Fn(R::Acc) -> chunkwise::Result<Rendered>,
    print: impl FnOnce(R::Acc) -> CliResult,
) -> CliResult {
    let write =
        |acc: R::Acc, out: &std::path::Path, overwrite: bool| -> chunkwise::Result<String> {
            let r = render(acc)?;
            if out.extension().is_some_and(|e| e == "json") {
                let text = serde_json::to_string_pretty(&r.doc).expect("plain JSON");
                chunkwise::support::write_output(out, text.as_bytes(), overwrite)?;
            } else {
                let Some(table) = &r.table else {
                    return Err(chunkwise::Error::InvalidOption {
                        option: "-o",
                        reason: format!(
                            "{}: this result is a JSON document; name a .json file",
                            out.display()
                        ),
                    });
                };
                chunkwise::support::write_table(out, table, overwrite)?;
            }
            Ok(r.what)
        };
    if let Some(part) = partition {
        let Some(out) = out else {
            return Err(chunkwise::Error::InvalidOption {
                option: "--partition",
                reason: "the parts' results meet beside the output: give -o OUT".into(),
            }
            .into());
        };
        let mut what = String::new();
        let end = chunkwise::reduce_part(store, r, o, out, part, overwrite, |acc, out, ow| {
            what = write(acc, out, ow)?;
            Ok(())
        })?;
        if !g.quiet {
            match end {
                PartsFinish::Combined if what.is_empty() => say(format!(
                    "part {}/{} done; another part wrote {}",
                    part.0,
                    part.1,
                    out.display()
                ))?,
                PartsFinish::Combined => say(format!(
                    "wrote {} ({}; {} parts combined)",
                    out.display(),
                    what,
                    part.1
                ))?,
                PartsFinish::Waiting { done, total } => say(format!(
                    "part {}/{} done; {done} of {total} parts done, waiting for the others to write {}",
                    part.0,
                    part.1,
                    out.display()
                ))?,
            }
        }
        return Ok(Outcome::Ok);
    }
    let acc = chunkwise::reduce(store, r, o)?;
    match out {
        Some(out) => {
            let what = write(acc, out, overwrite)?;
            if !g.quiet {
                say(format!("wrote {}: {what}", out.display()))?;
            }
            Ok(Outcome::Ok)
        }
        None => print(acc),
    }
}

pub(crate) fn stats(a: StatsArgs, g: &Global) -> CliResult {
    let store = Input::open(&a.store)?;
    let o = opts(g, &store, a.region.as_deref())?;
    let out = a.output.as_deref();
    if let Some(out) = out {
        if a.axis.is_none() && !a.per_chunk && out.extension().is_none_or(|e| e != "json") {
            return Err(chunkwise::Error::InvalidOption {
                option: "-o",
                reason: format!(
                    "{}: whole-array statistics are a JSON document: name a .json file (a .npy \
                     table is for --axis A or --per-chunk)",
                    out.display()
                ),
            }
            .into());
        }
        check_output(out, a.overwrite)?;
    }
    let json_out = |doc: &Value| -> CliResult {
        say(serde_json::to_string_pretty(doc).expect("plain JSON"))?;
        Ok(Outcome::Ok)
    };
    if let Some(axis) = a.axis {
        if axis >= store.ndim() {
            return Err(chunkwise::Error::InvalidOption {
                option: "--axis",
                reason: format!(
                    "axis {axis} is out of range for {} dimensions",
                    store.ndim()
                ),
            }
            .into());
        }
        let region = chunkwise::support::region_of(&store, a.region.as_deref())?
            .unwrap_or_else(|| chunkwise::Region::full(store.shape()));
        let r = &region.ranges()[axis];
        let red = AxisStats {
            axis,
            len: (r.end - r.start) as usize,
            start: r.start,
        };
        let start = r.start;
        let render = |per: Vec<StatsAcc>| {
            Ok(Rendered {
                doc: json!({
                    "axis": axis,
                    "start": start,
                    "columns": ["count", "min", "max", "sum", "mean", "std"],
                    "stats": per.iter().map(StatsAcc::to_json).collect::<Vec<_>>(),
                }),
                table: Some(per.iter().map(stat_row).collect()),
                what: format!(
                    "statistics of {} planes along axis {axis} (columns count, min, max, sum, mean, std)",
                    per.len()
                ),
            })
        };
        return run_reduction(
            &store,
            &red,
            &o,
            out,
            a.overwrite,
            a.partition,
            g,
            render,
            |per| json_out(&render(per)?.doc),
        );
    }
    if a.per_chunk {
        let render = |per: Vec<chunkwise::ChunkStats>| {
            let doc = json!(
                per.iter()
                    .map(|c| {
                        let mut v = c.stats.to_json();
                        v["region"] = json!(
                            c.region
                                .ranges()
                                .iter()
                                .map(|r| [r.start, r.end])
                                .collect::<Vec<_>>()
                        );
                        v
                    })
                    .collect::<Vec<_>>()
            );
            let table: Vec<Vec<f64>> = per
                .iter()
                .map(|c| {
                    let mut row: Vec<f64> =
                        c.region.ranges().iter().map(|r| r.start as f64).collect();
                    row.extend(c.region.ranges().iter().map(|r| r.end as f64));
                    row.extend([
                        c.stats.count as f64,
                        c.stats.sum(),
                        c.stats.min().unwrap_or(f64::NAN),
                        c.stats.max().unwrap_or(f64::NAN),
                    ]);
                    row
                })
                .collect();
            Ok(Rendered {
                doc,
                table: Some(table),
                what: format!(
                    "{} chunks (columns start per axis, end per axis, count, sum, min, max)",
                    per.len()
                ),
            })
        };
        return run_reduction(
            &store,
            &PerChunk,
            &o,
            out,
            a.overwrite,
            a.partition,
            g,
            render,
            |per| json_out(&render(per)?.doc),
        );
    }
    let render = |s: StatsAcc| {
        Ok(Rendered {
            doc: s.to_json(),
            table: None,
            what: format!("statistics of {} values", s.count),
        })
    };
    let json = a.json;
    run_reduction(
        &store,
        &Stats,
        &o,
        out,
        a.overwrite,
        a.partition,
        g,
        render,
        |s| {
            if json {
                return json_out(&s.to_json());
            }
            let j = s.to_json();
            say(format!("count:  {}", s.count))?;
            if s.nan > 0 {
                say(format!(
                    "NaN:    {} (excluded from the figures below)",
                    s.nan
                ))?;
            }
            for k in ["min", "max", "sum", "mean", "std"] {
                // As numbers read: inf, NaN and big sums unquoted.
                let v = match &j[k] {
                    Value::String(t) => t.clone(),
                    Value::Null => "none".into(),
                    v => v.to_string(),
                };
                say(format!("{:<7} {v}", format!("{k}:")))?;
            }
            Ok(Outcome::Ok)
        },
    )
}

#[derive(Debug, clap::Args)]
pub(crate) struct HistogramArgs {
    /// The array.
    store: PathBuf,
    /// Number of equal bins (default: one per value for integers, 10 for floats).
    #[arg(long)]
    bins: Option<usize>,
    /// Range LO,HI (default: the data's min and max).
    #[arg(
        long,
        value_delimiter = ',',
        allow_hyphen_values = true,
        value_name = "LO,HI"
    )]
    range: Option<Vec<f64>>,
    /// Only this region (numpy slice syntax).
    #[arg(long, allow_hyphen_values = true, value_name = "SLICES")]
    region: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Write the edges and counts to OUT.json.
    #[arg(short, long, value_name = "OUT.json")]
    output: Option<PathBuf>,
    /// Replace an existing OUT.
    #[arg(long)]
    overwrite: bool,
    /// Do only part I of N (0 <= I < N) of the chunks; the last part to finish writes OUT
    /// (needs -o; a float array needs --range).
    #[arg(long, value_parser = super::job::parse_partition, value_name = "I/N")]
    partition: Option<(u32, u32)>,
    /// Draw the counts as a bar chart into PLOT.png or PLOT.svg (with the percentiles marked).
    #[arg(long, value_name = "PLOT.png|PLOT.svg")]
    plot: Option<PathBuf>,
    /// The chart's counts on a log scale.
    #[arg(long, requires = "plot")]
    log: bool,
    /// The percentiles the chart marks (0 to 100; "none" for none).
    #[arg(
        long,
        value_name = "Q,Q,...",
        default_value = "1,50,99",
        requires = "plot"
    )]
    percentiles: String,
    /// The chart's size in pixels, WxH.
    #[arg(long, value_name = "WxH", default_value = "800x500", requires = "plot")]
    plot_size: String,
}

/// The chart settings of `histogram --plot`, checked before the counting starts.
fn chart_options(a: &HistogramArgs) -> chunkwise::Result<Option<(PathBuf, ChartOptions)>> {
    let Some(plot) = &a.plot else {
        return Ok(None);
    };
    let percentiles = if a.percentiles.trim() == "none" {
        Vec::new()
    } else {
        a.percentiles
            .split(',')
            .map(|q| {
                q.trim()
                    .parse::<f64>()
                    .map_err(|_| chunkwise::Error::InvalidOption {
                        option: "--percentiles",
                        reason: format!("{q:?} is not a number (give Q,Q,... or none)"),
                    })
            })
            .collect::<chunkwise::Result<_>>()?
    };
    let bad_size = || chunkwise::Error::InvalidOption {
        option: "--plot-size",
        reason: format!("{:?}: give WxH, as 800x500", a.plot_size),
    };
    let (w, h) = a.plot_size.split_once('x').ok_or_else(bad_size)?;
    let (w, h) = (
        w.trim().parse().map_err(|_| bad_size())?,
        h.trim().parse().map_err(|_| bad_size())?,
    );
    let o = ChartOptions::default()
        .log(a.log)
        .percentiles(percentiles)
        .size(w, h)
        .title(format!(
            "histogram of {}",
            a.store.file_name().map_or_else(
                || a.store.display().to_string(),
                |n| n.to_string_lossy().into_owned()
            )
        ))
        .overwrite(a.overwrite);
    o.check(plot)?;
    Ok(Some((plot.clone(), o)))
}

/// The line that says what `--plot` drew.
fn chart_line(r: &chunkwise::ChartReport) -> String {
    let marks = r.marks();
    format!(
        "wrote {}: {} bars{}{}",
        r.path.display(),
        r.bars,
        if r.bins_per_bar > 1 {
            format!(" of {} bins each", r.bins_per_bar)
        } else {
            String::new()
        },
        if marks.is_empty() {
            String::new()
        } else {
            format!(", {marks}")
        }
    )
}

fn histogram_doc(h: &Histogram, counts: &[u64]) -> Rendered {
    Rendered {
        doc: json!({"edges": h.edges(), "counts": counts}),
        table: None,
        what: format!(
            "{} bins, {} values counted",
            counts.len(),
            counts.iter().sum::<u64>()
        ),
    }
}

pub(crate) fn histogram(a: HistogramArgs, g: &Global) -> CliResult {
    let store = Input::open(&a.store)?;
    let o = opts(g, &store, a.region.as_deref())?;
    let out = a.output.as_deref();
    if let Some(out) = out {
        check_output(out, a.overwrite)?;
    }
    let chart = chart_options(&a)?;
    // A chart drawn beside -o OUT (or by the part that writes it) is named in OUT's line.
    let plot = |h: &Histogram, counts: &[u64], mut r: Rendered| -> chunkwise::Result<Rendered> {
        if let Some((path, o)) = &chart {
            let c = chunkwise::histogram_chart(h, counts, path, o)?;
            r.what = format!(
                "{}; {}",
                r.what,
                chart_line(&c).replacen("wrote ", "chart ", 1)
            );
        }
        Ok(r)
    };
    let json = a.json;
    let chart_ref = &chart;
    let print = move |h: &Histogram, counts: &[u64]| -> CliResult {
        if let Some((path, o)) = chart_ref {
            let c = chunkwise::histogram_chart(h, counts, path, o)?;
            if !json {
                say(chart_line(&c))?;
                return Ok(Outcome::Ok);
            }
        }
        if json {
            say(
                serde_json::to_string_pretty(&json!({"edges": h.edges(), "counts": counts}))
                    .expect("plain JSON"),
            )?;
        } else {
            for (i, c) in counts.iter().enumerate() {
                say(format!(
                    "[{}, {}{} {c}",
                    h.edges()[i],
                    h.edges()[i + 1],
                    if i + 1 == counts.len() { "]" } else { ")" }
                ))?;
            }
        }
        Ok(Outcome::Ok)
    };
    let h = match (&a.range, a.bins) {
        (Some(r), bins) => {
            let [lo, hi] = r[..] else {
                return Err(chunkwise::Error::InvalidOption {
                    option: "--range",
                    reason: format!("give LO,HI, got {} values", r.len()),
                }
                .into());
            };
            Histogram::new(bins.unwrap_or(10), lo, hi)?
        }
        (None, None) if a.partition.is_some() && !store.dtype().is_float() => {
            // One bin per value over a range no part knows alone: the parts count values.
            let render = |c: chunkwise::Result<chunkwise::Counts>| {
                let (h, counts) = c?.histogram()?;
                plot(&h, &counts, histogram_doc(&h, &counts))
            };
            return run_reduction(
                &store,
                &ValueCounts,
                &o,
                out,
                a.overwrite,
                a.partition,
                g,
                render,
                // Not called: a run in parts writes its output.
                |_| Ok(Outcome::Ok),
            );
        }
        (None, _) if a.partition.is_some() => {
            return Err(chunkwise::Error::InvalidOption {
                option: "--partition",
                reason: format!(
                    "the bins must be known before the parts start: give --range LO,HI{}",
                    if store.dtype().is_float() {
                        " (a float array's default range is its data's)"
                    } else {
                        " with --bins"
                    }
                ),
            }
            .into());
        }
        (None, bins) => chunkwise::Histogram::auto(&store, bins, &o)?,
    };
    run_reduction(
        &store,
        &h,
        &o,
        out,
        a.overwrite,
        a.partition,
        g,
        |counts: Vec<u64>| plot(&h, &counts, histogram_doc(&h, &counts)),
        |counts| print(&h, &counts),
    )
}

/// The line of a part that is done while others have still to run.
fn waiting(r: &chunkwise::IndexReport, part: Option<(u32, u32)>) -> Option<String> {
    let (done, total) = r.waiting?;
    let (i, n) = part.unwrap_or((0, total));
    Some(format!(
        "part {i}/{n} done ({} rows in {:.2} s); {done} of {total} parts done, waiting for the \
         others to write {}",
        r.count,
        r.seconds,
        r.path
            .as_deref()
            .unwrap_or(std::path::Path::new("?"))
            .display()
    ))
}

#[derive(Debug, clap::Args)]
pub(crate) struct WhereArgs {
    /// The array.
    store: PathBuf,
    /// The .npy file of int64 coordinates (N, ndim) to write.
    #[arg(
        short,
        long,
        value_name = "COORDS.npy",
        required_unless_present = "count_only"
    )]
    output: Option<PathBuf>,
    /// Only count the selected voxels.
    #[arg(long)]
    count_only: bool,
    /// Select values > X instead of nonzero values.
    #[arg(long, allow_hyphen_values = true, value_name = "X")]
    above: Option<chunkwise::Number>,
    /// Select values < X (with --above: strictly between).
    #[arg(long, allow_hyphen_values = true, value_name = "X")]
    below: Option<chunkwise::Number>,
    /// Replace an existing output file.
    #[arg(long)]
    overwrite: bool,
    /// Do only part I of N (0 <= I < N) of the chunk layers; the last part to finish writes
    /// the one .npy.
    #[arg(long, value_parser = super::job::parse_partition, value_name = "I/N")]
    partition: Option<(u32, u32)>,
}

pub(crate) fn where_(a: WhereArgs, g: &Global) -> CliResult {
    let store = Input::open(&a.store)?;
    let o = IndexOptions::default()
        .select(Select::from_bounds(a.above, a.below))
        .threads(g.threads)
        .cancel(g.cancel.clone())
        .overwrite(a.overwrite)
        .partition(a.partition)
        .progress(g.progress());
    let out = if a.count_only {
        None
    } else {
        a.output.as_deref()
    };
    let r = chunkwise::where_coords(&store, out, &o)?;
    if let Some(w) = waiting(&r, a.partition) {
        if !g.quiet {
            say(w)?;
        }
        return Ok(Outcome::Ok);
    }
    if !g.quiet || out.is_none() {
        match &r.path {
            Some(p) => say(format!(
                "wrote {}: {} coordinates ({}) in {:.2} s",
                p.display(),
                r.count,
                human_bytes(r.bytes),
                r.seconds
            ))?,
            None => say(r.count)?,
        }
    }
    Ok(Outcome::Ok)
}

#[derive(Debug, clap::Args)]
pub(crate) struct GraphArgs {
    /// The array (nonzero voxels are the graph's vertices).
    store: PathBuf,
    /// The .npy file of int64 edges to write.
    #[arg(
        short,
        long,
        value_name = "EDGES.npy",
        required_unless_present = "count_only"
    )]
    output: Option<PathBuf>,
    /// Neighbours: 6, 18 or 26 in 3-D, 4 or 8 in 2-D, 2 in 1-D (default: all 3^ndim - 1).
    #[arg(long)]
    connectivity: Option<u32>,
    /// Write coordinate pairs (E, 2·ndim) instead of flat indices (E, 2).
    #[arg(long)]
    coords: bool,
    /// Only count the edges.
    #[arg(long)]
    count_only: bool,
    /// Vertices are values > X instead of nonzero values.
    #[arg(long, allow_hyphen_values = true, value_name = "X")]
    above: Option<chunkwise::Number>,
    /// Replace an existing output file.
    #[arg(long)]
    overwrite: bool,
    /// Do only part I of N (0 <= I < N) of the chunk layers; the last part to finish writes
    /// the one .npy.
    #[arg(long, value_parser = super::job::parse_partition, value_name = "I/N")]
    partition: Option<(u32, u32)>,
}

pub(crate) fn graph(a: GraphArgs, g: &Global) -> CliResult {
    let store = Input::open(&a.store)?;
    let o = IndexOptions::default()
        .select(Select::from_bounds(a.above, None))
        .threads(g.threads)
        .cancel(g.cancel.clone())
        .overwrite(a.overwrite)
        .partition(a.partition)
        .progress(g.progress());
    let out = if a.count_only {
        None
    } else {
        a.output.as_deref()
    };
    let r = chunkwise::graph_edges(&store, out, a.connectivity, a.coords, &o)?;
    if let Some(w) = waiting(&r, a.partition) {
        if !g.quiet {
            say(w)?;
        }
        return Ok(Outcome::Ok);
    }
    if !g.quiet || out.is_none() {
        match &r.path {
            Some(p) => say(format!(
                "wrote {}: {} edges ({}-connectivity, {}) in {:.2} s",
                p.display(),
                r.count,
                a.connectivity.unwrap_or_else(|| {
                    chunkwise::connectivities(store.ndim())
                        .last()
                        .copied()
                        .unwrap_or(0)
                }),
                human_bytes(r.bytes),
                r.seconds
            ))?,
            None => say(r.count)?,
        }
    }
    Ok(Outcome::Ok)
}
