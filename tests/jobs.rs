//! Jobs: resuming after a kill, partitions, settings fingerprints, memory budgets, several
//! inputs, and bad input (spec/COMPUTE.md §5-§7).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use chunkwise::kernel::lut::Table;
use chunkwise::kernel::{Correlate1d, Gaussian, Lut, NeighbourhoodLut, Threshold};
use chunkwise::{Boundary, DType, Error, ExecOptions, ExecStatus, MapSpec, Region, Store};

use crate::common::{fixture, stderr, stdout, store_bytes, tmp};
use crate::compute::{hash_table, input_store};

fn gauss() -> Gaussian {
    Gaussian {
        sigma: vec![1.5],
        truncate: 4.0,
        mode: Boundary::Reflect,
        dtype: None,
    }
}

#[test]
fn partitions_share_one_job() {
    let dir = tmp();
    let input = input_store(dir.path(), "in_u16", &[7, 7, 7]);
    let whole = dir.path().join("whole.zarr");
    let r = chunkwise::run(
        &[crate::common::input(&input)],
        &whole,
        &gauss(),
        &ExecOptions::default(),
    )
    .unwrap();
    assert_eq!(r.status, ExecStatus::Published);
    let out = dir.path().join("parts.zarr");
    let mut computed = 0;
    for part in [2u32, 0, 1] {
        let r = chunkwise::run(
            &[crate::common::input(&input)],
            &out,
            &gauss(),
            &ExecOptions::default().partition(Some((part, 3))),
        )
        .unwrap();
        computed += r.chunks_computed;
        if part == 1 {
            assert_eq!(r.status, ExecStatus::Published);
        } else {
            assert!(
                matches!(r.status, ExecStatus::Waiting { .. }),
                "{:?}",
                r.status
            );
            assert!(!out.exists(), "nothing published before every part is done");
        }
    }
    assert_eq!(computed, r.chunks_total);
    assert_eq!(
        store_bytes(&Store::open(&out).unwrap()),
        store_bytes(&Store::open(&whole).unwrap())
    );
    // The fingerprint is in the attributes; a rerun has nothing to do.
    let meta = Store::open(&out).unwrap().metadata_json();
    assert!(meta["attributes"]["chunkwise"]["fingerprint"].is_string());
    let again = chunkwise::run(
        &[crate::common::input(&input)],
        &out,
        &gauss(),
        &ExecOptions::default(),
    )
    .unwrap();
    assert_eq!(again.status, ExecStatus::AlreadyDone);
    assert_eq!(again.chunks_computed, 0);
}

#[test]
fn other_settings_refuse_without_overwrite() {
    let dir = tmp();
    let input = input_store(dir.path(), "in_u16", &[16, 16, 16]);
    let out = dir.path().join("g.zarr");
    chunkwise::run(
        &[crate::common::input(&input)],
        &out,
        &gauss(),
        &ExecOptions::default(),
    )
    .unwrap();
    let mut other = gauss();
    other.sigma = vec![2.5];
    let err = chunkwise::run(
        &[crate::common::input(&input)],
        &out,
        &other,
        &ExecOptions::default(),
    )
    .unwrap_err();
    // (The library says it in words; the binary names --overwrite, tests/cli.rs.)
    assert!(err.to_string().contains("allow overwriting"), "{err}");
    let r = chunkwise::run(
        &[crate::common::input(&input)],
        &out,
        &other,
        &ExecOptions::default().overwrite(true),
    )
    .unwrap();
    assert_eq!(r.status, ExecStatus::Published);
    assert_eq!(r.chunks_computed, r.chunks_total);
    let r = chunkwise::run(
        &[crate::common::input(&input)],
        &out,
        &other,
        &ExecOptions::default().restart(true),
    )
    .unwrap();
    assert_eq!(
        r.chunks_computed, r.chunks_total,
        "--restart recomputes everything"
    );
}

#[test]
fn memory_budget_tiles_the_traversal() {
    let dir = tmp();
    let input = input_store(dir.path(), "in_u16", &[5, 5, 5]);
    let a = dir.path().join("a.zarr");
    let big = chunkwise::run(
        &[crate::common::input(&input)],
        &a,
        &gauss(),
        &ExecOptions::default(),
    )
    .unwrap();
    assert_eq!(big.decodes, big.input_chunks);
    // A budget that holds only small tiles (the least the executor accepts, which the error
    // for a smaller one names): same result, some chunks decoded twice.
    let least = |memory: u64| -> u64 {
        let err = chunkwise::run(
            &[crate::common::input(&input)],
            &dir.path().join("least.zarr"),
            &gauss(),
            &ExecOptions::default().memory(Some(memory)).threads(Some(1)),
        )
        .unwrap_err()
        .to_string();
        err.split("at least ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no least budget in {err:?}"))
    };
    let b = dir.path().join("b.zarr");
    let small = chunkwise::run(
        &[crate::common::input(&input)],
        &b,
        &gauss(),
        &ExecOptions::default()
            .memory(Some(least(12_000)))
            .threads(Some(1)),
    )
    .unwrap();
    assert!(
        small.tile[1..].iter().zip(&[6, 11]).any(|(t, g)| t < g),
        "{:?}",
        small.tile
    );
    assert!(small.decodes > small.input_chunks);
    assert!(small.window_bytes < big.window_bytes);
    assert_eq!(
        store_bytes(&Store::open(&a).unwrap()),
        store_bytes(&Store::open(&b).unwrap())
    );
    // An impossible budget is an error naming the option, not a crash.
    let err = chunkwise::run(
        &[crate::common::input(&input)],
        &dir.path().join("c.zarr"),
        &gauss(),
        &ExecOptions::default().memory(Some(1000)),
    )
    .unwrap_err();
    assert!(err.to_string().contains("invalid memory"), "{err}");
    assert!(!dir.path().join("c.zarr").exists());
}

