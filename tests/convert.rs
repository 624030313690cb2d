//! `convert` against arrays numpy/tifffile wrote (fixtures/expected), over every input kind,
//! dtype, layout, codec and chunking (spec/CLI.md "convert", spec/FORMAT.md).

use std::path::PathBuf;

use chunkwise::{Codec, ConvertOptions, DType, RawOptions, Store};

use crate::common::{assert_store_eq, expected, fixture, store_bytes, tmp};

fn convert_fixture(input: &str, opts: &ConvertOptions) -> (tempfile::TempDir, Store) {
    let dir = tmp();
    let out = dir.path().join("out.zarr");
    chunkwise::convert(&crate::common::input(fixture(input)), &out, opts).expect("convert");
    let store = Store::open(&out).expect("open");
    (dir, store)
}

#[test]
fn every_dtype_round_trips() {
    for dt in DType::ALL {
        let name = format!("c_{dt}");
        let (_d, store) = convert_fixture(
            &format!("inputs/{name}.npy"),
            &ConvertOptions::default().chunks(Some(vec![4, 5, 3])),
        );
        assert_store_eq(&store, &expected(&name));
    }
}

#[test]
fn fortran_and_big_endian_npy() {
    for name in ["fortran_f32", "bigendian_u32", "fortran_bigendian_i16"] {
        for chunks in [vec![5, 7, 4], vec![1, 1, 1], vec![64, 64, 64]] {
            let (_d, store) = convert_fixture(
                &format!("inputs/{name}.npy"),
                &ConvertOptions::default().chunks(Some(chunks)),
            );
            assert_store_eq(&store, &expected(name));
        }
    }
}

#[test]
fn npy_stack_in_natural_order() {
    // slice_1 .. slice_12: plain string order would put slice_10 after slice_1.
    let (_d, store) = convert_fixture(
        "inputs/stack_u16",
        &ConvertOptions::default().chunks(Some(vec![5, 8, 16])),
    );
    assert_store_eq(&store, &expected("stack_u16"));
}

