//! Reductions and index kernels against numpy (fixtures/reduce, made by
//! fixtures/make_reduce_fixtures.py): statistics of every dtype, NaN and infinities, empty and
//! single-voxel arrays, regions and axes; histograms; argwhere; graph edges against a brute
//! force over every neighbour offset (spec/REDUCE.md).

use std::path::{Path, PathBuf};

use chunkwise::{
    AxisStats, ConvertOptions, Histogram, IndexOptions, PerChunk, ReduceOptions, Region, Select,
    Stats,
};
use serde_json::Value;

use crate::common::{chunkwise, fixture, read_npy, run_python, stderr, stdout, tmp};

fn refs() -> Value {
    let text = std::fs::read_to_string(fixture("reduce/refs.json")).unwrap();
    serde_json::from_str::<Value>(&text).unwrap()["refs"].clone()
}

/// Converts a fixture .npy (path under fixtures/) into a store of `chunks`.
fn store_of(dir: &Path, input: &str, chunks: &[u64]) -> PathBuf {
    let out = dir.join(format!(
        "{}-{}.zarr",
        input.replace('/', "_"),
        chunks
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join("x")
    ));
    if !out.exists() {
        chunkwise::convert(
            &crate::common::input(fixture(input)),
            &out,
            &ConvertOptions::default().chunks(Some(chunks.to_vec())),
        )
        .unwrap();
    }
    out
}

/// A reference number: a JSON number, or a string for big integers and non-finite floats.
fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.parse::<f64>().unwrap_or_else(|_| panic!("{s}"))),
        other => Some(other.as_f64().unwrap()),
    }
}

fn int(v: &Value) -> i128 {
    match v {
        Value::String(s) => s.parse().unwrap(),
        other => i128::from(other.as_i64().unwrap()),
    }
}

fn close(got: Option<f64>, want: Option<f64>, rel: f64, what: &str) {
    match (got, want) {
        (None, None) => {}
        (Some(g), Some(w)) if w.is_nan() => assert!(g.is_nan(), "{what}: {g} vs NaN"),
        (Some(g), Some(w)) if w.is_infinite() => assert_eq!(g, w, "{what}"),
        (Some(g), Some(w)) => {
            assert!(
                (g - w).abs() <= rel * w.abs().max(1e-300),
                "{what}: {g} vs {w}"
            )
        }
        (g, w) => panic!("{what}: {g:?} vs {w:?}"),
    }
}

fn check_stats(s: &chunkwise::StatsAcc, r: &Value, what: &str) {
    assert_eq!(s.count, r["count"].as_u64().unwrap(), "{what} count");
    assert_eq!(s.nan, r["nan_count"].as_u64().unwrap(), "{what} nan");
    if let Some((lo, hi)) = s.int_range() {
        assert_eq!(lo, int(&r["min"]), "{what} min");
        assert_eq!(hi, int(&r["max"]), "{what} max");
        assert_eq!(s.int_sum().unwrap(), int(&r["sum"]), "{what} exact sum");
    } else {
        close(s.min(), num(&r["min"]), 0.0, &format!("{what} min"));
        close(s.max(), num(&r["max"]), 0.0, &format!("{what} max"));
        if s.count > 0 {
            close(Some(s.sum()), num(&r["sum"]), 1e-12, &format!("{what} sum"));
        }
    }
    close(s.mean(), num(&r["mean"]), 1e-12, &format!("{what} mean"));
    close(s.std(), num(&r["std"]), 1e-9, &format!("{what} std"));
}

#[test]
fn stats_of_every_dtype_and_special_values() {
    let dir = tmp();
    let refs = refs();
    for (name, r) in refs.as_object().unwrap() {
        if !name.starts_with("stats_") || r.get("region").is_some() || r.get("axis").is_some() {
            continue;
        }
        let input = r["input"].as_str().unwrap();
        for chunks in [[4u64, 5, 3], [128, 128, 128]] {
            let store = crate::common::input(store_of(dir.path(), input, &chunks));
            let s = chunkwise::reduce(&store, &Stats, &ReduceOptions::default()).unwrap();
            check_stats(&s, r, &format!("{name} {chunks:?}"));
        }
    }
}

#[test]
fn stats_are_identical_whatever_the_threads() {
    let dir = tmp();
    let store = crate::common::input(store_of(
        dir.path(),
        "reduce/special_nan_f32.npy",
        &[3, 2, 4],
    ));
    let a = chunkwise::reduce(&store, &Stats, &ReduceOptions::default().threads(Some(1))).unwrap();
    let b = chunkwise::reduce(&store, &Stats, &ReduceOptions::default().threads(Some(3))).unwrap();
    assert_eq!(a, b);
}

