//! The executor and kernels against scipy.ndimage (fixtures/compute, made by
//! fixtures/make_compute_fixtures.py), over chunk sizes 1, 3, 7 and 128, every boundary mode and
//! halos deeper than a chunk; and blockwise results against the same kernel on the whole array
//! in one block (spec/COMPUTE.md).

use std::path::{Path, PathBuf};

use chunkwise::kernel::lut::Table;
use chunkwise::kernel::{Correlate1d, Gaussian, Kernel, Lut, NeighbourhoodLut, Threshold};
use chunkwise::{Boundary, ConvertOptions, DType, ExecOptions, ExecStatus, Store};
use serde_json::Value;

use crate::common::{Expected, fixture, read_npy, store_bytes, tmp};

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(fixture("compute/cases.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["cases"].as_array().unwrap().clone()
}

fn case(name: &str) -> Value {
    cases()
        .into_iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no case {name}"))
}

/// Converts fixture input `name` into a store of `chunks` under `dir`.
pub fn input_store(dir: &Path, name: &str, chunks: &[u64]) -> PathBuf {
    let out = dir.join(format!(
        "{name}-{}.zarr",
        chunks
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join("x")
    ));
    if !out.exists() {
        chunkwise::convert(
            &crate::common::input(fixture(&format!("compute/{name}.npy"))),
            &out,
            &ConvertOptions::default().chunks(Some(chunks.to_vec())),
        )
        .unwrap();
    }
    out
}

fn mode(c: &Value) -> Boundary {
    Boundary::from_name(c["mode"].as_str().unwrap(), c["cval"].as_f64().unwrap()).unwrap()
}

fn kernel_of(c: &Value, dir: &Path) -> Box<dyn Kernel> {
    let floats = |v: &Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect::<Vec<_>>()
    };
    match c["kernel"].as_str().unwrap() {
        "gaussian" => Box::new(Gaussian {
            sigma: floats(&c["sigma"]),
            truncate: c["truncate"].as_f64().unwrap(),
            mode: mode(c),
            dtype: None,
        }),
        "correlate1d" => Box::new(Correlate1d {
            axis: c["axis"].as_u64().unwrap() as usize,
            weights: floats(&c["weights"]),
            origin: c["origin"].as_i64().unwrap(),
            mode: mode(c),
            dtype: None,
        }),
        "lut" => Box::new(Lut::new(
            Table::open(&fixture(&format!(
                "compute/{}.npy",
                c["table"].as_str().unwrap()
            )))
            .unwrap(),
        )),
        "threshold" => Box::new(Threshold {
            above: c["above"].as_f64().unwrap().into(),
        }),
        "neighbourhood-lut" => {
            Box::new(NeighbourhoodLut::new(Table::open(&hash_table(dir)).unwrap()).unwrap())
        }
        other => panic!("unknown kernel {other}"),
    }
}

/// The 2^27-entry table the fixture script used: a multiplicative hash of the index.
pub fn hash_table(dir: &Path) -> PathBuf {
    let p = dir.join("hash_table.npy");
    if !p.exists() {
        let n: u64 = 1 << 27;
        let data: Vec<u8> = (0..n)
            .map(|i| ((i.wrapping_mul(2_654_435_761) % (1 << 32)) >> 24) as u8)
            .collect();
        chunkwise::support::write_npy(&p, DType::U8, &[n], &data).unwrap();
    }
    p
}

fn values_f64(e: &Expected) -> Vec<f64> {
    let n = e.dtype.size();
    e.bytes
        .chunks(n)
        .map(|b| match e.dtype {
            DType::F32 => f64::from(f32::from_le_bytes(b.try_into().unwrap())),
            DType::F64 => f64::from_le_bytes(b.try_into().unwrap()),
            DType::U8 | DType::Bool => f64::from(b[0]),
            DType::U16 => f64::from(u16::from_le_bytes(b.try_into().unwrap())),
            DType::I16 => f64::from(i16::from_le_bytes(b.try_into().unwrap())),
            other => panic!("unexpected {other}"),
        })
        .collect()
}

/// Runs case `name` with input chunks `chunks`; returns the output store.
fn run_case(
    dir: &Path,
    name: &str,
    chunks: &[u64],
    opts: &ExecOptions,
) -> (Store, chunkwise::ExecReport) {
    let c = case(name);
    let input = input_store(dir, c["input"].as_str().unwrap(), chunks);
    let out = dir.join(format!(
        "{name}-{}.out.zarr",
        chunks
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join("x")
    ));
    let kernel = kernel_of(&c, dir);
    let report =
        chunkwise::run(&[crate::common::input(&input)], &out, kernel.as_ref(), opts).unwrap();
    assert_eq!(report.status, ExecStatus::Published, "{name}");
    (Store::open(&out).unwrap(), report)
}

