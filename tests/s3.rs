//! Stores on S3-compatible object storage (spec/SCALE.md §6), against a real S3 protocol server
//! on loopback started by the test (moto's `moto_server` from the test venv), with zarr-python
//! (s3fs) reading what chunkwise wrote and the other way round.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use crate::common::{python, root, stderr, stdout, tmp};

/// A moto server on 127.0.0.1, stopped on drop.
struct Moto {
    child: Child,
    port: u16,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One plain HTTP request to the server; the status line.
fn http(port: u16, method: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.lines().next().map(str::to_string)
}

impl Moto {
    fn start() -> Moto {
        Moto::start_with(&[])
    }

    /// A server with `env` set (`INITIAL_NO_AUTH_ACTION_COUNT=0`: credentials checked).
    fn start_with(env: &[(&str, &str)]) -> Moto {
        let bin = python().parent().unwrap().join("moto_server");
        assert!(
            bin.exists(),
            "{} is missing: the S3 tests need moto[server] in the test venv (bash .ci/run \
             installs tests/python/requirements.txt)",
            bin.display()
        );
        let port = free_port();
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while http(port, "GET", "/").is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "moto_server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Moto { child, port }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn bucket(&self, name: &str) {
        let st = http(self.port, "PUT", &format!("/{name}")).unwrap_or_default();
        assert!(st.contains("200"), "creating bucket {name}: {st}");
    }

    /// The environment every client reads.
    fn env(&self, c: &mut Command) {
        c.env("AWS_ENDPOINT_URL", self.endpoint())
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_ALLOW_HTTP", "true")
            .env("CHUNKWISE_S3_RETRIES", "2");
    }

    fn chunkwise(&self, dir: &Path, args: &[&str]) -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_chunkwise"));
        self.env(&mut c);
        c.args(args).current_dir(dir).output().unwrap()
    }

    fn ok(&self, dir: &Path, args: &[&str]) -> Output {
        let o = self.chunkwise(dir, args);
        assert!(o.status.success(), "chunkwise {args:?}: {}", stderr(&o));
        o
    }

    /// zarr-python opens the image at `url` as a group and reads each level equal to
    /// `dir/L.npy`; its groups' `zarr.json` objects equal those of the local image `like`.
    fn zarr_python_image(&self, url: &str, dir: &Path, like: &Path) {
        self.zarr_python_with("image", url, dir, &[like]);
    }

    fn zarr_python(&self, what: &str, url: &str, npy: &Path) {
        self.zarr_python_with(what, url, npy, &[]);
    }

