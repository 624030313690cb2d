//! OME-Zarr images (spec/PYRAMID.md §4): the `multiscales` metadata of a group of arrays, one
//! per resolution level, read (0.5 in `zarr.json`, 0.4 in `.zattrs`) and written (0.5).
//! Invariant: an [`Image`] read or built here has 2 to 5 axes in OME-Zarr's order, units from
//! its UDUNITS list, and one level per dataset, finest first, each with one `scale`.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::error::{Error, IoContext, Result};

/// OME-Zarr's space units (UDUNITS-2 names).
const SPACE_UNITS: &[&str] = &[
    "angstrom",
    "attometer",
    "centimeter",
    "decimeter",
    "exameter",
    "femtometer",
    "foot",
    "gigameter",
    "hectometer",
    "inch",
    "kilometer",
    "megameter",
    "meter",
    "micrometer",
    "mile",
    "millimeter",
    "nanometer",
    "parsec",
    "petameter",
    "picometer",
    "terameter",
    "yard",
    "yoctometer",
    "yottameter",
    "zeptometer",
    "zettameter",
];

/// OME-Zarr's time units (UDUNITS-2 names).
const TIME_UNITS: &[&str] = &[
    "attosecond",
    "centisecond",
    "day",
    "decisecond",
    "exasecond",
    "femtosecond",
    "gigasecond",
    "hectosecond",
    "hour",
    "kilosecond",
    "megasecond",
    "microsecond",
    "millisecond",
    "minute",
    "nanosecond",
    "petasecond",
    "picosecond",
    "second",
    "terasecond",
    "yoctosecond",
    "yottasecond",
    "zeptosecond",
    "zettasecond",
];

/// One axis of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageAxis {
    /// Its name (`z`, `y`, `x`, ...): also every level's `dimension_names`.
    pub name: String,
    /// `space`, `time`, `channel`, or another type (`None`: not stated).
    pub kind: Option<String>,
    /// A UDUNITS-2 unit (`micrometer`, `second`, ...), for space and time axes.
    pub unit: Option<String>,
}

/// One resolution level of an image.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageLevel {
    /// The level's array, relative to the image.
    pub path: String,
    /// The size of one voxel along each axis, in the axes' units.
    pub scale: Vec<f64>,
    /// Where voxel 0 lies, in the axes' units (`None`: at the origin).
    pub translation: Option<Vec<f64>>,
}

/// An OME-Zarr multiscale image: axes and levels, finest first.
///
/// ```no_run
/// let image = chunkwise::Image::open("brain.ome.zarr")?;
/// for (i, level) in image.levels().iter().enumerate() {
///     println!("level {i}: {} at {:?}", level.path, level.scale);
/// }
/// # Ok::<(), chunkwise::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    path: PathBuf,
    version: String,
    name: Option<String>,
    axes: Vec<ImageAxis>,
    levels: Vec<ImageLevel>,
    method: Option<String>,
}

