//! The kernel commands (`gaussian`, `correlate1d`, `lut`, `threshold`, `neighbourhood-lut`) and
//! the job settings they share.

use std::path::PathBuf;

use chunkwise::kernel::lut::Table;
use chunkwise::kernel::{Correlate1d, Gaussian, Kernel, Lut, NeighbourhoodLut, Threshold};
use chunkwise::support::human_bytes;
use chunkwise::{Boundary, DType, Durability, ExecOptions, ExecReport, ExecStatus, Input};

use super::{CliResult, Global, Outcome, codec_from, parse_size, say};

/// A kernel command's input and output, and its settings.
#[derive(Debug, clap::Args)]
pub(crate) struct JobArgs {
    /// The input array.
    input: PathBuf,
    /// The output array to create.
    output: PathBuf,
    #[command(flatten)]
    opts: JobOptions,
}

/// Settings every kernel command takes.
#[derive(Debug, clap::Args)]
pub(crate) struct JobOptions {
    /// Memory budget (e.g. 2GiB; default: half the machine's memory).
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    memory: Option<u64>,
    /// Compute only part I of N (0 <= I < N), for N processes sharing one job.
    #[arg(long, value_parser = parse_partition, value_name = "I/N")]
    partition: Option<(u32, u32)>,
    /// Replace an output computed with other settings.
    #[arg(long)]
    overwrite: bool,
    /// Discard an unfinished job's work and recompute everything.
    #[arg(long)]
    restart: bool,
    /// Output chunk shape (default: the input's).
    #[arg(long, value_delimiter = ',', value_name = "A,B,C")]
    chunks: Option<Vec<u64>>,
    /// Output compressor: zstd, blosc-zstd, blosc-lz4 or pcodec (default: blosc-zstd for
    /// integer output, blosc-lz4 for float output).
    #[arg(long, value_name = "NAME")]
    codec: Option<String>,
    /// Compression level.
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    level: Option<i32>,
    /// A crc32c checksum in every output chunk.
    #[arg(long)]
    checksum: bool,
    /// Do not fsync (scratch data only).
    #[arg(long)]
    no_sync: bool,
}

pub(crate) fn parse_partition(s: &str) -> Result<(u32, u32), String> {
    let (i, n) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not I/N (e.g. 0/4)"))?;
    let i: u32 = i
        .trim()
        .parse()
        .map_err(|_| format!("{i:?} is not a number"))?;
    let n: u32 = n
        .trim()
        .parse()
        .map_err(|_| format!("{n:?} is not a number"))?;
    if n == 0 || i >= n {
        return Err(format!("{s}: need 0 <= I < N"));
    }
    Ok((i, n))
}

fn parse_dtype(s: &str) -> Result<DType, String> {
    s.parse::<DType>().map_err(|e| e.to_string())
}

/// Mode and constant, as scipy names them.
#[derive(Debug, clap::Args)]
pub(crate) struct ModeArgs {
    /// Boundary mode: reflect (default), mirror, nearest, wrap or constant.
    #[arg(long, default_value = "reflect", value_name = "MODE")]
    mode: String,
    /// The value outside the array for --mode constant.
    #[arg(
        long,
        default_value_t = 0.0,
        allow_hyphen_values = true,
        value_name = "X"
    )]
    cval: f64,
}

