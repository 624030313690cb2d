//! `chunkwise preview INPUT -o OUT.png`: a picture of a plane or a projection
//! (spec/PREVIEW.md).

use std::path::PathBuf;

use chunkwise::{AxisOp, Colormap, Contrast, Error, Input, Picture, PreviewOptions, Region};
use serde_json::json;

use super::{CliResult, Global, Outcome, say};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example: chunkwise preview volume.zarr -o mip.png   (the maximum projection \
                  along axis 0, auto contrast, at most 1024 pixels a side)"
)]
pub(crate) struct Args {
    /// The array (anything chunkwise reads).
    input: PathBuf,
    /// The PNG to write.
    #[arg(short, long, value_name = "OUT.png")]
    output: PathBuf,
    /// One plane: AXIS=INDEX (e.g. 0=100).
    #[arg(long, value_name = "AXIS=INDEX", conflicts_with = "project")]
    plane: Option<String>,
    /// A projection along this axis (default: 0).
    #[arg(long, value_name = "AXIS")]
    project: Option<usize>,
    /// The projection: max, mean or min.
    #[arg(long, default_value = "max", value_name = "max|mean|min")]
    op: String,
    /// Only this region, in numpy slice syntax (0:100,:,200:).
    #[arg(long, value_name = "SLICES")]
    region: Option<String>,
    /// At most W pixels across (and H down): W or WxH (default 1024).
    #[arg(long, value_name = "W[xH]")]
    size: Option<String>,
    /// The window mapped to black..white: auto (0.1-99.9 percentiles), MIN,MAX, or pLO,pHI.
    #[arg(long, default_value = "auto", allow_hyphen_values = true)]
    contrast: String,
    /// gray, magma or viridis.
    #[arg(long, default_value = "gray")]
    colormap: String,
    /// Label values: most frequent label per block, each label its own colour.
    #[arg(long)]
    labels: bool,
    /// Print the window, the region and the size as JSON.
    #[arg(long)]
    json: bool,
    /// Replace an existing OUT.png.
    #[arg(long)]
    overwrite: bool,
}

fn bad(option: &'static str, reason: String) -> Error {
    Error::InvalidOption { option, reason }
}

fn picture(a: &Args) -> chunkwise::Result<Picture> {
    if let Some(p) = &a.plane {
        let (axis, index) = p
            .split_once('=')
            .and_then(|(x, i)| Some((x.trim().parse().ok()?, i.trim().parse().ok()?)))
            .ok_or_else(|| bad("--plane", format!("{p:?} is not AXIS=INDEX (e.g. 0=100)")))?;
        return Ok(Picture::Plane { axis, index });
    }
    let op: AxisOp = a.op.trim().parse()?;
    Ok(Picture::Project {
        axis: a.project.unwrap_or(0),
        op,
    })
}

fn contrast(s: &str) -> chunkwise::Result<Contrast> {
    let s = s.trim();
    if s == "auto" {
        return Ok(Contrast::Auto);
    }
    let pair = |t: &str| -> Option<(f64, f64)> {
        let (x, y) = t.split_once(',')?;
        Some((x.trim().parse().ok()?, y.trim().parse().ok()?))
    };
    if let Some(rest) = s.strip_prefix('p')
        && let Some((lo, hi)) = pair(&rest.replacen(",p", ",", 1))
    {
        return Ok(Contrast::Percentiles(lo, hi));
    }
    pair(s)
        .map(|(lo, hi)| Contrast::Window(lo, hi))
        .ok_or_else(|| {
            bad(
                "--contrast",
                format!("{s:?}: give auto, MIN,MAX (e.g. 100,2000) or pLO,pHI (e.g. p1,p99)"),
            )
        })
}

fn size(s: &str) -> chunkwise::Result<(u64, u64)> {
    let parsed = match s.split_once(['x', 'X']) {
        Some((w, h)) => w.trim().parse().ok().zip(h.trim().parse().ok()),
        None => s.trim().parse().ok().map(|w| (w, w)),
    };
    parsed.ok_or_else(|| {
        bad(
            "--size",
            format!("{s:?} is not W or WxH (e.g. 512 or 800x600)"),
        )
    })
}

pub(crate) fn run(a: Args, g: &Global) -> CliResult {
    let input = Input::open(&a.input)?;
    let colormap = match a.colormap.trim() {
        "gray" | "grey" => Colormap::Gray,
        "magma" => Colormap::Magma,
        "viridis" => Colormap::Viridis,
        other => {
            return Err(bad("--colormap", format!("{other:?}: gray, magma or viridis")).into());
        }
    };
    let region: Option<Region> = a
        .region
        .as_deref()
        .map(|s| Region::parse(s, input.shape()).map(|p| p.region))
        .transpose()?;
    let (w, h) = a
        .size
        .as_deref()
        .map(size)
        .transpose()?
        .unwrap_or((1024, 1024));
    let opts = PreviewOptions::default()
        .picture(picture(&a)?)
        .region(region)
        .size(w, h)
        .contrast(contrast(&a.contrast)?)
        .colormap(colormap)
        .labels(a.labels)
        .overwrite(a.overwrite)
        .run(g.run());
    let r = chunkwise::preview(&input, &a.output, &opts)?;
    if a.json {
        say(serde_json::to_string_pretty(&json!({
            "path": r.path, "width": r.width, "height": r.height, "factor": r.factor,
            "window": [r.window.0, r.window.1], "region": r.region.to_string(), "what": r.what,
            "level": r.level,
        }))
        .expect("plain JSON"))?;
    } else if !g.quiet {
        say(format!(
            "wrote {}: {}x{} of {} of {} (region {}, blocks of {}x{}), window {}..{}",
            a.output.display(),
            r.width,
            r.height,
            r.what,
            input.describe(),
            r.region,
            r.factor,
            r.factor,
            r.window.0,
            r.window.1
        ))?;
    }
    Ok(Outcome::Ok)
}
