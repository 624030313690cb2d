//! HDF5 datasets as inputs (`file.h5:/path/to/dataset`, spec/CLI.md "convert"), through
//! hdf5-metno and the system's libhdf5: chunked and contiguous datasets, with the filters
//! libhdf5 has (gzip, shuffle, fletcher32, szip, n-bit, scale-offset) and LZF (hdf5-metno
//! registers h5py's LZF filter). A block is one hyperslab read, converted to the native
//! element type by libhdf5. libhdf5 is not thread-safe, so hdf5-metno serializes its calls:
//! blocks are read (and their HDF5 chunks decompressed) one after another while the output's
//! chunks are gathered and encoded in parallel.
//!
//! Except for the commonest chunked datasets (gzip, with or without shuffle, or no filter;
//! little-endian numbers; no user block): `convert` reads those chunk by chunk in its tasks,
//! in parallel ([`crate::store::Window`] over [`Hdf5Chunks`]). libhdf5 only says where each
//! chunk is stored (`H5Dget_chunk_info_by_coord`, under its lock); the stored bytes are read
//! from the file and inflated (libdeflate) and unshuffled here. A chunk libhdf5 has not
//! written, or whose filters were skipped, is read through libhdf5 as before.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use hdf5::types::{FloatSize, IntSize, TypeDescriptor};
use hdf5::{Hyperslab, SliceOrIndex};

use super::{Block, BufferBlock, Gather, Source};
use crate::copy::{Side, c_strides, copy_box};
use crate::dtype::DType;
use crate::error::to_usize;
use crate::error::{Error, Result};
use crate::fingerprint::stamp;
use crate::grid::indices_in;
use crate::region::Region;
use crate::store::{Units, Window, copy_unit};
use rayon::prelude::*;

/// Most dataset names an error lists.
const MAX_LISTED: usize = 50;

/// A dataset of an HDF5 file.
pub(crate) struct Hdf5Source {
    path: PathBuf,
    name: String,
    dataset: hdf5::Dataset,
    shape: Vec<u64>,
    dtype: DType,
    chunk: Option<Vec<u64>>,
    /// How chunks are read without libhdf5's filters, when they can be.
    direct: Option<Direct>,
}

/// A chunked dataset whose chunks chunkwise decodes itself: stored deflated (after an HDF5
/// shuffle, or not) or as they are, little-endian, in a file with no user block (so libhdf5's
/// chunk addresses are byte offsets in it).
struct Direct {
    file: std::fs::File,
    len: u64,
    chunk: Vec<u64>,
    shuffle: bool,
    deflate: bool,
}

impl Hdf5Source {
    /// Opens dataset `name` of the HDF5 file at `path` (`None`: the file's only dataset).
    ///
    /// # Errors
    /// [`crate::InputError::BadInput`] naming the file: not HDF5; no such dataset (listing the
    /// ones there); a type chunkwise has no counterpart for.
    pub(crate) fn open(path: &Path, name: Option<&str>) -> Result<Hdf5Source> {
        if !path.exists() {
            return Err(Error::NotFound(path.to_path_buf()));
        }
        if !super::is_hdf5(path) {
            return Err(Error::bad_input(
                path,
                "not an HDF5 file (no HDF5 signature at byte 0 or after a user block)",
            ));
        }
        let file = hdf5::File::open(path)
            .map_err(|e| Error::bad_input(path, format!("cannot open as HDF5: {e}")))?;
        let names = datasets(&file);
        let name = match name {
            Some(n) => n.to_string(),
            None => match names.as_slice() {
                [one] => one.clone(),
                _ => {
                    return Err(Error::bad_input(
                        path,
                        format!(
                            "holds {} datasets: name one as {}:/path ({})",
                            names.len(),
                            path.display(),
                            listed(&names)
                        ),
                    ));
                }
            },
        };
        let dataset = file.dataset(&name).map_err(|_| {
            Error::bad_input(
                path,
                format!(
                    "no dataset {name:?} in the file; it holds {}",
                    listed(&names)
                ),
            )
        })?;
        let here = |what: String| Error::bad_input(path, format!("dataset {name}: {what}"));
        let descriptor = dataset
            .dtype()
            .and_then(|t| t.to_descriptor())
            .map_err(|e| here(format!("cannot read its type: {e}")))?;
        let dtype = dtype_of(&descriptor).ok_or_else(|| {
            here(format!(
                "its type {descriptor} has no counterpart here (integers, floats and booleans)"
            ))
        })?;
        if dataset.is_scalar() {
            return Err(here("a scalar, not an array".into()));
        }
        let shape: Vec<u64> = dataset.shape().iter().map(|&n| n as u64).collect();
        let chunk: Option<Vec<u64>> = dataset
            .chunk()
            .map(|c| c.iter().map(|&n| n as u64).collect());
        let direct = chunk
            .as_ref()
            .and_then(|c| Direct::of(path, &dataset, dtype, c));
        Ok(Hdf5Source {
            path: path.to_path_buf(),
            name,
            dataset,
            shape,
            dtype,
            chunk,
            direct,
        })
    }
}

