//! `chunkwise convert INPUT... -o STORE`.

use std::path::PathBuf;

use chunkwise::support::human_bytes;
use chunkwise::{ConvertOptions, ConvertReport, DType, Durability, Input, RawOptions};

use super::{CliResult, Global, Outcome, parse_size, say};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Inputs: a directory of .npy or TIFF files, several .npy/TIFF files (or a quoted glob),
    /// one .npy file, one multi-page TIFF, one raw file, or a Zarr array.
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<PathBuf>,
    /// The array to create.
    #[arg(short, long, value_name = "STORE")]
    output: PathBuf,
    /// Chunk shape, e.g. 128,128,128 (default: 128 on each of the last three axes).
    #[arg(long, value_delimiter = ',', value_name = "A,B,C")]
    chunks: Option<Vec<u64>>,
    /// Compressor: zstd, blosc-zstd, blosc-lz4 or pcodec (default: blosc-zstd level 1 for
    /// integers, blosc-lz4 level 5 for floats; spec/FORMAT.md §5).
    #[arg(long, value_name = "NAME")]
    codec: Option<String>,
    /// Compression level (zstd -7..=22, default 3; blosc-zstd 0..=9, default 1; blosc-lz4
    /// 0..=9, default 5; pcodec 0..=12, default 8).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    level: Option<i32>,
    /// Add a crc32c checksum to every chunk.
    #[arg(long)]
    checksum: bool,
    /// Store each chunk as a shard of subchunks of this shape (must divide --chunks).
    #[arg(long, alias = "subchunks", value_delimiter = ',', value_name = "A,B,C")]
    shard: Option<Vec<u64>>,
    /// Element type of raw input (numpy names: uint16, float32, ...).
    #[arg(long, value_name = "T")]
    dtype: Option<String>,
    /// Shape of raw input, e.g. 512,1024,1024.
    #[arg(long, value_delimiter = ',', value_name = "Z,Y,X")]
    shape: Option<Vec<u64>>,
    /// The series of an OME-TIFF input to read (default 0).
    #[arg(long, value_name = "N")]
    series: Option<usize>,
    /// Axis names, e.g. z,y,x.
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    axis_names: Option<Vec<String>>,
    /// Replace an existing array at STORE.
    #[arg(long)]
    overwrite: bool,
    /// Input held in memory at once (e.g. 512MiB; default 256MiB).
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    memory: Option<u64>,
    /// Do not fsync before publishing (scratch data only).
    #[arg(long)]
    no_sync: bool,
    /// Write only part I (0-based) of N; N processes share one resumable job and the last
    /// one publishes (spec/COMPUTE.md §7; see `chunkwise status`).
    #[arg(long, value_parser = super::job::parse_partition, value_name = "I/N")]
    partition: Option<(u32, u32)>,
    /// Write an OME-Zarr multiscale image instead of one array (as `chunkwise pyramid`, in
    /// the same pass over the input; spec/PYRAMID.md).
    #[arg(long)]
    pyramid: bool,
    #[command(flatten)]
    pyramid_flags: super::pyramid::Flags,
}

