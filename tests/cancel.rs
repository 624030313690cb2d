//! Cancellation (issue 9 §3, issue 18's SIGINT/SIGTERM): a cancelled operation stops between
//! chunks with `Error::Cancelled` and leaves what a kill would: a job resumes to the same bytes
//! as an uninterrupted run, an append leaves the old array, a convert or export leaves nothing;
//! the binary stops on SIGINT/SIGTERM the same way (exit 130/143) and cleans what a rerun
//! would not resume.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chunkwise::kernel::Gaussian;
use chunkwise::support::write_npy;
use chunkwise::{
    Boundary, Cancel, ConvertOptions, DType, Error, ExecOptions, ExecStatus, ExportOptions,
    GrowOptions, Input, MapSpec, Progress, ProgressFn, Store,
};

use crate::common::{input, stderr, store_bytes, tmp};

fn volume(dir: &Path, name: &str, shape: [u64; 3], chunks: &str) -> std::path::PathBuf {
    let vol = chunkwise::support::synth::Volume::new(shape, 4e-4, 11);
    let mut bytes = Vec::new();
    <u16 as chunkwise::Element>::extend_le_bytes(&vol.render(), &mut bytes);
    let npy = dir.join(format!("{name}.npy"));
    write_npy(&npy, DType::U16, &shape, &bytes).unwrap();
    let z = dir.join(format!("{name}.zarr"));
    let chunks: Vec<u64> = chunks.split(',').map(|c| c.parse().unwrap()).collect();
    chunkwise::convert(
        &input(&npy),
        &z,
        &ConvertOptions::default().chunks(Some(chunks)),
    )
    .unwrap();
    z
}

/// A progress callback that cancels `token` once `after` units are done.
fn cancel_after(token: &Cancel, after: u64) -> ProgressFn {
    let t = token.clone();
    Arc::new(move |p: Progress<'_>| {
        if p.done >= after {
            t.cancel();
        }
    })
}

/// Names beside `dir`'s entries that only a running writer leaves.
fn temps(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("chunkwise-"))
        .collect()
}

fn gauss() -> Gaussian {
    Gaussian {
        sigma: vec![1.5],
        truncate: 4.0,
        mode: Boundary::Reflect,
        dtype: None,
    }
}

/// A job cancelled mid-way stops with `Cancelled`, publishes nothing, and its rerun resumes
/// (computing only what was left) to exactly the bytes of an uninterrupted run.
#[test]
fn a_cancelled_job_resumes_to_the_same_bytes() {
    let dir = tmp();
    let d = dir.path();
    let z = volume(d, "v", [48, 64, 64], "8,32,32");
    let inp = [input(&z)];
    let whole = d.join("whole.zarr");
    chunkwise::run(&inp, &whole, &gauss(), &ExecOptions::default()).unwrap();
    let want = store_bytes(&Store::open(&whole).unwrap());
    let out = d.join("out.zarr");
    // The token is cancelled from inside the job, while its fourth chunk is computed.
    let token = Cancel::new();
    let seen = AtomicU64::new(0);
    let g = gauss();
    let t2 = token.clone();
    let halo = [6u64];
    let opts = ExecOptions::default()
        .threads(Some(1))
        .cancel(token.clone());
    let err = chunkwise::map_overlap(
        &inp,
        &out,
        &MapSpec::new("gaussian closure v1", DType::F32).halo(&halo),
        |blocks, o| {
            if seen.fetch_add(1, Ordering::Relaxed) == 3 {
                t2.cancel();
            }
            gauss_block(&g, blocks, o)
        },
        &opts,
    )
    .unwrap_err();
    assert!(matches!(err, Error::Cancelled), "{err}");
    assert!(!out.exists(), "a cancelled job published its output");
    let r = chunkwise::map_overlap(
        &inp,
        &out,
        &MapSpec::new("gaussian closure v1", DType::F32).halo(&halo),
        |blocks, o| gauss_block(&g, blocks, o),
        &ExecOptions::default(),
    )
    .unwrap();
    assert_eq!(r.status, ExecStatus::Published);
    assert!(r.chunks_resumed > 0, "nothing was kept: {r:?}");
    assert!(r.chunks_computed < r.chunks_total, "{r:?}");
    assert!(store_bytes(&Store::open(&out).unwrap()) == want);
}

