//! Appending to an OME-Zarr image (spec/PYRAMID.md §6): level 0 grows by the new data and
//! every lower level recomputes only its tail from the level above (the block that was
//! partial, and the new ones). The image directory is rebuilt from links beside itself and
//! exchanged with it in one rename (APPEND §4.3), so that every level changes at once: a kill
//! leaves the old pyramid or the new one, and a rerun completes the edit or says it is done.
//!
//! Invariant: level 0 changes from its old length on, and level l + 1 from `floor(from_l / f)`
//! on (the block holding level l's first changed voxel), computed from level l's new values;
//! every voxel before that is kept as stored (a pyramid another tool wrote keeps its own
//! values there).

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rayon::prelude::*;
use serde_json::Value;

use super::apply::link_tree;
use super::commit::{after_exchange, fingerprint};
use super::{GrowOptions, GrowReport};
use crate::copy::{Side, c_strides, copy_box, is_fill};
use crate::dtype::DType;
use crate::error::{Error, IoContext, Result, to_usize};
use crate::grid::{Grid, indices_in};
use crate::input::Input;
use crate::kernel::{Downsample, downsample};
use crate::ome::Image;
use crate::progress::{Tracker, Unit};
use crate::region::{Region, fmt_shape};
use crate::run::{DEFAULT_MEMORY, with_threads};
use crate::store::{
    BuildDir, Durability, GridCodec, Journal, NEW_SUFFIX, Staging, StoreLock, clean_stale,
    commit_metadata, crash_point, place, remove_chunk, swap_in, sync_filesystem, write_atomic,
};
use crate::with_scalar;

/// One level of the image: where it is, its metadata, its shape before and after, its chunk
/// shape and its factor from the level above (ones for level 0).
struct Level {
    path: String,
    meta: Value,
    old: Vec<u64>,
    new: Vec<u64>,
    chunk: Vec<u64>,
    /// Whether `chunk` grew along the axis (a level that was one chunk clipped to its
    /// length gets the image's chunk length as it grows): every chunk along the axis is
    /// rewritten.
    rechunked: bool,
    factor: Vec<u64>,
}

/// The bytes of `reg`'s elements of `size` bytes each.
fn buffer_len(reg: &Region, size: usize) -> Result<usize> {
    let n = u64::try_from(reg.len()).unwrap_or(u64::MAX);
    Ok(to_usize(n, "a region")?.saturating_mul(size))
}

fn refuse(image: &Path, reason: String) -> Error {
    Error::option(
        "store",
        format!("{}: cannot append to this image: {reason}", image.display()),
    )
}

/// How the image's levels were made, if an append can update them.
fn method_of(image: &Path, img: &Image) -> Result<Downsample> {
    let Some(m) = img.method() else {
        return Err(refuse(
            image,
            "its multiscales metadata has no `type` saying how the levels were made (an \
             append recomputes the tail of each level the same way: mean, mode, nearest, min \
             or max)"
                .into(),
        ));
    };
    match m {
        "gaussian" => Err(refuse(
            image,
            "its levels are gaussian: a blurred voxel depends on its neighbours beyond its \
             block, so the stored levels cannot be extended from the new data alone; rebuild \
             it with `chunkwise pyramid` (mean, mode, nearest, min and max pyramids grow)"
                .into(),
        )),
        other => other.parse().map_err(|_| {
            refuse(
                image,
                format!(
                    "its levels were made by {other:?}, which an append cannot recompute (it \
                     updates mean, mode, nearest, min and max pyramids)"
                ),
            )
        }),
    }
}

