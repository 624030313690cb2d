//! Lazy views: arrays made of other arrays (stores, memory-mapped .npy and raw files, TIFF
//! stacks) joined along an axis, stacked along a new one, sliced or cast, without copying.
//! A view reads by region: each read asks only the parts it covers, which decode or map just
//! that region (spec/APPEND.md §7; biggus' LinearMosaic and ArrayStack).
//!
//! Invariant: a composite block writes every element of the part it is asked for exactly once,
//! straight into the caller's buffer (children write through offset strides, no staging copy),
//! except [`View::cast`], which converts through one buffer of the part.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ndarray::ArrayD;
use serde_json::Value;

use crate::dtype::{DType, Element, Scalar};
use crate::error::{Error, InputError, IoContext, Result, to_usize};
use crate::fingerprint::{content_hash, stamp};
use crate::region::{Region, check_shapes, fmt_shape};
use crate::source::{self, Block, BufferBlock, Gather, RawOptions, Source};
use crate::store::{ChunkWindow, Store, is_store};
use crate::with_scalar;

/// The deepest a view spec may nest (objects inside objects, spec files naming spec files).
///
/// ```no_run
/// use chunkwise::{Error, InputError, View};
/// assert_eq!(chunkwise::MAX_SPEC_DEPTH, 64);
/// // deep.json nests {"cast": {"cast": ...}} 65 objects deep:
/// match View::open("deep.json") {
///     Err(Error::Input(InputError::BadInput { reason, .. })) => assert!(reason.contains("deep")),
///     other => panic!("{other:?}"),
/// }
/// ```
pub const MAX_SPEC_DEPTH: usize = 64;
/// The most nodes (paths and objects, counted through every spec file it names) a view spec
/// may have: spec files that each name another many times cannot multiply without bound.
///
/// ```
/// // A view spec of more paths and objects is refused (InputError::BadInput), naming the limit.
/// assert_eq!(chunkwise::MAX_SPEC_NODES, 65536);
/// ```
pub const MAX_SPEC_NODES: usize = 1 << 16;
/// The largest view spec file read.
const MAX_SPEC_BYTES: u64 = 64 << 20;

/// What a view spec walk has seen: the spec files being opened (a cycle is refused) and the
/// nodes so far.
#[derive(Default)]
struct Walk {
    open: Vec<PathBuf>,
    nodes: usize,
}

/// A read-only array assembled lazily from stores and files.
///
/// ```no_run
/// use chunkwise::{Region, View};
/// let a = View::open("day1.zarr")?;
/// let b = View::open("day2.npy")?;
/// let both = View::concat(vec![a, b], 0)?;
/// let crop = both.slice(&Region::new(vec![100..200, 0..512, 0..512]))?;
/// let block = crop.read_region::<u16>(&Region::full(crop.shape()))?;
/// # Ok::<(), chunkwise::Error>(())
/// ```
#[derive(Clone)]
pub struct View {
    src: Arc<dyn Source>,
}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("View")
            .field("shape", &self.shape())
            .field("dtype", &self.dtype())
            .field("of", &self.src.describe())
            .finish()
    }
}

impl View {
    /// A view of one array: a store, an .npy file, a raw file with its JSON sidecar, a TIFF
    /// stack, a directory of .npy slices, or a JSON view spec (`.json`, §7 of APPEND.md).
    ///
    /// # Errors
    /// As `convert` for the same input.
    pub fn open(path: impl AsRef<Path>) -> Result<View> {
        let path = path.as_ref();
        if is_spec(path) {
            return View::from_spec_file(path);
        }
        View::open_all(&[path.to_path_buf()], &RawOptions::default())
    }

    /// A view of what `convert` would read from `inputs` (several files stack along a new
    /// leading axis).
    ///
    /// # Errors
    /// As `convert` for the same inputs.
    pub fn open_all(inputs: &[PathBuf], raw: &RawOptions) -> Result<View> {
        let raw_given = raw.dtype.is_some() || raw.shape.is_some();
        if let [one] = inputs {
            if is_spec(one) {
                source::refuse_raw_flags(raw_given, one)?;
                return View::from_spec_file(one);
            }
            if is_store(one) {
                source::refuse_raw_flags(raw_given, one)?;
                return Ok(View::from_source(store_source(one)?));
            }
        }
        Ok(View {
            src: Arc::from(source::open(inputs, raw)?),
        })
    }

    /// The view's source (what `convert` streams from).
    pub(crate) fn source(&self) -> &Arc<dyn Source> {
        &self.src
    }

    pub(crate) fn from_source(src: Arc<dyn Source>) -> View {
        View { src }
    }

    /// A view of an open store.
    pub(crate) fn from_store(store: Arc<Store>) -> View {
        View {
            src: Arc::new(StoreSource::new(store)),
        }
    }