/// Checks a store against case `name`'s reference: floats within 1e-4 x max|input|, integers
/// exactly.
fn check(store: &Store, name: &str) {
    let c = case(name);
    let want = read_npy(&fixture(&format!("compute/{name}.npy")));
    let input = read_npy(&fixture(&format!(
        "compute/{}.npy",
        c["input"].as_str().unwrap()
    )));
    assert_eq!(store.shape(), &want.shape[..], "{name}");
    let got_bytes = store_bytes(store);
    let got = values_f64(&Expected {
        dtype: store.dtype(),
        shape: want.shape.clone(),
        bytes: got_bytes,
    });
    let exp = values_f64(&want);
    if want.dtype.is_float() {
        let scale = values_f64(&input).iter().fold(0f64, |m, v| m.max(v.abs()));
        let tol = 1e-4 * scale;
        let (worst, at) = got
            .iter()
            .zip(&exp)
            .enumerate()
            .map(|(i, (g, e))| ((g - e).abs(), i))
            .fold((0.0, 0), |a, b| if b.0 > a.0 { b } else { a });
        assert!(
            worst <= tol,
            "{name}: |diff| {worst} at element {at} exceeds {tol}"
        );
    } else {
        assert_eq!(store.dtype(), want.dtype, "{name}");
        let bad = got.iter().zip(&exp).position(|(g, e)| g != e);
        assert_eq!(bad, None, "{name}: first difference at element {bad:?}");
    }
}

#[test]
fn gaussian_matches_scipy_at_every_chunk_size() {
    let dir = tmp();
    for chunks in [[3u64, 3, 3], [7, 7, 7], [128, 128, 128], [5, 29, 8]] {
        for name in ["gauss_u16_s2_reflect", "gauss_u16_axes_reflect"] {
            let (s, r) = run_case(dir.path(), name, &chunks, &ExecOptions::default());
            check(&s, name);
            // Every input chunk decoded once.
            assert_eq!(r.decodes, r.input_chunks, "{name} {chunks:?}");
        }
    }
}

#[test]
fn every_boundary_mode_matches_scipy() {
    let dir = tmp();
    for mode in ["reflect", "mirror", "nearest", "wrap", "constant"] {
        for chunks in [[7u64, 7, 7], [4, 23, 9]] {
            let name = format!("gauss_f32_{mode}");
            let (s, _) = run_case(dir.path(), &name, &chunks, &ExecOptions::default());
            check(&s, &name);
        }
        // Radius 12 on a 6x5x7 array: halos deeper than the array and than the chunk.
        for chunks in [[1u64, 1, 1], [2, 3, 2], [128, 128, 128]] {
            let name = format!("gauss_small_{mode}");
            let (s, _) = run_case(dir.path(), &name, &chunks, &ExecOptions::default());
            check(&s, &name);
        }
    }
    let (s, _) = run_case(
        dir.path(),
        "gauss_i16_nearest",
        &[4, 5, 3],
        &ExecOptions::default(),
    );
    check(&s, "gauss_i16_nearest");
}

#[test]
fn correlate1d_matches_scipy() {
    let dir = tmp();
    for c in cases().iter().filter(|c| c["kernel"] == "correlate1d") {
        let name = c["name"].as_str().unwrap();
        for chunks in [[3u64, 3, 3], [7, 5, 128]] {
            let (s, _) = run_case(dir.path(), name, &chunks, &ExecOptions::default());
            check(&s, name);
        }
    }
}

#[test]
fn lut_threshold_and_neighbourhood_lut_are_exact() {
    let dir = tmp();
    for chunks in [[7u64, 7, 7], [128, 128, 128], [3, 29, 10]] {
        for name in [
            "lut_u16_ramp",
            "threshold_u16_700",
            "threshold_f32_neg",
            "nlut_mask_hash",
        ] {
            let (s, _) = run_case(dir.path(), name, &chunks, &ExecOptions::default());
            check(&s, name);
        }
    }
}

#[test]
fn blockwise_equals_the_kernel_on_the_whole_array() {
    // chunkwise::apply_in_memory runs the kernel once on the whole in-memory array: the
    // blockwise result must be bit-identical, whatever the chunking.
    let dir = tmp();
    for name in [
        "gauss_u16_s2_reflect",
        "gauss_f32_constant",
        "gauss_small_wrap",
        "corr_f32_a2_o1_wrap",
        "lut_u16_ramp",
        "nlut_mask_hash",
    ] {
        let c = case(name);
        let input = read_npy(&fixture(&format!(
            "compute/{}.npy",
            c["input"].as_str().unwrap()
        )));
        let kernel = kernel_of(&c, dir.path());
        let (dtype, whole) =
            chunkwise::apply_in_memory(kernel.as_ref(), input.dtype, &input.shape, &input.bytes)
                .unwrap();
        for chunks in [[3u64, 7, 5], [128, 2, 128]] {
            let (many, _) = run_case(dir.path(), name, &chunks, &ExecOptions::default());
            assert_eq!(many.dtype(), dtype);
            assert_eq!(store_bytes(&many), whole, "{name} {chunks:?}");
        }
    }
}

#[test]
fn chunk_size_one() {
    let dir = tmp();
    let (s, r) = run_case(
        dir.path(),
        "corr_small_a1_mirror",
        &[1, 1, 1],
        &ExecOptions::default(),
    );
    check(&s, "corr_small_a1_mirror");
    assert_eq!(r.chunks_total, 6 * 5 * 7);
}

#[test]
fn neighbourhood_lut_binarises_with_above() {
    // W7 in one pass: in_u16 > 700, then the neighbourhood table: same as on the mask.
    let dir = tmp();
    let input = input_store(dir.path(), "in_u16", &[9, 8, 16]);
    let out = dir.path().join("w7.zarr");
    let k = NeighbourhoodLut::new(Table::open(&hash_table(dir.path())).unwrap())
        .unwrap()
        .above(Some(700.0.into()));
    chunkwise::run(
        &[crate::common::input(&input)],
        &out,
        &k,
        &ExecOptions::default(),
    )
    .unwrap();
    check(&Store::open(&out).unwrap(), "nlut_mask_hash");
}
