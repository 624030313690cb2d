//! Instrument TIFFs (spec/CLI.md "TIFF inputs"): BigTIFF, tiled and strip TIFFs, LZW, deflate,
//! zstd and PackBits with and without predictors, OME-TIFFs with time and channel axes,
//! physical sizes and several series (`--series`), multi-file and companion-file OME-TIFF
//! datasets, and a page of another size refused. The fixtures and their
//! expected arrays are tifffile's (fixtures/make_tiff_fixtures.py, listed in
//! fixtures/tiff/manifest.json).

use std::path::Path;

use chunkwise::{ConvertOptions, Input, RawOptions, Region, Store};

use crate::common::{chunkwise, fixture, read_npy, stderr, stdout, store_bytes, tmp};

fn manifest() -> Vec<serde_json::Value> {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("tiff/manifest.json")).unwrap()).unwrap();
    m["files"].as_array().unwrap().clone()
}

fn open(path: &Path, series: Option<usize>) -> chunkwise::Result<Input> {
    Input::open_all(
        &[path.to_path_buf()],
        &RawOptions {
            series,
            ..Default::default()
        },
    )
}

fn attributes(store: &Path) -> serde_json::Value {
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("zarr.json")).unwrap()).unwrap();
    meta["attributes"].clone()
}

fn dimension_names(store: &Path) -> serde_json::Value {
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("zarr.json")).unwrap()).unwrap();
    meta["dimension_names"].clone()
}

