//! chunkwise: arrays too big for memory, stored as chunked, compressed Zarr v3 arrays.
//!
//! The chunk grid of a store doubles as the block decomposition for computing on it. The
//! library converts .npy / raw / TIFF stacks, views and arrays in memory into stores
//! ([`convert()`], [`from_array`]); computes on them block by block with halos, by the kernels
//! of [`kernel`] ([`run()`]) or by closures ([`map_overlap`], [`map_blocks`]); reduces them in
//! one pass ([`reduce()`]: statistics, histograms, per-chunk sums); lists selected voxels and
//! the edges between them ([`where_coords`], [`graph_edges`]); grows them by [`append`],
//! [`concat()`] and [`stack`] as metadata edits (chunk files are linked, not copied); writes
//! regions into them ([`Store::create`], [`Store::write_region`]); and exports, summarises and
//! checks them ([`export()`], [`info()`], [`verify()`]). `spec/LIBRARY.md` tells the embedding
//! story; the on-disk format is described in `spec/FORMAT.md`, the command line in
//! `spec/CLI.md`.
//!
//! Every operation reads an [`Input`] (a store, a file `convert` reads, a JSON view spec, a
//! [`View`] or an array in memory), opened once:
//!
//! ```no_run
//! use std::path::Path;
//! use chunkwise::{ConvertOptions, Input, Region};
//!
//! let slices = Input::open("slices/")?;
//! let report = chunkwise::convert(
//!     &slices,
//!     Path::new("volume.zarr"),
//!     &ConvertOptions::default().chunks(Some(vec![64, 256, 256])),
//! )?;
//! println!("{} chunks written", report.chunks_written);
//!
//! let volume = Input::open("volume.zarr")?;
//! let block = volume.read_region::<u16>(&Region::new(vec![0..10, 0..100, 0..100]))?;
//! assert_eq!(block.shape(), &[10, 100, 100]);
//! # Ok::<(), chunkwise::Error>(())
//! ```
//!
//! Long operations run on a rayon pool (`threads`) and report progress through a callback
//! ([`ProgressFn`]); the library never prints.

#![warn(missing_docs)]

mod chart;
mod convert;
mod copy;
mod cumulative;
mod dtype;
mod error;
mod exec;
mod export;
mod fingerprint;
mod grid;
mod grow;
mod halo;
mod index;
mod input;
mod inspect;
pub mod kernel;
mod npy;
mod ome;
mod preview;
mod progress;
mod project;
mod pyramid;
mod rechunk;
mod reduce;
mod region;
mod run;
mod source;
mod store;
mod synth;
mod view;

pub use chart::{
    BAR_RGB, ChartFormat, ChartOptions, ChartReport, MARK_RGB, MAX_BARS, histogram_chart,
};
pub use convert::{ConvertOptions, ConvertReport, convert, from_array};
pub use cumulative::{CumOp, Cumulative};
pub use dtype::{DType, Element, Number, ParseError, Scalar};
pub use error::{
    Error, GrowError, Incompatibility, InputError, KernelError, Result, Source, StoreError,
};
pub use exec::{
    ExecOptions, ExecReport, ExecStatus, MapSpec, apply_in_memory, map_blocks, map_overlap, run,
};
pub use export::{ExportOptions, ExportReport, export};
pub use grid::{Grid, default_chunks};
pub use grow::{
    GridLayout, GrowOptions, GrowReport, append, append_with_labels, concat, concat_into, stack,
};
pub use halo::{Boundary, Segment, segments};
pub use index::{
    IndexOptions, IndexReport, MAX_GRAPH_NDIM, Select, connectivities, forward_offsets,
    graph_edges, where_coords,
};
pub use input::Input;
pub use inspect::{BadChunk, StoreInfo, VerifyReport, info, verify};
pub use ome::{Image, ImageAxis, ImageLevel, VoxelSize};
pub use preview::{Colormap, Contrast, Picture, PreviewOptions, PreviewReport, preview};
pub use progress::{Progress, ProgressFn, Unit};
pub use project::{
    AxisOp, AxisReduceOptions, AxisResult, reduce_axes, reduce_axes_to, write_axis_results,
};
pub use pyramid::{
    MAX_LEVELS, PyramidLevel, PyramidOptions, PyramidReport, pyramid, pyramid_status,
    pyramid_with_labels,
};
pub use rechunk::Decodes;
pub use reduce::{
    AxisStats, ChunkStats, Counts, Histogram, MAX_BINS, PartialResult, PerChunk, ReduceOptions,
    Reduction, Stats, StatsAcc, ValueCounts, reduce, reduce_part,
};
pub use region::{ParsedRegion, Region};
pub use run::{Cancel, DEFAULT_MEMORY, RunOptions};
pub use source::RawOptions;
pub use store::{
    ChunkCodec, Codec, Durability, JobStatus, MAX_CHUNK_BYTES, MAX_CHUNKS, MAX_RANK, PartStatus,
    PartsFinish, Store, StoreSpec, StoreWriter, WriteReport, is_store, job_status,
};
pub use view::{MAX_SPEC_DEPTH, MAX_SPEC_NODES, View};

/// What the command line, the demo, the tests and the benches share that is not the library's
/// API: formatting, small `.npy` files, synthetic volumes. Not covered by semver.
#[doc(hidden)]
pub mod support {
    pub use crate::inspect::human_bytes;
    pub use crate::npy::{NpyHeader, header_bytes as npy_header, parse_header as parse_npy_header};

    /// Writes a whole in-memory array as a C-order .npy file (small arrays: tests, the demo,
    /// tables), replacing any file there whole (a unique temporary file, then a rename).
    ///
    /// # Errors
    /// [`crate::Error::Io`] if the file cannot be written.
    pub fn write_npy(
        path: &std::path::Path,
        dtype: crate::DType,
        shape: &[u64],
        data: &[u8],
    ) -> crate::Result<()> {
        let mut bytes = crate::npy::header_bytes(dtype, shape);
        bytes.extend_from_slice(data);
        crate::store::write_atomic(path, &bytes, false)
    }
    pub use crate::reduce::{region_of, write_table};

    /// Writes a small output file whole (a unique temporary file, then a rename): never over
    /// an existing file without `overwrite`, even one that appears meanwhile.
    ///
    /// # Errors
    /// [`crate::Error::OutputExists`]; [`crate::Error::InvalidOption`] for a directory, device
    /// or pipe; [`crate::Error::Io`].
    pub fn write_output(
        path: &std::path::Path,
        bytes: &[u8],
        overwrite: bool,
    ) -> crate::Result<()> {
        crate::store::write_output(path, bytes, overwrite)
    }
    pub use crate::region::fmt_shape;
    /// Synthetic microscopy-like volumes (the demo's data).
    pub mod synth {
        pub use crate::synth::*;
    }
}