    fn zarr_python_with(&self, what: &str, url: &str, npy: &Path, more: &[&Path]) {
        let mut c = Command::new(python());
        self.env(&mut c);
        let o = c
            .arg(root().join("tests/python/s3_roundtrip.py"))
            .args([what, url])
            .arg(npy)
            .args(more)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "zarr-python {what} {url}: {}{}",
            stdout(&o),
            stderr(&o)
        );
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn volume(dir: &Path) -> PathBuf {
    let (z, y, x) = (23u64, 19u64, 31u64);
    let mut bytes = Vec::new();
    let mut v: u32 = 7;
    for i in 0..z * y * x {
        v = v.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let val: u16 = if i / (y * x) < 6 {
            0
        } else {
            ((v >> 16) % 3000) as u16
        };
        bytes.extend_from_slice(&val.to_le_bytes());
    }
    let p = dir.join("v.npy");
    chunkwise::support::write_npy(&p, chunkwise::DType::U16, &[z, y, x], &bytes).unwrap();
    p
}

#[test]
fn stores_on_s3_round_trip_with_zarr_python_and_compute_like_local_ones() {
    let dir = tmp();
    let d = dir.path();
    let moto = Moto::start();
    moto.bucket("cw-data");
    let npy = volume(d);
    let url = "s3://cw-data/lab/v.zarr";
    moto.ok(
        d,
        &["convert", "v.npy", "-o", url, "--chunks", "8,8,16", "-q"],
    );
    moto.ok(
        d,
        &[
            "convert",
            "v.npy",
            "-o",
            "local.zarr",
            "--chunks",
            "8,8,16",
            "-q",
        ],
    );
    // zarr-python reads it through s3fs; chunkwise reads it back.
    moto.zarr_python("read", url, &npy);
    let info = stdout(&moto.ok(d, &["info", url]));
    assert!(
        info.contains("23x19x31") || info.contains("23, 19, 31"),
        "{info}"
    );
    moto.ok(d, &["verify", url]);
    moto.ok(d, &["export", url, "-o", "back.npy", "-q"]);
    assert_eq!(
        std::fs::read(d.join("back.npy")).unwrap(),
        std::fs::read(&npy).unwrap()
    );
    // Reductions and kernels read it as they read the local copy.
    for args in [
        vec!["stats", "--json"],
        vec!["histogram", "--json"],
        vec!["stats", "--axis", "1", "--json"],
    ] {
        let mut a = vec![args[0], url];
        a.extend(&args[1..]);
        let remote = stdout(&moto.ok(d, &a));
        a[1] = "local.zarr";
        assert_eq!(remote, stdout(&moto.ok(d, &a)), "{args:?}");
    }
    moto.ok(d, &["where", url, "-o", "w-remote.npy", "-q"]);
    moto.ok(d, &["where", "local.zarr", "-o", "w-local.npy", "-q"]);
    assert_eq!(
        std::fs::read(d.join("w-remote.npy")).unwrap(),
        std::fs::read(d.join("w-local.npy")).unwrap()
    );
    moto.ok(
        d,
        &["gaussian", url, "g-remote.zarr", "--sigma", "1.5", "-q"],
    );
    moto.ok(
        d,
        &[
            "gaussian",
            "local.zarr",
            "g-local.zarr",
            "--sigma",
            "1.5",
            "-q",
        ],
    );
    moto.ok(d, &["export", "g-remote.zarr", "-o", "g1.npy", "-q"]);
    moto.ok(d, &["export", "g-local.zarr", "-o", "g2.npy", "-q"]);
    assert_eq!(
        std::fs::read(d.join("g1.npy")).unwrap(),
        std::fs::read(d.join("g2.npy")).unwrap()
    );
    // A reduction in parts over the S3 input (the parts meet beside a local output).
    for i in [2, 0, 1] {
        moto.ok(
            d,
            &[
                "stats",
                url,
                "-o",
                "parts.json",
                "--partition",
                &format!("{i}/3"),
                "-q",
            ],
        );
    }
    moto.ok(d, &["stats", "local.zarr", "-o", "one.json", "-q"]);
    assert_eq!(
        std::fs::read(d.join("parts.json")).unwrap(),
        std::fs::read(d.join("one.json")).unwrap()
    );
    // An array zarr-python wrote to S3, read by chunkwise.
    let zp = "s3://cw-data/from-zarr-python.zarr";
    moto.zarr_python("write", zp, &npy);
    moto.ok(d, &["export", zp, "-o", "zp.npy", "-q"]);
    assert_eq!(
        std::fs::read(d.join("zp.npy")).unwrap(),
        std::fs::read(&npy).unwrap()
    );
    // An existing array is not replaced without --overwrite; with it, no object of the old
    // one is left to be read as data (the new one has fewer stored chunks).
    let o = moto.chunkwise(d, &["convert", "v.npy", "-o", url, "-q"]);
    assert!(
        !o.status.success() && stderr(&o).contains("exists"),
        "{}",
        stderr(&o)
    );
    let zeros = d.join("zeros.npy");
    chunkwise::support::write_npy(
        &zeros,
        chunkwise::DType::U16,
        &[23, 19, 31],
        &vec![0; 23 * 19 * 31 * 2],
    )
    .unwrap();
    moto.ok(
        d,
        &[
            "convert",
            "zeros.npy",
            "-o",
            url,
            "--chunks",
            "8,8,16",
            "--overwrite",
            "-q",
        ],
    );
    moto.zarr_python("read", url, &zeros);
    let s: serde_json::Value =
        serde_json::from_slice(&moto.ok(d, &["stats", url, "--json"]).stdout).unwrap();
    assert_eq!(s["max"], 0, "{s}");
}

#[test]
fn s3_errors_name_the_url_and_what_to_check() {
    let dir = tmp();
    let d = dir.path();
    let moto = Moto::start();
    moto.bucket("cw-here");
    volume(d);
    moto.ok(d, &["convert", "v.npy", "-o", "s3://cw-here/v.zarr", "-q"]);
    let err = |o: Output| {
        assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
        let e = stderr(&o);
        assert_eq!(e.lines().count(), 1, "{e}");
        e
    };
    // A bucket that does not exist.
    let e = err(moto.chunkwise(d, &["info", "s3://cw-missing/v.zarr"]));
    assert!(
        e.contains("s3://cw-missing/v.zarr") && e.contains("bucket does not exist"),
        "{e}"
    );
    let e = err(moto.chunkwise(
        d,
        &["convert", "v.npy", "-o", "s3://cw-missing/x.zarr", "-q"],
    ));
    assert!(e.contains("bucket does not exist"), "{e}");
    // No array at the prefix.
    let e = err(moto.chunkwise(d, &["info", "s3://cw-here/nothing.zarr"]));
    assert!(e.contains("not a zarr array"), "{e}");
    // The server down: a clear error after the retries, not a hang.
    let mut c = Command::new(env!("CARGO_BIN_EXE_chunkwise"));
    moto.env(&mut c);
    let t = Instant::now();
    let o = c
        .env(
            "AWS_ENDPOINT_URL",
            format!("http://127.0.0.1:{}", free_port()),
        )
        .args(["info", "s3://cw-here/v.zarr"])
        .output()
        .unwrap();
    let e = err(o);
    assert!(
        e.contains("cannot reach the server") && e.contains("AWS_ENDPOINT_URL"),
        "{e}"
    );
    assert!(t.elapsed() < Duration::from_secs(60), "{:?}", t.elapsed());
    // No credentials.
    let mut c = Command::new(env!("CARGO_BIN_EXE_chunkwise"));
    moto.env(&mut c);
    let o = c
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .args(["info", "s3://cw-here/v.zarr"])
        .output()
        .unwrap();
    let e = err(o);
    assert!(
        e.contains("no credentials") && e.contains("AWS_ACCESS_KEY_ID"),
        "{e}"
    );
    // Credentials the server refuses (a server that checks them).
    let strict = Moto::start_with(&[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]);
    let e = err(strict.chunkwise(d, &["info", "s3://cw-here/v.zarr"]));
    assert!(
        e.contains("access denied") && e.contains("AWS_ACCESS_KEY_ID"),
        "{e}"
    );
    // What needs a local filesystem says so, and leaves nothing behind.
    for args in [
        vec![
            "stack",
            "s3://cw-here/v.zarr",
            "s3://cw-here/v.zarr",
            "-o",
            "s3://cw-here/w.zarr",
        ],
        vec![
            "stats",
            "s3://cw-here/v.zarr",
            "--axis",
            "0",
            "-o",
            "s3://cw-here/s.npy",
        ],
    ] {
        let e = err(moto.chunkwise(d, &args));
        assert!(
            e.contains("not supported yet") && e.contains("local path"),
            "{args:?}: {e}"
        );
    }
    assert!(!d.join("s3:").exists());
}

/// Uploads every file under `local` to `s3://bucket/prefix/...` by plain HTTP PUTs.
fn upload(port: u16, bucket: &str, prefix: &str, local: &Path) {
    for e in std::fs::read_dir(local).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        if p.is_dir() {
            upload(port, bucket, &format!("{prefix}/{name}"), &p);
            continue;
        }
        let body = std::fs::read(&p).unwrap();
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "PUT /{bucket}/{prefix}/{name} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            body.len()
        )
        .unwrap();
        s.write_all(&body).unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).ok();
        assert!(reply.starts_with("HTTP/1.1 200"), "PUT {name}: {reply}");
    }
}

