//! Commands run in parts (`--partition I/N`, spec/SCALE.md §1-§2): every part's share, the
//! combination by the last part, and the same output as one process, byte for byte.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{stderr, stdout, tmp};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_chunkwise")
}

fn run(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("run chunkwise")
}

fn ok(args: &[&str]) -> Output {
    let o = run(args);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    o
}

/// Deterministic pseudo-random values (an LCG), with whole empty slabs so that some chunks
/// are never stored.
fn volume(dir: &Path, name: &str, dtype: chunkwise::DType, shape: &[u64]) -> PathBuf {
    let n: u64 = shape.iter().product();
    let plane: u64 = shape[1..].iter().product();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut bytes = Vec::with_capacity(n as usize * dtype.size());
    for i in 0..n {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let z = i / plane;
        let empty = (10..30).contains(&z);
        let r = (x >> 33) as u32;
        match dtype {
            chunkwise::DType::U16 => {
                let v: u16 = if empty || r.is_multiple_of(3) {
                    0
                } else {
                    (r % 1000) as u16
                };
                bytes.extend_from_slice(&v.to_le_bytes());
            }
            chunkwise::DType::F32 => {
                let v: f32 = if empty {
                    0.0
                } else {
                    (r as f32 / u32::MAX as f32 - 0.25) * 7.0
                };
                bytes.extend_from_slice(&v.to_le_bytes());
            }
            _ => unreachable!(),
        }
    }
    let npy = dir.join(format!("{name}.npy"));
    chunkwise::support::write_npy(&npy, dtype, shape, &bytes).unwrap();
    let store = dir.join(format!("{name}.zarr"));
    ok(&[
        "convert",
        npy.to_str().unwrap(),
        "-o",
        store.to_str().unwrap(),
        "--chunks",
        "8,16,16",
        "-q",
    ]);
    store
}

/// Runs `args` + `-o OUT --partition I/N` for every part, all started at once.
fn in_parts(args: &[String], out: &Path, n: u32) -> Vec<Output> {
    let children: Vec<_> = (0..n)
        .rev()
        .map(|i| {
            Command::new(bin())
                .args(args)
                .arg("-o")
                .arg(out)
                .args(["--partition", &format!("{i}/{n}")])
                .output()
        })
        .collect();
    children.into_iter().map(|c| c.unwrap()).collect()
}

/// Every splittable command that writes a file gives, in 1, 2, 3 or 7 parts (run one after
/// another, or all at once), the very file one process writes: the same `.npy` bytes for
/// where, graph and the tables, the same JSON for statistics and histograms (floats merged
/// in the same order as one process merges them, so equal to the last bit).
#[test]
fn every_reduction_in_parts_writes_what_one_process_writes() {
    let dir = tmp();
    let d = dir.path();
    let u = volume(d, "u", chunkwise::DType::U16, &[61, 40, 33]);
    let f = volume(d, "f", chunkwise::DType::F32, &[61, 40, 33]);
    let (u, f) = (u.to_str().unwrap(), f.to_str().unwrap());
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("stats.json", vec!["stats", u]),
        ("fstats.json", vec!["stats", f]),
        ("axis.npy", vec!["stats", f, "--axis", "1"]),
        (
            "axis0.json",
            vec!["stats", u, "--axis", "0", "--region", "5:50"],
        ),
        ("chunks.json", vec!["stats", f, "--per-chunk"]),
        ("hist.json", vec!["histogram", u]),
        (
            "fhist.json",
            vec!["histogram", f, "--range", "-1,3", "--bins", "9"],
        ),
        ("where.npy", vec!["where", u]),
        ("fwhere.npy", vec!["where", f, "--above", "2.5"]),
        ("graph.npy", vec!["graph", u, "--connectivity", "6"]),
        ("gcoords.npy", vec!["graph", f, "--above", "1", "--coords"]),
    ];
    for (name, args) in &cases {
        let one = d.join(format!("one-{name}"));
        let mut a: Vec<&str> = args.clone();
        a.extend(["-o", one.to_str().unwrap(), "-q"]);
        ok(&a);
        let want = std::fs::read(&one).unwrap();
        assert!(want.len() > 100, "{name}: {} bytes", want.len());
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        for n in [1, 2, 3, 7] {
            // All at once.
            let out = d.join(format!("p{n}-{name}"));
            for o in in_parts(&args, &out, n) {
                assert!(o.status.success(), "{name} in {n}: {}", stderr(&o));
            }
            assert_eq!(
                std::fs::read(&out).unwrap(),
                want,
                "{name} in {n} parts at once"
            );
            // One after another, the last part first: only the last to finish writes.
            let out = d.join(format!("s{n}-{name}"));
            for i in (0..n).rev() {
                let mut a = args.clone();
                a.extend([
                    "-o".into(),
                    out.to_str().unwrap().into(),
                    "--partition".into(),
                    format!("{i}/{n}"),
                ]);
                let a: Vec<&str> = a.iter().map(String::as_str).collect();
                let o = ok(&a);
                assert_eq!(out.exists(), i == 0, "{name}: part {i}/{n}: {}", stdout(&o));
            }
            assert_eq!(
                std::fs::read(&out).unwrap(),
                want,
                "{name} in {n} parts in turn"
            );
        }
    }
    // Nothing is left beside the outputs.
    for e in std::fs::read_dir(d).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        assert!(!name.starts_with('.'), "left behind: {name}");
    }
}

