//! Inputs chunkwise converts: .npy files and stacks, raw files, TIFF stacks, HDF5 datasets (the
//! `hdf5` feature), and Zarr arrays.
//!
//! A [`Source`] is read one block (a chunk-aligned box) at a time; a block holds its data only
//! while it is alive (memory maps are unmapped, decoded TIFF pages freed when it drops), so
//! memory is bounded by the block, never by the input. Invariant: `Block::read_into` is only
//! called with parts inside the block's region.

#[cfg(feature = "hdf5")]
mod hdf5;
mod mapped;
mod ome_tiff;
mod tiff;

use std::cmp::Ordering;
use std::path::{Path, PathBuf};

use crate::copy::{Side, c_strides, copy_box};
use crate::dtype::DType;
use crate::error::{Error, InputError, IoContext, Result};
use crate::region::Region;

pub(crate) use mapped::{MappedSource, NpyStack};
pub(crate) use tiff::TiffStack;

/// An array to convert, readable block by block.
pub(crate) trait Source: Send + Sync {
    /// The array shape.
    fn shape(&self) -> &[u64];
    /// The element type.
    fn dtype(&self) -> DType;
    /// The axis along which the input is stored slowest (0 for C order, the last for Fortran).
    fn slow_axis(&self) -> usize {
        0
    }
    /// A one-line description for reports ("512 .npy files slice_0000.npy ... slice_0511.npy").
    fn describe(&self) -> String;
    /// What the data is now, for fingerprints (a rerun that finds it unchanged resumes): the
    /// structure with a stamp of every file read (size, modification time; a store's chunk
    /// files) or, in memory, a hash of the values. It changes whenever the values can have.
    fn identity(&self) -> String;
    /// Makes `region` readable until the returned block is dropped.
    fn block(&self, region: &Region) -> Result<Box<dyn Block + '_>>;
    /// Opens `region` for the reads `parts` (each inside it), which tasks then make in
    /// parallel: a store decodes each chunk in the first task that needs it and frees it
    /// after the last part touching it ([`crate::store::ChunkWindow`]), where
    /// [`Source::block`] reads the whole region before it returns.
    fn gather(&self, region: &Region, parts: &[Region]) -> Result<Box<dyn Gather + '_>> {
        let _ = parts;
        Ok(Box::new(self.block(region)?))
    }
    /// The axis names the input's own metadata gives (an OME-TIFF's), if any.
    fn axis_names(&self) -> Option<Vec<String>> {
        None
    }
    /// The voxel size the input's own metadata gives (an OME-TIFF's), if any.
    fn voxel_size(&self) -> Option<crate::ome::VoxelSize> {
        None
    }
    /// The natural block shape to read this source by (a store's chunk shape), if any.
    fn chunk_hint(&self) -> Option<Vec<u64>> {
        None
    }
    /// The boundaries of the chunks this source decodes whole (`n + 1` offsets per axis), when
    /// it is chunked: reading part of a chunk costs as much as reading all of it.
    fn chunk_bounds(&self) -> Option<Vec<Vec<u64>>> {
        self.chunk_hint()
            .map(|c| crate::rechunk::regular_bounds(self.shape(), &c))
    }
}

/// A readable box of a [`Source`].
pub(crate) trait Block: Send + Sync {
    /// Bytes per element.
    fn itemsize(&self) -> usize;

    /// Copies `part` (array coordinates, inside the block) into `dst`: its first element at
    /// byte `offset`, then `strides` bytes per step along each axis (native-endian elements).
    fn read_strided(&self, part: &Region, dst: &mut [u8], offset: usize, strides: &[usize]);

    /// Copies `part` into the origin corner of `dst`, a C-order buffer of `dst_shape`.
    fn read_into(&self, part: &Region, dst: &mut [u8], dst_shape: &[usize]) {
        let strides = c_strides(dst_shape, self.itemsize());
        self.read_strided(part, dst, 0, &strides);
    }
}

/// A box of a [`Source`] opened by [`Source::gather`], whose reads may decode (and so fail).
pub(crate) trait Gather: Send + Sync {
    /// Copies `part` (inside the box) into the origin corner of `dst`, a C-order buffer of
    /// `dst_shape`.
    fn gather_into(&self, part: &Region, dst: &mut [u8], dst_shape: &[usize]) -> Result<()>;
}

