//! Parts on a real Slurm (spec/SCALE.md §3): a single-node cluster of Debian's `slurm-wlm`
//! started by the test (tests/slurm/start.sh), array jobs from `chunkwise slurm-script`, one
//! task cancelled mid-way and resubmitted, and the published outputs equal to one process's.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::common::{is_root, need_crash_points, root, stderr, stdout, store_bytes, tmp};

/// A running cluster, stopped on drop.
struct Cluster {
    state: PathBuf,
    conf: String,
}

impl Cluster {
    fn start(state: &Path) -> Cluster {
        assert!(
            is_root(),
            "the Slurm test starts slurmctld and slurmd as root: run it as root (CI does)"
        );
        for b in ["slurmctld", "slurmd", "sbatch", "squeue", "scancel"] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {b}")])
                .output()
                .is_ok_and(|o| o.status.success());
            assert!(
                found,
                "{b} is missing: the Slurm test needs Debian's slurm-wlm (apt-get install -y \
                 slurm-wlm; bash .ci/run installs it)"
            );
        }
        let o = Command::new("bash")
            .arg(root().join("tests/slurm/start.sh"))
            .arg(state)
            // 4 tasks at once on this node, whatever its cores.
            .env("SLURM_TEST_CPUS", "4")
            .output()
            .unwrap();
        assert!(o.status.success(), "start.sh: {}", stderr(&o));
        let conf = stdout(&o)
            .lines()
            .find_map(|l| l.strip_prefix("export SLURM_CONF="))
            .expect("start.sh prints SLURM_CONF")
            .trim_matches('\'')
            .to_string();
        Cluster {
            state: state.to_path_buf(),
            conf,
        }
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf)
            // Each chunk of a job takes a while, so that a task can be cancelled mid-way.
            .env("CHUNKWISE_TEST_CHUNK_DELAY_MS", "400");
        c
    }

    /// Runs `timeout 300 sbatch --wait ARGS SCRIPT` in `dir` (the whole test suite shares two
    /// cores with the cluster's tasks). On failure, its stderr is made to say how it ended,
    /// after how long, and what every task logged (`NAME-JOB_TASK.log` in `dir`).
    fn sbatch_wait(&self, dir: &Path, args: &[&str], script: &str) -> Output {
        let start = Instant::now();
        let mut c = self.cmd("timeout");
        c.args(["300", "sbatch", "--wait"])
            .args(args)
            .arg(script)
            .current_dir(dir);
        let mut o = c.output().unwrap();
        if !o.status.success() {
            let mut report = format!(
                "\nsbatch --wait {script}: {} after {:.0?} (124: the timeout)\n",
                o.status,
                start.elapsed()
            );
            let mut logs: Vec<_> = std::fs::read_dir(dir)
                .unwrap()
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "log"))
                .collect();
            logs.sort();
            for log in logs {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                report += &format!("--- {}:\n{text}\n", log.display());
            }
            o.stderr.extend_from_slice(report.as_bytes());
        }
        o
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(root().join("tests/slurm/stop.sh"))
            .arg(&self.state)
            .output();
    }
}

fn chunkwise(dir: &Path, args: &[&str]) -> Output {
    let o = Command::new(env!("CARGO_BIN_EXE_chunkwise"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "chunkwise {args:?}: {}", stderr(&o));
    o
}

fn status(dir: &Path, out: &str) -> serde_json::Value {
    let o = Command::new(env!("CARGO_BIN_EXE_chunkwise"))
        .args(["status", out, "--json"])
        .current_dir(dir)
        .output()
        .unwrap();
    serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null)
}

/// `chunkwise slurm-script ARGS` written to `name` in `dir`.
fn script(dir: &Path, name: &str, args: &[&str]) {
    let o = chunkwise(dir, &[&["slurm-script"], args].concat());
    let text = stdout(&o);
    assert!(text.starts_with("#!/bin/bash\n#SBATCH"), "{text}");
    std::fs::write(dir.join(name), text).unwrap();
}

