//! `chunkwise demo [DIR]`: the whole tool on a volume it generates, checking its own results.

use std::path::{Path, PathBuf};
use std::time::Instant;

use chunkwise::kernel::{Gaussian, Threshold};
use chunkwise::support::human_bytes;
use chunkwise::support::synth::Volume;
use chunkwise::{
    Boundary, ConvertOptions, DType, Element, ExecOptions, ExportOptions, GrowOptions,
    IndexOptions, Input, ReduceOptions, Region, Select, Stats, Store,
};

use super::{CliError, CliResult, Global, Outcome, say};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Where to put the demo's files (default: ./chunkwise-demo).
    #[arg(default_value = "chunkwise-demo")]
    dir: PathBuf,
    /// Volume shape (z,y,x).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "160,320,320",
        value_name = "Z,Y,X"
    )]
    shape: Vec<u64>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CliError + '_ {
    move |e| {
        CliError::Io(std::io::Error::new(
            e.kind(),
            format!("{}: {e}", path.display()),
        ))
    }
}

pub(crate) fn run(a: Args, g: &Global) -> CliResult {
    let [nz, ny, nx] = a.shape[..] else {
        return Err(chunkwise::Error::InvalidOption {
            option: "--shape",
            reason: format!("the demo volume has 3 axes, got {}", a.shape.len()),
        }
        .into());
    };
    let dir = &a.dir;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let t = Instant::now();

    // 1. A microscopy-like volume as a stack of .npy slices.
    let volume = Volume::new([nz, ny, nx], 1e-4, 2026);
    let slices = dir.join("slices");
    if slices.exists() {
        std::fs::remove_dir_all(&slices).map_err(io(&slices))?;
    }
    std::fs::create_dir_all(&slices).map_err(io(&slices))?;
    let mut expected = Vec::with_capacity((nz * ny * nx * 2) as usize);
    for z in 0..nz {
        let plane = volume.slice(z);
        let mut bytes = Vec::with_capacity(plane.len() * 2);
        u16::extend_le_bytes(&plane, &mut bytes);
        let p = slices.join(format!("slice_{z:04}.npy"));
        chunkwise::support::write_npy(&p, DType::U16, &[ny, nx], &bytes)?;
        expected.extend_from_slice(&bytes);
    }
    say(format!(
        "1. generated {} .npy slices of {ny}x{nx} uint16 in {} ({:.2} s)",
        nz,
        slices.display(),
        t.elapsed().as_secs_f64()
    ))?;

    // 2. Convert with the defaults.
    let store = dir.join("volume.zarr");
    let opts = ConvertOptions::default()
        .overwrite(true)
        .threads(g.threads)
        .cancel(g.cancel.clone())
        .progress(g.progress());
    let report = chunkwise::convert(&Input::open(&slices)?, &store, &opts)?;
    say(format!("2. {}", super::convert::summary(&report)))?;

    // 3. Inspect.
    let vol = Input::open(&store)?;
    let info = chunkwise::info(&vol)?;
    say("3. chunkwise info:")?;
    for line in info.to_string().lines() {
        say(format!("   {line}"))?;
    }

    // 4. Export everything and one plane; both must equal what was generated.
    let mut ok = true;
    let whole = dir.join("volume.npy");
    let eopts = ExportOptions::default()
        .overwrite(true)
        .threads(g.threads)
        .cancel(g.cancel.clone())
        .progress(g.progress());
    let r = chunkwise::export(&vol, &whole, &eopts)?;
    let got = std::fs::read(&whole).map_err(io(&whole))?;
    let header = chunkwise::support::npy_header(DType::U16, &[nz, ny, nx]);
    let same = got.len() == header.len() + expected.len()
        && got[..header.len()] == header[..]
        && got[header.len()..] == expected[..];
    ok &= same;
    say(format!(
        "4. exported {} ({}) in {:.2} s: round trip {}",
        whole.display(),
        human_bytes(r.bytes),
        r.seconds,
        if same { "identical" } else { "DIFFERS" }
    ))?;

    let z = nz / 2;
    let plane_path = dir.join("plane.npy");
    let region = format!("{z},{}:{},:", ny / 4, ny / 4 * 3);
    chunkwise::export(
        &vol,
        &plane_path,
        &eopts.clone().region(Some(region.clone())),
    )?;
    let got = std::fs::read(&plane_path).map_err(io(&plane_path))?;
    let (y0, y1) = (ny / 4, ny / 4 * 3);
    let row = (nx * 2) as usize;
    let start = ((z * ny + y0) * nx * 2) as usize;
    let want = &expected[start..start + (y1 - y0) as usize * row];
    let header = chunkwise::support::npy_header(DType::U16, &[y1 - y0, nx]);
    let same = got[..header.len()] == header[..] && &got[header.len()..] == want;
    ok &= same;
    say(format!(
        "   exported region [{region}] to {}: {}",
        plane_path.display(),
        if same { "identical" } else { "DIFFERS" }
    ))?;

    // 5. Filter block by block: a Gaussian (sigma 2, halo 8) and a threshold, checked against the
    // same kernels applied to the whole volume in memory.
    let smooth = dir.join("smooth.zarr");
    let gauss = Gaussian {
        sigma: vec![2.0],
        truncate: 4.0,
        mode: Boundary::Reflect,
        dtype: None,
    };
    let jopts = ExecOptions::default()
        .overwrite(true)
        .threads(g.threads)
        .cancel(g.cancel.clone())
        .progress(g.progress());
    let r = chunkwise::run(std::slice::from_ref(&vol), &smooth, &gauss, &jopts)?;
    let (_, want) = chunkwise::apply_in_memory(&gauss, DType::U16, &[nz, ny, nx], &expected)?;
    let same = store_all(&smooth)? == want;
    ok &= same;
    say(format!(
        "5. {}\n   blockwise result {} the whole-volume filter",
        super::job::summary(&r),
        if same { "equals" } else { "DIFFERS from" }
    ))?;
    let mask = dir.join("mask.zarr");
    let r = chunkwise::run(
        &[Input::open(&smooth)?],
        &mask,
        &Threshold { above: 700.into() },
        &jopts,
    )?;
    let bright = store_all(&mask)?.iter().filter(|&&b| b == 1).count();
    say(format!(
        "   {}\n   {bright} voxels of the smoothed volume are above 700",
        super::job::summary(&r)
    ))?;

    // 6. One-pass statistics and the voxels above 700, checked against the generated data.
    let s = chunkwise::reduce(
        &vol,
        &Stats,
        &ReduceOptions::default()
            .threads(g.threads)
            .cancel(g.cancel.clone()),
    )?;
    let values: Vec<u64> = expected
        .chunks(2)
        .map(|b| u64::from(u16::from_le_bytes([b[0], b[1]])))
        .collect();
    let same = s.int_sum() == Some(values.iter().map(|&v| i128::from(v)).sum());
    ok &= same;
    let above = chunkwise::where_coords(
        &vol,
        None,
        &IndexOptions::default()
            .select(Select::Above(700.into()))
            .threads(g.threads)
            .cancel(g.cancel.clone()),
    )?;
    let want = values.iter().filter(|&&v| v > 700).count() as u64;
    ok &= above.count == want;
    say(format!(
        "6. stats: {} voxels, min {}, max {}, mean {:.3}, std {:.3}, sum {} ({})\n   {} voxels above 700 ({})",
        s.count,
        s.min().unwrap_or(f64::NAN),
        s.max().unwrap_or(f64::NAN),
        s.mean().unwrap_or(f64::NAN),
        s.std().unwrap_or(f64::NAN),
        s.int_sum().unwrap_or(0),
        if same { "exact" } else { "DIFFERS" },
        above.count,
        if above.count == want {
            "exact"
        } else {
            "DIFFERS"
        },
    ))?;

    // 7. Grow without copying: 24 more slices, converted on their own and joined by linking
    // chunks (concat), and appended to the array in place; both checked against the data.
    let extra = 24;
    let more_vol = Volume::new([extra, ny, nx], 1e-4, 2027);
    let more = dir.join("more");
    if more.exists() {
        std::fs::remove_dir_all(&more).map_err(io(&more))?;
    }
    std::fs::create_dir_all(&more).map_err(io(&more))?;
    let mut grown = expected.clone();
    for z in 0..extra {
        let plane = more_vol.slice(z);
        let mut bytes = Vec::with_capacity(plane.len() * 2);
        u16::extend_le_bytes(&plane, &mut bytes);
        let p = more.join(format!("slice_{z:04}.npy"));
        chunkwise::support::write_npy(&p, DType::U16, &[ny, nx], &bytes)?;
        grown.extend_from_slice(&bytes);
    }
    let more_store = dir.join("more.zarr");
    chunkwise::convert(&Input::open(&more)?, &more_store, &opts)?;
    let gopts = GrowOptions::default()
        .overwrite(true)
        .again(true)
        .threads(g.threads)
        .cancel(g.cancel.clone())
        .progress(g.progress());
    let joined = dir.join("joined.zarr");
    let r = chunkwise::concat(&[store.clone(), more_store.clone()], &joined, &gopts)?;
    let same = store_all(&joined)? == grown;
    ok &= same;
    let stored = |p: &Path| chunkwise::info(&Input::open(p)?).map(|i| i.stored_bytes);
    say(format!(
        "7. concat volume.zarr + more.zarr -> {}: {} ({} grid), {} chunks linked, {} encoded, \
         {} written for a {} array: {}",
        joined.display(),
        chunkwise::support::fmt_shape(&r.shape),
        r.grid,
        r.chunks_linked,
        r.chunks_encoded,
        human_bytes(r.bytes_written),
        human_bytes(stored(&joined)?),
        if same { "equals the data" } else { "DIFFERS" }
    ))?;
    let r = chunkwise::append(&store, &[Input::open(&more)?], &gopts)?;
    let same = store_all(&store)? == grown;
    ok &= same;
    say(format!(
        "   append {extra} slices to {}: {} -> {} ({} layer of stored data re-encoded), {} \
         written for a {} array: {}",
        store.display(),
        chunkwise::support::fmt_shape(r.old_shape.as_deref().unwrap_or(&[])),
        chunkwise::support::fmt_shape(&r.shape),
        r.layers_reencoded,
        human_bytes(r.bytes_written),
        human_bytes(stored(&store)?),
        if same { "equals the data" } else { "DIFFERS" }
    ))?;

    // 8. Verify every chunk decodes.
    let v = chunkwise::verify(&store, &g.run())?;
    ok &= v.ok();
    say(format!(
        "8. verify: {} of {} chunks stored, {} bad",
        v.chunks_checked,
        v.chunks_total,
        v.bad.len()
    ))?;

    // 9. Look at it: the maximum projection along z, as a PNG.
    let png = store.with_file_name("mip.png");
    let p = chunkwise::preview(
        &Input::open(&store)?,
        &png,
        &chunkwise::PreviewOptions::default().run(g.run()),
    )?;
    say(format!(
        "9. preview: {} ({}x{}, {} of the volume, window {:.0}..{:.0})",
        png.display(),
        p.width,
        p.height,
        p.what,
        p.window.0,
        p.window.1
    ))?;

    // 10. View it: an OME-Zarr pyramid (napari, neuroglancer), every level from one read of
    // the volume; level 1 checked against the 2x2x2 block means of level 0 (edge blocks
    // partial, rounded half to even).
    let image = store.with_file_name("volume.ome.zarr");
    let popts = chunkwise::PyramidOptions::default()
        .levels(Some(2))
        .factors(Some(vec![vec![2, 2, 2]]))
        .overwrite(true)
        .run(g.run());
    let r = chunkwise::pyramid(&Input::open(&store)?, &image, &popts)?;
    let level0 = Store::open(image.join("0"))?;
    let shape0 = level0.shape().to_vec();
    let same = store_all(&image.join("1"))? == block_means(&store_all(&image.join("0"))?, &shape0);
    ok &= same;
    say(format!(
        "10. pyramid: {} ({} levels: {}) in {:.2} s: level 1 {}; open it in napari \
         (napari-ome-zarr) or neuroglancer",
        image.display(),
        r.levels.len(),
        r.levels
            .iter()
            .map(|l| chunkwise::support::fmt_shape(&l.shape))
            .collect::<Vec<_>>()
            .join(", "),
        r.seconds,
        if same {
            "equals the block means"
        } else {
            "DIFFERS"
        }
    ))?;

    say(format!(
        "demo {} in {:.2} s",
        if ok { "passed" } else { "FAILED" },
        t.elapsed().as_secs_f64()
    ))?;
    Ok(if ok { Outcome::Ok } else { Outcome::Failed })
}

