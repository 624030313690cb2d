//! The OME-XML of an OME-TIFF (the first page's ImageDescription): its series (`Image`
//! elements), each with sizes, type and the page (IFD) of every plane (spec/CLI.md "TIFF
//! inputs"). Pure functions of the XML text; the TIFF reader checks the pages against them.

use crate::ome::{VoxelSize, ome_unit};

/// One series of an OME-TIFF.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Series {
    /// `SizeX`, `SizeY`, `SizeZ`, `SizeC`, `SizeT`.
    pub x: u64,
    pub y: u64,
    pub z: u64,
    pub c: u64,
    pub t: u64,
    /// The pixel type OME names (`uint16`, `float`, ...).
    pub pixel_type: String,
    /// The file (an index into `files`) and page of each plane, planes in the order t, c, z
    /// (C order, z fastest).
    pub ifds: Vec<(usize, usize)>,
    /// The files holding its planes: the XML's own first (`""`: the file the XML was read
    /// from), then the others its `TiffData` name (multi-file OME-TIFF: plain file names,
    /// beside it).
    pub files: Vec<String>,
    /// `PhysicalSizeX`, `PhysicalSizeY`, `PhysicalSizeZ` and `TimeIncrement`, each with its
    /// unit's symbol (OME's defaults: `µm`, `s`), where the XML gives them.
    pub physical: [Option<(f64, String)>; 4],
}

impl Series {
    /// The axes of the array read from it, OME-NGFF's order: t, c, z (those longer than one;
    /// z alone, of length 1, when none is), then y, x.
    pub(crate) fn axes(&self) -> (Vec<String>, Vec<u64>) {
        let mut names = Vec::new();
        let mut shape = Vec::new();
        for (n, len) in [("t", self.t), ("c", self.c), ("z", self.z)] {
            if len > 1 {
                names.push(n.to_string());
                shape.push(len);
            }
        }
        if names.is_empty() {
            names.push("z".into());
            shape.push(1);
        }
        names.extend(["y".to_string(), "x".to_string()]);
        shape.extend([self.y, self.x]);
        (names, shape)
    }

    /// The voxel size along the axes of [`Series::axes`], if the XML gives any: the physical
    /// sizes and the time increment with their units in UDUNITS-2 names (a unit OME-Zarr
    /// lacks, like `pixel`, is left out, its size kept); 1 without a unit elsewhere.
    pub(crate) fn voxel_size(&self) -> Option<VoxelSize> {
        let (names, _) = self.axes();
        let [x, y, z, t] = &self.physical;
        let mut size = Vec::new();
        let mut units = Vec::new();
        for n in &names {
            let given = match n.as_str() {
                "x" => x,
                "y" => y,
                "z" => z,
                "t" => t,
                _ => &None,
            };
            match given {
                Some((v, sym)) => {
                    size.push(*v);
                    units.push(ome_unit(sym).map(str::to_string));
                }
                None => {
                    size.push(1.0);
                    units.push(None);
                }
            }
        }
        let v = VoxelSize { size, units };
        v.is_known().then_some(v)
    }
}

/// Whether an ImageDescription holds OME-XML.
pub(crate) fn is_ome(description: &str) -> bool {
    description.trim_start().starts_with("<?xml") && description.contains("<OME")
        || description.trim_start().starts_with("<OME")
}

/// The companion file an OME-TIFF's XML defers to (`<BinaryOnly MetadataFile="..."/>`, as
/// Bio-Formats writes multi-file datasets), if it does. Errors are messages.
pub(crate) fn companion(xml: &str) -> Result<Option<String>, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("OME-XML: {e}"))?;
    let Some(b) = doc.descendants().find(|n| n.has_tag_name("BinaryOnly")) else {
        return Ok(None);
    };
    let name = b.attribute("MetadataFile").unwrap_or("");
    if name.is_empty() || name.contains(['/', '\\']) || name == ".." || name == "." {
        return Err(format!(
            "OME-XML: BinaryOnly names the metadata file {name:?}, which is not a file name \
             beside this one"
        ));
    }
    Ok(Some(name.to_string()))
}

