//! Carrying out a plan's layers: linking an operand's chunk files, or encoding the joined
//! data, staged and renamed into place (APPEND §4.1), with the progress records of an
//! in-place append. Invariant: every file appears at its key by one rename of a complete file.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rayon::prelude::*;

use super::GrowOptions;
use super::plan::{Act, Operand, Plan};
use crate::copy::{Side, c_strides, copy_box, is_fill};
use crate::error::{Error, IoContext, Result, to_usize};
use crate::grid::indices_in;
use crate::progress::Tracker;
use crate::region::Region;
use crate::store::{
    Edges, FileWriter, GridCodec, Layout, Progress, Remote, Staging, Uploads, crash_point,
    link_chunk, link_or_copy, place, remove_chunk, sync_filesystem, test_delay,
};
use crate::view::View;

// ---------------------------------------------------------------- execution

/// Counts of what [`apply`] did.
#[derive(Default)]
pub(super) struct Done {
    pub(super) linked: AtomicU64,
    pub(super) encoded: AtomicU64,
    pub(super) bytes: AtomicU64,
}

/// What every layer of a join shares: the plan, the operands and their joined data, the
/// result's codec, the settings and the progress tracker.
#[derive(Clone, Copy)]
pub(super) struct Join<'a> {
    pub(super) plan: &'a Plan,
    pub(super) ops: &'a [Operand],
    pub(super) joined: &'a View,
    pub(super) codec: &'a GridCodec,
    pub(super) opts: &'a GrowOptions,
    pub(super) tracker: &'a Tracker,
}

/// Where a join's layers go: the array directory (its layout gives keys), its staging area,
/// whether it is the live array edited in place, and the progress record of an append.
#[derive(Clone, Copy)]
pub(super) struct Target<'a> {
    pub(super) out: &'a Layout,
    pub(super) staging: &'a Staging,
    pub(super) in_place: bool,
    pub(super) checkpoint: Option<&'a Checkpoint>,
    /// An array on object storage: chunks are PUT in place (no staging, no rename) and the
    /// progress record is an object (spec/SCALE.md §6).
    pub(super) remote: Option<&'a RemoteSink>,
    /// A part of an append in parts: only these chunks (APPEND §5.2).
    pub(super) portion: Option<Portion>,
}

/// The chunks of a part: ordinals `chunks.0..chunks.1` counting the chunks of the layers from
/// `first` on, layer by layer, each layer's in C order of the other axes' chunk indices.
#[derive(Debug, Clone, Copy)]
pub(super) struct Portion {
    pub(super) first: u64,
    pub(super) chunks: (u64, u64),
}

impl Portion {
    /// The positions (in C order) of layer `layer`'s chunks in this portion, of `n` a layer.
    pub(super) fn in_layer(&self, layer: u64, n: u64) -> std::ops::Range<u64> {
        let base = layer.saturating_sub(self.first) * n;
        let (a, b) = self.chunks;
        let lo = a.clamp(base, base + n) - base;
        let hi = b.clamp(base, base + n) - base;
        lo..hi.max(lo)
    }
}

/// Uploads to an array on object storage.
pub(super) struct RemoteSink {
    pub(super) remote: std::sync::Arc<Remote>,
    uploads: Uploads<()>,
}

/// Uploads under way at once.
const IN_FLIGHT: usize = 16;

impl RemoteSink {
    pub(super) fn new(remote: std::sync::Arc<Remote>) -> RemoteSink {
        RemoteSink {
            remote,
            uploads: Uploads::new(IN_FLIGHT),
        }
    }

    /// Starts the PUT of `bytes` at `key`, waiting for the oldest upload beyond the bound.
    fn put(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        self.uploads.push(self.remote.put_async(key, bytes), ())?;
        Ok(())
    }

    /// Waits for every upload started so far.
    pub(super) fn flush(&self) -> Result<()> {
        self.uploads.drain()?;
        Ok(())
    }
}

