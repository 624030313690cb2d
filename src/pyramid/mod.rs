//! `pyramid`: an OME-Zarr multiscale image of any input, every level in one pass
//! (spec/PYRAMID.md). Level-0 chunks are read in depth-first order of the pyramid's tree of
//! chunks; each is written, downsampled into its piece of its parent chunk, and a parent whose
//! last child has arrived is written and downsampled in turn.
//!
//! Invariant: level L + 1 is computed from level L's values (never from the input again);
//! every input voxel is read once; memory holds the chunks in flight and the parents still
//! waiting for children (a few per level and worker, in depth-first order), never a level.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use rayon::prelude::*;
use serde_json::json;

use crate::copy::{Side, c_strides};
use crate::dtype::Scalar;
use crate::error::{Error, Result};
use crate::grid::{Grid, default_chunks};
use crate::input::Input;
use crate::kernel::{Downsample, downsample_into};
use crate::ome::{Image, ImageAxis, ImageLevel, check_axes, default_axes, default_kind};
use crate::progress::{Tracker, Unit};
use crate::region::{Region, fmt_shape};
use crate::run::{DEFAULT_MEMORY, RunOptions, run_setters, with_threads};
use crate::source::Source;
use crate::store::{Codec, Durability, Finish, JobOptions, JobState, JobWriter, StoreSpec};
use crate::with_scalar;

mod gaussian;
mod output;
mod status;

use gaussian::{gaussian_level, level_published, lower_levels_lock};
use output::{Dest, Work, check_output, check_remote_output, publish_remote, published_as};
pub use status::pyramid_status;

/// The most levels a pyramid may have.
pub const MAX_LEVELS: usize = 32;

/// Settings of [`pyramid`]; build with [`PyramidOptions::default`] and the setters.
///
/// ```no_run
/// use chunkwise::{Input, PyramidOptions};
/// let opts = PyramidOptions::default()
///     .levels(Some(4))
///     .voxel_size(Some(vec![2.0, 0.5, 0.5]))
///     .units(Some(vec!["micrometer".into(); 3]));
/// let r = chunkwise::pyramid(&Input::open("brain.zarr")?, "brain.ome.zarr".as_ref(), &opts)?;
/// println!("{} levels", r.levels.len());
/// # Ok::<(), chunkwise::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct PyramidOptions {
    method: Option<Downsample>,
    levels: Option<usize>,
    factors: Option<Vec<Vec<u64>>>,
    axis_names: Option<Vec<String>>,
    axis_types: Option<Vec<String>>,
    units: Option<Vec<String>>,
    voxel_size: Option<Vec<f64>>,
    chunks: Option<Vec<u64>>,
    codec: Option<Codec>,
    level: Option<i32>,
    name: Option<String>,
    overwrite: bool,
    partition: Option<(u32, u32)>,
    run: RunOptions,
}

run_setters!(PyramidOptions);

impl PyramidOptions {
    /// How a block becomes one voxel of the level below (default [`Downsample::Mean`]).
    pub fn method(mut self, m: Option<Downsample>) -> Self {
        self.method = m;
        self
    }
    /// How many levels, level 0 included (default: until the smallest downsampled axis would
    /// drop below one chunk).
    pub fn levels(mut self, n: Option<usize>) -> Self {
        self.levels = n;
        self
    }
    /// The factor per axis from each level to the next: one list for every level, or one list
    /// per level after the first (default: 2 on space axes, see spec/PYRAMID.md §1).
    pub fn factors(mut self, f: Option<Vec<Vec<u64>>>) -> Self {
        self.factors = f;
        self
    }
    /// The axes' names (default `y,x`, `z,y,x`, `c,z,y,x`, `t,c,z,y,x`).
    pub fn axis_names(mut self, n: Option<Vec<String>>) -> Self {
        self.axis_names = n;
        self
    }
    /// The axes' types (`space`, `time`, `channel`; default from the names).
    pub fn axis_types(mut self, t: Option<Vec<String>>) -> Self {
        self.axis_types = t;
        self
    }
    /// UDUNITS-2 units, one per axis (an empty one: none) or one per space axis.
    pub fn units(mut self, u: Option<Vec<String>>) -> Self {
        self.units = u;
        self
    }
    /// Level 0's voxel size per axis, in the units (default 1).
    pub fn voxel_size(mut self, v: Option<Vec<f64>>) -> Self {
        self.voxel_size = v;
        self
    }
    /// Every level's chunk shape (default chunkwise's; clipped to each level's shape).
    pub fn chunks(mut self, c: Option<Vec<u64>>) -> Self {
        self.chunks = c;
        self
    }
    /// The compression codec (default: as `convert`).
    pub fn codec(mut self, c: Codec) -> Self {
        self.codec = Some(c);
        self
    }
    /// The codec's level.
    pub fn level(mut self, l: Option<i32>) -> Self {
        self.level = l;
        self
    }
    /// The image's name in its metadata.
    pub fn name(mut self, n: Option<String>) -> Self {
        self.name = n;
        self
    }
    /// Replace an existing image (or array) at the output path.
    pub fn overwrite(mut self, on: bool) -> Self {
        self.overwrite = on;
        self
    }
    /// Builds only part `i` of `n` (`--partition I/N`): the trees of chunks under the `i`-th
    /// of `n` ranges of top-level layers. N processes share one build; the last to finish
    /// publishes the image (PYRAMID §3).
    pub fn partition(mut self, part: Option<(u32, u32)>) -> Self {
        self.partition = part;
        self
    }
}

/// One level of a written pyramid.
#[derive(Debug, Clone, PartialEq)]
pub struct PyramidLevel {
    /// Its array, relative to the image (`"0"`, `"1"`, ...).
    pub path: String,
    /// Its shape.
    pub shape: Vec<u64>,
    /// Its chunk shape.
    pub chunks: Vec<u64>,
    /// The factor per axis from the level above (all 1 for level 0).
    pub factor: Vec<u64>,
    /// Its voxel size per axis.
    pub scale: Vec<f64>,
}