#[test]
fn several_inputs_in_one_closure() {
    // out = 3x3x3 box sum of image * mask, zero outside: against a brute-force oracle.
    let dir = tmp();
    let image = input_store(dir.path(), "in_u16", &[8, 9, 10]);
    let mask = input_store(dir.path(), "in_mask", &[8, 9, 10]);
    let out = dir.path().join("prod.zarr");
    let r = chunkwise::map_overlap(
        &crate::common::inputs(&[image.clone(), mask.clone()]),
        &out,
        &MapSpec::new("box sum of image times mask v1", DType::F64)
            .halo(&[1])
            .boundary(Boundary::Constant(0.0)),
        |blocks, out| {
            let im = blocks[0].view::<u16>()?;
            let m = blocks[1].view::<u8>()?;
            let v = blocks[0].valid().to_vec();
            let mut dst = out.view_mut::<f64>()?;
            for ((z, y, x), o) in dst
                .view_mut()
                .into_dimensionality::<ndarray::Ix3>()
                .unwrap()
                .indexed_iter_mut()
            {
                let (bz, by, bx) = (z + v[0].start, y + v[1].start, x + v[2].start);
                let mut s = 0.0;
                for dz in 0..3 {
                    for dy in 0..3 {
                        for dx in 0..3 {
                            let p = [bz + dz - 1, by + dy - 1, bx + dx - 1];
                            s += f64::from(im[&p[..]]) * f64::from(m[&p[..]]);
                        }
                    }
                }
                *o = s;
            }
            Ok(())
        },
        &ExecOptions::default(),
    )
    .unwrap();
    assert_eq!(r.status, ExecStatus::Published);
    let im = Store::open(&image).unwrap().read_all::<u16>().unwrap();
    let m = Store::open(&mask).unwrap().read_all::<u8>().unwrap();
    let got = Store::open(&out).unwrap().read_all::<f64>().unwrap();
    let sh = im.shape().to_vec();
    for (idx, &g) in got.indexed_iter() {
        let mut s = 0.0;
        for dz in -1i64..=1 {
            for dy in -1i64..=1 {
                for dx in -1i64..=1 {
                    let p = [idx[0] as i64 + dz, idx[1] as i64 + dy, idx[2] as i64 + dx];
                    if p.iter().zip(&sh).all(|(&q, &n)| q >= 0 && (q as usize) < n) {
                        let p = [p[0] as usize, p[1] as usize, p[2] as usize];
                        s += f64::from(im[&p[..]]) * f64::from(m[&p[..]]);
                    }
                }
            }
        }
        assert_eq!(g, s, "at {idx:?}");
    }
}

