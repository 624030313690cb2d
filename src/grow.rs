//! Growing arrays without copying them: `append`, `concat` and `stack` (spec/APPEND.md).
//!
//! The result's chunks are the inputs' chunk files, hard-linked (or moved) under new keys; only
//! chunks whose content changes are encoded: new data, and at most one edge layer per join
//! (the partial last layer of an input that is not last). What changes otherwise is metadata.
//!
//! Invariants (APPEND §4): nothing a reader of the old `zarr.json` can reach changes meaning
//! before the new `zarr.json` is renamed into place (or, when an existing chunk must change
//! shape, before the whole directory is exchanged for a rebuilt one); the journal written
//! before that commit lets a rerun say "already done" instead of growing the array twice.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rayon::prelude::*;
use serde_json::{Value, json};

use crate::copy::{Side, c_strides, copy_box};
use crate::error::{Error, Incompatibility, IoContext, Result, to_usize};
use crate::fingerprint::{fnv1a, stamp};
use crate::grid::indices_in;
use crate::input::RawOptions;
use crate::progress::{ProgressFn, Tracker, Unit, with_threads};
use crate::region::{Region, check_shapes, fmt_shape};
use crate::store::{
    Durability, Edges, FileWriter, GridCodec, Journal, LOCK_FILE, Layout, Moving, NEW_SUFFIX,
    PROGRESS_FILE, Progress, Staging, StoreLock, begin_build, check_removable, check_utf8,
    clean_stale, commit_metadata, crash_point, exchange, is_store, link_chunk, link_or_copy,
    lock_existing, place, publish, recover_replacement, remove_chunk, resolve_links, sibling,
    sync_dir, sync_filesystem,
};
use crate::view::{View, store_source};

/// The chunk grid a grown array gets along the growth axis (APPEND §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GridLayout {
    /// `regular` when at most one layer of stored data is re-encoded, else `rectilinear`.
    #[default]
    Auto,
    /// Keep a regular grid every reader understands (re-encodes what does not align).
    Regular,
    /// The zarr-extensions `rectilinear` grid: any lengths join with one edge layer re-encoded.
    Rectilinear,
}

impl std::str::FromStr for GridLayout {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(GridLayout::Auto),
            "regular" => Ok(GridLayout::Regular),
            "rectilinear" => Ok(GridLayout::Rectilinear),
            other => Err(Error::option(
                "--layout",
                format!("{other:?}: use auto, regular or rectilinear"),
            )),
        }
    }
}

/// Settings for [`append`], [`concat()`], [`concat_into`] and [`stack`].
#[derive(Clone, Default)]
pub struct GrowOptions {
    axis: usize,
    layout: GridLayout,
    cast: bool,
    move_inputs: bool,
    wait: bool,
    overwrite: bool,
    again: bool,
    raw: RawOptions,
    threads: Option<usize>,
    durability: Durability,
    memory: Option<u64>,
    checkpoint_secs: Option<f64>,
    progress: Option<ProgressFn>,
}

impl std::fmt::Debug for GrowOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrowOptions")
            .field("axis", &self.axis)
            .field("layout", &self.layout)
            .field("cast", &self.cast)
            .field("move_inputs", &self.move_inputs)
            .field("wait", &self.wait)
            .field("overwrite", &self.overwrite)
            .field("again", &self.again)
            .finish_non_exhaustive()
    }
}

impl GrowOptions {
    /// The axis to grow along (default 0).
    pub fn axis(mut self, axis: usize) -> Self {
        self.axis = axis;
        self
    }
    /// The grid along the axis (default [`GridLayout::Auto`]).
    pub fn layout(mut self, layout: GridLayout) -> Self {
        self.layout = layout;
        self
    }
    /// Convert inputs of another type to the array's type, if no value can change.
    pub fn cast(mut self, on: bool) -> Self {
        self.cast = on;
        self
    }
    /// Move the inputs' chunk files instead of linking them; the inputs are removed after the
    /// result is committed.
    pub fn move_inputs(mut self, on: bool) -> Self {
        self.move_inputs = on;
        self
    }
    /// Wait for another writer's lock instead of failing.
    pub fn wait(mut self, on: bool) -> Self {
        self.wait = on;
        self
    }
    /// Replace an existing output (concat and stack with `-o`).
    pub fn overwrite(mut self, on: bool) -> Self {
        self.overwrite = on;
        self
    }
    /// Grow even if the last edit of this array was this very one (append the same data twice).
    pub fn again(mut self, on: bool) -> Self {
        self.again = on;
        self
    }
    /// How to read raw inputs.
    pub fn raw(mut self, raw: RawOptions) -> Self {
        self.raw = raw;
        self
    }
    /// Worker threads (default: one per core).
    pub fn threads(mut self, threads: Option<usize>) -> Self {
        self.threads = threads;
        self
    }
    /// Whether to fsync before committing (default [`Durability::Sync`]).
    pub fn durability(mut self, d: Durability) -> Self {
        self.durability = d;
        self
    }
    /// Bytes of input read at once when encoding a layer (default 256 MiB).
    pub fn memory(mut self, bytes: Option<u64>) -> Self {
        self.memory = bytes;
        self
    }
    /// How often an in-place append records the layers it has finished, so that a rerun
    /// after a kill skips them (APPEND §5.1). Default 2 s; 0 records after every layer.
    pub fn checkpoint_secs(mut self, secs: f64) -> Self {
        self.checkpoint_secs = Some(secs);
        self
    }
    /// A progress callback (chunks placed).
    pub fn progress(mut self, cb: Option<ProgressFn>) -> Self {
        self.progress = cb;
        self
    }
}

/// What a grow did.
#[derive(Debug, Clone, PartialEq)]
pub struct GrowReport {
    /// The array grown or created.
    pub path: PathBuf,
    /// Its shape before (an edit in place) or `None` (a new array).
    pub old_shape: Option<Vec<u64>>,
    /// Its shape now.
    pub shape: Vec<u64>,
    /// `regular` or `rectilinear`.
    pub grid: &'static str,
    /// Chunk files linked (or moved) from the inputs.
    pub chunks_linked: u64,
    /// Chunks encoded (new data, and re-encoded edge layers).
    pub chunks_encoded: u64,
    /// Chunk layers holding already stored data that were re-encoded (at most one per join).
    pub layers_reencoded: u64,
    /// Layers a killed run of the same command had finished, kept as they were (APPEND §5.1).
    pub layers_resumed: u64,
    /// Bytes written: encoded chunks, bytes copied where a link was impossible, metadata.
    pub bytes_written: u64,
    /// Whether the array directory was rebuilt from links and exchanged (an existing chunk
    /// changed shape; APPEND §4.3).
    pub exchanged: bool,
    /// Nothing was done: the last edit of this array was this same command.
    pub already_done: bool,
    /// What went wrong after the result was committed (it stands): with `--move`, an input
    /// that could not be removed.
    pub warnings: Vec<String>,
    /// Wall-clock seconds.
    pub seconds: f64,
}

impl GrowReport {
    /// A report of nothing written: the array as the journal (or an empty input) left it.
    fn unchanged(
        path: &Path,
        old_shape: Option<Vec<u64>>,
        shape: Vec<u64>,
        meta: &Value,
        already_done: bool,
        start: Instant,
    ) -> GrowReport {
        GrowReport {
            path: path.to_path_buf(),
            old_shape,
            shape,
            grid: grid_name(meta),
            chunks_linked: 0,
            chunks_encoded: 0,
            layers_reencoded: 0,
            layers_resumed: 0,
            bytes_written: 0,
            exchanged: false,
            already_done,
            warnings: Vec::new(),
            seconds: start.elapsed().as_secs_f64(),
        }
    }
}

