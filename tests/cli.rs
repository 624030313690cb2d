//! The binary: output formats, quiet mode, the demo, and kill safety (spec/CLI.md,
//! spec/FORMAT.md "Durability").

use std::process::Command;
use std::time::Instant;

use chunkwise::{DType, Store};

use crate::common::{chunkwise, fixture, stderr, stdout, store_bytes, tmp};

#[test]
fn info_text_and_json() {
    let store = fixture("stores/zarr_python_v3_zstd.zarr");
    let o = chunkwise(&["info", store.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["shape"], serde_json::json!([37, 29, 53]));
    assert_eq!(v["dtype"], "uint16");
    assert_eq!(v["chunk_shape"], serde_json::json!([16, 16, 16]));
    assert_eq!(v["chunks_total"], 3 * 2 * 4);
    // zarr-python skipped the one all-zero chunk.
    assert_eq!(v["chunks_present"], 3 * 2 * 4 - 1);
    assert_eq!(v["logical_bytes"], 37 * 29 * 53 * 2);
    assert_eq!(v["codecs"][1]["name"], "zstd");
    let o = chunkwise(&["info", store.to_str().unwrap()]);
    let text = stdout(&o);
    assert!(text.contains("37x29x53 (uint16)"), "{text}");
    assert!(text.contains("23 of 24 chunks"), "{text}");
}

#[test]
fn quiet_convert_prints_nothing_and_default_prints_a_summary() {
    let dir = tmp();
    let out = dir.path().join("q.zarr");
    let input = fixture("inputs/c_float32.npy");
    let o = chunkwise(&[
        "convert",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "-q",
    ]);
    assert!(o.status.success());
    assert!(o.stdout.is_empty() && o.stderr.is_empty());
    let out2 = dir.path().join("s.zarr");
    let o = chunkwise(&[
        "convert",
        input.to_str().unwrap(),
        "-o",
        out2.to_str().unwrap(),
        "--threads",
        "1",
    ]);
    assert!(stdout(&o).contains("9x14x11 float32"), "{}", stdout(&o));
    // Piped stderr: no progress bar drawn.
    assert!(o.stderr.is_empty(), "{}", stderr(&o));
}

#[test]
fn written_metadata_is_plain_zarr_v3() {
    let dir = tmp();
    let out = dir.path().join("m.zarr");
    let input = fixture("inputs/c_uint16.npy");
    let o = chunkwise(&[
        "convert",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--codec",
        "zstd",
        "--level",
        "5",
        "--axis-names",
        "z,y,x",
        "--chunks",
        "4,8,8",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("zarr.json")).unwrap()).unwrap();
    let want = serde_json::json!({
        "zarr_format": 3,
        "node_type": "array",
        "shape": [9, 14, 11],
        "data_type": "uint16",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [4, 8, 8]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0,
        "codecs": [
            {"name": "bytes", "configuration": {"endian": "little"}},
            {"name": "zstd", "configuration": {"level": 5, "checksum": false}}
        ],
        "attributes": {},
        "dimension_names": ["z", "y", "x"]
    });
    assert_eq!(meta, want);
    // Chunk keys are c/i/j/k; nothing else lies in the store.
    let mut files: Vec<String> = Vec::new();
    for z in 0..3 {
        for y in 0..2 {
            for x in 0..2 {
                files.push(format!("c/{z}/{y}/{x}"));
                assert!(out.join(format!("c/{z}/{y}/{x}")).is_file());
            }
        }
    }
    let count = walk(&out);
    assert_eq!(count, files.len() + 1);
}

fn walk(p: &std::path::Path) -> usize {
    std::fs::read_dir(p)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                walk(&e.path())
            } else {
                1
            }
        })
        .sum()
}