/// Carries out the layers of `plan` selected by `todo` into the array directory of `out`
/// (its layout gives keys), staging new files in `staging`.
pub(super) fn apply(join: &Join<'_>, target: &Target<'_>, todo: &[usize]) -> Result<Done> {
    let Join {
        plan,
        ops,
        joined,
        codec,
        opts,
        tracker,
    } = *join;
    let Target {
        out,
        staging,
        in_place,
        checkpoint,
        remote,
        portion,
    } = *target;
    let axis = opts.axis;
    let shape = out.shape().to_vec();
    let ndim = shape.len();
    let across: Vec<std::ops::Range<u64>> = out
        .edges()
        .iter()
        .zip(&shape)
        .enumerate()
        .map(|(k, (e, &n))| {
            if k == axis {
                0..1
            } else {
                0..e.list(n).len() as u64
            }
        })
        .collect();
    let others = indices_in(&across);
    let done = Done::default();
    let fill = codec.fill_bytes();
    let itemsize = fill.len();
    let budget = opts.run.memory.unwrap_or(256 << 20);
    let files = match remote {
        Some(_) => None,
        None => {
            staging.create()?;
            Some(FileWriter::new(
                staging.dir(),
                2 * rayon::current_num_threads(),
                true,
            ))
        }
    };
    let mut staged: Vec<(PathBuf, PathBuf)> = Vec::new();
    let staged_lock = std::sync::Mutex::new(&mut staged);
    let mut finished: Vec<u64> = Vec::new();
    let mut last = Instant::now();
    for &li in todo {
        opts.run.check()?;
        let layer = &plan.layers[li];
        // This part's chunks of the layer (all of them for one process).
        let sel: &[Vec<u64>] = match portion {
            Some(p) => {
                let r = p.in_layer(li as u64, others.len() as u64);
                &others[r.start as usize..r.end as usize]
            }
            None => &others,
        };
        match layer.act {
            Act::Link { op, layer: j } => {
                let src_layout = ops[op].layout.as_ref().expect("linked operands are stored");
                sel.par_iter().try_for_each(|rest| -> Result<()> {
                    opts.run.check()?;
                    let mut dst_idx = rest.clone();
                    dst_idx[axis] = li as u64;
                    let mut src_idx = rest.clone();
                    src_idx[axis] = j;
                    if let Some(r) = remote {
                        // Server-side copy within the bucket (a store operand on S3).
                        let copied = r.remote.copy_from(
                            src_layout.path(),
                            &src_layout.key(&src_idx),
                            &out.key(&dst_idx),
                        )?;
                        if copied {
                            done.linked.fetch_add(1, Ordering::Relaxed);
                        } else if in_place {
                            r.remote.delete_key(&out.key(&dst_idx))?;
                        }
                        tracker.add(1);
                        return Ok(());
                    }
                    let src = src_layout.chunk_file(&src_idx);
                    let dst = out.chunk_file(&dst_idx);
                    if src.exists() {
                        // (--move also links: the inputs go only after the commit, APPEND §4.5.)
                        let copied = link_chunk(&src, &dst, staging)?;
                        done.bytes.fetch_add(copied, Ordering::Relaxed);
                        done.linked.fetch_add(1, Ordering::Relaxed);
                        crash_point("placing");
                    } else if in_place {
                        remove_chunk(&dst)?;
                    }
                    tracker.add(1);
                    Ok(())
                })?;
            }
            Act::Encode => {
                let total = shape[axis];
                let rows = layer.start..(layer.start + layer.edge).min(total);
                let mut lr: Vec<std::ops::Range<u64>> = shape.iter().map(|&n| 0..n).collect();
                lr[axis] = rows.clone();
                if sel.len() < others.len() {
                    // A part's chunks of the layer: only their bounding box is read.
                    for (k, r) in lr.iter_mut().enumerate().filter(|&(k, _)| k != axis) {
                        let edges = &out.edges()[k];
                        let lo = sel.iter().map(|c| c[k]).min().unwrap_or(0);
                        let hi = sel.iter().map(|c| c[k]).max().unwrap_or(0);
                        let end = if sel.is_empty() {
                            0
                        } else {
                            chunk_start(edges, shape[k], hi + 1).min(shape[k])
                        };
                        *r = chunk_start(edges, shape[k], lo)..end;
                    }
                }
                let layer_region = Region::new(lr);
                let layer_bytes =
                    u64::try_from(layer_region.len()).unwrap_or(u64::MAX) * itemsize as u64;
                // The whole layer at once when it fits the budget (TIFF pages decode once);
                // else chunk by chunk.
                let whole: Option<Vec<u8>> = if layer_bytes <= budget {
                    let mut buf = vec![0u8; to_usize(layer_bytes, "layer")?];
                    joined.read_region_into(&layer_region, &mut buf)?;
                    Some(buf)
                } else {
                    None
                };
                let lshape: Vec<usize> = layer_region.shape().iter().map(|&n| n as usize).collect();
                let lstrides = c_strides(&lshape, itemsize);
                sel.par_iter().try_for_each(|rest| -> Result<()> {
                    opts.run.check()?;
                    let mut idx = rest.clone();
                    idx[axis] = li as u64;
                    let cshape = codec.chunk_shape(&idx)?;
                    let mut creg: Vec<std::ops::Range<u64>> = Vec::with_capacity(ndim);
                    for k in 0..ndim {
                        let s = if k == axis {
                            layer.start
                        } else {
                            chunk_start(&out.edges()[k], shape[k], rest[k])
                        };
                        creg.push(s..(s + cshape[k]).min(shape[k]));
                    }
                    let creg = Region::new(creg);
                    let n = to_usize(cshape.iter().product::<u64>(), "chunk")?;
                    let mut buf: Vec<u8> = fill.repeat(n);
                    let cs: Vec<usize> = cshape.iter().map(|&c| c as usize).collect();
                    let cstrides = c_strides(&cs, itemsize);
                    let extent: Vec<usize> = creg.shape().iter().map(|&e| e as usize).collect();
                    match &whole {
                        Some(data) => {
                            let off: usize = creg
                                .ranges()
                                .iter()
                                .zip(layer_region.ranges())
                                .zip(&lstrides)
                                .map(|((c, l), &s)| (c.start - l.start) as usize * s)
                                .sum();
                            copy_box(
                                data,
                                Side {
                                    offset: off,
                                    strides: &lstrides,
                                },
                                &mut buf,
                                Side {
                                    offset: 0,
                                    strides: &cstrides,
                                },
                                &extent,
                                itemsize,
                                false,
                            );
                        }
                        None => {
                            let mut part = vec![0u8; extent.iter().product::<usize>() * itemsize];
                            joined.read_region_into(&creg, &mut part)?;
                            copy_box(
                                &part,
                                Side {
                                    offset: 0,
                                    strides: &c_strides(&extent, itemsize),
                                },
                                &mut buf,
                                Side {
                                    offset: 0,
                                    strides: &cstrides,
                                },
                                &extent,
                                itemsize,
                                false,
                            );
                        }
                    }
                    if let Some(r) = remote {
                        let key = out.key(&idx);
                        if is_fill(&buf, &fill) {
                            // No object (as zarr-python writes), none left from a killed run.
                            r.remote.delete_key(&key)?;
                        } else {
                            let encoded = codec.encode(&idx, &buf)?;
                            done.bytes
                                .fetch_add(encoded.len() as u64, Ordering::Relaxed);
                            done.encoded.fetch_add(1, Ordering::Relaxed);
                            r.put(&key, encoded)?;
                        }
                        tracker.add(1);
                        test_delay();
                        return Ok(());
                    }
                    let files = files.as_ref().expect("a local target has its files");
                    let dst = out.chunk_file(&idx);
                    if is_fill(&buf, &fill) {
                        // All fill value: no file (as zarr-python writes), none left behind.
                        remove_chunk(&dst)?;
                    } else {
                        let encoded = codec.encode(&idx, &buf)?;
                        done.bytes
                            .fetch_add(encoded.len() as u64, Ordering::Relaxed);
                        done.encoded.fetch_add(1, Ordering::Relaxed);
                        let tmp = staging.path_for(&dst)?;
                        files.write(tmp.clone(), encoded)?;
                        staged_lock
                            .lock()
                            .expect("no panics hold it")
                            .push((tmp, dst));
                    }
                    tracker.add(1);
                    test_delay();
                    Ok(())
                })?;
            }
        }
        if let Some(cp) = checkpoint {
            finished.push(li as u64);
            if last.elapsed() >= cp.every {
                // Every chunk of the finished layers in place, then the record that says so.
                let mut record = cp.record.clone();
                record.layers.extend_from_slice(&finished);
                match (remote, &files) {
                    (Some(r), _) => {
                        r.flush()?;
                        r.remote.put(
                            crate::store::PROGRESS_FILE,
                            serde_json::to_vec(&record).expect("plain JSON"),
                        )?;
                    }
                    (None, Some(files)) => {
                        files.flush()?;
                        let batch =
                            std::mem::take(&mut **staged_lock.lock().expect("no panics hold it"));
                        place_all(&batch)?;
                        if cp.sync {
                            sync_filesystem(&cp.store)?;
                        }
                        record.write(&cp.store, cp.sync)?;
                    }
                    (None, None) => unreachable!("a local target has its files"),
                }
                crash_point("checkpointed");
                last = Instant::now();
            }
        }
    }
    match (remote, files) {
        (Some(r), _) => r.flush()?,
        (None, Some(files)) => {
            drop(files.finish()?);
            place_all(&staged)?;
        }
        (None, None) => {}
    }
    Ok(done)
}