/// What [`pyramid`] did.
#[derive(Debug, Clone)]
pub struct PyramidReport {
    /// The image written.
    pub path: PathBuf,
    /// The method.
    pub method: Downsample,
    /// The levels, finest first.
    pub levels: Vec<PyramidLevel>,
    /// The label images written (`labels/NAME`), each with its levels.
    pub labels: Vec<(String, Vec<PyramidLevel>)>,
    /// Chunks written over all levels (chunks all zero are not stored).
    pub chunks_written: u64,
    /// Level-0 chunks a killed or failed run had done, not computed again (PYRAMID §2).
    pub chunks_resumed: u64,
    /// Bytes of input read.
    pub bytes_in: u64,
    /// The most times one input chunk was decoded (1 when the input's chunks fit the reads).
    pub decodes: u64,
    /// Seconds taken.
    pub seconds: f64,
    /// A part (`--partition`) that finished while others have not: nothing is published yet.
    pub waiting: bool,
    /// OUT already held this pyramid (the same settings: a part or run before published it),
    /// and nothing was done.
    pub already_done: bool,
}

/// The levels' geometry, before anything is written.
#[derive(Debug, Clone)]
struct Plan {
    grids: Vec<Grid>,
    /// The chunk shape asked for (each level's is this clipped to its shape).
    chunk: Vec<u64>,
    factors: Vec<Vec<u64>>,
    scales: Vec<Vec<f64>>,
    translations: Vec<Option<Vec<f64>>>,
    axes: Vec<ImageAxis>,
    method: Downsample,
}

impl Plan {
    fn levels(&self) -> usize {
        self.grids.len()
    }

    /// The levels as the report lists them.
    fn level_list(&self) -> Vec<PyramidLevel> {
        (0..self.levels())
            .map(|l| PyramidLevel {
                path: l.to_string(),
                shape: self.grids[l].shape().to_vec(),
                chunks: self.grids[l].chunk_shape().to_vec(),
                factor: self.factors[l].clone(),
                scale: self.scales[l].clone(),
            })
            .collect()
    }

    /// Level 0 alone (the one pass of a gaussian pyramid).
    fn first_level(&self) -> Plan {
        Plan {
            grids: self.grids[..1].to_vec(),
            chunk: self.chunk.clone(),
            factors: self.factors[..1].to_vec(),
            scales: self.scales[..1].to_vec(),
            translations: self.translations[..1].to_vec(),
            axes: self.axes.clone(),
            method: self.method,
        }
    }

    /// The box of level `l - 1` chunks under chunk `p` of level `l`.
    fn children(&self, l: usize, p: &[u64]) -> Vec<std::ops::Range<u64>> {
        let (up, down) = (&self.grids[l], &self.grids[l - 1]);
        (0..p.len())
            .map(|k| {
                let span = up.chunk_shape()[k] * self.factors[l][k];
                let c = down.chunk_shape()[k];
                let lo = p[k] * span / c;
                let hi = ((p[k] + 1) * span).min(down.shape()[k]).div_ceil(c);
                lo..hi
            })
            .collect()
    }

    /// The chunk of level `l + 1` over chunk `j` of level `l`.
    fn parent(&self, l: usize, j: &[u64]) -> Vec<u64> {
        let (down, up) = (&self.grids[l], &self.grids[l + 1]);
        (0..j.len())
            .map(|k| j[k] * down.chunk_shape()[k] / (up.chunk_shape()[k] * self.factors[l + 1][k]))
            .collect()
    }

    /// Chunk `idx` of level `l` as a region of level 0.
    fn footprint(&self, l: usize, idx: &[u64]) -> Region {
        let mut r = self.grids[l].chunk_region(idx);
        for m in (1..=l).rev() {
            let shape = self.grids[m - 1].shape();
            r = Region::new(
                r.ranges()
                    .iter()
                    .enumerate()
                    .map(|(k, x)| {
                        let f = self.factors[m][k];
                        (x.start * f).min(shape[k])..(x.end * f).min(shape[k])
                    })
                    .collect(),
            );
        }
        r
    }

    /// Level `l`'s chunks under chunk `idx` of level `top`, depth first, appended to `out`.
    fn depth_first(&self, top: usize, idx: &[u64], l: usize, out: &mut Vec<Vec<u64>>) {
        if top == l {
            out.push(idx.to_vec());
            return;
        }
        for j in crate::grid::indices_in(&self.children(top, idx)) {
            self.depth_first(top - 1, &j, l, out);
        }
    }
}

/// The number of chunk indices in a box.
fn box_len(b: &[std::ops::Range<u64>]) -> u64 {
    b.iter().map(|r| r.end - r.start).product()
}

/// Writes `input` as an OME-Zarr 0.5 image at `out`: level 0 a copy of the input, each level
/// below it the level above downsampled by `method` (spec/PYRAMID.md). Nothing appears at `out`
/// until every level is written.
///
/// ```no_run
/// use chunkwise::{Input, PyramidOptions};
/// let r = chunkwise::pyramid(
///     &Input::open("volume.zarr")?,
///     "volume.ome.zarr".as_ref(),
///     &PyramidOptions::default(),
/// )?;
/// for l in &r.levels {
///     println!("{}: {:?}", l.path, l.shape);
/// }
/// # Ok::<(), chunkwise::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidOption`] for factors, levels, axes, units or chunks that do not fit the
/// input (naming the option and the values); [`Error::OutputExists`] without `overwrite`;
/// the errors of reading the input and writing arrays. Nothing is written on an error.
pub fn pyramid(input: &Input, out: &Path, opts: &PyramidOptions) -> Result<PyramidReport> {
    pyramid_with_labels(input, &[], out, opts)
}

