//! `export` against numpy slicing of the expected arrays (spec/CLI.md "export").

use chunkwise::{ExportOptions, Store};
use ndarray::{ArrayD, IxDyn, SliceInfoElem};

use crate::common::{expected, fixture, read_npy, tmp};

/// The expected array of a uint16 fixture as an ndarray.
fn expected_u16(name: &str) -> ArrayD<u16> {
    npy_u16(&fixture(&format!("expected/{name}.npy")))
}

fn npy_u16(path: &std::path::Path) -> ArrayD<u16> {
    let e = read_npy(path);
    let shape: Vec<usize> = e.shape.iter().map(|&n| n as usize).collect();
    let v: Vec<u16> = e
        .bytes
        .chunks(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect();
    ArrayD::from_shape_vec(IxDyn(&shape), v).unwrap()
}

#[test]
fn regions_match_numpy_slicing() {
    let store = fixture("stores/zarr_python_v3_zstd.zarr"); // 37x29x53, chunks 16^3
    let full = expected_u16("zarr_python_v3_zstd");
    let dir = tmp();
    use SliceInfoElem::{Index, Slice};
    let s = |a: isize, b: Option<isize>| Slice {
        start: a,
        end: b,
        step: 1,
    };
    let cases: Vec<(&str, Vec<SliceInfoElem>)> = vec![
        ("", vec![s(0, None), s(0, None), s(0, None)]),
        ("3:20,:,5:", vec![s(3, Some(20)), s(0, None), s(5, None)]),
        ("-5:,10,:", vec![s(-5, None), Index(10), s(0, None)]),
        ("...,7", vec![s(0, None), s(0, None), Index(7)]),
        // numpy clamps slice ends: axis 1 has 29 elements.
        (
            "16:32,16:32,16:32",
            vec![s(16, Some(32)), s(16, Some(29)), s(16, Some(32))],
        ),
        ("36", vec![Index(36), s(0, None), s(0, None)]),
        ("5:5", vec![s(5, Some(5)), s(0, None), s(0, None)]),
    ];
    for memory in [None, Some(4096u64)] {
        for (i, (spec, slicing)) in cases.iter().enumerate() {
            let out = dir.path().join(format!("r{i}.npy"));
            let opts = ExportOptions::default()
                .region((!spec.is_empty()).then(|| spec.to_string()))
                .memory(memory)
                .overwrite(true);
            chunkwise::export(&crate::common::input(&store), &out, &opts).unwrap();
            let got = npy_u16(&out);
            let want = full.slice(slicing.as_slice()).to_owned();
            assert_eq!(got, want, "region {spec:?} memory {memory:?}");
        }
    }
}

#[test]
fn raw_export_is_the_bytes() {
    let dir = tmp();
    let out = dir.path().join("v.raw");
    let name = "tensorstore_v3_sharded";
    chunkwise::export(
        &crate::common::input(fixture(&format!("stores/{name}.zarr"))),
        &out,
        &ExportOptions::default().raw(true),
    )
    .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), expected(name).bytes);
}

#[test]
fn refuses_existing_output_and_bad_regions() {
    let dir = tmp();
    let out = dir.path().join("x.npy");
    std::fs::write(&out, b"keep me").unwrap();
    let store = fixture("stores/zarr_python_v3_blosc.zarr");
    let err = chunkwise::export(
        &crate::common::input(&store),
        &out,
        &ExportOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, chunkwise::Error::OutputExists(_)));
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    for bad in ["0:10:2", "1,2,3", "50", "x"] {
        let err = chunkwise::export(
            &crate::common::input(&store),
            &dir.path().join("y.npy"),
            &ExportOptions::default().region(Some(bad.into())),
        )
        .unwrap_err();
        assert!(
            matches!(err, chunkwise::Error::BadRegion { .. }),
            "{bad}: {err}"
        );
    }
    // Nothing but the file we made is left.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn read_region_matches_export() {
    let store = Store::open(fixture("stores/tensorstore_v3_zstd.zarr")).unwrap();
    let r = chunkwise::Region::new(vec![2..19, 7..8, 3..26]);
    let a = store.read_region::<u16>(&r).unwrap();
    let full = expected_u16("tensorstore_v3_zstd");
    assert_eq!(a, full.slice(ndarray::s![2..19, 7..8, 3..26]).into_dyn());
}
