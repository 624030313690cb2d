//! Scale by simulation (spec/SCALE.md §5): a job over a 2 TiB logical array of 2^20 chunks,
//! almost all of them absent (never stored), planned and run with memory independent of the
//! chunk count, and the same output in 64 parts as in one.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use chunkwise::{DType, Region, Store, StoreSpec};

use crate::common::{stderr, tmp};

/// A uint8 store of `layers` x 128 x 128 chunks of 128^3 with data in a few places.
fn sparse(path: &Path, layers: u64) -> Store {
    let shape = vec![layers * 128, 128 * 128, 128 * 128];
    let s = Store::create(path, &StoreSpec::new(shape, DType::U8, vec![128, 128, 128])).unwrap();
    let z = (layers - 1) * 128;
    for (start, len, v) in [
        ([0u64, 5000, 300], [100u64, 200, 100], 7u8),
        ([z + 20, 0, 16300], [100, 100, 84], 9),
        ([z / 2, 8100, 8100], [50, 100, 100], 200),
    ] {
        let region = Region::new(start.iter().zip(&len).map(|(&a, &n)| a..a + n).collect());
        let data = ndarray::ArrayD::<u8>::from_elem(
            len.iter().map(|&n| n as usize).collect::<Vec<_>>(),
            v,
        );
        s.write_region(&region, data.view()).unwrap();
    }
    s
}

/// Runs chunkwise and returns (seconds, peak RSS in KiB) of that process alone: reaped with
/// `wait4`, which gives its own resource usage (std's `wait` would not; a second wait could
/// reap another test's child that took the pid).
#[allow(clippy::zombie_processes)]
fn measured(args: &[&str]) -> (f64, i64) {
    let t = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_chunkwise"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: plain wait4 on our own child, with valid out-pointers.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "chunkwise {args:?} failed (status {status})"
    );
    (t.elapsed().as_secs_f64(), usage.ru_maxrss)
}

/// Every stored chunk of `a` and `b` (same keys, same decoded bytes): the arrays are equal,
/// absent chunks being fill value in both.
fn assert_same_chunks(a: &Store, b: &Store) {
    let keys = |s: &Store| {
        let mut k: Vec<String> = walk(s.path(), s.path());
        k.sort();
        k
    };
    let (ka, kb) = (keys(a), keys(b));
    assert_eq!(ka, kb);
    assert!(!ka.is_empty());
    for key in &ka {
        let idx: Vec<u64> = key
            .trim_start_matches("c/")
            .split('/')
            .map(|v| v.parse().unwrap())
            .collect();
        assert_eq!(
            a.read_chunk(&idx).unwrap(),
            b.read_chunk(&idx).unwrap(),
            "{key}"
        );
    }
}

fn walk(root: &Path, dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(root, &p));
        } else if p.file_name().unwrap() != "zarr.json" {
            out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
        }
    }
    out
}

#[test]
fn a_job_over_two_tebibytes_of_mostly_absent_chunks() {
    let dir = tmp();
    let d = dir.path();
    // 4 layers (65536 chunks, 128 GiB) and 64 layers (2^20 chunks, 2 TiB).
    let small = sparse(&d.join("small.zarr"), 4);
    let big = sparse(&d.join("big.zarr"), 64);
    let run = |input: &Store, out: &str| {
        measured(&[
            "threshold",
            input.path().to_str().unwrap(),
            d.join(out).to_str().unwrap(),
            "--above",
            "8",
            "-q",
        ])
    };
    let (ts, rss_small) = run(&small, "small-t.zarr");
    let (tb, rss_big) = run(&big, "big-t.zarr");
    let chunks = 1u64 << 20;
    eprintln!(
        "scale: 2^16 chunks in {ts:.2} s, {rss_small} KiB; 2^20 chunks in {tb:.2} s \
         ({:.1} us a chunk), {rss_big} KiB",
        tb * 1e6 / chunks as f64
    );
    // Memory does not grow with the chunk count: 16 times the chunks, a few MiB more at most
    // (the done bitmaps are a bit a chunk: 128 KiB here).
    assert!(
        rss_big < rss_small + 8 * 1024,
        "peak RSS {rss_big} KiB for 2^20 chunks against {rss_small} KiB for 2^16"
    );
    let out = Store::open(d.join("big-t.zarr")).unwrap();
    assert_eq!(out.shape(), big.shape());
    // Only the chunks holding values above 8 are stored: the 9s and the 200s.
    let stored = walk(out.path(), out.path()).len();
    assert!((2..=12).contains(&stored), "{stored} chunks stored");

    // 64 parts, two at a time, give the same array.
    let parts = d.join("big-64.zarr");
    let p = parts.to_str().unwrap();
    let bin = env!("CARGO_BIN_EXE_chunkwise");
    for pair in (0..64).collect::<Vec<u32>>().chunks(2) {
        let kids: Vec<_> = pair
            .iter()
            .map(|i| {
                Command::new(bin)
                    .args(["threshold", big.path().to_str().unwrap(), p, "--above", "8"])
                    .args(["--partition", &format!("{i}/64"), "-q"])
                    .spawn()
                    .unwrap()
            })
            .collect();
        for k in kids {
            let o = k.wait_with_output().unwrap();
            assert!(o.status.success(), "{}", stderr(&o));
        }
    }
    assert_same_chunks(&out, &Store::open(&parts).unwrap());
}
