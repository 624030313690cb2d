//! `verify` and corrupt chunks: bad chunks are named by key, on verify and on read
//! (spec/FORMAT.md "Checksums", spec/CLI.md "verify").

use chunkwise::{ConvertOptions, ExportOptions, Store};

use crate::common::{chunkwise, fixture, stderr, stdout, tmp};

fn make_store(dir: &std::path::Path, checksum: bool) -> std::path::PathBuf {
    let out = dir.join("v.zarr");
    chunkwise::convert(
        &crate::common::input(fixture("inputs/stack_u16")),
        &out,
        &ConvertOptions::default()
            .chunks(Some(vec![4, 16, 16]))
            .checksum(checksum),
    )
    .unwrap();
    out
}

fn flip_byte(path: &std::path::Path, at_fraction: f64) {
    let mut b = std::fs::read(path).unwrap();
    let i = ((b.len() as f64) * at_fraction) as usize;
    b[i] ^= 0x5a;
    std::fs::write(path, b).unwrap();
}

#[test]
fn good_store_verifies() {
    let dir = tmp();
    let store = make_store(dir.path(), true);
    let r = chunkwise::verify(&store, &chunkwise::RunOptions::default()).unwrap();
    assert!(r.ok());
    assert_eq!(r.chunks_total, 3 * 2 * 4);
    let o = chunkwise(&["verify", store.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    for name in [
        "zarr_python_v3_gzip_crc",
        "tensorstore_v3_sharded",
        "zarr_python_v2_blosc",
    ] {
        let r = chunkwise::verify(
            fixture(&format!("stores/{name}.zarr")),
            &chunkwise::RunOptions::default(),
        )
        .unwrap();
        assert!(r.ok(), "{name}: {:?}", r.bad);
    }
}

#[test]
fn checksum_mismatch_is_named() {
    let dir = tmp();
    let store = make_store(dir.path(), true);
    // Flip one byte in the middle of the payload: only the crc32c can catch some flips.
    flip_byte(&store.join("c/1/0/2"), 0.5);
    let r = chunkwise::verify(&store, &chunkwise::RunOptions::default()).unwrap();
    assert_eq!(r.bad.len(), 1, "{:?}", r.bad);
    assert_eq!(r.bad[0].key, "c/1/0/2");
    let o = chunkwise(&["verify", store.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("c/1/0/2"), "{}", stdout(&o));
}

#[test]
fn truncated_chunk_is_named_on_verify_and_export() {
    let dir = tmp();
    let store = make_store(dir.path(), false);
    let chunk = store.join("c/2/1/3");
    let b = std::fs::read(&chunk).unwrap();
    std::fs::write(&chunk, &b[..b.len() / 3]).unwrap();
    let r = chunkwise::verify(&store, &chunkwise::RunOptions::default()).unwrap();
    assert_eq!(
        r.bad.iter().map(|b| b.key.as_str()).collect::<Vec<_>>(),
        vec!["c/2/1/3"]
    );

    let out = dir.path().join("e.npy");
    let err = chunkwise::export(
        &crate::common::input(&store),
        &out,
        &ExportOptions::default(),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("c/2/1/3"), "{msg}");
    assert!(!out.exists());
    // A region that avoids the bad chunk still exports.
    chunkwise::export(
        &crate::common::input(&store),
        &out,
        &ExportOptions::default().region(Some("0:4".into())),
    )
    .unwrap();
    let o = chunkwise(&[
        "export",
        store.to_str().unwrap(),
        "-o",
        dir.path().join("f.npy").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("c/2/1/3"), "{}", stderr(&o));
    // Reading through the library names the chunk too.
    let s = Store::open(&store).unwrap();
    let e = s.read_all::<u16>().unwrap_err();
    assert!(e.to_string().contains("c/2/1/3"));
}