impl ModeArgs {
    fn boundary(&self) -> chunkwise::Result<Boundary> {
        Boundary::from_name(&self.mode, self.cval)
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct GaussianArgs {
    #[command(flatten)]
    job: JobArgs,
    /// Standard deviation: one value, or one per axis (S0,S1,S2).
    #[arg(
        long,
        required = true,
        value_delimiter = ',',
        allow_hyphen_values = true,
        value_name = "S"
    )]
    sigma: Vec<f64>,
    /// Radius in standard deviations.
    #[arg(
        long,
        default_value_t = 4.0,
        value_name = "T",
        allow_negative_numbers = true
    )]
    truncate: f64,
    #[command(flatten)]
    mode: ModeArgs,
    /// Output type (default float32; float64 for float64 input).
    #[arg(long, value_parser = parse_dtype, value_name = "T")]
    dtype: Option<DType>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct Correlate1dArgs {
    #[command(flatten)]
    job: JobArgs,
    /// The axis to filter along.
    #[arg(long)]
    axis: usize,
    /// The weights, e.g. 1,-2,1.
    #[arg(
        long,
        required = true,
        value_delimiter = ',',
        allow_hyphen_values = true,
        value_name = "W"
    )]
    weights: Vec<f64>,
    /// scipy's origin: positive values shift the filter towards lower indices.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    origin: i64,
    #[command(flatten)]
    mode: ModeArgs,
    /// Output type (default float32; float64 for float64 input).
    #[arg(long, value_parser = parse_dtype, value_name = "T")]
    dtype: Option<DType>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct LutArgs {
    #[command(flatten)]
    job: JobArgs,
    /// A 1-D .npy table; out = table[in], with the table's type.
    #[arg(long, value_name = "T.npy")]
    table: PathBuf,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ThresholdArgs {
    #[command(flatten)]
    job: JobArgs,
    /// Voxels strictly above X become 1, the rest 0 (uint8).
    #[arg(long, allow_hyphen_values = true, value_name = "X")]
    above: chunkwise::Number,
}

pub(crate) fn gaussian(a: GaussianArgs, g: &Global) -> CliResult {
    let k = Gaussian {
        sigma: a.sigma,
        truncate: a.truncate,
        mode: a.mode.boundary()?,
        dtype: a.dtype,
    };
    k.validate()?;
    run(&a.job, &k, g)
}

pub(crate) fn correlate1d(a: Correlate1dArgs, g: &Global) -> CliResult {
    let k = Correlate1d {
        axis: a.axis,
        weights: a.weights,
        origin: a.origin,
        mode: a.mode.boundary()?,
        dtype: a.dtype,
    };
    k.validate()?;
    run(&a.job, &k, g)
}

pub(crate) fn lut(a: LutArgs, g: &Global) -> CliResult {
    let k = Lut::new(Table::open(&a.table)?);
    run(&a.job, &k, g)
}

/// `cumsum|cumprod|cummax|cummin IN OUT --axis A [--dtype T]`.
#[derive(Debug, clap::Args)]
pub(crate) struct CumArgs {
    #[command(flatten)]
    job: JobArgs,
    /// The axis to accumulate along.
    #[arg(long, default_value_t = 0)]
    axis: usize,
    /// The result type (default: numpy's, int64/uint64 for integer sums and products).
    #[arg(long, value_name = "T")]
    dtype: Option<String>,
}

pub(crate) fn cumulative(op: chunkwise::CumOp, a: CumArgs, g: &Global) -> CliResult {
    let input = Input::open(&a.job.input)?;
    let dtype = a
        .dtype
        .as_deref()
        .map(str::parse::<chunkwise::DType>)
        .transpose()?;
    let chunk = match &a.job.opts.chunks {
        Some(c) => c.get(a.axis).copied().unwrap_or(1),
        None => input
            .block_grid()
            .chunk_shape()
            .get(a.axis)
            .copied()
            .unwrap_or(1),
    };
    let run_opts = chunkwise::RunOptions::default()
        .threads(g.threads)
        .cancel(g.cancel.clone());
    let k = chunkwise::Cumulative::plan(&input, op, a.axis, dtype, chunk, &run_opts)?;
    run(&a.job, &k, g)
}

/// `eval EXPR -o OUT [--dtype T] NAME=INPUT...`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example: chunkwise eval 'sqrt(a**2 + b**2)' -o norm.zarr a=x.zarr b=y.zarr\n\
    Operators + - * / // % ** < <= > >= == != & | ^ ~, functions where abs sqrt exp log log10 \
    log1p expm1 sin cos tan arcsin arccos arctan arctan2 sinh cosh tanh floor ceil minimum maximum \
    clip; numpy's types (spec/COMPUTE.md §11)."
)]
pub(crate) struct EvalArgs {
    /// The expression (numexpr's language), e.g. "a*0.5 + b*0.5 > 700".
    #[arg(allow_hyphen_values = true)]
    expr: String,
    /// The inputs, NAME=INPUT (stores, .npy, views: anything the engine reads; one shape).
    #[arg(required = true, value_parser = parse_named, value_name = "NAME=INPUT")]
    inputs: Vec<(String, PathBuf)>,
    /// The output array to create.
    #[arg(short, long, value_name = "OUT")]
    output: PathBuf,
    /// The result type (numpy's astype of the result; default: numpy's result type).
    #[arg(long, value_parser = parse_dtype, value_name = "T")]
    dtype: Option<DType>,
    #[command(flatten)]
    opts: JobOptions,
}

fn parse_named(s: &str) -> Result<(String, PathBuf), String> {
    let (name, path) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not NAME=INPUT (e.g. a=volume.zarr)"))?;
    if path.is_empty() {
        return Err(format!("{s:?}: no input after '='"));
    }
    Ok((name.trim().to_string(), PathBuf::from(path)))
}

