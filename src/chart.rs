//! `histogram --plot`: a histogram's counts as a bar chart, PNG or SVG (spec/REDUCE.md §3.1),
//! drawn with plotters; text in DejaVu Sans embedded in the binary, so a machine without fonts
//! draws the same picture. The PNG is drawn into a buffer and encoded like a preview's (one
//! rename into place, nothing partial left behind); the SVG is written the same way.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::reduce::Histogram;

/// At most this many bars: more bins than this are drawn `ceil(bins / MAX_BARS)` to a bar
/// (their counts summed, the axis label says so).
pub const MAX_BARS: usize = 1000;

/// The bars' colour (matplotlib's `tab:blue`), stated for readers of the picture.
pub const BAR_RGB: [u8; 3] = [31, 119, 180];

/// The percentile lines' colour (matplotlib's `tab:red`).
pub const MARK_RGB: [u8; 3] = [214, 39, 40];

/// The picture's format, from the output's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChartFormat {
    /// `.png`: 8-bit RGB.
    Png,
    /// `.svg`.
    Svg,
}

impl ChartFormat {
    /// The format `out` names, by its extension (`.png` or `.svg`, any case).
    ///
    /// # Errors
    /// [`Error::InvalidOption`] for any other extension.
    pub fn of(out: &Path) -> Result<ChartFormat> {
        match out
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .as_deref()
        {
            Some("png") => Ok(ChartFormat::Png),
            Some("svg") => Ok(ChartFormat::Svg),
            _ => Err(Error::option(
                "plot",
                format!("{}: name a .png or .svg file", out.display()),
            )),
        }
    }
}

/// Settings of [`histogram_chart`]; build with [`ChartOptions::default`] and the setters.
#[derive(Debug, Clone)]
pub struct ChartOptions {
    log: bool,
    percentiles: Vec<f64>,
    size: (u32, u32),
    title: Option<String>,
    overwrite: bool,
}

impl Default for ChartOptions {
    /// Linear counts, percentiles 1, 50 and 99 marked, 800x500 pixels.
    fn default() -> Self {
        ChartOptions {
            log: false,
            percentiles: vec![1.0, 50.0, 99.0],
            size: (800, 500),
            title: None,
            overwrite: false,
        }
    }
}

impl ChartOptions {
    /// Counts on a log scale (bars of 0 are not drawn).
    pub fn log(mut self, on: bool) -> Self {
        self.log = on;
        self
    }

    /// The percentiles (0 to 100) marked with a line each; none for an empty list.
    pub fn percentiles(mut self, q: Vec<f64>) -> Self {
        self.percentiles = q;
        self
    }

    /// The picture's size in pixels (SVG: its user units).
    pub fn size(mut self, width: u32, height: u32) -> Self {
        self.size = (width, height);
        self
    }

    /// The chart's title (default: "histogram").
    pub fn title(mut self, t: impl Into<String>) -> Self {
        self.title = Some(t.into());
        self
    }

    /// Replace an existing output.
    pub fn overwrite(mut self, on: bool) -> Self {
        self.overwrite = on;
        self
    }

    /// Checks the options and the output before any work: the format, the size, the
    /// percentiles, an existing output without overwrite, a missing directory.
    ///
    /// # Errors
    /// [`Error::InvalidOption`], [`Error::OutputExists`].
    pub fn check(&self, out: &Path) -> Result<ChartFormat> {
        let format = ChartFormat::of(out)?;
        let (w, h) = self.size;
        if !(200..=8192).contains(&w) || !(150..=8192).contains(&h) {
            return Err(Error::option(
                "plot-size",
                format!("{w}x{h}: give 200 to 8192 pixels across and 150 to 8192 down"),
            ));
        }
        if let Some(q) = self
            .percentiles
            .iter()
            .find(|q| !(0.0..=100.0).contains(*q))
        {
            return Err(Error::option(
                "percentiles",
                format!("{q} is outside 0..100"),
            ));
        }
        if !self.overwrite && out.exists() {
            return Err(Error::OutputExists(out.to_path_buf()));
        }
        let dir = match out.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        if !dir.is_dir() {
            return Err(Error::option(
                "plot",
                format!("{}: no directory {}", out.display(), dir.display()),
            ));
        }
        Ok(format)
    }
}

/// What [`histogram_chart`] drew.
#[derive(Debug, Clone, PartialEq)]
pub struct ChartReport {
    /// The picture written.
    pub path: PathBuf,
    /// Its format.
    pub format: ChartFormat,
    /// Each marked percentile and its value ([`Histogram::percentile`]; `None` when nothing
    /// was counted).
    pub percentiles: Vec<(f64, Option<f64>)>,
    /// The bars drawn.
    pub bars: usize,
    /// Bins per bar (1 unless there were more than [`MAX_BARS`] bins).
    pub bins_per_bar: usize,
}

