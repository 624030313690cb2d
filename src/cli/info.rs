//! `chunkwise info STORE [--json]` (an OME-Zarr image: its pyramid, then level 0).

use std::path::PathBuf;

use chunkwise::{Image, Store};
use serde_json::json;

use super::{CliResult, Global, Outcome, say};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The array (a store, an OME-Zarr image or level, or anything the other commands read).
    store: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(a: Args, _g: &Global) -> CliResult {
    let input = chunkwise::Input::open(&a.store)?;
    let info = chunkwise::info(&input)?;
    let pyramid = input.image().map(levels).transpose()?;
    if a.json {
        let mut j = info.to_json();
        if let (Some(image), Some(levels)) = (input.image(), &pyramid) {
            j["image"] = json!({
                "path": image.path(),
                "version": image.version(),
                "name": image.name(),
                "method": image.method(),
                "axes": image.axes().iter().map(|x| json!({
                    "name": x.name, "type": x.kind, "unit": x.unit,
                })).collect::<Vec<_>>(),
                "levels": levels.iter().map(|(l, s)| json!({
                    "path": l.path, "shape": s.shape(), "chunks": s.chunk_shape(),
                    "dtype": s.dtype().to_string(), "scale": l.scale,
                    "translation": l.translation,
                })).collect::<Vec<_>>(),
                "labels": image.labels(),
            });
        }
        say(serde_json::to_string_pretty(&j).expect("plain JSON"))?;
        return Ok(Outcome::Ok);
    }
    if let (Some(image), Some(levels)) = (input.image(), &pyramid) {
        let axes: Vec<String> = image
            .axes()
            .iter()
            .map(|x| match &x.unit {
                Some(u) => format!("{} ({u})", x.name),
                None => x.name.clone(),
            })
            .collect();
        let mut text = format!(
            "OME-Zarr {} image {}: {}{} level{}, axes {}\n",
            image.version(),
            image.path().display(),
            image
                .method()
                .map(|m| format!("{m} pyramid of "))
                .unwrap_or_default(),
            levels.len(),
            if levels.len() == 1 { "" } else { "s" },
            axes.join(", ")
        );
        for (i, (l, s)) in levels.iter().enumerate() {
            let num = |v: &[f64]| {
                v.iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            text.push_str(&format!(
                "  level {i} ({}): {} {}, chunks {}, scale {}{}\n",
                l.path,
                chunkwise::support::fmt_shape(s.shape()),
                s.dtype(),
                s.chunk_shape()
                    .map(|c| chunkwise::support::fmt_shape(&c))
                    .unwrap_or_else(|| "irregular".into()),
                num(&l.scale),
                l.translation
                    .as_deref()
                    .map(|t| format!(", translation {}", num(t)))
                    .unwrap_or_default()
            ));
        }
        let labels = image.labels();
        if !labels.is_empty() {
            text.push_str(&format!(
                "  labels: {} (each an image: {}/labels/NAME)\n",
                labels.join(", "),
                image.path().display()
            ));
        }
        text.push_str("level 0:");
        say(text)?;
    }
    say(&info)?;
    Ok(Outcome::Ok)
}

/// Each level with its array.
fn levels(image: &Image) -> chunkwise::Result<Vec<(chunkwise::ImageLevel, Store)>> {
    (0..image.levels().len())
        .map(|i| {
            Ok((
                image.levels()[i].clone(),
                Store::open(image.level_path(i)?)?,
            ))
        })
        .collect()
}
