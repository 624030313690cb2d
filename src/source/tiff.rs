//! TIFF stacks: a directory (or list) of 2-D single-page TIFFs, or one multi-page TIFF (an
//! OME-TIFF: one series, its axes from the OME-XML). Strips or tiles, BigTIFF, uncompressed,
//! LZW, deflate, zstd or PackBits, with or without a predictor (the `tiff` crate decodes).
//! Invariant: every page read has the shape and type of the first, checked when the stack is
//! opened from the page headers alone; pixel data is decoded one block of pages at a time,
//! the pages in parallel.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rayon::prelude::*;
use tiff::ColorType;
use tiff::decoder::{Decoder, DecodingResult, Limits};
use tiff::tags::Tag;

use super::{Block, BufferBlock, Source, ome_tiff};
use crate::dtype::{DType, Element};
use crate::error::{Error, InputError, IoContext, Result, to_usize};
use crate::fingerprint::{fnv1a, stamp};
use crate::ome::VoxelSize;
use crate::region::{Region, fmt_shape};

type Dec = Decoder<BufReader<File>>;

/// What one TIFF page may make us allocate (spec/FORMAT.md §10): a decoded page of up to
/// 4 GiB (a 32768x32768 16-bit plane is 2 GiB), tag values of up to 64 MiB.
fn limits() -> Limits {
    let mut l = Limits::default();
    l.decoding_buffer_size = 4 << 30;
    l.ifd_value_size = 64 << 20;
    l.intermediate_buffer_size = 1 << 30;
    l
}

fn open_decoder(path: &Path) -> Result<Dec> {
    let f = File::open(path).at(path)?;
    Decoder::new(BufReader::new(f))
        .map(|d| d.with_limits(limits()))
        .map_err(|e| Error::bad_input(path, format!("not a readable TIFF: {e}")))
}

/// Shape and type of the decoder's current page.
fn page_info(dec: &mut Dec, path: &Path, page: usize) -> Result<(u64, u64, DType)> {
    let err = |e: tiff::TiffError| Error::bad_input(path, format!("page {page}: {e}"));
    let (w, h) = dec.dimensions().map_err(err)?;
    let bits = match dec.colortype().map_err(err)? {
        ColorType::Gray(b) => b,
        other => {
            return Err(Error::Input(InputError::UnsupportedDtype {
                path: path.to_path_buf(),
                dtype: format!("{other:?}"),
                hint: "only single-channel (grayscale) TIFF pages are supported".into(),
            }));
        }
    };
    let format: u16 = dec
        .find_tag_unsigned(Tag::SampleFormat)
        .map_err(err)?
        .unwrap_or(1);
    let dtype = match (format, bits) {
        (1, 8) => DType::U8,
        (1, 16) => DType::U16,
        (1, 32) => DType::U32,
        (1, 64) => DType::U64,
        (2, 8) => DType::I8,
        (2, 16) => DType::I16,
        (2, 32) => DType::I32,
        (2, 64) => DType::I64,
        (3, 32) => DType::F32,
        (3, 64) => DType::F64,
        _ => {
            return Err(Error::Input(InputError::UnsupportedDtype {
                path: path.to_path_buf(),
                dtype: format!("{bits}-bit samples of format {format}"),
                hint: "supported: 8/16/32/64-bit integers, 32/64-bit floats".into(),
            }));
        }
    };
    Ok((u64::from(h), u64::from(w), dtype))
}

/// Decodes the current page into little-endian bytes.
fn decode_page(dec: &mut Dec, path: &Path, page: usize, want: DType) -> Result<Vec<u8>> {
    let img = match dec.read_image() {
        Ok(img) => img,
        // tiff 0.11.3 stops on some LZW chunks whose end code is still pending when their
        // output is full (image-rs/image-tiff#395): those pages are decoded here.
        Err(e) if e.to_string().contains("no lzw end code") => {
            return decode_lzw_page(dec, path, page, want);
        }
        Err(e) => return Err(Error::bad_input(path, format!("page {page}: {e}"))),
    };
    let mut out = Vec::new();
    macro_rules! le {
        ($($variant:ident => $t:ty, $d:ident);*) => {
            match img {
                $(DecodingResult::$variant(v) => {
                    <$t>::extend_le_bytes(&v, &mut out);
                    DType::$d
                })*
                DecodingResult::F16(_) => {
                    return Err(Error::Input(InputError::UnsupportedDtype {
                        path: path.to_path_buf(),
                        dtype: "float16".into(),
                        hint: "supported: 8/16/32/64-bit integers, 32/64-bit floats".into(),
                    }));
                }
            }
        };
    }
    let got = le!(U8 => u8, U8; U16 => u16, U16; U32 => u32, U32; U64 => u64, U64;
        I8 => i8, I8; I16 => i16, I16; I32 => i32, I32; I64 => i64, I64;
        F32 => f32, F32; F64 => f64, F64);
    if got != want {
        return Err(Error::bad_input(
            path,
            format!("page {page} decodes as {got}, the stack is {want}"),
        ));
    }
    Ok(out)
}

