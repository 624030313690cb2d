//! Property tests (issue 9 §6, issue 14 §6): whatever bytes a `.npy` header, a `zarr.json`, a
//! `.zarray`, a raw file's JSON sidecar, a chunk of the codecs chunkwise adds, a TIFF file, a
//! view spec or a region string holds, chunkwise answers with a value or an error, never a
//! panic, a hang or an allocation beyond the stated limits (spec/FORMAT.md §10). Besides the
//! generated inputs, the committed seed corpus in fixtures/fuzz (`make_seeds.py`: the
//! metadata of every fixture store, sidecars, headers, views, regions) is mutated.

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

/// The codecs chunkwise adds or renames (src/store/codecs.rs), with configurations right and
/// wrong, as the one bytes-to-bytes codec of an array (v3) or its compressor (v2).
fn added_codec() -> impl Strategy<Value = (Value, Value)> {
    let location = prop_oneof![
        Just(json!("start")),
        Just(json!("end")),
        Just(json!("middle")),
        Just(json!(3))
    ];
    prop_oneof![
        Just((json!({"name": "numcodecs.lz4", "configuration": {"acceleration": 1}}), json!({"id": "lz4", "acceleration": 1}))),
        location.clone().prop_map(|l| (json!({"name": "numcodecs.crc32", "configuration": {"location": l}}), json!({"id": "crc32", "location": l}))),
        location.prop_map(|l| (json!({"name": "numcodecs.crc32c", "configuration": {"location": l}}), json!({"id": "crc32c", "location": l}))),
        Just((json!({"name": "numcodecs.fletcher32", "configuration": {}}), json!({"id": "fletcher32"}))),
        Just((json!({"name": "numcodecs.zstd", "configuration": {"level": 3}}), json!({"id": "zstd", "level": 3}))),
        (prop_oneof![Just("lz4"), Just("zstd"), Just("nope")], -2i64..4, prop_oneof![Just(json!(2)), Just(json!(0)), Just(json!("x"))])
            .prop_map(|(c, sh, ts)| (
                json!({"name": "numcodecs.blosc", "configuration": {"cname": c, "clevel": 5, "shuffle": sh, "typesize": ts}}),
                json!({"id": "blosc", "cname": c, "clevel": 5, "shuffle": sh, "blocksize": 0}),
            )),
    ]
}

/// Chunk bytes: random, or led by a 4-byte length (lz4's header) or a blosc-like header.
fn chunk_bytes() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<u32>(),
        prop::collection::vec(any::<u8>(), 0..96),
        0u8..3,
    )
        .prop_map(|(n, tail, kind)| {
            let mut v = Vec::new();
            match kind {
                0 => v.extend_from_slice(&n.to_le_bytes()),
                1 => {
                    v.extend_from_slice(&[2, 1, 1, 2]);
                    v.extend_from_slice(&40u32.to_le_bytes());
                    v.extend_from_slice(&40u32.to_le_bytes());
                    v.extend_from_slice(&(n % 200).to_le_bytes());
                }
                _ => {}
            }
            v.extend_from_slice(&tail);
            v
        })
}

