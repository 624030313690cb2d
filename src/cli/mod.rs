//! Argument parsing and dispatch. Invariant: no logic beyond turning flags into library calls
//! and printing their results; errors are printed once, in full, with exit code 2.

mod convert;
mod demo;
mod export;
mod grow;
mod info;
mod job;
mod preview;
mod project;
mod pyramid;
mod reduce;
mod slurm;
mod status;
mod verify;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chunkwise::{Cancel, Progress, ProgressFn, RunOptions, Unit};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Chunked, compressed Zarr v3 arrays for volumes too big for memory.
#[derive(Debug, Parser)]
#[command(name = "chunkwise", version, about, long_about = None)]
pub(crate) struct Cli {
    /// Worker threads (default: one per core; `-j N` as in make and cargo).
    #[arg(short = 'j', long, global = true, value_name = "N")]
    threads: Option<usize>,
    /// No progress bar and no summary.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Convert .npy / raw / TIFF stacks (or a Zarr array) into a chunked Zarr v3 array.
    Convert(convert::Args),
    /// Show an array's shape, type, chunks, codecs and storage.
    Info(info::Args),
    /// Write a region of an array to an .npy (or raw) file.
    Export(export::Args),
    /// Decode every stored chunk; list the bad ones (exit 1 if any).
    Verify(verify::Args),
    /// Gaussian filter (scipy.ndimage.gaussian_filter), block by block.
    Gaussian(job::GaussianArgs),
    /// 1-D correlation along an axis (scipy.ndimage.correlate1d), block by block.
    Correlate1d(job::Correlate1dArgs),
    /// out = table[in] (ClearMap's apply_lut).
    Lut(job::LutArgs),
    /// out = 1 where in > X, else 0 (uint8).
    Threshold(job::ThresholdArgs),
    /// An elementwise expression over named inputs, fused per chunk (numexpr's language,
    /// numpy's types).
    Eval(job::EvalArgs),
    /// Cumulative sum along an axis (numpy.cumsum).
    Cumsum(job::CumArgs),
    /// Cumulative product along an axis (numpy.cumprod).
    Cumprod(job::CumArgs),
    /// Running maximum along an axis (numpy.maximum.accumulate).
    Cummax(job::CumArgs),
    /// Running minimum along an axis (numpy.minimum.accumulate).
    Cummin(job::CumArgs),
    /// out = table[27-bit 3x3x3 neighbourhood index] of a binary input (ClearMap's
    /// apply_lut_to_index).
    NeighbourhoodLut(job::NeighbourhoodLutArgs),
    /// count, min, max, sum, mean, std in one pass (or per axis index, or per chunk).
    Stats(reduce::StatsArgs),
    /// Exact counts in bins (numpy.histogram).
    Histogram(reduce::HistogramArgs),
    /// Reduce axes away as numpy does (max along axis 0: a maximum-intensity projection).
    Reduce(project::Args),
    /// A PNG of a plane or a projection (default: the maximum along axis 0).
    Preview(preview::Args),
    /// An OME-Zarr multiscale image (mean, mode, gaussian, nearest, min or max pyramid).
    Pyramid(pyramid::Args),
    /// Coordinates of nonzero (or selected) voxels, as numpy.argwhere, to an .npy file.
    Where(reduce::WhereArgs),
    /// Edges between adjacent nonzero voxels (flat C-order index pairs) to an .npy file.
    Graph(reduce::GraphArgs),
    /// Append data (files or stores) along an axis, in place: only new chunks are written.
    Append(grow::AppendArgs),
    /// Join stores along an axis by linking their chunk files (-o OUT, or --into STORE).
    Concat(grow::ConcatArgs),
    /// Stack stores along a new leading axis by linking their chunk files.
    Stack(grow::StackArgs),
    /// Which parts of a job (--partition I/N) are done, running or missing.
    Status(status::Args),
    /// Print the sbatch script of a Slurm array job running a command in --parts N parts.
    SlurmScript(slurm::Args),
    /// Generate a small volume, convert, inspect and export it, checking the round trip.
    Demo(demo::Args),
}

/// Settings every command shares.
pub(crate) struct Global {
    pub threads: Option<usize>,
    pub quiet: bool,
    /// Set by SIGINT or SIGTERM: every operation stops between chunks.
    pub cancel: Cancel,
}

impl Global {
    /// The shared run settings: threads, the progress bar, the cancellation token.
    pub fn run(&self) -> RunOptions {
        RunOptions::default()
            .threads(self.threads)
            .progress(self.progress())
            .cancel(self.cancel.clone())
    }