/// The current page, LZW-compressed, decoded chunk by chunk (strips or tiles) with weezl,
/// each chunk's output taken as soon as it holds the chunk's bytes (as libtiff does), then
/// the horizontal predictor undone and the samples made little-endian.
fn decode_lzw_page(dec: &mut Dec, path: &Path, page: usize, want: DType) -> Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    use tiff::decoder::ChunkType;
    let err = |m: String| Error::bad_input(path, format!("page {page}: {m}"));
    let terr = |e: tiff::TiffError| err(e.to_string());
    let (w, h) = dec.dimensions().map_err(terr)?;
    let (w, h) = (w as usize, h as usize);
    let size = want.size();
    let predictor: u16 = dec
        .find_tag_unsigned(Tag::Predictor)
        .map_err(terr)?
        .unwrap_or(1);
    if predictor > 2 {
        return Err(err(format!(
            "LZW with predictor {predictor} in chunks tiff 0.11 cannot decode: not supported"
        )));
    }
    let tiled = matches!(dec.get_chunk_type(), ChunkType::Tile);
    let (offsets, counts) = if tiled {
        (Tag::TileOffsets, Tag::TileByteCounts)
    } else {
        (Tag::StripOffsets, Tag::StripByteCounts)
    };
    let offsets = dec.get_tag_u64_vec(offsets).map_err(terr)?;
    let counts = dec.get_tag_u64_vec(counts).map_err(terr)?;
    let (cw, ch) = dec.chunk_dimensions();
    let (cw, ch) = (cw as usize, ch as usize);
    if offsets.len() != counts.len() || cw == 0 || ch == 0 {
        return Err(err("chunk offsets and byte counts disagree".into()));
    }
    let across = w.div_ceil(cw);
    let big = dec.byte_order() == tiff::tags::ByteOrder::BigEndian;
    let mut out = vec![0u8; w * h * size];
    for (i, (&at, &n)) in offsets.iter().zip(&counts).enumerate() {
        let (dw, dh) = dec.chunk_data_dimensions(i as u32);
        let (dw, dh) = (dw as usize, dh as usize);
        // A tile is stored whole (padded at the edges); a strip as its rows.
        let stored_w = if tiled { cw } else { w };
        let need = stored_w * if tiled { ch } else { dh } * size;
        let n = usize::try_from(n)
            .ok()
            .filter(|&n| n <= need.saturating_mul(2) + 4096)
            .ok_or_else(|| err(format!("LZW chunk {i} claims {n} bytes for {need} decoded")))?;
        let mut raw = vec![0u8; n];
        let file = dec.inner();
        file.seek(SeekFrom::Start(at))
            .and_then(|_| file.read_exact(&mut raw))
            .map_err(|e| err(format!("LZW chunk {i} at byte {at}: {e}")))?;
        let mut chunk = vec![0u8; need];
        let mut lzw =
            weezl::decode::Configuration::with_tiff_size_switch(weezl::BitOrder::Msb, 8).build();
        let (mut read, mut written) = (0, 0);
        while written < need {
            let r = lzw.decode_bytes(&raw[read..], &mut chunk[written..]);
            read += r.consumed_in;
            written += r.consumed_out;
            match r.status {
                Ok(weezl::LzwStatus::Ok) if r.consumed_in + r.consumed_out > 0 => {}
                Ok(_) => break,
                Err(e) => return Err(err(format!("LZW chunk {i}: {e}"))),
            }
        }
        if written < need {
            return Err(err(format!(
                "LZW chunk {i} decodes to {written} bytes, {need} needed"
            )));
        }
        for row in chunk.chunks_exact_mut(stored_w * size) {
            if big && size > 1 {
                row.chunks_exact_mut(size).for_each(<[u8]>::reverse);
            }
            if predictor == 2 {
                undo_horizontal(row, size);
            }
        }
        let (x0, y0) = if tiled {
            ((i % across) * cw, (i / across) * ch)
        } else {
            (0, i * ch)
        };
        for r in 0..dh.min(h.saturating_sub(y0)) {
            let dst = ((y0 + r) * w + x0) * size;
            let len = dw.min(w - x0) * size;
            let src = r * stored_w * size;
            out[dst..dst + len].copy_from_slice(&chunk[src..src + len]);
        }
    }
    Ok(out)
}