/// [`pyramid`], with label images: each `(name, labels)` is written to `OUT/labels/NAME` as an
/// OME-Zarr label image (`image-label`, listed in `OUT/labels`' `labels`): a mode pyramid of
/// the same levels, factors, scales and translations as the image (spec/PYRAMID.md §1.1). A
/// label volume has the image's shape and an integer type.
///
/// # Errors
/// As [`pyramid`]; [`Error::InvalidOption`] (`labels`) for a name that is empty, repeated or
/// not one path component, and for labels of another shape or a non-integer type.
pub fn pyramid_with_labels(
    input: &Input,
    labels: &[(&str, &Input)],
    out: &Path,
    opts: &PyramidOptions,
) -> Result<PyramidReport> {
    let opts = &input_defaults(input, opts);
    with_threads(opts.run.threads, || {
        let plan = plan(input.shape(), opts)?;
        let mut label_plans = Vec::new();
        for (k, &(name, lab)) in labels.iter().enumerate() {
            check_label(input, labels, k)?;
            // The image's geometry exactly: its factors level by level, as many levels.
            let lopts = PyramidOptions {
                method: Some(Downsample::Mode),
                levels: Some(plan.levels()),
                factors: Some(plan.factors[1..].to_vec()),
                ..opts.clone()
            };
            let lp = if plan.levels() == 1 {
                PyramidOptions {
                    factors: None,
                    ..lopts
                }
            } else {
                lopts
            };
            label_plans.push((name, lab, self::plan(lab.shape(), &lp)?));
        }
        build(input, &label_plans, out, opts, &plan)
    })
}

/// Refuses label `k` of `labels` unless it fits the image `input` (spec/PYRAMID.md §1.1).
fn check_label(input: &Input, labels: &[(&str, &Input)], k: usize) -> Result<()> {
    let (name, lab) = labels[k];
    let bad = |reason: String| Err(Error::option("labels", format!("{name:?}: {reason}")));
    let mut parts = Path::new(name).components();
    if name.is_empty()
        || name.starts_with('.')
        || !matches!(
            (parts.next(), parts.next()),
            (Some(std::path::Component::Normal(_)), None)
        )
    {
        return bad(
            "a label image's name is one path component (like cells), not empty, \
                    hidden or a path"
                .into(),
        );
    }
    if labels[..k].iter().any(|(n, _)| *n == name) {
        return bad("two label images of this name".into());
    }
    if lab.shape() != input.shape() {
        return bad(format!(
            "{} is {}; labels have the image's shape, {}",
            lab.describe(),
            fmt_shape(lab.shape()),
            fmt_shape(input.shape())
        ));
    }
    if lab.dtype().is_float() {
        return bad(format!(
            "{} is {}; OME-Zarr label images are integers (convert it with --dtype uint32, \
             say)",
            lab.describe(),
            lab.dtype()
        ));
    }
    Ok(())
}

/// The options with what the input records filling those not given (PYRAMID §1): its axis
/// names (when they make OME-Zarr axes), its voxel size, and its units on the axes whose type
/// takes one.
fn input_defaults(input: &Input, opts: &PyramidOptions) -> PyramidOptions {
    let mut o = opts.clone();
    let nd = input.ndim();
    if o.axis_names.is_none()
        && let Some(names) = input.axis_names()
    {
        let axes: Vec<ImageAxis> = names
            .iter()
            .enumerate()
            .map(|(k, n)| ImageAxis {
                name: n.clone(),
                kind: Some(match &o.axis_types {
                    Some(t) if t.len() == nd => t[k].clone(),
                    _ => default_kind(n).to_string(),
                }),
                unit: None,
            })
            .collect();
        if check_axes(&axes).is_ok() {
            o.axis_names = Some(names);
        }
    }
    let Some(v) = input.voxel_size().filter(|v| v.size.len() == nd) else {
        return o;
    };
    if o.voxel_size.is_none() {
        o.voxel_size = Some(v.size.clone());
    }
    if o.units.is_none() && v.units.iter().any(Option::is_some) {
        let names: Vec<String> = match &o.axis_names {
            Some(n) => n.clone(),
            None => default_axes(nd).into_iter().map(|(n, _)| n).collect(),
        };
        let kind = |k: usize| match &o.axis_types {
            Some(t) if t.len() == nd => t[k].clone(),
            _ => names
                .get(k)
                .map_or("space", |n| default_kind(n))
                .to_string(),
        };
        o.units = Some(
            (0..nd)
                .map(|k| match (&v.units[k], kind(k).as_str()) {
                    (Some(u), "space" | "time") => u.clone(),
                    _ => String::new(),
                })
                .collect(),
        );
    }
    o
}