    /// A progress callback drawing a bar on stderr when it is a terminal (and not `--quiet`).
    pub fn progress(&self) -> Option<ProgressFn> {
        if self.quiet || !std::io::stderr().is_terminal() {
            return None;
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        let cb = move |p: Progress<'_>| {
            if bar.length() != Some(p.total) {
                let template = match p.unit {
                    Unit::Bytes => {
                        "{msg:>8} [{elapsed_precise}] {wide_bar} {binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec}, {eta})"
                    }
                    Unit::Chunks => {
                        "{msg:>8} [{elapsed_precise}] {wide_bar} {pos}/{len} chunks ({eta})"
                    }
                };
                if let Ok(style) = ProgressStyle::with_template(template) {
                    bar.set_style(style);
                }
                bar.set_message(p.stage.to_string());
                bar.set_length(p.total);
            }
            bar.set_position(p.done);
            if p.done >= p.total {
                bar.finish_and_clear();
            }
        };
        Some(Arc::new(cb))
    }
}

/// What a command decided about the exit status.
pub(crate) enum Outcome {
    Ok,
    /// The command ran but found problems (verify: bad chunks).
    Failed,
}

pub(crate) fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if e.use_stderr() => {
            // One line, as every other error: clap's first paragraph (with the arguments a
            // "required arguments were not provided" names), without its own prefix.
            let text = e.to_string();
            let first = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(" ");
            let first = first.trim_start_matches("error: ");
            let _ = writeln!(std::io::stderr(), "chunkwise: error: {first} (see --help)");
            return ExitCode::from(2);
        }
        Err(e) => {
            // --help, --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    let (cancel, signal) = cancel_on_signals();
    let global = Global {
        threads: cli.threads,
        quiet: cli.quiet,
        cancel,
    };
    let result = match cli.command {
        Command::Convert(a) => convert::run(a, &global),
        Command::Info(a) => info::run(a, &global),
        Command::Export(a) => export::run(a, &global),
        Command::Verify(a) => verify::run(a, &global),
        Command::Gaussian(a) => job::gaussian(a, &global),
        Command::Correlate1d(a) => job::correlate1d(a, &global),
        Command::Lut(a) => job::lut(a, &global),
        Command::Threshold(a) => job::threshold(a, &global),
        Command::Eval(a) => job::eval(a, &global),
        Command::Cumsum(a) => job::cumulative(chunkwise::CumOp::Sum, a, &global),
        Command::Cumprod(a) => job::cumulative(chunkwise::CumOp::Prod, a, &global),
        Command::Cummax(a) => job::cumulative(chunkwise::CumOp::Max, a, &global),
        Command::Cummin(a) => job::cumulative(chunkwise::CumOp::Min, a, &global),
        Command::NeighbourhoodLut(a) => job::neighbourhood_lut(a, &global),
        Command::Stats(a) => reduce::stats(a, &global),
        Command::Histogram(a) => reduce::histogram(a, &global),
        Command::Reduce(a) => project::run(a, &global),
        Command::Preview(a) => preview::run(a, &global),
        Command::Pyramid(a) => pyramid::run(a, &global),
        Command::Where(a) => reduce::where_(a, &global),
        Command::Graph(a) => reduce::graph(a, &global),
        Command::Append(a) => grow::append(a, &global),
        Command::Concat(a) => grow::concat(a, &global),
        Command::Stack(a) => grow::stack(a, &global),
        Command::Status(a) => status::run(a, &global),
        Command::SlurmScript(a) => slurm::run(a, &global),
        Command::Demo(a) => demo::run(a, &global),
    };
    match result {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Failed) => ExitCode::from(1),
        Err(CliError::BrokenPipe) => ExitCode::SUCCESS,
        Err(CliError::Lib(chunkwise::Error::Cancelled)) => {
            // Stopped between chunks: the job resumes, the old array stands, no output file.
            let name = signal.name();
            let _ = writeln!(
                std::io::stderr(),
                "chunkwise: interrupted by {name}; nothing half-written is left (a rerun resumes \
                 a job, or starts over)"
            );
            ExitCode::from(128 + signal.number())
        }
        Err(CliError::Lib(e)) => {
            let _ = writeln!(std::io::stderr(), "chunkwise: error: {}", in_flags(&e));
            ExitCode::from(2)
        }
        Err(CliError::Io(e)) => {
            let _ = writeln!(std::io::stderr(), "chunkwise: error: {e}");
            ExitCode::from(2)
        }
    }
}

/// The settings the library names that are flags here (`checkpoint_secs` is
/// `--checkpoint-secs`).
const FLAGS: &[&str] = &[
    "above",
    "axis",
    "axis_names",
    "below",
    "bins",
    "cast",
    "checkpoint_secs",
    "chunks",
    "codec",
    "colormap",
    "connectivity",
    "contrast",
    "dtype",
    "dtype/shape",
    "layout",
    "level",
    "memory",
    "index_order",
    "mode",
    "op",
    "move",
    "origin",
    "overwrite",
    "partition",
    "plane",
    "range",
    "region",
    "shape",
    "shard",
    "sigma",
    "size",
    "table",
    "threads",
    "truncate",
    "weights",
];