/// Undoes TIFF's horizontal differencing on one row of little-endian samples of `size` bytes.
fn undo_horizontal(row: &mut [u8], size: usize) {
    macro_rules! undo {
        ($t:ty) => {{
            let mut prev: $t = 0;
            for s in row.chunks_exact_mut(size) {
                let v = <$t>::from_le_bytes(s.try_into().expect("sample")).wrapping_add(prev);
                s.copy_from_slice(&v.to_le_bytes());
                prev = v;
            }
        }};
    }
    match size {
        1 => undo!(u8),
        2 => undo!(u16),
        4 => undo!(u32),
        _ => undo!(u64),
    }
}

enum Pages {
    /// One single-page file per plane.
    Files(Vec<PathBuf>),
    /// Planes are pages of one file, or of several (a multi-file OME-TIFF), the file holding
    /// the OME-XML first.
    Multi(Vec<PagedFile>),
}

/// A multi-page file. Decoders (each caches the page offsets it has walked) are kept for
/// reuse, one per worker decoding at a time.
struct PagedFile {
    path: PathBuf,
    pool: Mutex<Vec<Dec>>,
}

/// A stack of 2-D TIFF pages: shape (pages, height, width), or an OME-TIFF series' (t, c, z,
/// height, width) with the axes of length one left out.
pub(crate) struct TiffStack {
    pages: Pages,
    shape: Vec<u64>,
    dtype: DType,
    /// The file (of `pages`) and page of each plane, planes in C order over the axes before
    /// y, x.
    planes: Vec<(usize, usize)>,
    /// The axis names an OME-TIFF gives.
    axes: Option<Vec<String>>,
    /// Which series of how many, for an OME-TIFF.
    series: Option<(usize, usize)>,
    /// The voxel size an OME-TIFF gives.
    voxel: Option<VoxelSize>,
}

impl TiffStack {
    /// Single-page TIFF files in the given order.
    pub(crate) fn files(paths: Vec<PathBuf>) -> Result<Self> {
        let mut first: Option<(u64, u64, DType)> = None;
        for p in &paths {
            let mut dec = open_decoder(p)?;
            let info = page_info(&mut dec, p, 0)?;
            if dec.more_images() {
                return Err(Error::bad_input(
                    p,
                    "has several pages; a stack of files needs single-page TIFFs (convert a \
                     multi-page TIFF on its own)",
                ));
            }
            match first {
                None => first = Some(info),
                Some(f) => check_same(f, info, p, &paths[0], 0)?,
            }
        }
        let (h, w, dtype) =
            first.ok_or_else(|| Error::Input(InputError::NoInputs(PathBuf::new())))?;
        Ok(TiffStack {
            shape: vec![paths.len() as u64, h, w],
            planes: (0..paths.len()).map(|k| (k, 0)).collect(),
            pages: Pages::Files(paths),
            dtype,
            axes: None,
            series: None,
            voxel: None,
        })
    }

    /// The OME-TIFF dataset a companion OME-XML file (`NAME.companion.ome`, Bio-Formats')
    /// describes: series `series` (0 by default) read from the TIFF files it names beside it,
    /// as [`TiffStack::multipage`] reads it from any of them.
    pub(crate) fn companion(path: &Path, series: Option<usize>) -> Result<Self> {
        let xml = read_companion(path)?;
        let all = ome_tiff::parse(&xml, "").map_err(|e| Error::bad_input(path, e))?;
        let pick = series.unwrap_or(0);
        let s = all.get(pick).ok_or_else(|| {
            Error::option(
                "series",
                format!(
                    "{}: series {pick} asked for, the OME-XML describes {} (0 to {})",
                    path.display(),
                    all.len(),
                    all.len().saturating_sub(1)
                ),
            )
        })?;
        let first = s
            .ifds
            .first()
            .map(|&(f, _)| s.files[f].as_str())
            .filter(|f| !f.is_empty())
            .ok_or_else(|| {
                Error::bad_input(
                    path,
                    format!(
                        "its OME-XML names no TIFF file for the planes of series {pick} (a                          companion file's TiffData carry UUID FileName)"
                    ),
                )
            })?;
        let tiff = path.parent().unwrap_or(Path::new("")).join(first);
        Self::multipage(&tiff, series).map_err(|e| match e {
            Error::Io { .. } => Error::bad_input(
                path,
                format!("its OME-XML puts planes of series {pick} in {first}: {e}"),
            ),
            e => e,
        })
    }