/// The pyramid's geometry from the options (spec/PYRAMID.md §1).
fn plan(shape: &[u64], opts: &PyramidOptions) -> Result<Plan> {
    let nd = shape.len();
    let defaults = default_axes(nd);
    let names: Vec<String> = match &opts.axis_names {
        Some(n) => n.clone(),
        None if defaults.is_empty() => {
            return Err(Error::option(
                "axis-names",
                format!(
                    "an OME-Zarr image has 2 to 5 axes (2 or 3 of them space); this array \
                     has {nd} ({})",
                    fmt_shape(shape)
                ),
            ));
        }
        None => defaults.iter().map(|(n, _)| n.clone()).collect(),
    };
    let per_axis = |option: &'static str, n: usize| -> Result<()> {
        if n == nd {
            Ok(())
        } else {
            Err(Error::option(
                option,
                format!(
                    "{n} given for a {nd}-D array ({}): give one per axis",
                    fmt_shape(shape)
                ),
            ))
        }
    };
    per_axis("axis-names", names.len())?;
    let kinds: Vec<String> = match &opts.axis_types {
        Some(t) => {
            per_axis("axis-types", t.len())?;
            t.clone()
        }
        None => names.iter().map(|n| default_kind(n).to_string()).collect(),
    };
    let units: Vec<Option<String>> = match &opts.units {
        None => vec![None; nd],
        Some(u) => {
            let space: Vec<usize> = (0..nd).filter(|&k| kinds[k] == "space").collect();
            let clean = |s: &String| Some(s.trim().to_string()).filter(|s| !s.is_empty());
            if u.len() == nd {
                u.iter().map(clean).collect()
            } else if u.len() == space.len() {
                let mut all = vec![None; nd];
                for (&k, s) in space.iter().zip(u) {
                    all[k] = clean(s);
                }
                all
            } else {
                return Err(Error::option(
                    "units",
                    format!(
                        "{} given: give one per axis ({nd}) or one per space axis ({})",
                        u.len(),
                        space.len()
                    ),
                ));
            }
        }
    };
    let axes: Vec<ImageAxis> = (0..nd)
        .map(|k| ImageAxis {
            name: names[k].trim().to_string(),
            kind: Some(kinds[k].trim().to_string()),
            unit: units[k].clone(),
        })
        .collect();
    check_axes(&axes)?;
    let voxel = match &opts.voxel_size {
        Some(v) => {
            per_axis("voxel-size", v.len())?;
            if let Some(bad) = v.iter().find(|x| !(x.is_finite() && **x > 0.0)) {
                return Err(Error::option(
                    "voxel-size",
                    format!("{bad} is not a positive size"),
                ));
            }
            v.clone()
        }
        None => vec![1.0; nd],
    };
    let chunk = match &opts.chunks {
        Some(c) => {
            per_axis("chunks", c.len())?;
            c.clone()
        }
        None => default_chunks(shape),
    };
    if let Some(k) = chunk.iter().position(|&c| c == 0) {
        return Err(Error::option(
            "chunks",
            format!("axis {k}: a chunk length of 0"),
        ));
    }
    if let Some(k) = shape.iter().position(|&s| s == 0) {
        return Err(Error::option(
            "input",
            format!(
                "axis {k} of the input ({}) is empty: there is nothing to downsample",
                fmt_shape(shape)
            ),
        ));
    }
    if opts.levels == Some(0) {
        return Err(Error::option(
            "levels",
            "a pyramid has at least one level (level 0)",
        ));
    }
    let max_levels = opts.levels.unwrap_or(MAX_LEVELS);
    if max_levels > MAX_LEVELS {
        return Err(Error::option(
            "levels",
            format!("{max_levels}: at most {MAX_LEVELS}"),
        ));
    }
    if let Some(fs) = &opts.factors {
        for f in fs {
            per_axis("factors", f.len())?;
            if let Some(k) = f.iter().position(|&x| x == 0) {
                return Err(Error::option(
                    "factors",
                    format!("{f:?}: the factor on axis {k} is 0 (1 keeps an axis, 2 halves it)"),
                ));
            }
        }
        if fs.len() > 1 && opts.levels.is_some_and(|n| n != fs.len() + 1) {
            return Err(Error::option(
                "levels",
                format!(
                    "{} levels but factors for {} levels after the first",
                    max_levels,
                    fs.len()
                ),
            ));
        }
    }
    let method = opts.method.unwrap_or(Downsample::Mean);
    let space: Vec<bool> = kinds.iter().map(|k| k == "space").collect();
    let mut shapes = vec![shape.to_vec()];
    let mut factors = vec![vec![1u64; nd]];
    let mut scales = vec![voxel.clone()];
    while shapes.len() < max_levels {
        let l = shapes.len();
        let s = &shapes[l - 1];
        let sp = &scales[l - 1];
        let f: Vec<u64> = match &opts.factors {
            Some(fs) if fs.len() == 1 => fs[0].clone(),
            Some(fs) => match fs.get(l - 1) {
                Some(f) => f.clone(),
                None => break,
            },
            None => auto_factors(s, sp, &chunk, &space, opts.levels.is_some()),
        };
        let reduces = (0..nd).any(|k| f[k] > 1 && s[k] > 1);
        // Without --levels: stop before a downsampled axis drops below one chunk.
        let below = (0..nd).any(|k| f[k] > 1 && s[k].div_ceil(f[k]) < chunk[k].min(shape[k]));
        if opts.levels.is_none() && (!reduces || (opts.factors.is_some() && below)) {
            break;
        }
        if !reduces {
            return Err(Error::option(
                "levels",
                format!(
                    "{max_levels} levels: level {} would be level {}'s shape again ({}): the \
                     data allows at most {l} with these factors",
                    l,
                    l - 1,
                    fmt_shape(s)
                ),
            ));
        }
        shapes.push((0..nd).map(|k| s[k].div_ceil(f[k])).collect());
        scales.push((0..nd).map(|k| sp[k] * f[k] as f64).collect());
        factors.push(f);
    }
    let grids: Vec<Grid> = shapes
        .iter()
        .map(|s| {
            let c: Vec<u64> = s.iter().zip(&chunk).map(|(&s, &c)| c.min(s)).collect();
            Grid::new(s, &c)
        })
        .collect::<Result<_>>()?;
    // A child's blocks must not straddle its chunk's edge: its chunk length is a multiple of
    // the factor wherever it is not the whole axis.
    for l in 1..grids.len() {
        for (k, &f) in factors[l].iter().enumerate() {
            let c = grids[l - 1].chunk_shape()[k];
            if grids[l - 1].grid_shape()[k] > 1 && !c.is_multiple_of(f) {
                return Err(Error::option(
                    "chunks",
                    format!(
                        "a chunk length of {c} on axis {k} is not a multiple of level {l}'s \
                         factor {f} there: give --chunks with multiples of the factors"
                    ),
                ));
            }
        }
    }
    let mut translations: Vec<Option<Vec<f64>>> = vec![None];
    for l in 1..grids.len() {
        let prev = translations[l - 1].clone().unwrap_or_else(|| vec![0.0; nd]);
        translations.push(method.centred().then(|| {
            (0..nd)
                .map(|k| prev[k] + (factors[l][k] as f64 - 1.0) / 2.0 * scales[l - 1][k])
                .collect()
        }));
    }
    Ok(Plan {
        grids,
        chunk,
        factors,
        scales,
        translations,
        axes,
        method,
    })
}

/// The default factors from a level of shape `s` and voxel size `sp` (spec/PYRAMID.md §1): 2
/// on a space axis that holds at least two chunks and whose voxels are less than twice as
/// coarse as the finest space axis's, else 1. `relaxed` (a level count was asked for): when
/// no axis qualifies, 2 on every space axis longer than 1, the finest first.
fn auto_factors(s: &[u64], sp: &[f64], chunk: &[u64], space: &[bool], relaxed: bool) -> Vec<u64> {
    let nd = s.len();
    let finest = (0..nd)
        .filter(|&k| space[k])
        .map(|k| sp[k])
        .fold(f64::INFINITY, f64::min);
    let fine = |k: usize| sp[k] < 2.0 * finest;
    let f: Vec<u64> = (0..nd)
        .map(|k| u64::from(space[k] && s[k] >= 2 * chunk[k] && fine(k)) + 1)
        .collect();
    if f.iter().any(|&x| x > 1) || !relaxed {
        return f;
    }
    let f: Vec<u64> = (0..nd)
        .map(|k| u64::from(space[k] && s[k] > 1 && fine(k)) + 1)
        .collect();
    if f.iter().any(|&x| x > 1) {
        return f;
    }
    (0..nd)
        .map(|k| u64::from(space[k] && s[k] > 1) + 1)
        .collect()
}

