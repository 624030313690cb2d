//! Stable fingerprints of settings and inputs: what a job or an edit was, so that a rerun can
//! tell "the same again" (resume, or already done) from "something else".

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// FNV-1a, 64-bit: a stable fingerprint of a settings text (the same on every build and
/// machine, unlike std's hasher).
pub(crate) fn fnv1a(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// One line describing an input as it is now: its canonical path and, for a store, its
/// metadata; for a file its size and modification time; for a directory its modification
/// time and entry count.
pub(crate) fn stamp(path: &Path) -> String {
    let canon = path
        .canonicalize()
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string();
    let meta = path.join("zarr.json");
    if let Ok(text) = std::fs::read_to_string(&meta) {
        return format!("{canon} store {}", fnv1a(&text));
    }
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {
            let n = std::fs::read_dir(path).map(Iterator::count).unwrap_or(0);
            format!(
                "{canon} dir {} {n}",
                m.mtime_nsec() + m.mtime() * 1_000_000_000
            )
        }
        Ok(m) => format!(
            "{canon} file {} {}",
            m.len(),
            m.mtime_nsec() + m.mtime() * 1_000_000_000
        ),
        Err(_) => format!("{canon} missing"),
    }
}