    /// The pages of one multi-page TIFF; of an OME-TIFF, the planes of series `series` (0
    /// by default) in the order t, c, z.
    pub(crate) fn multipage(path: &Path, series: Option<usize>) -> Result<Self> {
        let mut dec = open_decoder(path)?;
        let description = dec.get_tag_ascii_string(Tag::ImageDescription).ok();
        let ome = match description.as_deref().filter(|d| ome_tiff::is_ome(d)) {
            Some(xml) => {
                let file = path.file_name().map(|f| f.to_string_lossy().into_owned());
                // A dataset's XML may live in a companion file beside it.
                let companion = ome_tiff::companion(xml).map_err(|e| Error::bad_input(path, e))?;
                let text;
                let (xml, from) = match companion {
                    Some(name) => {
                        let p = path.parent().unwrap_or(Path::new("")).join(name);
                        text = read_companion(&p)?;
                        (text.as_str(), p)
                    }
                    None => (xml, path.to_path_buf()),
                };
                Some(
                    ome_tiff::parse(xml, file.as_deref().unwrap_or(""))
                        .map_err(|e| Error::bad_input(&from, e))?,
                )
            }
            None => None,
        };
        let pick = series.unwrap_or(0);
        let chosen = match &ome {
            Some(all) => Some(all.get(pick).ok_or_else(|| {
                Error::option(
                    "series",
                    format!(
                        "{}: series {pick} asked for, the OME-TIFF holds {} (0 to {})",
                        path.display(),
                        all.len(),
                        all.len() - 1
                    ),
                )
            })?),
            None if pick > 0 => {
                return Err(Error::option(
                    "series",
                    format!(
                        "{}: series {pick} asked for, but it is not an OME-TIFF (one series)",
                        path.display()
                    ),
                ));
            }
            None => None,
        };
        // The files holding the planes: this one, then those its OME-XML names beside it.
        let dir = path.parent().unwrap_or(Path::new(""));
        let paths: Vec<PathBuf> = match chosen {
            Some(s) => s
                .files
                .iter()
                .map(|f| {
                    if f.is_empty() {
                        path.to_path_buf()
                    } else {
                        dir.join(f)
                    }
                })
                .collect(),
            None => vec![path.to_path_buf()],
        };
        // Walk every page header of each file; the series' pages (all, for a plain TIFF) must
        // share the first one's shape and type.
        let mut first: Option<((u64, u64, DType), PathBuf, usize)> = None;
        let mut files = Vec::with_capacity(paths.len());
        let mut own = Some(dec);
        let mut pages_in_first = 0;
        for (fi, fpath) in paths.iter().enumerate() {
            let wanted: Option<std::collections::BTreeSet<usize>> = chosen.map(|s| {
                s.ifds
                    .iter()
                    .filter(|&&(f, _)| f == fi)
                    .map(|&(_, p)| p)
                    .collect()
            });
            let mut dec = match own.take() {
                Some(d) => d,
                None => open_decoder(fpath).map_err(|e| {
                    Error::bad_input(
                        path,
                        format!("its OME-XML puts planes of series {pick} in another file: {e}"),
                    )
                })?,
            };
            let mut n = 0usize;
            loop {
                if wanted.as_ref().is_none_or(|w| w.contains(&n)) {
                    let info = page_info(&mut dec, fpath, n)?;
                    match &first {
                        None => first = Some((info, fpath.clone(), n)),
                        Some((f, at, _)) => check_same(*f, info, fpath, at, n as u64)?,
                    }
                }
                n += 1;
                if !dec.more_images() {
                    break;
                }
                dec.next_image()
                    .map_err(|e| Error::bad_input(fpath, format!("page {n}: {e}")))?;
            }
            if let Some(&last) = wanted.as_ref().and_then(|w| w.last())
                && last >= n
            {
                return Err(Error::bad_input(
                    path,
                    format!(
                        "OME-XML series {pick} names page {last} of {}, which has {n}",
                        fpath.display()
                    ),
                ));
            }
            if fi == 0 {
                pages_in_first = n;
            }
            files.push(PagedFile {
                path: fpath.clone(),
                pool: Mutex::new(vec![dec]),
            });
        }
        let Some(((h, w, dtype), first_path, first_page)) = first else {
            return Err(Error::bad_input(
                path,
                format!("series {pick} names no page of the file's {pages_in_first}"),
            ));
        };
        let voxel = chosen.and_then(ome_tiff::Series::voxel_size);
        let (shape, planes, axes) = match chosen {
            Some(s) => {
                if (s.y, s.x) != (h, w) {
                    return Err(Error::bad_input(
                        path,
                        format!(
                            "OME-XML series {pick} says {}x{} pixels, {} page {first_page} \
                             holds {h}x{w}",
                            s.y,
                            s.x,
                            first_path.display()
                        ),
                    ));
                }
                let (names, shape) = s.axes();
                (shape, s.ifds.clone(), Some(names))
            }
            None => (
                vec![pages_in_first as u64, h, w],
                (0..pages_in_first).map(|k| (0, k)).collect(),
                None,
            ),
        };
        Ok(TiffStack {
            shape,
            planes,
            pages: Pages::Multi(files),
            dtype,
            axes,
            series: ome.as_ref().map(|all| (pick, all.len())),
            voxel,
        })
    }
}

