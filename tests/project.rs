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