/// Issue 14: a Zarr v2 store whose blosc chunks carry trailing bytes (z5py's) reads on object
/// storage as it does from a disk (FORMAT §7.1), equal to the corpus' expected array.
#[test]
fn v2_blosc_chunks_with_trailing_bytes_read_from_s3() {
    let dir = tmp();
    let d = dir.path();
    let moto = Moto::start();
    moto.bucket("cw-corpus");
    let store = root().join("fixtures/corpus/zarr_python_3/v2_blosc_trailing.zarr");
    upload(moto.port, "cw-corpus", "z5.zarr", &store);
    moto.ok(
        d,
        &["export", "s3://cw-corpus/z5.zarr", "-o", "back.npy", "-q"],
    );
    let want = crate::common::read_npy(&root().join("fixtures/corpus/expected/source_u2.npy"));
    let got = crate::common::read_npy(&d.join("back.npy"));
    assert_eq!((got.shape, got.bytes), (want.shape, want.bytes));
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// SCALE §6: kernel and convert outputs on S3, in one process and in parts (started together
/// and one by one), equal to local runs byte for byte; no array appears before the last part;
/// a part killed mid-way resumes from its logged chunks; what parts cannot agree on without
/// locks (replacing an array, discarding another job) is refused in parts.
#[test]
fn kernel_outputs_on_s3_in_parts_publish_last_and_resume() {
    let dir = tmp();
    let d = dir.path();
    let moto = Moto::start();
    moto.bucket("cw-jobs");
    let npy = volume(d);
    let g = ["--sigma", "1.5", "--chunks", "4,8,16", "-q"];
    let with = |head: &[&str], tail: &[&str]| -> Vec<String> {
        head.iter().chain(tail).map(|s| s.to_string()).collect()
    };
    moto.ok(d, &strs(&with(&["gaussian", "v.npy", "local.zarr"], &g)));
    moto.ok(d, &["export", "local.zarr", "-o", "local.npy", "-q"]);
    let want = std::fs::read(d.join("local.npy")).unwrap();
    let same = |url: &str, what: &str| {
        let out = format!("{what}.npy");
        moto.ok(d, &["export", url, "-o", &out, "-q"]);
        assert_eq!(std::fs::read(d.join(&out)).unwrap(), want, "{what}");
    };
    // One process.
    let one = "s3://cw-jobs/one.zarr";
    moto.ok(d, &strs(&with(&["gaussian", "v.npy", one], &g)));
    same(one, "one");
    let o = moto.ok(d, &strs(&with(&["gaussian", "v.npy", one], &g)));
    let _ = o;
    // Parts started together.
    let together = "s3://cw-jobs/together.zarr";
    let mut children = Vec::new();
    for i in 0..4 {
        let mut c = Command::new(env!("CARGO_BIN_EXE_chunkwise"));
        moto.env(&mut c);
        let part = format!("{i}/4");
        c.current_dir(d)
            .args(strs(&with(&["gaussian", "v.npy", together], &g)))
            .args(["--partition", &part])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        children.push(c.spawn().unwrap());
    }
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    }
    same(together, "together");
    moto.zarr_python("read", together, &d.join("local.npy"));
    // One by one: no array until the last; status says which parts are done.
    let seq = "s3://cw-jobs/seq.zarr";
    for i in [2, 0] {
        let part = format!("{i}/3");
        let mut a = with(&["gaussian", "v.npy", seq], &g);
        a.extend(["--partition".to_string(), part]);
        moto.ok(d, &strs(&a));
        let o = moto.chunkwise(d, &["info", seq]);
        assert!(!o.status.success(), "an array before the last part");
    }
    let st: serde_json::Value =
        serde_json::from_slice(&moto.ok(d, &["status", seq, "--json"]).stdout).unwrap();
    let states: Vec<&str> = st["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["done", "missing", "done"], "{st}");
    // Another N, and replacing or discarding in parts, are refused.
    let mut a = with(&["gaussian", "v.npy", seq], &g);
    a.extend(["--partition".to_string(), "1/4".to_string()]);
    let e = stderr(&moto.chunkwise(d, &strs(&a)));
    assert!(e.contains("1/4") && e.contains("3 parts"), "{e}");
    let mut a = with(&["gaussian", "v.npy", seq, "--sigma", "3"], &[]);
    a.extend(["--partition".to_string(), "1/3".to_string()]);
    let e = stderr(&moto.chunkwise(d, &strs(&a)));
    assert!(e.contains("without --partition"), "{e}");
    let mut a = with(
        &["gaussian", "v.npy", one, "--sigma", "3", "--overwrite"],
        &[],
    );
    a.extend(["--partition".to_string(), "0/2".to_string()]);
    let e = stderr(&moto.chunkwise(d, &strs(&a)));
    assert!(e.contains("without --partition"), "{e}");
    same(one, "one-unchanged");
    // The last part, killed while its chunks upload, resumes what it had logged.
    let mut a = with(&["gaussian", "v.npy", seq], &g);
    a.extend(["--partition".to_string(), "1/3".to_string()]);
    let mut c = Command::new(env!("CARGO_BIN_EXE_chunkwise"));
    moto.env(&mut c);
    let mut child = c
        .current_dir(d)
        .args(strs(&a))
        .env("CHUNKWISE_TEST_CHUNK_DELAY_MS", "400")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        let st: serde_json::Value =
            serde_json::from_slice(&moto.ok(d, &["status", seq, "--json"]).stdout).unwrap();
        if st["parts"][1]["done"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "part 1 logged nothing: {st}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let o = moto.chunkwise(d, &["info", seq]);
    assert!(!o.status.success(), "an array after a killed last part");
    let mut a = with(&["gaussian", "v.npy", seq], &g);
    a.pop(); // not quiet: the summary says what was resumed
    a.extend(["--partition".to_string(), "1/3".to_string()]);
    let said = stdout(&moto.ok(d, &strs(&a)));
    assert!(said.contains("resumed"), "{said}");
    same(seq, "seq");
    // convert in parts to S3, and a one-process --overwrite of a kernel output.
    let conv = "s3://cw-jobs/conv.zarr";
    for i in [1, 0] {
        let part = format!("{i}/2");
        moto.ok(
            d,
            &[
                "convert",
                "v.npy",
                "-o",
                conv,
                "--chunks",
                "8,8,8",
                "--partition",
                &part,
                "-q",
            ],
        );
    }
    moto.zarr_python("read", conv, &npy);
    moto.ok(
        d,
        &[
            "gaussian",
            "v.npy",
            one,
            "--sigma",
            "3",
            "--overwrite",
            "-q",
        ],
    );
    moto.ok(
        d,
        &["gaussian", "v.npy", "local3.zarr", "--sigma", "3", "-q"],
    );
    moto.ok(d, &["export", "local3.zarr", "-o", "l3.npy", "-q"]);
    moto.ok(d, &["export", one, "-o", "r3.npy", "-q"]);
    assert_eq!(
        std::fs::read(d.join("l3.npy")).unwrap(),
        std::fs::read(d.join("r3.npy")).unwrap()
    );
}

/// Rows of uint16 (an LCG), with an all-zero slab so that some chunks are fill value.
fn rows_npy(dir: &Path, name: &str, shape: &[u64], seed: u32) -> (PathBuf, Vec<u8>) {
    let plane: u64 = shape[1..].iter().product();
    let mut v = seed;
    let mut bytes = Vec::new();
    for i in 0..shape.iter().product::<u64>() {
        v = v.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let z = i / plane;
        let val: u16 = if (20..34).contains(&z) {
            0
        } else {
            ((v >> 16) % 4000) as u16
        };
        bytes.extend_from_slice(&val.to_le_bytes());
    }
    let p = dir.join(name);
    chunkwise::support::write_npy(&p, chunkwise::DType::U16, shape, &bytes).unwrap();
    (p, bytes)
}

/// The keys under `prefix` in `bucket` (an unsigned ListObjectsV2: moto accepts it).
fn keys(port: u16, bucket: &str, prefix: &str) -> Vec<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /{bucket}?list-type=2&prefix={prefix} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(
        !body.contains("<IsTruncated>true"),
        "more than one page of keys"
    );
    body.split("<Key>")
        .skip(1)
        .filter_map(|k| k.split_once("</Key>").map(|(k, _)| k.to_string()))
        .collect()
}

/// The array at `url` as raw bytes (exported by chunkwise) and its shape.
fn remote_bytes(moto: &Moto, d: &Path, url: &str) -> (Vec<u64>, Vec<u8>) {
    moto.ok(d, &["export", url, "-o", "got.npy", "-q", "--overwrite"]);
    let got = crate::common::read_npy(&d.join("got.npy"));
    (got.shape, got.bytes)
}

/// APPEND §5.3: append and concat on S3. The append's new chunks and re-encoded edge layer
/// are PUT in place and `zarr.json` last: killed at every step the array is the old one or the
/// new one (zarr-python agrees), the rerun completes or says "already done", a killed append
/// of other data leaves no stale object; concat copies S3 inputs' chunks server-side.
#[test]
fn append_and_concat_on_s3_commit_with_zarr_json_last() {
    crate::common::need_crash_points();
    let dir = tmp();
    let d = dir.path();
    let moto = Moto::start();
    moto.bucket("cw-grow");
    let (a, old) = rows_npy(d, "a.npy", &[37, 12, 10], 3);
    let (b, new) = rows_npy(d, "b.npy", &[50, 12, 10], 5);
    // Longer than b: a killed append of it leaves chunks past where b's append ends.
    let (other, _) = rows_npy(d, "other.npy", &[70, 12, 10], 9);
    let joined: Vec<u8> = [old.clone(), new.clone()].concat();
    chunkwise::support::write_npy(
        &d.join("ab.npy"),
        chunkwise::DType::U16,
        &[87, 12, 10],
        &joined,
    )
    .unwrap();
    let fresh = |url: &str| {
        moto.ok(
            d,
            &[
                "convert",
                a.to_str().unwrap(),
                "-o",
                url,
                "--chunks",
                "16,8,8",
                "--overwrite",
                "-q",
            ],
        );
    };
    let state = |url: &str, what: &str| -> usize {
        let (shape, bytes) = remote_bytes(&moto, d, url);
        if shape == [37, 12, 10] && bytes == old {
            0
        } else if shape == [87, 12, 10] && bytes == joined {
            1
        } else {
            panic!("{what}: neither the old nor the appended array ({shape:?})");
        }
    };
    let append = |url: &str, input: &Path| -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_chunkwise"));
        moto.env(&mut c);
        c.current_dir(d).args([
            "append",
            url,
            input.to_str().unwrap(),
            "--checkpoint-secs",
            "0",
        ]);
        c
    };
    // The whole append; zarr-python reads the result; a rerun is already done.
    let url = "s3://cw-grow/v.zarr";
    fresh(url);
    let o = append(url, &b).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(state(url, "appended"), 1);
    moto.zarr_python("read", url, &d.join("ab.npy"));
    let o = append(url, &b).output().unwrap();
    assert!(stdout(&o).contains("already done"), "{}", stdout(&o));
    // Killed at every step.
    for step in ["checkpointed", "staged", "journaled", "committed"] {
        let url = format!("s3://cw-grow/k-{step}.zarr");
        fresh(&url);
        let o = append(&url, &b)
            .env("CHUNKWISE_CRASH_AT", step)
            .output()
            .unwrap();
        assert!(!o.status.success(), "{step}: not killed");
        let committed = step == "committed";
        assert_eq!(
            state(&url, step),
            usize::from(committed),
            "killed at {step}"
        );
        let o = append(&url, &b).output().unwrap();
        assert!(o.status.success(), "{step}: {}", stderr(&o));
        let said = stdout(&o);
        assert_eq!(said.contains("already done"), committed, "{step}: {said}");
        if step == "checkpointed" {
            assert!(said.contains("resumed"), "{step}: {said}");
        }
        assert_eq!(state(&url, &format!("{step}, rerun")), 1);
    }
    // A killed append of other data: its chunks past the extent go with its record.
    let url = "s3://cw-grow/stale.zarr";
    fresh(url);
    let o = append(url, &other)
        .env("CHUNKWISE_CRASH_AT", "staged")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let o = append(url, &b).output().unwrap();
    assert!(
        o.status.success() && !stdout(&o).contains("resumed"),
        "{}",
        stdout(&o)
    );
    assert_eq!(state(url, "after a stale append"), 1);
    let names = |prefix: &str| -> Vec<String> {
        let mut k: Vec<String> = keys(moto.port, "cw-grow", prefix)
            .into_iter()
            .map(|k| k[prefix.len()..].to_string())
            .collect();
        k.sort();
        k
    };
    assert_eq!(
        names("stale.zarr/"),
        names("v.zarr/"),
        "objects left by the killed append"
    );
    // concat: S3 inputs' chunks copied server-side (none through here), a local one encoded.
    let o = moto.ok(
        d,
        &[
            "concat",
            "s3://cw-grow/v.zarr",
            "s3://cw-grow/v.zarr",
            "-o",
            "s3://cw-grow/vv.zarr",
            "--json",
        ],
    );
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(r["chunks_linked"].as_u64().unwrap() > 0, "{r}");
    let (shape, bytes) = remote_bytes(&moto, d, "s3://cw-grow/vv.zarr");
    assert_eq!(shape, [174, 12, 10]);
    assert_eq!(bytes, [joined.clone(), joined.clone()].concat());
    moto.ok(d, &["convert", b.to_str().unwrap(), "-o", "b.zarr", "-q"]);
    fresh("s3://cw-grow/a.zarr");
    moto.ok(
        d,
        &[
            "concat",
            "s3://cw-grow/a.zarr",
            "b.zarr",
            "-o",
            "s3://cw-grow/ab.zarr",
            "-q",
        ],
    );
    assert_eq!(remote_bytes(&moto, d, "s3://cw-grow/ab.zarr").1, joined);
    moto.zarr_python("read", "s3://cw-grow/ab.zarr", &d.join("ab.npy"));
    // concat --into an S3 array: an append of the stores.
    fresh("s3://cw-grow/into.zarr");
    moto.ok(
        d,
        &[
            "convert",
            b.to_str().unwrap(),
            "-o",
            "s3://cw-grow/b.zarr",
            "--chunks",
            "16,8,8",
            "-q",
        ],
    );
    moto.ok(
        d,
        &[
            "concat",
            "--into",
            "s3://cw-grow/into.zarr",
            "s3://cw-grow/b.zarr",
            "-q",
        ],
    );
    assert_eq!(remote_bytes(&moto, d, "s3://cw-grow/into.zarr").1, joined);
    // Not on S3: parts of an append (no locks), a rectilinear grid.
    let e = stderr(&moto.chunkwise(d, &["append", url, "b.npy", "--partition", "0/2"]));
    assert!(e.contains("one process"), "{e}");
    let e = stderr(&moto.chunkwise(
        d,
        &["append", url, "b.npy", "--layout", "rectilinear", "--again"],
    ));
    assert!(
        e.contains("rectilinear") && e.contains("not supported yet"),
        "{e}"
    );
    assert_eq!(state(url, "after refusals"), 1);
}

