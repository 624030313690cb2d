//! W1 through zarrs' own writer, for comparison with `chunkwise convert`: the same chunks and
//! codec, stored with `Array::store_chunk_opt` on zarrs' `FilesystemStore` (which fsyncs every
//! chunk file as it writes it), in a rayon loop over chunks.
//!
//! usage: zarrs_writer VOLUME.raw OUT.zarr --shape Z,Y,X [--codec zstd] [--level 3]
//! prints one JSON line: {"seconds": ..., "chunks": ...}

use std::sync::Arc;
use std::time::Instant;

use chunkwise::{Codec, DType, Grid, StoreSpec};
use rayon::prelude::*;
use zarrs::array::{Array, ArrayMetadata, CodecOptions};
use zarrs::filesystem::FilesystemStore;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (path, out) = (&args[1], &args[2]);
    let shape: Vec<u64> = arg(&args, "--shape")
        .ok_or("--shape")?
        .split(',')
        .map(|v| v.parse())
        .collect::<Result<_, _>>()?;
    let codec = Codec::from_name(
        &arg(&args, "--codec").unwrap_or_else(|| Codec::default().name().into()),
        arg(&args, "--level").map(|l| l.parse()).transpose()?,
    )?;
    let chunks = vec![128u64, 128, 128];
    let meta = StoreSpec::new(shape.clone(), DType::U16, chunks.clone())
        .codec(codec)
        .metadata();
    let data = std::fs::read(path)?;
    let _ = std::fs::remove_dir_all(out);
    let store = Arc::new(FilesystemStore::new(out)?);
    let array =
        Array::new_with_metadata(store, "/", ArrayMetadata::V3(serde_json::from_value(meta)?))?;
    let grid = Grid::new(&shape, &chunks)?;
    let gs: [u64; 3] = grid.grid_shape().try_into().map_err(|_| "3-D only")?;
    let indices: Vec<Vec<u64>> = (0..gs[0])
        .flat_map(|i| (0..gs[1]).flat_map(move |j| (0..gs[2]).map(move |k| vec![i, j, k])))
        .collect();
    let (ny, nx) = (shape[1] as usize, shape[2] as usize);
    let mut opts = CodecOptions::default();
    opts.set_concurrent_target(1);
    let t = Instant::now();
    indices.par_iter().try_for_each(|idx| {
        let r = grid.chunk_region(idx);
        let mut buf = vec![0u8; 128 * 128 * 128 * 2];
        for (kz, z) in r.ranges()[0].clone().enumerate() {
            for (ky, y) in r.ranges()[1].clone().enumerate() {
                let src = ((z as usize * ny + y as usize) * nx + r.ranges()[2].start as usize) * 2;
                let dst = (kz * 128 + ky) * 128 * 2;
                buf[dst..dst + 256].copy_from_slice(&data[src..src + 256]);
            }
        }
        array.store_chunk_opt(idx, zarrs::array::ArrayBytes::from(buf), &opts)
    })?;
    array.store_metadata()?;
    println!(
        "{{\"seconds\": {:.4}, \"chunks\": {}}}",
        t.elapsed().as_secs_f64(),
        indices.len()
    );
    Ok(())
}
