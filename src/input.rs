//! The one input type: every operation reads an [`Input`], opened once: a Zarr store, a file
//! `convert` reads (.npy, raw with its sidecar or type and shape, TIFF, a directory of slices),
//! a JSON view spec, a [`View`] built in code, or an array in memory. It is read by blocks of
//! its natural grid (a store's chunks, decoded directly; anything else by region) or by any
//! region.
//!
//! Invariant: an input's shape, type and block grid are fixed when it is opened; every block
//! read is the block grid's chunk at its full shape, padded with the fill value past the edge.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use ndarray::{ArrayD, ArrayViewD};

use crate::copy::read_padded;
use crate::dtype::{DType, Element};
use crate::error::{Error, Result};
use crate::fingerprint::stamp;
use crate::grid::Grid;
use crate::ome::Image;
use crate::region::Region;
use crate::source::RawOptions;
use crate::store::{Store, is_store};
use crate::view::{View, is_spec};

/// An array to read: what every operation takes.
///
/// ```no_run
/// use chunkwise::{Input, Region};
/// let store = Input::open("volume.zarr")?;           // a Zarr array
/// let slices = Input::open("slices/")?;              // a directory of .npy slices
/// let joined = Input::open("view.json")?;            // a JSON view spec
/// let block = store.read_region::<u16>(&Region::new(vec![0..10, 0..64, 0..64]))?;
/// assert_eq!(block.shape(), &[10, 64, 64]);
/// # Ok::<(), chunkwise::Error>(())
/// ```
#[derive(Clone)]
pub struct Input {
    inner: Inner,
    /// What the user gave: the (first) path, or `<view>` / `<memory>`.
    name: PathBuf,
    /// Every path it was opened from (a stack of files has many), for its fingerprint.
    paths: Vec<PathBuf>,
    grid: Grid,
    /// The fingerprint line (computed on first use: a store's stamp walks its chunk files).
    identity: Arc<OnceLock<String>>,
    /// The OME-Zarr image it is a level of, when opened by the image's path.
    image: Option<Arc<Image>>,
}

#[derive(Clone)]
enum Inner {
    Store(Arc<Store>),
    View(View),
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Input")
            .field("name", &self.name)
            .field("shape", &self.shape())
            .field("dtype", &self.dtype())
            .finish_non_exhaustive()
    }
}

impl Input {
    /// Opens one path: a store, a JSON view spec, an `.npy`, raw (with a JSON sidecar) or TIFF
    /// file, or a directory of `.npy`/TIFF slices.
    ///
    /// ```no_run
    /// let stack = chunkwise::Input::open("stack.tif")?;
    /// println!("{}: {:?} {}", stack.describe(), stack.shape(), stack.dtype());
    /// # Ok::<(), chunkwise::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::NotFound`], [`crate::StoreError::NotAStore`], [`crate::InputError::BadInput`] and the other errors of
    /// opening that kind of file, naming it.
    pub fn open(path: impl AsRef<Path>) -> Result<Input> {
        Input::open_all(&[path.as_ref().to_path_buf()], &RawOptions::default())
    }

