//! append, concat, stack and views (spec/APPEND.md), against the oracle of concatenating the
//! inputs' bytes in memory (numpy.concatenate's definition; tests/python/check_joins.py checks
//! the same results with numpy and zarr-python live).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use chunkwise::support::write_npy;
use chunkwise::{ConvertOptions, DType, GridLayout, GrowOptions, Region, Store, View};
use serde_json::json;

use crate::common::{chunkwise as cw, run_python, stderr, stdout, store_bytes, tmp};

/// Deterministic test data: a hash of the index, with bands of zeros along axis 0 (rows whose
/// `(i / zero_band) % 3 == 1`) so that some chunks are all fill value and not stored.
fn data(dtype: DType, shape: &[u64], seed: u64, zero_band: u64) -> Vec<u8> {
    let n: u64 = shape.iter().product();
    let inner: u64 = shape[1..].iter().product::<u64>().max(1);
    let mut out = Vec::with_capacity(n as usize * dtype.size());
    for k in 0..n {
        let row = k / inner;
        let mut h =
            (k + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h ^= h >> 31;
        let zero = zero_band > 0 && (row / zero_band) % 3 == 1;
        let v = if zero { 0 } else { h % 200 + 1 };
        match dtype {
            DType::Bool => out.push(u8::from(v % 2 == 1)),
            DType::U8 | DType::I8 => out.push(v as u8),
            DType::U16 | DType::I16 => out.extend_from_slice(&(v as u16).to_le_bytes()),
            DType::U32 | DType::I32 => out.extend_from_slice(&(v as u32).to_le_bytes()),
            DType::U64 | DType::I64 => out.extend_from_slice(&v.to_le_bytes()),
            DType::F32 => out.extend_from_slice(&(v as f32 * 0.5).to_le_bytes()),
            DType::F64 => out.extend_from_slice(&(v as f64 * 0.25).to_le_bytes()),
        }
    }
    out
}

/// An array in memory: type, shape, C-order bytes.
#[derive(Clone, Debug, PartialEq)]
struct Arr {
    dtype: DType,
    shape: Vec<u64>,
    bytes: Vec<u8>,
}

/// numpy.concatenate(parts, axis), on bytes.
fn concat_oracle(parts: &[&Arr], axis: usize) -> Arr {
    let item = parts[0].dtype.size();
    let outer: u64 = parts[0].shape[..axis].iter().product();
    let mut shape = parts[0].shape.clone();
    shape[axis] = parts.iter().map(|p| p.shape[axis]).sum();
    let mut bytes = Vec::new();
    for o in 0..outer {
        for p in parts {
            let run = (p.shape[axis..].iter().product::<u64>() as usize) * item;
            bytes.extend_from_slice(&p.bytes[o as usize * run..(o as usize + 1) * run]);
        }
    }
    Arr {
        dtype: parts[0].dtype,
        shape,
        bytes,
    }
}

/// numpy.stack(parts) (a new leading axis).
fn stack_oracle(parts: &[&Arr]) -> Arr {
    let mut shape = vec![parts.len() as u64];
    shape.extend_from_slice(&parts[0].shape);
    Arr {
        dtype: parts[0].dtype,
        shape,
        bytes: parts.iter().flat_map(|p| p.bytes.clone()).collect(),
    }
}

fn read(path: &Path) -> Arr {
    let s = Store::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Arr {
        dtype: s.dtype(),
        shape: s.shape().to_vec(),
        bytes: store_bytes(&s),
    }
}

fn assert_arr(path: &Path, want: &Arr, what: &str) {
    let got = read(path);
    assert_eq!(got.shape, want.shape, "{what}: shape of {}", path.display());
    assert_eq!(got.dtype, want.dtype, "{what}: type");
    if got.bytes != want.bytes {
        let at = got.bytes.iter().zip(&want.bytes).position(|(a, b)| a != b);
        panic!(
            "{what}: {} differs from the oracle at byte {at:?}",
            path.display()
        );
    }
}

/// Writes `arr` as NAME.npy and converts it to NAME.zarr with `chunks`.
fn make(dir: &Path, name: &str, arr: &Arr, chunks: &[u64]) -> (PathBuf, PathBuf) {
    let npy = dir.join(format!("{name}.npy"));
    write_npy(&npy, arr.dtype, &arr.shape, &arr.bytes).unwrap();
    let zarr = dir.join(format!("{name}.zarr"));
    chunkwise::convert(
        &crate::common::input(&npy),
        &zarr,
        &ConvertOptions::default().chunks(Some(chunks.to_vec())),
    )
    .unwrap();
    (npy, zarr)
}

fn arr(dtype: DType, shape: &[u64], seed: u64) -> Arr {
    Arr {
        dtype,
        shape: shape.to_vec(),
        bytes: data(dtype, shape, seed, 3),
    }
}

fn with_len(shape: &[u64], axis: usize, n: u64) -> Vec<u64> {
    let mut s = shape.to_vec();
    s[axis] = n;
    s
}

fn opts(axis: usize, layout: GridLayout) -> GrowOptions {
    GrowOptions::default()
        .axis(axis)
        .layout(layout)
        .durability(chunkwise::Durability::NoSync)
}

/// `append` as the command line gives it its inputs: stores one by one, anything else opened
/// together as `convert` reads it.
fn app(
    target: &Path,
    paths: &[PathBuf],
    o: &GrowOptions,
) -> chunkwise::Result<chunkwise::GrowReport> {
    let inputs = if paths.iter().all(|p| chunkwise::is_store(p)) {
        paths
            .iter()
            .map(chunkwise::Input::open)
            .collect::<chunkwise::Result<Vec<_>>>()?
    } else {
        vec![chunkwise::Input::open_all(
            paths,
            &chunkwise::RawOptions::default(),
        )?]
    };
    chunkwise::append(target, &inputs, o)
}

fn copy_dir(from: &Path, to: &Path) {
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

/// APPEND §3: concat of stores equals numpy.concatenate for lengths that are and are not chunk
/// multiples, 1-long inputs, three and more inputs, axes 0, 1 and 2, every layout; the auto
/// layout re-encodes at most one layer of stored data per join.
#[test]
fn concat_equals_numpy_concatenate() {
    let dir = tmp();
    let base = [6u64, 5, 7];
    let cases: &[(&[u64], usize)] = &[
        (&[8, 4], 0),    // multiples of the chunk (4): all linked
        (&[10, 7], 0),   // partial edge
        (&[1, 1, 1], 0), // 1-long inputs
        (&[5, 3, 9, 2], 0),
        (&[7, 6], 1),
        (&[5, 8, 1], 2),
    ];
    for (case, &(lens, axis)) in cases.iter().enumerate() {
        let parts: Vec<Arr> = lens
            .iter()
            .enumerate()
            .map(|(k, &n)| arr(DType::U16, &with_len(&base, axis, n), 100 + k as u64))
            .collect();
        let mut chunks = vec![3u64, 4, 3];
        chunks[axis] = 4;
        let stores: Vec<PathBuf> = parts
            .iter()
            .enumerate()
            .map(|(k, a)| make(dir.path(), &format!("c{case}_{k}"), a, &chunks).1)
            .collect();
        let want = concat_oracle(&parts.iter().collect::<Vec<_>>(), axis);
        for layout in [
            GridLayout::Auto,
            GridLayout::Regular,
            GridLayout::Rectilinear,
        ] {
            let out = dir.path().join(format!("c{case}_{layout:?}.zarr"));
            let r = chunkwise::concat(&stores, &out, &opts(axis, layout)).unwrap();
            assert_arr(
                &out,
                &want,
                &format!("concat {lens:?} axis {axis} {layout:?}"),
            );
            assert!(!r.already_done);
            if layout != GridLayout::Regular {
                assert!(
                    r.layers_reencoded < lens.len() as u64,
                    "{lens:?} {layout:?}: {} layers re-encoded",
                    r.layers_reencoded
                );
            }
            if lens[..lens.len() - 1].iter().all(|n| n % 4 == 0) {
                assert_eq!(r.chunks_encoded, 0, "{lens:?}: aligned joins only link");
                assert_eq!(r.grid, "regular");
            }
            if layout == GridLayout::Regular {
                assert_eq!(r.grid, "regular");
            }
        }
    }
}

/// APPEND §3.1: every data type joins exactly.
#[test]
fn every_dtype_joins() {
    let dir = tmp();
    for (k, &dt) in DType::ALL.iter().enumerate() {
        let a = arr(dt, &[5, 3, 4], 7 + k as u64);
        let b = arr(dt, &[3, 3, 4], 70 + k as u64);
        let (_, sa) = make(dir.path(), &format!("a{k}"), &a, &[2, 2, 4]);
        let (nb, sb) = make(dir.path(), &format!("b{k}"), &b, &[2, 2, 4]);
        let out = dir.path().join(format!("ab{k}.zarr"));
        chunkwise::concat(&[sa.clone(), sb], &out, &opts(0, GridLayout::Auto)).unwrap();
        assert_arr(&out, &concat_oracle(&[&a, &b], 0), &format!("concat {dt}"));
        app(&sa, &[nb], &opts(0, GridLayout::Auto)).unwrap();
        assert_arr(&sa, &concat_oracle(&[&a, &b], 0), &format!("append {dt}"));
    }
}

/// APPEND §2: append of files (a stack, one .npy, a slice without the axis) and of stores, on
/// every axis, repeatedly, onto partial edge layers; `--cast` for widening types only.
#[test]
fn append_equals_numpy_concatenate() {
    let dir = tmp();
    for axis in 0..3 {
        let base = arr(DType::I32, &with_len(&[9, 6, 5], axis, 9), 1);
        let mut chunks = vec![4u64, 4, 4];
        chunks[axis] = 4;
        let (_, store) = make(dir.path(), &format!("t{axis}"), &base, &chunks);
        let mut want = base.clone();
        for (step, n) in [3u64, 1, 8, 4].into_iter().enumerate() {
            let add = arr(DType::I32, &with_len(&[9, 6, 5], axis, n), 10 + step as u64);
            let npy = dir.path().join(format!("add{axis}_{step}.npy"));
            write_npy(&npy, add.dtype, &add.shape, &add.bytes).unwrap();
            let r = app(&store, &[npy], &opts(axis, GridLayout::Auto)).unwrap();
            want = concat_oracle(&[&want, &add], axis);
            assert_arr(&store, &want, &format!("append axis {axis} step {step}"));
            assert_eq!(r.grid, "regular");
            assert!(r.layers_reencoded <= 1);
        }
        // A store as input, and a 2-D slice (one row along the axis).
        let other = arr(DType::I32, &with_len(&[9, 6, 5], axis, 6), 99);
        let (_, os) = make(dir.path(), &format!("o{axis}"), &other, &[2, 3, 5]);
        app(&store, &[os], &opts(axis, GridLayout::Auto)).unwrap();
        want = concat_oracle(&[&want, &other], axis);
        assert_arr(&store, &want, "append a store");
        let mut slice_shape = want.shape.clone();
        slice_shape.remove(axis);
        let slice = Arr {
            dtype: DType::I32,
            bytes: data(DType::I32, &slice_shape, 5, 0),
            shape: slice_shape.clone(),
        };
        let npy = dir.path().join(format!("slice{axis}.npy"));
        write_npy(&npy, DType::I32, &slice.shape, &slice.bytes).unwrap();
        app(&store, &[npy], &opts(axis, GridLayout::Auto)).unwrap();
        let one = Arr {
            shape: with_len(&want.shape, axis, 1),
            ..slice
        };
        want = concat_oracle(&[&want, &one], axis);
        assert_arr(&store, &want, "append a slice");
    }

    // --cast: uint8 into a uint16 array is exact; float64 into it is refused.
    let base = arr(DType::U16, &[6, 4, 4], 3);
    let (_, store) = make(dir.path(), "cast", &base, &[4, 4, 4]);
    let small = arr(DType::U8, &[5, 4, 4], 4);
    let npy = dir.path().join("u8.npy");
    write_npy(&npy, DType::U8, &small.shape, &small.bytes).unwrap();
    let err = app(
        &store,
        std::slice::from_ref(&npy),
        &opts(0, GridLayout::Auto),
    )
    .unwrap_err();
    assert!(err.to_string().contains("allow casting"), "{err}");
    assert_arr(&store, &base, "unchanged after a refused append");
    app(&store, &[npy], &opts(0, GridLayout::Auto).cast(true)).unwrap();
    let widened = Arr {
        dtype: DType::U16,
        shape: small.shape.clone(),
        bytes: small
            .bytes
            .iter()
            .flat_map(|&b| u16::from(b).to_le_bytes())
            .collect(),
    };
    assert_arr(
        &store,
        &concat_oracle(&[&base, &widened], 0),
        "append --cast",
    );
    let f = arr(DType::F64, &[2, 4, 4], 5);
    let npy = dir.path().join("f64.npy");
    write_npy(&npy, DType::F64, &f.shape, &f.bytes).unwrap();
    let err = app(&store, &[npy], &opts(0, GridLayout::Auto).cast(true)).unwrap_err();
    assert!(err.to_string().contains("lose values"), "{err}");
}

/// APPEND §3.3 and §4.3: joining in place (`--into`), including the rectilinear case that
/// re-encodes an existing chunk layer at its true length (the directory is exchanged).
#[test]
fn concat_into_in_place() {
    let dir = tmp();
    let a = arr(DType::F32, &[10, 6, 6], 1);
    let b = arr(DType::F32, &[7, 6, 6], 2);
    let c = arr(DType::F32, &[4, 6, 6], 3);
    for layout in [
        GridLayout::Auto,
        GridLayout::Regular,
        GridLayout::Rectilinear,
    ] {
        let (_, sa) = make(dir.path(), &format!("a{layout:?}"), &a, &[4, 3, 6]);
        let (_, sb) = make(dir.path(), &format!("b{layout:?}"), &b, &[4, 3, 6]);
        let (_, sc) = make(dir.path(), &format!("c{layout:?}"), &c, &[4, 3, 6]);
        let r = chunkwise::concat_into(&sa, &[sb.clone(), sc.clone()], &opts(0, layout)).unwrap();
        assert_arr(
            &sa,
            &concat_oracle(&[&a, &b, &c], 0),
            &format!("--into {layout:?}"),
        );
        assert_eq!(r.exchanged, r.grid == "rectilinear", "{layout:?}: {r:?}");
        // The inputs are untouched (linked, not moved).
        assert_arr(&sb, &b, "input b after --into");
        // A second identical run is already done.
        let again = chunkwise::concat_into(&sa, &[sb, sc], &opts(0, layout)).unwrap();
        assert!(again.already_done);
        assert_arr(&sa, &concat_oracle(&[&a, &b, &c], 0), "after the rerun");
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            !names.iter().any(|n| n.contains("chunkwise-new")),
            "no rebuilt directory left: {names:?}"
        );
    }
}

/// APPEND §3.4: stack links every chunk under a new leading axis.
#[test]
fn stack_equals_numpy_stack() {
    let dir = tmp();
    let parts: Vec<Arr> = (0..3)
        .map(|k| arr(DType::I16, &[5, 7, 3], 20 + k))
        .collect();
    let stores: Vec<PathBuf> = parts
        .iter()
        .enumerate()
        .map(|(k, a)| make(dir.path(), &format!("s{k}"), a, &[2, 4, 3]).1)
        .collect();
    let out = dir.path().join("stacked.zarr");
    let r = chunkwise::stack(&stores, &out, &opts(0, GridLayout::Auto)).unwrap();
    assert_arr(
        &out,
        &stack_oracle(&parts.iter().collect::<Vec<_>>()),
        "stack",
    );
    let stored: u64 = stores
        .iter()
        .map(|s| {
            let st = Store::open(s).unwrap();
            st.chunk_indices()
                .iter()
                .filter(|i| st.chunk_stored_size(i).unwrap().is_some())
                .count() as u64
        })
        .sum();
    assert_eq!(r.chunks_linked, stored);
    assert_eq!(r.chunks_encoded, 0);
    // Sharded inputs stack too (the shard's inner chunk shape gains the axis).
    let sharded: Vec<PathBuf> = (0..2)
        .map(|k| {
            let npy = dir.path().join(format!("s{k}.npy"));
            let out = dir.path().join(format!("sh{k}.zarr"));
            chunkwise::convert(
                &crate::common::input(npy),
                &out,
                &ConvertOptions::default()
                    .chunks(Some(vec![4, 4, 3]))
                    .subchunks(Some(vec![2, 2, 3])),
            )
            .unwrap();
            out
        })
        .collect();
    let out = dir.path().join("stacked_sharded.zarr");
    chunkwise::stack(&sharded, &out, &opts(0, GridLayout::Auto)).unwrap();
    assert_arr(
        &out,
        &stack_oracle(&[&parts[0], &parts[1]]),
        "stack of sharded",
    );
}

/// APPEND §3.1: sharded arrays join with the shard as the chunk; rectilinear edges must be
/// subchunk multiples (auto falls back to regular, an explicit rectilinear is refused).
#[test]
fn sharded_arrays_concat_or_refuse_clearly() {
    let dir = tmp();
    let sharded = |name: &str, a: &Arr| {
        let (npy, _) = make(dir.path(), &format!("{name}_plain"), a, &[8, 6, 6]);
        let out = dir.path().join(format!("{name}.zarr"));
        chunkwise::convert(
            &crate::common::input(npy),
            &out,
            &ConvertOptions::default()
                .chunks(Some(vec![8, 6, 6]))
                .subchunks(Some(vec![4, 3, 6])),
        )
        .unwrap();
        out
    };
    let cases: &[(u64, u64, GridLayout, &str)] = &[
        (16, 10, GridLayout::Auto, "regular"), // shard multiple: all linked
        (12, 10, GridLayout::Rectilinear, "rectilinear"), // edge 4 = one subchunk
        (10, 9, GridLayout::Auto, "regular"),  // edge 2 < subchunk: stays regular
        (10, 9, GridLayout::Regular, "regular"),
    ];
    for (k, &(na, nb, layout, grid)) in cases.iter().enumerate() {
        let a = arr(DType::U16, &[na, 12, 12], 40 + k as u64);
        let b = arr(DType::U16, &[nb, 12, 12], 50 + k as u64);
        let (sa, sb) = (sharded(&format!("a{k}"), &a), sharded(&format!("b{k}"), &b));
        let out = dir.path().join(format!("ab{k}.zarr"));
        let r = chunkwise::concat(&[sa, sb], &out, &opts(0, layout)).unwrap();
        assert_eq!(r.grid, grid, "case {k}");
        assert_arr(
            &out,
            &concat_oracle(&[&a, &b], 0),
            &format!("sharded case {k}"),
        );
        if k == 0 {
            assert_eq!(r.chunks_encoded, 0, "shard-aligned join links every shard");
        }
    }
    // Explicitly rectilinear with an edge that is not a subchunk multiple: refused, named.
    let a = arr(DType::U16, &[10, 12, 12], 60);
    let b = arr(DType::U16, &[9, 12, 12], 61);
    let (sa, sb) = (sharded("ra", &a), sharded("rb", &b));
    let out = dir.path().join("refused.zarr");
    let e = chunkwise::concat(&[sa, sb], &out, &opts(0, GridLayout::Rectilinear))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("subchunks of 4") && e.contains("edge of 2") && e.contains("regular layout"),
        "{e}"
    );
    assert!(!out.exists());
}