pub(crate) fn run(a: Args, g: &Global) -> CliResult {
    super::hold_to(a.memory);
    if a.pyramid {
        return run_pyramid(a, g);
    }
    if a.pyramid_flags.any() {
        return Err(chunkwise::Error::InvalidOption {
            option: "--pyramid",
            reason: "--method, --levels, --factors, --factors-per-level, --axis-types and \
                     --name describe a pyramid: add --pyramid"
                .into(),
        }
        .into());
    }
    let codec = super::codec_from(a.codec.as_deref())?;
    let dtype = a.dtype.as_deref().map(str::parse::<DType>).transpose()?;
    let mut opts = ConvertOptions::default().chunks(a.chunks).level(a.level);
    if let Some(c) = codec {
        opts = opts.codec(c);
    }
    let opts = opts
        .checksum(a.checksum)
        .subchunks(a.shard)
        .axis_names(a.axis_names)
        .voxel_size(a.pyramid_flags.voxel_size)
        .units(a.pyramid_flags.units)
        .overwrite(a.overwrite)
        .partition(a.partition)
        .threads(g.threads)
        .cancel(g.cancel.clone())
        .memory(a.memory)
        .durability(if a.no_sync {
            Durability::NoSync
        } else {
            Durability::Sync
        })
        .progress(g.progress());
    let input = Input::open_all(
        &a.inputs,
        &RawOptions {
            dtype,
            shape: a.shape,
            series: a.series,
        },
    )?;
    let report = chunkwise::convert(&input, &a.output, &opts)?;
    if let Some((done, total)) = report.waiting {
        if !g.quiet {
            say(format!(
                "partition done; {done} of {total} chunks of {} done, waiting for the other partitions",
                a.output.display()
            ))?;
        }
    } else if !g.quiet {
        say(summary(&report))?;
    }
    Ok(Outcome::Ok)
}

/// `convert --pyramid`: the inputs straight to an OME-Zarr image.
fn run_pyramid(a: Args, g: &Global) -> CliResult {
    let refuse = |flag: &str| -> CliResult {
        Err(chunkwise::Error::InvalidOption {
            option: "--pyramid",
            reason: format!(
                "{flag} is not supported with --pyramid yet (convert, then `chunkwise pyramid`)"
            ),
        }
        .into())
    };
    if a.shard.is_some() {
        return refuse("--shard");
    }
    if a.checksum {
        return refuse("--checksum");
    }
    let dtype = a.dtype.as_deref().map(str::parse::<DType>).transpose()?;
    let input = Input::open_all(
        &a.inputs,
        &RawOptions {
            dtype,
            shape: a.shape,
            series: a.series,
        },
    )?;
    let opts = a
        .pyramid_flags
        .options(a.axis_names, a.chunks, a.codec.as_deref(), a.level)?;
    let opts =
        super::pyramid::with_run(opts, a.overwrite, a.memory, a.no_sync, g).partition(a.partition);
    let r = chunkwise::pyramid(&input, &a.output, &opts)?;
    if !g.quiet {
        say(super::pyramid::summary(&r, &input))?;
    }
    Ok(Outcome::Ok)
}

pub(crate) fn summary(r: &ConvertReport) -> String {
    let ratio = if r.bytes_stored > 0 {
        format!("{:.2}x", r.bytes_in as f64 / r.bytes_stored as f64)
    } else {
        "-".into()
    };
    let decoded = match (&r.decodes, &r.intermediate) {
        (Some(d), Some(i)) => format!(
            "\n  in two passes through intermediate chunks of {}: {}",
            chunkwise::support::fmt_shape(i),
            decodes(d)
        ),
        (Some(d), None) => format!("\n  {}", decodes(d)),
        _ if r.chunks_copied > 0 => format!(
            "\n  {} chunks copied as stored (same type, grid and codecs: nothing decoded)",
            r.chunks_copied
        ),
        _ => String::new(),
    };
    format!(
        "wrote {}: {} {} in {} chunks ({} of {} stored), {} -> {} ({ratio}) in {:.2} s ({:.0} MB/s)\n  from {}{decoded}",
        r.path.display(),
        chunkwise::support::fmt_shape(&r.shape),
        r.dtype,
        chunkwise::support::fmt_shape(&r.chunk_shape),
        r.chunks_written,
        r.chunks_total,
        human_bytes(r.bytes_in),
        human_bytes(r.bytes_stored),
        r.seconds,
        r.bytes_in as f64 / r.seconds.max(1e-9) / 1e6,
        r.source,
    )
}

/// "64 input chunks decoded once each" / "... at most 3 times each (170 decodes)".
fn decodes(d: &chunkwise::Decodes) -> String {
    match d.most {
        0 | 1 => format!("{} input chunks decoded once each", d.chunks),
        n => format!(
            "{} input chunks decoded at most {n} times each ({} decodes)",
            d.chunks, d.total
        ),
    }
}