#[test]
fn npy_stack_from_listed_files_and_glob() {
    let dir = tmp();
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixture("inputs/stack_u16"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.reverse(); // order given does not matter: natural order is applied
    let out = dir.path().join("listed.zarr");
    let listed = chunkwise::Input::open_all(&files, &RawOptions::default()).unwrap();
    chunkwise::convert(&listed, &out, &ConvertOptions::default()).unwrap();
    assert_store_eq(&Store::open(&out).unwrap(), &expected("stack_u16"));

    let pattern = fixture("inputs/stack_u16").join("slice_*.npy");
    let out = dir.path().join("glob.zarr");
    chunkwise::convert(
        &crate::common::input(pattern),
        &out,
        &ConvertOptions::default(),
    )
    .unwrap();
    assert_store_eq(&Store::open(&out).unwrap(), &expected("stack_u16"));
}

#[test]
fn stack_of_nd_blocks() {
    let (_d, store) = convert_fixture(
        "inputs/stack_blocks_f64",
        &ConvertOptions::default().chunks(Some(vec![2, 2, 4, 3])),
    );
    assert_store_eq(&store, &expected("stack_blocks_f64"));
}

#[test]
fn raw_with_sidecar_and_with_flags() {
    let (_d, store) = convert_fixture(
        "inputs/volume_u16.raw",
        &ConvertOptions::default().chunks(Some(vec![3, 8, 8])),
    );
    assert_store_eq(&store, &expected("volume_u16"));
    let dir = tmp();
    let out = dir.path().join("out.zarr");
    let input = chunkwise::Input::open_all(
        &[fixture("inputs/bare_f32.bin")],
        &RawOptions {
            dtype: Some(DType::F32),
            shape: Some(vec![4, 5, 6]),
            ..Default::default()
        },
    )
    .unwrap();
    chunkwise::convert(&input, &out, &ConvertOptions::default()).unwrap();
    assert_store_eq(&Store::open(&out).unwrap(), &expected("bare_f32"));
}

#[test]
fn tiff_multipage_and_directories() {
    let (_d, store) = convert_fixture(
        "inputs/multi_u16.tif",
        &ConvertOptions::default().chunks(Some(vec![3, 16, 16])),
    );
    assert_store_eq(&store, &expected("multi_u16"));
    for dt in ["float32", "uint8", "int32"] {
        let name = format!("tiffs_{dt}");
        let (_d, store) = convert_fixture(
            &format!("inputs/{name}"),
            &ConvertOptions::default().chunks(Some(vec![4, 7, 9])),
        );
        assert_store_eq(&store, &expected(&name));
    }
}

#[test]
fn every_codec_and_option() {
    let want = expected("stack_u16");
    let codecs = [
        Codec::Zstd { level: 3 },
        Codec::Zstd { level: -1 },
        Codec::BloscZstd { level: 5 },
        Codec::BloscLz4 { level: 1 },
        Codec::default(),
    ];
    for codec in codecs {
        for checksum in [false, true] {
            let opts = ConvertOptions::default()
                .chunks(Some(vec![6, 10, 20]))
                .codec(codec)
                .checksum(checksum);
            let (_d, store) = convert_fixture("inputs/stack_u16", &opts);
            assert_store_eq(&store, &want);
            let meta = store.metadata_json();
            assert_eq!(
                meta["codecs"].as_array().unwrap().len(),
                2 + usize::from(checksum)
            );
        }
    }
    // Sharded, with checksums and axis names.
    let opts = ConvertOptions::default()
        .chunks(Some(vec![6, 16, 32]))
        .subchunks(Some(vec![3, 8, 16]))
        .checksum(true)
        .axis_names(Some(vec!["z".into(), "y".into(), "x".into()]));
    let (_d, store) = convert_fixture("inputs/stack_u16", &opts);
    assert_store_eq(&store, &want);
    let meta = store.metadata_json();
    assert_eq!(meta["codecs"][0]["name"], "sharding_indexed");
    assert_eq!(meta["dimension_names"], serde_json::json!(["z", "y", "x"]));
}

#[test]
fn small_memory_budget_splits_blocks() {
    // A budget below one chunk layer forces blocks of single chunk rows; the result must not
    // change (spec/FORMAT.md "Streaming").
    for input in [
        "inputs/stack_u16",
        "inputs/fortran_f32.npy",
        "inputs/multi_u16.tif",
    ] {
        let (_d, whole) = convert_fixture(
            input,
            &ConvertOptions::default().chunks(Some(vec![2, 4, 4])),
        );
        let (_d2, split) = convert_fixture(
            input,
            &ConvertOptions::default()
                .chunks(Some(vec![2, 4, 4]))
                .memory(Some(64)),
        );
        assert_eq!(store_bytes(&whole), store_bytes(&split), "{input}");
    }
}

#[test]
fn one_thread_equals_many() {
    let (_d, a) = convert_fixture(
        "inputs/c_float64.npy",
        &ConvertOptions::default()
            .threads(Some(1))
            .chunks(Some(vec![2, 3, 4])),
    );
    let (_d2, b) = convert_fixture(
        "inputs/c_float64.npy",
        &ConvertOptions::default()
            .threads(Some(3))
            .chunks(Some(vec![2, 3, 4])),
    );
    assert_eq!(store_bytes(&a), store_bytes(&b));
    assert_store_eq(&a, &expected("c_float64"));
}

#[test]
fn fill_value_chunks_are_not_written() {
    // The zarr-python fixture has one 16^3 chunk of zeros; re-chunking it with the same grid
    // writes every chunk but that one.
    let (_d, store) = convert_fixture(
        "stores/zarr_python_v3_zstd.zarr",
        &ConvertOptions::default().chunks(Some(vec![16, 16, 16])),
    );
    assert_store_eq(&store, &expected("zarr_python_v3_zstd"));
    assert_eq!(store.chunk_stored_size(&[0, 0, 0]).unwrap(), None);
    assert!(store.chunk_stored_size(&[0, 0, 1]).unwrap().is_some());
    let info = chunkwise::info(&crate::common::input(store.path())).unwrap();
    assert_eq!(info.chunks_present, info.chunks_total - 1);
}

#[test]
fn store_input_rechunks_v2_and_v3() {
    for name in [
        "zarr_python_v2_blosc",
        "zarr_python_v3_sharded",
        "tensorstore_v3_sharded",
    ] {
        let (_d, store) = convert_fixture(
            &format!("stores/{name}.zarr"),
            &ConvertOptions::default().chunks(Some(vec![7, 9, 11])),
        );
        assert_store_eq(&store, &expected(name));
    }
}

#[test]
fn overwrite_replaces_and_refuses_without_flag() {
    let dir = tmp();
    let out = dir.path().join("o.zarr");
    let input = crate::common::input(fixture("inputs/c_uint8.npy"));
    chunkwise::convert(&input, &out, &ConvertOptions::default()).unwrap();
    let err = chunkwise::convert(&input, &out, &ConvertOptions::default()).unwrap_err();
    assert!(matches!(err, chunkwise::Error::OutputExists(_)), "{err}");
    let input2 = crate::common::input(fixture("inputs/c_int16.npy"));
    chunkwise::convert(&input2, &out, &ConvertOptions::default().overwrite(true)).unwrap();
    assert_store_eq(&Store::open(&out).unwrap(), &expected("c_int16"));
    // No build or backup directories are left beside it.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["o.zarr".to_string()]);
}

#[test]
fn progress_reaches_total() {
    use std::sync::{Arc, Mutex};
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let cb: chunkwise::ProgressFn = Arc::new(move |p: chunkwise::Progress<'_>| {
        s2.lock().unwrap().push((p.done, p.total));
    });
    let (_d, _store) = convert_fixture(
        "inputs/stack_u16",
        &ConvertOptions::default()
            .chunks(Some(vec![4, 8, 8]))
            .progress(Some(cb)),
    );
    let seen = seen.lock().unwrap();
    let total = 12 * 29 * 53 * 2;
    assert!(seen.iter().all(|&(_, t)| t == total));
    assert_eq!(seen.iter().map(|&(d, _)| d).max(), Some(total));
}

