//! `chunkwise reduce --axis A --op OP` (spec/REDUCE.md §7): numpy's reductions along axes.

use std::path::Path;

use crate::common::{chunkwise, run_python, stderr, tmp};

/// Every op, axis, pair of axes and dtype against numpy on the whole array
/// (tests/python/check_reduce_axes.py holds the oracle and the tolerances).
#[test]
fn reduce_along_axes_matches_numpy() {
    let dir = tmp();
    let said = run_python(
        "check_reduce_axes.py",
        &[Path::new(env!("CARGO_BIN_EXE_chunkwise")), dir.path()],
    );
    assert!(said.contains("results equal numpy's"), "{said}");
}

/// Bad input: an axis out of range, an unknown op (the list is given), argmin over two axes,
/// an op twice, an existing output: a clear error and nothing written.
#[test]
fn reduce_refuses_bad_axes_and_ops() {
    let dir = tmp();
    let d = dir.path();
    let npy = d.join("v.npy");
    chunkwise::support::write_npy(&npy, chunkwise::DType::U16, &[4, 5, 6], &[1u8; 240]).unwrap();
    let v = npy.to_str().unwrap();
    let out = d.join("o.npy");
    let o = out.to_str().unwrap();
    for (args, want) in [
        (vec!["--axis", "3", "--op", "max"], "3 is out of range"),
        (
            vec!["--axis", "0", "--op", "maximum"],
            "the ops are sum, mean",
        ),
        (
            vec!["--axis", "0,1", "--op", "argmax"],
            "argmin and argmax reduce one axis",
        ),
        (vec!["--axis", "0,0", "--op", "sum"], "given twice"),
        (vec!["--axis", "0", "--op", "sum,sum"], "given twice"),
    ] {
        let mut a = vec!["reduce", v];
        a.extend(&args);
        a.extend(["-o", o]);
        let r = chunkwise(&a);
        assert_eq!(r.status.code(), Some(2), "{args:?}");
        assert!(stderr(&r).contains(want), "{args:?}: {}", stderr(&r));
        assert!(!out.exists(), "{args:?} wrote {o}");
    }
    let r = chunkwise(&["reduce", v, "--axis", "0", "--op", "max", "-o", o]);
    assert!(r.status.success(), "{}", stderr(&r));
    let r = chunkwise(&["reduce", v, "--axis", "0", "--op", "max", "-o", o]);
    assert!(
        !r.status.success() && stderr(&r).contains("--overwrite"),
        "{}",
        stderr(&r)
    );
}

