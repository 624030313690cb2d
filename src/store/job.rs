//! Writing the output of a resumable, partitionable job (spec/COMPUTE.md §6).
//!
//! The output is built in `.NAME.chunkwise-job` beside it (a name of its own, so that a
//! convert of the same output never takes a killed job's build for stale), and the build
//! directory outlives a killed process: it holds `job.json` (the settings fingerprint), one
//! lock per partition (`lock.I.N`), and one log per partition (`done.I.N`) of the chunks whose
//! files are on disk. A chunk enters its log only after its file is written and synced, so a
//! half-written chunk is never taken as done. The process that finds every chunk done
//! publishes the array (zarr.json with the fingerprint in its attributes, then rename).
//! Invariant: nothing appears at the output path before every chunk is done.
//!
//! Parts start at the same moment (a Slurm array's tasks do): opening a job (finding, wiping
//! or creating the build directory, writing `job.json`, taking the part's lock) and publishing
//! it happen under one lock beside the output, `.NAME.chunkwise-job.lock`, so that no part
//! takes another's half-created directory for stale, and none joins a directory being
//! published. The lock file exists only while a part holds or waits for it.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Value, json};

use super::files::FileWriter;
use super::is_store;
use super::spec::{ChunkCodec, Durability, StoreSpec};
use super::txn::{
    JOB_SUFFIX, PathLock, TMP_SUFFIX, check_utf8, lock_existing, parent_dir, publish_dir,
    recover_replacement, resolve_links, sibling, try_lock_briefly, write_atomic,
};
use super::writer::{check_replaceable, encode_and_queue, sync_written, write_metadata};
use crate::error::{Error, IoContext, Result};
use crate::grid::{ChunkSet, Grid};

/// What opening a job found.
pub(crate) enum JobState {
    /// The output exists and was computed with the same settings.
    AlreadyDone,
    /// Ready to compute; the chunks already done (by any partition) are listed.
    Open(Box<JobWriter>, ChunkSet),
}

/// How a job's part ended.
pub(crate) enum Finish {
    /// Every chunk is done and the array is published.
    Published,
    /// This partition is done; others still have chunks to compute.
    Waiting {
        /// Chunks done by all partitions.
        done: u64,
        /// Chunks in all.
        total: u64,
    },
}

#[path = "job_remote.rs"]
mod remote;

/// Settings of a job's output.
pub(crate) struct JobOptions<'a> {
    pub fingerprint: &'a str,
    pub settings: &'a str,
    pub partition: (u32, u32),
    /// The chunk layers of every part (balanced by stored chunks); the first part to start
    /// records them in `job.json`, and every part follows the recorded split.
    pub split: &'a [(u64, u64)],
    pub overwrite: bool,
    pub restart: bool,
    pub durability: Durability,
}

/// Writes a job's output chunks and records them as done.
pub(crate) struct JobWriter {
    final_path: PathBuf,
    tmp_path: PathBuf,
    codec: ChunkCodec,
    metadata: Value,
    grid: Grid,
    durability: Durability,
    files: Option<FileWriter>,
    lock: Option<File>,
    lock_path: PathBuf,
    /// Whether an array was at the output when the job was opened (then replaced on publish).
    replace: bool,
    log: Option<Mutex<File>>,
    pending: Mutex<Vec<Vec<u64>>>,
    /// Chunk files linked in ([`JobWriter::link_chunk`]) and their directories, synced at
    /// the next checkpoint.
    linked: Mutex<Vec<PathBuf>>,
    checkpointing: Mutex<()>,
    split: Vec<(u64, u64)>,
    /// This part, of how many.
    part: (u32, u32),
    /// When the log was last written.
    last_checkpoint: Mutex<std::time::Instant>,
    /// An output on object storage (then `files` and `log` are `None`: chunks are PUT in
    /// place, the logs are objects; spec/SCALE.md §6).
    remote: Option<Box<remote::RemoteOut>>,
}

/// The longest a done chunk waits to be logged (so that a part killed from outside loses at
/// most this much work, and `status` is this fresh).
const CHECKPOINT_SECS: f64 = 2.0;

/// Room kept allocated past the end of a job's log (about 4000 lines of chunk indices), so
/// that the checkpoint after a write failed on a full disk can still log the chunks written
/// before it, and a rerun resumes from them (spec/COMPUTE.md §6).
const LOG_ROOM: u64 = 64 << 10;

