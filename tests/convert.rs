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

/// Every chunk file under `store`, by key, with its bytes and inode.
fn chunk_files(store: &std::path::Path) -> std::collections::BTreeMap<String, (Vec<u8>, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![store.join("c")];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let key = p
                    .strip_prefix(store)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                let ino = std::fs::metadata(&p).unwrap().ino();
                out.insert(key, (std::fs::read(&p).unwrap(), ino));
            }
        }
    }
    out
}

/// spec/FORMAT.md §8.1: store to store, every path keeps the values (same codec and chunks,
/// another level, a checksum, another codec, rechunks that split and join chunks, sharded in
/// and out); the encoded chunks are copied as they are only when type, grid, fill value and
/// codecs all match, and then as new files (not links to the input's); a change of any one
/// re-encodes.
#[test]
fn store_to_store_keeps_values_and_copies_only_unchanged_chunks() {
    let dir = tmp();
    let d = dir.path();
    let shape = [37usize, 50, 45];
    let n: usize = shape.iter().product();
    // Values with a zero corner (absent chunks) and partial edge chunks.
    let values: Vec<u16> = (0..n)
        .map(|i| {
            let z = i / (50 * 45);
            if z < 16 && (i / 45) % 50 < 16 {
                0
            } else {
                ((i as u64).wrapping_mul(2_654_435_761) >> 11) as u16 % 5000
            }
        })
        .collect();
    let want = ndarray::ArrayD::from_shape_vec(shape.to_vec(), values).unwrap();
    let a = d.join("a.zarr");
    let chunks = ConvertOptions::default().chunks(Some(vec![16, 16, 16]));
    chunkwise::from_array(want.view(), &a, &chunks).unwrap();
    let full = chunkwise::Region::full(&[37, 50, 45]);
    let check = |p: &std::path::Path, what: &str| {
        let got = Store::open(p).unwrap().read_region::<u16>(&full).unwrap();
        assert!(got == want, "{what}: values differ from the input");
    };
    // Returns the output and how many chunks were copied as stored.
    let convert_counting = |from: &std::path::Path, name: &str, opts: &ConvertOptions| {
        let out = d.join(name);
        let r = chunkwise::convert(&crate::common::input(from), &out, opts).unwrap();
        check(&out, name);
        (out, r.chunks_copied)
    };
    let convert = |from: &std::path::Path, name: &str, opts: &ConvertOptions| {
        let (out, copied) = convert_counting(from, name, opts);
        assert_eq!(
            copied, 0,
            "{name}: chunks copied though the encoding changed"
        );
        out
    };
    let input_files = chunk_files(&a);
    assert!(input_files.len() < 4 * 4 * 3, "some chunks are absent");

    // Same settings: the same chunk files, byte for byte, as new files.
    let (same, n) = convert_counting(&a, "same.zarr", &chunks);
    assert_eq!(n, input_files.len() as u64);
    let copied = chunk_files(&same);
    assert_eq!(
        copied.keys().collect::<Vec<_>>(),
        input_files.keys().collect::<Vec<_>>()
    );
    for (k, (bytes, ino)) in &copied {
        assert_eq!(bytes, &input_files[k].0, "{k} differs");
        assert_ne!(*ino, input_files[k].1, "{k} is a link to the input's file");
    }
    // Any change re-encodes: another level, a checksum (4 bytes more per chunk).
    let level = convert(&a, "level.zarr", &chunks.clone().level(Some(5)));
    assert_ne!(chunk_files(&level), copied);
    let crc = convert(&a, "crc.zarr", &chunks.clone().checksum(true));
    for (k, (bytes, _)) in chunk_files(&crc) {
        assert_eq!(bytes.len(), input_files[&k].0.len() + 4, "{k}");
    }
    convert(
        &a,
        "lz4.zarr",
        &chunks.clone().codec(Codec::BloscLz4 { level: 5 }),
    );
    // Rechunks that split input chunks in two, join them, and cut across them.
    for c in [[8, 16, 16], [32, 32, 48], [5, 50, 7], [37, 1, 45]] {
        let name = format!("re_{}_{}_{}.zarr", c[0], c[1], c[2]);
        let out = convert(
            &a,
            &name,
            &ConvertOptions::default().chunks(Some(c.to_vec())),
        );
        assert_eq!(Store::open(&out).unwrap().chunk_shape(), Some(c.to_vec()));
        // On one thread and under a small budget too.
        let opts = ConvertOptions::default()
            .chunks(Some(c.to_vec()))
            .threads(Some(1))
            .memory(Some(4 << 20));
        convert(&a, &format!("small_{name}"), &opts);
    }
    // Sharded in and out: the same shards copied; unsharded from sharded re-encoded.
    let sharded = chunks.clone().subchunks(Some(vec![8, 8, 16]));
    let s1 = convert(&a, "s1.zarr", &sharded);
    let (s2, n) = convert_counting(&s1, "s2.zarr", &sharded);
    assert_eq!(n, chunk_files(&s1).len() as u64);
    let (f1, f2) = (chunk_files(&s1), chunk_files(&s2));
    assert_eq!(
        f1.iter().map(|(k, v)| (k, &v.0)).collect::<Vec<_>>(),
        f2.iter().map(|(k, v)| (k, &v.0)).collect::<Vec<_>>()
    );
    // Shards read in part (blocks that cut them: each read decodes only its subchunks).
    let cut = ConvertOptions::default()
        .chunks(Some(vec![5, 8, 8]))
        .memory(Some(1 << 20))
        .threads(Some(1));
    convert(&s1, "cut.zarr", &cut);
    let plain = convert(&s1, "plain.zarr", &chunks);
    assert_eq!(
        chunk_files(&plain)
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect::<Vec<_>>(),
        input_files
            .iter()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect::<Vec<_>>()
    );
}