/// The most bytes of a companion OME-XML file read (its XML lists every plane once: a few
/// hundred bytes each).
const MAX_COMPANION: u64 = 256 << 20;

/// The text of a companion `.companion.ome` file.
fn read_companion(p: &Path) -> Result<String> {
    let len = std::fs::metadata(p).at(p)?.len();
    if len > MAX_COMPANION {
        return Err(Error::bad_input(
            p,
            format!("a companion OME-XML file of {len} bytes; at most {MAX_COMPANION} are read"),
        ));
    }
    let bytes = std::fs::read(p).at(p)?;
    String::from_utf8(bytes).map_err(|e| Error::bad_input(p, format!("not UTF-8 OME-XML: {e}")))
}

fn check_same(
    first: (u64, u64, DType),
    got: (u64, u64, DType),
    path: &Path,
    first_path: &Path,
    page: u64,
) -> Result<()> {
    let label = |p: &Path| {
        if page > 0 {
            PathBuf::from(format!("{} page {page}", p.display()))
        } else {
            p.to_path_buf()
        }
    };
    if (first.0, first.1) != (got.0, got.1) {
        return Err(Error::Input(InputError::StackMismatch {
            path: label(path),
            first: first_path.to_path_buf(),
            field: "shape",
            expected: fmt_shape(&[first.0, first.1]),
            found: fmt_shape(&[got.0, got.1]),
        }));
    }
    if first.2 != got.2 {
        return Err(Error::Input(InputError::StackMismatch {
            path: label(path),
            first: first_path.to_path_buf(),
            field: "dtype",
            expected: first.2.to_string(),
            found: got.2.to_string(),
        }));
    }
    Ok(())
}

impl Source for TiffStack {
    fn shape(&self) -> &[u64] {
        &self.shape
    }

    fn dtype(&self) -> DType {
        self.dtype
    }

    fn describe(&self) -> String {
        match &self.pages {
            Pages::Files(f) => format!(
                "{} TIFF files {} ... {} ({} {})",
                f.len(),
                f[0].display(),
                f[f.len() - 1].display(),
                fmt_shape(&self.shape),
                self.dtype
            ),
            Pages::Multi(files) => match (self.series, &self.axes) {
                (Some((s, n)), Some(axes)) => format!(
                    "OME-TIFF {}{} series {s} of {n} ({} {}, axes {})",
                    files[0].path.display(),
                    match files.len() {
                        1 => String::new(),
                        2 => " and 1 other file".to_string(),
                        k => format!(" and {} other files", k - 1),
                    },
                    fmt_shape(&self.shape),
                    self.dtype,
                    axes.join(",")
                ),
                _ => format!(
                    "multi-page TIFF {} ({} {})",
                    files[0].path.display(),
                    fmt_shape(&self.shape),
                    self.dtype
                ),
            },
        }
    }

    fn identity(&self) -> String {
        let stamps = match &self.pages {
            Pages::Files(f) => {
                let files: Vec<String> = f.par_iter().map(|p| stamp(p)).collect();
                fnv1a(&files.join("\n"))
            }
            Pages::Multi(files) => {
                let stamps: Vec<String> = files.iter().map(|f| stamp(&f.path)).collect();
                fnv1a(&stamps.join("\n"))
            }
        };
        format!("{}: {stamps}", self.describe())
    }

