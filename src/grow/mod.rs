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

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::input::Input;
use crate::run::with_threads;
use crate::run::{RunOptions, run_setters};
use crate::store::{
    Layout, StoreLock, check_removable, check_utf8, clean_stale, lock_existing,
    recover_replacement, resolve_links,
};

mod apply;
mod commit;
mod image;
mod parts;
mod plan;
mod remote;
mod stack;

use apply::checkpoint_secs;
use commit::{
    already_done, build_new, fingerprint, finish_move, grid_name, grow_in_place, output_done,
    remove_moved, stamps,
};
use plan::{
    check_axis, check_join_inputs, check_not_self, check_target, fresh_operand, stored_operand,
    target_operand,
};
pub use stack::stack;

/// The chunk grid a grown array gets along the growth axis (APPEND §3).
///
/// ```
/// use chunkwise::{GridLayout, GrowOptions};
/// assert_eq!(GridLayout::default(), GridLayout::Auto);
/// assert_eq!("rectilinear".parse::<GridLayout>()?, GridLayout::Rectilinear);
/// let opts = GrowOptions::default().layout(GridLayout::Regular); // for every reader
/// # let _ = opts;
/// # Ok::<(), chunkwise::Error>(())
/// ```
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
                "layout",
                format!("{other:?}: use auto, regular or rectilinear"),
            )),
        }
    }
}

/// Settings for [`append`], [`concat()`], [`concat_into`] and [`stack`].
///
/// ```no_run
/// use chunkwise::{GridLayout, GrowOptions, Input};
/// let opts = GrowOptions::default()
///     .axis(0)
///     .layout(GridLayout::Rectilinear)
///     .cast(true) // uint8 slices into a uint16 array
///     .wait(true); // queue behind another writer instead of failing
/// chunkwise::append("volume.zarr".as_ref(), &[Input::open("day2/")?], &opts)?;
/// # Ok::<(), chunkwise::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct GrowOptions {
    axis: usize,
    layout: GridLayout,
    cast: bool,
    move_inputs: bool,
    wait: bool,
    overwrite: bool,
    again: bool,
    run: RunOptions,
    checkpoint_secs: Option<f64>,
    partition: Option<(u32, u32)>,
}

impl std::fmt::Debug for GrowOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrowOptions")
            .field("run", &self.run)
            .field("axis", &self.axis)
            .field("layout", &self.layout)
            .field("cast", &self.cast)
            .field("move_inputs", &self.move_inputs)
            .field("wait", &self.wait)
            .field("overwrite", &self.overwrite)
            .field("again", &self.again)
            .field("partition", &self.partition)
            .finish_non_exhaustive()
    }
}

impl GrowOptions {
    /// Do only part `I` of `N` of an append's new layers (`--partition I/N`, spec/SCALE.md
    /// §1): the parts run anywhere, at once or one after another, and the last to finish
    /// commits. `None` (the default): the whole append in this process.
    pub fn partition(mut self, part: Option<(u32, u32)>) -> Self {
        self.partition = part;
        self
    }
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
    /// How often an in-place append records the layers it has finished, so that a rerun
    /// after a kill skips them (APPEND §5.1). Default 2 s; 0 records after every layer.
    pub fn checkpoint_secs(mut self, secs: f64) -> Self {
        self.checkpoint_secs = Some(secs);
        self
    }
}

run_setters!(GrowOptions);

/// What a grow did.
///
/// ```no_run
/// use chunkwise::{GrowOptions, Input};
/// let r = chunkwise::append("volume.zarr".as_ref(), &[Input::open("day2/")?],
///                           &GrowOptions::default())?;
/// if r.already_done {
///     println!("already appended");
/// } else {
///     println!("{:?} -> {:?} ({} grid): {} chunks linked, {} encoded",
///              r.old_shape, r.shape, r.grid, r.chunks_linked, r.chunks_encoded);
/// }
/// # Ok::<(), chunkwise::Error>(())
/// ```
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
    /// A part of an append in parts that did not commit: `(done, total)` parts; with
    /// `done < total` the array is not grown yet (the last part to finish commits), with
    /// `done == total` another part committed as this one finished.
    pub parts_waiting: Option<(u32, u32)>,
    /// An OME-Zarr image grown by `append` (spec/PYRAMID.md §6): every level's shape now,
    /// from level 0 down (`shape` is level 0's); empty for an array.
    pub levels: Vec<Vec<u64>>,
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
            parts_waiting: None,
            levels: Vec::new(),
            seconds: start.elapsed().as_secs_f64(),
        }
    }
}

