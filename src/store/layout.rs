//! The layout of a Zarr v3 array as its `zarr.json` describes it: shape, chunk edges per axis
//! (a `regular` grid, or the zarr-extensions `rectilinear` grid), and chunk keys. Read and
//! rewritten as JSON, so that growing an array edits exactly the fields that change and keeps
//! everything else (codecs, attributes, names) byte for byte (spec/APPEND.md §2).

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use zarrs::array::ChunkKeyEncoding;
use zarrs::array::chunk_key_encoding::DefaultChunkKeyEncoding;
use zarrs::metadata::v3::MetadataV3;

use crate::error::{Error, IoContext, Result, StoreError};
use crate::region::fmt_shape;

/// The chunk edges of one axis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Edges {
    /// Every chunk `c` long (a regular grid's axis, or a bare integer in a rectilinear one).
    Fixed(u64),
    /// Explicit lengths, in order; they sum to at least the extent.
    Varying(Vec<u64>),
}

impl Edges {
    /// The explicit lengths of the chunks that cover `extent`.
    pub(crate) fn list(&self, extent: u64) -> Vec<u64> {
        match self {
            Edges::Fixed(c) => vec![*c; extent.div_ceil(*c) as usize],
            Edges::Varying(v) => {
                // Only as many as reach the extent (an array shrunk by a reader keeps extras).
                let mut out = Vec::new();
                let mut end = 0;
                for &e in v {
                    if end >= extent && !out.is_empty() {
                        break;
                    }
                    out.push(e);
                    end += e;
                }
                out
            }
        }
    }

    /// Edges from explicit lengths: `Fixed(c)` when every one is `c` (the last may be anything
    /// covering the rest, as in a regular grid) and `prefer_fixed`.
    pub(crate) fn from_list(list: &[u64], extent: u64, prefer_fixed: bool) -> Edges {
        if prefer_fixed
            && let Some(&c) = list.first()
            && list.iter().all(|&e| e == c)
            && list.len() as u64 == extent.div_ceil(c)
        {
            return Edges::Fixed(c);
        }
        Edges::Varying(list.to_vec())
    }

    /// The rectilinear JSON form: a bare integer, or a run-length encoded list.
    fn to_json(&self) -> Value {
        match self {
            Edges::Fixed(c) => json!(c),
            Edges::Varying(v) => {
                let mut out: Vec<Value> = Vec::new();
                let mut k = 0;
                while k < v.len() {
                    let mut n = 1;
                    while k + n < v.len() && v[k + n] == v[k] {
                        n += 1;
                    }
                    out.push(if n == 1 {
                        json!(v[k])
                    } else {
                        json!([v[k], n])
                    });
                    k += n;
                }
                Value::Array(out)
            }
        }
    }

    fn from_json(v: &Value) -> Option<Edges> {
        if let Some(c) = v.as_u64() {
            return (c > 0).then_some(Edges::Fixed(c));
        }
        if edge_count(v) > super::MAX_CHUNKS {
            return None;
        }
        let mut out = Vec::new();
        for e in v.as_array()? {
            match e {
                Value::Number(n) => out.push(n.as_u64().filter(|&c| c > 0)?),
                Value::Array(pair) => match pair.as_slice() {
                    [len, count] => {
                        let (len, count) = (len.as_u64()?, count.as_u64()?);
                        if len == 0 {
                            return None;
                        }
                        out.extend(std::iter::repeat_n(len, usize::try_from(count).ok()?));
                    }
                    _ => return None,
                },
                _ => return None,
            }
        }
        (!out.is_empty()).then_some(Edges::Varying(out))
    }
}

/// How many chunks one axis of a rectilinear `chunk_shapes` lists (sizes, and `[size, count]`
/// runs), saturating; 0 for a single size (a regular axis) or what is not a list.
pub(crate) fn edge_count(v: &Value) -> u64 {
    v.as_array().map_or(0, |list| {
        list.iter().fold(0u64, |n, e| match e {
            Value::Array(pair) => {
                n.saturating_add(pair.get(1).and_then(Value::as_u64).unwrap_or(1))
            }
            _ => n.saturating_add(1),
        })
    })
}

/// A Zarr v3 array's layout, from its `zarr.json`.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    path: PathBuf,
    meta: Value,
    shape: Vec<u64>,
    edges: Vec<Edges>,
    /// How chunk indices become keys (zarrs' encoding named in the metadata).
    keys: ChunkKeyEncoding,
}