/// The levels, their factors (chunkwise's `metadata.factors`, else the ratios of the scales)
/// and shapes, checked: regular Zarr v3 arrays of one type, each level's shape the ceiling of
/// the level above's over its factor (the last partial block kept).
fn read_levels(image: &Path, img: &Image, axis: usize) -> Result<(Vec<Level>, DType, Vec<u64>)> {
    let group = image.join("zarr.json");
    let text = fs::read_to_string(&group).at(&group)?;
    let gmeta: Value = serde_json::from_str(&text)
        .map_err(|e| Error::bad_input(&group, format!("not JSON: {e}")))?;
    let stated: Option<Vec<Vec<u64>>> = gmeta
        .pointer("/attributes/ome/multiscales/0/metadata/factors")
        .and_then(|v| serde_json::from_value(v.clone()).ok());
    let mut levels: Vec<Level> = Vec::new();
    let mut dtype = None;
    for (l, lv) in img.levels().iter().enumerate() {
        let dir = image.join(&lv.path);
        let mpath = dir.join("zarr.json");
        let meta: Value = match fs::read_to_string(&mpath) {
            Ok(t) => serde_json::from_str(&t)
                .map_err(|e| Error::bad_input(&mpath, format!("not JSON: {e}")))?,
            Err(_) => {
                return Err(refuse(
                    image,
                    format!(
                        "level {l} ({}) is not a Zarr v3 array (no zarr.json): an append \
                         rewrites OME-Zarr 0.5 images",
                        lv.path
                    ),
                ));
            }
        };
        if meta["chunk_grid"]["name"] != "regular" {
            return Err(refuse(
                image,
                format!(
                    "level {l} ({}) has a {} chunk grid; an append to an image needs regular \
                     grids",
                    lv.path, meta["chunk_grid"]["name"]
                ),
            ));
        }
        let ints = |v: &Value, what: &str| -> Result<Vec<u64>> {
            serde_json::from_value(v.clone())
                .map_err(|e| Error::bad_input(&mpath, format!("{what}: {e}")))
        };
        let shape = ints(&meta["shape"], "shape")?;
        let chunk = ints(
            &meta["chunk_grid"]["configuration"]["chunk_shape"],
            "chunk_shape",
        )?;
        let t = Input::open(&dir)?.dtype();
        match dtype {
            None => dtype = Some(t),
            Some(d) if d != t => {
                return Err(refuse(
                    image,
                    format!("level {l} ({}) is {t}, level 0 is {d}", lv.path),
                ));
            }
            _ => {}
        }
        let nd = shape.len();
        if axis >= nd {
            return Err(Error::option(
                "axis",
                format!(
                    "axis {axis} is out of range for the {nd}-d image {}",
                    image.display()
                ),
            ));
        }
        let factor = if l == 0 {
            vec![1; nd]
        } else {
            let up = &levels[l - 1];
            let f = match stated.as_ref().and_then(|s| s.get(l - 1)) {
                Some(f) => f.clone(),
                None => {
                    let (a, b) = (&img.levels()[l - 1].scale, &lv.scale);
                    (0..nd)
                        .map(|k| {
                            let r = b.get(k).zip(a.get(k)).map_or(f64::NAN, |(b, a)| b / a);
                            if r.is_finite() && r >= 1.0 && (r - r.round()).abs() < 1e-6 * r {
                                Ok(r.round() as u64)
                            } else {
                                Err(refuse(
                                    image,
                                    format!(
                                        "level {l}'s scale over level {}'s is {r} along axis \
                                         {k}, not a whole factor",
                                        l - 1
                                    ),
                                ))
                            }
                        })
                        .collect::<Result<_>>()?
                }
            };
            if f.len() != nd || f.contains(&0) || up.old.len() != nd {
                return Err(refuse(
                    image,
                    format!("level {l}'s factors {f:?} do not fit its {nd} axes"),
                ));
            }
            for k in 0..nd {
                let want = up.old[k].div_ceil(f[k]);
                if shape[k] != want {
                    return Err(refuse(
                        image,
                        format!(
                            "level {l} ({}) is {} long along axis {k}, not ceil({} / {}) = \
                             {want}: its levels do not keep the last partial block, which an \
                             append recomputes",
                            lv.path, shape[k], up.old[k], f[k]
                        ),
                    ));
                }
            }
            f
        };
        levels.push(Level {
            path: lv.path.clone(),
            meta,
            new: shape.clone(),
            old: shape,
            chunk,
            rechunked: false,
            factor,
        });
    }
    let dtype = dtype.ok_or_else(|| refuse(image, "it has no levels".into()))?;
    // The chunk shape the image was made with: chunkwise's `metadata.chunks`, else the
    // largest of its levels' along each axis.
    let nd = levels[0].old.len();
    let nominal = gmeta
        .pointer("/attributes/ome/multiscales/0/metadata/chunks")
        .and_then(|v| serde_json::from_value::<Vec<u64>>(v.clone()).ok())
        .filter(|c| c.len() == nd && !c.contains(&0))
        .unwrap_or_else(|| {
            (0..nd)
                .map(|k| levels.iter().map(|l| l.chunk[k]).max().unwrap_or(1))
                .collect()
        });
    Ok((levels, dtype, nominal))
}

