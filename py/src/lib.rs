//! `chunkwise._chunkwise`: the Python binding of the chunkwise library (spec/PYTHON.md).
//!
//! Thin on purpose: every function here converts its arguments, calls one library function
//! with the GIL released, and converts the result back. Argument checking that needs numpy
//! (broadcasting, casting rules, slicing) and the user-facing signatures live in the Python
//! package (`py/python/chunkwise`); errors keep the library's messages.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use chunkwise::kernel::{
    Block, Correlate1d, Gaussian, Kernel, Lut, NeighbourhoodLut, OutBlock, Threshold, lut::Table,
};
use chunkwise::{
    Boundary, Cancel, Codec, ConvertOptions, DType, Error, ExecOptions, ExecReport, ExecStatus,
    GridLayout, GrowOptions, GrowReport, Histogram, IndexOptions, Input, MapSpec, Number, Progress,
    RawOptions, ReduceOptions, Region, RunOptions, Select, Stats, Store, StoreSpec, View,
};
use numpy::{PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

/// The library's error as the `chunkwise.errors` class of its kind, with its message.
fn to_py(e: Error) -> PyErr {
    let class = match &e {
        Error::Store(_) => "StoreError",
        Error::Input(_) => "InputError",
        Error::Kernel(_) => "KernelError",
        Error::Grow(_) => "GrowError",
        Error::Io { .. } => "IoError",
        Error::NotFound(_) => "NotFoundError",
        Error::InvalidOption { .. } => "InvalidOptionError",
        Error::BadRegion { .. } => "BadRegionError",
        Error::OutputExists(_) => "OutputExistsError",
        Error::Locked { .. } => "LockedError",
        Error::TooLarge { .. } => "TooLargeError",
        Error::Cancelled => "CancelledError",
        Error::Mismatch { .. } => "MismatchError",
        Error::Internal(_) => "InternalError",
        _ => "Error",
    };
    let msg = e.to_string();
    Python::attach(|py| {
        match py
            .import("chunkwise.errors")
            .and_then(|m| m.getattr(class))
            .and_then(|c| c.call1((msg.clone(),)))
        {
            Ok(v) => PyErr::from_value(v),
            Err(_) => PyRuntimeError::new_err(msg),
        }
    })
}

fn dtype_of(name: &str) -> PyResult<DType> {
    name.parse::<DType>()
        .map_err(|e| PyTypeError::new_err(e.to_string()))
}

fn number(s: &str) -> PyResult<Number> {
    s.parse::<Number>()
        .map_err(|e| PyValueError::new_err(format!("{s}: {e}")))
}

fn region(starts: &[u64], stops: &[u64]) -> Region {
    Region::new(starts.iter().zip(stops).map(|(&a, &b)| a..b).collect())
}

/// A raw pointer handed to the thread that fills a numpy buffer while the GIL is released.
struct SendBuf(*mut u8, usize);
// SAFETY: the buffer belongs to a numpy array created by the caller and not yet visible to any
// other Python code; the caller waits for the filling thread before touching it again.
unsafe impl Send for SendBuf {}
unsafe impl Sync for SendBuf {}

/// The keyword `k` of the options dict, absent or `None` meaning unset.
fn opt<'py, T: for<'a> FromPyObject<'a, 'py>>(
    d: &Bound<'py, PyDict>,
    k: &str,
) -> PyResult<Option<T>>
where
    for<'a> <T as FromPyObject<'a, 'py>>::Error: Into<PyErr>,
{
    match d.get_item(k)?.filter(|v| !v.is_none()) {
        Some(v) => Ok(Some(v.extract().map_err(Into::into)?)),
        None => Ok(None),
    }
}

/// A boolean keyword of the options dict (unset: false).
fn flag(d: &Bound<'_, PyDict>, k: &str) -> PyResult<bool> {
    Ok(opt(d, k)?.unwrap_or(false))
}

/// The settings every long call takes, read from the Python keyword dict.
struct Common {
    threads: Option<usize>,
    memory: Option<u64>,
    progress: Option<Py<PyAny>>,
}

impl Common {
    fn from(d: Option<&Bound<'_, PyDict>>) -> PyResult<Common> {
        let Some(d) = d else {
            return Ok(Common {
                threads: None,
                memory: None,
                progress: None,
            });
        };
        Ok(Common {
            threads: opt(d, "threads")?,
            memory: opt(d, "memory")?,
            progress: opt::<Bound<'_, PyAny>>(d, "progress")?.map(Bound::unbind),
        })
    }
}

/// One long call: a cancellation token, the run options built on it, and the first Python
/// error a callback raised (which ends the job and is what the caller sees).
struct Job {
    cancel: Cancel,
    run: RunOptions,
    raised: Arc<Mutex<Option<PyErr>>>,
}

/// Threads for a call that names none: one per core, on a chunkwise pool (never rayon's
/// global pool, which a forked child would inherit without its threads).
fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Job {
    fn new(c: &Common) -> Job {
        let cancel = Cancel::new();
        let raised: Arc<Mutex<Option<PyErr>>> = Arc::default();
        let mut run = RunOptions::default()
            .threads(Some(c.threads.unwrap_or_else(default_threads)))
            .memory(c.memory)
            .cancel(cancel.clone());
        if let Some(cb) = &c.progress {
            let cb = Python::attach(|py| cb.clone_ref(py));
            let (raised, cancel) = (raised.clone(), cancel.clone());
            run = run.progress(Some(Arc::new(move |p: Progress<'_>| {
                Python::attach(|py| {
                    let unit = match p.unit {
                        chunkwise::Unit::Bytes => "bytes",
                        chunkwise::Unit::Chunks => "chunk",
                    };
                    if let Err(e) = cb.call1(py, (p.done, p.total, p.stage, unit)) {
                        keep_first(&raised, e);
                        cancel.cancel();
                    }
                })
            })));
        }
        Job {
            cancel,
            run,
            raised,
        }
    }

    /// Runs `f` on another thread with the GIL released, checking for Ctrl-C (and other
    /// signals Python handles) every 50 ms: a signal cancels the job, which stops between
    /// chunks, and its exception (KeyboardInterrupt) is raised once the job has stopped. A
    /// panic in `f` (a bug) is an `InternalError`, never a hang. Called from a chunkwise worker
    /// (a Python function on blocks calling chunkwise), `f` runs right there, on the same pool:
    /// a new thread would queue its work behind the very workers waiting for it.
    fn run<R: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&RunOptions) -> chunkwise::Result<R> + Send,
    ) -> PyResult<R> {
        let guarded = |run: &RunOptions| -> chunkwise::Result<R> {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(run))).unwrap_or_else(|p| {
                let what = p
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into());
                Err(Error::Internal(format!(
                    "a chunkwise worker panicked: {what}"
                )))
            })
        };
        if rayon::current_thread_index().is_some() {
            let r = py.detach(|| guarded(&self.run));
            if let Some(e) = self.raised.lock().unwrap_or_else(|e| e.into_inner()).take() {
                return Err(e);
            }
            return r.map_err(to_py);
        }
        let slot: (Mutex<Option<chunkwise::Result<R>>>, Condvar) = Default::default();
        let result = std::thread::scope(|s| {
            let run = &self.run;
            let slot = &slot;
            s.spawn(move || {
                let r = guarded(run);
                *slot.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
                slot.1.notify_all();
            });
            let mut interrupted: Option<PyErr> = None;
            loop {
                let r = py.detach(|| {
                    let g = slot.0.lock().unwrap_or_else(|e| e.into_inner());
                    let (mut g, _) = slot
                        .1
                        .wait_timeout_while(g, Duration::from_millis(50), |r| r.is_none())
                        .unwrap_or_else(|e| e.into_inner());
                    g.take()
                });
                if let Some(r) = r {
                    break (r, interrupted);
                }
                if interrupted.is_none()
                    && let Err(e) = py.check_signals()
                {
                    self.cancel.cancel();
                    interrupted = Some(e);
                }
            }
        });
        let (r, interrupted) = result;
        if let Some(e) = interrupted {
            return Err(e);
        }
        if let Some(e) = self.raised.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return Err(e);
        }
        r.map_err(to_py)
    }
}

