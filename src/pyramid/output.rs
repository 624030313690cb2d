//! Where a pyramid is written (spec/PYRAMID.md §2-3): locally a build directory beside OUT,
//! renamed to it when every level is done; on object storage the levels in place and the
//! groups' metadata last.

use super::*;

/// Whether OUT is the published pyramid of the settings `fingerprint`: its level 0 (the
/// first level's job) carries that fingerprint.
pub(super) fn published_as(dest: &Dest, fingerprint: &str) -> Result<bool> {
    let level0 = crate::fingerprint::fnv1a(&format!("{fingerprint}\nlevel 0\n"));
    if !dest.exists("zarr.json")? {
        return Ok(false);
    }
    Ok(dest
        .read("0/zarr.json")?
        .and_then(|t| serde_json::from_slice::<serde_json::Value>(&t).ok())
        .and_then(|v| {
            v.pointer("/attributes/chunkwise/fingerprint")
                .and_then(|f| f.as_str().map(str::to_string))
        })
        .is_some_and(|f| f == level0))
}

/// Where a pyramid goes: a local directory, or an object-storage prefix.
pub(super) enum Dest {
    Local(PathBuf),
    Remote(crate::store::Remote),
}

impl Dest {
    pub(super) fn open(out: &Path) -> Result<Dest> {
        if crate::store::is_url(out) {
            Ok(Dest::Remote(crate::store::Remote::open(
                &out.to_string_lossy(),
            )?))
        } else {
            Ok(Dest::Local(out.to_path_buf()))
        }
    }

    /// The file or object at `key` (`/`-separated, under OUT), if there is one.
    fn read(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match self {
            Dest::Local(dir) => Ok(std::fs::read(dir.join(key)).ok()),
            Dest::Remote(r) => r.get(key),
        }
    }

    fn exists(&self, key: &str) -> Result<bool> {
        match self {
            Dest::Local(dir) => Ok(dir.join(key).is_file()),
            Dest::Remote(r) => Ok(r.size(key)?.is_some()),
        }
    }
}

/// `path` (relative, under OUT) and `file` in it as an object key: `/`-separated.
fn key_of(path: &Path, file: &str) -> String {
    let mut k: Vec<String> = path
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    k.push(file.to_string());
    k.join("/")
}

/// Refuses an image (or anything with a `zarr.json`) at the object-storage prefix `r`: the
/// parts of a pyramid there cannot agree on replacing it without locks.
pub(super) fn check_remote_output(r: &crate::store::Remote, overwrite: bool) -> Result<()> {
    if r.size("zarr.json")?.is_none() {
        return Ok(());
    }
    if overwrite {
        return Err(Error::option(
            "overwrite",
            format!(
                "{}: replacing a pyramid on object storage is not supported (its parts cannot \
                 agree on it without locks): delete the prefix first",
                r.url()
            ),
        ));
    }
    Err(Error::OutputExists(PathBuf::from(r.url())))
}

/// Publishes the image on object storage once every level in `levels` is there (each level's
/// `zarr.json` is PUT by the last part to finish it): the groups' metadata, the image's own
/// last (the one object that makes it an image). Returns whether it is published.
pub(super) fn publish_remote(
    r: &crate::store::Remote,
    levels: &[PathBuf],
    groups: &[(PathBuf, String)],
) -> Result<bool> {
    for l in levels {
        if r.size(&key_of(l, "zarr.json"))?.is_none() {
            return Ok(false);
        }
    }
    // Two parts finishing together both PUT the same objects: harmless.
    for (at, text) in groups {
        r.put(&key_of(at, "zarr.json"), text.clone().into_bytes())?;
    }
    Ok(true)
}

/// The build directory of a pyramid, `.NAME.chunkwise-pyramid` beside the output: it outlives
/// a killed or failed run (each level a resumable job in it, PYRAMID §2), holds `job.json` (the
/// settings' fingerprint) and a lock file held while a run builds in it, and is renamed to
/// the output when every level is done.
pub(super) struct Work {
    path: PathBuf,
    out: PathBuf,
    _lock: std::fs::File,
}

pub(super) const PYRAMID_SUFFIX: &str = ".chunkwise-pyramid";

