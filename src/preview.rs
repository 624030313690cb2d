//! `preview`: a PNG of one plane or of a projection along an axis (spec/PREVIEW.md), computed
//! tile by tile with the reduction along axes (a plane is the maximum over a one-thick slab),
//! each tile folded into the picture's bins as it is done: memory is the picture and the
//! tiles being folded, never the volume or the full-resolution projection.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::dtype::{DType, Scalar};
use crate::error::{Error, IoContext, Result};
use crate::input::Input;
use crate::project::AxisOp;
use crate::region::{Region, fmt_shape};
use crate::run::{RunOptions, run_setters};

/// What the picture shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Picture {
    /// Plane `index` across `axis` (`--plane AXIS=INDEX`).
    Plane {
        /// The axis cut across.
        axis: usize,
        /// The plane's index along it.
        index: u64,
    },
    /// A projection along `axis` (`--project AXIS --op max|mean|min`).
    Project {
        /// The axis projected away.
        axis: usize,
        /// [`AxisOp::Max`], [`AxisOp::Mean`] or [`AxisOp::Min`].
        op: AxisOp,
    },
}

/// How values map to the 256 grey levels (or colours).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Contrast {
    /// The 0.1 and 99.9 percentiles of the picture's pixels (`auto`).
    Auto,
    /// Percentiles `lo` and `hi` of the picture's pixels (`p1,p99`).
    Percentiles(f64, f64),
    /// A fixed window (`min,max`).
    Window(f64, f64),
}

/// The palette.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Colormap {
    /// 8-bit grey.
    Gray,
    /// matplotlib's magma (RGB).
    Magma,
    /// matplotlib's viridis (RGB).
    Viridis,
}

/// Settings of [`preview`]; build with [`PreviewOptions::default`] and the setters.
///
/// ```no_run
/// use chunkwise::{AxisOp, Input, Picture, PreviewOptions};
/// let opts = PreviewOptions::default()
///     .picture(Picture::Project { axis: 0, op: AxisOp::Max })
///     .size(512, 512);
/// let r = chunkwise::preview(&Input::open("volume.zarr")?, "mip.png".as_ref(), &opts)?;
/// println!("{}x{}, window {:?}", r.width, r.height, r.window);
/// # Ok::<(), chunkwise::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct PreviewOptions {
    picture: Picture,
    region: Option<Region>,
    size: (u64, u64),
    contrast: Contrast,
    colormap: Colormap,
    labels: bool,
    overwrite: bool,
    run: RunOptions,
}

impl Default for PreviewOptions {
    /// The maximum projection along axis 0, auto contrast, at most 1024 pixels a side, grey.
    fn default() -> Self {
        PreviewOptions {
            picture: Picture::Project {
                axis: 0,
                op: AxisOp::Max,
            },
            region: None,
            size: (1024, 1024),
            contrast: Contrast::Auto,
            colormap: Colormap::Gray,
            labels: false,
            overwrite: true,
            run: RunOptions::default(),
        }
    }
}

impl PreviewOptions {
    /// The plane or projection.
    pub fn picture(mut self, p: Picture) -> Self {
        self.picture = p;
        self
    }
    /// Only this region of the input (its own coordinates).
    pub fn region(mut self, r: Option<Region>) -> Self {
        self.region = r;
        self
    }
    /// At most `width` x `height` pixels (the picture is downsampled by one factor on both axes).
    pub fn size(mut self, width: u64, height: u64) -> Self {
        self.size = (width, height);
        self
    }
    /// The contrast window.
    pub fn contrast(mut self, c: Contrast) -> Self {
        self.contrast = c;
        self
    }
    /// The palette.
    pub fn colormap(mut self, c: Colormap) -> Self {
        self.colormap = c;
        self
    }
    /// Label values: downsampled by the most frequent value of each block, each label its own
    /// colour (0 black).
    pub fn labels(mut self, on: bool) -> Self {
        self.labels = on;
        self
    }
    /// Replaces an existing file at the output (default true, as image tools do).
    pub fn overwrite(mut self, on: bool) -> Self {
        self.overwrite = on;
        self
    }
}

