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
