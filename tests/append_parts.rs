//! `append --partition I/N` (spec/SCALE.md §1, APPEND §5.2): the parts of an append each
//! place their share of the new layers, the last to finish commits, and the array is the
//! one a single append gives (the in-memory concatenation), whatever the parts' order, their
//! number, a kill at any step or a part started twice.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use chunkwise::{DType, Store};

use crate::common::{need_crash_points, stderr, stdout, store_bytes, tmp};

fn cw() -> Command {
    Command::new(env!("CARGO_BIN_EXE_chunkwise"))
}

fn run(args: &[&str]) -> Output {
    cw().args(args).output().expect("run chunkwise")
}

fn ok(args: &[&str]) -> Output {
    let o = run(args);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    o
}

/// Pseudo-random uint16 rows (an LCG), with an all-zero slab so that some new chunks are
/// fill value (never stored).
fn rows(shape: &[u64], seed: u64) -> Vec<u8> {
    let n: u64 = shape.iter().product();
    let plane: u64 = shape[1..].iter().product();
    let mut x = seed;
    let mut out = Vec::with_capacity(n as usize * 2);
    for i in 0..n {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let z = i / plane;
        let v: u16 = if (40..72).contains(&z) {
            0
        } else {
            (x >> 40) as u16
        };
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

struct Case {
    dir: tempfile::TempDir,
    /// The array's rows before, and the appended rows (bytes, C order).
    old: Vec<u8>,
    new: Vec<u8>,
    npy: PathBuf,
    base: PathBuf,
}

const OLD: [u64; 3] = [100, 16, 16];
const NEW: [u64; 3] = [170, 16, 16];

fn case() -> Case {
    let dir = tmp();
    let old = rows(&OLD, 7);
    let new = rows(&NEW, 11);
    let a = dir.path().join("a.npy");
    chunkwise::support::write_npy(&a, DType::U16, &OLD, &old).unwrap();
    let npy = dir.path().join("b.npy");
    chunkwise::support::write_npy(&npy, DType::U16, &NEW, &new).unwrap();
    let base = dir.path().join("base.zarr");
    // 32-row chunks: the old extent (100) leaves a partial edge layer, re-encoded once.
    ok(&[
        "convert",
        a.to_str().unwrap(),
        "-o",
        base.to_str().unwrap(),
        "--chunks",
        "32,8,8",
        "-q",
    ]);
    Case {
        dir,
        old,
        new,
        npy,
        base,
    }
}

impl Case {
    /// A fresh copy of the array to append to.
    fn target(&self, name: &str) -> PathBuf {
        let t = self.dir.path().join(name);
        let _ = std::fs::remove_dir_all(&t);
        copy_dir(&self.base, &t);
        t
    }

    fn part(&self, t: &Path, i: u32, n: u32) -> Command {
        let mut c = cw();
        c.args([
            "append",
            t.to_str().unwrap(),
            self.npy.to_str().unwrap(),
            "--partition",
            &format!("{i}/{n}"),
            "--checkpoint-secs",
            "0",
        ]);
        c
    }

    fn joined(&self) -> Vec<u8> {
        [self.old.clone(), self.new.clone()].concat()
    }

    /// The array at `t` is the old one (0) or the appended one (1), nothing else.
    fn state(&self, t: &Path, what: &str) -> usize {
        let s = Store::open(t).unwrap_or_else(|e| panic!("{what}: {e}"));
        let bytes = store_bytes(&s);
        if s.shape() == OLD && bytes == self.old {
            0
        } else if s.shape() == [270, 16, 16] && bytes == self.joined() {
            1
        } else {
            panic!(
                "{what}: neither the old nor the appended array: {:?}",
                s.shape()
            );
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}

/// The names a committed append must not leave behind.
fn leftovers(t: &Path) -> Vec<String> {
    std::fs::read_dir(t)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.starts_with(".chunkwise-progress")
                || n.starts_with(".chunkwise-part")
                || n.starts_with(".chunkwise-staging")
        })
        .collect()
}

fn wait_all(children: Vec<Child>) -> Vec<Output> {
    children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect()
}

/// SCALE §1: N parts started at once, or one after another in any order, give the array one
/// append gives: the in-memory concatenation, every byte; until the last part the array is
/// the old one; a rerun of any part then says "already done".
#[test]
fn append_in_parts_is_one_append() {
    let c = case();
    let one = c.target("one.zarr");
    ok(&["append", one.to_str().unwrap(), c.npy.to_str().unwrap()]);
    assert_eq!(c.state(&one, "one append"), 1);
    // 170 new rows onto 100 in 32-row chunks: layers 3 (the edge) to 8, six layers; 7 parts
    // leaves one part with none.
    for n in [1u32, 2, 3, 7] {
        for round in 0..2 {
            let t = c.target(&format!("p{n}.{round}.zarr"));
            let outs = wait_all(
                (0..n)
                    .rev()
                    .map(|i| {
                        c.part(&t, i, n)
                            .stdout(Stdio::piped())
                            .stderr(Stdio::piped())
                            .spawn()
                            .unwrap()
                    })
                    .collect(),
            );
            for o in &outs {
                assert!(o.status.success(), "{n} parts at once: {}", stderr(o));
            }
            let committed = outs
                .iter()
                .filter(|o| stdout(o).starts_with("appended to"))
                .count();
            assert_eq!(committed, 1, "{n} parts: exactly one commits");
            assert_eq!(c.state(&t, &format!("{n} parts at once")), 1);
            assert_eq!(store_bytes(&Store::open(&t).unwrap()), c.joined());
            assert!(leftovers(&t).is_empty(), "{n} parts: {:?}", leftovers(&t));
        }
        // One after another, last part first: the array stays the old one until the last.
        let t = c.target(&format!("s{n}.zarr"));
        for i in (0..n).rev() {
            let o = c.part(&t, i, n).output().unwrap();
            assert!(o.status.success(), "{}", stderr(&o));
            if i > 0 {
                assert!(
                    stdout(&o).contains(&format!("{} of {n} parts", n - i)),
                    "{}",
                    stdout(&o)
                );
                assert_eq!(c.state(&t, "before the last part"), 0);
                let st = ok(&["status", t.to_str().unwrap(), "--json"]);
                let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
                assert_eq!(v["building"], true);
                assert_eq!(v["parts"].as_array().unwrap().len(), n as usize);
                for (k, p) in v["parts"].as_array().unwrap().iter().enumerate() {
                    let want = if k >= i as usize { "done" } else { "missing" };
                    // A part with no layers is done from the start.
                    if p["chunks"] != 0 {
                        assert_eq!(p["state"], want, "part {k}/{n} after parts {i}..: {v}");
                    }
                }
            }
        }
        assert_eq!(c.state(&t, &format!("{n} parts one by one")), 1);
        assert!(leftovers(&t).is_empty(), "{:?}", leftovers(&t));
        let o = c.part(&t, 0, n).output().unwrap();
        assert!(
            stdout(&o).contains("already done"),
            "{n} parts, rerun: {}",
            stdout(&o)
        );
    }
}

/// A part killed at every step of its protocol leaves the old array (or, after the commit,
/// the new one); its rerun resumes what it had placed, and the parts finish the append.
#[test]
fn a_killed_part_resumes_and_the_append_completes() {
    need_crash_points();
    let c = case();
    for step in [
        "part-opened",
        "placing",
        "checkpointed",
        "part-finished",
        "journaled",
        "committed",
    ] {
        let t = c.target(&format!("k-{step}.zarr"));
        // Parts 0 and 2 finish first; part 1 (the last) is killed at the step.
        for i in [0, 2] {
            let o = c.part(&t, i, 3).output().unwrap();
            assert!(o.status.success(), "{}", stderr(&o));
        }
        let o = c
            .part(&t, 1, 3)
            .env("CHUNKWISE_CRASH_AT", step)
            .output()
            .unwrap();
        assert!(!o.status.success(), "{step}: the part was not killed");
        let committed = step == "committed";
        assert_eq!(
            c.state(&t, &format!("killed at {step}")),
            usize::from(committed),
            "killed at {step}: old (0) or new (1)"
        );
        let o = c.part(&t, 1, 3).output().unwrap();
        assert!(o.status.success(), "{step}, rerun: {}", stderr(&o));
        let said = stdout(&o);
        if committed {
            assert!(said.contains("already done"), "{step}: {said}");
        } else {
            assert!(said.starts_with("appended to"), "{step}: {said}");
        }
        if step == "checkpointed" || step == "part-finished" {
            assert!(said.contains("resumed: kept"), "{step}: {said}");
        }
        assert_eq!(c.state(&t, &format!("after {step}, rerun")), 1);
        assert!(leftovers(&t).is_empty(), "{step}: {:?}", leftovers(&t));
    }
    // A killed one-process append of other data: its record and the chunks it placed past
    // the extent are another edit's, removed by the parts, whose result is still exact.
    let t = c.target("stale.zarr");
    let other = c.dir.path().join("other.npy");
    chunkwise::support::write_npy(&other, DType::U16, &NEW, &rows(&NEW, 99)).unwrap();
    let o = cw()
        .args([
            "append",
            t.to_str().unwrap(),
            other.to_str().unwrap(),
            "--checkpoint-secs",
            "0",
        ])
        .env("CHUNKWISE_CRASH_AT", "checkpointed")
        .output()
        .unwrap();
    assert!(!o.status.success());
    for i in 0..2 {
        let o = c.part(&t, i, 2).output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(!stdout(&o).contains("resumed"), "{}", stdout(&o));
    }
    assert_eq!(c.state(&t, "parts after a stale append"), 1);
}

/// Bad parts: another N than the job's (both named), a part already running, another
/// writer while parts run, a grid whose edge must change length, and joins, which do not
/// split.
#[test]
fn bad_parts_are_refused_and_change_nothing() {
    need_crash_points();
    let c = case();
    let t = c.target("bad.zarr");
    let o = c.part(&t, 0, 3).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = c.part(&t, 1, 4).output().unwrap();
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("1/4") && e.contains("3 parts"), "{e}");
    let o = c.part(&t, 3, 3).output().unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("3/3"), "{}", stderr(&o));
    assert_eq!(c.state(&t, "after refused parts"), 0);

    // While part 1 runs (slowed down): the same part again, a one-process append and a part
    // of another append are refused; the running part is unharmed.
    let slow = c
        .part(&t, 1, 3)
        .env("CHUNKWISE_TEST_CHUNK_DELAY_MS", "300")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let running = || {
        let st = ok(&["status", t.to_str().unwrap(), "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
        v["parts"][1]["running"] == true
    };
    let t0 = std::time::Instant::now();
    while !running() {
        assert!(t0.elapsed().as_secs() < 30, "part 1 never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let o = c.part(&t, 1, 3).output().unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("part 1/3"), "{}", stderr(&o));
    let o = run(&["append", t.to_str().unwrap(), c.npy.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("being written"), "{}", stderr(&o));
    let other = c.dir.path().join("other.npy");
    chunkwise::support::write_npy(&other, DType::U16, &NEW, &rows(&NEW, 99)).unwrap();
    let o = run(&[
        "append",
        t.to_str().unwrap(),
        other.to_str().unwrap(),
        "--partition",
        "0/2",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("another append"), "{}", stderr(&o));
    let o = slow.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = c.part(&t, 2, 3).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(c.state(&t, "after the parts"), 1);

    // A rectilinear append whose edge layer changes length is one exchange, not parts.
    let r = c.target("rect.zarr");
    let o = run(&[
        "append",
        r.to_str().unwrap(),
        c.npy.to_str().unwrap(),
        "--layout",
        "rectilinear",
        "--partition",
        "0/2",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--partition"), "{}", stderr(&o));
    assert_eq!(c.state(&r, "refused rectilinear parts"), 0);
    // Joins link chunks: nothing to split.
    let o = run(&[
        "concat",
        c.base.to_str().unwrap(),
        r.to_str().unwrap(),
        "-o",
        c.dir.path().join("j.zarr").to_str().unwrap(),
        "--partition",
        "0/2",
    ]);
    assert!(!o.status.success());
}

/// SCALE §1: the parts share out chunks, not layers: an append that touches one chunk layer
/// (20 rows into the partial edge layer) in 3 parts has each part encode its own chunks of it,
/// and together the chunks one append encodes.
#[test]
fn parts_share_the_chunks_of_one_layer() {
    let c = case();
    let small = c.dir.path().join("small.npy");
    let rows20 = rows(&[20, 16, 16], 13);
    chunkwise::support::write_npy(&small, DType::U16, &[20, 16, 16], &rows20).unwrap();
    let one = c.target("one-layer.zarr");
    let o = ok(&[
        "append",
        one.to_str().unwrap(),
        small.to_str().unwrap(),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let want = v["chunks_encoded"].as_u64().unwrap();
    assert_eq!(want, 4, "one layer of 2x2 chunks: {v}");
    let t = c.target("one-layer-parts.zarr");
    let mut encoded = Vec::new();
    for i in 0..3 {
        let o = ok(&[
            "append",
            t.to_str().unwrap(),
            small.to_str().unwrap(),
            "--partition",
            &format!("{i}/3"),
            "--json",
        ]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        encoded.push(v["chunks_encoded"].as_u64().unwrap());
    }
    assert!(
        encoded.iter().all(|&e| e > 0),
        "each part encodes chunks: {encoded:?}"
    );
    assert_eq!(encoded.iter().sum::<u64>(), want, "{encoded:?}");
    let s = Store::open(&t).unwrap();
    assert_eq!(s.shape(), [120, 16, 16]);
    assert_eq!(store_bytes(&s), [c.old.clone(), rows20].concat());
}
