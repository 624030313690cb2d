//! `chunkwise preview` (spec/PREVIEW.md): pictures against numpy on the whole array
//! (tests/python/check_preview.py holds the oracle), bad input, and memory on a large volume.

use std::path::Path;

use crate::common::{chunkwise, run_python, stderr, stdout, tmp};

#[test]
fn previews_match_numpy() {
    let dir = tmp();
    let said = run_python(
        "check_preview.py",
        &[Path::new(env!("CARGO_BIN_EXE_chunkwise")), dir.path()],
    );
    assert!(said.contains("pictures equal numpy's"), "{said}");
}

/// A plane index out of range, an axis that is not there, an empty window, a size of 0, an
/// unwritable output: one line naming the value, and no picture (or temporary file) left.
#[test]
fn bad_previews_are_refused_and_leave_nothing() {
    let dir = tmp();
    let d = dir.path();
    let a = ndarray::ArrayD::<u16>::zeros(vec![4, 6, 8]);
    let src = d.join("a.zarr");
    chunkwise::from_array(a.view(), &src, &chunkwise::ConvertOptions::default()).unwrap();
    let out = d.join("p.png");
    let (s, o) = (src.to_str().unwrap(), out.to_str().unwrap());
    for (args, says) in [
        (vec!["--plane", "0=4"], "0=4 is out of range: axis 0"),
        (vec!["--plane", "x=1"], "is not AXIS=INDEX"),
        (vec!["--project", "3"], "3 is not an axis of the 3-d array"),
        (vec!["--op", "sum"], "max, mean or min, not sum"),
        (vec!["--contrast", "9,2"], "lo must be below hi"),
        (vec!["--contrast", "p5,p5"], "lo must be below hi"),
        (vec!["--size", "0"], "a size of 0"),
        (vec!["--colormap", "jet"], "gray, magma or viridis"),
    ] {
        let mut all = vec!["preview", s, "-o", o];
        all.extend(args.iter().copied());
        let r = chunkwise(&all);
        assert_eq!(r.status.code(), Some(2), "{args:?}");
        assert!(stderr(&r).contains(says), "{args:?}: {}", stderr(&r));
        assert_eq!(stderr(&r).trim().lines().count(), 1, "{}", stderr(&r));
        assert!(!out.exists());
    }
    let empty = d.join("e.npy");
    chunkwise::support::write_npy(&empty, chunkwise::DType::U8, &[5, 0, 10], &[]).unwrap();
    let r = chunkwise(&["preview", empty.to_str().unwrap(), "-o", o]);
    assert!(stderr(&r).contains("nothing to draw"), "{}", stderr(&r));
    assert!(!out.exists());
    std::fs::remove_file(&empty).unwrap();
    let r = chunkwise(&["preview", s, "-o", "/nonexistent/dir/p.png"]);
    assert_eq!(r.status.code(), Some(2));
    assert!(
        stderr(&r).contains("/nonexistent/dir/p.png"),
        "{}",
        stderr(&r)
    );
    let left: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .filter_map(|e| e.ok())
        .collect();
    assert_eq!(left.len(), 1, "{left:?}"); // a.zarr only
    // An existing picture is kept, unless --overwrite.
    std::fs::write(&out, b"mine").unwrap();
    let r = chunkwise(&["preview", s, "-o", o]);
    assert_eq!(r.status.code(), Some(2), "{}", stderr(&r));
    assert!(stderr(&r).contains(o), "{}", stderr(&r));
    assert_eq!(std::fs::read(&out).unwrap(), b"mine");
    let r = chunkwise(&["preview", s, "-o", o, "--overwrite", "-q"]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(std::fs::read(&out).unwrap().starts_with(b"\x89PNG"));
}

/// The picture is folded tile by tile: a mean projection of a (4, 2048, 2048) uint16 volume
/// (32 MiB of float64 at full resolution) drawn at 256 pixels stays far below that, and its
/// pixels are the block means of numpy's mean projection.
#[test]
fn a_large_projection_is_drawn_in_bounded_memory() {
    let dir = tmp();
    let d = dir.path();
    let (nz, ny, nx) = (4usize, 2048usize, 2048usize);
    let value = |i: usize| ((i as u64).wrapping_mul(2_654_435_761) >> 13) as u16;
    let data: Vec<u16> = (0..nz * ny * nx).map(value).collect();
    let a = ndarray::ArrayD::from_shape_vec(vec![nz, ny, nx], data.clone()).unwrap();
    let src = d.join("v.zarr");
    chunkwise::from_array(
        a.view(),
        &src,
        &chunkwise::ConvertOptions::default().chunks(Some(vec![4, 256, 256])),
    )
    .unwrap();
    let tiny = d.join("t.zarr");
    let t = ndarray::ArrayD::<u16>::zeros(vec![4, 8, 8]);
    chunkwise::from_array(t.view(), &tiny, &chunkwise::ConvertOptions::default()).unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let run = |input: &Path, out: &Path| {
        crate::common::peak_rss(
            &[
                "preview",
                &s(input),
                "-o",
                &s(out),
                "--op",
                "mean",
                "--size",
                "256",
                "--contrast",
                "0,65536",
                "--threads",
                "2",
                "-q",
            ],
            d,
        )
        .0
    };
    let base = run(&tiny, &d.join("t.png"));
    let png = d.join("v.png");
    let peak = run(&src, &png);
    assert!(
        peak.saturating_sub(base) < 16 << 20,
        "peak {peak} bytes, {base} for a tiny preview: the projection was held"
    );
    // Pixels: blocks of 8x8 of the mean over axis 0, mapped by the fixed window.
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (256, 256));
    for (py, px) in [(0usize, 0usize), (17, 200), (255, 255), (128, 3)] {
        let mut sum = 0.0;
        for y in py * 8..py * 8 + 8 {
            for x in px * 8..px * 8 + 8 {
                let m: f64 = (0..nz)
                    .map(|z| f64::from(data[(z * ny + y) * nx + x]))
                    .sum();
                sum += m / nz as f64;
            }
        }
        let v = sum / 64.0;
        let want = (v / 65536.0 * 255.0).round_ties_even().clamp(0.0, 255.0) as u8;
        let got = buf[py * 256 + px];
        assert!(
            got.abs_diff(want) <= 1,
            "pixel {py},{px}: {got}, expected {want}"
        );
    }
}

