//! `chunkwise pyramid INPUT -o OUT`: an OME-Zarr multiscale image (spec/PYRAMID.md).

use std::path::PathBuf;

use chunkwise::kernel::Downsample;
use chunkwise::{Durability, Error, Input, PyramidOptions, PyramidReport};
use serde_json::json;

use super::{CliResult, Global, Outcome, parse_size, say};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example: chunkwise pyramid brain.zarr -o brain.ome.zarr --voxel-size 2,0.5,0.5 \
                  --units micrometer,micrometer,micrometer   (mean pyramid, levels until the \
                  smallest downsampled axis would drop below one chunk)"
)]
pub(crate) struct Args {
    /// The array (anything chunkwise reads: a store, .npy/TIFF/raw files, an OME-Zarr level).
    input: PathBuf,
    /// The OME-Zarr image to write (a Zarr v3 group, e.g. brain.ome.zarr, or s3://bucket/brain.ome.zarr).
    #[arg(short, long, value_name = "OUT")]
    output: PathBuf,
    #[command(flatten)]
    pyramid: Flags,
    /// Axis names, e.g. z,y,x (default y,x / z,y,x / c,z,y,x / t,c,z,y,x).
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    axis_names: Option<Vec<String>>,
    /// Every level's chunk shape (default: 128 on each of the last three axes; clipped to
    /// each level).
    #[arg(long, value_delimiter = ',', value_name = "A,B,C")]
    chunks: Option<Vec<u64>>,
    /// Compressor: zstd, blosc-zstd, blosc-lz4 or pcodec (default as convert).
    #[arg(long, value_name = "NAME")]
    codec: Option<String>,
    /// Compression level.
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    level: Option<i32>,
    /// A label volume (integers, INPUT's shape) written as OUT/labels/NAME, a mode pyramid of
    /// the image's levels; NAME is the file's stem unless given as NAME=PATH (repeatable).
    #[arg(long, value_name = "[NAME=]PATH")]
    labels: Vec<String>,
    /// Replace an existing image (or array) at OUT.
    #[arg(long)]
    overwrite: bool,
    /// Memory held at once (e.g. 512MiB; default 256MiB).
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    memory: Option<u64>,
    /// Do not fsync before publishing (scratch data only).
    #[arg(long)]
    no_sync: bool,
    /// Build only part I (0-based) of N; N processes share one resumable build and the last
    /// one publishes (spec/PYRAMID.md §3).
    #[arg(long, value_parser = super::job::parse_partition, value_name = "I/N")]
    partition: Option<(u32, u32)>,
    /// Print the levels as JSON.
    #[arg(long)]
    json: bool,
}

/// The pyramid's settings, shared by `pyramid` and `convert --pyramid`.
#[derive(Debug, Default, clap::Args)]
pub(crate) struct Flags {
    /// How a level becomes the one below: mean, mode (labels), gaussian, nearest, min or max.
    #[arg(long, value_name = "METHOD")]
    pub method: Option<String>,
    /// Levels, level 0 included (default: until the smallest downsampled axis would drop
    /// below one chunk).
    #[arg(long, value_name = "N")]
    pub levels: Option<usize>,
    /// The factor per axis from each level to the next, e.g. 2,2,2 (default: 2 on space axes
    /// holding two chunks or more, 1 on an axis already coarser than the others).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "F,F,F",
        conflicts_with = "factors_per_level"
    )]
    pub factors: Option<Vec<u64>>,
    /// Factors for each level after the first, e.g. "1,2,2 2,2,2" (or repeat the flag).
    #[arg(long, value_name = "F,F,F ...", num_args = 1..)]
    pub factors_per_level: Vec<String>,
    /// Axis types: space, time, channel (default from the names: t time, c channel, others
    /// space).
    #[arg(long, value_delimiter = ',', value_name = "TYPES")]
    pub axis_types: Option<Vec<String>>,
    /// UDUNITS-2 units, one per axis (empty for none) or one per space axis, e.g.
    /// micrometer,micrometer,micrometer (default: the input's, e.g. an OME-TIFF's; `convert`
    /// without --pyramid records one per axis in the array's attributes).
    #[arg(long, value_delimiter = ',', value_name = "UNITS")]
    pub units: Option<Vec<String>>,
    /// Level 0's voxel size per axis, in the units, e.g. 2.0,0.5,0.5 (default: the input's,
    /// e.g. an OME-TIFF's physical sizes, else 1).
    #[arg(long, value_delimiter = ',', value_name = "S,S,S")]
    pub voxel_size: Option<Vec<f64>>,
    /// The image's name in its metadata (default: OUT's name).
    #[arg(long)]
    pub name: Option<String>,
}

impl Flags {
    /// Whether any that only a pyramid takes is given (`convert` takes them only with
    /// `--pyramid`; `--voxel-size` and `--units` it records in a plain array too).
    pub fn any(&self) -> bool {
        self.method.is_some()
            || self.levels.is_some()
            || self.factors.is_some()
            || !self.factors_per_level.is_empty()
            || self.axis_types.is_some()
            || self.name.is_some()
    }

    /// The library's options from these and the flags both commands share.
    pub fn options(
        self,
        axis_names: Option<Vec<String>>,
        chunks: Option<Vec<u64>>,
        codec: Option<&str>,
        level: Option<i32>,
    ) -> chunkwise::Result<PyramidOptions> {
        let method: Downsample = self.method.as_deref().unwrap_or("mean").parse()?;
        let factors = match self.factors {
            Some(f) => Some(vec![f]),
            None => factors_per_level(&self.factors_per_level)?,
        };
        let mut opts = PyramidOptions::default()
            .method(Some(method))
            .levels(self.levels)
            .factors(factors)
            .axis_names(axis_names)
            .axis_types(self.axis_types)
            .units(self.units)
            .voxel_size(self.voxel_size)
            .chunks(chunks)
            .level(level)
            .name(self.name);
        if let Some(c) = super::codec_from(codec)? {
            opts = opts.codec(c);
        }
        Ok(opts)
    }
}

