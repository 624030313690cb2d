//! `chunkwise append`, `concat` and `stack`: growing arrays by linking chunks and editing
//! metadata (spec/APPEND.md).

use std::io::Write;
use std::path::PathBuf;

use chunkwise::support::human_bytes;
use chunkwise::{DType, Durability, GridLayout, GrowOptions, GrowReport, Input, RawOptions};
use serde_json::json;

use super::{CliResult, Global, Outcome, parse_size, say};

/// Flags shared by the three commands.
#[derive(Debug, clap::Args)]
pub(crate) struct Common {
    /// Grid along the axis: auto (regular unless that re-encodes more than one layer of stored
    /// data), regular (every reader), or rectilinear (zarr-extensions; any lengths join).
    #[arg(long, default_value = "auto", value_name = "LAYOUT")]
    layout: String,
    /// Wait for another writer's lock instead of failing.
    #[arg(long)]
    wait: bool,
    /// Do not fsync before committing (scratch data only).
    #[arg(long)]
    no_sync: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// How often an in-place append records its finished layers, so that a rerun after a kill
    /// skips them (seconds; 0: after every layer).
    #[arg(
        long,
        default_value_t = 2.0,
        value_name = "SECS",
        allow_negative_numbers = true
    )]
    checkpoint_secs: f64,
}

#[derive(Debug, clap::Args)]
pub(crate) struct AppendArgs {
    /// The array to grow (in place).
    store: PathBuf,
    /// What to append: anything `convert` reads (a directory of .npy or TIFF slices, files, a
    /// raw file with --dtype/--shape or a JSON sidecar), or stores. A slice without the axis
    /// (one dimension fewer) is one row along it.
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<PathBuf>,
    /// The axis to grow along.
    #[arg(long, default_value_t = 0)]
    axis: usize,
    /// Convert input of another type (widening casts only: no value may change).
    #[arg(long)]
    cast: bool,
    /// Append even if the array's last edit appended these same inputs (otherwise a rerun of
    /// a finished append says "already done").
    #[arg(long)]
    again: bool,
    /// Element type of raw input.
    #[arg(long, value_name = "T")]
    dtype: Option<String>,
    /// Shape of raw input.
    #[arg(long, value_delimiter = ',', value_name = "Z,Y,X")]
    shape: Option<Vec<u64>>,
    /// The series of an OME-TIFF input to read (default 0).
    #[arg(long, value_name = "N")]
    series: Option<usize>,
    /// Input held in memory at once when encoding a layer (default 256MiB).
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    memory: Option<u64>,
    /// Do part I of N of the new layers (0 <= I < N); the last part to finish commits
    /// (spec/SCALE.md §1). Parts run at once or one after another, anywhere the store is.
    #[arg(long, value_parser = super::job::parse_partition, value_name = "I/N")]
    partition: Option<(u32, u32)>,
    /// For an OME-Zarr image with label images: the new slices of label image NAME
    /// (`labels/NAME`; NAME is the file's stem unless given as NAME=PATH), one for each label
    /// image, grown in the same commit (repeatable; spec/PYRAMID.md §6).
    #[arg(long, value_name = "[NAME=]PATH")]
    labels: Vec<String>,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ConcatArgs {
    /// The arrays to join, in order.
    #[arg(required = true, value_name = "STORE")]
    inputs: Vec<PathBuf>,
    /// The array to create.
    #[arg(short, long, value_name = "OUT", conflicts_with = "into")]
    output: Option<PathBuf>,
    /// Join onto the end of this array, in place (it comes first).
    #[arg(long, value_name = "STORE")]
    into: Option<PathBuf>,
    /// The axis to join along.
    #[arg(long, default_value_t = 0)]
    axis: usize,
    /// Move the inputs' chunk files instead of linking them (the inputs are removed).
    #[arg(long = "move")]
    move_inputs: bool,
    /// Replace an existing OUT.
    #[arg(long)]
    overwrite: bool,
    /// Join even if the last edit of --into was this same join.
    #[arg(long)]
    again: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, clap::Args)]
pub(crate) struct StackArgs {
    /// The arrays to stack (same shape, type, codecs and chunks), in order.
    #[arg(required = true, value_name = "STORE")]
    inputs: Vec<PathBuf>,
    /// The array to create.
    #[arg(short, long, value_name = "OUT")]
    output: PathBuf,
    /// Move the inputs' chunk files instead of linking them (the inputs are removed).
    #[arg(long = "move")]
    move_inputs: bool,
    /// Replace an existing OUT.
    #[arg(long)]
    overwrite: bool,
    #[command(flatten)]
    common: Common,
}

fn options(c: &Common, g: &Global) -> chunkwise::Result<GrowOptions> {
    Ok(GrowOptions::default()
        .layout(c.layout.parse::<GridLayout>()?)
        .wait(c.wait)
        .durability(if c.no_sync {
            Durability::NoSync
        } else {
            Durability::Sync
        })
        .checkpoint_secs(c.checkpoint_secs)
        .threads(g.threads)
        .cancel(g.cancel.clone())
        .progress(g.progress()))
}