run_setters!(PreviewOptions);

/// What [`preview`] drew.
#[derive(Debug, Clone, PartialEq)]
pub struct PreviewReport {
    /// The PNG written.
    pub path: PathBuf,
    /// Pixels across (the input's last kept axis).
    pub width: u64,
    /// Pixels down (the first kept axis).
    pub height: u64,
    /// Input elements per pixel along each side (the block of the block mean).
    pub factor: u64,
    /// The values mapped to 0 and 255 (for labels: the smallest and largest label).
    pub window: (f64, f64),
    /// The input region drawn.
    pub region: Region,
    /// What was drawn ("max along axis 0", "plane 12 of axis 0", "the array").
    pub what: String,
    /// The OME-Zarr level drawn from, when the input is an image and a coarser level than 0
    /// gives the picture (`region` is then in that level's coordinates).
    pub level: Option<usize>,
}

/// The picture's bins: per pixel, the sum and count of its block (or its labels' counts).
struct Bins {
    width: usize,
    factor: u64,
    sum: Vec<f64>,
    count: Vec<u64>,
    /// Labels: per pixel, (label, count) of its block, at most [`MAX_LABELS`] distinct.
    labels: Option<Vec<Vec<(u64, u32)>>>,
}

/// Most pixels a preview draws (8192 x 8192): its bins hold 16 bytes a pixel.
const MAX_PIXELS: u64 = 1 << 26;

/// Distinct labels a pixel's block remembers (the mode among them is drawn).
const MAX_LABELS: usize = 16;

impl Bins {
    /// Adds a tile of values (C order over `reg`, 2-D picture coordinates).
    fn add(&mut self, reg: &Region, values: &[f64]) {
        let (r0, c0) = (reg.ranges()[0].start, reg.ranges()[1].start);
        let w = (reg.ranges()[1].end - c0) as usize;
        let f = self.factor;
        for (y, row) in (r0..).zip(values.chunks_exact(w.max(1))) {
            let base = (y / f) as usize * self.width;
            for (x, &v) in (c0..).zip(row) {
                self.put(base + (x / f) as usize, v);
            }
        }
    }

    /// Adds one value to pixel `p`'s block.
    fn put(&mut self, p: usize, v: f64) {
        self.sum[p] += v;
        self.count[p] += 1;
        if let Some(l) = &mut self.labels {
            let bin = &mut l[p];
            let label = v as u64;
            if let Some(e) = bin.iter_mut().find(|(a, _)| *a == label) {
                e.1 += 1;
            } else if bin.len() < MAX_LABELS {
                bin.push((label, 1));
            }
        }
    }

    /// Each pixel's value: its block's mean, or (labels) its most frequent label (the
    /// smallest among equals).
    fn values(&self) -> Vec<f64> {
        match &self.labels {
            Some(l) => l
                .iter()
                .map(|b| {
                    b.iter()
                        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
                        .map_or(0.0, |&(v, _)| v as f64)
                })
                .collect(),
            None => self
                .sum
                .iter()
                .zip(&self.count)
                .map(|(&s, &n)| if n == 0 { f64::NAN } else { s / n as f64 })
                .collect(),
        }
    }
}

/// Draws `input` as a PNG at `out` (spec/PREVIEW.md).
///
/// # Errors
/// [`Error::InvalidOption`] for an axis that is not there, a plane index out of range, a
/// size of 0, a window with lo >= hi, an input that is not 2-D or 3-D; [`Error::Io`] for an
/// output that cannot be written (nothing is left at `out`); input errors.
pub fn preview(input: &Input, out: &Path, opts: &PreviewOptions) -> Result<PreviewReport> {
    if let Some((level, at, lopts)) = coarsest_level(input, opts)? {
        let mut r = draw(&at, out, &lopts)?;
        r.level = Some(level);
        r.what = format!(
            "{} of level {level} of {}",
            r.what,
            input
                .image()
                .map(|i| i.path().display().to_string())
                .unwrap_or_default()
        );
        return Ok(r);
    }
    draw(input, out, opts)
}

