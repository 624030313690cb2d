//! `chunkwise pyramid` and OME-Zarr inputs (spec/PYRAMID.md): every level against numpy on the
//! whole array and the image read live by ome-zarr-models, ome-zarr-py and ngff-zarr
//! (tests/python/check_pyramid.py holds the oracle), bad input, and memory on a large volume.

use std::path::Path;

use crate::common::{chunkwise, run_python, stderr, stdout, tmp};

#[test]
fn pyramids_match_numpy_and_three_readers_open_them() {
    let dir = tmp();
    let said = run_python(
        "check_pyramid.py",
        &[Path::new(env!("CARGO_BIN_EXE_chunkwise")), dir.path()],
    );
    assert!(said.contains("pyramids equal numpy's"), "{said}");
}

/// `pyramid --labels` (spec/PYRAMID.md §1.1): each label image a mode pyramid of the image's
/// levels against numpy's block mode with the image's factors, the OME-Zarr labels layout,
/// ome-zarr-models and ome-zarr-py, and bad labels refused (tests/python/check_pyramid_labels.py).
#[test]
fn label_images_follow_the_image_levels() {
    let dir = tmp();
    let said = run_python(
        "check_pyramid_labels.py",
        &[Path::new(env!("CARGO_BIN_EXE_chunkwise")), dir.path()],
    );
    assert!(said.contains("label pyramids equal numpy's"), "{said}");
}

/// `append` onto an OME-Zarr image (spec/PYRAMID.md §6): every method that grows, against
/// numpy on the grown volume and against a pyramid built from scratch; a rerun, `--again`, a
/// kill at every step of the commit (old or new pyramid, and the rerun completes it) and bad
/// input (tests/python/check_pyramid_append.py).
#[test]
fn appended_pyramids_equal_pyramids_of_the_grown_volume() {
    let dir = tmp();
    let said = run_python(
        "check_pyramid_append.py",
        &[Path::new(env!("CARGO_BIN_EXE_chunkwise")), dir.path()],
    );
    assert!(said.contains("appended pyramids equal numpy's"), "{said}");
}

/// PYRAMID §5: factors of 0, more levels than the data allows, units that are not UDUNITS
/// names, axis names not matching the rank, chunks the factors do not divide, a budget too
/// small: one line naming the values, and nothing written.
#[test]
fn bad_pyramids_are_refused_and_leave_nothing() {
    let dir = tmp();
    let d = dir.path();
    let a = ndarray::ArrayD::<u16>::zeros(vec![8, 16, 16]);
    let src = d.join("a.zarr");
    chunkwise::from_array(a.view(), &src, &chunkwise::ConvertOptions::default()).unwrap();
    let out = d.join("p.ome.zarr");
    let (s, o) = (src.to_str().unwrap(), out.to_str().unwrap());
    for (args, says) in [
        (vec!["--factors", "2,0,2"], "the factor on axis 1 is 0"),
        (
            vec!["--factors", "2,2,2", "--levels", "9"],
            "the data allows at most 5 with these factors",
        ),
        (
            vec!["--units", "microns,um,um"],
            "\"microns\" (axis \"z\") is not one of",
        ),
        (vec!["--axis-names", "y,x"], "2 given for a 3-D array"),
        (
            vec!["--axis-types", "space,channel,space"],
            "orders axes time, then channel",
        ),
        (vec!["--voxel-size", "1,0,1"], "0 is not a positive size"),
        (
            vec!["--factors", "3,3,3", "--levels", "2", "--chunks", "4,4,4"],
            "a chunk length of 4 on axis 0 is not a multiple of level 1's factor 3",
        ),
        (
            vec!["--method", "median"],
            "give mean, mode, gaussian, nearest, min or max",
        ),
        (vec!["--levels", "0"], "at least one level"),
        (vec!["--memory", "1KiB"], "holds too little"),
    ] {
        let mut all = vec!["pyramid", s, "-o", o];
        all.extend(args.iter().copied());
        let r = chunkwise(&all);
        assert_eq!(r.status.code(), Some(2), "{args:?}: {}", stderr(&r));
        assert!(stderr(&r).contains(says), "{args:?}: {}", stderr(&r));
        assert_eq!(stderr(&r).trim().lines().count(), 1, "{}", stderr(&r));
        assert!(!out.exists(), "{args:?}");
    }
    // A 1-D array is no OME-Zarr image.
    let line = d.join("line.npy");
    chunkwise::support::write_npy(&line, chunkwise::DType::U8, &[10], &[0; 10]).unwrap();
    let r = chunkwise(&["pyramid", line.to_str().unwrap(), "-o", o]);
    assert!(stderr(&r).contains("2 to 5 axes"), "{}", stderr(&r));
    // An existing output is kept without --overwrite.
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), b"mine").unwrap();
    let r = chunkwise(&["pyramid", s, "-o", o]);
    assert!(stderr(&r).contains("already exists"), "{}", stderr(&r));
    let r = chunkwise(&["pyramid", s, "-o", o, "--overwrite"]);
    assert!(
        stderr(&r).contains("not a Zarr group or array"),
        "{}",
        stderr(&r)
    );
    assert_eq!(std::fs::read(out.join("keep.txt")).unwrap(), b"mine");
    let left: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    assert_eq!(left.len(), 3, "{left:?}"); // a.zarr, line.npy, p.ome.zarr (the user's)
}