/// The series of OME-XML `xml`; `file` is the TIFF's own name, for multi-file datasets (whose
/// planes name other files beside it). Errors are messages, without the path.
pub(crate) fn parse(xml: &str, file: &str) -> Result<Vec<Series>, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("OME-XML: {e}"))?;
    let mut out = Vec::new();
    for image in doc.descendants().filter(|n| n.has_tag_name("Image")) {
        let i = out.len();
        let pixels = image
            .children()
            .find(|n| n.has_tag_name("Pixels"))
            .ok_or_else(|| format!("OME-XML: image {i} has no Pixels element"))?;
        let size = |name: &str| -> Result<u64, String> {
            match pixels.attribute(name) {
                None => Ok(1),
                Some(v) => v
                    .parse::<u64>()
                    .ok()
                    .filter(|&n| n >= 1)
                    .ok_or_else(|| format!("OME-XML: image {i}: {name}={v:?} is not a size")),
            }
        };
        let (x, y, z, c, t) = (
            size("SizeX")?,
            size("SizeY")?,
            size("SizeZ")?,
            size("SizeC")?,
            size("SizeT")?,
        );
        let order = pixels.attribute("DimensionOrder").unwrap_or("XYZCT");
        let rest: Vec<char> = order.chars().skip(2).collect();
        let valid = order.starts_with("XY") && {
            let mut r = rest.clone();
            r.sort_unstable();
            r == ['C', 'T', 'Z']
        };
        if !valid {
            return Err(format!(
                "OME-XML: image {i}: DimensionOrder {order:?} is not XY followed by Z, C and T"
            ));
        }
        // Planes in storage order: the first letter after XY varies fastest.
        let len = |a: char| match a {
            'Z' => z,
            'C' => c,
            _ => t,
        };
        let planes = z
            .checked_mul(c)
            .and_then(|n| n.checked_mul(t))
            .filter(|&n| n <= 1 << 24)
            .ok_or_else(|| format!("OME-XML: image {i}: {z}x{c}x{t} planes are too many"))?
            as usize;
        // The storage index of plane (z, c, t).
        let storage = |zi: u64, ci: u64, ti: u64| -> usize {
            let (mut idx, mut stride) = (0u64, 1u64);
            for &a in &rest {
                let v = match a {
                    'Z' => zi,
                    'C' => ci,
                    _ => ti,
                };
                idx += v * stride;
                stride *= len(a);
            }
            idx as usize
        };
        // TiffData: IFD (default 0), FirstZ/C/T (default 0), PlaneCount (every plane from
        // there when it is the only element and says nothing else, else 1).
        let datas: Vec<_> = pixels
            .children()
            .filter(|n| n.has_tag_name("TiffData"))
            .collect();
        let mut ifds: Vec<Option<(usize, usize)>> = vec![None; planes];
        let mut files = vec![String::new()];
        if datas.is_empty() {
            // No TiffData: the planes are the file's pages in storage order.
            ifds = (0..planes).map(|k| Some((0, k))).collect();
        }
        for d in &datas {
            let mut in_file = 0;
            if let Some(uuid) = d.children().find(|n| n.has_tag_name("UUID")) {
                let name = uuid.attribute("FileName").unwrap_or("");
                if !name.is_empty() && name != file {
                    // Bio-Formats' rule: a plain file name, beside the file holding the XML.
                    if name.contains(['/', '\\']) || name == ".." || name == "." {
                        return Err(format!(
                            "OME-XML: image {i} has planes in {name:?}, which is not a file \
                             name (multi-file datasets name files beside {file:?})"
                        ));
                    }
                    in_file = match files.iter().position(|f| f == name) {
                        Some(k) => k,
                        None => {
                            files.push(name.to_string());
                            files.len() - 1
                        }
                    };
                }
            }
            let num = |name: &str, default: u64| -> Result<u64, String> {
                match d.attribute(name) {
                    None => Ok(default),
                    Some(v) => v
                        .parse::<u64>()
                        .map_err(|_| format!("OME-XML: image {i}: TiffData {name}={v:?}")),
                }
            };
            let ifd = num("IFD", 0)?;
            let (fz, fc, ft) = (num("FirstZ", 0)?, num("FirstC", 0)?, num("FirstT", 0)?);
            if fz >= z || fc >= c || ft >= t {
                return Err(format!(
                    "OME-XML: image {i}: TiffData starts at plane z={fz} c={fc} t={ft}, outside \
                     {z}x{c}x{t}"
                ));
            }
            let lone = datas.len() == 1
                && d.attribute("FirstZ").is_none()
                && d.attribute("FirstC").is_none()
                && d.attribute("FirstT").is_none();
            let default = if lone { planes as u64 } else { 1 };
            let count = num("PlaneCount", default)? as usize;
            let start = storage(fz, fc, ft);
            if start + count > planes {
                return Err(format!(
                    "OME-XML: image {i}: TiffData of {count} planes from plane {start} runs past \
                     its {planes} planes"
                ));
            }
            for k in 0..count {
                ifds[start + k] = Some((in_file, ifd as usize + k));
            }
        }
        // In the order t, c, z.
        let mut by_tcz = Vec::with_capacity(planes);
        for ti in 0..t {
            for ci in 0..c {
                for zi in 0..z {
                    let s = storage(zi, ci, ti);
                    by_tcz.push(ifds[s].ok_or_else(|| {
                        format!("OME-XML: image {i}: no page holds plane z={zi} c={ci} t={ti}")
                    })?);
                }
            }
        }
        // A physical size that is not a positive number is ignored, as OME's schema forbids it.
        let physical = |name: &str, default_unit: &str| -> Option<(f64, String)> {
            let v = pixels.attribute(name)?.trim().parse::<f64>().ok()?;
            let unit = pixels
                .attribute(format!("{name}Unit").as_str())
                .unwrap_or(default_unit);
            (v.is_finite() && v > 0.0).then(|| (v, unit.to_string()))
        };
        out.push(Series {
            x,
            y,
            z,
            c,
            t,
            pixel_type: pixels.attribute("Type").unwrap_or("").to_string(),
            ifds: by_tcz,
            files,
            physical: [
                physical("PhysicalSizeX", "\u{b5}m"),
                physical("PhysicalSizeY", "\u{b5}m"),
                physical("PhysicalSizeZ", "\u{b5}m"),
                physical("TimeIncrement", "s"),
            ],
        });
    }
    if out.is_empty() {
        return Err("OME-XML holds no Image".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xml(pixels: &str) -> String {
        format!(
            "<?xml version=\"1.0\"?><OME xmlns=\"http://www.openmicroscopy.org/Schemas/OME/\
             2016-06\"><Image ID=\"Image:0\">{pixels}</Image></OME>"
        )
    }

    #[test]
    fn planes_follow_the_dimension_order() {
        // XYCZT: c fastest, then z. 2 channels, 3 slices: page k holds c = k % 2, z = k / 2.
        let x = xml(
            "<Pixels DimensionOrder=\"XYCZT\" Type=\"uint16\" SizeX=\"4\" SizeY=\"3\" \
             SizeZ=\"3\" SizeC=\"2\" SizeT=\"1\"><TiffData IFD=\"0\" PlaneCount=\"6\"/></Pixels>",
        );
        let s = &parse(&x, "a.ome.tif").unwrap()[0];
        assert_eq!(s.axes().1, vec![2, 3, 3, 4]);
        assert_eq!(s.axes().0, vec!["c", "z", "y", "x"]);
        // In t, c, z order: c=0: z=0,1,2 -> pages 0, 2, 4; c=1 -> 1, 3, 5.
        assert_eq!(s.ifds, [0, 2, 4, 1, 3, 5].map(|k| (0, k)));
    }

    #[test]
    fn tiffdata_per_plane_and_offsets() {
        let x = xml(
            "<Pixels DimensionOrder=\"XYZCT\" Type=\"uint8\" SizeX=\"4\" SizeY=\"3\" \
             SizeZ=\"2\" SizeT=\"2\">\
             <TiffData IFD=\"7\" FirstZ=\"0\" FirstT=\"0\"/><TiffData IFD=\"5\" FirstZ=\"1\"/>\
             <TiffData IFD=\"9\" FirstT=\"1\" PlaneCount=\"2\"/></Pixels>",
        );
        let s = &parse(&x, "a.ome.tif").unwrap()[0];
        assert_eq!(s.axes().0, vec!["t", "z", "y", "x"]);
        assert_eq!(s.ifds, [7, 5, 9, 10].map(|k| (0, k)));
    }

    #[test]
    fn planes_in_other_files_name_them() {
        // Multi-file: z=0,1 in this file's pages 0 and 1, z=2 in b's page 0, z=3 in c's 0.
        let x = xml(
            "<Pixels DimensionOrder=\"XYZCT\" SizeX=\"4\" SizeY=\"3\" SizeZ=\"4\">\
             <TiffData IFD=\"0\" PlaneCount=\"2\"><UUID FileName=\"a.ome.tif\">u1</UUID></TiffData>\
             <TiffData FirstZ=\"2\"><UUID FileName=\"b.ome.tif\">u2</UUID></TiffData>\
             <TiffData FirstZ=\"3\"><UUID FileName=\"c.ome.tif\">u3</UUID></TiffData></Pixels>",
        );
        let s = &parse(&x, "a.ome.tif").unwrap()[0];
        assert_eq!(s.files, ["", "b.ome.tif", "c.ome.tif"]);
        assert_eq!(s.ifds, [(0, 0), (0, 1), (1, 0), (2, 0)]);
    }

    #[test]
    fn physical_sizes_follow_the_axes_in_udunits() {
        // OME's units are symbols (µm by default); OME-Zarr's are UDUNITS-2 names.
        let x = xml(
            "<Pixels DimensionOrder=\"XYZCT\" Type=\"uint8\" SizeX=\"4\" SizeY=\"3\" \
             SizeZ=\"2\" SizeC=\"2\" SizeT=\"3\" PhysicalSizeX=\"0.25\" PhysicalSizeY=\"0.5\" \
             PhysicalSizeYUnit=\"nm\" PhysicalSizeZ=\"2\" TimeIncrement=\"1.5\" \
             TimeIncrementUnit=\"min\"/>",
        );
        let v = parse(&x, "a").unwrap()[0].voxel_size().unwrap();
        assert_eq!(v.size, vec![1.5, 1.0, 2.0, 0.5, 0.25]);
        let units: Vec<Option<&str>> = v.units.iter().map(Option::as_deref).collect();
        assert_eq!(
            units,
            [
                Some("minute"),
                None,
                Some("micrometer"),
                Some("nanometer"),
                Some("micrometer")
            ]
        );
        // A unit OME-Zarr lacks keeps its size without a unit; a bad size is ignored.
        let x = xml(
            "<Pixels SizeX=\"4\" SizeY=\"3\" PhysicalSizeX=\"3\" PhysicalSizeXUnit=\"pixel\" \
             PhysicalSizeY=\"-1\"/>",
        );
        let v = parse(&x, "a").unwrap()[0].voxel_size().unwrap();
        assert_eq!((v.size, v.units), (vec![1.0, 1.0, 3.0], vec![None; 3]));
        // None given: none known.
        let x = xml("<Pixels SizeX=\"4\" SizeY=\"3\"/>");
        assert_eq!(parse(&x, "a").unwrap()[0].voxel_size(), None);
    }

    #[test]
    fn bad_ome_is_named() {
        let missing = xml(
            "<Pixels DimensionOrder=\"XYZCT\" SizeX=\"4\" SizeY=\"3\" SizeZ=\"2\">\
             <TiffData IFD=\"0\" PlaneCount=\"1\"/></Pixels>",
        );
        let e = parse(&missing, "a.ome.tif").unwrap_err();
        assert!(e.contains("no page holds plane z=1"), "{e}");
        let order = xml("<Pixels DimensionOrder=\"XZYCT\" SizeX=\"4\"/>");
        assert!(parse(&order, "a").unwrap_err().contains("DimensionOrder"));
        let other = xml(
            "<Pixels SizeX=\"4\" SizeY=\"4\"><TiffData><UUID FileName=\"../b.ome.tif\">u\
             </UUID></TiffData></Pixels>",
        );
        let e = parse(&other, "a.ome.tif").unwrap_err();
        assert!(e.contains("not a file name"), "{e}");
        let huge = xml("<Pixels SizeX=\"4\" SizeZ=\"100000\" SizeC=\"100000\"/>");
        assert!(parse(&huge, "a").unwrap_err().contains("too many"));
        assert!(parse("<OME", "a").is_err());
        assert!(parse("<OME/>", "a").unwrap_err().contains("no Image"));
    }
}