    /// A view of an array in memory (copied once, in C order).
    ///
    /// # Errors
    /// [`Error::TooLarge`] for an array this machine cannot address.
    pub fn from_array<T: Element>(array: ndarray::ArrayViewD<'_, T>) -> Result<View> {
        let shape: Vec<u64> = array.shape().iter().map(|&n| n as u64).collect();
        let mut bytes = Vec::with_capacity(array.len() * T::DTYPE.size());
        T::extend_le_bytes(&array.iter().copied().collect::<Vec<T>>(), &mut bytes);
        Ok(View {
            src: Arc::new(Memory {
                region: Region::full(&shape),
                shape,
                dtype: T::DTYPE,
                bytes: Arc::new(bytes),
            }),
        })
    }

    /// The parts joined end to end along `axis`; every other axis must agree, and the types.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] for no parts or an axis out of range; [`crate::InputError::ShapeMismatch`]
    /// naming the axis and both sizes; [`crate::InputError::StackMismatch`] for a different type.
    pub fn concat(parts: Vec<View>, axis: usize) -> Result<View> {
        let first = parts
            .first()
            .ok_or_else(|| Error::option("concat", "nothing to join"))?;
        let ndim = first.shape().len();
        if axis >= ndim {
            return Err(Error::option(
                "axis",
                format!("{axis} is out of range for {ndim}-d arrays"),
            ));
        }
        for p in &parts[1..] {
            check_same(first, p, Some(axis))?;
        }
        if parts.len() == 1 {
            return Ok(parts.into_iter().next().expect("one part"));
        }
        Ok(View {
            src: Arc::new(Concat::new(
                parts.into_iter().map(|v| v.src).collect(),
                axis,
            )),
        })
    }

    /// The parts stacked along a new axis `axis` (0 for a new leading axis); all must have
    /// the same shape and type.
    ///
    /// # Errors
    /// As [`View::concat`].
    pub fn stack(parts: Vec<View>, axis: usize) -> Result<View> {
        let first = parts
            .first()
            .ok_or_else(|| Error::option("stack", "nothing to stack"))?;
        if axis > first.shape().len() {
            return Err(Error::option(
                "axis",
                format!(
                    "{axis} is out of range for stacking {}-d arrays",
                    first.shape().len()
                ),
            ));
        }
        for p in &parts[1..] {
            check_same(first, p, None)?;
        }
        let expanded = parts
            .into_iter()
            .map(|v| v.insert_axis(axis))
            .collect::<Result<Vec<_>>>()?;
        View::concat(expanded, axis)
    }

    /// The view with a new axis of length 1 at `axis`.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] when `axis` is past the view's rank.
    pub fn insert_axis(self, axis: usize) -> Result<View> {
        let ndim = self.shape().len();
        if axis > ndim {
            return Err(Error::option(
                "axis",
                format!("{axis} is out of range for a new axis of a {ndim}-d array"),
            ));
        }
        Ok(View {
            src: Arc::new(AxisChange::insert(self.src, axis)),
        })
    }

    /// The view without the axes `axes`, each of length 1 (numpy's `squeeze`; what an
    /// integer index does after a slice).
    ///
    /// ```
    /// use chunkwise::{Region, View};
    /// let a = ndarray::ArrayD::<u8>::zeros(vec![4, 5, 6]);
    /// let v = View::from_array(a.view())?.slice(&Region::new(vec![0..4, 2..3, 0..6]))?;
    /// assert_eq!(v.remove_axes(&[1])?.shape(), &[4, 6]);
    /// # Ok::<(), chunkwise::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidOption`] for an axis out of range, repeated, or longer than 1.
    pub fn remove_axes(self, axes: &[usize]) -> Result<View> {
        let shape = self.shape();
        let mut seen = vec![false; shape.len()];
        for &a in axes {
            if a >= shape.len() || seen[a] || shape[a] != 1 {
                return Err(Error::option(
                    "axis",
                    format!(
                        "cannot remove axis {a} of a view of shape {}: only distinct axes of length 1 are removed",
                        fmt_shape(shape)
                    ),
                ));
            }
            seen[a] = true;
        }
        if axes.is_empty() {
            return Ok(self);
        }
        Ok(View {
            src: Arc::new(AxisChange::squeeze(self.src, axes)),
        })
    }

    /// The part of the view inside `region`.
    ///
    /// # Errors
    /// [`Error::BadRegion`] if the region is not inside the view.
    pub fn slice(&self, region: &Region) -> Result<View> {
        if region.ranges().len() != self.shape().len()
            || !Region::full(self.shape()).contains(region)
        {
            return Err(Error::BadRegion {
                spec: region.to_string(),
                reason: format!("outside the view of shape {}", fmt_shape(self.shape())),
            });
        }
        Ok(View {
            src: Arc::new(Slice {
                inner: self.src.clone(),
                origin: region.start(),
                shape: region.shape(),
            }),
        })
    }

