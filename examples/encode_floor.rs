//! The codec floor of a convert: every chunk of a raw volume encoded in memory on all cores,
//! with no I/O. `bench/w1.py` runs it next to `chunkwise convert` to show how much of a
//! convert's time is the codec itself.
//!
//! usage: encode_floor VOLUME.raw --shape Z,Y,X [--dtype uint16] [--codec zstd] [--level 3]
//!        [--chunks 128,128,128]
//! prints one JSON line: {"codec": ..., "seconds": ..., "bytes_in": ..., "bytes_out": ...}

use std::time::Instant;

use chunkwise::{Codec, DType, Grid, StoreSpec};
use rayon::prelude::*;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn list(s: &str) -> Vec<u64> {
    s.split(',')
        .map(|v| v.trim().parse().expect("integer"))
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .ok_or("usage: encode_floor VOLUME.raw --shape Z,Y,X ...")?;
    let shape = list(&arg(&args, "--shape").ok_or("--shape is required")?);
    let dtype: DType = arg(&args, "--dtype")
        .unwrap_or_else(|| "uint16".into())
        .parse()?;
    let chunks = list(&arg(&args, "--chunks").unwrap_or_else(|| "128,128,128".into()));
    let codec_name = arg(&args, "--codec").unwrap_or_else(|| Codec::default().name().into());
    let level = arg(&args, "--level")
        .map(|l| l.parse::<i32>())
        .transpose()?;
    let codec = Codec::from_name(&codec_name, level)?;

    let spec = StoreSpec::new(shape.clone(), dtype, chunks.clone()).codec(codec);
    let pipeline = spec.chunk_codec()?;
    let grid = Grid::new(&shape, &chunks)?;
    let data = std::fs::read(path)?;
    let itemsize = dtype.size();
    assert_eq!(
        data.len() as u64,
        shape.iter().product::<u64>() * itemsize as u64
    );

    // Gather every chunk into its own padded buffer first (untimed).
    let all: Vec<_> = grid.grid_shape().into_iter().map(|n| 0..n).collect();
    let indices = chunkwise_indices(&all);
    let row = shape[2] as usize * itemsize;
    let plane = shape[1] as usize * row;
    let buffers: Vec<Vec<u8>> = indices
        .par_iter()
        .map(|idx| {
            let r = grid.chunk_region(idx);
            let mut buf = vec![0u8; pipeline.chunk_bytes()];
            let (cy, cx) = (chunks[1] as usize, chunks[2] as usize);
            for (kz, z) in r.ranges()[0].clone().enumerate() {
                for (ky, y) in r.ranges()[1].clone().enumerate() {
                    let src = z as usize * plane
                        + y as usize * row
                        + r.ranges()[2].start as usize * itemsize;
                    let len = (r.ranges()[2].end - r.ranges()[2].start) as usize * itemsize;
                    let dst = ((kz * cy + ky) * cx) * itemsize;
                    buf[dst..dst + len].copy_from_slice(&data[src..src + len]);
                }
            }
            buf
        })
        .collect();
    drop(data);

    let t = Instant::now();
    let out: u64 = buffers
        .par_iter()
        .map(|b| pipeline.encode(b).map(|e| e.len() as u64))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .sum();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{{\"codec\": \"{} level {}\", \"seconds\": {secs:.4}, \"bytes_in\": {}, \"bytes_out\": {out}, \"chunks\": {}, \"threads\": {}}}",
        codec.name(),
        codec.level(),
        buffers.len() * buffers[0].len(),
        buffers.len(),
        rayon::current_num_threads()
    );
    Ok(())
}

/// Chunk indices of a box, C order (the library's own helper is crate-private).
fn chunkwise_indices(b: &[std::ops::Range<u64>]) -> Vec<Vec<u64>> {
    let mut out = vec![Vec::new()];
    for r in b {
        out = out
            .into_iter()
            .flat_map(|p| {
                r.clone().map(move |i| {
                    let mut q = p.clone();
                    q.push(i);
                    q
                })
            })
            .collect();
    }
    out
}