/// Appends `inputs` (anything `convert` reads, or stores) to the array at `store` along the
/// axis, in place (APPEND §2). An OME-Zarr image at `store` grows as a whole: level 0 by the
/// inputs, each lower level by recomputing its tail, all levels committed at once
/// (spec/PYRAMID.md §6; the report's `levels` are their new shapes).
///
/// ```no_run
/// use chunkwise::{GrowOptions, Input};
/// let r = chunkwise::append("volume.zarr".as_ref(), &[Input::open("day2/")?],
///                           &GrowOptions::default())?;
/// println!("{:?} -> {:?}", r.old_shape, r.shape);
/// # Ok::<(), chunkwise::Error>(())
/// ```
///
/// # Errors
/// [`Error::Locked`] if another writer holds the array; [`crate::InputError::ShapeMismatch`] naming the
/// axis and sizes; [`Error::InvalidOption`] for another type without `--cast` or a lossy cast;
/// input and I/O errors. The array is unchanged after any error.
pub fn append(store: &Path, inputs: &[Input], opts: &GrowOptions) -> Result<GrowReport> {
    append_with_labels(store, inputs, &[], opts)
}

/// [`append`] to an OME-Zarr image with label images: each `(name, labels)` grows the label
/// image `labels/NAME` by its new slices (as many as `inputs` add), its levels' tails
/// recomputed as its pyramid makes them (mode), in the same commit as the image's
/// (spec/PYRAMID.md §6). Every label image the image has must be given.
///
/// ```no_run
/// use chunkwise::{GrowOptions, Input};
/// let day2 = [Input::open("day2/image")?];
/// let cells = [Input::open("day2/cells.npy")?];
/// chunkwise::append_with_labels("brain.ome.zarr".as_ref(), &day2, &[("cells", &cells[..])],
///                               &GrowOptions::default())?;
/// # Ok::<(), chunkwise::Error>(())
/// ```
///
/// # Errors
/// As [`append`]; [`Error::InvalidOption`] (`labels`) for labels given to anything but an
/// image, a name the image has no label image of, or labels of another length than the
/// image's new slices; a label image left out is refused, naming it.
pub fn append_with_labels(
    store: &Path,
    inputs: &[Input],
    labels: &[(&str, &[Input])],
    opts: &GrowOptions,
) -> Result<GrowReport> {
    if crate::store::is_url(store) {
        if crate::ome::is_image(store) {
            // Its levels would each grow on their own, with no exchange to commit them together.
            return Err(Error::Store(crate::error::StoreError::Remote {
                url: store.to_string_lossy().into_owned(),
                reason: "appending to an OME-Zarr image on object storage is not supported yet \
                         (append to a local copy, then `chunkwise pyramid LOCAL -o s3://...`)"
                    .into(),
            }));
        }
        if !labels.is_empty() {
            return Err(not_an_image(store));
        }
        return with_threads(opts.run.threads, || remote::append(store, inputs, opts));
    }
    with_threads(opts.run.threads, || {
        let start = Instant::now();
        if inputs.is_empty() {
            return Err(Error::option("input", "nothing to append"));
        }
        // Through a link, the array it points to is edited and the link stays (APPEND §6.3).
        let store = &resolve_links(store)?;
        // A kill between the two renames of a replacement without exchange: undone first.
        recover_replacement(store)?;
        if crate::ome::is_image(store) {
            return image::append(store, inputs, labels, opts);
        }
        if !labels.is_empty() {
            return Err(not_an_image(store));
        }
        image::refuse_level(store)?;
        check_target(store)?;
        checkpoint_secs(opts)?;
        // The parts of an append in parts share the lock (no other writer runs meanwhile), and
        // clean only what is theirs (APPEND §5.2).
        let _lock = match opts.partition {
            Some(part) => {
                crate::store::check_part(part)?;
                StoreLock::acquire_shared(store, opts.wait)?
            }
            None => {
                let lock = StoreLock::acquire(store, opts.wait)?;
                clean_stale(store)?;
                lock
            }
        };
        let target = Layout::read(store)?;
        check_axis(&target, opts.axis)?;
        check_not_self(store, inputs)?;
        // The inputs are checked (a shape that does not fit, a type without --cast) before a
        // rerun can answer "already done" (issue 18.6).
        // A store is linked where it can be (its chunks fit the array's), anything else encoded.
        let mut ops = vec![target_operand(&target)?];
        let mut locks = Vec::new();
        for input in inputs {
            match input.store() {
                Some(s) => {
                    locks.push(StoreLock::acquire_shared(s.path(), opts.wait)?);
                    ops.push(stored_operand(s.path(), &target, opts, false)?);
                }
                None => ops.push(fresh_operand(input, &target, opts)?),
            }
        }
        let lines: Vec<String> = inputs.iter().map(|i| i.identity().to_string()).collect();
        let fp = fingerprint("append", opts, Some(store), &lines);
        if let Some(done) = already_done(&target, &fp, opts, start)? {
            return Ok(done);
        }
        let r = grow_in_place(&target, ops, opts, &fp, start, &[])?;
        drop(locks);
        Ok(r)
    })
}