    /// The view with its values cast to `to`; only casts that keep every value exactly
    /// (numpy's "safe" casting, [`DType::casts_safely_to`]).
    ///
    /// # Errors
    /// [`Error::InvalidOption`] (`--cast`) for a lossy cast.
    pub fn cast(&self, to: DType) -> Result<View> {
        let from = self.dtype();
        if from == to {
            return Ok(self.clone());
        }
        if !from.casts_safely_to(to) {
            return Err(Error::option(
                "cast",
                format!("{from} to {to} would lose values; only widening casts are allowed"),
            ));
        }
        Ok(View {
            src: Arc::new(Cast {
                inner: self.src.clone(),
                to,
            }),
        })
    }

    /// The shape.
    pub fn shape(&self) -> &[u64] {
        self.src.shape()
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.src.dtype()
    }

    /// The block shape this view reads best by: the chunk shape of its first stored part
    /// (clipped to the view's shape), or `convert`'s default chunking.
    pub fn block_shape(&self) -> Vec<u64> {
        let shape = self.shape();
        match self.src.chunk_hint() {
            Some(c) if c.len() == shape.len() => c
                .iter()
                .zip(shape)
                .map(|(&c, &n)| c.min(n).max(1))
                .collect(),
            _ => crate::grid::default_chunks(shape),
        }
    }

    /// One line saying what the view is made of.
    pub fn describe(&self) -> String {
        self.src.describe()
    }

    /// What the view's data is now, for fingerprints: its structure with a stamp of every
    /// file and store it reads, or a hash of the values it holds in memory.
    pub(crate) fn identity(&self) -> String {
        self.src.identity()
    }

    /// Reads `region` into `out` (C order, native-endian elements).
    ///
    /// # Errors
    /// [`Error::BadRegion`] for a region outside the view or a buffer of the wrong size; read
    /// errors of the parts (naming their file or chunk).
    pub fn read_region_into(&self, region: &Region, out: &mut [u8]) -> Result<()> {
        let n = region_elements(region)?;
        if region.ranges().len() != self.shape().len()
            || !Region::full(self.shape()).contains(region)
        {
            return Err(Error::BadRegion {
                spec: region.to_string(),
                reason: format!("outside the view of shape {}", fmt_shape(self.shape())),
            });
        }
        if out.len() != n * self.dtype().size() {
            return Err(Error::BadRegion {
                spec: region.to_string(),
                reason: format!(
                    "output buffer holds {} bytes, need {}",
                    out.len(),
                    n * self.dtype().size()
                ),
            });
        }
        if n == 0 {
            return Ok(());
        }
        let shape: Vec<usize> = region.shape().iter().map(|&s| s as usize).collect();
        self.src.block(region)?.read_into(region, out, &shape);
        Ok(())
    }

    /// Reads `region` as an n-d array of `T` (the view's type).
    ///
    /// # Errors
    /// [`Error::InvalidOption`] if `T` is not the view's type; as [`View::read_region_into`].
    pub fn read_region<T: Element>(&self, region: &Region) -> Result<ArrayD<T>> {
        if T::DTYPE != self.dtype() {
            return Err(Error::option(
                "type",
                format!(
                    "the view holds {}, {} was requested",
                    self.dtype(),
                    T::DTYPE
                ),
            ));
        }
        let n = region_elements(region)?;
        let mut bytes = vec![0u8; n * self.dtype().size()];
        self.read_region_into(region, &mut bytes)?;
        let shape: Vec<usize> = region.shape().iter().map(|&s| s as usize).collect();
        Ok(
            ArrayD::from_shape_vec(shape, T::from_le_bytes_slice(&bytes))
                .expect("buffer length matches the region"),
        )
    }

    /// A view from a JSON view spec file (paths in it are relative to the file's directory).
    ///
    /// # Errors
    /// [`crate::InputError::BadInput`] naming the file for a malformed spec; errors opening its parts.
    pub fn from_spec_file(path: &Path) -> Result<View> {
        View::spec_file_in(path, &mut Walk::default())
    }

    /// `from_spec_file`, with the spec files being opened (to refuse a cycle).
    fn spec_file_in(path: &Path, walk: &mut Walk) -> Result<View> {
        let canon = path.canonicalize().at(path)?;
        if walk.open.contains(&canon) {
            let chain: Vec<String> = walk.open.iter().map(|p| p.display().to_string()).collect();
            return Err(Error::bad_input(
                path,
                format!(
                    "view spec: it includes itself ({} -> {})",
                    chain.join(" -> "),
                    canon.display()
                ),
            ));
        }
        if walk.open.len() >= MAX_SPEC_DEPTH {
            return Err(Error::bad_input(
                path,
                format!("view spec: more than {MAX_SPEC_DEPTH} spec files deep"),
            ));
        }
        let size = std::fs::metadata(path).at(path)?.len();
        if size > MAX_SPEC_BYTES {
            return Err(Error::bad_input(
                path,
                format!("view spec: {size} bytes; at most {MAX_SPEC_BYTES} are read"),
            ));
        }
        let text = std::fs::read_to_string(path).at(path)?;
        let spec: Value = serde_json::from_str(&text)
            .map_err(|e| Error::bad_input(path, format!("not JSON: {e}")))?;
        let base = path.parent().unwrap_or(Path::new(""));
        walk.open.push(canon);
        let view = View::spec_in(&spec, base, walk, 0);
        walk.open.pop();
        view.map_err(|e| match e {
            Error::Input(InputError::BadInput { reason, .. })
                if reason.starts_with("view spec") =>
            {
                Error::bad_input(path, reason)
            }
            other => other,
        })
    }