impl Image {
    /// Reads the image at `path` (a Zarr group with OME-Zarr 0.5 or 0.4 `multiscales`).
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`crate::InputError::BadInput`] for a path that is not a Zarr
    /// group, a group without `multiscales`, or metadata OME-Zarr does not allow, naming the
    /// file and the fault.
    pub fn open(path: impl AsRef<Path>) -> Result<Image> {
        let path = path.as_ref();
        if !crate::store::is_url(path) && !path.exists() {
            return Err(Error::NotFound(path.to_path_buf()));
        }
        let (attrs, file) = group_attributes(path)?.ok_or_else(|| {
            Error::bad_input(
                path,
                "not an OME-Zarr image: not a Zarr group (no zarr.json with node_type \
                 \"group\", nor .zgroup)",
            )
        })?;
        Image::from_attributes(path, &attrs, &file)
    }

    /// The image described by a group's attributes (read from `file`).
    fn from_attributes(path: &Path, attrs: &Value, file: &Path) -> Result<Image> {
        let (version, ms) = if let Some(ome) = attrs.get("ome") {
            let v = ome.get("version").and_then(Value::as_str).unwrap_or("0.5");
            (v.to_string(), ome.get("multiscales"))
        } else {
            let ms = attrs.get("multiscales");
            let v = ms
                .and_then(|m| m.get(0))
                .and_then(|m| m.get("version"))
                .and_then(Value::as_str)
                .unwrap_or("0.4");
            (v.to_string(), ms)
        };
        let bad = |why: String| Error::bad_input(file, why);
        let ms = ms
            .and_then(|m| m.get(0))
            .ok_or_else(|| bad("a Zarr group but not an OME-Zarr image: no multiscales".into()))?;
        let axes = ms
            .get("axes")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("multiscales[0] has no axes".into()))?
            .iter()
            .map(|a| match a {
                // OME-Zarr 0.3 wrote bare names.
                Value::String(s) => Ok(ImageAxis {
                    name: s.clone(),
                    kind: None,
                    unit: None,
                }),
                Value::Object(o) => Ok(ImageAxis {
                    name: o
                        .get("name")
                        .and_then(Value::as_str)
                        .ok_or_else(|| bad("an axis without a name".into()))?
                        .to_string(),
                    kind: o.get("type").and_then(Value::as_str).map(str::to_string),
                    unit: o.get("unit").and_then(Value::as_str).map(str::to_string),
                }),
                other => Err(bad(format!("axis {other} is neither a name nor an object"))),
            })
            .collect::<Result<Vec<_>>>()?;
        let nd = axes.len();
        let datasets = ms
            .get("datasets")
            .and_then(Value::as_array)
            .filter(|d| !d.is_empty())
            .ok_or_else(|| bad("multiscales[0] has no datasets".into()))?;
        let mut levels = Vec::new();
        for (i, d) in datasets.iter().enumerate() {
            let path = d
                .get("path")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("dataset {i} has no path")))?
                .to_string();
            let mut scale = None;
            let mut translation = None;
            for t in d
                .get("coordinateTransformations")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                let numbers = |key: &str| -> Result<Vec<f64>> {
                    let v: Option<Vec<f64>> = t
                        .get(key)
                        .and_then(Value::as_array)
                        .and_then(|a| a.iter().map(Value::as_f64).collect());
                    v.filter(|v| v.len() == nd)
                        .ok_or_else(|| bad(format!("dataset {i}: {key} is not {nd} numbers")))
                };
                match t.get("type").and_then(Value::as_str) {
                    Some("scale") => scale = Some(numbers("scale")?),
                    Some("translation") => translation = Some(numbers("translation")?),
                    _ => {}
                }
            }
            levels.push(ImageLevel {
                path,
                scale: scale.unwrap_or_else(|| vec![1.0; nd]),
                translation,
            });
        }
        Ok(Image {
            path: path.to_path_buf(),
            version,
            name: ms.get("name").and_then(Value::as_str).map(str::to_string),
            axes,
            levels,
            method: ms.get("type").and_then(Value::as_str).map(str::to_string),
        })
    }

    /// A new image's metadata (what `pyramid` writes), checked as [`check_axes`] does.
    pub(crate) fn new(
        path: &Path,
        name: Option<String>,
        axes: Vec<ImageAxis>,
        levels: Vec<ImageLevel>,
        method: Option<String>,
    ) -> Result<Image> {
        check_axes(&axes)?;
        Ok(Image {
            path: path.to_path_buf(),
            version: "0.5".into(),
            name,
            axes,
            levels,
            method,
        })
    }

    /// Where the image is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The OME-Zarr version of its metadata (`0.5`, `0.4`).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The image's name, if it has one.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Its axes.
    pub fn axes(&self) -> &[ImageAxis] {
        &self.axes
    }

    /// Its levels, finest first.
    pub fn levels(&self) -> &[ImageLevel] {
        &self.levels
    }

    /// How the levels were made (`mean`, `mode`, ...), if stated.
    pub fn method(&self) -> Option<&str> {
        self.method.as_deref()
    }

    /// The names of the image's label images (`labels/`'s `labels` list: OME-Zarr 0.5's
    /// `zarr.json` or 0.4's `.zattrs`), each an image at `labels/NAME`; none if it has none
    /// or the list is unreadable.
    pub fn labels(&self) -> Vec<String> {
        let dir = self.path.join("labels");
        let read = |file: &str, pointer: &str| -> Option<Vec<String>> {
            let text = std::fs::read_to_string(dir.join(file)).ok()?;
            let v: Value = serde_json::from_str(&text).ok()?;
            serde_json::from_value(v.pointer(pointer)?.clone()).ok()
        };
        read("zarr.json", "/attributes/ome/labels")
            .or_else(|| read(".zattrs", "/labels"))
            .unwrap_or_default()
    }

    /// The array of level `i`.
    ///
    /// # Errors
    /// [`Error::InvalidOption`] (`level`) when the image has no level `i`.
    pub fn level_path(&self, i: usize) -> Result<PathBuf> {
        let level = self.levels.get(i).ok_or_else(|| {
            Error::option(
                "level",
                format!(
                    "{} has {} levels (0 to {}): there is no level {i}",
                    self.path.display(),
                    self.levels.len(),
                    self.levels.len() - 1
                ),
            )
        })?;
        Ok(self.path.join(&level.path))
    }

    /// The group's `zarr.json` (OME-Zarr 0.5).
    pub(crate) fn group_json(&self, extra: Value) -> Value {
        let axes: Vec<Value> = self
            .axes
            .iter()
            .map(|a| {
                let mut o = json!({"name": a.name});
                if let Some(k) = &a.kind {
                    o["type"] = json!(k);
                }
                if let Some(u) = &a.unit {
                    o["unit"] = json!(u);
                }
                o
            })
            .collect();
        let datasets: Vec<Value> = self
            .levels
            .iter()
            .map(|l| {
                let mut t = vec![json!({"type": "scale", "scale": l.scale})];
                if let Some(tr) = &l.translation {
                    t.push(json!({"type": "translation", "translation": tr}));
                }
                json!({"path": l.path, "coordinateTransformations": t})
            })
            .collect();
        let mut ms = json!({"axes": axes, "datasets": datasets});
        if let Some(n) = &self.name {
            ms["name"] = json!(n);
        }
        if let Some(m) = &self.method {
            ms["type"] = json!(m);
        }
        if !extra.is_null() {
            ms["metadata"] = extra;
        }
        json!({
            "zarr_format": 3,
            "node_type": "group",
            "attributes": {"ome": {"version": "0.5", "multiscales": [ms]}},
        })
    }
}