/// spec/FORMAT.md §8.1: a rechunk holds `--memory` for any pair of chunkings and decodes each
/// input chunk once. A 32 MiB array of (1, 512, 512) slabs becomes (64, 16, 16) columns and
/// back under 8 MiB (the case, once 611 MiB resident): peak resident memory above
/// that of the same binary converting a tiny store stays under the budget, the summary says
/// how often the input's chunks were decoded, and the values are the input's.
#[test]
fn rechunk_holds_the_memory_budget_both_ways() {
    let dir = tmp();
    let d = dir.path();
    let (nz, ny, nx) = (64usize, 512usize, 512usize);
    let values: Vec<u16> = (0..nz * ny * nx)
        .map(|i| ((i as u64).wrapping_mul(2_654_435_761) >> 13) as u16 % 4096)
        .collect();
    let want = ndarray::ArrayD::from_shape_vec(vec![nz, ny, nx], values).unwrap();
    let slabs = d.join("slabs.zarr");
    chunkwise::from_array(
        want.view(),
        &slabs,
        &ConvertOptions::default().chunks(Some(vec![1, 512, 512])),
    )
    .unwrap();
    let tiny = d.join("tiny.zarr");
    let small = ndarray::ArrayD::<u16>::zeros(vec![4, 4, 4]);
    chunkwise::from_array(
        small.view(),
        &tiny,
        &ConvertOptions::default().chunks(Some(vec![1, 4, 4])),
    )
    .unwrap();
    let t = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let (base, _) = crate::common::peak_rss(
        &[
            "convert",
            &t(&tiny),
            "-o",
            &t(&d.join("t2.zarr")),
            "--chunks",
            "4,2,2",
            "--memory",
            "8MiB",
            "--threads",
            "2",
        ],
        d,
    );
    let budget = 8u64 << 20;
    let cols = d.join("cols.zarr");
    let back = d.join("back.zarr");
    for (from, to, chunks, inputs) in [
        (&slabs, &cols, "64,16,16", 64),
        (&cols, &back, "1,512,512", 1024),
    ] {
        let (peak, said) = crate::common::peak_rss(
            &[
                "convert",
                &t(from),
                "-o",
                &t(to),
                "--chunks",
                chunks,
                "--memory",
                "8MiB",
                "--threads",
                "2",
            ],
            d,
        );
        assert!(
            peak.saturating_sub(base) <= budget,
            "{chunks}: peak {peak} bytes, {base} for a tiny convert: {} over the 8 MiB budget\n{said}",
            peak.saturating_sub(base)
        );
        assert!(
            said.contains(&format!("{inputs} input chunks decoded once each")),
            "{said}"
        );
        let store = Store::open(to).unwrap();
        let shape: Vec<u64> = store.chunk_shape().unwrap();
        assert_eq!(
            shape
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(","),
            chunks
        );
        let got = store
            .read_region::<u16>(&chunkwise::Region::full(&[64, 512, 512]))
            .unwrap();
        assert!(got == want, "{chunks}: values differ from the input");
        // The intermediate array is gone.
        let left: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("rechunk"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
