//! Property tests (issue 9 §6): whatever bytes a `.npy` header, a `zarr.json`, a view spec or a
//! region string holds, chunkwise answers with a value or an error, never a panic, a hang or
//! an allocation beyond the stated limits (spec/FORMAT.md §10).

use std::path::Path;

use chunkwise::support::write_npy;
use chunkwise::{DType, Input, Region, Store, View};
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::common::tmp;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 200,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Bytes that look like an `.npy` header often enough to reach past the magic.
fn npy_bytes() -> impl Strategy<Value = Vec<u8>> {
    let dict = prop_oneof![
        "\\{'descr': '[<>|][uifbc][1248]', 'fortran_order': (True|False), 'shape': \\(([0-9]{1,20}, ?){0,5}\\), \\}",
        "[ -~]{0,80}",
    ];
    (
        dict,
        any::<u8>(),
        any::<u16>(),
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(d, major, len, tail)| {
            let mut v = b"\x93NUMPY".to_vec();
            v.push(major % 4);
            v.push(0);
            if major % 2 == 1 {
                v.extend_from_slice(&len.to_le_bytes());
            } else {
                v.extend_from_slice(&u32::from(len).to_le_bytes());
            }
            v.extend_from_slice(d.as_bytes());
            v.extend_from_slice(&tail);
            v
        })
}

/// Metadata with fields right, wrong, absurd or missing.
fn zarr_json() -> impl Strategy<Value = Value> {
    let dim = prop_oneof![0u64..40, Just(u64::MAX), Just(1 << 62), Just(1 << 40)];
    let shape = prop::collection::vec(dim.clone(), 0..5);
    let chunks = prop::collection::vec(dim, 0..5);
    let dtype = prop_oneof![
        Just("uint8"),
        Just("uint16"),
        Just("int64"),
        Just("float32"),
        Just("bool"),
        Just("complex64"),
        Just("r16"),
        Just(""),
    ];
    let codec = prop_oneof![
        Just(json!({"name": "bytes", "configuration": {"endian": "little"}})),
        Just(json!({"name": "zstd", "configuration": {"level": 3, "checksum": false}})),
        Just(
            json!({"name": "blosc", "configuration": {"cname": "lz4", "clevel": 5, "shuffle": "shuffle", "typesize": 2, "blocksize": 0}})
        ),
        Just(json!({"name": "nonesuch"})),
        Just(
            json!({"name": "sharding_indexed", "configuration": {"chunk_shape": [1, 1], "codecs": [{"name": "bytes"}], "index_codecs": [{"name": "bytes"}]}})
        ),
    ];
    let codecs = prop::collection::vec(codec, 0..3);
    let grid = prop_oneof![Just("regular"), Just("rectilinear"), Just("nope")];
    (shape, chunks, dtype, codecs, grid, any::<bool>()).prop_map(|(shape, chunks, dtype, codecs, grid, fill)| {
        json!({
            "zarr_format": 3,
            "node_type": "array",
            "shape": shape,
            "data_type": dtype,
            "chunk_grid": {"name": grid, "configuration": {"chunk_shape": chunks, "chunk_shapes": [chunks]}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": if fill { json!(0) } else { json!("NaN") },
            "codecs": codecs,
        })
    })
}

/// View specs nesting the four operations around paths that exist or do not.
fn view_spec() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(json!("a.npy")),
        Just(json!("b.npy")),
        Just(json!("missing.npy")),
        Just(json!(7)),
        Just(json!(null)),
    ];
    leaf.prop_recursive(5, 32, 4, |inner| {
        prop_oneof![
            (prop::collection::vec(inner.clone(), 0..4), 0u64..4)
                .prop_map(|(v, a)| json!({"concat": v, "axis": a})),
            (prop::collection::vec(inner.clone(), 0..4), 0u64..4)
                .prop_map(|(v, a)| json!({"stack": v, "axis": a})),
            (inner.clone(), "[-0-9:, ]{0,12}").prop_map(|(v, r)| json!({"slice": v, "region": r})),
            (
                inner,
                prop_oneof![Just("uint32"), Just("float64"), Just("uint8"), Just("x")]
            )
                .prop_map(|(v, d)| json!({"cast": v, "dtype": d})),
        ]
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn npy_headers_never_panic(bytes in npy_bytes()) {
        let _ = chunkwise::support::parse_npy_header(&bytes, Path::new("x.npy"));
    }

    #[test]
    fn regions_never_panic(spec in "[-0-9:,\\[\\] .]{0,24}", shape in prop::collection::vec(0u64..50, 0..4)) {
        if let Ok(p) = Region::parse(&spec, &shape) {
            // What parses lies inside the array.
            prop_assert!(Region::full(&shape).contains(&p.region));
        }
    }

    #[test]
    fn zarr_json_never_panics(meta in zarr_json()) {
        let dir = tmp();
        let s = dir.path().join("s.zarr");
        std::fs::create_dir(&s).unwrap();
        std::fs::write(s.join("zarr.json"), meta.to_string()).unwrap();
        if let Ok(store) = Store::open(&s) {
            let n: u128 = store.shape().iter().map(|&x| u128::from(x)).product();
            if n <= 1 << 16 {
                let _ = store.read_region_into(
                    &Region::full(store.shape()),
                    &mut vec![0u8; n as usize * store.dtype().size()],
                );
            }
        }
        let _ = Input::open(&s);
    }

    #[test]
    fn view_specs_never_panic(spec in view_spec()) {
        let dir = tmp();
        let d = dir.path();
        write_npy(&d.join("a.npy"), DType::U16, &[3, 4], &[1u8; 24]).unwrap();
        write_npy(&d.join("b.npy"), DType::U16, &[2, 4], &[2u8; 16]).unwrap();
        if let Ok(v) = View::from_spec(&spec, d) {
            let n: u128 = v.shape().iter().map(|&x| u128::from(x)).product();
            if n <= 1 << 16 {
                let mut buf = vec![0u8; n as usize * v.dtype().size()];
                v.read_region_into(&Region::full(v.shape()), &mut buf).unwrap();
            }
        }
    }
}