fn assert_nothing_at(out: &Path) {
    assert!(
        !out.exists(),
        "{} must not exist after an error",
        out.display()
    );
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = tmp();
    let u16in = input_store(dir.path(), "in_u16", &[16, 16, 16]);
    let f32in = input_store(dir.path(), "in_f32", &[16, 16, 16]);
    let out = dir.path().join("o.zarr");
    let one_input = [crate::common::input(&u16in)];
    let one = &one_input[..];

    // A LUT too short for the values present: the first offending value and its chunk.
    let short = dir.path().join("short.npy");
    chunkwise::support::write_npy(&short, DType::U8, &[1000], &vec![1u8; 1000]).unwrap();
    let err = chunkwise::run(
        one,
        &out,
        &Lut::new(Table::open(&short).unwrap()),
        &ExecOptions::default(),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, Error::Kernel(chunkwise::KernelError::Compute { .. })),
        "{msg}"
    );
    assert!(
        msg.contains("outside the 1000-entry table") && msg.contains("chunk c/"),
        "{msg}"
    );
    assert_nothing_at(&out);

    // A LUT on float input.
    let ramp = Table::open(&fixture("compute/table_ramp_u8.npy")).unwrap();
    let err = chunkwise::run(
        &[crate::common::input(&f32in)],
        &out,
        &Lut::new(ramp),
        &ExecOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("integer input"), "{err}");

    // A neighbourhood table that is not 2^27 long.
    let err = NeighbourhoodLut::new(Table::open(&short).unwrap()).unwrap_err();
    assert!(err.to_string().contains("2^27"), "{err}");

    // A non-binary input to neighbourhood-lut: the value, where, and the chunk.
    let nlut = NeighbourhoodLut::new(Table::open(&hash_table(dir.path())).unwrap()).unwrap();
    // (The failed LUT job left nothing to resume, issue 18: another job needs no --overwrite.)
    let err = chunkwise::run(one, &out, &nlut, &ExecOptions::default()).unwrap_err();
    let msg = err.to_string();
    // (Which chunk fails first depends on the threads; every chunk holds values above 1.)
    assert!(msg.contains("binary") && msg.contains("chunk c/"), "{msg}");
    assert_nothing_at(&out);

    // sigma <= 0, an axis out of range, a bad origin.
    let mut g = gauss();
    g.sigma = vec![0.0];
    assert!(
        g.validate()
            .unwrap_err()
            .to_string()
            .contains("invalid sigma")
    );
    g.sigma = vec![1.0, -2.0, 1.0];
    assert!(g.validate().is_err());
    let c = Correlate1d {
        axis: 3,
        weights: vec![1.0, 2.0],
        origin: 0,
        mode: Boundary::Reflect,
        dtype: None,
    };
    let err = chunkwise::run(one, &out, &c, &ExecOptions::default().overwrite(true)).unwrap_err();
    assert!(err.to_string().contains("axis 3 is out of range"), "{err}");
    let c = Correlate1d {
        axis: 0,
        origin: 5,
        ..c
    };
    assert!(
        c.validate()
            .unwrap_err()
            .to_string()
            .contains("invalid origin")
    );

    // Inputs of different shapes.
    let err = chunkwise::map_blocks(
        &crate::common::inputs(&[u16in.clone(), f32in.clone()]),
        &out,
        &MapSpec::new("nothing", DType::U8),
        |_b, _o| Ok(()),
        &ExecOptions::default().overwrite(true),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Input(chunkwise::InputError::ShapeMismatch {
                axis: 0,
                left: 37,
                right: 17,
                ..
            })
        ),
        "{err}"
    );
    assert_nothing_at(&out);
    // And a kernel that works still works.
    chunkwise::run(
        one,
        &out,
        &Threshold {
            above: chunkwise::Number::from(0.0),
        },
        &ExecOptions::default().overwrite(true),
    )
    .unwrap();
    let t = Store::open(&out)
        .unwrap()
        .read_region::<u8>(&Region::new(vec![0..1, 0..1, 0..1]))
        .unwrap();
    assert_eq!(t[[0, 0, 0]], 1);
}

/// SIGKILL `chunkwise gaussian` at many instants: the output never appears half-done, and the
/// rerun resumes (computing only what was not logged) and finishes with the right result.
#[test]
fn killed_job_resumes() {
    let dir = tmp();
    let shape = [48u64, 96, 128];
    let vol = chunkwise::support::synth::Volume::new(shape, 4e-4, 5);
    let mut bytes = Vec::new();
    <u16 as chunkwise::Element>::extend_le_bytes(&vol.render(), &mut bytes);
    let raw = dir.path().join("v.raw");
    std::fs::write(&raw, &bytes).unwrap();
    let input = dir.path().join("v.zarr");
    chunkwise::convert(
        &chunkwise::Input::open_all(
            &[raw],
            &chunkwise::RawOptions {
                dtype: Some(DType::U16),
                shape: Some(shape.to_vec()),
                ..Default::default()
            },
        )
        .unwrap(),
        &input,
        &chunkwise::ConvertOptions::default().chunks(Some(vec![8, 16, 16])),
    )
    .unwrap();
    let args = |out: &Path| {
        vec![
            "gaussian".to_string(),
            input.to_str().unwrap().to_string(),
            out.to_str().unwrap().to_string(),
            "--sigma".into(),
            "2".into(),
            "--threads".into(),
            "2".into(),
        ]
    };
    let reference = dir.path().join("ref.zarr");
    let t = Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_chunkwise"))
        .args(args(&reference))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let full = t.elapsed();
    let want = store_bytes(&Store::open(&reference).unwrap());
    let out = dir.path().join("k.zarr");
    let mut resumed = 0;
    for i in 1..10u32 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chunkwise"))
            .args(args(&out))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(full.mul_f64(f64::from(i) / 10.0));
        child.kill().ok();
        child.wait().unwrap();
        if out.exists() {
            // Finished before the kill: complete and right.
            assert_eq!(store_bytes(&Store::open(&out).unwrap()), want);
            std::fs::remove_dir_all(&out).unwrap();
            continue;
        }
        let o = Command::new(env!("CARGO_BIN_EXE_chunkwise"))
            .args(args(&out))
            .output()
            .unwrap();
        assert!(o.status.success(), "rerun {i}: {}", stderr(&o));
        if stdout(&o).contains("resumed") {
            resumed += 1;
        }
        assert_eq!(
            store_bytes(&Store::open(&out).unwrap()),
            want,
            "after kill {i}"
        );
        std::fs::remove_dir_all(&out).unwrap();
    }
    assert!(
        resumed > 0,
        "no rerun resumed work (a full run took {full:?})"
    );
}