#[test]
fn stats_of_a_region_and_along_an_axis() {
    let dir = tmp();
    let refs = refs();
    let r = &refs["stats_c_uint16_region"];
    let store = crate::common::input(store_of(dir.path(), "inputs/c_uint16.npy", &[4, 5, 3]));
    let region = Region::parse(r["region"].as_str().unwrap(), store.shape())
        .unwrap()
        .region;
    let s = chunkwise::reduce(
        &store,
        &Stats,
        &ReduceOptions::default().region(Some(region)),
    )
    .unwrap();
    check_stats(&s, r, "region");

    let r = &refs["stats_c_uint16_axis1"];
    let per = chunkwise::reduce(
        &store,
        &AxisStats {
            axis: 1,
            len: 14,
            start: 0,
        },
        &ReduceOptions::default(),
    )
    .unwrap();
    let want = r["per_index"].as_array().unwrap();
    assert_eq!(per.len(), want.len());
    for (k, (s, w)) in per.iter().zip(want).enumerate() {
        check_stats(s, w, &format!("axis 1 index {k}"));
    }
    // Per chunk: the block sums add up to the total.
    let chunks = chunkwise::reduce(&store, &PerChunk, &ReduceOptions::default()).unwrap();
    assert_eq!(chunks.len(), 3 * 3 * 4);
    let total: i128 = chunks.iter().map(|c| c.stats.int_sum().unwrap()).sum();
    assert_eq!(total, int(&refs["stats_c_uint16"]["sum"]));
    // Chunk 5 in C order of the 3x3x4 grid is (0, 1, 1).
    assert_eq!(chunks[5].region.ranges(), &[0..4, 5..10, 3..6]);
}

#[test]
fn histograms_match_numpy() {
    let dir = tmp();
    let refs = refs();
    let counts = |v: &Value| -> Vec<u64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect()
    };
    let u16s = crate::common::input(store_of(dir.path(), "inputs/c_uint16.npy", &[4, 5, 3]));
    let h = chunkwise::Histogram::auto(&u16s, None, &ReduceOptions::default()).unwrap();
    let got = chunkwise::reduce(&u16s, &h, &ReduceOptions::default()).unwrap();
    assert_eq!(got, counts(&refs["hist_c_uint16_default"]["counts"]));
    let h = Histogram::new(5, 100.0, 2000.0).unwrap();
    let got = chunkwise::reduce(&u16s, &h, &ReduceOptions::default()).unwrap();
    assert_eq!(got, counts(&refs["hist_c_uint16_5"]["counts"]));
    let f64s = crate::common::input(store_of(dir.path(), "inputs/c_float64.npy", &[4, 5, 3]));
    let h = chunkwise::Histogram::auto(&f64s, None, &ReduceOptions::default()).unwrap();
    let r = &refs["hist_c_float64_default"];
    for (a, b) in h.edges().iter().zip(r["edges"].as_array().unwrap()) {
        assert_eq!(*a, b.as_f64().unwrap());
    }
    assert_eq!(
        chunkwise::reduce(&f64s, &h, &ReduceOptions::default()).unwrap(),
        counts(&r["counts"])
    );
    let nan = crate::common::input(store_of(
        dir.path(),
        "reduce/special_nan_f32.npy",
        &[5, 5, 5],
    ));
    let h = Histogram::new(7, -150.25, 250.5).unwrap();
    let got = chunkwise::reduce(&nan, &h, &ReduceOptions::default()).unwrap();
    assert_eq!(got, counts(&refs["hist_special_nan_f32_7"]["counts"]));
    assert!(Histogram::new(4, 3.0, 3.0).is_err());
    assert!(
        Histogram::new(4, 5.0, 1.0)
            .unwrap_err()
            .to_string()
            .contains("LO < HI")
    );
}