/// A group's attributes and the file they are in, or `None` when `path` is not a Zarr group.
fn group_attributes(path: &Path) -> Result<Option<(Value, PathBuf)>> {
    if crate::store::is_url(path) {
        return remote_group_attributes(path);
    }
    let v3 = path.join("zarr.json");
    if v3.is_file() {
        let bytes = std::fs::read(&v3).at(&v3)?;
        return v3_group_attributes(&bytes, v3);
    }
    if path.join(".zgroup").is_file() {
        let attrs = path.join(".zattrs");
        let value = match std::fs::read_to_string(&attrs) {
            Ok(t) => serde_json::from_str(&t)
                .map_err(|e| Error::bad_input(&attrs, format!("not JSON: {e}")))?,
            Err(_) => Value::Null,
        };
        return Ok(Some((value, attrs)));
    }
    Ok(None)
}

/// [`group_attributes`] of a group at an object-storage prefix (Zarr v3: its `zarr.json`).
fn remote_group_attributes(path: &Path) -> Result<Option<(Value, PathBuf)>> {
    let r = crate::store::Remote::open(&path.to_string_lossy())?;
    match r.get("zarr.json")? {
        Some(bytes) => v3_group_attributes(&bytes, path.join("zarr.json")),
        None => Ok(None),
    }
}

