//! Interop with real clients (spec/FORMAT.md "Readers"): stores zarr-python and tensorstore
//! wrote (committed in fixtures/stores) open and equal numpy's arrays; and zarr-python and
//! tensorstore, run live, read what chunkwise writes.

use std::path::PathBuf;

use chunkwise::{Codec, ConvertOptions, Region, Store};

use crate::common::{assert_store_eq, expected, fixture, read_npy, run_python, tmp};

const STORES: [&str; 8] = [
    "zarr_python_v3_zstd",
    "zarr_python_v3_sharded",
    "zarr_python_v3_gzip_crc",
    "zarr_python_v3_blosc",
    "zarr_python_v2_blosc",
    "zarr_python_v2_default",
    "tensorstore_v3_zstd",
    "tensorstore_v3_sharded",
];

#[test]
fn reads_stores_other_tools_wrote() {
    for name in STORES {
        let store = Store::open(fixture(&format!("stores/{name}.zarr"))).expect(name);
        assert_store_eq(&store, &expected(name));
    }
}

/// The interop corpus (spec/FORMAT.md §7.1): every store fixtures/make_codec_corpus.py wrote
/// (zarr-python 2 and 3, tensorstore; one per codec and filter) that its manifest marks
/// readable opens and equals the values its writer read back; every other one is refused by
/// one error naming its codec and listing the codecs chunkwise reads. Stores that need a cargo
/// feature are readable only with it.
#[test]
fn reads_the_codec_corpus() {
    let root = fixture("corpus");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("manifest.json")).unwrap()).unwrap();
    let stores = manifest["stores"].as_array().unwrap();
    assert!(
        stores.len() >= 70,
        "the corpus lists {} stores",
        stores.len()
    );
    let mut failures = Vec::new();
    let mut read = 0;
    for e in stores {
        let name = e["name"].as_str().unwrap();
        let path = root.join(e["store"].as_str().unwrap());
        let with_feature = match e["feature"].as_str() {
            None => true,
            Some("zfp") => cfg!(feature = "zfp"),
            Some(f) => panic!("{name}: unknown feature {f}"),
        };
        // The whole array, and a box across chunk boundaries (partial reads of chunks).
        let cut = [3..11u64, 5..14, 7..20];
        let got = Store::open(&path).and_then(|s| {
            let n = s.shape().iter().product::<u64>() as usize * s.dtype().size();
            let mut buf = vec![0u8; n];
            s.read_region_into(&Region::full(s.shape()), &mut buf)?;
            let m = cut.iter().map(|r| r.end - r.start).product::<u64>() as usize;
            let mut part = vec![0u8; m * s.dtype().size()];
            s.read_region_into(&Region::new(cut.to_vec()), &mut part)?;
            Ok((s.dtype(), s.shape().to_vec(), buf, part))
        });
        if e["readable"].as_bool().unwrap() && with_feature {
            let want = read_npy(&root.join("expected").join(e["expected"].as_str().unwrap()));
            match got {
                Err(err) => failures.push(format!("{name}: {err}")),
                Ok((dtype, shape, bytes, part)) => {
                    if (dtype, &shape, &bytes) != (want.dtype, &want.shape, &want.bytes) {
                        failures.push(format!(
                            "{name}: read {dtype} {shape:?}, differs from the expected {} {:?}",
                            want.dtype, want.shape
                        ));
                    } else if part != sub_box(&want.bytes, &shape, dtype.size(), &cut) {
                        failures.push(format!("{name}: the box {cut:?} differs"));
                    } else {
                        read += 1;
                    }
                }
            }
        } else {
            let codec = match e["error_names"].as_str() {
                Some(c) => c,
                None if e["format"] == 2 => "zfpy",
                None => "numcodecs.zfpy",
            };
            match got {
                Ok(_) => failures.push(format!("{name}: read, though it should be refused")),
                Err(err) => {
                    let msg = err.to_string();
                    if !msg.contains(&format!("codec {codec} ")) || !msg.contains("chunkwise reads")
                    {
                        failures.push(format!("{name}: the error does not name {codec}: {msg}"));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(read >= 60, "only {read} stores read");
}

/// The C-order bytes of box `cut` of a 3-d array of `shape` (elements of `size` bytes).
fn sub_box(bytes: &[u8], shape: &[u64], size: usize, cut: &[std::ops::Range<u64>; 3]) -> Vec<u8> {
    let (ny, nx) = (shape[1] as usize, shape[2] as usize);
    let mut out = Vec::new();
    for z in cut[0].clone() {
        for y in cut[1].clone() {
            let row = (z as usize * ny + y as usize) * nx;
            out.extend_from_slice(
                &bytes[(row + cut[2].start as usize) * size..(row + cut[2].end as usize) * size],
            );
        }
    }
    out
}

#[test]
fn reads_partial_regions_of_other_stores() {
    // Regions that cut through chunks and shards, checked against the expected array.
    let name = "zarr_python_v3_sharded";
    let store = Store::open(fixture(&format!("stores/{name}.zarr"))).unwrap();
    let want = expected(name);
    let full = ndarray::ArrayD::from_shape_vec(
        want.shape.iter().map(|&n| n as usize).collect::<Vec<_>>(),
        want.bytes
            .chunks(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
    )
    .unwrap();
    for (z, y, x) in [
        (3..17, 5..23, 1..39),
        (0..1, 0..24, 31..40),
        (19..20, 23..24, 39..40),
    ] {
        let region = Region::new(vec![z.clone(), y.clone(), x.clone()]);
        let got = store.read_region::<f32>(&region).unwrap();
        let exp = full.slice(ndarray::s![
            z.start as usize..z.end as usize,
            y.start as usize..y.end as usize,
            x.start as usize..x.end as usize
        ]);
        assert_eq!(got, exp.into_dyn());
    }
    assert!(
        store
            .read_region::<u16>(&Region::new(vec![0..1, 0..1, 0..1]))
            .is_err()
    );
}

#[test]
fn v2_stores_are_read_only_inputs() {
    let store = Store::open(fixture("stores/zarr_python_v2_blosc.zarr")).unwrap();
    assert_eq!(store.zarr_format(), 2);
    assert_eq!(store.chunk_key(&[1, 2, 0]), "1.2.0");
    let info = chunkwise::info(&crate::common::input(store.path())).unwrap();
    assert_eq!(info.codecs["compressor"]["cname"], "lz4");
}

/// Stores chunkwise writes with each codec and option, read live by zarr-python (and
/// tensorstore) and compared with numpy's array of the same data.
#[test]
fn zarr_python_and_tensorstore_read_what_we_write() {
    let dir = tmp();
    let mut cases: Vec<(PathBuf, PathBuf)> = Vec::new();
    let mut add = |input: &str, expect: &str, tag: &str, opts: ConvertOptions| {
        let out = dir.path().join(format!("{tag}.zarr"));
        chunkwise::convert(&crate::common::input(fixture(input)), &out, &opts).expect(tag);
        cases.push((out, fixture(&format!("expected/{expect}.npy"))));
    };
    for dt in chunkwise::DType::ALL {
        add(
            &format!("inputs/c_{dt}.npy"),
            &format!("c_{dt}"),
            &format!("dtype_{dt}"),
            ConvertOptions::default().chunks(Some(vec![4, 5, 3])),
        );
    }
    for (tag, codec) in [
        ("zstd", Codec::Zstd { level: 3 }),
        ("blosc_zstd", Codec::BloscZstd { level: 5 }),
        ("blosc_lz4", Codec::BloscLz4 { level: 5 }),
    ] {
        add(
            "inputs/stack_u16",
            "stack_u16",
            tag,
            ConvertOptions::default()
                .codec(codec)
                .chunks(Some(vec![5, 8, 16])),
        );
    }
    add(
        "inputs/stack_u16",
        "stack_u16",
        "checksum",
        ConvertOptions::default()
            .checksum(true)
            .chunks(Some(vec![5, 8, 16])),
    );
    add(
        "inputs/stack_u16",
        "stack_u16",
        "sharded",
        ConvertOptions::default()
            .chunks(Some(vec![6, 16, 32]))
            .subchunks(Some(vec![3, 8, 8]))
            .checksum(true)
            .axis_names(Some(vec!["z".into(), "y".into(), "x".into()])),
    );
    add(
        "inputs/fortran_f32.npy",
        "fortran_f32",
        "fortran_default_chunks",
        ConvertOptions::default(),
    );
    add(
        "inputs/stack_blocks_f64",
        "stack_blocks_f64",
        "four_d",
        ConvertOptions::default(),
    );
    // The manifest: one "STORE EXPECTED" pair per line.
    let manifest = dir.path().join("manifest.txt");
    let text: String = cases
        .iter()
        .map(|(s, e)| format!("{}\t{}\n", s.display(), e.display()))
        .collect();
    std::fs::write(&manifest, text).unwrap();
    let out = run_python("read_stores.py", &[&manifest]);
    assert!(
        out.contains(&format!("{} of {} stores match", cases.len(), cases.len())),
        "{out}"
    );
}