    /// A view from a JSON view spec: a path, or `{"concat": [...], "axis": A}`,
    /// `{"stack": [...], "axis": A}`, `{"slice": SPEC, "region": "0:10,:"}`,
    /// `{"cast": SPEC, "dtype": "float32"}`. Relative paths are taken from `base`.
    ///
    /// # Errors
    /// [`crate::InputError::BadInput`] for a malformed spec.
    pub fn from_spec(spec: &Value, base: &Path) -> Result<View> {
        View::spec_in(spec, base, &mut Walk::default(), 0)
    }

    fn spec_in(spec: &Value, base: &Path, walk: &mut Walk, depth: usize) -> Result<View> {
        let bad = |reason: String| Error::bad_input(base, format!("view spec: {reason}"));
        if depth >= MAX_SPEC_DEPTH {
            return Err(bad(format!("nested more than {MAX_SPEC_DEPTH} deep")));
        }
        walk.nodes += 1;
        if walk.nodes > MAX_SPEC_NODES {
            return Err(bad(format!(
                "more than {MAX_SPEC_NODES} paths and objects (counting every spec file it names)"
            )));
        }
        let axis = |o: &serde_json::Map<String, Value>| -> Result<usize> {
            match o.get("axis") {
                None => Ok(0),
                Some(a) => a
                    .as_u64()
                    .map(|a| a as usize)
                    .ok_or_else(|| bad(format!("axis {a} is not a non-negative integer"))),
            }
        };
        let list = |v: &Value, key: &str, walk: &mut Walk| -> Result<Vec<View>> {
            let items = v
                .as_array()
                .ok_or_else(|| bad(format!("{key:?} takes a list of parts")))?;
            items
                .iter()
                .map(|p| View::spec_in(p, base, walk, depth + 1))
                .collect()
        };
        match spec {
            Value::String(p) => {
                let path = base.join(p);
                if is_spec(&path) {
                    View::spec_file_in(&path, walk)
                } else {
                    View::open_all(&[path], &RawOptions::default())
                }
            }
            Value::Object(o) => {
                if let Some(parts) = o.get("concat") {
                    View::concat(list(parts, "concat", walk)?, axis(o)?)
                } else if let Some(parts) = o.get("stack") {
                    View::stack(list(parts, "stack", walk)?, axis(o)?)
                } else if let Some(inner) = o.get("slice") {
                    let v = View::spec_in(inner, base, walk, depth + 1)?;
                    let r = o.get("region").and_then(Value::as_str).ok_or_else(|| {
                        bad("\"slice\" needs a \"region\" like \"0:10,:,5:\"".into())
                    })?;
                    let parsed = Region::parse(r, v.shape())?;
                    let sliced = v.slice(&parsed.region)?;
                    // Integer indices drop their axis, as in numpy.
                    Ok(drop_axes(sliced, &parsed.dropped))
                } else if let Some(inner) = o.get("cast") {
                    let v = View::spec_in(inner, base, walk, depth + 1)?;
                    let d = o
                        .get("dtype")
                        .and_then(Value::as_str)
                        .ok_or_else(|| bad("\"cast\" needs a \"dtype\"".into()))?;
                    v.cast(d.parse()?)
                } else {
                    Err(bad(format!(
                        "an object needs one of \"concat\", \"stack\", \"slice\", \"cast\"; got keys {:?}",
                        o.keys().collect::<Vec<_>>()
                    )))
                }
            }
            other => Err(bad(format!("expected a path or an object, got {other}"))),
        }
    }
}

/// Whether `path` is a JSON view spec (a `.json` file that is not a raw file's sidecar).
pub(crate) fn is_spec(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
        && std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() <= MAX_SPEC_BYTES)
        && std::fs::read_to_string(path)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .is_some_and(|v| {
                v.is_string()
                    || ["concat", "stack", "slice", "cast"]
                        .iter()
                        .any(|k| v.get(k).is_some())
            })
}

fn drop_axes(v: View, dropped: &[usize]) -> View {
    if dropped.is_empty() {
        return v;
    }
    View {
        src: Arc::new(AxisChange::squeeze(v.src, dropped)),
    }
}

