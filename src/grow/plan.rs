//! Planning a join: the operands (the target, stores whose chunks can be linked, new data to
//! encode), the checks that they can be joined, and which chunk layers of the result are
//! linked and which encoded (APPEND §3). Invariant: planning writes nothing.

use std::path::{Path, PathBuf};

use super::{GridLayout, GrowOptions};
use crate::error::{Error, GrowError, Incompatibility, IoContext, Result, StoreError};
use crate::input::Input;
use crate::region::{check_shapes, fmt_shape};
use crate::store::{Edges, Layout, is_store};
use crate::view::{View, store_source};

/// One array being joined.
pub(super) struct Operand {
    /// What to read when encoding (cast and axis-inserted as needed).
    pub(super) view: View,
    /// The stored layout, when its chunk files can be used as they are.
    pub(super) layout: Option<Layout>,
    /// Whether the operand's data is already stored (a store, linkable or not).
    pub(super) stored: bool,
    pub(super) extent: u64,
}

/// What happens to one chunk layer (all chunks with one index along the axis).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Act {
    /// Link operand `op`'s layer `layer`.
    Link { op: usize, layer: u64 },
    /// Encode from the joined data.
    Encode,
}

#[derive(Debug, Clone)]
pub(super) struct LayerPlan {
    pub(super) act: Act,
    /// First row along the axis, and the layer's chunk edge.
    pub(super) start: u64,
    pub(super) edge: u64,
}

pub(super) struct Plan {
    pub(super) layers: Vec<LayerPlan>,
    pub(super) axis_edges: Edges,
}

// ---------------------------------------------------------------- operands and checks

pub(super) fn target_operand(t: &Layout) -> Result<Operand> {
    let store = store_source(t.path())?;
    Ok(Operand {
        extent: 0, // set by the caller's axis below
        view: View::from_source(store),
        layout: Some(t.clone()),
        stored: true,
    })
}

/// A store joined to `base`: its chunks are linked when compatible; with `strict`
/// (concat) incompatibility is an error, otherwise (append) its data is re-encoded.
pub(super) fn stored_operand(
    p: &Path,
    base: &Layout,
    opts: &GrowOptions,
    strict: bool,
) -> Result<Operand> {
    let l = Layout::read(p)?;
    check_rank_and_axes(base, &l, opts.axis)?;
    let compatible = check_compatible(base, &l, Some(opts.axis));
    let mut view = View::from_source(store_source(p)?);
    let layout = match compatible {
        Ok(()) => Some(l),
        Err(e) if strict => return Err(e),
        Err(_) => None,
    };
    if layout.is_none() {
        view = cast_to(view, base, p, opts)?;
    }
    Ok(Operand {
        extent: view.shape()[opts.axis],
        view,
        layout,
        stored: true,
    })
}

/// New data from files: read through a view, cast and given the growth axis if it lacks it.
pub(super) fn fresh_operand(input: &Input, base: &Layout, opts: &GrowOptions) -> Result<Operand> {
    let mut view = input.view();
    let ndim = base.shape().len();
    if view.shape().len() + 1 == ndim {
        // One slice: it gains the axis it is appended along.
        view = view.insert_axis(opts.axis)?;
    }
    let shown = input.path().to_path_buf();
    if view.shape().len() != ndim {
        return Err(Error::option(
            "input",
            format!(
                "{} is {}-d ({}), the array is {}-d ({})",
                shown.display(),
                view.shape().len(),
                fmt_shape(view.shape()),
                ndim,
                base.shape_text()
            ),
        ));
    }
    check_axes(base.path(), base.shape(), &shown, view.shape(), opts.axis)?;
    let view = cast_to(view, base, &shown, opts)?;
    Ok(Operand {
        extent: view.shape()[opts.axis],
        view,
        layout: None,
        stored: false,
    })
}

