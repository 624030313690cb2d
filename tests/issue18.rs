//! Regression tests for issue 18: correctness bugs found using chunkwise the way people do
//! (concurrent outputs, kills during `--overwrite`, symlinks, stale results, 64-bit
//! thresholds, odd names, and the smaller ones). Each numbered item of the issue has a test
//! named after it; the oracle is the in-memory array (numpy's definitions, on bytes here).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use chunkwise::{DType, Store};

use crate::common::{
    NOBODY, Tmpfs, chunkwise as cw, npy, ok, s, stderr, stdout, store_bytes, tmp, u16s,
};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_chunkwise")
}

fn convert(input: &Path, out: &Path, chunks: &str) {
    ok(
        &cw(&["convert", s(input), "-o", s(out), "--chunks", chunks, "-q"]),
        "convert",
    );
}

fn data(p: &Path) -> (Vec<u64>, Vec<u8>) {
    let st = Store::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (st.shape().to_vec(), store_bytes(&st))
}

/// Starts two chunkwise runs at the same instant; their outputs.
fn together(a: &[&str], b: &[&str]) -> (Output, Output) {
    let spawn = |args: &[&str]| {
        Command::new(bin())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (pa, pb) = (spawn(a), spawn(b));
    (
        pa.wait_with_output().unwrap(),
        pb.wait_with_output().unwrap(),
    )
}

/// Names in `dir` that only a running writer may leave.
fn temps(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("chunkwise-"))
        .collect()
}

/// Issue 18.1: two runs writing the same output file (export, where, graph) never corrupt it:
/// without --overwrite the file is exactly one run's output and the other run failed (it
/// exists) or was first; with --overwrite the file is exactly one run's output; no temporary
/// file is left.
#[test]
fn item1_two_writers_of_one_file_never_mix() {
    let dir = tmp();
    let d = dir.path();
    // Disjoint value ranges: a's values are < 1000, b's >= 2000.
    let shape = [32u64, 128, 128];
    let n = shape.iter().product::<u64>() as usize;
    let a = npy(d, "a.npy", DType::U16, &shape, &u16s(n, 1, 0, 1000));
    let b = npy(d, "b.npy", DType::U16, &shape, &u16s(n, 2, 2000, 1000));
    let (az, bz) = (d.join("a.zarr"), d.join("b.zarr"));
    convert(&a, &az, "16,64,64");
    convert(&b, &bz, "16,64,64");
    type Cmd = fn(&Path, &Path) -> Vec<String>;
    let cmds: [(&str, Cmd); 3] = [
        ("export", |st, o| {
            vec!["export".into(), s(st).into(), "-o".into(), s(o).into()]
        }),
        ("where", |st, o| {
            // Different counts: the files differ in length as well as content.
            let t = if s(st).ends_with("a.zarr") {
                "500"
            } else {
                "2900"
            };
            vec![
                "where".into(),
                s(st).into(),
                "-o".into(),
                s(o).into(),
                "--above".into(),
                t.into(),
            ]
        }),
        ("graph", |st, o| {
            let t = if s(st).ends_with("a.zarr") {
                "900"
            } else {
                "2100"
            };
            vec![
                "graph".into(),
                s(st).into(),
                "-o".into(),
                s(o).into(),
                "--above".into(),
                t.into(),
            ]
        }),
    ];
    for (name, cmd) in cmds {
        // Each run's output alone.
        let (ra, rb) = (
            d.join(format!("{name}_a.npy")),
            d.join(format!("{name}_b.npy")),
        );
        ok(
            &cw(&cmd(&az, &ra).iter().map(String::as_str).collect::<Vec<_>>()),
            name,
        );
        ok(
            &cw(&cmd(&bz, &rb).iter().map(String::as_str).collect::<Vec<_>>()),
            name,
        );
        let (wa, wb) = (std::fs::read(&ra).unwrap(), std::fs::read(&rb).unwrap());
        assert_ne!(wa, wb);
        let out = d.join(format!("{name}_o.npy"));
        for round in 0..5 {
            for overwrite in [false, true] {
                if !overwrite {
                    let _ = std::fs::remove_file(&out);
                }
                let mut aa = cmd(&az, &out);
                let mut ba = cmd(&bz, &out);
                if overwrite {
                    aa.push("--overwrite".into());
                    ba.push("--overwrite".into());
                }
                let (oa, ob) = together(
                    &aa.iter().map(String::as_str).collect::<Vec<_>>(),
                    &ba.iter().map(String::as_str).collect::<Vec<_>>(),
                );
                let what = format!("{name} round {round} overwrite {overwrite}");
                let got = std::fs::read(&out).unwrap_or_else(|e| panic!("{what}: {e}"));
                assert!(got == wa || got == wb, "{what}: the file mixes both runs");
                for (o, mine) in [(&oa, &wa), (&ob, &wb)] {
                    if o.status.success() {
                        // Without --overwrite only one succeeds (asserted below): it published
                        // exactly its own output.
                        assert!(
                            overwrite || &got == mine,
                            "{what}: a run exited 0 with the other's data"
                        );
                    } else {
                        assert!(
                            !overwrite && stderr(o).contains("already exists"),
                            "{what}: {}",
                            stderr(o)
                        );
                    }
                }
                assert!(
                    overwrite || !(oa.status.success() && ob.status.success()),
                    "{what}: both runs claim to have written a new file"
                );
                assert!(temps(d).is_empty(), "{what}: left {:?}", temps(d));
            }
        }
    }
}

