//! Disk faults (issue 14 item 4; spec/FORMAT.md §6): every writing command on a full disk
//! and on a read-only one (a tmpfs the test mounts, and remounts read-only) fails with one
//! error naming a path on that disk and the errno, publishes no partial output, leaves an
//! in-place target as it was and no temporary file holding the space; once the disk has room
//! again, the same command run again completes, and its output equals the same command's on an
//! unconstrained disk (the oracle).

use std::path::Path;
use std::process::Command;

use chunkwise::{DType, Store};

use crate::common::{Tmpfs, chunkwise as cw, npy, ok, s, stderr, store_bytes, tmp, u16s};

/// What a path holds, for comparing outputs: a store's shape and decoded bytes, or a file's
/// bytes.
fn contents(p: &Path) -> (Vec<u64>, Vec<u8>) {
    if p.join("0").join("zarr.json").exists() {
        // An OME-Zarr image: its levels one after another.
        let (mut shape, mut bytes) = (Vec::new(), Vec::new());
        for l in (0..).take_while(|l| p.join(l.to_string()).exists()) {
            let (s, b) = contents(&p.join(l.to_string()));
            shape.extend(s);
            bytes.extend(b);
        }
        return (shape, bytes);
    }
    if p.is_dir() {
        let st = Store::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        (st.shape().to_vec(), store_bytes(&st))
    } else {
        (vec![], std::fs::read(p).unwrap())
    }
}

/// Everything under `dir` a writer may leave behind, but the lock, the progress record and a
/// job's directory (a rerun resumes from them: spec/APPEND.md §5.1, spec/COMPUTE.md).
fn leftovers(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            let kept = n == ".chunkwise.lock"
                || n == ".chunkwise-progress.json"
                || n.ends_with(".chunkwise-job");
            if n.contains("chunkwise") && !kept {
                out.push(e.path().display().to_string());
            }
            if e.path().is_dir() && !n.ends_with(".chunkwise-job") {
                stack.push(e.path());
            }
        }
    }
    out
}