pub(crate) fn append(a: AppendArgs, g: &Global) -> CliResult {
    let dtype = a.dtype.as_deref().map(str::parse::<DType>).transpose()?;
    let opts = options(&a.common, g)?
        .axis(a.axis)
        .cast(a.cast)
        .again(a.again)
        .memory(a.memory)
        .partition(a.partition);
    // Stores are joined one by one (their chunks linked where they fit); files as `convert`
    // reads them, together (several slices stack into rows).
    let raw = RawOptions {
        dtype,
        shape: a.shape,
        series: a.series,
    };
    let inputs = if a.inputs.iter().all(|p| chunkwise::is_store(p)) && raw == RawOptions::default()
    {
        a.inputs
            .iter()
            .map(Input::open)
            .collect::<chunkwise::Result<Vec<_>>>()?
    } else {
        vec![Input::open_all(&a.inputs, &raw)?]
    };
    let labels = a
        .labels
        .iter()
        .map(|l| {
            let (name, path) = super::pyramid::label_name(l);
            Ok((name, vec![Input::open(path)?]))
        })
        .collect::<chunkwise::Result<Vec<_>>>()?;
    let named: Vec<(&str, &[Input])> = labels
        .iter()
        .map(|(n, i)| (n.as_str(), i.as_slice()))
        .collect();
    let r = chunkwise::append_with_labels(&a.store, &inputs, &named, &opts)?;
    report(&r, &a.common, g, "appended to")
}

pub(crate) fn concat(a: ConcatArgs, g: &Global) -> CliResult {
    let opts = options(&a.common, g)?
        .axis(a.axis)
        .move_inputs(a.move_inputs)
        .overwrite(a.overwrite)
        .again(a.again);
    let r = match (&a.output, &a.into) {
        (Some(out), None) => chunkwise::concat(&a.inputs, out, &opts)?,
        (None, Some(into)) => chunkwise::concat_into(into, &a.inputs, &opts)?,
        _ => {
            return Err(chunkwise::Error::InvalidOption {
                option: "-o/--into",
                reason: "give the output (-o OUT) or the array to join onto (--into STORE)".into(),
            }
            .into());
        }
    };
    report(&r, &a.common, g, "joined into")
}

pub(crate) fn stack(a: StackArgs, g: &Global) -> CliResult {
    let opts = options(&a.common, g)?
        .move_inputs(a.move_inputs)
        .overwrite(a.overwrite);
    let r = chunkwise::stack(&a.inputs, &a.output, &opts)?;
    report(&r, &a.common, g, "stacked into")
}

fn report(r: &GrowReport, c: &Common, g: &Global, verb: &str) -> CliResult {
    for w in &r.warnings {
        let _ = writeln!(std::io::stderr(), "chunkwise: warning: {w}");
    }
    if c.json {
        say(serde_json::to_string_pretty(&json!({
            "path": r.path,
            "old_shape": r.old_shape,
            "shape": r.shape,
            "grid": r.grid,
            "chunks_linked": r.chunks_linked,
            "chunks_encoded": r.chunks_encoded,
            "layers_reencoded": r.layers_reencoded,
            "layers_resumed": r.layers_resumed,
            "bytes_written": r.bytes_written,
            "exchanged": r.exchanged,
            "already_done": r.already_done,
            "parts_waiting": r.parts_waiting.map(|(done, total)| json!({"done": done, "parts": total})),
            "warnings": r.warnings,
            "levels": r.levels,
            "seconds": r.seconds,
        }))
        .expect("plain JSON"))?;
    } else if r.already_done {
        say(match &r.old_shape {
            Some(old) => format!(
                "{}: already done ({} -> {}; the last edit was this same command; --again repeats it)",
                r.path.display(),
                chunkwise::support::fmt_shape(old),
                chunkwise::support::fmt_shape(&r.shape),
            ),
            None => format!(
                "{}: already done ({}, joined from these same inputs; --overwrite rebuilds it)",
                r.path.display(),
                chunkwise::support::fmt_shape(&r.shape),
            ),
        })?;
    } else if let Some((total, _)) = r.parts_waiting.filter(|(d, t)| d == t) {
        say(format!(
            "part done; all {total} parts of the append to {} done, committed by another part",
            r.path.display()
        ))?;
    } else if let Some((done, total)) = r.parts_waiting {
        say(format!(
            "part done; {done} of {total} parts of the append to {} done, waiting for the others \
             (the last to finish commits; `chunkwise status {}` shows them)",
            r.path.display(),
            r.path.display()
        ))?;
    } else if !g.quiet {
        let from = r
            .old_shape
            .as_deref()
            .map(|s| format!("{} -> ", chunkwise::support::fmt_shape(s)))
            .unwrap_or_default();
        say(format!(
            "{verb} {}: {from}{} ({} grid), {} chunks linked, {} encoded ({}), {} written in {:.2} s{}",
            r.path.display(),
            chunkwise::support::fmt_shape(&r.shape),
            r.grid,
            r.chunks_linked,
            r.chunks_encoded,
            match r.layers_reencoded {
                0 => "no stored data re-encoded".to_string(),
                1 => "1 layer of stored data re-encoded".to_string(),
                n => format!("{n} layers of stored data re-encoded"),
            },
            human_bytes(r.bytes_written),
            r.seconds,
            if r.exchanged {
                " (directory rebuilt from links and exchanged)".to_string()
            } else if r.layers_resumed > 0 {
                format!(
                    " (resumed: kept {} layer{} a killed run had finished)",
                    r.layers_resumed,
                    if r.layers_resumed == 1 { "" } else { "s" }
                )
            } else {
                String::new()
            },
        ))?;
        if r.levels.len() > 1 {
            let shapes: Vec<String> = r
                .levels
                .iter()
                .map(|s| chunkwise::support::fmt_shape(s))
                .collect();
            say(format!("levels now {}", shapes.join(", ")))?;
        }
    }
    Ok(Outcome::Ok)
}
