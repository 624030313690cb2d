//! `chunkwise export STORE -o OUT.npy [--region 0:10,:,5:] [--raw]`.

use std::path::PathBuf;

use chunkwise::ExportOptions;
use chunkwise::support::human_bytes;

use super::{CliResult, Global, Outcome, parse_size, say};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The array directory.
    store: PathBuf,
    /// The file to write (.npy, or raw bytes with --raw).
    #[arg(short, long, value_name = "OUT")]
    output: PathBuf,
    /// The region, in numpy slice syntax: 0:10,:,5: (an integer drops its axis, as numpy does).
    #[arg(long, allow_hyphen_values = true, value_name = "SLICES")]
    region: Option<String>,
    /// Write raw little-endian C-order bytes, no .npy header.
    #[arg(long)]
    raw: bool,
    /// Replace an existing output file.
    #[arg(long)]
    overwrite: bool,
    /// Decoded data held in memory at once (e.g. 512MiB; default 256MiB).
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    memory: Option<u64>,
}

pub(crate) fn run(a: Args, g: &Global) -> CliResult {
    super::hold_to(a.memory);
    let opts = ExportOptions::default()
        .region(a.region)
        .raw(a.raw)
        .overwrite(a.overwrite)
        .threads(g.threads)
        .cancel(g.cancel.clone())
        .memory(a.memory)
        .progress(g.progress());
    let r = chunkwise::export(&chunkwise::Input::open(&a.store)?, &a.output, &opts)?;
    if !g.quiet {
        say(format!(
            "wrote {}: {} {} (region {}), {} in {:.2} s",
            r.path.display(),
            chunkwise::support::fmt_shape(&r.shape),
            r.dtype,
            r.region,
            human_bytes(r.bytes),
            r.seconds
        ))?;
    }
    Ok(Outcome::Ok)
}
