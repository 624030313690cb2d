//! TIFF stacks: a directory (or list) of 2-D single-page TIFFs, or one multi-page TIFF (an
//! OME-TIFF: one series, its axes from the OME-XML). Strips or tiles, BigTIFF, uncompressed,
//! LZW, deflate, zstd or PackBits, with or without a predictor (the `tiff` crate decodes).
//! Invariant: every page read has the shape and type of the first, checked when the stack is
//! opened from the page headers alone; pixel data is decoded one block of pages at a time,
//! the pages in parallel.

use std::fs::File;
use std::io::BufReader;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rayon::prelude::*;
use tiff::ColorType;
use tiff::decoder::{ChunkType, Decoder, Limits};
use tiff::tags::Tag;

use super::{Block, BufferBlock, Gather, Source, ome_tiff};
use crate::dtype::DType;
use crate::error::{Error, InputError, IoContext, Result, to_usize};
use crate::fingerprint::{fnv1a, stamp};
use crate::ome::VoxelSize;
use crate::region::{Region, fmt_shape};
use crate::store::{Units, Window};

type Dec = Decoder<BufReader<File>>;

/// The most bytes a TIFF page, or one of its strips or tiles, decodes to.
const MAX_DECODED: u64 = 4 << 30;

/// What one TIFF page may make us allocate (spec/FORMAT.md §10): a decoded page of up to
/// 4 GiB (a 32768x32768 16-bit plane is 2 GiB), tag values of up to 64 MiB.
fn limits() -> Limits {
    let mut l = Limits::default();
    l.decoding_buffer_size = MAX_DECODED as usize;
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

/// The rows and columns of a block, read out of each of its pages.
struct Part {
    rows: Range<usize>,
    cols: Range<usize>,
    dtype: DType,
}

impl Part {
    /// The rows and columns of `region` (an array region: its last two axes are y, x).
    fn of(region: &Region, dtype: DType) -> Part {
        let r = region.ranges();
        let nd = r.len();
        Part {
            rows: r[nd - 2].start as usize..r[nd - 2].end as usize,
            cols: r[nd - 1].start as usize..r[nd - 1].end as usize,
            dtype,
        }
    }

    /// Reads the part of the decoder's current page into `out` (C order, native-endian
    /// samples): only the strips or tiles the part overlaps are decoded, each once. The rows
    /// of an uncompressed strip are read from the file as stored; deflate chunks are inflated
    /// by libdeflate; the other compressions are the `tiff` crate's, but for LZW chunks it
    /// cannot finish, which chunkwise decodes itself (weezl).
    fn read(&self, dec: &mut Dec, path: &Path, page: usize, out: &mut [u8]) -> Result<()> {
        let err = |e: tiff::TiffError| Error::bad_input(path, format!("page {page}: {e}"));
        let (w, h) = dec.dimensions().map_err(err)?;
        let (w, h) = (w as usize, h as usize);
        if self.rows.end > h || self.cols.end > w {
            return Err(Error::bad_input(
                path,
                format!("page {page} holds {h}x{w} pixels, the stack's pages more"),
            ));
        }
        let compression: u16 = dec
            .find_tag_unsigned(Tag::Compression)
            .map_err(err)?
            .unwrap_or(1);
        let predictor: u16 = dec
            .find_tag_unsigned(Tag::Predictor)
            .map_err(err)?
            .unwrap_or(1);
        let grid = ChunkGrid::of(dec, (path, page), (h, w), self.dtype.size())?;
        if compression == 1 && predictor == 1 && !grid.tiled {
            return self.read_stored(dec, (path, page), &grid, out);
        }
        // Adobe and old-style deflate, without a predictor or with the horizontal one.
        if matches!(compression, 8 | 32946) && predictor <= 2 {
            let codec = OwnCodec::Deflate(libdeflater::Decompressor::new());
            return self.read_own(dec, (path, page), &grid, predictor == 2, out, codec);
        }
        let mut pending = false;
        let crate_read = self.by_chunks(&grid, false, out, |i, buf| {
            let index = u32::try_from(i).map_err(|_| {
                Error::bad_input(path, format!("page {page}: chunk {i} of more than 2^32"))
            })?;
            dec.read_chunk_bytes(index, buf).map_err(|e| {
                pending = lzw_pending(&e);
                err(e)
            })
        });
        match crate_read {
            Err(_) if pending => {
                if predictor > 2 {
                    return Err(Error::bad_input(
                        path,
                        format!(
                            "page {page}: LZW with predictor {predictor} in chunks tiff 0.11 \
                             cannot decode: not supported"
                        ),
                    ));
                }
                self.read_own(dec, (path, page), &grid, predictor == 2, out, OwnCodec::Lzw)
            }
            other => other,
        }
    }

    /// For every strip or tile of the page that the part overlaps, `decode(i, buf)` fills
    /// `buf` with chunk `i` decoded, and its overlap with the part is copied to `out`. `buf`
    /// holds the chunk's rows at the chunk's stored width when `padded` (a tile as stored,
    /// padded at the page's edges), else only its pixels inside the page (as the `tiff` crate
    /// returns them). A strip of whole rows of a part as wide as the page decodes in place.
    fn by_chunks(
        &self,
        grid: &ChunkGrid,
        padded: bool,
        out: &mut [u8],
        mut decode: impl FnMut(usize, &mut [u8]) -> Result<()>,
    ) -> Result<()> {
        let size = self.dtype.size();
        let (h, w) = grid.page;
        let line = self.cols.len() * size;
        let mut scratch = Vec::new();
        for ty in self.rows.start / grid.height..self.rows.end.div_ceil(grid.height) {
            for tx in self.cols.start / grid.width..self.cols.end.div_ceil(grid.width) {
                let i = ty * grid.across + tx;
                let (x0, y0) = (tx * grid.width, ty * grid.height);
                let inside = (grid.width.min(w - x0), grid.height.min(h - y0));
                let (bw, bh) = match (padded && grid.tiled, grid.tiled) {
                    (true, _) => (grid.width, grid.height),
                    (false, true) => inside,
                    (false, false) => (w, inside.1),
                };
                let ys = self.rows.start.max(y0)..self.rows.end.min(y0 + inside.1);
                let xs = self.cols.start.max(x0)..self.cols.end.min(x0 + inside.0);
                let whole = bw * bh * size;
                if !grid.tiled && self.cols.len() == w && ys.len() == bh {
                    let at = (ys.start - self.rows.start) * line;
                    decode(i, &mut out[at..at + whole])?;
                    continue;
                }
                scratch.resize(whole, 0);
                decode(i, &mut scratch)?;
                for y in ys {
                    let src = ((y - y0) * bw + (xs.start - x0)) * size;
                    let dst = (y - self.rows.start) * line + (xs.start - self.cols.start) * size;
                    let len = xs.len() * size;
                    out[dst..dst + len].copy_from_slice(&scratch[src..src + len]);
                }
            }
        }
        Ok(())
    }

    /// Uncompressed strips: the part's rows read from the file where each strip stores them
    /// (one read per strip when the part is as wide as the page), samples swapped when the
    /// file's byte order is not the machine's.
    fn read_stored(
        &self,
        dec: &mut Dec,
        (path, page): (&Path, usize),
        grid: &ChunkGrid,
        out: &mut [u8],
    ) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let size = self.dtype.size();
        let Stored {
            offsets,
            counts,
            swap,
        } = grid.stored(dec, (path, page), size)?;
        let (per, w) = (grid.height, grid.page.1);
        let (row, line) = (w * size, self.cols.len() * size);
        let full = self.cols.len() == w;
        let mut scratch = Vec::new();
        let file = dec.inner().get_ref();
        let mut y = self.rows.start;
        while y < self.rows.end {
            let strip = y / per;
            let last = self.rows.end.min((strip + 1) * per);
            let within = (y - strip * per) as u64 * row as u64;
            let span = (last - y) * row;
            let (Some(&at), Some(&count)) = (offsets.get(strip), counts.get(strip)) else {
                return Err(Error::bad_input(
                    path,
                    format!(
                        "page {page}: strip {strip} missing ({} strips)",
                        offsets.len()
                    ),
                ));
            };
            if count < within + span as u64 {
                return Err(Error::bad_input(
                    path,
                    format!(
                        "page {page}: strip {strip} holds {count} bytes, rows to {last} need {}",
                        within + span as u64
                    ),
                ));
            }
            let dst = (y - self.rows.start) * line;
            let read = |buf: &mut [u8]| {
                file.read_exact_at(buf, at + within).map_err(|e| {
                    Error::bad_input(
                        path,
                        format!("page {page}: strip {strip} at byte {}: {e}", at + within),
                    )
                })
            };
            if full {
                read(&mut out[dst..dst + span])?;
            } else {
                scratch.resize(span, 0);
                read(&mut scratch)?;
                for (k, r) in scratch.chunks_exact(row).enumerate() {
                    let from = self.cols.start * size;
                    out[dst + k * line..dst + (k + 1) * line]
                        .copy_from_slice(&r[from..from + line]);
                }
            }
            y = last;
        }
        if swap {
            out.chunks_exact_mut(size).for_each(<[u8]>::reverse);
        }
        Ok(())
    }

    /// Compressed strips or tiles decoded by chunkwise: each one the part overlaps read from
    /// the file and decompressed whole by `codec` (its decoded size is known: a strip's rows,
    /// a tile padded to the tile size), samples swapped to the machine's order, then the
    /// horizontal predictor undone.
    fn read_own(
        &self,
        dec: &mut Dec,
        (path, page): (&Path, usize),
        grid: &ChunkGrid,
        horizontal: bool,
        out: &mut [u8],
        mut codec: OwnCodec,
    ) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let name = codec.name();
        let err = |m: String| Error::bad_input(path, format!("page {page}: {m}"));
        let size = self.dtype.size();
        let Stored {
            offsets,
            counts,
            swap,
        } = grid.stored(dec, (path, page), size)?;
        let row = if grid.tiled { grid.width } else { grid.page.1 } * size;
        let file = dec.inner().get_ref();
        let file_len = file.metadata().map_err(|e| err(e.to_string()))?.len();
        let mut raw = Vec::new();
        self.by_chunks(grid, true, out, |i, buf| {
            let need = buf.len();
            let (Some(&at), Some(&n)) = (offsets.get(i), counts.get(i)) else {
                return Err(err(format!("chunk {i} missing ({} chunks)", offsets.len())));
            };
            // LZW can expand what it stores by up to about 2x; deflate by a few bytes; and
            // the file holds it.
            let n = usize::try_from(n)
                .ok()
                .filter(|&n| n <= need.saturating_mul(2) + 4096)
                .filter(|&n| at.saturating_add(n as u64) <= file_len)
                .ok_or_else(|| {
                    err(format!(
                        "{name} chunk {i} claims {n} bytes at byte {at} for {need} decoded (the \
                         file has {file_len})"
                    ))
                })?;
            raw.resize(n, 0);
            file.read_exact_at(&mut raw, at)
                .map_err(|e| err(format!("{name} chunk {i} at byte {at}: {e}")))?;
            let got = codec
                .decompress(&raw, buf)
                .map_err(|e| err(format!("{name} chunk {i}: {e}")))?;
            if got != need {
                return Err(err(format!(
                    "{name} chunk {i} decodes to {got} bytes, {need} expected"
                )));
            }
            for r in buf.chunks_exact_mut(row) {
                if swap {
                    r.chunks_exact_mut(size).for_each(<[u8]>::reverse);
                }
                if horizontal {
                    undo_horizontal(r, size);
                }
            }
            Ok(())
        })
    }
}

