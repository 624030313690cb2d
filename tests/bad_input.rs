//! Bad input: a one-line error naming the file or chunk and the values, exit code 2, and
//! nothing at the output path (spec/CLI.md "Errors").

use std::path::Path;

use crate::common::{chunkwise, fixture, stderr, stdout, tmp};

/// Runs `convert` expecting failure; checks the message mentions every `needles` item and that
/// the output directory holds nothing afterwards.
fn convert_fails(args: &[&str], needles: &[&str]) {
    let dir = tmp();
    let out = dir.path().join("out.zarr");
    let mut all = vec!["convert"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", out.to_str().unwrap()]);
    let o = chunkwise(&all);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("chunkwise: error: "), "{err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: {err:?} lacks {n:?}");
    }
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "{args:?} left {left:?}");
}

fn f(rel: &str) -> String {
    fixture(rel).to_str().unwrap().to_string()
}

#[test]
fn missing_and_empty_inputs() {
    convert_fails(
        &["/no/such/input.npy"],
        &[
            "/no/such/input.npy",
            "No such file or directory (os error 2)",
        ],
    );
    convert_fails(
        &[&f("inputs/bad/empty_dir")],
        &["empty_dir", "no .npy or .tif"],
    );
    convert_fails(&[&f("inputs/stack_u16/nothing_*.npy")], &["nothing_*.npy"]);
}

#[test]
fn stacks_that_disagree_name_the_first_differing_file() {
    convert_fails(
        &[&f("inputs/bad/mixed_shapes")],
        &["s_2.npy", "shape", "4x6", "4x5", "s_0.npy"],
    );
    convert_fails(
        &[&f("inputs/bad/mixed_dtypes")],
        &["s_3.npy", "dtype", "float32", "uint16"],
    );
    convert_fails(
        &[&f("inputs/c_uint8.npy"), &f("inputs/multi_u16.tif")],
        &["mixed input types"],
    );
}

#[test]
fn broken_and_unsupported_npy() {
    convert_fails(
        &[&f("inputs/bad/truncated.npy")],
        &["truncated.npy", "truncated", "1440", "1340"],
    );
    convert_fails(&[&f("inputs/bad/complex.npy")], &["complex.npy", "<c8"]);
    convert_fails(
        &[&f("inputs/bad/structured.npy")],
        &["structured.npy", "structured"],
    );
    convert_fails(&[&f("inputs/bad/object.npy")], &["object.npy", "|O"]);
    convert_fails(
        &[&f("inputs/bad/not_npy.npy")],
        &["not_npy.npy", "not a valid .npy"],
    );
}

#[test]
fn raw_input_problems() {
    convert_fails(
        &[&f("inputs/bad/badsize.raw")],
        &["badsize.raw", "2200", "2000", "10x10x11"],
    );
    convert_fails(
        &[&f("inputs/bare_f32.bin")],
        &["--dtype", "--shape", "bare_f32.json"],
    );
    convert_fails(
        &[
            &f("inputs/bare_f32.bin"),
            "--dtype",
            "float32",
            "--shape",
            "4,5,7",
        ],
        &["bare_f32.bin", "480", "560"],
    );
    convert_fails(
        &[
            &f("inputs/bare_f32.bin"),
            "--dtype",
            "complex64",
            "--shape",
            "4,5,6",
        ],
        &["complex64"],
    );
    convert_fails(
        &[&f("inputs/c_uint8.npy"), "--dtype", "uint8"],
        &["--dtype", "c_uint8.npy"],
    );
}

#[test]
fn bad_chunking_and_codec_options() {
    let input = f("inputs/c_uint16.npy");
    convert_fails(
        &[&input, "--chunks", "4,0,4"],
        &["--chunks", "axis 1", "zero"],
    );
    convert_fails(
        &[&input, "--chunks", "4,4"],
        &["--chunks", "2 chunk sizes", "3 dimensions", "9x14x11"],
    );
    convert_fails(&[&input, "--codec", "lzma"], &["--codec", "lzma"]);
    convert_fails(
        &[&input, "--codec", "blosc-lz4", "--level", "12"],
        &["--level", "12"],
    );
    convert_fails(
        &[&input, "--chunks", "4,4,4", "--shard", "3,2,2"],
        &["--shard", "3", "4"],
    );
    convert_fails(
        &[&input, "--axis-names", "z,y"],
        &["--axis-names", "2 names", "3"],
    );
    convert_fails(&[&input, "--threads", "0"], &["--threads"]);
}

