//! HDF5 datasets as inputs (issue 12; spec/CLI.md "convert", `file.h5:/path/to/dataset`)
//! against h5py-written files: fixtures/hdf5/, made by fixtures/make_hdf5_fixtures.py, with
//! numpy's own copy of every dataset (NAME.npy) as the oracle. Built with the `hdf5` feature
//! (`bash .ci/run` turns it on); without it, an HDF5 input is a clear error (tested below).

#[cfg(feature = "hdf5")]
mod with_hdf5 {
    use chunkwise::{ConvertOptions, Input, Region, Store};

    use crate::common::{
        Expected, assert_store_eq, chunkwise, fixture, read_npy, stderr, stdout, store_bytes, tmp,
    };

    fn h5(file: &str, dataset: &str) -> String {
        format!("{}:{dataset}", fixture(&format!("hdf5/{file}")).display())
    }

    fn oracle(name: &str) -> Expected {
        read_npy(&fixture(&format!("hdf5/{name}.npy")))
    }

    /// (dataset reference, oracle) for every dataset chunkwise reads: chunked (gzip+shuffle,
    /// LZF, gzip big-endian, fletcher32) and contiguous, every element type, a file's only
    /// dataset, a file with a user block, a relative dataset name.
    fn cases() -> Vec<(String, &'static str)> {
        let mut v = vec![
            (h5("volume.h5", "/scan/raw"), "scan__raw"),
            (h5("volume.h5", "/scan/contig"), "scan__contig"),
            (h5("volume.h5", "/lzf"), "lzf"),
            (h5("volume.h5", "big_endian"), "big_endian"),
            (h5("volume.h5", "/checked"), "checked"),
            (h5("volume.h5", "/flags"), "flags"),
            (fixture("hdf5/single.h5").display().to_string(), "single"),
            (
                fixture("hdf5/userblock.h5").display().to_string(),
                "userblock",
            ),
        ];
        for t in ["int8", "int32", "int64", "uint8", "uint64"] {
            v.push((h5("volume.h5", &format!("/{t}")), t));
        }
        // Chunks chunkwise decodes itself: gzip alone, no filter, shuffled 8-byte floats, and
        // chunks never written (read through libhdf5: the fill value).
        v.extend([
            (h5("direct.h5", "/gzip"), "direct_gzip"),
            (h5("direct.h5", "/plain"), "direct_plain"),
            (h5("direct.h5", "/shuffled_f64"), "direct_shuffled_f64"),
            (h5("direct.h5", "/sparse"), "direct_sparse"),
        ]);
        v
    }