/// A small TIFF fixture with bytes overwritten: headers, IFDs, OME-XML and compressed data.
fn mutated_tiff() -> impl Strategy<Value = Vec<u8>> {
    let files = [
        "tczyx.ome.tif",
        "tiled_lzw_u16.tif",
        "strips_lzw_predictor_u16.tif",
        "zstd_tiled_u16.tif",
        "bigtiff_tiled_deflate_i16.tif",
        "packbits_u8.tif",
        "two_series.ome.tif",
    ];
    (
        0..files.len(),
        prop::collection::vec(
            (any::<prop::sample::Index>(), any::<u8>(), any::<bool>()),
            1..12,
        ),
    )
        .prop_map(move |(f, edits)| {
            let mut b =
                std::fs::read(crate::common::fixture(&format!("tiff/{}", files[f]))).unwrap();
            for (at, byte, head) in edits {
                // Half the edits in the first 512 bytes (header, first IFD).
                let n = if head { b.len().min(512) } else { b.len() };
                let i = at.index(n);
                b[i] = byte;
            }
            b
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn added_codecs_never_panic_on_any_chunk((v3, v2) in added_codec(), chunk in chunk_bytes(), v2_format in any::<bool>()) {
        let dir = tmp();
        let s = dir.path().join("s.zarr");
        std::fs::create_dir_all(s.join("c").join("0")).unwrap();
        if v2_format {
            let meta = json!({"zarr_format": 2, "shape": [4, 5], "chunks": [4, 5], "dtype": "<u2",
                              "compressor": v2, "fill_value": 0, "order": "C", "filters": null});
            std::fs::write(s.join(".zarray"), meta.to_string()).unwrap();
            std::fs::write(s.join("0.0"), &chunk).unwrap();
        } else {
            let meta = json!({"zarr_format": 3, "node_type": "array", "shape": [4, 5], "data_type": "uint16",
                "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [4, 5]}},
                "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
                "fill_value": 0, "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, v3]});
            std::fs::write(s.join("zarr.json"), meta.to_string()).unwrap();
            std::fs::write(s.join("c").join("0").join("0"), &chunk).unwrap();
        }
        if let Ok(store) = Store::open(&s) {
            let _ = store.read_region_into(&Region::full(store.shape()), &mut [0u8; 40]);
        }
    }

    #[test]
    fn tiff_files_never_panic(bytes in mutated_tiff()) {
        let dir = tmp();
        let p = dir.path().join("m.tif");
        std::fs::write(&p, &bytes).unwrap();
        if let Ok(input) = Input::open(&p) {
            // The first page (or plane), if it is of a size worth decoding.
            let shape = input.shape().to_vec();
            let nd = shape.len();
            let plane = shape[nd - 2].saturating_mul(shape[nd - 1]);
            if nd >= 2 && plane <= 1 << 22 {
                let mut r: Vec<std::ops::Range<u64>> = shape.iter().map(|&n| 0..n.min(1)).collect();
                r[nd - 2] = 0..shape[nd - 2];
                r[nd - 1] = 0..shape[nd - 1];
                let mut buf = vec![0u8; plane as usize * input.dtype().size()];
                let _ = input.read_region_into(&Region::new(r), &mut buf);
            }
        }
    }

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

/// The seed corpus (fixtures/fuzz, `make_seeds.py`): (target, bytes) per file.
fn seeds() -> Vec<(String, Vec<u8>)> {
    let dir = crate::common::fixture("fuzz");
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (run fixtures/fuzz/make_seeds.py)", dir.display()))
        .filter_map(|e| {
            let p = e.ok()?.path();
            let name = p.file_name()?.to_str()?.to_string();
            let (target, _) = name.split_once('-')?;
            Some((target.to_string(), std::fs::read(&p).ok()?))
        })
        .collect();
    out.sort();
    assert!(
        out.len() >= 20,
        "the seed corpus in {} is missing",
        dir.display()
    );
    out
}

/// One edit of a seed's bytes.
#[derive(Debug, Clone)]
enum Edit {
    Set(usize, u8),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    Truncate(usize),
    /// A piece of the input copied elsewhere (a JSON value or header field twice).
    Splice(usize, usize, usize),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let bytes = prop_oneof![
        prop::collection::vec(any::<u8>(), 1..8),
        Just(b"99999999999999999999".to_vec()),
        Just(b"-1".to_vec()),
        Just(b"null".to_vec()),
        Just(b"[]".to_vec()),
        Just(b"{}".to_vec()),
        Just(b"\"\"".to_vec()),
        Just(b"1e308".to_vec()),
    ];
    let edit = prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Edit::Set(p, b)),
        (any::<usize>(), bytes).prop_map(|(p, b)| Edit::Insert(p, b)),
        (any::<usize>(), 1usize..16).prop_map(|(p, n)| Edit::Remove(p, n)),
        any::<usize>().prop_map(Edit::Truncate),
        (any::<usize>(), 1usize..32, any::<usize>()).prop_map(|(a, n, b)| Edit::Splice(a, n, b)),
    ];
    prop::collection::vec(edit, 1..6)
}

fn mutate(seed: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for e in edits {
        let at = |p: usize, v: &Vec<u8>| if v.is_empty() { 0 } else { p % (v.len() + 1) };
        match e {
            Edit::Set(p, b) if !v.is_empty() => {
                let i = p % v.len();
                v[i] = *b;
            }
            Edit::Set(..) => {}
            Edit::Insert(p, b) => {
                let i = at(*p, &v);
                v.splice(i..i, b.iter().copied());
            }
            Edit::Remove(p, n) => {
                let i = at(*p, &v);
                let j = (i + n).min(v.len());
                v.drain(i..j);
            }
            Edit::Truncate(p) => {
                let i = at(*p, &v);
                v.truncate(i);
            }
            Edit::Splice(a, n, b) => {
                let i = at(*a, &v);
                let piece: Vec<u8> = v[i..(i + n).min(v.len())].to_vec();
                let j = at(*b, &v);
                v.splice(j..j, piece);
            }
        }
    }
    v
}

/// Reads a whole store or input when it is small, ignoring errors (only panics fail).
fn read_small(shape: &[u64], itemsize: usize, read: impl FnOnce(&Region, &mut [u8])) {
    let n: u128 = shape.iter().map(|&x| u128::from(x)).product();
    if n <= 1 << 16 {
        read(&Region::full(shape), &mut vec![0u8; n as usize * itemsize]);
    }
}

proptest! {
    #![proptest_config(config())]

    /// Issue 14 item 6: every seed of the committed corpus, mutated (bytes set, inserted,
    /// removed, truncated, pieces duplicated), through the parser of its kind: `zarr.json`
    /// and `.zarray` (opened and read), raw sidecars (opened and read), `.npy` headers
    /// (parsed, opened and read), view specs and region strings. A value or an error, never a
    /// panic.
    #[test]
    fn mutated_corpus_never_panics(pick in any::<prop::sample::Index>(), e in edits()) {
        let corpus = seeds();
        let (target, seed) = &corpus[pick.index(corpus.len())];
        let bytes = mutate(seed, &e);
        let dir = tmp();
        let d = dir.path();
        match target.as_str() {
            "zarr_json" | "zarray" => {
                let s = d.join("s.zarr");
                std::fs::create_dir(&s).unwrap();
                let name = if target == "zarr_json" { "zarr.json" } else { ".zarray" };
                std::fs::write(s.join(name), &bytes).unwrap();
                if let Ok(store) = Store::open(&s) {
                    read_small(store.shape(), store.dtype().size(), |r, buf| {
                        let _ = store.read_region_into(r, buf);
                    });
                }
                let _ = Input::open(&s);
            }
            "sidecar" => {
                let raw = d.join("volume.raw");
                std::fs::write(&raw, vec![7u8; 240]).unwrap();
                std::fs::write(d.join("volume.json"), &bytes).unwrap();
                if let Ok(input) = Input::open_all(&[raw], &chunkwise::RawOptions::default()) {
                    read_small(input.shape(), input.dtype().size(), |r, buf| {
                        let _ = input.read_region_into(r, buf);
                    });
                }
            }
            "npy" => {
                let _ = chunkwise::support::parse_npy_header(&bytes, Path::new("x.npy"));
                let p = d.join("x.npy");
                let mut file = bytes.clone();
                file.extend_from_slice(&[3u8; 256]);
                std::fs::write(&p, file).unwrap();
                if let Ok(input) = Input::open(&p) {
                    read_small(input.shape(), input.dtype().size(), |r, buf| {
                        let _ = input.read_region_into(r, buf);
                    });
                }
            }
            "view" => {
                write_npy(&d.join("a.npy"), DType::U16, &[3, 4], &[1u8; 24]).unwrap();
                write_npy(&d.join("b.npy"), DType::U16, &[2, 4], &[2u8; 16]).unwrap();
                if let Ok(spec) = serde_json::from_slice::<Value>(&bytes)
                    && let Ok(v) = View::from_spec(&spec, d)
                {
                    read_small(v.shape(), v.dtype().size(), |r, buf| {
                        let _ = v.read_region_into(r, buf);
                    });
                }
            }
            "region" => {
                let text = String::from_utf8_lossy(&bytes);
                if let Ok(p) = Region::parse(&text, &[4, 5, 6]) {
                    prop_assert!(Region::full(&[4, 5, 6]).contains(&p.region));
                }
            }
            other => panic!("a seed of unknown kind {other:?} in fixtures/fuzz"),
        }
    }
}