/// Where a page's strips or tiles lie in its file, and whether their `size`-byte samples are
/// in the other byte order than the machine's.
struct Stored {
    offsets: Vec<u64>,
    counts: Vec<u64>,
    swap: bool,
}

/// How a page is cut into strips or tiles.
struct ChunkGrid {
    tiled: bool,
    /// A chunk's stored width (a strip's: the page's) and height.
    width: usize,
    height: usize,
    /// Chunks across the page.
    across: usize,
    /// The page's height and width.
    page: (usize, usize),
}

impl ChunkGrid {
    /// The page's strips or tiles, each decoding to at most [`MAX_DECODED`] bytes of
    /// `size`-byte samples (a tile padded to its full size).
    fn of(
        dec: &Dec,
        (path, page): (&Path, usize),
        (h, w): (usize, usize),
        size: usize,
    ) -> Result<ChunkGrid> {
        let tiled = matches!(dec.get_chunk_type(), ChunkType::Tile);
        let (cw, ch) = dec.chunk_dimensions();
        let (cw, ch) = (cw as usize, ch as usize);
        if cw == 0 || ch == 0 {
            return Err(Error::bad_input(
                path,
                format!("page {page}: chunks of 0 pixels"),
            ));
        }
        let width = if tiled { cw } else { w };
        let height = if tiled { ch } else { ch.min(h) };
        let bytes = width.checked_mul(height).and_then(|n| n.checked_mul(size));
        if bytes.is_none_or(|n| n as u64 > MAX_DECODED) {
            return Err(Error::bad_input(
                path,
                format!(
                    "page {page}: {} of {width}x{height} pixels, more than {MAX_DECODED} bytes \
                     decoded",
                    if tiled { "tiles" } else { "strips" }
                ),
            ));
        }
        Ok(ChunkGrid {
            tiled,
            width,
            height: ch,
            across: w.div_ceil(width),
            page: (h, w),
        })
    }