fn keep_first(slot: &Mutex<Option<PyErr>>, e: PyErr) {
    let mut g = slot.lock().unwrap_or_else(|e| e.into_inner());
    if g.is_none() {
        *g = Some(e);
    }
}

/// An opened input: a store, a view, files, or an array copied from numpy.
#[pyclass(module = "chunkwise._chunkwise", name = "Source", frozen)]
struct Source {
    input: Input,
}

#[pymethods]
impl Source {
    #[getter]
    fn shape(&self) -> Vec<u64> {
        self.input.shape().to_vec()
    }

    #[getter]
    fn dtype(&self) -> String {
        self.input.dtype().to_string()
    }

    /// The block grid's chunk shape (a store's chunks; for other inputs the blocks it is read by).
    #[getter]
    fn chunks(&self) -> Vec<u64> {
        self.input.block_grid().chunk_shape().to_vec()
    }

    #[getter]
    fn paths(&self) -> Vec<PathBuf> {
        self.input.paths().to_vec()
    }

    fn is_store(&self) -> bool {
        self.input.store().is_some()
    }

    fn describe(&self) -> String {
        self.input.describe()
    }

    /// `chunkwise info --json` of the input, as a JSON string.
    /// The voxel size the input records (sizes, units), if any.
    fn voxel_size(&self) -> Option<(Vec<f64>, Vec<Option<String>>)> {
        self.input.voxel_size().map(|v| (v.size, v.units))
    }

    fn info(&self, py: Python<'_>) -> PyResult<String> {
        self.check_present()?;
        let run = RunOptions::default().threads(Some(default_threads()));
        let info = py
            .detach(|| run.install(|| chunkwise::info(&self.input)))
            .map_err(to_py)?;
        Ok(info.to_json().to_string())
    }

    /// Reads the region `starts..stops` into `out`, a writable C-contiguous numpy array of the
    /// region's shape and the input's type (`uint8` for `bool`) that the caller allocated (so
    /// that a failed allocation is numpy's MemoryError), in parallel with the GIL released.
    #[pyo3(signature = (starts, stops, out, threads=None))]
    fn read_into(
        &self,
        py: Python<'_>,
        starts: Vec<u64>,
        stops: Vec<u64>,
        out: &Bound<'_, PyAny>,
        threads: Option<usize>,
    ) -> PyResult<()> {
        self.check_present()?;
        let region = region(&starts, &stops);
        let run = RunOptions::default().threads(Some(threads.unwrap_or_else(default_threads)));
        chunkwise::with_scalar!(self.input.dtype(), T => {
            let array = out.cast::<PyArrayDyn<T>>()?;
            let mut rw = array.try_readwrite()?;
            let values = rw.as_slice_mut()?;
            let bytes: &mut [u8] = bytemuck::cast_slice_mut(values);
            let buf = SendBuf(bytes.as_mut_ptr(), bytes.len());
            let input = &self.input;
            py.detach(move || {
                let buf = buf;
                // SAFETY: see SendBuf; `rw` keeps the array borrowed until this returns.
                let out = unsafe { std::slice::from_raw_parts_mut(buf.0, buf.1) };
                run.install(|| input.read_region_into(&region, out))
            })
            .map_err(to_py)
        })
    }

    /// Writes `data` (a C-contiguous array of the store's type, `uint8` for `bool`, with the
    /// region's shape) into the region `starts..stops` of the store.
    #[pyo3(signature = (starts, stops, data, threads=None))]
    fn write(
        &self,
        py: Python<'_>,
        starts: Vec<u64>,
        stops: Vec<u64>,
        data: &Bound<'_, PyAny>,
        threads: Option<usize>,
    ) -> PyResult<(u64, u64, u64, u64)> {
        self.check_present()?;
        let Some(store) = self.input.store() else {
            return Err(to_py(Error::InvalidOption {
                option: "array",
                reason: format!(
                    "{} is not a store: only stores are written (convert it first)",
                    self.input.describe()
                ),
            }));
        };
        let region = region(&starts, &stops);
        let run = RunOptions::default().threads(Some(threads.unwrap_or_else(default_threads)));
        let report = chunkwise::with_scalar!(self.input.dtype(), T => {
            let data: PyReadonlyArrayDyn<'_, T> = data.extract()?;
            let view = data.as_array();
            py.detach(|| store.write_region_with(&region, view, &run))
        })
        .map_err(to_py)?;
        Ok((
            report.chunks_written,
            report.chunks_read,
            report.chunks_removed,
            report.bytes_stored,
        ))
    }
}

