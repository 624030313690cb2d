//! Stable fingerprints of settings and inputs: what a job or an edit was, so that a rerun can
//! tell "the same again" (resume, or already done) from "something else".
//!
//! Invariant: an input's [`stamp`] changes whenever its data can have changed: a store's when
//! its metadata or any chunk file is rewritten, replaced, added or removed (size, modification
//! time or inode), a file's when its size or modification time changes.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rayon::prelude::*;

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
/// metadata and a stamp of every chunk file; for a file its size, modification time and inode
/// (writers that replace a file by a rename give it a new one); for a directory its
/// modification time and entry count.
pub(crate) fn stamp(path: &Path) -> String {
    let canon = path
        .canonicalize()
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string();
    for meta in ["zarr.json", ".zarray"] {
        if let Ok(text) = std::fs::read_to_string(path.join(meta)) {
            return format!(
                "{canon} store {} chunks {}",
                fnv1a(&text),
                fnv1a(&tree_stamp(path, Path::new("")))
            );
        }
    }
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {
            let n = std::fs::read_dir(path).map(Iterator::count).unwrap_or(0);
            format!("{canon} dir {} {n}", mtime_ns(&m))
        }
        Ok(m) => format!("{canon} file {} {} {}", m.len(), mtime_ns(&m), m.ino()),
        Err(_) => format!("{canon} missing"),
    }
}

/// A 64-bit hash of `bytes` (an in-memory array's values), a few GB/s per core: 1 MiB pieces
/// hashed in parallel by 8-byte words (multiply and rotate), then combined in order. Stable
/// across runs and builds; not cryptographic (it tells accidental changes apart).
pub(crate) fn content_hash(bytes: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let piece = |p: &[u8]| -> u64 {
        let mut h = p.len() as u64 ^ K;
        let mut words = p.chunks_exact(8);
        for w in &mut words {
            let w = u64::from_le_bytes(w.try_into().expect("8 bytes"));
            h = (h ^ w).wrapping_mul(K).rotate_left(31);
        }
        for &b in words.remainder() {
            h = (h ^ u64::from(b)).wrapping_mul(K);
        }
        h ^ (h >> 29)
    };
    bytes
        .par_chunks(1 << 20)
        .map(piece)
        .collect::<Vec<u64>>()
        .into_iter()
        .fold(bytes.len() as u64, |acc, h| {
            (acc ^ h)
                .wrapping_mul(0x0000_0100_0000_01b3)
                .rotate_left(27)
        })
}

fn mtime_ns(m: &std::fs::Metadata) -> i128 {
    i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec())
}

/// Every file below `root/rel` but chunkwise's own (`.chunkwise*`), as `path size mtime inode`
/// lines in name order; directories are walked in parallel.
fn tree_stamp(root: &Path, rel: &Path) -> String {
    let dir = root.join(rel);
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return String::new();
    };
    let mut entries: Vec<(String, std::fs::DirEntry)> = rd
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e))
        .filter(|(n, _)| !n.starts_with(".chunkwise"))
        .collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries
        .par_iter()
        .map(|(name, e)| {
            let sub = rel.join(name);
            match e.metadata() {
                Ok(m) if m.is_dir() => tree_stamp(root, &sub),
                Ok(m) => format!(
                    "{} {} {} {}\n",
                    sub.display(),
                    m.len(),
                    mtime_ns(&m),
                    m.ino()
                ),
                Err(_) => format!("{} gone\n", sub.display()),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One changed byte anywhere (in the word loop, in a tail, in a later piece) changes the
    /// hash; equal bytes hash equal; a longer run of zeros is not the same as a shorter one.
    #[test]
    fn content_hash_sees_every_byte() {
        let a: Vec<u8> = (0..(3 << 20) + 5).map(|i| (i * 31 % 251) as u8).collect();
        let h = content_hash(&a);
        assert_eq!(content_hash(&a.clone()), h);
        for at in [0, 7, 8, 1 << 20, (2 << 20) + 3, a.len() - 1] {
            let mut b = a.clone();
            b[at] ^= 1;
            assert_ne!(content_hash(&b), h, "byte {at}");
        }
        assert_ne!(content_hash(&[0; 16]), content_hash(&[0; 24]));
        assert_ne!(content_hash(&[0; 3]), content_hash(&[0; 4]));
    }

    /// Issue 18.6: a store rewritten with the same shape and type but new values (a chunk
    /// replaced, added or removed) has another stamp; chunkwise's own files do not count.
    #[test]
    fn a_store_with_new_chunks_has_a_new_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let s = dir.path().join("s.zarr");
        std::fs::create_dir_all(s.join("c/0")).unwrap();
        std::fs::write(s.join("zarr.json"), "{}").unwrap();
        std::fs::write(s.join("c/0/0"), b"abc").unwrap();
        let a = stamp(&s);
        assert_eq!(stamp(&s), a);
        std::fs::write(s.join(".chunkwise.lock"), b"123").unwrap();
        assert_eq!(stamp(&s), a, "lock files do not change the data");
        // Same size, replaced by a rename (a new inode), as every writer does.
        std::fs::write(s.join("c/0/tmp"), b"xyz").unwrap();
        std::fs::rename(s.join("c/0/tmp"), s.join("c/0/0")).unwrap();
        let b = stamp(&s);
        assert_ne!(b, a);
        std::fs::write(s.join("c/0/1"), b"more").unwrap();
        let c = stamp(&s);
        assert_ne!(c, b);
        std::fs::remove_file(s.join("c/0/1")).unwrap();
        assert_ne!(stamp(&s), c);
    }
}