/// Whether the array metadata `meta` stores its chunks in shards (whose inner chunking an
/// append leaves as it is).
fn sharded(meta: &Value) -> bool {
    meta["codecs"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["name"] == "sharding_indexed"))
}

/// Checks `inputs` against level 0 (`shape`, `dtype`) and returns their lengths along `axis`.
fn check_inputs(
    image: &Path,
    inputs: &[Input],
    shape: &[u64],
    dtype: DType,
    axis: usize,
) -> Result<Vec<u64>> {
    let nd = shape.len();
    inputs
        .iter()
        .map(|i| {
            let s = i.shape();
            let (len, rest): (u64, Vec<u64>) = if s.len() == nd {
                (
                    s[axis],
                    (0..nd).filter(|&k| k != axis).map(|k| s[k]).collect(),
                )
            } else if s.len() + 1 == nd {
                (1, s.to_vec())
            } else {
                (0, Vec::new())
            };
            let want: Vec<u64> = (0..nd).filter(|&k| k != axis).map(|k| shape[k]).collect();
            if rest != want || (s.len() != nd && s.len() + 1 != nd) {
                return Err(Error::option(
                    "input",
                    format!(
                        "{} is {}; appending to {} (level 0 {}) along axis {axis} needs the \
                         other axes {}",
                        i.describe(),
                        fmt_shape(s),
                        image.display(),
                        fmt_shape(shape),
                        fmt_shape(&want)
                    ),
                ));
            }
            if i.dtype() != dtype {
                return Err(Error::option(
                    "input",
                    format!(
                        "{} is {}, the image {} is {dtype}: an image grows by data of its own \
                         type (--cast converts it if no value changes)",
                        i.describe(),
                        i.dtype(),
                        image.display()
                    ),
                ));
            }
            Ok(len)
        })
        .collect()
}

/// What an append to an image shares: the settings, the progress, the counts.
struct Work<'a> {
    opts: &'a GrowOptions,
    tracker: &'a Tracker,
    encoded: AtomicU64,
    bytes: AtomicU64,
}

/// Rewrites the chunks of the level at `dir` (its new metadata `meta`) from index `from` on
/// along `axis`: each chunk's part from `from` on is `part(region)` (C order, native-endian),
/// the rest as stored.
fn rewrite_tail(
    live: &Path,
    dir: &Path,
    level: &Level,
    axis: usize,
    from: u64,
    w: &Work<'_>,
    part: &(dyn Fn(&Region) -> Result<Vec<u8>> + Sync),
) -> Result<()> {
    // What is kept comes from the live level: unchanged until the exchange, and in its own
    // chunking (the rebuilt one's may differ).
    let stored = Input::open(live)?;
    let codec = GridCodec::new(&level.meta, dir)?;
    let layout = crate::store::Layout::from_json(dir, level.meta.clone())?;
    let grid = Grid::new(&level.new, &level.chunk)?;
    let gshape = grid.grid_shape();
    let nd = level.new.len();
    let ranges: Vec<std::ops::Range<u64>> = (0..nd)
        .map(|d| {
            // A rechunked level is rewritten whole along the axis.
            if d == axis && !level.rechunked {
                from / level.chunk[d]..gshape[d]
            } else {
                0..gshape[d]
            }
        })
        .collect();
    let size = stored.dtype().size();
    let fill = codec.fill_bytes();
    let full: Vec<usize> = level
        .chunk
        .iter()
        .map(|&c| to_usize(c, "a chunk"))
        .collect::<Result<_>>()?;
    let n: usize = full.iter().product();
    // One chunk of fill value, made once (copied per chunk: a memcpy, not a byte loop).
    let blank: Vec<u8> = fill.repeat(n);
    let dst_strides = c_strides(&full, size);
    let staging = Staging::new(dir);
    staging.create()?;
    let copy_in = |buf: &mut [u8], vals: &[u8], reg: &Region, origin: &[u64]| {
        let shape: Vec<usize> = reg.shape().iter().map(|&s| s as usize).collect();
        let offset: usize = (0..nd)
            .map(|d| (reg.ranges()[d].start - origin[d]) as usize * dst_strides[d])
            .sum();
        copy_box(
            vals,
            Side {
                offset: 0,
                strides: &c_strides(&shape, size),
            },
            buf,
            Side {
                offset,
                strides: &dst_strides,
            },
            &shape,
            size,
            false,
        );
    };
    let done = indices_in(&ranges)
        .par_iter()
        .try_for_each(|idx| -> Result<()> {
            w.opts.run.check()?;
            let creg = grid.chunk_region(idx);
            let origin: Vec<u64> = creg.ranges().iter().map(|r| r.start).collect();
            let mut buf = blank.clone();
            let r = &creg.ranges()[axis];
            // What the chunk keeps (before `from`), as stored; the rest computed.
            if r.start < from {
                let mut keep = creg.ranges().to_vec();
                keep[axis] = r.start..from.min(r.end);
                let keep = Region::new(keep);
                let mut vals = vec![0u8; buffer_len(&keep, size)?];
                stored.read_region_into(&keep, &mut vals)?;
                copy_in(&mut buf, &vals, &keep, &origin);
            }
            if r.end > from {
                let mut new = creg.ranges().to_vec();
                new[axis] = r.start.max(from)..r.end;
                let new = Region::new(new);
                let vals = part(&new)?;
                copy_in(&mut buf, &vals, &new, &origin);
            }
            let dst = layout.chunk_file(idx);
            if is_fill(&buf, &fill) {
                remove_chunk(&dst)?;
            } else {
                let bytes = codec.encode(idx, &buf)?;
                // The file at `dst` may be a link to the live image's: replaced, never written.
                let tmp = staging.path_for(&dst)?;
                // A file left there may be a link too: never written through.
                let _ = fs::remove_file(&tmp);
                fs::write(&tmp, &bytes).at(&tmp)?;
                place(&tmp, &dst)?;
                crash_point("placing");
                w.encoded.fetch_add(1, Ordering::Relaxed);
                w.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            }
            w.tracker.add(1);
            Ok(())
        });
    staging.remove();
    done
}