    /// The page's chunk table (tile or strip offsets and byte counts) and byte order.
    fn stored(&self, dec: &mut Dec, (path, page): (&Path, usize), size: usize) -> Result<Stored> {
        let err = |e: tiff::TiffError| Error::bad_input(path, format!("page {page}: {e}"));
        let (offsets, counts) = if self.tiled {
            (Tag::TileOffsets, Tag::TileByteCounts)
        } else {
            (Tag::StripOffsets, Tag::StripByteCounts)
        };
        let big = dec.byte_order() == tiff::tags::ByteOrder::BigEndian;
        Ok(Stored {
            offsets: dec.get_tag_u64_vec(offsets).map_err(err)?,
            counts: dec.get_tag_u64_vec(counts).map_err(err)?,
            swap: size > 1 && big != cfg!(target_endian = "big"),
        })
    }
}

/// The compressions whose chunks chunkwise decodes itself.
enum OwnCodec {
    /// Deflate (zlib-wrapped), by libdeflate.
    Deflate(libdeflater::Decompressor),
    /// TIFF's LZW (MSB first, the early code-size switch), by weezl.
    Lzw,
}

impl OwnCodec {
    fn name(&self) -> &'static str {
        match self {
            OwnCodec::Deflate(_) => "deflate",
            OwnCodec::Lzw => "LZW",
        }
    }

    /// Fills `buf` with the chunk `raw` decodes to; returns how many bytes it wrote. LZW's
    /// output is taken as soon as it holds the chunk's bytes, as libtiff does: tiff 0.11.3
    /// stops on chunks whose end code is still pending when their output is full
    /// (image-rs/image-tiff#395).
    fn decompress(&mut self, raw: &[u8], buf: &mut [u8]) -> std::result::Result<usize, String> {
        match self {
            OwnCodec::Deflate(d) => d.zlib_decompress(raw, buf).map_err(|e| e.to_string()),
            OwnCodec::Lzw => {
                let mut lzw =
                    weezl::decode::Configuration::with_tiff_size_switch(weezl::BitOrder::Msb, 8)
                        .build();
                let (mut read, mut written) = (0, 0);
                while written < buf.len() {
                    let r = lzw.decode_bytes(&raw[read..], &mut buf[written..]);
                    read += r.consumed_in;
                    written += r.consumed_out;
                    match r.status {
                        Ok(weezl::LzwStatus::Ok) if r.consumed_in + r.consumed_out > 0 => {}
                        Ok(_) => break,
                        Err(e) => return Err(e.to_string()),
                    }
                }
                Ok(written)
            }
        }
    }
}

