//! Readers during writes (issue 14 item 5; spec/APPEND.md §4.1, spec/LIBRARY.md
//! "write_region"): while appends, `concat --into` and region writes run in a loop on one
//! store, `chunkwise export` and zarr-python, each in its own process and in a loop, read it
//! whole. Neither ever sees an error or a value that is not the old or the new array's. The
//! rounds are `CHUNKWISE_READER_ROUNDS` (default 6); `tests/soak.sh readers N` runs many.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chunkwise::{DType, Region, Store};

use crate::common::{chunkwise as run, npy, ok, python, read_npy, root, s, stderr, tmp};

const CHUNK: u64 = 8;
const Y: u64 = 24;
const X: u64 = 20;
/// The box the region writes rewrite, alternately with g = f ^ 0x5555 and with f: it crosses
/// chunk boundaries on every axis, so that some chunks are read, modified and rewritten.
const REGION: [[u64; 2]; 3] = [[2, 11], [3, 21], [5, 12]];

/// The value every writer puts at (z, y, x), outside the region writes' box.
fn f(z: u64, y: u64, x: u64) -> u16 {
    ((977 * z + 131 * y + 17 * x) % 65536) as u16
}

/// Rows `z0..z1` of the volume (f), as native-endian bytes; `flip` turns f into g.
fn rows(z0: u64, z1: u64, flip: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for z in z0..z1 {
        for y in 0..Y {
            for x in 0..X {
                let v = f(z, y, x) ^ if flip { 0x5555 } else { 0 };
                out.extend_from_slice(&v.to_ne_bytes());
            }
        }
    }
    out
}

/// None if `data` (shape `[z, Y, X]`) is a state the writers may leave, else what is wrong:
/// f everywhere, except that each chunk's part of [`REGION`] is all f or all g.
fn check(shape: &[u64], data: &[u16]) -> Option<String> {
    if shape.len() != 3 || shape[1..] != [Y, X] {
        return Some(format!("shape {shape:?}"));
    }
    let at = |z: u64, y: u64, x: u64| data[((z * Y + y) * X + x) as usize];
    let inside = |z: u64, y: u64, x: u64| {
        [z, y, x]
            .iter()
            .zip(&REGION)
            .all(|(&i, r)| (r[0]..r[1]).contains(&i))
    };
    // Per chunk of the region: 0 unseen, 1 all f, 2 all g.
    let mut kind = std::collections::HashMap::new();
    for z in 0..shape[0] {
        for y in 0..Y {
            for x in 0..X {
                let (v, old) = (at(z, y, x), f(z, y, x));
                if !inside(z, y, x) {
                    if v != old {
                        return Some(format!(
                            "{v} at {:?} outside the region, not {old}",
                            (z, y, x)
                        ));
                    }
                    continue;
                }
                let k = if v == old {
                    1
                } else if v == old ^ 0x5555 {
                    2
                } else {
                    return Some(format!("{v} at {:?}: neither old nor new", (z, y, x)));
                };
                let c = (z / CHUNK, y / CHUNK, x / CHUNK);
                if *kind.entry(c).or_insert(k) != k {
                    return Some(format!("chunk {c:?} mixes its old and new values"));
                }
            }
        }
    }
    None
}

/// What `chunkwise export` may say when it read `zarr.json` before an exchange (APPEND §4.3)
/// and a chunk after it, or ran between the two renames of a filesystem without exchange: a
/// chunk that does not decode under the old metadata, or no store at the path.
fn reopen_error(text: &str) -> bool {
    text.contains(": chunk c/") || text.contains("No such file or directory")
}

/// Reads `store` with `chunkwise export` in a loop until `stop`: (reads, shapes seen, reads
/// that failed as APPEND §4.3 allows when `exchanges`), or the first failure that is not.
fn export_loop(
    store: PathBuf,
    dir: PathBuf,
    stop: Arc<AtomicBool>,
    exchanges: bool,
) -> Result<(u64, Vec<u64>, u64), String> {
    let out = dir.join("read.npy");
    let (mut reads, mut shapes, mut reopened) = (0u64, Vec::new(), 0u64);
    while !stop.load(Ordering::Relaxed) || reads == 0 {
        let o = run(&["export", s(&store), "-o", s(&out), "--overwrite", "--quiet"]);
        if !o.status.success() {
            if exchanges && reopen_error(&stderr(&o)) {
                // The next read opens the array again (a new process).
                reopened += 1;
                continue;
            }
            return Err(format!("export failed after {reads} reads: {}", stderr(&o)));
        }
        let got = read_npy(&out);
        let values: Vec<u16> = got
            .bytes
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect();
        if let Some(why) = check(&got.shape, &values) {
            return Err(format!("export read {:?}: {why}", got.shape));
        }
        if !shapes.contains(&got.shape[0]) {
            shapes.push(got.shape[0]);
        }
        reads += 1;
    }
    Ok((reads, shapes, reopened))
}