/// Issue 9 §4: a closure job's identity enters its fingerprint, so that another closure into
/// the same output is another job: refused (not "already done") unless overwriting, and an
/// unfinished one is not resumed by a different closure, while the same closure resumes it.
#[test]
fn a_closure_with_another_identity_is_another_job() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let dir = tmp();
    let input = input_store(dir.path(), "in_u16", &[5, 6, 7]);
    let inputs = [crate::common::input(&input)];
    let values: Vec<u16> = store_bytes(&Store::open(&input).unwrap())
        .chunks(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect();
    let times = |k: u32| {
        move |blocks: &[chunkwise::kernel::Block<'_>], out: &mut chunkwise::kernel::OutBlock<'_>| {
            let src = blocks[0].valid_view::<u16>()?;
            let mut dst = out.view_mut::<u32>()?;
            ndarray::Zip::from(&mut dst)
                .and(&src)
                .for_each(|o, &v| *o = u32::from(v) * k);
            Ok(())
        }
    };
    let oracle = |k: u32| -> Vec<u8> {
        values
            .iter()
            .flat_map(|&v| (u32::from(v) * k).to_le_bytes())
            .collect()
    };
    let out = dir.path().join("o.zarr");
    let (double, triple) = (
        MapSpec::new("double v1", DType::U32),
        MapSpec::new("triple v1", DType::U32),
    );
    let o = ExecOptions::default();
    let r = chunkwise::map_blocks(&inputs, &out, &double, times(2), &o).unwrap();
    assert_eq!(r.status, ExecStatus::Published);
    let r = chunkwise::map_blocks(&inputs, &out, &double, times(2), &o).unwrap();
    assert_eq!(r.status, ExecStatus::AlreadyDone);
    let err = chunkwise::map_blocks(&inputs, &out, &triple, times(3), &o).unwrap_err();
    assert!(err.to_string().contains("other settings"), "{err}");
    assert_eq!(store_bytes(&Store::open(&out).unwrap()), oracle(2));
    let r = chunkwise::map_blocks(&inputs, &out, &triple, times(3), &o.clone().overwrite(true))
        .unwrap();
    assert_eq!(r.status, ExecStatus::Published);
    assert_eq!(store_bytes(&Store::open(&out).unwrap()), oracle(3));
    // Unfinished: a cancelled "double v2" is resumed by itself, not by "triple v2".
    let out2 = dir.path().join("p.zarr");
    let token = chunkwise::Cancel::new();
    let seen = AtomicU64::new(0);
    let d2 = MapSpec::new("double v2", DType::U32);
    let t2 = token.clone();
    let f2 = times(2);
    let err = chunkwise::map_blocks(
        &inputs,
        &out2,
        &d2,
        |b, out| {
            if seen.fetch_add(1, Ordering::Relaxed) == 2 {
                t2.cancel();
            }
            f2(b, out)
        },
        &ExecOptions::default().threads(Some(1)).cancel(token),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Cancelled), "{err}");
    let err = chunkwise::map_blocks(
        &inputs,
        &out2,
        &MapSpec::new("triple v2", DType::U32),
        times(3),
        &o,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("unfinished job with other settings"),
        "{err}"
    );
    let r = chunkwise::map_blocks(&inputs, &out2, &d2, times(2), &o).unwrap();
    assert!(r.chunks_resumed > 0, "{r:?}");
    assert_eq!(store_bytes(&Store::open(&out2).unwrap()), oracle(2));
}