fn read_i64(path: &Path) -> (Vec<u64>, Vec<i64>) {
    let e = read_npy(path);
    assert_eq!(e.dtype, chunkwise::DType::I64);
    let v = e
        .bytes
        .chunks(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    (e.shape, v)
}

#[test]
fn where_matches_argwhere() {
    let dir = tmp();
    let cases: Vec<(&str, &str, Select)> = vec![
        (
            "reduce/mask_sparse_u8.npy",
            "where_mask_sparse_u8",
            Select::NonZero,
        ),
        (
            "reduce/alltrue_bool.npy",
            "where_alltrue_bool",
            Select::NonZero,
        ),
        (
            "reduce/single_voxel_i16.npy",
            "where_single_voxel_i16",
            Select::NonZero,
        ),
        ("reduce/empty_f32.npy", "where_empty_f32", Select::NonZero),
        (
            "inputs/c_uint16.npy",
            "where_c_uint16_above700",
            Select::Above(chunkwise::Number::from(700.0)),
        ),
        (
            "inputs/c_uint16.npy",
            "where_c_uint16_between",
            Select::Between(
                chunkwise::Number::from(150.0),
                chunkwise::Number::from(900.0),
            ),
        ),
        (
            "reduce/mask2d_bool.npy",
            "where_mask2d_bool",
            Select::NonZero,
        ),
        ("reduce/mask1d_u8.npy", "where_mask1d_u8", Select::NonZero),
    ];
    for (input, reference, select) in cases {
        let want = read_i64(&fixture(&format!("reduce/{reference}.npy")));
        let ndim = want.0[1] as usize;
        let chunk_sets: Vec<Vec<u64>> = vec![vec![7; ndim], vec![3; ndim], vec![128; ndim]];
        for chunks in chunk_sets {
            let store = crate::common::input(store_of(dir.path(), input, &chunks));
            let out = dir.path().join(format!("{reference}.npy"));
            let opts = IndexOptions::default().select(select).overwrite(true);
            let r = chunkwise::where_coords(&store, Some(&out), &opts).unwrap();
            assert_eq!(read_i64(&out), want, "{reference} {chunks:?}");
            assert_eq!(r.count, want.0[0]);
            let c = chunkwise::where_coords(&store, None, &opts).unwrap();
            assert_eq!(c.count, want.0[0], "count only");
        }
    }
}

#[test]
fn graph_edges_match_brute_force() {
    let dir = tmp();
    let cases: Vec<(&str, u32, &str)> = vec![
        ("reduce/graph_in_bool.npy", 6, "graph_in_bool_6"),
        ("reduce/graph_in_bool.npy", 18, "graph_in_bool_18"),
        ("reduce/graph_in_bool.npy", 26, "graph_in_bool_26"),
        ("reduce/alltrue_bool.npy", 6, "graph_alltrue_6"),
        ("reduce/alltrue_bool.npy", 26, "graph_alltrue_26"),
        ("reduce/mask2d_bool.npy", 4, "graph_mask2d_4"),
        ("reduce/mask2d_bool.npy", 8, "graph_mask2d_8"),
        ("reduce/mask1d_u8.npy", 2, "graph_mask1d_2"),
    ];
    for (input, conn, reference) in cases {
        let want = read_i64(&fixture(&format!("reduce/{reference}.npy")));
        let ndim = read_npy(&fixture(input)).shape.len();
        for c in [3u64, 8, 128] {
            let store = crate::common::input(store_of(dir.path(), input, &vec![c; ndim]));
            let out = dir.path().join(format!("{reference}.npy"));
            let opts = IndexOptions::default().overwrite(true);
            let r = chunkwise::graph_edges(&store, Some(&out), Some(conn), false, &opts).unwrap();
            assert_eq!(read_i64(&out), want, "{reference} chunks {c}");
            assert_eq!(r.count, want.0[0]);
            // The coordinate form names the same edges.
            let co = dir.path().join("coords.npy");
            chunkwise::graph_edges(&store, Some(&co), Some(conn), true, &opts).unwrap();
            let (shape, v) = read_i64(&co);
            assert_eq!(shape, vec![want.0[0], 2 * ndim as u64]);
            let dims = store.shape().to_vec();
            let flat = |p: &[i64]| {
                p.iter()
                    .zip(&dims)
                    .fold(0i64, |acc, (&x, &n)| acc * n as i64 + x)
            };
            let pairs: Vec<i64> = v
                .chunks(2 * ndim)
                .flat_map(|e| [flat(&e[..ndim]), flat(&e[ndim..])])
                .collect();
            assert_eq!(pairs, want.1, "{reference} coords");
        }
    }
    let store = crate::common::input(store_of(dir.path(), "reduce/graph_in_bool.npy", &[8, 8, 8]));
    let err = chunkwise::graph_edges(&store, None, Some(10), false, &IndexOptions::default())
        .unwrap_err();
    assert!(
        err.to_string().contains("invalid connectivity") && err.to_string().contains("[6, 18, 26]"),
        "{err}"
    );
}

#[test]
fn cli_stats_histogram_where_graph() {
    let dir = tmp();
    let store = store_of(dir.path(), "inputs/c_uint16.npy", &[4, 5, 3]);
    let s = store.to_str().unwrap();
    let o = chunkwise(&["stats", s, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["sum"], refs()["stats_c_uint16"]["sum"]);
    // Along an axis, to .npy: a table of count, min, max, sum, mean, std.
    let t = dir.path().join("axis.npy");
    let o = chunkwise(&["stats", s, "--axis", "0", "-o", t.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(read_npy(&t).shape, vec![9, 6]);
    let o = chunkwise(&["stats", s, "--per-chunk", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 36);
    let o = chunkwise(&[
        "histogram",
        s,
        "--bins",
        "5",
        "--range",
        "100,2000",
        "--json",
    ]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["counts"], refs()["hist_c_uint16_5"]["counts"]);
    let w = dir.path().join("w.npy");
    let o = chunkwise(&["where", s, "-o", w.to_str().unwrap(), "--above", "700"]);
    assert!(stdout(&o).contains("coordinates"), "{}", stdout(&o));
    assert_eq!(
        read_i64(&w),
        read_i64(&fixture("reduce/where_c_uint16_above700.npy"))
    );
    let o = chunkwise(&["where", s, "--count-only", "--above", "700"]);
    assert_eq!(stdout(&o).trim(), read_i64(&w).0[0].to_string());
    let g = dir.path().join("g.npy");
    let m = store_of(dir.path(), "reduce/graph_in_bool.npy", &[7, 7, 7]);
    let o = chunkwise(&[
        "graph",
        m.to_str().unwrap(),
        "-o",
        g.to_str().unwrap(),
        "--connectivity",
        "18",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        read_i64(&g),
        read_i64(&fixture("reduce/graph_in_bool_18.npy"))
    );

    // Bad input: one line, exit 2, nothing written.
    for (args, needle) in [
        (vec!["stats", s, "--axis", "3"], "axis 3 is out of range"),
        (vec!["stats", s, "--region", "0:5,20"], "out of bounds"),
        (vec!["histogram", s, "--range", "10,10"], "LO < HI"),
        (
            vec!["graph", s, "--count-only", "--connectivity", "7"],
            "--connectivity",
        ),
        (vec!["where", s, "-o", "/no/such/dir/w.npy"], "/no/such/dir"),
    ] {
        let o = chunkwise(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }
    let o = chunkwise(&["where", s, "-o", w.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "an existing output is kept");
}

/// `histogram --plot`: the bars, their heights (linear and log), the percentile marks and the
/// picture's text chunk against numpy on the whole array (tests/python/check_histogram_plot.py;
/// spec/REDUCE.md §3.1).
#[test]
fn histogram_charts_match_numpy() {
    let dir = tmp();
    let said = run_python(
        "check_histogram_plot.py",
        &[Path::new(env!("CARGO_BIN_EXE_chunkwise")), dir.path()],
    );
    assert!(said.contains("charts equal numpy's"), "{said}");
}

/// A picture format that is not PNG or SVG, an existing chart, a missing directory, a
/// percentile outside 0..100, a size too small, a chart flag without `--plot`: one line naming
/// the value, exit 2, and nothing written (spec/REDUCE.md §3.1, §6).
#[test]
fn bad_histogram_plots_are_refused_and_leave_nothing() {
    let dir = tmp();
    let d = dir.path();
    let a = ndarray::ArrayD::<u8>::zeros(vec![4, 6, 8]);
    let src = d.join("a.zarr");
    chunkwise::from_array(a.view(), &src, &ConvertOptions::default()).unwrap();
    let s = src.to_str().unwrap();
    let jpg = d.join("h.jpg");
    let png = d.join("h.png");
    let (j, p) = (jpg.to_str().unwrap(), png.to_str().unwrap());
    for (args, says) in [
        (vec!["--plot", j], "name a .png or .svg file"),
        (
            vec!["--plot", p, "--percentiles", "101"],
            "101 is outside 0..100",
        ),
        (vec!["--plot", p, "--percentiles", "1,x"], "x"),
        (
            vec!["--plot", p, "--plot-size", "10x10"],
            "give 200 to 8192 pixels",
        ),
        (vec!["--plot", p, "--plot-size", "800"], "800"),
        (vec!["--log"], "--plot"),
        (vec!["--percentiles", "5"], "--plot"),
        (vec!["--plot", "/nonexistent/dir/h.png"], "/nonexistent/dir"),
    ] {
        let mut all = vec!["histogram", s];
        all.extend(args.iter().copied());
        let r = chunkwise(&all);
        assert_eq!(r.status.code(), Some(2), "{args:?}: {}", stderr(&r));
        assert!(stderr(&r).contains(says), "{args:?}: {}", stderr(&r));
        assert!(
            stderr(&r).trim().lines().count() <= 4,
            "{args:?}: {}",
            stderr(&r)
        );
        assert!(!jpg.exists() && !png.exists(), "{args:?}");
    }
    // An existing chart is kept unless --overwrite; -o's counts are not written either.
    std::fs::write(&png, b"mine").unwrap();
    let counts = d.join("c.json");
    let r = chunkwise(&["histogram", s, "--plot", p, "-o", counts.to_str().unwrap()]);
    assert_eq!(r.status.code(), Some(2), "{}", stderr(&r));
    assert!(stderr(&r).contains(p), "{}", stderr(&r));
    assert_eq!(std::fs::read(&png).unwrap(), b"mine");
    assert!(!counts.exists());
    let r = chunkwise(&["histogram", s, "--plot", p, "--overwrite"]);
    assert!(r.status.success(), "{}", stderr(&r));
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
    let left: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}"); // a.zarr and h.png: no temporary file
}