/// Allocates [`LOG_ROOM`] past the log's end without changing its length (`fallocate`
/// `KEEP_SIZE`), while the disk has room. Best effort: a filesystem without `fallocate`, or
/// a disk already full, just has no room kept.
fn reserve_log_room(log: &File) {
    #[cfg(target_os = "linux")]
    if let Ok(m) = log.metadata() {
        let _ = rustix::fs::fallocate(
            log,
            rustix::fs::FallocateFlags::KEEP_SIZE,
            m.len(),
            LOG_ROOM,
        );
    }
    #[cfg(not(target_os = "linux"))]
    let _ = log;
}

/// The lock beside the output under which parts open and publish a job.
const JOB_LOCK_SUFFIX: &str = ".chunkwise-job.lock";

/// The number of parts a job was started in (`job.json`), if it says.
fn read_parts(path: &Path) -> Option<u64> {
    let v: Value = serde_json::from_str(&fs::read_to_string(path).ok()?).ok()?;
    v.get("parts").and_then(Value::as_u64)
}

/// The parts' chunk layers a job recorded (`job.json`), if it did.
fn read_split(path: &Path) -> Option<Vec<(u64, u64)>> {
    split_of(&serde_json::from_str(&fs::read_to_string(path).ok()?).ok()?)
}

/// The parts' chunk layers recorded in a `job.json` document.
fn split_of(job: &Value) -> Option<Vec<(u64, u64)>> {
    job.get("split")?
        .as_array()?
        .iter()
        .map(|p| Some((p.get(0)?.as_u64()?, p.get(1)?.as_u64()?)))
        .collect()
}

/// An existing array at a job's output, not to be replaced without overwriting: one a job
/// computed with other settings (`computed`), or any other.
fn refuse_replacing(path: &Path, computed: bool) -> Error {
    Error::option(
        "overwrite",
        if computed {
            format!(
                "{} holds a result computed with other settings; allow overwriting to replace it",
                path.display()
            )
        } else {
            format!(
                "{} already exists; allow overwriting to replace it",
                path.display()
            )
        },
    )
}

fn job_file(tmp: &Path) -> PathBuf {
    tmp.join("job.json")
}

fn read_fingerprint(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    v.pointer("/attributes/chunkwise/fingerprint")
        .or_else(|| v.get("fingerprint"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// Removes a build directory, unless a partition (other than `own`, a lock file this process
/// holds) still holds its lock.
fn wipe(tmp: &Path, path: &Path, own: Option<&Path>) -> Result<()> {
    for entry in fs::read_dir(tmp).at(tmp)? {
        let p = entry.at(tmp)?.path();
        let is_lock = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("lock."));
        if is_lock && Some(p.as_path()) != own {
            let f = File::open(&p).at(&p)?;
            if !try_lock_briefly(&f, false) {
                return Err(Error::Locked {
                    path: path.to_path_buf(),
                    holder: format!("a running partition holds {}", p.display()),
                });
            }
        }
    }
    fs::remove_dir_all(tmp).at(tmp)
}

/// Every chunk index recorded in the build directory's logs (of a grid of `shape` chunks).
fn read_done(tmp: &Path, shape: &[u64]) -> Result<ChunkSet> {
    let mut done = ChunkSet::new(shape);
    for entry in fs::read_dir(tmp).at(tmp)? {
        let p = entry.at(tmp)?.path();
        let is_log = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("done."));
        if is_log {
            read_log(&p, &mut done)?;
        }
    }
    Ok(done)
}

/// Adds the chunks one log records to `done` (a missing log records none). Returns the
/// length of its whole lines.
fn read_log(p: &Path, done: &mut ChunkSet) -> Result<u64> {
    let f = match File::open(p) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io(p, e)),
    };
    // Read line by line: a log of millions of chunks is never held whole.
    parse_log(std::io::BufReader::new(f), p, done)
}

/// Adds the chunks a log's lines (`i,j,k`) record to `done`; `p` names it in errors. Returns
/// the length of the whole lines read (a last line cut short, by a kill or a full disk, is
/// not counted).
fn parse_log(mut r: impl BufRead, p: &Path, done: &mut ChunkSet) -> Result<u64> {
    let mut line = String::new();
    let mut idx = Vec::new();
    let mut whole = 0u64;
    loop {
        line.clear();
        if r.read_line(&mut line).at(p)? == 0 {
            break;
        }
        // Only whole lines count: a line cut short by a kill is ignored.
        let Some(l) = line.strip_suffix('\n') else {
            break;
        };
        whole += line.len() as u64;
        idx.clear();
        let parsed = l
            .split(',')
            .map(str::parse::<u64>)
            .try_for_each(|v| v.map(|v| idx.push(v)));
        if parsed.is_ok() {
            done.insert(&idx);
        }
    }
    Ok(whole)
}