/// Issue 18.2: `--overwrite` never leaves the output path empty: killed right after the
/// replacing exchange the path holds the new array (and a rerun leaves nothing behind); killed
/// at random instants it holds the old array or the new one.
#[test]
fn item2_a_kill_during_overwrite_leaves_the_old_or_the_new_array() {
    crate::common::need_crash_points();
    let dir = tmp();
    let d = dir.path();
    let shape = [40u64, 64, 64];
    let n = shape.iter().product::<u64>() as usize;
    let (va, vb) = (u16s(n, 1, 0, 1000), u16s(n, 2, 2000, 1000));
    let a = npy(d, "a.npy", DType::U16, &shape, &va);
    let b = npy(d, "b.npy", DType::U16, &shape, &vb);
    let o = d.join("o.zarr");
    let args = [
        "convert",
        s(&b),
        "-o",
        s(&o),
        "--chunks",
        "8,32,32",
        "--overwrite",
        "-q",
    ];
    convert(&a, &o, "8,32,32");
    let killed = Command::new(bin())
        .args(args)
        .env("CHUNKWISE_CRASH_AT", "exchanged")
        .output()
        .unwrap();
    assert!(!killed.status.success(), "the crash point was not reached");
    assert_eq!(
        data(&o).1,
        vb,
        "after the exchange the path holds the new array"
    );
    ok(&cw(&["info", s(&o)]), "info");
    ok(&cw(&args), "rerun");
    assert_eq!(data(&o).1, vb);
    assert!(temps(d).is_empty(), "left {:?}", temps(d));
    // Random instants over the whole run.
    let t0 = std::time::Instant::now();
    ok(&cw(&args), "timing run");
    let full = t0.elapsed();
    let mut seen = [0usize; 2];
    for round in 0..30u32 {
        // A fresh old array each round.
        std::fs::remove_dir_all(&o).unwrap();
        convert(&a, &o, "8,32,32");
        let mut child = Command::new(bin())
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(full.mul_f64(f64::from(round % 15) / 10.0));
        child.kill().ok();
        child.wait().unwrap();
        let got = data(&o).1;
        let state = if got == va {
            0
        } else {
            assert!(
                got == vb,
                "round {round}: neither the old nor the new array"
            );
            1
        };
        seen[state] += 1;
        ok(&cw(&args), "rerun");
        assert_eq!(data(&o).1, vb);
        assert!(temps(d).is_empty(), "round {round}: left {:?}", temps(d));
    }
    assert!(seen[0] > 0, "no kill landed before the exchange: {seen:?}");
}

/// Issue 18.2, the filesystems that cannot exchange directories: an interrupted replacement
/// left the old array aside (`.NAME.chunkwise-old`) and nothing at the path; the next writer
/// puts it back before doing anything else.
#[test]
fn item2_an_interrupted_two_rename_replacement_is_put_back() {
    let dir = tmp();
    let d = dir.path();
    let shape = [10u64, 8, 8];
    let va = u16s(640, 1, 0, 100);
    let a = npy(d, "a.npy", DType::U16, &shape, &va);
    let b = npy(d, "b.npy", DType::U16, &[2, 8, 8], &u16s(128, 2, 0, 100));
    let o = d.join("o.zarr");
    convert(&a, &o, "4,8,8");
    std::fs::rename(&o, d.join(".o.zarr.chunkwise-old")).unwrap();
    ok(
        &cw(&["append", s(&o), s(&b)]),
        "append after the interrupted replacement",
    );
    let (shape_now, bytes) = data(&o);
    assert_eq!(shape_now, vec![12, 8, 8]);
    assert_eq!(&bytes[..va.len()], &va[..]);
    assert!(temps(d).is_empty(), "left {:?}", temps(d));
}

/// Issue 18.3: a store given through a symbolic link is edited where the link points, and
/// the link stays a link, for an in-place exchange (`concat --into --layout rectilinear`),
/// `append --layout rectilinear`, and `--overwrite` (convert, gaussian). Across filesystems
/// (the link on a tmpfs, the store on the root filesystem) the chunks are still linked, not
/// copied.
#[test]
fn item3_growing_through_a_symlink_edits_the_target() {
    let dir = tmp();
    let d = dir.path();
    let (va, vb) = (u16s(44 * 256, 1, 0, 1000), u16s(21 * 256, 2, 0, 1000));
    let a = npy(d, "a.npy", DType::U16, &[44, 16, 16], &va);
    let b = npy(d, "b.npy", DType::U16, &[21, 16, 16], &vb);
    std::fs::create_dir(d.join("real")).unwrap();
    let real = d.join("real/v.zarr");
    let bz = d.join("b.zarr");
    convert(&b, &bz, "8,8,8");
    let fs = Tmpfs::mount("links18");
    let link = fs.path.join("link.zarr");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let is_link = |p: &Path| {
        std::fs::symlink_metadata(p)
            .unwrap()
            .file_type()
            .is_symlink()
    };
    let cases: [&[&str]; 2] = [
        &[
            "concat",
            "--into",
            s(&link),
            s(&bz),
            "--layout",
            "rectilinear",
        ],
        &["append", s(&link), s(&b), "--layout", "rectilinear"],
    ];
    for args in cases {
        if real.exists() {
            std::fs::remove_dir_all(&real).unwrap();
        }
        convert(&a, &real, "8,8,8");
        let o = cw(&[args, &["--json"]].concat());
        ok(&o, args[0]);
        let rep: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(rep["exchanged"], true, "{}: the exchange path ran", args[0]);
        assert!(is_link(&link), "{}: the link was replaced", args[0]);
        let (shape, bytes) = data(&real);
        assert_eq!(shape, vec![65, 16, 16], "{}: the real store grew", args[0]);
        assert!(
            bytes == [&va[..], &vb].concat(),
            "{}: numpy.concatenate",
            args[0]
        );
        assert!(temps(&fs.path).is_empty() && temps(&d.join("real")).is_empty());
    }
    // The joined chunks of b are b's files (hard links), not copies made across filesystems.
    let first_b_chunk = |p: &Path| {
        std::fs::metadata(p.join("c/6/0/0"))
            .map(|m| m.ino())
            .unwrap()
    };
    if real.exists() {
        std::fs::remove_dir_all(&real).unwrap();
    }
    convert(&a, &real, "8,8,8");
    ok(
        &cw(&[
            "concat",
            "--into",
            s(&link),
            s(&bz),
            "--layout",
            "rectilinear",
        ]),
        "concat --into",
    );
    assert_eq!(
        first_b_chunk(&real),
        std::fs::metadata(bz.join("c/0/0/0")).unwrap().ino(),
        "b's first chunk was copied instead of linked"
    );
    // --overwrite onto a link: the target is replaced, the link stays.
    ok(
        &cw(&["convert", s(&b), "-o", s(&link), "--overwrite", "-q"]),
        "convert --overwrite",
    );
    assert!(is_link(&link));
    assert_eq!(data(&real).1, vb);
    let g_real = d.join("real/g.zarr");
    let g_link = fs.path.join("g.zarr");
    std::os::unix::fs::symlink(&g_real, &g_link).unwrap();
    ok(
        &cw(&["gaussian", s(&bz), s(&g_link), "--sigma", "1"]),
        "gaussian",
    );
    ok(
        &cw(&[
            "gaussian",
            s(&bz),
            s(&g_link),
            "--sigma",
            "2",
            "--overwrite",
        ]),
        "gaussian --overwrite",
    );
    assert!(is_link(&g_link));
    assert_eq!(data(&g_real).0, vec![21, 16, 16]);
}

