//! `lut`: `out = T[in]` for an integer input and a 1-D table (ClearMap's `apply_lut`); the output
//! has the table's type. The table is memory-mapped, never copied.

use std::path::{Path, PathBuf};

use memmap2::Mmap;
use ndarray::{ArrayViewD, Dimension};

use crate::dtype::{DType, Scalar};
use crate::error::{Error, InputError, IoContext, KernelError, Result};
use crate::kernel::{Block, Kernel, OutBlock, valid_view};
use crate::npy::parse_header;
use crate::with_scalar;

/// A 1-D lookup table from an .npy file, memory-mapped.
pub struct Table {
    path: PathBuf,
    map: Mmap,
    offset: usize,
    dtype: DType,
    len: usize,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("path", &self.path)
            .field("dtype", &self.dtype)
            .field("len", &self.len)
            .finish()
    }
}

impl Table {
    /// Maps the 1-D, C-order, little-endian table in the .npy file `path`.
    ///
    /// # Errors
    /// [`crate::InputError::BadInput`] for another shape or a big-endian table; .npy parsing errors.
    pub fn open(path: &Path) -> Result<Table> {
        let file = std::fs::File::open(path).at(path)?;
        // SAFETY: read-only map; tables must not change while a job runs (spec/COMPUTE.md).
        let map = unsafe { Mmap::map(&file) }.at(path)?;
        let h = parse_header(&map, path)?;
        if h.shape.len() != 1 {
            return Err(Error::bad_input(
                path,
                format!("a table must be 1-D, this one has shape {:?}", h.shape),
            ));
        }
        if h.big_endian {
            return Err(Error::bad_input(
                path,
                "big-endian tables are not supported",
            ));
        }
        let len =
            usize::try_from(h.shape[0]).map_err(|_| Error::bad_input(path, "table too long"))?;
        let offset = h.data_offset as usize;
        let need = offset + len * h.dtype.size();
        if map.len() < need {
            return Err(Error::Input(InputError::SizeMismatch {
                path: path.to_path_buf(),
                what: format!("truncated .npy table of {len} {}", h.dtype),
                expected: (len * h.dtype.size()) as u64,
                actual: (map.len() - offset.min(map.len())) as u64,
            }));
        }
        Ok(Table {
            path: path.to_path_buf(),
            map,
            offset,
            dtype: h.dtype,
            len,
        })
    }

    /// The table's identity for a job's fingerprint: path, type, length, and the file's size
    /// and modification time (an edited table is a different job).
    pub fn describe(&self) -> String {
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        format!(
            "table={} ({} {} entries, {} bytes, modified {modified})",
            self.path.display(),
            self.len,
            self.dtype,
            self.map.len()
        )
    }

    /// Entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The entries' type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The entries as `T` (the table's type; `u8` for `bool`).
    pub(crate) fn values<T: Scalar>(&self) -> Result<std::borrow::Cow<'_, [T]>> {
        let bytes = &self.map[self.offset..self.offset + self.len * self.dtype.size()];
        match bytemuck::try_cast_slice::<u8, T>(bytes) {
            Ok(v) => Ok(std::borrow::Cow::Borrowed(v)),
            // An .npy header not padded to the type's alignment: copy once.
            Err(_) => Ok(std::borrow::Cow::Owned(
                bytes
                    .chunks_exact(T::DTYPE.size())
                    .map(|c| bytemuck::pod_read_unaligned(c))
                    .collect(),
            )),
        }
    }
}

/// `out = table[in]`.
#[derive(Debug)]
pub struct Lut {
    table: Table,
}

impl Lut {
    /// A LUT kernel over `table`.
    pub fn new(table: Table) -> Lut {
        Lut { table }
    }
}

impl Kernel for Lut {
    fn shift_invariant(&self) -> bool {
        true
    }

    fn halo(&self, ndim: usize) -> Result<Vec<(u64, u64)>> {
        Ok(vec![(0, 0); ndim])
    }