/// The Gaussian kernel on one block, as a closure would call it.
fn gauss_block(
    g: &Gaussian,
    blocks: &[chunkwise::kernel::Block<'_>],
    out: &mut chunkwise::kernel::OutBlock<'_>,
) -> chunkwise::Result<()> {
    use chunkwise::kernel::Kernel;
    g.apply(blocks, out)
}

/// A cancelled append leaves the old array (and what its progress record lists, for the
/// rerun); a cancelled convert and export leave nothing at all.
#[test]
fn cancelled_appends_converts_and_exports_leave_what_a_kill_would() {
    let dir = tmp();
    let d = dir.path();
    let z = volume(d, "v", [40, 128, 128], "4,64,64");
    let before = store_bytes(&Store::open(&z).unwrap());
    let more = volume(d, "more", [96, 128, 128], "4,64,64");
    let more_npy = d.join("more.npy");
    let token = Cancel::new();
    let o = GrowOptions::default()
        .threads(Some(1))
        .checkpoint_secs(0.0)
        .progress(Some(cancel_after(&token, 12)))
        .cancel(token.clone());
    let err = chunkwise::append(&z, &[input(&more_npy)], &o).unwrap_err();
    assert!(matches!(err, Error::Cancelled), "{err}");
    assert_eq!(store_bytes(&Store::open(&z).unwrap()), before);
    assert!(!z.join(".chunkwise-staging").exists());
    // The rerun keeps the layers the cancelled one finished.
    let r = chunkwise::append(&z, &[input(&more_npy)], &GrowOptions::default()).unwrap();
    assert!(r.layers_resumed > 0, "{r:?}");
    let after = store_bytes(&Store::open(&z).unwrap());
    assert!(after == [before.clone(), store_bytes(&Store::open(&more).unwrap())].concat());

    // Cancelled before the first chunk: what a convert or export made so far goes.
    let token = Cancel::new();
    token.cancel();
    let out = d.join("c.zarr");
    let err = chunkwise::convert(
        &input(&more_npy),
        &out,
        &ConvertOptions::default().cancel(token.clone()),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Cancelled), "{err}");
    assert!(!out.exists() && temps(d).is_empty(), "left {:?}", temps(d));

    let npy = d.join("x.npy");
    let err = chunkwise::export(
        &input(&z),
        &npy,
        &ExportOptions::default().cancel(token.clone()),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Cancelled), "{err}");
    assert!(!npy.exists() && temps(d).is_empty(), "left {:?}", temps(d));

    // Cancelled once started (at the first progress report), a concat into a new output and
    // a stack leave no build directory.
    let w = volume(d, "w", [136, 128, 128], "4,64,64");
    for what in ["concat", "stack"] {
        let token = Cancel::new();
        let o = GrowOptions::default()
            .threads(Some(1))
            .progress(Some(cancel_after(&token, 0)))
            .cancel(token.clone());
        let out = d.join(format!("{what}.zarr"));
        let parts = [z.clone(), w.clone()];
        let err = if what == "concat" {
            chunkwise::concat(&parts, &out, &o)
        } else {
            chunkwise::stack(&parts, &out, &o)
        }
        .unwrap_err();
        assert!(matches!(err, Error::Cancelled), "{what}: {err}");
        assert!(
            !out.exists() && temps(d).is_empty(),
            "{what}: left {:?}",
            temps(d)
        );
    }
}