impl Gather for Box<dyn Block + '_> {
    fn gather_into(&self, part: &Region, dst: &mut [u8], dst_shape: &[usize]) -> Result<()> {
        Block::read_into(self.as_ref(), part, dst, dst_shape);
        Ok(())
    }
}

impl<U: crate::store::Units + Send> Gather for crate::store::Window<U> {
    fn gather_into(&self, part: &Region, dst: &mut [u8], dst_shape: &[usize]) -> Result<()> {
        self.read_into(part, dst, dst_shape)
    }
}

/// How to read file inputs: a raw (headerless) file's type and shape (from flags, or else
/// from a JSON sidecar), and which series of an OME-TIFF.
///
/// ```no_run
/// use chunkwise::{DType, Input, RawOptions};
/// let raw = RawOptions {
///     dtype: Some(DType::U16),
///     shape: Some(vec![512, 1024, 1024]),
///     ..Default::default()
/// };
/// let volume = Input::open_all(&["volume.raw".into()], &raw)?;
/// assert_eq!(volume.shape(), &[512, 1024, 1024]);
/// # Ok::<(), chunkwise::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawOptions {
    /// Element type (`--dtype`).
    pub dtype: Option<DType>,
    /// Shape (`--shape`).
    pub shape: Option<Vec<u64>>,
    /// The series of an OME-TIFF (`--series`; 0 when not given).
    pub series: Option<usize>,
}

/// Opens files as `convert` reads them (spec/CLI.md, "convert"): one .npy, raw or multi-page
/// TIFF file, several .npy or TIFF files, or a directory of them (stacked along a new first
/// axis in natural order). Stores and view specs are [`crate::View`]'s to open.
pub(crate) fn open(inputs: &[PathBuf], raw: &RawOptions) -> Result<Box<dyn Source>> {
    let raw_given = raw.dtype.is_some() || raw.shape.is_some();
    if let [one] = inputs
        && let Some((file, dataset)) = hdf5_reference(one)
    {
        refuse_raw_flags(raw_given, &file)?;
        return open_hdf5(&file, dataset.as_deref());
    }
    if let Some(p) = inputs.iter().find(|p| hdf5_reference(p).is_some()) {
        return Err(Error::bad_input(
            p,
            "several inputs with an HDF5 dataset among them: HDF5 datasets are read one at a \
             time (join them with a view: {\"concat\": [...]})",
        ));
    }
    let paths = expand(inputs)?;
    if raw.series.is_some()
        && let Some(p) = paths
            .iter()
            .find(|p| paths.len() > 1 || !matches!(kind(p), Kind::Tiff | Kind::OmeXml))
    {
        return Err(refuse_series(p));
    }
    if let [one] = paths.as_slice() {
        if one.is_dir() {
            let files = list_dir(one)?;
            return open_files(&files, one, raw_given);
        }
        return match kind(one) {
            Kind::Npy => {
                refuse_raw_flags(raw_given, one)?;
                Ok(Box::new(MappedSource::npy(one)?))
            }
            Kind::Tiff => {
                refuse_raw_flags(raw_given, one)?;
                Ok(Box::new(TiffStack::multipage(one, raw.series)?))
            }
            Kind::OmeXml => {
                refuse_raw_flags(raw_given, one)?;
                Ok(Box::new(TiffStack::companion(one, raw.series)?))
            }
            Kind::Other => Ok(Box::new(MappedSource::raw(one, raw)?)),
        };
    }
    if let Some(dir) = paths.iter().find(|p| p.is_dir()) {
        return Err(Error::bad_input(
            dir,
            "a directory among several inputs; give one directory, or files",
        ));
    }
    let mut files = paths;
    files.sort_by(|a, b| natural_cmp(&a.to_string_lossy(), &b.to_string_lossy()));
    let first = files[0].clone();
    open_files(&files, &first, raw_given)
}

/// `--series` given with an input that is not one (OME-)TIFF file.
pub(crate) fn refuse_series(path: &Path) -> Error {
    Error::option(
        "series",
        format!(
            "--series picks a series of one OME-TIFF file; {} is not one",
            path.display()
        ),
    )
}

/// HDF5's file signature (at byte 0, or 512, 1024, 2048, ... after a user block).
const SIGNATURE: &[u8; 8] = b"\x89HDF\r\n\x1a\n";