/// The pixels of a grey PNG.
fn png_pixels(path: &Path) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

/// PREVIEW §2 (issue 15): an OME-Zarr image is drawn from its coarsest level that still gives
/// the requested size, the plane and region mapped to that level: its pixels are those of
/// drawing that level's array directly.
#[test]
fn an_ome_zarr_preview_draws_from_the_coarsest_level_that_is_big_enough() {
    let dir = tmp();
    let d = dir.path();
    let a = ndarray::ArrayD::from_shape_fn(vec![16, 256, 256], |i| {
        ((i[0] * 131 + i[1] * 7 + i[2] * 3) % 1000) as u16
    });
    let src = d.join("a.zarr");
    chunkwise::from_array(a.view(), &src, &chunkwise::ConvertOptions::default()).unwrap();
    let img = d.join("a.ome.zarr");
    let r = chunkwise(&[
        "pyramid",
        src.to_str().unwrap(),
        "-o",
        img.to_str().unwrap(),
        "--factors",
        "2,2,2",
        "--levels",
        "3",
        "--chunks",
        "8,32,32",
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    for (size, region, level, direct_region, plane) in [
        ("64", None, 2u64, None, "2"),
        ("128", None, 1, None, "5"),
        ("100", None, 1, None, "5"),
        ("256", None, 0, None, "10"),
        (
            "32",
            Some("0:16,64:192,0:256"),
            2,
            Some("0:4,16:48,0:64"),
            "2",
        ),
    ] {
        let out = d.join(format!("p{size}.png"));
        let mut args = vec![
            "preview",
            img.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--plane",
            "0=10",
            "--size",
            size,
            "--contrast",
            "0,1000",
            "--json",
        ];
        if let Some(reg) = region {
            args.extend(["--region", reg]);
        }
        let r = chunkwise(&args);
        assert!(r.status.success(), "{}", stderr(&r));
        let j: serde_json::Value = serde_json::from_str(&stdout(&r)).unwrap();
        let want_level = (level > 0).then_some(level);
        assert_eq!(j["level"].as_u64(), want_level, "size {size}: {j}");
        // The same picture drawn from that level's array itself.
        let direct = d.join(format!("d{size}.png"));
        let lvl = img.join(level.to_string());
        let plane_arg = format!("0={plane}");
        let mut args = vec![
            "preview",
            lvl.to_str().unwrap(),
            "-o",
            direct.to_str().unwrap(),
            "--plane",
            &plane_arg,
            "--size",
            size,
            "--contrast",
            "0,1000",
        ];
        if let Some(reg) = direct_region {
            args.extend(["--region", reg]);
        }
        let r = chunkwise(&args);
        assert!(r.status.success(), "{}", stderr(&r));
        assert_eq!(png_pixels(&out), png_pixels(&direct), "size {size}");
    }
}
