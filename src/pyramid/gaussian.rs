//! Gaussian pyramids (spec/PYRAMID.md §1): each level below level 0 blurred from the whole
//! level above and sampled, one level at a time.

use super::*;

/// The taps of one axis of a gaussian level (spec/PYRAMID.md §2): for each output voxel, the
/// voxels of the level above (relative to `lo`) and their weights.
struct Taps {
    lo: u64,
    hi: u64,
    rows: Vec<Vec<(usize, f64)>>,
}

/// Output voxels `range` of an axis of length `n` above, downsampled by `f`: each the
/// Gaussian (sigma f / 3, radius `int(4 sigma + 0.5)`, scipy's) centred on its block's centre
/// `i f + (f - 1) / 2`, over the voxels within the radius, reflected at the edges as scipy's
/// `reflect` (`d c b a | a b c d | d c b a`), weights normalised to sum 1. Factor 1: the voxel.
fn gaussian_taps(range: std::ops::Range<u64>, n: u64, f: u64) -> Taps {
    let fold = |j: i64| -> u64 {
        let p = 2 * n as i64;
        let m = j.rem_euclid(p);
        (if m >= n as i64 { p - 1 - m } else { m }) as u64
    };
    let mut raw: Vec<Vec<(u64, f64)>> = Vec::new();
    for i in range {
        if f == 1 {
            raw.push(vec![(i, 1.0)]);
            continue;
        }
        let sigma = f as f64 / 3.0;
        let radius = (4.0 * sigma + 0.5).floor();
        let c = (i * f) as f64 + (f as f64 - 1.0) / 2.0;
        let (a, b) = ((c - radius).ceil() as i64, (c + radius).floor() as i64);
        let mut row: Vec<(u64, f64)> = Vec::new();
        for j in a..=b {
            let w = (-0.5 * ((j as f64 - c) / sigma).powi(2)).exp();
            let k = fold(j);
            match row.iter_mut().find(|(q, _)| *q == k) {
                Some(t) => t.1 += w,
                None => row.push((k, w)),
            }
        }
        let sum: f64 = row.iter().map(|t| t.1).sum();
        row.iter_mut().for_each(|t| t.1 /= sum);
        raw.push(row);
    }
    let lo = raw.iter().flatten().map(|t| t.0).min().unwrap_or(0);
    let hi = raw.iter().flatten().map(|t| t.0 + 1).max().unwrap_or(0);
    let rows = raw
        .into_iter()
        .map(|r| r.into_iter().map(|(k, w)| ((k - lo) as usize, w)).collect())
        .collect();
    Taps { lo, hi, rows }
}

/// `block` (C order, `shape`) through the taps of every axis in order: the output voxels, C
/// order, in f64.
fn apply_taps(mut data: Vec<f64>, shape: &[usize], taps: &[Taps]) -> Vec<f64> {
    let mut shape = shape.to_vec();
    for (axis, t) in taps.iter().enumerate() {
        let outer: usize = shape[..axis].iter().product();
        let inner: usize = shape[axis + 1..].iter().product();
        let (n_in, n_out) = (shape[axis], t.rows.len());
        let mut out = vec![0f64; outer * n_out * inner];
        for o in 0..outer {
            let src = &data[o * n_in * inner..(o + 1) * n_in * inner];
            let dst = &mut out[o * n_out * inner..(o + 1) * n_out * inner];
            for (i, row) in t.rows.iter().enumerate() {
                let d = &mut dst[i * inner..(i + 1) * inner];
                for &(j, w) in row {
                    for (x, &v) in d.iter_mut().zip(&src[j * inner..(j + 1) * inner]) {
                        *x += w * v;
                    }
                }
            }
        }
        shape[axis] = n_out;
        data = out;
    }
    data
}