/// The log of the chunks part `part` of `parts` has written.
fn log_file(tmp: &Path, part: u32, parts: u32) -> PathBuf {
    tmp.join(format!("done.{part}.{parts}"))
}

/// The marker a part leaves when every chunk of its layers is done and logged.
fn finished_file(tmp: &Path, part: u32, parts: u32) -> PathBuf {
    tmp.join(format!("finished.{part}.{parts}"))
}

impl JobWriter {
    /// Opens (or resumes) the job writing `spec` to `path`.
    pub(crate) fn open(spec: &StoreSpec, path: &Path, o: &JobOptions<'_>) -> Result<JobState> {
        let grid = spec.validate()?;
        let (part, parts) = o.partition;
        if parts == 0 || part >= parts {
            return Err(Error::option(
                "partition",
                format!("{part}/{parts}: need 0 <= I < N"),
            ));
        }
        if super::is_url(path) {
            return JobWriter::open_remote(spec, grid, &path.to_string_lossy(), o);
        }
        let path = &resolve_links(path)?;
        check_utf8(path)?;
        let parent = parent_dir(path);
        fs::create_dir_all(parent).at(parent)?;
        let opening = PathLock::wait(&sibling(path, JOB_LOCK_SUFFIX)?)?;
        recover_replacement(path)?;
        let tmp = sibling(path, JOB_SUFFIX)?;
        if path.exists() && is_store(path) {
            let fp = read_fingerprint(&path.join("zarr.json"));
            if fp.as_deref() == Some(o.fingerprint) && !o.restart {
                return Ok(JobState::AlreadyDone);
            }
            let same = fp.as_deref() == Some(o.fingerprint);
            if !(o.overwrite || (o.restart && same)) {
                return Err(refuse_replacing(path, fp.is_some()));
            }
        }
        check_replaceable(path, true)?;
        let replace = is_store(path);
        let mut metadata = spec.metadata();
        // The spec's own attributes (a voxel size) stay beside the job's.
        if !metadata["attributes"]["chunkwise"].is_object() {
            metadata["attributes"]["chunkwise"] = json!({});
        }
        metadata["attributes"]["chunkwise"]["fingerprint"] = json!(o.fingerprint);
        metadata["attributes"]["chunkwise"]["job"] = json!(o.settings);
        let split: Vec<[u64; 2]> = o.split.iter().map(|&(a, b)| [a, b]).collect();
        let job = json!({"fingerprint": o.fingerprint, "job": o.settings, "parts": parts,
                         "split": split, "metadata": metadata});
        let job_text = serde_json::to_string_pretty(&job).expect("plain JSON");
        if tmp.exists() {
            let same = read_fingerprint(&job_file(&tmp)).as_deref() == Some(o.fingerprint);
            if o.restart || !same {
                if !same && !o.overwrite && !o.restart && job_file(&tmp).exists() {
                    return Err(Error::option(
                        "overwrite",
                        format!(
                            "{} holds an unfinished job with other settings; allow overwriting \
                             (or restart the job) to discard it",
                            tmp.display()
                        ),
                    ));
                }
                wipe(&tmp, path, None)?;
            }
        }
        match fs::create_dir(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(Error::io(&tmp, e));
            }
            _ => {}
        }
        if job_file(&tmp).exists() {
            if let Some(started) = read_parts(&job_file(&tmp))
                && started != u64::from(parts)
            {
                return Err(Error::option(
                    "partition",
                    format!(
                        "{part}/{parts}: {} was started in {started} parts; give a part of \
                         {started} (I/{started}), or restart the job",
                        path.display()
                    ),
                ));
            }
        } else {
            write_atomic(&job_file(&tmp), job_text.as_bytes(), true)?;
        }
        let split = read_split(&job_file(&tmp))
            .filter(|s| s.len() == parts as usize)
            .unwrap_or_else(|| o.split.to_vec());
        let lock_path = tmp.join(format!("lock.{part}.{parts}"));
        let lock = File::create(&lock_path).at(&lock_path)?;
        if !try_lock_briefly(&lock, false) {
            return Err(Error::Locked {
                path: path.to_path_buf(),
                holder: format!(
                    "partition {part}/{parts} is running ({})",
                    lock_path.display()
                ),
            });
        }
        // A part's chunks are its own layers: only its own log says which are done.
        let log_path = log_file(&tmp, part, parts);
        let mut done = ChunkSet::new(&grid.grid_shape());
        let whole = read_log(&log_path, &mut done)?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .at(&log_path)?;
        // A last line cut short (a kill or a full disk mid-write) goes, so that the lines
        // appended now do not continue it into another chunk's index.
        if log.metadata().at(&log_path)?.len() > whole {
            log.set_len(whole).at(&log_path)?;
        }
        reserve_log_room(&log);
        drop(opening);
        let codec = spec.chunk_codec()?;
        let files = FileWriter::new(&tmp, 2 * rayon::current_num_threads(), true);
        Ok(JobState::Open(
            Box::new(JobWriter {
                final_path: path.to_path_buf(),
                tmp_path: tmp,
                codec,
                metadata,
                grid,
                durability: o.durability,
                files: Some(files),
                lock: Some(lock),
                lock_path,
                replace,
                log: Some(Mutex::new(log)),
                pending: Mutex::new(Vec::new()),
                linked: Mutex::new(Vec::new()),
                checkpointing: Mutex::new(()),
                split,
                part: (part, parts),
                last_checkpoint: Mutex::new(std::time::Instant::now()),
                remote: None,
            }),
            done,
        ))
    }

    /// The chunk layers (along axis 0) of part `i`, as the job recorded them.
    pub(crate) fn part_layers(&self, i: u32) -> (u64, u64) {
        self.split[i as usize]
    }

    /// Bytes of one full output chunk.
    pub(crate) fn chunk_bytes(&self) -> usize {
        self.codec.chunk_bytes()
    }

    /// The store key of output chunk `idx`.
    pub(crate) fn key(&self, idx: &[u64]) -> String {
        self.codec.key(idx)
    }

    /// Encodes and queues chunk `idx` (not written if all zero); it is logged as done at the
    /// next checkpoint. Returns the encoded size.
    pub(crate) fn write_chunk(&self, idx: &[u64], data: &[u8]) -> Result<u64> {
        if let Some(r) = &self.remote {
            return self.write_remote(r, idx, data);
        }
        let files = self.files.as_ref().expect("files are open until finish");
        let n = encode_and_queue(
            &self.codec,
            files,
            &self.tmp_path,
            &self.final_path,
            idx,
            data,
        )?;
        self.pending
            .lock()
            .expect("no panics holding the list")
            .push(idx.to_vec());
        Ok(n)
    }

    /// Whether `store`'s encoded chunks are this output's (the same type, grid, fill value,
    /// codecs and shape): then [`JobWriter::write_encoded`] copies them. Local outputs only.
    pub(crate) fn same_chunk_bytes(&self, store: &crate::store::Store) -> bool {
        self.remote.is_none() && super::writer::same_fields(&self.metadata, store, &[])
    }

    /// Queues chunk `idx` as `encoded`, the bytes of a store of
    /// [`JobWriter::same_chunk_bytes`] (no decoding, no encoding); logged at the next
    /// checkpoint. Returns the bytes.
    pub(crate) fn write_encoded(&self, idx: &[u64], encoded: Vec<u8>) -> Result<u64> {
        let files = self.files.as_ref().expect("files are open until finish");
        let n = encoded.len() as u64;
        files.write(self.tmp_path.join(self.codec.key(idx)), encoded)?;
        self.pending
            .lock()
            .expect("no panics holding the list")
            .push(idx.to_vec());
        Ok(n)
    }

    /// Puts `src`, a chunk file encoded as this output's, in place as chunk `idx`: a hard link
    /// (a copy across filesystems, synced); logged at the next checkpoint. Returns the bytes
    /// copied (0 for a link). Local outputs only.
    pub(crate) fn link_chunk(&self, idx: &[u64], src: &Path) -> Result<u64> {
        let dst = self.tmp_path.join(self.codec.key(idx));
        if let Some(parent) = dst.parent() {
            fs::create_dir_all(parent).at(parent)?;
        }
        // A rerun may find the link of the run before.
        match fs::remove_file(&dst) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(&dst, e)),
            _ => {}
        }
        let copied = super::link_or_copy(src, &dst)?;
        // Synced (the file, a copy's data, and its directory entry) before it is logged.
        {
            let mut linked = self.linked.lock().expect("no panics holding the list");
            if let Some(parent) = dst.parent() {
                linked.push(parent.to_path_buf());
            }
            linked.push(dst);
        }
        self.pending
            .lock()
            .expect("no panics holding the list")
            .push(idx.to_vec());
        Ok(copied)
    }

    /// Records chunk `idx` as done without a file: it is all fill value (absent), as every
    /// input chunk it reads is. Logged at the next checkpoint.
    pub(crate) fn record_absent(&self, idx: &[u64]) {
        self.pending
            .lock()
            .expect("no panics holding the list")
            .push(idx.to_vec());
    }

    /// Whether to checkpoint now: `every` chunks are queued, or some have waited
    /// [`CHECKPOINT_SECS`].
    pub(crate) fn checkpoint_due(&self, every: usize) -> bool {
        let n = self.pending();
        n >= every
            || (n > 0
                && self
                    .last_checkpoint
                    .lock()
                    .expect("no panics holding the time")
                    .elapsed()
                    .as_secs_f64()
                    >= CHECKPOINT_SECS)
    }

    /// Chunks queued since the last checkpoint.
    pub(crate) fn pending(&self) -> usize {
        self.pending
            .lock()
            .expect("no panics holding the list")
            .len()
            + self.in_flight()
    }

    /// Waits for queued chunks to be written, syncs them, and logs them as done.
    pub(crate) fn checkpoint(&self) -> Result<()> {
        let _one = self
            .checkpointing
            .lock()
            .expect("no panics holding the lock");
        if let Some(r) = &self.remote {
            return self.checkpoint_remote(r);
        }
        let mut pending =
            std::mem::take(&mut *self.pending.lock().expect("no panics holding the list"));
        *self
            .last_checkpoint
            .lock()
            .expect("no panics holding the time") = std::time::Instant::now();
        // Everything queued before `pending` was taken is written, or known not to be, once
        // the flush returns. After a write failed (a full disk), the chunks written before it
        // are still logged, so that a rerun resumes from them; the ones it dropped are not.
        let files = self.files.as_ref().expect("files are open until finish");
        let (mut written, failed) = files.flush_all();
        {
            let mut linked =
                std::mem::take(&mut *self.linked.lock().expect("no panics holding the list"));
            linked.sort();
            linked.dedup();
            written.extend(linked);
        }
        sync_written(&written, self.durability)?;
        // (The writer's error may have been reported to a task already: ask the writer what
        // it dropped, not whether it failed now.)
        if files.dropped_any() {
            pending.retain(|idx| !files.was_dropped(&self.tmp_path.join(self.codec.key(idx))));
        }
        if pending.is_empty() {
            return failed;
        }
        let mut text = String::with_capacity(pending.len() * 16);
        for idx in &pending {
            let line: Vec<String> = idx.iter().map(u64::to_string).collect();
            text.push_str(&line.join(","));
            text.push('\n');
        }
        let mut log = self
            .log
            .as_ref()
            .expect("a local job has its log")
            .lock()
            .expect("no panics holding the log");
        let path = &self.tmp_path;
        log.write_all(text.as_bytes()).at(path)?;
        if self.durability == Durability::Sync {
            log.sync_data().at(path)?;
        }
        reserve_log_room(&log);
        failed
    }

    /// Ends this partition after an error a rerun with the same settings would meet again (a
    /// kernel refusing its input): this part's log, marker and chunk files go, so that its
    /// rerun computes its layers again, and the whole build directory goes when no other part
    /// has logged or finished anything (nor runs): the corrected rerun of a one-part job is
    /// then not refused as "other settings". Other parts' work is never discarded.
    pub(crate) fn abandon(mut self) {
        if self.remote.is_some() {
            // On object storage what is done stays (no part knows whether others run).
            return;
        }
        drop(self.files.take());
        let tmp = self.tmp_path.clone();
        let (part, parts) = self.part;
        let _ = fs::remove_file(log_file(&tmp, part, parts));
        let _ = fs::remove_file(finished_file(&tmp, part, parts));
        let others = fs::read_dir(&tmp).is_ok_and(|entries| {
            entries.flatten().any(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with("done.") || n.starts_with("finished."))
            })
        });
        // Our own lock is held until our files are gone (they are ours to remove).
        if others || wipe(&tmp, &self.final_path, Some(&self.lock_path)).is_err() {
            let (l0, l1) = self.split[part as usize];
            let mut layer: Vec<std::ops::Range<u64>> =
                self.grid.grid_shape().iter().map(|&n| 0..n).collect();
            for l in l0..l1 {
                layer[0] = l..l + 1;
                for idx in crate::grid::indices_in(&layer) {
                    let _ = fs::remove_file(tmp.join(self.codec.key(&idx)));
                }
            }
        }
        self.lock = None;
    }

    /// Ends this partition: a last checkpoint and the part's `finished` marker, then
    /// publishes the array if every partition has finished (no log is read: a job of a
    /// million chunks in 64 parts ends in 64 marker checks, not 64 reads of every log).
    pub(crate) fn finish(mut self) -> Result<Finish> {
        self.checkpoint()?;
        if self.remote.is_some() {
            return self.finish_remote();
        }
        self.files.take().expect("finish runs once").finish()?;
        let total = self.grid.num_chunks();
        let tmp = self.tmp_path.clone();
        let (part, parts) = self.part;
        write_atomic(
            &finished_file(&tmp, part, parts),
            b"",
            self.durability == Durability::Sync,
        )?;
        self.lock = None;
        let publish_lock = tmp.join("publish.lock");
        let pl = match File::create(&publish_lock) {
            Ok(f) => f,
            // Another partition published (and so removed the build directory) meanwhile.
            Err(_) if !tmp.exists() => return Ok(Finish::Published),
            Err(e) => return Err(Error::io(&publish_lock, e)),
        };
        pl.lock().at(&publish_lock)?;
        if !tmp.exists() {
            return Ok(Finish::Published);
        }
        let inner: u64 = self.grid.grid_shape()[1..].iter().product();
        let finished: Vec<u32> = (0..parts)
            .filter(|&i| finished_file(&tmp, i, parts).exists())
            .collect();
        if finished.len() < parts as usize {
            let done = finished
                .iter()
                .map(|&i| {
                    let (l0, l1) = self.split[i as usize];
                    (l1 - l0) * inner
                })
                .sum();
            return Ok(Finish::Waiting { done, total });
        }
        let mut remove = vec![job_file(&tmp), publish_lock];
        for entry in fs::read_dir(&tmp).at(&tmp)? {
            let p = entry.at(&tmp)?.path();
            let own = p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with("done.")
                    || n.starts_with("finished.")
                    || n.starts_with("lock.")
                    || n.starts_with("job.json.")
                    || n.ends_with(TMP_SUFFIX)
            });
            if own {
                remove.push(p);
            }
        }
        // No part opens the job while it is published (the module's doc).
        let opening = PathLock::wait(&sibling(&self.final_path, JOB_LOCK_SUFFIX)?)?;
        // Every writer of an existing array holds its lock, this one too (APPEND §6).
        let _replacing = lock_existing(&self.final_path)?;
        write_metadata(&tmp, &self.metadata, &remove, self.durability)?;
        // Only an array that was there when the job was opened (and so allowed to be
        // replaced) is replaced: one that appeared meanwhile is not this job's to take.
        publish_dir(
            &tmp,
            &self.final_path,
            self.replace,
            self.durability == Durability::Sync,
        )?;
        drop(opening);
        drop(pl);
        Ok(Finish::Published)
    }
}

