//! TIFF stacks: a directory (or list) of 2-D single-page TIFFs, or one multi-page TIFF.
//! Invariant: every page has the shape and type of page 0, checked when the stack is opened
//! from the page headers alone; pixel data is decoded one block of pages at a time.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rayon::prelude::*;
use tiff::ColorType;
use tiff::decoder::{Decoder, DecodingResult, Limits};
use tiff::tags::Tag;

use super::{Block, BufferBlock, Source};
use crate::dtype::{DType, Element};
use crate::error::{Error, InputError, IoContext, Result, to_usize};
use crate::fingerprint::{fnv1a, stamp};
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
    let img = dec
        .read_image()
        .map_err(|e| Error::bad_input(path, format!("page {page}: {e}")))?;
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

enum Pages {
    /// One single-page file per plane.
    Files(Vec<PathBuf>),
    /// Planes are the pages of one file; the decoder caches page offsets as it walks.
    Multi {
        path: PathBuf,
        decoder: Box<Mutex<Dec>>,
    },
}

/// A stack of 2-D TIFF pages: shape (pages, height, width).
pub(crate) struct TiffStack {
    pages: Pages,
    shape: Vec<u64>,
    dtype: DType,
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
            pages: Pages::Files(paths),
            dtype,
        })
    }

    /// The pages of one multi-page TIFF.
    pub(crate) fn multipage(path: &Path) -> Result<Self> {
        let mut dec = open_decoder(path)?;
        let first = page_info(&mut dec, path, 0)?;
        let mut n = 1u64;
        while dec.more_images() {
            dec.next_image()
                .map_err(|e| Error::bad_input(path, format!("page {n}: {e}")))?;
            let info = page_info(&mut dec, path, n as usize)?;
            check_same(first, info, path, path, n)?;
            n += 1;
        }
        Ok(TiffStack {
            shape: vec![n, first.0, first.1],
            pages: Pages::Multi {
                path: path.to_path_buf(),
                decoder: Box::new(Mutex::new(dec)),
            },
            dtype: first.2,
        })
    }
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
            Pages::Multi { path, .. } => format!(
                "multi-page TIFF {} ({} {})",
                path.display(),
                fmt_shape(&self.shape),
                self.dtype
            ),
        }
    }

    fn identity(&self) -> String {
        let stamps = match &self.pages {
            Pages::Files(f) => {
                let files: Vec<String> = f.par_iter().map(|p| stamp(p)).collect();
                fnv1a(&files.join("\n"))
            }
            Pages::Multi { path, .. } => stamp(path),
        };
        format!("{}: {stamps}", self.describe())
    }

    fn block(&self, region: &Region) -> Result<Box<dyn Block + '_>> {
        let itemsize = self.dtype.size();
        let r = region.ranges();
        let (h, w) = (self.shape[1] as usize, self.shape[2] as usize);
        let rows = r[1].start as usize..r[1].end as usize;
        let cols = r[2].start as usize..r[2].end as usize;
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
        if plane > 0 {
            match &self.pages {
                Pages::Files(files) => {
                    let z0 = r[0].start as usize;
                    data.par_chunks_mut(plane).enumerate().try_for_each(
                        |(k, out)| -> Result<()> {
                            let path = &files[z0 + k];
                            let mut dec = open_decoder(path)?;
                            let page = decode_page(&mut dec, path, 0, self.dtype)?;
                            crop(&page, out, path, 0)
                        },
                    )?;
                }
                Pages::Multi { path, decoder } => {
                    let mut dec = decoder.lock().expect("no decoder user panics");
                    for (k, z) in r[0].clone().enumerate() {
                        let z = z as usize;
                        dec.seek_to_image(z)
                            .map_err(|e| Error::bad_input(path, format!("page {z}: {e}")))?;
                        let page = decode_page(&mut dec, path, z, self.dtype)?;
                        crop(&page, &mut data[k * plane..(k + 1) * plane], path, z)?;
                    }
                }
            }
        }
        Ok(Box::new(BufferBlock::new(region.clone(), data, itemsize)))
    }
}