/// Tests section of the issue: zarr-python (and tensorstore, for regular grids) read the
/// regular and rectilinear results live, compared with numpy.concatenate / numpy.stack of
/// the inputs.
#[test]
fn zarr_python_reads_grown_arrays() {
    let dir = tmp();
    let a = arr(DType::U16, &[100, 6, 5], 1);
    let b = arr(DType::U16, &[70, 6, 5], 2);
    let (na, sa) = make(dir.path(), "a", &a, &[64, 3, 5]);
    let (nb, sb) = make(dir.path(), "b", &b, &[64, 3, 5]);
    let mut lines = Vec::new();
    let mut job = |name: &str, op: &str, axis: usize, npys: Vec<&Path>, f: &dyn Fn(&Path)| {
        let out = dir.path().join(name);
        f(&out);
        lines.push(json!({"store": out, "op": op, "axis": axis, "inputs": npys}).to_string());
    };
    // The example: 100 + 70 rows, 64-row chunks -> edges [64, 36, 64, 64].
    job("rect.zarr", "concatenate", 0, vec![&na, &nb], &|out| {
        let r =
            chunkwise::concat(&[sa.clone(), sb.clone()], out, &opts(0, GridLayout::Auto)).unwrap();
        assert_eq!(r.grid, "rectilinear");
        assert_eq!((r.chunks_encoded, r.chunks_linked), (2, 6));
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("zarr.json")).unwrap()).unwrap();
        assert_eq!(
            meta["chunk_grid"]["configuration"]["chunk_shapes"][0],
            json!([64, 36, [64, 2]])
        );
        // `info` shows the edges (and reads the rectilinear array's chunks).
        let info = chunkwise::info(&crate::common::input(out)).unwrap();
        assert!(
            info.to_string()
                .contains("rectilinear axis 0: [64,36,[64,2]]"),
            "{info}"
        );
        assert_eq!(info.chunks_total, info.grid_shape.iter().product::<u64>());
    });
    job("regular.zarr", "concatenate", 0, vec![&na, &nb], &|out| {
        chunkwise::concat(
            &[sa.clone(), sb.clone()],
            out,
            &opts(0, GridLayout::Regular),
        )
        .unwrap();
    });
    job("axis2.zarr", "concatenate", 2, vec![&na, &na], &|out| {
        let c = dir.path().join("a_copy.zarr");
        copy_dir(&sa, &c);
        chunkwise::concat(&[sa.clone(), c], out, &opts(2, GridLayout::Auto)).unwrap();
    });
    job("appended.zarr", "concatenate", 0, vec![&na, &nb], &|out| {
        copy_dir(&sa, out);
        app(out, std::slice::from_ref(&nb), &opts(0, GridLayout::Auto)).unwrap();
    });
    job(
        "appended_rect.zarr",
        "concatenate",
        0,
        vec![&na, &nb],
        &|out| {
            copy_dir(&sa, out);
            app(
                out,
                std::slice::from_ref(&nb),
                &opts(0, GridLayout::Rectilinear),
            )
            .unwrap();
        },
    );
    job("stacked.zarr", "stack", 0, vec![&na, &na], &|out| {
        let c = dir.path().join("a_copy2.zarr");
        copy_dir(&sa, &c);
        chunkwise::stack(&[sa.clone(), c], out, &opts(0, GridLayout::Auto)).unwrap();
    });
    let manifest = dir.path().join("joins.jsonl");
    std::fs::write(&manifest, lines.join("\n")).unwrap();
    let out = run_python("check_joins.py", &[&manifest]);
    assert!(out.contains("6 of 6 joins match"), "{out}");
}