/// PYRAMID §3 on object storage: a pyramid with a label image written to S3 in parts (one by
/// one) and in one process equals the local pyramid level by level, in the same metadata;
/// nothing makes it an image before the last part (no group `zarr.json`), a part run again
/// says nothing to do, zarr-python reads its levels through the group, `status` describes
/// the parts, a gaussian pyramid in one process equals the local one and in parts is refused.
#[test]
fn pyramids_on_s3_in_parts_equal_local_ones() {
    let dir = tmp();
    let d = dir.path();
    let moto = Moto::start();
    moto.bucket("cw-pyr");
    let (_, bytes) = rows_npy(d, "v.npy", &[40, 24, 24], 11);
    let labels: Vec<u8> = bytes
        .chunks(2)
        .flat_map(|b| u32::from(u16::from_le_bytes([b[0], b[1]]) % 5).to_le_bytes())
        .collect();
    chunkwise::support::write_npy(
        &d.join("cells.npy"),
        chunkwise::DType::U32,
        &[40, 24, 24],
        &labels,
    )
    .unwrap();
    let args = |out: &str, extra: &[&str]| -> Vec<String> {
        [
            "pyramid",
            "v.npy",
            "-o",
            out,
            "--chunks",
            "8,8,8",
            "--levels",
            "3",
            "--factors",
            "2,2,2",
            "--name",
            "brain",
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
    };
    let lab = ["--labels", "cells=cells.npy"];
    moto.ok(d, &strs(&args("local.ome.zarr", &lab)));
    let local = |at: &str, l: usize| -> (PathBuf, Vec<u8>) {
        let out = d.join(format!("want-{}-{l}.npy", at.replace('/', "-")));
        moto.ok(
            d,
            &[
                "export",
                &format!("local.ome.zarr/{at}{l}"),
                "-o",
                out.to_str().unwrap(),
                "-q",
                "--overwrite",
            ],
        );
        let bytes = crate::common::read_npy(&out).bytes;
        (out, bytes)
    };
    let url = "s3://cw-pyr/img.ome.zarr";
    let o = moto.ok(
        d,
        &strs(&[args(url, &lab), vec!["--partition".into(), "1/2".into()]].concat()),
    );
    assert!(
        stdout(&o).contains("waiting for the other partitions"),
        "{}",
        stdout(&o)
    );
    let listed = keys(moto.port, "cw-pyr", "img.ome.zarr/");
    assert!(
        !listed.contains(&"img.ome.zarr/zarr.json".to_string()),
        "the image appeared before its last part: {listed:?}"
    );
    let st = moto.ok(d, &["status", "--json", url]);
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    let states: Vec<&str> = v["parts"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|p| p["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["missing", "done"], "{v}");
    let o = moto.ok(
        d,
        &strs(&[args(url, &lab), vec!["--partition".into(), "0/2".into()]].concat()),
    );
    assert!(stdout(&o).starts_with("wrote "), "{}", stdout(&o));
    let o = moto.ok(
        d,
        &strs(&[args(url, &lab), vec!["--partition".into(), "1/2".into()]].concat()),
    );
    assert!(stdout(&o).contains("nothing to do"), "{}", stdout(&o));
    let levels = d.join("levels");
    std::fs::create_dir(&levels).unwrap();
    for l in 0..3 {
        let (_, got) = remote_bytes(&moto, d, &format!("{url}/{l}"));
        let (file, want) = local("", l);
        assert!(got == want, "level {l}");
        std::fs::copy(file, levels.join(format!("{l}.npy"))).unwrap();
        let (_, got) = remote_bytes(&moto, d, &format!("{url}/labels/cells/{l}"));
        assert!(got == local("labels/cells/", l).1, "labels level {l}");
    }
    // zarr-python opens the group and reads its levels; the groups' metadata objects are
    // the local image's files byte for byte.
    moto.zarr_python_image(url, &levels, &d.join("local.ome.zarr"));
    // The image as an input (PYRAMID §4): `info` prints the pyramid, the image path reads
    // level 0.
    let info = stdout(&moto.ok(d, &["info", url]));
    assert!(
        info.contains("OME-Zarr 0.5 image") && info.contains("level 2 (2): 10x6x6 uint16"),
        "{info}"
    );
    assert!(remote_bytes(&moto, d, url).1 == local("", 0).1);
    // An append to the image there: refused, saying so (not "no shape").
    let o = moto.chunkwise(d, &["append", url, "v.npy"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("appending to an OME-Zarr image on object storage is not supported"),
        "{}",
        stderr(&o)
    );
    // Another pyramid into it: refused, the image kept.
    let o = moto.chunkwise(d, &strs(&args(url, &["--method", "mode"])));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("exists"), "{}", stderr(&o));
    assert!(remote_bytes(&moto, d, &format!("{url}/1")).1 == local("", 1).1);
    // `convert --pyramid` to S3 (one pass over the input): the same levels.
    let curl = "s3://cw-pyr/c.ome.zarr";
    moto.ok(
        d,
        &[
            "convert",
            "v.npy",
            "-o",
            curl,
            "--pyramid",
            "--chunks",
            "8,8,8",
            "--levels",
            "3",
            "--factors",
            "2,2,2",
            "-q",
        ],
    );
    for l in 0..3 {
        let (_, got) = remote_bytes(&moto, d, &format!("{curl}/{l}"));
        assert!(got == local("", l).1, "convert --pyramid level {l}");
    }
    // Gaussian: in one process, the local pyramid's levels; in parts, refused.
    let g = ["--method", "gaussian"];
    moto.ok(d, &strs(&args("g.ome.zarr", &g)));
    let gurl = "s3://cw-pyr/g.ome.zarr";
    // What a run killed while it made level 1 left there (no zarr.json): removed first.
    let stray = d.join("stray");
    std::fs::create_dir_all(stray.join("c/9/9")).unwrap();
    std::fs::write(stray.join("c/9/9/9"), b"left by a killed run").unwrap();
    upload(moto.port, "cw-pyr", "g.ome.zarr/1", &stray);
    moto.ok(d, &strs(&args(gurl, &g)));
    assert!(
        !keys(moto.port, "cw-pyr", "g.ome.zarr/1/").contains(&"g.ome.zarr/1/c/9/9/9".to_string())
    );
    for l in 0..3 {
        let (_, got) = remote_bytes(&moto, d, &format!("{gurl}/{l}"));
        moto.ok(
            d,
            &[
                "export",
                &format!("g.ome.zarr/{l}"),
                "-o",
                "gl.npy",
                "-q",
                "--overwrite",
            ],
        );
        assert!(
            got == crate::common::read_npy(&d.join("gl.npy")).bytes,
            "gaussian level {l}"
        );
    }
    let o = moto.chunkwise(
        d,
        &strs(
            &[
                args("s3://cw-pyr/g2.ome.zarr", &g),
                vec!["--partition".into(), "0/2".into()],
            ]
            .concat(),
        ),
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("partition"), "{}", stderr(&o));
    assert!(keys(moto.port, "cw-pyr", "g2.ome.zarr/").is_empty());
}
