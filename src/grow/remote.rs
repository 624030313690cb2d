//! Growing arrays on object storage (`s3://`, spec/SCALE.md §6, APPEND §5.3): `append` in
//! place and `concat -o`, with the chunks of stored operands copied server-side (no bytes
//! through this machine) instead of hard-linked, and everything else encoded.
//!
//! There is no rename on S3, so the protocol is §4.1's without staging: new chunks (past the
//! old extent, invisible to the old `zarr.json`) and the re-encoded edge layer (a full-length
//! chunk, valid under the old and the new metadata) are PUT in place, the progress record and
//! the journal are objects, and the commit is the PUT of `zarr.json`. A new output (`concat -o`)
//! gets its `zarr.json` last, as `convert` writes one. Invariant: a reader of the old
//! `zarr.json` reads the old array until the new `zarr.json` lands, and the new one after.
//! There are no locks on S3: two writers of one array at once are the user's to avoid.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::apply::{Checkpoint, Join, RemoteSink, Target, apply, checkpoint_secs};
use super::commit::{fingerprint, grid_name};
use super::plan::{
    Act, Operand, check_axis, choose_plan, fresh_operand, grid_count, shape_of, stored_operand,
    stored_reencoded, target_operand,
};
use super::{GridLayout, GrowOptions, GrowReport};
use crate::error::{Error, Result, StoreError};
use crate::fingerprint::fnv1a;
use crate::input::Input;
use crate::progress::{Tracker, Unit};
use crate::store::{
    Edges, GridCodec, Journal, Layout, PROGRESS_FILE, Progress, Remote, Staging, Store,
    crash_point, is_url,
};
use crate::view::View;

const JOURNAL: &str = ".chunkwise-journal.json";

/// What object storage cannot do yet (or without locks), refused before anything is written.
fn refuse(url: &Path, what: &str) -> Error {
    Error::Store(StoreError::Remote {
        url: url.to_string_lossy().into_owned(),
        reason: format!(
            "{what} is not supported yet: write to a local path, then `chunkwise convert LOCAL \
             -o s3://...`"
        ),
    })
}

/// The array's grid must stay regular on S3 (rectilinear grids are not written there).
fn check_regular(target: &Layout, opts: &GrowOptions) -> Result<()> {
    if opts.layout == GridLayout::Rectilinear
        || target.edges().iter().any(|e| !matches!(e, Edges::Fixed(_)))
    {
        return Err(refuse(
            target.path(),
            "a rectilinear chunk grid on object storage",
        ));
    }
    Ok(())
}

fn read_json<T: serde::de::DeserializeOwned>(r: &Remote, key: &str) -> Result<Option<T>> {
    Ok(r.get(key)?.and_then(|b| serde_json::from_slice(&b).ok()))
}

/// The stamps of the stores joined (their metadata and object listing, or files' stamps).
fn stamps(paths: &[PathBuf]) -> Result<Vec<String>> {
    paths.iter().map(|p| Store::open(p)?.stamp()).collect()
}

/// Stores on S3 are joined by server-side copies, local ones by reading them.
fn operand(p: &Path, base: &Layout, opts: &GrowOptions, strict: bool) -> Result<Operand> {
    if is_url(p) {
        stored_operand(p, base, opts, strict)
    } else {
        fresh_operand(&Input::open(p)?, base, opts)
    }
}

/// The commit on object storage: the journal (`from` is empty for a new array), then the
/// `zarr.json` PUT that makes the edit appear. Returns the bytes of both.
fn commit(
    remote: &Remote,
    fingerprint: String,
    from: Vec<u64>,
    to: Vec<u64>,
    meta: &serde_json::Value,
) -> Result<u64> {
    let journal = Journal {
        fingerprint,
        from,
        to,
        moving: Vec::new(),
    };
    let jtext = serde_json::to_string_pretty(&journal).expect("plain JSON");
    let mtext = serde_json::to_string_pretty(meta).expect("plain JSON");
    let bytes = (jtext.len() + mtext.len()) as u64;
    remote.put(JOURNAL, jtext.into_bytes())?;
    crash_point("journaled");
    remote.put("zarr.json", mtext.into_bytes())?;
    crash_point("committed");
    Ok(bytes)
}