fn region_elements(region: &Region) -> Result<usize> {
    to_usize(u64::try_from(region.len()).unwrap_or(u64::MAX), "region")
}

fn check_same(first: &View, other: &View, except: Option<usize>) -> Result<()> {
    let (a, b) = (first.shape(), other.shape());
    if a.len() != b.len() {
        return Err(Error::option(
            "inputs",
            format!(
                "{} is {}-d ({}), {} is {}-d ({})",
                first.describe(),
                a.len(),
                fmt_shape(a),
                other.describe(),
                b.len(),
                fmt_shape(b)
            ),
        ));
    }
    check_shapes(
        &PathBuf::from(first.describe()),
        a,
        &PathBuf::from(other.describe()),
        b,
        except,
    )?;
    if first.dtype() != other.dtype() {
        return Err(Error::option(
            "inputs",
            format!(
                "{} holds {}, {} holds {} (cast one first)",
                first.describe(),
                first.dtype(),
                other.describe(),
                other.dtype()
            ),
        ));
    }
    Ok(())
}

/// An array in memory (C order, native-endian bytes).
struct Memory {
    region: Region,
    shape: Vec<u64>,
    dtype: DType,
    bytes: Arc<Vec<u8>>,
}

impl Source for Memory {
    fn shape(&self) -> &[u64] {
        &self.shape
    }

    fn dtype(&self) -> DType {
        self.dtype
    }

    fn describe(&self) -> String {
        format!("{} {} array in memory", fmt_shape(&self.shape), self.dtype)
    }

    fn identity(&self) -> String {
        format!(
            "{} {} hash {:016x}",
            self.describe(),
            self.region,
            content_hash(&self.bytes)
        )
    }

    fn block(&self, _region: &Region) -> Result<Box<dyn Block + '_>> {
        Ok(Box::new(MemoryBlock(self)))
    }
}

struct MemoryBlock<'a>(&'a Memory);

impl Block for MemoryBlock<'_> {
    fn itemsize(&self) -> usize {
        self.0.dtype.size()
    }

    fn read_strided(&self, part: &Region, dst: &mut [u8], offset: usize, strides: &[usize]) {
        let m = self.0;
        let shape: Vec<usize> = m.shape.iter().map(|&n| n as usize).collect();
        let src_strides = crate::copy::c_strides(&shape, m.dtype.size());
        let src_offset: usize = part
            .ranges()
            .iter()
            .zip(m.region.ranges())
            .zip(&src_strides)
            .map(|((p, r), &s)| (p.start - r.start) as usize * s)
            .sum();
        let extent: Vec<usize> = part.shape().iter().map(|&n| n as usize).collect();
        crate::copy::copy_box(
            &m.bytes,
            crate::copy::Side {
                offset: src_offset,
                strides: &src_strides,
            },
            dst,
            crate::copy::Side { offset, strides },
            &extent,
            m.dtype.size(),
            false,
        );
    }
}

/// Parts end to end along one axis.
struct Concat {
    parts: Vec<Arc<dyn Source>>,
    axis: usize,
    /// Where each part starts along the axis.
    starts: Vec<u64>,
    shape: Vec<u64>,
}

impl Concat {
    fn new(parts: Vec<Arc<dyn Source>>, axis: usize) -> Concat {
        let mut starts = Vec::with_capacity(parts.len());
        let mut shape = parts[0].shape().to_vec();
        let mut at = 0;
        for p in &parts {
            starts.push(at);
            at += p.shape()[axis];
        }
        shape[axis] = at;
        Concat {
            parts,
            axis,
            starts,
            shape,
        }
    }
}

impl Source for Concat {
    fn shape(&self) -> &[u64] {
        &self.shape
    }

    fn dtype(&self) -> DType {
        self.parts[0].dtype()
    }

    fn describe(&self) -> String {
        let inner: Vec<String> = self.parts.iter().map(|p| p.describe()).collect();
        format!("concat(axis {}: {})", self.axis, inner.join(", "))
    }

    fn identity(&self) -> String {
        let inner: Vec<String> = self.parts.iter().map(|p| p.identity()).collect();
        format!("concat(axis {}: {})", self.axis, inner.join(", "))
    }

    fn chunk_hint(&self) -> Option<Vec<u64>> {
        self.parts.iter().find_map(|p| p.chunk_hint())
    }

    /// Parts of other chunkings or offsets: not one grid to plan a rechunk by.
    fn chunk_bounds(&self) -> Option<Vec<Vec<u64>>> {
        None
    }

    fn block(&self, region: &Region) -> Result<Box<dyn Block + '_>> {
        let r = &region.ranges()[self.axis];
        let mut pieces = Vec::new();
        for (p, &s) in self.parts.iter().zip(&self.starts) {
            let n = p.shape()[self.axis];
            let (lo, hi) = (r.start.max(s), r.end.min(s + n));
            if lo >= hi {
                continue;
            }
            let mut sub = region.ranges().to_vec();
            sub[self.axis] = (lo - s)..(hi - s);
            let sub = Region::new(sub);
            pieces.push((p.block(&sub)?, s, s + n));
        }
        Ok(Box::new(ConcatBlock {
            pieces,
            axis: self.axis,
            itemsize: self.dtype().size(),
        }))
    }
}