    /// Opens what `convert` reads from `paths` (several files stack along a new first axis;
    /// a raw file is described by `raw` or its sidecar).
    ///
    /// ```no_run
    /// use chunkwise::{Input, RawOptions};
    /// let days = Input::open_all(&["day1.npy".into(), "day2.npy".into()],
    ///                           &RawOptions::default())?;
    /// assert_eq!(days.shape()[0], 2); // stacked along a new first axis
    /// # Ok::<(), chunkwise::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Input::open`]; [`Error::InvalidOption`] for `raw` given with inputs that carry
    /// their own type and shape.
    pub fn open_all(paths: &[PathBuf], raw: &RawOptions) -> Result<Input> {
        let name = match paths {
            [one] => one.clone(),
            [first, ..] => first.clone(),
            [] => return Err(Error::option("input", "no input given")),
        };
        if let [one] = paths
            && raw.series.is_some()
            && (is_store(one) || crate::ome::resolve(one)?.is_some())
        {
            return Err(crate::source::refuse_series(one));
        }
        if let [one] = paths
            && crate::store::is_url(one)
            && !is_spec(one)
        {
            // An array at an object-storage prefix opens at once; only what does not open as
            // one is asked whether it is an image (a listing and a GET more: PYRAMID §4).
            if raw.dtype.is_some() || raw.shape.is_some() {
                crate::source::refuse_raw_flags(true, one)?;
            }
            let store = match Store::open(one) {
                Ok(s) => s,
                Err(e) => match crate::ome::resolve(one)? {
                    Some((level, image)) => {
                        let mut input = Input::from_store_named(Store::open(&level)?, name)?;
                        input.image = Some(Arc::new(image));
                        return Ok(input);
                    }
                    None => return Err(e),
                },
            };
            return Input::from_store_named(store, name);
        }
        if let [one] = paths
            && let Some((level, image)) = crate::ome::resolve(one)?
        {
            if raw.dtype.is_some() || raw.shape.is_some() {
                crate::source::refuse_raw_flags(true, one)?;
            }
            let mut input = Input::from_store_named(Store::open(&level)?, name)?;
            input.image = Some(Arc::new(image));
            return Ok(input);
        }
        if let [one] = paths
            && is_store(one)
            && !is_spec(one)
        {
            if raw.dtype.is_some() || raw.shape.is_some() {
                crate::source::refuse_raw_flags(true, one)?;
            }
            return Input::from_store_named(Store::open(one)?, name);
        }
        let view = View::open_all(paths, raw)?;
        let mut input = Input::from_view_named(view, name)?;
        input.paths = paths.to_vec();
        Ok(input)
    }

    /// The OME-Zarr image this input is a level of, when it was opened by the image's path
    /// (`image.ome.zarr` is level 0, `image.ome.zarr/2` level 2: spec/PYRAMID.md §4).
    pub fn image(&self) -> Option<&Image> {
        self.image.as_deref()
    }

    /// An input reading an open store.
    ///
    /// ```no_run
    /// let input = chunkwise::Input::from_store(chunkwise::Store::open("volume.zarr")?)?;
    /// assert!(input.store().is_some());
    /// # Ok::<(), chunkwise::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`crate::StoreError::BadMetadata`] for a chunk grid chunkwise cannot read by blocks.
    pub fn from_store(store: Store) -> Result<Input> {
        let name = store.path().to_path_buf();
        Input::from_store_named(store, name)
    }

    fn from_store_named(store: Store, name: PathBuf) -> Result<Input> {
        let grid = store.block_grid()?;
        Ok(Input {
            inner: Inner::Store(Arc::new(store)),
            paths: vec![name.clone()],
            name,
            grid,
            identity: Arc::default(),
            image: None,
        })
    }

    /// An input reading a view (by blocks of [`View::block_shape`]).
    ///
    /// ```
    /// use chunkwise::{Input, View};
    /// let a = ndarray::ArrayD::<u8>::zeros(vec![2, 3]);
    /// let b = ndarray::ArrayD::<u8>::ones(vec![5, 3]);
    /// let both = View::concat(vec![View::from_array(a.view())?, View::from_array(b.view())?], 0)?;
    /// assert_eq!(Input::from_view(both)?.shape(), &[7, 3]);
    /// # Ok::<(), chunkwise::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidOption`] for a view whose blocks cannot be laid out (a zero-size axis
    /// is fine).
    pub fn from_view(view: View) -> Result<Input> {
        Input::from_view_named(view, PathBuf::from("<view>"))
    }

    fn from_view_named(view: View, name: PathBuf) -> Result<Input> {
        let grid = Grid::new(view.shape(), &view.block_shape())?;
        Ok(Input {
            inner: Inner::View(view),
            paths: Vec::new(),
            name,
            grid,
            identity: Arc::default(),
            image: None,
        })
    }

    /// An input holding an array in memory (copied once into the input).
    ///
    /// ```
    /// let a = ndarray::ArrayD::<f32>::zeros(vec![4, 5, 6]);
    /// let input = chunkwise::Input::from_array(a.view())?;
    /// assert_eq!(input.shape(), &[4, 5, 6]);
    /// assert_eq!(input.dtype(), chunkwise::DType::F32);
    /// # Ok::<(), chunkwise::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Input::from_view`].
    pub fn from_array<T: Element>(array: ArrayViewD<'_, T>) -> Result<Input> {
        Input::from_view_named(View::from_array(array)?, PathBuf::from("<memory>"))
    }

