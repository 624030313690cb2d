//! `export`: a region of an array to an .npy (or raw) file, streaming block by block.
//! Invariant: the output appears under its name only when complete (written to a unique
//! temporary name, synced, renamed); memory is one block, never the region.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::copy::c_strides;
use crate::dtype::DType;
use crate::error::{Error, IoContext, Result, to_usize};
use crate::grid::indices_in;
use crate::input::Input;
use crate::npy::header_bytes;
use crate::progress::{Tracker, Unit};
use crate::region::{ParsedRegion, Region};
use crate::run::with_threads;
use crate::run::{RunOptions, run_setters};
use crate::store::OutputFile;

/// Settings for [`export`].
///
/// ```no_run
/// use chunkwise::{ExportOptions, Input};
/// let opts = ExportOptions::default()
///     .region(Some("100:200, :, :".into()))
///     .raw(true)
///     .overwrite(true);
/// chunkwise::export(&Input::open("volume.zarr")?, "crop.raw".as_ref(), &opts)?;
/// # Ok::<(), chunkwise::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct ExportOptions {
    region: Option<String>,
    raw: bool,
    overwrite: bool,
    run: RunOptions,
}

impl std::fmt::Debug for ExportOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportOptions")
            .field("run", &self.run)
            .field("region", &self.region)
            .field("raw", &self.raw)
            .field("overwrite", &self.overwrite)
            .finish_non_exhaustive()
    }
}

impl ExportOptions {
    /// The region in numpy slice syntax (`0:10,:,5:`); default: the whole array.
    pub fn region(mut self, spec: Option<String>) -> Self {
        self.region = spec;
        self
    }
    /// Writes raw bytes (little-endian, C order) instead of .npy.
    pub fn raw(mut self, on: bool) -> Self {
        self.raw = on;
        self
    }
    /// Replaces an existing output file.
    pub fn overwrite(mut self, on: bool) -> Self {
        self.overwrite = on;
        self
    }
}

run_setters!(ExportOptions);

/// What an export wrote.
///
/// ```no_run
/// use chunkwise::{ExportOptions, Input};
/// let r = chunkwise::export(&Input::open("volume.zarr")?, "plane.npy".as_ref(),
///                           &ExportOptions::default().region(Some("256,:,:".into())))?;
/// assert_eq!(r.shape.len(), r.region.ndim() - 1); // the integer-indexed axis is dropped
/// println!("{} {} ({} bytes) in {:.1} s", r.region, r.dtype, r.bytes, r.seconds);
/// # Ok::<(), chunkwise::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ExportReport {
    /// The output file.
    pub path: PathBuf,
    /// The region exported.
    pub region: Region,
    /// The shape written (integer-indexed axes dropped, as numpy does).
    pub shape: Vec<u64>,
    /// Element type.
    pub dtype: DType,
    /// Bytes written (header included).
    pub bytes: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Writes a region of the array at `store` to `out` (.npy, or raw with [`ExportOptions::raw`]).
///
/// ```no_run
/// use chunkwise::{ExportOptions, Input};
/// chunkwise::export(&Input::open("volume.zarr")?, "plane.npy".as_ref(),
///                   &ExportOptions::default().region(Some("256,:,:".into())))?;
/// # Ok::<(), chunkwise::Error>(())
/// ```
///
/// # Errors
/// [`crate::Error::BadRegion`], [`crate::Error::OutputExists`], [`crate::StoreError::CorruptChunk`] naming the chunk,
/// [`crate::Error::Io`]; no file appears at `out` on error.
pub fn export(input: &Input, out: &Path, opts: &ExportOptions) -> Result<ExportReport> {
    with_threads(opts.run.threads, || export_in_pool(input, out, opts))
}

