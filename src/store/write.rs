//! Writing into an existing array: [`Store::create`] makes an empty one (all fill value) and
//! [`Store::write_region`] writes an n-d array into a region of it (ClearMap's
//! `write(sink, source, slicing)`, numpy's `a[region] = data`).
//!
//! Invariant: every chunk the region touches is replaced by one rename of a complete file
//! (a reader sees the old chunk or the new one, never a torn one); chunks the region covers
//! whole are encoded from the data alone, the others read, modified and rewritten; a chunk that
//! becomes all fill value is removed. The store lock is held throughout (APPEND §6).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use ndarray::{ArrayViewD, ArrayViewMutD, Dimension, IxDyn, Slice};
use rayon::prelude::*;

use super::files::FileWriter;
use super::spec::{Durability, GridCodec, StoreSpec};
use super::txn::{Staging, StoreLock, place, remove_chunk, sync_dir};
use super::writer::sync_written;
use super::{Progress, Store, edit::clean_stale};
use crate::copy::is_fill;
use crate::dtype::{DType, Scalar};
use crate::error::{Error, InputError, Result, StoreError, to_usize};
use crate::grid::{edges_region, indices_in};
use crate::progress::{Tracker, Unit};
use crate::region::{Region, fmt_shape};
use crate::run::{RunOptions, with_threads};

/// What a [`Store::write_region_with`] did.
///
/// ```no_run
/// use chunkwise::{Region, RunOptions, Store};
/// let store = Store::open("volume.zarr")?;
/// let block = ndarray::ArrayD::<u16>::zeros(vec![64, 100, 100]);
/// let r = store.write_region_with(&Region::new(vec![0..64, 0..100, 0..100]), block.view(),
///                                 &RunOptions::default())?;
/// println!("{} of {} chunks written, {} read first, {} removed (all fill value)",
///          r.chunks_written, r.chunks_touched, r.chunks_read, r.chunks_removed);
/// # Ok::<(), chunkwise::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteReport {
    /// Chunks the region touched.
    pub chunks_touched: u64,
    /// Chunks written (encoded and renamed into place).
    pub chunks_written: u64,
    /// Chunks read first, because the region covers only part of them.
    pub chunks_read: u64,
    /// Chunks removed, because they became all fill value.
    pub chunks_removed: u64,
    /// Bytes of chunk files written.
    pub bytes_stored: u64,
}

/// Chunks encoded and staged between two renaming rounds (the staging area holds at most this
/// many new files).
const BATCH: usize = 64;

impl Store {
    /// Creates an empty array at `path` (every chunk is the fill value; none is stored) and
    /// opens it.
    ///
    /// ```no_run
    /// use chunkwise::{DType, Store, StoreSpec};
    /// let spec = StoreSpec::new(vec![512, 1024, 1024], DType::U16, vec![128, 128, 128]);
    /// let store = Store::create("new.zarr", &spec)?;
    /// assert_eq!(store.shape(), &[512, 1024, 1024]);
    /// # Ok::<(), chunkwise::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::OutputExists`]; [`Error::InvalidOption`] for an inconsistent spec; I/O errors.
    pub fn create(path: impl AsRef<Path>, spec: &StoreSpec) -> Result<Store> {
        spec.create(path.as_ref(), false, Durability::Sync)?
            .commit()
    }

    /// Writes `data` into `region` of the array (shapes must be equal: numpy's
    /// `a[region] = data` without broadcasting), with the default [`RunOptions`].
    ///
    /// ```no_run
    /// use chunkwise::{Region, Store};
    /// let store = Store::open("volume.zarr")?;
    /// let block = ndarray::ArrayD::<u16>::from_elem(vec![10, 100, 100], 7);
    /// store.write_region(&Region::new(vec![0..10, 0..100, 0..100]), block.view())?;
    /// # Ok::<(), chunkwise::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Store::write_region_with`].
    pub fn write_region<T: Scalar>(&self, region: &Region, data: ArrayViewD<'_, T>) -> Result<()> {
        self.write_region_with(region, data, &RunOptions::default())
            .map(|_| ())
    }