pub(super) fn cast_to(view: View, base: &Layout, path: &Path, opts: &GrowOptions) -> Result<View> {
    let want: crate::DType = base
        .field("data_type")
        .as_str()
        .unwrap_or("")
        .parse()
        .map_err(|_| {
            Error::bad_metadata(
                base.path(),
                format!("data type {} is not supported", base.field("data_type")),
            )
        })?;
    if view.dtype() == want {
        return Ok(view);
    }
    if !opts.cast {
        return Err(Error::option(
            "cast",
            format!(
                "{} holds {}, {} holds {}: allow casting to convert them (widening casts only)",
                path.display(),
                view.dtype(),
                base.path().display(),
                want
            ),
        ));
    }
    view.cast(want)
}

pub(super) fn check_rank_and_axes(base: &Layout, other: &Layout, axis: usize) -> Result<()> {
    if base.shape().len() != other.shape().len() {
        return Err(Error::Grow(GrowError::Incompatible(Box::new(
            Incompatibility {
                left_path: base.path().to_path_buf(),
                right_path: other.path().to_path_buf(),
                field: "rank".into(),
                left: base.shape().len().to_string(),
                right: other.shape().len().to_string(),
            },
        ))));
    }
    check_axes(base.path(), base.shape(), other.path(), other.shape(), axis)
}

pub(super) fn check_axes(
    lp: &Path,
    left: &[u64],
    rp: &Path,
    right: &[u64],
    axis: usize,
) -> Result<()> {
    if axis >= left.len() {
        return Err(Error::option(
            "axis",
            format!("{axis} is out of range for a {}-d array", left.len()),
        ));
    }
    check_shapes(lp, left, rp, right, Some(axis))
}

/// The fields joined arrays must share (APPEND §3.1): type, fill value, codecs, and the
/// chunk edges of every axis but `axis` (`None`: every axis).
pub(super) fn check_compatible(base: &Layout, other: &Layout, axis: Option<usize>) -> Result<()> {
    for field in ["data_type", "fill_value", "codecs"] {
        let (a, b) = (base.field(field), other.field(field));
        if a != b {
            return Err(Error::Grow(GrowError::Incompatible(Box::new(
                Incompatibility {
                    left_path: base.path().to_path_buf(),
                    right_path: other.path().to_path_buf(),
                    field: field.into(),
                    left: a.to_string(),
                    right: b.to_string(),
                },
            ))));
        }
    }
    for (k, (a, b)) in base.edges().iter().zip(other.edges()).enumerate() {
        if Some(k) == axis {
            continue;
        }
        let (la, lb) = (a.list(base.shape()[k]), b.list(other.shape()[k]));
        if la != lb {
            return Err(Error::Grow(GrowError::Incompatible(Box::new(
                Incompatibility {
                    left_path: base.path().to_path_buf(),
                    right_path: other.path().to_path_buf(),
                    field: format!("chunk_grid (axis {k})"),
                    left: format!("{a:?}"),
                    right: format!("{b:?}"),
                },
            ))));
        }
    }
    Ok(())
}

/// Inputs of a join: all stores, none twice, the output not inside one.
pub(super) fn check_axis(target: &Layout, axis: usize) -> Result<()> {
    let ndim = target.shape().len();
    if axis >= ndim {
        return Err(Error::option(
            "axis",
            format!(
                "{axis} is out of range for the {ndim}-d array {}",
                target.path().display()
            ),
        ));
    }
    Ok(())
}

/// The array grown in place must exist and be an array (before a lock file is put in it).
pub(super) fn check_target(path: &Path) -> Result<()> {
    if !path.exists() {
        return Err(Error::NotFound(path.to_path_buf()));
    }
    if !is_store(path) {
        return Err(Error::Store(StoreError::NotAStore(path.to_path_buf())));
    }
    Ok(())
}