/// One array being joined.
struct Operand {
    /// What to read when encoding (cast and axis-inserted as needed).
    view: View,
    /// The stored layout, when its chunk files can be used as they are.
    layout: Option<Layout>,
    /// Whether the operand's data is already stored (a store, linkable or not).
    stored: bool,
    extent: u64,
}

/// What happens to one chunk layer (all chunks with one index along the axis).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    /// Link operand `op`'s layer `layer`.
    Link { op: usize, layer: u64 },
    /// Encode from the joined data.
    Encode,
}

#[derive(Debug, Clone)]
struct LayerPlan {
    act: Act,
    /// First row along the axis, and the layer's chunk edge.
    start: u64,
    edge: u64,
}

struct Plan {
    layers: Vec<LayerPlan>,
    axis_edges: Edges,
}

/// Appends `inputs` (anything `convert` reads, or stores) to the array at `store` along the
/// axis, in place (APPEND §2).
///
/// # Errors
/// [`Error::Locked`] if another writer holds the array; [`Error::ShapeMismatch`] naming the
/// axis and sizes; [`Error::InvalidOption`] for another type without `--cast` or a lossy cast;
/// input and I/O errors. The array is unchanged after any error.
pub fn append(store: &Path, inputs: &[PathBuf], opts: &GrowOptions) -> Result<GrowReport> {
    with_threads(opts.threads, || {
        let start = Instant::now();
        if inputs.is_empty() {
            return Err(Error::option("INPUT", "nothing to append"));
        }
        // Through a link, the array it points to is edited and the link stays (APPEND §6.3).
        let store = &resolve_links(store)?;
        recover_replacement(store)?;
        check_target(store)?;
        checkpoint_secs(opts)?;
        let _lock = StoreLock::acquire(store, opts.wait)?;
        clean_stale(store)?;
        let target = Layout::read(store)?;
        check_axis(&target, opts.axis)?;
        check_not_self(store, inputs)?;
        // The inputs are opened (and so checked: a raw file without its type and shape, a
        // shape that does not fit) before a rerun can answer "already done" (issue 18.6).
        let mut ops = vec![target_operand(&target)?];
        let all_stores = inputs.iter().all(|p| is_store(p));
        let mut locks = Vec::new();
        if all_stores {
            for p in inputs {
                locks.push(StoreLock::acquire_shared(p, opts.wait)?);
                ops.push(stored_operand(p, &target, opts, false)?);
            }
        } else {
            ops.push(fresh_operand(inputs, &target, opts)?);
        }
        let fp = fingerprint("append", opts, Some(store), inputs);
        if let Some(done) = already_done(&target, &fp, opts, start)? {
            return Ok(done);
        }
        let r = grow_in_place(&target, ops, opts, &fp, start, &[])?;
        drop(locks);
        Ok(r)
    })
}

/// Joins the stores `inputs` along the axis into a new array at `out` (APPEND §3).
///
/// # Errors
/// [`Error::Incompatible`] naming the field that differs; [`Error::OutputExists`] without
/// `overwrite`; [`Error::InvalidOption`] for an output inside an input, or an input given
/// twice; as [`append`].
pub fn concat(inputs: &[PathBuf], out: &Path, opts: &GrowOptions) -> Result<GrowReport> {
    with_threads(opts.threads, || {
        let start = Instant::now();
        let out = &resolve_links(out)?;
        let (fp, _replacing) = match begin_new_output("concat", inputs, out, opts, start)? {
            Begin::Done(done) => return Ok(done),
            Begin::Go(fp, lock) => (fp, lock),
        };
        let mut locks = Vec::new();
        let mut ops = Vec::new();
        let first = Layout::read(&inputs[0])?;
        for p in inputs {
            locks.push(StoreLock::acquire_shared(p, opts.wait)?);
            ops.push(stored_operand(p, &first, opts, true)?);
        }
        let r = build_new(&first, ops, out, opts, &fp, start, inputs)?;
        drop(locks);
        Ok(r)
    })
}

/// Joins the stores `others` onto the end of the array at `target`, in place (`concat --into`).
///
/// # Errors
/// As [`concat()`] and [`append`].
pub fn concat_into(target: &Path, others: &[PathBuf], opts: &GrowOptions) -> Result<GrowReport> {
    with_threads(opts.threads, || {
        let start = Instant::now();
        let target = &resolve_links(target)?;
        recover_replacement(target)?;
        check_target(target)?;
        let _lock = StoreLock::acquire(target, opts.wait)?;
        clean_stale(target)?;
        if let Some(done) = finish_move(target, others, opts, start)? {
            return Ok(done);
        }
        let mut all = vec![target.to_path_buf()];
        all.extend(others.iter().cloned());
        check_join_inputs(&all, None)?;
        if opts.move_inputs {
            others.iter().try_for_each(|p| check_removable(p))?;
        }
        let layout = Layout::read(target)?;
        let mut ops = vec![target_operand(&layout)?];
        let mut locks = Vec::new();
        for p in others {
            locks.push(StoreLock::acquire_shared(p, opts.wait)?);
            ops.push(stored_operand(p, &layout, opts, true)?);
        }
        let fp = fingerprint("concat", opts, Some(target), others);
        if let Some(done) = already_done(&layout, &fp, opts, start)? {
            return Ok(done);
        }
        let mut r = grow_in_place(&layout, ops, opts, &fp, start, others)?;
        drop(locks);
        if opts.move_inputs {
            remove_moved(others, &mut r);
        }
        Ok(r)
    })
}

/// Stacks the stores `inputs` (same shape, type, codecs and chunking) along a new leading axis
/// into a new array at `out`, chunk size 1 along it; every chunk is linked (APPEND §3.4).
///
/// # Errors
/// As [`concat()`]; [`Error::Incompatible`] also for a shape or a codec that cannot gain an axis.
pub fn stack(inputs: &[PathBuf], out: &Path, opts: &GrowOptions) -> Result<GrowReport> {
    with_threads(opts.threads, || {
        let start = Instant::now();
        let out = &resolve_links(out)?;
        let (fp, _replacing) = match begin_new_output("stack", inputs, out, opts, start)? {
            Begin::Done(done) => return Ok(done),
            Begin::Go(fp, lock) => (fp, lock),
        };
        let first = Layout::read(&inputs[0])?;
        let mut locks = Vec::new();
        let mut layouts = Vec::new();
        for p in inputs {
            locks.push(StoreLock::acquire_shared(p, opts.wait)?);
            let l = Layout::read(p)?;
            check_compatible(&first, &l, None)?;
            check_shapes(first.path(), first.shape(), p, l.shape(), None)?;
            layouts.push(l);
        }
        let meta = stacked_metadata(&first, inputs.len() as u64)?;
        let (tmp, lock) = begin_build(out)?;
        let out_layout = Layout::from_json(&tmp, meta.clone())?;
        let staging = Staging::new(&tmp);
        staging.create()?;
        let tracker = Tracker::new(
            "stack",
            Unit::Chunks,
            layouts
                .iter()
                .map(|l| grid_count(l.edges(), l.shape()))
                .sum(),
            opts.progress.clone(),
        );
        let copied = AtomicU64::new(0);
        let linked = AtomicU64::new(0);
        for (k, l) in layouts.iter().enumerate() {
            let boxed: Vec<_> = l
                .edges()
                .iter()
                .zip(l.shape())
                .map(|(e, &n)| 0..e.list(n).len() as u64)
                .collect();
            indices_in(&boxed)
                .par_iter()
                .try_for_each(|idx| -> Result<()> {
                    let src = l.chunk_file(idx);
                    if src.exists() {
                        let mut o = vec![k as u64];
                        o.extend_from_slice(idx);
                        copied.fetch_add(
                            link_chunk(&src, &out_layout.chunk_file(&o), &staging)?,
                            Ordering::Relaxed,
                        );
                        linked.fetch_add(1, Ordering::Relaxed);
                    }
                    tracker.add(1);
                    Ok(())
                })?;
        }
        staging.remove();
        let meta_bytes =
            finish_build(&tmp, lock, out, &meta, &fp, opts, moving_list(opts, inputs))?;
        drop(locks);
        let mut r = GrowReport {
            path: out.to_path_buf(),
            old_shape: None,
            shape: out_layout.shape().to_vec(),
            grid: grid_name(&meta),
            chunks_linked: linked.into_inner(),
            chunks_encoded: 0,
            layers_reencoded: 0,
            layers_resumed: 0,
            bytes_written: copied.into_inner() + meta_bytes,
            exchanged: false,
            already_done: false,
            warnings: Vec::new(),
            seconds: start.elapsed().as_secs_f64(),
        };
        if opts.move_inputs {
            remove_moved(inputs, &mut r);
        }
        Ok(r)
    })
}