/// SCALE §1-§2: `reduce --partition I/N` over the result's tiles; the last part writes the
/// same files one process writes, byte for byte, with the parts run one after another in any
/// order or started together.
#[test]
fn reduce_in_parts_writes_what_one_process_writes() {
    let dir = tmp();
    let d = dir.path();
    let (z, y, x) = (9u64, 21u64, 17u64);
    let mut v: u32 = 11;
    let mut bytes = Vec::new();
    for _ in 0..z * y * x {
        v = v.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let f = if v.is_multiple_of(17) {
            f32::NAN
        } else {
            (v >> 8) as f32 / 1e4
        };
        bytes.extend_from_slice(&f.to_le_bytes());
    }
    let npy = d.join("f.npy");
    chunkwise::support::write_npy(&npy, chunkwise::DType::F32, &[z, y, x], &bytes).unwrap();
    let store = d.join("f.zarr");
    let s = store.to_str().unwrap();
    let r = chunkwise(&[
        "convert",
        npy.to_str().unwrap(),
        "-o",
        s,
        "--chunks",
        "4,5,6",
        "-q",
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    let ops = "sum,mean,std,max,argmax,nanmin,count_nonzero,all";
    let one = d.join("one");
    let r = chunkwise(&[
        "reduce",
        s,
        "--axis",
        "0",
        "--op",
        ops,
        "-o",
        one.to_str().unwrap(),
        "-q",
    ]);
    assert!(r.status.success(), "{}", stderr(&r));
    let same = |out: &Path, what: &str| {
        for op in ops.split(',') {
            let a = std::fs::read(one.join(format!("{op}.npy"))).unwrap();
            let b = std::fs::read(out.join(format!("{op}.npy")))
                .unwrap_or_else(|e| panic!("{what}: {op}.npy: {e}"));
            assert_eq!(a, b, "{what}: {op}");
        }
    };
    for n in [2u32, 3, 5] {
        let out = d.join(format!("seq{n}"));
        let o = out.to_str().unwrap();
        for i in (0..n).rev() {
            let part = format!("{i}/{n}");
            let r = chunkwise(&[
                "reduce",
                s,
                "--axis",
                "0",
                "--op",
                ops,
                "-o",
                o,
                "--partition",
                &part,
            ]);
            assert!(r.status.success(), "{}", stderr(&r));
            assert_eq!(
                out.exists(),
                i == 0,
                "{n} parts: written before the last ({part})"
            );
        }
        same(&out, &format!("{n} parts one by one"));
        let out = d.join(format!("at-once{n}"));
        let o = out.to_str().unwrap().to_string();
        let children: Vec<_> = (0..n)
            .map(|i| {
                std::process::Command::new(env!("CARGO_BIN_EXE_chunkwise"))
                    .args(["reduce", s, "--axis", "0", "--op", ops, "-o", &o, "-q"])
                    .args(["--partition", &format!("{i}/{n}")])
                    .spawn()
                    .unwrap()
            })
            .collect();
        for mut c in children {
            assert!(c.wait().unwrap().success());
        }
        same(&out, &format!("{n} parts at once"));
    }
}

/// COMPUTE §10: cumsum, cumprod, cummax and cummin along every axis, every dtype, other output
/// chunks, in parts and with --dtype, equal to numpy bit for bit
/// (tests/python/check_cumulative.py holds the oracle); an axis out of range is refused.
#[test]
fn cumulative_ops_match_numpy() {
    let dir = tmp();
    let said = run_python(
        "check_cumulative.py",
        &[Path::new(env!("CARGO_BIN_EXE_chunkwise")), dir.path()],
    );
    assert!(said.contains("results equal numpy's"), "{said}");
    let npy = dir.path().join("v.npy");
    chunkwise::support::write_npy(&npy, chunkwise::DType::U16, &[4, 5, 6], &[1u8; 240]).unwrap();
    let out = dir.path().join("o.zarr");
    let r = chunkwise(&[
        "cumsum",
        npy.to_str().unwrap(),
        out.to_str().unwrap(),
        "--axis",
        "3",
    ]);
    assert_eq!(r.status.code(), Some(2));
    assert!(stderr(&r).contains("3 is out of range"), "{}", stderr(&r));
    assert!(!out.exists());
}

/// REDUCE §7: a result too big to hold goes into a store tile by tile. Reducing the last
/// axis of a (2048, 2048, 4) uint16 volume with sum and mean is 64 MiB of result (uint64 and
/// float64); written as a Zarr group, the process stays far below that (peak resident memory
/// above a tiny reduce's), and every value is the sum along the axis.
#[test]
fn a_result_too_big_to_hold_is_written_tile_by_tile() {
    let dir = tmp();
    let d = dir.path();
    let (ny, nx, nz) = (2048usize, 2048usize, 4usize);
    let value = |i: usize| ((i as u64).wrapping_mul(2_654_435_761) >> 11) as u16;
    let data: Vec<u16> = (0..ny * nx * nz).map(value).collect();
    let a = ndarray::ArrayD::from_shape_vec(vec![ny, nx, nz], data.clone()).unwrap();
    let src = d.join("v.zarr");
    chunkwise::from_array(
        a.view(),
        &src,
        &chunkwise::ConvertOptions::default().chunks(Some(vec![256, 256, 4])),
    )
    .unwrap();
    let tiny = d.join("t.zarr");
    let t = ndarray::ArrayD::<u16>::zeros(vec![4, 4, 4]);
    chunkwise::from_array(t.view(), &tiny, &chunkwise::ConvertOptions::default()).unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let run = |input: &Path, out: &Path| {
        crate::common::peak_rss(
            &[
                "reduce",
                &s(input),
                "--axis",
                "2",
                "--op",
                "sum,mean",
                "-o",
                &s(out),
                "--threads",
                "2",
                "-q",
            ],
            d,
        )
        .0
    };
    let base = run(&tiny, &d.join("t-out.zarr"));
    let out = d.join("r.zarr");
    let peak = run(&src, &out);
    let result = (ny * nx * 16) as u64;
    assert!(
        peak.saturating_sub(base) < result / 3,
        "peak {peak} bytes, {base} for a tiny reduce: the 64 MiB result was held"
    );
    // Every axis reduced leaves no axis for a store: refused, nothing written.
    let all = d.join("all.zarr");
    let r = chunkwise(&[
        "reduce",
        &s(&src),
        "--axis",
        "0,1,2",
        "--op",
        "sum,max",
        "-o",
        &s(&all),
    ]);
    assert!(stderr(&r).contains("write it to an .npy"), "{}", stderr(&r));
    assert!(!all.exists());
    let sum = chunkwise::Store::open(out.join("sum")).unwrap();
    let mean = chunkwise::Store::open(out.join("mean")).unwrap();
    let all = chunkwise::Region::full(&[ny as u64, nx as u64]);
    let sums = sum.read_region::<u64>(&all).unwrap();
    let means = mean.read_region::<f64>(&all).unwrap();
    for (k, (s, m)) in sums.iter().zip(means.iter()).enumerate() {
        let want: u64 = (0..nz).map(|z| u64::from(data[k * nz + z])).sum();
        assert_eq!(*s, want, "sum at {k}");
        assert_eq!(*m, want as f64 / nz as f64, "mean at {k}");
    }
}