/// Level `l` of a gaussian pyramid (`plan`) written in `dir` from level `l - 1` there, chunk by
/// chunk in parallel, each from its box of the level above with the taps' halo. Returns the
/// chunks written.
pub(super) fn gaussian_level<T: Scalar>(
    dir: &Path,
    l: usize,
    plan: &Plan,
    codec: Codec,
    names: &[String],
    opts: &PyramidOptions,
) -> Result<u64> {
    let above = Input::open(dir.join((l - 1).to_string()))?;
    let grid = &plan.grids[l];
    let up = plan.grids[l - 1].shape();
    let f = &plan.factors[l];
    let chunk: Vec<usize> = grid.chunk_shape().iter().map(|&c| c as usize).collect();
    let n: usize = chunk.iter().product();
    let itemsize = std::mem::size_of::<T>() as u64;
    // Per worker: the chunk, and the box above a slab of `s` of its planes (in its type, in
    // f64, and the passes' outputs, at most as much again).
    let halo: Vec<u64> = f
        .iter()
        .map(|&f| 2 * (4.0 * f as f64 / 3.0 + 0.5) as u64 + f)
        .collect();
    let per = |s: u64| -> u64 {
        (0..chunk.len())
            .map(|k| {
                let c = if k == 0 { s } else { chunk[k] as u64 };
                (c * f[k] + halo[k]).min(up[k] + halo[k])
            })
            .fold(1u64, |a, x| a.saturating_mul(x))
            .saturating_mul(itemsize + 16)
            .saturating_add(n as u64 * itemsize)
    };
    let threads = rayon::current_num_threads() as u64;
    let budget = opts.run.memory.unwrap_or(DEFAULT_MEMORY);
    let fits = |s: u64| per(s).saturating_mul(threads) <= budget;
    if !fits(1) {
        return Err(Error::option(
            "memory",
            format!(
                "{budget} bytes cannot hold {threads} workers of gaussian level {l} (chunks of \
                 {}, each from the level above with the blur's halo): at least {} needed (or \
                 fewer --threads, or smaller --chunks)",
                fmt_shape(grid.chunk_shape()),
                per(1).saturating_mul(threads)
            ),
        ));
    }
    // The thickest slab of planes that fits: the whole chunk where memory allows.
    let mut slab = chunk[0] as u64;
    while slab > 1 && !fits(slab) {
        slab = slab.div_ceil(2);
    }
    let writer = StoreSpec::new(
        grid.shape().to_vec(),
        above.dtype(),
        grid.chunk_shape().to_vec(),
    )
    .codec(codec)
    .axis_names(Some(names.to_vec()));
    let level = dir.join(l.to_string());
    if crate::store::is_url(&level) {
        // What a run killed while it made this level left there (never published: no
        // zarr.json; level 0 above it is this pyramid's own job) is removed first.
        crate::store::Remote::open(&level.to_string_lossy())?.delete_all()?;
    }
    let writer = writer.create(&level, false, opts.run.durability)?;
    let ranges: Vec<std::ops::Range<u64>> = grid.grid_shape().iter().map(|&g| 0..g).collect();
    let isz = itemsize as usize;
    let strides = c_strides(&chunk, isz);
    let written = crate::grid::indices_in(&ranges)
        .par_iter()
        .map(|idx| -> Result<u64> {
            opts.run.check()?;
            let reg = grid.chunk_region(idx);
            // The full chunk (C order; an edge chunk padded with zeros), a slab at a time.
            let mut data = vec![T::default(); n];
            let whole = reg.ranges()[0].clone();
            let mut at0 = whole.start;
            while at0 < whole.end {
                let mut sub = reg.ranges().to_vec();
                sub[0] = at0..(at0 + slab).min(whole.end);
                at0 = sub[0].end;
                let taps: Vec<Taps> = sub
                    .iter()
                    .enumerate()
                    .map(|(k, r)| gaussian_taps(r.clone(), up[k], f[k]))
                    .collect();
                let src = Region::new(taps.iter().map(|t| t.lo..t.hi).collect());
                let block = above.read_region::<T>(&src)?;
                let shape = block.shape().to_vec();
                let vals: Vec<f64> = block.iter().map(|v| v.to_f64()).collect();
                drop(block);
                let out: Vec<T> = apply_taps(vals, &shape, &taps)
                    .into_iter()
                    .map(T::from_f64)
                    .collect();
                // The slab's box (C order) into its place in the chunk.
                let sshape: Vec<usize> = sub.iter().map(|r| (r.end - r.start) as usize).collect();
                let offset = (sub[0].start - whole.start) as usize * strides[0];
                crate::copy::copy_box(
                    bytemuck::cast_slice(&out),
                    Side {
                        offset: 0,
                        strides: &c_strides(&sshape, isz),
                    },
                    bytemuck::cast_slice_mut(&mut data),
                    Side {
                        offset,
                        strides: &strides,
                    },
                    &sshape,
                    isz,
                    false,
                );
            }
            Ok(u64::from(
                writer.write_chunk(idx, bytemuck::cast_slice(&data))? > 0,
            ))
        })
        .try_reduce(|| 0, |a, b| Ok(a + b))?;
    writer.commit()?;
    Ok(written)
}

/// Held while this process makes a gaussian pyramid's levels below level 0: the lock file
/// `lock.lower` in the build (none on object storage, where one process builds it).
pub(super) struct LowerLevels {
    _lock: Option<std::fs::File>,
}

/// The right to make a gaussian pyramid's levels below level 0, once level 0 is published in
/// the build `dir`; `None` while it is not, or while another part holds it (and so makes
/// them).
pub(super) fn lower_levels_lock(dir: &Path) -> Result<Option<LowerLevels>> {
    use crate::error::IoContext;
    if !level_published(dir, 0)? {
        return Ok(None);
    }
    if crate::store::is_url(dir) {
        // On object storage a gaussian pyramid is built by one process (refused in parts).
        return Ok(Some(LowerLevels { _lock: None }));
    }
    let path = dir.join("lock.lower");
    let lock = std::fs::File::create(&path).at(&path)?;
    Ok(crate::store::try_lock_briefly(&lock, false).then_some(LowerLevels { _lock: Some(lock) }))
}

/// Whether level `l` of the image being built in `dir` is published there (its `zarr.json`
/// written by the last part to finish it).
pub(super) fn level_published(dir: &Path, l: usize) -> Result<bool> {
    let level = dir.join(l.to_string());
    if crate::store::is_url(&level) {
        let r = crate::store::Remote::open(&level.to_string_lossy())?;
        return Ok(r.size("zarr.json")?.is_some());
    }
    Ok(crate::store::is_store(&level))
}