    /// The shape.
    ///
    /// ```
    /// let input = chunkwise::Input::from_array(ndarray::ArrayD::<u8>::zeros(vec![3, 7]).view())?;
    /// assert_eq!(input.shape(), &[3, 7]);
    /// # Ok::<(), chunkwise::Error>(())
    /// ```
    pub fn shape(&self) -> &[u64] {
        match &self.inner {
            Inner::Store(s) => s.shape(),
            Inner::View(v) => v.shape(),
        }
    }

    /// The number of axes.
    pub fn ndim(&self) -> usize {
        self.shape().len()
    }

    /// The element type.
    ///
    /// ```
    /// let input = chunkwise::Input::from_array(ndarray::ArrayD::<i16>::zeros(vec![3, 7]).view())?;
    /// assert_eq!(input.dtype(), chunkwise::DType::I16);
    /// # Ok::<(), chunkwise::Error>(())
    /// ```
    pub fn dtype(&self) -> DType {
        match &self.inner {
            Inner::Store(s) => s.dtype(),
            Inner::View(v) => v.dtype(),
        }
    }

    /// What the input was opened from (for messages): its (first) path, or `<view>`,
    /// `<memory>`.
    pub fn path(&self) -> &Path {
        &self.name
    }

    /// Every path the input was opened from (empty for a view built in code).
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// The store, when the input is one.
    pub fn store(&self) -> Option<&Store> {
        match &self.inner {
            Inner::Store(s) => Some(s),
            Inner::View(_) => None,
        }
    }

    /// The axis names the input records: a store's `dimension_names` (all of them named), an
    /// OME-Zarr image's axes, an OME-TIFF's.
    pub fn axis_names(&self) -> Option<Vec<String>> {
        if let Some(image) = self.image() {
            return Some(image.axes().iter().map(|a| a.name.clone()).collect());
        }
        match &self.inner {
            Inner::Store(s) => s.metadata_json()["dimension_names"]
                .as_array()?
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .filter(|n| n.len() == self.ndim()),
            Inner::View(v) => v.source().axis_names(),
        }
    }

    /// The physical size of the input's voxels, where it records one: a store's attributes
    /// (`chunkwise.voxel_size`, `chunkwise.units`: spec/FORMAT.md §2), an OME-Zarr image
    /// level's scale and its axes' units, an OME-TIFF's physical sizes.
    ///
    /// ```no_run
    /// let input = chunkwise::Input::open("embryo.zarr")?;
    /// if let Some(v) = input.voxel_size() {
    ///     println!("voxels of {v}"); // 2 x 0.5 x 0.5 micrometer
    /// }
    /// # Ok::<(), chunkwise::Error>(())
    /// ```
    pub fn voxel_size(&self) -> Option<crate::ome::VoxelSize> {
        if let Some(image) = self.image() {
            let level = image
                .levels()
                .iter()
                .find(|l| image.path().join(&l.path) == self.path())
                .or_else(|| image.levels().first())?;
            return Some(crate::ome::VoxelSize {
                size: level.scale.clone(),
                units: image.axes().iter().map(|a| a.unit.clone()).collect(),
            })
            .filter(|v| v.size.len() == self.ndim());
        }
        match &self.inner {
            Inner::Store(s) => {
                crate::ome::VoxelSize::from_attributes(&s.metadata_json()["attributes"], s.ndim())
            }
            Inner::View(v) => v.source().voxel_size(),
        }
    }

    /// The input as a view (to join, slice or cast it).
    pub fn view(&self) -> View {
        match &self.inner {
            Inner::Store(s) => View::from_store(s.clone()),
            Inner::View(v) => v.clone(),
        }
    }

    /// One line saying what the input is.
    pub fn describe(&self) -> String {
        match &self.inner {
            Inner::Store(s) => format!("zarr v{} array {}", s.zarr_format(), s.path().display()),
            Inner::View(v) => v.describe(),
        }
    }

    /// The grid of blocks the input reads best by: a store's chunks (for a rectilinear grid,
    /// blocks as long as its longest chunks), a view's [`View::block_shape`].
    pub fn block_grid(&self) -> &Grid {
        &self.grid
    }