#[test]
fn existing_output_is_kept() {
    let dir = tmp();
    let out = dir.path().join("o.zarr");
    let input = f("inputs/c_uint16.npy");
    let o = chunkwise(&["convert", &input, "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let before = std::fs::read(out.join("zarr.json")).unwrap();
    let o = chunkwise(&[
        "convert",
        &f("inputs/c_int8.npy"),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
    assert_eq!(std::fs::read(out.join("zarr.json")).unwrap(), before);
    // --overwrite refuses a directory that is not an array.
    let other = dir.path().join("precious");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("notes.txt"), b"x").unwrap();
    let o = chunkwise(&[
        "convert",
        &input,
        "-o",
        other.to_str().unwrap(),
        "--overwrite",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not a zarr array"), "{}", stderr(&o));
    assert!(other.join("notes.txt").exists());
}

#[test]
fn info_and_export_of_non_stores() {
    let o = chunkwise(&["info", "/no/such/store.zarr"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("/no/such/store.zarr"));
    // Any input can be summarised (issue 9: one input type); a directory holding no array is
    // an error naming it.
    let o = chunkwise(&["info", &f("inputs/stack_u16")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(".npy files") && stdout(&o).contains("read by blocks"));
    let dir = tmp();
    let o = chunkwise(&["info", dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no .npy or .tif"), "{}", stderr(&o));
    let o = chunkwise(&[
        "export",
        &f("stores/zarr_python_v3_zstd.zarr"),
        "-o",
        dir.path().join("x.npy").to_str().unwrap(),
        "--region",
        "0:5,40",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("index 40 is out of bounds for size 29"),
        "{}",
        stderr(&o)
    );
    assert!(!Path::new(&dir.path().join("x.npy")).exists());
}

/// A corpus of malformed stores, chunks, headers, specs and flags (issue 9 §6), made fresh.
struct Corpus {
    dir: tempfile::TempDir,
}

impl Corpus {
    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }

    fn new() -> Corpus {
        let dir = tmp();
        let d = dir.path();
        let meta = |shape: &str, chunks: &str, dtype: &str, codecs: &str| {
            format!(
                r#"{{"zarr_format": 3, "node_type": "array", "shape": {shape},
                "data_type": "{dtype}", "chunk_grid": {{"name": "regular",
                "configuration": {{"chunk_shape": {chunks}}}}},
                "chunk_key_encoding": {{"name": "default", "configuration": {{"separator": "/"}}}},
                "fill_value": 0, "codecs": {codecs}}}"#
            )
        };
        let bytes = r#"[{"name": "bytes", "configuration": {"endian": "little"}}]"#;
        let store = |name: &str, text: &str| {
            let p = d.join(name);
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join("zarr.json"), text).unwrap();
        };
        store("not_json.zarr", "{\"zarr_format\": 3, ");
        store(
            "huge_shape.zarr",
            &meta(
                "[4611686018427387904, 4611686018427387904, 4611686018427387904]",
                "[1, 1, 1]",
                "uint16",
                bytes,
            ),
        );
        store(
            "negative_shape.zarr",
            &meta("[-1, 4]", "[1, 1]", "uint16", bytes),
        );
        store(
            "zero_chunk.zarr",
            &meta("[4, 4]", "[0, 4]", "uint16", bytes),
        );
        store(
            "unknown_codec.zarr",
            &meta(
                "[4, 4]",
                "[2, 2]",
                "uint16",
                r#"[{"name": "bytes"}, {"name": "lzma9000"}]"#,
            ),
        );
        store(
            "complex.zarr",
            &meta("[4, 4]", "[2, 2]", "complex128", bytes),
        );
        store(
            "huge_chunk.zarr",
            &meta("[1099511627776]", "[1099511627776]", "uint8", bytes),
        );
        store(
            "many_chunks.zarr",
            &meta("[1099511627776]", "[1]", "uint8", bytes),
        );
        // A rectilinear grid whose run-length edges expand to 10^15 chunks (zarrs would
        // allocate them all), and one of 2^27 chunks over two axes.
        let rle = |counts: &str| {
            format!(
                r#"{{"zarr_format": 3, "node_type": "array", "shape": [1000000000000000, 1000000],
                "data_type": "uint8", "chunk_grid": {{"name": "rectilinear", "configuration":
                {{"kind": "inline", "chunk_shapes": {counts}}}}},
                "chunk_key_encoding": {{"name": "default"}}, "fill_value": 0,
                "codecs": {bytes}}}"#
            )
        };
        store("rle_bomb.zarr", &rle("[[[1, 1000000000000000]], 1000000]"));
        store(
            "rle_product.zarr",
            &rle("[[[7812500000000, 128]], [[1, 1000000]]]"),
        );
        let rank40 = format!("[{}]", vec!["1"; 40].join(", "));
        store("rank40.zarr", &meta(&rank40, &rank40, "uint8", bytes));
        // Good metadata with bad chunks: one truncated, one garbage.
        let zstd = r#"[{"name": "bytes", "configuration": {"endian": "little"}},
            {"name": "zstd", "configuration": {"level": 3, "checksum": false}}]"#;
        store("bad_chunks.zarr", &meta("[4, 4]", "[2, 4]", "uint16", zstd));
        std::fs::create_dir_all(d.join("bad_chunks.zarr/c/0")).unwrap();
        std::fs::create_dir_all(d.join("bad_chunks.zarr/c/1")).unwrap();
        std::fs::write(d.join("bad_chunks.zarr/c/0/0"), [1u8, 2, 3]).unwrap();
        std::fs::write(d.join("bad_chunks.zarr/c/1/0"), [0xffu8; 16]).unwrap();
        std::fs::create_dir_all(d.join("empty_dir")).unwrap();
        // .npy headers.
        let npy = |name: &str, header: &str, data: &[u8]| {
            let mut h = header.to_string();
            while !(10 + h.len() + 1).is_multiple_of(64) {
                h.push(' ');
            }
            h.push('\n');
            let mut v = b"\x93NUMPY\x01\x00".to_vec();
            v.extend_from_slice(&(h.len() as u16).to_le_bytes());
            v.extend_from_slice(h.as_bytes());
            v.extend_from_slice(data);
            std::fs::write(d.join(name), v).unwrap();
        };
        npy(
            "huge.npy",
            "{'descr': '<u2', 'fortran_order': False, 'shape': (4611686018427387904, 4611686018427387904, 64, 64, 64), }",
            &[0; 8],
        );
        npy(
            "negative.npy",
            "{'descr': '<u2', 'fortran_order': False, 'shape': (-3, 4), }",
            &[0; 8],
        );
        npy(
            "garbage_dict.npy",
            "{'descr': '<u2', 'fortran_order': Maybe, 'shape': ((, }",
            &[0; 8],
        );
        npy(
            "short.npy",
            "{'descr': '<u2', 'fortran_order': False, 'shape': (100, 100), }",
            &[0; 8],
        );
        let mut long_header = b"\x93NUMPY\x02\x00".to_vec();
        long_header.extend_from_slice(&u32::MAX.to_le_bytes());
        long_header.extend_from_slice(b"{'descr'");
        std::fs::write(d.join("long_header.npy"), long_header).unwrap();
        // View specs.
        std::fs::write(
            d.join("self.json"),
            r#"{"concat": ["self.json", "self.json"]}"#,
        )
        .unwrap();
        std::fs::write(d.join("ping.json"), r#"{"concat": ["pong.json"]}"#).unwrap();
        std::fs::write(d.join("pong.json"), r#"{"stack": ["ping.json"]}"#).unwrap();
        let mut deep = String::from("\"huge.npy\"");
        for _ in 0..100 {
            deep = format!("{{\"cast\": {deep}, \"dtype\": \"uint16\"}}");
        }
        std::fs::write(d.join("deep.json"), deep).unwrap();
        // Fan-out: three levels of 100 names each would open a million parts.
        let fan = |name: &str| {
            format!(
                r#"{{"concat": [{}]}}"#,
                vec![format!("\"{name}\""); 100].join(", ")
            )
        };
        std::fs::write(d.join("fan.json"), fan("fan2.json")).unwrap();
        std::fs::write(d.join("fan2.json"), fan("fan3.json")).unwrap();
        std::fs::write(d.join("fan3.json"), fan("leaf.json")).unwrap();
        chunkwise::support::write_npy(&d.join("ok.npy"), chunkwise::DType::U8, &[2], &[1, 2])
            .unwrap();
        std::fs::write(
            d.join("leaf.json"),
            r#"{"slice": "ok.npy", "region": "0:1"}"#,
        )
        .unwrap();
        std::fs::write(d.join("unknown_key.json"), r#"{"zip": ["a", "b"]}"#).unwrap();
        std::fs::write(d.join("garbage.tif"), b"II*\x00\xff\xff\xff\x7fnot a tiff").unwrap();
        Corpus { dir }
    }

    /// Every file's path and bytes, to check that nothing was changed.
    fn snapshot(&self) -> Vec<(std::path::PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        let mut todo = vec![self.dir.path().to_path_buf()];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    todo.push(p);
                } else {
                    out.push((p.clone(), std::fs::read(&p).unwrap()));
                }
            }
        }
        out.sort();
        out
    }
}

/// Issue 9 §6: every command on every malformed input exits 2 with one `chunkwise: error:`
/// line naming the file (and the value), never panics, hangs or runs out of memory, and leaves
/// the inputs byte for byte as they were.
#[test]
fn every_command_refuses_every_malformed_input_clearly() {
    let c = Corpus::new();
    let before = c.snapshot();
    let out_dir = tmp();
    let out = |n: &str| out_dir.path().join(n).to_str().unwrap().to_string();
    let inputs = [
        ("not_json.zarr", "not_json.zarr"),
        ("huge_shape.zarr", "2^64"),
        ("negative_shape.zarr", "negative_shape.zarr"),
        ("zero_chunk.zarr", "zero_chunk.zarr"),
        ("unknown_codec.zarr", "lzma9000"),
        ("complex.zarr", "complex128"),
        ("huge_chunk.zarr", "1099511627776"),
        ("many_chunks.zarr", "2^26"),
        ("rle_bomb.zarr", "2^26"),
        ("rle_product.zarr", "2^26"),
        ("rank40.zarr", "40 axes"),
        ("empty_dir", "empty_dir"),
        ("huge.npy", "huge.npy"),
        ("negative.npy", "negative.npy"),
        ("garbage_dict.npy", "garbage_dict.npy"),
        ("short.npy", "short.npy"),
        ("long_header.npy", "long_header.npy"),
        ("self.json", "includes itself"),
        ("ping.json", "includes itself"),
        ("fan.json", "paths and objects"),
        ("deep.json", "deep.json"),
        ("unknown_key.json", "unknown_key.json"),
        ("garbage.tif", "garbage.tif"),
    ];
    for (name, needle) in inputs {
        let p = c.path(name);
        let runs: Vec<Vec<String>> = vec![
            vec!["info".into(), p.clone()],
            vec!["export".into(), p.clone(), "-o".into(), out("x.npy")],
            vec!["stats".into(), p.clone()],
            vec!["histogram".into(), p.clone()],
            vec!["where".into(), p.clone(), "--count-only".into()],
            vec!["graph".into(), p.clone(), "--count-only".into()],
            vec![
                "gaussian".into(),
                p.clone(),
                out("g.zarr"),
                "--sigma".into(),
                "1".into(),
            ],
            vec!["convert".into(), p.clone(), "-o".into(), out("c.zarr")],
        ];
        for args in runs {
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            let start = std::time::Instant::now();
            let o = chunkwise(&argv);
            let err = stderr(&o);
            let what = format!("{name}: {}", args[0]);
            assert_eq!(o.status.code(), Some(2), "{what}: {err}{}", stdout(&o));
            assert_eq!(err.lines().count(), 1, "{what}: one line: {err}");
            assert!(err.starts_with("chunkwise: error: "), "{what}: {err}");
            assert!(err.contains(needle), "{what}: {err:?} lacks {needle:?}");
            assert!(
                start.elapsed().as_secs() < 20,
                "{what}: took {:?}",
                start.elapsed()
            );
        }
    }
    // Corrupt chunks: commands that read them name the chunk; verify lists them (exit 1).
    let bad = c.path("bad_chunks.zarr");
    for args in [
        vec!["export", &bad, "-o", &out("y.npy")],
        vec!["stats", &bad],
        vec!["where", &bad, "--count-only"],
    ] {
        let o = chunkwise(&args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("bad_chunks.zarr") && err.contains("chunk c/"),
            "{err}"
        );
    }
    let o = chunkwise(&["verify", &bad]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stdout(&o).contains("c/0/0") && stdout(&o).contains("c/1/0"));
    assert!(c.snapshot() == before, "an input changed");
    assert!(
        std::fs::read_dir(out_dir.path()).unwrap().next().is_none(),
        "an output was left"
    );
}

/// Issue 9 §6: flag values that are not finite, out of range or absurd are refused naming the
/// value: gaussian sigmas, checkpoint seconds, threads, memory, partitions, regions.
#[test]
fn absurd_flag_values_are_refused_naming_the_value() {
    let dir = tmp();
    let d = dir.path();
    let input = f("inputs/c_uint16.npy");
    let z = d.join("s.zarr");
    let o = chunkwise(&["convert", &input, "-o", z.to_str().unwrap(), "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let zs = z.to_str().unwrap();
    let g = d.join("g.zarr");
    let gs = g.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &[&str])> = vec![
        (
            vec!["gaussian", zs, gs, "--sigma", "1e30"],
            &["--sigma", "1e30"],
        ),
        (
            vec!["gaussian", zs, gs, "--sigma", "1e6"],
            &["--sigma", "4e6"],
        ),
        (
            vec!["gaussian", zs, gs, "--sigma", "1e5"],
            &["400000", "--memory"],
        ),
        (
            vec!["gaussian", zs, gs, "--sigma", "nan"],
            &["--sigma", "NaN"],
        ),
        (
            vec!["gaussian", zs, gs, "--sigma", "-1"],
            &["--sigma", "-1"],
        ),
        (
            vec!["gaussian", zs, gs, "--sigma", "inf"],
            &["--sigma", "inf"],
        ),
        (
            vec!["gaussian", zs, gs, "--sigma", "1", "--truncate", "nan"],
            &["--truncate", "NaN"],
        ),
        (
            vec!["gaussian", zs, gs, "--sigma", "1", "--partition", "3/2"],
            &["--partition", "3/2"],
        ),
        (
            vec!["append", zs, &input, "--checkpoint-secs", "nan"],
            &["--checkpoint-secs", "NaN"],
        ),
        (
            vec!["append", zs, &input, "--checkpoint-secs", "-1"],
            &["--checkpoint-secs", "-1"],
        ),
        (
            vec!["append", zs, &input, "--checkpoint-secs", "inf"],
            &["--checkpoint-secs", "inf"],
        ),
        (
            vec!["export", zs, "-o", "/dev/null/x.npy", "--region", "0:5:0"],
            &["0:5:0"],
        ),
        (vec!["stats", zs, "--threads", "0"], &["--threads"]),
        (
            vec!["histogram", zs, "--bins", "100000000000"],
            &["--bins", "100000000000"],
        ),
    ];
    let before = std::fs::read(z.join("zarr.json")).unwrap();
    for (args, needles) in cases {
        let o = chunkwise(&args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        for n in needles {
            assert!(err.contains(n), "{args:?}: {err:?} lacks {n:?}");
        }
        assert!(!g.exists(), "{args:?} wrote an output");
    }
    assert_eq!(std::fs::read(z.join("zarr.json")).unwrap(), before);
}