    fn output_dtype(&self, inputs: &[DType]) -> Result<DType> {
        if inputs[0].is_float() {
            return Err(Error::option(
                "input",
                format!("lut needs an integer input, got {}", inputs[0]),
            ));
        }
        Ok(self.table.dtype)
    }

    fn describe(&self) -> String {
        format!("lut {}", self.table.describe())
    }

    fn apply(&self, inputs: &[Block<'_>], out: &mut OutBlock<'_>) -> Result<()> {
        let input = &inputs[0];
        let origin: Vec<u64> = out.region().start();
        let key = out.key().to_string();
        with_scalar!(self.table.dtype, O => {
            let table = self.table.values::<O>()?;
            with_scalar!(input.dtype(), I => {
                let src = valid_view(input.view::<I>()?, input.valid());
                let mut dst = out.view_mut::<O>()?;
                lookup(src, &mut dst, &table).map_err(|(pos, v)| Error::Kernel(KernelError::Compute {
                    chunk: key.clone(),
                    reason: format!(
                        "value {v} at {:?} is outside the {}-entry table {}",
                        pos.iter().zip(&origin).map(|(&p, &o)| p as u64 + o).collect::<Vec<_>>(),
                        self.table.len,
                        self.table.path.display()
                    ),
                }))?;
            });
        });
        Ok(())
    }
}

/// Table lookup; on the first value outside the table, its position (in the view) and value.
pub(crate) fn lookup<I: Scalar, O: Scalar>(
    src: ArrayViewD<'_, I>,
    dst: &mut ndarray::ArrayViewMutD<'_, O>,
    table: &[O],
) -> std::result::Result<(), (Vec<usize>, String)> {
    // Exact for every integer type (a uint64 beyond 2^53 is not rounded into the table).
    let inside = |v: I| (0..table.len() as i128).contains(&v.to_i128());
    if let (Some(s), Some(d)) = (src.as_slice(), dst.as_slice_mut()) {
        // Contiguous (every chunk inside the array): check, then a tight loop. A table that
        // covers the input type's whole range needs no check.
        let covers = match I::DTYPE {
            DType::U8 => table.len() >= 1 << 8,
            DType::U16 => table.len() >= 1 << 16,
            _ => false,
        };
        if !covers && let Some(k) = s.iter().position(|&v| !inside(v)) {
            let pos = ndarray::indices(src.shape())
                .into_iter()
                .nth(k)
                .expect("k < len");
            return Err((pos.slice().to_vec(), s[k].to_string()));
        }
        lookup_slice(s, d, table);
        return Ok(());
    }
    let mut bad = false;
    ndarray::Zip::from(&mut *dst).and(&src).for_each(|o, &v| {
        if inside(v) {
            *o = table[v.to_i128() as usize];
        } else {
            bad = true;
        }
    });
    if !bad {
        return Ok(());
    }
    // Find the first offending element in C order to name it.
    for (pos, &v) in src.indexed_iter() {
        if !inside(v) {
            return Err((pos.slice().to_vec(), v.to_string()));
        }
    }
    Ok(())
}

/// `d[i] = table[s[i]]` for values already checked to be inside the table. 8- and 16-bit
/// inputs index a fixed-size view of the table, so the loop has no bounds checks.
fn lookup_slice<I: Scalar, O: Scalar>(s: &[I], d: &mut [O], table: &[O]) {
    if I::DTYPE == DType::U16 && table.len() >= 1 << 16 {
        let t: &[O; 1 << 16] = table[..1 << 16].try_into().expect("65536 entries");
        let s: &[u16] = bytemuck::cast_slice(s);
        for (o, &v) in d.iter_mut().zip(s) {
            *o = t[usize::from(v)];
        }
    } else if I::DTYPE == DType::U8 && table.len() >= 1 << 8 {
        let t: &[O; 1 << 8] = table[..1 << 8].try_into().expect("256 entries");
        let s: &[u8] = bytemuck::cast_slice(s);
        for (o, &v) in d.iter_mut().zip(s) {
            *o = t[usize::from(v)];
        }
    } else {
        for (o, &v) in d.iter_mut().zip(s) {
            *o = table[v.to_i128() as usize];
        }
    }
}