impl Source {
    /// A store whose `zarr.json` is gone was deleted (or replaced) since it was opened: its
    /// chunks would all read as the fill value, so say so instead.
    fn check_present(&self) -> PyResult<()> {
        if let Some(store) = self.input.store() {
            store.check_present().map_err(to_py)?;
        }
        Ok(())
    }
}

fn src(input: Input) -> Source {
    Source { input }
}

/// Opens `paths` (one path: a store, a `.npy`, a directory or glob of slices, a TIFF, a JSON
/// view spec, a raw file with `dtype`/`shape` or a sidecar; several: slices in that order).
#[pyfunction]
#[pyo3(signature = (paths, dtype=None, shape=None, series=None))]
fn open(
    py: Python<'_>,
    paths: Vec<PathBuf>,
    dtype: Option<&str>,
    shape: Option<Vec<u64>>,
    series: Option<usize>,
) -> PyResult<Source> {
    let dtype = dtype.map(dtype_of).transpose()?;
    let input = py.detach(|| {
        if paths.len() == 1 && dtype.is_none() && shape.is_none() && series.is_none() {
            Input::open(&paths[0])
        } else {
            Input::open_all(
                &paths,
                &RawOptions {
                    dtype,
                    shape,
                    series,
                },
            )
        }
    });
    input.map(src).map_err(to_py)
}

/// A view from a JSON view spec (a string), with relative paths resolved against `base`.
#[pyfunction]
fn open_spec(py: Python<'_>, spec: &str, base: PathBuf) -> PyResult<Source> {
    let value: serde_json::Value =
        serde_json::from_str(spec).map_err(|e| PyValueError::new_err(e.to_string()))?;
    py.detach(|| View::from_spec(&value, &base).and_then(Input::from_view))
        .map(src)
        .map_err(to_py)
}

/// An input holding a copy of a numpy array (C-contiguous, a supported dtype).
#[pyfunction]
fn from_numpy(array: &Bound<'_, PyAny>, dtype: &str) -> PyResult<Source> {
    let dtype = dtype_of(dtype)?;
    let input = if dtype == DType::Bool {
        let a: PyReadonlyArrayDyn<'_, bool> = array.extract()?;
        Input::from_array(a.as_array())
    } else {
        chunkwise::with_scalar!(dtype, T => {
            let a: PyReadonlyArrayDyn<'_, T> = array.extract()?;
            Input::from_array(a.as_array())
        })
    };
    input.map(src).map_err(to_py)
}

#[pyfunction]
fn view_concat(parts: Vec<PyRef<'_, Source>>, axis: usize) -> PyResult<Source> {
    let views = parts.iter().map(|s| s.input.view()).collect();
    View::concat(views, axis)
        .and_then(Input::from_view)
        .map(src)
        .map_err(to_py)
}

#[pyfunction]
fn view_stack(parts: Vec<PyRef<'_, Source>>, axis: usize) -> PyResult<Source> {
    let views = parts.iter().map(|s| s.input.view()).collect();
    View::stack(views, axis)
        .and_then(Input::from_view)
        .map(src)
        .map_err(to_py)
}

/// The region `starts..stops` of a view, without the axes `drop` (integer indices).
#[pyfunction]
#[pyo3(signature = (part, starts, stops, drop=Vec::new()))]
fn view_slice(
    part: PyRef<'_, Source>,
    starts: Vec<u64>,
    stops: Vec<u64>,
    drop: Vec<usize>,
) -> PyResult<Source> {
    part.input
        .view()
        .slice(&region(&starts, &stops))
        .and_then(|v| v.remove_axes(&drop))
        .and_then(Input::from_view)
        .map(src)
        .map_err(to_py)
}

#[pyfunction]
fn view_cast(part: PyRef<'_, Source>, dtype: &str) -> PyResult<Source> {
    let to = dtype_of(dtype)?;
    part.input
        .view()
        .cast(to)
        .and_then(Input::from_view)
        .map(src)
        .map_err(to_py)
}

/// A codec by the command line's name; `"default"` (or none) is the type's default.
fn codec(name: Option<&str>, level: Option<i32>) -> PyResult<Option<Codec>> {
    name.filter(|&n| n != "default")
        .map(|n| Codec::from_name(n, level).map_err(to_py))
        .transpose()
}

/// `Store::create`: an empty array (every chunk the fill value).
#[pyfunction]
#[pyo3(signature = (path, shape, dtype, chunks=None, codec_name=None, level=None, fill_value=None, checksum=false, subchunks=None, axis_names=None, voxel_size=None, units=None))]
#[allow(clippy::too_many_arguments)]
fn create(
    py: Python<'_>,
    path: PathBuf,
    shape: Vec<u64>,
    dtype: &str,
    chunks: Option<Vec<u64>>,
    codec_name: Option<&str>,
    level: Option<i32>,
    fill_value: Option<&str>,
    checksum: bool,
    subchunks: Option<Vec<u64>>,
    axis_names: Option<Vec<String>>,
    voxel_size: Option<Vec<f64>>,
    units: Option<Vec<String>>,
) -> PyResult<Source> {
    let dtype = dtype_of(dtype)?;
    let chunks = chunks.unwrap_or_else(|| chunkwise::default_chunks(&shape));
    let attributes = if voxel_size.is_some() || units.is_some() {
        chunkwise::VoxelSize::new(shape.len(), voxel_size, units)
            .map_err(to_py)?
            .attributes()
    } else {
        serde_json::json!({})
    };
    let mut spec = StoreSpec::new(shape, dtype, chunks)
        .attributes(attributes)
        .codec(Codec::resolve(codec(codec_name, None)?, level, dtype).map_err(to_py)?)
        .checksum(checksum)
        .subchunks(subchunks)
        .axis_names(axis_names);
    if let Some(v) = fill_value {
        spec = spec.fill_value(number(v)?);
    }
    py.detach(|| Store::create(&path, &spec).and_then(Input::from_store))
        .map(src)
        .map_err(to_py)
}