pub(super) fn check_join_inputs(inputs: &[PathBuf], out: Option<&Path>) -> Result<()> {
    if inputs.len() < 2 {
        return Err(Error::option("inputs", "give at least two arrays to join"));
    }
    let mut seen: Vec<PathBuf> = Vec::new();
    for p in inputs {
        if !p.exists() {
            return Err(Error::NotFound(p.clone()));
        }
        if !is_store(p) {
            return Err(Error::Store(StoreError::NotAStore(p.clone())));
        }
        let c = p.canonicalize().at(p)?;
        if seen.contains(&c) {
            return Err(Error::option(
                "inputs",
                format!(
                    "{} is given twice: an array cannot be joined with itself (a view can repeat it)",
                    p.display()
                ),
            ));
        }
        seen.push(c);
    }
    if let Some(out) = out {
        let parent = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if let Ok(parent) = parent.canonicalize() {
            let out_c = parent.join(out.file_name().unwrap_or_default());
            if let Some(inside) = seen.iter().find(|s| out_c.starts_with(s)) {
                return Err(Error::option(
                    "output",
                    format!(
                        "{} is inside the input {}; write the result elsewhere (or join into the first input)",
                        out.display(),
                        inside.display()
                    ),
                ));
            }
        }
    }
    Ok(())
}