/// Where a job into an output stands (`chunkwise status OUT`, spec/COMPUTE.md §7).
#[derive(Debug, Clone, PartialEq)]
pub struct JobStatus {
    /// The output path.
    pub path: PathBuf,
    /// A store is published at the output (with `fingerprint`, if chunkwise computed it).
    pub published: bool,
    /// The published array's job fingerprint.
    pub fingerprint: Option<String>,
    /// An unfinished job is being built beside the output.
    pub building: bool,
    /// Output chunks in all (of the unfinished job).
    pub chunks_total: u64,
    /// Output chunks done, by every part.
    pub chunks_done: u64,
    /// The parts the unfinished job was started in (empty if none).
    pub parts: Vec<PartStatus>,
}

/// One part of an unfinished job.
#[derive(Debug, Clone, PartialEq)]
pub struct PartStatus {
    /// `I` of `I/N`.
    pub index: u32,
    /// `N` of `I/N`.
    pub of: u32,
    /// The part's output chunks (a contiguous range of layers along axis 0).
    pub chunks: u64,
    /// Of those, done (by any part).
    pub done: u64,
    /// A process holds the part's lock now.
    pub running: bool,
}

impl PartStatus {
    /// `done`, `running` or `missing` (not done and nobody on it).
    pub fn state(&self) -> &'static str {
        if self.done >= self.chunks {
            "done"
        } else if self.running {
            "running"
        } else {
            "missing"
        }
    }
}

