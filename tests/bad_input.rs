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
        &["/no/such/input.npy", "no such file"],
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