pub(super) fn check_not_self(store: &Path, inputs: &[Input]) -> Result<()> {
    let s = store.canonicalize().at(store)?;
    for p in inputs.iter().flat_map(|i| i.paths()) {
        if p.canonicalize()
            .ok()
            .is_some_and(|c| c == s || c.starts_with(&s))
        {
            return Err(Error::option(
                "input",
                format!(
                    "{} is the array being appended to (or inside it)",
                    p.display()
                ),
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- plans

pub(super) fn prefix(extents: impl Iterator<Item = u64>) -> Vec<u64> {
    let mut at = 0;
    extents
        .map(|e| {
            let s = at;
            at += e;
            s
        })
        .collect()
}

/// Every output layer `c` long; a layer links an operand's chunk layer when that layer holds
/// exactly the same rows (and padding only past the end of the result).
pub(super) fn plan_regular(ops: &[Operand], axis: usize, c: u64) -> Plan {
    let total: u64 = ops.iter().map(|o| o.extent).sum();
    let offsets = prefix(ops.iter().map(|o| o.extent));
    let last = ops.len() - 1;
    let mut layers = Vec::new();
    for l in 0..total.div_ceil(c) {
        let start = l * c;
        let k = (0..ops.len())
            .rev()
            .find(|&k| offsets[k] <= start && ops[k].extent > 0)
            .unwrap_or(0);
        let mut act = Act::Encode;
        if let Some(lay) = &ops[k].layout {
            let edges = lay.edges()[axis].list(ops[k].extent);
            let local = start - offsets[k];
            let starts = prefix(edges.iter().copied());
            if let Some(j) = starts.iter().position(|&s| s == local)
                && edges[j] == c
                && (local + c <= ops[k].extent || k == last)
            {
                act = Act::Link {
                    op: k,
                    layer: j as u64,
                };
            }
        }
        layers.push(LayerPlan {
            act,
            start,
            edge: c,
        });
    }
    Plan {
        layers,
        axis_edges: Edges::Fixed(c),
    }
}

/// Each operand keeps its own chunk layers; a partial last layer of an operand that is not
/// last is re-encoded at its true length; new data is cut into `nominal`-long chunks.
pub(super) fn plan_rectilinear(ops: &[Operand], axis: usize, nominal: u64) -> Plan {
    let total: u64 = ops.iter().map(|o| o.extent).sum();
    let last = ops.len() - 1;
    let mut layers = Vec::new();
    let mut at = 0;
    for (k, op) in ops.iter().enumerate() {
        if op.extent == 0 {
            continue;
        }
        match &op.layout {
            Some(lay) => {
                let edges = lay.edges()[axis].list(op.extent);
                let sum: u64 = edges.iter().sum();
                for (j, &e) in edges.iter().enumerate() {
                    let trimmed = j + 1 == edges.len() && k != last && sum > op.extent;
                    let edge = if trimmed { e - (sum - op.extent) } else { e };
                    let act = if trimmed {
                        Act::Encode
                    } else {
                        Act::Link {
                            op: k,
                            layer: j as u64,
                        }
                    };
                    layers.push(LayerPlan {
                        act,
                        start: at,
                        edge,
                    });
                    at += edge;
                }
            }
            None => {
                let (full, rem) = (op.extent / nominal, op.extent % nominal);
                for _ in 0..full {
                    layers.push(LayerPlan {
                        act: Act::Encode,
                        start: at,
                        edge: nominal,
                    });
                    at += nominal;
                }
                if rem > 0 {
                    // The end of the result keeps a full-length (overflow) edge that later
                    // appends fill; inside it, an edge is exactly its data.
                    let edge = if k == last { nominal } else { rem };
                    layers.push(LayerPlan {
                        act: Act::Encode,
                        start: at,
                        edge,
                    });
                    at += rem;
                }
            }
        }
    }
    let list: Vec<u64> = layers.iter().map(|l| l.edge).collect();
    Plan {
        axis_edges: Edges::from_list(&list, total, true),
        layers,
    }
}

/// Layers that re-encode data already stored (the cost `auto` weighs).
pub(super) fn stored_reencoded(plan: &Plan, ops: &[Operand]) -> u64 {
    let offsets = prefix(ops.iter().map(|o| o.extent));
    let total: u64 = ops.iter().map(|o| o.extent).sum();
    plan.layers
        .iter()
        .filter(|l| l.act == Act::Encode)
        .filter(|l| {
            let (a, b) = (l.start, (l.start + l.edge).min(total));
            ops.iter()
                .zip(&offsets)
                .any(|(o, &s)| o.stored && o.extent > 0 && a < s + o.extent && s < b)
        })
        .count() as u64
}

pub(super) fn choose_plan(ops: &[Operand], base: &Layout, opts: &GrowOptions) -> Result<Plan> {
    let axis = opts.axis;
    let base_edges = &base.edges()[axis];
    let nominal = match base_edges {
        Edges::Fixed(c) => *c,
        Edges::Varying(v) => v.iter().copied().max().unwrap_or(1),
    };
    // Sharded arrays: every rectilinear edge must stay a multiple of the subchunk along the axis.
    let sub = base
        .subchunks()
        .and_then(|s| s.get(axis).copied())
        .filter(|&s| s > 0);
    let bad_edge = |plan: &Plan| match (&plan.axis_edges, sub) {
        (Edges::Varying(v), Some(s)) => v.iter().copied().find(|&e| e % s != 0).map(|e| (s, e)),
        _ => None,
    };
    let plan = match opts.layout {
        GridLayout::Regular => plan_regular(ops, axis, nominal),
        GridLayout::Rectilinear => plan_rectilinear(ops, axis, nominal),
        GridLayout::Auto => {
            let regular_ok = matches!(base_edges, Edges::Fixed(_))
                && ops
                    .iter()
                    .filter_map(|o| o.layout.as_ref())
                    .all(|l| matches!(l.edges()[axis], Edges::Fixed(_)));
            let reg = plan_regular(ops, axis, nominal);
            if regular_ok && stored_reencoded(&reg, ops) <= 1 {
                reg
            } else {
                let rect = plan_rectilinear(ops, axis, nominal);
                // A sharded join that cannot be rectilinear stays regular (re-encoding).
                if regular_ok && bad_edge(&rect).is_some() {
                    reg
                } else {
                    rect
                }
            }
        }
    };
    if let Some((s, bad)) = bad_edge(&plan) {
        return Err(Error::option(
            "layout",
            format!(
                "{}: sharded with subchunks of {s} along axis {axis}; a rectilinear edge of {bad} \
                 is not a multiple of it (use the regular layout, which keeps whole shards)",
                base.path().display()
            ),
        ));
    }
    Ok(plan)
}

pub(super) fn shape_of(ops: &[Operand], axis: usize) -> Vec<u64> {
    let mut shape = ops[0].view.shape().to_vec();
    shape[axis] = ops.iter().map(|o| o.extent).sum();
    shape
}

/// Chunks in a grid.
pub(super) fn grid_count(edges: &[Edges], shape: &[u64]) -> u64 {
    edges
        .iter()
        .zip(shape)
        .map(|(e, &n)| e.list(n).len() as u64)
        .product()
}