/// Whether the `tiff` crate stopped on an LZW chunk it cannot finish ([`OwnCodec::decompress`]).
fn lzw_pending(e: &tiff::TiffError) -> bool {
    e.to_string().contains("no lzw end code")
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
        let part = Part::of(region, self.dtype);
        let plane = part.rows.len() * part.cols.len() * itemsize;
        let n = to_usize(u64::try_from(region.len()).unwrap_or(u64::MAX), "block")?;
        let mut data = vec![0u8; n * itemsize];
        if plane > 0 {
            let nd = region.ndim();
            let lead = Region::new(region.ranges()[..nd - 2].to_vec());
            let planes = crate::grid::indices_in(lead.ranges());
            // Pages decode in parallel, each worker with a decoder of its own.
            data.par_chunks_mut(plane)
                .zip(planes)
                .try_for_each(|(out, idx)| self.read_plane(&idx, &part, out))?;
        }
        Ok(Box::new(BufferBlock::new(region.clone(), data, itemsize)))
    }

    /// The pages of the block are decoded by the tasks that read it, each page by the first
    /// task needing it (a [`Window`] of [`BlockPages`]): the thread that opens blocks for
    /// `convert` does no decoding, and both cores decode.
    fn gather(&self, region: &Region, parts: &[Region]) -> Result<Box<dyn Gather + '_>> {
        let pages = BlockPages {
            stack: self,
            part: Part::of(region, self.dtype),
        };
        Ok(Box::new(Window::new(pages, region, parts)?))
    }
}