/// A group's attributes from its `zarr.json` (`bytes`, read from `file`); `None` for an array.
fn v3_group_attributes(bytes: &[u8], file: PathBuf) -> Result<Option<(Value, PathBuf)>> {
    let meta: Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::bad_input(&file, format!("not JSON: {e}")))?;
    if meta.get("node_type").and_then(Value::as_str) != Some("group") {
        return Ok(None);
    }
    let attrs = meta.get("attributes").cloned().unwrap_or(Value::Null);
    Ok(Some((attrs, file)))
}

/// Whether a group's attributes hold OME-Zarr `multiscales` (0.5 or 0.4).
fn has_multiscales(attrs: &Value) -> bool {
    attrs.pointer("/ome/multiscales").is_some() || attrs.get("multiscales").is_some()
}

/// Whether `path` is a Zarr group whose attributes hold OME-Zarr `multiscales`.
pub(crate) fn is_image(path: &Path) -> bool {
    matches!(group_attributes(path), Ok(Some((attrs, _))) if has_multiscales(&attrs))
}

/// What an input path names in an image (spec/PYRAMID.md §4): the image itself means level 0,
/// `IMAGE/N` (N a level number that is not a dataset's path) level N. `None` for any other path.
///
/// # Errors
/// As [`Image::open`]; [`Error::InvalidOption`] for a level the image does not have.
pub(crate) fn resolve(path: &Path) -> Result<Option<(PathBuf, Image)>> {
    if crate::store::is_url(path) {
        // An image at an object-storage prefix: its group's metadata says so (a level is
        // named by its own prefix, `IMAGE/0`).
        return match group_attributes(path)? {
            Some((attrs, file)) if has_multiscales(&attrs) => {
                let image = Image::from_attributes(path, &attrs, &file)?;
                Ok(Some((image.level_path(0)?, image)))
            }
            Some(_) => Err(Error::bad_input(
                path,
                "a Zarr group without OME-Zarr multiscales, not an array or an image: name \
                 one of its members",
            )),
            None => Ok(None),
        };
    }
    // One read of the group's metadata decides: an image, another group, or not a group.
    if let Ok(Some((attrs, file))) = group_attributes(path) {
        if has_multiscales(&attrs) {
            let image = Image::from_attributes(path, &attrs, &file)?;
            return Ok(Some((image.level_path(0)?, image)));
        }
        let mut members: Vec<String> = std::fs::read_dir(path)
            .map(|d| {
                d.flatten()
                    .filter(|e| crate::store::is_store(&e.path()) || is_image(&e.path()))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        members.sort();
        return Err(Error::bad_input(
            path,
            format!(
                "a Zarr group without OME-Zarr multiscales, not an array or an image: name one \
                 of its members ({})",
                if members.is_empty() {
                    "it has none".to_string()
                } else {
                    members.join(", ")
                }
            ),
        ));
    }
    if path.exists() {
        return Ok(None);
    }
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Ok(None);
    };
    let Some(level) = name.to_str().and_then(|n| n.parse::<usize>().ok()) else {
        return Ok(None);
    };
    if parent.as_os_str().is_empty() || !is_image(parent) {
        return Ok(None);
    }
    let image = Image::open(parent)?;
    Ok(Some((image.level_path(level)?, image)))
}

/// Checks axes as OME-Zarr 0.5 requires: 2 to 5 distinct names, 2 or 3 `space` axes, at most
/// one `time` and one other, in the order time, other, space; units from OME-Zarr's UDUNITS
/// list, and only on space and time axes.
///
/// # Errors
/// [`Error::InvalidOption`] naming the axis and the rule.
pub(crate) fn check_axes(axes: &[ImageAxis]) -> Result<()> {
    let bad = |option: &'static str, why: String| Err(Error::option(option, why));
    if !(2..=5).contains(&axes.len()) {
        return bad(
            "axis-names",
            format!(
                "an OME-Zarr image has 2 to 5 axes (2 or 3 of them space); this array has {}",
                axes.len()
            ),
        );
    }
    for (i, a) in axes.iter().enumerate() {
        if a.name.is_empty() {
            return bad("axis-names", format!("axis {i} has an empty name"));
        }
        if axes[..i].iter().any(|b| b.name == a.name) {
            return bad("axis-names", format!("{:?} names two axes", a.name));
        }
        if let Some(u) = &a.unit {
            let allowed = match a.kind.as_deref() {
                Some("space") => SPACE_UNITS,
                Some("time") => TIME_UNITS,
                other => {
                    return bad(
                        "units",
                        format!(
                            "axis {:?} ({}) cannot have a unit: units are for space and \
                             time axes",
                            a.name,
                            other.unwrap_or("no type")
                        ),
                    );
                }
            };
            if !allowed.contains(&u.as_str()) {
                return bad(
                    "units",
                    format!(
                        "{u:?} (axis {:?}) is not one of OME-Zarr's UDUNITS {} units: {}",
                        a.name,
                        a.kind.as_deref().unwrap_or(""),
                        allowed.join(", ")
                    ),
                );
            }
        }
    }
    let rank = |a: &ImageAxis| match a.kind.as_deref() {
        Some("time") => 0,
        Some("space") => 2,
        _ => 1,
    };
    let count = |r: u8| axes.iter().filter(|a| rank(a) == r).count();
    if !(2..=3).contains(&count(2)) || count(0) > 1 || count(1) > 1 {
        return bad(
            "axis-types",
            format!(
                "an OME-Zarr image has 2 or 3 space axes, at most one time axis and at most one \
                 other (channel) axis; these are {}",
                types(axes)
            ),
        );
    }
    if axes.windows(2).any(|w| rank(&w[0]) > rank(&w[1])) {
        return bad(
            "axis-types",
            format!(
                "OME-Zarr orders axes time, then channel (or another type), then space; these \
                 are {}",
                types(axes)
            ),
        );
    }
    Ok(())
}

fn types(axes: &[ImageAxis]) -> String {
    axes.iter()
        .map(|a| format!("{}:{}", a.name, a.kind.as_deref().unwrap_or("?")))
        .collect::<Vec<_>>()
        .join(",")
}

/// The axes an image of `ndim` axes gets by default: `y,x`, `z,y,x`, `c,z,y,x`, `t,c,z,y,x`.
pub(crate) fn default_axes(ndim: usize) -> Vec<(String, String)> {
    let names: &[(&str, &str)] = match ndim {
        2 => &[("y", "space"), ("x", "space")],
        3 => &[("z", "space"), ("y", "space"), ("x", "space")],
        4 => &[
            ("c", "channel"),
            ("z", "space"),
            ("y", "space"),
            ("x", "space"),
        ],
        5 => &[
            ("t", "time"),
            ("c", "channel"),
            ("z", "space"),
            ("y", "space"),
            ("x", "space"),
        ],
        _ => &[],
    };
    names
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect()
}

/// The type an axis named `name` gets when none is given.
pub(crate) fn default_kind(name: &str) -> &'static str {
    match name {
        "t" | "time" => "time",
        "c" | "channel" | "ch" => "channel",
        _ => "space",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ax(name: &str, kind: &str, unit: Option<&str>) -> ImageAxis {
        ImageAxis {
            name: name.into(),
            kind: Some(kind.into()),
            unit: unit.map(str::to_string),
        }
    }

    #[test]
    fn axes_follow_ome_zarr_rules() {
        let zyx = [
            ax("z", "space", Some("micrometer")),
            ax("y", "space", None),
            ax("x", "space", None),
        ];
        assert!(check_axes(&zyx).is_ok());
        let tczyx: Vec<ImageAxis> = default_axes(5)
            .into_iter()
            .map(|(n, t)| ax(&n, &t, None))
            .collect();
        assert!(check_axes(&tczyx).is_ok());
        let one = [ax("x", "space", None)];
        assert!(
            check_axes(&one)
                .unwrap_err()
                .to_string()
                .contains("2 to 5 axes")
        );
        let bad_unit = [ax("y", "space", Some("microns")), ax("x", "space", None)];
        assert!(
            check_axes(&bad_unit)
                .unwrap_err()
                .to_string()
                .contains("\"microns\"")
        );
        let order = [
            ax("y", "space", None),
            ax("c", "channel", None),
            ax("x", "space", None),
        ];
        assert!(
            check_axes(&order)
                .unwrap_err()
                .to_string()
                .contains("orders axes")
        );
        let twice = [ax("x", "space", None), ax("x", "space", None)];
        assert!(
            check_axes(&twice)
                .unwrap_err()
                .to_string()
                .contains("names two axes")
        );
    }
}

/// The physical size of an array's voxels: one size and an optional UDUNITS-2 unit per axis.
/// Stored in a plain array's attributes as `{"chunkwise": {"voxel_size": [...], "units":
/// [...]}}` (spec/FORMAT.md §2), read from an OME-TIFF's `PhysicalSize*` and `TimeIncrement`,
/// and the default `--voxel-size` and `--units` of a pyramid of the array (PYRAMID §1).
///
/// ```no_run
/// let input = chunkwise::Input::open("embryo.ome.tif")?;
/// if let Some(v) = input.voxel_size() {
///     println!("{:?} {:?}", v.size, v.units); // [2.0, 0.5, 0.5] [Some("micrometer"), ..]
/// }
/// # Ok::<(), chunkwise::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct VoxelSize {
    /// Per axis, a positive finite size (1 where nothing is known).
    pub size: Vec<f64>,
    /// Per axis, a unit from OME-Zarr's UDUNITS-2 space or time lists, or none.
    pub units: Vec<Option<String>>,
}