/// For an input opened as an OME-Zarr image: the coarsest level whose picture is still at
/// least the size level 0's would be drawn at (PREVIEW §2), opened, with the region and plane
/// in its coordinates (level 0's mapped by the level's factors: starts rounded down, ends up).
/// `None` for any other input, for level 0, or for options level 0 refuses (`draw` says why).
fn coarsest_level(
    input: &Input,
    opts: &PreviewOptions,
) -> Result<Option<(usize, Input, PreviewOptions)>> {
    let Some(image) = input.image() else {
        return Ok(None);
    };
    let shape = input.shape();
    let nd = shape.len();
    if !(nd == 2 || nd == 3) || image.levels().len() < 2 || opts.size.0 == 0 || opts.size.1 == 0 {
        return Ok(None);
    }
    let full = Region::full(shape);
    let region = opts.region.clone().unwrap_or_else(|| full.clone());
    if region.ndim() != nd || !full.contains(&region) {
        return Ok(None);
    }
    let axis = match opts.picture {
        _ if nd == 2 => None,
        Picture::Plane { axis, index } => {
            if axis >= nd || !region.ranges()[axis].contains(&index) {
                return Ok(None);
            }
            Some(axis)
        }
        Picture::Project { axis, .. } => {
            if axis >= nd {
                return Ok(None);
            }
            Some(axis)
        }
    };
    let kept: Vec<usize> = (0..nd).filter(|&d| Some(d) != axis).collect();
    let (h, w) = (region.shape()[kept[0]], region.shape()[kept[1]]);
    let f0 = w.div_ceil(opts.size.0).max(h.div_ceil(opts.size.1)).max(1);
    let (tw, th) = (w.div_ceil(f0), h.div_ceil(f0));
    let scale0 = &image.levels()[0].scale;
    for level in (1..image.levels().len()).rev() {
        let scale = &image.levels()[level].scale;
        if scale.len() != nd {
            continue;
        }
        let c: Vec<u64> = (0..nd)
            .map(|k| (scale[k] / scale0[k]).round().max(1.0) as u64)
            .collect();
        let mapped = Region::new(
            region
                .ranges()
                .iter()
                .zip(&c)
                .map(|(r, &c)| r.start / c..r.end.div_ceil(c))
                .collect(),
        );
        let (lh, lw) = (mapped.shape()[kept[0]], mapped.shape()[kept[1]]);
        if lw < tw || lh < th {
            continue;
        }
        let at = Input::open(image.level_path(level)?)?;
        if !Region::full(at.shape()).contains(&mapped) {
            continue;
        }
        let mut lopts = opts.clone();
        lopts.region = (mapped != Region::full(at.shape())).then_some(mapped);
        if let Picture::Plane { axis, index } = opts.picture {
            lopts.picture = Picture::Plane {
                axis,
                index: index / c[axis],
            };
        }
        return Ok(Some((level, at, lopts)));
    }
    Ok(None)
}