fn snapshot(dir: &Path) -> HashMap<PathBuf, (u64, u64)> {
    let mut out = HashMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                todo.push(e.path());
            } else {
                out.insert(
                    e.path().strip_prefix(dir).unwrap().to_path_buf(),
                    (m.ino(), m.len()),
                );
            }
        }
    }
    out
}

/// APPEND §2, the cost: an append writes the new chunks, at most the one edge layer, and
/// metadata; the bytes it reports are exactly the new files; and they do not depend on the
/// size of the existing array.
#[test]
fn append_writes_only_new_data() {
    let dir = tmp();
    let add = arr(DType::U16, &[10, 8, 8], 9);
    let npy = dir.path().join("add.npy");
    write_npy(&npy, add.dtype, &add.shape, &add.bytes).unwrap();
    let mut reported = Vec::new();
    for (k, n) in [16u64, 64].into_iter().enumerate() {
        // Aligned (a multiple of the chunk): nothing old changes.
        let base = arr(DType::U16, &[n, 8, 8], 1);
        let (_, store) = make(dir.path(), &format!("aligned{k}"), &base, &[4, 8, 8]);
        let before = snapshot(&store);
        let r = app(
            &store,
            std::slice::from_ref(&npy),
            &opts(0, GridLayout::Auto),
        )
        .unwrap();
        let after = snapshot(&store);
        let mut new_bytes = 0;
        for (p, (ino, len)) in &after {
            if p.ends_with(".chunkwise.lock") {
                continue;
            }
            match before.get(p) {
                Some((old_ino, _)) if p.starts_with("c") => {
                    assert_eq!(ino, old_ino, "{}: an old chunk was rewritten", p.display());
                }
                _ => new_bytes += len,
            }
        }
        assert_eq!(
            r.bytes_written, new_bytes,
            "reported vs files new or replaced"
        );
        assert_eq!(r.layers_reencoded, 0);
        reported.push(r.bytes_written);
    }
    assert_eq!(
        reported[0], reported[1],
        "bytes written independent of the existing size"
    );

    // Partial (18 rows, chunk 4): the edge layer (one chunk here) is the only old file replaced.
    let base = arr(DType::U16, &[18, 8, 8], 1);
    let (_, store) = make(dir.path(), "partial", &base, &[4, 8, 8]);
    let before = snapshot(&store);
    let r = app(
        &store,
        std::slice::from_ref(&npy),
        &opts(0, GridLayout::Auto),
    )
    .unwrap();
    let after = snapshot(&store);
    let replaced: Vec<_> = before
        .iter()
        .filter(|(p, (ino, _))| p.starts_with("c") && after.get(*p).is_some_and(|(i, _)| i != ino))
        .map(|(p, _)| p.clone())
        .collect();
    assert_eq!(replaced, vec![PathBuf::from("c/4/0/0")]);
    assert_eq!(r.layers_reencoded, 1);
}

