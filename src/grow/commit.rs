//! Committing an edit: the fingerprint and journal that make a rerun "already done", the
//! in-place commit or directory exchange, new outputs published whole, and `--move`
//! (APPEND §4-§5). Invariant: until the commit the old array is intact.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::Value;

use super::apply::{Checkpoint, Done, Join, Target, apply, checkpoint_secs, link_tree};
use super::parts::{self, Ended, Ident, Opened};
use super::plan::{Act, Operand, Plan, choose_plan, grid_count, shape_of, stored_reencoded};
use super::{GrowOptions, GrowReport};
use crate::error::{Error, IoContext, Result};
use crate::fingerprint::{fnv1a, stamp};
use crate::progress::{Tracker, Unit};
use crate::store::{
    BuildDir, Durability, GridCodec, Journal, Layout, Moving, NEW_SUFFIX, Progress, Staging,
    TMP_SUFFIX, commit_metadata, crash_point, is_store, remove_chunk, swap_in, sync_dir,
    sync_filesystem, write_metadata,
};
use crate::view::View;

// ---------------------------------------------------------------- fingerprints and journals

/// What an edit is: the operation and its settings, the target, and one line per input saying
/// what it is now ([`crate::Input`]'s identity, or a store's stamp).
pub(super) fn fingerprint(
    op: &str,
    o: &GrowOptions,
    target: Option<&Path>,
    inputs: &[String],
) -> String {
    let mut text = format!(
        "chunkwise {op} v3\naxis {} layout {:?} cast {}\n",
        o.axis, o.layout, o.cast
    );
    if let Some(t) = target {
        let c = t.canonicalize().unwrap_or_else(|_| t.to_path_buf());
        text.push_str(&format!("into {}\n", c.display()));
    }
    for line in inputs {
        text.push_str(line);
        text.push('\n');
    }
    fnv1a(&text)
}

/// The stamps of stores given by path (the fingerprint lines of a join).
pub(super) fn stamps(paths: &[PathBuf]) -> Vec<String> {
    paths.iter().map(|p| stamp(p)).collect()
}

pub(super) fn already_done(
    target: &Layout,
    fp: &str,
    opts: &GrowOptions,
    start: Instant,
) -> Result<Option<GrowReport>> {
    if opts.again {
        return Ok(None);
    }
    let Some(j) = Journal::read(target.path()) else {
        return Ok(None);
    };
    if j.fingerprint == fp && j.to == target.shape() && j.from != j.to {
        // A run killed after its commit may have left its progress records (and a part its
        // lock); the parts of another append may be running: theirs stay.
        super::parts::tidy(target.path(), fp)?;
        return Ok(Some(GrowReport::unchanged(
            target.path(),
            Some(j.from),
            j.to,
            target.meta(),
            true,
            start,
        )));
    }
    Ok(None)
}

/// After an exchange committed `target` (APPEND §4.3): the directory synced and the old
/// `what` (array, image), now at `old`, removed. What fails is a warning: the edit stands.
pub(super) fn after_exchange(target: &Path, old: &Path, sync: bool, what: &str) -> Vec<String> {
    let mut warnings = Vec::new();
    if sync && let Err(e) = sync_dir(crate::store::parent_dir(target)) {
        warnings.push(format!("committed, but syncing the directory failed: {e}"));
    }
    // The old one now sits at the sibling path: gone once nothing refers to it.
    if let Err(e) = fs::remove_dir_all(old) {
        warnings.push(format!(
            "committed, but the old {what} at {} was not removed: {e}",
            old.display()
        ));
    }
    warnings
}

pub(super) fn output_done(out: &Path, fp: &str, start: Instant) -> Result<Option<GrowReport>> {
    if !is_store(out) {
        return Ok(None);
    }
    let Ok(l) = Layout::read(out) else {
        return Ok(None);
    };
    match Journal::read(out) {
        Some(j) if j.fingerprint == fp && j.to == l.shape() => Ok(Some(GrowReport::unchanged(
            out,
            None,
            j.to,
            l.meta(),
            true,
            start,
        ))),
        _ => Ok(None),
    }
}

pub(super) fn grid_name(meta: &Value) -> &'static str {
    if meta["chunk_grid"]["name"] == "rectilinear" {
        "rectilinear"
    } else {
        "regular"
    }
}

