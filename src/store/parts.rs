//! The parts of a job whose output is one file (a reduction's `.json`, `where`'s and
//! `graph`'s `.npy`), run as `--partition I/N` (spec/SCALE.md §2).
//!
//! Each part leaves its partial result in `.NAME.chunkwise-parts/` beside the output:
//! `job.json` (the settings fingerprint and N), `part.I.N` (the part's result, renamed into
//! place whole once written and synced), and `lock.I.N` (held while the part runs). The part
//! that finds every part's result there combines them, in part order, into the output,
//! published whole, and removes the directory. Opening and combining happen under one lock
//! beside the output, `.NAME.chunkwise-parts.lock`, so that parts started or finishing at the
//! same moment never both combine, and none joins a directory being removed.
//! Invariant: the output appears only whole, after every part's result is on disk; a killed
//! part leaves at most a temporary file, and its rerun starts that part again.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::txn::{
    PathLock, check_utf8, parent_dir, resolve_links, sibling, temp_beside, try_lock_briefly,
    write_atomic,
};
use crate::error::{Error, IoContext, Result};

const PARTS_SUFFIX: &str = ".chunkwise-parts";
const PARTS_LOCK_SUFFIX: &str = ".chunkwise-parts.lock";

/// One part of a file-output job, open: its lock is held until it is dropped.
pub(crate) struct Parts {
    out: PathBuf,
    dir: PathBuf,
    part: u32,
    parts: u32,
    overwrite: bool,
    _lock: File,
}

/// How a part ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartsFinish {
    /// Every part's result was there: the output is written.
    Combined,
    /// This part's result is saved; `total - done` parts have still to run.
    Waiting {
        /// Parts whose results are saved.
        done: u32,
        /// Parts in all.
        total: u32,
    },
}

/// Checks `part` of `parts`.
///
/// # Errors
/// [`Error::InvalidOption`] (`partition`) unless `0 <= part < parts`.
pub(crate) fn check_part((part, parts): (u32, u32)) -> Result<()> {
    if parts == 0 || part >= parts {
        return Err(Error::option(
            "partition",
            format!("{part}/{parts}: need 0 <= I < N"),
        ));
    }
    Ok(())
}

fn part_file(dir: &Path, i: u32, n: u32) -> PathBuf {
    dir.join(format!("part.{i}.{n}"))
}

impl Parts {
    /// Opens part `part` of the job writing `out` with settings `settings` (their fingerprint
    /// `fingerprint`), creating the parts directory for the first part to start.
    ///
    /// # Errors
    /// [`Error::OutputExists`] when `out` exists (without `overwrite`) and no job is under way;
    /// [`Error::InvalidOption`] (`partition`) for a part out of range, a different N than the
    /// job was started with, or a job with other settings under way; [`Error::Locked`] when
    /// the same part runs elsewhere.
    pub(crate) fn open(
        out: &Path,
        fingerprint: &str,
        settings: &str,
        part: (u32, u32),
        overwrite: bool,
    ) -> Result<Parts> {
        check_part(part)?;
        super::local_only(out, "the output of a run in parts")?;
        let (i, n) = part;
        let out = resolve_links(out)?;
        check_utf8(&out)?;
        let parent = parent_dir(&out);
        fs::create_dir_all(parent).at(parent)?;
        let _opening = PathLock::wait(&sibling(&out, PARTS_LOCK_SUFFIX)?)?;
        let dir = sibling(&out, PARTS_SUFFIX)?;
        let job = dir.join("job.json");
        match fs::read_to_string(&job) {
            Ok(text) => {
                let v: Value = serde_json::from_str(&text)
                    .map_err(|e| Error::bad_input(&job, format!("not JSON: {e}")))?;
                let fp = v.get("fingerprint").and_then(Value::as_str);
                if fp != Some(fingerprint) {
                    return Err(Error::option(
                        "partition",
                        format!(
                            "{}: the parts under way there belong to another job ({}); finish \
                             that job or remove {} to start this one",
                            out.display(),
                            v.get("job")
                                .and_then(Value::as_str)
                                .map(|s| s
                                    .lines()
                                    .skip(1)
                                    .filter(|l| !l.starts_with("fingerprint"))
                                    .collect::<Vec<_>>()
                                    .join("; "))
                                .unwrap_or_default(),
                            dir.display()
                        ),
                    ));
                }
                let started = v.get("parts").and_then(Value::as_u64).unwrap_or(0);
                if started != u64::from(n) {
                    return Err(Error::option(
                        "partition",
                        format!(
                            "{i}/{n}: {} was started in {started} parts; give a part of \
                             {started} (I/{started})",
                            out.display()
                        ),
                    ));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if out.exists() && !overwrite {
                    return Err(Error::OutputExists(out));
                }
                match fs::create_dir(&dir) {
                    Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                        return Err(Error::io(&dir, e));
                    }
                    _ => {}
                }
                let doc = json!({"fingerprint": fingerprint, "job": settings, "parts": n});
                let text = serde_json::to_string_pretty(&doc).expect("plain JSON");
                write_atomic(&job, text.as_bytes(), true)?;
            }
            Err(e) => return Err(Error::io(&job, e)),
        }
        let lock_path = dir.join(format!("lock.{i}.{n}"));
        let lock = File::create(&lock_path).at(&lock_path)?;
        if !try_lock_briefly(&lock, false) {
            return Err(Error::Locked {
                path: out.clone(),
                holder: format!("part {i}/{n} is running ({})", lock_path.display()),
            });
        }
        Ok(Parts {
            out,
            dir,
            part: i,
            parts: n,
            overwrite,
            _lock: lock,
        })
    }