pub(crate) fn eval(a: EvalArgs, g: &Global) -> CliResult {
    let names: Vec<&str> = a.inputs.iter().map(|(n, _)| n.as_str()).collect();
    let k = chunkwise::kernel::Eval::new(&a.expr, &names, a.dtype)?;
    let inputs = a
        .inputs
        .iter()
        .map(|(_, p)| Input::open(p))
        .collect::<chunkwise::Result<Vec<_>>>()?;
    run_on(&inputs, &a.output, &a.opts, &k, g)
}

pub(crate) fn threshold(a: ThresholdArgs, g: &Global) -> CliResult {
    run(&a.job, &Threshold { above: a.above }, g)
}

#[derive(Debug, clap::Args)]
pub(crate) struct NeighbourhoodLutArgs {
    #[command(flatten)]
    job: JobArgs,
    /// A .npy table of 2^27 entries (or 2^26: the 26 neighbours, the centre left out); out =
    /// table[neighbourhood index], with the table's type.
    #[arg(long, value_name = "T.npy")]
    table: PathBuf,
    /// Binarise the input as in > X first (default: the input must be 0/1).
    #[arg(long, allow_hyphen_values = true, value_name = "X")]
    above: Option<chunkwise::Number>,
    /// The index's bit order: default (weight 2^(9a+3b+c), axis 0 most significant) or
    /// clearmap (2^(a+3b+9c), ClearMap's Topology3d.index_kernel).
    #[arg(long, default_value = "default", value_name = "ORDER")]
    index_order: String,
}

pub(crate) fn neighbourhood_lut(a: NeighbourhoodLutArgs, g: &Global) -> CliResult {
    let k = NeighbourhoodLut::new(Table::open(&a.table)?)?
        .above(a.above)
        .index_order(a.index_order.parse()?);
    run(&a.job, &k, g)
}

fn run(a: &JobArgs, k: &dyn Kernel, g: &Global) -> CliResult {
    run_on(&[Input::open(&a.input)?], &a.output, &a.opts, k, g)
}

fn run_on(
    inputs: &[Input],
    output: &std::path::Path,
    a: &JobOptions,
    k: &dyn Kernel,
    g: &Global,
) -> CliResult {
    let mut opts = ExecOptions::default();
    if let Some(c) = codec_from(a.codec.as_deref())? {
        opts = opts.codec(c);
    }
    let opts = opts
        .level(a.level)
        .threads(g.threads)
        .cancel(g.cancel.clone())
        .memory(a.memory)
        .partition(a.partition)
        .overwrite(a.overwrite)
        .restart(a.restart)
        .chunks(a.chunks.clone())
        .checksum(a.checksum)
        .durability(if a.no_sync {
            Durability::NoSync
        } else {
            Durability::Sync
        })
        .progress(g.progress());
    let r = chunkwise::run(inputs, output, k, &opts)?;
    if !g.quiet {
        say(summary(&r))?;
    }
    Ok(Outcome::Ok)
}

pub(crate) fn summary(r: &ExecReport) -> String {
    let what = match r.status {
        ExecStatus::AlreadyDone => {
            return format!(
                "{}: already computed with these settings; nothing to do",
                r.path.display()
            );
        }
        ExecStatus::Published => format!("wrote {}", r.path.display()),
        ExecStatus::Waiting { done, total } => format!(
            "partition done; {} of {total} chunks of {} done, waiting for the other partitions",
            done,
            r.path.display()
        ),
    };
    let amp = if r.input_chunks > 0 {
        r.decodes as f64 / r.input_chunks as f64
    } else {
        0.0
    };
    format!(
        "{what}: {} {} in {} chunks, {} computed{}{} in {:.2} s; {} input chunks decoded for {} needed ({amp:.2}x); {} stored",
        chunkwise::support::fmt_shape(&r.shape),
        r.dtype,
        chunkwise::support::fmt_shape(&r.chunk_shape),
        r.chunks_computed,
        if r.chunks_absent > 0 {
            format!(
                ", {} absent (all fill value: nothing to read)",
                r.chunks_absent
            )
        } else {
            String::new()
        },
        if r.chunks_resumed > 0 {
            format!(" ({} done before, resumed)", r.chunks_resumed)
        } else {
            String::new()
        },
        r.seconds,
        r.decodes,
        r.input_chunks,
        human_bytes(r.bytes_stored),
    )
}