/// Which parts of the job into `out` are done, running (their lock is held) or missing, and
/// whether the output is published.
///
/// ```no_run
/// let s = chunkwise::job_status("smooth.zarr".as_ref())?;
/// for p in &s.parts {
///     println!("part {}/{}: {} ({}/{})", p.index, p.of, p.state(), p.done, p.chunks);
/// }
/// # Ok::<(), chunkwise::Error>(())
/// ```
///
/// # Errors
/// [`Error::NotFound`] when there is neither an array nor a job at `out`; I/O errors.
pub fn job_status(out: &Path) -> Result<JobStatus> {
    if super::is_url(out) {
        return remote::job_status_remote(&out.to_string_lossy());
    }
    let path = resolve_links(out)?;
    let published = is_store(&path);
    let fingerprint = published
        .then(|| read_fingerprint(&path.join("zarr.json")))
        .flatten();
    let tmp = sibling(&path, JOB_SUFFIX)?;
    let job = fs::read_to_string(job_file(&tmp))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok());
    let Some(job) = job else {
        if let Some(parts) = super::parts_status(&path)? {
            // A job whose output is one file (a reduction, `where`, `graph`).
            let n = parts.len() as u32;
            return Ok(JobStatus {
                published: path.is_file(),
                fingerprint: None,
                building: true,
                chunks_total: 0,
                chunks_done: 0,
                parts: parts
                    .iter()
                    .enumerate()
                    .map(|(i, &(saved, running))| PartStatus {
                        index: i as u32,
                        of: n,
                        chunks: 1,
                        done: u64::from(saved),
                        running,
                    })
                    .collect(),
                path,
            });
        }
        if !published && !path.is_file() {
            return Err(Error::NotFound(path));
        }
        if published
            && let Ok(layout) = super::Layout::read(&path)
            && let Some(parts) = super::append_status(&layout)?
        {
            // An append in parts under way: the array is there, its new layers not yet.
            return Ok(JobStatus {
                published: false,
                fingerprint,
                building: true,
                chunks_total: parts.iter().map(|p| p.chunks).sum(),
                chunks_done: parts.iter().map(|p| p.done).sum(),
                parts,
                path,
            });
        }
        return Ok(JobStatus {
            published: true,
            path,
            fingerprint,
            building: false,
            chunks_total: 0,
            chunks_done: 0,
            parts: Vec::new(),
        });
    };
    let meta = &job["metadata"];
    let dims = |v: &Value| -> Vec<u64> {
        v.as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default()
    };
    let shape = dims(&meta["shape"]);
    let chunk = dims(&meta["chunk_grid"]["configuration"]["chunk_shape"]);
    if shape.is_empty() || shape.len() != chunk.len() || chunk.contains(&0) {
        return Err(Error::bad_input(
            job_file(&tmp),
            "no regular chunk grid in the job's metadata",
        ));
    }
    let gshape: Vec<u64> = shape
        .iter()
        .zip(&chunk)
        .map(|(s, c)| s.div_ceil(*c))
        .collect();
    let inner: u64 = gshape[1..].iter().product();
    let done = read_done(&tmp, &gshape)?;
    let n = job
        .get("parts")
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(1)
        .max(1);
    let layers = gshape[0];
    let split = read_split(&job_file(&tmp)).filter(|s| s.len() == n as usize);
    let mut parts = Vec::new();
    for i in 0..n {
        let (l0, l1) = match &split {
            Some(s) => s[i as usize],
            None => crate::grid::part_layers(layers, i, n),
        };
        let mine = done.count_layers(l0, l1);
        let lock = tmp.join(format!("lock.{i}.{n}"));
        let running = File::open(&lock).is_ok_and(|f| !try_lock_briefly(&f, false));
        parts.push(PartStatus {
            index: i,
            of: n,
            chunks: (l1 - l0) * inner,
            done: mine,
            running,
        });
    }
    Ok(JobStatus {
        path,
        published,
        fingerprint,
        building: true,
        chunks_total: layers * inner,
        chunks_done: done.len(),
        parts,
    })
}