/// The journal's record of the inputs `--move` removes after the commit.
pub(super) fn moving_list(opts: &GrowOptions, inputs: &[PathBuf]) -> Vec<Moving> {
    if !opts.move_inputs {
        return Vec::new();
    }
    inputs
        .iter()
        .map(|p| Moving {
            path: canonical(p).to_string_lossy().into_owned(),
            stamp: stamp(p),
        })
        .collect()
}

/// `p` made absolute through its parent (it may be gone).
pub(super) fn canonical(p: &Path) -> PathBuf {
    if let Ok(c) = p.canonicalize() {
        return c;
    }
    let parent = p
        .parent()
        .filter(|q| !q.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    match (parent.canonicalize(), p.file_name()) {
        (Ok(dir), Some(name)) => dir.join(name),
        _ => p.to_path_buf(),
    }
}

/// A rerun of a `--move` join whose commit happened (APPEND §4.5): removes what is left of the
/// inputs the journal of `dir` lists (each gone, half removed, or as it was when joined) and
/// says "already done". `None` when the journal does not describe this join.
pub(super) fn finish_move(
    dir: &Path,
    inputs: &[PathBuf],
    opts: &GrowOptions,
    start: Instant,
) -> Result<Option<GrowReport>> {
    if !opts.move_inputs || opts.again || !is_store(dir) {
        return Ok(None);
    }
    let Some(j) = Journal::read(dir) else {
        return Ok(None);
    };
    let given: Vec<PathBuf> = inputs.iter().map(|p| canonical(p)).collect();
    let listed: Vec<PathBuf> = j.moving.iter().map(|m| PathBuf::from(&m.path)).collect();
    let Ok(layout) = Layout::read(dir) else {
        return Ok(None);
    };
    if j.moving.is_empty() || given != listed || layout.shape() != j.to {
        return Ok(None);
    }
    let mut r = GrowReport::unchanged(
        dir,
        (!j.from.is_empty()).then(|| j.from.clone()),
        j.to.clone(),
        layout.meta(),
        true,
        start,
    );
    // The join is committed: whatever happens to the inputs now, it stands (a warning).
    for (p, m) in listed.iter().zip(&j.moving) {
        if !p.exists() {
            continue;
        }
        if !p.join("zarr.json").exists() {
            // Half removed by the killed run.
            if let Err(e) = fs::remove_dir_all(p) {
                r.warnings.push(format!("{}: {e}", p.display()));
            }
        } else if stamp(p) == m.stamp {
            remove_moved(std::slice::from_ref(p), &mut r);
        } else {
            r.warnings.push(format!(
                "{} was joined into {} and has changed since; it is not removed",
                p.display(),
                dir.display()
            ));
        }
    }
    Ok(Some(r))
}

/// Removes the inputs of a committed `--move` join; what cannot be removed becomes a warning
/// of the report, never an error (the join stands).
pub(super) fn remove_moved(inputs: &[PathBuf], report: &mut GrowReport) {
    if let Err(e) = remove_inputs(inputs) {
        report
            .warnings
            .push(format!("joined, but the inputs were not all removed: {e}"));
    }
}

pub(super) fn remove_inputs(inputs: &[PathBuf]) -> Result<()> {
    for p in inputs {
        // zarr.json first: a half-removed input is no longer an array.
        remove_chunk(&p.join("zarr.json"))?;
        crash_point("moving");
        sync_dir(p)?;
        fs::remove_dir_all(p).at(p)?;
    }
    Ok(())
}

/// Grows the array `target` in place with `ops` (`ops[0]` is the target itself).
pub(super) fn grow_in_place(
    target: &Layout,
    mut ops: Vec<Operand>,
    opts: &GrowOptions,
    fp: &str,
    start: Instant,
    moving: &[PathBuf],
) -> Result<GrowReport> {
    let axis = opts.axis;
    if axis >= target.shape().len() {
        return Err(Error::option(
            "axis",
            format!(
                "{axis} is out of range for the {}-d array {}",
                target.shape().len(),
                target.path().display()
            ),
        ));
    }
    ops[0].extent = target.shape()[axis];
    let old_shape = target.shape().to_vec();
    let shape = shape_of(&ops, axis);
    if shape == old_shape {
        // Nothing to add (empty inputs): the array is left exactly as it is.
        return Ok(GrowReport::unchanged(
            target.path(),
            Some(old_shape),
            shape,
            target.meta(),
            false,
            start,
        ));
    }
    let plan = choose_plan(&ops, target, opts)?;
    let mut edges = target.edges().to_vec();
    edges[axis] = plan.axis_edges.clone();
    let meta = target.metadata_with(&shape, &edges);
    crate::store::check_grid_size(target.path(), &meta)?;
    let codec = GridCodec::new(&meta, target.path())?;
    let old_edges = target.edges()[axis].list(old_shape[axis]);
    // Which layers change, and whether an existing chunk changes shape (then the directory is
    // rebuilt from links and exchanged, APPEND §4.3).
    let mut todo = Vec::new();
    let mut reshaped = false;
    for (l, layer) in plan.layers.iter().enumerate() {
        let keep = layer.act
            == Act::Link {
                op: 0,
                layer: l as u64,
            };
        if keep {
            continue;
        }
        if l < old_edges.len() && old_edges[l] != layer.edge {
            reshaped = true;
        }
        todo.push(l);
    }
    if plan.layers.len() < old_edges.len() {
        reshaped = true;
    }
    let sync = opts.run.durability == Durability::Sync;
    let mut layers_reencoded = stored_reencoded(
        &Plan {
            layers: todo.iter().map(|&l| plan.layers[l].clone()).collect(),
            axis_edges: plan.axis_edges.clone(),
        },
        &ops,
    );
    // Without an exchange, finished layers are recorded as the append goes, and a rerun of the
    // same command on the same array skips those a killed run finished (APPEND §5.1).
    let mut layers_resumed = 0;
    let target_meta = fnv1a(&target.meta().to_string());
    let id = Ident {
        fingerprint: fp,
        target_meta: &target_meta,
        from: &old_shape,
        to: &shape,
    };
    let every = std::time::Duration::from_secs_f64(checkpoint_secs(opts)?.min(1e9));
    let per_layer = grid_count(&edges, &shape) / plan.layers.len().max(1) as u64;
    let mut part_run = None;
    let mut portion = None;
    let checkpoint = if reshaped {
        if opts.partition.is_some() {
            return Err(Error::option(
                "partition",
                format!(
                    "this append re-shapes existing chunks of {} (its grid is rectilinear and \
                     the edge layer changes length), which is done in one process: leave \
                     --partition out",
                    target.path().display()
                ),
            ));
        }
        None
    } else if let Some(part) = opts.partition {
        match parts::open(target, &id, &todo, per_layer, part, sync)? {
            Opened::Committed => {
                return Ok(GrowReport::unchanged(
                    target.path(),
                    Some(old_shape),
                    shape,
                    &meta,
                    true,
                    start,
                ));
            }
            Opened::Open(run) => {
                let (a, b) = run.range();
                todo.retain(|&l| (a..b).contains(&(l as u64)));
                layers_reencoded = stored_reencoded(
                    &Plan {
                        layers: todo.iter().map(|&l| plan.layers[l].clone()).collect(),
                        axis_edges: plan.axis_edges.clone(),
                    },
                    &ops,
                );
                let n = todo.len();
                todo.retain(|&l| !run.before.contains(&(l as u64)));
                layers_resumed = (n - todo.len()) as u64;
                let record = run.record(&id, run.before.clone(), false);
                portion = Some(run.portion());
                part_run = Some(run);
                Some(Checkpoint {
                    store: target.path().to_path_buf(),
                    record,
                    every,
                    sync,
                })
            }
        }
    } else {
        let records = Progress::read_all(target.path())?;
        if records
            .iter()
            .any(|(_, r)| r.as_ref().is_none_or(|p| !id.matches(p)))
        {
            // Another edit was killed after placing chunks past the extent (its record says
            // so): they are not this one's, and would otherwise linger and count as stored.
            target.remove_outside_grid()?;
            Progress::remove_all(target.path())?;
        }
        // What a killed run of this same command placed in one process (a part's record
        // holds layers of which it placed its share only: they are done again).
        let mut before: Vec<u64> = records
            .into_iter()
            .filter_map(|(_, r)| r.filter(|p| id.matches(p) && p.part.is_none()))
            .flat_map(|p| p.layers)
            .collect();
        before.sort_unstable();
        before.dedup();
        let n = todo.len();
        todo.retain(|&l| !before.contains(&(l as u64)));
        layers_resumed = (n - todo.len()) as u64;
        Some(Checkpoint {
            store: target.path().to_path_buf(),
            record: Progress {
                fingerprint: fp.to_string(),
                target_meta: target_meta.clone(),
                from: old_shape.clone(),
                to: shape.clone(),
                layers: before,
                part: None,
            },
            every,
            sync,
        })
    };
    let joined = View::concat(ops.iter().map(|o| o.view.clone()).collect(), axis)?;
    let chunks_todo: u64 = match portion {
        Some(p) => todo
            .iter()
            .map(|&l| {
                let r = p.in_layer(l as u64, per_layer);
                r.end - r.start
            })
            .sum(),
        None => per_layer * todo.len() as u64,
    };
    let tracker = Tracker::new(
        "append",
        Unit::Chunks,
        chunks_todo,
        opts.run.progress.clone(),
    );
    let journal = Journal {
        fingerprint: fp.to_string(),
        from: old_shape.clone(),
        to: shape.clone(),
        moving: moving_list(opts, moving),
    };
    let join = Join {
        plan: &plan,
        ops: &ops,
        joined: &joined,
        codec: &codec,
        opts,
        tracker: &tracker,
    };
    let mut warnings = Vec::new();
    let mut parts_waiting = None;
    let (done, exchanged, meta_bytes) = if let Some(cp) = &checkpoint {
        let out = Layout::from_json(target.path(), meta.clone())?;
        let staging = match opts.partition {
            Some((i, n)) => Staging::for_part(target.path(), i, n),
            None => Staging::new(target.path()),
        };
        // The record exists before any chunk is placed past the extent, so that whatever a
        // kill leaves there is known to a later, different edit (which removes it).
        cp.record.write(&cp.store, sync)?;
        let applied = apply(
            &join,
            &Target {
                out: &out,
                staging: &staging,
                in_place: true,
                checkpoint: checkpoint.as_ref(),
                remote: None,
                portion,
            },
            &todo,
        );
        let done = applied.inspect_err(|_| {
            // Staged files are never resumed: free their space now (a full disk, say).
            staging.remove();
        })?;
        staging.remove();
        crash_point("staged");
        let commit = || -> Result<u64> {
            let jb = journal.write(target.path())?;
            crash_point("journaled");
            if sync {
                sync_filesystem(target.path())?;
            }
            commit_metadata(target.path(), &meta, sync)?;
            crash_point("committed");
            // After the commit the edit stands: what is left here is removed by the next writer.
            Staging::new(target.path()).remove();
            let _ = Progress::remove_all(target.path());
            Ok(meta_len(&meta) + jb)
        };
        let bytes = match part_run {
            None => commit()?,
            Some(run) => match parts::finish(run, target.path(), &id, sync, commit)? {
                Ended::Committed(b) => b,
                Ended::CommittedElsewhere { total } => {
                    parts_waiting = Some((total, total));
                    0
                }
                Ended::Waiting { done, total } => {
                    parts_waiting = Some((done, total));
                    0
                }
            },
        };
        (done, false, bytes)
    } else {
        // Removed on drop: on an error before the commit (a full disk, say) the rebuilt
        // directory goes with its space; after it, what is left there is the old array.
        let build = BuildDir::begin(target.path(), NEW_SUFFIX)?;
        let new_dir = build.path().to_path_buf();
        let built = (|| -> Result<(Done, u64, PathBuf)> {
            link_tree(target.path(), &new_dir)?;
            crash_point("linked");
            let out = Layout::from_json(&new_dir, meta.clone())?;
            let staging = Staging::new(&new_dir);
            // Every layer but the unchanged ones: the linked tree already holds those.
            let done = apply(
                &join,
                &Target {
                    out: &out,
                    staging: &staging,
                    in_place: true,
                    checkpoint: None,
                    remote: None,
                    portion: None,
                },
                &todo,
            )?;
            staging.remove();
            crash_point("staged");
            let jb = journal.write(&new_dir)?;
            commit_metadata(&new_dir, &meta, false)?;
            crash_point("journaled");
            if sync {
                sync_filesystem(&new_dir)?;
            }
            let old = swap_in(target.path(), &new_dir)?;
            Ok((done, jb, old))
        })();
        let (done, jb, old) = built?;
        crash_point("committed");
        warnings.extend(after_exchange(target.path(), &old, sync, "array"));
        drop(build);
        (done, true, meta_len(&meta) + jb)
    };
    Ok(GrowReport {
        path: target.path().to_path_buf(),
        old_shape: Some(old_shape),
        shape,
        grid: grid_name(&meta),
        chunks_linked: done.linked.into_inner(),
        chunks_encoded: done.encoded.into_inner(),
        layers_reencoded,
        layers_resumed,
        bytes_written: done.bytes.into_inner() + meta_bytes,
        exchanged,
        already_done: false,
        warnings,
        parts_waiting,
        levels: Vec::new(),
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Builds a new array at `out` from `ops` (concat).
pub(super) fn build_new(
    first: &Layout,
    mut ops: Vec<Operand>,
    out: &Path,
    opts: &GrowOptions,
    fp: &str,
    start: Instant,
    inputs: &[PathBuf],
) -> Result<GrowReport> {
    let axis = opts.axis;
    if axis >= first.shape().len() {
        return Err(Error::option(
            "axis",
            format!(
                "{axis} is out of range for {}-d arrays",
                first.shape().len()
            ),
        ));
    }
    for o in &mut ops {
        o.extent = o.view.shape()[axis];
    }
    let shape = shape_of(&ops, axis);
    let plan = choose_plan(&ops, first, opts)?;
    let mut edges = first.edges().to_vec();
    edges[axis] = plan.axis_edges.clone();
    let meta = first.metadata_with(&shape, &edges);
    crate::store::check_grid_size(out, &meta)?;
    let build = BuildDir::begin(out, TMP_SUFFIX)?;
    let tmp = build.path().to_path_buf();
    let out_layout = Layout::from_json(&tmp, meta.clone())?;
    let codec = GridCodec::new(&meta, out)?;
    let joined = View::concat(ops.iter().map(|o| o.view.clone()).collect(), axis)?;
    let todo: Vec<usize> = (0..plan.layers.len()).collect();
    let tracker = Tracker::new(
        "concat",
        Unit::Chunks,
        grid_count(&edges, &shape),
        opts.run.progress.clone(),
    );
    let staging = Staging::new(&tmp);
    let join = Join {
        plan: &plan,
        ops: &ops,
        joined: &joined,
        codec: &codec,
        opts,
        tracker: &tracker,
    };
    let done = apply(
        &join,
        &Target {
            out: &out_layout,
            staging: &staging,
            in_place: false,
            checkpoint: None,
            remote: None,
            portion: None,
        },
        &todo,
    )?;
    staging.remove();
    crash_point("staged");
    let meta_bytes = finish_build(build, out, &meta, fp, opts, moving_list(opts, inputs))?;
    let mut r = GrowReport {
        path: out.to_path_buf(),
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
    };
    if opts.move_inputs {
        remove_moved(inputs, &mut r);
    }
    Ok(r)
}

/// Commits a build directory: journal, sync, `zarr.json`, rename into place.
pub(super) fn finish_build(
    build: BuildDir,
    out: &Path,
    meta: &Value,
    fp: &str,
    opts: &GrowOptions,
    moving: Vec<Moving>,
) -> Result<u64> {
    let shape: Vec<u64> = meta["shape"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    let jb = Journal {
        fingerprint: fp.to_string(),
        from: Vec::new(),
        to: shape,
        moving,
    }
    .write(build.path())?;
    crash_point("journaled");
    let sync = opts.run.durability == Durability::Sync;
    if sync {
        sync_filesystem(build.path())?;
    }
    write_metadata(build.path(), meta, &[], opts.run.durability)?;
    build.publish(out, opts.overwrite, sync)?;
    crash_point("committed");
    Ok(meta_len(meta) + jb)
}

pub(super) fn meta_len(meta: &Value) -> u64 {
    serde_json::to_string_pretty(meta).map_or(0, |s| s.len() as u64)
}