/// Labels given to an append onto something else than an OME-Zarr image.
fn not_an_image(store: &Path) -> Error {
    Error::option(
        "labels",
        format!(
            "{} is not an OME-Zarr image: label images grow with an image",
            store.display()
        ),
    )
}

/// Refuses `--partition` for a command that does not split: joins link chunks, a metadata
/// edit with nothing to share out.
pub(crate) fn no_parts(opts: &GrowOptions, what: &str) -> Result<()> {
    match opts.partition {
        Some(_) => Err(Error::option(
            "partition",
            format!("{what} does not split into parts (it links chunks); only append does"),
        )),
        None => Ok(()),
    }
}

/// Joins the stores `inputs` along the axis into a new array at `out` (APPEND §3).
///
/// ```no_run
/// use chunkwise::GrowOptions;
/// let r = chunkwise::concat(&["a.zarr".into(), "b.zarr".into()], "ab.zarr".as_ref(),
///                           &GrowOptions::default())?;
/// println!("{} chunks linked, {} encoded", r.chunks_linked, r.chunks_encoded);
/// # Ok::<(), chunkwise::Error>(())
/// ```
///
/// # Errors
/// [`crate::GrowError::Incompatible`] naming the field that differs; [`Error::OutputExists`] without
/// `overwrite`; [`Error::InvalidOption`] for an output inside an input, or an input given
/// twice; as [`append`].
pub fn concat(inputs: &[PathBuf], out: &Path, opts: &GrowOptions) -> Result<GrowReport> {
    no_parts(opts, "concat")?;
    if crate::store::is_url(out) {
        // On object storage: server-side copies of S3 inputs' chunks (APPEND §5.3).
        return with_threads(opts.run.threads, || remote::concat(inputs, out, opts));
    }
    for p in inputs.iter().map(PathBuf::as_path).chain([out]) {
        crate::store::local_only(p, "concat (of an S3 store into a local output)")?;
    }
    with_threads(opts.run.threads, || {
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
/// ```no_run
/// use chunkwise::{GridLayout, GrowOptions};
/// chunkwise::concat_into("a.zarr".as_ref(), &["b.zarr".into()],
///                        &GrowOptions::default().layout(GridLayout::Rectilinear))?;
/// # Ok::<(), chunkwise::Error>(())
/// ```
///
/// # Errors
/// As [`concat()`] and [`append`].
pub fn concat_into(target: &Path, others: &[PathBuf], opts: &GrowOptions) -> Result<GrowReport> {
    no_parts(opts, "concat")?;
    if crate::store::is_url(target) && !opts.move_inputs {
        // Onto an array on object storage: an append of the stores, whose chunks are copied
        // server-side where they fit (APPEND §5.3).
        let inputs = others.iter().map(Input::open).collect::<Result<Vec<_>>>()?;
        return with_threads(opts.run.threads, || remote::append(target, &inputs, opts));
    }
    for p in others.iter().map(PathBuf::as_path).chain([target]) {
        crate::store::local_only(p, "concat")?;
    }
    with_threads(opts.run.threads, || {
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
        let fp = fingerprint("concat", opts, Some(target), &stamps(others));
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
    let fp = fingerprint(op, opts, None, &stamps(inputs));
    // `--overwrite` (and `--again`) rebuild whatever the output holds.
    if !(opts.overwrite || opts.again)
        && let Some(done) = output_done(out, &fp, start)?
    {
        return Ok(Begin::Done(done));
    }
    crate::store::check_replaceable(out, opts.overwrite)?;
    Ok(Begin::Go(fp, lock_existing(out)?))
}