/// Issue 18.4: every writer takes the store lock, `--overwrite` included: a convert
/// --overwrite onto an array another writer holds is refused; racing an append, the array
/// ends as exactly one writer's result and no staging directory is left in it.
#[test]
fn item4_overwrite_takes_the_store_lock() {
    let dir = tmp();
    let d = dir.path();
    let shape = [64u64, 64, 64];
    let n = shape.iter().product::<u64>() as usize;
    let (va, vb, vc) = (
        u16s(n, 1, 0, 1000),
        u16s(n, 2, 0, 1000),
        u16s(n, 3, 0, 1000),
    );
    let a = npy(d, "a.npy", DType::U16, &shape, &va);
    let b = npy(d, "b.npy", DType::U16, &shape, &vb);
    let c = npy(d, "c.npy", DType::U16, &shape, &vc);
    let st = d.join("s.zarr");
    convert(&a, &st, "16,32,32");
    // Another process holding the lock (flock(1) stands in for a running append).
    let mut holder = Command::new("flock")
        .arg(st.join(".chunkwise.lock"))
        .args(["sleep", "30"])
        .spawn()
        .expect("flock(1) from util-linux");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let o = cw(&["convert", s(&c), "-o", s(&st), "--overwrite", "-q"]);
    holder.kill().ok();
    holder.wait().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("locked"), "{}", stderr(&o));
    assert_eq!(data(&st).1, va, "the array was replaced under the lock");
    // Racing for real.
    let appended = [&va[..], &vb].concat();
    for round in 0..12 {
        if st.exists() {
            std::fs::remove_dir_all(&st).unwrap();
        }
        convert(&a, &st, "16,32,32");
        let (oa, oc) = together(
            &["append", s(&st), s(&b), "-q"],
            &["convert", s(&c), "-o", s(&st), "--overwrite", "-q"],
        );
        let what = format!("round {round}");
        let got = data(&st).1;
        assert!(
            st.join("zarr.json").exists() && !st.join(".chunkwise-staging").exists(),
            "{what}: staging left in the array"
        );
        match (oa.status.success(), oc.status.success()) {
            // One after the other: the later one's result.
            (true, true) => assert!(got == vc || got == [&vc[..], &vb].concat(), "{what}"),
            (true, false) => {
                assert!(stderr(&oc).contains("locked"), "{what}: {}", stderr(&oc));
                assert!(got == appended, "{what}: not the append's result");
            }
            (false, true) => {
                assert!(stderr(&oa).contains("locked"), "{what}: {}", stderr(&oa));
                assert!(got == vc, "{what}: not the convert's result");
            }
            (false, false) => panic!("{what}: both failed: {} / {}", stderr(&oa), stderr(&oc)),
        }
    }
}