impl Work {
    pub(super) fn open(
        out: &Path,
        fingerprint: &str,
        settings: &str,
        overwrite: bool,
        (i, n): (u32, u32),
    ) -> Result<Work> {
        use crate::error::IoContext;
        let path = crate::store::sibling(out, PYRAMID_SUFFIX)?;
        let parent = crate::store::parent_dir(&path).to_path_buf();
        std::fs::create_dir_all(&parent).at(&parent)?;
        // Parts start together: one at a time opens (or discards) the build.
        let _opening = crate::store::PathLock::wait(&crate::store::sibling(
            out,
            &format!("{PYRAMID_SUFFIX}.lock"),
        )?)?;
        match std::fs::create_dir(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(Error::io(&path, e));
            }
            _ => {}
        }
        let lock_path = path.join(format!("lock.{i}.{n}"));
        let lock = std::fs::File::create(&lock_path).at(&lock_path)?;
        if !crate::store::try_lock_briefly(&lock, false) {
            return Err(Error::Locked {
                path: out.to_path_buf(),
                holder: format!(
                    "part {i}/{n} of a pyramid is being built in {}",
                    path.display()
                ),
            });
        }
        let job = path.join("job.json");
        let found = std::fs::read_to_string(&job)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["fingerprint"].as_str().map(str::to_string));
        if found.as_deref() != Some(fingerprint) {
            if found.is_some() && !overwrite {
                return Err(Error::option(
                    "overwrite",
                    format!(
                        "{} holds an unfinished pyramid with other settings; allow overwriting \
                         to discard it",
                        path.display()
                    ),
                ));
            }
            // Another pyramid's build, or one killed before it said what it builds: discarded,
            // unless a part of it runs.
            for e in std::fs::read_dir(&path).at(&path)? {
                let p = e.at(&path)?.path();
                let other_lock = p != lock_path
                    && p.file_name()
                        .and_then(|f| f.to_str())
                        .is_some_and(|f| f.starts_with("lock."));
                if other_lock
                    && !std::fs::File::open(&p)
                        .is_ok_and(|f| crate::store::try_lock_briefly(&f, false))
                {
                    return Err(Error::Locked {
                        path: out.to_path_buf(),
                        holder: format!("a part of another pyramid runs in {}", path.display()),
                    });
                }
            }
            for e in std::fs::read_dir(&path).at(&path)? {
                let p = e.at(&path)?.path();
                if p != lock_path {
                    let gone = if p.is_dir() {
                        std::fs::remove_dir_all(&p)
                    } else {
                        std::fs::remove_file(&p)
                    };
                    gone.at(&p)?;
                }
            }
            let text = serde_json::to_string_pretty(
                &json!({"fingerprint": fingerprint, "settings": settings}),
            )
            .expect("plain JSON");
            crate::store::write_atomic(&job, text.as_bytes(), true)?;
        }
        Ok(Work {
            path,
            out: out.to_path_buf(),
            _lock: lock,
        })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// `r`, having removed the build directory if `r` is a refusal of the options (nothing
    /// written, and a corrected rerun is another pyramid); any other error keeps it for a
    /// rerun to resume.
    pub(super) fn keep_unless_refused<R>(&self, r: Result<R>) -> Result<R> {
        if let Err(Error::InvalidOption { .. }) = &r {
            let _ = std::fs::remove_dir_all(&self.path);
        }
        r
    }

    /// Renames the build to `out` (replacing an array there if `replace`) once all `levels`
    /// are published in it (by this part or the others). Returns whether the image is
    /// published (false: other parts have yet to finish).
    pub(super) fn publish(
        self,
        out: &Path,
        replace: bool,
        sync: bool,
        levels: &[PathBuf],
    ) -> Result<bool> {
        let _publishing = crate::store::PathLock::wait(&crate::store::sibling(
            &self.out,
            &format!("{PYRAMID_SUFFIX}.lock"),
        )?)?;
        if !self.path.exists() {
            // Another part published meanwhile.
            return Ok(true);
        }
        if !levels
            .iter()
            .all(|l| crate::store::is_store(&self.path.join(l)))
        {
            return Ok(false);
        }
        let _ = std::fs::remove_file(self.path.join("job.json"));
        if let Ok(entries) = std::fs::read_dir(&self.path) {
            for e in entries.flatten() {
                if e.file_name()
                    .to_str()
                    .is_some_and(|f| f.starts_with("lock."))
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        crate::store::publish_dir(&self.path, out, replace && out.exists(), sync)?;
        Ok(true)
    }
}

/// Refuses an existing output unless `overwrite`, and then anything but a Zarr group or array.
pub(super) fn check_output(out: &Path, overwrite: bool) -> Result<()> {
    if !out.exists() {
        return Ok(());
    }
    if !overwrite {
        return Err(Error::OutputExists(out.to_path_buf()));
    }
    let zarr = out.join("zarr.json").is_file()
        || out.join(".zgroup").is_file()
        || out.join(".zarray").is_file()
        || std::fs::read_dir(out).is_ok_and(|mut d| d.next().is_none());
    if !zarr {
        return Err(Error::option(
            "overwrite",
            format!(
                "{} is not a Zarr group or array: refusing to replace it",
                out.display()
            ),
        ));
    }
    Ok(())
}
