//! Writing a whole array from memory with `Store::write_region` against `convert` of the same
//! array from an `.npy` file (issue 9: within 15%), both with the default chunks and codec,
//! synced. `bench/write.py` runs it and records the ratio.
//!
//! usage: cargo run --release --example write_region -- VOLUME.npy WORKDIR [RUNS]
//!
//! Prints one JSON line per run: `{"write_region_s": .., "convert_s": .., "bytes": ..}`.

use std::path::PathBuf;
use std::time::Instant;

use chunkwise::support::parse_npy_header;
use chunkwise::{ConvertOptions, DType, Input, Region, Store, StoreSpec, default_chunks};

fn main() -> chunkwise::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let npy = PathBuf::from(args.get(1).expect("VOLUME.npy"));
    let work = PathBuf::from(args.get(2).expect("WORKDIR"));
    let runs: usize = args.get(3).map_or(3, |r| r.parse().expect("RUNS"));
    std::fs::create_dir_all(&work).expect("work dir");
    // The array in memory (not timed): what a Python caller hands over.
    let bytes = std::fs::read(&npy).expect("read the .npy");
    let h = parse_npy_header(&bytes, &npy)?;
    assert_eq!(h.dtype, DType::U16, "the W1 volume is uint16");
    let shape: Vec<usize> = h.shape.iter().map(|&n| n as usize).collect();
    let values: Vec<u16> = bytemuck::pod_collect_to_vec(&bytes[h.data_offset as usize..]);
    drop(bytes);
    let array = ndarray::ArrayD::from_shape_vec(shape, values).expect("shape");
    let region = Region::full(&h.shape);
    for _ in 0..runs {
        let a = work.join("write_region.zarr");
        let b = work.join("convert.zarr");
        for p in [&a, &b] {
            let _ = std::fs::remove_dir_all(p);
        }
        let t = Instant::now();
        let spec = StoreSpec::new(h.shape.clone(), DType::U16, default_chunks(&h.shape));
        let store = Store::create(&a, &spec)?;
        store.write_region(&region, array.view())?;
        let write_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        chunkwise::convert(&Input::open(&npy)?, &b, &ConvertOptions::default())?;
        let convert_s = t.elapsed().as_secs_f64();
        // The same bytes either way.
        let (sa, sb) = (Store::open(&a)?, Store::open(&b)?);
        let probe = Region::new(vec![100..101, 0..1024, 0..1024]);
        assert!(sa.read_region::<u16>(&probe)? == sb.read_region::<u16>(&probe)?);
        println!(
            "{{\"write_region_s\": {write_s:.3}, \"convert_s\": {convert_s:.3}, \"bytes\": {}}}",
            array.len() * 2
        );
    }
    Ok(())
}