/// Whether `path` is an HDF5 file (its signature at byte 0 or after a user block).
pub(crate) fn is_hdf5(path: &Path) -> bool {
    hdf5_superblock(path).is_some()
}

/// Where an HDF5 file's signature (and superblock) starts: byte 0, or after a user block of
/// 512, 1024, 2048 ... bytes; `None` if `path` is not HDF5.
pub(crate) fn hdf5_superblock(path: &Path) -> Option<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut at = 0u64;
    while at + 8 <= len {
        let mut sig = [0u8; 8];
        f.seek(SeekFrom::Start(at)).ok()?;
        f.read_exact(&mut sig).ok()?;
        if &sig == SIGNATURE {
            return Some(at);
        }
        at = if at == 0 { 512 } else { at * 2 };
    }
    None
}

/// File extensions HDF5 files go by: such a file is read as HDF5 (or refused as not HDF5),
/// never as raw.
const HDF5_EXTENSIONS: [&str; 5] = ["h5", "hdf5", "hdf", "he5", "nxs"];

/// An input naming an HDF5 dataset: `file.h5:/path/to/dataset` (the part before a colon an
/// existing file), or an HDF5 file itself (by its signature or extension: its only dataset).
pub(crate) fn hdf5_reference(p: &Path) -> Option<(PathBuf, Option<String>)> {
    if p.is_file() {
        let ext = p
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let named = ext.is_some_and(|e| HDF5_EXTENSIONS.contains(&e.as_str()));
        return (named || is_hdf5(p)).then(|| (p.to_path_buf(), None));
    }
    let s = p.to_str()?;
    for (i, _) in s.match_indices(':').rev() {
        let (file, name) = (&s[..i], &s[i + 1..]);
        if !file.is_empty() && !name.is_empty() && Path::new(file).is_file() {
            return Some((PathBuf::from(file), Some(name.to_string())));
        }
    }
    None
}

#[cfg(feature = "hdf5")]
fn open_hdf5(file: &Path, dataset: Option<&str>) -> Result<Box<dyn Source>> {
    Ok(Box::new(hdf5::Hdf5Source::open(file, dataset)?))
}

#[cfg(not(feature = "hdf5"))]
fn open_hdf5(file: &Path, _dataset: Option<&str>) -> Result<Box<dyn Source>> {
    Err(Error::bad_input(
        file,
        "an HDF5 input, and this chunkwise is built without HDF5 support (cargo feature \
         `hdf5`, with libhdf5: `cargo install --features hdf5`)",
    ))
}

pub(crate) fn refuse_raw_flags(raw_given: bool, path: &Path) -> Result<()> {
    if raw_given {
        return Err(Error::option(
            "dtype/shape",
            format!(
                "these describe raw input; {} carries its own shape and type",
                path.display()
            ),
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Npy,
    Tiff,
    /// A companion OME-XML file (`.companion.ome`): the OME-TIFF dataset it describes.
    OmeXml,
    Other,
}

fn kind(p: &Path) -> Kind {
    match p
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("npy") => Kind::Npy,
        Some("tif" | "tiff") => Kind::Tiff,
        Some("ome") => Kind::OmeXml,
        _ => Kind::Other,
    }
}

/// A stack of files (already in order) along a new leading axis.
fn open_files(files: &[PathBuf], origin: &Path, raw_given: bool) -> Result<Box<dyn Source>> {
    if files.is_empty() {
        return Err(Error::Input(InputError::NoInputs(origin.to_path_buf())));
    }
    refuse_raw_flags(raw_given, origin)?;
    let kinds: Vec<Kind> = files.iter().map(|f| kind(f)).collect();
    if let Some(i) = kinds.iter().position(|&k| k != kinds[0]) {
        return Err(Error::bad_input(
            &files[i],
            format!(
                "mixed input types: {} is {:?} but {} is {:?}",
                files[i].display(),
                kinds[i],
                files[0].display(),
                kinds[0]
            ),
        ));
    }
    match kinds[0] {
        Kind::Npy => Ok(Box::new(NpyStack::open(files.to_vec())?)),
        Kind::Tiff => Ok(Box::new(TiffStack::files(files.to_vec())?)),
        Kind::OmeXml => Err(Error::bad_input(
            &files[0],
            "a companion OME-XML file describes one dataset: give it alone",
        )),
        Kind::Other => Err(Error::bad_input(
            &files[0],
            "several raw files cannot be stacked; give .npy or TIFF files",
        )),
    }
}

/// The .npy or TIFF files of a directory, in natural order.
fn list_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        let p = entry.path();
        let hidden = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if !hidden && p.is_file() && matches!(kind(&p), Kind::Npy | Kind::Tiff) {
            files.push(p);
        }
    }
    if files.is_empty() {
        return Err(Error::Input(InputError::NoInputs(dir.to_path_buf())));
    }
    files.sort_by(|a, b| natural_cmp(&a.to_string_lossy(), &b.to_string_lossy()));
    Ok(files)
}