fn convert_options(d: &Bound<'_, PyDict>) -> PyResult<ConvertOptions> {
    let level: Option<i32> = opt(d, "level")?;
    let mut o = ConvertOptions::default();
    if let Some(c) = codec(opt::<String>(d, "codec")?.as_deref(), level)? {
        o = o.codec(c);
    }
    Ok(o.chunks(opt(d, "chunks")?)
        .level(level)
        .checksum(flag(d, "checksum")?)
        .subchunks(opt(d, "shard")?)
        .axis_names(opt(d, "axis_names")?)
        .voxel_size(opt(d, "voxel_size")?)
        .units(opt(d, "units")?)
        .overwrite(flag(d, "overwrite")?)
        .partition(opt(d, "partition")?))
}

/// `chunkwise convert`: the input written as a new store at `out`.
#[pyfunction]
#[pyo3(signature = (source, out, opts))]
fn convert(
    py: Python<'_>,
    source: PyRef<'_, Source>,
    out: PathBuf,
    opts: &Bound<'_, PyDict>,
) -> PyResult<String> {
    let job = Job::new(&Common::from(Some(opts))?);
    let copts = convert_options(opts)?.run(job.run.clone());
    source.check_present()?;
    let input = &source.input;
    let r = job.run(py, |_| chunkwise::convert(input, &out, &copts))?;
    Ok(serde_json::json!({
        "path": r.path, "shape": r.shape, "dtype": r.dtype.to_string(),
        "chunks": r.chunk_shape, "chunks_written": r.chunks_written,
        "bytes_stored": r.bytes_stored, "seconds": r.seconds, "waiting": r.waiting,
        "decodes": r.decodes.map(|d| serde_json::json!({
            "chunks": d.chunks, "total": d.total, "most": d.most,
        })),
        "intermediate": r.intermediate, "chunks_copied": r.chunks_copied,
    })
    .to_string())
}