    /// Writes `data` into `region`: the chunks it covers whole are encoded in parallel from
    /// the data, the ones it covers in part read, modified and rewritten; each chunk is
    /// replaced atomically (temp file + rename) under the store lock. `T` is the array's type
    /// (`u8` holding 0 or 1 for `bool`).
    ///
    /// # Errors
    /// [`Error::BadRegion`] for a region outside the array or data of another shape;
    /// [`crate::InputError::DtypeMismatch`]; [`Error::Locked`] while another writer holds the
    /// array; [`crate::StoreError::ReadOnly`] for a Zarr v2 array; [`Error::Cancelled`] (the
    /// chunks written so far stay written, each whole); codec and I/O errors.
    pub fn write_region_with<T: Scalar>(
        &self,
        region: &Region,
        data: ArrayViewD<'_, T>,
        run: &RunOptions,
    ) -> Result<WriteReport> {
        super::local_only(self.path(), "writing a region")?;
        self.check_write(region, &data, T::DTYPE)?;
        with_threads(run.threads, || self.write_in_pool(region, &data, run))
    }

    fn check_write<T: Scalar>(
        &self,
        region: &Region,
        data: &ArrayViewD<'_, T>,
        t: DType,
    ) -> Result<()> {
        if self.zarr_format() != 3 {
            return Err(Error::Store(StoreError::ReadOnly {
                path: self.path().to_path_buf(),
                reason: "a Zarr v2 array is read-only here; `chunkwise convert` it to v3 first"
                    .into(),
            }));
        }
        let stored = if self.dtype() == DType::Bool {
            DType::U8
        } else {
            self.dtype()
        };
        if t != stored {
            return Err(Error::Input(InputError::DtypeMismatch {
                path: self.path().to_path_buf(),
                stored: self.dtype(),
                requested: t,
            }));
        }
        let full = Region::full(self.shape());
        if region.ndim() != full.ndim() || !full.contains(region) {
            return Err(Error::BadRegion {
                spec: region.to_string(),
                reason: format!("outside the array of shape {}", fmt_shape(self.shape())),
            });
        }
        let want: Vec<usize> = region.shape().iter().map(|&n| n as usize).collect();
        if data.shape() != want.as_slice() {
            return Err(Error::BadRegion {
                spec: region.to_string(),
                reason: format!(
                    "the data has shape {:?}, the region {}",
                    data.shape(),
                    fmt_shape(&region.shape())
                ),
            });
        }
        if self.dtype() == DType::Bool
            && let Some((at, v)) = data
                .indexed_iter()
                .find(|(_, v)| bytemuck::bytes_of(*v)[0] > 1)
        {
            return Err(Error::BadRegion {
                spec: region.to_string(),
                reason: format!(
                    "value {} at {:?} of the data: a bool array holds 0 or 1",
                    bytemuck::bytes_of(v)[0],
                    at.slice()
                ),
            });
        }
        Ok(())
    }

    /// Errs if the array on disk is no longer the one this handle opened (another process
    /// appended to it or replaced it): its chunk grid may no longer be this one's.
    fn check_unchanged(&self) -> Result<()> {
        let now = Store::open(self.path())?;
        if now.metadata_json() == self.metadata_json() {
            return Ok(());
        }
        let what = if now.shape() != self.shape() {
            format!(
                "its shape from {} to {}",
                fmt_shape(self.shape()),
                fmt_shape(now.shape())
            )
        } else {
            "its zarr.json".into()
        };
        Err(Error::Store(StoreError::Changed {
            path: self.path().to_path_buf(),
            what,
        }))
    }