impl Direct {
    /// The direct reading of `dataset`'s chunks (of shape `chunk`), if its filters, type and
    /// file allow it.
    fn of(path: &Path, dataset: &hdf5::Dataset, dtype: DType, chunk: &[u64]) -> Option<Direct> {
        use hdf5::filters::Filter;
        let (shuffle, deflate) = match dataset.filters().as_slice() {
            [] => (false, false),
            [Filter::Deflate(_)] => (false, true),
            [Filter::Shuffle, Filter::Deflate(_)] => (true, true),
            _ => return None,
        };
        let order = dataset.dtype().ok()?.byte_order();
        let little = matches!(order, hdf5::datatype::ByteOrder::LittleEndian)
            || (dtype.size() == 1 && matches!(order, hdf5::datatype::ByteOrder::None));
        if dtype == DType::Bool || !little || cfg!(target_endian = "big") {
            return None;
        }
        // With a user block, libhdf5's addresses are not byte offsets in the file.
        if super::hdf5_superblock(path) != Some(0) {
            return None;
        }
        let file = std::fs::File::open(path).ok()?;
        let len = file.metadata().ok()?.len();
        // libhdf5 stores chunks of less than 4 GiB; a layout claiming more is left to it.
        let bytes = chunk
            .iter()
            .try_fold(dtype.size() as u64, |n, &c| n.checked_mul(c))?;
        if bytes >= 4 << 30 {
            return None;
        }
        Some(Direct {
            file,
            len,
            chunk: chunk.to_vec(),
            shuffle,
            deflate,
        })
    }
}

/// The element type of an HDF5 type, when chunkwise has one (libhdf5 converts byte order).
fn dtype_of(t: &TypeDescriptor) -> Option<DType> {
    Some(match t {
        TypeDescriptor::Boolean => DType::Bool,
        TypeDescriptor::Unsigned(IntSize::U1) => DType::U8,
        TypeDescriptor::Unsigned(IntSize::U2) => DType::U16,
        TypeDescriptor::Unsigned(IntSize::U4) => DType::U32,
        TypeDescriptor::Unsigned(IntSize::U8) => DType::U64,
        TypeDescriptor::Integer(IntSize::U1) => DType::I8,
        TypeDescriptor::Integer(IntSize::U2) => DType::I16,
        TypeDescriptor::Integer(IntSize::U4) => DType::I32,
        TypeDescriptor::Integer(IntSize::U8) => DType::I64,
        TypeDescriptor::Float(FloatSize::U4) => DType::F32,
        TypeDescriptor::Float(FloatSize::U8) => DType::F64,
        _ => return None,
    })
}