/// How a join into a new output starts: already done (a rerun), or to do with this fingerprint
/// (holding the lock of the array it replaces, if any).
enum Begin {
    Done(GrowReport),
    Go(String, Option<StoreLock>),
}

/// What `concat -o` and `stack` check before building: a rerun of a `--move` or of the whole
/// join is already done; else the inputs are valid and the output may be written.
fn begin_new_output(
    op: &str,
    inputs: &[PathBuf],
    out: &Path,
    opts: &GrowOptions,
    start: Instant,
) -> Result<Begin> {
    check_utf8(out)?;
    if let Some(done) = finish_move(out, inputs, opts, start)? {
        return Ok(Begin::Done(done));
    }
    check_join_inputs(inputs, Some(out))?;
    if opts.move_inputs {
        inputs.iter().try_for_each(|p| check_removable(p))?;
    }
    let fp = fingerprint(op, opts, None, inputs);
    // `--overwrite` (and `--again`) rebuild whatever the output holds.
    if !(opts.overwrite || opts.again)
        && let Some(done) = output_done(out, &fp, start)?
    {
        return Ok(Begin::Done(done));
    }
    crate::store::check_replaceable(out, opts.overwrite)?;
    Ok(Begin::Go(fp, lock_existing(out)?))
}

// ---------------------------------------------------------------- operands and checks

fn target_operand(t: &Layout) -> Result<Operand> {
    let store = store_source(t.path())?;
    Ok(Operand {
        extent: 0, // set by the caller's axis below
        view: View::from_source(store),
        layout: Some(t.clone()),
        stored: true,
    })
}

/// A store joined to `base`: its chunks are linked when compatible; with `strict`
/// (concat) incompatibility is an error, otherwise (append) its data is re-encoded.
fn stored_operand(p: &Path, base: &Layout, opts: &GrowOptions, strict: bool) -> Result<Operand> {
    let l = Layout::read(p)?;
    check_rank_and_axes(base, &l, opts.axis)?;
    let compatible = check_compatible(base, &l, Some(opts.axis));
    let mut view = View::from_source(store_source(p)?);
    let layout = match compatible {
        Ok(()) => Some(l),
        Err(e) if strict => return Err(e),
        Err(_) => None,
    };
    if layout.is_none() {
        view = cast_to(view, base, p, opts)?;
    }
    Ok(Operand {
        extent: view.shape()[opts.axis],
        view,
        layout,
        stored: true,
    })
}

/// New data from files: read through a view, cast and given the growth axis if it lacks it.
fn fresh_operand(inputs: &[PathBuf], base: &Layout, opts: &GrowOptions) -> Result<Operand> {
    let mut view = View::open_all(inputs, &opts.raw)?;
    let ndim = base.shape().len();
    if view.shape().len() + 1 == ndim {
        // One slice: it gains the axis it is appended along.
        view = view.insert_axis(opts.axis)?;
    }
    let shown = inputs[0].clone();
    if view.shape().len() != ndim {
        return Err(Error::option(
            "INPUT",
            format!(
                "{} is {}-d ({}), the array is {}-d ({})",
                shown.display(),
                view.shape().len(),
                fmt_shape(view.shape()),
                ndim,
                base.shape_text()
            ),
        ));
    }
    check_axes(base.path(), base.shape(), &shown, view.shape(), opts.axis)?;
    let view = cast_to(view, base, &shown, opts)?;
    Ok(Operand {
        extent: view.shape()[opts.axis],
        view,
        layout: None,
        stored: false,
    })
}

fn cast_to(view: View, base: &Layout, path: &Path, opts: &GrowOptions) -> Result<View> {
    let want: crate::DType = base
        .field("data_type")
        .as_str()
        .unwrap_or("")
        .parse()
        .map_err(|_| Error::BadMetadata {
            path: base.path().to_path_buf(),
            reason: format!("data type {} is not supported", base.field("data_type")),
        })?;
    if view.dtype() == want {
        return Ok(view);
    }
    if !opts.cast {
        return Err(Error::option(
            "--cast",
            format!(
                "{} holds {}, {} holds {}: give --cast to convert (widening casts only)",
                path.display(),
                view.dtype(),
                base.path().display(),
                want
            ),
        ));
    }
    view.cast(want)
}

fn check_rank_and_axes(base: &Layout, other: &Layout, axis: usize) -> Result<()> {
    if base.shape().len() != other.shape().len() {
        return Err(Error::Incompatible(Box::new(Incompatibility {
            left_path: base.path().to_path_buf(),
            right_path: other.path().to_path_buf(),
            field: "rank".into(),
            left: base.shape().len().to_string(),
            right: other.shape().len().to_string(),
        })));
    }
    check_axes(base.path(), base.shape(), other.path(), other.shape(), axis)
}

fn check_axes(lp: &Path, left: &[u64], rp: &Path, right: &[u64], axis: usize) -> Result<()> {
    if axis >= left.len() {
        return Err(Error::option(
            "--axis",
            format!("{axis} is out of range for a {}-d array", left.len()),
        ));
    }
    check_shapes(lp, left, rp, right, Some(axis))
}

/// The fields joined arrays must share (APPEND §3.1): type, fill value, codecs, and the
/// chunk edges of every axis but `axis` (`None`: every axis).
fn check_compatible(base: &Layout, other: &Layout, axis: Option<usize>) -> Result<()> {
    for field in ["data_type", "fill_value", "codecs"] {
        let (a, b) = (base.field(field), other.field(field));
        if a != b {
            return Err(Error::Incompatible(Box::new(Incompatibility {
                left_path: base.path().to_path_buf(),
                right_path: other.path().to_path_buf(),
                field: field.into(),
                left: a.to_string(),
                right: b.to_string(),
            })));
        }
    }
    for (k, (a, b)) in base.edges().iter().zip(other.edges()).enumerate() {
        if Some(k) == axis {
            continue;
        }
        let (la, lb) = (a.list(base.shape()[k]), b.list(other.shape()[k]));
        if la != lb {
            return Err(Error::Incompatible(Box::new(Incompatibility {
                left_path: base.path().to_path_buf(),
                right_path: other.path().to_path_buf(),
                field: format!("chunk_grid (axis {k})"),
                left: format!("{a:?}"),
                right: format!("{b:?}"),
            })));
        }
    }
    Ok(())
}