/// spec/FORMAT.md §8.1: an input whose fill value is not the output's: its absent chunks are
/// the input's fill value in the output (written, not left absent), and a chunk of zeros
/// written to an array whose fill value is 7 is stored (it is not the fill value).
#[test]
fn an_input_fill_value_survives_the_convert() {
    let dir = tmp();
    let d = dir.path();
    let src = d.join("fill7.zarr");
    let spec = chunkwise::StoreSpec::new(vec![20, 20], DType::U16, vec![10, 10])
        .fill_value(chunkwise::Number::Int(7));
    let w = spec
        .create(&src, false, chunkwise::Durability::NoSync)
        .unwrap();
    let ramp: Vec<u8> = (0..100u16).flat_map(|v| v.to_ne_bytes()).collect();
    w.write_chunk(&[0, 0], &ramp).unwrap();
    w.write_chunk(&[1, 1], &[0u8; 200]).unwrap();
    w.commit().unwrap();
    let mut want = ndarray::ArrayD::<u16>::from_elem(vec![20, 20], 7);
    for i in 0..10 {
        for j in 0..10 {
            want[[i, j]] = (i * 10 + j) as u16;
            want[[10 + i, 10 + j]] = 0;
        }
    }
    let full = chunkwise::Region::full(&[20, 20]);
    let got = Store::open(&src)
        .unwrap()
        .read_region::<u16>(&full)
        .unwrap();
    assert!(got == want, "the source: {got:?}");
    for (name, opts) in [
        (
            "same.zarr",
            ConvertOptions::default().chunks(Some(vec![10, 10])),
        ),
        (
            "re.zarr",
            ConvertOptions::default().chunks(Some(vec![5, 20])),
        ),
    ] {
        let out = d.join(name);
        chunkwise::convert(&crate::common::input(&src), &out, &opts).unwrap();
        let got = Store::open(&out)
            .unwrap()
            .read_region::<u16>(&full)
            .unwrap();
        assert!(got == want, "{name}: {got:?}");
    }
}