/// `--checkpoint-secs`: a finite number of seconds, 0 or more (default 2).
pub(super) fn checkpoint_secs(opts: &GrowOptions) -> Result<f64> {
    let secs = opts.checkpoint_secs.unwrap_or(2.0);
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(Error::option(
            "checkpoint_secs",
            format!("{secs}: give a number of seconds, 0 or more"),
        ));
    }
    Ok(secs)
}

/// A record of an in-place append's finished layers, written as it goes (APPEND §5.1).
pub(super) struct Checkpoint {
    pub(super) store: PathBuf,
    /// The record so far (the layers a killed run had finished).
    pub(super) record: Progress,
    pub(super) every: std::time::Duration,
    pub(super) sync: bool,
}

/// Renames complete staged chunk files into place (each rename atomic).
pub(super) fn place_all(staged: &[(PathBuf, PathBuf)]) -> Result<()> {
    staged.par_iter().try_for_each(|(tmp, dst)| -> Result<()> {
        place(tmp, dst)?;
        crash_point("placing");
        Ok(())
    })
}

/// Where chunk `i` starts along an axis.
pub(super) fn chunk_start(edges: &Edges, extent: u64, i: u64) -> u64 {
    match edges {
        Edges::Fixed(c) => i * c,
        Edges::Varying(_) => edges.list(extent)[..i as usize].iter().sum(),
    }
}

