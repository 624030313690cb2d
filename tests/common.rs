//! Helpers shared by the integration tests: fixture paths, expected arrays, the binary, Python.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chunkwise::{DType, Region, Store};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A path under fixtures/.
pub fn fixture(rel: &str) -> PathBuf {
    root().join("fixtures").join(rel)
}

/// An array read from an .npy file: type, shape and little-endian C-order bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub bytes: Vec<u8>,
}

/// Reads a C-order little-endian .npy file (the expected arrays numpy wrote in fixtures/).
pub fn read_npy(path: &Path) -> Expected {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let h = chunkwise::support::parse_npy_header(&data, path).expect("valid npy");
    assert!(
        !h.fortran_order && !h.big_endian,
        "expected arrays are C-order little-endian"
    );
    let bytes = data[h.data_offset as usize..].to_vec();
    assert_eq!(bytes.len() as u128, h.data_len(), "{}", path.display());
    Expected {
        dtype: h.dtype,
        shape: h.shape,
        bytes,
    }
}

/// The expected array of fixture `name` (fixtures/expected/NAME.npy).
pub fn expected(name: &str) -> Expected {
    read_npy(&fixture(&format!("expected/{name}.npy")))
}

/// Reads a whole store as raw bytes.
pub fn store_bytes(store: &Store) -> Vec<u8> {
    let region = Region::full(store.shape());
    let n = store.shape().iter().product::<u64>() as usize * store.dtype().size();
    let mut buf = vec![0u8; n];
    store
        .read_region_into(&region, &mut buf)
        .expect("read store");
    buf
}

/// Asserts a store holds exactly the expected array (type, shape and every byte).
pub fn assert_store_eq(store: &Store, want: &Expected) {
    assert_eq!(store.dtype(), want.dtype, "{}", store.path().display());
    assert_eq!(store.shape(), &want.shape[..], "{}", store.path().display());
    let got = store_bytes(store);
    if got != want.bytes {
        let first = got
            .iter()
            .zip(&want.bytes)
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        panic!(
            "{}: data differs from the expected array, first at byte {first}",
            store.path().display()
        );
    }
}

/// A fresh temporary directory.
pub fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("chunkwise-test-")
        .tempdir()
        .expect("temp dir")
}

/// Runs the chunkwise binary.
pub fn chunkwise(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chunkwise"))
        .args(args)
        .output()
        .expect("run chunkwise")
}

/// The text of stderr.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The text of stdout.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The Python with zarr-python that the interop tests run: $CHUNKWISE_PYTHON, or the venv
/// `bash .ci/run` creates at .venv/. Missing is a failure, never a skip.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("CHUNKWISE_PYTHON") {
        return PathBuf::from(p);
    }
    let p = root().join(".venv/bin/python");
    assert!(
        p.exists(),
        "the interop tests need Python with numpy and zarr: run `bash .ci/run` (it creates \
         .venv/) or set CHUNKWISE_PYTHON"
    );
    p
}

/// Runs a script from tests/python with arguments; panics with its output if it fails.
pub fn run_python(script: &str, args: &[&Path]) -> String {
    let out = Command::new(python())
        .arg(root().join("tests/python").join(script))
        .args(args)
        .output()
        .expect("run python");
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(out.status.success(), "{script} failed:\n{text}");
    text
}

/// A tmpfs mounted for the test at a directory directly under `/` (`/cwfs-PID-N`), so that a
/// store in it has an absolute path of few components, on another filesystem than `/` and
/// than the inputs. Unmounted and removed on drop.
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    /// A tmpfs room enough for the tests' stores and a copy of the debug binary (which some
    /// tests run from it, as an ordinary user: ~270 MB with its debug info). A tmpfs takes
    /// memory only for what is written.
    pub fn mount(tag: &str) -> Tmpfs {
        Tmpfs::mount_sized(tag, "1g")
    }

    /// A tmpfs of `size` bytes (`mount -o size=`), to fill up on purpose.
    pub fn mount_sized(tag: &str, size: &str) -> Tmpfs {
        assert!(
            is_root(),
            "these tests mount a tmpfs and switch to an ordinary user: run them as root (CI \
             does), e.g. `sudo -E cargo test`"
        );
        let path = PathBuf::from(format!("/cwfs-{}-{tag}", std::process::id()));
        let _ = Command::new("umount").arg(&path).output();
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).unwrap();
        let o = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0777"),
                "tmpfs",
            ])
            .arg(&path)
            .output()
            .expect("run mount");
        assert!(
            o.status.success(),
            "mounting a tmpfs at {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&o.stderr)
        );
        Tmpfs { path }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).output();
        let _ = std::fs::remove_dir(&self.path);
    }
}