/// Level 0's new values in `reg` (level coordinates, along `axis` from `old` on): the inputs
/// one after another.
fn appended(
    inputs: &[Input],
    lens: &[u64],
    old: u64,
    axis: usize,
    reg: &Region,
    size: usize,
) -> Result<Vec<u8>> {
    let shape: Vec<usize> = reg.shape().iter().map(|&s| s as usize).collect();
    let nd = shape.len();
    let mut out = vec![0u8; shape.iter().product::<usize>() * size];
    let out_strides = c_strides(&shape, size);
    let r = &reg.ranges()[axis];
    let mut at = old;
    for (input, &len) in inputs.iter().zip(lens) {
        let (a, b) = (r.start.max(at), r.end.min(at + len));
        if a < b {
            let mut ranges = reg.ranges().to_vec();
            ranges[axis] = a - at..b - at;
            let part = Region::new(ranges.clone());
            let src = if input.shape().len() == nd {
                part.clone()
            } else {
                ranges.remove(axis);
                Region::new(ranges)
            };
            let mut vals = vec![0u8; buffer_len(&src, size)?];
            input.read_region_into(&src, &mut vals)?;
            let pshape: Vec<usize> = part.shape().iter().map(|&s| s as usize).collect();
            copy_box(
                &vals,
                Side {
                    offset: 0,
                    strides: &c_strides(&pshape, size),
                },
                &mut out,
                Side {
                    offset: (a - r.start) as usize * out_strides[axis],
                    strides: &out_strides,
                },
                &pshape,
                size,
                false,
            );
        }
        at += len;
    }
    Ok(out)
}

/// Level `reg` (its coordinates) downsampled from the level above (`above`, whose shape is
/// `up_shape`) by `f` with `method`.
fn from_above(
    above: &Input,
    up_shape: &[u64],
    f: &[u64],
    method: Downsample,
    reg: &Region,
) -> Result<Vec<u8>> {
    let src = Region::new(
        reg.ranges()
            .iter()
            .zip(f)
            .zip(up_shape)
            .map(|((r, &f), &s)| r.start * f..(r.end * f).min(s))
            .collect(),
    );
    with_scalar!(above.dtype(), T => {
        let a = above.read_region::<T>(&src)?;
        let d = downsample::<T>(a.view(), f, method)?;
        let d = d.as_standard_layout();
        Ok(bytemuck::cast_slice::<T, u8>(d.as_slice().expect("standard layout")).to_vec())
    })
}

