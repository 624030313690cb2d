//! Memory-mapped inputs: one .npy file, one raw file, or a stack of .npy files.
//! Invariant: a block maps only the byte span its region needs and unmaps it when dropped, so
//! resident memory stays at one block however large the file is.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, MmapOptions};
use rayon::prelude::*;
use serde::Deserialize;

use super::{Block, RawOptions, Source};
use crate::copy::{Side, c_strides, copy_box, f_strides};
use crate::dtype::DType;
use crate::error::{Error, InputError, IoContext, Result};
use crate::fingerprint::{fnv1a, stamp};
use crate::npy::{NpyHeader, parse_header};
use crate::region::{Region, fmt_shape};

/// Where an array's elements lie in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Layout {
    path: PathBuf,
    data_offset: u64,
    shape: Vec<u64>,
    dtype: DType,
    fortran: bool,
    big_endian: bool,
}

impl Layout {
    fn strides(&self) -> Vec<usize> {
        let shape: Vec<usize> = self.shape.iter().map(|&n| n as usize).collect();
        if self.fortran {
            f_strides(&shape, self.dtype.size())
        } else {
            c_strides(&shape, self.dtype.size())
        }
    }

    fn data_len(&self) -> u128 {
        // Saturating: a header of absurd dimensions is refused by the size check, not by a panic.
        self.shape
            .iter()
            .try_fold(self.dtype.size() as u128, |a, &n| {
                a.checked_mul(u128::from(n))
            })
            .unwrap_or(u128::MAX)
    }

    /// The axis the file is stored slowest along.
    fn slow_axis(&self) -> usize {
        if self.fortran {
            self.shape.len() - 1
        } else {
            0
        }
    }

    /// Maps the bytes `region` (coordinates of this file's array) needs. When the region spans
    /// the faster axes whole it is one contiguous run and gets one mapping; otherwise each plane
    /// along the slow axis gets its own, covering only that plane's part. (One mapping of the
    /// whole span would also cover the other blocks' rows in between, and the kernel maps a
    /// file's large page-cache folios whole, so resident memory would be the span, not the
    /// region.)
    fn map(&self, region: &Region) -> Result<MappedPart> {
        let strides = self.strides();
        let itemsize = self.dtype.size();
        let slow = self.slow_axis();
        let contiguous = region
            .ranges()
            .iter()
            .zip(&self.shape)
            .enumerate()
            .all(|(a, (r, &n))| a == slow || (r.start == 0 && r.end == n));
        let mut planes = Vec::new();
        if !region.is_empty() {
            let file = File::open(&self.path).at(&self.path)?;
            let runs: Vec<std::ops::Range<u64>> = if contiguous {
                vec![region.ranges()[slow].clone()]
            } else {
                region.ranges()[slow].clone().map(|s| s..s + 1).collect()
            };
            for run in runs {
                let mut ranges = region.ranges().to_vec();
                ranges[slow] = run;
                let first: usize = ranges
                    .iter()
                    .zip(&strides)
                    .map(|(r, &st)| r.start as usize * st)
                    .sum();
                let last: usize = ranges
                    .iter()
                    .zip(&strides)
                    .map(|(r, &st)| (r.end - 1) as usize * st)
                    .sum::<usize>()
                    + itemsize;
                // SAFETY: the map is read-only; chunkwise's contract (spec/CLI.md) is that inputs
                // are not modified while a convert reads them.
                let map = unsafe {
                    MmapOptions::new()
                        .offset(self.data_offset + first as u64)
                        .len(last - first)
                        .map(&file)
                }
                .at(&self.path)?;
                planes.push((map, first));
            }
        }
        Ok(MappedPart {
            planes,
            per_plane: !contiguous,
            slow,
            slow_start: region.ranges()[slow].start,
            strides,
            itemsize,
            swap: self.big_endian,
        })
    }
}