/// `append` onto the array at the `s3://` URL `url` (APPEND §5.3).
pub(super) fn append(url: &Path, inputs: &[Input], opts: &GrowOptions) -> Result<GrowReport> {
    let start = Instant::now();
    if inputs.is_empty() {
        return Err(Error::option("input", "nothing to append"));
    }
    if opts.partition.is_some() {
        return Err(Error::option(
            "partition",
            format!(
                "{}: an append on object storage runs in one process (there are no locks there \
                 for parts to agree on its commit)",
                url.display()
            ),
        ));
    }
    checkpoint_secs(opts)?;
    let remote = Arc::new(Remote::open(&url.to_string_lossy())?);
    let target = Layout::read(url)?;
    let url = target.path().to_path_buf();
    check_axis(&target, opts.axis)?;
    check_regular(&target, opts)?;
    let mut ops = vec![target_operand(&target)?];
    let mut lines = Vec::new();
    for input in inputs {
        match input.store() {
            Some(s) if is_url(s.path()) => {
                ops.push(stored_operand(s.path(), &target, opts, false)?);
            }
            _ => ops.push(fresh_operand(input, &target, opts)?),
        }
        lines.push(input.identity().to_string());
    }
    let fp = fingerprint("append", opts, Some(&url), &lines);
    let axis = opts.axis;
    ops[0].extent = target.shape()[axis];
    let old_shape = target.shape().to_vec();
    let shape = shape_of(&ops, axis);
    if !opts.again
        && let Some(j) = read_json::<Journal>(&remote, JOURNAL)?
        && j.fingerprint == fp
        && j.to == old_shape
        && j.from != j.to
    {
        remote.delete_key(PROGRESS_FILE)?;
        return Ok(GrowReport::unchanged(
            &url,
            Some(j.from),
            j.to,
            target.meta(),
            true,
            start,
        ));
    }
    if shape == old_shape {
        return Ok(GrowReport::unchanged(
            &url,
            Some(old_shape),
            shape,
            target.meta(),
            false,
            start,
        ));
    }
    let opts_regular = opts.clone().layout(GridLayout::Regular);
    let plan = choose_plan(&ops, &target, &opts_regular)?;
    let mut edges = target.edges().to_vec();
    edges[axis] = plan.axis_edges.clone();
    let meta = target.metadata_with(&shape, &edges);
    crate::store::check_grid_size(&url, &meta)?;
    let codec = GridCodec::new(&meta, &url)?;
    let mut todo: Vec<usize> = (0..plan.layers.len())
        .filter(|&l| {
            plan.layers[l].act
                != Act::Link {
                    op: 0,
                    layer: l as u64,
                }
        })
        .collect();
    let layers_reencoded = stored_reencoded(
        &super::plan::Plan {
            layers: todo.iter().map(|&l| plan.layers[l].clone()).collect(),
            axis_edges: plan.axis_edges.clone(),
        },
        &ops,
    );
    // The progress record of a killed append (APPEND §5.1): this command's is resumed;
    // another's chunks past the extent are removed (they would count as stored).
    let target_meta = fnv1a(&target.meta().to_string());
    let record: Option<Progress> = read_json(&remote, PROGRESS_FILE)?;
    let ours = |p: &Progress| {
        p.fingerprint == fp && p.target_meta == target_meta && p.from == old_shape && p.to == shape
    };
    let before: Vec<u64> = match &record {
        Some(p) if ours(p) => p.layers.clone(),
        Some(_) => {
            for (key, _, _) in remote.list()? {
                if target.outside_grid(&key) {
                    remote.delete_key(&key)?;
                }
            }
            Vec::new()
        }
        None => Vec::new(),
    };
    let n = todo.len();
    todo.retain(|&l| !before.contains(&(l as u64)));
    let layers_resumed = (n - todo.len()) as u64;
    let record = Progress {
        fingerprint: fp.clone(),
        target_meta,
        from: old_shape.clone(),
        to: shape.clone(),
        layers: before,
        part: None,
    };
    // The record exists before any chunk is placed past the extent.
    remote.put(
        PROGRESS_FILE,
        serde_json::to_vec(&record).expect("plain JSON"),
    )?;
    let checkpoint = Checkpoint {
        store: url.clone(),
        record,
        every: std::time::Duration::from_secs_f64(checkpoint_secs(opts)?.min(1e9)),
        sync: false,
    };
    let joined = View::concat(ops.iter().map(|o| o.view.clone()).collect(), axis)?;
    let per_layer = grid_count(&edges, &shape) / plan.layers.len().max(1) as u64;
    let tracker = Tracker::new(
        "append",
        Unit::Chunks,
        per_layer * todo.len() as u64,
        opts.run.progress.clone(),
    );
    let out = Layout::from_json(&url, meta.clone())?;
    let sink = RemoteSink::new(remote.clone());
    let done = apply(
        &Join {
            plan: &plan,
            ops: &ops,
            joined: &joined,
            codec: &codec,
            opts,
            tracker: &tracker,
        },
        &Target {
            out: &out,
            staging: &Staging::new(&url),
            in_place: true,
            checkpoint: Some(&checkpoint),
            remote: Some(&sink),
            portion: None,
        },
        &todo,
    )?;
    crash_point("staged");
    let meta_bytes = commit(&remote, fp, old_shape.clone(), shape.clone(), &meta)?;
    let mut warnings = Vec::new();
    if let Err(e) = remote.delete_key(PROGRESS_FILE) {
        warnings.push(format!("committed, but the progress record stays: {e}"));
    }
    Ok(GrowReport {
        path: url,
        old_shape: Some(old_shape),
        shape,
        grid: grid_name(&meta),
        chunks_linked: done.linked.into_inner(),
        chunks_encoded: done.encoded.into_inner(),
        layers_reencoded,
        layers_resumed,
        bytes_written: done.bytes.into_inner() + meta_bytes,
        exchanged: false,
        already_done: false,
        warnings,
        parts_waiting: None,
        levels: Vec::new(),
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// `concat A B... -o s3://...` (APPEND §5.3): a new array on object storage, its stored
/// operands' chunks copied server-side where they fit its grid, the rest encoded; `zarr.json`
/// last.
pub(super) fn concat(inputs: &[PathBuf], out: &Path, opts: &GrowOptions) -> Result<GrowReport> {
    let start = Instant::now();
    if opts.move_inputs {
        return Err(refuse(out, "--move on object storage"));
    }
    if inputs.len() < 2 {
        return Err(Error::option("input", "concat needs two or more stores"));
    }
    for p in inputs {
        if !is_url(p) && !crate::store::is_store(p) {
            return Err(Error::Store(StoreError::NotAStore(p.clone())));
        }
    }
    let remote = Arc::new(Remote::open(&out.to_string_lossy())?);
    let url = PathBuf::from(remote.url());
    if inputs
        .iter()
        .any(|p| p.to_string_lossy().trim_end_matches('/') == remote.url())
    {
        return Err(Error::option(
            "output",
            format!("{} is one of the inputs", url.display()),
        ));
    }
    let first = Layout::read(&inputs[0])?;
    check_axis(&first, opts.axis)?;
    check_regular(&first, opts)?;
    let fp = fingerprint("concat", opts, None, &stamps(inputs)?);
    if let Some(z) = remote.get("zarr.json")? {
        let same = read_json::<Journal>(&remote, JOURNAL)?
            .is_some_and(|j| j.fingerprint == fp && j.from.is_empty());
        if same && !opts.overwrite && !opts.again {
            let meta: serde_json::Value = serde_json::from_slice(&z).unwrap_or_default();
            let shape: Vec<u64> = meta["shape"]
                .as_array()
                .map(|a| a.iter().filter_map(serde_json::Value::as_u64).collect())
                .unwrap_or_default();
            return Ok(GrowReport::unchanged(&url, None, shape, &meta, true, start));
        }
        if !opts.overwrite {
            return Err(Error::OutputExists(url));
        }
        // Not atomic (SCALE §6): zarr.json first, then every other object.
        remote.delete_key("zarr.json")?;
        remote.delete_all()?;
    } else if !remote.list()?.is_empty() {
        // A killed concat's chunks (no zarr.json yet): not an array, ours to replace.
        remote.delete_all()?;
    }
    let axis = opts.axis;
    let mut ops = Vec::new();
    for p in inputs {
        let mut o = operand(p, &first, opts, false)?;
        o.extent = o.view.shape()[axis];
        ops.push(o);
    }
    let shape = shape_of(&ops, axis);
    let opts_regular = opts.clone().layout(GridLayout::Regular);
    let plan = choose_plan(&ops, &first, &opts_regular)?;
    let mut edges = first.edges().to_vec();
    edges[axis] = plan.axis_edges.clone();
    let meta = first.metadata_with(&shape, &edges);
    crate::store::check_grid_size(&url, &meta)?;
    let codec = GridCodec::new(&meta, &url)?;
    let out_layout = Layout::from_json(&url, meta.clone())?;
    let joined = View::concat(ops.iter().map(|o| o.view.clone()).collect(), axis)?;
    let todo: Vec<usize> = (0..plan.layers.len()).collect();
    let tracker = Tracker::new(
        "concat",
        Unit::Chunks,
        grid_count(&edges, &shape),
        opts.run.progress.clone(),
    );
    let sink = RemoteSink::new(remote.clone());
    let done = apply(
        &Join {
            plan: &plan,
            ops: &ops,
            joined: &joined,
            codec: &codec,
            opts,
            tracker: &tracker,
        },
        &Target {
            out: &out_layout,
            staging: &Staging::new(&url),
            in_place: false,
            checkpoint: None,
            remote: Some(&sink),
            portion: None,
        },
        &todo,
    )?;
    crash_point("staged");
    let meta_bytes = commit(&remote, fp, Vec::new(), shape.clone(), &meta)?;
    Ok(GrowReport {
        path: url,
        old_shape: None,
        shape,
        grid: grid_name(&meta),
        chunks_linked: done.linked.into_inner(),
        chunks_encoded: done.encoded.into_inner(),
        layers_reencoded: stored_reencoded(&plan, &ops),
        layers_resumed: 0,
        bytes_written: done.bytes.into_inner() + meta_bytes,
        exchanged: false,
        already_done: false,
        warnings: Vec::new(),
        parts_waiting: None,
        levels: Vec::new(),
        seconds: start.elapsed().as_secs_f64(),
    })
}