/// Refuses an append to one level of an OME-Zarr image: it would grow that level alone and
/// leave the others describing the old volume (spec/PYRAMID.md §6).
pub(super) fn refuse_level(store: &Path) -> Result<()> {
    let (Some(parent), Some(name)) = (store.parent(), store.file_name()) else {
        return Ok(());
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    if !crate::ome::is_image(parent) {
        return Ok(());
    }
    let Ok(img) = Image::open(parent) else {
        return Ok(());
    };
    match img
        .levels()
        .iter()
        .position(|l| Path::new(&l.path) == Path::new(name))
    {
        Some(i) => Err(Error::option(
            "store",
            format!(
                "{} is level {i} of the OME-Zarr image {}: append to the image (`chunkwise \
                 append {} ...`), which grows every level, not to one of its levels",
                store.display(),
                parent.display(),
                parent.display()
            ),
        )),
        None => Ok(()),
    }
}

/// One image an append grows: the image itself or one of its label images, its levels (paths
/// relative to the image: `0`, `labels/cells/0`, ...), what grows it and how its levels are
/// made.
struct Grown<'a> {
    levels: Vec<Level>,
    method: Downsample,
    inputs: &'a [Input],
    lens: Vec<u64>,
    size: usize,
}

/// The names the image's `labels/` group lists (none without the group).
fn label_names(image: &Path) -> Result<Vec<String>> {
    let group = image.join("labels").join("zarr.json");
    let Ok(text) = fs::read_to_string(&group) else {
        return Ok(Vec::new());
    };
    let meta: Value = serde_json::from_str(&text)
        .map_err(|e| Error::bad_input(&group, format!("not JSON: {e}")))?;
    Ok(meta
        .pointer("/attributes/ome/labels")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|n| n.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

/// Appends `inputs` to the OME-Zarr image at `image` along the axis (spec/PYRAMID.md §6), and
/// each `(name, inputs)` of `labels` to its label image `labels/NAME` (every label image the
/// image has must grow with it, by as many slices).
pub(super) fn append(
    image: &Path,
    inputs: &[Input],
    labels: &[(&str, &[Input])],
    opts: &GrowOptions,
) -> Result<GrowReport> {
    let start = Instant::now();
    super::no_parts(opts, "an append to an OME-Zarr image")?;
    let _lock = StoreLock::acquire(image, opts.wait)?;
    clean_stale(image)?;
    let img = Image::open(image)?;
    if img.version() != "0.5" {
        return Err(refuse(
            image,
            format!(
                "it is OME-Zarr {} (Zarr v2); an append rewrites OME-Zarr 0.5 images (convert \
                 it with `chunkwise pyramid IMAGE -o NEW.ome.zarr`)",
                img.version()
            ),
        ));
    }
    let method = method_of(image, &img)?;
    let axis = opts.axis;
    let (levels, dtype, nominal) = read_levels(image, &img, axis)?;
    // With --cast, inputs of another type are read through a widening cast (APPEND §2).
    let cast;
    let inputs = if opts.cast {
        cast = inputs
            .iter()
            .map(|i| {
                if i.dtype() == dtype {
                    Ok(i.clone())
                } else {
                    Input::from_view(i.view().cast(dtype)?)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        &cast[..]
    } else {
        inputs
    };
    let lens = check_inputs(image, inputs, &levels[0].old, dtype, axis)?;
    let n: u64 = lens.iter().sum();
    if n == 0 {
        return Err(Error::option("input", "nothing to append"));
    }
    // The label images grow with the image, each by its own new slices (PYRAMID §6).
    let names = label_names(image)?;
    for (name, _) in labels {
        if !names.iter().any(|n| n == name) {
            return Err(Error::option(
                "labels",
                format!(
                    "{}: the image has no label image {name:?} ({})",
                    image.display(),
                    if names.is_empty() {
                        "it has no labels/ group".to_string()
                    } else {
                        format!("it has {}", names.join(", "))
                    }
                ),
            ));
        }
    }
    if let Some(missing) = names.iter().find(|n| !labels.iter().any(|(m, _)| m == n)) {
        return Err(refuse(
            image,
            format!(
                "its label image {missing:?} would describe the old volume: give its new \
                 slices too (--labels {missing}=PATH for each of {})",
                names.join(", ")
            ),
        ));
    }
    let mut grown = vec![Grown {
        levels,
        method,
        inputs,
        lens,
        size: dtype.size(),
    }];
    for &(name, linputs) in labels {
        let dir = image.join("labels").join(name);
        let limg = Image::open(&dir)?;
        let lmethod = method_of(&dir, &limg)?;
        let (mut llevels, ldtype, _) = read_levels(&dir, &limg, axis)?;
        if llevels.len() != grown[0].levels.len() || llevels[0].old != grown[0].levels[0].old {
            return Err(refuse(
                image,
                format!(
                    "its label image {name:?} has {} levels, level 0 {}, the image {} levels, \
                     level 0 {}: they no longer overlay",
                    llevels.len(),
                    fmt_shape(&llevels[0].old),
                    grown[0].levels.len(),
                    fmt_shape(&grown[0].levels[0].old)
                ),
            ));
        }
        let llens = check_inputs(&dir, linputs, &llevels[0].old, ldtype, axis)?;
        let m: u64 = llens.iter().sum();
        if m != n {
            return Err(Error::option(
                "labels",
                format!("{name}: {m} new slices given, the image grows by {n}"),
            ));
        }
        for l in &mut llevels {
            l.path = format!("labels/{name}/{}", l.path);
        }
        grown.push(Grown {
            levels: llevels,
            method: lmethod,
            inputs: linputs,
            lens: llens,
            size: ldtype.size(),
        });
    }
    let mut lines: Vec<String> = inputs.iter().map(|i| i.identity().to_string()).collect();
    for (name, linputs) in labels {
        lines.extend(
            linputs
                .iter()
                .map(|i| format!("labels {name}: {}", i.identity())),
        );
    }
    let fp = fingerprint("append-image", opts, Some(image), &lines);
    let old0 = grown[0].levels[0].old.clone();
    if !opts.again
        && let Some(j) = Journal::read(image)
        && j.fingerprint == fp
        && j.to == old0
        && j.from != j.to
    {
        let levels = &grown[0].levels;
        let mut r = GrowReport::unchanged(
            image,
            Some(j.from),
            levels[0].old.clone(),
            &levels[0].meta,
            true,
            start,
        );
        r.levels = levels.iter().map(|l| l.old.clone()).collect();
        return Ok(r);
    }
    for g in &mut grown {
        let levels = &mut g.levels;
        levels[0].new[axis] += n;
        for l in 1..levels.len() {
            let up = levels[l - 1].new.clone();
            let f = levels[l].factor.clone();
            levels[l].new = up.iter().zip(&f).map(|(&s, &f)| s.div_ceil(f)).collect();
        }
        for l in levels.iter_mut() {
            // A level that was one chunk clipped to its length along the axis is rewritten
            // whole anyway: it takes the image's chunk length as it grows, as a pyramid made
            // from the grown volume would (not a small chunk for ever).
            let c = nominal[axis].min(l.new[axis]);
            if l.old[axis] <= l.chunk[axis] && c > l.chunk[axis] && !sharded(&l.meta) {
                l.chunk[axis] = c;
                l.rechunked = true;
                l.meta["chunk_grid"]["configuration"]["chunk_shape"] = serde_json::json!(l.chunk);
            }
            l.meta["shape"] = serde_json::json!(l.new);
        }
    }
    // Memory, per worker: the chunk being made and its fill-valued start, the kept and the
    // computed parts, the level above's block it is computed from with its reduction and
    // its bytes, and the encoded chunk (as much again at most).
    let per: u64 = grown
        .iter()
        .flat_map(|g| g.levels.iter().map(move |l| (l, g.size)))
        .map(|(l, size)| {
            let c = l
                .chunk
                .iter()
                .fold(size as u64, |a, &x| a.saturating_mul(x));
            let f = l.factor.iter().fold(1u64, |a, &x| a.saturating_mul(x));
            c.saturating_mul(f.saturating_add(6))
        })
        .max()
        .unwrap_or(0);
    let budget = opts.run.memory.unwrap_or(DEFAULT_MEMORY);
    if per > budget {
        return Err(Error::option(
            "memory",
            format!(
                "{budget} bytes cannot hold one chunk of the image with the block it is \
                 computed from: at least {per} needed"
            ),
        ));
    }
    // Each level is an array another command could edit: held while the image changes.
    let _level_locks = grown
        .iter()
        .flat_map(|g| &g.levels)
        .map(|l| StoreLock::acquire(&image.join(&l.path), opts.wait))
        .collect::<Result<Vec<_>>>()?;
    let workers = usize::try_from(budget / per.max(1)).unwrap_or(usize::MAX);
    let threads = opts.run.threads.unwrap_or_else(rayon::current_num_threads);
    // The first index each level recomputes: level 0's old length, then the block of the
    // level above's first changed voxel (a partial block changed, so its parent does).
    let froms_of = |levels: &[Level]| {
        let mut froms = vec![levels[0].old[axis]];
        for lv in &levels[1..] {
            let up = froms[froms.len() - 1];
            froms.push(up / lv.factor[axis]);
        }
        froms
    };
    let total: u64 = grown
        .iter()
        .map(|g| {
            let levels = &g.levels;
            levels
                .iter()
                .zip(froms_of(levels))
                .map(|(lv, from)| {
                    let gr = lv.new.iter().zip(&lv.chunk).map(|(&s, &c)| s.div_ceil(c));
                    gr.enumerate()
                        .map(|(d, k)| {
                            if d == axis && !lv.rechunked {
                                k - from / lv.chunk[d]
                            } else {
                                k
                            }
                        })
                        .product::<u64>()
                })
                .sum::<u64>()
        })
        .sum();
    let tracker = Tracker::new("append", Unit::Chunks, total, opts.run.progress.clone());
    let sync = opts.run.durability == Durability::Sync;
    let build = BuildDir::begin(image, NEW_SUFFIX)?;
    let new_dir = build.path().to_path_buf();
    let work = Work {
        opts,
        tracker: &tracker,
        encoded: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
    };
    let mut reencoded = 0;
    with_threads(Some(threads.min(workers).max(1)), || -> Result<()> {
        link_tree(image, &new_dir)?;
        crash_point("linked");
        for l in grown.iter().flat_map(|g| &g.levels) {
            commit_metadata(&new_dir.join(&l.path), &l.meta, false)?;
        }
        for g in &grown {
            let levels = &g.levels;
            let froms = froms_of(levels);
            let dir0 = new_dir.join(&levels[0].path);
            let from0 = froms[0];
            reencoded += u64::from(from0 % levels[0].chunk[axis] != 0 || levels[0].rechunked);
            let live0 = image.join(&levels[0].path);
            rewrite_tail(&live0, &dir0, &levels[0], axis, from0, &work, &|reg| {
                appended(g.inputs, &g.lens, from0, axis, reg, g.size)
            })?;
            for l in 1..levels.len() {
                let (up, lv) = (&levels[l - 1], &levels[l]);
                let above = Input::open(new_dir.join(&up.path))?;
                let from = froms[l];
                reencoded += u64::from(from % lv.chunk[axis] != 0 || lv.rechunked);
                let live = image.join(&lv.path);
                rewrite_tail(
                    &live,
                    &new_dir.join(&lv.path),
                    lv,
                    axis,
                    from,
                    &work,
                    &|reg| from_above(&above, &up.new, &lv.factor, g.method, reg),
                )?;
            }
        }
        Ok(())
    })?;
    // The group's metadata as it was (shapes live in the levels' arrays).
    let group = image.join("zarr.json");
    let gbytes = fs::read(&group).at(&group)?;
    write_atomic(&new_dir.join("zarr.json"), &gbytes, false)?;
    crash_point("staged");
    let journal = Journal {
        fingerprint: fp,
        from: old0.clone(),
        to: grown[0].levels[0].new.clone(),
        moving: Vec::new(),
    };
    let jb = journal.write(&new_dir)?;
    crash_point("journaled");
    if sync {
        sync_filesystem(&new_dir)?;
    }
    let old = swap_in(image, &new_dir)?;
    crash_point("committed");
    let warnings = after_exchange(image, &old, sync, "image");
    drop(build);
    let levels = &grown[0].levels;
    let mut r = GrowReport::unchanged(
        image,
        Some(old0),
        levels[0].new.clone(),
        &levels[0].meta,
        false,
        start,
    );
    r.chunks_encoded = work.encoded.into_inner();
    r.layers_reencoded = reencoded;
    r.bytes_written = work.bytes.into_inner() + jb + gbytes.len() as u64;
    r.exchanged = true;
    r.warnings = warnings;
    r.levels = levels.iter().map(|l| l.new.clone()).collect();
    Ok(r)
}