/// The 2x2x2 block means of a uint16 volume (little-endian bytes, shape `[z, y, x]`), a
/// partial edge block the mean of the voxels it has, rounded half to even: PYRAMID §2's mean.
fn block_means(bytes: &[u8], shape: &[u64]) -> Vec<u8> {
    let [nz, ny, nx] = [shape[0], shape[1], shape[2]].map(|n| n as usize);
    let at = |z: usize, y: usize, x: usize| {
        let i = 2 * ((z * ny + y) * nx + x);
        f64::from(u16::from_le_bytes([bytes[i], bytes[i + 1]]))
    };
    let mut out = Vec::new();
    for z in (0..nz).step_by(2) {
        for y in (0..ny).step_by(2) {
            for x in (0..nx).step_by(2) {
                let (mut sum, mut n) = (0.0, 0.0);
                for zz in z..(z + 2).min(nz) {
                    for yy in y..(y + 2).min(ny) {
                        for xx in x..(x + 2).min(nx) {
                            sum += at(zz, yy, xx);
                            n += 1.0;
                        }
                    }
                }
                out.extend_from_slice(&((sum / n).round_ties_even() as u16).to_le_bytes());
            }
        }
    }
    out
}

/// Every byte of an array (small arrays: the demo's).
fn store_all(path: &Path) -> Result<Vec<u8>, CliError> {
    let s = Store::open(path)?;
    let n = s.shape().iter().product::<u64>() as usize * s.dtype().size();
    let mut buf = vec![0u8; n];
    s.read_region_into(&Region::full(s.shape()), &mut buf)?;
    Ok(buf)
}