/// Every dataset's path in the file (depth first, at most a few thousand looked at).
fn datasets(file: &hdf5::File) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![("/".to_string(), 0usize)];
    let mut seen = 0usize;
    while let Some((group, depth)) = todo.pop() {
        let Ok(g) = file.group(&group) else {
            continue;
        };
        let Ok(names) = g.member_names() else {
            continue;
        };
        for n in names {
            seen += 1;
            if seen > 10_000 {
                return out;
            }
            let full = format!("{}/{n}", group.trim_end_matches('/'));
            if g.dataset(&n).is_ok() {
                out.push(full);
            } else if depth < 32 && g.group(&n).is_ok() {
                todo.push((full, depth + 1));
            }
        }
    }
    out.sort();
    out
}

fn listed(names: &[String]) -> String {
    if names.is_empty() {
        return "no datasets".into();
    }
    let mut s = names
        .iter()
        .take(MAX_LISTED)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > MAX_LISTED {
        s.push_str(&format!(", ... ({} in all)", names.len()));
    }
    s
}

impl Source for Hdf5Source {
    fn shape(&self) -> &[u64] {
        &self.shape
    }

    fn dtype(&self) -> DType {
        self.dtype
    }

    fn describe(&self) -> String {
        let layout = match &self.chunk {
            Some(c) => format!("chunked {}", crate::region::fmt_shape(c)),
            None => "contiguous".into(),
        };
        format!(
            "HDF5 dataset {} of {} ({layout})",
            self.name,
            self.path.display()
        )
    }

    fn identity(&self) -> String {
        format!("hdf5 {}: {}", self.name, stamp(&self.path))
    }

    fn chunk_hint(&self) -> Option<Vec<u64>> {
        self.chunk.clone()
    }

    /// A dataset read directly ([`Direct`]) is opened as a window over its chunks, which the
    /// tasks decode in parallel; any other, by [`Source::block`] (libhdf5).
    fn gather(&self, region: &Region, parts: &[Region]) -> Result<Box<dyn Gather + '_>> {
        match &self.direct {
            Some(direct) => {
                let chunks = Hdf5Chunks {
                    source: self,
                    direct,
                };
                Ok(Box::new(Window::new(chunks, region, parts)?))
            }
            None => Ok(Box::new(self.block(region)?)),
        }
    }

    /// A dataset read directly ([`Direct`]): the chunks the region touches, decoded in
    /// parallel; any other, one hyperslab read by libhdf5.
    fn block(&self, region: &Region) -> Result<Box<dyn Block + '_>> {
        let data = match &self.direct {
            Some(direct) => self.read_direct(direct, region)?,
            None => self.read_slice(region)?,
        };
        Ok(Box::new(BufferBlock::new(
            region.clone(),
            data,
            self.dtype.size(),
        )))
    }
}

impl Hdf5Source {
    /// `region` read by libhdf5 (one hyperslab), as native-endian bytes.
    fn read_slice(&self, region: &Region) -> Result<Vec<u8>> {
        let slab: Vec<SliceOrIndex> = region
            .ranges()
            .iter()
            .map(|r| SliceOrIndex::from(r.start as usize..r.end as usize))
            .collect();
        let failed = |e: hdf5::Error| {
            Error::bad_input(
                &self.path,
                format!("dataset {}: reading {region}: {e}", self.name),
            )
        };
        let data: Vec<u8> = if self.dtype == DType::Bool {
            let a = self
                .dataset
                .read_slice::<bool, _, ndarray::IxDyn>(Hyperslab::from(slab))
                .map_err(failed)?;
            a.iter().map(|&b| u8::from(b)).collect()
        } else {
            crate::with_scalar!(self.dtype, T => {
                let a = self
                    .dataset
                    .read_slice::<T, _, ndarray::IxDyn>(Hyperslab::from(slab))
                    .map_err(failed)?;
                let (v, _) = a.into_raw_vec_and_offset();
                bytemuck::cast_slice::<T, u8>(&v).to_vec()
            })
        };
        Ok(data)
    }

