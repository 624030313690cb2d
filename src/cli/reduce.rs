//! `stats`, `histogram`, `where`, `graph`.

use std::path::PathBuf;

use chunkwise::support::human_bytes;
use chunkwise::{
    AxisStats, Histogram, IndexOptions, Input, PerChunk, ReduceOptions, Select, Stats, StatsAcc,
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
    /// With --axis or --per-chunk: write the table to OUT (.npy float64 table, or .json).
    #[arg(short, long, value_name = "OUT")]
    output: Option<PathBuf>,
    /// Replace an existing OUT.
    #[arg(long)]
    overwrite: bool,
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

/// Writes the table whole (`.json`: the document; otherwise a float64 `.npy`), never over a
/// file that appeared since [`check_output`] without `overwrite`.
fn write_out(
    path: &std::path::Path,
    table: &[Vec<f64>],
    doc: &Value,
    overwrite: bool,
) -> chunkwise::Result<()> {
    if path.extension().is_some_and(|e| e == "json") {
        let text = serde_json::to_string_pretty(doc).expect("plain JSON");
        chunkwise::support::write_output(path, text.as_bytes(), overwrite)
    } else {
        chunkwise::support::write_table(path, table, overwrite)
    }
}

pub(crate) fn stats(a: StatsArgs, g: &Global) -> CliResult {
    let store = Input::open(&a.store)?;
    let o = opts(g, &store, a.region.as_deref())?;
    if let Some(out) = &a.output {
        if a.axis.is_none() && !a.per_chunk {
            return Err(chunkwise::Error::InvalidOption {
                option: "-o",
                reason: format!(
                    "{}: -o writes a table, of --axis A or --per-chunk statistics; give one (the \
                     whole-array statistics print, or --json)",
                    out.display()
                ),
            }
            .into());
        }
        check_output(out, a.overwrite)?;
    }
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
        let per = chunkwise::reduce(&store, &red, &o)?;
        let doc = json!({
            "axis": axis,
            "start": r.start,
            "columns": ["count", "min", "max", "sum", "mean", "std"],
            "stats": per.iter().map(StatsAcc::to_json).collect::<Vec<_>>(),
        });
        match &a.output {
            Some(out) => {
                write_out(
                    out,
                    &per.iter().map(stat_row).collect::<Vec<_>>(),
                    &doc,
                    a.overwrite,
                )?;
                if !g.quiet {
                    say(format!(
                        "wrote {}: statistics of {} planes along axis {axis} (columns count, min, max, sum, mean, std)",
                        out.display(),
                        per.len()
                    ))?;
                }
            }
            None => say(serde_json::to_string_pretty(&doc).expect("plain JSON"))?,
        }
        return Ok(Outcome::Ok);
    }
    if a.per_chunk {
        let per = chunkwise::reduce(&store, &PerChunk, &o)?;
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
        match &a.output {
            Some(out) => {
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
                write_out(out, &table, &doc, a.overwrite)?;
                if !g.quiet {
                    say(format!(
                        "wrote {}: {} chunks (columns start per axis, end per axis, count, sum, min, max)",
                        out.display(),
                        per.len()
                    ))?;
                }
            }
            None => say(serde_json::to_string_pretty(&doc).expect("plain JSON"))?,
        }
        return Ok(Outcome::Ok);
    }
    let s = chunkwise::reduce(&store, &Stats, &o)?;
    if a.json {
        say(serde_json::to_string_pretty(&s.to_json()).expect("plain JSON"))?;
    } else {
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
    }
    Ok(Outcome::Ok)
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
}

pub(crate) fn histogram(a: HistogramArgs, g: &Global) -> CliResult {
    let store = Input::open(&a.store)?;
    let o = opts(g, &store, a.region.as_deref())?;
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
        (None, bins) => chunkwise::Histogram::auto(&store, bins, &o)?,
    };
    let counts = chunkwise::reduce(&store, &h, &o)?;
    if a.json {
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
}

pub(crate) fn where_(a: WhereArgs, g: &Global) -> CliResult {
    let store = Input::open(&a.store)?;
    let o = IndexOptions::default()
        .select(Select::from_bounds(a.above, a.below))
        .threads(g.threads)
        .cancel(g.cancel.clone())
        .overwrite(a.overwrite)
        .progress(g.progress());
    let out = if a.count_only {
        None
    } else {
        a.output.as_deref()
    };
    let r = chunkwise::where_coords(&store, out, &o)?;
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
}

pub(crate) fn graph(a: GraphArgs, g: &Global) -> CliResult {
    let store = Input::open(&a.store)?;
    let o = IndexOptions::default()
        .select(Select::from_bounds(a.above, None))
        .threads(g.threads)
        .cancel(g.cancel.clone())
        .overwrite(a.overwrite)
        .progress(g.progress());
    let out = if a.count_only {
        None
    } else {
        a.output.as_deref()
    };
    let r = chunkwise::graph_edges(&store, out, a.connectivity, a.coords, &o)?;
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