impl Layout {
    /// Reads `path/zarr.json`.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`crate::StoreError::NotAStore`], [`crate::StoreError::ReadOnly`] for a Zarr v2 array,
    /// [`crate::StoreError::BadMetadata`] for a chunk grid or key encoding chunkwise cannot edit.
    pub(crate) fn read(path: &Path) -> Result<Layout> {
        if super::is_url(path) {
            // An array on object storage: its zarr.json object; keys as locally.
            let r = super::Remote::open(&path.to_string_lossy())?;
            let url = PathBuf::from(r.url());
            let Some(bytes) = r.get("zarr.json")? else {
                return Err(Error::Store(StoreError::NotAStore(url)));
            };
            let meta: Value =
                serde_json::from_slice(&bytes).map_err(|e| bad(&url, e.to_string()))?;
            return Layout::from_json(&url, meta);
        }
        if !path.exists() {
            return Err(Error::NotFound(path.to_path_buf()));
        }
        let file = path.join("zarr.json");
        if !file.is_file() {
            if path.join(".zarray").is_file() {
                return Err(Error::Store(StoreError::ReadOnly {
                    path: path.to_path_buf(),
                    reason: "a Zarr v2 array is read-only here; `chunkwise convert` it to v3 first"
                        .into(),
                }));
            }
            return Err(Error::Store(StoreError::NotAStore(path.to_path_buf())));
        }
        let text = fs::read_to_string(&file).at(&file)?;
        let meta: Value = serde_json::from_str(&text).map_err(|e| bad(path, e.to_string()))?;
        Layout::from_json(path, meta)
    }

    pub(crate) fn from_json(path: &Path, meta: Value) -> Result<Layout> {
        let shape: Vec<u64> = meta["shape"]
            .as_array()
            .and_then(|a| a.iter().map(Value::as_u64).collect())
            .ok_or_else(|| bad(path, "no shape".into()))?;
        let grid = &meta["chunk_grid"];
        let cfg = &grid["configuration"];
        let edges: Vec<Edges> = match grid["name"].as_str() {
            Some("regular") => cfg["chunk_shape"]
                .as_array()
                .and_then(|a| {
                    a.iter()
                        .map(|c| c.as_u64().filter(|&c| c > 0).map(Edges::Fixed))
                        .collect()
                })
                .ok_or_else(|| bad(path, "bad regular chunk_shape".into()))?,
            Some("rectilinear") => cfg["chunk_shapes"]
                .as_array()
                .and_then(|a| a.iter().map(Edges::from_json).collect())
                .ok_or_else(|| bad(path, "bad rectilinear chunk_shapes".into()))?,
            other => {
                return Err(bad(
                    path,
                    format!("chunk grid {other:?}: only regular and rectilinear grids can grow"),
                ));
            }
        };
        if edges.len() != shape.len() {
            return Err(bad(path, "chunk grid and shape differ in rank".into()));
        }
        let keys = match meta.get("chunk_key_encoding") {
            None => ChunkKeyEncoding::new(DefaultChunkKeyEncoding::default()),
            Some(enc) => serde_json::from_value::<MetadataV3>(enc.clone())
                .map_err(|e| e.to_string())
                .and_then(|m| ChunkKeyEncoding::from_metadata(&m).map_err(|e| e.to_string()))
                .map_err(|e| bad(path, format!("chunk key encoding {enc}: {e}")))?,
        };
        Ok(Layout {
            path: path.to_path_buf(),
            meta,
            shape,
            edges,
            keys,
        })
    }

    /// The array's directory.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The whole `zarr.json`.
    pub(crate) fn meta(&self) -> &Value {
        &self.meta
    }

    pub(crate) fn shape(&self) -> &[u64] {
        &self.shape
    }

    pub(crate) fn edges(&self) -> &[Edges] {
        &self.edges
    }

    /// The key of chunk `idx` (`c/1/0/3`).
    pub(crate) fn key(&self, idx: &[u64]) -> String {
        self.keys.encode(idx).as_str().to_string()
    }

    /// The file of chunk `idx`.
    pub(crate) fn chunk_file(&self, idx: &[u64]) -> PathBuf {
        self.path.join(self.key(idx))
    }

    /// A field that must agree between arrays that are joined, as its JSON.
    pub(crate) fn field(&self, name: &str) -> &Value {
        &self.meta[name]
    }