    /// `region` of a [`Direct`] dataset: every chunk it touches decoded in parallel, each
    /// piece copied into place as it is done.
    fn read_direct(&self, direct: &Direct, region: &Region) -> Result<Vec<u8>> {
        let units = Hdf5Chunks {
            source: self,
            direct,
        };
        let shape: Vec<usize> = region.shape().iter().map(|&n| n as usize).collect();
        let n = to_usize(u64::try_from(region.len()).unwrap_or(u64::MAX), "block")?;
        let out = Mutex::new(vec![0u8; n * self.dtype.size()]);
        indices_in(&units.touching(region)?)
            .par_iter()
            .try_for_each(|idx| -> Result<()> {
                let data = units.decode(idx)?;
                let mut out = out.lock().unwrap_or_else(PoisonError::into_inner);
                copy_unit(&units, idx, &data, region, &mut out, &shape)
            })?;
        Ok(out.into_inner().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The chunks of a [`Direct`] dataset, each decoded by the first task that needs it (cut to
/// the dataset's bounds at its edges).
struct Hdf5Chunks<'a> {
    source: &'a Hdf5Source,
    direct: &'a Direct,
}

impl Hdf5Chunks<'_> {
    /// Where libhdf5 stored the chunk at `origin`: (address, bytes), or `None` if it has not
    /// written it or skipped one of its filters.
    fn stored(&self, origin: &[u64]) -> Result<Option<(u64, u64)>> {
        let (mut mask, mut addr, mut size) = (0u32, 0u64, 0u64);
        let id = self.source.dataset.id();
        let status = hdf5::sync::sync(|| unsafe {
            // SAFETY: `origin` holds one coordinate per dimension of the open dataset `id`; the
            // outputs are plain integers.
            hdf5_sys::h5d::H5Dget_chunk_info_by_coord(
                id,
                origin.as_ptr(),
                &mut mask,
                &mut addr,
                &mut size,
            )
        });
        if status < 0 {
            return Err(Error::bad_input(
                &self.source.path,
                format!(
                    "dataset {}: libhdf5 cannot locate the chunk at {origin:?}",
                    self.source.name
                ),
            ));
        }
        Ok((mask == 0 && addr != hdf5_sys::h5::HADDR_UNDEF && size > 0).then_some((addr, size)))
    }
}

impl Units for Hdf5Chunks<'_> {
    fn itemsize(&self) -> usize {
        self.source.dtype.size()
    }

    fn touching(&self, part: &Region) -> Result<Vec<Range<u64>>> {
        Ok(part
            .ranges()
            .iter()
            .zip(&self.direct.chunk)
            .map(|(r, &c)| r.start / c..r.end.div_ceil(c))
            .collect())
    }

    fn unit_region(&self, idx: &[u64]) -> Result<Region> {
        Ok(Region::new(
            idx.iter()
                .zip(&self.direct.chunk)
                .zip(&self.source.shape)
                .map(|((&i, &c), &n)| i * c..((i + 1) * c).min(n))
                .collect(),
        ))
    }

    fn decoded_shape(&self, idx: &[u64]) -> Result<Vec<usize>> {
        Ok(self
            .unit_region(idx)?
            .shape()
            .iter()
            .map(|&n| n as usize)
            .collect())
    }

    fn decode(&self, idx: &[u64]) -> Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let src = self.source;
        let d = self.direct;
        let region = self.unit_region(idx)?;
        let origin: Vec<u64> = region.start().to_vec();
        let Some((addr, size)) = self.stored(&origin)? else {
            // Not written (the fill value) or stored otherwise: libhdf5 reads it.
            return src.read_slice(&region);
        };
        let bad = |what: String| {
            Error::bad_input(
                &src.path,
                format!("dataset {}: the chunk at {origin:?}: {what}", src.name),
            )
        };
        let itemsize = src.dtype.size();
        let full: Vec<usize> = d.chunk.iter().map(|&c| c as usize).collect();
        let bytes = full.iter().product::<usize>() * itemsize;
        let n = usize::try_from(size)
            .ok()
            .filter(|&n| n <= bytes.saturating_mul(2) + 4096 && addr.saturating_add(size) <= d.len)
            .ok_or_else(|| {
                bad(format!(
                    "{size} bytes stored at byte {addr}: past the file or the chunk's size"
                ))
            })?;
        let mut raw = vec![0u8; n];
        d.file
            .read_exact_at(&mut raw, addr)
            .map_err(|e| bad(format!("reading {n} bytes at byte {addr}: {e}")))?;
        let mut data = if d.deflate {
            let mut out = vec![0u8; bytes];
            let got = libdeflater::Decompressor::new()
                .zlib_decompress(&raw, &mut out)
                .map_err(|e| bad(format!("deflate: {e}")))?;
            if got != bytes {
                return Err(bad(format!("inflates to {got} bytes, {bytes} expected")));
            }
            out
        } else if raw.len() == bytes {
            raw
        } else {
            return Err(bad(format!("{n} bytes stored, {bytes} expected")));
        };
        if d.shuffle && itemsize > 1 {
            data = unshuffle(&data, itemsize);
        }
        // An edge chunk is stored whole: keep the part inside the dataset.
        let shape = self.decoded_shape(idx)?;
        if shape == full {
            return Ok(data);
        }
        let mut out = vec![0u8; shape.iter().product::<usize>() * itemsize];
        let src_strides = c_strides(&full, itemsize);
        let dst_strides = c_strides(&shape, itemsize);
        copy_box(
            &data,
            Side {
                offset: 0,
                strides: &src_strides,
            },
            &mut out,
            Side {
                offset: 0,
                strides: &dst_strides,
            },
            &shape,
            itemsize,
            false,
        );
        Ok(out)
    }
}

