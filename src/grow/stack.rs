//! `stack`: arrays of one shape along a new leading axis, every chunk linked (APPEND §3.4).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rayon::prelude::*;
use serde_json::{Value, json};

use super::commit::{finish_build, grid_name, moving_list, remove_moved};
use super::plan::{check_compatible, grid_count};
use super::{Begin, GrowOptions, GrowReport, begin_new_output};
use crate::error::{Error, GrowError, Incompatibility, Result};
use crate::grid::indices_in;
use crate::progress::{Tracker, Unit};
use crate::region::check_shapes;
use crate::run::with_threads;
use crate::store::{
    BuildDir, Edges, Layout, Staging, StoreLock, TMP_SUFFIX, link_chunk, resolve_links,
};

/// Stacks the stores `inputs` (same shape, type, codecs and chunking) along a new leading axis
/// into a new array at `out`, chunk size 1 along it; every chunk is linked (APPEND §3.4).
///
/// ```no_run
/// chunkwise::stack(&["t0.zarr".into(), "t1.zarr".into()], "series.zarr".as_ref(),
///                  &chunkwise::GrowOptions::default())?;
/// # Ok::<(), chunkwise::Error>(())
/// ```
///
/// # Errors
/// As [`concat()`](super::concat()); [`crate::GrowError::Incompatible`] also for a shape or
/// a codec that cannot gain an axis.
pub fn stack(inputs: &[PathBuf], out: &Path, opts: &GrowOptions) -> Result<GrowReport> {
    super::no_parts(opts, "stack")?;
    for p in inputs.iter().map(PathBuf::as_path).chain([out]) {
        crate::store::local_only(p, "stack")?;
    }
    with_threads(opts.run.threads, || {
        let start = Instant::now();
        let out = &resolve_links(out)?;
        let (fp, _replacing) = match begin_new_output("stack", inputs, out, opts, start)? {
            Begin::Done(done) => return Ok(done),
            Begin::Go(fp, lock) => (fp, lock),
        };
        let first = Layout::read(&inputs[0])?;
        let mut locks = Vec::new();
        let mut layouts = Vec::new();
        for p in inputs {
            locks.push(StoreLock::acquire_shared(p, opts.wait)?);
            let l = Layout::read(p)?;
            check_compatible(&first, &l, None)?;
            check_shapes(first.path(), first.shape(), p, l.shape(), None)?;
            layouts.push(l);
        }
        let meta = stacked_metadata(&first, inputs.len() as u64)?;
        let build = BuildDir::begin(out, TMP_SUFFIX)?;
        let tmp = build.path().to_path_buf();
        let out_layout = Layout::from_json(&tmp, meta.clone())?;
        let staging = Staging::new(&tmp);
        staging.create()?;
        let tracker = Tracker::new(
            "stack",
            Unit::Chunks,
            layouts
                .iter()
                .map(|l| grid_count(l.edges(), l.shape()))
                .sum(),
            opts.run.progress.clone(),
        );
        let copied = AtomicU64::new(0);
        let linked = AtomicU64::new(0);
        for (k, l) in layouts.iter().enumerate() {
            let boxed: Vec<_> = l
                .edges()
                .iter()
                .zip(l.shape())
                .map(|(e, &n)| 0..e.list(n).len() as u64)
                .collect();
            indices_in(&boxed)
                .par_iter()
                .try_for_each(|idx| -> Result<()> {
                    opts.run.check()?;
                    let src = l.chunk_file(idx);
                    if src.exists() {
                        let mut o = vec![k as u64];
                        o.extend_from_slice(idx);
                        copied.fetch_add(
                            link_chunk(&src, &out_layout.chunk_file(&o), &staging)?,
                            Ordering::Relaxed,
                        );
                        linked.fetch_add(1, Ordering::Relaxed);
                    }
                    tracker.add(1);
                    Ok(())
                })?;
        }
        staging.remove();
        let meta_bytes = finish_build(build, out, &meta, &fp, opts, moving_list(opts, inputs))?;
        drop(locks);
        let mut r = GrowReport {
            path: out.to_path_buf(),
            old_shape: None,
            shape: out_layout.shape().to_vec(),
            grid: grid_name(&meta),
            chunks_linked: linked.into_inner(),
            chunks_encoded: 0,
            layers_reencoded: 0,
            layers_resumed: 0,
            bytes_written: copied.into_inner() + meta_bytes,
            exchanged: false,
            already_done: false,
            warnings: Vec::new(),
            parts_waiting: None,
            levels: Vec::new(),
            seconds: start.elapsed().as_secs_f64(),
        };
        if opts.move_inputs {
            remove_moved(inputs, &mut r);
        }
        Ok(r)
    })
}

// ---------------------------------------------------------------- stack metadata

/// The first input's metadata with a new leading axis of chunk 1: codecs that name axes gain
/// one (sharding's inner chunk shape, transpose's order); others are unchanged, and a chunk
/// file encoded at shape S is the same bytes at shape [1, S...].
pub(super) fn stacked_metadata(first: &Layout, n: u64) -> Result<Value> {
    let mut shape = vec![n];
    shape.extend_from_slice(first.shape());
    let mut edges = vec![Edges::Fixed(1)];
    edges.extend(first.edges().iter().cloned());
    let mut meta = first.metadata_with(&shape, &edges);
    crate::store::check_grid_size(first.path(), &meta)?;
    let codecs = meta["codecs"].clone();
    meta["codecs"] = lift_codecs(&codecs, first.path())?;
    if let Some(names) = meta
        .get("dimension_names")
        .filter(|v| !v.is_null())
        .cloned()
    {
        let mut v = vec![Value::Null];
        v.extend(names.as_array().cloned().unwrap_or_default());
        meta["dimension_names"] = Value::Array(v);
    }
    Ok(meta)
}

pub(super) fn lift_codecs(codecs: &Value, path: &Path) -> Result<Value> {
    let list = codecs.as_array().cloned().unwrap_or_default();
    let mut out = Vec::new();
    for c in list {
        let name = c["name"].as_str().unwrap_or("").to_string();
        let mut c = c.clone();
        match name.as_str() {
            "bytes" | "zstd" | "blosc" | "gzip" | "crc32c" => {}
            "sharding_indexed" => {
                let cfg = &mut c["configuration"];
                let mut inner = vec![json!(1)];
                inner.extend(cfg["chunk_shape"].as_array().cloned().unwrap_or_default());
                cfg["chunk_shape"] = Value::Array(inner);
                let codecs = cfg["codecs"].clone();
                cfg["codecs"] = lift_codecs(&codecs, path)?;
                let index = cfg["index_codecs"].clone();
                cfg["index_codecs"] = lift_codecs(&index, path)?;
            }
            "transpose" => {
                let order: Vec<u64> = c["configuration"]["order"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_u64).collect())
                    .unwrap_or_default();
                let mut lifted = vec![0];
                lifted.extend(order.iter().map(|o| o + 1));
                c["configuration"]["order"] = json!(lifted);
            }
            other => {
                return Err(Error::Grow(GrowError::Incompatible(Box::new(
                    Incompatibility {
                        left_path: path.to_path_buf(),
                        right_path: path.to_path_buf(),
                        field: "codecs".into(),
                        left: format!("{other:?}"),
                        right: "a codec that can gain an axis".into(),
                    },
                ))));
            }
        }
        out.push(c);
    }
    Ok(Value::Array(out))
}