/// One round of the writers: an append of `k` rows from an .npy file, a `concat --into` of a
/// store of `k2` rows (the regular layout: in place, §4.1), and a region write.
fn write_round(dir: &Path, store: &Path, r: u64) {
    let z = Store::open(store).unwrap().shape()[0];
    let k = 1 + (r * 5) % 9;
    let a = npy(
        dir,
        &format!("a{r}.npy"),
        DType::U16,
        &[k, Y, X],
        &rows(z, z + k, false),
    );
    ok(&run(&["append", s(store), s(&a), "--quiet"]), "append");
    let z = z + k;
    let k2 = 3 + r % 7;
    let b_npy = npy(
        dir,
        &format!("b{r}.npy"),
        DType::U16,
        &[k2, Y, X],
        &rows(z, z + k2, false),
    );
    let b = dir.join(format!("b{r}.zarr"));
    ok(
        &run(&[
            "convert",
            s(&b_npy),
            "-o",
            s(&b),
            "--chunks",
            "8,8,8",
            "--quiet",
        ]),
        "convert b",
    );
    ok(
        &run(&[
            "concat",
            "--into",
            s(store),
            s(&b),
            "--layout",
            "regular",
            "--quiet",
        ]),
        "concat --into",
    );
    let region = Region::new(REGION.iter().map(|r| r[0]..r[1]).collect());
    let shape: Vec<usize> = REGION.iter().map(|r| (r[1] - r[0]) as usize).collect();
    let flip = r.is_multiple_of(2);
    let data = ndarray::ArrayD::from_shape_fn(shape, |i| {
        f(
            i[0] as u64 + REGION[0][0],
            i[1] as u64 + REGION[1][0],
            i[2] as u64 + REGION[2][0],
        ) ^ if flip { 0x5555 } else { 0 }
    });
    Store::open(store)
        .unwrap()
        .write_region(&region, data.view())
        .unwrap();
}

#[test]
fn readers_during_appends_concats_and_region_writes_see_old_or_new() {
    let rounds: u64 = std::env::var("CHUNKWISE_READER_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let dir = tmp();
    let d = dir.path().to_path_buf();
    let store = d.join("s.zarr");
    let first = npy(
        &d,
        "first.npy",
        DType::U16,
        &[13, Y, X],
        &rows(0, 13, false),
    );
    ok(
        &run(&[
            "convert",
            s(&first),
            "-o",
            s(&store),
            "--chunks",
            "8,8,8",
            "--quiet",
        ]),
        "convert",
    );
    let stop_file = d.join("stop");
    let region = serde_json::to_string(&REGION).unwrap();
    let mut py = Command::new(python())
        .arg(root().join("tests/python/read_loop.py"))
        .args([s(&store), s(&stop_file), &region])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the zarr-python reader");
    let mut py_out = std::io::BufReader::new(py.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut py_out, &mut line).unwrap();
    assert_eq!(
        line.trim(),
        "ready",
        "the zarr-python reader did not start: {line}"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let exporter = {
        let (store, d, stop) = (store.clone(), d.join("exports"), stop.clone());
        std::fs::create_dir(&d).unwrap();
        std::thread::spawn(move || export_loop(store, d, stop, false))
    };
    for r in 0..rounds {
        write_round(&d, &store, r);
    }
    stop.store(true, Ordering::Relaxed);
    std::fs::write(&stop_file, b"").unwrap();
    let exported = exporter.join().expect("export reader");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut py_out, &mut rest).unwrap();
    let status = py.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut py.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "zarr-python reader: {rest}{err}");
    let summary: serde_json::Value = serde_json::from_str(rest.trim())
        .unwrap_or_else(|e| panic!("zarr-python reader said {rest:?}: {e}"));
    let (reads, shapes, _) = exported.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        summary["errors"].as_array().unwrap().is_empty(),
        "zarr-python reader: {}",
        summary["errors"]
    );
    // The readers ran during the writes: each saw the array at more than one length.
    assert!(
        shapes.len() >= 2,
        "export read {reads} times, only lengths {shapes:?}"
    );
    let py_shapes = summary["shapes"].as_array().unwrap().len();
    assert!(py_shapes >= 2, "zarr-python saw only {}", summary["shapes"]);
    // And the array the writers left is the one they wrote.
    let end = Store::open(&store).unwrap();
    let got = end.read_region::<u16>(&Region::full(end.shape())).unwrap();
    let want = ndarray::ArrayD::from_shape_fn(
        end.shape().iter().map(|&n| n as usize).collect::<Vec<_>>(),
        |i| {
            let (z, y, x) = (i[0] as u64, i[1] as u64, i[2] as u64);
            let inside = [z, y, x]
                .iter()
                .zip(&REGION)
                .all(|(&v, r)| (r[0]..r[1]).contains(&v));
            // The last round's region write: g when the round number is even.
            f(z, y, x)
                ^ if inside && (rounds - 1).is_multiple_of(2) {
                    0x5555
                } else {
                    0
                }
        },
    );
    assert!(got == want, "the final array differs from what was written");
    eprintln!(
        "readers: export {reads} reads ({} lengths), zarr-python {} reads ({py_shapes} lengths)",
        shapes.len(),
        summary["reads"]
    );
}