#[test]
fn instrument_tiffs_read_as_tifffile_reads_them() {
    let dir = tmp();
    let files = manifest();
    assert!(files.len() >= 15);
    let mut checked = 0;
    let mut failures = Vec::new();
    for e in &files {
        let name = e["file"].as_str().unwrap();
        let path = fixture(&format!("tiff/{name}"));
        let series = e["series"].as_u64().map(|s| s as usize);
        if let Some(err) = e["error"].as_str() {
            let msg = open(&path, series).err().map(|e| e.to_string());
            let msg = msg.unwrap_or_else(|| panic!("{name}: opened, though it is refused"));
            assert!(msg.contains(err) && msg.contains(name), "{name}: {msg}");
            continue;
        }
        let want = read_npy(&fixture(&format!(
            "tiff/{}",
            e["expected"].as_str().unwrap()
        )));
        let input = match open(&path, series) {
            Ok(i) => i,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        assert_eq!(input.shape(), &want.shape[..], "{name}");
        assert_eq!(input.dtype(), want.dtype, "{name}");
        let mut got = vec![0u8; want.bytes.len()];
        if let Err(e) = input.read_region_into(&Region::full(input.shape()), &mut got) {
            failures.push(format!("{name}: {e}"));
            continue;
        }
        if got != want.bytes {
            failures.push(format!("{name}: values differ from tifffile's"));
            continue;
        }
        // Converted: the same values, and the OME axes as dimension names.
        let out = dir.path().join(format!("{checked}.zarr"));
        let chunks: Vec<u64> = want.shape.iter().map(|&n| n.div_ceil(2)).collect();
        chunkwise::convert(
            &input,
            &out,
            &ConvertOptions::default().chunks(Some(chunks)),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let store = Store::open(&out).unwrap();
        let mut back = vec![0u8; want.bytes.len()];
        store
            .read_region_into(&Region::full(store.shape()), &mut back)
            .unwrap();
        assert!(back == want.bytes, "{name}: converted values differ");
        if e["ome"] == true {
            assert_eq!(dimension_names(&out), e["axes"], "{name}");
            // The physical sizes as the array's attributes (FORMAT §2), in UDUNITS-2 names.
            let attrs = attributes(&out);
            if e.get("voxel_size").is_some() {
                assert_eq!(attrs["chunkwise"]["voxel_size"], e["voxel_size"], "{name}");
                assert_eq!(attrs["chunkwise"]["units"], e["units"], "{name}");
            } else {
                assert!(attrs["chunkwise"].is_null(), "{name}: {attrs}");
            }
            assert!(
                input.describe().contains("OME-TIFF"),
                "{}",
                input.describe()
            );
        }
        checked += 1;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked >= 13, "only {checked} files read");
}

/// Blocks narrower than a page (a budget of one chunk, chunks a third of a page wide and
/// high): each block decodes only the strips or tiles it overlaps, and a block's rows of an
/// uncompressed strip are read from the file where they are stored. Every readable fixture
/// converts to tifffile's values.
#[test]
fn blocks_smaller_than_a_page_read_tifffiles_values() {
    let dir = tmp();
    let mut checked = 0;
    for e in manifest() {
        let name = e["file"].as_str().unwrap();
        if e["error"].is_string() {
            continue;
        }
        let path = fixture(&format!("tiff/{name}"));
        let series = e["series"].as_u64().map(|s| s as usize);
        let want = read_npy(&fixture(&format!(
            "tiff/{}",
            e["expected"].as_str().unwrap()
        )));
        let input = open(&path, series).unwrap_or_else(|e| panic!("{name}: {e}"));
        let nd = want.shape.len();
        let mut chunks: Vec<u64> = want.shape.iter().map(|&n| n.div_ceil(2)).collect();
        chunks[nd - 2] = want.shape[nd - 2].div_ceil(3);
        chunks[nd - 1] = want.shape[nd - 1].div_ceil(3);
        let chunk_bytes = chunks.iter().product::<u64>() * want.dtype.size() as u64;
        let out = dir.path().join(format!("{checked}.zarr"));
        chunkwise::convert(
            &input,
            &out,
            &ConvertOptions::default()
                .chunks(Some(chunks))
                .memory(Some(2 * chunk_bytes)),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let back = store_bytes(&Store::open(&out).unwrap());
        assert!(
            back == want.bytes,
            "{name}: converted by small blocks, values differ"
        );
        checked += 1;
    }
    assert!(checked >= 13, "only {checked} files read");
}

#[test]
fn series_and_axes_from_the_command_line() {
    let dir = tmp();
    let two = fixture("tiff/two_series.ome.tif");
    let out = dir.path().join("s1.zarr");
    let o = chunkwise(&[
        "convert",
        two.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--series",
        "1",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let store = Store::open(&out).unwrap();
    assert_eq!(store.shape(), &[2, 2, 11, 13]);
    assert_eq!(
        dimension_names(&out),
        serde_json::json!(["t", "c", "y", "x"])
    );
    let info = chunkwise(&["info", two.to_str().unwrap(), "--series", "1"]);
    // `info` takes no --series (it describes stores); the convert above is the interface.
    assert!(!info.status.success());
    // Explicit --axis-names win over the OME-XML's.
    let out2 = dir.path().join("named.zarr");
    let o = chunkwise(&[
        "convert",
        fixture("tiff/cyx.ome.tif").to_str().unwrap(),
        "-o",
        out2.to_str().unwrap(),
        "--axis-names",
        "ch,row,col",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        dimension_names(&out2),
        serde_json::json!(["ch", "row", "col"])
    );
    // --series beyond the file's, on a plain TIFF, or on a store: one clear error, no output.
    for (input, series, want) in [
        (
            two.clone(),
            "5",
            "series 5 asked for, the OME-TIFF holds 2 (0 to 1)",
        ),
        (fixture("tiff/bigtiff_u16.tif"), "1", "not an OME-TIFF"),
        (out.clone(), "0", "is not one"),
    ] {
        let bad = dir.path().join("bad.zarr");
        let o = chunkwise(&[
            "convert",
            input.to_str().unwrap(),
            "-o",
            bad.to_str().unwrap(),
            "--series",
            series,
        ]);
        assert!(!o.status.success());
        assert!(stderr(&o).contains(want), "{}", stderr(&o));
        assert!(!bad.exists());
    }
    let _ = stdout;
}

#[test]
fn a_page_of_another_size_is_named() {
    let o = chunkwise(&["info", fixture("tiff/mixed_sizes.tif").to_str().unwrap()]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("mixed_sizes.tif page 2") && e.contains("21x24"),
        "{e}"
    );
}

/// An OME-TIFF's physical sizes travel (FORMAT §2, PYRAMID §1): `info` shows them, a kernel's
/// output keeps them, and a pyramid of the converted array takes them as level 0's scale and
/// its axes' units, with the OME-TIFF's axis names; `--voxel-size`/`--units` given to
/// convert win, and wrong ones are refused naming the values, with nothing written.
#[test]
fn physical_sizes_reach_the_attributes_the_pyramid_and_info() {
    let dir = tmp();
    let tif = fixture("tiff/tzyx_physical.ome.tif");
    let entry = manifest()
        .into_iter()
        .find(|e| e["file"] == "tzyx_physical.ome.tif")
        .unwrap();
    let p = |x: &Path| x.to_str().unwrap().to_string();
    let store = dir.path().join("t.zarr");
    let o = chunkwise(&["convert", &p(&tif), "-o", &p(&store), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let info = stdout(&chunkwise(&["info", &p(&store)]));
    assert!(
        info.contains(
            "voxel size:  1.5 minute x 2500 nanometer x 0.325 micrometer x 0.325 micrometer"
        ),
        "{info}"
    );
    let smooth = dir.path().join("g.zarr");
    let o = chunkwise(&[
        "gaussian",
        &p(&store),
        &p(&smooth),
        "--sigma",
        "1",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        attributes(&smooth)["chunkwise"]["voxel_size"],
        entry["voxel_size"]
    );
    let image = dir.path().join("t.ome.zarr");
    let o = chunkwise(&["pyramid", &p(&store), "-o", &p(&image), "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let img = chunkwise::Image::open(&image).unwrap();
    let names: Vec<&str> = img.axes().iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["t", "z", "y", "x"]);
    let units: Vec<serde_json::Value> = img
        .axes()
        .iter()
        .map(|a| serde_json::json!(a.unit))
        .collect();
    assert_eq!(serde_json::Value::from(units), entry["units"]);
    assert_eq!(
        serde_json::json!(img.levels()[0].scale),
        entry["voxel_size"]
    );
    // Given on the command line: they win (an empty unit is none).
    let given = dir.path().join("given.zarr");
    let o = chunkwise(&[
        "convert",
        &p(&tif),
        "-o",
        &p(&given),
        "--quiet",
        "--voxel-size",
        "2,1,0.5,0.5",
        "--units",
        "second,,nanometer,nanometer",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        attributes(&given)["chunkwise"],
        serde_json::json!({"voxel_size": [2.0, 1.0, 0.5, 0.5],
                           "units": ["second", null, "nanometer", "nanometer"]})
    );
    for (flag, value, want) in [
        ("--voxel-size", "1,2", "2 given for 4 axes"),
        ("--voxel-size", "1,0,1,1", "0 is not a positive size"),
        (
            "--units",
            "parsecs,,,",
            "\"parsecs\" is not one of OME-Zarr's UDUNITS",
        ),
    ] {
        let bad = dir.path().join("bad.zarr");
        let o = chunkwise(&["convert", &p(&tif), "-o", &p(&bad), flag, value]);
        assert_eq!(o.status.code(), Some(2), "{flag} {value}");
        assert!(stderr(&o).contains(want), "{flag} {value}: {}", stderr(&o));
        assert!(!bad.exists());
    }
}

/// CLI "TIFF inputs": a multi-file OME-TIFF reads whole from any of its files (each carries the
/// whole OME-XML; the others are found beside it), given by a relative path from its own
/// directory too; `info` says how many files; a job on it knows every file (its fingerprint
/// changes when one of them does).
#[test]
fn a_multi_file_ome_tiff_reads_whole_from_any_of_its_files() {
    let dir = tmp();
    let want = read_npy(&fixture("tiff/multi_0.npy"));
    // Copied, so that a file can be changed below.
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    for k in 0..3 {
        let name = format!("multi_{k}.ome.tif");
        std::fs::copy(fixture(&format!("tiff/{name}")), data.join(&name)).unwrap();
    }
    for k in 0..3 {
        let out = dir.path().join(format!("from{k}.zarr"));
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_chunkwise"))
            .current_dir(&data)
            .args(["convert", &format!("multi_{k}.ome.tif"), "-o"])
            .arg(&out)
            .arg("--quiet")
            .output()
            .unwrap();
        assert!(o.status.success(), "file {k}: {}", stderr(&o));
        let store = Store::open(&out).unwrap();
        assert_eq!(store.shape(), &want.shape[..], "file {k}");
        let mut back = vec![0u8; want.bytes.len()];
        store
            .read_region_into(&Region::full(store.shape()), &mut back)
            .unwrap();
        assert!(
            back == want.bytes,
            "file {k}: values differ from tifffile's"
        );
    }
    let first = data.join("multi_0.ome.tif");
    let info = stdout(&chunkwise(&["info", first.to_str().unwrap()]));
    assert!(info.contains("and 2 other files"), "{info}");
    let smooth = dir.path().join("g.zarr");
    let job = || {
        chunkwise(&[
            "gaussian",
            first.to_str().unwrap(),
            smooth.to_str().unwrap(),
            "--sigma",
            "1",
            "--quiet",
        ])
    };
    let o = job();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(job().status.success(), "the same job again: nothing to do");
    let last = data.join("multi_2.ome.tif");
    let mut bytes = std::fs::read(&last).unwrap();
    bytes.push(0);
    std::fs::write(&last, bytes).unwrap();
    let o = job();
    assert!(
        !o.status.success() && stderr(&o).contains("overwrit"),
        "a change in another file of the dataset is not seen: {}",
        stderr(&o)
    );
}

/// CLI "Multi-file OME-TIFF": a companion OME-XML file given alone (by a relative path from its
/// own directory) reads the dataset it describes from the TIFFs beside it, as its TIFFs do;
/// with one of them gone, the error names it; with others beside it, it is refused.
#[test]
fn a_companion_file_given_alone_reads_its_dataset() {
    let dir = tmp();
    let want = read_npy(&fixture("tiff/comp.npy"));
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    for name in ["comp_0.ome.tif", "comp_1.ome.tif", "comp.companion.ome"] {
        std::fs::copy(fixture(&format!("tiff/{name}")), data.join(name)).unwrap();
    }
    let convert = |args: &[&str], out: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_chunkwise"))
            .current_dir(&data)
            .arg("convert")
            .args(args)
            .arg("-o")
            .arg(out)
            .arg("--quiet")
            .output()
            .unwrap()
    };
    let out = dir.path().join("c.zarr");
    let o = convert(&["comp.companion.ome"], &out);
    assert!(o.status.success(), "{}", stderr(&o));
    let store = Store::open(&out).unwrap();
    assert_eq!(store.shape(), &want.shape[..]);
    let mut back = vec![0u8; want.bytes.len()];
    store
        .read_region_into(&Region::full(store.shape()), &mut back)
        .unwrap();
    assert!(back == want.bytes, "values differ from the array written");
    assert_eq!(dimension_names(&out), serde_json::json!(["t", "y", "x"]));
    let o = convert(
        &["comp.companion.ome", "comp_0.ome.tif"],
        &dir.path().join("two.zarr"),
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    std::fs::remove_file(data.join("comp_1.ome.tif")).unwrap();
    let o = convert(&["comp.companion.ome"], &dir.path().join("gone.zarr"));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("comp_1.ome.tif"), "{}", stderr(&o));
    assert!(!dir.path().join("gone.zarr").exists());
}

/// CLI `convert --partition`: the parts of an OME-TIFF's convert publish the array one convert
/// writes, its axis names and voxel size included (they were dropped, or refused when given).
#[test]
fn an_ome_tiff_converted_in_parts_keeps_its_axes_and_voxel_size() {
    let dir = tmp();
    let tif = fixture("tiff/tzyx_physical.ome.tif");
    let p = |x: &Path| x.to_str().unwrap().to_string();
    let whole = dir.path().join("whole.zarr");
    let o = chunkwise(&[
        "convert",
        &p(&tif),
        "-o",
        &p(&whole),
        "--chunks",
        "1,2,9,9",
        "-q",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let parts = dir.path().join("parts.zarr");
    for part in ["1/2", "0/2"] {
        let o = chunkwise(&[
            "convert",
            &p(&tif),
            "-o",
            &p(&parts),
            "--chunks",
            "1,2,9,9",
            "--partition",
            part,
            "-q",
        ]);
        assert!(o.status.success(), "{part}: {}", stderr(&o));
    }
    assert_eq!(dimension_names(&parts), dimension_names(&whole));
    assert_eq!(
        attributes(&parts)["chunkwise"]["voxel_size"],
        attributes(&whole)["chunkwise"]["voxel_size"]
    );
    assert_eq!(
        dimension_names(&parts),
        serde_json::json!(["t", "z", "y", "x"])
    );
    // Given axis names too.
    let named = dir.path().join("named.zarr");
    for part in ["0/2", "1/2"] {
        let o = chunkwise(&[
            "convert",
            &p(&tif),
            "-o",
            &p(&named),
            "--partition",
            part,
            "--axis-names",
            "time,z,y,x",
            "-q",
        ]);
        assert!(o.status.success(), "{part}: {}", stderr(&o));
    }
    assert_eq!(
        dimension_names(&named),
        serde_json::json!(["time", "z", "y", "x"])
    );
}

/// A tile size that would decode to more than a page may (here 2^20 x 2^20 pixels, 2 TiB) is
/// refused naming the file and the page: nothing is allocated for it, nothing panics.
#[test]
fn a_tile_too_large_to_decode_is_refused() {
    let dir = tmp();
    let mut bytes = std::fs::read(fixture("tiff/tiled_lzw_u16.tif")).unwrap();
    assert_eq!(&bytes[..4], b"II*\0", "a classic little-endian TIFF");
    let ifd = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize;
    let n = u16::from_le_bytes(bytes[ifd..ifd + 2].try_into().unwrap()) as usize;
    let mut patched = 0;
    for k in 0..n {
        let e = ifd + 2 + 12 * k;
        let tag = u16::from_le_bytes(bytes[e..e + 2].try_into().unwrap());
        let ty = u16::from_le_bytes(bytes[e + 2..e + 4].try_into().unwrap());
        let value = |b: &[u8]| {
            // The first of a tag's values, where the entry points (more than fit inline).
            let at = u32::from_le_bytes(b[e + 8..e + 12].try_into().unwrap()) as usize;
            match ty {
                3 => u32::from(u16::from_le_bytes(b[at..at + 2].try_into().unwrap())),
                _ => u32::from_le_bytes(b[at..at + 4].try_into().unwrap()),
            }
        };
        let one_long = match tag {
            // TileWidth, TileLength: 2^20.
            322 | 323 => Some(1u32 << 20),
            // TileOffsets, TileByteCounts: the first tile's alone (one tile covers the page).
            324 | 325 => Some(value(&bytes)),
            _ => None,
        };
        if let Some(v) = one_long {
            bytes[e + 2..e + 4].copy_from_slice(&4u16.to_le_bytes());
            bytes[e + 4..e + 8].copy_from_slice(&1u32.to_le_bytes());
            bytes[e + 8..e + 12].copy_from_slice(&v.to_le_bytes());
            patched += 1;
        }
    }
    assert_eq!(patched, 4);
    let path = dir.path().join("huge_tiles.tif");
    std::fs::write(&path, &bytes).unwrap();
    let err = open(&path, None).and_then(|input| {
        let mut out = vec![0u8; input.shape().iter().product::<u64>() as usize * 2];
        input.read_region_into(&Region::full(input.shape()), &mut out)
    });
    let msg = err
        .expect_err("read, though its tiles are 2^20 pixels wide")
        .to_string();
    assert!(
        msg.contains("huge_tiles.tif") && msg.contains("page 0") && msg.contains("1048576x1048576"),
        "{msg}"
    );
}
