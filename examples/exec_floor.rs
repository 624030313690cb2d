//! The compute floor of a job: every input chunk read and decoded, the kernel run on a block of
//! the real size (the chunk padded by the boundary mode), and the output chunk encoded, each
//! chunk serially, on all cores, with no window, no assembly from neighbours and no writing.
//! `bench/compute.py` runs it next to `chunkwise gaussian|lut|neighbourhood-lut`.
//!
//! usage: exec_floor INPUT.zarr gaussian|lut|nlut [--table T.npy] [--codec zstd] [--level 3]
//! prints one JSON line: {"seconds": ..., "chunks": ...}

use std::time::Instant;

use chunkwise::kernel::lut::Table;
use chunkwise::kernel::{Gaussian, Kernel, Lut, NeighbourhoodLut};
use chunkwise::{Boundary, Codec, Store, StoreSpec};
use rayon::prelude::*;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let store = Store::open(&args[1])?;
    let kernel: Box<dyn Kernel> = match args[2].as_str() {
        "gaussian" => Box::new(Gaussian {
            sigma: vec![2.0],
            truncate: 4.0,
            mode: Boundary::Reflect,
            dtype: None,
        }),
        "lut" => Box::new(Lut::new(Table::open(
            arg(&args, "--table").ok_or("--table")?.as_ref(),
        )?)),
        "nlut" => Box::new(
            NeighbourhoodLut::new(Table::open(
                arg(&args, "--table").ok_or("--table")?.as_ref(),
            )?)?
            .above(Some(700.0.into())),
        ),
        other => return Err(format!("unknown kernel {other}").into()),
    };
    let codec = Codec::from_name(
        &arg(&args, "--codec").unwrap_or_else(|| Codec::default().name().into()),
        arg(&args, "--level").map(|l| l.parse()).transpose()?,
    )?;
    let grid = store.grid()?;
    let out_dtype = kernel.output_dtype(&[store.dtype()])?;
    let spec = StoreSpec::new(
        grid.chunk_shape().to_vec(),
        out_dtype,
        grid.chunk_shape().to_vec(),
    )
    .codec(codec);
    let out_codec = spec.chunk_codec()?;
    let indices = store.chunk_indices();
    let t = Instant::now();
    indices
        .par_iter()
        .try_for_each(|idx| -> Result<(), chunkwise::Error> {
            let n = grid.chunk_shape().iter().product::<u64>() as usize * store.dtype().size();
            let data = store.read_chunk(idx)?.unwrap_or_else(|| vec![0; n]);
            let (_, out) = chunkwise::apply_in_memory(
                kernel.as_ref(),
                store.dtype(),
                grid.chunk_shape(),
                &data,
            )?;
            out_codec.encode(&out)?;
            Ok(())
        })?;
    println!(
        "{{\"seconds\": {:.4}, \"chunks\": {}}}",
        t.elapsed().as_secs_f64(),
        indices.len()
    );
    Ok(())
}