fn export_in_pool(store: &Input, out: &Path, opts: &ExportOptions) -> Result<ExportReport> {
    let start = Instant::now();
    let parsed = match &opts.region {
        Some(spec) => Region::parse(spec, store.shape())?,
        None => ParsedRegion {
            region: Region::full(store.shape()),
            dropped: Vec::new(),
        },
    };
    let region = parsed.region.clone();
    let shape = parsed.output_shape();
    let dtype = store.dtype();
    let itemsize = dtype.size();
    let header = if opts.raw {
        Vec::new()
    } else {
        header_bytes(dtype, &shape)
    };
    let data_len = u64::try_from(region.len()).unwrap_or(u64::MAX) * itemsize as u64;
    // A unique temporary file, published whole: a concurrent export of the same name never
    // writes into this one (and an unpublished one is removed on error).
    let file = OutputFile::create(out, opts.overwrite)?;
    let tmp = file.tmp_path().to_path_buf();
    file.file().write_all_at(&header, 0).at(&tmp)?;
    file.file()
        .set_len(header.len() as u64 + data_len)
        .at(&tmp)?;
    write_region(store, &region, file.file(), &tmp, header.len() as u64, opts)?;
    file.publish(true)?;
    Ok(ExportReport {
        path: out.to_path_buf(),
        region,
        shape,
        dtype,
        bytes: header.len() as u64 + data_len,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Streams `region` into `file` at `base`, in C order, one block at a time.
fn write_region(
    store: &Input,
    region: &Region,
    file: &File,
    path: &Path,
    base: u64,
    opts: &ExportOptions,
) -> Result<()> {
    let itemsize = store.dtype().size();
    let total = u64::try_from(region.len()).unwrap_or(u64::MAX) * itemsize as u64;
    let tracker = Tracker::new("export", Unit::Bytes, total, opts.run.progress.clone());
    if region.is_empty() {
        return Ok(());
    }
    let grid = store.block_grid();
    let chunk_box = grid.chunks_touching(region);
    let axes: Vec<usize> = (0..region.ndim()).collect();
    let budget = opts.run.memory.unwrap_or(crate::run::DEFAULT_MEMORY);
    let rshape: Vec<u64> = region.shape();
    let rstrides = c_strides(
        &rshape.iter().map(|&n| n as usize).collect::<Vec<_>>(),
        itemsize,
    );
    // Blocks of half the budget: one decoding (all cores) while the one before is written.
    let blocks = grid.blocks(&chunk_box, &axes, itemsize, budget / 2);
    std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(Region, Vec<u8>)>(0);
        let writer = scope.spawn(move || -> Result<()> {
            for (block, buf) in rx {
                write_block(
                    file,
                    path,
                    (base, itemsize),
                    region,
                    &rstrides,
                    &block,
                    &buf,
                )?;
                tracker.add(buf.len() as u64);
            }
            Ok(())
        });
        let read = (|| -> Result<()> {
            for b in blocks {
                opts.run.check()?;
                let block = grid
                    .box_region(&b)
                    .intersect(region)
                    .expect("same rank as the region");
                let n = to_usize(u64::try_from(block.len()).unwrap_or(u64::MAX), "block")?;
                let mut buf = vec![0u8; n * itemsize];
                store.read_region_into(&block, &mut buf)?;
                if tx.send((block, buf)).is_err() {
                    // The writer stopped: its error is the one to give (below).
                    break;
                }
            }
            Ok(())
        })();
        drop(tx);
        let written = writer
            .join()
            .map_err(|_| Error::Internal("the export's writer thread panicked".into()))?;
        read.and(written)
    })
}

/// Writes `buf`, the data of `block` (inside `region`), where it goes in the C-order output
/// of `region` (byte strides `rstrides`, elements of `itemsize`) that starts at byte `base`
/// of `file`.
fn write_block(
    file: &File,
    path: &Path,
    (base, itemsize): (u64, usize),
    region: &Region,
    rstrides: &[usize],
    block: &Region,
    buf: &[u8],
) -> Result<()> {
    let rshape = region.shape();
    // The block is contiguous in the output from the first axis it does not span fully.
    let bshape = block.shape();
    let a = (0..bshape.len())
        .rev()
        .find(|&j| bshape[j] != rshape[j])
        .unwrap_or(0);
    let run: usize = bshape[a..].iter().map(|&n| n as usize).product::<usize>() * itemsize;
    let outer: Vec<_> = block.ranges()[..a].to_vec();
    for (k, idx) in indices_in(&outer).into_iter().enumerate() {
        let mut off = 0usize;
        for (j, &i) in idx.iter().enumerate() {
            off += (i - region.ranges()[j].start) as usize * rstrides[j];
        }
        for ((b, r), &s) in block.ranges()[a..]
            .iter()
            .zip(&region.ranges()[a..])
            .zip(&rstrides[a..])
        {
            off += (b.start - r.start) as usize * s;
        }
        file.write_all_at(&buf[k * run..(k + 1) * run], base + off as u64)
            .at(path)?;
    }
    Ok(())
}