/// Issue 9 §1 / 18.6: a job's fingerprint covers every file and store a view reads and the
/// values of an in-memory array, so that a rerun after any of them changed is another job
/// (refused unless overwriting, then equal to a fresh run on the new data), never "already
/// done" with the old result: a slice of a directory rewritten in place, a store part of a
/// JSON view rewritten, another array in memory of the same shape.
#[test]
fn a_job_on_changed_view_parts_or_memory_is_another_job() {
    use chunkwise::Input;
    use chunkwise::support::write_npy;
    let dir = tmp();
    let d = dir.path();
    let slice = |k: u16| -> Vec<u8> {
        (0..36u16)
            .flat_map(|i| (i * 7 + k * 13).to_le_bytes())
            .collect()
    };
    let slices = d.join("slices");
    std::fs::create_dir(&slices).unwrap();
    for k in 0..4u16 {
        write_npy(
            &slices.join(format!("s{k}.npy")),
            DType::U16,
            &[6, 6],
            &slice(k),
        )
        .unwrap();
    }
    let part = input_store(d, "in_u16", &[7, 7, 7]);
    let spec = d.join("view.json");
    std::fs::write(
        &spec,
        format!(
            r#"{{"concat": ["{}", "{}"], "axis": 0}}"#,
            part.display(),
            part.display()
        ),
    )
    .unwrap();
    let o = ExecOptions::default();
    let check = |open: &dyn Fn() -> Input, change: &dyn Fn(), name: &str| {
        let out = d.join(format!("{name}.zarr"));
        let r = chunkwise::run(&[open()], &out, &gauss(), &o).unwrap();
        assert_eq!(r.status, ExecStatus::Published, "{name}");
        let r = chunkwise::run(&[open()], &out, &gauss(), &o).unwrap();
        assert_eq!(r.status, ExecStatus::AlreadyDone, "{name}: unchanged");
        let before = store_bytes(&Store::open(&out).unwrap());
        change();
        let e = chunkwise::run(&[open()], &out, &gauss(), &o).unwrap_err();
        assert!(e.to_string().contains("other settings"), "{name}: {e}");
        let r = chunkwise::run(&[open()], &out, &gauss(), &o.clone().overwrite(true)).unwrap();
        assert_eq!(r.status, ExecStatus::Published, "{name}");
        let fresh = d.join(format!("{name}-fresh.zarr"));
        chunkwise::run(&[open()], &fresh, &gauss(), &o).unwrap();
        let after = store_bytes(&Store::open(&out).unwrap());
        assert_eq!(after, store_bytes(&Store::open(&fresh).unwrap()), "{name}");
        assert_ne!(after, before, "{name}: the change must change the result");
    };
    // A slice rewritten in place, same size, by a rename (as most writers do).
    check(
        &|| crate::common::input(&slices),
        &|| {
            let tmp = slices.join("new.tmp");
            write_npy(&tmp, DType::U16, &[6, 6], &slice(9)).unwrap();
            std::fs::rename(&tmp, slices.join("s2.npy")).unwrap();
        },
        "slices",
    );
    // A store the view spec reads, rewritten with other values (the spec file unchanged).
    check(
        &|| crate::common::input(&spec),
        &|| {
            let s = Store::open(&part).unwrap();
            let block = ndarray::ArrayD::<u16>::from_elem(vec![3, 3, 3], 4321);
            s.write_region(&Region::new(vec![0..3, 0..3, 0..3]), block.view())
                .unwrap();
        },
        "spec",
    );
    // Arrays in memory: the same values are the same job, others another.
    let values = std::sync::Mutex::new(ndarray::ArrayD::<u16>::from_shape_fn(
        vec![9, 10, 11],
        |ix| (ix[0] * 100 + ix[1] * 10 + ix[2]) as u16,
    ));
    check(
        &|| Input::from_array(values.lock().unwrap().view()).unwrap(),
        &|| values.lock().unwrap()[[4, 5, 6]] = 60000,
        "memory",
    );
}

/// Parts started at the same instant, as a Slurm array's tasks are (COMPUTE §7): every part
/// succeeds, exactly one publishes, and the result is the single process's, round after round.
/// (Before the open lock, a part could take another's half-created build directory for stale
/// and wipe it: "job.json: no such file or directory" in 4 of 5 tries with 3 parts.)
#[test]
fn parts_started_together_always_work() {
    let dir = tmp();
    let input = input_store(dir.path(), "in_u16", &[4, 4, 4]);
    let whole = dir.path().join("whole.zarr");
    chunkwise::run(
        &[crate::common::input(&input)],
        &whole,
        &gauss(),
        &ExecOptions::default(),
    )
    .unwrap();
    let want = store_bytes(&Store::open(&whole).unwrap());
    let bin = env!("CARGO_BIN_EXE_chunkwise");
    for round in 0..12 {
        let out = dir.path().join(format!("out{round}.zarr"));
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
        let handles: Vec<_> = (0..8)
            .map(|part| {
                let (barrier, input, out) = (barrier.clone(), input.clone(), out.clone());
                std::thread::spawn(move || {
                    let mut cmd = Command::new(bin);
                    cmd.args(["gaussian", "-q", "--threads", "1", "--sigma", "1.5"])
                        .arg(&input)
                        .arg(&out)
                        .args(["--partition", &format!("{part}/8")]);
                    barrier.wait();
                    cmd.output().unwrap()
                })
            })
            .collect();
        for (part, h) in handles.into_iter().enumerate() {
            let o = h.join().unwrap();
            assert!(
                o.status.success(),
                "round {round}, part {part}/8: {}",
                stderr(&o)
            );
        }
        assert_eq!(
            store_bytes(&Store::open(&out).unwrap()),
            want,
            "round {round}"
        );
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(&format!("out{round}.zarr.chunkwise")))
            .collect();
        assert!(left.is_empty(), "round {round}: left behind {left:?}");
    }
}

/// A part of another split than the job was started with is refused, naming both; a part
/// index out of range too (spec/COMPUTE.md §7).
#[test]
fn a_part_of_another_split_is_refused() {
    let dir = tmp();
    let input = input_store(dir.path(), "in_u16", &[4, 4, 4]);
    let out = dir.path().join("out.zarr");
    let part = |i: u32, n: u32| {
        chunkwise::run(
            &[crate::common::input(&input)],
            &out,
            &gauss(),
            &ExecOptions::default().partition(Some((i, n))),
        )
    };
    assert!(matches!(
        part(0, 4).unwrap().status,
        ExecStatus::Waiting { .. }
    ));
    let e = part(1, 3).unwrap_err().to_string();
    assert!(e.contains("1/3") && e.contains("started in 4 parts"), "{e}");
    let e = part(4, 4).unwrap_err().to_string();
    assert!(e.contains("4/4"), "{e}");
    for i in 1..4 {
        part(i, 4).unwrap();
    }
    assert!(Store::open(&out).is_ok());
}