struct ConcatBlock<'a> {
    /// Each part's block and the rows the part spans along the axis.
    pieces: Vec<(Box<dyn Block + 'a>, u64, u64)>,
    axis: usize,
    itemsize: usize,
}

impl Block for ConcatBlock<'_> {
    fn itemsize(&self) -> usize {
        self.itemsize
    }

    fn read_strided(&self, part: &Region, dst: &mut [u8], offset: usize, strides: &[usize]) {
        let r = part.ranges()[self.axis].clone();
        for (block, start, end) in &self.pieces {
            let (lo, hi) = (r.start.max(*start), r.end.min(*end));
            if lo >= hi {
                continue;
            }
            // The piece's rows of the part, in the piece's own coordinates, written where
            // they fall in the part.
            let mut sub = part.ranges().to_vec();
            sub[self.axis] = (lo - start)..(hi - start);
            let at = offset + (lo - r.start) as usize * strides[self.axis];
            block.read_strided(&Region::new(sub), dst, at, strides);
        }
    }
}

/// Axes of length 1 added (`added`: outer axes the inner source lacks; `View::insert_axis`) or
/// taken away (`dropped`: inner axes the view lacks, ascending; numpy's integer indexing).
struct AxisChange {
    inner: Arc<dyn Source>,
    added: Vec<usize>,
    dropped: Vec<usize>,
    shape: Vec<u64>,
}

impl AxisChange {
    fn insert(inner: Arc<dyn Source>, axis: usize) -> AxisChange {
        let mut shape = inner.shape().to_vec();
        shape.insert(axis, 1);
        AxisChange {
            inner,
            added: vec![axis],
            dropped: Vec::new(),
            shape,
        }
    }

    fn squeeze(inner: Arc<dyn Source>, axes: &[usize]) -> AxisChange {
        let mut dropped = axes.to_vec();
        dropped.sort_unstable();
        let shape = inner
            .shape()
            .iter()
            .enumerate()
            .filter(|(k, _)| !dropped.contains(k))
            .map(|(_, &n)| n)
            .collect();
        AxisChange {
            inner,
            added: Vec::new(),
            dropped,
            shape,
        }
    }
}

impl Source for AxisChange {
    fn shape(&self) -> &[u64] {
        &self.shape
    }

    fn dtype(&self) -> DType {
        self.inner.dtype()
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn identity(&self) -> String {
        format!(
            "{} axes +{:?} -{:?}",
            self.inner.identity(),
            self.added,
            self.dropped
        )
    }

    fn chunk_hint(&self) -> Option<Vec<u64>> {
        let mut c = self.inner.chunk_hint()?;
        for &a in self.dropped.iter().rev() {
            c.remove(a);
        }
        for &a in &self.added {
            c.insert(a, 1);
        }
        Some(c)
    }

    /// A view of other offsets or element size than its source: not one grid to plan a
    /// rechunk by (its blocks follow the default).
    fn chunk_bounds(&self) -> Option<Vec<Vec<u64>>> {
        None
    }

    fn block(&self, region: &Region) -> Result<Box<dyn Block + '_>> {
        let mut r = region.ranges().to_vec();
        for &a in self.added.iter().rev() {
            r.remove(a);
        }
        for &a in &self.dropped {
            r.insert(a, 0..1);
        }
        Ok(Box::new(AxisBlock {
            inner: self.inner.block(&Region::new(r))?,
            remove: self.added.clone(),
            insert: self.dropped.clone(),
        }))
    }
}

/// A block seen with axes removed (`remove`: outer axes of length 1 the inner block lacks) or
/// added (`insert`: inner axes of length 1 the outer view lacks).
struct AxisBlock<'a> {
    inner: Box<dyn Block + 'a>,
    remove: Vec<usize>,
    insert: Vec<usize>,
}

impl Block for AxisBlock<'_> {
    fn itemsize(&self) -> usize {
        self.inner.itemsize()
    }

    fn read_strided(&self, part: &Region, dst: &mut [u8], offset: usize, strides: &[usize]) {
        let mut r = part.ranges().to_vec();
        let mut s = strides.to_vec();
        for &a in self.remove.iter().rev() {
            r.remove(a);
            s.remove(a);
        }
        for &a in &self.insert {
            r.insert(a, 0..1);
            s.insert(a, 0);
        }
        self.inner.read_strided(&Region::new(r), dst, offset, &s);
    }
}

/// A box of another source.
struct Slice {
    inner: Arc<dyn Source>,
    origin: Vec<u64>,
    shape: Vec<u64>,
}