/// Draws `counts` of `h` as a bar chart into `out` (`.png` or `.svg`): one bar per bin (or per
/// `ceil(bins / MAX_BARS)` bins), value on x, count on y (log with [`ChartOptions::log`]), the
/// marked percentiles as vertical lines named with their values under the x axis. The PNG's
/// `chunkwise` text chunk says the same.
///
/// ```no_run
/// use chunkwise::{ChartOptions, Histogram, Input, ReduceOptions};
/// let v = Input::open("volume.zarr")?;
/// let h = Histogram::auto(&v, None, &ReduceOptions::default())?;
/// let counts = chunkwise::reduce(&v, &h, &ReduceOptions::default())?;
/// let r = chunkwise::histogram_chart(&h, &counts, "hist.png".as_ref(), &ChartOptions::default().log(true))?;
/// println!("{:?}", r.percentiles);
/// # Ok::<(), chunkwise::Error>(())
/// ```
///
/// # Errors
/// As [`ChartOptions::check`]; [`Error::InvalidOption`] when `counts` is not `h`'s;
/// [`Error::Io`] writing `out`.
pub fn histogram_chart(
    h: &Histogram,
    counts: &[u64],
    out: &Path,
    opts: &ChartOptions,
) -> Result<ChartReport> {
    let format = opts.check(out)?;
    let edges = h.edges();
    if counts.len() + 1 != edges.len() {
        return Err(Error::option(
            "plot",
            format!(
                "{} counts for a histogram of {} bins",
                counts.len(),
                edges.len() - 1
            ),
        ));
    }
    let per = counts.len().div_ceil(MAX_BARS).max(1);
    let bars: Vec<(f64, f64, u64)> = counts
        .chunks(per)
        .enumerate()
        .map(|(i, c)| {
            let a = i * per;
            (edges[a], edges[a + c.len()], c.iter().sum())
        })
        .collect();
    let marks: Vec<(f64, Option<f64>)> = opts
        .percentiles
        .iter()
        .map(|&q| (q, h.percentile(counts, q)))
        .collect();
    let total: u64 = counts.iter().sum();
    let report = ChartReport {
        path: out.to_path_buf(),
        format,
        percentiles: marks,
        bars: bars.len(),
        bins_per_bar: per,
    };
    let named = report.marks();
    let marks = &report.percentiles;
    let chart = Chart {
        title: opts.title.clone().unwrap_or_else(|| "histogram".into()),
        x: (edges[0], edges[edges.len() - 1]),
        bars: &bars,
        marks,
        x_desc: if named.is_empty() {
            "value".into()
        } else {
            format!("value (red: {named})")
        },
        y_desc: match (per, opts.log) {
            (1, false) => "count".into(),
            (1, true) => "count (log)".into(),
            (k, false) => format!("count per {k} bins"),
            (k, true) => format!("count per {k} bins (log)"),
        },
        log: opts.log,
    };
    register_font()?;
    let (w, h_px) = opts.size;
    let bytes = match format {
        ChartFormat::Svg => {
            let mut s = String::new();
            {
                let root = SVGBackend::with_string(&mut s, (w, h_px)).into_drawing_area();
                chart.draw(&root).map_err(|e| drawing(out, e))?;
                root.present().map_err(|e| drawing(out, e))?;
            }
            s.into_bytes()
        }
        ChartFormat::Png => {
            let mut px = vec![255u8; w as usize * h_px as usize * 3];
            {
                let root = BitMapBackend::with_buffer(&mut px, (w, h_px)).into_drawing_area();
                chart.draw(&root).map_err(|e| drawing(out, e))?;
                root.present().map_err(|e| drawing(out, e))?;
            }
            let text = format!(
                "histogram: {} bins, {total} values counted, range {},{}; {}",
                counts.len(),
                fmt_num(chart.x.0),
                fmt_num(chart.x.1),
                named
            );
            crate::preview::encode_png(w, h_px, png::ColorType::Rgb, &px, &text)?
        }
    };
    crate::preview::write_picture(out, &bytes)?;
    Ok(report)
}