/// `chunkwise status OUT` (COMPUTE §7): parts done, running (their lock held) or missing, as
/// text and JSON; then published; and a clear error where there is no job.
#[test]
fn status_says_which_parts_are_done_running_or_missing() {
    let dir = tmp();
    let input = input_store(dir.path(), "in_u16", &[4, 4, 4]);
    let out = dir.path().join("out.zarr");
    let part = |i: u32| {
        chunkwise::run(
            &[crate::common::input(&input)],
            &out,
            &gauss(),
            &ExecOptions::default().partition(Some((i, 4))),
        )
        .unwrap()
    };
    part(0);
    let held = std::fs::File::create(dir.path().join(".out.zarr.chunkwise-job/lock.1.4")).unwrap();
    held.lock().unwrap();
    let bin = env!("CARGO_BIN_EXE_chunkwise");
    let o = Command::new(bin)
        .args(["status", "--json"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let states: Vec<&str> = v["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["done", "running", "missing", "missing"], "{v}");
    assert_eq!(v["published"], false);
    assert_eq!(v["chunks_done"], v["parts"][0]["chunks"], "{v}");
    let text = stdout(&Command::new(bin).arg("status").arg(&out).output().unwrap());
    assert!(
        text.contains("job in 4 parts") && text.contains("part 1/4: running"),
        "{text}"
    );
    drop(held);
    for i in 1..4 {
        part(i);
    }
    let o = Command::new(bin)
        .args(["status", "--json"])
        .arg(&out)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["published"].clone(), v["building"].clone()),
        (true.into(), false.into())
    );
    let o = Command::new(bin)
        .arg("status")
        .arg(dir.path().join("nothing.zarr"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("nothing.zarr"), "{}", stderr(&o));
}

/// `convert --partition I/N` (COMPUTE §7): parts of one convert, in any order, publish the
/// array a single convert writes (same data, same chunks); a part that is not last waits;
/// sharding is refused with parts, naming why.
#[test]
fn a_convert_in_parts_equals_one_convert() {
    let dir = tmp();
    let input = input_store(dir.path(), "in_u16", &[4, 4, 4]);
    let whole = dir.path().join("whole.zarr");
    let opts = || chunkwise::ConvertOptions::default().chunks(Some(vec![3, 5, 7]));
    chunkwise::convert(&crate::common::input(&input), &whole, &opts()).unwrap();
    let out = dir.path().join("parts.zarr");
    let bin = env!("CARGO_BIN_EXE_chunkwise");
    for (k, part) in ["2/3", "0/3", "1/3"].into_iter().enumerate() {
        let o = Command::new(bin)
            .arg("convert")
            .arg(&input)
            .arg("-o")
            .arg(&out)
            .args(["--chunks", "3,5,7", "--partition", part])
            .output()
            .unwrap();
        assert!(o.status.success(), "{part}: {}", stderr(&o));
        if k < 2 {
            assert!(
                stdout(&o).contains("waiting for the other partitions"),
                "{}",
                stdout(&o)
            );
            assert!(!out.exists());
        } else {
            assert!(stdout(&o).starts_with("wrote "), "{}", stdout(&o));
        }
    }
    let (a, b) = (Store::open(&whole).unwrap(), Store::open(&out).unwrap());
    assert_eq!(a.chunk_shape(), b.chunk_shape());
    assert_eq!(store_bytes(&a), store_bytes(&b));
    let e = chunkwise::convert(
        &crate::common::input(&input),
        &dir.path().join("sharded.zarr"),
        &opts()
            .subchunks(Some(vec![1, 5, 7]))
            .partition(Some((0, 2))),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("partition") && e.contains("shard"), "{e}");

    // Same chunks and codec as the input store: each part copies its chunks as stored (no
    // decoding), and the parts publish the input's values; another codec re-encodes.
    for (codec, copies) in [
        (None, true),
        (Some(chunkwise::Codec::Zstd { level: 3 }), false),
    ] {
        let out = dir.path().join(format!("copy-{copies}.zarr"));
        let mut copied = 0;
        for i in [1, 0] {
            let mut o = chunkwise::ConvertOptions::default()
                .chunks(Some(vec![4, 4, 4]))
                .partition(Some((i, 2)));
            if let Some(c) = codec {
                o = o.codec(c);
            }
            let r = chunkwise::convert(&crate::common::input(&input), &out, &o).unwrap();
            copied += r.chunks_copied;
        }
        let src = Store::open(&input).unwrap();
        assert_eq!(copied > 0, copies, "{codec:?}");
        if copies {
            assert_eq!(copied, src.chunk_indices().len() as u64);
        }
        assert_eq!(store_bytes(&Store::open(&out).unwrap()), store_bytes(&src));
    }
}

/// COMPUTE §11, §6, §7: an expression over two inputs is a job like the others: in 3 parts it
/// writes what one process writes; the same expression spaced otherwise is the same job
/// ("already done"); another expression into the same output is refused without --overwrite.
/// (Values against numpy: tests/python/test_eval.py.)
#[test]
fn eval_jobs_split_resume_and_know_their_expression() {
    use chunkwise::kernel::Eval;
    let dir = tmp();
    let a = input_store(dir.path(), "in_u16", &[7, 7, 7]);
    let b = input_store(dir.path(), "in_u16", &[5, 6, 7]);
    let inputs = || [crate::common::input(&a), crate::common::input(&b)];
    let e = Eval::new(
        "where(a > 500, sqrt(a * 1.0) + b, b // 3)",
        &["a", "b"],
        None,
    )
    .unwrap();
    let whole = dir.path().join("whole.zarr");
    let r = chunkwise::run(&inputs(), &whole, &e, &ExecOptions::default()).unwrap();
    assert_eq!((r.status, r.dtype), (ExecStatus::Published, DType::F64));
    let out = dir.path().join("parts.zarr");
    for part in [1u32, 2, 0] {
        chunkwise::run(
            &inputs(),
            &out,
            &e,
            &ExecOptions::default().partition(Some((part, 3))),
        )
        .unwrap();
    }
    assert_eq!(
        store_bytes(&Store::open(&out).unwrap()),
        store_bytes(&Store::open(&whole).unwrap())
    );
    let respaced = Eval::new("where(a>500,sqrt(a*1.0)+b,b//3)", &["a", "b"], None).unwrap();
    let again = chunkwise::run(&inputs(), &out, &respaced, &ExecOptions::default()).unwrap();
    assert_eq!(again.status, ExecStatus::AlreadyDone);
    let other = Eval::new("a + b", &["a", "b"], None).unwrap();
    let err = chunkwise::run(&inputs(), &out, &other, &ExecOptions::default()).unwrap_err();
    assert!(err.to_string().contains("overwrite"), "{err}");
    // Names bind inputs in order: swapping them is another job.
    let swapped = Eval::new(
        "where(a > 500, sqrt(a * 1.0) + b, b // 3)",
        &["b", "a"],
        None,
    )
    .unwrap();
    let err = chunkwise::run(&inputs(), &out, &swapped, &ExecOptions::default()).unwrap_err();
    assert!(err.to_string().contains("overwrite"), "{err}");
}

/// spec/COMPUTE.md §5: at the smallest budget the executor accepts (one-chunk tiles, chunks
/// beside a tile kept as slabs of the halo's width), the gaussian equals the unconstrained
/// one bit for bit in every boundary mode, with chunks decoded once per tile that reads them.
#[test]
fn the_smallest_budget_keeps_halo_slabs_and_the_same_result() {
    let dir = tmp();
    let d = dir.path();
    let (nz, ny, nx) = (20usize, 40usize, 36usize);
    let values: Vec<u16> = (0..nz * ny * nx)
        .map(|i| ((i as u64).wrapping_mul(2_654_435_761) >> 9) as u16 % 3000)
        .collect();
    let a = ndarray::ArrayD::from_shape_vec(vec![nz, ny, nx], values).unwrap();
    let input = d.join("in.zarr");
    chunkwise::from_array(
        a.view(),
        &input,
        &chunkwise::ConvertOptions::default().chunks(Some(vec![8, 8, 8])),
    )
    .unwrap();
    let modes = [
        Boundary::Reflect,
        Boundary::Mirror,
        Boundary::Nearest,
        Boundary::Wrap,
        Boundary::Constant(3.0),
    ];
    for (k, mode) in modes.into_iter().enumerate() {
        let g = Gaussian {
            sigma: vec![1.0, 1.5, 2.0],
            truncate: 4.0,
            mode,
            dtype: None,
        };
        let run = |name: &str, opts: ExecOptions| {
            chunkwise::run(
                &[crate::common::input(&input)],
                &d.join(format!("{k}-{name}.zarr")),
                &g,
                &opts,
            )
        };
        let big = run("big", ExecOptions::default()).unwrap();
        // The least budget, from the error that names it.
        let err = run("none", ExecOptions::default().memory(Some(20_000)))
            .unwrap_err()
            .to_string();
        let least: u64 = err
            .split("at least ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no least budget in {err:?}"));
        let small = run("small", ExecOptions::default().memory(Some(least))).unwrap();
        assert_eq!(small.tile, vec![1, 1, 1], "{mode:?}");
        assert!(small.decodes > small.input_chunks, "{mode:?}");
        // (With wrap a tile at one end also keeps the far end's chunks: on this small grid
        // a one-chunk tile's window is counted as the whole layer's.)
        if mode == Boundary::Wrap {
            assert!(small.window_bytes <= big.window_bytes, "{mode:?}");
        } else {
            assert!(small.window_bytes < big.window_bytes, "{mode:?}");
        }
        assert_eq!(
            store_bytes(&Store::open(d.join(format!("{k}-big.zarr"))).unwrap()),
            store_bytes(&Store::open(d.join(format!("{k}-small.zarr"))).unwrap()),
            "{mode:?}: the one-chunk tiles' result differs"
        );
    }
}

/// COMPUTE §6: a kernel refusing a chunk in one part of a partitioned job discards that part's
/// work only: a part that finished keeps its log (status says done), and the failed part's
/// rerun completes and publishes the whole array (this was the lost work behind
/// `chunkwise.distributed.run`'s "every part finished, but … is not published"). A one-part
/// job that fails leaves nothing behind, as before.
#[test]
fn a_part_whose_kernel_fails_keeps_the_other_parts_work() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tmp();
    let input = input_store(dir.path(), "in_u16", &[4, 8, 8]);
    let out = dir.path().join("twice.zarr");
    let spec = MapSpec::new("twice v1", DType::U16);
    let fail = AtomicBool::new(false);
    let part = |i: u32| {
        chunkwise::map_overlap(
            &[crate::common::input(&input)],
            &out,
            &spec,
            |blocks, o| {
                if fail.load(Ordering::Relaxed) {
                    return Err(o.error("refused"));
                }
                let src = blocks[0].view::<u16>()?;
                o.view_mut::<u16>()?
                    .assign(&src.mapv(|v| v.wrapping_mul(2)));
                Ok(())
            },
            &ExecOptions::default().partition(Some((i, 2))),
        )
    };
    let status = || chunkwise::job_status(&out).unwrap();
    assert!(matches!(
        part(0).unwrap().status,
        ExecStatus::Waiting { .. }
    ));
    fail.store(true, Ordering::Relaxed);
    let e = part(1).unwrap_err();
    assert!(e.to_string().contains("refused"), "{e}");
    let states: Vec<&str> = status().parts.iter().map(|p| p.state()).collect();
    assert_eq!(states, ["done", "missing"], "{:?}", status());
    // The failed part's rerun (its input corrected: here, the kernel) publishes everything.
    fail.store(false, Ordering::Relaxed);
    let r = part(1).unwrap();
    assert_eq!(r.status, ExecStatus::Published, "{:?}", status());
    let x = Store::open(&input).unwrap().read_all::<u16>().unwrap();
    let got = Store::open(&out).unwrap().read_all::<u16>().unwrap();
    assert_eq!(got, x.mapv(|v| v.wrapping_mul(2)));

    // One part, failing: nothing stays at the output or beside it.
    let one = dir.path().join("one.zarr");
    let e = chunkwise::map_overlap(
        &[crate::common::input(&input)],
        &one,
        &spec,
        |_, o| Err(o.error("refused")),
        &ExecOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("refused"), "{e}");
    assert_nothing_at(&one);
    assert_nothing_at(&dir.path().join(".one.zarr.chunkwise-job"));
}