/// A parent chunk waiting for its children's pieces.
struct Pending<T> {
    data: Vec<T>,
    left: u64,
}

/// The parents waiting, by (level, chunk index).
type Waiting<T> = HashMap<(usize, Vec<u64>), Pending<T>>;

struct Build<'a, T> {
    plan: &'a Plan,
    /// Each level's resumable output (`None`: published by a run before).
    writers: Vec<Option<Box<JobWriter>>>,
    pending: Mutex<Waiting<T>>,
}

impl<T: Scalar> Build<'_, T> {
    /// Writes chunk `idx` of level `l` (`data`: the full chunk, C order) and folds it upward
    /// while parents complete. Returns the chunks written.
    /// `placed`: level `l`'s chunk is already in place (linked from the input).
    fn deliver(
        &self,
        mut l: usize,
        mut idx: Vec<u64>,
        mut data: Vec<T>,
        mut placed: bool,
    ) -> Result<u64> {
        let mut written = 0;
        loop {
            if !placed && let Some(w) = &self.writers[l] {
                written += u64::from(w.write_chunk(&idx, bytemuck::cast_slice(&data))? > 0);
                crate::store::test_delay();
                if w.checkpoint_due(64) {
                    w.checkpoint()?;
                }
            }
            placed = false;
            if l + 1 == self.plan.levels() {
                // A tree is whole: log every level now, so that a rerun skips it.
                for w in self.writers.iter().flatten() {
                    w.checkpoint()?;
                }
                return Ok(written);
            }
            let grid = &self.plan.grids[l];
            let f: Vec<usize> = self.plan.factors[l + 1]
                .iter()
                .map(|&f| f as usize)
                .collect();
            let chunk: Vec<usize> = grid.chunk_shape().iter().map(|&c| c as usize).collect();
            let region = grid.chunk_region(&idx);
            let extent: Vec<usize> = region.shape().iter().map(|&e| e as usize).collect();
            let piece_shape: Vec<usize> = extent
                .iter()
                .zip(&f)
                .map(|(&e, &f)| e.div_ceil(f))
                .collect();
            let mut piece = vec![T::default(); piece_shape.iter().product()];
            downsample_into(
                &data,
                &chunk,
                &extent,
                &f,
                self.plan.method,
                &mut piece,
                &piece_shape,
            );
            let up = &self.plan.grids[l + 1];
            let parent = self.plan.parent(l, &idx);
            let at: Vec<usize> = (0..idx.len())
                .map(|k| {
                    (region.ranges()[k].start / f[k] as u64 - parent[k] * up.chunk_shape()[k])
                        as usize
                })
                .collect();
            let up_chunk: Vec<usize> = up.chunk_shape().iter().map(|&c| c as usize).collect();
            let done = {
                let mut pending = self
                    .pending
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let key = (l + 1, parent.clone());
                let entry = pending.entry(key.clone()).or_insert_with(|| Pending {
                    data: vec![T::default(); up_chunk.iter().product()],
                    left: box_len(&self.plan.children(l + 1, &parent)),
                });
                let within = Region::new(
                    at.iter()
                        .zip(&piece_shape)
                        .map(|(&a, &n)| a as u64..(a + n) as u64)
                        .collect(),
                );
                crate::project::place(
                    bytemuck::cast_slice_mut(&mut entry.data),
                    bytemuck::cast_slice(&piece),
                    &within,
                    &crate::copy::c_strides(&up_chunk, 1),
                    std::mem::size_of::<T>(),
                );
                entry.left -= 1;
                if entry.left == 0 {
                    pending.remove(&key).map(|p| p.data)
                } else {
                    None
                }
            };
            match done {
                Some(d) => {
                    (l, idx, data) = (l + 1, parent, d);
                }
                None => return Ok(written),
            }
        }
    }
}

/// The level whose chunks are read as one unit: the smallest whose footprint in level 0 is
/// made of whole input chunks (each decoded once) and fits the budget; level 0 otherwise.
/// Returns the level and how many times an input chunk is decoded at most.
fn unit_level(
    plan: &Plan,
    source: &dyn Source,
    budget: u64,
    threads: u64,
    itemsize: u64,
) -> (usize, u64) {
    let Some(hint) = source.chunk_hint() else {
        return (0, 1);
    };
    let shape = plan.grids[0].shape();
    let decodes = |l: usize| -> u64 {
        // Reads of level-0 footprints of level l chunks: how many cover one input chunk.
        let fp = plan.footprint(l, &vec![0; shape.len()]);
        (0..shape.len())
            .map(|k| {
                let len = fp.shape()[k].max(1);
                let c = hint[k].min(shape[k]);
                if plan.grids[l].grid_shape()[k] == 1 || len.is_multiple_of(c) {
                    1
                } else {
                    c.div_ceil(len) + 1
                }
            })
            .product()
    };
    for l in 0..plan.levels() {
        let fp = plan.footprint(l, &vec![0; shape.len()]);
        let bytes = u64::try_from(fp.len())
            .unwrap_or(u64::MAX)
            .saturating_mul(itemsize);
        if bytes.saturating_mul(threads) > budget / 2 {
            break;
        }
        if decodes(l) == 1 {
            return (l, 1);
        }
    }
    (0, decodes(0))
}

/// The settings of a plan that change the chunks written.
fn describe_plan(plan: &Plan, dtype: crate::DType, opts: &PyramidOptions) -> Result<String> {
    let grids: Vec<(Vec<u64>, Vec<u64>)> = plan
        .grids
        .iter()
        .map(|g| (g.shape().to_vec(), g.chunk_shape().to_vec()))
        .collect();
    Ok(format!(
        "{dtype} {grids:?} factors {:?} {} codec {:?}",
        plan.factors,
        plan.method.name(),
        Codec::resolve(opts.codec, opts.level, dtype)?
    ))
}