impl Source for Slice {
    fn shape(&self) -> &[u64] {
        &self.shape
    }

    fn dtype(&self) -> DType {
        self.inner.dtype()
    }

    fn describe(&self) -> String {
        let r: Vec<String> = self
            .origin
            .iter()
            .zip(&self.shape)
            .map(|(o, n)| format!("{o}:{}", o + n))
            .collect();
        format!("{}[{}]", self.inner.describe(), r.join(","))
    }

    fn identity(&self) -> String {
        format!(
            "{} at {:?} shape {:?}",
            self.inner.identity(),
            self.origin,
            self.shape
        )
    }

    fn chunk_hint(&self) -> Option<Vec<u64>> {
        self.inner.chunk_hint()
    }

    /// A view of other offsets or element size than its source: not one grid to plan a
    /// rechunk by (its blocks follow the default).
    fn chunk_bounds(&self) -> Option<Vec<Vec<u64>>> {
        None
    }

    fn block(&self, region: &Region) -> Result<Box<dyn Block + '_>> {
        Ok(Box::new(ShiftBlock {
            inner: self.inner.block(&shift(region, &self.origin))?,
            origin: &self.origin,
        }))
    }
}

fn shift(region: &Region, origin: &[u64]) -> Region {
    Region::new(
        region
            .ranges()
            .iter()
            .zip(origin)
            .map(|(r, &o)| (r.start + o)..(r.end + o))
            .collect(),
    )
}

struct ShiftBlock<'a> {
    inner: Box<dyn Block + 'a>,
    origin: &'a [u64],
}

impl Block for ShiftBlock<'_> {
    fn itemsize(&self) -> usize {
        self.inner.itemsize()
    }

    fn read_strided(&self, part: &Region, dst: &mut [u8], offset: usize, strides: &[usize]) {
        self.inner
            .read_strided(&shift(part, self.origin), dst, offset, strides);
    }
}

/// Values converted to a wider type.
struct Cast {
    inner: Arc<dyn Source>,
    to: DType,
}

impl Source for Cast {
    fn shape(&self) -> &[u64] {
        self.inner.shape()
    }

    fn dtype(&self) -> DType {
        self.to
    }

    fn describe(&self) -> String {
        format!("{} as {}", self.inner.describe(), self.to)
    }

    fn identity(&self) -> String {
        format!("{} as {}", self.inner.identity(), self.to)
    }

    fn chunk_hint(&self) -> Option<Vec<u64>> {
        self.inner.chunk_hint()
    }

    /// A view of other offsets or element size than its source: not one grid to plan a
    /// rechunk by (its blocks follow the default).
    fn chunk_bounds(&self) -> Option<Vec<Vec<u64>>> {
        None
    }

    fn block(&self, region: &Region) -> Result<Box<dyn Block + '_>> {
        let n = region_elements(region)?;
        let from = self.inner.dtype();
        let mut raw = vec![0u8; n * from.size()];
        let shape: Vec<usize> = region.shape().iter().map(|&s| s as usize).collect();
        if n > 0 {
            self.inner
                .block(region)?
                .read_into(region, &mut raw, &shape);
        }
        let out = convert_values(&raw, from, self.to);
        Ok(Box::new(BufferBlock::new(
            region.clone(),
            out,
            self.to.size(),
        )))
    }
}

/// Converts native-endian elements of `from` to `to` (a safe cast: exact through f64). `raw`
/// may have any alignment (a `Vec<u8>` promises none).
pub(crate) fn convert_values(raw: &[u8], from: DType, to: DType) -> Vec<u8> {
    with_scalar!(from, F => {
        with_scalar!(to, T => {
            let mut out = Vec::with_capacity(raw.len() / from.size() * to.size());
            for c in raw.chunks_exact(from.size()) {
                let v: F = bytemuck::pod_read_unaligned(c);
                out.extend_from_slice(bytemuck::bytes_of(&T::from_f64(v.to_f64())));
            }
            out
        })
    })
}

/// A store as a view source (its chunks decode per read).
pub(crate) fn store_source(path: &Path) -> Result<Arc<dyn Source>> {
    Ok(Arc::new(StoreSource::new(Arc::new(Store::open(path)?))))
}

/// A Zarr array as input (re-chunking or re-compressing a store).
pub(crate) struct StoreSource {
    store: Arc<Store>,
}

impl StoreSource {
    pub(crate) fn new(store: Arc<Store>) -> Self {
        StoreSource { store }
    }
}

impl Source for StoreSource {
    fn shape(&self) -> &[u64] {
        self.store.shape()
    }

    fn dtype(&self) -> DType {
        self.store.dtype()
    }

    fn chunk_hint(&self) -> Option<Vec<u64>> {
        self.store
            .block_grid()
            .ok()
            .map(|g| g.chunk_shape().to_vec())
    }