pub fn is_root() -> bool {
    let o = Command::new("id").arg("-u").output().expect("run id");
    String::from_utf8_lossy(&o.stdout).trim() == "0"
}

/// The ordinary user the non-root runs use.
pub const NOBODY: u32 = 65534;

/// Runs chunkwise (`bin`) in `cwd`, as `user` (`None`: as ourselves); its output.
pub fn run_as(bin: &Path, cwd: &Path, user: Option<u32>, args: &[&str]) -> Output {
    let mut c = match user {
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={uid}"))
                .arg("--clear-groups")
                .arg(bin);
            c
        }
        None => Command::new(bin),
    };
    c.args(args)
        .current_dir(cwd)
        .output()
        .expect("run chunkwise")
}

/// As [`run_as`]; panics with stderr on failure.
pub fn run_in(bin: &Path, cwd: &Path, user: Option<u32>, args: &[&str]) {
    let o = run_as(bin, cwd, user, args);
    assert!(
        o.status.success(),
        "chunkwise {} (in {}, user {user:?}): {}",
        args.join(" "),
        cwd.display(),
        stderr(&o)
    );
}

/// A copy of the chunkwise binary in `dir`, where an ordinary user can run it (the build tree
/// may not be reachable).
pub fn user_binary(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("chunkwise");
    std::fs::copy(env!("CARGO_BIN_EXE_chunkwise"), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// Opens a path as an [`chunkwise::Input`] (panicking with the error: a test's own setup).
pub fn input(p: impl AsRef<Path>) -> chunkwise::Input {
    let p = p.as_ref();
    chunkwise::Input::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// [`input`] of each path.
pub fn inputs<P: AsRef<Path>>(ps: &[P]) -> Vec<chunkwise::Input> {
    ps.iter().map(input).collect()
}

/// The kill tests stop writers at named steps, which only a build with the `crash-points`
/// feature has (`bash .ci/run` enables it).
pub fn need_crash_points() {
    if !cfg!(feature = "crash-points") {
        panic!(
            "this test stops writers at named steps: run it with `cargo test --features \
             crash-points` (as `bash .ci/run` does)"
        );
    }
}

/// Runs the chunkwise binary and returns its peak resident memory in bytes (the kernel's
/// `ru_maxrss` of that one child, from `wait4`) with its stdout.
#[allow(
    clippy::zombie_processes,
    reason = "the child is reaped by wait4, which also returns its resource usage"
)]
pub fn peak_rss(args: &[&str], dir: &std::path::Path) -> (u64, String) {
    use std::process::{Command, Stdio};
    let log = dir.join("stdout.txt");
    let child = Command::new(env!("CARGO_BIN_EXE_chunkwise"))
        .args(args)
        .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run chunkwise");
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value for wait4 to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child, with pointers to live locals.
    let got = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(got, pid, "wait4: {}", std::io::Error::last_os_error());
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "chunkwise {args:?} failed ({status})"
    );
    let out = std::fs::read_to_string(&log).unwrap();
    (u64::try_from(usage.ru_maxrss).unwrap() * 1024, out)
}

/// A path as text (the tests' paths are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `n` uint16 values in `lo..lo + span` (a hash of the index).
pub fn u16s(n: usize, seed: u64, lo: u16, span: u16) -> Vec<u8> {
    (0..n as u64)
        .flat_map(|k| {
            let mut h = (k + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed;
            h ^= h >> 31;
            (lo + (h % u64::from(span)) as u16).to_le_bytes()
        })
        .collect()
}

/// Writes an `.npy` file in `dir`; its path.
pub fn npy(dir: &Path, name: &str, dtype: DType, shape: &[u64], bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    chunkwise::support::write_npy(&p, dtype, shape, bytes).unwrap();
    p
}

/// Asserts a run succeeded, showing its stderr if not.
pub fn ok(o: &Output, what: &str) {
    assert!(o.status.success(), "{what}: {}", stderr(o));
}