    /// An OME-TIFF's axes: t, c, z, y, x without those of length one.
    fn axis_names(&self) -> Option<Vec<String>> {
        self.axes.clone()
    }

    /// An OME-TIFF's physical sizes and time increment.
    fn voxel_size(&self) -> Option<VoxelSize> {
        self.voxel.clone()
    }

    /// A page is decoded whole: the commands that read by blocks (reductions, kernels) read
    /// whole pages, each page once (a 128^3 block of a 1024x1024 page would decode it 64
    /// times: `stats` of a 1 GiB deflate stack took 85 s, 1.5 s by pages).
    fn chunk_hint(&self) -> Option<Vec<u64>> {
        let nd = self.shape.len();
        let mut c = vec![1; nd];
        c[nd - 2] = self.shape[nd - 2];
        c[nd - 1] = self.shape[nd - 1];
        Some(c)
    }

    /// `convert` reads TIFF stacks by its own slabs (chunk-deep, as wide as the budget), not
    /// through the rechunk planner: measured faster on uncompressed stacks (bench/tiff.py).
    fn chunk_bounds(&self) -> Option<Vec<Vec<u64>>> {
        None
    }

    fn block(&self, region: &Region) -> Result<Box<dyn Block + '_>> {
        let itemsize = self.dtype.size();
        let r = region.ranges();
        let nd = r.len();
        let (h, w) = (self.shape[nd - 2] as usize, self.shape[nd - 1] as usize);
        let rows = r[nd - 2].start as usize..r[nd - 2].end as usize;
        let cols = r[nd - 1].start as usize..r[nd - 1].end as usize;
        let plane = rows.len() * cols.len() * itemsize;
        let n = to_usize(u64::try_from(region.len()).unwrap_or(u64::MAX), "block")?;
        let mut data = vec![0u8; n * itemsize];
        // Keep only the rows and columns of the block from each decoded page.
        let crop = |page: &[u8], out: &mut [u8], path: &Path, z: usize| -> Result<()> {
            if page.len() != h * w * itemsize {
                return Err(Error::bad_input(
                    path,
                    format!(
                        "page {z} decodes to {} bytes, expected {h}x{w} {}",
                        page.len(),
                        self.dtype
                    ),
                ));
            }
            for (k, y) in rows.clone().enumerate() {
                let src = (y * w + cols.start) * itemsize;
                let len = cols.len() * itemsize;
                out[k * len..(k + 1) * len].copy_from_slice(&page[src..src + len]);
            }
            Ok(())
        };
        // The file and page of the block's k-th plane: its index over the axes before y, x.
        let lead = &self.shape[..nd - 2];
        let lead_ranges = &r[..nd - 2];
        let page_of = |k: usize| -> (usize, usize) {
            let (mut rest, mut flat, mut stride) = (k, 0usize, 1usize);
            for a in (0..lead.len()).rev() {
                let len = (lead_ranges[a].end - lead_ranges[a].start) as usize;
                let i = lead_ranges[a].start as usize + rest % len;
                rest /= len;
                flat += i * stride;
                stride *= lead[a] as usize;
            }
            self.planes[flat]
        };
        if plane > 0 {
            match &self.pages {
                Pages::Files(files) => {
                    data.par_chunks_mut(plane).enumerate().try_for_each(
                        |(k, out)| -> Result<()> {
                            let path = &files[page_of(k).0];
                            let mut dec = open_decoder(path)?;
                            let page = decode_page(&mut dec, path, 0, self.dtype)?;
                            crop(&page, out, path, 0)
                        },
                    )?;
                }
                Pages::Multi(files) => {
                    // Pages decode in parallel, each worker with a decoder of its own.
                    data.par_chunks_mut(plane).enumerate().try_for_each(
                        |(k, out)| -> Result<()> {
                            let (f, z) = page_of(k);
                            let PagedFile { path, pool } = &files[f];
                            let taken = pool.lock().expect("no decoder user panics").pop();
                            let mut dec = match taken {
                                Some(d) => d,
                                None => open_decoder(path)?,
                            };
                            dec.seek_to_image(z)
                                .map_err(|e| Error::bad_input(path, format!("page {z}: {e}")))?;
                            let page = decode_page(&mut dec, path, z, self.dtype)?;
                            pool.lock().expect("no decoder user panics").push(dec);
                            crop(&page, out, path, z)
                        },
                    )?;
                }
            }
        }
        Ok(Box::new(BufferBlock::new(region.clone(), data, itemsize)))
    }
}