fn remount(fs: &Tmpfs, opts: &str) {
    let o = Command::new("mount")
        .args(["-o", &format!("remount,{opts}")])
        .arg(&fs.path)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "remount {opts}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

struct Case {
    name: &'static str,
    /// The command, `OUT` standing for the output (or in-place target) path.
    args: Vec<String>,
    /// The target file or store's name.
    out: &'static str,
    /// An existing store the command grows in place (made on the disk first).
    in_place: bool,
}

#[test]
fn writing_commands_on_a_full_or_read_only_disk_fail_clearly_and_rerun() {
    let dir = tmp();
    let d = dir.path();
    // 2 MiB of incompressible uint16 on the root filesystem: every output is larger than the
    // 1 MiB the tmpfs holds.
    let shape = [32u64, 128, 128];
    let vol = npy(
        d,
        "vol.npy",
        DType::U16,
        &shape,
        &u16s(32 * 128 * 128, 1, 1, 60000),
    );
    let base = npy(
        d,
        "base.npy",
        DType::U16,
        &[4, 128, 128],
        &u16s(4 * 128 * 128, 2, 1, 60000),
    );
    let store = d.join("vol.zarr");
    ok(
        &cw(&[
            "convert",
            s(&vol),
            "-o",
            s(&store),
            "--chunks",
            "16,64,64",
            "-q",
        ]),
        "convert",
    );
    let part = d.join("part.zarr");
    ok(
        &cw(&[
            "convert",
            s(&vol),
            "-o",
            s(&part),
            "--chunks",
            "4,128,128",
            "-q",
        ]),
        "convert",
    );
    let arg = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let cases = vec![
        Case {
            name: "convert",
            args: arg(&[
                "convert",
                s(&vol),
                "-o",
                "OUT",
                "--chunks",
                "16,64,64",
                "-q",
            ]),
            out: "c.zarr",
            in_place: false,
        },
        Case {
            name: "gaussian (a resumable job)",
            args: arg(&["gaussian", s(&store), "OUT", "--sigma", "1", "-q"]),
            out: "g.zarr",
            in_place: false,
        },
        Case {
            name: "export",
            args: arg(&["export", s(&store), "-o", "OUT", "-q"]),
            out: "e.npy",
            in_place: false,
        },
        Case {
            name: "where",
            args: arg(&["where", s(&store), "-o", "OUT", "-q"]),
            out: "w.npy",
            in_place: false,
        },
        Case {
            name: "pyramid",
            args: arg(&["pyramid", s(&store), "-o", "OUT", "--levels", "2", "-q"]),
            out: "p.ome.zarr",
            in_place: false,
        },
        Case {
            name: "append",
            args: arg(&["append", "OUT", s(&vol), "-q"]),
            out: "a.zarr",
            in_place: true,
        },
        Case {
            name: "concat --into",
            args: arg(&["concat", "--into", "OUT", s(&part), "-q"]),
            out: "j.zarr",
            in_place: true,
        },
    ];
    for case in &cases {
        let with = |out: &Path| -> Vec<String> {
            case.args
                .iter()
                .map(|a| {
                    if a == "OUT" {
                        s(out).to_string()
                    } else {
                        a.clone()
                    }
                })
                .collect()
        };
        let run = |out: &Path| {
            let args = with(out);
            cw(&args.iter().map(String::as_str).collect::<Vec<_>>())
        };
        let prepare = |out: &Path| {
            if case.in_place {
                ok(
                    &cw(&[
                        "convert",
                        s(&base),
                        "-o",
                        s(out),
                        "--chunks",
                        "4,128,128",
                        "-q",
                    ]),
                    "base",
                );
            }
        };
        // The oracle: the same command on the root filesystem.
        let want_path = d.join(format!("want-{}", case.out));
        prepare(&want_path);
        ok(&run(&want_path), case.name);
        let want = contents(&want_path);

        for fault in ["full", "read-only"] {
            let fs = Tmpfs::mount_sized(&format!("fault-{}", case.out.replace('.', "")), "1m");
            let out = fs.path.join(case.out);
            prepare(&out);
            let before = case.in_place.then(|| contents(&out));
            if fault == "read-only" {
                remount(&fs, "ro");
            }
            let o = run(&out);
            let e = stderr(&o);
            let (errno, text) = if fault == "full" {
                ("os error 28", "No space left on device")
            } else {
                ("os error 30", "Read-only file system")
            };
            assert_eq!(
                o.status.code(),
                Some(2),
                "{} on a {fault} disk: {e}",
                case.name
            );
            assert!(
                e.contains(errno) && e.contains(text) && e.contains(s(&fs.path)),
                "{} on a {fault} disk: the error names no path there or no errno: {e}",
                case.name
            );
            match &before {
                Some(b) => assert_eq!(&contents(&out), b, "{}: the target changed", case.name),
                None => assert!(
                    !out.exists(),
                    "{}: a partial output was published",
                    case.name
                ),
            }
            assert_eq!(
                leftovers(&fs.path),
                Vec::<String>::new(),
                "{} ({fault})",
                case.name
            );
            // Room again (and writable): the same command completes, as on the other disk.
            remount(&fs, "rw,size=64m");
            let o = run(&out);
            ok(&o, &format!("{} rerun after the {fault} disk", case.name));
            assert!(
                contents(&out) == want,
                "{}: the rerun's output differs",
                case.name
            );
        }
    }
}

/// An fsync that fails (`EIO`, injected by the crash-point build's `CHUNKWISE_FAIL_SYNC=1`) is
/// an error, never ignored: nothing is published, an in-place target stays as it was, and the
/// same command without the fault completes.
#[test]
fn a_failed_fsync_is_an_error_and_publishes_nothing() {
    crate::common::need_crash_points();
    let dir = tmp();
    let d = dir.path();
    let vol = npy(
        d,
        "vol.npy",
        DType::U16,
        &[8, 32, 32],
        &u16s(8 * 32 * 32, 3, 1, 60000),
    );
    let base = d.join("base.zarr");
    ok(
        &cw(&[
            "convert",
            s(&vol),
            "-o",
            s(&base),
            "--chunks",
            "4,32,32",
            "-q",
        ]),
        "convert",
    );
    let before = contents(&base);
    let bin = env!("CARGO_BIN_EXE_chunkwise");
    let faulty = |args: &[&str]| {
        Command::new(bin)
            .args(args)
            .env("CHUNKWISE_FAIL_SYNC", "1")
            .output()
            .unwrap()
    };
    for (name, out, args) in [
        ("convert", d.join("c.zarr"), vec!["convert", s(&vol), "-o"]),
        ("export", d.join("e.npy"), vec!["export", s(&base), "-o"]),
        (
            "gaussian",
            d.join("g.zarr"),
            vec!["gaussian", "--sigma", "1", s(&base)],
        ),
    ] {
        let mut a = args.clone();
        a.push(s(&out));
        a.push("-q");
        let o = faulty(&a);
        assert_eq!(o.status.code(), Some(2), "{name}: {}", stderr(&o));
        assert!(stderr(&o).contains("os error 5"), "{name}: {}", stderr(&o));
        assert!(!out.exists(), "{name}: published despite the failed fsync");
        ok(&cw(&a), &format!("{name} without the fault"));
        assert!(out.exists());
    }
    let o = faulty(&["append", s(&base), s(&vol), "-q"]);
    assert_eq!(o.status.code(), Some(2), "append: {}", stderr(&o));
    assert!(stderr(&o).contains("os error 5"), "append: {}", stderr(&o));
    assert_eq!(contents(&base), before, "append: the array changed");
    ok(
        &cw(&["append", s(&base), s(&vol), "-q"]),
        "append without the fault",
    );
    assert_eq!(contents(&base).0, vec![16, 32, 32]);
}