/// Undoes HDF5's shuffle filter: `data` holds byte 0 of every `itemsize`-byte element, then
/// byte 1 of every one, and so on.
fn unshuffle(data: &[u8], itemsize: usize) -> Vec<u8> {
    /// Sixteen elements at a time (a 16-byte run of each of the N planes), so the inner loops
    /// have fixed lengths; the last elements one by one.
    fn by<const N: usize>(data: &[u8], out: &mut [u8]) {
        let count = data.len() / N;
        let whole = count / 16 * 16;
        for (b, o) in out[..whole * N].chunks_exact_mut(16 * N).enumerate() {
            for j in 0..N {
                let run: &[u8; 16] = data[j * count + b * 16..][..16]
                    .try_into()
                    .expect("16 bytes");
                for (k, &v) in run.iter().enumerate() {
                    o[k * N + j] = v;
                }
            }
        }
        for i in whole..count {
            for j in 0..N {
                out[i * N + j] = data[j * count + i];
            }
        }
    }
    let mut out = vec![0u8; data.len()];
    match itemsize {
        2 => by::<2>(data, &mut out),
        4 => by::<4>(data, &mut out),
        8 => by::<8>(data, &mut out),
        _ => {
            let count = data.len() / itemsize;
            for (j, plane) in data.chunks_exact(count.max(1)).take(itemsize).enumerate() {
                for (i, &b) in plane.iter().enumerate() {
                    out[i * itemsize + j] = b;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::unshuffle;

    /// HDF5's shuffle by its definition (byte j of element i at j * count + i), undone for
    /// every element size and for counts that are and are not multiples of 16.
    #[test]
    fn unshuffle_undoes_hdf5s_shuffle() {
        for size in [2usize, 3, 4, 8] {
            for count in [0usize, 1, 15, 16, 17, 100, 1000] {
                let elements: Vec<u8> = (0..count * size).map(|i| (i * 7 + 3) as u8).collect();
                let mut shuffled = vec![0u8; elements.len()];
                for i in 0..count {
                    for j in 0..size {
                        shuffled[j * count + i] = elements[i * size + j];
                    }
                }
                assert_eq!(
                    unshuffle(&shuffled, size),
                    elements,
                    "size {size}, count {count}"
                );
            }
        }
    }
}