#[test]
fn demo_runs_and_checks_itself() {
    let dir = tmp();
    let o = chunkwise(&["demo", dir.path().to_str().unwrap(), "--shape", "40,96,80"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("round trip identical"), "{text}");
    assert!(text.contains("demo passed"), "{text}");
    // Step 7 joined 24 more slices (concat) and appended them in place, checking both.
    assert_eq!(text.matches(": equals the data").count(), 2, "{text}");
    // Step 10 made a 2-level pyramid of it, level 1 equal to the block means.
    assert!(text.contains("level 1 equals the block means"), "{text}");
    assert!(dir.path().join("volume.ome.zarr/1/zarr.json").is_file());
    let store = Store::open(dir.path().join("volume.zarr")).unwrap();
    assert_eq!(store.shape(), &[64, 96, 80]);
    let joined = Store::open(dir.path().join("joined.zarr")).unwrap();
    assert_eq!(
        crate::common::store_bytes(&joined),
        crate::common::store_bytes(&store)
    );
}

/// SIGKILL a convert at many instants: the output is either absent or the complete array,
/// never a partial one, and rerunning the same command finishes it.
#[test]
fn killed_convert_never_leaves_a_partial_store() {
    let dir = tmp();
    // 48x128x160 uint16 raw = 1.9 MiB in 6x16x16 chunks: 8x8x10 = 640 chunk files.
    let shape = [48u64, 128, 160];
    let vol = chunkwise::support::synth::Volume::new([shape[0], shape[1], shape[2]], 2e-4, 9);
    let mut bytes = Vec::new();
    <u16 as chunkwise::Element>::extend_le_bytes(&vol.render(), &mut bytes);
    let raw = dir.path().join("vol.raw");
    std::fs::write(&raw, &bytes).unwrap();
    let out = dir.path().join("k.zarr");
    let args = |o: &std::path::Path| {
        vec![
            "convert".to_string(),
            raw.to_str().unwrap().to_string(),
            "--dtype".into(),
            "uint16".into(),
            "--shape".into(),
            "48,128,160".into(),
            "--chunks".into(),
            "6,16,16".into(),
            "--codec".into(),
            "zstd".into(),
            "-o".into(),
            o.to_str().unwrap().to_string(),
        ]
    };
    let t = Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_chunkwise"))
        .args(args(&dir.path().join("ref.zarr")))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let full = t.elapsed();
    let check = |path: &std::path::Path| {
        let s = Store::open(path).unwrap();
        assert_eq!(s.dtype(), DType::U16);
        assert_eq!(store_bytes(&s), bytes);
    };
    let mut killed_mid_way = 0;
    for i in 0..12u32 {
        let delay = full.mul_f64(f64::from(i) / 12.0);
        let mut child = Command::new(env!("CARGO_BIN_EXE_chunkwise"))
            .args(args(&out))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let finished = child.try_wait().unwrap().is_some();
        child.kill().ok();
        child.wait().unwrap();
        if out.exists() {
            check(&out); // complete, or not there at all
            std::fs::remove_dir_all(&out).unwrap();
        } else if !finished {
            killed_mid_way += 1;
        }
        // The rerun cleans up what the killed one left and completes.
        let o = Command::new(env!("CARGO_BIN_EXE_chunkwise"))
            .args(args(&out))
            .output()
            .unwrap();
        assert!(o.status.success(), "rerun after kill {i}: {}", stderr(&o));
        check(&out);
        std::fs::remove_dir_all(&out).unwrap();
    }
    assert!(
        killed_mid_way > 0,
        "no kill landed mid-convert (full run took {full:?})"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}"); // vol.raw and ref.zarr only
}

#[test]
fn kernel_commands_end_to_end() {
    // gaussian then threshold through the binary, with a partitioned job, against the library.
    let dir = tmp();
    let input = crate::compute::input_store(dir.path(), "in_u16", &[8, 8, 16]);
    let out = dir.path().join("g.zarr");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "gaussian",
            input.to_str().unwrap(),
            out.to_str().unwrap(),
            "--sigma",
            "1.5,2,1",
        ];
        args.extend_from_slice(extra);
        chunkwise(&args)
    };
    let o = run(&["--partition", "1/2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("waiting for the other partitions"),
        "{}",
        stdout(&o)
    );
    let o = run(&["--partition", "0/2"]);
    assert!(stdout(&o).starts_with("wrote "), "{}", stdout(&o));
    let o = run(&[]);
    assert!(stdout(&o).contains("nothing to do"), "{}", stdout(&o));
    let o = run(&["--sigma", "3"]);
    assert_eq!(o.status.code(), Some(2));
    let g = chunkwise::kernel::Gaussian {
        sigma: vec![1.5, 2.0, 1.0],
        truncate: 4.0,
        mode: chunkwise::Boundary::Reflect,
        dtype: None,
    };
    let e = crate::common::expected("../compute/in_u16");
    let (_, want) = chunkwise::apply_in_memory(&g, e.dtype, &e.shape, &e.bytes).unwrap();
    assert_eq!(store_bytes(&Store::open(&out).unwrap()), want);
    let mask = dir.path().join("m.zarr");
    let o = chunkwise(&[
        "threshold",
        out.to_str().unwrap(),
        mask.to_str().unwrap(),
        "--above",
        "700",
        "-q",
    ]);
    assert!(o.status.success() && o.stdout.is_empty(), "{}", stderr(&o));
    let o = chunkwise(&[
        "gaussian",
        input.to_str().unwrap(),
        dir.path().join("x.zarr").to_str().unwrap(),
        "--sigma",
        "0",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("sigma must be positive"),
        "{}",
        stderr(&o)
    );
}