impl VoxelSize {
    /// Checks the sizes and units of an array of `ndim` axes, as `--voxel-size` and `--units`
    /// (one per axis; an empty unit is none).
    ///
    /// # Errors
    /// [`Error::InvalidOption`] (`voxel-size`, `units`) naming the value.
    pub fn new(ndim: usize, size: Option<Vec<f64>>, units: Option<Vec<String>>) -> Result<Self> {
        let size = size.unwrap_or_else(|| vec![1.0; ndim]);
        if size.len() != ndim {
            return Err(Error::option(
                "voxel-size",
                format!("{} given for {ndim} axes: give one per axis", size.len()),
            ));
        }
        if let Some(bad) = size.iter().find(|x| !(x.is_finite() && **x > 0.0)) {
            return Err(Error::option(
                "voxel-size",
                format!("{bad} is not a positive size"),
            ));
        }
        let units: Vec<Option<String>> = match units {
            None => vec![None; ndim],
            Some(u) if u.len() != ndim => {
                return Err(Error::option(
                    "units",
                    format!("{} given for {ndim} axes: give one per axis", u.len()),
                ));
            }
            Some(u) => u
                .into_iter()
                .map(|s| Some(s.trim().to_string()).filter(|s| !s.is_empty()))
                .collect(),
        };
        for u in units.iter().flatten() {
            if !SPACE_UNITS.contains(&u.as_str()) && !TIME_UNITS.contains(&u.as_str()) {
                return Err(Error::option(
                    "units",
                    format!(
                        "{u:?} is not one of OME-Zarr's UDUNITS space or time units: {}, {}",
                        SPACE_UNITS.join(", "),
                        TIME_UNITS.join(", ")
                    ),
                ));
            }
        }
        Ok(VoxelSize { size, units })
    }