/// COMPUTE §6: a log whose last line was cut short (a kill or a full disk mid-write) is
/// trimmed to its whole lines when the job resumes, so that the lines appended next do not
/// continue it into another chunk's index ("1" + "0,0,0" would log chunk 10 as done). The
/// job stopped mid-way resumes to numpy's result.
#[test]
fn a_log_line_cut_short_does_not_mark_another_chunk_done() {
    let dir = tmp();
    let input = input_store(dir.path(), "in_u16", &[1, 29, 53]); // one chunk per layer
    let out = dir.path().join("twice.zarr");
    let spec = MapSpec::new("twice v1", DType::U16);
    let run = |stop_at: u64| {
        chunkwise::map_overlap(
            &[crate::common::input(&input)],
            &out,
            &spec,
            |blocks, o| {
                if o.region().ranges()[0].start >= stop_at {
                    return Err(Error::Cancelled);
                }
                let src = blocks[0].view::<u16>()?;
                o.view_mut::<u16>()?
                    .assign(&src.mapv(|v| v.wrapping_mul(2)));
                Ok(())
            },
            &ExecOptions::default().threads(Some(1)),
        )
    };
    // Started and stopped at once: the build directory with an empty log.
    assert!(matches!(run(0), Err(Error::Cancelled)));
    let log = dir.path().join(".twice.zarr.chunkwise-job/done.0.1");
    assert_eq!(std::fs::read(&log).unwrap(), b"");
    std::fs::write(&log, b"1").unwrap();
    // Layers 0..5 done and logged, then stopped.
    assert!(matches!(run(5), Err(Error::Cancelled)));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.lines().all(|l| l.split(',').count() == 3), "{text:?}");
    assert_eq!(text.lines().count(), 5, "{text:?}");
    let r = run(u64::MAX).unwrap();
    assert_eq!((r.status, r.chunks_resumed), (ExecStatus::Published, 5));
    let x = Store::open(&input).unwrap().read_all::<u16>().unwrap();
    let got = Store::open(&out).unwrap().read_all::<u16>().unwrap();
    assert_eq!(got, x.mapv(|v| v.wrapping_mul(2)));
}