/// The Bad input list: mismatched type, shape, chunking, codecs or fill value (the
/// field is named); a store joined with itself; missing inputs; a locked store; an output
/// inside an input. Nothing is lost: the target still reads as before.
#[test]
fn bad_joins_are_clear_errors_and_lose_nothing() {
    let dir = tmp();
    let a = arr(DType::U16, &[6, 4, 4], 1);
    let (_, sa) = make(dir.path(), "a", &a, &[4, 4, 4]);
    let wrong_shape = arr(DType::U16, &[3, 5, 4], 2);
    let (nws, sws) = make(dir.path(), "ws", &wrong_shape, &[4, 4, 4]);
    let (_, sdt) = make(
        dir.path(),
        "dt",
        &arr(DType::I16, &[3, 4, 4], 3),
        &[4, 4, 4],
    );
    let (nchunk, schunk) = make(
        dir.path(),
        "ch",
        &arr(DType::U16, &[3, 4, 4], 4),
        &[4, 2, 4],
    );
    let scodec = dir.path().join("codec.zarr");
    chunkwise::convert(
        &crate::common::input(&nchunk),
        &scodec,
        &ConvertOptions::default()
            .chunks(Some(vec![4, 4, 4]))
            .codec(chunkwise::Codec::Zstd { level: 3 }),
    )
    .unwrap();
    let o = opts(0, GridLayout::Auto);
    let check = |r: chunkwise::Result<chunkwise::GrowReport>, want: &[&str]| {
        let e = r.unwrap_err().to_string();
        for w in want {
            assert!(e.contains(w), "expected {w:?} in: {e}");
        }
        assert_arr(&sa, &a, "target unchanged after an error");
    };
    let out = dir.path().join("out.zarr");
    check(
        chunkwise::concat(&[sa.clone(), sws.clone()], &out, &o),
        &["axis 1", "4 vs 5"],
    );
    check(
        app(&sa, std::slice::from_ref(&nws), &o),
        &["axis 1", "4 vs 5"],
    );
    check(
        chunkwise::concat(&[sa.clone(), sdt], &out, &o),
        &["data_type", "uint16", "int16"],
    );
    check(
        chunkwise::concat(&[sa.clone(), schunk], &out, &o),
        &["chunk_grid (axis 1)"],
    );
    check(
        chunkwise::concat(&[sa.clone(), scodec], &out, &o),
        &["codecs"],
    );
    check(
        chunkwise::concat(&[sa.clone(), sa.clone()], &out, &o),
        &["given twice"],
    );
    check(
        chunkwise::concat(&[sa.clone(), dir.path().join("missing.zarr")], &out, &o),
        &["missing.zarr", "No such file or directory (os error 2)"],
    );
    check(
        chunkwise::concat(&[sa.clone(), sws.clone()], &sa.join("inner.zarr"), &o),
        &["inside the input"],
    );
    check(app(&sa, &[dir.path().join("nope.npy")], &o), &["nope.npy"]);
    check(
        app(&sa, std::slice::from_ref(&sa), &o),
        &["being appended to"],
    );
    check(
        chunkwise::concat_into(&sa, std::slice::from_ref(&sa), &o),
        &["given twice"],
    );
    // An axis past the array's rank (a one-slice input gains the axis: no panic either).
    let plane = dir.path().join("plane.npy");
    write_npy(&plane, DType::U16, &[4, 4], &[0u8; 32]).unwrap();
    check(
        app(
            &sa,
            std::slice::from_ref(&plane),
            &opts(3, GridLayout::Auto),
        ),
        &["invalid axis", "3 is out of range for the 3-d array"],
    );
    // A missing target, and a directory that is not an array (left without a lock file).
    check(
        app(
            &dir.path().join("gone.zarr"),
            std::slice::from_ref(&plane),
            &o,
        ),
        &["gone.zarr", "No such file or directory (os error 2)"],
    );
    let plain = dir.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    check(
        app(&plain, std::slice::from_ref(&plane), &o),
        &["not a zarr array"],
    );
    assert_eq!(std::fs::read_dir(&plain).unwrap().count(), 0);
    // Empty input: nothing written, the array as it was.
    let empty = dir.path().join("empty.npy");
    write_npy(&empty, DType::U16, &[0, 4, 4], &[]).unwrap();
    let r = app(&sa, std::slice::from_ref(&empty), &o).unwrap();
    assert_eq!((r.bytes_written, r.chunks_encoded), (0, 0));
    assert_arr(&sa, &a, "an empty append");
    assert!(!out.exists());

    // A different fill value.
    let fill = dir.path().join("fill.zarr");
    copy_dir(&sa, &fill);
    let meta_path = fill.join("zarr.json");
    let mut meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&meta_path).unwrap()).unwrap();
    meta["fill_value"] = json!(7);
    std::fs::write(&meta_path, meta.to_string()).unwrap();
    check(
        chunkwise::concat(&[sa.clone(), fill], &out, &o),
        &["fill_value", "0 vs 7"],
    );

    // A locked store: "locked by pid N"; with --wait the append goes through once released.
    let lock_path = sa.join(".chunkwise.lock");
    let mut held = std::fs::File::create(&lock_path).unwrap();
    held.try_lock().unwrap();
    use std::io::Write;
    write!(held, "{}", std::process::id()).unwrap();
    let extra = dir.path().join("extra.npy");
    let e = arr(DType::U16, &[2, 4, 4], 8);
    write_npy(&extra, DType::U16, &e.shape, &e.bytes).unwrap();
    check(
        app(&sa, std::slice::from_ref(&extra), &o),
        &[&format!("store is locked by pid {}", std::process::id())],
    );
    let out_cli = cw(&["append", sa.to_str().unwrap(), extra.to_str().unwrap()]);
    assert_eq!(out_cli.status.code(), Some(2));
    assert!(
        stderr(&out_cli).contains("store is locked by pid"),
        "{}",
        stderr(&out_cli)
    );
    let (sa2, extra2) = (sa.clone(), extra.clone());
    let waiter =
        std::thread::spawn(move || app(&sa2, &[extra2], &opts(0, GridLayout::Auto).wait(true)));
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(!waiter.is_finished(), "--wait waits for the lock");
    held.unlock().unwrap();
    waiter.join().unwrap().unwrap();
    assert_arr(&sa, &concat_oracle(&[&a, &e], 0), "after waiting");
}

