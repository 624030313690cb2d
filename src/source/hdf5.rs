//! HDF5 datasets as inputs (`file.h5:/path/to/dataset`, spec/CLI.md "convert"), through
//! hdf5-metno and the system's libhdf5: chunked and contiguous datasets, with the filters
//! libhdf5 has (gzip, shuffle, fletcher32, szip, n-bit, scale-offset) and LZF (hdf5-metno
//! registers h5py's LZF filter). A block is one hyperslab read, converted to the native
//! element type by libhdf5. libhdf5 is not thread-safe, so hdf5-metno serializes its calls:
//! blocks are read (and their HDF5 chunks decompressed) one after another while the output's
//! chunks are gathered and encoded in parallel.

use std::path::{Path, PathBuf};

use hdf5::types::{FloatSize, IntSize, TypeDescriptor};
use hdf5::{Hyperslab, SliceOrIndex};

use super::{Block, BufferBlock, Source};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::fingerprint::stamp;
use crate::region::Region;

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
        let chunk = dataset
            .chunk()
            .map(|c| c.iter().map(|&n| n as u64).collect());
        Ok(Hdf5Source {
            path: path.to_path_buf(),
            name,
            dataset,
            shape,
            dtype,
            chunk,
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

    fn block(&self, region: &Region) -> Result<Box<dyn Block + '_>> {
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
        Ok(Box::new(BufferBlock::new(
            region.clone(),
            data,
            self.dtype.size(),
        )))
    }
}