/// The mapped bytes of one region of one file, plane by plane along its slow axis.
struct MappedPart {
    /// Each plane's mapping and the byte offset (from the data start) of its first byte.
    planes: Vec<(Mmap, usize)>,
    /// Whether `planes` holds one mapping per plane (else one for the whole region).
    per_plane: bool,
    slow: usize,
    slow_start: u64,
    strides: Vec<usize>,
    itemsize: usize,
    swap: bool,
}

impl MappedPart {
    /// Copies `part` (this file's coordinates) into `dst` at byte `dst_offset` with `dst_strides`.
    fn copy(&self, part: &Region, dst: &mut [u8], dst_offset: usize, dst_strides: &[usize]) {
        if part.is_empty() {
            return;
        }
        let mut extent: Vec<usize> = part.shape().iter().map(|&n| n as usize).collect();
        let s0 = part.ranges()[self.slow].start;
        let steps: Vec<u64> = if self.per_plane {
            extent[self.slow] = 1;
            part.ranges()[self.slow].clone().collect()
        } else {
            vec![s0]
        };
        for s in steps {
            let k = if self.per_plane {
                (s - self.slow_start) as usize
            } else {
                0
            };
            let (map, first) = &self.planes[k];
            let abs: usize = part
                .ranges()
                .iter()
                .enumerate()
                .map(|(a, r)| if a == self.slow { s } else { r.start } as usize * self.strides[a])
                .sum();
            copy_box(
                map,
                Side {
                    offset: abs - first,
                    strides: &self.strides,
                },
                dst,
                Side {
                    offset: dst_offset + (s - s0) as usize * dst_strides[self.slow],
                    strides: dst_strides,
                },
                &extent,
                self.itemsize,
                self.swap,
            );
        }
    }
}