    fn chunk_bounds(&self) -> Option<Vec<Vec<u64>>> {
        self.store.chunk_bounds().ok()
    }

    fn describe(&self) -> String {
        format!(
            "zarr v{} array {}",
            self.store.zarr_format(),
            self.store.path().display()
        )
    }

    fn identity(&self) -> String {
        stamp(self.store.path())
    }

    fn gather(&self, region: &Region, parts: &[Region]) -> Result<Box<dyn Gather + '_>> {
        // Decoded on demand only when the region holds the chunks it touches whole: else a
        // chunk would be kept whole for the part of it read (the plan counts the region's
        // bytes), and a shard read in part would decode all its subchunks.
        if self.store.holds_whole_chunks(region)? {
            Ok(Box::new(ChunkWindow::new(&self.store, region, parts)?))
        } else {
            Ok(Box::new(self.block(region)?))
        }
    }

    fn block(&self, region: &Region) -> Result<Box<dyn Block + '_>> {
        let n = to_usize(u64::try_from(region.len()).unwrap_or(u64::MAX), "block")?;
        let mut data = vec![0u8; n * self.store.dtype().size()];
        self.store.read_region_into(region, &mut data)?;
        Ok(Box::new(BufferBlock::new(
            region.clone(),
            data,
            self.dtype().size(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Dimension;

    /// An in-memory source: values 0, 1, 2, ... in C order.
    struct Ramp {
        shape: Vec<u64>,
        base: u32,
    }

    impl Source for Ramp {
        fn shape(&self) -> &[u64] {
            &self.shape
        }
        fn dtype(&self) -> DType {
            DType::U32
        }
        fn describe(&self) -> String {
            format!("ramp {}", self.base)
        }
        fn identity(&self) -> String {
            format!("ramp {} {:?}", self.base, self.shape)
        }
        fn block(&self, region: &Region) -> Result<Box<dyn Block + '_>> {
            let full = ArrayD::from_shape_fn(
                self.shape.iter().map(|&n| n as usize).collect::<Vec<_>>(),
                |ix| {
                    let mut flat = 0u32;
                    for (k, &i) in ix.slice().iter().enumerate() {
                        flat = flat * self.shape[k] as u32 + i as u32;
                    }
                    self.base + flat
                },
            );
            let sl: Vec<ndarray::SliceInfoElem> = region
                .ranges()
                .iter()
                .map(|r| (r.start as isize..r.end as isize).into())
                .collect();
            let part = full.slice(sl.as_slice()).to_owned();
            let bytes: Vec<u8> =
                bytemuck::cast_slice(part.as_standard_layout().as_slice().unwrap()).to_vec();
            Ok(Box::new(BufferBlock::new(region.clone(), bytes, 4)))
        }
    }

    fn ramp(shape: &[u64], base: u32) -> (View, ArrayD<u32>) {
        let v = View::from_source(Arc::new(Ramp {
            shape: shape.to_vec(),
            base,
        }));
        let all = v.read_region::<u32>(&Region::full(shape)).unwrap();
        (v, all)
    }

    #[test]
    fn concat_stack_slice_match_ndarray() {
        let (a, xa) = ramp(&[3, 4, 5], 0);
        let (b, xb) = ramp(&[3, 2, 5], 1000);
        let c = View::concat(vec![a.clone(), b.clone()], 1).unwrap();
        let want = ndarray::concatenate(ndarray::Axis(1), &[xa.view(), xb.view()]).unwrap();
        let r = Region::new(vec![1..3, 2..6, 1..4]);
        let got = c.read_region::<u32>(&r).unwrap();
        assert_eq!(got, want.slice(ndarray::s![1..3, 2..6, 1..4]).into_dyn());

        let (a2, xa2) = ramp(&[3, 4, 5], 7);
        let s = View::stack(vec![a.clone(), a2], 1).unwrap();
        assert_eq!(s.shape(), &[3, 2, 4, 5]);
        let want = ndarray::stack(ndarray::Axis(1), &[xa.view(), xa2.view()]).unwrap();
        assert_eq!(
            s.read_region::<u32>(&Region::full(s.shape())).unwrap(),
            want
        );

        let sl = c.slice(&Region::new(vec![1..2, 3..5, 0..5])).unwrap();
        let got = sl.read_region::<u32>(&Region::full(sl.shape())).unwrap();
        let want = ndarray::concatenate(ndarray::Axis(1), &[xa.view(), xb.view()]).unwrap();
        assert_eq!(got, want.slice(ndarray::s![1..2, 3..5, ..]).into_dyn());

        let f = c.cast(DType::F64).unwrap();
        let got = f.read_region::<f64>(&Region::full(f.shape())).unwrap();
        assert_eq!(
            got,
            ndarray::concatenate(ndarray::Axis(1), &[xa.view(), xb.view()])
                .unwrap()
                .mapv(f64::from)
        );
        assert!(c.cast(DType::U16).is_err());
    }
}