    /// Whether the codecs include sharding, and the subchunk shape if so.
    pub(crate) fn subchunks(&self) -> Option<Vec<u64>> {
        self.meta["codecs"].as_array()?.iter().find_map(|c| {
            (c["name"] == "sharding_indexed").then(|| {
                c["configuration"]["chunk_shape"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_u64).collect())
                    .unwrap_or_default()
            })
        })
    }

    /// This array's `zarr.json` with a new shape and chunk edges (a `regular` grid when every
    /// axis is `Fixed`, else `rectilinear`), keeping every other field.
    pub(crate) fn metadata_with(&self, shape: &[u64], edges: &[Edges]) -> Value {
        let mut meta = self.meta.clone();
        meta["shape"] = json!(shape);
        let regular: Option<Vec<u64>> = edges
            .iter()
            .map(|e| match e {
                Edges::Fixed(c) => Some(*c),
                Edges::Varying(_) => None,
            })
            .collect();
        meta["chunk_grid"] = match regular {
            Some(chunk_shape) => {
                json!({"name": "regular", "configuration": {"chunk_shape": chunk_shape}})
            }
            None => json!({"name": "rectilinear", "configuration": {
                "kind": "inline",
                "chunk_shapes": edges.iter().map(Edges::to_json).collect::<Vec<_>>(),
            }}),
        };
        meta
    }

    /// Removes the chunk files whose index lies outside the grid (left by an edit killed
    /// before its commit: no reader of this metadata can reach them). Returns how many.
    ///
    /// # Errors
    /// [`Error::Io`].
    pub(crate) fn remove_outside_grid(&self) -> Result<u64> {
        let mut removed = 0;
        let mut dirs = vec![PathBuf::new()];
        while let Some(rel) = dirs.pop() {
            let dir = self.path.join(&rel);
            for e in fs::read_dir(&dir).at(&dir)? {
                let e = e.at(&dir)?;
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') || (rel.as_os_str().is_empty() && name == "zarr.json") {
                    continue;
                }
                let sub = rel.join(&name);
                if e.file_type().at(e.path())?.is_dir() {
                    dirs.push(sub);
                    continue;
                }
                let key = sub.to_string_lossy().into_owned();
                if self.outside_grid(&key) {
                    let p = e.path();
                    fs::remove_file(&p).at(&p)?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Whether `key` (relative to the array) is a chunk key of this array's encoding outside
    /// its grid (placed there by an edit that was never committed).
    pub(crate) fn outside_grid(&self, key: &str) -> bool {
        let counts: Vec<u64> = self
            .edges
            .iter()
            .zip(&self.shape)
            .map(|(e, &n)| e.list(n).len() as u64)
            .collect();
        let idx: Option<Vec<u64>> = key
            .split(['/', '.'])
            .skip_while(|t| *t == "c")
            .map(|t| t.parse().ok())
            .collect();
        let Some(idx) = idx.filter(|i| i.len() == counts.len()) else {
            return false;
        };
        // Only names this array's key encoding makes are chunks.
        self.key(&idx) == key && idx.iter().zip(&counts).any(|(&i, &n)| i >= n)
    }

    /// `shape` as `512x1024x1024`, for messages.
    pub(crate) fn shape_text(&self) -> String {
        fmt_shape(&self.shape)
    }
}

fn bad(path: &Path, reason: String) -> Error {
    Error::Store(StoreError::BadMetadata {
        path: path.to_path_buf(),
        reason,
        source: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_round_trip_through_run_length_json() {
        let e = Edges::Varying(vec![64, 64, 36, 64, 64, 64, 7]);
        let j = e.to_json();
        assert_eq!(j, json!([[64, 2], 36, [64, 3], 7]));
        assert_eq!(Edges::from_json(&j), Some(e));
        assert_eq!(Edges::from_json(&json!(128)), Some(Edges::Fixed(128)));
        assert_eq!(Edges::from_json(&json!([0])), None);
        assert_eq!(Edges::Fixed(64).list(170), vec![64, 64, 64]);
        assert_eq!(
            Edges::Varying(vec![64, 36, 64, 64]).list(170),
            vec![64, 36, 64, 64]
        );
        assert_eq!(Edges::Varying(vec![64, 36, 64, 64]).list(90), vec![64, 36]);
        assert_eq!(Edges::from_list(&[64, 64, 64], 170, true), Edges::Fixed(64));
        assert_eq!(
            Edges::from_list(&[64, 36, 64], 164, true),
            Edges::Varying(vec![64, 36, 64])
        );
    }
}