/// [`preview`] of one array.
fn draw(input: &Input, out: &Path, opts: &PreviewOptions) -> Result<PreviewReport> {
    let (w_max, h_max) = opts.size;
    if w_max == 0 || h_max == 0 {
        return Err(Error::option("size", "a size of 0 draws nothing"));
    }
    if let Contrast::Window(lo, hi) | Contrast::Percentiles(lo, hi) = opts.contrast
        && lo.partial_cmp(&hi) != Some(std::cmp::Ordering::Less)
    {
        return Err(Error::option(
            "contrast",
            format!("the window {lo},{hi} is empty: lo must be below hi"),
        ));
    }
    if let Contrast::Percentiles(lo, hi) = opts.contrast
        && (lo < 0.0 || hi > 100.0)
    {
        return Err(Error::option(
            "contrast",
            format!("percentiles {lo},{hi} outside 0..100"),
        ));
    }
    if !opts.overwrite && out.exists() {
        return Err(Error::OutputExists(out.to_path_buf()));
    }
    let full = Region::full(input.shape());
    let region = opts.region.clone().unwrap_or_else(|| full.clone());
    let nd = input.shape().len();
    if region.ndim() != nd || !full.contains(&region) {
        return Err(Error::BadRegion {
            spec: region.to_string(),
            reason: format!("outside the array of shape {}", fmt_shape(input.shape())),
        });
    }
    let (axis, op, what) = match opts.picture {
        _ if nd == 2 => (None, AxisOp::Max, "the array".to_string()),
        Picture::Plane { axis, index } => {
            check_axis(input, axis)?;
            let r = &region.ranges()[axis];
            if index < r.start || index >= r.end {
                return Err(Error::option(
                    "plane",
                    format!(
                        "{axis}={index} is out of range: axis {axis} of {} runs 0..{}{}",
                        input.path().display(),
                        input.shape()[axis],
                        if r.start > 0 || r.end < input.shape()[axis] {
                            format!(" (the region {}..{})", r.start, r.end)
                        } else {
                            String::new()
                        }
                    ),
                ));
            }
            (
                Some(axis),
                AxisOp::Max,
                format!("plane {index} of axis {axis}"),
            )
        }
        Picture::Project { axis, op } => {
            check_axis(input, axis)?;
            if !matches!(op, AxisOp::Max | AxisOp::Mean | AxisOp::Min) {
                return Err(Error::option(
                    "op",
                    format!("a projection takes max, mean or min, not {}", op.name()),
                ));
            }
            (Some(axis), op, format!("{} along axis {axis}", op.name()))
        }
    };
    if nd != 2 && nd != 3 {
        return Err(Error::option(
            "input",
            format!(
                "{} is {nd}-d ({}): preview draws 2-D arrays and planes or projections of 3-D \
                 ones (select 3 axes with a view)",
                input.path().display(),
                fmt_shape(input.shape())
            ),
        ));
    }
    // The box drawn: a plane is the one-thick slab at its index.
    let mut drawn = region.clone();
    if let Picture::Plane { axis, index } = opts.picture
        && nd == 3
    {
        let mut r = drawn.ranges().to_vec();
        r[axis] = index..index + 1;
        drawn = Region::new(r);
    }
    let source = if drawn == full {
        input.clone()
    } else {
        Input::from_view(input.view().slice(&drawn)?)?
    };
    let kept: Vec<usize> = (0..nd).filter(|&d| Some(d) != axis).collect();
    let (h, w) = (drawn.shape()[kept[0]], drawn.shape()[kept[1]]);
    let factor = w.div_ceil(w_max).max(h.div_ceil(h_max)).max(1);
    let (pw, ph) = (w.div_ceil(factor) as usize, h.div_ceil(factor) as usize);
    if (pw as u64).saturating_mul(ph as u64) > MAX_PIXELS {
        return Err(Error::option(
            "size",
            format!(
                "{pw}x{ph} pixels is more than a preview draws ({MAX_PIXELS}): give a smaller \
                 --size"
            ),
        ));
    }
    if pw == 0 || ph == 0 {
        return Err(Error::option(
            "input",
            format!(
                "nothing to draw: the picture of {} would be {w}x{h} elements",
                input.path().display()
            ),
        ));
    }
    let bins = Mutex::new(Bins {
        width: pw,
        factor,
        sum: vec![0.0; pw * ph],
        count: vec![0; pw * ph],
        labels: opts.labels.then(|| vec![Vec::new(); pw * ph]),
    });
    let out_dtype = op.output_dtype(source.dtype());
    let fold = |reg: &Region, bytes: &[u8], dtype: DType| -> Result<()> {
        let values: Vec<f64> = crate::with_scalar!(dtype, T => {
            bytes
                .chunks_exact(dtype.size())
                .map(|c| bytemuck::pod_read_unaligned::<T>(c).to_f64())
                .collect()
        });
        bins.lock()
            .map_err(|_| Error::Internal("a preview worker failed".into()))?
            .add(reg, &values);
        Ok(())
    };
    match axis {
        Some(a) => crate::project::project_tiles(&source, a, op, &opts.run, &|_, reg, vals| {
            fold(reg, &vals[0], out_dtype)
        })?,
        None => tiles_2d(&source, &opts.run, &|reg, bytes| {
            fold(reg, bytes, source.dtype())
        })?,
    }
    let bins = bins
        .into_inner()
        .map_err(|_| Error::Internal("a preview worker failed".into()))?;
    let values = bins.values();
    let window = if opts.labels {
        let finite = values.iter().copied().filter(|v| v.is_finite());
        let lo = finite.clone().fold(f64::INFINITY, f64::min);
        let hi = finite.fold(f64::NEG_INFINITY, f64::max);
        (lo, hi)
    } else {
        window_of(&values, opts.contrast)
    };
    let (color, pixels) = render(&values, window, opts);
    let text = format!(
        "window {},{}; {what} of {}, region {}, block {factor}",
        window.0,
        window.1,
        input.describe(),
        drawn
    );
    write_png(out, pw as u32, ph as u32, color, &pixels, &text)?;
    Ok(PreviewReport {
        path: out.to_path_buf(),
        width: pw as u64,
        height: ph as u64,
        factor,
        window,
        region: drawn,
        what,
        level: None,
    })
}