/// `chunkwise pyramid`: an OME-Zarr image of the input at `out` (spec/PYRAMID.md).
#[pyfunction]
#[pyo3(signature = (source, out, opts, labels = Vec::new()))]
fn pyramid(
    py: Python<'_>,
    source: PyRef<'_, Source>,
    out: PathBuf,
    opts: &Bound<'_, PyDict>,
    labels: Vec<(String, PyRef<'_, Source>)>,
) -> PyResult<String> {
    let job = Job::new(&Common::from(Some(opts))?);
    let level: Option<i32> = opt(opts, "level")?;
    let method = opt::<String>(opts, "method")?
        .map(|m| m.parse::<chunkwise::kernel::Downsample>())
        .transpose()
        .map_err(to_py)?;
    let mut p = chunkwise::PyramidOptions::default()
        .method(method)
        .levels(opt(opts, "levels")?)
        .factors(opt(opts, "factors")?)
        .axis_names(opt(opts, "axis_names")?)
        .axis_types(opt(opts, "axis_types")?)
        .units(opt(opts, "units")?)
        .voxel_size(opt(opts, "voxel_size")?)
        .chunks(opt(opts, "chunks")?)
        .level(level)
        .name(opt(opts, "name")?)
        .overwrite(flag(opts, "overwrite")?)
        .partition(opt(opts, "partition")?)
        .run(job.run.clone());
    if let Some(c) = codec(opt::<String>(opts, "codec")?.as_deref(), level)? {
        p = p.codec(c);
    }
    source.check_present()?;
    for (_, l) in &labels {
        l.check_present()?;
    }
    let input = &source.input;
    let named: Vec<(&str, &chunkwise::Input)> =
        labels.iter().map(|(n, l)| (n.as_str(), &l.input)).collect();
    let r = job.run(py, |_| {
        chunkwise::pyramid_with_labels(input, &named, &out, &p)
    })?;
    let levels = |ls: &[chunkwise::PyramidLevel]| {
        ls.iter()
            .map(|l| {
                serde_json::json!({
                    "path": l.path, "shape": l.shape, "chunks": l.chunks, "factor": l.factor,
                    "scale": l.scale,
                })
            })
            .collect::<Vec<_>>()
    };
    Ok(serde_json::json!({
        "path": r.path, "method": r.method.name(),
        "levels": levels(&r.levels),
        "labels": r.labels.iter()
            .map(|(n, l)| serde_json::json!({"name": n, "levels": levels(l)}))
            .collect::<Vec<_>>(),
        "chunks_written": r.chunks_written, "chunks_resumed": r.chunks_resumed,
        "waiting": r.waiting,
        "decodes": r.decodes, "seconds": r.seconds,
    })
    .to_string())
}

fn exec_options(d: &Bound<'_, PyDict>, run: &RunOptions) -> PyResult<ExecOptions> {
    let level: Option<i32> = opt(d, "level")?;
    let mut o = ExecOptions::default()
        .chunks(opt(d, "chunks")?)
        .level(level)
        .checksum(flag(d, "checksum")?)
        .overwrite(flag(d, "overwrite")?)
        .restart(flag(d, "restart")?)
        .partition(opt(d, "partition")?)
        .run(run.clone());
    if let Some(c) = codec(opt::<String>(d, "codec")?.as_deref(), level)? {
        o = o.codec(c);
    }
    Ok(o)
}

fn exec_report(r: &ExecReport) -> String {
    let status = match r.status {
        ExecStatus::Published => "published".to_string(),
        ExecStatus::AlreadyDone => "already done".to_string(),
        ExecStatus::Waiting { done, total } => format!("waiting ({done} of {total} chunks)"),
    };
    serde_json::json!({
        "path": r.path, "status": status, "shape": r.shape, "dtype": r.dtype.to_string(),
        "chunks": r.chunk_shape, "chunks_total": r.chunks_total,
        "chunks_computed": r.chunks_computed, "chunks_resumed": r.chunks_resumed,
        "decodes": r.decodes, "input_chunks": r.input_chunks, "bytes_stored": r.bytes_stored,
        "seconds": r.seconds,
    })
    .to_string()
}

/// The inputs of a call, each checked to be still there.
fn inputs(sources: &[PyRef<'_, Source>]) -> PyResult<Vec<Input>> {
    sources
        .iter()
        .map(|s| s.check_present().map(|()| s.input.clone()))
        .collect()
}

/// The built-in kernels: `kind` is gaussian, correlate1d, lut, threshold, eval or
/// neighbourhood_lut;
/// `params` its settings.
#[pyfunction]
#[pyo3(signature = (kind, sources, out, params, opts))]
fn kernel(
    py: Python<'_>,
    kind: &str,
    sources: Vec<PyRef<'_, Source>>,
    out: PathBuf,
    params: &Bound<'_, PyDict>,
    opts: &Bound<'_, PyDict>,
) -> PyResult<String> {
    let p = |k: &str| -> PyResult<Bound<'_, PyAny>> {
        params
            .get_item(k)?
            .ok_or_else(|| PyValueError::new_err(format!("{kind}: {k} missing")))
    };
    let opt_dtype = |k: &str| -> PyResult<Option<DType>> {
        match params.get_item(k)?.filter(|v| !v.is_none()) {
            Some(v) => Ok(Some(dtype_of(&v.extract::<String>()?)?)),
            None => Ok(None),
        }
    };
    let boundary = || -> PyResult<Boundary> {
        Boundary::from_name(&p("mode")?.extract::<String>()?, p("cval")?.extract()?).map_err(to_py)
    };
    let job = Job::new(&Common::from(Some(opts))?);
    let eopts = exec_options(opts, &job.run)?;
    let ins = inputs(&sources)?;
    let k: Box<dyn Kernel> = match kind {
        "gaussian" => {
            let k = Gaussian {
                sigma: p("sigma")?.extract()?,
                truncate: p("truncate")?.extract()?,
                mode: boundary()?,
                dtype: opt_dtype("dtype")?,
            };
            Box::new(k)
        }
        "correlate1d" => {
            let k = Correlate1d {
                axis: p("axis")?.extract()?,
                weights: p("weights")?.extract()?,
                origin: p("origin")?.extract()?,
                mode: boundary()?,
                dtype: opt_dtype("dtype")?,
            };
            Box::new(k)
        }
        "lut" => {
            let table = Table::open(&p("table")?.extract::<PathBuf>()?).map_err(to_py)?;
            Box::new(Lut::new(table))
        }
        "eval" => {
            let names: Vec<String> = p("names")?.extract()?;
            let expr: String = p("expr")?.extract()?;
            Box::new(
                chunkwise::kernel::Eval::new(&expr, &names, opt_dtype("dtype")?).map_err(to_py)?,
            )
        }
        "threshold" => {
            let k = Threshold {
                above: number(&p("above")?.extract::<String>()?)?,
            };
            Box::new(k)
        }
        "neighbourhood_lut" => {
            let table = Table::open(&p("table")?.extract::<PathBuf>()?).map_err(to_py)?;
            let above = match params.get_item("above")?.filter(|v| !v.is_none()) {
                Some(v) => Some(number(&v.extract::<String>()?)?),
                None => None,
            };
            let order = match params.get_item("index_order")?.filter(|v| !v.is_none()) {
                Some(v) => v.extract::<String>()?.parse().map_err(to_py)?,
                None => chunkwise::kernel::IndexOrder::Default,
            };
            Box::new(
                NeighbourhoodLut::new(table)
                    .map_err(to_py)?
                    .above(above)
                    .index_order(order),
            )
        }
        other => return Err(PyValueError::new_err(format!("unknown kernel {other}"))),
    };
    let r = job.run(py, |_| chunkwise::run(&ins, &out, k.as_ref(), &eopts))?;
    Ok(exec_report(&r))
}

/// A block as a numpy array (a copy; `bool` blocks as numpy bools).
fn block_to_numpy<'py>(py: Python<'py>, b: &Block<'_>) -> PyResult<Bound<'py, PyAny>> {
    chunkwise::with_scalar!(b.dtype(), T => {
        let view = b.view::<T>().map_err(to_py)?;
        let a = PyArrayDyn::<T>::from_array(py, &view).into_any();
        if b.dtype() == DType::Bool {
            a.call_method1("view", ("bool",))
        } else {
            Ok(a)
        }
    })
}

/// dask's `map_overlap` (and `map_blocks` with a zero depth): `call(key, region, valid,
/// *blocks)` is the Python side's wrapper around the user's function; it checks and trims the
/// result and returns the output chunk's values as a C-contiguous array of the output type
/// (`uint8` for `bool`).
#[pyfunction]
#[pyo3(signature = (call, sources, out, name, dtype, depth, boundary, cval, opts))]
#[allow(clippy::too_many_arguments)]
fn map_overlap(
    py: Python<'_>,
    call: Py<PyAny>,
    sources: Vec<PyRef<'_, Source>>,
    out: PathBuf,
    name: &str,
    dtype: &str,
    depth: Vec<u64>,
    boundary: &str,
    cval: f64,
    opts: &Bound<'_, PyDict>,
) -> PyResult<String> {
    let dtype = dtype_of(dtype)?;
    let spec = MapSpec::new(name, dtype)
        .halo(&depth)
        .boundary(Boundary::from_name(boundary, cval).map_err(to_py)?);
    let job = Job::new(&Common::from(Some(opts))?);
    let eopts = exec_options(opts, &job.run)?;
    let ins = inputs(&sources)?;
    let raised = job.raised.clone();
    let f = |blocks: &[Block<'_>], out: &mut OutBlock<'_>| -> chunkwise::Result<()> {
        let r = Python::attach(|py| -> PyResult<()> {
            let mut args: Vec<Bound<'_, PyAny>> = Vec::with_capacity(blocks.len() + 3);
            args.push(out.key().into_pyobject(py)?.into_any());
            let reg: Vec<(u64, u64)> = out
                .region()
                .ranges()
                .iter()
                .map(|r| (r.start, r.end))
                .collect();
            args.push(reg.into_pyobject(py)?.into_any());
            let valid: Vec<(usize, usize)> =
                blocks[0].valid().iter().map(|r| (r.start, r.end)).collect();
            args.push(valid.into_pyobject(py)?.into_any());
            for b in blocks {
                args.push(block_to_numpy(py, b)?);
            }
            let res = call.call1(py, PyTuple::new(py, args)?)?;
            let res = res.bind(py);
            let key = out.key().to_string();
            chunkwise::with_scalar!(out.dtype(), T => {
                let values: PyReadonlyArrayDyn<'_, T> = res.extract()?;
                let mut dst = out.view_mut::<T>().map_err(to_py)?;
                let src = values.as_array();
                if src.shape() != dst.shape() {
                    return Err(PyValueError::new_err(format!(
                        "chunk {}: the function's result has shape {:?}, the chunk {:?}",
                        key, src.shape(), dst.shape())));
                }
                py.detach(|| dst.assign(&src));
            });
            Ok(())
        });
        r.map_err(|e| {
            keep_first(&raised, e);
            out.error("the Python function raised an exception")
        })
    };
    let r = job.run(py, |_| chunkwise::map_overlap(&ins, &out, &spec, f, &eopts))?;
    Ok(exec_report(&r))
}

fn reduce_options(
    run: &RunOptions,
    starts: Option<Vec<u64>>,
    stops: Option<Vec<u64>>,
) -> ReduceOptions {
    let reg = starts.zip(stops).map(|(a, b)| region(&a, &b));
    ReduceOptions::default().run(run.clone()).region(reg)
}

/// `chunkwise reduce --axis ... --op ...` (REDUCE §7): for each op, its name, numpy dtype
/// string, shape and C-order little-endian bytes.
#[pyfunction]
#[pyo3(signature = (source, axes, ops, ddof=0, opts=None))]
#[allow(clippy::type_complexity)]
fn reduce_axes(
    py: Python<'_>,
    source: PyRef<'_, Source>,
    axes: Vec<usize>,
    ops: Vec<String>,
    ddof: u64,
    opts: Option<&Bound<'_, PyDict>>,
) -> PyResult<Vec<(String, String, Vec<u64>, Py<pyo3::types::PyBytes>)>> {
    let job = Job::new(&Common::from(opts)?);
    source.check_present()?;
    let ops = ops
        .iter()
        .map(|o| o.parse::<chunkwise::AxisOp>())
        .collect::<chunkwise::Result<Vec<_>>>()
        .map_err(to_py)?;
    let o = chunkwise::AxisReduceOptions::default()
        .ddof(ddof)
        .run(job.run.clone());
    let input = &source.input;
    let results = job.run(py, |_| chunkwise::reduce_axes(input, &axes, &ops, &o))?;
    Ok(results
        .into_iter()
        .map(|r| {
            (
                r.op.name().to_string(),
                r.dtype.to_string(),
                r.shape,
                pyo3::types::PyBytes::new(py, &r.bytes).unbind(),
            )
        })
        .collect())
}

/// `chunkwise stats --json` as a JSON string.
#[pyfunction]
#[pyo3(signature = (source, starts=None, stops=None, opts=None))]
fn stats(
    py: Python<'_>,
    source: PyRef<'_, Source>,
    starts: Option<Vec<u64>>,
    stops: Option<Vec<u64>>,
    opts: Option<&Bound<'_, PyDict>>,
) -> PyResult<String> {
    let job = Job::new(&Common::from(opts)?);
    let ropts = reduce_options(&job.run, starts, stops);
    source.check_present()?;
    let input = &source.input;
    let s = job.run(py, |_| chunkwise::reduce(input, &Stats, &ropts))?;
    Ok(s.to_json().to_string())
}

/// Part `part` of a `stats` run in parts meeting beside `out` (a `.json` file, SCALE §2): the
/// JSON the last part wrote, or `None` for a part that leaves the writing to another.
#[pyfunction]
#[pyo3(signature = (source, out, part, starts=None, stops=None, overwrite=false, opts=None))]
#[allow(clippy::too_many_arguments)]
fn stats_part(
    py: Python<'_>,
    source: PyRef<'_, Source>,
    out: PathBuf,
    part: (u32, u32),
    starts: Option<Vec<u64>>,
    stops: Option<Vec<u64>>,
    overwrite: bool,
    opts: Option<&Bound<'_, PyDict>>,
) -> PyResult<Option<String>> {
    let job = Job::new(&Common::from(opts)?);
    let ropts = reduce_options(&job.run, starts, stops);
    source.check_present()?;
    let input = &source.input;
    let mut doc = None;
    let end = job.run(py, |_| {
        chunkwise::reduce_part(
            input,
            &Stats,
            &ropts,
            &out,
            part,
            overwrite,
            |s, out, ow| {
                let text = s.to_json().to_string();
                chunkwise::support::write_output(out, text.as_bytes(), ow)?;
                doc = Some(text);
                Ok(())
            },
        )
    })?;
    Ok(match end {
        chunkwise::PartsFinish::Combined => doc.or_else(|| std::fs::read_to_string(&out).ok()),
        chunkwise::PartsFinish::Waiting { .. } => None,
    })
}

/// Counts and edges: `bins` equal bins over `range`, or chunkwise's default binning.
#[pyfunction]
#[pyo3(signature = (source, bins=None, range=None, opts=None))]
fn histogram(
    py: Python<'_>,
    source: PyRef<'_, Source>,
    bins: Option<usize>,
    range: Option<(f64, f64)>,
    opts: Option<&Bound<'_, PyDict>>,
) -> PyResult<(Vec<u64>, Vec<f64>)> {
    let job = Job::new(&Common::from(opts)?);
    let ropts = reduce_options(&job.run, None, None);
    source.check_present()?;
    let input = &source.input;
    job.run(py, |_| {
        let h = match range {
            Some((lo, hi)) => Histogram::new(bins.unwrap_or(10), lo, hi)?,
            None => Histogram::auto(input, bins, &ropts)?,
        };
        let counts = chunkwise::reduce(input, &h, &ropts)?;
        Ok((counts, h.edges().to_vec()))
    })
}

/// Part `part` of a histogram in parts meeting beside `out` (a `.json` file of edges and
/// counts): with `range`, `bins` (default 10) equal bins; without, for an integer array one
/// bin per value (counted by value across parts). The result for the part that wrote `out`,
/// `None` for the others.
#[pyfunction]
#[pyo3(signature = (source, out, part, bins=None, range=None, overwrite=false, opts=None))]
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn histogram_part(
    py: Python<'_>,
    source: PyRef<'_, Source>,
    out: PathBuf,
    part: (u32, u32),
    bins: Option<usize>,
    range: Option<(f64, f64)>,
    overwrite: bool,
    opts: Option<&Bound<'_, PyDict>>,
) -> PyResult<Option<(Vec<u64>, Vec<f64>)>> {
    let job = Job::new(&Common::from(opts)?);
    let ropts = reduce_options(&job.run, None, None);
    source.check_present()?;
    let input = &source.input;
    let mut result = None;
    let write = |h: &Histogram,
                 counts: Vec<u64>,
                 out: &Path,
                 ow: bool|
     -> chunkwise::Result<(Vec<u64>, Vec<f64>)> {
        let doc = serde_json::json!({"edges": h.edges(), "counts": counts});
        chunkwise::support::write_output(out, doc.to_string().as_bytes(), ow)?;
        Ok((counts, h.edges().to_vec()))
    };
    let end = job.run(py, |_| match (range, bins) {
        (Some((lo, hi)), bins) => {
            let h = Histogram::new(bins.unwrap_or(10), lo, hi)?;
            chunkwise::reduce_part(input, &h, &ropts, &out, part, overwrite, |c, out, ow| {
                result = Some(write(&h, c, out, ow)?);
                Ok(())
            })
        }
        (None, None) if !input.dtype().is_float() => chunkwise::reduce_part(
            input,
            &chunkwise::ValueCounts,
            &ropts,
            &out,
            part,
            overwrite,
            |c, out, ow| {
                let (h, counts) = c?.histogram()?;
                result = Some(write(&h, counts, out, ow)?);
                Ok(())
            },
        ),
        _ => Err(chunkwise::Error::InvalidOption {
            option: "range",
            reason: "a histogram in parts needs its bins before the parts start: give range= \
                     (and bins=)"
                .into(),
        }),
    })?;
    Ok(match end {
        chunkwise::PartsFinish::Combined => result.or_else(|| {
            let text = std::fs::read_to_string(&out).ok()?;
            let v: serde_json::Value = serde_json::from_str(&text).ok()?;
            let counts = v["counts"]
                .as_array()?
                .iter()
                .filter_map(serde_json::Value::as_u64)
                .collect();
            let edges = v["edges"]
                .as_array()?
                .iter()
                .filter_map(serde_json::Value::as_f64)
                .collect();
            Some((counts, edges))
        }),
        chunkwise::PartsFinish::Waiting { .. } => None,
    })
}

/// `where`/`graph`'s options: the selection by `above`/`below`, and the job's run settings.
fn index_options(
    above: Option<&str>,
    below: Option<&str>,
    overwrite: bool,
    partition: Option<(u32, u32)>,
    job: &Job,
) -> PyResult<IndexOptions> {
    let select = Select::from_bounds(
        above.map(number).transpose()?,
        below.map(number).transpose()?,
    );
    Ok(IndexOptions::default()
        .select(select)
        .overwrite(overwrite)
        .partition(partition)
        .run(job.run.clone()))
}

/// `numpy.argwhere` of the selection, streamed to the `.npy` file `out`; the count.
#[pyfunction]
#[pyo3(signature = (source, out, above=None, below=None, overwrite=false, opts=None, partition=None))]
#[allow(clippy::too_many_arguments)]
fn where_(
    py: Python<'_>,
    source: PyRef<'_, Source>,
    out: PathBuf,
    above: Option<&str>,
    below: Option<&str>,
    overwrite: bool,
    opts: Option<&Bound<'_, PyDict>>,
    partition: Option<(u32, u32)>,
) -> PyResult<Option<u64>> {
    let job = Job::new(&Common::from(opts)?);
    let iopts = index_options(above, below, overwrite, partition, &job)?;
    source.check_present()?;
    let input = &source.input;
    job.run(py, |_| chunkwise::where_coords(input, Some(&out), &iopts))
        .map(|r| r.waiting.is_none().then_some(r.count))
}

/// Edges between adjacent selected voxels, streamed to the `.npy` file `out`; the count.
#[pyfunction]
#[pyo3(signature = (source, out, connectivity=None, coords=false, above=None, below=None, overwrite=false, opts=None, partition=None))]
#[allow(clippy::too_many_arguments)]
fn graph(
    py: Python<'_>,
    source: PyRef<'_, Source>,
    out: PathBuf,
    connectivity: Option<u32>,
    coords: bool,
    above: Option<&str>,
    below: Option<&str>,
    overwrite: bool,
    opts: Option<&Bound<'_, PyDict>>,
    partition: Option<(u32, u32)>,
) -> PyResult<Option<u64>> {
    let job = Job::new(&Common::from(opts)?);
    let iopts = index_options(above, below, overwrite, partition, &job)?;
    source.check_present()?;
    let input = &source.input;
    job.run(py, |_| {
        chunkwise::graph_edges(input, Some(&out), connectivity, coords, &iopts)
    })
    .map(|r| r.waiting.is_none().then_some(r.count))
}

fn grow_options(d: &Bound<'_, PyDict>, run: &RunOptions) -> PyResult<GrowOptions> {
    let layout: GridLayout = match opt::<String>(d, "layout")? {
        Some(v) => v.parse().map_err(to_py)?,
        None => GridLayout::Auto,
    };
    let mut o = GrowOptions::default()
        .axis(opt(d, "axis")?.unwrap_or(0))
        .layout(layout)
        .cast(flag(d, "cast")?)
        .move_inputs(flag(d, "move")?)
        .wait(flag(d, "wait")?)
        .overwrite(flag(d, "overwrite")?)
        .again(flag(d, "again")?)
        .partition(opt(d, "partition")?)
        .run(run.clone());
    if let Some(secs) = opt(d, "checkpoint_secs")? {
        o = o.checkpoint_secs(secs);
    }
    Ok(o)
}

fn grow_report(r: &GrowReport) -> String {
    serde_json::json!({
        "path": r.path, "old_shape": r.old_shape, "shape": r.shape, "grid": r.grid,
        "chunks_linked": r.chunks_linked, "chunks_encoded": r.chunks_encoded,
        "layers_reencoded": r.layers_reencoded, "bytes_written": r.bytes_written,
        "already_done": r.already_done, "warnings": r.warnings, "seconds": r.seconds,
        "layers_resumed": r.layers_resumed, "exchanged": r.exchanged, "levels": r.levels,
        "parts_waiting": r.parts_waiting.map(|(done, total)| [done, total]),
    })
    .to_string()
}

/// `chunkwise append STORE INPUT... [--labels NAME=PATH ...]`.
#[pyfunction]
#[pyo3(signature = (store, sources, opts, labels = Vec::new()))]
fn append(
    py: Python<'_>,
    store: PathBuf,
    sources: Vec<PyRef<'_, Source>>,
    opts: &Bound<'_, PyDict>,
    labels: Vec<(String, PyRef<'_, Source>)>,
) -> PyResult<String> {
    let job = Job::new(&Common::from(Some(opts))?);
    let gopts = grow_options(opts, &job.run)?;
    let ins = inputs(&sources)?;
    let lins: Vec<(String, Vec<Input>)> = labels
        .iter()
        .map(|(n, s)| Ok((n.clone(), inputs(std::slice::from_ref(s))?)))
        .collect::<PyResult<_>>()?;
    let named: Vec<(&str, &[Input])> = lins
        .iter()
        .map(|(n, i)| (n.as_str(), i.as_slice()))
        .collect();
    let r = job.run(py, |_| {
        chunkwise::append_with_labels(&store, &ins, &named, &gopts)
    })?;
    Ok(grow_report(&r))
}

/// `chunkwise concat A B... -o OUT`, `concat --into A B...` (`into`) or `stack`.
#[pyfunction]
#[pyo3(signature = (how, paths, out, opts))]
fn join(
    py: Python<'_>,
    how: &str,
    paths: Vec<PathBuf>,
    out: PathBuf,
    opts: &Bound<'_, PyDict>,
) -> PyResult<String> {
    let job = Job::new(&Common::from(Some(opts))?);
    let gopts = grow_options(opts, &job.run)?;
    let r = match how {
        "concat" => job.run(py, |_| chunkwise::concat(&paths, &out, &gopts))?,
        "into" => job.run(py, |_| chunkwise::concat_into(&out, &paths, &gopts))?,
        "stack" => job.run(py, |_| chunkwise::stack(&paths, &out, &gopts))?,
        other => return Err(PyValueError::new_err(format!("unknown join {other}"))),
    };
    Ok(grow_report(&r))
}

/// Whether `path` is a Zarr array chunkwise opens as a store.
#[pyfunction]
fn is_store(path: PathBuf) -> bool {
    chunkwise::is_store(Path::new(&path))
}

/// `chunkwise status OUT --json`: which parts of the job into `out` are done, running or
/// missing, and whether it is published.
#[pyfunction]
fn job_status(out: PathBuf) -> PyResult<String> {
    let s = match chunkwise::pyramid_status(&out).map_err(to_py)? {
        Some(s) => s,
        None => chunkwise::job_status(&out).map_err(to_py)?,
    };
    let parts: Vec<serde_json::Value> = s
        .parts
        .iter()
        .map(|p| {
            serde_json::json!({"part": [p.index, p.of], "state": p.state(), "chunks": p.chunks,
                               "done": p.done, "running": p.running})
        })
        .collect();
    Ok(serde_json::json!({
        "path": s.path,
        "published": s.published,
        "building": s.building,
        "chunks_total": s.chunks_total,
        "chunks_done": s.chunks_done,
        "parts": parts,
    })
    .to_string())
}

#[pymodule]
fn _chunkwise(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Source>()?;
    for f in [
        wrap_pyfunction!(open, m)?,
        wrap_pyfunction!(open_spec, m)?,
        wrap_pyfunction!(from_numpy, m)?,
        wrap_pyfunction!(view_concat, m)?,
        wrap_pyfunction!(view_stack, m)?,
        wrap_pyfunction!(view_slice, m)?,
        wrap_pyfunction!(view_cast, m)?,
        wrap_pyfunction!(create, m)?,
        wrap_pyfunction!(convert, m)?,
        wrap_pyfunction!(pyramid, m)?,
        wrap_pyfunction!(kernel, m)?,
        wrap_pyfunction!(map_overlap, m)?,
        wrap_pyfunction!(stats, m)?,
        wrap_pyfunction!(reduce_axes, m)?,
        wrap_pyfunction!(stats_part, m)?,
        wrap_pyfunction!(histogram_part, m)?,
        wrap_pyfunction!(histogram, m)?,
        wrap_pyfunction!(where_, m)?,
        wrap_pyfunction!(graph, m)?,
        wrap_pyfunction!(append, m)?,
        wrap_pyfunction!(join, m)?,
        wrap_pyfunction!(is_store, m)?,
        wrap_pyfunction!(job_status, m)?,
    ] {
        m.add_function(f)?;
    }
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