/// APPEND §7: views over stores and memory-mapped .npy files, read by region; `export` and
/// `convert` take a JSON view spec.
#[test]
fn views_read_without_copying_and_feed_export_and_convert() {
    let dir = tmp();
    let a = arr(DType::U8, &[5, 6, 7], 1);
    let b = arr(DType::U8, &[5, 6, 7], 2);
    let (na, _) = make(dir.path(), "a", &a, &[2, 3, 7]);
    let (_, sb) = make(dir.path(), "b", &b, &[2, 3, 7]);
    let va = View::open(&na).unwrap();
    let vb = View::open(&sb).unwrap();
    let cat = View::concat(vec![va.clone(), vb.clone()], 1).unwrap();
    let want = concat_oracle(&[&a, &b], 1);
    let got = cat.read_region::<u8>(&Region::full(cat.shape())).unwrap();
    assert_eq!(got.as_slice().unwrap(), &want.bytes[..]);
    let st = View::stack(vec![va, vb], 0).unwrap();
    let part = st
        .slice(&Region::new(vec![1..2, 1..4, 0..6, 2..5]))
        .unwrap();
    let got = part.read_region::<u8>(&Region::full(part.shape())).unwrap();
    let full = stack_oracle(&[&a, &b]);
    let idx = |s: usize, z: usize, y: usize, x: usize| ((s * 5 + z) * 6 + y) * 7 + x;
    for z in 0..3 {
        for y in 0..6 {
            for x in 0..3 {
                assert_eq!(got[[0, z, y, x]], full.bytes[idx(1, z + 1, y, x + 2)]);
            }
        }
    }

    let spec = dir.path().join("view.json");
    std::fs::write(
        &spec,
        json!({"concat": ["a.npy", {"slice": "b.zarr", "region": "1:4,:,:"}], "axis": 0})
            .to_string(),
    )
    .unwrap();
    let exported = dir.path().join("view.npy");
    let o = cw(&[
        "export",
        spec.to_str().unwrap(),
        "-o",
        exported.to_str().unwrap(),
        "-q",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let b14 = Arr {
        dtype: DType::U8,
        shape: vec![3, 6, 7],
        bytes: b.bytes[42..4 * 42].to_vec(),
    };
    let want = concat_oracle(&[&a, &b14], 0);
    let got = crate::common::read_npy(&exported);
    assert_eq!(
        (got.shape, got.bytes),
        (want.shape.clone(), want.bytes.clone())
    );
    let converted = dir.path().join("view.zarr");
    let o = cw(&[
        "convert",
        spec.to_str().unwrap(),
        "-o",
        converted.to_str().unwrap(),
        "-q",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_arr(&converted, &want, "convert of a view spec");
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, json!({"concat": "a.npy"}).to_string()).unwrap();
    let o = cw(&[
        "export",
        bad.to_str().unwrap(),
        "-o",
        exported.to_str().unwrap(),
        "--overwrite",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("bad.json"), "{}", stderr(&o));
}

/// The CLI spelling of the three commands, with the report.
#[test]
fn cli_append_concat_stack() {
    let dir = tmp();
    let a = arr(DType::U16, &[5, 4, 4], 1);
    let b = arr(DType::U16, &[3, 4, 4], 2);
    let (na, sa) = make(dir.path(), "a", &a, &[4, 4, 4]);
    let (nb, sb) = make(dir.path(), "b", &b, &[4, 4, 4]);
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let out = dir.path().join("ab.zarr");
    let o = cw(&["concat", &s(&sa), &s(&sb), "-o", &s(&out), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rep: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(rep["shape"], json!([8, 4, 4]));
    assert_arr(&out, &concat_oracle(&[&a, &b], 0), "cli concat");
    let o = cw(&["append", &s(&sa), &s(&nb)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("5x4x4 -> 8x4x4"), "{}", stdout(&o));
    let o = cw(&["append", &s(&sa), &s(&nb)]);
    assert!(stdout(&o).contains("already done"), "{}", stdout(&o));
    let st = dir.path().join("st.zarr");
    let c = dir.path().join("a2.zarr");
    let o = cw(&["convert", &s(&na), "-o", &s(&c), "--chunks", "4,4,4", "-q"]);
    assert!(o.status.success());
    let o = cw(&["stack", &s(&c), &s(&out), "-o", &s(&st)]);
    assert_eq!(o.status.code(), Some(2), "different shapes: {}", stdout(&o));
    assert!(stderr(&o).contains("axis 0"), "{}", stderr(&o));
}

/// One way of growing an array that the kill test interrupts.
struct KillCase {
    name: &'static str,
    /// The array written in place (restored from `template` before each round), or the new output.
    target: PathBuf,
    template: Option<PathBuf>,
    args: Vec<String>,
    /// What the target may hold after a kill: the old array (`None`: absent) or the new one.
    old: Option<Arr>,
    new: Arr,
    /// Inputs restored from templates before each round (`--move` removes them).
    restore: Vec<(PathBuf, PathBuf)>,
    /// The protocol steps this command passes (APPEND §4.6).
    steps: &'static [&'static str],
}

/// Names under `dirs` that a writer leaves only while it runs (APPEND §4.4): staging
/// directories, `.NAME.chunkwise-new/-old`, temp files.
fn leftovers(dirs: &[&Path]) -> Vec<String> {
    let mut found = Vec::new();
    for d in dirs {
        let Ok(rd) = std::fs::read_dir(d) else {
            continue;
        };
        for e in rd {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            let allowed = name == ".chunkwise-journal.json" || name == ".chunkwise.lock";
            if name.contains("chunkwise") && !allowed {
                found.push(format!("{}/{name}", d.display()));
            }
        }
    }
    found
}

/// APPEND §4: SIGKILL append, concat --into (the exchange path), concat -o, and both with
/// --move, at every step of the commit protocol (APPEND §4.6) and at random instants
/// (CHUNKWISE_KILL_ROUNDS in all, 250 by default; tests/soak.sh runs thousands). After every kill
/// the array opens as the old or the new one with exactly the oracle's data (a new output is
/// absent or complete), the inputs not moved are untouched, and rerunning the same command
/// completes it or says it is already done, leaving no staging files and no moved input behind.
#[test]
fn killed_appends_and_concats_leave_the_old_or_the_new_array() {
    crate::common::need_crash_points();
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let rounds: usize = std::env::var("CHUNKWISE_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(250);
    let dir = tmp();
    let d = dir.path();
    let chunks = [8u64, 6, 6];
    // 44 rows: a partial last layer of 4 (a regular append fills it; a rectilinear concat
    // re-encodes it to its true length, which exchanges the whole directory).
    let a = arr(DType::U16, &[44, 24, 24], 1);
    let b = arr(DType::U16, &[21, 24, 24], 2);
    let (_, a_zarr) = make(d, "a", &a, &chunks);
    let (b_npy, b_zarr) = make(d, "b", &b, &chunks);
    let t = d.join("t.zarr");
    let out = d.join("out.zarr");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let ab = concat_oracle(&[&a, &b], 0);
    let (am, bm) = (d.join("am.zarr"), d.join("bm.zarr"));
    let cases = [
        KillCase {
            name: "append (regular, fills the edge layer)",
            target: t.clone(),
            template: Some(a_zarr.clone()),
            args: vec![
                "append".into(),
                s(&t),
                s(&b_npy),
                "--no-sync".into(),
                "--checkpoint-secs".into(),
                "0".into(),
            ],
            old: Some(a.clone()),
            new: ab.clone(),
            restore: Vec::new(),
            steps: &[
                "placing",
                "checkpointed",
                "staged",
                "journaled",
                "committed",
            ],
        },
        KillCase {
            name: "concat --into --layout rectilinear (exchange)",
            target: t.clone(),
            template: Some(a_zarr.clone()),
            args: vec![
                "concat".into(),
                "--into".into(),
                s(&t),
                s(&b_zarr),
                "--layout".into(),
                "rectilinear".into(),
                "--no-sync".into(),
            ],
            old: Some(a.clone()),
            new: ab.clone(),
            restore: Vec::new(),
            steps: &["placing", "linked", "staged", "journaled", "committed"],
        },
        KillCase {
            name: "concat -o (new output)",
            target: out.clone(),
            template: None,
            args: vec![
                "concat".into(),
                s(&a_zarr),
                s(&b_zarr),
                "-o".into(),
                s(&out),
                "--no-sync".into(),
            ],
            old: None,
            new: ab.clone(),
            restore: Vec::new(),
            steps: &["placing", "staged", "journaled", "committed"],
        },
        KillCase {
            name: "concat --into --move",
            target: t.clone(),
            template: Some(a_zarr.clone()),
            args: vec![
                "concat".into(),
                "--into".into(),
                s(&t),
                s(&bm),
                "--move".into(),
                "--no-sync".into(),
            ],
            old: Some(a.clone()),
            new: ab.clone(),
            restore: vec![(b_zarr.clone(), bm.clone())],
            steps: &[
                "placing",
                "linked",
                "staged",
                "journaled",
                "committed",
                "moving",
            ],
        },
        KillCase {
            name: "concat -o --move",
            target: out.clone(),
            template: None,
            args: vec![
                "concat".into(),
                s(&am),
                s(&bm),
                "-o".into(),
                s(&out),
                "--move".into(),
                "--no-sync".into(),
            ],
            old: None,
            new: ab.clone(),
            restore: vec![(a_zarr.clone(), am.clone()), (b_zarr.clone(), bm.clone())],
            steps: &["placing", "staged", "journaled", "committed", "moving"],
        },
    ];
    let reset = |c: &KillCase| {
        if c.target.exists() {
            std::fs::remove_dir_all(&c.target).unwrap();
        }
        if let Some(tpl) = &c.template {
            copy_dir(tpl, &c.target);
        }
        for (tpl, p) in &c.restore {
            if p.exists() {
                std::fs::remove_dir_all(p).unwrap();
            }
            copy_dir(tpl, p);
        }
    };
    let run = |c: &KillCase| {
        let o = cw(&c.args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(o.status.success(), "{}: {}", c.name, stderr(&o));
        o
    };
    // How long each command takes, to spread the kills over its whole run.
    let mut full = Vec::new();
    for c in &cases {
        let mut best = Duration::MAX;
        for _ in 0..3 {
            reset(c);
            let t0 = Instant::now();
            run(c);
            best = best.min(t0.elapsed());
        }
        assert_arr(&c.target, &c.new, c.name);
        full.push(best);
    }
    // After a kill: the array is the old or the new one (0 or 1); the rerun completes it
    // (2 if it said "already done"), leaving nothing behind.
    let after_kill = |c: &KillCase, what: &str| -> (usize, bool, String) {
        let state = if c.target.exists() {
            let got = read(&c.target);
            if got == c.new {
                1
            } else if c.old.as_ref() == Some(&got) {
                0
            } else {
                panic!(
                    "{what}: the array is neither the old nor the new one (shape {:?})",
                    got.shape
                );
            }
        } else {
            assert!(c.old.is_none(), "{what}: the array is gone");
            0
        };
        let o = run(c);
        let said_done = stdout(&o).contains("already done");
        assert_arr(&c.target, &c.new, &format!("{what}, after the rerun"));
        let stale = leftovers(&[d, &c.target]);
        assert!(stale.is_empty(), "{what}: left behind {stale:?}");
        for (_, p) in &c.restore {
            assert!(
                !p.exists(),
                "{what}: the moved input {} is still there",
                p.display()
            );
        }
        (state, said_done, stdout(&o))
    };
    // Every step of the protocol (APPEND §4.6): before the commit the old array, after it the
    // new one, and the rerun says "already done" exactly when the commit happened.
    let steps = [
        "placing",
        "linked",
        "checkpointed",
        "staged",
        "journaled",
        "committed",
        "moving",
    ];
    for c in &cases {
        let mut hit = Vec::new();
        for step in steps {
            reset(c);
            let o = Command::new(env!("CARGO_BIN_EXE_chunkwise"))
                .args(&c.args)
                .env("CHUNKWISE_CRASH_AT", step)
                .output()
                .unwrap();
            if o.status.success() {
                continue; // not a step of this path
            }
            hit.push(step);
            let what = format!("{}, killed at step {step}", c.name);
            let (state, said_done, said) = after_kill(c, &what);
            if step == "checkpointed" {
                // APPEND §5.1: the rerun keeps the layers the killed run had finished.
                assert!(said.contains("resumed: kept 1 layer "), "{what}: {said}");
            }
            let committed = step == "committed" || step == "moving";
            assert_eq!(
                state,
                usize::from(committed),
                "{what}: old (0) or new (1) array"
            );
            assert_eq!(said_done, committed, "{what}: the rerun's \"already done\"");
        }
        assert_eq!(hit, c.steps, "{}: the steps it passed", c.name);
    }
    // A killed append's record is for that command only: another append onto the same array
    // resumes nothing and overwrites what the killed one had placed past the old extent.
    let c_arr = arr(DType::U16, &[21, 24, 24], 3);
    let c_npy = d.join("c.npy");
    write_npy(&c_npy, c_arr.dtype, &c_arr.shape, &c_arr.bytes).unwrap();
    reset(&cases[0]);
    let o = Command::new(env!("CARGO_BIN_EXE_chunkwise"))
        .args(&cases[0].args)
        .env("CHUNKWISE_CRASH_AT", "checkpointed")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let o = cw(&[
        "append",
        t.to_str().unwrap(),
        c_npy.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rep: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(rep["layers_resumed"], 0);
    assert_arr(
        &t,
        &concat_oracle(&[&a, &c_arr], 0),
        "another append after a killed one",
    );
    assert!(leftovers(&[d, &t]).is_empty());
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    // Random instants. Per case: kills that left the old array, the new one, and reruns that
    // said "already done".
    let mut seen = vec![[0usize; 3]; cases.len()];
    for round in 0..rounds {
        let k = round % cases.len();
        let c = &cases[k];
        reset(c);
        let delay = full[k].mul_f64((next() % 1500) as f64 / 1000.0);
        let mut child = Command::new(env!("CARGO_BIN_EXE_chunkwise"))
            .args(&c.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        child.kill().ok();
        child.wait().unwrap();
        let what = format!("{} (round {round}, killed after {delay:?})", c.name);
        let (state, said_done, _) = after_kill(c, &what);
        seen[k][state] += 1;
        seen[k][2] += usize::from(said_done);
        if round % 10 == 0 {
            assert_arr(&b_zarr, &b, &format!("{what}: the other input"));
            assert_arr(&a_zarr, &a, &format!("{what}: the template"));
        }
    }
    eprintln!("kill outcomes per case [old, new, rerun said already done]: {seen:?}");
    // (Both sides of every step are covered above; here, kills must land mid-run.)
    for (c, s) in cases.iter().zip(&seen) {
        assert!(
            rounds < 30 || s[0] > 0,
            "{}: no kill landed before the commit: {s:?}",
            c.name
        );
    }
}

/// APPEND §7 and §8's lifted limit: a rectilinear array, a view (a store and a memory-mapped
/// .npy joined, then sliced), a JSON view spec and a bare .npy are executor inputs; the
/// blockwise Gaussian equals the same filter on the whole joined array in memory.
#[test]
fn views_and_rectilinear_arrays_feed_the_executor() {
    use chunkwise::kernel::Gaussian;
    use chunkwise::{Boundary, ExecOptions, Input};
    let dir = tmp();
    let d = dir.path();
    let a = arr(DType::U16, &[20, 14, 11], 71);
    let b = arr(DType::U16, &[13, 14, 11], 72);
    let (_, az) = make(d, "a", &a, &[8, 6, 5]);
    let (b_npy, bz) = make(d, "b", &b, &[8, 6, 5]);
    let ab = concat_oracle(&[&a, &b], 0);
    let gauss = Gaussian {
        sigma: vec![1.5, 1.0, 2.0],
        truncate: 4.0,
        mode: Boundary::Reflect,
        dtype: None,
    };
    let want = |x: &Arr| {
        chunkwise::apply_in_memory(&gauss, x.dtype, &x.shape, &x.bytes)
            .unwrap()
            .1
    };
    let jopts = ExecOptions::default().durability(chunkwise::Durability::NoSync);
    let check = |input: Input, oracle: &Arr, name: &str| {
        let out = d.join(format!("{name}.zarr"));
        let r = chunkwise::run(&[input], &out, &gauss, &jopts)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(r.shape, oracle.shape, "{name}");
        let got = store_bytes(&Store::open(&out).unwrap());
        assert!(
            got == want(oracle),
            "{name}: differs from the whole-array filter"
        );
    };
    // A rectilinear array (20 + 13 rows in 8-row chunks: edges 8, 8, 4, 8, 8).
    let rect = d.join("rect.zarr");
    let r = chunkwise::concat(
        &[az.clone(), bz.clone()],
        &rect,
        &opts(0, GridLayout::Rectilinear),
    )
    .unwrap();
    assert_eq!(r.grid, "rectilinear");
    check(crate::common::input(&rect), &ab, "rectilinear");
    // Reductions, where and graph read it too (blocks of its longest edges).
    let values: Vec<u16> = ab
        .bytes
        .chunks(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect();
    let rs = crate::common::input(&rect);
    let st =
        chunkwise::reduce(&rs, &chunkwise::Stats, &chunkwise::ReduceOptions::default()).unwrap();
    assert_eq!(
        st.int_sum(),
        Some(values.iter().map(|&v| i128::from(v)).sum())
    );
    assert_eq!(st.min(), values.iter().min().map(|&v| f64::from(v)));
    assert_eq!(st.max(), values.iter().max().map(|&v| f64::from(v)));
    let coords = d.join("coords.npy");
    let opts_where = chunkwise::IndexOptions::default()
        .select(chunkwise::Select::Above(chunkwise::Number::from(150.0)));
    chunkwise::where_coords(&rs, Some(&coords), &opts_where).unwrap();
    let mut want_coords = Vec::new();
    for (k, &v) in values.iter().enumerate() {
        if v > 150 {
            let k = k as i64;
            for c in [k / (14 * 11), (k / 11) % 14, k % 11] {
                want_coords.extend_from_slice(&c.to_le_bytes());
            }
        }
    }
    let got = crate::common::read_npy(&coords);
    assert_eq!(got.bytes, want_coords, "where on a rectilinear array");
    let regular = d.join("regular.zarr");
    chunkwise::concat(
        &[az.clone(), bz.clone()],
        &regular,
        &opts(0, GridLayout::Regular),
    )
    .unwrap();
    let (e1, e2) = (d.join("e_rect.npy"), d.join("e_reg.npy"));
    chunkwise::graph_edges(&rs, Some(&e1), Some(26), false, &opts_where).unwrap();
    chunkwise::graph_edges(
        &crate::common::input(&regular),
        Some(&e2),
        Some(26),
        false,
        &opts_where,
    )
    .unwrap();
    let (g1, g2) = (std::fs::read(&e1).unwrap(), std::fs::read(&e2).unwrap());
    assert!(
        g1.len() > 200 && g1 == g2,
        "graph on rectilinear vs regular"
    );
    // A view: the store joined with the memory-mapped .npy, then a slice of it.
    let view = View::concat(
        vec![View::open(&az).unwrap(), View::open(&b_npy).unwrap()],
        0,
    )
    .unwrap();
    check(Input::from_view(view.clone()).unwrap(), &ab, "view");
    let crop = view.slice(&Region::new(vec![5..29, 2..14, 0..11])).unwrap();
    let crop_oracle = Arr {
        dtype: DType::U16,
        shape: vec![24, 12, 11],
        bytes: crop
            .read_region::<u16>(&Region::full(crop.shape()))
            .unwrap()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
    };
    // (The slice read itself is checked against the oracle's bytes.)
    let mut from_oracle = Vec::new();
    for z in 5..29usize {
        for y in 2..14usize {
            let row = ((z * 14 + y) * 11) * 2;
            from_oracle.extend_from_slice(&ab.bytes[row..row + 22]);
        }
    }
    assert_eq!(crop_oracle.bytes, from_oracle);
    check(Input::from_view(crop).unwrap(), &crop_oracle, "slice");
    // A JSON view spec and a bare .npy, through the binary.
    let spec = d.join("view.json");
    std::fs::write(&spec, json!({"concat": ["a.zarr", "b.npy"]}).to_string()).unwrap();
    check(crate::common::input(&spec), &ab, "spec");
    check(crate::common::input(&b_npy), &b, "npy");
    let out = d.join("cli.zarr");
    let o = cw(&[
        "gaussian",
        spec.to_str().unwrap(),
        out.to_str().unwrap(),
        "--sigma",
        "1.5,1,2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        store_bytes(&Store::open(&out).unwrap()) == want(&ab),
        "CLI on a view spec"
    );
}