#[test]
fn array_jobs_on_slurm_publish_what_one_process_writes() {
    need_crash_points();
    let dir = tmp();
    let d = dir.path();
    let cluster = Cluster::start(&d.join("slurm"));
    // The input: 64x48x40 uint16, 8 x 3 x 3 chunks.
    let (z, y, x) = (64u64, 48u64, 40u64);
    let mut bytes = Vec::new();
    let mut v: u32 = 12345;
    for _ in 0..z * y * x {
        v = v.wrapping_mul(1_103_515_245).wrapping_add(12345);
        bytes.extend_from_slice(&(((v >> 16) % 4000) as u16).to_le_bytes());
    }
    chunkwise::support::write_npy(&d.join("in.npy"), chunkwise::DType::U16, &[z, y, x], &bytes)
        .unwrap();
    chunkwise(
        d,
        &[
            "convert", "in.npy", "-o", "in.zarr", "--chunks", "8,16,16", "-q",
        ],
    );
    chunkwise(
        d,
        &["gaussian", "in.zarr", "one.zarr", "--sigma", "2", "-q"],
    );
    chunkwise(
        d,
        &[
            "convert",
            "in.npy",
            "-o",
            "one-c.zarr",
            "--chunks",
            "8,16,24",
            "-q",
        ],
    );
    chunkwise(
        d,
        &["stats", "in.zarr", "--axis", "0", "-o", "one-s.npy", "-q"],
    );

    // A 4-part gaussian; task 2 cancelled mid-way.
    let common = [
        "--parts",
        "4",
        "--cpus-per-task",
        "1",
        "--mem",
        "400M",
        "--time",
        "10:00",
    ];
    script(
        d,
        "g.sbatch",
        &[
            &["gaussian", "in.zarr", "out.zarr", "--sigma", "2"][..],
            &common,
        ]
        .concat(),
    );
    let text = std::fs::read_to_string(d.join("g.sbatch")).unwrap();
    assert!(
        text.contains("#SBATCH --array=0-3\n")
            && text.contains("--partition \"$SLURM_ARRAY_TASK_ID/4\""),
        "{text}"
    );
    assert!(
        text.contains("#SBATCH --mem=400M") && text.contains("--memory 320MiB"),
        "{text}"
    );
    let mut c = cluster.cmd("timeout");
    let waiting = c
        .args(["120", "sbatch", "--wait", "g.sbatch"])
        .current_dir(d)
        .spawn()
        .unwrap();
    // Once part 2 is running and has logged chunks, cancel its task.
    let start = Instant::now();
    let job_id = loop {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "part 2 never ran: {}",
            status(d, "out.zarr")
        );
        let s = status(d, "out.zarr");
        let p2 = &s["parts"][2];
        if p2["running"] == true && p2["done"].as_u64().unwrap_or(0) > 0 {
            let q = cluster
                .cmd("squeue")
                .args(["-h", "-n", "chunkwise-gaussian", "-o", "%F"])
                .output()
                .unwrap();
            let id = stdout(&q).lines().next().unwrap_or("").trim().to_string();
            assert!(!id.is_empty(), "squeue: {}", stderr(&q));
            break id;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let o = cluster
        .cmd("scancel")
        .arg(format!("{job_id}_2"))
        .output()
        .unwrap();
    assert!(o.status.success(), "scancel: {}", stderr(&o));
    let o = waiting.wait_with_output().unwrap();
    // The cancelled task stopped between chunks on Slurm's SIGTERM: exit 143, state CANCELLED.
    // (Slurm 22.05's `sbatch --wait` sometimes reports 0 for an array one of whose tasks was
    // cancelled, so the task's own record is what is checked.)
    let show = cluster
        .cmd("scontrol")
        .args(["show", "job", &format!("{job_id}_2"), "-o"])
        .output()
        .unwrap();
    let rec = stdout(&show);
    assert!(
        rec.contains("JobState=CANCELLED")
            && (rec.contains("ExitCode=143:0") || rec.contains("ExitCode=0:15")),
        "sbatch --wait: {:?}; task 2: {rec}",
        o.status.code()
    );
    let s = status(d, "out.zarr");
    assert_eq!(s["published"], false, "{s}");
    let states: Vec<&str> = s["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["done", "done", "missing", "done"], "{s}");
    assert!(s["parts"][2]["done"].as_u64().unwrap() > 0, "{s}");
    // Resubmitted alone, it resumes and publishes.
    let o = cluster.sbatch_wait(d, &["--array=2"], "g.sbatch");
    assert!(
        o.status.success(),
        "resubmitted: {} {}",
        stdout(&o),
        stderr(&o)
    );
    let a = chunkwise::Store::open(d.join("one.zarr")).unwrap();
    let b = chunkwise::Store::open(d.join("out.zarr")).unwrap();
    assert_eq!(
        store_bytes(&a),
        store_bytes(&b),
        "gaussian in 4 Slurm tasks"
    );

    // A 4-part convert and a 4-part reduction, run through.
    script(
        d,
        "c.sbatch",
        &[
            &["convert", "in.npy", "-o", "c.zarr", "--chunks", "8,16,24"][..],
            &common,
        ]
        .concat(),
    );
    let o = cluster.sbatch_wait(d, &[], "c.sbatch");
    assert!(o.status.success(), "convert: {} {}", stdout(&o), stderr(&o));
    let a = chunkwise::Store::open(d.join("one-c.zarr")).unwrap();
    let b = chunkwise::Store::open(d.join("c.zarr")).unwrap();
    assert_eq!(a.chunk_shape(), b.chunk_shape());
    assert_eq!(store_bytes(&a), store_bytes(&b), "convert in 4 Slurm tasks");
    script(
        d,
        "s.sbatch",
        &[
            &["stats", "in.zarr", "--axis", "0", "-o", "s.npy"][..],
            &common,
        ]
        .concat(),
    );
    let o = cluster.sbatch_wait(d, &[], "s.sbatch");
    assert!(o.status.success(), "stats: {} {}", stdout(&o), stderr(&o));
    assert_eq!(
        std::fs::read(d.join("s.npy")).unwrap(),
        std::fs::read(d.join("one-s.npy")).unwrap()
    );
    // A 4-part gaussian pyramid (the part that finds level 0 published
    // makes the levels below): the image one process writes.
    let geometry = ["--chunks", "8,16,16", "--levels", "3", "--factors", "2,2,2"];
    chunkwise(
        d,
        &[
            &[
                "pyramid",
                "in.zarr",
                "-o",
                "one.ome.zarr",
                "--method",
                "gaussian",
                "-q",
            ][..],
            &geometry,
        ]
        .concat(),
    );
    script(
        d,
        "p.sbatch",
        &[
            &[
                "pyramid",
                "in.zarr",
                "-o",
                "p.ome.zarr",
                "--method",
                "gaussian",
            ][..],
            &geometry,
            &common,
        ]
        .concat(),
    );
    let o = cluster.sbatch_wait(d, &[], "p.sbatch");
    assert!(o.status.success(), "pyramid: {} {}", stdout(&o), stderr(&o));
    for l in 0..3 {
        let a = chunkwise::Store::open(d.join(format!("one.ome.zarr/{l}"))).unwrap();
        let b = chunkwise::Store::open(d.join(format!("p.ome.zarr/{l}"))).unwrap();
        assert_eq!(
            store_bytes(&a),
            store_bytes(&b),
            "pyramid level {l} in 4 Slurm tasks"
        );
    }
    assert!(!d.join(".p.ome.zarr.chunkwise-pyramid").exists());
    // The tasks' logs say what each did.
    let logs: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().into_string().unwrap())
        .filter(|n| n.starts_with("chunkwise-convert-") && n.ends_with(".log"))
        .collect();
    assert_eq!(logs.len(), 4, "{logs:?}");
}