impl ChartReport {
    /// The marked percentiles as they read: `p1 = 258.465, p50 = 499`.
    pub fn marks(&self) -> String {
        self.percentiles
            .iter()
            .map(|(q, v)| match v {
                Some(v) => format!("p{} = {}", fmt_num(*q), fmt_num(*v)),
                None => format!("p{} = none", fmt_num(*q)),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A number as short as it reads: integers without a fraction, others to 6 significant digits
/// (in scientific notation below 1e-4 and from 1e15).
fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if v != 0.0 && v.is_finite() && !(1e-4..1e15).contains(&a) {
        let s = format!("{v:.5e}");
        let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
        let m = m.trim_end_matches('0').trim_end_matches('.');
        format!("{m}e{e}")
    } else if v.fract() == 0.0 || !v.is_finite() {
        format!("{v:.0}")
    } else {
        let digits = (5 - a.log10().floor() as i64).clamp(0, 17) as usize;
        let s = format!("{v:.digits$}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn drawing(out: &Path, e: impl std::fmt::Display) -> Error {
    Error::io(
        out,
        std::io::Error::other(format!("drawing the chart: {e}")),
    )
}

/// Registers DejaVu Sans as plotters' sans-serif, once per process.
fn register_font() -> Result<()> {
    static DONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
            .is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(Error::option(
            "plot",
            "the embedded font could not be read".to_string(),
        ))
    }
}

struct Chart<'a> {
    title: String,
    x: (f64, f64),
    bars: &'a [(f64, f64, u64)],
    marks: &'a [(f64, Option<f64>)],
    x_desc: String,
    y_desc: String,
    log: bool,
}

type DrawResult<DB> =
    std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

impl Chart<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        root.fill(&WHITE)?;
        let top = self.bars.iter().map(|b| b.2).max().unwrap_or(0).max(1) as f64;
        if self.log {
            self.plot(root, (0.5..top * 2.0).log_scale(), 0.5)
        } else {
            self.plot(root, 0.0..top * 1.05, 0.0)
        }
    }

    /// The chart on y axis `y`, bars rising from `base`.
    fn plot<DB, Y>(&self, root: &DrawingArea<DB, Shift>, y: Y, base: f64) -> DrawResult<DB>
    where
        DB: DrawingBackend,
        Y: AsRangedCoord<Value = f64>,
        Y::CoordDescType: ValueFormatter<f64>,
    {
        let rgb = |c: [u8; 3]| RGBColor(c[0], c[1], c[2]);
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(48)
            .y_label_area_size(72)
            .build_cartesian_2d(self.x.0..self.x.1, y)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_label_formatter(&|v| fmt_num(*v))
            .y_label_formatter(&|v| fmt_num(*v))
            .x_desc(self.x_desc.as_str())
            .y_desc(self.y_desc.as_str())
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 14))
            .draw()?;
        let (y_lo, y_hi) = {
            let r = chart.y_range();
            (r.start, r.end)
        };
        // The lines first: the bars are drawn over them, the lines show above the bars.
        chart.draw_series(self.marks.iter().filter_map(|(_, v)| {
            v.map(|v| PathElement::new(vec![(v, y_lo), (v, y_hi)], rgb(MARK_RGB).stroke_width(1)))
        }))?;
        chart.draw_series(
            self.bars.iter().filter(|b| b.2 > 0).map(|&(a, b, c)| {
                Rectangle::new([(a, base), (b, c as f64)], rgb(BAR_RGB).filled())
            }),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_follow_numpy_inverted_cdf_for_one_bin_per_value() {
        // values 0,0,1,2,2,2,5 -> counts over [0, 5]
        let h = Histogram::per_value(0, 5).unwrap();
        let counts = [2, 1, 3, 0, 0, 1];
        // numpy.percentile([0,0,1,2,2,2,5], q, method="inverted_cdf")
        for (q, want) in [
            (0.0, 0.0),
            (20.0, 0.0),
            (30.0, 1.0),
            (50.0, 2.0),
            (90.0, 5.0),
            (100.0, 5.0),
        ] {
            assert_eq!(h.percentile(&counts, q), Some(want), "q = {q}");
        }
        assert_eq!(h.percentile(&[0; 6], 50.0), None);
        assert_eq!(h.percentile(&counts[..5], 50.0), None);
    }

    #[test]
    fn percentiles_of_equal_bins_fall_inside_their_bin() {
        let h = Histogram::new(4, 0.0, 4.0).unwrap();
        let counts = [1, 1, 2, 0];
        // 50% of 4 values = 2: reached at the end of bin 1.
        assert_eq!(h.percentile(&counts, 50.0), Some(2.0));
        // 75% = 3: half of bin 2's count.
        assert_eq!(h.percentile(&counts, 75.0), Some(2.5));
    }

    #[test]
    fn formats_come_from_the_extension() {
        assert_eq!(
            ChartFormat::of(Path::new("a/h.PNG")).unwrap(),
            ChartFormat::Png
        );
        assert_eq!(
            ChartFormat::of(Path::new("h.svg")).unwrap(),
            ChartFormat::Svg
        );
        let e = ChartFormat::of(Path::new("h.jpg")).unwrap_err().to_string();
        assert!(e.contains("h.jpg") && e.contains(".png or .svg"), "{e}");
    }

    #[test]
    fn numbers_read_short() {
        assert_eq!(fmt_num(700.0), "700");
        assert_eq!(fmt_num(0.25), "0.25");
        assert_eq!(fmt_num(-1.5), "-1.5");
        assert_eq!(fmt_num(1e-9), "1e-9");
        assert_eq!(fmt_num(0.000123456789), "0.000123457");
        assert_eq!(fmt_num(-2.5e20), "-2.5e20");
        assert_eq!(fmt_num(0.0), "0");
        assert_eq!(fmt_num(258.4645197), "258.465");
        assert_eq!(fmt_num(1e-30), "1e-30");
    }
}
