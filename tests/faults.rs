//! Disk faults (issue 14 item 4; spec/FORMAT.md §6): every writing command on a full disk
//! and on a read-only one (a tmpfs the test mounts, and remounts read-only) fails with one
//! error naming a path on that disk and the errno, publishes no partial output, leaves an
//! in-place target as it was and no temporary file holding the space; once the disk has room
//! again, the same command run again completes, and its output equals the same command's on an
//! unconstrained disk (the oracle).

use std::path::{Path, PathBuf};
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
            // A resumable job's or pyramid's build stays for the rerun (COMPUTE §6, PYRAMID §3).
            let resumable = n.ends_with(".chunkwise-job") || n.ends_with(".chunkwise-pyramid");
            let kept = n == ".chunkwise.lock" || n == ".chunkwise-progress.json" || resumable;
            if n.contains("chunkwise") && !kept {
                out.push(e.path().display().to_string());
            }
            if e.path().is_dir() && !resumable {
                stack.push(e.path());
            }
        }
    }
    out
}

/// `NAME.npy` in `dir`, random uint16 of `shape` (values 1..60001, from `seed`), and its store
/// `NAME.zarr` in chunks of `chunks`.
fn volume(dir: &Path, name: &str, shape: &[u64], seed: u64, chunks: &str) -> (PathBuf, PathBuf) {
    let n = shape.iter().product::<u64>() as usize;
    let vol = npy(
        dir,
        &format!("{name}.npy"),
        DType::U16,
        shape,
        &u16s(n, seed, 1, 60000),
    );
    let store = dir.join(format!("{name}.zarr"));
    ok(
        &cw(&[
            "convert",
            s(&vol),
            "-o",
            s(&store),
            "--chunks",
            chunks,
            "-q",
        ]),
        "convert",
    );
    (vol, store)
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
    let store2 = d.join("vol2.zarr");
    ok(
        &cw(&[
            "convert",
            s(&vol),
            "-o",
            s(&store2),
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
    // A table mapping each uint16 to an unrelated one, so that the output does not compress.
    let table = npy(
        d,
        "table.npy",
        DType::U16,
        &[65536],
        &u16s(65536, 3, 0, 65535),
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
            name: "correlate1d",
            args: arg(&[
                "correlate1d",
                s(&store),
                "OUT",
                "--axis",
                "0",
                "--weights",
                "1,2,1",
                "-q",
            ]),
            out: "k.zarr",
            in_place: false,
        },
        Case {
            name: "lut",
            args: arg(&["lut", s(&store), "OUT", "--table", s(&table), "-q"]),
            out: "l.zarr",
            in_place: false,
        },
        Case {
            name: "eval",
            args: arg(&[
                "eval",
                "a * 3 + 1",
                &format!("a={}", s(&store)),
                "--output",
                "OUT",
                "-q",
            ]),
            out: "x.zarr",
            in_place: false,
        },
        Case {
            name: "cumsum",
            args: arg(&["cumsum", s(&store), "OUT", "--axis", "1", "-q"]),
            out: "s.zarr",
            in_place: false,
        },
        Case {
            name: "graph",
            args: arg(&["graph", s(&store), "-o", "OUT", "-q"]),
            out: "edges.npy",
            in_place: false,
        },
        Case {
            // Links cannot cross filesystems: the chunks are copied onto the full disk.
            name: "concat -o",
            args: arg(&["concat", s(&store), s(&store2), "-o", "OUT", "-q"]),
            out: "o.zarr",
            in_place: false,
        },
        Case {
            name: "stack",
            args: arg(&["stack", s(&store), s(&store2), "--output", "OUT", "-q"]),
            out: "t.zarr",
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
            remount(&fs, "rw,size=256m");
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

/// The chunks of a `[32, 128, 128]` uint16 store in 4-row chunks, each compared with two
/// candidates: which of them (0 or 1) it equals, or `None` (a torn or foreign chunk).
fn chunk_sources(st: &Store, old: &[u8], new: &[u8]) -> Vec<Option<usize>> {
    let all = store_bytes(st);
    let n = 4 * 128 * 128 * 2;
    (0..all.len() / n)
        .map(|k| {
            let c = &all[k * n..(k + 1) * n];
            if c == &old[k * n..(k + 1) * n] {
                Some(0)
            } else if c == &new[k * n..(k + 1) * n] {
                Some(1)
            } else {
                None
            }
        })
        .collect()
}

/// A region write (spec/LIBRARY.md "write_region") on a full disk and on a read-only one:
/// one error naming a path there and the errno; every chunk is the old or the new one whole
/// (each is replaced by a rename, FORMAT §6), no temporary file is left, and the same write
/// with room completes. On the read-only disk nothing changes.
#[test]
fn region_writes_on_a_full_or_read_only_disk_keep_every_chunk_whole() {
    let dir = tmp();
    let d = dir.path();
    let shape = [32u64, 128, 128];
    let n = 32 * 128 * 128;
    let old = u16s(n, 4, 0, 8); // compresses to little: the store fits the 1 MiB disk
    let new = u16s(n, 5, 1, 60000); // does not: the write fills it
    let src = npy(d, "old.npy", DType::U16, &shape, &old);
    let data: Vec<u16> = new
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect();
    let data = ndarray::ArrayD::from_shape_vec(vec![32, 128, 128], data).unwrap();
    let region = chunkwise::Region::full(&shape);
    for fault in ["full", "read-only"] {
        let fs = Tmpfs::mount_sized(&format!("region-{}", fault.len()), "1m");
        let out = fs.path.join("r.zarr");
        ok(
            &cw(&[
                "convert",
                s(&src),
                "-o",
                s(&out),
                "--chunks",
                "4,128,128",
                "-q",
            ]),
            "base",
        );
        if fault == "read-only" {
            remount(&fs, "ro");
        }
        let st = Store::open(&out).unwrap();
        let e = st
            .write_region(&region, data.view())
            .expect_err("the write cannot fit")
            .to_string();
        let (errno, text) = if fault == "full" {
            ("os error 28", "No space left on device")
        } else {
            ("os error 30", "Read-only file system")
        };
        assert!(
            e.contains(errno) && e.contains(text) && e.contains(s(&fs.path)),
            "region write on a {fault} disk: {e}"
        );
        let after = chunk_sources(&Store::open(&out).unwrap(), &old, &new);
        assert!(
            after.iter().all(Option::is_some),
            "{fault}: a chunk is neither the old nor the new one: {after:?}"
        );
        if fault == "read-only" {
            assert!(after.iter().all(|c| *c == Some(0)), "{fault}: {after:?}");
        }
        assert_eq!(leftovers(&fs.path), Vec::<String>::new(), "{fault}");
        remount(&fs, "rw,size=64m");
        Store::open(&out)
            .unwrap()
            .write_region(&region, data.view())
            .unwrap();
        let st = Store::open(&out).unwrap();
        assert_eq!(store_bytes(&st), new, "{fault}: the rewrite with room");
    }
}

/// A job stopped by a full disk keeps the chunks it wrote (spec/COMPUTE.md, resume): the rerun
/// with room says how many were done before and computes only the others, and its output
/// equals the job's on an unconstrained disk.
#[test]
fn a_job_stopped_by_a_full_disk_resumes() {
    let dir = tmp();
    let d = dir.path();
    let (_, store) = volume(d, "vol", &[32, 128, 128], 6, "8,64,64");
    let want = d.join("want.zarr");
    ok(
        &cw(&["cumsum", s(&store), s(&want), "--axis", "2", "-q"]),
        "oracle",
    );
    let fs = Tmpfs::mount_sized("resume", "1m");
    let out = fs.path.join("c.zarr");
    let o = cw(&["cumsum", s(&store), s(&out), "--axis", "2", "-j", "1"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("os error 28"), "{}", stderr(&o));
    assert!(!out.exists());
    remount(&fs, "rw,size=64m");
    let o = cw(&["cumsum", s(&store), s(&out), "--axis", "2", "-j", "1"]);
    ok(&o, "rerun");
    let said = format!("{}{}", crate::common::stdout(&o), stderr(&o));
    let done: u64 = said
        .split(" done before, resumed")
        .next()
        .and_then(|h| h.rsplit('(').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("the rerun does not say it resumed: {said}"));
    assert!(done > 0 && done < 32, "resumed {done} of 32 chunks: {said}");
    assert_eq!(contents(&out), contents(&want));
}

/// The output's parent directory removed while a job or an append runs (a user cleaning up,
/// a scratch directory expiring): one error naming a path in it and the errno, no panic, no
/// hang, and nothing recreated where the directory was.
#[test]
fn the_output_directory_removed_mid_run_is_a_clear_error() {
    crate::common::need_crash_points();
    let dir = tmp();
    let d = dir.path();
    let (vol, store) = volume(d, "vol", &[32, 64, 64], 7, "4,64,64");
    let bin = env!("CARGO_BIN_EXE_chunkwise");
    for name in ["gaussian", "append"] {
        let parent = d.join(format!("scratch-{name}"));
        std::fs::create_dir(&parent).unwrap();
        let out = parent.join("o.zarr");
        let args: Vec<&str> = if name == "gaussian" {
            vec![
                "gaussian",
                s(&store),
                s(&out),
                "--sigma",
                "1",
                "-j",
                "1",
                "-q",
            ]
        } else {
            ok(
                &cw(&[
                    "convert",
                    s(&vol),
                    "-o",
                    s(&out),
                    "--chunks",
                    "4,64,64",
                    "-q",
                ]),
                "base",
            );
            vec!["append", s(&out), s(&vol), "-j", "1", "-q"]
        };
        let child = Command::new(bin)
            .args(&args)
            .env("CHUNKWISE_TEST_CHUNK_DELAY_MS", "150")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(700));
        std::fs::remove_dir_all(&parent).unwrap();
        let started = std::time::Instant::now();
        let o = child.wait_with_output().unwrap();
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "{name}: took {:?} after the removal",
            started.elapsed()
        );
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{name}: {e}");
        assert!(
            e.contains("os error 2") && e.contains(s(&parent)) && !e.contains("panicked"),
            "{name}: the error names no path in the removed directory or no errno: {e}"
        );
        assert!(
            !parent.exists(),
            "{name}: the removed directory was recreated"
        );
    }
}

/// An ordinary user (not root, who ignores permissions) writing into a directory they may
/// not write: one error naming the path and EACCES, nothing created; an in-place append onto
/// a store they may read but not write leaves it as it was; after `chmod u+w` the same
/// commands complete.
#[test]
fn an_ordinary_user_in_a_read_only_directory_gets_a_clear_error() {
    use std::os::unix::fs::PermissionsExt;
    let fs = Tmpfs::mount("rouser");
    let m = fs.path.clone();
    let bin = crate::common::user_binary(&m);
    let vol = npy(
        &m,
        "vol.npy",
        DType::U16,
        &[8, 32, 32],
        &u16s(8 * 32 * 32, 8, 1, 60000),
    );
    std::fs::set_permissions(&vol, std::fs::Permissions::from_mode(0o644)).unwrap();
    let work = m.join("w");
    std::fs::create_dir(&work).unwrap();
    let store = work.join("s.zarr");
    ok(
        &cw(&[
            "convert",
            s(&vol),
            "-o",
            s(&store),
            "--chunks",
            "4,32,32",
            "-q",
        ]),
        "convert",
    );
    let chown = Command::new("chown")
        .arg("-R")
        .arg(format!(
            "{}:{}",
            crate::common::NOBODY,
            crate::common::NOBODY
        ))
        .arg(&work)
        .output()
        .unwrap();
    assert!(chown.status.success(), "chown: {}", stderr(&chown));
    let chmod = |mode: &str| {
        let o = Command::new("chmod")
            .args(["-R", mode])
            .arg(&work)
            .output()
            .unwrap();
        assert!(o.status.success(), "chmod: {}", stderr(&o));
    };
    let before = contents(&store);
    let as_user =
        |args: &[&str]| crate::common::run_as(&bin, &m, Some(crate::common::NOBODY), args);
    let outs = [work.join("c.zarr"), work.join("g.zarr"), work.join("e.npy")];
    let commands: Vec<Vec<&str>> = vec![
        vec!["convert", s(&vol), "-o", s(&outs[0]), "-q"],
        vec!["gaussian", s(&store), s(&outs[1]), "--sigma", "1", "-q"],
        vec!["export", s(&store), "-o", s(&outs[2]), "-q"],
        vec!["append", s(&store), s(&vol), "-q"],
    ];
    chmod("a-w");
    for c in &commands {
        let o = as_user(c);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{}: {e}", c[0]);
        assert!(
            e.contains("os error 13") && e.contains("Permission denied") && e.contains(s(&work)),
            "{}: the error names no path or no errno: {e}",
            c[0]
        );
    }
    for o in &outs {
        assert!(!o.exists(), "{} was created", o.display());
    }
    assert_eq!(contents(&store), before, "the append changed the store");
    assert_eq!(leftovers(&work), Vec::<String>::new());
    chmod("u+w");
    for c in &commands {
        let o = as_user(c);
        ok(&o, &format!("{} with the permission", c[0]));
    }
    assert_eq!(contents(&store).0, vec![16, 32, 32]);
}