/// Issue 18.5: `concat --move` whose inputs this user cannot remove (their directory is not
/// writable) is refused before anything changes, and again on a rerun; without --move the
/// join works. Run as an ordinary user (root may remove anything).
#[test]
fn item5_move_from_an_unwritable_directory_changes_nothing() {
    let fs = Tmpfs::mount("move18");
    let m = fs.path.clone();
    let bin_copy = m.join("chunkwise");
    std::fs::copy(bin(), &bin_copy).unwrap();
    std::fs::set_permissions(&bin_copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    let ro = m.join("rodir");
    let out = m.join("out");
    std::fs::create_dir(&ro).unwrap();
    std::fs::create_dir(&out).unwrap();
    let (va, vb) = (u16s(20 * 64, 1, 0, 100), u16s(12 * 64, 2, 0, 100));
    let a = npy(&m, "a.npy", DType::U16, &[20, 8, 8], &va);
    let b = npy(&m, "b.npy", DType::U16, &[12, 8, 8], &vb);
    convert(&a, &ro.join("a.zarr"), "4,8,8");
    convert(&b, &ro.join("b.zarr"), "4,8,8");
    // The user owns the inputs and the output directory, not the inputs' directory.
    let chown = |p: &Path| {
        let o = Command::new("chown")
            .args(["-R", &format!("{NOBODY}:{NOBODY}")])
            .arg(p)
            .output()
            .unwrap();
        ok(&o, "chown");
    };
    chown(&ro.join("a.zarr"));
    chown(&ro.join("b.zarr"));
    chown(&out);
    let as_user = |args: &[&str]| {
        Command::new("setpriv")
            .args([
                &format!("--reuid={NOBODY}"),
                &format!("--regid={NOBODY}"),
                "--clear-groups",
            ])
            .arg(&bin_copy)
            .args(args)
            .output()
            .unwrap()
    };
    let ab = out.join("ab.zarr");
    let (raz, rbz) = (ro.join("a.zarr"), ro.join("b.zarr"));
    let join = ["concat", s(&raz), s(&rbz), "-o", s(&ab), "--move"];
    for attempt in ["first", "rerun"] {
        let o = as_user(&join);
        assert_eq!(o.status.code(), Some(2), "{attempt}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(
            e.contains("cannot be removed") && e.contains("rodir"),
            "{attempt}: {e}"
        );
        assert!(!ab.exists(), "{attempt}: the output was written");
        assert_eq!(data(&ro.join("a.zarr")).1, va, "{attempt}: a changed");
        assert_eq!(data(&ro.join("b.zarr")).1, vb, "{attempt}: b changed");
    }
    let o = as_user(&join[..5]);
    ok(&o, "concat without --move");
    assert!(data(&ab).1 == [&va[..], &vb].concat());
}

/// Issue 18.6: a changed input is noticed. After `b.zarr` is rewritten with the same shape and
/// type but new values, `concat`/`stack --overwrite` rebuild (not "already done"), a plain
/// rerun says the output exists, and a job on the changed input is another job; an append of
/// a raw file is checked before a rerun can be "already done".
#[test]
fn item6_a_changed_input_is_noticed() {
    let dir = tmp();
    let d = dir.path();
    let (va, vb, vb2) = (
        u16s(16 * 64, 1, 0, 100),
        u16s(16 * 64, 2, 0, 100),
        u16s(16 * 64, 3, 0, 100),
    );
    let a = npy(d, "a.npy", DType::U16, &[16, 8, 8], &va);
    let b = npy(d, "b.npy", DType::U16, &[16, 8, 8], &vb);
    let b2 = npy(d, "b2.npy", DType::U16, &[16, 8, 8], &vb2);
    let (az, bz, ab, st) = (
        d.join("a.zarr"),
        d.join("b.zarr"),
        d.join("ab.zarr"),
        d.join("st.zarr"),
    );
    convert(&a, &az, "4,8,8");
    convert(&b, &bz, "4,8,8");
    ok(&cw(&["concat", s(&az), s(&bz), "-o", s(&ab)]), "concat");
    ok(&cw(&["stack", s(&az), s(&bz), "-o", s(&st)]), "stack");
    ok(
        &cw(&["gaussian", s(&bz), s(&d.join("g.zarr")), "--sigma", "1"]),
        "gaussian",
    );
    ok(
        &cw(&[
            "convert",
            s(&b2),
            "-o",
            s(&bz),
            "--chunks",
            "4,8,8",
            "--overwrite",
            "-q",
        ]),
        "rewrite b",
    );
    for (args, want) in [
        (
            vec!["concat", s(&az), s(&bz), "-o", s(&ab)],
            [&va[..], &vb2].concat(),
        ),
        (
            vec!["stack", s(&az), s(&bz), "-o", s(&st)],
            [&va[..], &vb2].concat(),
        ),
    ] {
        let o = cw(&args);
        assert_eq!(o.status.code(), Some(2), "{}: {}", args[0], stdout(&o));
        assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
        // (`stack` has no --again.)
        let agains: &[bool] = if args[0] == "concat" {
            &[false, true]
        } else {
            &[false]
        };
        for &again in agains {
            let mut a2 = args.clone();
            a2.push("--overwrite");
            if again {
                a2.push("--again");
            }
            let o = cw(&a2);
            ok(&o, args[0]);
            assert!(!stdout(&o).contains("already done"), "{}", stdout(&o));
            assert!(
                data(Path::new(args[4])).1 == want,
                "{}: the stale result",
                args[0]
            );
        }
        // Unchanged inputs: a rerun is "already done", and says which flag rebuilds.
        let o = cw(&args);
        ok(&o, "rerun");
        assert!(stdout(&o).contains("already done") && stdout(&o).contains("--overwrite"));
    }
    let o = cw(&["gaussian", s(&bz), s(&d.join("g.zarr")), "--sigma", "1"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "the job on the changed input was 'already done'"
    );
    assert!(stderr(&o).contains("--overwrite"), "{}", stderr(&o));
    // A raw append: the same command again is done; without its type and shape, or with a
    // wrong shape, it is an error.
    let raw = d.join("plain.bin");
    std::fs::write(&raw, &vb).unwrap();
    let v = d.join("v.zarr");
    convert(&a, &v, "4,8,8");
    let args = [
        "append",
        s(&v),
        s(&raw),
        "--dtype",
        "uint16",
        "--shape",
        "16,8,8",
    ];
    ok(&cw(&args), "raw append");
    let o = cw(&args);
    ok(&o, "rerun");
    assert!(stdout(&o).contains("already done"), "{}", stdout(&o));
    let o = cw(&args[..3]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "without --dtype/--shape: {}",
        stdout(&o)
    );
    let o = cw(&[
        "append",
        s(&v),
        s(&raw),
        "--dtype",
        "uint16",
        "--shape",
        "8,8,8",
    ]);
    assert_eq!(o.status.code(), Some(2), "a wrong --shape: {}", stdout(&o));
    assert_eq!(data(&v).0, vec![32, 8, 8]);
}

/// Issue 18.7: `stats --axis 0` of a 1-D array gives one row per element (count 1, the value
/// as min, max, sum and mean), whatever the chunking, for integers and floats.
#[test]
fn item7_stats_along_axis_0_of_a_1d_array() {
    let dir = tmp();
    let d = dir.path();
    let ints: Vec<u16> = (0..1000u16).map(|i| i.wrapping_mul(37) % 1013).collect();
    let floats: Vec<f32> = ints.iter().map(|&v| f32::from(v) * 0.5).collect();
    let cases: [(&str, DType, Vec<u8>, Vec<f64>); 2] = [
        (
            "u16",
            DType::U16,
            ints.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ints.iter().map(|&v| f64::from(v)).collect(),
        ),
        (
            "f32",
            DType::F32,
            floats.iter().flat_map(|v| v.to_le_bytes()).collect(),
            floats.iter().map(|&v| f64::from(v)).collect(),
        ),
    ];
    for (name, dtype, bytes, want) in cases {
        let p = npy(d, &format!("{name}.npy"), dtype, &[1000], &bytes);
        for chunks in ["1000", "64", "7"] {
            let z = d.join(format!("{name}_{chunks}.zarr"));
            convert(&p, &z, chunks);
            let o = cw(&["stats", s(&z), "--axis", "0", "--json"]);
            ok(&o, "stats");
            let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
            let rows = v["stats"].as_array().unwrap();
            assert_eq!(rows.len(), 1000);
            for (i, (r, &w)) in rows.iter().zip(&want).enumerate() {
                let what = format!("{name} chunks {chunks} row {i}");
                assert_eq!(r["count"], 1, "{what}: {r}");
                for k in ["min", "max", "sum", "mean"] {
                    assert_eq!(r[k].as_f64(), Some(w), "{what}: {k} {r}");
                }
            }
            let out = d.join(format!("{name}_{chunks}.npy"));
            ok(
                &cw(&["stats", s(&z), "--axis", "0", "-o", s(&out)]),
                "stats -o",
            );
            let t = std::fs::read(&out).unwrap();
            let h = chunkwise::support::parse_npy_header(&t, &out).unwrap();
            assert_eq!(h.shape, vec![1000, 6]);
            let vals: Vec<f64> = t[h.data_offset as usize..]
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect();
            assert!(vals.iter().all(|x| !x.is_nan()), "{name}: NaN in the table");
            assert_eq!(vals[6 * 999 + 1], want[999], "{name}: min of the last row");
        }
    }
}

/// Issue 18.8: thresholds on 64-bit integers compare exactly, as numpy does with a Python int
/// (`where`, `threshold`), and values are printed exactly in errors (`lut`).
#[test]
fn item8_thresholds_on_64_bit_integers_are_exact() {
    let dir = tmp();
    let d = dir.path();
    let two53 = 1u64 << 53;
    let u: Vec<u64> = vec![
        two53,
        two53 + 1,
        two53 + 2,
        u64::MAX,
        u64::MAX - 1,
        1 << 63,
        5,
        0,
    ];
    let i: Vec<i64> = vec![
        i64::MAX,
        i64::MAX - 1,
        i64::MIN,
        -5,
        0,
        1 << 53,
        (1 << 53) + 1,
        7,
    ];
    let up = npy(
        d,
        "u.npy",
        DType::U64,
        &[8],
        &u.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>(),
    );
    let ip = npy(
        d,
        "i.npy",
        DType::I64,
        &[8],
        &i.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>(),
    );
    let (uz, iz) = (d.join("u.zarr"), d.join("i.zarr"));
    convert(&up, &uz, "3");
    convert(&ip, &iz, "3");
    let count = |z: &Path, flag: &str, t: &str| -> u64 {
        let o = cw(&["where", s(z), "--count-only", flag, t]);
        ok(&o, "where");
        stdout(&o).trim().parse().unwrap()
    };
    for t in [two53, two53 + 1, u64::MAX - 1, u64::MAX, 1 << 63, 4] {
        let ts = t.to_string();
        let above = u.iter().filter(|&&v| v > t).count() as u64;
        let below = u.iter().filter(|&&v| v < t).count() as u64;
        assert_eq!(count(&uz, "--above", &ts), above, "uint64 > {t}");
        assert_eq!(count(&uz, "--below", &ts), below, "uint64 < {t}");
    }
    for t in [i64::MAX - 1, i64::MAX, i64::MIN, 1 << 53, -6] {
        let ts = t.to_string();
        let above = i.iter().filter(|&&v| v > t).count() as u64;
        let below = i.iter().filter(|&&v| v < t).count() as u64;
        assert_eq!(count(&iz, "--above", &ts), above, "int64 > {t}");
        assert_eq!(count(&iz, "--below", &ts), below, "int64 < {t}");
    }
    // Beyond the type's range: everything or nothing, exactly.
    assert_eq!(count(&uz, "--above", "-1"), 8);
    assert_eq!(count(&uz, "--above", "18446744073709551616"), 0);
    assert_eq!(count(&iz, "--below", "-9223372036854775809"), 0);
    // threshold agrees with where.
    let m = d.join("m.zarr");
    ok(
        &cw(&["threshold", s(&uz), s(&m), "--above", "9007199254740992"]),
        "threshold",
    );
    let got = data(&m).1;
    let want: Vec<u8> = u.iter().map(|&v| u8::from(v > two53)).collect();
    assert_eq!(got, want);
    // lut names the offending value exactly.
    let table = npy(d, "t.npy", DType::U8, &[10], &[0u8; 10]);
    let o = cw(&["lut", s(&uz), s(&d.join("l.zarr")), "--table", s(&table)]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        [
            "9007199254740992",
            "9007199254740993",
            "18446744073709551615"
        ]
        .iter()
        .any(|v| e.contains(&format!("value {v} "))),
        "{e}"
    );
    assert!(!e.contains("18446744073709552000"), "{e}");
}

/// Issue 18.9: an output name that is not UTF-8 is refused before anything is written
/// (Zarr stores are named by text); nothing appears in the directory.
#[test]
fn item9_a_non_utf8_store_name_is_refused_up_front() {
    let dir = tmp();
    let d = dir.path();
    let a = npy(d, "a.npy", DType::U16, &[4, 4, 4], &u16s(64, 1, 0, 10));
    let bad = d.join(OsStr::from_bytes(b"o\xff.zarr"));
    let az = d.join("a.zarr");
    convert(&a, &az, "2,4,4");
    let before: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    let runs: [Vec<&OsStr>; 3] = [
        vec![
            "convert".as_ref(),
            a.as_os_str(),
            "-o".as_ref(),
            bad.as_os_str(),
        ],
        vec![
            "gaussian".as_ref(),
            az.as_os_str(),
            bad.as_os_str(),
            "--sigma".as_ref(),
            "1".as_ref(),
        ],
        vec![
            "concat".as_ref(),
            az.as_os_str(),
            az.as_os_str(),
            "-o".as_ref(),
            bad.as_os_str(),
        ],
    ];
    for args in runs {
        let o = Command::new(bin()).args(&args).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let e = stderr(&o);
        assert!(e.contains("UTF-8") || e.contains("twice"), "{args:?}: {e}");
        let after: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(after, before, "{args:?}: something was written");
    }
}

/// Bytes used on the filesystem holding `p`.
fn used(p: &Path) -> u64 {
    let o = Command::new("df")
        .args(["--output=used", "-B1"])
        .arg(p)
        .output()
        .unwrap();
    stdout(&o).lines().nth(1).unwrap().trim().parse().unwrap()
}

/// Issue 18, smaller: a disk that fills up during `append` or `concat --into` (the exchange
/// path) leaves the array as it was and no staging or rebuilt directory holding the space.
#[test]
fn small_a_full_disk_during_a_join_leaves_nothing_behind() {
    let dir = tmp();
    let d = dir.path();
    let fs = Tmpfs::mount_sized("full18", "1m");
    // Random values do not compress: the array fits, what is joined does not.
    let (va, vb) = (
        u16s(36 * 128 * 128 / 4, 7, 0, 65535),
        u16s(128 * 128 * 64, 8, 0, 65535),
    );
    let a = npy(d, "a.npy", DType::U16, &[9, 128, 128], &va);
    let b = npy(d, "b.npy", DType::U16, &[64, 128, 128], &vb);
    let bz = d.join("b.zarr");
    convert(&b, &bz, "4,128,128");
    let st = fs.path.join("s.zarr");
    for args in [
        vec!["append", s(&st), s(&b)],
        vec![
            "concat",
            "--into",
            s(&st),
            s(&bz),
            "--layout",
            "rectilinear",
        ],
    ] {
        if st.exists() {
            std::fs::remove_dir_all(&st).unwrap();
        }
        convert(&a, &st, "4,128,128");
        let before = used(&fs.path);
        let o = cw(&args);
        assert_eq!(o.status.code(), Some(2), "{}: {}", args[0], stdout(&o));
        assert!(stderr(&o).contains("No space left"), "{}", stderr(&o));
        assert_eq!(data(&st).1, va, "{}: the array changed", args[0]);
        let left: Vec<String> = temps(&fs.path)
            .into_iter()
            .chain(temps(&st))
            // (The progress record stays: it lets a rerun resume, APPEND §5.1.)
            .filter(|n| n != ".chunkwise.lock" && n != ".chunkwise-progress.json")
            .collect();
        assert!(left.is_empty(), "{}: left {left:?}", args[0]);
        let after = used(&fs.path);
        assert!(
            after <= before + (64 << 10),
            "{}: {} bytes still held",
            args[0],
            after.saturating_sub(before)
        );
    }
}

/// Issue 18, smaller: chunk files a killed append placed past the extent do not survive a
/// different append (nor count as stored).
#[test]
fn small_a_different_append_removes_what_a_killed_one_placed() {
    crate::common::need_crash_points();
    let dir = tmp();
    let d = dir.path();
    let (va, vb, vc) = (
        u16s(16 * 64, 1, 1, 99),
        u16s(24 * 64, 2, 1, 99),
        u16s(3 * 64, 3, 1, 99),
    );
    let a = npy(d, "a.npy", DType::U16, &[16, 8, 8], &va);
    let b = npy(d, "b.npy", DType::U16, &[24, 8, 8], &vb);
    let c = npy(d, "c.npy", DType::U16, &[3, 8, 8], &vc);
    let st = d.join("s.zarr");
    convert(&a, &st, "8,8,8");
    // Killed with every layer of b placed (layers 2, 3, 4), before its commit.
    let o = Command::new(bin())
        .args(["append", s(&st), s(&b), "--no-sync"])
        .env("CHUNKWISE_CRASH_AT", "staged")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        st.join("c/4/0/0").exists(),
        "the killed append placed nothing past the extent"
    );
    ok(&cw(&["append", s(&st), s(&c)]), "another append");
    let (shape, bytes) = data(&st);
    assert_eq!(shape, vec![19, 8, 8]);
    assert!(bytes == [&va[..], &vc].concat());
    for layer in [3, 4] {
        assert!(
            !st.join(format!("c/{layer}/0/0")).exists(),
            "layer {layer} of the killed append survived"
        );
    }
    let o = cw(&["info", s(&st), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["chunks_present"], 3, "{v}");
}

/// Issue 18, smaller: the default histogram of floats with ±inf takes its range from the
/// finite values (the infinities fall outside, as numpy.histogram with that range counts).
#[test]
fn small_the_histogram_of_floats_with_infinities_spans_the_finite_values() {
    let dir = tmp();
    let d = dir.path();
    let vals = [
        1.0f64,
        2.0,
        3.0,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        2.5,
        1.5,
    ];
    let p = npy(
        d,
        "f.npy",
        DType::F64,
        &[8],
        &vals
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<_>>(),
    );
    let z = d.join("f.zarr");
    convert(&p, &z, "3");
    for (bins, want) in [
        (None, vec![1, 0, 1, 0, 0, 1, 0, 1, 0, 1]),
        (Some("4"), vec![1, 1, 1, 2]),
    ] {
        let mut args = vec!["histogram", s(&z), "--json"];
        if let Some(b) = bins {
            args.extend(["--bins", b]);
        }
        let o = cw(&args);
        ok(&o, "histogram");
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        let counts: Vec<u64> = v["counts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_u64().unwrap())
            .collect();
        assert_eq!(counts, want, "{bins:?}");
        assert_eq!(v["edges"][0], 1.0);
        assert_eq!(v["edges"][counts.len()], 3.0);
    }
    // All infinite: a clear error asking for --range.
    let q = npy(
        d,
        "g.npy",
        DType::F64,
        &[2],
        &[f64::INFINITY, f64::NAN]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<_>>(),
    );
    let zq = d.join("g.zarr");
    convert(&q, &zq, "2");
    let o = cw(&["histogram", s(&zq)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--range"), "{}", stderr(&o));
}

/// Issue 18, smaller: `lut` with a bool table writes a bool array (table[value]).
#[test]
fn small_lut_with_a_bool_table() {
    let dir = tmp();
    let d = dir.path();
    let input: Vec<u8> = (0..200u32).map(|i| (i * 7 % 10) as u8).collect();
    let table: Vec<u8> = (0..10u8).map(|i| u8::from(i % 3 == 0)).collect();
    let p = npy(d, "x.npy", DType::U8, &[200], &input);
    let t = npy(d, "t.npy", DType::Bool, &[10], &table);
    let z = d.join("x.zarr");
    convert(&p, &z, "64");
    let out = d.join("l.zarr");
    ok(&cw(&["lut", s(&z), s(&out), "--table", s(&t)]), "lut");
    let st = Store::open(&out).unwrap();
    assert_eq!(st.dtype(), DType::Bool);
    let want: Vec<u8> = input.iter().map(|&v| table[v as usize]).collect();
    assert_eq!(store_bytes(&st), want);
}

/// Issue 18, smaller: `graph` defaults to the full neighbourhood of the array's rank (2 in
/// 1-D, 8 in 2-D, 80 in 4-D), and names the connectivities a rank has.
#[test]
fn small_graph_defaults_to_the_full_neighbourhood_of_any_rank() {
    let dir = tmp();
    let d = dir.path();
    let count = |name: &str, shape: &[u64], vals: &[u8], extra: &[&str]| -> Output {
        let p = npy(d, &format!("{name}.npy"), DType::U8, shape, vals);
        let z = d.join(format!("{name}.zarr"));
        if !z.exists() {
            convert(
                &p,
                &z,
                &shape.iter().map(|_| "2").collect::<Vec<_>>().join(","),
            );
        }
        cw(&[&["graph", s(&z), "--count-only"], extra].concat())
    };
    let o = count("one", &[4], &[1, 1, 0, 1], &[]);
    ok(&o, "1-D");
    assert_eq!(stdout(&o).trim(), "1");
    let o = count("two", &[3, 3], &[1; 9], &[]);
    ok(&o, "2-D");
    assert_eq!(stdout(&o).trim(), "20", "6 + 6 + 8 edges of a 3x3 square");
    // Every pair of the 16 voxels of a 2^4 cube is adjacent in the full neighbourhood.
    let o = count("four", &[2, 2, 2, 2], &[1; 16], &[]);
    ok(&o, "4-D");
    assert_eq!(stdout(&o).trim(), "120");
    let o = count("four", &[2, 2, 2, 2], &[1; 16], &["--connectivity", "8"]);
    ok(&o, "4-D, 8");
    assert_eq!(
        stdout(&o).trim(),
        "32",
        "16 voxels, 4 neighbours each, each edge twice"
    );
    let o = count("four", &[2, 2, 2, 2], &[1; 16], &["--connectivity", "5"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("[8, 32, 64, 80]"), "{}", stderr(&o));
}

/// Issue 18, smaller: the "other settings" error names the flag that works, and a failed job
/// (a value outside a lookup table) does not block the corrected rerun.
#[test]
fn small_job_errors_name_a_flag_that_works_and_failed_jobs_do_not_block() {
    let dir = tmp();
    let d = dir.path();
    let input: Vec<u8> = (0..512u32).map(|i| (i % 20) as u8).collect();
    let p = npy(d, "x.npy", DType::U8, &[8, 8, 8], &input);
    let z = d.join("x.zarr");
    convert(&p, &z, "4,4,4");
    let g = d.join("g.zarr");
    ok(&cw(&["gaussian", s(&z), s(&g), "--sigma", "1"]), "gaussian");
    let o = cw(&["gaussian", s(&z), s(&g), "--sigma", "2"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--overwrite") && !stderr(&o).contains("--restart"),
        "{}",
        stderr(&o)
    );
    ok(
        &cw(&["gaussian", s(&z), s(&g), "--sigma", "2", "--overwrite"]),
        "as advised",
    );
    let short = npy(d, "short.npy", DType::U8, &[10], &[1; 10]);
    let full = npy(
        d,
        "full.npy",
        DType::U8,
        &[20],
        &(0..20u8).collect::<Vec<_>>(),
    );
    let l = d.join("l.zarr");
    let o = cw(&["lut", s(&z), s(&l), "--table", s(&short)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("outside the 10-entry table"),
        "{}",
        stderr(&o)
    );
    ok(
        &cw(&["lut", s(&z), s(&l), "--table", s(&full)]),
        "the corrected rerun",
    );
    assert_eq!(data(&l).1, input);
    assert!(temps(d).is_empty(), "left {:?}", temps(d));
}

/// Issue 18, smaller: a quoted glob skips hidden files, as a directory input does.
#[test]
fn small_a_quoted_glob_skips_hidden_files() {
    let dir = tmp();
    let d = dir.path();
    let sl = d.join("slices");
    std::fs::create_dir(&sl).unwrap();
    for (name, seed) in [("s0.npy", 1), ("s1.npy", 2), (".s2.npy", 3)] {
        npy(&sl, name, DType::U16, &[4, 4], &u16s(16, seed, 0, 9));
    }
    for (input, out) in [(sl.join("*.npy"), "glob.zarr"), (sl.clone(), "dir.zarr")] {
        let z = d.join(out);
        ok(&cw(&["convert", s(&input), "-o", s(&z), "-q"]), out);
        assert_eq!(
            data(&z).0,
            vec![2, 4, 4],
            "{out}: the hidden slice was taken"
        );
    }
}

/// Issue 18, smaller: `stats -o` without a table to write, and `--axis` with `--per-chunk`,
/// are refused instead of ignored; the text summary prints inf and NaN unquoted.
#[test]
fn small_stats_flags_are_checked_and_text_is_plain() {
    let dir = tmp();
    let d = dir.path();
    let vals = [1.0f32, f32::INFINITY, 2.0, 3.0];
    let p = npy(
        d,
        "f.npy",
        DType::F32,
        &[4],
        &vals
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<_>>(),
    );
    let z = d.join("f.zarr");
    convert(&p, &z, "2");
    let x = d.join("x.npy");
    let o = cw(&["stats", s(&z), "-o", s(&x)]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("--axis") && !x.exists(),
        "{}",
        stderr(&o)
    );
    let o = cw(&["stats", s(&z), "--axis", "0", "--per-chunk"]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    let o = cw(&["stats", s(&z)]);
    ok(&o, "stats");
    let text = stdout(&o);
    assert!(
        text.contains("max:    inf") && !text.contains('"'),
        "{text}"
    );
    // A table never replaces a file without --overwrite; with it, the file is replaced whole.
    for (name, per) in [("t.npy", "--per-chunk"), ("t.json", "--per-chunk")] {
        let out = d.join(name);
        std::fs::write(&out, b"keep me").unwrap();
        let o = cw(&["stats", s(&z), per, "-o", s(&out)]);
        assert!(!o.status.success(), "{name}: {}", stdout(&o));
        assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
        assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
        ok(
            &cw(&["stats", s(&z), per, "-o", s(&out), "--overwrite"]),
            name,
        );
        let t = std::fs::read(&out).unwrap();
        if name.ends_with(".json") {
            let v: serde_json::Value = serde_json::from_slice(&t).unwrap();
            assert_eq!(v.as_array().map(Vec::len), Some(2), "{v}");
        } else {
            let h = chunkwise::support::parse_npy_header(&t, &out).unwrap();
            assert_eq!(h.shape[0], 2);
        }
    }
    assert!(temps(d).is_empty(), "left {:?}", temps(d));
}

/// Issue 18, smaller: `stats --per-chunk` of a rectilinear array reports its stored chunks
/// (regions and sums), not the blocks it is read by.
#[test]
fn small_per_chunk_stats_of_a_rectilinear_array_are_per_stored_chunk() {
    let dir = tmp();
    let d = dir.path();
    let (va, vb) = (u16s(44 * 256, 1, 0, 99), u16s(21 * 256, 2, 0, 99));
    let a = npy(d, "a.npy", DType::U16, &[44, 16, 16], &va);
    let b = npy(d, "b.npy", DType::U16, &[21, 16, 16], &vb);
    let (az, bz, ab) = (d.join("a.zarr"), d.join("b.zarr"), d.join("ab.zarr"));
    convert(&a, &az, "8,8,8");
    convert(&b, &bz, "8,8,8");
    ok(
        &cw(&[
            "concat",
            s(&az),
            s(&bz),
            "-o",
            s(&ab),
            "--layout",
            "rectilinear",
        ]),
        "concat",
    );
    let all: Vec<u16> = [&va[..], &vb]
        .concat()
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    // The stored chunks along axis 0: a's 5 of 8 and its last of 4, then b's 8, 8 and 5.
    let bounds0 = [0u64, 8, 16, 24, 32, 40, 44, 52, 60, 65];
    let o = cw(&["stats", s(&ab), "--per-chunk", "--json"]);
    ok(&o, "stats --per-chunk");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(rows.len(), 9 * 2 * 2);
    let mut k = 0;
    for z in bounds0.windows(2) {
        for y in [0u64, 8] {
            for x in [0u64, 8] {
                let r = &rows[k];
                k += 1;
                assert_eq!(
                    r["region"],
                    serde_json::json!([[z[0], z[1]], [y, y + 8], [x, x + 8]])
                );
                let mut sum = 0u64;
                for zi in z[0]..z[1] {
                    for yi in y..y + 8 {
                        for xi in x..x + 8 {
                            sum += u64::from(all[(zi * 256 + yi * 16 + xi) as usize]);
                        }
                    }
                }
                assert_eq!(r["sum"], sum, "{r}");
                assert_eq!(r["count"], (z[1] - z[0]) * 64);
            }
        }
    }
}

/// Issue 18, smaller: `-o` onto a link to something that is not a regular file (a device,
/// stdout) is refused and the link stays; onto a link to a file, the file is written.
#[test]
fn small_output_onto_a_link_to_a_device_is_refused_and_kept() {
    let dir = tmp();
    let d = dir.path();
    let p = npy(d, "x.npy", DType::U16, &[4, 4], &u16s(16, 1, 0, 9));
    let z = d.join("x.zarr");
    convert(&p, &z, "2,2");
    let link = d.join("out.npy");
    std::os::unix::fs::symlink("/dev/null", &link).unwrap();
    let o = cw(&["export", s(&z), "-o", s(&link), "--overwrite"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not a regular file"), "{}", stderr(&o));
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        PathBuf::from("/dev/null")
    );
}
