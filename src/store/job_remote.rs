//! A job's output on object storage (`s3://bucket/prefix`, spec/SCALE.md §6): there is no
//! rename and no lock, so the chunks are PUT in place and the job's state is objects under
//! `PREFIX/.chunkwise-job/`: `job.json` (the fingerprint, settings, N, the split, the
//! metadata), `done.I.N.RUN.SEQ` (the chunks a checkpoint of part I logged, one object per
//! checkpoint, never rewritten: S3 has no append) and `finished.I.N`. The part that finds all
//! N markers PUTs `zarr.json`, the one request that makes the array appear, then removes the
//! job's objects. Two parts finishing together both PUT the same `zarr.json`: harmless.
//!
//! Invariant: no `zarr.json` at the prefix before every chunk of the array is stored, and a
//! chunk is logged done only after its PUT has returned.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use super::super::remote::{Remote, Uploads};
use super::super::spec::StoreSpec;
use super::{
    Finish, JobOptions, JobState, JobStatus, JobWriter, PartStatus, parse_log, refuse_replacing,
    split_of,
};
use crate::error::{Error, Result};
use crate::grid::{ChunkSet, Grid};

/// The job's objects, under the array's prefix.
const JOB_DIR: &str = ".chunkwise-job";

/// Chunk uploads a part keeps under way at once.
const IN_FLIGHT: usize = 16;

/// What a job writing to object storage holds.
pub(super) struct RemoteOut {
    remote: Arc<Remote>,
    /// Uploads under way (oldest first), each with the chunk it writes: a chunk is logged done
    /// once its upload has returned.
    uploads: Uploads<Vec<u64>>,
    /// This run's name in its log objects (a rerun never overwrites an earlier run's).
    run: String,
    seq: AtomicU64,
}

fn job_key(name: &str) -> String {
    format!("{JOB_DIR}/{name}")
}

