//! `chunkwise reduce STORE --axis A[,B] --op OP[,OP...] -o OUT`: numpy's reductions along axes
//! (spec/REDUCE.md §7).

use std::path::PathBuf;

use chunkwise::{AxisOp, AxisReduceOptions, Input};
use serde_json::json;

use super::{CliResult, Global, Outcome, say};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example: chunkwise reduce volume.zarr --axis 0 --op max -o mip.npy   \
                  (numpy: volume.max(axis=0))"
)]
pub(crate) struct Args {
    /// The array (anything chunkwise reads).
    store: PathBuf,
    /// The axes to reduce away.
    #[arg(long, value_delimiter = ',', required = true, value_name = "A[,B]")]
    axis: Vec<usize>,
    /// The ops, all in one pass: sum mean std var min max argmin argmax count_nonzero any all
    /// nansum nanmean nanstd nanmin nanmax.
    #[arg(
        long,
        value_delimiter = ',',
        required = true,
        value_name = "OP[,OP...]"
    )]
    op: Vec<String>,
    /// Where: one op to an .npy (or a .zarr store); several to a directory of OP.npy (or a
    /// .zarr group of one array per op).
    #[arg(short, long, value_name = "OUT")]
    output: PathBuf,
    /// Delta degrees of freedom of std, var and nanstd (numpy's ddof).
    #[arg(long, default_value_t = 0)]
    ddof: u64,
    /// Replace an existing OUT.
    #[arg(long)]
    overwrite: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// Do part I of N of the result's tiles (0 <= I < N); the last part to finish writes OUT
    /// (spec/SCALE.md §1).
    #[arg(long, value_parser = super::job::parse_partition, value_name = "I/N")]
    partition: Option<(u32, u32)>,
}

pub(crate) fn run(a: Args, g: &Global) -> CliResult {
    let input = Input::open(&a.store)?;
    let ops =
        a.op.iter()
            .map(|s| s.trim().parse::<AxisOp>())
            .collect::<chunkwise::Result<Vec<_>>>()?;
    let mut seen = Vec::new();
    for op in &ops {
        if seen.contains(op) {
            return Err(chunkwise::Error::InvalidOption {
                option: "--op",
                reason: format!("{} is given twice", op.name()),
            }
            .into());
        }
        seen.push(*op);
    }
    let start = std::time::Instant::now();
    let o = AxisReduceOptions::default()
        .ddof(a.ddof)
        .partition(a.partition)
        .run(g.run());
    let waiting = chunkwise::reduce_axes_to(&input, &a.axis, &ops, &a.output, a.overwrite, &o)?;
    let secs = start.elapsed().as_secs_f64();
    let dtype = input.dtype();
    let shape: Vec<u64> = (0..input.shape().len())
        .filter(|d| !a.axis.contains(d))
        .map(|d| input.shape()[d])
        .collect();
    if let (Some((done, total)), Some(part)) = (waiting, a.partition) {
        say(format!(
            "part {}/{} done; {done} of {total} parts done, waiting for the others to write {}",
            part.0,
            part.1,
            a.output.display()
        ))?;
        return Ok(Outcome::Ok);
    }
    if a.json {
        say(serde_json::to_string_pretty(&json!({
            "path": a.output,
            "axis": a.axis,
            "ops": ops.iter().map(|op| json!({
                "op": op.name(), "dtype": op.output_dtype(dtype).to_string(), "shape": shape,
            })).collect::<Vec<_>>(),
            "seconds": secs,
        }))
        .expect("plain JSON"))?;
    } else if !g.quiet {
        let what: Vec<String> = ops
            .iter()
            .map(|op| format!("{} ({})", op.name(), op.output_dtype(dtype)))
            .collect();
        say(format!(
            "wrote {}: {} of {} along axis {} -> {} in {secs:.2} s",
            a.output.display(),
            what.join(", "),
            chunkwise::support::fmt_shape(input.shape()),
            a.axis
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(","),
            chunkwise::support::fmt_shape(&shape),
        ))?;
    }
    Ok(Outcome::Ok)
}