fn check_axis(input: &Input, axis: usize) -> Result<()> {
    let nd = input.shape().len();
    if axis >= nd {
        return Err(Error::option(
            "axis",
            format!(
                "{axis} is not an axis of the {nd}-d array {} ({})",
                input.path().display(),
                fmt_shape(input.shape())
            ),
        ));
    }
    Ok(())
}

/// Every block of a 2-D input, its clipped values in C order.
fn tiles_2d(
    input: &Input,
    run: &RunOptions,
    visit: &(dyn Fn(&Region, &[u8]) -> Result<()> + Sync),
) -> Result<()> {
    use rayon::prelude::*;
    let grid = input.block_grid().clone();
    let all: Vec<_> = grid.grid_shape().into_iter().map(|n| 0..n).collect();
    crate::run::with_threads(run.threads, || {
        crate::grid::indices_in(&all)
            .par_iter()
            .try_for_each(|idx| -> Result<()> {
                run.check()?;
                let reg = grid.chunk_region(idx);
                let n = usize::try_from(reg.len()).unwrap_or(usize::MAX);
                let mut bytes = vec![0u8; n.saturating_mul(input.dtype().size())];
                input.read_region_into(&reg, &mut bytes)?;
                visit(&reg, &bytes)
            })
    })
}

/// The contrast window over the picture's finite pixels (numpy's linear percentiles).
fn window_of(values: &[f64], c: Contrast) -> (f64, f64) {
    let (plo, phi) = match c {
        Contrast::Window(lo, hi) => return (lo, hi),
        Contrast::Auto => (0.1, 99.9),
        Contrast::Percentiles(lo, hi) => (lo, hi),
    };
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return (0.0, 1.0);
    }
    // The order statistics by selection (linear time), not a sort.
    let n = v.len();
    let mut nth = |k: usize| *v.select_nth_unstable_by(k, f64::total_cmp).1;
    let mut pct = |p: f64| {
        let at = p / 100.0 * (n - 1) as f64;
        let (i, f) = (at.floor() as usize, at - at.floor());
        let j = (i + 1).min(n - 1);
        let (a, b) = (nth(i), nth(j));
        // numpy's lerp, from the nearer end.
        if f >= 0.5 {
            b - (b - a) * (1.0 - f)
        } else {
            a + (b - a) * f
        }
    };
    let lo = pct(plo);
    (lo, pct(phi))
}