fn fingerprint_of(bytes: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    v.get("fingerprint")
        .or_else(|| v.pointer("/attributes/chunkwise/fingerprint"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

impl JobWriter {
    /// Opens (or resumes) the job writing `spec` to the object-storage URL `url`.
    ///
    /// # Errors
    /// As [`JobWriter::open`]; and [`Error::InvalidOption`] (`partition`) for replacing an
    /// array or another job's objects in parts (done in one process: without locks, parts
    /// cannot agree on who removes them); [`crate::StoreError::Remote`].
    pub(super) fn open_remote(
        spec: &StoreSpec,
        grid: Grid,
        url: &str,
        o: &JobOptions<'_>,
    ) -> Result<JobState> {
        let (part, parts) = o.partition;
        let remote = Arc::new(Remote::open(url)?);
        let path = PathBuf::from(remote.url());
        let in_parts = |what: &str| {
            Error::option(
                "partition",
                format!(
                    "{}: {what} is not for parts on object storage (there are no locks there for \
                     them to agree on who does it): run the command once without --partition",
                    path.display()
                ),
            )
        };
        let mut metadata = spec.metadata();
        // The spec's own attributes (a voxel size) stay beside the job's.
        if !metadata["attributes"]["chunkwise"].is_object() {
            metadata["attributes"]["chunkwise"] = json!({});
        }
        metadata["attributes"]["chunkwise"]["fingerprint"] = json!(o.fingerprint);
        metadata["attributes"]["chunkwise"]["job"] = json!(o.settings);
        if let Some(z) = remote.get("zarr.json")? {
            let fp = fingerprint_of(&z);
            let same = fp.as_deref() == Some(o.fingerprint);
            if same && !o.restart {
                // A part that finished after the array was published may have left markers.
                delete_job(&remote)?;
                return Ok(JobState::AlreadyDone);
            }
            if !(o.overwrite || (o.restart && same)) {
                return Err(refuse_replacing(&path, fp.is_some()));
            }
            if parts > 1 {
                return Err(in_parts("replacing the array there"));
            }
            // Not atomic (SCALE §6): zarr.json first, so that readers see no array rather
            // than a mix of old and new chunks, then every other object.
            remote.delete_key("zarr.json")?;
            remote.delete_all()?;
        }
        let mut job = remote.get(&job_key("job.json"))?;
        if job.is_none() && !remote.list()?.is_empty() {
            // Objects but neither an array nor a job: a part that started a moment ago has
            // written job.json before any chunk, so it is there now if they are its.
            job = remote.get(&job_key("job.json"))?;
            if job.is_none() {
                if !(o.overwrite && parts == 1) {
                    return Err(Error::option(
                        "overwrite",
                        format!(
                            "{} holds objects but no zarr array or job; allow overwriting to \
                             remove them",
                            path.display()
                        ),
                    ));
                }
                remote.delete_all()?;
            }
        }
        if let Some(j) = &job {
            let same = fingerprint_of(j).as_deref() == Some(o.fingerprint);
            if o.restart || !same {
                if parts > 1 {
                    return Err(in_parts(if same {
                        "restarting its job"
                    } else {
                        "discarding the unfinished job with other settings there \
                         (.chunkwise-job/)"
                    }));
                }
                if !same && !o.overwrite && !o.restart {
                    return Err(Error::option(
                        "overwrite",
                        format!(
                            "{} holds an unfinished job with other settings; allow overwriting \
                             (or restart the job) to discard it",
                            path.display()
                        ),
                    ));
                }
                remote.delete_all()?;
                job = None;
            }
        }
        let split = match &job {
            Some(j) => {
                let v: Value = serde_json::from_slice(j).unwrap_or(Value::Null);
                if let Some(started) = v.get("parts").and_then(Value::as_u64)
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
                split_of(&v)
                    .filter(|s| s.len() == parts as usize)
                    .unwrap_or_else(|| o.split.to_vec())
            }
            None => {
                let split: Vec<[u64; 2]> = o.split.iter().map(|&(a, b)| [a, b]).collect();
                let text = serde_json::to_string_pretty(&json!({
                    "fingerprint": o.fingerprint, "job": o.settings, "parts": parts,
                    "split": split, "metadata": metadata}))
                .expect("plain JSON");
                // Parts starting together all PUT the same job.json.
                remote.put(&job_key("job.json"), text.into_bytes())?;
                o.split.to_vec()
            }
        };
        // This part's logs, from every earlier run of it.
        let mut done = ChunkSet::new(&grid.grid_shape());
        let mine = format!("{JOB_DIR}/done.{part}.{parts}.");
        for key in remote.list_under(JOB_DIR)? {
            if key.starts_with(&mine)
                && let Some(bytes) = remote.get(&key)?
            {
                parse_log(&bytes[..], Path::new(&key), &mut done)?;
            }
        }
        let run = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        Ok(JobState::Open(
            Box::new(JobWriter {
                final_path: path.clone(),
                tmp_path: path,
                codec: spec.chunk_codec()?,
                metadata,
                grid,
                durability: o.durability,
                files: None,
                lock: None,
                lock_path: PathBuf::new(),
                replace: false,
                log: None,
                pending: Mutex::new(Vec::new()),
                linked: Mutex::new(Vec::new()),
                checkpointing: Mutex::new(()),
                split,
                part: (part, parts),
                last_checkpoint: Mutex::new(std::time::Instant::now()),
                remote: Some(Box::new(RemoteOut {
                    remote,
                    uploads: Uploads::new(IN_FLIGHT),
                    run,
                    seq: AtomicU64::new(0),
                })),
            }),
            done,
        ))
    }

    /// Encodes chunk `idx` and starts its PUT (none for an all-fill chunk); it is logged done
    /// once the PUT has returned.
    pub(super) fn write_remote(&self, r: &RemoteOut, idx: &[u64], data: &[u8]) -> Result<u64> {
        if self.codec.is_fill(data) {
            self.record_absent(idx);
            return Ok(0);
        }
        let key = self.codec.key(idx);
        let encoded = self.codec.encode(data)?;
        let n = encoded.len() as u64;
        if let Some(done) = r
            .uploads
            .push(r.remote.put_async(&key, encoded), idx.to_vec())?
        {
            self.record_absent(&done);
        }
        Ok(n)
    }

    /// Uploads under way.
    pub(super) fn in_flight(&self) -> usize {
        self.remote.as_ref().map_or(0, |r| r.uploads.len())
    }

    /// Waits for the uploads under way and logs every chunk whose PUT has returned in one new
    /// object.
    pub(super) fn checkpoint_remote(&self, r: &RemoteOut) -> Result<()> {
        for idx in r.uploads.drain()? {
            self.record_absent(&idx);
        }
        let pending =
            std::mem::take(&mut *self.pending.lock().expect("no panics holding the list"));
        *self
            .last_checkpoint
            .lock()
            .expect("no panics holding the time") = std::time::Instant::now();
        if pending.is_empty() {
            return Ok(());
        }
        let mut text = String::with_capacity(pending.len() * 16);
        for idx in &pending {
            let line: Vec<String> = idx.iter().map(u64::to_string).collect();
            text.push_str(&line.join(","));
            text.push('\n');
        }
        let (part, parts) = self.part;
        let seq = r.seq.fetch_add(1, Ordering::Relaxed);
        r.remote.put(
            &job_key(&format!("done.{part}.{parts}.{}.{seq:08}", r.run)),
            text.into_bytes(),
        )
    }

    /// Ends this part (its chunks logged): its marker, then the array's `zarr.json` if every
    /// part's marker is there.
    pub(super) fn finish_remote(self) -> Result<Finish> {
        let r = self.remote.as_ref().expect("a remote job");
        let (part, parts) = self.part;
        r.remote
            .put(&job_key(&format!("finished.{part}.{parts}")), Vec::new())?;
        let keys = r.remote.list_under(JOB_DIR)?;
        let finished: Vec<u32> = (0..parts)
            .filter(|i| keys.contains(&job_key(&format!("finished.{i}.{parts}"))))
            .collect();
        let total = self.grid.num_chunks();
        if finished.len() < parts as usize {
            let inner: u64 = self.grid.grid_shape()[1..].iter().product();
            let done = finished
                .iter()
                .map(|&i| {
                    let (l0, l1) = self.split[i as usize];
                    (l1 - l0) * inner
                })
                .sum();
            return Ok(Finish::Waiting { done, total });
        }
        // Every part's chunks are stored: the metadata makes the array appear.
        let text = serde_json::to_string_pretty(&self.metadata).expect("plain JSON");
        r.remote.put("zarr.json", text.into_bytes())?;
        delete_job(&r.remote)?;
        Ok(Finish::Published)
    }
}

/// Removes the job's objects (after its array is published).
fn delete_job(remote: &Remote) -> Result<()> {
    for key in remote.list_under(JOB_DIR)? {
        remote.delete_key(&key)?;
    }
    Ok(())
}

/// Where a job into the object-storage URL `url` stands (`chunkwise status s3://...`).
/// Whether a part runs is not known there (no locks): an unfinished part is `running: false`.
pub(super) fn job_status_remote(url: &str) -> Result<JobStatus> {
    let remote = Remote::open(url)?;
    let path = PathBuf::from(remote.url());
    let zarr = remote.get("zarr.json")?;
    let published = zarr.is_some();
    let fingerprint = zarr.as_deref().and_then(fingerprint_of);
    let not_building = |published: bool| JobStatus {
        path: path.clone(),
        published,
        fingerprint: fingerprint.clone(),
        building: false,
        chunks_total: 0,
        chunks_done: 0,
        parts: Vec::new(),
    };
    let Some(job) = remote.get(&job_key("job.json"))? else {
        if !published {
            return Err(Error::NotFound(path));
        }
        return Ok(not_building(true));
    };
    let v: Value = serde_json::from_slice(&job).unwrap_or(Value::Null);
    let parts = v
        .get("parts")
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(1)
        .max(1);
    let dims = |v: &Value| -> Vec<u64> {
        v.as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default()
    };
    let shape = dims(&v["metadata"]["shape"]);
    let chunk = dims(&v["metadata"]["chunk_grid"]["configuration"]["chunk_shape"]);
    if shape.is_empty() || shape.len() != chunk.len() || chunk.contains(&0) {
        return Err(Error::bad_input(
            format!("{}/{}", remote.url(), job_key("job.json")),
            "no regular chunk grid in the job's metadata",
        ));
    }
    let gshape: Vec<u64> = shape
        .iter()
        .zip(&chunk)
        .map(|(s, c)| s.div_ceil(*c))
        .collect();
    let inner: u64 = gshape[1..].iter().product();
    let split = split_of(&v).filter(|s| s.len() == parts as usize);
    let keys = remote.list_under(JOB_DIR)?;
    let mut done = ChunkSet::new(&gshape);
    for key in keys
        .iter()
        .filter(|k| k.starts_with(&format!("{JOB_DIR}/done.")))
    {
        if let Some(bytes) = remote.get(key)? {
            parse_log(&bytes[..], Path::new(key), &mut done)?;
        }
    }
    let mut list = Vec::new();
    for i in 0..parts {
        let (l0, l1) = match &split {
            Some(s) => s[i as usize],
            None => crate::grid::part_layers(gshape[0], i, parts),
        };
        let finished = keys.contains(&job_key(&format!("finished.{i}.{parts}")));
        let chunks = (l1 - l0) * inner;
        list.push(PartStatus {
            index: i,
            of: parts,
            chunks,
            done: if finished {
                chunks
            } else {
                done.count_layers(l0, l1)
            },
            running: false,
        });
    }
    Ok(JobStatus {
        path,
        published,
        fingerprint,
        building: true,
        chunks_total: gshape[0] * inner,
        chunks_done: list.iter().map(|p| p.done).sum(),
        parts: list,
    })
}