/// Expands glob patterns (for shells that pass them through, or quoted ones).
fn expand(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    if inputs.is_empty() {
        return Err(Error::option("input", "no input given"));
    }
    let mut out = Vec::new();
    for p in inputs {
        let s = p.to_string_lossy();
        if !p.exists() && s.contains(['*', '?', '[']) {
            // Hidden files only when the pattern names the dot, as a directory input skips
            // them and as the shell expands patterns.
            let hidden = glob::MatchOptions {
                require_literal_leading_dot: true,
                ..glob::MatchOptions::new()
            };
            let matches: Vec<PathBuf> = glob::glob_with(&s, hidden)
                .map_err(|e| Error::option("input", format!("bad pattern {s:?}: {e}")))?
                .filter_map(std::result::Result::ok)
                .collect();
            if matches.is_empty() {
                return Err(Error::Input(InputError::NoInputs(p.clone())));
            }
            out.extend(matches);
        } else if !p.exists() {
            return Err(Error::NotFound(p.clone()));
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// Natural order: digit runs compare by value, so `slice_2` sorts before `slice_10`.
pub(crate) fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut x, mut y) = (a.as_bytes(), b.as_bytes());
    loop {
        match (x.first(), y.first()) {
            (None, None) => return a.cmp(b),
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(c), Some(d)) if c.is_ascii_digit() && d.is_ascii_digit() => {
                let n = x.iter().take_while(|c| c.is_ascii_digit()).count();
                let m = y.iter().take_while(|c| c.is_ascii_digit()).count();
                let (dx, dy) = (trim_zeros(&x[..n]), trim_zeros(&y[..m]));
                let ord = dx.len().cmp(&dy.len()).then_with(|| dx.cmp(dy));
                if ord != Ordering::Equal {
                    return ord;
                }
                x = &x[n..];
                y = &y[m..];
            }
            (Some(c), Some(d)) => {
                if c != d {
                    return c.cmp(d);
                }
                x = &x[1..];
                y = &y[1..];
            }
        }
    }
}

fn trim_zeros(d: &[u8]) -> &[u8] {
    let k = d.iter().take_while(|&&c| c == b'0').count();
    &d[k..]
}

/// A block held as a decoded C-order buffer of the block's region.
pub(crate) struct BufferBlock {
    region: Region,
    shape: Vec<usize>,
    data: Vec<u8>,
    itemsize: usize,
}

impl BufferBlock {
    pub(crate) fn new(region: Region, data: Vec<u8>, itemsize: usize) -> Self {
        let shape = region.shape().iter().map(|&n| n as usize).collect();
        BufferBlock {
            region,
            shape,
            data,
            itemsize,
        }
    }
}

impl Block for BufferBlock {
    fn itemsize(&self) -> usize {
        self.itemsize
    }

    fn read_strided(&self, part: &Region, dst: &mut [u8], dst_offset: usize, strides: &[usize]) {
        let src_strides = c_strides(&self.shape, self.itemsize);
        let offset: usize = part
            .ranges()
            .iter()
            .zip(self.region.ranges())
            .zip(&src_strides)
            .map(|((p, r), &s)| (p.start - r.start) as usize * s)
            .sum();
        let extent: Vec<usize> = part.shape().iter().map(|&n| n as usize).collect();
        copy_box(
            &self.data,
            Side {
                offset,
                strides: &src_strides,
            },
            dst,
            Side {
                offset: dst_offset,
                strides,
            },
            &extent,
            self.itemsize,
            false,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order() {
        let mut v = vec![
            "slice_10.npy",
            "slice_2.npy",
            "slice_1.npy",
            "slice_002.npy",
            "a.npy",
        ];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            v,
            vec![
                "a.npy",
                "slice_1.npy",
                "slice_002.npy",
                "slice_2.npy",
                "slice_10.npy"
            ]
        );
    }
}