/// What the library says in words, as the flags that say it here.
const PHRASES: &[(&str, &str)] = &[
    (
        "allow overwriting to replace it",
        "use --overwrite to replace it",
    ),
    (
        "allow overwriting (or restart the job)",
        "use --overwrite (or --restart)",
    ),
    (
        "allow casting to convert them",
        "give --cast to convert them",
    ),
    ("give a number of bins", "give --bins"),
    ("give a range", "give --range"),
    ("without moving the inputs", "without --move"),
    ("join into the first input", "use --into"),
    ("use the regular layout", "use --layout regular"),
    (
        "needs its dtype and shape (given, or in a sidecar",
        "needs --dtype and --shape (or a sidecar",
    ),
];

/// A library error as this binary's user reads it: settings named by their flags.
fn in_flags(e: &chunkwise::Error) -> String {
    let mut text = e.to_string();
    if let chunkwise::Error::InvalidOption { option, .. } = e
        && FLAGS.contains(option)
    {
        let flag = option
            .split('/')
            .map(|o| format!("--{}", o.replace('_', "-")))
            .collect::<Vec<_>>()
            .join("/");
        text = text.replacen(
            &format!("invalid {option}:"),
            &format!("invalid {flag}:"),
            1,
        );
    }
    for (words, flags) in PHRASES {
        text = text.replace(words, flags);
    }
    text
}

/// Which signal asked us to stop (SIGINT unless SIGTERM was seen).
pub(crate) struct Signal(Arc<AtomicBool>);

impl Signal {
    fn term(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
    fn name(&self) -> &'static str {
        if self.term() { "SIGTERM" } else { "SIGINT" }
    }
    fn number(&self) -> u8 {
        if self.term() { 15 } else { 2 }
    }
}

/// SIGINT and SIGTERM cancel the running operation, which stops between chunks and cleans up
/// what a rerun would not resume; a second one ends the process at once (as without a handler).
fn cancel_on_signals() -> (Cancel, Signal) {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let flag = Arc::new(AtomicBool::new(false));
    let term = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        // Registered first: on the second signal the flag is already set, and this exits.
        let _ = signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, flag.clone());
        let _ = signal_hook::flag::register(sig, flag.clone());
    }
    let _ = signal_hook::flag::register(SIGTERM, term.clone());
    (Cancel::from_flag(flag), Signal(term))
}

/// Errors of the binary: the library's, and output errors.
pub(crate) enum CliError {
    Lib(chunkwise::Error),
    Io(std::io::Error),
    BrokenPipe,
}

impl From<chunkwise::Error> for CliError {
    fn from(e: chunkwise::Error) -> Self {
        CliError::Lib(e)
    }
}

impl From<chunkwise::ParseError> for CliError {
    fn from(e: chunkwise::ParseError) -> Self {
        CliError::Lib(e.into())
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            CliError::BrokenPipe
        } else {
            CliError::Io(e)
        }
    }
}

pub(crate) type CliResult = Result<Outcome, CliError>;

/// Holds freed memory to the `--memory` budget: glibc's malloc raises its mmap threshold
/// each time a large buffer is freed (up to 32 MiB), after which buffers of a block's size come
/// from heaps that keep what is freed, and a small budget's process grew to 1.5 times it
/// (spec/FORMAT.md §8.1). A fixed threshold of a sixteenth of the budget (128 KiB to 32 MiB)
/// returns blocks to the system as they are freed, and keeps the default's reuse of chunk-sized
/// buffers under big budgets. A fixed threshold also fixes the trim threshold (the free
/// space at a heap's top that is given back) at its 128 KiB default, so that every freed
/// chunk buffer went back to the system and the next one page-faulted in afresh (12% of a
/// pyramid's time); it is set to twice the mmap threshold, as glibc's own adjustment does.
pub(crate) fn hold_to(memory: Option<u64>) {
    let threshold = (memory.unwrap_or(chunkwise::DEFAULT_MEMORY) / 16).clamp(128 << 10, 32 << 20);
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a malloc parameter; it is called before the worker threads
    // start, and a value it refuses leaves the default in place.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, threshold as libc::c_int);
        libc::mallopt(libc::M_TRIM_THRESHOLD, (2 * threshold) as libc::c_int);
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = threshold;
}

/// Prints a line to stdout (a closed pipe ends the program quietly).
pub(crate) fn say(text: impl std::fmt::Display) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    Ok(())
}

/// The codec named by `--codec` (`None`: the default for the data type, which the library
/// picks; `--level` is passed on separately).
pub(crate) fn codec_from(name: Option<&str>) -> chunkwise::Result<Option<chunkwise::Codec>> {
    name.map(|n| chunkwise::Codec::from_name(n, None))
        .transpose()
}

/// Parses a byte size: `512MiB`, `2GiB`, `1G`, `1000000`.
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 512MiB, 2GiB)"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" | "kb" => 1024.0,
        "m" | "mib" | "mb" => 1024.0 * 1024.0,
        "g" | "gib" | "gb" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tib" | "tb" => 1024.0f64.powi(4),
        other => return Err(format!("unknown size unit {other:?} in {s:?}")),
    };
    Ok((v * mult) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("lots").is_err());
    }
}