impl TiffStack {
    /// Reads `part` of the plane at `idx` (its index along the axes before y, x).
    fn read_plane(&self, idx: &[u64], part: &Part, out: &mut [u8]) -> Result<()> {
        let lead = &self.shape[..self.shape.len() - 2];
        let flat = idx
            .iter()
            .zip(lead)
            .fold(0usize, |f, (&i, &n)| f * n as usize + i as usize);
        let (f, z) = self.planes[flat];
        match &self.pages {
            Pages::Files(files) => {
                let path = &files[f];
                let mut dec = open_decoder(path)?;
                part.read(&mut dec, path, 0, out)
            }
            Pages::Multi(files) => {
                let PagedFile { path, pool } = &files[f];
                let taken = pool.lock().expect("no decoder user panics").pop();
                let mut dec = match taken {
                    Some(d) => d,
                    None => open_decoder(path)?,
                };
                dec.seek_to_image(z)
                    .map_err(|e| Error::bad_input(path, format!("page {z}: {e}")))?;
                part.read(&mut dec, path, z, out)?;
                pool.lock().expect("no decoder user panics").push(dec);
                Ok(())
            }
        }
    }
}

/// The pages of a block of a [`TiffStack`]: one unit per plane, holding the block's rows and
/// columns of it.
struct BlockPages<'a> {
    stack: &'a TiffStack,
    part: Part,
}

impl Units for BlockPages<'_> {
    fn itemsize(&self) -> usize {
        self.stack.dtype.size()
    }

    fn touching(&self, part: &Region) -> Result<Vec<Range<u64>>> {
        let nd = part.ndim();
        let mut units = part.ranges()[..nd - 2].to_vec();
        units.extend([0..1, 0..1]);
        Ok(units)
    }

    fn unit_region(&self, idx: &[u64]) -> Result<Region> {
        let nd = idx.len();
        let mut r: Vec<Range<u64>> = idx[..nd - 2].iter().map(|&i| i..i + 1).collect();
        r.push(self.part.rows.start as u64..self.part.rows.end as u64);
        r.push(self.part.cols.start as u64..self.part.cols.end as u64);
        Ok(Region::new(r))
    }

    fn decoded_shape(&self, idx: &[u64]) -> Result<Vec<usize>> {
        let mut shape = vec![1; idx.len() - 2];
        shape.extend([self.part.rows.len(), self.part.cols.len()]);
        Ok(shape)
    }

    fn decode(&self, idx: &[u64]) -> Result<Vec<u8>> {
        let p = &self.part;
        let mut out = vec![0u8; p.rows.len() * p.cols.len() * p.dtype.size()];
        self.stack.read_plane(&idx[..idx.len() - 2], p, &mut out)?;
        Ok(out)
    }
}