    /// Block `idx` of [`Input::block_grid`] at its full shape, C order, the part past the
    /// array's edge holding the fill value; `None` for a store chunk that is not stored (all
    /// fill value).
    ///
    /// # Errors
    /// [`crate::StoreError::CorruptChunk`] naming the chunk, and the read errors of the input's files.
    pub fn read_block(&self, idx: &[u64]) -> Result<Option<Vec<u8>>> {
        match &self.inner {
            Inner::Store(s) => s.read_block(&self.grid, idx),
            Inner::View(v) => {
                let full: Vec<usize> = self
                    .grid
                    .chunk_shape()
                    .iter()
                    .map(|&c| c as usize)
                    .collect();
                let region = self.grid.chunk_region(idx);
                let part: Vec<usize> = region.shape().iter().map(|&n| n as usize).collect();
                read_padded(&full, &part, &self.fill_bytes(), |buf| {
                    v.read_region_into(&region, buf)
                })
                .map(Some)
            }
        }
    }

    /// Reads `region` into `out` (C order, native-endian elements).
    ///
    /// # Errors
    /// [`Error::BadRegion`] for a region outside the input or a buffer of the wrong size; the
    /// read errors of the input.
    pub fn read_region_into(&self, region: &Region, out: &mut [u8]) -> Result<()> {
        match &self.inner {
            Inner::Store(s) => s.read_region_into(region, out),
            Inner::View(v) => v.read_region_into(region, out),
        }
    }

    /// Reads `region` as an n-d array of `T` (the input's type).
    ///
    /// ```
    /// use chunkwise::{Input, Region};
    /// let input = Input::from_array(ndarray::arr2(&[[1u8, 2, 3], [4, 5, 6]]).into_dyn().view())?;
    /// let part = input.read_region::<u8>(&Region::new(vec![1..2, 1..3]))?;
    /// assert_eq!(part, ndarray::arr2(&[[5u8, 6]]).into_dyn());
    /// # Ok::<(), chunkwise::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`crate::InputError::DtypeMismatch`] if `T` is not the input's type; as [`Input::read_region_into`].
    pub fn read_region<T: Element>(&self, region: &Region) -> Result<ArrayD<T>> {
        match &self.inner {
            Inner::Store(s) => s.read_region(region),
            Inner::View(v) => v.read_region(region),
        }
    }

    /// One element of the value that absent chunks and the padding past the edge hold.
    pub(crate) fn fill_bytes(&self) -> Vec<u8> {
        match &self.inner {
            Inner::Store(s) => s.fill_bytes().to_vec(),
            Inner::View(v) => vec![0; v.dtype().size()],
        }
    }

    /// The stored chunks of the block grid, when the input is a store with a regular grid
    /// (one bit per chunk).
    pub(crate) fn stored_chunks(&self) -> Option<crate::grid::ChunkSet> {
        match &self.inner {
            Inner::Store(s) => s.stored_chunks(),
            Inner::View(_) => None,
        }
    }

    /// The name of block `idx` in messages: a store's chunk key, else `block i/j/k`.
    pub(crate) fn block_key(&self, idx: &[u64]) -> String {
        match &self.inner {
            Inner::Store(s) if s.chunk_shape().is_some() => s.chunk_key(idx),
            _ => {
                let i: Vec<String> = idx.iter().map(u64::to_string).collect();
                format!("block {}", i.join("/"))
            }
        }
    }

    /// The line of a fingerprint that says what this input is now: a store's stamp (its
    /// metadata and chunk files); for a view, the stamps of the paths it was opened from (a
    /// spec file, a directory) and the view's identity (its structure with the stamp of every
    /// file and store part it reads, or a hash of an in-memory array's values).
    pub(crate) fn identity(&self) -> &str {
        self.identity.get_or_init(|| match &self.inner {
            Inner::Store(s) => s
                .stamp()
                .unwrap_or_else(|e| format!("{} (listing failed: {e})", s.path().display())),
            Inner::View(v) => {
                let mut line: Vec<String> = self.paths.iter().map(|p| stamp(p)).collect();
                line.push(v.identity());
                line.join(" ")
            }
        })
    }
}

impl TryFrom<Store> for Input {
    type Error = Error;
    fn try_from(store: Store) -> Result<Input> {
        Input::from_store(store)
    }
}

impl TryFrom<View> for Input {
    type Error = Error;
    fn try_from(view: View) -> Result<Input> {
        Input::from_view(view)
    }
}