    /// A chunk read directly (not through libhdf5) that does not inflate is one error naming
    /// the file, the dataset and the chunk; nothing is published.
    #[test]
    fn a_corrupt_chunk_read_directly_is_named() {
        let dir = tmp();
        let file = dir.path().join("direct.h5");
        std::fs::copy(fixture("hdf5/direct.h5"), &file).unwrap();
        let info: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixture("hdf5/direct_chunks.json")).unwrap())
                .unwrap();
        let first = &info["gzip"][0];
        assert_eq!(first["offset"], serde_json::json!([0, 0, 0]));
        let at = first["byte_offset"].as_u64().unwrap() as usize;
        let size = first["size"].as_u64().unwrap() as usize;
        let mut bytes = std::fs::read(&file).unwrap();
        for b in &mut bytes[at + 2..at + size] {
            *b = !*b;
        }
        std::fs::write(&file, &bytes).unwrap();
        let input = Input::open(format!("{}:/gzip", file.display())).unwrap();
        let out = dir.path().join("out.zarr");
        let err = chunkwise::convert(&input, &out, &ConvertOptions::default())
            .expect_err("converted a corrupt chunk")
            .to_string();
        assert!(
            err.contains("direct.h5") && err.contains("dataset /gzip") && err.contains("[0, 0, 0]"),
            "{err}"
        );
        assert!(!out.exists(), "a partial output was published");
    }

    #[test]
    fn every_dataset_converts_to_numpys_values() {
        for (reference, name) in cases() {
            let want = oracle(name);
            for chunks in [None, Some(vec![2u64; want.shape.len()])] {
                let dir = tmp();
                let out = dir.path().join("out.zarr");
                let input = Input::open(&reference).unwrap_or_else(|e| panic!("{reference}: {e}"));
                assert_eq!(input.shape(), &want.shape[..], "{reference}");
                chunkwise::convert(
                    &input,
                    &out,
                    &ConvertOptions::default().chunks(chunks.clone()),
                )
                .unwrap_or_else(|e| panic!("{reference}: {e}"));
                assert_store_eq(&Store::open(&out).unwrap(), &want);
            }
        }
    }

    /// Read whole through `Input` (blocks: direct datasets' chunks decoded in parallel,
    /// others by one hyperslab), every dataset is numpy's.
    #[test]
    fn every_dataset_reads_as_numpy() {
        for (reference, name) in cases() {
            let want = oracle(name);
            let input = Input::open(&reference).unwrap_or_else(|e| panic!("{reference}: {e}"));
            let mut got = vec![0u8; want.bytes.len()];
            input
                .read_region_into(&Region::full(input.shape()), &mut got)
                .unwrap_or_else(|e| panic!("{reference}: {e}"));
            assert!(got == want.bytes, "{reference}: values differ from numpy's");
        }
    }

    #[test]
    fn regions_read_by_hyperslab() {
        let want = oracle("scan__raw");
        let input = Input::open(h5("volume.h5", "/scan/raw")).unwrap();
        let region = Region::new(vec![3..9, 5..30, 1..17]);
        let got = input.read_region::<u16>(&region).unwrap();
        let all: Vec<u16> = want
            .bytes
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .collect();
        let all = ndarray::ArrayD::from_shape_vec(vec![10, 33, 20], all).unwrap();
        let slice = all.slice(ndarray::s![3..9, 5..30, 1..17]);
        assert_eq!(got.view().into_dimensionality().unwrap(), slice);
    }

    /// spec/CLI.md: a relative `file.h5:/dataset` from another working directory, through the
    /// CLI, the summary naming the dataset.
    #[test]
    fn the_cli_takes_relative_references() {
        let dir = tmp();
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_chunkwise"))
            .current_dir(fixture("hdf5"))
            .args(["convert", "volume.h5:/scan/raw", "-o"])
            .arg(dir.path().join("r.zarr"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(
            stdout(&o).contains("HDF5 dataset /scan/raw"),
            "{}",
            stdout(&o)
        );
        assert_store_eq(
            &Store::open(dir.path().join("r.zarr")).unwrap(),
            &oracle("scan__raw"),
        );
    }

    /// Jobs and eval take HDF5 inputs: `eval "a + b"` on uint16 wraps as numpy's does.
    #[test]
    fn eval_and_append_read_hdf5() {
        let dir = tmp();
        let out = dir.path().join("sum.zarr");
        let raw = h5("volume.h5", "/scan/raw");
        let o = chunkwise(&[
            "eval",
            "a + b",
            "-o",
            out.to_str().unwrap(),
            &format!("a={raw}"),
            &format!("b={raw}"),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let want = oracle("scan__raw");
        let doubled: Vec<u8> = want
            .bytes
            .chunks_exact(2)
            .flat_map(|b| {
                u16::from_le_bytes([b[0], b[1]])
                    .wrapping_mul(2)
                    .to_le_bytes()
            })
            .collect();
        assert_eq!(store_bytes(&Store::open(&out).unwrap()), doubled);

        // append: a store of the dataset, then the dataset again along axis 0.
        let grown = dir.path().join("grown.zarr");
        chunkwise::convert(
            &Input::open(&raw).unwrap(),
            &grown,
            &ConvertOptions::default().chunks(Some(vec![5, 16, 16])),
        )
        .unwrap();
        let o = chunkwise(&["append", grown.to_str().unwrap(), &raw]);
        assert!(o.status.success(), "{}", stderr(&o));
        let mut twice = want.bytes.clone();
        twice.extend_from_slice(&want.bytes);
        let store = Store::open(&grown).unwrap();
        assert_eq!(store.shape(), &[20, 33, 20]);
        assert_eq!(store_bytes(&store), twice);
    }

    /// A view spec's parts may be HDF5 datasets.
    #[test]
    fn views_join_hdf5_datasets() {
        let dir = tmp();
        let spec = dir.path().join("v.json");
        let raw = h5("volume.h5", "/scan/raw");
        std::fs::write(
            &spec,
            serde_json::json!({"concat": [raw, raw], "axis": 1}).to_string(),
        )
        .unwrap();
        let input = Input::open(&spec).unwrap();
        assert_eq!(input.shape(), &[10, 66, 20]);
        let got = input
            .read_region::<u16>(&Region::new(vec![0..10, 33..66, 0..20]))
            .unwrap();
        let bytes: Vec<u8> = got.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(bytes, oracle("scan__raw").bytes);
    }

    /// Bad input: one line naming the file and what is wrong, and nothing written.
    #[test]
    fn bad_hdf5_inputs_are_named_and_write_nothing() {
        let vol = fixture("hdf5/volume.h5").display().to_string();
        for (reference, says) in [
            (
                format!("{vol}:/nope"),
                vec!["no dataset \"/nope\"", "/scan/raw", "/lzf"],
            ),
            (vol.clone(), vec!["datasets: name one as", "/scan/contig"]),
            (format!("{vol}:/text"), vec!["/text", "no counterpart"]),
            (format!("{vol}:/scalar"), vec!["/scalar", "a scalar"]),
            (
                format!("{}:/data", fixture("hdf5/not_hdf5.h5").display()),
                vec!["not_hdf5.h5", "not an HDF5 file"],
            ),
            (
                fixture("hdf5/not_hdf5.h5").display().to_string(),
                vec!["not an HDF5 file"],
            ),
        ] {
            let dir = tmp();
            let out = dir.path().join("o.zarr");
            let o = chunkwise(&["convert", &reference, "-o", out.to_str().unwrap()]);
            assert_eq!(o.status.code(), Some(2), "{reference}");
            let err = stderr(&o);
            assert_eq!(err.trim().lines().count(), 1, "{err}");
            for s in says {
                assert!(err.contains(s), "{reference}: {err:?} lacks {s:?}");
            }
            assert!(!out.exists(), "{reference}");
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        }
        // Raw flags describe raw files; two HDF5 inputs are not stacked.
        let o = chunkwise(&[
            "convert",
            &format!("{vol}:/lzf"),
            "-o",
            "/nonexistent/x.zarr",
            "--dtype",
            "uint8",
        ]);
        assert!(stderr(&o).contains("raw"), "{}", stderr(&o));
        let o = chunkwise(&[
            "convert",
            &format!("{vol}:/lzf"),
            &format!("{vol}:/lzf"),
            "-o",
            "/nonexistent/x.zarr",
        ]);
        assert!(stderr(&o).contains("one at a time"), "{}", stderr(&o));
    }
}

/// Without the `hdf5` feature, an HDF5 input says how to get a build that reads it.
#[cfg(not(feature = "hdf5"))]
#[test]
fn without_the_feature_hdf5_inputs_say_so() {
    use crate::common::{chunkwise, fixture, stderr};
    let o = chunkwise(&[
        "convert",
        &format!("{}:/scan/raw", fixture("hdf5/volume.h5").display()),
        "-o",
        "/nonexistent/x.zarr",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("feature"), "{}", stderr(&o));
}