/// Inputs of a join: all stores, none twice, the output not inside one.
fn check_axis(target: &Layout, axis: usize) -> Result<()> {
    let ndim = target.shape().len();
    if axis >= ndim {
        return Err(Error::option(
            "--axis",
            format!(
                "{axis} is out of range for the {ndim}-d array {}",
                target.path().display()
            ),
        ));
    }
    Ok(())
}

/// The array grown in place must exist and be an array (before a lock file is put in it).
fn check_target(path: &Path) -> Result<()> {
    if !path.exists() {
        return Err(Error::NotFound(path.to_path_buf()));
    }
    if !is_store(path) {
        return Err(Error::NotAStore(path.to_path_buf()));
    }
    Ok(())
}

fn check_join_inputs(inputs: &[PathBuf], out: Option<&Path>) -> Result<()> {
    if inputs.len() < 2 {
        return Err(Error::option("inputs", "give at least two arrays to join"));
    }
    let mut seen: Vec<PathBuf> = Vec::new();
    for p in inputs {
        if !p.exists() {
            return Err(Error::NotFound(p.clone()));
        }
        if !is_store(p) {
            return Err(Error::NotAStore(p.clone()));
        }
        let c = p.canonicalize().at(p)?;
        if seen.contains(&c) {
            return Err(Error::option(
                "inputs",
                format!(
                    "{} is given twice: an array cannot be joined with itself (a view can repeat it)",
                    p.display()
                ),
            ));
        }
        seen.push(c);
    }
    if let Some(out) = out {
        let parent = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if let Ok(parent) = parent.canonicalize() {
            let out_c = parent.join(out.file_name().unwrap_or_default());
            if let Some(inside) = seen.iter().find(|s| out_c.starts_with(s)) {
                return Err(Error::option(
                    "-o",
                    format!(
                        "{} is inside the input {}; write the result elsewhere (or use --into)",
                        out.display(),
                        inside.display()
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn check_not_self(store: &Path, inputs: &[PathBuf]) -> Result<()> {
    let s = store.canonicalize().at(store)?;
    for p in inputs {
        if p.canonicalize()
            .ok()
            .is_some_and(|c| c == s || c.starts_with(&s))
        {
            return Err(Error::option(
                "INPUT",
                format!(
                    "{} is the array being appended to (or inside it)",
                    p.display()
                ),
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- fingerprints and journals

fn fingerprint(op: &str, o: &GrowOptions, target: Option<&Path>, inputs: &[PathBuf]) -> String {
    let mut text = format!(
        "chunkwise {op} v2\naxis {} layout {:?} cast {} raw {:?}\n",
        o.axis, o.layout, o.cast, o.raw
    );
    if let Some(t) = target {
        let c = t.canonicalize().unwrap_or_else(|_| t.to_path_buf());
        text.push_str(&format!("into {}\n", c.display()));
    }
    for p in inputs {
        text.push_str(&stamp(p));
        text.push('\n');
    }
    fnv1a(&text)
}

fn already_done(
    target: &Layout,
    fp: &str,
    opts: &GrowOptions,
    start: Instant,
) -> Result<Option<GrowReport>> {
    if opts.again {
        return Ok(None);
    }
    let Some(j) = Journal::read(target.path()) else {
        return Ok(None);
    };
    if j.fingerprint == fp && j.to == target.shape() && j.from != j.to {
        // A run killed after its commit may have left its progress record.
        let _ = fs::remove_file(target.path().join(PROGRESS_FILE));
        return Ok(Some(GrowReport::unchanged(
            target.path(),
            Some(j.from),
            j.to,
            target.meta(),
            true,
            start,
        )));
    }
    Ok(None)
}

fn output_done(out: &Path, fp: &str, start: Instant) -> Result<Option<GrowReport>> {
    if !is_store(out) {
        return Ok(None);
    }
    let Ok(l) = Layout::read(out) else {
        return Ok(None);
    };
    match Journal::read(out) {
        Some(j) if j.fingerprint == fp && j.to == l.shape() => Ok(Some(GrowReport::unchanged(
            out,
            None,
            j.to,
            l.meta(),
            true,
            start,
        ))),
        _ => Ok(None),
    }
}

fn grid_name(meta: &Value) -> &'static str {
    if meta["chunk_grid"]["name"] == "rectilinear" {
        "rectilinear"
    } else {
        "regular"
    }
}

// ---------------------------------------------------------------- plans

fn prefix(extents: impl Iterator<Item = u64>) -> Vec<u64> {
    let mut at = 0;
    extents
        .map(|e| {
            let s = at;
            at += e;
            s
        })
        .collect()
}

/// Every output layer `c` long; a layer links an operand's chunk layer when that layer holds
/// exactly the same rows (and padding only past the end of the result).
fn plan_regular(ops: &[Operand], axis: usize, c: u64) -> Plan {
    let total: u64 = ops.iter().map(|o| o.extent).sum();
    let offsets = prefix(ops.iter().map(|o| o.extent));
    let last = ops.len() - 1;
    let mut layers = Vec::new();
    for l in 0..total.div_ceil(c) {
        let start = l * c;
        let k = (0..ops.len())
            .rev()
            .find(|&k| offsets[k] <= start && ops[k].extent > 0)
            .unwrap_or(0);
        let mut act = Act::Encode;
        if let Some(lay) = &ops[k].layout {
            let edges = lay.edges()[axis].list(ops[k].extent);
            let local = start - offsets[k];
            let starts = prefix(edges.iter().copied());
            if let Some(j) = starts.iter().position(|&s| s == local)
                && edges[j] == c
                && (local + c <= ops[k].extent || k == last)
            {
                act = Act::Link {
                    op: k,
                    layer: j as u64,
                };
            }
        }
        layers.push(LayerPlan {
            act,
            start,
            edge: c,
        });
    }
    Plan {
        layers,
        axis_edges: Edges::Fixed(c),
    }
}

/// Each operand keeps its own chunk layers; a partial last layer of an operand that is not
/// last is re-encoded at its true length; new data is cut into `nominal`-long chunks.
fn plan_rectilinear(ops: &[Operand], axis: usize, nominal: u64) -> Plan {
    let total: u64 = ops.iter().map(|o| o.extent).sum();
    let last = ops.len() - 1;
    let mut layers = Vec::new();
    let mut at = 0;
    for (k, op) in ops.iter().enumerate() {
        if op.extent == 0 {
            continue;
        }
        match &op.layout {
            Some(lay) => {
                let edges = lay.edges()[axis].list(op.extent);
                let sum: u64 = edges.iter().sum();
                for (j, &e) in edges.iter().enumerate() {
                    let trimmed = j + 1 == edges.len() && k != last && sum > op.extent;
                    let edge = if trimmed { e - (sum - op.extent) } else { e };
                    let act = if trimmed {
                        Act::Encode
                    } else {
                        Act::Link {
                            op: k,
                            layer: j as u64,
                        }
                    };
                    layers.push(LayerPlan {
                        act,
                        start: at,
                        edge,
                    });
                    at += edge;
                }
            }
            None => {
                let (full, rem) = (op.extent / nominal, op.extent % nominal);
                for _ in 0..full {
                    layers.push(LayerPlan {
                        act: Act::Encode,
                        start: at,
                        edge: nominal,
                    });
                    at += nominal;
                }
                if rem > 0 {
                    // The end of the result keeps a full-length (overflow) edge that later
                    // appends fill; inside it, an edge is exactly its data.
                    let edge = if k == last { nominal } else { rem };
                    layers.push(LayerPlan {
                        act: Act::Encode,
                        start: at,
                        edge,
                    });
                    at += rem;
                }
            }
        }
    }
    let list: Vec<u64> = layers.iter().map(|l| l.edge).collect();
    Plan {
        axis_edges: Edges::from_list(&list, total, true),
        layers,
    }
}

/// Layers that re-encode data already stored (the cost `auto` weighs).
fn stored_reencoded(plan: &Plan, ops: &[Operand]) -> u64 {
    let offsets = prefix(ops.iter().map(|o| o.extent));
    let total: u64 = ops.iter().map(|o| o.extent).sum();
    plan.layers
        .iter()
        .filter(|l| l.act == Act::Encode)
        .filter(|l| {
            let (a, b) = (l.start, (l.start + l.edge).min(total));
            ops.iter()
                .zip(&offsets)
                .any(|(o, &s)| o.stored && o.extent > 0 && a < s + o.extent && s < b)
        })
        .count() as u64
}

fn choose_plan(ops: &[Operand], base: &Layout, opts: &GrowOptions) -> Result<Plan> {
    let axis = opts.axis;
    let base_edges = &base.edges()[axis];
    let nominal = match base_edges {
        Edges::Fixed(c) => *c,
        Edges::Varying(v) => v.iter().copied().max().unwrap_or(1),
    };
    // Sharded arrays: every rectilinear edge must stay a multiple of the subchunk along the axis.
    let sub = base
        .subchunks()
        .and_then(|s| s.get(axis).copied())
        .filter(|&s| s > 0);
    let bad_edge = |plan: &Plan| match (&plan.axis_edges, sub) {
        (Edges::Varying(v), Some(s)) => v.iter().copied().find(|&e| e % s != 0).map(|e| (s, e)),
        _ => None,
    };
    let plan = match opts.layout {
        GridLayout::Regular => plan_regular(ops, axis, nominal),
        GridLayout::Rectilinear => plan_rectilinear(ops, axis, nominal),
        GridLayout::Auto => {
            let regular_ok = matches!(base_edges, Edges::Fixed(_))
                && ops
                    .iter()
                    .filter_map(|o| o.layout.as_ref())
                    .all(|l| matches!(l.edges()[axis], Edges::Fixed(_)));
            let reg = plan_regular(ops, axis, nominal);
            if regular_ok && stored_reencoded(&reg, ops) <= 1 {
                reg
            } else {
                let rect = plan_rectilinear(ops, axis, nominal);
                // A sharded join that cannot be rectilinear stays regular (re-encoding).
                if regular_ok && bad_edge(&rect).is_some() {
                    reg
                } else {
                    rect
                }
            }
        }
    };
    if let Some((s, bad)) = bad_edge(&plan) {
        return Err(Error::option(
            "--layout",
            format!(
                "{}: sharded with subchunks of {s} along axis {axis}; a rectilinear edge of {bad} \
                 is not a multiple of it (use --layout regular, which keeps whole shards)",
                base.path().display()
            ),
        ));
    }
    Ok(plan)
}

// ---------------------------------------------------------------- execution

/// Counts of what [`apply`] did.
#[derive(Default)]
struct Done {
    linked: AtomicU64,
    encoded: AtomicU64,
    bytes: AtomicU64,
}

fn shape_of(ops: &[Operand], axis: usize) -> Vec<u64> {
    let mut shape = ops[0].view.shape().to_vec();
    shape[axis] = ops.iter().map(|o| o.extent).sum();
    shape
}

/// Chunks in a grid.
fn grid_count(edges: &[Edges], shape: &[u64]) -> u64 {
    edges
        .iter()
        .zip(shape)
        .map(|(e, &n)| e.list(n).len() as u64)
        .product()
}

/// Carries out the layers of `plan` selected by `todo` into the array directory of `out`
/// (its layout gives keys), staging new files in `staging`.
#[allow(clippy::too_many_arguments)]
fn apply(
    plan: &Plan,
    todo: &[usize],
    ops: &[Operand],
    joined: &View,
    out: &Layout,
    codec: &GridCodec,
    staging: &Staging,
    opts: &GrowOptions,
    in_place: bool,
    tracker: &Tracker,
    checkpoint: Option<&Checkpoint>,
) -> Result<Done> {
    let axis = opts.axis;
    let shape = out.shape().to_vec();
    let ndim = shape.len();
    let across: Vec<std::ops::Range<u64>> = out
        .edges()
        .iter()
        .zip(&shape)
        .enumerate()
        .map(|(k, (e, &n))| {
            if k == axis {
                0..1
            } else {
                0..e.list(n).len() as u64
            }
        })
        .collect();
    let others = indices_in(&across);
    let done = Done::default();
    let fill = codec.fill_bytes();
    let itemsize = fill.len();
    let budget = opts.memory.unwrap_or(256 << 20);
    staging.create()?;
    let files = FileWriter::new(staging.dir(), 2 * rayon::current_num_threads(), true);
    let mut staged: Vec<(PathBuf, PathBuf)> = Vec::new();
    let staged_lock = std::sync::Mutex::new(&mut staged);
    let mut finished: Vec<u64> = Vec::new();
    let mut last = Instant::now();
    for &li in todo {
        let layer = &plan.layers[li];
        match layer.act {
            Act::Link { op, layer: j } => {
                let src_layout = ops[op].layout.as_ref().expect("linked operands are stored");
                others.par_iter().try_for_each(|rest| -> Result<()> {
                    let mut dst_idx = rest.clone();
                    dst_idx[axis] = li as u64;
                    let mut src_idx = rest.clone();
                    src_idx[axis] = j;
                    let src = src_layout.chunk_file(&src_idx);
                    let dst = out.chunk_file(&dst_idx);
                    if src.exists() {
                        // (--move also links: the inputs go only after the commit, APPEND §4.5.)
                        let copied = link_chunk(&src, &dst, staging)?;
                        done.bytes.fetch_add(copied, Ordering::Relaxed);
                        done.linked.fetch_add(1, Ordering::Relaxed);
                        crash_point("placing");
                    } else if in_place {
                        remove_chunk(&dst)?;
                    }
                    tracker.add(1);
                    Ok(())
                })?;
            }
            Act::Encode => {
                let total = shape[axis];
                let rows = layer.start..(layer.start + layer.edge).min(total);
                let mut lr: Vec<std::ops::Range<u64>> = shape.iter().map(|&n| 0..n).collect();
                lr[axis] = rows.clone();
                let layer_region = Region::new(lr);
                let layer_bytes =
                    u64::try_from(layer_region.len()).unwrap_or(u64::MAX) * itemsize as u64;
                // The whole layer at once when it fits the budget (TIFF pages decode once);
                // else chunk by chunk.
                let whole: Option<Vec<u8>> = if layer_bytes <= budget {
                    let mut buf = vec![0u8; to_usize(layer_bytes, "layer")?];
                    joined.read_region_into(&layer_region, &mut buf)?;
                    Some(buf)
                } else {
                    None
                };
                let lshape: Vec<usize> = layer_region.shape().iter().map(|&n| n as usize).collect();
                let lstrides = c_strides(&lshape, itemsize);
                others.par_iter().try_for_each(|rest| -> Result<()> {
                    let mut idx = rest.clone();
                    idx[axis] = li as u64;
                    let cshape = codec.chunk_shape(&idx)?;
                    let mut creg: Vec<std::ops::Range<u64>> = Vec::with_capacity(ndim);
                    for k in 0..ndim {
                        let s = if k == axis {
                            layer.start
                        } else {
                            chunk_start(&out.edges()[k], shape[k], rest[k])
                        };
                        creg.push(s..(s + cshape[k]).min(shape[k]));
                    }
                    let creg = Region::new(creg);
                    let n = to_usize(cshape.iter().product::<u64>(), "chunk")?;
                    let mut buf: Vec<u8> =
                        fill.iter().copied().cycle().take(n * itemsize).collect();
                    let cs: Vec<usize> = cshape.iter().map(|&c| c as usize).collect();
                    let cstrides = c_strides(&cs, itemsize);
                    let extent: Vec<usize> = creg.shape().iter().map(|&e| e as usize).collect();
                    match &whole {
                        Some(data) => {
                            let off: usize = creg
                                .ranges()
                                .iter()
                                .zip(layer_region.ranges())
                                .zip(&lstrides)
                                .map(|((c, l), &s)| (c.start - l.start) as usize * s)
                                .sum();
                            copy_box(
                                data,
                                Side {
                                    offset: off,
                                    strides: &lstrides,
                                },
                                &mut buf,
                                Side {
                                    offset: 0,
                                    strides: &cstrides,
                                },
                                &extent,
                                itemsize,
                                false,
                            );
                        }
                        None => {
                            let mut part = vec![0u8; extent.iter().product::<usize>() * itemsize];
                            joined.read_region_into(&creg, &mut part)?;
                            copy_box(
                                &part,
                                Side {
                                    offset: 0,
                                    strides: &c_strides(&extent, itemsize),
                                },
                                &mut buf,
                                Side {
                                    offset: 0,
                                    strides: &cstrides,
                                },
                                &extent,
                                itemsize,
                                false,
                            );
                        }
                    }
                    let dst = out.chunk_file(&idx);
                    if is_fill(&buf, &fill) {
                        // All fill value: no file (as zarr-python writes), none left behind.
                        remove_chunk(&dst)?;
                    } else {
                        let encoded = codec.encode(&idx, &buf)?;
                        done.bytes
                            .fetch_add(encoded.len() as u64, Ordering::Relaxed);
                        done.encoded.fetch_add(1, Ordering::Relaxed);
                        let tmp = staging.path_for(&dst)?;
                        files.write(tmp.clone(), encoded)?;
                        staged_lock
                            .lock()
                            .expect("no panics hold it")
                            .push((tmp, dst));
                    }
                    tracker.add(1);
                    Ok(())
                })?;
            }
        }
        if let Some(cp) = checkpoint {
            finished.push(li as u64);
            if last.elapsed() >= cp.every {
                // Every chunk of the finished layers in place, then the record that says so.
                files.flush()?;
                let batch = std::mem::take(&mut **staged_lock.lock().expect("no panics hold it"));
                place_all(&batch)?;
                if cp.sync {
                    sync_filesystem(&cp.store)?;
                }
                let mut record = cp.record.clone();
                record.layers.extend_from_slice(&finished);
                record.write(&cp.store, cp.sync)?;
                crash_point("checkpointed");
                last = Instant::now();
            }
        }
    }
    let written = files.finish()?;
    drop(written);
    place_all(&staged)?;
    Ok(done)
}

/// `--checkpoint-secs`: a finite number of seconds, 0 or more (default 2).
fn checkpoint_secs(opts: &GrowOptions) -> Result<f64> {
    let secs = opts.checkpoint_secs.unwrap_or(2.0);
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(Error::option(
            "--checkpoint-secs",
            format!("{secs}: give a number of seconds, 0 or more"),
        ));
    }
    Ok(secs)
}

/// A record of an in-place append's finished layers, written as it goes (APPEND §5.1).
struct Checkpoint {
    store: PathBuf,
    /// The record so far (the layers a killed run had finished).
    record: Progress,
    every: std::time::Duration,
    sync: bool,
}

/// Renames complete staged chunk files into place (each rename atomic).
fn place_all(staged: &[(PathBuf, PathBuf)]) -> Result<()> {
    staged.par_iter().try_for_each(|(tmp, dst)| -> Result<()> {
        place(tmp, dst)?;
        crash_point("placing");
        Ok(())
    })
}

/// Where chunk `i` starts along an axis.
fn chunk_start(edges: &Edges, extent: u64, i: u64) -> u64 {
    match edges {
        Edges::Fixed(c) => i * c,
        Edges::Varying(_) => edges.list(extent)[..i as usize].iter().sum(),
    }
}

fn is_fill(buf: &[u8], fill: &[u8]) -> bool {
    if fill.iter().all(|&b| b == 0) {
        return buf.iter().all(|&b| b == 0);
    }
    buf.chunks_exact(fill.len()).all(|c| c == fill)
}

/// The journal's record of the inputs `--move` removes after the commit.
fn moving_list(opts: &GrowOptions, inputs: &[PathBuf]) -> Vec<Moving> {
    if !opts.move_inputs {
        return Vec::new();
    }
    inputs
        .iter()
        .map(|p| Moving {
            path: canonical(p).to_string_lossy().into_owned(),
            stamp: stamp(p),
        })
        .collect()
}

/// `p` made absolute through its parent (it may be gone).
fn canonical(p: &Path) -> PathBuf {
    if let Ok(c) = p.canonicalize() {
        return c;
    }
    let parent = p
        .parent()
        .filter(|q| !q.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    match (parent.canonicalize(), p.file_name()) {
        (Ok(dir), Some(name)) => dir.join(name),
        _ => p.to_path_buf(),
    }
}

/// A rerun of a `--move` join whose commit happened (APPEND §4.5): removes what is left of the
/// inputs the journal of `dir` lists (each gone, half removed, or as it was when joined) and
/// says "already done". `None` when the journal does not describe this join.
fn finish_move(
    dir: &Path,
    inputs: &[PathBuf],
    opts: &GrowOptions,
    start: Instant,
) -> Result<Option<GrowReport>> {
    if !opts.move_inputs || opts.again || !is_store(dir) {
        return Ok(None);
    }
    let Some(j) = Journal::read(dir) else {
        return Ok(None);
    };
    let given: Vec<PathBuf> = inputs.iter().map(|p| canonical(p)).collect();
    let listed: Vec<PathBuf> = j.moving.iter().map(|m| PathBuf::from(&m.path)).collect();
    let Ok(layout) = Layout::read(dir) else {
        return Ok(None);
    };
    if j.moving.is_empty() || given != listed || layout.shape() != j.to {
        return Ok(None);
    }
    let mut r = GrowReport::unchanged(
        dir,
        (!j.from.is_empty()).then(|| j.from.clone()),
        j.to.clone(),
        layout.meta(),
        true,
        start,
    );
    // The join is committed: whatever happens to the inputs now, it stands (a warning).
    for (p, m) in listed.iter().zip(&j.moving) {
        if !p.exists() {
            continue;
        }
        if !p.join("zarr.json").exists() {
            // Half removed by the killed run.
            if let Err(e) = fs::remove_dir_all(p) {
                r.warnings.push(format!("{}: {e}", p.display()));
            }
        } else if stamp(p) == m.stamp {
            remove_moved(std::slice::from_ref(p), &mut r);
        } else {
            r.warnings.push(format!(
                "{} was joined into {} and has changed since; it is not removed",
                p.display(),
                dir.display()
            ));
        }
    }
    Ok(Some(r))
}

/// Removes the inputs of a committed `--move` join; what cannot be removed becomes a warning
/// of the report, never an error (the join stands).
fn remove_moved(inputs: &[PathBuf], report: &mut GrowReport) {
    if let Err(e) = remove_inputs(inputs) {
        report
            .warnings
            .push(format!("joined, but the inputs were not all removed: {e}"));
    }
}

fn remove_inputs(inputs: &[PathBuf]) -> Result<()> {
    for p in inputs {
        // zarr.json first: a half-removed input is no longer an array.
        remove_chunk(&p.join("zarr.json"))?;
        crash_point("moving");
        sync_dir(p)?;
        fs::remove_dir_all(p).at(p)?;
    }
    Ok(())
}

/// Grows the array `target` in place with `ops` (`ops[0]` is the target itself).
fn grow_in_place(
    target: &Layout,
    mut ops: Vec<Operand>,
    opts: &GrowOptions,
    fp: &str,
    start: Instant,
    moving: &[PathBuf],
) -> Result<GrowReport> {
    let axis = opts.axis;
    if axis >= target.shape().len() {
        return Err(Error::option(
            "--axis",
            format!(
                "{axis} is out of range for the {}-d array {}",
                target.shape().len(),
                target.path().display()
            ),
        ));
    }
    ops[0].extent = target.shape()[axis];
    let old_shape = target.shape().to_vec();
    let shape = shape_of(&ops, axis);
    if shape == old_shape {
        // Nothing to add (empty inputs): the array is left exactly as it is.
        return Ok(GrowReport::unchanged(
            target.path(),
            Some(old_shape),
            shape,
            target.meta(),
            false,
            start,
        ));
    }
    let plan = choose_plan(&ops, target, opts)?;
    let mut edges = target.edges().to_vec();
    edges[axis] = plan.axis_edges.clone();
    let meta = target.metadata_with(&shape, &edges);
    let codec = GridCodec::new(&meta, target.path())?;
    let old_edges = target.edges()[axis].list(old_shape[axis]);
    // Which layers change, and whether an existing chunk changes shape (then the directory is
    // rebuilt from links and exchanged, APPEND §4.3).
    let mut todo = Vec::new();
    let mut reshaped = false;
    for (l, layer) in plan.layers.iter().enumerate() {
        let keep = layer.act
            == Act::Link {
                op: 0,
                layer: l as u64,
            };
        if keep {
            continue;
        }
        if l < old_edges.len() && old_edges[l] != layer.edge {
            reshaped = true;
        }
        todo.push(l);
    }
    if plan.layers.len() < old_edges.len() {
        reshaped = true;
    }
    let sync = opts.durability == Durability::Sync;
    let layers_reencoded = stored_reencoded(
        &Plan {
            layers: todo.iter().map(|&l| plan.layers[l].clone()).collect(),
            axis_edges: plan.axis_edges.clone(),
        },
        &ops,
    );
    // Without an exchange, finished layers are recorded as the append goes, and a rerun of the
    // same command on the same array skips those a killed run finished (APPEND §5.1).
    let mut layers_resumed = 0;
    let target_meta = fnv1a(&target.meta().to_string());
    let record = Progress::read(target.path());
    let ours = |p: &Progress| {
        p.fingerprint == fp && p.target_meta == target_meta && p.from == old_shape && p.to == shape
    };
    if record.as_ref().is_some_and(|p| !ours(p)) {
        // Another edit was killed after placing chunks past the extent (its record says so):
        // they are not this one's, and would otherwise linger and count as stored.
        target.remove_outside_grid()?;
    }
    let checkpoint = if reshaped {
        None
    } else {
        let before: Vec<u64> = record
            .filter(|p| ours(p))
            .map(|p| p.layers)
            .unwrap_or_default();
        let n = todo.len();
        todo.retain(|&l| !before.contains(&(l as u64)));
        layers_resumed = (n - todo.len()) as u64;
        Some(Checkpoint {
            store: target.path().to_path_buf(),
            record: Progress {
                fingerprint: fp.to_string(),
                target_meta,
                from: old_shape.clone(),
                to: shape.clone(),
                layers: before,
            },
            every: std::time::Duration::from_secs_f64(checkpoint_secs(opts)?.min(1e9)),
            sync,
        })
    };
    let joined = View::concat(ops.iter().map(|o| o.view.clone()).collect(), axis)?;
    let per_layer = grid_count(&edges, &shape) / plan.layers.len().max(1) as u64;
    let tracker = Tracker::new(
        "append",
        Unit::Chunks,
        per_layer * todo.len() as u64,
        opts.progress.clone(),
    );
    let journal = Journal {
        fingerprint: fp.to_string(),
        from: old_shape.clone(),
        to: shape.clone(),
        moving: moving_list(opts, moving),
    };
    let mut warnings = Vec::new();
    let (done, exchanged, meta_bytes) = if let Some(cp) = &checkpoint {
        let out = Layout::from_json(target.path(), meta.clone())?;
        let staging = Staging::new(target.path());
        // The record exists before any chunk is placed past the extent, so that whatever a
        // kill leaves there is known to a later, different edit (which removes it).
        cp.record.write(&cp.store, sync)?;
        let applied = apply(
            &plan,
            &todo,
            &ops,
            &joined,
            &out,
            &codec,
            &staging,
            opts,
            true,
            &tracker,
            checkpoint.as_ref(),
        );
        let done = applied.inspect_err(|_| {
            // Staged files are never resumed: free their space now (a full disk, say).
            staging.remove();
        })?;
        crash_point("staged");
        let jb = journal.write(target.path())?;
        crash_point("journaled");
        if sync {
            sync_filesystem(target.path())?;
        }
        commit_metadata(target.path(), &meta, sync)?;
        crash_point("committed");
        staging.remove();
        let _ = fs::remove_file(target.path().join(PROGRESS_FILE));
        (done, false, meta_len(&meta) + jb)
    } else {
        let new_dir = sibling(target.path(), NEW_SUFFIX)?;
        if new_dir.exists() {
            fs::remove_dir_all(&new_dir).at(&new_dir)?;
        }
        fs::create_dir(&new_dir).at(&new_dir)?;
        let new_lock = StoreLock::create_in(&new_dir)?;
        let built = (|| -> Result<(Done, u64)> {
            link_tree(target.path(), &new_dir)?;
            crash_point("linked");
            let out = Layout::from_json(&new_dir, meta.clone())?;
            let staging = Staging::new(&new_dir);
            // Every layer but the unchanged ones: the linked tree already holds those.
            let done = apply(
                &plan, &todo, &ops, &joined, &out, &codec, &staging, opts, true, &tracker, None,
            )?;
            staging.remove();
            crash_point("staged");
            let jb = journal.write(&new_dir)?;
            commit_metadata(&new_dir, &meta, false)?;
            crash_point("journaled");
            if sync {
                sync_filesystem(&new_dir)?;
            }
            exchange(target.path(), &new_dir)?;
            Ok((done, jb))
        })();
        let (done, jb) = built.inspect_err(|_| {
            // Nothing was committed: the rebuilt directory goes (its space with it).
            let _ = fs::remove_dir_all(&new_dir);
        })?;
        crash_point("committed");
        if sync && let Err(e) = sync_dir(crate::store::parent_dir(target.path())) {
            warnings.push(format!("committed, but syncing the directory failed: {e}"));
        }
        // The old array now sits at the sibling path: gone once nothing refers to it.
        if let Err(e) = fs::remove_dir_all(&new_dir) {
            warnings.push(format!(
                "committed, but the old array at {} was not removed: {e}",
                new_dir.display()
            ));
        }
        drop(new_lock);
        (done, true, meta_len(&meta) + jb)
    };
    Ok(GrowReport {
        path: target.path().to_path_buf(),
        old_shape: Some(old_shape),
        shape,
        grid: grid_name(&meta),
        chunks_linked: done.linked.into_inner(),
        chunks_encoded: done.encoded.into_inner(),
        layers_reencoded,
        layers_resumed,
        bytes_written: done.bytes.into_inner() + meta_bytes,
        exchanged,
        already_done: false,
        warnings,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Builds a new array at `out` from `ops` (concat).
#[allow(clippy::too_many_arguments)]
fn build_new(
    first: &Layout,
    mut ops: Vec<Operand>,
    out: &Path,
    opts: &GrowOptions,
    fp: &str,
    start: Instant,
    inputs: &[PathBuf],
) -> Result<GrowReport> {
    let axis = opts.axis;
    if axis >= first.shape().len() {
        return Err(Error::option(
            "--axis",
            format!(
                "{axis} is out of range for {}-d arrays",
                first.shape().len()
            ),
        ));
    }
    for o in &mut ops {
        o.extent = o.view.shape()[axis];
    }
    let shape = shape_of(&ops, axis);
    let plan = choose_plan(&ops, first, opts)?;
    let mut edges = first.edges().to_vec();
    edges[axis] = plan.axis_edges.clone();
    let meta = first.metadata_with(&shape, &edges);
    let (tmp, lock) = begin_build(out)?;
    let out_layout = Layout::from_json(&tmp, meta.clone())?;
    let codec = GridCodec::new(&meta, out)?;
    let joined = View::concat(ops.iter().map(|o| o.view.clone()).collect(), axis)?;
    let todo: Vec<usize> = (0..plan.layers.len()).collect();
    let tracker = Tracker::new(
        "concat",
        Unit::Chunks,
        grid_count(&edges, &shape),
        opts.progress.clone(),
    );
    let staging = Staging::new(&tmp);
    let done = apply(
        &plan,
        &todo,
        &ops,
        &joined,
        &out_layout,
        &codec,
        &staging,
        opts,
        false,
        &tracker,
        None,
    )?;
    staging.remove();
    crash_point("staged");
    let meta_bytes = finish_build(&tmp, lock, out, &meta, fp, opts, moving_list(opts, inputs))?;
    let mut r = GrowReport {
        path: out.to_path_buf(),
        old_shape: None,
        shape,
        grid: grid_name(&meta),
        chunks_linked: done.linked.into_inner(),
        chunks_encoded: done.encoded.into_inner(),
        layers_reencoded: stored_reencoded(&plan, &ops),
        layers_resumed: 0,
        bytes_written: done.bytes.into_inner() + meta_bytes,
        exchanged: false,
        already_done: false,
        warnings: Vec::new(),
        seconds: start.elapsed().as_secs_f64(),
    };
    if opts.move_inputs {
        remove_moved(inputs, &mut r);
    }
    Ok(r)
}

/// Commits a build directory: journal, sync, `zarr.json`, rename into place.
fn finish_build(
    tmp: &Path,
    lock: StoreLock,
    out: &Path,
    meta: &Value,
    fp: &str,
    opts: &GrowOptions,
    moving: Vec<Moving>,
) -> Result<u64> {
    let shape: Vec<u64> = meta["shape"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    let jb = Journal {
        fingerprint: fp.to_string(),
        from: Vec::new(),
        to: shape,
        moving,
    }
    .write(tmp)?;
    crash_point("journaled");
    if opts.durability == Durability::Sync {
        sync_filesystem(tmp)?;
    }
    publish(
        tmp,
        out,
        meta,
        &[tmp.join(LOCK_FILE)],
        opts.overwrite,
        opts.durability,
    )?;
    crash_point("committed");
    drop(lock);
    Ok(meta_len(meta) + jb)
}

fn meta_len(meta: &Value) -> u64 {
    serde_json::to_string_pretty(meta).map_or(0, |s| s.len() as u64)
}

/// Hard-links every file of the array at `from` into `to` (same relative paths), except
/// chunkwise's own files and `zarr.json`.
fn link_tree(from: &Path, to: &Path) -> Result<()> {
    // `to` is private until the exchange: its directories are made as the walk finds them
    // and each chunk is one link(2) (a copy across filesystems), no staging needed.
    let mut dirs = vec![from.to_path_buf()];
    let mut files = Vec::new();
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d).at(&d)? {
            let e = e.at(&d)?;
            let p = e.path();
            let Ok(rel) = p.strip_prefix(from).map(Path::to_path_buf) else {
                continue;
            };
            let name = rel.to_string_lossy();
            // chunkwise's own files (lock, journal, staging) all start with `.chunkwise`.
            if name == "zarr.json" || name.starts_with(".chunkwise") {
                continue;
            }
            if e.file_type().at(&p)?.is_dir() {
                let made = to.join(&rel);
                fs::create_dir_all(&made).at(&made)?;
                dirs.push(p);
            } else {
                files.push(rel);
            }
        }
    }
    files
        .par_iter()
        .try_for_each(|rel| link_or_copy(&from.join(rel), &to.join(rel)).map(|_| ()))
}

// ---------------------------------------------------------------- stack metadata

/// The first input's metadata with a new leading axis of chunk 1: codecs that name axes gain
/// one (sharding's inner chunk shape, transpose's order); others are unchanged, and a chunk
/// file encoded at shape S is the same bytes at shape [1, S...].
fn stacked_metadata(first: &Layout, n: u64) -> Result<Value> {
    let mut shape = vec![n];
    shape.extend_from_slice(first.shape());
    let mut edges = vec![Edges::Fixed(1)];
    edges.extend(first.edges().iter().cloned());
    let mut meta = first.metadata_with(&shape, &edges);
    let codecs = meta["codecs"].clone();
    meta["codecs"] = lift_codecs(&codecs, first.path())?;
    if let Some(names) = meta
        .get("dimension_names")
        .filter(|v| !v.is_null())
        .cloned()
    {
        let mut v = vec![Value::Null];
        v.extend(names.as_array().cloned().unwrap_or_default());
        meta["dimension_names"] = Value::Array(v);
    }
    Ok(meta)
}

fn lift_codecs(codecs: &Value, path: &Path) -> Result<Value> {
    let list = codecs.as_array().cloned().unwrap_or_default();
    let mut out = Vec::new();
    for c in list {
        let name = c["name"].as_str().unwrap_or("").to_string();
        let mut c = c.clone();
        match name.as_str() {
            "bytes" | "zstd" | "blosc" | "gzip" | "crc32c" => {}
            "sharding_indexed" => {
                let cfg = &mut c["configuration"];
                let mut inner = vec![json!(1)];
                inner.extend(cfg["chunk_shape"].as_array().cloned().unwrap_or_default());
                cfg["chunk_shape"] = Value::Array(inner);
                let codecs = cfg["codecs"].clone();
                cfg["codecs"] = lift_codecs(&codecs, path)?;
                let index = cfg["index_codecs"].clone();
                cfg["index_codecs"] = lift_codecs(&index, path)?;
            }
            "transpose" => {
                let order: Vec<u64> = c["configuration"]["order"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_u64).collect())
                    .unwrap_or_default();
                let mut lifted = vec![0];
                lifted.extend(order.iter().map(|o| o + 1));
                c["configuration"]["order"] = json!(lifted);
            }
            other => {
                return Err(Error::Incompatible(Box::new(Incompatibility {
                    left_path: path.to_path_buf(),
                    right_path: path.to_path_buf(),
                    field: "codecs".into(),
                    left: format!("{other:?}"),
                    right: "a codec that can gain an axis".into(),
                })));
            }
        }
        out.push(c);
    }
    Ok(Value::Array(out))
}