    /// Whether this part's result was saved by an earlier run (nothing to compute again).
    pub(crate) fn saved(&self) -> bool {
        part_file(&self.dir, self.part, self.parts).exists()
    }

    /// Saves this part's result whole (synced, then renamed into place).
    ///
    /// # Errors
    /// [`Error::Io`].
    pub(crate) fn save(&self, bytes: &[u8]) -> Result<()> {
        write_atomic(&part_file(&self.dir, self.part, self.parts), bytes, true)
    }

    /// A temporary file in the parts directory for a result too big to hold in memory: write
    /// it, then [`Parts::save_file`].
    ///
    /// # Errors
    /// [`Error::Io`].
    pub(crate) fn temp(&self) -> Result<tempfile::NamedTempFile> {
        temp_beside(&part_file(&self.dir, self.part, self.parts))
    }

    /// Saves a result written to a [`Parts::temp`] file (synced, then renamed into place).
    ///
    /// # Errors
    /// [`Error::Io`].
    pub(crate) fn save_file(&self, tmp: tempfile::NamedTempFile) -> Result<()> {
        tmp.as_file().sync_all().at(tmp.path())?;
        let to = part_file(&self.dir, self.part, self.parts);
        tmp.persist(&to).map_err(|e| Error::io(&to, e.error))?;
        Ok(())
    }

    /// Ends this part: when every part's result is saved, `combine` gets their files in part
    /// order and writes the output (published with the part's `overwrite`), then the
    /// directory goes.
    ///
    /// # Errors
    /// `combine`'s errors (the parts' results stay, so that a rerun of any part combines
    /// again); [`Error::Io`].
    pub(crate) fn finish(
        self,
        combine: impl FnOnce(&[PathBuf], &Path, bool) -> Result<()>,
    ) -> Result<PartsFinish> {
        let _closing = PathLock::wait(&sibling(&self.out, PARTS_LOCK_SUFFIX)?)?;
        if !self.dir.exists() {
            // Another part combined meanwhile.
            return Ok(PartsFinish::Combined);
        }
        let files: Vec<PathBuf> = (0..self.parts)
            .map(|i| part_file(&self.dir, i, self.parts))
            .collect();
        let done = files.iter().filter(|p| p.exists()).count() as u32;
        if done < self.parts {
            return Ok(PartsFinish::Waiting {
                done,
                total: self.parts,
            });
        }
        combine(&files, &self.out, self.overwrite)?;
        fs::remove_dir_all(&self.dir).at(&self.dir)?;
        Ok(PartsFinish::Combined)
    }
}

/// The state of the parts of a file-output job into `out`, if one is under way: for each
/// part, whether its result is saved and whether a process holds its lock.
pub(crate) fn parts_status(out: &Path) -> Result<Option<Vec<(bool, bool)>>> {
    let out = resolve_links(out)?;
    let dir = sibling(&out, PARTS_SUFFIX)?;
    let job = dir.join("job.json");
    let Ok(text) = fs::read_to_string(&job) else {
        return Ok(None);
    };
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| Error::bad_input(&job, format!("not JSON: {e}")))?;
    let n = v
        .get("parts")
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(1)
        .max(1);
    Ok(Some(
        (0..n)
            .map(|i| {
                let saved = part_file(&dir, i, n).exists();
                let lock = dir.join(format!("lock.{i}.{n}"));
                let running = File::open(&lock).is_ok_and(|f| !try_lock_briefly(&f, false));
                (saved, running)
            })
            .collect(),
    ))
}