/// APPEND §4.3: `concat --into --layout rectilinear` onto a store whose last layer is partial
/// re-encodes that layer to its true length and exchanges the store's directory. A reader
/// (`chunkwise export`, a new process each time) then sees the old array or the new one,
/// never wrong values; one that read `zarr.json` before an exchange and a chunk after it may
/// fail naming the chunk, and reads that open the array again succeed (the last one, after
/// the writers, with the whole grown array).
#[test]
fn readers_during_exchanging_joins_see_old_or_new_or_reopen() {
    let rounds: u64 = std::env::var("CHUNKWISE_READER_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let dir = tmp();
    let d = dir.path().to_path_buf();
    let store = d.join("r.zarr");
    let first = npy(
        &d,
        "first.npy",
        DType::U16,
        &[13, Y, X],
        &rows(0, 13, false),
    );
    ok(
        &run(&[
            "convert",
            s(&first),
            "-o",
            s(&store),
            "--chunks",
            "8,8,8",
            "--quiet",
        ]),
        "convert",
    );
    let stop = Arc::new(AtomicBool::new(false));
    let exporter = {
        let (store, d, stop) = (store.clone(), d.join("exports"), stop.clone());
        std::fs::create_dir(&d).unwrap();
        std::thread::spawn(move || export_loop(store, d, stop, true))
    };
    let mut exchanged = 0;
    for r in 0..rounds {
        let z = Store::open(&store).unwrap().shape()[0];
        let k = 3 + (r * 3) % 6;
        let b_npy = npy(
            &d,
            &format!("b{r}.npy"),
            DType::U16,
            &[k, Y, X],
            &rows(z, z + k, false),
        );
        let b = d.join(format!("b{r}.zarr"));
        ok(
            &run(&[
                "convert",
                s(&b_npy),
                "-o",
                s(&b),
                "--chunks",
                "8,8,8",
                "--quiet",
            ]),
            "convert b",
        );
        let o = run(&[
            "concat",
            "--into",
            s(&store),
            s(&b),
            "--layout",
            "rectilinear",
            "--json",
        ]);
        ok(&o, "concat --into");
        let j: serde_json::Value = serde_json::from_str(&crate::common::stdout(&o)).unwrap();
        if j["exchanged"] == serde_json::Value::Bool(true) {
            exchanged += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (reads, shapes, reopened) = exporter
        .join()
        .expect("export reader")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(exchanged > 0, "no join exchanged the directory");
    assert!(
        shapes.len() >= 2,
        "export read {reads} times, only lengths {shapes:?}"
    );
    // After the writers, a read succeeds with the whole grown array.
    let out = d.join("last.npy");
    ok(
        &run(&["export", s(&store), "-o", s(&out), "--quiet"]),
        "the last export",
    );
    let got = read_npy(&out);
    let z = Store::open(&store).unwrap().shape()[0];
    assert_eq!(got.shape, vec![z, Y, X]);
    assert!(got.bytes == rows(0, z, false), "the grown array differs");
    eprintln!(
        "exchanging joins: {exchanged} exchanges; export {reads} reads ({} lengths), {reopened} \
         reopened",
        shapes.len()
    );
}