    fn write_in_pool<T: Scalar>(
        &self,
        region: &Region,
        data: &ArrayViewD<'_, T>,
        run: &RunOptions,
    ) -> Result<WriteReport> {
        let _lock = StoreLock::acquire(self.path(), false)?;
        self.check_unchanged()?;
        clean_stale(self.path())?;
        // An uncommitted append's record of finished layers: this write may rewrite a chunk it
        // counted done, so the append's rerun starts over (APPEND §5.1).
        Progress::remove_all(self.path())?;
        let codec = GridCodec::new(&self.metadata_json(), self.path())?;
        let bounds = self.chunk_bounds()?;
        // The chunks touching the region: per axis, those whose bounds overlap it.
        let touching: Vec<std::ops::Range<u64>> = bounds
            .iter()
            .zip(region.ranges())
            .map(|(b, r)| {
                let first = b.partition_point(|&x| x <= r.start).saturating_sub(1) as u64;
                let last = b.partition_point(|&x| x < r.end) as u64;
                first..last.max(first)
            })
            .collect();
        let chunks = if region.is_empty() {
            Vec::new()
        } else {
            indices_in(&touching)
        };
        let fill: T = bytemuck::pod_read_unaligned(&self.fill_bytes()[..T::DTYPE.size()]);
        let tracker = Tracker::new(
            "write",
            Unit::Chunks,
            chunks.len() as u64,
            run.progress.clone(),
        );
        let staging = Staging::new(self.path());
        staging.create()?;
        let counts = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
        let stored = AtomicU64::new(0);
        let result = (|| -> Result<()> {
            for batch in chunks.chunks(BATCH) {
                run.check()?;
                let files = FileWriter::new(staging.dir(), 2 * rayon::current_num_threads(), true);
                let staged: Mutex<Vec<(PathBuf, PathBuf)>> = Mutex::new(Vec::new());
                batch.par_iter().try_for_each(|idx| -> Result<()> {
                    run.check()?;
                    let creg = edges_region(&bounds, idx);
                    let inter = creg.intersect(region).expect("same rank");
                    let cshape: Vec<usize> = codec
                        .chunk_shape(idx)?
                        .iter()
                        .map(|&c| to_usize(c, "chunk"))
                        .collect::<Result<_>>()?;
                    let n: usize = cshape.iter().product();
                    let whole = inter == creg;
                    let mut buf: Vec<T> = if whole {
                        vec![fill; n]
                    } else {
                        counts[1].fetch_add(1, Ordering::Relaxed);
                        match self.read_chunk(idx)? {
                            Some(bytes) => bytemuck::pod_collect_to_vec(&bytes),
                            None => vec![fill; n],
                        }
                    };
                    {
                        let mut dst = ArrayViewMutD::from_shape(IxDyn(&cshape), &mut buf[..])
                            .expect("the buffer holds the chunk shape");
                        let into = |a: usize| {
                            let r = &inter.ranges()[a];
                            let c = &creg.ranges()[a];
                            Slice::from((r.start - c.start) as usize..(r.end - c.start) as usize)
                        };
                        let from = |a: usize| {
                            let r = &inter.ranges()[a];
                            let g = &region.ranges()[a];
                            Slice::from((r.start - g.start) as usize..(r.end - g.start) as usize)
                        };
                        dst.slice_each_axis_inplace(|ax| into(ax.axis.index()));
                        let src = data.slice_each_axis(|ax| from(ax.axis.index()));
                        dst.assign(&src);
                    }
                    let dst = self.path().join(codec.key(idx));
                    if is_fill(bytemuck::cast_slice(&buf), bytemuck::bytes_of(&fill)) {
                        remove_chunk(&dst)?;
                        counts[2].fetch_add(1, Ordering::Relaxed);
                    } else {
                        let encoded = codec.encode(idx, bytemuck::cast_slice(&buf))?;
                        stored.fetch_add(encoded.len() as u64, Ordering::Relaxed);
                        let tmp = staging.path_for(&dst)?;
                        files.write(tmp.clone(), encoded)?;
                        staged
                            .lock()
                            .expect("no panics holding the list")
                            .push((tmp, dst));
                        counts[0].fetch_add(1, Ordering::Relaxed);
                    }
                    tracker.add(1);
                    Ok(())
                })?;
                // Complete (and, with Sync, durable) before it takes its name.
                let written = files.finish()?;
                sync_written(&written, run.durability)?;
                let staged = staged.into_inner().expect("no panics holding the list");
                staged
                    .par_iter()
                    .try_for_each(|(tmp, dst)| place(tmp, dst))?;
                if run.durability == Durability::Sync {
                    let mut dirs: Vec<&Path> =
                        staged.iter().filter_map(|(_, d)| d.parent()).collect();
                    dirs.sort();
                    dirs.dedup();
                    dirs.par_iter().try_for_each(|d| sync_dir(d))?;
                }
            }
            Ok(())
        })();
        staging.remove();
        result?;
        Ok(WriteReport {
            chunks_touched: chunks.len() as u64,
            chunks_written: counts[0].load(Ordering::Relaxed),
            chunks_read: counts[1].load(Ordering::Relaxed),
            chunks_removed: counts[2].load(Ordering::Relaxed),
            bytes_stored: stored.load(Ordering::Relaxed),
        })
    }
}