    /// The voxel size an array's attributes record for its `ndim` axes, if they record one
    /// that is valid (anything else is ignored: attributes are other tools' too).
    pub(crate) fn from_attributes(attrs: &Value, ndim: usize) -> Option<VoxelSize> {
        let c = attrs.get("chunkwise")?;
        let size: Vec<f64> = c
            .get("voxel_size")?
            .as_array()?
            .iter()
            .map(Value::as_f64)
            .collect::<Option<_>>()?;
        let units = match c.get("units").and_then(Value::as_array) {
            None => None,
            Some(u) => Some(
                u.iter()
                    .map(|v| match v {
                        Value::Null => Some(String::new()),
                        Value::String(s) => Some(s.clone()),
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>()?,
            ),
        };
        VoxelSize::new(ndim, Some(size), units).ok()
    }

    /// An array's `attributes` recording it (FORMAT §2), for [`crate::StoreSpec::attributes`].
    pub fn attributes(&self) -> Value {
        let mut a = json!({});
        self.write_into(&mut a);
        a
    }

    /// Its attributes entry, merged under `chunkwise` (`voxel_size`, `units`; no unit: null).
    pub(crate) fn write_into(&self, attrs: &mut Value) {
        if !attrs.is_object() {
            *attrs = json!({});
        }
        let c = &mut attrs["chunkwise"];
        if !c.is_object() {
            *c = json!({});
        }
        c["voxel_size"] = json!(self.size);
        c["units"] = json!(self.units);
    }

    /// Whether it says anything (a size other than 1, or a unit).
    pub(crate) fn is_known(&self) -> bool {
        self.size.iter().any(|&s| s != 1.0) || self.units.iter().any(Option::is_some)
    }
}

impl std::fmt::Display for VoxelSize {
    /// `2 x 0.5 x 0.5 micrometer` when every axis has the same unit, else each size with its
    /// own (`1 x 2 micrometer x 0.5 micrometer`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sizes: Vec<String> = self.size.iter().map(f64::to_string).collect();
        if self.units.windows(2).all(|w| w[0] == w[1]) {
            write!(f, "{}", sizes.join(" x "))?;
            match self.units.first() {
                Some(Some(u)) => write!(f, " {u}"),
                _ => Ok(()),
            }
        } else {
            let each: Vec<String> = sizes
                .iter()
                .zip(&self.units)
                .map(|(s, u)| match u {
                    Some(u) => format!("{s} {u}"),
                    None => s.clone(),
                })
                .collect();
            write!(f, "{}", each.join(" x "))
        }
    }
}

/// The UDUNITS-2 name of an OME `UnitsLength` or `UnitsTime` symbol (`µm` → `micrometer`),
/// if OME-Zarr has it.
pub(crate) fn ome_unit(symbol: &str) -> Option<&'static str> {
    let s = symbol.trim().replace('\u{3bc}', "\u{b5}");
    Some(match s.as_str() {
        "Ym" => "yottameter",
        "Zm" => "zettameter",
        "Em" => "exameter",
        "Pm" => "petameter",
        "Tm" => "terameter",
        "Gm" => "gigameter",
        "Mm" => "megameter",
        "km" => "kilometer",
        "hm" => "hectometer",
        "m" => "meter",
        "dm" => "decimeter",
        "cm" => "centimeter",
        "mm" => "millimeter",
        "\u{b5}m" | "um" => "micrometer",
        "nm" => "nanometer",
        "pm" => "picometer",
        "fm" => "femtometer",
        "am" => "attometer",
        "zm" => "zeptometer",
        "ym" => "yoctometer",
        "\u{c5}" | "\u{212b}" => "angstrom",
        "in" => "inch",
        "ft" => "foot",
        "yd" => "yard",
        "mi" => "mile",
        "pc" => "parsec",
        "Ys" => "yottasecond",
        "Zs" => "zettasecond",
        "Es" => "exasecond",
        "Ps" => "petasecond",
        "Ts" => "terasecond",
        "Gs" => "gigasecond",
        "Ms" => "megasecond",
        "ks" => "kilosecond",
        "hs" => "hectosecond",
        "s" => "second",
        "ds" => "decisecond",
        "cs" => "centisecond",
        "ms" => "millisecond",
        "\u{b5}s" | "us" => "microsecond",
        "ns" => "nanosecond",
        "ps" => "picosecond",
        "fs" => "femtosecond",
        "as" => "attosecond",
        "zs" => "zeptosecond",
        "ys" => "yoctosecond",
        "min" => "minute",
        "h" => "hour",
        "d" => "day",
        _ => return None,
    })
}