/// Issue 18: SIGINT or SIGTERM stops the binary between chunks (exit 130 or 143, a message
/// saying so), leaving no `.NAME.chunkwise-tmp` of a convert or an export behind and a job's
/// build for its rerun, which finishes it to the uninterrupted result.
#[test]
fn signals_stop_the_binary_cleanly() {
    let dir = tmp();
    let d = dir.path();
    let z = volume(d, "v", [64, 96, 96], "8,48,48");
    let whole = d.join("whole.zarr");
    chunkwise::run(&[input(&z)], &whole, &gauss(), &ExecOptions::default()).unwrap();
    let want = store_bytes(&Store::open(&whole).unwrap());
    // A bigger input for the streaming commands (quick to make: a pattern, not a render).
    let npy = d.join("big.npy");
    let shape = [128u64, 256, 256];
    let n = shape.iter().product::<u64>() as usize;
    let bytes: Vec<u8> = (0..n)
        .flat_map(|k| ((k.wrapping_mul(2_654_435_761) >> 7) as u16 & 0x0fff).to_le_bytes())
        .collect();
    write_npy(&npy, DType::U16, &shape, &bytes).unwrap();
    let big = d.join("big.zarr");
    chunkwise::convert(
        &input(&npy),
        &big,
        &ConvertOptions::default().chunks(Some(vec![16, 64, 64])),
    )
    .unwrap();
    let bs = big.to_str().unwrap().to_string();
    let bin = env!("CARGO_BIN_EXE_chunkwise");
    let zs = z.to_str().unwrap().to_string();
    // Each command, interrupted after the time it takes to start working.
    let cases: [(&str, Vec<String>, i32); 3] = [
        (
            "gaussian",
            vec![
                "gaussian".into(),
                zs.clone(),
                d.join("g.zarr").to_str().unwrap().into(),
                "--sigma".into(),
                "1.5".into(),
                "--threads".into(),
                "1".into(),
            ],
            libc_sig("INT"),
        ),
        (
            "convert",
            vec![
                "convert".into(),
                npy.to_str().unwrap().into(),
                "-o".into(),
                d.join("c.zarr").to_str().unwrap().into(),
                "--threads".into(),
                "1".into(),
                "--memory".into(),
                "1MiB".into(),
            ],
            libc_sig("TERM"),
        ),
        (
            "export",
            vec![
                "export".into(),
                bs.clone(),
                "-o".into(),
                d.join("x.npy").to_str().unwrap().into(),
                "--memory".into(),
                "1MiB".into(),
                "--threads".into(),
                "1".into(),
            ],
            libc_sig("INT"),
        ),
    ];
    for (name, args, sig) in cases {
        let mut stopped = false;
        for delay_ms in [150u64, 60, 30, 300, 15, 600] {
            let child = Command::new(bin)
                .args(&args)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let pid = child.id();
            std::thread::sleep(Duration::from_millis(delay_ms));
            let k = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(pid.to_string())
                .status()
                .unwrap();
            assert!(k.success());
            let o = child.wait_with_output().unwrap();
            if o.status.success() {
                // Finished before the signal: clean up and try a shorter delay.
                for p in ["g.zarr", "c.zarr", "x.npy"] {
                    let p = d.join(p);
                    if p.is_dir() {
                        std::fs::remove_dir_all(&p).unwrap();
                    } else if p.exists() {
                        std::fs::remove_file(&p).unwrap();
                    }
                }
                continue;
            }
            assert_eq!(o.status.code(), Some(128 + sig), "{name}: {}", stderr(&o));
            assert!(
                stderr(&o).contains("interrupted by SIG"),
                "{name}: {}",
                stderr(&o)
            );
            stopped = true;
            break;
        }
        assert!(stopped, "{name}: never interrupted mid-way");
        let left = temps(d);
        match name {
            "gaussian" => {
                assert_eq!(left, vec![".g.zarr.chunkwise-job".to_string()], "{name}");
                let o = Command::new(bin).args(&args).output().unwrap();
                assert!(o.status.success(), "{}", stderr(&o));
                assert!(String::from_utf8_lossy(&o.stdout).contains("resumed"));
                assert!(store_bytes(&Store::open(d.join("g.zarr")).unwrap()) == want);
            }
            _ => assert!(left.is_empty(), "{name}: left {left:?}"),
        }
    }
}

fn libc_sig(name: &str) -> i32 {
    match name {
        "INT" => 2,
        "TERM" => 15,
        _ => unreachable!(),
    }
}

/// Progress reaches the caller throttled (issue 9 §3): a job of many chunks calls back far
/// fewer times than it has chunks, and the last call says everything is done.
#[test]
fn progress_is_throttled_for_bindings() {
    let dir = tmp();
    let z = volume(dir.path(), "v", [32, 32, 32], "2,8,8");
    let calls = Arc::new(AtomicU64::new(0));
    let last = Arc::new(AtomicU64::new(0));
    let (c2, l2) = (calls.clone(), last.clone());
    let cb: ProgressFn = Arc::new(move |p: Progress<'_>| {
        c2.fetch_add(1, Ordering::Relaxed);
        if p.done == p.total {
            l2.store(p.total, Ordering::Relaxed);
        }
    });
    let start = Instant::now();
    let r = chunkwise::run(
        &[Input::open(&z).unwrap()],
        &dir.path().join("o.zarr"),
        &gauss(),
        &ExecOptions::default().progress(Some(cb)),
    )
    .unwrap();
    let secs = start.elapsed().as_secs_f64();
    let n = calls.load(Ordering::Relaxed);
    assert_eq!(last.load(Ordering::Relaxed), r.chunks_total);
    assert!(
        r.chunks_total == 256 && n as f64 <= 3.0 + secs * 20.0,
        "{n} calls in {secs} s"
    );
}