/// Hard-links every file of the array at `from` into `to` (same relative paths), except
/// chunkwise's own files and `zarr.json`.
pub(super) fn link_tree(from: &Path, to: &Path) -> Result<()> {
    // `to` is private until the exchange: its directories are made as the walk finds them
    // and each chunk is one link(2) (a copy across filesystems), no staging needed.
    let mut dirs = vec![from.to_path_buf()];
    let mut files = Vec::new();
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d).at(&d)? {
            let e = e.at(&d)?;
            let p = e.path();
            let Ok(rel) = p.strip_prefix(from).map(Path::to_path_buf) else {
                continue;
            };
            // chunkwise's own files (lock, journal, staging, at any depth: an image's levels
            // have theirs) all start with `.chunkwise`; the top metadata is written anew.
            if rel == Path::new("zarr.json")
                || e.file_name().to_string_lossy().starts_with(".chunkwise")
            {
                continue;
            }
            let kind = e.file_type().at(&p)?;
            if kind.is_symlink() && p.is_dir() {
                // A link would carry the rewrite into the live directory before the exchange.
                let target = fs::read_link(&p).at(&p)?;
                return Err(Error::option(
                    "store",
                    format!(
                        "{} is a symbolic link to the directory {}: an append rebuilds {} \
                         beside itself from hard links and would write through the link into \
                         the live data; move that directory into place (or append to a copy)",
                        p.display(),
                        target.display(),
                        from.display()
                    ),
                ));
            }
            if kind.is_dir() {
                let made = to.join(&rel);
                fs::create_dir_all(&made).at(&made)?;
                dirs.push(p);
            } else {
                files.push(rel);
            }
        }
    }
    files
        .par_iter()
        .try_for_each(|rel| link_or_copy(&from.join(rel), &to.join(rel)).map(|_| ()))
}