/// Reads an .npy header: the fixed preamble, then exactly the header length it states.
fn read_npy_header(path: &Path) -> Result<(NpyHeader, u64)> {
    let mut f = File::open(path).at(path)?;
    let len = f.metadata().at(path)?.len();
    let mut head = vec![0u8; 12];
    let n = read_up_to(&mut f, &mut head).at(path)?;
    head.truncate(n);
    if n >= 10 && head.starts_with(b"\x93NUMPY") {
        let header_len = if head[6] == 1 {
            usize::from(u16::from_le_bytes([head[8], head[9]])) + 10
        } else if n >= 12 {
            u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize + 12
        } else {
            n
        };
        let have = head.len();
        if header_len > have && header_len <= 1 << 24 {
            head.resize(header_len, 0);
            let got = read_up_to(&mut f, &mut head[have..]).at(path)?;
            head.truncate(have + got);
        }
    }
    let header = parse_header(&head, path)?;
    Ok((header, len))
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn npy_layout(path: &Path) -> Result<Layout> {
    let (h, file_len) = read_npy_header(path)?;
    let layout = Layout {
        path: path.to_path_buf(),
        data_offset: h.data_offset,
        shape: h.shape.clone(),
        dtype: h.dtype,
        fortran: h.fortran_order,
        big_endian: h.big_endian,
    };
    let expected = u128::from(h.data_offset).saturating_add(layout.data_len());
    if u128::from(file_len) < expected {
        return Err(Error::Input(InputError::SizeMismatch {
            path: path.to_path_buf(),
            what: format!(
                "truncated .npy: header says {} {}",
                fmt_shape(&h.shape),
                h.dtype
            ),
            expected: u64::try_from(layout.data_len()).unwrap_or(u64::MAX),
            actual: file_len.saturating_sub(h.data_offset),
        }));
    }
    Ok(layout)
}

/// One memory-mapped array file: an .npy file or a raw file.
pub(crate) struct MappedSource {
    layout: Layout,
    kind: &'static str,
}

#[derive(Deserialize)]
struct Sidecar {
    shape: Vec<u64>,
    dtype: String,
    #[serde(default)]
    byte_order: Option<String>,
    #[serde(default)]
    order: Option<String>,
}

impl MappedSource {
    pub(crate) fn npy(path: &Path) -> Result<Self> {
        let layout = npy_layout(path)?;
        if layout.shape.is_empty() {
            return Err(Error::bad_input(
                path,
                "0-dimensional arrays are not supported",
            ));
        }
        Ok(MappedSource {
            layout,
            kind: ".npy",
        })
    }

    /// A raw little-endian C-order file, described by `--dtype`/`--shape` or a JSON sidecar
    /// of the same stem (`volume.raw` + `volume.json`).
    pub(crate) fn raw(path: &Path, opts: &RawOptions) -> Result<Self> {
        let sidecar_path = path.with_extension("json");
        let sidecar: Option<Sidecar> = if opts.dtype.is_none() || opts.shape.is_none() {
            if sidecar_path.is_file() {
                let text = std::fs::read_to_string(&sidecar_path).at(&sidecar_path)?;
                Some(serde_json::from_str(&text).map_err(|e| {
                    Error::bad_input(
                        &sidecar_path,
                        format!(
                            "bad sidecar (want {{\"shape\": [...], \"dtype\": \"uint16\"}}): {e}"
                        ),
                    )
                })?)
            } else {
                None
            }
        } else {
            None
        };
        let missing = || {
            Error::option(
                "dtype/shape",
                format!(
                    "raw input {} needs its dtype and shape (given, or in a sidecar {})",
                    path.display(),
                    sidecar_path.display()
                ),
            )
        };
        let dtype = match (opts.dtype, &sidecar) {
            (Some(d), _) => d,
            (None, Some(s)) => s
                .dtype
                .parse::<DType>()
                .map_err(|e| Error::bad_input(&sidecar_path, e.to_string()))?,
            (None, None) => return Err(missing()),
        };
        let shape = match (&opts.shape, &sidecar) {
            (Some(s), _) => s.clone(),
            (None, Some(s)) => s.shape.clone(),
            (None, None) => return Err(missing()),
        };
        if shape.is_empty() {
            return Err(Error::option(
                "shape",
                "0-dimensional arrays are not supported",
            ));
        }
        let (fortran, big_endian) = match &sidecar {
            Some(s) if opts.shape.is_none() => (
                matches!(s.order.as_deref(), Some("F" | "f" | "fortran")),
                matches!(s.byte_order.as_deref(), Some("big" | ">")),
            ),
            _ => (false, false),
        };
        let layout = Layout {
            path: path.to_path_buf(),
            data_offset: 0,
            shape,
            dtype,
            fortran,
            big_endian: big_endian && dtype.size() > 1,
        };
        let file_len = std::fs::metadata(path).at(path)?.len();
        if u128::from(file_len) != layout.data_len() {
            return Err(Error::Input(InputError::SizeMismatch {
                path: path.to_path_buf(),
                what: format!("raw {} {}", fmt_shape(&layout.shape), dtype),
                expected: u64::try_from(layout.data_len()).unwrap_or(u64::MAX),
                actual: file_len,
            }));
        }
        Ok(MappedSource {
            layout,
            kind: "raw",
        })
    }
}

impl Source for MappedSource {
    fn shape(&self) -> &[u64] {
        &self.layout.shape
    }

    fn dtype(&self) -> DType {
        self.layout.dtype
    }

    fn slow_axis(&self) -> usize {
        self.layout.slow_axis()
    }

    fn describe(&self) -> String {
        format!(
            "{} file {} ({} {}{}{})",
            self.kind,
            self.layout.path.display(),
            fmt_shape(&self.layout.shape),
            self.layout.dtype,
            if self.layout.fortran {
                ", Fortran order"
            } else {
                ""
            },
            if self.layout.big_endian {
                ", big-endian"
            } else {
                ""
            },
        )
    }

    fn identity(&self) -> String {
        format!(
            "{} at byte {}: {}",
            self.describe(),
            self.layout.data_offset,
            stamp(&self.layout.path)
        )
    }

    fn block(&self, region: &Region) -> Result<Box<dyn Block + '_>> {
        Ok(Box::new(MappedBlock {
            part: self.layout.map(region)?,
        }))
    }
}

