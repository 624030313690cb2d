//! Where an unfinished pyramid stands (`chunkwise status OUT`, spec/PYRAMID.md §3): its
//! levels' jobs, locally in the build directory or on object storage.

use super::output::PYRAMID_SUFFIX;
use super::*;

/// Where an unfinished pyramid into `out` stands (`chunkwise status OUT`, PYRAMID §3), if
/// one is being built: its parts (`--partition`, one without), each with the chunks of every
/// level under its trees and how many are done, and whether a process runs it; levels already
/// published in the build count as done. `None` when no pyramid is being built into `out`.
///
/// ```no_run
/// if let Some(s) = chunkwise::pyramid_status("brain.ome.zarr".as_ref())? {
///     println!("{} of {} chunks", s.chunks_done, s.chunks_total);
/// }
/// # Ok::<(), chunkwise::Error>(())
/// ```
///
/// # Errors
/// I/O errors reading the build.
pub fn pyramid_status(out: &Path) -> Result<Option<crate::store::JobStatus>> {
    use crate::error::IoContext;
    if crate::store::is_url(out) {
        return pyramid_status_remote(out);
    }
    // The build is beside the output's target when it is given through a link.
    let out = &crate::store::resolve_links(out)?;
    let build = crate::store::sibling(out, PYRAMID_SUFFIX)?;
    if !build.is_dir() {
        return Ok(None);
    }
    let mut parts: Vec<crate::store::PartStatus> = Vec::new();
    let (mut total, mut done) = (0u64, 0u64);
    let mut locks = Vec::new();
    // The image's levels, then each label image's (`labels/NAME/L`).
    let mut images = vec![build.clone()];
    if let Ok(entries) = std::fs::read_dir(build.join("labels")) {
        images.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    for image in &images {
        for e in std::fs::read_dir(image).at(image)? {
            let e = e.at(image)?;
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some((i, n)) = name
                .strip_prefix("lock.")
                .and_then(|r| r.split_once('.'))
                .and_then(|(i, n)| Some((i.parse::<u32>().ok()?, n.parse::<u32>().ok()?)))
            {
                locks.push((i, n, e.path()));
                continue;
            }
            if name.parse::<usize>().is_ok() {
                // A published level: every chunk done.
                let dir = e.path();
                if crate::store::is_store(&dir) {
                    let n = crate::store::Store::open(&dir)?.grid()?.num_chunks();
                    total += n;
                    done += n;
                }
                continue;
            }
            // A level's job, `.L.chunkwise-job` (unless published since the listing).
            let Some(level) = name
                .strip_prefix('.')
                .and_then(|n| n.strip_suffix(crate::store::JOB_SUFFIX))
                .filter(|l| l.parse::<usize>().is_ok())
            else {
                continue;
            };
            let dir = image.join(level);
            if crate::store::is_store(&dir) {
                continue;
            }
            let Ok(s) = crate::store::job_status(&dir) else {
                continue;
            };
            total += s.chunks_total;
            done += s.chunks_done;
            merge_parts(&mut parts, s.parts);
        }
    }
    for (i, n, lock) in locks {
        let held =
            std::fs::File::open(&lock).is_ok_and(|f| !crate::store::try_lock_briefly(&f, false));
        match parts.iter_mut().find(|q| q.index == i && q.of == n) {
            Some(q) => q.running |= held,
            None => parts.push(crate::store::PartStatus {
                index: i,
                of: n,
                chunks: 0,
                done: 0,
                running: held,
            }),
        }
    }
    Ok(Some(building(out, total, done, parts)))
}

/// The status of a pyramid being built into `out`: `done` of `total` chunks, by `parts`.
fn building(
    out: &Path,
    total: u64,
    done: u64,
    mut parts: Vec<crate::store::PartStatus>,
) -> crate::store::JobStatus {
    parts.sort_by_key(|p| (p.of, p.index));
    crate::store::JobStatus {
        path: out.to_path_buf(),
        published: false,
        fingerprint: None,
        building: true,
        chunks_total: total,
        chunks_done: done,
        parts,
    }
}

/// Adds a level's parts to the pyramid's (the same part of every level counted together).
fn merge_parts(parts: &mut Vec<crate::store::PartStatus>, level: Vec<crate::store::PartStatus>) {
    for p in level {
        match parts
            .iter_mut()
            .find(|q| q.index == p.index && q.of == p.of)
        {
            Some(q) => {
                q.chunks += p.chunks;
                q.done += p.done;
            }
            None => parts.push(crate::store::PartStatus {
                running: false,
                ..p
            }),
        }
    }
}

/// [`pyramid_status`] of a pyramid being built at an object-storage prefix: its levels' jobs
/// (`OUT/L`, each with its parts), the image's own levels; `None` once the image is
/// published, or when no level is being built there.
fn pyramid_status_remote(out: &Path) -> Result<Option<crate::store::JobStatus>> {
    let r = crate::store::Remote::open(&out.to_string_lossy())?;
    if r.size("zarr.json")?.is_some() {
        return Ok(None);
    }
    let mut parts = Vec::new();
    let (mut total, mut done) = (0u64, 0u64);
    let mut any = false;
    for l in 0.. {
        let level = out.join(l.to_string());
        let s = match crate::store::job_status(&level) {
            Ok(s) => s,
            Err(Error::NotFound(_)) => break,
            Err(e) => return Err(e),
        };
        any = true;
        if s.published {
            let n = crate::store::Store::open(&level)?.grid()?.num_chunks();
            total += n;
            done += n;
        } else {
            total += s.chunks_total;
            done += s.chunks_done;
            merge_parts(&mut parts, s.parts);
        }
    }
    if !any {
        return Ok(None);
    }
    Ok(Some(building(out, total, done, parts)))
}