/// Writes the image and its labels beside `out`, then publishes them (nothing at `out` before).
fn build(
    input: &Input,
    labels: &[(&str, &Input, Plan)],
    out: &Path,
    opts: &PyramidOptions,
    plan: &Plan,
) -> Result<PyramidReport> {
    let start = Instant::now();
    let given = out;
    // An output given through a symbolic link is built beside, and renamed to, the link's
    // target (the link stays a link), as every other writer does.
    let resolved;
    let out = if crate::store::is_url(out) {
        out
    } else {
        resolved = crate::store::resolve_links(out)?;
        resolved.as_path()
    };
    let dest = Dest::open(out)?;
    let name = opts.name.clone().or_else(|| {
        given.file_name().map(|n| {
            n.to_string_lossy()
                .trim_end_matches(".zarr")
                .trim_end_matches(".ome")
                .to_string()
        })
    });
    // Everything that changes the chunks written: a rerun with these resumes the build.
    let mut settings = format!(
        "chunkwise pyramid v1\ninput: {}\n{}\n",
        input.identity(),
        describe_plan(plan, input.dtype(), opts)?
    );
    for (name, lab, lplan) in labels {
        settings.push_str(&format!(
            "labels {name}: {}\n{}\n",
            lab.identity(),
            describe_plan(lplan, lab.dtype(), opts)?
        ));
    }
    let fingerprint = crate::fingerprint::fnv1a(&settings);
    let part = opts.partition.unwrap_or((0, 1));
    crate::store::check_part(part)?;
    if !opts.overwrite && published_as(&dest, &fingerprint)? {
        // A part run again after another published, or a rerun of a finished pyramid.
        return Ok(PyramidReport {
            path: given.to_path_buf(),
            method: plan.method,
            levels: plan.level_list(),
            labels: labels
                .iter()
                .map(|(n, _, lp)| (n.to_string(), lp.level_list()))
                .collect(),
            chunks_written: 0,
            chunks_resumed: 0,
            bytes_in: 0,
            decodes: 0,
            seconds: start.elapsed().as_secs_f64(),
            waiting: false,
            already_done: true,
        });
    }
    let sync = opts.run.durability == Durability::Sync;
    // Locally the pyramid is built in a directory beside OUT and renamed to it; on object
    // storage (no renames, no locks) the levels are written in place, each a resumable job,
    // and the groups' metadata that make the image appear go last (§3).
    let target = match &dest {
        Dest::Local(_) => {
            check_output(out, opts.overwrite)?;
            Target::Build(Work::open(
                out,
                &fingerprint,
                &settings,
                opts.overwrite,
                part,
            )?)
        }
        Dest::Remote(r) => {
            check_remote_output(r, opts.overwrite)?;
            if plan.method == Downsample::Gaussian && part.1 > 1 {
                return Err(Error::option(
                    "partition",
                    "a gaussian pyramid on object storage is built in one process (its levels \
                     below level 0 wait for the whole level above, which needs a lock object \
                     storage lacks): leave --partition out, or build it locally",
                ));
            }
            Target::Remote(r)
        }
    };
    let root = match &target {
        Target::Build(b) => b.path(),
        Target::Remote(_) => out,
    };
    let written = with_scalar!(input.dtype(), T => {
        write_image::<T>(input, root, name, None, opts, plan, &fingerprint)
    });
    let written = match &target {
        Target::Build(b) => b.keep_unless_refused(written)?,
        Target::Remote(_) => written?,
    };
    // The groups' metadata, each a path under OUT with its text.
    let mut groups: Vec<(PathBuf, String)> = Vec::new();
    let mut label_levels = Vec::new();
    if !labels.is_empty() {
        let dir = root.join("labels");
        for (name, lab, lplan) in labels {
            let w = with_scalar!(lab.dtype(), T => {
                write_image::<T>(
                    lab,
                    &dir.join(name),
                    Some(name.to_string()),
                    Some(json!({"version": "0.5", "source": {"image": "../../"}})),
                    opts,
                    lplan,
                    &format!("{fingerprint} labels {name}"),
                )?
            });
            label_levels.push((name.to_string(), w.levels));
            groups.push((Path::new("labels").join(name), w.group));
        }
        let names: Vec<&str> = labels.iter().map(|l| l.0).collect();
        let group = json!({
            "zarr_format": 3,
            "node_type": "group",
            "attributes": {"ome": {"version": "0.5", "labels": names}},
        });
        groups.push((
            "labels".into(),
            serde_json::to_string_pretty(&group).expect("plain JSON"),
        ));
    }
    groups.push((PathBuf::new(), written.group.clone()));
    // Every level of the image and of its labels, as OUT holds them once published.
    let mut levels: Vec<PathBuf> = (0..plan.levels()).map(|l| l.to_string().into()).collect();
    for (name, _, lplan) in labels {
        levels.extend(
            (0..lplan.levels()).map(|l| Path::new("labels").join(name).join(l.to_string())),
        );
    }
    let waiting = match target {
        Target::Build(b) => {
            for (at, text) in &groups {
                let file = b.path().join(at).join("zarr.json");
                crate::store::write_atomic(&file, text.as_bytes(), sync)?;
            }
            !b.publish(out, opts.overwrite, sync, &levels)?
        }
        Target::Remote(r) => !publish_remote(r, &levels, &groups)?,
    };
    Ok(PyramidReport {
        path: given.to_path_buf(),
        method: plan.method,
        levels: written.levels,
        labels: label_levels,
        chunks_written: written.chunks,
        chunks_resumed: written.resumed,
        bytes_in: written.bytes_in,
        decodes: written.decodes,
        seconds: start.elapsed().as_secs_f64(),
        waiting,
        already_done: false,
    })
}

/// What a pyramid is built in: locally its build directory beside OUT, on object storage
/// OUT's prefix itself.
enum Target<'a> {
    Build(Work),
    Remote(&'a crate::store::Remote),
}