/// The settings both commands take beside the pyramid's own: overwriting, memory, syncing,
/// threads, progress and cancellation.
pub(crate) fn with_run(
    opts: PyramidOptions,
    overwrite: bool,
    memory: Option<u64>,
    no_sync: bool,
    g: &Global,
) -> PyramidOptions {
    opts.overwrite(overwrite)
        .run(g.run())
        .memory(memory)
        .durability(if no_sync {
            Durability::NoSync
        } else {
            Durability::Sync
        })
}

fn factors_per_level(given: &[String]) -> chunkwise::Result<Option<Vec<Vec<u64>>>> {
    if given.is_empty() {
        return Ok(None);
    }
    let mut levels = Vec::new();
    for word in given.iter().flat_map(|g| g.split([' ', ';'])) {
        if word.trim().is_empty() {
            continue;
        }
        let f: Option<Vec<u64>> = word.split(',').map(|x| x.trim().parse().ok()).collect();
        levels.push(f.ok_or_else(|| Error::InvalidOption {
            option: "--factors-per-level",
            reason: format!("{word:?} is not a list of whole numbers like 1,2,2"),
        })?);
    }
    Ok(Some(levels))
}

pub(crate) fn run(a: Args, g: &Global) -> CliResult {
    super::hold_to(a.memory);
    let opts = a
        .pyramid
        .options(a.axis_names, a.chunks, a.codec.as_deref(), a.level)?;
    let opts = with_run(opts, a.overwrite, a.memory, a.no_sync, g).partition(a.partition);
    let input = Input::open(&a.input)?;
    let labels = a
        .labels
        .iter()
        .map(|l| {
            let (name, path) = label_name(l);
            Ok((name, Input::open(path)?))
        })
        .collect::<chunkwise::Result<Vec<_>>>()?;
    let named: Vec<(&str, &Input)> = labels.iter().map(|(n, i)| (n.as_str(), i)).collect();
    let r = chunkwise::pyramid_with_labels(&input, &named, &a.output, &opts)?;
    if a.json {
        say(serde_json::to_string_pretty(&to_json(&r)).expect("plain JSON"))?;
    } else if !g.quiet {
        say(summary(&r, &input))?;
    }
    Ok(Outcome::Ok)
}

/// `NAME=PATH`, or `PATH` named by its file's stem (`cells.npy`, `cells.zarr` → cells).
pub(crate) fn label_name(arg: &str) -> (String, &str) {
    if let Some((name, path)) = arg.split_once('=')
        && !name.is_empty()
        && !name.contains('/')
    {
        return (name.to_string(), path);
    }
    let file = std::path::Path::new(arg.trim_end_matches('/'))
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = [
        ".ome.zarr",
        ".zarr",
        ".npy",
        ".tiff",
        ".tif",
        ".raw",
        ".h5",
        ".hdf5",
    ]
    .iter()
    .find_map(|ext| file.strip_suffix(ext))
    .unwrap_or(&file)
    .to_string();
    (stem, arg)
}

fn levels_json(levels: &[chunkwise::PyramidLevel]) -> Vec<serde_json::Value> {
    levels
        .iter()
        .map(|l| {
            json!({
                "path": l.path, "shape": l.shape, "chunks": l.chunks, "factor": l.factor,
                "scale": l.scale,
            })
        })
        .collect()
}

pub(crate) fn to_json(r: &PyramidReport) -> serde_json::Value {
    json!({
        "path": r.path,
        "method": r.method.name(),
        "levels": levels_json(&r.levels),
        "labels": r.labels.iter().map(|(n, l)| json!({"name": n, "levels": levels_json(l)}))
            .collect::<Vec<_>>(),
        "chunks_written": r.chunks_written,
        "chunks_resumed": r.chunks_resumed,
        "waiting": r.waiting,
        "already_done": r.already_done,
        "bytes_in": r.bytes_in,
        "decodes": r.decodes,
        "seconds": r.seconds,
    })
}

pub(crate) fn summary(r: &PyramidReport, input: &Input) -> String {
    if r.already_done {
        return format!(
            "{}: already this pyramid (the same settings); nothing to do",
            r.path.display()
        );
    }
    if r.waiting {
        return format!(
            "{}: this part is done ({} chunks in {:.1} s), waiting for the other partitions",
            r.path.display(),
            r.chunks_written,
            r.seconds
        );
    }
    let shapes: Vec<String> = r
        .levels
        .iter()
        .map(|l| chunkwise::support::fmt_shape(&l.shape))
        .collect();
    let mut s = format!(
        "wrote {}: {} pyramid of {} level{} ({}) from {} in {:.1} s, {} chunks",
        r.path.display(),
        r.method.name(),
        r.levels.len(),
        if r.levels.len() == 1 { "" } else { "s" },
        shapes.join(", "),
        input.describe(),
        r.seconds,
        r.chunks_written
    );
    if r.chunks_resumed > 0 {
        s.push_str(&format!(
            " ({} level-0 chunks resumed from a run before)",
            r.chunks_resumed
        ));
    }
    if !r.labels.is_empty() {
        let names: Vec<&str> = r.labels.iter().map(|l| l.0.as_str()).collect();
        s.push_str(&format!("; labels/ {} (mode)", names.join(", ")));
    }
    if r.decodes > 1 {
        s.push_str(&format!(
            "; input chunks decoded up to {} times each (they do not fit the pyramid's chunks: \
             convert with --chunks {} first to read each once)",
            r.decodes,
            r.levels[0]
                .chunks
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    s
}