/// The PNG's colour type and pixel bytes.
fn render(values: &[f64], window: (f64, f64), opts: &PreviewOptions) -> (png::ColorType, Vec<u8>) {
    if opts.labels {
        let mut px = Vec::with_capacity(values.len() * 3);
        for &v in values {
            px.extend_from_slice(&label_color(v as u64));
        }
        return (png::ColorType::Rgb, px);
    }
    let (lo, hi) = window;
    let level = |v: f64| -> u8 {
        if !v.is_finite() {
            return 0;
        }
        let t = if hi > lo { (v - lo) / (hi - lo) } else { 0.0 };
        (t * 255.0).round_ties_even().clamp(0.0, 255.0) as u8
    };
    match opts.colormap {
        Colormap::Gray => (
            png::ColorType::Grayscale,
            values.iter().map(|&v| level(v)).collect(),
        ),
        map => {
            let g = if map == Colormap::Magma {
                colorous::MAGMA
            } else {
                colorous::VIRIDIS
            };
            let mut px = Vec::with_capacity(values.len() * 3);
            for &v in values {
                let c = g.eval_rational(usize::from(level(v)), 256);
                px.extend_from_slice(&[c.r, c.g, c.b]);
            }
            (png::ColorType::Rgb, px)
        }
    }
}

/// A label's colour: 0 black; others hues spaced by the golden ratio, so that labels near in
/// value are far in colour.
fn label_color(label: u64) -> [u8; 3] {
    if label == 0 {
        return [0, 0, 0];
    }
    let hue = (label as f64 * 0.618_033_988_749_895).fract() * 6.0;
    let (s, v) = (0.7, 0.95);
    let c = v * s;
    let x = c * (1.0 - (hue % 2.0 - 1.0).abs());
    let (r, g, b) = match hue as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = v - c;
    let q = |f: f64| ((f + m) * 255.0).round() as u8;
    [q(r), q(g), q(b)]
}

/// Writes the PNG into `out` (encoded by [`encode_png`], published by [`write_picture`]).
fn write_png(
    out: &Path,
    width: u32,
    height: u32,
    color: png::ColorType,
    pixels: &[u8],
    text: &str,
) -> Result<()> {
    let bytes = encode_png(width, height, color, pixels, text)?;
    write_picture(out, &bytes)
}

/// An 8-bit PNG of `pixels` with `text` in its `chunkwise` iTXt chunk (UTF-8: paths may hold
/// any character; tEXt is Latin-1 only).
pub(crate) fn encode_png(
    width: u32,
    height: u32,
    color: png::ColorType,
    pixels: &[u8],
    text: &str,
) -> Result<Vec<u8>> {
    let fail = |e: png::EncodingError| Error::io("<png>", std::io::Error::other(e));
    let mut buf = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut buf, width.max(1), height.max(1));
        enc.set_color(color);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::Fast);
        enc.add_itxt_chunk("chunkwise".into(), text.into())
            .map_err(fail)?;
        let mut w = enc.write_header().map_err(fail)?;
        w.write_image_data(pixels).map_err(fail)?;
    }
    Ok(buf)
}

/// Writes `bytes` beside `out` and renames them into place: no partial picture is left.
pub(crate) fn write_picture(out: &Path, bytes: &[u8]) -> Result<()> {
    let name = out
        .file_name()
        .map_or_else(|| "preview".into(), |n| n.to_string_lossy().into_owned());
    // The process and a counter: pictures from several threads of one process never share it.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = out.with_file_name(format!(".{name}.chunkwise-tmp-{}-{n}", std::process::id()));
    let written = (|| -> Result<()> {
        // The output's name in the error: the temporary file is ours, not the user's.
        let mut file = std::fs::File::create(&tmp).at(out)?;
        file.write_all(bytes).at(&tmp)?;
        file.flush().at(&tmp)?;
        std::fs::rename(&tmp, out).at(out)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}
