//! Every writing command with the paths users give: absolute paths near the top of a filesystem
//! (`/data/volume.zarr`), relative paths, paths through symbolic links, stores on another
//! filesystem than their inputs (a tmpfs the test mounts), and as an ordinary user, not root.
//! Nothing may be created outside the outputs and their documented temporary names
//! (spec/FORMAT.md §6, spec/APPEND.md §4); results equal the same commands run in a plain
//! temporary directory, and joins equal numpy.concatenate.
//!
//! Regression tests for issue 17 (append and concat staged chunk files in `/` when the store's
//! absolute path had few components).

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use chunkwise::support::write_npy;
use chunkwise::{DType, Store};

use crate::common::{NOBODY, Tmpfs, run_in, stderr, store_bytes, tmp};

/// Names directly in `dir`.
fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Every path under `dir` that only a running writer may leave (staging directories, build and
/// replacement directories, temporary files, staged `~` names).
fn stray(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let p = e.path();
            let ours = name == ".chunkwise.lock" || name == ".chunkwise-journal.json";
            if (name.contains("chunkwise") && !ours) || name.contains('~') {
                out.push(p.clone());
            }
            if e.file_type().unwrap().is_dir() {
                todo.push(p);
            }
        }
    }
    out
}

fn u16s(n: usize, seed: u64) -> Vec<u8> {
    (0..n as u64)
        .flat_map(|k| {
            let mut h = (k + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed;
            h ^= h >> 29;
            // Zero bands so that some chunks are all fill value.
            let v = if (k / 4096) % 3 == 1 { 0 } else { h % 1000 };
            (v as u16).to_le_bytes()
        })
        .collect()
}

/// The inputs: a.npy (20x16x16), b.npy and c.npy (7x16x16) of uint16.
struct Inputs {
    dir: PathBuf,
    a: Vec<u8>,
    b: Vec<u8>,
    c: Vec<u8>,
}

fn inputs(dir: &Path) -> Inputs {
    let (a, b, c) = (u16s(20 * 256, 1), u16s(7 * 256, 2), u16s(7 * 256, 3));
    write_npy(&dir.join("a.npy"), DType::U16, &[20, 16, 16], &a).unwrap();
    write_npy(&dir.join("b.npy"), DType::U16, &[7, 16, 16], &b).unwrap();
    write_npy(&dir.join("c.npy"), DType::U16, &[7, 16, 16], &c).unwrap();
    Inputs {
        dir: dir.to_path_buf(),
        a,
        b,
        c,
    }
}

/// The outputs of [`every_writer`], relative to the place they were written.
const STORES: [&str; 6] = ["s.zarr", "b.zarr", "ab.zarr", "st.zarr", "g.zarr", "m.zarr"];
const FILES: [&str; 4] = ["w.npy", "e.npy", "x.npy", "stats.npy"];
/// The OME-Zarr images of [`every_writer`], two levels each.
const IMAGES: [&str; 2] = ["p.ome.zarr", "gp.ome.zarr"];

/// Runs every writing command with outputs named by `at(NAME)` (absolute, relative or through
/// links), inputs from `inp`, in `cwd`, as `user`.
fn every_writer(
    bin: &Path,
    cwd: &Path,
    user: Option<u32>,
    inp: &Path,
    at: &dyn Fn(&str) -> String,
) {
    let i = |n: &str| inp.join(n).to_str().unwrap().to_string();
    let (s, b, c) = (at("s.zarr"), at("b.zarr"), at("c.zarr"));
    let pyr = |out: &str, extra: &[&str], part: &str| -> Vec<String> {
        [
            "pyramid",
            &s,
            "-o",
            out,
            "--chunks",
            "8,8,8",
            "--levels",
            "2",
            "--factors",
            "2,2,2",
            "--partition",
            part,
        ]
        .iter()
        .chain(extra)
        .map(|a| a.to_string())
        .collect()
    };
    let steps: Vec<Vec<String>> = vec![
        vec![
            "convert".into(),
            i("a.npy"),
            "-o".into(),
            s.clone(),
            "--chunks".into(),
            "8,8,8".into(),
        ],
        // Fills the partial edge layer: staged in place (the path issue 17 broke).
        vec!["append".into(), s.clone(), i("b.npy")],
        vec![
            "convert".into(),
            i("b.npy"),
            "-o".into(),
            b.clone(),
            "--chunks".into(),
            "8,8,8".into(),
        ],
        vec![
            "convert".into(),
            i("c.npy"),
            "-o".into(),
            c.clone(),
            "--chunks".into(),
            "8,8,8".into(),
        ],
        vec![
            "concat".into(),
            s.clone(),
            b.clone(),
            "-o".into(),
            at("ab.zarr"),
        ],
        // Rectilinear in place: the directory is rebuilt beside the store and exchanged.
        vec![
            "concat".into(),
            "--into".into(),
            s.clone(),
            b.clone(),
            "--layout".into(),
            "rectilinear".into(),
        ],
        vec![
            "stack".into(),
            b.clone(),
            c.clone(),
            "-o".into(),
            at("st.zarr"),
        ],
        vec![
            "gaussian".into(),
            s.clone(),
            at("g.zarr"),
            "--sigma".into(),
            "1".into(),
        ],
        vec![
            "threshold".into(),
            s.clone(),
            at("m.zarr"),
            "--above".into(),
            "500".into(),
        ],
        vec![
            "where".into(),
            s.clone(),
            "-o".into(),
            at("w.npy"),
            "--above".into(),
            "900".into(),
        ],
        vec!["graph".into(), at("m.zarr"), "-o".into(), at("e.npy")],
        vec![
            "export".into(),
            s.clone(),
            "-o".into(),
            at("x.npy"),
            "--region".into(),
            "2:30,3:9,:".into(),
        ],
        vec![
            "stats".into(),
            s.clone(),
            "--axis".into(),
            "0".into(),
            "-o".into(),
            at("stats.npy"),
        ],
        // An OME-Zarr pyramid in two parts (its build beside the output, locks, the last
        // part renaming it into place), grown by an append; a gaussian one in parts (the
        // levels below level 0 made under a lock in the build).
        pyr(&at("p.ome.zarr"), &[], "1/2"),
        pyr(&at("p.ome.zarr"), &[], "0/2"),
        vec!["append".into(), at("p.ome.zarr"), i("c.npy")],
        pyr(&at("gp.ome.zarr"), &["--method", "gaussian"], "0/2"),
        pyr(&at("gp.ome.zarr"), &["--method", "gaussian"], "1/2"),
        // Replacing an array (through a link, in the link mode) keeps the path valid throughout.
        vec![
            "convert".into(),
            i("c.npy"),
            "-o".into(),
            c.clone(),
            "--chunks".into(),
            "4,8,8".into(),
            "--overwrite".into(),
        ],
    ];
    for args in &steps {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_in(bin, cwd, user, &args);
    }
}

/// A region write into `ab.zarr` (the library's writer: staged inside the store, renamed).
fn region_write(store: &Path) {
    let s = Store::open(store).unwrap_or_else(|e| panic!("{}: {e}", store.display()));
    let block = ndarray::ArrayD::<u16>::from_elem(ndarray::IxDyn(&[5, 9, 3]), 4242);
    s.write_region(
        &chunkwise::Region::new(vec![17..22, 4..13, 2..5]),
        block.view(),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", store.display()));
}

/// What [`every_writer`] wrote under `base` (stores read whole, files as bytes).
fn results(base: &Path) -> Vec<(String, Vec<u64>, Vec<u8>)> {
    let mut out = Vec::new();
    for n in STORES.iter().chain(&["c.zarr"]) {
        let s = Store::open(base.join(n)).unwrap_or_else(|e| panic!("{n}: {e}"));
        out.push((n.to_string(), s.shape().to_vec(), store_bytes(&s)));
    }
    for n in FILES {
        let bytes = std::fs::read(base.join(n))
            .unwrap_or_else(|e| panic!("{}: {e}", base.join(n).display()));
        out.push((n.to_string(), Vec::new(), bytes));
    }
    for n in IMAGES {
        for l in ["0", "1"] {
            let s = Store::open(base.join(n).join(l)).unwrap_or_else(|e| panic!("{n}/{l}: {e}"));
            out.push((format!("{n}/{l}"), s.shape().to_vec(), store_bytes(&s)));
        }
        let meta = base.join(n).join("zarr.json");
        let bytes = std::fs::read(&meta).unwrap_or_else(|e| panic!("{}: {e}", meta.display()));
        out.push((format!("{n}/zarr.json"), Vec::new(), bytes));
    }
    out
}

/// numpy.concatenate([a, b, b]) and numpy.stack([b, c]), on bytes (`ab.zarr` also gets a
/// region write, and is compared with the plain run's).
fn check_joins(base: &Path, inp: &Inputs, what: &str) {
    let abb: Vec<u8> = [&inp.a[..], &inp.b, &inp.b].concat();
    let s = Store::open(base.join("s.zarr")).unwrap();
    assert_eq!(s.shape(), &[34, 16, 16], "{what}");
    assert!(
        store_bytes(&s) == abb,
        "{what}: s.zarr is not numpy.concatenate([a, b, b])"
    );
    let st = Store::open(base.join("st.zarr")).unwrap();
    assert_eq!(st.shape(), &[2, 7, 16, 16], "{what}");
    assert!(
        store_bytes(&st) == [&inp.b[..], &inp.c].concat(),
        "{what}: stack"
    );
}

/// Issue 17 and 18.3: absolute paths a few components deep on a tmpfs (inputs on the root
/// filesystem), relative paths, and paths through links to the store and to its directory
/// give the same results as a plain run, create nothing outside the outputs (`/` included),
/// and leave no staging or temporary files; links stay links.
#[test]
fn every_writer_stays_inside_its_outputs_whatever_the_path() {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_chunkwise"));
    let input_dir = tmp();
    let inp = inputs(input_dir.path());
    // The reference: the same commands in a plain temporary directory.
    let plain = tmp();
    let p = plain.path().to_path_buf();
    every_writer(&bin, &p, None, &inp.dir, &|n| {
        p.join(n).to_str().unwrap().into()
    });
    check_joins(&p, &inp, "plain");
    region_write(&p.join("ab.zarr"));
    let want = results(&p);

    let root_before = names(Path::new("/"));
    let inputs_before = names(&inp.dir);
    let fs = Tmpfs::mount("paths");
    let m = fs.path.clone();
    // Absolute: /cwfs-N-paths/s.zarr/c/2/0/0 has seven components.
    let abs = m.join("abs");
    std::fs::create_dir(&abs).unwrap();
    every_writer(&bin, Path::new("/"), None, &inp.dir, &|n| {
        abs.join(n).to_str().unwrap().into()
    });
    // Relative, from the working directory.
    let rel = m.join("rel");
    std::fs::create_dir(&rel).unwrap();
    every_writer(&bin, &rel, None, &inp.dir, &|n| n.into());
    // Through links: the directory is a link, and each store is a link into it.
    let real = m.join("real");
    std::fs::create_dir(&real).unwrap();
    std::os::unix::fs::symlink("real", m.join("dirlink")).unwrap();
    let links = m.join("links");
    std::fs::create_dir(&links).unwrap();
    for n in STORES
        .iter()
        .chain(&["c.zarr"])
        .chain(&FILES)
        .chain(&IMAGES)
    {
        std::os::unix::fs::symlink(format!("../dirlink/{n}"), links.join(n)).unwrap();
    }
    every_writer(&bin, &m, None, &inp.dir, &|n| format!("links/{n}"));
    region_write(&abs.join("ab.zarr"));
    region_write(&rel.join("ab.zarr"));
    region_write(&links.join("ab.zarr"));
    for (what, dir) in [("absolute", &abs), ("relative", &rel), ("links", &real)] {
        assert_eq!(
            results(dir),
            want,
            "{what}: results differ from the plain run"
        );
        check_joins(dir, &inp, what);
        let left = stray(dir);
        assert!(left.is_empty(), "{what}: left behind {left:?}");
    }
    for n in STORES
        .iter()
        .chain(&["c.zarr"])
        .chain(&FILES)
        .chain(&IMAGES)
    {
        let l = std::fs::symlink_metadata(links.join(n)).unwrap();
        assert!(l.file_type().is_symlink(), "{n}: the link was replaced");
    }
    let extra: Vec<String> = names(&m)
        .into_iter()
        .filter(|n| !["abs", "rel", "real", "dirlink", "links"].contains(&n.as_str()))
        .collect();
    assert!(extra.is_empty(), "beside the outputs: {extra:?}");
    let new_in_root: Vec<String> = names(Path::new("/"))
        .difference(&root_before)
        .filter(|n| !n.starts_with("cwfs-"))
        .cloned()
        .collect();
    assert!(new_in_root.is_empty(), "created in /: {new_in_root:?}");
    assert_eq!(
        names(&inp.dir),
        inputs_before,
        "the inputs' directory changed"
    );
}

/// Issue 17 as an ordinary user: a write outside the store (in `/`, where only root may write)
/// fails loudly instead of passing because the tests run as root. The store lives on a tmpfs
/// owned by the user, the inputs on the root filesystem.
#[test]
fn every_writer_works_as_an_ordinary_user() {
    let fs = Tmpfs::mount("user");
    let m = fs.path.clone();
    // The binary and inputs where the user can reach them (the build tree may not be).
    let bin = crate::common::user_binary(&m);
    let input_dir = tmp();
    std::fs::set_permissions(input_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let inp = inputs(input_dir.path());
    for n in ["a.npy", "b.npy", "c.npy"] {
        let p = inp.dir.join(n);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let work = m.join("w");
    std::fs::create_dir(&work).unwrap();
    let o = Command::new("chown")
        .arg(format!("{NOBODY}:{NOBODY}"))
        .arg(&work)
        .output()
        .unwrap();
    assert!(o.status.success(), "chown: {}", stderr(&o));
    every_writer(&bin, &work, Some(NOBODY), &inp.dir, &|n| {
        work.join(n).to_str().unwrap().into()
    });
    check_joins(&work, &inp, "as nobody");
    let left = stray(&work);
    assert!(left.is_empty(), "left behind {left:?}");
}