struct MappedBlock {
    part: MappedPart,
}

impl Block for MappedBlock {
    fn itemsize(&self) -> usize {
        self.part.itemsize
    }

    fn read_strided(&self, part: &Region, dst: &mut [u8], offset: usize, strides: &[usize]) {
        self.part.copy(part, dst, offset, strides);
    }
}

/// .npy files, each one slice or block, stacked along a new leading axis.
pub(crate) struct NpyStack {
    files: Vec<Layout>,
    shape: Vec<u64>,
    dtype: DType,
}

impl NpyStack {
    /// Reads every header; all must agree on shape and dtype (the first that differs is named).
    pub(crate) fn open(paths: Vec<PathBuf>) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        for p in &paths {
            let layout = npy_layout(p)?;
            if let Some(first) = files.first() {
                let first: &Layout = first;
                if layout.shape != first.shape {
                    return Err(Error::Input(InputError::StackMismatch {
                        path: p.clone(),
                        first: first.path.clone(),
                        field: "shape",
                        expected: fmt_shape(&first.shape),
                        found: fmt_shape(&layout.shape),
                    }));
                }
                if layout.dtype != first.dtype {
                    return Err(Error::Input(InputError::StackMismatch {
                        path: p.clone(),
                        first: first.path.clone(),
                        field: "dtype",
                        expected: first.dtype.to_string(),
                        found: layout.dtype.to_string(),
                    }));
                }
            }
            files.push(layout);
        }
        let first = files.first().ok_or_else(|| {
            Error::Input(InputError::NoInputs(
                paths.first().cloned().unwrap_or_default(),
            ))
        })?;
        let mut shape = vec![files.len() as u64];
        shape.extend_from_slice(&first.shape);
        let dtype = first.dtype;
        Ok(NpyStack {
            files,
            shape,
            dtype,
        })
    }
}

impl Source for NpyStack {
    fn shape(&self) -> &[u64] {
        &self.shape
    }

    fn dtype(&self) -> DType {
        self.dtype
    }

    fn describe(&self) -> String {
        let name = |l: &Layout| {
            l.path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let first = &self.files[0];
        let last = &self.files[self.files.len() - 1];
        format!(
            "{} .npy files {} ... {} in {} ({} {})",
            self.files.len(),
            name(first),
            name(last),
            first
                .path
                .parent()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            fmt_shape(&self.shape),
            self.dtype
        )
    }

    fn identity(&self) -> String {
        let files: Vec<String> = self.files.par_iter().map(|f| stamp(&f.path)).collect();
        format!("{}: files {}", self.describe(), fnv1a(&files.join("\n")))
    }

    fn block(&self, region: &Region) -> Result<Box<dyn Block + '_>> {
        let inner = Region::new(region.ranges()[1..].to_vec());
        let z = region.ranges()[0].clone();
        let parts = self.files[z.start as usize..z.end as usize]
            .iter()
            .map(|f| f.map(&inner))
            .collect::<Result<Vec<_>>>()?;
        Ok(Box::new(StackBlock {
            z0: z.start,
            parts,
            itemsize: self.dtype.size(),
        }))
    }
}

struct StackBlock {
    z0: u64,
    parts: Vec<MappedPart>,
    itemsize: usize,
}

impl Block for StackBlock {
    fn itemsize(&self) -> usize {
        self.itemsize
    }

    fn read_strided(&self, part: &Region, dst: &mut [u8], offset: usize, strides: &[usize]) {
        let inner = Region::new(part.ranges()[1..].to_vec());
        for (k, z) in part.ranges()[0].clone().enumerate() {
            let p = &self.parts[(z - self.z0) as usize];
            p.copy(&inner, dst, offset + k * strides[0], &strides[1..]);
        }
    }
}