/// PYRAMID §4: a group without multiscales given as an input is named as such, with its
/// members; a level an image does not have is named with the levels it has; `info` prints
/// the pyramid.
#[test]
fn ome_inputs_name_groups_levels_and_print_the_pyramid() {
    let dir = tmp();
    let d = dir.path();
    let a = ndarray::ArrayD::<u8>::from_shape_fn(vec![16, 16], |i| (i[0] * 16 + i[1]) as u8);
    let src = d.join("a.zarr");
    chunkwise::from_array(a.view(), &src, &chunkwise::ConvertOptions::default()).unwrap();
    let img = d.join("a.ome.zarr");
    let r = chunkwise(&[
        "pyramid",
        src.to_str().unwrap(),
        "-o",
        img.to_str().unwrap(),
        "--chunks",
        "4,4",
        "--units",
        "nanometer,nanometer",
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    let r = chunkwise(&["info", img.to_str().unwrap()]);
    let text = stdout(&r);
    assert!(text.contains("mean pyramid of 3 levels"), "{text}");
    assert!(text.contains("level 2 (2): 4x4 uint8"), "{text}");
    assert!(text.contains("y (nanometer)"), "{text}");
    let r = chunkwise(&["info", img.join("7").to_str().unwrap()]);
    assert!(
        stderr(&r).contains("has 3 levels (0 to 2): there is no level 7"),
        "{}",
        stderr(&r)
    );
    // A plain group (what `reduce` writes for several ops).
    let group = d.join("g.zarr");
    let r = chunkwise(&[
        "reduce",
        src.to_str().unwrap(),
        "--axis",
        "0",
        "--op",
        "max,min",
        "-o",
        group.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    let r = chunkwise(&["info", group.to_str().unwrap()]);
    assert!(
        stderr(&r).contains("a Zarr group without OME-Zarr multiscales")
            && stderr(&r).contains("(max, min)"),
        "{}",
        stderr(&r)
    );
}

/// PYRAMID §3: memory is the chunks in flight and the parents waiting, not the volume: a
/// 64 MiB uint16 volume becomes a 4-level pyramid under a 24 MiB budget, in a process whose
/// peak stays below the budget plus the process's own (measured) footprint.
#[test]
fn a_large_pyramid_is_built_in_bounded_memory() {
    let dir = tmp();
    let d = dir.path();
    let (nz, ny, nx) = (64usize, 512usize, 1024usize);
    let value = |i: usize| ((i as u64).wrapping_mul(2_654_435_761) >> 20) as u16;
    let a =
        ndarray::ArrayD::from_shape_vec(vec![nz, ny, nx], (0..nz * ny * nx).map(value).collect())
            .unwrap();
    let src = d.join("v.zarr");
    chunkwise::from_array(
        a.view(),
        &src,
        &chunkwise::ConvertOptions::default().chunks(Some(vec![16, 64, 64])),
    )
    .unwrap();
    let (base, _) = crate::common::peak_rss(&["info", src.to_str().unwrap()], d);
    let out = d.join("v.ome.zarr");
    let (peak, said) = crate::common::peak_rss(
        &[
            "--threads",
            "2",
            "pyramid",
            src.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--chunks",
            "16,64,64",
            "--factors",
            "2,2,2",
            "--levels",
            "4",
            "--memory",
            "24MiB",
        ],
        d,
    );
    assert!(
        said.contains("4 levels (64x512x1024, 32x256x512, 16x128x256, 8x64x128)"),
        "{said}"
    );
    let budget = 24 << 20;
    assert!(
        peak < base + budget,
        "peak RSS {peak} above the process's {base} plus the 24 MiB budget"
    );
    // Chunk by chunk equals the kernel on the whole array, level after level.
    let mut want = a;
    for level in 1..4 {
        want = chunkwise::kernel::downsample(
            want.view(),
            &[2, 2, 2],
            chunkwise::kernel::Downsample::Mean,
        )
        .unwrap();
        let got = chunkwise::Input::open(out.join(level.to_string()))
            .unwrap()
            .read_region::<u16>(&chunkwise::Region::full(
                want.shape()
                    .iter()
                    .map(|&n| n as u64)
                    .collect::<Vec<_>>()
                    .as_slice(),
            ))
            .unwrap();
        assert!(
            got == want,
            "level {level} differs from the whole-array kernel"
        );
    }
}

/// PYRAMID §2: a pyramid killed mid-way (SIGKILL) leaves nothing at the output and its build
/// beside it; the rerun resumes it (the summary says how many level-0 chunks were done), and
/// every level equals a pyramid built in one go. Another pyramid into the same output is
/// refused until `--overwrite`.
#[test]
fn a_killed_pyramid_resumes_and_equals_one_built_in_one_go() {
    let dir = tmp();
    let d = dir.path();
    let (n, c) = (64usize, 8u64);
    let value = |i: usize| ((i as u64).wrapping_mul(2_654_435_761) >> 22) as u16;
    let a = ndarray::ArrayD::from_shape_vec(vec![n, n, n], (0..n * n * n).map(value).collect())
        .unwrap();
    let src = d.join("v.zarr");
    chunkwise::from_array(
        a.view(),
        &src,
        &chunkwise::ConvertOptions::default().chunks(Some(vec![c; 3])),
    )
    .unwrap();
    let args = |out: &Path| -> Vec<String> {
        [
            "pyramid",
            src.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--chunks",
            "8,8,8",
            "--levels",
            "3",
            "--factors",
            "2,2,2",
            "--codec",
            "zstd",
            "--threads",
            "2",
        ]
        .map(String::from)
        .to_vec()
    };
    let once = d.join("once.ome.zarr");
    let o = chunkwise(&args(&once).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    let out = d.join("k.ome.zarr");
    let build = d.join(".k.ome.zarr.chunkwise-pyramid");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_chunkwise"))
        .args(args(&out))
        .env("CHUNKWISE_TEST_CHUNK_DELAY_MS", "10")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed once a tree of chunks (a top-level chunk and those below it) is logged whole.
    let log = build.join(".2.chunkwise-job/done.0.1");
    let start = std::time::Instant::now();
    while std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0) == 0 {
        assert!(
            start.elapsed().as_secs() < 60,
            "no level-0 chunk was logged"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before the kill"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!out.exists(), "a killed pyramid published");
    assert!(build.is_dir());
    // Another pyramid into the same output: refused, the build kept.
    let mut other = args(&out);
    other[11] = "blosc-lz4".into();
    let o = chunkwise(&other.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("overwrit"), "{}", stderr(&o));
    assert!(build.is_dir());
    let o = chunkwise(&args(&out).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("resumed from a run before"),
        "{}",
        stdout(&o)
    );
    assert!(!build.exists());
    assert_same_image(&out, &once, 3);
}

/// PYRAMID §3: a pyramid in parts (`--partition I/N`, parts run in any order) publishes, with
/// its last part, the image one process builds: every level's values and the metadata; a part
/// that is not last says it waits and publishes nothing.
#[test]
fn a_pyramid_in_parts_is_the_pyramid_one_process_builds() {
    let dir = tmp();
    let d = dir.path();
    let n = 48usize;
    let value = |i: usize| ((i as u64).wrapping_mul(2_654_435_761) >> 21) as u16;
    let a =
        ndarray::ArrayD::from_shape_vec(vec![2 * n, n, n], (0..2 * n * n * n).map(value).collect())
            .unwrap();
    let src = d.join("v.zarr");
    chunkwise::from_array(
        a.view(),
        &src,
        &chunkwise::ConvertOptions::default().chunks(Some(vec![8; 3])),
    )
    .unwrap();
    let args = |out: &Path, part: Option<&str>| -> Vec<String> {
        let mut v: Vec<String> = [
            "pyramid",
            src.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--chunks",
            "8,8,8",
            "--levels",
            "3",
            "--factors",
            "2,2,2",
        ]
        .map(String::from)
        .to_vec();
        if let Some(p) = part {
            v.extend(["--partition".to_string(), p.to_string()]);
        }
        v
    };
    let run = |v: Vec<String>| chunkwise(&v.iter().map(String::as_str).collect::<Vec<_>>());
    let once = d.join("once.ome.zarr");
    let o = run(args(&once, None));
    assert!(o.status.success(), "{}", stderr(&o));
    let out = d.join("p.ome.zarr");
    for (k, part) in ["2/3", "0/3", "1/3"].into_iter().enumerate() {
        let o = run(args(&out, Some(part)));
        assert!(o.status.success(), "{part}: {}", stderr(&o));
        if k < 2 {
            assert!(
                stdout(&o).contains("waiting for the other partitions"),
                "{}",
                stdout(&o)
            );
            assert!(!out.exists(), "published before the last part");
            // `status` describes the build: the parts done, and those not started.
            let st = chunkwise(&["status", "--json", out.to_str().unwrap()]);
            assert!(st.status.success(), "{}", stderr(&st));
            let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
            let states: Vec<&str> = v["parts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["state"].as_str().unwrap())
                .collect();
            let want: &[&str] = if k == 0 {
                &["missing", "missing", "done"]
            } else {
                &["done", "missing", "done"]
            };
            assert_eq!(states, want, "{v}");
            assert_eq!(v["building"], true);
            assert!(
                v["chunks_done"].as_u64() < v["chunks_total"].as_u64(),
                "{v}"
            );
        } else {
            assert!(stdout(&o).starts_with("wrote "), "{}", stdout(&o));
        }
    }
    assert!(!d.join(".p.ome.zarr.chunkwise-pyramid").exists());
    assert_same_image(&out, &once, 3);
    // A part run again once the image is published (a retried task): nothing to do; other
    // settings into it: refused, the image kept.
    let o = run(args(&out, Some("1/3")));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("nothing to do"), "{}", stdout(&o));
    let mut other = args(&out, Some("1/3"));
    other[5] = "4,4,4".into();
    let o = run(other);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
    assert_same_image(&out, &once, 3);
}

/// PYRAMID §3: a gaussian pyramid and one with label images, in parts run in any order: the
/// last part publishes what one process builds (every level's values, the labels' too, and
/// the metadata). A gaussian part that finds level 0 published makes the levels below; one
/// that finds it unfinished waits.
#[test]
fn gaussian_and_labelled_pyramids_in_parts_are_what_one_process_builds() {
    let dir = tmp();
    let d = dir.path();
    let n = 40usize;
    let value = |i: usize| ((i as u64).wrapping_mul(2_654_435_761) >> 21) as u16;
    let shape = vec![2 * n, n, n];
    let a = ndarray::ArrayD::from_shape_vec(shape.clone(), (0..2 * n * n * n).map(value).collect())
        .unwrap();
    let lab = ndarray::ArrayD::from_shape_vec(
        shape,
        (0..2 * n * n * n).map(|i| (value(i) % 5) as u32).collect(),
    )
    .unwrap();
    let src = d.join("v.zarr");
    let labels = d.join("cells.zarr");
    let opts = chunkwise::ConvertOptions::default().chunks(Some(vec![8; 3]));
    chunkwise::from_array(a.view(), &src, &opts).unwrap();
    chunkwise::from_array(lab.view(), &labels, &opts).unwrap();
    let args = |out: &Path, extra: &[&str], part: Option<&str>| -> Vec<String> {
        let mut v: Vec<String> = [
            "pyramid",
            src.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--chunks",
            "8,8,8",
            "--levels",
            "3",
            "--factors",
            "2,2,2",
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
        if let Some(p) = part {
            v.extend(["--partition".to_string(), p.to_string()]);
        }
        v
    };
    let run = |v: Vec<String>| chunkwise(&v.iter().map(String::as_str).collect::<Vec<_>>());
    let label_arg = format!("cells={}", labels.display());
    for (what, extra) in [
        ("gaussian", vec!["--method", "gaussian"]),
        ("labels", vec!["--labels", label_arg.as_str()]),
    ] {
        let once = d.join(format!("{what}-once.ome.zarr"));
        let o = run(args(&once, &extra, None));
        assert!(o.status.success(), "{what}: {}", stderr(&o));
        let out = d.join(format!("{what}-parts.ome.zarr"));
        for (k, part) in ["1/3", "2/3", "0/3"].into_iter().enumerate() {
            let o = run(args(&out, &extra, Some(part)));
            assert!(o.status.success(), "{what} {part}: {}", stderr(&o));
            if k < 2 {
                assert!(
                    stdout(&o).contains("waiting for the other partitions"),
                    "{what} {part}: {}",
                    stdout(&o)
                );
                assert!(!out.exists(), "{what}: published before the last part");
                let build = d.join(format!(".{what}-parts.ome.zarr.chunkwise-pyramid"));
                // Only level 0 is made by the parts of a gaussian pyramid.
                assert!(
                    !build.join("1").exists(),
                    "{what} {part}: a level below level 0"
                );
            } else {
                assert!(stdout(&o).starts_with("wrote "), "{}", stdout(&o));
            }
        }
        assert_same_image(&out, &once, 3);
        if what == "labels" {
            assert_same_image(&out.join("labels/cells"), &once.join("labels/cells"), 3);
            assert_eq!(
                std::fs::read(out.join("labels/zarr.json")).unwrap(),
                std::fs::read(once.join("labels/zarr.json")).unwrap()
            );
        }
    }
}

/// PYRAMID §1.2: `convert INPUT -o OUT --pyramid` (one pass over a .npy) writes the image
/// `pyramid` writes from the converted store, in one process and in parts.
#[test]
fn convert_pyramid_is_the_pyramid_of_the_converted_store() {
    let dir = tmp();
    let d = dir.path();
    let n = 24usize;
    let bytes: Vec<u8> = (0..3 * n * n * n)
        .flat_map(|i| (((i as u64).wrapping_mul(2_654_435_761) >> 20) as u16 % 4000).to_le_bytes())
        .collect();
    let npy = d.join("v.npy");
    chunkwise::support::write_npy(
        &npy,
        chunkwise::DType::U16,
        &[3 * n as u64, n as u64, n as u64],
        &bytes,
    )
    .unwrap();
    let geometry = ["--chunks", "8,8,8", "--levels", "3", "--factors", "2,2,2"];
    let p = |x: &Path| x.to_str().unwrap().to_string();
    let o = chunkwise(&[
        "convert",
        &p(&npy),
        "-o",
        &p(&d.join("v.zarr")),
        "--chunks",
        "8,8,8",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let want = d.join("want.ome.zarr");
    let mut args = vec![
        "pyramid".to_string(),
        p(&d.join("v.zarr")),
        "-o".into(),
        p(&want),
    ];
    args.extend(geometry.iter().map(|s| s.to_string()));
    args.extend(["--name".into(), "v".into()]);
    let o = chunkwise(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    let one = d.join("one.ome.zarr");
    let convert = |out: &Path, part: Option<&str>| {
        let mut v = vec![
            "convert".to_string(),
            p(&npy),
            "-o".into(),
            p(out),
            "--pyramid".into(),
            "--name".into(),
            "v".into(),
        ];
        v.extend(geometry.iter().map(|s| s.to_string()));
        if let Some(part) = part {
            v.extend(["--partition".into(), part.into()]);
        }
        chunkwise(&v.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let o = convert(&one, None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_same_image(&one, &want, 3);
    let parts = d.join("parts.ome.zarr");
    let o = convert(&parts, Some("1/2"));
    assert!(
        o.status.success() && stdout(&o).contains("waiting for the other partitions"),
        "{}{}",
        stdout(&o),
        stderr(&o)
    );
    assert!(!parts.exists());
    let o = convert(&parts, Some("0/2"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_same_image(&parts, &want, 3);
}

/// Images `a` and `b` of `levels` levels hold the same values level by level and the same
/// metadata (but for their names).
fn assert_same_image(a: &Path, b: &Path, levels: usize) {
    for level in 0..levels {
        let x = chunkwise::Store::open(a.join(level.to_string())).unwrap();
        let y = chunkwise::Store::open(b.join(level.to_string())).unwrap();
        assert_eq!(
            crate::common::store_bytes(&x),
            crate::common::store_bytes(&y),
            "level {level}"
        );
    }
    let meta = |p: &Path| {
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(p.join("zarr.json")).unwrap()).unwrap();
        v["attributes"]["ome"]["multiscales"][0]["name"] = serde_json::Value::Null;
        v
    };
    assert_eq!(meta(a), meta(b));
}