/// The parts of a job get about equal numbers of stored chunks, not of chunk layers: with
/// data only in the last quarter of a volume, the first part spans most of the layers.
#[test]
fn parts_are_balanced_by_stored_chunks() {
    let dir = tmp();
    let d = dir.path();
    let mut bytes = vec![0u8; 64 * 16 * 16];
    for (i, b) in bytes.iter_mut().enumerate() {
        if i / 256 >= 48 {
            *b = 1 + (i % 7) as u8;
        }
    }
    let npy = d.join("q.npy");
    chunkwise::support::write_npy(&npy, chunkwise::DType::U8, &[64, 16, 16], &bytes).unwrap();
    let store = d.join("q.zarr");
    let s = store.to_str().unwrap();
    ok(&[
        "convert",
        npy.to_str().unwrap(),
        "-o",
        s,
        "--chunks",
        "4,16,16",
        "-q",
    ]);
    // 16 layers, stored chunks in layers 12..16: two parts split 0..14 and 14..16.
    let out = d.join("t.zarr");
    let o = out.to_str().unwrap();
    ok(&[
        "threshold",
        s,
        o,
        "--above",
        "3",
        "--partition",
        "1/2",
        "-q",
    ]);
    let st = ok(&["status", o, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    let chunks: Vec<u64> = v["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["chunks"].as_u64().unwrap())
        .collect();
    assert_eq!(chunks, vec![14, 2], "{v}");
    assert_eq!(v["parts"][1]["state"], "done", "{v}");
    ok(&[
        "threshold",
        s,
        o,
        "--above",
        "3",
        "--partition",
        "0/2",
        "-q",
    ]);
    ok(&[
        "threshold",
        s,
        d.join("one.zarr").to_str().unwrap(),
        "--above",
        "3",
        "-q",
    ]);
    let a = chunkwise::Store::open(&out).unwrap();
    let b = chunkwise::Store::open(d.join("one.zarr")).unwrap();
    assert_eq!(
        crate::common::store_bytes(&a),
        crate::common::store_bytes(&b)
    );
    // The same split for a reduction: part 0 has layers 0..14, so rows 48..56 (2 layers).
    let w = d.join("w.npy");
    let o = ok(&["where", s, "-o", w.to_str().unwrap(), "--partition", "0/2"]);
    assert!(stdout(&o).contains("(2048 rows"), "{}", stdout(&o));
}

/// A part out of range, a different N, parts of another job and missing settings are refused
/// naming what is wrong; nothing is written.
#[test]
fn parts_of_other_jobs_and_bad_parts_are_refused() {
    let dir = tmp();
    let d = dir.path();
    let u = volume(d, "u", chunkwise::DType::U16, &[40, 20, 20]);
    let f = volume(d, "f", chunkwise::DType::F32, &[40, 20, 20]);
    let (u, f) = (u.to_str().unwrap(), f.to_str().unwrap());
    let out = d.join("s.json");
    let o = out.to_str().unwrap();
    ok(&["stats", u, "-o", o, "--partition", "0/3", "-q"]);
    let e = stderr(&run(&["stats", u, "-o", o, "--partition", "1/4"]));
    assert!(e.contains("started in 3 parts") && e.contains("1/4"), "{e}");
    let e = stderr(&run(&["stats", f, "-o", o, "--partition", "1/3"]));
    assert!(e.contains("another job") && e.contains("u.zarr"), "{e}");
    let e = stderr(&run(&["stats", u, "-o", o, "--partition", "3/3"]));
    assert!(e.contains("3/3") && e.contains("0 <= I < N"), "{e}");
    let e = stderr(&run(&[
        "histogram",
        f,
        "-o",
        "h.json",
        "--partition",
        "0/2",
    ]));
    assert!(e.contains("--range"), "{e}");
    let e = stderr(&run(&["stats", u, "--partition", "0/2"]));
    assert!(e.contains("-o"), "{e}");
    let e = stderr(&run(&["where", u, "--count-only", "--partition", "0/2"]));
    assert!(e.contains("output"), "{e}");
    assert!(!out.exists());
    // status says which parts are done and which are missing.
    let st = stdout(&ok(&["status", o]));
    assert!(
        st.contains("part 0/3: done") && st.contains("part 2/3: missing"),
        "{st}"
    );
    ok(&["stats", u, "-o", o, "--partition", "2/3", "-q"]);
    ok(&["stats", u, "-o", o, "--partition", "1/3", "-q"]);
    assert!(stdout(&ok(&["status", o])).contains("published"));
    // A rerun of a part after the output is written is refused, not run into a new job.
    let e = stderr(&run(&["stats", u, "-o", o, "--partition", "1/3"]));
    assert!(e.contains("exists"), "{e}");
}