/// What [`write_image`] wrote.
struct Written {
    levels: Vec<PyramidLevel>,
    chunks: u64,
    /// Level-0 chunks a run before had done (their trees skipped).
    resumed: u64,
    bytes_in: u64,
    decodes: u64,
    /// The image group's `zarr.json` (written by the caller: last, when every level is).
    group: String,
}

/// Writes `input`'s pyramid (`plan`): the levels of an OME-Zarr image group in `dir` (inside
/// a build directory, or an object-storage prefix), named `name`; `label` is the
/// `image-label` object of a label image.
fn write_image<T: Scalar>(
    input: &Input,
    dir: &Path,
    name: Option<String>,
    label: Option<serde_json::Value>,
    opts: &PyramidOptions,
    full: &Plan,
    fingerprint: &str,
) -> Result<Written> {
    // Block reductions fold every level in the one pass; a gaussian level needs a halo of the
    // level above, so the pass writes level 0 and each level below is made from the one above.
    let gaussian = full.method == Downsample::Gaussian;
    let first = gaussian.then(|| full.first_level());
    let plan = first.as_ref().unwrap_or(full);
    let dtype = input.dtype();
    let itemsize = dtype.size() as u64;
    let threads = rayon::current_num_threads() as u64;
    let budget = opts.run.memory.unwrap_or(DEFAULT_MEMORY);
    let chunk_bytes = |l: usize| plan.grids[l].chunk_shape().iter().product::<u64>() * itemsize;
    // Per worker: a footprint, a chunk per level being folded and its piece; and up to two
    // parents per level and worker waiting.
    let folding: u64 = (0..plan.levels()).map(chunk_bytes).sum();
    let view = input.view();
    let source = view.source();
    let (unit, decodes) = unit_level(plan, source.as_ref(), budget, threads, itemsize);
    let footprint = u64::try_from(
        plan.footprint(unit, &vec![0; plan.grids[0].shape().len()])
            .len(),
    )
    .unwrap_or(u64::MAX)
        * itemsize;
    let need = threads * (footprint + chunk_bytes(0) + 3 * folding);
    if need > budget {
        let least = threads * (chunk_bytes(0) * 2 + 3 * folding);
        return Err(Error::option(
            "memory",
            format!(
                "{} ({}) holds too little for {} workers on chunks of {}: at least {} ({}) \
                 needed (or fewer --threads, or smaller --chunks)",
                budget,
                crate::inspect::human_bytes(budget),
                threads,
                fmt_shape(plan.grids[0].chunk_shape()),
                least,
                crate::inspect::human_bytes(least)
            ),
        ));
    }
    let codec = Codec::resolve(opts.codec, opts.level, dtype)?;
    let names: Vec<String> = plan.axes.iter().map(|a| a.name.clone()).collect();
    // Each level is a resumable job in the build directory (spec/PYRAMID.md §2): what a
    // killed run wrote and logged is kept, and a level published by it is done.
    let mut writers = Vec::new();
    let mut dones = Vec::new();
    // Parts take ranges of top-level layers, and at every level the layers under them.
    let (part, parts) = opts.partition.unwrap_or((0, 1));
    let top = plan.levels() - 1;
    let top_split = crate::grid::split_layers(plan.grids[top].grid_shape()[0], None, parts);
    let mut zero = vec![0; plan.grids[0].shape().len()];
    let mut layer_start = |l: usize, t: u64| -> u64 {
        if t >= plan.grids[top].grid_shape()[0] {
            return plan.grids[l].grid_shape()[0];
        }
        let mut layer = t;
        for m in (l + 1..=top).rev() {
            zero[0] = layer;
            layer = plan.children(m, &zero)[0].start;
        }
        layer
    };
    let splits: Vec<Vec<(u64, u64)>> = (0..plan.levels())
        .map(|l| {
            top_split
                .iter()
                .map(|&(a, b)| (layer_start(l, a), layer_start(l, b)))
                .collect()
        })
        .collect();
    for (l, g) in plan.grids.iter().enumerate() {
        let spec = StoreSpec::new(g.shape().to_vec(), dtype, g.chunk_shape().to_vec())
            .codec(codec)
            .axis_names(Some(names.clone()));
        let settings = format!("{fingerprint}\nlevel {l}\n");
        let state = JobWriter::open(
            &spec,
            &dir.join(l.to_string()),
            &JobOptions {
                fingerprint: &crate::fingerprint::fnv1a(&settings),
                settings: &settings,
                partition: (part, parts),
                split: &splits[l],
                // Locally the build directory was discarded already (Work::open); on object
                // storage each level's job discards what another pyramid left there.
                overwrite: opts.overwrite && crate::store::is_url(dir),
                restart: false,
                durability: opts.run.durability,
            },
        )?;
        match state {
            JobState::AlreadyDone => {
                writers.push(None);
                dones.push(None);
            }
            JobState::Open(w, done) => {
                writers.push(Some(w));
                dones.push(Some(done));
            }
        }
    }
    let b = Build::<T> {
        plan,
        writers,
        pending: Mutex::new(HashMap::new()),
    };
    let mut units = Vec::new();
    let mut resumed = 0u64;
    let mut below = Vec::new();
    let mut mine: Vec<std::ops::Range<u64>> =
        plan.grids[top].grid_shape().iter().map(|&n| 0..n).collect();
    mine[0] = top_split[part as usize].0..top_split[part as usize].1;
    for idx in crate::grid::indices_in(&mine) {
        // A tree of chunks (a top-level chunk and all below it) every chunk of which a run
        // before logged is done; any other is computed again whole.
        let complete = (0..plan.levels()).all(|l| match &dones[l] {
            None => true,
            Some(done) => {
                below.clear();
                plan.depth_first(top, &idx, l, &mut below);
                below.iter().all(|c| done.contains(c))
            }
        });
        if complete {
            below.clear();
            plan.depth_first(top, &idx, 0, &mut below);
            resumed += below.len() as u64;
            continue;
        }
        plan.depth_first(top, &idx, unit, &mut units);
    }
    let total = plan.grids[0].shape().iter().product::<u64>() * itemsize;
    let tracker = Tracker::new("pyramid", Unit::Bytes, total, opts.run.progress.clone());
    // Level 0 is the input's chunk files themselves when they are encoded as level 0's would
    // be: linked (or copied) unchanged, decoded only to be downsampled.
    let link = input.store().filter(|s| {
        !crate::store::is_url(s.path())
            && b.writers[0].as_ref().is_some_and(|w| w.same_chunk_bytes(s))
    });
    let chunk0: Vec<usize> = plan.grids[0]
        .chunk_shape()
        .iter()
        .map(|&c| c as usize)
        .collect();
    let n0: usize = chunk0.iter().product();
    let pass = units
        .into_iter()
        .par_bridge()
        .map(|u| -> Result<u64> {
            opts.run.check()?;
            let block = source.block(&plan.footprint(unit, &u))?;
            let mut chunks = Vec::new();
            plan.depth_first(unit, &u, 0, &mut chunks);
            let mut written = 0;
            for idx in chunks {
                let region = plan.grids[0].chunk_region(&idx);
                let mut data = vec![T::default(); n0];
                block.read_into(&region, bytemuck::cast_slice_mut(&mut data), &chunk0);
                tracker.add(u64::try_from(region.len()).unwrap_or(0) * itemsize);
                let placed = match (link, &b.writers[0]) {
                    (Some(s), Some(w)) => {
                        let src = s.path().join(s.chunk_key(&idx));
                        if src.exists() {
                            w.link_chunk(&idx, &src)?;
                            written += 1;
                        } else {
                            w.record_absent(&idx);
                        }
                        true
                    }
                    _ => false,
                };
                written += b.deliver(0, idx, data, placed)?;
            }
            Ok(written)
        })
        .try_reduce(|| 0, |a, b| Ok(a + b));
    let written = match pass {
        Ok(n) => n,
        Err(e) => {
            // What is written is logged, so that a rerun resumes.
            for w in b.writers.iter().flatten() {
                let _ = w.checkpoint();
            }
            return Err(e);
        }
    };
    debug_assert!(b.pending.lock().map(|p| p.is_empty()).unwrap_or(true));
    for w in b.writers.into_iter().flatten() {
        // The last part to finish a level publishes it in the build (the others wait).
        if let Finish::Waiting { .. } = w.finish()? {}
    }
    let plan = full;
    let mut written = written;
    if gaussian {
        // Each level below needs the whole level above: in parts, the part that finds level 0
        // published makes them, one at a time (its lock held); the others leave it to that
        // part (spec/PYRAMID.md §2).
        if let Some(_lower) = lower_levels_lock(dir)? {
            for l in 1..plan.levels() {
                // A level a run before published is whole (its settings are this run's).
                if !level_published(dir, l)? {
                    written += gaussian_level::<T>(dir, l, plan, codec, &names, opts)?;
                }
            }
        }
    }
    let levels = plan.level_list();
    let image = Image::new(
        dir,
        name,
        plan.axes.clone(),
        (0..plan.levels())
            .map(|l| ImageLevel {
                path: l.to_string(),
                scale: plan.scales[l].clone(),
                translation: plan.translations[l].clone(),
            })
            .collect(),
        Some(plan.method.name().to_string()),
    )?;
    let mut meta = image.group_json(json!({
        "method": format!("chunkwise.pyramid ({})", plan.method.name()),
        "version": env!("CARGO_PKG_VERSION"),
        "factors": plan.factors[1..],
        "chunks": plan.chunk,
    }));
    if let Some(l) = label {
        meta["attributes"]["ome"]["image-label"] = l;
    }
    Ok(Written {
        levels,
        chunks: written,
        resumed,
        bytes_in: total,
        decodes,
        group: serde_json::to_string_pretty(&meta).expect("plain JSON"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> PyramidOptions {
        PyramidOptions::default()
    }

    #[test]
    fn default_levels_stop_before_an_axis_drops_below_a_chunk() {
        let p = plan(&[512, 512, 512], &opts().chunks(Some(vec![64; 3]))).unwrap();
        let shapes: Vec<_> = p.grids.iter().map(|g| g.shape()[0]).collect();
        assert_eq!(shapes, vec![512, 256, 128, 64]);
        assert_eq!(p.translations[1], Some(vec![0.5; 3]));
        assert_eq!(p.translations[2], Some(vec![1.5; 3]));
    }

    #[test]
    fn an_axis_already_coarse_or_short_keeps_factor_one() {
        let p = plan(
            &[30, 1024, 1024],
            &opts()
                .chunks(Some(vec![16, 128, 128]))
                .voxel_size(Some(vec![2.0, 0.5, 0.5])),
        )
        .unwrap();
        assert_eq!(p.factors[1], vec![1, 2, 2]);
        let q = plan(
            &[256, 1024, 1024],
            &opts()
                .chunks(Some(vec![64; 3]))
                .voxel_size(Some(vec![2.0, 0.5, 0.5])),
        )
        .unwrap();
        let f: Vec<_> = q.factors[1..].to_vec();
        assert_eq!(f[..3], [vec![1, 2, 2], vec![1, 2, 2], vec![2, 2, 2]]);
        assert_eq!(p.factors[2], vec![1, 2, 2]);
        assert_eq!(p.grids.last().unwrap().shape(), &[30, 128, 128]);
    }

    #[test]
    fn bad_options_name_the_values() {
        let e = plan(&[8, 8], &opts().factors(Some(vec![vec![2, 0]]))).unwrap_err();
        assert!(e.to_string().contains("axis 1 is 0"), "{e}");
        let e = plan(
            &[8, 8],
            &opts().levels(Some(9)).factors(Some(vec![vec![2, 2]])),
        )
        .unwrap_err();
        assert!(e.to_string().contains("at most 4"), "{e}");
        let e = plan(&[8], &opts()).unwrap_err();
        assert!(e.to_string().contains("2 to 5 axes"), "{e}");
        let e = plan(
            &[8, 8],
            &opts()
                .levels(Some(2))
                .factors(Some(vec![vec![3, 3]]))
                .chunks(Some(vec![4, 4])),
        )
        .unwrap_err();
        assert!(e.to_string().contains("not a multiple"), "{e}");
    }
}
